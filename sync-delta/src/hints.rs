//! Change-driven rounds: the dirty-path hints a source's driver gives
//! (from the kernel's change notifications), the scan of only those paths,
//! and the data-loss window they let the source report.
//!
//! A hint names a path relative to the tree: that path, and everything
//! below it when it is (or was) a directory, may have changed. A hinted
//! scan gives the entries a full scan would give for the hinted paths and
//! the directories that hold them, and keeps the rest of the last scan.
//! Hints can only be trusted while they are complete: after the source
//! opens (a restart: what changed while the node was down has no hint),
//! after an overflow (the driver lost hints), and every full-scan period,
//! the next round walks the whole tree again.

use crate::error::StoreError;
use crate::exclude::Exclude;
use crate::manifest::{Kind, LocalStat, Meta};
use crate::packed::{Packed, PackedBuilder};
use crate::path::{RelPath, STATE_DIR};
use crate::store::{Stat, StatKind, Storage};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// `i64::MIN`: "since ever" (nothing was ever confirmed).
pub(crate) const SINCE_EVER: i64 = i64::MIN;

/// What the source knows of changes its replica does not hold yet.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    /// The driver gives hints.
    pub watching: bool,
    /// Hinted paths not yet scanned, with the wall time (ns) of the first
    /// hint since the replica last confirmed them.
    pub dirty: BTreeMap<RelPath, i64>,
    /// Paths scanned by rounds the replica has not confirmed yet.
    pub in_round: BTreeMap<RelPath, i64>,
    /// Hints may be missing for changes since this wall time (ns): after
    /// opening and after an overflow, until a full scan taken after it is
    /// confirmed. `SINCE_EVER` when no generation was ever confirmed.
    pub blind: Option<i64>,
    /// Bumped by every overflow: a full scan clears `blind` only when no
    /// overflow came after its request.
    pub blind_seq: u64,
    /// The whole tree is to be scanned (a hint on the root, an order), with
    /// the time of the first such request.
    pub full_pending: Option<i64>,
    /// The same, taken by the round in flight until it is confirmed.
    pub full_in_round: Option<i64>,
    /// When the last full scan started, and its taken-at time once
    /// confirmed.
    pub last_full: Option<Instant>,
    pub full_clean_ns: Option<i64>,
    /// The replica was told of the changes (`Changed`) at this batch's end.
    pub batch_deadline: Option<Instant>,
    /// A full scan is due and the replica was told.
    pub full_nudged: bool,
    /// The round in flight: a full scan (with the overflow count at its
    /// request).
    pub round_full: Option<u64>,
}

impl Hints {
    /// The oldest change the source knows its replica lacks (wall ns).
    pub fn oldest(&self) -> Option<i64> {
        self.dirty
            .values()
            .chain(self.in_round.values())
            .copied()
            .chain(self.blind)
            .chain(self.full_pending)
            .chain(self.full_in_round)
            .min()
    }

    /// Whether the next round must walk the whole tree.
    pub fn full_due(&self, now: Instant, period: Duration) -> bool {
        !self.watching
            || self.blind.is_some()
            || self.full_pending.is_some()
            || self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= period)
    }

    /// When the next full scan is due.
    pub fn next_full(&self, period: Duration) -> Option<Instant> {
        self.last_full.and_then(|t| t.checked_add(period))
    }
}

/// What a hinted scan found.
pub(crate) struct Hinted<'a> {
    /// The new manifest: the last scan with the hinted paths' changes.
    pub manifest: Overlay<'a>,
    /// Files that need hashing, with their stat.
    pub to_hash: Vec<(RelPath, Stat)>,
}

/// The last scan (packed) with changes over it: subtrees removed and
/// entries set, merged into a new packed manifest at the end. A hinted
/// scan touches a few paths of a large tree; the tree is never copied
/// into a map.
pub(crate) struct Overlay<'a> {
    base: &'a Packed,
    /// Paths removed with everything below them.
    removed: BTreeSet<String>,
    upserts: BTreeMap<RelPath, Meta>,
}

fn is_removed(removed: &BTreeSet<String>, p: &str) -> bool {
    !removed.is_empty()
        && (removed.contains(p) || p.match_indices('/').any(|(i, _)| removed.contains(&p[..i])))
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a Packed) -> Self {
        Self {
            base,
            removed: BTreeSet::new(),
            upserts: BTreeMap::new(),
        }
    }

    pub fn get(&self, p: &str) -> Option<Meta> {
        if let Some(m) = self.upserts.get(p) {
            return Some(m.clone());
        }
        if is_removed(&self.removed, p) {
            return None;
        }
        self.base.get(p)
    }

    pub fn insert(&mut self, p: RelPath, m: Meta) {
        self.upserts.insert(p, m);
    }

    /// Removes `p` and everything below it.
    fn remove_under(&mut self, p: &RelPath) {
        self.upserts.remove(p);
        let prefix = format!("{}/", p.as_str());
        let under: Vec<RelPath> = self
            .upserts
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.as_str().starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.upserts.remove(&k);
        }
        self.removed.insert(p.as_str().to_owned());
    }

    /// The new manifest: one merge of the last scan with the changes. An
    /// entry set under a path that is no longer a directory is dropped
    /// (a kept old entry may sit under one).
    pub fn finish(self) -> Packed {
        let Overlay {
            base,
            removed,
            upserts,
        } = self;
        let set: Vec<RelPath> = upserts.keys().cloned().collect();
        let mut b = PackedBuilder::new();
        let mut ups = upserts.into_iter().peekable();
        let mut c = base.cursor();
        while let Some((p, m)) = c.next_entry() {
            while let Some((up, um)) = ups.next_if(|(up, _)| up.as_str() < p) {
                b.push(up.as_str(), &um);
            }
            if let Some((up, um)) = ups.next_if(|(up, _)| up.as_str() == p) {
                b.push(up.as_str(), &um);
                continue;
            }
            if !is_removed(&removed, p) {
                b.push(p, m);
            }
        }
        for (up, um) in ups {
            b.push(up.as_str(), &um);
        }
        let m = b.finish();
        let orphan = set.iter().any(|p| {
            p.parent()
                .is_some_and(|pp| m.get(pp).is_none_or(|e| e.kind != Kind::Dir))
        });
        if orphan {
            let mut mm = m.to_manifest();
            let bad: Vec<RelPath> = mm
                .entries
                .keys()
                .filter(|p| {
                    p.parent()
                        .is_some_and(|pp| mm.entries.get(pp).is_none_or(|e| e.kind != Kind::Dir))
                })
                .cloned()
                .collect();
            for p in bad {
                mm.entries.remove(&p);
            }
            return Packed::from_manifest(&mm);
        }
        m
    }
}

fn dir_meta(st: &Stat) -> Meta {
    Meta {
        kind: Kind::Dir,
        mode: st.mode,
        mtime_ns: st.mtime_ns,
        local: LocalStat {
            ctime_ns: st.ctime_ns,
            ino: st.ino,
        },
    }
}

fn skipped(exclude: &Exclude, p: &str) -> bool {
    p == STATE_DIR || p.starts_with(".sync-delta/") || exclude.is_excluded(p)
}

/// Scans the hinted paths over the last scan `cache`: each hinted path is
/// looked at again (a directory with everything below it), and so is
/// every directory that holds one. A path whose parent is no longer a
/// directory is replaced by its shallowest such ancestor. Files are
/// returned for hashing unless the quick check reuses `cache`'s hash.
///
/// # Errors
/// A [`StoreError`] other than a path that is gone.
pub(crate) fn scan_hinted<'a, S: Storage + ?Sized>(
    store: &mut S,
    exclude: &Exclude,
    cache: &'a Packed,
    paths: &BTreeSet<RelPath>,
) -> Result<Hinted<'a>, StoreError> {
    let mut m = Overlay::new(cache);
    let mut to_hash = Vec::new();
    // Directories seen to be directories now (`true`) or not (`false`).
    let mut dirs: HashMap<String, Option<Stat>> = HashMap::new();
    let mut lstat = |store: &mut S, p: &str| -> Result<Option<Stat>, StoreError> {
        if let Some(s) = dirs.get(p) {
            return Ok(*s);
        }
        let s = match store.stat(p) {
            Ok(s) => Some(s),
            Err(StoreError::NotFound | StoreError::NotDir) => None,
            Err(e) => return Err(e),
        };
        dirs.insert(p.to_owned(), s);
        Ok(s)
    };
    let mut walked: Vec<RelPath> = Vec::new();
    let mut parents: BTreeSet<RelPath> = BTreeSet::new();
    let mut done: BTreeSet<RelPath> = BTreeSet::new();
    let covered = |walked: &[RelPath], p: &str| {
        walked.iter().any(|d| {
            p == d.as_str() || (p.starts_with(d.as_str()) && p[d.as_str().len()..].starts_with('/'))
        })
    };
    for hinted in paths {
        if skipped(exclude, hinted.as_str()) || covered(&walked, hinted.as_str()) {
            continue;
        }
        // The shallowest ancestor that is not a directory now stands for
        // the hint (its kind changed, or it went away with the path).
        let mut target = hinted.clone();
        let s = hinted.as_str();
        for (i, _) in s.match_indices('/') {
            let anc = &s[..i];
            let st = lstat(store, anc)?;
            let tracked = m.get(anc).is_some_and(|e| e.kind == Kind::Dir);
            if !tracked || st.is_none_or(|st| st.kind != StatKind::Dir) {
                target = RelPath::new(anc).map_err(|_| StoreError::NotFound)?;
                break;
            }
        }
        if covered(&walked, target.as_str()) || !done.insert(target.clone()) {
            continue;
        }
        if let Some(parent) = target.parent()
            && let Ok(pp) = RelPath::new(parent)
        {
            parents.insert(pp);
        }
        m.remove_under(&target);
        let Some(st) = lstat(store, target.as_str())? else {
            continue;
        };
        match st.kind {
            StatKind::Dir => {
                m.insert(target.clone(), dir_meta(&st));
                walk_dir(store, exclude, cache, &target, &mut m, &mut to_hash)?;
                walked.push(target);
            }
            _ => add_entry(store, cache, target, st, &mut m, &mut to_hash)?,
        }
    }
    // The directories that hold hinted paths: their own metadata (a name
    // added or removed changes the mtime).
    for d in parents {
        if skipped(exclude, d.as_str()) {
            continue;
        }
        if let Some(st) = lstat(store, d.as_str())?
            && st.kind == StatKind::Dir
            && m.get(d.as_str()).is_some_and(|e| e.kind == Kind::Dir)
        {
            m.insert(d, dir_meta(&st));
        }
    }
    Ok(Hinted {
        manifest: m,
        to_hash,
    })
}

/// One non-directory entry, as a full scan makes it.
fn add_entry<S: Storage + ?Sized>(
    store: &mut S,
    cache: &Packed,
    p: RelPath,
    st: Stat,
    m: &mut Overlay<'_>,
    to_hash: &mut Vec<(RelPath, Stat)>,
) -> Result<(), StoreError> {
    let local = LocalStat {
        ctime_ns: st.ctime_ns,
        ino: st.ino,
    };
    match st.kind {
        StatKind::File => {
            if let Some(old) = cache.get(p.as_str())
                && crate::generation::quick_match(&old, &st)
            {
                m.insert(p, old);
            } else {
                to_hash.push((p, st));
            }
        }
        StatKind::Symlink => {
            let t = match store.read_link(p.as_str()) {
                Ok(t) => t,
                Err(StoreError::NotFound) => return Ok(()),
                Err(e) => return Err(e),
            };
            if !t.is_empty() && t.len() <= crate::manifest::MAX_LINK_LEN {
                m.insert(
                    p,
                    Meta {
                        kind: Kind::Symlink { target: t },
                        mode: st.mode,
                        mtime_ns: st.mtime_ns,
                        local,
                    },
                );
            }
        }
        StatKind::Dir | StatKind::Other => {}
    }
    Ok(())
}

/// Everything below directory `dir`, as a full walk lists it.
fn walk_dir<S: Storage + ?Sized>(
    store: &mut S,
    exclude: &Exclude,
    cache: &Packed,
    dir: &RelPath,
    m: &mut Overlay<'_>,
    to_hash: &mut Vec<(RelPath, Stat)>,
) -> Result<(), StoreError> {
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let names = match store.list_dir(d.as_str()) {
            Ok(n) => n,
            Err(StoreError::NotFound | StoreError::NotDir) => continue,
            Err(e) => return Err(e),
        };
        for name in names {
            let Ok(p) = d.join(&name) else { continue };
            if skipped(exclude, p.as_str()) {
                continue;
            }
            let st = match store.stat(p.as_str()) {
                Ok(s) => s,
                Err(StoreError::NotFound | StoreError::NotDir) => continue,
                Err(e) => return Err(e),
            };
            if st.kind == StatKind::Dir {
                m.insert(p.clone(), dir_meta(&st));
                stack.push(p);
            } else {
                add_entry(store, cache, p, st, m, to_hash)?;
            }
        }
    }
    Ok(())
}
