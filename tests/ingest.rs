//! The ingest worker as a real process (`sluice-ingest-worker --instance N`) on a private
//! `dbus-daemon` with a temporary database, inbox, index folder and library: noop and ingest
//! jobs, deduplication, symlink refusal, bad payloads, kill -9 and SIGTERM in the middle of a
//! job (and a killed worker's job taken over at once, by a peer or by its restarted self; a
//! bus restart under load), cancellation, and the signals a subscriber sees.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sluice_core::bus::{self, BusAddress, BusError, ingest_proxy};
use sluice_core::config::WatchMode;
use sluice_core::store::{
    DetectedFile, DocumentFilter, Durability, FileState, Job, JobError, JobFilter, JobState,
    NewJob, PageRequest, Store, StoreOptions,
};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, PrivateBus, STARTUP_DEADLINE,
    assert_taken_over_before_the_lease_expired, binary_path, files_under, open_store,
    retried_because, temp_dir, transition, wait_until,
};

/// A private bus, a configuration and the folders one or more workers share.
pub(crate) struct Suite {
    bus: PrivateBus,
    pub(crate) root: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) inbox: PathBuf,
    pub(crate) catalogue: PathBuf,
    library: PathBuf,
    pub(crate) store: Store,
    _directory: tempfile::TempDir,
}

impl Suite {
    /// The first page of documents in the catalogue.
    pub(crate) fn documents(&self) -> Vec<sluice_core::store::Document> {
        self.store
            .list_documents(&DocumentFilter::default(), page())
            .unwrap()
            .items
    }

    /// `stop_timeout` is how long a worker may finish its job after SIGTERM.
    fn new(stop_timeout: &str) -> Suite {
        Suite::with_lease(stop_timeout, "2s", "400ms")
    }

    /// With a lease and heartbeat interval of the test's choosing.
    fn with_lease(stop_timeout: &str, lease: &str, heartbeat_interval: &str) -> Suite {
        Suite::with_settings(stop_timeout, lease, heartbeat_interval, "", "")
    }

    /// With `ingest_settings` added to `[ingest]` (e.g. `job_timeout = "2s"`) and `tables`
    /// (e.g. `[[processor]]` entries) added at the end of the file.
    pub(crate) fn with_settings(
        stop_timeout: &str,
        lease: &str,
        heartbeat_interval: &str,
        ingest_settings: &str,
        tables: &str,
    ) -> Suite {
        let (directory, root) = temp_dir();
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let inbox = root.join("inbox");
        let catalogue = root.join("catalogue");
        let library = root.join("library");
        for folder in [&inbox, &catalogue, &library, &root.join("staging")] {
            std::fs::create_dir_all(folder).unwrap();
        }
        let database = root.join("sluice.db");
        let config_path = root.join("sluice.toml");
        std::fs::write(
            &config_path,
            format!(
                r#"
[store]
path = "{database}"
durability = "normal"
busy_timeout = "20s"

[bus]
address = "{bus}"

[jobs]
lease = "{lease}"
heartbeat_interval = "{heartbeat_interval}"
max_attempts = 3
retry_backoff_base = "100ms"
retry_backoff_max = "1s"
claim_batch = 8

[service]
stop_timeout = "{stop_timeout}"

[ingest]
library = "{library}"
text_max_bytes = "1 KiB"
{ingest_settings}

[[watch]]
path = "{inbox}"
mode = "consume"

[[watch]]
path = "{catalogue}"
mode = "index"

[scraper]
inbox = "{inbox}"
staging = "{staging}"

{tables}
"#,
                database = database.display(),
                bus = bus.address(),
                library = library.display(),
                inbox = inbox.display(),
                catalogue = catalogue.display(),
                staging = root.join("staging").display(),
            ),
        )
        .unwrap();
        let store = open_store(&database, Durability::Normal);
        Suite {
            bus,
            root,
            config_path,
            inbox,
            catalogue,
            library,
            store,
            _directory: directory,
        }
    }

    /// Replaces the bus daemon by a new one (the old one is killed: every connection to it
    /// closes, and a new bus has a new GUID); workers started from now on use the new one.
    fn restart_bus(&mut self) {
        let old_address = self.bus.address().to_owned();
        self.bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        let config = config.replace(&old_address, self.bus.address());
        std::fs::write(&self.config_path, config).unwrap();
    }

    /// Writes `content` into the inbox as `name` and queues its ingest job (consume mode);
    /// returns the job id, the inbox path and the path it is filed under in the library.
    pub(crate) fn enqueue_file(&mut self, name: &str, content: &[u8]) -> (i64, PathBuf, PathBuf) {
        let source = self.inbox.join(name);
        std::fs::write(&source, content).unwrap();
        let filed = library_path(&self.library, &blake3::hash(content).to_hex());
        let payload = self.ingest_payload(&source, &self.inbox, "consume");
        (self.enqueue("ingest", payload), source, filed)
    }

    /// Starts worker `instance` and waits until it says it is ready (READY=1 is sent then).
    pub(crate) fn start_worker(&self, instance: &str) -> DaemonProcess {
        self.start_worker_with(instance, &[])
    }

    /// Starts a worker with extra environment variables (the crash tests' pause).
    pub(crate) fn start_worker_with(
        &self,
        instance: &str,
        environment: &[(&str, &str)],
    ) -> DaemonProcess {
        let mut command = Command::new(binary_path("sluice-ingest-worker"));
        command
            .args(["--instance", instance])
            .env("SLUICE_CONFIG", &self.config_path)
            .envs(environment.iter().copied());
        let log = self.root.join(format!("worker-{instance}.log"));
        let mut worker = DaemonProcess::start(command, &log, "info");
        worker.wait_for_log_lines(&["ready"], 1, STARTUP_DEADLINE);
        worker
    }

    pub(crate) fn enqueue(&mut self, kind: &str, payload: Value) -> i64 {
        self.store
            .enqueue(&NewJob::new(kind, payload).with_max_attempts(3))
            .expect("enqueue")
            .id
    }

    pub(crate) fn ingest_payload(&self, path: &Path, watch_root: &Path, mode: &str) -> Value {
        json!({"path": path, "watch_root": watch_root, "mode": mode})
    }

    pub(crate) fn job(&self, id: i64) -> Job {
        self.store.get_job(id).expect("job")
    }

    /// Waits until job `id` reaches a terminal state and returns it.
    pub(crate) fn wait_for_end(&self, id: i64, worker: &DaemonProcess) -> Job {
        let ended = wait_until(DEADLINE, || self.job(id).state.is_terminal());
        assert!(
            ended,
            "job {id} never ended: {:?}\nlog:\n{}",
            self.job(id),
            worker.log()
        );
        self.job(id)
    }

    pub(crate) fn wait_for(
        &self,
        what: &str,
        worker: &DaemonProcess,
        condition: impl FnMut() -> bool,
    ) {
        assert!(
            wait_until(DEADLINE, condition),
            "{what}; log:\n{}",
            worker.log()
        );
    }
}

fn page() -> PageRequest {
    PageRequest {
        before_id: None,
        limit: 100,
    }
}

/// SHA-256 by coreutils, an implementation independent of the worker's.
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

fn library_path(library: &Path, blake3: &str) -> PathBuf {
    library.join(&blake3[0..2]).join(&blake3[2..4]).join(blake3)
}

/// A PNG signature and IHDR chunk of a 7×5 image, padded: enough for magic-byte detection.
pub(crate) fn png_bytes() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&7u32.to_be_bytes());
    png.extend_from_slice(&5u32.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0, 0x1a, 0x2b, 0x3c, 0x4d]);
    png.extend(std::iter::repeat_n(0xa5, 3000));
    png
}

#[test]
fn noop_jobs_succeed_with_their_index_and_run_time() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let before = now_micros();
    let ids: Vec<i64> = (0..40)
        .map(|i| suite.enqueue("noop", json!({"i": i})))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let job = suite.wait_for_end(*id, &worker);
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let result = job.result.expect("result");
        assert_eq!(result["i"], json!(i));
        let ran_at = result["t"].as_u64().expect("t in µs");
        assert!(ran_at >= before && ran_at <= now_micros(), "{result}");
        assert_eq!(job.lease_owner.as_deref(), Some("sluice-ingest-worker@1"));
    }
}

#[test]
fn a_consumed_file_is_hashed_typed_and_filed_and_a_second_copy_is_a_duplicate() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let png = png_bytes();
    let source = suite.inbox.join("sub").join("picture.png");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, &png).unwrap();
    let expected_sha256 = sha256sum(&source);
    let expected_blake3 = blake3::hash(&png).to_hex().to_string();

    let payload = suite.ingest_payload(&source, &suite.inbox, "consume");
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    let result = job.result.unwrap();
    assert_eq!(result["duplicate"], false);
    let document = suite
        .store
        .get_document(result["document_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(document.blake3, expected_blake3);
    assert_eq!(document.sha256, expected_sha256);
    assert_eq!(document.size, png.len() as u64);
    assert_eq!(document.mime, "image/png");
    assert_eq!(document.original_name, "picture.png");
    assert_eq!(
        (
            document.metadata["width"].clone(),
            document.metadata["height"].clone()
        ),
        (json!(7), json!(5))
    );
    let filed = library_path(&suite.library, &expected_blake3);
    assert_eq!(document.library_path.as_deref(), Some(filed.as_path()));
    assert_eq!(
        std::fs::read(&filed).unwrap(),
        png,
        "the library holds the content"
    );
    assert!(!source.exists(), "a consumed file leaves the inbox");

    // The same content under another name: recognised, not catalogued twice, still consumed.
    let copy = suite.inbox.join("copy-of-picture.bin");
    std::fs::write(&copy, &png).unwrap();
    let payload = suite.ingest_payload(&copy, &suite.inbox, "consume");
    let second = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(second, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let result = job.result.unwrap();
    assert_eq!(result["duplicate"], true);
    assert_eq!(result["document_id"], json!(document.id));
    let documents = suite
        .store
        .list_documents(&DocumentFilter::default(), page())
        .unwrap();
    assert_eq!(documents.items.len(), 1, "one document for one content");
    assert_eq!(documents.items[0].duplicates, 1);
    assert!(!copy.exists());
    assert_eq!(std::fs::read(&filed).unwrap(), png);
}

#[test]
fn an_indexed_text_file_stays_in_place_and_is_searchable() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let file = suite.catalogue.join("notes.txt");
    let text = "sluice keeps the rhododendron notes\nsecond line\n";
    std::fs::write(&file, text).unwrap();
    let payload = suite.ingest_payload(&file, &suite.catalogue, "index");
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let document = suite
        .store
        .get_document(job.result.unwrap()["document_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(document.mime, "text/plain");
    assert_eq!(document.metadata["lines"], 2);
    assert_eq!(document.metadata["encoding"], "ascii");
    assert_eq!(document.library_path, None);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "index mode leaves the file"
    );
    let hits = suite
        .store
        .search_documents(
            &sluice_core::policy::parse_search_query("rhododendron").unwrap(),
            page(),
        )
        .unwrap();
    assert_eq!(hits.items.len(), 1);
    assert_eq!(hits.items[0].document.id, document.id);
    assert!(
        std::fs::read_dir(&suite.library).unwrap().next().is_none(),
        "nothing was filed"
    );
}

#[test]
fn a_symlink_is_refused_for_good_and_its_target_is_untouched() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let (_outside, outside) = temp_dir();
    let target = outside.join("secret.txt");
    std::fs::write(&target, "do not move me").unwrap();
    let link = suite.inbox.join("innocent.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // A symlinked folder on the way is refused as well.
    std::os::unix::fs::symlink(&outside, suite.inbox.join("folder")).unwrap();
    let through_folder = suite.inbox.join("folder").join("secret.txt");

    for path in [&link, &through_folder] {
        let payload = suite.ingest_payload(path, &suite.inbox, "consume");
        let id = suite.enqueue("ingest", payload);
        let job = suite.wait_for_end(id, &worker);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert_eq!(job.attempts, 1, "a permanent failure is not retried");
        let error = job.error.unwrap();
        assert!(error.contains("symlink"), "{error}");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not move me");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(suite.documents().is_empty(), "no document");
}

#[test]
fn a_hard_link_is_refused_for_good_and_the_original_is_untouched() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    // The original stands for /etc/shadow: on the same file system (a hard link needs that),
    // outside every watched folder.
    let outside = suite.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let original = outside.join("shadow");
    std::fs::write(&original, "root:$6$secret-hash:19000:0:99999:7:::\n").unwrap();
    let consumed = suite.inbox.join("x.txt");
    let indexed = suite.catalogue.join("y.txt");
    std::fs::hard_link(&original, &consumed).unwrap();
    std::fs::hard_link(&original, &indexed).unwrap();

    for (path, root, mode) in [
        (&consumed, suite.inbox.clone(), "consume"),
        (&indexed, suite.catalogue.clone(), "index"),
    ] {
        let payload = suite.ingest_payload(path, &root, mode);
        let id = suite.enqueue("ingest", payload);
        let job = suite.wait_for_end(id, &worker);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert_eq!(job.attempts, 1, "a permanent failure is not retried");
        let error = job.error.unwrap();
        let expected = format!(
            "{} has 3 hard links; refusing to ingest a file linked from elsewhere",
            path.display()
        );
        assert!(error.contains(&expected), "{error}");
    }
    assert_eq!(
        std::fs::read_to_string(&original).unwrap(),
        "root:$6$secret-hash:19000:0:99999:7:::\n"
    );
    assert_eq!(
        std::fs::metadata(&original).unwrap().nlink(),
        3,
        "the library holds no further link to the original"
    );
    assert!(
        consumed.exists(),
        "the inbox entry was neither moved nor removed"
    );
    assert_eq!(
        std::fs::read_dir(&suite.library).unwrap().count(),
        0,
        "nothing was filed into the library"
    );
    assert!(suite.documents().is_empty(), "no document");
}

/// Issue 12, write targets: a shard folder of the library replaced by a symlink to a folder
/// elsewhere must not receive the consumed file (it used to: the worker made the shard
/// folders with `create_dir_all`, which follows links). The job fails with the reason, the
/// file stays in the inbox, nothing is written outside.
#[test]
fn a_symlinked_library_folder_is_refused_and_nothing_is_filed_outside() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let content = b"a file whose library folder was swapped for a link\n";
    let blake3 = blake3::hash(content).to_hex().to_string();
    let (_outside, outside) = temp_dir();
    std::fs::create_dir_all(suite.library.join(&blake3[0..2])).unwrap();
    std::os::unix::fs::symlink(
        &outside,
        suite.library.join(&blake3[0..2]).join(&blake3[2..4]),
    )
    .unwrap();
    let file = suite.inbox.join("swapped.txt");
    std::fs::write(&file, content).unwrap();
    let payload = suite.ingest_payload(&file, &suite.inbox.clone(), "consume");
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    let error = job.error.unwrap();
    assert!(
        error.contains("is not a plain folder inside the library") && error.contains(&blake3[2..4]),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written through the link"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        content,
        "the file stays in the inbox"
    );
    assert!(suite.documents().is_empty());
}

#[test]
fn bad_payloads_fail_with_a_clear_error_and_the_worker_keeps_going() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    // Not an object: the queue itself refuses it, nothing is stored.
    let refused = suite.store.enqueue(&NewJob::new("ingest", json!(["/x"])));
    assert!(
        matches!(refused, Err(JobError::InvalidArgument(_))),
        "{refused:?}"
    );

    let inbox = suite.inbox.display().to_string();
    let (_outside, outside) = temp_dir();
    let outside_file = outside.join("keep.txt");
    std::fs::write(&outside_file, b"keep").unwrap();
    let outside_text = outside.display().to_string();
    let cases = [
        (
            json!({"watch_root": inbox, "mode": "consume"}),
            "missing field `path`",
        ),
        (
            json!({"path": "relative.txt", "watch_root": inbox, "mode": "consume"}),
            "must be absolute",
        ),
        (
            json!({"path": outside_file, "watch_root": inbox, "mode": "consume"}),
            "not inside",
        ),
        (
            json!({"path": outside_file, "watch_root": outside_text, "mode": "consume"}),
            "not a configured",
        ),
        (
            json!({"path": format!("{inbox}/a"), "watch_root": inbox, "mode": "index"}),
            "does not match",
        ),
        (
            json!({"path": format!("{inbox}/missing"), "watch_root": inbox, "mode": "consume"}),
            "does not exist",
        ),
    ];
    let mut ids = Vec::new();
    for (payload, _) in &cases {
        ids.push(suite.enqueue("ingest", payload.clone()));
    }
    let bad_noop = suite.enqueue("noop", json!({"sleep_ms": "long"}));
    for ((_, expected), id) in cases.iter().zip(&ids) {
        let job = suite.wait_for_end(*id, &worker);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        let error = job.error.unwrap();
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
    let job = suite.wait_for_end(bad_noop, &worker);
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.unwrap().contains("sleep_ms"));
    assert_eq!(
        std::fs::read(&outside_file).unwrap(),
        b"keep",
        "nothing outside was touched"
    );

    let good = suite.enqueue("noop", json!({"i": 1}));
    assert_eq!(suite.wait_for_end(good, &worker).state, JobState::Succeeded);
}

#[test]
fn a_worker_killed_mid_ingest_is_replaced_and_the_effects_happen_once() {
    let mut suite = Suite::new("5s");
    // The pause comes after the move into the library and before the commit: the window in
    // which a crash must neither lose the file nor record it twice. Only whoever starts the
    // worker can ask for it (a job's payload cannot).
    let mut first = suite.start_worker_with("1", &[("SLUICE_TEST_PAUSE_BEFORE_COMMIT_MS", "1500")]);
    let content = b"exactly once, even across kill -9\n".repeat(100);
    let source = suite.inbox.join("precious.txt");
    std::fs::write(&source, &content).unwrap();
    let blake3 = blake3::hash(&content).to_hex().to_string();
    let filed = library_path(&suite.library, &blake3);
    let payload = suite.ingest_payload(&source, &suite.inbox, "consume");
    let id = suite.enqueue("ingest", payload);
    suite.wait_for("the first worker never filed the file", &first, || {
        filed.exists() && !source.exists()
    });
    assert_eq!(suite.job(id).state, JobState::Running);
    first.kill_hard();

    let second = suite.start_worker("2");
    let job = suite.wait_for_end(id, &second);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", second.log());
    assert_eq!(job.attempts, 2);
    assert_eq!(job.lease_owner.as_deref(), Some("sluice-ingest-worker@2"));
    assert!(
        second.log().contains("already filed by an earlier attempt"),
        "the second attempt must have found the file in the library by its recorded hash:\n{}",
        second.log()
    );
    let history = suite.store.job_history(id).unwrap();
    let successes = history
        .iter()
        .filter(|step| step.to_state == JobState::Succeeded)
        .count();
    assert_eq!(successes, 1, "{history:?}");
    assert!(retried_because(&history, "lease expired"), "{history:?}");
    let documents = suite
        .store
        .list_documents(&DocumentFilter::default(), page())
        .unwrap();
    assert_eq!(documents.items.len(), 1);
    assert_eq!(documents.items[0].blake3, blake3);
    assert_eq!(
        documents.items[0].duplicates, 0,
        "the retry is not a duplicate"
    );
    assert_eq!(std::fs::read(&filed).unwrap(), content);
}

/// The crash tests' hold between filing a file and committing its document.
const PAUSE_BEFORE_COMMIT: &str = "SLUICE_TEST_PAUSE_BEFORE_COMMIT_MS";
const PAUSE_BEFORE_THUMBNAIL_COMMIT: &str = "SLUICE_TEST_PAUSE_BEFORE_THUMBNAIL_COMMIT_MS";

/// Milliseconds since the Unix epoch, the clock of the store's timestamps.
fn now_ms() -> i64 {
    (now_micros() / 1000) as i64
}

/// Whether every thread of process `pid` has stopped: after SIGSTOP, a thread running on
/// another CPU may go on for a moment.
fn all_threads_stopped(pid: nix::unistd::Pid) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
    })
}

/// What every crash test of an ingest job checks at the end: the job succeeded once, and
/// the catalogue holds its one document, filed once, not counted as a duplicate.
fn assert_ingested_once(suite: &Suite, id: i64, content: &[u8], filed: &Path) {
    let history = suite.store.job_history(id).unwrap();
    let successes = history
        .iter()
        .filter(|step| step.to_state == JobState::Succeeded)
        .count();
    assert_eq!(successes, 1, "{history:?}");
    let blake3 = blake3::hash(content).to_hex().to_string();
    let documents: Vec<_> = suite
        .documents()
        .into_iter()
        .filter(|document| document.blake3 == blake3)
        .collect();
    assert_eq!(documents.len(), 1, "{documents:?}");
    assert_eq!(documents[0].duplicates, 0, "a retry is not a duplicate");
    assert_eq!(std::fs::read(filed).unwrap(), content);
}

/// Issue 16: a worker killed with kill -9 kept its job until the 30 s lease expired. The bus
/// announces at once that the worker's connection closed, and its peer takes the job.
#[test]
fn a_killed_workers_job_is_taken_over_by_its_peer_long_before_its_lease_could_expire() {
    // A lease of a minute: a takeover within it cannot have come from the expiry.
    let mut suite = Suite::with_lease("5s", "60s", "400ms");
    // The first worker files the file, then holds the job until it is killed.
    let mut first = suite.start_worker_with("1", &[(PAUSE_BEFORE_COMMIT, "600000")]);
    let content = b"taken over by the peer, not by the clock\n".repeat(100);
    let (id, source, filed) = suite.enqueue_file("taken-over.txt", &content);
    suite.wait_for("the first worker never filed the file", &first, || {
        filed.exists() && !source.exists()
    });
    // The peer starts once the job is the first worker's, so only a takeover gives it the job.
    let second = suite.start_worker("2");
    let held = suite.job(id);
    assert_eq!(held.state, JobState::Running);
    assert_eq!(held.lease_owner.as_deref(), Some("sluice-ingest-worker@1"));
    let lease_expires_at_ms = held.lease_expires_at_ms.expect("a running job has a lease");

    let killed_at_ms = now_ms();
    first.kill_hard();
    let job = suite.wait_for_end(id, &second);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", second.log());
    assert_eq!(job.attempts, 2, "the killed attempt counts");
    let history = suite.store.job_history(id).unwrap();
    let claimed_again = assert_taken_over_before_the_lease_expired(
        &history,
        "bus connection",
        killed_at_ms,
        lease_expires_at_ms,
        &format!("job {id} claimed again by worker 2"),
    )
    .unwrap();
    assert_eq!(
        claimed_again.worker.as_deref(),
        Some("sluice-ingest-worker@2")
    );
    let rescued = transition(&history, JobState::Retrying, 1).unwrap();
    assert_eq!(rescued.worker.as_deref(), Some("sluice-ingest-worker@1"));
    assert!(
        second.log().contains(&format!(
            "rescued job {id} from sluice-ingest-worker@1 (its bus connection"
        )),
        "the peer says what it did:\n{}",
        second.log()
    );
    assert!(second.log().contains("already filed by an earlier attempt"));
    assert_ingested_once(&suite, id, &content, &filed);
}

/// Issue 10: a thumbnail is a low-priority job of its own, queued with the document. A worker
/// killed after filing the thumbnail and before recording it leaves the job to its peer, which
/// files the same file again and records it once; the same content arriving again reuses it.
#[test]
fn a_worker_killed_while_making_a_thumbnail_leaves_it_to_a_peer_that_records_it_once() {
    let mut suite = Suite::with_lease("5s", "60s", "400ms");
    let mut first = suite.start_worker_with("1", &[(PAUSE_BEFORE_THUMBNAIL_COMMIT, "600000")]);
    let content = sluice_tests::documents::png(300, 200);
    let (id, _source, filed) = suite.enqueue_file("picture.png", &content);
    let ingest = suite.wait_for_end(id, &first);
    assert_eq!(
        ingest.state,
        JobState::Succeeded,
        "{ingest:?}\n{}",
        first.log()
    );
    let document_id = ingest.result.as_ref().unwrap()["document_id"]
        .as_i64()
        .unwrap();
    let document = suite.store.get_document(document_id).unwrap();
    assert!(
        document.metadata.get("thumbnail").is_none(),
        "the ingest ends before the thumbnail is made: {document:?}"
    );
    let thumbnail_job = document.metadata["thumbnail_job"]
        .as_i64()
        .expect("a thumbnail job queued with the document");
    let blake3 = blake3::hash(&content).to_hex().to_string();
    let thumbnail_file = suite
        .root
        .join(format!("library/thumbnails/{}/{blake3}.png", &blake3[..2]));
    suite.wait_for("the first worker never filed the thumbnail", &first, || {
        thumbnail_file.exists() && suite.job(thumbnail_job).state == JobState::Running
    });
    let filed_first = std::fs::read(&thumbnail_file).unwrap();

    let second = suite.start_worker("2");
    first.kill_hard();
    let job = suite.wait_for_end(thumbnail_job, &second);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", second.log());
    assert_eq!(job.attempts, 2, "the killed attempt counts");
    let history = suite.store.job_history(thumbnail_job).unwrap();
    let successes = history
        .iter()
        .filter(|step| step.to_state == JobState::Succeeded)
        .count();
    assert_eq!(successes, 1, "{history:?}");
    let metadata = suite.store.get_document(document_id).unwrap().metadata;
    let thumbnail = &metadata["thumbnail"];
    assert_eq!(
        (thumbnail["width"].as_u64(), thumbnail["height"].as_u64()),
        (Some(256), Some(171)),
        "{metadata}"
    );
    let again = std::fs::read(&thumbnail_file).unwrap();
    assert_eq!(
        again, filed_first,
        "the same thumbnail, filed again in place"
    );
    assert_eq!(
        thumbnail["blake3"].as_str(),
        Some(blake3::hash(&again).to_hex().as_str())
    );
    let folder = files_under(&suite.root.join("library/thumbnails"));
    assert_eq!(
        folder,
        std::slice::from_ref(&thumbnail_file),
        "no temporary file left"
    );
    assert!(
        second
            .log()
            .contains(&format!("thumbnail of document {document_id} filed")),
        "{}",
        second.log()
    );

    // The same content again is a duplicate of the document: no second thumbnail job.
    let (copy, _, _) = suite.enqueue_file("copy.png", &content);
    assert_eq!(suite.wait_for_end(copy, &second).state, JobState::Succeeded);
    let thumbnail_jobs = suite
        .store
        .list_jobs(
            &JobFilter {
                kind: Some("thumbnail".into()),
                ..JobFilter::default()
            },
            page(),
        )
        .unwrap()
        .items;
    assert_eq!(thumbnail_jobs.len(), 1, "{thumbnail_jobs:?}");
    assert_eq!(std::fs::read(&filed).unwrap(), content);
}

/// Issue 16: with no peer watching, the process systemd restarts under the same instance name
/// takes back what its predecessor held, instead of waiting for the lease.
#[test]
fn a_worker_restarted_under_its_name_takes_its_own_job_back_before_the_lease_expires() {
    let mut suite = Suite::with_lease("5s", "60s", "400ms");
    let mut first = suite.start_worker_with("1", &[(PAUSE_BEFORE_COMMIT, "600000")]);
    let content = b"taken back by the next process of the same worker\n".repeat(100);
    let (id, source, filed) = suite.enqueue_file("taken-back.txt", &content);
    suite.wait_for("the first worker never filed the file", &first, || {
        filed.exists() && !source.exists()
    });
    let lease_expires_at_ms = suite.job(id).lease_expires_at_ms.expect("leased");

    let killed_at_ms = now_ms();
    first.kill_hard();
    let restarted = suite.start_worker("1");
    let job = suite.wait_for_end(id, &restarted);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{job:?}\n{}",
        restarted.log()
    );
    assert_eq!(job.attempts, 2);
    let history = suite.store.job_history(id).unwrap();
    let claimed_again = assert_taken_over_before_the_lease_expired(
        &history,
        "a new process of the same name started",
        killed_at_ms,
        lease_expires_at_ms,
        &format!("job {id} taken back by the restarted worker 1 (process start included)"),
    )
    .unwrap();
    assert_eq!(
        claimed_again.worker.as_deref(),
        Some("sluice-ingest-worker@1")
    );
    assert!(
        restarted.log().contains(&format!(
            "rescued job {id} from sluice-ingest-worker@1 (held by an earlier process of this \
             worker): queued again"
        )),
        "{}",
        restarted.log()
    );
    assert_ingested_once(&suite, id, &content, &filed);
}

/// Issue 16: the bus daemon restarts while two workers are mid-job. The workers live on, cut
/// off from the bus with their leases; their successors on the new bus (under the same names,
/// as systemd would start them) take those jobs over. Every job then runs twice in part, and
/// takes effect once: the old processes' writes fail the lease-token check.
#[test]
fn a_bus_restart_under_load_does_nothing_twice_in_effect() {
    // A heartbeat slower than the test, so an old worker learns of its lost lease by trying
    // to commit, not from a heartbeat.
    let mut suite = Suite::with_lease("5s", "60s", "20s");
    let pause = [(PAUSE_BEFORE_COMMIT, "3000")];
    let mut old_workers = vec![
        suite.start_worker_with("1", &pause),
        suite.start_worker_with("2", &pause),
    ];
    let files: Vec<(i64, PathBuf, PathBuf, Vec<u8>)> = (0..24)
        .map(|i| {
            let content = format!("file {i} of a bus restart under load\n").repeat(50 + i);
            let (id, source, filed) =
                suite.enqueue_file(&format!("load-{i}.txt"), content.as_bytes());
            (id, source, filed, content.into_bytes())
        })
        .collect();

    // Freeze both old workers while each holds a filed, uncommitted job (the pause between
    // filing and the commit) and neither holds the database's write lock: frozen, they can
    // neither finish those jobs nor claim the ones their successors free.
    let filed_and_held_by = |instance: &str| {
        let owner = format!("sluice-ingest-worker@{instance}");
        files.iter().any(|(id, source, filed, _)| {
            let job = suite.job(*id);
            job.state == JobState::Running
                && job.lease_owner.as_deref() == Some(owner.as_str())
                && filed.exists()
                && !source.exists()
        })
    };
    let mut probe = Store::open(
        &suite.root.join("sluice.db"),
        &StoreOptions {
            busy_timeout: std::time::Duration::from_millis(200),
            ..crate::support::store_options(Durability::Normal)
        },
    )
    .unwrap();
    let frozen = wait_until(DEADLINE, || {
        if !(filed_and_held_by("1") && filed_and_held_by("2")) {
            return false;
        }
        for worker in &old_workers {
            worker.signal(Signal::SIGSTOP).unwrap();
        }
        let stopped = wait_until(STARTUP_DEADLINE, || {
            old_workers
                .iter()
                .all(|worker| all_threads_stopped(worker.pid()))
        });
        assert!(stopped, "SIGSTOP did not stop the old workers");
        // Frozen at the right moment: no write lock held, and still inside the pause (not
        // committing in the instant between the look and the freeze).
        let frozen_as_wanted = probe.rescue_expired_leases().is_ok()
            && filed_and_held_by("1")
            && filed_and_held_by("2");
        if !frozen_as_wanted {
            for worker in &old_workers {
                worker.signal(Signal::SIGCONT).unwrap();
            }
        }
        frozen_as_wanted
    });
    assert!(
        frozen,
        "the old workers never both held a filed job:\n{}\n{}",
        old_workers[0].log(),
        old_workers[1].log()
    );
    let held: Vec<i64> = files
        .iter()
        .map(|(id, ..)| suite.job(*id))
        .filter(|job| job.state == JobState::Running)
        .map(|job| job.id)
        .collect();

    suite.restart_bus();
    let successors = [suite.start_worker("1"), suite.start_worker("2")];
    for (id, ..) in &files {
        suite.wait_for_end(*id, &successors[0]);
    }
    for id in &held {
        let history = suite.store.job_history(*id).unwrap();
        assert!(
            retried_because(&history, "a new process of the same name started"),
            "job {id} was held by a frozen worker and taken over by its successor: {history:?}"
        );
    }

    // Woken, the old workers try to finish what they held: every write is refused.
    for worker in &old_workers {
        worker.signal(Signal::SIGCONT).unwrap();
    }
    for worker in &mut old_workers {
        worker.wait_for_log_lines(&["lease lost"], 1, DEADLINE);
    }
    for (id, _, filed, content) in &files {
        assert_eq!(suite.job(*id).state, JobState::Succeeded);
        assert_ingested_once(&suite, *id, content, filed);
    }
    assert_eq!(suite.documents().len(), files.len());
    eprintln!(
        "bus restart: {} of {} jobs were held by the frozen workers and taken over",
        held.len(),
        files.len()
    );
}

#[test]
fn sigterm_releases_a_slow_job_unused_and_finishes_a_quick_one() {
    let mut suite = Suite::new("1s");
    // Longer than the stop timeout: released, the attempt given back, exit 0.
    let mut worker = suite.start_worker("1");
    let slow = suite.enqueue("noop", json!({"i": 1, "sleep_ms": 120_000}));
    suite.wait_for("the slow job never started", &worker, || {
        suite.job(slow).state == JobState::Running
    });
    worker.signal(Signal::SIGTERM).expect("signal the daemon");
    let status = worker
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log());
    let job = suite.job(slow);
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    assert_eq!(job.attempts, 0, "a released job keeps its attempts");
    let history = suite.store.job_history(slow).unwrap();
    assert!(
        history
            .iter()
            .any(|step| step.from_state == Some(JobState::Running)
                && step.to_state == JobState::Queued),
        "{history:?}"
    );
    suite.store.cancel_job(slow).unwrap();

    // Shorter than the stop timeout: finished before the exit.
    let mut worker = suite.start_worker("1");
    let quick = suite.enqueue("noop", json!({"i": 2, "sleep_ms": 400}));
    suite.wait_for("the quick job never started", &worker, || {
        suite.job(quick).state == JobState::Running
    });
    worker.signal(Signal::SIGTERM).expect("signal the daemon");
    let status = worker
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(0));
    assert_eq!(suite.job(quick).state, JobState::Succeeded);
}

#[test]
fn cancellation_reaches_a_running_job_through_the_store_and_over_dbus() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connection = runtime
        .block_on(bus::connect(&BusAddress::Address(
            suite.bus.address().to_owned(),
        )))
        .unwrap();
    let proxy = runtime.block_on(ingest_proxy(&connection, "1")).unwrap();

    // Through the store (what the web and sluicectl do): learnt at the next heartbeat.
    let first = suite.enqueue("noop", json!({"sleep_ms": 60_000}));
    suite.wait_for("job never started", &worker, || {
        suite.job(first).state == JobState::Running
    });
    suite.store.cancel_job(first).unwrap();
    assert_eq!(
        suite.wait_for_end(first, &worker).state,
        JobState::Cancelled
    );

    // Directly at the worker over D-Bus.
    let second = suite.enqueue("noop", json!({"sleep_ms": 60_000}));
    suite.wait_for("job never started", &worker, || {
        suite.job(second).state == JobState::Running
    });
    runtime.block_on(proxy.cancel_job(second as u64)).unwrap();
    assert_eq!(
        suite.wait_for_end(second, &worker).state,
        JobState::Cancelled
    );

    // A job this worker does not run is a named NotFound error.
    let error = runtime.block_on(proxy.cancel_job(999_999)).unwrap_err();
    assert!(matches!(error, BusError::NotFound(_)), "{error:?}");
}

#[test]
fn a_subscriber_sees_job_started_and_job_finished() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("7");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = runtime.block_on(async {
        let connection = bus::connect(&BusAddress::Address(suite.bus.address().to_owned()))
            .await
            .unwrap();
        let proxy = ingest_proxy(&connection, "7").await.unwrap();
        let mut started = proxy.receive_job_started().await.unwrap();
        let mut finished = proxy.receive_job_finished().await.unwrap();
        let id = suite.enqueue("noop", json!({"i": 42}));
        // Announce it the way the web does, so the worker need not wait for its poll.
        connection
            .emit_signal(
                None::<&str>,
                "/org/sluice/Web1",
                "org.sluice.Web1",
                "JobQueued",
                &("noop", id as u64),
            )
            .await
            .unwrap();
        let signal = tokio::time::timeout(DEADLINE, started.next())
            .await
            .unwrap()
            .unwrap();
        let args = signal.args().unwrap();
        assert_eq!(
            (*args.job_id(), *args.kind(), *args.worker()),
            (id as u64, "noop", "sluice-ingest-worker@7")
        );
        let signal = tokio::time::timeout(DEADLINE, finished.next())
            .await
            .unwrap()
            .unwrap();
        let args = signal.args().unwrap();
        assert_eq!((*args.job_id(), *args.state()), (id as u64, "succeeded"));
        id
    });
    assert_eq!(
        suite.job(id).state,
        JobState::Succeeded,
        "log:\n{}",
        worker.log()
    );
}

/// Issue 17, finding 1: under a flood of tiny jobs the worker's signal budget dropped
/// JobStarted and JobFinished (600 files gave 320 JobFinished). Now every change reaches the
/// bus, singly or in a `JobsChanged` batch, in order: a subscriber sees each of 3,000 jobs
/// start once and succeed once.
#[test]
fn every_job_change_of_a_flood_reaches_a_subscriber() {
    const JOBS: usize = 3000;
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("8");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (started, finished, batches) = runtime.block_on(async {
        let connection = bus::connect(&BusAddress::Address(suite.bus.address().to_owned()))
            .await
            .unwrap();
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.sluice.Ingest1")
            .path("/org/sluice/Ingest1/8")
            .build()
            .unwrap();
        let mut signals = zbus::MessageStream::for_match_rule(rule, &connection, None)
            .await
            .unwrap();
        let jobs: Vec<NewJob> = (0..JOBS)
            .map(|i| NewJob::new("noop", json!({ "i": i })).with_max_attempts(3))
            .collect();
        let ids: Vec<u64> = suite
            .store
            .enqueue_many(&jobs)
            .unwrap()
            .iter()
            .map(|enqueued| enqueued.id as u64)
            .collect();
        connection
            .emit_signal(
                None::<&str>,
                "/org/sluice/Web1",
                "org.sluice.Web1",
                "JobQueued",
                &("noop", ids[0]),
            )
            .await
            .unwrap();
        let mut started: HashMap<u64, usize> = HashMap::new();
        let mut finished: HashMap<u64, Vec<String>> = HashMap::new();
        let mut batches = 0;
        while finished.len() < JOBS {
            let message = tokio::time::timeout(DEADLINE, signals.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "signals stopped after {} starts and {} ends",
                        started.len(),
                        finished.len()
                    )
                })
                .unwrap()
                .unwrap();
            let member = message.header().member().unwrap().to_string();
            let body = message.body();
            let mut changes: Vec<(u64, String, String)> = Vec::new();
            match member.as_str() {
                "JobStarted" => {
                    let (id, kind, _worker): (u64, String, String) = body.deserialize().unwrap();
                    changes.push((id, kind, "running".into()));
                }
                "JobFinished" => {
                    let (id, state): (u64, String) = body.deserialize().unwrap();
                    changes.push((id, "noop".into(), state));
                }
                "JobsChanged" => {
                    let (worker, batch): (String, Vec<(u64, String, String)>) =
                        body.deserialize().unwrap();
                    assert_eq!(worker, "sluice-ingest-worker@8");
                    batches += 1;
                    changes = batch;
                }
                _ => continue,
            }
            for (id, kind, state) in changes {
                assert_eq!(kind, "noop");
                if state == "running" {
                    assert!(
                        !finished.contains_key(&id),
                        "job {id} started after it ended"
                    );
                    *started.entry(id).or_default() += 1;
                } else {
                    assert!(
                        started.contains_key(&id),
                        "job {id} ended before it started"
                    );
                    finished.entry(id).or_default().push(state);
                }
            }
        }
        (started, finished, batches)
    });
    assert_eq!(started.len(), JOBS, "every job started once on the bus");
    assert!(started.values().all(|count| *count == 1), "{started:?}");
    assert!(
        finished.values().all(|states| states == &["succeeded"]),
        "every job ended once, succeeded"
    );
    // The flood is far above 200 changes a second: batches carried most of it.
    eprintln!("{JOBS} jobs: {batches} JobsChanged batches");
    assert!(worker.log().lines().all(|line| !line.contains("panicked")));
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[test]
fn heartbeats_keep_a_job_longer_than_its_lease_and_progress_is_saved() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    // Three times the 2 s lease: only the heartbeats (every 400 ms) keep it.
    let id = suite.enqueue("noop", json!({"i": 3, "sleep_ms": 6000}));
    suite.wait_for("no progress was saved while the job ran", &worker, || {
        let job = suite.job(id);
        job.state == JobState::Running && job.progress.is_some_and(|fraction| fraction > 0.0)
    });
    let running = suite.job(id);
    assert_eq!(running.progress_message.as_deref(), Some("sleeping"));
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1, "the lease never expired");
    assert_eq!(job.progress, Some(1.0));
}

#[test]
fn sighup_applies_a_valid_configuration_and_keeps_the_old_one_otherwise() {
    let mut suite = Suite::new("5s");
    let mut worker = suite.start_worker("1");
    let good = std::fs::read_to_string(&suite.config_path).unwrap();
    std::fs::write(
        &suite.config_path,
        format!("{good}\n[jobs]\nno_such_key = 1\n"),
    )
    .unwrap();
    worker.signal(Signal::SIGHUP).expect("signal the daemon");
    worker.wait_for_log_lines(&["reload failed"], 1, DEADLINE);
    let id = suite.enqueue("noop", json!({"i": 1}));
    assert_eq!(suite.wait_for_end(id, &worker).state, JobState::Succeeded);

    std::fs::write(
        &suite.config_path,
        good.replace("claim_batch = 8", "claim_batch = 4"),
    )
    .unwrap();
    worker.signal(Signal::SIGHUP).expect("signal the daemon");
    worker.wait_for_log_lines(&["configuration reloaded"], 1, DEADLINE);
    let id = suite.enqueue("noop", json!({"i": 2}));
    assert_eq!(suite.wait_for_end(id, &worker).state, JobState::Succeeded);
}

#[test]
fn bad_start_up_input_gives_the_documented_exit_codes() {
    let suite = Suite::new("5s");
    let binary = binary_path("sluice-ingest-worker");
    let run = |arguments: &[&str], config: &Path| {
        Command::new(&binary)
            .args(arguments)
            .env("SLUICE_CONFIG", config)
            .env_remove("NOTIFY_SOCKET")
            .output()
            .expect("run the worker")
    };
    // No --instance: usage (64).
    assert_eq!(run(&[], &suite.config_path).status.code(), Some(64));
    // An empty instance name: usage (64).
    assert_eq!(
        run(&["--instance", ""], &suite.config_path).status.code(),
        Some(64)
    );
    // An invalid configuration: EX_CONFIG (78), and the log names the problem.
    let broken = suite.root.join("broken.toml");
    std::fs::write(&broken, "[jobs]\nclaim_batch = 0\n").unwrap();
    let output = run(&["--instance", "1"], &broken);
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("claim_batch"));
    // A second worker with the same instance name cannot own the bus name: 69.
    let _first = suite.start_worker("1");
    let output = run(&["--instance", "1"], &suite.config_path);
    assert_eq!(
        output.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("already owned"));
}

#[test]
fn a_job_for_an_older_version_of_the_file_leaves_it_to_the_newer_job() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let file = suite.inbox.join("draft.txt");
    std::fs::write(&file, "second version, already rewritten").unwrap();
    let mut payload = suite.ingest_payload(&file, &suite.inbox, "consume");
    // The version the monitor saw before the file was rewritten.
    payload["size"] = json!(3);
    payload["mtime_ns"] = json!(1);
    payload["inode"] = json!(1);
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.result.unwrap()["superseded"], true);
    assert!(
        file.exists(),
        "the newer job, not this one, consumes the file"
    );
    assert!(suite.documents().is_empty(), "no document");

    // The job for the version on disk does the work.
    let metadata = std::fs::metadata(&file).unwrap();
    let mut payload = suite.ingest_payload(&file, &suite.inbox, "consume");
    payload["size"] = json!(metadata.size());
    payload["mtime_ns"] = json!(metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec());
    payload["inode"] = json!(metadata.ino());
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.result.unwrap()["duplicate"], false);
    assert!(!file.exists());
}

#[test]
fn a_file_recorded_by_the_monitors_store_code_ends_ingested_or_duplicate() {
    let mut suite = Suite::new("5s");
    let worker = suite.start_worker("1");
    let mut detect = |path: &Path| {
        let metadata = std::fs::metadata(path).unwrap();
        let detected = DetectedFile {
            watch_root: suite.inbox.clone(),
            path: path.to_path_buf(),
            mode: WatchMode::Consume,
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            inode: metadata.ino(),
        };
        suite
            .store
            .record_detected_files(&[detected], 3, 1000)
            .unwrap()
            .remove(0)
    };
    let first = suite.inbox.join("report.txt");
    let copy = suite.inbox.join("report (1).txt");
    std::fs::write(&first, "quarterly numbers\n").unwrap();
    std::fs::write(&copy, "quarterly numbers\n").unwrap();
    let first_detection = detect(&first);
    let copy_detection = detect(&copy);
    for detection in [&first_detection, &copy_detection] {
        let job_id = detection.job_id.expect("queued: the queue has room");
        let job = suite.wait_for_end(job_id, &worker);
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    let first_row = suite.store.get_file(first_detection.file_id).unwrap();
    let copy_row = suite.store.get_file(copy_detection.file_id).unwrap();
    assert_eq!(first_row.state, FileState::Ingested);
    assert_eq!(copy_row.state, FileState::Duplicate);
    assert!(first_row.document_id.is_some());
    assert_eq!(first_row.document_id, copy_row.document_id);
    assert!(
        !first.exists() && !copy.exists(),
        "both copies were consumed"
    );
}
