//! `minimal-pair`: two nodes of the pair engine (`failover_orchestrator::pair`)
//! driven by one single-threaded `std` loop, as a vendor's own event loop
//! would drive them: VRRPv3 over UDP on loopback (127.0.0.1 and 127.0.0.2:
//! the election tells the nodes apart by their primary address), the peer
//! link over TCP, each tree a temporary directory. It prints the election, a
//! file replicated, the Master's crash and the takeover, its restart and an
//! operator swap back; exit status 1 names a step that did not happen within
//! 20 s. Address claims and services are printed, not carried out.
//!
//! ```text
//! cargo run --example minimal-pair
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{ConnId, LinkConfig, Output, Pair, PairConfig, PairEvent};
use failover_orchestrator::pair::{SyncConfig, SyncReport, SyncWorker};
use failover_orchestrator::{Command, CommandOutcome, Config, Event, Identity, OperatorRequest};
use failover_orchestrator::{PersistentState, ProtocolVersion, Role, ServiceId, ServiceSpec};
use sync_delta::FsStore;
use sync_delta::frame::{Nonce, PreSharedKey};
use vrrp_proto::{RecvMeta, TTL};

type Res<T> = Result<T, Box<dyn Error>>;

const LIMIT: Duration = Duration::from_secs(20);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

/// What survives a crash: the addresses, the tree, the persisted state.
struct Node {
    name: &'static str,
    dir: PathBuf,
    vrrp: SocketAddr,
    link: SocketAddr,
    persisted: PersistentState,
    run: Option<Running>,
}

/// A running node: the engine, its sync worker and its sockets.
struct Running {
    pair: Pair,
    worker: SyncWorker,
    store: FsStore,
    udp: UdpSocket,
    listener: TcpListener,
    /// Each connection with the bytes its socket has not taken yet.
    conns: HashMap<ConnId, (TcpStream, Vec<u8>)>,
    deadline: Option<Instant>,
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

fn say(t0: Instant, at: Instant, who: &str, line: &str) {
    println!("[{:6.3} s] {who}: {line}", (at - t0).as_secs_f64());
}

impl World {
    fn config(&self, i: usize) -> Res<PairConfig> {
        let (me, peer) = (&self.nodes[i], &self.nodes[1 - i]);
        let vrid = vrrp_proto::Vrid::new(51).ok_or("vrid")?;
        let vrrp = vrrp_fsm::Config::builder(vrrp_proto::Version::V3, vrid, me.vrrp.ip())
            .priority(vrrp_proto::Priority([200, 100][i]))
            .interval(vrrp_proto::Interval::from_centis(10)?)
            .preempt(vrrp_fsm::Preempt::Disabled)
            .accept_mode(vrrp_fsm::AcceptMode::Enabled)
            .address(VIP)
            .peer(peer.vrrp.ip())
            .build()?;
        let identity = Identity {
            node_id: me.name.into(),
            firmware: "5.1.30".into(),
            language_pack: "en".into(),
            licences: vec![],
            protocol: ProtocolVersion::CURRENT,
        };
        let orchestrator = Config::builder(identity)
            .service(ServiceSpec::new("db"))
            .service(ServiceSpec::new("sip").after(&[ServiceId(0)]))
            .build()?;
        let dials = LinkConfig::dials_by_address(me.link, peer.link);
        let (link, vrrp_datagrams) = (LinkConfig::new(self.key.clone(), dials), false);
        Ok(PairConfig {
            vrrp,
            orchestrator,
            link,
            vrrp_datagrams,
        })
    }

    /// Boots node `i` from its persisted state, on its addresses (port 0,
    /// any, the first time; the peer's ports are read when used).
    fn start(&mut self, i: usize) -> Res<()> {
        let n = &mut self.nodes[i];
        let (udp, listener) = (UdpSocket::bind(n.vrrp)?, TcpListener::bind(n.link)?);
        udp.set_nonblocking(true)?;
        listener.set_nonblocking(true)?;
        (n.vrrp, n.link) = (udp.local_addr()?, listener.local_addr()?);
        // One hashing thread: none is spawned.
        let store = FsStore::new(&n.dir)?.with_threads(1);
        let state = n.persisted.clone();
        let interval = Duration::from_secs(2);
        let sync = SyncConfig {
            interval,
            ..SyncConfig::default()
        };
        let pair = Pair::new(self.config(i)?, state, Instant::now(), SystemTime::now());
        let (worker, conns, deadline) = (SyncWorker::new(sync), HashMap::new(), None);
        let run = Running {
            pair,
            worker,
            store,
            udp,
            listener,
            conns,
            deadline,
        };
        self.nodes[i].run = Some(run);
        self.drive(i);
        Ok(())
    }

    /// Carries out node `i`'s outputs in order until it waits, with the sync
    /// worker's messages and reports fed in first.
    fn drive(&mut self, i: usize) {
        let (peer_link, peer_vrrp) = (self.nodes[1 - i].link, self.nodes[1 - i].vrrp);
        let (t0, node) = (self.t0, &mut self.nodes[i]);
        let Some(r) = node.run.as_mut() else { return };
        loop {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let mut fed = false;
            // A source reads file data here: only while the sockets keep up.
            while r.conns.values().all(|c| c.1.len() < 1 << 20) {
                let Some(m) = r.worker.poll_transmit(now, &mut r.store) else {
                    break;
                };
                r.pair.handle_sync_message(now, &m);
                fed = true;
            }
            while let Some(report) = r.worker.poll_report() {
                r.pair.handle_sync_report(now, report);
                fed = true;
            }
            match r.pair.poll_output() {
                Output::Wait(d) => {
                    r.deadline = d;
                    if !fed {
                        return;
                    }
                }
                Output::Persist(record) => node.persisted = record.state,
                Output::Vrrp(p) => drop(r.udp.send_to(&p.bytes, peer_vrrp)),
                Output::Announce => say(t0, now, node.name, "Announce (printed, not sent)"),
                // The in-process answer to a restart (the swap's last step).
                Output::Command(c) if c.command == Command::RestartNode => {
                    say(t0, now, node.name, "RestartNode: a soft restart");
                    r.pair.soft_restart(now, wall);
                }
                Output::Command(c) => {
                    use Command::{ClaimAddress, ReleaseAddress, StartService, StopService};
                    let shown = [ClaimAddress, ReleaseAddress].contains(&c.command);
                    if shown || matches!(c.command, StartService(_) | StopService(_)) {
                        let line = format!("{:?} (printed, not done)", c.command);
                        say(t0, now, node.name, &line);
                    }
                    r.pair
                        .handle_command_result(now, c.id, CommandOutcome::Done);
                }
                Output::Dial(conn) => {
                    let s = TcpStream::connect_timeout(&peer_link, Duration::from_secs(1));
                    let s = s.and_then(|s| s.set_nonblocking(true).map(|()| s));
                    match (s, random32()) {
                        (Ok(s), Ok(nonce)) => {
                            r.conns.insert(conn, (s, Vec::new()));
                            r.pair.handle_dialed(now, conn, Nonce(nonce));
                        }
                        _ => r.pair.handle_dial_failed(now, conn),
                    }
                }
                Output::Send { conn, bytes } => {
                    let c = r.conns.get_mut(&conn);
                    if c.is_some_and(|c| flush(c, &bytes).is_err()) {
                        r.conns.remove(&conn);
                        r.pair.handle_link_closed(now, conn);
                    }
                }
                Output::Close { conn, .. } => {
                    if let Some((s, _)) = r.conns.remove(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    r.pair.handle_link_closed(now, conn);
                }
                Output::Sync(o) => r.worker.handle_order(now, wall, o, &mut r.store),
                Output::Event(e) => {
                    if let Some(line) = describe(&e) {
                        say(t0, now, node.name, &line);
                    }
                    self.seen.push((i, now, e));
                }
            }
        }
    }

    /// Feeds node `i` one input from its sockets; false when none waits.
    fn input(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let dst = self.nodes[i].vrrp.ip();
        let Some(r) = self.nodes[i].run.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if let Ok((n, from)) = r.udp.recv_from(buf) {
            // UDP carries no TTL: 255, as the examples' UDP transport.
            let meta = RecvMeta {
                src: from.ip(),
                dst,
                ttl: TTL,
            };
            let _ = r.pair.handle_vrrp_message(now, &buf[..n], meta);
            return true;
        }
        if let Ok((s, _)) = r.listener.accept() {
            if let (Ok(nonce), Ok(())) = (random32(), s.set_nonblocking(true)) {
                if let Some(id) = r.pair.handle_accepted(now, Nonce(nonce)) {
                    r.conns.insert(id, (s, Vec::new()));
                }
            }
            return true;
        }
        let read = r.conns.iter_mut().find_map(|(id, c)| {
            match flush(c, &[]).and_then(|()| c.0.read(buf)) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                res => Some((*id, res)),
            }
        });
        match read {
            None => return false,
            Some((id, Ok(n))) if n > 0 => r.pair.handle_link_bytes(now, id, &buf[..n]),
            // End of stream or an error: the connection is gone.
            Some((id, _)) => {
                r.conns.remove(&id);
                r.pair.handle_link_closed(now, id);
            }
        }
        true
    }

    /// One turn of the loop: each node's inputs, then its timers, then a
    /// nap until the earliest deadline, at most 2 ms (this loop polls).
    fn step(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for i in 0..2 {
            while self.input(i, &mut buf) {
                self.drive(i);
            }
            let Some(r) = self.nodes[i].run.as_mut() else {
                continue;
            };
            let now = Instant::now();
            if r.worker.poll_timeout().is_some_and(|t| t <= now) {
                r.worker.handle_timeout(now, &mut r.store);
            }
            if r.deadline.is_some_and(|t| t <= now) {
                // The wall clock goes in with the timers (heartbeats: 1 s).
                r.pair.handle_wall_clock(now, SystemTime::now());
                r.pair.handle_timeout(now);
            }
            self.drive(i);
        }
        let runs = self.nodes.iter().filter_map(|n| n.run.as_ref());
        let next = runs.flat_map(|r| [r.deadline, r.worker.poll_timeout()]);
        let nap = next
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        std::thread::sleep(nap.unwrap_or(LIMIT).min(Duration::from_millis(2)));
    }

    /// Milliseconds since the start.
    fn ms(&self) -> u128 {
        self.t0.elapsed().as_millis()
    }

    /// Runs the loop until `found` gives something, at most [`LIMIT`].
    fn wait<T>(&mut self, what: &str, found: impl Fn(&World) -> Option<T>) -> Res<T> {
        let until = Instant::now() + LIMIT;
        loop {
            if let Some(t) = found(self) {
                return Ok(t);
            }
            if Instant::now() > until {
                return Err(format!("missing after {} s: {what}", LIMIT.as_secs()).into());
            }
            self.step();
        }
    }

    /// Runs the loop until node `i` prints a line with `what` (among the
    /// events after the first `mark`); ms from the start to when it was seen.
    fn until(&mut self, mark: usize, i: usize, what: &str) -> Res<u128> {
        let found = |w: &World| {
            let mut seen = w.seen[mark..].iter().filter(|e| e.0 == i);
            seen.find(|e| describe(&e.2).is_some_and(|l| l.contains(what)))
                .map(|e| e.1)
        };
        let at = self.wait(&format!("{}: \"{what}\"", self.nodes[i].name), found)?;
        Ok((at - self.t0).as_millis())
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
    Some(match e {
        PairEvent::Election(vrrp_fsm::Event::StateChange { from, to, reason }) => {
            format!("{from:?} -> {to:?} ({reason:?})")
        }
        PairEvent::Election(vrrp_fsm::Event::MasterHeard { address, priority }) => {
            format!("hears the Master {address} (priority {})", priority.0)
        }
        PairEvent::Orchestrator(Event::PlanStarted { kind, .. }) => {
            format!("plan {kind:?} started")
        }
        PairEvent::Orchestrator(Event::PlanFinished { kind, outcome, .. }) => {
            format!("plan {kind:?} finished: {outcome:?}")
        }
        PairEvent::Orchestrator(Event::Milestone(m)) => {
            format!("milestone {:?} at {} ms from detection", m.what, m.at_ms)
        }
        PairEvent::Orchestrator(Event::ProcedureFinished { id, outcome }) => {
            format!("procedure {id} finished: {outcome:?}")
        }
        PairEvent::LinkUp => "peer link up".into(),
        PairEvent::LinkDown => "peer link down".into(),
        PairEvent::Sync(SyncReport::RoundDone(s)) => format!(
            "sync round committed generation {} ({} changed, {} fetched)",
            s.generation, s.changed, s.fetched
        ),
        _ => return None,
    })
}

/// The walk-through; `Err` names the step that did not happen.
fn scenario(w: &mut World) -> Res<()> {
    let master = |e: &PairEvent| describe(e).is_some_and(|l| l.contains("-> Master"));
    let won = |w: &World| w.seen.iter().find(|e| master(&e.2)).map(|e| e.0);
    let m = w.wait("a node elected Master", won)?;
    let (b, a_name, b_name) = (1 - m, w.nodes[m].name, w.nodes[1 - m].name);
    let t_m = w.until(0, m, "-> Master")?;
    let t_b = w.until(0, b, "hears the Master")?;
    println!("-- election: {a_name} Master at {t_m} ms; {b_name} Backup, hears it at {t_b} ms");

    let t_s = w.until(0, b, "sync round committed")?;
    let path = "voicemail/100/msg0001.txt";
    let data = format!("{:?}", SystemTime::now());
    let (src, dst) = (w.nodes[m].dir.join(path), w.nodes[b].dir.join(path));
    std::fs::create_dir_all(src.parent().ok_or("path")?)?;
    std::fs::write(&src, &data)?;
    println!(
        "-- {b_name} synced at {t_s} ms; {a_name} writes {path} at {} ms",
        w.ms()
    );
    let there = |_: &World| std::fs::read(&dst).is_ok_and(|d| d == data.as_bytes());
    w.wait(&format!("{path} on {b_name}"), |w| there(w).then_some(()))?;
    println!("-- replicated: {} at {} ms", dst.display(), w.ms());

    let mark = w.seen.len();
    w.nodes[m].run = None;
    let t_c = w.ms();
    println!("-- {a_name} stopped at {t_c} ms (a crash: its engine and sockets dropped)");
    let t_m = w.until(mark, b, "-> Master")? - t_c;
    let t_p = w.until(mark, b, "plan Takeover finished")? - t_c;
    println!("-- takeover: {b_name} Master {t_m} ms and its plan done {t_p} ms after the crash");

    let mark = w.seen.len();
    let term = w.nodes[m].persisted.highest_epoch.term;
    println!(
        "-- {a_name} restarts at {} ms from its persisted state (newest term {term})",
        w.ms()
    );
    w.start(m)?;
    let t_b = w.until(mark, m, "hears the Master")?;
    let t_s = w.until(mark, m, "sync round")?;
    println!("-- rejoined: {a_name} Backup, hears {b_name} at {t_b} ms, synced at {t_s} ms");
    // The swap's preflight wants the Master to know its peer as Backup.
    let known = |w: &World| {
        let r = w.nodes[b].run.as_ref()?;
        let status = r.pair.orchestrator().status(Instant::now());
        let p = status.peer.as_ref()?;
        (p.up && p.role == Some(Role::Backup)).then(|| status.one_liner())
    };
    let line = w.wait(&format!("{b_name} knows {a_name} as Backup"), known)?;
    println!("-- {b_name} status at {} ms: {line}", w.ms());

    let (mark, t_q) = (w.seen.len(), w.ms());
    let r = w.nodes[b].run.as_mut().ok_or("no Master")?;
    let swap = r
        .pair
        .handle_operator(Instant::now(), OperatorRequest::Swap);
    w.drive(b);
    let id = swap.map_err(|e| format!("the swap was refused: {e}"))?;
    println!("-- operator on {b_name} at {t_q} ms: swap (procedure {id})");
    let t_m = w.until(mark, m, "-> Master")?;
    let t_b = w.until(mark, b, "-> Backup")?;
    println!("-- swapped back: {a_name} Master at {t_m} ms, {b_name} Backup at {t_b} ms");
    let t_f = w.until(mark, b, &format!("procedure {id} finished: Completed"))?;
    println!("-- the swap procedure on {b_name} completed at {t_f} ms");
    Ok(())
}

fn main() -> ExitCode {
    let (t0, pid) = (Instant::now(), std::process::id());
    let nanos = SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let root = std::env::temp_dir().join(format!("minimal-pair-{pid}-{nanos}"));
    let node = |name: &'static str, ip: [u8; 4]| Node {
        name,
        dir: root.join(name),
        vrrp: SocketAddr::from((ip, 0)),
        link: SocketAddr::from((ip, 0)),
        persisted: PersistentState::default(),
        run: None,
    };
    let nodes = [node("pbx-a", [127, 0, 0, 1]), node("pbx-b", [127, 0, 0, 2])];
    let result = (|| -> Res<()> {
        let (key, seen) = (PreSharedKey::from_secret(&random32()?), Vec::new());
        let mut w = World {
            t0,
            key,
            nodes,
            seen,
        };
        for n in &w.nodes {
            std::fs::create_dir_all(&n.dir)?;
        }
        w.start(0)?;
        w.start(1)?;
        scenario(&mut w)
    })();
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = result {
        println!("minimal-pair: FAILED: {e}");
        return ExitCode::FAILURE;
    }
    println!("minimal-pair: done in {:.2} s", t0.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
