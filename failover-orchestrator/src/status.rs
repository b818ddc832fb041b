//! The status model a UI renders as is, and the failover timeline.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::phones::PhoneOutcome;
use crate::plan::PlanKind;
use crate::procedure::ParityField;
use crate::types::{BackupMode, ProtocolVersion, Redundancy, Role, RoleChangeReason};

/// A difference between the two units that the manual leaves to a person.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// Which field.
    pub field: ParityField,
    /// This node's value.
    pub ours: String,
    /// The peer's value.
    pub theirs: String,
}

/// What this node knows about its peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's device id.
    pub id: String,
    /// Heard within the peer timeout.
    pub up: bool,
    /// Role from its last heartbeat.
    pub role: Option<Role>,
    /// Backup mode from its last heartbeat.
    pub mode: Option<BackupMode>,
    /// Firmware from its hello.
    pub firmware: String,
    /// Peer-protocol version from its hello.
    pub protocol: ProtocolVersion,
    /// Whether it passed its readiness checks.
    pub ready: bool,
    /// Last sync generation it reported.
    pub sync_generation: Option<u64>,
}

/// Last sync generation on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    /// Generation number.
    pub generation: u64,
    /// Age in ms at the time of the status.
    pub age_ms: u64,
}

/// The running procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcedureView {
    /// Procedure id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Steps started or pending, by index and action.
    pub active_steps: Vec<(u16, String)>,
    /// Steps finished.
    pub done: usize,
    /// All steps.
    pub total: usize,
}

/// Everything a UI shows about redundancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// This node's device id.
    pub node_id: String,
    /// This node's role.
    pub role: Role,
    /// The newest epoch (this node's term when Master).
    pub epoch: Epoch,
    /// Redundancy switch.
    pub redundancy: Redundancy,
    /// This node's Backup mode.
    pub backup_mode: BackupMode,
    /// This node passed its readiness checks.
    pub ready: bool,
    /// The peer, once it said hello.
    pub peer: Option<PeerView>,
    /// Last sync generation and its age.
    pub sync: Option<SyncView>,
    /// The running procedure and step.
    pub procedure: Option<ProcedureView>,
    /// Parity findings (shown at all times).
    pub findings: Vec<Finding>,
    /// Timeline of the takeover in progress or the last one.
    pub timeline: Option<Timeline>,
}

impl Status {
    /// The appliance's one-liner, e.g. `Backup device with ID
    /// 06-5.1.30-005400 is UP (Active mode)` on a Master.
    #[must_use]
    pub fn one_liner(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.redundancy == Redundancy::Disabled {
            return write!(
                f,
                "Redundancy is disabled on device with ID {}",
                self.node_id
            );
        }
        match self.role {
            Role::Master => match &self.peer {
                // The mode is shown once the peer has reported it.
                Some(p) if p.up => match p.mode {
                    Some(mode) => write!(f, "Backup device with ID {} is UP ({mode} mode)", p.id),
                    None => write!(f, "Backup device with ID {} is UP", p.id),
                },
                Some(p) => write!(f, "Backup device with ID {} is DOWN", p.id),
                None => f.write_str("No backup device connected"),
            },
            Role::Backup => write!(f, "Device with ID {} is in Backup mode", self.node_id),
            Role::Initialize => write!(f, "Device with ID {} is starting", self.node_id),
        }
    }
}

/// A milestone of a takeover.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Milestone {
    /// The role change arrived.
    Detected,
    /// Any sync round in progress was finished or rolled back.
    SyncSettled,
    /// The virtual address is held.
    AddressClaimed,
    /// A service passed its readiness check.
    ServiceReady {
        /// Service index.
        service: u16,
        /// Its name.
        name: String,
    },
    /// A service failed its readiness check.
    ServiceFailed {
        /// Service index.
        service: u16,
        /// Its name.
        name: String,
    },
    /// This share of phones is resolved (registered, listed for a person,
    /// or unchecked: see [`crate::PhoneResult::Unchecked`]).
    Phones {
        /// 50, 95 or 100.
        percent: u8,
        /// Registered so far.
        registered: u32,
    },
    /// The plan finished.
    Done,
    /// The plan was aborted.
    Aborted,
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// ms after detection.
    pub at_ms: u64,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    pub what: Milestone,
}

/// The failover timeline: detection, address claimed, each service ready,
/// phones 50 % / 95 % / 100 %, done; with the data-loss window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Takeover or cold start.
    pub kind: PlanKind,
    /// Why the role changed.
    pub reason: Option<RoleChangeReason>,
    /// The term taken.
    pub epoch: Epoch,
    /// Entries in order.
    pub entries: Vec<TimelineEntry>,
    /// Generation the node started from.
    pub generation: Option<u64>,
    /// Age of that generation at takeover (the data actually lost), ms.
    pub data_loss_window_ms: Option<u64>,
    /// Per-phone outcomes (failover only), filled at the end.
    pub phones: Vec<PhoneOutcome>,
}

impl Timeline {
    /// ms after detection at which `pred` first held.
    #[must_use]
    pub fn at(&self, pred: impl Fn(&Milestone) -> bool) -> Option<u64> {
        self.entries.iter().find(|e| pred(&e.what)).map(|e| e.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master_with(peer: Option<PeerView>) -> Status {
        Status {
            node_id: "06-5.1.30-005400".into(),
            role: Role::Master,
            epoch: Epoch { term: 1, node: 1 },
            redundancy: Redundancy::Enabled,
            backup_mode: BackupMode::Active,
            ready: true,
            peer,
            sync: None,
            procedure: None,
            findings: Vec::new(),
            timeline: None,
        }
    }

    fn peer(up: bool, mode: Option<BackupMode>) -> PeerView {
        PeerView {
            id: "06-5.1.30-005401".into(),
            up,
            role: Some(Role::Backup),
            mode,
            firmware: "5.1.30".into(),
            protocol: ProtocolVersion::CURRENT,
            ready: true,
            sync_generation: None,
        }
    }

    #[test]
    fn the_one_liner_shows_the_mode_once_the_peer_reported_it() {
        assert_eq!(
            master_with(Some(peer(true, Some(BackupMode::Passive)))).one_liner(),
            "Backup device with ID 06-5.1.30-005401 is UP (Passive mode)"
        );
        assert_eq!(
            master_with(Some(peer(true, None))).one_liner(),
            "Backup device with ID 06-5.1.30-005401 is UP"
        );
        assert_eq!(
            master_with(Some(peer(false, Some(BackupMode::Active)))).one_liner(),
            "Backup device with ID 06-5.1.30-005401 is DOWN"
        );
        assert_eq!(master_with(None).one_liner(), "No backup device connected");
    }
}
