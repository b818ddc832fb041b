//! Golden vectors: the bundled keepalived captures, decoded field by field
//! and re-emitted byte for byte, plus hand-built vectors for what the
//! captures lack. Expected values come from the captures themselves (as
//! tshark dissects them), not from this crate.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vrrp_proto::{
    Addresses, Advertisement, Auth, ChecksumMatch, Endpoints, Interval, Ipv4ChecksumForm, Priority,
    Version, Vrid, Warning, check_datagram, parse_datagram,
};

struct Expect {
    capture: &'static str,
    version: Version,
    checksum: ChecksumMatch,
    addresses: &'static [&'static str],
    /// (frame, source, priority) of every VRRP frame.
    frames: &'static [(u64, &'static str, u8)],
}

const FE1: &str = "fe80::99:ff:fe00:1";
const FE2: &str = "fe80::99:ff:fe00:2";

const EXPECT: &[Expect] = &[
    Expect {
        capture: "keepalived-v2-ipv4.pcap",
        version: Version::V2,
        checksum: ChecksumMatch::Standard,
        addresses: &["10.99.0.100"],
        frames: &[
            (1, "10.99.0.1", 150),
            (7, "10.99.0.1", 150),
            (10, "10.99.0.1", 150),
            (11, "10.99.0.1", 150),
            (12, "10.99.0.1", 150),
            (13, "10.99.0.2", 100),
            (19, "10.99.0.2", 100),
            (20, "10.99.0.2", 100),
            (21, "10.99.0.2", 100),
            (22, "10.99.0.2", 100),
            (23, "10.99.0.2", 0),
        ],
    },
    Expect {
        capture: "keepalived-v3-ipv4.pcap",
        version: Version::V3,
        checksum: ChecksumMatch::PseudoHeader,
        addresses: &["10.99.0.100"],
        frames: &[
            (1, "10.99.0.1", 150),
            (7, "10.99.0.1", 150),
            (10, "10.99.0.1", 150),
            (11, "10.99.0.1", 150),
            (12, "10.99.0.1", 150),
            (18, "10.99.0.1", 150),
            (19, "10.99.0.2", 100),
            (25, "10.99.0.2", 100),
            (26, "10.99.0.2", 100),
            (27, "10.99.0.2", 100),
            (28, "10.99.0.2", 100),
            (29, "10.99.0.2", 0),
        ],
    },
    Expect {
        capture: "keepalived-v3-ipv6.pcap",
        version: Version::V3,
        checksum: ChecksumMatch::Standard,
        addresses: &["fe80::5e:100", "fd99::100"],
        frames: &[
            (1, FE1, 150),
            (2, FE1, 150),
            (5, FE1, 150),
            (6, FE1, 150),
            (7, FE1, 150),
            (8, FE1, 150),
            (9, FE2, 100),
            (10, FE2, 100),
            (11, FE2, 100),
            (12, FE2, 100),
            (13, FE2, 100),
            (14, FE2, 0),
        ],
    },
];

fn form_of(m: ChecksumMatch) -> Ipv4ChecksumForm {
    match m {
        ChecksumMatch::MessageOnly => Ipv4ChecksumForm::MessageOnly,
        _ => Ipv4ChecksumForm::PseudoHeader,
    }
}

#[test]
fn captures_decode_field_by_field() {
    for e in EXPECT {
        let vrrp: Vec<_> = common::ip_datagrams(e.capture)
            .into_iter()
            .filter(|(_, d)| {
                let proto = if d[0] >> 4 == 4 { d[9] } else { d[6] };
                proto == 112
            })
            .collect();
        assert_eq!(
            vrrp.len(),
            e.frames.len(),
            "{}: VRRP frame count",
            e.capture
        );
        for ((number, datagram), &(want_frame, want_src, want_prio)) in vrrp.iter().zip(e.frames) {
            let ctx = format!("{} frame {number}", e.capture);
            assert_eq!(*number, want_frame, "{ctx}");
            let rx = parse_datagram(datagram).unwrap_or_else(|err| panic!("{ctx}: {err}"));
            let a = &rx.advertisement;
            assert_eq!(rx.meta.src, want_src.parse::<IpAddr>().unwrap(), "{ctx}");
            let group: IpAddr = match e.addresses[0].parse::<IpAddr>().unwrap() {
                IpAddr::V4(_) => Ipv4Addr::new(224, 0, 0, 18).into(),
                IpAddr::V6(_) => "ff02::12".parse::<Ipv6Addr>().unwrap().into(),
            };
            assert_eq!(rx.meta.dst, group, "{ctx}");
            assert_eq!(rx.meta.ttl, 255, "{ctx}");
            assert_eq!(a.version(), e.version, "{ctx}");
            assert_eq!(a.vrid().get(), 51, "{ctx}");
            assert_eq!(a.priority(), Priority(want_prio), "{ctx}");
            assert_eq!(a.interval().as_centis(), 100, "{ctx}");
            assert_eq!(*a.auth(), Auth::None, "{ctx}");
            let addrs: Vec<IpAddr> = a.addresses().iter().collect();
            let want: Vec<IpAddr> = e.addresses.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(addrs, want, "{ctx}");
            assert_eq!(rx.checksum, e.checksum, "{ctx}");
            assert!(rx.warnings.is_empty(), "{ctx}: {:?}", rx.warnings);
            assert_eq!(rx.trailing, 0, "{ctx}");
        }
    }
}

#[test]
fn captures_re_emit_byte_for_byte() {
    for e in EXPECT {
        for (number, datagram) in common::ip_datagrams(e.capture) {
            let Ok(c) = check_datagram(&datagram) else {
                continue;
            };
            let ctx = format!("{} frame {number}", e.capture);
            let adv = Advertisement::parse(&c.packet).unwrap();
            let ends = Endpoints {
                src: c.meta.src,
                dst: c.meta.dst,
            };
            let form = form_of(c.checksum);

            // The message, into a buffer pre-filled so that every byte is
            // proven written.
            let mut buf = [0xa5u8; 128];
            let n = adv.emit(&mut buf, ends, form).unwrap();
            assert_eq!(&buf[..n], c.packet.message(), "{ctx}: message bytes");

            // The datagram: equal to the capture but for the fields a
            // sender picks freely (IPv4 identification and DF, hence the
            // header checksum; IPv6 flow label).
            let mut dgram = [0xa5u8; 128];
            let n = adv.emit_datagram(&mut dgram, ends, form).unwrap();
            assert_eq!(n, datagram.len(), "{ctx}: datagram length");
            let (mut ours, mut theirs) = (dgram[..n].to_vec(), datagram.clone());
            if datagram[0] >> 4 == 4 {
                let h = etherparse::Ipv4HeaderSlice::from_slice(&ours).unwrap();
                assert_eq!(
                    h.header_checksum(),
                    h.to_header().calc_header_checksum(),
                    "{ctx}"
                );
                for d in [&mut ours, &mut theirs] {
                    d[4..8].fill(0); // identification, flags, fragment offset
                    d[10..12].fill(0); // header checksum
                }
            } else {
                for d in [&mut ours, &mut theirs] {
                    d[1] &= 0xf0; // flow label
                    d[2] = 0;
                    d[3] = 0;
                }
            }
            assert_eq!(ours, theirs, "{ctx}: datagram bytes");
        }
    }
}

// Hand-built vectors for what the captures lack.

#[test]
fn v2_simple_password() {
    let src = [192, 0, 2, 1];
    let dst = [224, 0, 0, 18];
    let mut msg = vec![0x21, 7, 200, 1, 1, 3, 0, 0, 192, 0, 2, 100];
    msg.extend_from_slice(b"secret\0\0");
    common::fill_checksum(&mut msg, &[]);
    let d = common::ipv4_datagram(src, dst, 255, &msg);

    let rx = parse_datagram(&d).unwrap();
    let a = &rx.advertisement;
    assert_eq!(a.version(), Version::V2);
    assert_eq!(a.vrid().get(), 7);
    assert_eq!(a.priority(), Priority(200));
    assert_eq!(a.interval(), Interval::from_secs(3).unwrap());
    assert_eq!(*a.auth(), Auth::Simple(*b"secret\0\0"));
    assert!(a.auth().matches(&Auth::simple(b"secret").unwrap()));
    assert!(!a.auth().matches(&Auth::simple(b"secreT").unwrap()));
    assert!(!a.auth().matches(&Auth::None));
    assert_eq!(rx.checksum, ChecksumMatch::Standard);

    let built = Advertisement::v2(
        Vrid::new(7).unwrap(),
        Priority(200),
        Interval::from_secs(3).unwrap(),
        Auth::simple(b"secret").unwrap(),
        [Ipv4Addr::new(192, 0, 2, 100)].into(),
    )
    .unwrap();
    assert_eq!(*a, built);
    let mut buf = [0xa5u8; 64];
    let ends = Endpoints {
        src: Ipv4Addr::from(src).into(),
        dst: Ipv4Addr::from(dst).into(),
    };
    let n = built
        .emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    assert_eq!(&buf[..n], &msg[..]);
}

#[test]
fn v3_ipv4_message_only_checksum() {
    let src = [192, 0, 2, 1];
    let dst = [224, 0, 0, 18];
    let mut msg = vec![0x31, 9, 120, 1, 0x00, 0x0a, 0, 0, 192, 0, 2, 9];
    common::fill_checksum(&mut msg, &[]);
    let d = common::ipv4_datagram(src, dst, 255, &msg);
    let rx = parse_datagram(&d).unwrap();
    assert_eq!(rx.checksum, ChecksumMatch::MessageOnly);
    assert_eq!(rx.advertisement.interval().as_centis(), 10);

    // The same message with the pseudo-header form.
    let mut msg2 = msg.clone();
    let ph = common::pseudo_v4(src, dst, msg.len());
    common::fill_checksum(&mut msg2, &ph);
    assert_ne!(
        msg[6..8],
        msg2[6..8],
        "the two forms differ for this vector"
    );
    let rx2 = parse_datagram(&common::ipv4_datagram(src, dst, 255, &msg2)).unwrap();
    assert_eq!(rx2.checksum, ChecksumMatch::PseudoHeader);

    let ends = Endpoints {
        src: Ipv4Addr::from(src).into(),
        dst: Ipv4Addr::from(dst).into(),
    };
    let mut buf = [0xa5u8; 64];
    let n = rx
        .advertisement
        .emit(&mut buf, ends, Ipv4ChecksumForm::MessageOnly)
        .unwrap();
    assert_eq!(&buf[..n], &msg[..]);
    let n = rx
        .advertisement
        .emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    assert_eq!(&buf[..n], &msg2[..]);
}

#[test]
fn sixteen_addresses_both_families() {
    // IPv4, v3.
    let src = [192, 0, 2, 1];
    let dst = [224, 0, 0, 18];
    let mut msg = vec![0x31, 200, 254, 16, 0x0f, 0xff, 0, 0];
    let v4: Vec<Ipv4Addr> = (0..16)
        .map(|i| Ipv4Addr::new(198, 51, 100, i + 1))
        .collect();
    for a in &v4 {
        msg.extend_from_slice(&a.octets());
    }
    let ph = common::pseudo_v4(src, dst, msg.len());
    common::fill_checksum(&mut msg, &ph);
    let rx = parse_datagram(&common::ipv4_datagram(src, dst, 255, &msg)).unwrap();
    assert_eq!(rx.advertisement.addresses(), &Addresses::from(&v4[..]));
    assert_eq!(rx.advertisement.interval().as_centis(), 4095);
    assert_eq!(rx.advertisement.vrid().get(), 200);
    let mut buf = [0xa5u8; 128];
    let ends = Endpoints {
        src: Ipv4Addr::from(src).into(),
        dst: Ipv4Addr::from(dst).into(),
    };
    let n = rx
        .advertisement
        .emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    assert_eq!(&buf[..n], &msg[..]);

    // IPv6, v3, link-local first as erratum 8300 wants.
    let src6: Ipv6Addr = "fe80::1".parse().unwrap();
    let dst6: Ipv6Addr = "ff02::12".parse().unwrap();
    let mut v6: Vec<Ipv6Addr> = vec!["fe80::100".parse().unwrap()];
    v6.extend((1..16).map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)));
    let mut msg = vec![0x31, 200, 100, 16, 0x00, 0x64, 0, 0];
    for a in &v6 {
        msg.extend_from_slice(&a.octets());
    }
    let ph = common::pseudo_v6(src6.octets(), dst6.octets(), msg.len());
    common::fill_checksum(&mut msg, &ph);
    let rx = parse_datagram(&common::ipv6_datagram(
        src6.octets(),
        dst6.octets(),
        255,
        &msg,
    ))
    .unwrap();
    assert_eq!(rx.advertisement.addresses(), &Addresses::from(&v6[..]));
    assert!(rx.warnings.is_empty());
    let mut buf = [0xa5u8; 320];
    let ends = Endpoints {
        src: src6.into(),
        dst: dst6.into(),
    };
    let n = rx
        .advertisement
        .emit(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    assert_eq!(&buf[..n], &msg[..]);

    // FRR's order (global address first) is kept, with a warning.
    let mut frr = v6.clone();
    frr.swap(0, 1);
    let adv = Advertisement::v3(
        Vrid::new(200).unwrap(),
        Priority(100),
        Interval::from_centis(100).unwrap(),
        Addresses::from(&frr[..]),
    )
    .unwrap();
    let n = adv
        .emit_datagram(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    let rx = parse_datagram(&buf[..n]).unwrap();
    assert!(rx.warnings.contains(Warning::FirstAddressNotLinkLocal));
    assert_eq!(rx.advertisement, adv);
}

#[test]
fn trailing_bytes_are_tolerated_and_counted() {
    // keepalived's unicast HMAC trailer and Ethernet padding both show up
    // as bytes after the message.
    let src = [192, 0, 2, 1];
    let dst = [224, 0, 0, 18];
    let mut msg = vec![0x31, 9, 120, 1, 0x00, 0x64, 0, 0, 192, 0, 2, 9];
    let ph = common::pseudo_v4(src, dst, msg.len());
    common::fill_checksum(&mut msg, &ph);
    let mut payload = msg.clone();
    payload.extend_from_slice(&[0xde; 20]);
    let mut d = common::ipv4_datagram(src, dst, 255, &payload);
    let rx = parse_datagram(&d).unwrap();
    assert_eq!(rx.trailing, 20);
    assert_eq!(rx.checksum, ChecksumMatch::PseudoHeader);
    // Padding after the IP datagram's own length is not the message's.
    d.extend_from_slice(&[0; 6]);
    assert_eq!(parse_datagram(&d).unwrap().trailing, 20);
}
