//! Operations: the systemd unit's hardening, readiness notification, metrics and health, and
//! secrets from systemd credentials — all against the real binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::{config, http, rpc, Daemon};

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/keyguard.service"
    ))
    .unwrap()
}

#[test]
fn systemd_unit_exposure_is_ok() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/keyguard.service"
        ))
        .output()
        .expect("systemd-analyze must be installed (tests/run installs systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    assert!(score <= 2.0, "{line}");
}

#[test]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyguard.service");
    std::fs::write(
        &path,
        unit().replace("/usr/local/bin/keyguard", common::binary()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ready_is_notified_after_listeners_accept_and_stop_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &config(dir.path(), ""),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    // Once READY=1 arrived, the listener must already answer.
    let reply = rpc(&daemon.rpc_addr(), "eth_chainId", serde_json::json!([]));
    assert_eq!(reply["result"], "0x7a69");
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
}

#[test]
fn metrics_health_and_readiness_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), ""), &[]);
    let metrics = daemon.metrics_addr();
    assert_eq!(http(&metrics, "GET", "/health", "").0, 200);
    assert_eq!(http(&metrics, "GET", "/ready", "").0, 200);
    assert_eq!(http(&metrics, "GET", "/nope", "").0, 404);

    let addr = daemon.rpc_addr();
    let from = rpc(&addr, "eth_accounts", serde_json::json!([]))["result"][0].clone();
    let tx = |value: &str| {
        serde_json::json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
            "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1",
            "value": value}])
    };
    assert!(rpc(&addr, "eth_signTransaction", tx("0x1"))["result"].is_string());
    let refused = rpc(&addr, "eth_signTransaction", tx("0xde0b6b3a7640001"));
    assert_eq!(refused["error"]["data"]["rule"], "evm.max_value");

    let (status, text) = http(&metrics, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        has(
            r#"keyguard_requests_total{chain="eip155:31337",method="eth_signTransaction",decision="signed"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(r#"keyguard_rejections_total{rule="evm.max_value"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"keyguard_sign_duration_seconds_bucket{backend="software""#),
        "{text}"
    );
    assert!(has("keyguard_ready 1"), "{text}");
    assert!(has(r#"keyguard_keys_disabled{scope="all"} 0"#), "{text}");
    assert!(has("keyguard_approvals_pending 0"), "{text}");
}

#[test]
fn passphrase_comes_from_systemd_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("keyguard-passphrase"), "from-credential\n").unwrap();
    let text = config(dir.path(), "");
    let daemon = Daemon::start(
        dir.path(),
        &text,
        &[
            ("KEYGUARD_PASSPHRASE", ""),
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ],
    );
    drop(daemon);
    // The keys were written under the credential's passphrase: another one cannot open them.
    let out = Command::new(common::binary())
        .args(["keys", "generate", "--id", "second", "--config"])
        .arg(dir.path().join("keyguard.toml"))
        .env("KEYGUARD_PASSPHRASE", "something-else")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));
}

#[test]
fn data_directory_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("keyguard.toml");
    std::fs::write(&path, config(dir.path(), "")).unwrap();
    let out = Command::new(common::binary())
        .args(["start", "--config"])
        .arg(&path)
        .env("KEYGUARD_PASSPHRASE", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod go-rwx"), "{err}");
}

fn transfer(addr: &str, value: &str) -> serde_json::Value {
    let from = rpc(addr, "eth_accounts", serde_json::json!([]))["result"][0].clone();
    rpc(
        addr,
        "eth_signTransaction",
        serde_json::json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
            "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1",
            "value": value}]),
    )
}

const HALF_ETHER: &str = "0x6f05b59d3b20000";

#[test]
fn reload_keeps_the_old_policy_on_a_broken_file_and_applies_a_stricter_one() {
    use rustix::process::Signal;
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "");
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let addr = daemon.rpc_addr();
    assert!(transfer(&addr, HALF_ETHER)["result"].is_string());

    std::fs::write(
        &daemon.config,
        text.replace("max_value =", "max_value = = "),
    )
    .unwrap();
    daemon.signal(Signal::HUP);
    assert!(daemon.wait_line("keyguard: reload").contains("rejected"));
    assert!(transfer(&addr, HALF_ETHER)["result"].is_string());

    let moved = text
        .replace("[data]", "[data]\n# moved")
        .replace("/var\"", "/other\"");
    std::fs::write(&daemon.config, moved).unwrap();
    daemon.signal(Signal::HUP);
    let line = daemon.wait_line("keyguard: reload");
    assert!(
        line.contains("rejected") && line.contains("[data]"),
        "{line}"
    );

    std::fs::write(
        &daemon.config,
        text.replace("max_value = \"1 ether\"", "max_value = \"0.1 ether\""),
    )
    .unwrap();
    daemon.signal(Signal::HUP);
    assert_eq!(daemon.wait_line("keyguard: reload"), "keyguard: reloaded");
    let refused = transfer(&addr, HALF_ETHER);
    assert_eq!(
        refused["error"]["data"]["rule"], "evm.max_value",
        "{refused}"
    );
}

#[test]
fn every_shipped_config_passes_config_check() {
    let configs = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let cwd = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(common::binary())
                .args(["config", "check", "--config"])
                .arg(&path)
                .current_dir(cwd.path())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {stdout}", path.display());
            assert!(stdout.contains(": OK"), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn config_check_reports_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let broken = config(dir.path(), "").replace(
        "address = \"127.0.0.1:0\"\nchain_id",
        "address = \"0.0.0.0:0\"\nchain_id",
    ) + "\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"xyz\"\nkeys = [\"../etc\"]\n";
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(common::binary())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "listeners[0].auth",
        "clients[0].token_sha256",
        "clients[0].keys",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in:\n{stdout}");
    }
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        config(dir.path(), "").replace("[keystore]", "[keystore]\nbakend = 1"),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .args(["config", "check", "--config"])
        .arg(&unknown)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bakend") && stdout.contains("line"),
        "{stdout}"
    );
}
