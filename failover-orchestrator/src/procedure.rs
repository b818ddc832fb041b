//! Operator procedures from the manual, as resumable plans with preflight
//! checks.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::command::Command;
use crate::config::Config;
use crate::plan::{FailurePolicy, PeerCondition, Plan, PlanKind, Step, StepAction};
use crate::role_plans;
use crate::types::{BackupMode, ProtocolVersion, Redundancy, Role, ServiceId};
use crate::wire::PeerRequest;

/// What an operator asks for.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRequest {
    /// Set the Backup mode: on a Backup its own, on a Master the peer's.
    SetBackupMode {
        /// The mode.
        mode: BackupMode,
        /// Optional wall-clock expiry (back to Active then).
        expires_at: Option<SystemTime>,
    },
    /// The manual's "Enable Redundancy" switch.
    SetRedundancy(Redundancy),
    /// "Swap Master Device", on the Master.
    Swap,
    /// Rolling firmware upgrade, on the Master.
    RollingUpgrade {
        /// Firmware version to install on both units.
        firmware: String,
        /// Language pack to install with it.
        language_pack: Option<String>,
        /// Peer-protocol version the new firmware speaks.
        protocol: ProtocolVersion,
    },
    /// Configuration restore without a failover, on the Master.
    ConfigRestore {
        /// Which saved configuration.
        backup: String,
    },
    /// Planned hand-back to an Active Backup, on the Master: stop services
    /// in reverse order, release the address, then release Mastership.
    HandBack,
}

/// A procedure with the parameters fixed at preflight; stored in the
/// journal so that a restarted node rebuilds the same plan.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Procedure {
    /// Set a Backup mode.
    SetBackupMode {
        /// The mode.
        mode: BackupMode,
        /// Expiry, seconds since the Unix epoch.
        expires_unix_s: Option<u64>,
        /// Whether it is the peer's mode (run on the Master).
        on_peer: bool,
    },
    /// Switch redundancy.
    SetRedundancy(Redundancy),
    /// Swap roles.
    Swap {
        /// The Backup's mode before the swap, which this node takes.
        peer_mode: BackupMode,
    },
    /// Rolling upgrade.
    RollingUpgrade {
        /// Firmware version.
        firmware: String,
        /// Language pack.
        language_pack: Option<String>,
    },
    /// Configuration restore.
    ConfigRestore {
        /// Saved configuration.
        backup: String,
        /// The Backup's mode before, restored at the end.
        peer_mode: BackupMode,
    },
    /// Planned hand-back.
    HandBack,
}

impl Procedure {
    /// Short name for status.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Procedure::SetBackupMode { .. } => "set backup mode",
            Procedure::SetRedundancy(_) => "set redundancy",
            Procedure::Swap { .. } => "swap",
            Procedure::RollingUpgrade { .. } => "rolling upgrade",
            Procedure::ConfigRestore { .. } => "configuration restore",
            Procedure::HandBack => "hand-back",
        }
    }

    /// The mode this node must take as Backup after a swap.
    pub(crate) fn mode_after_swap(&self) -> Option<BackupMode> {
        match self {
            Procedure::Swap { peer_mode } => Some(*peer_mode),
            Procedure::RollingUpgrade { .. } => Some(BackupMode::Passive),
            _ => None,
        }
    }

    /// Builds the plan.
    pub(crate) fn plan(&self, config: &Config) -> Plan {
        let t = &config.timeouts;
        let mut p = Plan::new(PlanKind::Procedure);
        match self {
            Procedure::SetBackupMode {
                mode,
                expires_unix_s,
                on_peer,
            } => {
                let action = if *on_peer {
                    StepAction::AskPeer(PeerRequest::SetMode {
                        mode: *mode,
                        expires_unix_s: *expires_unix_s,
                    })
                } else {
                    StepAction::Run(Command::SetBackupMode(*mode))
                };
                p.push(Step::new(action).timeout(t.peer_request).retries(2));
            }
            Procedure::SetRedundancy(r) => {
                p.push(
                    Step::new(StepAction::Run(Command::SetRedundancy(*r)))
                        .timeout(t.command)
                        .retries(1),
                );
            }
            Procedure::Swap { peer_mode } => {
                let last = role_plans::swap_handover(config, &mut p, None);
                finish_as_backup(config, &mut p, last, None, *peer_mode);
            }
            Procedure::RollingUpgrade {
                firmware,
                language_pack,
            } => {
                // The manual's order: the Master's configuration saved
                // first, the Backup Passive, the image on the Backup, the
                // Backup upgraded (it saves its own configuration first).
                let save = p.push(
                    Step::new(StepAction::Run(Command::SaveConfig))
                        .timeout(t.command)
                        .retries(1),
                );
                let passive = p.push(
                    Step::new(StepAction::AskPeer(PeerRequest::SetMode {
                        mode: BackupMode::Passive,
                        expires_unix_s: None,
                    }))
                    .after(&[save])
                    .timeout(t.peer_request)
                    .retries(2),
                );
                let stage = p.push(
                    Step::new(StepAction::Run(Command::StageImageOnPeer))
                        .after(&[passive])
                        .timeout(t.upgrade)
                        .retries(1)
                        .expected(Duration::from_secs(10)),
                );
                let upgrade = p.push(
                    Step::new(StepAction::AskPeer(PeerRequest::Upgrade {
                        firmware: firmware.clone(),
                        language_pack: language_pack.clone(),
                    }))
                    .after(&[stage])
                    .timeout(t.upgrade)
                    .expected(Duration::from_secs(300)),
                );
                // Aborts cleanly when the upgraded Backup never becomes
                // ready: it stays Passive, so it cannot take over.
                let back = p.push(
                    Step::new(StepAction::AwaitPeer(PeerCondition {
                        role: Some(Role::Backup),
                        mode: Some(BackupMode::Passive),
                        firmware: Some(firmware.clone()),
                        ready: true,
                    }))
                    .after(&[upgrade])
                    .timeout(t.upgrade)
                    .expected(Duration::from_secs(120)),
                );
                let last = role_plans::swap_handover(config, &mut p, Some(back));
                let upgrade_self = Upgrade {
                    firmware: firmware.clone(),
                    language_pack: language_pack.clone(),
                };
                finish_as_backup(config, &mut p, last, Some(upgrade_self), BackupMode::Active);
            }
            Procedure::HandBack => {
                p = role_plans::hand_back(config);
                p.kind = PlanKind::Procedure;
                let last = u16::try_from(p.steps.len().saturating_sub(1)).unwrap_or(0);
                p.push(
                    Step::new(StepAction::Run(Command::Release { new_priority: None }))
                        .after(&[last])
                        .timeout(t.command)
                        .retries(1),
                );
            }
            Procedure::ConfigRestore { backup, peer_mode } => {
                let passive = p.push(
                    Step::new(StepAction::AskPeer(PeerRequest::SetMode {
                        mode: BackupMode::Passive,
                        expires_unix_s: None,
                    }))
                    .timeout(t.peer_request)
                    .retries(2)
                    .undo(StepAction::AskPeer(PeerRequest::SetMode {
                        mode: *peer_mode,
                        expires_unix_s: None,
                    })),
                );
                let restore = p.push(
                    Step::new(StepAction::Run(Command::RestoreConfig {
                        backup: backup.clone(),
                    }))
                    .after(&[passive])
                    .timeout(t.upgrade)
                    .expected(Duration::from_secs(120)),
                );
                let master = p.push(
                    Step::new(StepAction::AwaitRole(Role::Master))
                        .after(&[restore])
                        .timeout(t.await_peer)
                        .expected(Duration::from_secs(1)),
                );
                let mut ready = vec![master];
                for (i, s) in config.services.iter().enumerate() {
                    let sid = ServiceId(u16::try_from(i).unwrap_or(u16::MAX));
                    ready.push(
                        p.push(
                            Step::new(StepAction::ServiceReady(sid))
                                .after(&[master])
                                .timeout(s.ready_timeout)
                                .retries(s.retries)
                                .expected(s.expected_ready),
                        ),
                    );
                }
                let sync = p.push(
                    Step::new(StepAction::AskPeer(PeerRequest::SyncNow { full: true }))
                        .after(&ready)
                        .timeout(t.sync)
                        .retries(1)
                        .expected(Duration::from_secs(30)),
                );
                p.push(
                    Step::new(StepAction::AskPeer(PeerRequest::SetMode {
                        mode: *peer_mode,
                        expires_unix_s: None,
                    }))
                    .after(&[sync])
                    .timeout(t.peer_request)
                    .retries(2),
                );
            }
        }
        p
    }
}

struct Upgrade {
    firmware: String,
    language_pack: Option<String>,
}

/// After the hand-over: restart (or upgrade, which restarts), come back as
/// Backup, pass readiness, take the final mode.
fn finish_as_backup(
    config: &Config,
    p: &mut Plan,
    last: u16,
    upgrade: Option<Upgrade>,
    mode: BackupMode,
) {
    let t = &config.timeouts;
    let mut prev = last;
    match upgrade {
        None => {
            prev = p.push(
                Step::new(StepAction::Run(Command::RestartNode))
                    .after(&[prev])
                    .timeout(t.upgrade)
                    .expected(Duration::from_secs(60)),
            );
        }
        Some(u) => {
            if let Some(pack) = u.language_pack {
                prev = p.push(
                    Step::new(StepAction::Run(Command::UpgradeLanguagePack { pack }))
                        .after(&[prev])
                        .timeout(t.upgrade)
                        .expected(Duration::from_secs(60)),
                );
            }
            prev = p.push(
                Step::new(StepAction::Run(Command::UpgradeFirmware {
                    version: u.firmware,
                }))
                .after(&[prev])
                .timeout(t.upgrade)
                .expected(Duration::from_secs(300)),
            );
        }
    }
    let role = p.push(
        Step::new(StepAction::AwaitRole(Role::Backup))
            .after(&[prev])
            .timeout(t.await_peer)
            .expected(Duration::from_secs(5)),
    );
    let ready = p.push(
        Step::new(StepAction::NodeReady)
            .after(&[role])
            .timeout(t.node_ready)
            .expected(Duration::from_secs(1)),
    );
    p.push(
        Step::new(StepAction::Run(Command::SetBackupMode(mode)))
            .after(&[ready])
            .timeout(t.command)
            .retries(2)
            .on_failure(FailurePolicy::ContinueDegraded),
    );
}

/// How a procedure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcedureOutcome {
    /// Every step done.
    Completed,
    /// Done, with steps that failed under `ContinueDegraded`.
    Degraded,
    /// Stopped by a failed step (rolled back where it had an undo).
    Aborted,
}

/// Which identity field differs between the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParityField {
    /// Firmware version.
    Firmware,
    /// Language pack.
    LanguagePack,
    /// Licence set.
    Licences,
    /// Peer-protocol major version.
    Protocol,
}

/// Why a procedure is refused before it starts.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PreflightError {
    /// Another procedure runs.
    #[error("procedure {0} is running")]
    ProcedureRunning(u64),
    /// Redundancy is disabled.
    #[error("redundancy is disabled")]
    RedundancyDisabled,
    /// The peer is down (no heartbeat within the peer timeout).
    #[error("peer is down")]
    PeerDown,
    /// Peer-protocol major versions differ.
    #[error("peer protocol {theirs} is incompatible with {ours}")]
    ProtocolIncompatible {
        /// Ours (or the new firmware's).
        ours: ProtocolVersion,
        /// The peer's.
        theirs: ProtocolVersion,
    },
    /// Firmware, language pack or licences differ.
    #[error("units differ in {0:?}")]
    Parity(ParityField),
    /// This node has the wrong role for the procedure.
    #[error("this node is {0}, the procedure needs another role")]
    WrongRole(Role),
    /// The peer has the wrong role.
    #[error("peer is not Backup")]
    PeerNotBackup,
    /// The peer's data is stale although it is Active (replication is
    /// failing).
    #[error("peer's last sync is {age_s} s old")]
    SyncStale {
        /// Age in seconds (`u64::MAX` when never synced).
        age_s: u64,
    },
    /// The peer is Passive and would not take over.
    #[error("peer is passive")]
    PeerPassive,
    /// The Backup is already in that state.
    #[error("nothing to do")]
    NothingToDo,
    /// Redundancy off here would leave the address on both units: the
    /// peer is an up Master, or an Active Backup that would take over once
    /// this unit stops advertising. Stop the peer, or set it Passive,
    /// first.
    #[error("the peer ({0}) would serve too; stop it or set it Passive first")]
    PeerWouldServeToo(Role),
}

impl PreflightError {
    /// A stable `snake_case` name of the refusal, for APIs and metrics
    /// (the text of [`std::fmt::Display`] is for people and may change).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            PreflightError::ProcedureRunning(_) => "procedure_running",
            PreflightError::RedundancyDisabled => "redundancy_disabled",
            PreflightError::PeerDown => "peer_down",
            PreflightError::ProtocolIncompatible { .. } => "protocol_incompatible",
            PreflightError::Parity(_) => "parity",
            PreflightError::WrongRole(_) => "wrong_role",
            PreflightError::PeerNotBackup => "peer_not_backup",
            PreflightError::SyncStale { .. } => "sync_stale",
            PreflightError::PeerPassive => "peer_passive",
            PreflightError::NothingToDo => "nothing_to_do",
            PreflightError::PeerWouldServeToo(_) => "peer_would_serve_too",
        }
    }
}
