#!/usr/bin/env bash
# Crash consistency, long mode: the tests/crash harness (mixed Ethereum, CometBFT and approval
# load; SIGKILL at random moments; every promise checked after every kill) with many kills.
#   benches/crash_long.sh [kills]     (default 1000)
# Runs the debug test build (the harness checks behaviour, not speed); prints one summary line
# with the kills done and what was released and checked.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kills=${1:-1000}
cd "$root"
KEYGUARD_CRASH_KILLS=$kills cargo test --test crash -- --nocapture 2>&1 \
  | grep -E "^crash:|panicked|kill [0-9]+:|test result" 
