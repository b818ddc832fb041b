//! A two-node world on `vrrp_fsm::sim`: each node is one engine on the
//! simulated LAN, in virtual time. In each node the real `VirtualRouter`
//! elects (the appliance profile), the `Orchestrator` sequences, and a
//! driver model answers the orchestrator's commands after simulated
//! delays: the address, services, phones, sync, restarts and upgrades. The
//! orchestrators' peer messages travel on the same network, unicast to the
//! peer; the peer link can also be cut alone, the VRRP LAN staying whole.
//!
//! What survives a crash (the journal's state, the tree's generation, the
//! firmware an upgrade installed) and what the tests observe (commands
//! issued, role changes, phone registrations) live in [`Node`], beside the
//! engine, which the simulator drops at a crash and builds again at boot.
#![allow(dead_code, clippy::unwrap_used)]

use std::cell::{Ref, RefCell, RefMut};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::convert;
use failover_orchestrator::{
    BackupMode, Command, CommandId, CommandOutcome, Config, Event, FailurePolicy, Identity, Issued,
    JournalRecord, OperatorRequest, Orchestrator, PersistentState, PhoneId, PhoneMethod, PhoneSpec,
    PreflightError, ProtocolVersion, Redundancy, Role, ServiceSpec, SyncStatus, wire,
};
use vrrp_fsm::VirtualRouter;
use vrrp_fsm::sim::{Engine, LinkConfig, Outgoing, Sim, To, VrrpMessage, What};
use vrrp_proto::{Priority, Vrid};

pub const WALL0: u64 = 1_790_000_000;

/// The virtual address.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

/// Election priorities: node 1 (the one that joins as Backup) outranks
/// node 0, so that when both are Master (a healed partition) the election
/// agrees with the epochs that the newer term, node 1's, stays. The sum
/// keeps a takeover after node 0's crash at the end of [`pair`] about 3 s
/// after the crash (the last advertisement heard, then node 1's
/// Master_Down_Interval).
pub const PRIORITIES: [u8; 2] = [100, 150];

pub fn ip(i: usize) -> IpAddr {
    Ipv4Addr::new(10, 0, 0, i as u8 + 1).into()
}

pub fn identity(id: &str, firmware: &str) -> Identity {
    Identity {
        node_id: id.into(),
        firmware: firmware.into(),
        language_pack: "en-US 3".into(),
        licences: vec!["acd".into(), "sip-trunk-16".into()],
        protocol: ProtocolVersion::CURRENT,
    }
}

/// The phone model of the issue: 60 % follow, 30 % nudge, 8 % reboot,
/// 2 % person, spread so every class appears throughout the inventory.
pub fn inventory(n: usize) -> Vec<PhoneSpec> {
    (0..n)
        .map(|i| {
            let m = i % 50;
            let method = if m < 30 {
                PhoneMethod::FollowsAddress
            } else if m < 45 {
                PhoneMethod::Nudge
            } else if m < 49 {
                PhoneMethod::Reboot
            } else {
                PhoneMethod::Person(failover_orchestrator::PersonReason::UnsupportedModel)
            };
            PhoneSpec::new(method).class(if i % 97 == 0 { 0 } else { 5 })
        })
        .collect()
}

/// The legacy behaviour: reboot every phone, one per second.
pub fn reboot_all(n: usize) -> Vec<PhoneSpec> {
    inventory(n)
        .into_iter()
        .map(|p| match p.method {
            PhoneMethod::Person(_) => p,
            _ => PhoneSpec::new(PhoneMethod::Reboot),
        })
        .collect()
}

pub fn services() -> Vec<ServiceSpec> {
    let sid = failover_orchestrator::ServiceId;
    vec![
        ServiceSpec::new("database"),
        ServiceSpec::new("sip-registrar").after(&[sid(0)]),
        ServiceSpec::new("media").after(&[sid(0)]),
        ServiceSpec::new("voicemail").after(&[sid(1), sid(2)]),
    ]
}

pub fn config(id: &Identity, phones: Vec<PhoneSpec>, policy: Option<FailurePolicy>) -> Config {
    let mut b = Config::builder(id.clone()).phones(phones);
    for (i, mut s) in services().into_iter().enumerate() {
        if let Some(p) = policy
            && i == 2
        {
            s = s.on_failure(p).ready_within(Duration::from_secs(5), 1);
        }
        b = b.service(s);
    }
    b.build().unwrap()
}

/// The election's configuration: the appliance profile (VRRPv2 at 1 s,
/// preempt off, accept mode on).
pub fn vrrp_config(i: usize) -> vrrp_fsm::Config {
    vrrp_fsm::Config::appliance(Vrid::new(1).unwrap(), ip(i))
        .priority(Priority(PRIORITIES[i % 2]))
        .address(VIP)
        .build()
        .unwrap()
}

/// How a phone answers in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhoneModel {
    Follow(Duration),
    Nudge,
    Reboot,
    Never,
}

pub fn phone_model(specs: &[PhoneSpec]) -> Vec<PhoneModel> {
    specs
        .iter()
        .enumerate()
        .map(|(i, p)| match p.method {
            // Follow phones re-register 0.2 .. 3.0 s after the registrar is
            // back on the address (their own retry timers).
            PhoneMethod::FollowsAddress => {
                PhoneModel::Follow(Duration::from_millis(200 + (i as u64 * 37) % 2800))
            }
            PhoneMethod::Nudge => PhoneModel::Nudge,
            PhoneMethod::Reboot => PhoneModel::Reboot,
            PhoneMethod::Person(_) => PhoneModel::Never,
        })
        .collect()
}

/// What the network carries: VRRP on the LAN, and the orchestrators' peer
/// messages (encoded) to the peer.
#[derive(Debug, Clone)]
pub enum Packet {
    Vrrp(VrrpMessage),
    Peer(Vec<u8>),
}

/// What a node reports, in the simulator's records.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Election(vrrp_fsm::Event),
    Orchestrator(Event),
}

/// One node beside its engine: its disk (the journal's state, the tree's
/// generation, the firmware an upgrade installed), how its driver model
/// behaves, and what the tests observe. Survives crashes.
pub struct Node {
    pub id: Identity,
    pub phones: Vec<PhoneSpec>,
    pub policy: Option<FailurePolicy>,
    pub persisted: PersistentState,
    pub journal: Vec<JournalRecord>,
    pub generation: u64,
    pub upgrade_to: Option<String>,
    pub boots: u32,
    /// How long each service takes to pass its check (`None`: never).
    pub service_ready_after: Vec<Option<Duration>>,
    pub node_ready: bool,
    /// Crash after this many further journal records (tests of resume).
    pub crash_after_records: Option<usize>,
    pub holds_address: bool,
    pub issued: Vec<(Instant, Issued)>,
    /// When each phone first registered with this node.
    pub registered: Vec<Option<Instant>>,
    /// The election's transitions to and from Master (and crashes as
    /// Master).
    pub became_master: Vec<Instant>,
    pub left_master: Vec<Instant>,
}

/// What the nodes' engines share with the world.
struct Shared {
    nodes: Vec<Node>,
    phone_model: Vec<PhoneModel>,
    peer_link_up: bool,
    double_address: u32,
    stale_commands: u32,
    /// Nodes that went down and wait for the world to restart them.
    restarts: Vec<usize>,
}

/// The driver model's answers and happenings, due at an instant.
#[derive(Debug)]
enum Due {
    Result(CommandId, CommandOutcome),
    Registered(PhoneId),
    Sync(u64),
    /// The node goes down (a restart, an upgrade, a restore): the world
    /// restarts it.
    PowerCycle,
}

/// One node as one engine on the simulator: election, orchestrator and
/// driver model.
pub struct NodeEngine {
    i: usize,
    shared: Rc<RefCell<Shared>>,
    t0: Instant,
    vrrp: vrrp_fsm::Config,
    router: Option<VirtualRouter>,
    orch: Orchestrator,
    due: BTreeMap<(Instant, u64), Due>,
    seq: u64,
    out: VecDeque<Outgoing<Packet>>,
    events: VecDeque<NodeEvent>,
    service_started: Vec<Option<Instant>>,
    follow_scheduled: bool,
    /// Inputs were given to the orchestrator from outside (a test): drain
    /// it at the next step.
    dirty: bool,
    /// Went down (crash point, restart): does nothing until the world
    /// crashes and reboots it.
    down: bool,
    now: Instant,
}

fn wall(t0: Instant, now: Instant) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) + (now - t0)
}

impl NodeEngine {
    /// Boots node `i` from what its disk holds.
    fn boot(i: usize, shared: Rc<RefCell<Shared>>, t0: Instant, now: Instant) -> NodeEngine {
        let (cfg, persisted, generation) = {
            let mut s = shared.borrow_mut();
            let n = &mut s.nodes[i];
            if let Some(fw) = n.upgrade_to.take() {
                n.id.firmware = fw;
            }
            n.boots += 1;
            n.holds_address = false;
            let cfg = config(&n.id, n.phones.clone(), n.policy);
            (cfg, n.persisted.clone(), n.generation)
        };
        let wall = wall(t0, now);
        let redundancy = persisted.redundancy;
        let mut e = NodeEngine {
            i,
            shared,
            t0,
            vrrp: vrrp_config(i),
            router: None,
            orch: Orchestrator::new(cfg, persisted, now, wall),
            due: BTreeMap::new(),
            seq: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            service_started: vec![None; 4],
            follow_scheduled: false,
            dirty: false,
            down: false,
            now,
        };
        if generation > 0 {
            e.orch.handle_sync_status(
                now,
                SyncStatus {
                    generation,
                    taken_at: wall,
                    round_in_progress: false,
                },
            );
        }
        if redundancy == Redundancy::Enabled {
            e.start_election(now);
        }
        e.pump(now);
        e
    }

    /// A new election with the persisted priority and mode.
    fn start_election(&mut self, now: Instant) {
        let mut r = VirtualRouter::new(self.vrrp.clone(), now);
        let state = self.orch.persistent_state();
        if let Some(p) = state.priority {
            r.set_priority(now, Priority(p)).unwrap();
        }
        r.set_backup_mode(now, state.backup_mode.into());
        r.handle_startup(now);
        self.router = Some(r);
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    pub fn router(&self) -> Option<&VirtualRouter> {
        self.router.as_ref()
    }

    /// The election's role; the orchestrator's while redundancy is off.
    pub fn role(&self) -> Role {
        match &self.router {
            Some(r) => r.state().into(),
            None => self.orch.role(),
        }
    }

    pub fn mode(&self) -> BackupMode {
        match &self.router {
            Some(r) => r.backup_mode().into(),
            None => self.orch.persistent_state().backup_mode,
        }
    }

    fn at(&mut self, after: Duration, due: Due) {
        self.seq += 1;
        self.due.insert((self.now + after, self.seq), due);
    }

    fn ok(&mut self, id: CommandId, after: Duration) {
        self.at(after, Due::Result(id, CommandOutcome::Done));
    }

    fn go_down(&mut self) {
        self.down = true;
        self.shared.borrow_mut().restarts.push(self.i);
    }

    fn apply(&mut self, now: Instant, due: Due) {
        match due {
            Due::Result(id, out) => self.orch.handle_command_result(now, id, out),
            Due::Registered(p) => {
                self.shared.borrow_mut().nodes[self.i].registered[p.0 as usize].get_or_insert(now);
                self.orch.handle_phone_registered(now, p);
            }
            Due::Sync(g) => {
                self.shared.borrow_mut().nodes[self.i].generation = g;
                self.orch.handle_sync_status(
                    now,
                    SyncStatus {
                        generation: g,
                        taken_at: wall(self.t0, now),
                        round_in_progress: false,
                    },
                );
            }
            Due::PowerCycle => self.go_down(),
        }
    }

    /// Moves everything the election and the orchestrator produced until
    /// nothing moves.
    fn pump(&mut self, now: Instant) {
        self.now = now;
        self.dirty = false;
        while !self.down && (self.drain_router(now) | self.drain_orchestrator(now)) {}
    }

    fn drain_router(&mut self, now: Instant) -> bool {
        let Some(r) = &mut self.router else {
            return false;
        };
        let mut moved = false;
        let mut buf = vec![0u8; r.max_transmit_len()];
        while let Some(t) = r.poll_transmit(&mut buf) {
            let o = VrrpMessage::outgoing(&t, &buf);
            self.out.push_back(Outgoing {
                to: o.to,
                packet: Packet::Vrrp(o.packet),
            });
            moved = true;
        }
        while let Some(ev) = r.poll_event() {
            moved = true;
            match ev {
                vrrp_fsm::Event::StateChange { from, to, reason } => {
                    {
                        let mut s = self.shared.borrow_mut();
                        let n = &mut s.nodes[self.i];
                        if to == vrrp_fsm::State::Master {
                            n.became_master.push(now);
                        }
                        if from == vrrp_fsm::State::Master {
                            n.left_master.push(now);
                        }
                    }
                    self.orch
                        .handle_role_change(now, convert::role_change(from, to, reason));
                }
                vrrp_fsm::Event::MasterHeard { .. } => self.orch.handle_master_heard(now),
                // The orchestrator's plans claim, release and announce the
                // address.
                _ => {}
            }
            self.events.push_back(NodeEvent::Election(ev));
        }
        moved
    }

    fn drain_orchestrator(&mut self, now: Instant) -> bool {
        let o = &mut self.orch;
        let records: Vec<_> = std::iter::from_fn(|| o.poll_journal()).collect();
        let cmds: Vec<_> = std::iter::from_fn(|| o.poll_command()).collect();
        let tx: Vec<_> = std::iter::from_fn(|| o.poll_transmit()).collect();
        let evs: Vec<_> = std::iter::from_fn(|| o.poll_event()).collect();
        let epoch = o.epoch();
        let moved = !(records.is_empty() && cmds.is_empty() && tx.is_empty() && evs.is_empty());
        for r in records {
            let mut s = self.shared.borrow_mut();
            let n = &mut s.nodes[self.i];
            n.persisted = r.state.clone();
            n.journal.push(r);
            if let Some(k) = n.crash_after_records.as_mut() {
                if *k == 0 {
                    // Down right after this record: nothing after it is
                    // carried out.
                    n.crash_after_records = None;
                    drop(s);
                    self.go_down();
                    return true;
                }
                *k -= 1;
            }
        }
        for e in evs {
            // The mode a Master keeps for its next time as Backup.
            if let Event::ModeChanged(m) = e
                && let Some(r) = &mut self.router
            {
                r.set_backup_mode(now, m.into());
            }
            self.events.push_back(NodeEvent::Orchestrator(e));
        }
        let peer = ip(1 - self.i % 2);
        for m in tx {
            let mut bytes = Vec::new();
            wire::encode(&m, &mut bytes).unwrap();
            if self.shared.borrow().peer_link_up {
                self.out.push_back(Outgoing {
                    to: To::Node(peer),
                    packet: Packet::Peer(bytes),
                });
            }
        }
        for c in cmds {
            {
                let mut s = self.shared.borrow_mut();
                if c.epoch < epoch {
                    s.stale_commands += 1;
                }
                s.nodes[self.i].issued.push((now, c.clone()));
            }
            self.run_command(now, c);
        }
        moved
    }

    fn run_command(&mut self, now: Instant, c: Issued) {
        let ms1 = Duration::from_millis(1);
        let i = self.i;
        match c.command {
            Command::ClaimAddress => {
                let mut s = self.shared.borrow_mut();
                s.nodes[i].holds_address = true;
                if s.nodes.iter().filter(|n| n.holds_address).count() > 1 {
                    s.double_address += 1;
                }
                drop(s);
                self.ok(c.id, ms1);
            }
            Command::ReleaseAddress => {
                self.shared.borrow_mut().nodes[i].holds_address = false;
                self.ok(c.id, ms1);
            }
            Command::FinishOrRollbackRound => self.ok(c.id, Duration::from_millis(20)),
            Command::StartService(s) => {
                self.service_started[usize::from(s.0)] = Some(now);
                self.ok(c.id, Duration::from_millis(10));
            }
            Command::CheckService(s) => {
                let idx = usize::from(s.0);
                let (ready, holds) = {
                    let sh = self.shared.borrow();
                    let n = &sh.nodes[i];
                    let ready = match (self.service_started[idx], n.service_ready_after[idx]) {
                        (Some(t), Some(d)) => now >= t + d,
                        _ => false,
                    };
                    (ready, n.holds_address)
                };
                let out = if ready {
                    CommandOutcome::Done
                } else {
                    CommandOutcome::NotReady
                };
                self.at(ms1, Due::Result(c.id, out));
                // The registrar and the address are back: phones that follow
                // the address re-register on their own timers.
                if ready && idx == 3 && !self.follow_scheduled && holds {
                    self.follow_scheduled = true;
                    let model = self.shared.borrow().phone_model.clone();
                    for (p, m) in model.into_iter().enumerate() {
                        if let PhoneModel::Follow(d) = m {
                            self.at(d, Due::Registered(PhoneId(p as u32)));
                        }
                    }
                }
            }
            Command::StopService(s) => {
                self.service_started[usize::from(s.0)] = None;
                self.ok(c.id, ms1);
            }
            Command::CheckNode => {
                let out = if self.shared.borrow().nodes[i].node_ready {
                    CommandOutcome::Done
                } else {
                    CommandOutcome::NotReady
                };
                self.at(ms1, Due::Result(c.id, out));
            }
            Command::NudgePhone(p) => {
                self.ok(c.id, ms1);
                let m = self.shared.borrow().phone_model[p.0 as usize];
                if matches!(m, PhoneModel::Nudge | PhoneModel::Follow(_)) {
                    self.at(Duration::from_millis(500), Due::Registered(p));
                }
            }
            Command::RebootPhone(p) => {
                self.ok(c.id, ms1);
                let m = self.shared.borrow().phone_model[p.0 as usize];
                if m != PhoneModel::Never {
                    self.at(Duration::from_secs(20), Due::Registered(p));
                }
            }
            Command::SyncNow { .. } => {
                let g = self.shared.borrow().nodes[i].generation + 1;
                self.at(Duration::from_millis(200), Due::Sync(g));
                self.ok(c.id, Duration::from_millis(201));
            }
            // The election's commands go to the router, as the pair engine
            // does.
            Command::ArmTakeover { priority } => {
                let ok = self.router.as_mut().is_some_and(|r| {
                    r.set_priority(now, Priority(priority)).is_ok() && r.arm_takeover(now).is_ok()
                });
                self.router_result(c.id, ok);
            }
            Command::Release { new_priority } => {
                let ok = self.router.as_mut().is_some_and(|r| {
                    let mut rel = vrrp_fsm::Release::new();
                    if let Some(p) = new_priority {
                        rel = rel.priority(Priority(p));
                    }
                    r.release(now, rel).is_ok()
                });
                self.router_result(c.id, ok);
            }
            Command::StepDown => {
                // Already out of Master is fine: the point is not to be it.
                if let Some(r) = &mut self.router
                    && r.state() == vrrp_fsm::State::Master
                {
                    r.release(now, vrrp_fsm::Release::new()).unwrap();
                }
                self.ok(c.id, ms1);
            }
            Command::SetBackupMode(m) => {
                if let Some(r) = &mut self.router {
                    r.set_backup_mode(now, m.into());
                }
                self.ok(c.id, ms1);
            }
            Command::SetRedundancy(r) => {
                match r {
                    Redundancy::Enabled if self.router.is_none() => self.start_election(now),
                    // Silent: no priority-0 release.
                    Redundancy::Disabled => self.router = None,
                    _ => {}
                }
                self.ok(c.id, ms1);
            }
            Command::UpgradeFirmware { version } => {
                self.shared.borrow_mut().nodes[i].upgrade_to = Some(version);
                self.ok(c.id, Duration::from_millis(10));
                self.at(Duration::from_millis(50), Due::PowerCycle);
            }
            // The restore reboots the node: no answer (driver contract).
            Command::RestoreConfig { .. } => {
                self.at(Duration::from_millis(150), Due::PowerCycle);
            }
            Command::RestartNode => {
                self.at(Duration::from_millis(5), Due::PowerCycle);
            }
            _ => self.ok(c.id, ms1),
        }
    }

    fn router_result(&mut self, id: CommandId, ok: bool) {
        let out = if ok {
            CommandOutcome::Done
        } else {
            CommandOutcome::Failed { code: 4 }
        };
        self.at(Duration::from_millis(1), Due::Result(id, out));
    }
}

/// A crash takes the address with it.
impl Drop for NodeEngine {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.try_borrow_mut() {
            s.nodes[self.i].holds_address = false;
        }
    }
}

impl Engine for NodeEngine {
    type Packet = Packet;
    type Command = OperatorRequest;
    type Error = PreflightError;
    type Event = NodeEvent;

    fn handle_command(&mut self, now: Instant, req: OperatorRequest) -> Result<(), PreflightError> {
        let r = self.orch.handle_operator(now, req).map(|_| ());
        self.pump(now);
        r
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) {
        if self.down {
            return;
        }
        match packet {
            Packet::Vrrp(m) => {
                if let Some(r) = &mut self.router {
                    // Drops are counted in the router's stats.
                    let _ = r.handle_message(now, &m.bytes, m.meta);
                }
            }
            Packet::Peer(bytes) => {
                if self.shared.borrow().peer_link_up {
                    self.orch.handle_peer_bytes(now, &bytes).unwrap();
                }
            }
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.down {
            return;
        }
        self.now = now;
        while let Some(e) = self.due.first_entry() {
            if e.key().0 > now {
                break;
            }
            let due = e.remove();
            self.apply(now, due);
            self.pump(now);
            if self.down {
                return;
            }
        }
        if let Some(r) = &mut self.router
            && r.poll_timeout().is_some_and(|t| t <= now)
        {
            r.handle_timeout(now);
        }
        if self.orch.poll_timeout().is_some_and(|t| t <= now) {
            self.orch.handle_timeout(now);
        }
        self.pump(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.down {
            return None;
        }
        if self.dirty {
            return Some(self.now);
        }
        let due = self.due.keys().next().map(|k| k.0);
        let router = self.router.as_ref().and_then(VirtualRouter::poll_timeout);
        [due, router, self.orch.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<Outgoing<Packet>> {
        self.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }
}

/// The world: the simulator with one [`NodeEngine`] per node, and what
/// survives their crashes.
pub struct World {
    pub t0: Instant,
    pub sim: Sim<NodeEngine>,
    shared: Rc<RefCell<Shared>>,
    /// How long a node is down when it restarts itself.
    pub restart_time: Duration,
}

impl World {
    pub fn new(ids: &[Identity], phones: Vec<PhoneSpec>, policy: Option<FailurePolicy>) -> World {
        let t0 = Instant::now();
        let n_phones = phones.len();
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: id.clone(),
                phones: phones.clone(),
                policy,
                persisted: PersistentState::default(),
                journal: Vec::new(),
                generation: 0,
                upgrade_to: None,
                boots: 0,
                service_ready_after: vec![Some(Duration::from_millis(150)); 4],
                node_ready: true,
                crash_after_records: None,
                holds_address: false,
                issued: Vec::new(),
                registered: vec![None; n_phones],
                became_master: Vec::new(),
                left_master: Vec::new(),
            })
            .collect();
        let shared = Rc::new(RefCell::new(Shared {
            nodes,
            phone_model: phone_model(&phones),
            peer_link_up: true,
            double_address: 0,
            stale_commands: 0,
            restarts: Vec::new(),
        }));
        let mut sim = Sim::new(t0, 1);
        sim.set_all_links(LinkConfig::delay(Duration::from_millis(1)));
        for i in 0..ids.len() {
            let s = shared.clone();
            sim.add_node(ip(i), move |now| NodeEngine::boot(i, s.clone(), t0, now));
        }
        World {
            t0,
            sim,
            shared,
            restart_time: Duration::from_secs(30),
        }
    }

    pub fn now(&self) -> Instant {
        self.t0 + self.sim.elapsed()
    }

    pub fn wall(&self) -> SystemTime {
        wall(self.t0, self.now())
    }

    pub fn ms(&self) -> u128 {
        self.sim.elapsed().as_millis()
    }

    /// Node `i`'s orchestrator, for inputs and queries; what an input makes
    /// it do is carried out at the next step, at this instant.
    pub fn orch(&mut self, i: usize) -> &mut Orchestrator {
        let e = self.sim.engine_mut(i).unwrap();
        e.dirty = true;
        &mut e.orch
    }

    pub fn orch_ref(&self, i: usize) -> Option<&Orchestrator> {
        self.sim.engine(i).map(NodeEngine::orchestrator)
    }

    pub fn alive(&self, i: usize) -> bool {
        self.sim.engine(i).is_some()
    }

    pub fn node(&self, i: usize) -> Ref<'_, Node> {
        Ref::map(self.shared.borrow(), |s| &s.nodes[i])
    }

    pub fn node_mut(&mut self, i: usize) -> RefMut<'_, Node> {
        RefMut::map(self.shared.borrow_mut(), |s| &mut s.nodes[i])
    }

    /// The election's role (`Initialize` while down).
    pub fn role(&self, i: usize) -> Role {
        self.sim
            .engine(i)
            .map_or(Role::Initialize, NodeEngine::role)
    }

    pub fn mode(&self, i: usize) -> BackupMode {
        match self.sim.engine(i) {
            Some(e) => e.mode(),
            None => self.node(i).persisted.backup_mode,
        }
    }

    pub fn holds_address(&self, i: usize) -> bool {
        self.node(i).holds_address
    }

    /// Times two nodes held the address at once.
    pub fn double_address(&self) -> u32 {
        self.shared.borrow().double_address
    }

    /// Commands issued under an epoch older than the node's newest.
    pub fn stale_commands(&self) -> u32 {
        self.shared.borrow().stale_commands
    }

    /// Boots node `i` now from its disk.
    pub fn boot(&mut self, i: usize) {
        let now = self.sim.elapsed();
        self.sim.boot_at(now, i);
        self.sim.step_until(now);
    }

    /// Node `i` loses power now.
    pub fn crash(&mut self, i: usize) {
        let now = self.now();
        if self.role(i) == Role::Master {
            self.node_mut(i).left_master.push(now);
        }
        let at = self.sim.elapsed();
        self.sim.crash_at(at, i);
        self.sim.step_until(at);
    }

    pub fn restart(&mut self, i: usize, after: Duration) {
        self.crash(i);
        let at = self.sim.elapsed() + after;
        self.sim.boot_at(at, i);
    }

    /// Cuts the peer link alone (the VRRP LAN stays whole), or mends it.
    pub fn set_peer_link(&mut self, up: bool) {
        self.shared.borrow_mut().peer_link_up = up;
    }

    /// Cuts the nodes apart, election included: an Active Backup takes
    /// over after its Master_Down_Interval.
    pub fn partition(&mut self) {
        let at = self.sim.elapsed();
        self.sim.partition_at(at, &[&[0], &[1]]);
        self.sim.step_until(at);
    }

    /// Ends every partition and mends the peer link.
    pub fn heal(&mut self) {
        self.set_peer_link(true);
        let at = self.sim.elapsed();
        self.sim.heal_at(at);
        self.sim.step_until(at);
    }

    /// Runs until `until` (virtual) or `stop` holds; nodes that went down
    /// on their own are restarted after [`World::restart_time`].
    pub fn run_until(&mut self, until: Instant, mut stop: impl FnMut(&World) -> bool) -> bool {
        let until = until.saturating_duration_since(self.t0);
        loop {
            if stop(self) {
                return true;
            }
            if !self.sim.step_until(until) {
                return false;
            }
            let down = std::mem::take(&mut self.shared.borrow_mut().restarts);
            for i in down {
                let rt = self.restart_time;
                self.restart(i, rt);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now() + d;
        self.run_until(until, |_| false);
    }

    pub fn commands(&self, i: usize) -> Vec<Command> {
        self.node(i)
            .issued
            .iter()
            .map(|(_, c)| c.command.clone())
            .collect()
    }

    /// The orchestrator's events at node `i`, across restarts.
    pub fn events(&self, i: usize) -> Vec<(Instant, Event)> {
        self.sim
            .records()
            .iter()
            .filter(|r| r.node == i)
            .filter_map(|r| match &r.what {
                What::Event(NodeEvent::Orchestrator(e)) => Some((self.t0 + r.at, e.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn count_events(&self, i: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.events(i).iter().filter(|(_, e)| f(e)).count()
    }
}

/// A pair: node 0 boots first and becomes Master, node 1 joins as Backup.
pub fn pair(phones: Vec<PhoneSpec>, policy: Option<FailurePolicy>) -> World {
    let a = identity("06-5.1.30-005400", "5.1.30");
    let b = identity("06-5.1.31-005400", "5.1.30");
    let mut w = World::new(&[a, b], phones, policy);
    w.boot(0);
    w.run_for(Duration::from_secs(4));
    assert_eq!(w.role(0), Role::Master);
    w.boot(1);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.role(1), Role::Backup);
    w
}
