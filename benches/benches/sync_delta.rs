//! sync-delta beside `fast_rsync`, in one run:
//! - delta generation and apply on one large file (64 MiB; set
//!   `SYNC_DELTA_BENCH_MIB=512` for the full size) after a 64 KiB
//!   overwrite, a 100-byte insert and a 1 MiB append, and against the same
//!   size of unrelated data;
//! - signature and whole-file (manifest) hashing throughput;
//! - apply: ours (the output checked against its BLAKE3 as it is made)
//!   beside `fast_rsync`'s unchecked apply, and beside `fast_rsync`'s
//!   followed by the same check;
//! - the threaded signature and apply (as many threads as cores) beside
//!   the one-thread figures, and generation into reused output for both
//!   libraries beside generation into fresh memory; the source's own
//!   generation (a want answered with `Data` messages, against unrelated
//!   data) with its messages dropped and given back, and the page faults
//!   of a pass of each, printed;
//! - bytes on the wire for the edited file, printed (a real round between
//!   two in-memory stores over an authenticated link; `fast_rsync`:
//!   signature plus delta). rsync's own figures come from
//!   `benches/scripts/sync_delta_tree.sh`.
//!
//! `cargo bench --bench sync_delta -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fast_rsync::{Signature, SignatureOptions};
use sync_delta::chunk::ChunkParams;
use sync_delta::delta::{self, Op};
use sync_delta::frame::{CHANNEL_SYNC, Link, Nonce, PreSharedKey};
use sync_delta::mem::MemStore;
use sync_delta::wire::Base;
use sync_delta::{Epoch, Message, Replica, ReplicaConfig, Source, SourceConfig, Storage};

fn size() -> usize {
    std::env::var("SYNC_DELTA_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(64)
        << 20
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// The old file with a 64 KiB overwrite, a 100-byte insert and a 1 MiB append.
fn edited(base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let third = v.len() / 3;
    v[third..third + 65536].copy_from_slice(&noise(65536, 11));
    v.splice(2 * third..2 * third, noise(100, 12));
    v.extend_from_slice(&noise(1 << 20, 13));
    v
}

fn rsync_options(n: usize) -> SignatureOptions {
    // rsync's own choice: about the square root of the length, a multiple of 8.
    let block = ((n as f64).sqrt() as u32 & !7).clamp(700, 131_072);
    SignatureOptions {
        block_size: block,
        crypto_hash_size: 8,
    }
}

fn delta_bytes(ops: &[Op]) -> (u64, u64) {
    ops.iter().fold((0, 0), |(c, l), op| match op {
        Op::Copy { len, .. } => (c + len, l),
        Op::Literal(d) => (c, l + d.len() as u64),
    })
}

/// Bytes on the wire for one round that updates `old` to `new`.
fn wire_round(old: &[u8], new: &[u8]) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut src = MemStore::new();
    src.put_file("rec/call.wav", old, 0o640, 1);
    let mut dst = MemStore::new();
    let mut source = Source::open(SourceConfig::default(), now, &mut src).expect("source");
    let (mut replica, _) = Replica::open(ReplicaConfig::default(), now, &mut dst).expect("replica");
    let (mut lr, mut ls) = linked(bench_key(), now);
    replica.handle_connected(now);
    let mut round =
        |src: &mut MemStore, dst: &mut MemStore, replica: &mut Replica, bytes: &mut u64| loop {
            let mut moved = false;
            let mut payload = Vec::new();
            while let Some(m) = replica.poll_transmit() {
                payload.clear();
                m.encode(&mut payload);
                let mut w = Vec::new();
                lr.send(CHANNEL_SYNC, &payload, &mut w).expect("send");
                *bytes += w.len() as u64;
                source.handle_message(now, wall, m, src).expect("source");
                moved = true;
            }
            while let Some(m) = source.poll_transmit(src) {
                payload.clear();
                m.encode(&mut payload);
                let mut w = Vec::new();
                ls.send(CHANNEL_SYNC, &payload, &mut w).expect("send");
                *bytes += w.len() as u64;
                replica.handle_message(now, m, dst).expect("replica");
                moved = true;
            }
            if !moved {
                break;
            }
        };
    let mut first = 0;
    round(&mut src, &mut dst, &mut replica, &mut first);
    src.put_file("rec/call.wav", new, 0o640, 2);
    replica.sync_now(now + Duration::from_secs(1));
    let mut second = 0;
    round(&mut src, &mut dst, &mut replica, &mut second);
    assert_eq!(dst.view(), src.view(), "replicated");
    second
}

/// This process's minor page faults so far (Linux: `/proc/self/stat`).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command's name (in parentheses): state, ppid, pgrp,
    // session, tty, tpgid, flags, minflt.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(7)?.parse().ok()
}

/// A source holding `data` as file `f`, a round's listing sent (so that
/// it takes wants for `f`).
fn wanting_source(data: &[u8]) -> (MemStore, Source) {
    let now = Instant::now();
    let mut store = MemStore::new();
    store.put_file("f", data, 0o640, 1);
    let mut source = Source::open(SourceConfig::default(), now, &mut store).expect("source");
    let request = Message::Request { digest: [7; 32] };
    source
        .handle_message(now, SystemTime::UNIX_EPOCH, request, &mut store)
        .expect("request");
    while source.poll_transmit(&mut store).is_some() {}
    (store, source)
}

fn bench_key() -> PreSharedKey {
    PreSharedKey::new(*blake3::hash(b"bench").as_bytes()).expect("a random-looking key")
}

fn linked(key: PreSharedKey, now: Instant) -> (Link, Link) {
    Link::connected_pair(
        key,
        [Nonce([1; 32]), Nonce([2; 32])],
        [Epoch::new(1, 2), Epoch::new(1, 1)],
        now,
    )
    .expect("handshake")
}

fn bench(c: &mut Criterion) {
    let n = size();
    let base = noise(n, 1);
    let similar = edited(&base);
    let unrelated = noise(n, 2);
    let params = ChunkParams::for_size(n as u64);
    let sig = delta::signature(&base, params);
    let opts = rsync_options(n);
    let fr_sig = Signature::calculate(&base, opts);
    let fr_index = fr_sig.index();

    // Wire bytes, printed once (after the generation below).
    let ops = delta::diff(params, &sig, &similar);
    let (copied, literal) = delta_bytes(&ops);
    let mut fr_delta = Vec::new();
    fast_rsync::diff(&fr_index, &similar, &mut fr_delta).expect("diff");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("delta_generate");
    g.throughput(Throughput::Bytes(n as u64));
    g.sample_size(10);
    // The source's production path on the unrelated data: a `Source` over
    // a `MemStore` answering a want whose old copy is `base`, its `Data`
    // messages (about 1 MiB each, made a 4 MiB window at a time) dropped
    // as they come, as a driver does once it has encoded them, or given
    // back once encoded (`Source::recycle`), their buffers taking the next
    // messages' literals. The page faults of a pass are printed. Before
    // the wire round: once a process has freed a mapped block larger than
    // a MiB or two (that round does), glibc's dynamic mmap threshold keeps
    // freed 1 MiB blocks in its heap, and dropped messages' buffers come
    // back from the allocator without page faults too.
    let want_base = Base {
        size: n as u64,
        hash: *blake3::hash(&base).as_bytes(),
        avg: params.avg(),
        chunks: sig.clone(),
    };
    for (name, recycle) in [
        ("sync_delta source (messages dropped)", false),
        ("sync_delta source (messages recycled)", true),
    ] {
        let (mut store, mut source) = wanting_source(&unrelated);
        let mut pass = || {
            let now = Instant::now();
            let want = Message::Want {
                id: 1,
                path: sync_delta::RelPath::new("f").expect("path"),
                base: Some(want_base.clone()),
            };
            source
                .handle_message(now, SystemTime::UNIX_EPOCH, want, &mut store)
                .expect("want");
            let mut literal = 0;
            while let Some(m) = source.poll_transmit(&mut store) {
                if let Message::Data { ops, .. } = &m {
                    literal += delta_bytes(ops).1;
                }
                if recycle {
                    source.recycle(m);
                }
            }
            assert_eq!(literal, n as u64, "all literal");
            literal
        };
        // Page faults of a pass after a first one, printed (Linux).
        pass();
        let before = minor_faults();
        pass();
        if let (Some(a), Some(b)) = (before, minor_faults()) {
            println!("{name}, unrelated: {} page faults a pass", b - a);
        }
        g.bench_function(BenchmarkId::new(name, "unrelated"), |b| {
            b.iter(|| black_box(pass()))
        });
    }
    for (name, new) in [("similar", &similar), ("unrelated", &unrelated)] {
        g.bench_with_input(BenchmarkId::new("sync_delta", name), new, |b, new| {
            b.iter(|| black_box(delta::diff(params, &sig, new)))
        });
        g.bench_with_input(BenchmarkId::new("fast_rsync", name), new, |b, new| {
            b.iter(|| {
                let mut out = Vec::new();
                fast_rsync::diff(&fr_index, new, &mut out).expect("diff");
                black_box(out)
            })
        });
    }
    // Both again, each writing into the output of its previous run (its
    // pages already mapped, as a stream of bounded messages reuses its
    // memory), so that neither pays a page fault per 4 KiB of delta.
    for (name, new) in [("similar", &similar), ("unrelated", &unrelated)] {
        let mut ops = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("sync_delta (output reused)", name),
            new,
            |b, new| {
                b.iter(|| {
                    delta::diff_into(params, &sig, new, &mut ops);
                    black_box(ops.len())
                })
            },
        );
        let mut out = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("fast_rsync (output reused)", name),
            new,
            |b, new| {
                b.iter(|| {
                    out.clear();
                    fast_rsync::diff(&fr_index, new, &mut out).expect("diff");
                    black_box(out.len())
                })
            },
        );
    }
    g.finish();

    let wire = wire_round(&base, &similar);
    println!(
        "sync_delta wire, {} MiB file edited: sync-delta round {} B (signature {} chunks, literal {} B, copied {} B); \
         fast_rsync signature {} B + delta {} B = {} B (block {})",
        n >> 20,
        wire,
        sig.len(),
        literal,
        copied,
        fr_sig.serialized().len(),
        fr_delta.len(),
        fr_sig.serialized().len() + fr_delta.len(),
        opts.block_size,
    );

    // The chunker alone on unrelated data (what generation costs when
    // nothing matches): the four-lane cut used, and the one-chain loop it
    // must equal.
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(n as u64));
    g.sample_size(10);
    let cut_all = |cut: &dyn Fn(&[u8]) -> usize| {
        let (mut pos, mut count) = (0, 0usize);
        while pos < unrelated.len() {
            pos += cut(&unrelated[pos..]);
            count += 1;
        }
        count
    };
    g.bench_function("sync_delta/cut (four lanes, used)", |b| {
        b.iter(|| black_box(cut_all(&|d| params.cut(d))))
    });
    g.bench_function("sync_delta/cut (one chain, reference)", |b| {
        b.iter(|| black_box(cut_all(&|d| params.cut_reference(d))))
    });
    g.finish();

    let mut g = c.benchmark_group("delta_apply");
    g.throughput(Throughput::Bytes(n as u64));
    g.sample_size(10);
    let hash = *blake3::hash(&similar).as_bytes();
    g.bench_function("sync_delta/similar (verified)", |b| {
        b.iter(|| black_box(delta::apply(&base, &ops, similar.len() as u64, &hash).expect("apply")))
    });
    g.bench_function(
        format!("sync_delta/similar (verified, {cores} threads)"),
        |b| {
            b.iter(|| {
                black_box(
                    delta::apply_threaded(&base, &ops, similar.len() as u64, &hash, cores)
                        .expect("apply"),
                )
            })
        },
    );
    g.bench_function("fast_rsync/similar", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(similar.len());
            fast_rsync::apply(&base, &fr_delta, &mut out).expect("apply");
            black_box(out)
        })
    });
    // `fast_rsync` checks nothing: with the same check ours makes (the
    // output's BLAKE3 against the file's), as a user of it would add.
    g.bench_function("fast_rsync/similar (then BLAKE3 of the output)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(similar.len());
            fast_rsync::apply(&base, &fr_delta, &mut out).expect("apply");
            assert!(blake3::hash(&out).as_bytes() == &hash);
            black_box(out)
        })
    });
    g.finish();

    // The frame layer on 1 MiB payloads: CRC-32C (the crc crate's byte
    // table and slice-by-16, and the hardware instruction the state
    // records use), the keyed BLAKE3 MAC, the version 1 MAC-only frame
    // (CRC-32C + keyed BLAKE3, the link before encryption) as the
    // reference, and the encrypted link (Noise, AES-256-GCM): a whole
    // send + receive on one core.
    let mut g = c.benchmark_group("frame");
    let payload = noise(1 << 20, 3);
    g.throughput(Throughput::Bytes(payload.len() as u64));
    let crc1 = crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISCSI);
    let crc16 = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    g.bench_function("crc32c/table1", |b| {
        b.iter(|| black_box(crc1.checksum(&payload)))
    });
    g.bench_function("crc32c/table16", |b| {
        b.iter(|| black_box(crc16.checksum(&payload)))
    });
    g.bench_function("crc32c/hardware (used)", |b| {
        b.iter(|| black_box(crc32c::crc32c(&payload)))
    });
    g.bench_function("mac/blake3_keyed", |b| {
        b.iter(|| black_box(blake3::keyed_hash(&[7; 32], &payload)))
    });
    let mut wire = Vec::with_capacity(payload.len() + 64);
    g.bench_function("link_v1_mac_only/send+receive (reference)", |b| {
        b.iter(|| {
            wire.clear();
            v1_send(&payload, &mut wire);
            black_box(v1_receive(&wire).expect("authentic"))
        })
    });
    let now = Instant::now();
    let (mut fa, mut fb) = linked(bench_key(), now);
    g.bench_function("link/send+receive (noise aesgcm, used)", |b| {
        b.iter(|| {
            wire.clear();
            fa.send(CHANNEL_SYNC, &payload, &mut wire).expect("send");
            fb.handle_bytes(now, &wire).expect("receive");
            black_box(fb.poll_frame().expect("frame").expect("whole"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(n as u64));
    g.sample_size(10);
    g.bench_function("sync_delta/signature", |b| {
        b.iter(|| black_box(delta::signature(&base, params)))
    });
    g.bench_function(format!("sync_delta/signature ({cores} threads)"), |b| {
        b.iter(|| black_box(delta::signature_threaded(&base, params, cores)))
    });
    // As the replica makes the signature of its old copy: 1 MiB reads fed
    // to the builder.
    for threads in [1, cores] {
        g.bench_function(
            format!("sync_delta/signature (SignatureBuilder, 1 MiB pieces, {threads} threads)"),
            |b| {
                b.iter(|| {
                    let mut sb = delta::SignatureBuilder::new(params).with_threads(threads);
                    for piece in base.chunks(1 << 20) {
                        sb.update(piece);
                    }
                    black_box(sb.finish())
                })
            },
        );
    }
    g.bench_function("fast_rsync/signature", |b| {
        b.iter(|| black_box(Signature::calculate(&base, opts)))
    });
    g.bench_function("sync_delta/manifest_hash (blake3, memory)", |b| {
        b.iter(|| black_box(blake3::hash(&base)))
    });
    // Manifest hashing as a scan does it: through the real store, the
    // default single-threaded store and the opt-in parallel one
    // (`FsStore::parallel`: the machine's parallelism), on the same bytes
    // split into 8 files so that the parallel store has work to spread.
    let dir = std::env::temp_dir().join(format!("sync-delta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let piece = base.len().div_ceil(8).max(1);
    let paths: Vec<sync_delta::RelPath> = base
        .chunks(piece)
        .enumerate()
        .map(|(i, part)| {
            std::fs::write(dir.join(format!("part{i}")), part).expect("write");
            sync_delta::RelPath::new(&format!("part{i}")).expect("path")
        })
        .collect();
    let mut single = sync_delta::FsStore::new(&dir).expect("store");
    g.bench_function("sync_delta/manifest_hash (FsStore::new, no thread)", |b| {
        b.iter(|| black_box(single.hash_files(&paths)))
    });
    let mut parallel = sync_delta::FsStore::parallel(&dir).expect("store");
    g.bench_function(
        format!("sync_delta/manifest_hash (FsStore::parallel, {cores} threads)"),
        |b| b.iter(|| black_box(parallel.hash_files(&paths))),
    );
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The version 1 frame's work, as the link did it before encryption: a
/// 26-byte header, the payload copied, CRC-32C over both, a keyed BLAKE3
/// MAC over a sequence number, the header and the payload.
fn v1_send(payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"SD\x01\x03\x00\x00");
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    let mac = v1_mac(&out[start..start + 26], payload);
    out.extend_from_slice(&mac);
}

fn v1_mac(header: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(&[7; 32]);
    h.update(&0u64.to_le_bytes());
    h.update(header);
    h.update(payload);
    let mut mac = [0u8; 16];
    mac.copy_from_slice(&h.finalize().as_bytes()[..16]);
    mac
}

/// The version 1 receive side: CRC, MAC, and the payload copied out.
fn v1_receive(wire: &[u8]) -> Option<Vec<u8>> {
    let body_end = wire.len().checked_sub(20)?;
    let crc = u32::from_le_bytes(wire[body_end..body_end + 4].try_into().ok()?);
    if crc32c::crc32c(&wire[..body_end]) != crc {
        return None;
    }
    let payload = &wire[26..body_end];
    (v1_mac(&wire[..26], payload)[..] == wire[body_end + 4..]).then(|| payload.to_vec())
}

criterion_group!(benches, bench);
criterion_main!(benches);
