//! Process hardening applied at start: a key that is in memory must not end up in a core dump,
//! in swap, or in a directory other users can read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A hardening step that failed in a way keyguard will not run with.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// The kernel refused to mark the process non-dumpable.
    #[error("cannot disable core dumps (PR_SET_DUMPABLE): {0}")]
    Dumpable(std::io::Error),
    /// A state directory or file is accessible to group or others.
    #[error(
        "{path} has mode {mode:o}: group and others must have no access \
         (run `chmod go-rwx {path}`)"
    )]
    Permissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A state directory is owned by another user.
    #[error("{path} is owned by uid {owner}, not by keyguard's uid {uid}")]
    Owner {
        /// The offending path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// keyguard's effective uid.
        uid: u32,
    },
    /// A state path could not be inspected.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Refuses core dumps and ptrace attach by other processes of the same user.
pub fn forbid_core_dumps() -> Result<(), HardeningError> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| HardeningError::Dumpable(e.into()))
}

/// Locks all current and future memory so keys never reach swap. Only attempted when the
/// memlock limit is unlimited (the systemd unit sets `LimitMEMLOCK=infinity`): under a small
/// limit, locking future pages would make ordinary allocations fail. Returns why it was not done.
///
/// Pages are locked as they are first touched (`MCL_ONFAULT`, Linux 4.4+): a page that ever
/// holds a key was touched, so it is locked all the same, while mappings nobody touches — most
/// of every thread's 2 MiB stack, the binary's unused code — are not made resident. Without it
/// the daemon with 1,000 idle WebSockets would be resident at every accessible mapping (59 MiB
/// release, 67 MiB debug, against a 64 MiB budget; 38 MiB is actually touched; tests/ws_idle.rs
/// prints both), and each new blocking-pool thread would add 2 MiB. Kernels without `MCL_ONFAULT` get plain
/// `mlockall`.
pub fn lock_memory() -> Result<(), String> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    if let Some(bytes) = limit.current {
        return Err(format!(
            "RLIMIT_MEMLOCK is {bytes} bytes; set LimitMEMLOCK=infinity to keep keys out of swap"
        ));
    }
    use rustix::mm::MlockAllFlags;
    let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
    match rustix::mm::mlockall(all | MlockAllFlags::ONFAULT) {
        Err(rustix::io::Errno::INVAL) => rustix::mm::mlockall(all),
        other => other,
    }
    .map_err(|e| format!("mlockall failed: {e}"))
}

/// Checks that `path` (if it exists) is private to keyguard's user: no group or other bits,
/// owned by the effective uid.
pub fn check_private(path: &Path) -> Result<(), HardeningError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(HardeningError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(HardeningError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(HardeningError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit (at most 65,536), so the
/// listeners' connection caps, not a distribution default of 1,024, decide when connections
/// are refused. Returns the soft limit in force.
pub fn raise_open_files() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let want = now.maximum.unwrap_or(65_536).min(65_536);
    if now.current.is_some_and(|c| c < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: now.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Some(want);
        }
    }
    now.current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&p).unwrap();
        for mode in [0o750, 0o705, 0o701] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_private(&p).unwrap_err().to_string();
            assert!(err.contains("chmod go-rwx"), "{err}");
        }
        check_private(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn core_dumps_can_be_disabled() {
        forbid_core_dumps().unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
