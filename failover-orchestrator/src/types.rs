//! Mirror types at the boundary with `vrrp-fsm` and `sync-delta`, and the
//! small value types the rest of the crate shares.
//!
//! This crate does not depend on the election or the replication crates; the
//! driver converts their outputs into these types (the expected mapping is
//! written on each type).

use core::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The node's VRRP role, as `vrrp-fsm` reports it (RFC 9568 §6.4: states
/// Initialize, Backup and Master).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Not yet elected (RFC 9568 §6.4.1).
    Initialize,
    /// Listening to the Master (RFC 9568 §6.4.2).
    Backup,
    /// Forwarding for the virtual address (RFC 9568 §6.4.3).
    Master,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Initialize => "Initialize",
            Role::Backup => "Backup",
            Role::Master => "Master",
        })
    }
}

/// Why the role changed; mirrors the reason on `vrrp-fsm`'s `StateChange`.
///
/// Expected mapping from `vrrp_fsm::Reason`: `Startup` and `Owner` →
/// [`Startup`](Self::Startup); `MasterDown` → [`MasterDown`](Self::MasterDown);
/// `MasterReleased` → [`PeerReleased`](Self::PeerReleased); `Preempt` →
/// [`Preempt`](Self::Preempt); `HigherPriority` →
/// [`HigherPriorityMaster`](Self::HigherPriorityMaster); `ArmedTakeover` and
/// `Takeover` → [`SwapTakeover`](Self::SwapTakeover); `Release` →
/// [`Released`](Self::Released); `Shutdown` → [`Shutdown`](Self::Shutdown);
/// `LinkDown` → [`LinkDown`](Self::LinkDown); anything else →
/// [`Other`](Self::Other).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoleChangeReason {
    /// The router started (Initialize → Master as owner, or → Backup).
    Startup,
    /// Master_Down_Timer fired: the Master went silent (RFC 9568 §6.4.2).
    MasterDown,
    /// A higher-priority Master was heard (RFC 9568 §6.4.3); the address
    /// must go at once.
    HigherPriorityMaster,
    /// The Master sent priority 0 and this Backup took over after Skew_Time.
    PeerReleased,
    /// An armed swap takeover (the appliance's "Swap Master Device").
    SwapTakeover,
    /// This node released Mastership on purpose (priority 0 sent).
    Released,
    /// This node preempted a lower-priority Master.
    Preempt,
    /// The driver reported the link down.
    LinkDown,
    /// The router was shut down.
    Shutdown,
    /// Any other reason the election reports.
    Other,
}

/// A role change: `vrrp-fsm`'s `StateChange { from, to, reason }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    /// Role before.
    pub from: Role,
    /// Role after.
    pub to: Role,
    /// Why.
    pub reason: RoleChangeReason,
}

/// Replica generation status from `sync-delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The newest committed generation number on this node.
    pub generation: u64,
    /// When that generation was taken on the source (wall clock of the
    /// source, carried in sync-delta's frames).
    pub taken_at: SystemTime,
    /// Whether a round is in progress (takeover finishes or rolls it back).
    pub round_in_progress: bool,
}

impl SyncStatus {
    /// Age of the generation at wall time `wall` (zero if `taken_at` is in
    /// the future, e.g. clocks of the two units disagree).
    #[must_use]
    pub fn age(&self, wall: SystemTime) -> Duration {
        wall.duration_since(self.taken_at).unwrap_or(Duration::ZERO)
    }
}

/// The appliance's Backup modes (manual §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BackupMode {
    /// Listens to advertisements, syncs, ready to take over.
    #[default]
    Active,
    /// Ignores advertisements and does no periodic sync; becomes Master only
    /// through a swap. Procedures may still run a one-off sync.
    Passive,
}

impl fmt::Display for BackupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupMode::Active => "Active",
            BackupMode::Passive => "Passive",
        })
    }
}

/// The manual's "Enable Redundancy" switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Redundancy {
    /// Part of a pair.
    #[default]
    Enabled,
    /// Standalone Master, no peer.
    Disabled,
}

/// Peer-protocol version. Two nodes are compatible when the major versions
/// are equal; the minor version only adds optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this crate speaks. Major 2: the peer link is encrypted
    /// (`sync_delta::frame::VERSION` 2); a unit on major 1 cannot talk to
    /// it, so a rolling upgrade across it is refused at preflight.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 2, minor: 0 };

    /// Same major version.
    #[must_use]
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A node's identity as the vendor configures it and the peer announces it
/// in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Device id shown in status, e.g. `06-5.1.30-005400`.
    pub node_id: String,
    /// Firmware version string.
    pub firmware: String,
    /// Installed language pack.
    pub language_pack: String,
    /// Licence keys or feature names, compared as a set.
    pub licences: Vec<String>,
    /// Peer-protocol version this node speaks.
    pub protocol: ProtocolVersion,
}

impl Identity {
    /// A node's identity with no licences, speaking
    /// [`ProtocolVersion::CURRENT`]; set [`Identity::licences`] on the
    /// result where the vendor's licences must match across the pair.
    ///
    /// ```
    /// use failover_orchestrator::{Identity, ProtocolVersion};
    ///
    /// let id = Identity::new("06-5.1.30-005400", "5.1.30", "en");
    /// assert_eq!(id.firmware, "5.1.30");
    /// assert!(id.licences.is_empty());
    /// assert_eq!(id.protocol, ProtocolVersion::CURRENT);
    /// ```
    #[must_use]
    pub fn new(
        node_id: impl Into<String>,
        firmware: impl Into<String>,
        language_pack: impl Into<String>,
    ) -> Identity {
        Identity {
            node_id: node_id.into(),
            firmware: firmware.into(),
            language_pack: language_pack.into(),
            licences: Vec::new(),
            protocol: ProtocolVersion::CURRENT,
        }
    }
}

/// Index of a service (application) in [`crate::Config`]'s service list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId(pub u16);

/// A phone's index in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PhoneId(pub u32);

/// Longest duration accepted anywhere (a step timeout, a pacing interval,
/// a mode expiry): 30 days. Deadlines beyond it would only overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Milliseconds of a duration, saturating (for serializable records).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
