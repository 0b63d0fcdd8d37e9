//! A fresh SoftHSM2 token per test: its own directory and `SOFTHSM2_CONF`, initialised with
//! `softhsm2-util`, keys put on it by `keyguard keys generate` or OpenSC's `pkcs11-tool` (an
//! independent tool, so the token is not only ever seen through keyguard's own code).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PIN: &str = "24681357";
pub const SO_PIN: &str = "13572468";
pub const PIN_ENV: &str = "KG_TEST_HSM_PIN";

/// The SoftHSM2 library, or `None` when tests/run said it is missing (outside CI). Anything
/// else without the library is a failure, never a silent pass.
pub fn library() -> Option<PathBuf> {
    let lib = PathBuf::from(
        std::env::var("KEYGUARD_SOFTHSM2_LIB")
            .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into()),
    );
    if lib.exists() {
        return Some(lib);
    }
    if std::env::var("KEYGUARD_SKIP_PKCS11").as_deref() == Ok("1") {
        eprintln!("SKIPPED: SoftHSM2 is not installed (KEYGUARD_SKIP_PKCS11=1)");
        return None;
    }
    panic!(
        "SoftHSM2 not found at {}: run the tests through tests/run (it installs it)",
        lib.display()
    );
}

pub struct SoftToken {
    pub dir: tempfile::TempDir,
    pub library: PathBuf,
    pub label: String,
}

impl SoftToken {
    pub fn new(label: &str) -> Option<Self> {
        let library = library()?;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("tokens dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
                 slots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("conf");
        let token = Self {
            dir,
            library,
            label: label.into(),
        };
        token.run_ok(Command::new("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ]));
        Some(token)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The directory SoftHSM2 keeps this token's objects in.
    pub fn token_dir(&self) -> PathBuf {
        let tokens = self.dir.path().join("tokens");
        std::fs::read_dir(&tokens)
            .expect("tokens dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir())
            .expect("a token directory")
    }

    pub fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf().display().to_string()),
            (PIN_ENV.into(), PIN.into()),
        ]
    }

    /// A daemon config using this token; `extra` goes into `[keystore.pkcs11]`.
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("keyguard.toml");
        let text = format!(
            r#"[data]
dir = "{data}"

[keystore]
backend = "pkcs11"

[keystore.pkcs11]
library = "{lib}"
token_label = "{label}"
pin_env = "{PIN_ENV}"
{extra}

[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 31337
auth = "none"
keys = ["*"]

[[policies]]
name = "test"
keys = ["*"]

[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
"#,
            data = self.dir.path().join("var").display(),
            lib = self.library.display(),
            label = self.label,
        );
        std::fs::write(&path, text).expect("config");
        path
    }

    pub fn keyguard(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyguard"));
        cmd.args(args).envs(self.envs());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().expect("running keyguard")
    }

    /// `keyguard keys generate --backend pkcs11`; returns the printed key line.
    pub fn generate(&self, id: &str, scheme: &str) -> String {
        let config = self.config("");
        let out = self.keyguard(
            &[
                "keys",
                "generate",
                "--backend",
                "pkcs11",
                "--id",
                id,
                "--scheme",
                scheme,
                "--config",
            ]
            .iter()
            .copied()
            .chain([config.to_str().expect("utf-8 path")])
            .collect::<Vec<_>>(),
            &[],
        );
        assert!(out.status.success(), "keys generate: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A key pair made by OpenSC's pkcs11-tool (`key_type` like `EC:secp256k1`).
    pub fn pkcs11_tool_keypair(&self, label: &str, key_type: &str, extra: &[&str]) {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.args(["--module", self.library.to_str().expect("utf-8")])
            .args(["--token-label", &self.label, "--login", "--pin", PIN])
            .args(["--keypairgen", "--key-type", key_type, "--label", label])
            .args(["--usage-sign"])
            .args(extra);
        self.run_ok(&mut cmd);
    }

    fn run_ok(&self, cmd: &mut Command) {
        let out = cmd
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .expect("running a SoftHSM2/OpenSC tool");
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
