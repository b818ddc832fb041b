//! Drives one sync round between two directories in-process, the way the
//! tree benchmark (`benches/scripts/sync_delta_tree.sh`) needs it; also
//! generates and edits the synthetic tree.
//!
//! ```text
//! tree_round gen <dir> <files>     # <files> small files in 100 directories
//! tree_round mutate <dir> <seed>   # 1 % modified, 0.5 % deleted, 20 renamed
//! tree_round round <src> <dst>     # one round; prints timings, wire bytes, VmHWM
//!                                  # (TREE_ROUND_THREADS=1: the store without threads;
//!                                  #  TREE_ROUND_SERIAL=1: both engines on one thread)
//! tree_round big <file> <MiB>      # one large file of pseudo-random data
//! tree_round edit-big <file>       # 64 KiB overwrite, 100-byte insert, 1 MiB append
//! tree_round append-big <file>     # 1 MiB append alone
//! tree_round insert-big <file> <%>  # 100-byte insert at <%> of the file
//! tree_round walk <dir>            # walk and scan timings alone, the manifest's bytes an entry
//! ```
//!
//! The round carries every message through a real encrypted
//! `frame::Link` pair (encrypt, decrypt) in memory: a loopback without
//! the kernel's TCP copy. The source and the replica each run on a thread
//! of their own, as on two nodes (a local rsync likewise runs its sender
//! and receiver as processes side by side); `TREE_ROUND_SERIAL=1` runs
//! both on one thread, taking turns.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use sync_delta::Message;
use sync_delta::frame::{CHANNEL_SYNC, Link, Nonce, PreSharedKey};
use sync_delta::{Epoch, FsStore, Replica, ReplicaConfig, ReplicaEvent, Source, SourceConfig};

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn content(r: &mut impl FnMut() -> u64) -> Vec<u8> {
    let len = 200 + (r() % 1800) as usize;
    (0..len).map(|_| b'a' + (r() % 26) as u8).collect()
}

fn generate(dir: &Path, files: usize) -> std::io::Result<()> {
    let mut r = rng(1);
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d)?;
        }
        std::fs::write(d.join(format!("f{i:06}.conf")), content(&mut r))?;
    }
    Ok(())
}

fn mutate(dir: &Path, seed: u64) -> std::io::Result<()> {
    let mut files = Vec::new();
    for d in std::fs::read_dir(dir)? {
        let d = d?;
        if d.file_name() == ".sync-delta" || !d.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path())? {
            files.push(f?.path());
        }
    }
    files.sort();
    let n = files.len();
    let mut r = rng(seed);
    let mut pick = |files: &mut Vec<std::path::PathBuf>| {
        let i = (r() as usize) % files.len();
        files.swap_remove(i)
    };
    let mut r2 = rng(seed + 1);
    for _ in 0..n / 100 {
        let p = pick(&mut files);
        std::fs::write(&p, content(&mut r2))?;
    }
    for _ in 0..n / 200 {
        let p = pick(&mut files);
        std::fs::remove_file(&p)?;
    }
    for i in 0..20 {
        let p = pick(&mut files);
        let to = p.with_file_name(format!("renamed-{seed}-{i}.conf"));
        std::fs::rename(&p, to)?;
    }
    Ok(())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn links(now: Instant) -> (Link, Link) {
    let key =
        PreSharedKey::new(*blake3::hash(b"tree bench").as_bytes()).expect("a random-looking key");
    Link::connected_pair(
        key,
        [Nonce([1; 32]), Nonce([2; 32])],
        [Epoch::new(1, 2), Epoch::new(1, 1)],
        now,
    )
    .expect("handshake")
}

fn carry(now: Instant, from: &mut Link, to: &mut Link, m: &Message, bytes: &mut u64) -> Message {
    let mut payload = Vec::new();
    m.encode(&mut payload);
    let mut wire = Vec::new();
    from.send(CHANNEL_SYNC, &payload, &mut wire).expect("send");
    *bytes += wire.len() as u64;
    to.handle_bytes(now, &wire).expect("receive");
    let f = to.poll_frame().expect("frame").expect("whole frame");
    Message::decode(&f.payload).expect("message")
}

/// The store as the node opens it (`FsStore::parallel`), or with
/// `TREE_ROUND_THREADS=1` the library's default (`FsStore::new`: no thread).
fn store(dir: &Path) -> Result<FsStore, sync_delta::StoreError> {
    if std::env::var("TREE_ROUND_THREADS").is_ok_and(|t| t == "1") {
        FsStore::new(dir)
    } else {
        FsStore::parallel(dir)
    }
}

fn round(src: &Path, dst: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let now = t0;
    let wall = SystemTime::now();
    let mut s = store(src)?;
    let mut d = store(dst)?;
    let mut source = Source::open(SourceConfig::default(), now, &mut s)?;
    let (mut replica, _) = Replica::open(
        ReplicaConfig {
            mass_delete_fraction: 1.0,
            mass_delete_window: Duration::ZERO,
            ..ReplicaConfig::default()
        },
        now,
        &mut d,
    )?;
    let open = t0.elapsed();
    let t1 = Instant::now();
    let (mut lr, mut ls) = links(now);
    let mut bytes = 0u64;
    replica.handle_connected(now);
    if std::env::var("TREE_ROUND_SERIAL").is_ok_and(|t| t == "1") {
        // Both engines on this thread, one after the other.
        loop {
            let mut moved = false;
            while let Some(m) = replica.poll_transmit() {
                let m = carry(now, &mut lr, &mut ls, &m, &mut bytes);
                source.handle_message(now, wall, m, &mut s)?;
                moved = true;
            }
            while let Some(m) = source.poll_transmit(&mut s) {
                let carried = carry(now, &mut ls, &mut lr, &m, &mut bytes);
                // Sealed: its buffers take the source's next data.
                source.recycle(m);
                replica.handle_message(now, carried, &mut d)?;
                moved = true;
            }
            if !moved {
                break;
            }
        }
    } else {
        // Each engine on its own thread, as on two nodes: sealed frames go
        // from one thread to the other through channels.
        let (to_source, source_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (to_replica, replica_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let source_side = std::thread::spawn(move || -> Result<u64, String> {
            let mut sent = 0u64;
            let mut wire = Vec::new();
            let mut payload = Vec::new();
            // Until the replica's side hangs up, after its round.
            while let Ok(w) = source_rx.recv() {
                ls.handle_bytes(now, &w).map_err(|e| e.to_string())?;
                while let Some(f) = ls.poll_frame().map_err(|e| e.to_string())? {
                    let m = Message::decode(&f.payload).map_err(|e| e.to_string())?;
                    source
                        .handle_message(now, wall, m, &mut s)
                        .map_err(|e| e.to_string())?;
                }
                while let Some(m) = source.poll_transmit(&mut s) {
                    payload.clear();
                    m.encode(&mut payload);
                    source.recycle(m);
                    wire.clear();
                    ls.send(CHANNEL_SYNC, &payload, &mut wire)
                        .map_err(|e| e.to_string())?;
                    sent += wire.len() as u64;
                    if to_replica.send(wire.clone()).is_err() {
                        return Ok(sent);
                    }
                }
            }
            Ok(sent)
        });
        let ended = |st: sync_delta::ReplicaStats| st.rounds + st.refused + st.failed;
        let before = ended(replica.stats());
        let mut wire = Vec::new();
        let mut payload = Vec::new();
        loop {
            while let Some(m) = replica.poll_transmit() {
                payload.clear();
                m.encode(&mut payload);
                wire.clear();
                lr.send(CHANNEL_SYNC, &payload, &mut wire)?;
                bytes += wire.len() as u64;
                to_source.send(wire.clone())?;
            }
            if ended(replica.stats()) > before {
                break;
            }
            let Ok(w) = replica_rx.recv() else {
                // The source's side ended early: its error.
                let e = match source_side.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => "the source stopped before the round ended".into(),
                    Err(_) => "source thread panicked".into(),
                };
                return Err(e.into());
            };
            lr.handle_bytes(now, &w)?;
            while let Some(f) = lr.poll_frame()? {
                replica.handle_message(now, Message::decode(&f.payload)?, &mut d)?;
            }
        }
        // The source takes the replica's last messages (its confirmation)
        // before the round counts as over.
        drop(to_source);
        bytes += source_side.join().map_err(|_| "source thread panicked")??;
    }
    let round = t1.elapsed();
    let mut changed = 0;
    while let Some(e) = replica.poll_event() {
        if let ReplicaEvent::Committed { changed: c, .. } = e {
            changed = c;
        }
    }
    let stats = replica.stats();
    let (manifest_bytes, entries) = replica.manifest_memory();
    println!(
        "open_s={:.3} round_s={:.3} total_s={:.3} wire_bytes={bytes} changed={changed} generation={} entries={entries} replica_manifest_bytes={manifest_bytes} vmhwm_kib={} disk_bytes={} in_place={}",
        open.as_secs_f64(),
        round.as_secs_f64(),
        (open + round).as_secs_f64(),
        replica.generation().number,
        vm_hwm_kib(),
        stats.disk_bytes,
        stats.in_place,
    );
    let _ = Duration::ZERO;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 => generate(Path::new(&args[2]), args[3].parse()?)?,
        Some("mutate") if args.len() == 4 => mutate(Path::new(&args[2]), args[3].parse()?)?,
        Some("big") if args.len() == 4 => {
            let mib: usize = args[3].parse()?;
            let mut r = rng(5);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&args[2])?);
            for _ in 0..(mib << 17) {
                std::io::Write::write_all(&mut f, &r().to_le_bytes())?;
            }
            std::io::Write::flush(&mut f)?;
        }
        Some("edit-big") if args.len() == 3 => {
            let mut d = std::fs::read(&args[2])?;
            let third = d.len() / 3;
            let mut r = rng(6);
            for b in &mut d[third..third + 65536] {
                *b = r() as u8;
            }
            let ins: Vec<u8> = (0..100).map(|_| r() as u8).collect();
            d.splice(2 * third..2 * third, ins);
            d.extend((0..1 << 20).map(|_| r() as u8));
            std::fs::write(&args[2], d)?;
        }
        Some("append-big") if args.len() == 3 => {
            let mut r = rng(7);
            let tail: Vec<u8> = (0..1 << 20).map(|_| r() as u8).collect();
            let mut f = std::fs::OpenOptions::new().append(true).open(&args[2])?;
            std::io::Write::write_all(&mut f, &tail)?;
        }
        Some("insert-big") if args.len() == 4 => {
            let percent: usize = args[3].parse()?;
            let mut d = std::fs::read(&args[2])?;
            let at = d.len() / 100 * percent.min(100);
            let mut r = rng(8);
            d.splice(at..at, (0..100).map(|_| r() as u8));
            std::fs::write(&args[2], d)?;
        }
        Some("walk") if args.len() == 3 => {
            use sync_delta::Storage;
            let mut s = FsStore::parallel(&args[2])?;
            let t = Instant::now();
            let w = s.walk(&sync_delta::Exclude::none())?;
            let walk = t.elapsed();
            let mut src = Source::open(SourceConfig::default(), t, &mut s)?;
            let (bytes, entries) = src.manifest_memory();
            println!(
                "source manifest as opened: {entries} entries, {bytes} B ({:.1} B an entry)",
                bytes as f64 / entries.max(1) as f64
            );
            let t = Instant::now();
            let m = src.scan(&mut s)?;
            let scan = t.elapsed();
            let t = Instant::now();
            let d = m.digest();
            println!(
                "walk {} entries {:.3}s, scan {:.3}s, digest {:.3}s {} vmhwm_kib={}",
                w.entries.len(),
                walk.as_secs_f64(),
                scan.as_secs_f64(),
                t.elapsed().as_secs_f64(),
                d[0],
                vm_hwm_kib()
            );
        }
        Some("round") if args.len() == 4 => round(Path::new(&args[2]), Path::new(&args[3]))?,
        _ => {
            eprintln!(
                "usage: tree_round gen <dir> <files> | mutate <dir> <seed> | round <src> <dst> | big <file> <MiB> | edit-big <file> | append-big <file> | insert-big <file> <percent> | walk <dir>"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
