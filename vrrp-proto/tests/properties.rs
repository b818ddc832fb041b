//! Properties: round trips of every valid advertisement, no panic on any
//! bytes, and every truncation of a valid packet is an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use vrrp_proto::{
    Addresses, Advertisement, Auth, ChecksumMatch, Endpoints, IPV4_GROUP, IPV6_GROUP, Interval,
    Ipv4ChecksumForm, ParseError, Priority, RecvMeta, Vrid, check_datagram, check_message,
    parse_datagram, parse_message,
};

const CASES: u32 = 1024;

fn vrid() -> impl Strategy<Value = Vrid> {
    (1u8..=255).prop_map(|v| Vrid::new(v).unwrap())
}

fn v4_unicast() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..=223, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d.max(1)))
}

fn v6_any() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn v6_link_local() -> impl Strategy<Value = Ipv6Addr> {
    any::<u64>().prop_map(|iid| Ipv6Addr::from((0xfe80u128 << 112) | u128::from(iid.max(1))))
}

fn form() -> impl Strategy<Value = Ipv4ChecksumForm> {
    prop_oneof![
        Just(Ipv4ChecksumForm::PseudoHeader),
        Just(Ipv4ChecksumForm::MessageOnly)
    ]
}

/// A valid advertisement with endpoints of its family.
fn advertisement() -> impl Strategy<Value = (Advertisement, Endpoints)> {
    let v4_ends = || {
        (v4_unicast(), prop_oneof![Just(IPV4_GROUP), v4_unicast()]).prop_map(|(s, d)| Endpoints {
            src: s.into(),
            dst: d.into(),
        })
    };
    let v6_ends = (
        v6_link_local(),
        prop_oneof![Just(IPV6_GROUP), v6_link_local()],
    )
        .prop_map(|(s, d)| Endpoints {
            src: s.into(),
            dst: d.into(),
        });
    let v2 = (
        vrid(),
        any::<u8>(),
        1u8..=255,
        prop::option::of(any::<[u8; 8]>()),
        prop::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..=20),
        v4_ends(),
    )
        .prop_map(|(vrid, prio, secs, key, addrs, ends)| {
            let auth = key.map_or(Auth::None, Auth::Simple);
            let a = Advertisement::v2(
                vrid,
                Priority(prio),
                Interval::from_secs(secs).unwrap(),
                auth,
                addrs[..].into(),
            )
            .unwrap();
            (a, ends)
        });
    let v3_4 = (
        vrid(),
        any::<u8>(),
        1u16..=4095,
        prop::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..=20),
        v4_ends(),
    )
        .prop_map(|(vrid, prio, cs, addrs, ends)| {
            let a = Advertisement::v3(
                vrid,
                Priority(prio),
                Interval::from_centis(cs).unwrap(),
                addrs[..].into(),
            )
            .unwrap();
            (a, ends)
        });
    let v3_6 = (
        vrid(),
        any::<u8>(),
        1u16..=4095,
        prop::collection::vec(v6_any(), 1..=20),
        v6_ends,
    )
        .prop_map(|(vrid, prio, cs, addrs, ends)| {
            let a = Advertisement::v3(
                vrid,
                Priority(prio),
                Interval::from_centis(cs).unwrap(),
                Addresses::from(&addrs[..]),
            )
            .unwrap();
            (a, ends)
        });
    prop_oneof![v2, v3_4, v3_6]
}

fn meta(ends: Endpoints) -> RecvMeta {
    RecvMeta {
        src: ends.src,
        dst: ends.dst,
        ttl: 255,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn emit_then_parse_is_identity((adv, ends) in advertisement(), form in form()) {
        let mut buf = vec![0xa5u8; adv.datagram_len() + 7];
        let n = adv.emit(&mut buf, ends, form).unwrap();
        prop_assert_eq!(n, adv.buffer_len());
        let rx = parse_message(&buf[..n], meta(ends)).unwrap();
        prop_assert_eq!(&rx.advertisement, &adv);
        prop_assert_eq!(rx.trailing, 0);
        let expected = match (ends.dst, adv.version(), form) {
            (IpAddr::V4(_), vrrp_proto::Version::V3, Ipv4ChecksumForm::PseudoHeader) => ChecksumMatch::PseudoHeader,
            (IpAddr::V4(_), vrrp_proto::Version::V3, Ipv4ChecksumForm::MessageOnly) => ChecksumMatch::MessageOnly,
            _ => ChecksumMatch::Standard,
        };
        if rx.checksum != expected {
            // Only possible when the pseudo-header adds nothing to the sum,
            // so that both forms give the same bytes.
            let mut other = vec![0u8; n];
            adv.emit(&mut other, ends, Ipv4ChecksumForm::PseudoHeader).unwrap();
            prop_assert_eq!(&other[..], &buf[..n]);
        }

        let n = adv.emit_datagram(&mut buf, ends, form).unwrap();
        prop_assert_eq!(n, adv.datagram_len());
        let rx = parse_datagram(&buf[..n]).unwrap();
        prop_assert_eq!(&rx.advertisement, &adv);
        prop_assert_eq!(rx.meta, meta(ends));
    }

    #[test]
    fn an_identified_datagram_differs_only_in_its_number((adv, ends) in advertisement(), id in any::<u16>()) {
        let mut plain = vec![0u8; adv.datagram_len()];
        let mut numbered = vec![0u8; adv.datagram_len()];
        let n = adv.emit_datagram(&mut plain, ends, Ipv4ChecksumForm::PseudoHeader).unwrap();
        let m = adv
            .emit_datagram_identified(&mut numbered, ends, Ipv4ChecksumForm::PseudoHeader, id)
            .unwrap();
        prop_assert_eq!(n, m);
        prop_assert_eq!(&parse_datagram(&numbered[..m]).unwrap().advertisement, &adv);
        if ends.dst.is_ipv4() {
            let h = etherparse::Ipv4HeaderSlice::from_slice(&numbered[..m]).unwrap().to_header();
            prop_assert_eq!(h.identification, id);
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
            // Everything else as the unnumbered datagram: the number and
            // the header checksum aside.
            for i in (0..n).filter(|i| !matches!(i, 4 | 5 | 10 | 11)) {
                prop_assert_eq!(plain[i], numbered[i], "byte {}", i);
            }
        } else {
            // IPv6 has no identification: the same bytes.
            prop_assert_eq!(&plain[..n], &numbered[..m]);
        }
    }

    #[test]
    fn emit_into_a_short_buffer_is_a_typed_error((adv, ends) in advertisement(), cut in 0usize..64) {
        let need = adv.datagram_len();
        let have = need.saturating_sub(cut + 1);
        let mut buf = vec![0u8; have];
        prop_assert_eq!(
            adv.emit_datagram(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader),
            Err(vrrp_proto::EmitError::BufferTooSmall { need, have })
        );
    }

    #[test]
    fn every_truncation_is_an_error((adv, ends) in advertisement()) {
        let mut buf = vec![0u8; adv.datagram_len()];
        let n = adv.emit_datagram(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader).unwrap();
        for cut in 0..n {
            prop_assert!(check_datagram(&buf[..cut]).is_err(), "datagram cut at {}", cut);
        }
        let m = adv.emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader).unwrap();
        for cut in 0..m {
            let e = check_message(&buf[..cut], meta(ends)).unwrap_err();
            let is_truncated = matches!(e, ParseError::Truncated { .. });
            prop_assert!(is_truncated, "message cut at {}: {:?}", cut, e);
        }
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), ttl in any::<u8>(),
                             src in any::<[u8; 16]>(), v6 in any::<bool>()) {
        let _ = parse_datagram(&bytes);
        let m = if v6 {
            RecvMeta { src: Ipv6Addr::from(src).into(), dst: IPV6_GROUP.into(), ttl }
        } else {
            RecvMeta { src: Ipv4Addr::new(src[0], src[1], src[2], src[3]).into(), dst: IPV4_GROUP.into(), ttl }
        };
        let _ = parse_message(&bytes, m);
    }

    #[test]
    fn mutated_packets_never_panic((adv, ends) in advertisement(),
                                   flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut buf = vec![0u8; adv.datagram_len()];
        let n = adv.emit_datagram(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader).unwrap();
        for (i, v) in &flips {
            buf[i.index(n)] = *v;
        }
        // Whatever survives checking must convert and re-emit.
        if let Ok(c) = check_datagram(&buf[..n]) {
            let owned = c.to_received().unwrap();
            let mut out = vec![0u8; owned.advertisement.datagram_len()];
            let ends2 = Endpoints { src: owned.meta.src, dst: owned.meta.dst };
            prop_assert!(owned.advertisement.emit_datagram(&mut out, ends2, Ipv4ChecksumForm::PseudoHeader).is_ok());
        }
    }
}
