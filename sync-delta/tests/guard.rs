//! The mass-deletion guard counts lost content, not paths: renames, moves
//! and copies lose nothing, truncation does, and the losses of the rounds
//! within a sliding window of wall time add up. The window lives in
//! `.sync-delta/guard`: it survives a re-open and a crash at any step, and
//! a damaged file starts it afresh.

mod common;

use common::{Pair, noise, norm};
use std::time::{Duration, Instant};
use sync_delta::mem::{Fault, MemStore};
use sync_delta::{
    Refusal, Replica, ReplicaConfig, ReplicaEvent, SourceConfig, Storage, StoreError,
};

const KB: u64 = 1000;

/// `n` files of 1,000 distinct bytes each under `dir`.
fn files(src: &mut MemStore, dir: &str, n: usize) {
    for i in 0..n {
        src.put_file(
            &format!("{dir}/f{i:03}"),
            &noise(KB as usize, i as u64 + 1),
            0o644,
            1,
        );
    }
}

fn synced(src: MemStore, rc: ReplicaConfig) -> Pair {
    let mut pair = Pair::with_config(src, MemStore::new(), SourceConfig::default(), rc);
    pair.round().unwrap();
    pair.assert_synced();
    pair
}

fn refusals(pair: &Pair) -> Vec<Refusal> {
    pair.events
        .iter()
        .filter_map(|e| match e {
            ReplicaEvent::Refused(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn committed(pair: &Pair) -> usize {
    pair.events
        .iter()
        .filter(|e| matches!(e, ReplicaEvent::Committed { .. }))
        .count()
}

/// Removes files `from..to` of `data/`.
fn delete(pair: &mut Pair, from: usize, to: usize) {
    for i in from..to {
        pair.src.remove_tree(&format!("data/f{i:03}"));
    }
}

/// A language pack re-laid out: a folder of 578 prompts renamed, not a
/// byte lost. The old guard counted 578 deleted paths of 580 and refused.
#[test]
fn a_folder_rename_of_578_prompts_passes() {
    let mut src = MemStore::new();
    for i in 0..578u64 {
        src.put_file(
            &format!("lang/en/prompts/p{i:03}.wav"),
            &noise(2_000, i + 1),
            0o644,
            1,
        );
    }
    src.put_file("etc/pbx.conf", b"lang=en\n", 0o644, 1);
    let mut pair = synced(src, ReplicaConfig::default());
    pair.events.clear();
    pair.src.move_tree("lang/en", "lang/en-1");
    pair.src.put_file("etc/pbx.conf", b"lang=en-1\n", 0o644, 2);
    pair.round().unwrap();
    assert_eq!(refusals(&pair), vec![], "a rename loses no content");
    pair.assert_synced();
    let renamed = pair.events.iter().find_map(|e| match e {
        ReplicaEvent::Committed {
            renamed, deleted, ..
        } => Some((*renamed, *deleted)),
        _ => None,
    });
    assert_eq!(renamed, Some((578, 0)));
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 0);
}

/// Every file truncated to 0 bytes keeps every path and loses all the
/// content: refused until confirmed (the old guard let it through).
#[test]
fn truncating_every_file_is_refused() {
    let mut src = MemStore::new();
    files(&mut src, "data", 40);
    let mut pair = synced(src, ReplicaConfig::default());
    let before = norm(&pair.dst);
    for i in 0..40 {
        pair.src.put_file(&format!("data/f{i:03}"), b"", 0o644, 5);
    }
    pair.round().unwrap();
    let refusal = Refusal::MassDeletion {
        losing: 40 * KB,
        lost: 0,
        total: 40 * KB,
        limit: 20 * KB,
    };
    assert_eq!(refusals(&pair), vec![refusal]);
    assert_eq!(pair.replica.status(pair.wall).refused, Some(refusal));
    assert_eq!(norm(&pair.dst), before, "a refused round changes nothing");

    // Shrinking is loss too: half of each file's bytes, just over half in all.
    pair.events.clear();
    for i in 0..40u64 {
        let keep = if i == 0 { 499 } else { 500 };
        let data = noise(KB as usize, i + 1);
        pair.src
            .put_file(&format!("data/f{i:03}"), &data[..keep], 0o644, 6);
    }
    pair.round().unwrap();
    assert_eq!(
        refusals(&pair),
        vec![Refusal::MassDeletion {
            losing: 20 * KB + 1,
            lost: 0,
            total: 40 * KB,
            limit: 20 * KB,
        }]
    );

    pair.replica.confirm_deletions();
    pair.round().unwrap();
    pair.assert_synced();
    assert_eq!(pair.replica.status(pair.wall).refused, None);
}

/// Deleting just under half of what is left, round after round, empties
/// the tree in a few rounds unless the rounds' losses add up: the round at
/// which the window's total crosses half of the tree is refused.
#[test]
fn just_under_half_each_round_is_refused_once_the_window_crosses() {
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, ReplicaConfig::default());
    // Round 1: 49 of 100 files, 49 % of the content: passes.
    delete(&mut pair, 0, 49);
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(refusals(&pair), vec![]);
    pair.assert_synced();
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 49 * KB);
    // Round 2: 25 of the 51 left (49 % of them; alone it would pass), but
    // 74 % of the tree within the window: refused.
    delete(&mut pair, 49, 74);
    pair.events.clear();
    let before = norm(&pair.dst);
    pair.round().unwrap();
    assert_eq!(
        refusals(&pair),
        vec![Refusal::MassDeletion {
            losing: 25 * KB,
            lost: 49 * KB,
            total: 100 * KB,
            limit: 50 * KB,
        }]
    );
    assert_eq!(norm(&pair.dst), before);

    // Smaller steps cross later: 20 % a round passes twice, not thrice.
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, ReplicaConfig::default());
    for (k, pass) in [true, true, false].into_iter().enumerate() {
        delete(&mut pair, k * 20, k * 20 + 20);
        pair.events.clear();
        pair.round().unwrap();
        assert_eq!(refusals(&pair).is_empty(), pass, "round {}", k + 1);
    }
    // The operator confirms: the round passes, and what the window held is
    // confirmed with it; the next 20 % passes on its own.
    pair.replica.confirm_deletions();
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(refusals(&pair), vec![]);
    pair.assert_synced();
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 0);
    delete(&mut pair, 60, 80);
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(refusals(&pair), vec![]);
    pair.assert_synced();
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 20 * KB);
}

/// Losses older than the window no longer count: the wall time (the
/// driver's) moves them out.
#[test]
fn the_window_slides_out_after_its_hours() {
    let rc = ReplicaConfig {
        mass_delete_window: Duration::from_secs(24 * 3600),
        ..ReplicaConfig::default()
    };
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, rc);
    delete(&mut pair, 0, 30);
    pair.round().unwrap();
    pair.assert_synced();
    // 23 hours later, 30 more: 60 % within the window, refused.
    pair.wall += Duration::from_secs(23 * 3600);
    pair.now += Duration::from_secs(23 * 3600);
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 30 * KB);
    delete(&mut pair, 30, 60);
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(refusals(&pair).len(), 1);
    // Past 24 hours the first round has left the window: 30 of the 70
    // left, 43 %, passes.
    pair.wall += Duration::from_secs(3600);
    pair.now += Duration::from_secs(3600);
    assert_eq!(pair.replica.status(pair.wall).lost_in_window, 0);
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(refusals(&pair), vec![]);
    pair.assert_synced();
    assert_eq!(committed(&pair), 1);

    // A window of zero: each round on its own.
    let rc = ReplicaConfig {
        mass_delete_window: Duration::ZERO,
        ..ReplicaConfig::default()
    };
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, rc);
    for (k, n) in [(0, 49), (49, 74), (74, 87)] {
        delete(&mut pair, k, n);
        pair.events.clear();
        pair.round().unwrap();
        assert_eq!(refusals(&pair), vec![], "rounds up to {n}");
        pair.assert_synced();
    }
}

/// A replica opened again (a restart) keeps the window.
#[test]
fn the_window_survives_a_reopen() {
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, ReplicaConfig::default());
    delete(&mut pair, 0, 30);
    pair.round().unwrap();
    pair.assert_synced();
    assert!(pair.dst.stat(".sync-delta/guard").is_ok());
    let (mut replica, _) =
        Replica::open(ReplicaConfig::default(), pair.now, &mut pair.dst).unwrap();
    replica.handle_connected(pair.now);
    assert_eq!(replica.status(pair.wall).lost_in_window, 30 * KB);
    assert_eq!(replica.stats().guard_state_resets, 0);
    pair.replica = replica;
    delete(&mut pair, 30, 60);
    pair.events.clear();
    pair.round().unwrap();
    assert_eq!(
        refusals(&pair),
        vec![Refusal::MassDeletion {
            losing: 30 * KB,
            lost: 30 * KB,
            total: 100 * KB,
            limit: 50 * KB,
        }]
    );
}

/// A fault (an error, or a power-off that loses unsynced data) at every
/// step of a round that loses content: after it, and a re-open, the window
/// counts exactly the rounds the tree committed.
fn window_under(fault: Fault) {
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, ReplicaConfig::default());
    delete(&mut pair, 0, 30);
    pair.round().unwrap();
    pair.assert_synced();
    let gen_n = pair.replica.generation().number;
    // The round under test: 10 % more (40 % in the window, passes).
    delete(&mut pair, 30, 40);
    let (src, dst, wall) = (pair.src.clone(), pair.dst.clone(), pair.wall);
    let mut clean = Pair::with_config(
        src.clone(),
        dst.clone(),
        SourceConfig::default(),
        ReplicaConfig::default(),
    );
    clean.wall = wall;
    let before = clean.dst.steps();
    clean.round().unwrap();
    assert_eq!(clean.replica.status(clean.wall).lost_in_window, 40 * KB);
    let total = clean.dst.steps() - before;
    assert!(total > 10, "only {total} steps");
    let (mut saw_n, mut saw_n1) = (false, false);
    for k in 1..=total {
        let mut p = Pair::with_config(
            src.clone(),
            dst.clone(),
            SourceConfig::default(),
            ReplicaConfig::default(),
        );
        p.wall = wall;
        p.dst.fail_at(p.dst.steps() + k, fault);
        let _ = p.round();
        let mut after = p.dst;
        after.reboot();
        let (r, _) = Replica::open(ReplicaConfig::default(), Instant::now(), &mut after).unwrap();
        let lost = r.status(wall + Duration::from_secs(61)).lost_in_window;
        let g = r.generation().number;
        if g == gen_n {
            saw_n = true;
            assert_eq!(lost, 30 * KB, "step {k} ({fault:?}): at N");
        } else {
            saw_n1 = true;
            assert_eq!(g, gen_n + 1, "step {k}");
            assert_eq!(lost, 40 * KB, "step {k} ({fault:?}): at N+1");
        }
        assert_eq!(r.stats().guard_state_resets, 0, "step {k}: {fault:?}");
    }
    assert!(saw_n && saw_n1, "both outcomes occur across the steps");
}

#[test]
fn the_window_survives_a_power_off_at_every_step() {
    window_under(Fault::PowerOff);
}

#[test]
fn the_window_survives_an_error_at_every_step() {
    window_under(Fault::Error);
}

/// A window file that does not decode (damaged, truncated, foreign) is a
/// counter and an event, and an empty window: opening never fails on it.
#[test]
fn a_corrupt_window_file_is_started_afresh() {
    let mut src = MemStore::new();
    files(&mut src, "data", 100);
    let mut pair = synced(src, ReplicaConfig::default());
    delete(&mut pair, 0, 30);
    pair.round().unwrap();
    let good = common::read(&mut pair.dst, ".sync-delta/guard");
    assert!(!good.is_empty());
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, bytes) in [
        ("flipped", flipped),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
        ("foreign", b"not a window file at all".to_vec()),
    ] {
        let mut dst = pair.dst.clone();
        dst.put_file(".sync-delta/guard", &bytes, 0o600, 1);
        let (mut r, _) = Replica::open(ReplicaConfig::default(), pair.now, &mut dst).unwrap();
        assert_eq!(r.stats().guard_state_resets, 1, "{what}");
        assert_eq!(
            r.poll_event(),
            Some(ReplicaEvent::GuardStateReset(StoreError::Corrupt)),
            "{what}"
        );
        assert_eq!(r.status(pair.wall).lost_in_window, 0, "{what}");
    }
    // A missing file is an empty window, nothing to report.
    let mut dst = pair.dst.clone();
    dst.remove_file(".sync-delta/guard").unwrap();
    let (mut r, _) = Replica::open(ReplicaConfig::default(), pair.now, &mut dst).unwrap();
    assert_eq!(r.stats().guard_state_resets, 0);
    assert_eq!(r.poll_event(), None);
    assert_eq!(r.status(pair.wall).lost_in_window, 0);
    // And the replica goes on: the next round writes a good file again.
    let mut p = Pair::with_config(
        pair.src.clone(),
        dst,
        SourceConfig::default(),
        ReplicaConfig::default(),
    );
    p.wall = pair.wall;
    delete(&mut p, 30, 40);
    p.round().unwrap();
    p.assert_synced();
    assert_eq!(p.replica.status(p.wall).lost_in_window, 10 * KB);
}
