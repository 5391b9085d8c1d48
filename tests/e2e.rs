//! The whole suite end to end: sluice-monitor, two sluice-ingest-workers, sluice-scraper and
//! sluice-web as real processes on one private dbus-daemon, with one state directory and one
//! configuration file. A URL served by a local HTTP fixture is submitted through the web API
//! and travels scraper → inbox → monitor → ingest job → worker → library and catalogue → web
//! and sluicectl, while an event stream opened beforehand records the signals; a second copy
//! of the same bytes dropped into the inbox is recognised as a duplicate.

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::store::{DownloadState, FileState, JobState};

use crate::support::{
    DEADLINE, FixtureRoute, HttpFixture, STARTUP_DEADLINE, SUITE_WORKERS, Suite,
    event_stream_lines, files_under, sha256_hex, wait_every,
};

/// How long the whole path (download, detection, ingest) may take on a slow, busy machine.
const PIPELINE_DEADLINE: Duration = Duration::from_secs(120);

/// One server-sent event: its `event:` name and its `data:` parsed as JSON.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    data: Value,
}

impl Event {
    fn is(&self, name: &str, field: &str, value: &Value) -> bool {
        self.name == name && &self.data[field] == value
    }
}

/// `GET /api/events` read on a thread; every event is kept in arrival order.
struct EventRecorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl EventRecorder {
    /// Opens the stream and returns once the web said `: connected` (its subscription to the
    /// bus signals exists from then on, so nothing that happens afterwards is missed).
    fn open(suite: &Suite) -> EventRecorder {
        // No overall timeout: the stream stays open for the whole test.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let lines = event_stream_lines(&agent, &suite.web.origin);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let (connected_sender, connected) = mpsc::channel();
        std::thread::spawn(move || {
            let mut name: Option<String> = None;
            for line in lines {
                if line == ": connected" {
                    let _ = connected_sender.send(());
                } else if let Some(event) = line.strip_prefix("event: ") {
                    name = Some(event.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(data).expect("event data is JSON");
                    let name = name.take().unwrap_or_else(|| "message".to_owned());
                    sink.lock().unwrap().push(Event { name, data });
                } else if line.is_empty() {
                    name = None;
                }
            }
        });
        connected
            .recv_timeout(STARTUP_DEADLINE)
            .expect("the event stream never said it is connected");
        EventRecorder { events }
    }

    fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event satisfies `wanted`; returns its position in the stream.
    fn wait_for(&self, what: &str, wanted: impl Fn(&Event) -> bool) -> usize {
        let mut position = None;
        let seen = wait_every(Duration::from_millis(20), PIPELINE_DEADLINE, || {
            position = self.snapshot().iter().position(&wanted);
            position.is_some()
        });
        assert!(
            seen,
            "no {what} event within {PIPELINE_DEADLINE:?}; the stream had {:#?}",
            self.snapshot()
        );
        position.unwrap()
    }
}

/// A PNG signature and an IHDR chunk of 640×480 pixels, then deterministic filler up to
/// `length` bytes: the worker recognises the type from the magic bytes.
fn png_content(length: usize) -> Vec<u8> {
    let mut content = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    content.extend_from_slice(&640u32.to_be_bytes());
    content.extend_from_slice(&480u32.to_be_bytes());
    content.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    let filler = (content.len()..length)
        .map(|index| (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]);
    content.extend(filler);
    content
}

fn json_stdout(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "sluicectl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "sluicectl printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The documents `GET /api/documents` lists.
fn api_documents(suite: &Suite) -> Vec<Value> {
    let (status, body) = suite.get("/api/documents");
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().expect("items").clone()
}

#[test]
fn a_url_submitted_through_the_web_ends_in_the_library_and_a_second_copy_is_a_duplicate() {
    let started = Instant::now();
    let suite = Suite::start();
    let startup = started.elapsed();
    eprintln!("suite started in {startup:?}");

    // 1. The event stream is open before anything happens.
    let events = EventRecorder::open(&suite);

    // 2. A file served by the fixture, submitted with its SHA-256 and the token.
    let content = png_content(200 * 1024);
    let sha256 = sha256_hex(&content);
    let blake3 = blake3::hash(&content).to_hex().to_string();
    let fixture = HttpFixture::start();
    fixture.route("/files/pixel-map.png", FixtureRoute::file(content.clone()));
    let submitted = Instant::now();
    let (status, created) = suite.post_json(
        "/api/downloads",
        &json!({ "url": fixture.url("/files/pixel-map.png"), "sha256": sha256 }),
    );
    assert_eq!(status, 201, "{created}");
    let download_id = created["download"]["id"].as_i64().expect("download id");
    let download_job = created["job_id"].as_i64().expect("job id");
    assert_eq!(created["download"]["file_name"], "pixel-map.png");

    // 3. The document appears in the catalogue through the API.
    let mut document = Value::Null;
    let listed = wait_every(Duration::from_millis(100), PIPELINE_DEADLINE, || {
        document = api_documents(&suite)
            .into_iter()
            .find(|item| item["sha256"] == sha256.as_str())
            .unwrap_or(Value::Null);
        !document.is_null()
    });
    assert!(
        listed,
        "the download never became a document; fixture saw {:?}; logs:\n{}",
        fixture.requests(),
        suite.logs()
    );
    let pipeline = submitted.elapsed();
    eprintln!("download to document in {pipeline:?}");
    let document_id = document["id"].as_i64().expect("document id");
    let library_path = suite
        .library()
        .join(&blake3[0..2])
        .join(&blake3[2..4])
        .join(&blake3);
    assert_eq!(document["blake3"], blake3.as_str());
    assert_eq!(document["size"], content.len());
    assert_eq!(document["mime"], "image/png");
    assert_eq!(document["original_name"], "pixel-map.png");
    assert_eq!(document["duplicates"], 0);
    assert_eq!(document["metadata"]["width"], 640);
    assert_eq!(document["metadata"]["height"], 480);
    assert_eq!(
        document["library_path"].as_str().map(PathBuf::from),
        Some(library_path.clone())
    );
    let (status, one) = suite.get(&format!("/api/documents/{document_id}"));
    assert_eq!((status, &one["sha256"]), (200, &json!(sha256)));

    // The bytes sit at their content-addressed path; inbox and staging are empty again (the
    // worker moves the file before it commits the document).
    assert_eq!(
        std::fs::read(&library_path).expect("the library file"),
        content
    );
    assert_eq!(files_under(&suite.library()), vec![library_path.clone()]);
    assert_eq!(files_under(&suite.inbox()), Vec::<PathBuf>::new());
    assert_eq!(files_under(&suite.staging()), Vec::<PathBuf>::new());
    assert_eq!(
        fixture.requests_for("/files/pixel-map.png").len(),
        1,
        "one request was enough"
    );

    // The database agrees: the download, the file row and both jobs.
    let store = suite.fixture.store();
    let download = store.get_download(download_id).expect("download row");
    assert_eq!(download.state, DownloadState::Succeeded);
    let inbox_path = suite.inbox().join("pixel-map.png");
    let files = suite.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert_eq!(file.path, inbox_path);
    assert_eq!(file.state, FileState::Ingested);
    assert_eq!(file.document_id, Some(document_id));
    let ingest_job = file.job_id.expect("the file row names its ingest job");
    // The worker commits the document and its job's success in one transaction.
    assert_eq!(
        store.get_job(ingest_job).unwrap().state,
        JobState::Succeeded
    );
    let download_job_ended = wait_every(Duration::from_millis(50), DEADLINE, || {
        store.get_job(download_job).unwrap().state == JobState::Succeeded
    });
    assert!(download_job_ended, "the download job did not succeed");

    // sluicectl reads the same catalogue and queue.
    let listed = json_stdout(&suite.sluicectl(&["docs", "list", "--json"]));
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["id"], document_id);
    assert_eq!(items[0]["sha256"], sha256.as_str());
    assert_eq!(items[0]["blake3"], blake3.as_str());
    assert_eq!(items[0]["mime"], "image/png");
    let jobs = json_stdout(&suite.sluicectl(&["jobs", "list", "--json"]));
    let job = |id: i64| {
        jobs["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|job| job["id"] == id)
            .unwrap_or_else(|| panic!("job {id} missing from {jobs}"))
            .clone()
    };
    assert_eq!(
        (
            job(download_job)["kind"].as_str(),
            job(download_job)["state"].as_str()
        ),
        (Some("download"), Some("succeeded"))
    );
    assert_eq!(
        (
            job(ingest_job)["kind"].as_str(),
            job(ingest_job)["state"].as_str()
        ),
        (Some("ingest"), Some("succeeded"))
    );

    // 4. The event stream: every step of the way, with the ids the database holds.
    let download_id_value = json!(download_id);
    let download_job_value = json!(download_job);
    let ingest_job_value = json!(ingest_job);
    let ingest_finished = events.wait_for("JobFinished (ingest)", |event| {
        event.is("JobFinished", "job_id", &ingest_job_value)
    });
    let download_finished = events.wait_for("DownloadFinished", |event| {
        event.is("DownloadFinished", "download_id", &download_id_value)
    });
    let download_job_finished = events.wait_for("JobFinished (download)", |event| {
        event.is("JobFinished", "job_id", &download_job_value)
    });
    let stream = events.snapshot();
    let position = |what: &str, wanted: &dyn Fn(&Event) -> bool| {
        stream
            .iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("no {what} event in {stream:#?}"))
    };
    let download_queued = position("JobQueued (download)", &|event| {
        event.is("JobQueued", "job_id", &download_job_value)
    });
    let download_started = position("JobStarted (download)", &|event| {
        event.is("JobStarted", "job_id", &download_job_value)
    });
    // The last progress report always comes, with every byte; earlier ones may be rate
    // limited away for a file this small.
    let download_complete = position("DownloadProgress (complete)", &|event| {
        event.is("DownloadProgress", "download_id", &download_id_value)
            && event.data["bytes"] == content.len()
            && event.data["total"] == content.len()
    });
    let detected = position("FileDetected", &|event| {
        event.is("FileDetected", "job_id", &ingest_job_value)
    });
    let ingest_queued = position("JobQueued (ingest)", &|event| {
        event.is("JobQueued", "job_id", &ingest_job_value)
    });
    let ingest_started = position("JobStarted (ingest)", &|event| {
        event.is("JobStarted", "job_id", &ingest_job_value)
    });

    let queued = &stream[download_queued];
    assert_eq!(queued.data["kind"], "download");
    assert_eq!(queued.data["interface"], "org.sluice.Web1");
    assert_eq!(stream[download_started].data["kind"], "download");
    assert_eq!(stream[download_job_finished].data["state"], "succeeded");
    let finished = &stream[download_finished];
    assert_eq!(finished.data["state"], "succeeded");
    assert_eq!(finished.data["path"], inbox_path.to_str().unwrap());
    let detection = &stream[detected];
    assert_eq!(detection.data["path"], inbox_path.to_str().unwrap());
    assert_eq!(detection.data["file_id"], file.id);
    assert_eq!(detection.data["interface"], "org.sluice.Monitor1");
    assert_eq!(stream[ingest_queued].data["kind"], "ingest");
    assert_eq!(
        stream[ingest_queued].data["interface"],
        "org.sluice.Monitor1"
    );
    let ingest_start = &stream[ingest_started];
    assert_eq!(ingest_start.data["kind"], "ingest");
    let worker_names: Vec<String> = (1..=SUITE_WORKERS)
        .map(|instance| format!("sluice-ingest-worker@{instance}"))
        .collect();
    assert!(
        worker_names
            .iter()
            .any(|name| ingest_start.data["worker"].as_str() == Some(name.as_str())),
        "JobStarted names a worker of the suite: {}",
        ingest_start.data
    );
    assert_eq!(stream[ingest_finished].data["state"], "succeeded");
    // Each ingest job starts and finishes exactly once: no second worker ran it.
    let count = |name: &str, job: &Value| {
        stream
            .iter()
            .filter(|event| event.is(name, "job_id", job))
            .count()
    };
    assert_eq!(count("JobStarted", &ingest_job_value), 1);
    assert_eq!(count("JobFinished", &ingest_job_value), 1);
    assert_eq!(count("JobQueued", &ingest_job_value), 1);
    assert_eq!(count("FileDetected", &ingest_job_value), 1);

    // The order where one step causes the next, which holds however the processes are
    // scheduled: one sender's signals keep their order on the bus (the scraper's, the
    // monitor's, the worker's), and a step that needs the file in the inbox comes after the
    // scraper announced the download's start (it announces before it fetches a byte).
    let order = [
        ("JobStarted (download)", download_started),
        ("DownloadProgress (complete)", download_complete),
        ("JobFinished (download)", download_job_finished),
        ("DownloadFinished", download_finished),
    ];
    assert_in_order(&order, &stream);
    let order = [
        ("JobStarted (download)", download_started),
        ("FileDetected", detected),
        ("JobQueued (ingest)", ingest_queued),
    ];
    assert_in_order(&order, &stream);
    let order = [
        ("JobStarted (download)", download_started),
        ("JobStarted (ingest)", ingest_started),
        ("JobFinished (ingest)", ingest_finished),
    ];
    assert_in_order(&order, &stream);
    // Not ordered by cause, so only reported: the scraper and the workers wake on JobQueued,
    // but they also poll the queue (a signal may be lost), and a poll right after the commit
    // may claim the job before its JobQueued is sent. DownloadFinished and FileDetected are
    // independent: the scraper renames the file into the inbox first (a crash cannot lose
    // it) and records and announces the download afterwards, while the monitor may already
    // have recorded and announced the file.
    for (earlier, first, later, second) in [
        (
            "JobQueued (download)",
            download_queued,
            "JobStarted (download)",
            download_started,
        ),
        (
            "JobQueued (ingest)",
            ingest_queued,
            "JobStarted (ingest)",
            ingest_started,
        ),
        (
            "DownloadFinished",
            download_finished,
            "FileDetected",
            detected,
        ),
    ] {
        if first > second {
            eprintln!("note: {later} came before {earlier} this time");
        }
    }
    eprintln!(
        "observed order: {:?}",
        stream
            .iter()
            .map(|event| event.name.as_str())
            .collect::<Vec<_>>()
    );

    // 5. A second copy of the same bytes dropped straight into the inbox is a duplicate.
    let dropped = Instant::now();
    let copy_path = suite.inbox().join("second-copy.png");
    std::fs::write(&copy_path, &content).expect("drop the copy");
    // Waits for the copy's ingest job to end. (Its file row alone is not enough: between the
    // worker's move into the library and its commit, the monitor sees the file leave and
    // may mark the row `gone` for a moment.)
    let mut copy = None;
    let recognised = wait_every(Duration::from_millis(100), PIPELINE_DEADLINE, || {
        copy = suite.files().into_iter().find(|file| {
            file.path == copy_path
                && file
                    .job_id
                    .is_some_and(|job| store.get_job(job).is_ok_and(|job| job.state.is_terminal()))
        });
        copy.is_some()
    });
    assert!(
        recognised,
        "the copy was never ingested; files {:?}; logs:\n{}",
        suite.files(),
        suite.logs()
    );
    let duplicate_time = dropped.elapsed();
    eprintln!("duplicate recognised in {duplicate_time:?}");
    let copy = copy.unwrap();
    assert_eq!(copy.state, FileState::Duplicate, "{copy:?}");
    assert_eq!(copy.document_id, Some(document_id));
    let copy_job = copy.job_id.expect("the copy's ingest job");
    assert_ne!(copy_job, ingest_job);
    assert_eq!(store.get_job(copy_job).unwrap().state, JobState::Succeeded);
    let documents = api_documents(&suite);
    assert_eq!(documents.len(), 1, "no second document: {documents:?}");
    assert_eq!(documents[0]["id"], document_id);
    assert_eq!(documents[0]["duplicates"], 1);
    // Consumed like the first: the library still holds one file, the inbox is empty.
    assert_eq!(files_under(&suite.library()), vec![library_path.clone()]);
    assert_eq!(files_under(&suite.inbox()), Vec::<PathBuf>::new());
    // Both files left the inbox because a worker consumed them, which the monitor does not
    // take for files going away (their rows were never `gone`, not even for a moment).
    assert!(
        !suite.monitor.log().contains("files left their folder"),
        "{}",
        suite.monitor.log()
    );
    let copy_job_value = json!(copy_job);
    let copy_finished = events.wait_for("JobFinished (copy)", |event| {
        event.is("JobFinished", "job_id", &copy_job_value)
    });
    let stream = events.snapshot();
    assert_eq!(stream[copy_finished].data["state"], "succeeded");
    let copy_detected = stream
        .iter()
        .position(|event| event.is("FileDetected", "job_id", &copy_job_value))
        .expect("FileDetected for the copy");
    assert_eq!(
        stream[copy_detected].data["path"],
        copy_path.to_str().unwrap()
    );
    assert_eq!(stream[copy_detected].data["file_id"], copy.id);
    assert!(copy_detected < copy_finished);

    // Every daemon is still running and says so through the status API. Daemons publish
    // their counters on their status tick, so the counts are waited for, not read once.
    let counter = |body: &Value, daemon_name: &str, name: &str| {
        body["daemons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|daemon| daemon["name"] == daemon_name)
            .map(|daemon| daemon["counters"][name].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut body = Value::Null;
    let counted = wait_every(Duration::from_millis(100), DEADLINE, || {
        let status;
        (status, body) = suite.get("/api/status");
        let jobs_done: u64 = worker_names
            .iter()
            .map(|name| counter(&body, name, "jobs_done"))
            .sum();
        status == 200
            && counter(&body, "sluice-monitor", "files_detected") == 2
            && counter(&body, "sluice-monitor", "jobs_queued") == 2
            && counter(&body, "sluice-scraper", "downloads_done") == 1
            // Two ingests and the thumbnail job of the one new image (the copy reuses it).
            && jobs_done == 3
    });
    assert!(
        counted,
        "the status counters never showed 2 files, 1 download and 2 ingest jobs and 1 \
         thumbnail job: {body:#}"
    );
    let daemons = body["daemons"].as_array().expect("daemons");
    let mut names: Vec<&str> = daemons
        .iter()
        .map(|daemon| daemon["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut expected = vec!["sluice-monitor", "sluice-scraper", "sluice-web"];
    expected.extend(worker_names.iter().map(String::as_str));
    expected.sort_unstable();
    assert_eq!(names, expected, "{body}");
    for daemon in daemons {
        assert_eq!(daemon["running"], true, "{daemon}");
        assert_eq!(daemon["state"], "running", "{daemon}");
        assert_eq!(daemon["last_error"], "", "{daemon}");
    }
    assert_eq!(
        counter(&body, "sluice-scraper", "bytes_downloaded"),
        content.len() as u64
    );
    // The download, the two ingests and the new image's thumbnail.
    assert_eq!(body["jobs"]["succeeded"], 4, "{body}");

    eprintln!(
        "timings: suite start {startup:?}, download to document {pipeline:?}, \
         duplicate recognised {duplicate_time:?}, whole test {:?}",
        started.elapsed()
    );
}

/// Asserts that the named positions in the stream increase.
fn assert_in_order(order: &[(&str, usize)], stream: &[Event]) {
    for pair in order.windows(2) {
        let ((earlier, first), (later, second)) = (pair[0], pair[1]);
        assert!(
            first < second,
            "{earlier} (#{first}) should come before {later} (#{second}); stream: {stream:#?}"
        );
    }
}
