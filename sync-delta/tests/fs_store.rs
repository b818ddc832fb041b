//! The real store: a round between two temporary directories reproduces
//! content, modes, mtimes and symlinks; symlinks in the path are refused.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use sync_delta::store::{StatKind, Storage};
use sync_delta::{
    Exclude, FsStore, Replica, ReplicaConfig, ReplicaEvent, SessionError, Source, SourceConfig,
    StoreError,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sync-delta-{}-{name}", std::process::id()));
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

/// One round, the mass-deletion guard off: these trees are a few files,
/// where one edited and renamed in the same round is most of the content
/// lost by digest (the guard has its own tests).
fn round(src: &mut FsStore, dst: &mut FsStore) -> Result<(), SessionError> {
    let config = ReplicaConfig {
        mass_delete_fraction: 1.0,
        mass_delete_window: Duration::ZERO,
        ..ReplicaConfig::default()
    };
    round_with(src, dst, config).map(|_| ())
}

/// One round; returns the paths it changed.
fn round_with(
    src: &mut FsStore,
    dst: &mut FsStore,
    config: ReplicaConfig,
) -> Result<u64, SessionError> {
    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut source = Source::open(SourceConfig::default(), now, src).unwrap();
    let (mut replica, _) = Replica::open(config, now, dst).unwrap();
    replica.handle_connected(now);
    let mut changed = 0;
    loop {
        let mut moved = false;
        while let Some(m) = replica.poll_transmit() {
            source.handle_message(now, wall, m, src)?;
            moved = true;
        }
        while let Some(m) = source.poll_transmit(src) {
            replica.handle_message(now, m, dst)?;
            moved = true;
        }
        while let Some(e) = replica.poll_event() {
            if let ReplicaEvent::Committed { changed: c, .. } = e {
                changed += c;
            }
        }
        if !moved {
            return Ok(changed);
        }
    }
}

fn snapshot(root: &Path) -> Vec<(String, StatKind, u32, i64, Vec<u8>)> {
    let mut s = FsStore::new(root).unwrap();
    let mut w = s.walk(&Exclude::none()).unwrap().entries;
    w.sort_by(|a, b| a.path.cmp(&b.path));
    w.into_iter()
        .map(|e| {
            let content = match e.stat.kind {
                StatKind::File => fs::read(root.join(e.path.as_str())).unwrap(),
                StatKind::Symlink => e.target.clone().unwrap(),
                _ => Vec::new(),
            };
            let mtime = if e.stat.kind == StatKind::Symlink {
                0
            } else {
                e.stat.mtime_ns
            };
            (e.path.to_string(), e.stat.kind, e.stat.mode, mtime, content)
        })
        .collect()
}

/// `n` bytes of xorshift noise, the generator's state in `x` going on
/// from call to call.
fn noise(n: u64, x: &mut u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}

fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn round_between_directories() {
    let a = TempDir::new("src");
    let b = TempDir::new("dst");
    fs::create_dir_all(a.0.join("voice/100")).unwrap();
    fs::write(a.0.join("voice/100/msg1.wav"), vec![7u8; 300_000]).unwrap();
    fs::write(a.0.join("pbx.conf"), b"[general]").unwrap();
    fs::set_permissions(a.0.join("pbx.conf"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("voice/100", a.0.join("current")).unwrap();
    set_mtime(&a.0.join("pbx.conf"), 1_700_000_000);
    set_mtime(&a.0.join("voice/100"), 1_700_000_001);
    let mut src = FsStore::new(&a.0).unwrap();
    let mut dst = FsStore::new(&b.0).unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));

    // Append, edit, rename, delete.
    let mut d = vec![7u8; 300_000];
    d.extend_from_slice(&[1u8; 5000]);
    fs::write(a.0.join("voice/100/msg1.wav"), &d).unwrap();
    fs::rename(
        a.0.join("voice/100/msg1.wav"),
        a.0.join("voice/100/msg0.wav"),
    )
    .unwrap();
    fs::write(a.0.join("pbx.conf"), b"[general]\nport=5061").unwrap();
    fs::remove_file(a.0.join("current")).unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));
    assert!(b.0.join(".sync-delta/manifest.log").exists());
    assert_eq!(
        fs::read_dir(b.0.join(".sync-delta/stage")).unwrap().count(),
        0
    );
}

#[test]
fn symlink_in_the_replica_path_is_never_followed() {
    let a = TempDir::new("src2");
    let b = TempDir::new("dst2");
    let outside = TempDir::new("outside");
    fs::create_dir_all(a.0.join("evil")).unwrap();
    fs::write(a.0.join("evil/x"), b"payload").unwrap();
    // The replica root holds a local symlink where the source has a dir:
    // it is moved into quarantine (never followed), and the round makes
    // the directory.
    std::os::unix::fs::symlink(&outside.0, b.0.join("evil")).unwrap();
    let mut src = FsStore::new(&a.0).unwrap();
    let mut dst = FsStore::new(&b.0).unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(
        fs::read_dir(&outside.0).unwrap().count(),
        0,
        "nothing written outside the root"
    );
    assert_eq!(snapshot(&a.0), snapshot(&b.0));
    assert!(fs::symlink_metadata(b.0.join("evil")).unwrap().is_dir());
    let moved = b.0.join(".sync-delta/quarantine/q1-g0/evil");
    assert_eq!(fs::read_link(&moved).unwrap(), outside.0);
    // Writes through the store refuse a symlinked ancestor outright.
    std::os::unix::fs::symlink(&outside.0, b.0.join("evil2")).unwrap();
    assert_eq!(dst.create("evil2/y"), Err(StoreError::SymlinkInPath));
    assert_eq!(fs::read_dir(&outside.0).unwrap().count(), 0);
    let _ = fs::metadata(&outside.0).unwrap().ino();
}

/// Local divergence on the real file system: a stray file where the
/// source makes a directory, a tracked file replaced by a directory, a
/// tracked directory deleted. The round sets aside what is in its way and
/// completes; the next one fetches what the tree lost.
#[test]
fn local_divergence_is_set_aside_on_disk() {
    let a = TempDir::new("src4");
    let b = TempDir::new("dst4");
    fs::create_dir_all(a.0.join("voice/100")).unwrap();
    fs::write(a.0.join("voice/100/msg1.wav"), vec![1u8; 70_000]).unwrap();
    fs::write(a.0.join("voice/100/msg2.wav"), b"two").unwrap();
    fs::write(a.0.join("users.conf"), b"100,200").unwrap();
    let mut src = FsStore::new(&a.0).unwrap();
    let mut dst = FsStore::new(&b.0).unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));

    // The source: a new directory, an edit, a file in the old directory.
    fs::create_dir_all(a.0.join("voice/300")).unwrap();
    fs::write(a.0.join("voice/300/msg1.wav"), b"three hundred").unwrap();
    fs::write(a.0.join("users.conf"), b"100,200,300").unwrap();
    fs::write(a.0.join("voice/100/msg3.wav"), b"three").unwrap();
    // The Backup, locally.
    fs::write(b.0.join("voice/300"), b"stray").unwrap();
    fs::remove_file(b.0.join("users.conf")).unwrap();
    fs::create_dir(b.0.join("users.conf")).unwrap();
    fs::write(b.0.join("users.conf/mine"), b"local").unwrap();
    fs::remove_dir_all(b.0.join("voice/100")).unwrap();

    let now = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut source = Source::open(SourceConfig::default(), now, &mut src).unwrap();
    let (mut replica, _) = Replica::open(ReplicaConfig::default(), now, &mut dst).unwrap();
    replica.handle_connected(now);
    let mut diverged = Vec::new();
    for _ in 0..3 {
        loop {
            let mut moved = false;
            while let Some(m) = replica.poll_transmit() {
                source.handle_message(now, wall, m, &mut src).unwrap();
                moved = true;
            }
            while let Some(m) = source.poll_transmit(&mut src) {
                replica.handle_message(now, m, &mut dst).unwrap();
                moved = true;
            }
            while let Some(e) = replica.poll_event() {
                if let ReplicaEvent::Diverged(d) = e {
                    diverged.push(d);
                }
            }
            if !moved {
                break;
            }
        }
        if snapshot(&a.0) == snapshot(&b.0) {
            break;
        }
        // The round after a divergence that lost entries is due at once.
        replica.handle_timeout(now);
    }
    assert_eq!(snapshot(&a.0), snapshot(&b.0));
    assert_eq!(diverged.len(), 1, "{diverged:?}");
    assert_eq!(diverged[0].quarantined, 2, "{diverged:?}");
    assert_eq!(diverged[0].missing, 2, "msg1 and msg2: {diverged:?}");
    let q = b.0.join(".sync-delta/quarantine/q1-g1");
    assert_eq!(fs::read(q.join("voice/300")).unwrap(), b"stray");
    assert_eq!(fs::read(q.join("users.conf/mine")).unwrap(), b"local");
    assert_eq!(replica.stats().quarantined, 2);
}

/// setuid, setgid and sticky bits are written only when configured.
#[test]
fn special_bits_are_stripped_unless_kept() {
    for keep in [false, true] {
        let a = TempDir::new(&format!("src5-{keep}"));
        let b = TempDir::new(&format!("dst5-{keep}"));
        fs::create_dir(a.0.join("shared")).unwrap();
        fs::write(a.0.join("shared/tool"), b"#!/bin/sh\n").unwrap();
        fs::write(a.0.join("plain"), b"x").unwrap();
        fs::set_permissions(a.0.join("shared/tool"), fs::Permissions::from_mode(0o6755)).unwrap();
        fs::set_permissions(a.0.join("shared"), fs::Permissions::from_mode(0o3775)).unwrap();
        let mut src = FsStore::new(&a.0).unwrap();
        let mut dst = FsStore::new(&b.0).unwrap();
        let config = ReplicaConfig {
            keep_special_bits: keep,
            ..ReplicaConfig::default()
        };
        let changed = round_with(&mut src, &mut dst, config.clone()).unwrap();
        assert!(changed > 0);
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(
            mode(&a.0.join("shared/tool")),
            0o6755,
            "the source keeps them"
        );
        if keep {
            assert_eq!(mode(&b.0.join("shared/tool")), 0o6755);
            assert_eq!(mode(&b.0.join("shared")), 0o3775);
        } else {
            assert_eq!(mode(&b.0.join("shared/tool")), 0o755);
            assert_eq!(mode(&b.0.join("shared")), 0o775);
        }
        assert_eq!(mode(&b.0.join("plain")), mode(&a.0.join("plain")));
        // The manifests agree: the next round changes nothing.
        assert_eq!(round_with(&mut src, &mut dst, config).unwrap(), 0);
    }
}

/// Symlink mtimes are the link's own (`lstat`) and are not replicated:
/// re-creating a link with the same target, or swapping roles so that the
/// links the replica made are served, must not split the manifest digest.
#[test]
fn symlink_mtimes_do_not_split_the_digest() {
    let a = TempDir::new("src3");
    let b = TempDir::new("dst3");
    fs::create_dir_all(a.0.join("voice/100")).unwrap();
    fs::write(a.0.join("voice/100/msg1.wav"), b"one").unwrap();
    std::os::unix::fs::symlink("voice/100", a.0.join("current")).unwrap();
    let mut src = FsStore::new(&a.0).unwrap();
    let mut dst = FsStore::new(&b.0).unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));

    // `ln -sfn`: same target, a new link with a later mtime.
    let link_mtime = |root: &Path| {
        let m = fs::symlink_metadata(root.join("current")).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    let before = link_mtime(&a.0);
    while link_mtime(&a.0) == before {
        std::thread::sleep(Duration::from_millis(10));
        fs::remove_file(a.0.join("current")).unwrap();
        std::os::unix::fs::symlink("voice/100", a.0.join("current")).unwrap();
    }
    fs::write(a.0.join("voice/100/msg2.wav"), b"two").unwrap();
    round(&mut src, &mut dst).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));

    // Swap: B serves the link its replica made (its own mtime).
    assert_ne!(link_mtime(&a.0), link_mtime(&b.0));
    fs::write(b.0.join("voice/100/msg3.wav"), b"three").unwrap();
    round(&mut dst, &mut src).unwrap();
    assert_eq!(snapshot(&a.0), snapshot(&b.0));
    assert!(a.0.join("voice/100/msg3.wav").exists());
}

/// A threaded store hashes a file of 32 MiB or more with all its threads
/// together, cut along BLAKE3's own tree: the same hash as one pass, for
/// sizes on and off the tree's power-of-two edges, beside small files in
/// the same call, for each thread count.
#[test]
fn a_large_file_hashed_by_several_threads_has_the_one_pass_hash() {
    let dir = TempDir::new("split-hash");
    let sizes: [u64; 5] = [
        32 << 20,
        (32 << 20) + 1025,
        (48 << 20) + 7,
        (64 << 20) - 1,
        5000,
    ];
    let mut names = Vec::new();
    let mut want = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for (i, &size) in sizes.iter().enumerate() {
        let data = noise(size, &mut x);
        let name = format!("call{i}.wav");
        fs::write(dir.0.join(&name), &data).unwrap();
        want.push((*blake3::hash(&data).as_bytes(), size));
        names.push(sync_delta::RelPath::new(&name).unwrap());
    }
    for threads in [1, 2, 3, 8] {
        let mut s = FsStore::new(&dir.0).unwrap().with_threads(threads);
        let got = s.hash_files(&names);
        for ((r, (hash, size)), name) in got.into_iter().zip(&want).zip(&names) {
            let h = r.unwrap();
            assert_eq!(
                (h.hash, h.len, h.after.size),
                (*hash, *size, *size),
                "{name:?} with {threads} threads"
            );
        }
        // One large file alone (the queue has one path).
        let one = s.hash_files(&names[1..2]).remove(0).unwrap();
        assert_eq!(one.hash, want[1].0, "alone, {threads} threads");
    }
}

/// `copy_range` (how a replica writes a patch's staged ranges into the
/// live file) copies the bytes asked for to the offset asked for, says
/// how many when the source ends first, and never writes through a
/// symlink; the trait's default (a store that does not override it) does
/// the same through `read_at` and `write_at`.
#[test]
fn copy_range_copies_in_place_and_refuses_a_symlink() {
    let dir = TempDir::new("copy-range");
    let from: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(dir.0.join("redo"), &from).unwrap();
    fs::write(dir.0.join("call.wav"), vec![7u8; 4_000_000]).unwrap();
    fs::write(dir.0.join("outside"), b"keep").unwrap();
    std::os::unix::fs::symlink(dir.0.join("outside"), dir.0.join("link")).unwrap();
    let mut s = FsStore::new(&dir.0).unwrap();
    assert_eq!(
        s.copy_range("redo", 1_000, "call.wav", 500_000, 2_000_000)
            .unwrap(),
        2_000_000
    );
    // Past the end of the source: what there is.
    assert_eq!(
        s.copy_range("redo", 2_999_000, "call.wav", 3_990_000, 5_000)
            .unwrap(),
        1_000
    );
    let got = fs::read(dir.0.join("call.wav")).unwrap();
    assert_eq!(got.len(), 4_000_000);
    assert!(got[..500_000].iter().all(|&b| b == 7));
    assert_eq!(&got[500_000..2_500_000], &from[1_000..2_001_000]);
    assert!(got[2_500_000..3_990_000].iter().all(|&b| b == 7));
    assert_eq!(&got[3_990_000..3_991_000], &from[2_999_000..]);
    assert!(got[3_991_000..].iter().all(|&b| b == 7));
    assert_eq!(
        s.copy_range("redo", 0, "link", 0, 10),
        Err(StoreError::SymlinkInPath)
    );
    assert_eq!(fs::read(dir.0.join("outside")).unwrap(), b"keep");

    // The default, on a store that does not override it.
    let mut m = sync_delta::mem::MemStore::default();
    m.create("a").unwrap();
    m.write_at("a", 0, b"0123456789").unwrap();
    m.create("b").unwrap();
    m.write_at("b", 0, b"..........").unwrap();
    assert_eq!(m.copy_range("a", 2, "b", 5, 100).unwrap(), 8);
    let mut buf = [0u8; 13];
    assert_eq!(m.read_at("b", 0, &mut buf).unwrap(), 13);
    assert_eq!(&buf, b".....23456789");
}

/// A threaded store signs a file of 32 MiB or more on its threads (one
/// reads and cuts, the others hash): the signature is the one-thread
/// store's and the in-memory one's; a file not as recorded (longer,
/// shorter, gone) has none.
#[test]
fn a_threaded_store_signs_a_large_file_as_one_thread_does() {
    use sync_delta::chunk::ChunkParams;
    let dir = TempDir::new("threaded-signature");
    let size = (40u64 << 20) + 12_345;
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let data = noise(size, &mut x);
    fs::write(dir.0.join("big.wav"), &data).unwrap();
    let params = ChunkParams::for_size(size);
    let want = sync_delta::delta::signature(&data, params);
    let mut buf = Vec::new();
    for threads in [1, 2, 4] {
        let mut s = FsStore::new(&dir.0).unwrap().with_threads(threads);
        let got = s.signature("big.wav", size, params, &mut buf).unwrap();
        assert_eq!(got.as_ref(), Some(&want), "{threads} threads");
        for wrong in [size - 1, size + 1] {
            assert_eq!(
                s.signature("big.wav", wrong, params, &mut buf).unwrap(),
                None
            );
        }
        assert_eq!(
            s.signature("gone.wav", size, params, &mut buf).unwrap(),
            None
        );
    }
}

/// A walk in path order, a part at a time, gives what the whole walk
/// gives, sorted, with and without threads: names that sort around a directory's `/` (`a-b`, `a.x`
/// before `a/…`, `a0` after), deep and wide directories (more than a
/// part), symlinks, the state folder and excluded paths left out.
#[test]
fn a_walk_in_path_order_is_the_walk_sorted() {
    use std::os::unix::fs::symlink;
    use sync_delta::store::WalkCursor;
    let t = TempDir::new("walk-sorted");
    let r = &t.0;
    for d in ["a", "a/b", "a/b/c", "a-b", "a0", "z", "skip", ".sync-delta"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in [
        "a.x",
        "a/1",
        "a/b/c/deep",
        "a/b-",
        "a/b0",
        "a-b/x",
        "a0/y",
        "b",
        "skip/no",
    ] {
        fs::write(r.join(f), f).unwrap();
    }
    for i in 0..2500 {
        fs::write(r.join(format!("z/f{i}")), b"").unwrap();
    }
    symlink("a/1", r.join("link")).unwrap();
    let exclude = Exclude::new(["/skip"]);
    // With threads, the next subdirectories are read side by side.
    for threads in [1, 2, 3] {
        let mut s = FsStore::new(r).unwrap().with_threads(threads);
        let mut want = s.walk(&exclude).unwrap();
        want.entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut cursor = WalkCursor::default();
        let mut got = Vec::new();
        let mut parts = 0;
        loop {
            let before = got.len();
            s.walk_sorted(&exclude, &mut cursor, &mut got).unwrap();
            if got.len() == before {
                break;
            }
            parts += 1;
        }
        assert!(parts > 1, "{parts} parts");
        assert_eq!(cursor.skipped, want.skipped);
        assert_eq!(got, want.entries);
        assert!(got.iter().any(|e| e.path.as_str() == "link"));
        assert!(!got.iter().any(|e| e.path.as_str().starts_with("skip")));
    }
}

/// A directory removed after its parent was read and before the walk in
/// path order reaches its contents is left empty, not an error: a scan
/// hashes between the walk's parts.
#[test]
fn a_directory_gone_before_the_walk_reaches_it_is_empty() {
    use sync_delta::store::WalkCursor;
    let t = TempDir::new("walk-gone");
    let r = &t.0;
    fs::create_dir_all(r.join("a")).unwrap();
    fs::create_dir_all(r.join("b/c")).unwrap();
    fs::write(r.join("b/c/f"), b"f").unwrap();
    for i in 0..1500 {
        fs::write(r.join(format!("a/f{i:04}")), b"").unwrap();
    }
    let mut s = FsStore::new(r).unwrap();
    let mut cursor = WalkCursor::default();
    let mut got = Vec::new();
    s.walk_sorted(&Exclude::none(), &mut cursor, &mut got)
        .unwrap();
    assert!(got.len() < 1502, "the first part stops inside a/");
    fs::remove_dir_all(r.join("b")).unwrap();
    loop {
        let before = got.len();
        s.walk_sorted(&Exclude::none(), &mut cursor, &mut got)
            .unwrap();
        if got.len() == before {
            break;
        }
    }
    let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths.len(), 1502);
    assert_eq!(paths[1501], "b");
}
