//! Queue limits (issue 9) with the real daemons on a private bus and a real store: a download
//! beyond `[scraper] max_pending` is refused over HTTP (429, `Retry-After`, `queue_full`),
//! D-Bus (`org.sluice.Error.QueueFull`) and sluicectl (exit status 75) and recorded nowhere;
//! the monitor never drops a file detected beyond `[ingest] max_pending`: it holds it, and
//! queues it exactly once as the queue drains (through the workers' signals, its status tick,
//! or its start), or marks it gone when it left first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sluice_core::bus::{BusError, DownloadOptions, MonitorProxy, ScraperProxy};
use sluice_core::store::{
    DocumentFilter, FileRecord, FileState, INGEST_JOB_KIND, JobFilter, JobState, NewJob,
    PageRequest, Store,
};

use crate::support::{
    DEADLINE, DaemonProcess, SuiteFixture, WEB_TEST_TOKEN, WebDaemon, binary_path, http_agent,
    sha256_hex, wait_until,
};

/// A public address literal: nothing ever connects to it here (downloads stay queued, or the
/// scraper has a job of its own in the way), and the policy needs no DNS for it.
const PUBLIC_URL: &str = "https://93.184.216.34/models/weights.bin";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Adds `keys` at the top of `[table]` in the fixture's configuration file.
fn set_keys(fixture: &SuiteFixture, table: &str, keys: &str) {
    let text = std::fs::read_to_string(&fixture.config_path).expect("config");
    let header = format!("[{table}]\n");
    assert!(text.contains(&header), "no [{table}] in {text}");
    let text = text.replacen(&header, &format!("{header}{keys}\n"), 1);
    std::fs::write(&fixture.config_path, text).expect("config");
}

fn count_downloads(store: &Store) -> u64 {
    store
        .download_counts()
        .expect("download counts")
        .values()
        .sum()
}

fn count_jobs(store: &Store) -> u64 {
    store.job_counts().expect("job counts").values().sum()
}

fn sluicectl(fixture: &SuiteFixture, arguments: &[&str]) -> Output {
    std::process::Command::new(binary_path("sluicectl"))
        .args(arguments)
        .env("SLUICE_CONFIG", &fixture.config_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sluicectl")
}

#[test]
fn a_download_beyond_the_scraper_limit_gets_429_with_retry_after_and_creates_nothing() {
    let fixture = SuiteFixture::new("", "");
    set_keys(&fixture, "scraper", "max_pending = 2");
    let web = WebDaemon::start(&fixture);
    let post = || {
        let mut response = http_agent()
            .post(format!("{}/api/downloads", web.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(json!({ "url": PUBLIC_URL }).to_string())
            .expect("POST /api/downloads");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap())
            .expect("a JSON body");
        (status, retry_after, body)
    };
    // No scraper runs: the two accepted downloads stay queued and fill the queue.
    let mut created = Vec::new();
    for _ in 0..2 {
        let (status, retry_after, body) = post();
        assert_eq!((status, retry_after), (201, None), "{body}");
        created.push(body["download"]["id"].as_i64().unwrap());
    }
    let (status, retry_after, body) = post();
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry_after.as_deref(), Some("10"));
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("download queue is full") && message.contains("limit is 2"),
        "{message}"
    );
    let store = fixture.store();
    assert_eq!(
        count_downloads(&store),
        2,
        "the refused download left no row"
    );
    assert_eq!(count_jobs(&store), 2, "the refused download left no job");
    assert!(
        web.process
            .log()
            .lines()
            .all(|line| !line.contains("ERROR")),
        "a full queue is not an error of sluice-web: {}",
        web.process.log()
    );

    // One leaves the queue: there is room for exactly one more.
    let response = http_agent()
        .delete(format!("{}/api/downloads/{}", web.origin, created[0]))
        .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
        .call()
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(post().0, 201);
    assert_eq!(post().0, 429);
}

#[test]
fn add_download_and_sluicectl_download_beyond_the_limit_fail_as_queue_full() {
    let fixture = SuiteFixture::new("", "");
    set_keys(&fixture, "scraper", "max_pending = 1");
    // The one pending download: a job the scraper may not claim for an hour.
    let mut store = fixture.store();
    store
        .enqueue(&NewJob {
            run_at_ms: Some(sluice_core::store::now_ms() + 3_600_000),
            ..NewJob::new("download", json!({ "download_id": 1 }))
        })
        .expect("enqueue");
    let mut scraper = fixture.start_daemon("sluice-scraper", &[], "scraper.log");
    scraper.wait_for_log_lines(&["ready", "staging="], 1, DEADLINE);

    let runtime = runtime();
    let connection = fixture.connect(&runtime);
    let refused = runtime.block_on(async {
        let proxy = ScraperProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .expect("scraper proxy");
        proxy
            .add_download(
                PUBLIC_URL,
                DownloadOptions {
                    sha256: None,
                    bundle: None,
                    file_name: None,
                    max_bytes: None,
                    source: None,
                }
                .to_variants(),
            )
            .await
    });
    // The proxy turns the reply's error name back into the variant, so this is the name
    // org.sluice.Error.QueueFull.
    match refused {
        Err(BusError::QueueFull(message)) => {
            assert!(message.contains("limit is 1"), "{message}")
        }
        other => panic!("expected org.sluice.Error.QueueFull, got {other:?}"),
    }
    assert!(
        scraper
            .log()
            .contains(&format!("download of {PUBLIC_URL} refused")),
        "{}",
        scraper.log()
    );

    // sluicectl through the scraper's D-Bus object, then, with the scraper stopped, through
    // the store: the same exit status and message either way.
    let through_bus = sluicectl(&fixture, &["download", PUBLIC_URL]);
    assert_eq!(through_bus.status.code(), Some(75), "{through_bus:?}");
    let stderr = String::from_utf8_lossy(&through_bus.stderr);
    assert!(stderr.contains("download queue is full"), "{stderr}");
    scraper.signal(Signal::SIGTERM).unwrap();
    scraper.wait_for_exit(DEADLINE).unwrap();
    let through_store = sluicectl(&fixture, &["--json", "download", PUBLIC_URL]);
    assert_eq!(through_store.status.code(), Some(75), "{through_store:?}");
    let error: Value = serde_json::from_slice(&through_store.stdout)
        .or_else(|_| serde_json::from_slice(&through_store.stderr))
        .expect("JSON error output");
    assert_eq!(error["error"]["code"], "queue_full", "{error}");

    assert_eq!(count_downloads(&store), 0, "nothing was recorded");
    assert_eq!(count_jobs(&store), 1);
    // The documented exit status.
    let help = sluicectl(&fixture, &["--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("75 queue full"),
        "{help:?}"
    );
}

/// A monitor (and, later, workers) over the whole-suite configuration with `[ingest]
/// max_pending = limit` and the given status interval.
struct HeldSetup {
    fixture: SuiteFixture,
}

impl HeldSetup {
    fn new(limit: u32, status_interval: &str) -> HeldSetup {
        let fixture = SuiteFixture::for_whole_suite();
        set_keys(&fixture, "ingest", &format!("max_pending = {limit}"));
        let text = std::fs::read_to_string(&fixture.config_path).unwrap();
        let text = text.replacen(
            "status_interval = \"200ms\"",
            &format!("status_interval = \"{status_interval}\""),
            1,
        );
        std::fs::write(&fixture.config_path, text).unwrap();
        HeldSetup { fixture }
    }

    fn inbox(&self) -> PathBuf {
        self.fixture.directory.path().join("inbox")
    }

    fn start_monitor(&self) -> DaemonProcess {
        let log = self.fixture.directory.path().join("monitor.log");
        let already = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("reconcile walk finished")
            .count();
        let mut monitor = self
            .fixture
            .start_daemon("sluice-monitor", &[], "monitor.log");
        monitor.wait_for_log_lines(&["reconcile walk finished"], already + 1, DEADLINE);
        monitor
    }

    fn files(&self) -> Vec<FileRecord> {
        let mut files = self
            .fixture
            .store()
            .list_files(&Default::default(), page())
            .expect("files")
            .items;
        files.sort_by_key(|file| file.id);
        files
    }

    fn held(&self) -> Vec<FileRecord> {
        self.files()
            .into_iter()
            .filter(|file| file.state == FileState::Detected && file.job_id.is_none())
            .collect()
    }

    fn pending(&self) -> u64 {
        self.fixture
            .store()
            .pending_jobs(INGEST_JOB_KIND, 1_000_000)
            .expect("pending")
    }

    fn ingest_jobs(&self) -> Vec<sluice_core::store::Job> {
        self.fixture
            .store()
            .list_jobs(
                &JobFilter {
                    kind: Some(INGEST_JOB_KIND.to_owned()),
                    ..Default::default()
                },
                page(),
            )
            .expect("jobs")
            .items
    }

    /// The monitor's `FilesHeld` property, read from the bus.
    fn files_held_property(&self, runtime: &tokio::runtime::Runtime) -> Option<u64> {
        let connection = self.fixture.connect(runtime);
        runtime.block_on(async {
            let proxy = MonitorProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .ok()?;
            proxy.files_held().await.ok()
        })
    }
}

fn page() -> PageRequest {
    PageRequest {
        before_id: None,
        limit: 1000,
    }
}

/// Writes `count` files with distinct contents into `inbox`; returns path → content hash.
fn drop_files(inbox: &Path, prefix: &str, count: usize) -> Vec<(PathBuf, String)> {
    (0..count)
        .map(|index| {
            let path = inbox.join(format!("{prefix}-{index:03}.txt"));
            let content = format!("{prefix} file number {index}\n");
            std::fs::write(&path, &content).unwrap();
            (path, sha256_hex(content.as_bytes()))
        })
        .collect()
}

#[test]
fn files_beyond_the_ingest_limit_are_held_and_each_becomes_one_document_as_workers_drain() {
    const LIMIT: u64 = 3;
    const FILES: usize = 24;
    // A status tick an hour away: the held files can only be queued through the workers'
    // job signals, which this test is about.
    let setup = HeldSetup::new(LIMIT as u32, "1h");
    let mut monitor = setup.start_monitor();
    let mut dropped = drop_files(&setup.inbox(), "doc", FILES);
    let recorded = wait_until(DEADLINE, || {
        setup.files().len() == FILES && setup.held().len() == FILES - LIMIT as usize
    });
    assert!(
        recorded,
        "expected {FILES} files recorded, {LIMIT} with a job: {:?}\n{}",
        setup.files(),
        monitor.log()
    );
    assert_eq!(setup.pending(), LIMIT, "exactly the limit is pending");
    assert_eq!(setup.ingest_jobs().len() as u64, LIMIT);
    let runtime = runtime();
    assert!(
        wait_until(DEADLINE, || setup.files_held_property(&runtime)
            == Some((FILES as u64) - LIMIT)),
        "FilesHeld: {:?}",
        setup.files_held_property(&runtime)
    );
    assert!(
        monitor.log().contains("the ingest queue is full"),
        "{}",
        monitor.log()
    );

    // Before any worker runs: one held file leaves (it must be marked gone, never queued),
    // one is rewritten (its new version is the one ingested, once).
    let held = setup.held();
    let leaving = held[0].path.clone();
    std::fs::remove_file(&leaving).unwrap();
    dropped.retain(|(path, _)| *path != leaving);
    let rewritten = held[1].path.clone();
    let new_content = "the second version of a held file\n";
    std::fs::write(&rewritten, new_content).unwrap();
    for (path, hash) in &mut dropped {
        if *path == rewritten {
            *hash = sha256_hex(new_content.as_bytes());
        }
    }
    let new_size = new_content.len() as u64;
    assert!(
        wait_until(DEADLINE, || {
            let files = setup.files();
            files
                .iter()
                .any(|file| file.path == leaving && file.state == FileState::Gone)
                && files.iter().any(|file| {
                    file.path == rewritten && file.size == new_size && file.job_id.is_none()
                })
        }),
        "the file that left is not gone, or the new version is not recorded held: {:#?}\n{}",
        setup.files(),
        monitor.log()
    );

    let mut workers: Vec<DaemonProcess> = ["1", "2"]
        .iter()
        .map(|instance| {
            setup.fixture.start_daemon(
                "sluice-ingest-worker",
                &["--instance", instance],
                &format!("worker-{instance}.log"),
            )
        })
        .collect();
    let mut most_pending = 0;
    let drained = wait_until(DEADLINE, || {
        most_pending = most_pending.max(setup.pending());
        let files = setup.files();
        files
            .iter()
            .filter(|file| file.state == FileState::Ingested)
            .count()
            == FILES - 1
    });
    let logs = || {
        format!(
            "--- monitor\n{}\n--- worker 1\n{}\n--- worker 2\n{}",
            monitor.log(),
            workers[0].log(),
            workers[1].log()
        )
    };
    assert!(
        drained,
        "not every file was ingested: {:#?}\n{}",
        setup.files(),
        logs()
    );
    assert!(
        most_pending <= LIMIT,
        "{most_pending} ingest jobs were pending at once; the limit is {LIMIT}"
    );

    // Nothing dropped, nothing twice: every file left is one document of its last content,
    // the file that left has no job, and each recorded version had one job.
    let files = setup.files();
    let store = setup.fixture.store();
    let documents = store
        .list_documents(&DocumentFilter::default(), page())
        .expect("documents")
        .items;
    assert_eq!(documents.len(), FILES - 1, "{documents:#?}");
    let hashes: BTreeSet<&str> = documents.iter().map(|doc| doc.sha256.as_str()).collect();
    let expected: BTreeSet<&str> = dropped.iter().map(|(_, hash)| hash.as_str()).collect();
    assert_eq!(hashes, expected);
    let gone = files.iter().find(|file| file.path == leaving).unwrap();
    assert_eq!((gone.state, gone.job_id), (FileState::Gone, None));
    let jobs = setup.ingest_jobs();
    assert!(
        jobs.iter().all(|job| job.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let mut unique_keys: Vec<&str> = jobs
        .iter()
        .map(|job| job.unique_key.as_deref().unwrap())
        .collect();
    unique_keys.sort();
    unique_keys.dedup();
    assert_eq!(unique_keys.len(), jobs.len());
    // The rewritten file's first version never had a job: only the version it was queued
    // with exists as a job, so there are exactly as many jobs as documents.
    assert_eq!(jobs.len(), FILES - 1, "{jobs:#?}");
    assert!(setup.held().is_empty());
    assert!(
        wait_until(DEADLINE, || setup.files_held_property(&runtime) == Some(0)),
        "FilesHeld stayed {:?}",
        setup.files_held_property(&runtime)
    );
    assert!(
        monitor.log().contains("held file "),
        "held files are named when queued: {}",
        monitor.log()
    );
    for worker in &mut workers {
        worker.signal(Signal::SIGTERM).unwrap();
    }
    monitor.signal(Signal::SIGTERM).unwrap();
    assert_eq!(monitor.wait_for_exit(DEADLINE).unwrap().code(), Some(0));
}

#[test]
fn held_files_are_queued_on_the_status_tick_and_at_start_without_any_signal() {
    const LIMIT: u64 = 2;
    const FILES: usize = 7;
    let setup = HeldSetup::new(LIMIT as u32, "200ms");
    let mut monitor = setup.start_monitor();
    drop_files(&setup.inbox(), "tick", FILES);
    assert!(
        wait_until(DEADLINE, || setup.files().len() == FILES
            && setup.held().len() == FILES - LIMIT as usize),
        "{:?}\n{}",
        setup.files(),
        monitor.log()
    );
    let status = sluicectl(&setup.fixture, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        wait_until(DEADLINE, || {
            let output = sluicectl(&setup.fixture, &["status"]);
            String::from_utf8_lossy(&output.stdout).contains("5 held (ingest queue full)")
        }),
        "sluicectl status does not show the held files: {status}"
    );

    // Jobs end without a worker, so without any bus signal: the status tick notices.
    let mut store = setup.fixture.store();
    succeed_ingest_jobs(&mut store, 1);
    assert!(
        wait_until(DEADLINE, || setup.held().len()
            == FILES - LIMIT as usize - 1
            && setup.pending() == LIMIT),
        "held {:?}\n{}",
        setup.held(),
        monitor.log()
    );

    // At start: stopped with files held, two places freed meanwhile, and a status tick an
    // hour away; the start queues them.
    monitor.signal(Signal::SIGTERM).unwrap();
    monitor.wait_for_exit(DEADLINE).unwrap();
    succeed_ingest_jobs(&mut store, 1);
    succeed_ingest_jobs(&mut store, 1);
    let text = std::fs::read_to_string(&setup.fixture.config_path).unwrap();
    std::fs::write(
        &setup.fixture.config_path,
        text.replacen("status_interval = \"200ms\"", "status_interval = \"1h\"", 1),
    )
    .unwrap();
    let monitor = setup.start_monitor();
    assert!(
        wait_until(DEADLINE, || setup.held().len()
            == FILES - LIMIT as usize - 3
            && setup.pending() == LIMIT),
        "held {:?}\n{}",
        setup.held(),
        monitor.log()
    );
    // Every version queued once: as many jobs as files that left the held set.
    let jobs = setup.ingest_jobs();
    assert_eq!(jobs.len(), LIMIT as usize + 3, "{jobs:#?}");
    let mut file_ids: Vec<i64> = jobs
        .iter()
        .map(|job| job.payload["file_id"].as_i64().unwrap())
        .collect();
    file_ids.sort();
    file_ids.dedup();
    assert_eq!(file_ids.len(), jobs.len());
    // Oldest first: the files with jobs are the first ones recorded.
    let files = setup.files();
    assert!(
        files[..LIMIT as usize + 3]
            .iter()
            .all(|file| file.job_id.is_some()),
        "{files:#?}"
    );
}

#[test]
fn an_upload_beyond_the_ingest_limit_gets_429_and_stores_nothing() {
    let fixture = SuiteFixture::new("", "");
    set_keys(&fixture, "ingest", "max_pending = 1");
    let web = WebDaemon::start(&fixture);
    let upload = |name: &str| {
        let mut response = http_agent()
            .post(format!("{}/api/documents?name={name}", web.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .header("Content-Type", "application/octet-stream")
            .send(format!("the content of {name}\n").into_bytes())
            .expect("POST /api/documents");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let text = response.body_mut().read_to_string().unwrap();
        (status, retry_after, text)
    };
    // No worker runs: the first upload's job fills the queue.
    let (status, _, body) = upload("first.txt");
    assert_eq!(status, 202, "{body}");
    let (status, retry_after, body) = upload("second.txt");
    assert_eq!(
        (status, retry_after.as_deref()),
        (429, Some("10")),
        "{body}"
    );
    let body: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[ingest] max_pending"),
        "{body}"
    );
    let root = fixture.directory.path();
    let names = |folder: &str| -> Vec<String> {
        std::fs::read_dir(root.join(folder))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names("inbox"),
        ["first.txt"],
        "the refused upload stored nothing"
    );
    assert!(names("staging").is_empty(), "{:?}", names("staging"));
    let store = fixture.store();
    assert_eq!(count_jobs(&store), 1);
    assert_eq!(
        store
            .list_files(&Default::default(), page())
            .unwrap()
            .items
            .len(),
        1
    );
}

/// A backlog larger than the walks' hand-off (4 chunks of 512 files between the walk and the
/// database): the monitor follows the number of held files through its own commits instead of
/// counting every held row at each look (issue 13), so the number it publishes must stay the
/// database's through a reconcile, a crash and restart, files leaving, and the drain, and the
/// held files must still be queued oldest first.
#[test]
fn a_backlog_larger_than_the_walks_hand_off_stays_counted_and_drains_oldest_first_across_a_crash() {
    const LIMIT: u64 = 500;
    const FILES: usize = 3000;
    const LEAVING: usize = 10;
    let setup = HeldSetup::new(LIMIT as u32, "200ms");
    drop_files(&setup.inbox(), "backlog", FILES);
    let runtime = runtime();
    let roots = [setup.inbox()];
    let held_in_database = || {
        setup
            .fixture
            .store()
            .count_held_files(&roots, 0)
            .expect("count held files")
            .count
    };
    // FilesHeld agrees with the database (read after it, so a look in between cannot pass for
    // agreement: the property is only compared once the database has settled on `expected`).
    let published_matches = |expected: u64| {
        wait_until(DEADLINE, || {
            held_in_database() == expected && setup.files_held_property(&runtime) == Some(expected)
        })
    };

    // The start's reconcile records every file; the queue takes LIMIT of them.
    let mut monitor = setup.start_monitor();
    let backlog = FILES as u64 - LIMIT;
    assert!(
        published_matches(backlog),
        "held {} in the database, FilesHeld {:?}\n{}",
        held_in_database(),
        setup.files_held_property(&runtime),
        monitor.log()
    );
    assert_eq!(setup.pending(), LIMIT);

    // A crash, and the whole queue finished meanwhile without any signal: the next start
    // counts again from the database and queues LIMIT more.
    monitor.signal(Signal::SIGKILL).unwrap();
    monitor.wait_for_exit(DEADLINE).unwrap();
    let mut store = setup.fixture.store();
    succeed_ingest_jobs(&mut store, LIMIT as usize);
    let mut monitor = setup.start_monitor();
    assert!(
        published_matches(backlog - LIMIT) && setup.pending() == LIMIT,
        "held {} in the database, FilesHeld {:?}, {} pending\n{}",
        held_in_database(),
        setup.files_held_property(&runtime),
        setup.pending(),
        monitor.log()
    );

    // The newest held files leave their folder: marked gone, and no longer held.
    let newest_held = store
        .held_files(&roots, 0, FILES)
        .expect("held files")
        .split_off(backlog as usize - LIMIT as usize - LEAVING);
    for file in &newest_held {
        std::fs::remove_file(&file.path).unwrap();
    }
    let remaining = backlog - LIMIT - LEAVING as u64;
    assert!(
        published_matches(remaining),
        "held {} in the database, FilesHeld {:?}\n{}",
        held_in_database(),
        setup.files_held_property(&runtime),
        monitor.log()
    );

    // The queue drains a limit's worth at a time (the status tick notices): every held file
    // is queued, once, in the order it was recorded.
    let drained = wait_until(DEADLINE * 4, || {
        succeed_ingest_jobs(&mut store, LIMIT as usize);
        held_in_database() == 0
    });
    assert!(
        drained && published_matches(0),
        "held {} in the database, FilesHeld {:?}\n{}",
        held_in_database(),
        setup.files_held_property(&runtime),
        monitor.log()
    );
    let jobs = crate::support::all_jobs_of_kind(&store, INGEST_JOB_KIND);
    let file_ids: Vec<i64> = jobs
        .iter()
        .map(|job| job.payload["file_id"].as_i64().unwrap())
        .collect();
    let distinct: BTreeSet<i64> = file_ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        FILES - LEAVING,
        "one job per file that stayed"
    );
    assert_eq!(
        file_ids.len(),
        FILES - LEAVING,
        "one job per file that stayed"
    );
    let gone: BTreeSet<i64> = newest_held.iter().map(|file| file.id).collect();
    assert!(distinct.is_disjoint(&gone), "a file that left was queued");
    // The drain (after the two starts' LIMIT each, which the walks recorded in the order
    // they found the files) queued the held files oldest first.
    let drain = &file_ids[2 * LIMIT as usize..];
    assert!(
        drain.windows(2).all(|pair| pair[0] < pair[1]),
        "the held files were not queued oldest first: {drain:?}"
    );
    monitor.signal(Signal::SIGTERM).unwrap();
    assert_eq!(monitor.wait_for_exit(DEADLINE).unwrap().code(), Some(0));
}

/// Claims up to `count` queued ingest jobs and succeeds them, as a worker would, without a
/// worker (so without any bus signal).
fn succeed_ingest_jobs(store: &mut Store, count: usize) {
    let claimed = store
        .claim_jobs(
            &"test".into(),
            &[INGEST_JOB_KIND],
            count,
            std::time::Duration::from_secs(30),
        )
        .expect("claim");
    for job in claimed {
        store
            .succeed_job(job.id, &job.lease_token, &json!({}))
            .expect("succeed");
    }
}
