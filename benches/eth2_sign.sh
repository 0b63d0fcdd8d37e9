#!/usr/bin/env bash
# Ethereum staking attestations (issue 16): 1,000 BLS keys, 3 attestations each, 64 in flight,
# every slashing record and audit row durable before the answer, through the eth2 guard with
# SQLite (synchronous=FULL) and with PostgreSQL on loopback (fsync and synchronous_commit on);
# and, in the same run, each piece alone: blst sign (the ceiling), verify alone and batched,
# hash-to-G2, key validation, decoding, and each store's slashing and audit commits.
# Prints signatures/s, p50/p99 per request and the projected time of 10,000 validators' epoch.
#
#   benches/eth2_sign.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo test --release --no-default-features --test eth2_bench -- --ignored --nocapture 2>&1 |
  grep -E "^eth2 bench|test result"
