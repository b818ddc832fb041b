//! The one place where the election's and the replication's types meet the
//! orchestrator's mirrors of them.
//!
//! The orchestrator does not depend on `vrrp-fsm` or `sync-delta` (a vendor
//! who wants only the sequencer keeps a light dependency set), so it mirrors
//! the few types it reacts to: [`Role`], [`RoleChangeReason`],
//! [`BackupMode`] and [`Epoch`]. These conversions are the only mapping
//! between them, and each is exhaustive, with no catch-all arm: a new
//! variant on either side fails to compile here until someone decides what
//! it means. The pair engine uses them; a vendor driving the engines one by
//! one uses them too instead of writing their own.

use crate::epoch::Epoch;
use crate::types::{BackupMode, Role, RoleChange, RoleChangeReason};

impl From<vrrp_fsm::State> for Role {
    fn from(s: vrrp_fsm::State) -> Role {
        match s {
            vrrp_fsm::State::Initialize => Role::Initialize,
            vrrp_fsm::State::Backup => Role::Backup,
            vrrp_fsm::State::Master => Role::Master,
        }
    }
}

impl From<vrrp_fsm::Reason> for RoleChangeReason {
    fn from(r: vrrp_fsm::Reason) -> RoleChangeReason {
        use vrrp_fsm::Reason as R;
        match r {
            R::Startup | R::Owner => RoleChangeReason::Startup,
            R::MasterDown => RoleChangeReason::MasterDown,
            R::MasterReleased => RoleChangeReason::PeerReleased,
            R::Preempt => RoleChangeReason::Preempt,
            R::HigherPriority => RoleChangeReason::HigherPriorityMaster,
            R::ArmedTakeover | R::Takeover => RoleChangeReason::SwapTakeover,
            R::Release => RoleChangeReason::Released,
            R::Shutdown => RoleChangeReason::Shutdown,
            R::LinkDown => RoleChangeReason::LinkDown,
            // A pair runs one router per node, never a sync group; a
            // vendor's group member that follows its group is neither a
            // takeover nor a cold start of its own.
            R::SyncGroup => RoleChangeReason::Other,
        }
    }
}

/// `vrrp-fsm`'s `StateChange { from, to, reason }` as the orchestrator's
/// [`RoleChange`].
#[must_use]
pub fn role_change(
    from: vrrp_fsm::State,
    to: vrrp_fsm::State,
    reason: vrrp_fsm::Reason,
) -> RoleChange {
    RoleChange {
        from: from.into(),
        to: to.into(),
        reason: reason.into(),
    }
}

impl From<vrrp_fsm::BackupMode> for BackupMode {
    fn from(m: vrrp_fsm::BackupMode) -> BackupMode {
        match m {
            vrrp_fsm::BackupMode::Active => BackupMode::Active,
            vrrp_fsm::BackupMode::Passive => BackupMode::Passive,
        }
    }
}

impl From<BackupMode> for vrrp_fsm::BackupMode {
    fn from(m: BackupMode) -> vrrp_fsm::BackupMode {
        match m {
            BackupMode::Active => vrrp_fsm::BackupMode::Active,
            BackupMode::Passive => vrrp_fsm::BackupMode::Passive,
        }
    }
}

impl From<sync_delta::Epoch> for Epoch {
    fn from(e: sync_delta::Epoch) -> Epoch {
        let sync_delta::Epoch { term, node } = e;
        Epoch { term, node }
    }
}

impl From<Epoch> for sync_delta::Epoch {
    fn from(e: Epoch) -> sync_delta::Epoch {
        let Epoch { term, node } = e;
        sync_delta::Epoch { term, node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_maps_as_documented() {
        use vrrp_fsm::Reason as R;
        let cases = [
            (R::Startup, RoleChangeReason::Startup),
            (R::Owner, RoleChangeReason::Startup),
            (R::MasterDown, RoleChangeReason::MasterDown),
            (R::MasterReleased, RoleChangeReason::PeerReleased),
            (R::Preempt, RoleChangeReason::Preempt),
            (R::HigherPriority, RoleChangeReason::HigherPriorityMaster),
            (R::ArmedTakeover, RoleChangeReason::SwapTakeover),
            (R::Takeover, RoleChangeReason::SwapTakeover),
            (R::Release, RoleChangeReason::Released),
            (R::Shutdown, RoleChangeReason::Shutdown),
            (R::LinkDown, RoleChangeReason::LinkDown),
            (R::SyncGroup, RoleChangeReason::Other),
        ];
        assert_eq!(cases.len(), R::COUNT);
        for (from, to) in cases {
            assert_eq!(RoleChangeReason::from(from), to, "{from:?}");
        }
    }

    #[test]
    fn modes_and_epochs_round_trip() {
        for m in [BackupMode::Active, BackupMode::Passive] {
            assert_eq!(BackupMode::from(vrrp_fsm::BackupMode::from(m)), m);
        }
        let e = Epoch { term: 7, node: 42 };
        assert_eq!(Epoch::from(sync_delta::Epoch::from(e)), e);
        for s in vrrp_fsm::State::ALL {
            let r = Role::from(s);
            assert_eq!(format!("{r}"), format!("{s:?}"));
        }
    }
}
