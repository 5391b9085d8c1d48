//! Real processes for the tests and the benchmarks: finding the workspace's binaries, one
//! process type (spawn, wait for a line or for READY=1, signal, wait for the exit, capture the
//! output) and systemd's side of `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Generous on purpose: a deadline only bounds how long a broken test hangs.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long a process may take to say it is ready.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// The variables systemd hands a service. A test process may itself run under systemd (CI),
/// so a child sees only the ones its test set on purpose.
const SYSTEMD_ENVIRONMENT: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    wait_every(Duration::from_millis(10), timeout, condition)
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; for conditions
/// that cost an HTTP request or a process each.
pub fn wait_every(
    interval: Duration,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// The workspace root, where `packaging/` and `config/` live.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// The path of a binary of this workspace (a daemon, `sluicectl` or a helper program of
/// `tests/src/bin/`), found beside the running program. Tests never build anything: the test
/// command builds every binary before the tests run, and a test that compiled its own would
/// rebuild with different features and race the other tests for the target directory.
///
/// The daemons and `sluicectl` are the suite's one program, `sluice`, run under their names as
/// the package runs them: for those names this is a link named like the program, in
/// `target/<profile>/sluice-links/`, to `target/<profile>/sluice`.
pub fn binary_path(name: &str) -> PathBuf {
    let directory = binary_directory();
    let multi_call = MULTI_CALL_NAMES.contains(&name);
    let path = directory.join(if multi_call { MULTI_CALL_PROGRAM } else { name });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
        path.display()
    );
    if multi_call {
        return multi_call_link(&directory, name);
    }
    path
}

/// The suite's one program, and the names it runs under (daemons/sluice/src/main.rs).
pub const MULTI_CALL_PROGRAM: &str = "sluice";
pub const MULTI_CALL_NAMES: [&str; 5] = [
    "sluice-monitor",
    "sluice-scraper",
    "sluice-ingest-worker",
    "sluice-web",
    "sluicectl",
];

/// `target/<profile>/sluice-links/<name>` → `../sluice`, made when missing. Test processes run
/// in parallel: each makes the link under a name of its own and renames it into place, so a
/// reader sees either no link or a whole one, and every writer writes the same link.
fn multi_call_link(directory: &Path, name: &str) -> PathBuf {
    let links = directory.join("sluice-links");
    let link = links.join(name);
    let target = Path::new("..").join(MULTI_CALL_PROGRAM);
    if std::fs::read_link(&link).is_ok_and(|existing| existing == target) {
        return link;
    }
    std::fs::create_dir_all(&links)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", links.display()));
    static LINKS_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let made = LINKS_MADE.fetch_add(1, Ordering::Relaxed);
    let temporary = links.join(format!(".{name}.{}.{made}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&target, &temporary)
        .and_then(|()| std::fs::rename(&temporary, &link))
        .unwrap_or_else(|error| {
            panic!(
                "cannot link {} to the sluice program: {error}",
                link.display()
            )
        });
    link
}

/// `target/<profile>/`: the directory of the running program, or its parent when the program
/// is a test binary in `target/<profile>/deps/`.
fn binary_directory() -> PathBuf {
    let program = std::env::current_exe().expect("the path of the running program");
    profile_directory(&program)
}

fn profile_directory(program: &Path) -> PathBuf {
    let directory = program
        .parent()
        .expect("the running program lies in a directory");
    if directory.file_name().is_some_and(|name| name == "deps") {
        directory
            .parent()
            .expect("deps/ lies in the profile's directory")
            .to_path_buf()
    } else {
        directory.to_path_buf()
    }
}

/// Where a process's stderr goes: a file, so that a test can read it at any time and print it
/// when it fails.
#[derive(Debug, Clone)]
pub enum LogFile {
    /// A fresh file of the process's own, removed with the process.
    Temporary,
    /// This file, appended to: a restarted daemon's log follows the previous one.
    Append(PathBuf),
}

/// Where a process's stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutTo {
    Discard,
    /// Collected as lines, for [`DaemonProcess::wait_for_line`] and [`DaemonProcess::lines`].
    Lines,
    /// Into the log file with stderr, interleaved as written (a console).
    Log,
}

/// How to start a process.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// A name for messages: "sluice-web", "worker 2".
    pub name: String,
    pub log: LogFile,
    pub stdout: StdoutTo,
    /// Give the process a `NOTIFY_SOCKET` of its own, read for its whole life (as systemd
    /// does: a socket nobody reads fills up and blocks the sender), so that
    /// [`DaemonProcess::wait_for_ready`] can wait for READY=1.
    pub notify: bool,
}

impl SpawnOptions {
    /// Log to a temporary file, stdout discarded, no notify socket.
    pub fn named(name: &str) -> SpawnOptions {
        SpawnOptions {
            name: name.to_owned(),
            log: LogFile::Temporary,
            stdout: StdoutTo::Discard,
            notify: false,
        }
    }

    pub fn log_to(mut self, path: &Path) -> SpawnOptions {
        self.log = LogFile::Append(path.to_path_buf());
        self
    }

    pub fn capture_stdout(mut self) -> SpawnOptions {
        self.stdout = StdoutTo::Lines;
        self
    }

    pub fn stdout_to_log(mut self) -> SpawnOptions {
        self.stdout = StdoutTo::Log;
        self
    }

    pub fn notify(mut self) -> SpawnOptions {
        self.notify = true;
        self
    }
}

/// A real process started by a test or a benchmark: its stderr in a log file, its stdout
/// lines collected if asked for, its notifications if it has a notify socket. SIGKILLed and
/// reaped when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct DaemonProcess {
    name: String,
    child: Child,
    started_at: Instant,
    log_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
    notifications: Option<NotifyListener>,
    // Holds the temporary log file and the notify socket; removed after the process is gone.
    _directory: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts `command`. The systemd variables it does not set itself are removed from its
    /// environment; stdin is /dev/null.
    pub fn spawn(command: &mut Command, options: SpawnOptions) -> anyhow::Result<DaemonProcess> {
        let directory = tempfile::tempdir().context("cannot make a process directory")?;
        let log_path = match &options.log {
            LogFile::Temporary => directory.path().join("stderr"),
            LogFile::Append(path) => path.clone(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open the log {}", log_path.display()))?;
        let set_by_test: Vec<std::ffi::OsString> = command
            .get_envs()
            .map(|(name, _)| name.to_owned())
            .collect();
        for variable in SYSTEMD_ENVIRONMENT {
            if !set_by_test.iter().any(|name| name == variable) {
                command.env_remove(variable);
            }
        }
        let notifications = if options.notify {
            let listener = NotifyListener::bind(directory.path())?;
            command.env("NOTIFY_SOCKET", listener.path());
            Some(listener)
        } else {
            None
        };
        let stdout = match options.stdout {
            StdoutTo::Discard => Stdio::null(),
            StdoutTo::Lines => Stdio::piped(),
            StdoutTo::Log => Stdio::from(log.try_clone().context("cannot share the log file")?),
        };
        let started_at = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} ({command:?})", options.name))?;
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_reader = child.stdout.take().map(|stdout| {
            let sink = Arc::clone(&stdout_lines);
            // Reads until the process closes stdout, so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            })
        });
        Ok(DaemonProcess {
            name: options.name,
            child,
            started_at,
            log_path,
            stdout_lines,
            stdout_reader,
            notifications,
            _directory: directory,
        })
    }

    /// Starts `command` logging at `log_filter` (`SLUICE_LOG`) into `log_path`.
    pub fn start(mut command: Command, log_path: &Path, log_filter: &str) -> DaemonProcess {
        let name = command.get_program().to_string_lossy().into_owned();
        command.env("SLUICE_LOG", log_filter);
        DaemonProcess::spawn(&mut command, SpawnOptions::named(&name).log_to(log_path))
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Starts `command` with its stdout collected and waits until it prints `ready_line`. If
    /// it exits first, the error carries its exit status and stderr.
    pub fn start_until_line(
        mut command: Command,
        ready_line: &str,
    ) -> anyhow::Result<DaemonProcess> {
        let name = command.get_program().to_string_lossy().into_owned();
        let mut process =
            DaemonProcess::spawn(&mut command, SpawnOptions::named(&name).capture_stdout())?;
        let is_ready_line = |line: &str| line.trim() == ready_line;
        wait_until(STARTUP_DEADLINE, || {
            process.has_line(is_ready_line) || !process.is_running()
        });
        let exit = if process.is_running() {
            None
        } else {
            // Gone: joining the reader (inside) makes its last lines count.
            Some(process.wait_for_exit(Duration::ZERO)?)
        };
        if !process.has_line(is_ready_line) {
            bail!(
                "{name} never said {ready_line:?} within {STARTUP_DEADLINE:?} (exit: {exit:?}); \
                 stdout: {:?}; stderr: {}",
                process.lines(),
                process.log()
            );
        }
        Ok(process)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Everything the process wrote to stderr so far (its log, for daemons).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every stdout line so far (with [`SpawnOptions::capture_stdout`]).
    pub fn lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let mut found = None;
        let appeared = wait_until(timeout, || {
            found = self
                .stdout_lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.starts_with(prefix))
                .cloned();
            found.is_some()
        });
        assert!(
            appeared,
            "{}: no line starting with {prefix:?} within {timeout:?}; got {:?}; stderr:\n{}",
            self.name,
            self.lines(),
            self.log()
        );
        found.unwrap()
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
            "{}: no {count} log lines with {parts:?} within {timeout:?}; exit: {:?}; log:\n{}",
            self.name,
            self.child.try_wait(),
            self.log()
        );
    }

    /// Waits for READY=1 on the notify socket (with [`SpawnOptions::notify`]); fails early
    /// when the process exits first.
    pub fn wait_for_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready_after().is_some() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before READY=1: {}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no READY=1 from {} within {timeout:?}: {}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What the process sent to its notify socket (with [`SpawnOptions::notify`]).
    pub fn notifications(&self) -> Option<&NotifyListener> {
        self.notifications.as_ref()
    }

    /// Spawn → READY=1, once it came (with [`SpawnOptions::notify`]).
    pub fn ready_after(&self) -> Option<Duration> {
        let listener = self.notifications.as_ref()?;
        listener
            .all()
            .iter()
            .find(|notification| notification.has("READY=1"))
            .map(|notification| notification.received.duration_since(self.started_at))
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal).with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// Waits up to `timeout` for the process to exit by itself (or after a signal the test
    /// sent); fails with its log when it is still running.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
                // The process is gone: let the reader take the last lines it wrote.
                if let Some(reader) = self.stdout_reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not exit within {timeout:?}; stdout {:?}; log:\n{}",
                    self.name,
                    self.child.id(),
                    self.lines(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_for_exit(timeout)
    }

    /// SIGKILL and reap; returns every stdout line the process wrote before it died.
    pub fn kill_hard(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }

    fn has_line(&self, wanted: impl Fn(&str) -> bool) -> bool {
        self.stdout_lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| wanted(line))
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One datagram received on a notify socket.
#[derive(Debug, Clone)]
pub struct Notification {
    pub received: Instant,
    pub lines: Vec<String>,
    /// What the listener's inspection hook saw at the moment of receipt, if it has one.
    pub inspection: Option<String>,
}

impl Notification {
    pub fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|candidate| candidate == line)
    }

    pub fn status(&self) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|line| line.strip_prefix("STATUS="))
    }
}

/// Runs on the reading thread as each datagram arrives.
pub type Inspection = Box<dyn Fn(&[String]) -> Option<String> + Send>;

/// A datagram socket playing systemd's side of `NOTIFY_SOCKET`, read by a background thread
/// that keeps every message with its arrival time.
pub struct NotifyListener {
    path: PathBuf,
    received: Arc<(Mutex<Vec<Notification>>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NotifyListener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NotifyListener")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl NotifyListener {
    /// Binds `notify.socket` in `directory`.
    pub fn bind(directory: &Path) -> anyhow::Result<NotifyListener> {
        NotifyListener::bind_with_inspection(directory, None)
    }

    /// `inspect` runs on the reading thread as each datagram arrives, before anything else
    /// can happen in the test, to capture outside state at that moment.
    pub fn bind_with_inspection(
        directory: &Path,
        inspect: Option<Inspection>,
    ) -> anyhow::Result<NotifyListener> {
        let path = directory.join("notify.socket");
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buffer = vec![0_u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(length) = socket.recv(&mut buffer) else {
                        continue;
                    };
                    let received_at = Instant::now();
                    let lines: Vec<String> = String::from_utf8_lossy(&buffer[..length])
                        .lines()
                        .filter(|line| !line.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let inspection = inspect.as_ref().and_then(|inspect| inspect(&lines));
                    let (messages, arrived) = &*received;
                    messages.lock().unwrap().push(Notification {
                        received: received_at,
                        lines,
                        inspection,
                    });
                    arrived.notify_all();
                }
            })
        };
        Ok(NotifyListener {
            path,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn all(&self) -> Vec<Notification> {
        self.received.0.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.0.lock().unwrap().len()
    }

    /// Waits for the first message at or after index `from` that has `line`; returns its index.
    pub fn wait_for_line(
        &self,
        from: usize,
        line: &str,
        timeout: Duration,
    ) -> anyhow::Result<(usize, Notification)> {
        self.wait_for(from, timeout, |notification| notification.has(line))
            .with_context(|| format!("waiting for {line:?}"))
    }

    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&Notification) -> bool,
    ) -> anyhow::Result<(usize, Notification)> {
        wait_for_arrival(&self.received, from, timeout, matches).map_err(|received| {
            anyhow::anyhow!(
                "not received within {timeout:?}; got {:#?}",
                received.iter().map(|n| &n.lines).collect::<Vec<_>>()
            )
        })
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a command with a deadline and collects its output; kills it and fails when the
/// deadline passes.
pub fn output_within(
    mut command: Command,
    deadline: Duration,
) -> anyhow::Result<std::process::Output> {
    use std::io::Read;
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
    Ok(std::process::Output {
        status,
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// Waits until an item at index `from` or later of `received` matches (a listener thread
/// pushes items and notifies the condition variable); returns its index and a copy, or, after
/// `timeout`, everything received so far for the error message.
pub fn wait_for_arrival<T: Clone>(
    received: &(Mutex<Vec<T>>, Condvar),
    from: usize,
    timeout: Duration,
    matches: impl Fn(&T) -> bool,
) -> Result<(usize, T), Vec<T>> {
    let deadline = Instant::now() + timeout;
    let (items, arrived) = received;
    let mut guard = items.lock().unwrap();
    loop {
        if let Some(index) = (from..guard.len()).find(|&index| matches(&guard[index])) {
            return Ok((index, guard[index].clone()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(guard.clone());
        }
        guard = arrived.wait_timeout(guard, deadline - now).unwrap().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_looked_for_in_the_profile_directory_also_from_a_test_binary() {
        assert_eq!(
            profile_directory(Path::new("/w/target/debug/deps/integration-0123abcd")),
            Path::new("/w/target/debug")
        );
        assert_eq!(
            profile_directory(Path::new("/w/target/release/sluice-bench")),
            Path::new("/w/target/release")
        );
    }

    #[test]
    fn a_process_gives_its_exit_status_stdout_and_stderr() -> anyhow::Result<()> {
        let mut command = Command::new("sh");
        command.args(["-c", "echo ready; echo 'to the log' >&2; exit 3"]);
        let mut process =
            DaemonProcess::spawn(&mut command, SpawnOptions::named("sh").capture_stdout())?;
        let status = process.wait_for_exit(DEADLINE)?;
        assert_eq!(status.code(), Some(3));
        assert_eq!(process.lines(), vec!["ready".to_owned()]);
        assert_eq!(process.log(), "to the log\n");
        Ok(())
    }

    #[test]
    fn a_console_gets_stdout_and_stderr_in_the_order_written() -> anyhow::Result<()> {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two >&2; echo three"]);
        let mut process =
            DaemonProcess::spawn(&mut command, SpawnOptions::named("sh").stdout_to_log())?;
        process.wait_for_exit(DEADLINE)?;
        assert_eq!(process.log(), "one\ntwo\nthree\n");
        Ok(())
    }

    #[test]
    fn waiting_for_the_exit_of_a_running_process_fails_at_the_deadline_with_its_log() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'still here' >&2; exec sleep 60"]);
        let mut process =
            DaemonProcess::spawn(&mut command, SpawnOptions::named("sleeper")).expect("spawn");
        assert!(wait_until(DEADLINE, || process
            .log()
            .contains("still here")));
        let error = process
            .wait_for_exit(Duration::from_millis(50))
            .expect_err("sleep 60 is still running");
        let message = format!("{error:#}");
        assert!(message.contains("sleeper"), "{message}");
        assert!(message.contains("still here"), "{message}");
        assert!(process.is_running());
        process.terminate(DEADLINE).expect("SIGTERM ends sleep");
    }

    // The removal of the variables a test did not set shows only where the test runner itself
    // has them (under systemd); that one set on purpose survives it shows everywhere.
    #[test]
    fn a_child_keeps_the_systemd_variables_its_test_set_and_loses_the_others() -> anyhow::Result<()>
    {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "echo \"${WATCHDOG_USEC:-unset} ${NOTIFY_SOCKET:-unset}\"",
            ])
            .env("WATCHDOG_USEC", "400000");
        let mut process =
            DaemonProcess::spawn(&mut command, SpawnOptions::named("sh").capture_stdout())?;
        process.wait_for_exit(DEADLINE)?;
        assert_eq!(process.lines(), vec!["400000 unset".to_owned()]);
        Ok(())
    }
}
