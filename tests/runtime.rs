//! The service runtime against real processes and a real `NOTIFY_SOCKET`: the `runtime-probe`
//! helper uses `sluice_core::runtime` the way a daemon does, and these tests watch what it
//! tells a datagram socket standing in for systemd, what it does on signals, and what it leaves
//! in the store.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use nix::sys::signal::Signal;
use sluice_core::store::{Durability, JobState, NewJob, Store};
use sluice_tests::process::{
    DaemonProcess, Inspection, NotifyListener, SpawnOptions, wait_for_arrival,
};

/// Generous bound for anything a process should do "soon": tests run on a loaded 2-core box.
const SOON: Duration = Duration::from_secs(20);
/// The watchdog timeout the probe is given; it should ping every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;

struct ProbeSetup<'a> {
    directory: &'a Path,
    notify_socket: Option<&'a Path>,
    watchdog_usec: Option<u64>,
    watchdog_pid: Option<u32>,
    stop_timeout: Duration,
    extra_environment: Vec<(&'static str, String)>,
    journal_stream: JournalStream,
    mount_namespace: Option<MountNamespace>,
}

/// What `JOURNAL_STREAM` tells the probe.
#[derive(Debug, Clone, Copy)]
enum JournalStream {
    Unset,
    /// The device and inode of the probe's stderr, as systemd sets it.
    MatchingStderr,
    /// Some other file's (stderr was redirected after systemd set the variable).
    OtherFile,
}

/// Run the probe in a private mount namespace with a tmpfs on /run, and this directory (with
/// a `socket` in it) bound at /run/systemd/journal if given.
#[derive(Debug, Clone)]
struct MountNamespace {
    journal_directory: Option<PathBuf>,
}

const PRIVATE_RUN_SCRIPT: &str = r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
if [ -n "$1" ]; then mount --bind "$1" /run/systemd/journal; fi
shift
exec "$@""#;

/// The unit-name-like identifier the probe logs under.
const PROBE_IDENTIFIER: &str = "sluice-ingest-worker@1";

fn identity_of(file: &std::fs::File) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

impl<'a> ProbeSetup<'a> {
    fn new(directory: &'a Path, listener: &'a NotifyListener) -> ProbeSetup<'a> {
        ProbeSetup {
            directory,
            notify_socket: Some(listener.path()),
            watchdog_usec: Some(WATCHDOG_USEC),
            watchdog_pid: None,
            stop_timeout: Duration::from_secs(5),
            extra_environment: Vec::new(),
            journal_stream: JournalStream::Unset,
            mount_namespace: None,
        }
    }

    fn start(&self) -> Result<DaemonProcess> {
        let log = self.directory.join("probe.log");
        // Created here, so its identity is known for JOURNAL_STREAM; the probe's stderr is
        // this same file, opened again for appending.
        let stderr = std::fs::File::create(&log)?;
        let stderr_identity = identity_of(&stderr)?;
        drop(stderr);
        let probe_arguments: Vec<std::ffi::OsString> = vec![
            "--database".into(),
            database_path(self.directory).into(),
            "--config".into(),
            config_path(self.directory).into(),
            "--stop-timeout-ms".into(),
            self.stop_timeout.as_millis().to_string().into(),
            "--identifier".into(),
            PROBE_IDENTIFIER.into(),
        ];
        let probe = env!("CARGO_BIN_EXE_runtime-probe");
        let mut command = match &self.mount_namespace {
            None => {
                let mut command = Command::new(probe);
                command.args(&probe_arguments);
                command
            }
            Some(namespace) => {
                // A private mount namespace with an empty /run, so the probe sees our journal
                // socket (or none at all) at journald's fixed path without touching the host's.
                let mut command = Command::new("unshare");
                command
                    .args([
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        PRIVATE_RUN_SCRIPT,
                        "sh",
                    ])
                    .arg(
                        namespace
                            .journal_directory
                            .as_deref()
                            .unwrap_or(Path::new("")),
                    )
                    .arg(probe)
                    .args(&probe_arguments);
                command
            }
        };
        command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .env("SLUICE_LOG", "debug");
        match self.journal_stream {
            JournalStream::Unset => {}
            JournalStream::MatchingStderr => {
                command.env(
                    "JOURNAL_STREAM",
                    format!("{}:{}", stderr_identity.0, stderr_identity.1),
                );
            }
            JournalStream::OtherFile => {
                let other = std::fs::File::create(self.directory.join("other-stream"))?;
                let (device, inode) = identity_of(&other)?;
                command.env("JOURNAL_STREAM", format!("{device}:{inode}"));
            }
        }
        if let Some(socket) = self.notify_socket {
            command.env("NOTIFY_SOCKET", socket);
        }
        if let Some(usec) = self.watchdog_usec {
            command.env("WATCHDOG_USEC", usec.to_string());
        }
        if let Some(pid) = self.watchdog_pid {
            command.env("WATCHDOG_PID", pid.to_string());
        }
        for (name, value) in &self.extra_environment {
            command.env(name, value);
        }
        DaemonProcess::spawn(
            &mut command,
            SpawnOptions::named("runtime-probe").log_to(&log),
        )
        .context("starting runtime-probe")
    }
}

fn database_path(directory: &Path) -> PathBuf {
    directory.join("sluice.db")
}

fn config_path(directory: &Path) -> PathBuf {
    directory.join("probe.conf")
}

fn write_config(directory: &Path, text: &str) -> Result<()> {
    // Write and rename, so the probe never reads half a file.
    let temporary = directory.join("probe.conf.new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, config_path(directory))?;
    Ok(())
}

fn open_store(directory: &Path) -> Result<Store> {
    let options = crate::support::store_options(Durability::Normal);
    Ok(Store::open(&database_path(directory), &options)?)
}

/// A directory, a listener and a started probe whose READY=1 has arrived.
fn started_probe(
    configure: impl FnOnce(&mut ProbeSetup<'_>),
) -> Result<(tempfile::TempDir, NotifyListener, DaemonProcess)> {
    let directory = tempfile::tempdir()?;
    write_config(directory.path(), "label = first\n")?;
    let listener = NotifyListener::bind(directory.path())?;
    let probe = {
        let mut setup = ProbeSetup::new(directory.path(), &listener);
        configure(&mut setup);
        setup.start()?
    };
    listener
        .wait_for_line(0, "READY=1", SOON)
        .with_context(|| probe.log())?;
    Ok((directory, listener, probe))
}

#[test]
fn ready_is_sent_only_after_the_store_is_open() -> Result<()> {
    let directory = tempfile::tempdir()?;
    write_config(directory.path(), "label = first\n")?;
    let database = database_path(directory.path());
    ensure!(!database.exists());
    // At the moment READY=1 arrives, look at the database file: it must already be an SQLite
    // database in WAL mode (file format bytes 18 and 19 are 2), which the store sets up while
    // opening, before its migrations run.
    let inspect_database: Inspection = Box::new(move |lines| {
        lines
            .iter()
            .any(|line| line == "READY=1")
            .then(|| match std::fs::read(&database) {
                Ok(bytes) if bytes.len() >= 20 => format!(
                    "header={:?} read_version={} write_version={}",
                    String::from_utf8_lossy(&bytes[..15]),
                    bytes[18],
                    bytes[19]
                ),
                Ok(bytes) => format!("only {} bytes", bytes.len()),
                Err(error) => format!("unreadable: {error}"),
            })
    });
    let listener = NotifyListener::bind_with_inspection(directory.path(), Some(inspect_database))?;
    let probe = ProbeSetup::new(directory.path(), &listener).start()?;

    let (_, ready) = listener
        .wait_for_line(0, "READY=1", SOON)
        .with_context(|| probe.log())?;
    assert_eq!(
        ready.inspection.as_deref(),
        Some("header=\"SQLite format 3\" read_version=2 write_version=2"),
        "database state when READY=1 arrived"
    );
    assert_eq!(
        ready.status(),
        Some("idle; config first"),
        "READY=1 comes with a STATUS= line"
    );
    // And the schema is complete: the job queue works for a second process right away.
    let mut store = open_store(directory.path())?;
    ensure!(store.schema_version()? >= 1);
    let enqueued = store.enqueue(&NewJob::new("noop", serde_json::json!({})))?;
    let deadline = Instant::now() + SOON;
    while store.get_job(enqueued.id)?.state != JobState::Succeeded {
        ensure!(
            Instant::now() < deadline,
            "the probe never ran the noop job; log:\n{}",
            probe.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn watchdog_pings_arrive_at_about_half_the_timeout() -> Result<()> {
    let (_directory, listener, mut probe) = started_probe(|_| {})?;
    let interval = Duration::from_micros(WATCHDOG_USEC) / 2;

    let mut pings = Vec::new();
    let mut from = 0;
    while pings.len() < 8 {
        let (index, ping) = listener.wait_for_line(from, "WATCHDOG=1", SOON)?;
        pings.push(ping.received);
        from = index + 1;
    }
    // Loose bounds only: at least the pings we waited for, and on average no closer together
    // than a quarter of the timeout (a free-running or busy-looping pinger would be far denser).
    let span = *pings.last().unwrap() - pings[0];
    let average_gap = span / (pings.len() as u32 - 1);
    assert!(
        average_gap >= interval / 2,
        "pings every {average_gap:?} on average, expected about {interval:?}"
    );
    assert!(probe.is_running());
    Ok(())
}

#[test]
fn no_watchdog_pings_when_the_watchdog_is_meant_for_another_process() -> Result<()> {
    // WATCHDOG_PID names PID 1, so sd_watchdog_enabled() says "off" for the probe.
    let (_directory, listener, mut probe) = started_probe(|setup| setup.watchdog_pid = Some(1))?;
    // Give it several would-be intervals; the probe keeps sending nothing but may send STATUS.
    std::thread::sleep(Duration::from_micros(WATCHDOG_USEC) * 4);
    let pings = listener
        .all()
        .iter()
        .filter(|notification| notification.has("WATCHDOG=1"))
        .count();
    assert_eq!(pings, 0);
    assert!(probe.is_running());
    Ok(())
}

#[test]
fn a_hung_loop_stops_the_watchdog_pings() -> Result<()> {
    let (_directory, listener, mut probe) = started_probe(|_| {})?;
    let (index, _) = listener.wait_for_line(0, "WATCHDOG=1", SOON)?;
    listener.wait_for_line(index + 1, "WATCHDOG=1", SOON)?;

    probe.signal(Signal::SIGUSR1)?;
    let (hung_at, _) = listener
        .wait_for(0, SOON, |notification| {
            notification.status() == Some("simulating a hung loop")
        })
        .with_context(|| probe.log())?;
    // Several full watchdog timeouts without a single ping: systemd would have killed it.
    std::thread::sleep(Duration::from_micros(WATCHDOG_USEC) * 4);
    let after: Vec<_> = listener
        .all()
        .into_iter()
        .skip(hung_at + 1)
        .map(|n| n.lines)
        .collect();
    assert!(after.is_empty(), "messages after the loop hung: {after:?}");
    assert!(probe.is_running(), "the probe is hung, not dead");
    Ok(())
}

#[test]
fn sigterm_sends_stopping_and_exits_zero_in_time() -> Result<()> {
    let stop_timeout = Duration::from_secs(3);
    let (_directory, listener, mut probe) =
        started_probe(|setup| setup.stop_timeout = stop_timeout)?;
    let before = listener.count();
    probe.signal(Signal::SIGTERM)?;
    let status = probe.wait_for_exit(stop_timeout + SOON)?;
    assert_eq!(status.code(), Some(0), "log:\n{}", probe.log());
    let (_, stopping) = listener.wait_for_line(before, "STOPPING=1", Duration::ZERO)?;
    assert_eq!(stopping.status(), Some("stopping"));
    Ok(())
}

#[test]
fn sighup_with_a_valid_config_reloads_and_reports_ready_again() -> Result<()> {
    let (directory, listener, mut probe) = started_probe(|_| {})?;
    write_config(directory.path(), "# changed\nlabel = second\n")?;
    let before = listener.count();
    probe.signal(Signal::SIGHUP)?;

    let (reloading_at, reloading) = listener
        .wait_for_line(before, "RELOADING=1", SOON)
        .with_context(|| probe.log())?;
    assert!(
        reloading.lines.iter().any(|line| line
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|value| value.parse::<u64>().is_ok())),
        "RELOADING=1 carries MONOTONIC_USEC: {:?}",
        reloading.lines
    );
    let (ready_at, ready) = listener.wait_for_line(reloading_at + 1, "READY=1", SOON)?;
    assert_eq!(ready.status(), Some("running; configuration reloaded"));
    // The new configuration is in force.
    listener.wait_for(ready_at + 1, SOON, |notification| {
        notification.status() == Some("idle; config second")
    })?;
    assert!(probe.is_running());
    Ok(())
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one_and_says_so() -> Result<()> {
    let (directory, listener, mut probe) = started_probe(|_| {})?;
    write_config(directory.path(), "label = second\ncolour = blue\n")?;
    let before = listener.count();
    probe.signal(Signal::SIGHUP)?;

    let (reloading_at, _) = listener
        .wait_for_line(before, "RELOADING=1", SOON)
        .with_context(|| probe.log())?;
    let (ready_at, ready) = listener.wait_for_line(reloading_at + 1, "READY=1", SOON)?;
    let expected = "running on previous configuration: reload failed: line 2: unknown key `colour`";
    assert_eq!(ready.status(), Some(expected));
    // Later status lines keep the old label and keep showing the failure.
    let (_, later) = listener.wait_for(ready_at + 1, SOON, |notification| {
        notification.status().is_some()
    })?;
    assert_eq!(
        later.status(),
        Some(format!("idle; config first; last error: {expected}").as_str())
    );
    assert!(
        probe.is_running(),
        "an invalid reload must not stop the daemon"
    );

    // The failure is logged once, with the reason.
    let log = probe.log();
    assert_eq!(
        log.matches("reload failed; keeping the previous configuration")
            .count(),
        1,
        "log:\n{log}"
    );
    assert!(log.contains("unknown key `colour`"), "log:\n{log}");

    // A fixed file is picked up by the next reload.
    write_config(directory.path(), "label = third\n")?;
    let before = listener.count();
    probe.signal(Signal::SIGHUP)?;
    let (reloading_at, _) = listener.wait_for_line(before, "RELOADING=1", SOON)?;
    let (_, ready) = listener.wait_for_line(reloading_at + 1, "READY=1", SOON)?;
    assert_eq!(ready.status(), Some("running; configuration reloaded"));
    Ok(())
}

#[test]
fn an_invalid_config_at_start_exits_with_ex_config_and_errno() -> Result<()> {
    let directory = tempfile::tempdir()?;
    write_config(directory.path(), "label =\n")?;
    let listener = NotifyListener::bind(directory.path())?;
    let mut probe = ProbeSetup::new(directory.path(), &listener).start()?;
    let status = probe.wait_for_exit(SOON)?;
    assert_eq!(status.code(), Some(78), "log:\n{}", probe.log());
    let (_, failure) = listener.wait_for_line(0, "ERRNO=22", SOON)?;
    assert_eq!(
        failure.status(),
        Some("invalid configuration: line 1: label is empty")
    );
    assert!(
        !listener
            .all()
            .iter()
            .any(|notification| notification.has("READY=1"))
    );
    Ok(())
}

#[test]
fn sigterm_during_a_long_job_releases_it_and_exits_zero_in_time() -> Result<()> {
    let stop_timeout = Duration::from_millis(1500);
    let directory = tempfile::tempdir()?;
    let mut store = open_store(directory.path())?;
    let job = store
        .enqueue(&NewJob::new(
            "slow",
            serde_json::json!({ "duration_ms": 600_000 }),
        ))?
        .id;
    let attempts_before = store.get_job(job)?.attempts;
    write_config(directory.path(), "label = first\n")?;
    let listener = NotifyListener::bind(directory.path())?;
    let mut probe = ProbeSetup {
        stop_timeout,
        ..ProbeSetup::new(directory.path(), &listener)
    }
    .start()?;

    let working = format!("working on job {job}; config first");
    listener
        .wait_for(0, SOON, |n| n.status() == Some(working.as_str()))
        .with_context(|| probe.log())?;
    assert_eq!(store.get_job(job)?.state, JobState::Running);

    probe.signal(Signal::SIGTERM)?;
    let status = probe.wait_for_exit(stop_timeout + SOON)?;
    assert_eq!(status.code(), Some(0), "log:\n{}", probe.log());
    listener.wait_for(0, Duration::ZERO, |n| {
        n.has("STOPPING=1")
            && n.status() == Some(format!("stopping: finishing or releasing job {job}").as_str())
    })?;
    let after = store.get_job(job)?;
    assert_eq!(after.state, JobState::Queued, "released, back in the queue");
    assert_eq!(
        after.attempts, attempts_before,
        "a release does not use up an attempt"
    );
    assert_eq!(after.lease_expires_at_ms, None, "the lease is gone");
    Ok(())
}

#[test]
fn sigterm_during_a_short_job_lets_it_finish() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let mut store = open_store(directory.path())?;
    let job = store
        .enqueue(&NewJob::new(
            "slow",
            serde_json::json!({ "duration_ms": 1500 }),
        ))?
        .id;
    write_config(directory.path(), "label = first\n")?;
    let listener = NotifyListener::bind(directory.path())?;
    // A stop timeout far longer than the job: the job finishes, it is not cut off.
    let mut probe = ProbeSetup {
        stop_timeout: Duration::from_secs(60),
        ..ProbeSetup::new(directory.path(), &listener)
    }
    .start()?;

    let working = format!("working on job {job}; config first");
    listener
        .wait_for(0, SOON, |n| n.status() == Some(working.as_str()))
        .with_context(|| probe.log())?;
    probe.signal(Signal::SIGTERM)?;
    let status = probe.wait_for_exit(Duration::from_secs(60) + SOON)?;
    assert_eq!(status.code(), Some(0), "log:\n{}", probe.log());
    let after = store.get_job(job)?;
    assert_eq!(after.state, JobState::Succeeded, "log:\n{}", probe.log());
    assert_eq!(
        after.result,
        Some(serde_json::json!({ "finished_by": "runtime-probe" }))
    );
    Ok(())
}

#[test]
fn without_notify_socket_the_probe_runs_and_stops_normally() -> Result<()> {
    let directory = tempfile::tempdir()?;
    write_config(directory.path(), "label = first\n")?;
    let mut store = open_store(directory.path())?;
    let listener = NotifyListener::bind(directory.path())?;
    let mut probe = ProbeSetup {
        notify_socket: None,
        ..ProbeSetup::new(directory.path(), &listener)
    }
    .start()?;
    // It still works: a queued job gets done.
    let job = store
        .enqueue(&NewJob::new("noop", serde_json::json!({})))?
        .id;
    let deadline = Instant::now() + SOON;
    while store.get_job(job)?.state != JobState::Succeeded {
        ensure!(
            Instant::now() < deadline,
            "noop job never ran; log:\n{}",
            probe.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    probe.signal(Signal::SIGTERM)?;
    assert_eq!(probe.wait_for_exit(SOON)?.code(), Some(0));
    assert_eq!(listener.count(), 0, "nothing was sent anywhere");
    Ok(())
}

/// One journal entry: field name to value.
type JournalRecord = BTreeMap<String, String>;

/// Records received on a datagram socket speaking journald's native protocol.
struct JournalListener {
    received: Arc<(Mutex<Vec<JournalRecord>>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JournalListener {
    /// Binds `<directory>/socket`, the name journald's socket has in /run/systemd/journal.
    fn bind(directory: &Path) -> Result<JournalListener> {
        let socket = UnixDatagram::bind(directory.join("socket"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buffer = vec![0_u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(length) = socket.recv(&mut buffer) else {
                        continue;
                    };
                    if length == 0 {
                        // tracing-journald's connection check.
                        continue;
                    }
                    let record = parse_journal_record(&buffer[..length]);
                    let (records, arrived) = &*received;
                    records.lock().unwrap().push(record);
                    arrived.notify_all();
                }
            })
        };
        Ok(JournalListener {
            received,
            stop,
            thread: Some(thread),
        })
    }

    fn wait_for_message(
        &self,
        message: &str,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        wait_for_arrival(&self.received, 0, timeout, |record| {
            record
                .get("MESSAGE")
                .is_some_and(|m| m.starts_with(message))
        })
        .map(|(_, record)| record)
        .map_err(|received| {
            anyhow!("no journal record {message:?} within {timeout:?}; got {received:#?}")
        })
    }
}

impl Drop for JournalListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Parses one datagram of the native protocol: `KEY=value\n`, or for values that may contain
/// newlines `KEY\n` + 64-bit little-endian length + value + `\n`.
fn parse_journal_record(mut bytes: &[u8]) -> BTreeMap<String, String> {
    let mut record = BTreeMap::new();
    while let Some(end_of_name) = bytes.iter().position(|&byte| byte == b'\n') {
        let line = &bytes[..end_of_name];
        if let Some(equals) = line.iter().position(|&byte| byte == b'=') {
            record.insert(
                String::from_utf8_lossy(&line[..equals]).into_owned(),
                String::from_utf8_lossy(&line[equals + 1..]).into_owned(),
            );
            bytes = &bytes[end_of_name + 1..];
        } else {
            let rest = &bytes[end_of_name + 1..];
            let Some(length) = rest
                .get(..8)
                .map(|raw| u64::from_le_bytes(raw.try_into().unwrap()) as usize)
            else {
                break;
            };
            let Some(value) = rest.get(8..8 + length) else {
                break;
            };
            record.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
            bytes = rest.get(8 + length + 1..).unwrap_or_default();
        }
    }
    record
}

/// Whether this process may run the probe in a private mount namespace; prints the skip
/// message and returns false when it may not (and the environment does not insist).
fn mount_namespaces_available() -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let is_root = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0");
    let unshare_works = is_root
        && Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if unshare_works {
        return Ok(true);
    }
    ensure!(
        std::env::var("SLUICE_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "needs root with mount namespaces (unshare --mount) and SLUICE_REQUIRE_ROOT_TESTS=1 is set"
    );
    eprintln!("skipped: needs root (with unshare --mount)");
    Ok(false)
}

/// Runs a probe through start, a noop job and a clean stop; returns its stderr.
fn stderr_of_a_probe_run(configure: impl FnOnce(&mut ProbeSetup<'_>)) -> Result<String> {
    let (directory, _listener, mut probe) = started_probe(configure)?;
    let mut store = open_store(directory.path())?;
    let job = store
        .enqueue(&NewJob::new("noop", serde_json::json!({})))?
        .id;
    let deadline = Instant::now() + SOON;
    while store.get_job(job)?.state != JobState::Succeeded {
        ensure!(
            Instant::now() < deadline,
            "noop job never ran; log:\n{}",
            probe.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    probe.signal(Signal::SIGTERM)?;
    assert_eq!(
        probe.wait_for_exit(SOON)?.code(),
        Some(0),
        "log:\n{}",
        probe.log()
    );
    Ok(probe.log())
}

#[test]
fn logs_go_to_stderr_with_the_level_from_sluice_log() -> Result<()> {
    let debug = stderr_of_a_probe_run(|_| {})?;
    assert!(debug.contains("job claimed"), "{debug}");
    assert!(
        debug.contains("claim details"),
        "SLUICE_LOG=debug shows debug lines:\n{debug}"
    );

    // An empty SLUICE_LOG counts as unset; RUST_LOG is removed too: the default is info.
    let default =
        stderr_of_a_probe_run(|setup| setup.extra_environment.push(("SLUICE_LOG", String::new())))?;
    assert!(default.contains("job claimed"), "{default}");
    assert!(
        !default.contains("claim details"),
        "no debug lines at the default level:\n{default}"
    );

    let warn =
        stderr_of_a_probe_run(|setup| setup.extra_environment.push(("SLUICE_LOG", "warn".into())))?;
    assert!(!warn.contains("job claimed"), "{warn}");
    Ok(())
}

#[test]
fn an_invalid_log_filter_falls_back_to_info_with_a_warning() -> Result<()> {
    let log = stderr_of_a_probe_run(|setup| {
        setup
            .extra_environment
            .push(("SLUICE_LOG", "sluice=[[".into()))
    })?;
    assert!(log.contains("ignoring the invalid log filter"), "{log}");
    assert!(log.contains("job claimed"), "{log}");
    assert!(!log.contains("claim details"), "{log}");
    Ok(())
}

#[test]
fn journal_stream_of_another_file_means_stderr() -> Result<()> {
    let log = stderr_of_a_probe_run(|setup| setup.journal_stream = JournalStream::OtherFile)?;
    assert!(log.contains("job claimed"), "{log}");
    Ok(())
}

#[test]
fn journal_stream_without_a_reachable_journal_falls_back_to_stderr() -> Result<()> {
    if !mount_namespaces_available()? {
        return Ok(());
    }
    let log = stderr_of_a_probe_run(|setup| {
        setup.journal_stream = JournalStream::MatchingStderr;
        setup.mount_namespace = Some(MountNamespace {
            journal_directory: None,
        });
    })?;
    assert!(
        log.contains("the journal socket is unreachable; logging to stderr"),
        "{log}"
    );
    assert!(log.contains("job claimed"), "{log}");
    Ok(())
}

#[test]
fn under_journald_records_carry_identifier_fields_and_syslog_priorities() -> Result<()> {
    if !mount_namespaces_available()? {
        return Ok(());
    }
    let directory = tempfile::tempdir()?;
    ensure!(
        !directory.path().starts_with("/run"),
        "the temp dir must survive the tmpfs on /run"
    );
    let journal_directory = directory.path().join("journal");
    std::fs::create_dir(&journal_directory)?;
    let journal = JournalListener::bind(&journal_directory)?;
    write_config(directory.path(), "label = first\n")?;
    let mut store = open_store(directory.path())?;
    let job = store
        .enqueue(&NewJob::new(
            "slow",
            serde_json::json!({ "duration_ms": 600_000 }),
        ))?
        .id;
    let listener = NotifyListener::bind(directory.path())?;
    let mut probe = ProbeSetup {
        stop_timeout: Duration::from_millis(300),
        journal_stream: JournalStream::MatchingStderr,
        mount_namespace: Some(MountNamespace {
            journal_directory: Some(journal_directory.clone()),
        }),
        ..ProbeSetup::new(directory.path(), &listener)
    }
    .start()?;
    let working = format!("working on job {job}; config first");
    listener
        .wait_for(0, SOON, |n| n.status() == Some(working.as_str()))
        .with_context(|| probe.log())?;
    write_config(directory.path(), "colour = blue\n")?;
    let before = listener.count();
    probe.signal(Signal::SIGHUP)?;
    listener.wait_for_line(before, "READY=1", SOON)?;
    probe.signal(Signal::SIGTERM)?;
    assert_eq!(
        probe.wait_for_exit(SOON)?.code(),
        Some(0),
        "log:\n{}",
        probe.log()
    );

    let job_id = job.to_string();
    let ready = journal.wait_for_message("ready", SOON)?;
    assert_eq!(
        ready.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some(PROBE_IDENTIFIER)
    );
    assert_eq!(
        ready.get("PRIORITY").map(String::as_str),
        Some("6"),
        "info is 6: {ready:?}"
    );
    assert_eq!(
        ready.get("F_LABEL").map(String::as_str),
        Some("first"),
        "{ready:?}"
    );

    let claimed = journal.wait_for_message("job claimed", SOON)?;
    assert_eq!(
        claimed.get("F_JOB_ID"),
        Some(&job_id),
        "span field as F_JOB_ID: {claimed:?}"
    );
    assert_eq!(
        claimed.get("F_KIND").map(String::as_str),
        Some("slow"),
        "{claimed:?}"
    );
    assert_eq!(
        claimed.get("F_ATTEMPT").map(String::as_str),
        Some("1"),
        "{claimed:?}"
    );

    let debug = journal.wait_for_message("claim details", SOON)?;
    assert_eq!(
        debug.get("PRIORITY").map(String::as_str),
        Some("7"),
        "debug is 7: {debug:?}"
    );

    let reload =
        journal.wait_for_message("reload failed; keeping the previous configuration", SOON)?;
    assert_eq!(
        reload.get("PRIORITY").map(String::as_str),
        Some("3"),
        "error is 3: {reload:?}"
    );
    assert!(
        reload
            .get("F_ERROR")
            .is_some_and(|error| error.contains("unknown key `colour`")),
        "{reload:?}"
    );

    let released = journal.wait_for_message("stop deadline reached; releasing the job", SOON)?;
    assert_eq!(
        released.get("PRIORITY").map(String::as_str),
        Some("4"),
        "warn is 4: {released:?}"
    );
    assert_eq!(released.get("F_JOB_ID"), Some(&job_id), "{released:?}");

    // Nothing was written to stderr as text: the journal got it all.
    let stderr = probe.log();
    assert!(!stderr.contains("job claimed"), "{stderr}");
    Ok(())
}
