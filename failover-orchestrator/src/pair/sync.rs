//! The replication side of the pair: the orders the pair engine gives and
//! the [`SyncWorker`] that carries them out on a tree.
//!
//! The pair engine decides which session runs (Master: source; Backup:
//! replica, with periodic rounds only when Active), when a round must run
//! now (before a swap, whatever the Backup's mode), and when the round in
//! progress must be settled (takeover). The worker owns the `sync-delta`
//! session and does the file work through a [`Storage`] passed to each
//! call, so a driver may run it on a thread of its own (hashing a large
//! tree then never delays an advertisement) or inline; either way it is a
//! Sans-IO engine: orders and peer messages in, messages and reports out.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use sync_delta::Message;
use sync_delta::{
    Divergence, Exclude, Exposure, OpenReport, Refusal, Replica, ReplicaConfig, ReplicaEvent,
    SessionError, Source, SourceConfig, SourceEvent, Storage,
};

/// Which session a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    /// No session (no role yet, or redundancy off).
    Idle,
    /// Master: serves its tree.
    Source,
    /// Backup: receives the Master's tree. `periodic` is off for a Passive
    /// Backup, which still runs the rounds it is asked for (before a swap).
    Replica {
        /// Rounds every interval (Active mode).
        periodic: bool,
    },
}

/// What the pair engine asks of the [`SyncWorker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOrder {
    /// Run this session from now on. A replica that becomes a source first
    /// settles its round in progress (see [`SyncOrder::Settle`]).
    Become(SyncRole),
    /// The peer link is up.
    Connected,
    /// The peer link went down.
    Disconnected,
    /// Run a round that starts after this order and report
    /// [`SyncReport::Done`] with `id` when it commits (replica), or when
    /// the replica confirms one it asked for after this order (source).
    RoundNow {
        /// Echoed in the report.
        id: u64,
    },
    /// Finish or roll back the round in progress and report the generation
    /// the tree is at ([`SyncReport::Done`] with `id`).
    Settle {
        /// Echoed in the report.
        id: u64,
    },
    /// Let the next round past the mass-deletion guard once, and run it
    /// now.
    ConfirmDeletions,
    /// A sync message from the peer.
    Deliver(Message),
}

/// The generation a node holds (or, on a source, the one its replica
/// confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStatus {
    /// Its number, 0 before the first round.
    pub number: u64,
    /// When the source took it (the source's wall clock), `None` before the
    /// first round.
    pub taken_at: Option<SystemTime>,
    /// Whether a round is in progress.
    pub round_in_progress: bool,
}

/// What a replica round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSummary {
    /// The generation now current.
    pub generation: u64,
    /// Paths that changed.
    pub changed: u64,
    /// Files whose content crossed the link.
    pub fetched: u64,
    /// Files made from a local copy.
    pub copied: u64,
    /// Files and symlinks removed (renames not counted).
    pub deleted: u64,
    /// Files made from a local copy whose old path went away.
    pub renamed: u64,
    /// Bytes of the source's sync frames delivered during the round
    /// (each message with its frame's header and trailer).
    pub received: u64,
    /// Bytes of file data the round wrote to disk (the rise of
    /// [`sync_delta::ReplicaStats::disk_bytes`]): staged files, the
    /// records and in-place writes of patched files; not the state files.
    pub written: u64,
    /// From the request to the commit.
    pub took: Duration,
}

/// What the [`SyncWorker`] reports to the pair engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncReport {
    /// A replica opened its tree (what it rolled forward, back or put in
    /// quarantine).
    Opened(OpenReport),
    /// The generation this node holds changed (replica) or its replica
    /// confirmed one (source).
    Status(GenerationStatus),
    /// A replica round committed.
    RoundDone(RoundSummary),
    /// A replica round found local changes in the way of the source's
    /// (a stray file where a directory comes, a tracked directory deleted
    /// on this unit): they were moved into a quarantine folder, or left
    /// out and fetched again, and the round went on. Comes before its
    /// [`SyncReport::RoundDone`].
    Diverged(Divergence),
    /// The mass-deletion guard refused a round; nothing changed. It is not
    /// reported as a failed round too; a round asked for is answered with
    /// an error.
    Refused(Refusal),
    /// A round failed and was rolled back: the tree is at its last whole
    /// generation. `reset` asks for the connection to start over (the
    /// session's stream is out of step).
    RoundFailed {
        /// What happened.
        why: String,
        /// Close and redial the peer link.
        reset: bool,
    },
    /// The answer to [`SyncOrder::RoundNow`] or [`SyncOrder::Settle`].
    Done {
        /// The order's id.
        id: u64,
        /// The generation after it, or why not.
        result: Result<GenerationStatus, String>,
    },
    /// The tree cannot be opened for the role asked.
    Error(String),
}

/// One line for a log: `sync round committed generation 4 (2 changed,
/// 1 fetched, …)`, ….
impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncReport::Opened(r) => {
                write!(f, "replica opened at generation {}", r.generation.number)?;
                if r.rolled_forward {
                    f.write_str(", its last round rolled forward")?;
                }
                if r.rolled_back > 0 {
                    write!(f, ", {} changes rolled back", r.rolled_back)?;
                }
                match &r.quarantined {
                    Some((folder, n)) => write!(f, ", {n} paths moved to quarantine {folder}"),
                    None => Ok(()),
                }
            }
            SyncReport::Status(g) if g.round_in_progress => {
                write!(f, "sync generation {} (a round in progress)", g.number)
            }
            SyncReport::Status(g) => write!(f, "sync generation {}", g.number),
            SyncReport::RoundDone(r) => write!(
                f,
                "sync round committed generation {} ({} changed, {} fetched, {} copied, \
                 {} renamed, {} deleted; {} bytes in, {} written, in {} ms)",
                r.generation,
                r.changed,
                r.fetched,
                r.copied,
                r.renamed,
                r.deleted,
                r.received,
                r.written,
                r.took.as_millis()
            ),
            SyncReport::Diverged(d) => {
                f.write_str("local changes in the round's way")?;
                if let Some(folder) = &d.folder {
                    write!(f, ": {} paths moved to quarantine {folder}", d.quarantined)?;
                }
                if d.missing > 0 {
                    write!(f, "; {} missing entries fetched again", d.missing)?;
                }
                Ok(())
            }
            SyncReport::Refused(why) => write!(f, "sync round refused: {why}"),
            SyncReport::RoundFailed { why, reset: false } => write!(f, "sync round failed: {why}"),
            SyncReport::RoundFailed { why, reset: true } => {
                write!(f, "sync round failed: {why}; the connection starts over")
            }
            SyncReport::Done { id, result: Ok(g) } => {
                write!(f, "sync order {id} done at generation {}", g.number)
            }
            SyncReport::Done {
                id,
                result: Err(why),
            } => write!(f, "sync order {id} failed: {why}"),
            SyncReport::Error(why) => write!(f, "sync: {why}"),
        }
    }
}

/// How the [`SyncWorker`] runs its sessions.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Paths neither sent nor deleted.
    pub exclude: Exclude,
    /// Period of an Active replica's rounds, and, on a source given change
    /// hints, of its full scans (the safety net for changes no hint named).
    pub interval: Duration,
    /// The driver gives a source change hints
    /// ([`SyncWorker::handle_hints`]): rounds are built from them, the
    /// replica is told at once, and the whole tree is walked every
    /// `interval`, after an overflow and after opening.
    pub watch: bool,
    /// With `watch`: how long hints are collected before the replica is
    /// told, so that a burst of writes makes one round.
    pub batch: Duration,
    /// A round with no message from the source for this long is rolled
    /// back (long enough for a first scan of a large tree).
    pub idle_timeout: Duration,
    /// Let every round past the mass-deletion guard.
    pub allow_mass_delete: bool,
    /// The mass-deletion guard's share of the tree's content bytes (see
    /// [`ReplicaConfig::mass_delete_fraction`]; default 0.5).
    pub mass_delete_fraction: f64,
    /// How far back lost content counts (see
    /// [`ReplicaConfig::mass_delete_window`]; default 24 h). The window
    /// is measured in the wall clock each [`SyncWorker::handle_order`]
    /// gives.
    pub mass_delete_window: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            exclude: Exclude::default(),
            interval: Duration::from_secs(60),
            watch: false,
            batch: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            allow_mass_delete: false,
            mass_delete_fraction: 0.5,
            mass_delete_window: Duration::from_secs(24 * 3600),
        }
    }
}

enum Session {
    None,
    Source(Box<Source>),
    Replica(Box<Replica>),
}

struct Track {
    seq: u64,
    started: Instant,
    received: u64,
    /// The replica's disk bytes when the round was asked for.
    disk_at_start: u64,
}

/// A message from the [`SyncWorker`] for the peer, marked with the link it
/// was made for: the worker may run behind the engine (on a thread of its
/// own), and what it made for a connection that has since gone must not
/// reach the next one (a source's answer to the last peer's request would
/// read as the answer to the new peer's).
#[derive(Debug, Clone, PartialEq)]
pub struct ForPeer {
    /// The message.
    pub message: Message,
    /// How many link changes (up, down) the worker had been told of.
    link: u64,
}

impl ForPeer {
    /// Whether it was made after the worker was told of the `changes`th
    /// link change and of none since.
    pub(crate) fn made_on(&self, changes: u64) -> bool {
        self.link == changes
    }
}

/// Carries out the pair engine's [`SyncOrder`]s on one tree.
///
/// # Driver contract
/// Feed every [`SyncOrder`] from [`crate::pair::Output::Sync`] to
/// [`SyncWorker::handle_order`] in order; call
/// [`SyncWorker::handle_timeout`] no later than
/// [`SyncWorker::poll_timeout`]; give every message from
/// [`SyncWorker::poll_transmit`] to [`crate::pair::Pair::handle_sync_message`]
/// (call it when the peer link can take more: a source reads file data as
/// it goes) and then back to [`SyncWorker::recycle`], and every report from [`SyncWorker::poll_report`] to
/// [`crate::pair::Pair::handle_sync_report`]. The engine drops a message
/// the worker made before it was told of the link's last change.
pub struct SyncWorker {
    config: SyncConfig,
    role: SyncRole,
    session: Session,
    connected: bool,
    /// Link changes ([`SyncOrder::Connected`], [`SyncOrder::Disconnected`])
    /// handled so far: the mark of every message made.
    link_changes: u64,
    /// Replica: rounds asked for (id, first round seq that answers it).
    waiting: Vec<(u64, u64)>,
    rounds_started: u64,
    round: Option<Track>,
    /// Source: rounds asked for (id, replica requests seen when asked).
    source_waiting: Vec<(u64, u64)>,
    source_requests: u64,
    /// A replica that became a source: the generation it settled at.
    settled: Option<GenerationStatus>,
    /// The peer's last request that came while this node was not a
    /// source, and when.
    early_request: Option<(Instant, Message)>,
    reports: VecDeque<SyncReport>,
}

impl std::fmt::Debug for SyncWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWorker")
            .field("role", &self.role)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

fn status_of(g: sync_delta::Generation, round: bool) -> GenerationStatus {
    GenerationStatus {
        number: g.number,
        taken_at: g.taken_at,
        round_in_progress: round,
    }
}

fn is_for_source(m: &Message) -> bool {
    matches!(
        m,
        Message::Request { .. }
            | Message::Want { .. }
            | Message::Committed { .. }
            | Message::Abandon { .. }
    )
}

impl SyncWorker {
    /// A worker with no session yet.
    #[must_use]
    pub fn new(config: SyncConfig) -> SyncWorker {
        SyncWorker {
            config,
            role: SyncRole::Idle,
            session: Session::None,
            connected: false,
            link_changes: 0,
            waiting: Vec::new(),
            rounds_started: 0,
            round: None,
            source_waiting: Vec::new(),
            source_requests: 0,
            settled: None,
            early_request: None,
            reports: VecDeque::new(),
        }
    }

    /// The session it runs.
    #[must_use]
    pub fn role(&self) -> SyncRole {
        self.role
    }

    /// The generation this node's tree is at (a replica's), if it runs a
    /// replica session.
    #[must_use]
    pub fn replica_generation(&self) -> Option<sync_delta::Generation> {
        match &self.session {
            Session::Replica(r) => Some(r.generation()),
            _ => None,
        }
    }

    /// How far the replica's round in progress has got: the files it
    /// fetches and the bytes written into them so far (see
    /// [`sync_delta::Replica::round_progress`]). `None` between rounds and
    /// on a node that runs no replica session. For a progress display:
    /// read it after any call; it never changes what the worker does.
    #[must_use]
    pub fn round_progress(&self) -> Option<sync_delta::RoundProgress> {
        match &self.session {
            Session::Replica(r) => r.round_progress(),
            _ => None,
        }
    }

    /// Carries out one order. `wall` is the wall clock at `now`: a
    /// source stamps its generations with it, and a replica's
    /// mass-deletion guard measures its window in it.
    pub fn handle_order<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        wall: SystemTime,
        order: SyncOrder,
        store: &mut S,
    ) {
        if let Session::Replica(r) = &mut self.session {
            r.handle_wall_clock(now, wall);
        }
        match order {
            SyncOrder::Become(role) => self.become_role(now, wall, role, store),
            SyncOrder::Connected => {
                self.link_changes += 1;
                self.connected = true;
                if let Session::Source(s) = &mut self.session {
                    s.handle_connected(now);
                }
                self.arm_replica(now, store);
            }
            SyncOrder::Disconnected => {
                self.link_changes += 1;
                self.connected = false;
                self.disconnect(now, store);
            }
            SyncOrder::RoundNow { id } => self.round_now(now, id, store),
            SyncOrder::Settle { id } => {
                let result = self.settle(store);
                self.reports.push_back(SyncReport::Done { id, result });
            }
            SyncOrder::ConfirmDeletions => {
                if let Session::Replica(r) = &mut self.session {
                    r.confirm_deletions();
                    // The operator looked and confirmed: the round runs now,
                    // not an interval later.
                    if self.round.is_none() {
                        r.sync_now(now);
                    }
                }
            }
            SyncOrder::Deliver(m) => self.deliver(now, wall, m, store),
        }
        self.collect(now, store);
    }

    /// When [`SyncWorker::handle_timeout`] is next needed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.session {
            Session::Replica(r) => r.poll_timeout(),
            Session::Source(s) => s.poll_timeout(),
            Session::None => None,
        }
    }

    /// Due rounds start, stalled ones roll back; a source tells its
    /// replica of hinted changes at the end of the batch.
    pub fn handle_timeout<S: Storage + ?Sized>(&mut self, now: Instant, store: &mut S) {
        match &mut self.session {
            Session::Replica(r) if r.poll_timeout().is_some_and(|t| t <= now) => {
                r.handle_timeout(now);
            }
            Session::Source(s) if s.poll_timeout().is_some_and(|t| t <= now) => {
                s.handle_timeout(now);
            }
            _ => {}
        }
        self.collect(now, store);
    }

    /// The next message for the peer. A source reads file data here, so
    /// call it as the link can take more.
    pub fn poll_transmit<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        store: &mut S,
    ) -> Option<ForPeer> {
        if !self.connected {
            return None;
        }
        let message = match &mut self.session {
            Session::None => None,
            Session::Replica(r) => {
                let m = r.poll_transmit()?;
                if matches!(m, Message::Request { .. }) {
                    self.rounds_started += 1;
                    self.round = Some(Track {
                        seq: self.rounds_started,
                        started: now,
                        received: 0,
                        disk_at_start: r.stats().disk_bytes,
                    });
                }
                Some(m)
            }
            Session::Source(s) => s.poll_transmit(store),
        }?;
        Some(ForPeer {
            message,
            link: self.link_changes,
        })
    }

    /// Gives back a message from [`SyncWorker::poll_transmit`] once it is
    /// encoded (after [`crate::pair::Pair::handle_sync_message`]): a
    /// source's next data go into its buffers rather than new memory (see
    /// [`sync_delta::Source::recycle`]; it keeps a bounded few MiB).
    /// Optional; other sessions drop it.
    pub fn recycle(&mut self, message: Message) {
        if let Session::Source(s) = &mut self.session {
            s.recycle(message);
        }
    }

    /// Dirty-path hints from the driver's change notifications (paths
    /// relative to the tree; a directory with everything below it), learnt
    /// at `wall`. Used by a source (see [`sync_delta::Source::handle_hints`]);
    /// a replica's own writes need none, so other sessions drop them. Give
    /// every hint the driver holds before the next order or message: a
    /// round stamps its snapshot with the time of the request. Dropped
    /// without [`SyncConfig::watch`], and after
    /// [`SyncWorker::handle_hints_lost`].
    pub fn handle_hints<I, P>(&mut self, now: Instant, wall: SystemTime, paths: I)
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        if !self.config.watch {
            return;
        }
        if let Session::Source(s) = &mut self.session {
            s.handle_hints(now, wall, paths);
        }
    }

    /// The driver lost hints (its queue overflowed): the next round walks
    /// the whole tree.
    pub fn handle_hint_overflow(&mut self, now: Instant, wall: SystemTime) {
        if !self.config.watch {
            return;
        }
        if let Session::Source(s) = &mut self.session {
            s.handle_overflow(now, wall);
        }
    }

    /// The driver's hints are incomplete from now on (a directory it could
    /// not watch, its watcher gone): the source walks the whole tree every
    /// round and counts its data-loss window from the last full scan its
    /// replica confirmed, and later hints are dropped, for this session
    /// and the sessions after it.
    pub fn handle_hints_lost(&mut self, now: Instant) {
        self.config.watch = false;
        if let Session::Source(s) = &mut self.session {
            s.stop_watching(now);
        }
    }

    /// Since when the Backup may lack changes (the data-loss window's
    /// start): on a source, what it knows of its unconfirmed changes (see
    /// [`sync_delta::Source::exposure`]); on a replica, the snapshot time
    /// of its generation (it cannot see changes it was not told of, so the
    /// window it gives is an upper bound). `None` without a session.
    #[must_use]
    pub fn exposure(&self) -> Option<Exposure> {
        match &self.session {
            Session::Source(s) => Some(s.exposure()),
            Session::Replica(r) => Some(match r.generation().taken_at {
                Some(t) => Exposure::Since(t),
                None => Exposure::Unbounded,
            }),
            Session::None => None,
        }
    }

    /// The next report.
    pub fn poll_report(&mut self) -> Option<SyncReport> {
        self.reports.pop_front()
    }

    fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            exclude: self.config.exclude.clone(),
            interval: self.config.interval,
            idle_timeout: self.config.idle_timeout,
            mass_delete_fraction: self.config.mass_delete_fraction,
            mass_delete_window: self.config.mass_delete_window,
            ..ReplicaConfig::default()
        }
    }

    fn become_role<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        wall: SystemTime,
        role: SyncRole,
        store: &mut S,
    ) {
        self.role = role;
        match role {
            SyncRole::Idle => {
                self.disconnect(now, store);
                self.fail_waiters("the node has no sync role");
                self.session = Session::None;
            }
            SyncRole::Source => {
                if matches!(self.session, Session::Source(_)) {
                    return;
                }
                if matches!(self.session, Session::Replica(_)) {
                    // The takeover's data: the round in progress finishes
                    // or rolls back before the tree is served.
                    self.settled = self.settle(store).ok();
                    self.fail_waiters("the node became the source");
                }
                let config = SourceConfig {
                    exclude: self.config.exclude.clone(),
                    full_scan_interval: self.config.interval,
                    batch: self.config.batch,
                };
                match Source::open(config, now, store) {
                    Ok(mut s) => {
                        if self.config.watch {
                            s.start_watching(now);
                        }
                        self.source_requests = 0;
                        self.session = Session::Source(Box::new(s));
                        // A request that came while this node was not a
                        // source yet (both units booting at once, a swap)
                        // is answered now, rather than left to the
                        // replica's idle timeout.
                        if let Some((at, m)) = self.early_request.take()
                            && self.connected
                            && now.saturating_duration_since(at) < self.config.idle_timeout
                        {
                            self.deliver(now, wall, m, store);
                        }
                    }
                    Err(e) => {
                        self.session = Session::None;
                        self.reports
                            .push_back(SyncReport::Error(format!("cannot serve the tree: {e}")));
                    }
                }
            }
            SyncRole::Replica { .. } => {
                if matches!(self.session, Session::Replica(_)) {
                    self.arm_replica(now, store);
                    return;
                }
                if let Session::Source(s) = &mut self.session {
                    s.handle_disconnected(now);
                    for (id, _) in std::mem::take(&mut self.source_waiting) {
                        self.answer_err(id, "the node became a replica");
                    }
                }
                self.settled = None;
                match Replica::open(self.replica_config(), now, store) {
                    Ok((mut r, report)) => {
                        r.handle_wall_clock(now, wall);
                        if self.config.allow_mass_delete {
                            r.confirm_deletions();
                        }
                        let status = status_of(r.generation(), false);
                        self.session = Session::Replica(Box::new(r));
                        self.reports.push_back(SyncReport::Opened(report));
                        self.reports.push_back(SyncReport::Status(status));
                        self.arm_replica(now, store);
                    }
                    Err(e) => {
                        self.session = Session::None;
                        self.reports.push_back(SyncReport::Error(format!(
                            "cannot open the tree as a replica: {e}"
                        )));
                    }
                }
            }
        }
    }

    fn periodic(&self) -> bool {
        matches!(self.role, SyncRole::Replica { periodic: true })
    }

    /// A replica runs rounds while connected and Active, or while a round
    /// it was asked for is due; a Passive one stops asking after those.
    fn arm_replica<S: Storage + ?Sized>(&mut self, now: Instant, store: &mut S) {
        let want = self.connected && (self.periodic() || !self.waiting.is_empty());
        let idle = self.round.is_none();
        if let Session::Replica(r) = &mut self.session {
            let armed = r.poll_timeout().is_some();
            if want && !armed {
                r.handle_connected(now);
            } else if !want && armed && idle && r.next_round_at().is_some() {
                // No round in progress: this only stops the schedule.
                let _ = r.handle_disconnected(now, store);
                while r.poll_transmit().is_some() {}
            }
        }
    }

    fn round_now<S: Storage + ?Sized>(&mut self, now: Instant, id: u64, store: &mut S) {
        if matches!(self.session, Session::None) {
            self.answer_err(id, "no sync session");
            return;
        }
        if !self.connected {
            self.answer_err(id, "the peer link is down");
            return;
        }
        match &mut self.session {
            Session::Replica(r) => {
                self.waiting.push((id, self.rounds_started + 1));
                if self.round.is_none() {
                    r.sync_now(now);
                }
                self.arm_replica(now, store);
            }
            Session::Source(s) => {
                s.sync_now(now);
                self.source_waiting.push((id, self.source_requests));
            }
            Session::None => {}
        }
    }

    /// Answers order `id` with why it could not be done.
    fn answer_err(&mut self, id: u64, why: &str) {
        self.reports.push_back(SyncReport::Done {
            id,
            result: Err(why.to_owned()),
        });
    }

    fn settle<S: Storage + ?Sized>(&mut self, store: &mut S) -> Result<GenerationStatus, String> {
        match &mut self.session {
            Session::Replica(r) => {
                let had = self.round.take().is_some();
                let g = r.settle(store).map_err(|e| format!("settle: {e}"))?;
                if had {
                    self.fail_round("the round was settled for a takeover", false);
                }
                Ok(status_of(g, false))
            }
            // What the replica holds, with when this node took it.
            Session::Source(s) => Ok(self
                .settled
                .unwrap_or_else(|| status_of(s.confirmed(), false))),
            Session::None => Err("no sync session".into()),
        }
    }

    fn disconnect<S: Storage + ?Sized>(&mut self, now: Instant, store: &mut S) {
        match &mut self.session {
            Session::Replica(r) => {
                if let Err(e) = r.handle_disconnected(now, store) {
                    self.reports
                        .push_back(SyncReport::Error(format!("staged files not removed: {e}")));
                }
                while r.poll_transmit().is_some() {}
                if self.round.is_some() {
                    self.fail_round("the link went down during the round", false);
                }
                self.fail_waiters("the peer link went down");
            }
            Session::Source(s) => {
                s.handle_disconnected(now);
                for (id, _) in std::mem::take(&mut self.source_waiting) {
                    self.answer_err(id, "the peer link went down");
                }
            }
            Session::None => {}
        }
    }

    fn deliver<S: Storage + ?Sized>(
        &mut self,
        now: Instant,
        wall: SystemTime,
        m: Message,
        store: &mut S,
    ) {
        let err = match &mut self.session {
            Session::Source(s) if is_for_source(&m) => {
                if matches!(m, Message::Request { .. }) {
                    self.source_requests += 1;
                }
                s.handle_message(now, wall, m, store)
                    .err()
                    .map(|e| format!("source session: {e}"))
            }
            Session::Replica(r) if !is_for_source(&m) => {
                if let Some(t) = &mut self.round {
                    t.received += sync_delta::frame::wire_len(m.encoded_len()) as u64;
                }
                match r.handle_message(now, m, store) {
                    Ok(()) => None,
                    Err(SessionError::Store(e)) => Some(format!("replica storage: {e}")),
                    Err(e) => Some(format!("replica session: {e}")),
                }
            }
            // A request before this node is a source: kept, and answered
            // if it becomes one while the replica still waits.
            _ if matches!(m, Message::Request { .. }) => {
                self.early_request = Some((now, m));
                None
            }
            // Anything else for the other role was in flight while the
            // peer changed roles; the session it belonged to is gone.
            _ => None,
        };
        if let Some(why) = err {
            self.collect(now, store);
            if matches!(self.session, Session::Replica(_)) {
                self.round = None;
                self.fail_round(&why, true);
            } else {
                self.reports
                    .push_back(SyncReport::RoundFailed { why, reset: true });
            }
        }
    }

    fn fail_round(&mut self, why: &str, reset: bool) {
        self.reports.push_back(SyncReport::RoundFailed {
            why: why.to_owned(),
            reset,
        });
        self.answer_waiters(self.rounds_started, &Err(why.to_owned()));
    }

    /// Answers the rounds asked for that round `seq` serves; the rest wait.
    fn answer_waiters(&mut self, seq: u64, result: &Result<GenerationStatus, String>) {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, min)| *min <= seq);
        self.waiting = rest;
        for (id, _) in due {
            self.reports.push_back(SyncReport::Done {
                id,
                result: result.clone(),
            });
        }
    }

    fn fail_waiters(&mut self, why: &str) {
        for (id, _) in std::mem::take(&mut self.waiting) {
            self.reports.push_back(SyncReport::Done {
                id,
                result: Err(why.to_owned()),
            });
        }
    }

    /// Turns the session's events into reports.
    fn collect<S: Storage + ?Sized>(&mut self, now: Instant, store: &mut S) {
        match &mut self.session {
            Session::None => {}
            Session::Source(s) => {
                let mut confirmed = Vec::new();
                while let Some(e) = s.poll_event() {
                    match e {
                        SourceEvent::Confirmed {
                            generation,
                            taken_at,
                        } => confirmed.push((generation, taken_at)),
                        SourceEvent::Abandoned => {
                            let requests = self.source_requests;
                            let (due, rest): (Vec<_>, Vec<_>) =
                                std::mem::take(&mut self.source_waiting)
                                    .into_iter()
                                    .partition(|(_, at)| requests > *at);
                            self.source_waiting = rest;
                            for (id, _) in due {
                                self.reports.push_back(SyncReport::Done {
                                    id,
                                    result: Err("the replica abandoned the round".into()),
                                });
                            }
                        }
                        // Scans and events added later only inform.
                        _ => {}
                    }
                }
                for (generation, taken_at) in confirmed {
                    // What the replica holds, stamped with the time this
                    // source took it (not the time it was confirmed, which
                    // would under-report the data's age).
                    let st = GenerationStatus {
                        number: generation,
                        taken_at: Some(taken_at),
                        round_in_progress: false,
                    };
                    self.reports.push_back(SyncReport::Status(st));
                    let requests = self.source_requests;
                    let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.source_waiting)
                        .into_iter()
                        .partition(|(_, at)| requests > *at);
                    self.source_waiting = rest;
                    for (id, _) in due {
                        self.reports
                            .push_back(SyncReport::Done { id, result: Ok(st) });
                    }
                    if !self.source_waiting.is_empty()
                        && let Session::Source(s) = &mut self.session
                    {
                        s.sync_now(now);
                    }
                }
            }
            Session::Replica(r) => {
                let mut events = Vec::new();
                while let Some(e) = r.poll_event() {
                    events.push(e);
                }
                let status = status_of(r.generation(), false);
                let disk_now = r.stats().disk_bytes;
                for e in events {
                    match e {
                        ReplicaEvent::Committed {
                            generation,
                            changed,
                            fetched,
                            copied,
                            deleted,
                            renamed,
                        } => {
                            let track = self.round.take();
                            let seq = track.as_ref().map_or(self.rounds_started, |t| t.seq);
                            let summary = RoundSummary {
                                generation,
                                changed,
                                fetched,
                                copied,
                                deleted,
                                renamed,
                                received: track.as_ref().map_or(0, |t| t.received),
                                written: track
                                    .as_ref()
                                    .map_or(0, |t| disk_now.saturating_sub(t.disk_at_start)),
                                took: track.map_or(Duration::ZERO, |t| now - t.started),
                            };
                            self.reports.push_back(SyncReport::RoundDone(summary));
                            self.reports.push_back(SyncReport::Status(status));
                            self.answer_waiters(seq, &Ok(status));
                        }
                        ReplicaEvent::Refused(why) => {
                            // Reported once, as a refusal: nothing was
                            // changed, so it is no failed round.
                            self.round = None;
                            self.reports.push_back(SyncReport::Refused(why));
                            let seq = self.rounds_started;
                            self.answer_waiters(seq, &Err(format!("round refused: {why}")));
                        }
                        ReplicaEvent::Diverged(d) => {
                            self.reports.push_back(SyncReport::Diverged(d));
                        }
                        ReplicaEvent::TimedOut => {
                            self.round = None;
                            self.fail_round("the round stalled and was rolled back", true);
                        }
                        // Skipped files are retried next round; events added
                        // later only inform.
                        _ => {}
                    }
                }
                if self.config.allow_mass_delete
                    && let Session::Replica(r) = &mut self.session
                {
                    r.confirm_deletions();
                }
                if !self.waiting.is_empty()
                    && self.round.is_none()
                    && let Session::Replica(r) = &mut self.session
                {
                    r.sync_now(now);
                }
                self.arm_replica(now, store);
            }
        }
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn a_round_and_a_failed_order_read_as_log_lines() {
        let round = SyncReport::RoundDone(RoundSummary {
            generation: 4,
            changed: 3,
            fetched: 2,
            copied: 1,
            deleted: 0,
            renamed: 5,
            received: 4096,
            written: 8192,
            took: Duration::from_millis(12),
        });
        assert_eq!(
            round.to_string(),
            "sync round committed generation 4 (3 changed, 2 fetched, 1 copied, 5 renamed, \
             0 deleted; 4096 bytes in, 8192 written, in 12 ms)"
        );
        let failed = SyncReport::Done {
            id: 7,
            result: Err("no peer".into()),
        };
        assert_eq!(failed.to_string(), "sync order 7 failed: no peer");
    }
}
