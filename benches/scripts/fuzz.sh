#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_EXECS executions or
# FUZZ_SECS seconds, whichever comes first, each from its committed seeds,
# and prints one line per target: executions, seconds, libFuzzer's final
# coverage (`cov:`, code edges; `ft:`, features) and corpus size.
#
#   benches/scripts/fuzz.sh                     # 10 M execs or 1 h each
#   FUZZ_SECS=300 benches/scripts/fuzz.sh       # 5 minutes each
#   FUZZ_SECS=60 benches/scripts/fuzz.sh sync_session sync_frame
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The seeds are read, never written: libFuzzer's new inputs go into
# FUZZ_WORK/corpus/TARGET (default target/fuzz-bench), crashes into
# FUZZ_WORK/artifacts/TARGET/, each run's log into FUZZ_WORK/TARGET.log.
# Each target runs on one core under `nice`. Exits 1 if any target crashed.
# CI only builds the targets (.ci/run, "fuzz targets compile").
#
# FUZZ_SANITIZER (default none) is cargo-fuzz's --sanitizer. The library
# crates forbid unsafe code, so AddressSanitizer finds little in them and
# costs a lot here: the sessions allocate their 1-4 MiB I/O buffers per
# object, and under ASan each one is fresh pages (sync_session ran about
# 4 times slower). Debug assertions and overflow checks stay on (cargo-fuzz
# builds with them unless -O). FUZZ_SANITIZER=address for the default.
set -euo pipefail
cd "$(dirname "$0")/../.."

execs=${FUZZ_EXECS:-10000000}
secs=${FUZZ_SECS:-3600}
work=${FUZZ_WORK:-target/fuzz-bench}
sanitizer=${FUZZ_SANITIZER:-none}

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build --sanitizer="$sanitizer" >/dev/null

status=0
rows=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t/"
    log="$work/$t.log"
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    echo "==> $t (at most $execs executions or $secs s)" >&2
    start=$(date +%s)
    result=ok
    if ! nice cargo +nightly fuzz run --sanitizer="$sanitizer" "$t" "$corpus" "${seeds[@]}" -- \
        -runs="$execs" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$artifacts" >"$log" 2>&1; then
        result="CRASH (see $log, $artifacts)"
        status=1
    fi
    took=$(($(date +%s) - start))
    done_execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # The last status line libFuzzer printed: "#N DONE cov: C ft: F corp: K/..."
    last=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -1 || true)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    rows+=("$(printf '%-20s %12s %7s %7s %8s %7s  %s' "$t" "${done_execs:-?}" "$took" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")")
done

printf '\nsanitizer: %s; at most %s executions or %s s each\n' "$sanitizer" "$execs" "$secs"
printf '%-20s %12s %7s %7s %8s %7s  %s\n' target execs secs cov ft corpus result
printf '%s\n' "${rows[@]}"
exit "$status"
