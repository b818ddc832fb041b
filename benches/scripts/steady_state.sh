#!/usr/bin/env bash
# The steady state's cost at 10 ms advertisements: our pair (node with its
# peer link and sync) beside keepalived's, in two network namespaces, in
# the same run. Prints CPU per second of both nodes together and the
# largest process's resident memory, and the ratio.
#
#   sudo benches/scripts/steady_state.sh              # 30 s each
#   sudo STEADY_SECS=120 benches/scripts/steady_state.sh
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
# The node as a vendor ships it (the `dist` profile: release with LTO),
# and the measuring test beside it in the same profile.
cargo build --profile dist -p examples --example node --test interop
STEADY_SECS=${STEADY_SECS:-30} \
    cargo test --profile dist -p examples --test interop -- --ignored --exact \
    steady_state_cost_beside_keepalived --nocapture 2>&1 | grep -E '^steady state|FAILED|panicked' 
