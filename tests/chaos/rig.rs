//! The chaos run's pieces: daemons started and stopped as processes, the relay that stands in
//! for a network partition, and the JSON-RPC client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::pg::PgCluster;

pub fn send(pid: u32, sig: Signal) -> bool {
    Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// `pid` and its direct children (the database server's backends), from /proc.
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(n);
        }
    }
    out
}

pub const INSTANCES: usize = 3;
pub const CHAIN: &str = "chaos-chain";
pub const PASSPHRASE: &str = "chaos passphrase that is long enough";

pub fn bin() -> String {
    std::env::var("KEYGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyguard").to_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP relay between one instance and the database that can be cut: while cut, nothing is
/// forwarded either way and nothing is closed (a partition looks like this to both ends: no
/// answer, no RST), and new connections wait. This stands in for a firewall rule in a network
/// namespace, which these machines have no `nft` for.
pub struct Relay {
    pub port: u16,
    pub cut: Arc<AtomicBool>,
    /// The database port new connections go to (a failover points it at the promoted standby).
    pub upstream: Arc<AtomicU16>,
}

impl Relay {
    pub fn start(upstream: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(AtomicU16::new(upstream));
        let (c, to_port) = (cut.clone(), upstream.clone());
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                while c.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let to_port = to_port.load(Ordering::SeqCst);
                let Ok(up) = TcpStream::connect(("127.0.0.1", to_port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while c.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            cut,
            upstream,
        }
    }
}

pub struct Instance {
    pub dir: PathBuf,
    pub port: u16,
    pub relay: Relay,
    pub child: Mutex<Option<Child>>,
    pub stopped: AtomicBool,
}

impl Instance {
    pub fn config(&self) -> PathBuf {
        self.dir.join("keyguard.toml")
    }

    /// Starts the daemon and waits for `keyguard: ready`; false if it exited first (the
    /// database may be down: the caller tries again).
    pub fn start(&self, fault: Option<&str>) -> bool {
        let mut cmd = Command::new(bin());
        cmd.args(["start", "--config"])
            .arg(self.config())
            .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
            .env("KEYGUARD_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(f) = fault {
            cmd.env("KEYGUARD_FAULT", f);
        }
        let mut child = cmd.spawn().expect("spawn keyguard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l == "keyguard: ready" => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
        *self.child.lock().unwrap() = Some(child);
        true
    }

    pub fn start_until_ready(&self, fault: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.start(fault) {
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: Signal) -> bool {
        let pid = self.child.lock().unwrap().as_ref().map(Child::id);
        pid.is_some_and(|p| send(p, sig))
    }
}

pub fn config(dir: &Path, port: u16, node_addr: &str, pg: &PgCluster, pg_port: u16) -> String {
    let pw = dir.join("pg.pass");
    std::fs::write(&pw, pg.password()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        r#"[data]
dir = "{data}"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1", "ed25519"]
kdf_memory_kib = 1024
kdf_iterations = 1

[store]
backend = "postgres"
[store.postgres]
hosts = ["{host}"]
port = {pgport}
user = "{user}"
dbname = "{db}"
password_file = "{pw}"
tls = "disable"
deadline_ms = 1500
connect_timeout_ms = 1500

[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:{port}"
chain_id = 31337
auth = "none"
keys = ["*"]

[[policies]]
name = "chaos"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
nonce = {{ allow_replacement = false }}

[[validators]]
name = "node"
chain_id = "{CHAIN}"
key = "dev-ed25519"
addr = "{node_addr}"
protocol = "v0.38"
new_validator = true
start_height = 1
retry_max_ms = 100
"#,
        data = dir.join("var").display(),
        host = pg.host(),
        pgport = pg_port,
        user = pg.user(),
        db = pg.dbname(),
        pw = pw.display(),
    )
}

/// JSON-RPC over a fresh HTTP/1.1 connection; `None` on any transport failure.
pub fn rpc(port: u16, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(8))).ok()?;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}
