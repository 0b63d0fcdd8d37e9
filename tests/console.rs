//! The web console over real TLS against the real daemon, driven by a minimal HTTP client and
//! a software passkey (tests/webconsole). Each safety check has its positive control: the same
//! request, properly authenticated, succeeds.
//!
//! The attacker's table: no session; a planted session id (fixation); a stolen session without
//! a TOTP code; a cross-site form (wrong or missing Origin); a form without or with a stale
//! CSRF token; an approver calling admin methods; an authenticator that did not verify the
//! user; a replayed assertion; another user's passkey; an assertion for another origin; a wrong
//! TOTP at enrolment; the console's paths on a signing listener.

mod common;
mod control;
mod webconsole;

use common::Daemon;
use control::*;
use serde_json::{json, Value};
use webconsole::{enrol_and_sign_in, setup, sign_in, Passkey};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn outcome(body: &str) -> &str {
    body.split("id=\"outcome\"").nth(1).unwrap_or(body)
}

#[test]
fn console_sign_in_sessions_csrf_origin_and_roles() {
    let s = setup(false);
    let ann = add_user2(
        &s.sock,
        &s.alice,
        &s.adam,
        "ann",
        &["approver"],
        &["treasury"],
    );
    let mut b = s.browser();

    // Security headers on every page, also before sign-in.
    let signin = b.get("/console/signin");
    assert_eq!(signin.status, 200);
    assert_eq!(signin.header("content-security-policy"), Some(CSP));
    assert_eq!(signin.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(signin.header("referrer-policy"), Some("same-origin"));
    assert!(
        !signin.body.contains("<script>") && !signin.body.contains("style="),
        "no inline script or style"
    );
    let js = b.get("/console/static/app.js");
    assert_eq!(
        (js.status, js.header("content-type")),
        (200, Some("text/javascript; charset=utf-8"))
    );

    // The console is not on the signing listener (negative control: it is on the admin one).
    let (status, body) = common::http(&s.daemon.rpc_addr(), "GET", "/console/signin", "");
    assert_ne!(status, 200, "{body}");
    assert!(!body.contains("Sign in with passkey"));

    // No session: pages redirect, actions are refused.
    assert_eq!(b.get("/console/approvals").status, 303);
    let r = b.post_form(
        "/console/act",
        &[
            ("method", "keys.disable"),
            ("all", "true"),
            ("totp", &s.alice.code()),
        ],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("admin.console_session"));

    // Enrolment needs the user's TOTP code.
    let wrong = b.post_json(
        "/console/passkey/enrol/start",
        &json!({"user": "ann", "totp": ann.wrong_code()}),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.json()["rule"], "admin.auth");

    // An authenticator that did not verify the user is refused (then the same key, verifying, passes).
    let mut key = Passkey::new("localhost", 7);
    let origin = s.origin.clone();
    let opts = b.post_json(
        "/console/passkey/enrol/start",
        &json!({"user": "ann", "totp": ann.code()}),
    );
    key.user_verified = false;
    let r = b.post_json(
        "/console/passkey/enrol/finish",
        &key.register(&opts.json(), &origin),
    );
    assert_eq!(
        r.status, 401,
        "enrolment without user verification: {}",
        r.body
    );
    key.user_verified = true;

    // Fixation: an id planted before sign-in is never the session id after it.
    let planted = "ab".repeat(32);
    b.cookies
        .insert("__Host-kg_session".into(), planted.clone());
    enrol_and_sign_in(&mut b, &mut key, "ann", &ann.code());
    let session = b
        .cookies
        .get("__Host-kg_session")
        .cloned()
        .expect("session cookie");
    assert_ne!(session, planted);
    let mut attacker = s.browser();
    attacker.cookies.insert("__Host-kg_session".into(), planted);
    assert_eq!(
        attacker.get("/console/approvals").status,
        303,
        "the planted id is not signed in"
    );
    assert_eq!(b.get("/console/approvals").status, 200, "the new id is");

    // Cookie flags.
    let mut again = s.browser();
    let fin = sign_in(&mut again, &mut key, "ann");
    assert_eq!(fin.status, 200, "{}", fin.body);
    let cookie = fin
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-kg_session="))
        .unwrap()
        .to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");

    // A replayed assertion: the challenge was single use.
    let mut replay = s.browser();
    let opts = replay.post_json("/console/passkey/signin/start", &json!({"user": "ann"}));
    let answer = key.assert(&opts.json(), &s.origin);
    let first = replay.post_json("/console/passkey/signin/finish", &answer);
    assert_eq!(first.status, 200, "{}", first.body);
    replay.cookies.clear();
    let again = replay.post_json("/console/passkey/signin/finish", &answer);
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(!replay.cookies.contains_key("__Host-kg_session"));
    // Another user's passkey does not sign in as bob (bob has his own; negative control: it works).
    let bob = add_user2(
        &s.sock,
        &s.alice,
        &s.adam,
        "bob",
        &["approver"],
        &["treasury"],
    );
    let mut bkey = Passkey::new("localhost", 8);
    let mut bb = s.browser();
    enrol_and_sign_in(&mut bb, &mut bkey, "bob", &bob.code());
    assert_eq!(bb.get("/console/approvals").status, 200);
    let mut imposter = s.browser();
    let r = sign_in(&mut imposter, &mut key, "bob");
    assert_eq!(r.status, 401, "ann's passkey for bob: {}", r.body);
    assert!(!imposter.cookies.contains_key("__Host-kg_session"));
    // An assertion made for another origin is refused.
    let mut elsewhere = s.browser();
    let opts = elsewhere.post_json("/console/passkey/signin/start", &json!({"user": "ann"}));
    let r = elsewhere.post_json(
        "/console/passkey/signin/finish",
        &key.assert(&opts.json(), "https://evil.example"),
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // Sign-in with the passkey but no user verification is refused.
    let mut no_uv = s.browser();
    key.user_verified = false;
    let r = sign_in(&mut no_uv, &mut key, "ann");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!no_uv.cookies.contains_key("__Host-kg_session"));
    key.user_verified = true;

    let csrf = b.csrf("/console/approvals");
    // A state change without a fresh TOTP code is refused, even with session and CSRF token.
    let r = b.post_form(
        "/console/act",
        &[
            ("csrf", &csrf),
            ("method", "approvals.approve"),
            ("id", "nope"),
        ],
    );
    assert!(outcome(&r.body).contains("admin.auth"), "{}", r.body);
    // Wrong or missing CSRF token.
    for bad in ["", "00"] {
        let r = b.post_form(
            "/console/act",
            &[
                ("csrf", bad),
                ("method", "approvals.approve"),
                ("id", "x"),
                ("totp", &ann.code()),
            ],
        );
        assert_eq!(r.status, 403);
        assert!(r.body.contains("admin.console_csrf"), "{}", r.body);
    }
    // Another origin, or none.
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let r = b.post_form_from(
            origin,
            "/console/act",
            &[
                ("csrf", &csrf),
                ("method", "approvals.approve"),
                ("id", "x"),
                ("totp", &ann.code()),
            ],
        );
        assert_eq!(r.status, 403, "{origin:?}");
        assert!(r.body.contains("admin.console_origin"));
    }
    // Positive control: the same request with everything right reaches the approvals book
    // (which refuses the unknown id by its own rule, past every console check).
    let r = b.post_form(
        "/console/act",
        &[
            ("csrf", &csrf),
            ("method", "approvals.approve"),
            ("id", "x"),
            ("totp", &ann.code()),
        ],
    );
    assert!(
        outcome(&r.body).contains("approval.not_pending"),
        "{}",
        r.body
    );

    // Role escalation: an approver with a valid code cannot act as an admin or operator.
    for (method, extra) in [
        ("users.add", ("name", "mallory")),
        ("keys.disable", ("all", "true")),
        ("clients.add", ("name", "x")),
    ] {
        let mut fields = vec![("csrf", csrf.as_str()), ("method", method), extra];
        let code = ann.code();
        fields.push(("totp", &code));
        fields.push(("roles", "admin"));
        let r = b.post_form("/console/act", &fields);
        assert!(
            outcome(&r.body).contains("admin.role"),
            "{method}: {}",
            r.body
        );
    }
    // Methods outside the console's list are refused before anything runs.
    let r = b.post_form(
        "/console/act",
        &[
            ("csrf", &csrf),
            ("method", "watermarks.repair"),
            ("totp", &ann.code()),
        ],
    );
    assert_eq!(r.status, 400);
    // An approver's read of an admin page is refused by the role table too.
    let people = b.get("/console/people");
    assert!(people.body.contains("admin.role"), "{}", people.body);

    // Positive control for roles: an admin's console adds a user and gets the QR code once.
    let mut admin = s.browser();
    let mut akey = Passkey::new("localhost", 9);
    enrol_and_sign_in(&mut admin, &mut akey, "alice", &s.alice.code());
    let acsrf = admin.csrf("/console/people");
    let code = s.alice.code();
    let r = admin.post_form(
        "/console/act",
        &[
            ("csrf", &acsrf),
            ("method", "users.add"),
            ("name", "olga"),
            ("roles", "operator"),
            ("totp", &code),
        ],
    );
    assert!(
        r.body.contains("Done: users.add")
            && r.body.contains("<svg")
            && r.body.contains("otpauth://totp/"),
        "{}",
        r.body
    );

    // Refusals went through the admin audit path, with the same rule names.
    let rows = audit_rows(&s.daemon.config, &[]);
    let refused = |m: &str| {
        rows.iter()
            .any(|r| r["client"] == "user:ann" && r["method"] == m && r["rule"] == "admin.role")
    };
    assert!(
        refused("admin.users.add") && refused("admin.keys.disable"),
        "{rows:?}"
    );
    assert!(rows
        .iter()
        .any(|r| r["method"] == "admin.console.signin" && r["decision"] == "accepted"));
    assert!(rows.iter().any(|r| r["method"] == "admin.users.add"
        && r["client"] == "user:alice"
        && r["decision"] == "accepted"));

    // Sign out ends the session server-side.
    let csrf = b.csrf("/console/approvals");
    assert_eq!(
        b.post_form("/console/signout", &[("csrf", &csrf)]).status,
        303
    );
    b.cookies.insert("__Host-kg_session".into(), session);
    assert_eq!(b.get("/console/approvals").status, 303);
}

fn held_id(daemon: &Daemon) -> (String, String, String) {
    let (rpc, from) = (daemon.rpc_addr(), address(daemon));
    let held = sign(&rpc, &from, 11 * ETHER, 0);
    assert_eq!(error_code(&held), Some(-32002), "{held}");
    (
        held["error"]["data"]["approval_id"]
            .as_str()
            .unwrap()
            .to_string(),
        rpc,
        from,
    )
}

#[test]
fn console_approves_audits_and_stops_a_key() {
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
    let (id, rpc, from) = held_id(&s.daemon);

    // The JSON-RPC admin API keeps working on the same listener.
    let rpc_body = json!({"jsonrpc": "2.0", "id": 1, "method": "keys.status",
        "params": {"auth": {"user": "alice", "totp": s.alice.code()}}});
    let answer = control::pki::post(&s.addr, &s.tls, &rpc_body.to_string()).unwrap();
    assert!(answer.contains("\"all_disabled\":false"), "{answer}");

    // Live updates: an approver whose page is stale is told at once; an operator (no
    // approvals.list) gets nothing.
    let mut live = s.browser();
    enrol_and_sign_in(
        &mut live,
        &mut Passkey::new("localhost", 5),
        "bob",
        &bob.code(),
    );
    let ev = live.get("/console/events?version=stale");
    assert_eq!(ev.header("content-type"), Some("text/event-stream"));
    assert!(ev.body.contains("event: changed"), "{}", ev.body);
    let mut opb = s.browser();
    enrol_and_sign_in(
        &mut opb,
        &mut Passkey::new("localhost", 6),
        "op",
        &op.code(),
    );
    let ev = opb.get("/console/events?version=stale");
    assert_eq!(ev.status, 403, "{}", ev.body);
    assert!(!ev.body.contains("changed"));

    // Two approvers, each on their own passkey, approve with their own fresh TOTP code.
    for (user, seed) in [(&ann, 1u8), (&bob, 2u8)] {
        let mut b = s.browser();
        let mut key = Passkey::new("localhost", seed);
        enrol_and_sign_in(&mut b, &mut key, &user.name, &user.code());
        let page = b.get("/console/approvals");
        assert!(page.body.contains(&id), "{}", page.body);
        // The decoded intent: destination and amount.
        assert!(
            page.body
                .to_lowercase()
                .contains("0x000000000000000000000000000000000000dead"),
            "{}",
            page.body
        );
        assert!(
            page.body.contains(&(11 * ETHER).to_string())
                && page.body.contains("Send 11 ETH to 0x")
                // The operator's label for the destination, from the configuration.
                && page.body.contains("(Burn address)"),
            "{}",
            page.body
        );
        let csrf = b.csrf("/console/approvals");
        let code = user.code();
        let r = b.post_form(
            "/console/act",
            &[
                ("csrf", &csrf),
                ("method", "approvals.approve"),
                ("id", &id),
                ("totp", &code),
            ],
        );
        assert!(r.body.contains("Done: approvals.approve"), "{}", r.body);
    }
    // The client's retry signs, once.
    let signed = sign(&rpc, &from, 11 * ETHER, 0);
    assert!(signed["result"].is_string(), "{signed}");

    // The auditor finds the rows and exports them.
    let mut b = s.browser();
    let mut key = Passkey::new("localhost", 3);
    enrol_and_sign_in(&mut b, &mut key, "aud", &aud.code());
    let overview = b.get("/console/overview");
    assert!(
        overview.body.contains("1</strong> signed")
            && overview.body.contains("(1 approved, median"),
        "{}",
        overview.body
    );
    let page = b.get("/console/audit?decision=signed&chain=eip155%3A31337");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">signed<"), "{}", page.body);
    assert!(!page.body.contains(">held<"), "the filter applies");
    let csv = b.get("/console/audit/export?decision=signed&format=csv");
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.body.starts_with("seq,ts_ms,") && csv.body.lines().count() >= 2,
        "{}",
        csv.body
    );
    let jsonl = b.get("/console/audit/export?decision=held&format=jsonl");
    let rows: Vec<Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["decision"] == "held"));
    let csrf = b.csrf("/console/audit");
    let v = b.post_form("/console/audit/verify", &[("csrf", &csrf)]);
    assert!(outcome(&v.body).contains("Intact"), "{}", v.body);

    // An operator stops the key from the console; the next request is refused.
    let mut b = s.browser();
    let mut key = Passkey::new("localhost", 4);
    enrol_and_sign_in(&mut b, &mut key, "op", &op.code());
    let csrf = b.csrf("/console/keys");
    let code = op.code();
    let r = b.post_form(
        "/console/act",
        &[
            ("csrf", &csrf),
            ("method", "keys.disable"),
            ("key", "dev-secp256k1"),
            ("totp", &code),
        ],
    );
    assert!(r.body.contains("Done: keys.disable"), "{}", r.body);
    let refused = sign(&rpc, &from, ETHER / 10, 1);
    assert_eq!(error_code(&refused), Some(-32004), "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{refused}"
    );
    let keys = b.get("/console/keys").body;
    assert!(
        keys.contains("disabled") && keys.contains(">software<") && keys.contains(">treasury<"),
        "{keys}"
    );
    assert!(
        keys.to_lowercase().contains(&from.to_lowercase()),
        "the key's address: {keys}"
    );
}
