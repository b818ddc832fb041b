//! What the engine reports: states, reasons and events.

use core::net::IpAddr;

use vrrp_proto::Priority;

/// A virtual router's state (RFC 9568 §6.4: Initialize, Backup, and Active,
/// which RFC 3768 and this crate call Master).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Not started, shut down, or its link is down.
    Initialize = 0,
    /// Listening for the Master.
    Backup = 1,
    /// Forwarding for the virtual addresses and advertising.
    Master = 2,
}

impl State {
    /// Every state, in counter order.
    pub const ALL: [State; 3] = [State::Initialize, State::Backup, State::Master];
}

/// Why a state changed.
///
/// Exhaustive on purpose: a new reason is a breaking change, so that every
/// consumer that maps reasons (the pair engine in `failover-orchestrator`)
/// has to decide what the new one means instead of falling into a
/// catch-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Startup (RFC 9568 §6.4.1), or the link came back up: to Backup.
    Startup = 0,
    /// Startup as the address owner (priority 255): straight to Master
    /// (RFC 9568 §6.4.1).
    Owner,
    /// `Master_Down_Timer` expired: the Master fell silent (RFC 9568 §6.4.2).
    MasterDown,
    /// `Skew_Time` after hearing priority 0 from the Master (RFC 9568 §6.4.2).
    MasterReleased,
    /// `Master_Down_Timer` expired while discarding a lower-priority
    /// Master's advertisements: preemption (RFC 9568 §6.4.2).
    Preempt,
    /// The Master heard a higher priority, or an equal one from a higher
    /// primary address (RFC 9568 §6.4.3).
    HigherPriority,
    /// An armed Backup heard priority 0 and took over at once.
    ArmedTakeover,
    /// An explicit [`crate::VirtualRouter::takeover`].
    Takeover,
    /// An explicit [`crate::VirtualRouter::release`].
    Release,
    /// Shutdown event (RFC 9568 §6.4.2 / §6.4.3).
    Shutdown,
    /// The driver reported the link down.
    LinkDown,
    /// Another member of the sync group changed state.
    SyncGroup,
}

impl Reason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
}

/// Which announcement of a gratuitous ARP / unsolicited NA series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gratuitous {
    /// Announcement `index` (1-based) of a burst of `count` on becoming
    /// Master.
    Burst {
        /// 1-based position in the burst.
        index: u8,
        /// Burst length.
        count: u8,
    },
    /// A periodic refresh while Master.
    Refresh,
}

/// Something the driver (or the failover orchestrator) acts on. Drain with
/// [`crate::VirtualRouter::poll_event`] after every input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// The state changed. The orchestrator starts its takeover plan on
    /// `to: Master` and its hand-back plan when leaving Master.
    StateChange {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        reason: Reason,
    },
    /// Add the virtual addresses to the interface (after `StateChange` to
    /// Master). A daemon whose orchestrator claims addresses in its plan
    /// ignores this.
    ClaimAddresses,
    /// Remove the virtual addresses now (leaving Master). Sent before any
    /// service stops, so that two nodes never hold the address.
    ReleaseAddresses,
    /// Send a gratuitous ARP (IPv4) / unsolicited Neighbour Advertisement
    /// (IPv6) for every virtual address (RFC 9568 §6.4.2).
    SendGratuitous(Gratuitous),
    /// Accept (or stop accepting) packets addressed to the virtual addresses
    /// (RFC 9568 §6.1 `Accept_Mode`; always on for the owner).
    AcceptMode(bool),
    /// As Backup, the Master heard changed: its primary address or priority.
    MasterHeard {
        /// The Master's primary address.
        address: IpAddr,
        /// Its advertised priority.
        priority: Priority,
    },
}

/// One line for a log: `Backup -> Master (MasterDown)`, `hears the Master
/// 10.0.0.1 (priority 200)`, ….
impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Event::StateChange { from, to, reason } => write!(f, "{from:?} -> {to:?} ({reason:?})"),
            Event::ClaimAddresses => f.write_str("claim the virtual addresses"),
            Event::ReleaseAddresses => f.write_str("release the virtual addresses"),
            Event::SendGratuitous(Gratuitous::Burst { index, count }) => {
                write!(f, "announce the virtual addresses ({index} of {count})")
            }
            Event::SendGratuitous(Gratuitous::Refresh) => {
                f.write_str("announce the virtual addresses (refresh)")
            }
            Event::AcceptMode(true) => f.write_str("accept packets to the virtual addresses"),
            Event::AcceptMode(false) => {
                f.write_str("stop accepting packets to the virtual addresses")
            }
            Event::MasterHeard { address, priority } => {
                write!(f, "hears the Master {address} (priority {priority})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_the_states_reason_and_master() {
        let change = Event::StateChange {
            from: State::Backup,
            to: State::Master,
            reason: Reason::MasterDown,
        };
        assert_eq!(change.to_string(), "Backup -> Master (MasterDown)");
        let heard = Event::MasterHeard {
            address: IpAddr::from([10, 0, 0, 1]),
            priority: Priority(200),
        };
        assert_eq!(
            heard.to_string(),
            "hears the Master 10.0.0.1 (priority 200)"
        );
        let burst = Event::SendGratuitous(Gratuitous::Burst { index: 2, count: 5 });
        assert_eq!(burst.to_string(), "announce the virtual addresses (2 of 5)");
    }
}
