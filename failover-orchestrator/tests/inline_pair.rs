//! `pair::InlinePair`: two nodes, each a `Pair` with its `SyncWorker` on a
//! `MemStore` tree, driven only through the wrapper in virtual time, the
//! VRRP LAN and the peer link in memory. The Master's files reach the
//! Backup, the worker's timer runs the later rounds, no `Output::Sync`
//! ever reaches the driver, and a full link backlog holds the source back.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{
    ConnId, InlinePair, LinkConfig, Output, Pair, PairConfig, PairEvent, SYNC_BACKLOG_LIMIT,
    SyncConfig, SyncReport, SyncWorker,
};
use failover_orchestrator::{CommandOutcome, Config, Identity, PersistentState};
use sync_delta::frame::{Nonce, PreSharedKey};
use sync_delta::mem::{MemStore, View};
use vrrp_proto::{Interval, Priority, RecvMeta, TTL, Version, Vrid};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

enum Delivery {
    Vrrp(Vec<u8>, IpAddr, IpAddr),
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId),
}

struct World {
    t0: Instant,
    now: Instant,
    nodes: [InlinePair<MemStore>; 2],
    /// The link backlog each node's driver reports.
    backlog: [usize; 2],
    /// (node, conn) → (the other node, its end of the connection).
    wires: HashMap<(usize, ConnId), (usize, ConnId)>,
    pending: VecDeque<(usize, Delivery)>,
    events: Vec<(usize, Duration, PairEvent)>,
    /// Payloads each node's driver received on the transfer channel.
    transfers: [Vec<Vec<u8>>; 2],
    nonces: u8,
}

fn node(i: usize, store: MemStore, now: Instant, wall: SystemTime) -> InlinePair<MemStore> {
    let primary = Ipv4Addr::new(10, 0, 0, 1 + i as u8);
    let vrrp = vrrp_fsm::Config::builder(Version::V3, Vrid::new(7).unwrap(), primary.into())
        .priority(Priority([200, 100][i]))
        .interval(Interval::from_centis(10).unwrap())
        .preempt(vrrp_fsm::Preempt::Disabled)
        .accept_mode(vrrp_fsm::AcceptMode::Enabled)
        .address(VIP)
        .build()
        .unwrap();
    let identity = Identity::new(format!("pbx-{i}"), "5.1.30", "en");
    let orchestrator = Config::builder(identity).build().unwrap();
    let link = LinkConfig::new(
        PreSharedKey::new(*blake3::hash(b"inline").as_bytes()).unwrap(),
        i == 0,
    );
    let config = PairConfig::new(vrrp, orchestrator, link);
    let pair = Pair::new(config, PersistentState::default(), now, wall);
    let worker = SyncWorker::new(SyncConfig {
        interval: Duration::from_secs(2),
        ..SyncConfig::default()
    });
    InlinePair::new(pair, worker, store)
}

impl World {
    /// Node 0 (the higher priority) starts with `files` in its tree.
    fn new(files: &[(&str, &[u8])]) -> World {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut tree = MemStore::new();
        for (path, data) in files {
            tree.put_file(path, data, 0o640, 1);
        }
        World {
            t0,
            now: t0,
            nodes: [node(0, tree, t0, wall), node(1, MemStore::new(), t0, wall)],
            backlog: [0, 0],
            wires: HashMap::new(),
            pending: VecDeque::new(),
            events: Vec::new(),
            transfers: [Vec::new(), Vec::new()],
            nonces: 0,
        }
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (self.now - self.t0)
    }

    fn nonce(&mut self) -> Nonce {
        self.nonces += 1;
        Nonce([self.nonces; 32])
    }

    /// Carries out node `i`'s outputs until it waits.
    fn drive(&mut self, i: usize) {
        let (now, wall) = (self.now, self.wall());
        loop {
            match self.nodes[i].poll_output(now, wall, self.backlog[i]) {
                Output::Wait(_) => return,
                Output::Persist(_) | Output::Announce => {}
                Output::Transfer(payload) => self.transfers[i].push(payload),
                Output::Vrrp(p) => self
                    .pending
                    .push_back((1 - i, Delivery::Vrrp(p.bytes.into_vec(), p.src, p.dst))),
                Output::Command(c) => {
                    let pair = self.nodes[i].pair_mut();
                    pair.handle_command_result(now, c.id, CommandOutcome::Done);
                }
                Output::Dial(conn) => {
                    let (mine, theirs) = (self.nonce(), self.nonce());
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
                Output::Sync(order) => panic!("InlinePair handed out a sync order: {order:?}"),
                Output::Event(e) => self.events.push((i, now - self.t0, e)),
            }
        }
    }

    /// Drives both nodes and delivers what they sent until all is quiet.
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
                    let meta = RecvMeta { src, dst, ttl: TTL };
                    let _ = pair.handle_vrrp_message(now, &bytes, meta);
                }
                Delivery::Bytes(conn, bytes) => pair.handle_link_bytes(now, conn, &bytes),
                Delivery::Closed(conn) => pair.handle_link_closed(now, conn),
            }
        }
    }

    /// Runs virtual time, jumping to the next deadline, until `done`; the
    /// time it took, or `None` past `limit`.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&World) -> bool) -> Option<Duration> {
        let start = self.now;
        loop {
            self.settle();
            if done(self) {
                return Some(self.now - start);
            }
            let next = self
                .nodes
                .iter()
                .filter_map(InlinePair::poll_timeout)
                .min()?;
            // At least a millisecond on: a deadline no call clears
            // would otherwise stop the clock.
            self.now = next.max(self.now + Duration::from_millis(1));
            if self.now - start > limit {
                return None;
            }
            let (now, wall) = (self.now, self.wall());
            for n in &mut self.nodes {
                n.handle_timeout(now, wall);
            }
        }
    }

    fn holds(&self, i: usize, path: &str, data: &[u8]) -> bool {
        matches!(self.nodes[i].store().view().get(path), Some(View::File(d, ..)) if d == data)
    }

    fn role(&self, i: usize) -> Option<vrrp_fsm::State> {
        self.nodes[i]
            .pair()
            .router()
            .map(vrrp_fsm::VirtualRouter::state)
    }
}

#[test]
fn the_masters_tree_reaches_the_backup_with_the_worker_driven_inside() {
    let first = ("voicemail/100/msg0001.txt", b"hello".as_slice());
    let mut w = World::new(&[first]);
    let took = w.run_until(Duration::from_secs(30), |w| w.holds(1, first.0, first.1));
    assert!(took.is_some(), "not replicated; events: {:#?}", w.events);
    assert_eq!(w.role(0), Some(vrrp_fsm::State::Master));
    assert_eq!(w.role(1), Some(vrrp_fsm::State::Backup));
    let rounds = |w: &World| {
        let done = |e: &&(usize, Duration, PairEvent)| {
            e.0 == 1 && matches!(e.2, PairEvent::Sync(SyncReport::RoundDone(_)))
        };
        w.events.iter().filter(done).count()
    };
    assert!(rounds(&w) >= 1);

    // An Active replica's next round is the worker's deadline, and the
    // wrapper's deadline includes it.
    let backup = &w.nodes[1];
    let worker_next = backup.worker().poll_timeout();
    assert!(
        worker_next.is_some(),
        "an Active replica schedules its rounds"
    );
    let both = [backup.pair().poll_timeout(), worker_next];
    assert_eq!(backup.poll_timeout(), both.into_iter().flatten().min());

    // A later write travels on the worker's schedule, which only
    // `InlinePair::handle_timeout` runs here.
    let second = ("voicemail/100/msg0002.txt", b"again".as_slice());
    w.nodes[0]
        .store_mut()
        .put_file(second.0, second.1, 0o640, 2);
    let before = rounds(&w);
    let took = w.run_until(Duration::from_secs(10), |w| w.holds(1, second.0, second.1));
    assert!(took.is_some(), "second file not replicated");
    assert!(rounds(&w) > before);
}

#[test]
fn a_full_link_backlog_holds_the_sources_messages_back() {
    let file = ("config/pbx.xml", b"<pbx/>".as_slice());
    let mut w = World::new(&[file]);
    w.backlog[0] = SYNC_BACKLOG_LIMIT;
    let elected =
        |w: &World| w.role(0) == Some(vrrp_fsm::State::Master) && w.nodes[1].pair().link_up();
    assert!(w.run_until(Duration::from_secs(10), elected).is_some());
    // The Backup asks; the Master, its link full, sends nothing for it.
    let arrived = w.run_until(Duration::from_secs(5), |w| w.holds(1, file.0, file.1));
    assert_eq!(arrived, None, "replicated past a full backlog");

    // The sockets took the backlog: the next poll lets the messages go.
    w.backlog[0] = 0;
    let arrived = w.run_until(Duration::from_secs(10), |w| w.holds(1, file.0, file.1));
    assert!(arrived.is_some(), "not replicated once the backlog cleared");
}

#[test]
fn local_changes_in_a_rounds_way_are_reported_as_divergence() {
    let first = ("voicemail/100/msg0001.txt", b"hello".as_slice());
    let mut w = World::new(&[first]);
    let synced = w.run_until(Duration::from_secs(30), |w| w.holds(1, first.0, first.1));
    assert!(synced.is_some(), "not replicated; events: {:#?}", w.events);
    // The Master creates a mailbox directory; the Backup holds a stray
    // file of its own at that very path.
    w.nodes[0]
        .store_mut()
        .put_file("voicemail/200/msg0001.txt", b"new box", 0o640, 3);
    w.nodes[1]
        .store_mut()
        .put_file("voicemail/200", b"stray", 0o640, 3);
    let arrived = w.run_until(Duration::from_secs(10), |w| {
        w.holds(1, "voicemail/200/msg0001.txt", b"new box")
    });
    assert!(
        arrived.is_some(),
        "the round wedged; events: {:#?}",
        w.events
    );
    let diverged: Vec<_> = w
        .events
        .iter()
        .filter_map(|e| match &e.2 {
            PairEvent::Sync(SyncReport::Diverged(d)) if e.0 == 1 => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(diverged.len(), 1, "{diverged:?}");
    assert_eq!(diverged[0].quarantined, 1);
    let folder = diverged[0].folder.clone().expect("a quarantine folder");
    assert!(
        PairEvent::Sync(SyncReport::Diverged(diverged[0].clone()))
            .to_string()
            .contains(&folder)
    );
}

/// The driver's transfer channel: payloads arrive whole and in order at
/// the peer's driver, nothing is sent without a link or past the frame
/// limit; and a new identity (an install) reaches the peer's view.
#[test]
fn transfers_reach_the_peers_driver_in_order_and_identities_follow_installs() {
    let mut w = World::new(&[("pbx.conf", b"trunk=1".as_slice())]);
    let now = w.now;
    assert!(
        !w.nodes[0].pair_mut().send_transfer(now, b"too early"),
        "sent without a link"
    );
    let linked = w.run_until(Duration::from_secs(30), |w| {
        w.nodes[0].pair().link_up() && w.nodes[1].pair().link_up()
    });
    assert!(linked.is_some(), "no link; events: {:#?}", w.events);
    let payloads: Vec<Vec<u8>> = (0..20u8)
        .map(|k| vec![k; 1000 + usize::from(k) * 7919])
        .collect();
    let now = w.now;
    for p in &payloads {
        assert!(w.nodes[0].pair_mut().send_transfer(now, p));
    }
    let too_big = vec![0u8; sync_delta::frame::MAX_PAYLOAD as usize + 1];
    assert!(!w.nodes[0].pair_mut().send_transfer(now, &too_big));
    w.settle();
    assert_eq!(w.transfers[1], payloads);
    assert!(w.transfers[0].is_empty());

    // An install on node 1: its new firmware shows in node 0's view of
    // its peer, and as a parity finding there.
    let now = w.now;
    w.nodes[1]
        .pair_mut()
        .set_identity(now, Identity::new("pbx-1", "5.2.0", "en"));
    w.settle();
    let status = w.nodes[0].pair().orchestrator().status(w.now);
    assert_eq!(status.peer.map(|p| p.firmware).as_deref(), Some("5.2.0"));
    assert_eq!(status.findings.len(), 1, "{:?}", status.findings);
}
