//! The fuzz targets' seed corpora run as ordinary tests on stable.

use std::path::Path;

fn replay(target: &str, f: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n >= 4, "{target}: only {n} seeds");
}

#[test]
fn sync_frame_seeds() {
    let now = std::time::Instant::now();
    replay("sync_frame", |data| {
        sync_delta::fuzzing::sync_frame(now, data)
    });
}

#[test]
fn sync_apply_seeds() {
    let now = std::time::Instant::now();
    replay("sync_apply", |data| {
        sync_delta::fuzzing::sync_apply(now, data)
    });
}

/// The `sync_session` seeds are inputs the fuzzer found: each replays
/// with every property checked, and together they reach deep into both
/// sessions (a seed that no longer does after a change to the harness
/// shows here).
#[test]
fn sync_session_seeds() {
    use sync_delta::fuzzing::{SessionSummary, session_summary};
    let now = std::time::Instant::now();
    let sums = std::cell::RefCell::new(Vec::new());
    replay("sync_session", |data| {
        sums.borrow_mut().push(session_summary(now, data))
    });
    let sums = sums.into_inner();
    let reached = |what: &str, f: &dyn Fn(&SessionSummary) -> bool| {
        assert!(sums.iter().any(f), "no seed reaches {what}");
    };
    reached("two replica commits", &|s| s.replica && s.commits >= 2);
    reached("a commit that found divergence", &|s| {
        s.replica && s.diverged >= 1
    });
    reached("a replica restart after a commit", &|s| {
        s.replica && s.commits >= 1 && s.restarts >= 1
    });
    reached("replica refusals", &|s| s.replica && s.refused >= 5);
    reached("a source's recorded confirmation", &|s| {
        !s.replica && s.confirmed >= 1
    });
    reached("a source restart", &|s| !s.replica && s.restarts >= 1);
    reached("a source's delta", &|s| !s.replica && s.deltas >= 1);
    reached("source refusals", &|s| !s.replica && s.refused >= 5);
}

/// Rewrites the committed seed corpora from `sync_delta::fuzzing`'s seed
/// lists: `UPDATE_SEEDS=1 cargo test -p sync-delta --test fuzz_seeds`.
#[test]
fn seeds_are_current() {
    for (target, seeds) in [
        (
            "sync_frame",
            sync_delta::fuzzing::seeds_frame(std::time::Instant::now()),
        ),
        ("sync_apply", sync_delta::fuzzing::seeds_apply()),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(target);
        for (name, data) in seeds {
            let path = dir.join(&name);
            if std::env::var_os("UPDATE_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &data).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).ok(),
                Some(data),
                "{target}/{name}: run with UPDATE_SEEDS=1"
            );
        }
    }
}
