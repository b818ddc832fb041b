#!/usr/bin/env bash
# sync-delta beside `rsync -a --delete`, on this machine, in temporary
# directories:
#   1. a tree of small files (100,000; --quick: 10,000): a no-change round,
#      and a round after 1 % modified, 0.5 % deleted and 20 renamed;
#   2. one large file (512 MiB; --quick: 64 MiB) after a 64 KiB overwrite,
#      a 100-byte insert and a 1 MiB append: time and bytes on the wire
#      (rsync with --no-whole-file and --stats, since a local rsync copies
#      whole files by default); then the same file after a 1 MiB append
#      alone (a replica patches both in place; the insert shifts the last
#      third, which it must rewrite).
# Each case runs RUNS times (5; --quick: 3); medians, ratios and peak memory
# (max RSS from /usr/bin/time; sync-delta runs source and replica in one
# process, each on a thread of its own, or with TREE_ROUND_SERIAL=1 on one
# thread; rsync's figure is its largest process) are printed; for the large
# file also the bytes written to disk (the kernel's block-output count from
# /usr/bin/time, in 512-byte units: what the round made the file system
# write, beside what it sent on the wire), and the replica's own count of
# file data written (`disk_bytes`: staged plus in place) with the files it
# patched in place (an older build without them prints "-").
#
# With CASES=sweep (or big,sweep), the large file instead gets a 100-byte
# insert at each of SWEEP (percent of the file; default "30 45 55 70"):
# where patching in place stops paying.
#
# usage: [RUNS=n] [CASES=tree|big|sweep|tree,big] [SWEEP="..."] [TOOL=path] benches/scripts/sync_delta_tree.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."

FILES=100000 BIG_MIB=512 RUNS=${RUNS:-5}
if [[ "${1:-}" == "--quick" ]]; then FILES=10000 BIG_MIB=64 RUNS=${RUNS:-3}; fi

need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2" >&2
    apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
}
need rsync rsync
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

# TOOL=path runs the rounds with another build of tree_round (a
# before/after comparison); the trees are made and edited by this one.
cargo build --release -q -p sync-delta --example tree_round
GEN="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/tree_round"
TOOL=${TOOL:-$GEN}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sync-delta-tree.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# run_ours SRC DST -> "seconds wire_bytes maxrss_kib" (round only, and whole process)
run_ours() {
    local out
    out=$(/usr/bin/time -f "maxrss_kib=%M elapsed_s=%e fs_out=%O" "$TOOL" round "$1" "$2" 2>&1)
    echo $(($(grep -o 'fs_out=[0-9]*' <<<"$out" | cut -d= -f2) * 512)) >"$WORK/disk_ours"
    echo "$(grep -o 'disk_bytes=[0-9]*' <<<"$out" | cut -d= -f2 || echo -) $(grep -o 'in_place=[0-9]*' <<<"$out" | cut -d= -f2 || echo -)" >"$WORK/replica_ours"
    local round wire rss total
    round=$(grep -o 'round_s=[0-9.]*' <<<"$out" | cut -d= -f2)
    total=$(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2)
    wire=$(grep -o 'wire_bytes=[0-9]*' <<<"$out" | cut -d= -f2)
    rss=$(grep -o 'maxrss_kib=[0-9]*' <<<"$out" | cut -d= -f2)
    echo "$round $total $wire $rss"
}

# run_rsync SRC DST [extra flags] -> "seconds wire_bytes maxrss_kib"
run_rsync() {
    local src=$1 dst=$2; shift 2
    local out
    out=$(/usr/bin/time -f "maxrss_kib=%M elapsed_s=%e fs_out=%O" rsync -a --delete --stats --exclude=/.sync-delta "$@" "$src/" "$dst/" 2>&1)
    echo $(($(grep -o 'fs_out=[0-9]*' <<<"$out" | cut -d= -f2) * 512)) >"$WORK/disk_rsync"
    local secs sent recv rss
    secs=$(grep -o 'elapsed_s=[0-9.]*' <<<"$out" | cut -d= -f2)
    sent=$(grep 'Total bytes sent' <<<"$out" | tr -dc '0-9')
    recv=$(grep 'Total bytes received' <<<"$out" | tr -dc '0-9')
    rss=$(grep -o 'maxrss_kib=[0-9]*' <<<"$out" | cut -d= -f2)
    echo "$secs $((sent + recv)) $rss"
}

report() { # name ours_round ours_total ours_wire ours_rss rsync_s rsync_wire rsync_rss
    printf '%-28s sync-delta round %7.3f s (process %6.3f s, %10s B wire, %7s KiB max RSS) | rsync %7.3f s (%10s B, %7s KiB) | time ratio round %.2f, process %.2f\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" \
        "$(awk -v a="$2" -v b="$6" 'BEGIN{print (b>0)?a/b:0}')" \
        "$(awk -v a="$3" -v b="$6" 'BEGIN{print (b>0)?a/b:0}')"
}

collect() { # label: reads lines "ours... | rsync..." and prints medians
    local label=$1 f=$2
    report "$label" \
        "$(cut -d' ' -f1 "$f" | median)" "$(cut -d' ' -f2 "$f" | median)" \
        "$(cut -d' ' -f3 "$f" | median)" "$(cut -d' ' -f4 "$f" | median)" \
        "$(cut -d' ' -f5 "$f" | median)" "$(cut -d' ' -f6 "$f" | median)" \
        "$(cut -d' ' -f7 "$f" | median)"
}

CASES=${CASES:-tree,big}
if [[ "$CASES" == *tree* ]]; then
echo "== tree: $FILES files, $RUNS runs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$WORK/src" "$WORK/ours" "$WORK/rsync"
"$GEN" gen "$WORK/src" "$FILES"
run_ours "$WORK/src" "$WORK/ours" >/dev/null     # initial copies
run_rsync "$WORK/src" "$WORK/rsync" >/dev/null

: >"$WORK/nochange"
for _ in $(seq "$RUNS"); do
    echo "$(run_ours "$WORK/src" "$WORK/ours") $(run_rsync "$WORK/src" "$WORK/rsync")" >>"$WORK/nochange"
done
collect "no-change round" "$WORK/nochange"

: >"$WORK/mutated"
for i in $(seq "$RUNS"); do
    "$GEN" mutate "$WORK/src" "$((100 + i))"
    echo "$(run_ours "$WORK/src" "$WORK/ours") $(run_rsync "$WORK/src" "$WORK/rsync")" >>"$WORK/mutated"
done
collect "1% mod, 0.5% del, 20 ren" "$WORK/mutated"

# Both replicas must equal the source (itemize shows nothing but the root).
diffs=$(rsync -an --delete -i --exclude=/.sync-delta "$WORK/src/" "$WORK/ours/" | { grep -v '^\.d\.\.t\.\.\.\.\.\. \./$' || true; } | wc -l)
echo "sync-delta replica differs from the source in $diffs entries"
rm -rf "$WORK/src" "$WORK/ours" "$WORK/rsync"
fi

[[ "$CASES" == *big* || "$CASES" == *sweep* ]] || exit 0
echo "== one large file: $BIG_MIB MiB, $RUNS runs, load $(cut -d' ' -f1-3 /proc/loadavg)"
# big_case LABEL EDIT [ARG]: a fresh large file copied to both replicas,
# `tree_round EDIT file [ARG]` applied to the source, then one timed round
# each.
big_case() {
    local label=$1 edit=$2 arg=${3:-} f="$WORK/big-$2-${3:-}"
    : >"$f"
    for _ in $(seq "$RUNS"); do
        rm -rf "$WORK/bsrc" "$WORK/bours" "$WORK/brsync"
        mkdir -p "$WORK/bsrc" "$WORK/bours" "$WORK/brsync"
        "$GEN" big "$WORK/bsrc/call.wav" "$BIG_MIB"
        run_ours "$WORK/bsrc" "$WORK/bours" >/dev/null
        run_rsync "$WORK/bsrc" "$WORK/brsync" >/dev/null
        "$GEN" "$edit" "$WORK/bsrc/call.wav" ${arg:+"$arg"}
        ours=$(run_ours "$WORK/bsrc" "$WORK/bours")
        theirs=$(run_rsync "$WORK/bsrc" "$WORK/brsync" --no-whole-file)
        echo "$ours $theirs $(cat "$WORK/disk_ours") $(cat "$WORK/disk_rsync") $(cat "$WORK/replica_ours")" >>"$f"
        cmp "$WORK/bsrc/call.wav" "$WORK/bours/call.wav"
    done
    collect "$label" "$f"
    echo "$label, bytes written to disk per round (median): sync-delta $(cut -d' ' -f8 "$f" | median) B (replica's disk_bytes $(cut -d' ' -f10 "$f" | sort | uniq | tr '\n' ' ')B, in place: $(cut -d' ' -f11 "$f" | sort | uniq | tr '\n' ' ')), rsync $(cut -d' ' -f9 "$f" | median) B, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
if [[ "$CASES" != *sweep* ]]; then
    big_case "large file, edited" edit-big
    big_case "large file, 1 MiB appended" append-big
else
    # Where in-place patching stops paying: a 100-byte insert at P % shifts
    # the rest of the file (1 - P of it dirty).
    for p in ${SWEEP:-30 45 55 70}; do
        big_case "large file, insert at $p %" insert-big "$p"
    done
fi
