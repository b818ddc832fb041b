//! A UDP echo service and the "phone" that measures how long it goes
//! unanswered: the client-observed outage of a failover.
//!
//! ```text
//! udp-probe echo  --listen ADDR [--bind-retry-s N]
//! udp-probe probe --to ADDR [--every-ms 10] [--for-s N] [--from ADDR]
//! ```
//!
//! `echo` answers every datagram with its own bytes, from `ADDR`. It is the
//! PBX application a node starts on takeover; the virtual address may
//! appear only just before it does, so binding is retried for
//! `--bind-retry-s` seconds (default 10).
//!
//! `probe` sends a request numbered 0, 1, 2, … every `--every-ms`
//! milliseconds for `--for-s` seconds, then waits one more second for late
//! answers and prints one JSON line:
//!
//! ```text
//! {"sent":N,"answered":N,"first_answer_ms":F,"last_answer_ms":F,"longest_gap_ms":F,"longest_gap_start_ms":F}
//! ```
//!
//! `longest_gap_ms` is the longest time between two answers in a row
//! (each request answered at most once is counted), the outage a phone
//! sees; `longest_gap_start_ms` is when it began, since the first request.
//! Times of answers are `null` when none came.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:\n  udp-probe echo --listen ADDR [--bind-retry-s N]\n  \
                     udp-probe probe --to ADDR [--every-ms MS] [--for-s S] [--from ADDR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("echo") => Options::parse(&args[1..]).and_then(|o| echo(&o)),
        Some("probe") => Options::parse(&args[1..]).and_then(|o| probe(&o)),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The options of both commands; each command checks those it needs.
#[derive(Default)]
struct Options {
    listen: Option<SocketAddr>,
    to: Option<SocketAddr>,
    from: Option<SocketAddr>,
    every_ms: Option<u64>,
    for_s: Option<f64>,
    bind_retry_s: Option<f64>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{key} {value}: {e}");
            match key.as_str() {
                "--listen" => o.listen = Some(value.parse().map_err(|e| bad(&e))?),
                "--to" => o.to = Some(value.parse().map_err(|e| bad(&e))?),
                "--from" => o.from = Some(value.parse().map_err(|e| bad(&e))?),
                "--every-ms" => o.every_ms = Some(value.parse().map_err(|e| bad(&e))?),
                "--for-s" => o.for_s = Some(value.parse().map_err(|e| bad(&e))?),
                "--bind-retry-s" => o.bind_retry_s = Some(value.parse().map_err(|e| bad(&e))?),
                _ => return Err(format!("unknown option {key}\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

fn seconds(s: f64, key: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("{key} {s}: {e}"))
}

fn echo(o: &Options) -> Result<(), String> {
    let listen = o.listen.ok_or("echo needs --listen ADDR")?;
    let deadline = Instant::now() + seconds(o.bind_retry_s.unwrap_or(10.0), "--bind-retry-s")?;
    let socket = loop {
        match UdpSocket::bind(listen) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("cannot bind {listen}: {e}")),
        }
    };
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("receive: {e}"))?;
        // A phone that went away is no reason to stop serving the others.
        let _ = socket.send_to(&buf[..n], peer);
    }
}

fn probe(o: &Options) -> Result<(), String> {
    let to = o.to.ok_or("probe needs --to ADDR")?;
    let every = Duration::from_millis(o.every_ms.unwrap_or(10).max(1));
    let run_for = seconds(o.for_s.unwrap_or(10.0), "--for-s")?;
    let from = o.from.unwrap_or(if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    });
    let socket = UdpSocket::bind(from).map_err(|e| format!("cannot bind {from}: {e}"))?;

    let start = Instant::now();
    let stop_sending = start + run_for;
    let stop_listening = stop_sending + Duration::from_secs(1);
    let mut sent: u64 = 0;
    let mut answered_seq = std::collections::HashSet::new();
    let mut answers: Vec<Duration> = Vec::new();
    let mut next_send = start;
    let mut buf = [0u8; 64];
    loop {
        let now = Instant::now();
        if now >= stop_listening {
            break;
        }
        if now >= next_send && now < stop_sending {
            // A send error (no route, no neighbour yet) is a lost request,
            // which is what the phone would see.
            let _ = socket.send_to(&sent.to_be_bytes(), to);
            sent += 1;
            next_send += every;
            continue;
        }
        let wake = if now < stop_sending {
            next_send.min(stop_listening)
        } else {
            stop_listening
        };
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_micros(100));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| format!("set timeout: {e}"))?;
        match socket.recv_from(&mut buf) {
            Ok((8, peer)) if peer == to => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[..8]);
                let seq = u64::from_be_bytes(seq);
                if seq < sent && answered_seq.insert(seq) {
                    answers.push(start.elapsed());
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors of earlier sends (port unreachable while the
            // service is down) surface here; they are lost answers.
            Err(_) => {}
        }
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (gap, gap_start) = answers
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max_by_key(|(g, _)| *g)
        .map_or((None, None), |(g, s)| (Some(ms(g)), Some(ms(s))));
    let line = serde_json::json!({
        "sent": sent,
        "answered": answers.len(),
        "first_answer_ms": answers.first().map(|d| ms(*d)),
        "last_answer_ms": answers.last().map(|d| ms(*d)),
        "longest_gap_ms": gap,
        "longest_gap_start_ms": gap_start,
    });
    println!("{line}");
    Ok(())
}
