//! The sender's epoch carried by every frame.

/// A Master term: ordered by `term`, then by `node` (a stable 64-bit number
/// the driver derives from the node's id). The orchestrator defines the
/// same shape; the driver converts. Frames from an epoch older than the
/// newest seen from the peer are refused (see [`crate::frame::Link`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    /// The term, incremented by each new Master.
    pub term: u64,
    /// The node that holds the term.
    pub node: u64,
}

impl Epoch {
    /// `(term, node)`.
    #[must_use]
    pub const fn new(term: u64, node: u64) -> Self {
        Self { term, node }
    }
}
