#!/usr/bin/env bash
# Soak: keyguard (policy + durable audit on) under paced eth_signTransaction load for minutes;
# fails unless throughput stays steady, the daemon's RSS stays flat and nothing fails but the
# intended policy refusals (every 50th request names a chain id no policy allows).
#   benches/soak.sh [minutes] [rate] [connections]
# Without a rate it first measures the closed-loop peak for 15 s and offers 80% of it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
minutes=${1:-10}
rate=${2:-}
connections=${3:-16}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --bin keyguard --manifest-path "$root/Cargo.toml" >&2
bin=$target/release/keyguard

cat > "$work/soak.toml" <<TOML
[data]
dir = "$work/var"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1"]
[[listeners]]
name = "soak"
protocol = "evm-jsonrpc"
address = "127.0.0.1:18551"
chain_id = 31337
auth = "none"
keys = ["*"]
[[policies]]
name = "soak"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = ["0x000000000000000000000000000000000000dEaD"]
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
TOML
KEYGUARD_PASSPHRASE=soak KEYGUARD_LOG=warn "$bin" start --config "$work/soak.toml" > "$work/kg.out" 2> "$work/kg.err" &
pid=$!
pids+=($pid)
for _ in $(seq 100); do grep -q "keyguard: ready" "$work/kg.out" 2>/dev/null && break; sleep 0.3; done
grep -q "keyguard: ready" "$work/kg.out" || { cat "$work/kg.err" >&2; exit 1; }

"$bin" bench soak --url http://127.0.0.1:18551 --pid "$pid" --minutes "$minutes" \
  --connections "$connections" --refuse-every 50 ${rate:+--rate "$rate"}
echo "keyguard audit: $("$bin" audit verify --config "$work/soak.toml" 2>/dev/null)"
