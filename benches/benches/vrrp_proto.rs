//! vrrp-proto: parse (IP checks + view checks + checksum + owned
//! advertisement) and emit, per version, family and address count, beside
//! etherparse's own IPv4 header parse of the same datagram as the in-run
//! baseline.
//!
//! `cargo bench --bench vrrp_proto`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vrrp_proto::{
    Addresses, Advertisement, Auth, Endpoints, IPV4_GROUP, IPV6_GROUP, Interval, Ipv4ChecksumForm,
    Priority, Vrid, check_datagram, parse_datagram,
};

struct Case {
    name: String,
    adv: Advertisement,
    ends: Endpoints,
}

fn cases() -> Vec<Case> {
    let vrid = Vrid::new(51).expect("vrid");
    let v4_ends = Endpoints {
        src: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
        dst: IpAddr::V4(IPV4_GROUP),
    };
    let v6_ends = Endpoints {
        src: "fe80::1".parse::<Ipv6Addr>().expect("addr").into(),
        dst: IPV6_GROUP.into(),
    };
    let mut out = Vec::new();
    for n in [1u8, 16] {
        let v4: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
        let mut v6: Vec<Ipv6Addr> = vec!["fe80::100".parse().expect("addr")];
        v6.extend((1..n).map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))));
        out.push(Case {
            name: format!("v2-ipv4/{n}"),
            adv: Advertisement::v2(
                vrid,
                Priority(150),
                Interval::from_secs(1).expect("interval"),
                Auth::None,
                v4[..].into(),
            )
            .expect("v2"),
            ends: v4_ends,
        });
        out.push(Case {
            name: format!("v3-ipv4/{n}"),
            adv: Advertisement::v3(
                vrid,
                Priority(150),
                Interval::from_centis(100).expect("i"),
                v4[..].into(),
            )
            .expect("v3"),
            ends: v4_ends,
        });
        out.push(Case {
            name: format!("v3-ipv6/{n}"),
            adv: Advertisement::v3(
                vrid,
                Priority(150),
                Interval::from_centis(100).expect("i"),
                Addresses::from(&v6[..]),
            )
            .expect("v3"),
            ends: v6_ends,
        });
    }
    out
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    let mut g = c.benchmark_group("vrrp_proto");
    g.throughput(Throughput::Elements(1));
    for case in &cases {
        let mut buf = [0u8; 512];
        let n = case
            .adv
            .emit_datagram(&mut buf, case.ends, Ipv4ChecksumForm::PseudoHeader)
            .expect("emit");
        let datagram = buf[..n].to_vec();
        g.bench_with_input(BenchmarkId::new("parse", &case.name), &datagram, |b, d| {
            b.iter(|| parse_datagram(black_box(d)).expect("parse"));
        });
        g.bench_with_input(BenchmarkId::new("check", &case.name), &datagram, |b, d| {
            b.iter(|| {
                check_datagram(black_box(d))
                    .expect("check")
                    .packet
                    .priority()
            });
        });
        g.bench_with_input(BenchmarkId::new("emit", &case.name), &case.adv, |b, adv| {
            let mut out = [0u8; 512];
            b.iter(|| {
                black_box(adv)
                    .emit(&mut out, case.ends, Ipv4ChecksumForm::PseudoHeader)
                    .expect("emit")
            });
        });
        g.bench_with_input(
            BenchmarkId::new("emit_datagram", &case.name),
            &case.adv,
            |b, adv| {
                let mut out = [0u8; 512];
                b.iter(|| {
                    black_box(adv)
                        .emit_datagram(&mut out, case.ends, Ipv4ChecksumForm::PseudoHeader)
                        .expect("emit")
                });
            },
        );
        if case.name.contains("ipv4") {
            g.bench_with_input(
                BenchmarkId::new("baseline_etherparse_ipv4_header", &case.name),
                &datagram,
                |b, d| {
                    b.iter(|| {
                        etherparse::Ipv4HeaderSlice::from_slice(black_box(d))
                            .expect("ip")
                            .ttl()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
