//! `Replica::round_progress`: what a progress display sees during a round
//! comes from the round itself (the files it fetches, the bytes written
//! into them), grows monotonically, and ends with the round.

mod common;

use std::time::Duration;

use common::{Pair, noise};
use sync_delta::RoundProgress;
use sync_delta::mem::MemStore;

/// Runs one round (the pair's first starts as it connects; the next ones
/// an interval later), returning the progress seen after every message
/// the replica was given (the round's first value, seen when it starts,
/// first).
fn watched_round(pair: &mut Pair) -> Vec<Option<RoundProgress>> {
    if pair.replica.round_progress().is_none() {
        pair.now += Duration::from_secs(61);
        pair.wall += Duration::from_secs(61);
        pair.replica.handle_timeout(pair.now);
    }
    let mut seen = vec![pair.replica.round_progress()];
    pair.pump_watching(|_, _| {}, |r| seen.push(r.round_progress()))
        .expect("round");
    seen
}

#[track_caller]
fn check_monotonic(seen: &[Option<RoundProgress>]) {
    let during: Vec<RoundProgress> = seen.iter().flatten().copied().collect();
    for w in during.windows(2) {
        assert!(w[1].files_done >= w[0].files_done, "{w:?}");
        assert!(w[1].bytes_done >= w[0].bytes_done, "{w:?}");
        assert!(w[1].files_total >= w[0].files_total, "{w:?}");
    }
    for p in &during {
        assert!(
            p.files_done <= p.files_total && p.bytes_done <= p.bytes_total,
            "{p:?}"
        );
    }
    // The round ends with the last message: no progress after it.
    assert_eq!(seen.last(), Some(&None));
}

#[test]
fn progress_counts_the_files_fetched_and_the_bytes_written() {
    let mut src = MemStore::new();
    let sizes = [70_000usize, 5_000, 123_456, 1];
    for (i, n) in sizes.iter().enumerate() {
        src.put_file(&format!("voice/m{i}"), &noise(*n, i as u64 + 1), 0o644, 1);
    }
    src.put_file("empty", b"", 0o644, 1);
    let mut pair = Pair::new(src, MemStore::new());

    let seen = watched_round(&mut pair);
    pair.assert_synced();
    check_monotonic(&seen);
    // Requested: nothing planned yet.
    assert_eq!(seen[0], Some(RoundProgress::default()));
    let total: u64 = sizes.iter().map(|n| *n as u64).sum();
    let during: Vec<RoundProgress> = seen.iter().flatten().copied().collect();
    let last = *during.last().expect("progress during the round");
    // The empty file is made, not fetched.
    assert_eq!((last.files_total, last.bytes_total), (4, total));
    // Every byte was written before the last file's end committed the
    // round; the commit came with the last file.
    assert_eq!(last.bytes_done, total);
    assert_eq!(last.files_done, 3);
    assert!(
        during
            .iter()
            .any(|p| p.files_total == 4 && p.bytes_done < total / 2)
    );

    // Next round: one big file changed in place (a delta: copied blocks
    // count as written), another renamed (a local copy: not fetched).
    let mut big = noise(123_456, 3);
    big[100_000..100_100].fill(7);
    pair.src.put_file("voice/m2", &big, 0o644, 2);
    let m0 = noise(70_000, 1);
    pair.src.remove_tree("voice/m0");
    pair.src.put_file("voice/renamed", &m0, 0o644, 1);
    let seen = watched_round(&mut pair);
    pair.assert_synced();
    check_monotonic(&seen);
    let last = seen.iter().flatten().last().copied().expect("progress");
    assert_eq!((last.files_total, last.bytes_total), (1, 123_456));
    assert_eq!(last.bytes_done, 123_456);

    // Nothing changed: a round with nothing to fetch; none between rounds.
    assert_eq!(pair.replica.round_progress(), None);
    let seen = watched_round(&mut pair);
    check_monotonic(&seen);
    assert!(seen.iter().flatten().all(|p| p.files_total == 0));
}

/// A round of many files asks for a bounded number at a time (the rest as
/// those arrive), counts every file in its progress from the start, and
/// still brings the whole tree over, local copies included.
#[test]
fn a_large_round_keeps_a_bounded_number_of_fetches_in_flight() {
    use std::cell::Cell;
    use sync_delta::Message;
    let files = 1000;
    let mut src = MemStore::new();
    for i in 0..files {
        src.put_file(
            &format!("a/f{i:04}"),
            &noise(100 + i, i as u64 + 1),
            0o644,
            1,
        );
    }
    let mut pair = Pair::new(src, MemStore::new());
    let wants = Cell::new(0u64);
    let most = Cell::new(0u64);
    let totals = Cell::new((0u64, 0u64));
    pair.pump_watching(
        |m, _| {
            if matches!(m, Message::Want { .. }) {
                wants.set(wants.get() + 1);
            }
        },
        |r| {
            if let Some(p) = r.round_progress() {
                most.set(most.get().max(wants.get() - p.files_done));
                totals.set((p.files_total, p.files_done));
            }
        },
    )
    .expect("first round");
    pair.assert_synced();
    assert_eq!(wants.get(), files as u64, "every file asked for once");
    assert!(
        most.get() > 0 && most.get() <= 256,
        "{} fetches in flight at once",
        most.get()
    );
    // Every file counted from the first progress seen to the last.
    assert_eq!(totals.get().0, files as u64);
    // A second copy of each under another folder: copied, not fetched.
    for i in 0..files {
        let data = noise(100 + i, i as u64 + 1);
        pair.src.put_file(&format!("b/f{i:04}"), &data, 0o644, 1);
    }
    pair.round().expect("second round");
    pair.assert_synced();
    assert_eq!(pair.replica.stats().copied, files as u64);
}
