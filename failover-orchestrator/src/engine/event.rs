//! What the engine reports: its [`Event`]s and its counters.

use serde::{Deserialize, Serialize};

use super::{PlanId, PlanOutcome};
use crate::config::PersonReason;
use crate::epoch::Epoch;
use crate::plan::{FailurePolicy, PlanKind};
use crate::procedure::{Procedure, ProcedureOutcome};
use crate::status::{Finding, TimelineEntry};
use crate::types::{BackupMode, PhoneId, RoleChange};

/// Something for the log or the UI.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The election changed this node's role.
    RoleChanged(RoleChange),
    /// This node took a Master term.
    TermTaken(Epoch),
    /// A newer epoch was learnt from the peer.
    EpochAdopted(Epoch),
    /// This node was Master under an older epoch than the peer's: it steps
    /// down (a healed split brain).
    Superseded {
        /// The peer's newer epoch.
        by: Epoch,
    },
    /// A peer message from an older epoch was refused.
    StaleRefused {
        /// Its epoch.
        epoch: Epoch,
        /// Ours.
        newest: Epoch,
    },
    /// The peer's heartbeats arrive.
    PeerUp,
    /// The peer's heartbeats stopped.
    PeerDown,
    /// The parity findings changed.
    FindingsChanged(Vec<Finding>),
    /// A plan started.
    PlanStarted {
        /// Plan id.
        plan: PlanId,
        /// What for.
        kind: PlanKind,
    },
    /// A step started (attempt 0 is the first).
    StepStarted {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
        /// Attempt.
        attempt: u8,
    },
    /// A step finished.
    StepDone {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
    },
    /// A step failed after its retries.
    StepFailed {
        /// Plan id.
        plan: PlanId,
        /// Step index.
        step: u16,
        /// The policy applied.
        policy: FailurePolicy,
    },
    /// A plan ended.
    PlanFinished {
        /// Plan id.
        plan: PlanId,
        /// What for.
        kind: PlanKind,
        /// How.
        outcome: PlanOutcome,
    },
    /// A procedure started or resumed.
    ProcedureStarted {
        /// Procedure id.
        id: u64,
        /// What it does.
        procedure: Procedure,
    },
    /// A procedure ended.
    ProcedureFinished {
        /// Procedure id.
        id: u64,
        /// How.
        outcome: ProcedureOutcome,
    },
    /// A takeover milestone.
    Milestone(TimelineEntry),
    /// A phone must be moved by a person.
    PhoneNeedsPerson {
        /// The phone.
        phone: PhoneId,
        /// Why.
        reason: PersonReason,
    },
    /// Backup mode changed.
    ModeChanged(BackupMode),
    /// A peer request was refused.
    RequestRefused {
        /// Request id.
        id: u32,
    },
}

/// One line for a log: `plan Takeover started`, `milestone AddressClaimed
/// at 12 ms from detection`, ….
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::RoleChanged(c) => write!(f, "role {} -> {} ({:?})", c.from, c.to, c.reason),
            Event::TermTaken(e) => write!(f, "took the Master term {e}"),
            Event::EpochAdopted(e) => write!(f, "adopted the peer's epoch {e}"),
            Event::Superseded { by } => {
                write!(f, "superseded by the peer's epoch {by}: steps down")
            }
            Event::StaleRefused { epoch, newest } => {
                write!(
                    f,
                    "refused a peer message of epoch {epoch} (newest {newest})"
                )
            }
            Event::PeerUp => f.write_str("peer heartbeats arrive"),
            Event::PeerDown => f.write_str("peer heartbeats stopped"),
            Event::FindingsChanged(v) if v.is_empty() => f.write_str("parity: no findings"),
            Event::FindingsChanged(v) => write!(f, "parity findings: {v:?}"),
            Event::PlanStarted { plan, kind } => {
                write!(f, "plan {kind:?} started (plan {})", plan.0)
            }
            Event::StepStarted {
                plan,
                step,
                attempt,
            } => write!(f, "plan {} step {step} started (attempt {attempt})", plan.0),
            Event::StepDone { plan, step } => write!(f, "plan {} step {step} done", plan.0),
            Event::StepFailed { plan, step, policy } => {
                write!(f, "plan {} step {step} failed ({policy:?})", plan.0)
            }
            Event::PlanFinished {
                plan,
                kind,
                outcome,
            } => write!(f, "plan {kind:?} finished: {outcome:?} (plan {})", plan.0),
            Event::ProcedureStarted { id, procedure } => {
                write!(f, "procedure {id} started: {procedure:?}")
            }
            Event::ProcedureFinished { id, outcome } => {
                write!(f, "procedure {id} finished: {outcome:?}")
            }
            Event::Milestone(m) => {
                write!(f, "milestone {:?} at {} ms from detection", m.what, m.at_ms)
            }
            Event::PhoneNeedsPerson { phone, reason } => {
                write!(f, "phone {} needs a person ({reason:?})", phone.0)
            }
            Event::ModeChanged(mode) => write!(f, "Backup mode {mode}"),
            Event::RequestRefused { id } => write!(f, "peer request {id} refused"),
        }
    }
}

/// Counters, for a daemon's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Commands issued.
    pub commands_issued: u64,
    /// Results for unknown or already-finished commands.
    pub unknown_results: u64,
    /// Peer messages that did not decode.
    pub decode_errors: u64,
    /// Peer messages refused for an older epoch.
    pub stale_epoch: u64,
    /// Peer messages ignored (redundancy disabled, incompatible protocol).
    pub peer_ignored: u64,
    /// Step attempts that timed out.
    pub step_timeouts: u64,
    /// Step attempts retried.
    pub step_retries: u64,
    /// Steps failed after their retries.
    pub steps_failed: u64,
    /// Peer up/down transitions.
    pub peer_flaps: u64,
    /// Peer requests refused.
    pub requests_refused: u64,
    /// Replies that matched no request.
    pub unknown_replies: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Registrations (or unchecked reports) of unknown phones, of phones
    /// already resolved, or outside a re-homing.
    pub unknown_registrations: u64,
}
