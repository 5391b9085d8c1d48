//! What a processor gets instead of the worker's world: no network, a private temporary
//! folder of its own, and no way to write anything else.
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
//! the launcher (the worker's own program run again with `--launch-processor`, through which
//! every processor starts) first enters a new user and network namespace
//! (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`, its user and group mapped to themselves) and
//! executes the processor: it has only a loopback device that is down, so every connection fails
//! (abstract Unix sockets, which belong to a network namespace, are cut as well). Unprivileged
//! user namespaces are allowed by default on Debian; where they are not, the processor does
//! not start and its job fails saying so. Socket files on disk (`/run/…`) stay reachable
//! through the file system; the unit's file system sandbox is what bounds those.
//!
//! # Nothing written but its own folder
//!
//! A processor runs as the worker's user, which may write the database, the library and the
//! inbox: a processor that could write them could plant a download (and have the scraper
//! send a source's stored credentials to any host), forge documents or undo jobs. So every
//! processor, and `pdftoppm` for thumbnails, is started through the launcher, which confines
//! itself with Landlock before it executes the program ([`confine`]): it may read what its
//! user may, but write only beneath its private temporary folder (for `pdftoppm`: nowhere),
//! connect no TCP socket, and signal no process outside (not the worker, not the other
//! daemons). Landlock needs no privilege and no namespace (so the unit's
//! `RestrictNamespaces=` stays; its `SystemCallFilter=` allows the three landlock calls), and
//! it holds across `exec` for every descendant. Where the kernel has no Landlock, the
//! launcher refuses to start the program and its job fails saying so. The extraction child
//! confines itself the same way, writing nowhere, before it reads a byte.
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

use landlock::ABI;
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

/// The launcher's option: enter a user and network namespace of its own first.
const OWN_NETWORK_OPTION: &str = "--own-network-namespace";
/// The launcher's option: a folder the program may write beneath (given once per folder).
const WRITABLE_OPTION: &str = "--writable";

/// The exit status of a launcher that could not isolate or start its processor.
const LAUNCHER_FAILED: u8 = 126;

/// The command line that runs `argv` as a processor (or one of the worker's own helpers,
/// `pdftoppm`) cut off from the network and confined (see the module documentation): the
/// worker's own program as [`launcher_main`], which enters the namespaces when needed,
/// confines itself and then executes `argv`. `writable` are the only folders it may write
/// beneath (its private temporary folder and those of its `writable` key); none lets it
/// write nowhere. (The worker does not
/// do it between fork and exec itself: the workspace has no unsafe code, and a launcher costs
/// one exec.) Only where this program is not the worker's (its code run inside a test
/// binary) is `argv` run as it is, as the start-up warning said.
pub fn isolated_argv(argv: &[OsString], writable: &[&Path]) -> Vec<OsString> {
    let isolation = network_isolation();
    if isolation == NetworkIsolation::Unavailable {
        return argv.to_vec();
    }
    let mut launcher = vec![OsString::from(SELF), OsString::from(LAUNCHER_ARGUMENT)];
    if isolation == NetworkIsolation::OwnNamespace {
        launcher.push(OWN_NETWORK_OPTION.into());
    }
    for folder in writable {
        launcher.push(WRITABLE_OPTION.into());
        launcher.push(folder.into());
    }
    launcher.push("--".into());
    launcher.extend(argv.iter().cloned());
    launcher
}

/// `sluice-ingest-worker --launch-processor [--own-network-namespace] [--writable DIR]… --
/// PROGRAM ARGS…`: enters a new user and network namespace when asked (mapping its user and
/// group to themselves), confines itself with [`confine`] and executes the program in its
/// place (same process, so the same process group and pipes; the confinement holds across
/// `exec`). Says why on stderr and exits with 126 when it cannot: a program that cannot be
/// confined is not started.
pub fn launcher_main() -> ExitCode {
    let mut arguments = std::env::args_os().skip(2);
    let (mut own_network, mut writable) = (false, Vec::new());
    loop {
        match arguments.next() {
            Some(option) if option == OWN_NETWORK_OPTION => own_network = true,
            Some(option) if option == WRITABLE_OPTION => match arguments.next() {
                Some(folder) => writable.push(PathBuf::from(folder)),
                None => return launcher_usage(),
            },
            Some(option) if option == "--" => break,
            _ => return launcher_usage(),
        }
    }
    let arguments: Vec<OsString> = arguments.collect();
    let Some(program) = arguments.first() else {
        return launcher_usage();
    };
    if own_network {
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
        // unmapped user shows as "nobody"); access checks do not depend on it, so a refusal
        // here is no reason not to run.
        let _ = std::fs::write("/proc/self/setgroups", "deny");
        let _ = std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"));
        let _ = std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"));
    }
    if let Err(error) = confine(&writable) {
        eprintln!(
            "sluice-ingest-worker: cannot start processor {}: {error}",
            program.to_string_lossy()
        );
        return ExitCode::from(LAUNCHER_FAILED);
    }
    let error = Command::new(program).args(&arguments[1..]).exec();
    eprintln!(
        "sluice-ingest-worker: cannot start processor {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::from(LAUNCHER_FAILED)
}

fn launcher_usage() -> ExitCode {
    eprintln!(
        "sluice-ingest-worker {LAUNCHER_ARGUMENT}: expected [{OWN_NETWORK_OPTION}] \
         [{WRITABLE_OPTION} FOLDER] -- PROGRAM ARGS…"
    );
    ExitCode::from(LAUNCHER_FAILED)
}

/// The Landlock ABI this crate asks for; the kernel's own, when older, is what is enforced
/// (best effort beyond the file-system writes, which [`confine`] requires).
const LANDLOCK_ABI: ABI = ABI::V6;

/// The devices a confined program may still open for writing (a shell's `2>/dev/null`).
const WRITABLE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Confines this process and everything it executes, for good, with Landlock (the kernel's
/// unprivileged sandbox, which holds for root as well):
///
/// - it may read and execute anything its user may, but write, create, remove, rename or
///   truncate nothing, except beneath the folders of `writable` and the few devices of
///   [`WRITABLE_DEVICES`]: not the database, not the library, not the inbox (the
///   configuration keeps a processor's `writable` folders apart from those). A writable
///   folder that is a symbolic link is refused: the rule would hold for wherever it points;
/// - (Landlock ABI 4, Linux 6.7) it may not bind or connect TCP sockets;
/// - (ABI 6, Linux 6.12) it may not send signals to, nor connect to the abstract Unix
///   sockets of, any process outside its confinement: not the worker, not the other daemons,
///   which run as the same user.
///
/// Fails, changing nothing, when the kernel cannot enforce at least the file-system writes
/// (no Landlock, or not enabled at boot). Truncating a file by its path (`truncate(2)`) is
/// confined from ABI 3 (Linux 6.2) on; on older kernels it is not.
pub fn confine(writable: &[PathBuf]) -> Result<(), String> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let abi = LANDLOCK_ABI;
    let fail = |error: &dyn std::fmt::Display| format!("cannot confine it with Landlock: {error}");
    // Writes must be confined; what newer kernels add is taken where it exists.
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(|error| fail(&error))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|error| fail(&error))?
        .handle_access(AccessNet::from_all(abi))
        .map_err(|error| fail(&error))?
        .scope(Scope::from_all(abi))
        .map_err(|error| fail(&error))?
        .create()
        .map_err(|error| fail(&error))?;
    let mut rules = vec![(PathBuf::from("/"), AccessFs::from_read(abi))];
    rules.extend(
        WRITABLE_DEVICES
            .iter()
            .map(|device| (PathBuf::from(device), AccessFs::from_file(abi))),
    );
    for folder in writable {
        match std::fs::symlink_metadata(folder) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(fail(&format!(
                    "writable folder {} is not a folder (a symbolic link is not followed)",
                    folder.display()
                )));
            }
            Err(error) => {
                return Err(fail(&format!(
                    "writable folder {}: {error}",
                    folder.display()
                )));
            }
        }
        rules.push((folder.clone(), AccessFs::from_all(abi)));
    }
    for (path, access) in rules {
        let descriptor = match PathFd::new(&path) {
            Ok(descriptor) => descriptor,
            // A device the machine does not have is simply not writable.
            Err(_) if path.starts_with("/dev") => continue,
            Err(error) => return Err(fail(&format!("{}: {error}", path.display()))),
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(descriptor, access))
            .map_err(|error| fail(&error))?;
    }
    let status = ruleset.restrict_self().map_err(|error| fail(&error))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(fail(&"the kernel does not enforce it"));
    }
    deny_owner_calls()
}

/// The system calls Landlock has no rights for (or, for `truncate`, only from ABI 3, Linux
/// 6.2), with which a program running as the owner of sluice's files could still open them
/// to everyone (`chmod 0666 sluice.db`) or destroy them (`truncate`): refused with EPERM by a
/// seccomp filter installed after Landlock, for this process and all it executes. Changing
/// modes, owners, times or extended attributes is refused everywhere, the program's own
/// `TMPDIR` included (seccomp cannot tell files apart); `ftruncate` stays, since it needs a
/// descriptor open for writing, which Landlock already decides.
fn deny_owner_calls() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let mut calls = vec![
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchmodat2,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
        libc::SYS_truncate,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
    ]);
    let fail = |error: &dyn std::fmt::Display| {
        format!("cannot install its seccomp filter (chmod, chown, truncate): {error}")
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|error| fail(&error))?;
    let filter = SeccompFilter::new(
        calls.into_iter().map(|call| (call, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|error| fail(&error))?;
    let program: BpfProgram = filter.try_into().map_err(|error| fail(&error))?;
    seccompiler::apply_filter(&program).map_err(|error| fail(&error))
}

/// Whether this kernel can enforce [`confine`]'s file-system rules: asked once at the
/// worker's start, so that what runs confined and what does not is said in its log.
pub fn confinement_available() -> Result<(), String> {
    use landlock::{Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};
    // Creating a ruleset (and dropping it) restricts nothing.
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(|ruleset| ruleset.create())
        .map(drop)
        .map_err(|error| format!("Landlock is not available: {error}"))
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
