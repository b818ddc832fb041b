//! `minimal-pair`: two nodes of the pair engine (`failover_orchestrator::pair`)
//! driven by one single-threaded `std` loop, as a vendor's own event loop
//! would drive them: VRRPv3 over UDP on loopback (127.0.0.1 and 127.0.0.2:
//! the election tells the nodes apart by their primary address), the peer
//! link over TCP, each tree a temporary directory. Each node is an
//! `InlinePair`: the engine with its sync worker run inline. It prints the
//! election, a file replicated, the Master's crash and the takeover, its
//! restart and an operator swap back; exit status 1 names a step that did
//! not happen within 20 s. Address claims and services are printed, not
//! carried out.
//!
//! ```text
//! cargo run --example minimal-pair
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{ConnId, InlinePair, LinkConfig, Output, Pair, PairConfig};
use failover_orchestrator::pair::{PairEvent, SyncConfig, SyncReport, SyncWorker};
use failover_orchestrator::{Command, CommandOutcome, Config, Identity, OperatorRequest};
use failover_orchestrator::{PersistentState, Role, ServiceId, ServiceSpec};
use sync_delta::FsStore;
use sync_delta::frame::{Nonce, PreSharedKey};
use vrrp_proto::{RecvMeta, TTL};

type Res<T> = Result<T, Box<dyn Error>>;

const LIMIT: Duration = Duration::from_secs(20);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const NAMES: [&str; 2] = ["pbx-a", "pbx-b"];

/// What survives a crash: the addresses, the tree, the persisted state.
struct Node {
    dir: PathBuf,
    vrrp: SocketAddr,
    link: SocketAddr,
    persisted: PersistentState,
    run: Option<Running>,
}

/// A running node: the engine (with its sync worker and tree) and its
/// sockets, each connection with the bytes its socket has not taken yet.
struct Running {
    node: InlinePair<FsStore>,
    udp: UdpSocket,
    listener: TcpListener,
    conns: HashMap<ConnId, (TcpStream, Vec<u8>)>,
}

struct World {
    t0: Instant,
    key: PreSharedKey,
    nodes: [Node; 2],
    /// Every event of the engines: the node, when the driver saw it, what.
    seen: Vec<(usize, Instant, PairEvent)>,
}

fn random32() -> std::io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

impl World {
    fn say(&self, i: usize, line: &str) {
        let secs = self.t0.elapsed().as_secs_f64();
        println!("[{secs:6.3} s] {}: {line}", NAMES[i]);
    }

    /// Boots node `i` from its persisted state, on its addresses (port 0,
    /// any, the first time; the peer's ports are read when used).
    fn start(&mut self, i: usize) -> Res<()> {
        let (me, peer) = (&self.nodes[i], &self.nodes[1 - i]);
        let (udp, listener) = (UdpSocket::bind(me.vrrp)?, TcpListener::bind(me.link)?);
        let vrid = vrrp_proto::Vrid::new(51).ok_or("vrid")?;
        let vrrp = vrrp_fsm::Config::builder(vrrp_proto::Version::V3, vrid, me.vrrp.ip())
            .priority(vrrp_proto::Priority([200, 100][i]))
            .interval(vrrp_proto::Interval::from_centis(10)?)
            .preempt(vrrp_fsm::Preempt::Disabled)
            .accept_mode(vrrp_fsm::AcceptMode::Enabled)
            .address(VIP)
            .peer(peer.vrrp.ip())
            .build()?;
        let orchestrator = Config::builder(Identity::new(NAMES[i], "5.1.30", "en"))
            .service(ServiceSpec::new("db"))
            .service(ServiceSpec::new("sip").after(&[ServiceId(0)]))
            .build()?;
        let dials = LinkConfig::dials_by_address(me.link, peer.link);
        let config = PairConfig::new(vrrp, orchestrator, LinkConfig::new(self.key.clone(), dials));
        let (now, state) = (Instant::now(), me.persisted.clone());
        let pair = Pair::new(config, state, now, SystemTime::now());
        let interval = Duration::from_secs(2);
        let worker = SyncWorker::new(SyncConfig {
            interval,
            ..SyncConfig::default()
        });
        // One hashing thread: none is spawned.
        let store = FsStore::new(&me.dir)?.with_threads(1);
        udp.set_nonblocking(true)?;
        listener.set_nonblocking(true)?;
        let n = &mut self.nodes[i];
        (n.vrrp, n.link) = (udp.local_addr()?, listener.local_addr()?);
        let node = InlinePair::new(pair, worker, store);
        let conns = HashMap::new();
        n.run = Some(Running {
            node,
            udp,
            listener,
            conns,
        });
        self.drive(i);
        Ok(())
    }

    /// Carries out node `i`'s outputs in order until it waits.
    fn drive(&mut self, i: usize) {
        let (peer_link, peer_vrrp) = (self.nodes[1 - i].link, self.nodes[1 - i].vrrp);
        let Some(mut r) = self.nodes[i].run.take() else {
            return;
        };
        loop {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let backlog = r.conns.values().map(|c| c.1.len()).sum();
            let output = r.node.poll_output(now, wall, backlog);
            let pair = r.node.pair_mut();
            match output {
                Output::Wait(_) => break,
                Output::Persist(record) => self.nodes[i].persisted = record.state,
                Output::Vrrp(p) => drop(r.udp.send_to(&p.bytes, peer_vrrp)),
                Output::Announce => self.say(i, "Announce (printed, not sent)"),
                // The in-process answer to a restart (the swap's last step).
                Output::Command(c) if c.command == Command::RestartNode => {
                    self.say(i, "RestartNode: a soft restart");
                    pair.soft_restart(now, wall);
                }
                Output::Command(c) => {
                    use Command::{ClaimAddress, ReleaseAddress, StartService, StopService};
                    let (id, c) = (c.id, c.command);
                    if let ClaimAddress | ReleaseAddress | StartService(_) | StopService(_) = c {
                        self.say(i, &format!("{c:?} (printed, not done)"));
                    }
                    pair.handle_command_result(now, id, CommandOutcome::Done);
                }
                Output::Dial(conn) => {
                    let s = TcpStream::connect_timeout(&peer_link, Duration::from_secs(1));
                    let s = s.and_then(|s| s.set_nonblocking(true).map(|()| s));
                    match (s, random32()) {
                        (Ok(s), Ok(nonce)) => {
                            r.conns.insert(conn, (s, Vec::new()));
                            pair.handle_dialed(now, conn, Nonce(nonce));
                        }
                        _ => pair.handle_dial_failed(now, conn),
                    }
                }
                Output::Send { conn, bytes } => {
                    let c = r.conns.get_mut(&conn);
                    if c.is_some_and(|c| flush(c, &bytes).is_err()) {
                        r.conns.remove(&conn);
                        pair.handle_link_closed(now, conn);
                    }
                }
                Output::Close { conn, .. } => {
                    if let Some((s, _)) = r.conns.remove(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    pair.handle_link_closed(now, conn);
                }
                // `InlinePair` hands the sync worker its orders itself.
                Output::Sync(_) => {}
                Output::Event(e) => {
                    if let Some(line) = describe(&e) {
                        self.say(i, &line);
                    }
                    self.seen.push((i, now, e));
                }
            }
        }
        self.nodes[i].run = Some(r);
    }

    /// Feeds node `i` one input from its sockets; false when none waits.
    fn input(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let dst = self.nodes[i].vrrp.ip();
        let Some(r) = self.nodes[i].run.as_mut() else {
            return false;
        };
        let (now, pair) = (Instant::now(), r.node.pair_mut());
        if let Ok((n, from)) = r.udp.recv_from(buf) {
            // UDP carries no TTL: 255, as the examples' UDP transport.
            let meta = RecvMeta {
                src: from.ip(),
                dst,
                ttl: TTL,
            };
            let _ = pair.handle_vrrp_message(now, &buf[..n], meta);
            return true;
        }
        if let Ok((s, _)) = r.listener.accept() {
            if let (Ok(nonce), Ok(())) = (random32(), s.set_nonblocking(true)) {
                if let Some(id) = pair.handle_accepted(now, Nonce(nonce)) {
                    r.conns.insert(id, (s, Vec::new()));
                }
            }
            return true;
        }
        // Each connection writes what it holds, then reads.
        let read = r.conns.iter_mut().find_map(|(id, c)| {
            match flush(c, &[]).and_then(|()| c.0.read(buf)) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                res => Some((*id, res)),
            }
        });
        match read {
            None => return false,
            Some((id, Ok(n))) if n > 0 => pair.handle_link_bytes(now, id, &buf[..n]),
            // End of stream or an error: the connection is gone.
            Some((id, _)) => {
                r.conns.remove(&id);
                pair.handle_link_closed(now, id);
            }
        }
        true
    }

    /// One turn of the loop: each node's inputs, then its timers, then a
    /// nap until the earliest deadline, at most 2 ms (this loop polls).
    fn step(&mut self, buf: &mut [u8]) {
        for i in 0..2 {
            while self.input(i, buf) {
                self.drive(i);
            }
            let now = Instant::now();
            let Some(r) = self.nodes[i].run.as_mut() else {
                continue;
            };
            if r.node.poll_timeout().is_some_and(|t| t <= now) {
                // The wall clock goes in with the timers (heartbeats: 1 s).
                r.node.pair_mut().handle_wall_clock(now, SystemTime::now());
                r.node.handle_timeout(now);
                self.drive(i);
            }
        }
        let runs = self.nodes.iter().filter_map(|n| n.run.as_ref());
        let next = runs.filter_map(|r| r.node.poll_timeout()).min();
        let nap = next.map_or(LIMIT, |t| t.saturating_duration_since(Instant::now()));
        std::thread::sleep(nap.min(Duration::from_millis(2)));
    }

    /// Runs the loop until `found` gives something, at most [`LIMIT`].
    fn wait<T>(&mut self, what: &str, found: impl Fn(&World) -> Option<T>) -> Res<T> {
        let (until, mut buf) = (Instant::now() + LIMIT, vec![0u8; 64 * 1024]);
        loop {
            if let Some(t) = found(self) {
                return Ok(t);
            }
            if Instant::now() > until {
                return Err(format!("missing after {} s: {what}", LIMIT.as_secs()).into());
            }
            self.step(&mut buf);
        }
    }

    /// Runs the loop until node `i` prints a line with `what` (among the
    /// events after the first `mark`); ms from the start to when it was seen.
    fn until(&mut self, mark: usize, i: usize, what: &str) -> Res<u128> {
        let found = |w: &World| {
            let mut seen = w.seen[mark..].iter().filter(|e| e.0 == i);
            let line =
                |e: &&(usize, Instant, PairEvent)| describe(&e.2).is_some_and(|l| l.contains(what));
            seen.find(line).map(|e| e.1)
        };
        let at = self.wait(&format!("{}: \"{what}\"", NAMES[i]), found)?;
        Ok((at - self.t0).as_millis())
    }

    /// Milliseconds since the start.
    fn ms(&self) -> u128 {
        self.t0.elapsed().as_millis()
    }
}

/// Queues `bytes` and writes what the socket takes.
fn flush(c: &mut (TcpStream, Vec<u8>), bytes: &[u8]) -> std::io::Result<()> {
    c.1.extend_from_slice(bytes);
    while !c.1.is_empty() {
        match c.0.write(&c.1) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => drop(c.1.drain(..n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The line printed for an event, if any.
fn describe(e: &PairEvent) -> Option<String> {
    use PairEvent::{Election, LinkDown, LinkUp, Orchestrator, Sync};
    use failover_orchestrator::Event::{Milestone, PlanFinished, PlanStarted, ProcedureFinished};
    use vrrp_fsm::Event::{MasterHeard, StateChange};
    Some(match e {
        Election(StateChange { from, to, reason }) => format!("{from:?} -> {to:?} ({reason:?})"),
        Election(MasterHeard { address, priority }) => {
            format!("hears the Master {address} (priority {})", priority.0)
        }
        Orchestrator(PlanStarted { kind, .. }) => format!("plan {kind:?} started"),
        Orchestrator(PlanFinished { kind, outcome, .. }) => {
            format!("plan {kind:?} finished: {outcome:?}")
        }
        Orchestrator(Milestone(m)) => {
            format!("milestone {:?} at {} ms from detection", m.what, m.at_ms)
        }
        Orchestrator(ProcedureFinished { id, outcome }) => {
            format!("procedure {id} finished: {outcome:?}")
        }
        LinkUp => "peer link up".into(),
        LinkDown => "peer link down".into(),
        Sync(SyncReport::RoundDone(r)) => format!(
            "sync round committed generation {} ({} changed, {} fetched)",
            r.generation, r.changed, r.fetched
        ),
        _ => return None,
    })
}

/// The walk-through (pbx-a, the higher priority, is elected first); `Err`
/// names the step that did not happen.
fn scenario(w: &mut World) -> Res<()> {
    let (a, b) = (0, 1);
    let t_m = w.until(0, a, "-> Master")?;
    let t_b = w.until(0, b, "hears the Master")?;
    println!("-- election: pbx-a Master at {t_m} ms; pbx-b Backup, hears it at {t_b} ms");

    let t_s = w.until(0, b, "sync round committed")?;
    let path = "voicemail/100/msg0001.txt";
    let data = format!("{:?}", SystemTime::now());
    let (src, dst) = (w.nodes[a].dir.join(path), w.nodes[b].dir.join(path));
    std::fs::create_dir_all(src.parent().ok_or("path")?)?;
    std::fs::write(&src, &data)?;
    let t_w = w.ms();
    println!("-- pbx-b synced at {t_s} ms; pbx-a writes {path} at {t_w} ms");
    let there = |_: &World| std::fs::read(&dst).is_ok_and(|d| d == data.as_bytes());
    w.wait(&format!("{path} on pbx-b"), |w| there(w).then_some(()))?;
    println!("-- replicated: {} at {} ms", dst.display(), w.ms());

    let (mark, t_c) = (w.seen.len(), w.ms());
    w.nodes[a].run = None;
    println!("-- pbx-a stopped at {t_c} ms (a crash: its engine and sockets dropped)");
    let t_m = w.until(mark, b, "-> Master")? - t_c;
    let t_p = w.until(mark, b, "plan Takeover finished")? - t_c;
    println!("-- takeover: pbx-b Master {t_m} ms and its plan done {t_p} ms after the crash");

    let (mark, term) = (w.seen.len(), w.nodes[a].persisted.highest_epoch.term);
    let t_r = w.ms();
    println!("-- pbx-a restarts at {t_r} ms from its persisted state (newest term {term})");
    w.start(a)?;
    let t_b = w.until(mark, a, "hears the Master")?;
    let t_s = w.until(mark, a, "sync round")?;
    println!("-- rejoined: pbx-a Backup, hears pbx-b at {t_b} ms, synced at {t_s} ms");
    // The swap's preflight wants the Master to know its peer as Backup.
    let known = |w: &World| {
        let pair = w.nodes[b].run.as_ref()?.node.pair();
        let status = pair.orchestrator().status(Instant::now());
        let p = status.peer.as_ref()?;
        (p.up && p.role == Some(Role::Backup)).then(|| status.one_liner())
    };
    let line = w.wait("pbx-b knows pbx-a as Backup", known)?;
    println!("-- pbx-b status at {} ms: {line}", w.ms());

    let (mark, t_q) = (w.seen.len(), w.ms());
    let pair = w.nodes[b].run.as_mut().ok_or("no Master")?.node.pair_mut();
    let swap = pair.handle_operator(Instant::now(), OperatorRequest::Swap);
    w.drive(b);
    let id = swap.map_err(|e| format!("the swap was refused: {e}"))?;
    println!("-- operator on pbx-b at {t_q} ms: swap (procedure {id})");
    let t_m = w.until(mark, a, "-> Master")?;
    let t_b = w.until(mark, b, "-> Backup")?;
    println!("-- swapped back: pbx-a Master at {t_m} ms, pbx-b Backup at {t_b} ms");
    let t_f = w.until(mark, b, &format!("procedure {id} finished: Completed"))?;
    println!("-- the swap procedure on pbx-b completed at {t_f} ms");
    Ok(())
}

/// Two nodes on 127.0.0.1 and 127.0.0.2, their trees under `root`.
fn run(t0: Instant, root: &Path) -> Res<()> {
    let node = |i: usize| -> Res<Node> {
        let (dir, addr) = (
            root.join(NAMES[i]),
            SocketAddr::from(([127, 0, 0, 1 + i as u8], 0)),
        );
        std::fs::create_dir_all(&dir)?;
        let (persisted, run) = (PersistentState::default(), None);
        Ok(Node {
            dir,
            vrrp: addr,
            link: addr,
            persisted,
            run,
        })
    };
    let (nodes, key) = (
        [node(0)?, node(1)?],
        // 32 random bytes, as a key file holds them.
        PreSharedKey::new(random32()?).map_err(std::io::Error::other)?,
    );
    let mut w = World {
        t0,
        key,
        nodes,
        seen: Vec::new(),
    };
    w.start(0)?;
    w.start(1)?;
    scenario(&mut w)
}

fn main() -> ExitCode {
    let (t0, pid) = (Instant::now(), std::process::id());
    let nanos = SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let root = std::env::temp_dir().join(format!("minimal-pair-{pid}-{nanos}"));
    let result = run(t0, &root);
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = result {
        println!("minimal-pair: FAILED: {e}");
        return ExitCode::FAILURE;
    }
    println!("minimal-pair: done in {:.2} s", t0.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
