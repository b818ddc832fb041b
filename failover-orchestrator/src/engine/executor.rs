//! The plan executor: runs plans step by step, with dependencies,
//! deadlines, retries, failure policies and roll-back.
//!
//! [`Executor`] owns the bookkeeping (the running plans and their step
//! marks, the routes from command ids and peer request ids back to the
//! step that waits, and the queue of issued commands); the rest of the
//! engine reaches it through a narrow interface. The `impl Orchestrator`
//! block below is what a step does to the rest of the engine: journal
//! records, events, persisted side effects, the takeover's timeline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Event, Orchestrator};
use crate::command::{Command, CommandId, CommandOutcome, Issued};
use crate::epoch::Epoch;
use crate::journal::{JournalEntry, StepMark};
use crate::phones::min_opt;
use crate::plan::{FailurePolicy, Plan, PlanKind, Step, StepAction};
use crate::types::{PhoneId, Role, ServiceId};
use crate::wire::PeerBody;

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

/// Where the result of an issued command goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    Step {
        plan: PlanId,
        step: u16,
    },
    Phone(PhoneId),
    /// Fire and forget (mode expiry); the result is only acknowledged.
    Loose,
}

/// The running plans and what their active steps wait for.
#[derive(Debug, Default)]
pub(super) struct Executor {
    plans: Vec<Running>,
    next_plan: u64,
    routes: HashMap<CommandId, Route>,
    next_command: u64,
    requests: HashMap<u32, (PlanId, u16)>,
    next_request: u32,
    commands: VecDeque<Issued>,
}

impl Executor {
    /// An executor whose command and request ids start from `seed` (the
    /// wall clock in ms at creation): the ids of a restarted engine, soft
    /// or not, never meet the results and replies still in flight for the
    /// ids of the one before.
    pub(super) fn seeded(seed: u64) -> Executor {
        Executor {
            next_command: seed.wrapping_mul(1_000),
            // Truncated on purpose: the low bits change every ms.
            next_request: seed as u32,
            ..Executor::default()
        }
    }

    fn running(&self, plan: PlanId) -> Option<&Running> {
        self.plans.iter().find(|r| r.id == plan)
    }

    fn running_mut(&mut self, plan: PlanId) -> Option<&mut Running> {
        self.plans.iter_mut().find(|r| r.id == plan)
    }

    fn mark(&self, plan: PlanId, step: u16) -> Option<Mark> {
        self.running(plan)
            .and_then(|r| r.marks.get(usize::from(step)).copied())
    }

    fn set_mark(&mut self, plan: PlanId, step: u16, m: Mark) {
        if let Some(slot) = self
            .running_mut(plan)
            .and_then(|r| r.marks.get_mut(usize::from(step)))
        {
            *slot = m;
        }
    }

    fn action(&self, plan: PlanId, step: u16) -> Option<&StepAction> {
        self.running(plan)
            .and_then(|r| r.plan.steps.get(usize::from(step)))
            .map(|s| &s.action)
    }

    /// Queues a command stamped with `epoch`; its result goes to `route`.
    pub(super) fn issue(&mut self, command: Command, route: Route, epoch: Epoch) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.routes.insert(id, route);
        self.commands.push_back(Issued { id, epoch, command });
        id
    }

    /// Next command for the driver.
    pub(super) fn poll_command(&mut self) -> Option<Issued> {
        self.commands.pop_front()
    }

    /// Where a command's result goes; `None` for an unknown or finished
    /// command.
    pub(super) fn take_route(&mut self, id: CommandId) -> Option<Route> {
        self.routes.remove(&id)
    }

    /// Forgets the routes of phone commands (the re-homing was given up).
    pub(super) fn forget_phone_routes(&mut self) {
        self.routes.retain(|_, r| !matches!(r, Route::Phone(_)));
    }

    /// Every queued command is re-stamped with the newest epoch; commands
    /// whose plan was aborted were already withdrawn.
    pub(super) fn restamp(&mut self, epoch: Epoch) {
        self.withdraw_orphans();
        for c in &mut self.commands {
            c.epoch = epoch;
        }
    }

    /// Queued commands whose step was cancelled or whose plan was aborted
    /// are withdrawn before the driver sees them.
    fn withdraw_orphans(&mut self) {
        let routes = &self.routes;
        self.commands.retain(|c| routes.contains_key(&c.id));
    }

    /// Allocates a peer request id for a step.
    fn ask(&mut self, plan: PlanId, step: u16) -> u32 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.requests.insert(id, (plan, step));
        id
    }

    /// The step a peer reply answers, if one still waits for exactly this
    /// reply.
    pub(super) fn take_reply(&mut self, id: u32) -> Option<(PlanId, u16)> {
        let (plan, step) = self.requests.remove(&id)?;
        match self.mark(plan, step) {
            Some(Mark::Active {
                wait: Wait::Reply(w),
                ..
            }) if w == id => Some((plan, step)),
            _ => None,
        }
    }

    /// Whether a plan already carries out the peer's request `id`.
    pub(super) fn serving_request(&self, id: u32) -> bool {
        self.plans
            .iter()
            .any(|r| r.reply_to == Some(id) && r.plan.kind == PlanKind::PeerRequest)
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

    /// Whether any plan is running.
    pub(super) fn busy(&self) -> bool {
        !self.plans.is_empty()
    }

    /// The running plans and their kinds.
    pub(super) fn kinds(&self) -> Vec<(PlanId, PlanKind)> {
        self.plans.iter().map(|r| (r.id, r.plan.kind)).collect()
    }

    /// The earliest step deadline or readiness re-check.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let mut d = None;
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

    /// The active steps (index, action) of the plan running procedure
    /// `procedure`.
    pub(super) fn active_steps(&self, procedure: u64) -> Vec<(u16, String)> {
        self.plans
            .iter()
            .find(|r| r.procedure == Some(procedure))
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
            .unwrap_or_default()
    }

    /// The running plans whose kind matches.
    pub(super) fn plans_of(&self, kind: impl Fn(PlanKind) -> bool) -> Vec<PlanId> {
        self.plans
            .iter()
            .filter(|r| kind(r.plan.kind))
            .map(|r| r.id)
            .collect()
    }

    /// The steps of `plan` that wait for the phone re-homing.
    pub(super) fn waiting_for_rehoming(&self, plan: PlanId) -> Vec<u16> {
        self.running(plan)
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
            .unwrap_or_default()
    }

    /// Sets the marks of a plan resumed from the journal.
    pub(super) fn restore(&mut self, plan: PlanId, marks: &[StepMark], armed_before_restart: bool) {
        if let Some(r) = self.running_mut(plan) {
            r.armed_before_restart = armed_before_restart;
            for (slot, mark) in r.marks.iter_mut().zip(marks) {
                *slot = match mark {
                    StepMark::Done => Mark::Done,
                    StepMark::Failed => Mark::Failed,
                    StepMark::Pending | StepMark::Started => Mark::Pending,
                };
            }
        }
    }
}

impl Orchestrator {
    pub(super) fn start_plan(
        &mut self,
        _now: Instant,
        plan: Plan,
        procedure: Option<u64>,
        reply_to: Option<u32>,
    ) -> PlanId {
        let id = PlanId(self.exec.next_plan);
        self.exec.next_plan += 1;
        let kind = plan.kind;
        self.exec.plans.push(Running {
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

    pub(super) fn issue(&mut self, command: Command, route: Route) -> CommandId {
        self.stats.commands_issued += 1;
        self.exec.issue(command, route, self.state.highest_epoch)
    }

    fn journal_step(&mut self, now: Instant, plan: PlanId, step: u16, mark: StepMark) {
        let Some(pid) = self.exec.running(plan).and_then(|r| r.procedure) else {
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
        let Some((action, timeout, procedure)) = self.exec.running(plan).and_then(|r| {
            r.plan
                .steps
                .get(usize::from(step))
                .map(|s| (s.action.clone(), s.timeout, r.procedure))
        }) else {
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
                self.start_rehoming(now, plan);
                Wait::Rehoming
            }
            StepAction::AskPeer(req) => {
                let id = self.exec.ask(plan, step);
                self.send(PeerBody::Request { id, request: req });
                Wait::Reply(id)
            }
            StepAction::AwaitPeer(_) | StepAction::AwaitRole(_) => Wait::Condition,
        };
        self.exec.set_mark(
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
                self.mode_changed(*m);
            }
            Command::SetRedundancy(r) => {
                self.state.redundancy = *r;
                self.record(now, JournalEntry::RedundancyChanged(*r));
            }
            _ => {}
        }
    }

    /// Step deadlines and readiness re-checks that are due.
    pub(super) fn step_timeouts(&mut self, now: Instant) {
        let mut due = Vec::new();
        for r in &self.exec.plans {
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
    }

    fn recheck(&mut self, now: Instant, plan: PlanId, step: u16) {
        let Some(Mark::Active {
            attempt, deadline, ..
        }) = self.exec.mark(plan, step)
        else {
            return;
        };
        let cmd = match self.exec.action(plan, step) {
            Some(StepAction::ServiceUp(s) | StepAction::ServiceReady(s)) => {
                Command::CheckService(*s)
            }
            Some(StepAction::NodeReady) => Command::CheckNode,
            _ => return,
        };
        let _ = now;
        let id = self.issue(cmd, Route::Step { plan, step });
        self.exec.set_mark(
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
        match self.exec.action(plan, step) {
            Some(StepAction::ServiceUp(s) | StepAction::ServiceReady(s)) => self
                .config
                .services
                .get(usize::from(s.0))
                .map_or(Duration::from_millis(200), |x| x.check_interval),
            _ => Duration::from_millis(500),
        }
    }

    /// The result of a command a step issued.
    pub(super) fn step_result(
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
        }) = self.exec.mark(plan, step)
        else {
            self.stats.unknown_results += 1;
            return;
        };
        let journaled_reboot = self.exec.running(plan).is_some_and(|r| {
            r.procedure.is_some()
                && matches!(r.plan.steps.get(usize::from(step)).map(|s| &s.action), Some(StepAction::Run(c)) if c.waits_for_restart())
        });
        match (wait, outcome) {
            // A procedure's reboot step is done when the node is back: the
            // resume from the journal marks it (or its deadline fails it).
            (Wait::Command(w), CommandOutcome::Done) if w == id && journaled_reboot => {}
            (Wait::Command(w), CommandOutcome::Done) if w == id => self.step_done(now, plan, step),
            (Wait::Start(w), CommandOutcome::Done) if w == id => {
                let sid = match self.exec.action(plan, step) {
                    Some(StepAction::ServiceUp(s)) => *s,
                    _ => ServiceId(0),
                };
                let c = self.issue(Command::CheckService(sid), Route::Step { plan, step });
                self.exec.set_mark(
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
                self.exec.set_mark(
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

    pub(super) fn step_done(&mut self, now: Instant, plan: PlanId, step: u16) {
        self.exec.cancel_wait(plan, step);
        self.exec.set_mark(plan, step, Mark::Done);
        self.journal_step(now, plan, step, StepMark::Done);
        self.push_event(Event::StepDone { plan, step });
        self.step_finished(now, plan, step, true);
    }

    /// A takeover's step finished: its milestone for the timeline.
    fn step_finished(&mut self, now: Instant, plan: PlanId, step: u16, ok: bool) {
        let Some(r) = self.exec.running(plan) else {
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
        self.takeover_step_finished(now, action, ok);
    }

    /// One attempt failed (error or timeout): retry or apply the policy.
    pub(super) fn attempt_failed(&mut self, now: Instant, plan: PlanId, step: u16) {
        let Some(Mark::Active { attempt, .. }) = self.exec.mark(plan, step) else {
            return;
        };
        let Some((retries, policy, is_rehome)) = self.exec.running(plan).and_then(|r| {
            r.plan.steps.get(usize::from(step)).map(|s| {
                (
                    s.retries,
                    s.on_failure,
                    s.action == StepAction::RehomePhones,
                )
            })
        }) else {
            return;
        };
        self.exec.cancel_wait(plan, step);
        if is_rehome {
            // Phones left now need a person; the step itself is done.
            self.give_up_rehoming(now);
            self.step_done(now, plan, step);
            return;
        }
        if attempt < retries {
            self.stats.step_retries += 1;
            self.start_step(now, plan, step, attempt + 1);
            return;
        }
        self.stats.steps_failed += 1;
        self.exec.set_mark(plan, step, Mark::Failed);
        self.journal_step(now, plan, step, StepMark::Failed);
        self.push_event(Event::StepFailed { plan, step, policy });
        self.step_finished(now, plan, step, false);
        match policy {
            FailurePolicy::ContinueDegraded => {}
            FailurePolicy::AbortAndRollBack => self.abort_plan(now, plan, true),
            FailurePolicy::StepDown => {
                self.abort_plan(now, plan, false);
                let p = self.step_down_plan();
                self.start_plan(now, p, None, None);
            }
        }
    }

    /// Stops a plan: active steps are cancelled, pending ones skipped; with
    /// `roll_back`, the undo actions of finished steps run newest first.
    pub(super) fn abort_plan(&mut self, now: Instant, plan: PlanId, roll_back: bool) {
        let Some(n) = self.exec.running(plan).map(|r| r.marks.len()) else {
            return;
        };
        for i in 0..n {
            let step = u16::try_from(i).unwrap_or(u16::MAX);
            match self.exec.mark(plan, step) {
                Some(Mark::Active { .. }) => {
                    self.exec.cancel_wait(plan, step);
                    self.exec.set_mark(plan, step, Mark::Skipped);
                }
                Some(Mark::Pending) => self.exec.set_mark(plan, step, Mark::Skipped),
                _ => {}
            }
        }
        self.plan_aborted_rehoming(now, plan);
        let mut undo = Plan::new(PlanKind::RollBack);
        if let Some(r) = self.exec.running_mut(plan) {
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
        self.exec.withdraw_orphans();
        if !undo.steps.is_empty() {
            self.start_plan(now, undo, None, None);
        }
    }

    /// Runs plans until nothing changes: starts steps whose dependencies
    /// are met, completes satisfied waits, finishes plans.
    pub(super) fn drive(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            // Conditions.
            let settling = self
                .exec
                .plans
                .iter()
                .any(|r| matches!(r.plan.kind, PlanKind::Takeover | PlanKind::ColdStart));
            let peer_is_master = self.link.is_master();
            let mut satisfied = Vec::new();
            let mut hopeless = Vec::new();
            for r in &self.exec.plans {
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
                        Some(StepAction::AwaitPeer(c)) if self.link.meets(c) => {
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
            for r in &self.exec.plans {
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
                if self.exec.mark(plan, step) == Some(Mark::Pending)
                    && self.exec.plans.iter().any(|r| r.id == plan && !r.aborted)
                {
                    self.start_step(now, plan, step, 0);
                    progress = true;
                }
            }
            // Finished plans.
            if let Some(pos) = self
                .exec
                .plans
                .iter()
                .position(|r| r.marks.iter().all(|m| m.terminal()))
            {
                let r = self.exec.plans.remove(pos);
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
        let Some(r) = self.exec.running(plan) else {
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
            self.exec.cancel_wait(plan, s);
            self.exec.set_mark(plan, s, Mark::Done);
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
            PlanKind::Takeover | PlanKind::ColdStart => self.takeover_finished(now, outcome),
            PlanKind::Startup if self.role != Role::Master => {
                self.ready = outcome == PlanOutcome::Completed;
                self.send_status();
            }
            PlanKind::PeerRequest => {
                if let Some(id) = r.reply_to {
                    self.request_finished(id, outcome);
                }
            }
            _ => {}
        }
        if let Some(pid) = r.procedure {
            self.procedure_finished(now, pid, outcome);
        }
    }
}
