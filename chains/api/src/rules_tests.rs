//! The registry is the only vocabulary: the docs table equals it, and every rule-shaped string
//! in the workspace's sources is one of its names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Strings in reserved namespaces that are not rule names: config keys, file names and admin
/// method names (they name a setting or a method, never a refusal).
const NOT_RULES: &[&str] = &[
    // rate-limit method families (`src/guard/family.rs`), not rules
    "evm.transaction",
    "bitcoin.psbt",
    "cometbft.consensus",
    // config keys and the method name of admin requests refused before dispatch, not rules
    "admin.limits",
    "admin.limits.handshake_timeout",
    "admin.limits.idle_timeout",
    "admin.max_pending_approvals",
    "admin.tls.client_ca",
    "admin.request",
    "store.postgres",
    "eth2.auth",
    "eth2.backend",
    "eth2.policy",
    "eth2.policy.fee_recipients",
    "eth2.policy.proposer_index",
    "eth2.policy.block_graffiti",
    "eth2.policy.require_block_proofs",
    // admin method names and their dispatch prefix, not rules
    "audit.query",
    "audit.verify",
    "audit.stats",
    "audit.anchors.anchor_file",
    "audit.anchors.anchor_interval",
    "audit.anchors.anchor_key",
    "bitcoin.",
    "bitcoin.release_claim",
    "bitcoin.transactions",
    "admin.sock",
    "admin.tcp",
    "admin.tls",
    "admin.issuer",
    "admin.proposal_ttl",
    "admin.audit_head_interval",
    "admin.totp_max_failures",
    "admin.keys.disable",
    "admin.console.enabled",
    "admin.console.origin",
    "admin.console.labels",
    "admin.console.session_idle",
    "admin.console.session_lifetime",
    "policy.reload",
    "bitcoin.require_approval.approvers",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name != "tests" && name != "testkit" {
                sources(&p, out);
            }
        } else if name.ends_with(".rs")
            && !name.starts_with("tests")
            && !name.ends_with("_tests.rs")
            && name != "testkit.rs"
        {
            out.push(p);
        }
    }
}

/// String literals on a line (good enough for rule names: no escapes inside them).
fn literals(line: &str) -> impl Iterator<Item = &str> {
    line.split('"').skip(1).step_by(2)
}

fn rule_shaped(s: &str) -> bool {
    RESERVED_NAMESPACES.iter().any(|p| s.starts_with(p))
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Every rule-shaped literal in `files`, with where it was found.
fn rule_literals(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests at the bottom of a source file may use made-up names on purpose.
        let body = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        for (i, line) in body.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for lit in literals(code) {
                if rule_shaped(lit) {
                    found.push((lit.to_string(), format!("{}:{}", f.display(), i + 1)));
                }
            }
        }
    }
    found
}

#[test]
fn every_rule_name_in_the_sources_is_registered() {
    let root = repo();
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for c in ["api", "evm", "bitcoin", "cometbft", "eth2"] {
        sources(&root.join("chains").join(c).join("src"), &mut files);
    }
    files.retain(|f| !f.ends_with("chains/api/src/rules.rs"));
    assert!(
        files.len() > 50,
        "source walk found only {} files",
        files.len()
    );
    let found = rule_literals(&files);
    // The walk must see the names the engines use, or it proves nothing.
    for must in [
        "bitcoin.dust",
        "cometbft.double_sign",
        "access.chain_not_granted",
    ] {
        assert!(found.iter().any(|(n, _)| n == must), "{must} not seen");
    }
    let unknown: Vec<_> = found
        .iter()
        .filter(|(n, _)| lookup(n).is_none() && !NOT_RULES.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "rule names used in code but missing from chains/api/src/rules.rs: {unknown:#?}"
    );
}

#[test]
fn the_scan_catches_an_unregistered_name() {
    // Negative control: a file using a made-up name is reported.
    let dir = std::env::temp_dir().join(format!("keyguard-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.rs");
    std::fs::write(
        &f,
        "fn f() { refuse(\"evm.made_up\", \"to\"); } // \"evm.comment\"\n",
    )
    .unwrap();
    let found = rule_literals(std::slice::from_ref(&f));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "evm.made_up");
    assert!(lookup("evm.made_up").is_none());
}

#[test]
fn docs_rules_table() {
    let path = repo().join("docs/rules.md");
    let want = docs_table();
    if std::env::var_os("KEYGUARD_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    // The names listed in the doc's table are exactly the registry's.
    let listed: BTreeSet<&str> = have
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let registry: BTreeSet<&str> = BUILTIN.iter().map(|r| r.name).collect();
    assert_eq!(
        listed, registry,
        "docs/rules.md lists other names than the registry"
    );
    assert!(
        have == want,
        "docs/rules.md is stale: run KEYGUARD_BLESS=1 cargo test -p keyguard-chain docs_rules_table"
    );
}

#[test]
fn names_are_unique_and_namespaced() {
    let mut seen = BTreeSet::new();
    for r in BUILTIN {
        assert!(seen.insert(r.name), "{} registered twice", r.name);
        assert!(rule_shaped(r.name), "{} is outside the namespaces", r.name);
    }
    for (old, new) in ALIASES {
        assert!(lookup(new).is_some(), "alias {old} -> unknown {new}");
        assert!(lookup(old).is_none());
    }
}

#[test]
fn user_names_cannot_shadow_builtin_namespaces() {
    for bad in [
        "evm.max_value",
        "EVM.max_value",
        "bitcoin.x",
        "admin.kill_switch",
        "kill_switch",
        "policy.limits",
        "",
    ] {
        assert!(check_user_rule_name(bad).is_err(), "{bad:?} accepted");
    }
    // Negative control: ordinary names pass.
    for ok in ["usdc-withdrawals", "deny-mixer", "evm_like", "my.evm.rule"] {
        assert!(check_user_rule_name(ok).is_ok(), "{ok:?} refused");
    }
}
