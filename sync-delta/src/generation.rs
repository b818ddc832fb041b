//! Generations on disk: the base manifest and its change log, the journal
//! (commit record), the small state file, roll-forward and roll-back, and
//! the quarantine of a returning source.
//!
//! State folder (`.sync-delta/` at the root of the tree, never
//! replicated):
//!
//! | path | what |
//! | --- | --- |
//! | `manifest` | a full manifest (the base): base id, generation, taken-at, entries |
//! | `manifest.log` | change records since the base, appended one per generation |
//! | `journal` | a committed generation whose ops are not all applied yet |
//! | `state` | role of this node, and the latest confirmation time |
//! | `guard` | the mass-deletion guard's window: what recent rounds lost (see `guard`) |
//! | `stage/` | files written for a round in progress |
//! | `quarantine/` | local changes moved aside: by a returning source, or found in a round's way |
//!
//! A round commits by renaming a fully written and synced `journal.tmp`
//! to `journal` (the commit record): its ops and the manifest changes.
//! The ops are idempotent; once applied, the record's manifest changes
//! are appended to `manifest.log` and `journal` is removed. So a round
//! writes in proportion to what changed, not to the tree; the base is
//! rewritten only when the log has grown to half its size, or at once,
//! in the record's place, for a record that changes more than half the
//! entries (a first round). The journal and the base are written a
//! megabyte at a time. Opening replays a
//! `journal` if there is one (roll forward) and empties `stage/` (roll
//! back).
//!
//! A file whose new content keeps most of its old bytes at the same
//! offsets (an append, an overwrite in place, a cut) is patched where it
//! lies instead of being installed whole: its dirty ranges' new bytes are
//! staged as a redo record (`stage/rN-pM`, fsynced before the commit
//! record) and the journal's patch op names the ranges, the new length and
//! the metadata ([`Patch`]). Before the commit record the live file is
//! untouched; after it, the op writes the fixed bytes at their fixed
//! offsets, sets the length and metadata and syncs the file, so replaying
//! it after a crash in the middle gives the same file. The records are
//! removed once the journal is. A journal whose patch ranges are
//! unordered, overlapping or past the new length, whose stage name leaves
//! `stage/`, or whose record is missing or short is refused
//! ([`StoreError::Corrupt`]) before any op is applied. Journals of the
//! previous release (no patch op) replay as before; the log keeps no ops
//! at all, only manifest changes.
//!
//! Local divergence (a Backup's tree that is not the generation its
//! manifest records: a stray file or symlink where the round makes a
//! directory, a tracked directory deleted or replaced by a file) is found
//! before the commit record is written ([`prepare`]): what is in the way
//! moves into a new quarantine folder, and tracked entries found missing
//! leave the round's manifest (the next round fetches them again). Applying
//! a record also clears its own way ([`apply_ops`]): a record that cannot
//! be applied as written (left by an older version, or a local change that
//! raced the round) moves what blocks an op aside, recreates missing
//! parents and goes on, so opening never fails the same way forever.

use crate::error::{StoreError, WireError};
use crate::exclude::Exclude;
use crate::manifest::{Kind, LocalStat, Manifest, Meta, View, decode_entry, encode_entry};
use crate::packed::{Packed, PackedBuilder};
use crate::path::{RelPath, STATE_DIR};
use crate::store::{StatKind, Storage, read_all, write_atomic};
use crate::wire::{Reader, Writer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BASE_MAGIC: &[u8; 4] = b"SDB1";
const DELTA_MAGIC: &[u8; 4] = b"SDD1";
const STATE_MAGIC: &[u8; 4] = b"SDS1";
/// Largest state file read back (bounds memory on a corrupt file).
const MAX_RECORD: u64 = 1 << 32;

pub(crate) const STAGE_DIR: &str = ".sync-delta/stage";
pub(crate) const QUARANTINE_DIR: &str = ".sync-delta/quarantine";
const JOURNAL: &str = ".sync-delta/journal";
const MANIFEST: &str = ".sync-delta/manifest";
const LOG: &str = ".sync-delta/manifest.log";
const STATE: &str = ".sync-delta/state";

/// Which side this node's tree was last serving as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A replica: its tree is a generation it received.
    Replica,
    /// A source: its tree may hold changes its peer never confirmed.
    Source,
}

/// One journal op; each is idempotent, so a replay after a crash finishes
/// the round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JOp {
    Delete(RelPath),
    RemoveDir(RelPath),
    Mkdir(RelPath, u32),
    Install(StageName, RelPath),
    SetMeta(RelPath, u32, i64),
    /// A file patched where it lies (see [`Patch`]).
    Patch(Box<Patch>),
}

/// A file patched where it lies, a redo record: the new bytes of its dirty
/// ranges, staged one after another in `stage/<stage>` and fsynced before
/// the commit record, are written at their offsets; then the length is
/// set, the metadata written and the file synced. Fixed bytes at fixed
/// offsets and a fixed length: applying it again after a crash in the
/// middle gives the same file. The ranges are ordered, disjoint, not
/// empty and inside `len` (checked when the record is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    /// The staged record's name in `stage/`.
    pub stage: String,
    pub path: RelPath,
    /// The new length.
    pub len: u64,
    /// `(offset, length)` of each dirty range, in order.
    pub ranges: Vec<(u64, u64)>,
    pub mode: u32,
    pub mtime_ns: i64,
}

impl Patch {
    /// Bytes the staged record holds: the ranges' total.
    pub(crate) fn staged_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// Ranges ordered, disjoint, not empty, inside the new length; a
    /// stage name that stays in `stage/`.
    fn check(&self) -> Result<(), WireError> {
        if !stage_name_ok(&self.stage) {
            return Err(WireError::BadValue {
                field: 24,
                value: self.stage.len() as u64,
            });
        }
        let mut end = 0u64;
        for &(off, len) in &self.ranges {
            if len == 0 || off < end {
                return Err(WireError::BadValue {
                    field: 25,
                    value: off,
                });
            }
            end = off
                .checked_add(len)
                .filter(|e| *e <= self.len)
                .ok_or(WireError::BadValue {
                    field: 26,
                    value: off,
                })?;
        }
        Ok(())
    }
}

/// A staged file's name in `stage/`. The names a round makes,
/// `r<round>-f<id>` (`-l<id>` for a symlink), are held as their numbers:
/// a first round installs a file for every file of the tree, and a string
/// each would take a heap block each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StageName {
    Made {
        seq: u64,
        id: u32,
        link: bool,
    },
    /// Any other name a journal holds.
    Other(Box<str>),
}

impl StageName {
    /// `n` as a made name when it is exactly one (so it reads back the
    /// same), otherwise as it is.
    pub(crate) fn parse(n: &str) -> Self {
        let made = (|| {
            let (seq, rest) = n.strip_prefix('r')?.split_once('-')?;
            let link = match rest.as_bytes().first()? {
                b'f' => false,
                b'l' => true,
                _ => return None,
            };
            let m = StageName::Made {
                seq: seq.parse().ok()?,
                id: rest[1..].parse().ok()?,
                link,
            };
            (m.to_string() == n).then_some(m)
        })();
        made.unwrap_or_else(|| StageName::Other(n.into()))
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageName::Made { seq, id, link } => {
                write!(f, "r{seq}-{}{id}", if *link { 'l' } else { 'f' })
            }
            StageName::Other(n) => f.write_str(n),
        }
    }
}

/// A staged file's name: one component that stays in `stage/`.
fn stage_name_ok(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0'])
}

/// One generation's record: the journal before it is applied, a log
/// record after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    /// The base this record applies to.
    pub base_id: u64,
    /// Position in that base's log (1, 2, ...).
    pub seq: u64,
    pub generation: u64,
    pub taken_at_ns: i64,
    pub ops: Vec<JOp>,
    /// New entries (`Some`) and removed paths (`None`).
    pub changes: Vec<(RelPath, Option<Meta>)>,
}

/// The manifest as loaded, and where its log stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Persisted {
    pub manifest: Manifest,
    pub generation: u64,
    pub taken_at_ns: i64,
    pub base_id: u64,
    /// Records in the log that apply to the base.
    pub seq: u64,
    /// Valid bytes of the log.
    pub log_len: u64,
    /// Bytes of the base.
    pub base_len: u64,
}

pub(crate) fn with_crc(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn split_crc(b: &[u8]) -> Result<&[u8], WireError> {
    if b.len() < 4 {
        return Err(WireError::Truncated {
            need: 4,
            have: b.len(),
        });
    }
    let (body, tail) = b.split_at(b.len() - 4);
    let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(WireError::BadChecksum);
    }
    Ok(body)
}

/// A manifest's entries in path order, as a base is written from them:
/// a map ([`Manifest`]) or a source's packed manifest.
pub(crate) trait Entries {
    fn count(&self) -> usize;
    fn each(&self, f: &mut dyn FnMut(&str, &Meta));
}

impl Entries for Manifest {
    fn count(&self) -> usize {
        self.len()
    }
    fn each(&self, f: &mut dyn FnMut(&str, &Meta)) {
        for (p, m) in &self.entries {
            f(p.as_str(), m);
        }
    }
}

impl Entries for crate::packed::Packed {
    fn count(&self) -> usize {
        self.len()
    }
    fn each(&self, f: &mut dyn FnMut(&str, &Meta)) {
        self.for_each(|p, m| f(p, m));
    }
}

/// A base in one buffer (what [`write_base_with`] writes in pieces).
#[cfg(test)]
fn encode_base(base_id: u64, generation: u64, taken_at_ns: i64, m: &dyn Entries) -> Vec<u8> {
    let mut out = Vec::new();
    let r = encode_base_pieces(
        base_id,
        generation,
        taken_at_ns,
        m,
        &mut out,
        usize::MAX,
        &mut |_| Ok(()),
    );
    debug_assert!(r.is_ok());
    out
}

/// Encodes a base as [`Delta::encode_pieces`] does a record: each run of
/// about `piece` bytes to `sink`, the rest and the checksum left in `out`.
fn encode_base_pieces(
    base_id: u64,
    generation: u64,
    taken_at_ns: i64,
    m: &dyn Entries,
    out: &mut Vec<u8>,
    piece: usize,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut w = Writer(out);
    w.bytes(BASE_MAGIC);
    w.u64(base_id);
    w.u64(generation);
    w.i64(taken_at_ns);
    w.u64(m.count() as u64);
    let mut crc = 0u32;
    let mut failed = None;
    m.each(&mut |p, meta| {
        if failed.is_some() {
            return;
        }
        crate::manifest::encode_fields_str(&mut Writer(&mut *out), p, meta, meta.mtime_ns, true);
        if out.len() >= piece {
            crc = crc32c::crc32c_append(crc, out);
            if let Err(e) = sink(out) {
                failed = Some(e);
            }
            out.clear();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let crc = crc32c::crc32c_append(crc, out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Pieces of a state file written in a stream (see [`write_streamed`]): a
/// quarter of a MiB, written while a first round's commit holds the whole
/// tree's record and ops.
const PIECE: usize = 256 << 10;

/// Writes `dir/name` as [`write_atomic`] does (a temporary file, fsynced,
/// renamed over), its content made by `encode` piece by piece: `encode`
/// hands full pieces to the sink and leaves the last in the buffer.
/// Returns the bytes written.
fn write_streamed<S: Storage + ?Sized>(
    s: &mut S,
    dir: &str,
    name: &str,
    encode: impl FnOnce(
        &mut Vec<u8>,
        &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let tmp = format!("{dir}/{name}.tmp");
    let path = format!("{dir}/{name}");
    s.create(&tmp)?;
    let mut out = Vec::with_capacity(PIECE + (64 << 10));
    let mut off = 0u64;
    encode(&mut out, &mut |b: &[u8]| {
        s.write_at(&tmp, off, b)?;
        off += b.len() as u64;
        Ok(())
    })?;
    s.write_at(&tmp, off, &out)?;
    off += out.len() as u64;
    s.sync_file(&tmp)?;
    s.rename(&tmp, &path)?;
    s.sync_dir(dir)?;
    Ok(off)
}

/// The whole-buffer decoder [`stream_base`] is checked against.
#[cfg(test)]
fn decode_base(b: &[u8]) -> Result<(u64, u64, i64, Manifest), WireError> {
    let body = split_crc(b)?;
    let mut r = Reader(body);
    if r.take(4)? != BASE_MAGIC {
        return Err(WireError::BadMagic);
    }
    let base_id = r.u64()?;
    let generation = r.u64()?;
    let taken_at_ns = r.i64()?;
    let n = r.u64()?;
    if n > body.len() as u64 {
        return Err(WireError::TooMany {
            count: n,
            max: body.len() as u64,
        });
    }
    let manifest = Manifest {
        entries: (0..n)
            .map(|_| decode_entry(&mut r, true))
            .collect::<Result<_, _>>()?,
    };
    r.end()?;
    Ok((base_id, generation, taken_at_ns, manifest))
}

impl Delta {
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the record (its checksum last) to `out`: a log entry is
    /// framed in place, never copied whole behind its length.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        // One piece: nothing leaves `out`.
        let r = self.encode_pieces(out, usize::MAX, &mut |_| Ok(()));
        debug_assert!(r.is_ok());
    }

    /// Encodes the record at the end of `out`, handing each run of about
    /// `piece` bytes to `sink` and clearing it from `out` as it goes; the
    /// rest, the checksum (over every piece) last, stays in `out`. A
    /// record of a whole tree is never whole in memory this way.
    fn encode_pieces(
        &self,
        out: &mut Vec<u8>,
        piece: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let start = out.len();
        let mut crc = 0u32;
        let mut spill = |out: &mut Vec<u8>| -> Result<(), StoreError> {
            if out.len() - start >= piece {
                crc = crc32c::crc32c_append(crc, &out[start..]);
                sink(&out[start..])?;
                out.truncate(start);
            }
            Ok(())
        };
        let mut w = Writer(out);
        w.bytes(DELTA_MAGIC);
        w.u64(self.base_id);
        w.u64(self.seq);
        w.u64(self.generation);
        w.i64(self.taken_at_ns);
        w.u64(self.ops.len() as u64);
        for op in &self.ops {
            match op {
                JOp::Delete(p) => {
                    w.u8(0);
                    w.str16(p.as_str());
                }
                JOp::RemoveDir(p) => {
                    w.u8(1);
                    w.str16(p.as_str());
                }
                JOp::Mkdir(p, mode) => {
                    w.u8(2);
                    w.str16(p.as_str());
                    w.u32(*mode);
                }
                JOp::Install(stage, p) => {
                    w.u8(3);
                    w.str16(&stage.to_string());
                    w.str16(p.as_str());
                }
                JOp::SetMeta(p, mode, mtime) => {
                    w.u8(4);
                    w.str16(p.as_str());
                    w.u32(*mode);
                    w.i64(*mtime);
                }
                JOp::Patch(pt) => {
                    w.u8(5);
                    w.str16(&pt.stage);
                    w.str16(pt.path.as_str());
                    w.u64(pt.len);
                    w.u32(pt.mode);
                    w.i64(pt.mtime_ns);
                    w.u64(pt.ranges.len() as u64);
                    for &(off, len) in &pt.ranges {
                        w.u64(off);
                        w.u64(len);
                    }
                }
            }
            spill(w.0)?;
        }
        w.u64(self.changes.len() as u64);
        for (p, m) in &self.changes {
            match m {
                Some(m) => {
                    w.u8(0);
                    encode_entry(&mut w, p, m, true);
                }
                None => {
                    w.u8(1);
                    w.str16(p.as_str());
                }
            }
            spill(w.0)?;
        }
        let crc = crc32c::crc32c_append(crc, &out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, WireError> {
        let body = split_crc(b)?;
        let mut r = Reader(body);
        if r.take(4)? != DELTA_MAGIC {
            return Err(WireError::BadMagic);
        }
        let base_id = r.u64()?;
        let seq = r.u64()?;
        let generation = r.u64()?;
        let taken_at_ns = r.i64()?;
        let n_ops = r.u64()?;
        if n_ops > body.len() as u64 {
            return Err(WireError::TooMany {
                count: n_ops,
                max: body.len() as u64,
            });
        }
        let path = |r: &mut Reader<'_>| -> Result<RelPath, WireError> {
            Ok(RelPath::from_bytes(r.bytes16()?)?)
        };
        let stage = |r: &mut Reader<'_>| -> Result<String, WireError> {
            std::str::from_utf8(r.bytes16()?)
                .ok()
                .filter(|n| stage_name_ok(n))
                .map(str::to_owned)
                .ok_or(WireError::BadValue {
                    field: 20,
                    value: 0,
                })
        };
        let mut ops = Vec::new();
        for _ in 0..n_ops {
            ops.push(match r.u8()? {
                0 => JOp::Delete(path(&mut r)?),
                1 => JOp::RemoveDir(path(&mut r)?),
                2 => JOp::Mkdir(path(&mut r)?, r.u32()?),
                3 => JOp::Install(StageName::parse(&stage(&mut r)?), path(&mut r)?),
                4 => JOp::SetMeta(path(&mut r)?, r.u32()?, r.i64()?),
                5 => {
                    let stage = stage(&mut r)?;
                    let path = path(&mut r)?;
                    let len = r.u64()?;
                    let mode = r.u32()?;
                    let mtime_ns = r.i64()?;
                    let n = r.u64()?;
                    if n > body.len() as u64 / 16 {
                        return Err(WireError::TooMany {
                            count: n,
                            max: body.len() as u64 / 16,
                        });
                    }
                    let ranges =
                        (0..n)
                            .map(|_| Ok((r.u64()?, r.u64()?)))
                            .collect::<Result<Vec<_>, WireError>>()?;
                    let pt = Patch {
                        stage,
                        path,
                        len,
                        ranges,
                        mode,
                        mtime_ns,
                    };
                    pt.check()?;
                    JOp::Patch(Box::new(pt))
                }
                v => {
                    return Err(WireError::BadValue {
                        field: 21,
                        value: u64::from(v),
                    });
                }
            });
        }
        let n = r.u64()?;
        if n > body.len() as u64 {
            return Err(WireError::TooMany {
                count: n,
                max: body.len() as u64,
            });
        }
        let mut changes = Vec::new();
        for _ in 0..n {
            changes.push(match r.u8()? {
                0 => {
                    let (p, m) = decode_entry(&mut r, true)?;
                    (p, Some(m))
                }
                1 => (path(&mut r)?, None),
                v => {
                    return Err(WireError::BadValue {
                        field: 23,
                        value: u64::from(v),
                    });
                }
            });
        }
        r.end()?;
        // A patch writes the length its record's manifest change says.
        for op in &ops {
            if let JOp::Patch(pt) = op {
                let recorded = changes.iter().any(|(p, m)| {
                    *p == pt.path
                        && matches!(m, Some(Meta { kind: Kind::File { size, .. }, .. }) if *size == pt.len)
                });
                if !recorded {
                    return Err(WireError::BadValue {
                        field: 27,
                        value: pt.len,
                    });
                }
            }
        }
        Ok(Self {
            base_id,
            seq,
            generation,
            taken_at_ns,
            ops,
            changes,
        })
    }
}

/// The small state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateFile {
    pub role: Role,
    pub generation: u64,
    pub taken_at_ns: i64,
}

impl StateFile {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.bytes(STATE_MAGIC);
        w.u8(match self.role {
            Role::Replica => 0,
            Role::Source => 1,
        });
        w.u64(self.generation);
        w.i64(self.taken_at_ns);
        with_crc(out)
    }

    fn decode(b: &[u8]) -> Result<Self, WireError> {
        let body = split_crc(b)?;
        let mut r = Reader(body);
        if r.take(4)? != STATE_MAGIC {
            return Err(WireError::BadMagic);
        }
        let role = match r.u8()? {
            0 => Role::Replica,
            1 => Role::Source,
            v => {
                return Err(WireError::BadValue {
                    field: 22,
                    value: u64::from(v),
                });
            }
        };
        let s = Self {
            role,
            generation: r.u64()?,
            taken_at_ns: r.i64()?,
        };
        r.end()?;
        Ok(s)
    }
}

/// When the snapshot of the generation a tree is at was taken (ns since
/// the Unix epoch), from its persisted manifest (`generation`,
/// `taken_at_ns`) and its state file: the state's time when it records the
/// same generation (a later round that changed nothing confirmed it
/// again), else the manifest's; for generation 0, a replica's confirmed
/// empty source from the state; `None` when nothing was ever confirmed.
pub(crate) fn confirmed_taken_at_ns(
    state: &StateFile,
    generation: u64,
    taken_at_ns: i64,
) -> Option<i64> {
    if state.generation == generation && generation > 0 {
        Some(state.taken_at_ns.max(taken_at_ns))
    } else if generation > 0 {
        Some(taken_at_ns)
    } else if state.role == Role::Replica && state.generation == 0 && state.taken_at_ns != 0 {
        Some(state.taken_at_ns)
    } else {
        None
    }
}

/// A time in ns since the Unix epoch as a [`SystemTime`].
pub(crate) fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub persisted: Persisted,
    /// The manifest, packed, from [`recover_as`].
    pub packed: Option<Packed>,
    pub state: StateFile,
    pub rolled_forward: bool,
    pub rolled_back: u64,
    /// What rolling forward had to move aside or drop.
    pub repair: Repair,
}

fn ignore(r: Result<(), StoreError>, ok: &[StoreError]) -> Result<(), StoreError> {
    match r {
        Err(e) if !ok.contains(&e) => Err(e),
        _ => Ok(()),
    }
}

pub(crate) fn ensure_dirs<S: Storage + ?Sized>(s: &mut S) -> Result<(), StoreError> {
    for d in [STATE_DIR, STAGE_DIR] {
        match s.stat(d) {
            Ok(st) if st.kind == StatKind::Dir => {}
            Ok(_) => return Err(StoreError::NotDir),
            Err(StoreError::NotFound) => {
                s.create_dir(d, 0o700)?;
                s.sync_dir(d.rsplit_once('/').map_or("", |x| x.0))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Empties `stage/` (roll back a round that did not commit).
pub(crate) fn clear_stage<S: Storage + ?Sized>(s: &mut S) -> Result<u64, StoreError> {
    let names = s.list_dir(STAGE_DIR)?;
    let n = names.len() as u64;
    for name in names {
        ignore(
            s.remove_file(&format!("{STAGE_DIR}/{name}")),
            &[StoreError::NotFound],
        )?;
    }
    Ok(n)
}

/// Errors of a path whose shape is not what an op expects: the tree
/// diverged locally from its generation, or an op ran before.
const SHAPE: [StoreError; 6] = [
    StoreError::NotFound,
    StoreError::AlreadyExists,
    StoreError::NotDir,
    StoreError::IsDir,
    StoreError::NotEmpty,
    StoreError::SymlinkInPath,
];

/// A new quarantine folder (`.sync-delta/quarantine/qN-gG`), made on first
/// use, that local paths are moved into with their relative path kept.
#[derive(Debug)]
pub(crate) struct Aside {
    generation: u64,
    name: Option<String>,
    made: BTreeSet<String>,
    /// Paths moved into the folder.
    pub moved: Vec<String>,
}

impl Aside {
    pub(crate) fn new(generation: u64) -> Self {
        Self {
            generation,
            name: None,
            made: BTreeSet::new(),
            moved: Vec::new(),
        }
    }

    /// The folder's name, once something was moved.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn base<S: Storage + ?Sized>(&mut self, s: &mut S) -> Result<String, StoreError> {
        if let Some(n) = &self.name {
            return Ok(format!("{QUARANTINE_DIR}/{n}"));
        }
        match s.create_dir(QUARANTINE_DIR, 0o700) {
            Ok(()) | Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e),
        }
        let existing = quarantine_list(s)?;
        let mut n = existing.len() + 1;
        let mut name = format!("q{n}-g{}", self.generation);
        while existing.contains(&name) {
            n += 1;
            name = format!("q{n}-g{}", self.generation);
        }
        let base = format!("{QUARANTINE_DIR}/{name}");
        s.create_dir(&base, 0o700)?;
        self.name = Some(name);
        Ok(base)
    }

    /// Moves `path` (a file, symlink or whole directory) into the folder.
    pub(crate) fn put<S: Storage + ?Sized>(
        &mut self,
        s: &mut S,
        path: &str,
    ) -> Result<(), StoreError> {
        let base = self.base(s)?;
        // Recreate the path's directories inside the folder.
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let d = format!("{base}/{}", &path[..end + i]);
            if self.made.insert(d.clone()) {
                match s.create_dir(&d, 0o700) {
                    Ok(()) | Err(StoreError::AlreadyExists) => {}
                    Err(e) => return Err(e),
                }
            }
            end += i + 1;
        }
        let mut to = format!("{base}/{path}");
        let mut n = 1;
        while s.stat(&to).is_ok() {
            to = format!("{base}/{path}~{n}");
            n += 1;
        }
        s.rename(path, &to)?;
        self.moved.push(path.to_owned());
        Ok(())
    }

    /// Makes the moves durable.
    pub(crate) fn finish<S: Storage + ?Sized>(&mut self, s: &mut S) -> Result<(), StoreError> {
        if let Some(n) = &self.name {
            s.sync_dir(&format!("{QUARANTINE_DIR}/{n}"))?;
            s.sync_dir("")?;
        }
        Ok(())
    }
}

/// What clearing the way for a round or a record did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Repair {
    /// The quarantine folder things were moved into.
    pub folder: Option<String>,
    /// Paths moved into it.
    pub moved: u64,
    /// Manifest entries dropped because the tree does not hold them (the
    /// next round fetches them again).
    pub dropped: u64,
}

impl Repair {
    pub(crate) fn merge(&mut self, o: Self) {
        if self.folder.is_none() {
            self.folder = o.folder;
        }
        self.moved += o.moved;
        self.dropped += o.dropped;
    }
}

/// Makes room for an op at `p` that failed: every ancestor a real
/// directory (a file or symlink in the way moved aside, a missing one
/// made), and at `p` nothing of the wrong kind (a directory where a file
/// goes, a non-directory where a directory goes).
fn clear_way<S: Storage + ?Sized>(
    s: &mut S,
    p: &str,
    want_dir: bool,
    aside: &mut Aside,
    created: &mut Vec<String>,
) -> Result<(), StoreError> {
    let mut end = 0;
    while let Some(i) = p[end..].find('/') {
        let a = &p[..end + i];
        match s.stat(a) {
            Ok(st) if st.kind == StatKind::Dir => {}
            Ok(_) => {
                aside.put(s, a)?;
                s.create_dir(a, 0o755)?;
                created.push(a.to_owned());
            }
            Err(StoreError::NotFound) => {
                s.create_dir(a, 0o755)?;
                created.push(a.to_owned());
            }
            Err(e) => return Err(e),
        }
        end += i + 1;
    }
    match s.stat(p) {
        Ok(st) if (st.kind == StatKind::Dir) != want_dir => aside.put(s, p),
        Ok(_) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

fn mkdir_once<S: Storage + ?Sized>(s: &mut S, p: &str, mode: u32) -> Result<(), StoreError> {
    match s.create_dir(p, mode) {
        Err(StoreError::AlreadyExists) if s.stat(p)?.kind == StatKind::Dir => Ok(()),
        r => r,
    }
}

/// What applying a record's ops did beside them.
#[derive(Debug, Default)]
struct Applied {
    /// Directories made to clear an op's way.
    created: Vec<String>,
    /// Files a patch could not be applied to (not a regular file there
    /// any more): their entries leave the manifest.
    lost: Vec<String>,
}

/// Applies a committed record's ops (idempotent). An op the tree's shape
/// blocks clears its way ([`clear_way`]) and is tried again. A patch's
/// staged record must be there, whole, before anything is applied
/// ([`StoreError::Corrupt`] otherwise: the journal and the stage
/// disagree).
fn apply_ops<S: Storage + ?Sized>(
    s: &mut S,
    rec: &Delta,
    aside: &mut Aside,
) -> Result<Applied, StoreError> {
    for op in &rec.ops {
        if let JOp::Patch(pt) = op {
            match s.stat(&format!("{STAGE_DIR}/{}", pt.stage)) {
                Ok(st) if st.kind == StatKind::File && st.size == pt.staged_bytes() => {}
                Ok(_) | Err(StoreError::NotFound | StoreError::NotDir) => {
                    return Err(StoreError::Corrupt);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut dirs = BTreeSet::new();
    let mut created = Vec::new();
    let mut lost = Vec::new();
    for op in &rec.ops {
        match op {
            JOp::Delete(p) => {
                // A directory here stays (not the record's to remove); a
                // missing or non-directory parent means it is gone.
                ignore(s.remove_file(p.as_str()), &SHAPE)?;
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::RemoveDir(p) => {
                // NotEmpty: something excluded lives in it; it stays.
                ignore(s.remove_dir(p.as_str()), &SHAPE)?;
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::Mkdir(p, mode) => {
                if let Err(e) = mkdir_once(s, p.as_str(), *mode) {
                    if !SHAPE.contains(&e) {
                        return Err(e);
                    }
                    clear_way(s, p.as_str(), true, aside, &mut created)?;
                    mkdir_once(s, p.as_str(), *mode)?;
                }
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::Install(stage, p) => {
                let from = format!("{STAGE_DIR}/{stage}");
                if let Err(e) = s.rename(&from, p.as_str()) {
                    match s.stat(&from) {
                        Err(StoreError::NotFound) => {} // installed before the crash
                        _ if SHAPE.contains(&e) => {
                            clear_way(s, p.as_str(), false, aside, &mut created)?;
                            s.rename(&from, p.as_str())?;
                        }
                        _ => return Err(e),
                    }
                }
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::SetMeta(p, mode, mtime) => {
                ignore(s.set_meta(p.as_str(), *mode, *mtime), &SHAPE)?;
            }
            JOp::Patch(pt) => {
                let p = pt.path.as_str();
                let r = match s.stat(p) {
                    Ok(st) if st.kind == StatKind::File => apply_patch(s, pt),
                    Ok(_) => {
                        // A directory or symlink where the file was: moved
                        // aside, never written through.
                        aside.put(s, p)?;
                        Err(StoreError::NotFound)
                    }
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {}
                    Err(e) if SHAPE.contains(&e) => lost.push(p.to_owned()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // The directories whose entries changed, all at once (minus those the
    // round removed).
    for op in &rec.ops {
        if let JOp::RemoveDir(p) = op {
            dirs.remove(p.as_str());
        }
    }
    dirs.extend(created.iter().cloned());
    let dirs: Vec<String> = dirs.into_iter().collect();
    if let Err(e) = s.sync_files(&dirs) {
        if !SHAPE.contains(&e) {
            return Err(e);
        }
        // One of them is gone (a parent missing locally): the others.
        for d in &dirs {
            ignore(s.sync_file(d), &SHAPE)?;
        }
    }
    aside.finish(s)?;
    s.sync_dir(STAGE_DIR)?;
    Ok(Applied { created, lost })
}

/// Writes a patch's staged ranges at their offsets, sets the length and
/// the metadata, and syncs the file.
fn apply_patch<S: Storage + ?Sized>(s: &mut S, pt: &Patch) -> Result<(), StoreError> {
    let from = format!("{STAGE_DIR}/{}", pt.stage);
    let p = pt.path.as_str();
    // The record must hold every range: a missing or short one is damage,
    // not a file gone from the tree.
    let staged: u64 = pt.ranges.iter().map(|r| r.1).sum();
    if staged > 0 {
        match s.stat(&from) {
            Ok(st) if st.kind == StatKind::File && st.size >= staged => {}
            Ok(_) | Err(StoreError::NotFound) => return Err(StoreError::Corrupt),
            Err(e) => return Err(e),
        }
    }
    let mut at = 0u64;
    for &(off, len) in &pt.ranges {
        if s.copy_range(&from, at, p, off, len)? != len {
            return Err(StoreError::Corrupt);
        }
        at += len;
    }
    if s.stat(p)?.size != pt.len {
        s.set_len(p, pt.len)?;
    }
    s.set_meta(p, pt.mode, pt.mtime_ns)?;
    s.sync_file(p)
}

/// After a record was applied with its way cleared: drops the manifest
/// entries at or under the paths moved aside or made that the tree does
/// not hold as recorded, and gives the directories made their recorded
/// metadata. Returns how many entries were dropped.
fn reconcile<S: Storage + ?Sized>(
    s: &mut S,
    m: &mut Manifest,
    moved: &[String],
    created: &[String],
) -> Result<u64, StoreError> {
    let mut check: Vec<RelPath> = Vec::new();
    for a in moved.iter().chain(created) {
        let prefix = format!("{a}/");
        check.extend(
            m.entries
                .range::<str, _>((
                    std::ops::Bound::Included(a.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| {
                    k.as_str() <= prefix.as_str() || k.as_str().starts_with(&prefix)
                })
                .filter(|(k, _)| k.as_str() == a || k.as_str().starts_with(&prefix))
                .map(|(k, _)| k.clone()),
        );
    }
    check.sort();
    check.dedup();
    let mut dropped = 0;
    let mut gone: BTreeSet<String> = BTreeSet::new();
    for p in check {
        let under_gone = ancestors(p.as_str()).any(|a| gone.contains(a));
        let Some(meta) = m.entries.get(&p) else {
            continue;
        };
        let holds = !under_gone
            && match s.stat(p.as_str()) {
                Ok(st) => st.kind == stat_kind(&meta.kind),
                Err(e) if SHAPE.contains(&e) => false,
                Err(e) => return Err(e),
            };
        if !holds {
            gone.insert(p.as_str().to_owned());
            m.entries.remove(&p);
            dropped += 1;
        }
    }
    let mut made: Vec<&String> = created.iter().collect();
    made.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in made {
        if let Some(meta) = m.entries.get(d.as_str()) {
            ignore(s.set_meta(d, meta.mode, meta.mtime_ns), &SHAPE)?;
        }
    }
    Ok(dropped)
}

/// The ancestors of a relative path, nearest last (`a`, `a/b` for
/// `a/b/c`).
pub(crate) fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// What a manifest kind looks like to `lstat`.
pub(crate) fn stat_kind(k: &Kind) -> StatKind {
    match k {
        Kind::File { .. } => StatKind::File,
        Kind::Dir => StatKind::Dir,
        Kind::Symlink { .. } => StatKind::Symlink,
    }
}

/// The paths a round changes, checked against the tree before its commit
/// record is written: for each changed path and each of its ancestors
/// (parents first), what the tree holds is compared with what the old
/// manifest records. What differs in a way that would block the round's
/// ops (a stray file or symlink where a directory is wanted, a directory
/// where a file goes, a tracked file replaced by a directory or the
/// reverse) is moved into `aside`; a stray directory where the round
/// wants one stays, and a file where a file goes is replaced.
/// Returns the paths the old manifest records that the tree no longer
/// holds (moved aside or missing): everything at or under them is absent.
pub(crate) fn prepare<'a, S: Storage + ?Sized>(
    s: &mut S,
    old: &Manifest,
    new: View<'_>,
    changed: impl Iterator<Item = &'a RelPath>,
    aside: &mut Aside,
) -> Result<BTreeSet<String>, StoreError> {
    let mut check: BTreeSet<&str> = BTreeSet::new();
    for p in changed {
        check.extend(ancestors(p.as_str()));
        check.insert(p.as_str());
    }
    let mut gone: BTreeSet<String> = BTreeSet::new();
    // Kept paths that are not directories: nothing can be under them.
    let mut flat: BTreeSet<&str> = BTreeSet::new();
    for q in check {
        if ancestors(q).any(|a| gone.contains(a) || flat.contains(a)) {
            continue;
        }
        let expected = old.entries.get(q).map(|m| stat_kind(&m.kind));
        let wanted = new.get(q).map(|m| stat_kind(&m.kind));
        let actual = match s.stat(q) {
            Ok(st) => Some(st.kind),
            Err(StoreError::NotFound | StoreError::NotDir) => None,
            Err(e) => return Err(e),
        };
        let dir = StatKind::Dir;
        let keep = match actual {
            None => true,
            Some(a) if Some(a) == expected => true,
            // Only a kind that blocks the ops is in the way: a file or
            // symlink where a directory is wanted, a directory where a
            // file or symlink goes (a file over a file is replaced, as
            // always), or one the round's removal would leave behind.
            Some(a) => match wanted {
                Some(w) if w == dir => a == dir,
                Some(_) => a != dir,
                None => (a == dir) == (expected == Some(dir)),
            },
        };
        if !keep {
            aside.put(s, q)?;
        }
        if keep && actual.is_some_and(|a| a != StatKind::Dir) {
            flat.insert(q);
        }
        if expected.is_some() && (!keep || actual.is_none()) {
            gone.insert(q.to_owned());
        }
    }
    aside.finish(s)?;
    Ok(gone)
}

/// Applies a record's changes to a manifest, moving them in. Into an
/// empty manifest (a first round), changes in path order (each path once:
/// what a replica records) go a part at a time ([`extend_sorted`]): a
/// map's nodes filled one entry after another in path order would be left
/// about half full.
fn apply_changes(m: &mut Manifest, mut changes: Vec<(RelPath, Option<Meta>)>) {
    if m.entries.is_empty() && changes.is_sorted_by(|a, b| a.0 < b.0) {
        // Into the map a part at a time from the end, the record's room
        // given back as the map takes its entries: a first round's record
        // is about the size of the map it becomes, and the two are never
        // both whole.
        while !changes.is_empty() {
            let at = changes.len().saturating_sub(part_len(m.entries.len()));
            let mut part: Vec<(RelPath, Meta)> = changes
                .drain(at..)
                .filter_map(|(p, meta)| meta.map(|meta| (p, meta)))
                .collect();
            changes.shrink_to_fit();
            extend_sorted(&mut m.entries, &mut part);
        }
        return;
    }
    for (p, meta) in changes {
        match meta {
            Some(meta) => m.entries.insert(p, meta),
            None => m.entries.remove(&p),
        };
    }
}

/// How many entries [`extend_sorted`] takes at a time into a map of `len`:
/// an eighth of it (at least 4,096), so a map built this way costs about
/// eight times its length in moves and holds at most an eighth more.
fn part_len(len: usize) -> usize {
    (len / 8).max(4096)
}

/// Moves `part` into `map` (the last entry for a path wins, as in the
/// map's own collecting): the part is made a map with full nodes and the
/// two merged, the old map's nodes freed as the merge passes them.
fn extend_sorted(map: &mut BTreeMap<RelPath, Meta>, part: &mut Vec<(RelPath, Meta)>) {
    if part.is_empty() {
        return;
    }
    let mut more: BTreeMap<RelPath, Meta> = std::mem::take(part).into_iter().collect();
    map.append(&mut more);
}

/// A packed manifest as a map, built a part at a time ([`extend_sorted`]:
/// full nodes, never all the entries in a list beside the map) as the
/// packed form gives its room back ([`Packed::drain_blocks_rev`]).
pub(crate) fn unpack(pk: Packed) -> Manifest {
    let mut m = Manifest::default();
    let mut part = Vec::new();
    pk.drain_blocks_rev(|p, meta| {
        // Packed from checked paths: one that fails is not there.
        if let Ok(p) = RelPath::new(p) {
            part.push((p, meta.clone()));
        }
        if part.len() >= part_len(m.entries.len()) {
            extend_sorted(&mut m.entries, &mut part);
        }
    });
    extend_sorted(&mut m.entries, &mut part);
    m
}

/// A map packed, its nodes freed as the packing passes them (the two are
/// never both whole; the packed segments take the room they give back).
pub(crate) fn pack(m: Manifest) -> Packed {
    let mut b = PackedBuilder::new();
    for (p, meta) in m.entries {
        b.push(p.as_str(), &meta);
    }
    b.finish()
}

/// Appends `rec` to the log (at its valid end) and makes it durable.
fn append_log<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    rec: &Delta,
) -> Result<(), StoreError> {
    // The log keeps manifest changes alone (reading it applies nothing
    // else): the caller leaves the ops out, a patch's above all, which an
    // older build reading the log would not know.
    debug_assert!(rec.ops.is_empty());
    // The length first, filled in once the body is encoded behind it.
    let mut framed = vec![0u8; 4];
    rec.encode_into(&mut framed);
    let body_len = (framed.len() - 4) as u32;
    framed[..4].copy_from_slice(&body_len.to_le_bytes());
    match s.stat(LOG) {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            s.create(LOG)?;
            s.sync_dir(STATE_DIR)?;
        }
        Err(e) => return Err(e),
    }
    s.write_at(LOG, p.log_len, &framed)?;
    s.sync_file(LOG)?;
    p.log_len += framed.len() as u64;
    p.seq = rec.seq;
    Ok(())
}

/// Writes a new base (the whole manifest) and an empty log.
pub(crate) fn write_base<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
) -> Result<(), StoreError> {
    let m = std::mem::take(&mut p.manifest);
    let r = write_base_with(s, p, &m);
    p.manifest = m;
    r
}

/// [`write_base`] with the manifest kept by the caller.
pub(crate) fn write_base_with<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    m: &dyn Entries,
) -> Result<(), StoreError> {
    p.base_id += 1;
    let (base_id, generation, taken_at_ns) = (p.base_id, p.generation, p.taken_at_ns);
    let len = write_streamed(s, STATE_DIR, "manifest", |out, sink| {
        encode_base_pieces(base_id, generation, taken_at_ns, m, out, PIECE, sink)
    })?;
    // Records of the old base no longer apply (base id); empty the log.
    write_atomic(s, STATE_DIR, "manifest.log", &[])?;
    p.base_len = len;
    p.log_len = 0;
    p.seq = 0;
    Ok(())
}

/// Makes a committed record part of the manifest: appended to the log
/// (unless it already is), then the journal removed; the base is
/// rewritten when the log has grown past half of it. A record that
/// changes more than half of the entries, or that alone would take the
/// log past that size, is not appended: a new base is written at once (a
/// first round of a whole tree: its record is never encoded whole, and
/// the base is not written twice).
fn settle_record<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    rec: Delta,
    full: Option<&dyn Entries>,
) -> Result<(), StoreError> {
    let limit = |p: &Persisted| (p.base_len / 2).max(1 << 20);
    let mut based = false;
    if rec.base_id == p.base_id && rec.seq > p.seq {
        p.generation = rec.generation;
        p.taken_at_ns = rec.taken_at_ns;
        let entries = full.map_or(p.manifest.len().max(rec.changes.len()), |m| m.count());
        based = rec.changes.len() * 2 > entries || p.log_len + record_estimate(&rec) > limit(p);
        if !based {
            append_log(s, p, &rec)?;
        }
        match full {
            Some(m) if based => write_base_with(s, p, m)?,
            Some(_) => {}
            None => {
                // The changes move in: after the record was encoded for the
                // log, before a base is written from the manifest.
                apply_changes(&mut p.manifest, rec.changes);
                if based {
                    write_base(s, p)?;
                }
            }
        }
    } else if p.log_len > 0 {
        // Appended before, but perhaps never made durable (its fsync
        // failed): it must be before the journal goes.
        s.sync_file(LOG)?;
    }
    ignore(s.remove_file(JOURNAL), &[StoreError::NotFound])?;
    s.sync_dir(STATE_DIR)?;
    if !based && p.log_len > limit(p) {
        match full {
            Some(m) => write_base_with(s, p, m)?,
            None => write_base(s, p)?,
        }
    }
    Ok(())
}

/// About the bytes a record takes in the log: its paths, and what a
/// file's change takes besides (a directory's takes less).
fn record_estimate(rec: &Delta) -> u64 {
    rec.changes
        .iter()
        .map(|(p, m)| p.as_str().len() as u64 + if m.is_some() { 48 } else { 3 })
        .sum()
}

/// Commits a generation: the journal (commit record), the ops, then the
/// log. `p` is updated to the new generation.
pub(crate) fn commit<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    mut rec: Delta,
) -> Result<Repair, StoreError> {
    rec.base_id = p.base_id;
    rec.seq = p.seq + 1;
    write_streamed(s, STATE_DIR, "journal", |out, sink| {
        rec.encode_pieces(out, PIECE, sink)
    })?;
    apply_settle(s, p, rec)
}

/// Applies a committed record (clearing its way where the tree blocks it),
/// makes it part of the manifest, and drops from the manifest what the
/// tree then does not hold.
fn apply_settle<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    mut rec: Delta,
) -> Result<Repair, StoreError> {
    let mut aside = Aside::new(rec.generation);
    let Applied { created, lost } = apply_ops(s, &rec, &mut aside)?;
    // Applied: what is left of the ops is the patches' records to drop.
    let patches: Vec<String> = rec
        .ops
        .iter()
        .filter_map(|op| match op {
            JOp::Patch(pt) => Some(format!("{STAGE_DIR}/{}", pt.stage)),
            _ => None,
        })
        .collect();
    rec.ops = Vec::new();
    settle_record(s, p, rec, None)?;
    // The patches' records, now that the journal that needs them is gone
    // (a crash before this leaves them to the next open's roll-back).
    for r in &patches {
        ignore(s.remove_file(r), &[StoreError::NotFound])?;
    }
    let mut repair = Repair {
        folder: aside.name().map(str::to_owned),
        moved: aside.moved.len() as u64,
        dropped: 0,
    };
    if !aside.moved.is_empty() || !created.is_empty() || !lost.is_empty() {
        let mut moved = aside.moved.clone();
        moved.extend(lost);
        repair.dropped = reconcile(s, &mut p.manifest, &moved, &created)?;
        if repair.dropped > 0 {
            write_base(s, p)?;
        }
    }
    Ok(repair)
}

/// Records manifest changes without ops: a source persisting what its
/// peer confirmed. The source keeps the manifest itself (`full`, after the
/// changes), so `p.manifest` is left alone.
pub(crate) fn record_changes<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    generation: u64,
    taken_at_ns: i64,
    changes: Vec<(RelPath, Option<Meta>)>,
    full: &crate::packed::Packed,
) -> Result<(), StoreError> {
    let rec = Delta {
        base_id: p.base_id,
        seq: p.seq + 1,
        generation,
        taken_at_ns,
        ops: Vec::new(),
        changes,
    };
    settle_record(s, p, rec, Some(full))
}

/// Records a generation a source's peer confirmed as a new base from the
/// source's manifest `full`, when its changes are the whole listing (the
/// first round): as a log record they would be the base's size again,
/// and held in memory twice over while being written.
pub(crate) fn record_base<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    generation: u64,
    taken_at_ns: i64,
    full: &crate::packed::Packed,
) -> Result<(), StoreError> {
    p.generation = generation;
    p.taken_at_ns = taken_at_ns;
    write_base_with(s, p, full)?;
    ignore(s.remove_file(JOURNAL), &[StoreError::NotFound])?;
    s.sync_dir(STATE_DIR)
}

pub(crate) fn write_state<S: Storage + ?Sized>(s: &mut S, st: StateFile) -> Result<(), StoreError> {
    write_atomic(s, STATE_DIR, "state", &st.encode())
}

/// The head of a base manifest.
struct BaseHead {
    base_id: u64,
    generation: u64,
    taken_at_ns: i64,
    len: u64,
}

/// Reads the base manifest a piece at a time (never the whole file in
/// memory: on a tree of 100,000 files it is about 10 MB), giving each
/// entry to `f` in the file's order, and checks its CRC at the end (an
/// entry given before a failed check is the caller's to discard).
/// `Ok(None)` when there is no base.
fn stream_base<S: Storage + ?Sized>(
    s: &mut S,
    f: &mut dyn FnMut(RelPath, Meta) -> Result<(), StoreError>,
) -> Result<Option<BaseHead>, StoreError> {
    /// Bytes read at a time, and the most one entry can take (a path and a
    /// link target of 4,096 bytes each, the fixed fields).
    const PIECE: usize = 1 << 20;
    const MAX_ENTRY: usize = 16 << 10;
    let size = match s.stat(MANIFEST) {
        Ok(st) => st.size,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(36..=MAX_RECORD).contains(&size) {
        return Err(StoreError::Corrupt);
    }
    let body_len = size - 4;
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut off = 0u64;
    let mut crc = 0u32;
    let mut fill = |s: &mut S, buf: &mut Vec<u8>, pos: &mut usize, need: usize| {
        if buf.len() - *pos >= need || off >= body_len {
            return Ok::<(), StoreError>(());
        }
        buf.drain(..*pos);
        *pos = 0;
        let want = usize::try_from((body_len - off).min(PIECE as u64)).unwrap_or(PIECE);
        let at = buf.len();
        buf.resize(at + want, 0);
        let mut got = 0;
        while got < want {
            let n = s.read_at(MANIFEST, off + got as u64, &mut buf[at + got..])?;
            if n == 0 {
                return Err(StoreError::Corrupt);
            }
            got += n;
        }
        crc = crc32c::crc32c_append(crc, &buf[at..]);
        off += want as u64;
        Ok(())
    };
    let corrupt = |_| StoreError::Corrupt;
    fill(s, &mut buf, &mut pos, MAX_ENTRY)?;
    let mut r = Reader(&buf[pos..]);
    if r.take(4).map_err(corrupt)? != BASE_MAGIC {
        return Err(StoreError::Corrupt);
    }
    let head = BaseHead {
        base_id: r.u64().map_err(corrupt)?,
        generation: r.u64().map_err(corrupt)?,
        taken_at_ns: r.i64().map_err(corrupt)?,
        len: r.u64().map_err(corrupt)?,
    };
    pos = buf.len() - r.0.len();
    if head.len > body_len {
        return Err(StoreError::Corrupt);
    }
    for _ in 0..head.len {
        fill(s, &mut buf, &mut pos, MAX_ENTRY)?;
        let mut r = Reader(&buf[pos..]);
        let (path, meta) = decode_entry(&mut r, true).map_err(corrupt)?;
        pos = buf.len() - r.0.len();
        f(path, meta)?;
    }
    fill(s, &mut buf, &mut pos, 1)?;
    if pos != buf.len() || off != body_len {
        return Err(StoreError::Corrupt);
    }
    let mut tail = [0u8; 4];
    if s.read_at(MANIFEST, body_len, &mut tail)? != 4 || u32::from_le_bytes(tail) != crc {
        return Err(StoreError::Corrupt);
    }
    Ok(Some(head))
}

/// The valid records of the log that follow the base, each with its
/// length in the log; stops at a torn record.
fn replay_log<S: Storage + ?Sized>(
    s: &mut S,
    p: &mut Persisted,
    mut apply: impl FnMut(Delta),
) -> Result<(), StoreError> {
    let log = match read_all(s, LOG, MAX_RECORD) {
        Ok(b) => b,
        Err(StoreError::NotFound) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut at = 0usize;
    while at + 4 <= log.len() {
        let n = u32::from_le_bytes([log[at], log[at + 1], log[at + 2], log[at + 3]]) as usize;
        let Some(body) = log.get(at + 4..at + 4 + n) else {
            break;
        };
        let Ok(rec) = Delta::decode(body) else {
            break;
        };
        if rec.base_id == p.base_id && p.seq.checked_add(1) == Some(rec.seq) {
            p.generation = rec.generation;
            p.taken_at_ns = rec.taken_at_ns;
            p.seq = rec.seq;
            apply(rec);
        } else if rec.base_id != p.base_id || rec.seq <= p.seq {
            // a record of an older base, or a repeat: not ours
        } else {
            break;
        }
        at += 4 + n;
    }
    p.log_len = at as u64;
    Ok(())
}

fn persisted_of(head: Option<BaseHead>) -> Persisted {
    match head {
        Some(h) => Persisted {
            manifest: Manifest::default(),
            generation: h.generation,
            taken_at_ns: h.taken_at_ns,
            base_id: h.base_id,
            seq: 0,
            log_len: 0,
            base_len: 0,
        },
        None => Persisted::default(),
    }
}

/// Loads the base and replays its log (stopping at a torn record).
fn load<S: Storage + ?Sized>(s: &mut S) -> Result<Persisted, StoreError> {
    // A part at a time into a map with full nodes: never all the entries
    // in a list beside the map they make.
    let mut m = Manifest::default();
    let mut part = Vec::new();
    let head = stream_base(s, &mut |p, meta| {
        part.push((p, meta));
        if part.len() >= part_len(m.entries.len()) {
            extend_sorted(&mut m.entries, &mut part);
        }
        Ok(())
    })?;
    extend_sorted(&mut m.entries, &mut part);
    let mut p = persisted_of(head);
    p.base_len = s.stat(MANIFEST).map_or(0, |st| st.size);
    replay_log(s, &mut p, |rec| apply_changes(&mut m, rec.changes))?;
    p.manifest = m;
    Ok(p)
}

/// [`load`] into a packed manifest (`p.manifest` left empty): the base
/// streamed straight into it, the log's changes merged in.
fn load_packed<S: Storage + ?Sized>(s: &mut S) -> Result<(Persisted, Packed), StoreError> {
    let mut b = PackedBuilder::new();
    let mut last: Option<RelPath> = None;
    let head = stream_base(s, &mut |p, m| {
        // A base is written in path order; one that is not is damaged.
        if last.as_ref().is_some_and(|l| *l >= p) {
            return Err(StoreError::Corrupt);
        }
        b.push(p.as_str(), &m);
        last = Some(p);
        Ok(())
    })?;
    let mut p = persisted_of(head);
    p.base_len = s.stat(MANIFEST).map_or(0, |st| st.size);
    let base = b.finish();
    let mut changes = std::collections::BTreeMap::new();
    replay_log(s, &mut p, |rec| {
        for (path, meta) in rec.changes {
            changes.insert(path, meta);
        }
    })?;
    let packed = if changes.is_empty() {
        base
    } else {
        base.with_changes(changes)
    };
    Ok((p, packed))
}

/// Finishes or rolls back whatever round was in progress and loads the
/// current generation, as a map (what the tests read; the sessions take
/// it packed).
#[cfg(test)]
pub(crate) fn recover<S: Storage + ?Sized>(s: &mut S) -> Result<Recovered, StoreError> {
    recover_as(s, false)
}

/// [`recover`], with the manifest packed ([`Recovered::packed`], and
/// `persisted.manifest` left empty) when `packed`: loaded straight into
/// the packed form when no round is to be rolled forward, so the map is
/// never built.
pub(crate) fn recover_as<S: Storage + ?Sized>(
    s: &mut S,
    packed: bool,
) -> Result<Recovered, StoreError> {
    ensure_dirs(s)?;
    let journal = match s.stat(JOURNAL) {
        Ok(_) => true,
        Err(StoreError::NotFound) => false,
        Err(e) => return Err(e),
    };
    let (mut p, mut pk) = if packed && !journal {
        let (p, pk) = load_packed(s)?;
        (p, Some(pk))
    } else {
        (load(s)?, None)
    };
    if p.log_len > 0 {
        // What was just read must be what a power cut leaves: a record
        // written but whose fsync failed (a source's confirmation, which
        // has no journal to roll it forward) is readable after a crash but
        // not durable.
        s.sync_file(LOG)?;
    }
    let mut rolled_forward = false;
    let mut repair = Repair::default();
    match read_all(s, JOURNAL, MAX_RECORD) {
        Ok(b) => {
            let rec = Delta::decode(&b).map_err(|_| StoreError::Corrupt)?;
            repair = apply_settle(s, &mut p, rec)?;
            rolled_forward = true;
        }
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e),
    }
    for tmp in [
        ".sync-delta/journal.tmp",
        ".sync-delta/manifest.tmp",
        ".sync-delta/manifest.log.tmp",
        ".sync-delta/state.tmp",
        ".sync-delta/guard.tmp",
    ] {
        ignore(s.remove_file(tmp), &[StoreError::NotFound])?;
    }
    let rolled_back = clear_stage(s)?;
    let state = match read_all(s, STATE, 1 << 16) {
        Ok(b) => StateFile::decode(&b).map_err(|_| StoreError::Corrupt)?,
        Err(StoreError::NotFound) => StateFile {
            role: Role::Replica,
            generation: p.generation,
            taken_at_ns: p.taken_at_ns,
        },
        Err(e) => return Err(e),
    };
    if packed && pk.is_none() {
        pk = Some(pack(std::mem::take(&mut p.manifest)));
    }
    Ok(Recovered {
        persisted: p,
        packed: pk,
        state,
        rolled_forward,
        rolled_back,
        repair,
    })
}

/// The quarantine folders.
pub(crate) fn quarantine_list<S: Storage + ?Sized>(s: &mut S) -> Result<Vec<String>, StoreError> {
    match s.list_dir(QUARANTINE_DIR) {
        Ok(v) => Ok(v),
        Err(StoreError::NotFound) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Moves every change since `confirmed` aside into a new quarantine folder
/// and returns the manifest of what is left, with the folder and how many
/// top-level paths were moved.
pub(crate) fn quarantine<S: Storage + ?Sized>(
    s: &mut S,
    confirmed: &Manifest,
    exclude: &Exclude,
    generation: u64,
) -> Result<(Manifest, Option<String>, u64), StoreError> {
    let walk = s.walk(exclude)?;
    let mut entries = walk.entries;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    // Files whose quick check fails are hashed.
    let to_hash: Vec<RelPath> = entries
        .iter()
        .filter(|e| e.stat.kind == StatKind::File)
        .filter(|e| match confirmed.entries.get(&e.path) {
            Some(m) => !quick_match(m, &e.stat),
            None => false,
        })
        .map(|e| e.path.clone())
        .collect();
    let hashed = s.hash_files(&to_hash);
    let hashes: std::collections::HashMap<&RelPath, _> = to_hash.iter().zip(hashed).collect();
    let mut kept = Manifest::default();
    let mut moved_prefix: Option<String> = None;
    let mut to_move = Vec::new();
    for e in &entries {
        if let Some(mp) = &moved_prefix
            && e.path.as_str().starts_with(mp.as_str())
        {
            continue;
        }
        let same = match (confirmed.entries.get(&e.path), e.stat.kind) {
            (Some(m), StatKind::Dir) => m.kind == Kind::Dir,
            (Some(m), StatKind::Symlink) => {
                matches!(&m.kind, Kind::Symlink { target } if Some(target) == e.target.as_ref())
            }
            (Some(m), StatKind::File) => {
                quick_match(m, &e.stat)
                    || matches!(hashes.get(&e.path), Some(Ok(h)) if Some(&h.hash) == m.file_hash() && h.before == h.after)
            }
            _ => false,
        };
        let parent_kept = e
            .path
            .parent()
            .is_none_or(|p| RelPath::new(p).is_ok_and(|pp| kept.entries.contains_key(&pp)));
        if same && parent_kept {
            let mut m = confirmed.entries.get(&e.path).cloned().unwrap_or(Meta {
                kind: Kind::Dir,
                mode: 0,
                mtime_ns: 0,
                local: LocalStat::default(),
            });
            m.mode = e.stat.mode;
            if e.stat.kind != StatKind::Symlink {
                m.mtime_ns = e.stat.mtime_ns;
            }
            m.local = LocalStat {
                ctime_ns: e.stat.ctime_ns,
                ino: e.stat.ino,
            };
            kept.entries.insert(e.path.clone(), m);
        } else {
            if e.stat.kind == StatKind::Dir {
                moved_prefix = Some(format!("{}/", e.path));
            }
            to_move.push(e.path.clone());
        }
    }
    if to_move.is_empty() {
        return Ok((kept, None, 0));
    }
    let mut aside = Aside::new(generation);
    for p in &to_move {
        aside.put(s, p.as_str())?;
    }
    aside.finish(s)?;
    Ok((kept, aside.name().map(str::to_owned), to_move.len() as u64))
}

/// The quick check: size, mtime, ctime and inode unchanged (and known).
pub(crate) fn quick_match(m: &Meta, st: &crate::store::Stat) -> bool {
    matches!(m.kind, Kind::File { size, .. } if size == st.size)
        && m.mtime_ns == st.mtime_ns
        && m.local.ino != 0
        && m.local.ino == st.ino
        && m.local.ctime_ns == st.ctime_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;

    fn file(n: u8) -> Meta {
        Meta {
            kind: Kind::File {
                size: 1,
                hash: [n; 32],
            },
            mode: 0o644,
            mtime_ns: i64::from(n),
            local: LocalStat::default(),
        }
    }

    /// A made stage name is held as its numbers and reads back as it was
    /// written; any other name a journal holds is kept as it is.
    #[test]
    fn stage_names_read_back_as_written() {
        for n in ["r1-f0", "r42-l7", "r18446744073709551615-f4294967295"] {
            let s = StageName::parse(n);
            assert!(matches!(s, StageName::Made { .. }), "{n}");
            assert_eq!(s.to_string(), n);
        }
        for n in [
            "r01-f2",
            "r1-f+2",
            "r1-x2",
            "r1-f",
            "r-f1",
            "r1f2",
            "r1-f2-",
            "r1-f4294967296",
            "stage",
        ] {
            let s = StageName::parse(n);
            assert_eq!(s, StageName::Other(n.into()), "{n}");
            assert_eq!(s.to_string(), n);
        }
    }

    mod parts {
        use super::*;
        use proptest::prelude::*;

        fn entries() -> impl Strategy<Value = Vec<(String, Option<u8>)>> {
            proptest::collection::vec(
                ("[a-d]{1,2}(/[a-d]{1,2}){0,2}", proptest::option::of(0u8..4)),
                0..80,
            )
        }

        proptest! {
            /// A map built a part at a time, of any sizes, in any order,
            /// with repeated paths, is the map collected at once (the last
            /// entry for a path kept).
            #[test]
            fn a_map_made_in_parts_is_the_map_collected(e in entries(), cuts in proptest::collection::vec(1usize..9, 1..20)) {
                let list: Vec<(RelPath, Meta)> = e
                    .iter()
                    .map(|(p, n)| (RelPath::new(p).unwrap(), file(n.unwrap_or(9))))
                    .collect();
                let want: BTreeMap<RelPath, Meta> = list.clone().into_iter().collect();
                let mut got = BTreeMap::new();
                let mut rest = list.into_iter();
                for n in cuts.iter().cycle() {
                    let mut part: Vec<_> = rest.by_ref().take(*n).collect();
                    if part.is_empty() {
                        break;
                    }
                    extend_sorted(&mut got, &mut part);
                    prop_assert!(part.is_empty());
                }
                prop_assert_eq!(got, want);
            }

            /// A record's changes applied to an empty manifest (a first
            /// round) make what they make applied one by one.
            #[test]
            fn changes_into_nothing_are_the_changes_one_by_one(e in entries()) {
                let changes: Vec<(RelPath, Option<Meta>)> = e
                    .iter()
                    .map(|(p, n)| (RelPath::new(p).unwrap(), n.map(file)))
                    .collect();
                let mut want = Manifest::default();
                for (p, m) in changes.clone() {
                    // One by one, as into a manifest that is not empty.
                    match m {
                        Some(m) => want.entries.insert(p, m),
                        None => want.entries.remove(&p),
                    };
                }
                let mut got = Manifest::default();
                apply_changes(&mut got, changes.clone());
                prop_assert_eq!(&got, &want);
                // And in path order, each path once (a replica's record).
                let mut sorted = changes;
                sorted.reverse();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                sorted.dedup_by(|b, a| a.0 == b.0);
                let mut got = Manifest::default();
                apply_changes(&mut got, sorted);
                prop_assert_eq!(got, want);
            }
        }
    }

    /// A first round's record, many parts long, goes into an empty map
    /// from its end a part at a time: the map holds every entry it names,
    /// and no path it removes.
    #[test]
    fn a_long_sorted_record_into_nothing_is_the_map_of_its_entries() {
        let changes: Vec<(RelPath, Option<Meta>)> = (0..30_000u32)
            .map(|i| {
                let p = RelPath::new(&format!("d{:02}/f{i:06}", i / 1000)).unwrap();
                (p, (i % 7 != 3).then(|| file((i % 251) as u8)))
            })
            .collect();
        let want: BTreeMap<RelPath, Meta> = changes
            .iter()
            .filter_map(|(p, m)| m.clone().map(|m| (p.clone(), m)))
            .collect();
        let mut got = Manifest::default();
        apply_changes(&mut got, changes);
        assert_eq!(got.entries.len(), want.len());
        assert_eq!(got.entries, want);
    }

    #[test]
    fn a_base_streams_in_pieces_packed_or_mapped_and_damage_is_refused() {
        let mut m = Manifest::default();
        // Enough entries for several pieces, with long paths and
        // link targets across the pieces' edges.
        for i in 0..30_000u32 {
            let p = format!("d{:03}/{}-{i:06}", i % 97, "x".repeat((i % 50) as usize));
            let meta = if i % 7 == 0 {
                Meta {
                    kind: Kind::Symlink {
                        target: vec![b'a' + (i % 26) as u8; 1 + (i % 4000) as usize],
                    },
                    ..file(1)
                }
            } else {
                file((i % 250) as u8)
            };
            m.entries.insert(RelPath::new(&p).unwrap(), meta);
        }
        for d in 0..97 {
            m.entries.insert(
                RelPath::new(&format!("d{d:03}")).unwrap(),
                Meta {
                    kind: Kind::Dir,
                    ..file(0)
                },
            );
        }
        let bytes = encode_base(7, 9, 11, &m);
        assert!(bytes.len() > 3 << 20);
        // Written a megabyte at a time (a checksum over the pieces): the
        // same bytes.
        let mut s = MemStore::new();
        ensure_dirs(&mut s).unwrap();
        let mut p = Persisted {
            base_id: 6,
            generation: 9,
            taken_at_ns: 11,
            ..Persisted::default()
        };
        write_base_with(&mut s, &mut p, &m).unwrap();
        assert_eq!(read_all(&mut s, MANIFEST, MAX_RECORD).unwrap(), bytes);
        assert_eq!(p.base_len, bytes.len() as u64);
        let mut s = MemStore::new();
        ensure_dirs(&mut s).unwrap();
        s.create(MANIFEST).unwrap();
        s.write_at(MANIFEST, 0, &bytes).unwrap();
        let whole = decode_base(&bytes).unwrap().3;
        assert_eq!(whole, m);
        let p = load(&mut s).unwrap();
        assert_eq!((p.base_id, p.generation, p.taken_at_ns), (7, 9, 11));
        assert_eq!(p.manifest, m);
        let (pp, packed) = load_packed(&mut s).unwrap();
        assert_eq!(pp.generation, 9);
        assert_eq!(packed.to_manifest(), m);
        // One flipped byte anywhere, or a cut, is a typed error.
        for at in [0, 40, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            s.write_at(MANIFEST, 0, &bad).unwrap();
            assert_eq!(
                load(&mut s).unwrap_err(),
                StoreError::Corrupt,
                "flip at {at}"
            );
            assert_eq!(load_packed(&mut s).unwrap_err(), StoreError::Corrupt);
        }
        s.remove_file(MANIFEST).unwrap();
        s.create(MANIFEST).unwrap();
        s.write_at(MANIFEST, 0, &bytes[..bytes.len() - 100])
            .unwrap();
        assert_eq!(load(&mut s).unwrap_err(), StoreError::Corrupt);
        assert_eq!(load_packed(&mut s).unwrap_err(), StoreError::Corrupt);
    }

    #[test]
    fn log_replays_skips_torn_tails_and_compacts() {
        let mut s = MemStore::new();
        let mut p = recover(&mut s).unwrap().persisted;
        // A first round lists the whole tree: straight to a new base, the
        // log left empty.
        let first = Delta {
            changes: (0..10u8)
                .map(|k| (RelPath::new(&format!("k{k}")).unwrap(), Some(file(k))))
                .collect(),
            ..Delta::default()
        };
        commit(&mut s, &mut p, first).unwrap();
        assert_eq!((p.base_id, p.seq, p.log_len), (1, 0, 0));
        assert_eq!(s.stat(LOG).unwrap().size, 0);
        // Rounds that change less than half of it go to the log.
        for g in 1..=5u8 {
            let rec = Delta {
                generation: u64::from(g),
                taken_at_ns: i64::from(g),
                changes: vec![
                    (RelPath::new(&format!("f{g}")).unwrap(), Some(file(g))),
                    (RelPath::new(&format!("f{}", g - 1)).unwrap(), None),
                ],
                ..Delta::default()
            };
            commit(&mut s, &mut p, rec).unwrap();
        }
        assert_eq!(p.generation, 5);
        assert_eq!(p.manifest.len(), 11);
        assert!(s.stat(LOG).unwrap().size > 0);
        let loaded = recover(&mut s).unwrap().persisted;
        assert_eq!(loaded.manifest, p.manifest);
        let packed = recover_as(&mut s, true).unwrap();
        assert_eq!(packed.packed.unwrap().to_manifest(), p.manifest);
        assert_eq!(packed.persisted.generation, 5);
        assert_eq!(loaded.generation, 5);
        assert_eq!(loaded.seq, 5);
        // A torn record at the end is ignored, and the next append
        // overwrites it.
        let len = s.stat(LOG).unwrap().size;
        s.write_at(LOG, len, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
        let mut again = recover(&mut s).unwrap().persisted;
        assert_eq!(again.manifest, p.manifest);
        assert_eq!(again.log_len, len);
        let rec = Delta {
            generation: 6,
            changes: vec![(RelPath::new("g").unwrap(), Some(file(9)))],
            ..Delta::default()
        };
        commit(&mut s, &mut again, rec).unwrap();
        let last = recover(&mut s).unwrap().persisted;
        assert_eq!(last.generation, 6);
        assert_eq!(last.manifest.len(), 12);
        // A new base starts an empty log; older records no longer apply.
        let mut base = last.clone();
        write_base(&mut s, &mut base).unwrap();
        assert_eq!(s.stat(LOG).unwrap().size, 0);
        let reloaded = recover(&mut s).unwrap().persisted;
        assert_eq!(reloaded.manifest, last.manifest);
        assert_eq!(reloaded.generation, 6);
    }

    /// A tree with one file `f` (generation 1) and a committed journal
    /// patching it with `pt`, its record staged holding `staged`.
    fn patched_tree<S: Storage>(s: &mut S, pt: Patch, staged: Option<&[u8]>) {
        let mut p = recover(s).unwrap().persisted;
        s.create("f").unwrap();
        s.write_at("f", 0, &[1u8; 100]).unwrap();
        s.sync_file("f").unwrap();
        if let Some(b) = staged {
            let st = format!("{STAGE_DIR}/{}", pt.stage);
            s.create(&st).unwrap();
            s.write_at(&st, 0, b).unwrap();
            s.sync_file(&st).unwrap();
        }
        let meta = Meta {
            kind: Kind::File {
                size: pt.len,
                hash: [0; 32],
            },
            ..file(1)
        };
        let rec = Delta {
            base_id: p.base_id,
            seq: p.seq + 1,
            generation: 1,
            taken_at_ns: 1,
            changes: vec![(pt.path.clone(), Some(meta))],
            ops: vec![JOp::Patch(Box::new(pt))],
        };
        p.seq = 0;
        write_atomic(s, STATE_DIR, "journal", &rec.encode()).unwrap();
    }

    fn patch(stage: &str, len: u64, ranges: &[(u64, u64)]) -> Patch {
        Patch {
            stage: stage.to_owned(),
            path: RelPath::new("f").unwrap(),
            len,
            ranges: ranges.to_vec(),
            mode: 0o640,
            mtime_ns: 7,
        }
    }

    fn content(s: &mut MemStore, p: &str) -> Vec<u8> {
        let mut b = vec![0u8; s.stat(p).unwrap().size as usize];
        let n = s.read_at(p, 0, &mut b).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn a_patch_replays_to_the_same_file() {
        let mut s = MemStore::new();
        // Append 20 bytes, overwrite 10 at 40: 30 bytes staged.
        let mut staged = vec![2u8; 10];
        staged.extend_from_slice(&[3u8; 20]);
        patched_tree(
            &mut s,
            patch("r1-p0", 120, &[(40, 10), (100, 20)]),
            Some(&staged),
        );
        let mut want = vec![1u8; 100];
        want[40..50].fill(2);
        want.extend_from_slice(&[3u8; 20]);
        // Applied twice (a crash after the writes, before the journal
        // went): the same file.
        let j = read_all(&mut s, JOURNAL, MAX_RECORD).unwrap();
        let r = recover(&mut s).unwrap();
        assert!(r.rolled_forward);
        assert_eq!(content(&mut s, "f"), want);
        write_atomic(&mut s, STATE_DIR, "journal", &j).unwrap();
        assert!(s.list_dir(STAGE_DIR).unwrap().is_empty(), "record dropped");
        // The record is gone now: the journal left behind is refused, and
        // the file stays as it is.
        assert_eq!(recover(&mut s).unwrap_err(), StoreError::Corrupt);
        assert_eq!(content(&mut s, "f"), want);
        // A cut: the length alone.
        let mut s = MemStore::new();
        patched_tree(&mut s, patch("r1-p0", 60, &[]), Some(&[]));
        recover(&mut s).unwrap();
        assert_eq!(content(&mut s, "f"), vec![1u8; 60]);
        assert!(matches!(
            s.nodes().get("f"),
            Some(crate::mem::Node::File {
                mode: 0o640,
                mtime_ns: 7,
                ..
            })
        ));
    }

    #[test]
    fn hostile_patches_are_refused_before_anything_is_written() {
        let cases: [(Patch, Option<&[u8]>); 6] = [
            // past the new length
            (patch("r1-p0", 100, &[(90, 20)]), Some(&[9u8; 20])),
            // an offset that overflows
            (patch("r1-p0", 100, &[(u64::MAX, 2)]), Some(&[9u8; 2])),
            // overlapping, and out of order
            (patch("r1-p0", 100, &[(10, 20), (20, 5)]), Some(&[9u8; 25])),
            // an empty range
            (patch("r1-p0", 100, &[(10, 0)]), Some(&[])),
            // the staged record missing, and one shorter than its ranges
            (patch("r1-p0", 100, &[(10, 5)]), None),
            (patch("r1-p0", 100, &[(10, 5)]), Some(&[9u8; 4])),
        ];
        for (i, (pt, staged)) in cases.into_iter().enumerate() {
            let mut s = MemStore::new();
            patched_tree(&mut s, pt, staged);
            assert_eq!(
                recover(&mut s).unwrap_err(),
                StoreError::Corrupt,
                "case {i}"
            );
            assert_eq!(content(&mut s, "f"), vec![1u8; 100], "case {i}");
        }
        // A length that is not what the record's manifest change says.
        let mut s = MemStore::new();
        patched_tree(&mut s, patch("r1-p0", 100, &[]), Some(&[]));
        let j = read_all(&mut s, JOURNAL, MAX_RECORD).unwrap();
        let mut rec = Delta::decode(&j).unwrap();
        if let JOp::Patch(pt) = &mut rec.ops[0] {
            pt.len = 1 << 40;
        }
        write_atomic(&mut s, STATE_DIR, "journal", &rec.encode()).unwrap();
        assert_eq!(recover(&mut s).unwrap_err(), StoreError::Corrupt);
        assert_eq!(content(&mut s, "f"), vec![1u8; 100]);
    }

    /// On disk: a stage name that leaves `stage/` does not decode, and a
    /// patch of a path that is now a symlink never writes through it.
    #[test]
    fn a_patch_never_writes_outside_the_tree() {
        use crate::store::FsStore;
        let dir = std::env::temp_dir().join(format!("sd-patch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = dir.join("outside");
        std::fs::write(&outside, [5u8; 100]).unwrap();
        let mut s = FsStore::new(&root).unwrap();
        // A stage name climbing out: refused when the journal is read.
        patched_tree(&mut s, patch("../../outside", 100, &[(0, 10)]), None);
        assert_eq!(recover(&mut s).unwrap_err(), StoreError::Corrupt);
        assert_eq!(std::fs::read(&outside).unwrap(), vec![5u8; 100]);
        std::fs::remove_file(root.join(".sync-delta/journal")).unwrap();
        // The file replaced by a symlink to outside the tree before the
        // journal is replayed: moved aside, the entry dropped.
        patched_tree(&mut s, patch("r1-p0", 100, &[(0, 10)]), Some(&[7u8; 10]));
        std::fs::remove_file(root.join("f")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("f")).unwrap();
        let r = recover(&mut s).unwrap();
        assert!(r.rolled_forward);
        assert_eq!(r.repair.moved, 1);
        assert_eq!(r.repair.dropped, 1);
        assert!(!r.persisted.manifest.entries.contains_key("f"));
        assert_eq!(std::fs::read(&outside).unwrap(), vec![5u8; 100]);
        // The store refuses writing or cutting through a symlink itself.
        std::os::unix::fs::symlink(&outside, root.join("g")).unwrap();
        assert_eq!(s.write_at("g", 0, b"x"), Err(StoreError::SymlinkInPath));
        assert_eq!(s.set_len("g", 0), Err(StoreError::SymlinkInPath));
        assert_eq!(std::fs::read(&outside).unwrap(), vec![5u8; 100]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A journal written by the previous release (no patch op) replays.
    #[test]
    fn an_old_journal_replays() {
        let mut s = MemStore::new();
        let mut p = recover(&mut s).unwrap().persisted;
        s.create(&format!("{STAGE_DIR}/r1-f0")).unwrap();
        s.write_at(&format!("{STAGE_DIR}/r1-f0"), 0, b"new")
            .unwrap();
        s.sync_file(&format!("{STAGE_DIR}/r1-f0")).unwrap();
        let f = RelPath::new("d/f").unwrap();
        // The previous release's bytes for these ops: kinds 2, 3 and 4.
        let rec = Delta {
            base_id: p.base_id,
            seq: p.seq + 1,
            generation: 1,
            taken_at_ns: 1,
            ops: vec![
                JOp::Mkdir(RelPath::new("d").unwrap(), 0o755),
                JOp::Install(StageName::parse("r1-f0"), f.clone()),
                JOp::SetMeta(f.clone(), 0o600, 9),
            ],
            changes: vec![
                (
                    RelPath::new("d").unwrap(),
                    Some(Meta {
                        kind: Kind::Dir,
                        ..file(0)
                    }),
                ),
                (f, Some(file(3))),
            ],
        };
        // The previous release's bytes for this record (its ops are kinds
        // 2, 3 and 4, encoded as before).
        let old = "534444310000000000000000010000000000000001000000000000000100000000000000030000000000000002010064ed01000003050072312d66300300642f66040300642f6680010000090000000000000002000000000000000001006401a4010000000000000000000000000000000000000000000000000000000300642f6600a4010000030000000000000001000000000000000303030303030303030303030303030303030303030303030303030303030303000000000000000000000000000000000ba7db3d";
        let b: Vec<u8> = (0..old.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(Delta::decode(&b).unwrap(), rec);
        assert_eq!(rec.encode(), b);
        // In pieces of any size: the same bytes, the checksum over all.
        for piece in [1, 7, 64, usize::MAX] {
            let mut pieces = Vec::new();
            let mut out = Vec::new();
            rec.encode_pieces(&mut out, piece, &mut |b| {
                pieces.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            pieces.extend_from_slice(&out);
            assert_eq!(pieces, b, "pieces of {piece}");
        }
        write_atomic(&mut s, STATE_DIR, "journal", &b).unwrap();
        p = recover(&mut s).unwrap().persisted;
        assert_eq!(p.generation, 1);
        assert_eq!(content(&mut s, "d/f"), b"new");
    }
}
