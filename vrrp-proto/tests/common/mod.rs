//! Helpers shared by the black-box tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// A bundled capture in `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The IP datagrams of an Ethernet pcap, with their 1-based frame numbers.
pub fn ip_datagrams(name: &str) -> Vec<(u64, Vec<u8>)> {
    let file = std::fs::File::open(data(name)).expect("capture opens");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap header");
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut out = Vec::new();
    let mut number = 0;
    while let Some(pkt) = reader.next_packet() {
        number += 1;
        let pkt = pkt.expect("pcap record");
        let ether_type = u16::from_be_bytes([pkt.data[12], pkt.data[13]]);
        if ether_type == 0x0800 || ether_type == 0x86dd {
            out.push((number, pkt.data[14..].to_vec()));
        }
    }
    out
}

/// RFC 1071 Internet checksum, written out independently of the crate so
/// that hand-built vectors are checked against a second computation.
pub fn rfc1071(chunks: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for c in chunks {
        bytes.extend_from_slice(c);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Fills the checksum of a hand-built VRRP message in place.
/// `pseudo` is the pseudo-header to include, empty for none.
pub fn fill_checksum(msg: &mut [u8], pseudo: &[u8]) {
    msg[6] = 0;
    msg[7] = 0;
    let c = rfc1071(&[pseudo, msg]);
    msg[6..8].copy_from_slice(&c.to_be_bytes());
}

/// IPv4 pseudo-header for VRRP (protocol 112).
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, 112]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// IPv6 pseudo-header for VRRP (next header 112).
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 112]);
    p
}

/// An IPv4 header (20 bytes, TTL `ttl`, protocol 112) before `payload`.
pub fn ipv4_datagram(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0xc0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, ttl, 112, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = rfc1071(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header (hop limit `hops`, next header 112) before `payload`.
pub fn ipv6_datagram(src: [u8; 16], dst: [u8; 16], hops: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x6c, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[112, hops]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}
