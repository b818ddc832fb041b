//! The pair engine's steady state: what one 10 ms advertisement period
//! costs both nodes' engines (the Master's timer and advertisement, the
//! Backup's receive, the peer link's heartbeats when due), all in memory
//! and virtual time, so the figure is the engines' own work without the
//! kernel's.
//!
//! - `pair_steady/period_warm`: period after period, caches warm.
//! - `pair_steady/period_cold`: each period after 8 MiB of other memory
//!   was walked, as a node that slept 10 ms beside other processes meets
//!   its data again. This is the case the node lives in.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use failover_orchestrator::pair::{ConnId, InlinePair, LinkConfig, Output, Pair, PairConfig};
use failover_orchestrator::pair::{SyncConfig, SyncWorker};
use failover_orchestrator::{CommandOutcome, Config, Identity, PersistentState, Role};
use sync_delta::frame::{Nonce, PreSharedKey};
use sync_delta::mem::MemStore;
use vrrp_proto::{Interval, Priority, RecvMeta, TTL, Version, Vrid};

enum Delivery {
    Vrrp(Vec<u8>, IpAddr, IpAddr),
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId),
}

/// Two nodes, each a `Pair` with its sync worker inline on an empty tree,
/// the LAN and the peer link in memory.
struct World {
    t0: Instant,
    now: Instant,
    nodes: [InlinePair<MemStore>; 2],
    wires: HashMap<(usize, ConnId), (usize, ConnId)>,
    pending: VecDeque<(usize, Delivery)>,
    nonces: u8,
}

fn node(i: usize, now: Instant, wall: SystemTime) -> InlinePair<MemStore> {
    let primary = Ipv4Addr::new(10, 0, 0, 1 + i as u8);
    let vrrp = vrrp_fsm::Config::builder(Version::V3, Vrid::new(7).unwrap(), primary.into())
        .priority(Priority([200, 100][i]))
        .interval(Interval::from_centis(1).unwrap())
        .preempt(vrrp_fsm::Preempt::Disabled)
        .address(Ipv4Addr::new(10, 0, 0, 100))
        .build()
        .unwrap();
    let identity = Identity::new(format!("pbx-{i}"), "5.1.30", "en");
    let orchestrator = Config::builder(identity).build().unwrap();
    let link = LinkConfig::new(
        PreSharedKey::new(*blake3::hash(b"bench").as_bytes()).unwrap(),
        i == 0,
    );
    let pair = Pair::new(
        PairConfig::new(vrrp, orchestrator, link),
        PersistentState::default(),
        now,
        wall,
    );
    let worker = SyncWorker::new(SyncConfig {
        interval: Duration::from_secs(60),
        ..SyncConfig::default()
    });
    InlinePair::new(pair, worker, MemStore::new())
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        World {
            t0,
            now: t0,
            nodes: [node(0, t0, wall), node(1, t0, wall)],
            wires: HashMap::new(),
            pending: VecDeque::new(),
            nonces: 0,
        }
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (self.now - self.t0)
    }

    fn drive(&mut self, i: usize) {
        let (now, wall) = (self.now, self.wall());
        loop {
            match self.nodes[i].poll_output(now, wall, 0) {
                Output::Wait(_) => return,
                Output::Persist(_)
                | Output::Announce
                | Output::Event(_)
                | Output::Sync(_)
                | Output::Transfer(_) => {}
                Output::Vrrp(p) => self
                    .pending
                    .push_back((1 - i, Delivery::Vrrp(p.bytes.into_vec(), p.src, p.dst))),
                Output::Command(c) => {
                    let pair = self.nodes[i].pair_mut();
                    pair.handle_command_result(now, c.id, CommandOutcome::Done);
                }
                Output::Dial(conn) => {
                    self.nonces = self.nonces.wrapping_add(2);
                    let (mine, theirs) = (Nonce([self.nonces; 32]), Nonce([self.nonces + 1; 32]));
                    if let Some(far) = self.nodes[1 - i].pair_mut().handle_accepted(
                        now,
                        theirs,
                        [127, 0, 0, 1 + i as u8].into(),
                    ) {
                        self.wires.insert((i, conn), (1 - i, far));
                        self.wires.insert((1 - i, far), (i, conn));
                        self.nodes[i].pair_mut().handle_dialed(now, conn, mine);
                    } else {
                        self.nodes[i].pair_mut().handle_dial_failed(now, conn);
                    }
                }
                Output::Send { conn, bytes } => {
                    if let Some(&(j, far)) = self.wires.get(&(i, conn)) {
                        self.pending.push_back((j, Delivery::Bytes(far, bytes)));
                    }
                }
                Output::Close { conn, .. } => {
                    if let Some((j, far)) = self.wires.remove(&(i, conn)) {
                        self.wires.remove(&(j, far));
                        self.pending.push_back((j, Delivery::Closed(far)));
                    }
                    self.nodes[i].pair_mut().handle_link_closed(now, conn);
                }
            }
        }
    }

    /// Both nodes driven and everything they sent delivered.
    fn settle(&mut self) {
        loop {
            self.drive(0);
            self.drive(1);
            let Some((to, d)) = self.pending.pop_front() else {
                return;
            };
            let (now, pair) = (self.now, self.nodes[to].pair_mut());
            match d {
                Delivery::Vrrp(bytes, src, dst) => {
                    let _ = pair.handle_vrrp_message(now, &bytes, RecvMeta { src, dst, ttl: TTL });
                }
                Delivery::Bytes(conn, bytes) => pair.handle_link_bytes(now, conn, &bytes),
                Delivery::Closed(conn) => pair.handle_link_closed(now, conn),
            }
        }
    }

    /// One step of virtual time: to the next deadline, its timers, and
    /// what follows from them.
    fn step(&mut self) {
        self.settle();
        let next = self.nodes.iter().filter_map(InlinePair::poll_timeout).min();
        self.now = next
            .unwrap_or(self.now)
            .max(self.now + Duration::from_micros(1));
        let (now, wall) = (self.now, self.wall());
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now, wall);
            }
        }
        self.settle();
    }

    /// One advertisement period: steps until 10 ms of virtual time passed.
    fn period(&mut self) {
        let end = self.now + Duration::from_millis(10);
        while self.now < end {
            self.step();
        }
    }

    fn roles(&self) -> [Role; 2] {
        [0, 1].map(|i| self.nodes[i].pair().orchestrator().role())
    }
}

/// Walks `buf` (one write per cache line), pushing the engines' data out
/// of the caches.
fn evict(buf: &mut [u8]) {
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    black_box(buf);
}

fn bench(c: &mut Criterion) {
    let mut w = World::new();
    // Elected, linked, synced once: the steady state.
    for _ in 0..500 {
        w.period();
    }
    assert_eq!(w.roles(), [Role::Master, Role::Backup], "not settled");
    assert!(w.nodes.iter().all(|n| n.pair().link_up()), "no peer link");
    let mut g = c.benchmark_group("pair_steady");
    g.bench_function("period_warm", |b| b.iter(|| w.period()));
    let mut other = vec![0u8; 8 << 20];
    g.bench_function("period_cold", |b| {
        b.iter_custom(|n| {
            let mut took = Duration::ZERO;
            for _ in 0..n {
                evict(&mut other);
                let t = Instant::now();
                w.period();
                took += t.elapsed();
            }
            took
        });
    });
    g.finish();
    // Still the steady state after all those periods.
    assert_eq!(
        w.roles(),
        [Role::Master, Role::Backup],
        "roles changed in the bench"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
