#!/usr/bin/env bash
# The steady state's cost at 10 ms advertisements: our pair (node with its
# peer link and sync) beside keepalived's, in two network namespaces, in
# the same run. Prints CPU per second of both nodes together and the
# largest process's resident memory, and the ratio; then, over all runs,
# the median ratio (one run's ratio moves by a tenth from run to run on a
# shared machine).
#
#   sudo benches/scripts/steady_state.sh                   # 3 runs of 30 s
#   sudo RUNS=5 STEADY_SECS=120 benches/scripts/steady_state.sh
#
# Root is needed (network namespaces, raw VRRP); keepalived and iproute2
# must be installed (.ci/run installs them). All traffic stays in the
# namespaces the measurement creates and removes.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "steady_state.sh: needs root (network namespaces)" >&2
    exit 1
fi
runs=${RUNS:-3}
# The node as a vendor ships it (the `dist` profile: release with LTO),
# and the measuring test beside it in the same profile.
cargo build --profile dist -p examples --example node --test interop
ratios=()
for _ in $(seq "$runs"); do
    out=$(STEADY_SECS=${STEADY_SECS:-30} \
        cargo test --profile dist -p examples --test interop -- --ignored --exact \
        steady_state_cost_beside_keepalived --nocapture 2>&1 | grep -E '^steady state|FAILED|panicked')
    echo "$out"
    ratio=$(echo "$out" | sed -n 's/.*ratio \([0-9.]*\)$/\1/p')
    if [ -z "$ratio" ]; then
        echo "steady_state.sh: a run printed no ratio" >&2
        exit 1
    fi
    ratios+=("$ratio")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk -v n="$runs" '
    { r[NR] = $1 }
    END {
        m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
        printf "steady state over %d runs: ratio min %.3f, median %.3f, max %.3f\n", n, r[1], m, r[n]
    }'
