//! Scenarios in the simulator, each with a golden transcript in
//! `tests/golden/NAME.txt` (`UPDATE_GOLDEN=1` rewrites them) and assertions
//! on the outcome.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vrrp_fsm::sim::{GroupCommand, LinkConfig, Sim, What, swap_release};
use vrrp_fsm::{
    BackupMode, Config, ConfigBuilder, Event, Input, LinkState, Reason, State, SyncGroup,
    VirtualRouter,
};
use vrrp_proto::{Interval, Priority, Version, Vrid};

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn rfc(node: u8, prio: u8) -> ConfigBuilder {
    Config::builder(Version::V3, Vrid::new(1).unwrap(), ip(node).into())
        .priority(Priority(prio))
        .interval(Interval::from_centis(100).unwrap())
        .address(ip(100))
}

fn appliance(node: u8, prio: u8) -> ConfigBuilder {
    Config::appliance(Vrid::new(1).unwrap(), ip(node).into())
        .priority(Priority(prio))
        .address(ip(100))
}

fn factory(cfg: ConfigBuilder) -> impl FnMut(Instant) -> VirtualRouter + 'static {
    let cfg = cfg.build().unwrap();
    move |now| {
        let mut r = VirtualRouter::new(cfg.clone(), now);
        r.handle_startup(now);
        r
    }
}

fn sim_of(nodes: Vec<(u8, ConfigBuilder)>) -> Sim<VirtualRouter> {
    let mut sim = Sim::new(Instant::now(), 1);
    sim.set_all_links(LinkConfig::delay(Duration::from_millis(1)));
    for (n, cfg) in nodes {
        sim.add_node(IpAddr::V4(ip(n)), factory(cfg));
    }
    sim
}

#[track_caller]
fn golden(name: &str, transcript: &str) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "golden",
        &format!("{name}.txt"),
    ]
    .iter()
    .collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, transcript).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        want == transcript,
        "transcript {name} differs from {}:\n{transcript}",
        path.display()
    );
}

#[track_caller]
fn states(sim: &Sim<VirtualRouter>, want: &[Option<State>]) {
    let got: Vec<Option<State>> = (0..want.len())
        .map(|i| sim.engine(i).map(VirtualRouter::state))
        .collect();
    assert_eq!(got, want);
}

/// The transitions to Master: (ms, node, reason).
fn masters(sim: &Sim<VirtualRouter>) -> Vec<(u128, usize, Reason)> {
    sim.records()
        .iter()
        .filter_map(|r| match r.what {
            What::Event(Event::StateChange {
                to: State::Master,
                reason,
                ..
            }) => Some((r.at.as_millis(), r.node, reason)),
            _ => None,
        })
        .collect()
}

const M: Option<State> = Some(State::Master);
const B: Option<State> = Some(State::Backup);

#[test]
fn cold_start_pair() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(0), 1);
    sim.run_until(s(10));
    states(&sim, &[M, B]);
    // Priority 200 times out first: 3 s + 56/256 s.
    assert_eq!(masters(&sim), vec![(3218, 0, Reason::MasterDown)]);
    golden("cold_start_pair", &sim.transcript());
}

#[test]
fn second_boots_later_and_stays_backup() {
    // Appliance profile; the late unit even has the higher priority.
    let mut sim = sim_of(vec![(1, appliance(1, 100)), (2, appliance(2, 200))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(30), 1);
    sim.run_until(s(60));
    states(&sim, &[M, B]);
    assert_eq!(masters(&sim).len(), 1);
    golden("second_boots_later", &sim.transcript());
}

#[test]
fn master_dies() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.crash_at(Duration::from_millis(20_500), 0);
    sim.run_until(s(40));
    states(&sim, &[None, M]);
    // Last advertisement sent at 20.21875 s, heard 1 ms later; the Backup
    // takes over Master_Down_Interval (3.609375 s) later.
    let last = masters(&sim);
    assert_eq!(last[1].1, 1);
    assert_eq!(last[1].2, Reason::MasterDown);
    assert_eq!(last[1].0, 23_829);
    golden("master_dies", &sim.transcript());
}

#[test]
fn master_shuts_down_gracefully() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.command_at(Duration::from_millis(20_500), 0, Input::Shutdown);
    sim.run_until(s(30));
    states(&sim, &[Some(State::Initialize), M]);
    // Priority 0 heard at 20.501 s: Skew_Time (0.609375 s) later.
    assert_eq!(masters(&sim)[1], (21_110, 1, Reason::MasterReleased));
    golden("master_shuts_down", &sim.transcript());
}

#[test]
fn old_master_returns_without_failback() {
    let mut sim = sim_of(vec![(1, appliance(1, 200)), (2, appliance(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.crash_at(s(10), 0);
    sim.boot_at(s(30), 0);
    sim.run_until(s(60));
    states(&sim, &[B, M]);
    golden("old_master_returns_no_failback", &sim.transcript());
}

#[test]
fn old_master_returns_with_failback() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.crash_at(s(10), 0);
    sim.boot_at(s(30), 0);
    sim.run_until(s(60));
    states(&sim, &[M, B]);
    let m = masters(&sim);
    assert_eq!(m.last().map(|x| (x.1, x.2)), Some((0, Reason::Preempt)));
    golden("old_master_returns_failback", &sim.transcript());
}

#[test]
fn priority_change() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.command_at(s(10), 0, Input::SetPriority(Priority(50)));
    sim.run_until(s(30));
    states(&sim, &[B, M]);
    assert_eq!(masters(&sim).last().map(|x| x.2), Some(Reason::Preempt));
    golden("priority_change", &sim.transcript());
}

#[test]
fn partition_and_heal() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.partition_at(s(10), &[&[0], &[1]]);
    sim.heal_at(s(20));
    sim.run_until(s(19));
    states(&sim, &[M, M]);
    sim.run_until(s(30));
    states(&sim, &[M, B]);
    golden("partition_and_heal", &sim.transcript());
}

#[test]
fn passive_backup_with_dead_master() {
    let mut sim = sim_of(vec![
        (1, rfc(1, 200)),
        (2, rfc(2, 100).backup_mode(BackupMode::Passive)),
    ]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(0), 1);
    sim.crash_at(s(10), 0);
    sim.run_until(s(120));
    states(&sim, &[None, B]);
    sim.command_at(s(121), 1, Input::Takeover);
    sim.run_until(s(125));
    states(&sim, &[None, M]);
    assert_eq!(masters(&sim).last().map(|x| x.2), Some(Reason::Takeover));
    golden("passive_backup_dead_master", &sim.transcript());
}

#[test]
fn takeover_release_swap() {
    // Interval 10 s: Skew_Time alone would be 6 s; the armed swap takes the
    // link delay.
    let slow = |b: ConfigBuilder| b.interval(Interval::from_centis(1000).unwrap());
    let mut sim = sim_of(vec![(1, slow(rfc(1, 200))), (2, slow(rfc(2, 100)))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.command_at(s(60), 1, Input::Arm);
    sim.command_at(Duration::from_millis(60_500), 0, swap_release(Priority(50)));
    sim.run_until(s(200));
    states(&sim, &[B, M]);
    let m = masters(&sim);
    assert_eq!(m.last(), Some(&(60_501, 1, Reason::ArmedTakeover)));
    golden("takeover_release_swap", &sim.transcript());
}

#[test]
fn release_without_priority_change_comes_back() {
    // Preempt on, no priority change: the higher old Master takes the role
    // back once its hold-off ends (the swap is durable only with a priority
    // change in the same call).
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.command_at(s(10), 1, Input::Arm);
    sim.command_at(s(11), 0, Input::Release(vrrp_fsm::Release::new()));
    sim.run_until(s(12));
    states(&sim, &[B, M]);
    sim.run_until(s(30));
    states(&sim, &[M, B]);
    assert_eq!(
        masters(&sim).last().map(|x| (x.1, x.2)),
        Some((0, Reason::Preempt))
    );
    golden("release_without_priority_change", &sim.transcript());
}

#[test]
fn unarmed_takeover_bounces_back() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 100))]);
    sim.boot_at(s(0), 0);
    sim.boot_at(s(1), 1);
    sim.command_at(s(10), 1, Input::Takeover);
    sim.run_until(s(20));
    states(&sim, &[M, B]);
}

fn group_member(node: u8, vrid: u8, prio: u8) -> VirtualRouter {
    let cfg = Config::builder(Version::V3, Vrid::new(vrid).unwrap(), ip(node).into())
        .priority(Priority(prio))
        .address(Ipv4Addr::new(10, vrid, 0, 100))
        .gratuitous(vrrp_fsm::GratuitousConfig {
            count: 1,
            ..Default::default()
        })
        .build()
        .unwrap();
    VirtualRouter::new(cfg, Instant::now())
}

#[test]
fn sync_group_with_one_link_down() {
    let mut sim: Sim<SyncGroup> = Sim::new(Instant::now(), 1);
    sim.set_all_links(LinkConfig::delay(Duration::from_millis(1)));
    for (node, prio) in [(1u8, 200u8), (2, 100)] {
        sim.add_node(IpAddr::V4(ip(node)), move |now| {
            let mut g = SyncGroup::new((1..=3).map(|v| group_member(node, v, prio)).collect());
            g.handle_startup(now);
            g
        });
    }
    sim.boot_at(s(0), 0);
    sim.boot_at(s(0), 1);
    // Node 0's LAN (member 1) loses its link: the whole group steps aside.
    sim.command_at(
        s(20),
        0,
        GroupCommand::Member(1, Input::Link(LinkState::Down)),
    );
    sim.run_until(s(30));
    let st = |sim: &Sim<SyncGroup>, n: usize| -> Vec<State> {
        sim.engine(n)
            .unwrap()
            .members()
            .iter()
            .map(VirtualRouter::state)
            .collect()
    };
    assert_eq!(st(&sim, 0), vec![State::Initialize; 3]);
    assert_eq!(st(&sim, 1), vec![State::Master; 3]);
    // The link comes back: node 0 returns as Backup, then preempts.
    sim.command_at(
        s(40),
        0,
        GroupCommand::Member(1, Input::Link(LinkState::Up)),
    );
    sim.run_until(s(60));
    assert_eq!(st(&sim, 0), vec![State::Master; 3]);
    assert_eq!(st(&sim, 1), vec![State::Backup; 3]);
    golden("sync_group_link_down", &sim.transcript());
}

#[test]
fn three_routers() {
    let mut sim = sim_of(vec![(1, rfc(1, 200)), (2, rfc(2, 150)), (3, rfc(3, 100))]);
    for i in 0..3 {
        sim.boot_at(s(0), i);
    }
    sim.crash_at(s(10), 0);
    sim.run_until(s(20));
    states(&sim, &[None, M, B]);
    sim.crash_at(s(20), 1);
    sim.run_until(s(30));
    states(&sim, &[None, None, M]);
    sim.boot_at(s(30), 0);
    sim.run_until(s(45));
    states(&sim, &[M, None, B]);
    golden("three_routers", &sim.transcript());
}
