//! The mass-deletion guard: the content a round loses, and the window of
//! losses across rounds kept in `.sync-delta/guard`.
//!
//! A round loses the content it removes from the tree for good: a deleted
//! file's size, the bytes a file that shrinks no longer holds. Content the
//! new generation still holds somewhere (a rename, a move, a copy: the
//! same BLAKE3 hash at any path) is not lost. A round is refused when what
//! it loses, added to what rounds committed within the window lost, is
//! more than the configured share of the tree's content bytes.
//!
//! The window file holds one record per committed round that lost
//! something: its generation, the wall time, the bytes lost and the
//! tree's content bytes before it. A round the operator confirmed writes a
//! barrier record instead: once its generation is committed, it and every
//! record before it leave the window. The file is written (atomically,
//! durably) before the round's commit record; a record whose generation
//! the tree never reached (a crash between the two) is dropped when the
//! file is read back, so the window counts exactly the committed rounds.

use crate::error::{StoreError, WireError};
use crate::generation::{split_crc, with_crc};
use crate::manifest::{Hash, Kind, Manifest, View};
use crate::path::{RelPath, STATE_DIR};
use crate::store::{Storage, read_all, write_atomic};
use crate::wire::{Reader, Writer};
use std::collections::HashMap;
use std::time::Duration;

/// The window file, under [`STATE_DIR`].
pub(crate) const GUARD_FILE: &str = "guard";
const MAGIC: &[u8; 4] = b"SDG1";
/// Records kept at most; beyond, the two oldest merge (which keeps their
/// loss in the window longer, never shorter).
const MAX_RECORDS: usize = 4096;
/// Largest window file read back.
const MAX_FILE: u64 = 16 + MAX_RECORDS as u64 * 40 + 64;

/// One committed round's loss, or a confirmation (barrier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// The generation the round committed.
    pub generation: u64,
    /// Wall time of the round, ns since the Unix epoch.
    pub at_ns: i64,
    /// Content bytes it lost.
    pub lost: u64,
    /// The tree's content bytes before it.
    pub tree: u64,
    /// The operator confirmed it: it and everything before it leave the
    /// window once its generation is committed.
    pub barrier: bool,
}

/// The losses of the rounds committed within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Window {
    records: Vec<Record>,
}

impl Window {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.records.len() * 33);
        let mut w = Writer(&mut out);
        w.bytes(MAGIC);
        w.u32(self.records.len() as u32);
        for r in &self.records {
            w.u64(r.generation);
            w.i64(r.at_ns);
            w.u64(r.lost);
            w.u64(r.tree);
            w.u8(u8::from(r.barrier));
        }
        with_crc(out)
    }

    fn decode(b: &[u8]) -> Result<Self, WireError> {
        let body = split_crc(b)?;
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let n = r.u32()? as usize;
        if n > MAX_RECORDS {
            return Err(WireError::BadValue {
                field: 40,
                value: n as u64,
            });
        }
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let generation = r.u64()?;
            let at_ns = r.i64()?;
            let lost = r.u64()?;
            let tree = r.u64()?;
            let barrier = match r.u8()? {
                0 => false,
                1 => true,
                v => {
                    return Err(WireError::BadValue {
                        field: 41,
                        value: u64::from(v),
                    });
                }
            };
            records.push(Record {
                generation,
                at_ns,
                lost,
                tree,
                barrier,
            });
        }
        r.end()?;
        Ok(Self { records })
    }

    /// Reads the window file of a tree at `generation`. A missing file is
    /// an empty window; an unreadable or corrupt one is an empty window
    /// and the error (never a failure to open).
    pub(crate) fn load<S: Storage + ?Sized>(
        s: &mut S,
        generation: u64,
    ) -> (Self, Option<StoreError>) {
        let path = format!("{STATE_DIR}/{GUARD_FILE}");
        let (mut w, err) = match read_all(s, &path, MAX_FILE) {
            Ok(b) => match Self::decode(&b) {
                Ok(w) => (w, None),
                Err(_) => (Self::default(), Some(StoreError::Corrupt)),
            },
            Err(StoreError::NotFound) => (Self::default(), None),
            Err(e) => (Self::default(), Some(e)),
        };
        w.settle(generation);
        (w, err)
    }

    /// Writes the window file durably and atomically.
    pub(crate) fn save<S: Storage + ?Sized>(&self, s: &mut S) -> Result<(), StoreError> {
        write_atomic(s, STATE_DIR, GUARD_FILE, &self.encode())
    }

    /// Makes the window that of a tree at `generation`: records of
    /// generations it never reached go (their rounds did not commit), and
    /// a committed barrier takes itself and everything before it along.
    pub(crate) fn settle(&mut self, generation: u64) {
        self.records.retain(|r| r.generation <= generation);
        if let Some(last) = self.records.iter().rposition(|r| r.barrier) {
            self.records.drain(..=last);
        }
    }

    /// What the rounds within `window` of `wall_ns` lost, and the most
    /// content bytes the tree had before any of them: `(lost, tree)`.
    /// Records stamped after `wall_ns` (the clock went back) count.
    pub(crate) fn within(&self, wall_ns: i64, window: Duration) -> (u64, u64) {
        let from = wall_ns.saturating_sub(duration_ns(window));
        self.records
            .iter()
            .filter(|r| r.at_ns >= from && !window.is_zero())
            .fold((0u64, 0u64), |(lost, tree), r| {
                (lost.saturating_add(r.lost), tree.max(r.tree))
            })
    }

    /// The newest record's time, if any.
    pub(crate) fn newest_ns(&self) -> Option<i64> {
        self.records.iter().map(|r| r.at_ns).max()
    }

    /// This window with `rec` added and what is older than `window` before
    /// `rec.at_ns` dropped; records stamped later than `rec` (the clock
    /// went back) are brought to its time, so that they age from now.
    pub(crate) fn with(&self, rec: Record, window: Duration) -> Self {
        let from = rec.at_ns.saturating_sub(duration_ns(window));
        let mut records: Vec<Record> = self
            .records
            .iter()
            .filter(|r| r.at_ns >= from)
            .map(|r| Record {
                at_ns: r.at_ns.min(rec.at_ns),
                ..*r
            })
            .collect();
        records.push(rec);
        while records.len() > MAX_RECORDS {
            let a = records.remove(0);
            let b = &mut records[0];
            b.lost = b.lost.saturating_add(a.lost);
            b.tree = b.tree.max(a.tree);
            b.barrier |= a.barrier;
        }
        Self { records }
    }

    /// Records held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The content bytes a round from `old` to `new` loses, looking at the
/// paths in `candidates` (those that may differ): for each file of `old`
/// there, its size when `new` has no file there, or the bytes it shrinks
/// by; nothing when `new` still holds its content at any path (a rename,
/// a move, a copy) or at that path unchanged.
pub(crate) fn content_loss<'a>(
    old: &Manifest,
    new: View<'_>,
    candidates: impl Iterator<Item = &'a RelPath>,
) -> u64 {
    let mut lost: HashMap<&Hash, u64> = HashMap::new();
    for p in candidates {
        let Some(Kind::File { size, hash }) = old.entries.get(p).map(|m| &m.kind) else {
            continue;
        };
        let shrink = match new.get(p.as_str()).map(|m| &m.kind) {
            Some(Kind::File { hash: h, .. }) if h == hash => 0,
            Some(Kind::File { size: now, .. }) => size.saturating_sub(*now),
            _ => *size,
        };
        if shrink > 0 {
            let e = lost.entry(hash).or_default();
            *e = e.saturating_add(shrink);
        }
    }
    if lost.is_empty() {
        return 0;
    }
    // Content the new generation still holds is no loss.
    for (_, m) in new.iter() {
        if let Some(h) = m.file_hash() {
            lost.remove(h);
            if lost.is_empty() {
                return 0;
            }
        }
    }
    lost.values().fold(0, |a, b| a.saturating_add(*b))
}

/// The tree's content bytes: the sizes of its files.
pub(crate) fn content_bytes(m: &Manifest) -> u64 {
    m.entries
        .values()
        .map(crate::manifest::Meta::size)
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Meta;

    fn file(size: u64, seed: u8) -> Meta {
        Meta {
            kind: Kind::File {
                size,
                hash: [seed; 32],
            },
            mode: 0o644,
            mtime_ns: 1,
            local: Default::default(),
        }
    }

    fn manifest(files: &[(&str, u64, u8)]) -> Manifest {
        let mut m = Manifest::default();
        for (p, size, seed) in files {
            m.entries
                .insert(RelPath::new(p).expect("path"), file(*size, *seed));
        }
        m
    }

    fn loss(old: &Manifest, new: &Manifest) -> u64 {
        let all: std::collections::BTreeSet<&RelPath> =
            old.entries.keys().chain(new.entries.keys()).collect();
        content_loss(old, View::Whole(new), all.into_iter())
    }

    #[test]
    fn renames_copies_and_growth_lose_nothing_deletions_and_truncation_do() {
        let old = manifest(&[("a", 100, 1), ("b", 50, 2), ("c", 30, 3)]);
        // a renamed, b copied and deleted, c grown
        let new = manifest(&[("x/a", 100, 1), ("y", 50, 2), ("c", 90, 4)]);
        assert_eq!(loss(&old, &new), 0);
        // a deleted, b truncated to 10 bytes, c unchanged
        let new = manifest(&[("b", 10, 5), ("c", 30, 3)]);
        assert_eq!(loss(&old, &new), 100 + 40);
        // b's content moved to a (a's own content gone)
        let new = manifest(&[("a", 50, 2), ("c", 30, 3)]);
        assert_eq!(loss(&old, &new), 50);
        assert_eq!(content_bytes(&old), 180);
    }

    #[test]
    fn the_window_file_round_trips_and_refuses_damage() {
        let w = Window::default()
            .with(
                Record {
                    generation: 3,
                    at_ns: 1_000,
                    lost: 5,
                    tree: 100,
                    barrier: false,
                },
                Duration::from_secs(60),
            )
            .with(
                Record {
                    generation: 4,
                    at_ns: 2_000,
                    lost: 7,
                    tree: 95,
                    barrier: false,
                },
                Duration::from_secs(60),
            );
        let b = w.encode();
        assert_eq!(Window::decode(&b), Ok(w.clone()));
        for cut in 0..b.len() {
            assert!(Window::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = b.clone();
        flipped[9] ^= 1;
        assert!(Window::decode(&flipped).is_err());
        assert_eq!(w.within(2_000, Duration::from_secs(60)), (12, 100));
        assert_eq!(w.within(2_000, Duration::ZERO), (0, 0));
    }

    #[test]
    fn settle_drops_uncommitted_records_and_what_a_barrier_confirmed() {
        let rec = |generation, barrier| Record {
            generation,
            at_ns: 10,
            lost: 1,
            tree: 10,
            barrier,
        };
        let d = Duration::from_secs(1);
        let w = Window::default()
            .with(rec(1, false), d)
            .with(rec(2, false), d)
            .with(rec(3, true), d)
            .with(rec(4, false), d);
        let mut at2 = w.clone();
        at2.settle(2);
        assert_eq!(at2.len(), 2, "the barrier of generation 3 never committed");
        let mut at4 = w;
        at4.settle(4);
        assert_eq!(at4.len(), 1, "generation 3 confirmed what came before");
    }

    #[test]
    fn old_records_leave_and_the_count_is_bounded() {
        let d = Duration::from_secs(10);
        let mut w = Window::default();
        for i in 0..(MAX_RECORDS as i64 + 10) {
            w = w.with(
                Record {
                    generation: i as u64,
                    at_ns: i,
                    lost: 1,
                    tree: 1,
                    barrier: false,
                },
                d,
            );
        }
        assert_eq!(w.len(), MAX_RECORDS);
        // merged, not forgotten
        assert_eq!(w.within(0, d).0, MAX_RECORDS as u64 + 10);
        let later = w.with(
            Record {
                generation: 1 << 20,
                at_ns: 60_000_000_000,
                lost: 1,
                tree: 1,
                barrier: false,
            },
            d,
        );
        assert_eq!(later.len(), 1, "everything older than the window left");
    }
}
