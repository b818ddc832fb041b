//! The persisted state and the journal records the driver writes.
//!
//! Everything here is plain serde data. The driver persists each
//! [`JournalRecord`] durably (append the entry, keep the latest `state`)
//! before it carries out the commands polled after it; after a restart it
//! passes the latest `state` to [`crate::Orchestrator::new`], which resumes
//! an interrupted procedure from it.

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::procedure::{Procedure, ProcedureOutcome};
use crate::types::{BackupMode, Redundancy};

/// State that survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PersistentState {
    /// Newest epoch seen or taken; a new term is always above it.
    pub highest_epoch: Epoch,
    /// Backup mode (manual: it survives a restart).
    pub backup_mode: BackupMode,
    /// Wall-clock expiry of a Passive mode, seconds since the Unix epoch.
    pub mode_expires_unix_s: Option<u64>,
    /// The "Enable Redundancy" switch.
    pub redundancy: Redundancy,
    /// VRRP priority set by a swap, for the driver to apply at boot.
    pub priority: Option<u8>,
    /// The procedure in progress, if any.
    pub procedure: Option<ProcedureJournal>,
}

/// Progress of one operator procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcedureJournal {
    /// Procedure id (unique per node).
    pub id: u64,
    /// What it does, with its parameters.
    pub procedure: Procedure,
    /// One mark per plan step.
    pub steps: Vec<StepMark>,
    /// When it started, ms since the Unix epoch.
    pub started_unix_ms: u64,
}

/// A step's progress in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepMark {
    /// Not started.
    Pending,
    /// Started, not finished (re-run on resume, unless it reboots the node).
    Started,
    /// Finished.
    Done,
    /// Failed and the plan continued degraded.
    Failed,
}

/// What happened, one record per change of persisted state or procedure
/// step.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// This node took a Master term.
    TermTaken(Epoch),
    /// A newer epoch was learnt from the peer.
    EpochAdopted(Epoch),
    /// Backup mode changed.
    ModeChanged(BackupMode),
    /// Redundancy switched.
    RedundancyChanged(Redundancy),
    /// Priority to keep after a swap.
    PriorityChanged(u8),
    /// A procedure started.
    ProcedureStarted {
        /// Procedure id.
        id: u64,
    },
    /// A procedure resumed after a restart.
    ProcedureResumed {
        /// Procedure id.
        id: u64,
    },
    /// A procedure step started.
    StepStarted {
        /// Procedure id.
        id: u64,
        /// Step index.
        step: u16,
    },
    /// A procedure step finished.
    StepDone {
        /// Procedure id.
        id: u64,
        /// Step index.
        step: u16,
    },
    /// A procedure step failed.
    StepFailed {
        /// Procedure id.
        id: u64,
        /// Step index.
        step: u16,
    },
    /// A procedure ended.
    ProcedureFinished {
        /// Procedure id.
        id: u64,
        /// How.
        outcome: ProcedureOutcome,
    },
}

/// One record for the driver to persist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Wall-clock time, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub entry: JournalEntry,
    /// The whole persisted state after it.
    pub state: PersistentState,
}
