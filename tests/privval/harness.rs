//! The real keyguard binary in a temporary directory, and a mock CometBFT node that speaks
//! privval with the protocol crates' own types and framing (tendermint-proto for v0.34-v0.38,
//! iq-cometbft-proto for v1, cometbft-p2p for SecretConnection and plain frames) — nothing from
//! the code under test.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cometbft_p2p::{IdentitySecret, ReadMsg, SecretConnection, WriteMsg};
use prost::Message;

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
        s.push_str(&format!(
            "\n[[validators]]\nname = \"{}\"\nchain_id = \"{}\"\nkey = \"dev-ed25519\"\n\
             addr = \"{}\"\nprotocol = \"{}\"\nnew_validator = {}\nretry_max_ms = 200\n{}\n",
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

/// Where the mock node listens (`priv_validator_laddr`).
pub enum NodeListener {
    Tcp(TcpListener, Box<IdentitySecret>),
    Unix(UnixListener),
}

impl NodeListener {
    /// A TCP listener with a fresh node identity; returns the `tcp://<id>@host:port` address.
    pub fn tcp() -> (NodeListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let identity = IdentitySecret::generate(&mut cometbft_p2p::rand_core::OsRng);
        let id = cometbft_p2p::PublicKey::from(&identity).peer_id();
        let addr = format!("tcp://{id}@{}", l.local_addr().unwrap());
        (NodeListener::Tcp(l, Box::new(identity)), addr)
    }

    /// A Unix socket listener at `path`; returns the `unix://` address.
    pub fn unix(path: &Path) -> (NodeListener, String) {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        (NodeListener::Unix(l), format!("unix://{}", path.display()))
    }

    /// Waits up to `within` for keyguard to dial in and finish the handshake.
    pub fn try_accept(&self, within: Duration) -> Option<MockConn> {
        let deadline = Instant::now() + within;
        let set = |nb| match self {
            NodeListener::Tcp(l, _) => l.set_nonblocking(nb).unwrap(),
            NodeListener::Unix(l) => l.set_nonblocking(nb).unwrap(),
        };
        set(true);
        let conn = loop {
            let got = match self {
                NodeListener::Tcp(l, id) => l.accept().map(|(s, _)| {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_nodelay(true).unwrap();
                    SecretConnection::new(s, id.as_ref())
                        .ok()
                        .map(|c| MockConn::Secret(Box::new(c)))
                }),
                NodeListener::Unix(l) => l.accept().map(|(s, _)| {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    Some(MockConn::Unix(s))
                }),
            };
            match got {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break None,
            }
        };
        set(false);
        conn
    }

    /// Waits for keyguard to dial in.
    pub fn accept(&self) -> MockConn {
        match self {
            NodeListener::Tcp(l, identity) => loop {
                // A dial keyguard already gave up on (handshake timeout) is skipped.
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_nodelay(true).unwrap();
                if let Ok(c) = SecretConnection::new(s, identity.as_ref()) {
                    break MockConn::Secret(Box::new(c));
                }
            },
            NodeListener::Unix(l) => {
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                MockConn::Unix(s)
            }
        }
    }
}

pub enum MockConn {
    Secret(Box<SecretConnection<TcpStream>>),
    Unix(UnixStream),
}

impl MockConn {
    /// Sends one request and reads one response; `None` if the connection failed.
    pub fn call<Req: Message, Resp: Message + Default>(&mut self, req: &Req) -> Option<Resp> {
        match self {
            MockConn::Secret(c) => {
                WriteMsg::<Req>::write_msg(c.as_mut(), req).ok()?;
                c.flush().ok()?;
                ReadMsg::<Resp>::read_msg(c.as_mut()).ok()
            }
            MockConn::Unix(c) => {
                WriteMsg::<Req>::write_msg(c, req).ok()?;
                ReadMsg::<Resp>::read_msg(c).ok()
            }
        }
    }
}
