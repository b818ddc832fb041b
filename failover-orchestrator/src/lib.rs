//! `failover-orchestrator`: the sequencer that brings a PBX up when the
//! election makes this node Master, hands it back in order, re-homes the IP
//! phones, and walks the operator procedures of the appliance manual (backup
//! mode, swap, rolling upgrade, configuration restore) as resumable plans.
//!
//! It is a Sans-IO engine ("The Sans-IO engine contract" in the
//! repository's `ARCHITECTURE.md`): [`Orchestrator`] takes role changes,
//! peer messages, sync status, operator requests and command results, each
//! with `now`; it emits [`Command`]s for the driver, peer messages, journal
//! records and events; it says when it next needs
//! [`Orchestrator::handle_timeout`]. It reads no clock and does no I/O.
//!
//! - [`Plan`]s are graphs of [`Step`]s with deadlines, retries and a
//!   [`FailurePolicy`]; [`Plan::preview`] is the dry run.
//! - [`Epoch`]s `(term, node)` guard every Master term: peer messages from an
//!   older epoch are refused and counted, and no command is emitted under a
//!   stale one.
//! - The peer link's messages ([`PeerMessage`]) are encoded by [`wire`].
//! - [`Status`] renders the appliance's one-liner; [`Timeline`] records a
//!   failover, both serde-serializable.
//!
//! The crate mirrors the election's and the replication's types at its
//! boundary ([`RoleChange`], [`SyncStatus`]) instead of depending on them;
//! [`Command`]'s docs give the mapping the driver implements.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use failover_orchestrator::{
//!     Command, CommandOutcome, Config, Identity, Orchestrator, PersistentState, Role, RoleChange,
//!     RoleChangeReason, ServiceSpec,
//! };
//!
//! let identity = Identity::new("06-5.1.30-005400", "5.1.30", "en");
//! let config = Config::builder(identity)
//!     .service(ServiceSpec::new("sip"))
//!     .build()?;
//! let t0 = Instant::now();
//! let mut orch = Orchestrator::new(config, PersistentState::default(), t0, SystemTime::UNIX_EPOCH);
//! orch.handle_role_change(t0, RoleChange {
//!     from: Role::Initialize,
//!     to: Role::Master,
//!     reason: RoleChangeReason::Startup,
//! });
//! // The driver loop: persist journal records, run commands, answer them.
//! let mut now = t0;
//! for _ in 0..100 {
//!     while let Some(_record) = orch.poll_journal() {}
//!     while let Some(cmd) = orch.poll_command() {
//!         orch.handle_command_result(now, cmd.id, CommandOutcome::Done);
//!     }
//!     while orch.poll_transmit().is_some() {}
//!     while orch.poll_event().is_some() {}
//!     if orch.timeline().is_some_and(|t| t.entries.iter().any(|e| matches!(e.what, failover_orchestrator::Milestone::Done))) {
//!         break;
//!     }
//!     now += Duration::from_millis(10);
//!     orch.handle_timeout(now);
//! }
//! assert!(orch.status(now).ready);
//! assert_eq!(orch.role(), Role::Master);
//! # Ok::<(), failover_orchestrator::ConfigError>(())
//! ```

#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs`: each item behind a feature says which.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod command;
mod config;
mod engine;
mod epoch;
mod journal;
mod phones;
mod plan;
mod procedure;
mod role_plans;
mod status;
mod types;
pub mod wire;

#[cfg(feature = "__fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(all(feature = "vrrp", feature = "sync"))]
pub mod pair;

pub use command::{Command, CommandId, CommandOutcome, Issued};
pub use config::{
    Config, ConfigBuilder, ConfigError, Field, PersonReason, PhoneMethod, PhoneSpec, RehomeConfig,
    ServiceSpec, Timeouts,
};
pub use engine::{Event, Orchestrator, PlanId, PlanOutcome, Stats};
pub use epoch::Epoch;
pub use journal::{JournalEntry, JournalRecord, PersistentState, ProcedureJournal, StepMark};
pub use phones::{PhoneAction, PhoneOutcome, PhoneResult};
pub use plan::{
    FailurePolicy, MAX_STEPS, PeerCondition, Plan, PlanError, PlanKind, PlanPreview, PreviewStep,
    Step, StepAction,
};
pub use procedure::{OperatorRequest, ParityField, PreflightError, Procedure, ProcedureOutcome};
pub use status::{
    Finding, Milestone, PeerView, ProcedureView, Status, SyncView, Timeline, TimelineEntry,
};
pub use types::{
    BackupMode, Identity, MAX_DURATION, PhoneId, ProtocolVersion, Redundancy, Role, RoleChange,
    RoleChangeReason, ServiceId, SyncStatus,
};
pub use wire::{DecodeError, PeerBody, PeerMessage, PeerRequest, PeerStatusReport, ReplyOutcome};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
