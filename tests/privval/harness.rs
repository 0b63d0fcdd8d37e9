//! The real keyguard binary in a temporary directory with `[[validators]]` entries; the mock
//! CometBFT node it dials lives in `tests/mockval` (shared with the crash harness).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::mockval::conn::NodeListener;

pub const PASSPHRASE: &str = "privval-test-passphrase";

/// One validator entry of the generated config.
pub struct ValidatorSpec {
    pub name: String,
    pub chain_id: String,
    pub addr: String,
    pub protocol: &'static str,
    pub new_validator: bool,
    pub extra: String,
}

pub fn config_text(dir: &Path, validators: &[ValidatorSpec]) -> String {
    let mut s = format!(
        "[data]\ndir = \"{}\"\n\n[keystore]\nbackend = \"software\"\n\
         create_on_first_start = [\"ed25519\"]\nkdf_memory_kib = 8192\nkdf_iterations = 1\n",
        dir.join("data").display()
    );
    for v in validators {
        // A new validator's first vote needs a bound (`cometbft.first_height`).
        let start = if v.new_validator
            && !v.extra.contains("start_height")
            && !v.extra.contains("max_height =")
        {
            "start_height = 1\n"
        } else {
            ""
        };
        s.push_str(&format!(
            "\n[[validators]]\nname = \"{}\"\nchain_id = \"{}\"\nkey = \"dev-ed25519\"\n\
             addr = \"{}\"\nprotocol = \"{}\"\nnew_validator = {}\nretry_max_ms = 200\n{start}{}\n",
            v.name, v.chain_id, v.addr, v.protocol, v.new_validator, v.extra
        ));
    }
    s
}

/// A running keyguard daemon; killed with SIGKILL on drop.
pub struct Keyguard {
    child: Child,
    pub config: PathBuf,
}

/// The binary under test; `KEYGUARD_BIN` overrides it (the benchmark uses a release build).
pub fn bin() -> String {
    std::env::var("KEYGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyguard").to_owned())
}

impl Keyguard {
    /// Writes `config` to `dir/keyguard.toml`, starts the daemon and waits for `keyguard: ready`.
    pub fn start(dir: &Path, config: &str) -> Keyguard {
        let path = dir.join("keyguard.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_with(&path)
    }

    pub fn start_with(path: &Path) -> Keyguard {
        Self::start_with_env(path, &[])
    }

    /// Like [`Keyguard::start_with`], with extra environment (a PKCS#11 token's config).
    pub fn start_with_env(path: &Path, envs: &[(String, String)]) -> Keyguard {
        let mut child = Command::new(bin())
            .args(["start", "--config"])
            .arg(path)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keyguard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "keyguard: ready" => break,
                Ok(_) => continue,
                Err(e) => panic!("keyguard did not become ready: {e}"),
            }
        }
        Keyguard {
            child,
            config: path.to_owned(),
        }
    }

    /// SIGKILL, as a power cut looks to the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Keyguard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a `keyguard` CLI command; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
