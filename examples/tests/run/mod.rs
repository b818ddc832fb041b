//! Running this crate's example programs from a test, as a user runs them:
//! find (or build) the binary, run it to its end with a time limit, and end
//! it by its process id if the test stops first.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The example binary `name` beside this test's target directory, built
/// when missing (`cargo test --test X` builds only that test; `cargo test`
/// builds the examples too).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>-… → target/<profile>/examples/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join(name);
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "examples", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap_or_else(|e| panic!("cargo build --example {name}: {e}"));
        assert!(status.success(), "cargo build --example {name} failed");
    }
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// A child process ended by its id when dropped.
pub struct Kill(pub Option<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs example `name` until it exits, at most `limit`: its exit status,
/// stdout and stderr. Past the limit it is killed and the test fails with
/// what it printed so far.
pub fn run_to_end(name: &str, limit: Duration) -> (ExitStatus, String, String) {
    let child = Command::new(example_bin(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let mut guard = Kill(Some(child));
    let child = guard.0.as_mut().expect("child");
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the example") {
            break st;
        }
        if started.elapsed() > limit {
            drop(guard);
            panic!(
                "{name} still running after {limit:?}; printed so far:\n{}",
                out.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.0 = None;
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    (status, out, err)
}
