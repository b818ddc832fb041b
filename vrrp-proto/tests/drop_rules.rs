//! One positive and one negative case per receive-drop rule, each through
//! the datagram path and the bare-message path, and a check that the table
//! covers every `DropReason`.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vrrp_proto::{DropReason, ParseError, RecvMeta, Warning, check_datagram, check_message};

/// A packet described field by field, rendered with a correct checksum
/// (pseudo-header form for v3) unless told otherwise.
#[derive(Clone)]
struct Spec {
    ver_type: u8,
    vrid: u8,
    prio: u8,
    count: u8,
    word: [u8; 2], // v2: auth type + interval; v3: rsvd + interval
    addrs: Vec<u8>,
    auth: Option<[u8; 8]>,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    protocol: u8,
    more_fragments: bool,
    corrupt_checksum: bool,
    cut: Option<usize>,
}

impl Spec {
    fn v3_ipv4() -> Spec {
        Spec {
            ver_type: 0x31,
            vrid: 51,
            prio: 150,
            count: 1,
            word: [0x00, 0x64],
            addrs: vec![10, 99, 0, 100],
            auth: None,
            src: Ipv4Addr::new(10, 99, 0, 1).into(),
            dst: Ipv4Addr::new(224, 0, 0, 18).into(),
            ttl: 255,
            protocol: 112,
            more_fragments: false,
            corrupt_checksum: false,
            cut: None,
        }
    }

    fn v2_ipv4() -> Spec {
        Spec {
            ver_type: 0x21,
            word: [0, 1],
            auth: Some([0; 8]),
            ..Spec::v3_ipv4()
        }
    }

    fn v3_ipv6() -> Spec {
        Spec {
            addrs: "fe80::100".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
            src: "fe80::1".parse::<Ipv6Addr>().unwrap().into(),
            dst: "ff02::12".parse::<Ipv6Addr>().unwrap().into(),
            ..Spec::v3_ipv4()
        }
    }

    fn message(&self) -> Vec<u8> {
        let mut m = vec![
            self.ver_type,
            self.vrid,
            self.prio,
            self.count,
            self.word[0],
            self.word[1],
            0,
            0,
        ];
        m.extend_from_slice(&self.addrs);
        if let Some(a) = self.auth {
            m.extend_from_slice(&a);
        }
        let pseudo = match (self.ver_type >> 4, self.src, self.dst) {
            (3, IpAddr::V4(s), IpAddr::V4(d)) => common::pseudo_v4(s.octets(), d.octets(), m.len()),
            (3, IpAddr::V6(s), IpAddr::V6(d)) => common::pseudo_v6(s.octets(), d.octets(), m.len()),
            _ => Vec::new(),
        };
        common::fill_checksum(&mut m, &pseudo);
        if self.corrupt_checksum {
            m[7] ^= 0x01;
        }
        if let Some(n) = self.cut {
            m.truncate(n);
        }
        m
    }

    fn datagram(&self) -> Vec<u8> {
        let m = self.message();
        let mut d = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                common::ipv4_datagram(s.octets(), d.octets(), self.ttl, &m)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                common::ipv6_datagram(s.octets(), d.octets(), self.ttl, &m)
            }
            _ => unreachable!("test specs keep one family"),
        };
        if d[0] >> 4 == 4 {
            d[9] = self.protocol;
            if self.more_fragments {
                d[6] |= 0x20;
            }
        } else {
            d[6] = self.protocol;
        }
        d
    }

    fn meta(&self) -> RecvMeta {
        RecvMeta {
            src: self.src,
            dst: self.dst,
            ttl: self.ttl,
        }
    }
}

struct Case {
    name: &'static str,
    good: Spec,
    bad: Spec,
    want: ParseError,
    /// Whether the rule is visible on the bare-message path too (the IP
    /// header rules are not).
    message_path: bool,
}

fn cases() -> Vec<Case> {
    let v3 = Spec::v3_ipv4;
    let v2 = Spec::v2_ipv4;
    let v6 = Spec::v3_ipv6;
    let mut out = vec![
        Case {
            name: "malformed ip header",
            good: v3(),
            bad: v3(),
            want: ParseError::MalformedIp,
            message_path: false,
        },
        Case {
            name: "not vrrp",
            good: v3(),
            bad: Spec {
                protocol: 17,
                ..v3()
            },
            want: ParseError::NotVrrp { protocol: 17 },
            message_path: false,
        },
        Case {
            name: "fragmented",
            good: v3(),
            bad: Spec {
                more_fragments: true,
                ..v3()
            },
            want: ParseError::Fragmented,
            message_path: false,
        },
        Case {
            name: "ttl",
            good: v3(),
            bad: Spec { ttl: 254, ..v3() },
            want: ParseError::Ttl { ttl: 254 },
            message_path: true,
        },
        Case {
            name: "hop limit",
            good: v6(),
            bad: Spec { ttl: 1, ..v6() },
            want: ParseError::Ttl { ttl: 1 },
            message_path: true,
        },
        Case {
            name: "destination: another group",
            good: Spec {
                dst: Ipv4Addr::new(10, 99, 0, 2).into(),
                ..v3()
            },
            bad: Spec {
                dst: Ipv4Addr::new(224, 0, 0, 19).into(),
                ..v3()
            },
            want: ParseError::Destination,
            message_path: true,
        },
        Case {
            name: "destination: broadcast",
            good: v3(),
            bad: Spec {
                dst: Ipv4Addr::BROADCAST.into(),
                ..v3()
            },
            want: ParseError::Destination,
            message_path: true,
        },
        Case {
            name: "source: multicast",
            good: v3(),
            bad: Spec {
                src: Ipv4Addr::new(224, 0, 0, 5).into(),
                ..v3()
            },
            want: ParseError::Source,
            message_path: true,
        },
        Case {
            name: "ipv6 source not link-local",
            good: v6(),
            bad: Spec {
                src: "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
                ..v6()
            },
            want: ParseError::Ipv6SourceNotLinkLocal,
            message_path: true,
        },
        Case {
            name: "truncated: fewer addresses than counted",
            good: v3(),
            bad: Spec { count: 2, ..v3() },
            want: ParseError::Truncated { need: 16, have: 12 },
            message_path: true,
        },
        Case {
            name: "truncated: v2 without auth data",
            good: v2(),
            bad: Spec {
                cut: Some(14),
                ..v2()
            },
            want: ParseError::Truncated { need: 20, have: 14 },
            message_path: true,
        },
        Case {
            name: "truncated: shorter than the header",
            good: v3(),
            bad: Spec {
                cut: Some(5),
                ..v3()
            },
            want: ParseError::Truncated { need: 8, have: 5 },
            message_path: true,
        },
        Case {
            name: "version",
            good: v3(),
            bad: Spec {
                ver_type: 0x41,
                ..v3()
            },
            want: ParseError::Version { version: 4 },
            message_path: true,
        },
        Case {
            name: "v2 over ipv6",
            good: v6(),
            bad: Spec {
                ver_type: 0x21,
                word: [0, 1],
                auth: Some([0; 8]),
                ..v6()
            },
            want: ParseError::V2OverIpv6,
            message_path: true,
        },
        Case {
            name: "type",
            good: v3(),
            bad: Spec {
                ver_type: 0x32,
                ..v3()
            },
            want: ParseError::Type { kind: 2 },
            message_path: true,
        },
        Case {
            name: "vrid 0",
            good: Spec { vrid: 1, ..v3() },
            bad: Spec { vrid: 0, ..v3() },
            want: ParseError::ZeroVrid,
            message_path: true,
        },
        Case {
            name: "address count 0",
            good: v3(),
            bad: Spec {
                count: 0,
                addrs: vec![],
                ..v3()
            },
            want: ParseError::ZeroAddressCount,
            message_path: true,
        },
        Case {
            name: "interval 0 (v3)",
            good: Spec {
                word: [0, 1],
                ..v3()
            },
            bad: Spec {
                word: [0xf0, 0],
                ..v3()
            },
            want: ParseError::ZeroInterval,
            message_path: true,
        },
        Case {
            name: "interval 0 (v2)",
            good: v2(),
            bad: Spec {
                word: [0, 0],
                ..v2()
            },
            want: ParseError::ZeroInterval,
            message_path: true,
        },
        Case {
            name: "checksum",
            good: v3(),
            bad: Spec {
                corrupt_checksum: true,
                ..v3()
            },
            want: ParseError::Checksum { found: 0 },
            message_path: true,
        },
        Case {
            name: "auth type 2 (ah)",
            good: Spec {
                word: [1, 1],
                auth: Some(*b"pw\0\0\0\0\0\0"),
                ..v2()
            },
            bad: Spec {
                word: [2, 1],
                ..v2()
            },
            want: ParseError::AuthAh,
            message_path: true,
        },
        Case {
            name: "unknown auth type",
            good: v2(),
            bad: Spec {
                word: [3, 1],
                ..v2()
            },
            want: ParseError::AuthType { auth_type: 3 },
            message_path: true,
        },
    ];
    // A datagram cut inside its IP header.
    out[0].bad.cut = None;
    out
}

fn matches(got: &ParseError, want: &ParseError) -> bool {
    match (got, want) {
        // The checksum found depends on the rest of the packet.
        (ParseError::Checksum { .. }, ParseError::Checksum { .. }) => true,
        _ => got == want,
    }
}

#[test]
fn every_rule_has_a_positive_and_a_negative_case() {
    let mut seen = BTreeSet::new();
    for case in cases() {
        let good = case.good.datagram();
        check_datagram(&good)
            .unwrap_or_else(|e| panic!("{}: positive case dropped: {e}", case.name));
        let mut bad = case.bad.datagram();
        if case.want == ParseError::MalformedIp {
            bad.truncate(10);
        }
        let got = check_datagram(&bad)
            .err()
            .unwrap_or_else(|| panic!("{}: negative case kept", case.name));
        assert!(
            matches(&got, &case.want),
            "{}: got {got:?}, want {:?}",
            case.name,
            case.want
        );
        assert_eq!(got.reason(), case.want.reason(), "{}", case.name);
        seen.insert(got.reason());

        if case.message_path {
            check_message(&case.good.message(), case.good.meta())
                .unwrap_or_else(|e| panic!("{}: positive message dropped: {e}", case.name));
            let got = check_message(&case.bad.message(), case.bad.meta())
                .err()
                .unwrap_or_else(|| panic!("{}: negative message kept", case.name));
            assert!(
                matches(&got, &case.want),
                "{}: message path got {got:?}",
                case.name
            );
        }
    }
    let all: BTreeSet<DropReason> = DropReason::ALL.into_iter().collect();
    assert_eq!(seen, all, "every drop reason is exercised");
}

#[test]
fn drop_reasons_index_their_counters() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    let names: BTreeSet<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), DropReason::COUNT, "names are distinct");
}

fn kept(spec: Spec) -> (vrrp_proto::Warnings, u16) {
    let d = spec.datagram();
    let c = check_datagram(&d).expect("kept");
    (c.warnings, c.packet.interval_centis())
}

#[test]
fn bent_rules_keep_the_packet_and_warn() {
    // Reserved bits in v3 (RFC 9568 §5.2.6: ignored on receipt).
    let (w, interval) = kept(Spec {
        word: [0x30, 0x64],
        ..Spec::v3_ipv4()
    });
    assert!(w.contains(Warning::ReservedBitsSet));
    assert_eq!(interval, 0x64);

    // Stray authentication data with auth type 0.
    let (w, _) = kept(Spec {
        auth: Some([1; 8]),
        ..Spec::v2_ipv4()
    });
    assert!(w.contains(Warning::AuthDataWithoutAuth));

    // A unicast IPv6 advertisement from a global address.
    let (w, _) = kept(Spec {
        src: "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
        dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap().into(),
        ..Spec::v3_ipv6()
    });
    assert!(w.contains(Warning::SourceNotLinkLocal));

    // Erratum 8300: first address not link-local.
    let (w, _) = kept(Spec {
        addrs: "2001:db8::100"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        ..Spec::v3_ipv6()
    });
    assert!(w.contains(Warning::FirstAddressNotLinkLocal));
    assert!(!w.contains(Warning::SourceNotLinkLocal));

    // The clean packets raise none.
    for s in [Spec::v3_ipv4(), Spec::v2_ipv4(), Spec::v3_ipv6()] {
        assert!(kept(s).0.is_empty());
    }
}
