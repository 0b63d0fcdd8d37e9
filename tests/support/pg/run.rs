//! Where the PostgreSQL binaries are, which OS user runs the server, and commands bounded by a
//! timeout (a hung `pg_ctl` or `psql` fails the test instead of hanging CI).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The default bound of one server command or poll.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The unprivileged account the server runs as when the tests run as root (PostgreSQL refuses
/// to run as root).
#[derive(Clone, Debug)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The PostgreSQL installation the tests use.
#[derive(Clone, Debug)]
pub struct PgEnv {
    /// The directory holding `initdb`, `pg_ctl`, `psql`, ... (`KEYGUARD_PG_BIN`).
    pub bin: PathBuf,
    /// `Some` when the tests run as root (`KEYGUARD_PG_USER`, default `keyguard-pg`).
    pub os_user: Option<OsUser>,
}

/// The installation, found once. Panics with what to do when PostgreSQL is missing: a test
/// that needs it never skips.
pub fn env() -> &'static PgEnv {
    static ENV: OnceLock<PgEnv> = OnceLock::new();
    ENV.get_or_init(|| PgEnv {
        bin: bin_dir(),
        os_user: os_user(),
    })
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYGUARD_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file(),
            "KEYGUARD_PG_BIN={} has no initdb",
            dir.display()
        );
        return dir;
    }
    newest_debian_bin_dir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL not found: no /usr/lib/postgresql/<version>/bin/initdb and \
             KEYGUARD_PG_BIN is unset. Run the tests through tests/run (it installs Debian's \
             postgresql package) or `apt-get install postgresql`."
        )
    })
}

/// Debian installs each major version under `/usr/lib/postgresql/<major>/bin`; the newest wins.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn os_user() -> Option<OsUser> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("KEYGUARD_PG_USER").unwrap_or_else(|_| "keyguard-pg".into());
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, &name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
        panic!(
            "running as root, and PostgreSQL refuses to run as root, but the OS user {name:?} \
             does not exist: run the tests through tests/run (it creates it) or \
             `useradd --system --no-create-home {name}`, or set KEYGUARD_PG_USER"
        );
    };
    assert_ne!(uid, 0, "KEYGUARD_PG_USER={name} is root");
    Some(OsUser { name, uid, gid })
}

/// A PostgreSQL program, with no `PG*` variable of the caller's environment leaking in.
pub fn program(name: &str) -> Command {
    let mut cmd = Command::new(env().bin.join(name));
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGCONNECT_TIMEOUT",
        "PGTARGETSESSIONATTRS",
        "PGDATA",
        "PGTZ",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// The same program run as the server's OS user (the caller itself unless it is root), in
/// `dir`, which that user owns.
pub fn as_server_user(name: &str, dir: &Path) -> Command {
    let mut cmd = program(name);
    cmd.current_dir(dir).env("HOME", dir);
    if let Some(user) = &env().os_user {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Gives `path` to the server's OS user (nothing to do when not root).
pub fn chown_to_server_user(path: &Path) {
    if let Some(user) = &env().os_user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), user.name));
    }
}

/// Runs `cmd` to completion within `timeout`; a timeout kills it and panics.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd`, expects exit status 0, returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `run` without the panic, for `Drop`.
pub fn try_run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    wait_bounded(child, timeout).map_err(|e| format!("{cmd:?}: {e}"))
}

/// Waits for `child` (stdout and stderr piped) for at most `timeout`, killing it after that.
pub fn wait_bounded(mut child: Child, timeout: Duration) -> Result<Output, String> {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {timeout:?}, killed"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Polls `ready` every 20 ms until it holds; panics with `what()` after `timeout`.
pub fn poll(timeout: Duration, mut ready: impl FnMut() -> bool, what: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {}", what());
        }
        thread::sleep(Duration::from_millis(20));
    }
}
