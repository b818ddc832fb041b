//! `sync-delta`: not yet written; see the project's issues.
