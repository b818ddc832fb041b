//! A source's record of the generation its replica confirmed, under a
//! fault at every step of recording it.

mod common;

use common::{Pair, noise};
use std::time::{Duration, Instant};
use sync_delta::Message;
use sync_delta::mem::{Fault, MemStore};
use sync_delta::{Source, SourceConfig};

fn tree() -> MemStore {
    let mut src = MemStore::new();
    src.put_file("etc/pbx.conf", b"[general]\nport=5060\n", 0o644, 10);
    src.put_file("voice/100/msg1.wav", &noise(20_000, 1), 0o640, 11);
    src.sync_all();
    src
}

/// Runs a round, with `fault` armed at step `k` of the source's handling
/// of the replica's `Committed`; returns the steps that handling took.
fn round_with_fault(src: MemStore, fault: Option<(u64, Fault)>) -> (MemStore, u64) {
    let mut pair = Pair::new(src, MemStore::new());
    let mut at = None;
    pair.now += Duration::from_secs(61);
    pair.replica.handle_timeout(pair.now);
    let _ = pair.pump(|m, s| {
        if matches!(m, Message::Committed { .. }) {
            at = Some(s.steps());
            if let Some((k, f)) = fault {
                s.fail_at(s.steps() + k, f);
            }
        }
    });
    let steps = pair.src.steps() - at.expect("the replica committed");
    (pair.src, steps)
}

/// Found by the `sync_session` fuzz target: the log's fsync failed, the
/// session ended with the error, and a restarted source read the record
/// back and reported the new generation; a power cut then took it away.
/// Whatever step fails, the generation a restarted source reports is the
/// one a power cut leaves.
#[test]
fn what_a_restarted_source_reports_survives_a_power_cut() {
    let (_, total) = round_with_fault(tree(), None);
    assert!(total >= 3, "only {total} steps");
    let now = Instant::now();
    for fault in [Fault::Error, Fault::PowerOff] {
        for k in 1..=total {
            let (mut src, _) = round_with_fault(tree(), Some((k, fault)));
            src.clear_fault();
            if fault == Fault::PowerOff {
                src.reboot();
            }
            let reported = Source::open(SourceConfig::default(), now, &mut src)
                .unwrap()
                .confirmed_generation();
            assert!(reported <= 1, "step {k}: generation {reported}");
            src.reboot();
            let after = Source::open(SourceConfig::default(), now, &mut src)
                .unwrap()
                .confirmed_generation();
            assert_eq!(
                after, reported,
                "step {k} ({fault:?}): a power cut after the restart"
            );
        }
    }
}

/// A first round's confirmation (everything changed) is recorded as a
/// new base, not as a log record the size of the base: after a power cut
/// the source reopens at the confirmed generation with an empty log, and
/// a second round changes nothing.
#[test]
fn a_first_round_is_recorded_as_the_base() {
    let (mut src, _) = round_with_fault(tree(), None);
    src.reboot();
    let log = |s: &MemStore| match s.nodes().get(".sync-delta/manifest.log") {
        Some(sync_delta::mem::Node::File { data, .. }) => data.len(),
        _ => usize::MAX,
    };
    let base = |s: &MemStore| match s.nodes().get(".sync-delta/manifest") {
        Some(sync_delta::mem::Node::File { data, .. }) => data.len(),
        _ => 0,
    };
    assert_eq!(log(&src), 0, "the listing went into the log");
    assert!(base(&src) > 0, "no base");
    let s = Source::open(SourceConfig::default(), Instant::now(), &mut src).unwrap();
    assert_eq!(s.confirmed_generation(), 1);
}
