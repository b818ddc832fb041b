//! The replica session: pulls rounds from a source and applies each as an
//! atomic, verified generation.

use crate::chunk::ChunkParams;
use crate::delta::{MAX_SIG_CHUNKS, Op};
use crate::error::{Refusal, SessionError, StoreError};
use crate::exclude::Exclude;
use crate::generation::{
    self, Delta, JOp, Patch, Persisted, Role, STAGE_DIR, StageName, StateFile,
};
use crate::guard::{self, Window};
use crate::manifest::{Change, Hash, Kind, Manifest, Meta, View, sorted_find};
use crate::packed::Packed;
use crate::path::RelPath;
use crate::store::{IO_CHUNK, StatKind, Storage};
use crate::wire::{AbandonReason, Base, DataStatus, Message};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// Replica settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaConfig {
    /// Paths never replicated: not written, not deleted.
    pub exclude: Exclude,
    /// Time between rounds (the appliance's default: 60 s).
    pub interval: Duration,
    /// A round stalls when no message arrives for this long; it is rolled
    /// back.
    pub idle_timeout: Duration,
    /// The mass-deletion guard: the largest share of the tree's content
    /// bytes that one round, or the rounds of one
    /// [`ReplicaConfig::mass_delete_window`] together, may lose before a
    /// round needs [`Replica::confirm_deletions`] (default 0.5; in
    /// (0, 1]). Renames, moves and copies lose nothing; a deleted file
    /// loses its size, a file that shrinks the bytes it no longer holds
    /// (see [`Refusal::MassDeletion`]).
    pub mass_delete_fraction: f64,
    /// How far back the losses of committed rounds count against
    /// [`ReplicaConfig::mass_delete_fraction`] together with a round's own
    /// (default 24 h; zero: each round on its own). Measured in the wall
    /// time the driver gives ([`Replica::handle_wall_clock`]); kept in
    /// `.sync-delta/guard`, so it survives restarts.
    pub mass_delete_window: Duration,
    /// Largest file accepted.
    pub max_file_size: u64,
    /// Most entries a manifest may have (default 2,000,000): bounds the
    /// memory an authenticated but misbehaving source can make a replica
    /// use (a few hundred bytes per entry).
    pub max_entries: u64,
    /// Files at least this large are fetched as a delta against the old
    /// copy; smaller ones whole.
    pub delta_min_size: u64,
    /// Memory budget of a manifest, in bytes (default 512 MiB): each
    /// entry counts its path, its symlink target and
    /// [`crate::ENTRY_COST`]. Checked as a round's changes
    /// arrive and on the manifest they make, so long paths and link
    /// targets cannot make a source's round cost more than this
    /// ([`SessionError::ManifestTooLarge`]).
    pub max_manifest_bytes: u64,
    /// Keep the setuid, setgid and sticky bits the source sends (default
    /// off: files and directories are written without them; the manifest
    /// still records the source's mode).
    pub keep_special_bits: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            exclude: Exclude::none(),
            interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            mass_delete_fraction: 0.5,
            mass_delete_window: Duration::from_secs(24 * 3600),
            max_file_size: 1 << 40,
            max_entries: 2_000_000,
            delta_min_size: 64 * 1024,
            max_manifest_bytes: 512 << 20,
            keep_special_bits: false,
        }
    }
}

/// A generation: its number and when the source took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Increments with every round that changed something; 0 before the
    /// first.
    pub number: u64,
    /// When the source took the snapshot this replica last confirmed (a
    /// wall-clock value from the source's driver); `None` before the first
    /// round.
    pub taken_at: Option<SystemTime>,
}

impl Generation {
    /// How old the data is at `wall_now`: what a takeover now would lose
    /// at most. `None` before the first round.
    #[must_use]
    pub fn age(&self, wall_now: SystemTime) -> Option<Duration> {
        self.taken_at
            .map(|t| wall_now.duration_since(t).unwrap_or(Duration::ZERO))
    }
}

/// What [`Replica::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// The generation the tree is at.
    pub generation: Generation,
    /// A committed round was finished (rolled forward).
    pub rolled_forward: bool,
    /// Staged files of an uncommitted round that were removed.
    pub rolled_back: u64,
    /// This node was a source: its changes since the last generation its
    /// peer confirmed were moved into this quarantine folder (under
    /// `.sync-delta/quarantine/`), with how many paths.
    pub quarantined: Option<(String, u64)>,
    /// The committed round rolled forward could not be applied as
    /// recorded (the tree had diverged locally, or an older version left
    /// it half-applied): what blocked it was moved aside, and entries the
    /// tree does not hold left the manifest (the next round fetches them).
    /// The tree is at the new generation ([`OpenReport::rolled_forward`]).
    pub repaired: Option<Divergence>,
}

/// Local divergence found on the replica's tree and what was done: the
/// tree was not the generation its manifest records where a round (or a
/// committed round being rolled forward) writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Divergence {
    /// The quarantine folder (under `.sync-delta/quarantine/`) that what
    /// was in the way moved into; `None` when nothing moved.
    pub folder: Option<String>,
    /// Paths moved into it (a directory counts once, with its contents).
    pub quarantined: u64,
    /// Tracked entries the tree no longer held (deleted locally, or inside
    /// what was moved aside): left out of the generation, and fetched again
    /// by the next round, which starts at once.
    pub missing: u64,
}

impl Divergence {
    fn of(r: generation::Repair) -> Option<Self> {
        (r.moved > 0 || r.dropped > 0).then_some(Self {
            folder: r.folder,
            quarantined: r.moved,
            missing: r.dropped,
        })
    }
}

/// Status, for an admin page or the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The current generation.
    pub generation: Generation,
    /// Its age at the `wall_now` given.
    pub age: Option<Duration>,
    /// A round is in progress.
    pub round_in_progress: bool,
    /// The last round was refused, until confirmed.
    pub refused: Option<Refusal>,
    /// Content bytes the rounds committed within the guard's window lost,
    /// as of `wall_now` (see [`ReplicaConfig::mass_delete_window`]).
    pub lost_in_window: u64,
    /// Quarantine folders under `.sync-delta/quarantine/`.
    pub quarantine: Vec<String>,
    /// Entries in the manifest.
    pub entries: u64,
}

/// Events for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A round committed.
    Committed {
        /// The generation now current.
        generation: u64,
        /// Paths changed (upserted or removed).
        changed: u64,
        /// Files fetched (delta or whole).
        fetched: u64,
        /// Files made from local copies (renames, copies).
        copied: u64,
        /// Files and symlinks removed, renames not counted (directories
        /// not counted either).
        deleted: u64,
        /// Files renamed: a file the round removed whose content a path
        /// that was not a file before now holds (each removed copy counts
        /// once).
        renamed: u64,
    },
    /// A round was refused by the mass-deletion guard.
    Refused(Refusal),
    /// The round found the tree diverged locally where it writes; comes
    /// before the round's [`ReplicaEvent::Committed`].
    Diverged(Divergence),
    /// A file changed on the source while it was read, or did not verify;
    /// it keeps its old content this generation and is retried next round.
    FileSkipped(RelPath),
    /// A round stalled and was rolled back.
    TimedOut,
    /// The mass-deletion guard's window file (`.sync-delta/guard`) could
    /// not be read ([`StoreError::Corrupt`]: it did not decode): the window
    /// starts empty. Comes from [`Replica::open`] or a reload after an
    /// error.
    GuardStateReset(StoreError),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Rounds committed.
    pub rounds: u64,
    /// Rounds refused.
    pub refused: u64,
    /// Rounds that failed with an error and were rolled back.
    pub failed: u64,
    /// Files fetched.
    pub fetched: u64,
    /// Files copied locally.
    pub copied: u64,
    /// Files and symlinks deleted (renames not counted).
    pub deleted: u64,
    /// Files renamed.
    pub renamed: u64,
    /// Files skipped (retried next round).
    pub skipped: u64,
    /// Bytes written by copy ops (from the old copy).
    pub copy_bytes: u64,
    /// Bytes of literal data received.
    pub literal_bytes: u64,
    /// Entries ignored because the replica excludes them.
    pub excluded: u64,
    /// Messages refused as invalid.
    pub protocol_errors: u64,
    /// Rounds refused because the tree they describe is not a tree: an
    /// entry whose parent is not a directory, or a change that would
    /// orphan a directory's entries.
    pub shape_refused: u64,
    /// Local paths moved into quarantine because they were in a round's
    /// way (see [`ReplicaEvent::Diverged`]).
    pub quarantined: u64,
    /// Tracked entries found missing locally and fetched again.
    pub missing: u64,
    /// The guard's window file could not be read or did not decode and
    /// was started afresh (see [`ReplicaEvent::GuardStateReset`]).
    pub guard_state_resets: u64,
    /// Times the source said its tree changed (a round started at once,
    /// or right after the one in progress, when rounds run).
    pub nudged: u64,
    /// Bytes of file data written to disk: staged files (fetched whole or
    /// by a delta, copied locally), the records of files patched in place,
    /// and the in-place writes of those patches when their round commits.
    /// State files (journal, manifest log) are not counted. Compare with
    /// [`ReplicaStats::literal_bytes`] (what came over the wire).
    pub disk_bytes: u64,
    /// Files patched in place (see [`ReplicaStats::disk_bytes`]): their
    /// changed ranges were staged and written where they lie, instead of
    /// a whole new copy.
    pub in_place: u64,
}

/// A file patched in place may change at most this share of its new size
/// (1/`IN_PLACE_MAX_DIRTY_DIV`); past it, the whole new file is staged. A
/// patch writes its dirty bytes twice (the record, then in place), a whole
/// copy writes the new size once: half is where they cost the same.
const IN_PLACE_MAX_DIRTY_DIV: u64 = 2;

/// A dirty run this long (1/`SHIFT_RUN_DIV` of the new size, at least
/// `SHIFT_RUN_MIN`) is taken for a shift that runs to the end of the file
/// (see `make_room`).
const SHIFT_RUN_DIV: u64 = 16;
const SHIFT_RUN_MIN: u64 = 1 << 20;
/// Fetches a round has asked for and not yet received at most: the rest
/// are planned as these end.
const IN_FLIGHT: usize = 256;
/// Entries a whole listing grows by at least (it grows by an eighth).
const LISTING_STEP: usize = 1024;
/// Staged files made durable at a time before a commit record: a whole
/// tree's names are never made at once.
const SYNC_BATCH: usize = 4096;

/// A fetch being staged as an in-place patch: the dirty ranges' new bytes
/// go one after another into the record; unchanged ranges (copies from the
/// same offset of the old copy) are hashed where they lie and not written.
struct PatchState {
    /// `(offset, length)` of the dirty ranges so far, in order.
    ranges: Vec<(u64, u64)>,
    /// Bytes in the record.
    staged: u64,
    /// Most dirty bytes before the fetch turns into a whole staged copy.
    limit: u64,
}

struct Fetch {
    path: RelPath,
    size: u64,
    hash: Hash,
    base: Option<(RelPath, u64)>,
    stage: String,
    written: u64,
    hasher: Option<Box<blake3::Hasher>>,
    /// Staged as an in-place patch (`stage` is then the record).
    patch: Option<PatchState>,
}

/// A file or symlink staged whole for a round: `stage/r<round>-f<id>`
/// (`-l<id>` for a symlink), its name made when needed (a first round
/// stages every path: a name each would be held to the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Staged {
    id: u32,
    link: bool,
}

impl Staged {
    fn file(id: u32) -> Self {
        Self { id, link: false }
    }

    /// Its name in the stage, in round `seq`.
    fn name(self, seq: u64) -> String {
        self.stage_name(seq).to_string()
    }

    /// The same, as the journal's op holds it.
    fn stage_name(self, seq: u64) -> StageName {
        StageName::Made {
            seq,
            id: self.id,
            link: self.link,
        }
    }
}

/// The files and symlinks a round staged whole. A round with a whole
/// listing keeps them by position in it: a first round stages every file,
/// and a table keyed by path copies would take about as much room again
/// as the listing's paths. A round of changes keeps them by path.
#[derive(Debug)]
enum StagedSet {
    ByPath(HashMap<RelPath, Staged>),
    /// Entry for entry beside the round's listing (kept aligned as the
    /// listing gains or loses entries).
    Listed(Vec<Option<Staged>>),
}

impl StagedSet {
    fn by_path() -> Self {
        Self::ByPath(HashMap::new())
    }

    /// Where `p` sits in `listing`, for the listed form.
    fn position(listing: Option<&[(RelPath, Meta)]>, p: &str) -> Option<usize> {
        listing.and_then(|w| sorted_find(w, p).ok())
    }

    fn insert(&mut self, listing: Option<&[(RelPath, Meta)]>, p: &RelPath, st: Staged) {
        match self {
            Self::ByPath(m) => {
                m.insert(p.clone(), st);
            }
            Self::Listed(v) => {
                // Staged paths are the listing's own.
                if let Some(slot) = Self::position(listing, p.as_str()).and_then(|i| v.get_mut(i)) {
                    *slot = Some(st);
                }
            }
        }
    }

    fn get(&self, listing: Option<&[(RelPath, Meta)]>, p: &str) -> Option<Staged> {
        match self {
            Self::ByPath(m) => m.get(p).copied(),
            Self::Listed(v) => Self::position(listing, p).and_then(|i| v.get(i).copied().flatten()),
        }
    }

    /// Takes `p`'s entry out, with the path the op that installs it holds.
    fn take(
        &mut self,
        listing: Option<&[(RelPath, Meta)]>,
        p: &RelPath,
    ) -> Option<(RelPath, Staged)> {
        match self {
            Self::ByPath(m) => m.remove_entry(p),
            Self::Listed(v) => Self::position(listing, p.as_str())
                .and_then(|i| v.get_mut(i))
                .and_then(Option::take)
                .map(|st| (p.clone(), st)),
        }
    }

    /// The listing gained an entry at `i`.
    fn inserted_at(&mut self, i: usize) {
        if let Self::Listed(v) = self {
            v.insert(i.min(v.len()), None);
        }
    }

    /// The listing lost its entry at `i`.
    fn removed_at(&mut self, i: usize) {
        if let Self::Listed(v) = self
            && i < v.len()
        {
            v.remove(i);
        }
    }

    /// Every staged path with its entry.
    fn iter<'a>(
        &'a self,
        listing: Option<&'a [(RelPath, Meta)]>,
    ) -> Box<dyn Iterator<Item = (&'a str, Staged)> + 'a> {
        match self {
            Self::ByPath(m) => Box::new(m.iter().map(|(p, st)| (p.as_str(), *st))),
            Self::Listed(v) => Box::new(
                listing
                    .unwrap_or_default()
                    .iter()
                    .zip(v)
                    .filter_map(|((p, _), st)| st.map(|st| (p.as_str(), st))),
            ),
        }
    }
}

enum Phase {
    Requested,
    Manifest,
    Fetching,
}

struct Round {
    phase: Phase,
    taken_at_ns: i64,
    full: bool,
    changes: BTreeMap<RelPath, Option<Meta>>,
    dropped: bool,
    /// The next manifest of a full round (a whole listing). A round of
    /// changes reads the next manifest as the current one with `changes`
    /// over it ([`next_view`]), never a copy. In path order, one entry
    /// after another (a map's nodes would take about twice the room).
    whole: Option<Vec<(RelPath, Meta)>>,
    fetches: BTreeMap<u32, Fetch>,
    /// Files and symlinks staged whole.
    staged: StagedSet,
    /// Files verified and staged as in-place patches.
    patched: HashMap<RelPath, Patch>,
    fetched: u64,
    copied: u64,
    deadline: Instant,
    seq: u64,
    /// Memory the round's changes take, as counted against
    /// [`ReplicaConfig::max_manifest_bytes`].
    bytes: u64,
    /// What the guard saw: the record the window gets when the round
    /// commits (it lost content, or it used the operator's confirmation).
    guard: Option<guard::Record>,
    /// Files planned for fetching, and their total size.
    planned: u64,
    planned_bytes: u64,
    /// Of those, files whose fetch has ended.
    done: u64,
    /// Old files by content, for local copies of what this round needs.
    copies: HashMap<Hash, RelPath>,
    /// The next fetch's id.
    next_id: u32,
    /// Planning stopped after this path ([`Replica::plan_more`]).
    plan_after: Option<RelPath>,
    /// Every path of the round has been planned.
    planned_all: bool,
    /// Bytes written into the fetched files' staged copies so far.
    written: u64,
}

/// How far the round in progress has got ([`Replica::round_progress`]):
/// the files it fetches from the source and the bytes written into them.
/// Files made from a local copy (renames, copies) are not counted; they
/// take no transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundProgress {
    /// Files the round fetches; 0 until the source's list of changes has
    /// arrived and been planned.
    pub files_total: u64,
    /// Of those, files finished: written and verified, or skipped (kept
    /// at their old content and retried next round).
    pub files_done: u64,
    /// The size of the files it fetches, in bytes.
    pub bytes_total: u64,
    /// Bytes written into them so far: literal data received and blocks
    /// copied from the old content by a delta.
    pub bytes_done: u64,
}

/// The replica session.
///
/// # Driver contract
/// 1. [`Replica::open`] at start (and after a crash): it finishes or rolls
///    back any round in progress and, if this node was a source,
///    quarantines its unconfirmed changes.
/// 2. When the authenticated link is up, [`Replica::handle_connected`];
///    when it goes down, [`Replica::handle_disconnected`].
/// 3. Feed each sync message with [`Replica::handle_message`]. An error
///    ends the session: close the connection (the round is already rolled
///    back, the tree is at its last whole generation). Before a round's
///    commit record is written, the paths it changes are checked against
///    the tree: local divergence in its way is moved into quarantine and
///    reported ([`ReplicaEvent::Diverged`]), and the round completes.
/// 4. After every input, drain [`Replica::poll_transmit`] (send each
///    message on [`crate::frame::CHANNEL_SYNC`]) and
///    [`Replica::poll_event`], then arm a timer for
///    [`Replica::poll_timeout`] and call [`Replica::handle_timeout`] when
///    it fires (early calls are harmless).
/// 5. At takeover, [`Replica::settle`] finishes or rolls back the round in
///    progress and reports the generation the new Master starts from.
pub struct Replica {
    config: ReplicaConfig,
    /// The current generation as persisted. Its manifest is a map only
    /// while a round that changes it runs; between rounds it is
    /// [`Replica::packed`] and `p.manifest` is empty.
    p: Persisted,
    /// The current generation's manifest packed (about half a map's room),
    /// between rounds: `None` while a round holds it as a map in
    /// `p.manifest` ([`Replica::unpack`], [`Replica::rest`]).
    packed: Option<Packed>,
    digest: Hash,
    confirmed_at_ns: Option<i64>,
    connected: bool,
    next_round: Instant,
    round: Option<Round>,
    round_seq: u64,
    confirm: bool,
    refused: Option<Refusal>,
    /// The losses of the rounds committed within the guard's window.
    window: Window,
    /// The wall clock the driver gave last, with the instant it was given.
    wall: Option<(Instant, SystemTime)>,
    quarantine: Vec<String>,
    delta_failed: HashSet<RelPath>,
    out: VecDeque<Message>,
    events: VecDeque<ReplicaEvent>,
    stats: ReplicaStats,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("generation", &self.p.generation)
            .field("entries", &self.entries())
            .field("round", &self.round.is_some())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens the replica tree behind `store`: rolls an interrupted round
    /// forward (committed) or back (not committed), and, when this node's
    /// tree was last a source, moves every change since the generation its
    /// peer confirmed into a quarantine folder.
    ///
    /// The tree ends at the previous generation or the committed one
    /// ([`OpenReport::rolled_forward`]). A committed round whose ops the
    /// tree blocks (it diverged locally, or an older version left it
    /// half-applied) is still rolled forward: what is in the way moves into
    /// a quarantine folder, missing parents are made, and
    /// [`OpenReport::repaired`] says so. A shape the tree has cannot make
    /// opening fail again and again.
    ///
    /// # Errors
    /// A [`StoreError`] from storage, [`StoreError::Corrupt`] for an
    /// unreadable state file.
    pub fn open<S: Storage + ?Sized>(
        config: ReplicaConfig,
        now: Instant,
        store: &mut S,
    ) -> Result<(Self, OpenReport), StoreError> {
        let rec = generation::recover_as(store, true)?;
        let mut p = rec.persisted;
        let mut packed = rec.packed;
        let mut quarantined = None;
        if rec.state.role == Role::Source {
            let confirmed = packed
                .take()
                .map_or_else(|| std::mem::take(&mut p.manifest), generation::unpack);
            let (kept, name, n) =
                generation::quarantine(store, &confirmed, &config.exclude, p.generation)?;
            drop(confirmed);
            p.manifest = kept;
            generation::write_base(store, &mut p)?;
            quarantined = name.map(|n2| (n2, n));
        }
        let packed = packed.unwrap_or_else(|| generation::pack(std::mem::take(&mut p.manifest)));
        let confirmed_at_ns =
            generation::confirmed_taken_at_ns(&rec.state, p.generation, p.taken_at_ns);
        generation::write_state(
            store,
            StateFile {
                role: Role::Replica,
                generation: p.generation,
                taken_at_ns: confirmed_at_ns.unwrap_or(0),
            },
        )?;
        let quarantine = generation::quarantine_list(store)?;
        let digest = packed.digest();
        let (window, window_err) = Window::load(store, p.generation);
        let mut r = Self {
            config,
            p,
            packed: Some(packed),
            digest,
            confirmed_at_ns,
            connected: false,
            next_round: now,
            round: None,
            round_seq: 0,
            confirm: false,
            refused: None,
            window,
            wall: None,
            quarantine,
            delta_failed: HashSet::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: ReplicaStats::default(),
            buf: Vec::new(),
        };
        if let Some(e) = window_err {
            r.guard_state_reset(e);
        }
        let report = OpenReport {
            generation: r.generation(),
            rolled_forward: rec.rolled_forward,
            rolled_back: rec.rolled_back,
            quarantined,
            repaired: Divergence::of(rec.repair),
        };
        Ok((r, report))
    }

    /// The current generation.
    #[must_use]
    pub fn generation(&self) -> Generation {
        Generation {
            number: self.p.generation,
            taken_at: self.confirmed_at_ns.map(generation::ns_to_time),
        }
    }

    /// The manifest of the current generation, as a map (a copy: between
    /// rounds the replica holds it packed).
    #[must_use]
    pub fn manifest(&self) -> Manifest {
        match &self.packed {
            Some(pk) => pk.to_manifest(),
            None => self.p.manifest.clone(),
        }
    }

    /// The memory the current generation's manifest holds, in bytes, and
    /// its entries. Between rounds it is packed in path order (about 61
    /// bytes an entry on the bench's tree of 100,000 files); a round that
    /// changes it holds it as a map while it runs, counted then as
    /// [`Manifest::bytes`] counts it.
    #[must_use]
    pub fn manifest_memory(&self) -> (u64, u64) {
        match &self.packed {
            Some(pk) => (pk.heap_bytes() as u64, pk.len() as u64),
            None => (self.p.manifest.bytes(), self.p.manifest.len() as u64),
        }
    }

    /// Entries in the current generation's manifest.
    fn entries(&self) -> usize {
        self.packed
            .as_ref()
            .map_or(self.p.manifest.len(), Packed::len)
    }

    /// The manifest as a map in `p.manifest`, for a round that changes it.
    fn unpack(&mut self) {
        if let Some(pk) = self.packed.take() {
            self.p.manifest = generation::unpack(pk);
        }
    }

    /// The manifest packed again, between rounds.
    fn rest(&mut self) {
        if self.packed.is_none() {
            self.packed = Some(generation::pack(std::mem::take(&mut self.p.manifest)));
        }
    }

    /// Takes a recovered generation as the current one, packed.
    fn take_recovered(&mut self, mut p: Persisted, packed: Option<Packed>) {
        let pk = packed.unwrap_or_else(|| generation::pack(std::mem::take(&mut p.manifest)));
        self.digest = pk.digest();
        self.p = p;
        self.packed = Some(pk);
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// How far the round in progress has got, `None` between rounds: for a
    /// progress display. It changes as the driver feeds the source's
    /// messages; read it after any input.
    #[must_use]
    pub fn round_progress(&self) -> Option<RoundProgress> {
        self.round.as_ref().map(|r| RoundProgress {
            files_total: r.planned,
            files_done: r.done,
            bytes_total: r.planned_bytes,
            bytes_done: r.written,
        })
    }

    /// Status at wall-clock time `wall_now` (an input; never read here).
    #[must_use]
    pub fn status(&self, wall_now: SystemTime) -> ReplicaStatus {
        let generation = self.generation();
        ReplicaStatus {
            generation,
            age: generation.age(wall_now),
            round_in_progress: self.round.is_some(),
            refused: self.refused,
            lost_in_window: self
                .window
                .within(
                    crate::source::time_ns(wall_now),
                    self.config.mass_delete_window,
                )
                .0,
            quarantine: self.quarantine.clone(),
            entries: self.entries() as u64,
        }
    }

    /// The link to the source is up and authenticated.
    pub fn handle_connected(&mut self, now: Instant) {
        self.connected = true;
        self.handle_timeout(now);
    }

    /// The link went down: any round in progress is rolled back.
    ///
    /// # Errors
    /// A [`StoreError`] while removing staged files (they are removed at
    /// the next open otherwise).
    pub fn handle_disconnected<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        store: &mut S,
    ) -> Result<(), StoreError> {
        self.connected = false;
        if self.round.take().is_some() {
            self.next_round = self.next_round.max(now);
            generation::clear_stage(store)?;
        }
        Ok(())
    }

    /// Asks for a round as soon as possible ("sync now", before a planned
    /// swap so that it loses nothing).
    pub fn sync_now(&mut self, now: Instant) {
        self.next_round = now;
        self.handle_timeout(now);
    }

    /// When the next round is due (`None` while one is in progress or
    /// the link is down).
    #[must_use]
    pub fn next_round_at(&self) -> Option<Instant> {
        (self.connected && self.round.is_none()).then_some(self.next_round)
    }

    /// Lets the next round past the mass-deletion guard once: the next
    /// round whose manifest arrives (one that needs no confirmation uses
    /// it up too, so a confirmation never waits for a later mass
    /// deletion). A round that passes with it clears the guard's window:
    /// what was lost until then is confirmed.
    pub fn confirm_deletions(&mut self) {
        self.confirm = true;
    }

    /// The wall clock at `now` (an input; never read here): the guard's
    /// window is measured in it. Give it before rounds (with every input is
    /// fine); without it the window does not slide, and losses add up until
    /// the operator confirms.
    pub fn handle_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        self.wall = Some((now, wall));
    }

    /// The wall time at `now`, ns since the Unix epoch: from the driver's
    /// clock, else the newest time the window holds (time stands still).
    fn wall_ns(&self, now: Instant) -> i64 {
        match self.wall {
            Some((at, wall)) => {
                let t = if now >= at {
                    wall.checked_add(now - at)
                } else {
                    wall.checked_sub(at - now)
                };
                crate::source::time_ns(t.unwrap_or(wall))
            }
            None => self.window.newest_ns().unwrap_or(0),
        }
    }

    fn guard_state_reset(&mut self, e: StoreError) {
        self.stats.guard_state_resets += 1;
        self.events.push_back(ReplicaEvent::GuardStateReset(e));
    }

    /// The guard's window as the tree at `self.p.generation` has it.
    fn reload_window<S: Storage + ?Sized>(&mut self, store: &mut S) {
        let (w, err) = Window::load(store, self.p.generation);
        self.window = w;
        if let Some(e) = err {
            self.guard_state_reset(e);
        }
    }

    /// When [`Replica::handle_timeout`] is next needed: the next round, or
    /// the idle deadline of the round in progress.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.round {
            Some(r) => Some(r.deadline),
            None if self.connected => Some(self.next_round),
            None => None,
        }
    }

    /// Starts a due round; rolls back a stalled one (its staged files are
    /// removed at the next round or open).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.round.is_none() {
            // A round that ended early (link down, stalled) left the map.
            self.rest();
        }
        if let Some(r) = &self.round {
            if now >= r.deadline {
                self.round = None;
                self.stats.failed += 1;
                self.events.push_back(ReplicaEvent::TimedOut);
                self.next_round = now + self.config.interval;
            }
            return;
        }
        if self.connected && now >= self.next_round {
            self.round_seq += 1;
            self.round = Some(Round {
                phase: Phase::Requested,
                taken_at_ns: 0,
                full: false,
                changes: BTreeMap::new(),
                dropped: false,
                whole: None,
                fetches: BTreeMap::new(),
                staged: StagedSet::by_path(),
                patched: HashMap::new(),
                fetched: 0,
                copied: 0,
                deadline: now + self.config.idle_timeout,
                seq: self.round_seq,
                bytes: 0,
                guard: None,
                planned: 0,
                planned_bytes: 0,
                done: 0,
                copies: HashMap::new(),
                next_id: 0,
                plan_after: None,
                planned_all: false,
                written: 0,
            });
            self.out.push_back(Message::Request {
                digest: self.digest,
            });
        }
    }

    /// The next message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop_front()
    }

    /// Finishes or rolls back any round in progress (takeover): a round
    /// that did not commit is rolled back, a committed one was already
    /// applied (or is replayed here from its journal). Returns the
    /// generation the tree is at, whose age is the data a takeover loses.
    ///
    /// # Errors
    /// A [`StoreError`].
    pub fn settle<S: Storage + ?Sized>(&mut self, store: &mut S) -> Result<Generation, StoreError> {
        self.round = None;
        self.connected = false;
        let rec = generation::recover_as(store, true)?;
        if rec.rolled_forward || rec.persisted.generation != self.p.generation {
            self.take_recovered(rec.persisted, rec.packed);
            self.confirmed_at_ns = Some(self.p.taken_at_ns);
        } else {
            self.p.log_len = rec.persisted.log_len;
            self.rest();
        }
        self.reload_window(store);
        Ok(self.generation())
    }

    /// The permission bits this replica writes.
    fn mode_mask(&self) -> u32 {
        if self.config.keep_special_bits {
            0o7777
        } else {
            0o777
        }
    }

    fn reload<S: Storage + ?Sized>(&mut self, store: &mut S) {
        if let Ok(rec) = generation::recover_as(store, true) {
            // Always take what is on disk: an error may have struck after
            // the log was appended to.
            if rec.rolled_forward || rec.persisted.generation != self.p.generation {
                self.confirmed_at_ns = Some(rec.persisted.taken_at_ns);
            }
            self.take_recovered(rec.persisted, rec.packed);
            self.reload_window(store);
        }
        self.rest();
    }

    /// Handles one sync message from the source, writing through `store`.
    ///
    /// # Errors
    /// A [`SessionError`]: the round is rolled back and the session must
    /// end (close the connection).
    pub fn handle_message<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        msg: Message,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let had_round = self.round.is_some();
        let r = self.handle_inner(now, msg, store);
        if r.is_err() {
            self.stats.failed += 1;
            if !matches!(r, Err(SessionError::Store(_))) {
                self.stats.protocol_errors += 1;
            }
            if matches!(
                r,
                Err(SessionError::OrphansEntries
                    | SessionError::Path(crate::PathError::ParentNotDir))
            ) {
                self.stats.shape_refused += 1;
            }
            self.round = None;
            if had_round {
                // Finish a round that committed, or roll back one that did
                // not; best effort: open does it otherwise.
                self.reload(store);
            }
            self.next_round = now + self.config.interval;
        }
        r
    }

    fn handle_inner<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        msg: Message,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let ty = msg.ty();
        let unexpected = SessionError::Unexpected { ty };
        if let Message::SyncNow | Message::Changed = msg {
            if matches!(msg, Message::Changed) {
                self.stats.nudged += 1;
                // A refused round waits for a confirmation or the next
                // interval: a source that keeps changing would otherwise
                // meet the same refusal once per round trip (it tells of
                // its pending changes when a round is abandoned).
                if self.refused.is_some() {
                    return Ok(());
                }
            }
            if self.round.is_none() {
                self.sync_now(now);
            } else {
                self.next_round = now;
            }
            return Ok(());
        }
        let Some(round) = self.round.as_mut() else {
            return Err(unexpected);
        };
        round.deadline = now + self.config.idle_timeout;
        match (msg, &round.phase) {
            (Message::ManifestStart { taken_at_ns, full }, Phase::Requested) => {
                round.taken_at_ns = taken_at_ns;
                round.full = full;
                // A whole listing, or changes over nothing (a first
                // round): gathered one entry after another.
                let empty = self
                    .packed
                    .as_ref()
                    .map_or(self.p.manifest.is_empty(), Packed::is_empty);
                if full || empty {
                    round.whole = Some(Vec::new());
                }
                round.phase = Phase::Manifest;
                // leftovers of a stalled round
                generation::clear_stage(store)?;
                Ok(())
            }
            (Message::Entries { changes }, Phase::Manifest) => {
                for c in changes {
                    let (p, m) = match c {
                        Change::Upsert(p, m) => (p, Some(m)),
                        Change::Gone(p) => (p, None),
                    };
                    if self.config.exclude.is_excluded(p.as_str()) {
                        self.stats.excluded += 1;
                        round.dropped = true;
                        continue;
                    }
                    if let Some(Meta {
                        kind: Kind::File { size, .. },
                        ..
                    }) = &m
                        && *size > self.config.max_file_size
                    {
                        return Err(SessionError::FileTooLarge {
                            size: *size,
                            max: self.config.max_file_size,
                        });
                    }
                    round.bytes = round
                        .bytes
                        .saturating_add(crate::manifest::entry_bytes(&p, m.as_ref()));
                    if round.bytes > self.config.max_manifest_bytes {
                        return Err(SessionError::ManifestTooLarge {
                            bytes: round.bytes,
                            max: self.config.max_manifest_bytes,
                        });
                    }
                    let entries = match &mut round.whole {
                        Some(w) => {
                            // Over nothing, a path gone is nothing.
                            if let Some(m) = m {
                                if w.len() == w.capacity() {
                                    // An eighth more at a time, not twice
                                    // as much: a whole tree's listing would
                                    // hold up to half of it again unused.
                                    w.reserve_exact((w.len() / 8).max(LISTING_STEP));
                                }
                                w.push((p, m));
                            }
                            w.len()
                        }
                        None => {
                            round.changes.insert(p, m);
                            round.changes.len()
                        }
                    };
                    if entries as u64 > self.config.max_entries {
                        return Err(SessionError::TooManyEntries {
                            max: self.config.max_entries,
                        });
                    }
                }
                Ok(())
            }
            (Message::ManifestEnd { entries, digest }, Phase::Manifest) => {
                self.manifest_end(now, entries, digest, store)
            }
            (Message::Data { id, ops }, Phase::Fetching) => self.data(id, &ops, store),
            (Message::DataEnd { id, status }, Phase::Fetching) => {
                self.data_end(now, id, status, store)
            }
            _ => Err(unexpected),
        }
    }

    fn manifest_end<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        entries: u64,
        digest: Hash,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let Some(mut round) = self.round.take() else {
            return Ok(());
        };
        // A confirmation is for the round whose manifest comes next.
        let confirmed = std::mem::take(&mut self.confirm);
        // The new manifest: a whole listing, or the changes over the old.
        // Changes over nothing (a first round) were gathered as a whole
        // listing; none at all are a round that changed nothing.
        if !round.full && round.whole.as_ref().is_some_and(Vec::is_empty) {
            round.whole = None;
        }
        if let Some(w) = &mut round.whole {
            round.full = true;
            // A source sends its listing in path order; any other order
            // is put in it, the last entry for a path kept.
            if !w.is_sorted_by(|a, b| a.0 < b.0) {
                w.reverse();
                w.sort_by(|a, b| a.0.cmp(&b.0));
                w.dedup_by(|b, a| a.0 == b.0);
            }
            // Room never used (up to an eighth of it) is not held to the
            // commit.
            w.shrink_to_fit();
            round.staged = StagedSet::Listed(vec![None; w.len()]);
        } else if round.changes.is_empty() {
            // Nothing changed: confirm the generation.
            if round.dropped || (digest == self.digest && entries == self.entries() as u64) {
                round.phase = Phase::Fetching;
                self.round = Some(round);
                return self.confirm_unchanged(now, store);
            }
            self.round = Some(round);
            return Err(SessionError::DigestMismatch);
        }
        // A round that changes something reads the manifest as a map.
        self.unpack();
        let old = &self.p.manifest;
        let new = next_view(old, &round.whole, &round.changes);
        let new_digest = new.digest();
        if !round.dropped && (new_digest != digest || new.len() as u64 != entries) {
            self.round = Some(round);
            return Err(SessionError::DigestMismatch);
        }
        if new.len() as u64 > self.config.max_entries {
            return Err(SessionError::TooManyEntries {
                max: self.config.max_entries,
            });
        }
        let bytes = new.bytes();
        if bytes > self.config.max_manifest_bytes {
            return Err(SessionError::ManifestTooLarge {
                bytes,
                max: self.config.max_manifest_bytes,
            });
        }
        // Shape: every entry under a directory; checked for what changed.
        let losing = if round.full {
            for (p, _) in new.iter() {
                new.check_parent(p)?;
            }
            guard::content_loss(old, new, old.entries.keys())
        } else {
            for (p, m) in &round.changes {
                match m {
                    Some(m) => {
                        new.check_parent(p)?;
                        // A directory that became a file or a symlink
                        // must have lost its entries too.
                        if m.kind != Kind::Dir && has_entries_under(new, p) {
                            return Err(SessionError::OrphansEntries);
                        }
                    }
                    None if old.entries.contains_key(p) && has_entries_under(new, p) => {
                        return Err(SessionError::OrphansEntries);
                    }
                    None => {}
                }
            }
            guard::content_loss(old, new, round.changes.keys())
        };
        // Mass-deletion guard: the content this round loses, with what the
        // rounds within the window lost, against a share of the most the
        // tree held meanwhile.
        let entries = old.len() as u64;
        let wall_ns = self.wall_ns(now);
        let mut note = None;
        let refusal = if entries > 0 && new.is_empty() {
            Some(Refusal::EmptySource { total: entries })
        } else if losing > 0 {
            let tree = guard::content_bytes(old);
            let (lost, before) = self.window.within(wall_ns, self.config.mass_delete_window);
            let total = tree.max(before);
            let fraction = self.config.mass_delete_fraction.clamp(0.0, 1.0);
            #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
            let limit = (fraction * total as f64).floor() as u64;
            note = Some(guard::Record {
                generation: 0,
                at_ns: wall_ns,
                lost: losing,
                tree,
                barrier: false,
            });
            (losing.saturating_add(lost) > limit).then_some(Refusal::MassDeletion {
                losing,
                lost,
                total,
                limit,
            })
        } else {
            None
        };
        if let Some(reason) = refusal {
            if confirmed {
                let n = note.get_or_insert(guard::Record {
                    generation: 0,
                    at_ns: wall_ns,
                    lost: losing,
                    tree: guard::content_bytes(old),
                    barrier: true,
                });
                n.barrier = true;
            } else {
                self.refused = Some(reason);
                self.stats.refused += 1;
                self.events.push_back(ReplicaEvent::Refused(reason));
                self.out.push_back(Message::Abandon {
                    reason: AbandonReason::Refused,
                });
                self.next_round = now + self.config.interval;
                self.rest();
                return Ok(());
            }
        }
        self.refused = None;
        round.guard = note;
        // Plan the files. Local copies: only of the content this round
        // needs, so the index is as small as the change, not as the tree.
        round.copies = if old.is_empty() {
            HashMap::new()
        } else {
            let needed: HashSet<Hash> = new
                .iter()
                .filter_map(|(p, m)| match &m.kind {
                    Kind::File { hash, size }
                        if *size > 0 && old.entries.get(p).is_none_or(|o| o.kind != m.kind) =>
                    {
                        Some(*hash)
                    }
                    _ => None,
                })
                .collect();
            old.entries
                .iter()
                .filter_map(|(p, m)| {
                    m.file_hash()
                        .filter(|h| needed.contains(*h))
                        .map(|h| (*h, p.clone()))
                })
                .collect()
        };
        // What the round fetches, counted now for its progress (a local
        // copy that fails is fetched, and counted then).
        for (p, m) in new.iter() {
            if let Kind::File { size, hash } = &m.kind
                && old.entries.get(p).is_none_or(|o| o.kind != m.kind)
                && !(*size == 0 && *hash == *blake3::hash(b"").as_bytes())
                && !round.copies.contains_key(hash)
            {
                round.planned += 1;
                round.planned_bytes += *size;
            }
        }
        round.phase = Phase::Fetching;
        self.round = Some(round);
        self.plan_more(store)?;
        self.maybe_commit(now, store)
    }

    /// Plans the round's next files, in path order from where planning
    /// stopped: staged symlinks, empty files and local copies at once, and
    /// fetches until [`IN_FLIGHT`] are asked for (a first round of a large
    /// tree would otherwise hold a request and a fetch per file at once).
    /// The rest are planned as fetches end.
    fn plan_more<S: Storage + ?Sized>(&mut self, store: &mut S) -> Result<(), SessionError> {
        let mask = self.mode_mask();
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        if round.planned_all {
            return Ok(());
        }
        let old = &self.p.manifest;
        let new = next_view(old, &round.whole, &round.changes);
        let from = match &round.plan_after {
            Some(p) => std::ops::Bound::Excluded(p.as_str()),
            None => std::ops::Bound::Unbounded,
        };
        let mut last: Option<&RelPath> = None;
        let mut stopped = false;
        for (p, m) in new.range((from, std::ops::Bound::Unbounded)) {
            if round.fetches.len() >= IN_FLIGHT {
                stopped = true;
                break;
            }
            last = Some(p);
            let o = old.entries.get(p);
            let Kind::File { size, hash } = &m.kind else {
                if let Kind::Symlink { target } = &m.kind
                    && o.map(|o| &o.kind) != Some(&m.kind)
                {
                    let stage = Staged {
                        id: round.next_id,
                        link: true,
                    };
                    round.next_id += 1;
                    store.symlink(target, &format!("{STAGE_DIR}/{}", stage.name(round.seq)))?;
                    round.staged.insert(round.whole.as_deref(), p, stage);
                }
                continue;
            };
            if o.is_some_and(|o| o.kind == m.kind) {
                continue; // same content; metadata handled at commit
            }
            let stage = format!("r{}-f{}", round.seq, round.next_id);
            let id = round.next_id;
            round.next_id += 1;
            let stage_path = format!("{STAGE_DIR}/{stage}");
            if *size == 0 && *hash == *blake3::hash(b"").as_bytes() {
                store.create(&stage_path)?;
                store.set_meta(&stage_path, m.mode & mask, m.mtime_ns)?;
                round
                    .staged
                    .insert(round.whole.as_deref(), p, Staged::file(id));
                continue;
            }
            let copy_from = round.copies.get(hash);
            if let Some(from) = copy_from
                && copy_local(
                    store,
                    from.as_str(),
                    &stage_path,
                    *size,
                    hash,
                    &mut self.buf,
                    &mut self.stats.disk_bytes,
                )?
            {
                store.set_meta(&stage_path, m.mode & mask, m.mtime_ns)?;
                round
                    .staged
                    .insert(round.whole.as_deref(), p, Staged::file(id));
                round.copied += 1;
                continue;
            }
            let base = match o {
                Some(Meta {
                    kind: Kind::File { size: bs, hash: bh },
                    ..
                }) if *bs >= self.config.delta_min_size && !self.delta_failed.remove(p) => {
                    signature_of(store, p.as_str(), *bs, bh, &mut self.buf)?
                }
                _ => None,
            };
            // In place when the old copy is where, and as, this replica
            // wrote it (size and mtime as its manifest records); a local
            // change takes the whole-file path. The result is verified
            // whole either way.
            let patch = match (&base, o) {
                (Some(b), Some(om)) if live_as_recorded(store, p.as_str(), b.size, om)? => {
                    Some(PatchState {
                        ranges: Vec::new(),
                        staged: 0,
                        limit: *size / IN_PLACE_MAX_DIRTY_DIV,
                    })
                }
                _ => None,
            };
            let stage = if patch.is_some() {
                format!("r{}-p{id}", round.seq)
            } else {
                stage
            };
            store.create(&format!("{STAGE_DIR}/{stage}"))?;
            if copy_from.is_some() {
                // Counted as a copy; fetched after all.
                round.planned += 1;
                round.planned_bytes += *size;
            }
            round.fetches.insert(
                id,
                Fetch {
                    path: p.clone(),
                    size: *size,
                    hash: *hash,
                    base: base.as_ref().map(|b| (p.clone(), b.size)),
                    stage,
                    written: 0,
                    hasher: None,
                    patch,
                },
            );
            self.out.push_back(Message::Want {
                id,
                path: p.clone(),
                base,
            });
        }
        if stopped {
            if let Some(p) = last {
                round.plan_after = Some(p.clone());
            }
        } else {
            round.planned_all = true;
            round.plan_after = None;
        }
        Ok(())
    }

    fn data<S: Storage + ?Sized>(
        &mut self,
        id: u32,
        ops: &[Op],
        store: &mut S,
    ) -> Result<(), SessionError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let f = round
            .fetches
            .get_mut(&id)
            .ok_or(SessionError::UnknownFile { id })?;
        let mut hasher = f
            .hasher
            .take()
            .unwrap_or_else(|| Box::new(blake3::Hasher::new()));
        for op in ops {
            match op {
                Op::Literal(d) => {
                    let len = d.len() as u64;
                    if f.written + len > f.size {
                        return Err(SessionError::BeyondSize { size: f.size });
                    }
                    make_room(store, f, len, &mut self.stats)?;
                    stage_write(store, f, d, &mut self.stats)?;
                    hasher.update(d);
                    f.written += len;
                    round.written += len;
                    self.stats.literal_bytes += len;
                }
                Op::Copy { offset, len } => {
                    let Some((base, base_len)) = &f.base else {
                        return Err(SessionError::CopyOutOfRange {
                            offset: *offset,
                            len: *len,
                            base_len: 0,
                        });
                    };
                    let end = offset.checked_add(*len).filter(|e| e <= base_len).ok_or(
                        SessionError::CopyOutOfRange {
                            offset: *offset,
                            len: *len,
                            base_len: *base_len,
                        },
                    )?;
                    if f.written + len > f.size {
                        return Err(SessionError::BeyondSize { size: f.size });
                    }
                    let base = base.clone();
                    // Read through a buffer only copies need (a first round
                    // has none).
                    if self.buf.len() < IO_CHUNK {
                        self.buf.resize(IO_CHUNK, 0);
                    }
                    // A copy from the same offset leaves a patched file's
                    // bytes where they lie: hashed, not written.
                    let unchanged = f.patch.is_some() && *offset == f.written;
                    if !unchanged {
                        make_room(store, f, *len, &mut self.stats)?;
                    }
                    let mut at = *offset;
                    while at < end {
                        let want = ((end - at) as usize).min(IO_CHUNK);
                        let n = store.read_at(base.as_str(), at, &mut self.buf[..want])?;
                        if n == 0 {
                            // The old copy is shorter than its manifest says.
                            return Err(SessionError::CopyOutOfRange {
                                offset: *offset,
                                len: *len,
                                base_len: at,
                            });
                        }
                        if !unchanged {
                            stage_write(store, f, &self.buf[..n], &mut self.stats)?;
                        }
                        hasher.update(&self.buf[..n]);
                        f.written += n as u64;
                        round.written += n as u64;
                        at += n as u64;
                    }
                    self.stats.copy_bytes += len;
                }
            }
        }
        f.hasher = Some(hasher);
        Ok(())
    }

    fn data_end<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        id: u32,
        status: DataStatus,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let f = round
            .fetches
            .remove(&id)
            .ok_or(SessionError::UnknownFile { id })?;
        round.done += 1;
        let stage_path = format!("{STAGE_DIR}/{}", f.stage);
        let hash = f.hasher.map_or_else(
            || *blake3::hash(b"").as_bytes(),
            |h| *h.finalize().as_bytes(),
        );
        let ok = status == DataStatus::Complete && f.written == f.size && hash == f.hash;
        if !ok && status == DataStatus::Complete && f.base.is_some() {
            // A delta that does not verify (a chunk-hash collision, or a
            // source that lies): next round fetches this file whole.
            self.delta_failed.insert(f.path.clone());
        }
        if ok && let Some(pt) = f.patch {
            // Mode and mtime come with the patch op (set after its writes).
            round.patched.insert(
                f.path.clone(),
                Patch {
                    stage: f.stage,
                    path: f.path,
                    len: f.size,
                    ranges: pt.ranges,
                    mode: 0,
                    mtime_ns: 0,
                },
            );
            round.fetched += 1;
        } else if ok {
            let m = next_view(&self.p.manifest, &round.whole, &round.changes)
                .get(f.path.as_str())
                .cloned();
            if let Some(m) = m {
                let mask = if self.config.keep_special_bits {
                    0o7777
                } else {
                    0o777
                };
                store.set_meta(&stage_path, m.mode & mask, m.mtime_ns)?;
            }
            debug_assert_eq!(f.stage, Staged::file(id).name(round.seq));
            round
                .staged
                .insert(round.whole.as_deref(), &f.path, Staged::file(id));
            round.fetched += 1;
        } else {
            store.remove_file(&stage_path)?;
            // Keep the old entry this generation; retried next round.
            match &mut round.whole {
                Some(w) => match (
                    self.p.manifest.entries.get(&f.path),
                    sorted_find(w, f.path.as_str()),
                ) {
                    (Some(o), Ok(i)) => w[i].1 = o.clone(),
                    (Some(o), Err(i)) => {
                        w.insert(i, (f.path.clone(), o.clone()));
                        round.staged.inserted_at(i);
                    }
                    (None, Ok(i)) => {
                        w.remove(i);
                        round.staged.removed_at(i);
                    }
                    (None, Err(_)) => {}
                },
                None => {
                    round.changes.remove(&f.path);
                }
            }
            self.stats.skipped += 1;
            self.events.push_back(ReplicaEvent::FileSkipped(f.path));
        }
        if round.fetches.len() <= IN_FLIGHT / 2 {
            self.plan_more(store)?;
        }
        self.maybe_commit(now, store)
    }

    fn confirm_unchanged<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let Some(round) = self.round.take() else {
            return Ok(());
        };
        generation::write_state(
            store,
            StateFile {
                role: Role::Replica,
                generation: self.p.generation,
                taken_at_ns: round.taken_at_ns,
            },
        )?;
        self.confirmed_at_ns = Some(round.taken_at_ns);
        self.refused = None;
        self.stats.rounds += 1;
        self.out.push_back(Message::Committed {
            generation: self.p.generation,
            digest: self.digest,
        });
        self.events.push_back(ReplicaEvent::Committed {
            generation: self.p.generation,
            changed: 0,
            fetched: 0,
            copied: 0,
            deleted: 0,
            renamed: 0,
        });
        self.next_round = now + self.config.interval;
        Ok(())
    }

    fn maybe_commit<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        store: &mut S,
    ) -> Result<(), SessionError> {
        if self
            .round
            .as_ref()
            .is_none_or(|r| !r.fetches.is_empty() || !r.planned_all)
        {
            return Ok(());
        }
        let Some(mut round) = self.round.take() else {
            return Ok(());
        };
        let old = &self.p.manifest;
        let new = next_view(old, &round.whole, &round.changes);
        // Only the paths the round names can differ: for a full listing
        // every path of the old manifest and the new (`None`: read from
        // them in path order as needed, never copied).
        let mut listed: Option<Vec<RelPath>> =
            (!round.full).then(|| round.changes.keys().cloned().collect());
        let changed = candidates(&listed, old, new)
            .filter(|p| differs_in(old, new, p))
            .count() as u64;
        let (deleted, renamed) = deleted_and_renamed(old, new, || candidates(&listed, old, new));
        let mut divergence = generation::Repair::default();
        if changed > 0 {
            let next =
                self.p
                    .generation
                    .checked_add(1)
                    .ok_or(SessionError::GenerationOutOfRange {
                        generation: self.p.generation,
                    })?;
            // Staged content durable before the commit record (many files
            // at once: a real store overlaps the flushes), a batch of names
            // at a time.
            let seq = round.seq;
            let mut names = round
                .staged
                .iter(round.whole.as_deref())
                .filter(|(p, _)| matches!(new.get(p).map(|m| &m.kind), Some(Kind::File { .. })))
                .map(|(_, st)| format!("{STAGE_DIR}/{}", st.name(seq)))
                .chain(
                    round
                        .patched
                        .values()
                        .map(|pt| format!("{STAGE_DIR}/{}", pt.stage)),
                )
                .peekable();
            let mut batch = Vec::with_capacity(SYNC_BATCH);
            while names.peek().is_some() {
                batch.extend(names.by_ref().take(SYNC_BATCH));
                store.sync_files(&batch)?;
                batch.clear();
            }
            drop(batch);
            drop(names);
            if !round.patched.is_empty() {
                // The records' names too: the commit record needs them.
                store.sync_dir(STAGE_DIR)?;
            }
            // Local divergence where the round writes, before the commit
            // record: what is in the way moves aside; what the old manifest
            // records and the tree lacks (`gone`, and all under it) is
            // made again when it is a directory, and otherwise left out of
            // this generation (the next round fetches it).
            let mut aside = generation::Aside::new(self.p.generation);
            let gone = generation::prepare(
                store,
                old,
                new,
                candidates(&listed, old, new).filter(|p| differs_in(old, new, p)),
                &mut aside,
            )?;
            divergence.folder = aside.name().map(str::to_owned);
            divergence.moved = aside.moved.len() as u64;
            if !gone.is_empty() {
                let mut extra: BTreeSet<RelPath> = candidates(&listed, old, new).cloned().collect();
                for g in &gone {
                    extra.extend(paths_at_or_under(View::Whole(old), g));
                    extra.extend(paths_at_or_under(new, g));
                }
                let lost: Vec<RelPath> = extra
                    .iter()
                    .filter(|p| {
                        new.get(p.as_str()).is_some_and(|m| {
                            m.kind != Kind::Dir
                                && round
                                    .staged
                                    .get(round.whole.as_deref(), p.as_str())
                                    .is_none()
                        })
                    })
                    .cloned()
                    .collect();
                for p in lost {
                    // A patch needs its old copy, which the tree lost.
                    round.patched.remove(&p);
                    match &mut round.whole {
                        Some(w) => {
                            if let Ok(i) = sorted_find(w, p.as_str()) {
                                w.remove(i);
                                round.staged.removed_at(i);
                            }
                        }
                        None => {
                            round.changes.insert(p, None);
                        }
                    }
                    divergence.dropped += 1;
                }
                listed = Some(extra.into_iter().collect());
            }
            let new = next_view(old, &round.whole, &round.changes);
            // The staged names and patches move into the ops.
            let ops = plan(
                old,
                new,
                Staging {
                    seq: round.seq,
                    staged: std::mem::replace(&mut round.staged, StagedSet::by_path()),
                    patched: std::mem::take(&mut round.patched),
                },
                || candidates(&listed, old, new),
                &gone,
                self.mode_mask(),
            );
            // Room for what differed, and what the tree lost besides: a
            // whole tree's changes never grow by doubling.
            let room = usize::try_from(changed.saturating_add(divergence.dropped)).unwrap_or(0);
            let mut changes = Vec::new();
            match (round.whole.take(), &listed) {
                // A full listing moves its entries into the record in the
                // listing's own room (a first round would otherwise hold
                // the listing and its copy at once), merged with the old
                // manifest in path order: what both hold alike is left
                // out, what only the old holds is gone (what neither
                // holds cannot differ).
                (Some(w), None) => {
                    let mut olds = old.entries.iter().peekable();
                    let mut gone = Vec::new();
                    changes = w
                        .into_iter()
                        .filter_map(|(k, n)| {
                            while let Some((o, _)) = olds.next_if(|(o, _)| **o < k) {
                                gone.push((o.clone(), None));
                            }
                            match olds.next_if(|(o, _)| **o == k) {
                                Some((_, o)) if o.same(&n) => None,
                                _ => Some((k, Some(n))),
                            }
                        })
                        .collect();
                    gone.extend(olds.map(|(o, _)| (o.clone(), None)));
                    if !gone.is_empty() {
                        changes.reserve_exact(gone.len());
                        changes.append(&mut gone);
                        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    }
                    changes.shrink_to_fit();
                }
                // The same with the paths looked at listed (the tree lost
                // some): both in path order.
                (Some(w), Some(candidates)) => {
                    changes.reserve_exact(room);
                    let mut listed = w.into_iter().peekable();
                    for p in candidates {
                        let n = listed.next_if(|(k, _)| k == p);
                        match (old.entries.get(p), n) {
                            (Some(o), Some((_, n))) if o.same(&n) => {}
                            (None, None) => {}
                            (_, Some((k, n))) => changes.push((k, Some(n))),
                            (Some(_), None) => changes.push((p.clone(), None)),
                        }
                    }
                    // Every listed path is a candidate.
                    debug_assert!(listed.next().is_none());
                }
                (None, _) => {
                    changes.reserve_exact(room);
                    let new = View::Over(old, &round.changes);
                    changes.extend(
                        candidates(&listed, old, new)
                            .filter(|p| differs_in(old, new, p))
                            .map(|p| (p.clone(), new.get(p.as_str()).cloned())),
                    );
                }
            }
            let rec = Delta {
                generation: next,
                taken_at_ns: round.taken_at_ns,
                ops,
                changes,
                ..Delta::default()
            };
            // The record says all the round changes: a full listing's
            // manifest, the changes received, the staged names and the
            // paths looked at go before the commit builds the new
            // generation from it (the first round of a large tree would
            // otherwise hold them all at once).
            drop(listed);
            round.changes = BTreeMap::new();
            let patched: Vec<u64> = rec
                .ops
                .iter()
                .filter_map(|op| match op {
                    JOp::Patch(pt) => Some(pt.staged_bytes()),
                    _ => None,
                })
                .collect();
            // The guard's window with this round, durable before the commit
            // record: a crash between the two leaves a record of a
            // generation the tree never reached, which reading drops.
            let window = match round.guard {
                Some(g) if !self.config.mass_delete_window.is_zero() => {
                    let w = self.window.with(
                        guard::Record {
                            generation: next,
                            ..g
                        },
                        self.config.mass_delete_window,
                    );
                    w.save(store)?;
                    Some(w)
                }
                _ => None,
            };
            // A local change racing the round is cleared from its way too.
            let raced = generation::commit(store, &mut self.p, rec)?;
            divergence.merge(raced);
            self.stats.in_place += patched.len() as u64;
            self.stats.disk_bytes += patched.iter().sum::<u64>();
            if let Some(mut w) = window {
                w.settle(self.p.generation);
                self.window = w;
            }
        }
        generation::write_state(
            store,
            StateFile {
                role: Role::Replica,
                generation: self.p.generation,
                taken_at_ns: round.taken_at_ns,
            },
        )?;
        // Packed again, its digest computed as it packs.
        self.rest();
        if let Some(pk) = &self.packed {
            self.digest = pk.digest();
        }
        self.confirmed_at_ns = Some(round.taken_at_ns);
        self.stats.rounds += 1;
        self.stats.fetched += round.fetched;
        self.stats.copied += round.copied;
        self.stats.deleted += deleted;
        self.stats.renamed += renamed;
        self.out.push_back(Message::Committed {
            generation: self.p.generation,
            digest: self.digest,
        });
        self.next_round = now + self.config.interval;
        if let Some(d) = Divergence::of(divergence) {
            self.stats.quarantined += d.quarantined;
            self.stats.missing += d.missing;
            if let Some(f) = &d.folder
                && !self.quarantine.contains(f)
            {
                self.quarantine.push(f.clone());
            }
            if d.missing > 0 {
                // This generation lacks what the tree lost: fetch it now.
                self.next_round = now;
            }
            self.events.push_back(ReplicaEvent::Diverged(d));
        }
        self.events.push_back(ReplicaEvent::Committed {
            generation: self.p.generation,
            changed,
            fetched: round.fetched,
            copied: round.copied,
            deleted,
            renamed,
        });
        Ok(())
    }
}

/// The paths a round looks at, in path order: those `listed`, or, for
/// `None`, every path of `old` and of `new` (a full listing's round).
fn candidates<'a>(
    listed: &'a Option<Vec<RelPath>>,
    old: &'a Manifest,
    new: View<'a>,
) -> Box<dyn Iterator<Item = &'a RelPath> + 'a> {
    match listed {
        Some(v) => Box::new(v.iter()),
        None => {
            let mut a = old.entries.keys().peekable();
            let mut b = new.iter().map(|e| e.0).peekable();
            Box::new(std::iter::from_fn(move || match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(x), Some(y)) if x > y => b.next(),
                (Some(_), Some(_)) => {
                    a.next();
                    b.next()
                }
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            }))
        }
    }
}

/// Whether `p` is not the same in `old` and `new`.
fn differs_in(old: &Manifest, new: View<'_>, p: &RelPath) -> bool {
    match (old.entries.get(p), new.get(p.as_str())) {
        (Some(o), Some(n)) => !o.same(n),
        (None, None) => false,
        _ => true,
    }
}

/// The next manifest of a round: its whole listing, or the current one
/// with the round's changes over it.
fn next_view<'a>(
    old: &'a Manifest,
    whole: &'a Option<Vec<(RelPath, Meta)>>,
    changes: &'a BTreeMap<RelPath, Option<Meta>>,
) -> View<'a> {
    match whole {
        Some(w) => View::Sorted(w),
        None => View::Over(old, changes),
    }
}

/// Whether `m` has entries under the directory path `p`.
fn has_entries_under(m: View<'_>, p: &RelPath) -> bool {
    let prefix = format!("{p}/");
    m.range((
        std::ops::Bound::Excluded(p.as_str()),
        std::ops::Bound::Unbounded,
    ))
    .take_while(|(k, _)| k.as_str() < prefix.as_str() || k.as_str().starts_with(&prefix))
    .any(|(k, _)| k.as_str().starts_with(&prefix))
}

/// The paths of `m` at or under `p`.
fn paths_at_or_under(m: View<'_>, p: &str) -> Vec<RelPath> {
    let prefix = format!("{p}/");
    m.range((std::ops::Bound::Included(p), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.as_str() <= prefix.as_str() || k.as_str().starts_with(&prefix))
        .filter(|(k, _)| k.as_str() == p || k.as_str().starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Counts, among `candidates` (the paths that may differ), the files and
/// symlinks `old` has and `new` does not (as the same type), and how many
/// of those removed files reappear by content at a path that was not a
/// file: `(deleted, renamed)`, renames not counted as deletions.
fn deleted_and_renamed<'a, I: Iterator<Item = &'a RelPath>>(
    old: &Manifest,
    new: View<'_>,
    candidates: impl Fn() -> I,
) -> (u64, u64) {
    let same_type = |a: &Kind, b: &Kind| std::mem::discriminant(a) == std::mem::discriminant(b);
    let mut gone: HashMap<&Hash, u64> = HashMap::new();
    let mut removed = 0u64;
    for p in candidates() {
        let Some(o) = old.entries.get(p) else {
            continue;
        };
        if o.kind == Kind::Dir {
            continue;
        }
        if new
            .get(p.as_str())
            .is_none_or(|n| !same_type(&n.kind, &o.kind))
        {
            removed += 1;
            if let Some(h) = o.file_hash() {
                *gone.entry(h).or_default() += 1;
            }
        }
    }
    let mut renamed = 0u64;
    for p in candidates() {
        let Some(h) = new.get(p.as_str()).and_then(Meta::file_hash) else {
            continue;
        };
        if old.entries.get(p).is_some_and(|o| o.file_hash().is_some()) {
            continue;
        }
        if let Some(n) = gone.get_mut(h).filter(|n| **n > 0) {
            *n -= 1;
            renamed += 1;
        }
    }
    (removed - renamed, renamed)
}

/// What a round staged, handed to [`plan`]: the round's number (the
/// staged names are made from it), its files and symlinks staged whole,
/// its files staged as patches.
struct Staging {
    seq: u64,
    staged: StagedSet,
    patched: HashMap<RelPath, Patch>,
}

/// What one candidate path needs, in the order the ops run: removing the
/// old entry first (a directory's removal is listed apart, deepest first),
/// then making the new one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    None,
    Delete,
    Mkdir,
    /// Installed from the stage, or patched in place.
    Install,
    SetMeta,
}

/// The journal ops that turn the tree of `old` into `new`, given the
/// staged files and symlinks (their names move into the ops).
///
/// `gone`: paths (with all under them) the old manifest records that the
/// tree does not hold (see [`generation::prepare`]); the ops start from the
/// tree as it is. `mask`: the permission bits written.
///
/// The candidates are looked at once to count the ops, then once per kind
/// of op, each pushed where it goes: the ops of a whole tree are made in
/// room for exactly them, never in per-kind lists copied together.
fn plan<'a, I: Iterator<Item = &'a RelPath>>(
    old: &Manifest,
    new: View<'_>,
    stage: Staging,
    candidates: impl Fn() -> I,
    gone: &BTreeSet<String>,
    mask: u32,
) -> Vec<JOp> {
    let Staging {
        seq,
        mut staged,
        mut patched,
    } = stage;
    // A listed round's staged entries sit beside its listing.
    let listing = new.listing();
    let old_at = |p: &RelPath| {
        if gone.is_empty()
            || !(gone.contains(p.as_str())
                || generation::ancestors(p.as_str()).any(|a| gone.contains(a)))
        {
            old.entries.get(p)
        } else {
            None
        }
    };
    let mut touched_dirs: BTreeSet<String> = BTreeSet::new();
    let touch_parent = |p: &RelPath, t: &mut BTreeSet<String>| {
        if let Some(parent) = p.parent() {
            t.insert(parent.to_owned());
        }
    };
    // Per candidate: what goes first (a removal), then what is made.
    let mut steps: Vec<(Step, Step)> = Vec::new();
    let mut rmdirs = Vec::new();
    let mut count = 0usize;
    for p in candidates() {
        let o = old_at(p);
        let n = new.get(p.as_str());
        let mut first = Step::None;
        if let Some(o) = o {
            let same_type = n.is_some_and(|n| {
                std::mem::discriminant(&n.kind) == std::mem::discriminant(&o.kind)
            });
            if !same_type {
                match o.kind {
                    Kind::Dir => rmdirs.push(p.clone()),
                    // A file replaced by a file or symlink is replaced by the
                    // rename.
                    _ if matches!(
                        n.map(|n| &n.kind),
                        Some(Kind::File { .. } | Kind::Symlink { .. })
                    ) => {}
                    _ => first = Step::Delete,
                }
                touch_parent(p, &mut touched_dirs);
            }
        }
        let mut then = Step::None;
        if let Some(n) = n
            && !o.is_some_and(|o| o.same(n))
        {
            touch_parent(p, &mut touched_dirs);
            then = match &n.kind {
                Kind::Dir => {
                    touched_dirs.insert(p.as_str().to_owned());
                    if o.is_some_and(|o| o.kind == Kind::Dir) {
                        Step::None
                    } else {
                        Step::Mkdir
                    }
                }
                Kind::File { .. } if patched.contains_key(p) && o.is_some() => Step::Install,
                Kind::File { .. } | Kind::Symlink { .. }
                    if staged.get(listing, p.as_str()).is_some() =>
                {
                    Step::Install
                }
                Kind::File { .. } => Step::SetMeta,
                Kind::Symlink { .. } => Step::None,
            };
        }
        count += usize::from(first != Step::None) + usize::from(then != Step::None);
        steps.push((first, then));
    }
    // Deepest directories first when removing and when restoring times.
    rmdirs.sort_by_key(|p| std::cmp::Reverse(p.depth()));
    let mut dir_metas: Vec<(usize, JOp)> = touched_dirs
        .iter()
        .filter_map(|d| RelPath::new(d).ok())
        .filter_map(|d| match new.get(d.as_str()) {
            Some(m) if m.kind == Kind::Dir => Some((
                d.depth(),
                JOp::SetMeta(d.clone(), m.mode & mask, m.mtime_ns),
            )),
            _ => None,
        })
        .collect();
    drop(touched_dirs);
    dir_metas.sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    let mut ops = Vec::with_capacity(count + rmdirs.len() + dir_metas.len());
    let each = |want: Step, then: bool| {
        candidates()
            .zip(&steps)
            .filter(move |(_, s)| if then { s.1 == want } else { s.0 == want })
            .map(|(p, _)| p)
    };
    ops.extend(each(Step::Delete, false).cloned().map(JOp::Delete));
    ops.extend(rmdirs.into_iter().map(JOp::RemoveDir));
    for p in each(Step::Mkdir, true) {
        if let Some(n) = new.get(p.as_str()) {
            ops.push(JOp::Mkdir(p.clone(), n.mode & mask));
        }
    }
    for p in each(Step::Install, true) {
        let Some(n) = new.get(p.as_str()) else {
            continue;
        };
        if let Some(pt) = patched.remove(p).filter(|_| old_at(p).is_some()) {
            ops.push(JOp::Patch(Box::new(Patch {
                mode: n.mode & mask,
                mtime_ns: n.mtime_ns,
                ..pt
            })));
        } else if let Some((path, stage)) = staged.take(listing, p) {
            ops.push(JOp::Install(stage.stage_name(seq), path));
        }
    }
    drop(staged);
    drop(patched);
    for p in each(Step::SetMeta, true) {
        if let Some(n) = new.get(p.as_str()) {
            ops.push(JOp::SetMeta(p.clone(), n.mode & mask, n.mtime_ns));
        }
    }
    ops.extend(dir_metas.into_iter().map(|(_, op)| op));
    ops
}

/// Whether the old copy at `path` is a regular file of the size and mtime
/// the manifest records for it (what this replica wrote): a patch may
/// then be staged against it.
fn live_as_recorded<S: Storage + ?Sized>(
    store: &mut S,
    path: &str,
    size: u64,
    old: &Meta,
) -> Result<bool, StoreError> {
    match store.stat(path) {
        Ok(st) => Ok(st.kind == StatKind::File && st.size == size && st.mtime_ns == old.mtime_ns),
        Err(e) if e.is_not_there() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the next `data` of a fetch at `f.written`: into its whole
/// staged copy, or as a dirty range into its patch record.
fn stage_write<S: Storage + ?Sized>(
    store: &mut S,
    f: &mut Fetch,
    data: &[u8],
    stats: &mut ReplicaStats,
) -> Result<(), StoreError> {
    let path = format!("{STAGE_DIR}/{}", f.stage);
    let len = data.len() as u64;
    match &mut f.patch {
        Some(pt) => {
            store.write_at(&path, pt.staged, data)?;
            pt.staged += len;
            match pt.ranges.last_mut() {
                Some(last) if last.0 + last.1 == f.written => last.1 += len,
                _ => pt.ranges.push((f.written, len)),
            }
        }
        None => store.write_at(&path, f.written, data)?,
    }
    stats.disk_bytes += len;
    Ok(())
}

/// Before `len` more dirty bytes of a fetch staged as a patch: past its
/// limit, the patch turns into a whole staged copy (what was hashed so far
/// copied from the old copy's unchanged ranges and the record's dirty
/// ones), and the fetch goes on as a whole file. So does it early on a
/// long dirty run (a shift: an insert or a cut moves everything after it)
/// that would pass the limit were the rest of the file dirty too: the
/// bytes staged before the switch are written twice, and a shift found
/// early costs little more than the whole copy.
fn make_room<S: Storage + ?Sized>(
    store: &mut S,
    f: &mut Fetch,
    len: u64,
    stats: &mut ReplicaStats,
) -> Result<(), SessionError> {
    let (written, size) = (f.written, f.size);
    let long_run = (size / SHIFT_RUN_DIV).max(SHIFT_RUN_MIN);
    let Some(pt) = f.patch.take_if(|pt| {
        let run = pt
            .ranges
            .last()
            .filter(|r| r.0 + r.1 == written)
            .map_or(0, |r| r.1)
            + len;
        let rest = size.saturating_sub(written + len);
        pt.staged + len > pt.limit || (run >= long_run && pt.staged + len + rest > pt.limit)
    }) else {
        return Ok(());
    };
    let Some((base, _)) = &f.base else {
        return Ok(());
    };
    let record = format!("{STAGE_DIR}/{}", f.stage);
    let name = f.stage.replacen("-p", "-f", 1);
    let whole = format!("{STAGE_DIR}/{name}");
    store.create(&whole)?;
    let mut pos = 0u64;
    let mut in_record = 0u64;
    for &(off, n) in &pt.ranges {
        copy_range(store, base.as_str(), pos, &whole, pos, off - pos)?;
        copy_range(store, &record, in_record, &whole, off, n)?;
        pos = off + n;
        in_record += n;
    }
    copy_range(store, base.as_str(), pos, &whole, pos, f.written - pos)?;
    stats.disk_bytes += f.written;
    store.remove_file(&record)?;
    f.stage = name;
    Ok(())
}

/// Copies `len` bytes from `from` at `from_off` to `to` at `to_off`
/// ([`Storage::copy_range`]: the kernel's copy on a real store).
fn copy_range<S: Storage + ?Sized>(
    store: &mut S,
    from: &str,
    from_off: u64,
    to: &str,
    to_off: u64,
    len: u64,
) -> Result<(), SessionError> {
    let n = store.copy_range(from, from_off, to, to_off, len)?;
    if n < len {
        // Shorter than what was read from it a moment ago.
        return Err(SessionError::CopyOutOfRange {
            offset: from_off,
            len,
            base_len: from_off + n,
        });
    }
    Ok(())
}

/// Copies a local file with the wanted content into the stage; false when
/// it no longer has that content.
fn copy_local<S: Storage + ?Sized>(
    store: &mut S,
    from: &str,
    to: &str,
    size: u64,
    hash: &Hash,
    buf: &mut Vec<u8>,
    written: &mut u64,
) -> Result<bool, StoreError> {
    if buf.len() < IO_CHUNK {
        buf.resize(IO_CHUNK, 0);
    }
    store.create(to)?;
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    loop {
        let n = match store.read_at(from, off, buf) {
            Ok(n) => n,
            // Not there as recorded (changed locally): fetch instead.
            Err(e) if e.is_not_there() => break,
            Err(e) => return Err(e),
        };
        if n == 0 || off + n as u64 > size {
            break;
        }
        store.write_at(to, off, &buf[..n])?;
        *written += n as u64;
        h.update(&buf[..n]);
        off += n as u64;
    }
    if off == size && h.finalize().as_bytes() == hash {
        Ok(true)
    } else {
        store.remove_file(to)?;
        Ok(false)
    }
}

/// The old copy's signature, or `None` when it is too large to describe
/// in one message.
fn signature_of<S: Storage + ?Sized>(
    store: &mut S,
    path: &str,
    size: u64,
    hash: &Hash,
    buf: &mut Vec<u8>,
) -> Result<Option<Base>, StoreError> {
    let params = ChunkParams::for_size(size);
    if size / u64::from(params.avg()) > MAX_SIG_CHUNKS as u64 / 2 {
        return Ok(None);
    }
    let Some(chunks) = store.signature(path, size, params, buf)? else {
        return Ok(None);
    };
    if chunks.len() > MAX_SIG_CHUNKS {
        return Ok(None);
    }
    Ok(Some(Base {
        size,
        hash: *hash,
        avg: params.avg(),
        chunks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::LocalStat;

    fn file(hash: u8) -> Meta {
        Meta {
            kind: Kind::File {
                size: 1,
                hash: [hash; 32],
            },
            mode: 0o644,
            mtime_ns: 0,
            local: LocalStat::default(),
        }
    }

    /// A full round's staged set, kept by position, follows its listing
    /// as the listing gains and loses entries (a failed fetch, a path the
    /// tree lost), and answers as the set kept by path does.
    #[test]
    fn a_listed_staged_set_follows_its_listing() {
        let p = |s: &str| RelPath::new(s).unwrap();
        let link = Staged { id: 8, link: true };
        let mut w: Vec<(RelPath, Meta)> = ["a", "c", "e"].iter().map(|s| (p(s), file(1))).collect();
        let mut listed = StagedSet::Listed(vec![None; w.len()]);
        let mut by_path = StagedSet::by_path();
        for st in [&mut listed, &mut by_path] {
            st.insert(Some(&w), &p("c"), Staged::file(7));
            st.insert(Some(&w), &p("e"), link);
        }
        // "b" comes in before "c"; "a" goes.
        w.insert(1, (p("b"), file(2)));
        listed.inserted_at(1);
        w.remove(0);
        listed.removed_at(0);
        for st in [&listed, &by_path] {
            assert_eq!(st.get(Some(&w), "b"), None);
            assert_eq!(st.get(Some(&w), "c"), Some(Staged::file(7)));
            assert_eq!(st.get(Some(&w), "e"), Some(link));
            let mut all: Vec<(&str, Staged)> = st.iter(Some(&w)).collect();
            all.sort_by_key(|e| e.0);
            assert_eq!(all, vec![("c", Staged::file(7)), ("e", link)]);
        }
        for st in [&mut listed, &mut by_path] {
            assert_eq!(st.take(Some(&w), &p("c")), Some((p("c"), Staged::file(7))));
            assert_eq!(st.take(Some(&w), &p("c")), None);
            assert_eq!(st.iter(Some(&w)).count(), 1);
        }
        // A path the listing does not hold is never staged by position.
        listed.insert(Some(&w), &p("x"), Staged::file(9));
        assert_eq!(listed.get(Some(&w), "x"), None);
    }

    fn manifest(entries: &[(&str, u8)]) -> Manifest {
        let mut m = Manifest::default();
        for (p, h) in entries {
            m.entries.insert(RelPath::new(p).unwrap(), file(*h));
        }
        m
    }

    fn counts(old: &Manifest, new: &Manifest) -> (u64, u64) {
        let all: BTreeSet<RelPath> = old
            .entries
            .keys()
            .chain(new.entries.keys())
            .cloned()
            .collect();
        let all: Vec<RelPath> = all.into_iter().collect();
        deleted_and_renamed(old, View::Whole(new), || all.iter())
    }

    /// F8: a tree at the last generation number (a source that stored a
    /// peer's claim before it was checked) cannot overflow: the round is
    /// refused with a typed error and nothing changes.
    #[test]
    fn a_generation_at_the_top_cannot_commit() {
        use crate::mem::MemStore;
        use crate::wire::Message;
        let mut dst = MemStore::new();
        let mut p = generation::recover(&mut dst).unwrap().persisted;
        let top = Delta {
            generation: u64::MAX,
            taken_at_ns: 1,
            ..Delta::default()
        };
        generation::commit(&mut dst, &mut p, top).unwrap();
        let now = Instant::now();
        let (mut r, report) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
        assert_eq!(report.generation.number, u64::MAX);
        r.handle_connected(now);
        assert!(matches!(r.poll_transmit(), Some(Message::Request { .. })));
        let f = RelPath::new("f").unwrap();
        let meta = Meta {
            kind: Kind::File {
                size: 0,
                hash: *blake3::hash(b"").as_bytes(),
            },
            mode: 0o644,
            mtime_ns: 3,
            local: LocalStat::default(),
        };
        let mut m = Manifest::default();
        m.entries.insert(f.clone(), meta.clone());
        r.handle_message(
            now,
            Message::ManifestStart {
                taken_at_ns: 2,
                full: true,
            },
            &mut dst,
        )
        .unwrap();
        r.handle_message(
            now,
            Message::Entries {
                changes: vec![Change::Upsert(f, meta)],
            },
            &mut dst,
        )
        .unwrap();
        let e = r.handle_message(
            now,
            Message::ManifestEnd {
                entries: 1,
                digest: m.digest(),
            },
            &mut dst,
        );
        assert_eq!(
            e,
            Err(SessionError::GenerationOutOfRange {
                generation: u64::MAX
            })
        );
        assert!(dst.view().is_empty());
        assert_eq!(r.generation().number, u64::MAX);
        let (_, report) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
        assert_eq!(report.generation.number, u64::MAX);
    }

    /// The plan lists its ops in the order they run (removals, deepest
    /// directories first; directories made; files installed; metadata;
    /// the touched directories' times, deepest first), takes the staged
    /// names over, and holds no room beyond its ops.
    #[test]
    fn a_plan_runs_removals_then_makes_then_metadata() {
        let dir = |mtime_ns| Meta {
            kind: Kind::Dir,
            mode: 0o755,
            mtime_ns,
            local: LocalStat::default(),
        };
        let p = |s: &str| RelPath::new(s).unwrap();
        let mut old = manifest(&[("d/x", 1), ("keep", 2), ("touch", 3)]);
        old.entries.insert(p("d"), dir(1));
        old.entries.insert(p("old"), dir(1));
        old.entries.insert(p("old/deep"), dir(1));
        let mut new = manifest(&[("keep", 2), ("n/f", 4), ("n/l", 5)]);
        new.entries.insert(p("n"), dir(2));
        let mut touched = file(3);
        touched.mtime_ns = 9;
        new.entries.insert(p("touch"), touched);
        let staged: HashMap<RelPath, Staged> = [(p("n/f"), Staged::file(0))].into();
        let candidates: Vec<RelPath> = old
            .entries
            .keys()
            .chain(new.entries.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ops = plan(
            &old,
            View::Whole(&new),
            Staging {
                seq: 1,
                staged: StagedSet::ByPath(staged),
                patched: HashMap::new(),
            },
            || candidates.iter(),
            &BTreeSet::new(),
            0o777,
        );
        assert_eq!(ops.capacity(), ops.len());
        assert_eq!(
            ops,
            vec![
                JOp::Delete(p("d/x")),
                JOp::RemoveDir(p("old/deep")),
                JOp::RemoveDir(p("d")),
                JOp::RemoveDir(p("old")),
                JOp::Mkdir(p("n"), 0o755),
                JOp::Install(StageName::parse("r1-f0"), p("n/f")),
                JOp::SetMeta(p("n/l"), 0o644, 0),
                JOp::SetMeta(p("touch"), 0o644, 9),
                JOp::SetMeta(p("n"), 0o755, 2),
            ]
        );
    }

    mod union {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A full round's candidates read from the two manifests are
            /// the sorted union of their paths, each once.
            #[test]
            fn a_full_rounds_candidates_are_the_union(
                a in proptest::collection::btree_set("[a-c]{1,2}(/[a-c]{1,2}){0,2}", 0..40),
                b in proptest::collection::btree_set("[a-c]{1,2}(/[a-c]{1,2}){0,2}", 0..40),
            ) {
                let old = manifest(&a.iter().map(|p| (p.as_str(), 1)).collect::<Vec<_>>());
                let listing: Vec<(RelPath, Meta)> =
                    b.iter().map(|p| (RelPath::new(p).unwrap(), file(2))).collect();
                let want: Vec<&str> = a.union(&b).map(String::as_str).collect();
                let got: Vec<&str> = candidates(&None, &old, View::Sorted(&listing))
                    .map(RelPath::as_str)
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn counts_renames_and_deletions() {
        let old = manifest(&[("a", 1), ("b", 2), ("c", 3), ("d", 3)]);
        // a renamed to e, b deleted, c modified, one copy of 3 (d) renamed to f
        let new = manifest(&[("c", 4), ("e", 1), ("f", 3)]);
        assert_eq!(counts(&old, &new), (1, 2));
        assert_eq!(counts(&old, &old), (0, 0));
        // A file that becomes a symlink is deleted; its content reappearing
        // elsewhere is a rename. Directories are not counted.
        let mut new = manifest(&[("b", 2), ("c", 3), ("d", 3), ("g", 1)]);
        new.entries.insert(
            RelPath::new("a").unwrap(),
            Meta {
                kind: Kind::Symlink {
                    target: b"g".to_vec(),
                },
                ..file(0)
            },
        );
        let mut old_dir = old.clone();
        old_dir.entries.insert(
            RelPath::new("dir").unwrap(),
            Meta {
                kind: Kind::Dir,
                ..file(0)
            },
        );
        assert_eq!(counts(&old_dir, &new), (0, 1));
        // Only the candidates are looked at.
        let new = manifest(&[("c", 3), ("d", 3)]);
        let only_a = [RelPath::new("a").unwrap()];
        assert_eq!(
            deleted_and_renamed(&old, View::Whole(&new), || only_a.iter()),
            (1, 0)
        );
    }

    /// Between rounds the replica holds its manifest packed, whatever the
    /// round was (a first one, one of changes, one that changed nothing,
    /// one that failed), and what it holds is the generation's manifest.
    #[test]
    fn the_manifest_rests_packed_between_rounds() {
        use crate::mem::MemStore;
        use crate::wire::Message;
        let empty = |mtime_ns| Meta {
            kind: Kind::File {
                size: 0,
                hash: *blake3::hash(b"").as_bytes(),
            },
            mode: 0o644,
            mtime_ns,
            local: LocalStat::default(),
        };
        let dir = Meta {
            kind: Kind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            local: LocalStat::default(),
        };
        let p = |s: &str| RelPath::new(s).unwrap();
        let mut dst = MemStore::new();
        let mut now = Instant::now();
        let (mut r, _) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
        r.handle_connected(now);
        // One round: the source's messages, with the digest of `want`
        // (`lie`: another digest).
        let mut round = |r: &mut Replica,
                         dst: &mut MemStore,
                         full: bool,
                         changes: Vec<Change>,
                         want: &Manifest,
                         lie: bool| {
            r.sync_now(now);
            assert!(matches!(r.poll_transmit(), Some(Message::Request { .. })));
            let mut digest = want.digest();
            if lie {
                digest[0] ^= 1;
            }
            let mut msgs = vec![Message::ManifestStart {
                taken_at_ns: 2,
                full,
            }];
            if !changes.is_empty() {
                msgs.push(Message::Entries { changes });
            }
            msgs.push(Message::ManifestEnd {
                entries: want.len() as u64,
                digest,
            });
            let mut res = Ok(());
            for m in msgs {
                res = r.handle_message(now, m, dst);
            }
            while r.poll_transmit().is_some() {}
            now += Duration::from_secs(1);
            res
        };
        let mut want = Manifest::default();
        want.entries.insert(p("d"), dir.clone());
        want.entries.insert(p("d/a"), empty(1));
        want.entries.insert(p("b"), empty(2));
        let first = want
            .entries
            .iter()
            .map(|(k, v)| Change::Upsert(k.clone(), v.clone()))
            .collect();
        let rests = |r: &Replica, want: &Manifest| {
            assert!(r.packed.is_some(), "packed between rounds");
            assert!(r.p.manifest.is_empty(), "no map beside it");
            assert_eq!(r.manifest(), *want);
            assert_eq!(r.digest, want.digest());
            assert_eq!(r.status(SystemTime::UNIX_EPOCH).entries, want.len() as u64);
            let (bytes, entries) = r.manifest_memory();
            assert_eq!(entries, want.len() as u64);
            assert!(
                bytes < want.bytes(),
                "{bytes} B packed, {} B as a map",
                want.bytes()
            );
        };
        round(&mut r, &mut dst, false, first, &want, false).unwrap();
        assert_eq!(r.generation().number, 1);
        rests(&r, &want);
        // Changes: one file added, one removed.
        want.entries.insert(p("d/c"), empty(3));
        want.entries.remove("b");
        let changes = vec![Change::Upsert(p("d/c"), empty(3)), Change::Gone(p("b"))];
        round(&mut r, &mut dst, false, changes.clone(), &want, false).unwrap();
        assert_eq!(r.generation().number, 2);
        rests(&r, &want);
        // Nothing changed.
        round(&mut r, &mut dst, false, Vec::new(), &want, false).unwrap();
        assert_eq!(r.generation().number, 2);
        rests(&r, &want);
        // A round of changes that fails at its end (after the manifest
        // was read as a map) leaves the generation, packed.
        let mut next = want.clone();
        next.entries.insert(p("e"), empty(4));
        let e = round(
            &mut r,
            &mut dst,
            false,
            vec![Change::Upsert(p("e"), empty(4))],
            &next,
            true,
        );
        assert_eq!(e, Err(SessionError::DigestMismatch));
        assert_eq!(r.generation().number, 2);
        rests(&r, &want);
        // A full listing over it, and a reopen, hold the same.
        let listing = next
            .entries
            .iter()
            .map(|(k, v)| Change::Upsert(k.clone(), v.clone()))
            .collect();
        round(&mut r, &mut dst, true, listing, &next, false).unwrap();
        assert_eq!(r.generation().number, 3);
        rests(&r, &next);
        let (again, _) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
        rests(&again, &next);
    }
}
