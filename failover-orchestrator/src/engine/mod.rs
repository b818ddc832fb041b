//! The [`Orchestrator`] engine: its public inputs, outputs and queries,
//! and the state its parts share.
//!
//! The parts, one module each:
//!
//! - `executor`: runs plans (steps, deadlines, retries, failure policies,
//!   roll-back); owns the running plans, the routes of command results and
//!   peer replies, and the command queue.
//! - `peer`: the peer protocol (hello, status heartbeats and the peer
//!   timeout, parity findings, the peer's requests and our replies); owns
//!   the peer's view and the transmit queue.
//! - `term`: Master terms and epochs (role changes, taking a term,
//!   adopting a newer epoch, stepping down, the standalone node).
//! - `takeover`: the takeover in progress, its timeline and its phone
//!   re-homing.
//! - `operator`: operator procedures (preflight, journal, resume after a
//!   restart) and the backup mode's expiry.
//!
//! Journal records and events are queued here, in the order the parts
//! produce them.

mod event;
mod executor;
mod operator;
mod peer;
mod takeover;
mod term;

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use event::{Event, Stats};
pub use executor::{PlanId, PlanOutcome};

use executor::{Executor, Route};
use peer::PeerLink;
use takeover::Timelines;

use crate::command::{CommandId, CommandOutcome, Issued};
use crate::config::Config;
use crate::epoch::Epoch;
use crate::journal::{JournalEntry, JournalRecord, PersistentState, StepMark};
use crate::phones::{PhoneOutcome, Rehoming, min_opt};
use crate::plan::{FailurePolicy, Plan, PlanKind, PlanPreview, Step, StepAction};
use crate::procedure::{OperatorRequest, PreflightError};
use crate::role_plans;
use crate::status::{ProcedureView, Status, SyncView, Timeline};
use crate::types::{PhoneId, Redundancy, Role, RoleChange, SyncStatus, ms};
use crate::wire::{self, DecodeError, PeerMessage};

/// The failover orchestrator, a Sans-IO engine.
///
/// It reacts to role changes from the election, the peer's messages, sync
/// status, operator requests and the results of the commands it issued,
/// and turns them into plans whose steps it runs with deadlines.
///
/// # Driver contract
///
/// The driver owns every clock, socket, process and file:
///
/// 1. Build it with [`Orchestrator::new`], passing the state persisted by
///    the last run ([`PersistentState::default`] on first boot), the
///    monotonic `now` and the wall clock. An interrupted procedure resumes.
/// 2. Feed every input with the current `now`:
///    [`handle_role_change`](Self::handle_role_change) for each `vrrp-fsm`
///    state change, [`handle_peer_bytes`](Self::handle_peer_bytes) for each
///    orchestrator payload from the peer link,
///    [`handle_sync_status`](Self::handle_sync_status) after every committed
///    sync generation, [`handle_command_result`](Self::handle_command_result)
///    for each finished command, [`handle_phone_registered`](Self::handle_phone_registered)
///    when the registrar sees a phone (or [`handle_phone_unchecked`](Self::handle_phone_unchecked)
///    when a phone's action was carried out and nothing can check its
///    registration), [`handle_operator`](Self::handle_operator)
///    for operator requests, and [`handle_wall_clock`](Self::handle_wall_clock)
///    from time to time (wall-clock values for the journal and timeline are
///    derived from the last one given, never read).
/// 3. After each input, drain the outputs in this order:
///    [`poll_journal`](Self::poll_journal) (persist each record durably
///    before going on), [`poll_command`](Self::poll_command) (carry each out,
///    answer with its id), [`poll_transmit`](Self::poll_transmit) (send to
///    the peer), [`poll_event`](Self::poll_event) (log / UI).
/// 4. Call [`handle_timeout`](Self::handle_timeout) no later than
///    [`poll_timeout`](Self::poll_timeout); calling it early is harmless.
///
/// Every command carries the epoch it was issued under, which is always
/// the newest this node knows; commands of a Master term that was
/// superseded are withdrawn from the queue, never emitted.
#[derive(Debug)]
pub struct Orchestrator {
    config: Config,
    state: PersistentState,
    role: Role,
    ready: bool,
    /// This node is giving the role up on purpose (release, step down):
    /// losing it is expected, not a reason for the lost-role plan.
    relinquishing: bool,
    wall_base: (Instant, SystemTime),
    sync: Option<SyncStatus>,
    exec: Executor,
    link: PeerLink,
    timelines: Timelines,
    rehoming: Option<Rehoming>,
    /// The plan whose re-homing step the re-homing completes.
    rehoming_plan: Option<PlanId>,
    next_procedure: u64,
    mode_expiry: Option<Instant>,
    journal: VecDeque<JournalRecord>,
    events: VecDeque<Event>,
    stats: Stats,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(ms).unwrap_or(0)
}

impl Orchestrator {
    /// Creates the engine; resumes the procedure recorded in `persisted`.
    /// With redundancy disabled the node starts as a standalone Master.
    #[must_use]
    pub fn new(config: Config, persisted: PersistentState, now: Instant, wall: SystemTime) -> Self {
        let mut o = Orchestrator {
            link: PeerLink::new(config.event_capacity),
            config,
            state: persisted,
            role: Role::Initialize,
            ready: false,
            relinquishing: false,
            wall_base: (now, wall),
            sync: None,
            exec: Executor::seeded(unix_ms(wall)),
            timelines: Timelines::default(),
            rehoming: None,
            rehoming_plan: None,
            next_procedure: 0,
            mode_expiry: None,
            journal: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        o.next_procedure = o.state.procedure.as_ref().map_or(0, |p| p.id + 1);
        o.arm_mode_expiry(now);
        let mut startup = Plan::new(PlanKind::Startup);
        startup.push(
            Step::new(StepAction::NodeReady)
                .timeout(o.config.timeouts.node_ready)
                .on_failure(FailurePolicy::ContinueDegraded),
        );
        o.start_plan(now, startup, None, None);
        if let Some(j) = o.state.procedure.clone() {
            o.resume(now, j);
        }
        if o.state.redundancy == Redundancy::Enabled {
            o.send_hello(now);
            o.send_status();
            o.link.start_heartbeats(now + o.config.heartbeat_interval);
        } else {
            o.become_standalone(now);
        }
        o.drive(now);
        o
    }

    /// The backup mode changed: the event, and our status to the peer at
    /// once (a Master asked to swap must know its Backup's mode, not learn
    /// it a heartbeat later).
    fn mode_changed(&mut self, mode: crate::types::BackupMode) {
        self.push_event(Event::ModeChanged(mode));
        self.send_status();
    }

    // ----- inputs -----------------------------------------------------------

    /// Re-anchors the wall clock: wall-clock values recorded after this are
    /// `wall + (later_now - now)`.
    pub fn handle_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        self.wall_base = (now, wall);
        self.arm_mode_expiry(now);
    }

    /// A role change from the election (`vrrp-fsm`'s `StateChange`).
    pub fn handle_role_change(&mut self, now: Instant, change: RoleChange) {
        self.role_changed(now, change);
    }

    /// The election heard a Master while this node was Backup. Becoming
    /// Master afterwards is a takeover (phones are re-homed), not a cold
    /// start, whether or not the peer link was ever up: the rule is "this
    /// node had heard a Master before", from the election or from the
    /// peer's status.
    pub fn handle_master_heard(&mut self, _now: Instant) {
        self.link.master_heard();
    }

    /// The transport to the peer (the peer link) is up: greet the peer at
    /// once instead of at the next heartbeat, so that both sides know each
    /// other (identity, role, mode) within a round trip of the link coming
    /// up. Harmless to call when nothing changed.
    pub fn handle_transport_up(&mut self, now: Instant) {
        self.send_hello(now);
        self.drive(now);
    }

    /// Encoded peer message from the peer link.
    ///
    /// # Errors
    /// The [`DecodeError`] when the bytes are not a message (also counted in
    /// [`Stats::decode_errors`]).
    pub fn handle_peer_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DecodeError> {
        match wire::decode(bytes) {
            Ok(msg) => {
                self.handle_peer_message(now, msg);
                Ok(())
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                Err(e)
            }
        }
    }

    /// A decoded peer message.
    pub fn handle_peer_message(&mut self, now: Instant, msg: PeerMessage) {
        self.peer_message(now, msg);
    }

    /// Generation status from sync-delta (on the Backup: the replica's last
    /// committed generation; on the Master: the last generation the replica
    /// acknowledged).
    pub fn handle_sync_status(&mut self, now: Instant, status: SyncStatus) {
        self.sync = Some(status);
        self.drive(now);
    }

    /// The registrar saw a phone register with this node.
    pub fn handle_phone_registered(&mut self, now: Instant, phone: PhoneId) {
        if !self.phone_registered(now, phone) {
            self.stats.unknown_registrations += 1;
        }
        self.drive(now);
    }

    /// The driver carried out a phone's action (for a phone that follows
    /// the address: announced the address) and has no way to check its
    /// registration. The phone is resolved as
    /// [`PhoneResult::Unchecked`](crate::PhoneResult::Unchecked), not as
    /// registered.
    pub fn handle_phone_unchecked(&mut self, now: Instant, phone: PhoneId) {
        if !self.phone_unchecked(now, phone) {
            self.stats.unknown_registrations += 1;
        }
        self.drive(now);
    }

    /// The result of a command this engine issued.
    pub fn handle_command_result(&mut self, now: Instant, id: CommandId, outcome: CommandOutcome) {
        let Some(route) = self.exec.take_route(id) else {
            self.stats.unknown_results += 1;
            return;
        };
        match route {
            Route::Phone(phone) => {
                self.phone_result(now, phone, matches!(outcome, CommandOutcome::Failed { .. }));
            }
            Route::Step { plan, step } => self.step_result(now, plan, step, id, outcome),
            Route::Loose => {}
        }
        self.drive(now);
    }

    /// An operator request. Runs preflight checks and starts the procedure.
    ///
    /// # Errors
    /// A [`PreflightError`] with the reason the procedure is refused; nothing
    /// is started then.
    pub fn handle_operator(
        &mut self,
        now: Instant,
        request: OperatorRequest,
    ) -> Result<u64, PreflightError> {
        self.start_procedure(now, request)
    }

    /// Runs a vendor-built plan (kind [`PlanKind::Custom`] recommended).
    pub fn run_plan(&mut self, now: Instant, plan: Plan) -> PlanId {
        let id = self.start_plan(now, plan, None, None);
        self.drive(now);
        id
    }

    /// Deadlines: step timeouts, readiness re-checks, phone pacing,
    /// heartbeats, the peer timeout and the mode expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.peer_timers(now);
        self.expire_mode(now);
        self.pump_rehoming(now);
        self.step_timeouts(now);
        self.drive(now);
    }

    // ----- outputs ----------------------------------------------------------

    /// When [`handle_timeout`](Self::handle_timeout) is next needed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut d = self.link.next_deadline(self.config.peer_timeout);
        d = min_opt(d, self.mode_expiry);
        d = min_opt(d, self.rehoming_deadline());
        min_opt(d, self.exec.next_deadline())
    }

    /// Next journal record to persist (before running later commands).
    #[must_use]
    pub fn poll_journal(&mut self) -> Option<JournalRecord> {
        self.journal.pop_front()
    }

    /// Next command to carry out.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Issued> {
        self.exec.poll_command()
    }

    /// Next message for the peer; encode it with [`wire::encode`].
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<PeerMessage> {
        self.link.poll_transmit()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- queries ----------------------------------------------------------

    /// The newest epoch known (this node's term when it is Master).
    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.state.highest_epoch
    }

    /// This node's role as last reported.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The persisted state as it is now.
    #[must_use]
    pub fn persistent_state(&self) -> &PersistentState {
        &self.state
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether any plan is running.
    #[must_use]
    pub fn busy(&self) -> bool {
        self.exec.busy()
    }

    /// Kinds of the plans running.
    #[must_use]
    pub fn running_plans(&self) -> Vec<(PlanId, PlanKind)> {
        self.exec.kinds()
    }

    /// Per-phone outcomes of the current or last re-homing.
    #[must_use]
    pub fn phone_outcomes(&self) -> Vec<PhoneOutcome> {
        self.rehoming_outcomes()
    }

    /// The timeline of the takeover in progress, or else the last one.
    #[must_use]
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timelines.get()
    }

    /// The status model.
    #[must_use]
    pub fn status(&self, now: Instant) -> Status {
        let wall = self.wall(now);
        let procedure = self.state.procedure.as_ref().map(|j| {
            let active_steps = self.exec.active_steps(j.id);
            ProcedureView {
                id: j.id,
                name: j.procedure.name().to_owned(),
                active_steps,
                done: j.steps.iter().filter(|s| **s == StepMark::Done).count(),
                total: j.steps.len(),
            }
        });
        Status {
            node_id: self.config.identity.node_id.clone(),
            role: self.role,
            epoch: self.state.highest_epoch,
            redundancy: self.state.redundancy,
            backup_mode: self.state.backup_mode,
            ready: self.ready,
            peer: self.link.view(),
            sync: self.sync.map(|s| SyncView {
                generation: s.generation,
                age_ms: ms(s.age(wall)),
            }),
            procedure,
            findings: self.link.findings().to_vec(),
            timeline: self.timeline().cloned(),
        }
    }

    /// Dry run of the takeover plan with its expected timeline.
    #[must_use]
    pub fn preview_takeover(&self) -> PlanPreview {
        role_plans::takeover(&self.config, PlanKind::Takeover).preview()
    }

    /// Dry run of an operator request: preflight, then the expected
    /// timeline of its plan. Nothing is started.
    ///
    /// # Errors
    /// The [`PreflightError`] that [`handle_operator`](Self::handle_operator)
    /// would return.
    pub fn preview(
        &self,
        now: Instant,
        request: &OperatorRequest,
    ) -> Result<PlanPreview, PreflightError> {
        let p = self.preflight(now, request)?;
        Ok(p.plan(&self.config).preview())
    }

    // ----- shared by the parts ------------------------------------------------

    /// The wall clock at `now`, from the last anchor the driver gave.
    fn wall(&self, now: Instant) -> SystemTime {
        let (base, wall) = self.wall_base;
        if now >= base {
            wall.checked_add(now - base).unwrap_or(wall)
        } else {
            wall.checked_sub(base - now).unwrap_or(wall)
        }
    }

    /// Queues a journal record with the persisted state as it is now.
    fn record(&mut self, now: Instant, entry: JournalEntry) {
        self.journal.push_back(JournalRecord {
            at_unix_ms: unix_ms(self.wall(now)),
            entry,
            state: self.state.clone(),
        });
    }

    /// Queues an event; the oldest is dropped (and counted) when full.
    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.event_capacity {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }
}
