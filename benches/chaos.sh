#!/usr/bin/env bash
# The chaos run of the shared PostgreSQL store (tests/chaos.rs) for as long as asked: three
# keyguard daemons with one key on one database, conflicting EVM nonces and CometBFT steps sent
# to different instances at once, under a seeded schedule of SIGKILL/SIGSTOP of instances and
# immediate restarts/freezes of PostgreSQL. Prints the faults injected, the signatures checked
# and the conflicts found (must be 0), then the split-fence and async-promotion negative controls.
#   benches/chaos.sh [seconds] [seed]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KEYGUARD_CHAOS_SECS="${1:-300}" KEYGUARD_CHAOS_SEED="${2:-$RANDOM}"
cargo test --features fault-injection --test chaos -- --nocapture --test-threads=1 2>&1 \
  | grep -E "chaos (healthy|split-fence|async-promotion)|test result"
