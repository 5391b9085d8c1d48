//! The systemd-nspawn container of the system tests and the README's run command: a real
//! systemd booted from a throwaway overlay copy of the host's own root, and the sluice .deb
//! installed into it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixtures::have_root;
use crate::process::{DaemonProcess, SpawnOptions, output_within, wait_until, workspace_root};

/// The system calls systemd-nspawn must let through for the ingest worker's Landlock
/// confinement of its processors (nspawn's filter refuses them otherwise).
pub const NSPAWN_LANDLOCK_CALLS: &str =
    "landlock_create_ruleset landlock_add_rule landlock_restrict_self";

// A real systemd, booted with systemd-nspawn from a throwaway copy of the host's own root
// (an overlay whose upper layer is a tmpfs), for the system tests and the README's run
// command. The recipe and its traps are in the team notes (systemd-container.md): the
// overlay keeps the container's writes (and its systemd-tmpfiles run) away from the host;
// `--register=no --keep-unit` is needed because the host's PID 1 is not systemd; commands
// run inside through `nsenter --all --root --wd` into the container's PID 1. Everything is
// undone on drop, also when a test fails: the container is powered off, only the nspawn
// process we started (and, if it hangs, the container's own PID 1) is killed, and the two
// mounts are taken down.

/// Host units enabled on these machines that the container must not start: a second
/// PostgreSQL, and timers (apt-daily above all, whose dpkg lock would race our installs).
const CONTAINER_UNWANTED_UNITS: &[&str] = &[
    "multi-user.target.wants/postgresql.service",
    "multi-user.target.wants/e2scrub_reap.service",
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    "timers.target.wants/e2scrub_all.timer",
    "timers.target.wants/fstrim.timer",
    "timers.target.wants/man-db.timer",
];

/// How long the container may take to boot (a few seconds here) or to power off.
pub const CONTAINER_BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// How long one command inside the container may take before it is killed.
pub const CONTAINER_COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// The system tests' skip rule plus the tools they need: `false` when not root (see
/// [`have_root`]); a missing tool is an error, not a skip.
pub fn can_boot_containers() -> anyhow::Result<bool> {
    if !have_root() {
        return Ok(false);
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is missing: apt-get install {package}");
        }
    }
    Ok(true)
}

/// How a container is booted.
#[derive(Debug, Clone, Copy)]
pub struct ContainerOptions {
    /// A network namespace of its own with only loopback (tests: no port clashes), or the
    /// host's network (the run command: the dashboard answers on the host's 127.0.0.1).
    pub private_network: bool,
}

/// A booted systemd container; powered off and unmounted when dropped.
#[derive(Debug)]
pub struct Container {
    name: String,
    /// The tmpfs holding the overlay's upper and work layers and the console log.
    base: PathBuf,
    /// The overlay mount: the container's `/` as the host sees it.
    root: PathBuf,
    base_mounted: bool,
    root_mounted: bool,
    nspawn: Option<DaemonProcess>,
    /// The container's PID 1 (systemd), as a host PID.
    leader: Option<Pid>,
}

impl Container {
    /// Mounts the overlay copy of `/`, prepares it (new machine id, unwanted host units
    /// disabled) and boots systemd in it; returns once `systemctl is-system-running` says
    /// `running` or `degraded`.
    pub fn boot(options: ContainerOptions) -> anyhow::Result<Container> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sluice-test-{}-{number}", std::process::id());
        remove_stale_containers();
        let base = std::env::temp_dir().join(&name);
        let mut container = Container {
            root: base.join("root"),
            base,
            name,
            base_mounted: false,
            root_mounted: false,
            nspawn: None,
            leader: None,
        };
        container.mount_root()?;
        container.prepare_root()?;
        container.start_nspawn(options)?;
        container.wait_until_booted()?;
        Ok(container)
    }

    /// The container's `/` as a host path: files written under it appear inside.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The container's PID 1 as a host PID (for `nsenter --target`).
    pub fn leader(&self) -> Pid {
        self.leader.expect("the container has booted")
    }

    /// A command that runs `program` inside the container, with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg("--target")
            .arg(self.leader().to_string())
            .args(["--all", "--root", "--wd", "--"])
            .arg(program)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        command
    }

    /// Runs `program arguments…` inside and returns its output, whatever its exit status.
    pub fn run(&self, program: &str, arguments: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.command(program);
        command.args(arguments);
        output_within(command, CONTAINER_COMMAND_DEADLINE)
    }

    /// Runs a `sh -c` script inside and returns its output, whatever its exit status.
    pub fn sh(&self, script: &str) -> anyhow::Result<Output> {
        self.run("sh", &["-c", script])
    }

    /// Runs a `sh -c` script inside; fails with its output unless it exits 0; returns stdout.
    pub fn check(&self, script: &str) -> anyhow::Result<String> {
        let output = self.sh(script)?;
        if !output.status.success() {
            bail!(
                "in the container, `{script}` failed ({}):\nstdout: {}\nstderr: {}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Copies a host file to `destination` (an absolute path inside the container).
    pub fn copy_in(&self, source: &Path, destination: &str) -> anyhow::Result<()> {
        let target = self.root.join(destination.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(source, &target)
            .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
        Ok(())
    }

    /// One unit property, as `systemctl show -p NAME --value` prints it.
    pub fn unit_property(&self, unit: &str, property: &str) -> anyhow::Result<String> {
        Ok(self
            .check(&format!("systemctl show -p {property} --value {unit}"))?
            .trim()
            .to_owned())
    }

    /// The last lines systemd and the kernel wrote to the container's console.
    pub fn console(&self) -> String {
        let text = std::fs::read_to_string(self.base.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Powers the container off and waits for nspawn to exit; kills it if it does not.
    pub fn power_off(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        if nspawn.is_running() {
            // SIGTERM to nspawn makes it ask the container's systemd for a clean poweroff.
            let _ = nspawn.signal(Signal::SIGTERM);
            if nspawn.wait_for_exit(CONTAINER_BOOT_DEADLINE).is_err() {
                // Killing the container's PID 1 kills its whole PID namespace.
                if let Some(leader) = self.leader {
                    let _ = kill(leader, Signal::SIGKILL);
                }
                nspawn.kill_hard();
            }
        }
        // Dropping reaps it (and kills it first if it is somehow still there).
        drop(nspawn);
        self.leader = None;
    }

    fn mount_root(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.base)
            .with_context(|| format!("cannot create {}", self.base.display()))?;
        run_host(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0700", "tmpfs"])
                .arg(&self.base),
        )?;
        self.base_mounted = true;
        for layer in ["upper", "work", "root"] {
            std::fs::create_dir(self.base.join(layer)).context("cannot create an overlay layer")?;
        }
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            self.base.join("upper").display(),
            self.base.join("work").display()
        );
        run_host(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&self.root),
        )?;
        self.root_mounted = true;
        Ok(())
    }

    fn prepare_root(&self) -> anyhow::Result<()> {
        // A fresh machine id, so the container's journal is its own.
        remove_if_present(&self.root.join("etc/machine-id"))?;
        for unit in CONTAINER_UNWANTED_UNITS {
            remove_if_present(&self.root.join("etc/systemd/system").join(unit))?;
        }
        // The host image forbids maintainer scripts to start services (policy-rc.d exits
        // 101); the container is a booted machine where installing starts them.
        remove_if_present(&self.root.join("usr/sbin/policy-rc.d"))?;
        Ok(())
    }

    fn start_nspawn(&mut self, options: ContainerOptions) -> anyhow::Result<()> {
        let mut command = Command::new("systemd-nspawn");
        command
            .args(["--register=no", "--keep-unit", "--quiet", "-b", "-M"])
            .arg(&self.name)
            .arg("-D")
            .arg(&self.root)
            // nspawn's own seccomp filter (systemd 252) refuses the landlock calls with EPERM,
            // and the ingest worker confines its processors with Landlock: allow them, as a
            // machine booted for real does.
            .arg(format!("--system-call-filter={NSPAWN_LANDLOCK_CALLS}"));
        if options.private_network {
            command.arg("--private-network");
        }
        // The container's console (systemd's boot messages) and nspawn's own complaints, in one
        // file for the failure messages.
        let options = SpawnOptions::named("systemd-nspawn")
            .log_to(&self.base.join("console.log"))
            .stdout_to_log();
        let nspawn = DaemonProcess::spawn(&mut command, options)
            .context("cannot start systemd-nspawn (apt-get install systemd-container)")?;
        let nspawn_pid = nspawn.pid().as_raw() as u32;
        self.nspawn = Some(nspawn);
        // The container's PID 1 is the nspawn child that is PID 1 in its own namespace.
        let mut leader = None;
        let found = wait_until(CONTAINER_BOOT_DEADLINE, || {
            leader = container_leader(nspawn_pid);
            leader.is_some() || self.nspawn_exited()
        });
        match leader {
            Some(pid) if found => {
                self.leader = Some(pid);
                Ok(())
            }
            _ => bail!(
                "systemd-nspawn started no container within {CONTAINER_BOOT_DEADLINE:?}; console:\n{}",
                self.console()
            ),
        }
    }

    fn wait_until_booted(&mut self) -> anyhow::Result<()> {
        let mut last_state = String::new();
        let booted = wait_until(CONTAINER_BOOT_DEADLINE, || {
            if self.nspawn_exited() {
                return true;
            }
            last_state = self
                .run("systemctl", &["is-system-running"])
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
                .unwrap_or_default();
            let up = matches!(last_state.as_str(), "running" | "degraded");
            if !up {
                std::thread::sleep(Duration::from_millis(200));
            }
            up
        });
        if !booted || self.nspawn_exited() {
            bail!(
                "the container did not finish booting within {CONTAINER_BOOT_DEADLINE:?} \
                 (last state {last_state:?}); console:\n{}",
                self.console()
            );
        }
        Ok(())
    }

    fn nspawn_exited(&mut self) -> bool {
        match self.nspawn.as_mut() {
            Some(nspawn) => !nspawn.is_running(),
            None => true,
        }
    }

    fn unmount(&mut self) {
        if self.root_mounted {
            self.root_mounted = !unmount_with_retries(&self.root);
        }
        if self.base_mounted && !self.root_mounted {
            self.base_mounted = !unmount_with_retries(&self.base);
        }
        if !self.base_mounted {
            let _ = std::fs::remove_dir(&self.base);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        self.unmount();
    }
}

/// The sluice .deb to test: `SLUICE_DEB` when set (a package built beforehand, e.g.
/// `SLUICE_DEB=$(packaging/build-deb.sh | tail -n 1)`), otherwise built once by
/// `packaging/build-deb.sh`. That is the packaging step (a release build of every daemon, then
/// cargo-deb and lintian), not a build of the test binaries: the system tests test the
/// package a user installs, so they make it the way a release does. It runs only when a
/// system test needs it (as root), not in every test run. The build holds a lock file, so
/// test processes running in parallel build it once and the others reuse it.
pub fn sluice_deb() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_DEB") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "SLUICE_DEB={} is not a file: build the package with packaging/build-deb.sh \
                 (it prints the .deb's path last), or unset SLUICE_DEB to have the test build it",
                path.display()
            );
        }
        return Ok(path);
    }
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(|| build_sluice_deb().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_sluice_deb() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let lock = root.join("target/.sluice-deb.lock");
    std::fs::create_dir_all(root.join("target")).context("cannot create target/")?;
    let mut command = Command::new("flock");
    command
        .arg(&lock)
        .arg(root.join("packaging/build-deb.sh"))
        .current_dir(&root);
    // nextest runs each test in its own process: one package per test run, not per test.
    if let Ok(run_id) = std::env::var("NEXTEST_RUN_ID") {
        command.env("SLUICE_DEB_REUSE_KEY", run_id);
    }
    // The release build of every daemon takes minutes on a cold target directory.
    let output = output_within(command, Duration::from_secs(3600))?;
    if !output.status.success() {
        bail!(
            "packaging/build-deb.sh failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The script prints the package's path as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        bail!("packaging/build-deb.sh did not print a .deb path; it printed:\n{stdout}");
    }
    Ok(path)
}

fn run_host(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The child of `nspawn_pid` that is PID 1 of its own PID namespace, if it exists yet.
fn container_leader(nspawn_pid: u32) -> Option<Pid> {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children")).ok()?;
    children.split_whitespace().find_map(|child| {
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).ok()?;
        let namespace_pids = status.lines().find(|line| line.starts_with("NSpid:"))?;
        let innermost = namespace_pids.split_whitespace().last()?;
        if innermost != "1" {
            return None;
        }
        child.parse().ok().map(Pid::from_raw)
    })
}

/// Unmounts `path`, retrying while it is busy; detaches it lazily as a last resort. Returns
/// whether it is unmounted.
fn unmount_with_retries(path: &Path) -> bool {
    let unmounted = wait_until(Duration::from_secs(10), || {
        let done = Command::new("umount")
            .arg(path)
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false);
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    unmounted
        || Command::new("umount")
            .arg("--lazy")
            .arg(path)
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
}

/// Unmounts what test processes that were killed before their cleanup ran left behind:
/// `$TMPDIR/sluice-test-<pid>-<n>` whose process no longer exists.
fn remove_stale_containers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|name| name.strip_prefix("sluice-test-"))
        else {
            continue;
        };
        let Some(owner) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let base = entry.path();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for mount_point in [base.join("root"), base.clone()] {
            let listed = format!(" {} ", mount_point.display());
            // One plain attempt: a mount still in use (its container still running) stays.
            if mounts.contains(&listed) {
                let _ = Command::new("umount").arg(&mount_point).output();
            }
        }
        let _ = std::fs::remove_dir(&base);
    }
}
