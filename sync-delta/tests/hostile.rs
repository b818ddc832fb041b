//! A hostile or broken source: typed errors, nothing written outside the
//! stage, the replica left at its last whole generation.

mod common;

use common::{Pair, noise, norm};
use std::time::{Duration, Instant};
use sync_delta::delta::Op;
use sync_delta::manifest::{Change, LocalStat};
use sync_delta::mem::MemStore;
use sync_delta::wire::{DataStatus, Message, Writer};
use sync_delta::{
    Kind, Manifest, Meta, PathError, Refusal, RelPath, Replica, ReplicaConfig, ReplicaEvent,
    SessionError, Storage, WireError,
};

fn file(data: &[u8]) -> Meta {
    Meta {
        kind: Kind::File {
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
        },
        mode: 0o644,
        mtime_ns: 5,
        local: LocalStat::default(),
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// A replica that has sent its Request.
fn started(dst: &mut MemStore, config: ReplicaConfig) -> (Replica, Instant) {
    let now = Instant::now();
    let (mut r, _) = Replica::open(config, now, dst).unwrap();
    r.handle_connected(now);
    assert!(matches!(r.poll_transmit(), Some(Message::Request { .. })));
    (r, now)
}

/// Sends a full manifest listing `m`.
fn manifest(
    r: &mut Replica,
    now: Instant,
    dst: &mut MemStore,
    m: &Manifest,
) -> Result<(), SessionError> {
    r.handle_message(
        now,
        Message::ManifestStart {
            taken_at_ns: 1,
            full: true,
        },
        dst,
    )?;
    r.handle_message(
        now,
        Message::Entries {
            changes: m
                .entries
                .iter()
                .map(|(p, m)| Change::Upsert(p.clone(), m.clone()))
                .collect(),
        },
        dst,
    )?;
    r.handle_message(
        now,
        Message::ManifestEnd {
            entries: m.len() as u64,
            digest: m.digest(),
        },
        dst,
    )
}

fn stage_empty(s: &mut MemStore) -> bool {
    s.list_dir(".sync-delta/stage").unwrap().is_empty()
}

#[test]
fn symlink_in_path_is_refused() {
    let mut dst = MemStore::new();
    let (mut r, now) = started(&mut dst, ReplicaConfig::default());
    let mut m = Manifest::default();
    m.entries.insert(
        p("link"),
        Meta {
            kind: Kind::Symlink {
                target: b"/etc".to_vec(),
            },
            mode: 0o777,
            mtime_ns: 0,
            local: LocalStat::default(),
        },
    );
    m.entries.insert(p("link/passwd"), file(b"root::0:0"));
    assert_eq!(
        manifest(&mut r, now, &mut dst, &m),
        Err(SessionError::Path(PathError::ParentNotDir))
    );
    assert!(dst.view().is_empty());
    assert!(stage_empty(&mut dst));
    assert_eq!(r.stats().protocol_errors, 1);
}

#[test]
fn traversal_absolute_and_nul_paths_do_not_decode() {
    for (bad, err) in [
        ("../../etc/passwd", PathError::DotDot),
        ("/etc/passwd", PathError::Absolute),
        ("a\0b", PathError::Nul),
        (".sync-delta/manifest", PathError::Reserved),
    ] {
        let mut b = vec![3u8, 1, 0, 0, 0, 1];
        Writer(&mut b).str16(bad);
        assert_eq!(Message::decode(&b), Err(WireError::Path(err)), "{bad}");
    }
    let long = "a/".repeat(3000) + "b";
    let mut b = vec![3u8, 1, 0, 0, 0, 1];
    Writer(&mut b).str16(&long);
    assert!(matches!(
        Message::decode(&b),
        Err(WireError::Path(PathError::TooLong { .. }))
    ));
}

/// Generation 1 with a 100 KB file `f`, then a round where `f` changes.
fn with_want(config: ReplicaConfig) -> (MemStore, Replica, Instant, u32, Vec<u8>) {
    let mut src = MemStore::new();
    src.put_file("f", &noise(100_000, 1), 0o644, 5);
    let mut pair = Pair::with_config(
        src,
        MemStore::new(),
        sync_delta::SourceConfig::default(),
        config.clone(),
    );
    pair.round().unwrap();
    let mut dst = pair.dst;
    let (mut r, now) = started(&mut dst, config);
    let new = noise(100_000, 2);
    let mut m = Manifest::default();
    m.entries.insert(p("f"), file(&new));
    manifest(&mut r, now, &mut dst, &m).unwrap();
    let Some(Message::Want {
        id,
        base: Some(base),
        ..
    }) = r.poll_transmit()
    else {
        panic!("expected a want with a base");
    };
    assert_eq!(base.size, 100_000);
    (dst, r, now, id, new)
}

#[test]
fn copy_outside_the_old_file_is_refused() {
    for op in [
        Op::Copy {
            offset: 99_000,
            len: 5_000,
        },
        Op::Copy {
            offset: u64::MAX,
            len: 2,
        },
    ] {
        let (mut dst, mut r, now, id, _) = with_want(ReplicaConfig::default());
        let before = norm(&dst);
        let e = r.handle_message(now, Message::Data { id, ops: vec![op] }, &mut dst);
        assert!(
            matches!(e, Err(SessionError::CopyOutOfRange { .. })),
            "{e:?}"
        );
        assert_eq!(norm(&dst), before);
        assert!(stage_empty(&mut dst));
        // the round is over: anything more is unexpected
        assert!(matches!(
            r.handle_message(
                now,
                Message::DataEnd {
                    id,
                    status: DataStatus::Complete
                },
                &mut dst
            ),
            Err(SessionError::Unexpected { .. })
        ));
    }
}

#[test]
fn endless_data_is_cut_at_the_announced_size() {
    let (mut dst, mut r, now, id, _) = with_want(ReplicaConfig::default());
    let before = norm(&dst);
    let mut sent = 0u64;
    let err = loop {
        match r.handle_message(
            now,
            Message::Data {
                id,
                ops: vec![Op::Literal(vec![0; 30_000])],
            },
            &mut dst,
        ) {
            Ok(()) => sent += 30_000,
            Err(e) => break e,
        }
        assert!(sent < 1_000_000, "never stopped");
    };
    assert_eq!(err, SessionError::BeyondSize { size: 100_000 });
    assert_eq!(sent, 90_000);
    assert_eq!(norm(&dst), before);
    assert!(stage_empty(&mut dst));
}

#[test]
fn wrong_content_is_skipped_not_committed() {
    let (mut dst, mut r, now, id, _) = with_want(ReplicaConfig::default());
    let before = norm(&dst);
    r.handle_message(
        now,
        Message::Data {
            id,
            ops: vec![Op::Literal(noise(100_000, 3))],
        },
        &mut dst,
    )
    .unwrap();
    r.handle_message(
        now,
        Message::DataEnd {
            id,
            status: DataStatus::Complete,
        },
        &mut dst,
    )
    .unwrap();
    let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(
        events.contains(&ReplicaEvent::FileSkipped(p("f"))),
        "{events:?}"
    );
    assert_eq!(norm(&dst), before);
    assert!(stage_empty(&mut dst));
    // The next round asks for that file whole, not as a delta again.
    while r.poll_transmit().is_some() {}
    r.sync_now(now);
    assert!(matches!(r.poll_transmit(), Some(Message::Request { .. })));
    let mut m = Manifest::default();
    m.entries.insert(p("f"), file(&noise(100_000, 2)));
    manifest(&mut r, now, &mut dst, &m).unwrap();
    assert!(matches!(
        r.poll_transmit(),
        Some(Message::Want { base: None, .. })
    ));
}

#[test]
fn unknown_ids_and_out_of_order_messages() {
    let (mut dst, mut r, now, _, _) = with_want(ReplicaConfig::default());
    assert_eq!(
        r.handle_message(
            now,
            Message::Data {
                id: 77,
                ops: vec![]
            },
            &mut dst
        ),
        Err(SessionError::UnknownFile { id: 77 })
    );
    let mut dst = MemStore::new();
    let (mut r, now) = started(&mut dst, ReplicaConfig::default());
    assert!(matches!(
        r.handle_message(now, Message::Data { id: 0, ops: vec![] }, &mut dst),
        Err(SessionError::Unexpected { .. })
    ));
}

#[test]
fn bounds_on_entries_sizes_and_digest() {
    let mut dst = MemStore::new();
    let cfg = ReplicaConfig {
        max_entries: 10,
        max_file_size: 1 << 20,
        ..ReplicaConfig::default()
    };
    let (mut r, now) = started(&mut dst, cfg.clone());
    let mut m = Manifest::default();
    for i in 0..11 {
        m.entries.insert(p(&format!("f{i}")), file(b"x"));
    }
    assert_eq!(
        manifest(&mut r, now, &mut dst, &m),
        Err(SessionError::TooManyEntries { max: 10 })
    );

    let (mut r, now) = started(&mut dst, cfg.clone());
    let mut m = Manifest::default();
    m.entries.insert(
        p("huge"),
        Meta {
            kind: Kind::File {
                size: u64::MAX,
                hash: [0; 32],
            },
            ..file(b"")
        },
    );
    assert!(matches!(
        manifest(&mut r, now, &mut dst, &m),
        Err(SessionError::FileTooLarge { .. })
    ));

    let (mut r, now) = started(&mut dst, cfg);
    r.handle_message(
        now,
        Message::ManifestStart {
            taken_at_ns: 1,
            full: true,
        },
        &mut dst,
    )
    .unwrap();
    assert_eq!(
        r.handle_message(
            now,
            Message::ManifestEnd {
                entries: 0,
                digest: [1; 32]
            },
            &mut dst
        ),
        Err(SessionError::DigestMismatch)
    );
    assert!(dst.view().is_empty());
}

#[test]
fn mass_deletion_needs_confirmation() {
    let mut src = MemStore::new();
    for i in 0..10 {
        src.put_file(&format!("f{i}"), b"data", 0o644, 1);
    }
    let mut pair = Pair::new(src, MemStore::new());
    pair.round().unwrap();
    for i in 0..6 {
        pair.src.remove_tree(&format!("f{i}"));
    }
    let before = norm(&pair.dst);
    pair.round().unwrap();
    let refusal = Refusal::MassDeletion {
        deleting: 6,
        total: 10,
    };
    assert!(pair.events.contains(&ReplicaEvent::Refused(refusal)));
    assert_eq!(pair.replica.status(pair.wall).refused, Some(refusal));
    assert_eq!(norm(&pair.dst), before);
    pair.round().unwrap();
    assert_eq!(norm(&pair.dst), before, "refused again until confirmed");
    pair.replica.confirm_deletions();
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.status(pair.wall).refused, None);

    // An empty source root is refused too.
    for i in 6..10 {
        pair.src.remove_tree(&format!("f{i}"));
    }
    pair.round().unwrap();
    assert_eq!(
        pair.replica.status(pair.wall).refused,
        Some(Refusal::EmptySource { total: 4 })
    );
    assert_eq!(pair.dst.view().len(), 4);
}

#[test]
fn stalled_round_times_out() {
    let mut dst = MemStore::new();
    let (mut r, now) = started(&mut dst, ReplicaConfig::default());
    let deadline = r.poll_timeout().unwrap();
    assert!(deadline > now);
    r.handle_timeout(now + Duration::from_secs(1));
    assert!(
        r.status(std::time::SystemTime::UNIX_EPOCH)
            .round_in_progress
    );
    r.handle_timeout(deadline);
    assert_eq!(r.poll_event(), Some(ReplicaEvent::TimedOut));
    assert!(
        !r.status(std::time::SystemTime::UNIX_EPOCH)
            .round_in_progress
    );
}

#[test]
fn next_round_is_exposed() {
    let mut dst = MemStore::new();
    let now = Instant::now();
    let (mut r, _) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
    assert_eq!(r.next_round_at(), None, "not connected");
    r.handle_connected(now);
    assert_eq!(r.next_round_at(), None, "a round started at once");
    assert!(matches!(r.poll_transmit(), Some(Message::Request { .. })));
    r.handle_disconnected(now, &mut dst).unwrap();
    r.handle_connected(now);
    assert!(r.poll_transmit().is_some());
}

/// A store that counts reads and refuses them past a bound: a loop that
/// reads without end fails the test by its step count, not by a timer.
struct Bounded {
    inner: MemStore,
    reads: u64,
    max: u64,
}

impl Storage for Bounded {
    fn walk(
        &mut self,
        e: &sync_delta::Exclude,
    ) -> Result<sync_delta::store::Walk, sync_delta::StoreError> {
        self.inner.walk(e)
    }
    fn stat(&mut self, p: &str) -> Result<sync_delta::store::Stat, sync_delta::StoreError> {
        self.inner.stat(p)
    }
    fn read_at(
        &mut self,
        p: &str,
        off: u64,
        buf: &mut [u8],
    ) -> Result<usize, sync_delta::StoreError> {
        self.reads += 1;
        assert!(
            self.reads <= self.max,
            "{} reads: the source is looping",
            self.reads
        );
        self.inner.read_at(p, off, buf)
    }
    fn read_link(&mut self, p: &str) -> Result<Vec<u8>, sync_delta::StoreError> {
        self.inner.read_link(p)
    }
    fn create(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.create(p)
    }
    fn write_at(&mut self, p: &str, off: u64, d: &[u8]) -> Result<(), sync_delta::StoreError> {
        self.inner.write_at(p, off, d)
    }
    fn sync_file(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_file(p)
    }
    fn sync_dir(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_dir(p)
    }
    fn rename(&mut self, a: &str, b: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.rename(a, b)
    }
    fn remove_file(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.remove_file(p)
    }
    fn remove_dir(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.remove_dir(p)
    }
    fn create_dir(&mut self, p: &str, mode: u32) -> Result<(), sync_delta::StoreError> {
        self.inner.create_dir(p, mode)
    }
    fn symlink(&mut self, t: &[u8], p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.symlink(t, p)
    }
    fn set_meta(&mut self, p: &str, mode: u32, mtime: i64) -> Result<(), sync_delta::StoreError> {
        self.inner.set_meta(p, mode, mtime)
    }
    fn list_dir(&mut self, p: &str) -> Result<Vec<String>, sync_delta::StoreError> {
        self.inner.list_dir(p)
    }
}

/// F6: a replica's signature with a chunk longer than the source's read
/// window, after one chunk that matches, made the source read the same
/// window forever. Now the file is sent in a bounded number of reads.
#[test]
fn a_signature_chunk_longer_than_the_read_window_cannot_stall_the_source() {
    use sync_delta::chunk::ChunkParams;
    use sync_delta::delta::{SigChunk, chunk_hash};
    use sync_delta::wire::Base;
    let data = noise(10 << 20, 42);
    let mut store = MemStore::new();
    store.put_file("big.wav", &data, 0o644, 5);
    let now = Instant::now();
    let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut source =
        sync_delta::Source::open(sync_delta::SourceConfig::default(), now, &mut store).unwrap();
    source
        .handle_message(now, wall, Message::Request { digest: [0; 32] }, &mut store)
        .unwrap();
    while source.poll_transmit(&mut store).is_some() {}
    // The first chunk as the source cuts it, then one of 5 MiB, then one
    // more (a chunk is only expected when another follows it).
    let params = ChunkParams::new(4096);
    let first = params.cut(&data);
    let chunks = vec![
        SigChunk {
            len: first as u32,
            hash: chunk_hash(&data[..first]),
        },
        SigChunk {
            len: 5 << 20,
            hash: 1,
        },
        SigChunk { len: 100, hash: 2 },
    ];
    let base = Base {
        size: chunks.iter().map(|c| u64::from(c.len)).sum(),
        hash: [7; 32],
        avg: 4096,
        chunks,
    };
    source
        .handle_message(
            now,
            wall,
            Message::Want {
                id: 0,
                path: p("big.wav"),
                base: Some(base),
            },
            &mut store,
        )
        .unwrap();
    let mut bounded = Bounded {
        inner: store,
        reads: 0,
        max: 1_000,
    };
    let (mut sent, mut end) = (0u64, None);
    while let Some(m) = source.poll_transmit(&mut bounded) {
        match m {
            Message::Data { ops, .. } => {
                for op in ops {
                    sent += match op {
                        Op::Copy { len, .. } => len,
                        Op::Literal(d) => d.len() as u64,
                    };
                }
            }
            Message::DataEnd { status, .. } => end = Some(status),
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(end, Some(DataStatus::Complete));
    assert_eq!(sent, data.len() as u64);
    assert!(bounded.reads < 100, "{} reads", bounded.reads);
}
