//! The `peer_handshake` fuzz target's seed corpus, run as an ordinary test
//! on stable (as `fuzz_seeds.rs` does for the other sync-delta targets).

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/peer_handshake")
}

#[test]
fn peer_handshake_seeds() {
    let now = std::time::Instant::now();
    let mut n = 0;
    for e in std::fs::read_dir(dir()).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        sync_delta::fuzzing::peer_handshake(now, &data);
        n += 1;
    }
    assert!(n >= 4, "peer_handshake: only {n} seeds");
}

/// The seeds reach what their names say: the genuine handshake and its
/// frames at both ends, the pre-authentication bound, a guessed key.
#[test]
fn peer_handshake_seeds_reach_their_cases() {
    use sync_delta::LinkError;
    let now = std::time::Instant::now();
    let run = |name: &str| {
        let (_, data) = sync_delta::fuzzing::seeds_handshake()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap();
        sync_delta::fuzzing::peer_handshake(now, &data)
    };
    let [l, d] = run("genuine_then_frames");
    assert!(l.established && d.established);
    assert_eq!((l.frames, d.frames), (2, 2));
    let [l, _] = run("rotation_next_key");
    assert!(l.established && l.frames == 1);
    let [l, d] = run("claimed_64k");
    assert!(matches!(l.error, Some(LinkError::PreAuthOverflow { .. })));
    assert!(matches!(d.error, Some(LinkError::PreAuthOverflow { .. })));
    assert_eq!(l.stats.pre_auth_overflows, 1);
    let [l, d] = run("flood_past_window");
    assert!(matches!(l.error, Some(LinkError::PreAuthOverflow { .. })));
    assert!(matches!(d.error, Some(LinkError::PreAuthOverflow { .. })));
    let [l, _] = run("wrong_key_then_genuine");
    assert_eq!(l.error, Some(LinkError::BadProof));
    let [l, d] = run("truncated_then_timeout");
    assert_eq!(l.error, Some(LinkError::HandshakeTimeout));
    assert_eq!(d.error, Some(LinkError::HandshakeTimeout));
    let [l, _] = run("other_version");
    assert!(matches!(
        l.error,
        Some(LinkError::PeerVersion { theirs: 1, .. })
    ));
}

/// Rewrites the committed corpus from `sync_delta::fuzzing::seeds_handshake`:
/// `UPDATE_SEEDS=1 cargo test -p sync-delta --test fuzz_seeds_handshake`.
#[test]
fn peer_handshake_seeds_are_current() {
    for (name, data) in sync_delta::fuzzing::seeds_handshake() {
        let path = dir().join(&name);
        if std::env::var_os("UPDATE_SEEDS").is_some() {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &data).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(data),
            "peer_handshake/{name}: run with UPDATE_SEEDS=1"
        );
    }
}
