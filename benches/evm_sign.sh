#!/usr/bin/env bash
# eth_signTransaction load: keyguard (policy + durable audit on) next to anvil (no policy, no
# durability) under the same load generator, plus the raw k256 sign+recover ceiling.
#   benches/evm_sign.sh [connections] [seconds]
# Installs anvil from npm (@foundry-rs/anvil) under target/bench/. Prints the figures only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
connections=${1:-16}
seconds=${2:-10}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --bin keyguard --manifest-path "$root/Cargo.toml" >&2
bin=$target/release/keyguard

node_dir=$target/bench/node
if [ ! -x "$node_dir/node_modules/.bin/anvil" ]; then
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund @foundry-rs/anvil@1.7.1 >&2
fi
anvil=$node_dir/node_modules/.bin/anvil

cat > "$work/bench.toml" <<TOML
[data]
dir = "$work/var"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1"]
[[listeners]]
name = "bench"
protocol = "evm-jsonrpc"
address = "127.0.0.1:18550"
chain_id = 31337
auth = "none"
keys = ["*"]
[[policies]]
name = "bench"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = ["0x000000000000000000000000000000000000dEaD"]
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
TOML
KEYGUARD_PASSPHRASE=bench KEYGUARD_LOG=warn "$bin" start --config "$work/bench.toml" > "$work/kg.out" 2> "$work/kg.err" &
pids+=($!)
"$anvil" --port 18545 --silent > "$work/anvil.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "keyguard: ready" "$work/kg.out" 2>/dev/null && curl -sf -o /dev/null -H 'content-type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' http://127.0.0.1:18545 && break
  sleep 0.3
done
grep -q "keyguard: ready" "$work/kg.out" || { cat "$work/kg.err" >&2; exit 1; }

"$bin" bench --connections "$connections" --duration "$seconds" --half-load \
  --url http://127.0.0.1:18550 --url http://127.0.0.1:18545
echo "keyguard audit rows: $("$bin" audit verify --config "$work/bench.toml" 2>/dev/null)"
