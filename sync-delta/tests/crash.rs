//! Crash consistency: a fault at every mutating step of a round (an error,
//! or a power-off that loses unsynced data) leaves the replica at exactly
//! generation N or N+1, and the next round reaches N+1; also for a round
//! whose large files are patched where they lie.

mod common;

use common::{Norm, Pair, noise, norm};
use std::collections::BTreeMap;
use sync_delta::mem::{Fault, MemStore};
use sync_delta::{Replica, ReplicaConfig, SourceConfig};

fn rc() -> ReplicaConfig {
    ReplicaConfig {
        mass_delete_fraction: 1.0,
        mass_delete_window: std::time::Duration::ZERO,
        ..ReplicaConfig::default()
    }
}

/// Generation N on both sides, then edits of every kind on the source.
fn scenario() -> (
    MemStore,
    MemStore,
    BTreeMap<String, Norm>,
    BTreeMap<String, Norm>,
) {
    let mut src = MemStore::new();
    src.put_file("etc/pbx.conf", b"[general]\nport=5060\n", 0o644, 10);
    src.put_file("etc/users.conf", b"100,200,300", 0o600, 10);
    src.put_file("voice/100/msg1.wav", &noise(90_000, 1), 0o640, 10);
    src.put_file("voice/100/msg2.wav", &noise(5_000, 2), 0o640, 10);
    src.put_file("rec/a.wav", &noise(150_000, 3), 0o640, 10);
    src.put_file("old/x", b"x", 0o644, 10);
    src.put_file("turns-into-dir", b"f", 0o644, 10);
    src.put_dir("turns-into-file", 0o755);
    src.put_symlink("current", b"voice/100");
    let mut pair = Pair::with_config(src, MemStore::new(), SourceConfig::default(), rc());
    pair.round().unwrap();
    pair.assert_synced();
    let n = norm(&pair.dst);
    let mut src = pair.src;
    let mut t = 100;
    let mut next = || {
        t += 1;
        t
    };
    // modify a large file in the middle (delta), append to another
    let mut d = noise(150_000, 3);
    d[70_000..70_100].fill(9);
    src.put_file("rec/a.wav", &d, 0o640, next());
    let mut d = noise(90_000, 1);
    d.extend_from_slice(&noise(7_000, 7));
    src.put_file("voice/100/msg1.wav", &d, 0o640, next());
    // rename (renumbered voicemail), chmod, new file in a new dir
    src.move_tree("voice/100/msg2.wav", "voice/100/msg0.wav");
    src.chmod("etc/users.conf", 0o640);
    src.put_file("voice/200/msg1.wav", &noise(3_000, 8), 0o640, next());
    // delete a dir, change types, retarget a symlink
    src.remove_tree("old");
    src.remove_tree("turns-into-dir");
    src.put_file("turns-into-dir/inner", b"i", 0o644, next());
    src.remove_tree("turns-into-file");
    src.put_file("turns-into-file", b"now a file", 0o644, next());
    src.remove_tree("current");
    src.put_symlink("current", b"voice/200");
    let n1 = norm(&src);
    (src, pair.dst, n, n1)
}

/// Generation N with two large-ish files, then an append with an
/// overwrite in one, a cut in the other, and a small file edited: the
/// large ones go in place.
fn in_place_scenario() -> (
    MemStore,
    MemStore,
    BTreeMap<String, Norm>,
    BTreeMap<String, Norm>,
) {
    let mut src = MemStore::new();
    src.put_file("voice/big.wav", &noise(600_000, 11), 0o640, 10);
    src.put_file("rec/long.wav", &noise(300_000, 12), 0o640, 10);
    src.put_file("etc/pbx.conf", b"[general]\nport=5060\n", 0o644, 10);
    let mut pair = Pair::with_config(src, MemStore::new(), SourceConfig::default(), rc());
    pair.round().unwrap();
    pair.assert_synced();
    let n = norm(&pair.dst);
    let mut src = pair.src;
    let mut d = noise(600_000, 11);
    d[200_000..202_000].fill(3);
    d.extend_from_slice(&noise(50_000, 13));
    src.put_file("voice/big.wav", &d, 0o600, 20);
    let mut d = noise(300_000, 12);
    d.truncate(250_000);
    src.put_file("rec/long.wav", &d, 0o640, 21);
    src.put_file("etc/pbx.conf", b"[general]\nport=5062\n", 0o644, 22);
    let n1 = norm(&src);
    (src, pair.dst, n, n1)
}

/// Generation N, then a round that changes most of the tree: its record
/// goes to a new base (the manifest written in pieces) rather than to the
/// log, before the journal goes.
fn rewrite_scenario() -> (
    MemStore,
    MemStore,
    BTreeMap<String, Norm>,
    BTreeMap<String, Norm>,
) {
    let mut src = MemStore::new();
    for (i, p) in ["etc/a.conf", "etc/b.conf", "voice/1.wav", "voice/2.wav"]
        .iter()
        .enumerate()
    {
        src.put_file(p, &noise(2_000, i as u64), 0o640, 10);
    }
    let mut pair = Pair::with_config(src, MemStore::new(), SourceConfig::default(), rc());
    pair.round().unwrap();
    pair.assert_synced();
    let n = norm(&pair.dst);
    let mut src = pair.src;
    for (i, p) in ["etc/a.conf", "etc/b.conf", "voice/1.wav", "voice/2.wav"]
        .iter()
        .enumerate()
    {
        src.put_file(p, &noise(2_500, 10 + i as u64), 0o640, 20);
    }
    src.put_file("voice/3.wav", &noise(1_000, 20), 0o640, 21);
    let n1 = norm(&src);
    (src, pair.dst, n, n1)
}

type Scenario = fn() -> (
    MemStore,
    MemStore,
    BTreeMap<String, Norm>,
    BTreeMap<String, Norm>,
);

fn check_fault(fault: Fault) {
    check_fault_in(scenario, fault, 0);
}

/// A fault at every step of `scenario`'s round, whose clean run patches
/// `in_place` files where they lie.
fn check_fault_in(scenario: Scenario, fault: Fault, in_place: u64) {
    let (src, dst, n, n1) = scenario();
    // Count the steps of a clean round.
    let mut clean = Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
    let before = clean.dst.steps();
    clean.round().unwrap();
    assert_eq!(norm(&clean.dst), n1);
    assert!(clean.replica.stats().in_place >= in_place);
    let total = clean.dst.steps() - before;
    assert!(total > 20, "only {total} steps");
    let (mut saw_n, mut saw_n1) = (false, false);
    // A power cut in the middle of the in-place writes leaves a tree that
    // is neither generation until it is opened again.
    let mut finished_on_open = false;
    for k in 1..=total {
        let mut pair = Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
        let at = pair.dst.steps() + k;
        pair.dst.fail_at(at, fault);
        let r = pair.round();
        assert!(
            r.is_err() || fault == Fault::Error,
            "step {k}: a power-off must surface"
        );
        let mut dst_after = pair.dst;
        if fault == Fault::PowerOff {
            dst_after.reboot();
            let mixed = norm(&dst_after) != n && norm(&dst_after) != n1;
            let now = std::time::Instant::now();
            let (_r, report) = Replica::open(rc(), now, &mut dst_after).unwrap();
            if mixed {
                assert!(
                    report.rolled_forward,
                    "step {k}: a mixed tree rolls forward"
                );
                finished_on_open = true;
            }
        }
        let got = norm(&dst_after);
        if got == n {
            saw_n = true;
        } else if got == n1 {
            saw_n1 = true;
        } else {
            panic!("step {k} of {total} ({fault:?}): the tree is neither generation N nor N+1");
        }
        // The next round reaches N+1.
        let mut again = Pair::with_config(src.clone(), dst_after, SourceConfig::default(), rc());
        again.round().unwrap();
        assert_eq!(norm(&again.dst), n1, "step {k}: next round");
        assert!(
            again.dst.list_stage_is_empty(),
            "step {k}: stage left behind"
        );
    }
    assert!(saw_n && saw_n1, "both outcomes occur across the steps");
    if in_place > 0 && fault == Fault::PowerOff {
        assert!(finished_on_open, "some power cut fell within the patches");
    }
}

trait StageEmpty {
    fn list_stage_is_empty(&mut self) -> bool;
}

impl StageEmpty for MemStore {
    fn list_stage_is_empty(&mut self) -> bool {
        use sync_delta::Storage;
        self.list_dir(".sync-delta/stage").unwrap().is_empty()
    }
}

#[test]
fn power_off_at_every_step() {
    check_fault(Fault::PowerOff);
}

#[test]
fn error_at_every_step() {
    check_fault(Fault::Error);
}

#[test]
fn power_off_at_every_step_of_an_in_place_round() {
    check_fault_in(in_place_scenario, Fault::PowerOff, 2);
}

#[test]
fn error_at_every_step_of_an_in_place_round() {
    check_fault_in(in_place_scenario, Fault::Error, 2);
}

/// The rewriting round's clean run leaves the log empty (its record went
/// to a new base); a fault at any of its steps leaves N or N+1.
#[test]
fn a_fault_at_every_step_of_a_round_written_as_a_new_base() {
    use sync_delta::Storage;
    let (src, dst, _, n1) = rewrite_scenario();
    let mut clean = Pair::with_config(src, dst, SourceConfig::default(), rc());
    clean.round().unwrap();
    assert_eq!(norm(&clean.dst), n1);
    assert_eq!(clean.replica.generation().number, 2);
    assert_eq!(clean.dst.stat(".sync-delta/manifest.log").unwrap().size, 0);
    check_fault_in(rewrite_scenario, Fault::PowerOff, 0);
    check_fault_in(rewrite_scenario, Fault::Error, 0);
}

#[test]
fn settle_rolls_back_an_uncommitted_round() {
    let (src, dst, n, _) = scenario();
    let mut pair = Pair::with_config(src, dst, SourceConfig::default(), rc());
    pair.now += std::time::Duration::from_secs(61);
    pair.replica.handle_timeout(pair.now);
    // Deliver only part of the round: the manifest and the first data.
    let mut delivered = 0;
    while let Some(m) = pair.replica.poll_transmit() {
        pair.source
            .handle_message(pair.now, pair.wall, m, &mut pair.src)
            .unwrap();
    }
    while let Some(m) = pair.source.poll_transmit(&mut pair.src) {
        pair.replica
            .handle_message(pair.now, m, &mut pair.dst)
            .unwrap();
        delivered += 1;
        if delivered == 4 {
            break;
        }
    }
    assert!(pair.replica.status(pair.wall).round_in_progress);
    let g = pair.replica.settle(&mut pair.dst).unwrap();
    assert_eq!(g.number, 1);
    assert_eq!(norm(&pair.dst), n);
    assert!(pair.dst.list_stage_is_empty());
    assert!(!pair.replica.status(pair.wall).round_in_progress);
}
