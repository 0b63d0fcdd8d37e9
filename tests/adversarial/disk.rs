//! The data directory running out of space or turning read-only under load. keyguard must stop
//! releasing signatures with a clear error (`-32007` on JSON-RPC, RemoteSignerError code 4 on
//! privval) while its audit log cannot commit, release nothing it did not record, and sign again
//! once space returns — without a restart.
//!
//! The data directory is a small tmpfs mounted by the test (root only; CI runs as root). A
//! [`TmpfsMount`] guard unmounts it even when an assertion fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::common::{self, Daemon};
use crate::harness::{cli, NodeListener};
use crate::node::{now, Ask, Node, Ver};

const CHAIN: &str = "disk-chain";

/// A tmpfs mounted for one test; unmounted on drop (lazily if something still holds it).
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    /// Mounts a `size` tmpfs at `path`, or explains why it cannot: `None` means "not root,
    /// skip" on a developer's machine; under CI (`CI` set to anything) not being root fails,
    /// and as root a failure to mount is an error, never a skip.
    fn new(path: &Path, size: &str) -> Option<TmpfsMount> {
        if !rustix::process::geteuid().is_root() {
            let ci = std::env::var("CI").unwrap_or_default();
            assert!(
                ci.is_empty(),
                "CI={ci}: the disk tests must run in CI, but mounting a tmpfs needs root"
            );
            eprintln!("SKIPPED: mounting a tmpfs data directory needs root (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "running as root but cannot mount a tmpfs at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(TmpfsMount(path.to_owned()))
    }

    /// `mount -o remount,<opts>`; returns stderr on failure.
    fn remount(&self, opts: &str) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the filesystem holding `dir` to the last byte with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut chunk = 1 << 20;
    let zeros = vec![0u8; chunk];
    while chunk > 0 {
        match f.write(&zeros[..chunk]) {
            Ok(0) | Err(_) => chunk /= 2,
            Ok(_) => {}
        }
    }
    let _ = f.sync_all();
    path
}

fn config(dir: &Path, node_addr: &str) -> String {
    config_with_floor(dir, node_addr, 0)
}

fn config_with_floor(dir: &Path, node_addr: &str, floor: u64) -> String {
    format!(
        r#"
{keystore}{listener}[[validators]]
name = "disk"
chain_id = "{CHAIN}"
key = "dev-ed25519"
addr = "{node_addr}"
protocol = "v1"
new_validator = true
start_height = 1
retry_max_ms = 200
# These tests fill the disk to the last byte; the free-space floor (which would refuse new
# work before that) has its own test below.
[audit]
min_free_bytes = {floor}
{policy}
"#,
        keystore = crate::common::software_keystore(dir, &["secp256k1", "ed25519"]),
        listener = crate::common::OPEN_EVM_LISTENER,
        policy = common::POLICY,
    )
}

/// What the clients were given, to hold against the audit log afterwards.
#[derive(Default)]
struct Released {
    evm: usize,
    votes: usize,
}

struct Rig {
    rpc: String,
    from: String,
    node: Node,
    listener: NodeListener,
    nonce: u64,
    height: i64,
    released: Released,
}

impl Rig {
    fn sign_evm(&mut self) -> Value {
        self.nonce += 1;
        let r = crate::control::sign(&self.rpc, &self.from, 1, self.nonce);
        if r["result"].is_string() {
            self.released.evm += 1;
        }
        r
    }

    /// A prevote at the next height; `Ok(())` if released (and verified by the mock node).
    fn sign_vote(&mut self) -> Result<(), (i32, String)> {
        self.height += 1;
        let ask = Ask::vote(1, self.height, 0, Some(1), now());
        let out = match self.node.sign(&ask) {
            Some(r) => r,
            None => {
                // The signer dropped the connection: take its redial and try once more.
                self.node = Node::new(self.listener.accept(), Ver::V1, CHAIN);
                self.node.pubkey().unwrap().unwrap();
                self.node.sign(&ask).expect("privval connection")
            }
        };
        out.map(|_| self.released.votes += 1)
    }

    /// While storage fails: JSON-RPC answers -32007 naming the audit log, privval code 4.
    fn assert_stopped(&mut self, cfg: &Path, why: &str) {
        let watermark = state(cfg);
        for _ in 0..3 {
            let r = self.sign_evm();
            assert!(
                r.get("result").is_none(),
                "{why}: a signature was released: {r}"
            );
            assert_eq!(r["error"]["code"], -32007, "{why}: {r}");
            let reason = r["error"]["data"]["reason"].as_str().unwrap_or("");
            assert!(reason.contains("audit log unavailable"), "{why}: {r}");
            let (code, desc) = self.sign_vote().expect_err("a vote was released");
            assert_eq!(code, 4, "{why}: {desc}");
            assert!(
                desc.starts_with("keyguard: backend failure"),
                "{why}: {desc}"
            );
        }
        // Heights asked for while storage failed are never reported as signed.
        self.height -= 3;
        assert_eq!(state(cfg), watermark, "{why}: the watermark moved");
    }

    /// Signing works again (the first attempt may still meet the failure being cleared).
    fn assert_signing(&mut self, why: &str) {
        let r = self.sign_evm();
        assert!(r["result"].is_string(), "{why}: {r}");
        self.sign_vote().unwrap_or_else(|e| panic!("{why}: {e:?}"));
    }
}

fn state(cfg: &Path) -> Value {
    let (ok, out, err) = cli(&["state", "show", "--json", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "state show: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Every signature a client received has its audit row, and the chain verifies.
fn assert_all_recorded(cfg: &Path, released: &Released) {
    let rows = crate::helpers::audit_rows_after(cfg, 0);
    let signed = |m: &str| {
        rows.iter()
            .filter(|r| r["decision"] == "signed" && r["method"] == m)
            .count()
    };
    assert_eq!(
        signed("eth_signTransaction"),
        released.evm,
        "EVM signatures vs audit rows"
    );
    assert_eq!(
        signed("privval.SignVote"),
        released.votes,
        "votes vs audit rows"
    );
    let out = Command::new(common::binary())
        .args(["audit", "verify", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start(dir: &Path) -> Option<(TmpfsMount, Daemon, Rig)> {
    let mount = TmpfsMount::new(&dir.join("var"), "24m")?;
    let (listener, addr) = NodeListener::unix(&dir.join("node.sock"));
    let daemon = Daemon::start(dir, &config(dir, &addr), &[]);
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    let rig = Rig {
        rpc: daemon.rpc_addr(),
        from: crate::control::address(&daemon),
        node,
        listener,
        nonce: 0,
        height: 0,
        released: Released::default(),
    };
    Some((mount, daemon, rig))
}

/// Signs from another thread until `stop`, so the disk fills and empties under load. Returns
/// the signatures it was given; any error other than `-32007` fails the test.
fn load(rpc: String, from: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut released = 0;
        for nonce in 1_000_000.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let r = crate::control::sign(&rpc, &from, 1, nonce);
            if r["result"].is_string() {
                released += 1;
            } else {
                assert_eq!(r["error"]["code"], -32007, "under load: {r}");
            }
        }
        released
    })
}

#[test]
fn disk_full_stops_signing_and_recovers_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Dropped in reverse order: the daemon before the mount.
    let Some((_mount, daemon, mut rig)) = start(dir) else {
        return;
    };
    let cfg = daemon.config.clone();
    rig.assert_signing("before the disk fills");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(rig.rpc.clone(), rig.from.clone(), stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(100));

    let filler = fill(&dir.join("var"));
    rig.assert_stopped(&cfg, "disk full");
    std::fs::remove_file(&filler).unwrap();
    rig.assert_signing("after space returned");
    rig.assert_signing("after space returned, again");
    std::thread::sleep(std::time::Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let loaded = loader.join().expect("load thread");
    assert!(loaded > 0, "the load thread never signed");
    rig.released.evm += loaded;
    assert_all_recorded(&cfg, &rig.released);
}

/// Runs `keyguard start` expecting it to refuse; returns its stderr.
fn start_refused(cfg: &Path) -> String {
    let mut child = Command::new(common::binary())
        .args(["start", "--config"])
        .arg(cfg)
        .env("KEYGUARD_PASSPHRASE", "test-passphrase")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                !status.success(),
                "started on a read-only data directory: {stdout}"
            );
            assert!(!stdout.contains("keyguard: ready"), "{stdout}");
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyguard neither started nor refused a read-only data directory in 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn read_only_data_dir_stops_signing_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some((mount, daemon, mut rig)) = start(dir) else {
        return;
    };
    let cfg = daemon.config.clone();
    rig.assert_signing("before the remount");

    match mount.remount("ro") {
        Ok(()) => {
            // A kernel that lets a filesystem with files open for writing go read-only.
            rig.assert_stopped(&cfg, "read-only data directory");
            mount.remount("rw").expect("remount rw");
            rig.assert_signing("after the directory became writable");
            assert_all_recorded(&cfg, &rig.released);
        }
        Err(busy) => {
            // Linux refuses (EBUSY) to remount a filesystem read-only while a process holds a
            // file on it open for writing, so the database cannot turn read-only under a
            // running keyguard; what is left is starting on one.
            assert!(busy.contains("busy"), "remount ro failed otherwise: {busy}");
            assert_eq!(daemon.terminate().code(), Some(0));
            let released = std::mem::take(&mut rig.released);
            drop(rig);
            mount
                .remount("ro")
                .expect("remount ro with keyguard stopped");
            let stderr = start_refused(&cfg);
            assert!(
                stderr.contains(&dir.join("var").display().to_string())
                    && stderr.to_lowercase().contains("read-only"),
                "the refusal must name the directory and the cause: {stderr}"
            );
            mount.remount("rw").expect("remount rw");
            assert_all_recorded(&cfg, &released);
            let (listener, addr) = NodeListener::unix(&dir.join("node2.sock"));
            std::fs::write(&cfg, config(dir, &addr)).unwrap();
            let daemon = Daemon::start(dir, &std::fs::read_to_string(&cfg).unwrap(), &[]);
            let r = crate::control::sign(
                &daemon.rpc_addr(),
                &crate::control::address(&daemon),
                1,
                100,
            );
            assert!(
                r["result"].is_string(),
                "after the directory became writable: {r}"
            );
            drop(listener);
        }
    }
}

/// Issue 21: a flood of refusals could fill the disk until keyguard could no longer write its
/// own audit rows. Below the free-space floor (`[audit] min_free_bytes`) new work is refused
/// by name (`audit.disk_floor`) while there is still room; freeing space resumes signing
/// without a restart.
#[test]
fn below_the_free_space_floor_new_work_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Dropped last: after the daemon.
    let Some(_mount) = TmpfsMount::new(&dir.join("var"), "24m") else {
        return;
    };
    let (listener, addr) = NodeListener::unix(&dir.join("node.sock"));
    let daemon = Daemon::start(dir, &config_with_floor(dir, &addr, 12 << 20), &[]);
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    let (rpc, from) = (daemon.rpc_addr(), crate::control::address(&daemon));
    // Negative control: above the floor it signs.
    let ok = crate::control::sign(&rpc, &from, 1, 0);
    assert!(ok["result"].is_string(), "{ok}");
    node.sign(&Ask::vote(1, 1, 0, Some(1), now()))
        .unwrap()
        .unwrap();

    let var = dir.join("var");
    let s = rustix::fs::statvfs(&var).unwrap();
    let free = s.f_bavail * s.f_frsize;
    let pad = var.join("pad");
    std::fs::write(&pad, vec![0u8; (free - (6 << 20)) as usize]).unwrap();
    // The floor is looked at twice a second: retry a bounded number of times.
    let mut refused = Value::Null;
    for nonce in 1..200 {
        let r = crate::control::sign(&rpc, &from, 1, nonce);
        if r.get("result").is_none() {
            refused = r;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    assert!(
        refused.to_string().contains("audit.disk_floor"),
        "{refused}"
    );
    let (code, desc) = node
        .sign(&Ask::vote(1, 2, 0, Some(1), now()))
        .unwrap()
        .expect_err("a vote was released below the floor");
    assert_eq!(code, 4, "{desc}");
    assert!(desc.contains("audit.disk_floor"), "{desc}");
    // There is still room: the chain verifies, and nothing was released unrecorded.
    let out = Command::new(common::binary())
        .args(["audit", "verify", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::remove_file(&pad).unwrap();
    let mut back = Value::Null;
    for nonce in 300..500 {
        back = crate::control::sign(&rpc, &from, 1, nonce);
        if back["result"].is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(back["result"].is_string(), "after space returned: {back}");
}
