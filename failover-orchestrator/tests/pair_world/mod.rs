//! A whole pair in virtual time: two nodes, each the real `Pair` engine
//! with its `SyncWorker` on a `MemStore`, a driver model that answers the
//! commands (address, services, phones, restarts, upgrades) after short
//! delays, a VRRP LAN (loss, delay, jitter, partition) and a peer link that
//! behaves like one TCP stream per connection (ordered, delayed, stalled
//! by a partition, reset, half-open after a crash).
//!
//! Nothing reads a clock: time jumps to the next event or deadline. A
//! node's persisted state and its tree survive a crash like a disk (the
//! tree loses what was not synced, as `MemStore::reboot` models).
#![allow(dead_code, clippy::unwrap_used, clippy::too_many_lines)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{
    ConnId, LinkConfig, LinkFailure, Output, Pair, PairConfig, PairEvent, SyncConfig, SyncReport,
    SyncRole, SyncWorker,
};
use failover_orchestrator::{
    BackupMode, Command, CommandId, CommandOutcome, Config, Event, Identity, Issued, JournalRecord,
    OperatorRequest, PersistentState, PhoneId, PhoneMethod, PhoneSpec, PreflightError,
    ProcedureOutcome, ProtocolVersion, Redundancy, Role, ServiceSpec, Timeouts,
};
use sync_delta::frame::{Nonce, PreSharedKey};
use sync_delta::mem::{MemStore, View};
use vrrp_proto::{Priority, RecvMeta, TTL, Vrid};

pub const WALL0: u64 = 1_790_000_000;
pub const NODES: usize = 2;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn chance(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }
    pub fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; 32];
        for c in n.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        Nonce(n)
    }
}

pub fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i as u8 + 1)
}

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

/// How the driver model carries out the engine's commands: how long each
/// takes, and how the phones and the services behave.
#[derive(Debug, Clone)]
pub struct Model {
    /// Until a started service's start command is answered.
    pub service_start: Duration,
    /// Until a stop command is answered.
    pub service_stop: Duration,
    /// After how long a started service passes its check, on each node
    /// (`None`: never); indexed by service, missing means at once.
    pub service_ready: [Vec<Option<Duration>>; NODES],
    /// Whether each node passes its own readiness check (after an upgrade).
    pub node_ready: [bool; NODES],
    /// A phone that follows the address registers this long after the
    /// node serves again (its last service passed its check with the
    /// address held), plus its own share of the spread: phone `p` adds
    /// `(p × 37 ms) mod follow_spread`, its retry timer.
    pub follow: Duration,
    pub follow_spread: Duration,
    /// Until a nudged phone registers.
    pub nudge: Duration,
    /// Until a rebooted phone registers.
    pub reboot: Duration,
    /// How long a node that restarts itself (a restart, an upgrade, a
    /// restore) is down, and a node that crashed at a journal record.
    pub restart: Duration,
    /// A restart the node asks for may happen in-process (the engines
    /// start again, the connections stay), as the example node does, by a
    /// coin toss; otherwise it is always a power cycle.
    pub soft_restarts: bool,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            service_start: Duration::from_millis(50),
            service_stop: Duration::from_millis(20),
            service_ready: [Vec::new(), Vec::new()],
            node_ready: [true; NODES],
            follow: Duration::from_millis(200),
            follow_spread: Duration::from_millis(2800),
            nudge: Duration::from_millis(400),
            reboot: Duration::from_secs(3),
            restart: Duration::from_secs(2),
            soft_restarts: true,
        }
    }
}

/// The phones of the pair simulation: follow, nudge and reboot in turn.
pub fn sim_phones() -> Vec<PhoneSpec> {
    (0..6)
        .map(|p| {
            PhoneSpec::new(match p % 3 {
                0 => PhoneMethod::FollowsAddress,
                1 => PhoneMethod::Nudge,
                _ => PhoneMethod::Reboot,
            })
        })
        .collect()
}

/// The services of the pair simulation: a database, then SIP, then
/// voicemail on both.
pub fn sim_services() -> Vec<ServiceSpec> {
    let sid = failover_orchestrator::ServiceId;
    vec![
        ServiceSpec::new("db"),
        ServiceSpec::new("sip").after(&[sid(0)]),
        ServiceSpec::new("voicemail").after(&[sid(0), sid(1)]),
    ]
}

/// The product's timeouts scaled down to the simulated minutes, so that a
/// procedure cut short by a fault ends in a schedule's quiet tail.
pub fn sim_timeouts() -> Timeouts {
    Timeouts {
        command: Duration::from_secs(5),
        sync: Duration::from_secs(30),
        peer_request: Duration::from_secs(10),
        upgrade: Duration::from_secs(60),
        await_peer: Duration::from_secs(60),
        node_ready: Duration::from_secs(30),
    }
}

/// The operator's request for a Passive Backup, without expiry.
pub fn passive() -> OperatorRequest {
    OperatorRequest::SetBackupMode {
        mode: BackupMode::Passive,
        expires_at: None,
    }
}

/// The VRRP LAN between the two nodes.
#[derive(Debug, Clone, Copy)]
pub struct Lan {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss_ppm: u64,
}

/// What the world is built from.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub interval_cs: u16,
    pub priorities: [u8; NODES],
    pub sync_interval: Duration,
    pub lan: Lan,
    pub link_delay: Duration,
    /// The pre-shared key each node's peer link holds.
    pub link_secrets: [&'static [u8]; NODES],
    /// The drivers give their sync worker a change hint with every write
    /// (the kernel's notifications), as the node does with `watch`.
    pub watch: bool,
    /// With `watch`: the chance, per write, that its hint is lost and the
    /// watcher reports an overflow instead.
    pub hint_overflow_ppm: u64,
    /// With `watch`: the chance, per write, that the watcher fails for
    /// good (a directory it could not watch): that write and every later
    /// one on the node has no hint until the node boots again.
    pub hint_lost_ppm: u64,
    /// Each node's identity (its firmware changes with an upgrade).
    pub identities: [Identity; NODES],
    pub phones: Vec<PhoneSpec>,
    pub services: Vec<ServiceSpec>,
    pub timeouts: Timeouts,
    pub model: Model,
}

impl WorldConfig {
    pub fn new(seed: u64) -> WorldConfig {
        WorldConfig {
            seed,
            interval_cs: 100,
            priorities: [150, 100],
            sync_interval: Duration::from_secs(20),
            lan: Lan {
                delay: Duration::from_micros(300),
                jitter: Duration::from_micros(200),
                loss_ppm: 0,
            },
            link_delay: Duration::from_micros(500),
            link_secrets: [b"pair-sim"; NODES],
            watch: false,
            hint_overflow_ppm: 0,
            hint_lost_ppm: 0,
            identities: [identity(0, "5.1.30"), identity(1, "5.1.30")],
            phones: sim_phones(),
            services: sim_services(),
            timeouts: sim_timeouts(),
            model: Model::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Ev {
    Vrrp {
        to: usize,
        bytes: Vec<u8>,
        src: IpAddr,
        dst: IpAddr,
    },
    Connect {
        from: usize,
        conn: ConnId,
        boot: u64,
    },
    Dialed {
        node: usize,
        conn: ConnId,
        boot: u64,
    },
    DialFailed {
        node: usize,
        conn: ConnId,
        boot: u64,
    },
    Bytes {
        wire: usize,
        to_end: usize,
        bytes: Vec<u8>,
    },
    Closed {
        node: usize,
        conn: ConnId,
        boot: u64,
    },
    Result {
        node: usize,
        boot: u64,
        id: CommandId,
        outcome: CommandOutcome,
    },
    Registered {
        node: usize,
        boot: u64,
        phone: PhoneId,
    },
    Crash(usize),
    Boot(usize),
    /// A reboot the node asked for (restart, upgrade): down now, up after.
    /// `soft`: it may restart in-process, as the example node does (not
    /// after an upgrade: the new image needs a real boot).
    Restart {
        node: usize,
        boot: u64,
        soft: bool,
    },
    Operator {
        node: usize,
        request: OperatorRequest,
        tag: &'static str,
    },
    /// An operator request on whichever node is Master at the time.
    OperatorOnMaster {
        request: OperatorRequest,
        tag: &'static str,
    },
    WriteOnMaster {
        path: String,
    },
    Partition {
        lan: bool,
        link: bool,
    },
    Heal,
    /// The peer link alone heals (the VRRP LAN stays as it is).
    HealLink,
    Reset,
    /// The operator confirms the deletions node `i`'s guard held back.
    Confirm(usize),
    SetLan(Lan),
    /// The peer link's one-way delay from now on (bytes stay in order).
    SetLinkDelay(Duration),
}

#[derive(Debug)]
struct Keyed {
    at: Duration,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Keyed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Keyed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One TCP connection: two ends, bytes delivered in order per direction.
#[derive(Debug)]
struct Wire {
    ends: [(usize, ConnId, u64); 2],
    open: bool,
    /// An engine closed it: nothing more is sent, what was sent before
    /// still arrives, then both ends see the close (a FIN after the data).
    shut: bool,
    last: [Duration; 2],
    stalled: Vec<(usize, Vec<u8>)>,
}

/// A node: the engine, its sync worker and tree, what survives a crash,
/// and the driver model.
pub struct Node {
    pub up: bool,
    pub boot: u64,
    pub pair: Option<Pair>,
    pub worker: Option<SyncWorker>,
    pub store: MemStore,
    pub persisted: PersistentState,
    pub firmware: String,
    pub holds_vip: bool,
    /// When each service was started on this boot (`None`: not running).
    pub services: Vec<Option<Duration>>,
    pub deadline: Option<Instant>,
    pub worker_deadline: Option<Instant>,
    pub booted_at: Option<Duration>,
    /// The watcher failed for good on this boot: no more hints.
    pub watch_failed: bool,
    /// Whether the node was a Passive Backup as the driver last saw it:
    /// the router's mode when the engine last waited, then each mode
    /// change in the order the engine reports it. A takeover takes a term,
    /// which makes the mode Active inside the same step, before the driver
    /// sees the election's event: the router's mode at that event would
    /// always read Active.
    pub passive: bool,
    /// Down for a restart the node asked for (its procedure's own step),
    /// until it boots again.
    pub restarting: bool,
    /// Power off right after this many further journal records (a test of
    /// resuming a procedure), then boot after [`Model::restart`].
    pub crash_after_records: Option<usize>,
    /// The phones that follow the address were told the node serves again
    /// (once per time it holds the address).
    follow_scheduled: bool,
    /// What the tests observe, across crashes: every command issued, every
    /// event of the orchestrator and every journal record, with when; when
    /// each phone first registered here; when the election made this node
    /// Master and when it stopped being one (a crash as Master included).
    pub issued: Vec<(Duration, Issued)>,
    pub events: Vec<(Duration, Event)>,
    pub journal: Vec<JournalRecord>,
    pub registered: Vec<Option<Duration>>,
    pub became_master: Vec<Duration>,
    pub left_master: Vec<Duration>,
}

/// Something the checks found.
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// A procedure an operator started, and how it ended.
#[derive(Debug, Clone)]
pub struct Started {
    pub node: usize,
    pub id: u64,
    pub tag: &'static str,
    pub at: Duration,
    pub boot: u64,
    pub outcome: Option<ProcedureOutcome>,
    /// When it ended.
    pub ended: Option<Duration>,
    /// Both nodes up and no fault in effect when it was accepted.
    pub clean_start: bool,
}

pub struct World {
    pub cfg: WorldConfig,
    pub base: Instant,
    pub now: Duration,
    pub rng: Rng,
    pub nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<Keyed>>,
    seq: u64,
    wires: Vec<Wire>,
    wire_of: HashMap<(usize, u64, ConnId), usize>,
    pub lan: Lan,
    pub lan_cut: bool,
    pub link_cut: bool,
    /// Until when two address holders are allowed (a partition and one
    /// Master_Down_Interval after it heals).
    pub dual_ok_until: Duration,
    /// Since when two nodes hold the address.
    pub dual_since: Option<Duration>,
    was_partitioned: bool,
    pub violations: Vec<Violation>,
    pub log: Vec<String>,
    pub started: Vec<Started>,
    pub refused: Vec<(Duration, &'static str, String)>,
    pub writes: u64,
    pub steps: u64,
    /// VRRP messages each node sent.
    pub vrrp_sent: [u64; NODES],
    /// Takeover plans each node started.
    pub takeovers: [u64; NODES],
    /// Rounds the mass-deletion guard refused on each node.
    pub refused_rounds: [u64; NODES],
    /// Connections that never became the link: when, on which node, why.
    pub link_failures: Vec<(Duration, usize, LinkFailure)>,
    /// Every application write: when, on which node, where, what.
    pub write_log: Vec<(Duration, usize, String, Vec<u8>)>,
    /// Steps at which a source's reported window was checked, those where
    /// it was below the truth, and the hints lost to an overflow.
    pub window_checks: u64,
    pub window_violations: u64,
    pub hint_overflows: u64,
    /// Watchers that failed for good (the node went on without hints).
    pub watch_failures: u64,
    /// When a fault, a restart or an operator's request came: a procedure
    /// with none of them while it ran (and none in effect when it
    /// started) has nothing to abort for.
    pub disruptions: Vec<Duration>,
    /// Swaps that ended with nothing disturbing them (each must have
    /// completed).
    pub undisturbed_swaps: u64,
    /// When each node last gave a reason to abort: a step failed under
    /// its abort policy, or its role went to a newer epoch.
    abort_causes: [Option<Duration>; NODES],
    /// Each node's tree as it committed each generation as a replica
    /// (a digest of its files, folders and links with their content and
    /// metadata), to compare with what it holds at that generation later.
    /// A generation is its number and snapshot time: after a takeover the
    /// other node's rounds may give a number again to another tree.
    gen_views: [BTreeMap<(u64, Option<SystemTime>), u64>; NODES],
    /// Each node's engine's count of commands under a stale epoch, as last
    /// seen (a rise is a violation; a boot starts it again at 0).
    stale_seen: [u64; NODES],
    /// Steps at which a replica's tree was compared with the generation it
    /// committed, and reopenings after a crash compared the same way.
    pub generation_checks: u64,
    /// Takeovers whose reported data-loss window was checked, and those of
    /// them where the new Master lacked some write.
    pub loss_checks: u64,
    pub loss_lacking: u64,
    pub trace: bool,
    /// An operator who confirms, a second after, every round the
    /// mass-deletion guard refuses (after looking at the quarantine).
    pub auto_confirm: bool,
}

fn identity(i: usize, firmware: &str) -> Identity {
    Identity {
        node_id: format!("pbx-{i}"),
        firmware: firmware.into(),
        language_pack: "en".into(),
        licences: vec!["sip-16".into()],
        protocol: ProtocolVersion::CURRENT,
    }
}

fn strip(view: BTreeMap<String, View>) -> BTreeMap<String, View> {
    view.into_iter()
        .filter(|(k, _)| !k.starts_with(".sync-delta") && !k.contains("quarantine"))
        .collect()
}

impl World {
    pub fn new(cfg: WorldConfig) -> World {
        let nodes = (0..NODES)
            .map(|i| {
                let mut store = MemStore::new();
                if i == 0 {
                    store.put_dir("etc", 0o755);
                    store.put_file("etc/pbx.conf", b"trunk=1\n", 0o644, 1);
                    store.put_dir("voicemail", 0o755);
                    store.sync_all();
                }
                Node {
                    up: false,
                    boot: 0,
                    pair: None,
                    worker: None,
                    store,
                    persisted: PersistentState::default(),
                    firmware: cfg.identities[i].firmware.clone(),
                    holds_vip: false,
                    services: vec![None; cfg.services.len()],
                    deadline: None,
                    worker_deadline: None,
                    booted_at: None,
                    watch_failed: false,
                    passive: false,
                    restarting: false,
                    crash_after_records: None,
                    follow_scheduled: false,
                    issued: Vec::new(),
                    events: Vec::new(),
                    journal: Vec::new(),
                    registered: vec![None; cfg.phones.len()],
                    became_master: Vec::new(),
                    left_master: Vec::new(),
                }
            })
            .collect();
        World {
            rng: Rng(cfg.seed ^ 0x5EED),
            lan: cfg.lan,
            cfg,
            base: Instant::now(),
            now: Duration::ZERO,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            wires: Vec::new(),
            wire_of: HashMap::new(),
            lan_cut: false,
            link_cut: false,
            dual_ok_until: Duration::ZERO,
            dual_since: None,
            was_partitioned: false,
            violations: Vec::new(),
            log: Vec::new(),
            started: Vec::new(),
            refused: Vec::new(),
            writes: 0,
            steps: 0,
            vrrp_sent: [0; NODES],
            takeovers: [0; NODES],
            refused_rounds: [0; NODES],
            link_failures: Vec::new(),
            write_log: Vec::new(),
            window_checks: 0,
            window_violations: 0,
            hint_overflows: 0,
            watch_failures: 0,
            disruptions: Vec::new(),
            undisturbed_swaps: 0,
            abort_causes: [None; NODES],
            gen_views: [BTreeMap::new(), BTreeMap::new()],
            stale_seen: [0; NODES],
            generation_checks: 0,
            loss_checks: 0,
            loss_lacking: 0,
            trace: false,
            auto_confirm: false,
        }
    }

    pub fn at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Keyed {
            at,
            seq: self.seq,
            ev,
        }));
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    pub fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) + self.now
    }

    pub fn mdi(&self) -> Duration {
        // 3 × interval + skew (at most one interval).
        Duration::from_millis(u64::from(self.cfg.interval_cs) * 10 * 4)
    }

    fn note(&mut self, s: String) {
        if self.trace {
            eprintln!("{:>10.3} {s}", self.now.as_secs_f64());
        }
        if self.log.len() < 4000 {
            self.log
                .push(format!("{:>10.3} {s}", self.now.as_secs_f64()));
        }
    }

    fn violation(&mut self, what: String) {
        self.note(format!("VIOLATION {what}"));
        self.violations.push(Violation { at: self.now, what });
    }

    pub fn pair_config(&self, i: usize) -> PairConfig {
        // The appliance profile (preempt off, accept mode on) on VRRPv3, so
        // that intervals below a second can be tried.
        let vrrp =
            vrrp_fsm::Config::builder(vrrp_proto::Version::V3, Vrid::new(7).unwrap(), ip(i).into())
                .preempt(vrrp_fsm::Preempt::Disabled)
                .accept_mode(vrrp_fsm::AcceptMode::Enabled)
                .priority(Priority(self.cfg.priorities[i]))
                .interval(vrrp_proto::Interval::from_centis(self.cfg.interval_cs).unwrap())
                .address(VIP)
                .build()
                .unwrap();
        let identity = Identity {
            firmware: self.nodes[i].firmware.clone(),
            ..self.cfg.identities[i].clone()
        };
        let mut orchestrator = Config::builder(identity)
            .phones(self.cfg.phones.clone())
            .timeouts(self.cfg.timeouts);
        for s in &self.cfg.services {
            orchestrator = orchestrator.service(s.clone());
        }
        let orchestrator = orchestrator.build().unwrap();
        let key = PreSharedKey::new(*blake3::hash(self.cfg.link_secrets[i]).as_bytes()).unwrap();
        let link = LinkConfig::new(key, i == 0);
        PairConfig {
            vrrp,
            orchestrator,
            link,
            vrrp_datagrams: false,
        }
    }

    fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            interval: self.cfg.sync_interval,
            watch: self.cfg.watch,
            batch: Duration::from_millis(100),
            ..SyncConfig::default()
        }
    }

    /// The watcher's side of a write on node `i`: a hint for its path, or,
    /// by chance, an overflow (the hint lost), or the watcher failing for
    /// good (no hint for this write or any later one on this boot), at the
    /// same instant.
    fn hint(&mut self, i: usize, path: &str) {
        if !self.cfg.watch || !self.nodes[i].up || self.nodes[i].watch_failed {
            return;
        }
        let (t, wall) = (self.instant(), self.wall());
        if self.rng.chance(self.cfg.hint_lost_ppm) {
            self.watch_failures += 1;
            self.nodes[i].watch_failed = true;
            self.note(format!("node {i}: the watcher fails for good"));
            if let Some(w) = self.nodes[i].worker.as_mut() {
                w.handle_hints_lost(t);
            }
            self.drive(i);
            return;
        }
        let lost = self.rng.chance(self.cfg.hint_overflow_ppm);
        if lost {
            self.hint_overflows += 1;
        }
        if let Some(w) = self.nodes[i].worker.as_mut() {
            if lost {
                w.handle_hint_overflow(t, wall);
            } else {
                w.handle_hints(t, wall, [path]);
            }
        }
        self.drive(i);
    }

    fn power_on(&mut self, i: usize) {
        if self.nodes[i].up {
            return;
        }
        let now = self.instant();
        let wall = self.wall();
        let cfg = self.pair_config(i);
        let sync = self.sync_config();
        let n = &mut self.nodes[i];
        n.store.reboot();
        n.booted_at = Some(self.now);
        n.watch_failed = false;
        n.restarting = false;
        self.stale_seen[i] = 0;
        n.boot += 1;
        n.up = true;
        n.holds_vip = false;
        n.services.fill(None);
        n.follow_scheduled = false;
        n.worker = Some(SyncWorker::new(sync));
        n.pair = Some(Pair::new(cfg, n.persisted.clone(), now, wall));
        self.note(format!("node {i} boots (boot {})", self.nodes[i].boot));
        // Two units that start within one Master_Down_Interval of each
        // other have heard nobody: like a healed partition, the election
        // needs up to one more interval to settle.
        let mdi = self.mdi();
        let other = &self.nodes[1 - i];
        if other.up && other.booted_at.is_some_and(|b| self.now <= b + mdi) {
            self.dual_ok_until = self.dual_ok_until.max(self.now + mdi * 2);
        }
        // Connections from before the crash are reset by the peer's stack.
        let stale: Vec<usize> = (0..self.wires.len())
            .filter(|w| self.wires[*w].open && self.wires[*w].ends.iter().any(|e| e.0 == i))
            .collect();
        for w in stale {
            self.reset_wire(w);
        }
        self.drive(i);
    }

    fn power_off(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if !n.up {
            return;
        }
        if n.pair
            .as_ref()
            .and_then(Pair::router)
            .is_some_and(|r| r.state() == vrrp_fsm::State::Master)
        {
            n.left_master.push(now);
        }
        n.up = false;
        n.pair = None;
        n.worker = None;
        n.holds_vip = false;
        n.services.fill(None);
        n.follow_scheduled = false;
        n.deadline = None;
        n.worker_deadline = None;
        // Power off: what was not synced is lost at the next boot.
        self.note(format!("node {i} crashes"));
    }

    fn reset_wire(&mut self, w: usize) {
        if !self.wires[w].open {
            return;
        }
        self.wires[w].open = false;
        if self.wires[w].shut {
            // Its closes are on their way already; bytes in flight are lost.
            return;
        }
        let delay = self.cfg.link_delay;
        for (node, conn, boot) in self.wires[w].ends {
            self.at(self.now + delay, Ev::Closed { node, conn, boot });
        }
    }

    /// Runs until `until`, checking the invariants after every step.
    pub fn run_until(&mut self, until: Duration) {
        self.run_until_or(until, |_| false);
    }

    /// Runs for `d` from now.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `until`, or until `stop` holds (checked before every
    /// step); whether it stopped early.
    pub fn run_until_or(&mut self, until: Duration, mut stop: impl FnMut(&World) -> bool) -> bool {
        let mut same_instant = 0u32;
        let mut last = self.now;
        loop {
            if stop(self) {
                return true;
            }
            // An engine whose deadline does not move on would spin here.
            if self.now == last {
                same_instant += 1;
                if same_instant > 100_000 {
                    self.violation("an engine asks for the same instant forever".into());
                    self.now = until;
                    return false;
                }
            } else {
                same_instant = 0;
                last = self.now;
            }
            let next_ev = self.queue.peek().map(|k| k.0.at);
            let next_deadline = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .flat_map(|n| [n.deadline, n.worker_deadline])
                .flatten()
                .min()
                .map(|t| t.saturating_duration_since(self.base));
            let next = [next_ev, next_deadline].into_iter().flatten().min();
            let Some(next) = next else {
                self.now = until;
                return false;
            };
            if next > until {
                self.now = until;
                return false;
            }
            self.now = self.now.max(next);
            self.step();
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        while self.queue.peek().is_some_and(|k| k.0.at <= now) {
            let Some(Reverse(k)) = self.queue.pop() else {
                break;
            };
            self.apply(k.ev);
        }
        let t = self.instant();
        for i in 0..NODES {
            let n = &mut self.nodes[i];
            if !n.up {
                continue;
            }
            let mut touched = false;
            if n.worker_deadline.is_some_and(|d| d <= t) {
                if let Some(w) = n.worker.as_mut() {
                    w.handle_timeout(t, &mut n.store);
                }
                touched = true;
            }
            if n.deadline.is_some_and(|d| d <= t) {
                if let Some(p) = n.pair.as_mut() {
                    p.handle_timeout(t);
                }
                touched = true;
            }
            if touched {
                self.drive(i);
            }
        }
        self.check();
    }

    /// Both nodes up, both networks whole and without loss, redundancy on
    /// both.
    fn clean(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.up && n.pair.is_some() && n.persisted.redundancy == Redundancy::Enabled)
            && !self.lan_cut
            && !self.link_cut
            && self.lan.loss_ppm == 0
    }

    fn apply(&mut self, ev: Ev) {
        let t = self.instant();
        // The faults and requests of the schedule; a restart the node asked
        // for, and its boot, are its procedure's own steps.
        let own_boot = matches!(ev, Ev::Boot(i) if self.nodes[i].restarting);
        if !own_boot
            && matches!(
                ev,
                Ev::Crash(_)
                    | Ev::Boot(_)
                    | Ev::Partition { .. }
                    | Ev::Heal
                    | Ev::HealLink
                    | Ev::Reset
                    | Ev::SetLan(_)
                    | Ev::SetLinkDelay(_)
                    | Ev::Operator { .. }
                    | Ev::OperatorOnMaster { .. }
                    | Ev::Confirm(_)
            )
        {
            self.disruptions.push(self.now);
        }
        match ev {
            Ev::Vrrp {
                to,
                bytes,
                src,
                dst,
            } => {
                if let Some(p) = self.nodes[to].pair.as_mut() {
                    let _ = p.handle_vrrp_message(t, &bytes, RecvMeta { src, dst, ttl: TTL });
                    self.drive(to);
                }
            }
            Ev::Connect { from, conn, boot } => {
                let to = 1 - from;
                let delay = self.cfg.link_delay;
                if self.link_cut || !self.nodes[to].up {
                    // No answer: the dial times out (a partition) or is
                    // refused (nobody listening).
                    let after = if self.link_cut {
                        Duration::from_secs(1)
                    } else {
                        delay
                    };
                    self.at(
                        self.now + after,
                        Ev::DialFailed {
                            node: from,
                            conn,
                            boot,
                        },
                    );
                    return;
                }
                let nonce = self.rng.nonce();
                let accepted = self.nodes[to]
                    .pair
                    .as_mut()
                    .and_then(|p| p.handle_accepted(t, nonce, [10, 0, 0, 1 + from as u8].into()));
                let to_boot = self.nodes[to].boot;
                self.drive(to);
                match accepted {
                    Some(pc) => {
                        let w = self.wires.len();
                        self.wires.push(Wire {
                            ends: [(from, conn, boot), (to, pc, to_boot)],
                            open: true,
                            shut: false,
                            last: [Duration::ZERO; 2],
                            stalled: Vec::new(),
                        });
                        self.wire_of.insert((from, boot, conn), w);
                        self.wire_of.insert((to, to_boot, pc), w);
                        self.at(
                            self.now + delay,
                            Ev::Dialed {
                                node: from,
                                conn,
                                boot,
                            },
                        );
                    }
                    None => self.at(
                        self.now + delay,
                        Ev::DialFailed {
                            node: from,
                            conn,
                            boot,
                        },
                    ),
                }
            }
            Ev::Dialed { node, conn, boot } => {
                if self.nodes[node].boot != boot || !self.nodes[node].up {
                    return;
                }
                let nonce = self.rng.nonce();
                let open = self
                    .wire_of
                    .get(&(node, boot, conn))
                    .is_some_and(|w| self.wires[*w].open);
                if let Some(p) = self.nodes[node].pair.as_mut() {
                    if open {
                        p.handle_dialed(t, conn, nonce);
                    } else {
                        p.handle_dial_failed(t, conn);
                    }
                }
                self.drive(node);
            }
            Ev::DialFailed { node, conn, boot } => {
                if self.nodes[node].boot == boot {
                    if let Some(p) = self.nodes[node].pair.as_mut() {
                        p.handle_dial_failed(t, conn);
                    }
                    self.drive(node);
                }
            }
            Ev::Bytes {
                wire,
                to_end,
                bytes,
            } => {
                let (node, conn, boot) = self.wires[wire].ends[to_end];
                if !self.wires[wire].open || self.nodes[node].boot != boot {
                    return;
                }
                if let Some(p) = self.nodes[node].pair.as_mut() {
                    p.handle_link_bytes(t, conn, &bytes);
                    self.drive(node);
                }
            }
            Ev::Closed { node, conn, boot } => {
                if self.nodes[node].boot == boot {
                    if let Some(p) = self.nodes[node].pair.as_mut() {
                        p.handle_link_closed(t, conn);
                    }
                    self.drive(node);
                }
            }
            Ev::Result {
                node,
                boot,
                id,
                outcome,
            } => {
                if self.nodes[node].boot == boot {
                    if let Some(p) = self.nodes[node].pair.as_mut() {
                        p.handle_command_result(t, id, outcome);
                    }
                    self.drive(node);
                }
            }
            Ev::Registered { node, boot, phone } => {
                if self.nodes[node].boot == boot && self.nodes[node].holds_vip {
                    let now = self.now;
                    if let Some(r) = self.nodes[node].registered.get_mut(phone.0 as usize) {
                        r.get_or_insert(now);
                    }
                    if let Some(p) = self.nodes[node].pair.as_mut() {
                        p.handle_phone_registered(t, phone);
                    }
                    self.drive(node);
                }
            }
            Ev::Crash(i) => self.power_off(i),
            Ev::Boot(i) => self.power_on(i),
            Ev::Restart { node, boot, soft } => {
                if self.nodes[node].boot == boot && self.nodes[node].up {
                    if soft && self.cfg.model.soft_restarts && self.rng.below(2) == 0 {
                        // A soft restart, as the example node does it: the
                        // engines start again from the persisted state, the
                        // process, its tree and its connections stay.
                        self.note(format!("node {node} restarts (soft)"));
                        let wall = self.wall();
                        if let Some(p) = self.nodes[node].pair.as_mut() {
                            p.soft_restart(t, wall);
                        }
                        self.nodes[node].booted_at = Some(self.now);
                        self.drive(node);
                    } else {
                        self.note(format!("node {node} restarts"));
                        self.power_off(node);
                        self.nodes[node].restarting = true;
                        self.at(self.now + self.cfg.model.restart, Ev::Boot(node));
                    }
                }
            }
            Ev::Operator { node, request, tag } => {
                self.operator(node, request, tag);
            }
            Ev::OperatorOnMaster { request, tag } => {
                let m = (0..NODES).find(|i| {
                    self.nodes[*i].pair.as_ref().is_some_and(|p| {
                        p.orchestrator().role() == failover_orchestrator::Role::Master
                    })
                });
                match m {
                    Some(m) => {
                        self.operator(m, request, tag);
                    }
                    None => self.refused.push((self.now, tag, "no Master".into())),
                }
            }
            Ev::WriteOnMaster { path } => {
                let m = (0..NODES).find(|i| self.nodes[*i].holds_vip);
                if let Some(m) = m {
                    self.writes += 1;
                    let n = self.writes;
                    let mtime = i64::try_from(self.now.as_nanos()).unwrap_or(i64::MAX);
                    let node = &mut self.nodes[m];
                    let data = format!("message {n}").into_bytes();
                    node.store.put_file(&path, &data, 0o640, mtime);
                    node.store.sync_all();
                    self.write_log.push((self.now, m, path.clone(), data));
                    self.note(format!("write {path} on node {m}"));
                    self.hint(m, &path);
                }
            }
            Ev::Partition { lan, link } => {
                self.lan_cut |= lan;
                self.link_cut |= link;
                // Bytes in flight on a cut link stall until it heals.
                self.note(format!("partition lan={lan} link={link}"));
            }
            Ev::Heal => {
                let was_cut = self.lan_cut;
                self.lan_cut = false;
                if was_cut {
                    let until = self.now + self.mdi();
                    self.dual_ok_until = self.dual_ok_until.max(until);
                }
                self.note("heal".into());
                self.mend_link();
            }
            Ev::HealLink => {
                self.note("heal the peer link".into());
                self.mend_link();
            }
            Ev::Reset => {
                let open: Vec<usize> = (0..self.wires.len())
                    .filter(|w| self.wires[*w].open)
                    .collect();
                self.note(format!("reset {} connection(s)", open.len()));
                for w in open {
                    self.reset_wire(w);
                }
            }
            Ev::SetLan(lan) => self.lan = lan,
            Ev::SetLinkDelay(d) => {
                self.note(format!("peer link delay {d:?}"));
                self.cfg.link_delay = d;
            }
            Ev::Confirm(i) => {
                self.confirm_deletions(i);
            }
        }
    }

    /// Operator request `request` on node `i` now, noted, counted and
    /// driven; `None` when the node is down (refused as "node down").
    fn operator(
        &mut self,
        i: usize,
        request: OperatorRequest,
        tag: &'static str,
    ) -> Option<Result<u64, PreflightError>> {
        let t = self.instant();
        let boot = self.nodes[i].boot;
        let Some(p) = self.nodes[i].pair.as_mut() else {
            self.refused.push((self.now, tag, "node down".into()));
            return None;
        };
        let r = p.handle_operator(t, request);
        match &r {
            Ok(id) => {
                self.note(format!("operator {tag} on node {i}: procedure {id}"));
                let clean_start = self.clean();
                self.started.push(Started {
                    node: i,
                    id: *id,
                    tag,
                    at: self.now,
                    boot,
                    outcome: None,
                    ended: None,
                    clean_start,
                });
            }
            Err(e) => {
                self.note(format!("operator {tag} on node {i}: refused ({e})"));
                self.refused.push((self.now, tag, e.to_string()));
            }
        }
        self.drive(i);
        Some(r)
    }

    /// The peer link is whole again: bytes that stalled on it go on.
    fn mend_link(&mut self) {
        self.link_cut = false;
        for w in 0..self.wires.len() {
            let stalled = std::mem::take(&mut self.wires[w].stalled);
            for (from_end, bytes) in stalled {
                self.send_on(w, from_end, bytes);
            }
        }
    }

    /// An engine closed its end of wire `w` (see [`Wire::shut`]).
    fn close_wire(&mut self, w: usize) {
        if !self.wires[w].open || self.wires[w].shut {
            return;
        }
        if self.link_cut {
            self.reset_wire(w);
            return;
        }
        self.wires[w].shut = true;
        let delay = self.cfg.link_delay;
        for (end, (node, conn, boot)) in self.wires[w].ends.into_iter().enumerate() {
            let at = (self.now + delay).max(self.wires[w].last[end]);
            self.at(at, Ev::Closed { node, conn, boot });
        }
    }

    fn send_on(&mut self, w: usize, from_end: usize, bytes: Vec<u8>) {
        if !self.wires[w].open || self.wires[w].shut {
            return;
        }
        if self.link_cut {
            self.wires[w].stalled.push((from_end, bytes));
            return;
        }
        let to_end = 1 - from_end;
        let at = (self.now + self.cfg.link_delay).max(self.wires[w].last[to_end]);
        self.wires[w].last[to_end] = at;
        self.at(
            at,
            Ev::Bytes {
                wire: w,
                to_end,
                bytes,
            },
        );
    }

    /// Carries out everything node `i`'s engine asks, in order.
    fn drive(&mut self, i: usize) {
        let t = self.instant();
        let wall = self.wall();
        loop {
            let n = &mut self.nodes[i];
            let (Some(pair), Some(worker)) = (n.pair.as_mut(), n.worker.as_mut()) else {
                return;
            };
            // The sync worker's messages and reports go to the engine first.
            let mut fed = false;
            while let Some(m) = worker.poll_transmit(t, &mut n.store) {
                pair.handle_sync_message(t, &m);
                worker.recycle(m.message);
                fed = true;
            }
            while let Some(r) = worker.poll_report() {
                pair.handle_sync_report(t, r);
                fed = true;
            }
            let out = pair.poll_output();
            match out {
                Output::Wait(d) => {
                    n.deadline = d;
                    n.worker_deadline = worker.poll_timeout();
                    n.passive = pair
                        .router()
                        .is_some_and(|r| r.backup_mode() == vrrp_fsm::BackupMode::Passive);
                    if !fed {
                        return;
                    }
                }
                Output::Persist(rec) => {
                    n.persisted = rec.state.clone();
                    n.journal.push(rec);
                    match n.crash_after_records.as_mut() {
                        Some(0) => {
                            // Down right after this record: nothing after it
                            // is carried out.
                            n.crash_after_records = None;
                            self.note(format!("node {i} loses power after a journal record"));
                            self.power_off(i);
                            self.at(self.now + self.cfg.model.restart, Ev::Boot(i));
                            return;
                        }
                        Some(k) => *k -= 1,
                        None => {}
                    }
                }
                Output::Vrrp(p) => self.vrrp_out(i, p.bytes.into_vec(), p.src, p.dst),
                Output::Announce => {}
                Output::Command(c) => self.command(i, c),
                Output::Dial(conn) => {
                    let boot = n.boot;
                    self.at(
                        self.now + self.cfg.link_delay,
                        Ev::Connect {
                            from: i,
                            conn,
                            boot,
                        },
                    );
                }
                Output::Send { conn, bytes } => {
                    let boot = n.boot;
                    if let Some(w) = self.wire_of.get(&(i, boot, conn)).copied() {
                        let end = usize::from(
                            self.wires[w].ends[1].0 == i && self.wires[w].ends[1].1 == conn,
                        );
                        self.send_on(w, end, bytes);
                    }
                }
                Output::Close { conn, .. } => {
                    let boot = n.boot;
                    match self.wire_of.get(&(i, boot, conn)).copied() {
                        Some(w) => self.close_wire(w),
                        None => self.at(
                            self.now,
                            Ev::Closed {
                                node: i,
                                conn,
                                boot,
                            },
                        ),
                    }
                }
                Output::Sync(order) => worker.handle_order(t, wall, order, &mut n.store),
                // This world's drivers hand over no images.
                Output::Transfer(_) => {}
                Output::Event(e) => self.event(i, e),
            }
        }
    }

    fn vrrp_out(&mut self, from: usize, bytes: Vec<u8>, src: IpAddr, dst: IpAddr) {
        self.vrrp_sent[from] += 1;
        let to = 1 - from;
        if self.lan_cut || self.rng.chance(self.lan.loss_ppm) {
            return;
        }
        let jitter = self.lan.jitter.as_micros() as u64;
        let extra = Duration::from_micros(self.rng.below(jitter + 1));
        self.at(
            self.now + self.lan.delay + extra,
            Ev::Vrrp {
                to,
                bytes,
                src,
                dst,
            },
        );
    }

    fn command(&mut self, i: usize, c: Issued) {
        let boot = self.nodes[i].boot;
        // No command under an epoch older than what this node persisted.
        let floor = self.nodes[i].persisted.highest_epoch;
        if c.epoch < floor {
            self.violation(format!(
                "node {i} issued {:?} under {:?}, below its persisted {:?}",
                c.command, c.epoch, floor
            ));
        }
        self.nodes[i].issued.push((self.now, c.clone()));
        let ms = Duration::from_millis;
        let result = |w: &mut World, after: Duration, outcome: CommandOutcome| {
            w.at(
                w.now + after,
                Ev::Result {
                    node: i,
                    boot,
                    id: c.id,
                    outcome,
                },
            );
        };
        let registers = |w: &mut World, after: Duration, phone: PhoneId| {
            w.at(
                w.now + after,
                Ev::Registered {
                    node: i,
                    boot,
                    phone,
                },
            );
        };
        let done_or_not = |ok: bool| {
            if ok {
                CommandOutcome::Done
            } else {
                CommandOutcome::NotReady
            }
        };
        let model = &self.cfg.model;
        let (start, stop, nudge, reboot) = (
            model.service_start,
            model.service_stop,
            model.nudge,
            model.reboot,
        );
        match &c.command {
            Command::ClaimAddress => {
                self.nodes[i].holds_vip = true;
                result(self, ms(1), CommandOutcome::Done);
            }
            Command::ReleaseAddress => {
                self.nodes[i].holds_vip = false;
                self.nodes[i].follow_scheduled = false;
                result(self, ms(1), CommandOutcome::Done);
            }
            Command::StartService(s) => {
                let now = self.now;
                if let Some(x) = self.nodes[i].services.get_mut(usize::from(s.0)) {
                    *x = Some(now);
                }
                result(self, start, CommandOutcome::Done);
            }
            Command::StopService(s) => {
                if let Some(x) = self.nodes[i].services.get_mut(usize::from(s.0)) {
                    *x = None;
                }
                result(self, stop, CommandOutcome::Done);
            }
            Command::CheckService(s) => {
                let idx = usize::from(s.0);
                let after = self.cfg.model.service_ready[i]
                    .get(idx)
                    .copied()
                    .unwrap_or(Some(Duration::ZERO));
                let started = self.nodes[i].services.get(idx).copied().flatten();
                let ready = matches!((started, after), (Some(t), Some(d)) if self.now >= t + d);
                result(self, ms(5), done_or_not(ready));
                // The registrar and the address are back: phones that
                // follow the address register again on their own timers.
                let n = &self.nodes[i];
                if ready && idx + 1 == n.services.len() && n.holds_vip && !n.follow_scheduled {
                    self.nodes[i].follow_scheduled = true;
                    let (base, spread) = (self.cfg.model.follow, self.cfg.model.follow_spread);
                    let follow: Vec<usize> = (0..self.cfg.phones.len())
                        .filter(|p| self.cfg.phones[*p].method == PhoneMethod::FollowsAddress)
                        .collect();
                    for p in follow {
                        let own = ms(p as u64 * 37 % spread.as_millis().max(1) as u64);
                        registers(self, base + own, PhoneId(p as u32));
                    }
                }
            }
            Command::CheckNode => {
                let ready = self.cfg.model.node_ready[i];
                result(self, ms(5), done_or_not(ready));
            }
            Command::NudgePhone(p) | Command::RebootPhone(p) => {
                result(self, ms(10), CommandOutcome::Done);
                let method = self.cfg.phones.get(p.0 as usize).map(|s| &s.method);
                let after = match (&c.command, method) {
                    (_, None | Some(PhoneMethod::Person(_))) => None,
                    (Command::RebootPhone(_), _) => Some(reboot),
                    (_, Some(PhoneMethod::Nudge | PhoneMethod::FollowsAddress)) => Some(nudge),
                    // A phone that needs a reboot ignores a nudge.
                    _ => None,
                };
                if let Some(after) = after {
                    registers(self, after, *p);
                }
            }
            Command::RestartNode => {
                self.at(
                    self.now + ms(100),
                    Ev::Restart {
                        node: i,
                        boot,
                        soft: true,
                    },
                );
            }
            Command::UpgradeFirmware { version } => {
                self.nodes[i].firmware.clone_from(version);
                result(self, ms(1000), CommandOutcome::Done);
                self.at(
                    self.now + ms(1500),
                    Ev::Restart {
                        node: i,
                        boot,
                        soft: false,
                    },
                );
            }
            // A restore reboots the node with the restored configuration:
            // no answer (the resume after the boot completes the step).
            Command::RestoreConfig { .. } => {
                self.at(
                    self.now + ms(150),
                    Ev::Restart {
                        node: i,
                        boot,
                        soft: false,
                    },
                );
            }
            _ => result(self, ms(5), CommandOutcome::Done),
        }
    }

    fn event(&mut self, i: usize, e: PairEvent) {
        let now = self.now;
        match &e {
            PairEvent::Orchestrator(ev) => self.nodes[i].events.push((now, ev.clone())),
            PairEvent::Election(vrrp_fsm::Event::StateChange { from, to, .. }) => {
                if *to == vrrp_fsm::State::Master {
                    self.nodes[i].became_master.push(now);
                }
                if *from == vrrp_fsm::State::Master {
                    self.nodes[i].left_master.push(now);
                }
            }
            _ => {}
        }
        match &e {
            PairEvent::Orchestrator(Event::ModeChanged(m)) => {
                self.nodes[i].passive = *m == failover_orchestrator::BackupMode::Passive;
            }
            PairEvent::Election(vrrp_fsm::Event::StateChange { from, to, reason }) => {
                if *from == vrrp_fsm::State::Backup
                    && *to == vrrp_fsm::State::Master
                    && self.nodes[i].passive
                    && !matches!(
                        reason,
                        vrrp_fsm::Reason::ArmedTakeover | vrrp_fsm::Reason::Takeover
                    )
                {
                    self.violation(format!(
                        "node {i}: a Passive Backup became Master ({reason:?})"
                    ));
                }
                self.note(format!("node {i} {from:?} -> {to:?} ({reason:?})"));
            }
            PairEvent::Orchestrator(Event::ProcedureFinished { id, outcome }) => {
                let now = self.now;
                let mut since = None;
                for s in &mut self.started {
                    if s.node == i && s.id == *id && s.outcome.is_none() {
                        s.outcome = Some(*outcome);
                        s.ended = Some(now);
                        since = Some(s.at);
                    }
                }
                // Aborted with a reason: a step that failed under its
                // abort policy, or the role lost to a newer epoch, on this
                // node since the procedure started.
                if *outcome == ProcedureOutcome::Aborted
                    && let Some(at) = since
                    && self.abort_causes[i].is_none_or(|t| t < at)
                {
                    self.violation(format!(
                        "node {i}: procedure {id} aborted with no failed step and no lost role"
                    ));
                }
                self.note(format!("node {i} procedure {id} finished: {outcome:?}"));
            }
            PairEvent::Orchestrator(
                Event::StepFailed {
                    policy: failover_orchestrator::FailurePolicy::AbortAndRollBack,
                    ..
                }
                | Event::Superseded { .. },
            ) => {
                self.abort_causes[i] = Some(self.now);
                self.note(format!("node {i} {e:?}"));
            }
            PairEvent::Orchestrator(Event::Milestone(entry))
                if entry.what == failover_orchestrator::Milestone::SyncSettled =>
            {
                self.check_data_loss(i);
            }
            PairEvent::Orchestrator(ev) => {
                if matches!(
                    ev,
                    Event::PlanStarted {
                        kind: failover_orchestrator::PlanKind::Takeover,
                        ..
                    }
                ) {
                    self.takeovers[i] += 1;
                }
                if !matches!(
                    ev,
                    Event::StepStarted { .. } | Event::StepDone { .. } | Event::Milestone(_)
                ) {
                    self.note(format!("node {i} {ev:?}"));
                }
            }
            PairEvent::LinkFailed { why, .. } => {
                self.link_failures.push((self.now, i, *why));
                self.note(format!("node {i} {e:?}"));
            }
            PairEvent::Sync(SyncReport::RoundDone(summary)) => {
                // The round just committed: the tree is this generation.
                let n = &self.nodes[i];
                if let Some(g) = n.worker.as_ref().and_then(SyncWorker::replica_generation)
                    && g.number == summary.generation
                {
                    let digest = tree_digest(&n.store);
                    self.gen_views[i].insert((g.number, g.taken_at), digest);
                }
                self.note(format!("node {i} {e:?}"));
            }
            PairEvent::Sync(SyncReport::Opened(report)) => {
                // A reopened replica (after a crash, a restart, a role
                // change) holds a whole generation: the one it committed,
                // not a part of the next one. Moving unconfirmed changes
                // aside, or repairs, make a tree of their own.
                let g = report.generation;
                let number = g.number;
                if report.quarantined.is_some() || report.repaired.is_some() {
                    self.gen_views[i].clear();
                } else if let Some(&want) = self.gen_views[i].get(&(number, g.taken_at)) {
                    self.generation_checks += 1;
                    if tree_digest(&self.nodes[i].store) != want {
                        self.violation(format!(
                            "node {i} reopened at generation {number} with a tree that is not \
                             the one it committed (rolled forward: {}, rolled back: {})",
                            report.rolled_forward, report.rolled_back
                        ));
                    }
                }
                self.note(format!("node {i} {e:?}"));
            }
            other => {
                if matches!(other, PairEvent::Sync(SyncReport::Refused(_))) {
                    self.refused_rounds[i] += 1;
                    if self.auto_confirm {
                        self.at(self.now + Duration::from_secs(1), Ev::Confirm(i));
                    }
                }
                self.note(format!("node {i} {other:?}"));
            }
        }
    }

    /// The safety invariants, after every step.
    ///
    /// The address is on at most one node. Allowed exceptions: a full
    /// partition (both networks cut: neither side can know) and one
    /// Master_Down_Interval after it heals (counted as four advertisement
    /// intervals, above three and the skew), or two after both units start
    /// at once (one to hear nobody, one to settle); a node with redundancy
    /// off (a standalone unit, not
    /// half of the pair); and, only while the peer link is down (cut, or
    /// healed but not yet dialled again) and the VRRP link loses packets, a
    /// spurious takeover that the next advertisement ends within one
    /// Master_Down_Interval: without the link, nothing can tell a lost
    /// advertisement from a dead Master.
    fn check(&mut self) {
        // No command under a stale epoch, the ones the pair engine carries
        // out itself (election, sync, announcement) included: it counts
        // them against the journal it handed out.
        for i in 0..NODES {
            let stale = self.nodes[i]
                .pair
                .as_ref()
                .map_or(0, |p| p.stats().stale_commands);
            if stale > self.stale_seen[i] {
                self.stale_seen[i] = stale;
                self.violation(format!(
                    "node {i} carried out a command under an epoch older than its journal's"
                ));
            }
        }
        // Each tree read once a step, for both checks.
        let views: [BTreeMap<String, View>; NODES] =
            [self.nodes[0].store.view(), self.nodes[1].store.view()];
        self.check_window(&views);
        self.check_generations(&views);
        let holders: Vec<usize> = (0..NODES).filter(|i| self.nodes[*i].holds_vip).collect();
        let standalone =
            (0..NODES).any(|i| self.nodes[i].persisted.redundancy == Redundancy::Disabled);
        let link_down = self.link_cut
            || self
                .nodes
                .iter()
                .any(|n| n.pair.as_ref().is_none_or(|p| !p.link_up()));
        // Neither the advertisements nor the peer link get through (the
        // link cut, or reset and not yet back): each side may serve.
        let partitioned = (self.lan_cut && link_down) || standalone;
        // The grace runs from the step that ended the partition (or turned
        // redundancy back on), too.
        if partitioned || self.was_partitioned {
            self.dual_ok_until = self.dual_ok_until.max(self.now + self.mdi());
        }
        self.was_partitioned = partitioned;
        if holders.len() < 2 {
            self.dual_since = None;
            return;
        }
        let since = *self.dual_since.get_or_insert(self.now);
        if partitioned || self.now <= self.dual_ok_until {
            return;
        }
        let vrrp_alone = link_down && self.lan.loss_ppm > 0;
        let bound = self.mdi() + self.lan.delay + self.lan.jitter + Duration::from_millis(5);
        if !vrrp_alone {
            self.violation(format!("both nodes hold the address ({holders:?})"));
        } else if self.now - since > bound {
            self.violation(format!(
                "both nodes hold the address for {:?} ({holders:?})",
                self.now - since
            ));
        }
    }

    /// A replica's tree is always a whole generation: between rounds it is
    /// exactly what it was when it committed the generation it is at (a
    /// round writes where files lie only in its commit, never in part).
    fn check_generations(&mut self, views: &[BTreeMap<String, View>; NODES]) {
        for (i, view) in views.iter().enumerate() {
            let n = &self.nodes[i];
            if !n.up {
                continue;
            }
            let Some(g) = n.worker.as_ref().and_then(SyncWorker::replica_generation) else {
                continue;
            };
            let key = (g.number, g.taken_at);
            let Some(&want) = self.gen_views[i].get(&key) else {
                continue;
            };
            self.generation_checks += 1;
            if view_digest(view) != want {
                self.violation(format!(
                    "node {i}'s tree is not the generation {} it committed",
                    g.number
                ));
                // Once is enough for this generation.
                self.gen_views[i].remove(&key);
            }
        }
    }

    /// The data-loss window a node reports (`SyncWorker::exposure`, the
    /// node's `sync.window_ms`) is never below the true one: on a source,
    /// the age of the oldest write on its tree, still there, that the other
    /// node's tree lacks; on a replica, the same of its source's writes
    /// that its own tree lacks.
    fn check_window(&mut self, views: &[BTreeMap<String, View>; NODES]) {
        let wall = self.wall();
        for i in 0..NODES {
            let n = &self.nodes[i];
            if !n.up {
                continue;
            }
            // A source reports on what its peer lacks of its tree; a
            // replica on what it lacks of its source's (the age of its
            // generation's snapshot).
            let (src, dst) = match n.worker.as_ref().map(SyncWorker::role) {
                Some(SyncRole::Source) => (i, 1 - i),
                Some(SyncRole::Replica { .. }) => (1 - i, i),
                _ => continue,
            };
            let Some(exposure) = n.worker.as_ref().and_then(SyncWorker::exposure) else {
                continue;
            };
            let (mine, theirs) = (&views[src], &views[dst]);
            let has = |tree: &BTreeMap<String, View>, path: &str, data: &[u8]| matches!(tree.get(path), Some(View::File(d, _, _)) if d == data);
            let oldest = self
                .write_log
                .iter()
                .filter(|(_, node, path, data)| {
                    *node == src && has(mine, path, data) && !has(theirs, path, data)
                })
                .map(|w| w.0)
                .min();
            self.window_checks += 1;
            let Some(t0) = oldest else { continue };
            let truth = self.now - t0;
            match exposure.window(wall) {
                None => {}
                Some(reported) if reported >= truth => {}
                Some(reported) => {
                    let what = format!(
                        "node {i} reports a data-loss window of {reported:?} but its peer lacks a write {truth:?} old"
                    );
                    if self.window_violations < 5 {
                        self.violation(what);
                    }
                    self.window_violations += 1;
                }
            }
        }
    }

    /// At a takeover, the data-loss window the new Master reports is at
    /// least the age of the oldest write of the old Master that it lacks.
    fn check_data_loss(&mut self, i: usize) {
        let Some(timeline) = self.nodes[i]
            .pair
            .as_ref()
            .and_then(|p| p.orchestrator().timeline().cloned())
        else {
            return;
        };
        if timeline.kind != failover_orchestrator::PlanKind::Takeover {
            return;
        }
        let other = 1 - i;
        let mine = self.nodes[i].store.view();
        let theirs = self.nodes[other].store.view();
        let has = |tree: &BTreeMap<String, View>, path: &str, data: &[u8]| matches!(tree.get(path), Some(View::File(d, _, _)) if d == data);
        let oldest = self
            .write_log
            .iter()
            .filter(|(_, node, path, data)| {
                *node == other && has(&theirs, path, data) && !has(&mine, path, data)
            })
            .map(|w| w.0)
            .min();
        self.loss_checks += 1;
        let Some(t0) = oldest else { return };
        self.loss_lacking += 1;
        let lacking_ms = u64::try_from((self.now - t0).as_millis()).unwrap_or(u64::MAX);
        match timeline.data_loss_window_ms {
            Some(w) if w + 1 >= lacking_ms => {}
            w => self.violation(format!(
                "node {i} took over lacking a write {lacking_ms} ms old but reported a data-loss window of {w:?} ms"
            )),
        }
    }

    /// The tree of node `i`, without the engine's own state.
    pub fn tree(&self, i: usize) -> BTreeMap<String, View> {
        strip(self.nodes[i].store.view())
    }

    pub fn masters(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|i| {
                self.nodes[*i]
                    .pair
                    .as_ref()
                    .and_then(|p| p.router())
                    .is_some_and(|r| r.state() == vrrp_fsm::State::Master)
            })
            .collect()
    }

    pub fn mode(&self, i: usize) -> BackupMode {
        self.nodes[i].persisted.backup_mode
    }

    pub fn redundancy(&self, i: usize) -> Redundancy {
        self.nodes[i].persisted.redundancy
    }

    /// Writes a file on node `i`'s tree, as its applications would.
    pub fn write(&mut self, i: usize, path: &str, data: &[u8]) {
        let mtime = i64::try_from(self.now.as_nanos()).unwrap_or(i64::MAX);
        self.nodes[i].store.put_file(path, data, 0o640, mtime);
        self.nodes[i].store.sync_all();
        self.hint(i, path);
    }

    /// The content of a file on node `i`'s tree.
    pub fn read(&self, i: usize, path: &str) -> Option<Vec<u8>> {
        match self.nodes[i].store.view().get(path) {
            Some(View::File(data, _, _)) => Some(data.clone()),
            _ => None,
        }
    }

    /// Starts an operator request on node `i` now; its procedure id, or
    /// why preflight refused it.
    ///
    /// # Panics
    /// If node `i` is down.
    pub fn request(&mut self, i: usize, request: OperatorRequest) -> Result<u64, PreflightError> {
        let r = self.operator(i, request, "test").expect("the node is up");
        if r.is_ok() {
            self.disruptions.push(self.now);
        }
        r
    }

    /// Node `i` powers on now, from what its disk holds.
    pub fn boot(&mut self, i: usize) {
        self.now_do(Ev::Boot(i));
    }

    /// Node `i` loses power now.
    pub fn crash(&mut self, i: usize) {
        self.now_do(Ev::Crash(i));
    }

    /// Node `i` loses power now and boots again `after` that.
    pub fn restart(&mut self, i: usize, after: Duration) {
        self.crash(i);
        self.at(self.now + after, Ev::Boot(i));
    }

    /// Cuts the peer link alone (the VRRP LAN stays whole), or heals it.
    pub fn set_peer_link(&mut self, up: bool) {
        self.now_do(if up {
            Ev::HealLink
        } else {
            Ev::Partition {
                lan: false,
                link: true,
            }
        });
    }

    /// Cuts the two nodes apart, the VRRP LAN and the peer link.
    pub fn partition(&mut self) {
        self.now_do(Ev::Partition {
            lan: true,
            link: true,
        });
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        self.now_do(Ev::Heal);
    }

    /// `ev` happens now, and everything it sets off at this instant.
    fn now_do(&mut self, ev: Ev) {
        self.at(self.now, ev);
        self.run_until(self.now);
    }

    /// Node `i`'s orchestrator, for queries.
    ///
    /// # Panics
    /// If node `i` is down.
    pub fn orch(&self, i: usize) -> &failover_orchestrator::Orchestrator {
        self.nodes[i]
            .pair
            .as_ref()
            .expect("the node is up")
            .orchestrator()
    }

    /// Node `i`'s role as it acts on it (the orchestrator's: an election
    /// won while the peer link vouches for the other Master is not one),
    /// `Initialize` while the node is down.
    pub fn role(&self, i: usize) -> Role {
        self.nodes[i]
            .pair
            .as_ref()
            .map_or(Role::Initialize, |p| p.orchestrator().role())
    }

    pub fn holds_address(&self, i: usize) -> bool {
        self.nodes[i].holds_vip
    }

    /// The commands node `i` issued, in order, across its boots.
    pub fn commands(&self, i: usize) -> Vec<Command> {
        self.nodes[i]
            .issued
            .iter()
            .map(|(_, c)| c.command.clone())
            .collect()
    }

    /// The orchestrator's events at node `i`, across its boots.
    pub fn events(&self, i: usize) -> &[(Duration, Event)] {
        &self.nodes[i].events
    }

    pub fn count_events(&self, i: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.events(i).iter().filter(|(_, e)| f(e)).count()
    }

    /// The operator confirms the deletions node `i`'s guard held back;
    /// whether there was a refused round to confirm.
    pub fn confirm_deletions(&mut self, i: usize) -> bool {
        let t = self.instant();
        let mut pending = false;
        if let Some(p) = self.nodes[i].pair.as_mut() {
            pending = p.confirm_deletions(t);
            self.note(format!(
                "operator confirms deletions on node {i}: {}",
                if pending {
                    "accepted"
                } else {
                    "nothing to confirm"
                }
            ));
        }
        self.drive(i);
        pending
    }

    /// How the procedure `id` on node `i` ended, if it has.
    pub fn outcome(&self, i: usize, id: u64) -> Option<ProcedureOutcome> {
        self.started
            .iter()
            .rev()
            .find(|s| s.node == i && s.id == id)
            .and_then(|s| s.outcome)
    }

    pub fn sync_role(&self, i: usize) -> Option<SyncRole> {
        self.nodes[i].pair.as_ref().map(Pair::sync_role)
    }

    /// Why the schedule failed, with its log.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for v in &self.violations {
            s.push_str(&format!("violation at {:?}: {}\n", v.at, v.what));
        }
        let tail = self.log.len().saturating_sub(200);
        for l in &self.log[tail..] {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// A digest of a tree outside its state folder: every path with its kind,
/// content, mode and time.
fn tree_digest(store: &MemStore) -> u64 {
    view_digest(&store.view())
}

/// [`tree_digest`] of a view already read.
fn view_digest(view: &BTreeMap<String, View>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, v) in view {
        path.hash(&mut h);
        match v {
            View::File(data, mode, mtime) => (0u8, data, mode, mtime).hash(&mut h),
            View::Dir(mode, mtime) => (1u8, mode, mtime).hash(&mut h),
            View::Symlink(target) => (2u8, target).hash(&mut h),
        }
    }
    h.finish()
}
