//! Full disk (issue 12): the staging folder, the library and the database each on a small
//! tmpfs of the test's own that fills up during a download, an ingest and a commit. What a
//! user would notice is checked: the error says that the disk is full and where, nothing is
//! corrupted or half-written where it counts as done, nothing is lost, the daemons keep
//! running, and the work finishes by itself once space returns, even when the disk stayed
//! full for longer than a job's attempts would last. The tests mount tmpfs, so they need root
//! (a skip otherwise, a failure under `SLUICE_REQUIRE_ROOT_TESTS=1`).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sluice_core::store::{
    Document, DocumentFilter, DownloadState, Durability, FileFilter, FileRecord, JobState,
    JobTransition, NewDownload, PageRequest, Store,
};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, FixtureRoute, HttpFixture, PrivateBus, STARTUP_DEADLINE,
    SpawnOptions, SuiteFixture, TmpfsMount, WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon, binary_path,
    files_under, have_root, http_agent, http_result, open_store, sha256_hex, wait_every,
};

/// The attempts a job gets in these tests: fewer than the times a full disk makes it wait, so
/// a wait that used up attempts would end the job `dead`.
const MAX_ATTEMPTS: u32 = 2;

/// How many times a job must have waited for space before the test gives the space back: as
/// many as its attempts, which a wait that counted as an attempt would not survive.
const WAITS_BEFORE_SPACE_RETURNS: usize = MAX_ATTEMPTS as usize;

/// Which state folder lives on the small file system; the others stay in the temp folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmallDisk {
    /// The scraper's staging folder, with the inbox (they must share a file system).
    Staging,
    Library,
    Database,
}

/// One test's world: a private bus and a temp folder with a configuration for every daemon
/// (the harness's [`SuiteFixture`]), a small tmpfs holding one of the state folders, and the
/// daemons the test started (killed before the tmpfs is unmounted and the bus stops).
struct World {
    daemons: Vec<Daemon>,
    web: Option<WebDaemon>,
    disk: TmpfsMount,
    fixture: SuiteFixture,
    database: PathBuf,
    inbox: PathBuf,
    staging: PathBuf,
    library: PathBuf,
}

/// A daemon the test started, with the name its messages use.
struct Daemon {
    label: String,
    process: DaemonProcess,
}

impl World {
    /// `size` is the small file system's, in mount(8)'s syntax.
    fn new(small: SmallDisk, size: &str) -> World {
        let disk = TmpfsMount::with_size(size).expect("mount a small tmpfs");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let on = |disk_holds: SmallDisk| {
            if small == disk_holds {
                disk.path().to_path_buf()
            } else {
                root.to_path_buf()
            }
        };
        let inbox = on(SmallDisk::Staging).join("inbox");
        let staging = on(SmallDisk::Staging).join("staging");
        let library = on(SmallDisk::Library).join("library");
        let database = on(SmallDisk::Database).join("sluice.db");
        for folder in [&inbox, &staging, &library] {
            std::fs::create_dir_all(folder).expect("state folder");
        }
        let token_file = root.join("api-token");
        std::fs::write(&token_file, format!("{WEB_TEST_TOKEN}\n")).expect("token file");
        let read_token_file = root.join("read-token");
        std::fs::write(&read_token_file, format!("{WEB_READ_TOKEN}\n")).expect("read token");
        let config_path = root.join("sluice.toml");
        // The periodic reconcile keeps its default of an hour: a file the monitor could not
        // record must be recorded again without waiting for it.
        let config = format!(
            r#"[store]
path = "{database}"
durability = "normal"
busy_timeout = "30s"

[bus]
address = "{address}"

[jobs]
lease = "5s"
heartbeat_interval = "1s"
max_attempts = {MAX_ATTEMPTS}
retry_backoff_base = "20ms"
retry_backoff_max = "300ms"

[service]
status_interval = "200ms"
stop_timeout = "5s"

[web]
listen = "127.0.0.1:0"
token_file = "{token_file}"
read_token_file = "{read_token_file}"

[[watch]]
path = "{inbox}"
mode = "consume"

[ingest]
library = "{library}"
workers = 2

[scraper]
inbox = "{inbox}"
staging = "{staging}"
# The HTTP fixture listens on 127.0.0.1.
allow_private_addresses = true
politeness_delay = "0s"
progress_interval = "200ms"
"#,
            database = database.display(),
            address = bus.address(),
            token_file = token_file.display(),
            read_token_file = read_token_file.display(),
            inbox = inbox.display(),
            library = library.display(),
            staging = staging.display(),
        );
        std::fs::write(&config_path, config).expect("config file");
        World {
            daemons: Vec::new(),
            web: None,
            disk,
            fixture: SuiteFixture {
                bus,
                directory,
                config_path,
                database: database.clone(),
            },
            database,
            inbox,
            staging,
            library,
        }
    }

    /// Starts daemon `name` with the world's configuration and waits for its READY=1 (its
    /// database is open and its bus name owned); returns its index in `daemons`.
    fn start(&mut self, name: &str, arguments: &[&str]) -> usize {
        let label = match arguments {
            ["--instance", instance] => format!("{name}@{instance}"),
            _ => name.to_owned(),
        };
        let mut command = Command::new(binary_path(name));
        command
            .args(arguments)
            .env("SLUICE_CONFIG", &self.fixture.config_path)
            .env("SLUICE_LOG", "info");
        let log = self.fixture.directory.path().join(format!("{label}.log"));
        let mut process = DaemonProcess::spawn(
            &mut command,
            SpawnOptions::named(&label).log_to(&log).notify(),
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
        process
            .wait_for_ready(STARTUP_DEADLINE)
            .unwrap_or_else(|error| panic!("{error:#}"));
        self.daemons.push(Daemon { label, process });
        self.daemons.len() - 1
    }

    fn start_monitor(&mut self) -> usize {
        let index = self.start("sluice-monitor", &[]);
        self.daemons[index].process.wait_for_log_lines(
            &["reconcile walk finished", "reason=\"start\""],
            1,
            DEADLINE,
        );
        index
    }

    /// Starts sluice-web and waits until it listens.
    fn start_web(&mut self) {
        self.web = Some(WebDaemon::start(&self.fixture));
    }

    /// `POST /api/downloads` for `url` with the harness token; status and JSON body.
    fn post_download(&self, url: &str) -> (u16, serde_json::Value) {
        let web = self.web.as_ref().expect("sluice-web is running");
        http_result(
            http_agent()
                .post(format!("{}/api/downloads", web.origin))
                .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
                .header("Content-Type", "application/json")
                .send(serde_json::json!({ "url": url }).to_string()),
        )
    }

    fn store(&self) -> Store {
        open_store(&self.database, Durability::Normal)
    }

    /// Every daemon's log, for assertion messages.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for daemon in &self.daemons {
            logs.push_str(&format!("--- {}\n{}\n", daemon.label, daemon.process.log()));
        }
        if let Some(web) = &self.web {
            logs.push_str(&format!("--- sluice-web\n{}\n", web.process.log()));
        }
        logs
    }

    /// Waits (polling the store, which is cheap but not free) until `condition` holds; fails
    /// with `what` and every log.
    fn wait_for(&self, what: &str, mut condition: impl FnMut(&Store) -> bool) {
        let store = self.store();
        let held = wait_every(Duration::from_millis(25), DEADLINE, || condition(&store));
        assert!(held, "{what} within {DEADLINE:?}; logs:\n{}", self.logs());
    }

    /// Every daemon the test started is still the process it started.
    fn assert_all_running(&mut self) {
        let mut exited: Vec<String> = self
            .daemons
            .iter_mut()
            .filter_map(|daemon| (!daemon.process.is_running()).then(|| daemon.label.clone()))
            .collect();
        if let Some(web) = &mut self.web
            && !web.process.is_running()
        {
            exited.push("sluice-web".to_owned());
        }
        assert!(
            exited.is_empty(),
            "{exited:?} exited; logs:\n{}",
            self.logs()
        );
    }

    /// Places `content` in the inbox under `name` the way a careful producer does: written
    /// under a dot-name (which the monitor ignores) and renamed into place.
    fn drop_in_inbox(&self, name: &str, content: &[u8]) -> PathBuf {
        let hidden = self.inbox.join(format!(".{name}.incoming"));
        std::fs::write(&hidden, content).expect("write into the inbox");
        let path = self.inbox.join(name);
        std::fs::rename(&hidden, &path).expect("rename into the inbox");
        path
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Killed before the tmpfs goes away (a lazy unmount would leave it to them).
        self.daemons.clear();
        self.web = None;
    }
}

fn page() -> PageRequest {
    PageRequest {
        before_id: None,
        limit: 1000,
    }
}

fn documents(store: &Store) -> Vec<Document> {
    store
        .list_documents(&DocumentFilter::default(), page())
        .expect("list documents")
        .items
}

fn files(store: &Store) -> Vec<FileRecord> {
    store
        .list_files(&FileFilter::default(), page())
        .expect("list files")
        .items
}

fn history(store: &Store, job_id: i64) -> Vec<JobTransition> {
    store.job_history(job_id).expect("job history")
}

/// How many times a job went back to wait after an attempt failed because of `reason`.
fn waits_because(history: &[JobTransition], reason: &str) -> usize {
    history
        .iter()
        .filter(|step| {
            step.to_state == JobState::Retrying
                && step
                    .error
                    .as_deref()
                    .is_some_and(|error| error.contains(reason))
        })
        .count()
}

/// Deterministic bytes that do not compress or repeat within a page.
fn content(length: usize, seed: u32) -> Vec<u8> {
    (0..length as u32)
        .map(|index| (index ^ seed).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

fn integrity(store: &Store) -> Vec<String> {
    store.integrity_check().expect("PRAGMA integrity_check")
}

#[test]
fn a_download_on_a_full_staging_disk_waits_for_space_and_resumes_with_the_right_bytes() {
    if !have_root() {
        return;
    }
    // 1 MiB for staging and inbox, a 3 MiB file: the transfer runs out of space a third of
    // the way through.
    let mut world = World::new(SmallDisk::Staging, "1m");
    let fixture = HttpFixture::start();
    let body = content(3 * 1024 * 1024, 1);
    fixture.route("/big.bin", FixtureRoute::file(body.clone()));
    let mut submitted = NewDownload::new(fixture.url("/big.bin"));
    submitted.expected_sha256 = Some(sha256_hex(&body));
    submitted.max_attempts = Some(MAX_ATTEMPTS);
    let created = world
        .store()
        .create_download(&submitted.validate().expect("a valid download"))
        .expect("create the download");
    let scraper = world.start("sluice-scraper", &[]);
    let part = world.staging.join(format!("{}.part", created.download_id));

    world.wait_for("the download waited for space several times", |store| {
        waits_because(&history(store, created.job_id), "No space left on device")
            >= WAITS_BEFORE_SPACE_RETURNS
    });
    let store = world.store();
    let download = store.get_download(created.download_id).expect("download");
    let error = download.error.clone().unwrap_or_default();
    // Queued between attempts, running during one; never failed.
    assert!(!download.state.is_finished(), "{download:?}");
    assert!(
        error.contains("No space left on device") && error.contains(&*part.to_string_lossy()),
        "the download's error names the cause and the file: {error:?}"
    );
    let job = store.get_job(created.job_id).expect("job");
    assert!(
        job.attempts < MAX_ATTEMPTS,
        "waiting for space used up attempts: {job:?}"
    );
    assert!(
        world.daemons[scraper]
            .process
            .log()
            .lines()
            .any(|line| line.contains("No space left on device")
                && line.contains(&*part.to_string_lossy())
                && line.contains(&format!("download {}", created.download_id))),
        "the scraper's log says which download and file ran out of space:\n{}",
        world.daemons[scraper].process.log()
    );
    assert!(
        files_under(&world.inbox).is_empty(),
        "nothing reaches the inbox half-written: {:?}",
        files_under(&world.inbox)
    );
    let kept = std::fs::read(&part).expect("the partial file is kept for the resume");
    assert!(
        !kept.is_empty() && body.starts_with(&kept),
        "the partial file holds the first {} bytes of the file, nothing else",
        kept.len()
    );

    world.disk.resize("16m").expect("give the space back");
    world.wait_for("the download succeeded once space returned", |store| {
        store
            .get_download(created.download_id)
            .is_ok_and(|download| download.state == DownloadState::Succeeded)
    });
    let download = world.store().get_download(created.download_id).unwrap();
    let final_path = PathBuf::from(download.final_path.expect("a final path"));
    assert_eq!(final_path.parent(), Some(world.inbox.as_path()));
    assert!(
        std::fs::read(&final_path).expect("the downloaded file") == body,
        "the file in the inbox has exactly the served bytes"
    );
    assert_eq!(files_under(&world.inbox), vec![final_path]);
    assert!(
        files_under(&world.staging).is_empty(),
        "no partial file is left in staging"
    );
    let requests = fixture.requests_for("/big.bin");
    assert!(
        requests.iter().skip(1).all(|request| request
            .range
            .as_deref()
            .is_some_and(|range| range != "bytes=0-")),
        "every later attempt resumed where the partial file ended: {requests:?}"
    );
    world.assert_all_running();
}

#[test]
fn an_ingest_into_a_full_library_waits_for_space_and_files_one_document() {
    if !have_root() {
        return;
    }
    // A 1 MiB library on its own file system, a 3 MiB file: the copy into the library (a
    // rename cannot cross file systems) runs out of space.
    let mut world = World::new(SmallDisk::Library, "1m");
    world.start_monitor();
    let worker = world.start("sluice-ingest-worker", &["--instance", "1"]);
    let body = content(3 * 1024 * 1024, 2);
    let source = world.drop_in_inbox("big.bin", &body);

    let mut job_id = None;
    world.wait_for("the ingest waited for space several times", |store| {
        job_id = files(store).first().and_then(|file| file.job_id);
        job_id.is_some_and(|job_id| {
            waits_because(&history(store, job_id), "No space left on device")
                >= WAITS_BEFORE_SPACE_RETURNS
        })
    });
    let job_id = job_id.unwrap();
    let store = world.store();
    let job = store.get_job(job_id).expect("job");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("No space left on device")
            && error.contains(&*world.library.to_string_lossy()),
        "the job's error names the cause and the library: {error:?}"
    );
    assert!(
        job.attempts < MAX_ATTEMPTS,
        "waiting for space used up attempts: {job:?}"
    );
    assert!(
        world.daemons[worker]
            .process
            .log()
            .lines()
            .any(|line| line.contains("No space left on device")
                && line.contains(&format!("job {job_id}"))),
        "the worker's log says which job ran out of space:\n{}",
        world.daemons[worker].process.log()
    );
    // Stopped, so that no attempt is copying while the library is looked at: whatever is
    // there now was left behind.
    world.assert_all_running();
    let mut stopped = world.daemons.remove(worker);
    let status = stopped
        .process
        .terminate(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(status.success(), "the worker stops cleanly: {status}");
    let job = store.get_job(job_id).expect("job");
    assert!(
        !job.state.is_terminal() && job.attempts == 0,
        "the job waits with its attempts intact: {job:?}"
    );
    assert!(
        documents(&store).is_empty(),
        "no document before the file is filed"
    );
    assert_eq!(
        files_under(&world.library),
        Vec::<PathBuf>::new(),
        "no partial copy is left in the library"
    );
    assert!(
        std::fs::read(&source).expect("the source stays in the inbox") == body,
        "the source is untouched"
    );

    world.disk.resize("16m").expect("give the space back");
    world.start("sluice-ingest-worker", &["--instance", "1"]);
    world.wait_for("the ingest succeeded once space returned", |store| {
        store
            .get_job(job_id)
            .is_ok_and(|job| job.state == JobState::Succeeded)
    });
    let store = world.store();
    let documents = documents(&store);
    assert_eq!(documents.len(), 1, "exactly one document: {documents:?}");
    let library_path = documents[0].library_path.clone().expect("a library path");
    assert!(
        std::fs::read(&library_path).expect("the library file") == body,
        "the library holds exactly the ingested bytes"
    );
    assert_eq!(
        documents[0].blake3,
        blake3::hash(&body).to_hex().to_string()
    );
    assert_eq!(files_under(&world.library), vec![library_path]);
    assert!(!source.exists(), "the consumed source left the inbox");
    world.assert_all_running();
}

#[test]
fn a_full_database_disk_stops_recording_and_claiming_and_both_resume_without_loss() {
    if !have_root() {
        return;
    }
    let mut world = World::new(SmallDisk::Database, "8m");
    let monitor = world.start_monitor();
    world.start_web();
    // Queued while there is space, with no worker running yet.
    let before: Vec<Vec<u8>> = (0..3)
        .map(|index| content(20_000 + index, 10 + index as u32))
        .collect();
    for (index, body) in before.iter().enumerate() {
        world.drop_in_inbox(&format!("before-{index}.bin"), body);
    }
    world.wait_for("the first files were queued", |store| {
        files(store).len() == before.len()
    });

    world.disk.fill("filler").expect("fill the database's disk");
    assert_eq!(world.disk.free_bytes(), 0);
    let during: Vec<Vec<u8>> = (0..3)
        .map(|index| content(30_000 + index, 20 + index as u32))
        .collect();
    for (index, body) in during.iter().enumerate() {
        world.drop_in_inbox(&format!("during-{index}.bin"), body);
    }
    world.daemons[monitor].process.wait_for_log_lines(
        &[
            "cannot record",
            &*world.inbox.join("during-").to_string_lossy(),
            "the disk holding the database is full",
            "walking the folders again",
        ],
        1,
        DEADLINE,
    );
    // The monitor does not give up on the files after a round of attempts: it walks the
    // folder again, and again after that walk failed to record them too.
    world.daemons[monitor].process.wait_for_log_lines(
        &[
            "reconcile walk finished",
            "files not recorded, trying again",
        ],
        2,
        DEADLINE,
    );
    let workers = [
        world.start("sluice-ingest-worker", &["--instance", "1"]),
        world.start("sluice-ingest-worker", &["--instance", "2"]),
    ];
    for worker in workers {
        world.daemons[worker].process.wait_for_log_lines(
            &[
                "cannot claim or complete jobs",
                "the disk holding the database is full",
            ],
            2,
            DEADLINE,
        );
    }
    let (status, body) = world.post_download("http://127.0.0.1:9/while-full.bin");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("disk holding the database is full")),
        "the API says why: {body}"
    );
    let store = world.store();
    assert_eq!(
        files(&store).len(),
        before.len(),
        "nothing was recorded while the disk was full"
    );
    assert!(documents(&store).is_empty());
    assert!(
        store
            .list_jobs(&Default::default(), page())
            .expect("list jobs")
            .items
            .iter()
            .all(|job| job.state == JobState::Queued && job.attempts == 0),
        "no claim went through"
    );
    assert_eq!(integrity(&store), vec!["ok".to_owned()]);
    drop(store);
    world.assert_all_running();

    std::fs::remove_file(world.disk.path().join("filler")).expect("give the space back");
    let inputs = before.len() + during.len();
    world.wait_for("every input became a document", |store| {
        documents(store).len() >= inputs
            && files(store).iter().all(|file| file.document_id.is_some())
    });
    let (status, body) = world.post_download("http://127.0.0.1:9/after.bin");
    assert_eq!(status, 201, "{body}");
    let store = world.store();
    let mut expected: Vec<String> = before
        .iter()
        .chain(&during)
        .map(|body| blake3::hash(body).to_hex().to_string())
        .collect();
    expected.sort();
    let mut found: Vec<String> = documents(&store)
        .iter()
        .map(|document| document.blake3.clone())
        .collect();
    found.sort();
    assert_eq!(found, expected, "every input is exactly one document");
    assert_eq!(files(&store).len(), inputs);
    assert_eq!(integrity(&store), vec!["ok".to_owned()]);
    world.assert_all_running();
}

#[test]
fn a_commit_too_large_for_the_database_disk_waits_for_space_and_commits_once() {
    if !have_root() {
        return;
    }
    let mut world = World::new(SmallDisk::Database, "8m");
    world.start_monitor();
    let worker = world.start("sluice-ingest-worker", &["--instance", "1"]);
    // Fill the disk, then give back a little: the small writes (recording the file, claiming
    // the job, its heartbeats) fit, the document's 2 MiB of searchable text does not.
    world.disk.fill("filler").expect("fill the database's disk");
    let filler = world.disk.path().join("filler");
    let length = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|file| file.set_len(length - 512 * 1024))
        .expect("free 512 KiB");
    let mut text = Vec::new();
    for index in 0..200_000 {
        write!(text, "word{index} ").unwrap();
    }
    writeln!(text, "needleword").unwrap();
    world.drop_in_inbox("large.txt", &text);

    let mut job_id = None;
    world.wait_for("the commit waited for space several times", |store| {
        job_id = files(store).first().and_then(|file| file.job_id);
        job_id.is_some_and(|job_id| {
            waits_because(&history(store, job_id), "full") >= WAITS_BEFORE_SPACE_RETURNS
        })
    });
    let job_id = job_id.unwrap();
    let store = world.store();
    let job = store.get_job(job_id).expect("job");
    assert!(
        job.attempts < MAX_ATTEMPTS,
        "waiting for space used up attempts: {job:?}"
    );
    assert!(documents(&store).is_empty(), "no document was committed");
    assert!(
        world.daemons[worker]
            .process
            .log()
            .lines()
            .any(|line| line.contains("full") && line.contains(&format!("job {job_id}"))),
        "the worker's log says which job could not be committed:\n{}",
        world.daemons[worker].process.log()
    );
    assert_eq!(integrity(&store), vec!["ok".to_owned()]);
    drop(store);

    std::fs::remove_file(&filler).expect("give the space back");
    world.wait_for("the ingest succeeded once space returned", |store| {
        store
            .get_job(job_id)
            .is_ok_and(|job| job.state == JobState::Succeeded)
    });
    let store = world.store();
    let documents = documents(&store);
    assert_eq!(documents.len(), 1, "exactly one document: {documents:?}");
    let library_path = documents[0].library_path.clone().expect("a library path");
    assert!(std::fs::read(&library_path).unwrap() == text);
    let hits = store
        .search_documents(
            &sluice_core::policy::parse_search_query("needleword").unwrap(),
            page(),
        )
        .expect("search")
        .items;
    assert_eq!(hits.len(), 1, "its text is searchable");
    assert_eq!(integrity(&store), vec!["ok".to_owned()]);
    world.assert_all_running();
}
