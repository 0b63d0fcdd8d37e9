//! The web console end to end in a real browser (Debian's chromium, playwright-core, Chromium's
//! virtual WebAuthn authenticator with user verification): tests/interop/console_browser.cjs
//! does what each person does; this test starts keyguard, makes the people, and checks the
//! audit log afterwards. Screenshots land in target/console-screenshots/.
//!
//! Missing chromium or playwright-core fails the test (tests/run installs both); only
//! `KEYGUARD_SKIP_BROWSER=1` outside CI skips it, loudly.

mod common;
mod control;
mod webconsole;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use control::*;
use serde_json::{json, Value};
use webconsole::setup;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The node_modules holding playwright-core, or `None` when skipping is allowed and asked for.
fn browser_tools() -> Option<PathBuf> {
    let modules = std::env::var("KEYGUARD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node/node_modules")
        });
    let present =
        std::path::Path::new(CHROMIUM).exists() && modules.join("playwright-core").exists();
    if present {
        return Some(modules);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    if !ci && std::env::var("KEYGUARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: chromium or playwright-core missing (KEYGUARD_SKIP_BROWSER=1)");
        return None;
    }
    panic!(
        "{CHROMIUM} or {}/playwright-core is missing: run the tests through tests/run (it installs both)",
        modules.display()
    );
}

#[test]
fn people_use_the_console_in_a_real_browser() {
    let Some(modules) = browser_tools() else {
        return;
    };
    let s = setup(false);
    let ann = add_user2(
        &s.sock,
        &s.alice,
        &s.adam,
        "ann",
        &["approver"],
        &["treasury"],
    );
    let bob = add_user2(
        &s.sock,
        &s.alice,
        &s.adam,
        "bob",
        &["approver"],
        &["treasury"],
    );
    let aud = add_user(&s.sock, &s.alice, "aud", &["auditor"], &[]);
    let op = add_user(&s.sock, &s.alice, "op", &["operator"], &[]);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let cert = std::fs::read_to_string(s.dir.path().join("pki/admin-server.pem")).unwrap();
    let input = json!({
        "admin": s.origin,
        "rpc": format!("http://{}", s.daemon.rpc_addr()),
        "from": address(&s.daemon),
        "cert": cert,
        "shots": shots,
        "users": {
            "ann": hex::encode(&ann.secret), "bob": hex::encode(&bob.secret),
            "aud": hex::encode(&aud.secret), "op": hex::encode(&op.secret),
        },
    });
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/console_browser.cjs");
    let mut child = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let out: Value = serde_json::from_slice(&done.stdout).unwrap_or_else(|_| {
        panic!(
            "browser script: {} {}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        )
    });
    assert!(
        done.status.success() && out.get("error").is_none(),
        "{out:#}"
    );

    // What the people saw.
    assert_eq!(out["signed"], true);
    assert!(out["auditor_rows"].as_u64().unwrap() >= 1, "{out:#}");
    let exported = out["export_jsonl"].as_array().unwrap();
    assert!(
        !exported.is_empty()
            && exported
                .iter()
                .all(|r| r["decision"] == "signed" && r["chain"] == "eip155:31337"),
        "{out:#}"
    );
    assert!(out["refused_after_disable"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    for shot in [
        "console-approvals-phone",
        "console-overview",
        "console-audit",
        "console-keys",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}");
    }

    // What the audit log says: passkey sign-ins, two console approvals, one signature of the
    // held request (the retry), the operator's disable, then the refusal.
    let rows = audit_rows(&s.daemon.config, &[]);
    let count = |f: &dyn Fn(&Value) -> bool| rows.iter().filter(|r| f(r)).count();
    assert_eq!(
        count(&|r| r["method"] == "admin.console.signin" && r["decision"] == "accepted"),
        4
    );
    assert_eq!(
        count(&|r| r["method"] == "admin.approvals.approve" && r["decision"] == "accepted"),
        2
    );
    assert_eq!(
        count(&|r| r["decision"] == "signed"),
        1,
        "the held request signed exactly once"
    );
    assert_eq!(
        count(&|r| r["method"] == "admin.keys.disable"
            && r["client"] == "user:op"
            && r["decision"] == "accepted"),
        1
    );
    let last = rows.last().unwrap();
    assert_eq!(
        (&last["decision"], &last["key_id"]),
        (&json!("refused"), &json!("dev-secp256k1")),
        "{last}"
    );
}
