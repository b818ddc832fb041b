//! A deterministic simulator: several engines on simulated links, in
//! virtual time.
//!
//! - Generic over [`Engine`] (handle a packet, a command, a timeout; poll
//!   transmits, events and the next deadline) and over what the network
//!   carries ([`Engine::Packet`]): each transmit says what is sent and
//!   where ([`Outgoing`]: the LAN, or one node). Implemented here for
//!   [`VirtualRouter`] and [`SyncGroup`], whose packets are VRRP messages
//!   ([`VrrpMessage`]); other crates implement it for their own engines
//!   (e.g. a router plus an orchestrator, whose packets are either VRRP or
//!   peer messages) and reuse the network.
//! - Virtual time jumps straight to the next deadline, delivery or
//!   scheduled action: an hour of a pair at a 10 ms interval runs in well
//!   under a second in release builds.
//! - Per directed link: seeded loss, delay and jitter; partitions and heal;
//!   node crash (the engine is dropped, nothing is sent) and boot (a fresh
//!   engine from the node's factory).
//! - A transcript of every event, `"{ms} node{i} {event:?}"`, for golden
//!   files; and typed [`Record`]s (optionally with every delivery) for
//!   property checks.
//!
//! Nothing here reads a clock: [`Sim::new`] takes the base instant.
//! [`Sim::run_until`] runs to an instant; [`Sim::step_until`] runs one
//! instant at a time, for a driver that checks or acts between steps.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use std::time::{Duration, Instant};
//! use vrrp_fsm::sim::{LinkConfig, Sim};
//! use vrrp_fsm::{Config, State, VirtualRouter};
//! use vrrp_proto::{Priority, Version, Vrid};
//!
//! let node = |ip: Ipv4Addr, prio: u8| {
//!     let cfg = Config::builder(Version::V3, Vrid::new(1).unwrap(), ip.into())
//!         .priority(Priority(prio))
//!         .address(Ipv4Addr::new(10, 0, 0, 100))
//!         .build()
//!         .unwrap();
//!     move |now| {
//!         let mut r = VirtualRouter::new(cfg.clone(), now);
//!         r.handle_startup(now);
//!         r
//!     }
//! };
//! let mut sim = Sim::new(Instant::now(), 7);
//! let a = sim.add_node(Ipv4Addr::new(10, 0, 0, 1).into(), node(Ipv4Addr::new(10, 0, 0, 1), 200));
//! let b = sim.add_node(Ipv4Addr::new(10, 0, 0, 2).into(), node(Ipv4Addr::new(10, 0, 0, 2), 100));
//! sim.set_all_links(LinkConfig::delay(Duration::from_millis(1)));
//! sim.boot_at(Duration::ZERO, a);
//! sim.boot_at(Duration::ZERO, b);
//! sim.run_until(Duration::from_secs(10));
//! assert_eq!(sim.engine(a).unwrap().state(), State::Master);
//! assert_eq!(sim.engine(b).unwrap().state(), State::Backup);
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt::{self, Debug, Write as _};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use vrrp_proto::{RecvMeta, TTL};

use crate::event::Event;
use crate::group::SyncGroup;
use crate::router::{CommandError, Input, Release, Transmit, VirtualRouter};

/// An engine the simulator can drive: the house engine shape, with inputs
/// reduced to packets, commands and timeouts.
pub trait Engine {
    /// What the network carries, as a receiver gets it. A packet for the
    /// LAN is cloned for every receiver but the last.
    type Packet: Clone;
    /// Operator / driver inputs a scenario schedules.
    type Command: Debug + Clone;
    /// What a command can answer instead of `Ok`.
    type Error: Debug;
    /// What the engine reports (goes into the transcript).
    type Event: Debug;

    /// A scheduled command.
    ///
    /// # Errors
    /// The engine's refusal; the simulator records it.
    fn handle_command(&mut self, now: Instant, command: Self::Command) -> Result<(), Self::Error>;
    /// A packet delivered by the network.
    fn handle_packet(&mut self, now: Instant, packet: Self::Packet);
    /// Timers due.
    fn handle_timeout(&mut self, now: Instant);
    /// Next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Next packet to send, and where.
    fn poll_transmit(&mut self) -> Option<Outgoing<Self::Packet>>;
    /// Next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum To {
    /// Every other node on the LAN (a multicast group).
    Lan,
    /// The node with this unicast address (nowhere if none has it).
    Node(IpAddr),
}

/// A packet an engine sends, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<P> {
    /// Where it goes.
    pub to: To,
    /// What is sent.
    pub packet: P,
}

/// What a [`VirtualRouter`] or a [`SyncGroup`] sends and receives in the
/// simulator: a bare VRRP message with the metadata a receiving socket
/// gives (source, destination, TTL 255).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpMessage {
    /// The receive metadata.
    pub meta: RecvMeta,
    /// The message.
    pub bytes: Vec<u8>,
}

impl VrrpMessage {
    /// Where a router's [`Transmit`] goes: the LAN for the VRRP group, one
    /// node for a unicast peer.
    #[must_use]
    pub fn to(transmit: &Transmit) -> To {
        if transmit.dst.is_multicast() {
            To::Lan
        } else {
            To::Node(transmit.dst)
        }
    }

    /// A router's [`Transmit`] and the bytes it wrote, as the simulator
    /// sends them.
    #[must_use]
    pub fn outgoing(transmit: &Transmit, buf: &[u8]) -> Outgoing<VrrpMessage> {
        let len = transmit.len.min(buf.len());
        Outgoing {
            to: VrrpMessage::to(transmit),
            packet: VrrpMessage {
                meta: RecvMeta {
                    src: transmit.src,
                    dst: transmit.dst,
                    ttl: TTL,
                },
                bytes: buf[..len].to_vec(),
            },
        }
    }
}

/// A buffer no advertisement outgrows: 255 IPv6 addresses, the header, and
/// an IP header for datagrams.
const MAX_MESSAGE: usize = 8 + 255 * 16 + 8 + 40;

impl Engine for VirtualRouter {
    type Packet = VrrpMessage;
    type Command = Input;
    type Error = CommandError;
    type Event = Event;

    fn handle_command(&mut self, now: Instant, command: Input) -> Result<(), CommandError> {
        VirtualRouter::handle_input(self, now, command)
    }
    fn handle_packet(&mut self, now: Instant, packet: VrrpMessage) {
        // Drops are counted in the router's stats.
        let _ = self.handle_message(now, &packet.bytes, packet.meta);
    }
    fn handle_timeout(&mut self, now: Instant) {
        VirtualRouter::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        VirtualRouter::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Outgoing<VrrpMessage>> {
        let mut buf = [0u8; MAX_MESSAGE];
        VirtualRouter::poll_transmit(self, &mut buf).map(|t| VrrpMessage::outgoing(&t, &buf))
    }
    fn poll_event(&mut self) -> Option<Event> {
        VirtualRouter::poll_event(self)
    }
}

/// A command for a [`SyncGroup`] in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCommand {
    /// To the whole group (startup, shutdown, takeover and release act on
    /// the group; other commands go to every member).
    All(Input),
    /// To one member.
    Member(usize, Input),
}

impl Engine for SyncGroup {
    type Packet = VrrpMessage;
    type Command = GroupCommand;
    type Error = CommandError;
    type Event = (usize, Event);

    fn handle_command(&mut self, now: Instant, command: GroupCommand) -> Result<(), CommandError> {
        match command {
            GroupCommand::All(Input::Startup) => self.handle_startup(now),
            GroupCommand::All(Input::Shutdown) => self.handle_shutdown(now),
            GroupCommand::All(Input::Takeover) => self.takeover(now),
            GroupCommand::All(Input::Release(r)) => self.release(now, r),
            GroupCommand::All(c) => {
                for i in 0..self.members().len() {
                    let _ = SyncGroup::handle_input(self, now, i, c);
                }
            }
            GroupCommand::Member(i, c) => SyncGroup::handle_input(self, now, i, c)?,
        }
        Ok(())
    }
    fn handle_packet(&mut self, now: Instant, packet: VrrpMessage) {
        let _ = self.handle_message(now, &packet.bytes, packet.meta);
    }
    fn handle_timeout(&mut self, now: Instant) {
        SyncGroup::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SyncGroup::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Outgoing<VrrpMessage>> {
        let mut buf = [0u8; MAX_MESSAGE];
        SyncGroup::poll_transmit(self, &mut buf).map(|(_, t)| VrrpMessage::outgoing(&t, &buf))
    }
    fn poll_event(&mut self) -> Option<(usize, Event)> {
        SyncGroup::poll_event(self)
    }
}

/// One direction of a link between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkConfig {
    /// Probability of losing a packet, in parts per million.
    pub loss_ppm: u32,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet.
    pub jitter: Duration,
}

impl LinkConfig {
    /// A lossless link with a fixed delay.
    #[must_use]
    pub fn delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }
}

/// What happened, for property checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What<Ev> {
    /// The node's engine reported an event.
    Event(Ev),
    /// A packet from `from` reached this node (recorded only with
    /// [`Sim::record_traffic`]).
    Delivered {
        /// Sending node.
        from: usize,
    },
    /// A packet to `to` was lost or cut (recorded only with
    /// [`Sim::record_traffic`]).
    Lost {
        /// Intended receiver.
        to: usize,
    },
    /// A scheduled command ran (its `Debug` form).
    Command(String),
    /// The engine refused a command (the error's `Debug` form).
    Refused(String),
    /// The node crashed.
    Crash,
    /// The node booted (a fresh engine).
    Boot,
    /// The network was partitioned into these groups (node = 0).
    Partition(Vec<Vec<usize>>),
    /// Every link is whole again (node = 0).
    Heal,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<Ev> {
    /// Virtual time since the base instant.
    pub at: Duration,
    /// The node concerned.
    pub node: usize,
    /// What happened.
    pub what: What<Ev>,
}

#[derive(Debug, Clone)]
enum Action<C> {
    Command(usize, C),
    Crash(usize),
    Boot(usize),
    Partition(Vec<Vec<usize>>),
    Heal,
    Link(usize, usize, LinkConfig),
}

struct Keyed<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Flight<P> {
    from: usize,
    to: usize,
    packet: P,
}

/// SplitMix64: tiny, seeded, good enough for loss and jitter.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

type Factory<E> = Box<dyn FnMut(Instant) -> E>;

struct Node<E> {
    addr: IpAddr,
    engine: Option<E>,
    factory: Factory<E>,
}

/// The simulator. See the module docs.
pub struct Sim<E: Engine> {
    base: Instant,
    now: Instant,
    nodes: Vec<Node<E>>,
    links: Vec<LinkConfig>,
    cut: Vec<bool>,
    default_link: LinkConfig,
    flights: BinaryHeap<Reverse<Keyed<Flight<E::Packet>>>>,
    actions: BinaryHeap<Reverse<Keyed<Action<E::Command>>>>,
    seq: u64,
    rng: Rng,
    records: Vec<Record<E::Event>>,
    traffic: bool,
    steps: u64,
    delivered: u64,
    /// Steps in a row at the same instant, and that instant.
    same: u32,
    last: Instant,
}

impl<E: Engine> Debug for Sim<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &(self.now - self.base))
            .field("nodes", &self.nodes.len())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

/// Consecutive steps at one instant after which an engine is taken to be
/// stuck (a deadline that never moves forward).
const STUCK_STEPS: u32 = 100_000;

impl<E: Engine> Sim<E> {
    /// An empty network at virtual time zero (`base`), with a seed for loss
    /// and jitter.
    #[must_use]
    pub fn new(base: Instant, seed: u64) -> Sim<E> {
        Sim {
            base,
            now: base,
            nodes: Vec::new(),
            links: Vec::new(),
            cut: Vec::new(),
            default_link: LinkConfig::default(),
            flights: BinaryHeap::new(),
            actions: BinaryHeap::new(),
            seq: 0,
            rng: Rng(seed),
            records: Vec::new(),
            traffic: false,
            steps: 0,
            delivered: 0,
            same: 0,
            last: base,
        }
    }

    /// Adds a node (down until [`Sim::boot_at`]) with its unicast address
    /// and the factory that builds its engine at each boot (typically
    /// `new` plus the startup input). Returns its index.
    pub fn add_node(&mut self, addr: IpAddr, factory: impl FnMut(Instant) -> E + 'static) -> usize {
        let old = self.nodes.len();
        self.nodes.push(Node {
            addr,
            engine: None,
            factory: Box::new(factory),
        });
        let n = old + 1;
        let mut links = vec![self.default_link; n * n];
        let mut cut = vec![false; n * n];
        for i in 0..old {
            for j in 0..old {
                links[i * n + j] = self.links[i * old + j];
                cut[i * n + j] = self.cut[i * old + j];
            }
        }
        self.links = links;
        self.cut = cut;
        old
    }

    /// Sets every link, present and future.
    pub fn set_all_links(&mut self, link: LinkConfig) {
        self.default_link = link;
        self.links.iter_mut().for_each(|l| *l = link);
    }

    /// Sets one direction of one link now.
    pub fn set_link(&mut self, from: usize, to: usize, link: LinkConfig) {
        let n = self.nodes.len();
        if from < n && to < n {
            self.links[from * n + to] = link;
        }
    }

    /// Records deliveries and losses too (for property checks; off by
    /// default).
    pub fn record_traffic(&mut self, on: bool) {
        self.traffic = on;
    }

    /// Schedules a command.
    pub fn command_at(&mut self, at: Duration, node: usize, command: E::Command) {
        self.schedule(at, Action::Command(node, command));
    }
    /// Schedules a crash: the engine is dropped without a word.
    pub fn crash_at(&mut self, at: Duration, node: usize) {
        self.schedule(at, Action::Crash(node));
    }
    /// Schedules a boot: a fresh engine from the node's factory.
    pub fn boot_at(&mut self, at: Duration, node: usize) {
        self.schedule(at, Action::Boot(node));
    }
    /// Schedules a partition: nodes in different groups stop hearing each
    /// other (nodes in no group are cut from everyone).
    pub fn partition_at(&mut self, at: Duration, groups: &[&[usize]]) {
        let g = groups.iter().map(|g| g.to_vec()).collect();
        self.schedule(at, Action::Partition(g));
    }
    /// Schedules the end of every partition.
    pub fn heal_at(&mut self, at: Duration) {
        self.schedule(at, Action::Heal);
    }
    /// Schedules a change of one direction of one link.
    pub fn set_link_at(&mut self, at: Duration, from: usize, to: usize, link: LinkConfig) {
        self.schedule(at, Action::Link(from, to, link));
    }

    /// Virtual time since the base.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }
    /// The base instant (virtual time zero).
    #[must_use]
    pub fn base(&self) -> Instant {
        self.base
    }
    /// A node's engine, `None` while it is down.
    #[must_use]
    pub fn engine(&self, node: usize) -> Option<&E> {
        self.nodes.get(node).and_then(|n| n.engine.as_ref())
    }
    /// A node's engine, mutably (inputs given here are drained at the next
    /// step).
    pub fn engine_mut(&mut self, node: usize) -> Option<&mut E> {
        self.nodes.get_mut(node).and_then(|n| n.engine.as_mut())
    }
    /// Everything recorded so far.
    #[must_use]
    pub fn records(&self) -> &[Record<E::Event>] {
        &self.records
    }
    /// Clears the records (long runs that check as they go).
    pub fn clear_records(&mut self) {
        self.records.clear();
    }
    /// Packets delivered so far.
    #[must_use]
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
    /// Steps taken so far (each one instant of virtual time).
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The transcript: one line per event and per scheduled action,
    /// `"{ms} node{i} {event:?}"` (milliseconds since the base, with
    /// microseconds after a point when not whole).
    #[must_use]
    pub fn transcript(&self) -> String {
        let mut s = String::new();
        for r in &self.records {
            let t = fmt_ms(r.at);
            let _ = match &r.what {
                What::Event(e) => writeln!(s, "{t} node{} {e:?}", r.node),
                What::Command(c) => writeln!(s, "{t} node{} command {c}", r.node),
                What::Refused(e) => writeln!(s, "{t} node{} refused {e}", r.node),
                What::Crash => writeln!(s, "{t} node{} crash", r.node),
                What::Boot => writeln!(s, "{t} node{} boot", r.node),
                What::Partition(g) => writeln!(s, "{t} sim partition {g:?}"),
                What::Heal => writeln!(s, "{t} sim heal"),
                What::Delivered { .. } | What::Lost { .. } => Ok(()),
            };
        }
        s
    }

    /// Runs until virtual time `until` (since the base); everything due at
    /// `until` itself runs.
    ///
    /// # Panics
    /// If an engine keeps asking for a timeout it does not move past
    /// (a deadline in the past that `handle_timeout` never clears).
    pub fn run_until(&mut self, until: Duration) {
        while self.step_until(until) {}
    }

    /// Runs the next instant at which anything is due, if it is at or
    /// before virtual time `until`: scheduled actions, then deliveries,
    /// then timers, then every node's outputs. Returns `false` when
    /// nothing is due by `until`; time then stands at `until`.
    ///
    /// A driver that checks invariants, stops on a condition or acts on
    /// what the engines did (schedules a crash, changes a link) between
    /// instants loops on this instead of [`Sim::run_until`].
    ///
    /// # Panics
    /// As [`Sim::run_until`].
    pub fn step_until(&mut self, until: Duration) -> bool {
        let limit = self.base + until;
        let Some(next) = self.next_instant().filter(|t| *t <= limit) else {
            if limit > self.now {
                self.now = limit;
            }
            return false;
        };
        let at = next.max(self.now);
        if at == self.last {
            self.same += 1;
            assert!(
                self.same < STUCK_STEPS,
                "an engine is stuck at {:?}",
                at - self.base
            );
        } else {
            self.same = 0;
            self.last = at;
        }
        self.now = at;
        self.step();
        true
    }

    fn schedule(&mut self, at: Duration, action: Action<E::Command>) {
        self.seq += 1;
        self.actions.push(Reverse(Keyed {
            at: self.base + at,
            seq: self.seq,
            item: action,
        }));
    }

    fn next_instant(&self) -> Option<Instant> {
        let a = self.actions.peek().map(|k| k.0.at);
        let f = self.flights.peek().map(|k| k.0.at);
        let t = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref().and_then(|e| e.poll_timeout()))
            .min();
        [a, f, t].into_iter().flatten().min()
    }

    fn record(&mut self, node: usize, what: What<E::Event>) {
        self.records.push(Record {
            at: self.now - self.base,
            node,
            what,
        });
    }

    fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        while self.actions.peek().is_some_and(|k| k.0.at <= now) {
            if let Some(Reverse(k)) = self.actions.pop() {
                self.apply(k.item);
            }
        }
        while self.flights.peek().is_some_and(|k| k.0.at <= now) {
            if let Some(Reverse(k)) = self.flights.pop() {
                let f = k.item;
                if let Some(e) = self.nodes.get_mut(f.to).and_then(|n| n.engine.as_mut()) {
                    e.handle_packet(now, f.packet);
                    self.delivered += 1;
                    if self.traffic {
                        self.record(f.to, What::Delivered { from: f.from });
                    }
                }
            }
        }
        for n in &mut self.nodes {
            if let Some(e) = n.engine.as_mut()
                && e.poll_timeout().is_some_and(|t| t <= now)
            {
                e.handle_timeout(now);
            }
        }
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    fn apply(&mut self, action: Action<E::Command>) {
        let now = self.now;
        match action {
            Action::Command(i, c) => {
                let text = format!("{c:?}");
                let r = self
                    .nodes
                    .get_mut(i)
                    .and_then(|n| n.engine.as_mut())
                    .map(|e| e.handle_command(now, c));
                self.record(i, What::Command(text));
                if let Some(Err(e)) = r {
                    self.record(i, What::Refused(format!("{e:?}")));
                }
                self.drain(i);
            }
            Action::Crash(i) => {
                if let Some(n) = self.nodes.get_mut(i) {
                    n.engine = None;
                    self.record(i, What::Crash);
                }
            }
            Action::Boot(i) => {
                if let Some(n) = self.nodes.get_mut(i) {
                    n.engine = Some((n.factory)(now));
                    self.record(i, What::Boot);
                    self.drain(i);
                }
            }
            Action::Partition(groups) => {
                let n = self.nodes.len();
                let group_of = |x: usize| groups.iter().position(|g| g.contains(&x));
                for a in 0..n {
                    for b in 0..n {
                        let same = a == b || (group_of(a).is_some() && group_of(a) == group_of(b));
                        self.cut[a * n + b] = !same;
                    }
                }
                self.record(0, What::Partition(groups));
            }
            Action::Heal => {
                self.cut.iter_mut().for_each(|c| *c = false);
                self.record(0, What::Heal);
            }
            Action::Link(a, b, l) => self.set_link(a, b, l),
        }
    }

    fn drain(&mut self, i: usize) {
        let n = self.nodes.len();
        let mut receivers = Vec::with_capacity(n);
        loop {
            let Some(e) = self.nodes.get_mut(i).and_then(|n| n.engine.as_mut()) else {
                return;
            };
            let Some(tx) = e.poll_transmit() else {
                break;
            };
            receivers.clear();
            for to in 0..n {
                if to == i {
                    continue;
                }
                if matches!(tx.to, To::Node(addr) if self.nodes[to].addr != addr) {
                    continue;
                }
                let link = self.links[i * n + to];
                let lost = self.cut[i * n + to]
                    || (link.loss_ppm > 0 && self.rng.below(1_000_000) < u64::from(link.loss_ppm));
                if lost {
                    if self.traffic {
                        self.record(i, What::Lost { to });
                    }
                    continue;
                }
                let jitter = link.jitter.as_micros() as u64;
                let extra = if jitter > 0 {
                    self.rng.below(jitter + 1)
                } else {
                    0
                };
                receivers.push((to, link.delay + Duration::from_micros(extra)));
            }
            // The last receiver takes the packet itself; the others a copy.
            let mut packet = Some(tx.packet);
            for (k, &(to, delay)) in receivers.iter().enumerate() {
                let p = if k + 1 == receivers.len() {
                    packet.take()
                } else {
                    packet.clone()
                };
                let Some(p) = p else { break };
                self.seq += 1;
                self.flights.push(Reverse(Keyed {
                    at: self.now + delay,
                    seq: self.seq,
                    item: Flight {
                        from: i,
                        to,
                        packet: p,
                    },
                }));
            }
        }
        while let Some(ev) = self
            .nodes
            .get_mut(i)
            .and_then(|n| n.engine.as_mut())
            .and_then(|e| e.poll_event())
        {
            self.record(i, What::Event(ev));
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}", us / 1000)
    } else {
        format!("{}.{:03}", us / 1000, us % 1000)
    }
}

/// A convenience for scenarios: a [`Release`] that also lowers the
/// priority (the durable swap).
#[must_use]
pub fn swap_release(priority: vrrp_proto::Priority) -> Input {
    Input::Release(Release::new().priority(priority))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::net::Ipv4Addr;

    use super::*;

    /// An engine whose packets are not VRRP: a command sends a word to the
    /// LAN or to one node; what it hears is its event.
    #[derive(Default)]
    struct Talker {
        out: VecDeque<Outgoing<String>>,
        heard: VecDeque<String>,
        /// Answers each word heard after this delay.
        echo: Option<(Duration, Vec<(Instant, String)>)>,
    }

    impl Engine for Talker {
        type Packet = String;
        type Command = (To, &'static str);
        type Error = Infallible;
        type Event = String;

        fn handle_command(
            &mut self,
            _: Instant,
            (to, w): (To, &'static str),
        ) -> Result<(), Infallible> {
            self.out.push_back(Outgoing {
                to,
                packet: w.to_owned(),
            });
            Ok(())
        }
        fn handle_packet(&mut self, now: Instant, packet: String) {
            if let Some((d, due)) = &mut self.echo {
                due.push((now + *d, format!("re: {packet}")));
            }
            self.heard.push_back(packet);
        }
        fn handle_timeout(&mut self, now: Instant) {
            if let Some((_, due)) = &mut self.echo {
                let (now_due, later) = due.drain(..).partition(|(t, _)| *t <= now);
                *due = later;
                for (_, w) in now_due {
                    self.out.push_back(Outgoing {
                        to: To::Lan,
                        packet: w,
                    });
                }
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.echo
                .as_ref()
                .and_then(|(_, due)| due.iter().map(|(t, _)| *t).min())
        }
        fn poll_transmit(&mut self) -> Option<Outgoing<String>> {
            self.out.pop_front()
        }
        fn poll_event(&mut self) -> Option<String> {
            self.heard.pop_front()
        }
    }

    fn addr(n: u8) -> IpAddr {
        Ipv4Addr::new(192, 0, 2, n).into()
    }

    fn heard(sim: &Sim<Talker>) -> Vec<(u128, usize, String)> {
        sim.records()
            .iter()
            .filter_map(|r| match &r.what {
                What::Event(w) => Some((r.at.as_millis(), r.node, w.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_packet_goes_to_the_lan_or_to_one_node() {
        let mut sim = Sim::new(Instant::now(), 1);
        sim.set_all_links(LinkConfig::delay(Duration::from_millis(2)));
        for n in 1..=3 {
            sim.add_node(addr(n), |_| Talker::default());
            sim.boot_at(Duration::ZERO, usize::from(n - 1));
        }
        sim.command_at(Duration::from_millis(10), 0, (To::Lan, "all"));
        sim.command_at(Duration::from_millis(20), 0, (To::Node(addr(3)), "three"));
        sim.command_at(Duration::from_millis(30), 1, (To::Node(addr(9)), "nobody"));
        sim.run_until(Duration::from_secs(1));
        assert_eq!(
            heard(&sim),
            vec![
                (12, 1, "all".to_owned()),
                (12, 2, "all".to_owned()),
                (22, 2, "three".to_owned()),
            ]
        );
        assert_eq!(sim.delivered(), 3);
    }

    #[test]
    fn partitions_and_crashes_hold_for_any_packet() {
        let mut sim = Sim::new(Instant::now(), 1);
        sim.set_all_links(LinkConfig::delay(Duration::from_millis(1)));
        for n in 1..=2 {
            sim.add_node(addr(n), |_| Talker::default());
            sim.boot_at(Duration::ZERO, usize::from(n - 1));
        }
        sim.partition_at(Duration::from_millis(5), &[&[0], &[1]]);
        sim.command_at(Duration::from_millis(10), 0, (To::Lan, "cut"));
        sim.heal_at(Duration::from_millis(15));
        sim.crash_at(Duration::from_millis(15), 1);
        sim.command_at(Duration::from_millis(20), 0, (To::Lan, "down"));
        sim.boot_at(Duration::from_millis(25), 1);
        sim.command_at(Duration::from_millis(30), 0, (To::Lan, "up"));
        sim.run_until(Duration::from_secs(1));
        assert_eq!(heard(&sim), vec![(31, 1, "up".to_owned())]);
    }

    #[test]
    fn step_until_runs_one_instant_at_a_time() {
        let mut sim = Sim::new(Instant::now(), 1);
        sim.set_all_links(LinkConfig::delay(Duration::from_millis(3)));
        for n in 1..=2 {
            sim.add_node(addr(n), |_| Talker {
                echo: Some((Duration::from_millis(4), Vec::new())),
                ..Talker::default()
            });
            sim.boot_at(Duration::ZERO, usize::from(n - 1));
        }
        sim.command_at(Duration::from_millis(10), 0, (To::Lan, "hi"));
        let until = Duration::from_millis(30);
        let mut instants = Vec::new();
        while sim.step_until(until) {
            instants.push(sim.elapsed().as_millis());
        }
        // Boot, the command, delivered, echoed, delivered, echoed back,
        // delivered; the next echo at 31 ms is past `until`, so not yet.
        assert_eq!(instants, vec![0, 10, 13, 17, 20, 24, 27]);
        assert_eq!(sim.elapsed(), until);
        assert_eq!(heard(&sim).len(), 3);
        sim.run_until(Duration::from_millis(34));
        assert_eq!(
            heard(&sim).last(),
            Some(&(34, 0, "re: re: re: hi".to_owned()))
        );
    }
}
