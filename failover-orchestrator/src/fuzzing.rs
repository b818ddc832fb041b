//! The property the `orchestrator_inputs` fuzz target checks, public so that
//! its seed corpus also runs as an ordinary test on stable.
//!
//! The bytes are read as a sequence of inputs (time steps, role changes,
//! peer messages built from the bytes or raw bytes, command results,
//! operator requests, sync status, phone registrations, restarts from the
//! persisted state). After every input the outputs are drained and checked:
//!
//! - nothing panics;
//! - every command carries the newest epoch the node knows, never one below
//!   an epoch it accepted before;
//! - the persisted epoch never goes backwards, also across restarts;
//! - while a plan runs there is always a deadline (nothing hangs).

#![allow(clippy::missing_panics_doc)]

use std::time::{Duration, Instant, SystemTime};

use crate::command::{CommandId, CommandOutcome};
use crate::config::{Config, PersonReason, PhoneMethod, PhoneSpec, ServiceSpec};
use crate::engine::Orchestrator;
use crate::epoch::Epoch;
use crate::journal::PersistentState;
use crate::procedure::OperatorRequest;
use crate::types::{
    BackupMode, Identity, PhoneId, ProtocolVersion, Redundancy, Role, RoleChange, RoleChangeReason,
    ServiceId, SyncStatus,
};
use crate::wire::{PeerBody, PeerMessage, PeerRequest, PeerStatusReport, ReplyOutcome};

struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

fn identity(firmware: &str, major: u16) -> Identity {
    Identity {
        node_id: "06-5.1.30-005400".into(),
        firmware: firmware.into(),
        language_pack: "en".into(),
        licences: vec!["acd".into()],
        protocol: ProtocolVersion { major, minor: 0 },
    }
}

fn config() -> Option<Config> {
    let phones = vec![
        PhoneSpec::new(PhoneMethod::FollowsAddress),
        PhoneSpec::new(PhoneMethod::Nudge).class(0),
        PhoneSpec::new(PhoneMethod::Reboot),
        PhoneSpec::new(PhoneMethod::Person(PersonReason::ChangedCredentials)),
    ];
    Config::builder(identity("5.1.30", 1))
        .service(ServiceSpec::new("db").ready_within(Duration::from_secs(2), 1))
        .service(
            ServiceSpec::new("sip")
                .after(&[ServiceId(0)])
                .on_failure(crate::plan::FailurePolicy::AbortAndRollBack),
        )
        .service(
            ServiceSpec::new("vm")
                .after(&[ServiceId(1)])
                .on_failure(crate::plan::FailurePolicy::StepDown),
        )
        .phones(phones)
        .build()
        .ok()
}

const ROLES: [Role; 3] = [Role::Initialize, Role::Backup, Role::Master];

fn reason(b: u8) -> RoleChangeReason {
    match b % 8 {
        0 => RoleChangeReason::Startup,
        1 => RoleChangeReason::MasterDown,
        2 => RoleChangeReason::HigherPriorityMaster,
        3 => RoleChangeReason::PeerReleased,
        4 => RoleChangeReason::SwapTakeover,
        5 => RoleChangeReason::Preempt,
        6 => RoleChangeReason::LinkDown,
        _ => RoleChangeReason::Released,
    }
}

fn mode(b: u8) -> BackupMode {
    if b & 1 == 0 {
        BackupMode::Active
    } else {
        BackupMode::Passive
    }
}

struct Harness {
    orch: Orchestrator,
    config: Config,
    now: Instant,
    wall: SystemTime,
    outstanding: Vec<CommandId>,
    /// Highest epoch the engine has accepted or taken so far.
    floor: Epoch,
    persisted: PersistentState,
    role: Role,
}

impl Harness {
    fn drain(&mut self) {
        let e = self.orch.epoch();
        assert!(
            e >= self.floor,
            "epoch went backwards: {e:?} < {:?}",
            self.floor
        );
        self.floor = e;
        while let Some(r) = self.orch.poll_journal() {
            assert!(r.state.highest_epoch >= self.persisted.highest_epoch);
            self.persisted = r.state;
        }
        while let Some(c) = self.orch.poll_command() {
            assert_eq!(
                c.epoch,
                self.orch.epoch(),
                "command under a stale epoch: {c:?}"
            );
            assert!(c.epoch >= self.floor);
            if self.outstanding.len() < 256 {
                self.outstanding.push(c.id);
            }
        }
        while self.orch.poll_transmit().is_some() {}
        while self.orch.poll_event().is_some() {}
        if self.orch.busy() {
            assert!(
                self.orch.poll_timeout().is_some(),
                "a plan runs without a deadline"
            );
        }
    }
}

/// Runs the property on `data`, with virtual time starting at `t0` (the
/// caller's clock: this crate reads none); panics when it does not hold.
pub fn orchestrator_inputs(t0: Instant, data: &[u8]) {
    let Some(config) = config() else {
        return;
    };
    let mut cur = Cursor { data };
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let first = cur.byte().unwrap_or(0);
    let persisted = PersistentState {
        highest_epoch: Epoch {
            term: u64::from(first & 7),
            node: u64::from(first >> 3),
        },
        backup_mode: mode(first >> 6),
        redundancy: if first == 0xff {
            Redundancy::Disabled
        } else {
            Redundancy::Enabled
        },
        ..PersistentState::default()
    };
    let orch = Orchestrator::new(config.clone(), persisted.clone(), t0, wall);
    let mut h = Harness {
        floor: persisted.highest_epoch,
        orch,
        config,
        now: t0,
        wall,
        outstanding: Vec::new(),
        persisted,
        role: Role::Initialize,
    };
    h.drain();
    let mut steps = 0u32;
    while let Some(op) = cur.byte() {
        steps += 1;
        if steps > 2_000 {
            break;
        }
        let arg = cur.byte().unwrap_or(0);
        match op % 10 {
            0 => {
                h.now += Duration::from_millis(u64::from(arg) * 37);
                h.orch.handle_timeout(h.now);
            }
            1 => {
                let to = ROLES[usize::from(arg % 3)];
                let change = RoleChange {
                    from: h.role,
                    to,
                    reason: reason(arg / 3),
                };
                h.role = to;
                h.orch.handle_role_change(h.now, change);
            }
            2 => {
                let e = h.orch.epoch();
                let epoch = Epoch {
                    term: (e.term + u64::from(arg & 3)).saturating_sub(1),
                    node: u64::from(arg >> 2),
                };
                let kind = cur.byte().unwrap_or(0);
                let body = match kind % 4 {
                    0 => PeerBody::Hello(identity(
                        if kind & 0x10 == 0 { "5.1.30" } else { "5.2.0" },
                        if kind & 0x20 == 0 { 1 } else { 2 },
                    )),
                    1 => PeerBody::Status(PeerStatusReport {
                        role: ROLES[usize::from(kind >> 2) % 3],
                        mode: mode(kind >> 4),
                        redundancy: Redundancy::Enabled,
                        sync_generation: Some(u64::from(kind)),
                        ready: kind & 0x40 != 0,
                        busy: false,
                    }),
                    2 => PeerBody::Request {
                        id: u32::from(kind >> 2),
                        request: match kind >> 5 {
                            0 => PeerRequest::SetMode {
                                mode: mode(kind),
                                expires_unix_s: Some(if kind & 2 == 0 {
                                    1_790_000_100
                                } else {
                                    u64::MAX
                                }),
                            },
                            1 => PeerRequest::SyncNow { full: true },
                            2 => PeerRequest::Arm { priority: 200 },
                            3 => PeerRequest::Upgrade {
                                firmware: "5.2.0".into(),
                                language_pack: Some("de".into()),
                            },
                            _ => PeerRequest::Restart,
                        },
                    },
                    _ => PeerBody::Reply {
                        id: u32::from(kind >> 2),
                        outcome: match kind >> 6 {
                            0 => ReplyOutcome::Done,
                            1 => ReplyOutcome::Failed,
                            _ => ReplyOutcome::Refused,
                        },
                    },
                };
                h.orch
                    .handle_peer_message(h.now, PeerMessage { epoch, body });
            }
            3 => {
                let bytes = cur.take(usize::from(arg));
                let _ = h.orch.handle_peer_bytes(h.now, bytes);
            }
            4 => {
                if !h.outstanding.is_empty() {
                    let i = usize::from(arg) % h.outstanding.len();
                    let id = h.outstanding.swap_remove(i);
                    let outcome = match cur.byte().unwrap_or(0) % 4 {
                        0 | 1 => CommandOutcome::Done,
                        2 => CommandOutcome::NotReady,
                        _ => CommandOutcome::Failed { code: 1 },
                    };
                    h.orch.handle_command_result(h.now, id, outcome);
                } else {
                    h.orch.handle_command_result(
                        h.now,
                        CommandId(u64::from(arg)),
                        CommandOutcome::Done,
                    );
                }
            }
            5 => {
                let req = match arg % 7 {
                    0 => OperatorRequest::Swap,
                    1 => OperatorRequest::SetBackupMode {
                        mode: mode(arg >> 3),
                        expires_at: Some(h.wall + Duration::from_secs(u64::from(arg))),
                    },
                    2 => OperatorRequest::RollingUpgrade {
                        firmware: "5.2.0".into(),
                        language_pack: None,
                        protocol: ProtocolVersion {
                            major: u16::from(arg >> 7) + 1,
                            minor: 0,
                        },
                    },
                    3 => OperatorRequest::ConfigRestore { backup: "b".into() },
                    4 => OperatorRequest::HandBack,
                    5 => OperatorRequest::SetRedundancy(Redundancy::Disabled),
                    _ => OperatorRequest::SetRedundancy(Redundancy::Enabled),
                };
                let _ = h.orch.preview(h.now, &req);
                let _ = h.orch.handle_operator(h.now, req);
            }
            6 => {
                let s = SyncStatus {
                    generation: u64::from(arg),
                    taken_at: h.wall - Duration::from_secs(u64::from(arg)),
                    round_in_progress: arg & 1 == 1,
                };
                h.orch.handle_sync_status(h.now, s);
            }
            7 => h
                .orch
                .handle_phone_registered(h.now, PhoneId(u32::from(arg % 6))),
            8 => {
                h.wall += Duration::from_secs(u64::from(arg));
                h.orch.handle_wall_clock(h.now, h.wall);
                let _ = h.orch.status(h.now);
            }
            _ => {
                // Restart from what was persisted: every epoch the engine
                // took or accepted was journaled.
                assert_eq!(h.persisted.highest_epoch, h.orch.epoch());
                h.now += Duration::from_secs(1);
                h.orch = Orchestrator::new(h.config.clone(), h.persisted.clone(), h.now, h.wall);
                h.outstanding.clear();
                h.role = Role::Initialize;
                h.floor = h.persisted.highest_epoch;
            }
        }
        h.drain();
    }
}
