//! Operator procedures: preflight checks, starting a procedure with its
//! journal, resuming it after a restart, finishing it, and the backup
//! mode's expiry.

use std::time::{Duration, Instant, UNIX_EPOCH};

use super::executor::{PlanOutcome, Route};
use super::{Event, Orchestrator, unix_ms};
use crate::command::Command;
use crate::journal::{JournalEntry, ProcedureJournal, StepMark};
use crate::plan::{Plan, StepAction};
use crate::procedure::{OperatorRequest, ParityField, PreflightError, Procedure, ProcedureOutcome};
use crate::types::{BackupMode, MAX_DURATION, Redundancy, Role};
use crate::wire::PeerRequest;

impl Orchestrator {
    /// Preflight, then the procedure's journal and plan.
    pub(super) fn start_procedure(
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
                self.mode_changed(*mode);
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

    pub(super) fn preflight(
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
            if !o.link.up() {
                return Err(PreflightError::PeerDown);
            }
            let theirs = o.link.identity().map(|p| p.protocol);
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
            if o.link.report().is_none_or(|s| s.role != Role::Backup) {
                return Err(PreflightError::PeerNotBackup);
            }
            Ok(())
        };
        let peer_mode = self.link.report().map_or(BackupMode::Active, |s| s.mode);
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
                if *r == Redundancy::Disabled && self.link.up() {
                    // A standalone unit serves as Master. Beside an up
                    // Master, or beside an Active Backup that would take
                    // over once this unit stops advertising, the address
                    // would be on both.
                    match self.link.report() {
                        Some(s) if s.role == Role::Master => {
                            return Err(PreflightError::PeerWouldServeToo(Role::Master));
                        }
                        Some(s) if s.role == Role::Backup && s.mode == BackupMode::Active => {
                            return Err(PreflightError::PeerWouldServeToo(Role::Backup));
                        }
                        _ => {}
                    }
                }
                Ok(Procedure::SetRedundancy(*r))
            }
            OperatorRequest::Swap => {
                master_with_backup(self)?;
                // The manual's upgrade swaps to a Passive Backup already on
                // the new firmware or language pack: that difference is
                // expected then. Anything else, and any difference beside
                // an Active Backup, blocks.
                let upgrading = peer_mode == BackupMode::Passive;
                if let Some(f) = self.link.findings().iter().find(|f| {
                    !(upgrading
                        && matches!(f.field, ParityField::Firmware | ParityField::LanguagePack))
                }) {
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
                    .link
                    .findings()
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

    /// Resumes the procedure journaled before a restart.
    pub(super) fn resume(&mut self, now: Instant, j: ProcedureJournal) {
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
        let armed_before_restart = plan.steps.iter().zip(&j.steps).any(|(s, m)| {
            matches!(s.action, StepAction::AskPeer(PeerRequest::Arm { .. }))
                && matches!(m, StepMark::Done | StepMark::Started)
        });
        let marks = resumed_marks(&plan, &j.steps, &self.config.identity.firmware);
        let id = self.start_plan(now, plan, Some(j.id), None);
        self.exec.restore(id, &marks, armed_before_restart);
        if let Some(jj) = self.state.procedure.as_mut() {
            for (m, resumed) in jj.steps.iter_mut().zip(marks) {
                *m = resumed;
            }
        }
    }

    /// The plan of procedure `id` ended.
    pub(super) fn procedure_finished(&mut self, now: Instant, id: u64, outcome: PlanOutcome) {
        let outcome = match outcome {
            PlanOutcome::Completed => ProcedureOutcome::Completed,
            PlanOutcome::Degraded => ProcedureOutcome::Degraded,
            PlanOutcome::Aborted => ProcedureOutcome::Aborted,
        };
        let finished = self.state.procedure.take();
        self.record(now, JournalEntry::ProcedureFinished { id, outcome });
        self.push_event(Event::ProcedureFinished { id, outcome });
        if let Some(Procedure::SetRedundancy(Redundancy::Disabled)) = finished.map(|j| j.procedure)
        {
            self.become_standalone(now);
        } else if self.state.redundancy == Redundancy::Enabled && self.link.heartbeats_stopped() {
            self.link
                .start_heartbeats(now + self.config.heartbeat_interval);
            self.send_hello(now);
            self.send_status();
        }
    }

    pub(super) fn arm_mode_expiry(&mut self, now: Instant) {
        // The expiry may come from the peer: never overflow, and cap it.
        self.mode_expiry = self.state.mode_expires_unix_s.map(|s| {
            let left = UNIX_EPOCH
                .checked_add(Duration::from_secs(s))
                .and_then(|expires| expires.duration_since(self.wall(now)).ok())
                .map_or(MAX_DURATION, |d| d.min(MAX_DURATION));
            if s == 0 { now } else { now + left }
        });
    }

    /// A timed backup mode ran out: back to Active.
    pub(super) fn expire_mode(&mut self, now: Instant) {
        if self.mode_expiry.is_some_and(|t| t <= now) {
            self.mode_expiry = None;
            self.state.mode_expires_unix_s = None;
            if self.state.backup_mode != BackupMode::Active {
                self.state.backup_mode = BackupMode::Active;
                self.record(now, JournalEntry::ModeChanged(BackupMode::Active));
                self.mode_changed(BackupMode::Active);
                self.issue(Command::SetBackupMode(BackupMode::Active), Route::Loose);
            }
        }
    }
}

/// The step marks a resumed plan starts from. A reboot step the journal
/// saw start is done (the restart is why we resume); checks passed before
/// the restart say nothing about now, so a finished check whose dependents
/// have not all finished runs again, with the steps it guards.
fn resumed_marks(plan: &Plan, journal: &[StepMark], firmware: &str) -> Vec<StepMark> {
    let mut marks: Vec<StepMark> = journal
        .iter()
        .enumerate()
        .map(|(i, mark)| {
            let reboots = match plan.steps.get(i).map(|s| &s.action) {
                // Installed only if this node now runs that version.
                Some(StepAction::Run(Command::UpgradeFirmware { version })) => version == firmware,
                Some(StepAction::Run(c)) => c.done_once_started(),
                _ => false,
            };
            match mark {
                StepMark::Done => StepMark::Done,
                StepMark::Failed => StepMark::Failed,
                // The restart is why we resume: the step happened (or,
                // for a release, the restart released the role).
                StepMark::Started if reboots => StepMark::Done,
                _ => StepMark::Pending,
            }
        })
        .collect();
    // Checks passed before the restart say nothing about now: a finished
    // check whose dependents have not all finished runs again (roles, peer
    // state and readiness may have changed).
    for i in 0..marks.len() {
        let is_check = matches!(
            plan.steps.get(i).map(|s| &s.action),
            Some(
                StepAction::AwaitRole(_)
                    | StepAction::AwaitPeer(_)
                    | StepAction::NodeReady
                    | StepAction::ServiceReady(_)
            )
        );
        let frontier = plan.steps.iter().enumerate().any(|(j, s)| {
            s.deps.iter().any(|d| usize::from(*d) == i) && marks.get(j) != Some(&StepMark::Done)
        });
        if is_check && frontier && marks.get(i) == Some(&StepMark::Done) {
            // The check and the steps it guards run again (plans put their
            // guards as direct dependencies); reboot steps are never
            // repeated.
            let guarded: Vec<usize> = plan
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
                if let Some(slot) = marks.get_mut(j) {
                    *slot = StepMark::Pending;
                }
            }
        }
    }
    marks
}
