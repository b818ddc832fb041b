//! Change-driven rounds: a source given dirty-path hints builds its rounds
//! from them without walking the tree, tells the replica at once, walks
//! the tree after an overflow, a restart and every full-scan period, and
//! reports a data-loss window that never forgets a change.

mod common;

use common::{Pair, noise};
use std::collections::BTreeSet;
use std::time::Duration;
use sync_delta::mem::MemStore;
use sync_delta::{Message, RelPath, ReplicaConfig, Source, SourceConfig};

fn set(paths: &[&str]) -> BTreeSet<RelPath> {
    paths.iter().map(|p| RelPath::new(p).unwrap()).collect()
}

/// What a full scan of `store` gives, from a source that never saw it.
fn full(store: &mut MemStore) -> sync_delta::Manifest {
    let t = std::time::Instant::now();
    let mut s = Source::open(SourceConfig::default(), t, store).unwrap();
    s.scan(store).unwrap()
}

fn same(a: &sync_delta::Manifest, b: &sync_delta::Manifest) {
    let strip = |m: &sync_delta::Manifest| -> Vec<(String, sync_delta::Kind, u32, i64)> {
        m.entries
            .iter()
            .map(|(p, e)| {
                (
                    p.as_str().to_owned(),
                    e.kind.clone(),
                    e.mode,
                    e.replicated_mtime_ns(),
                )
            })
            .collect()
    };
    assert_eq!(strip(a), strip(b));
}

fn tree() -> MemStore {
    let mut s = MemStore::new();
    s.put_file("etc/pbx.conf", b"config", 0o644, 1);
    s.put_file("etc/users/100.conf", b"alice", 0o644, 1);
    s.put_file("voicemail/100/msg0001.wav", &noise(5000, 1), 0o640, 1);
    s.put_file("voicemail/100/msg0002.wav", &noise(3000, 2), 0o640, 1);
    s.put_dir("voicemail/200", 0o750);
    s.put_symlink("etc/current", b"pbx.conf");
    s
}

/// Every kind of change, each hinted as the kernel names it: the hinted
/// scan gives exactly what a full scan gives.
#[test]
fn a_hinted_scan_gives_what_a_full_scan_gives() {
    type Change = (fn(&mut MemStore), &'static [&'static str]);
    let cases: Vec<Change> = vec![
        // a new file
        (
            |s| s.put_file("etc/new.conf", b"n", 0o600, 7),
            &["etc/new.conf"],
        ),
        // a modified file (new size and mtime)
        (
            |s| s.put_file("etc/pbx.conf", b"config v2", 0o644, 9),
            &["etc/pbx.conf"],
        ),
        // a deleted file
        (
            |s| s.remove_tree("voicemail/100/msg0001.wav"),
            &["voicemail/100/msg0001.wav"],
        ),
        // a deleted directory, hinted by its own path only
        (|s| s.remove_tree("voicemail/100"), &["voicemail/100"]),
        // a renamed file: both paths hinted
        (
            |s| s.move_tree("voicemail/100/msg0001.wav", "voicemail/200/msg0001.wav"),
            &["voicemail/100/msg0001.wav", "voicemail/200/msg0001.wav"],
        ),
        // a renamed directory
        (
            |s| s.move_tree("voicemail/100", "archive"),
            &["voicemail/100", "archive"],
        ),
        // a directory created with many files, hinted by the directory
        // alone (the watch on it came after the files)
        (
            |s| {
                for i in 0..50 {
                    s.put_file(
                        &format!("voicemail/300/sub/m{i}.wav"),
                        &[i as u8; 10],
                        0o640,
                        3,
                    );
                }
            },
            &["voicemail/300"],
        ),
        // a directory replaced by a file, hinted below it
        (
            |s| {
                s.remove_tree("etc/users");
                s.put_file("etc/users", b"flat", 0o644, 4);
            },
            &["etc/users/100.conf"],
        ),
        // a mode change and a symlink retargeted
        (
            |s| {
                s.chmod("etc/pbx.conf", 0o600);
                s.remove_tree("etc/current");
                s.put_symlink("etc/current", b"new.conf");
            },
            &["etc/pbx.conf", "etc/current"],
        ),
        // a new top-level file
        (|s| s.put_file("top.txt", b"t", 0o644, 5), &["top.txt"]),
    ];
    for (i, (change, hinted)) in cases.into_iter().enumerate() {
        let mut p = watching_pair();
        let rounds = p.source.stats().hinted_rounds;
        // Some cases delete most of this small tree: past the guard.
        p.replica.confirm_deletions();
        change(&mut p.src);
        p.source.handle_hints(p.now, p.wall, hinted.iter().copied());
        after(&mut p, 150);
        assert_eq!(p.source.stats().hinted_rounds, rounds + 1, "case {i}");
        let (d, s) = (common::norm(&p.dst), common::norm(&p.src));
        let differ: Vec<&String> = d
            .keys()
            .chain(s.keys())
            .filter(|k| d.get(*k) != s.get(*k))
            .collect();
        assert!(differ.is_empty(), "case {i}: {differ:?}");
        let walked = full(&mut p.src);
        same(&p.replica.manifest(), &walked);
    }
}

fn watching_pair() -> Pair {
    let mut p = Pair::with_config(
        tree(),
        MemStore::new(),
        SourceConfig::default(),
        ReplicaConfig::default(),
    );
    p.source.start_watching(p.now);
    p.source.handle_connected(p.now);
    // The first round after opening walks the tree.
    p.pump(|_, _| {}).unwrap();
    p.assert_synced();
    p
}

/// Moves time on by `ms`, fires the source's timer, carries messages.
fn after(p: &mut Pair, ms: u64) {
    p.now += Duration::from_millis(ms);
    p.wall += Duration::from_millis(ms);
    if p.source.poll_timeout().is_some_and(|t| t <= p.now) {
        p.source.handle_timeout(p.now);
    }
    p.replica.handle_timeout(p.now);
    p.pump(|_, _| {}).unwrap();
}

#[test]
fn a_hinted_change_reaches_the_replica_after_the_batch_not_the_interval() {
    let mut p = watching_pair();
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
    let full_before = p.source.stats().hinted_rounds;
    p.src
        .put_file("voicemail/100/msg0003.wav", &noise(4000, 3), 0o640, 11);
    p.source
        .handle_hints(p.now, p.wall, ["voicemail/100/msg0003.wav"]);
    // Within the batch, nothing moves yet; the window counts from the hint.
    after(&mut p, 50);
    assert!(p.source.window(p.wall) >= Some(Duration::from_millis(50)));
    assert_ne!(common::norm(&p.dst), common::norm(&p.src));
    // A second write in the same batch joins the same round.
    p.src.put_file("etc/pbx.conf", b"config v3", 0o644, 12);
    p.source.handle_hints(p.now, p.wall, ["etc/pbx.conf"]);
    after(&mut p, 60);
    p.assert_synced();
    assert_eq!(p.source.stats().hinted_rounds, full_before + 1);
    assert_eq!(p.replica.stats().nudged, 1);
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
}

#[test]
fn an_overflow_walks_the_tree_and_the_window_counts_from_the_last_full_scan() {
    let mut p = watching_pair();
    let clean = p.wall;
    after(&mut p, 1000);
    // A change whose hint was lost, then the overflow.
    p.src.put_file("etc/lost.conf", b"lost", 0o644, 13);
    p.source.handle_overflow(p.now, p.wall);
    let w = p.source.window(p.wall).unwrap();
    assert!(w >= p.wall.duration_since(clean).unwrap(), "{w:?}");
    let hinted = p.source.stats().hinted_rounds;
    after(&mut p, 150);
    p.assert_synced();
    assert_eq!(
        p.source.stats().hinted_rounds,
        hinted,
        "a full scan, not a hinted one"
    );
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
}

/// Hints that will not be complete again (a directory the driver could
/// not watch): the window no longer reads clear, it counts from the last
/// full scan the replica confirmed, and every round walks the tree.
#[test]
fn hints_lost_for_good_count_the_window_from_the_last_confirmed_scan() {
    let mut p = watching_pair();
    let confirmed = p.wall;
    after(&mut p, 1000);
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
    // A hinted change still in its batch, then the watch fails; a change
    // made after that has no hint at all.
    p.src.put_file("etc/hinted.conf", b"h", 0o644, 16);
    p.source.handle_hints(p.now, p.wall, ["etc/hinted.conf"]);
    p.source.stop_watching(p.now);
    p.src
        .put_file("voicemail/200/unwatched.wav", b"u", 0o640, 17);
    let w = p.source.window(p.wall).unwrap();
    assert!(w >= p.wall.duration_since(confirmed).unwrap(), "{w:?}");
    // No timers of its own: the replica's rounds carry both changes.
    assert_eq!(p.source.poll_timeout(), None);
    let hinted = p.source.stats().hinted_rounds;
    p.replica.sync_now(p.now);
    p.pump(|_, _| {}).unwrap();
    p.assert_synced();
    assert_eq!(p.source.stats().hinted_rounds, hinted, "a walk of the tree");
    // The window now counts from that round's snapshot, not from zero.
    let round = p.wall;
    after(&mut p, 2000);
    let w = p.source.window(p.wall).unwrap();
    assert!(w >= p.wall.duration_since(round).unwrap(), "{w:?}");
}

#[test]
fn a_restarted_source_walks_the_tree_and_is_blind_until_then() {
    let mut p = watching_pair();
    after(&mut p, 1000);
    // Changed while the node was down: no hint.
    p.src.put_file("etc/while-down.conf", b"d", 0o644, 14);
    let t = p.now;
    p.source = Source::open(SourceConfig::default(), t, &mut p.src).unwrap();
    p.source.start_watching(t);
    let w = p.source.window(p.wall).unwrap();
    assert!(w >= Duration::from_secs(1), "{w:?}");
    p.source.handle_connected(t);
    p.pump(|_, _| {}).unwrap();
    p.assert_synced();
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
}

#[test]
fn a_full_scan_is_due_every_period_and_the_replica_is_told() {
    let mut p = watching_pair();
    // An unhinted change (a hint the kernel never gave): found by the
    // next full scan, a period after the last.
    p.src.put_file("etc/unhinted.conf", b"u", 0o644, 15);
    after(&mut p, 30_000);
    assert_ne!(common::norm(&p.dst), common::norm(&p.src));
    let due = p.source.poll_timeout().unwrap();
    assert!(due <= p.now + Duration::from_secs(31));
    p.now = due;
    p.source.handle_timeout(p.now);
    let told = p.source.poll_transmit(&mut p.src);
    assert_eq!(told, Some(Message::Changed));
    p.replica
        .handle_message(p.now, Message::Changed, &mut p.dst)
        .unwrap();
    p.pump(|_, _| {}).unwrap();
    p.assert_synced();
}

#[test]
fn without_hints_the_window_is_the_generation_age() {
    let mut p = Pair::new(tree(), MemStore::new());
    assert_eq!(p.source.window(p.wall), None, "nothing confirmed yet");
    p.round().unwrap();
    p.assert_synced();
    let taken = p.wall;
    p.wall += Duration::from_secs(5);
    assert_eq!(
        p.source.window(p.wall),
        Some(p.wall.duration_since(taken).unwrap())
    );
    assert_eq!(p.source.poll_timeout(), None);
}

#[test]
fn a_hinted_mass_deletion_is_held_back_by_the_guard() {
    let mut p = watching_pair();
    p.src.remove_tree("voicemail/100");
    p.source.handle_hints(p.now, p.wall, ["voicemail/100"]);
    after(&mut p, 150);
    assert_eq!(p.replica.stats().refused, 1);
    assert!(p.dst.view().contains_key("voicemail/100/msg0001.wav"));
    // Refused, not confirmed: the change still counts in the window.
    assert!(p.source.window(p.wall) > Some(Duration::ZERO));
}

#[test]
fn scan_paths_reads_only_what_was_hinted() {
    let mut p = watching_pair();
    // Two changes, one hinted: the unhinted one waits for a full scan.
    p.src
        .put_file("voicemail/200/new.wav", b"hinted", 0o640, 20);
    p.src.put_file("etc/pbx.conf", b"not hinted", 0o644, 21);
    let m = p
        .source
        .scan_paths(&mut p.src, &set(&["voicemail/200/new.wav"]))
        .unwrap();
    assert!(m.entries.contains_key("voicemail/200/new.wav"));
    let conf = &m.entries[&RelPath::new("etc/pbx.conf").unwrap()];
    assert_eq!(conf.size(), 6, "the last scan's entry, not the tree's");
}

/// A store whose file `path` changes again while it is first read (a
/// write racing the hash).
struct Racing {
    inner: MemStore,
    path: &'static str,
    armed: bool,
}

impl sync_delta::Storage for Racing {
    fn walk(
        &mut self,
        exclude: &sync_delta::Exclude,
    ) -> Result<sync_delta::store::Walk, sync_delta::StoreError> {
        self.inner.walk(exclude)
    }
    fn stat(&mut self, path: &str) -> Result<sync_delta::store::Stat, sync_delta::StoreError> {
        self.inner.stat(path)
    }
    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, sync_delta::StoreError> {
        if self.armed && path == self.path {
            self.armed = false;
            self.inner.put_file(path, b"changed again", 0o644, 99);
        }
        self.inner.read_at(path, offset, buf)
    }
    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, sync_delta::StoreError> {
        self.inner.read_link(path)
    }
    fn create(&mut self, path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.create(path)
    }
    fn write_at(
        &mut self,
        path: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), sync_delta::StoreError> {
        self.inner.write_at(path, offset, data)
    }
    fn set_len(&mut self, path: &str, len: u64) -> Result<(), sync_delta::StoreError> {
        self.inner.set_len(path, len)
    }
    fn sync_file(&mut self, path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_file(path)
    }
    fn sync_dir(&mut self, path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.sync_dir(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.rename(from, to)
    }
    fn remove_file(&mut self, path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&mut self, path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.remove_dir(path)
    }
    fn create_dir(&mut self, path: &str, mode: u32) -> Result<(), sync_delta::StoreError> {
        self.inner.create_dir(path, mode)
    }
    fn symlink(&mut self, target: &[u8], path: &str) -> Result<(), sync_delta::StoreError> {
        self.inner.symlink(target, path)
    }
    fn set_meta(
        &mut self,
        path: &str,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<(), sync_delta::StoreError> {
        self.inner.set_meta(path, mode, mtime_ns)
    }
    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, sync_delta::StoreError> {
        self.inner.list_dir(path)
    }
}

/// A file that changes while a hinted round hashes it keeps its confirmed
/// entry, stays dirty and goes in the next round, which starts at once;
/// the round that missed it is stamped with its first hint, so its age
/// never hides the change.
#[test]
fn a_file_changing_while_hashed_stays_dirty_and_dates_its_round_back() {
    let mut p = watching_pair();
    p.src.put_file("etc/pbx.conf", b"config v2", 0o644, 30);
    let hinted_at = p.wall;
    p.source.handle_hints(p.now, p.wall, ["etc/pbx.conf"]);
    p.now += Duration::from_millis(150);
    p.wall += Duration::from_millis(150);
    p.replica.sync_now(p.now);
    let request = p.replica.poll_transmit().unwrap();
    let mut racing = Racing {
        inner: std::mem::replace(&mut p.src, MemStore::new()),
        path: "etc/pbx.conf",
        armed: true,
    };
    p.source
        .handle_message(p.now, p.wall, request, &mut racing)
        .unwrap();
    p.src = racing.inner;
    assert!(p.source.window(p.wall) >= Some(Duration::from_millis(150)));
    let mut taken = Vec::new();
    p.pump_watching(|_, _| {}, |r| taken.push(r.generation().taken_at))
        .unwrap();
    assert!(taken.contains(&Some(hinted_at)), "{taken:?}");
    p.assert_synced();
    assert_eq!(common::read(&mut p.dst, "etc/pbx.conf"), b"changed again");
    assert_eq!(p.source.window(p.wall), Some(Duration::ZERO));
}

/// A round the mass-deletion guard refused waits for the operator's
/// confirmation or the next interval. The source keeps being written to
/// and tells of each change, and a refused round is abandoned with its
/// hints still pending: were each told change to start a round, the same
/// refusal would come back once per round trip, without end.
#[test]
fn a_refused_round_is_not_tried_again_at_each_change() {
    let mut p = watching_pair();
    // Most of the tree's content goes: refused.
    p.src.remove_tree("voicemail/100");
    p.source.handle_hints(p.now, p.wall, ["voicemail/100"]);
    let mut handed = 0u32;
    let mut bounded_after = |p: &mut Pair, ms: u64| {
        p.now += Duration::from_millis(ms);
        p.wall += Duration::from_millis(ms);
        if p.source.poll_timeout().is_some_and(|t| t <= p.now) {
            p.source.handle_timeout(p.now);
        }
        p.replica.handle_timeout(p.now);
        p.pump_watching(
            |_, _| {},
            |_| {
                handed += 1;
                assert!(handed < 10_000, "the refused round came back without end");
            },
        )
        .unwrap();
    };
    bounded_after(&mut p, 150);
    assert_eq!(p.replica.stats().refused, 1);
    // The Master goes on writing; each change is told.
    for k in 0..5u8 {
        p.src
            .put_file("etc/pbx.conf", &[b'v', k], 0o644, 20 + i64::from(k));
        p.source.handle_hints(p.now, p.wall, ["etc/pbx.conf"]);
        bounded_after(&mut p, 150);
    }
    assert_eq!(p.replica.stats().refused, 1, "no round before the interval");
    assert!(p.replica.stats().nudged >= 5);
    assert_ne!(common::norm(&p.dst), common::norm(&p.src));
    // The operator confirms: the next round goes through.
    p.replica.confirm_deletions();
    p.replica.sync_now(p.now);
    bounded_after(&mut p, 1);
    p.assert_synced();
}
