//! The `sync` tool against its contract, and the peer link in process.
//! Loopback only, temporary directories, child processes ended by pid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use examples::peer::{self, PeerCommand, PeerConfig, PeerEvent, SyncRole};

/// Keys are 32 random bytes (weak ones are refused).
const KEY: &str = "3f9a61c2e0b84d17a5c6f2903e7b1d48c05a9e6f12b4d8739a0c5e27f1b68d34";
const OTHER_KEY: &str = "8e21d4b09f37c65a1e8b7f02d93a64c5b7f0e1a2938c4d5e6f708192a3b4c5d6";
/// A replica that pulls every interval (the first round at once).
const REPLICA: SyncRole = SyncRole::Replica { periodic: true };

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sync-tool-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sync_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/sync_tool-… → target/debug/examples/sync
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("sync");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn key_file(dir: &TempDir, name: &str, hex: &str) -> PathBuf {
    let p = dir.join(name);
    // Whitespace is ignored: split the digits over two lines.
    std::fs::write(&p, format!("{}\n{}\n", &hex[..32], &hex[32..])).unwrap();
    // Readable by its owner only: a key file others can read is refused.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A running `sync serve`, killed by pid on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Its stderr lines so far.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(dir: &Path, key: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(sync_bin())
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--key-file")
            .arg(key)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
                kept.lock().unwrap().push(line);
            }
        });
        // A hang guard, not a timing assertion.
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve did not report its address");
        Self { child, addr, lines }
    }

    /// Waits (with a hang guard) for a stderr line containing `what`.
    #[track_caller]
    fn wait_line(&self, what: &str) -> String {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no line with {what:?}: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pull(dir: &Path, from: SocketAddr, key: &Path, extra: &[&str]) -> Output {
    Command::new(sync_bin())
        .arg("pull")
        .arg("--dir")
        .arg(dir)
        .arg("--from")
        .arg(from.to_string())
        .arg("--key-file")
        .arg(key)
        .arg("--once")
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The JSON summary line of a successful pull.
#[track_caller]
fn summary(out: &Output) -> serde_json::Map<String, serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary_of(&stdout)
}

/// The JSON summary line that is all of `stdout`.
#[track_caller]
fn summary_of(stdout: &str) -> serde_json::Map<String, serde_json::Value> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {stdout:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let m = v.as_object().unwrap().clone();
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "generation",
            "files_sent",
            "files_renamed",
            "files_deleted",
            "bytes_received",
            "bytes_written",
            "seconds"
        ]
    );
    for k in &keys[..6] {
        assert!(m[*k].is_u64(), "{k} is not a whole number: {}", m[*k]);
    }
    assert!(m["seconds"].is_f64());
    m
}

#[track_caller]
fn num(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> u64 {
    m[k].as_u64().unwrap()
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        bytes: Vec<u8>,
    },
    Link {
        target: PathBuf,
    },
}

/// Everything under `root` but the engine's state folder.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".sync-delta" {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let entry = if md.file_type().is_symlink() {
                Entry::Link {
                    target: std::fs::read_link(&p).unwrap(),
                }
            } else if md.is_dir() {
                walk(root, &p, out);
                Entry::Dir { mode }
            } else {
                Entry::File {
                    mode,
                    mtime: md.mtime(),
                    bytes: std::fs::read(&p).unwrap(),
                }
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Deterministic, incompressible-looking bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A small PBX-like tree: config, voicemail, a prompt, a script, an empty
/// file, a symlink, a private directory.
fn seed_tree(root: &Path) {
    write(
        root,
        "config/pbx.conf",
        b"[general]\nextensions=32\n",
        0o644,
    );
    write(root, "config/secret.conf", b"password=hunter2\n", 0o600);
    write(root, "bin/backup.sh", b"#!/bin/sh\necho ok\n", 0o755);
    write(root, "voicemail/100/msg0001.wav", &noise(200_000, 1), 0o640);
    write(root, "voicemail/100/msg0002.wav", &noise(150_000, 2), 0o640);
    write(root, "prompts/en/welcome.wav", &noise(90_000, 3), 0o644);
    write(root, "empty.flag", b"", 0o644);
    std::fs::set_permissions(
        root.join("voicemail/100"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    symlink("config/pbx.conf", root.join("current.conf")).unwrap();
}

#[test]
fn pull_once_replicates_then_follows_edits() {
    let t = TempDir::new("edits");
    let src = t.join("src");
    let rep = t.join("rep");
    std::fs::create_dir_all(&src).unwrap();
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);

    // Round 1: everything (rep does not exist yet: created).
    let out = pull(&rep, server.addr, &key, &[]);
    let s = summary(&out);
    assert_eq!(num(&s, "generation"), 1);
    // Six files with content; the empty one is made locally.
    assert_eq!(num(&s, "files_sent"), 6);
    assert_eq!(num(&s, "files_renamed"), 0);
    assert_eq!(num(&s, "files_deleted"), 0);
    assert!(num(&s, "bytes_received") > 440_000);
    // Every file's content was written once (the six files hold about
    // 440 KB).
    assert!(num(&s, "bytes_written") > 440_000, "{s:?}");
    assert_eq!(tree(&rep), tree(&src));
    assert!(rep.join(".sync-delta").is_dir());

    // Round 2: modify, append, rename, delete.
    write(
        &src,
        "config/pbx.conf",
        b"[general]\nextensions=48\n",
        0o644,
    );
    let mut msg = std::fs::read(src.join("voicemail/100/msg0001.wav")).unwrap();
    msg.extend_from_slice(&noise(5_000, 9));
    std::fs::write(src.join("voicemail/100/msg0001.wav"), &msg).unwrap();
    std::fs::rename(
        src.join("voicemail/100/msg0002.wav"),
        src.join("voicemail/100/saved0002.wav"),
    )
    .unwrap();
    std::fs::remove_file(src.join("bin/backup.sh")).unwrap();
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 2);
    assert_eq!(num(&s, "files_sent"), 2, "{s:?}");
    assert_eq!(num(&s, "files_renamed"), 1, "{s:?}");
    assert_eq!(num(&s, "files_deleted"), 1, "{s:?}");
    // The append and the rename did not resend their content, and the
    // rename wrote nothing.
    assert!(num(&s, "bytes_received") < 100_000, "{s:?}");
    assert!(num(&s, "bytes_written") > 0, "{s:?}");
    assert_eq!(tree(&rep), tree(&src));

    // Round 3: nothing changed, the generation stays.
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 2);
    assert_eq!(num(&s, "files_sent"), 0);
    assert_eq!(num(&s, "bytes_written"), 0, "{s:?}");
    assert_eq!(tree(&rep), tree(&src));
}

/// `sync pull --once` with `env` set, stdout and stderr piped.
fn pull_env(dir: &Path, from: SocketAddr, key: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(sync_bin())
        .arg("pull")
        .arg("--dir")
        .arg(dir)
        .arg("--from")
        .arg(from.to_string())
        .arg("--key-file")
        .arg(key)
        .arg("--once")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A tree of `n` voicemail files of 64 KiB.
fn voicemail_tree(root: &Path, n: usize) {
    for i in 0..n {
        write(
            root,
            &format!("voicemail/200/msg{i:04}.wav"),
            &noise(65_536, i as u64 + 100),
            0o640,
        );
    }
}

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let t = TempDir::new("progress-pipe");
    let src = t.join("src");
    voicemail_tree(&src, 20);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    // Even with the bar due at once, a pipe gets nothing from it.
    let out = pull_env(
        &t.join("rep"),
        server.addr,
        &key,
        &[("SYNC_PROGRESS_AFTER_MS", "0")],
    );
    let s = summary(&out);
    assert_eq!(num(&s, "files_sent"), 20);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&t.join("rep")), tree(&src));
}

/// `sync pull --once` under a pseudo-terminal (util-linux `script`), stdout
/// to `json`: what the terminal showed.
fn pull_on_a_terminal(
    dir: &Path,
    from: SocketAddr,
    key: &Path,
    json: &Path,
    after_ms: &str,
) -> String {
    let bin = sync_bin();
    let words = [
        bin.to_str().unwrap(),
        "pull",
        "--dir",
        dir.to_str().unwrap(),
        "--from",
        &from.to_string(),
        "--key-file",
        key.to_str().unwrap(),
        "--once",
    ];
    // A wide terminal, so that no line is cut at its edge.
    let command = format!(
        "stty cols 200 rows 50 2>/dev/null; {} > {}",
        shlex::try_join(words).unwrap(),
        shlex::try_quote(json.to_str().unwrap()).unwrap()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("SYNC_PROGRESS_AFTER_MS", after_ms)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?}: {shown}", out.status);
    shown
}

#[test]
fn a_progress_bar_on_a_terminal_from_the_round_itself() {
    let have_script = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_script {
        let why = "script (util-linux) is not installed: no pseudo-terminal";
        assert!(std::env::var_os("CI").is_none(), "{why} (CI is set)");
        eprintln!("skipping: {why}");
        return;
    }
    let t = TempDir::new("progress-tty");
    let src = t.join("src");
    voicemail_tree(&src, 20);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);

    // A round that has run past the threshold (0 here: every round) ends
    // with the bar's last line: the round's files and bytes.
    let json = t.join("round1.json");
    let shown = pull_on_a_terminal(&t.join("rep"), server.addr, &key, &json, "0");
    let bytes = 20 * 65_536;
    assert!(
        shown.contains(&format!(
            "pull files 20/20, {} of {}, ",
            indicatif::HumanBytes(bytes),
            indicatif::HumanBytes(bytes)
        )),
        "{shown:?}"
    );
    assert!(shown.contains(": generation 1"), "{shown:?}");
    // stdout, not the terminal, has the JSON, unchanged.
    let s = summary_of(&std::fs::read_to_string(&json).unwrap());
    assert_eq!((num(&s, "generation"), num(&s, "files_sent")), (1, 20));
    assert!(!shown.contains("generation\":"), "{shown:?}");
    assert_eq!(tree(&t.join("rep")), tree(&src));

    // A round shorter than the threshold draws nothing.
    write(&src, "voicemail/200/msg0000.wav", &noise(65_536, 7), 0o640);
    let json = t.join("round2.json");
    let shown = pull_on_a_terminal(&t.join("rep"), server.addr, &key, &json, "600000");
    assert!(!shown.contains("pull "), "{shown:?}");
    let s = summary_of(&std::fs::read_to_string(&json).unwrap());
    assert_eq!((num(&s, "generation"), num(&s, "files_sent")), (2, 1));
}

/// The files under `root/.sync-delta/quarantine/` (path below the
/// quarantine folder's name, content).
fn quarantined(root: &Path) -> Vec<(String, Vec<u8>)> {
    let q = root.join(".sync-delta/quarantine");
    let mut out = Vec::new();
    let Ok(folders) = std::fs::read_dir(&q) else {
        return out;
    };
    for f in folders {
        let f = f.unwrap().path();
        for (rel, e) in tree(&f) {
            if let Entry::File { bytes, .. } = e {
                out.push((rel, bytes));
            }
        }
    }
    out.sort();
    out
}

/// A Backup's tree that diverged locally (a stray file where the Master
/// makes a directory, a tracked directory deleted) does not wedge the
/// replica: the pull moves what is in its way into quarantine and
/// commits; the next pull fetches what the tree lost.
#[test]
fn local_divergence_is_set_aside_not_wedged() {
    let t = TempDir::new("diverge");
    let src = t.join("src");
    let rep = t.join("rep");
    std::fs::create_dir_all(&src).unwrap();
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 1);

    // The Master: a new mailbox directory, a new prompt.
    write(&src, "voicemail/200/msg0001.wav", &noise(20_000, 5), 0o640);
    write(&src, "prompts/en/goodbye.wav", &noise(30_000, 6), 0o644);
    // The Backup, locally: a stray file where the mailbox comes, and the
    // prompts deleted.
    std::fs::write(rep.join("voicemail/200"), b"stray local file").unwrap();
    std::fs::remove_dir_all(rep.join("prompts")).unwrap();

    let out = pull(&rep, server.addr, &key, &[]);
    // The tool says what it set aside and where.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 paths moved to quarantine q") && err.contains("missing entries"),
        "{err}"
    );
    let s = summary(&out);
    assert_eq!(num(&s, "generation"), 2);
    assert!(rep.join("voicemail/200/msg0001.wav").is_file());
    assert!(rep.join("prompts/en/goodbye.wav").is_file());
    assert_eq!(
        quarantined(&rep),
        vec![("voicemail/200".to_owned(), b"stray local file".to_vec())]
    );
    // The prompt the tree lost is fetched by the next round.
    assert!(!rep.join("prompts/en/welcome.wav").exists());
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 3);
    assert_eq!(num(&s, "files_sent"), 1, "{s:?}");
    assert_eq!(tree(&rep), tree(&src));
    // And it stays a working replica.
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 3);
    assert_eq!(num(&s, "files_sent"), 0);
    assert_eq!(quarantined(&rep).len(), 1);
}

/// Copies a tree, modes and symlinks kept (a replica's state to start
/// each attempt from).
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The divergent round killed (SIGKILL, by the child's id) at a spread of
/// moments, from before its handshake to after its commit: every time the
/// next pull opens the replica and reaches generation 2 (or 3, when the
/// killed pull had committed), with the stray file set aside exactly once
/// (never lost, never twice), and a further pull makes the tree the
/// source's.
#[test]
fn a_divergent_round_killed_at_any_moment_still_opens_and_finishes() {
    let t = TempDir::new("diverge-kill");
    let (src, base) = (t.join("src"), t.join("base"));
    std::fs::create_dir_all(&src).unwrap();
    seed_tree(&src);
    // Enough data that the round takes a while: kills land inside it.
    for i in 0..60 {
        write(
            &src,
            &format!("voicemail/101/m{i:03}.wav"),
            &noise(40_000, 100 + i),
            0o640,
        );
    }
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    assert_eq!(
        num(&summary(&pull(&base, server.addr, &key, &[])), "generation"),
        1
    );
    // The round to come: new data on the source, and local divergence on
    // the replica (a stray file where a directory comes, a tracked
    // directory deleted).
    for i in 0..60 {
        write(
            &src,
            &format!("voicemail/200/m{i:03}.wav"),
            &noise(40_000, 500 + i),
            0o640,
        );
    }
    // A new prompt: the round writes under the directory deleted locally
    // (what a round does not touch, it does not check).
    write(&src, "prompts/en/goodbye.wav", &noise(30_000, 6), 0o644);
    std::fs::write(base.join("voicemail/200"), b"stray local file").unwrap();
    std::fs::remove_dir_all(base.join("prompts")).unwrap();

    let mut committed_before_the_kill = 0;
    for (k, delay_ms) in [0u64, 3, 8, 15, 25, 40, 60, 90, 130, 180, 250, 400]
        .into_iter()
        .enumerate()
    {
        let rep = t.join(&format!("rep{k}"));
        copy_tree(&base, &rep);
        let mut child = Command::new(sync_bin())
            .arg("pull")
            .arg("--dir")
            .arg(&rep)
            .arg("--from")
            .arg(server.addr.to_string())
            .arg("--key-file")
            .arg(&key)
            .arg("--once")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Opening after the kill: a whole generation, 1 or 2, and on: to
        // 2, or to 3 when the killed pull had committed 2 already (this one
        // then fetches what the tree lost).
        let s = summary(&pull(&rep, server.addr, &key, &[]));
        let g = num(&s, "generation");
        assert!(g == 2 || g == 3, "killed after {delay_ms} ms: {s:?}");
        committed_before_the_kill += usize::from(g == 3);
        assert!(
            rep.join("voicemail/200/m059.wav").is_file(),
            "after {delay_ms} ms"
        );
        assert_eq!(
            quarantined(&rep),
            vec![("voicemail/200".to_owned(), b"stray local file".to_vec())],
            "killed after {delay_ms} ms"
        );
        // What the tree lost locally comes back with the next round.
        summary(&pull(&rep, server.addr, &key, &[]));
        let (got, want) = (tree(&rep), tree(&src));
        let differ: Vec<&String> = want
            .keys()
            .chain(got.keys())
            .filter(|k| got.get(*k) != want.get(*k))
            .collect();
        assert!(differ.is_empty(), "killed after {delay_ms} ms: {differ:?}");
        std::fs::remove_dir_all(&rep).unwrap();
    }
    // Not every kill came after the commit: the spread of delays reaches
    // into the round.
    assert!(
        committed_before_the_kill < 12,
        "every kill came after the commit"
    );
}

/// The mass-deletion guard counts lost content: a refused round exits 3
/// and changes nothing, argument errors stay at exit 2, and the guard's
/// flags take effect.
#[test]
fn mass_deletion_is_refused_until_confirmed() {
    let t = TempDir::new("mass");
    let src = t.join("src");
    let rep = t.join("rep");
    for i in 0..10 {
        write(&src, &format!("vm/msg{i}.wav"), &noise(1000, i), 0o644);
    }
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 1);
    let before = tree(&rep);

    // 8 of 10 files: 8,000 of 10,000 content bytes.
    for i in 0..8 {
        std::fs::remove_file(src.join(format!("vm/msg{i}.wav"))).unwrap();
    }
    let out = pull(&rep, server.addr, &key, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mass-deletion"), "{err}");
    assert!(err.contains("8000 bytes"), "{err}");
    assert!(err.contains("--allow-mass-delete"), "{err}");
    assert_eq!(tree(&rep), before, "a refused round changed the replica");

    // Argument errors are clap's exit 2, and change nothing either.
    for bad in [
        ["--mass-delete-fraction", "1.5"],
        ["--mass-delete-fraction", "0"],
        ["--mass-delete-window-h", "-1"],
    ] {
        let out = pull(&rep, server.addr, &key, &bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
        assert_eq!(tree(&rep), before);
    }

    let s = summary(&pull(&rep, server.addr, &key, &["--allow-mass-delete"]));
    assert_eq!(num(&s, "generation"), 2);
    assert_eq!(num(&s, "files_deleted"), 8);
    assert_eq!(tree(&rep), tree(&src));

    // Truncation is loss: the two files left, emptied, are refused...
    for i in 8..10 {
        std::fs::write(src.join(format!("vm/msg{i}.wav")), b"").unwrap();
    }
    let kept = tree(&rep);
    let out = pull(&rep, server.addr, &key, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(tree(&rep), kept);
    // ... unless the guard allows all of the tree in one round.
    let s = summary(&pull(
        &rep,
        server.addr,
        &key,
        &["--mass-delete-fraction", "1", "--mass-delete-window-h", "0"],
    ));
    assert_eq!(num(&s, "generation"), 3);
    assert_eq!(tree(&rep), tree(&src));
}

#[test]
fn wrong_key_and_no_server_fail_without_writing() {
    let t = TempDir::new("key");
    let src = t.join("src");
    let rep = t.join("rep");
    seed_tree(&src);
    write(&rep, "local.txt", b"mine", 0o644);
    let before = tree(&rep);
    let key = key_file(&t, "key", KEY);
    let wrong = key_file(&t, "wrong", OTHER_KEY);
    let server = Server::start(&src, &key, &[]);

    let out = pull(&rep, server.addr, &wrong, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong key"), "{err}");
    assert_eq!(tree(&rep), before);

    // Nobody listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let out = pull(&rep, addr, &key, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
    assert_eq!(tree(&rep), before);

    // A malformed key file: an argument error, exit 2.
    let bad = t.join("bad");
    std::fs::write(&bad, "abc").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = pull(&rep, server.addr, &bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));

    // The server survived all that and still serves the right key.
    let s = summary(&pull(&rep, server.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 1);
    // The replica's own untracked file is left alone.
    let mut expect = tree(&src);
    expect.insert(
        "local.txt".into(),
        before
            .get("local.txt")
            .map(|e| match e {
                Entry::File { mode, mtime, bytes } => Entry::File {
                    mode: *mode,
                    mtime: *mtime,
                    bytes: bytes.clone(),
                },
                _ => unreachable!(),
            })
            .unwrap(),
    );
    assert_eq!(tree(&rep), expect);
}

#[test]
fn exclusions_on_both_sides() {
    let t = TempDir::new("exclude");
    let src = t.join("src");
    let rep = t.join("rep");
    seed_tree(&src);
    write(&src, "licenses/pbx-32.lic", b"source licence", 0o600);
    write(&src, "config/draft.tmp", b"scratch", 0o644);
    write(&rep, "licenses/pbx-8.lic", b"replica licence", 0o600);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &["--exclude", "*.tmp"]);
    let s = summary(&pull(
        &rep,
        server.addr,
        &key,
        &["--exclude", "licenses/**"],
    ));
    assert_eq!(num(&s, "generation"), 1);
    let got = tree(&rep);
    // The source never sent its scratch file; the replica kept its own
    // licence and did not take the source's.
    assert!(!got.contains_key("config/draft.tmp"));
    assert!(!got.contains_key("licenses/pbx-32.lic"));
    assert_eq!(
        std::fs::read(rep.join("licenses/pbx-8.lic")).unwrap(),
        b"replica licence"
    );
    let mut expect = tree(&src);
    expect.retain(|p, _| !p.ends_with(".tmp") && !p.starts_with("licenses"));
    let mut got2 = got;
    got2.retain(|p, _| !p.starts_with("licenses"));
    assert_eq!(got2, expect);
}

// ---------------------------------------------------------------------------
// peer.rs in process

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A test peer's side of the link's handshake under `KEY` on `stream`:
/// the established link and any frames that came right behind it.
async fn handshake(
    stream: &mut tokio::net::TcpStream,
    role: sync_delta::frame::LinkRole,
) -> (sync_delta::frame::Link, Vec<sync_delta::frame::Frame>) {
    use sync_delta::frame::{Link, Nonce, PreSharedKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = PreSharedKey::new(examples::config::parse_key(KEY).unwrap()).unwrap();
    let now = std::time::Instant::now();
    let epoch = sync_delta::Epoch::default();
    let mut link = Link::new(role, key, Nonce([7; 32]), epoch, epoch, now);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    let fut = async {
        loop {
            let mut out = Vec::new();
            if link.poll_transmit(&mut out) {
                stream.write_all(&out).await.unwrap();
            }
            if link.is_established() {
                return;
            }
            // No more than the link takes before the key is proved.
            let window = link.receive_window().min(buf.len());
            let n = stream.read(&mut buf[..window]).await.unwrap();
            assert!(n > 0, "closed in the handshake");
            link.handle_bytes(std::time::Instant::now(), &buf[..n])
                .unwrap();
            while let Some(f) = link.poll_frame().unwrap() {
                frames.push(f);
            }
        }
    };
    // A hang guard, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("handshake");
    (link, frames)
}

/// Waits (with a hang guard) for the first event that `f` maps to `Some`.
async fn wait_for<T>(
    rx: &mut tokio::sync::mpsc::Receiver<PeerEvent>,
    what: &str,
    mut f: impl FnMut(PeerEvent) -> Option<T>,
) -> T {
    let fut = async {
        loop {
            let e = rx
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed waiting for {what}"));
            if let Some(t) = f(e) {
                return t;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("no {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_exchange_peer_messages_and_sync_both_ways() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("examples=debug")
        .with_test_writer()
        .try_init();
    let t = TempDir::new("peer");
    let a_dir = t.join("a");
    let b_dir = t.join("b");
    seed_tree(&a_dir);
    std::fs::create_dir_all(&b_dir).unwrap();
    let key = examples::config::parse_key(KEY).unwrap();
    let (a_addr, b_addr) = (free_port(), free_port());
    let config = |dir: &Path, listen, peer, node| {
        let mut c = PeerConfig::new(dir, key);
        c.listen = Some(listen);
        c.peer = Some(peer);
        c.node = node;
        c.interval = Duration::from_secs(3600);
        c
    };
    let (a_cmd, mut a_ev) = peer::spawn(config(&a_dir, a_addr, b_addr, 1), SyncRole::Source);
    let (b_cmd, mut b_ev) = peer::spawn(config(&b_dir, b_addr, a_addr, 2), REPLICA);

    wait_for(&mut a_ev, "A connected", |e| {
        matches!(e, PeerEvent::Connected).then_some(())
    })
    .await;
    // B pulls at once when the link comes up.
    let first = wait_for(&mut b_ev, "B's first round", |e| match e {
        PeerEvent::RoundDone(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(first.generation, 1);
    assert_eq!(first.fetched, 6);
    assert_eq!(tree(&b_dir), tree(&a_dir));
    let held = wait_for(&mut b_ev, "B's status", |e| match e {
        PeerEvent::Status(st) => Some(st),
        _ => None,
    })
    .await;
    // A reports what B holds: the generation and when A took it.
    let served = wait_for(&mut a_ev, "A served", |e| match e {
        PeerEvent::Status(st) => Some(st),
        _ => None,
    })
    .await;
    assert_eq!(served.number, 1);
    assert_eq!(served.taken_at, held.taken_at);
    assert!(served.taken_at.is_some());

    // Opaque orchestrator bytes, both ways, beside the sync channel.
    a_cmd
        .send(PeerCommand::SendPeerMessage(b"hello from a".to_vec()))
        .await
        .unwrap();
    let got = wait_for(&mut b_ev, "peer message at B", |e| match e {
        PeerEvent::PeerMessage(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, b"hello from a");
    b_cmd
        .send(PeerCommand::SendPeerMessage(vec![0, 1, 2, 255]))
        .await
        .unwrap();
    let got = wait_for(&mut a_ev, "peer message at A", |e| match e {
        PeerEvent::PeerMessage(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got, [0, 1, 2, 255]);

    // Sync now, on demand, after an edit.
    write(
        &a_dir,
        "config/pbx.conf",
        b"[general]\nextensions=64\n",
        0o644,
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    b_cmd
        .send(PeerCommand::SyncNow { reply: tx })
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s.number, 2);
    // The round's counts came with it.
    let done = wait_for(&mut b_ev, "B's round 2", |e| match e {
        PeerEvent::RoundDone(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(done.generation, 2);
    assert_eq!(done.fetched, 1);
    assert_eq!(tree(&b_dir), tree(&a_dir));
    // The source records the confirmation a moment later; a swap before it
    // would quarantine A's unconfirmed edit (tested by sync-delta).
    let taken_at = wait_for(&mut a_ev, "A served generation 2", |e| match e {
        PeerEvent::Status(st) if st.number == 2 => Some(st.taken_at),
        _ => None,
    })
    .await;
    assert!(taken_at.is_some());
    // The source answers a takeover query with the same.
    let (tx, rx) = tokio::sync::oneshot::channel();
    a_cmd
        .send(PeerCommand::FinishOrRollback { reply: tx })
        .await
        .unwrap();
    let g = rx.await.unwrap().unwrap();
    assert_eq!(g.number, 2);
    assert_eq!(g.taken_at, taken_at);

    // Sync now, asked on the source (before a planned swap): it answers
    // once the source has the replica's confirmation.
    write(&a_dir, "prompts/en/bye.wav", &noise(20_000, 5), 0o644);
    let (tx, rx) = tokio::sync::oneshot::channel();
    a_cmd
        .send(PeerCommand::SyncNow { reply: tx })
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s.number, 3);
    assert_eq!(tree(&b_dir), tree(&a_dir));

    // Takeover: B settles and becomes the source, A returns as replica.
    // (B's symlink was made by its replica, so its mtime differs from the
    // one A listed; symlink mtimes are not replicated, and the first round
    // after the swap must succeed as it is.)
    let (tx, rx) = tokio::sync::oneshot::channel();
    b_cmd
        .send(PeerCommand::FinishOrRollback { reply: tx })
        .await
        .unwrap();
    let g = rx.await.unwrap().unwrap();
    assert_eq!(g.number, 3);
    assert!(g.taken_at.is_some());
    b_cmd
        .send(PeerCommand::SetRole(SyncRole::Source))
        .await
        .unwrap();
    b_cmd
        .send(PeerCommand::SetEpoch(sync_delta::Epoch::new(1, 2)))
        .await
        .unwrap();
    a_cmd.send(PeerCommand::SetRole(REPLICA)).await.unwrap();
    // A pulls at once as a replica: nothing new yet, generation 3 holds.
    let first = wait_for(&mut a_ev, "A's first round as the replica", |e| match e {
        PeerEvent::RoundDone(s) => Some(s),
        PeerEvent::RoundFailed(why) => panic!("first round after the swap failed: {why}"),
        _ => None,
    })
    .await;
    assert_eq!(first.generation, 3);
    assert_eq!(first.fetched, 0);
    write(
        &b_dir,
        "voicemail/100/msg0003.wav",
        &noise(30_000, 7),
        0o640,
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    a_cmd
        .send(PeerCommand::SyncNow { reply: tx })
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s.number, 4);
    let done = wait_for(&mut a_ev, "A's round 4", |e| match e {
        PeerEvent::RoundDone(s) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(done.generation, 4);
    assert_eq!(done.fetched, 1);
    assert_eq!(tree(&a_dir), tree(&b_dir));

    // Idle has no sync role.
    a_cmd
        .send(PeerCommand::SetRole(SyncRole::Idle))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    a_cmd
        .send(PeerCommand::SyncNow { reply: tx })
        .await
        .unwrap();
    assert!(rx.await.unwrap().is_err());

    // Shutdown closes the event channels.
    a_cmd.send(PeerCommand::Shutdown).await.unwrap();
    b_cmd.send(PeerCommand::Shutdown).await.unwrap();
    for ev in [&mut a_ev, &mut b_ev] {
        tokio::time::timeout(Duration::from_secs(60), async {
            while ev.recv().await.is_some() {}
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_never_connects() {
    let t = TempDir::new("peer-key");
    let a_dir = t.join("a");
    let b_dir = t.join("b");
    seed_tree(&a_dir);
    std::fs::create_dir_all(&b_dir).unwrap();
    let (a_addr, b_addr) = (free_port(), free_port());
    let mut a = PeerConfig::new(&a_dir, examples::config::parse_key(KEY).unwrap());
    a.listen = Some(a_addr);
    a.peer = Some(b_addr);
    let mut b = PeerConfig::new(&b_dir, examples::config::parse_key(OTHER_KEY).unwrap());
    b.listen = Some(b_addr);
    b.peer = Some(a_addr);
    let (_a_cmd, mut a_ev) = peer::spawn(a, SyncRole::Source);
    let (_b_cmd, mut b_ev) = peer::spawn(b, REPLICA);
    // Both ends report the failure; neither reports a connection first.
    for ev in [&mut a_ev, &mut b_ev] {
        wait_for(ev, "link failure", |e| match e {
            PeerEvent::Connected => panic!("connected with a wrong key"),
            PeerEvent::LinkFailed(_) => Some(()),
            _ => None,
        })
        .await;
    }
    assert!(tree(&b_dir).is_empty());
}

/// A peer that connects and never speaks is dropped at the link's
/// handshake deadline, reported as a timed-out handshake; a connection
/// that does the handshake afterwards still comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_dropped_at_the_handshake_deadline() {
    use sync_delta::frame::{HANDSHAKE_TIMEOUT, LinkRole};
    use tokio::io::AsyncReadExt;

    let t = TempDir::new("silent");
    let a_dir = t.join("a");
    seed_tree(&a_dir);
    let a_addr = free_port();
    let mut a = PeerConfig::new(&a_dir, examples::config::parse_key(KEY).unwrap());
    a.listen = Some(a_addr);
    let (_a_cmd, mut a_ev) = peer::spawn(a, SyncRole::Source);
    wait_for(&mut a_ev, "listening", |e| {
        matches!(e, PeerEvent::Listening(_)).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    let why = wait_for(&mut a_ev, "the handshake deadline", |e| match e {
        PeerEvent::Connected => panic!("a silent peer connected"),
        PeerEvent::LinkFailed(why) => Some(why),
        _ => None,
    })
    .await;
    let waited = started.elapsed();
    assert!(why.contains("handshake timed out"), "{why}");
    assert!(waited >= HANDSHAKE_TIMEOUT, "dropped after {waited:?}");
    assert!(waited < HANDSHAKE_TIMEOUT * 3, "dropped after {waited:?}");
    // The listener closed its end.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A real peer still gets in.
    let mut stream = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    let (link, _) = handshake(&mut stream, LinkRole::Initiator).await;
    assert!(link.is_established());
    wait_for(&mut a_ev, "connected", |e| {
        matches!(e, PeerEvent::Connected).then_some(())
    })
    .await;
}

/// A source that passes the handshake, lists one new file, then sends more
/// data than the file's announced size: the replica must refuse the round,
/// exit 1 and stay at its last whole generation.
#[test]
fn misbehaving_source_leaves_the_last_whole_generation() {
    use sync_delta::frame::{CHANNEL_SYNC, LinkRole};
    use sync_delta::manifest::{Change, LocalStat, Meta};
    use sync_delta::wire::Message;
    use sync_delta::{Kind, Manifest, RelPath, delta::Op};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let t = TempDir::new("evil");
    let src = t.join("src");
    let rep = t.join("rep");
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    {
        let server = Server::start(&src, &key, &[]);
        assert_eq!(
            num(&summary(&pull(&rep, server.addr, &key, &[])), "generation"),
            1
        );
    }
    let gen1 = tree(&rep);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let evil = rt.spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut link, early) = handshake(&mut stream, LinkRole::Responder).await;
        // Wait for the replica's request.
        let mut frames = early;
        let mut buf = vec![0u8; 65536];
        while frames.is_empty() {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            link.handle_bytes(std::time::Instant::now(), &buf[..n])
                .unwrap();
            while let Some(f) = link.poll_frame().unwrap() {
                frames.push(f);
            }
        }
        let path = RelPath::new("new.bin").unwrap();
        let meta = Meta {
            kind: Kind::File {
                size: 4,
                hash: *blake3::hash(b"abcd").as_bytes(),
            },
            mode: 0o644,
            mtime_ns: 0,
            local: LocalStat::default(),
        };
        let mut m = Manifest::default();
        m.entries.insert(path.clone(), meta.clone());
        let msgs = [
            Message::ManifestStart {
                taken_at_ns: 1,
                full: true,
            },
            Message::Entries {
                changes: vec![Change::Upsert(path, meta)],
            },
            Message::ManifestEnd {
                entries: 1,
                digest: m.digest(),
            },
        ];
        let send = |link: &mut sync_delta::frame::Link, m: &Message| {
            let (mut payload, mut out) = (Vec::new(), Vec::new());
            m.encode(&mut payload);
            link.send(CHANNEL_SYNC, &payload, &mut out).unwrap();
            out
        };
        for m in &msgs {
            let out = send(&mut link, m);
            stream.write_all(&out).await.unwrap();
        }
        // The replica wants the file (id 0 is its first want).
        let out = send(
            &mut link,
            &Message::Data {
                id: 0,
                ops: vec![Op::Literal(b"far more than four bytes".to_vec())],
            },
        );
        stream.write_all(&out).await.unwrap();
        // Hold the connection until the replica closes it.
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });

    // The listing would delete everything: let it past the guard, so that
    // the failure comes from the data.
    let out = pull(&rep, addr, &key, &["--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("size"), "{err}");
    assert_eq!(tree(&rep), gen1, "a failed round changed the replica");
    // Nothing staged is left behind.
    let stage = rep.join(".sync-delta/stage");
    assert!(
        !stage.exists() || std::fs::read_dir(&stage).unwrap().next().is_none(),
        "staged files left in {}",
        stage.display()
    );
    rt.block_on(evil).unwrap();
}

/// Without `--once` the tool keeps pulling every `--interval-s` and prints
/// a line per round.
#[test]
fn pull_without_once_repeats() {
    let t = TempDir::new("repeat");
    let src = t.join("src");
    let rep = t.join("rep");
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    let mut child = Command::new(sync_bin())
        .arg("pull")
        .arg("--dir")
        .arg(&rep)
        .arg("--from")
        .arg(server.addr.to_string())
        .arg("--key-file")
        .arg(&key)
        .args(["--interval-s", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send(v["generation"].as_u64().unwrap()).is_err() {
                break;
            }
        }
    });
    // Hang guards, not timing assertions.
    let wait = Duration::from_secs(60);
    assert_eq!(rx.recv_timeout(wait).unwrap(), 1);
    // Atomically, as rounds may run at any moment.
    write(&t.0, "pbx.conf.new", b"[general]\nextensions=99\n", 0o644);
    std::fs::rename(t.join("pbx.conf.new"), src.join("config/pbx.conf")).unwrap();
    loop {
        let g = rx.recv_timeout(wait).unwrap();
        assert!(g == 1 || g == 2, "generation {g}");
        if g == 2 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(tree(&rep), tree(&src));
}

/// `serve` refuses what it cannot do, with exit 1 and a reason.
#[test]
fn serve_failures_exit_1() {
    let t = TempDir::new("serve-fail");
    let src = t.join("src");
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    let serve = |dir: &Path, listen: String| {
        Command::new(sync_bin())
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen)
            .arg("--key-file")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The address is taken.
    let out = serve(&src, server.addr.to_string());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
    // No such directory.
    let out = serve(&t.join("missing"), "127.0.0.1:0".into());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
}

/// A TCP relay on loopback between a client and `to`: copies both ways
/// and keeps every byte it saw, as an eavesdropper on the LAN would.
struct Relay {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        std::thread::spawn(move || {
            // Every connection the client makes, each relayed until either
            // side closes; the thread ends when the test drops nothing more
            // to accept (the listener lives as long as the thread).
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    break;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let kept = kept.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { addr, seen }
    }
}

/// F3: a relay between `pull` and `serve` read a SIP trunk password from
/// the replicated config. The link is encrypted now: the password and a
/// marker crossed (the replica has them) and the relay saw neither.
#[test]
fn nothing_crosses_the_link_in_clear() {
    let t = TempDir::new("clear");
    let src = t.join("src");
    let rep = t.join("rep");
    seed_tree(&src);
    let marker = b"MARKER-sip-trunk-password-7f3e9c";
    let mut big = noise(300_000, 9);
    big.extend_from_slice(marker);
    write(&src, "config/sip.conf", marker, 0o600);
    write(&src, "voicemail/100/msg0003.wav", &big, 0o640);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    let relay = Relay::start(server.addr);
    let s = summary(&pull(&rep, relay.addr, &key, &[]));
    assert_eq!(num(&s, "generation"), 1);
    assert_eq!(tree(&rep), tree(&src));
    let seen = relay.seen.lock().unwrap().clone();
    // The relay carried the round: at least the file data, in version 2
    // records.
    assert!(seen.len() > big.len(), "relay saw {} bytes", seen.len());
    assert!(seen.windows(3).any(|w| w == b"SD\x02"));
    for clear in [
        &marker[..],
        b"password=hunter2",
        b"extensions=32",
        b"msg0001.wav",
    ] {
        assert!(
            !seen.windows(clear.len()).any(|w| w == clear),
            "{} crossed in clear",
            String::from_utf8_lossy(clear)
        );
    }
}

/// F14: a key file that is readable by every user, or whose key is all
/// zero or a pattern, is refused by both commands with exit 2, naming the
/// file, before anything is created or a connection made.
#[test]
fn weak_or_world_readable_key_files_exit_2_naming_the_file() {
    let t = TempDir::new("weak");
    let src = t.join("src");
    seed_tree(&src);
    let zero = key_file(&t, "zero.key", &"00".repeat(32));
    let same = key_file(&t, "same.key", &"41".repeat(32));
    let counting = key_file(
        &t,
        "counting.key",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    let open = key_file(&t, "open.key", KEY);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (file, why) in [
        (&zero, "all zero"),
        (&same, "distinct byte values"),
        (&counting, "counting sequence"),
        (&open, "readable by every user"),
    ] {
        let rep = t.join("rep");
        // Nobody listens there: the key is refused before any dial.
        let out = pull(&rep, free_port(), file, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("--key-file") && err.contains(why), "{err}");
        assert!(!rep.exists(), "the replica was created");
        let out = Command::new(sync_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&src)
            .arg("--key-file")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(why),
            "{err}"
        );
        assert!(!err.contains("listening on"), "{err}");
        // The next key is checked the same way.
        let out = Command::new(sync_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&src)
            .arg("--key-file")
            .arg(key_file(&t, "good.key", KEY))
            .arg("--key-next")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--key-next") && err.contains(why), "{err}");
    }
}

/// Key rotation: `serve --key-next` accepts a replica that proves either
/// key, so each unit can move to the new key on its own; a third key is
/// still refused.
#[test]
fn serve_with_a_next_key_accepts_either_key() {
    let t = TempDir::new("rotate");
    let src = t.join("src");
    seed_tree(&src);
    let old = key_file(&t, "old.key", KEY);
    let new = key_file(&t, "new.key", OTHER_KEY);
    let third = key_file(
        &t,
        "third.key",
        "c4e1a7f3092b5d86e0f1c3a5b7d9e2f4061a8c3e5b7d9f1a2c4e6b8d0f1e3a5c",
    );
    let next = new.display().to_string();
    let server = Server::start(&src, &old, &["--key-next", &next]);
    for (i, key) in [&old, &new].into_iter().enumerate() {
        let rep = t.join(&format!("rep{i}"));
        let s = summary(&pull(&rep, server.addr, key, &[]));
        assert_eq!(num(&s, "generation"), 1);
        assert_eq!(tree(&rep), tree(&src));
    }
    let rep = t.join("rep-third");
    let out = pull(&rep, server.addr, &third, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong key"));
    assert!(tree(&rep).is_empty());
}

/// A peer on the link's old version (1, authenticated, not encrypted) is
/// named with both versions: by `serve` when an old replica dials it, and
/// by `pull` when it reaches an old source (which closes without a word).
#[test]
fn a_peer_on_the_old_version_is_named_with_both_versions() {
    use std::io::{Read, Write};
    let t = TempDir::new("version");
    let src = t.join("src");
    seed_tree(&src);
    let key = key_file(&t, "key", KEY);
    let server = Server::start(&src, &key, &[]);
    // An old replica's hello.
    let mut old = std::net::TcpStream::connect(server.addr).unwrap();
    let mut hello = b"SD\x01\x00\x00\x00".to_vec();
    hello.extend_from_slice(&32u32.to_le_bytes());
    hello.resize(78, 7);
    old.write_all(&hello).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    // What the old peer reads: a header of version 2, long enough for its
    // decoder to name that version.
    assert!(
        answer.len() >= 26 && answer.starts_with(b"SD\x02"),
        "{answer:?}"
    );
    let line = server.wait_line("frame version");
    assert!(
        line.contains("version 1") && line.contains("version 2"),
        "{line}"
    );

    // An old source: reads the hello it cannot parse and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let old_source = std::thread::spawn(move || {
        // Every dial of the one `pull --once`: it gives up at the first.
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            let _ = c.read(&mut buf);
        }
    });
    let out = pull(&t.join("rep"), addr, &key, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("version 1") && err.contains("version 2"),
        "{err}"
    );
    old_source.join().unwrap();
}
