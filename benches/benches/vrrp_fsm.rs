//! vrrp-fsm: the cost of one received advertisement in Backup and in
//! Master, one timeout, and one simulated hour of a pair at a 10 ms
//! interval (about 720,000 events: 360,000 advertisements sent and as many
//! received).
//!
//! `cargo bench --bench vrrp_fsm`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vrrp_fsm::sim::{LinkConfig, Sim};
use vrrp_fsm::{Config, GratuitousConfig, State, VirtualRouter};
use vrrp_proto::{
    Advertisement, Endpoints, IPV4_GROUP, Interval, Ipv4ChecksumForm, Priority, RecvMeta, Version,
    Vrid,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn config(node: u8, prio: u8, cs: u16) -> Config {
    Config::builder(
        Version::V3,
        Vrid::new(1).expect("vrid"),
        Ipv4Addr::new(10, 0, 0, node).into(),
    )
    .priority(Priority(prio))
    .interval(Interval::from_centis(cs).expect("interval"))
    .address(VIP)
    .gratuitous(GratuitousConfig {
        count: 0,
        ..Default::default()
    })
    .build()
    .expect("config")
}

fn advert_from(node: u8, prio: u8) -> (Vec<u8>, RecvMeta) {
    let src: IpAddr = Ipv4Addr::new(10, 0, 0, node).into();
    let adv = Advertisement::v3(
        Vrid::new(1).expect("vrid"),
        Priority(prio),
        Interval::from_centis(100).expect("interval"),
        [VIP].into(),
    )
    .expect("advert");
    let mut buf = vec![0u8; adv.buffer_len()];
    adv.emit(
        &mut buf,
        Endpoints {
            src,
            dst: IPV4_GROUP.into(),
        },
        Ipv4ChecksumForm::PseudoHeader,
    )
    .expect("emit");
    let meta = RecvMeta {
        src,
        dst: IPV4_GROUP.into(),
        ttl: 255,
    };
    (buf, meta)
}

fn drain(r: &mut VirtualRouter, buf: &mut [u8]) {
    while let Some(t) = r.poll_transmit(buf) {
        black_box(t);
    }
    while let Some(e) = r.poll_event() {
        black_box(e);
    }
}

fn per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("vrrp_fsm");
    let t0 = Instant::now();
    let mut buf = [0u8; 64];

    // Baseline: vrrp-proto's packet-alone checks of the same message, which
    // every receive below includes.
    let (msg, meta) = advert_from(2, 200);
    g.bench_function("baseline_proto_check_message", |b| {
        b.iter(|| black_box(vrrp_proto::check_message(black_box(&msg), meta).is_ok()))
    });

    // A Backup hears its Master: checks, accepts, resets the timer.
    let mut backup = VirtualRouter::new(config(1, 100, 100), t0);
    backup.handle_startup(t0);
    drain(&mut backup, &mut buf);
    let mut now = t0;
    g.bench_function("backup_receives_advertisement", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            let r = backup.handle_message(now, black_box(&msg), meta);
            drain(&mut backup, &mut buf);
            black_box(r)
        })
    });
    assert_eq!(backup.state(), State::Backup);

    // A Master hears a lower priority and answers at once (RFC 9568
    // §6.4.3): checks, then writes its own advertisement.
    let mut master = VirtualRouter::new(config(2, 200, 100), t0);
    master.handle_startup(t0);
    master.takeover(t0).expect("takeover");
    drain(&mut master, &mut buf);
    let (low, low_meta) = advert_from(1, 100);
    let mut now = t0;
    g.bench_function("master_receives_advertisement", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            let r = master.handle_message(now, black_box(&low), low_meta);
            drain(&mut master, &mut buf);
            black_box(r)
        })
    });
    assert_eq!(master.state(), State::Master);

    // The Master's Adver_Timer fires: one advertisement written.
    let mut now = t0;
    g.bench_function("master_timeout", |b| {
        b.iter(|| {
            now = master.poll_timeout().expect("master has a timer");
            master.handle_timeout(now);
            drain(&mut master, &mut buf);
        })
    });
    g.finish();
}

fn hour(c: &mut Criterion) {
    let mut g = c.benchmark_group("vrrp_fsm");
    g.sample_size(10);
    g.bench_function("simulated_hour_pair_10ms", |b| {
        b.iter(|| {
            let mut sim: Sim<VirtualRouter> = Sim::new(Instant::now(), 1);
            sim.set_all_links(LinkConfig::delay(Duration::from_micros(200)));
            for (node, prio) in [(1u8, 200u8), (2, 100)] {
                let cfg = config(node, prio, 1);
                sim.add_node(Ipv4Addr::new(10, 0, 0, node).into(), move |now| {
                    let mut r = VirtualRouter::new(cfg.clone(), now);
                    r.handle_startup(now);
                    r
                });
            }
            sim.boot_at(Duration::ZERO, 0);
            sim.boot_at(Duration::ZERO, 1);
            sim.run_until(Duration::from_secs(3600));
            assert!(sim.delivered() > 359_000);
            black_box(sim.delivered())
        })
    });
    g.finish();
}

criterion_group!(benches, per_event, hour);
criterion_main!(benches);
