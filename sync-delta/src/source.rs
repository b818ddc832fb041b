//! The source session: scans its tree, answers a replica's rounds with the
//! manifest changes and the data of the files it wants.

use crate::chunk::ChunkParams;
use crate::delta::{Matcher, Op, OpBuilder};
use crate::error::{SessionError, StoreError};
use crate::exclude::Exclude;
use crate::generation::{self, Persisted, Role, StateFile};
use crate::hints::{Hints, SINCE_EVER};
use crate::manifest::{Change, Hash, Kind, LocalStat, Manifest, Meta};
use crate::packed::{Packed, PackedBuilder};
use crate::path::RelPath;
use crate::replica::Generation;
use crate::store::{IO_CHUNK, StatKind, Storage};
use crate::wire::{Base, DataStatus, MAX_CHANGES, Message};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Source settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Paths never replicated.
    pub exclude: Exclude,
    /// With change hints ([`Source::handle_hints`]): how often a round
    /// walks the whole tree anyway, the safety net for changes no hint
    /// named (default 60 s). Without hints every round walks it.
    pub full_scan_interval: Duration,
    /// With change hints: how long the source collects them before it
    /// tells the replica ([`Message::Changed`]), so that a burst of writes
    /// makes one round (default 100 ms).
    pub batch: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            exclude: Exclude::default(),
            full_scan_interval: Duration::from_secs(60),
            batch: Duration::from_millis(100),
        }
    }
}

/// Since when a replica may lack changes its source holds: the data a
/// takeover would lose ([`Source::exposure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exposure {
    /// The replica holds every change the source knows of.
    Clear,
    /// Changes since this wall-clock time may be missing.
    Since(SystemTime),
    /// Nothing is bounded: the replica never confirmed a generation.
    Unbounded,
}

impl Exposure {
    /// The window at `wall`: zero when clear, the time since the oldest
    /// change otherwise, `None` when unbounded.
    #[must_use]
    pub fn window(&self, wall: SystemTime) -> Option<Duration> {
        match self {
            Exposure::Clear => Some(Duration::ZERO),
            Exposure::Since(t) => Some(wall.duration_since(*t).unwrap_or(Duration::ZERO)),
            Exposure::Unbounded => None,
        }
    }
}

/// Events for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceEvent {
    /// The replica committed a generation of what this source sent.
    Confirmed {
        /// Its generation number.
        generation: u64,
        /// When this source took the snapshot the replica now holds (the
        /// `wall_now` given with the replica's request): the age of the
        /// Backup's data is measured from here, not from the confirmation.
        taken_at: SystemTime,
    },
    /// The replica abandoned a round (refused, or failed).
    Abandoned,
    /// A scan finished.
    Scanned {
        /// Entries in the manifest.
        entries: u64,
        /// Files hashed (the rest passed the quick check).
        hashed: u64,
        /// Files that changed while being hashed; sent next round.
        unstable: u64,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Rounds served.
    pub rounds: u64,
    /// Rounds confirmed by the replica.
    pub confirmed: u64,
    /// Files hashed in scans.
    pub hashed: u64,
    /// Files sent (delta, append or whole).
    pub files: u64,
    /// Files sent as an appended tail.
    pub appends: u64,
    /// Bytes sent as copy ops (the replica had them).
    pub copy_bytes: u64,
    /// Bytes sent as literals.
    pub literal_bytes: u64,
    /// Files that changed while read.
    pub changed_while_read: u64,
    /// Messages refused as invalid.
    pub protocol_errors: u64,
    /// Rounds built from change hints alone, without walking the tree.
    pub hinted_rounds: u64,
    /// Paths the hinted rounds looked at again.
    pub hinted_paths: u64,
    /// Times the driver reported lost hints ([`Source::handle_overflow`]).
    pub overflows: u64,
}

enum Mode {
    Start,
    Whole,
    Delta(Box<Matcher>),
}

struct Job {
    id: u32,
    path: RelPath,
    size: u64,
    base: Option<Base>,
    pos: u64,
    mode: Mode,
}

/// Literal bytes per `Data` message.
const DATA_CHUNK: usize = IO_CHUNK;
/// Bytes read per delta step (at least two of the largest chunks).
const WINDOW: usize = 4 * IO_CHUNK;

/// Files a scan hashes at a time (each batch spread over a threaded
/// store's threads).
const HASH_BATCH: usize = 4096;
/// Entries a scan holds at most while they wait for a batch's hashes
/// (those after the batch's first file): then the batch is hashed as it
/// is.
const SCAN_WAITING: usize = 4 * HASH_BATCH;

/// An entry of a scan waiting for the hashes of a batch before it.
enum Waiting {
    /// Its entry, made.
    Ready(RelPath, Meta),
    /// A file to hash: its entry comes from the hash.
    Hash(crate::store::WalkEntry),
}

/// A scan's new manifest as it is packed, and what waits for hashes.
struct Scanning {
    b: PackedBuilder,
    /// The entries from the first file to hash on, in path order.
    waiting: VecDeque<Waiting>,
    /// The files among them to hash, in path order.
    names: Vec<RelPath>,
    hashed: u64,
    /// A file changed while hashed kept its entry of `confirmed`.
    kept_old: bool,
}

impl Scanning {
    /// Hashes the files waiting and packs every entry waiting, in order. A
    /// file that changed while it was read keeps its entry of `confirmed`
    /// (the last confirmed manifest, else the last scan), its local stat
    /// cleared, and is listed in `unstable`.
    fn flush<S: Storage + ?Sized>(
        &mut self,
        store: &mut S,
        confirmed: &Packed,
        unstable: &mut Vec<RelPath>,
    ) {
        if self.waiting.is_empty() {
            return;
        }
        let results = store.hash_files(&self.names);
        self.hashed += self.names.len() as u64;
        let mut results = self.names.drain(..).zip(results);
        for w in self.waiting.drain(..) {
            let e = match w {
                Waiting::Ready(p, m) => {
                    self.b.push(p.as_str(), &m);
                    continue;
                }
                Waiting::Hash(e) => e,
            };
            match results.next() {
                Some((p, Ok(h)))
                    if p == e.path && same_stat(&h.before, &h.after) && h.len == h.after.size =>
                {
                    self.b.push(p.as_str(), &hashed_meta(&h));
                }
                _ => {
                    if let Some(mut old) = confirmed.get(e.path.as_str()) {
                        old.local = LocalStat::default();
                        self.b.push(e.path.as_str(), &old);
                        self.kept_old = true;
                    }
                    unstable.push(e.path);
                }
            }
        }
    }
}

/// The source session.
///
/// # Driver contract
/// 1. [`Source::open`] at start: it finishes or rolls back a round this
///    node's tree had in progress as a replica, and marks the tree as a
///    source's (a later [`crate::Replica::open`] quarantines what changes
///    from now on until the peer confirms it).
/// 2. Feed each sync message with [`Source::handle_message`], with the
///    wall-clock time (recorded as the generation's taken-at). An error
///    ends the session: close the connection.
/// 3. After every input, and whenever the socket can take more, drain
///    [`Source::poll_transmit`]: it reads files through `store` a piece at
///    a time, so memory stays bounded whatever the file sizes. Drain
///    [`Source::poll_event`] too. Give each message back with
///    [`Source::recycle`] once it is encoded: the next messages' data go
///    into its buffers (a bounded few MiB of them) rather than new memory.
/// 4. Without change hints the source has no timers:
///    [`Source::poll_timeout`] is `None` (the replica schedules rounds);
///    [`Source::sync_now`] asks the replica for a round at once.
/// 5. With change hints (the kernel's notifications on the tree, read by
///    the driver): [`Source::start_watching`], then every hint with
///    [`Source::handle_hints`] as it comes (all of them before the next
///    message from the replica), lost hints with
///    [`Source::handle_overflow`], hints that will not be complete again
///    (a directory that could not be watched) with
///    [`Source::stop_watching`], the link coming up with
///    [`Source::handle_connected`]; arm a timer for
///    [`Source::poll_timeout`] and call [`Source::handle_timeout`]. Rounds
///    are then built from the hinted paths without walking the tree, the
///    replica is told of changes at once ([`Message::Changed`] after
///    [`SourceConfig::batch`]), and the tree is walked after opening,
///    after an overflow and every [`SourceConfig::full_scan_interval`].
///    [`Source::exposure`] gives the data-loss window.
pub struct Source {
    config: SourceConfig,
    /// The last scan: the quick-check cache, and what was last sent.
    cache: Packed,
    cache_digest: Hash,
    /// What the replica confirmed last; `None` when it is `cache`.
    confirmed: Option<Packed>,
    confirmed_digest: Hash,
    confirmed_generation: u64,
    /// When the confirmed generation's snapshot was taken (ns), if known.
    confirmed_taken_at_ns: Option<i64>,
    persisted_digest: Hash,
    /// Where the persisted manifest's log stands (its manifest is kept in
    /// `cache` / `confirmed`, not here).
    p: Persisted,
    /// Digest and taken-at of the round in flight (its manifest is `cache`).
    sent: Option<(Hash, i64)>,
    /// The round's listing still to send: made a message at a time as
    /// the link takes them, never whole in memory.
    listing: Option<Listing>,
    jobs: VecDeque<Job>,
    out: VecDeque<Message>,
    events: VecDeque<SourceEvent>,
    stats: SourceStats,
    buf: Vec<u8>,
    /// Builds the `Data` messages' ops; holds the buffers of messages
    /// given back ([`Source::recycle`]) for the next ones.
    ops: OpBuilder,
    /// Change hints and what they say of the data-loss window.
    hints: Hints,
    /// Files the last scan found changing while it hashed them.
    unstable: Vec<RelPath>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("confirmed_generation", &self.confirmed_generation)
            .field("entries", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A round's listing being sent ([`Source::poll_transmit`]): the changes
/// from `from` to the round's manifest (`cache`), after the last path sent.
#[derive(Debug)]
struct Listing {
    from: ListFrom,
    after: Option<String>,
    digest: Hash,
}

/// What a listing lists the changes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListFrom {
    /// Nothing: the whole manifest (a full listing).
    Empty,
    /// What the replica confirmed (`confirmed`).
    Confirmed,
    /// The round's manifest itself: no entries.
    Nothing,
}

pub(crate) fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

impl Source {
    /// Opens the source tree behind `store`.
    ///
    /// # Errors
    /// A [`StoreError`].
    pub fn open<S: Storage + ?Sized>(
        config: SourceConfig,
        _now: Instant,
        store: &mut S,
    ) -> Result<Self, StoreError> {
        let mut rec = generation::recover_as(store, true)?;
        let confirmed_taken_at_ns = generation::confirmed_taken_at_ns(
            &rec.state,
            rec.persisted.generation,
            rec.persisted.taken_at_ns,
        );
        let p = rec.persisted;
        generation::write_state(
            store,
            StateFile {
                role: Role::Source,
                generation: p.generation,
                taken_at_ns: rec.state.taken_at_ns,
            },
        )?;
        // Loaded packed: the map is never built.
        let cache = rec.packed.take().unwrap_or_default();
        let digest = cache.digest();
        Ok(Self {
            config,
            cache,
            cache_digest: digest,
            confirmed: None,
            confirmed_digest: digest,
            confirmed_generation: p.generation,
            confirmed_taken_at_ns,
            persisted_digest: digest,
            p,
            sent: None,
            listing: None,
            jobs: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: SourceStats::default(),
            buf: Vec::new(),
            ops: OpBuilder::default(),
            hints: Hints {
                // What changed while no one watched has no hint.
                blind: Some(confirmed_taken_at_ns.unwrap_or(SINCE_EVER)),
                full_clean_ns: confirmed_taken_at_ns,
                ..Hints::default()
            },
            unstable: Vec::new(),
        })
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// The memory the source's manifests hold, in bytes, and their
    /// entries: the last scan and, while the replica has not confirmed
    /// it, the last confirmed one. Each is packed in path order (54 bytes
    /// an entry on the bench's tree of 100,000 files).
    #[must_use]
    pub fn manifest_memory(&self) -> (u64, u64) {
        let c = self.confirmed.as_ref();
        (
            (self.cache.heap_bytes() + c.map_or(0, Packed::heap_bytes)) as u64,
            (self.cache.len() + c.map_or(0, Packed::len)) as u64,
        )
    }

    /// The generation the replica last confirmed.
    #[must_use]
    pub fn confirmed_generation(&self) -> u64 {
        self.confirmed_generation
    }

    /// The generation the replica last confirmed, with when this source
    /// took its snapshot ([`SourceEvent::Confirmed`]'s `taken_at`). After
    /// [`Source::open`] it is what the tree's state records: the last
    /// generation's time, or an older one (never a newer one) when the
    /// last confirmations changed nothing; `None` before any round.
    #[must_use]
    pub fn confirmed(&self) -> Generation {
        Generation {
            number: self.confirmed_generation,
            taken_at: self.confirmed_taken_at_ns.map(generation::ns_to_time),
        }
    }

    /// When [`Source::handle_timeout`] is next needed: `None` without
    /// change hints (the replica schedules rounds); with them, the end of
    /// the batching window and the next full scan.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.hints.watching {
            return None;
        }
        let full = if self.hints.full_nudged {
            None
        } else {
            self.hints.next_full(self.config.full_scan_interval)
        };
        match (self.hints.batch_deadline, full) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Tells the replica of hinted changes at the end of the batching
    /// window, and when a full scan is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.hints.watching {
            return;
        }
        let mut nudge = false;
        if self.hints.batch_deadline.is_some_and(|t| t <= now) {
            self.hints.batch_deadline = None;
            nudge = !self.hints.dirty.is_empty()
                || self.hints.full_due(now, self.config.full_scan_interval);
        }
        if !self.hints.full_nudged
            && self
                .hints
                .next_full(self.config.full_scan_interval)
                .is_some_and(|t| t <= now)
        {
            self.hints.full_nudged = true;
            nudge = true;
        }
        // A round in flight: told when it ends.
        if nudge && self.sent.is_none() {
            self.nudge();
        }
    }

    fn nudge(&mut self) {
        if !self.out.iter().any(|m| matches!(m, Message::Changed)) {
            self.out.push_back(Message::Changed);
        }
    }

    /// After a round: tells the replica at once of what is still pending.
    fn nudge_if_pending(&mut self, now: Instant) {
        if !self.hints.watching {
            return;
        }
        let dirty = !self.hints.dirty.is_empty() && self.hints.batch_deadline.is_none();
        if dirty || self.hints.full_due(now, self.config.full_scan_interval) {
            self.nudge();
        }
    }

    /// The driver gives change hints from now on (see
    /// [`Source::handle_hints`]). Until a full scan taken after this call is
    /// confirmed, changes made before it count as unknown.
    pub fn start_watching(&mut self, _now: Instant) {
        if !self.hints.watching {
            self.hints.watching = true;
            let clean = self.hints.full_clean_ns.unwrap_or(SINCE_EVER);
            self.hints.blind = Some(self.hints.blind.map_or(clean, |b| b.min(clean)));
            self.hints.blind_seq += 1;
        }
    }

    /// The driver's hints are no longer complete and will not be again (a
    /// directory it could not watch, its watcher gone): rounds walk the
    /// whole tree, as without hints, and [`Source::exposure`] counts from
    /// the last full scan the replica confirmed. The hints held are
    /// dropped (the next round's walk finds their changes). A later
    /// [`Source::start_watching`] or hint starts watching again.
    pub fn stop_watching(&mut self, _now: Instant) {
        if self.hints.watching {
            self.hints = Hints {
                full_clean_ns: self.hints.full_clean_ns,
                ..Hints::default()
            };
        }
    }

    /// Dirty-path hints: these paths (relative to the tree; a directory
    /// with everything below it; `""` for the whole tree) may have changed.
    /// `wall` is when the driver learnt of them: the window counts from
    /// there. Paths that are excluded, inside the state folder or not valid
    /// [`RelPath`]s are ignored. Calls [`Source::start_watching`] if it was
    /// not called.
    ///
    /// The driver must give every hint it has before the replica's next
    /// request (a hinted round stamps its snapshot with the request's
    /// time), and report lost hints with [`Source::handle_overflow`].
    pub fn handle_hints<I, P>(&mut self, now: Instant, wall: SystemTime, paths: I)
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.start_watching(now);
        let t = time_ns(wall);
        let mut any = false;
        for p in paths {
            let p = p.as_ref().trim_matches('/');
            if p.is_empty() {
                self.hints.full_pending = Some(self.hints.full_pending.map_or(t, |f| f.min(t)));
                any = true;
                continue;
            }
            if self.config.exclude.is_excluded(p) {
                continue;
            }
            let Ok(rp) = RelPath::new(p) else { continue };
            self.hints.dirty.entry(rp).or_insert(t);
            any = true;
        }
        if any && self.hints.batch_deadline.is_none() {
            self.hints.batch_deadline = Some(now + self.config.batch);
        }
    }

    /// The driver lost hints (the kernel's queue overflowed, a watch could
    /// not be added): the next round walks the whole tree, and until it is
    /// confirmed the window counts from the last confirmed full scan.
    pub fn handle_overflow(&mut self, now: Instant, _wall: SystemTime) {
        self.start_watching(now);
        self.stats.overflows += 1;
        let clean = self.hints.full_clean_ns.unwrap_or(SINCE_EVER);
        self.hints.blind = Some(self.hints.blind.map_or(clean, |b| b.min(clean)));
        self.hints.blind_seq += 1;
        if self.hints.batch_deadline.is_none() {
            self.hints.batch_deadline = Some(now + self.config.batch);
        }
    }

    /// The data-loss window at `wall`: the age of the oldest change this
    /// node's replica does not hold yet ([`Source::exposure`]'s window).
    #[must_use]
    pub fn window(&self, wall: SystemTime) -> Option<Duration> {
        self.exposure().window(wall)
    }

    /// Since when this node's replica may lack changes. With change hints
    /// it is the first hint of the oldest change not yet confirmed
    /// ([`Exposure::Clear`] when every hinted change is); without them,
    /// or while hints are incomplete (after opening, after an overflow),
    /// the snapshot time of what the replica holds or of the last full
    /// scan it confirmed. [`Exposure::Unbounded`] when the replica never
    /// confirmed a generation. A change counts from when the driver
    /// learnt of it (the hint's time), not from the write itself.
    #[must_use]
    pub fn exposure(&self) -> Exposure {
        let oldest = if self.hints.watching {
            match self.hints.oldest() {
                None => return Exposure::Clear,
                Some(t) => Some(t),
            }
        } else {
            self.confirmed_taken_at_ns
        };
        match oldest {
            None | Some(SINCE_EVER) => Exposure::Unbounded,
            Some(t) => Exposure::Since(generation::ns_to_time(t)),
        }
    }

    /// The link is up: the replica is told at once if this source holds
    /// changes it lacks (with change hints).
    pub fn handle_connected(&mut self, now: Instant) {
        if self.hints.watching
            && (!self.hints.dirty.is_empty()
                || self.hints.full_due(now, self.config.full_scan_interval))
        {
            self.nudge();
        }
    }

    /// Asks the replica for a round now (before a planned swap).
    pub fn sync_now(&mut self, _now: Instant) {
        self.out.push_back(Message::SyncNow);
    }

    /// The link went down: the round in flight is dropped.
    pub fn handle_disconnected(&mut self, _now: Instant) {
        self.sent = None;
        self.listing = None;
        self.hints.round_full = None;
        self.jobs.clear();
        self.out.clear();
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }

    /// Scans the tree (sending nothing): the quick check reuses the hash of every file whose
    /// size, mtime, ctime and inode did not change; the rest are hashed
    /// (in parallel by a real store). A file that changes while hashed
    /// keeps its last confirmed entry (or none) and is sent next round.
    ///
    /// # Errors
    /// A [`StoreError`] from the walk.
    pub fn scan<S: Storage + ?Sized>(&mut self, store: &mut S) -> Result<Manifest, StoreError> {
        Ok(self.scan_packed(store)?.to_manifest())
    }

    /// [`Source::scan`], packed: the walk, read in path order a part at a
    /// time ([`Storage::walk_sorted`]), is merged with the last scan (no
    /// map is built, and the walk is never whole in memory). Files the
    /// quick check cannot reuse are hashed a batch at a time; the entries
    /// after the first of a batch wait for its hashes (at most
    /// [`SCAN_WAITING`] of them), so the new manifest is packed in path
    /// order.
    fn scan_packed<S: Storage + ?Sized>(&mut self, store: &mut S) -> Result<Packed, StoreError> {
        // In room for about the last scan's size (a sixteenth more for
        // growth); a first scan's grows as it goes.
        let room = self.cache.packed_bytes();
        let mut scan = Scanning {
            b: PackedBuilder::with_capacity(room + room / 16, self.cache.len()),
            waiting: VecDeque::new(),
            names: Vec::new(),
            hashed: 0,
            kept_old: false,
        };
        let confirmed = self.confirmed.as_ref().unwrap_or(&self.cache);
        let mut c = self.cache.cursor();
        let mut cursor = crate::store::WalkCursor::default();
        let mut part = Vec::new();
        // Whether the tree is the last scan entry for entry.
        let mut same = true;
        let mut listed = 0usize;
        self.unstable.clear();
        loop {
            part.clear();
            store.walk_sorted(&self.config.exclude, &mut cursor, &mut part)?;
            if part.is_empty() {
                break;
            }
            for e in part.drain(..) {
                if e.stat.kind == StatKind::Other {
                    continue;
                }
                listed += 1;
                let old = c.seek(e.path.as_str());
                let ready = match e.stat.kind {
                    StatKind::File => match old {
                        Some(old) if generation::quick_match(old, &e.stat) => old.clone(),
                        _ => {
                            same = false;
                            scan.names.push(e.path.clone());
                            scan.waiting.push_back(Waiting::Hash(e));
                            if scan.names.len() >= HASH_BATCH || scan.waiting.len() >= SCAN_WAITING
                            {
                                scan.flush(store, confirmed, &mut self.unstable);
                            }
                            continue;
                        }
                    },
                    _ => {
                        same = same && old.is_some_and(|old| unchanged(old, &e));
                        let kind = match e.stat.kind {
                            StatKind::Dir => Kind::Dir,
                            _ => match e.target {
                                Some(t)
                                    if !t.is_empty()
                                        && t.len() <= crate::manifest::MAX_LINK_LEN =>
                                {
                                    Kind::Symlink { target: t }
                                }
                                _ => continue,
                            },
                        };
                        Meta {
                            kind,
                            mode: e.stat.mode,
                            mtime_ns: e.stat.mtime_ns,
                            local: LocalStat {
                                ctime_ns: e.stat.ctime_ns,
                                ino: e.stat.ino,
                            },
                        }
                    }
                };
                if scan.waiting.is_empty() {
                    scan.b.push(e.path.as_str(), &ready);
                } else {
                    scan.waiting.push_back(Waiting::Ready(e.path, ready));
                    if scan.waiting.len() >= SCAN_WAITING {
                        scan.flush(store, confirmed, &mut self.unstable);
                    }
                }
            }
        }
        scan.flush(store, confirmed, &mut self.unstable);
        let Scanning {
            b,
            hashed,
            kept_old,
            ..
        } = scan;
        if same && listed == self.cache.len() {
            // Nothing changed: the last scan stands (a copy of its bytes).
            drop(b);
            self.unstable.clear();
            self.events.push_back(SourceEvent::Scanned {
                entries: self.cache.len() as u64,
                hashed: 0,
                unstable: 0,
            });
            return Ok(self.cache.clone());
        }
        let mut m = b.finish();
        if kept_old {
            m = reshaped(m);
        }
        self.stats.hashed += hashed;
        self.events.push_back(SourceEvent::Scanned {
            entries: m.len() as u64,
            hashed,
            unstable: self.unstable.len() as u64,
        });
        Ok(m)
    }

    /// Scans only `paths` (each a path that may have changed; a directory
    /// with everything below it) over the last scan, without walking the
    /// tree: the entries a full [`Source::scan`] would give for those paths
    /// and the directories that hold them, the rest kept as they were. A
    /// file that changes while hashed keeps its last confirmed entry (or
    /// none), as in a full scan. Sends nothing.
    ///
    /// # Errors
    /// A [`StoreError`] other than a path that is gone.
    pub fn scan_paths<S: Storage + ?Sized>(
        &mut self,
        store: &mut S,
        paths: &BTreeSet<RelPath>,
    ) -> Result<Manifest, StoreError> {
        Ok(self.scan_paths_packed(store, paths)?.to_manifest())
    }

    fn scan_paths_packed<S: Storage + ?Sized>(
        &mut self,
        store: &mut S,
        paths: &BTreeSet<RelPath>,
    ) -> Result<Packed, StoreError> {
        let found = crate::hints::scan_hinted(store, &self.config.exclude, &self.cache, paths)?;
        let mut m = found.manifest;
        let names: Vec<RelPath> = found.to_hash.iter().map(|(p, _)| p.clone()).collect();
        let hashed = store.hash_files(&names);
        self.unstable.clear();
        for ((p, _), r) in found.to_hash.iter().zip(hashed) {
            match r {
                Ok(h) if same_stat(&h.before, &h.after) && h.len == h.after.size => {
                    m.insert(p.clone(), hashed_meta(&h));
                }
                _ => {
                    self.unstable.push(p.clone());
                    let confirmed = self.confirmed.as_ref().unwrap_or(&self.cache);
                    if let Some(mut old) = confirmed.get(p.as_str()) {
                        old.local = LocalStat::default();
                        m.insert(p.clone(), old);
                    }
                }
            }
        }
        let m = m.finish();
        self.stats.hashed += names.len() as u64;
        self.stats.hinted_paths += paths.len() as u64;
        self.events.push_back(SourceEvent::Scanned {
            entries: m.len() as u64,
            hashed: names.len() as u64,
            unstable: self.unstable.len() as u64,
        });
        Ok(m)
    }

    /// The scan a round starts with: hinted paths only while hints are
    /// complete and no full scan is due, else the whole tree. Returns the
    /// manifest and the time the snapshot stands for (ns).
    fn round_scan<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        wall_ns: i64,
        store: &mut S,
    ) -> Result<(Packed, i64), StoreError> {
        let h = &mut self.hints;
        if !h.watching {
            return Ok((self.scan_packed(store)?, wall_ns));
        }
        let full = h.full_due(now, self.config.full_scan_interval);
        let dirty = std::mem::take(&mut h.dirty);
        let paths: BTreeSet<RelPath> = dirty.keys().cloned().collect();
        for (p, t) in dirty {
            let e = h.in_round.entry(p).or_insert(t);
            *e = (*e).min(t);
        }
        h.batch_deadline = None;
        let new = if full {
            let h = &mut self.hints;
            if let Some(f) = h.full_pending.take() {
                h.full_in_round = Some(h.full_in_round.map_or(f, |g| g.min(f)));
            }
            h.round_full = Some(h.blind_seq);
            h.last_full = Some(now);
            h.full_nudged = false;
            self.scan_packed(store)
        } else {
            self.hints.round_full = None;
            self.stats.hinted_rounds += 1;
            self.scan_paths_packed(store, &paths)
        };
        let new = match new {
            Ok(m) => m,
            Err(e) => {
                // Nothing was scanned: the paths stay dirty.
                let h = &mut self.hints;
                for p in paths {
                    if let Some(t) = h.in_round.get(&p).copied() {
                        h.dirty.insert(p, t);
                    }
                }
                return Err(e);
            }
        };
        // A file that changed while hashed is sent next round; the
        // snapshot stands for no later than its change.
        let mut taken = wall_ns;
        let h = &mut self.hints;
        for p in std::mem::take(&mut self.unstable) {
            let t = h.in_round.get(&p).copied().or(h.blind).unwrap_or(wall_ns);
            h.dirty.entry(p).or_insert(t);
            if t != SINCE_EVER {
                taken = taken.min(t);
            }
        }
        Ok((new, taken))
    }

    /// Handles one sync message from the replica. `wall_now` is recorded
    /// as the taken-at time of a snapshot this message starts.
    ///
    /// # Errors
    /// A [`SessionError`]: the session must end.
    pub fn handle_message<S: Storage + ?Sized>(
        &mut self,
        _now: Instant,
        wall_now: SystemTime,
        msg: Message,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let r = self.handle_inner(_now, wall_now, msg, store);
        if r.is_err() {
            self.stats.protocol_errors += 1;
            self.handle_disconnected(_now);
        }
        r
    }

    fn handle_inner<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        wall_now: SystemTime,
        msg: Message,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let ty = msg.ty();
        match msg {
            Message::Request { digest } => {
                self.jobs.clear();
                self.out.clear();
                let (new, taken_at_ns) = self.round_scan(now, time_ns(wall_now), store)?;
                let new_digest = new.digest();
                let full = digest != self.confirmed_digest;
                let had_confirmed = self.confirmed.is_some();
                let old = std::mem::replace(&mut self.cache, new);
                if self.confirmed.is_none() && new_digest != self.confirmed_digest {
                    self.confirmed = Some(old);
                }
                // The changes come from the replica's state, which is now
                // `confirmed`, or was the last scan and is the same as
                // this one (no entries).
                let from = if full {
                    ListFrom::Empty
                } else if had_confirmed || new_digest != self.confirmed_digest {
                    ListFrom::Confirmed
                } else {
                    ListFrom::Nothing
                };
                self.cache_digest = new_digest;
                self.out
                    .push_back(Message::ManifestStart { taken_at_ns, full });
                self.listing = Some(Listing {
                    from,
                    after: None,
                    digest: new_digest,
                });
                self.sent = Some((new_digest, taken_at_ns));
                self.stats.rounds += 1;
                Ok(())
            }
            Message::Want { id, path, base } => {
                if self.sent.is_none() {
                    return Err(SessionError::Unexpected { ty });
                }
                let Some(Meta {
                    kind: Kind::File { size, .. },
                    ..
                }) = self.cache.get(path.as_str())
                else {
                    return Err(SessionError::UnknownFile { id });
                };
                self.jobs.push_back(Job {
                    id,
                    path,
                    size,
                    base,
                    pos: 0,
                    mode: Mode::Start,
                });
                Ok(())
            }
            Message::Committed { .. } if self.listing.is_some() => {
                // Before the manifest it would confirm has been sent.
                Err(SessionError::Unexpected { ty })
            }
            Message::Committed { generation, digest } => {
                // The peer's number is stored and, after a role change,
                // counted up from: one that cannot be is refused.
                if generation.checked_add(1).is_none() {
                    self.sent = None;
                    return Err(SessionError::GenerationOutOfRange { generation });
                }
                if let Some((d, taken)) = self.sent.take()
                    && d == digest
                {
                    if d != self.persisted_digest || generation != self.confirmed_generation {
                        // Persist what the peer now has, as the changes
                        // from what it had; from nothing (a first round),
                        // as a new base.
                        match &self.confirmed {
                            Some(prev) if prev.is_empty() && !self.cache.is_empty() => {
                                generation::record_base(
                                    store,
                                    &mut self.p,
                                    generation,
                                    taken,
                                    &self.cache,
                                )?;
                            }
                            confirmed => {
                                let changes = match confirmed {
                                    Some(prev) => prev
                                        .diff(&self.cache)
                                        .into_iter()
                                        .map(|c| match c {
                                            Change::Upsert(p, m) => (p, Some(m)),
                                            Change::Gone(p) => (p, None),
                                        })
                                        .collect(),
                                    None => Vec::new(),
                                };
                                generation::record_changes(
                                    store,
                                    &mut self.p,
                                    generation,
                                    taken,
                                    changes,
                                    &self.cache,
                                )?;
                            }
                        }
                        self.persisted_digest = d;
                    }
                    self.confirmed = None;
                    self.confirmed_digest = d;
                    self.confirmed_generation = generation;
                    self.confirmed_taken_at_ns = Some(taken);
                    self.stats.confirmed += 1;
                    self.events.push_back(SourceEvent::Confirmed {
                        generation,
                        taken_at: generation::ns_to_time(taken),
                    });
                    // What the round covered is on the replica now.
                    let h = &mut self.hints;
                    h.in_round.clear();
                    h.full_in_round = None;
                    if let Some(seq) = h.round_full.take() {
                        if seq == h.blind_seq {
                            h.blind = None;
                        }
                        h.full_clean_ns = Some(taken);
                    }
                    self.nudge_if_pending(now);
                }
                Ok(())
            }
            Message::Abandon { .. } => {
                self.sent = None;
                self.jobs.clear();
                self.hints.round_full = None;
                self.events.push_back(SourceEvent::Abandoned);
                self.nudge_if_pending(now);
                Ok(())
            }
            _ => Err(SessionError::Unexpected { ty }),
        }
    }

    /// The next message to send, reading file data through `store` as
    /// needed (at most a few MiB per call).
    #[must_use]
    pub fn poll_transmit<S: Storage + ?Sized>(&mut self, store: &mut S) -> Option<Message> {
        loop {
            if let Some(m) = self.out.pop_front() {
                return Some(m);
            }
            if self.listing.is_some() {
                self.list_more();
                continue;
            }
            let mut job = self.jobs.pop_front()?;
            match self.step(&mut job, store) {
                Ok(true) => {
                    self.stats.files += 1;
                    self.out.push_back(Message::DataEnd {
                        id: job.id,
                        status: DataStatus::Complete,
                    });
                }
                Ok(false) => self.jobs.push_front(job),
                Err(_) => {
                    self.stats.changed_while_read += 1;
                    self.out.push_back(Message::DataEnd {
                        id: job.id,
                        status: DataStatus::Changed,
                    });
                }
            }
        }
    }

    /// Gives back a message from [`Source::poll_transmit`] once the driver
    /// has encoded it: the buffers of a [`Message::Data`]'s literals,
    /// emptied, take the next messages' literals instead of memory from
    /// the allocator, which may come freshly mapped, a page fault every
    /// 4 KiB (on unrelated data, a third of the source's time in the
    /// `sync_delta` bench). Optional: the messages are the same with or
    /// without it. The source keeps at most 6 MiB of such buffers (by
    /// capacity: the literals of one read window, about four messages,
    /// with room to spare), at most 64 of them and 8 op vectors; what is
    /// given beyond that is dropped. Other messages are dropped.
    pub fn recycle(&mut self, msg: Message) {
        if let Message::Data { ops, .. } = msg {
            self.ops.recycle(ops);
        }
    }

    /// The listing's next message: the next changes (up to
    /// [`MAX_CHANGES`] or about a megabyte of them), or its end.
    fn list_more(&mut self) {
        let Some(l) = self.listing.as_mut() else {
            return;
        };
        let empty = Packed::default();
        let from = match l.from {
            ListFrom::Empty => Some(&empty),
            ListFrom::Confirmed => Some(self.confirmed.as_ref().unwrap_or(&self.cache)),
            ListFrom::Nothing => None,
        };
        let (changes, done) = match from {
            Some(from) => {
                let (mut n, mut bytes) = (0usize, 0usize);
                from.diff_from(&self.cache, l.after.as_deref(), &mut |c| {
                    n += 1;
                    bytes += match c {
                        Change::Upsert(p, m) => p.as_str().len() + 64 + link_len(m),
                        Change::Gone(p) => p.as_str().len() + 3,
                    };
                    n >= MAX_CHANGES || bytes >= 1 << 20
                })
            }
            None => (Vec::new(), true),
        };
        if let Some(last) = changes.last() {
            l.after = Some(
                match last {
                    Change::Upsert(p, _) | Change::Gone(p) => p,
                }
                .as_str()
                .to_owned(),
            );
            self.out.push_back(Message::Entries { changes });
        }
        if done {
            self.out.push_back(Message::ManifestEnd {
                entries: self.cache.len() as u64,
                digest: l.digest,
            });
            self.listing = None;
        }
    }

    /// One step of a job; true when its data is all queued.
    fn step<S: Storage + ?Sized>(
        &mut self,
        job: &mut Job,
        store: &mut S,
    ) -> Result<bool, StoreError> {
        let path = job.path.as_str();
        match &mut job.mode {
            Mode::Start => {
                job.mode = Mode::Whole;
                if let Some(base) = job.base.take() {
                    if base.size > 0
                        && base.size <= job.size
                        && self.probe_append(store, path, &base)?
                        && self.prefix_matches(store, path, &base)?
                    {
                        self.stats.appends += 1;
                        self.stats.copy_bytes += base.size;
                        self.out.push_back(Message::Data {
                            id: job.id,
                            ops: vec![Op::Copy {
                                offset: 0,
                                len: base.size,
                            }],
                        });
                        job.pos = base.size;
                    } else if !base.chunks.is_empty() {
                        let params = ChunkParams::new(base.avg);
                        job.mode = Mode::Delta(Box::new(Matcher::new(params, &base.chunks)));
                    }
                }
                Ok(false)
            }
            Mode::Whole => {
                if job.pos >= job.size {
                    return Ok(true);
                }
                let want = ((job.size - job.pos) as usize).min(DATA_CHUNK);
                let mut data = self.ops.zeroed(want);
                let n = store.read_at(path, job.pos, &mut data)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                data.truncate(n);
                job.pos += n as u64;
                self.stats.literal_bytes += n as u64;
                self.out.push_back(Message::Data {
                    id: job.id,
                    ops: vec![Op::Literal(data)],
                });
                Ok(job.pos >= job.size)
            }
            Mode::Delta(matcher) => {
                if job.pos >= job.size {
                    return Ok(true);
                }
                let want = ((job.size - job.pos) as usize).min(WINDOW);
                if self.buf.len() < WINDOW {
                    self.buf.resize(WINDOW, 0);
                }
                let mut n = 0;
                while n < want {
                    let got = store.read_at(path, job.pos + n as u64, &mut self.buf[n..want])?;
                    if got == 0 {
                        return Err(StoreError::NotFound);
                    }
                    n += got;
                }
                let eof = job.pos + n as u64 >= job.size;
                let data = &self.buf[..n];
                // Empty between steps: every op built is sent below.
                let ops = &mut self.ops;
                let mut lit = 0u64;
                let mut copy = 0u64;
                let id = job.id;
                let out = &mut self.out;
                let consumed = matcher.scan(data, eof, |found, at, len| {
                    match found {
                        Some(off) => {
                            ops.copy(off, len as u64);
                            copy += len as u64;
                        }
                        None => {
                            ops.literal(&data[at..at + len]);
                            lit += len as u64;
                        }
                    }
                    if ops.literal_bytes() >= DATA_CHUNK || ops.len() >= 4096 {
                        out.push_back(Message::Data {
                            id,
                            ops: ops.take(),
                        });
                    }
                });
                if !ops.is_empty() {
                    self.out.push_back(Message::Data {
                        id,
                        ops: ops.take(),
                    });
                }
                self.stats.literal_bytes += lit;
                self.stats.copy_bytes += copy;
                job.pos += consumed as u64;
                if consumed == 0 {
                    // No progress on a whole window: never call again with
                    // the same bytes (a loop at full CPU); send the rest
                    // whole. The matcher guarantees progress, so this is a
                    // second line of defence.
                    job.mode = Mode::Whole;
                }
                Ok(job.pos >= job.size)
            }
        }
    }

    /// A cheap look before hashing the whole prefix: a few of the old
    /// copy's chunks (the last one among them) must still be where they
    /// were.
    fn probe_append<S: Storage + ?Sized>(
        &mut self,
        store: &mut S,
        path: &str,
        base: &Base,
    ) -> Result<bool, StoreError> {
        let n = base.chunks.len();
        if n == 0 {
            return Ok(true);
        }
        let mut offsets = Vec::with_capacity(n);
        let mut off = 0u64;
        for c in &base.chunks {
            offsets.push(off);
            off += u64::from(c.len);
        }
        if off != base.size {
            return Ok(false);
        }
        let probes = 8.min(n);
        for k in 0..probes {
            let i = if probes == 1 {
                n - 1
            } else {
                k * (n - 1) / (probes - 1)
            };
            let (c, at) = (&base.chunks[i], offsets[i]);
            let len = c.len as usize;
            if self.buf.len() < len {
                self.buf.resize(len, 0);
            }
            let got = store.read_at(path, at, &mut self.buf[..len])?;
            if got != len || crate::delta::chunk_hash(&self.buf[..len]) != c.hash {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn prefix_matches<S: Storage + ?Sized>(
        &mut self,
        store: &mut S,
        path: &str,
        base: &Base,
    ) -> Result<bool, StoreError> {
        if self.buf.len() < WINDOW {
            self.buf.resize(WINDOW, 0);
        }
        let mut h = blake3::Hasher::new();
        let mut off = 0u64;
        while off < base.size {
            let want = ((base.size - off) as usize).min(WINDOW);
            let n = store.read_at(path, off, &mut self.buf[..want])?;
            if n == 0 {
                return Ok(false);
            }
            h.update(&self.buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize().as_bytes() == &base.hash)
    }
}

/// A directory or link entry of the last scan that the walk finds as it
/// was (same kind, target, mode, times and inode).
fn unchanged(old: &Meta, e: &crate::store::WalkEntry) -> bool {
    let st = &e.stat;
    let kind_same = match (&old.kind, st.kind) {
        (Kind::Dir, StatKind::Dir) => true,
        (Kind::Symlink { target }, StatKind::Symlink) => e.target.as_ref() == Some(target),
        _ => false,
    };
    kind_same
        && old.mode == st.mode
        && old.mtime_ns == st.mtime_ns
        && old.local.ctime_ns == st.ctime_ns
        && old.local.ino == st.ino
}

/// `m` without the entries whose parent is missing or not a directory (a
/// kept old entry may sit under a path that is no longer a directory).
fn reshaped(m: Packed) -> Packed {
    let mut mm = m.to_manifest();
    if mm.check_shape().is_ok() {
        return m;
    }
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
    Packed::from_manifest(&mm)
}

/// The entry of a file hashed whole and unchanged while it was read.
fn hashed_meta(h: &crate::store::Hashed) -> Meta {
    Meta {
        kind: Kind::File {
            size: h.len,
            hash: h.hash,
        },
        mode: h.after.mode,
        mtime_ns: h.after.mtime_ns,
        local: LocalStat {
            ctime_ns: h.after.ctime_ns,
            ino: h.after.ino,
        },
    }
}

fn same_stat(a: &crate::store::Stat, b: &crate::store::Stat) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns && a.ino == b.ino
}

fn link_len(m: &Meta) -> usize {
    match &m.kind {
        Kind::Symlink { target } => target.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::noise;
    use crate::mem::MemStore;
    use crate::wire::Base;

    /// A tree of `n` small files in 10 directories.
    fn tree(n: usize) -> MemStore {
        let mut s = MemStore::new();
        for i in 0..n {
            s.put_file(&format!("d{}/f{i:06}", i % 10), b"x", 0o644, 10);
        }
        s
    }

    /// A scan over more files than a hash batch, directories and symlinks
    /// among them: every entry packed in path order with its own hash,
    /// each file hashed once; a rescan of the same tree gives the same
    /// manifest, one after two edits differs in those two.
    #[test]
    fn a_scan_hashes_in_batches_and_keeps_path_order() {
        let n = 2 * HASH_BATCH + 300;
        let mut s = MemStore::new();
        for i in 0..n {
            s.put_file(
                &format!("d{}/f{i:06}", i % 7),
                format!("{i}").as_bytes(),
                0o644,
                10,
            );
            if i % 1000 == 0 {
                s.put_symlink(&format!("d{}/l{i:06}", i % 7), b"f000000");
            }
        }
        let now = Instant::now();
        let mut src = Source::open(SourceConfig::default(), now, &mut s).unwrap();
        let m = src.scan(&mut s).unwrap();
        let links = n.div_ceil(1000);
        assert_eq!(m.len(), n + 7 + links);
        for i in 0..n {
            let p = format!("d{}/f{i:06}", i % 7);
            let e = &m.entries[p.as_str()];
            assert_eq!(
                e.file_hash(),
                Some(blake3::hash(format!("{i}").as_bytes()).as_bytes()),
                "{p}"
            );
        }
        assert!(m.check_shape().is_ok());
        assert_eq!(src.stats().hashed, n as u64);
        assert_eq!(src.scan(&mut s).unwrap(), m);
        s.put_file("d0/f000007", b"new", 0o644, 20);
        s.put_file(
            &format!("d{}/f{:06}", (n - 1) % 7, n - 1),
            b"last",
            0o644,
            20,
        );
        let m2 = src.scan(&mut s).unwrap();
        assert_eq!(m2.len(), m.len());
        assert_eq!(
            m2.entries["d0/f000007"].file_hash(),
            Some(blake3::hash(b"new").as_bytes())
        );
        // The two files, and the directory that holds both (its times).
        let changed: Vec<String> = m
            .diff(&m2)
            .iter()
            .map(|c| match c {
                Change::Upsert(p, _) | Change::Gone(p) => p.as_str().to_owned(),
            })
            .collect();
        let last = format!("d{}/f{:06}", (n - 1) % 7, n - 1);
        assert_eq!(changed, ["d0", "d0/f000007", last.as_str()]);
    }

    /// A source asked for `f` (holding `new`) by a replica whose old copy
    /// is `old` (`None`: it has none), its listing sent.
    fn wanted(new: &[u8], old: Option<&[u8]>) -> (Source, MemStore) {
        let mut s = MemStore::new();
        s.put_file("f", new, 0o644, 10);
        let now = Instant::now();
        let wall = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut src = Source::open(SourceConfig::default(), now, &mut s).unwrap();
        src.handle_message(now, wall, Message::Request { digest: [7; 32] }, &mut s)
            .unwrap();
        while src.poll_transmit(&mut s).is_some() {}
        let base = old.map(|old| {
            let p = ChunkParams::for_size(old.len() as u64);
            Base {
                size: old.len() as u64,
                hash: *blake3::hash(old).as_bytes(),
                avg: p.avg(),
                chunks: crate::delta::signature(old, p),
            }
        });
        let want = Message::Want {
            id: 1,
            path: RelPath::new("f").unwrap(),
            base,
        };
        src.handle_message(now, wall, want, &mut s).unwrap();
        (src, s)
    }

    /// What a source sends for one want, each message given back once
    /// encoded (`recycle`) or kept; with the literals whose buffer is one
    /// of a message given back before, and all the literals.
    fn drain(src: &mut Source, s: &mut MemStore, recycle: bool) -> (Vec<Vec<u8>>, usize, usize) {
        let mut sent = Vec::new();
        let mut kept = Vec::new();
        let mut given = std::collections::HashSet::new();
        let (mut reused, mut literals) = (0, 0);
        while let Some(m) = src.poll_transmit(s) {
            let mut bytes = Vec::new();
            m.encode(&mut bytes);
            sent.push(bytes);
            if let Message::Data { ops, .. } = &m {
                for op in ops {
                    if let Op::Literal(v) = op {
                        literals += 1;
                        reused += usize::from(given.contains(&v.as_ptr()));
                        given.insert(v.as_ptr());
                    }
                }
            }
            if recycle {
                src.recycle(m);
                assert!(src.ops.spare_bytes() <= crate::delta::MAX_SPARE_BYTES);
            } else {
                kept.push(m);
            }
        }
        (sent, reused, literals)
    }

    /// A source given back its messages sends the same bytes as one that
    /// is not, and in steady streaming fills buffers it was given back:
    /// unrelated data (literals a window at a time), an edited copy
    /// (copies and small literals), a file sent whole, an append.
    #[test]
    fn a_source_given_back_its_messages_sends_the_same_in_their_buffers() {
        let old = noise(3 << 20, 1);
        let unrelated = noise(12 << 20, 3);
        let mut edited = old.clone();
        edited[1_000_000..1_000_300].fill(7);
        edited.splice(2_000_000..2_000_000, noise(5000, 5));
        let mut appended = old.clone();
        appended.extend_from_slice(&noise(2 << 20, 7));
        let cases = [
            ("unrelated", &unrelated, Some(&old)),
            ("edited", &edited, Some(&old)),
            ("whole", &unrelated, None),
            ("appended", &appended, Some(&old)),
        ];
        for (name, new, old) in cases {
            let old = old.map(Vec::as_slice);
            let (mut a, mut sa) = wanted(new, old);
            let (plain, none, literals) = drain(&mut a, &mut sa, false);
            assert_eq!(none, 0, "{name}: kept messages hold their buffers");
            let (mut b, mut sb) = wanted(new, old);
            let (recycled, reused, same) = drain(&mut b, &mut sb, true);
            assert_eq!(recycled, plain, "{name}");
            assert_eq!(same, literals, "{name}");
            assert!(
                matches!(
                    Message::decode(plain.last().unwrap()),
                    Ok(Message::DataEnd {
                        status: DataStatus::Complete,
                        ..
                    })
                ),
                "{name}"
            );
            assert_eq!(a.stats(), b.stats(), "{name}");
            let fresh = literals - reused;
            match name {
                // Three windows: all but the first window's literals (at
                // most five messages of two, one for the chunk that ended
                // it) in buffers given back.
                "unrelated" => assert!(
                    fresh <= 10 && literals >= 20,
                    "{name}: {reused} of {literals} literals reused"
                ),
                // A message a step: all but the first.
                "whole" => assert_eq!((fresh, literals), (1, 12), "{name}"),
                _ => {}
            }
        }
    }

    /// Whatever it is given back, a source keeps at most the bounded
    /// spare memory; messages other than data are dropped.
    #[test]
    fn a_source_keeps_a_bounded_few_buffers() {
        let (mut src, _) = wanted(b"x", None);
        for i in 0..40u32 {
            let ops = (0..3)
                .map(|_| Op::Literal(vec![1; 1 << 20]))
                .chain([Op::Copy { offset: 0, len: 1 }])
                .collect();
            src.recycle(Message::Data { id: i, ops });
            src.recycle(Message::Changed);
            assert!(src.ops.spare_bytes() <= crate::delta::MAX_SPARE_BYTES);
        }
        assert!(src.ops.spare_bytes() > crate::delta::MAX_SPARE_BYTES - (1 << 20));
        assert!(src.ops.spare_buffers() <= crate::delta::MAX_SPARE_BUFFERS);
    }

    /// A round's listing is made as it is sent: after the request, only
    /// its start is queued; drained, it lists every entry, in messages of
    /// at most `MAX_CHANGES`, and ends with the manifest's count.
    #[test]
    fn a_listing_is_made_a_message_at_a_time() {
        let n = 2 * MAX_CHANGES + 100;
        let mut s = tree(n);
        let now = Instant::now();
        let mut src = Source::open(SourceConfig::default(), now, &mut s).unwrap();
        src.handle_message(
            now,
            UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            Message::Request { digest: [7; 32] },
            &mut s,
        )
        .unwrap();
        assert_eq!(src.out.len(), 1, "only the start is queued");
        assert!(src.listing.is_some());
        let mut listed = Vec::new();
        let mut messages = 0;
        loop {
            match src.poll_transmit(&mut s).unwrap() {
                Message::ManifestStart { full, .. } => assert!(full),
                Message::Entries { changes } => {
                    assert!(changes.len() <= MAX_CHANGES);
                    // One message made per call: none queued ahead of it
                    // but the listing's end.
                    assert!(
                        src.out
                            .iter()
                            .all(|m| matches!(m, Message::ManifestEnd { .. }))
                    );
                    messages += 1;
                    listed.extend(changes);
                }
                Message::ManifestEnd { entries, digest } => {
                    assert_eq!(entries, (n + 10) as u64);
                    assert_eq!(digest, src.cache.digest());
                    break;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        assert!(messages >= 3);
        assert!(src.listing.is_none());
        assert_eq!(listed, Packed::default().diff(&src.cache));
    }

    /// A confirmation before the listing it would confirm has ended is
    /// refused.
    #[test]
    fn a_confirmation_before_the_listing_ends_is_refused() {
        let mut s = tree(MAX_CHANGES + 10);
        let now = Instant::now();
        let mut src = Source::open(SourceConfig::default(), now, &mut s).unwrap();
        let wall = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        src.handle_message(now, wall, Message::Request { digest: [7; 32] }, &mut s)
            .unwrap();
        assert!(matches!(
            src.poll_transmit(&mut s),
            Some(Message::ManifestStart { .. })
        ));
        let digest = src.cache.digest();
        let r = src.handle_message(
            now,
            wall,
            Message::Committed {
                generation: 1,
                digest,
            },
            &mut s,
        );
        assert!(matches!(r, Err(SessionError::Unexpected { .. })));
        assert_eq!(src.confirmed().number, 0);
    }
}
