//! The test harness: temporary directories, real child processes whose output the test can
//! wait on, deadline-based waiting (tests never assume how fast a machine is), root checks,
//! the sluice system accounts, and a real private `dbus-daemon` configured like the system bus
//! with helper processes started as real users.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sluice_core::store::{Durability, RetryPolicy, Store, StoreOptions};

/// Generous on purpose: a deadline only bounds how long a broken test hangs.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn store_options(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    }
}

pub fn open_store(path: &Path, durability: Durability) -> Store {
    Store::open(path, &store_options(durability)).expect("open store")
}

/// A child process whose stdout lines are collected as they arrive; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            lines,
            reader: Some(reader),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line starting with `prefix` and returns it.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let mut found = None;
        let appeared = wait_until(timeout, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.starts_with(prefix))
                .cloned();
            found.is_some()
        });
        assert!(
            appeared,
            "no line starting with {prefix:?} within {timeout:?}; got {:?}",
            self.lines()
        );
        found.unwrap()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal child");
    }

    /// SIGKILL, then reap; returns every line the child wrote before it died.
    pub fn kill_hard(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }

    /// Waits for the process to exit on its own and returns its status and output.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return (status, self.lines());
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}; output {:?}",
                self.child.id(),
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queue client helper program (tests/src/bin/queue-child.rs) for a database.
pub fn queue_child(database: &Path, durability: Durability) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue-child"));
    command
        .arg("--db")
        .arg(database)
        .arg("--durability")
        .arg(durability.as_str());
    command
}

pub fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().to_path_buf();
    (directory, path)
}

/// How long a helper process may take to say it is ready.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// The workspace root, where `packaging/` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// The skip rule for tests that need root: `false` (after saying so) when not root, unless
/// `SLUICE_REQUIRE_ROOT_TESTS=1`, in which case not being root fails the test.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("SLUICE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("this test needs root and SLUICE_REQUIRE_ROOT_TESTS=1 is set");
    }
    eprintln!("skipped: needs root");
    false
}

/// The ids of sluice's system accounts.
#[derive(Debug, Clone, Copy)]
pub struct SluiceAccounts {
    pub user_id: u32,
    pub group_id: u32,
}

/// Creates user `_sluice` and group `sluice` from the shipped sysusers.d file (idempotent;
/// works without systemd as PID 1) and returns their ids. Needs root. Runs once per test
/// process, so parallel tests do not race on /etc/passwd.
pub fn ensure_sluice_accounts() -> anyhow::Result<SluiceAccounts> {
    static ACCOUNTS: OnceLock<Result<SluiceAccounts, String>> = OnceLock::new();
    ACCOUNTS
        .get_or_init(|| create_sluice_accounts().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn create_sluice_accounts() -> anyhow::Result<SluiceAccounts> {
    let sysusers_file = workspace_root().join("packaging/sysusers.d/sluice.conf");
    // systemd-sysusers ignores a relative path argument, so it gets the absolute one.
    let output = Command::new("systemd-sysusers")
        .arg(&sysusers_file)
        .output()
        .context("cannot run systemd-sysusers (package systemd)")?;
    if !output.status.success() {
        bail!(
            "systemd-sysusers {} failed: {}",
            sysusers_file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let user = nix::unistd::User::from_name("_sluice")
        .context("cannot look up user _sluice")?
        .context("systemd-sysusers did not create user _sluice")?;
    let group = nix::unistd::Group::from_name("sluice")
        .context("cannot look up group sluice")?
        .context("systemd-sysusers did not create group sluice")?;
    Ok(SluiceAccounts {
        user_id: user.uid.as_raw(),
        group_id: group.gid.as_raw(),
    })
}

/// Which policy the private bus enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusPolicy {
    /// The system bus defaults (deny owning names and method calls) plus the shipped
    /// `packaging/dbus/org.sluice.conf`.
    Shipped,
    /// Everything allowed: stands for a broken policy, to show the daemons' own caller check.
    AllowEverything,
}

/// A private `dbus-daemon`, killed when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    process: Child,
    address: String,
    // Holds the socket and the generated config; removed after the daemon is gone.
    _directory: tempfile::TempDir,
}

impl PrivateBus {
    pub fn start(policy: BusPolicy) -> anyhow::Result<PrivateBus> {
        let directory = tempfile::tempdir().context("cannot make the bus directory")?;
        // Callers of other users must reach the socket inside.
        set_mode(directory.path(), 0o755)?;
        let socket = directory.path().join("bus.socket");
        let config_path = directory.path().join("bus.conf");
        std::fs::write(&config_path, bus_config(&socket, policy))
            .context("cannot write the bus config")?;
        let mut process = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start dbus-daemon (package dbus-daemon or dbus)")?;
        // dbus-daemon prints its address once it listens.
        let stdout = process.stdout.take().context("dbus-daemon has no stdout")?;
        let first_line = wait_for_line(stdout, STARTUP_DEADLINE, |_| true);
        let address = match first_line {
            Ok(line) => line.trim().to_owned(),
            Err(error) => {
                let _ = process.kill();
                let _ = process.wait();
                let mut stderr = String::new();
                if let Some(mut pipe) = process.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(error.context(format!("dbus-daemon did not start: {stderr}")));
            }
        };
        Ok(PrivateBus {
            process,
            address,
            _directory: directory,
        })
    }

    /// The address to pass to clients, e.g. `unix:path=/tmp/.../bus.socket,guid=...`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The system-bus-like config: EXTERNAL auth, a unix socket, deny by default like
/// /usr/share/dbus-1/system.conf, then the shipped policy included.
fn bus_config(socket: &Path, policy: BusPolicy) -> String {
    let policy_rules = match policy {
        BusPolicy::Shipped => format!(
            r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{}</include>"#,
            workspace_root()
                .join("packaging/dbus/org.sluice.conf")
                .display()
        ),
        BusPolicy::AllowEverything => r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>"#
            .to_owned(),
    };
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={}</listen>
{policy_rules}
</busconfig>
"#,
        socket.display()
    )
}

/// Who runs a command: root, `nobody` without groups, or `nobody` with group `sluice` added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Root,
    Nobody,
    NobodyInGroup(u32),
    /// The daemons' user `_sluice` with primary group `sluice` (needs the accounts).
    Sluice,
}

/// `nobody`'s ids on Debian and most distributions.
pub const NOBODY_ID: u32 = 65534;

impl Caller {
    /// A command that runs `program` as this caller, through `setpriv` (util-linux).
    pub fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Caller::Root => Command::new(program),
            Caller::Nobody => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", &NOBODY_ID.to_string()])
                    .args(["--regid", &NOBODY_ID.to_string()])
                    .arg("--clear-groups")
                    .arg(program);
                command
            }
            Caller::NobodyInGroup(group_id) => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", &NOBODY_ID.to_string()])
                    .args(["--regid", &NOBODY_ID.to_string()])
                    .args(["--groups", &group_id.to_string()])
                    .arg(program);
                command
            }
            Caller::Sluice => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", "_sluice", "--regid", "sluice", "--clear-groups"])
                    .arg(program);
                command
            }
        }
    }

    /// Runs `program args…` as this caller and collects its output.
    pub fn run(self, program: &str, arguments: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .args(arguments)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {program} as {self:?}"))
    }
}

/// A helper program started as a real process; killed when dropped.
#[derive(Debug)]
pub struct HelperProcess {
    process: Child,
    stderr_path: PathBuf,
    _stderr_directory: tempfile::TempDir,
}

impl HelperProcess {
    /// Starts `command` and waits until it prints `ready_line` on stdout. If it exits first,
    /// the error carries its exit status and stderr.
    pub fn start(mut command: Command, ready_line: &str) -> anyhow::Result<HelperProcess> {
        let stderr_directory = tempfile::tempdir().context("cannot make a stderr directory")?;
        let stderr_path = stderr_directory.path().join("stderr");
        let stderr_file =
            std::fs::File::create(&stderr_path).context("cannot create the stderr file")?;
        let mut process = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = process.stdout.take().context("helper has no stdout")?;
        let wanted = ready_line.to_owned();
        let ready = wait_for_line(stdout, STARTUP_DEADLINE, move |line| line.trim() == wanted);
        let mut helper = HelperProcess {
            process,
            stderr_path,
            _stderr_directory: stderr_directory,
        };
        if let Err(error) = ready {
            let status = helper.wait_for_exit(Duration::from_secs(2));
            return Err(error.context(format!(
                "helper never said {ready_line:?} (exit: {status:?}); stderr: {}",
                helper.stderr()
            )));
        }
        Ok(helper)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits up to `deadline` for the process to exit by itself.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let give_up = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Some(status);
            }
            if Instant::now() >= give_up {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Reads lines from `stream` on a thread until one satisfies `wanted`, or fails at the deadline
/// or at end of stream. The thread keeps draining the pipe afterwards so the writer never
/// blocks on a full pipe.
fn wait_for_line(
    stream: impl Read + Send + 'static,
    deadline: Duration,
    wanted: impl Fn(&str) -> bool + Send + 'static,
) -> anyhow::Result<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if !found && wanted(&line) {
                found = true;
                let _ = sender.send(line);
            }
        }
    });
    receiver
        .recv_timeout(deadline)
        .map_err(|error| anyhow::anyhow!("no expected line within {deadline:?}: {error}"))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

// --- systemd container harness ---
//
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
    nspawn: Option<Child>,
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
        if matches!(nspawn.try_wait(), Ok(None)) {
            // SIGTERM to nspawn makes it ask the container's systemd for a clean poweroff.
            let _ = kill(Pid::from_raw(nspawn.id() as i32), Signal::SIGTERM);
            let stopped = wait_until(CONTAINER_BOOT_DEADLINE, || {
                matches!(nspawn.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                // Killing the container's PID 1 kills its whole PID namespace.
                if let Some(leader) = self.leader {
                    let _ = kill(leader, Signal::SIGKILL);
                }
                let _ = nspawn.kill();
            }
        }
        let _ = nspawn.wait();
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
        let console = std::fs::File::create(self.base.join("console.log"))
            .context("cannot create the console log")?;
        let mut command = Command::new("systemd-nspawn");
        command
            .args(["--register=no", "--keep-unit", "--quiet", "-b", "-M"])
            .arg(&self.name)
            .arg("-D")
            .arg(&self.root);
        if options.private_network {
            command.arg("--private-network");
        }
        let nspawn = command
            .stdin(Stdio::null())
            .stdout(
                console
                    .try_clone()
                    .context("cannot share the console log")?,
            )
            .stderr(console)
            .spawn()
            .context("cannot start systemd-nspawn (apt-get install systemd-container)")?;
        let nspawn_pid = nspawn.id();
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
            Some(nspawn) => !matches!(nspawn.try_wait(), Ok(None)),
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

/// Runs a host command with a deadline; kills it and fails when the deadline passes.
pub fn output_within(mut command: Command, deadline: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    // Readers on their own threads, so a chatty command never blocks on a full pipe.
    let stdout_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for a command")? {
            break status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// The sluice .deb to test: `SLUICE_DEB` when set (a package built beforehand), otherwise
/// built once by `packaging/build-deb.sh`. The build holds a lock file, so test processes
/// running in parallel build it once and the others reuse it.
pub fn sluice_deb() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_DEB") {
        return Ok(PathBuf::from(path));
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

// --- monitor harness ---

/// The path of a daemon or CLI binary of this workspace (package and binary share the name),
/// built once per test process with `cargo build -p <name> --bin <name>` (integration tests
/// cannot name another package's binaries with `CARGO_BIN_EXE_*`).
pub fn daemon_binary(name: &str) -> PathBuf {
    let (package, binary) = (name, name);
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, Result<PathBuf, String>>>> =
        OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| Mutex::new(std::collections::HashMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    built
        .entry(format!("{package}/{binary}"))
        .or_insert_with(|| build_daemon_binary(package, binary))
        .clone()
        .unwrap_or_else(|error| panic!("{error}"))
}

fn build_daemon_binary(package: &str, binary: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The same command as tests/run.sh runs before the tests: with the whole workspace's
    // feature unification, so that this is a no-op there. (`-p <package>` alone would unify
    // features differently and rebuild half the dependency graph inside a test.)
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--workspace", "--bins"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run cargo build for {binary}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build --workspace --bins (for {package}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(binary);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built {binary} but {} is missing",
            path.display()
        ))
    }
}

/// A daemon started as a real process with its stderr (its log, on a non-journal stderr)
/// kept in a file the test can wait on; SIGKILLed if still running when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    log_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `command`, logging at `log_filter` into `log_path` (appended, so a restarted
    /// daemon's log follows the previous one).
    pub fn start(mut command: Command, log_path: &Path, log_filter: &str) -> DaemonProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the daemon log");
        let child = command
            .env("SLUICE_LOG", log_filter)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        DaemonProcess {
            child,
            log_path: log_path.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log has at least `count` lines containing every one of `parts`.
    pub fn wait_for_log_lines(&mut self, parts: &[&str], count: usize, timeout: Duration) {
        let appeared = wait_until(timeout, || {
            self.log()
                .lines()
                .filter(|line| parts.iter().all(|part| line.contains(part)))
                .count()
                >= count
        });
        assert!(
            appeared,
            "no {count} log lines with {parts:?} within {timeout:?}; exit: {:?}; log:\n{}",
            self.child.try_wait(),
            self.log()
        );
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the daemon");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- web harness ---

/// The API token the web harness writes into its token file.
pub const WEB_TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// Everything a test of sluice-web or sluicectl needs: a private bus, a temporary state
/// directory with a configuration file, a token file and the database path.
#[derive(Debug)]
pub struct SuiteFixture {
    pub bus: PrivateBus,
    pub directory: tempfile::TempDir,
    pub config_path: PathBuf,
    pub database: PathBuf,
}

impl SuiteFixture {
    /// Writes a configuration for this fixture; `extra` is appended to the file (more keys of
    /// tables that are not written here, or whole tables).
    pub fn new(web_section: &str, extra: &str) -> SuiteFixture {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        for folder in ["inbox", "staging", "library"] {
            std::fs::create_dir_all(root.join(folder)).expect("state folder");
        }
        std::fs::write(root.join("api-token"), format!("{WEB_TEST_TOKEN}\n")).expect("token");
        let database = root.join("sluice.db");
        let config = format!(
            r#"[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{address}"

[web]
listen = "127.0.0.1:0"
token_file = "{root}/api-token"
{web_section}

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
allow_private_addresses = false

[service]
status_interval = "200ms"
stop_timeout = "5s"

[limits]
max_request_body = "4 KiB"

{extra}
"#,
            root = root.display(),
            address = bus.address(),
        );
        let config_path = root.join("sluice.toml");
        std::fs::write(&config_path, config).expect("config file");
        SuiteFixture {
            bus,
            directory,
            config_path,
            database,
        }
    }

    pub fn store(&self) -> Store {
        open_store(&self.database, Durability::Normal)
    }

    /// A zbus connection to the fixture's bus, on `runtime`.
    pub fn connect(&self, runtime: &tokio::runtime::Runtime) -> zbus::Connection {
        runtime
            .block_on(sluice_core::bus::connect(
                &sluice_core::bus::BusAddress::Address(self.bus.address().to_owned()),
            ))
            .expect("connect to the private bus")
    }
}

/// A running `sluice-web` process; killed when dropped.
#[derive(Debug)]
pub struct WebDaemon {
    child: Child,
    stderr_path: PathBuf,
    /// `http://127.0.0.1:PORT` (without the base path).
    pub origin: String,
    pub address: std::net::SocketAddr,
}

impl WebDaemon {
    /// Starts sluice-web with the fixture's configuration and waits until it owns
    /// `org.sluice.Web1`, says it is running and names the address it listens on.
    pub fn start(fixture: &SuiteFixture) -> WebDaemon {
        let stderr_path = fixture.directory.path().join(format!(
            "sluice-web-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or_default()
        ));
        let child = Command::new(daemon_binary("sluice-web"))
            .arg("--config")
            .arg(&fixture.config_path)
            .env("SLUICE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("start sluice-web");
        let mut daemon = WebDaemon {
            child,
            stderr_path,
            origin: String::new(),
            address: "127.0.0.1:0".parse().expect("address"),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let connection = fixture.connect(&runtime);
        let mut listen_address = None;
        let started = wait_until(STARTUP_DEADLINE, || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("sluice-web exited with {status}: {}", daemon.stderr());
            }
            listen_address = runtime.block_on(async {
                let proxy = sluice_core::bus::WebProxy::builder(&connection)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .ok()?;
                (proxy.state().await.ok()? == "running").then_some(())?;
                proxy.listen_address().await.ok()
            });
            listen_address.is_some()
        });
        assert!(started, "sluice-web did not start: {}", daemon.stderr());
        let address: std::net::SocketAddr = listen_address
            .expect("listen address")
            .parse()
            .expect("ListenAddress is ip:port");
        daemon.origin = format!("http://{address}");
        daemon.address = address;
        daemon
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for the process to exit (after a signal the test sent).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WebDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns 4xx and 5xx responses instead of failing on them.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Status and body of a response, with the body parsed as JSON when it is JSON.
pub fn http_result(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, serde_json::Value) {
    let mut response = response.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

// --- scraper harness ---

/// What the HTTP fixture answers on one path.
#[derive(Debug, Clone)]
pub enum FixtureRoute {
    /// A file with a strong ETag, honouring `Range: bytes=N-` (with `If-Range`), sent in
    /// chunks of `chunk` bytes with `pause` between them (slow enough to kill or cancel
    /// mid-transfer). Without `content_length` the body is delimited by closing the
    /// connection.
    File {
        body: Arc<Vec<u8>>,
        etag: String,
        chunk: usize,
        pause: Duration,
        content_length: bool,
    },
    /// A bare status with a short text body.
    Status(u16),
    /// `status` for the first `failures` requests, then the file.
    FailThenServe {
        failures: Arc<std::sync::atomic::AtomicUsize>,
        status: u16,
        body: Arc<Vec<u8>>,
    },
    /// `302 Found` to this location.
    Redirect(String),
}

impl FixtureRoute {
    /// A file served at full speed.
    pub fn file(body: Vec<u8>) -> FixtureRoute {
        FixtureRoute::File {
            body: Arc::new(body),
            etag: "\"fixture-v1\"".to_owned(),
            chunk: 64 * 1024,
            pause: Duration::ZERO,
            content_length: true,
        }
    }

    /// The same file sent `chunk` bytes at a time with `pause` between chunks.
    pub fn slow_file(body: Vec<u8>, chunk: usize, pause: Duration) -> FixtureRoute {
        FixtureRoute::File {
            body: Arc::new(body),
            etag: "\"fixture-v1\"".to_owned(),
            chunk,
            pause,
            content_length: true,
        }
    }
}

/// One request the fixture received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureRequest {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Default)]
struct FixtureState {
    routes: Mutex<std::collections::HashMap<String, FixtureRoute>>,
    requests: Mutex<Vec<FixtureRequest>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// A real HTTP/1.1 server on 127.0.0.1 with an OS-chosen port, one thread per connection,
/// every response `Connection: close`. It records every request it gets.
#[derive(Debug)]
pub struct HttpFixture {
    address: std::net::SocketAddr,
    state: Arc<FixtureState>,
}

impl HttpFixture {
    pub fn start() -> HttpFixture {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fixture");
        let address = listener.local_addr().expect("fixture address");
        let state = Arc::new(FixtureState::default());
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    // A client that goes away mid-response (killed, cancelled) is expected.
                    let _ = serve_fixture_connection(stream, &state);
                });
            }
        });
        HttpFixture { address, state }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.address.port())
    }

    /// Sets (or replaces) what `path` answers.
    pub fn route(&self, path: &str, route: FixtureRoute) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), route);
    }

    pub fn requests(&self) -> Vec<FixtureRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests for one path.
    pub fn requests_for(&self, path: &str) -> Vec<FixtureRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.state
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.address);
    }
}

fn serve_fixture_connection(
    stream: std::net::TcpStream,
    state: &FixtureState,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let request = FixtureRequest {
        path: path.clone(),
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        user_agent: headers.get("user-agent").cloned(),
    };
    state.requests.lock().unwrap().push(request.clone());
    let route = state.routes.lock().unwrap().get(&path).cloned();
    let mut stream = stream;
    let simple = |stream: &mut std::net::TcpStream, status: u16, extra: &str| {
        let body = format!("status {status}\n");
        write!(
            stream,
            "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            reason_phrase(status),
            body.len()
        )
    };
    match route {
        None => simple(&mut stream, 404, ""),
        Some(FixtureRoute::Status(status)) => simple(&mut stream, status, ""),
        Some(FixtureRoute::Redirect(location)) => {
            simple(&mut stream, 302, &format!("Location: {location}\r\n"))
        }
        Some(FixtureRoute::FailThenServe {
            failures,
            status,
            body,
        }) => {
            let failed = failures
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            if failed {
                simple(&mut stream, status, "")
            } else {
                send_fixture_file(
                    &mut stream,
                    &request,
                    &body,
                    "\"fixture-v1\"",
                    64 * 1024,
                    Duration::ZERO,
                    true,
                )
            }
        }
        Some(FixtureRoute::File {
            body,
            etag,
            chunk,
            pause,
            content_length,
        }) => send_fixture_file(
            &mut stream,
            &request,
            &body,
            &etag,
            chunk,
            pause,
            content_length,
        ),
    }
}

fn send_fixture_file(
    stream: &mut std::net::TcpStream,
    request: &FixtureRequest,
    body: &[u8],
    etag: &str,
    chunk: usize,
    pause: Duration,
    content_length: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let length = body.len() as u64;
    let validator_matches = request
        .if_range
        .as_deref()
        .is_none_or(|validator| validator == etag);
    let start = request
        .range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<u64>().ok())
        .filter(|_| validator_matches);
    let mut head = String::new();
    let offset = match start {
        Some(start) if start >= length => {
            write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{length}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(start) => {
            head.push_str("HTTP/1.1 206 Partial Content\r\n");
            head.push_str(&format!(
                "Content-Range: bytes {start}-{}/{length}\r\n",
                length - 1
            ));
            start
        }
        None => {
            head.push_str("HTTP/1.1 200 OK\r\n");
            0
        }
    };
    if content_length {
        head.push_str(&format!("Content-Length: {}\r\n", length - offset));
    }
    head.push_str(&format!(
        "ETag: {etag}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())?;
    for piece in body[offset as usize..].chunks(chunk.max(1)) {
        stream.write_all(piece)?;
        stream.flush()?;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

// --- suite harness ---

/// The whole suite as real processes on one private bus, with one state directory and one
/// configuration file (passed to every process as `SLUICE_CONFIG`): sluice-monitor watching
/// the inbox in consume mode, ingest workers `1` and `2`, sluice-scraper (private addresses
/// allowed, so an [`HttpFixture`] on 127.0.0.1 is reachable; staging and inbox on the same
/// filesystem) and sluice-web on 127.0.0.1 with the harness token. Every process is killed
/// when the suite is dropped, before the bus goes away.
#[derive(Debug)]
pub struct Suite {
    // Declared first so they are dropped (killed) before the bus in `fixture`.
    pub web: WebDaemon,
    pub scraper: DaemonProcess,
    pub workers: Vec<DaemonProcess>,
    pub monitor: DaemonProcess,
    pub fixture: SuiteFixture,
}

/// How many ingest workers [`Suite::start`] runs (and `[ingest] workers` says).
pub const SUITE_WORKERS: usize = 2;

impl Suite {
    /// Writes the configuration, starts every daemon and waits until each one says it is
    /// ready: the monitor has finished its start reconcile, the workers and the scraper have
    /// logged `ready`, and sluice-web answers on the bus with its listen address.
    pub fn start() -> Suite {
        let fixture = SuiteFixture::for_whole_suite();
        // Everything is spawned before anything is waited on: the start-ups overlap.
        let mut monitor = fixture.start_daemon("sluice-monitor", &[], "monitor.log");
        let mut workers: Vec<DaemonProcess> = (1..=SUITE_WORKERS)
            .map(|instance| {
                let instance = instance.to_string();
                fixture.start_daemon(
                    "sluice-ingest-worker",
                    &["--instance", &instance],
                    &format!("worker-{instance}.log"),
                )
            })
            .collect();
        let mut scraper = fixture.start_daemon("sluice-scraper", &[], "scraper.log");
        let web = WebDaemon::start(&fixture);
        monitor.wait_for_log_lines(
            &["reconcile walk finished", "reason=\"start\""],
            1,
            DEADLINE,
        );
        for worker in &mut workers {
            worker.wait_for_log_lines(&["ready: claiming"], 1, DEADLINE);
        }
        scraper.wait_for_log_lines(&["ready", "staging="], 1, DEADLINE);
        Suite {
            web,
            scraper,
            workers,
            monitor,
            fixture,
        }
    }

    pub fn root(&self) -> &Path {
        self.fixture.directory.path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    pub fn staging(&self) -> PathBuf {
        self.root().join("staging")
    }

    pub fn library(&self) -> PathBuf {
        self.root().join("library")
    }

    /// `GET` on sluice-web; status and JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_result(
            http_agent()
                .get(format!("{}{path}", self.web.origin))
                .call(),
        )
    }

    /// `POST` of a JSON body to sluice-web with the harness token.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        http_result(
            http_agent()
                .post(format!("{}{path}", self.web.origin))
                .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Runs `sluicectl` with the suite's configuration in `SLUICE_CONFIG`.
    pub fn sluicectl(&self, arguments: &[&str]) -> Output {
        Command::new(daemon_binary("sluicectl"))
            .args(arguments)
            .env("SLUICE_CONFIG", &self.fixture.config_path)
            .stdin(Stdio::null())
            .output()
            .expect("run sluicectl")
    }

    /// Every file row the monitor recorded, oldest first.
    pub fn files(&self) -> Vec<sluice_core::store::FileRecord> {
        let page = self
            .fixture
            .store()
            .list_files(
                &sluice_core::store::FileFilter::default(),
                sluice_core::store::PageRequest {
                    before_id: None,
                    limit: 1000,
                },
            )
            .expect("list files");
        let mut files = page.items;
        files.sort_by_key(|file| file.id);
        files
    }

    /// Every daemon's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut logs = format!("--- monitor\n{}", self.monitor.log());
        for (index, worker) in self.workers.iter().enumerate() {
            logs.push_str(&format!("--- worker {}\n{}", index + 1, worker.log()));
        }
        logs.push_str(&format!("--- scraper\n{}", self.scraper.log()));
        logs.push_str(&format!("--- web\n{}", self.web.stderr()));
        logs
    }
}

impl SuiteFixture {
    /// A fixture whose configuration serves every daemon (see [`Suite`]).
    pub fn for_whole_suite() -> SuiteFixture {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        for folder in ["inbox", "staging", "library"] {
            std::fs::create_dir_all(root.join(folder)).expect("state folder");
        }
        std::fs::write(root.join("api-token"), format!("{WEB_TEST_TOKEN}\n")).expect("token");
        let database = root.join("sluice.db");
        let config = format!(
            r#"[store]
path = "{root}/sluice.db"
durability = "normal"
busy_timeout = "30s"

[bus]
address = "{address}"

[service]
status_interval = "200ms"
stop_timeout = "5s"

[web]
listen = "127.0.0.1:0"
token_file = "{root}/api-token"

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"
workers = {SUITE_WORKERS}

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
# The HTTP fixture listens on 127.0.0.1.
allow_private_addresses = true
politeness_delay = "0s"
progress_interval = "200ms"
"#,
            root = root.display(),
            address = bus.address(),
        );
        let config_path = root.join("sluice.toml");
        std::fs::write(&config_path, config).expect("config file");
        SuiteFixture {
            bus,
            directory,
            config_path,
            database,
        }
    }

    /// Starts daemon `name` with this fixture's configuration in `SLUICE_CONFIG`, logging at
    /// `info` into `log_name` inside the state directory. Does not wait for it.
    pub fn start_daemon(&self, name: &str, arguments: &[&str], log_name: &str) -> DaemonProcess {
        let mut command = Command::new(daemon_binary(name));
        command
            .args(arguments)
            .env("SLUICE_CONFIG", &self.config_path);
        DaemonProcess::start(command, &self.directory.path().join(log_name), "info")
    }
}
