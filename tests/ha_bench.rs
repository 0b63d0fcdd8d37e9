//! EVM signing throughput with the SQLite store and with PostgreSQL on loopback
//! (`synchronous_commit = on`), one instance and then two instances sharing one database, in
//! one run on the same cores (`benches/ha_pg.sh`; ignored in the test suite). Every signature
//! carries a nonce fence and an audit row, so the database path is the one a wallet uses.

#[path = "support/pg/mod.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pg::PgCluster;

const PASSPHRASE: &str = "bench passphrase that is long enough";

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

struct Daemon(Child, u16);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, store: &str, create: bool) -> Daemon {
    let port = free_port();
    let create = if create {
        "create_on_first_start = [\"secp256k1\"]\n"
    } else {
        ""
    };
    let text = format!(
        "[data]\ndir = \"{}\"\n[keystore]\nbackend = \"software\"\n{create}\
         kdf_memory_kib = 1024\nkdf_iterations = 1\n{store}\n\
         [[listeners]]\nname = \"bench\"\nprotocol = \"evm-jsonrpc\"\naddress = \"127.0.0.1:{port}\"\n\
         chain_id = 31337\nauth = \"none\"\nkeys = [\"*\"]\n\
         [[policies]]\nname = \"bench\"\nkeys = [\"*\"]\n[policies.evm]\nchain_ids = [31337]\n\
         to = [\"0x000000000000000000000000000000000000dEaD\"]\nmax_value = \"1 ether\"\n\
         max_fee_per_gas = \"500 gwei\"\nmax_priority_fee_per_gas = \"500 gwei\"\n\
         max_fee_per_blob_gas = \"500 gwei\"\nnonce = {{ allow_replacement = false }}\n",
        dir.join("var").display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("keyguard.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(bin())
        .args(["start", "--config"])
        .arg(&config)
        .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
        .env("KEYGUARD_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap() == "keyguard: ready" {
            break;
        }
    }
    Daemon(child, port)
}

fn bench(port: u16, first_nonce: u64, secs: u64) -> Child {
    Command::new(bin())
        .args([
            "bench",
            "--connections",
            "16",
            "--duration",
            &secs.to_string(),
            "--ceiling",
            "0",
            "--first-nonce",
            &first_nonce.to_string(),
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn report(label: &str, child: Child) {
    let out = child.wait_with_output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("ha-bench {label}: {line}");
    }
}

fn pg_store(c: &PgCluster, dir: &Path) -> String {
    let pw: PathBuf = dir.join("pg.pass");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&pw, c.password()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[store]\nbackend = \"postgres\"\n[store.postgres]\nhosts = [\"{}\"]\nport = {}\n\
         user = \"{}\"\ndbname = \"{}\"\npassword_file = \"{}\"\ntls = \"disable\"\n",
        c.host(),
        c.port(),
        c.user(),
        c.dbname(),
        pw.display()
    )
}

#[test]
#[ignore = "benchmark: run benches/ha_pg.sh"]
fn evm_throughput_sqlite_and_postgres() {
    let secs = std::env::var("KEYGUARD_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("ha-bench: {cores} cores, {secs} s per run, 16 connections per load generator");
    let root = tempfile::tempdir().unwrap();
    {
        let d = start(&root.path().join("sqlite"), "", true);
        report("sqlite, one instance", bench(d.1, 0, secs));
    }
    let c = PgCluster::start();
    let a_dir = root.path().join("pg-a");
    let a = start(&a_dir, &pg_store(&c, &a_dir), true);
    report("postgres, one instance", bench(a.1, 0, secs));
    let b_dir = root.path().join("pg-b");
    std::fs::create_dir_all(b_dir.join("var/keys")).unwrap();
    for f in std::fs::read_dir(a_dir.join("var/keys")).unwrap().flatten() {
        std::fs::copy(f.path(), b_dir.join("var/keys").join(f.file_name())).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for d in [b_dir.join("var"), b_dir.join("var/keys")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let b = start(&b_dir, &pg_store(&c, &b_dir), false);
    std::thread::sleep(Duration::from_millis(200));
    let (ra, rb) = (bench(a.1, 1 << 40, secs), bench(b.1, 2 << 40, secs));
    report("postgres, instance a of two", ra);
    report("postgres, instance b of two", rb);
}
