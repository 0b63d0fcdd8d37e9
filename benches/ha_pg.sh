#!/usr/bin/env bash
# The shared PostgreSQL store against the SQLite default, in one run on the same cores:
# - privval vote latency (p50/p99, Unix socket) with the watermark in SQLite and in PostgreSQL on
#   loopback (synchronous_commit on), beside a bare pwrite+fdatasync of the same disk;
# - eth_signTransaction throughput (nonce fence + audit row per signature) with SQLite, with
#   PostgreSQL, and with two instances sharing PostgreSQL (two load generators at once).
#   benches/ha_pg.sh [seconds per throughput run]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --bin keyguard
export KEYGUARD_BIN="$TARGET_DIR/release/keyguard" KEYGUARD_BENCH_SECS="${1:-10}"
cargo test --test privval -- --ignored --nocapture --exact \
  bench::vote_signing_latency bench::vote_signing_latency_postgres 2>&1 | grep -E "^privval"
cargo test --test ha_bench -- --ignored --nocapture 2>&1 | grep -E "^ha-bench"
