//! The `vrrp-dump` contract on the bundled captures, cross-checked with
//! tshark's own dissection where tshark is installed (CI installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use examples::dump::{DumpError, run};
use serde_json::Value;

const CAPTURES: [&str; 3] = [
    "keepalived-v2-ipv4.pcap",
    "keepalived-v3-ipv4.pcap",
    "keepalived-v3-ipv6.pcap",
];

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vrrp-proto/tests/data")
        .join(name)
}

fn dump(path: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let n = run(path, &mut out).expect("dump");
    let lines: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len() as u64, n);
    lines
}

#[test]
fn bundled_captures_decode_with_a_matching_checksum_form() {
    for name in CAPTURES {
        let lines = dump(&capture(name));
        assert!(lines.len() >= 10, "{name}: {} lines", lines.len());
        let mut last_frame = 0;
        for l in &lines {
            assert!(l.get("error").is_none(), "{name}: {l}");
            let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "frame",
                    "src",
                    "dst",
                    "ttl",
                    "version",
                    "type",
                    "vrid",
                    "priority",
                    "count",
                    "interval_cs",
                    "auth_type",
                    "checksum",
                    "addresses"
                ],
                "{name}: field order of the contract"
            );
            let frame = l["frame"].as_u64().unwrap();
            assert!(frame > last_frame, "frames ascend");
            last_frame = frame;
            let version = l["version"].as_u64().unwrap();
            let want = match (version, name.contains("ipv6")) {
                (3, false) => "pseudo-header", // keepalived's default form
                _ => "ok",
            };
            assert_eq!(l["checksum"], want, "{name}: {l}");
            assert_eq!(l["auth_type"].is_null(), version == 3, "{name}: {l}");
            assert_eq!(l["interval_cs"], 100);
            assert_eq!(l["ttl"], 255);
        }
    }
}

#[test]
fn bad_packets_print_an_error_line_and_the_dump_goes_on() {
    // A copy of the v3 capture with the first advertisement's TTL lowered
    // and the second's checksum broken.
    let dir = std::env::temp_dir().join(format!("vrrp-dump-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mangled.pcap");
    let mut bytes = std::fs::read(capture("keepalived-v3-ipv4.pcap")).unwrap();
    // pcap: 24-byte file header, 16-byte record headers; Ethernet 14 bytes.
    let first = 24 + 16 + 14;
    bytes[first + 8] = 64; // IPv4 TTL
    let mut off = 24;
    let mut vrrp_seen = 0;
    while off < bytes.len() {
        let incl = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
        let ip = off + 16 + 14;
        if incl > 34 && bytes[ip + 9] == 112 {
            vrrp_seen += 1;
            if vrrp_seen == 2 {
                bytes[ip + 20 + 7] ^= 0xff; // VRRP checksum
            }
        }
        off += 16 + incl;
    }
    std::fs::write(&path, &bytes).unwrap();
    let lines = dump(&path);
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(lines[0]["frame"], 1);
    assert_eq!(lines[0]["error"], "ttl/hop limit 64 is not 255");
    assert_eq!(lines[1]["frame"], 7);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("bad checksum"),
        "{}",
        lines[1]
    );
    assert_eq!(lines.len(), 12, "every other packet still decodes");
    assert!(lines[2..].iter().all(|l| l.get("error").is_none()));
}

#[test]
fn missing_foreign_and_corrupt_files_are_errors() {
    assert!(matches!(
        run(Path::new("/nonexistent/x.pcap"), &mut Vec::new()),
        Err(DumpError::Capture(_))
    ));
    let dir = std::env::temp_dir().join(format!("vrrp-dump-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a capture at all").unwrap();
    let e = run(&text, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("not a pcap or pcapng"), "{e}");

    // A record cut short in the middle.
    let cut = dir.join("cut.pcap");
    let bytes = std::fs::read(capture("keepalived-v2-ipv4.pcap")).unwrap();
    std::fs::write(&cut, &bytes[..24 + 16 + 30]).unwrap();
    let e = run(&cut, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// tshark's dissection of the same frames: number → (src, priority,
/// version, vrid, count, interval in cs, checksum good).
fn tshark_fields(path: &Path) -> Option<BTreeMap<u64, Vec<String>>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-Y", "vrrp", "-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "frame.number",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "vrrp.prio",
        ])
        .args([
            "-e",
            "vrrp.version",
            "-e",
            "vrrp.virt_rtr_id",
            "-e",
            "vrrp.addr_count",
        ])
        .args([
            "-e",
            "vrrp.adver_int",
            "-e",
            "vrrp.short_adver_int",
            "-e",
            "vrrp.checksum.status",
        ])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .map(|l| {
                let f: Vec<String> = l.split('|').map(str::to_owned).collect();
                (f[0].parse().unwrap(), f[1..].to_vec())
            })
            .collect(),
    )
}

#[test]
fn agrees_with_tshark() {
    for name in CAPTURES {
        let path = capture(name);
        let Some(theirs) = tshark_fields(&path) else {
            assert!(std::env::var_os("CI").is_none(), "tshark is required in CI");
            eprintln!("skipping: tshark is not installed");
            return;
        };
        let ours = dump(&path);
        assert_eq!(ours.len(), theirs.len(), "{name}: same VRRP frames");
        for l in ours {
            let t = &theirs[&l["frame"].as_u64().unwrap()];
            let src = if t[0].is_empty() { &t[1] } else { &t[0] };
            assert_eq!(l["src"], src.as_str(), "{name}");
            assert_eq!(l["priority"].to_string(), t[2], "{name}");
            assert_eq!(l["version"].to_string(), t[3], "{name}");
            assert_eq!(l["vrid"].to_string(), t[4], "{name}");
            assert_eq!(l["count"].to_string(), t[5], "{name}");
            let interval_cs: u64 = if t[6].is_empty() {
                t[7].parse().unwrap()
            } else {
                t[6].parse::<u64>().unwrap() * 100
            };
            assert_eq!(l["interval_cs"].as_u64().unwrap(), interval_cs, "{name}");
            assert_eq!(t[8], "1", "{name}: tshark reports the checksum good");
        }
    }
}
