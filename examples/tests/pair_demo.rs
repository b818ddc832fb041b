//! The `pair` demo, the README's first command, run as a user runs it: it
//! must exit 0 and print its timeline (election, sync, takeover with its
//! milestones, rejoin, swap, and the table of what it measured).

mod run;

use std::time::Duration;

/// Well above the demo's run time (about 50 s, most of it the phone
/// model's 20 s reboots) in a debug build on a busy machine.
const LIMIT: Duration = Duration::from_secs(180);

/// The number after `key` in `line` (`at 1.23 s` → 1.23 for key `at `).
fn number_after(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("no `{key}` in: {line}"))
        + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    // `0.50..+0.58`: the range's dots are not the number's.
    rest[..end]
        .trim_end_matches('.')
        .parse()
        .unwrap_or_else(|e| panic!("`{key}` in {line}: {e}"))
}

/// The `[  t s]` a line was printed at.
fn printed_at(line: &str) -> f64 {
    number_after(line.trim_start_matches('[').trim_start(), "")
}

/// The `n`-th line (from 0) that holds `what`.
fn line_with<'a>(out: &'a str, what: &str, n: usize) -> &'a str {
    out.lines()
        .filter(|l| l.contains(what))
        .nth(n)
        .unwrap_or_else(|| panic!("no line {n} with `{what}` in:\n{out}"))
}

/// The times of a `services ready at T s (database a s, sip b s,
/// voicemail c s; …)` line: T and each service's.
fn services_ready(line: &str) -> (f64, Vec<f64>) {
    let at = number_after(line, "services ready at ");
    let each = ["(database ", ", sip ", ", voicemail "]
        .iter()
        .map(|key| number_after(line, key))
        .collect();
    (at, each)
}

/// Times are printed with two decimals.
const ROUNDING: f64 = 0.011;

/// A node's services came up in order, each at least 150 ms (the demo's
/// service model) after the one before it and the first 150 ms after the
/// node became Master at `master`: the times come from the readiness
/// milestones, not from when the demo looked. The line says the latest,
/// and was printed after it.
fn check_services(line: &str, master: f64) {
    let (at, each) = services_ready(line);
    let mut before = master;
    for t in &each {
        assert!(
            *t + ROUNDING >= before + 0.15,
            "{t} s too early after {before} s: {line}"
        );
        before = *t;
    }
    let latest = each.iter().copied().fold(f64::MIN, f64::max);
    assert!((at - latest).abs() < ROUNDING, "{line}");
    assert!(
        printed_at(line) + ROUNDING >= at,
        "printed before it happened: {line}"
    );
}

/// A phones line: every phone resolved, each registered one seen by the
/// registration check (none unchecked), after the model's delays.
fn check_phones(line: &str) {
    assert_eq!(number_after(line, "phones: "), 49.0, "{line}");
    assert!(
        line.contains("49 registered, each seen by the registrar's check"),
        "{line}"
    );
    assert!(line.contains("30 followed the address +"), "{line}");
    assert!(line.contains(", 15 nudged +"), "{line}");
    assert!(line.contains(", 4 rebooted +"), "{line}");
    assert!(
        number_after(line, "15 nudged +") >= 0.5,
        "a nudge registers after 0.5 s: {line}"
    );
    assert!(
        number_after(line, "4 rebooted +") >= 20.0,
        "a reboot registers after 20 s: {line}"
    );
    assert!(
        line.contains("1 listed for a person, 0 unchecked, 0 pending"),
        "{line}"
    );
}

#[test]
fn pair_demo_prints_its_timeline_and_exits_0() {
    let (status, out, err) = run::run_to_end("pair", LIMIT);
    assert!(
        status.success(),
        "pair exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Each step, in the order the demo walks through them.
    let steps = [
        "phone model: a phone that follows the address registers 0.2 s to 3.0 s after the \
         registrar (sip) is ready, a nudged one 0.5 s after the nudge, a rebooted one 20.0 s \
         after the reboot",
        "cold start: pbx-a boots (priority 150)",
        "pbx-a is Master at",
        "pbx-a services ready at",
        "pbx-b is Backup",
        "sync: pbx-b holds generation",
        "pbx-a status: \"Backup device with ID pbx-b is UP (Active mode)\"",
        "a new voicemail on pbx-a is on pbx-b",
        "pbx-a loses power",
        "pbx-b is Master at",
        "pbx-b services ready at",
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
        "pbx-a is Master at",
        "pbx-a services ready at",
        "swap done at",
        "pbx-b restarted as Backup",
        "pbx-a phones:",
        "measured:",
        "election (cold start)",
        "first sync round",
        "failover, last advertisement to Master",
        "takeover, detection to services ready",
        "takeover, detection to done",
        "data-loss window",
        "swap, request to new Master's services ready",
        "pair: done in",
    ];
    let mut from = 0;
    for step in steps {
        match out[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => panic!("`{step}` missing (or out of order) in:\n{out}"),
        }
    }
    // The new voicemail made it across; the licences did not.
    assert!(
        out.contains("(next round): true"),
        "voicemail not replicated:\n{out}"
    );
    assert!(
        out.contains("licences stayed on pbx-a: true"),
        "licences replicated:\n{out}"
    );

    // Services ready when their milestones say, after the node became
    // Master: at the cold start, the failover, and the swap.
    let master = |n| number_after(line_with(&out, "pbx-a is Master at ", n), "Master at ");
    check_services(line_with(&out, "pbx-a services ready at", 0), master(0));
    let b_master = number_after(line_with(&out, "pbx-b is Master at ", 0), "Master at ");
    check_services(line_with(&out, "pbx-b services ready at", 0), b_master);
    let swap_ready = line_with(&out, "pbx-a services ready at", 1);
    check_services(swap_ready, master(1));
    // "swap done" is the new Master's services ready, not before.
    let done = line_with(&out, "swap done at ", 0);
    let done_at = number_after(done, "swap done at ");
    assert!(
        done_at + ROUNDING >= services_ready(swap_ready).0,
        "{done}\n{swap_ready}"
    );
    assert!(printed_at(done) + ROUNDING >= done_at, "{done}");

    // The takeover's and the swap's phones: each counted home only once
    // the check saw it, at the model's times.
    check_phones(line_with(&out, "] phones: ", 0));
    check_phones(line_with(&out, "] pbx-a phones: ", 0));
}
