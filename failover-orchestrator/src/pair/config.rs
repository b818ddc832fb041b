//! Constructors of the pair engine's configuration.

use super::{LinkConfig, PairConfig};

impl PairConfig {
    /// The configuration of a node whose VRRP goes out as bare messages
    /// (UDP, raw IPv6 sockets): [`PairConfig::vrrp_datagrams`] off. Set it
    /// on the result for raw IPv4 sockets.
    #[must_use]
    pub fn new(vrrp: vrrp_fsm::Config, orchestrator: crate::Config, link: LinkConfig) -> Self {
        PairConfig {
            vrrp,
            orchestrator,
            link,
            vrrp_datagrams: false,
        }
    }
}
