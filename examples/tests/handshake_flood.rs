//! F5 on real processes: a `node` Master under a flood of 600 peer-link
//! connections from one host (127.0.0.9), each opening with something
//! hostile (nothing, a record claiming 64 KiB, a hello under a guessed key,
//! half a hello, noise). Its Backup starts during the flood and must get
//! through it; the Master's memory, its advertisements and its log must
//! not notice.
//!
//! The pair runs VRRP over UDP on loopback: pbx-b (the Backup, which dials
//! the peer link) on 127.0.0.2, pbx-a (the Master, which the flood hits) on
//! 127.0.0.3. pbx-a also sends its advertisements to a monitor socket on
//! 127.0.0.5, whose kernel receive timestamps give the gaps. Processes are
//! ended by their id, also when the test fails. Root only (the Master's
//! election thread runs SCHED_FIFO, as an appliance runs it, so that
//! other work on a shared machine does not blur the gaps): skipped with a
//! reason otherwise, failed when `CI` is set.

mod e2e;
mod run;

use e2e::TempDir;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const MONITOR_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const INTERVAL_MS: u64 = 100;
const FLOOD: usize = 600;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// One node's process, ended by its id on drop.
struct Node {
    config: PathBuf,
    status: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(run::example_bin("node"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn status(&self) -> Value {
        let mut r = match e2e::agent()
            .get(&format!("http://{}/status", self.status))
            .call()
        {
            Ok(r) if r.status() == 200 => r,
            _ => return Value::Null,
        };
        r.body_mut().read_json().unwrap_or(Value::Null)
    }

    #[track_caller]
    fn wait(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "not {what} within {limit:?}: {s}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .expect("VmRSS")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_udp(ip: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind((ip, 0)).expect("free udp port")
}

fn free_tcp(ip: Ipv4Addr) -> std::net::TcpListener {
    std::net::TcpListener::bind((ip, 0)).expect("free tcp port")
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    root: &Path,
    name: &str,
    prio: u8,
    rt: bool,
    vrrp: (SocketAddr, &[SocketAddr]),
    sync: (SocketAddr, SocketAddr),
    status: SocketAddr,
) -> PathBuf {
    let peers: Vec<String> = vrrp.1.iter().map(|p| format!("\"{p}\"")).collect();
    let rt_line = if rt { "rt_priority = 10\n" } else { "" };
    let text = format!(
        r#"id = "{name}"
state_dir = "{name}/state"
[vrrp]
transport = "udp"
vrid = 51
priority = {prio}
advert_interval_ms = {INTERVAL_MS}
virtual_ips = ["10.99.0.100/24"]
udp_listen = "{}"
udp_peers = [{}]
{rt_line}[sync]
listen = "{}"
peer = "{}"
dir = "{name}/data"
interval_s = 2
key_file = "sync.key"
[status]
listen = "{status}"
"#,
        vrrp.0,
        peers.join(", "),
        sync.0,
        sync.1,
    );
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("config");
    std::fs::create_dir_all(root.join(name).join("data")).expect("data dir");
    path
}

/// SIOCGSTAMP (asm-generic/sockios.h): the kernel's receive time of the
/// last datagram read from a socket.
const SIOCGSTAMP: libc::c_ulong = 0x8906;

/// Receives the advertisements sent to `sock` until `stop`, each with its
/// kernel receive time (µs).
fn monitor(sock: UdpSocket, stop: Arc<AtomicBool>) -> Vec<u64> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut at = Vec::new();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if sock.recv(&mut buf).is_err() {
            continue;
        }
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: ioctl(2) SIOCGSTAMP on an open UDP socket writes one
        // `timeval` through the pointer, which lives across the call.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSTAMP as _, &raw mut tv) };
        assert_eq!(r, 0, "SIOCGSTAMP");
        at.push(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64);
    }
    at
}

/// What the flood's `k`th connection sends first.
fn hostile(k: usize) -> Vec<u8> {
    use sync_delta::frame::{Link, LinkRole, Nonce, PreSharedKey, VERSION};
    match k % 5 {
        0 => Vec::new(),
        1 => {
            // A data record claiming 64 KiB, and 4 KiB of it.
            let mut b = vec![b'S', b'D', VERSION, 2, 0xff, 0xff];
            b.resize(4096, 0xaa);
            b
        }
        2 => {
            let guess = PreSharedKey::new(*blake3::hash(&k.to_le_bytes()).as_bytes()).unwrap();
            let e = sync_delta::Epoch::default();
            let mut l = Link::new(
                LinkRole::Initiator,
                guess,
                Nonce([k as u8; 32]),
                e,
                e,
                Instant::now(),
            );
            let mut b = Vec::new();
            l.poll_transmit(&mut b);
            b
        }
        3 => {
            let mut b = vec![b'S', b'D', VERSION, 0, 48, 0];
            b.resize(30, 1);
            b
        }
        _ => vec![0x5a; 2048],
    }
}

/// Opens at least `FLOOD` connections from `ATTACKER_IP` to `to`, one
/// every 5 ms, each opening with something hostile and held open, until
/// `stop` (after `FLOOD`). Returns how many connected.
fn flood(to: SocketAddr, stop: Arc<AtomicBool>, made: Arc<AtomicUsize>) -> usize {
    let mut held = Vec::new();
    let mut k = 0;
    while k < FLOOD || !stop.load(Ordering::Relaxed) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::from((ATTACKER_IP, 0)).into())
            .expect("bind");
        if s.connect_timeout(&to.into(), Duration::from_secs(2))
            .is_ok()
        {
            let mut t: TcpStream = s.into();
            let _ = t.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = t.write_all(&hostile(k));
            held.push(t);
            made.fetch_add(1, Ordering::Relaxed);
        }
        k += 1;
        // Keep at most the last FLOOD open (the node closes most at once).
        if held.len() > FLOOD {
            held.remove(0);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    made.load(Ordering::Relaxed)
}

#[test]
fn a_connection_flood_leaves_the_master_its_memory_its_timing_and_its_peer() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set: this test needs root (SCHED_FIFO)"
        );
        eprintln!("skipped: needs root (the Master's election thread runs SCHED_FIFO)");
        return;
    }
    let dir = TempDir::new("flood");
    let root = dir.0.clone();
    let key = root.join("sync.key");
    std::fs::write(
        &key,
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mon = free_udp(MONITOR_IP);
    let (va, vb) = (free_udp(A_IP), free_udp(B_IP));
    let (sa, sb) = (free_tcp(A_IP), free_tcp(B_IP));
    let (ha, hb) = (free_tcp(A_IP), free_tcp(B_IP));
    let uaddr = |u: &UdpSocket| u.local_addr().expect("address");
    let taddr = |l: &std::net::TcpListener| l.local_addr().expect("address");
    let (vra, vrb, mona) = (uaddr(&va), uaddr(&vb), uaddr(&mon));
    let (sya, syb, sta, stb) = (taddr(&sa), taddr(&sb), taddr(&ha), taddr(&hb));
    drop((va, vb, sa, sb, ha, hb));
    let ca = write_config(
        &root,
        "pbx-a",
        200,
        true,
        (vra, &[vrb, mona]),
        (sya, syb),
        sta,
    );
    let cb = write_config(&root, "pbx-b", 100, false, (vrb, &[vra]), (syb, sya), stb);
    std::fs::write(root.join("pbx-a/data/pbx.conf"), "trunk=flooded\n").expect("data");
    let mut a = Node {
        config: ca,
        status: sta,
        log: root.join("pbx-a.log"),
        child: None,
    };
    let mut b = Node {
        config: cb,
        status: stb,
        log: root.join("pbx-b.log"),
        child: None,
    };
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor_thread = {
        let stop = stop_monitor.clone();
        std::thread::spawn(move || monitor(mon, stop))
    };

    a.start();
    let s = a.wait("Master", Duration::from_secs(20), |s| s["role"] == "Master");
    let transitions = s["vrrp"]["transitions"].as_u64().expect("transitions");
    // Steady state, then the figure before.
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = a.rss_kib();
    let log_before = a.log_text().lines().count();
    let t_flood = Instant::now();

    let stop_flood = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let flood_thread = {
        let (stop, made) = (stop_flood.clone(), made.clone());
        std::thread::spawn(move || flood(sya, stop, made))
    };
    // The Backup starts into the flood and dials through it.
    while made.load(Ordering::Relaxed) < 100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    b.start();
    let mut rss_peak = rss_before;
    let t0 = Instant::now();
    let synced = loop {
        rss_peak = rss_peak.max(a.rss_kib());
        let (sa, sb) = (a.status(), b.status());
        assert_eq!(sa["role"], "Master", "the Master changed role: {sa}");
        assert_ne!(sb["role"], "Master", "the Backup took over: {sb}");
        let fetched = std::fs::read_to_string(root.join("pbx-b/data/pbx.conf")).ok();
        if sb["role"] == "Backup"
            && sb["status"]["sync"]["generation"].as_u64().unwrap_or(0) >= 1
            && fetched.as_deref() == Some("trunk=flooded\n")
            && made.load(Ordering::Relaxed) >= FLOOD
        {
            break sb;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the Backup did not sync through the flood ({} connections made)\n{}\n--- pbx-b\n{}",
            made.load(Ordering::Relaxed),
            a.log_tail(),
            b.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every attacker connection is still held: memory while under it.
    rss_peak = rss_peak.max(a.rss_kib());
    stop_flood.store(true, Ordering::Relaxed);
    let connected = flood_thread.join().expect("flood thread");
    let flood_time = t_flood.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop_monitor.store(true, Ordering::Relaxed);
    let adverts = monitor_thread.join().expect("monitor thread");

    let sa = a.status();
    assert_eq!(sa["role"], "Master");
    assert_eq!(
        sa["vrrp"]["transitions"].as_u64(),
        Some(transitions),
        "no role change on the Master"
    );
    assert_eq!(synced["role"], "Backup");
    assert!(connected >= FLOOD, "only {connected} connections");

    let grew_kib = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "pbx-a RSS before {:.1} MiB, peak under {connected} connections {:.1} MiB (+{:.1} MiB)",
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        grew_kib as f64 / 1024.0
    );
    assert!(grew_kib <= 16 * 1024, "RSS grew {grew_kib} KiB");

    // The advertisements went on at their interval. The median gap is the
    // interval (within 2 ms): the flood did not slow the Master's beat.
    // No single gap passes interval + 25 ms, a quarter of what the Backup
    // tolerates before it takes over (3 intervals and the skew time). The
    // margin is the kernel's, not ours: on a loaded two-vCPU machine without
    // kernel preemption, a SCHED_FIFO thread woken by a socket event from
    // the other CPU was measured waiting up to 9 ms for the next tick.
    let window_s = flood_time.as_secs();
    assert!(
        adverts.len() as u64 >= window_s * 1000 / INTERVAL_MS,
        "{} advertisements in {flood_time:?}",
        adverts.len()
    );
    let in_order: Vec<u64> = adverts.windows(2).map(|w| w[1] - w[0]).collect();
    let shown: Vec<String> = in_order
        .iter()
        .map(|g| format!("{:.1}", *g as f64 / 1000.0))
        .collect();
    let mut gaps = in_order.clone();
    gaps.sort_unstable();
    let worst = gaps.last().copied().unwrap_or(0);
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(0);
    let over_10 = gaps
        .iter()
        .filter(|&&g| g > (INTERVAL_MS + 10) * 1000)
        .count();
    eprintln!(
        "{} advertisements, median gap {:.1} ms, widest {:.1} ms, {over_10} past interval + 10 ms",
        adverts.len(),
        median as f64 / 1000.0,
        worst as f64 / 1000.0
    );
    // One copy of each: the Master makes one message per peer address.
    assert!(
        gaps[0] >= INTERVAL_MS * 1000 / 2,
        "two advertisements {} µs apart (a copy?); the gaps (ms): {}",
        gaps[0],
        shown.join(" ")
    );
    assert!(
        median.abs_diff(INTERVAL_MS * 1000) <= 2000,
        "a median advertisement gap of {median} µs; the gaps (ms): {}",
        shown.join(" ")
    );
    assert!(
        worst <= (INTERVAL_MS + 25) * 1000,
        "an advertisement gap of {worst} µs; the gaps (ms): {}",
        shown.join(" ")
    );

    // The log stayed short: failures a line a second per address, and a
    // summary, not a line per connection.
    let log = a.log_text();
    let lines: Vec<&str> = log.lines().skip(log_before).collect();
    let failed = lines.iter().filter(|l| l.contains("peer link")).count();
    let limit = 2 * (flood_time.as_secs() as usize + 2);
    eprintln!(
        "{failed} peer link lines ({} in all) in {flood_time:?}",
        lines.len()
    );
    assert!(
        failed <= limit,
        "{failed} peer link lines in {flood_time:?} (at most {limit}):\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("more failed connections")),
        "no summary:\n{}",
        lines.join("\n")
    );
}

/// The `sync` tool under the same kind of flood: `sync serve` (no
/// configured peer: the 8-per-address and 16-in-all limits only) paces
/// its failure warnings, and a replica on another address pulls through.
#[test]
fn sync_serve_paces_its_warnings_and_serves_through_a_flood() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("flood-sync");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("pbx.conf"), "trunk=served\n").expect("data");
    let key = dir.join("key");
    std::fs::write(
        &key,
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut child = Command::new(run::example_bin("sync"))
        .arg("serve")
        .arg("--dir")
        .arg(&src)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--key-file")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sync serve");
    let stderr = child.stderr.take().expect("stderr");
    let _guard = run::Kill(Some(child));
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().expect("address"));
                }
                lines.lock().expect("lines").push(line);
            }
        });
    }
    // A hang guard, not a timing assertion.
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve did not report its address");

    let t0 = Instant::now();
    let (stop, made) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood_thread = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || flood(addr, stop, made))
    };
    while made.load(Ordering::Relaxed) < 100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rep = dir.join("rep");
    let out = Command::new(run::example_bin("sync"))
        .arg("pull")
        .arg("--dir")
        .arg(&rep)
        .arg("--from")
        .arg(addr.to_string())
        .arg("--key-file")
        .arg(&key)
        .arg("--once")
        .stdin(Stdio::null())
        .output()
        .expect("sync pull");
    let still_flooding = made.load(Ordering::Relaxed) < FLOOD;
    let connected = flood_thread.join().expect("flood thread");
    let flood_time = t0.elapsed();
    assert!(
        out.status.success(),
        "pull through the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(still_flooding, "the pull finished after the flood");
    assert_eq!(
        std::fs::read_to_string(rep.join("pbx.conf"))
            .ok()
            .as_deref(),
        Some("trunk=served\n")
    );
    assert!(connected >= FLOOD);
    // The last summary comes within a second of the last failure.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = lines.lock().expect("lines").clone();
    let warnings = lines.iter().filter(|l| l.starts_with("warning:")).count();
    let limit = 2 * (flood_time.as_secs() as usize + 3);
    eprintln!(
        "sync serve: {connected} connections in {flood_time:?}, {warnings} warning lines, {} stderr lines",
        lines.len()
    );
    assert!(
        warnings <= limit,
        "{warnings} warnings (at most {limit}):\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning:") && l.contains("more failed connections")),
        "no summary:\n{}",
        lines.join("\n")
    );
}
