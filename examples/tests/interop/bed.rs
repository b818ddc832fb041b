//! The test bed: network namespaces joined by a bridge, processes started
//! inside them, and guards that remove all of it on drop (also on panic).
//!
//! Layout for a bed named `T` with `n` nodes, `P` the test process id:
//!
//! ```text
//!   ns pbxi-P-T-lan:  br0 (bridge, multicast snooping off)
//!                      ├─ p0 ── eth0 in ns pbxi-P-T-0   10.99.0.1/24  fd99::1/64
//!                      ├─ p1 ── eth0 in ns pbxi-P-T-1   10.99.0.2/24  fd99::2/64
//!                      └─ …
//! ```
//!
//! Nothing is created in the namespace the tests run in: every veth pair is
//! made inside the lan namespace with its peer moved straight into a node
//! namespace. Duplicate address detection is off in the node namespaces
//! so that link-local sources are usable at once.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs a command to completion; panics with its output if it fails.
#[track_caller]
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring its outcome (clean-up paths).
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` (a name such as `KILL`, `TERM`, `INT`) to processes by
/// pid, in the order given (one kill(2) each, in one command).
/// Pid 0 (and nothing) is never signalled: `kill 0` would reach our own
/// process group.
pub fn signal(signal: &str, pids: &[u32]) {
    let pids: Vec<String> = pids
        .iter()
        .filter(|&&p| p > 1)
        .map(u32::to_string)
        .collect();
    if pids.is_empty() {
        return;
    }
    let mut args = vec!["-s", signal, "--"];
    args.extend(pids.iter().map(String::as_str));
    run_quiet("kill", &args);
}

static BEDS: AtomicU32 = AtomicU32::new(0);

/// A bridge namespace and `n` node namespaces, removed on drop.
pub struct Bed {
    /// The namespace holding the bridge `br0` (capture there to see all).
    pub lan: String,
    /// The node namespaces, in order; each has `eth0` on the bridge.
    pub nodes: Vec<String>,
    /// A directory for this bed's configs, logs and captures.
    pub dir: PathBuf,
    keep_dir: bool,
}

impl Bed {
    /// Creates the namespaces, the bridge and one link per node.
    #[track_caller]
    pub fn new(tag: &str, n: usize) -> Bed {
        let seq = BEDS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("pbxi-{}-{seq}-{tag}", std::process::id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bed directory");
        let mut bed = Bed {
            lan: format!("{prefix}-lan"),
            nodes: Vec::new(),
            dir,
            keep_dir: false,
        };
        // From here on, a panic drops `bed`, which removes what exists.
        run("ip", &["netns", "add", &bed.lan]);
        let lan = bed.lan.clone();
        run("ip", &["-n", &lan, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n",
                &lan,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
                "stp_state",
                "0",
            ],
        );
        run("ip", &["-n", &lan, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{prefix}-{i}");
            run("ip", &["netns", "add", &ns]);
            bed.nodes.push(ns.clone());
            let sysctl = |k: &str| {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "sysctl",
                        "-q",
                        "-w",
                        &format!("{k}=0"),
                    ],
                )
            };
            sysctl("net.ipv6.conf.all.accept_dad");
            sysctl("net.ipv6.conf.default.accept_dad");
            sysctl("net.ipv6.conf.default.dad_transmits");
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &lan, "link", "set", &port, "master", "br0", "up"],
            );
            let v4 = format!("{}/24", Bed::v4(i));
            let v6 = format!("{}/64", Bed::v6(i));
            run("ip", &["-n", &ns, "addr", "add", &v4, "dev", "eth0"]);
            run(
                "ip",
                &["-n", &ns, "addr", "add", &v6, "dev", "eth0", "nodad"],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        }
        bed
    }

    /// Node `i`'s IPv4 address, 10.99.0.(i+1).
    pub fn v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, u8::try_from(i + 1).expect("few nodes"))
    }

    /// Node `i`'s unique-local IPv6 address, fd99::(i+1).
    pub fn v6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd99,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::try_from(i + 1).expect("few nodes"),
        )
    }

    /// Node `i`'s IPv6 link-local address on `eth0`.
    #[track_caller]
    pub fn link_local(&self, i: usize) -> Ipv6Addr {
        let out = run(
            "ip",
            &[
                "-n",
                &self.nodes[i],
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no link-local address in {}: {out}", self.nodes[i]))
    }

    /// Node `i`'s MAC address on `eth0`.
    #[track_caller]
    pub fn mac(&self, i: usize) -> [u8; 6] {
        let text = run(
            "ip",
            &["-n", &self.nodes[i], "-o", "link", "show", "dev", "eth0"],
        );
        let hex = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("link/ether");
        let mut mac = [0u8; 6];
        for (b, h) in mac.iter_mut().zip(hex.split(':')) {
            *b = u8::from_str_radix(h, 16).expect("hex");
        }
        mac
    }

    /// Whether `addr` is configured in node `i`'s namespace.
    pub fn has_addr(&self, i: usize, addr: IpAddr) -> bool {
        Command::new("ip")
            .args(["-n", &self.nodes[i], "-o", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .any(|w| w.split('/').next() == Some(&addr.to_string()))
            })
            .unwrap_or(false)
    }

    /// The nodes (by index) whose namespace holds `addr`.
    pub fn holders(&self, addr: IpAddr) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.has_addr(i, addr))
            .collect()
    }

    /// A path in the bed's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Keeps the bed's directory after the test (for a failure report).
    pub fn keep_files(&mut self) {
        self.keep_dir = true;
    }

    /// Starts `program` in namespace `ns`, output to `log` in the bed's
    /// directory.
    #[track_caller]
    pub fn spawn(&self, ns: &str, log: &str, program: &Path, args: &[&str]) -> Proc {
        Proc::spawn(ns, &self.path(log), program, args)
    }

    /// Starts `program` in node `i`'s namespace.
    #[track_caller]
    pub fn spawn_in(&self, i: usize, log: &str, program: &Path, args: &[&str]) -> Proc {
        self.spawn(&self.nodes[i], log, program, args)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let mut all = self.nodes.clone();
        all.push(self.lan.clone());
        // Whatever still runs inside (a process a guard lost, a child a
        // daemon forked) is ended by pid before its namespace goes.
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                if !pids.is_empty() {
                    signal("KILL", &pids);
                }
            }
        }
        for ns in &all {
            run_quiet("ip", &["netns", "del", ns]);
        }
        if std::thread::panicking() || self.keep_dir {
            eprintln!("interop: files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A process started in a namespace, ended by pid on drop.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// `ip netns exec NS PROGRAM ARGS…`: ip execs the program, so the pid
    /// is the program's own.
    #[track_caller]
    pub fn spawn(ns: &str, log: &Path, program: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        Proc::start(cmd, &format!("{} in {ns}", program.display()), log)
    }

    /// `PROGRAM ARGS…` here, in the test's own namespace (loopback only).
    #[track_caller]
    pub fn spawn_here(log: &Path, program: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Proc::start(cmd, &program.display().to_string(), log)
    }

    #[track_caller]
    fn start(mut cmd: Command, name: &str, log: &Path) -> Proc {
        let out = File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` and waits up to `grace` for the exit, then SIGKILL.
    pub fn stop(&mut self, sig: &str, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(sig, &[child.id()]);
        let end = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                signal("KILL", &[child.id()]);
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal("KILL", &[child.id()]);
            let _ = child.wait();
        }
    }

    /// Waits for the exit up to `timeout`; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Saturates every core with busy threads until dropped.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    /// One busy thread per core, at normal priority: every core is at
    /// 100 %. (More would also starve the kernel's softirq threads that
    /// carry frames across the bed's veth pairs and bridge, and measure
    /// the bed rather than the routers.)
    pub fn start() -> CpuHog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
