//! Counters: every drop reason, every transition.

use vrrp_proto::DropReason;

use crate::event::{Reason, State};

/// A received advertisement dropped by a rule that needs configuration
/// (RFC 9568 §7.1, RFC 3768 §7.1); the packet-alone rules are vrrp-proto's
/// [`DropReason`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigDrop {
    /// A VRRP version other than the configured one (RFC 9568 §8.4: v2 and
    /// v3 are not mixed on one router).
    #[error("vrrp version differs from the configured one")]
    Version = 0,
    /// RFC 9568 §7.1: the VRID is not this router's.
    #[error("vrid is not configured")]
    Vrid,
    /// RFC 2338 §7.1 (VRRPv2): the authentication type or key differs.
    #[error("authentication type or key mismatch")]
    Auth,
    /// Our own advertisement, looped back.
    #[error("own advertisement")]
    Own,
    /// With unicast peers configured, the source is not one of them.
    #[error("source is not a configured unicast peer")]
    Peer,
    /// RFC 9568 §7.1: the address count or list differs and the sender is
    /// not the address owner (priority 255).
    #[error("virtual address list mismatch from a non-owner")]
    Addresses,
    /// RFC 3768 §7.1 (VRRPv2): the advertisement interval differs from the
    /// configured one.
    #[error("vrrpv2 advertisement interval mismatch")]
    Interval,
    /// The router is in Initialize (not started, shut down or link down).
    #[error("router not running")]
    NotRunning,
}

impl ConfigDrop {
    /// Number of reasons.
    pub const COUNT: usize = 8;
    /// Every reason, in counter order.
    pub const ALL: [ConfigDrop; Self::COUNT] = [
        ConfigDrop::Version,
        ConfigDrop::Vrid,
        ConfigDrop::Auth,
        ConfigDrop::Own,
        ConfigDrop::Peer,
        ConfigDrop::Addresses,
        ConfigDrop::Interval,
        ConfigDrop::NotRunning,
    ];
    /// A stable snake_case name for metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ConfigDrop::Version => "version_mismatch",
            ConfigDrop::Vrid => "vrid",
            ConfigDrop::Auth => "auth",
            ConfigDrop::Own => "own",
            ConfigDrop::Peer => "peer",
            ConfigDrop::Addresses => "addresses",
            ConfigDrop::Interval => "interval_mismatch",
            ConfigDrop::NotRunning => "not_running",
        }
    }
}

/// The engine's counters. Read with [`crate::VirtualRouter::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Advertisements that passed every rule.
    pub rx_accepted: u64,
    /// Accepted advertisements with priority 0.
    pub rx_priority_zero: u64,
    /// Accepted advertisements ignored by a Passive Backup.
    pub rx_ignored_passive: u64,
    /// Lower-priority advertisements a preempting Backup discarded.
    pub rx_preempt_discards: u64,
    /// Address-list mismatches accepted because the sender is the owner
    /// (RFC 9568 §7.1 lets the owner's advertisement through; logged here).
    pub rx_address_mismatch_owner: u64,
    /// Advertisements written by `poll_transmit` (one per destination).
    pub tx_advertisements: u64,
    /// Of those, priority-0 (release / shutdown).
    pub tx_priority_zero: u64,
    /// Transmits dropped because the caller's buffer was too small.
    pub tx_buffer_too_small: u64,
    /// Advertisements not queued because the transmit queue was full.
    pub tx_queue_full: u64,
    /// Events not queued because the event queue was full (the driver did
    /// not drain).
    pub events_dropped: u64,
    proto_drops: [u64; DropReason::COUNT],
    config_drops: [u64; ConfigDrop::COUNT],
    transitions: [[u64; 3]; 3],
    reasons: [u64; Reason::COUNT],
}

impl Stats {
    /// Drops by vrrp-proto's packet-alone rules.
    #[must_use]
    pub fn proto_drops(&self, reason: DropReason) -> u64 {
        self.proto_drops
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }
    /// Drops by this crate's configuration rules.
    #[must_use]
    pub fn config_drops(&self, reason: ConfigDrop) -> u64 {
        self.config_drops
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }
    /// Every drop, of both kinds.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.proto_drops.iter().sum::<u64>() + self.config_drops.iter().sum::<u64>()
    }
    /// Transitions from one state to another.
    #[must_use]
    pub fn transitions(&self, from: State, to: State) -> u64 {
        self.transitions[from as usize][to as usize]
    }
    /// Transitions made for a reason.
    #[must_use]
    pub fn transitions_for(&self, reason: Reason) -> u64 {
        self.reasons
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn count_proto(&mut self, reason: DropReason) {
        if let Some(c) = self.proto_drops.get_mut(reason as usize) {
            *c += 1;
        }
    }
    pub(crate) fn count_config(&mut self, reason: ConfigDrop) {
        if let Some(c) = self.config_drops.get_mut(reason as usize) {
            *c += 1;
        }
    }
    pub(crate) fn count_transition(&mut self, from: State, to: State, reason: Reason) {
        self.transitions[from as usize][to as usize] += 1;
        if let Some(c) = self.reasons.get_mut(reason as usize) {
            *c += 1;
        }
    }
}
