//! The `Orchestrator` engine.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandId, CommandOutcome, Issued};
use crate::config::Config;
use crate::epoch::Epoch;
use crate::journal::{JournalEntry, JournalRecord, PersistentState, ProcedureJournal, StepMark};
use crate::phones::{PhoneOutcome, Rehoming, min_opt};
use crate::plan::{FailurePolicy, PeerCondition, Plan, PlanKind, PlanPreview, Step, StepAction};
use crate::procedure::{OperatorRequest, ParityField, PreflightError, Procedure, ProcedureOutcome};
use crate::role_plans;
use crate::status::{
    Finding, Milestone, PeerView, ProcedureView, Status, SyncView, Timeline, TimelineEntry,
};
use crate::types::{
    BackupMode, Identity, MAX_DURATION, PhoneId, Redundancy, Role, RoleChange, RoleChangeReason,
    ServiceId, SyncStatus, ms,
};
use crate::wire::{
    self, DecodeError, PeerBody, PeerMessage, PeerRequest, PeerStatusReport, ReplyOutcome,
};

/// Identifies a running plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanId(pub u64);

/// How a plan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanOutcome {
    /// Every step done.
    Completed,
    /// Finished with steps failed under `ContinueDegraded`.
    Degraded,
    /// Stopped by a failed step or by a role change.
    Aborted,
}

/// Something for the log or the UI.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The election changed this node's role.
    RoleChanged(RoleChange),
    /// This node took a Master term.
    TermTaken(Epoch),
    /// A newer epoch was learnt from the peer.
    EpochAdopted(Epoch),
    /// This node was Master under an older epoch than the peer's: it steps
    /// down (a healed split brain).
    Superseded {
        /// The peer's newer epoch.
        by: Epoch,
    },
    /// A peer message from an older epoch was refused.
    StaleRefused {
        /// Its epoch.
        epoch: Epoch,
        /// Ours.
        newest: Epoch,
    },
    /// The peer's heartbeats arrive.
    PeerUp,
    /// The peer's heartbeats stopped.
    PeerDown,
    /// The parity findings changed.
    FindingsChanged(Vec<Finding>),
    /// A plan started.
    PlanStarted {
        /// Plan id.
        plan: PlanId,
        /// What for.
        kind: PlanKind,
    },
    /// A step started (attempt 0 is the first).
    StepStarted {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
        /// Attempt.
        attempt: u8,
    },
    /// A step finished.
    StepDone {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
    },
    /// A step failed after its retries.
    StepFailed {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
        /// The policy applied.
        policy: FailurePolicy,
    },
    /// A plan ended.
    PlanFinished {
        /// Plan id.
        plan: PlanId,
        /// What for.
        kind: PlanKind,
        /// How.
        outcome: PlanOutcome,
    },
    /// A procedure started or resumed.
    ProcedureStarted {
        /// Procedure id.
        id: u64,
        /// What it does.
        procedure: Procedure,
    },
    /// A procedure ended.
    ProcedureFinished {
        /// Procedure id.
        id: u64,
        /// How.
        outcome: ProcedureOutcome,
    },
    /// A takeover milestone.
    Milestone(TimelineEntry),
    /// A phone must be moved by a person.
    PhoneNeedsPerson {
        /// The phone.
        phone: PhoneId,
        /// Why.
        reason: crate::config::PersonReason,
    },
    /// Backup mode changed.
    ModeChanged(BackupMode),
    /// A peer request was refused.
    RequestRefused {
        /// Request id.
        id: u32,
    },
}

/// Counters, for a daemon's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Commands issued.
    pub commands_issued: u64,
    /// Results for unknown or already-finished commands.
    pub unknown_results: u64,
    /// Peer messages that did not decode.
    pub decode_errors: u64,
    /// Peer messages refused for an older epoch.
    pub stale_epoch: u64,
    /// Peer messages ignored (redundancy disabled, incompatible protocol).
    pub peer_ignored: u64,
    /// Step attempts that timed out.
    pub step_timeouts: u64,
    /// Step attempts retried.
    pub step_retries: u64,
    /// Steps failed after their retries.
    pub steps_failed: u64,
    /// Peer up/down transitions.
    pub peer_flaps: u64,
    /// Peer requests refused.
    pub requests_refused: u64,
    /// Replies that matched no request.
    pub unknown_replies: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Registrations of unknown phones or outside a re-homing.
    pub unknown_registrations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Command(CommandId),
    Start(CommandId),
    Check(CommandId),
    Recheck(Instant),
    Reply(u32),
    Condition,
    Rehoming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Pending,
    Active {
        attempt: u8,
        deadline: Instant,
        wait: Wait,
    },
    Done,
    Failed,
    Skipped,
}

impl Mark {
    fn finished_ok(self) -> bool {
        matches!(self, Mark::Done | Mark::Failed)
    }
    fn terminal(self) -> bool {
        matches!(self, Mark::Done | Mark::Failed | Mark::Skipped)
    }
}

#[derive(Debug, Clone)]
struct Running {
    id: PlanId,
    plan: Plan,
    marks: Vec<Mark>,
    procedure: Option<u64>,
    reply_to: Option<u32>,
    aborted: bool,
    /// Resumed after the peer had been armed for a swap: if the peer is now
    /// Master, the restart itself completed the hand-over.
    armed_before_restart: bool,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Step {
        plan: PlanId,
        step: u16,
    },
    Phone(PhoneId),
    /// Fire and forget (mode expiry); the result is only acknowledged.
    Loose,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    identity: Option<Identity>,
    /// A Master peer was heard since boot: becoming Master now is a
    /// takeover (phones must move), not a cold start.
    seen_master: bool,
    last: Option<PeerStatusReport>,
    last_heard: Option<Instant>,
    up: bool,
}

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
///    when the registrar sees a phone, [`handle_operator`](Self::handle_operator)
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
    relinquishing: bool,
    wall_base: (Instant, SystemTime),
    peer: Peer,
    sync: Option<SyncStatus>,
    plans: Vec<Running>,
    next_plan: u64,
    next_procedure: u64,
    routes: HashMap<CommandId, Route>,
    requests: HashMap<u32, (PlanId, u16)>,
    next_command: u64,
    next_request: u32,
    rehoming: Option<Rehoming>,
    rehoming_plan: Option<PlanId>,
    timeline: Option<Timeline>,
    timeline_start: Option<Instant>,
    last_timeline: Option<Timeline>,
    commands: VecDeque<Issued>,
    transmits: VecDeque<PeerMessage>,
    events: VecDeque<Event>,
    journal: VecDeque<JournalRecord>,
    next_heartbeat: Option<Instant>,
    /// When this node last sent a hello (to answer a restarted peer's
    /// hello without two hellos echoing).
    hello_sent_at: Option<Instant>,
    mode_expiry: Option<Instant>,
    findings: Vec<Finding>,
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
            config,
            state: persisted,
            role: Role::Initialize,
            ready: false,
            relinquishing: false,
            wall_base: (now, wall),
            peer: Peer::default(),
            sync: None,
            plans: Vec::new(),
            next_plan: 0,
            next_procedure: 0,
            routes: HashMap::new(),
            requests: HashMap::new(),
            next_command: 0,
            next_request: 0,
            rehoming: None,
            rehoming_plan: None,
            timeline: None,
            timeline_start: None,
            last_timeline: None,
            commands: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            journal: VecDeque::new(),
            next_heartbeat: None,
            hello_sent_at: None,
            mode_expiry: None,
            findings: Vec::new(),
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
            o.next_heartbeat = Some(now + o.config.heartbeat_interval);
        } else {
            o.become_standalone(now);
        }
        o.drive(now);
        o
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
        let prev = self.role;
        self.role = change.to;
        self.push_event(Event::RoleChanged(change));
        if self.state.redundancy == Redundancy::Disabled {
            // Standalone: the election is off; ignore late reports.
            self.role = Role::Master;
            return;
        }
        if change.to == Role::Master && prev != Role::Master {
            let takeover = self.peer.seen_master
                || matches!(
                    change.reason,
                    RoleChangeReason::SwapTakeover | RoleChangeReason::PeerReleased
                );
            let kind = if prev == Role::Backup && takeover {
                PlanKind::Takeover
            } else {
                PlanKind::ColdStart
            };
            self.take_term(now, kind, Some(change.reason));
        } else if prev == Role::Master && change.to != Role::Master {
            self.abort_role_plans(now, false);
            if !self.relinquishing {
                // RFC 9568 §6.4.3 / DESIGN.md §5: the address goes at once,
                // before services stop, so that two nodes never hold it.
                let p = role_plans::lost_role(&self.config);
                self.start_plan(now, p, None, None);
            }
            self.relinquishing = false;
            self.send_status();
        }
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
        if self.state.redundancy == Redundancy::Disabled {
            self.stats.peer_ignored += 1;
            return;
        }
        let newest = self.state.highest_epoch;
        if msg.epoch < newest {
            self.stats.stale_epoch += 1;
            self.push_event(Event::StaleRefused {
                epoch: msg.epoch,
                newest,
            });
            return;
        }
        if msg.epoch > newest {
            self.adopt_epoch(now, msg.epoch);
        }
        let was_up = self.peer.up;
        self.peer.last_heard = Some(now);
        if !was_up {
            self.peer.up = true;
            self.stats.peer_flaps += 1;
            self.push_event(Event::PeerUp);
            self.send_hello(now);
        }
        match msg.body {
            PeerBody::Hello(identity) => {
                // A hello starts a new acquaintance: the status heard
                // before it may be from before the peer restarted.
                self.peer.last = None;
                // A peer that greets us while we already count it as up
                // restarted faster than the peer timeout and has forgotten
                // who we are: greet it back. Not when we greeted it within
                // a heartbeat interval, so that two hellos never echo.
                let greeted_lately = self.hello_sent_at.is_some_and(|t| {
                    now.saturating_duration_since(t) < self.config.heartbeat_interval
                });
                if was_up && !greeted_lately {
                    self.send_hello(now);
                }
                self.peer.identity = Some(identity);
                self.update_findings();
            }
            PeerBody::Status(report) => {
                self.peer.seen_master |= report.role == Role::Master;
                self.peer.last = Some(report);
            }
            PeerBody::Request { id, request } => self.handle_request(now, id, request),
            PeerBody::Reply { id, outcome } => self.handle_reply(now, id, outcome),
        }
        self.drive(now);
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
        let known = self
            .rehoming
            .as_mut()
            .is_some_and(|r| r.registered(now, phone));
        if !known {
            self.stats.unknown_registrations += 1;
        }
        self.pump_rehoming(now);
        self.drive(now);
    }

    /// The result of a command this engine issued.
    pub fn handle_command_result(&mut self, now: Instant, id: CommandId, outcome: CommandOutcome) {
        let Some(route) = self.routes.remove(&id) else {
            self.stats.unknown_results += 1;
            return;
        };
        match route {
            Route::Phone(phone) => {
                if matches!(outcome, CommandOutcome::Failed { .. }) {
                    if let Some(r) = self.rehoming.as_mut() {
                        r.action_failed(now, phone);
                    }
                    self.pump_rehoming(now);
                }
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
        let procedure = self.preflight(now, &request)?;
        let id = self.next_procedure;
        self.next_procedure += 1;
        // Persisted effects that hold from the start.
        match &procedure {
            Procedure::SetBackupMode {
                mode,
                expires_unix_s,
                on_peer: false,
            } => {
                self.state.backup_mode = *mode;
                self.state.mode_expires_unix_s = *expires_unix_s;
                self.arm_mode_expiry(now);
                self.push_event(Event::ModeChanged(*mode));
            }
            Procedure::SetRedundancy(r) => self.state.redundancy = *r,
            _ => {}
        }
        let plan = procedure.plan(&self.config);
        let journal = ProcedureJournal {
            id,
            procedure: procedure.clone(),
            steps: vec![StepMark::Pending; plan.steps.len()],
            started_unix_ms: unix_ms(self.wall(now)),
        };
        self.state.procedure = Some(journal);
        self.record(now, JournalEntry::ProcedureStarted { id });
        self.push_event(Event::ProcedureStarted { id, procedure });
        self.start_plan(now, plan, Some(id), None);
        self.drive(now);
        Ok(id)
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
        // Heartbeats.
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            let t = self.next_heartbeat.unwrap_or(now);
            self.send_status();
            let mut next = t + self.config.heartbeat_interval;
            if next <= now {
                next = now + self.config.heartbeat_interval;
            }
            self.next_heartbeat = Some(next);
        }
        // Peer timeout.
        if self.peer.up
            && self
                .peer
                .last_heard
                .is_some_and(|h| h + self.config.peer_timeout <= now)
        {
            self.peer.up = false;
            self.peer.last = None;
            self.stats.peer_flaps += 1;
            self.push_event(Event::PeerDown);
        }
        // Mode expiry.
        if self.mode_expiry.is_some_and(|t| t <= now) {
            self.mode_expiry = None;
            self.state.mode_expires_unix_s = None;
            if self.state.backup_mode != BackupMode::Active {
                self.state.backup_mode = BackupMode::Active;
                self.record(now, JournalEntry::ModeChanged(BackupMode::Active));
                self.push_event(Event::ModeChanged(BackupMode::Active));
                self.issue(Command::SetBackupMode(BackupMode::Active), Route::Loose);
            }
        }
        // Phones.
        self.pump_rehoming(now);
        // Steps.
        let mut due = Vec::new();
        for r in &self.plans {
            for (i, m) in r.marks.iter().enumerate() {
                if let Mark::Active { deadline, wait, .. } = *m {
                    let idx = u16::try_from(i).unwrap_or(u16::MAX);
                    if deadline <= now {
                        due.push((r.id, idx, true));
                    } else if matches!(wait, Wait::Recheck(t) if t <= now) {
                        due.push((r.id, idx, false));
                    }
                }
            }
        }
        for (plan, step, expired) in due {
            if expired {
                self.stats.step_timeouts += 1;
                self.attempt_failed(now, plan, step);
            } else {
                self.recheck(now, plan, step);
            }
        }
        self.drive(now);
    }

    // ----- outputs ----------------------------------------------------------

    /// When [`handle_timeout`](Self::handle_timeout) is next needed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut d = self.next_heartbeat;
        if self.peer.up {
            d = min_opt(
                d,
                self.peer.last_heard.map(|h| h + self.config.peer_timeout),
            );
        }
        d = min_opt(d, self.mode_expiry);
        if let Some(r) = &self.rehoming {
            d = min_opt(d, r.next_deadline());
        }
        for r in &self.plans {
            for m in &r.marks {
                if let Mark::Active { deadline, wait, .. } = *m {
                    d = min_opt(d, Some(deadline));
                    if let Wait::Recheck(t) = wait {
                        d = min_opt(d, Some(t));
                    }
                }
            }
        }
        d
    }

    /// Next journal record to persist (before running later commands).
    #[must_use]
    pub fn poll_journal(&mut self) -> Option<JournalRecord> {
        self.journal.pop_front()
    }

    /// Next command to carry out.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Issued> {
        self.commands.pop_front()
    }

    /// Next message for the peer; encode it with [`wire::encode`].
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<PeerMessage> {
        self.transmits.pop_front()
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
        !self.plans.is_empty()
    }

    /// Kinds of the plans running.
    #[must_use]
    pub fn running_plans(&self) -> Vec<(PlanId, PlanKind)> {
        self.plans.iter().map(|r| (r.id, r.plan.kind)).collect()
    }

    /// Per-phone outcomes of the current or last re-homing.
    #[must_use]
    pub fn phone_outcomes(&self) -> Vec<PhoneOutcome> {
        self.rehoming
            .as_ref()
            .map(Rehoming::outcomes)
            .unwrap_or_default()
    }

    /// The timeline of the takeover in progress, or else the last one.
    #[must_use]
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref().or(self.last_timeline.as_ref())
    }

    /// The status model.
    #[must_use]
    pub fn status(&self, now: Instant) -> Status {
        let wall = self.wall(now);
        let procedure = self.state.procedure.as_ref().map(|j| {
            let running = self.plans.iter().find(|r| r.procedure == Some(j.id));
            let active_steps = running
                .map(|r| {
                    r.marks
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| matches!(m, Mark::Active { .. }))
                        .map(|(i, _)| {
                            (
                                u16::try_from(i).unwrap_or(u16::MAX),
                                r.plan
                                    .steps
                                    .get(i)
                                    .map(|s| s.action.to_string())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
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
            peer: self.peer.identity.as_ref().map(|id| PeerView {
                id: id.node_id.clone(),
                up: self.peer.up,
                role: self.peer.last.map(|s| s.role),
                mode: self.peer.last.map(|s| s.mode),
                firmware: id.firmware.clone(),
                protocol: id.protocol,
                ready: self.peer.last.is_some_and(|s| s.ready),
                sync_generation: self.peer.last.and_then(|s| s.sync_generation),
            }),
            sync: self.sync.map(|s| SyncView {
                generation: s.generation,
                age_ms: ms(s.age(wall)),
            }),
            procedure,
            findings: self.findings.clone(),
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

    // ----- internals: epochs and roles ---------------------------------------

    fn wall(&self, now: Instant) -> SystemTime {
        let (base, wall) = self.wall_base;
        if now >= base {
            wall.checked_add(now - base).unwrap_or(wall)
        } else {
            wall.checked_sub(base - now).unwrap_or(wall)
        }
    }

    fn arm_mode_expiry(&mut self, now: Instant) {
        // The expiry may come from the peer: never overflow, and cap it.
        self.mode_expiry = self.state.mode_expires_unix_s.map(|s| {
            let left = UNIX_EPOCH
                .checked_add(Duration::from_secs(s))
                .and_then(|expires| expires.duration_since(self.wall(now)).ok())
                .map_or(MAX_DURATION, |d| d.min(MAX_DURATION));
            if s == 0 { now } else { now + left }
        });
    }

    fn record(&mut self, now: Instant, entry: JournalEntry) {
        self.journal.push_back(JournalRecord {
            at_unix_ms: unix_ms(self.wall(now)),
            entry,
            state: self.state.clone(),
        });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.event_capacity {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn take_term(&mut self, now: Instant, kind: PlanKind, reason: Option<RoleChangeReason>) {
        let epoch = self.state.highest_epoch.next_term(self.config.node);
        self.state.highest_epoch = epoch;
        self.relinquishing = false;
        self.record(now, JournalEntry::TermTaken(epoch));
        self.push_event(Event::TermTaken(epoch));
        self.abort_role_plans(now, true);
        self.start_takeover(now, kind, reason, epoch);
        self.send_status();
    }

    fn become_standalone(&mut self, now: Instant) {
        self.next_heartbeat = None;
        if self.role != Role::Master {
            self.role = Role::Master;
            self.take_term(now, PlanKind::ColdStart, None);
        }
    }

    fn adopt_epoch(&mut self, now: Instant, epoch: Epoch) {
        self.state.highest_epoch = epoch;
        self.record(now, JournalEntry::EpochAdopted(epoch));
        self.push_event(Event::EpochAdopted(epoch));
        if self.role == Role::Master && !self.relinquishing {
            // Split brain healed: the peer holds a newer term. Leave at once.
            self.push_event(Event::Superseded { by: epoch });
            self.abort_role_plans(now, true);
            let mut p = role_plans::lost_role(&self.config);
            p.push(
                Step::new(StepAction::Run(Command::StepDown))
                    .timeout(self.config.timeouts.command)
                    .retries(1)
                    .on_failure(FailurePolicy::ContinueDegraded),
            );
            self.relinquishing = true;
            self.start_plan(now, p, None, None);
        }
        self.restamp();
    }

    /// Every queued command is re-stamped with the newest epoch; commands
    /// whose plan was aborted were already withdrawn.
    fn restamp(&mut self) {
        self.withdraw_orphans();
        let e = self.state.highest_epoch;
        for c in &mut self.commands {
            c.epoch = e;
        }
    }

    /// Queued commands whose step was cancelled or whose plan was aborted
    /// are withdrawn before the driver sees them.
    fn withdraw_orphans(&mut self) {
        let routes = &self.routes;
        self.commands.retain(|c| routes.contains_key(&c.id));
    }

    /// Aborts the Master-term plans; with `all`, also those that give the
    /// role up (a new term claims everything again).
    fn abort_role_plans(&mut self, now: Instant, all: bool) {
        let ids: Vec<PlanId> = self
            .plans
            .iter()
            .filter(|r| match r.plan.kind {
                PlanKind::Takeover | PlanKind::ColdStart => true,
                PlanKind::HandBack | PlanKind::LostRole | PlanKind::RollBack => all,
                _ => false,
            })
            .map(|r| r.id)
            .collect();
        for id in ids {
            self.abort_plan(now, id, false);
        }
        if let Some(r) = self.rehoming.as_mut().filter(|r| !r.done()) {
            r.give_up(now);
        }
        self.routes.retain(|_, r| !matches!(r, Route::Phone(_)));
        self.restamp();
    }

    fn start_takeover(
        &mut self,
        now: Instant,
        kind: PlanKind,
        reason: Option<RoleChangeReason>,
        epoch: Epoch,
    ) {
        let p = role_plans::takeover(&self.config, kind);
        self.timeline = Some(Timeline {
            kind,
            reason,
            epoch,
            entries: Vec::new(),
            generation: None,
            data_loss_window_ms: None,
            phones: Vec::new(),
        });
        self.timeline_start = Some(now);
        self.milestone(now, Milestone::Detected);
        self.rehoming = if kind == PlanKind::Takeover && !self.config.phones.is_empty() {
            Some(Rehoming::new(self.config.rehome, &self.config.phones))
        } else {
            None
        };
        let id = self.start_plan(now, p, None, None);
        self.rehoming_plan = Some(id);
    }

    fn milestone(&mut self, now: Instant, what: Milestone) {
        let Some(start) = self.timeline_start else {
            return;
        };
        let entry = TimelineEntry {
            at_ms: ms(now.saturating_duration_since(start)),
            unix_ms: unix_ms(self.wall(now)),
            what,
        };
        if let Some(t) = self.timeline.as_mut() {
            t.entries.push(entry.clone());
            self.push_event(Event::Milestone(entry));
        }
    }

    // ----- internals: peer ----------------------------------------------------

    fn send(&mut self, body: PeerBody) {
        if self.state.redundancy == Redundancy::Disabled {
            return;
        }
        if self.transmits.len() >= self.config.event_capacity {
            self.transmits.pop_front();
        }
        self.transmits.push_back(PeerMessage {
            epoch: self.state.highest_epoch,
            body,
        });
    }

    fn send_hello(&mut self, now: Instant) {
        self.hello_sent_at = Some(now);
        self.send(PeerBody::Hello(self.config.identity.clone()));
    }

    fn send_status(&mut self) {
        let report = PeerStatusReport {
            role: self.role,
            mode: self.state.backup_mode,
            redundancy: self.state.redundancy,
            sync_generation: self.sync.map(|s| s.generation),
            ready: self.ready,
            busy: self.state.procedure.is_some(),
        };
        self.send(PeerBody::Status(report));
    }

    fn update_findings(&mut self) {
        let mut f = Vec::new();
        if let Some(p) = &self.peer.identity {
            let ours = &self.config.identity;
            if ours.firmware != p.firmware {
                f.push(Finding {
                    field: ParityField::Firmware,
                    ours: ours.firmware.clone(),
                    theirs: p.firmware.clone(),
                });
            }
            if ours.language_pack != p.language_pack {
                f.push(Finding {
                    field: ParityField::LanguagePack,
                    ours: ours.language_pack.clone(),
                    theirs: p.language_pack.clone(),
                });
            }
            let mut a = ours.licences.clone();
            let mut b = p.licences.clone();
            a.sort();
            a.dedup();
            b.sort();
            b.dedup();
            if a != b {
                f.push(Finding {
                    field: ParityField::Licences,
                    ours: a.join(","),
                    theirs: b.join(","),
                });
            }
            if !ours.protocol.compatible_with(p.protocol) {
                f.push(Finding {
                    field: ParityField::Protocol,
                    ours: ours.protocol.to_string(),
                    theirs: p.protocol.to_string(),
                });
            }
        }
        if f != self.findings {
            self.findings = f.clone();
            self.push_event(Event::FindingsChanged(f));
        }
    }

    fn peer_compatible(&self) -> bool {
        self.peer
            .identity
            .as_ref()
            .is_some_and(|p| self.config.identity.protocol.compatible_with(p.protocol))
    }

    fn handle_request(&mut self, now: Instant, id: u32, request: PeerRequest) {
        if self
            .plans
            .iter()
            .any(|r| r.reply_to == Some(id) && r.plan.kind == PlanKind::PeerRequest)
        {
            return; // a retry of a request still running
        }
        let t = self.config.timeouts;
        let refuse = !self.peer_compatible()
            || match &request {
                PeerRequest::Arm { .. }
                | PeerRequest::Upgrade { .. }
                | PeerRequest::SetMode { .. } => self.role != Role::Backup,
                _ => false,
            };
        if refuse {
            self.stats.requests_refused += 1;
            self.push_event(Event::RequestRefused { id });
            self.send(PeerBody::Reply {
                id,
                outcome: ReplyOutcome::Refused,
            });
            return;
        }
        let mut p = Plan::new(PlanKind::PeerRequest);
        match request {
            PeerRequest::SetMode {
                mode,
                expires_unix_s,
            } => {
                self.state.backup_mode = mode;
                self.state.mode_expires_unix_s = expires_unix_s;
                self.arm_mode_expiry(now);
                self.record(now, JournalEntry::ModeChanged(mode));
                self.push_event(Event::ModeChanged(mode));
                p.push(
                    Step::new(StepAction::Run(Command::SetBackupMode(mode)))
                        .timeout(t.command)
                        .retries(1),
                );
            }
            PeerRequest::SyncNow { full } => {
                p.push(Step::new(StepAction::Run(Command::SyncNow { full })).timeout(t.sync));
            }
            PeerRequest::Arm { priority } => {
                p.push(
                    Step::new(StepAction::Run(Command::ArmTakeover { priority }))
                        .timeout(t.command),
                );
            }
            PeerRequest::Upgrade {
                firmware,
                language_pack,
            } => {
                let mut deps = Vec::new();
                if let Some(pack) = language_pack {
                    deps.push(
                        p.push(
                            Step::new(StepAction::Run(Command::UpgradeLanguagePack { pack }))
                                .timeout(t.upgrade),
                        ),
                    );
                }
                p.push(
                    Step::new(StepAction::Run(Command::UpgradeFirmware {
                        version: firmware,
                    }))
                    .after(&deps)
                    .timeout(t.upgrade),
                );
            }
            PeerRequest::Restart => {
                p.push(Step::new(StepAction::Run(Command::RestartNode)).timeout(t.command));
            }
        }
        self.start_plan(now, p, None, Some(id));
    }

    fn handle_reply(&mut self, now: Instant, id: u32, outcome: ReplyOutcome) {
        let Some((plan, step)) = self.requests.remove(&id) else {
            self.stats.unknown_replies += 1;
            return;
        };
        let Some(Mark::Active {
            wait: Wait::Reply(w),
            ..
        }) = self.mark(plan, step)
        else {
            self.stats.unknown_replies += 1;
            return;
        };
        if w != id {
            self.stats.unknown_replies += 1;
            return;
        }
        if outcome == ReplyOutcome::Done {
            self.step_done(now, plan, step);
        } else {
            self.attempt_failed(now, plan, step);
        }
    }

    fn peer_meets(&self, c: &PeerCondition) -> bool {
        let Some(s) = self.peer.last else {
            return false;
        };
        self.peer.up
            && c.role.is_none_or(|r| r == s.role)
            && c.mode.is_none_or(|m| m == s.mode)
            && (!c.ready || s.ready)
            && c.firmware.as_ref().is_none_or(|f| {
                self.peer
                    .identity
                    .as_ref()
                    .is_some_and(|p| &p.firmware == f)
            })
    }

    // ----- internals: preflight and procedures -----------------------------------

    fn preflight(
        &self,
        now: Instant,
        request: &OperatorRequest,
    ) -> Result<Procedure, PreflightError> {
        if let Some(j) = &self.state.procedure {
            return Err(PreflightError::ProcedureRunning(j.id));
        }
        let needs_peer = |o: &Self| -> Result<(), PreflightError> {
            if o.state.redundancy == Redundancy::Disabled {
                return Err(PreflightError::RedundancyDisabled);
            }
            if !o.peer.up {
                return Err(PreflightError::PeerDown);
            }
            let theirs = o.peer.identity.as_ref().map(|p| p.protocol);
            match theirs {
                Some(t) if o.config.identity.protocol.compatible_with(t) => Ok(()),
                Some(t) => Err(PreflightError::ProtocolIncompatible {
                    ours: o.config.identity.protocol,
                    theirs: t,
                }),
                None => Err(PreflightError::PeerDown),
            }
        };
        let master_with_backup = |o: &Self| -> Result<(), PreflightError> {
            needs_peer(o)?;
            if o.role != Role::Master {
                return Err(PreflightError::WrongRole(o.role));
            }
            if o.peer.last.is_none_or(|s| s.role != Role::Backup) {
                return Err(PreflightError::PeerNotBackup);
            }
            Ok(())
        };
        let peer_mode = self.peer.last.map_or(BackupMode::Active, |s| s.mode);
        match request {
            OperatorRequest::SetBackupMode { mode, expires_at } => {
                let expires_unix_s =
                    expires_at.map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                match self.role {
                    Role::Master => {
                        master_with_backup(self)?;
                        Ok(Procedure::SetBackupMode {
                            mode: *mode,
                            expires_unix_s,
                            on_peer: true,
                        })
                    }
                    Role::Backup => {
                        if self.state.redundancy == Redundancy::Disabled {
                            return Err(PreflightError::RedundancyDisabled);
                        }
                        Ok(Procedure::SetBackupMode {
                            mode: *mode,
                            expires_unix_s,
                            on_peer: false,
                        })
                    }
                    Role::Initialize => Err(PreflightError::WrongRole(self.role)),
                }
            }
            OperatorRequest::SetRedundancy(r) => {
                if *r == self.state.redundancy {
                    return Err(PreflightError::NothingToDo);
                }
                Ok(Procedure::SetRedundancy(*r))
            }
            OperatorRequest::Swap => {
                master_with_backup(self)?;
                if let Some(f) = self.findings.first() {
                    return Err(PreflightError::Parity(f.field));
                }
                if peer_mode == BackupMode::Active {
                    // Periodic sync should have kept an Active Backup fresh;
                    // a stale one means replication is failing.
                    let age = self
                        .sync
                        .map_or(u64::MAX, |s| s.age(self.wall(now)).as_secs());
                    if age > self.config.stale_sync_after.as_secs() {
                        return Err(PreflightError::SyncStale { age_s: age });
                    }
                }
                Ok(Procedure::Swap { peer_mode })
            }
            OperatorRequest::RollingUpgrade {
                firmware,
                language_pack,
                protocol,
            } => {
                master_with_backup(self)?;
                let ours = self.config.identity.protocol;
                if !protocol.compatible_with(ours) {
                    return Err(PreflightError::ProtocolIncompatible {
                        ours: *protocol,
                        theirs: ours,
                    });
                }
                if self
                    .findings
                    .iter()
                    .any(|f| f.field == ParityField::Licences)
                {
                    return Err(PreflightError::Parity(ParityField::Licences));
                }
                Ok(Procedure::RollingUpgrade {
                    firmware: firmware.clone(),
                    language_pack: language_pack.clone(),
                })
            }
            OperatorRequest::HandBack => {
                master_with_backup(self)?;
                if peer_mode == BackupMode::Passive {
                    return Err(PreflightError::PeerPassive);
                }
                Ok(Procedure::HandBack)
            }
            OperatorRequest::ConfigRestore { backup } => {
                master_with_backup(self)?;
                Ok(Procedure::ConfigRestore {
                    backup: backup.clone(),
                    peer_mode,
                })
            }
        }
    }

    fn resume(&mut self, now: Instant, j: ProcedureJournal) {
        let plan = j.procedure.plan(&self.config);
        if plan.steps.len() != j.steps.len() {
            // The configuration changed under the journal: a different plan
            // cannot be resumed safely; drop it and say so.
            self.state.procedure = None;
            self.record(
                now,
                JournalEntry::ProcedureFinished {
                    id: j.id,
                    outcome: ProcedureOutcome::Aborted,
                },
            );
            self.push_event(Event::ProcedureFinished {
                id: j.id,
                outcome: ProcedureOutcome::Aborted,
            });
            return;
        }
        self.record(now, JournalEntry::ProcedureResumed { id: j.id });
        self.push_event(Event::ProcedureStarted {
            id: j.id,
            procedure: j.procedure.clone(),
        });
        let id = self.start_plan(now, plan, Some(j.id), None);
        if let Some(r) = self.plans.iter_mut().find(|r| r.id == id) {
            r.armed_before_restart = r.plan.steps.iter().zip(&j.steps).any(|(s, m)| {
                matches!(s.action, StepAction::AskPeer(PeerRequest::Arm { .. }))
                    && matches!(m, StepMark::Done | StepMark::Started)
            });
            for (i, mark) in j.steps.iter().enumerate() {
                let ours = &self.config.identity.firmware;
                let reboots = match r.plan.steps.get(i).map(|s| &s.action) {
                    // Installed only if this node now runs that version.
                    Some(StepAction::Run(Command::UpgradeFirmware { version })) => version == ours,
                    Some(StepAction::Run(c)) => c.done_once_started(),
                    _ => false,
                };
                let m = match mark {
                    StepMark::Done => Mark::Done,
                    StepMark::Failed => Mark::Failed,
                    // The restart is why we resume: the step happened (or,
                    // for a release, the restart released the role).
                    StepMark::Started if reboots => Mark::Done,
                    _ => Mark::Pending,
                };
                if let Some(slot) = r.marks.get_mut(i) {
                    *slot = m;
                }
            }
            // Checks passed before the restart say nothing about now: a
            // finished check whose dependents have not all finished runs
            // again (roles, peer state and readiness may have changed).
            let n = r.marks.len();
            for i in 0..n {
                let is_check = matches!(
                    r.plan.steps.get(i).map(|s| &s.action),
                    Some(
                        StepAction::AwaitRole(_)
                            | StepAction::AwaitPeer(_)
                            | StepAction::NodeReady
                            | StepAction::ServiceReady(_)
                    )
                );
                let frontier = r.plan.steps.iter().enumerate().any(|(j, s)| {
                    s.deps.iter().any(|d| usize::from(*d) == i)
                        && r.marks.get(j) != Some(&Mark::Done)
                });
                if is_check && frontier && r.marks.get(i) == Some(&Mark::Done) {
                    // The check and the steps it guards run again (plans put
                    // their guards as direct dependencies); reboot steps are
                    // never repeated.
                    let guarded: Vec<usize> = r
                        .plan
                        .steps
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| {
                            s.deps.iter().any(|d| usize::from(*d) == i)
                                && !matches!(&s.action, StepAction::Run(c) if c.done_once_started())
                        })
                        .map(|(j, _)| j)
                        .collect();
                    for j in guarded.into_iter().chain([i]) {
                        if let Some(slot) = r.marks.get_mut(j) {
                            *slot = Mark::Pending;
                        }
                    }
                }
            }
        }
        let marks: Vec<Mark> = self
            .plans
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.marks.clone())
            .unwrap_or_default();
        if let Some(jj) = self.state.procedure.as_mut() {
            for (m, now_mark) in jj.steps.iter_mut().zip(marks) {
                *m = match now_mark {
                    Mark::Done => StepMark::Done,
                    Mark::Failed => StepMark::Failed,
                    _ => StepMark::Pending,
                };
            }
        }
    }

    // ----- internals: plan runner ---------------------------------------------

    fn start_plan(
        &mut self,
        _now: Instant,
        plan: Plan,
        procedure: Option<u64>,
        reply_to: Option<u32>,
    ) -> PlanId {
        let id = PlanId(self.next_plan);
        self.next_plan += 1;
        let kind = plan.kind;
        self.plans.push(Running {
            id,
            marks: vec![Mark::Pending; plan.steps.len()],
            plan,
            procedure,
            reply_to,
            aborted: false,
            armed_before_restart: false,
        });
        self.push_event(Event::PlanStarted { plan: id, kind });
        id
    }

    fn running(&mut self, plan: PlanId) -> Option<&mut Running> {
        self.plans.iter_mut().find(|r| r.id == plan)
    }

    fn mark(&self, plan: PlanId, step: u16) -> Option<Mark> {
        self.plans
            .iter()
            .find(|r| r.id == plan)
            .and_then(|r| r.marks.get(usize::from(step)).copied())
    }

    fn set_mark(&mut self, plan: PlanId, step: u16, m: Mark) {
        if let Some(slot) = self
            .running(plan)
            .and_then(|r| r.marks.get_mut(usize::from(step)))
        {
            *slot = m;
        }
    }

    fn issue(&mut self, command: Command, route: Route) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.stats.commands_issued += 1;
        self.routes.insert(id, route);
        self.commands.push_back(Issued {
            id,
            epoch: self.state.highest_epoch,
            command,
        });
        id
    }

    fn journal_step(&mut self, now: Instant, plan: PlanId, step: u16, mark: StepMark) {
        let Some(pid) = self
            .plans
            .iter()
            .find(|r| r.id == plan)
            .and_then(|r| r.procedure)
        else {
            return;
        };
        let Some(j) = self.state.procedure.as_mut() else {
            return;
        };
        if j.id != pid {
            return;
        }
        if let Some(m) = j.steps.get_mut(usize::from(step)) {
            *m = mark;
        }
        let entry = match mark {
            StepMark::Started => JournalEntry::StepStarted { id: pid, step },
            StepMark::Done => JournalEntry::StepDone { id: pid, step },
            StepMark::Failed | StepMark::Pending => JournalEntry::StepFailed { id: pid, step },
        };
        self.record(now, entry);
    }

    /// Starts (or restarts) one step.
    fn start_step(&mut self, now: Instant, plan: PlanId, step: u16, attempt: u8) {
        let Some((action, timeout, procedure)) =
            self.plans.iter().find(|r| r.id == plan).and_then(|r| {
                r.plan
                    .steps
                    .get(usize::from(step))
                    .map(|s| (s.action.clone(), s.timeout, r.procedure))
            })
        else {
            return;
        };
        if attempt == 0 {
            self.journal_step(now, plan, step, StepMark::Started);
        }
        self.push_event(Event::StepStarted {
            plan,
            step,
            attempt,
        });
        let deadline = now + timeout;
        let route = Route::Step { plan, step };
        let wait = match action {
            StepAction::Run(cmd) => {
                self.before_command(now, &cmd, procedure);
                Wait::Command(self.issue(cmd, route))
            }
            StepAction::ServiceUp(s) => Wait::Start(self.issue(Command::StartService(s), route)),
            StepAction::ServiceReady(s) => Wait::Check(self.issue(Command::CheckService(s), route)),
            StepAction::NodeReady => Wait::Check(self.issue(Command::CheckNode, route)),
            StepAction::RehomePhones => {
                if self.rehoming.is_none() {
                    self.rehoming = Some(Rehoming::new(self.config.rehome, &self.config.phones));
                }
                self.rehoming_plan = Some(plan);
                if let Some(r) = self.rehoming.as_mut() {
                    r.start(now);
                }
                Wait::Rehoming
            }
            StepAction::AskPeer(req) => {
                let id = self.next_request;
                self.next_request = self.next_request.wrapping_add(1);
                self.requests.insert(id, (plan, step));
                self.send(PeerBody::Request { id, request: req });
                Wait::Reply(id)
            }
            StepAction::AwaitPeer(_) | StepAction::AwaitRole(_) => Wait::Condition,
        };
        self.set_mark(
            plan,
            step,
            Mark::Active {
                attempt,
                deadline,
                wait,
            },
        );
        if matches!(wait, Wait::Rehoming) {
            self.pump_rehoming(now);
        }
    }

    /// Persisted side effects of a command, recorded before it is issued.
    fn before_command(&mut self, now: Instant, cmd: &Command, procedure: Option<u64>) {
        match cmd {
            Command::Release { new_priority } => {
                self.relinquishing = true;
                if let Some(p) = new_priority {
                    self.state.priority = Some(*p);
                    if let Some(m) = procedure
                        .and(self.state.procedure.as_ref())
                        .and_then(|j| j.procedure.mode_after_swap())
                    {
                        self.state.backup_mode = m;
                    }
                    self.record(now, JournalEntry::PriorityChanged(*p));
                }
            }
            Command::StepDown => self.relinquishing = true,
            Command::SetBackupMode(m) if self.state.backup_mode != *m => {
                self.state.backup_mode = *m;
                self.record(now, JournalEntry::ModeChanged(*m));
                self.push_event(Event::ModeChanged(*m));
            }
            Command::SetRedundancy(r) => {
                self.state.redundancy = *r;
                self.record(now, JournalEntry::RedundancyChanged(*r));
            }
            _ => {}
        }
    }

    fn recheck(&mut self, now: Instant, plan: PlanId, step: u16) {
        let Some(Mark::Active {
            attempt, deadline, ..
        }) = self.mark(plan, step)
        else {
            return;
        };
        let cmd = match self
            .plans
            .iter()
            .find(|r| r.id == plan)
            .and_then(|r| r.plan.steps.get(usize::from(step)))
            .map(|s| &s.action)
        {
            Some(StepAction::ServiceUp(s) | StepAction::ServiceReady(s)) => {
                Command::CheckService(*s)
            }
            Some(StepAction::NodeReady) => Command::CheckNode,
            _ => return,
        };
        let _ = now;
        let id = self.issue(cmd, Route::Step { plan, step });
        self.set_mark(
            plan,
            step,
            Mark::Active {
                attempt,
                deadline,
                wait: Wait::Check(id),
            },
        );
    }

    fn check_interval(&self, plan: PlanId, step: u16) -> Duration {
        let action = self
            .plans
            .iter()
            .find(|r| r.id == plan)
            .and_then(|r| r.plan.steps.get(usize::from(step)))
            .map(|s| &s.action);
        match action {
            Some(StepAction::ServiceUp(s) | StepAction::ServiceReady(s)) => self
                .config
                .services
                .get(usize::from(s.0))
                .map_or(Duration::from_millis(200), |x| x.check_interval),
            _ => Duration::from_millis(500),
        }
    }

    fn step_result(
        &mut self,
        now: Instant,
        plan: PlanId,
        step: u16,
        id: CommandId,
        outcome: CommandOutcome,
    ) {
        let Some(Mark::Active {
            attempt,
            deadline,
            wait,
        }) = self.mark(plan, step)
        else {
            self.stats.unknown_results += 1;
            return;
        };
        let journaled_reboot = self.plans.iter().find(|r| r.id == plan).is_some_and(|r| {
            r.procedure.is_some()
                && matches!(r.plan.steps.get(usize::from(step)).map(|s| &s.action), Some(StepAction::Run(c)) if c.waits_for_restart())
        });
        match (wait, outcome) {
            // A procedure's reboot step is done when the node is back: the
            // resume from the journal marks it (or its deadline fails it).
            (Wait::Command(w), CommandOutcome::Done) if w == id && journaled_reboot => {}
            (Wait::Command(w), CommandOutcome::Done) if w == id => self.step_done(now, plan, step),
            (Wait::Start(w), CommandOutcome::Done) if w == id => {
                let sid = match self
                    .plans
                    .iter()
                    .find(|r| r.id == plan)
                    .and_then(|r| r.plan.steps.get(usize::from(step)))
                    .map(|s| &s.action)
                {
                    Some(StepAction::ServiceUp(s)) => *s,
                    _ => ServiceId(0),
                };
                let c = self.issue(Command::CheckService(sid), Route::Step { plan, step });
                self.set_mark(
                    plan,
                    step,
                    Mark::Active {
                        attempt,
                        deadline,
                        wait: Wait::Check(c),
                    },
                );
            }
            (Wait::Check(w), CommandOutcome::Done) if w == id => self.step_done(now, plan, step),
            (Wait::Check(w), CommandOutcome::NotReady) if w == id => {
                let t = now + self.check_interval(plan, step);
                self.set_mark(
                    plan,
                    step,
                    Mark::Active {
                        attempt,
                        deadline,
                        wait: Wait::Recheck(t),
                    },
                );
            }
            (Wait::Command(w) | Wait::Start(w) | Wait::Check(w), _) if w == id => {
                self.attempt_failed(now, plan, step);
            }
            _ => self.stats.unknown_results += 1,
        }
    }

    /// Forget what an active step waits for.
    fn cancel_wait(&mut self, plan: PlanId, step: u16) {
        if let Some(Mark::Active { wait, .. }) = self.mark(plan, step) {
            match wait {
                Wait::Command(c) | Wait::Start(c) | Wait::Check(c) => {
                    self.routes.remove(&c);
                    self.withdraw_orphans();
                }
                Wait::Reply(r) => {
                    self.requests.remove(&r);
                }
                Wait::Rehoming | Wait::Recheck(_) | Wait::Condition => {}
            }
        }
    }

    fn step_done(&mut self, now: Instant, plan: PlanId, step: u16) {
        self.cancel_wait(plan, step);
        self.set_mark(plan, step, Mark::Done);
        self.journal_step(now, plan, step, StepMark::Done);
        self.push_event(Event::StepDone { plan, step });
        self.timeline_step(now, plan, step, true);
    }

    fn timeline_step(&mut self, now: Instant, plan: PlanId, step: u16, ok: bool) {
        let Some(r) = self.plans.iter().find(|r| r.id == plan) else {
            return;
        };
        if !matches!(r.plan.kind, PlanKind::Takeover | PlanKind::ColdStart) {
            return;
        }
        let Some(action) = r
            .plan
            .steps
            .get(usize::from(step))
            .map(|s| s.action.clone())
        else {
            return;
        };
        match action {
            StepAction::Run(Command::ClaimAddress) if ok => {
                self.milestone(now, Milestone::AddressClaimed)
            }
            StepAction::Run(Command::FinishOrRollbackRound) => {
                let wall = self.wall(now);
                if let (Some(t), Some(s)) = (self.timeline.as_mut(), self.sync) {
                    t.generation = Some(s.generation);
                    t.data_loss_window_ms = Some(ms(s.age(wall)));
                }
                self.milestone(now, Milestone::SyncSettled);
            }
            StepAction::ServiceUp(s) => {
                let name = self
                    .config
                    .services
                    .get(usize::from(s.0))
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                let what = if ok {
                    Milestone::ServiceReady { service: s.0, name }
                } else {
                    Milestone::ServiceFailed { service: s.0, name }
                };
                self.milestone(now, what);
            }
            _ => {}
        }
    }

    /// One attempt failed (error or timeout): retry or apply the policy.
    fn attempt_failed(&mut self, now: Instant, plan: PlanId, step: u16) {
        let Some(Mark::Active { attempt, .. }) = self.mark(plan, step) else {
            return;
        };
        let Some((retries, policy, is_rehome)) =
            self.plans.iter().find(|r| r.id == plan).and_then(|r| {
                r.plan.steps.get(usize::from(step)).map(|s| {
                    (
                        s.retries,
                        s.on_failure,
                        s.action == StepAction::RehomePhones,
                    )
                })
            })
        else {
            return;
        };
        self.cancel_wait(plan, step);
        if is_rehome {
            // Phones left now need a person; the step itself is done.
            if let Some(r) = self.rehoming.as_mut() {
                r.give_up(now);
            }
            self.pump_rehoming(now);
            self.step_done(now, plan, step);
            return;
        }
        if attempt < retries {
            self.stats.step_retries += 1;
            self.start_step(now, plan, step, attempt + 1);
            return;
        }
        self.stats.steps_failed += 1;
        self.set_mark(plan, step, Mark::Failed);
        self.journal_step(now, plan, step, StepMark::Failed);
        self.push_event(Event::StepFailed { plan, step, policy });
        self.timeline_step(now, plan, step, false);
        match policy {
            FailurePolicy::ContinueDegraded => {}
            FailurePolicy::AbortAndRollBack => self.abort_plan(now, plan, true),
            FailurePolicy::StepDown => {
                self.abort_plan(now, plan, false);
                let mut p = role_plans::lost_role(&self.config);
                p.push(
                    Step::new(StepAction::Run(Command::StepDown))
                        .timeout(self.config.timeouts.command)
                        .retries(1)
                        .on_failure(FailurePolicy::ContinueDegraded),
                );
                self.start_plan(now, p, None, None);
            }
        }
    }

    /// Stops a plan: active steps are cancelled, pending ones skipped; with
    /// `roll_back`, the undo actions of finished steps run newest first.
    fn abort_plan(&mut self, now: Instant, plan: PlanId, roll_back: bool) {
        let Some(n) = self
            .plans
            .iter()
            .find(|r| r.id == plan)
            .map(|r| r.marks.len())
        else {
            return;
        };
        for i in 0..n {
            let step = u16::try_from(i).unwrap_or(u16::MAX);
            match self.mark(plan, step) {
                Some(Mark::Active { .. }) => {
                    self.cancel_wait(plan, step);
                    self.set_mark(plan, step, Mark::Skipped);
                }
                Some(Mark::Pending) => self.set_mark(plan, step, Mark::Skipped),
                _ => {}
            }
        }
        if self.rehoming_plan == Some(plan) {
            if let Some(r) = self.rehoming.as_mut().filter(|r| r.started() && !r.done()) {
                r.give_up(now);
            }
            self.routes.retain(|_, r| !matches!(r, Route::Phone(_)));
        }
        let mut undo = Plan::new(PlanKind::RollBack);
        if let Some(r) = self.running(plan) {
            r.aborted = true;
            if roll_back {
                let mut prev: Option<u16> = None;
                for (i, s) in r.plan.steps.iter().enumerate().rev() {
                    let undo_action = s
                        .undo
                        .as_ref()
                        .filter(|_| r.marks.get(i) == Some(&Mark::Done));
                    if let Some(u) = undo_action {
                        let deps: Vec<u16> = prev.into_iter().collect();
                        prev = Some(
                            undo.push(
                                Step::new(u.clone())
                                    .after(&deps)
                                    .timeout(s.timeout.max(Duration::from_secs(1)))
                                    .retries(1)
                                    .on_failure(FailurePolicy::ContinueDegraded),
                            ),
                        );
                    }
                }
            }
        }
        self.withdraw_orphans();
        if !undo.steps.is_empty() {
            self.start_plan(now, undo, None, None);
        }
    }

    fn pump_rehoming(&mut self, now: Instant) {
        let Some(mut r) = self.rehoming.take() else {
            return;
        };
        r.poll(now);
        while let Some((phone, cmd)) = r.out.pop_front() {
            self.issue(cmd, Route::Phone(phone));
        }
        let (registered, _, _) = r.counts();
        let milestones: Vec<u8> = r.milestones.drain(..).collect();
        let person: Vec<_> = r.person.drain(..).collect();
        let done = r.done();
        let outcomes = if done { Some(r.outcomes()) } else { None };
        self.rehoming = Some(r);
        for (phone, reason) in person {
            self.push_event(Event::PhoneNeedsPerson { phone, reason });
        }
        for percent in milestones {
            self.milestone(
                now,
                Milestone::Phones {
                    percent,
                    registered,
                },
            );
        }
        if done {
            if let (Some(t), Some(o)) = (self.timeline.as_mut(), outcomes) {
                if t.phones.is_empty() {
                    t.phones = o;
                }
            }
            if let Some(plan) = self.rehoming_plan {
                let steps: Vec<u16> = self
                    .plans
                    .iter()
                    .find(|x| x.id == plan)
                    .map(|x| {
                        x.marks
                            .iter()
                            .enumerate()
                            .filter(|(_, m)| {
                                matches!(
                                    m,
                                    Mark::Active {
                                        wait: Wait::Rehoming,
                                        ..
                                    }
                                )
                            })
                            .map(|(i, _)| u16::try_from(i).unwrap_or(u16::MAX))
                            .collect()
                    })
                    .unwrap_or_default();
                for s in steps {
                    self.step_done(now, plan, s);
                }
            }
        }
    }

    /// Runs plans until nothing changes: starts steps whose dependencies
    /// are met, completes satisfied waits, finishes plans.
    fn drive(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            // Conditions.
            let settling = self
                .plans
                .iter()
                .any(|r| matches!(r.plan.kind, PlanKind::Takeover | PlanKind::ColdStart));
            let peer_is_master =
                self.peer.up && self.peer.last.is_some_and(|s| s.role == Role::Master);
            let mut satisfied = Vec::new();
            let mut hopeless = Vec::new();
            for r in &self.plans {
                for (i, m) in r.marks.iter().enumerate() {
                    if !matches!(
                        m,
                        Mark::Active {
                            wait: Wait::Condition,
                            ..
                        }
                    ) {
                        continue;
                    }
                    let idx = u16::try_from(i).unwrap_or(u16::MAX);
                    match r.plan.steps.get(i).map(|s| &s.action) {
                        Some(StepAction::AwaitPeer(c)) if self.peer_meets(c) => {
                            satisfied.push((r.id, idx));
                        }
                        // Waiting for a Backup peer that took the role: the
                        // procedure is off its rails (a failover happened).
                        Some(StepAction::AwaitPeer(c))
                            if c.role == Some(Role::Backup) && peer_is_master =>
                        {
                            hopeless.push((r.id, idx));
                        }
                        // Master means a settled Master: its takeover done.
                        Some(StepAction::AwaitRole(Role::Master))
                            if self.role == Role::Master && !settling =>
                        {
                            satisfied.push((r.id, idx));
                        }
                        // The peer holds the role: waiting is pointless.
                        Some(StepAction::AwaitRole(Role::Master)) if peer_is_master => {
                            hopeless.push((r.id, idx));
                        }
                        Some(StepAction::AwaitRole(role))
                            if *role != Role::Master && self.role == *role =>
                        {
                            satisfied.push((r.id, idx));
                        }
                        _ => {}
                    }
                }
            }
            for (plan, step) in satisfied {
                self.step_done(now, plan, step);
                progress = true;
            }
            for (plan, step) in hopeless {
                if !self.handed_over_by_restart(now, plan, step) {
                    self.attempt_failed(now, plan, step);
                }
                progress = true;
            }
            // Ready steps.
            let mut ready = Vec::new();
            for r in &self.plans {
                if r.aborted {
                    continue;
                }
                for (i, m) in r.marks.iter().enumerate() {
                    if *m != Mark::Pending {
                        continue;
                    }
                    let deps_ok = r.plan.steps.get(i).is_some_and(|s| {
                        s.deps.iter().all(|d| {
                            r.marks
                                .get(usize::from(*d))
                                .is_some_and(|m| m.finished_ok())
                        })
                    });
                    if deps_ok {
                        ready.push((r.id, u16::try_from(i).unwrap_or(u16::MAX)));
                    }
                }
            }
            for (plan, step) in ready {
                if self.mark(plan, step) == Some(Mark::Pending)
                    && self.plans.iter().any(|r| r.id == plan && !r.aborted)
                {
                    self.start_step(now, plan, step, 0);
                    progress = true;
                }
            }
            // Finished plans.
            if let Some(pos) = self
                .plans
                .iter()
                .position(|r| r.marks.iter().all(|m| m.terminal()))
            {
                let r = self.plans.remove(pos);
                self.plan_finished(now, r);
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    /// A swap's hand-over guard finds the peer Master after this node
    /// restarted with the peer armed: the restart silenced this node and the
    /// armed peer took over, which is what the hand-over was for. Its steps
    /// are marked done, with the release's persisted effects.
    fn handed_over_by_restart(&mut self, now: Instant, plan: PlanId, guard: u16) -> bool {
        let Some(r) = self.plans.iter().find(|r| r.id == plan) else {
            return false;
        };
        if !r.armed_before_restart || self.role == Role::Master {
            return false;
        }
        let Some(end) = r
            .plan
            .steps
            .iter()
            .enumerate()
            .skip(usize::from(guard))
            .find_map(|(i, s)| {
                matches!(&s.action, StepAction::AwaitPeer(c) if c.role == Some(Role::Master))
                    .then_some(i)
            })
        else {
            return false;
        };
        let skipped: Vec<u16> = (usize::from(guard)..=end)
            .filter(|i| r.marks.get(*i) != Some(&Mark::Done))
            .filter_map(|i| u16::try_from(i).ok())
            .collect();
        self.state.priority = Some(self.config.released_priority);
        if let Some(m) = self
            .state
            .procedure
            .as_ref()
            .and_then(|j| j.procedure.mode_after_swap())
        {
            self.state.backup_mode = m;
        }
        self.record(
            now,
            JournalEntry::PriorityChanged(self.config.released_priority),
        );
        for s in skipped {
            self.cancel_wait(plan, s);
            self.set_mark(plan, s, Mark::Done);
            self.journal_step(now, plan, s, StepMark::Done);
            self.push_event(Event::StepDone { plan, step: s });
        }
        true
    }

    fn plan_finished(&mut self, now: Instant, r: Running) {
        let outcome = if r.aborted {
            PlanOutcome::Aborted
        } else if r.marks.contains(&Mark::Failed) {
            PlanOutcome::Degraded
        } else {
            PlanOutcome::Completed
        };
        self.push_event(Event::PlanFinished {
            plan: r.id,
            kind: r.plan.kind,
            outcome,
        });
        match r.plan.kind {
            PlanKind::Takeover | PlanKind::ColdStart => {
                self.ready = outcome != PlanOutcome::Aborted;
                self.milestone(
                    now,
                    if outcome == PlanOutcome::Aborted {
                        Milestone::Aborted
                    } else {
                        Milestone::Done
                    },
                );
                if let Some(t) = self.timeline.take() {
                    self.last_timeline = Some(t);
                }
                self.timeline_start = None;
                self.send_status();
            }
            PlanKind::Startup if self.role != Role::Master => {
                self.ready = outcome == PlanOutcome::Completed;
                self.send_status();
            }
            PlanKind::PeerRequest => {
                if let Some(id) = r.reply_to {
                    let o = if outcome == PlanOutcome::Completed {
                        ReplyOutcome::Done
                    } else {
                        ReplyOutcome::Failed
                    };
                    self.send(PeerBody::Reply { id, outcome: o });
                    self.send_status();
                }
            }
            _ => {}
        }
        if let Some(pid) = r.procedure {
            let po = match outcome {
                PlanOutcome::Completed => ProcedureOutcome::Completed,
                PlanOutcome::Degraded => ProcedureOutcome::Degraded,
                PlanOutcome::Aborted => ProcedureOutcome::Aborted,
            };
            let finished = self.state.procedure.take();
            self.record(
                now,
                JournalEntry::ProcedureFinished {
                    id: pid,
                    outcome: po,
                },
            );
            self.push_event(Event::ProcedureFinished {
                id: pid,
                outcome: po,
            });
            if let Some(Procedure::SetRedundancy(Redundancy::Disabled)) =
                finished.map(|j| j.procedure)
            {
                self.become_standalone(now);
            } else if self.state.redundancy == Redundancy::Enabled && self.next_heartbeat.is_none()
            {
                self.next_heartbeat = Some(now + self.config.heartbeat_interval);
                self.send_hello(now);
                self.send_status();
            }
        }
    }
}
