//! `vrrp-dump FILE.pcap`: prints every VRRP packet of a capture as one JSON
//! object per line.
//!
//! ```text
//! cargo run --release --example vrrp-dump -- vrrp-proto/tests/data/keepalived-v3-ipv4.pcap
//! ```
//!
//! Frames are numbered from 1 as Wireshark numbers them; frames that are not
//! VRRP are skipped; a VRRP packet that breaks a receive rule prints
//! `{"frame":N,"error":"..."}`. Only the rules a packet alone can decide are
//! applied: any VRID, multicast or unicast destination. A missing or corrupt
//! file is an error on stderr and exit status 1.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use examples::dump::{DumpError, run};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: vrrp-dump FILE.pcap|FILE.pcapng");
        return ExitCode::from(2);
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run(&PathBuf::from(path), &mut out).and_then(|_| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`vrrp-dump f.pcap | head`) is not a failure.
        Err(DumpError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("vrrp-dump: {e}");
            ExitCode::FAILURE
        }
    }
}
