//! The `vrrp-dump` line format: one JSON object per VRRP packet.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::capture::{Capture, CaptureError};
use vrrp_proto::{Addresses, Version, check_datagram};

/// One decoded advertisement, in the order the fields are printed.
#[derive(Debug, Serialize)]
struct Line {
    frame: u64,
    src: String,
    dst: String,
    ttl: u8,
    version: u8,
    #[serde(rename = "type")]
    kind: u8,
    vrid: u8,
    priority: u8,
    count: usize,
    interval_cs: u16,
    auth_type: Option<u8>,
    checksum: &'static str,
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<&'static str>,
    #[serde(skip_serializing_if = "is_zero")]
    trailing_bytes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
struct ErrorLine {
    frame: u64,
    error: String,
}

/// Whether an IP datagram carries VRRP (protocol 112), judged from its
/// header alone, so that a VRRP packet that fails validation is still
/// reported rather than skipped.
#[must_use]
pub fn is_vrrp(datagram: &[u8]) -> bool {
    etherparse::IpSlice::from_slice(datagram)
        .is_ok_and(|ip| ip.payload_ip_number() == etherparse::IpNumber(vrrp_proto::IP_PROTOCOL))
        || etherparse::Ipv4HeaderSlice::from_slice(datagram)
            .is_ok_and(|h| h.protocol() == etherparse::IpNumber(vrrp_proto::IP_PROTOCOL))
}

/// The line for frame `number` holding `datagram`, or `None` if it is not
/// VRRP. A packet that fails a receive rule gives an `error` line.
#[must_use]
pub fn line(number: u64, datagram: &[u8]) -> Option<String> {
    if !is_vrrp(datagram) {
        return None;
    }
    let json = match check_datagram(datagram).and_then(|c| Ok((c.to_received()?, c))) {
        Ok((rx, c)) => {
            let adv = &rx.advertisement;
            serde_json::to_string(&Line {
                frame: number,
                src: rx.meta.src.to_string(),
                dst: rx.meta.dst.to_string(),
                ttl: rx.meta.ttl,
                version: adv.version().number(),
                kind: c.packet.kind(),
                vrid: adv.vrid().get(),
                priority: adv.priority().get(),
                count: adv.addresses().len(),
                interval_cs: adv.interval().as_centis(),
                auth_type: match adv.version() {
                    Version::V2 => Some(adv.auth().type_number()),
                    Version::V3 => None,
                },
                checksum: rx.checksum.as_str(),
                addresses: match adv.addresses() {
                    Addresses::V4(a) => a.iter().map(ToString::to_string).collect(),
                    Addresses::V6(a) => a.iter().map(ToString::to_string).collect(),
                },
                warnings: rx.warnings.iter().map(|w| w.as_str()).collect(),
                trailing_bytes: rx.trailing,
            })
        }
        Err(e) => serde_json::to_string(&ErrorLine {
            frame: number,
            error: e.to_string(),
        }),
    };
    // Serializing these plain structs cannot fail.
    json.ok()
}

/// Why `vrrp-dump` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The capture could not be read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Writes one line per VRRP packet of the capture at `path` to `out`;
/// returns the number of lines.
///
/// # Errors
/// [`DumpError::Capture`] for a missing, foreign or corrupt file (lines
/// before a corrupt record are written first), [`DumpError::Output`] if
/// `out` fails.
pub fn run(path: &Path, out: &mut impl Write) -> Result<u64, DumpError> {
    let mut lines = 0;
    for frame in Capture::open(path)? {
        let frame = frame?;
        if let Some(l) = frame.ip_datagram().and_then(|ip| line(frame.number, ip)) {
            writeln!(out, "{l}")?;
            lines += 1;
        }
    }
    Ok(lines)
}
