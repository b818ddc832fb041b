#!/usr/bin/env bash
# The interop measurements of issue 7 at full length, with one table at the
# end: failover timing at 1 s, 100 ms and 10 ms (ours and keepalived, five
# rounds each), the planned swap at every interval, the CPU hog for five
# minutes (ours, keepalived with and without its real-time options), plus
# every other interop test at its usual length.
#
#   sudo benches/scripts/interop.sh            # everything (about 30 minutes)
#   sudo benches/scripts/interop.sh failover   # only tests whose name matches
#
# Root is needed (network namespaces); keepalived, tcpdump, tshark and
# iproute2 must be installed (.ci/run installs them). All traffic stays in
# namespaces the tests create and remove. CI runs the same tests at short
# length as part of `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "interop.sh: needs root (the tests build network namespaces)" >&2
    exit 1
fi

report=$(mktemp --suffix=.jsonl)
trap 'rm -f "$report"' EXIT

# The tests start target/debug/examples/{node,udp-probe}: build them first.
cargo build -p examples --examples --tests

# One bed at a time; a test that fails still leaves its rows in the report.
status=0
INTEROP_LONG=1 INTEROP_REPORT="$report" \
    cargo test -p examples --test interop -- --test-threads=1 "$@" || status=$?

echo
echo "== interop figures (ms unless noted; RFC / goal beside each) =="
INTEROP_TABLE="$report" cargo test -q -p examples --test interop -- \
    --exact report_table_aligns_columns --nocapture 2>/dev/null |
    grep '^|' || echo "(no figures recorded)"
exit "$status"
