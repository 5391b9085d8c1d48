//! What a processor gets instead of the worker's world: no network, and a private temporary
//! folder of its own.
//!
//! # No network
//!
//! Installed, the worker runs under its unit's `PrivateNetwork=yes`: its network namespace
//! has only a loopback device of its own, and the processors it starts inherit it, so they
//! reach nothing beyond the worker's own loopback, where nothing listens. The worker sees
//! this at its first processor start: `/proc/self/net/dev` lists no device but `lo` (or, should
//! that file be hidden, it may not create an IPv4 or IPv6 socket at all: the unit's
//! `RestrictAddressFamilies=AF_UNIX`, a seccomp filter its children inherit). Then nothing more
//! is done (the unit's `RestrictNamespaces=yes` would refuse it anyway).
//!
//! Run any other way (by hand, in the tests), the worker itself may be on the network. Then
//! each processor is started through a launcher, the worker's own program run again with
//! `--launch-processor`, which enters a new user and network namespace
//! (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`, its user and group mapped to themselves) and
//! executes the processor: it has only a loopback device that is down, so every connection fails
//! (abstract Unix sockets, which belong to a network namespace, are cut as well). Unprivileged
//! user namespaces are allowed by default on Debian; where they are not, the processor does
//! not start and its job fails saying so. Socket files on disk (`/run/…`) stay reachable
//! through the file system; the unit's file system sandbox is what bounds those.
//!
//! # A private temporary folder
//!
//! Each run of a one-shot processor and each life of a server processor gets a new folder
//! (mode 0700) beneath the worker's temporary folder (`$TMPDIR`, the unit's `PrivateTmp=`),
//! named in the processor's `TMPDIR`; it is removed with everything in it when the run ends
//! or the server stops. It holds the `output` folders for derived files. Processors run as
//! the worker's user, so the folder is private from other users, not from other processors
//! of the same worker that go looking for it.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sched::{CloneFlags, unshare};

/// The worker's own program, as the kernel knows it (an upgrade that replaced the file on
/// disk still runs matching code).
const SELF: &str = "/proc/self/exe";

/// How the processors of this worker are kept off the network; decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkIsolation {
    /// The worker's own network namespace has no device but loopback (the unit's
    /// `PrivateNetwork=`): processors inherit it.
    Inherited,
    /// Each processor gets a user and network namespace of its own.
    OwnNamespace,
    /// Neither: the worker has network and this program is not the worker's (the worker's
    /// code run inside a test binary, which has no launcher). Said once, as a warning.
    Unavailable,
}

/// Set by the worker's `main`: this program is the worker's, so it can be the launcher.
static LAUNCHER_AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Called by the worker's `main` (before anything starts a processor): `/proc/self/exe` is
/// the worker's program, which knows [`LAUNCHER_ARGUMENT`].
pub fn enable_launcher() {
    LAUNCHER_AVAILABLE.store(true, Ordering::Relaxed);
}

/// This worker's [`NetworkIsolation`], looked up at the first call.
pub fn network_isolation() -> NetworkIsolation {
    static ISOLATION: OnceLock<NetworkIsolation> = OnceLock::new();
    *ISOLATION.get_or_init(|| {
        let only_loopback = std::fs::read_to_string("/proc/self/net/dev")
            .is_ok_and(|devices| only_loopback(&devices));
        let isolation = if only_loopback || ip_sockets_refused() {
            NetworkIsolation::Inherited
        } else if LAUNCHER_AVAILABLE.load(Ordering::Relaxed) {
            NetworkIsolation::OwnNamespace
        } else {
            NetworkIsolation::Unavailable
        };
        match isolation {
            NetworkIsolation::Inherited => tracing::info!(
                "processors run without network: the worker's own network namespace has only \
                 loopback (PrivateNetwork=)"
            ),
            NetworkIsolation::OwnNamespace => tracing::info!(
                "processors run without network: each one in a user and network namespace of \
                 its own"
            ),
            NetworkIsolation::Unavailable => tracing::warn!(
                "processors run WITH the network: this program is not the worker's, so it \
                 cannot launch them in a network namespace of their own"
            ),
        }
        isolation
    })
}

/// The hidden argument that makes the worker's program the launcher of one processor (see
/// [`launcher_main`]).
pub const LAUNCHER_ARGUMENT: &str = "--launch-processor";

/// The exit status of a launcher that could not isolate or start its processor.
const LAUNCHER_FAILED: u8 = 126;

/// The command line that runs `argv` as a processor, cut off from the network (see the module
/// documentation): `argv` itself when the worker has no network to begin with, else the
/// worker's own program as [`launcher_main`], which enters the namespaces and then executes
/// `argv`. (The worker does not do it between fork and exec itself: the workspace has no
/// unsafe code, and a launcher costs one exec.)
pub fn isolated_argv(argv: &[OsString]) -> Vec<OsString> {
    match network_isolation() {
        NetworkIsolation::Inherited | NetworkIsolation::Unavailable => argv.to_vec(),
        NetworkIsolation::OwnNamespace => {
            let mut launcher = vec![OsString::from(SELF), OsString::from(LAUNCHER_ARGUMENT)];
            launcher.extend(argv.iter().cloned());
            launcher
        }
    }
}

/// `sluice-ingest-worker --launch-processor PROGRAM ARGS…`: enters a new user and network
/// namespace, maps its user and group to themselves, and executes the processor in its
/// place (same process, so the same process group and pipes). Says why on stderr and exits
/// with 126 when it cannot.
pub fn launcher_main() -> ExitCode {
    let arguments: Vec<OsString> = std::env::args_os().skip(2).collect();
    let Some(program) = arguments.first() else {
        eprintln!("sluice-ingest-worker {LAUNCHER_ARGUMENT}: expected the processor's argv");
        return ExitCode::from(LAUNCHER_FAILED);
    };
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if let Err(error) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET) {
        eprintln!(
            "sluice-ingest-worker: cannot start processor {} without network: a user and \
             network namespace of its own was refused ({error}); allow unprivileged user \
             namespaces, or run the worker with PrivateNetwork= as its unit does",
            program.to_string_lossy()
        );
        return ExitCode::from(LAUNCHER_FAILED);
    }
    // Mapping the user and group to themselves keeps file ownership readable inside (an
    // unmapped user shows as "nobody"); access checks do not depend on it, so a refusal here
    // is no reason not to run.
    let _ = std::fs::write("/proc/self/setgroups", "deny");
    let _ = std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"));
    let _ = std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"));
    let error = Command::new(program).args(&arguments[1..]).exec();
    eprintln!(
        "sluice-ingest-worker: cannot start processor {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::from(LAUNCHER_FAILED)
}

/// A new folder of mode 0700 beneath the worker's temporary folder, removed with its contents
/// when dropped.
#[derive(Debug)]
pub struct PrivateTemp {
    folder: tempfile::TempDir,
}

impl PrivateTemp {
    /// A folder named after the processor, e.g. `/tmp/sluice-ocr-AbC123`.
    pub fn new(processor: &str) -> io::Result<PrivateTemp> {
        use std::os::unix::fs::PermissionsExt;
        let folder = tempfile::Builder::new()
            .prefix(&format!("sluice-{processor}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        Ok(PrivateTemp { folder })
    }

    pub fn path(&self) -> &Path {
        self.folder.path()
    }

    /// Creates the empty folder `name` inside, for one run's derived files.
    pub fn output_folder(&self, name: &str) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.path().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(path)
    }
}

/// Whether this process may not create IPv4 and IPv6 sockets at all: the unit's
/// `RestrictAddressFamilies=AF_UNIX`, a seccomp filter every child inherits. A second sign of
/// the unit's sandbox, for when `/proc/self/net/dev` cannot be read.
fn ip_sockets_refused() -> bool {
    // Binding to a loopback port first creates the socket, which is what the filter refuses;
    // on any machine with IP networking at least one of the two succeeds.
    ["127.0.0.1:0", "[::1]:0"]
        .into_iter()
        .all(|address| std::net::UdpSocket::bind(address).is_err())
}

fn only_loopback(devices: &str) -> bool {
    // Two header lines, then "  name: counters…" per device.
    devices
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .all(|(name, _)| name.trim() == "lo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_recognised() {
        let header = "Inter-|   Receive\n face |bytes\n";
        assert!(only_loopback(&format!("{header}    lo: 0 0 0\n")));
        assert!(!only_loopback(&format!(
            "{header}    lo: 0 0 0\n  eth0: 1 2 3\n"
        )));
    }
}
