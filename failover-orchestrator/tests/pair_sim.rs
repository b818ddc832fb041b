//! The whole pair in simulation: both nodes' real engines (election,
//! orchestrator, peer link, sync sessions on in-memory trees) under random
//! faults and operator requests, with the safety invariants checked after
//! every step and the liveness checks in a quiet tail.
//!
//! `PAIR_SCHEDULES` sets how many random schedules run (500 by default),
//! `PAIR_FIRST_SEED` the first seed (the next ones count up from it);
//! `PAIR_SEED=<seed>` replays one, printing its log. A failing schedule
//! prints its seed and its schedule. `benches/scripts/pair_sim.sh` runs
//! 10,000 in a release build.

mod pair_world;

use std::io::Write as _;
use std::time::{Duration, Instant};

use failover_orchestrator::{
    BackupMode, OperatorRequest, ProcedureOutcome, ProtocolVersion, Redundancy,
};
use pair_world::{Ev, Lan, NODES, Rng, World, WorldConfig};

const SCHEDULE: Duration = Duration::from_secs(600);

/// A random schedule: at least 20 faults and requests over ten minutes.
fn schedule(seed: u64) -> (WorldConfig, Vec<(Duration, Ev)>) {
    let mut rng = Rng(seed);
    let mut cfg = WorldConfig::new(seed);
    cfg.interval_cs = [10, 50, 100, 100][rng.below(4) as usize];
    cfg.priorities = [150, [100, 150, 200][rng.below(3) as usize]];
    // Three schedules in four watch the tree (change-driven rounds), one
    // write's hint in fifty lost to an overflow, and one write in a
    // thousand finds the watcher failed for good (until the node boots
    // again); the fourth pulls every interval.
    cfg.watch = !seed.is_multiple_of(4);
    cfg.hint_overflow_ppm = 20_000;
    cfg.hint_lost_ppm = 1_000;
    let mut evs = Vec::new();
    evs.push((Duration::ZERO, Ev::Boot(0)));
    let b = if rng.below(3) == 0 {
        Duration::ZERO // both at once
    } else {
        Duration::from_millis(rng.below(20_000))
    };
    evs.push((b, Ev::Boot(1)));
    // At least 20 faults and requests (writes come on top).
    let n = 20 + rng.below(15);
    let mut faults_and_requests = 0;
    while faults_and_requests < n {
        let at = Duration::from_millis(30_000 + rng.below(SCHEDULE.as_millis() as u64 - 60_000));
        let ev = match rng.below(15) {
            0 => Ev::Crash(rng.below(2) as usize),
            1 => Ev::Boot(rng.below(2) as usize),
            // The VRRP LAN, the peer link, or both.
            2 => {
                let (lan, link) =
                    [(true, true), (true, false), (false, true)][rng.below(3) as usize];
                Ev::Partition { lan, link }
            }
            3 => Ev::Heal,
            4 => Ev::Reset,
            5 => Ev::SetLan(Lan {
                delay: Duration::from_micros(rng.below(2000)),
                jitter: Duration::from_micros(rng.below(2000)),
                loss_ppm: rng.below(50_000),
            }),
            6 | 7 => Ev::OperatorOnMaster {
                request: OperatorRequest::Swap,
                tag: "swap",
            },
            8 => Ev::Operator {
                node: rng.below(2) as usize,
                request: OperatorRequest::SetBackupMode {
                    mode: if rng.below(2) == 0 {
                        BackupMode::Passive
                    } else {
                        BackupMode::Active
                    },
                    expires_at: None,
                },
                tag: "mode",
            },
            9 => Ev::OperatorOnMaster {
                request: OperatorRequest::RollingUpgrade {
                    firmware: format!("5.2.{}", rng.below(9)),
                    language_pack: None,
                    protocol: ProtocolVersion::CURRENT,
                },
                tag: "upgrade",
            },
            10 => Ev::OperatorOnMaster {
                request: OperatorRequest::ConfigRestore {
                    backup: "nightly".into(),
                },
                tag: "restore",
            },
            11 => Ev::Operator {
                node: rng.below(2) as usize,
                request: OperatorRequest::SetRedundancy(if rng.below(2) == 0 {
                    Redundancy::Disabled
                } else {
                    Redundancy::Enabled
                }),
                tag: "redundancy",
            },
            // The peer link's delay jumps (0.5 to 30 ms each way). A
            // steady slow link (a 600 ms round trip) is
            // `pair_behaviours::a_slow_peer_link_still_vouches_for_the_master`:
            // a Backup that lost the advertisements waits two measured
            // round trips for the Master's answer, but a round trip that
            // jumps past 100 ms between two measurements (5 s apart) lets
            // it take over while the Master still serves.
            12 => Ev::SetLinkDelay(Duration::from_micros(
                [500, 5_000, 30_000][rng.below(3) as usize],
            )),
            _ => Ev::WriteOnMaster {
                path: format!("voicemail/msg{:04}.wav", rng.below(10_000)),
            },
        };
        if !matches!(ev, Ev::WriteOnMaster { .. }) {
            faults_and_requests += 1;
        }
        evs.push((at, ev));
    }
    // Writes all along, so that there is always something to lose.
    for k in 0..20u64 {
        evs.push((
            Duration::from_secs(15 + k * 29),
            Ev::WriteOnMaster {
                path: format!("voicemail/box{k}.wav"),
            },
        ));
    }
    evs.sort_by_key(|e| e.0);
    (cfg, evs)
}

/// Runs one schedule and its quiet tail; returns the world and what failed.
fn run(seed: u64, trace: bool) -> (World, Vec<String>) {
    let (cfg, evs) = schedule(seed);
    let mut w = World::new(cfg);
    w.trace = trace;
    for (at, ev) in evs {
        w.at(at, ev);
    }
    w.run_until(SCHEDULE);

    // The quiet tail: faults healed, both nodes up, redundancy on, both
    // Active; then a swap must complete and the pair must settle.
    let t = w.now;
    // A Master that returned from a split with less data than its Backup
    // kept is what the mass-deletion guard stops: the operator, having
    // looked (the Backup's own changes are in quarantine), confirms.
    w.auto_confirm = true;
    for i in 0..NODES {
        if w.refused_rounds[i] > 0 {
            w.at(t, Ev::Confirm(i));
        }
    }
    w.at(t, Ev::Heal);
    w.at(t, Ev::SetLinkDelay(Duration::from_micros(500)));
    w.at(
        t,
        Ev::SetLan(Lan {
            delay: Duration::from_micros(300),
            jitter: Duration::ZERO,
            loss_ppm: 0,
        }),
    );
    for i in 0..NODES {
        w.at(t, Ev::Boot(i));
    }
    // Ten Master_Down_Intervals and a sync interval, and the longest step
    // timeout of the scaled-down procedures, so that one a fault cut short
    // has ended.
    let settle = w.mdi() * 10 + w.cfg.sync_interval + Duration::from_secs(70);
    for i in 0..NODES {
        w.at(
            t + Duration::from_secs(5),
            Ev::Operator {
                node: i,
                request: OperatorRequest::SetRedundancy(Redundancy::Enabled),
                tag: "tail-redundancy",
            },
        );
    }
    w.run_until(t + settle);
    for i in 0..NODES {
        if w.mode(i) == BackupMode::Passive {
            // One unit after the other, as a person would.
            w.at(
                w.now + Duration::from_secs(2 * i as u64),
                Ev::Operator {
                    node: i,
                    request: OperatorRequest::SetBackupMode {
                        mode: BackupMode::Active,
                        expires_at: None,
                    },
                    tag: "tail-mode",
                },
            );
        }
    }
    // The mode changes above first, then: an upgrade that a fault cut
    // short leaves the units on different firmware, which a swap refuses:
    // finish it the way an operator would.
    w.run_until(w.now + Duration::from_secs(5));
    if w.nodes[0].firmware != w.nodes[1].firmware {
        let newest = w
            .nodes
            .iter()
            .map(|n| n.firmware.clone())
            .max()
            .unwrap_or_default();
        w.at(
            w.now + Duration::from_secs(1),
            Ev::OperatorOnMaster {
                request: OperatorRequest::RollingUpgrade {
                    firmware: newest,
                    language_pack: None,
                    protocol: ProtocolVersion::CURRENT,
                },
                tag: "tail-upgrade",
            },
        );
        w.run_until(w.now + Duration::from_secs(120) + settle);
        for i in 0..NODES {
            if w.mode(i) == BackupMode::Passive {
                w.at(
                    w.now,
                    Ev::Operator {
                        node: i,
                        request: OperatorRequest::SetBackupMode {
                            mode: BackupMode::Active,
                            expires_at: None,
                        },
                        tag: "tail-mode",
                    },
                );
            }
        }
        w.run_until(w.now + settle);
    }
    let t2 = w.now + Duration::from_secs(5);
    w.at(
        t2,
        Ev::OperatorOnMaster {
            request: OperatorRequest::Swap,
            tag: "tail-swap",
        },
    );
    w.run_until(t2 + Duration::from_secs(120) + settle);

    let mut fails: Vec<String> = w
        .violations
        .iter()
        .map(|v| format!("{:?}: {}", v.at, v.what))
        .collect();
    // Liveness: every procedure ended (one that a crash of its node cut
    // short may end after the reboot, or be gone with it), every swap
    // that nothing disturbed completed, the tail's swap completed, one
    // Master whose data the Backup holds.
    let mut undisturbed_swaps = 0;
    for s in &w.started {
        let running = w.nodes[s.node].pair.as_ref().is_some_and(|p| {
            p.orchestrator()
                .persistent_state()
                .procedure
                .as_ref()
                .is_some_and(|j| j.id == s.id)
        });
        if s.outcome.is_none() && (running || w.nodes[s.node].boot == s.boot) {
            fails.push(format!(
                "procedure {} ({}) on node {} never ended",
                s.id, s.tag, s.node
            ));
        }
        let undisturbed =
            |end: Duration| s.clean_start && !w.disruptions.iter().any(|d| *d > s.at && *d <= end);
        let Some(end) = s.ended.filter(|_| s.tag.contains("swap")) else {
            continue;
        };
        if !undisturbed(end) {
            continue;
        }
        undisturbed_swaps += 1;
        if let Some(outcome) = s.outcome.filter(|o| *o != ProcedureOutcome::Completed) {
            fails.push(format!(
                "swap {} on node {} ended {outcome:?} with both nodes up and nothing \
                 disturbing it (accepted at {:?}, ended at {end:?})",
                s.id, s.node, s.at
            ));
        }
    }
    w.undisturbed_swaps = undisturbed_swaps;
    match w.started.iter().find(|s| s.tag == "tail-swap") {
        Some(s) if s.outcome == Some(ProcedureOutcome::Completed) => {}
        Some(s) => fails.push(format!("the tail's swap ended {:?}", s.outcome)),
        None => fails.push(format!(
            "the tail's swap was refused: {:?}",
            w.refused.iter().find(|r| r.1 == "tail-swap")
        )),
    }
    let masters = w.masters();
    if masters.len() == 1 {
        let m = masters[0];
        let b = 1 - m;
        if w.tree(m) != w.tree(b) {
            fails.push(format!(
                "the Backup (node {b}) does not hold the Master's data"
            ));
        }
    } else {
        fails.push(format!("masters at the end: {masters:?}"));
    }
    (w, fails)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_schedules_keep_the_invariants() {
    if let Some(seed) = env_u64("PAIR_SEED") {
        let (cfg, evs) = schedule(seed);
        eprintln!(
            "seed {seed}: interval {} cs, priorities {:?}\nschedule: {evs:#?}",
            cfg.interval_cs, cfg.priorities
        );
        let (w, fails) = run(seed, true);
        assert!(fails.is_empty(), "seed {seed}: {fails:#?}\n{}", w.report());
        return;
    }
    let started = Instant::now();
    let n = env_u64("PAIR_SCHEDULES").unwrap_or(500);
    let first = env_u64("PAIR_FIRST_SEED").unwrap_or(0x5A5A_0000);
    let mut steps = 0u64;
    let mut requests = 0usize;
    let (mut checks, mut lacking) = (0u64, 0u64);
    let (mut window_checks, mut overflows, mut watch_failures) = (0u64, 0u64, 0u64);
    let mut generation_checks = 0u64;
    let mut undisturbed_swaps = 0u64;
    for k in 0..n {
        let seed = first + k;
        let (w, fails) = run(seed, false);
        steps += w.steps;
        requests += w.started.len();
        checks += w.loss_checks;
        lacking += w.loss_lacking;
        window_checks += w.window_checks;
        overflows += w.hint_overflows;
        watch_failures += w.watch_failures;
        generation_checks += w.generation_checks;
        undisturbed_swaps += w.undisturbed_swaps;
        assert!(
            fails.is_empty(),
            "seed {seed} failed (replay with PAIR_SEED={seed}):\n{fails:#?}\nschedule: {:#?}\n{}",
            schedule(seed).1,
            w.report()
        );
    }
    // The window check ran, and lost hints and failed watchers were among
    // what it saw.
    // (About one write in a thousand finds its watcher failed: a run of
    // a few hundred schedules may have none.)
    assert!(window_checks > 0 && (n < 20 || overflows > 0) && (n < 500 || watch_failures > 0));
    // Replicas' trees were compared with the generations they committed.
    assert!(n < 20 || generation_checks > 0);
    // Swaps that nothing disturbed were among them, and each completed.
    assert!(n < 20 || undisturbed_swaps > 0);
    // Straight to the standard error, past the test harness's capture, so
    // that `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "pair simulation: {n} schedules of {} s, {steps} steps, {requests} procedures accepted, \
         {checks} takeovers' data-loss windows checked ({lacking} lacking a write), \
         {window_checks} reported windows checked ({overflows} hints lost to an overflow, \
         {watch_failures} watchers failed for good), {generation_checks} replica trees \
         compared with their generation, {undisturbed_swaps} swaps undisturbed (all completed), \
         {:.1} s wall",
        SCHEDULE.as_secs(),
        started.elapsed().as_secs_f64()
    );
}
