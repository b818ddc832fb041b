//! The `pair` demo, the README's first command, run as a user runs it: it
//! must exit 0 and print its timeline (election, sync, takeover with its
//! milestones, rejoin, swap, and the table of what it measured).

mod run;

use std::time::Duration;

/// Well above the demo's run time in a debug build on a busy machine.
const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn pair_demo_prints_its_timeline_and_exits_0() {
    let (status, out, err) = run::run_to_end("pair", LIMIT);
    assert!(
        status.success(),
        "pair exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Each step, in the order the demo walks through them.
    let steps = [
        "cold start: pbx-a boots (priority 150)",
        "pbx-a is Master after",
        "pbx-b is Backup",
        "sync: pbx-b holds generation",
        "pbx-a status: \"Backup device with ID pbx-b is UP (Active mode)\"",
        "a new voicemail on pbx-a is on pbx-b",
        "pbx-a loses power",
        "pbx-b is Master",
        "pbx-b takeover timeline (from detection):",
        "Detected",
        "AddressClaimed",
        "ServiceReady",
        "Phones",
        "Done",
        "data-loss window:",
        "phones:",
        "pbx-a powers up again",
        "pbx-a hears pbx-b and stays Backup",
        "pbx-a synced from pbx-b",
        "pbx-b status: \"Backup device with ID pbx-a is UP (Active mode)\"",
        "operator on pbx-b: \"Swap Master and Backup\"",
        "swap accepted",
        "swap done in",
        "measured:",
        "election (cold start)",
        "first sync round",
        "failover, last advertisement to Master",
        "takeover, detection to done",
        "data-loss window",
        "swap, request to done",
        "pair: done in",
    ];
    let mut from = 0;
    for step in steps {
        match out[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => panic!("`{step}` missing (or out of order) in:\n{out}"),
        }
    }
    // The new voicemail made it across, and the takeover re-homed phones.
    assert!(
        out.contains("(next round): true"),
        "voicemail not replicated:\n{out}"
    );
    assert!(
        out.contains("licences stayed on pbx-a: true"),
        "licences replicated:\n{out}"
    );
    let phones = out
        .lines()
        .find(|l| l.contains("] phones: "))
        .expect("phones line");
    assert!(
        phones.contains("49 re-homed, 1 listed for a person"),
        "{phones}"
    );
}
