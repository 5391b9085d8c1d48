//! sluice-monitor as a real process on a private `dbus-daemon`, with a real SQLite store and
//! real watched folders: detection, ignore rules, reconcile at start, restarts and rescans that
//! queue nothing twice, new versions, symlinks, new directories, bursts, kill -9, the single
//! instance rule and bad `Rescan` arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use sluice_core::bus::{self, BusAddress, BusError, MonitorProxy};
use sluice_core::ingest::IngestPayload;
use sluice_core::store::{
    Durability, FileFilter, FileRecord, FileState, INGEST_JOB_KIND, PageRequest, Store,
};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, PrivateBus, binary_path, open_store, wait_until,
};

const QUIET_PERIOD: Duration = Duration::from_millis(200);

/// A monitor set-up: a private bus, a temp directory with the database, the inbox (consume)
/// and an archive folder (index), and the configuration file pointing at them.
struct Setup {
    bus: PrivateBus,
    directory: tempfile::TempDir,
    signals: SignalLog,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_watch_options("", "")
    }

    /// `inbox_options` and `archive_options` are extra keys for the two `[[watch]]` tables.
    fn with_watch_options(inbox_options: &str, archive_options: &str) -> Setup {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        std::fs::create_dir_all(root.join("inbox")).unwrap();
        std::fs::create_dir_all(root.join("archive")).unwrap();
        let config = format!(
            r#"
[store]
path = "{root}/sluice.db"
durability = "normal"
[bus]
address = "{bus}"
[service]
status_interval = "200ms"
stop_timeout = "10s"
[[watch]]
path = "{root}/inbox"
mode = "consume"
quiet_period = "200ms"
{inbox_options}
[[watch]]
path = "{root}/archive"
mode = "index"
quiet_period = "200ms"
{archive_options}
[ingest]
library = "{root}/library"
"#,
            root = root.display(),
            bus = bus.address(),
        );
        std::fs::write(root.join("sluice.toml"), config).unwrap();
        let signals = SignalLog::start(bus.address());
        Setup {
            bus,
            directory,
            signals,
        }
    }

    fn root(&self) -> &Path {
        self.directory.path()
    }

    fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    fn archive(&self) -> PathBuf {
        self.root().join("archive")
    }

    fn monitor_command(&self) -> Command {
        let mut command = Command::new(binary_path("sluice-monitor"));
        command.arg("--config").arg(self.root().join("sluice.toml"));
        command
    }

    /// Starts a monitor and waits until its start reconcile has walked both folders.
    fn start_monitor(&self) -> DaemonProcess {
        let already = self.count_log_lines(&["reconcile walk finished", "reason=\"start\""]);
        let mut monitor = DaemonProcess::start(
            self.monitor_command(),
            &self.root().join("monitor.log"),
            "debug",
        );
        monitor.wait_for_log_lines(
            &["reconcile walk finished", "reason=\"start\""],
            already + 2,
            DEADLINE,
        );
        monitor
    }

    fn count_log_lines(&self, parts: &[&str]) -> usize {
        std::fs::read_to_string(self.root().join("monitor.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .count()
    }

    fn store(&self) -> Store {
        open_store(&self.root().join("sluice.db"), Durability::Normal)
    }

    fn files(&self) -> Vec<FileRecord> {
        let store = self.store();
        let mut files = Vec::new();
        let mut before_id = None;
        loop {
            let page = store
                .list_files(
                    &FileFilter::default(),
                    PageRequest {
                        before_id,
                        limit: 1000,
                    },
                )
                .unwrap();
            files.extend(page.items);
            match page.next_cursor {
                Some(cursor) => before_id = Some(cursor),
                None => break,
            }
        }
        files.sort_by_key(|file| file.id);
        files
    }

    fn recorded_paths(&self) -> BTreeSet<PathBuf> {
        self.files().into_iter().map(|file| file.path).collect()
    }

    /// Every ingest job: (job id, payload).
    fn ingest_jobs(&self) -> Vec<(i64, IngestPayload, Option<String>)> {
        crate::support::all_jobs_of_kind(&self.store(), INGEST_JOB_KIND)
            .into_iter()
            .map(|job| {
                let payload = serde_json::from_value(job.payload).unwrap();
                (job.id, payload, job.unique_key)
            })
            .collect()
    }

    fn wait_for_recorded(&self, path: &Path) -> FileRecord {
        let mut found = None;
        let appeared = wait_until(DEADLINE, || {
            found = self.store().get_file_by_path(path).unwrap();
            found.is_some()
        });
        assert!(appeared, "{} was never recorded", path.display());
        found.unwrap()
    }

    /// A barrier: writes a fresh sentinel file into `folder` and waits for its `FileDetected`.
    /// Files are recorded in the order they became ready, so everything that was ready before
    /// is committed by then.
    fn sentinel(&self, folder: &Path) -> PathBuf {
        let name = format!(
            "sentinel-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let path = folder.join(name);
        write_old_file(&path, b"sentinel");
        self.signals.wait_for_detection(&path);
        path
    }

    /// `Rescan(path)`, the path sent as its bytes with a trailing NUL, as sluicectl sends it.
    fn rescan(&self, path: impl AsRef<Path>) -> Result<u64, BusError> {
        self.rescan_bytes(bus::path_to_bytestring(path.as_ref()))
    }

    /// `Rescan` with `bytes` as the path argument, whatever they are.
    fn rescan_bytes(&self, bytes: Vec<u8>) -> Result<u64, BusError> {
        let address = self.bus.address().to_owned();
        runtime().block_on(async move {
            let connection = bus::connect(&BusAddress::Address(address)).await.unwrap();
            let proxy = MonitorProxy::new(&connection).await.unwrap();
            proxy.rescan(bytes).await
        })
    }

    /// Asks for a rescan of `path` and waits until every queued walk of it has finished and
    /// its results are committed (checked with a sentinel in `folder`).
    fn rescan_and_settle(
        &self,
        monitor: &mut DaemonProcess,
        path: &str,
        walks: usize,
        folder: &Path,
    ) {
        let before =
            self.count_log_lines(&["reconcile walk finished", "reason=\"rescan requested\""]);
        self.rescan(path).expect("rescan");
        monitor.wait_for_log_lines(
            &["reconcile walk finished", "reason=\"rescan requested\""],
            before + walks,
            DEADLINE,
        );
        self.sentinel(folder);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a file (open, write, close) whose mtime is an hour old, so a walk that finds it
/// counts it as complete at once instead of waiting for the quiet period.
fn write_old_file(path: &Path, content: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(content).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// The monitor's signals seen on the bus, from any sender (so a restarted monitor's signals
/// are seen too), collected by a thread: each `FileDetected` with its path as the bytes the
/// bus carried, and the member name of every other `org.sluice.Monitor1` signal (the monitor
/// sends none; this is how a test counts its broadcasts per file).
struct SignalLog {
    detected: Arc<Mutex<Vec<(PathBuf, u64, u64)>>>,
    others: Arc<Mutex<Vec<String>>>,
}

impl SignalLog {
    fn start(address: &str) -> SignalLog {
        let detected = Arc::new(Mutex::new(Vec::new()));
        let others = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_sender, subscribed) = std::sync::mpsc::channel();
        let address = address.to_owned();
        let (detected_sink, others_sink) = (Arc::clone(&detected), Arc::clone(&others));
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let connection = bus::connect(&BusAddress::Address(address)).await.unwrap();
                let rule = zbus::MatchRule::builder()
                    .msg_type(zbus::message::Type::Signal)
                    .interface("org.sluice.Monitor1")
                    .build()
                    .unwrap();
                let mut signals = zbus::MessageStream::for_match_rule(rule, &connection, None)
                    .await
                    .unwrap();
                subscribed_sender.send(()).unwrap();
                // Ends when the private bus goes away at the end of the test.
                while let Some(Ok(message)) = signals.next().await {
                    let member = message.header().member().map(|member| member.to_string());
                    if member.as_deref() == Some("FileDetected") {
                        let (path, file_id, job_id): (Vec<u8>, u64, u64) =
                            message.body().deserialize().unwrap();
                        // Every path the monitor sends ends in exactly one NUL.
                        assert_eq!(
                            path.iter().position(|byte| *byte == 0),
                            Some(path.len() - 1)
                        );
                        let path = bus::bytestring_to_path("path", &path).unwrap();
                        detected_sink.lock().unwrap().push((path, file_id, job_id));
                    } else {
                        others_sink.lock().unwrap().push(member.unwrap_or_default());
                    }
                }
            });
        });
        subscribed
            .recv_timeout(DEADLINE)
            .expect("the signal log subscribed");
        SignalLog { detected, others }
    }

    fn detected(&self) -> Vec<(PathBuf, u64, u64)> {
        self.detected.lock().unwrap().clone()
    }

    fn others(&self) -> Vec<String> {
        self.others.lock().unwrap().clone()
    }

    /// Waits for the `FileDetected` of `path`, compared byte for byte.
    fn wait_for_detection(&self, path: &Path) -> (u64, u64) {
        let mut found = None;
        let appeared = wait_until(DEADLINE, || {
            found = self
                .detected()
                .into_iter()
                .find(|(detected, ..)| detected == path)
                .map(|(_, file_id, job_id)| (file_id, job_id));
            found.is_some()
        });
        assert!(
            appeared,
            "no FileDetected for {}; got {:?}",
            path.display(),
            self.detected()
        );
        found.unwrap()
    }
}

#[test]
fn a_written_file_is_recorded_queued_and_announced() {
    let setup = Setup::new();
    let _monitor = setup.start_monitor();
    let path = setup.inbox().join("report.pdf");
    std::fs::write(&path, b"%PDF-1.4 hello").unwrap();

    let (file_id, job_id) = setup.signals.wait_for_detection(&path);
    let file = setup
        .store()
        .get_file_by_path(&path)
        .unwrap()
        .expect("a row");
    assert_eq!(file.id as u64, file_id);
    assert_eq!(file.job_id, Some(job_id as i64));
    assert_eq!(file.state, FileState::Detected);
    assert_eq!(file.size, 14);
    assert_eq!(file.watch_root, setup.inbox());

    let job = setup.store().get_job(job_id as i64).unwrap();
    assert_eq!(job.kind, INGEST_JOB_KIND);
    let payload: IngestPayload = serde_json::from_value(job.payload).unwrap();
    assert_eq!(payload.path, path);
    assert_eq!(payload.file_id, Some(file.id));
    assert_eq!(payload.watch_root, setup.inbox());
    assert_eq!(payload.mode, sluice_core::config::WatchMode::Consume);
    // The one FileDetected is the job's announcement (issue 17, finding 4: the monitor also
    // sent a JobQueued that said the same); a sentinel after it flushes anything later.
    setup.sentinel(&setup.inbox());
    let announced = setup.signals.detected();
    assert_eq!(
        announced
            .iter()
            .filter(|(detected, ..)| *detected == path)
            .count(),
        1,
        "{announced:?}"
    );
    assert_eq!(setup.signals.others(), Vec::<String>::new());

    // The index folder records its mode in the payload too.
    let indexed = setup.archive().join("notes.txt");
    std::fs::write(&indexed, b"notes").unwrap();
    let (_, job_id) = setup.signals.wait_for_detection(&indexed);
    let job = setup.store().get_job(job_id as i64).unwrap();
    let payload: IngestPayload = serde_json::from_value(job.payload).unwrap();
    assert_eq!(payload.mode, sluice_core::config::WatchMode::Index);
}

#[test]
fn partial_hidden_and_ignored_files_are_not_recorded() {
    let setup = Setup::with_watch_options(r#"ignore = ["*.tmp", "cache/**"]"#, "");
    let mut monitor = setup.start_monitor();
    let inbox = setup.inbox();
    std::fs::create_dir_all(inbox.join(".git/objects")).unwrap();
    std::fs::create_dir_all(inbox.join("cache/deep")).unwrap();
    std::fs::create_dir_all(inbox.join("sub")).unwrap();
    for ignored in [
        "download.bin.part",
        ".hidden",
        ".git/objects/abc",
        "scratch.tmp",
        "cache/deep/blob",
        "sub/.also-hidden",
    ] {
        std::fs::write(inbox.join(ignored), b"ignored").unwrap();
    }
    // A .part renamed to its final name is what a finished download looks like.
    std::fs::write(inbox.join("model.bin.part"), b"weights").unwrap();
    std::fs::rename(inbox.join("model.bin.part"), inbox.join("model.bin")).unwrap();
    setup.signals.wait_for_detection(&inbox.join("model.bin"));

    let sentinel = setup.sentinel(&inbox);
    setup.rescan_and_settle(&mut monitor, "", 2, &inbox);
    let recorded = setup.recorded_paths();
    assert!(recorded.contains(&inbox.join("model.bin")));
    assert!(recorded.contains(&sentinel));
    assert!(
        recorded.iter().all(|path| path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("sentinel")
            || path.ends_with("model.bin")),
        "ignored files were recorded: {recorded:?}"
    );
}

#[test]
fn files_present_before_start_are_found_and_a_restart_or_rescan_queues_nothing_twice() {
    let setup = Setup::new();
    let inbox = setup.inbox();
    std::fs::create_dir_all(inbox.join("sub/deeper")).unwrap();
    let mut expected = BTreeSet::new();
    for name in ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt"] {
        write_old_file(&inbox.join(name), name.as_bytes());
        expected.insert(inbox.join(name));
    }
    // A recent file is found too, once it has been quiet for the quiet period.
    std::fs::write(inbox.join("fresh.txt"), b"fresh").unwrap();
    expected.insert(inbox.join("fresh.txt"));
    let archived = setup.archive().join("kept.txt");
    write_old_file(&archived, b"kept");
    expected.insert(archived.clone());

    let mut monitor = setup.start_monitor();
    assert!(
        wait_until(DEADLINE, || setup.recorded_paths() == expected),
        "recorded {:?}",
        setup.recorded_paths()
    );
    let jobs_before = setup.ingest_jobs();
    assert_eq!(jobs_before.len(), expected.len());
    // The signals are sent after the commit and travel separately: wait for all of them before
    // counting, or a late one would be taken for a second detection.
    assert!(wait_until(DEADLINE, || setup.signals.detected().len()
        >= expected.len()));
    let detected_before = setup.signals.detected().len();

    monitor.signal(Signal::SIGTERM).expect("signal the daemon");
    assert_eq!(
        monitor
            .wait_for_exit(DEADLINE)
            .unwrap_or_else(|error| panic!("{error:#}"))
            .code(),
        Some(0)
    );
    assert!(monitor.log().contains("monitor stopped"));

    let mut monitor = setup.start_monitor();
    setup.sentinel(&inbox);
    setup.rescan_and_settle(&mut monitor, "", 2, &inbox);
    setup.rescan_and_settle(&mut monitor, inbox.join("sub").to_str().unwrap(), 1, &inbox);
    // Quiet longer than the quiet period, so a file the walks left pending would be recorded.
    std::thread::sleep(QUIET_PERIOD * 3);
    setup.sentinel(&inbox);

    let jobs_after = setup.ingest_jobs();
    let sentinels = jobs_after
        .iter()
        .filter(|(_, payload, _)| {
            payload
                .path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sentinel")
        })
        .count();
    assert_eq!(sentinels, 4);
    assert_eq!(
        jobs_after.len(),
        jobs_before.len() + sentinels,
        "{jobs_after:?}"
    );
    assert_eq!(&jobs_after[..jobs_before.len()], &jobs_before[..]);
    assert_eq!(setup.signals.detected().len(), detected_before + sentinels);
}

#[test]
fn a_modified_file_gets_a_new_job_and_a_deleted_one_is_gone() {
    let setup = Setup::new();
    let _monitor = setup.start_monitor();
    let path = setup.archive().join("draft.txt");
    std::fs::write(&path, b"first").unwrap();
    let (file_id, first_job) = setup.signals.wait_for_detection(&path);

    std::fs::write(&path, b"second, longer version").unwrap();
    let appeared = wait_until(DEADLINE, || {
        setup
            .signals
            .detected()
            .iter()
            .filter(|(detected, ..)| *detected == path)
            .count()
            == 2
    });
    assert!(appeared, "{:?}", setup.signals.detected());
    let (_, second_file_id, second_job) = setup
        .signals
        .detected()
        .into_iter()
        .rfind(|(detected, ..)| *detected == path)
        .unwrap();
    assert_eq!(second_file_id, file_id, "one row per path");
    assert_ne!(second_job, first_job);
    let file = setup.store().get_file(file_id as i64).unwrap();
    assert_eq!(file.job_id, Some(second_job as i64));
    assert_eq!(file.size, 22);
    assert_eq!(setup.ingest_jobs().len(), 2);

    std::fs::remove_file(&path).unwrap();
    assert!(wait_until(DEADLINE, || setup
        .store()
        .get_file(file_id as i64)
        .unwrap()
        .state
        == FileState::Gone));
}

#[test]
fn symlinks_are_neither_recorded_nor_followed() {
    let setup = Setup::new();
    let outside = setup.root().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    write_old_file(&outside.join("secret"), b"secret");
    write_old_file(&outside.join("dir/inner"), b"inner");
    let inbox = setup.inbox();
    // One link exists before the start (the start walk must skip it), one arrives later.
    std::os::unix::fs::symlink(outside.join("dir"), inbox.join("linked-dir")).unwrap();
    let mut monitor = setup.start_monitor();
    std::os::unix::fs::symlink(outside.join("secret"), inbox.join("linked-file")).unwrap();
    std::fs::create_dir_all(inbox.join("real")).unwrap();
    std::os::unix::fs::symlink(&outside, inbox.join("real/linked-again")).unwrap();

    let sentinel = setup.sentinel(&inbox);
    setup.rescan_and_settle(&mut monitor, "", 2, &inbox);
    // Writing through the outside directory must not reach the monitor either.
    write_old_file(&outside.join("dir/later"), b"later");
    let last = setup.sentinel(&inbox);
    let recorded = setup.recorded_paths();
    assert!(recorded.contains(&sentinel) && recorded.contains(&last));
    assert!(
        recorded.iter().all(|path| path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("sentinel")),
        "symlinked files were recorded: {recorded:?}"
    );
}

/// Issue 12, finding 7: a file whose name is not UTF-8 was warned about on every walk and
/// event, forever. It is skipped with one warning that names it and says what to do, however
/// many walks and events see it again; renamed, it is recorded like any other file.
#[test]
fn a_name_that_is_not_utf8_is_reported_once_and_picked_up_once_renamed() {
    use std::os::unix::ffi::OsStrExt;
    let setup = Setup::new();
    let inbox = setup.inbox();
    let bad = inbox.join(std::ffi::OsStr::from_bytes(b"report-\xff.txt"));
    write_old_file(&bad, b"before start");
    let mut monitor = setup.start_monitor();
    let warning = ["is not valid UTF-8", "report-"];
    assert_eq!(setup.count_log_lines(&warning), 1, "{}", monitor.log());
    // Seen again by an event (written anew) and by two rescans.
    std::fs::write(&bad, b"written again").unwrap();
    setup.sentinel(&inbox);
    setup.rescan_and_settle(&mut monitor, "", 2, &inbox);
    setup.rescan_and_settle(&mut monitor, "", 2, &inbox);
    assert_eq!(
        setup.count_log_lines(&warning),
        1,
        "the name was reported more than once: {}",
        monitor.log()
    );
    assert!(
        setup
            .recorded_paths()
            .iter()
            .all(|path| path.to_str().is_some()),
        "nothing with the bad name was recorded"
    );
    let renamed = inbox.join("report-renamed.txt");
    std::fs::rename(&bad, &renamed).unwrap();
    setup.wait_for_recorded(&renamed);
}

#[test]
fn directories_created_or_moved_in_are_walked() {
    let setup = Setup::new();
    let _monitor = setup.start_monitor();
    let inbox = setup.inbox();
    let mut expected = BTreeSet::new();

    // mkdir -p and files right away, racing the watch on the new directories.
    let deep = inbox.join("new/a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    for index in 0..20 {
        let path = deep.join(format!("file-{index}"));
        std::fs::write(&path, b"x").unwrap();
        expected.insert(path);
    }
    // A directory with files already inside, renamed in from the same file system.
    let staged = setup.root().join("staged-tree");
    std::fs::create_dir_all(staged.join("inner")).unwrap();
    for name in ["one", "two", "inner/three"] {
        write_old_file(&staged.join(name), name.as_bytes());
        expected.insert(inbox.join("moved").join(name));
    }
    std::fs::rename(&staged, inbox.join("moved")).unwrap();

    assert!(
        wait_until(DEADLINE, || setup.recorded_paths() == expected),
        "missing {:?}",
        expected
            .difference(&setup.recorded_paths())
            .collect::<Vec<_>>()
    );
    assert_eq!(setup.ingest_jobs().len(), expected.len());
}

#[test]
fn a_burst_of_3000_files_is_recorded_completely() {
    let setup = Setup::new();
    let _monitor = setup.start_monitor();
    let inbox = setup.inbox();
    let expected: BTreeSet<PathBuf> = (0..3000)
        .map(|index| inbox.join(format!("burst-{index:05}.bin")))
        .collect();
    for path in &expected {
        std::fs::write(
            path,
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
    }
    assert!(
        wait_until(DEADLINE, || setup.files().len() >= expected.len()),
        "{} of {} recorded",
        setup.files().len(),
        expected.len()
    );
    assert_eq!(setup.recorded_paths(), expected);
    let jobs = setup.ingest_jobs();
    assert_eq!(jobs.len(), expected.len());
    let keys: BTreeSet<_> = jobs.iter().map(|(_, _, key)| key.clone()).collect();
    assert_eq!(keys.len(), expected.len());
    assert!(
        wait_until(DEADLINE, || setup.signals.detected().len()
            == expected.len()),
        "{} FileDetected signals",
        setup.signals.detected().len()
    );
}

#[test]
fn a_second_monitor_is_refused_and_the_first_keeps_working() {
    let setup = Setup::new();
    let _first = setup.start_monitor();
    let mut second = DaemonProcess::start(
        setup.monitor_command(),
        &setup.root().join("second.log"),
        "info",
    );
    let status = second
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(69), "log: {}", second.log());
    assert!(
        second
            .log()
            .contains("org.sluice.Monitor1 is already owned by another process"),
        "{}",
        second.log()
    );
    assert!(
        !second.log().contains("reconcile"),
        "the refused monitor walked: {}",
        second.log()
    );
    let path = setup.inbox().join("still-watched.txt");
    std::fs::write(&path, b"x").unwrap();
    setup.signals.wait_for_detection(&path);
}

#[test]
fn rescan_refuses_paths_outside_the_watched_folders_and_changes_nothing() {
    let setup = Setup::new();
    let mut monitor = setup.start_monitor();
    let inbox = setup.inbox();
    setup.sentinel(&inbox);
    let walks_before = setup.count_log_lines(&["reconcile walk finished"]);
    let files_before = setup.files();

    let outside_sibling = format!("{}-other", inbox.display());
    let traversal = format!("{}/../archive", inbox.display());
    for bad in [
        "/etc",
        "relative/inbox",
        outside_sibling.as_str(),
        traversal.as_str(),
        setup.root().to_str().unwrap(),
    ] {
        match setup.rescan(bad) {
            Err(BusError::InvalidArgument(message)) => {
                assert!(!message.is_empty(), "{bad}");
            }
            other => panic!("Rescan({bad:?}) answered {other:?}"),
        }
    }
    // Nothing was walked, nothing changed.
    assert_eq!(
        setup.count_log_lines(&["reconcile walk finished"]),
        walks_before
    );
    assert_eq!(setup.files(), files_before);

    // Empty means every watched folder; a folder inside one means that one.
    assert_eq!(setup.rescan("").unwrap(), 2);
    std::fs::create_dir_all(inbox.join("sub")).unwrap();
    assert_eq!(
        setup.rescan(inbox.join("sub").to_str().unwrap()).unwrap(),
        1
    );
    monitor.wait_for_log_lines(
        &["reconcile walk finished", "reason=\"rescan requested\""],
        3,
        DEADLINE,
    );
}

/// Issue 17, finding 6: `Rescan` takes the path as bytes, so the real monitor can be asked to
/// walk a folder whose name is not UTF-8 (byte 0xff, a Latin-1 é), and walks exactly that
/// folder: its two files are found (and skipped, as the store records UTF-8 names only; see
/// the test above). The same name with U+FFFD where the bytes were, as a string API would
/// have had to send it, names no folder and finds nothing. Neither walk is a store error.
#[test]
fn rescan_walks_a_folder_whose_name_is_not_utf8_byte_exact() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let setup = Setup::new();
    let mut monitor = setup.start_monitor();
    let inbox = setup.inbox();
    let folder = inbox.join(OsStr::from_bytes(b"caf\xe9-\xff"));
    let staged = setup.root().join("staged-latin1");
    std::fs::create_dir_all(&staged).unwrap();
    write_old_file(&staged.join("one.txt"), b"one");
    write_old_file(&staged.join("two.txt"), b"two");
    std::fs::rename(&staged, &folder).unwrap();
    setup.sentinel(&inbox);

    let walked = |files: &str| {
        setup.count_log_lines(&[
            "reconcile walk finished",
            "reason=\"rescan requested\"",
            files,
        ])
    };
    let exact_before = walked("skipped_non_utf8=2");
    assert_eq!(setup.rescan(&folder).unwrap(), 1);
    monitor.wait_for_log_lines(
        &["reconcile walk finished", "reason=\"rescan requested\""],
        1,
        DEADLINE,
    );
    assert_eq!(
        walked("skipped_non_utf8=2"),
        exact_before + 1,
        "{}",
        monitor.log()
    );

    let mangled = inbox.join("caf\u{fffd}-\u{fffd}");
    assert_eq!(setup.rescan(&mangled).unwrap(), 1);
    monitor.wait_for_log_lines(
        &["reconcile walk finished", "reason=\"rescan requested\""],
        2,
        DEADLINE,
    );
    assert_eq!(
        walked("directories=0 errors=0 skipped_non_utf8=0"),
        1,
        "{}",
        monitor.log()
    );
    // Walking a folder whose name the store cannot hold is no store error (it tried to mark
    // files under it as gone, and the store refused the prefix).
    assert_eq!(
        setup.count_log_lines(&["store error"]),
        0,
        "{}",
        monitor.log()
    );
    // Nothing was recorded from either walk.
    assert!(
        setup
            .recorded_paths()
            .iter()
            .all(|path| !path.starts_with(&folder)),
        "{:?}",
        setup.recorded_paths()
    );
}

#[test]
fn kill_9_during_a_burst_then_restart_records_every_file_exactly_once() {
    let setup = Setup::new();
    let mut monitor = setup.start_monitor();
    let inbox = setup.inbox();
    let total = 2000;
    let writer = {
        let inbox = inbox.clone();
        std::thread::spawn(move || {
            for index in 0..total {
                std::fs::write(inbox.join(format!("k-{index:05}")), index.to_string()).unwrap();
            }
        })
    };
    // Kill once part of the burst is committed, while files keep arriving.
    assert!(wait_until(DEADLINE, || setup.files().len() >= 200));
    monitor.kill_hard();
    writer.join().unwrap();
    let recorded_at_kill = setup.files().len();

    let _monitor = setup.start_monitor();
    assert!(
        wait_until(DEADLINE, || setup.files().len() >= total),
        "{} of {total} recorded (had {recorded_at_kill} at the kill)",
        setup.files().len()
    );
    setup.sentinel(&inbox);
    let files = setup.files();
    let jobs = setup.ingest_jobs();
    let files_without_sentinel: Vec<_> = files
        .iter()
        .filter(|file| {
            file.path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("k-")
        })
        .collect();
    assert_eq!(files_without_sentinel.len(), total);
    // Exactly one job per file, and it is the file's job.
    let mut jobs_per_file: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (job_id, payload, _) in &jobs {
        jobs_per_file
            .entry(payload.file_id.expect("the monitor names the file row"))
            .or_default()
            .push(*job_id);
    }
    for file in &files {
        assert_eq!(
            jobs_per_file.get(&file.id),
            Some(&vec![file.job_id.unwrap()]),
            "{}",
            file.path.display()
        );
    }
    assert_eq!(jobs.len(), files.len());
}

#[test]
fn a_polled_folder_finds_files_once_they_are_quiet() {
    let setup = Setup::with_watch_options("", "watcher = \"poll\"\npoll_interval = \"100ms\"");
    let _monitor = setup.start_monitor();
    let address = setup.bus.address().to_owned();
    let polling: Vec<Vec<u8>> = runtime().block_on(async move {
        let connection = bus::connect(&BusAddress::Address(address)).await.unwrap();
        MonitorProxy::new(&connection)
            .await
            .unwrap()
            .polling_paths()
            .await
            .unwrap()
    });
    assert_eq!(polling, vec![bus::path_to_bytestring(&setup.archive())]);

    let path = setup.archive().join("polled.txt");
    std::fs::write(&path, b"polled").unwrap();
    let file = setup.wait_for_recorded(&path);
    assert_eq!(file.size, 6);
    std::fs::write(setup.archive().join("ignored.part"), b"x").unwrap();
    let sentinel = setup.sentinel(&setup.archive());
    assert!(
        !setup
            .recorded_paths()
            .contains(&setup.archive().join("ignored.part"))
    );
    assert!(setup.recorded_paths().contains(&sentinel));
}

#[test]
fn a_monitor_with_every_duration_and_number_at_its_maximum_starts_and_stops_cleanly() {
    // Before the configuration bounded them, a huge status_interval or reconcile_interval
    // panicked the monitor at start and a huge stop_timeout on SIGTERM.
    let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
    let directory = tempfile::tempdir().expect("temp dir");
    let root = directory.path();
    std::fs::create_dir_all(root.join("inbox")).unwrap();
    let mut tables: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (key, range) in sluice_core::config::DURATION_KEYS {
        let (table, name) = key.split_once('.').unwrap();
        tables
            .entry(table)
            .or_default()
            .push(format!("{name} = \"{}ms\"", range.maximum.as_millis()));
    }
    for (key, range) in sluice_core::config::NUMBER_KEYS {
        let (table, name) = key.split_once('.').unwrap();
        tables
            .entry(table)
            .or_default()
            .push(format!("{name} = {}", range.end()));
    }
    let root_text = root.display();
    tables.entry("store").or_default().extend([
        format!("path = \"{root_text}/sluice.db\""),
        "durability = \"normal\"".to_owned(),
    ]);
    tables
        .entry("bus")
        .or_default()
        .push(format!("address = \"{}\"", bus.address()));
    tables
        .entry("ingest")
        .or_default()
        .push(format!("library = \"{root_text}/library\""));
    let mut text = String::new();
    for (table, lines) in &tables {
        text.push_str(&format!("[{table}]\n{}\n\n", lines.join("\n")));
    }
    text.push_str(&format!(
        "[[watch]]\npath = \"{root_text}/inbox\"\nmode = \"consume\"\n"
    ));
    let config_path = root.join("sluice.toml");
    std::fs::write(&config_path, &text).unwrap();
    sluice_core::config::Config::load(&config_path)
        .unwrap_or_else(|error| panic!("the maxima must be accepted: {error}\n{text}"));

    let mut command = Command::new(binary_path("sluice-monitor"));
    command.arg("--config").arg(&config_path);
    let mut monitor = DaemonProcess::start(command, &root.join("monitor.log"), "info");
    monitor.wait_for_log_lines(
        &["reconcile walk finished", "reason=\"start\""],
        1,
        DEADLINE,
    );
    monitor.signal(Signal::SIGTERM).unwrap();
    let status = monitor
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(0), "log: {}", monitor.log());
    assert!(!monitor.log().contains("panicked"), "{}", monitor.log());
}
