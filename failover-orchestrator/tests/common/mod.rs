//! A two-node world in virtual time: each node's driver (address, services,
//! phones, sync, a minimal election model) answers the orchestrator's
//! commands after simulated delays; time jumps to the next deadline.
#![allow(dead_code, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::{
    BackupMode, Command, CommandId, CommandOutcome, Config, Event, FailurePolicy, Identity, Issued,
    JournalRecord, Orchestrator, PersistentState, PhoneId, PhoneMethod, PhoneSpec, ProtocolVersion,
    Role, RoleChange, RoleChangeReason, ServiceSpec, SyncStatus, wire,
};

pub const WALL0: u64 = 1_790_000_000;

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

/// How a phone answers in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhoneModel {
    Follow(Duration),
    Nudge,
    Reboot,
    Never,
}

#[derive(Debug, Clone)]
enum Action {
    Result(usize, CommandId, CommandOutcome),
    Peer(usize, Vec<u8>),
    Role(usize, Role, RoleChangeReason),
    Registered(usize, PhoneId),
    Boot(usize),
    Crash(usize),
    Sync(usize, u64),
}

pub struct Node {
    pub orch: Option<Orchestrator>,
    pub id: Identity,
    pub phones: Vec<PhoneSpec>,
    pub policy: Option<FailurePolicy>,
    pub persisted: PersistentState,
    pub role: Role,
    pub mode: BackupMode,
    pub armed: bool,
    pub holds_address: bool,
    pub service_started: Vec<Option<Instant>>,
    pub service_ready_after: Vec<Option<Duration>>,
    pub node_ready: bool,
    pub generation: u64,
    pub issued: Vec<(Instant, Issued)>,
    pub events: Vec<(Instant, Event)>,
    pub journal: Vec<JournalRecord>,
    pub boots: u32,
    pub registered: Vec<Option<Instant>>,
    pub follow_scheduled: bool,
    pub upgrade_to: Option<String>,
    /// Crash after this many further journal records (tests of resume).
    pub crash_after_records: Option<usize>,
    pub became_master: Vec<Instant>,
    pub left_master: Vec<Instant>,
}

pub struct World {
    pub t0: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    actions: HashMap<u64, Action>,
    seq: u64,
    pub link_up: bool,
    pub link_delay: Duration,
    pub phone_model: Vec<PhoneModel>,
    pub master_down: Duration,
    pub restart_time: Duration,
    pub double_address: u32,
    pub stale_commands: u32,
    pub rehome_start: Option<Instant>,
    pub auto_elect: bool,
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

impl World {
    pub fn new(ids: &[Identity], phones: Vec<PhoneSpec>, policy: Option<FailurePolicy>) -> World {
        let t0 = Instant::now();
        let model = phone_model(&phones);
        let n_phones = phones.len();
        let nodes = ids
            .iter()
            .map(|id| Node {
                orch: None,
                id: id.clone(),
                phones: phones.clone(),
                policy,
                persisted: PersistentState::default(),
                role: Role::Initialize,
                mode: BackupMode::Active,
                armed: false,
                holds_address: false,
                service_started: vec![None; 4],
                service_ready_after: vec![Some(Duration::from_millis(150)); 4],
                node_ready: true,
                generation: 0,
                issued: Vec::new(),
                events: Vec::new(),
                journal: Vec::new(),
                boots: 0,
                registered: vec![None; n_phones],
                follow_scheduled: false,
                upgrade_to: None,
                crash_after_records: None,
                became_master: Vec::new(),
                left_master: Vec::new(),
            })
            .collect();
        World {
            t0,
            now: t0,
            nodes,
            queue: BinaryHeap::new(),
            actions: HashMap::new(),
            seq: 0,
            link_up: true,
            link_delay: Duration::from_millis(1),
            phone_model: model,
            master_down: Duration::from_secs(3),
            restart_time: Duration::from_secs(30),
            double_address: 0,
            stale_commands: 0,
            rehome_start: None,
            auto_elect: true,
        }
    }

    pub fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) + (self.now - self.t0)
    }

    pub fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn at(&mut self, delay: Duration, a: Action) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.actions.insert(self.seq, a);
    }

    pub fn orch(&mut self, i: usize) -> &mut Orchestrator {
        self.nodes[i].orch.as_mut().unwrap()
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].orch.is_some()
    }

    /// Boots node `i` now from its persisted state.
    pub fn boot(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut id = n.id.clone();
        if let Some(fw) = n.upgrade_to.take() {
            id.firmware = fw;
            n.id = id.clone();
        }
        let cfg = config(&id, n.phones.clone(), n.policy);
        let wall = self.wall();
        let n = &mut self.nodes[i];
        n.role = Role::Initialize;
        n.armed = false;
        n.holds_address = false;
        n.service_started = vec![None; 4];
        n.mode = n.persisted.backup_mode;
        n.boots += 1;
        n.follow_scheduled = false;
        n.orch = Some(Orchestrator::new(cfg, n.persisted.clone(), self.now, wall));
        if self.nodes[i].generation > 0 {
            let g = self.nodes[i].generation;
            let s = SyncStatus {
                generation: g,
                taken_at: wall,
                round_in_progress: false,
            };
            let now = self.now;
            self.orch(i).handle_sync_status(now, s);
        }
        if self.auto_elect {
            // Minimal election: a node that hears a Master becomes Backup;
            // otherwise it becomes Master after the Master_Down interval.
            let other_master = (0..self.nodes.len())
                .any(|j| j != i && self.alive(j) && self.nodes[j].role == Role::Master);
            if other_master && self.link_up {
                self.at(
                    Duration::from_millis(100),
                    Action::Role(i, Role::Backup, RoleChangeReason::Startup),
                );
            } else {
                self.at(
                    Duration::from_millis(100),
                    Action::Role(i, Role::Backup, RoleChangeReason::Startup),
                );
                let md = self.master_down;
                self.at(
                    md,
                    Action::Role(i, Role::Master, RoleChangeReason::MasterDown),
                );
            }
        }
    }

    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.orch = None;
        if n.role == Role::Master {
            n.left_master.push(self.now);
        }
        n.role = Role::Initialize;
        n.holds_address = false;
        n.armed = false;
        if !self.auto_elect {
            return;
        }
        for j in 0..self.nodes.len() {
            if j != i
                && self.alive(j)
                && self.nodes[j].role == Role::Backup
                && (self.nodes[j].mode == BackupMode::Active || self.nodes[j].armed)
            {
                let md = self.master_down;
                self.at(
                    md,
                    Action::Role(j, Role::Master, RoleChangeReason::MasterDown),
                );
            }
        }
    }

    /// Cuts the link, election included: Active Backups take over after the
    /// Master_Down interval.
    pub fn partition(&mut self) {
        self.link_up = false;
        for j in 0..self.nodes.len() {
            if self.alive(j) && self.nodes[j].role == Role::Backup {
                let md = self.master_down;
                self.at(
                    md,
                    Action::Role(j, Role::Master, RoleChangeReason::MasterDown),
                );
            }
        }
    }

    pub fn restart(&mut self, i: usize, after: Duration) {
        self.crash(i);
        self.at(after, Action::Boot(i));
    }

    pub fn set_role(&mut self, i: usize, to: Role, reason: RoleChangeReason) {
        let n = &mut self.nodes[i];
        let from = n.role;
        if from == to || n.orch.is_none() {
            return;
        }
        // A Backup that was told Master while another Master is heard stays
        // Backup (the election model), unless the link is cut.
        if to == Role::Master && reason == RoleChangeReason::MasterDown {
            let other = (0..self.nodes.len())
                .any(|j| j != i && self.alive(j) && self.nodes[j].role == Role::Master);
            if (other && self.link_up)
                || (self.nodes[i].mode == BackupMode::Passive && !self.nodes[i].armed)
            {
                return;
            }
        }
        let n = &mut self.nodes[i];
        n.role = to;
        if to == Role::Master {
            n.became_master.push(self.now);
            n.armed = false;
        }
        if from == Role::Master {
            n.left_master.push(self.now);
        }
        let now = self.now;
        self.orch(i)
            .handle_role_change(now, RoleChange { from, to, reason });
    }

    fn other(&self, i: usize) -> usize {
        1 - i
    }

    /// Drains every node's outputs and turns commands into scheduled results.
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            loop {
                let mut any = false;
                let Some(o) = self.nodes[i].orch.as_mut() else {
                    break;
                };
                let mut records = Vec::new();
                while let Some(r) = o.poll_journal() {
                    records.push(r);
                }
                let mut cmds = Vec::new();
                while let Some(c) = o.poll_command() {
                    cmds.push(c);
                }
                let mut tx = Vec::new();
                while let Some(m) = o.poll_transmit() {
                    tx.push(m);
                }
                let mut evs = Vec::new();
                while let Some(e) = o.poll_event() {
                    evs.push(e);
                }
                let epoch_now = o.epoch();
                let now = self.now;
                for r in records {
                    any = true;
                    self.nodes[i].persisted = r.state.clone();
                    self.nodes[i].journal.push(r);
                    if let Some(k) = self.nodes[i].crash_after_records.as_mut() {
                        if *k == 0 {
                            self.nodes[i].crash_after_records = None;
                            let rt = self.restart_time;
                            self.restart(i, rt);
                            break;
                        }
                        *k -= 1;
                    }
                }
                if self.nodes[i].orch.is_none() {
                    break;
                }
                for e in evs {
                    self.nodes[i].events.push((now, e));
                }
                for m in tx {
                    any = true;
                    let mut buf = Vec::new();
                    wire::encode(&m, &mut buf).unwrap();
                    let j = self.other(i);
                    if self.link_up && j < self.nodes.len() {
                        let d = self.link_delay;
                        self.at(d, Action::Peer(j, buf));
                    }
                }
                for c in cmds {
                    any = true;
                    if c.epoch < epoch_now {
                        self.stale_commands += 1;
                    }
                    self.nodes[i].issued.push((now, c.clone()));
                    self.run_command(i, c);
                    if self.nodes[i].orch.is_none() {
                        break;
                    }
                }
                if !any {
                    break;
                }
            }
        }
    }

    fn ok(&mut self, i: usize, id: CommandId, after: Duration) {
        self.at(after, Action::Result(i, id, CommandOutcome::Done));
    }

    fn run_command(&mut self, i: usize, c: Issued) {
        let ms1 = Duration::from_millis(1);
        match c.command {
            Command::ClaimAddress => {
                self.nodes[i].holds_address = true;
                if self.nodes.iter().filter(|n| n.holds_address).count() > 1 {
                    self.double_address += 1;
                }
                self.ok(i, c.id, ms1);
            }
            Command::ReleaseAddress => {
                self.nodes[i].holds_address = false;
                self.ok(i, c.id, ms1);
            }
            Command::FinishOrRollbackRound => self.ok(i, c.id, Duration::from_millis(20)),
            Command::StartService(s) => {
                self.nodes[i].service_started[usize::from(s.0)] = Some(self.now);
                self.ok(i, c.id, Duration::from_millis(10));
            }
            Command::CheckService(s) => {
                let idx = usize::from(s.0);
                let n = &self.nodes[i];
                let ready = match (n.service_started[idx], n.service_ready_after[idx]) {
                    (Some(t), Some(d)) => self.now >= t + d,
                    _ => false,
                };
                let out = if ready {
                    CommandOutcome::Done
                } else {
                    CommandOutcome::NotReady
                };
                self.at(ms1, Action::Result(i, c.id, out));
                // The registrar and the address are back: phones that follow
                // the address re-register on their own timers.
                if ready
                    && idx == 3
                    && !self.nodes[i].follow_scheduled
                    && self.nodes[i].holds_address
                {
                    self.nodes[i].follow_scheduled = true;
                    self.rehome_start = Some(self.now);
                    for (p, m) in self.phone_model.clone().into_iter().enumerate() {
                        if let PhoneModel::Follow(d) = m {
                            self.at(d, Action::Registered(i, PhoneId(p as u32)));
                        }
                    }
                }
            }
            Command::StopService(s) => {
                self.nodes[i].service_started[usize::from(s.0)] = None;
                self.ok(i, c.id, ms1);
            }
            Command::CheckNode => {
                let out = if self.nodes[i].node_ready {
                    CommandOutcome::Done
                } else {
                    CommandOutcome::NotReady
                };
                self.at(ms1, Action::Result(i, c.id, out));
            }
            Command::NudgePhone(p) => {
                self.ok(i, c.id, ms1);
                if matches!(
                    self.phone_model[p.0 as usize],
                    PhoneModel::Nudge | PhoneModel::Follow(_)
                ) {
                    self.at(Duration::from_millis(500), Action::Registered(i, p));
                }
            }
            Command::RebootPhone(p) => {
                self.ok(i, c.id, ms1);
                if !matches!(self.phone_model[p.0 as usize], PhoneModel::Never) {
                    self.at(Duration::from_secs(20), Action::Registered(i, p));
                }
            }
            Command::SyncNow { .. } => {
                let g = self.nodes[i].generation + 1;
                self.at(Duration::from_millis(200), Action::Sync(i, g));
                self.ok(i, c.id, Duration::from_millis(201));
            }
            Command::ArmTakeover { .. } => {
                self.nodes[i].armed = true;
                self.ok(i, c.id, ms1);
            }
            Command::Release { .. } | Command::StepDown => {
                self.ok(i, c.id, ms1);
                let now_role = self.nodes[i].role;
                if now_role == Role::Master {
                    self.set_role(i, Role::Backup, RoleChangeReason::Released);
                    let j = self.other(i);
                    if j < self.nodes.len() && self.alive(j) && self.nodes[j].armed && self.link_up
                    {
                        let d = self.link_delay;
                        self.at(
                            d,
                            Action::Role(j, Role::Master, RoleChangeReason::SwapTakeover),
                        );
                    } else if matches!(c.command, Command::Release { .. })
                        && j < self.nodes.len()
                        && self.alive(j)
                        && self.nodes[j].role == Role::Backup
                        && self.nodes[j].mode == BackupMode::Active
                        && self.link_up
                    {
                        // RFC 9568 §6.4.2: priority 0 heard, take over after
                        // Skew_Time.
                        self.at(
                            Duration::from_millis(10),
                            Action::Role(j, Role::Master, RoleChangeReason::PeerReleased),
                        );
                    }
                }
            }
            Command::SetBackupMode(m) => {
                self.nodes[i].mode = m;
                self.ok(i, c.id, ms1);
            }
            Command::UpgradeFirmware { version } => {
                self.nodes[i].upgrade_to = Some(version);
                self.ok(i, c.id, Duration::from_millis(10));
                self.at(Duration::from_millis(50), Action::Crash(i));
            }
            // The restore reboots the node: no answer (driver contract).
            Command::RestoreConfig { .. } => {
                self.at(Duration::from_millis(150), Action::Crash(i));
            }
            Command::RestartNode => {
                self.at(Duration::from_millis(5), Action::Crash(i));
            }
            _ => self.ok(i, c.id, ms1),
        }
    }

    fn apply(&mut self, a: Action) {
        let now = self.now;
        match a {
            Action::Result(i, id, out) => {
                if let Some(o) = self.nodes[i].orch.as_mut() {
                    o.handle_command_result(now, id, out);
                }
            }
            Action::Peer(i, bytes) => {
                if self.link_up
                    && let Some(o) = self.nodes[i].orch.as_mut()
                {
                    o.handle_peer_bytes(now, &bytes).unwrap();
                }
            }
            Action::Role(i, r, why) => self.set_role(i, r, why),
            Action::Registered(i, p) => {
                if self.nodes[i].orch.is_some() {
                    self.nodes[i].registered[p.0 as usize].get_or_insert(now);
                    self.orch(i).handle_phone_registered(now, p);
                }
            }
            Action::Boot(i) => self.boot(i),
            Action::Crash(i) => {
                let rt = self.restart_time;
                self.restart(i, rt);
            }
            Action::Sync(i, g) => {
                self.nodes[i].generation = g;
                let wall = self.wall();
                if let Some(o) = self.nodes[i].orch.as_mut() {
                    o.handle_sync_status(
                        now,
                        SyncStatus {
                            generation: g,
                            taken_at: wall,
                            round_in_progress: false,
                        },
                    );
                }
            }
        }
    }

    /// Runs until `until` (virtual) or `stop` holds.
    pub fn run_until(&mut self, until: Instant, mut stop: impl FnMut(&World) -> bool) -> bool {
        let mut guard = 0u64;
        loop {
            guard += 1;
            assert!(guard < 5_000_000, "simulation does not settle");
            self.drain();
            if stop(self) {
                return true;
            }
            let mut next = self.queue.peek().map(|Reverse((t, _))| *t);
            for n in &self.nodes {
                if let Some(o) = &n.orch
                    && let Some(t) = o.poll_timeout()
                {
                    next = Some(next.map_or(t, |x: Instant| x.min(t)));
                }
            }
            let Some(next) = next else { return false };
            if next > until {
                self.now = until;
                return false;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((t, _))) = self.queue.peek() {
                if *t > self.now {
                    break;
                }
                let Reverse((_, seq)) = self.queue.pop().unwrap();
                let a = self.actions.remove(&seq).unwrap();
                self.apply(a);
                self.drain();
            }
            let now = self.now;
            for i in 0..self.nodes.len() {
                if let Some(o) = self.nodes[i].orch.as_mut()
                    && o.poll_timeout().is_some_and(|t| t <= now)
                {
                    o.handle_timeout(now);
                }
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until, |_| false);
    }

    pub fn commands(&self, i: usize) -> Vec<Command> {
        self.nodes[i]
            .issued
            .iter()
            .map(|(_, c)| c.command.clone())
            .collect()
    }

    pub fn count_events(&self, i: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.nodes[i].events.iter().filter(|(_, e)| f(e)).count()
    }
}

/// A pair: node 0 boots first and becomes Master, node 1 joins as Backup.
pub fn pair(phones: Vec<PhoneSpec>, policy: Option<FailurePolicy>) -> World {
    let a = identity("06-5.1.30-005400", "5.1.30");
    let b = identity("06-5.1.31-005400", "5.1.30");
    let mut w = World::new(&[a, b], phones, policy);
    w.boot(0);
    w.run_for(Duration::from_secs(4));
    assert_eq!(w.nodes[0].role, Role::Master);
    w.boot(1);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.nodes[1].role, Role::Backup);
    w
}
