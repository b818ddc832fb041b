//! The peer link (placeholder until it lands).
