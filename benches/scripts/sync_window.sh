#!/usr/bin/env bash
# The data-loss window of change-driven sync, on two real `node`
# processes with the default [sync] settings (watch on, batch_ms 100,
# interval_s 60) and 1 s advertisements, release build, on loopback
# (127.0.0.1 and 127.0.0.2): the worst and median time of 10 new 64 KiB
# files from the Master's disk to the Backup's (goal: worst under 1 s), then
# each node's CPU (user + system, /proc/<pid>/stat) over SYNC_IDLE_SECS of
# no change (goal: at most 1 % of a core).
#
#   benches/scripts/sync_window.sh                   # 60 s idle
#   SYNC_IDLE_SECS=300 benches/scripts/sync_window.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -p examples --example node --test node_processes
SYNC_IDLE_SECS=${SYNC_IDLE_SECS:-60} \
    cargo test --release -p examples --test node_processes -- --ignored --exact \
    sync_window_figures --nocapture 2>&1 | grep -E '^sync window|^idle CPU|FAILED|panicked'
