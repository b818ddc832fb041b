//! `FsStore::new` spawns no thread: a whole round (walk, hash, staged
//! writes, the fsyncs of files and directories) between two single-threaded
//! stores runs while a sampler thread lists `/proc/self/task` as fast as it
//! can, and the sampler never sees a task besides the test's own. The same
//! round between stores that opt in to threads is seen (a control: the
//! sampler can see the store's scoped threads).
//!
//! One test in its own binary, so that no other test's threads are counted.
//! Sampling can miss a thread that lives shorter than one listing; the
//! control shows the store's threads do not.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use sync_delta::{FsStore, Replica, ReplicaConfig, Source, SourceConfig, Storage};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("sync-delta-threads-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The ids of this process's tasks (threads).
fn tasks() -> BTreeSet<u64> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Runs `work` while a sampler lists the tasks; returns the tasks seen
/// that were not there before (the sampler itself excluded).
fn spawned_during(work: impl FnOnce()) -> BTreeSet<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = tasks();
            ready_tx.send(seen.clone()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                seen.extend(tasks());
            }
            seen.extend(tasks());
            seen
        })
    };
    // The sampler's own task is in its first listing.
    let with_sampler = ready_rx.recv().unwrap();
    work();
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    seen.difference(&with_sampler).copied().collect()
}

/// A tree of 8 directories of 40 files: work for every parallel path.
fn fill(root: &std::path::Path) {
    for d in 0..8 {
        let dir = root.join(format!("voice/{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40u8 {
            fs::write(dir.join(format!("msg{f}.wav")), vec![f ^ d as u8; 4096]).unwrap();
        }
    }
}

/// One full round from `src` to an empty `dst`; the number of files the
/// replica holds after it.
fn round(src: &mut FsStore, dst: &mut FsStore) -> usize {
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut source = Source::open(SourceConfig::default(), now, src).unwrap();
    let (mut replica, _) = Replica::open(ReplicaConfig::default(), now, dst).unwrap();
    replica.handle_connected(now);
    loop {
        let mut moved = false;
        while let Some(m) = replica.poll_transmit() {
            source.handle_message(now, wall, m, src).unwrap();
            moved = true;
        }
        while let Some(m) = source.poll_transmit(src) {
            replica.handle_message(now, m, dst).unwrap();
            moved = true;
        }
        while replica.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
    let mut files = 0;
    for d in 0..8 {
        files += fs::read_dir(dst.root().join(format!("voice/{d}"))).map_or(0, |r| r.count());
    }
    files
}

#[test]
fn single_threaded_store_spawns_no_thread() {
    let src = TempDir::new("src");
    fill(&src.0);

    // The default store: a whole round, and nothing spawned.
    let dst = TempDir::new("dst");
    let mut files = 0;
    let spawned = spawned_during(|| {
        let mut s = FsStore::new(&src.0).unwrap();
        let mut d = FsStore::new(&dst.0).unwrap();
        files = round(&mut s, &mut d);
    });
    assert_eq!(files, 320, "the round replicated the tree");
    assert_eq!(spawned, BTreeSet::new(), "FsStore::new spawned threads");

    // The control: stores that opt in to threads are seen doing so. A busy
    // machine may keep the sampler off the CPU for a whole round, so it
    // gets a few rounds to see one.
    let mut seen = BTreeSet::new();
    for attempt in 0..20 {
        let dst = TempDir::new(&format!("dst-parallel-{attempt}"));
        seen = spawned_during(|| {
            let mut s = FsStore::new(&src.0)
                .unwrap()
                .with_threads(4)
                .with_sync_threads(4);
            let mut d = FsStore::new(&dst.0)
                .unwrap()
                .with_threads(4)
                .with_sync_threads(4);
            files = round(&mut s, &mut d);
        });
        assert_eq!(files, 320);
        if !seen.is_empty() {
            break;
        }
    }
    assert!(
        !seen.is_empty(),
        "the sampler never saw the parallel store's threads"
    );

    // Scoped threads: all gone once the calls returned.
    let after = tasks();
    assert!(seen.iter().all(|t| !after.contains(t)));
}

/// A parallel walk lists exactly what a single-threaded one lists (its
/// parts gathered into one, nothing twice, nothing lost).
#[test]
fn a_parallel_walk_lists_what_a_single_walk_lists() {
    let src = TempDir::new("walk");
    fill(&src.0);
    fs::write(src.0.join("top.conf"), b"at the root").unwrap();
    let exclude = sync_delta::Exclude::default();
    let sorted = |mut w: sync_delta::store::Walk| {
        w.entries.sort_by(|a, b| a.path.cmp(&b.path));
        w
    };
    let one = sorted(FsStore::new(&src.0).unwrap().walk(&exclude).unwrap());
    let four = sorted(
        FsStore::new(&src.0)
            .unwrap()
            .with_threads(4)
            .walk(&exclude)
            .unwrap(),
    );
    assert!(one.entries.len() > 320, "{} entries", one.entries.len());
    assert_eq!(one, four);
}
