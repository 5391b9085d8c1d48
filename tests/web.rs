//! sluice-web as a real process on 127.0.0.1 with a private bus and a temporary store: the
//! job, download and document API against real rows, the errors a bad request gets (and that
//! nothing changes), the token and Host checks, the base path, the event stream fed from bus
//! signals, the Web1 methods, the status page, and start-up and stop behaviour.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};
use sluice_core::bus::{BusError, CallerPolicy, MonitorService, MonitorStatus, WebProxy};
use sluice_core::store::jobs::JobState;

use crate::support::{
    DEADLINE, DaemonProcess, SpawnOptions, SuiteFixture, WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon,
    binary_path, event_stream_lines, http_agent, http_result,
};

const BEARER: &str = "Bearer test-token-0123456789abcdef";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `GET` with the read token, as a dashboard would read.
fn get(daemon: &WebDaemon, path: &str) -> (u16, Value) {
    get_as(daemon, path, Some(&format!("Bearer {WEB_READ_TOKEN}")))
}

fn get_as(daemon: &WebDaemon, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = http_agent().get(format!("{}{path}", daemon.origin));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    http_result(request.call())
}

fn post_json(
    daemon: &WebDaemon,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> (u16, Value) {
    let mut request = http_agent()
        .post(format!("{}{path}", daemon.origin))
        .header("Content-Type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    http_result(request.send(body))
}

fn post_empty(daemon: &WebDaemon, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = http_agent().post(format!("{}{path}", daemon.origin));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    http_result(request.send_empty())
}

fn delete(daemon: &WebDaemon, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = http_agent().delete(format!("{}{path}", daemon.origin));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    http_result(request.call())
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

/// Sends raw HTTP/1.1 (so the Host header is exactly what the test says) and returns the
/// status and body.
fn raw_request(daemon: &WebDaemon, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(daemon.address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn enqueue(fixture: &SuiteFixture, kind: &str) -> i64 {
    fixture.enqueue(kind)
}

fn count_jobs(fixture: &SuiteFixture) -> usize {
    fixture.job_total()
}

fn count_downloads(fixture: &SuiteFixture) -> usize {
    fixture
        .store()
        .download_counts()
        .expect("download counts")
        .values()
        .sum::<u64>() as usize
}

#[test]
fn jobs_round_trip_list_get_cancel_retry_and_history() {
    let fixture = SuiteFixture::new("", "");
    let first = enqueue(&fixture, "noop");
    let second = enqueue(&fixture, "ingest");
    let daemon = WebDaemon::start(&fixture);

    let (status, body) = get(&daemon, "/api/jobs");
    assert_eq!(status, 200, "{body}");
    let ids: Vec<i64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![second, first]);

    let (status, body) = get(&daemon, "/api/jobs?kind=noop&limit=1");
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["id"], first);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (_, body) = get(&daemon, &format!("/api/jobs?limit=1&cursor={second}"));
    assert_eq!(body["items"][0]["id"], first);

    let (status, body) = get(&daemon, &format!("/api/jobs/{first}"));
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "noop");
    assert_eq!(body["state"], "queued");

    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{first}/cancel"), Some(BEARER));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(
        fixture.store().get_job(first).unwrap().state,
        JobState::Cancelled
    );

    let (status, body) = get(&daemon, "/api/jobs?state=cancelled");
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    // Cancelling twice is a conflict and changes nothing.
    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{first}/cancel"), Some(BEARER));
    assert_eq!((status, error_code(&body)), (409, "conflict"));

    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{first}/retry"), Some(BEARER));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "queued");
    assert_eq!(
        fixture.store().get_job(first).unwrap().state,
        JobState::Queued
    );
    // A queued job cannot be retried.
    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{second}/retry"), Some(BEARER));
    assert_eq!((status, error_code(&body)), (409, "conflict"));

    let (status, body) = get(&daemon, &format!("/api/jobs/{first}/history"));
    assert_eq!(status, 200);
    let states: Vec<&str> = body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|transition| transition["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "cancelled", "queued"]);
}

#[test]
fn web1_cancel_and_retry_change_real_rows_and_name_their_errors() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let _daemon = WebDaemon::start(&fixture);
    let runtime = runtime();
    let connection = fixture.connect(&runtime);
    runtime.block_on(async {
        let proxy = WebProxy::new(&connection).await.unwrap();
        assert_eq!(proxy.cancel_job(job as u64).await.unwrap(), "cancelled");
        proxy.retry_job(job as u64).await.unwrap();
        let missing = proxy.cancel_job(999_999).await.unwrap_err();
        assert!(matches!(missing, BusError::NotFound(_)), "{missing:?}");
        let wrong_state = proxy.retry_job(job as u64).await.unwrap_err();
        assert!(
            matches!(wrong_state, BusError::WrongState(_)),
            "{wrong_state:?}"
        );
    });
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Queued
    );
}

/// Issue 17, "clients cannot ask": a bus client that connects while a job runs lists it with
/// its progress from the ObjectManager at /org/sluice/job, sees its properties change in one
/// PropertiesChanged, and sees it end in JobRemoved with the result (its object gone).
#[test]
fn a_late_bus_client_lists_running_jobs_with_progress_and_sees_them_end() {
    use futures_util::StreamExt;
    use sluice_core::bus::{JOBS_OBJECT_PATH, JobProxy, WEB_BUS_NAME, job_object_path};
    use zbus::fdo::ObjectManagerProxy;

    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let claimed = {
        let mut store = fixture.store();
        let mut claimed = store
            .claim_jobs(
                &"sluice-ingest-worker@7".into(),
                &["noop"],
                1,
                Duration::from_secs(300),
            )
            .unwrap();
        let claimed = claimed.pop().expect("the job is claimed");
        store
            .report_progress(job, &claimed.lease_token, 0.25, "hashing")
            .unwrap();
        claimed
    };
    let _daemon = WebDaemon::start(&fixture);
    let runtime = runtime();
    // The client connects after the job started: it must learn of it by asking.
    let connection = fixture.connect(&runtime);
    let path = job_object_path(job as u64);
    runtime.block_on(async {
        let manager = ObjectManagerProxy::builder(&connection)
            .destination(WEB_BUS_NAME)
            .path(JOBS_OBJECT_PATH)
            .build()
            .await
            .unwrap();
        let listed = tokio::time::timeout(DEADLINE, async {
            loop {
                let objects = manager.get_managed_objects().await.unwrap();
                if let Some((_, interfaces)) = objects
                    .into_iter()
                    .find(|(object, _)| object.as_str() == path)
                {
                    return interfaces;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the running job appears as an object");
        let properties = listed
            .iter()
            .find(|(interface, _)| interface.as_str() == "org.sluice.Job1")
            .map(|(_, properties)| properties)
            .expect("the object has org.sluice.Job1");
        let read = |name: &str| format!("{:?}", properties.get(name).expect(name));
        assert!(read("Progress").contains("0.25"), "{properties:?}");
        assert!(read("Kind").contains("noop"), "{properties:?}");
        assert!(read("Message").contains("hashing"), "{properties:?}");
        assert!(
            read("Worker").contains("/org/sluice/Ingest1/7"),
            "{properties:?}"
        );

        let job_proxy = JobProxy::builder(&connection)
            .path(path.as_str())
            .build()
            .await
            .unwrap();
        assert_eq!(job_proxy.state().await.unwrap(), "running");
        let mut progress_changes = job_proxy.receive_progress_changed().await;
        let web = WebProxy::new(&connection).await.unwrap();
        let mut removed = web.receive_job_removed().await.unwrap();
        {
            let mut store = fixture.store();
            store
                .report_progress(job, &claimed.lease_token, 0.75, "extracting")
                .unwrap();
        }
        let progress = tokio::time::timeout(DEADLINE, async {
            loop {
                let change = progress_changes.next().await.expect("progress changes");
                let value = change.get().await.unwrap();
                if value > 0.5 {
                    return value;
                }
            }
        })
        .await
        .expect("the progress change is signalled");
        assert_eq!(progress, 0.75);
        assert_eq!(job_proxy.message().await.unwrap(), "extracting");

        fixture
            .store()
            .succeed_job(job, &claimed.lease_token, &json!({}))
            .unwrap();
        let signal = tokio::time::timeout(DEADLINE, removed.next())
            .await
            .expect("JobRemoved arrives")
            .expect("the signal stream is open");
        let arguments = signal.args().unwrap();
        assert_eq!(arguments.job_id, job as u64);
        assert_eq!(arguments.job.as_str(), path);
        assert_eq!((arguments.kind, arguments.result), ("noop", "succeeded"));
        let objects = manager.get_managed_objects().await.unwrap();
        assert!(
            !objects.keys().any(|object| object.as_str() == path),
            "the finished job's object is gone: {objects:?}"
        );
    });
}

#[test]
fn downloads_are_created_listed_read_and_deleted() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    // A public address literal: nothing connects to it (no scraper runs in this test).
    let (status, body) = post_json(
        &daemon,
        "/api/downloads",
        r#"{"url": "https://93.184.216.34/models/weights.bin", "sha256": "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB", "bundle": "model-x", "max_bytes": 1048576}"#,
        Some(BEARER),
    );
    assert_eq!(status, 201, "{body}");
    let download_id = body["download"]["id"].as_i64().unwrap();
    let job_id = body["job_id"].as_i64().unwrap();
    assert_eq!(body["download"]["file_name"], "weights.bin");
    assert_eq!(body["download"]["expected_sha256"], "ab".repeat(32));
    let job = fixture.store().get_job(job_id).unwrap();
    assert_eq!(job.kind, "download");
    assert_eq!(job.payload, json!({ "download_id": download_id }));

    let (status, body) = get(&daemon, "/api/downloads");
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["id"], download_id);
    let (status, body) = get(&daemon, &format!("/api/downloads/{download_id}"));
    assert_eq!((status, body["bundle"].as_str()), (200, Some("model-x")));

    let (status, _) = delete(&daemon, &format!("/api/downloads/{download_id}"), None);
    assert_eq!(status, 401);
    assert_eq!(
        count_downloads(&fixture),
        1,
        "a refused delete changes nothing"
    );
    let (status, body) = delete(
        &daemon,
        &format!("/api/downloads/{download_id}"),
        Some(BEARER),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&daemon, &format!("/api/downloads/{download_id}"));
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    assert_eq!(
        fixture.store().get_job(job_id).unwrap().state,
        JobState::Cancelled
    );
    let (status, body) = delete(
        &daemon,
        &format!("/api/downloads/{download_id}"),
        Some(BEARER),
    );
    assert_eq!((status, error_code(&body)), (404, "not_found"));
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);

    for path in [
        "/api/jobs/999999",
        "/api/jobs/999999/history",
        "/api/downloads/999999",
        "/api/documents/999999",
        "/api/no-such-thing",
    ] {
        let (status, body) = get(&daemon, path);
        assert_eq!((status, error_code(&body)), (404, "not_found"), "{path}");
    }
    for path in [
        "/api/jobs/abc",
        "/api/jobs?state=bogus",
        "/api/jobs?limit=0",
        "/api/jobs?limit=100000",
        "/api/jobs?colour=red",
        "/api/jobs?cursor=-4",
        "/api/downloads?state=sleeping",
        "/api/documents?limit=x",
    ] {
        let (status, body) = get(&daemon, path);
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_argument"),
            "{path}: {body}"
        );
    }
    for path in ["/api/jobs/999999/cancel", "/api/jobs/999999/retry"] {
        let (status, body) = post_empty(&daemon, path, Some(BEARER));
        assert_eq!((status, error_code(&body)), (404, "not_found"), "{path}");
    }

    let jobs_before = count_jobs(&fixture);
    for body in [
        r#"{"url": "https://93.184.216.34/a.bin""#,
        r#"not json"#,
        r#"{"url": 5}"#,
        r#"{"url": "https://93.184.216.34/a.bin", "colour": "red"}"#,
        r#"{"url": "https://93.184.216.34/a.bin", "max_bytes": -1}"#,
        r#"{"url": "ftp://93.184.216.34/a.bin"}"#,
        r#"{"url": "file:///etc/passwd"}"#,
        r#"{"url": "http://127.0.0.1:8080/a.bin"}"#,
        r#"{"url": "http://localhost/a.bin"}"#,
        r#"{"url": "http://[::1]/a.bin"}"#,
        r#"{"url": "http://169.254.169.254/latest/meta-data"}"#,
        r#"{"url": "http://10.0.0.7/a.bin"}"#,
        r#"{"url": "https://93.184.216.34/a.bin", "sha256": "abc"}"#,
        r#"{"url": "https://93.184.216.34/a.bin", "file_name": "../../etc/passwd"}"#,
        r#"{"url": "https://93.184.216.34/a.bin", "file_name": "x.part"}"#,
    ] {
        let (status, response) = post_json(&daemon, "/api/downloads", body, Some(BEARER));
        assert_eq!(
            (status, error_code(&response)),
            (400, "invalid_argument"),
            "{body} gave {response}"
        );
    }
    // Wrong content type is a 400 as well.
    let (status, response) = http_result(
        http_agent()
            .post(format!("{}/api/downloads", daemon.origin))
            .header("Authorization", BEARER)
            .header("Content-Type", "text/plain")
            .send(r#"{"url": "https://93.184.216.34/a.bin"}"#),
    );
    assert_eq!((status, error_code(&response)), (400, "invalid_argument"));
    assert_eq!(count_downloads(&fixture), 0, "no bad request left a row");
    assert_eq!(
        count_jobs(&fixture),
        jobs_before,
        "no bad request queued a job"
    );
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Queued
    );
    assert!(
        get(&daemon, "/healthz").0 == 200,
        "the daemon keeps running"
    );
}

#[test]
fn mutations_need_the_right_token_and_a_refused_one_changes_nothing() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);
    let valid_body = r#"{"url": "https://93.184.216.34/a.bin"}"#;
    for authorization in [
        None,
        Some("Bearer wrong-token-0123456789abcdef"),
        Some("Bearer "),
        Some("Basic dGVzdDp0ZXN0"),
        Some(WEB_TEST_TOKEN),
    ] {
        let (status, body) = post_json(&daemon, "/api/downloads", valid_body, authorization);
        assert_eq!(
            (status, error_code(&body)),
            (401, "unauthorized"),
            "{authorization:?}"
        );
        let (status, body) = post_empty(&daemon, &format!("/api/jobs/{job}/cancel"), authorization);
        assert_eq!(
            (status, error_code(&body)),
            (401, "unauthorized"),
            "{authorization:?}"
        );
    }
    assert_eq!(count_downloads(&fixture), 0);
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Queued
    );
    // Reads need no token.
    assert_eq!(get(&daemon, &format!("/api/jobs/{job}")).0, 200);
}

#[test]
fn oversize_bodies_are_refused_with_413_before_anything_is_stored() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    // The fixture sets [limits] max_request_body = "4 KiB".
    let padding = "a".repeat(8 * 1024);
    let body = format!(r#"{{"url": "https://93.184.216.34/{padding}"}}"#);
    let (status, response) = post_json(&daemon, "/api/downloads", &body, Some(BEARER));
    assert_eq!(
        (status, error_code(&response)),
        (413, "payload_too_large"),
        "{response}"
    );

    // Without Content-Length (chunked), the limit applies while reading.
    let chunk = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let (status, text) = raw_request(
        &daemon,
        &format!(
            "POST /api/downloads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {BEARER}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{chunk}"
        ),
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert_eq!(count_downloads(&fixture), 0);
}

/// Issue 12, finding 3: a search without a token answered the snippet of any document.
/// Reads now need the read token (or the admin token) unless `public_reads = true`; the read
/// token cannot change anything; and SIGHUP picks up a new read token.
#[test]
fn reads_need_the_read_token_unless_the_api_is_public() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);
    for path in [
        "/api/documents?q=root",
        "/api/jobs",
        &format!("/api/jobs/{job}"),
        "/api/status",
        "/api/events",
        "/api/downloads",
    ] {
        let (status, body) = get_as(&daemon, path, None);
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{path}");
        let (status, body) = get_as(&daemon, path, Some("Bearer not-the-token-0123456789"));
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{path}");
        if path != "/api/events" {
            assert_eq!(get(&daemon, path).0, 200, "{path} with the read token");
            assert_eq!(
                get_as(&daemon, path, Some(BEARER)).0,
                200,
                "{path} with the admin token"
            );
        }
    }
    let read_bearer = format!("Bearer {WEB_READ_TOKEN}");
    let (status, body) = post_empty(
        &daemon,
        &format!("/api/jobs/{job}/cancel"),
        Some(&read_bearer),
    );
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    assert_eq!(
        get(&daemon, &format!("/api/jobs/{job}")).1["state"],
        "queued"
    );
    for public in [
        "/",
        "/dashboard.js",
        "/dashboard.css",
        "/healthz",
        "/readyz",
    ] {
        assert_eq!(get_as(&daemon, public, None).0, 200, "{public}");
    }

    // A new read token by SIGHUP: the old one stops working, the new one works.
    let new_read_token = "another-read-token-0123456789";
    std::fs::write(fixture.directory.path().join("read-token"), new_read_token).unwrap();
    kill(daemon.process.pid(), Signal::SIGHUP).unwrap();
    let new_bearer = format!("Bearer {new_read_token}");
    assert!(
        crate::support::wait_until(DEADLINE, || {
            get_as(&daemon, "/api/jobs", Some(&new_bearer)).0 == 200
        }),
        "the new read token was not taken after SIGHUP"
    );
    assert_eq!(
        get(&daemon, "/api/jobs").0,
        401,
        "the old read token is gone"
    );
    drop(daemon);

    let fixture = SuiteFixture::new("public_reads = true", "");
    std::fs::remove_file(fixture.directory.path().join("read-token")).unwrap();
    let daemon = WebDaemon::start(&fixture);
    let (status, body) = get_as(&daemon, "/api/documents?q=root", None);
    assert_eq!(status, 200, "public reads need no token: {body}");
    let (status, body) = post_empty(&daemon, "/api/jobs/1/cancel", None);
    assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{body}");
}

/// Issue 17, finding 10: in the package the token files are root's alone and systemd hands
/// them to sluice-web as credentials ($CREDENTIALS_DIRECTORY/api-token and read-token). The
/// real daemon takes the credentials over the configured files (which it could not read), says
/// so in its log, and refuses the configured files' tokens.
#[test]
fn the_tokens_come_from_systemd_credentials_when_passed() {
    let fixture = SuiteFixture::new("", "");
    let credentials = fixture.directory.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let admin = "credential-admin-token-0123456789";
    let read = "credential-read-token-0123456789";
    std::fs::write(credentials.join("api-token"), format!("{admin}\n")).unwrap();
    std::fs::write(credentials.join("read-token"), format!("{read}\n")).unwrap();
    let daemon = WebDaemon::start_with_environment(
        &fixture,
        &[("CREDENTIALS_DIRECTORY", credentials.as_os_str())],
    );
    assert!(
        daemon
            .process
            .log()
            .contains("API tokens from systemd credentials"),
        "{}",
        daemon.process.log()
    );
    let job = enqueue(&fixture, "noop");
    assert_eq!(
        get_as(&daemon, "/api/jobs", Some(&format!("Bearer {read}"))).0,
        200
    );
    let (status, body) = get(&daemon, "/api/jobs");
    assert_eq!(
        (status, error_code(&body)),
        (401, "unauthorized"),
        "the configured read token must not be taken when a credential is passed"
    );
    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{job}/cancel"), Some(BEARER));
    assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{body}");
    assert_eq!(
        get_as(
            &daemon,
            &format!("/api/jobs/{job}"),
            Some(&format!("Bearer {admin}"))
        )
        .1["state"],
        "queued",
        "a refused token changed the job"
    );
    let (status, body) = post_empty(
        &daemon,
        &format!("/api/jobs/{job}/cancel"),
        Some(&format!("Bearer {admin}")),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_host_header_must_name_an_allowed_host() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let (status, body) = raw_request(
        &daemon,
        "GET /api/jobs HTTP/1.1\r\nHost: attacker.example:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("misdirected_request"), "{body}");
    let (status, _) = raw_request(
        &daemon,
        "GET /healthz HTTP/1.1\r\nHost: LOCALHOST:1234\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let (status, body) = raw_request(&daemon, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 400, "{body}");
}

/// Requests HTTP/1.1 itself forbids (a second Host header, bytes a request target may not
/// hold) are refused by actix-http's parser before any of sluice's code runs: a 400 with an
/// empty body and the connection closed. actix-http 3 has no hook to give that answer a JSON
/// body (its dispatcher builds the response itself), so this test holds what can be held:
/// the request is refused, nothing reaches a handler, and the server keeps serving.
#[test]
fn requests_the_http_parser_refuses_get_a_400_and_change_nothing() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);
    let cancel = format!("/api/jobs/{job}/cancel");
    for request in [
        format!(
            "POST {cancel} HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\
             Authorization: {BEARER}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST {cancel}\x01\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: {BEARER}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST {cancel} HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\
             Authorization: {BEARER}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let (status, text) = raw_request(&daemon, &request);
        assert_eq!(status, 400, "{request:?} got {text}");
    }
    assert_eq!(
        get(&daemon, &format!("/api/jobs/{job}")).1["state"],
        "queued"
    );
}

#[test]
fn an_absolute_form_request_target_must_name_an_allowed_host_too() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    // The authority in the request line is the host the request is for (RFC 9112, 3.2.2);
    // an allowed Host header beside it does not make it allowed.
    let (status, body) = raw_request(
        &daemon,
        "GET http://evil.example/api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("misdirected_request"), "{body}");
    let (status, body) = raw_request(
        &daemon,
        "GET http://localhost/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn every_route_lives_under_the_base_path() {
    let fixture = SuiteFixture::new(r#"base_path = "/sluice""#, "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);
    assert_eq!(get(&daemon, "/sluice/healthz").0, 200);
    assert_eq!(get(&daemon, "/sluice/readyz").0, 200);
    let (status, body) = get(&daemon, &format!("/sluice/api/jobs/{job}"));
    assert_eq!((status, body["id"].as_i64()), (200, Some(job)));
    for outside in ["/healthz", "/api/jobs", &format!("/api/jobs/{job}")] {
        let (status, body) = get(&daemon, outside);
        assert_eq!((status, error_code(&body)), (404, "not_found"), "{outside}");
    }
    let (status, body) = post_empty(
        &daemon,
        &format!("/sluice/api/jobs/{job}/cancel"),
        Some(BEARER),
    );
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")));
    let (status, _) = http_result(
        http_agent()
            .get(format!("{}/sluice/", daemon.origin))
            .call(),
    );
    assert_eq!(status, 200, "the overview page is under the base path too");
}

#[test]
fn health_readiness_status_documents_and_the_overview_page_answer() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let (status, body) = get(&daemon, "/healthz");
    assert_eq!((status, body["status"].as_str()), (200, Some("alive")));
    let (status, body) = get(&daemon, "/readyz");
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    let (status, body) = get(&daemon, "/api/status");
    assert_eq!(status, 200, "{body}");
    let daemons = body["daemons"].as_array().unwrap();
    let find = |name: &str| {
        daemons
            .iter()
            .find(|daemon| daemon["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {body}"))
            .clone()
    };
    let web = find("sluice-web");
    assert_eq!(web["running"], true);
    assert_eq!(web["state"], "running");
    assert!(web["status"].as_str().unwrap().starts_with("serving on"));
    assert!(web["counters"]["requests_served"].is_u64());
    let monitor = find("sluice-monitor");
    assert_eq!(monitor["running"], false);
    assert_eq!(monitor["state"], Value::Null);
    find("sluice-ingest-worker@1");
    if !std::path::Path::new("/run/systemd/system").exists() {
        // Without systemd as the service manager the unit fields are null, not an error.
        assert_eq!(web["unit"]["active_state"], Value::Null);
        assert_eq!(web["unit"]["main_pid"], Value::Null);
        assert_eq!(web["unit"]["name"], "sluice-web.service");
    }
    assert_eq!(body["jobs"]["queued"], 0);

    let (status, body) = get(&daemon, "/api/documents?q=anything%20at%20all");
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, text) = http_result(http_agent().get(format!("{}/", daemon.origin)).call());
    assert_eq!(status, 200);
    assert!(
        text.as_str()
            .unwrap_or_default()
            .contains("<h1>sluice</h1>")
    );
    let (status, script) = http_result(
        http_agent()
            .get(format!("{}/dashboard.js", daemon.origin))
            .call(),
    );
    assert_eq!(status, 200);
    assert!(
        script
            .as_str()
            .unwrap_or_default()
            .contains("sessionStorage"),
        "{script}"
    );
}

/// Reads an event stream on a thread and hands over its lines.
fn open_event_stream(daemon: &WebDaemon) -> mpsc::Receiver<String> {
    event_stream_lines(&http_agent(), &daemon.origin)
}

/// The next event named `name` (skipping others and comments): its parsed data.
fn next_event(lines: &mpsc::Receiver<String>, name: &str) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut current = None;
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("no {name} event within {DEADLINE:?}"));
        if let Some(event) = line.strip_prefix("event: ") {
            current = Some(event.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ")
            && current.as_deref() == Some(name)
        {
            return serde_json::from_str(data).expect("event data is JSON");
        }
    }
}

#[test]
fn the_event_stream_carries_bus_signals_and_the_webs_own_job_queued() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let lines = open_event_stream(&daemon);
    let first = lines.recv_timeout(DEADLINE).expect("greeting");
    assert_eq!(first, ": connected");

    // The test plays the monitor: it owns org.sluice.Monitor1 and emits FileDetected.
    let runtime = runtime();
    let connection = fixture.connect(&runtime);
    let (monitor, _commands) = runtime
        .block_on(MonitorService::start(
            &connection,
            CallerPolicy::for_this_process(),
            MonitorStatus::starting(vec![fixture.directory.path().join("inbox")], "normal"),
        ))
        .expect("serve the monitor object");
    runtime
        .block_on(monitor.file_detected(b"/srv/inbox/report.pdf\0", 7, 9))
        .expect("emit FileDetected");
    let data = next_event(&lines, "FileDetected");
    assert_eq!(data["path"], "/srv/inbox/report.pdf");
    assert_eq!(data["file_id"], 7);
    assert_eq!(data["job_id"], 9);
    assert_eq!(data["interface"], "org.sluice.Monitor1");
    // The monitor's one signal also names the ingest job it queued: the stream shows that
    // job's JobQueued as it did when the monitor sent a second signal for it.
    let data = next_event(&lines, "JobQueued");
    assert_eq!(data["interface"], "org.sluice.Monitor1");
    assert_eq!(data["object_path"], "/org/sluice/Monitor1");
    assert_eq!(data["kind"], "ingest");
    assert_eq!(data["job_id"], 9);

    // A download submitted through the API is announced on Web1 and reaches the stream.
    let (status, body) = post_json(
        &daemon,
        "/api/downloads",
        r#"{"url": "https://93.184.216.34/a.bin"}"#,
        Some(BEARER),
    );
    assert_eq!(status, 201, "{body}");
    let data = next_event(&lines, "JobQueued");
    assert_eq!(data["interface"], "org.sluice.Web1");
    assert_eq!(data["kind"], "download");
    assert_eq!(data["job_id"], body["job_id"]);

    // A name that is not UTF-8 crosses the bus as bytes; JSON shows it with U+FFFD for the
    // byte it cannot carry, and the stream goes on.
    runtime
        .block_on(monitor.file_detected(b"/srv/inbox/caf\xe9.pdf\0", 8, 10))
        .expect("emit FileDetected");
    let data = next_event(&lines, "FileDetected");
    assert_eq!(data["path"], "/srv/inbox/caf\u{fffd}.pdf");
    assert_eq!(data["job_id"], 10);
}

/// Every event as (name, data) up to and including the first one named `name` whose data
/// satisfies `last`.
fn events_until(
    lines: &mpsc::Receiver<String>,
    name: &str,
    last: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut events = Vec::new();
    let mut current = String::new();
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("no matching {name} event within {DEADLINE:?}: {events:?}"));
        if let Some(event) = line.strip_prefix("event: ") {
            current = event.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).expect("event data is JSON");
            let done = current == name && last(&data);
            events.push((current.clone(), data));
            if done {
                return events;
            }
        }
    }
}

#[test]
fn forged_signals_from_connections_that_do_not_own_the_name_never_reach_the_event_stream() {
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let lines = open_event_stream(&daemon);
    assert_eq!(
        lines.recv_timeout(DEADLINE).expect("greeting"),
        ": connected"
    );

    // The test plays the monitor on one connection and a forger on another that owns nothing.
    let runtime = runtime();
    let owner = fixture.connect(&runtime);
    let (monitor, _commands) = runtime
        .block_on(MonitorService::start(
            &owner,
            CallerPolicy::for_this_process(),
            MonitorStatus::starting(vec![fixture.directory.path().join("inbox")], "normal"),
        ))
        .expect("serve the monitor object");
    let forger = fixture.connect(&runtime);
    runtime.block_on(async {
        // Watch connections leave, to know when a forging process's messages were routed.
        let departures = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .build()
            .expect("match rule");
        let mut departures = zbus::MessageStream::for_match_rule(departures, &forger, None)
            .await
            .expect("subscribe to NameOwnerChanged");
        if crate::support::have_root() {
            // The outside review's reproduction: `busctl emit` as nobody.
            let address = format!("--address={}", fixture.bus.address());
            let mut arguments = vec![address.as_str()];
            arguments.extend(crate::support::FORGED_FILE_DETECTED);
            let output = crate::support::Caller::Nobody
                .run("busctl", &arguments)
                .expect("run busctl as nobody");
            assert!(output.status.success(), "{output:?}");
            // The bus routes a connection's messages before it announces that it left.
            let left =
                tokio::time::timeout(DEADLINE, crate::support::next_departure(&mut departures))
                    .await;
            assert!(left.is_ok(), "busctl's connection never left the bus");
        }
        let forgeries = [
            (
                "/org/sluice/Monitor1",
                "org.sluice.Monitor1",
                "FileDetected",
            ),
            ("/org/sluice/Monitor1", "org.sluice.Monitor1", "JobQueued"),
            ("/org/sluice/Web1", "org.sluice.Web1", "JobQueued"),
        ];
        for (path, interface, member) in forgeries {
            let emitted = if member == "FileDetected" {
                forger
                    .emit_signal(
                        None::<()>,
                        path,
                        interface,
                        member,
                        &(b"/FAKE/zbus\0".to_vec(), 4244u64, 4245u64),
                    )
                    .await
            } else {
                forger
                    .emit_signal(None::<()>, path, interface, member, &("forged", 4246u64))
                    .await
            };
            emitted.expect("emit a forged signal");
        }
        // A worker nobody runs: its name has no owner at all.
        forger
            .emit_signal(
                None::<()>,
                "/org/sluice/Ingest1/1",
                "org.sluice.Ingest1",
                "JobFinished",
                &(4247u64, "succeeded"),
            )
            .await
            .expect("emit a forged JobFinished");
        // The bus handles one connection's messages in order: once this call is answered, the
        // forged signals were routed, before the real one below is even sent.
        zbus::fdo::DBusProxy::new(&forger)
            .await
            .expect("bus proxy")
            .get_id()
            .await
            .expect("GetId");
        monitor
            .file_detected(b"/srv/inbox/real.pdf\0", 7, 9)
            .await
            .expect("emit the real FileDetected");
    });
    let events = events_until(&lines, "FileDetected", |data| {
        data["path"] == "/srv/inbox/real.pdf"
    });
    // The real one arrives, and nothing forged before it.
    assert_eq!(
        events.len(),
        1,
        "forged signals reached the event stream: {events:?}"
    );
    assert_eq!(events[0].1["job_id"], 9);
}

#[test]
fn sigterm_closes_event_streams_and_exits_cleanly() {
    let fixture = SuiteFixture::new("", "");
    let mut daemon = WebDaemon::start(&fixture);
    let lines = open_event_stream(&daemon);
    assert_eq!(lines.recv_timeout(DEADLINE).unwrap(), ": connected");
    kill(daemon.process.pid(), Signal::SIGTERM).unwrap();
    let status = daemon
        .process
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("sluice-web did not stop: {error:#}"));
    assert_eq!(status.code(), Some(0), "{}", daemon.process.log());
    // The stream ends (the reader thread hangs up) instead of holding the stop.
    let ended = crate::support::wait_until(DEADLINE, || {
        matches!(lines.try_recv(), Err(mpsc::TryRecvError::Disconnected))
    });
    assert!(ended, "the event stream stayed open after the stop");
}

/// `journalctl -u sluice-web` shows sluice's own news at info; actix-server's start-up and
/// shutdown lines ("Tokio runtime found; starting in existing Tokio runtime", "starting 2
/// workers") are a dependency's chatter and only show at debug.
#[test]
fn actix_start_and_stop_chatter_stays_out_of_the_info_log() {
    let fixture = SuiteFixture::new("", "");
    let mut daemon = WebDaemon::start(&fixture);
    kill(daemon.process.pid(), Signal::SIGTERM).unwrap();
    let status = daemon
        .process
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("sluice-web did not stop: {error:#}"));
    let log = daemon.process.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("sluice-web is ready on"), "{log}");
    assert!(log.contains("sluice-web stopped"), "{log}");
    assert!(
        !log.contains("actix_server"),
        "actix-server's chatter reached the info log:\n{log}"
    );
}

#[test]
fn without_its_token_file_sluice_web_refuses_to_start_and_says_why() {
    let fixture = SuiteFixture::new("", "");
    std::fs::remove_file(fixture.directory.path().join("api-token")).unwrap();
    let output = std::process::Command::new(binary_path("sluice-web"))
        .arg("--config")
        .arg(&fixture.config_path)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run sluice-web");
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("token_file") && stderr.contains("api-token"),
        "{stderr}"
    );

    // A token that is too short is refused the same way.
    std::fs::write(fixture.directory.path().join("api-token"), "short\n").unwrap();
    let output = std::process::Command::new(binary_path("sluice-web"))
        .arg("--config")
        .arg(&fixture.config_path)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run sluice-web");
    assert_eq!(output.status.code(), Some(78));
}

#[test]
fn a_second_sluice_web_cannot_take_the_bus_name() {
    let fixture = SuiteFixture::new("", "");
    let _first = WebDaemon::start(&fixture);
    let output = std::process::Command::new(binary_path("sluice-web"))
        .arg("--config")
        .arg(&fixture.config_path)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run sluice-web");
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("org.sluice.Web1"), "{stderr}");
}

#[test]
fn sighup_reloads_the_token_and_keeps_the_old_one_when_the_new_file_is_bad() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let daemon = WebDaemon::start(&fixture);
    let token_file = fixture.directory.path().join("api-token");
    let new_bearer = "Bearer rotated-token-0123456789abcdef";
    std::fs::write(&token_file, "rotated-token-0123456789abcdef\n").unwrap();
    kill(daemon.process.pid(), Signal::SIGHUP).unwrap();
    let rotated = crate::support::wait_until(DEADLINE, || {
        post_empty(
            &daemon,
            &format!("/api/jobs/{job}/cancel"),
            Some(new_bearer),
        )
        .0 == 200
    });
    assert!(
        rotated,
        "the new token was never accepted: {}",
        daemon.process.log()
    );
    let (status, _) = post_empty(&daemon, &format!("/api/jobs/{job}/retry"), Some(BEARER));
    assert_eq!(status, 401, "the old token still works after the reload");

    // A token file that is no good is refused by the reload; the rotated token stays valid.
    std::fs::write(&token_file, "short\n").unwrap();
    kill(daemon.process.pid(), Signal::SIGHUP).unwrap();
    let runtime = runtime();
    let connection = fixture.connect(&runtime);
    let reported = crate::support::wait_until(DEADLINE, || {
        runtime.block_on(async {
            let proxy = WebProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .unwrap();
            proxy.last_error().await.unwrap().contains("token")
        })
    });
    assert!(reported, "the failed reload was not reported in LastError");
    let (status, body) = post_empty(&daemon, &format!("/api/jobs/{job}/retry"), Some(new_bearer));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_socket_passed_by_systemd_is_used_instead_of_binding() {
    let fixture = SuiteFixture::new("", "");
    // systemd-socket-activate plays systemd: it listens, and on the first connection starts
    // sluice-web with the socket in LISTEN_FDS.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg(binary_path("sluice-web"))
        .arg("--config")
        .arg(&fixture.config_path);
    // Killed when dropped, also when an assertion below fails.
    let mut activator =
        DaemonProcess::spawn(&mut command, SpawnOptions::named("systemd-socket-activate"))
            .expect("systemd-socket-activate (package systemd)");
    let listening =
        crate::support::wait_until(DEADLINE, || TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(
        listening,
        "systemd-socket-activate did not listen: {}",
        activator.log()
    );
    let (status, body) = http_result(
        http_agent()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .call(),
    );
    assert_eq!((status, body["status"].as_str()), (200, Some("alive")));
    let runtime = runtime();
    let connection = fixture.connect(&runtime);
    let listen_address = runtime.block_on(async {
        WebProxy::new(&connection)
            .await
            .unwrap()
            .listen_address()
            .await
            .unwrap()
    });
    assert_eq!(
        listen_address,
        format!("127.0.0.1:{port} (socket-activated)")
    );
    activator.kill_hard();
}
