//! Properties the fuzz targets check, shared with the tests that replay
//! their seed corpora on stable.
#![allow(clippy::expect_used)] // a failed property must panic: that is what the fuzzer looks for

use crate::ip::{RecvMeta, check_datagram, check_message};
use crate::repr::{Advertisement, Endpoints};
use crate::types::{ChecksumMatch, Ipv4ChecksumForm};

/// `vrrp_parse`: any bytes as a datagram (and, split after the first byte
/// into a TTL and a message, as a bare message with metadata) never panic;
/// whatever parses re-emits to bytes that parse to the same advertisement
/// with the same checksum form.
///
/// # Panics
/// When the property fails: that is the fuzzer's signal.
pub fn vrrp_parse(data: &[u8]) {
    if let Ok(c) = check_datagram(data) {
        roundtrip(&c);
    }
    if let Some((&ttl, rest)) = data.split_first() {
        let metas = [
            RecvMeta {
                src: [10, 0, 0, 1].into(),
                dst: crate::IPV4_GROUP.into(),
                ttl,
            },
            RecvMeta {
                src: core::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
                dst: crate::IPV6_GROUP.into(),
                ttl,
            },
        ];
        for meta in metas {
            if let Ok(c) = check_message(rest, meta) {
                roundtrip(&c);
            }
        }
    }
}

fn roundtrip(c: &crate::ip::Checked<'_>) {
    let adv = Advertisement::parse(&c.packet).expect("a checked view parses");
    let form = match c.checksum {
        ChecksumMatch::MessageOnly => Ipv4ChecksumForm::MessageOnly,
        _ => Ipv4ChecksumForm::PseudoHeader,
    };
    let ends = Endpoints {
        src: c.meta.src,
        dst: c.meta.dst,
    };
    let mut buf = [0u8; 8 + 255 * 16 + 8];
    let n = adv
        .emit(&mut buf, ends, form)
        .expect("a parsed advertisement emits");
    assert_eq!(n, adv.buffer_len());
    let again = check_message(&buf[..n], c.meta).expect("re-emitted bytes check");
    assert_eq!(again.checksum, c.checksum, "checksum form changed");
    assert_eq!(again.trailing, 0);
    let adv2 = Advertisement::parse(&again.packet).expect("re-emitted bytes parse");
    assert_eq!(adv, adv2, "round trip changed the advertisement");
}
