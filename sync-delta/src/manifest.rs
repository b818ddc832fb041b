//! Manifests: what a tree holds, per path, with the quick-check stat and
//! the BLAKE3 hash of every file.

use crate::error::WireError;
use crate::path::RelPath;
use crate::wire::{Reader, Writer};
use std::collections::BTreeMap;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// Longest symlink target accepted, in bytes.
pub const MAX_LINK_LEN: usize = 4096;

/// The fixed memory an entry costs beside its path and symlink target
/// (the map's node share, [`Meta`], the path's header), in bytes, as
/// counted against a replica's manifest budget.
pub const ENTRY_COST: u64 = 128;

/// The memory an entry is counted for: [`ENTRY_COST`], its path, and its
/// symlink target.
#[must_use]
pub fn entry_bytes(p: &RelPath, m: Option<&Meta>) -> u64 {
    let target = match m.map(|m| &m.kind) {
        Some(Kind::Symlink { target }) => target.len() as u64,
        _ => 0,
    };
    ENTRY_COST + p.as_str().len() as u64 + target
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File {
        /// Its size in bytes.
        size: u64,
        /// The BLAKE3 hash of its content.
        hash: Hash,
    },
    /// A directory.
    Dir,
    /// A symbolic link, stored as a link and never followed.
    Symlink {
        /// The link's target, as bytes.
        target: Vec<u8>,
    },
}

/// The local stat fields of the quick check (beside size and mtime): a
/// file whose size, mtime, ctime and inode are unchanged is not read again.
/// Never sent: they mean nothing on the other node. Zero means unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LocalStat {
    /// Status-change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// One path's entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch. Not replicated
    /// for symlinks (std has no portable `lutimes`): a symlink's is its own
    /// `lstat` time on the node that listed it, and neither
    /// [`Meta::same`] nor [`Manifest::digest`] looks at it.
    pub mtime_ns: i64,
    /// Quick-check stat on this node.
    pub local: LocalStat,
}

impl Meta {
    /// Same replicated state: kind, content, mode and (except for
    /// symlinks) mtime. The local stat is ignored.
    #[must_use]
    pub fn same(&self, o: &Self) -> bool {
        self.kind == o.kind
            && self.mode == o.mode
            && self.replicated_mtime_ns() == o.replicated_mtime_ns()
    }

    /// The mtime as replicated: [`Meta::mtime_ns`], or 0 for a symlink
    /// (whose mtime is not replicated).
    #[must_use]
    pub fn replicated_mtime_ns(&self) -> i64 {
        match self.kind {
            Kind::Symlink { .. } => 0,
            _ => self.mtime_ns,
        }
    }

    /// The size for files, 0 otherwise.
    #[must_use]
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// The hash for files.
    #[must_use]
    pub fn file_hash(&self) -> Option<&Hash> {
        match &self.kind {
            Kind::File { hash, .. } => Some(hash),
            _ => None,
        }
    }
}

/// A change from one manifest to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The path now has this entry.
    Upsert(RelPath, Meta),
    /// The path is gone.
    Gone(RelPath),
}

/// A tree's entries by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, in path order.
    pub entries: BTreeMap<RelPath, Meta>,
}

impl Manifest {
    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The memory its entries are counted for: per entry its path, its
    /// symlink target and a fixed [`ENTRY_COST`].
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(p, m)| entry_bytes(p, Some(m)))
            .fold(0, u64::saturating_add)
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The BLAKE3 digest of the replicated state, in path order: exactly
    /// what [`Meta::same`] compares (paths, kinds, hashes, link targets,
    /// modes, mtimes except symlinks'; not the local stat). Two manifests
    /// whose [`Manifest::diff`] is empty have the same digest.
    #[must_use]
    pub fn digest(&self) -> Hash {
        digest_of(self.entries.iter())
    }

    /// The changes that turn `self` into `new`.
    #[must_use]
    pub fn diff(&self, new: &Self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut a = self.entries.iter().peekable();
        let mut b = new.entries.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((pa, _)), None) => {
                    out.push(Change::Gone((*pa).clone()));
                    a.next();
                }
                (None, Some((pb, mb))) => {
                    out.push(Change::Upsert((*pb).clone(), (*mb).clone()));
                    b.next();
                }
                (Some((pa, ma)), Some((pb, mb))) => match pa.cmp(pb) {
                    std::cmp::Ordering::Less => {
                        out.push(Change::Gone((*pa).clone()));
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(Change::Upsert((*pb).clone(), (*mb).clone()));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !ma.same(mb) {
                            out.push(Change::Upsert((*pb).clone(), (*mb).clone()));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        out
    }

    /// Checks the tree shape: every entry's parent is a directory entry
    /// (or the root).
    ///
    /// # Errors
    /// [`crate::PathError::ParentNotDir`] for the first entry whose parent
    /// is missing or not a directory.
    pub fn check_shape(&self) -> Result<(), crate::PathError> {
        for p in self.entries.keys() {
            self.check_parent(p)?;
        }
        Ok(())
    }

    /// Checks that `p`'s parent is a directory entry (or the root).
    ///
    /// # Errors
    /// [`crate::PathError::ParentNotDir`].
    pub fn check_parent(&self, p: &RelPath) -> Result<(), crate::PathError> {
        match p.parent() {
            None => Ok(()),
            Some(parent) => match self.entries.get(parent) {
                Some(m) if m.kind == Kind::Dir => Ok(()),
                _ => Err(crate::PathError::ParentNotDir),
            },
        }
    }
}

/// [`Manifest::digest`] of entries given in path order.
pub(crate) fn digest_of<'a>(entries: impl Iterator<Item = (&'a RelPath, &'a Meta)>) -> Hash {
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(1 << 16);
    for (p, m) in entries {
        encode_fields(&mut Writer(&mut buf), p, m, m.replicated_mtime_ns(), false);
        if buf.len() >= 60 * 1024 {
            h.update(&buf);
            buf.clear();
        }
    }
    h.update(&buf);
    *h.finalize().as_bytes()
}

/// A manifest as a round sees the next one without copying it: a whole
/// manifest, or a base with a round's changes laid over it (`None`: the
/// path is gone). Read like a manifest, in path order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum View<'a> {
    /// A whole manifest.
    Whole(&'a Manifest),
    /// A whole listing as entries in path order, one after another (a
    /// round's full listing: about half the room of a map's nodes).
    Sorted(&'a [(RelPath, Meta)]),
    /// A base and the changes over it.
    Over(&'a Manifest, &'a BTreeMap<RelPath, Option<Meta>>),
}

/// The index of `p` in entries in path order: found, or where it goes.
pub(crate) fn sorted_find(entries: &[(RelPath, Meta)], p: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(k, _)| k.as_str().cmp(p))
}

type Bounds<'b> = (std::ops::Bound<&'b str>, std::ops::Bound<&'b str>);

impl<'a> View<'a> {
    /// The whole listing this view reads, in path order, if it is one.
    pub(crate) fn listing(self) -> Option<&'a [(RelPath, Meta)]> {
        match self {
            View::Sorted(v) => Some(v),
            View::Whole(_) | View::Over(..) => None,
        }
    }

    /// The entry at `p`.
    pub(crate) fn get(self, p: &str) -> Option<&'a Meta> {
        match self {
            View::Whole(m) => m.entries.get(p),
            View::Sorted(v) => sorted_find(v, p).ok().map(|i| &v[i].1),
            View::Over(m, c) => match c.get(p) {
                Some(v) => v.as_ref(),
                None => m.entries.get(p),
            },
        }
    }

    /// The entries within `r`, in path order.
    pub(crate) fn range(self, r: Bounds<'_>) -> Merged<'a> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        match self {
            View::Whole(m) => Merged {
                base: Base::Map(m.entries.range::<str, _>(r)).peekable(),
                over: None,
            },
            View::Sorted(v) => {
                let start = match r.0 {
                    Included(a) => v.partition_point(|(k, _)| k.as_str() < a),
                    Excluded(a) => v.partition_point(|(k, _)| k.as_str() <= a),
                    Unbounded => 0,
                };
                let end = match r.1 {
                    Included(b) => v.partition_point(|(k, _)| k.as_str() <= b),
                    Excluded(b) => v.partition_point(|(k, _)| k.as_str() < b),
                    Unbounded => v.len(),
                };
                Merged {
                    base: Base::Slice(v.get(start..end.max(start)).unwrap_or_default().iter())
                        .peekable(),
                    over: None,
                }
            }
            View::Over(m, c) => Merged {
                base: Base::Map(m.entries.range::<str, _>(r)).peekable(),
                over: Some(c.range::<str, _>(r).peekable()),
            },
        }
    }

    /// All entries, in path order.
    pub(crate) fn iter(self) -> Merged<'a> {
        use std::ops::Bound::Unbounded;
        self.range((Unbounded, Unbounded))
    }

    /// Number of entries.
    pub(crate) fn len(self) -> usize {
        match self {
            View::Whole(m) => m.len(),
            View::Sorted(v) => v.len(),
            View::Over(m, c) => c.iter().fold(m.len(), |n, (p, v)| {
                match (m.entries.contains_key(p), v.is_some()) {
                    (false, true) => n + 1,
                    (true, false) => n - 1,
                    _ => n,
                }
            }),
        }
    }

    /// True when empty.
    pub(crate) fn is_empty(self) -> bool {
        self.iter().next().is_none()
    }

    /// [`Manifest::digest`].
    pub(crate) fn digest(self) -> Hash {
        digest_of(self.iter())
    }

    /// [`Manifest::bytes`].
    pub(crate) fn bytes(self) -> u64 {
        self.iter()
            .map(|(p, m)| entry_bytes(p, Some(m)))
            .fold(0, u64::saturating_add)
    }

    /// [`Manifest::check_parent`].
    pub(crate) fn check_parent(self, p: &RelPath) -> Result<(), crate::PathError> {
        match p.parent() {
            None => Ok(()),
            Some(parent) => match self.get(parent) {
                Some(m) if m.kind == Kind::Dir => Ok(()),
                _ => Err(crate::PathError::ParentNotDir),
            },
        }
    }
}

/// The entries of a [`View`], in path order.
pub(crate) struct Merged<'a> {
    base: std::iter::Peekable<Base<'a>>,
    over: Option<std::iter::Peekable<std::collections::btree_map::Range<'a, RelPath, Option<Meta>>>>,
}

/// A view's base entries: of a map, or of entries one after another.
enum Base<'a> {
    Map(std::collections::btree_map::Range<'a, RelPath, Meta>),
    Slice(std::slice::Iter<'a, (RelPath, Meta)>),
}

impl<'a> Iterator for Base<'a> {
    type Item = (&'a RelPath, &'a Meta);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Base::Map(r) => r.next(),
            Base::Slice(i) => i.next().map(|(p, m)| (p, m)),
        }
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a RelPath, &'a Meta);

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            let Some(over) = &mut self.over else {
                return self.base.next();
            };
            let from_over = match (self.base.peek(), over.peek()) {
                (None, None) => return None,
                (Some(_), None) => return self.base.next(),
                (None, Some(_)) => true,
                (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                    Ordering::Less => return self.base.next(),
                    Ordering::Greater => true,
                    Ordering::Equal => {
                        self.base.next();
                        true
                    }
                },
            };
            if from_over && let Some((p, Some(m))) = over.next() {
                return Some((p, m));
            }
        }
    }
}

/// Encodes one entry (with the local stat only when `local`).
pub(crate) fn encode_entry(w: &mut Writer<'_>, p: &RelPath, m: &Meta, local: bool) {
    encode_fields(w, p, m, m.mtime_ns, local);
}

fn encode_fields(w: &mut Writer<'_>, p: &RelPath, m: &Meta, mtime_ns: i64, local: bool) {
    encode_fields_str(w, p.as_str(), m, mtime_ns, local);
}

/// [`encode_entry`]'s fields for a path given as a string.
pub(crate) fn encode_fields_str(
    w: &mut Writer<'_>,
    p: &str,
    m: &Meta,
    mtime_ns: i64,
    local: bool,
) {
    w.str16(p);
    match &m.kind {
        Kind::File { .. } => w.u8(0),
        Kind::Dir => w.u8(1),
        Kind::Symlink { .. } => w.u8(2),
    }
    w.u32(m.mode);
    w.i64(mtime_ns);
    match &m.kind {
        Kind::File { size, hash } => {
            w.u64(*size);
            w.bytes(hash);
        }
        Kind::Dir => {}
        Kind::Symlink { target } => w.bytes16(target),
    }
    if local {
        w.i64(m.local.ctime_ns);
        w.u64(m.local.ino);
    }
}

/// Decodes one entry.
pub(crate) fn decode_entry(r: &mut Reader<'_>, local: bool) -> Result<(RelPath, Meta), WireError> {
    let path = RelPath::from_bytes(r.bytes16()?)?;
    let tag = r.u8()?;
    let mode = r.u32()?;
    if mode > 0o7777 {
        return Err(WireError::BadValue {
            field: 2,
            value: u64::from(mode),
        });
    }
    let mtime_ns = r.i64()?;
    let kind = match tag {
        0 => Kind::File {
            size: r.u64()?,
            hash: r.array()?,
        },
        1 => Kind::Dir,
        2 => {
            let t = r.bytes16()?;
            if t.is_empty() || t.len() > MAX_LINK_LEN || t.contains(&0) {
                return Err(WireError::BadValue {
                    field: 3,
                    value: t.len() as u64,
                });
            }
            Kind::Symlink { target: t.to_vec() }
        }
        v => {
            return Err(WireError::BadValue {
                field: 1,
                value: u64::from(v),
            });
        }
    };
    let local = if local {
        LocalStat {
            ctime_ns: r.i64()?,
            ino: r.u64()?,
        }
    } else {
        LocalStat::default()
    };
    Ok((
        path,
        Meta {
            kind,
            mode,
            mtime_ns,
            local,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> Meta {
        Meta {
            kind: Kind::File {
                size: u64::from(n),
                hash: [n; 32],
            },
            mode: 0o644,
            mtime_ns: 1,
            local: LocalStat::default(),
        }
    }

    /// A listing in path order reads as the same manifest in a map: each
    /// entry, the missing, every range (bounds on, between, before and
    /// after entries), the length and the digest.
    #[test]
    fn a_sorted_listing_reads_as_its_map() {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut m = Manifest::default();
        for (i, p) in ["a", "a/b", "a/b/c", "a/bc", "a0", "b", "b/x", "c"]
            .iter()
            .enumerate()
        {
            m.entries.insert(RelPath::new(p).unwrap(), file(i as u8));
        }
        let sorted: Vec<(RelPath, Meta)> = m.entries.clone().into_iter().collect();
        let (map, list) = (View::Whole(&m), View::Sorted(&sorted));
        assert_eq!(map.len(), list.len());
        assert_eq!(map.digest(), list.digest());
        let probes = ["", "a", "a/", "a/b", "a/b/", "a/bb", "a0", "b/x", "b/y", "c", "d"];
        for p in probes {
            assert_eq!(map.get(p), list.get(p), "{p}");
        }
        let bound = |i: usize, p: &'static str| match i {
            0 => Included(p),
            1 => Excluded(p),
            _ => Unbounded,
        };
        for a in probes {
            for b in probes {
                for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2), (2, 0), (2, 1)] {
                    if a > b && i != 2 && j != 2 {
                        // An inverted range: a map panics on it; the
                        // replica never asks for one.
                        continue;
                    }
                    if a == b && i == 1 && j == 1 {
                        continue;
                    }
                    let r = (bound(i, a), bound(j, b));
                    let x: Vec<_> = map.range(r).collect();
                    let y: Vec<_> = list.range(r).collect();
                    assert_eq!(x, y, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn diff_and_digest() {
        let mut a = Manifest::default();
        a.entries.insert(RelPath::new("a").unwrap(), file(1));
        a.entries.insert(RelPath::new("b").unwrap(), file(2));
        let mut b = a.clone();
        b.entries.remove(&RelPath::new("a").unwrap());
        b.entries.insert(RelPath::new("c").unwrap(), file(3));
        let mut local_only = file(2);
        local_only.local.ino = 9;
        b.entries.insert(RelPath::new("b").unwrap(), local_only);
        let d = a.diff(&b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], Change::Gone(RelPath::new("a").unwrap()));
        assert!(matches!(&d[1], Change::Upsert(p, _) if p.as_str() == "c"));
        assert_ne!(a.digest(), b.digest());
        let mut c = b.clone();
        c.entries
            .get_mut(&RelPath::new("b").unwrap())
            .unwrap()
            .local
            .ino = 1;
        assert_eq!(b.digest(), c.digest());
    }

    #[test]
    fn digest_covers_what_same_compares() {
        let link = |mtime_ns| Meta {
            kind: Kind::Symlink {
                target: b"voice/100".to_vec(),
            },
            mode: 0o777,
            mtime_ns,
            local: LocalStat::default(),
        };
        let mut a = Manifest::default();
        a.entries.insert(RelPath::new("f").unwrap(), file(1));
        a.entries.insert(RelPath::new("current").unwrap(), link(5));
        // The same link made later (`ln -sfn`, or by a replica).
        let mut b = a.clone();
        b.entries.insert(RelPath::new("current").unwrap(), link(9));
        assert!(a.diff(&b).is_empty());
        assert_eq!(a.digest(), b.digest());
        // A file's mtime, a link's target and mode are replicated.
        let mut c = a.clone();
        c.entries
            .get_mut(&RelPath::new("f").unwrap())
            .unwrap()
            .mtime_ns = 2;
        assert_eq!(c.diff(&a).len(), 1);
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.entries.insert(
            RelPath::new("current").unwrap(),
            Meta {
                kind: Kind::Symlink {
                    target: b"voice/200".to_vec(),
                },
                ..link(5)
            },
        );
        assert_ne!(a.digest(), d.digest());
        let mut e = a.clone();
        e.entries
            .get_mut(&RelPath::new("current").unwrap())
            .unwrap()
            .mode = 0o755;
        assert_ne!(a.digest(), e.digest());
    }

    #[test]
    fn shape() {
        let mut a = Manifest::default();
        a.entries.insert(RelPath::new("d/x").unwrap(), file(1));
        assert!(a.check_shape().is_err());
        a.entries.insert(RelPath::new("d").unwrap(), file(1));
        assert!(a.check_shape().is_err());
        let mut dir = file(0);
        dir.kind = Kind::Dir;
        a.entries.insert(RelPath::new("d").unwrap(), dir);
        assert!(a.check_shape().is_ok());
    }
    mod view {
        use super::*;
        use proptest::prelude::*;
        use std::ops::Bound;

        const NAMES: [&str; 8] = ["a", "a/b", "a/b/c", "a/c", "ab", "b", "b/a", "c"];

        fn entries() -> impl Strategy<Value = Vec<(usize, u8)>> {
            proptest::collection::vec((0..NAMES.len(), 0u8..4), 0..12)
        }

        proptest! {
            /// A base with changes over it reads exactly like the base
            /// copied and changed: entries in order, lookups, ranges,
            /// length and digest.
            #[test]
            fn over_reads_like_the_applied_copy(base in entries(), over in entries()) {
                let mut m = Manifest::default();
                for (i, n) in base {
                    m.entries.insert(RelPath::new(NAMES[i]).unwrap(), file(n));
                }
                let mut changes = BTreeMap::new();
                for (i, n) in over {
                    // 0: removed; otherwise an entry.
                    changes.insert(RelPath::new(NAMES[i]).unwrap(), (n > 0).then(|| file(n)));
                }
                let mut applied = m.clone();
                for (p, v) in &changes {
                    match v {
                        Some(v) => applied.entries.insert(p.clone(), v.clone()),
                        None => applied.entries.remove(p),
                    };
                }
                let view = View::Over(&m, &changes);
                let got: Vec<_> = view.iter().collect();
                let want: Vec<_> = applied.entries.iter().collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(view.len(), applied.len());
                prop_assert_eq!(view.is_empty(), applied.is_empty());
                prop_assert_eq!(view.digest(), applied.digest());
                prop_assert_eq!(view.bytes(), applied.bytes());
                for name in NAMES {
                    prop_assert_eq!(view.get(name), applied.entries.get(name));
                    let r = (Bound::Excluded(name), Bound::Unbounded);
                    let got: Vec<_> = view.range(r).collect();
                    let want: Vec<_> = applied.entries.range::<str, _>(r).collect();
                    prop_assert_eq!(got, want);
                }
                let whole = View::Whole(&applied);
                prop_assert_eq!(whole.iter().count(), applied.len());
                prop_assert_eq!(whole.digest(), applied.digest());
            }
        }
    }

}
