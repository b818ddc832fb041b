#!/usr/bin/env bash
# Peak memory of each side of a sync round over a large tree, each side in
# its own process the way a node runs it: `sync serve` (the source) and
# `sync pull --once` (the replica) on loopback, beside rsync's daemon
# (`rsync --daemon` serving the tree, `rsync -a --delete` pulling it) in
# the same run. Rounds: the first (everything), one with no change, one
# after 1 % modified, 0.5 % deleted and 20 renamed.
#
#   benches/scripts/sync_memory.sh            # 100,000 files
#   benches/scripts/sync_memory.sh --quick    # 10,000 files
#
# Prints, per round, each process's peak resident memory (VmHWM) in KiB
# and the round's time. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

FILES=100000
if [[ "${1:-}" == "--quick" ]]; then FILES=10000; fi

# shellcheck source=benches/scripts/sync_common.sh
source benches/scripts/sync_common.sh
sync_setup sync-memory

"$TREE" gen "$WORK/src" "$FILES" >/dev/null

hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# A fresh `sync serve` for each round: its peak is that round's (and its
# opening's) alone.
ours() {
    serve
    local out
    out=$(/usr/bin/time -f "pull_kib=%M elapsed_s=%e" "$SYNC" pull --once --dir "$WORK/dst" \
        --from "127.0.0.1:$PORT" --key-file "$WORK/key" --allow-mass-delete 2>&1)
    local serve_kib pull_kib secs
    serve_confirmed
    serve_kib=$(hwm "$SERVE_PID")
    serve_stop
    pull_kib=$(grep -o 'pull_kib=[0-9]*' <<<"$out" | cut -d= -f2)
    secs=$(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2)
    echo "$serve_kib $pull_kib $secs"
}

start_rsyncd
# rsync: the pulling client under time (its largest process), and the
# daemon's per-connection child, whose peak the daemon's log cannot give:
# sampled from /proc while the pull runs.
theirs() {
    local peak=0 out
    /usr/bin/time -f "pull_kib=%M elapsed_s=%e" -o "$WORK/rtime" \
        rsync -a --delete "rsync://127.0.0.1:$RPORT/tree/" "$WORK/rdst/" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for c in $(pgrep -P "$RSYNCD_PID" || true); do
            local k
            k=$(hwm "$c" 2>/dev/null || echo 0)
            ((k > peak)) && peak=$k
        done
        sleep 0.02
    done
    wait "$pid"
    out=$(cat "$WORK/rtime")
    echo "$peak $(grep -o 'pull_kib=[0-9]*' <<<"$out" | cut -d= -f2) $(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2)"
}

row() { # label ours theirs
    read -r os op ot <<<"$2"
    read -r rs rp rt <<<"$3"
    printf '%-22s sync serve %7s KiB, sync pull %7s KiB, %6s s | rsync daemon %7s KiB, rsync pull %7s KiB, %6s s | largest process ratio %.2f\n' \
        "$1" "$os" "$op" "$ot" "$rs" "$rp" "$rt" \
        "$(awk -v a="$os" -v b="$op" -v c="$rs" -v d="$rp" 'BEGIN{x=(a>b)?a:b; y=(c>d)?c:d; print (y>0)?x/y:0}')"
}

echo "$FILES files; load average $(cut -d' ' -f1-3 /proc/loadavg)"
row "first round" "$(ours)" "$(theirs)"
row "no change" "$(ours)" "$(theirs)"
"$TREE" mutate "$WORK/src" 7 >/dev/null
row "1 % changed" "$(ours)" "$(theirs)"
