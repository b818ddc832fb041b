//! `pair`: two nodes of a redundant PBX pair on this machine, walked through
//! election, sync, failover, rejoin and a swap, with a timeline of what was
//! measured.
//!
//! ```text
//! cargo run --release --example pair                  # the walk-through, then exit
//! cargo run --release --example pair -- --interactive # keep both running, print their pages
//! ```
//!
//! No root needed: the nodes speak VRRP over UDP on loopback (127.0.0.1 and
//! 127.0.0.2), replicate temporary data directories over the authenticated
//! peer link, run in-process services and re-home 50 simulated phones,
//! which follow the project's phone model (printed at the start) and are
//! checked against a simulated registrar. Address claims are logged, not
//! made. Every time shown comes from the event it names (a state change,
//! a readiness milestone, a phone's outcome).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use examples::config::NodeConfig;
use examples::demo::{
    DemoAddrs, DemoHooks, DemoNode, InProcessNode, PhoneModel, demo_config, phone_inventory,
};
use examples::node::{Snapshot, Stop};
use failover_orchestrator::{Milestone, PhoneAction, PhoneOutcome, PhoneResult, PlanKind};
use tokio::sync::oneshot;

/// Two nodes of a redundant pair, walked through a failover and a swap.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Keep both nodes running after they are up and print their status
    /// pages, until Ctrl-C.
    #[arg(long)]
    interactive: bool,
    /// Advertisement interval in milliseconds (a multiple of 10).
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Simulated phones.
    #[arg(long, default_value_t = 50)]
    phones: usize,
    /// Also print the nodes' own logs.
    #[arg(long)]
    verbose: bool,
}

/// One node of the demo: its configuration and, while it runs, the node.
struct Node {
    name: &'static str,
    config: NodeConfig,
    hooks: Arc<DemoHooks>,
    running: Option<InProcessNode>,
}

impl Node {
    async fn start(&mut self) -> Result<(), String> {
        let node = InProcessNode::start(self.config.clone(), self.hooks.clone())
            .await
            .map_err(|e| format!("{} did not start: {e}", self.name))?;
        self.running = Some(node);
        Ok(())
    }

    async fn stop(&mut self, how: Stop) {
        if let Some(n) = self.running.take()
            && let Err(e) = n.stop(how).await
        {
            eprintln!("pair: {} stopped with an error: {e}", self.name);
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.running
            .as_ref()
            .map(InProcessNode::snapshot)
            .unwrap_or_default()
    }
}

struct Clock {
    t0: Instant,
    /// The wall clock at `t0`, ms since the Unix epoch: events carry wall
    /// times, shown on this clock.
    t0_unix_ms: u64,
}

impl Clock {
    /// An event's wall time on this clock, in seconds.
    #[allow(clippy::cast_precision_loss)]
    fn at(&self, unix_ms: u64) -> f64 {
        (unix_ms as f64 - self.t0_unix_ms as f64) / 1000.0
    }

    fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:6.2} s] {}",
            self.t0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Polls until `cond` holds for `node`, up to `limit`.
async fn wait_for(
    node: &Node,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Snapshot) -> bool,
) -> Result<Snapshot, String> {
    let until = Instant::now() + limit;
    loop {
        let s = node.snapshot();
        if cond(&s) {
            return Ok(s);
        }
        if Instant::now() > until {
            return Err(format!(
                "{}: timed out waiting for {what} (role {}, {})",
                node.name, s.role, s.summary
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sync_generation(s: &Snapshot) -> u64 {
    s.status
        .as_ref()
        .and_then(|st| st.sync.as_ref())
        .map_or(0, |v| v.generation)
}

/// A free port on `ip` (the kernel picks one; it stays free for the
/// moment it takes to hand it to the node).
fn free_udp(ip: Ipv4Addr) -> Result<SocketAddr, String> {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free udp port on {ip}: {e}"))
}

fn free_tcp(ip: Ipv4Addr) -> Result<SocketAddr, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free tcp port on {ip}: {e}"))
}

/// A TCP port free on both addresses.
fn free_tcp_both(a: Ipv4Addr, b: Ipv4Addr) -> Result<u16, String> {
    for _ in 0..50 {
        let port = free_tcp(a)?.port();
        if std::net::TcpListener::bind((b, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no tcp port free on both {a} and {b}"))
}

fn seed_tree(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    std::fs::create_dir_all(dir.join("config/sip"))?;
    std::fs::create_dir_all(dir.join("voicemail/100"))?;
    std::fs::create_dir_all(dir.join("voicemail/101"))?;
    std::fs::create_dir_all(dir.join("prompts/en"))?;
    std::fs::create_dir_all(dir.join("licenses"))?;
    for ext in 100..150 {
        std::fs::write(
            dir.join(format!("config/sip/ext-{ext}.conf")),
            format!("[ext-{ext}]\ntype=friend\nsecret=s{ext}\ncontext=internal\n"),
        )?;
        n += 1;
    }
    std::fs::write(
        dir.join("config/dialplan.conf"),
        "[internal]\nexten => _1XX,1,Dial(SIP/${EXTEN})\n",
    )?;
    n += 1;
    // Voice files: deterministic pseudo-audio.
    let mut x: u32 = 0x1234_5678;
    for (box_, count) in [(100, 3), (101, 2)] {
        for m in 1..=count {
            let mut audio = Vec::with_capacity(64 * 1024);
            for _ in 0..64 * 1024 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                audio.push((x >> 24) as u8);
            }
            std::fs::write(dir.join(format!("voicemail/{box_}/msg{m:04}.wav")), audio)?;
            n += 1;
        }
    }
    std::fs::write(dir.join("prompts/en/welcome.wav"), vec![0x55u8; 32 * 1024])?;
    std::fs::write(
        dir.join("licenses/pbx-32.lic"),
        "licence stays with its unit\n",
    )?;
    Ok(n + 2)
}

/// The demo's services, each started once the one before is ready.
const SERVICES: &[&str] = &["database", "sip", "voicemail"];

/// One of the demo's two nodes.
fn node_config(
    name: &str,
    priority: u8,
    interval_ms: u64,
    addrs: &DemoAddrs,
    root: &Path,
) -> Result<NodeConfig, String> {
    let node = DemoNode {
        name,
        priority,
        interval_ms,
        sync_interval_s: 2,
        phones: true,
        services: SERVICES,
    };
    demo_config(&node, addrs, root).map_err(|e| e.to_string())
}

/// The services' `ServiceReady` milestones of the node's timeline: each
/// service's name and wall time, once every one of `services` is there.
fn services_ready(s: &Snapshot, services: &[&str]) -> Option<Vec<(String, u64)>> {
    let t = s.timeline.as_ref()?;
    let ready: Vec<(String, u64)> = t
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            Milestone::ServiceReady { name, .. } => Some((name.clone(), e.unix_ms)),
            _ => None,
        })
        .collect();
    services
        .iter()
        .all(|n| ready.iter().any(|(r, _)| r == n))
        .then_some(ready)
}

/// `services ready at T s (database a s, sip b s, …)`, from the
/// milestones' own times; and T, the latest, as a wall time.
fn ready_line(clock: &Clock, ready: &[(String, u64)]) -> (String, u64) {
    let last = ready.iter().map(|(_, t)| *t).max().unwrap_or(0);
    let each: Vec<String> = ready
        .iter()
        .map(|(n, t)| format!("{n} {:.2} s", clock.at(*t)))
        .collect();
    (
        format!(
            "services ready at {:.2} s ({}; from the timeline)",
            clock.at(last),
            each.join(", ")
        ),
        last,
    )
}

/// Whether the node's timeline is a takeover that reached `Done`.
fn takeover_done(s: &Snapshot) -> bool {
    s.timeline.as_ref().is_some_and(|t| {
        t.kind == PlanKind::Takeover && t.entries.iter().any(|e| e.what == Milestone::Done)
    })
}

/// The phones of a re-homing: how many registered after each action, and
/// when (from the re-homing's start), how many were listed for a person,
/// left unchecked or pending.
fn phones_line(outcomes: &[PhoneOutcome]) -> String {
    let mut parts = Vec::new();
    let mut registered = 0;
    for (action, words) in [
        (PhoneAction::Followed, "followed the address"),
        (PhoneAction::Nudged, "nudged"),
        (PhoneAction::Rebooted, "rebooted"),
    ] {
        let at: Vec<u64> = outcomes
            .iter()
            .filter(|o| o.result == PhoneResult::Registered(action))
            .filter_map(|o| o.at_ms)
            .collect();
        if let (Some(lo), Some(hi)) = (at.iter().min(), at.iter().max()) {
            registered += at.len();
            parts.push(format!(
                "{} {words} +{:.2}..+{:.2} s",
                at.len(),
                *lo as f64 / 1000.0,
                *hi as f64 / 1000.0
            ));
        }
    }
    let count = |f: fn(&PhoneResult) -> bool| outcomes.iter().filter(|o| f(&o.result)).count();
    let person = count(|r| matches!(r, PhoneResult::NeedsPerson(_)));
    let unchecked = count(|r| matches!(r, PhoneResult::Unchecked(_)));
    let pending = count(|r| *r == PhoneResult::Pending);
    format!(
        "phones: {registered} registered, each seen by the registrar's check ({}; from the \
         re-homing's start), {person} listed for a person, {unchecked} unchecked, {pending} pending",
        parts.join(", ")
    )
}

fn timeline_lines(s: &Snapshot) -> Vec<String> {
    let Some(t) = &s.timeline else {
        return vec!["(no timeline)".into()];
    };
    let mut out = Vec::new();
    for e in &t.entries {
        let what = match serde_json::to_value(&e.what) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(_) => String::new(),
        };
        out.push(format!("    +{:>5} ms  {what}", e.at_ms));
    }
    out.push(format!(
        "    data-loss window: {}",
        t.data_loss_window_ms.map_or_else(
            || "none (no generation yet)".into(),
            |ms| match t.generation {
                Some(g) => format!("{ms} ms (age of generation {g} at takeover)"),
                None => format!("{ms} ms"),
            }
        )
    ));
    out
}

async fn walk(args: &Args, root: &Path) -> Result<Vec<(String, String)>, String> {
    let clock = Clock {
        t0: Instant::now(),
        t0_unix_ms: unix_ms(SystemTime::now()),
    };
    let a_ip = Ipv4Addr::new(127, 0, 0, 1);
    let b_ip = Ipv4Addr::new(127, 0, 0, 2);
    let (va, vb) = (free_udp(a_ip)?, free_udp(b_ip)?);
    let (sa, sb) = (free_tcp(a_ip)?, free_tcp(b_ip)?);
    // One status port on both addresses: the Master forwards its
    // backup_gui_port to the peer's host at its own status port.
    let status_port = free_tcp_both(a_ip, b_ip)?;
    let (ha, hb) = (
        SocketAddr::from((a_ip, status_port)),
        SocketAddr::from((b_ip, status_port)),
    );
    let gui = free_tcp(a_ip)?.port();
    write_key(&root.join("sync.key")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("phones.toml"), phone_inventory(args.phones))
        .map_err(|e| e.to_string())?;
    let files = seed_tree(&root.join("pbx-a/data")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("pbx-b/data")).map_err(|e| e.to_string())?;

    let model = PhoneModel::PROJECT;
    let hooks = || Arc::new(DemoHooks::new(Duration::from_millis(150), model));
    let mut a = Node {
        name: "pbx-a",
        config: node_config(
            "pbx-a",
            150,
            args.interval_ms,
            &DemoAddrs {
                vrrp: (va, vb),
                sync: (sa, sb),
                status: ha,
                gui,
            },
            root,
        )?,
        hooks: hooks(),
        running: None,
    };
    let mut b = Node {
        name: "pbx-b",
        config: node_config(
            "pbx-b",
            100,
            args.interval_ms,
            &DemoAddrs {
                vrrp: (vb, va),
                sync: (sb, sa),
                status: hb,
                gui,
            },
            root,
        )?,
        hooks: hooks(),
        running: None,
    };
    let mut report = Vec::new();

    println!(
        "pair: two nodes on loopback (VRRPv3 over UDP, {} ms advertisements), {files} files of \
         config and voice data on pbx-a, {} simulated phones\n",
        args.interval_ms, args.phones
    );
    println!(
        "services: database, sip, voicemail, each started once the one before is ready, \
         ready 150 ms after it starts"
    );
    println!("phone model: {model}\n");

    // 1. Cold start and election.
    clock.say("cold start: pbx-a boots (priority 150)");
    a.start().await?;
    let booted_ms = unix_ms(SystemTime::now());
    let s = wait_for(&a, Duration::from_secs(10), "Master", |s| {
        s.role == "Master"
    })
    .await?;
    let master_ms = s.vrrp.last_change_unix_ms;
    let election = master_ms.saturating_sub(booted_ms);
    clock.say(format!(
        "pbx-a is Master at {:.2} s, {election} ms after it booted (nobody answered for \
         Master_Down_Interval)",
        clock.at(master_ms)
    ));
    let s = wait_for(&a, Duration::from_secs(10), "services ready", |s| {
        services_ready(s, SERVICES).is_some()
    })
    .await?;
    let (line, _) = ready_line(&clock, &services_ready(&s, SERVICES).unwrap_or_default());
    clock.say(format!("pbx-a {line}"));
    report.push(("election (cold start)".into(), format!("{election} ms")));

    clock.say("pbx-b boots (priority 100) and hears a Master");
    b.start().await?;
    wait_for(&b, Duration::from_secs(10), "Backup", |s| {
        s.role == "Backup"
    })
    .await?;
    clock.say("pbx-b is Backup (no fail-back, no contest)");

    // 2. A sync round.
    let t = Instant::now();
    let s = wait_for(&b, Duration::from_secs(20), "first sync round", |s| {
        sync_generation(s) >= 1
    })
    .await?;
    let first_sync = t.elapsed();
    clock.say(format!(
        "sync: pbx-b holds generation {} ({} ms after joining); licences stayed on pbx-a: {}",
        sync_generation(&s),
        first_sync.as_millis(),
        !root.join("pbx-b/data/licenses/pbx-32.lic").exists()
    ));
    report.push((
        "first sync round".into(),
        format!("{} ms", first_sync.as_millis()),
    ));
    let s = wait_for(&a, Duration::from_secs(10), "peer up", |s| {
        s.summary.contains("is UP (")
    })
    .await?;
    clock.say(format!("pbx-a status: \"{}\"", s.summary));

    // A new voicemail arrives and is replicated by the next round.
    let new_msg = root.join("pbx-a/data/voicemail/101/msg0003.wav");
    std::fs::write(&new_msg, vec![0x42u8; 48 * 1024]).map_err(|e| e.to_string())?;
    let gen_before = sync_generation(&b.snapshot());
    let t = Instant::now();
    wait_for(&b, Duration::from_secs(20), "the new voicemail", |s| {
        sync_generation(s) > gen_before
    })
    .await?;
    let replicated = root.join("pbx-b/data/voicemail/101/msg0003.wav").exists();
    clock.say(format!(
        "a new voicemail on pbx-a is on pbx-b {} ms later (next round): {replicated}",
        t.elapsed().as_millis()
    ));
    if !replicated {
        return Err("the new voicemail did not reach pbx-b".into());
    }

    // 3. The Master dies.
    let before = b.snapshot();
    let down_us = before.vrrp.master_down_us;
    clock.say("pbx-a loses power (killed: no priority 0, no goodbye)");
    let crash_ms = unix_ms(SystemTime::now());
    a.stop(Stop::Crash).await;
    let s = wait_for(&b, Duration::from_secs(10), "Master", |s| {
        s.role == "Master"
    })
    .await?;
    let after_crash = s.vrrp.last_change_unix_ms.saturating_sub(crash_ms);
    let detect = s
        .vrrp
        .last_change_unix_ms
        .saturating_sub(s.vrrp.last_rx_unix_ms);
    clock.say(format!(
        "pbx-b is Master at {:.2} s, {after_crash} ms after the crash, {detect} ms after pbx-a's \
         last advertisement (Master_Down_Interval: {:.1} ms)",
        clock.at(s.vrrp.last_change_unix_ms),
        down_us as f64 / 1000.0
    ));
    let s = wait_for(&b, Duration::from_secs(20), "services ready", |s| {
        s.timeline
            .as_ref()
            .is_some_and(|t| t.kind == PlanKind::Takeover)
            && services_ready(s, SERVICES).is_some()
    })
    .await?;
    let (line, _) = ready_line(&clock, &services_ready(&s, SERVICES).unwrap_or_default());
    clock.say(format!("pbx-b {line}; re-homing the phones"));
    let s = wait_for(&b, Duration::from_secs(90), "takeover done", takeover_done).await?;
    clock.say("pbx-b takeover timeline (from detection):");
    for l in timeline_lines(&s) {
        println!("{l}");
    }
    clock.say(phones_line(&s.phones));
    report.push((
        "failover, last advertisement to Master".into(),
        format!(
            "{detect} ms (Master_Down_Interval {:.1} ms)",
            down_us as f64 / 1000.0
        ),
    ));
    if let Some(t) = &s.timeline {
        let ready = t
            .entries
            .iter()
            .filter(|e| matches!(e.what, Milestone::ServiceReady { .. }))
            .map(|e| e.at_ms)
            .max();
        if let Some(ready) = ready {
            report.push((
                "takeover, detection to services ready".into(),
                format!("{ready} ms"),
            ));
        }
        if let Some(done) = t.entries.last() {
            report.push((
                "takeover, detection to done (phones too)".into(),
                format!("{} ms", done.at_ms),
            ));
        }
        report.push((
            "data-loss window".into(),
            t.data_loss_window_ms
                .map_or("n/a".into(), |ms| format!("{ms} ms")),
        ));
    }

    // 4. The old Master returns.
    // A voicemail left on pbx-b while pbx-a is down.
    let while_down = root.join("pbx-b/data/voicemail/100/msg0004.wav");
    std::fs::write(&while_down, vec![0x24u8; 40 * 1024]).map_err(|e| e.to_string())?;
    clock.say("pbx-a powers up again");
    a.start().await?;
    wait_for(&a, Duration::from_secs(10), "Backup", |s| {
        s.role == "Backup"
    })
    .await?;
    clock.say("pbx-a hears pbx-b and stays Backup (no fail-back)");
    let arrived = root.join("pbx-a/data/voicemail/100/msg0004.wav");
    wait_for(
        &a,
        Duration::from_secs(45),
        "the voicemail left while it was down",
        |_| arrived.exists(),
    )
    .await?;
    clock.say(format!(
        "pbx-a synced from pbx-b (generation {}): the voicemail left on pbx-b while it was down is there",
        sync_generation(&a.snapshot())
    ));
    wait_for(
        &b,
        Duration::from_secs(10),
        "pbx-a reported as Backup",
        |s| {
            s.status
                .as_ref()
                .and_then(|st| st.peer.as_ref())
                .is_some_and(|p| p.up && p.role == Some(failover_orchestrator::Role::Backup))
        },
    )
    .await?;
    clock.say(format!("pbx-b status: \"{}\"", b.snapshot().summary));

    // 5. An operator swap.
    clock.say("operator on pbx-b: \"Swap Master and Backup\"");
    let api = b
        .running
        .as_ref()
        .map(|n| n.handle.api.clone())
        .ok_or("pbx-b is not running")?;
    let (tx, rx) = oneshot::channel();
    api.send(examples::node::ApiRequest::Swap(tx))
        .await
        .map_err(|_| "pbx-b stopped")?;
    let requested_ms = unix_ms(SystemTime::now());
    match rx.await {
        Ok(Ok(id)) => clock.say(format!(
            "swap accepted (procedure {id}): final sync, arm pbx-a, release pbx-b"
        )),
        Ok(Err(e)) => return Err(format!("swap refused: {e}")),
        Err(_) => return Err("pbx-b stopped".into()),
    }
    let sa_ = wait_for(&a, Duration::from_secs(30), "Master", |s| {
        s.role == "Master"
    })
    .await?;
    clock.say(format!(
        "pbx-a is Master at {:.2} s",
        clock.at(sa_.vrrp.last_change_unix_ms)
    ));
    let s = wait_for(&a, Duration::from_secs(30), "services ready", |s| {
        s.timeline
            .as_ref()
            .is_some_and(|t| t.kind == PlanKind::Takeover)
            && services_ready(s, SERVICES).is_some()
    })
    .await?;
    let (line, ready_ms) = ready_line(&clock, &services_ready(&s, SERVICES).unwrap_or_default());
    clock.say(format!("pbx-a {line}"));
    let swap_ms = ready_ms.saturating_sub(requested_ms);
    clock.say(format!(
        "swap done at {:.2} s, {swap_ms} ms after the request: pbx-a is Master with its \
         services ready",
        clock.at(ready_ms)
    ));
    let sb_ = wait_for(&b, Duration::from_secs(30), "Backup again", |s| {
        s.role == "Backup"
    })
    .await?;
    wait_for(&b, Duration::from_secs(30), "procedure finished", |s| {
        s.status.as_ref().is_some_and(|st| st.procedure.is_none())
    })
    .await?;
    let gap = i128::from(sa_.vrrp.last_change_unix_ms) - i128::from(sb_.vrrp.last_change_unix_ms);
    clock.say(format!(
        "pbx-b restarted as Backup ({} mode) at {:.2} s; its swap procedure finished",
        b.snapshot().vrrp.backup_mode,
        clock.at(sb_.vrrp.last_change_unix_ms)
    ));
    report.push((
        "swap, request to new Master's services ready".into(),
        format!("{swap_ms} ms"),
    ));
    report.push((
        "swap role gap (wall clock, ms resolution)".into(),
        format!("{} ms", gap.max(0)),
    ));
    let s = wait_for(
        &a,
        Duration::from_secs(90),
        "phones re-homed",
        takeover_done,
    )
    .await?;
    clock.say(format!("pbx-a {}", phones_line(&s.phones)));

    if args.interactive {
        println!("\nboth nodes keep running; their pages:");
        for n in [&a, &b] {
            if let Some(st) = &n.config.status {
                println!("  {}: http://{}/", n.name, st.listen);
            }
        }
        println!(
            "  the Backup's page through the Master: http://{}:{gui}/",
            IpAddr::V4(a_ip)
        );
        println!("Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }

    a.stop(Stop::Graceful).await;
    b.stop(Stop::Graceful).await;
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.verbose {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let root = std::env::temp_dir().join(format!("pbx-pair-{}", std::process::id()));
    let _cleanup = Cleanup(root.clone());
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!("pair: cannot create {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pair: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let result = runtime.block_on(walk(&args, &root));
    match result {
        Ok(report) => {
            println!("\nmeasured:");
            for (what, value) in &report {
                println!("  {what:<42} {value}");
            }
            println!("\npair: done in {:.1} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Removes the demo's temporary directory, also on failure.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh key file as an installer makes one: 32 random bytes in hex,
/// readable by its owner only.
fn write_key(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
