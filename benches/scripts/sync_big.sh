#!/usr/bin/env bash
# One large file through the `sync` tool, each side in its own process the
# way a node runs it: `sync serve` (the source) and `sync pull --once` (the
# replica) on loopback, beside rsync's daemon (`rsync --daemon` serving the
# file, `rsync -a` pulling it, and the same pull with `--fsync`, the only
# rsync that makes its result durable) in the same run.
#
# Each run makes a fresh file (512 MiB; --quick: 64 MiB), copies it to both
# pullers with a first round, edits it (EDIT: `edit-big`, a 64 KiB
# overwrite, a 100-byte insert at 2/3 and a 1 MiB append; or `append-big`,
# a 1 MiB append alone), then times one round of each. The time is the
# pulling process's, from its start to its exit (for ours: connecting,
# the source's scan of the edited file, the delta, the replica's commit).
# Also printed, per round: the bytes the pulling process had written to
# disk (/usr/bin/time's block-output count) beside the bytes it received
# on the wire (ours: `bytes_received` from `sync pull`'s JSON line;
# rsync: "Total bytes received" from `--stats`).
#
#   [RUNS=n] [EDIT=edit-big|append-big] benches/scripts/sync_big.sh [--quick]
#
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

MIB=512 RUNS=${RUNS:-5} EDIT=${EDIT:-edit-big}
if [[ "${1:-}" == "--quick" ]]; then MIB=64 RUNS=${RUNS:-3}; fi

# shellcheck source=benches/scripts/sync_common.sh
source benches/scripts/sync_common.sh
sync_setup sync-big

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# One round of ours -> "seconds bytes_written bytes_on_wire"
ours() {
    serve
    local out
    out=$(/usr/bin/time -f "elapsed_s=%e fs_out=%O" "$SYNC" pull --once --dir "$WORK/dst" \
        --from "127.0.0.1:$PORT" --key-file "$WORK/key" 2>&1)
    serve_confirmed
    serve_stop
    echo "$(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2) $(($(grep -o 'fs_out=[0-9]*' <<<"$out" | cut -d= -f2) * 512)) $(grep -o '"bytes_received":[0-9]*' <<<"$out" | cut -d: -f2)"
}

start_rsyncd
# One rsync pull into DIR [flags] -> "seconds bytes_written bytes_on_wire"
theirs() {
    local dir=$1 out
    shift
    out=$(/usr/bin/time -f "elapsed_s=%e fs_out=%O" rsync -a --stats "$@" "rsync://127.0.0.1:$RPORT/tree/" "$dir/" 2>&1)
    echo "$(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2) $(($(grep -o 'fs_out=[0-9]*' <<<"$out" | cut -d= -f2) * 512)) $(sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' <<<"$out" | tr -d ,)"
}

echo "== one $MIB MiB file, $EDIT, $RUNS runs, sync serve/pull vs rsync daemon; load $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/runs"
for _ in $(seq "$RUNS"); do
    rm -rf "$WORK/src/call.wav" "$WORK/src/.sync-delta" "$WORK/dst" "$WORK/r" "$WORK/rf"
    "$TREE" big "$WORK/src/call.wav" "$MIB"
    ours >/dev/null
    theirs "$WORK/r" >/dev/null
    theirs "$WORK/rf" >/dev/null
    "$TREE" "$EDIT" "$WORK/src/call.wav"
    sync
    o=$(ours)
    t=$(theirs "$WORK/r")
    f=$(theirs "$WORK/rf" --fsync)
    cmp "$WORK/src/call.wav" "$WORK/dst/call.wav"
    cmp "$WORK/src/call.wav" "$WORK/r/call.wav"
    echo "$o $t $f" | tee -a "$WORK/runs" | sed 's/^/  run: sync, rsync, rsync --fsync (s, bytes written, bytes on the wire): /'
done
med() { cut -d' ' -f"$1" "$WORK/runs" | median; }
printf 'median of %s: sync pull %.3f s (%s B written, %s B on the wire) | rsync %.3f s (%s B, %s B) | rsync --fsync %.3f s (%s B, %s B) | ratio to rsync %.2f, to rsync --fsync %.2f; load %s\n' \
    "$RUNS" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)" "$(med 6)" "$(med 7)" "$(med 8)" "$(med 9)" \
    "$(awk -v a="$(med 1)" -v b="$(med 4)" 'BEGIN{print a/b}')" \
    "$(awk -v a="$(med 1)" -v b="$(med 7)" 'BEGIN{print a/b}')" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
