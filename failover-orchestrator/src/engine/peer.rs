//! The peer protocol: what this node knows of its peer, the messages it
//! queues for the peer link, heartbeats and the peer timeout, the parity
//! findings, and the peer's requests and replies.
//!
//! [`PeerLink`] owns the peer's view and the transmit queue; the
//! `impl Orchestrator` block below turns received messages into epochs,
//! plans and replies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::executor::PlanOutcome;
use super::{Event, Orchestrator};
use crate::command::Command;
use crate::journal::JournalEntry;
use crate::phones::min_opt;
use crate::plan::{PeerCondition, Plan, PlanKind, Step, StepAction};
use crate::procedure::ParityField;
use crate::status::{Finding, PeerView};
use crate::types::{Identity, ProtocolVersion, Redundancy, Role};
use crate::wire::{PeerBody, PeerMessage, PeerRequest, PeerStatusReport, ReplyOutcome};

/// The peer as heard over the link, and what is queued for it.
#[derive(Debug)]
pub(super) struct PeerLink {
    identity: Option<Identity>,
    /// A Master peer was heard since boot: becoming Master now is a
    /// takeover (phones must move), not a cold start.
    seen_master: bool,
    last: Option<PeerStatusReport>,
    last_heard: Option<Instant>,
    up: bool,
    transmits: VecDeque<PeerMessage>,
    /// Most messages queued; the oldest goes first.
    capacity: usize,
    next_heartbeat: Option<Instant>,
    /// When this node last sent a hello (to answer a restarted peer's
    /// hello without two hellos echoing).
    hello_sent_at: Option<Instant>,
    /// A hello from the peer came after our last one.
    hello_answered: bool,
    findings: Vec<Finding>,
}

impl PeerLink {
    pub(super) fn new(capacity: usize) -> Self {
        PeerLink {
            identity: None,
            seen_master: false,
            last: None,
            last_heard: None,
            up: false,
            transmits: VecDeque::new(),
            capacity,
            next_heartbeat: None,
            hello_sent_at: None,
            hello_answered: false,
            findings: Vec::new(),
        }
    }

    fn push(&mut self, msg: PeerMessage) {
        if self.transmits.len() >= self.capacity {
            self.transmits.pop_front();
        }
        self.transmits.push_back(msg);
    }

    /// Next message for the peer.
    pub(super) fn poll_transmit(&mut self) -> Option<PeerMessage> {
        self.transmits.pop_front()
    }

    /// The peer's heartbeats arrive.
    pub(super) fn up(&self) -> bool {
        self.up
    }

    /// The identity from the peer's last hello.
    pub(super) fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The peer's last status report since its last hello, while it is up.
    pub(super) fn report(&self) -> Option<PeerStatusReport> {
        self.last
    }

    /// A Master peer was heard since boot.
    pub(super) fn seen_master(&self) -> bool {
        self.seen_master
    }

    /// The election heard a Master (see `Orchestrator::handle_master_heard`).
    pub(super) fn master_heard(&mut self) {
        self.seen_master = true;
    }

    /// The peer is up and reports Master.
    pub(super) fn is_master(&self) -> bool {
        self.up && self.last.is_some_and(|s| s.role == Role::Master)
    }

    /// Where the two nodes differ (firmware, language pack, licences,
    /// protocol).
    pub(super) fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The peer's identity speaks a protocol compatible with `ours`.
    fn compatible(&self, ours: ProtocolVersion) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|p| ours.compatible_with(p.protocol))
    }

    /// The peer's heartbeats meet the condition.
    pub(super) fn meets(&self, c: &PeerCondition) -> bool {
        let Some(s) = self.last else {
            return false;
        };
        self.up
            && c.role.is_none_or(|r| r == s.role)
            && c.mode.is_none_or(|m| m == s.mode)
            && (!c.ready || s.ready)
            && c.firmware
                .as_ref()
                .is_none_or(|f| self.identity.as_ref().is_some_and(|p| &p.firmware == f))
    }

    /// The peer for the status model, once it has said hello.
    pub(super) fn view(&self) -> Option<PeerView> {
        self.identity.as_ref().map(|id| PeerView {
            id: id.node_id.clone(),
            up: self.up,
            role: self.last.map(|s| s.role),
            mode: self.last.map(|s| s.mode),
            firmware: id.firmware.clone(),
            protocol: id.protocol,
            ready: self.last.is_some_and(|s| s.ready),
            sync_generation: self.last.and_then(|s| s.sync_generation),
        })
    }

    /// The next heartbeat, or the peer timeout while the peer is up.
    pub(super) fn next_deadline(&self, peer_timeout: Duration) -> Option<Instant> {
        let mut d = self.next_heartbeat;
        if self.up {
            d = min_opt(d, self.last_heard.map(|h| h + peer_timeout));
        }
        d
    }

    pub(super) fn start_heartbeats(&mut self, at: Instant) {
        self.next_heartbeat = Some(at);
    }

    pub(super) fn stop_heartbeats(&mut self) {
        self.next_heartbeat = None;
    }

    pub(super) fn heartbeats_stopped(&self) -> bool {
        self.next_heartbeat.is_none()
    }

    /// Recomputes the parity findings against `ours`; the new list when it
    /// changed.
    fn update_findings(&mut self, ours: &Identity) -> Option<Vec<Finding>> {
        let mut f = Vec::new();
        if let Some(p) = &self.identity {
            if ours.firmware != p.firmware {
                f.push(Finding {
                    field: ParityField::Firmware,
                    ours: ours.firmware.clone(),
                    theirs: p.firmware.clone(),
                });
            }
            if ours.language_pack != p.language_pack {
                f.push(Finding {
                    field: ParityField::LanguagePack,
                    ours: ours.language_pack.clone(),
                    theirs: p.language_pack.clone(),
                });
            }
            let mut a = ours.licences.clone();
            let mut b = p.licences.clone();
            a.sort();
            a.dedup();
            b.sort();
            b.dedup();
            if a != b {
                f.push(Finding {
                    field: ParityField::Licences,
                    ours: a.join(","),
                    theirs: b.join(","),
                });
            }
            if !ours.protocol.compatible_with(p.protocol) {
                f.push(Finding {
                    field: ParityField::Protocol,
                    ours: ours.protocol.to_string(),
                    theirs: p.protocol.to_string(),
                });
            }
        }
        if f == self.findings {
            return None;
        }
        self.findings = f.clone();
        Some(f)
    }
}

impl Orchestrator {
    /// This node's identity changed (an upgrade installed new firmware or
    /// a language pack): the parity findings are recomputed and, with the
    /// peer up, a new hello tells it.
    pub fn set_identity(&mut self, now: Instant, identity: Identity) {
        if self.config.identity == identity {
            return;
        }
        self.config.identity = identity;
        if let Some(f) = self.link.update_findings(&self.config.identity) {
            self.push_event(Event::FindingsChanged(f));
        }
        if self.link.up() {
            self.send_hello(now);
        }
    }

    /// A decoded peer message: the epoch check, liveness, then its body.
    pub(super) fn peer_message(&mut self, now: Instant, msg: PeerMessage) {
        if self.state.redundancy == Redundancy::Disabled {
            self.stats.peer_ignored += 1;
            return;
        }
        let newest = self.state.highest_epoch;
        if msg.epoch < newest {
            self.stats.stale_epoch += 1;
            self.push_event(Event::StaleRefused {
                epoch: msg.epoch,
                newest,
            });
            // A request is answered, under the newer epoch: the peer learns
            // it and fails the step now instead of waiting out the step's
            // timeout (a swap whose Backup took over meanwhile would wait
            // minutes for an answer that never comes).
            if let PeerBody::Request { id, .. } = msg.body {
                self.stats.requests_refused += 1;
                self.push_event(Event::RequestRefused { id });
                self.send(PeerBody::Reply {
                    id,
                    outcome: ReplyOutcome::Refused,
                });
            }
            return;
        }
        if msg.epoch > newest {
            self.adopt_epoch(now, msg.epoch);
        }
        let was_up = self.link.up;
        self.link.last_heard = Some(now);
        if !was_up {
            self.link.up = true;
            self.stats.peer_flaps += 1;
            self.push_event(Event::PeerUp);
            self.send_hello(now);
        }
        match msg.body {
            PeerBody::Hello(identity) => {
                // A hello starts a new acquaintance: the status heard
                // before it may be from before the peer restarted.
                self.link.last = None;
                // A peer that greets us while we already count it as up
                // restarted (or its engine did, in a soft restart) and has
                // forgotten who we are: greet it back. Not when this hello
                // is the answer to ours (the first since we greeted, within
                // a heartbeat interval), so that two hellos never echo.
                let answer = !self.link.hello_answered
                    && self.link.hello_sent_at.is_some_and(|t| {
                        now.saturating_duration_since(t) < self.config.heartbeat_interval
                    });
                self.link.hello_answered = true;
                if was_up && !answer {
                    self.send_hello(now);
                }
                self.link.identity = Some(identity);
                if let Some(f) = self.link.update_findings(&self.config.identity) {
                    self.push_event(Event::FindingsChanged(f));
                }
            }
            PeerBody::Status(report) => {
                self.link.seen_master |= report.role == Role::Master;
                self.link.last = Some(report);
            }
            PeerBody::Request { id, request } => self.handle_request(now, id, request),
            PeerBody::Reply { id, outcome } => self.handle_reply(now, id, outcome),
        }
        self.drive(now);
    }

    /// Heartbeats due and the peer timeout.
    pub(super) fn peer_timers(&mut self, now: Instant) {
        if self.link.next_heartbeat.is_some_and(|t| t <= now) {
            let t = self.link.next_heartbeat.unwrap_or(now);
            self.send_status();
            let mut next = t + self.config.heartbeat_interval;
            if next <= now {
                next = now + self.config.heartbeat_interval;
            }
            self.link.next_heartbeat = Some(next);
        }
        if self.link.up
            && self
                .link
                .last_heard
                .is_some_and(|h| h + self.config.peer_timeout <= now)
        {
            self.link.up = false;
            self.link.last = None;
            self.stats.peer_flaps += 1;
            self.push_event(Event::PeerDown);
        }
    }

    /// Queues a message under the newest epoch (nothing while redundancy
    /// is disabled).
    pub(super) fn send(&mut self, body: PeerBody) {
        if self.state.redundancy == Redundancy::Disabled {
            return;
        }
        self.link.push(PeerMessage {
            epoch: self.state.highest_epoch,
            body,
        });
    }

    /// A hello, always followed by our status: a hello makes the peer
    /// forget the status it had from us (it may be from before a restart),
    /// so the fresh one comes right behind it rather than a heartbeat later.
    pub(super) fn send_hello(&mut self, now: Instant) {
        self.link.hello_sent_at = Some(now);
        self.link.hello_answered = false;
        self.send(PeerBody::Hello(self.config.identity.clone()));
        self.send_status();
    }

    pub(super) fn send_status(&mut self) {
        let report = PeerStatusReport {
            role: self.role,
            mode: self.state.backup_mode,
            redundancy: self.state.redundancy,
            sync_generation: self.sync.map(|s| s.generation),
            ready: self.ready,
            busy: self.state.procedure.is_some(),
        };
        self.send(PeerBody::Status(report));
    }

    /// The peer asks: refused, or carried out by a plan that replies when
    /// it finishes.
    fn handle_request(&mut self, now: Instant, id: u32, request: PeerRequest) {
        if self.exec.serving_request(id) {
            return; // a retry of a request still running
        }
        let t = self.config.timeouts;
        let refuse = !self.link.compatible(self.config.identity.protocol)
            || match &request {
                PeerRequest::Arm { .. }
                | PeerRequest::Upgrade { .. }
                | PeerRequest::SetMode { .. } => self.role != Role::Backup,
                _ => false,
            };
        if refuse {
            self.stats.requests_refused += 1;
            self.push_event(Event::RequestRefused { id });
            self.send(PeerBody::Reply {
                id,
                outcome: ReplyOutcome::Refused,
            });
            return;
        }
        let mut p = Plan::new(PlanKind::PeerRequest);
        match request {
            PeerRequest::SetMode {
                mode,
                expires_unix_s,
            } => {
                self.state.backup_mode = mode;
                self.state.mode_expires_unix_s = expires_unix_s;
                self.arm_mode_expiry(now);
                self.record(now, JournalEntry::ModeChanged(mode));
                self.mode_changed(mode);
                p.push(
                    Step::new(StepAction::Run(Command::SetBackupMode(mode)))
                        .timeout(t.command)
                        .retries(1),
                );
            }
            PeerRequest::SyncNow { full } => {
                p.push(Step::new(StepAction::Run(Command::SyncNow { full })).timeout(t.sync));
            }
            PeerRequest::Arm { priority } => {
                p.push(
                    Step::new(StepAction::Run(Command::ArmTakeover { priority }))
                        .timeout(t.command),
                );
            }
            PeerRequest::Upgrade {
                firmware,
                language_pack,
            } => {
                // Its configuration saved first, as on the Master.
                let save = p.push(
                    Step::new(StepAction::Run(Command::SaveConfig))
                        .timeout(t.command)
                        .retries(1),
                );
                let mut deps = vec![save];
                if let Some(pack) = language_pack {
                    deps = vec![
                        p.push(
                            Step::new(StepAction::Run(Command::UpgradeLanguagePack { pack }))
                                .after(&deps)
                                .timeout(t.upgrade),
                        ),
                    ];
                }
                p.push(
                    Step::new(StepAction::Run(Command::UpgradeFirmware {
                        version: firmware,
                    }))
                    .after(&deps)
                    .timeout(t.upgrade),
                );
            }
            PeerRequest::Restart => {
                p.push(Step::new(StepAction::Run(Command::RestartNode)).timeout(t.command));
            }
        }
        self.start_plan(now, p, None, Some(id));
    }

    /// The peer answers one of our requests.
    fn handle_reply(&mut self, now: Instant, id: u32, outcome: ReplyOutcome) {
        let Some((plan, step)) = self.exec.take_reply(id) else {
            self.stats.unknown_replies += 1;
            return;
        };
        if outcome == ReplyOutcome::Done {
            self.step_done(now, plan, step);
        } else {
            self.attempt_failed(now, plan, step);
        }
    }

    /// The plan that carried out the peer's request `id` finished: reply.
    pub(super) fn request_finished(&mut self, id: u32, outcome: PlanOutcome) {
        let o = if outcome == PlanOutcome::Completed {
            ReplyOutcome::Done
        } else {
            ReplyOutcome::Failed
        };
        self.send(PeerBody::Reply { id, outcome: o });
        self.send_status();
    }
}
