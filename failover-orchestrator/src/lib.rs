//! `failover-orchestrator`: not yet written; see the project's issues.
