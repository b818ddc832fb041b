//! Generations on disk: the record format shared by the journal and the
//! manifest, the small state file, roll-forward and roll-back, and the
//! quarantine of a returning source.
//!
//! State folder (`.sync-delta/` at the root of the tree, never
//! replicated):
//!
//! | path | what |
//! | --- | --- |
//! | `manifest` | the current generation: number, taken-at, entries |
//! | `journal` | a committed generation whose ops are not all applied yet |
//! | `state` | role of this node, and the latest confirmation time |
//! | `stage/` | files written for a round in progress |
//! | `quarantine/` | local changes moved aside by a returning source |
//!
//! A round commits by renaming a fully written and synced `journal.tmp`
//! to `journal` (the commit record). Its ops are idempotent; once applied,
//! `journal` is renamed to `manifest`. Opening replays a `journal` if there
//! is one (roll forward) and empties `stage/` (roll back).

use crate::error::{StoreError, WireError};
use crate::exclude::Exclude;
use crate::manifest::{Kind, LocalStat, Manifest, Meta, decode_entry, encode_entry};
use crate::path::{RelPath, STATE_DIR};
use crate::store::{StatKind, Storage, read_all, write_atomic};
use crate::wire::{Reader, Writer};
use crc::{CRC_32_ISCSI, Crc};
use std::collections::BTreeSet;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
const RECORD_MAGIC: &[u8; 4] = b"SDG1";
const STATE_MAGIC: &[u8; 4] = b"SDS1";
/// Largest state record read back (bounds memory on a corrupt file).
const MAX_RECORD: u64 = 1 << 32;

pub(crate) const STAGE_DIR: &str = ".sync-delta/stage";
pub(crate) const QUARANTINE_DIR: &str = ".sync-delta/quarantine";
const JOURNAL: &str = ".sync-delta/journal";
const MANIFEST: &str = ".sync-delta/manifest";
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
    Install(String, RelPath),
    SetMeta(RelPath, u32, i64),
}

/// A generation record: the journal before it is applied, the manifest
/// after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub generation: u64,
    pub taken_at_ns: i64,
    pub ops: Vec<JOp>,
    pub manifest: Manifest,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_record(self.generation, self.taken_at_ns, &self.ops, &self.manifest)
    }
}

pub(crate) fn encode_record(
    generation: u64,
    taken_at_ns: i64,
    ops: &[JOp],
    manifest: &Manifest,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + manifest.len() * 96);
    let mut w = Writer(&mut out);
    w.bytes(RECORD_MAGIC);
    w.u64(generation);
    w.i64(taken_at_ns);
    w.u64(ops.len() as u64);
    for op in ops {
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
                w.str16(stage);
                w.str16(p.as_str());
            }
            JOp::SetMeta(p, mode, mtime) => {
                w.u8(4);
                w.str16(p.as_str());
                w.u32(*mode);
                w.i64(*mtime);
            }
        }
    }
    w.u64(manifest.len() as u64);
    for (p, m) in &manifest.entries {
        encode_entry(&mut w, p, m, true);
    }
    let crc = CRC32C.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

impl Record {
    pub(crate) fn decode(b: &[u8], with_ops: bool) -> Result<Self, WireError> {
        let (body, crc) = split_crc(b)?;
        let mut r = Reader(body);
        if r.take(4)? != RECORD_MAGIC {
            return Err(WireError::BadMagic);
        }
        let generation = r.u64()?;
        let taken_at_ns = r.i64()?;
        let n_ops = r.u64()?;
        if n_ops > body.len() as u64 {
            return Err(WireError::TooMany {
                count: n_ops,
                max: body.len() as u64,
            });
        }
        let mut ops = Vec::new();
        for _ in 0..n_ops {
            let tag = r.u8()?;
            let path = |r: &mut Reader<'_>| -> Result<RelPath, WireError> {
                Ok(RelPath::from_bytes(r.bytes16()?)?)
            };
            let op = match tag {
                0 => JOp::Delete(path(&mut r)?),
                1 => JOp::RemoveDir(path(&mut r)?),
                2 => JOp::Mkdir(path(&mut r)?, r.u32()?),
                3 => {
                    let stage = String::from_utf8(r.bytes16()?.to_vec()).map_err(|_| {
                        WireError::BadValue {
                            field: 20,
                            value: 0,
                        }
                    })?;
                    JOp::Install(stage, path(&mut r)?)
                }
                4 => JOp::SetMeta(path(&mut r)?, r.u32()?, r.i64()?),
                v => {
                    return Err(WireError::BadValue {
                        field: 21,
                        value: u64::from(v),
                    });
                }
            };
            if with_ops {
                ops.push(op);
            }
        }
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
        let _ = crc;
        Ok(Self {
            generation,
            taken_at_ns,
            ops,
            manifest,
        })
    }
}

fn split_crc(b: &[u8]) -> Result<(&[u8], u32), WireError> {
    if b.len() < 4 {
        return Err(WireError::Truncated {
            need: 4,
            have: b.len(),
        });
    }
    let (body, tail) = b.split_at(b.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(tail);
    let crc = u32::from_le_bytes(c);
    if CRC32C.checksum(body) != crc {
        return Err(WireError::BadChecksum);
    }
    Ok((body, crc))
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
        let crc = CRC32C.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, WireError> {
        let (body, _) = split_crc(b)?;
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

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub record: Record,
    pub state: StateFile,
    pub rolled_forward: bool,
    pub rolled_back: u64,
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

/// Applies a committed record's ops (idempotent), then makes it the
/// manifest.
pub(crate) fn roll_forward<S: Storage + ?Sized>(s: &mut S, rec: &Record) -> Result<(), StoreError> {
    let mut dirs = BTreeSet::new();
    for op in &rec.ops {
        match op {
            JOp::Delete(p) => {
                ignore(
                    s.remove_file(p.as_str()),
                    &[StoreError::NotFound, StoreError::IsDir],
                )?;
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::RemoveDir(p) => {
                // NotEmpty: something excluded lives in it; it stays.
                ignore(
                    s.remove_dir(p.as_str()),
                    &[
                        StoreError::NotFound,
                        StoreError::NotDir,
                        StoreError::NotEmpty,
                    ],
                )?;
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::Mkdir(p, mode) => {
                match s.create_dir(p.as_str(), *mode) {
                    Ok(()) => {}
                    Err(StoreError::AlreadyExists) if s.stat(p.as_str())?.kind == StatKind::Dir => {
                    }
                    Err(e) => return Err(e),
                }
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::Install(stage, p) => {
                let from = format!("{STAGE_DIR}/{stage}");
                match s.rename(&from, p.as_str()) {
                    Ok(()) => {}
                    Err(e) => match s.stat(&from) {
                        Err(StoreError::NotFound) => {} // installed before the crash
                        _ => return Err(e),
                    },
                }
                dirs.insert(p.parent().unwrap_or("").to_owned());
            }
            JOp::SetMeta(p, mode, mtime) => {
                ignore(
                    s.set_meta(p.as_str(), *mode, *mtime),
                    &[StoreError::NotFound],
                )?;
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
    let dirs: Vec<String> = dirs.into_iter().collect();
    s.sync_files(&dirs)?;
    s.sync_dir(STAGE_DIR)?;
    s.rename(JOURNAL, MANIFEST)?;
    s.sync_dir(STATE_DIR)
}

/// Writes the commit record, then applies it.
pub(crate) fn commit<S: Storage + ?Sized>(s: &mut S, rec: &Record) -> Result<(), StoreError> {
    write_atomic(s, STATE_DIR, "journal", &rec.encode())?;
    roll_forward(s, rec)
}

pub(crate) fn write_state<S: Storage + ?Sized>(s: &mut S, st: StateFile) -> Result<(), StoreError> {
    write_atomic(s, STATE_DIR, "state", &st.encode())
}

/// Writes a manifest record directly (no ops): a source persisting what
/// its peer confirmed, or a replica after quarantine.
pub(crate) fn write_manifest<S: Storage + ?Sized>(
    s: &mut S,
    generation: u64,
    taken_at_ns: i64,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let rec = encode_record(generation, taken_at_ns, &[], manifest);
    write_atomic(s, STATE_DIR, "manifest", &rec)
}

/// Finishes or rolls back whatever round was in progress and loads the
/// current generation.
pub(crate) fn recover<S: Storage + ?Sized>(s: &mut S) -> Result<Recovered, StoreError> {
    ensure_dirs(s)?;
    let mut rolled_forward = false;
    match read_all(s, JOURNAL, MAX_RECORD) {
        Ok(b) => {
            let rec = Record::decode(&b, true).map_err(|_| StoreError::Corrupt)?;
            roll_forward(s, &rec)?;
            rolled_forward = true;
        }
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e),
    }
    for tmp in [
        ".sync-delta/journal.tmp",
        ".sync-delta/manifest.tmp",
        ".sync-delta/state.tmp",
    ] {
        ignore(s.remove_file(tmp), &[StoreError::NotFound])?;
    }
    let rolled_back = clear_stage(s)?;
    let record = match read_all(s, MANIFEST, MAX_RECORD) {
        Ok(b) => Record::decode(&b, false).map_err(|_| StoreError::Corrupt)?,
        Err(StoreError::NotFound) => Record::default(),
        Err(e) => return Err(e),
    };
    let state = match read_all(s, STATE, 1 << 16) {
        Ok(b) => StateFile::decode(&b).map_err(|_| StoreError::Corrupt)?,
        Err(StoreError::NotFound) => StateFile {
            role: Role::Replica,
            generation: record.generation,
            taken_at_ns: record.taken_at_ns,
        },
        Err(e) => return Err(e),
    };
    Ok(Recovered {
        record,
        state,
        rolled_forward,
        rolled_back,
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
        if let Some(mp) = &moved_prefix {
            if e.path.as_str().starts_with(mp.as_str()) {
                continue;
            }
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
    match s.create_dir(QUARANTINE_DIR, 0o700) {
        Ok(()) | Err(StoreError::AlreadyExists) => {}
        Err(e) => return Err(e),
    }
    let existing = quarantine_list(s)?;
    let mut n = existing.len() + 1;
    let mut name = format!("q{n}-g{generation}");
    while existing.contains(&name) {
        n += 1;
        name = format!("q{n}-g{generation}");
    }
    let base = format!("{QUARANTINE_DIR}/{name}");
    s.create_dir(&base, 0o700)?;
    let mut made = BTreeSet::new();
    for p in &to_move {
        // Recreate the path's directories inside the quarantine folder.
        let mut end = 0;
        let ps = p.as_str();
        while let Some(i) = ps[end..].find('/') {
            let d = format!("{base}/{}", &ps[..end + i]);
            if made.insert(d.clone()) {
                match s.create_dir(&d, 0o700) {
                    Ok(()) | Err(StoreError::AlreadyExists) => {}
                    Err(e) => return Err(e),
                }
            }
            end += i + 1;
        }
        s.rename(ps, &format!("{base}/{ps}"))?;
    }
    s.sync_dir(&base)?;
    s.sync_dir("")?;
    Ok((kept, Some(name), to_move.len() as u64))
}

/// The quick check: size, mtime, ctime and inode unchanged (and known).
pub(crate) fn quick_match(m: &Meta, st: &crate::store::Stat) -> bool {
    matches!(m.kind, Kind::File { size, .. } if size == st.size)
        && m.mtime_ns == st.mtime_ns
        && m.local.ino != 0
        && m.local.ino == st.ino
        && m.local.ctime_ns == st.ctime_ns
}
