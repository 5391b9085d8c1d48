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
//! itself with Landlock before it executes the program ([`confine`]): it may read only the
//! system's folders ([`SYSTEM_READABLE`]), its own program file and the one file it is given,
//! and write only beneath its private temporary folder (for `pdftoppm`: nowhere),
//! connect no TCP socket, and signal no process outside (not the worker, not the other
//! daemons). Landlock needs no privilege and no namespace (so the unit's
//! `RestrictNamespaces=` stays; its `SystemCallFilter=` allows the three landlock calls), and
//! it holds across `exec` for every descendant. Where the kernel has no Landlock, the
//! launcher refuses to start the program and its job fails saying so. The extraction child
//! confines itself the same way, writing nowhere, before it reads a byte.
//!
//! # Nothing read but what it is given
//!
//! Reading is confined as well: the database (`/var/lib/sluice/sluice.db`) is readable by the
//! worker's user, and a program that could open it could read every job, download and
//! source, and hold a read lock on its `-shm` file that stalls every writer. So a confined
//! program may read only:
//!
//! - the system's folders, [`SYSTEM_READABLE`] (`/usr`, `/etc`, `/opt`, `/proc`, …: what
//!   python3, tesseract or pdftoppm need to run), never `/var/lib`, `/srv`, `/home` or `/tmp`;
//! - its own program file (`argv[0]`, which may live anywhere) and its writable folders;
//! - the file it works on. A one-shot processor gets it as `{path}`: the worker opens it
//!   (`O_NOFOLLOW`, as it opened it for the job) and hands it to the launcher on stdin; the
//!   launcher allows reading that one inode (a Landlock rule on a file holds for the file,
//!   whatever name reaches it, and for no other file put in its place), then replaces stdin
//!   with `/dev/null` before executing the processor. `pdftoppm` reads its PDF through
//!   `/proc/self/fd/0`, allowed the same way, and keeps it as stdin;
//! - a *server* processor is given many files over its life, by path in each request: it
//!   may read beneath the library and the `index` watched folders (where the worker's files
//!   are), never beneath the database's folder (a watched folder that holds it is left out,
//!   with a warning, and its files cannot be read by servers).
//!
//! The extraction child reads its file from the descriptor it inherits and may read only the
//! system's folders.
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
/// The launcher's option: a folder the program may read beneath (given once per folder).
const READABLE_OPTION: &str = "--readable";
/// The launcher's option: stdin is the file the program works on; it may read that file,
/// and stdin becomes `/dev/null` (a one-shot processor, which reads `{path}`).
const INPUT_ON_STDIN_OPTION: &str = "--input-on-stdin";
/// The launcher's option: stdin is the file the program works on; it may read that file and
/// keeps it as stdin (`pdftoppm`, which reads `/proc/self/fd/0`).
const READ_STDIN_OPTION: &str = "--read-stdin";

/// The exit status of a launcher that could not isolate or start its processor.
const LAUNCHER_FAILED: u8 = 126;

/// What a confined program is given to read and write beyond the system's folders (see the
/// module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Confinement<'a> {
    /// Folders it may read beneath (a server processor: the library, the index folders).
    pub readable: &'a [&'a Path],
    /// Folders it may read and write beneath (its temporary folder, its `writable` key).
    pub writable: &'a [&'a Path],
    /// How it gets the file it works on, which it may then read.
    pub input: Input,
}

/// How a confined program is handed the one file it works on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Input {
    /// No file (a server: its requests name files in its readable folders).
    #[default]
    None,
    /// Its stdin is the file; stdin becomes `/dev/null` before it runs (it reads the path).
    StdinReplaced,
    /// Its stdin is the file and stays so.
    StdinKept,
}

/// The command line that runs `argv` as a processor (or one of the worker's own helpers,
/// `pdftoppm`) cut off from the network and confined (see the module documentation): the
/// worker's own program as [`launcher_main`], which enters the namespaces when needed,
/// confines itself and then executes `argv`. `confinement` says what it may read and write
/// besides the system's folders. (The worker does not do it between fork and exec itself:
/// the workspace has no unsafe code, and a launcher costs one exec.) Only where this program
/// is not the worker's (its code run inside a test binary) is `argv` run as it is, as the
/// start-up warning said.
pub fn isolated_argv(argv: &[OsString], confinement: Confinement<'_>) -> Vec<OsString> {
    let isolation = network_isolation();
    if isolation == NetworkIsolation::Unavailable {
        return argv.to_vec();
    }
    let mut launcher = vec![OsString::from(SELF), OsString::from(LAUNCHER_ARGUMENT)];
    if isolation == NetworkIsolation::OwnNamespace {
        launcher.push(OWN_NETWORK_OPTION.into());
    }
    for folder in confinement.writable {
        launcher.push(WRITABLE_OPTION.into());
        launcher.push(folder.into());
    }
    for folder in confinement.readable {
        launcher.push(READABLE_OPTION.into());
        launcher.push(folder.into());
    }
    match confinement.input {
        Input::None => {}
        Input::StdinReplaced => launcher.push(INPUT_ON_STDIN_OPTION.into()),
        Input::StdinKept => launcher.push(READ_STDIN_OPTION.into()),
    }
    launcher.push("--".into());
    launcher.extend(argv.iter().cloned());
    launcher
}

/// `sluice-ingest-worker --launch-processor [--own-network-namespace] [--writable DIR]…
/// [--readable DIR]… [--input-on-stdin | --read-stdin] -- PROGRAM ARGS…`: enters a new user
/// and network namespace when asked (mapping its user and group to themselves), confines
/// itself with [`confine`] and executes the program in its place (same process, so the same
/// process group and pipes; the confinement holds across `exec`). Says why on stderr and
/// exits with 126 when it cannot: a program that cannot be confined is not started.
pub fn launcher_main() -> ExitCode {
    let mut arguments = std::env::args_os().skip(2);
    let (mut own_network, mut writable, mut readable) = (false, Vec::new(), Vec::new());
    let mut input = Input::None;
    loop {
        match arguments.next() {
            Some(option) if option == OWN_NETWORK_OPTION => own_network = true,
            Some(option) if option == WRITABLE_OPTION => match arguments.next() {
                Some(folder) => writable.push(PathBuf::from(folder)),
                None => return launcher_usage(),
            },
            Some(option) if option == READABLE_OPTION => match arguments.next() {
                Some(folder) => readable.push(PathBuf::from(folder)),
                None => return launcher_usage(),
            },
            Some(option) if option == INPUT_ON_STDIN_OPTION => input = Input::StdinReplaced,
            Some(option) if option == READ_STDIN_OPTION => input = Input::StdinKept,
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
    let grants = Grants {
        program: Some(Path::new(program)),
        readable: &readable,
        writable: &writable,
        input_on_stdin: input != Input::None,
    };
    if let Err(error) = confine(grants) {
        eprintln!(
            "sluice-ingest-worker: cannot start processor {}: {error}",
            program.to_string_lossy()
        );
        return ExitCode::from(LAUNCHER_FAILED);
    }
    if input == Input::StdinReplaced {
        // The processor reads its file by path; its stdin is empty, as it always was.
        let replaced = std::fs::File::open("/dev/null")
            .map_err(|error| error.to_string())
            .and_then(|null| nix::unistd::dup2_stdin(null).map_err(|error| error.to_string()));
        if let Err(error) = replaced {
            eprintln!(
                "sluice-ingest-worker: cannot start processor {}: cannot replace its stdin \
                 with /dev/null: {error}",
                program.to_string_lossy()
            );
            return ExitCode::from(LAUNCHER_FAILED);
        }
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
         [{WRITABLE_OPTION} FOLDER]… [{READABLE_OPTION} FOLDER]… \
         [{INPUT_ON_STDIN_OPTION} | {READ_STDIN_OPTION}] -- PROGRAM ARGS…"
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

/// The folders every confined program may read beneath (those that exist): the system's
/// programs, libraries, configuration and data, devices, `/proc` and `/sys`. Not `/var`
/// (`/var/lib/sluice` holds the database and the library), `/srv`, `/home`, `/run`, `/tmp`.
pub const SYSTEM_READABLE: [&str; 13] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/dev",
    "/proc",
    "/sys",
    // Fonts' caches (pdftoppm); without it fontconfig rebuilds them in memory.
    "/var/cache/fontconfig",
];

/// What [`confine`] lets a program read and write besides [`SYSTEM_READABLE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Grants<'a> {
    /// The program about to be executed: it may read and execute that one file.
    pub program: Option<&'a Path>,
    /// Folders it may read beneath.
    pub readable: &'a [PathBuf],
    /// Folders it may read and write beneath.
    pub writable: &'a [PathBuf],
    /// Whether stdin is the file it works on, which it may then read (that inode alone).
    pub input_on_stdin: bool,
}

/// Confines this process and everything it executes, for good, with Landlock (the kernel's
/// unprivileged sandbox, which holds for root as well):
///
/// - it may read and execute only beneath [`SYSTEM_READABLE`] and what `grants` names (see
///   the module documentation): not the database, not the library or the inbox unless
///   granted (a server processor), nothing in `/tmp` but its own folder;
/// - it may write, create, remove, rename or truncate nothing, except beneath the
///   `writable` folders and the few devices of [`WRITABLE_DEVICES`]: not the database, not
///   the library, not the inbox (the configuration keeps a processor's `writable` folders
///   apart from those). A writable folder with a symbolic link in any component is refused:
///   the rule would hold for wherever it points;
/// - (Landlock ABI 4, Linux 6.7) it may not bind or connect TCP sockets;
/// - (ABI 6, Linux 6.12) it may not send signals to, nor connect to the abstract Unix
///   sockets of, any process outside its confinement: not the worker, not the other daemons,
///   which run as the same user.
///
/// Fails, changing nothing, when the kernel cannot enforce at least the file-system rules
/// (no Landlock, or not enabled at boot). Truncating a file by its path (`truncate(2)`) is
/// confined from ABI 3 (Linux 6.2) on; on older kernels it is not.
pub fn confine(grants: Grants<'_>) -> Result<(), String> {
    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
        Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    };
    let abi = LANDLOCK_ABI;
    let fail = |error: &dyn std::fmt::Display| format!("cannot confine it with Landlock: {error}");
    // Reads and writes must be confined; what newer kernels add is taken where it exists.
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
    // Folders that may be missing on this machine (a merged /usr has no real /lib64, a
    // minimal one no /opt) are skipped; a named folder of the configuration must exist.
    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, bool)> = SYSTEM_READABLE
        .iter()
        .map(|folder| (PathBuf::from(folder), AccessFs::from_read(abi), true))
        .collect();
    rules.extend(
        WRITABLE_DEVICES
            .iter()
            .map(|device| (PathBuf::from(device), AccessFs::from_file(abi), true)),
    );
    // The configuration's folders for reading (the library, watched folders) are trusted as
    // the daemons trust them: an administrator may make them symbolic links.
    for folder in grants.readable {
        rules.push((folder.clone(), AccessFs::from_read(abi), false));
    }
    for (path, access, optional) in rules {
        let descriptor = match PathFd::new(&path) {
            Ok(descriptor) => descriptor,
            Err(_) if optional => continue,
            Err(error) => return Err(fail(&format!("{}: {error}", path.display()))),
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(descriptor, access))
            .map_err(|error| fail(&error))?;
    }
    // A writable folder is opened without following a symbolic link in any component: the
    // rule would hold for wherever a link pointed, and a link in a middle component (one
    // the program itself could swap) could point into the library.
    for folder in grants.writable {
        let descriptor = open_folder_without_links(folder).map_err(|error| {
            fail(&format!(
                "writable folder {}: {error} (a symbolic link is not followed in any component)",
                folder.display()
            ))
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(descriptor, AccessFs::from_all(abi)))
            .map_err(|error| fail(&error))?;
    }
    // Single files: the rule holds for the inode, so a name swapped afterwards gains nothing.
    let file_read = AccessFs::ReadFile | AccessFs::Execute;
    if let Some(program) = grants.program {
        // A program found through $PATH is beneath the system's folders already.
        if program.is_absolute()
            && let Ok(descriptor) = PathFd::new(program)
        {
            ruleset = ruleset
                .add_rule(PathBeneath::new(descriptor, file_read))
                .map_err(|error| fail(&format!("its program {}: {error}", program.display())))?;
        }
    }
    if grants.input_on_stdin {
        ruleset = ruleset
            .add_rule(PathBeneath::new(io::stdin(), AccessFs::ReadFile))
            .map_err(|error| fail(&format!("the file on its stdin: {error}")))?;
    }
    let status = ruleset.restrict_self().map_err(|error| fail(&error))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(fail(&"the kernel does not enforce it"));
    }
    deny_owner_calls()
}

/// Opens the folder at the absolute `path` for a Landlock rule (`O_PATH`), refusing a
/// symbolic link in any component (`RESOLVE_NO_SYMLINKS`; `ELOOP`). Mount points may be
/// crossed: the unit's `ReadWritePaths=` makes a writable folder one.
fn open_folder_without_links(path: &Path) -> Result<std::os::fd::OwnedFd, String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    if !path.is_absolute() {
        return Err("not an absolute path".to_owned());
    }
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(nix::fcntl::AT_FDCWD, path, how) {
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ELOOP) => {
                return Err("a component is a symbolic link".to_owned());
            }
            Err(nix::errno::Errno::ENOTDIR) => return Err("not a folder".to_owned()),
            other => return other.map_err(|error| error.desc().to_owned()),
        }
    }
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
    fn a_writable_folder_is_opened_without_a_link_in_any_component() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir_all(real.join("cache")).unwrap();
        std::os::unix::fs::symlink(&real, root.path().join("link")).unwrap();
        std::fs::write(real.join("file"), "x").unwrap();
        assert!(open_folder_without_links(&real.join("cache")).is_ok());
        // A link in a middle component, then as the last one.
        for path in [root.path().join("link/cache"), root.path().join("link")] {
            let error = open_folder_without_links(&path).unwrap_err();
            assert!(
                error.contains("symbolic link"),
                "{}: {error}",
                path.display()
            );
        }
        let error = open_folder_without_links(&real.join("file")).unwrap_err();
        assert!(error.contains("not a folder"), "{error}");
        assert!(open_folder_without_links(Path::new("relative")).is_err());
    }

    #[test]
    fn only_loopback_is_recognised() {
        let header = "Inter-|   Receive\n face |bytes\n";
        assert!(only_loopback(&format!("{header}    lo: 0 0 0\n")));
        assert!(!only_loopback(&format!(
            "{header}    lo: 0 0 0\n  eth0: 1 2 3\n"
        )));
    }
}
