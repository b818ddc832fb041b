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
    replay("sync_apply", sync_delta::fuzzing::sync_apply);
}

/// Rewrites the committed seed corpora from `sync_delta::fuzzing`'s seed
/// lists: `UPDATE_SEEDS=1 cargo test -p sync-delta --test fuzz_seeds`.
#[test]
fn seeds_are_current() {
    for (target, seeds) in [
        ("sync_frame", sync_delta::fuzzing::seeds_frame()),
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
