//! Packed manifests: a manifest's entries in path order, encoded one
//! after another in byte buffers.
//!
//! A [`Manifest`] is an ordered map, about 120–150 bytes an entry. A
//! source holds its last scan and, while the replica has not confirmed
//! it, the last confirmed manifest; a replica holds its generation's
//! between rounds (a round that changes it reads it as a map while it
//! runs). [`Packed`] holds the same entries in path order, each encoded
//! after the one before it:
//!
//! - the path as the length it shares with the previous path and the rest
//!   (paths in one directory share their directory);
//! - kind and mode;
//! - the mtime as the difference from the previous entry's, the ctime as
//!   the difference from the entry's own mtime, the inode as the
//!   difference from the previous entry's (all zigzag LEB128 varints:
//!   files of one tree are written at similar times, with near inodes);
//! - a file's size (varint) and its 32-byte BLAKE3 hash, a link's target.
//!
//! Every [`RESTART`]th entry starts afresh (whole path, no differences), so
//! a lookup is a binary search over those entries and a short scan. On the
//! bench's tree (100,000 files) an entry takes 53 bytes at the source and
//! 61 at the replica (whose files' ctimes, set when it wrote them, lie
//! further from their mtimes).
//!
//! The entries lie in segments of [`SEGMENT`] bytes, never one entry
//! across two: a manifest grows without copying what it holds, and its
//! pieces fit into room the allocator has just been given back (a map
//! being packed frees its nodes as the packing goes), where one buffer of
//! the whole would need fresh memory beside them.
//!
//! The manifests a source compares (the last scan, the new scan, the last
//! confirmed) are merged as sorted sequences ([`Packed::diff`]), without a
//! map.

use crate::manifest::{Change, Hash, Kind, LocalStat, Manifest, Meta, encode_fields_str};
use crate::path::RelPath;
use crate::wire::Writer;
use std::cmp::Ordering;

/// Entries between two restart points.
pub const RESTART: usize = 16;

/// Bytes of a segment of a [`Packed`] (an entry longer than that has a
/// segment of its own).
pub const SEGMENT: usize = 64 << 10;

/// The most an entry takes beside its path and link target: the path's two
/// lengths, kind, mode, three times, a size, a hash, a target's length.
const ENTRY_FIXED: usize = 10 * 7 + 1 + 32;

/// A manifest packed in path order; see the [module docs](self).
/// Equal when the same entries are packed (the encoding is deterministic).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// The entries, in segments.
    segs: Vec<Vec<u8>>,
    /// Where every [`RESTART`]th entry starts: segment and offset.
    restarts: Vec<(u32, u32)>,
    len: usize,
    digest: Option<Hash>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("len", &self.len)
            .field("bytes", &self.packed_bytes())
            .finish_non_exhaustive()
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Builds a [`Packed`] from entries given in path order.
#[derive(Debug, Default)]
pub struct PackedBuilder {
    out: Packed,
    prev_path: String,
    prev_mtime: i64,
    prev_ino: u64,
    hasher: blake3::Hasher,
    scratch: Vec<u8>,
}

impl PackedBuilder {
    /// An empty builder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with room for the segment list of about `bytes` of packed
    /// entries and the restart points of `entries` entries (a manifest
    /// like one known; the segments themselves are made as they fill).
    #[must_use]
    pub fn with_capacity(bytes: usize, entries: usize) -> Self {
        let mut b = Self::default();
        b.out.segs.reserve_exact(bytes / SEGMENT + 1);
        b.out.restarts.reserve_exact(entries / RESTART + 1);
        b
    }

    /// Adds the entry for `path`, which must sort after every path added
    /// before (an entry out of order is a bug of the caller: it is
    /// dropped, and debug builds panic).
    pub fn push(&mut self, path: &str, m: &Meta) {
        if self.out.len > 0 && path <= self.prev_path.as_str() {
            debug_assert!(false, "packed manifest: {path} out of order");
            return;
        }
        let target = match &m.kind {
            Kind::Symlink { target } => target.len(),
            _ => 0,
        };
        let most = ENTRY_FIXED + path.len() + target;
        let segs = &mut self.out.segs;
        if segs.last().is_none_or(|b| b.len() + most > b.capacity()) {
            segs.push(Vec::with_capacity(most.max(SEGMENT)));
        }
        let seg = u32::try_from(segs.len() - 1).unwrap_or(u32::MAX);
        let Some(buf) = segs.last_mut() else {
            return;
        };
        let restart = self.out.len.is_multiple_of(RESTART);
        let shared = if restart {
            let at = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            self.out.restarts.push((seg, at));
            self.prev_mtime = 0;
            self.prev_ino = 0;
            0
        } else {
            common_prefix(&self.prev_path, path)
        };
        put_varint(buf, shared as u64);
        put_varint(buf, (path.len() - shared) as u64);
        buf.extend_from_slice(&path.as_bytes()[shared..]);
        let tag = match &m.kind {
            Kind::File { .. } => 0u8,
            Kind::Dir => 1,
            Kind::Symlink { .. } => 2,
        };
        buf.push(tag);
        put_varint(buf, u64::from(m.mode));
        put_varint(buf, zigzag(m.mtime_ns.wrapping_sub(self.prev_mtime)));
        put_varint(buf, zigzag(m.local.ctime_ns.wrapping_sub(m.mtime_ns)));
        put_varint(buf, zigzag(m.local.ino.wrapping_sub(self.prev_ino) as i64));
        match &m.kind {
            Kind::File { size, hash } => {
                put_varint(buf, *size);
                buf.extend_from_slice(hash);
            }
            Kind::Dir => {}
            Kind::Symlink { target } => {
                put_varint(buf, target.len() as u64);
                buf.extend_from_slice(target);
            }
        }
        self.prev_mtime = m.mtime_ns;
        self.prev_ino = m.local.ino;
        self.prev_path.truncate(shared);
        self.prev_path.push_str(&path[shared..]);
        self.out.len += 1;
        encode_fields_str(
            &mut Writer(&mut self.scratch),
            path,
            m,
            m.replicated_mtime_ns(),
            false,
        );
        if self.scratch.len() >= 60 * 1024 {
            self.hasher.update(&self.scratch);
            self.scratch.clear();
        }
    }

    /// The packed manifest, with its digest ([`Manifest::digest`]'s).
    #[must_use]
    pub fn finish(mut self) -> Packed {
        self.hasher.update(&self.scratch);
        self.out.digest = Some(*self.hasher.finalize().as_bytes());
        if let Some(last) = self.out.segs.last_mut() {
            last.shrink_to_fit();
        }
        self.out.segs.shrink_to_fit();
        self.out.restarts.shrink_to_fit();
        self.out
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    let n = a
        .bytes()
        .zip(b.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    // On a character boundary of `b` (paths are UTF-8).
    (0..=n).rev().find(|&i| b.is_char_boundary(i)).unwrap_or(0)
}

/// Reads a [`Packed`] in path order.
#[derive(Debug)]
pub struct Cursor<'a> {
    segs: &'a [Vec<u8>],
    /// The segment read, and where in it.
    seg: usize,
    buf: &'a [u8],
    at: usize,
    index: usize,
    path: String,
    meta: Meta,
    prev_mtime: i64,
    prev_ino: u64,
    /// `path` and `meta` hold the entry last read.
    current: bool,
}

impl<'a> Cursor<'a> {
    fn new(p: &'a Packed) -> Self {
        Self {
            segs: &p.segs,
            seg: 0,
            buf: p.segs.first().map_or(&[], Vec::as_slice),
            at: 0,
            index: 0,
            path: String::new(),
            meta: Meta {
                kind: Kind::Dir,
                mode: 0,
                mtime_ns: 0,
                local: LocalStat::default(),
            },
            prev_mtime: 0,
            prev_ino: 0,
            current: false,
        }
    }

    /// Moves forward to `path` and returns its entry, if there is one.
    /// Paths must be asked for in increasing order (one pass over both
    /// sequences: a merge).
    pub fn seek(&mut self, path: &str) -> Option<&Meta> {
        loop {
            if self.current {
                match self.path.as_str().cmp(path) {
                    Ordering::Less => {}
                    Ordering::Equal => return Some(&self.meta),
                    Ordering::Greater => return None,
                }
            }
            self.next_entry()?;
        }
    }

    /// Moves to `at` in segment `seg`.
    fn place(&mut self, (seg, at): (u32, u32)) {
        self.seg = seg as usize;
        self.buf = self.segs.get(self.seg).map_or(&[], Vec::as_slice);
        self.at = at as usize;
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some(&b) = self.buf.get(self.at) {
            self.at += 1;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        v
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let end = (self.at + n).min(self.buf.len());
        let s = &self.buf[self.at..end];
        self.at = end;
        s
    }

    /// The next entry, or `None` at the end.
    pub fn next_entry(&mut self) -> Option<(&str, &Meta)> {
        while self.at >= self.buf.len() {
            // The next segment (none is empty, but step over one anyway).
            if self.seg + 1 >= self.segs.len() {
                self.current = false;
                return None;
            }
            self.seg += 1;
            self.buf = &self.segs[self.seg];
            self.at = 0;
        }
        self.current = true;
        if self.index.is_multiple_of(RESTART) {
            self.prev_mtime = 0;
            self.prev_ino = 0;
        }
        self.index += 1;
        let shared = usize::try_from(self.varint()).unwrap_or(usize::MAX);
        let rest = usize::try_from(self.varint()).unwrap_or(usize::MAX);
        self.path.truncate(shared.min(self.path.len()));
        let tail = self.take(rest);
        // Written from `&str` pieces cut on character boundaries.
        self.path.push_str(std::str::from_utf8(tail).unwrap_or_default());
        let tag = self.take(1).first().copied().unwrap_or(1);
        let mode = u32::try_from(self.varint()).unwrap_or(0);
        let mtime_ns = self.prev_mtime.wrapping_add(unzigzag(self.varint()));
        let ctime_ns = mtime_ns.wrapping_add(unzigzag(self.varint()));
        let ino = self.prev_ino.wrapping_add(unzigzag(self.varint()) as u64);
        let kind = match tag {
            0 => {
                let size = self.varint();
                let mut hash = [0u8; 32];
                let h = self.take(32);
                hash[..h.len()].copy_from_slice(h);
                Kind::File { size, hash }
            }
            2 => {
                let n = usize::try_from(self.varint()).unwrap_or(usize::MAX);
                Kind::Symlink {
                    target: self.take(n).to_vec(),
                }
            }
            _ => Kind::Dir,
        };
        self.prev_mtime = mtime_ns;
        self.prev_ino = ino;
        self.meta = Meta {
            kind,
            mode,
            mtime_ns,
            local: LocalStat { ctime_ns, ino },
        };
        Some((&self.path, &self.meta))
    }
}

impl Packed {
    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of packed entries.
    #[must_use]
    pub fn packed_bytes(&self) -> usize {
        self.segs.iter().map(Vec::len).sum()
    }

    /// The memory it holds, in bytes.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.segs.iter().map(Vec::capacity).sum::<usize>()
            + self.segs.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.restarts.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Its entries in path order.
    #[must_use]
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor::new(self)
    }

    /// The digest of the replicated state ([`Manifest::digest`]'s).
    #[must_use]
    pub fn digest(&self) -> Hash {
        match self.digest {
            Some(d) => d,
            None => Manifest::default().digest(),
        }
    }

    /// A cursor at the last restart whose (whole) path is not after
    /// `path` (`None` when `path` comes before every entry): the entry for
    /// `path`, if there is one, is among its next [`RESTART`].
    fn cursor_near(&self, path: &str) -> Option<Cursor<'_>> {
        let first_path = |at: (u32, u32)| -> &[u8] {
            let mut c = Cursor::new(self);
            c.place(at);
            let _shared = c.varint();
            let n = usize::try_from(c.varint()).unwrap_or(usize::MAX);
            c.take(n)
        };
        let i = self
            .restarts
            .partition_point(|&at| first_path(at) <= path.as_bytes());
        let start = i.checked_sub(1)?;
        let mut c = Cursor::new(self);
        c.place(self.restarts[start]);
        c.index = start * RESTART;
        Some(c)
    }

    /// A cursor past the entries up to `after` (none skipped for `None`),
    /// with the first entry after it, read.
    fn start_after(&self, after: Option<&str>) -> (Cursor<'_>, Option<(String, Meta)>) {
        let mut c = after
            .and_then(|a| self.cursor_near(a))
            .unwrap_or_else(|| self.cursor());
        loop {
            let e = c.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
            match (&e, after) {
                (Some((p, _)), Some(a)) if p.as_str() <= a => {}
                _ => return (c, e),
            }
        }
    }

    /// The entry for `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<Meta> {
        let mut c = self.cursor_near(path)?;
        for _ in 0..RESTART {
            let (p, m) = c.next_entry()?;
            match p.cmp(path) {
                Ordering::Less => {}
                Ordering::Equal => return Some(m.clone()),
                Ordering::Greater => return None,
            }
        }
        None
    }

    /// Packs a manifest.
    #[must_use]
    pub fn from_manifest(m: &Manifest) -> Self {
        let mut b = PackedBuilder::new();
        for (p, meta) in &m.entries {
            b.push(p.as_str(), meta);
        }
        b.finish()
    }

    /// The entries as a map.
    #[must_use]
    pub fn to_manifest(&self) -> Manifest {
        let mut items = Vec::with_capacity(self.len);
        let mut c = self.cursor();
        while let Some((p, m)) = c.next_entry() {
            if let Ok(p) = RelPath::new(p) {
                items.push((p, m.clone()));
            }
        }
        Manifest {
            entries: items.into_iter().collect(),
        }
    }

    /// Takes the entries out a block of [`RESTART`] at a time, from the
    /// last block to the first (each block's entries in path order), and
    /// gives each segment back to the allocator once its entries are out:
    /// what `f` builds from them and the packed form are never both whole.
    pub(crate) fn drain_blocks_rev(mut self, mut f: impl FnMut(&str, &Meta)) {
        while let Some(at) = self.restarts.pop() {
            let mut c = self.cursor();
            // At a restart the entry stands alone: whole path, no
            // differences from the one before.
            c.place(at);
            c.index = self.restarts.len() * RESTART;
            while let Some((p, m)) = c.next_entry() {
                f(p, m);
            }
            // The segments after the block's first go; its first keeps
            // what is before the block (none when it starts the segment).
            let (seg, off) = (at.0 as usize, at.1 as usize);
            self.segs.truncate(seg + 1);
            if off == 0 {
                self.segs.pop();
            } else if let Some(b) = self.segs.last_mut() {
                b.truncate(off);
            }
        }
    }

    /// Calls `f` with every entry in path order.
    pub fn for_each(&self, mut f: impl FnMut(&str, &Meta)) {
        let mut c = self.cursor();
        while let Some((p, m)) = c.next_entry() {
            f(p, m);
        }
    }

    /// `self` with `changes` merged in (an entry set, or removed with
    /// `None`), by one merge of the two sorted sequences.
    #[must_use]
    pub fn with_changes(
        &self,
        changes: std::collections::BTreeMap<RelPath, Option<Meta>>,
    ) -> Packed {
        let mut b = PackedBuilder::new();
        let mut ch = changes.into_iter().peekable();
        let mut c = self.cursor();
        while let Some((p, m)) = c.next_entry() {
            while let Some((cp, cm)) = ch.next_if(|(cp, _)| cp.as_str() < p) {
                if let Some(cm) = cm {
                    b.push(cp.as_str(), &cm);
                }
            }
            if let Some((cp, cm)) = ch.next_if(|(cp, _)| cp.as_str() == p) {
                if let Some(cm) = cm {
                    b.push(cp.as_str(), &cm);
                }
                continue;
            }
            b.push(p, m);
        }
        for (cp, cm) in ch {
            if let Some(cm) = cm {
                b.push(cp.as_str(), &cm);
            }
        }
        b.finish()
    }

    /// The changes that turn `self` into `new` ([`Manifest::diff`]'s), by
    /// one merge of the two sorted sequences.
    #[must_use]
    pub fn diff(&self, new: &Self) -> Vec<Change> {
        self.diff_from(new, None, &mut |_| false).0
    }

    /// [`diff`](Self::diff) a part at a time: the changes of the paths
    /// after `after` (from the first for `None`), in path order, until
    /// `full` (asked after each change, with it) says the part is full;
    /// and whether the part reaches the end. The next part starts after
    /// the last path of this one. Each part costs a lookup (restarts,
    /// then at most a restart's entries) and its own entries.
    pub fn diff_from(
        &self,
        new: &Self,
        after: Option<&str>,
        full: &mut dyn FnMut(&Change) -> bool,
    ) -> (Vec<Change>, bool) {
        let mut out = Vec::new();
        if self.digest.is_some() && self.digest == new.digest && self.len == new.len {
            // The same replicated state: nothing the diff could list.
            return (out, true);
        }
        let (mut a, mut ea) = self.start_after(after);
        let (mut b, mut eb) = new.start_after(after);
        let path = |p: &str| RelPath::new(p).ok();
        loop {
            let change = match (&ea, &eb) {
                (None, None) => return (out, true),
                (Some((pa, _)), None) => {
                    let c = path(pa).map(Change::Gone);
                    ea = a.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                    c
                }
                (None, Some((pb, mb))) => {
                    let c = path(pb).map(|p| Change::Upsert(p, mb.clone()));
                    eb = b.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                    c
                }
                (Some((pa, ma)), Some((pb, mb))) => match pa.cmp(pb) {
                    Ordering::Less => {
                        let c = path(pa).map(Change::Gone);
                        ea = a.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                        c
                    }
                    Ordering::Greater => {
                        let c = path(pb).map(|p| Change::Upsert(p, mb.clone()));
                        eb = b.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                        c
                    }
                    Ordering::Equal => {
                        let c = (!ma.same(mb))
                            .then(|| path(pb).map(|p| Change::Upsert(p, mb.clone())))
                            .flatten();
                        ea = a.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                        eb = b.next_entry().map(|(p, m)| (p.to_owned(), m.clone()));
                        c
                    }
                },
            };
            if let Some(c) = change {
                let stop = full(&c);
                out.push(c);
                if stop {
                    return (out, ea.is_none() && eb.is_none());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(kind: u8, n: u64) -> Meta {
        Meta {
            kind: match kind % 3 {
                0 => Kind::File {
                    size: n * 977,
                    hash: [n as u8; 32],
                },
                1 => Kind::Dir,
                _ => Kind::Symlink {
                    target: format!("t/{n}").into_bytes(),
                },
            },
            mode: 0o644 + (n % 3) as u32,
            mtime_ns: 1_700_000_000_000_000_000 + (n as i64) * 1_000_003,
            local: LocalStat {
                ctime_ns: if n.is_multiple_of(2) {
                    1_700_000_000_000_000_000 + (n as i64) * 1_000_003
                } else {
                    -(n as i64)
                },
                ino: n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            },
        }
    }

    fn manifest(entries: &[(String, u8, u64)]) -> Manifest {
        let mut m = Manifest::default();
        for (p, k, n) in entries {
            if let Ok(p) = RelPath::new(p) {
                m.entries.insert(p, meta(*k, *n));
            }
        }
        m
    }

    /// A manifest over many segments, with entries of the longest a path
    /// and a link target may be, reads back, looks up and drains whole,
    /// entries never across two segments.
    #[test]
    fn many_segments_read_back() {
        let long = "n".repeat(200);
        let mut e: Vec<(String, u8, u64)> = (0..6_000u64)
            .map(|n| (format!("d{:03}/{long}{n:05}", n % 97), (n % 3) as u8, n))
            .collect();
        e.push((format!("z/{}", "l".repeat(crate::MAX_NAME_LEN)), 2, 7));
        let mut m = manifest(&e);
        let big = RelPath::new(&format!("zz/{}", "x".repeat(200))).unwrap();
        m.entries.insert(
            big.clone(),
            Meta {
                kind: Kind::Symlink {
                    target: vec![b'y'; crate::MAX_LINK_LEN],
                },
                ..meta(2, 3)
            },
        );
        let p = Packed::from_manifest(&m);
        assert!(p.segs.len() > 4, "{} segments", p.segs.len());
        assert!(p.segs.iter().all(|s| s.len() <= SEGMENT));
        assert_eq!(p.len(), m.len());
        assert_eq!(p.to_manifest(), m);
        assert_eq!(p.digest(), m.digest());
        for (path, meta) in &m.entries {
            assert_eq!(p.get(path.as_str()).as_ref(), Some(meta), "{path}");
        }
        let mut n = 0;
        p.drain_blocks_rev(|path, meta| {
            assert_eq!(m.entries.get(path), Some(meta));
            n += 1;
        });
        assert_eq!(n, m.len());
        // An entry longer than a segment has one of its own.
        let mut b = PackedBuilder::new();
        let huge = "h".repeat(SEGMENT + 10);
        b.push("a", &meta(0, 1));
        b.push(&huge, &meta(2, 2));
        b.push("i", &meta(0, 3));
        let p = b.finish();
        assert_eq!(p.segs.len(), 3);
        assert_eq!(p.get(&huge), Some(meta(2, 2)));
        assert_eq!(p.get("i"), Some(meta(0, 3)));
    }

    fn entries() -> impl Strategy<Value = Vec<(String, u8, u64)>> {
        prop::collection::vec(("[a-c]{1,3}(/[a-cé]{1,4}){0,3}", 0u8..3, 0u64..1000), 0..120)
    }

    proptest! {
        #[test]
        fn packs_and_reads_back(e in entries()) {
            let m = manifest(&e);
            let p = Packed::from_manifest(&m);
            prop_assert_eq!(p.len(), m.len());
            prop_assert_eq!(p.to_manifest(), m.clone());
            prop_assert_eq!(p.digest(), m.digest());
            for (path, meta) in &m.entries {
                prop_assert_eq!(p.get(path.as_str()), Some(meta.clone()));
                let missing = format!("{}~", path.as_str());
                prop_assert_eq!(p.get(&missing), m.entries.get(missing.as_str()).cloned());
            }
            prop_assert_eq!(p.get(""), None);
            // Drained from the end a block at a time: every entry once,
            // each block in path order, the blocks last to first.
            let mut got = Vec::new();
            p.clone().drain_blocks_rev(|path, meta| got.push((path.to_owned(), meta.clone())));
            let all: Vec<(String, Meta)> =
                m.entries.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect();
            let want: Vec<(String, Meta)> = all.chunks(RESTART).rev().flatten().cloned().collect();
            prop_assert_eq!(got, want);
            // Room made beforehand (too little, or enough) packs the same.
            for room in [0, p.packed_bytes() / 2, p.packed_bytes() + 64] {
                let mut b = PackedBuilder::with_capacity(room, m.len());
                for (path, meta) in &m.entries {
                    b.push(path.as_str(), meta);
                }
                prop_assert_eq!(&b.finish(), &p);
            }
        }

        #[test]
        fn changes_merge_as_in_the_map(a in entries(), b in entries(), gone in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
            let (ma, mb) = (manifest(&a), manifest(&b));
            let mut changes: std::collections::BTreeMap<RelPath, Option<Meta>> =
                mb.entries.iter().map(|(p, m)| (p.clone(), Some(m.clone()))).collect();
            let keys: Vec<&RelPath> = ma.entries.keys().collect();
            if !keys.is_empty() {
                for g in &gone {
                    changes.insert(keys[g.index(keys.len())].clone(), None);
                }
            }
            let mut want = ma.clone();
            for (p, m) in &changes {
                match m {
                    Some(m) => { want.entries.insert(p.clone(), m.clone()); }
                    None => { want.entries.remove(p); }
                }
            }
            let got = Packed::from_manifest(&ma).with_changes(changes);
            prop_assert_eq!(got.to_manifest(), want.clone());
            prop_assert_eq!(got.digest(), want.digest());
        }

        #[test]
        fn diff_is_the_maps_diff(a in entries(), b in entries()) {
            let (ma, mb) = (manifest(&a), manifest(&b));
            let (pa, pb) = (Packed::from_manifest(&ma), Packed::from_manifest(&mb));
            prop_assert_eq!(pa.diff(&pb), ma.diff(&mb));
            prop_assert!(pa.diff(&pa).is_empty());
        }

        /// The diff in parts of any size, each after the last path of the
        /// one before, is the whole diff.
        #[test]
        fn a_diff_in_parts_is_the_whole_diff(a in entries(), b in entries(), part in 1usize..9) {
            let (ma, mb) = (manifest(&a), manifest(&b));
            let (pa, pb) = (Packed::from_manifest(&ma), Packed::from_manifest(&mb));
            let whole = ma.diff(&mb);
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..=whole.len() {
                let mut n = 0;
                let (changes, done) = pa.diff_from(&pb, after.as_deref(), &mut |_| {
                    n += 1;
                    n == part
                });
                prop_assert!(changes.len() <= part);
                if let Some(last) = changes.last() {
                    after = Some(match last {
                        Change::Upsert(p, _) | Change::Gone(p) => p.as_str().to_owned(),
                    });
                }
                got.extend(changes);
                if done {
                    break;
                }
            }
            prop_assert_eq!(got, whole);
        }
    }

    #[test]
    fn seek_merges_in_order() {
        let e: Vec<(String, u8, u64)> = (0..100u64)
            .map(|n| (format!("d{}/f{n:03}", n % 4), 0, n))
            .collect();
        let m = manifest(&e);
        let p = Packed::from_manifest(&m);
        let mut c = p.cursor();
        let mut asked: Vec<String> = (0..200u64).map(|n| format!("d{}/f{n:03}", n % 4)).collect();
        asked.sort();
        for a in &asked {
            assert_eq!(c.seek(a).cloned(), m.entries.get(a.as_str()).cloned(), "{a}");
        }
        assert!(c.seek("zz").is_none());
    }

    #[test]
    fn empty() {
        let p = PackedBuilder::new().finish();
        assert!(p.is_empty());
        assert_eq!(p.digest(), Manifest::default().digest());
        assert_eq!(Packed::default().digest(), Manifest::default().digest());
        assert!(p.get("a").is_none());
        assert!(p.diff(&Packed::default()).is_empty());
    }

    #[test]
    fn an_entry_costs_about_fifty_bytes_on_a_voicemail_tree() {
        let mut m = Manifest::default();
        for box_ in 0..200u64 {
            let d = format!("voicemail/default/{}", 1000 + box_);
            m.entries.insert(RelPath::new(&d).unwrap(), meta(1, box_));
            for msg in 0..50u64 {
                let n = box_ * 50 + msg;
                let mut e = meta(0, n);
                e.local.ctime_ns = e.mtime_ns;
                e.local.ino = 4_000_000 + n;
                let p = format!("{d}/msg{msg:04}.wav");
                m.entries.insert(RelPath::new(&p).unwrap(), e);
            }
        }
        let p = Packed::from_manifest(&m);
        let per = p.heap_bytes() / p.len();
        assert!(per <= 64, "{per} bytes an entry");
    }
}
