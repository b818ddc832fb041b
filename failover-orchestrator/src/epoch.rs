//! Master-term epochs: `(term, node)`, ordered by term then node, so that a
//! node split from its peer cannot act on stale authority once they talk
//! again. The newest one is persisted by the driver (it is part of the
//! journaled state), and peer messages from an older one are refused; see
//! "Epochs" in the repository's `ARCHITECTURE.md`.

use core::fmt;

use serde::{Deserialize, Serialize};

/// The epoch of one Master term.
///
/// Field order matters: the derived `Ord` compares `term` first, then
/// `node`. sync-delta defines the same shape for its frames; the driver
/// converts field by field.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Epoch {
    /// Increases with every Master term.
    pub term: u64,
    /// Stable number of the node that took the term, see
    /// [`Epoch::node_number`].
    pub node: u64,
}

impl Epoch {
    /// The epoch before any term (a fresh node).
    pub const ZERO: Epoch = Epoch { term: 0, node: 0 };

    /// A stable 64-bit number for a node id: the first eight bytes of the
    /// BLAKE3 hash of the id, little-endian. Both nodes compute the same
    /// number for the same id, and it never changes across firmware: it
    /// travels in every peer message's epoch, so the hash is part of the
    /// peer protocol (2.0) and changes only with a new protocol version.
    #[must_use]
    pub fn node_number(node_id: &str) -> u64 {
        let hash = blake3::hash(node_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// The epoch of the next term taken by `node`: higher than `self`.
    #[must_use]
    pub fn next_term(self, node: u64) -> Epoch {
        Epoch {
            term: self.term.saturating_add(1),
            node,
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:016x}", self.term, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_term_then_node() {
        let a = Epoch { term: 3, node: 9 };
        let b = Epoch { term: 4, node: 1 };
        let c = Epoch { term: 4, node: 2 };
        assert!(a < b && b < c);
        assert!(a.next_term(0) > a);
    }

    #[test]
    fn node_number_is_stable() {
        assert_eq!(
            Epoch::node_number("06-5.1.30-005400"),
            Epoch::node_number("06-5.1.30-005400")
        );
        assert_ne!(
            Epoch::node_number("06-5.1.30-005400"),
            Epoch::node_number("06-5.1.31-005400")
        );
    }

    /// The number goes on the wire in every peer message's epoch (peer
    /// protocol 2.0): a different hash or byte order would split a pair of
    /// units on different firmware. Pinned to BLAKE3's first eight bytes,
    /// little-endian.
    #[test]
    fn node_number_is_pinned_to_the_protocol() {
        assert_eq!(
            Epoch::node_number("06-5.1.30-005400"),
            9_883_489_641_682_496_888
        );
        // BLAKE3("") is af1349b9f5f9a1a6…, the specification's test vector.
        assert_eq!(Epoch::node_number(""), 0xa6a1_f9f5_b949_13af);
    }
}
