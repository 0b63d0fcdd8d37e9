#!/usr/bin/env bash
# Every throughput and latency benchmark of every protocol and backend in one run, printed as
# one Markdown table: keyguard's figure, the reference measured in the same run (raw signing
# ceiling, raw token C_Sign, anvil, tmkms), and the ratio.
#
#   benches/all.sh [seconds-per-measurement]          # default 10
#   TMKMS_BIN=~/.cargo/bin/tmkms benches/all.sh       # include the tmkms comparison
#
# Each row comes from one of the scripts next to this one (run them alone for the details);
# their full output is kept in target/bench/all-<time>/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-10}
target=${CARGO_TARGET_DIR:-$root/target}
logs=$target/bench/all-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$logs"
cargo build --release --bin keyguard --manifest-path "$root/Cargo.toml" >&2

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
# Field helpers over `keyguard bench` lines: "<label>: N tx/s (...), latency p50 X ms, p99 Y ms".
rate() { grep -m1 -F "$2" "$1" | sed -E 's/.*: ([0-9]+) tx\/s.*/\1/'; }
p50() { grep -m1 -F "$2" "$1" | sed -E 's/.*p50 ([0-9.]+) ms.*/\1/'; }
p99() { grep -m1 -F "$2" "$1" | sed -E 's/.*p99 ([0-9.]+) ms.*/\1/'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f %%", 100 * a / b; else print "n/a" }'; }
times() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
step() { echo "==> benches/all.sh: $*" >&2; }

step "EVM eth_signTransaction, software keystore (evm_sign.sh)"
"$root/benches/evm_sign.sh" 16 "$seconds" > "$logs/evm_sign.txt"
kg=$(rate "$logs/evm_sign.txt" "18550 peak")
ceiling=$(grep -m1 "^keyguard's own crypto path" "$logs/evm_sign.txt" | sed -E 's/.*: ([0-9]+) tx\/s.*/\1/')
anvil=$(rate "$logs/evm_sign.txt" "18545 peak")
row "EVM eth_signTransaction, software (16 conns)" \
  "$kg tx/s, p99 $(p99 "$logs/evm_sign.txt" "18550 peak") ms" "raw crypto (k256 sign + libsecp256k1 recover, all cores) $ceiling tx/s" "$(pct "$kg" "$ceiling")"
row "EVM eth_signTransaction, software (16 conns)" "$kg tx/s" "anvil $anvil tx/s (no policy, no fsync)" "$(pct "$kg" "$anvil")"

step "EVM policy engine cost (evm_policy.sh)"
"$root/benches/evm_policy.sh" 16 "$seconds" > "$logs/evm_policy.txt"
# Both orders (A,B then B,A) are in the log; the average cancels drift between runs.
avg() { grep -E "$2" "$1" | sed -E 's/.*: ([0-9]+) tx\/s.*/\1/' | awk '{s+=$1; n++} END {printf "%.0f", s/n}'; }
one=$(avg "$logs/evm_policy.txt" '^1 rule +peak')
fifty=$(avg "$logs/evm_policy.txt" '^50 rules, 5 ABIs peak')
row "EVM policy: 50 rules + 5 ABIs vs 1 rule" "$fifty tx/s" "1 rule $one tx/s" "$(pct "$fifty" "$one")"

for sessions in 1 2; do
  step "EVM via PKCS#11 on SoftHSM2, $sessions session(s) (pkcs11_sign.sh)"
  "$root/benches/pkcs11_sign.sh" "$sessions" 16 "$seconds" > "$logs/pkcs11_$sessions.txt"
  raw=$(rate "$logs/pkcs11_$sessions.txt" "raw C_Sign")
  kg=$(grep -m1 '^keyguard eth_signTransaction via pkcs11' "$logs/pkcs11_$sessions.txt" \
    | sed -E 's/.*: ([0-9]+) tx\/s.*/\1/')
  row "EVM via PKCS#11 (SoftHSM2), $sessions session(s)" "$kg tx/s" "raw C_Sign $raw/s" "$(pct "$kg" "$raw")"
done

step "CometBFT privval vote latency, 10,000 sequential votes (privval_latency.sh)"
"$root/benches/privval_latency.sh" > "$logs/privval.txt" 2>&1
for transport in unix secretconnection; do
  kg=$(grep -m1 -E "^privval keyguard .*$transport" "$logs/privval.txt" || true)
  tm=$(grep -m1 -E "^privval tmkms .*$transport" "$logs/privval.txt" || true)
  [ -n "$kg" ] || continue
  kp50=$(sed -E 's/.*p50 ([0-9.]+) ms.*/\1/' <<<"$kg"); kp99=$(sed -E 's/.*p99 ([0-9.]+) ms.*/\1/' <<<"$kg")
  if [ -n "$tm" ]; then
    tp50=$(sed -E 's/.*p50 ([0-9.]+) ms.*/\1/' <<<"$tm"); tp99=$(sed -E 's/.*p99 ([0-9.]+) ms.*/\1/' <<<"$tm")
    row "privval vote latency ($transport), fsync per vote" "p50 $kp50 ms, p99 $kp99 ms" \
      "tmkms (no fsync) p50 $tp50 ms, p99 $tp99 ms" "p50 $(times "$kp50" "$tp50"), p99 $(times "$kp99" "$tp99")"
  else
    row "privval vote latency ($transport), fsync per vote" "p50 $kp50 ms, p99 $kp99 ms" "tmkms not run (set TMKMS_BIN)" "n/a"
  fi
done

step "Bitcoin PSBT signing, in process (cargo bench --bench bitcoin_psbt)"
cargo bench --manifest-path "$root/Cargo.toml" --bench bitcoin_psbt -- $(( seconds < 3 ? 1 : seconds / 3 )) \
  > "$logs/bitcoin.txt" 2>&1
while read -r kind inputs raw _backend psbts per_sig _; do
  row "Bitcoin PSBT $kind, $inputs input(s), policy on" "$psbts PSBT/s ($per_sig sig/s)" \
    "raw libsecp256k1 $raw sig/s" "$(pct "$per_sig" "$raw")"
done < <(grep -E '^(p2wpkh|p2tr) ' "$logs/bitcoin.txt")

step "Ethereum staking attestations, 1,000 BLS keys, SQLite and PostgreSQL (eth2_sign.sh)"
"$root/benches/eth2_sign.sh" > "$logs/eth2.txt"
eth2_ceiling=$(grep -m1 -F "crypto ceiling" "$logs/eth2.txt" |
  sed -E 's/.*crypto ceiling \(sign \+ batched verify, all cores\) ([0-9]+)\/s.*/\1/')
for store in sqlite postgres; do
  line=$(grep -m1 -F "eth2 bench [$store]" "$logs/eth2.txt")
  sigs=$(sed -E 's/.*throughput=([0-9]+)\/s.*/\1/' <<<"$line")
  p99=$(sed -E 's/.* p99=([0-9.]+)ms.*/\1/' <<<"$line")
  epoch=$(sed -E "s/.*10,000 validators' epoch: ([0-9.]+) s.*/\1/" <<<"$line")
  row "eth2 attestations, 1,000 BLS keys, $store (64 in flight)" \
    "$sigs sig/s, p99 $p99 ms; 10,000 validators' epoch $epoch s" \
    "blst sign + batched pass 2, all cores $eth2_ceiling/s" "$(pct "$sigs" "$eth2_ceiling")"
done

echo
echo "keyguard $(git -C "$root" describe --always --dirty), $(nproc) cores, $(date -u +%Y-%m-%d), ${seconds}s per measurement"
echo
echo "| benchmark | keyguard | reference, same run | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "(full outputs: $logs)"
