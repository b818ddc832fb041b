# Shared by the scripts that run `sync serve` / `sync pull` beside rsync's
# daemon (sync_memory.sh, sync_big.sh); sourced, not run. Needs `set -euo
# pipefail` and the repository root as the working directory.
#
# After `sync_setup NAME`: SYNC and TREE (the release `sync` and
# `tree_round` examples, built into CARGO_TARGET_DIR when it is set),
# WORK (a temporary folder, removed on exit with the processes below),
# WORK/key (a fresh key), WORK/src (empty).
# Traffic stays on 127.0.0.1.

sync_setup() {
    command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
    [[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
    cargo build --release -q -p examples --example sync
    cargo build --release -q -p sync-delta --example tree_round
    local target=${CARGO_TARGET_DIR:-$PWD/target}
    SYNC="$target/release/examples/sync"
    TREE="$target/release/examples/tree_round"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    SERVE_PID="" RSYNCD_PID=""
    trap sync_cleanup EXIT
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$WORK/key"
    chmod 600 "$WORK/key"
    mkdir -p "$WORK/src"
}

sync_cleanup() {
    [[ -n "$SERVE_PID" ]] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    [[ -n "$RSYNCD_PID" ]] && kill "$RSYNCD_PID" 2>/dev/null
    rm -rf "$WORK"
}

# Starts `sync serve` of WORK/src on a free port; sets SERVE_PID and PORT.
serve() {
    : >"$WORK/serve.log"
    "$SYNC" serve --dir "$WORK/src" --listen 127.0.0.1:0 --key-file "$WORK/key" 2>"$WORK/serve.log" &
    SERVE_PID=$!
    for _ in $(seq 1 100); do
        PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/serve.log" | cut -d: -f2 || true)
        [[ -n "$PORT" ]] && return
        sleep 0.1
    done
    echo "sync serve did not start" >&2
    cat "$WORK/serve.log" >&2
    exit 1
}

# Waits for `sync serve` to record the replica's confirmation. The source
# records it when it arrives, which can be after `pull` exits: killed
# before, the next round would start from a source that forgot it.
serve_confirmed() {
    for _ in $(seq 1 200); do
        grep -q 'replica confirmed generation' "$WORK/serve.log" && break
        sleep 0.05
    done
    grep -q 'replica confirmed generation' "$WORK/serve.log" || {
        echo "sync serve never saw the confirmation" >&2
        exit 1
    }
}

# Stops `sync serve`.
serve_stop() {
    kill "$SERVE_PID"
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
}

# Starts `rsync --daemon` serving WORK/src as module `tree` (the state
# folder excluded); sets RSYNCD_PID and RPORT.
start_rsyncd() {
    cat >"$WORK/rsyncd.conf" <<CONF
use chroot = false
uid = root
gid = root
[tree]
path = $WORK/src
read only = true
exclude = /.sync-delta
CONF
    RPORT=$((20000 + RANDOM % 20000))
    rsync --daemon --no-detach --address=127.0.0.1 --port="$RPORT" --config="$WORK/rsyncd.conf" &
    RSYNCD_PID=$!
    sleep 0.5
}
