//! Runs the EIP-3076 interchange test cases (`tests/vectors/eth2/interchange/`) against any
//! slashing-protection store, given as closures over a fresh database per case, with either
//! strategy: complete (`should_succeed_complete` where a case has it) or minimal
//! (`should_succeed`). Shared by the SQLite unit test and the PostgreSQL
//! integration test so both engines answer the same cases.

use std::path::PathBuf;

use serde_json::Value;

/// The store under test, fresh for one case.
pub(crate) trait Db {
    /// Imports an interchange file (raw JSON) against the case's genesis validators root.
    fn import(&mut self, file: &[u8], gvr: &[u8; 32]) -> bool;
    /// Attempts a block; true when it may be signed.
    fn block(&mut self, pk: &[u8; 48], slot: u64, root: Option<[u8; 32]>) -> bool;
    /// Attempts an attestation; true when it may be signed.
    fn attestation(&mut self, pk: &[u8; 48], s: u64, t: u64, root: Option<[u8; 32]>) -> bool;
}

fn hex_n<const N: usize>(v: &Value) -> [u8; N] {
    let s = v.as_str().unwrap().trim_start_matches("0x");
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

fn num(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

/// Every case file, sorted.
pub(crate) fn cases() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/eth2/interchange");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert!(v.len() >= 38, "vectors missing from {}", dir.display());
    v
}

/// Which of the vectors' expectations a run checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    Complete,
    Minimal,
}

/// Runs one case; the mismatches (empty: passed).
pub(crate) fn run_case(path: &std::path::Path, db: &mut dyn Db, strategy: Strategy) -> Vec<String> {
    let case: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let name = case["name"].as_str().unwrap().to_string();
    let gvr = hex_n::<32>(&case["genesis_validators_root"]);
    let mut fails = Vec::new();
    for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let want = step["should_succeed"].as_bool().unwrap();
        let got = db.import(step["interchange"].to_string().as_bytes(), &gvr);
        if got != want {
            fails.push(format!("{name} step {i}: import {got}, expected {want}"));
        }
        let expect = |x: &Value| match strategy {
            Strategy::Complete => x
                .get("should_succeed_complete")
                .and_then(Value::as_bool)
                .unwrap_or_else(|| x["should_succeed"].as_bool().unwrap()),
            Strategy::Minimal => x["should_succeed"].as_bool().unwrap(),
        };
        for (j, b) in step["blocks"].as_array().unwrap().iter().enumerate() {
            let root = b.get("signing_root").map(hex_n::<32>);
            let got = db.block(&hex_n::<48>(&b["pubkey"]), num(&b["slot"]), root);
            if got != expect(b) {
                fails.push(format!(
                    "{name} step {i} block {j}: signed {got}, expected {}",
                    expect(b)
                ));
            }
        }
        for (j, a) in step["attestations"].as_array().unwrap().iter().enumerate() {
            let root = a.get("signing_root").map(hex_n::<32>);
            let got = db.attestation(
                &hex_n::<48>(&a["pubkey"]),
                num(&a["source_epoch"]),
                num(&a["target_epoch"]),
                root,
            );
            if got != expect(a) {
                fails.push(format!(
                    "{name} step {i} attestation {j}: signed {got}, expected {}",
                    expect(a)
                ));
            }
        }
    }
    fails
}
