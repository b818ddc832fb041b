//! Role changes: takeover settles the replica; a returning old Master
//! quarantines what its peer never confirmed, then becomes a replica.

mod common;

use common::{Pair, noise, read};
use std::time::Instant;
use sync_delta::mem::MemStore;
use sync_delta::{Replica, ReplicaConfig, SourceConfig};

#[test]
fn returning_master_quarantines_unconfirmed_changes() {
    let mut a = MemStore::new();
    a.put_file("etc/pbx.conf", b"v1", 0o644, 1);
    a.put_file("voice/100/msg1.wav", &noise(2_000, 1), 0o640, 1);
    let mut pair = Pair::new(a, MemStore::new());
    pair.round().unwrap();
    pair.assert_synced();
    let (mut a, mut b) = (pair.src, pair.dst);

    // A (Master) changes things that never reach B, then dies.
    a.put_file("etc/pbx.conf", b"v2 unconfirmed", 0o644, 50);
    a.put_file("voice/100/msg2.wav", b"new voicemail", 0o640, 50);
    a.put_dir("voice/300", 0o755);
    a.put_file("voice/300/greeting.wav", b"hello", 0o640, 50);

    // B takes over: settle, then serve as the source.
    let (mut rb, _) = Replica::open(ReplicaConfig::default(), Instant::now(), &mut b).unwrap();
    let g = rb.settle(&mut b).unwrap();
    assert_eq!(g.number, 1);
    b.put_file("etc/extra.conf", b"made on B", 0o644, 60);

    // A returns as the Backup.
    let (ra, report) = Replica::open(ReplicaConfig::default(), Instant::now(), &mut a).unwrap();
    let (folder, moved) = report.quarantined.clone().expect("quarantined");
    assert_eq!(moved, 3, "{report:?}");
    assert_eq!(
        ra.status(std::time::SystemTime::UNIX_EPOCH).quarantine,
        vec![folder.clone()]
    );
    let q = format!(".sync-delta/quarantine/{folder}");
    assert_eq!(
        read(&mut a, &format!("{q}/etc/pbx.conf")),
        b"v2 unconfirmed"
    );
    assert_eq!(
        read(&mut a, &format!("{q}/voice/100/msg2.wav")),
        b"new voicemail"
    );
    assert_eq!(
        read(&mut a, &format!("{q}/voice/300/greeting.wav")),
        b"hello"
    );
    drop(ra);

    // B → A: A ends up exactly B's tree, the quarantine kept aside.
    let mut pair = Pair::with_config(b, a, SourceConfig::default(), ReplicaConfig::default());
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(read(&mut pair.dst, "etc/pbx.conf"), b"v1");
    assert_eq!(read(&mut pair.dst, "etc/extra.conf"), b"made on B");
    assert_eq!(pair.replica.status(pair.wall).quarantine, vec![folder]);

    // A second role change with nothing new quarantines nothing.
    let (a, b) = (pair.dst, pair.src);
    let mut a2 = a.clone();
    let _ = sync_delta::Source::open(SourceConfig::default(), Instant::now(), &mut a2).unwrap();
    let (_, report) = Replica::open(ReplicaConfig::default(), Instant::now(), &mut a2).unwrap();
    assert_eq!(report.quarantined, None);
    drop(b);
}

#[test]
fn generation_age_is_what_takeover_loses() {
    let mut a = MemStore::new();
    a.put_file("x", b"1", 0o644, 1);
    let mut pair = Pair::new(a, MemStore::new());
    pair.round().unwrap();
    let taken = pair.wall;
    let later = taken + std::time::Duration::from_secs(45);
    let st = pair.replica.status(later);
    assert_eq!(st.generation.taken_at, Some(taken));
    assert_eq!(st.age, Some(std::time::Duration::from_secs(45)));
    // Persisted: a reopened replica reports the same.
    let mut dst = pair.dst;
    let (r, report) = Replica::open(ReplicaConfig::default(), Instant::now(), &mut dst).unwrap();
    assert_eq!(report.generation.taken_at, Some(taken));
    assert_eq!(
        r.status(later).age,
        Some(std::time::Duration::from_secs(45))
    );
}

/// The former replica's symlinks were made by its own replica session, so
/// their mtimes differ from the ones its manifest recorded from the old
/// source: after a swap, the two must still agree on the digest.
#[test]
fn swapped_roles_agree_on_symlinks() {
    use sync_delta::Storage;

    let mut a = MemStore::new();
    a.put_file("voice/100/msg1.wav", b"one", 0o640, 1);
    a.put_symlink("current", b"voice/100");
    a.put_symlink("voice/latest", b"100/msg1.wav");
    let mut pair = Pair::new(a, MemStore::new());
    pair.round().unwrap();
    pair.assert_synced();
    let (mut a, mut b) = (pair.src, pair.dst);
    assert_ne!(
        a.stat("current").unwrap().mtime_ns,
        b.stat("current").unwrap().mtime_ns,
        "the two links have their own mtimes"
    );

    // B takes over and takes a new voicemail; A returns as the replica.
    b.put_file("voice/100/msg2.wav", b"two", 0o640, 2);
    let mut pair = Pair::new(b, a);
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.generation().number, 2);
    assert_eq!(pair.source.confirmed_generation(), 2);

    // And back again, with nothing new: a plain confirmation.
    let (b, a) = (pair.src, pair.dst);
    let mut pair = Pair::new(a, b);
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.generation().number, 2);
    assert_eq!(pair.replica.stats().failed, 0);
}

/// The source reports each confirmed generation with the time it took the
/// snapshot (what the replica holds), not the time of the confirmation.
#[test]
fn source_reports_when_it_took_the_confirmed_generation() {
    use std::time::Duration;
    use sync_delta::{Source, SourceEvent};

    let confirmations = |s: &mut Source| {
        let mut v = Vec::new();
        while let Some(e) = s.poll_event() {
            if let SourceEvent::Confirmed {
                generation,
                taken_at,
            } = e
            {
                v.push((generation, taken_at));
            }
        }
        v
    };
    let mut a = MemStore::new();
    a.put_file("x", b"1", 0o644, 1);
    let mut pair = Pair::new(a, MemStore::new());
    assert_eq!(pair.source.confirmed().taken_at, None);
    pair.round().unwrap();
    let taken1 = pair.wall;
    // The confirmation arrives later than the snapshot was taken.
    assert_eq!(confirmations(&mut pair.source), vec![(1, taken1)]);
    assert_eq!(pair.source.confirmed().number, 1);
    assert_eq!(pair.source.confirmed().taken_at, Some(taken1));
    assert_eq!(pair.replica.generation(), pair.source.confirmed());

    // A round that changes nothing confirms generation 1 as of its own,
    // later snapshot: the data is that fresh.
    pair.round().unwrap();
    let taken2 = pair.wall;
    assert_eq!(taken2, taken1 + Duration::from_secs(61));
    assert_eq!(confirmations(&mut pair.source), vec![(1, taken2)]);
    assert_eq!(pair.replica.generation(), pair.source.confirmed());

    // A change: generation 2, taken at its round.
    pair.src.put_file("x", b"2", 0o644, 2);
    pair.round().unwrap();
    let taken3 = pair.wall;
    assert_eq!(confirmations(&mut pair.source), vec![(2, taken3)]);

    // Reopened, the source knows generation 2's time from its state.
    let reopened = Source::open(SourceConfig::default(), Instant::now(), &mut pair.src).unwrap();
    assert_eq!(reopened.confirmed().number, 2);
    assert_eq!(reopened.confirmed().taken_at, Some(taken3));
}
