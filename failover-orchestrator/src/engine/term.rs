//! Master terms and epochs: a role change from the election, taking a
//! term, adopting the peer's newer epoch (and stepping down when it
//! supersedes ours), and the standalone node.
//!
//! The newest epoch lives in the persisted state, so that every term taken
//! or learnt is journaled before the commands issued under it.

use std::time::Instant;

use super::{Event, Orchestrator};
use crate::command::Command;
use crate::epoch::Epoch;
use crate::journal::JournalEntry;
use crate::plan::{FailurePolicy, Plan, PlanKind, Step, StepAction};
use crate::role_plans;
use crate::types::{BackupMode, Redundancy, Role, RoleChange, RoleChangeReason};

impl Orchestrator {
    /// A role change from the election.
    pub(super) fn role_changed(&mut self, now: Instant, change: RoleChange) {
        let prev = self.role;
        self.role = change.to;
        self.push_event(Event::RoleChanged(change));
        if self.state.redundancy == Redundancy::Disabled {
            // Standalone: the election is off; ignore late reports.
            self.role = Role::Master;
            return;
        }
        if change.to == Role::Master && prev != Role::Master {
            let takeover = self.link.seen_master()
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
                // RFC 9568 §6.4.3: the address goes at once, before services
                // stop, so that two nodes never hold it.
                let p = role_plans::lost_role(&self.config);
                self.start_plan(now, p, None, None);
            }
            self.relinquishing = false;
            self.send_status();
        }
        self.drive(now);
    }

    pub(super) fn take_term(
        &mut self,
        now: Instant,
        kind: PlanKind,
        reason: Option<RoleChangeReason>,
    ) {
        let epoch = self.state.highest_epoch.next_term(self.config.node);
        self.state.highest_epoch = epoch;
        self.relinquishing = false;
        if self.state.backup_mode == BackupMode::Passive {
            // A Master has no backup mode; the Passive one it had as Backup
            // must not outlive the term. Kept, a Master that restarts would
            // come back Passive beside a Passive peer, and neither would
            // ever take the role again. A swap sets the mode the old Master
            // returns in explicitly.
            self.state.backup_mode = BackupMode::Active;
            self.state.mode_expires_unix_s = None;
            self.mode_changed(BackupMode::Active);
        }
        self.record(now, JournalEntry::TermTaken(epoch));
        self.push_event(Event::TermTaken(epoch));
        self.abort_role_plans(now, true);
        self.start_takeover(now, kind, reason, epoch);
        self.send_status();
    }

    pub(super) fn become_standalone(&mut self, now: Instant) {
        self.link.stop_heartbeats();
        if self.role != Role::Master {
            self.role = Role::Master;
            self.take_term(now, PlanKind::ColdStart, None);
        }
    }

    pub(super) fn adopt_epoch(&mut self, now: Instant, epoch: Epoch) {
        self.state.highest_epoch = epoch;
        self.record(now, JournalEntry::EpochAdopted(epoch));
        self.push_event(Event::EpochAdopted(epoch));
        if self.role == Role::Master && !self.relinquishing {
            // Split brain healed: the peer holds a newer term. Leave at once.
            self.push_event(Event::Superseded { by: epoch });
            self.abort_role_plans(now, true);
            let p = self.step_down_plan();
            self.relinquishing = true;
            self.start_plan(now, p, None, None);
        }
        self.exec.restamp(self.state.highest_epoch);
    }

    /// The lost-role plan, then asking the election to step down.
    pub(super) fn step_down_plan(&self) -> Plan {
        let mut p = role_plans::lost_role(&self.config);
        p.push(
            Step::new(StepAction::Run(Command::StepDown))
                .timeout(self.config.timeouts.command)
                .retries(1)
                .on_failure(FailurePolicy::ContinueDegraded),
        );
        p
    }

    /// Aborts the Master-term plans; with `all`, also those that give the
    /// role up (a new term claims everything again).
    fn abort_role_plans(&mut self, now: Instant, all: bool) {
        let ids = self.exec.plans_of(|kind| match kind {
            PlanKind::Takeover | PlanKind::ColdStart => true,
            PlanKind::HandBack | PlanKind::LostRole | PlanKind::RollBack => all,
            _ => false,
        });
        for id in ids {
            self.abort_plan(now, id, false);
        }
        self.abandon_rehoming(now);
        self.exec.restamp(self.state.highest_epoch);
    }
}
