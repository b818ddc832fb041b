//! The takeover in progress: its plan, its [`Timeline`] of milestones and
//! its phone re-homing.

use std::time::Instant;

use super::executor::{PlanId, PlanOutcome, Route};
use super::{Event, Orchestrator, unix_ms};
use crate::command::Command;
use crate::epoch::Epoch;
use crate::phones::{PhoneOutcome, Rehoming};
use crate::plan::{PlanKind, StepAction};
use crate::role_plans;
use crate::status::{Milestone, Timeline, TimelineEntry};
use crate::types::{PhoneId, RoleChangeReason, ms};

/// The timeline of the takeover in progress, and the last one.
#[derive(Debug, Default)]
pub(super) struct Timelines {
    current: Option<Timeline>,
    /// When the current one started (its milestones count from here).
    start: Option<Instant>,
    last: Option<Timeline>,
}

impl Timelines {
    fn begin(&mut self, now: Instant, timeline: Timeline) {
        self.current = Some(timeline);
        self.start = Some(now);
    }

    /// Adds a milestone to the current timeline; the entry, if there is
    /// one.
    fn record(&mut self, now: Instant, unix_ms: u64, what: Milestone) -> Option<TimelineEntry> {
        let start = self.start?;
        let entry = TimelineEntry {
            at_ms: ms(now.saturating_duration_since(start)),
            unix_ms,
            what,
        };
        let t = self.current.as_mut()?;
        t.entries.push(entry.clone());
        Some(entry)
    }

    /// The current timeline becomes the last one.
    fn finish(&mut self) {
        if let Some(t) = self.current.take() {
            self.last = Some(t);
        }
        self.start = None;
    }

    /// The timeline in progress, or else the last one.
    pub(super) fn get(&self) -> Option<&Timeline> {
        self.current.as_ref().or(self.last.as_ref())
    }
}

impl Orchestrator {
    pub(super) fn start_takeover(
        &mut self,
        now: Instant,
        kind: PlanKind,
        reason: Option<RoleChangeReason>,
        epoch: Epoch,
    ) {
        let p = role_plans::takeover(&self.config, kind);
        self.timelines.begin(
            now,
            Timeline {
                kind,
                reason,
                epoch,
                entries: Vec::new(),
                generation: None,
                data_loss_window_ms: None,
                phones: Vec::new(),
            },
        );
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
        let unix_ms = unix_ms(self.wall(now));
        if let Some(entry) = self.timelines.record(now, unix_ms, what) {
            self.push_event(Event::Milestone(entry));
        }
    }

    /// A step of the takeover plan finished (`ok`) or failed.
    pub(super) fn takeover_step_finished(&mut self, now: Instant, action: StepAction, ok: bool) {
        match action {
            StepAction::Run(Command::ClaimAddress) if ok => {
                self.milestone(now, Milestone::AddressClaimed)
            }
            StepAction::Run(Command::FinishOrRollbackRound) => {
                let wall = self.wall(now);
                if let (Some(t), Some(s)) = (self.timelines.current.as_mut(), self.sync) {
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

    /// The takeover (or cold start) plan ended.
    pub(super) fn takeover_finished(&mut self, now: Instant, outcome: PlanOutcome) {
        self.ready = outcome != PlanOutcome::Aborted;
        self.milestone(
            now,
            if outcome == PlanOutcome::Aborted {
                Milestone::Aborted
            } else {
                Milestone::Done
            },
        );
        self.timelines.finish();
        self.send_status();
    }

    // ----- phones -----------------------------------------------------------

    /// The re-homing step of `plan` starts.
    pub(super) fn start_rehoming(&mut self, now: Instant, plan: PlanId) {
        if self.rehoming.is_none() {
            self.rehoming = Some(Rehoming::new(self.config.rehome, &self.config.phones));
        }
        self.rehoming_plan = Some(plan);
        if let Some(r) = self.rehoming.as_mut() {
            r.start(now);
        }
    }

    /// A phone registered; `false` when no re-homing expects it.
    pub(super) fn phone_registered(&mut self, now: Instant, phone: PhoneId) -> bool {
        let known = self
            .rehoming
            .as_mut()
            .is_some_and(|r| r.registered(now, phone));
        self.pump_rehoming(now);
        known
    }

    pub(super) fn phone_unchecked(&mut self, now: Instant, phone: PhoneId) -> bool {
        let known = self
            .rehoming
            .as_mut()
            .is_some_and(|r| r.unchecked(now, phone));
        self.pump_rehoming(now);
        known
    }

    /// The result of a phone command.
    pub(super) fn phone_result(&mut self, now: Instant, phone: PhoneId, failed: bool) {
        if failed {
            if let Some(r) = self.rehoming.as_mut() {
                r.action_failed(now, phone);
            }
            self.pump_rehoming(now);
        }
    }

    /// The re-homing step failed: the phones left need a person.
    pub(super) fn give_up_rehoming(&mut self, now: Instant) {
        if let Some(r) = self.rehoming.as_mut() {
            r.give_up(now);
        }
        self.pump_rehoming(now);
    }

    /// `plan` was aborted: if it runs the re-homing, that stops too.
    pub(super) fn plan_aborted_rehoming(&mut self, now: Instant, plan: PlanId) {
        if self.rehoming_plan == Some(plan) {
            if let Some(r) = self.rehoming.as_mut().filter(|r| r.started() && !r.done()) {
                r.give_up(now);
            }
            self.exec.forget_phone_routes();
        }
    }

    /// The Master term ended or a new one began: an unfinished re-homing
    /// is given up.
    pub(super) fn abandon_rehoming(&mut self, now: Instant) {
        if let Some(r) = self.rehoming.as_mut().filter(|r| !r.done()) {
            r.give_up(now);
        }
        self.exec.forget_phone_routes();
    }

    /// Issues the re-homing's due phone commands, reports its progress and
    /// completes the re-homing step when every phone is resolved.
    pub(super) fn pump_rehoming(&mut self, now: Instant) {
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
            if let (Some(t), Some(o)) = (self.timelines.current.as_mut(), outcomes)
                && t.phones.is_empty()
            {
                t.phones = o;
            }
            if let Some(plan) = self.rehoming_plan {
                for s in self.exec.waiting_for_rehoming(plan) {
                    self.step_done(now, plan, s);
                }
            }
        }
    }

    /// When the re-homing next needs a timeout.
    pub(super) fn rehoming_deadline(&self) -> Option<Instant> {
        self.rehoming.as_ref().and_then(Rehoming::next_deadline)
    }

    /// Per-phone outcomes of the current or last re-homing.
    pub(super) fn rehoming_outcomes(&self) -> Vec<PhoneOutcome> {
        self.rehoming
            .as_ref()
            .map(Rehoming::outcomes)
            .unwrap_or_default()
    }
}
