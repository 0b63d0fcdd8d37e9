#!/usr/bin/env bash
# Policy-engine cost: eth_signTransaction throughput of one key governed by 1 rule next to one
# governed by 50 rules and 5 imported ABIs, measured in the same run under the same load. Both
# sign the same ERC-20 transfer; in the 50-rule policy the allowing rule is the last one, and
# 39 rules before it cover the same contract (so the calldata is decoded against every ABI and
# rejected at function or argument level), which is the worst case for evaluation.
#   benches/evm_policy.sh [connections] [seconds]
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

token=0x5FbDB2315678afecb367f032d93F642f64180aa3
alice=0x00000000000000000000000000000000000A11cE
# transfer(alice, 1000)
input=0xa9059cbb00000000000000000000000000000000000000000000000000000000000a11ce00000000000000000000000000000000000000000000000000000000000003e8

# Five imported ABIs (four synthetic of 24 functions each and the dispute game factory), next to
# the shipped erc20/erc721.
for n in 1 2 3 4; do
  {
    echo "["
    for f in $(seq 1 24); do
      sep=","; [ "$f" = 24 ] && sep=""
      echo "{\"type\":\"function\",\"name\":\"op${n}_${f}\",\"stateMutability\":\"nonpayable\",\"inputs\":[{\"name\":\"a\",\"type\":\"address\"},{\"name\":\"b\",\"type\":\"uint256\"},{\"name\":\"c\",\"type\":\"bytes\"}],\"outputs\":[]}$sep"
    done
    echo "]"
  } > "$work/synthetic$n.json"
done
cp "$root/configs/abi/dispute-game-factory.json" "$work/dgf.json"

common() { # $1 name, $2 port
cat <<TOML
[data]
dir = "$work/$1"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1"]
kdf_memory_kib = 8192
kdf_iterations = 1
[[listeners]]
name = "bench"
protocol = "evm-jsonrpc"
address = "127.0.0.1:$2"
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
TOML
}

{
  common one 18561
  cat <<TOML
[[policies.evm.rules]]
name = "transfer-to-alice"
to = ["$token"]
abi = "erc20"
functions = ["transfer"]
args.to = { one_of = ["$alice"] }
args.amount = { max = "1000000" }
TOML
} > "$work/one.toml"

{
  common fifty 18562
  echo 'abis = { s1 = "synthetic1.json", s2 = "synthetic2.json", s3 = "synthetic3.json", s4 = "synthetic4.json", dgf = "dgf.json" }'
  for i in $(seq 1 10); do
    printf '[[policies.evm.rules]]\nname = "deny-%d"\naction = "deny"\nto = ["0x%040x"]\n' "$i" "$((0xdead0000 + i))"
  done
  for i in $(seq 1 15); do
    printf '[[policies.evm.rules]]\nname = "approve-%d"\nto = ["%s"]\nabi = "erc20"\nfunctions = ["approve"]\n' "$i" "$token"
  done
  for i in $(seq 1 12); do
    abi=$(( (i % 5) + 1 )); case $abi in 5) abi=dgf ;; *) abi="s$abi" ;; esac
    printf '[[policies.evm.rules]]\nname = "other-abi-%d"\nto = ["%s"]\nabi = "%s"\n' "$i" "$token" "$abi"
  done
  for i in $(seq 1 6); do
    printf '[[policies.evm.rules]]\nname = "nft-%d"\nto = ["%s"]\nabi = "erc721"\nfunctions = ["setApprovalForAll"]\n' "$i" "$token"
  done
  for i in $(seq 1 6); do
    printf '[[policies.evm.rules]]\nname = "transfer-elsewhere-%d"\nto = ["%s"]\nabi = "erc20"\nfunctions = ["transfer"]\nargs.to = { one_of = ["0x%040x"] }\n' "$i" "$token" "$((0xbeef0000 + i))"
  done
  printf '[[policies.evm.rules]]\nname = "transfer-to-alice"\nto = ["%s"]\nabi = "erc20"\nfunctions = ["transfer"]\nargs.to = { one_of = ["%s"] }\nargs.amount = { max = "1000000" }\n' "$token" "$alice"
} > "$work/fifty.toml"
rules=$(grep -c '^\[\[policies.evm.rules\]\]' "$work/fifty.toml")
echo "policy A: 1 rule (url 1); policy B: $rules rules, 5 imported ABIs + erc20/erc721 (url 2)"

for name in one fifty; do
  KEYGUARD_PASSPHRASE=bench KEYGUARD_LOG=warn "$bin" start --config "$work/$name.toml" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
done
for name in one fifty; do
  for _ in $(seq 100); do grep -q "keyguard: ready" "$work/$name.out" 2>/dev/null && break; sleep 0.2; done
  grep -q "keyguard: ready" "$work/$name.out" || { cat "$work/$name.err" >&2; exit 1; }
done

# The policy alone, in process (no HTTP, no signing, no fsync): nanoseconds per decision.
cat > "$work/request.json" <<JSON
{"from": "0x000000000000000000000000000000000000bEEF", "to": "$token", "input": "$input",
 "value": "0x0", "gas": "0x186a0", "nonce": "0x1", "chainId": "0x7a69",
 "maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1"}
JSON
for name in one fifty; do
  ns=$("$bin" policy check --config "$work/$name.toml" --key dev-secp256k1 --request "$work/request.json" \
        --repeat 200000 | grep ns_per_evaluation | tr -dc '0-9.')
  echo "policy evaluation ($name): $ns ns per decision"
done

# A, B, then B, A: the order cancels drift (other load, SQLite file growth) between runs.
one=http://127.0.0.1:18561
fifty=http://127.0.0.1:18562
for order in "$one $fifty" "$fifty $one"; do
  set -- $order
  "$bin" bench --connections "$connections" --duration "$seconds" --ceiling 0 \
    --to "$token" --input "$input" --value 0x0 --url "$1" --url "$2" | grep -v '^machine' \
    | sed -e "s#$one#1 rule          #" -e "s#$fifty#50 rules, 5 ABIs#"
done
