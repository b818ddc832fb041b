//! Engine unit tests in virtual time: one rule or behaviour each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use vrrp_fsm::{
    AcceptMode, BackupMode, CommandError, Config, ConfigBuilder, ConfigDrop, ConfigError, Event,
    Gratuitous, GratuitousConfig, Input, LinkState, Preempt, Reason, RecvError, Release, State,
    SyncGroup, TrackId, TrackState, VirtualRouter,
};
use vrrp_proto::{
    Addresses, Advertisement, Auth, DropReason, Endpoints, IPV4_GROUP, Interval, Ipv4ChecksumForm,
    ParseError, Priority, RecvMeta, Version, Vrid,
};

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const HIGHER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const LOWER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn vrid() -> Vrid {
    Vrid::new(7).unwrap()
}

fn cs(n: u16) -> Interval {
    Interval::from_centis(n).unwrap()
}

fn base(prio: u8) -> ConfigBuilder {
    Config::builder(Version::V3, vrid(), ME.into())
        .priority(Priority(prio))
        .interval(cs(100))
        .address(VIP)
        .gratuitous(GratuitousConfig {
            count: 1,
            spacing: Duration::from_millis(100),
            refresh: None,
        })
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

/// A started router and its time origin; events from startup drained.
fn started(b: ConfigBuilder) -> (VirtualRouter, Instant) {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(b.build().unwrap(), t0);
    r.handle_startup(t0);
    drain(&mut r);
    (r, t0)
}

fn drain(r: &mut VirtualRouter) -> Vec<Event> {
    let mut buf = [0u8; 128];
    while r.poll_transmit(&mut buf).is_some() {}
    std::iter::from_fn(|| r.poll_event()).collect()
}

/// Priorities of the advertisements queued, drained.
fn sent(r: &mut VirtualRouter) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut out = vec![];
    while let Some(t) = r.poll_transmit(&mut buf) {
        out.push(buf[2]);
        assert_eq!(t.src, IpAddr::V4(ME));
    }
    out
}

fn advert_from(src: Ipv4Addr, prio: u8, interval: Interval) -> (Vec<u8>, RecvMeta) {
    let adv = Advertisement::v3(vrid(), Priority(prio), interval, [VIP].into()).unwrap();
    message(&adv, src)
}

fn message(adv: &Advertisement, src: Ipv4Addr) -> (Vec<u8>, RecvMeta) {
    let mut buf = vec![0u8; adv.buffer_len()];
    let ends = Endpoints {
        src: src.into(),
        dst: IPV4_GROUP.into(),
    };
    adv.emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    let meta = RecvMeta {
        src: src.into(),
        dst: IPV4_GROUP.into(),
        ttl: 255,
    };
    (buf, meta)
}

#[track_caller]
fn advert(r: &mut VirtualRouter, at: Instant, src: Ipv4Addr, prio: u8) -> Result<(), RecvError> {
    let (b, m) = advert_from(src, prio, cs(100));
    r.handle_message(at, &b, m)
}

#[track_caller]
fn assert_state(r: &VirtualRouter, s: State) {
    assert_eq!(r.state(), s);
}

fn state_changes(events: &[Event]) -> Vec<(State, State, Reason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StateChange { from, to, reason } => Some((*from, *to, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn startup_backup_then_master_after_down_interval() {
    let (mut r, t0) = started(base(100));
    assert_state(&r, State::Backup);
    // RFC 9568 §6.1: 3 × 1 s + (156 × 1 s) / 256.
    assert_eq!(r.master_down_interval(), Duration::from_micros(3_609_375));
    assert_eq!(
        r.poll_timeout(),
        Some(t0 + Duration::from_micros(3_609_375))
    );
    r.handle_timeout(t0 + Duration::from_micros(3_609_374));
    assert_state(&r, State::Backup);
    r.handle_timeout(t0 + Duration::from_micros(3_609_375));
    assert_state(&r, State::Master);
    assert_eq!(sent(&mut r), vec![100]);
    let ev = drain(&mut r);
    assert_eq!(
        ev,
        vec![
            Event::StateChange {
                from: State::Backup,
                to: State::Master,
                reason: Reason::MasterDown
            },
            Event::ClaimAddresses,
            Event::SendGratuitous(Gratuitous::Burst { index: 1, count: 1 }),
        ]
    );
    assert_eq!(r.stats().transitions(State::Backup, State::Master), 1);
}

#[test]
fn startup_event_order() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(base(100).build().unwrap(), t0);
    assert_state(&r, State::Initialize);
    assert_eq!(r.poll_timeout(), None);
    r.handle_startup(t0);
    assert_eq!(
        state_changes(&drain(&mut r)),
        vec![(State::Initialize, State::Backup, Reason::Startup)]
    );
}

#[test]
fn owner_goes_master_at_once() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(base(255).build().unwrap(), t0);
    r.handle_startup(t0);
    assert_state(&r, State::Master);
    let ev = drain(&mut r);
    assert_eq!(
        state_changes(&ev),
        vec![(State::Initialize, State::Master, Reason::Owner)]
    );
    // The owner always accepts (RFC 9568 §6.1 Accept_Mode).
    assert!(ev.contains(&Event::AcceptMode(true)));
    // A Passive owner waits for a takeover.
    let (r, _) = started(base(255).backup_mode(BackupMode::Passive));
    assert_state(&r, State::Backup);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn master_advertises_every_interval() {
    let (mut r, t0) = started(base(255));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1000)));
    r.handle_timeout(ms(t0, 999));
    assert!(sent(&mut r).is_empty());
    r.handle_timeout(ms(t0, 1000));
    assert_eq!(sent(&mut r), vec![255]);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 2000)));
}

#[test]
fn backup_accepts_higher_and_resets_timer() {
    let (mut r, t0) = started(base(100));
    advert(&mut r, ms(t0, 500), HIGHER_IP, 200).unwrap();
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 500) + r.master_down_interval())
    );
    assert_eq!(r.master(), Some(IpAddr::V4(HIGHER_IP)));
    assert_eq!(
        drain(&mut r),
        vec![Event::MasterHeard {
            address: HIGHER_IP.into(),
            priority: Priority(200)
        }]
    );
    // The same Master again: no new event.
    advert(&mut r, ms(t0, 1500), HIGHER_IP, 200).unwrap();
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats().rx_accepted, 2);
}

#[test]
fn backup_hearing_priority_zero_waits_skew_only() {
    let (mut r, t0) = started(base(100));
    advert(&mut r, ms(t0, 500), HIGHER_IP, 200).unwrap();
    advert(&mut r, ms(t0, 900), HIGHER_IP, 0).unwrap();
    let skew = r.skew_time();
    assert_eq!(skew, Duration::from_micros(609_375));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 900) + skew));
    r.handle_timeout(ms(t0, 900) + skew);
    assert_state(&r, State::Master);
    assert_eq!(
        state_changes(&drain(&mut r)),
        vec![(State::Backup, State::Master, Reason::MasterReleased)]
    );
}

#[test]
fn v3_backup_adopts_master_interval() {
    let (mut r, t0) = started(base(100));
    let (b, m) = advert_from(HIGHER_IP, 200, cs(10));
    r.handle_message(ms(t0, 10), &b, m).unwrap();
    assert_eq!(r.master_interval(), cs(10));
    // 3 × 100 ms + 156 × 100 ms / 256.
    assert_eq!(r.master_down_interval(), Duration::from_micros(360_937));
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 10) + Duration::from_micros(360_937))
    );
}

#[test]
fn master_steps_down_for_higher_priority() {
    let (mut r, t0) = started(
        base(255)
            .priority(Priority(150))
            .startup_delay(Duration::ZERO),
    );
    r.takeover(t0).unwrap();
    drain(&mut r);
    advert(&mut r, ms(t0, 100), LOWER_IP, 200).unwrap();
    assert_state(&r, State::Backup);
    let ev = drain(&mut r);
    assert_eq!(
        state_changes(&ev),
        vec![(State::Master, State::Backup, Reason::HigherPriority)]
    );
    assert_eq!(ev[1], Event::ReleaseAddresses);
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 100) + r.master_down_interval())
    );
}

#[test]
fn equal_priority_higher_address_wins() {
    let (mut r, t0) = started(base(150));
    r.takeover(t0).unwrap();
    drain(&mut r);
    // Equal priority from a lower address: we stay and answer at once.
    advert(&mut r, ms(t0, 100), LOWER_IP, 150).unwrap();
    assert_state(&r, State::Master);
    assert_eq!(sent(&mut r), vec![150]);
    // Equal priority from a higher address: we yield.
    advert(&mut r, ms(t0, 200), HIGHER_IP, 150).unwrap();
    assert_state(&r, State::Backup);
}

#[test]
fn master_answers_lower_priority_at_once() {
    let (mut r, t0) = started(base(150));
    r.takeover(t0).unwrap();
    drain(&mut r);
    advert(&mut r, ms(t0, 300), HIGHER_IP, 100).unwrap();
    assert_state(&r, State::Master);
    assert_eq!(sent(&mut r), vec![150]);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1300)));
    // Priority 0 is answered too (RFC 9568 §6.4.3).
    advert(&mut r, ms(t0, 400), HIGHER_IP, 0).unwrap();
    assert_eq!(sent(&mut r), vec![150]);
}

#[test]
fn backup_preempts_lower_priority_master() {
    let (mut r, t0) = started(base(200));
    advert(&mut r, ms(t0, 100), HIGHER_IP, 100).unwrap();
    assert_eq!(r.stats().rx_preempt_discards, 1);
    assert!(drain(&mut r).is_empty());
    let down = r.poll_timeout().unwrap();
    assert_eq!(down, t0 + r.master_down_interval());
    r.handle_timeout(down);
    assert_eq!(
        state_changes(&drain(&mut r)),
        vec![(State::Backup, State::Master, Reason::Preempt)]
    );
}

#[test]
fn preempt_off_and_equal_priority_never_preempt() {
    let (mut r, t0) = started(base(200).preempt(Preempt::Disabled));
    advert(&mut r, ms(t0, 100), HIGHER_IP, 100).unwrap();
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 100) + r.master_down_interval())
    );
    let (mut r, t0) = started(base(200));
    advert(&mut r, ms(t0, 100), LOWER_IP, 200).unwrap();
    assert_eq!(r.stats().rx_preempt_discards, 0);
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 100) + r.master_down_interval())
    );
}

#[test]
fn preempt_delay_defers_then_preempts() {
    let (mut r, t0) = started(base(200).preempt_delay(Duration::from_secs(5)));
    for i in 0..5 {
        advert(&mut r, ms(t0, 100 + 1000 * i), HIGHER_IP, 100).unwrap();
        assert_eq!(r.stats().rx_preempt_discards, 0, "deferred at {i} s");
    }
    advert(&mut r, ms(t0, 5100), HIGHER_IP, 100).unwrap();
    assert_eq!(r.stats().rx_preempt_discards, 1);
    r.handle_timeout(ms(t0, 4100) + r.master_down_interval());
    assert_state(&r, State::Master);
}

#[test]
fn config_drop_rules() {
    let (mut r, t0) = started(base(100));
    let at = ms(t0, 1);
    let check = |r: &mut VirtualRouter, adv: Advertisement, src: Ipv4Addr, why: ConfigDrop| {
        let (b, m) = message(&adv, src);
        assert_eq!(r.handle_message(at, &b, m), Err(RecvError::Config(why)));
        assert_eq!(r.stats().config_drops(why), 1, "{why:?}");
    };
    let v3 = |vrid: u8, addrs: Addresses| {
        Advertisement::v3(Vrid::new(vrid).unwrap(), Priority(200), cs(100), addrs).unwrap()
    };
    check(&mut r, v3(8, [VIP].into()), HIGHER_IP, ConfigDrop::Vrid);
    check(&mut r, v3(7, [VIP].into()), ME, ConfigDrop::Own);
    check(
        &mut r,
        v3(7, [Ipv4Addr::new(10, 0, 0, 101)].into()),
        HIGHER_IP,
        ConfigDrop::Addresses,
    );
    let v2 = Advertisement::v2(
        vrid(),
        Priority(200),
        Interval::from_secs(1).unwrap(),
        Auth::None,
        [VIP].into(),
    )
    .unwrap();
    check(&mut r, v2, HIGHER_IP, ConfigDrop::Version);
    // The owner's advertisement goes through a list mismatch (RFC 9568 §7.1).
    let owner = Advertisement::v3(vrid(), Priority(255), cs(100), [VIP, LOWER_IP].into()).unwrap();
    let (b, m) = message(&owner, HIGHER_IP);
    r.handle_message(at, &b, m).unwrap();
    assert_eq!(r.stats().rx_address_mismatch_owner, 1);
    // The same list in another order matches.
    let two = base(100).address(Ipv4Addr::new(10, 0, 0, 101));
    let (mut r2, t0) = started(two);
    let adv = v3(7, [Ipv4Addr::new(10, 0, 0, 101), VIP].into());
    let (b, m) = message(&adv, HIGHER_IP);
    r2.handle_message(t0, &b, m).unwrap();
    // A packet-alone rule is counted by its vrrp-proto reason.
    let (b, mut m) = advert_from(HIGHER_IP, 200, cs(100));
    m.ttl = 64;
    assert_eq!(
        r2.handle_message(t0, &b, m),
        Err(RecvError::Packet(ParseError::Ttl { ttl: 64 }))
    );
    assert_eq!(r2.stats().proto_drops(DropReason::Ttl), 1);
    assert_eq!(r2.stats().dropped(), 1);
}

#[test]
fn v2_rules_auth_and_interval() {
    let cfg = Config::builder(Version::V2, vrid(), ME.into())
        .address(VIP)
        .auth(Auth::simple(b"secret").unwrap());
    let (mut r, t0) = started(cfg);
    let mk = |auth: Auth, secs: u8| {
        Advertisement::v2(
            vrid(),
            Priority(200),
            Interval::from_secs(secs).unwrap(),
            auth,
            [VIP].into(),
        )
        .unwrap()
    };
    let (b, m) = message(&mk(Auth::simple(b"secret").unwrap(), 1), HIGHER_IP);
    r.handle_message(t0, &b, m).unwrap();
    let (b, m) = message(&mk(Auth::simple(b"wrong").unwrap(), 1), HIGHER_IP);
    assert_eq!(
        r.handle_message(t0, &b, m),
        Err(RecvError::Config(ConfigDrop::Auth))
    );
    let (b, m) = message(&mk(Auth::None, 1), HIGHER_IP);
    assert_eq!(
        r.handle_message(t0, &b, m),
        Err(RecvError::Config(ConfigDrop::Auth))
    );
    let (b, m) = message(&mk(Auth::simple(b"secret").unwrap(), 2), HIGHER_IP);
    assert_eq!(
        r.handle_message(t0, &b, m),
        Err(RecvError::Config(ConfigDrop::Interval))
    );
    // v2 skew is (256 - 100) / 256 s whatever the interval.
    assert_eq!(r.skew_time(), Duration::from_micros(609_375));
}

#[test]
fn unicast_peers_send_to_each_and_hear_only_them() {
    let cfg = base(255).peer(HIGHER_IP).peer(Ipv4Addr::new(10, 0, 0, 3));
    let (mut r, t0) = started(cfg);
    let mut buf = [0u8; 64];
    let a = r.poll_transmit(&mut buf);
    drain(&mut r);
    let _ = a;
    r.handle_timeout(ms(t0, 1000));
    let d1 = r.poll_transmit(&mut buf).unwrap().dst;
    let d2 = r.poll_transmit(&mut buf).unwrap().dst;
    assert_eq!(
        (d1, d2),
        (HIGHER_IP.into(), Ipv4Addr::new(10, 0, 0, 3).into())
    );
    assert!(r.poll_transmit(&mut buf).is_none());
    let (b, m) = advert_from(LOWER_IP, 100, cs(100));
    assert_eq!(
        r.handle_message(t0, &b, m),
        Err(RecvError::Config(ConfigDrop::Peer))
    );
}

#[test]
fn passive_backup_ignores_and_never_times_out() {
    let (mut r, t0) = started(base(100).backup_mode(BackupMode::Passive));
    assert_eq!(r.poll_timeout(), None);
    advert(&mut r, ms(t0, 100), HIGHER_IP, 200).unwrap();
    assert_eq!(r.stats().rx_ignored_passive, 1);
    r.handle_timeout(ms(t0, 3_600_000));
    assert_state(&r, State::Backup);
    // Only an explicit takeover makes it Master.
    r.takeover(ms(t0, 3_600_001)).unwrap();
    assert_state(&r, State::Master);
    // Back to Active as Backup restarts the timer.
    let (mut r, t0) = started(base(100).backup_mode(BackupMode::Passive));
    r.set_backup_mode(ms(t0, 50), BackupMode::Active);
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 50) + r.master_down_interval())
    );
}

#[test]
fn armed_backup_takes_over_on_release_at_once() {
    for mode in [BackupMode::Active, BackupMode::Passive] {
        let (mut r, t0) = started(base(100).backup_mode(mode));
        advert(&mut r, ms(t0, 100), HIGHER_IP, 200).unwrap();
        r.arm_takeover(ms(t0, 150)).unwrap();
        assert!(r.is_armed());
        advert(&mut r, ms(t0, 200), HIGHER_IP, 0).unwrap();
        assert_state(&r, State::Master);
        assert!(!r.is_armed());
        assert_eq!(sent(&mut r), vec![100], "first advertisement at once");
        assert_eq!(
            state_changes(&drain(&mut r)),
            vec![(State::Backup, State::Master, Reason::ArmedTakeover)]
        );
    }
}

#[test]
fn armed_passive_backup_takes_over_when_the_master_dies_before_releasing() {
    let (mut r, t0) = started(base(100).backup_mode(BackupMode::Passive));
    r.arm_takeover(ms(t0, 100)).unwrap();
    let down = r.master_down_interval();
    assert_eq!(r.poll_timeout(), Some(ms(t0, 100) + down));
    // The Master still speaks: the watch restarts, nothing else moves.
    advert(&mut r, ms(t0, 1_000), HIGHER_IP, 200).unwrap();
    assert_eq!(r.stats().rx_ignored_passive, 0);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1_000) + down));
    r.handle_timeout(ms(t0, 1_000) + down - Duration::from_millis(1));
    assert_state(&r, State::Backup);
    // Then silence: the armed Backup takes over, as the swap meant.
    r.handle_timeout(ms(t0, 1_000) + down);
    assert_state(&r, State::Master);
    assert!(!r.is_armed());
    let changes = state_changes(&drain(&mut r));
    assert_eq!(
        changes.last(),
        Some(&(State::Backup, State::Master, Reason::ArmedTakeover))
    );

    // Disarmed, a Passive Backup is passive again: no timer, adverts ignored.
    let (mut r, t0) = started(base(100).backup_mode(BackupMode::Passive));
    r.arm_takeover(ms(t0, 100)).unwrap();
    r.disarm(ms(t0, 200));
    assert_eq!(r.poll_timeout(), None);
    advert(&mut r, ms(t0, 300), HIGHER_IP, 200).unwrap();
    assert_eq!(r.stats().rx_ignored_passive, 1);
    r.handle_timeout(ms(t0, 3_600_000));
    assert_state(&r, State::Backup);
}

#[test]
fn release_sends_zero_and_holds_off() {
    let (mut r, t0) = started(base(200).release_hold_off(Duration::from_secs(10)));
    r.takeover(t0).unwrap();
    drain(&mut r);
    r.release(ms(t0, 1000), Release::new()).unwrap();
    assert_state(&r, State::Backup);
    assert_eq!(sent(&mut r), vec![0]);
    assert_eq!(
        state_changes(&drain(&mut r)),
        vec![(State::Master, State::Backup, Reason::Release)]
    );
    // Nobody answers: Master again only after the hold-off.
    assert_eq!(r.poll_timeout(), Some(ms(t0, 11_000)));
    r.handle_timeout(ms(t0, 10_999));
    assert_state(&r, State::Backup);
    r.handle_timeout(ms(t0, 11_000));
    assert_state(&r, State::Master);
    assert_eq!(
        r.release(ms(t0, 12_000), Release::new().priority(Priority(0))),
        Err(CommandError::ZeroPriority)
    );
    r.release(ms(t0, 12_000), Release::new().priority(Priority(50)))
        .unwrap();
    assert_eq!(r.priority(), Priority(50));
    assert_eq!(
        r.release(ms(t0, 12_001), Release::new()),
        Err(CommandError::NotMaster {
            state: State::Backup
        })
    );
}

#[test]
fn shutdown_as_master_sends_priority_zero() {
    let (mut r, t0) = started(base(255).accept_mode(AcceptMode::Enabled));
    r.handle_shutdown(ms(t0, 10));
    assert_state(&r, State::Initialize);
    assert_eq!(sent(&mut r), vec![0]);
    let ev = drain(&mut r);
    assert_eq!(
        ev,
        vec![
            Event::StateChange {
                from: State::Master,
                to: State::Initialize,
                reason: Reason::Shutdown
            },
            Event::ReleaseAddresses,
            Event::AcceptMode(false),
        ]
    );
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(
        advert(&mut r, ms(t0, 20), HIGHER_IP, 100),
        Err(RecvError::Config(ConfigDrop::NotRunning))
    );
}

#[test]
fn gratuitous_burst_then_refresh() {
    let cfg = base(255).gratuitous(GratuitousConfig {
        count: 3,
        spacing: Duration::from_millis(200),
        refresh: Some(Duration::from_secs(60)),
    });
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(cfg.build().unwrap(), t0);
    r.handle_startup(t0);
    let mut garps = vec![];
    let mut now = t0;
    while now < ms(t0, 61_000) {
        for e in drain(&mut r) {
            if let Event::SendGratuitous(g) = e {
                garps.push(((now - t0).as_millis(), g));
            }
        }
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
    }
    assert_eq!(
        garps,
        vec![
            (0, Gratuitous::Burst { index: 1, count: 3 }),
            (200, Gratuitous::Burst { index: 2, count: 3 }),
            (400, Gratuitous::Burst { index: 3, count: 3 }),
            (60_400, Gratuitous::Refresh),
        ]
    );
}

#[test]
fn priority_change_as_master_advertises_at_once() {
    let (mut r, t0) = started(base(255).priority(Priority(200)));
    r.takeover(t0).unwrap();
    drain(&mut r);
    r.set_priority(ms(t0, 300), Priority(90)).unwrap();
    assert_eq!(sent(&mut r), vec![90]);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1300)));
    assert_eq!(
        r.set_priority(ms(t0, 300), Priority(0)),
        Err(CommandError::ZeroPriority)
    );
}

#[test]
fn tracked_weights_adjust_priority() {
    let cfg = base(100).track(TrackId(1), -60).track(TrackId(2), 30);
    let (mut r, t0) = started(cfg);
    assert_eq!(r.priority(), Priority(130));
    r.set_track(t0, TrackId(1), TrackState::Down).unwrap();
    assert_eq!(r.priority(), Priority(70));
    r.set_track(t0, TrackId(2), TrackState::Down).unwrap();
    assert_eq!(r.priority(), Priority(40));
    assert_eq!(
        r.set_track(t0, TrackId(3), TrackState::Down),
        Err(CommandError::UnknownTrack { id: 3 })
    );
    // Clamped to 1-254.
    let (r, _) = started(base(250).track(TrackId(1), 100));
    assert_eq!(r.priority(), Priority(254));
}

#[test]
fn startup_delay_holds_mastership() {
    let (mut r, t0) = started(base(255).startup_delay(Duration::from_secs(10)));
    assert_state(&r, State::Backup);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 10_000)));
    r.handle_timeout(ms(t0, 9_999));
    assert_state(&r, State::Backup);
    r.handle_timeout(ms(t0, 10_000));
    assert_state(&r, State::Master);
}

#[test]
fn link_down_and_up() {
    let (mut r, t0) = started(base(255));
    r.handle_link(ms(t0, 5), LinkState::Down);
    assert_state(&r, State::Initialize);
    assert!(sent(&mut r).is_empty(), "nothing sent on a dead link");
    assert_eq!(
        state_changes(&drain(&mut r)),
        vec![(State::Master, State::Initialize, Reason::LinkDown)]
    );
    r.handle_startup(ms(t0, 6));
    assert_state(&r, State::Initialize);
    r.handle_link(ms(t0, 7), LinkState::Up);
    assert_state(&r, State::Master);
}

#[test]
fn inputs_map_to_methods() {
    let (mut r, t0) = started(base(100));
    assert_eq!(
        r.handle_input(t0, Input::Release(Release::new())),
        Err(CommandError::NotMaster {
            state: State::Backup
        })
    );
    r.handle_input(t0, Input::Arm).unwrap();
    r.handle_input(t0, Input::Disarm).unwrap();
    assert!(!r.is_armed());
    r.handle_input(t0, Input::Takeover).unwrap();
    assert_state(&r, State::Master);
    assert_eq!(
        r.handle_input(t0, Input::Arm),
        Err(CommandError::NotBackup {
            state: State::Master
        })
    );
}

#[test]
fn small_buffer_is_counted_not_fatal() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(base(255).build().unwrap(), t0);
    r.handle_startup(t0);
    let mut tiny = [0u8; 4];
    assert!(r.poll_transmit(&mut tiny).is_none());
    assert_eq!(r.stats().tx_buffer_too_small, 1);
}

#[test]
fn datagram_roundtrip_between_two_routers() {
    let t0 = Instant::now();
    let mut a = VirtualRouter::new(base(255).build().unwrap(), t0);
    a.handle_startup(t0);
    let mut b = VirtualRouter::new(
        Config::builder(Version::V3, vrid(), HIGHER_IP.into())
            .address(VIP)
            .build()
            .unwrap(),
        t0,
    );
    b.handle_startup(t0);
    let mut buf = [0u8; 128];
    let tx = a.poll_transmit_datagram(&mut buf).unwrap();
    b.handle_datagram(ms(t0, 1), &buf[..tx.len]).unwrap();
    assert_eq!(b.master(), Some(IpAddr::V4(ME)));
}

#[test]
fn ipv4_datagrams_are_numbered_one_up_skipping_zero() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(base(255).build().unwrap(), t0);
    r.handle_startup(t0);
    let mut buf = [0u8; 128];
    let mut ids = Vec::new();
    // Past one wrap of the 16-bit field: 65,537 advertisements.
    for _ in 0..=u32::from(u16::MAX) + 1 {
        while let Some(tx) = r.poll_transmit_datagram(&mut buf) {
            let d = &buf[..tx.len];
            assert!(
                vrrp_proto::check_datagram(d).is_ok(),
                "a datagram that does not check"
            );
            ids.push(u16::from_be_bytes([d[4], d[5]]));
        }
        let due = r
            .poll_timeout()
            .expect("a Master has its next advertisement");
        r.handle_timeout(due);
    }
    assert!(
        ids.len() > usize::from(u16::MAX) + 1,
        "{} datagrams",
        ids.len()
    );
    assert_eq!(ids[..3], [1, 2, 3]);
    assert!(
        !ids.contains(&0),
        "identification 0 leaves the choice to the kernel"
    );
    for w in ids.windows(2) {
        let next = if w[0] == u16::MAX { 1 } else { w[0] + 1 };
        assert_eq!(w[1], next, "identifications one up");
    }
}

#[test]
fn config_errors() {
    let b = || Config::builder(Version::V3, vrid(), ME.into());
    assert_eq!(b().build().unwrap_err(), ConfigError::NoAddresses);
    assert_eq!(
        b().address(VIP).priority(Priority(0)).build().unwrap_err(),
        ConfigError::ZeroPriority
    );
    assert_eq!(
        b().address(VIP)
            .address(Ipv6Addr::LOCALHOST)
            .build()
            .unwrap_err(),
        ConfigError::MixedFamilies
    );
    assert_eq!(
        Config::builder(Version::V2, vrid(), ME.into())
            .address(VIP)
            .interval(cs(50))
            .build()
            .unwrap_err(),
        ConfigError::Interval {
            centis: 50,
            version: 2
        }
    );
    assert_eq!(
        b().address(VIP)
            .auth(Auth::simple(b"x").unwrap())
            .build()
            .unwrap_err(),
        ConfigError::V3Auth
    );
    assert_eq!(
        b().address(VIP).peer(ME).build().unwrap_err(),
        ConfigError::Peer { index: 0 }
    );
    assert_eq!(
        b().address(VIP)
            .track(TrackId(1), 1)
            .track(TrackId(1), 2)
            .build()
            .unwrap_err(),
        ConfigError::Track { index: 1 }
    );
    let v6 = Config::builder(Version::V3, vrid(), "2001:db8::1".parse().unwrap())
        .address("2001:db8::100".parse::<Ipv6Addr>().unwrap());
    assert_eq!(
        v6.clone().build().unwrap_err(),
        ConfigError::PrimaryNotLinkLocal
    );
    assert!(
        v6.peer("2001:db8::2".parse::<IpAddr>().unwrap())
            .build()
            .is_ok()
    );
    assert_eq!(
        Config::builder(Version::V2, vrid(), "fe80::1".parse().unwrap())
            .address("fe80::100".parse::<Ipv6Addr>().unwrap())
            .build()
            .unwrap_err(),
        ConfigError::V2Ipv6
    );
    let app = Config::appliance(vrid(), ME.into())
        .address(VIP)
        .build()
        .unwrap();
    assert_eq!(app.preempt(), Preempt::Disabled);
    assert_eq!(app.accept_mode(), AcceptMode::Enabled);
}

fn member(vrid: u8, prio: u8) -> VirtualRouter {
    let cfg = Config::builder(Version::V3, Vrid::new(vrid).unwrap(), ME.into())
        .priority(Priority(prio))
        .address(Ipv4Addr::new(10, 0, vrid, 100))
        .build()
        .unwrap();
    VirtualRouter::new(cfg, Instant::now())
}

#[test]
fn sync_group_moves_together() {
    let t0 = Instant::now();
    let mut g = SyncGroup::new(vec![member(1, 100), member(2, 100), member(3, 100)]);
    g.handle_startup(t0);
    while g.poll_event().is_some() {}
    // Member 1 hears a Master; 0 and 2 do not and time out together,
    // dragging 1 along.
    let adv = Advertisement::v3(
        Vrid::new(2).unwrap(),
        Priority(200),
        cs(100),
        [Ipv4Addr::new(10, 0, 2, 100)].into(),
    )
    .unwrap();
    let (b, m) = message(&adv, HIGHER_IP);
    g.handle_message(ms(t0, 1000), &b, m).unwrap();
    let t = g.poll_timeout().unwrap();
    g.handle_timeout(t);
    let states: Vec<State> = g.members().iter().map(VirtualRouter::state).collect();
    assert_eq!(states, vec![State::Master; 3]);
    let forced = std::iter::from_fn(|| g.poll_event())
        .filter(|(_, e)| {
            matches!(
                e,
                Event::StateChange {
                    reason: Reason::SyncGroup,
                    ..
                }
            )
        })
        .count();
    assert_eq!(forced, 1, "only member 1 is forced");
    // One link down takes the group to Initialize; back up restarts it.
    g.handle_link(ms(t0, 5000), 1, LinkState::Down).unwrap();
    assert!(g.members().iter().all(|m| m.state() == State::Initialize));
    g.handle_link(ms(t0, 6000), 1, LinkState::Up).unwrap();
    assert!(g.members().iter().all(|m| m.state() == State::Backup));
    assert_eq!(
        g.handle_link(ms(t0, 6000), 9, LinkState::Up),
        Err(CommandError::NoMember { index: 9 })
    );
}

#[test]
fn ipv6_router_hears_link_local_master() {
    let me: Ipv6Addr = "fe80::5".parse().unwrap();
    let peer: Ipv6Addr = "fe80::9".parse().unwrap();
    let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
    let cfg = Config::builder(Version::V3, vrid(), me.into())
        .address(vip)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(cfg, t0);
    r.handle_startup(t0);
    let adv = Advertisement::v3(vrid(), Priority(200), cs(100), [vip].into()).unwrap();
    let ends = Endpoints {
        src: peer.into(),
        dst: vrrp_proto::IPV6_GROUP.into(),
    };
    let mut buf = [0u8; 64];
    let n = adv
        .emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    let meta = RecvMeta {
        src: peer.into(),
        dst: vrrp_proto::IPV6_GROUP.into(),
        ttl: 255,
    };
    r.handle_message(ms(t0, 1), &buf[..n], meta).unwrap();
    assert_eq!(r.master(), Some(IpAddr::V6(peer)));
    // An IPv4 advertisement never reaches an IPv6 router's state machine.
    let (b, m) = advert_from(HIGHER_IP, 200, cs(100));
    assert_eq!(
        r.handle_message(ms(t0, 2), &b, m),
        Err(RecvError::Config(ConfigDrop::Addresses))
    );
    r.takeover(ms(t0, 3)).unwrap();
    let tx = r.poll_transmit(&mut buf).unwrap();
    assert_eq!(tx.dst, IpAddr::V6(vrrp_proto::IPV6_GROUP));
    assert_eq!(tx.src, IpAddr::V6(me));
}

#[test]
fn sync_group_passive_member_follows_only_takeover() {
    let t0 = Instant::now();
    let mut passive = member(2, 100);
    passive.set_backup_mode(t0, BackupMode::Passive);
    let mut g = SyncGroup::new(vec![member(1, 100), passive]);
    g.handle_startup(t0);
    let t = g.poll_timeout().unwrap();
    g.handle_timeout(t);
    let states: Vec<State> = g.members().iter().map(VirtualRouter::state).collect();
    assert_eq!(states, vec![State::Master, State::Backup]);
    let mut g = SyncGroup::new(vec![member(1, 100), {
        let mut p = member(2, 100);
        p.set_backup_mode(t0, BackupMode::Passive);
        p
    }]);
    g.handle_startup(t0);
    g.handle_input(t0, 0, Input::Takeover).unwrap();
    assert!(g.members().iter().all(|m| m.state() == State::Master));
}

/// What a driver may hold: a Backup's advertisements from the Master it
/// heard, at that priority and interval; nothing before a Master is heard,
/// nothing as Master. Held ones, handed in together with their arrival
/// times, make no transmit and no event, and the Master_Down deadline runs
/// from the last one's arrival.
#[test]
fn a_backup_names_the_advertisements_it_may_take_late() {
    let (mut r, t0) = started(base(100));
    assert_state(&r, State::Backup);
    assert_eq!(r.routine_advertisement(), None, "no Master heard yet");
    advert(&mut r, ms(t0, 100), HIGHER_IP, 200).unwrap();
    drain(&mut r);
    let routine = r.routine_advertisement().expect("a Master heard");
    assert_eq!(
        routine,
        vrrp_fsm::Routine {
            vrid: vrid(),
            source: HIGHER_IP.into(),
            priority: Priority(200),
            interval: Some(cs(100)),
        }
    );
    for k in 1..=3 {
        advert(&mut r, ms(t0, 100 + k * 1000), HIGHER_IP, 200).unwrap();
    }
    assert!(drain(&mut r).is_empty());
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 3100) + r.master_down_interval())
    );
    assert_eq!(r.routine_advertisement(), Some(routine));
    // A priority 0 does not match it (it must come at once): it starts
    // the skew timer.
    advert(&mut r, ms(t0, 3200), HIGHER_IP, 0).unwrap();
    assert_eq!(r.poll_timeout(), Some(ms(t0, 3200) + r.skew_time()));
    // Master: nothing.
    r.handle_timeout(r.poll_timeout().unwrap());
    assert_state(&r, State::Master);
    assert_eq!(r.routine_advertisement(), None);
}
