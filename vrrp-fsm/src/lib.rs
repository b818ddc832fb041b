//! `vrrp-fsm`: not yet written; see the project's issues.
