//! A Backup whose tree diverged locally from its generation (a stray file
//! or symlink where the Master makes a directory, a tracked file replaced
//! by a directory or the reverse, a tracked directory deleted): the round
//! moves what is in its way into quarantine and completes, also after a
//! power-off or an error at every storage step; opening never fails the
//! same way forever, even on a commit record left un-appliable.

mod common;

use common::{Norm, Pair, noise, norm};
use std::collections::BTreeMap;
use std::time::Instant;
use sync_delta::mem::{Fault, MemStore, Node};
use sync_delta::{Replica, ReplicaConfig, ReplicaEvent, SourceConfig, Storage};

/// A local change made while the unit was off; true when it was made.
type Local = fn(&mut MemStore) -> bool;

const STRAY: &[u8] = b"stray local data, not replicated";

fn rc() -> ReplicaConfig {
    ReplicaConfig {
        mass_delete_fraction: 1.0,
        mass_delete_window: std::time::Duration::ZERO,
        ..ReplicaConfig::default()
    }
}

/// One kind of local divergence.
struct Case {
    name: &'static str,
    /// Edits on the source after generation N (each case also edits
    /// `etc/pbx.conf`, a path the divergence does not touch).
    source: fn(&mut MemStore),
    /// What happened on the Backup's tree after generation N.
    local: fn(&mut MemStore),
    /// Paths the divergence touches (excluded from the N / N+1 check).
    affected: &'static [&'static str],
    /// What must survive, in the tree or in quarantine, exactly once.
    kept: Option<fn(&Node) -> bool>,
}

fn stray_file(n: &Node) -> bool {
    matches!(n, Node::File { data, .. } if data == STRAY)
}

fn stray_link(n: &Node) -> bool {
    matches!(n, Node::Symlink { target, .. } if target == b"/etc")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stray file where a directory comes",
            source: |s| s.put_file("voice/300/msg1.wav", &noise(3_000, 30), 0o640, 301),
            local: |d| d.put_file("voice/300", STRAY, 0o644, 7),
            affected: &["voice/300"],
            kept: Some(stray_file),
        },
        Case {
            name: "stray symlink where a directory comes",
            source: |s| s.put_file("voice/300/msg1.wav", &noise(3_000, 30), 0o640, 301),
            local: |d| d.put_symlink("voice/300", b"/etc"),
            affected: &["voice/300"],
            kept: Some(stray_link),
        },
        Case {
            name: "stray file deep where directories come",
            source: |s| s.put_file("voice/300/a/b/msg1.wav", &noise(3_000, 31), 0o640, 301),
            local: |d| d.put_file("voice/300/a", STRAY, 0o644, 7),
            affected: &["voice/300"],
            kept: Some(stray_file),
        },
        Case {
            name: "stray directory where a file comes",
            source: |s| s.put_file("etc/new.conf", b"new", 0o644, 301),
            local: |d| d.put_file("etc/new.conf/inside", STRAY, 0o644, 7),
            affected: &["etc/new.conf"],
            kept: Some(stray_file),
        },
        Case {
            name: "tracked file replaced by a directory",
            source: |s| s.put_file("etc/users.conf", b"100,200,300,400", 0o600, 301),
            local: |d| {
                d.remove_tree("etc/users.conf");
                d.put_file("etc/users.conf/local", STRAY, 0o644, 7);
            },
            affected: &["etc/users.conf"],
            kept: Some(stray_file),
        },
        Case {
            name: "tracked file replaced by a directory, then deleted on the source",
            source: |s| s.remove_tree("etc/users.conf"),
            local: |d| {
                d.remove_tree("etc/users.conf");
                d.put_file("etc/users.conf/local", STRAY, 0o644, 7);
            },
            affected: &["etc/users.conf"],
            kept: Some(stray_file),
        },
        Case {
            name: "tracked directory replaced by a file",
            source: |s| s.put_file("voice/100/msg3.wav", &noise(4_000, 33), 0o640, 301),
            local: |d| {
                d.remove_tree("voice/100");
                d.put_file("voice/100", STRAY, 0o644, 7);
            },
            affected: &["voice/100"],
            kept: Some(stray_file),
        },
        Case {
            name: "tracked directory deleted (a missing parent)",
            source: |s| s.put_file("voice/100/msg3.wav", &noise(4_000, 33), 0o640, 301),
            local: |d| d.remove_tree("voice/100"),
            affected: &["voice/100"],
            kept: None,
        },
        Case {
            name: "all parents deleted",
            source: |s| s.put_file("voice/100/sub/msg9.wav", &noise(2_000, 34), 0o640, 301),
            local: |d| d.remove_tree("voice"),
            affected: &["voice"],
            kept: None,
        },
        Case {
            name: "a file deleted on the source in a directory deleted locally",
            source: |s| s.remove_tree("voice/100/msg1.wav"),
            local: |d| d.remove_tree("voice/100"),
            affected: &["voice/100"],
            kept: None,
        },
    ]
}

/// Generation N on both sides, then the case's edits: (source, Backup with
/// its divergence, N's view, N+1's view).
fn setup(
    case: &Case,
) -> (
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
    src.put_symlink("current", b"voice/100");
    let mut pair = Pair::with_config(src, MemStore::new(), SourceConfig::default(), rc());
    pair.round().unwrap();
    pair.assert_synced();
    let n = norm(&pair.dst);
    let mut src = pair.src;
    let mut dst = pair.dst;
    src.put_file("etc/pbx.conf", b"[general]\nport=5061\n", 0o644, 300);
    (case.source)(&mut src);
    (case.local)(&mut dst);
    dst.sync_all();
    let n1 = norm(&src);
    (src, dst, n, n1)
}

/// A view without the affected paths, and without directory mtimes (a
/// local change touches its parent's).
fn outside(v: &BTreeMap<String, Norm>, affected: &[&str]) -> BTreeMap<String, Norm> {
    v.iter()
        .filter(|(k, _)| {
            !affected
                .iter()
                .any(|a| *k == a || k.starts_with(&format!("{a}/")))
        })
        .map(|(k, v)| {
            let v = match v {
                Norm::Dir(mode, _) => Norm::Dir(*mode, 0),
                v => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn count(s: &MemStore, kept: Option<fn(&Node) -> bool>) -> usize {
    let Some(kept) = kept else { return 0 };
    s.nodes().values().filter(|n| kept(n)).count()
}

fn in_quarantine(s: &MemStore, kept: Option<fn(&Node) -> bool>) -> usize {
    let Some(kept) = kept else { return 0 };
    s.nodes()
        .iter()
        .filter(|(k, n)| k.starts_with(".sync-delta/quarantine/") && kept(n))
        .count()
}

/// Runs rounds until the Backup matches the source (at most three: the
/// round, the one that fetches what was missing, one to spare).
fn converge(mut pair: Pair, what: &str) -> Pair {
    for _ in 0..3 {
        pair.round()
            .unwrap_or_else(|e| panic!("{what}: round failed: {e}"));
        if norm(&pair.dst) == norm(&pair.src) {
            return pair;
        }
    }
    panic!("{what}: the Backup never caught up");
}

fn stage_empty(s: &mut MemStore) -> bool {
    s.list_dir(".sync-delta/stage").unwrap().is_empty()
}

#[test]
fn each_divergence_is_set_aside_and_the_round_completes() {
    for case in cases() {
        let (src, dst, _, n1) = setup(&case);
        let mut pair = Pair::with_config(src, dst, SourceConfig::default(), rc());
        pair.round()
            .unwrap_or_else(|e| panic!("{}: the round failed: {e}", case.name));
        let diverged = pair.events.iter().find_map(|e| match e {
            ReplicaEvent::Diverged(d) => Some(d.clone()),
            _ => None,
        });
        let d = diverged.unwrap_or_else(|| panic!("{}: no divergence reported", case.name));
        let stats = pair.replica.stats();
        assert_eq!(stats.quarantined, d.quarantined, "{}", case.name);
        assert_eq!(stats.missing, d.missing, "{}", case.name);
        if case.kept.is_some() {
            assert!(d.quarantined >= 1, "{}: {d:?}", case.name);
            let folder = d.folder.clone().unwrap();
            assert!(
                pair.replica.status(pair.wall).quarantine.contains(&folder),
                "{}: the status lists {folder}",
                case.name
            );
        }
        let mut pair = converge(pair, case.name);
        assert_eq!(norm(&pair.dst), n1, "{}", case.name);
        assert_eq!(
            in_quarantine(&pair.dst, case.kept),
            count(&pair.dst, case.kept),
            "{}: what was in the way is in quarantine",
            case.name
        );
        if case.kept.is_some() {
            assert_eq!(count(&pair.dst, case.kept), 1, "{}", case.name);
        }
        assert!(stage_empty(&mut pair.dst), "{}", case.name);
        // And it stays open-able, at the same generation.
        let g = pair.replica.generation().number;
        let (_, report) = Replica::open(rc(), Instant::now(), &mut pair.dst).unwrap();
        assert_eq!(report.generation.number, g, "{}", case.name);
    }
}

fn check_fault(fault: Fault) {
    for case in cases() {
        let (src, dst, n, n1) = setup(&case);
        let mut clean = Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
        let g = clean.replica.generation().number;
        let before = clean.dst.steps();
        clean.round().unwrap();
        let total = clean.dst.steps() - before;
        assert!(total > 10, "{}: only {total} steps", case.name);
        let (mut saw_n, mut saw_n1) = (false, false);
        for k in 1..=total {
            let what = format!("{} ({fault:?} at step {k} of {total})", case.name);
            let mut pair =
                Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
            let at = pair.dst.steps() + k;
            pair.dst.fail_at(at, fault);
            let r = pair.round();
            assert!(r.is_err() || fault == Fault::Error, "{what}: must surface");
            let mut after = pair.dst;
            after.reboot();
            let (_, report) = Replica::open(rc(), Instant::now(), &mut after)
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            // The round found the divergence before its commit record: a
            // record this version writes always applies as written.
            assert_eq!(report.repaired, None, "{what}");
            let got = outside(&norm(&after), case.affected);
            if got == outside(&n, case.affected) {
                saw_n = true;
                assert_eq!(report.generation.number, g, "{what}");
            } else if got == outside(&n1, case.affected) {
                saw_n1 = true;
                assert_eq!(report.generation.number, g + 1, "{what}");
            } else {
                panic!("{what}: the tree is neither generation N nor N+1");
            }
            if case.kept.is_some() {
                assert_eq!(count(&after, case.kept), 1, "{what}: lost or doubled");
            }
            let mut again = converge(
                Pair::with_config(src.clone(), after, SourceConfig::default(), rc()),
                &what,
            );
            assert_eq!(norm(&again.dst), n1, "{what}");
            assert_eq!(
                in_quarantine(&again.dst, case.kept),
                count(&again.dst, case.kept),
                "{what}"
            );
            assert!(stage_empty(&mut again.dst), "{what}: stage left behind");
        }
        assert!(saw_n && saw_n1, "{}: both outcomes occur", case.name);
    }
}

#[test]
fn divergence_under_power_off_at_every_step() {
    check_fault(Fault::PowerOff);
}

#[test]
fn divergence_under_an_error_at_every_step() {
    check_fault(Fault::Error);
}

/// A commit record that cannot be applied as written: the power went off
/// after the record was made durable, and before the tree was opened again
/// something took the place of a directory the record makes (or removed
/// the directory a file goes into), as an older version could leave it.
/// Opening clears the way, reaches N+1 and says so, at every such step.
#[test]
fn an_unappliable_commit_record_is_rolled_forward() {
    // Each applies the local change when it blocks the record's ops that
    // are still to be done, and says whether it did.
    let locals: [(&str, Local); 2] = [
        ("stray file", |d| {
            if d.nodes().contains_key("voice/300") {
                return false;
            }
            d.put_file("voice/300", STRAY, 0o644, 7);
            true
        }),
        ("deleted parent", |d| {
            if d.nodes().contains_key("voice/100/msg3.wav") {
                return false;
            }
            d.remove_tree("voice/100");
            true
        }),
    ];
    for (name, local) in locals {
        let case = Case {
            name,
            source: |s| {
                s.put_file("voice/300/msg1.wav", &noise(3_000, 30), 0o640, 301);
                s.put_file("voice/100/msg3.wav", &noise(4_000, 33), 0o640, 301);
            },
            local: |_| {},
            affected: &[],
            kept: None,
        };
        let (src, dst, _, n1) = setup(&case);
        let mut clean = Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
        let g = clean.replica.generation().number;
        let before = clean.dst.steps();
        clean.round().unwrap();
        let total = clean.dst.steps() - before;
        let mut wedges = 0;
        for k in 1..=total {
            let what = format!("{name}, power off at step {k} of {total}");
            let mut pair =
                Pair::with_config(src.clone(), dst.clone(), SourceConfig::default(), rc());
            let at = pair.dst.steps() + k;
            pair.dst.fail_at(at, Fault::PowerOff);
            let _ = pair.round();
            let mut after = pair.dst;
            after.reboot();
            if !after.nodes().contains_key(".sync-delta/journal") {
                continue;
            }
            if !local(&mut after) {
                continue;
            }
            wedges += 1;
            let (_, report) = Replica::open(rc(), Instant::now(), &mut after)
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            assert!(report.rolled_forward, "{what}");
            assert_eq!(report.generation.number, g + 1, "{what}");
            let repaired = report
                .repaired
                .unwrap_or_else(|| panic!("{what}: no repair reported"));
            assert!(repaired.quarantined + repaired.missing > 0, "{what}");
            assert!(!after.nodes().contains_key(".sync-delta/journal"));
            // Open again: nothing left to do, same generation.
            let (_, again) = Replica::open(rc(), Instant::now(), &mut after).unwrap();
            assert_eq!(again.generation.number, g + 1, "{what}");
            assert_eq!(again.repaired, None, "{what}");
            let mut pair = converge(
                Pair::with_config(src.clone(), after, SourceConfig::default(), rc()),
                &what,
            );
            assert_eq!(norm(&pair.dst), n1, "{what}");
            if name == "stray file" {
                assert_eq!(in_quarantine(&pair.dst, Some(stray_file)), 1, "{what}");
            }
            assert!(stage_empty(&mut pair.dst), "{what}");
        }
        assert!(wedges > 0, "{name}: no step left a record to roll forward");
    }
}
