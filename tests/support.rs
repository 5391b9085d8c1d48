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

// --- monitor harness ---

/// The path of a daemon binary of this workspace, built once per test process with
/// `cargo build -p <package> --bin <binary>` (integration tests cannot name another package's
/// binaries with `CARGO_BIN_EXE_*`).
pub fn daemon_binary(package: &str, binary: &str) -> PathBuf {
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
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package, "--bin", binary])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run cargo build for {binary}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p {package} --bin {binary} failed: {}",
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
