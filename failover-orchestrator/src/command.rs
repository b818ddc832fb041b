//! Commands the orchestrator asks the driver to carry out, and their results.

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::types::{BackupMode, PhoneId, Redundancy, ServiceId};

/// Identifies one issued command; its result comes back with the same id
/// through [`crate::Orchestrator::handle_command_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId(pub u64);

/// Something for the driver to do. Each maps onto a vendor hook or onto the
/// other crates (the examples do this mapping):
///
/// | command | carried out by |
/// | --- | --- |
/// | `FinishOrRollbackRound` | sync-delta: open the replica, which rolls an interrupted round forward or back; then report [`crate::SyncStatus`] |
/// | `SyncNow { full }` | sync-delta: run one round now (the replica pulls), even in Passive mode |
/// | `ClaimAddress` / `ReleaseAddress` | the address hook (add / delete the virtual IP) |
/// | `AnnounceAddress` | send the gratuitous ARP / unsolicited NA burst vrrp-fsm asked for |
/// | `ArmTakeover { priority }` | vrrp-fsm: `set_priority(priority)` then `arm_takeover()` (overrides Passive for this swap) |
/// | `Release { new_priority }` | vrrp-fsm: `release(Release::new().priority(p))` (priority 0 advertisement, then keep `p`; persist `p` for the next boot) |
/// | `StepDown` | vrrp-fsm: `release(Release::new())`, keeping the configured priority |
/// | `SetBackupMode(m)` | vrrp-fsm: `set_backup_mode(m)`; sync-delta: periodic sync on/off |
/// | `SetRedundancy(r)` | start / stop the election (standalone when disabled) |
/// | `Start/Stop/CheckService` | application hooks; `Check` answers [`CommandOutcome::NotReady`] until ready |
/// | `CheckNode` | the node's own readiness after boot or upgrade |
/// | `NudgePhone` / `RebootPhone` | phone hooks (SIP NOTIFY check-sync / resync; provisioning reboot) |
/// | `UpgradeFirmware`, `UpgradeLanguagePack`, `RestoreConfig`, `SaveConfig`, `StageImageOnPeer`, `RestartNode` | vendor hooks; a restore answers `Done` only if no reboot follows (else the resume after the reboot completes it); an upgrade may answer once installed, and completes with the restart |
/// | `Custom(tag)` | steps of vendor-built plans |
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Finish or roll back any sync round in progress.
    FinishOrRollbackRound,
    /// Run a sync round now; `full` compares every file.
    SyncNow {
        /// Compare every file instead of the quick check.
        full: bool,
    },
    /// Add the virtual address to the interface.
    ClaimAddress,
    /// Send the gratuitous ARP / unsolicited NA burst.
    AnnounceAddress,
    /// Remove the virtual address.
    ReleaseAddress,
    /// Arm this Backup to take over when the Master releases.
    ArmTakeover {
        /// VRRP priority while armed and after the takeover.
        priority: u8,
    },
    /// Release Mastership (priority 0), then keep `new_priority` so that the
    /// swap holds under preempt.
    Release {
        /// Priority after the release, persisted by the driver.
        new_priority: Option<u8>,
    },
    /// Leave Master at once (stale epoch, failed takeover).
    StepDown,
    /// Set the Backup mode.
    SetBackupMode(BackupMode),
    /// Enable or disable redundancy.
    SetRedundancy(Redundancy),
    /// Start an application.
    StartService(ServiceId),
    /// Stop an application.
    StopService(ServiceId),
    /// Ask whether an application is ready.
    CheckService(ServiceId),
    /// Ask whether this node is ready (after boot or upgrade).
    CheckNode,
    /// Ask a phone to re-register without rebooting.
    NudgePhone(PhoneId),
    /// Reboot a phone.
    RebootPhone(PhoneId),
    /// Install a firmware image (the node reboots afterwards).
    UpgradeFirmware {
        /// Firmware version to install.
        version: String,
    },
    /// Install a language pack.
    UpgradeLanguagePack {
        /// Language pack to install.
        pack: String,
    },
    /// Save the configuration.
    SaveConfig,
    /// Hand the upgrade's image to the peer (a Passive Backup does not
    /// sync): `Done` once the peer has it, its size and hash checked. A
    /// driver whose peer gets its images another way answers `Done` at
    /// once.
    StageImageOnPeer,
    /// Restore a saved configuration (the node may reboot).
    RestoreConfig {
        /// Which saved configuration.
        backup: String,
    },
    /// Restart this node.
    RestartNode,
    /// A step of a vendor-built plan.
    Custom(u32),
}

impl core::fmt::Display for Command {
    /// In words, for a status page: `save the configuration`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Command::FinishOrRollbackRound => f.write_str("finish or roll back the sync round"),
            Command::SyncNow { full: true } => f.write_str("sync now, every file compared"),
            Command::SyncNow { full: false } => f.write_str("sync now"),
            Command::ClaimAddress => f.write_str("claim the virtual address"),
            Command::AnnounceAddress => f.write_str("announce the virtual address"),
            Command::ReleaseAddress => f.write_str("release the virtual address"),
            Command::ArmTakeover { priority } => {
                write!(f, "arm the takeover at priority {priority}")
            }
            Command::Release {
                new_priority: Some(p),
            } => write!(f, "release Mastership, then priority {p}"),
            Command::Release { new_priority: None } => f.write_str("release Mastership"),
            Command::StepDown => f.write_str("step down"),
            Command::SetBackupMode(m) => write!(f, "set the Backup mode to {m}"),
            Command::SetRedundancy(crate::types::Redundancy::Enabled) => {
                f.write_str("enable redundancy")
            }
            Command::SetRedundancy(crate::types::Redundancy::Disabled) => {
                f.write_str("disable redundancy")
            }
            Command::StartService(s) => write!(f, "start service {}", s.0),
            Command::StopService(s) => write!(f, "stop service {}", s.0),
            Command::CheckService(s) => write!(f, "check service {}", s.0),
            Command::CheckNode => f.write_str("check this unit"),
            Command::NudgePhone(p) => write!(f, "nudge phone {}", p.0),
            Command::RebootPhone(p) => write!(f, "reboot phone {}", p.0),
            Command::UpgradeFirmware { version } => write!(f, "install firmware {version}"),
            Command::UpgradeLanguagePack { pack } => write!(f, "install language pack {pack}"),
            Command::SaveConfig => f.write_str("save the configuration"),
            Command::StageImageOnPeer => f.write_str("hand the image to the peer"),
            Command::RestoreConfig { backup } => write!(f, "restore the configuration {backup}"),
            Command::RestartNode => f.write_str("restart"),
            Command::Custom(tag) => write!(f, "vendor step {tag}"),
        }
    }
}

impl Command {
    /// Commands after which the node may reboot: when the orchestrator
    /// resumes from a journal in which such a step had started, the step is
    /// taken as done (the restart is why it resumes) and the steps after it
    /// verify the outcome.
    #[must_use]
    pub fn reboots_node(&self) -> bool {
        matches!(
            self,
            Command::RestartNode | Command::UpgradeFirmware { .. } | Command::RestoreConfig { .. }
        )
    }

    /// Commands after which the node must restart: in an operator procedure
    /// such a step is not done when the command answers `Done` (the image is
    /// installed, the reboot is still to come) but when the orchestrator
    /// resumes after the restart; if the node does not restart before the
    /// step's deadline, the step fails. A configuration restore that needs
    /// no reboot is done on `Done`; checks after it verify the result.
    #[must_use]
    pub fn waits_for_restart(&self) -> bool {
        matches!(self, Command::RestartNode | Command::UpgradeFirmware { .. })
    }

    /// Steps with these commands are taken as done when a resume finds them
    /// started: the reboot commands (see [`Command::reboots_node`]) and
    /// [`Command::Release`], the point of no return of a swap (if the crash
    /// came before the release went out, the restart itself silenced this
    /// node's advertisements, and the armed peer takes over).
    #[must_use]
    pub fn done_once_started(&self) -> bool {
        self.reboots_node() || matches!(self, Command::Release { .. })
    }
}

/// A command together with its id and the epoch it was issued under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Answer with this id.
    pub id: CommandId,
    /// The newest epoch the node knew when it issued the command.
    pub epoch: Epoch,
    /// What to do.
    pub command: Command,
}

/// The result of a command.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Done (for checks: ready).
    Done,
    /// For checks: not ready yet, ask again later.
    NotReady,
    /// Failed with a vendor error code.
    Failed {
        /// Vendor error code.
        code: u32,
    },
}
