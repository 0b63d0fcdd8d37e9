#!/usr/bin/env bash
# Issue 14's benchmark: while HOSTILE clients (default 4) send the most expensive typed data
# inside the caps (docs/edge.md), one more client signs ordinary eth_signTransaction calls;
# prints its p50/p99 latency with and without the hostile load and the daemon's peak RSS.
#   benches/edge_load.sh [seconds] [hostile]       # default 20 s, 4 clients
#   KEYGUARD_BIN=target/release/keyguard benches/edge_load.sh   # (default: the debug build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
seconds=${1:-20}
hostile=${2:-4}
bin=${KEYGUARD_BIN:-$target/debug/keyguard}
[ -x "$bin" ] || cargo build --bin keyguard --manifest-path "$root/Cargo.toml" >&2
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/bench.toml" <<TOML
[data]
dir = "$work/var"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1"]
kdf_memory_kib = 1024
kdf_iterations = 1
[[listeners]]
name = "bench"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 31337
auth = "none"
keys = ["*"]
[[policies]]
name = "bench"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
[[policies.evm.typed_data]]
name = "bench-domain"
domain_name = "bench"
TOML
KEYGUARD_PASSPHRASE=bench KEYGUARD_LOG=warn "$bin" start --config "$work/bench.toml" > "$work/out" &
pid=$!
for _ in $(seq 100); do grep -q "keyguard: ready" "$work/out" 2>/dev/null && break; sleep 0.2; done
addr=$(sed -nE 's/^keyguard: listener bench evm-jsonrpc http:\/\/([^ ]+) .*/\1/p' "$work/out")
from=$(sed -nE 's/^keyguard: key [^ ]+ secp256k1 (0x[0-9a-fA-F]+).*/\1/p' "$work/out" | head -1)
echo "keyguard $bin on $addr, $(nproc) cores"
python3 "$root/benches/edge_load.py" "$addr" "$pid" "$seconds" "$hostile" "$from"
