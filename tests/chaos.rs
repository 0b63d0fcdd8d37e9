//! Chaos run of the shared PostgreSQL store (issue 15): three keyguard daemons with the same
//! keys share one database. On every round, three EVM clients send conflicting transactions for
//! the same nonce to different instances at the same moment, and three mock validators (one per
//! instance) ask for conflicting blocks at the same height/round/step. Meanwhile a seeded fault
//! schedule hits instances and the database: SIGKILL (then restart), SIGSTOP/SIGCONT of an
//! instance, `pg_ctl restart -m immediate`, SIGSTOP/SIGCONT of the database server, a
//! partition between one instance and the database (its TCP relay stops forwarding), and
//! `pg_cancel_backend` on commits waiting for the synchronous standby (stopped for the fault):
//! the server reports those as success with a WARNING, and keyguard must withhold them.
//!
//! The checker reads what the clients received: at most one transaction per nonce, at most one
//! block per height/round/step, every released signature has its signed audit row, and
//! `keyguard audit verify` passes on the one chain all instances wrote.
//!
//! `KEYGUARD_CHAOS_SECS` (default 15, the CI setting) and `KEYGUARD_CHAOS_SEED` set the length
//! and the schedule; `benches/chaos.sh` runs it long. Negative control: the same run with the
//! `split-fence` fault (check and write in two statements) must find double signatures.
#![allow(unreachable_pub)]

#[path = "mockval/mod.rs"]
mod mockval;
#[path = "support/pg/mod.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mockval::conn::NodeListener;
use mockval::node::{now, Ask, Node, Ver};
use pg::{PgCluster, PgPair};
use rand::{Rng, SeedableRng};
use rustix::process::{Pid, Signal};

fn send(pid: u32, sig: Signal) -> bool {
    Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// `pid` and its direct children (the database server's backends), from /proc.
fn with_children(pid: u32) -> Vec<u32> {
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

const INSTANCES: usize = 3;
const CHAIN: &str = "chaos-chain";
const PASSPHRASE: &str = "chaos passphrase that is long enough";

fn bin() -> String {
    std::env::var("KEYGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyguard").to_owned())
}

fn free_port() -> u16 {
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
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                while c.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
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
        Relay { port, cut }
    }
}

struct Instance {
    dir: PathBuf,
    port: u16,
    relay: Relay,
    child: Mutex<Option<Child>>,
    stopped: AtomicBool,
}

impl Instance {
    fn config(&self) -> PathBuf {
        self.dir.join("keyguard.toml")
    }

    /// Starts the daemon and waits for `keyguard: ready`; false if it exited first (the
    /// database may be down: the caller tries again).
    fn start(&self, fault: Option<&str>) -> bool {
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

    fn start_until_ready(&self, fault: Option<&str>) {
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

    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: Signal) -> bool {
        let pid = self.child.lock().unwrap().as_ref().map(Child::id);
        pid.is_some_and(|p| send(p, sig))
    }
}

fn config(dir: &Path, port: u16, node_addr: &str, pg: &PgCluster, pg_port: u16) -> String {
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
fn rpc(port: u16, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
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

#[derive(Default)]
struct Book {
    /// nonce -> raw transactions received.
    txs: Mutex<BTreeMap<u64, BTreeSet<String>>>,
    /// (height, type) -> blocks released.
    blocks: Mutex<BTreeMap<(i64, i32), BTreeSet<u8>>>,
    /// Audit `tx_hash` values every released signature must have.
    released: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    failed: AtomicUsize,
}

struct Report {
    faults: usize,
    /// Per kind: kill, stop, database restart, database freeze, partition, sync-rep cancel.
    kinds: [usize; 6],
    /// Commits whose wait for the standby was cancelled.
    cancelled: usize,
    evm_signed: usize,
    votes_signed: usize,
    refused: usize,
    failed: usize,
    double_nonces: usize,
    double_blocks: usize,
    unaudited: usize,
}

fn run(secs: u64, seed: u64, fault: Option<&str>, with_faults: bool) -> Report {
    let pair = PgPair::start();
    let pg = pair.primary();
    let root = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        let dir = root.path().join(format!("kg{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (l, addr) = NodeListener::unix(&dir.join("node.sock"));
        listeners.push(l);
        let port = free_port();
        let relay = Relay::start(pg.port());
        std::fs::write(
            dir.join("keyguard.toml"),
            config(&dir, port, &addr, pg, relay.port),
        )
        .unwrap();
        instances.push(Instance {
            dir,
            port,
            relay,
            child: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
    }
    // The first instance creates the keys; the others get copies (one key, three signers).
    instances[0].start_until_ready(fault);
    for inst in &instances[1..] {
        let (from, to) = (instances[0].dir.join("var/keys"), inst.dir.join("var/keys"));
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for d in [inst.dir.join("var"), to] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        inst.start_until_ready(fault);
    }
    let from = rpc(instances[0].port, "eth_accounts", serde_json::json!([]))
        .and_then(|v| v["result"][0].as_str().map(str::to_owned))
        .expect("eth_accounts");

    let book = Book::default();
    let done = AtomicBool::new(false);
    let round = AtomicI64::new(0);
    let faults = AtomicUsize::new(0);
    let kinds: [AtomicUsize; 6] = Default::default();
    let cancelled = AtomicUsize::new(0);
    let end = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        // The clock: one round every 60 ms; each round is one nonce and one step.
        s.spawn(|| {
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(60));
                round.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        // EVM clients: client i sends nonce r with value i+1 to instance i.
        for (i, inst) in instances.iter().enumerate() {
            let (book, done, round, from) = (&book, &done, &round, from.clone());
            s.spawn(move || {
                let mut last = -1;
                while !done.load(Ordering::SeqCst) {
                    let r = round.load(Ordering::SeqCst);
                    if r == last {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    last = r;
                    let tx = serde_json::json!([{
                        "from": from, "to": "0x000000000000000000000000000000000000dEaD",
                        "gas": "0x5208", "maxFeePerGas": "0x77359400",
                        "maxPriorityFeePerGas": "0x3b9aca00", "value": format!("0x{:x}", i + 1),
                        "nonce": format!("0x{r:x}"), "chainId": "0x7a69", "input": "0x"
                    }]);
                    match rpc(inst.port, "eth_signTransaction", tx) {
                        Some(v) if v["result"].is_string() => {
                            let raw = v["result"].as_str().unwrap().to_owned();
                            let bytes = hex::decode(raw.trim_start_matches("0x")).unwrap();
                            let hash =
                                format!("0x{}", hex::encode(alloy_primitives::keccak256(&bytes)));
                            book.released.lock().unwrap().insert(hash);
                            book.txs
                                .lock()
                                .unwrap()
                                .entry(r as u64)
                                .or_default()
                                .insert(raw);
                        }
                        Some(_) => {
                            book.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            book.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Validators: node i asks instance i for block i at the round's step.
        for (i, l) in listeners.iter().enumerate() {
            let (book, done, round) = (&book, &done, &round);
            s.spawn(move || {
                let mut node: Option<Node> = None;
                let mut last = -1;
                while !done.load(Ordering::SeqCst) {
                    let mut n = match node.take() {
                        Some(n) => n,
                        None => match l.try_accept(Duration::from_millis(500)) {
                            Some(c) => {
                                let mut n = Node::new(c, Ver::V038, CHAIN);
                                if !matches!(n.pubkey(), Some(Ok(_))) {
                                    continue;
                                }
                                n
                            }
                            None => continue,
                        },
                    };
                    let r = round.load(Ordering::SeqCst);
                    if r == last {
                        node = Some(n);
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    last = r;
                    let (height, vote_type) = (r / 2 + 1, if r % 2 == 0 { 1 } else { 2 });
                    let block = i as u8 + 1;
                    match n.sign(&Ask::vote(vote_type, height, 0, Some(block), now())) {
                        Some(Ok(rel)) => {
                            book.released
                                .lock()
                                .unwrap()
                                .insert(hex::encode(&rel.signature));
                            book.blocks
                                .lock()
                                .unwrap()
                                .entry((height, vote_type))
                                .or_default()
                                .insert(block);
                            node = Some(n);
                        }
                        Some(Err(_)) => {
                            book.refused.fetch_add(1, Ordering::Relaxed);
                            node = Some(n);
                        }
                        None => {
                            book.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // The fault schedule.
        if with_faults {
            let (instances, done, faults, kinds) = (&instances, &done, &faults, &kinds);
            let (pair, cancelled) = (&pair, &cancelled);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(300..700)));
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let inst = &instances[rng.gen_range(0..INSTANCES)];
                    let kind = rng.gen_range(0..6);
                    kinds[kind].fetch_add(1, Ordering::SeqCst);
                    match kind {
                        4 => {
                            // A partition between this instance and the database.
                            inst.relay.cut.store(true, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
                            inst.relay.cut.store(false, Ordering::SeqCst);
                        }
                        0 => {
                            inst.kill();
                            std::thread::sleep(Duration::from_millis(200));
                            inst.start_until_ready(fault);
                        }
                        1 => {
                            if inst.signal(Signal::STOP) {
                                inst.stopped.store(true, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
                                inst.signal(Signal::CONT);
                                inst.stopped.store(false, Ordering::SeqCst);
                            }
                        }
                        2 => pg.restart_immediate(),
                        5 => {
                            // Commits waiting for the stopped standby, their wait cancelled:
                            // durable on the primary alone, answered "success" + WARNING.
                            pair.stop_standby();
                            let until = Instant::now() + Duration::from_millis(1000);
                            while pair.syncrep_waiters() == 0 && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            let n = pair.cancel_waiting_backends();
                            cancelled.fetch_add(n, Ordering::SeqCst);
                            pair.start_standby();
                            pair.wait_sync();
                        }
                        _ => {
                            // The database server and its backends frozen: no answer, no RST.
                            if let Some(pid) = pg.pid() {
                                let all = with_children(pid);
                                for p in &all {
                                    send(*p, Signal::STOP);
                                }
                                std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
                                for p in &all {
                                    send(*p, Signal::CONT);
                                }
                            }
                        }
                    }
                    faults.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    // Check: the audit log as one chain, with a signed row for everything released.
    for inst in &instances {
        inst.kill();
    }
    let out = Command::new(bin())
        .args(["audit", "verify", "--config"])
        .arg(instances[0].config())
        .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["audit", "list", "--json", "--limit", "10000000", "--config"])
        .arg(instances[0].config())
        .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["decision"] == "signed")
        .filter_map(|v| v["tx_hash"].as_str().map(str::to_owned))
        .collect();
    let released = book.released.lock().unwrap();
    let txs = book.txs.lock().unwrap();
    let blocks = book.blocks.lock().unwrap();
    Report {
        faults: faults.load(Ordering::SeqCst),
        kinds: std::array::from_fn(|i| kinds[i].load(Ordering::SeqCst)),
        cancelled: cancelled.load(Ordering::SeqCst),
        evm_signed: txs.values().map(BTreeSet::len).sum(),
        votes_signed: blocks.values().map(BTreeSet::len).sum(),
        refused: book.refused.load(Ordering::SeqCst),
        failed: book.failed.load(Ordering::SeqCst),
        double_nonces: txs.values().filter(|t| t.len() > 1).count(),
        double_blocks: blocks.values().filter(|b| b.len() > 1).count(),
        unaudited: released.iter().filter(|h| !signed.contains(*h)).count(),
    }
}

fn print(name: &str, secs: u64, seed: u64, r: &Report) {
    eprintln!(
        "chaos {name}: {secs}s seed {seed}: {} faults injected (kill {}, stop {}, database \
         restart {}, database freeze {}, partition {}, sync-rep cancel {} with {} commits \
         cancelled); released {} EVM and {} CometBFT \
         signatures ({} refused, {} failed requests); conflicts: {} nonces and {} steps signed \
         twice; {} released signatures without a signed audit row",
        r.faults,
        r.kinds[0],
        r.kinds[1],
        r.kinds[2],
        r.kinds[3],
        r.kinds[4],
        r.kinds[5],
        r.cancelled,
        r.evm_signed,
        r.votes_signed,
        r.refused,
        r.failed,
        r.double_nonces,
        r.double_blocks,
        r.unaudited
    );
}

fn secs() -> u64 {
    std::env::var("KEYGUARD_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn seed() -> u64 {
    std::env::var("KEYGUARD_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

#[test]
fn three_instances_under_faults_never_double_sign() {
    let (secs, seed) = (secs(), seed());
    let r = run(secs, seed, None, true);
    print("healthy", secs, seed, &r);
    assert_eq!(
        r.double_nonces, 0,
        "a nonce was signed for two transactions"
    );
    assert_eq!(
        r.double_blocks, 0,
        "a height/round/step was signed for two blocks"
    );
    assert_eq!(
        r.unaudited, 0,
        "a released signature has no signed audit row"
    );
    assert!(r.faults > 0, "no fault was injected");
    assert!(
        r.evm_signed > 0 && r.votes_signed > 0,
        "too little was signed to mean anything"
    );
}

/// Negative control: the daemons with the check and the write split into two statements.
#[cfg(feature = "fault-injection")]
#[test]
fn split_fence_is_caught_by_the_chaos_checker() {
    let (secs, seed) = (secs().min(8), seed());
    let r = run(secs, seed, Some("split-fence"), false);
    print("split-fence", secs, seed, &r);
    assert!(
        r.double_nonces + r.double_blocks > 0,
        "the checker found no double signature with the fence split: it proves nothing"
    );
}
