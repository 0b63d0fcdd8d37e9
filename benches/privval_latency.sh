#!/usr/bin/env bash
# CometBFT privval vote-signing latency through the real transports (Unix socket and TCP
# SecretConnection), with the watermark committed (SQLite, synchronous=FULL) before every reply,
# the same over a Unix socket with the watermark in PostgreSQL on loopback (synchronous_commit on),
# and, as floors measured in the same run: a bare pwrite+fdatasync of the same disk, a one-row
# SQLite commit with keyguard's settings (WAL, synchronous=FULL), and a one-row PostgreSQL commit
# and a bare round trip over the same socket with the same client library (tokio-postgres).
# p50/p99 over 10,000 sequential votes each (KEYGUARD_BENCH_VOTES to change).
#
# With TMKMS_BIN set (tmkms built with `cargo install tmkms --features softsign --locked`), the
# same harness also runs against tmkms (which does not fsync its state file).
#
#   benches/privval_latency.sh
#   TMKMS_BIN=~/.cargo/bin/tmkms benches/privval_latency.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --bin keyguard
KEYGUARD_BIN="$TARGET_DIR/release/keyguard" \
  cargo test --test privval vote_signing_latency -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -E "privval (reference|keyguard|tmkms)|test result" | sed 's/.*privval /privval /'
