#!/usr/bin/env bash
# PKCS#11 signing on a SoftHSM2 token, in one run:
#   1. raw C_Sign (CKM_ECDSA, secp256k1) with N sessions on N threads: the token's ceiling;
#   2. keyguard's eth_signTransaction through the PKCS#11 backend with the same N sessions
#      (decode, policy, C_Sign, normalize + recovery id, pass 2, durable audit).
#   benches/pkcs11_sign.sh [sessions] [connections] [seconds]
# Needs softhsm2 (tests/run installs it). Prints the figures and keyguard/raw.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
sessions=${1:-2}
connections=${2:-16}
seconds=${3:-10}
lib=${KEYGUARD_SOFTHSM2_LIB:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$lib" ] || { echo "SoftHSM2 not found at $lib (apt-get install softhsm2)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --bin keyguard --manifest-path "$root/Cargo.toml" >&2
bin=$work/keyguard
cp "$target/release/keyguard" "$bin"   # the shared target dir may be rebuilt meanwhile

mkdir -p "$work/tokens"
export SOFTHSM2_CONF=$work/softhsm2.conf KG_BENCH_PIN=11223344
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$work/tokens" > "$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label kg-bench --pin "$KG_BENCH_PIN" --so-pin 55667788 >/dev/null

port=18560
cat > "$work/bench.toml" <<TOML
[data]
dir = "$work/var"
[keystore]
backend = "pkcs11"
[keystore.pkcs11]
library = "$lib"
token_label = "kg-bench"
pin_env = "KG_BENCH_PIN"
sessions = $sessions
[[listeners]]
name = "bench"
protocol = "evm-jsonrpc"
address = "127.0.0.1:$port"
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
"$bin" keys generate --backend pkcs11 --id bench --scheme secp256k1 --config "$work/bench.toml" >&2

echo "cores: $(nproc); sessions: $sessions; keyguard load: $connections connections; ${seconds}s per run"
raw=$("$bin" bench --ceiling 0 --duration "$seconds" --pkcs11-config "$work/bench.toml" --pkcs11-key bench \
  | grep '^raw C_Sign')
echo "$raw"

KEYGUARD_LOG=warn "$bin" start --config "$work/bench.toml" > "$work/kg.out" 2> "$work/kg.err" &
pids+=($!)
for _ in $(seq 100); do grep -q 'keyguard: ready' "$work/kg.out" 2>/dev/null && break; sleep 0.1; done
grep -q 'keyguard: ready' "$work/kg.out" || { cat "$work/kg.err" >&2; exit 1; }
kg=$("$bin" bench --ceiling 0 --duration "$seconds" --connections "$connections" \
  --url "http://127.0.0.1:$port" | grep 'peak')
echo "keyguard eth_signTransaction via pkcs11: ${kg#*peak: }"
# Where the daemon's CPU went during the run (seconds per thread name): the token's threads
# (pkcs11-sign-N) against the request path (tokio workers, audit writer).
tck=$(getconf CLK_TCK)
for t in /proc/"${pids[0]}"/task/*; do
  read -r -a f < "$t/stat" || continue
  echo "$(cat "$t/comm") $(( f[13] + f[14] ))"
done | awk -v t="$tck" '{a[$1]+=$2} END {printf "keyguard CPU by thread (s):"; for (k in a) if (a[k] > 0) printf " %s %.2f", k, a[k]/t; print ""}'
raw_rate=$(sed -E 's/.*: ([0-9]+) tx\/s.*/\1/' <<<"$raw")
kg_rate=$(sed -E 's/.*peak: ([0-9]+) tx\/s.*/\1/' <<<"$kg")
awk -v k="$kg_rate" -v r="$raw_rate" 'BEGIN { printf "keyguard / raw C_Sign: %.0f%%\n", 100 * k / r }'
