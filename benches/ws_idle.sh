#!/usr/bin/env bash
# Memory under 1,000 idle WebSockets plus signing load, on a release build, with the 64 MiB
# peak-RSS bound asserted (tests/ws_idle.rs only reports the figure on debug builds).
#   benches/ws_idle.sh [limit-mib]      # default 64
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --bin keyguard --manifest-path "$root/Cargo.toml" >&2
KEYGUARD_BIN=$target/release/keyguard KEYGUARD_WS_IDLE_LIMIT_MIB=${1:-64} \
  cargo test --release --manifest-path "$root/Cargo.toml" --test ws_idle -- --nocapture
