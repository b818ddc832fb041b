//! The VRRP checksum: the Internet checksum (RFC 1071, computed by
//! etherparse) over the message, with an IP pseudo-header for VRRPv3 over
//! IPv6 and, in one of the two forms in use, VRRPv3 over IPv4.

use core::net::IpAddr;

use etherparse::checksum::Sum16BitWords;

use crate::types::{ChecksumMatch, IP_PROTOCOL, Ipv4ChecksumForm, Version};

/// Which sum to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cover {
    Message,
    PseudoHeader,
}

/// The ones'-complement sum of `message` (checksum field as it stands) plus,
/// when `cover` asks for it, the pseudo-header of `src`/`dst` (RFC 9568
/// §5.2.8; RFC 8200 §8.1 for IPv6).
fn sum(message: &[u8], src: IpAddr, dst: IpAddr, cover: Cover) -> Sum16BitWords {
    let mut s = Sum16BitWords::new();
    if cover == Cover::PseudoHeader {
        // The message length fits: callers pass at most 8 + 255 × 16 bytes.
        let len = message.len() as u32;
        match (src, dst) {
            (IpAddr::V4(s4), IpAddr::V4(d4)) => {
                s = s
                    .add_4bytes(s4.octets())
                    .add_4bytes(d4.octets())
                    .add_2bytes([0, IP_PROTOCOL])
                    .add_2bytes((len as u16).to_be_bytes());
            }
            (IpAddr::V6(s6), IpAddr::V6(d6)) => {
                s = s
                    .add_16bytes(s6.octets())
                    .add_16bytes(d6.octets())
                    .add_4bytes(len.to_be_bytes())
                    .add_4bytes([0, 0, 0, IP_PROTOCOL]);
            }
            // Mixed families never reach here: callers check them first.
            _ => {}
        }
    }
    s.add_slice(message)
}

/// The cover a version / family / form uses when sending.
pub(crate) fn send_cover(version: Version, dst: IpAddr, form: Ipv4ChecksumForm) -> Cover {
    match (version, dst) {
        (Version::V2, _) => Cover::Message,
        (Version::V3, IpAddr::V6(_)) => Cover::PseudoHeader,
        (Version::V3, IpAddr::V4(_)) => match form {
            Ipv4ChecksumForm::PseudoHeader => Cover::PseudoHeader,
            Ipv4ChecksumForm::MessageOnly => Cover::Message,
        },
    }
}

/// The checksum to store in `message`, whose checksum field must be zero.
pub(crate) fn compute(message: &[u8], src: IpAddr, dst: IpAddr, cover: Cover) -> u16 {
    sum(message, src, dst, cover).ones_complement().to_be()
}

/// Which form a received message's checksum matches, if any.
pub(crate) fn verify(
    version: Version,
    message: &[u8],
    src: IpAddr,
    dst: IpAddr,
) -> Option<ChecksumMatch> {
    let ok = |cover| sum(message, src, dst, cover).ones_complement() == 0;
    match (version, dst) {
        (Version::V2, _) => ok(Cover::Message).then_some(ChecksumMatch::Standard),
        (Version::V3, IpAddr::V6(_)) => ok(Cover::PseudoHeader).then_some(ChecksumMatch::Standard),
        // keepalived's default first: it is the form most peers send.
        (Version::V3, IpAddr::V4(_)) => {
            if ok(Cover::PseudoHeader) {
                Some(ChecksumMatch::PseudoHeader)
            } else if ok(Cover::Message) {
                Some(ChecksumMatch::MessageOnly)
            } else {
                None
            }
        }
    }
}
