//! End-to-end interop and measurements in network namespaces (issue 7).
//!
//! Each test that needs the network builds its own bed (namespaces joined
//! by a bridge, addresses from 10.99.0.0/24 and fd99::/64 that exist only
//! inside them), captures on the bridge with tcpdump, reads the capture
//! with our own reader and removes everything afterwards, also on panic.
//! Those tests run one at a time (a global lock), so that timings are not
//! disturbed by each other.
//!
//! Not root: the namespace tests print why and return. With `CI` set, not
//! root or a missing tool is a failure.
//!
//! Durations are the short variants; `INTEROP_LONG=1` selects the full ones
//! (`benches/scripts/interop.sh`), and `INTEROP_REPORT=FILE` collects every
//! measured figure for one table.
//!
//! | issue 7 item | test |
//! | --- | --- |
//! | 1 ours with keepalived, v2 and v3/IPv4, both roles | `ours_with_keepalived_both_roles` |
//! | 2 both v3/IPv4 checksum forms | `v3_ipv4_checksum_forms` (+ item 1 for keepalived's default form) |
//! | 3 VRRPv3/IPv6 | `ipv6_with_keepalived` |
//! | 4 tshark finds nothing wrong in our advertisements | in the tests of items 1, 2, 3 |
//! | 5 client-observed outage | `client_observed_outage` |
//! | 6 exact failover timing beside keepalived | `failover_timing_side_by_side` |
//! | 7 sync across the namespaces, Backup killed mid-round | `sync_across_namespaces_survives_a_killed_backup` |
//! | 8 planned swap | `planned_swap_gap` (keepalived's graceful stop: item 6) |
//! | 9 no false failover under a CPU hog | `no_false_failover_under_cpu_hog` |

/// The harness, in `tests/interop/`. Not every helper is used by every
/// test set.
#[allow(dead_code)]
mod interop {
    pub mod bed;
    pub mod keepalived;
    pub mod node;
    pub mod report;
    pub mod tshark;
    pub mod wire;
}

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use interop::bed::{self, Bed, CpuHog, wait_until};
use interop::keepalived::{self, KaConfig, Keepalived};
use interop::node::{Node, NodeConfig};
use interop::report::{self, Report, Row};
use interop::tshark;
use interop::wire::{self, Tcpdump};

/// The namespace tests take this lock: one bed at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const VRID: u8 = 51;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

fn vip() -> IpAddr {
    IpAddr::V4(VIP)
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn long() -> bool {
    std::env::var_os("INTEROP_LONG").is_some_and(|v| v != "0")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips (returns `None`, printing why) when the test cannot run here;
/// fails instead when `CI` is set. Otherwise takes the bed lock.
fn preflight(test: &str, tools: &[&str]) -> Option<MutexGuard<'static, ()>> {
    let mut missing: Vec<String> = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    for t in tools {
        if !have(t) {
            missing.push((*t).to_owned());
        }
    }
    if !missing.is_empty() {
        let why = format!("{test}: needs {}", missing.join(", "));
        assert!(!in_ci(), "{why} (CI is set, so this is a failure)");
        eprintln!("skipping {why}");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A program built from this package's examples (`target/debug/examples/`).
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

/// RFC 9568 §6.1 (v3) `Skew_Time` in ms for a Backup of `priority`.
fn skew_ms(priority: u8, interval_ms: u32) -> f64 {
    f64::from(256 - u32::from(priority)) * f64::from(interval_ms) / 256.0
}

/// RFC 9568 §6.1 `Master_Down_Interval` in ms.
fn master_down_ms(priority: u8, interval_ms: u32) -> f64 {
    3.0 * f64::from(interval_ms) + skew_ms(priority, interval_ms)
}

/// Time to let a pair settle: a few advertisements.
fn settle(interval_ms: u32) {
    std::thread::sleep(Duration::from_millis(u64::from(interval_ms * 3).max(300)));
}

/// The gaps of one failover run: after SIGKILL of the Master, and after
/// its graceful stop (priority 0).
struct Failover {
    kill_ms: f64,
    stop_ms: f64,
}

/// Two routers of one kind on the bed's nodes 0 (priority 200) and 1
/// (priority 100), both preempting (keepalived's default): node 0 is
/// Master, is killed, comes back and preempts, is stopped gracefully.
/// Returns the gaps from the capture `name`. `node` is our binary.
fn pair_failover(bed: &Bed, node: &Path, which: Impl, name: &str, interval_ms: u32) -> Failover {
    let a_ip = IpAddr::V4(Bed::v4(0));
    let b_ip = IpAddr::V4(Bed::v4(1));
    let cap = Tcpdump::start(bed, name);
    let params = |prio| (3, prio, interval_ms, true);
    let t0 = wire::now();
    let mut a = Router::start(bed, node, which, 0, &format!("{name}-a"), params(200));
    let mut b = Router::start(bed, node, which, 1, &format!("{name}-b"), params(100));
    assert!(
        wait_until(Duration::from_secs(15), || bed.holders(vip()) == [0]),
        "{name}: node 0 did not become the only holder of {VIP}: {:?}",
        bed.holders(vip())
    );
    settle(interval_ms);
    assert_eq!(bed.holders(vip()), [0], "{name}: the address moved");

    a.kill_hard();
    let limit = Duration::from_millis(master_down_ms(100, interval_ms) as u64 + 3000);
    assert!(
        wait_until(limit, || bed.has_addr(1, vip())),
        "{name}: node 1 did not take over after SIGKILL:\n{}",
        b.log_text()
    );
    settle(interval_ms);
    let t_back = wire::now();
    drop(a);
    let mut a = Router::start(bed, node, which, 0, &format!("{name}-a2"), params(200));
    assert!(
        wait_until(Duration::from_secs(15), || bed.holders(vip()) == [0]),
        "{name}: node 0 did not preempt on its return: {:?}",
        bed.holders(vip())
    );
    settle(interval_ms);
    a.stop_graceful();
    assert!(
        wait_until(limit, || bed.has_addr(1, vip())),
        "{name}: node 1 did not take over after the graceful stop:\n{}",
        b.log_text()
    );
    settle(interval_ms);
    b.stop_graceful();
    let pcap = cap.finish();

    let wire = wire::read(&pcap);
    assert!(
        wire.rejected.is_empty(),
        "{name}: our parser rejected packets: {:?}",
        wire.rejected
    );
    let kill = wire
        .takeover(VRID, a_ip, b_ip, (t0, t_back))
        .unwrap_or_else(|| panic!("{name}: no takeover after SIGKILL on the wire"));
    let stop = wire
        .takeover(VRID, a_ip, b_ip, (t_back, wire::now()))
        .unwrap_or_else(|| panic!("{name}: no takeover after the graceful stop on the wire"));
    assert_ne!(kill.last_old.priority, 0, "{name}: SIGKILL sent priority 0");
    assert_eq!(
        stop.last_old.priority, 0,
        "{name}: a graceful stop ends with priority 0"
    );
    let b_mac = bed.mac(1);
    for t in [&kill, &stop] {
        assert!(
            wire.garp_after(VIP, b_mac, t.first_new.t).is_some(),
            "{name}: no gratuitous ARP for {VIP} from node 1 after its takeover"
        );
    }
    let verdicts = tshark::verdicts(&pcap, &[a_ip, b_ip]);
    assert!(!verdicts.is_empty(), "{name}: tshark saw no advertisements");
    assert!(
        tshark::flagged(&verdicts).is_empty(),
        "{name}: tshark flags advertisements: {:?}",
        tshark::flagged(&verdicts)
    );
    Failover {
        kill_ms: kill.gap_ms(),
        stop_ms: stop.gap_ms(),
    }
}

/// Item 6 and the keepalived half of item 8: failover after SIGKILL and
/// after a graceful stop at 1 s, 100 ms and 10 ms (v3/IPv4), keepalived's
/// and ours in the same run on the same namespaces with the same
/// settings, beside the RFC values. No takeover may come before three
/// missed advertisements (that would mean the measurement is wrong), and
/// each must come within 50 ms of the RFC value (item 1's bound; the
/// 1 ms goal is reported, not enforced).
#[test]
fn failover_timing_side_by_side() {
    let test = "failover_timing_side_by_side";
    let Some(_lock) = preflight(test, &["ip", "tcpdump", "tshark", "keepalived"]) else {
        return;
    };
    let node = node_binary(test);
    let mut report = Report::default();
    let bed = Bed::new("timing", 2);
    // The long variant repeats each measurement, alternating the two.
    let rounds = if long() { 5 } else { 1 };
    for (interval, round) in [1000, 100, 10]
        .into_iter()
        .flat_map(|i| (0..rounds).map(move |r| (i, r)))
    {
        let mdi = master_down_ms(100, interval);
        let skew = skew_ms(100, interval);
        for which in [Impl::Keepalived, Impl::Ours] {
            if which == Impl::Ours && node.is_none() {
                continue;
            }
            let node = node.as_deref().unwrap_or(Path::new("node"));
            let name = format!("{}-{interval}-{round}", which.name());
            let f = pair_failover(&bed, node, which, &name, interval);
            let goal = if which == Impl::Ours {
                "; goal: within 1 ms"
            } else {
                ""
            };
            report.record(Row {
                what: "failover after SIGKILL".into(),
                who: which.name().into(),
                version: "v3/IPv4".into(),
                interval_ms: interval,
                value: f.kill_ms,
                reference: Some(mdi),
                note: format!(
                    "ms, wire gap, {:+.3} ms vs RFC (3×interval + Skew_Time){goal}",
                    f.kill_ms - mdi
                ),
            });
            report.record(Row {
                what: "failover after graceful stop".into(),
                who: which.name().into(),
                version: "v3/IPv4".into(),
                interval_ms: interval,
                value: f.stop_ms,
                reference: Some(skew),
                note: format!(
                    "ms, priority 0 to first advert, {:+.3} ms vs Skew_Time",
                    f.stop_ms - skew
                ),
            });
            assert!(
                f.kill_ms >= 3.0 * f64::from(interval) * 0.98 && f.kill_ms <= mdi + 50.0,
                "{name}: takeover after SIGKILL in {:.3} ms, RFC {mdi:.3} ms",
                f.kill_ms
            );
            assert!(
                f.stop_ms <= skew + 50.0,
                "{name}: takeover after priority 0 in {:.3} ms, Skew_Time {skew:.3} ms",
                f.stop_ms
            );
        }
    }
}

/// One pair at a 10 ms interval, node 0 (priority 200) Master, while
/// every core is saturated for `secs`: (Master changes on the wire,
/// a note). keepalived gets its real-time options when `realtime`.
fn flaps_under_hog(
    bed: &Bed,
    node: &Path,
    which: Impl,
    realtime: bool,
    secs: u64,
) -> (usize, String) {
    let name = format!("hog-{}-rt{}", which.name(), u8::from(realtime));
    let cap = Tcpdump::start(bed, &name);
    let mut routers = Vec::new();
    for (i, prio) in [(0, 200), (1, 100)] {
        let r = match which {
            Impl::Ours => {
                let cfg = NodeConfig {
                    realtime,
                    ..NodeConfig::v3(prio, 10)
                };
                Router::Ours(Node::start(bed, node, i, &format!("{name}-{i}"), &cfg))
            }
            Impl::Keepalived => {
                let cfg = KaConfig {
                    realtime,
                    nopreempt: true,
                    ..KaConfig::v3(prio, 10)
                };
                Router::Keepalived(Keepalived::start(bed, i, &format!("{name}-{i}"), &cfg))
            }
        };
        routers.push(r);
    }
    assert!(
        wait_until(Duration::from_secs(10), || bed.holders(vip()) == [0]),
        "{name}: node 0 did not become Master"
    );
    settle(10);
    let hog = CpuHog::start();
    // The window opens once the machine is saturated: the moment the hog
    // threads are placed is a scheduler transient, not the load.
    std::thread::sleep(Duration::from_secs(1));
    let from = wire::now();
    std::thread::sleep(Duration::from_secs(secs));
    let to = wire::now();
    drop(hog);
    let note = match &routers[0] {
        Router::Ours(n) if n.log_text().contains("runs SCHED_FIFO") => "SCHED_FIFO",
        Router::Ours(_) => "normal scheduling",
        Router::Keepalived(_) if realtime => "vrrp_rt_priority 50, vrrp_no_swap",
        Router::Keepalived(_) => "no real-time options",
    };
    for r in &mut routers {
        r.stop_graceful();
    }
    let wire = wire::read(&cap.finish());
    let changes = wire.master_changes(VRID, from, to);
    let a_adverts = wire
        .of_vrid(VRID)
        .filter(|x| x.src == IpAddr::V4(Bed::v4(0)) && x.t >= from && x.t <= to)
        .count();
    // Our count means something only if our Master kept advertising.
    // keepalived's is reported as measured: how well the reference keeps
    // its pace on a loaded machine is not ours to assert.
    if matches!(which, Impl::Ours) {
        assert!(
            a_adverts as u64 >= secs * 100 / 2,
            "{name}: the Master sent only {a_adverts} advertisements in {secs} s"
        );
    }
    (
        changes,
        format!("count on the wire; {note}; {a_adverts} adverts from the Master"),
    )
}

/// Item 9: no false failover under load. Our pair at a 10 ms interval
/// while every core is saturated must show no Master change on the wire;
/// keepalived's count under the same load, with its real-time options (our
/// election thread runs SCHED_FIFO when root), is reported beside it.
#[test]
fn no_false_failover_under_cpu_hog() {
    let test = "no_false_failover_under_cpu_hog";
    let Some(_lock) = preflight(test, &["ip", "tcpdump", "keepalived"]) else {
        return;
    };
    let node = node_binary(test);
    let secs = if long() { 300 } else { 60 };
    let mut report = Report::default();
    let bed = Bed::new("hog", 2);
    let mut runs = vec![(Impl::Keepalived, true)];
    if long() {
        runs.push((Impl::Keepalived, false));
    }
    if node.is_some() {
        runs.push((Impl::Ours, true));
    }
    let node = node.unwrap_or_else(|| PathBuf::from("node"));
    let mut ours = None;
    for (which, realtime) in runs {
        let (changes, note) = flaps_under_hog(&bed, &node, which, realtime, secs);
        report.record(Row {
            what: format!("Master changes under CPU hog, {secs} s"),
            who: which.name().into(),
            version: "v3/IPv4".into(),
            interval_ms: 10,
            value: changes as f64,
            reference: Some(0.0),
            note,
        });
        if which == Impl::Ours {
            ours = Some(changes);
        }
    }
    if let Some(changes) = ours {
        assert_eq!(changes, 0, "our pair changed Master under load");
    }
}

/// A CPU-time reading of processes: the scheduler's own count per thread
/// in nanoseconds (`/proc/PID/task/*/schedstat`), and user + system from
/// `/proc/PID/stat` in 10 ms ticks (which also counts threads that have
/// ended, but one tick is 0.17 ms per second over a minute: as much as the
/// difference being measured).
struct CpuReading {
    tasks: std::collections::BTreeMap<(u32, String), u64>,
    ticks_s: f64,
}

fn cpu_reading(pids: &[u32]) -> CpuReading {
    let mut tasks = std::collections::BTreeMap::new();
    for &p in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                tasks.insert((p, t.file_name().to_string_lossy().into_owned()), ns);
            }
        }
    }
    CpuReading {
        tasks,
        ticks_s: pids.iter().map(|&p| tick_seconds(p)).sum(),
    }
}

/// CPU seconds between two readings, and whether they are the scheduler's
/// nanoseconds (the same threads at both ends) or ticks (threads came or
/// went, whose time only the ticks hold).
fn cpu_between(a: &CpuReading, b: &CpuReading) -> (f64, bool) {
    if !a.tasks.is_empty() && a.tasks.keys().eq(b.tasks.keys()) {
        let ns: u64 = b
            .tasks
            .iter()
            .map(|(k, v)| v.saturating_sub(a.tasks[k]))
            .sum();
        (ns as f64 / 1e9, true)
    } else {
        (b.ticks_s - a.ticks_s, false)
    }
}

fn tick_seconds(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = f.get(11)?.parse().ok()?;
            let system: f64 = f.get(12)?.parse().ok()?;
            Some((user + system) / tick)
        })
        .unwrap_or(0.0)
}

/// Resident memory of the largest of `pids`, MiB.
fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .fold(0.0, f64::max)
        / 1024.0
}

/// The steady state's cost at 10 ms advertisements, ours beside
/// keepalived in the same run: CPU per second of both nodes together and
/// the largest process's memory. Both pairs run at once, each in its own
/// namespaces, and are measured over the same window. A measurement, run by
/// `benches/scripts/steady_state.sh` (not by `cargo test`: a timing is a
/// bench's job). Ours runs as the node does, with its peer link and sync;
/// keepalived with its default options.
#[test]
#[ignore = "a measurement: benches/scripts/steady_state.sh runs it"]
fn steady_state_cost_beside_keepalived() {
    let test = "steady_state_cost_beside_keepalived";
    let Some(_lock) = preflight(test, &["ip", "keepalived"]) else {
        return;
    };
    let secs: u64 = std::env::var("STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long() { 120 } else { 30 });
    let node = node_binary(test).unwrap_or_else(|| PathBuf::from("node"));
    let mut report = Report::default();
    // Both pairs run at the same time, each in its own namespaces, so the
    // machine's other load falls on both alike over the same window.
    let ours_bed = Bed::new("steady-ours", 2);
    let ka_bed = Bed::new("steady-ka", 2);
    // As keepalived runs here: no real-time scheduling, no memory lock.
    let key = ours_bed.path("steady.key");
    // 32 random bytes, readable by the owner only (anything else is refused).
    std::fs::write(
        &key,
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    )
    .expect("key file");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("key file mode");
    let cfg = |i: usize, prio| NodeConfig {
        sync: Some(interop::node::SyncConfig {
            listen: format!("{}:7001", Bed::v4(i)),
            peer: format!("{}:7001", Bed::v4(1 - i)),
            dir: ours_bed.path(&format!("steady-data{i}")),
            interval_s: 60,
            key_file: key.clone(),
        }),
        realtime: false,
        ..NodeConfig::v3(prio, 10)
    };
    let mut ours = [
        Node::start(&ours_bed, &node, 0, "steady-ours-0", &cfg(0, 200)),
        Node::start(&ours_bed, &node, 1, "steady-ours-1", &cfg(1, 100)),
    ];
    let mut ka: Vec<Keepalived> = [(0, 200), (1, 100)]
        .into_iter()
        .map(|(i, prio)| {
            let cfg = KaConfig {
                nopreempt: true,
                ..KaConfig::v3(prio, 10)
            };
            Keepalived::start(&ka_bed, i, &format!("steady-ka-{i}"), &cfg)
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || ours_bed.holders(vip()) == [0]),
        "ours: node 0 did not become Master"
    );
    assert!(
        wait_until(Duration::from_secs(10), || ka_bed.holders(vip()) == [0]),
        "keepalived: node 0 did not become Master"
    );
    let ours_pids: Vec<u32> = ours.iter().filter_map(Node::pid).collect();
    let ka_pids: Vec<u32> = ka.iter().flat_map(Keepalived::pids).collect();
    // Past the start-up and the first sync round.
    std::thread::sleep(Duration::from_secs(3));
    // Each node's processes (keepalived's parent and its VRRP child).
    let per_node: Vec<Vec<u32>> = ours
        .iter()
        .map(|n| n.pid().into_iter().collect())
        .chain(ka.iter().map(Keepalived::pids))
        .collect();
    let per0: Vec<CpuReading> = per_node.iter().map(|p| cpu_reading(p)).collect();
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = t0.elapsed().as_secs_f64();
    let (per, precise): (Vec<f64>, Vec<bool>) = per_node
        .iter()
        .zip(&per0)
        .map(|(p, c0)| {
            let (s, ns) = cpu_between(c0, &cpu_reading(p));
            (s * 1000.0 / elapsed, ns)
        })
        .unzip();
    let (ours_cpu, ka_cpu) = (per[0] + per[1], per[2] + per[3]);
    let (ours_rss, ka_rss) = (rss_mib(&ours_pids), rss_mib(&ka_pids));
    // Still one Master each: the figures are of a working pair.
    assert_eq!(ours_bed.holders(vip()), [0], "ours: the Master changed");
    assert_eq!(ka_bed.holders(vip()), [0], "keepalived: the Master changed");
    for n in &mut ours {
        n.stop_graceful();
    }
    for k in &mut ka {
        k.stop_graceful();
    }
    for (who, cpu, rss, reference) in [
        ("ours", ours_cpu, ours_rss, Some(ka_cpu)),
        ("keepalived", ka_cpu, ka_rss, None),
    ] {
        report.record(Row {
            what: format!("CPU of both nodes, ms per s ({secs} s)"),
            who: who.into(),
            version: "v3/IPv4".into(),
            interval_ms: 10,
            value: cpu,
            reference,
            note: format!("largest process {rss:.1} MiB RSS"),
        });
    }
    println!(
        "steady state at 10 ms, {secs} s: ours {ours_cpu:.1} ms/s ({ours_rss:.1} MiB), \
         keepalived {ka_cpu:.1} ms/s ({ka_rss:.1} MiB), ratio {:.3}",
        ours_cpu / ka_cpu.max(0.001)
    );
    let how = |ns: bool| if ns { "scheduler ns" } else { "ticks" };
    println!(
        "steady state per node, ms/s: ours Master {:.2} ({}), Backup {:.2} ({}); \
         keepalived Master {:.2} ({}), Backup {:.2} ({})",
        per[0],
        how(precise[0]),
        per[1],
        how(precise[1]),
        per[2],
        how(precise[2]),
        per[3],
        how(precise[3])
    );
}

// ---- our node against keepalived ----

/// The `node` binary, or a skip (a failure in CI).
fn node_binary(test: &str) -> Option<PathBuf> {
    let found = example("node");
    if found.is_none() {
        assert!(
            !in_ci(),
            "{test}: target/debug/examples/node is not built (cargo test builds examples)"
        );
        eprintln!("skipping {test}: target/debug/examples/node is not built");
    }
    found
}

/// Which implementation runs on a bed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Ours,
    Keepalived,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Keepalived => "keepalived",
        }
    }
}

/// A running router of either kind.
enum Router {
    Ours(Node),
    Keepalived(Keepalived),
}

impl Router {
    /// Starts `which` on bed node `i` (`node` is our binary).
    fn start(
        bed: &Bed,
        node: &Path,
        which: Impl,
        i: usize,
        name: &str,
        params: (u8, u8, u32, bool),
    ) -> Router {
        Router::start_with(bed, node, which, i, name, params, &["10.99.0.100/24"])
    }

    /// As [`Router::start`], with other virtual addresses.
    fn start_with(
        bed: &Bed,
        node: &Path,
        which: Impl,
        i: usize,
        name: &str,
        (version, priority, interval_ms, preempt): (u8, u8, u32, bool),
        vips: &[&str],
    ) -> Router {
        let vips: Vec<String> = vips.iter().map(|v| (*v).to_owned()).collect();
        match which {
            Impl::Ours => {
                let cfg = NodeConfig {
                    version,
                    preempt,
                    vips,
                    ..NodeConfig::v3(priority, interval_ms)
                };
                Router::Ours(Node::start(bed, node, i, name, &cfg))
            }
            Impl::Keepalived => {
                let cfg = KaConfig {
                    version,
                    nopreempt: !preempt,
                    vips,
                    ..KaConfig::v3(priority, interval_ms)
                };
                Router::Keepalived(Keepalived::start(bed, i, name, &cfg))
            }
        }
    }

    fn kill_hard(&mut self) {
        match self {
            Router::Ours(n) => n.kill_hard(),
            Router::Keepalived(k) => k.kill_hard(),
        }
    }

    fn stop_graceful(&mut self) {
        match self {
            Router::Ours(n) => {
                n.stop_graceful();
            }
            Router::Keepalived(k) => k.stop_graceful(),
        }
    }

    fn log_text(&self) -> String {
        match self {
            Router::Ours(n) => n.log_text(),
            Router::Keepalived(k) => k.log_text(),
        }
    }

    /// For our node: it is Backup and has accepted advertisements with
    /// none dropped (it understands the Master's packets).
    #[track_caller]
    fn assert_backup_hearing(&self, what: &str) {
        if let Router::Ours(n) = self {
            assert_backup_hearing(n, what);
        }
    }
}

/// Our node is Backup and has accepted advertisements with none dropped
/// (it understands the Master's packets).
#[track_caller]
fn assert_backup_hearing(n: &Node, what: &str) {
    let s = n.status().expect("status");
    assert_eq!(s["role"], "Backup", "{what}: {s}");
    assert!(s["vrrp"]["received"].as_u64() > Some(0), "{what}: {s}");
    assert_eq!(s["vrrp"]["dropped"].as_u64(), Some(0), "{what}: {s}");
}

/// Every advertisement our node sent is well formed on the wire (TTL 255,
/// the configured version and checksum form) and tshark flags none of them
/// (item 4). Returns how many were checked.
#[track_caller]
fn check_our_adverts(
    pcap: &Path,
    wire: &wire::Wire,
    ours: &[IpAddr],
    version: u8,
    form: vrrp_proto::ChecksumMatch,
) -> usize {
    let sent: Vec<&wire::Advert> = wire
        .adverts
        .iter()
        .filter(|a| ours.contains(&a.src))
        .collect();
    assert!(!sent.is_empty(), "no advertisement of ours on the wire");
    for a in &sent {
        assert_eq!(a.ttl, 255, "frame {}", a.frame);
        assert_eq!(a.version, version, "frame {}", a.frame);
        assert_eq!(a.checksum, form, "frame {}", a.frame);
    }
    let verdicts = tshark::verdicts(pcap, ours);
    assert_eq!(verdicts.len(), sent.len(), "tshark saw as many as we did");
    let flagged = tshark::flagged(&verdicts);
    assert!(
        flagged.is_empty(),
        "tshark flags our advertisements: {flagged:?}"
    );
    sent.len()
}

/// Item 1 for one version and one way round: bed node 0 (priority 200)
/// must become Master although it starts second, node 1 (priority 100)
/// stays Backup for `window`; node 0 is killed and node 1 takes over
/// within Master_Down_Interval + 50 ms; node 0 returns and stays Backup
/// (no preemption); node 1 stops gracefully and node 0 takes over within
/// Skew_Time + 50 ms. A gratuitous ARP follows each takeover.
fn mixed_pair(
    bed: &Bed,
    node: &Path,
    report: &mut Report,
    (version, interval_ms): (u8, u32),
    (first, second): (Impl, Impl),
    window: Duration,
) {
    let tag = format!("v{version}-{}-{}", first.name(), second.name());
    let ip = |i| IpAddr::V4(Bed::v4(i));
    let cap = Tcpdump::start(bed, &tag);
    let t0 = wire::now();
    // No preemption: the appliance profile (keepalived's `nopreempt`).
    let params = |prio| (version, prio, interval_ms, false);
    // The lower priority starts first: priorities, not start order, decide.
    let mut r1 = Router::start(bed, node, second, 1, &format!("{tag}-1"), params(100));
    let mut r0 = Router::start(bed, node, first, 0, &format!("{tag}-0"), params(200));
    assert!(
        wait_until(Duration::from_secs(15), || bed.holders(vip()) == [0]),
        "{tag}: node 0 did not become the only holder of {VIP}: {:?}\n{}\n{}",
        bed.holders(vip()),
        r0.log_text(),
        r1.log_text()
    );
    settle(interval_ms);
    let w_from = wire::now();
    let end = std::time::Instant::now() + window;
    while std::time::Instant::now() < end {
        assert_eq!(bed.holders(vip()), [0], "{tag}: the address moved");
        std::thread::sleep(Duration::from_millis(250));
    }
    let w_to = wire::now();
    r1.assert_backup_hearing(&tag);

    r0.kill_hard();
    let limit = Duration::from_millis(master_down_ms(100, interval_ms) as u64 + 5000);
    assert!(
        wait_until(limit, || bed.has_addr(1, vip())),
        "{tag}: node 1 did not take over after SIGKILL:\n{}",
        r1.log_text()
    );
    settle(interval_ms);
    let t_back = wire::now();
    drop(r0);
    let mut r0 = Router::start(bed, node, first, 0, &format!("{tag}-0b"), params(200));
    // Long enough for node 0's own Master_Down_Interval to pass: it must
    // hear node 1 and stay Backup.
    std::thread::sleep(Duration::from_millis(
        (master_down_ms(200, interval_ms) * 1.5) as u64 + 300,
    ));
    assert_eq!(
        bed.holders(vip()),
        [1],
        "{tag}: node 0 took the address back"
    );
    r0.assert_backup_hearing(&tag);

    r1.stop_graceful();
    assert!(
        wait_until(limit, || bed.has_addr(0, vip())),
        "{tag}: node 0 did not take over after the graceful stop:\n{}",
        r0.log_text()
    );
    settle(interval_ms);
    r0.stop_graceful();
    let pcap = cap.finish();

    let wire = wire::read(&pcap);
    assert!(wire.rejected.is_empty(), "{tag}: {:?}", wire.rejected);
    if !window.is_zero() {
        assert_eq!(
            wire.master_changes(VRID, w_from, w_to),
            0,
            "{tag}: flapping in the window"
        );
        assert_eq!(wire.advertisers(VRID, w_from, w_to), [ip(0)], "{tag}");
    }
    let kill = wire
        .takeover(VRID, ip(0), ip(1), (t0, t_back))
        .unwrap_or_else(|| panic!("{tag}: no takeover after SIGKILL on the wire"));
    let stop = wire
        .takeover(VRID, ip(1), ip(0), (t_back, wire::now()))
        .unwrap_or_else(|| panic!("{tag}: no takeover after the graceful stop on the wire"));
    assert_eq!(
        stop.last_old.priority, 0,
        "{tag}: graceful stop sends priority 0"
    );
    for (t, i) in [(&kill, 1), (&stop, 0)] {
        assert!(
            wire.garp_after(VIP, bed.mac(i), t.first_new.t).is_some(),
            "{tag}: no gratuitous ARP for {VIP} from node {i} after its takeover"
        );
    }
    let (mdi, skew) = (master_down_ms(100, interval_ms), skew_ms(200, interval_ms));
    let v = format!("v{version}/IPv4");
    let row = |what: &str, who: Impl, peer: Impl, value, reference| Row {
        what: what.into(),
        who: format!("{} (peer {})", who.name(), peer.name()),
        version: v.clone(),
        interval_ms,
        value,
        reference: Some(reference),
        note: "ms, wire gap".into(),
    };
    report.record(row(
        "takeover after SIGKILL",
        second,
        first,
        kill.gap_ms(),
        mdi,
    ));
    report.record(row(
        "takeover after graceful stop",
        first,
        second,
        stop.gap_ms(),
        skew,
    ));
    assert!(
        kill.gap_ms() >= 3.0 * f64::from(interval_ms) * 0.98 && kill.gap_ms() <= mdi + 50.0,
        "{tag}: takeover after SIGKILL in {:.3} ms, RFC {mdi:.3} ms",
        kill.gap_ms()
    );
    assert!(
        stop.gap_ms() <= skew + 50.0,
        "{tag}: takeover after priority 0 in {:.3} ms, Skew_Time {skew:.3} ms",
        stop.gap_ms()
    );
    let ours: Vec<IpAddr> = [(first, 0), (second, 1)]
        .iter()
        .filter(|(w, _)| *w == Impl::Ours)
        .map(|&(_, i)| ip(i))
        .collect();
    let form = if version == 2 {
        vrrp_proto::ChecksumMatch::Standard
    } else {
        vrrp_proto::ChecksumMatch::PseudoHeader
    };
    check_our_adverts(&pcap, &wire, &ours, version, form);
}

/// Item 1 (with items 2's default form and 4): our node with keepalived,
/// VRRPv2 and VRRPv3/IPv4, each side Master in turn; a 30 s no-flap window
/// once per version.
#[test]
fn ours_with_keepalived_both_roles() {
    let test = "ours_with_keepalived_both_roles";
    let Some(_lock) = preflight(test, &["ip", "tcpdump", "tshark", "keepalived"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let mut report = Report::default();
    let bed = Bed::new("mix", 2);
    let window = Duration::from_secs(30);
    for version in [2, 3] {
        mixed_pair(
            &bed,
            &node,
            &mut report,
            (version, 1000),
            (Impl::Ours, Impl::Keepalived),
            window,
        );
        mixed_pair(
            &bed,
            &node,
            &mut report,
            (version, 1000),
            (Impl::Keepalived, Impl::Ours),
            Duration::ZERO,
        );
    }
}

/// The service port the phone calls on the virtual address.
const SERVICE: &str = "10.99.0.100:5060";

/// Our two nodes on bed nodes 0 (priority 200, Master) and 1 (100), each
/// with the echo service as its PBX application (started by the
/// orchestrator when Master), and a phone in bed node 2. Returns once node
/// 0 serves the phone.
fn served_pair(bed: &Bed, node: &Path, probe: &Path, name: &str, interval_ms: u32) -> [Node; 2] {
    let service = format!("exec {} echo --listen {SERVICE}", probe.display());
    let cfg = |prio| NodeConfig {
        services: vec![("pbx".to_owned(), service.clone())],
        realtime: true,
        ..NodeConfig::v3(prio, interval_ms)
    };
    // Master first: at 10 ms the first one up wins before the other starts.
    let n0 = Node::start(bed, node, 0, &format!("{name}-0"), &cfg(200));
    assert!(
        wait_until(Duration::from_secs(15), || bed.holders(vip()) == [0]),
        "{name}: node 0 did not become Master: {:?}",
        bed.holders(vip())
    );
    let n1 = Node::start(bed, node, 1, &format!("{name}-1"), &cfg(100));
    assert!(
        n1.wait_role("Backup", Duration::from_secs(10)),
        "{name}: node 1 is not Backup"
    );
    // The phone hears the service before the measurement starts.
    let served = wait_until(Duration::from_secs(10), || {
        let mut p = bed.spawn_in(
            2,
            &format!("{name}-phone-check.log"),
            probe,
            &[
                "probe",
                "--to",
                SERVICE,
                "--every-ms",
                "10",
                "--for-s",
                "0.2",
            ],
        );
        probe_summary(&mut p, Duration::from_secs(5))["answered"].as_u64() > Some(0)
    });
    assert!(
        served,
        "{name}: the phone gets no answer from node 0's service"
    );
    [n0, n1]
}

/// A node's whole box dies: its link goes silent, then every process in
/// its namespace (node and services) is killed.
fn box_dies(bed: &Bed, i: usize) {
    bed::run("ip", &["-n", &bed.nodes[i], "link", "set", "eth0", "down"]);
    let pids: Vec<u32> = bed::run("ip", &["netns", "pids", &bed.nodes[i]])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    bed::signal("KILL", &pids);
}

/// Item 5: the client-observed outage. A phone in a third namespace sends
/// a request to the service on the virtual address every 10 ms; the Master
/// box dies; the Backup takes over and its orchestrator starts the
/// service. The longest time the phone goes unanswered is measured at
/// 1 s and 10 ms advertisement intervals and reported; it must stay
/// within Master_Down_Interval + 1 s (service start and ARP update
/// included; a missing gratuitous ARP or service would cost far more).
#[test]
fn client_observed_outage() {
    let test = "client_observed_outage";
    let Some(_lock) = preflight(test, &["ip"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let Some(probe) = example("udp-probe") else {
        assert!(!in_ci(), "{test}: udp-probe is not built");
        eprintln!("skipping {test}: udp-probe is not built");
        return;
    };
    let mut report = Report::default();
    for interval in [1000, 10] {
        let bed = Bed::new("outage", 3);
        let name = format!("outage-{interval}");
        let mdi = master_down_ms(100, interval);
        let [_n0, n1] = served_pair(&bed, &node, &probe, &name, interval);
        let before = 1.0;
        let run_for = before + (mdi + 1500.0) / 1000.0;
        let mut phone = bed.spawn_in(
            2,
            &format!("{name}-phone.log"),
            &probe,
            &[
                "probe",
                "--to",
                SERVICE,
                "--every-ms",
                "10",
                "--for-s",
                &format!("{run_for:.2}"),
            ],
        );
        std::thread::sleep(Duration::from_secs_f64(before));
        box_dies(&bed, 0);
        let s = probe_summary(&mut phone, Duration::from_secs_f64(run_for + 10.0));
        assert!(
            bed.has_addr(1, vip()) && n1.role().as_deref() == Some("Master"),
            "{name}: node 1 did not take over:\n{}",
            n1.log_text()
        );
        let gap = s["longest_gap_ms"].as_f64().unwrap_or(f64::INFINITY);
        let last = s["last_answer_ms"].as_f64().unwrap_or(0.0);
        report.record(Row {
            what: "client-observed outage".into(),
            who: "ours".into(),
            version: "v3/IPv4".into(),
            interval_ms: interval,
            value: gap,
            reference: Some(mdi),
            note: format!(
                "ms, longest unanswered stretch at the phone (every 10 ms); {} of {} answered",
                s["answered"], s["sent"]
            ),
        });
        assert!(
            last >= run_for * 1000.0 - 200.0,
            "{name}: the phone is not served at the end: {s}"
        );
        assert!(
            // The box dies anywhere between two advertisements, so the
            // phone's outage starts up to one interval after the last.
            gap >= mdi - f64::from(interval) - 20.0 && gap <= mdi + 1000.0,
            "{name}: outage {gap:.1} ms, Master_Down_Interval {mdi:.1} ms: {s}"
        );
    }
}

/// Our two nodes with the peer link and sync (1 s rounds): bed node 0
/// (priority 200) and 1 (100), data directories `dataN` in the bed's
/// directory, seeded with `seed` on node 0. Returns once node 0 is Master,
/// node 1 reports a synced generation and node 0 sees it as its Backup.
fn synced_pair(
    bed: &Bed,
    node: &Path,
    name: &str,
    interval_ms: u32,
    seed: &[(&str, &[u8])],
) -> [Node; 2] {
    let key = bed.path("sync.key");
    // 32 random bytes, readable by the owner only (anything else is refused).
    std::fs::write(
        &key,
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    )
    .expect("key file");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("key file mode");
    let data = |i: usize| bed.path(&format!("data{i}"));
    for (rel, bytes) in seed {
        let path = data(0).join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("seed dir");
        std::fs::write(path, bytes).expect("seed file");
    }
    std::fs::create_dir_all(data(1)).expect("data dir");
    let cfg = |i: usize, prio| NodeConfig {
        sync: Some(interop::node::SyncConfig {
            listen: format!("{}:7001", Bed::v4(i)),
            peer: format!("{}:7001", Bed::v4(1 - i)),
            dir: data(i),
            interval_s: 1,
            key_file: key.clone(),
        }),
        realtime: true,
        ..NodeConfig::v3(prio, interval_ms)
    };
    // Master first, then the Backup, as an operator brings a pair up.
    let n0 = Node::start(bed, node, 0, &format!("{name}-0"), &cfg(0, 200));
    assert!(
        wait_until(Duration::from_secs(15), || bed.holders(vip()) == [0]),
        "{name}: node 0 did not become Master: {:?}",
        bed.holders(vip())
    );
    let n1 = Node::start(bed, node, 1, &format!("{name}-1"), &cfg(1, 100));
    assert!(
        wait_until(Duration::from_secs(20), || n1.status().is_some_and(|s| {
            s["status"]["sync"]["generation"].as_u64() >= Some(1)
        })),
        "{name}: node 1 never synced: {:?}\n{}",
        n1.status(),
        n1.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || n0
            .status()
            .is_some_and(|s| s["status"]["peer"]["role"] == "Backup")),
        "{name}: node 0 does not see node 1 as its Backup: {:?}",
        n0.status()
    );
    [n0, n1]
}

/// Item 8: the planned swap. The operator asks the Master for a swap; the
/// role gap on the wire (last advertisement of the old Master to the first
/// of the new) is measured beside keepalived's graceful stop (priority 0,
/// Skew_Time) and must be under 10 ms, with no moment of two Masters, the
/// old Master back as Backup, and a file written just before the swap on
/// the new Master (the final sync is done first).
#[test]
fn planned_swap_gap() {
    let test = "planned_swap_gap";
    let Some(_lock) = preflight(test, &["ip", "tcpdump"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let mut report = Report::default();
    let intervals: &[u32] = if long() { &[1000, 100, 10] } else { &[1000] };
    for &interval in intervals {
        let bed = Bed::new("swap", 2);
        let name = format!("swap-{interval}");
        let cap = Tcpdump::start(&bed, &name);
        let [n0, n1] = synced_pair(
            &bed,
            &node,
            &name,
            interval,
            &[("voice/greeting.wav", b"hello")],
        );
        settle(interval);
        // Written just before the swap: only the swap's final sync can
        // bring it over in time.
        let late = b"recorded a moment before the swap";
        std::fs::write(bed.path("data0/voice/late.wav"), late).expect("write");
        let t_swap = wire::now();
        let answer = n0.http("POST", "/swap", "");
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(202),
            "{name}: swap refused: {answer:?}"
        );
        assert!(
            wait_until(Duration::from_secs(20), || bed.holders(vip()) == [1]
                && n1.role().as_deref() == Some("Master")
                && n0.role().as_deref() == Some("Backup")),
            "{name}: the swap did not complete: {:?} {:?} {:?}\n{}\n{}",
            bed.holders(vip()),
            n0.role(),
            n1.role(),
            n0.log_text(),
            n1.log_text()
        );
        settle(interval);
        let pcap = cap.finish();
        let wire = wire::read(&pcap);
        let (a, b) = (IpAddr::V4(Bed::v4(0)), IpAddr::V4(Bed::v4(1)));
        let first_b = wire
            .of_vrid(VRID)
            .find(|x| x.src == b && x.t >= t_swap && x.priority > 0)
            .unwrap_or_else(|| panic!("{name}: node 1 never advertised"))
            .clone();
        let last_a = wire
            .of_vrid(VRID)
            .filter(|x| x.src == a && x.t >= t_swap && x.t <= first_b.t)
            .last()
            .cloned();
        let overlap = wire
            .of_vrid(VRID)
            .filter(|x| x.src == a && x.t > first_b.t && x.priority > 0)
            .count();
        let gap = last_a.map_or(0.0, |l| (first_b.t - l.t).as_secs_f64() * 1000.0);
        let skew = skew_ms(100, interval);
        report.record(Row {
            what: "planned swap, role gap".into(),
            who: "ours".into(),
            version: "v3/IPv4".into(),
            interval_ms: interval,
            value: gap,
            reference: Some(skew),
            note: format!(
                "ms, wire; ref = keepalived's graceful stop (Skew_Time); goal < 10 ms; \
                 {overlap} adverts of the old Master after the new one's first"
            ),
        });
        assert_eq!(overlap, 0, "{name}: two Masters at once");
        assert!(gap < 10.0, "{name}: swap gap {gap:.3} ms");
        assert_eq!(
            std::fs::read(bed.path("data1/voice/late.wav"))
                .ok()
                .as_deref(),
            Some(&late[..]),
            "{name}: the new Master lacks the file written before the swap"
        );
    }
}

/// Deterministic bytes that do not compress or repeat (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Item 7: sync across the namespaces. A changed voice file on the Master
/// is on the Backup after the next round; the Backup killed with SIGKILL
/// in the middle of a round keeps its last whole generation (no partial
/// file in its tree), and after a restart the next round completes.
#[test]
fn sync_across_namespaces_survives_a_killed_backup() {
    let test = "sync_across_namespaces_survives_a_killed_backup";
    let Some(_lock) = preflight(test, &["ip"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let mut report = Report::default();
    let bed = Bed::new("sync", 2);
    let name = "sync";
    let [_n0, mut n1] = synced_pair(&bed, &node, name, 1000, &[("voice/greeting.wav", b"v1")]);
    let on = |i: usize, rel: &str| std::fs::read(bed.path(&format!("data{i}/{rel}"))).ok();

    // A changed file reaches the Backup with the next round.
    let changed = noise(64 * 1024, 7);
    let t = std::time::Instant::now();
    std::fs::write(bed.path("data0/voice/greeting.wav"), &changed).expect("write");
    assert!(
        wait_until(Duration::from_secs(15), || on(1, "voice/greeting.wav")
            .as_ref()
            == Some(&changed)),
        "the changed file did not reach the Backup:\n{}",
        n1.log_text()
    );
    report.record(Row {
        what: "sync: changed 64 KiB file on the Backup".into(),
        who: "ours".into(),
        version: "-".into(),
        interval_ms: 1000,
        value: t.elapsed().as_secs_f64() * 1000.0,
        reference: None,
        note: "ms from the write on the Master (rounds every 1 s)".into(),
    });

    // A big file, and the Backup killed while its round stages it. A round
    // can finish between the moment the test sees it staging and the kill
    // (a fast link, a quiet machine): then a new, bigger file is written
    // and the kill is tried again, at most three times.
    let stage = bed.path("data1/.sync-delta/stage");
    let mut big = Vec::new();
    let mut interrupted = false;
    for (attempt, mib) in [(0u64, 48usize), (1, 96), (2, 192)] {
        big = noise(mib << 20, 11 + attempt);
        std::fs::write(bed.path("data0/voice/big.wav"), &big).expect("write");
        let staging = wait_until(Duration::from_secs(30), || {
            std::fs::read_dir(&stage)
                .is_ok_and(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
        });
        assert!(
            staging,
            "the Backup never staged the big file:\n{}",
            n1.log_text()
        );
        if on(1, "voice/big.wav").as_ref() == Some(&big) {
            // Already committed: too fast to interrupt; a bigger file.
            continue;
        }
        n1.kill_hard();
        if on(1, "voice/big.wav").as_ref() == Some(&big) {
            // Committed in the instant before the kill: restart, and try
            // again with a bigger file.
            let config = n1.config.clone();
            drop(n1);
            n1 = Node::start_with(&bed, &node, 1, &format!("{name}-1-r{attempt}"), config);
            continue;
        }
        interrupted = true;
        break;
    }
    assert!(
        interrupted,
        "every round completed before the kill; nothing was interrupted"
    );
    assert_eq!(
        on(1, "voice/greeting.wav").as_ref(),
        Some(&changed),
        "the last whole generation is gone"
    );

    let config = n1.config.clone();
    drop(n1);
    let t = std::time::Instant::now();
    let n1 = Node::start_with(&bed, &node, 1, &format!("{name}-1-again"), config);
    assert!(
        wait_until(Duration::from_secs(120), || on(1, "voice/big.wav").as_ref()
            == Some(&big)),
        "the next round did not complete after the restart:\n{}",
        n1.log_text()
    );
    report.record(Row {
        what: format!(
            "sync: {} MiB file after a SIGKILL mid-round",
            big.len() >> 20
        ),
        who: "ours".into(),
        version: "-".into(),
        interval_ms: 1000,
        value: t.elapsed().as_secs_f64() * 1000.0,
        reference: None,
        note: "ms from the restart of the Backup (debug build)".into(),
    });
    assert_eq!(on(1, "voice/greeting.wav").as_ref(), Some(&changed));
}

/// Item 2: both VRRPv3/IPv4 checksum forms. Our node sending either form
/// is heard by our node set to the other (receivers take both), and the
/// packets on the wire carry the form configured. With a keepalived that
/// has `v3_checksum_as_v2`, the message-only form is also run against it
/// both ways; the packaged keepalived may lack it (2.2.x does), which is
/// printed. keepalived's default (pseudo-header) form is covered both ways
/// by `ours_with_keepalived_both_roles`.
#[test]
fn v3_ipv4_checksum_forms() {
    let test = "v3_ipv4_checksum_forms";
    let Some(_lock) = preflight(test, &["ip", "tcpdump", "tshark", "keepalived"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let bed = Bed::new("cksum", 2);
    let ip = |i| IpAddr::V4(Bed::v4(i));
    let forms = [
        ("message-only", vrrp_proto::ChecksumMatch::MessageOnly),
        ("pseudo-header", vrrp_proto::ChecksumMatch::PseudoHeader),
    ];
    for (sent, received) in [(forms[0], forms[1]), (forms[1], forms[0])] {
        let name = format!("ours-{}", sent.0);
        let cap = Tcpdump::start(&bed, &name);
        let cfg = |prio, form: &'static str| NodeConfig {
            v3_ipv4_checksum: form,
            ..NodeConfig::v3(prio, 100)
        };
        let mut n0 = Node::start(&bed, &node, 0, &format!("{name}-0"), &cfg(200, sent.0));
        assert!(
            wait_until(Duration::from_secs(10), || bed.holders(vip()) == [0]),
            "{name}: node 0 did not become Master"
        );
        let mut n1 = Node::start(&bed, &node, 1, &format!("{name}-1"), &cfg(100, received.0));
        std::thread::sleep(Duration::from_millis(
            (master_down_ms(100, 100) * 2.0) as u64,
        ));
        assert_eq!(bed.holders(vip()), [0], "{name}: node 1 took over");
        assert_backup_hearing(&n1, &name);
        n1.stop_graceful();
        n0.stop_graceful();
        let pcap = cap.finish();
        let wire = wire::read(&pcap);
        let forms: Vec<_> = wire.sent_by(ip(0)).map(|a| a.checksum).collect();
        assert!(
            !forms.is_empty() && forms.iter().all(|f| *f == sent.1),
            "{name}: {forms:?}"
        );
        if sent.1 == vrrp_proto::ChecksumMatch::PseudoHeader {
            check_our_adverts(&pcap, &wire, &[ip(0)], 3, sent.1);
        }
    }

    if !keepalived::supports_checksum_as_v2(&bed.dir) {
        eprintln!(
            "{test}: the installed keepalived has no v3_checksum_as_v2; \
             the message-only form was checked between our nodes only"
        );
        return;
    }
    for (first, second) in [
        (Impl::Ours, Impl::Keepalived),
        (Impl::Keepalived, Impl::Ours),
    ] {
        let name = format!("as-v2-{}-{}", first.name(), second.name());
        let cap = Tcpdump::start(&bed, &name);
        let start = |which, i, prio| match which {
            Impl::Ours => Router::Ours(Node::start(
                &bed,
                &node,
                i,
                &format!("{name}-{i}"),
                &NodeConfig {
                    v3_ipv4_checksum: "message-only",
                    ..NodeConfig::v3(prio, 100)
                },
            )),
            Impl::Keepalived => Router::Keepalived(Keepalived::start(
                &bed,
                i,
                &format!("{name}-{i}"),
                &KaConfig {
                    checksum_as_v2: true,
                    nopreempt: true,
                    ..KaConfig::v3(prio, 100)
                },
            )),
        };
        let mut r0 = start(first, 0, 200);
        assert!(
            wait_until(Duration::from_secs(10), || bed.holders(vip()) == [0]),
            "{name}: node 0 did not become Master"
        );
        let mut r1 = start(second, 1, 100);
        std::thread::sleep(Duration::from_millis(
            (master_down_ms(100, 100) * 2.0) as u64,
        ));
        assert_eq!(bed.holders(vip()), [0], "{name}: node 1 took over");
        r1.assert_backup_hearing(&name);
        r1.stop_graceful();
        r0.stop_graceful();
        let wire = wire::read(&cap.finish());
        assert!(
            wire.sent_by(ip(0))
                .all(|a| a.checksum == vrrp_proto::ChecksumMatch::MessageOnly),
            "{name}"
        );
    }
}

/// Item 3: VRRPv3/IPv6 with keepalived, each side Master in turn: the
/// higher priority (started first) wins, the other stays Backup hearing it, and takes over
/// within Master_Down_Interval + 50 ms when the Master is killed. Every
/// advertisement has a link-local source and hop limit 255, and tshark
/// flags none of ours.
///
/// The address list starts with a link-local virtual address, as RFC 9568
/// §5.2.9 wants: once it is claimed, advertisements must still leave from
/// the interface's own link-local address, which their checksum covers.
#[test]
fn ipv6_with_keepalived() {
    let test = "ipv6_with_keepalived";
    let Some(_lock) = preflight(test, &["ip", "tcpdump", "tshark", "keepalived"]) else {
        return;
    };
    let Some(node) = node_binary(test) else {
        return;
    };
    let mut report = Report::default();
    let bed = Bed::new("v6", 2);
    let vip6: IpAddr = "fd99::100".parse().expect("address");
    let vips = ["fe80::100/64", "fd99::100/64"];
    let interval = 100;
    let ll = [0, 1].map(|i| IpAddr::V6(bed.link_local(i)));
    for (first, second) in [
        (Impl::Ours, Impl::Keepalived),
        (Impl::Keepalived, Impl::Ours),
    ] {
        let name = format!("v6-{}-{}", first.name(), second.name());
        let cap = Tcpdump::start(&bed, &name);
        let params = |prio| (3, prio, interval, false);
        // At 100 ms the first one up is Master before the other has
        // started: node 0 (priority 200) first.
        let mut r0 = Router::start_with(
            &bed,
            &node,
            first,
            0,
            &format!("{name}-0"),
            params(200),
            &vips,
        );
        assert!(
            wait_until(Duration::from_secs(10), || bed.holders(vip6) == [0]),
            "{name}: node 0 did not become Master"
        );
        let mut r1 = Router::start_with(
            &bed,
            &node,
            second,
            1,
            &format!("{name}-1"),
            params(100),
            &vips,
        );
        assert!(
            wait_until(Duration::from_secs(10), || bed.holders(vip6) == [0]),
            "{name}: node 0 did not become the only holder of {vip6}: {:?}\n{}\n{}",
            bed.holders(vip6),
            r0.log_text(),
            r1.log_text()
        );
        settle(interval);
        assert_eq!(bed.holders(vip6), [0], "{name}: the address moved");
        r1.assert_backup_hearing(&name);
        let t_kill = wire::now();
        r0.kill_hard();
        assert!(
            wait_until(Duration::from_secs(5), || bed.has_addr(1, vip6)),
            "{name}: node 1 did not take over:\n{}",
            r1.log_text()
        );
        settle(interval);
        r1.stop_graceful();
        drop(r0);
        let pcap = cap.finish();
        let wire = wire::read(&pcap);
        assert!(wire.rejected.is_empty(), "{name}: {:?}", wire.rejected);
        for a in &wire.adverts {
            assert!(
                matches!(a.src, IpAddr::V6(s) if s.segments()[0] & 0xffc0 == 0xfe80),
                "{name}: frame {} from {} is not link-local",
                a.frame,
                a.src
            );
            assert_eq!((a.ttl, a.version), (255, 3), "{name}: frame {}", a.frame);
        }
        let kill = wire
            .takeover(
                VRID,
                ll[0],
                ll[1],
                (Duration::ZERO, t_kill + Duration::from_secs(1)),
            )
            .unwrap_or_else(|| panic!("{name}: no takeover on the wire"));
        let mdi = master_down_ms(100, interval);
        report.record(Row {
            what: "takeover after SIGKILL".into(),
            who: format!("{} (peer {})", second.name(), first.name()),
            version: "v3/IPv6".into(),
            interval_ms: interval,
            value: kill.gap_ms(),
            reference: Some(mdi),
            note: "ms, wire gap".into(),
        });
        assert!(
            kill.gap_ms() >= 3.0 * f64::from(interval) * 0.98 && kill.gap_ms() <= mdi + 50.0,
            "{name}: takeover in {:.3} ms, RFC {mdi:.3} ms",
            kill.gap_ms()
        );
        let ours = if first == Impl::Ours { ll[0] } else { ll[1] };
        check_our_adverts(
            &pcap,
            &wire,
            &[ours],
            3,
            vrrp_proto::ChecksumMatch::Standard,
        );
    }
}

// ---- checks of the harness itself (no root needed) ----

fn advert(t_ms: u64, src: [u8; 4], priority: u8) -> wire::Advert {
    wire::Advert {
        frame: t_ms,
        t: Duration::from_millis(t_ms),
        src: IpAddr::from(src),
        ttl: 255,
        version: 3,
        vrid: VRID,
        priority,
        interval_cs: 1,
        checksum: vrrp_proto::ChecksumMatch::PseudoHeader,
    }
}

#[test]
fn takeover_and_master_changes_from_adverts() {
    let a = [10, 99, 0, 1];
    let b = [10, 99, 0, 2];
    let w = wire::Wire {
        adverts: vec![
            advert(0, a, 200),
            advert(10, a, 200),
            advert(20, a, 200),
            advert(56, b, 100),
            advert(66, b, 100),
            advert(70, a, 200),
            advert(80, a, 0),
            advert(86, b, 100),
        ],
        ..Default::default()
    };
    let ms = Duration::from_millis;
    let kill = w
        .takeover(VRID, a.into(), b.into(), (ms(0), ms(50)))
        .unwrap();
    assert_eq!((kill.last_old.frame, kill.first_new.frame), (20, 56));
    assert!((kill.gap_ms() - 36.0).abs() < 1e-9);
    let stop = w
        .takeover(VRID, a.into(), b.into(), (ms(67), ms(100)))
        .unwrap();
    assert_eq!((stop.last_old.priority, stop.gap_ms()), (0, 6.0));
    assert!(
        w.takeover(VRID, b.into(), a.into(), (ms(87), ms(100)))
            .is_none()
    );
    assert_eq!(w.master_changes(VRID, ms(0), ms(100)), 3);
    assert_eq!(w.master_changes(VRID, ms(0), ms(20)), 0);
    assert_eq!(w.advertisers(VRID, ms(0), ms(20)), [IpAddr::from(a)]);
}

#[test]
fn keepalived_config_text() {
    let mut c = KaConfig::v3(150, 10);
    c.realtime = true;
    c.nopreempt = true;
    let text = c.render("r1");
    for want in [
        "vrrp_version 3",
        "vrrp_rt_priority 50",
        "vrrp_no_swap",
        "virtual_router_id 51",
        "priority 150",
        "advert_int 0.01\n",
        "nopreempt",
        "10.99.0.100/24",
        "state BACKUP",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert!(KaConfig::v3(1, 1000).render("r").contains("advert_int 1\n"));
    assert!(
        KaConfig::v3(1, 100)
            .render("r")
            .contains("advert_int 0.1\n")
    );
    assert!(!text.contains("v3_checksum_as_v2"));
}

#[test]
fn report_table_aligns_columns() {
    let row = |who: &str, v: f64| Row {
        what: "failover".into(),
        who: who.into(),
        version: "v3/IPv4".into(),
        interval_ms: 10,
        value: v,
        reference: None,
        note: String::new(),
    };
    let t = report::table(&[row("keepalived", 37.25), row("ours", 36.1)]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
    assert!(lines[2].contains("37.250") && lines[3].contains("36.100"));
    // A run's collected rows print as one table (benches/scripts/interop.sh).
    if let Some(file) = std::env::var_os("INTEROP_TABLE") {
        let rows = report::read_rows(Path::new(&file));
        assert!(
            !rows.is_empty(),
            "no rows in {}",
            Path::new(&file).display()
        );
        println!("{}", report::table(&rows));
    }
}

/// The tshark helper flags a bad checksum: a bundled keepalived capture
/// is checked as is (clean), then with one checksum byte changed.
#[test]
fn tshark_helper_flags_a_damaged_advertisement() {
    if !have("tshark") {
        assert!(!in_ci(), "tshark is required in CI");
        eprintln!("skipping: tshark is not installed");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vrrp-proto/tests/data/keepalived-v3-ipv4.pcap");
    let wire = wire::read(&src);
    let sources: Vec<IpAddr> = wire.advertisers(VRID, Duration::ZERO, Duration::MAX);
    assert!(!sources.is_empty());
    let clean = tshark::verdicts(&src, &sources);
    assert!(!clean.is_empty());
    assert!(tshark::flagged(&clean).is_empty(), "{clean:?}");

    // Damage the VRRP checksum of the first advertisement.
    let first = wire.adverts[0].frame;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let damaged = dir.join(format!("interop-damaged-{}.pcap", std::process::id()));
    {
        let mut reader =
            pcap_file::pcap::PcapReader::new(std::fs::File::open(&src).unwrap()).unwrap();
        let header = reader.header();
        let mut writer = pcap_file::pcap::PcapWriter::with_header(
            std::fs::File::create(&damaged).unwrap(),
            header,
        )
        .unwrap();
        let mut n = 0;
        while let Some(p) = reader.next_packet() {
            let mut p = p.unwrap().into_owned();
            n += 1;
            if n == first {
                let mut data = p.data.into_owned();
                let ip = examples::capture::ip_datagram(header.datalink, &data).unwrap();
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let at = data.len() - ip.len() + ihl + 6;
                data[at] ^= 0x5a;
                p.data = data.into();
            }
            writer.write_packet(&p).unwrap();
        }
    }
    let verdicts = tshark::verdicts(&damaged, &sources);
    let flagged = tshark::flagged(&verdicts);
    let _ = std::fs::remove_file(&damaged);
    assert_eq!(
        flagged.iter().map(|v| v.frame).collect::<Vec<_>>(),
        [first],
        "{verdicts:?}"
    );
}

/// The bed removes its namespaces and files when dropped, also when the
/// test panics.
#[test]
fn bed_removes_what_it_made() {
    let Some(_lock) = preflight("bed_removes_what_it_made", &["ip"]) else {
        return;
    };
    let netns = || bed::run("ip", &["netns", "list"]);
    let (names, dir) = {
        let bed = Bed::new("clean", 2);
        assert_eq!(bed.holders(IpAddr::V4(Bed::v4(1))), [1]);
        let mut names = bed.nodes.clone();
        names.push(bed.lan.clone());
        assert!(names.iter().all(|n| netns().contains(n.as_str())));
        (names, bed.dir.clone())
    };
    assert!(
        names.iter().all(|n| !netns().contains(n.as_str())),
        "{}",
        netns()
    );
    assert!(!dir.exists());

    let caught = std::panic::catch_unwind(|| {
        let bed = Bed::new("panic", 1);
        let names = [bed.lan.clone(), bed.nodes[0].clone()];
        std::panic::panic_any(names)
    });
    let names = caught
        .expect_err("the closure panics")
        .downcast::<[String; 2]>()
        .expect("the names");
    assert!(
        names.iter().all(|n| !netns().contains(n.as_str())),
        "{}",
        netns()
    );
}

/// Runs `udp-probe probe` and returns its JSON summary.
#[track_caller]
fn probe_summary(proc: &mut bed::Proc, timeout: Duration) -> serde_json::Value {
    assert!(
        proc.wait_exit(timeout).is_some_and(|s| s.success()),
        "udp-probe probe did not finish: {}",
        proc.log_text()
    );
    let text = proc.log_text();
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("udp-probe printed {text:?}: {e}"))
}

/// The phone of item 5 on loopback: while the echo service is down for
/// 400 ms, requests go unanswered, and the longest gap covers the outage.
#[test]
fn udp_probe_sees_an_outage() {
    let Some(tool) = example("udp-probe") else {
        assert!(
            !in_ci(),
            "udp-probe is not built (cargo builds examples with the tests)"
        );
        eprintln!("skipping: target/debug/examples/udp-probe is not built");
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tag = std::process::id();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let echo = |n: u32| {
        bed::Proc::spawn_here(
            &dir.join(format!("udp-probe-echo-{tag}-{n}.log")),
            &tool,
            &["echo", "--listen", &addr],
        )
    };
    let mut service = echo(0);
    std::thread::sleep(Duration::from_millis(200));
    let log = dir.join(format!("udp-probe-probe-{tag}.log"));
    let mut phone = bed::Proc::spawn_here(
        &log,
        &tool,
        &["probe", "--to", &addr, "--every-ms", "10", "--for-s", "2"],
    );
    std::thread::sleep(Duration::from_millis(600));
    service.kill();
    std::thread::sleep(Duration::from_millis(400));
    let _service = echo(1);
    let s = probe_summary(&mut phone, Duration::from_secs(10));
    let sent = s["sent"].as_u64().unwrap();
    let answered = s["answered"].as_u64().unwrap();
    let gap = s["longest_gap_ms"].as_f64().unwrap();
    assert!(sent >= 100, "{s}");
    assert!(answered >= sent / 4 && answered < sent, "{s}");
    // Down for at least 400 ms; one request every 10 ms around it.
    assert!((390.0..1500.0).contains(&gap), "{s}");
    for n in 0..2 {
        let _ = std::fs::remove_file(dir.join(format!("udp-probe-echo-{tag}-{n}.log")));
    }
    let _ = std::fs::remove_file(log);
}
