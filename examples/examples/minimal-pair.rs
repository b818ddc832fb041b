//! `minimal-pair`: two nodes of the pair engine (`failover_orchestrator::pair`)
//! driven by one single-threaded `std` loop, as a vendor's own event loop
//! would drive them: VRRPv3 over UDP on loopback (127.0.0.1 and 127.0.0.2:
//! the election tells the nodes apart by their primary address), the peer
//! link over TCP, each tree a temporary directory. Each node is an
//! `InlinePair`: the engine with its sync worker run inline. It walks
//! through the election, a file replicated, the Master's crash and the
//! takeover, its restart and an operator swap back, printing every event
//! of both engines (their `Display` lines) and every command; exit status
//! 1 names a step that did not happen within 20 s. Address claims and
//! services are printed, not carried out.
//!
//! ```text
//! cargo run --example minimal-pair
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{ConnId, InlinePair, LinkConfig, Output, Pair, PairConfig};
use failover_orchestrator::pair::{SyncConfig, SyncWorker};
use failover_orchestrator::{Command, CommandOutcome, Config, Identity, OperatorRequest};
use failover_orchestrator::{PersistentState, Role, ServiceId, ServiceSpec};
use sync_delta::FsStore;
use sync_delta::frame::{Nonce, PreSharedKey};
use vrrp_proto::{RecvMeta, TTL};

type Res<T> = Result<T, Box<dyn Error>>;

const LIMIT: Duration = Duration::from_secs(20);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const NAMES: [&str; 2] = ["pbx-a", "pbx-b"];

/// What survives a crash: the addresses, the tree, the persisted state;
/// and, while it runs, the engine with its sockets.
struct Node {
    dir: PathBuf,
    addr: [SocketAddr; 2],
    persisted: PersistentState,
    run: Option<Running>,
}

/// The engine (with its sync worker and tree), its UDP socket and
/// listener, each connection with the bytes its socket has not taken yet.
struct Running(InlinePair<FsStore>, UdpSocket, TcpListener, Conns);
type Conns = HashMap<ConnId, (TcpStream, Vec<u8>)>;

struct World {
    t0: Instant,
    key: PreSharedKey,
    nodes: [Node; 2],
    /// Every event's line: the node, when the driver saw it, the line.
    seen: Vec<(usize, Instant, String)>,
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

    /// Boots node `i` from its persisted state on its addresses (VRRP,
    /// peer link; port 0, any, the first time).
    fn start(&mut self, i: usize) -> Res<()> {
        let ([vrrp, link], [peer_vrrp, peer_link]) = (self.nodes[i].addr, self.nodes[1 - i].addr);
        let (udp, listener) = (UdpSocket::bind(vrrp)?, TcpListener::bind(link)?);
        let vrid = vrrp_proto::Vrid::new(51).ok_or("vrid")?;
        let election = vrrp_fsm::Config::builder(vrrp_proto::Version::V3, vrid, vrrp.ip())
            .priority(vrrp_proto::Priority([200, 100][i]))
            .interval(vrrp_proto::Interval::from_centis(30)?)
            .preempt(vrrp_fsm::Preempt::Disabled)
            .address(VIP)
            .peer(peer_vrrp.ip())
            .build()?;
        let orchestrator = Config::builder(Identity::new(NAMES[i], "5.1.30", "en"))
            .service(ServiceSpec::new("db"))
            .service(ServiceSpec::new("sip").after(&[ServiceId(0)]))
            .build()?;
        let dials = LinkConfig::dials_by_address(link, peer_link);
        let link_config = LinkConfig::new(self.key.clone(), dials);
        let config = PairConfig::new(election, orchestrator, link_config);
        let state = self.nodes[i].persisted.clone();
        let pair = Pair::new(config, state, Instant::now(), SystemTime::now());
        let interval = Duration::from_secs(2);
        let worker = SyncWorker::new(SyncConfig {
            interval,
            ..SyncConfig::default()
        });
        // Single-threaded (the default): the store spawns no thread.
        let store = FsStore::new(&self.nodes[i].dir)?;
        udp.set_nonblocking(true)?;
        listener.set_nonblocking(true)?;
        self.nodes[i].addr = [udp.local_addr()?, listener.local_addr()?];
        let node = InlinePair::new(pair, worker, store);
        self.nodes[i].run = Some(Running(node, udp, listener, HashMap::new()));
        self.drive(i);
        Ok(())
    }

    /// Carries out node `i`'s outputs in order until it waits.
    fn drive(&mut self, i: usize) {
        let [peer_vrrp, peer_link] = self.nodes[1 - i].addr;
        let Some(Running(mut node, udp, listener, mut conns)) = self.nodes[i].run.take() else {
            return;
        };
        loop {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let backlog = conns.values().map(|c| c.1.len()).sum();
            let output = node.poll_output(now, wall, backlog);
            let pair = node.pair_mut();
            match output {
                Output::Wait(_) => break,
                Output::Persist(record) => self.nodes[i].persisted = record.state,
                Output::Vrrp(p) => drop(udp.send_to(&p.bytes, peer_vrrp)),
                Output::Announce => self.say(i, "announce the address (printed, not sent)"),
                // The in-process answer to a restart (the swap's last step).
                Output::Command(c) if c.command == Command::RestartNode => {
                    self.say(i, "RestartNode: a soft restart");
                    pair.soft_restart(now, wall);
                }
                Output::Command(c) => {
                    self.say(i, &format!("{:?} (printed, not done)", c.command));
                    pair.handle_command_result(now, c.id, CommandOutcome::Done);
                }
                Output::Dial(conn) => match (TcpStream::connect(peer_link), random32()) {
                    (Ok(s), Ok(nonce)) if s.set_nonblocking(true).is_ok() => {
                        conns.insert(conn, (s, Vec::new()));
                        pair.handle_dialed(now, conn, Nonce(nonce));
                    }
                    _ => pair.handle_dial_failed(now, conn),
                },
                // A write that fails ends the connection, as a close does.
                Output::Send { conn, bytes } if !failed(conns.get_mut(&conn), &bytes) => {}
                // Dropping the stream closes it.
                Output::Send { conn, .. } | Output::Close { conn, .. } => {
                    conns.remove(&conn);
                    pair.handle_link_closed(now, conn);
                }
                // `InlinePair` hands the sync worker its orders itself; this
                // demo hands over no images.
                Output::Sync(_) | Output::Transfer(_) => {}
                Output::Event(e) => {
                    let line = e.to_string();
                    self.say(i, &line);
                    self.seen.push((i, now, line));
                }
            }
        }
        self.nodes[i].run = Some(Running(node, udp, listener, conns));
    }

    /// Feeds node `i` one input from its sockets; false when none waits.
    fn input(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let dst = self.nodes[i].addr[0].ip();
        let Some(Running(node, udp, listener, conns)) = self.nodes[i].run.as_mut() else {
            return false;
        };
        let (now, pair) = (Instant::now(), node.pair_mut());
        if let Ok((n, from)) = udp.recv_from(buf) {
            // UDP carries no TTL: 255, as the examples' UDP transport.
            let (src, ttl) = (from.ip(), TTL);
            let _ = pair.handle_vrrp_message(now, &buf[..n], RecvMeta { src, dst, ttl });
            return true;
        }
        if let Ok((s, from)) = listener.accept() {
            if let (Ok(nonce), Ok(())) = (random32(), s.set_nonblocking(true))
                && let Some(id) = pair.handle_accepted(now, Nonce(nonce), from.ip())
            {
                conns.insert(id, (s, Vec::new()));
            }
            return true;
        }
        // Each connection writes what it holds, then reads.
        let read = conns.iter_mut().find_map(|(id, c)| {
            // No more than the link takes: 1 KiB before the key is proved.
            let window = pair.link_receive_window(*id).clamp(1, buf.len());
            match flush(c, &[]).and_then(|()| c.0.read(&mut buf[..window])) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                res => Some((*id, res)),
            }
        });
        match read {
            None => return false,
            Some((id, Ok(n))) if n > 0 => pair.handle_link_bytes(now, id, &buf[..n]),
            // End of stream or an error: the connection is gone.
            Some((id, _)) => {
                conns.remove(&id);
                pair.handle_link_closed(now, id);
            }
        }
        true
    }

    /// Runs the loop until `found` gives something, at most [`LIMIT`]:
    /// each node's inputs, then its timers, then a nap until the earliest
    /// deadline, at most 2 ms (this loop polls its sockets).
    fn wait<T>(&mut self, what: &str, found: impl Fn(&World) -> Option<T>) -> Res<T> {
        let (until, mut buf) = (Instant::now() + LIMIT, vec![0u8; 64 * 1024]);
        loop {
            if let Some(t) = found(self) {
                return Ok(t);
            }
            if Instant::now() > until {
                return Err(format!("missing after {} s: {what}", LIMIT.as_secs()).into());
            }
            for i in 0..2 {
                while self.input(i, &mut buf) {
                    self.drive(i);
                }
                let now = Instant::now();
                if let Some(Running(node, ..)) = self.nodes[i].run.as_mut()
                    && node.poll_timeout().is_some_and(|t| t <= now)
                {
                    node.handle_timeout(now, SystemTime::now());
                    self.drive(i);
                }
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.run.as_ref()?.0.poll_timeout())
                .min();
            let nap = next.map_or(LIMIT, |t| t.saturating_duration_since(Instant::now()));
            std::thread::sleep(nap.min(Duration::from_millis(2)));
        }
    }

    /// Runs the loop until node `i` has an event whose line holds `what`,
    /// among those after the first `mark`; ms from the start to when it
    /// was seen.
    fn until(&mut self, mark: usize, i: usize, what: &str) -> Res<u128> {
        let found = |w: &World| {
            let mut seen = w.seen[mark..].iter().filter(|e| e.0 == i);
            seen.find(|e| e.2.contains(what)).map(|e| e.1)
        };
        let at = self.wait(&format!("{}: \"{what}\"", NAMES[i]), found)?;
        Ok((at - self.t0).as_millis())
    }

    fn ms(&self) -> u128 {
        self.t0.elapsed().as_millis()
    }
}

/// Queues `bytes` on a connection and writes what its socket takes; true
/// when the socket failed (an unknown connection is gone already).
fn failed(c: Option<&mut (TcpStream, Vec<u8>)>, bytes: &[u8]) -> bool {
    c.is_some_and(|c| flush(c, bytes).is_err())
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

    let (mark, t_r, term) = (
        w.seen.len(),
        w.ms(),
        w.nodes[a].persisted.highest_epoch.term,
    );
    println!("-- pbx-a restarts at {t_r} ms from its persisted state (newest term {term})");
    w.start(a)?;
    let t_b = w.until(mark, a, "hears the Master")?;
    let t_s = w.until(mark, a, "sync round")?;
    println!("-- rejoined: pbx-a Backup, hears pbx-b at {t_b} ms, synced at {t_s} ms");
    // The swap's preflight wants the Master to know its peer as Backup.
    let known = |w: &World| {
        let pair = w.nodes[b].run.as_ref()?.0.pair();
        let status = pair.orchestrator().status(Instant::now());
        let p = status.peer.as_ref()?;
        (p.up && p.role == Some(Role::Backup)).then(|| status.one_liner())
    };
    let line = w.wait("pbx-b knows pbx-a as Backup", known)?;
    println!("-- pbx-b status at {} ms: {line}", w.ms());

    let (mark, t_q) = (w.seen.len(), w.ms());
    let master = w.nodes[b].run.as_mut().ok_or("no Master")?.0.pair_mut();
    let swap = master.handle_operator(Instant::now(), OperatorRequest::Swap);
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

fn main() -> ExitCode {
    let (t0, pid) = (Instant::now(), std::process::id());
    let nanos = SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    let root = std::env::temp_dir().join(format!("minimal-pair-{pid}-{nanos}"));
    // Two nodes on 127.0.0.1 and 127.0.0.2, their trees under `root`.
    let node = |i: u8| -> Res<Node> {
        let dir = root.join(NAMES[usize::from(i)]);
        std::fs::create_dir_all(&dir)?;
        let addr = [SocketAddr::from(([127, 0, 0, 1 + i], 0)); 2];
        let persisted = PersistentState::default();
        Ok(Node {
            dir,
            addr,
            persisted,
            run: None,
        })
    };
    let result = (|| -> Res<()> {
        // 32 random bytes, as a key file holds them.
        let key = PreSharedKey::new(random32()?)?;
        let (nodes, seen) = ([node(0)?, node(1)?], Vec::new());
        let mut w = World {
            t0,
            key,
            nodes,
            seen,
        };
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
