#!/usr/bin/env bash
# The whole-pair simulation at length: both nodes' real engines under
# random faults and operator requests, 10 simulated minutes per schedule,
# invariants after every step and liveness in a quiet tail.
#
#   benches/scripts/pair_sim.sh                 # 10,000 schedules after the 500 of `cargo test`
#   SCHEDULES=50000 benches/scripts/pair_sim.sh
#   FIRST_SEED=123 benches/scripts/pair_sim.sh  # another range
#
# A failing schedule prints its seed, its schedule and its log; replay it
# with PAIR_SEED=<seed> cargo test -p failover-orchestrator --test pair_sim.
set -euo pipefail
cd "$(dirname "$0")/../.."

schedules=${SCHEDULES:-10000}
# cargo test runs seeds 0x5A5A0000 .. +500; start after them by default.
first=${FIRST_SEED:-$((0x5A5A0000 + 500))}
start=$(date +%s)
PAIR_SCHEDULES=$schedules PAIR_FIRST_SEED=$first \
    cargo test --release -p failover-orchestrator --test pair_sim -- --nocapture 2>&1 |
    grep -v '^running\|^$'
echo "pair_sim.sh: $schedules schedules from seed $first in $(( $(date +%s) - start )) s (build included)"
