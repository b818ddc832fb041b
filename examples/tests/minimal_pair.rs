//! The `minimal-pair` example, the pair engine driven by a single-threaded
//! std loop, run as a user runs it: it must exit 0 after the election, a
//! replicated file, the takeover and the swap back. Loopback only.

mod run;

use std::time::Duration;

/// Well above the example's run time (each of its steps gives up after
/// 20 s) in a debug build on a busy machine.
const LIMIT: Duration = Duration::from_secs(150);

#[test]
fn minimal_pair_walks_through_failover_and_swap_and_exits_0() {
    let (status, out, err) = run::run_to_end("minimal-pair", LIMIT);
    assert!(
        status.success(),
        "minimal-pair exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Each step, in the order the example walks through them.
    let steps = [
        "pbx-a: Backup -> Master (MasterDown)",
        "-- election: pbx-a Master at",
        "pbx-b Backup, hears it at",
        "pbx-a writes voicemail/100/msg0001.txt",
        "pbx-b: sync round committed generation 1",
        "-- replicated: ",
        "pbx-b/voicemail/100/msg0001.txt at",
        "-- pbx-a stopped at",
        "pbx-b: Backup -> Master (MasterDown)",
        "pbx-b: plan Takeover started",
        "pbx-b: milestone AddressClaimed",
        "pbx-b: plan Takeover finished: Completed",
        "pbx-b: milestone Done",
        "-- takeover: pbx-b Master",
        "-- pbx-a restarts at",
        "-- rejoined: pbx-a Backup, hears pbx-b at",
        "-- operator on pbx-b at",
        "pbx-b: Master -> Backup (Release)",
        "pbx-a: Backup -> Master (ArmedTakeover)",
        "-- swapped back: pbx-a Master at",
        "-- the swap procedure on pbx-b completed",
        "minimal-pair: done in",
    ];
    let mut from = 0;
    for step in steps {
        match out[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => panic!("`{step}` missing (or out of order) in:\n{out}"),
        }
    }
}
