//! Relative paths inside a replicated root, checked so that no path from a
//! peer can leave the root.

use crate::error::PathError;

/// Longest relative path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// The engine's own state folder at the root of every tree; never replicated.
pub const STATE_DIR: &str = ".sync-delta";

/// A checked relative path: `/`-separated UTF-8 components, none empty,
/// `.` or `..`, no NUL, not absolute, not inside [`STATE_DIR`], within
/// [`MAX_PATH_LEN`] and [`MAX_NAME_LEN`].
///
/// Ordered as strings, so a directory sorts before everything under it.
/// Shared, not copied, when cloned: a round names one path in its listing,
/// in the journal's op that installs it and in the record's change, and a
/// first round does so for every path of the tree (two words, no spare
/// capacity).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(std::sync::Arc<str>);

impl RelPath {
    /// Checks `s`.
    ///
    /// # Errors
    /// The [`PathError`] for the first rule it breaks.
    pub fn new(s: &str) -> Result<Self, PathError> {
        check(s)?;
        Ok(Self(s.into()))
    }

    /// Checks raw bytes (from the wire or a file name).
    ///
    /// # Errors
    /// [`PathError::NotUtf8`] or the rule [`RelPath::new`] finds broken.
    pub fn from_bytes(b: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(b).map_err(|_| PathError::NotUtf8)?;
        Self::new(s)
    }

    /// The path as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, `None` at the top level.
    #[must_use]
    pub fn parent(&self) -> Option<&str> {
        self.0.rfind('/').map(|i| &self.0[..i])
    }

    /// The last component.
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.rfind('/').map_or(&self.0, |i| &self.0[i + 1..])
    }

    /// Number of components.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// `self/name`, checked.
    ///
    /// # Errors
    /// As [`RelPath::new`].
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        Self::new(&format!("{}/{name}", self.0))
    }
}

impl std::borrow::Borrow<str> for RelPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: s.len() });
    }
    if s.as_bytes().contains(&0) {
        return Err(PathError::Nul);
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for (i, c) in s.split('/').enumerate() {
        match c {
            "" | "." => return Err(PathError::EmptyComponent),
            ".." => return Err(PathError::DotDot),
            STATE_DIR if i == 0 => return Err(PathError::Reserved),
            c if c.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong { len: c.len() }),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(RelPath::new("a/b.txt").is_ok());
        assert_eq!(RelPath::new(""), Err(PathError::Empty));
        assert_eq!(RelPath::new("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(RelPath::new("a/../../x"), Err(PathError::DotDot));
        assert_eq!(RelPath::new(".."), Err(PathError::DotDot));
        assert_eq!(RelPath::new("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new("a/"), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new("./a"), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new("a\0b"), Err(PathError::Nul));
        assert_eq!(RelPath::new(".sync-delta/x"), Err(PathError::Reserved));
        assert!(RelPath::new("a/.sync-delta").is_ok());
        assert_eq!(
            RelPath::new(&"x".repeat(256)),
            Err(PathError::NameTooLong { len: 256 })
        );
        assert_eq!(
            RelPath::new(&"a/".repeat(2049)),
            Err(PathError::TooLong { len: 4098 })
        );
        assert_eq!(RelPath::from_bytes(&[0xff]), Err(PathError::NotUtf8));
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent(), Some("a/b"));
        assert_eq!(p.name(), "c");
        assert_eq!(p.depth(), 3);
    }
}
