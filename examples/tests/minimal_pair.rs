//! The `minimal-pair` example, the pair engine driven by a single-threaded
//! std loop, run as a user runs it: it must exit 0 after the election, a
//! replicated file, the takeover and the swap back. Loopback only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Well above the example's run time (each of its steps gives up after
/// 20 s) in a debug build on a busy machine.
const LIMIT: Duration = Duration::from_secs(150);

fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/minimal_pair-… → target/debug/examples/minimal-pair
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join("minimal-pair");
    if !bin.exists() {
        // `cargo test --test minimal_pair` builds only this target; `cargo
        // test` builds the examples too.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "examples", "--example", "minimal-pair"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example minimal-pair");
        assert!(
            status.success(),
            "cargo build --example minimal-pair failed"
        );
    }
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// Ends the example by its pid if the test stops before it does.
struct Kill(Option<std::process::Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn minimal_pair_walks_through_failover_and_swap_and_exits_0() {
    let child = Command::new(example_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minimal-pair");
    let mut guard = Kill(Some(child));
    let child = guard.0.as_mut().expect("child");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for minimal-pair") {
            break st;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "minimal-pair still running after {LIMIT:?}; printed so far:\n{}",
                out.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.0 = None;
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    assert!(
        status.success(),
        "minimal-pair exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Each step, in the order the example walks through them.
    let steps = [
        "pbx-a: Backup -> Master (MasterDown)",
        "-- election: pbx-a Master at",
        "pbx-b Backup, hears it at",
        "pbx-a writes voicemail/100/msg0001.txt",
        "pbx-b: sync round committed generation 1",
        "-- replicated: ",
        "pbx-b/voicemail/100/msg0001.txt at",
        "-- pbx-a stopped at",
        "pbx-b: Backup -> Master (MasterDown)",
        "pbx-b: plan Takeover started",
        "pbx-b: milestone AddressClaimed",
        "pbx-b: plan Takeover finished: Completed",
        "pbx-b: milestone Done",
        "-- takeover: pbx-b Master",
        "-- pbx-a restarts at",
        "-- rejoined: pbx-a Backup, hears pbx-b at",
        "-- operator on pbx-b at",
        "pbx-b: Master -> Backup (Release)",
        "pbx-a: Backup -> Master (ArmedTakeover)",
        "-- swapped back: pbx-a Master at",
        "-- the swap procedure on pbx-b completed",
        "minimal-pair: done in",
    ];
    let mut from = 0;
    for step in steps {
        match out[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => panic!("`{step}` missing (or out of order) in:\n{out}"),
        }
    }
}
