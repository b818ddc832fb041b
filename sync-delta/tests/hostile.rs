//! A hostile or broken source: typed errors, nothing written outside the
//! stage, the replica left at its last whole generation.

mod common;

use common::{Norm, Pair, noise, norm, read};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use sync_delta::delta::Op;
use sync_delta::manifest::{Change, LocalStat};
use sync_delta::mem::MemStore;
use sync_delta::wire::{DataStatus, Message, Writer};
use sync_delta::{
    Kind, Manifest, Meta, PathError, Refusal, RelPath, Replica, ReplicaConfig, ReplicaEvent,
    ReplicaStats, SessionError, Storage, WireError,
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
        src.put_file(&format!("f{i}"), format!("dat{i}").as_bytes(), 0o644, 1);
    }
    let mut pair = Pair::new(src, MemStore::new());
    pair.round().unwrap();
    for i in 0..6 {
        pair.src.remove_tree(&format!("f{i}"));
    }
    let before = norm(&pair.dst);
    pair.round().unwrap();
    // 6 of 10 four-byte files: 24 of 40 content bytes, over half.
    let refusal = Refusal::MassDeletion {
        losing: 24,
        lost: 0,
        total: 40,
        limit: 20,
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

/// Generation 1 holding `d/` with two files, and a replica that has sent
/// its next Request.
fn with_dir() -> (MemStore, Replica, Instant) {
    let mut src = MemStore::new();
    src.put_file("d/a", b"a", 0o644, 5);
    src.put_file("d/b", b"b", 0o644, 5);
    // Most of the content stays: the mass-deletion guard lets a round
    // that removes d/a and d/b through.
    src.put_file("keep", b"kept content", 0o644, 5);
    let mut pair = Pair::new(src, MemStore::new());
    pair.round().unwrap();
    let mut dst = pair.dst;
    let (r, now) = started(&mut dst, ReplicaConfig::default());
    (dst, r, now)
}

/// Sends changes from the replica's manifest (an incremental round) with
/// the digest of the manifest they make.
fn changes(
    r: &mut Replica,
    now: Instant,
    dst: &mut MemStore,
    list: Vec<Change>,
) -> Result<(), SessionError> {
    let mut m = r.manifest().clone();
    for c in &list {
        match c {
            Change::Upsert(p, meta) => m.entries.insert(p.clone(), meta.clone()),
            Change::Gone(p) => m.entries.remove(p),
        };
    }
    r.handle_message(
        now,
        Message::ManifestStart {
            taken_at_ns: 9,
            full: false,
        },
        dst,
    )?;
    r.handle_message(now, Message::Entries { changes: list }, dst)?;
    r.handle_message(
        now,
        Message::ManifestEnd {
            entries: m.len() as u64,
            digest: m.digest(),
        },
        dst,
    )
}

/// F2: a directory that still has entries turned into a file or a symlink
/// is refused before anything is written (it would orphan them and leave
/// a commit record that cannot be applied).
#[test]
fn a_directory_with_entries_cannot_become_a_file_or_symlink() {
    let link = Meta {
        kind: Kind::Symlink {
            target: b"/etc".to_vec(),
        },
        mode: 0o777,
        mtime_ns: 0,
        local: LocalStat::default(),
    };
    for meta in [file(b"now a file"), link] {
        let (mut dst, mut r, now) = with_dir();
        let before = norm(&dst);
        let generation = r.generation().number;
        assert_eq!(
            changes(
                &mut r,
                now,
                &mut dst,
                vec![Change::Upsert(p("d"), meta.clone())]
            ),
            Err(SessionError::OrphansEntries)
        );
        assert_eq!(norm(&dst), before);
        assert!(stage_empty(&mut dst));
        assert_eq!(r.stats().shape_refused, 1);
        assert_eq!(r.stats().protocol_errors, 1);
        // The same change with the entries gone is a valid round.
        let (mut dst, mut r, now) = with_dir();
        changes(
            &mut r,
            now,
            &mut dst,
            vec![
                Change::Upsert(p("d"), meta),
                Change::Gone(p("d/a")),
                Change::Gone(p("d/b")),
            ],
        )
        .unwrap();
        if let Some(Message::Want { id, .. }) = r.poll_transmit() {
            r.handle_message(
                now,
                Message::Data {
                    id,
                    ops: vec![Op::Literal(b"now a file".to_vec())],
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
        }
        assert_eq!(r.generation().number, generation + 1);
        assert!(!dst.nodes().contains_key("d/a"));
        // Opening again finds nothing to roll forward or repair.
        let (_, report) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
        assert_eq!(report.generation.number, generation + 1);
        assert_eq!(report.repaired, None);
    }
}

/// F7: the manifest budget counts bytes (paths and symlink targets), not
/// only entries.
#[test]
fn the_manifest_budget_counts_bytes() {
    let link = |n: usize| Meta {
        kind: Kind::Symlink {
            target: vec![b'x'; n],
        },
        mode: 0o777,
        mtime_ns: 0,
        local: LocalStat::default(),
    };
    let long = |i: usize| p(&format!("{}/{i}", "d".repeat(200)));
    // 40 entries of about 4.3 KB each: well under the entry limit, over
    // a 64 KiB budget.
    let mut m = Manifest::default();
    m.entries.insert(
        p(&"d".repeat(200)),
        Meta {
            kind: Kind::Dir,
            ..file(b"")
        },
    );
    for i in 0..40 {
        m.entries.insert(long(i), link(4000));
    }
    let small = ReplicaConfig {
        max_manifest_bytes: 64 << 10,
        ..ReplicaConfig::default()
    };
    let mut dst = MemStore::new();
    let (mut r, now) = started(&mut dst, small.clone());
    let e = manifest(&mut r, now, &mut dst, &m);
    assert!(
        matches!(e, Err(SessionError::ManifestTooLarge { max, .. }) if max == 64 << 10),
        "{e:?}"
    );
    assert!(dst.view().is_empty());
    assert_eq!(r.stats().protocol_errors, 1);
    // The default budget takes it.
    let (mut r, now) = started(&mut dst, ReplicaConfig::default());
    manifest(&mut r, now, &mut dst, &m).unwrap();
    assert_eq!(r.generation().number, 1);
    // The manifest a small round makes is counted whole: a replica
    // holding 40 long links refuses one more entry under a budget that
    // the change alone fits in.
    let total = r.manifest().bytes();
    let tight = ReplicaConfig {
        max_manifest_bytes: total + 100,
        ..ReplicaConfig::default()
    };
    let (mut r, now) = started(&mut dst, tight);
    let before = norm(&dst);
    let e = changes(
        &mut r,
        now,
        &mut dst,
        vec![Change::Upsert(long(99), link(100))],
    );
    assert!(
        matches!(e, Err(SessionError::ManifestTooLarge { bytes, .. }) if bytes > total + 100),
        "{e:?}"
    );
    assert_eq!(norm(&dst), before);
}

/// F8: a replica's claimed generation is a peer's number: one that cannot
/// be counted up from is refused with a typed error.
#[test]
fn a_generation_claim_that_would_overflow_is_refused() {
    let mut src = MemStore::new();
    src.put_file("f", b"data", 0o644, 1);
    let mut pair = Pair::new(src, MemStore::new());
    pair.round().unwrap();
    let confirmed = pair.source.confirmed_generation();
    let digest = pair.replica.manifest().digest();
    let now = pair.now;
    pair.source
        .handle_message(now, pair.wall, Message::Request { digest }, &mut pair.src)
        .unwrap();
    while pair.source.poll_transmit(&mut pair.src).is_some() {}
    let e = pair.source.handle_message(
        now,
        pair.wall,
        Message::Committed {
            generation: u64::MAX,
            digest,
        },
        &mut pair.src,
    );
    assert_eq!(
        e,
        Err(SessionError::GenerationOutOfRange {
            generation: u64::MAX
        })
    );
    assert_eq!(pair.source.confirmed_generation(), confirmed);
    assert_eq!(pair.source.stats().protocol_errors, 1);
    // Nothing of it was stored: the tree opens as a replica at the same
    // generation.
    let (_, report) = Replica::open(ReplicaConfig::default(), now, &mut pair.src).unwrap();
    assert_eq!(report.generation.number, confirmed);
}

/// F9: setuid, setgid and sticky bits are not written unless configured;
/// the manifest keeps the source's mode, so the digests still agree.
#[test]
fn special_bits_are_stripped_unless_kept() {
    for keep in [false, true] {
        let mut src = MemStore::new();
        src.put_dir("shared", 0o3775);
        src.put_file("shared/tool", b"#!/bin/sh", 0o6755, 5);
        src.put_file("plain", b"x", 0o640, 5);
        let config = ReplicaConfig {
            keep_special_bits: keep,
            ..ReplicaConfig::default()
        };
        let mut pair = Pair::with_config(
            src,
            MemStore::new(),
            sync_delta::SourceConfig::default(),
            config,
        );
        pair.round().unwrap();
        let mode = |s: &MemStore, k: &str| match s.nodes().get(k) {
            Some(
                sync_delta::mem::Node::File { mode, .. } | sync_delta::mem::Node::Dir { mode, .. },
            ) => *mode,
            n => panic!("{k}: {n:?}"),
        };
        let mask = if keep { 0o7777 } else { 0o777 };
        assert_eq!(mode(&pair.dst, "shared/tool"), 0o6755 & mask);
        assert_eq!(mode(&pair.dst, "shared"), 0o3775 & mask);
        assert_eq!(mode(&pair.dst, "plain"), 0o640);
        assert_eq!(pair.replica.manifest().digest(), {
            let mut s = pair.src.clone();
            sync_delta::Source::open(sync_delta::SourceConfig::default(), pair.now, &mut s)
                .unwrap()
                .scan(&mut s)
                .unwrap()
                .digest()
        });
        // A second round changes nothing.
        pair.events.clear();
        pair.round().unwrap();
        assert!(
            pair.events
                .iter()
                .any(|e| matches!(e, ReplicaEvent::Committed { changed: 0, .. }))
        );
        if keep {
            pair.assert_synced();
        }
    }
}

/// A store that counts reads and refuses them past a bound (a loop that
/// reads without end fails the test by its step count, not by a timer),
/// and records every path it is asked to create or change.
struct Spy {
    inner: MemStore,
    reads: u64,
    max_reads: u64,
    /// Paths created, written, cut, renamed (both names), removed or
    /// given metadata, in order.
    changed: Vec<String>,
    /// Paths created as files.
    created: Vec<String>,
}

impl Spy {
    fn new(inner: MemStore) -> Spy {
        Spy {
            inner,
            reads: 0,
            max_reads: u64::MAX,
            changed: Vec::new(),
            created: Vec::new(),
        }
    }

    fn touch(&mut self, p: &str) {
        self.changed.push(p.to_owned());
    }
}

impl Storage for Spy {
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
            self.reads <= self.max_reads,
            "{} reads: the source is looping",
            self.reads
        );
        self.inner.read_at(p, off, buf)
    }
    fn read_link(&mut self, p: &str) -> Result<Vec<u8>, sync_delta::StoreError> {
        self.inner.read_link(p)
    }
    fn create(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.created.push(p.to_owned());
        self.inner.create(p)
    }
    fn write_at(&mut self, p: &str, off: u64, d: &[u8]) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.write_at(p, off, d)
    }
    fn set_len(&mut self, p: &str, len: u64) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.set_len(p, len)
    }
    fn sync_file(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_file(p)
    }
    fn sync_dir(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_dir(p)
    }
    fn rename(&mut self, a: &str, b: &str) -> Result<(), sync_delta::StoreError> {
        self.touch(a);
        self.touch(b);
        self.inner.rename(a, b)
    }
    fn remove_file(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.remove_file(p)
    }
    fn remove_dir(&mut self, p: &str) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.remove_dir(p)
    }
    fn create_dir(&mut self, p: &str, mode: u32) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.create_dir(p, mode)
    }
    fn symlink(&mut self, t: &[u8], p: &str) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
        self.inner.symlink(t, p)
    }
    fn set_meta(&mut self, p: &str, mode: u32, mtime: i64) -> Result<(), sync_delta::StoreError> {
        self.touch(p);
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
    let mut bounded = Spy {
        max_reads: 1_000,
        ..Spy::new(store)
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

/// A listing is a source's in path order; one in any other order, with a
/// path listed twice, is put in order and the later entry for the path
/// counts (as a map of the changes would have it).
#[test]
fn a_listing_out_of_order_is_put_in_order_the_later_entry_kept() {
    for full in [true, false] {
        let mut dst = MemStore::new();
        let (mut r, now) = started(&mut dst, ReplicaConfig::default());
        let dir = Meta {
            kind: Kind::Dir,
            mode: 0o755,
            mtime_ns: 5,
            local: LocalStat::default(),
        };
        let mut want = Manifest::default();
        want.entries.insert(p("etc"), dir.clone());
        want.entries.insert(p("voice"), dir);
        want.entries.insert(p("voice/a.wav"), file(b""));
        want.entries.insert(
            p("voice/b.wav"),
            Meta {
                mode: 0o600,
                ..file(b"")
            },
        );
        let mut listed: Vec<Change> = want
            .entries
            .iter()
            .rev()
            .map(|(p, m)| Change::Upsert(p.clone(), m.clone()))
            .collect();
        listed.insert(0, Change::Upsert(p("voice/b.wav"), file(b"")));
        r.handle_message(
            now,
            Message::ManifestStart {
                taken_at_ns: 1,
                full,
            },
            &mut dst,
        )
        .unwrap();
        r.handle_message(now, Message::Entries { changes: listed }, &mut dst)
            .unwrap();
        r.handle_message(
            now,
            Message::ManifestEnd {
                entries: want.len() as u64,
                digest: want.digest(),
            },
            &mut dst,
        )
        .unwrap();
        assert_eq!(r.manifest(), want, "full: {full}");
        assert_eq!(r.generation().number, 1);
        assert_eq!(dst.stat("voice/b.wav").unwrap().mode & 0o777, 0o600);
    }
}

// ---------------------------------------------------------------------------
// The in-place patch path: a small change in a large file is staged as a
// record of its dirty ranges and written where the file lies only after
// the commit record. A hostile source attacking such a round leaves the
// file as generation N had it, byte for byte.

/// The large file the in-place rounds patch.
const BIG: &str = "voice/big.wav";
/// Its size in generation 1.
const OLD_LEN: u64 = 600_000;

/// Generation 1 holding a 600 KB `voice/big.wav` and a small file,
/// replicated through a real source; then `edit` on the source's copy.
/// Returns the pair, the old content and the new.
fn in_place_pair(edit: fn(&mut Vec<u8>)) -> (Pair, Vec<u8>, Vec<u8>) {
    let old = noise(OLD_LEN as usize, 11);
    let mut src = MemStore::new();
    src.put_file(BIG, &old, 0o640, 10);
    src.put_file("etc/pbx.conf", b"[general]\nport=5060\n", 0o644, 10);
    let mut pair = Pair::new(src, MemStore::new());
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.generation().number, 1);
    let mut new = old.clone();
    edit(&mut new);
    pair.src.put_file(BIG, &new, 0o640, 20);
    (pair, old, new)
}

/// 2,000 bytes overwritten in the middle and 50,000 appended: a patch of
/// a few dirty ranges, well within the in-place limit.
fn overwrite_and_append(d: &mut Vec<u8>) {
    d[200_000..202_000].fill(3);
    d.extend_from_slice(&noise(50_000, 13));
}

/// 50,000 bytes appended.
fn append(d: &mut Vec<u8>) {
    d.extend_from_slice(&noise(50_000, 13));
}

/// 1,000 bytes overwritten, then the file cut to 450,000 bytes.
fn overwrite_and_cut(d: &mut Vec<u8>) {
    d[100_000..101_000].fill(3);
    d.truncate(450_000);
}

/// The length of what `op` writes.
fn op_len(op: &Op) -> u64 {
    match op {
        Op::Copy { len, .. } => *len,
        Op::Literal(d) => d.len() as u64,
    }
}

/// What the replica did in a round with a hostile source.
struct Attempt {
    /// Its answer to the first message it refused, or `Ok`.
    result: Result<(), SessionError>,
    /// Every path it created or changed (see [`Spy`]).
    changed: Vec<String>,
    /// The files it created in its stage.
    staged: Vec<String>,
    /// Its counters before the round and after.
    before: ReplicaStats,
    after: ReplicaStats,
    /// Its events.
    events: Vec<ReplicaEvent>,
}

/// One round between the pair's real source and its replica, each
/// message the source sends replaced by what `alter` makes of it, given
/// the replica's fetches so far by id (the replica's messages go through
/// as they are). A replica that refuses a message ends the session: the
/// driver closes the connection, both sides see it go down and come up
/// again.
fn hostile_round(
    pair: &mut Pair,
    mut alter: impl FnMut(Message, &Wants) -> Vec<Message>,
) -> Attempt {
    pair.now += Duration::from_secs(61);
    pair.wall += Duration::from_secs(61);
    let before = pair.replica.stats();
    let mut store = Spy::new(std::mem::take(&mut pair.dst));
    pair.replica.handle_timeout(pair.now);
    let result = carry_altered(pair, &mut store, &mut alter);
    let events = std::iter::from_fn(|| pair.replica.poll_event()).collect();
    if result.is_err() {
        pair.replica
            .handle_disconnected(pair.now, &mut store)
            .unwrap();
        pair.source.handle_disconnected(pair.now);
        pair.replica.handle_connected(pair.now);
        pair.source.handle_connected(pair.now);
    }
    let after = pair.replica.stats();
    let Spy {
        inner,
        changed,
        created,
        ..
    } = store;
    pair.dst = inner;
    Attempt {
        result,
        changed,
        staged: created
            .into_iter()
            .filter(|p| p.starts_with(".sync-delta/stage/"))
            .collect(),
        before,
        after,
        events,
    }
}

/// The paths a replica asked for in a round, by fetch id.
type Wants = BTreeMap<u32, RelPath>;

/// Whether fetch `id` is of `BIG`.
fn is_big(wants: &Wants, id: u32) -> bool {
    wants.get(&id).is_some_and(|p| p.as_str() == BIG)
}

/// Carries the messages of [`hostile_round`] until neither side has any
/// left or the replica refuses one.
fn carry_altered(
    pair: &mut Pair,
    store: &mut Spy,
    alter: &mut impl FnMut(Message, &Wants) -> Vec<Message>,
) -> Result<(), SessionError> {
    let mut wants = Wants::new();
    loop {
        let mut moved = false;
        while let Some(m) = pair.replica.poll_transmit() {
            if let Message::Want { id, path, .. } = &m {
                wants.insert(*id, path.clone());
            }
            pair.source
                .handle_message(pair.now, pair.wall, m, &mut pair.src)
                .expect("the source takes the replica's messages");
            moved = true;
        }
        while let Some(m) = pair.source.poll_transmit(&mut pair.src) {
            for m in alter(m, &wants) {
                pair.replica.handle_message(pair.now, m, store)?;
            }
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

/// What every attacked in-place round shows: the fetch of `BIG` was
/// staged as a patch record (never turned into a whole copy) holding only
/// the dirty ranges received, no patch was committed, `BIG` was never
/// written, cut or replaced where it lies and holds generation 1's bytes,
/// nothing outside the state folder was created or changed but what the
/// round legitimately brings, the stage is empty again, and the tree is
/// `expect` at generation `number`, also as opened again.
fn assert_file_kept(
    pair: &mut Pair,
    a: &Attempt,
    gen1: &BTreeMap<String, Norm>,
    expect: &BTreeMap<String, Norm>,
    number: u64,
    old: &[u8],
) {
    // The in-place path: one patch record, `r<round>-p<id>`; had the
    // fetch turned into a whole copy, `r<round>-f<id>` would have been
    // created beside it.
    let records: Vec<&String> = a.staged.iter().filter(|n| n.contains("-p")).collect();
    assert_eq!(records.len(), 1, "{:?}", a.staged);
    let whole = records[0].replacen("-p", "-f", 1);
    assert!(!a.staged.contains(&whole), "{:?}", a.staged);
    // Some ranges were staged, and only what was received was written: a
    // whole copy would have written the unchanged bytes too.
    let literal = a.after.literal_bytes - a.before.literal_bytes;
    let disk = a.after.disk_bytes - a.before.disk_bytes;
    assert!(literal > 0, "no dirty range was staged");
    assert_eq!(disk, literal, "only the dirty ranges were written");
    assert!(disk < OLD_LEN / 4, "{disk} bytes written");
    assert_eq!(a.after.in_place, a.before.in_place, "a patch was committed");
    // Outside the state folder only what the round brings was touched:
    // never the live file, never anything beside the tree.
    for p in &a.changed {
        assert!(
            p.starts_with(".sync-delta/") || (p != BIG && gen1.get(p) != expect.get(p)),
            "{p} was changed: {:?}",
            a.changed
        );
    }
    assert!(stage_empty(&mut pair.dst));
    assert_eq!(pair.replica.generation().number, number);
    assert_eq!(expect.get(BIG), gen1.get(BIG));
    assert_eq!(norm(&pair.dst), *expect);
    let now = read(&mut pair.dst, BIG);
    assert_eq!(now.len(), old.len());
    assert!(now == old, "the file is not generation 1's");
    // Opening again finds nothing to roll forward.
    let mut reopened = pair.dst.clone();
    let (_, report) = Replica::open(ReplicaConfig::default(), pair.now, &mut reopened).unwrap();
    assert_eq!(report.generation.number, number);
    assert!(!report.rolled_forward);
    assert_eq!(norm(&reopened), *expect);
}

/// The source's tree as the replica should hold it after a round that
/// skipped `BIG`: all of it, `BIG` as generation 1 had it.
fn all_but_big(pair: &Pair, gen1: &BTreeMap<String, Norm>) -> BTreeMap<String, Norm> {
    let mut t = norm(&pair.src);
    t.insert(BIG.to_owned(), gen1[BIG].clone());
    t
}

/// The round after an attack: the honest source brings `new`, patched in
/// place (`in_place` 1) or fetched whole (0: a delta that did not verify
/// is fetched whole the next round), in a new generation.
fn honest_round(pair: &mut Pair, new: &[u8], in_place: u64) {
    let before = pair.replica.stats();
    let number = pair.replica.generation().number;
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.generation().number, number + 1);
    let got = read(&mut pair.dst, BIG);
    assert_eq!(got.len(), new.len());
    assert!(got == new, "the honest round did not bring the new content");
    let after = pair.replica.stats();
    assert_eq!(after.in_place - before.in_place, in_place);
    assert_eq!(after.skipped, before.skipped);
    assert!(stage_empty(&mut pair.dst));
}

/// A small change in a large file announced with the hash of other
/// content (the listing's digest made to agree with the lie), the data
/// the honest change: the fetch is staged as an in-place patch, fails the
/// whole-file check at its end and is skipped (counted, its event given),
/// the file left as generation 1 had it and never written where it lies;
/// the next honest round fetches it whole and brings the new content.
#[test]
fn an_in_place_patch_announced_with_another_hash_is_skipped() {
    let (mut pair, old, new) = in_place_pair(|d| d[200_000..202_000].fill(3));
    let gen1 = norm(&pair.dst);
    // An honest change beside it: the round commits without the file.
    pair.src
        .put_file("etc/pbx.conf", b"[general]\nport=5062\n", 0o644, 21);
    let mut other = new.clone();
    other[201_000] ^= 0xff;
    let lie = Kind::File {
        size: new.len() as u64,
        hash: *blake3::hash(&other).as_bytes(),
    };
    // The manifest the altered listing makes, for its digest.
    let mut announced = pair.replica.manifest();
    let mut lied = false;
    let a = hostile_round(&mut pair, |m, _| match m {
        Message::ManifestStart { full, .. } => {
            if full {
                announced = Manifest::default();
            }
            vec![m]
        }
        Message::Entries { mut changes } => {
            for c in &mut changes {
                match c {
                    Change::Upsert(path, meta) => {
                        if path.as_str() == BIG {
                            meta.kind = lie.clone();
                            lied = true;
                        }
                        announced.entries.insert(path.clone(), meta.clone());
                    }
                    Change::Gone(path) => {
                        announced.entries.remove(path);
                    }
                }
            }
            vec![Message::Entries { changes }]
        }
        Message::ManifestEnd { entries, .. } => vec![Message::ManifestEnd {
            entries,
            digest: announced.digest(),
        }],
        m => vec![m],
    });
    assert!(lied, "the listing did not name the file");
    assert_eq!(a.result, Ok(()));
    assert!(
        a.events.contains(&ReplicaEvent::FileSkipped(p(BIG))),
        "{:?}",
        a.events
    );
    assert_eq!(a.after.skipped - a.before.skipped, 1);
    assert_eq!(a.after.protocol_errors, a.before.protocol_errors);
    let expect = all_but_big(&pair, &gen1);
    assert_ne!(expect, gen1);
    assert_file_kept(&mut pair, &a, &gen1, &expect, 2, &old);
    honest_round(&mut pair, &new, 0);
}

/// A copy reaching past the end of the old file, sent in an in-place
/// round right after its first dirty range was staged: from another
/// offset (a dirty copy), and from the offset it lands at (an unchanged
/// range running on into the appended part). Both lie within the new
/// size; both are refused with `CopyOutOfRange` naming the old length, the
/// staged record is dropped and the file is generation 1's; the next
/// honest round patches it in place.
#[test]
fn a_copy_past_the_old_file_in_an_in_place_round_is_refused() {
    for same_offset in [false, true] {
        let (mut pair, old, new) = in_place_pair(overwrite_and_append);
        let gen1 = norm(&pair.dst);
        let mut pos = 0u64;
        let mut bad = None;
        let a = hostile_round(&mut pair, |m, wants| match m {
            Message::Data { id, ops } if bad.is_none() && is_big(wants, id) => {
                let mut sent = Vec::new();
                for op in ops {
                    let literal = matches!(op, Op::Literal(_));
                    pos += op_len(&op);
                    sent.push(op);
                    if literal {
                        let op = if same_offset {
                            Op::Copy {
                                offset: pos,
                                len: OLD_LEN - pos + 1_000,
                            }
                        } else {
                            Op::Copy {
                                offset: OLD_LEN - 1_000,
                                len: 4_000,
                            }
                        };
                        bad = Some(op.clone());
                        sent.push(op);
                        break;
                    }
                }
                vec![Message::Data { id, ops: sent }]
            }
            m => vec![m],
        });
        let Some(Op::Copy { offset, len }) = bad else {
            panic!("no literal was sent");
        };
        assert!(offset + len <= new.len() as u64, "within the new size");
        assert_eq!(
            a.result,
            Err(SessionError::CopyOutOfRange {
                offset,
                len,
                base_len: OLD_LEN
            }),
            "same offset: {same_offset}"
        );
        assert_eq!(a.after.protocol_errors - a.before.protocol_errors, 1);
        assert_file_kept(&mut pair, &a, &gen1, &gen1, 1, &old);
        honest_round(&mut pair, &new, 1);
    }
}

/// More data than the announced size of a file being patched in place,
/// after the honest patch was staged whole: a literal, and a copy from
/// the old file (in range there). Refused with `BeyondSize` before any of
/// it is staged; nothing of the patch reaches the file, and the next
/// honest round patches it in place.
#[test]
fn data_beyond_the_announced_size_of_a_patched_file_is_refused() {
    for extra in [
        Op::Literal(vec![0xee; 4_096]),
        Op::Copy { offset: 0, len: 1 },
    ] {
        let (mut pair, old, new) = in_place_pair(overwrite_and_append);
        let gen1 = norm(&pair.dst);
        let mut sent = 0u64;
        let a = hostile_round(&mut pair, |m, wants| match m {
            Message::Data { id, ref ops } if is_big(wants, id) => {
                sent += ops.iter().map(op_len).sum::<u64>();
                vec![m]
            }
            Message::DataEnd { id, status } if is_big(wants, id) => vec![
                Message::Data {
                    id,
                    ops: vec![extra.clone()],
                },
                Message::DataEnd { id, status },
            ],
            m => vec![m],
        });
        assert_eq!(sent, new.len() as u64, "the honest patch was sent whole");
        assert_eq!(
            a.result,
            Err(SessionError::BeyondSize {
                size: new.len() as u64
            }),
            "{extra:?}"
        );
        assert_eq!(a.after.protocol_errors - a.before.protocol_errors, 1);
        assert_file_kept(&mut pair, &a, &gen1, &gen1, 1, &old);
        honest_round(&mut pair, &new, 1);
    }
}

/// A patch that changes the file's length, one byte of its first literal
/// flipped (the announced size and hash the honest ones): an append whose
/// tail is corrupted, and a cut whose overwritten range is. Each is
/// staged in place and skipped at its end while an honest change beside
/// it commits; the file keeps generation 1's length and bytes (neither
/// extended nor cut); the next honest round fetches it whole and brings
/// the new content.
#[test]
fn a_patch_that_changes_the_length_with_a_wrong_hash_is_skipped() {
    for edit in [append as fn(&mut Vec<u8>), overwrite_and_cut] {
        let (mut pair, old, new) = in_place_pair(edit);
        assert_ne!(new.len(), old.len());
        let gen1 = norm(&pair.dst);
        // An honest change beside it: the round commits without the file.
        pair.src
            .put_file("etc/pbx.conf", b"[general]\nport=5062\n", 0o644, 21);
        let mut flipped = false;
        let a = hostile_round(&mut pair, |m, wants| match m {
            Message::Data { id, mut ops } if !flipped && is_big(wants, id) => {
                if let Some(Op::Literal(d)) = ops.iter_mut().find(|op| matches!(op, Op::Literal(_)))
                {
                    d[0] ^= 0xff;
                    flipped = true;
                }
                vec![Message::Data { id, ops }]
            }
            m => vec![m],
        });
        assert!(flipped, "no literal was sent");
        assert_eq!(a.result, Ok(()));
        assert!(
            a.events.contains(&ReplicaEvent::FileSkipped(p(BIG))),
            "{:?}",
            a.events
        );
        assert_eq!(a.after.skipped - a.before.skipped, 1);
        assert_eq!(a.after.protocol_errors, a.before.protocol_errors);
        let expect = all_but_big(&pair, &gen1);
        assert_file_kept(&mut pair, &a, &gen1, &expect, 2, &old);
        honest_round(&mut pair, &new, 0);
    }
}
