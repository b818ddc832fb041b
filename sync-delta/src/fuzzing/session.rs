//! `sync_session`: hostile message sequences into a [`Replica`] and into a
//! [`Source`], each on a [`MemStore`], interleaved with timeouts, lost
//! connections, restarts, injected storage faults and power cuts.
//!
//! The first byte picks the session; the rest is read with
//! [`arbitrary::Unstructured`] as a sequence of steps. Messages are built
//! from the bytes (structure-aware: paths near the tree's, file entries
//! whose content the harness can send, a manifest end with the right
//! digest, a replica's old copy with a real signature), or taken as raw
//! bytes; either way they pass through [`Message::encode`] and
//! [`Message::decode`] as on the link, and one that does not decode closes
//! the connection as a driver would.
//!
//! Properties, checked after every step (a failure panics):
//!
//! - nothing panics; an input the session refuses is a [`SessionError`],
//!   and a storage error only where storage really failed (an injected
//!   fault, a power cut) or the tree changed while that round ran: never
//!   from messages alone, nor from a tree that diverged locally before the
//!   round (the round moves what is in its way aside and completes);
//! - every node of either store is inside the root (a checked relative
//!   path, or inside the state folder) under a directory;
//! - every message a session sends fits a frame and decodes to itself;
//!   a replica's `Committed` names its generation and manifest; a source's
//!   data for a file adds up to the size it announced (and, from an old
//!   copy the harness knows, rebuilds the file exactly), and draining it
//!   ends;
//! - a source never changes its tree;
//! - after every step, reopening a copy of the replica's store, as it is
//!   (a crash) and after a power cut (unsynced data lost), gives
//!   generation N or N+1 (N: the generation before the step) and a tree
//!   that is exactly that generation's manifest (unless the harness
//!   changed the tree locally); reopening a source's store gives the
//!   generation confirmed before or after the step.

use crate::chunk::ChunkParams;
use crate::delta::{Op, SigChunk, SignatureBuilder};
use crate::exclude::Exclude;
use crate::frame::MAX_PAYLOAD;
use crate::manifest::{Change, Hash, Kind, LocalStat, Manifest, Meta};
use crate::mem::{Fault, MemStore, Node, View};
use crate::path::{RelPath, STATE_DIR};
use crate::wire::{AbandonReason, Base, DataStatus, Message};
use crate::{Replica, ReplicaConfig, SessionError, Source, SourceConfig};
use arbitrary::{Result as AResult, Unstructured};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Most steps one input runs.
const MAX_STEPS: usize = 48;
/// Most messages one drain of a source may yield before it counts as a
/// session that never runs dry.
const MAX_DRAIN: usize = 20_000;

/// `sync_session`: see the module documentation. `now` is the sessions'
/// clock at the start (the harness passes the time it starts); time then
/// moves only as the input says.
///
/// # Panics
/// When a property fails: that is the fuzzer's signal.
pub fn sync_session(now: Instant, data: &[u8]) {
    session_summary(now, data);
}

/// What one [`sync_session`] input made the session do: for tests that
/// check a seed corpus reaches deep into the sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionSummary {
    /// True for the replica's run, false for the source's.
    pub replica: bool,
    /// Steps run.
    pub steps: u64,
    /// Generations a replica committed.
    pub commits: u64,
    /// Rounds that found local divergence in their way.
    pub diverged: u64,
    /// Messages a session refused with an error.
    pub refused: u64,
    /// Restarts: after a crash or a power cut.
    pub restarts: u64,
    /// Generations a source recorded as confirmed.
    pub confirmed: u64,
    /// Files a source sent with copy ops (a delta or an append).
    pub deltas: u64,
}

/// [`sync_session`], returning what the input made the session do.
///
/// # Panics
/// When a property fails.
pub fn session_summary(now: Instant, data: &[u8]) -> SessionSummary {
    let mut u = Unstructured::new(data);
    let Ok(which) = u.arbitrary::<u8>() else {
        return SessionSummary::default();
    };
    // Running out of bytes ends the sequence; that is not a failure.
    if which & 1 == 0 {
        let Ok(mut r) = ReplicaRun::new(now, which, &mut u) else {
            return SessionSummary::default();
        };
        r.sum.replica = true;
        let _ = r.run(&mut u);
        r.sum
    } else {
        let Ok(mut s) = SourceRun::new(now, which, &mut u) else {
            return SessionSummary::default();
        };
        let _ = s.run(&mut u);
        s.sum
    }
}

// ---------------------------------------------------------------------------
// Shared pieces

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The Master's tree every run starts from: files small and large enough
/// for deltas, a directory tree, an empty file, a symlink.
fn master_files() -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        ("etc/pbx.conf", b"[general]\nport=5060\n".to_vec(), 0o644),
        ("etc/users.conf", b"100,200,300".to_vec(), 0o600),
        ("voice/100/msg1.wav", noise(24_000, 1), 0o640),
        ("voice/100/msg2.wav", noise(3_000, 2), 0o640),
        ("empty", Vec::new(), 0o644),
    ]
}

fn master_tree() -> MemStore {
    let mut s = MemStore::new();
    for (i, (p, d, mode)) in master_files().into_iter().enumerate() {
        s.put_file(p, &d, mode, 10 + i as i64);
    }
    s.put_dir("spool", 0o755);
    s.put_symlink("current", b"voice/100");
    s.sync_all();
    s
}

/// Paths the harness names besides the tree's own: nested, excluded
/// (`tmp`), under files and symlinks, long.
const PATHS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "etc",
    "etc/pbx.conf",
    "etc/new.conf",
    "voice",
    "voice/100",
    "voice/100/msg1.wav",
    "voice/100/msg2.wav",
    "voice/100/msg3.wav",
    "voice/200",
    "current",
    "current/x",
    "empty",
    "empty/x",
    "spool",
    "spool/q",
    "tmp",
    "tmp/x",
];

const MODES: &[u32] = &[
    0o644, 0o755, 0o600, 0o640, 0o4755, 0o2775, 0o1777, 0o7777, 0,
];

const TARGETS: &[&[u8]] = &[
    b"voice/100",
    b"voice/200",
    b"../../etc/passwd",
    b"/etc/shadow",
    b"current",
    b".",
];

/// The replica's settings: small bounds the input can reach.
fn replica_config(keep_special_bits: bool, max_delete_percent: u32) -> ReplicaConfig {
    // The guard's share of the tree's content, from a percentage (0: the
    // least it takes, 1 %).
    let mass_delete_fraction = f64::from(max_delete_percent.clamp(1, 100)) / 100.0;
    ReplicaConfig {
        exclude: Exclude::new(["tmp"]),
        interval: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(120),
        mass_delete_fraction,
        mass_delete_window: Duration::from_secs(3600),
        max_file_size: 1 << 20,
        max_entries: 64,
        delta_min_size: 1,
        max_manifest_bytes: 16 << 10,
        keep_special_bits,
    }
}

/// Every node is inside the root and under a directory.
fn assert_contained(store: &MemStore) {
    let nodes = store.nodes();
    for k in nodes.keys() {
        let inside = if k == STATE_DIR {
            true
        } else if let Some(rest) = k.strip_prefix(".sync-delta/") {
            rest.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
        } else {
            RelPath::new(k).is_ok()
        };
        assert!(inside, "a node outside the root: {k:?}");
        if let Some(i) = k.rfind('/') {
            assert!(
                matches!(nodes.get(&k[..i]), Some(Node::Dir { .. })),
                "{k:?} is not under a directory"
            );
        }
    }
}

/// The tree is exactly `m`: the same paths, each with its kind, content,
/// mode (as the replica writes it) and mtime (symlinks: target only).
pub(super) fn assert_whole(store: &MemStore, m: &Manifest, mask: u32, what: &str) {
    let view = store.view();
    for (p, meta) in &m.entries {
        let got = view.get(p.as_str());
        let ok = match (&meta.kind, got) {
            (Kind::Dir, Some(View::Dir(mode, mtime))) => {
                *mode == meta.mode & mask && *mtime == meta.mtime_ns
            }
            (Kind::File { size, hash }, Some(View::File(data, mode, mtime))) => {
                data.len() as u64 == *size
                    && blake3::hash(data).as_bytes() == hash
                    && *mode == meta.mode & mask
                    && *mtime == meta.mtime_ns
            }
            (Kind::Symlink { target }, Some(View::Symlink(t))) => t == target,
            _ => false,
        };
        assert!(
            ok,
            "{what}: {p} is {got:?} in the tree, {meta:?} in the manifest"
        );
    }
    for k in view.keys() {
        assert!(
            RelPath::new(k).is_ok_and(|p| m.entries.contains_key(&p)),
            "{what}: {k} is in the tree, not in the manifest"
        );
    }
}

/// A message as the link carries it: encoded, then decoded (`None`: the
/// receiver's decoder refuses it and closes the connection).
fn through_the_wire(m: &Message) -> Option<Message> {
    let mut b = Vec::new();
    m.encode(&mut b);
    Message::decode(&b).ok()
}

/// What a session sends fits a frame and decodes to itself.
pub(super) fn assert_sendable(m: &Message) {
    let mut b = Vec::new();
    m.encode(&mut b);
    assert!(
        b.len() <= MAX_PAYLOAD as usize,
        "{:?}: {} bytes",
        m.ty(),
        b.len()
    );
    // The local stat of an entry is never sent.
    let mut m = m.clone();
    if let Message::Entries { changes } = &mut m {
        for c in changes {
            if let Change::Upsert(_, meta) = c {
                meta.local = LocalStat::default();
            }
        }
    }
    assert_eq!(Message::decode(&b), Ok(m), "sent message re-decodes");
}

fn arbitrary_path(u: &mut Unstructured<'_>, known: &[RelPath]) -> AResult<RelPath> {
    Ok(match u.int_in_range(0..=5)? {
        0 | 1 if !known.is_empty() => u.choose(known)?.clone(),
        0..=2 => RelPath::new(u.choose(PATHS)?).expect("pool paths are valid"),
        3 if !known.is_empty() => {
            let parent = u.choose(known)?;
            let name = u.choose(&["x", "new", "msg9.wav", "tmp"])?;
            parent.join(name).unwrap_or_else(|_| parent.clone())
        }
        _ => {
            let s: &str = u.arbitrary()?;
            RelPath::new(s).unwrap_or_else(|_| RelPath::new("z").expect("valid"))
        }
    })
}

fn arbitrary_mode(u: &mut Unstructured<'_>) -> AResult<u32> {
    if u.ratio(1, 8)? {
        u.arbitrary()
    } else {
        Ok(*u.choose(MODES)?)
    }
}

fn arbitrary_mtime(u: &mut Unstructured<'_>) -> AResult<i64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => *u.choose(&[i64::MIN, i64::MAX, -1, 0])?,
        _ => 1_700_000_000_000_000_000 + i64::from(u.int_in_range(0..=1000u16)?),
    })
}

/// Content near what the tree already holds (for local copies, renames
/// and deltas), or new bytes.
fn arbitrary_content(u: &mut Unstructured<'_>, known: &[Vec<u8>]) -> AResult<Vec<u8>> {
    let mut d = if !known.is_empty() && u.ratio(2, 3)? {
        u.choose(known)?.clone()
    } else {
        let n = u.int_in_range(0..=64)?;
        u.bytes(n)?.to_vec()
    };
    match u.int_in_range(0..=4)? {
        0 => {}
        1 => {
            let at = u.int_in_range(0..=d.len())?;
            let n = u.int_in_range(0..=32)?;
            let ins = u.bytes(n)?.to_vec();
            d.splice(at..at, ins);
        }
        2 => {
            let n = u.int_in_range(0..=64)?;
            d.extend_from_slice(u.bytes(n)?);
        }
        3 => {
            let n = u.int_in_range(0..=d.len())?;
            d.truncate(n);
        }
        _ => {
            if !d.is_empty() {
                let at = u.int_in_range(0..=d.len() - 1)?;
                d[at] ^= u.arbitrary::<u8>()? | 1;
            }
        }
    }
    Ok(d)
}

/// A wall-clock time from the input: now-ish, or far from it.
fn arbitrary_wall(u: &mut Unstructured<'_>, wall: SystemTime) -> AResult<SystemTime> {
    Ok(match u.int_in_range(0..=3)? {
        0 => SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(u.int_in_range(0..=1u64 << 40)?))
            .unwrap_or(SystemTime::UNIX_EPOCH),
        1 => SystemTime::UNIX_EPOCH + Duration::from_secs(u.int_in_range(0..=1u64 << 36)?),
        _ => wall + Duration::from_secs(u.int_in_range(0..=3600)?),
    })
}

fn arbitrary_dt(u: &mut Unstructured<'_>) -> AResult<Duration> {
    Ok(match u.int_in_range(0..=4)? {
        0 => Duration::ZERO,
        1 => Duration::from_secs(60),
        2 => Duration::from_secs(121),
        _ => Duration::from_millis(u.int_in_range(0..=600_000)?),
    })
}

/// A storage fault at one of the next few mutating steps.
fn arm_fault(u: &mut Unstructured<'_>, store: &mut MemStore) -> AResult<()> {
    let k = u.int_in_range(1..=40)?;
    let fault = if u.arbitrary()? {
        Fault::PowerOff
    } else {
        Fault::Error
    };
    store.fail_at(store.steps() + k, fault);
    Ok(())
}

/// A local change to a store that keeps it a tree (every node under a
/// directory): what an operator, a service or a stray process does.
fn local_edit(u: &mut Unstructured<'_>, store: &mut MemStore, known: &[RelPath]) -> AResult<()> {
    let p = arbitrary_path(u, known)?;
    let p = p.as_str();
    let nodes = store.nodes();
    // Every existing ancestor must be a directory (put_* makes the rest).
    let mut ok = true;
    let mut end = 0;
    while let Some(i) = p[end..].find('/') {
        if matches!(
            nodes.get(&p[..end + i]),
            Some(Node::File { .. } | Node::Symlink { .. })
        ) {
            ok = false;
        }
        end += i + 1;
    }
    let has_children = nodes.keys().any(|k| k.starts_with(&format!("{p}/")));
    match u.int_in_range(0..=4)? {
        0 if ok && !has_children => {
            let n = u.int_in_range(0..=64)?;
            let d = u.bytes(n)?.to_vec();
            // A real store reports permission bits only.
            let mode = arbitrary_mode(u)? & 0o7777;
            store.put_file(p, &d, mode, 7);
        }
        1 if ok && !matches!(nodes.get(p), Some(Node::File { .. } | Node::Symlink { .. })) => {
            store.put_dir(p, 0o755);
        }
        2 if ok && !has_children => {
            let t = u.choose(TARGETS)?;
            store.put_symlink(p, t);
        }
        3 => store.chmod(p, arbitrary_mode(u)? & 0o7777),
        _ => store.remove_tree(p),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The replica

/// The replica's store after one honest round from the Master's tree.
fn replica_start(now: Instant) -> &'static MemStore {
    static START: OnceLock<MemStore> = OnceLock::new();
    START.get_or_init(|| {
        let mut src = master_tree();
        let mut dst = MemStore::new();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut source = Source::open(SourceConfig::default(), now, &mut src).expect("opens");
        let (mut replica, _) =
            Replica::open(replica_config(false, 50), now, &mut dst).expect("opens");
        replica.handle_connected(now);
        loop {
            let mut moved = false;
            while let Some(m) = replica.poll_transmit() {
                source
                    .handle_message(now, wall, m, &mut src)
                    .expect("honest round");
                moved = true;
            }
            while let Some(m) = source.poll_transmit(&mut src) {
                replica
                    .handle_message(now, m, &mut dst)
                    .expect("honest round");
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert_eq!(dst.view(), src.view(), "the first round replicates");
        assert_eq!(replica.generation().number, 1);
        dst
    })
}

/// The round the hostile source is describing, as the replica will
/// rebuild it (for a manifest end with the right digest).
#[derive(Default)]
struct Shadow {
    full: bool,
    changes: BTreeMap<RelPath, Option<Meta>>,
}

struct ReplicaRun {
    now: Instant,
    store: MemStore,
    replica: Replica,
    config: ReplicaConfig,
    connected: bool,
    /// The tree was changed locally: it may differ from the manifest
    /// outside the paths a round writes.
    diverged: bool,
    /// A storage fault was armed since the last restart.
    faulted: bool,
    /// The tree was changed locally while the round in progress ran (a
    /// round may fail on that, and the next one must not).
    raced: bool,
    wants: BTreeMap<u32, RelPath>,
    contents: HashMap<Hash, Vec<u8>>,
    shadow: Option<Shadow>,
    /// Manifest digest of each generation, as the live replica had it.
    digests: HashMap<u64, Hash>,
    /// The store's step count and power state when it was last reopened,
    /// and the generations reopening gave (after a crash, a power cut).
    reopened: Option<((u64, bool), [u64; 2])>,
    sum: SessionSummary,
}

impl ReplicaRun {
    fn new(now: Instant, which: u8, u: &mut Unstructured<'_>) -> AResult<Self> {
        let config = replica_config(which & 2 != 0, *u.choose(&[0, 50, 100])?);
        let mut store = replica_start(now).clone();
        let (replica, _) = Replica::open(config.clone(), now, &mut store).expect("opens");
        let contents = master_files()
            .into_iter()
            .map(|(_, d, _)| (*blake3::hash(&d).as_bytes(), d))
            .collect();
        let mut digests = HashMap::new();
        digests.insert(replica.generation().number, replica.manifest().digest());
        Ok(Self {
            now,
            store,
            replica,
            config,
            connected: false,
            diverged: false,
            faulted: false,
            raced: false,
            wants: BTreeMap::new(),
            contents,
            shadow: None,
            digests,
            reopened: None,
            sum: SessionSummary::default(),
        })
    }

    fn mask(&self) -> u32 {
        if self.config.keep_special_bits {
            0o7777
        } else {
            0o777
        }
    }

    fn known_paths(&self) -> Vec<RelPath> {
        let mut v: Vec<RelPath> = self.replica.manifest().entries.keys().cloned().collect();
        if let Some(s) = &self.shadow {
            v.extend(s.changes.keys().cloned());
        }
        v
    }

    fn run(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        for _ in 0..MAX_STEPS {
            if u.is_empty() {
                break;
            }
            if self.store.is_off() {
                // The power came back.
                self.restart(true);
            }
            let before = self.replica.generation().number;
            self.sum.steps += 1;
            self.step(u)?;
            self.check(before);
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        match u.int_in_range(0..=15)? {
            0..=6 => {
                let m = self.hostile_message(u)?;
                self.send(&m);
            }
            7 => {
                // Raw bytes through the decoder.
                let n = u.int_in_range(0..=200)?;
                let b = u.bytes(n)?;
                match Message::decode(b) {
                    Ok(m) => self.deliver(m),
                    Err(_) => self.disconnect(),
                }
            }
            8 => self.send_wanted(u)?,
            9 => {
                self.now += arbitrary_dt(u)?;
                self.replica.handle_timeout(self.now);
                self.drain();
                if let Some(t) = self.replica.poll_timeout() {
                    assert!(t > self.now, "a timer already due after handle_timeout");
                }
            }
            10 => match u.int_in_range(0..=3)? {
                0 => self.disconnect(),
                1 => self.connect(),
                2 => {
                    self.replica.sync_now(self.now);
                    self.drain();
                }
                _ => self.replica.confirm_deletions(),
            },
            11 => {
                arm_fault(u, &mut self.store)?;
                self.faulted = true;
            }
            12 => {
                let known = self.known_paths();
                local_edit(u, &mut self.store, &known)?;
                self.diverged = true;
                self.raced |= self
                    .replica
                    .status(SystemTime::UNIX_EPOCH)
                    .round_in_progress;
                self.reopened = None;
            }
            13 => {
                let power_off = u.arbitrary()?;
                self.restart(power_off);
            }
            _ => {
                // A whole round's worth at once: start, entries, the right
                // end, then everything wanted.
                let full = u.arbitrary()?;
                self.connect();
                self.send(&Message::ManifestStart {
                    taken_at_ns: arbitrary_mtime(u)?,
                    full,
                });
                let m = self.entries(u)?;
                self.send(&m);
                let end = self.manifest_end();
                self.send(&end);
                self.send_wanted(u)?;
            }
        }
        Ok(())
    }

    fn connect(&mut self) {
        if !self.connected {
            self.connected = true;
            self.replica.handle_connected(self.now);
            self.drain();
        }
    }

    fn disconnect(&mut self) {
        if self.connected {
            self.connected = false;
            let r = self.replica.handle_disconnected(self.now, &mut self.store);
            if let Err(e) = r {
                self.assert_store_error_explained(&e);
            }
            self.wants.clear();
            self.shadow = None;
        }
    }

    /// A crash (`kill -9`) or a power cut, then [`Replica::open`], which
    /// must succeed whatever state the tree was left in.
    fn restart(&mut self, power_off: bool) {
        self.store.clear_fault();
        if power_off || self.store.is_off() {
            self.store.reboot();
        }
        self.faulted = false;
        self.raced = false;
        self.reopened = None;
        let (r, report) = Replica::open(self.config.clone(), self.now, &mut self.store)
            .unwrap_or_else(|e| panic!("a replica always opens: {e}"));
        if report.repaired.is_some() {
            assert!(self.diverged, "a repair without a local change: {report:?}");
        }
        self.replica = r;
        self.sum.restarts += 1;
        self.connected = false;
        self.wants.clear();
        self.shadow = None;
    }

    fn assert_store_error_explained(&self, e: &dyn std::fmt::Display) {
        assert!(
            self.faulted || self.store.is_off() || self.raced,
            "a storage error from messages alone, or from a tree that \
             diverged before the round: {e}"
        );
    }

    /// Sends `m` as the link would carry it.
    fn send(&mut self, m: &Message) {
        match through_the_wire(m) {
            Some(m) => self.deliver(m),
            None => self.disconnect(),
        }
    }

    fn deliver(&mut self, m: Message) {
        self.connect();
        match &m {
            Message::ManifestStart { full, .. } => {
                self.shadow = Some(Shadow {
                    full: *full,
                    changes: BTreeMap::new(),
                });
            }
            Message::Entries { changes } => {
                if let Some(s) = &mut self.shadow {
                    for c in changes {
                        match c {
                            Change::Upsert(p, meta) => {
                                s.changes.insert(p.clone(), Some(meta.clone()))
                            }
                            Change::Gone(p) => s.changes.insert(p.clone(), None),
                        };
                    }
                }
            }
            _ => {}
        }
        let r = self.replica.handle_message(self.now, m, &mut self.store);
        if let Err(e) = r {
            self.sum.refused += 1;
            assert!(!e.to_string().is_empty());
            if let SessionError::Store(se) = &e {
                self.assert_store_error_explained(se);
            }
            assert!(
                !self
                    .replica
                    .status(SystemTime::UNIX_EPOCH)
                    .round_in_progress,
                "a refused round is not left in progress: {e}"
            );
            // The driver closes the connection.
            self.drain();
            self.disconnect();
            return;
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(m) = self.replica.poll_transmit() {
            assert_sendable(&m);
            match m {
                Message::Request { digest } => {
                    assert_eq!(digest, self.replica.manifest().digest());
                    self.raced = false;
                    self.wants.clear();
                    self.shadow = None;
                }
                Message::Want { id, path, base } => {
                    if let Some(b) = &base {
                        assert!(b.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() == b.size);
                    }
                    self.wants.insert(id, path);
                }
                Message::Committed { generation, digest } => {
                    assert_eq!(generation, self.replica.generation().number);
                    assert_eq!(digest, self.replica.manifest().digest());
                    self.wants.clear();
                    self.shadow = None;
                }
                Message::Abandon { .. } => {
                    self.wants.clear();
                    self.shadow = None;
                }
                other => panic!("a replica sent {:?}", other.ty()),
            }
        }
        while let Some(e) = self.replica.poll_event() {
            match e {
                crate::ReplicaEvent::Committed { changed, .. } if changed > 0 => {
                    self.sum.commits += 1;
                }
                crate::ReplicaEvent::Diverged(_) => self.sum.diverged += 1,
                _ => {}
            }
        }
    }

    /// The end of the round the shadow describes, with the digest the
    /// replica will compute.
    fn manifest_end(&self) -> Message {
        let mut m = Manifest::default();
        if let Some(s) = &self.shadow {
            if !s.full {
                m = self.replica.manifest().clone();
            }
            for (p, meta) in &s.changes {
                match meta {
                    Some(meta) => m.entries.insert(p.clone(), meta.clone()),
                    None => m.entries.remove(p),
                };
            }
        }
        Message::ManifestEnd {
            entries: m.len() as u64,
            digest: m.digest(),
        }
    }

    fn entries(&mut self, u: &mut Unstructured<'_>) -> AResult<Message> {
        let known = self.known_paths();
        let contents: Vec<Vec<u8>> = self.contents.values().cloned().collect();
        let n = u.int_in_range(0..=6)?;
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let p = arbitrary_path(u, &known)?;
            if u.ratio(1, 4)? {
                changes.push(Change::Gone(p));
                continue;
            }
            let kind = match u.int_in_range(0..=3)? {
                0 => Kind::Dir,
                1 => Kind::Symlink {
                    target: if u.ratio(1, 4)? {
                        let n = u.int_in_range(0..=40)?;
                        u.bytes(n)?.to_vec()
                    } else {
                        u.choose(TARGETS)?.to_vec()
                    },
                },
                _ => {
                    let d = arbitrary_content(u, &contents)?;
                    let hash = *blake3::hash(&d).as_bytes();
                    let size = d.len() as u64;
                    self.contents.insert(hash, d);
                    match u.int_in_range(0..=7)? {
                        0 => Kind::File {
                            size: u.arbitrary()?,
                            hash,
                        },
                        1 => Kind::File {
                            size,
                            hash: u.arbitrary()?,
                        },
                        _ => Kind::File { size, hash },
                    }
                }
            };
            changes.push(Change::Upsert(
                p,
                Meta {
                    kind,
                    mode: arbitrary_mode(u)?,
                    mtime_ns: arbitrary_mtime(u)?,
                    local: LocalStat::default(),
                },
            ));
        }
        Ok(Message::Entries { changes })
    }

    fn hostile_message(&mut self, u: &mut Unstructured<'_>) -> AResult<Message> {
        let ids: Vec<u32> = self.wants.keys().copied().collect();
        let id = |u: &mut Unstructured<'_>| -> AResult<u32> {
            if !ids.is_empty() && u.ratio(3, 4)? {
                Ok(*u.choose(&ids)?)
            } else {
                u.arbitrary()
            }
        };
        Ok(match u.int_in_range(0..=10)? {
            0 => Message::ManifestStart {
                taken_at_ns: arbitrary_mtime(u)?,
                full: u.arbitrary()?,
            },
            1 | 2 => self.entries(u)?,
            3 => self.manifest_end(),
            4 => Message::ManifestEnd {
                entries: u.arbitrary()?,
                digest: u.arbitrary()?,
            },
            5 | 6 => {
                let id = id(u)?;
                let n = u.int_in_range(0..=4)?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(if u.arbitrary()? {
                        Op::Copy {
                            offset: if u.arbitrary()? {
                                u.int_in_range(0..=30_000)?
                            } else {
                                u.arbitrary()?
                            },
                            len: if u.arbitrary()? {
                                u.int_in_range(0..=30_000)?
                            } else {
                                u.arbitrary()?
                            },
                        }
                    } else {
                        let n = u.int_in_range(0..=64)?;
                        Op::Literal(u.bytes(n)?.to_vec())
                    });
                }
                Message::Data { id, ops }
            }
            7 => Message::DataEnd {
                id: id(u)?,
                status: if u.ratio(3, 4)? {
                    DataStatus::Complete
                } else {
                    DataStatus::Changed
                },
            },
            8 => Message::SyncNow,
            // What only a replica sends.
            9 => Message::Committed {
                generation: u.arbitrary()?,
                digest: u.arbitrary()?,
            },
            _ => match u.int_in_range(0..=2)? {
                0 => Message::Request {
                    digest: u.arbitrary()?,
                },
                1 => Message::Abandon {
                    reason: AbandonReason::Refused,
                },
                _ => Message::Want {
                    id: u.arbitrary()?,
                    path: arbitrary_path(u, &[])?,
                    base: None,
                },
            },
        })
    }

    /// The content of every wanted file (when the harness knows it), in
    /// pieces, each followed by its end.
    fn send_wanted(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let wants: Vec<(u32, RelPath)> = self.wants.iter().map(|(i, p)| (*i, p.clone())).collect();
        for (id, path) in wants {
            if !self.wants.contains_key(&id) {
                continue; // the round ended
            }
            let meta = match self.shadow.as_ref().and_then(|s| s.changes.get(&path)) {
                Some(m) => m.clone(),
                None => self.replica.manifest().entries.get(&path).cloned(),
            };
            let data = match meta.as_ref().map(|m| &m.kind) {
                Some(Kind::File { hash, .. }) => self.contents.get(hash).cloned(),
                _ => None,
            };
            let data = match data {
                Some(d) => d,
                None => {
                    let n = u.int_in_range(0..=64)?;
                    u.bytes(n)?.to_vec()
                }
            };
            let pieces = u.int_in_range(1..=3)?;
            let step = data.len().div_ceil(pieces).max(1);
            for piece in data.chunks(step) {
                self.send(&Message::Data {
                    id,
                    ops: vec![Op::Literal(piece.to_vec())],
                });
            }
            self.send(&Message::DataEnd {
                id,
                status: DataStatus::Complete,
            });
            self.wants.remove(&id);
        }
        Ok(())
    }

    fn check(&mut self, before: u64) {
        assert_contained(&self.store);
        let after = self.replica.generation().number;
        assert!(
            after == before || Some(after) == before.checked_add(1),
            "one step moved the replica from generation {before} to {after}"
        );
        if !self.diverged {
            let d = self.replica.manifest().digest();
            if let Some(old) = self.digests.insert(after, d) {
                assert_eq!(old, d, "generation {after} changed its manifest");
            }
        }
        // The same store opened after a crash, and after a power cut (the
        // same as last time when nothing touched the store since).
        let key = (self.store.steps(), self.store.is_off());
        let opened = match self.reopened {
            Some((k, g)) if k == key => g,
            _ => {
                let g = [self.reopen(false), self.reopen(true)];
                self.reopened = Some((key, g));
                g
            }
        };
        for g in opened {
            assert!(
                g == before || Some(g) == before.checked_add(1),
                "reopened at generation {g}, not {before} or the next"
            );
        }
    }

    fn reopen(&self, power_off: bool) -> u64 {
        let mut c = self.store.clone();
        c.clear_fault();
        if power_off || c.is_off() {
            c.reboot();
        }
        let what = if power_off {
            "after a power cut"
        } else {
            "after a crash"
        };
        let (r, _) = Replica::open(self.config.clone(), self.now, &mut c)
            .unwrap_or_else(|e| panic!("{what}: a replica always opens: {e}"));
        let g = r.generation().number;
        assert_contained(&c);
        if !self.diverged {
            assert_whole(&c, &r.manifest(), self.mask(), what);
            if let Some(d) = self.digests.get(&g) {
                assert_eq!(
                    *d,
                    r.manifest().digest(),
                    "{what}: generation {g}'s manifest"
                );
            }
        }
        g
    }
}

// ---------------------------------------------------------------------------
// The source

/// One file the harness asked the source for.
struct Asked {
    /// The size the source's scan found (when the harness knows it).
    size: Option<u64>,
    /// The file as the scan found it, and the old copy offered as base
    /// (when the harness built it from real bytes): the data must rebuild
    /// the file exactly.
    rebuild: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// Whether a base was offered at all.
    has_base: bool,
    sent: u64,
    out: Vec<u8>,
}

struct SourceRun {
    now: Instant,
    wall: SystemTime,
    store: MemStore,
    source: Source,
    faulted: bool,
    /// The tree as the source's last scan saw it (at the last `Request`),
    /// and whether it was changed since.
    scanned: Option<BTreeMap<String, View>>,
    edited: bool,
    last_end: Option<Hash>,
    asked: BTreeMap<u32, Asked>,
    /// The bytes of the old copy the next `Want` offers, when the harness
    /// made it.
    pending_base: Option<Vec<u8>>,
    /// As [`ReplicaRun`]'s: the step count and power state at the last
    /// reopening, and the generations it gave.
    reopened: Option<((u64, bool), [u64; 2])>,
    /// The generation a `Committed` of this step claimed: a storage error
    /// after its record became durable leaves it on disk while the live
    /// source, whose session ended, still reports the one before.
    claimed: Option<u64>,
    sum: SessionSummary,
}

impl SourceRun {
    fn new(now: Instant, _which: u8, u: &mut Unstructured<'_>) -> AResult<Self> {
        let mut store = master_tree();
        let source = Source::open(SourceConfig::default(), now, &mut store).expect("opens");
        let wall = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_800_000_000 + u64::from(u.arbitrary::<u16>()?));
        Ok(Self {
            now,
            wall,
            store,
            source,
            faulted: false,
            scanned: None,
            edited: false,
            last_end: None,
            asked: BTreeMap::new(),
            pending_base: None,
            reopened: None,
            claimed: None,
            sum: SessionSummary::default(),
        })
    }

    fn run(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        for _ in 0..MAX_STEPS {
            if u.is_empty() {
                break;
            }
            if self.store.is_off() {
                self.restart(true);
            }
            let before = self.source.confirmed_generation();
            self.claimed = None;
            self.sum.steps += 1;
            self.step(u)?;
            self.check(before);
        }
        Ok(())
    }

    fn files(&self) -> Vec<RelPath> {
        self.store
            .view()
            .iter()
            .filter(|(_, v)| matches!(v, View::File(..)))
            .filter_map(|(k, _)| RelPath::new(k).ok())
            .collect()
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        match u.int_in_range(0..=12)? {
            0..=6 => {
                let m = self.hostile_message(u)?;
                match through_the_wire(&m) {
                    Some(m) => self.deliver(m),
                    None => self.disconnect(),
                }
            }
            7 => {
                let n = u.int_in_range(0..=200)?;
                let b = u.bytes(n)?;
                match Message::decode(b) {
                    Ok(m) => self.deliver(m),
                    Err(_) => self.disconnect(),
                }
            }
            8 => {
                self.now += arbitrary_dt(u)?;
                self.wall = arbitrary_wall(u, self.wall)?;
                self.source.handle_timeout(self.now);
                assert_eq!(self.source.poll_timeout(), None);
                if u.arbitrary()? {
                    self.source.sync_now(self.now);
                }
                self.drain();
            }
            9 => self.disconnect(),
            10 => {
                arm_fault(u, &mut self.store)?;
                self.faulted = true;
            }
            11 => {
                let known = self.files();
                local_edit(u, &mut self.store, &known)?;
                self.edited = true;
            }
            _ => {
                let power_off = u.arbitrary()?;
                self.restart(power_off);
            }
        }
        Ok(())
    }

    fn disconnect(&mut self) {
        self.source.handle_disconnected(self.now);
        self.asked.clear();
        self.pending_base = None;
    }

    fn restart(&mut self, power_off: bool) {
        self.store.clear_fault();
        if power_off || self.store.is_off() {
            self.store.reboot();
        }
        self.faulted = false;
        self.reopened = None;
        self.source = Source::open(SourceConfig::default(), self.now, &mut self.store)
            .unwrap_or_else(|e| panic!("a source always opens: {e}"));
        self.sum.restarts += 1;
        self.asked.clear();
        self.scanned = None;
    }

    fn deliver(&mut self, m: Message) {
        let tree = self.store.view();
        let request = matches!(m, Message::Request { .. });
        let pending = self.pending_base.take();
        if let Message::Want { id, path, base } = &m {
            let asked = self.asked_for(path, base.as_ref(), pending);
            self.asked.insert(*id, asked);
        }
        let abandon = matches!(m, Message::Abandon { .. });
        if let Message::Committed { generation, .. } = m {
            self.claimed = Some(generation);
        }
        let r = self
            .source
            .handle_message(self.now, self.wall, m, &mut self.store);

        match r {
            Ok(()) => {
                if request {
                    self.scanned = Some(tree.clone());
                    self.edited = false;
                }
                if request || abandon {
                    self.asked.clear();
                }
            }
            Err(e) => {
                self.sum.refused += 1;
                assert!(!e.to_string().is_empty());
                if let SessionError::Store(se) = &e {
                    assert!(
                        self.faulted || self.store.is_off(),
                        "a storage error from messages alone: {se}"
                    );
                }
                // The session ended: the driver closes the connection.
                assert!(self.source.poll_transmit(&mut self.store).is_none());
                self.asked.clear();
            }
        }
        self.drain();
        assert!(self.asked.is_empty(), "a wanted file without its end");
        assert_eq!(self.store.view(), tree, "a source changed its tree");
    }

    fn asked_for(&self, path: &RelPath, base: Option<&Base>, old: Option<Vec<u8>>) -> Asked {
        let file = self
            .scanned
            .as_ref()
            .and_then(|t| match t.get(path.as_str()) {
                Some(View::File(d, ..)) => Some(d.clone()),
                _ => None,
            });
        Asked {
            size: file.as_ref().map(|d| d.len() as u64),
            rebuild: file.filter(|_| !self.edited).map(|f| (f, old)),
            has_base: base.is_some(),
            sent: 0,
            out: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut n = 0;
        while let Some(m) = self.source.poll_transmit(&mut self.store) {
            n += 1;
            assert!(n < MAX_DRAIN, "a source that never runs dry");
            assert_sendable(&m);
            match m {
                Message::ManifestEnd { digest, .. } => self.last_end = Some(digest),
                Message::ManifestStart { .. }
                | Message::Entries { .. }
                | Message::SyncNow
                | Message::Changed => {}
                Message::Data { id, ops } => {
                    if ops.iter().any(|op| matches!(op, Op::Copy { .. })) {
                        self.sum.deltas += 1;
                    }
                    let a = self
                        .asked
                        .get_mut(&id)
                        .unwrap_or_else(|| panic!("data for id {id}, never asked for"));
                    for op in &ops {
                        match op {
                            Op::Copy { offset, len } => {
                                assert!(a.has_base, "a copy op without a base");
                                a.sent = a.sent.saturating_add(*len);
                                if let Some((_, Some(base))) = &a.rebuild {
                                    let end = offset.checked_add(*len);
                                    let r = end
                                        .filter(|e| *e <= base.len() as u64)
                                        .map(|e| &base[*offset as usize..e as usize]);
                                    let r = r.unwrap_or_else(|| {
                                        panic!(
                                            "copy {offset}+{len} outside a base of {}",
                                            base.len()
                                        )
                                    });
                                    a.out.extend_from_slice(r);
                                }
                            }
                            Op::Literal(d) => {
                                a.sent = a.sent.saturating_add(d.len() as u64);
                                a.out.extend_from_slice(d);
                            }
                        }
                    }
                    if let Some(size) = a.size {
                        assert!(
                            a.sent <= size,
                            "{} bytes sent of a {size}-byte file",
                            a.sent
                        );
                    }
                    // Its buffers take the next messages' literals: the
                    // rebuilt files check them too.
                    self.source.recycle(Message::Data { id, ops });
                }
                Message::DataEnd { id, status } => {
                    let a = self
                        .asked
                        .remove(&id)
                        .unwrap_or_else(|| panic!("data end for id {id}, never asked for"));
                    if status == DataStatus::Complete {
                        if let Some(size) = a.size {
                            assert_eq!(a.sent, size, "a complete file of the wrong size");
                        }
                        if let Some((file, base)) = &a.rebuild
                            && (base.is_some() || !a.has_base)
                        {
                            assert!(a.out == *file, "the data does not rebuild the file");
                        }
                    }
                }
                other => panic!("a source sent {:?}", other.ty()),
            }
        }
        while let Some(e) = self.source.poll_event() {
            if let crate::SourceEvent::Confirmed { .. } = e {
                self.sum.confirmed += 1;
            }
        }
    }

    fn hostile_message(&mut self, u: &mut Unstructured<'_>) -> AResult<Message> {
        Ok(match u.int_in_range(0..=9)? {
            0 | 1 => Message::Request {
                digest: match u.int_in_range(0..=2)? {
                    0 => u.arbitrary()?,
                    1 => Manifest::default().digest(),
                    _ => self.last_end.unwrap_or_default(),
                },
            },
            2..=4 => {
                self.pending_base = None;
                let files = self.files();
                let path = arbitrary_path(u, &files)?;
                let id = u.int_in_range(0..=7)?;
                let base = self.base(u, &path)?;
                Message::Want { id, path, base }
            }
            5 | 6 => Message::Committed {
                generation: match u.int_in_range(0..=3)? {
                    0 => u.arbitrary()?,
                    1 => *u.choose(&[u64::MAX, u64::MAX - 1, 0])?,
                    _ => self.source.confirmed_generation().saturating_add(1),
                },
                digest: if u.ratio(3, 4)? {
                    self.last_end.unwrap_or_default()
                } else {
                    u.arbitrary()?
                },
            },
            7 => Message::Abandon {
                reason: if u.arbitrary()? {
                    AbandonReason::Refused
                } else {
                    AbandonReason::Storage
                },
            },
            8 => Message::SyncNow,
            // What only a source sends.
            _ => match u.int_in_range(0..=3)? {
                0 => Message::ManifestStart {
                    taken_at_ns: u.arbitrary()?,
                    full: u.arbitrary()?,
                },
                1 => Message::Entries {
                    changes: vec![Change::Gone(arbitrary_path(u, &[])?)],
                },
                2 => Message::Data {
                    id: u.arbitrary()?,
                    ops: vec![Op::Literal(b"x".to_vec())],
                },
                _ => Message::DataEnd {
                    id: u.arbitrary()?,
                    status: DataStatus::Complete,
                },
            },
        })
    }

    /// The replica's old copy: none, one made from the file's real bytes
    /// (edited; its signature real, its size and hash sometimes lies), or
    /// invented chunks.
    fn base(&mut self, u: &mut Unstructured<'_>, path: &RelPath) -> AResult<Option<Base>> {
        let file = self
            .scanned
            .as_ref()
            .and_then(|t| match t.get(path.as_str()) {
                Some(View::File(d, ..)) => Some(d.clone()),
                _ => None,
            });
        Ok(match u.int_in_range(0..=3)? {
            0 => None,
            1 | 2 => {
                let old = arbitrary_content(u, file.as_slice())?;
                let avg = match u.int_in_range(0..=2)? {
                    0 => ChunkParams::for_size(old.len() as u64).avg(),
                    1 => u.arbitrary()?,
                    _ => 4096,
                };
                let mut b = SignatureBuilder::new(ChunkParams::new(avg));
                b.update(&old);
                let chunks = b.finish();
                let honest = u.ratio(3, 4)?;
                let base = Base {
                    size: if honest {
                        old.len() as u64
                    } else {
                        u.arbitrary()?
                    },
                    hash: if honest {
                        *blake3::hash(&old).as_bytes()
                    } else {
                        u.arbitrary()?
                    },
                    avg,
                    chunks,
                };
                // The harness knows the old copy's bytes: the data must
                // rebuild the file from them.
                self.pending_base = Some(old);
                Some(base)
            }
            _ => {
                let n = u.int_in_range(0..=12)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(SigChunk {
                        len: u.int_in_range(0..=(1 << 24) - 1)?,
                        hash: u.int_in_range(0..=(1 << 40) - 1)?,
                    });
                }
                Some(Base {
                    size: u.arbitrary()?,
                    hash: u.arbitrary()?,
                    avg: u.arbitrary()?,
                    chunks,
                })
            }
        })
    }

    fn check(&mut self, before: u64) {
        assert_contained(&self.store);
        let after = self.source.confirmed_generation();
        // The store opened after a crash and after a power cut: the
        // generation it records moves only to what the live source
        // confirmed before or after a step that wrote.
        let key = (self.store.steps(), self.store.is_off());
        if self.reopened.is_some_and(|(k, _)| k == key) {
            return;
        }
        let mut got = [0; 2];
        for (i, power_off) in [false, true].into_iter().enumerate() {
            let mut c = self.store.clone();
            c.clear_fault();
            if power_off || c.is_off() {
                c.reboot();
            }
            let s = Source::open(SourceConfig::default(), self.now, &mut c)
                .unwrap_or_else(|e| panic!("a source always opens: {e}"));
            let g = s.confirmed_generation();
            let was = self.reopened.map(|(_, g)| g[i]);
            assert!(
                g == before || g == after || Some(g) == was || Some(g) == self.claimed,
                "reopened at generation {g}, not {before} or {after} (was {was:?})"
            );
            got[i] = g;
        }
        self.reopened = Some((key, got));
    }
}
