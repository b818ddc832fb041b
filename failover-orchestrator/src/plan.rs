//! Plans: graphs of steps with dependencies, deadlines, retries and a
//! failure policy, and the dry-run preview of their expected timeline.

use core::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::command::Command;
use crate::types::{BackupMode, MAX_DURATION, Role, ServiceId};
use crate::wire::PeerRequest;

/// Most steps in one plan.
pub const MAX_STEPS: usize = 4096;

/// What a step does when it fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailurePolicy {
    /// Stop the plan and undo the steps done so far, newest first.
    AbortAndRollBack,
    /// Record the failure; dependents run anyway.
    ContinueDegraded,
    /// Stop the plan and leave Master (release the address at once, stop
    /// services, ask the election to step down).
    StepDown,
}

/// What to wait for from the peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PeerCondition {
    /// The peer's role.
    pub role: Option<Role>,
    /// The peer's backup mode.
    pub mode: Option<BackupMode>,
    /// The peer's firmware.
    pub firmware: Option<String>,
    /// The peer passed its readiness checks.
    pub ready: bool,
}

impl fmt::Display for PeerCondition {
    /// In words: `to be Backup, Passive, on firmware 5.2.0, ready`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.role {
            parts.push(format!("to be {r}"));
        }
        if let Some(m) = self.mode {
            parts.push(format!("{m}"));
        }
        if let Some(fw) = &self.firmware {
            parts.push(format!("on firmware {fw}"));
        }
        if self.ready {
            parts.push("ready".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// The action of one step.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepAction {
    /// Issue a command; done when it answers [`crate::CommandOutcome::Done`].
    Run(Command),
    /// Start a service, then check it every `check_interval` until ready.
    ServiceUp(ServiceId),
    /// Check a service (without starting it) until ready.
    ServiceReady(ServiceId),
    /// Check this node ([`Command::CheckNode`]) until ready.
    NodeReady,
    /// Re-home the phones of the inventory.
    RehomePhones,
    /// Ask the peer; done when it replies `Done`.
    AskPeer(PeerRequest),
    /// Wait until the peer's heartbeats meet the condition.
    AwaitPeer(PeerCondition),
    /// Wait until this node's role is the given one.
    AwaitRole(Role),
}

impl fmt::Display for StepAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepAction::Run(c) => c.fmt(f),
            StepAction::ServiceUp(s) => write!(f, "start service {}", s.0),
            StepAction::ServiceReady(s) => write!(f, "service {} ready", s.0),
            StepAction::NodeReady => f.write_str("this unit ready"),
            StepAction::RehomePhones => f.write_str("re-home the phones"),
            StepAction::AskPeer(r) => write!(f, "ask the peer to {r}"),
            StepAction::AwaitPeer(c) => write!(f, "wait for the peer {c}"),
            StepAction::AwaitRole(r) => write!(f, "wait to be {r}"),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What it does.
    pub action: StepAction,
    /// Indices of steps that must finish first (all earlier in the plan).
    pub deps: Vec<u16>,
    /// Deadline for one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure or a timeout.
    pub retries: u8,
    /// What happens after the last attempt fails.
    pub on_failure: FailurePolicy,
    /// Typical duration, for the dry run.
    pub expected: Duration,
    /// Undo action run on roll-back if this step had finished.
    pub undo: Option<StepAction>,
}

impl Step {
    /// A step with no dependencies, a 10 s timeout, no retry, abort and
    /// roll back on failure, 100 ms expected.
    #[must_use]
    pub fn new(action: StepAction) -> Self {
        Step {
            action,
            deps: Vec::new(),
            timeout: Duration::from_secs(10),
            retries: 0,
            on_failure: FailurePolicy::AbortAndRollBack,
            expected: Duration::from_millis(100),
            undo: None,
        }
    }

    /// Adds dependencies.
    #[must_use]
    pub fn after(mut self, deps: &[u16]) -> Self {
        self.deps.extend_from_slice(deps);
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets the retries.
    #[must_use]
    pub fn retries(mut self, n: u8) -> Self {
        self.retries = n;
        self
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn on_failure(mut self, p: FailurePolicy) -> Self {
        self.on_failure = p;
        self
    }

    /// Sets the expected duration.
    #[must_use]
    pub fn expected(mut self, d: Duration) -> Self {
        self.expected = d;
        self
    }

    /// Sets the undo action.
    #[must_use]
    pub fn undo(mut self, a: StepAction) -> Self {
        self.undo = Some(a);
        self
    }
}

/// What a plan is for.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanKind {
    /// Became Master at boot or as a standalone node.
    ColdStart,
    /// Became Master after the peer failed or released.
    Takeover,
    /// Planned Master → Backup: services stop, the address goes last.
    HandBack,
    /// Lost Mastership (higher priority or newer epoch): the address goes
    /// first, then services stop.
    LostRole,
    /// This node's readiness after boot.
    Startup,
    /// Undo of an aborted plan.
    RollBack,
    /// An operator procedure.
    Procedure,
    /// Carrying out a peer's request.
    PeerRequest,
    /// A vendor-built plan.
    Custom,
}

/// A graph of steps. Dependencies point to earlier steps only, so the step
/// list is a topological order and the graph has no cycle by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub(crate) kind: PlanKind,
    pub(crate) steps: Vec<Step>,
}

/// Why a plan is invalid.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PlanError {
    /// A dependency that is not an earlier step.
    #[error("step {step} depends on {dep}, which is not an earlier step")]
    Dependency {
        /// The step.
        step: usize,
        /// Its bad dependency.
        dep: u16,
    },
    /// More than [`MAX_STEPS`].
    #[error("more than {0} steps")]
    TooManySteps(usize),
    /// A timeout or expected duration over [`MAX_DURATION`].
    #[error("step {0} has a duration over 30 days")]
    TooLong(usize),
    /// A zero timeout would fail at once.
    #[error("step {0} has a zero timeout")]
    ZeroTimeout(usize),
}

impl Plan {
    /// An empty plan.
    #[must_use]
    pub fn new(kind: PlanKind) -> Self {
        Plan {
            kind,
            steps: Vec::new(),
        }
    }

    /// Appends a step and returns its index.
    ///
    /// # Errors
    /// [`PlanError`] when a dependency is not an earlier step, the plan is
    /// full, or the timeout is zero.
    pub fn add(&mut self, step: Step) -> Result<u16, PlanError> {
        let idx = self.steps.len();
        if idx >= MAX_STEPS {
            return Err(PlanError::TooManySteps(MAX_STEPS));
        }
        if let Some(&dep) = step.deps.iter().find(|d| usize::from(**d) >= idx) {
            return Err(PlanError::Dependency { step: idx, dep });
        }
        if step.timeout.is_zero() {
            return Err(PlanError::ZeroTimeout(idx));
        }
        if step.timeout > MAX_DURATION || step.expected > MAX_DURATION {
            return Err(PlanError::TooLong(idx));
        }
        self.steps.push(step);
        // MAX_STEPS fits u16.
        Ok(u16::try_from(idx).unwrap_or(u16::MAX))
    }

    /// Internal: append a step built from valid indices.
    pub(crate) fn push(&mut self, step: Step) -> u16 {
        let idx = u16::try_from(self.steps.len()).unwrap_or(u16::MAX);
        self.steps.push(step);
        idx
    }

    /// What the plan is for.
    #[must_use]
    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    /// The steps in order.
    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Dry run: when each step is expected to start and end if every step
    /// takes its expected time, dependencies permitting.
    #[must_use]
    pub fn preview(&self) -> PlanPreview {
        let mut end: Vec<Duration> = Vec::with_capacity(self.steps.len());
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let start = s
                .deps
                .iter()
                .filter_map(|d| end.get(usize::from(*d)).copied())
                .max()
                .unwrap_or(Duration::ZERO);
            let finish = start + s.expected;
            end.push(finish);
            steps.push(PreviewStep {
                index: i,
                action: s.action.to_string(),
                start_ms: crate::types::ms(start),
                end_ms: crate::types::ms(finish),
                deadline_ms: crate::types::ms(start + s.timeout * (u32::from(s.retries) + 1)),
            });
        }
        PlanPreview {
            kind: self.kind,
            total_ms: steps.iter().map(|s| s.end_ms).max().unwrap_or(0),
            steps,
        }
    }
}

/// The expected timeline of a plan (serializable for a UI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPreview {
    /// What the plan is for.
    pub kind: PlanKind,
    /// Expected steps.
    pub steps: Vec<PreviewStep>,
    /// Expected total, ms.
    pub total_ms: u64,
}

/// One step of a preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewStep {
    /// Step index.
    pub index: usize,
    /// What it does.
    pub action: String,
    /// Expected start, ms after the plan starts.
    pub start_ms: u64,
    /// Expected end, ms after the plan starts.
    pub end_ms: u64,
    /// Latest end before the failure policy applies (all attempts), ms
    /// after the step's expected start.
    pub deadline_ms: u64,
}
