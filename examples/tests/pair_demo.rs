//! The `pair` demo, the README's first command, run as a user runs it: it
//! must exit 0 and print its timeline (election, sync, takeover with its
//! milestones, rejoin, swap, and the table of what it measured).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Well above the demo's run time in a debug build on a busy machine.
const LIMIT: Duration = Duration::from_secs(90);

fn pair_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/pair_demo-… → target/debug/examples/pair
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join("pair");
    if !bin.exists() {
        // `cargo test --test pair_demo` builds only this target; `cargo
        // test` builds the examples too.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "examples", "--example", "pair"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example pair");
        assert!(status.success(), "cargo build --example pair failed");
    }
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// Ends the demo by pid if the test stops before it does.
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
fn pair_demo_prints_its_timeline_and_exits_0() {
    let child = Command::new(pair_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pair");
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
        if let Some(st) = child.try_wait().expect("wait for pair") {
            break st;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pair still running after {LIMIT:?}; printed so far:\n{}",
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
        "pair exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Each step, in the order the demo walks through them.
    let steps = [
        "cold start: pbx-a boots (priority 150)",
        "pbx-a is Master after",
        "pbx-b is Backup",
        "sync: pbx-b holds generation",
        "pbx-a status: \"Backup device with ID pbx-b is UP (Active mode)\"",
        "a new voicemail on pbx-a is on pbx-b",
        "pbx-a loses power",
        "pbx-b is Master",
        "pbx-b takeover timeline (from detection):",
        "Detected",
        "AddressClaimed",
        "ServiceReady",
        "Phones",
        "Done",
        "data-loss window:",
        "phones:",
        "pbx-a powers up again",
        "pbx-a hears pbx-b and stays Backup",
        "pbx-a synced from pbx-b",
        "pbx-b status: \"Backup device with ID pbx-a is UP (Active mode)\"",
        "operator on pbx-b: \"Swap Master and Backup\"",
        "swap accepted",
        "swap done in",
        "measured:",
        "election (cold start)",
        "first sync round",
        "failover, last advertisement to Master",
        "takeover, detection to done",
        "data-loss window",
        "swap, request to done",
        "pair: done in",
    ];
    let mut from = 0;
    for step in steps {
        match out[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => panic!("`{step}` missing (or out of order) in:\n{out}"),
        }
    }
    // The new voicemail made it across, and the takeover re-homed phones.
    assert!(
        out.contains("(next round): true"),
        "voicemail not replicated:\n{out}"
    );
    assert!(
        out.contains("licences stayed on pbx-a: true"),
        "licences replicated:\n{out}"
    );
    let phones = out
        .lines()
        .find(|l| l.contains("] phones: "))
        .expect("phones line");
    assert!(
        phones.contains("49 re-homed, 1 listed for a person"),
        "{phones}"
    );
}
