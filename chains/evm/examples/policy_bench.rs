//! Policy cost in process: nanoseconds per decision for the policy of `benches/evm_policy.sh`
//! (1 rule, and 50 rules + 5 imported ABIs with the allowing rule last), same request.
//!   cargo run --release -p keyguard-evm --example policy_bench [iterations]

use std::time::Instant;

use keyguard_evm::{decode_sign_transaction_params, EvmPolicy};
use serde_json::json;

const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const ALICE: &str = "0x00000000000000000000000000000000000A11cE";

fn head() -> String {
    "chain_ids = [31337]\nto = \"any\"\nmax_value = \"1 ether\"\nmax_fee_per_gas = \"500 gwei\"\n\
     max_priority_fee_per_gas = \"500 gwei\"\nmax_fee_per_blob_gas = \"500 gwei\"\n"
        .into()
}

fn last_rule() -> String {
    format!(
        "[[rules]]\nname = \"transfer-to-alice\"\nto = [\"{TOKEN}\"]\nabi = \"erc20\"\n\
         functions = [\"transfer\"]\nargs.to = {{ one_of = [\"{ALICE}\"] }}\n\
         args.amount = {{ max = \"1000000\" }}\n"
    )
}

fn fifty(dir: &std::path::Path) -> String {
    for n in 1..=4 {
        let fns: Vec<String> = (1..=24)
            .map(|f| {
                format!(
                    "{{\"type\":\"function\",\"name\":\"op{n}_{f}\",\"stateMutability\":\"nonpayable\",\
                     \"inputs\":[{{\"name\":\"a\",\"type\":\"address\"}},{{\"name\":\"b\",\"type\":\"uint256\"}},\
                     {{\"name\":\"c\",\"type\":\"bytes\"}}],\"outputs\":[]}}"
                )
            })
            .collect();
        std::fs::write(
            dir.join(format!("synthetic{n}.json")),
            format!("[{}]", fns.join(",")),
        )
        .unwrap();
    }
    let dgf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/abi/dispute-game-factory.json"
    );
    std::fs::copy(dgf, dir.join("dgf.json")).unwrap();
    let mut s = head();
    s.push_str("abis = { s1 = \"synthetic1.json\", s2 = \"synthetic2.json\", s3 = \"synthetic3.json\", s4 = \"synthetic4.json\", dgf = \"dgf.json\" }\n");
    for i in 1..=10 {
        s.push_str(&format!(
            "[[rules]]\nname = \"deny-{i}\"\naction = \"deny\"\nto = [\"0x{:040x}\"]\n",
            0xdead0000u64 + i
        ));
    }
    for i in 1..=15 {
        s.push_str(&format!("[[rules]]\nname = \"approve-{i}\"\nto = [\"{TOKEN}\"]\nabi = \"erc20\"\nfunctions = [\"approve\"]\n"));
    }
    for i in 1..=12 {
        let abi = match (i % 5) + 1 {
            5 => "dgf".to_string(),
            n => format!("s{n}"),
        };
        s.push_str(&format!(
            "[[rules]]\nname = \"other-abi-{i}\"\nto = [\"{TOKEN}\"]\nabi = \"{abi}\"\n"
        ));
    }
    for i in 1..=6 {
        s.push_str(&format!("[[rules]]\nname = \"nft-{i}\"\nto = [\"{TOKEN}\"]\nabi = \"erc721\"\nfunctions = [\"setApprovalForAll\"]\n"));
    }
    for i in 1..=6 {
        s.push_str(&format!(
            "[[rules]]\nname = \"transfer-elsewhere-{i}\"\nto = [\"{TOKEN}\"]\nabi = \"erc20\"\n\
             functions = [\"transfer\"]\nargs.to = {{ one_of = [\"0x{:040x}\"] }}\n",
            0xbeef0000u64 + i
        ));
    }
    s.push_str(&last_rule());
    s
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("keyguard-policy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let intent = decode_sign_transaction_params(&json!([{
        "from": "0x000000000000000000000000000000000000bEEF", "to": TOKEN,
        "input": "0xa9059cbb00000000000000000000000000000000000000000000000000000000000a11ce00000000000000000000000000000000000000000000000000000000000003e8",
        "value": "0x0", "gas": "0x186a0", "nonce": "0x1", "chainId": "0x7a69",
        "maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1"
    }]))
    .unwrap();
    for (name, text) in [
        ("1 rule", format!("{}{}", head(), last_rule())),
        ("50 rules + 5 ABIs", fifty(&dir)),
    ] {
        let p: EvmPolicy = toml::from_str(&text).unwrap();
        p.prepare(&dir).unwrap();
        assert!(p.decide(&intent, 0).is_ok(), "{name}: not allowed");
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(p.decide(std::hint::black_box(&intent), 0)).ok();
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!("{name}: {ns:.0} ns per decision ({n} decisions)");
    }
    std::fs::remove_dir_all(&dir).ok();
}
