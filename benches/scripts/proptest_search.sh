#!/usr/bin/env bash
# The random search behind the workspace's properties.
#
# `cargo test` runs every proptest with the fixed seed in .cargo/config.toml,
# so the same commit always gives the same result. This script runs the same
# properties with fresh random seeds, round after round, and prints every
# failing input proptest found (shrunk) with the seed that reproduces it.
#
#   benches/scripts/proptest_search.sh              # 20 rounds
#   ROUNDS=200 benches/scripts/proptest_search.sh   # more
#   benches/scripts/proptest_search.sh passive      # only tests whose name matches
#
# A failure found here is also written by proptest to the test file's
# `*.proptest-regressions` beside it: commit that file together with the fix,
# so that every later run replays the input first. To replay one seed:
#   PROPTEST_RNG_SEED=<seed> cargo test --release -p <crate> --test <binary>
set -uo pipefail
cd "$(dirname "$0")/../.."

rounds=${ROUNDS:-20}
# Every test binary that holds a proptest! block, as crate:binary.
bins=(
    vrrp-proto:properties
    vrrp-fsm:sim_properties
    vrrp-fsm:fuzz_seeds
    failover-orchestrator:props
    failover-orchestrator:fuzz_seeds
    sync-delta:roundtrip
)


# One release build of them all, then only runs.
args=()
for b in "${bins[@]}"; do args+=(-p "${b%%:*}" --test "${b#*:}"); done
cargo test --release "${args[@]}" --no-run -q || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
runs=0
failures=0
for ((r = 1; r <= rounds; r++)); do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    for b in "${bins[@]}"; do
        runs=$((runs + 1))
        if ! PROPTEST_RNG_SEED=$seed cargo test --release -q \
            -p "${b%%:*}" --test "${b#*:}" -- "$@" >"$log" 2>&1; then
            failures=$((failures + 1))
            echo "== FAILED: round $r, $b, PROPTEST_RNG_SEED=$seed"
            grep -E 'minimal failing input|^test .* FAILED|panicked at|Test failed' "$log"
        fi
    done
    echo "round $r/$rounds: seed $seed, $failures failure(s) so far"
done
echo "$runs binary runs over $rounds seeds: $failures failed"
[ "$failures" = 0 ]
