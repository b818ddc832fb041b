//! tshark's verdict on advertisements in a capture: every advertisement
//! from the given sources must dissect without a malformed flag, without
//! an expert error or warning, and with a good checksum.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// What tshark said about one advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Frame number.
    pub frame: u64,
    /// IP source, as tshark prints it.
    pub src: String,
    /// `vrrp.checksum.status`: 1 good, 0 bad, 2 unverified.
    pub checksum_status: String,
    /// `_ws.malformed` present.
    pub malformed: bool,
    /// Expert severities (`_ws.expert.severity`, decimal, comma
    /// separated), if any.
    pub expert: String,
    /// Expert messages, if any.
    pub expert_message: String,
}

/// Dissects every VRRP packet in `pcap` whose source is in `sources` and
/// returns tshark's verdicts, in frame order.
#[track_caller]
pub fn verdicts(pcap: &Path, sources: &[IpAddr]) -> Vec<Verdict> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "vrrp",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
        ])
        .args(["-e", "frame.number", "-e", "ip.src", "-e", "ipv6.src"])
        .args(["-e", "vrrp.checksum.status", "-e", "_ws.malformed"])
        .args(["-e", "_ws.expert.severity", "-e", "_ws.expert.message"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run tshark: {e}"));
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let wanted: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let src = if f.get(1).is_some_and(|s| !s.is_empty()) {
                f[1]
            } else {
                f.get(2).copied().unwrap_or_default()
            };
            wanted.iter().any(|w| w == src).then(|| Verdict {
                frame: f[0].parse().unwrap_or_default(),
                src: src.to_owned(),
                checksum_status: f.get(3).copied().unwrap_or_default().to_owned(),
                malformed: f.get(4).is_some_and(|m| !m.is_empty()),
                expert: f.get(5).copied().unwrap_or_default().to_owned(),
                expert_message: f.get(6).copied().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// Wireshark's expert severity of a warning (chat 0x20_0000, note
/// 0x40_0000, warn 0x60_0000, error 0x80_0000).
const PI_WARN: u32 = 0x0060_0000;

/// The verdicts that are not clean: malformed, an expert note of warning
/// or error severity, or a checksum that is not good.
pub fn flagged(verdicts: &[Verdict]) -> Vec<&Verdict> {
    verdicts
        .iter()
        .filter(|v| {
            v.malformed
                || v.checksum_status != "1"
                || v.expert
                    .split(',')
                    .filter_map(|s| s.trim().parse::<u32>().ok())
                    .any(|n| n >= PI_WARN)
        })
        .collect()
}
