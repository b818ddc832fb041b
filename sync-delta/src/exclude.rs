//! Exclusion patterns: paths that are never replicated (the manual's
//! licence keys stay with each unit).

/// A set of glob patterns.
///
/// - `*` matches any run of characters except `/`, `**` any run including
///   `/`, `?` one character other than `/`.
/// - A pattern without `/` matches a path whose *name* (any component)
///   matches it, like rsync's `--exclude`; a pattern with `/` matches the
///   whole relative path (a leading `/` is ignored).
/// - A matched directory excludes everything below it.
///
/// An excluded path is neither sent by a source nor touched (written or
/// deleted) by a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclude {
    patterns: Vec<(bool, String)>,
}

impl Exclude {
    /// No exclusions.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// From patterns.
    #[must_use]
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            patterns: patterns
                .into_iter()
                .map(|p| {
                    let p = p.as_ref();
                    let anchored = p.contains('/');
                    (anchored, p.trim_start_matches('/').to_owned())
                })
                .collect(),
        }
    }

    /// True when `path` or one of its ancestors matches.
    #[must_use]
    pub fn is_excluded(&self, path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let mut end = 0;
        loop {
            let next = path[end..].find('/').map(|i| end + i);
            let prefix = &path[..next.unwrap_or(path.len())];
            let name = &prefix[end..];
            if self.matches_one(prefix, name) {
                return true;
            }
            match next {
                Some(i) => end = i + 1,
                None => return false,
            }
        }
    }

    /// True when `path` itself (not an ancestor) matches; for walks that
    /// check each directory as they enter it.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let name = path.rfind('/').map_or(path, |i| &path[i + 1..]);
        self.matches_one(path, name)
    }

    fn matches_one(&self, full: &str, name: &str) -> bool {
        self.patterns.iter().any(|(anchored, p)| {
            if *anchored {
                glob(p.as_bytes(), full.as_bytes())
            } else {
                glob(p.as_bytes(), name.as_bytes())
            }
        })
    }
}

/// Iterative glob match with backtracking on the last star.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize, bool)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                let double = p.get(pi + 1) == Some(&b'*');
                pi += if double { 2 } else { 1 };
                star = Some((pi, si, double));
            }
            Some(b'?') if s[si] != b'/' => {
                pi += 1;
                si += 1;
            }
            Some(&c) if c != b'*' && c != b'?' && c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss, double)) if double || s[ss] != b'/' => {
                    pi = sp;
                    si = ss + 1;
                    star = Some((sp, ss + 1, double));
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let e = Exclude::new(["*.key", "/licence", "tmp/**/cache", "x?z"]);
        assert!(e.is_excluded("a.key"));
        assert!(e.is_excluded("etc/pbx/a.key"));
        assert!(!e.is_excluded("a.keys"));
        assert!(e.is_excluded("licence"));
        assert!(e.is_excluded("licence/inside"));
        assert!(!e.is_excluded("etc/licence"));
        assert!(e.is_excluded("tmp/a/b/cache"));
        assert!(e.is_excluded("tmp/a/cache/f"));
        assert!(!e.is_excluded("tmp/cachex"));
        assert!(e.is_excluded("xyz"));
        assert!(!e.is_excluded("xz"));
        assert!(!Exclude::none().is_excluded("a"));
        let star = Exclude::new(["a/*"]);
        assert!(star.is_excluded("a/b"));
        assert!(star.is_excluded("a/b/c")); // by its ancestor a/b
        assert!(!star.matches("a/b/c"));
    }
}
