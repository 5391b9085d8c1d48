//! Submitting work over HTTP (issue 9): uploads into the inbox, `?wait=` answers, per-job event
//! streams (SSE and NDJSON, replayable with `Last-Event-ID`) and the filters of `/api/events`,
//! against the real daemons on a private bus. Bad input is refused with a stable code and
//! leaves no file, no staged part and no job.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sluice_core::store::JobState;
use sluice_core::store::jobs::NewJob;

use crate::support::{
    DEADLINE, Suite, SuiteFixture, WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon, files_under,
    http_agent, wait_until,
};

/// The answer of an upload: status, JSON body, `Location`.
struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
}

fn send_upload(origin: &str, query: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut request = http_agent()
        .post(format!("{origin}/api/documents{query}"))
        .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"));
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    let mut response = request.send(body).expect("upload request");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        location,
    }
}

fn upload_raw(origin: &str, query: &str, bytes: &[u8]) -> Answer {
    send_upload(
        origin,
        query,
        Some("application/octet-stream"),
        bytes.to_vec(),
    )
}

/// One part of a form: field name, file name (none for a plain field), content.
type FormPart<'a> = (&'a str, Option<&'a [u8]>, &'a [u8]);

/// A `multipart/form-data` body of these parts.
fn multipart(parts: &[FormPart<'_>]) -> (String, Vec<u8>) {
    let boundary = "sluice-test-boundary-7d3f";
    let mut body = Vec::new();
    for (field, filename, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{field}\"").as_bytes(),
        );
        if let Some(filename) = filename {
            body.extend_from_slice(b"; filename=\"");
            body.extend_from_slice(filename);
            body.extend_from_slice(b"\"");
        }
        body.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn get(origin: &str, path: &str) -> (u16, Value) {
    let mut response = http_agent()
        .get(format!("{origin}{path}"))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .call()
        .expect("GET");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Files in a folder, by name (empty when it does not exist).
fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `sluicectl submit FILE` with the fixture's configuration, as a user types it.
fn sluicectl_submit(fixture: &SuiteFixture, file: &Path) -> std::process::Output {
    std::process::Command::new(crate::support::binary_path("sluicectl"))
        .args(["submit", file.to_str().unwrap()])
        .env("SLUICE_CONFIG", &fixture.config_path)
        .output()
        .unwrap()
}

fn job_count(fixture: &SuiteFixture) -> usize {
    fixture.job_total()
}

#[test]
fn an_upload_becomes_a_document_and_a_wait_answers_with_it() {
    let suite = Suite::start();
    let origin = &suite.web.origin;

    // A raw body, waited for: the answer is the finished job with its document.
    let content = b"quarterly figures: 42 apples\n".to_vec();
    let answer = upload_raw(origin, "?name=figures%20Q3.txt&wait=60s", &content);
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, suite.logs());
    let upload = &answer.body["uploads"][0];
    assert_eq!(upload["name"], "figures Q3.txt");
    assert_eq!(upload["size"], content.len());
    let job_id = upload["job_id"].as_i64().unwrap();
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("/api/jobs/{job_id}").as_str())
    );
    assert_eq!(upload["job"]["state"], "succeeded", "{}", answer.body);
    let document = &upload["job"]["document"];
    assert_eq!(document["original_name"], "figures Q3.txt");
    assert_eq!(document["size"], content.len());
    assert_eq!(document["mime"], "text/plain", "{document}");

    // Several files in one multipart form, not waited for: 202 with one job each, and each
    // job, waited for afterwards, has its document.
    let (content_type, body) = multipart(&[
        ("file", Some(b"one.txt"), b"first file\n"),
        (
            "file",
            Some("zwei-\u{fc}ber.txt".as_bytes()),
            b"second file\n",
        ),
    ]);
    let answer = send_upload(origin, "", Some(&content_type), body);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let uploads = answer.body["uploads"].as_array().unwrap().clone();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[1]["name"], "zwei-\u{fc}ber.txt");
    for upload in &uploads {
        let job_id = upload["job_id"].as_i64().unwrap();
        let (status, job) = get(origin, &format!("/api/jobs/{job_id}?wait=60s"));
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["document"]["original_name"], upload["name"]);
    }

    // The same bytes again are a duplicate of the first document, found the one way.
    let answer = upload_raw(origin, "?name=again.txt&wait=60s", &content);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let job = &answer.body["uploads"][0]["job"];
    assert_eq!(job["result"]["duplicate"], true, "{job}");
    assert_eq!(job["document"]["id"], document["id"]);

    // Everything went through the inbox into the library; nothing is left behind.
    assert!(
        wait_until(DEADLINE, || names_in(&suite.inbox()).is_empty()),
        "the inbox still holds {:?}",
        names_in(&suite.inbox())
    );
    assert_eq!(names_in(&suite.staging()), Vec::<String>::new());
    assert_eq!(files_under(&suite.library()).len(), 3);
    // The monitor saw the same files and queued nothing more: one job per upload.
    let jobs = suite.fixture.store().job_counts().unwrap();
    assert_eq!(jobs[&JobState::Succeeded], 4, "{jobs:?}");
}

#[test]
fn bad_uploads_are_refused_with_a_code_and_leave_nothing() {
    let fixture = SuiteFixture::new("max_upload_size = \"1 KiB\"\nmax_wait = \"1m\"", "");
    let web = WebDaemon::start(&fixture);
    let origin = &web.origin;
    let root = fixture.directory.path();
    let refused = |answer: &Answer, status: u16, code: &str, reason: Option<&str>| {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
        if let Some(reason) = reason {
            assert_eq!(answer.body["error"]["reason"], reason, "{}", answer.body);
        }
        assert!(
            !answer.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    };

    refused(
        &upload_raw(origin, "?name=empty.txt", b""),
        400,
        "invalid_argument",
        None,
    );
    refused(
        &upload_raw(origin, "", b"no name"),
        400,
        "invalid_argument",
        None,
    );
    refused(
        &send_upload(
            origin,
            "?name=a.txt",
            Some("application/x-www-form-urlencoded"),
            b"a=b".to_vec(),
        ),
        415,
        "unsupported_media_type",
        None,
    );
    refused(
        &send_upload(
            origin,
            "?name=a.txt",
            Some("multipart/mixed; boundary=x"),
            b"--x--".to_vec(),
        ),
        415,
        "unsupported_media_type",
        None,
    );
    // One byte over the limit, declared (refused before reading) and chunked (refused while
    // streaming); exactly at the limit is accepted.
    let limit = 1024;
    refused(
        &upload_raw(origin, "?name=big.bin", &vec![7u8; limit + 1]),
        413,
        "payload_too_large",
        None,
    );
    let (content_type, body) = multipart(&[("file", Some(b"big.bin"), &vec![7u8; limit + 1])]);
    refused(
        &send_upload(origin, "", Some(&content_type), body),
        413,
        "payload_too_large",
        None,
    );
    for (name, query) in [
        ("traversal", "?name=..%2F..%2Fetc%2Fpasswd"),
        ("a path", "?name=dir%2Fa.txt"),
        ("dot-dot", "?name=.."),
        ("NUL", "?name=a%00b.txt"),
        ("control character", "?name=a%01b.txt"),
        ("hidden", "?name=.hidden"),
        ("part file", "?name=x.part"),
        ("not UTF-8", "?name=%FF%FE.txt"),
        ("over-long", &format!("?name={}.txt", "x".repeat(300))),
    ] {
        let answer = upload_raw(origin, query, b"hostile");
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        assert_eq!(
            answer.body["error"]["reason"], "invalid_file_name",
            "{name}: {}",
            answer.body
        );
    }
    // Hostile names in multipart parts get the same verdict.
    for filename in [&b"../x.txt"[..], b"a/b.txt", b"\xff.txt", b"a\x01.txt"] {
        let (content_type, body) = multipart(&[("file", Some(filename), b"hostile")]);
        let answer = send_upload(origin, "", Some(&content_type), body);
        assert_eq!(answer.status, 400, "{filename:?}: {}", answer.body);
        assert_eq!(
            answer.body["error"]["reason"], "invalid_file_name",
            "{filename:?}: {}",
            answer.body
        );
    }
    // A part without a file name, and a form without any file, and a second, good file after
    // a bad one: nothing of the request is stored.
    let (content_type, body) = multipart(&[
        ("file", Some(b"good.txt"), b"good"),
        ("comment", None, b"just text"),
    ]);
    refused(
        &send_upload(origin, "", Some(&content_type), body),
        400,
        "invalid_argument",
        None,
    );
    let (content_type, body) = multipart(&[]);
    refused(
        &send_upload(origin, "", Some(&content_type), body),
        400,
        "invalid_argument",
        None,
    );
    // Waits: above the maximum, and not a duration.
    refused(
        &upload_raw(origin, "?name=a.txt&wait=2m", b"a"),
        400,
        "invalid_argument",
        Some("out_of_range"),
    );
    refused(
        &upload_raw(origin, "?name=a.txt&wait=soon", b"a"),
        400,
        "invalid_argument",
        Some("invalid_duration"),
    );
    refused(
        &upload_raw(origin, "?name=a.txt&colour=red", b"a"),
        400,
        "invalid_argument",
        None,
    );
    // The read token may not upload.
    let mut response = http_agent()
        .post(format!("{origin}/api/documents?name=a.txt"))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .header("Content-Type", "application/octet-stream")
        .send(&b"a"[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let _ = response.body_mut().read_to_string();

    assert_eq!(names_in(&root.join("inbox")), Vec::<String>::new());
    assert_eq!(names_in(&root.join("staging")), Vec::<String>::new());
    assert_eq!(job_count(&fixture), 0);

    // A good upload at exactly the limit works, and is the only thing stored.
    let answer = upload_raw(origin, "?name=exact.bin", &vec![1u8; limit]);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(names_in(&root.join("inbox")), vec!["exact.bin".to_owned()]);
    assert_eq!(job_count(&fixture), 1);
    // A second file of the same name does not replace the first.
    let answer = upload_raw(origin, "?name=exact.bin", b"other");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["uploads"][0]["stored_as"], "exact-1.bin");
    assert_eq!(
        names_in(&root.join("inbox")),
        vec!["exact-1.bin", "exact.bin"]
    );
}

#[test]
fn a_client_that_leaves_mid_upload_leaves_no_file_and_no_job() {
    let fixture = SuiteFixture::new("max_upload_size = \"10 MiB\"", "");
    let web = WebDaemon::start(&fixture);
    let root = fixture.directory.path();
    for multipart_form in [false, true] {
        let mut stream = TcpStream::connect(web.address).expect("connect");
        let (content_type, head) = if multipart_form {
            (
                "multipart/form-data; boundary=b",
                b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"cut.bin\"\r\n\r\n"
                    .to_vec(),
            )
        } else {
            ("application/octet-stream", Vec::new())
        };
        write!(
            stream,
            "POST /api/documents?name=cut.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {WEB_TEST_TOKEN}\r\nContent-Type: {content_type}\r\n\
             Content-Length: 5000000\r\n\r\n",
        )
        .unwrap();
        let query_free = multipart_form;
        if query_free {
            // A multipart upload takes no ?name=; send the request line again without it.
            drop(stream);
            stream = TcpStream::connect(web.address).expect("connect");
            write!(
                stream,
                "POST /api/documents HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: Bearer {WEB_TEST_TOKEN}\r\nContent-Type: {content_type}\r\n\
                 Content-Length: 5000000\r\n\r\n",
            )
            .unwrap();
        }
        stream.write_all(&head).unwrap();
        // Enough bytes that the server has certainly started the staged file.
        let chunk = vec![9u8; 64 * 1024];
        for _ in 0..8 {
            stream.write_all(&chunk).unwrap();
        }
        stream.flush().unwrap();
        assert!(
            wait_until(DEADLINE, || !names_in(&root.join("staging")).is_empty()),
            "the upload never reached the staging folder: {}",
            web.process.log()
        );
        drop(stream);
        assert!(
            wait_until(DEADLINE, || names_in(&root.join("staging")).is_empty()),
            "the unfinished upload stayed in staging: {:?}",
            names_in(&root.join("staging"))
        );
        assert_eq!(names_in(&root.join("inbox")), Vec::<String>::new());
        assert_eq!(job_count(&fixture), 0);
    }
}

/// Reads a job's SSE stream to its end; returns `(id, event, data)` triples (`id` empty for
/// the `end` event).
fn read_sse(
    origin: &str,
    job_id: i64,
    last_event_id: Option<&str>,
) -> (u16, Vec<(String, String, Value)>) {
    let mut request = http_agent()
        .get(format!("{origin}/api/jobs/{job_id}/events"))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.call().expect("open the job's stream");
    let status = response.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let (mut id, mut name) = (String::new(), String::new());
    for line in reader.lines() {
        let line = line.expect("stream line");
        if let Some(value) = line.strip_prefix("id: ") {
            id = value.to_owned();
        } else if let Some(value) = line.strip_prefix("event: ") {
            name = value.to_owned();
        } else if let Some(value) = line.strip_prefix("data: ") {
            events.push((
                std::mem::take(&mut id),
                std::mem::take(&mut name),
                serde_json::from_str(value).expect("data is JSON"),
            ));
        }
    }
    (status, events)
}

#[test]
fn a_jobs_stream_replays_what_was_missed_and_ends_with_the_outcome() {
    let suite = Suite::start();
    let origin = &suite.web.origin;
    // A job that runs long enough for its progress to be saved (at most once a second by the
    // worker, so a 2.5 s body saves at least once).
    let job_id = suite
        .fixture
        .store()
        .enqueue(&NewJob::new(
            "noop",
            json!({ "sleep_ms": 2500, "steps": 3 }),
        ))
        .unwrap()
        .id;
    let (status, events) = read_sse(origin, job_id, None);
    assert_eq!(status, 200);
    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    // Each result step as the body recorded it, in order.
    let steps: Vec<&Value> = events
        .iter()
        .filter(|(_, name, _)| name == "step")
        .map(|(_, _, data)| &data["step"])
        .collect();
    assert_eq!(steps.len(), 3, "{events:?}");
    for (index, step) in steps.iter().enumerate() {
        assert_eq!(step["n"], index + 1, "{step}");
    }
    assert_eq!(names.first(), Some(&"state"), "{events:?}");
    assert_eq!(events[0].0, "0", "the creation is entry 0");
    assert_eq!(events[0].2["to"], "queued");
    assert!(names.contains(&"progress"), "{names:?}");
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    let end = &events.last().unwrap().2;
    assert_eq!(end["state"], "succeeded");
    let final_state = &events[events.len() - 2];
    assert_eq!(final_state.1, "state");
    assert_eq!(final_state.2["to"], "succeeded");
    // Ids grow, so a reconnect can resume.
    let ids: Vec<i64> = events
        .iter()
        .filter(|(id, _, _)| !id.is_empty())
        .map(|(id, _, _)| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

    // Reconnecting after the end: nothing more, and 204 tells EventSource to stop.
    let (status, _) = read_sse(origin, job_id, Some(&final_state.0));
    assert_eq!(status, 204);
    // Reconnecting from the middle replays the rest, not the start.
    let middle = &events[1].0;
    let (status, replayed) = read_sse(origin, job_id, Some(middle));
    assert_eq!(status, 200);
    assert_eq!(replayed.len(), events.len() - 2, "{replayed:?}");
    assert_eq!(replayed[0].0, events[2].0);
    // A stale id (before this job's first entry) replays everything after it; a garbage one
    // is refused.
    let (status, stale) = read_sse(origin, job_id, Some("0"));
    assert_eq!(status, 200);
    assert_eq!(stale.len(), events.len() - 1);
    let (status, body) = {
        let mut response = http_agent()
            .get(format!("{origin}/api/jobs/{job_id}/events"))
            .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
            .header("Last-Event-ID", "yesterday")
            .call()
            .unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(status, 400);
    assert!(body.contains("invalid_event_id"), "{body}");

    // NDJSON: the same events, one JSON object a line.
    let response = http_agent()
        .get(format!("{origin}/api/jobs/{job_id}/events"))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .header("Accept", "application/x-ndjson")
        .call()
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let mut text = String::new();
    response
        .into_body()
        .into_reader()
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    let ndjson_names: Vec<&str> = lines
        .iter()
        .map(|line| line["event"].as_str().unwrap())
        .collect();
    assert_eq!(ndjson_names, names);
    assert_eq!(lines.last().unwrap()["job"]["state"], "succeeded");

    // An ingest job's stream names its steps: analysed, then filed, then the outcome.
    let answer = upload_raw(
        origin,
        "?name=stepwise.txt&wait=60s",
        b"one step at a time\n",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let upload_job = answer.body["uploads"][0]["job_id"].as_i64().unwrap();
    let (status, events) = read_sse(origin, upload_job, None);
    assert_eq!(status, 200);
    let steps: Vec<&str> = events
        .iter()
        .filter(|(_, name, _)| name == "step")
        .map(|(_, _, data)| data["step"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["analysed", "filed"], "{events:?}");
    let analysed = &events.iter().find(|(_, name, _)| name == "step").unwrap().2;
    assert_eq!(analysed["step"]["mime"], "text/plain");
    assert_eq!(analysed["step"]["size"], 19);
    let end = &events.last().unwrap().2;
    assert_eq!(end["document"]["original_name"], "stepwise.txt", "{end}");

    // Unknown job: 404 before any stream starts.
    let (status, body) = get(origin, "/api/jobs/999999/events");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn waiters_are_answered_when_their_job_ends_whoever_ends_it() {
    let mut suite = Suite::start();
    let origin = suite.web.origin.clone();
    let enqueue = |sleep_ms: u64| {
        suite
            .fixture
            .store()
            .enqueue(&NewJob::new("noop", json!({ "sleep_ms": sleep_ms })))
            .unwrap()
            .id
    };

    // A wait that ends first answers 202 with the job as it is.
    let slow = enqueue(60_000);
    let (status, job) = get(&origin, &format!("/api/jobs/{slow}?wait=1s"));
    assert_eq!(status, 202, "{job}");
    assert!(["queued", "running"].contains(&job["state"].as_str().unwrap()));
    // Many clients waiting on one job are all answered when it ends, here by a cancel.
    let waiting: Vec<_> = (0..40)
        .map(|_| {
            let origin = origin.clone();
            std::thread::spawn(move || get(&origin, &format!("/api/jobs/{slow}?wait=60s")))
        })
        .collect();
    let (status, _) = suite.post_json(&format!("/api/jobs/{slow}/cancel"), &json!({}));
    assert_eq!(status, 200);
    for waiter in waiting {
        let (status, job) = waiter.join().unwrap();
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["state"], "cancelled", "{job}");
    }

    // A worker killed while a client waits: another worker finishes the job and the client
    // gets the outcome.
    let job_id = enqueue(3000);
    let waiter = {
        let origin = origin.clone();
        std::thread::spawn(move || get(&origin, &format!("/api/jobs/{job_id}?wait=60s")))
    };
    let store = suite.fixture.store();
    assert!(wait_until(DEADLINE, || {
        store.get_job(job_id).unwrap().state == JobState::Running
    }));
    let owner = store.get_job(job_id).unwrap().lease_owner.unwrap();
    let instance: usize = owner.rsplit('@').next().unwrap().parse().unwrap();
    suite.workers[instance - 1].kill_hard();
    let (status, job) = waiter.join().unwrap();
    assert_eq!(status, 200, "{job}\n{}", suite.logs());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");

    // sluice-web stopped while a client waits: the wait ends at once (the client gets the job
    // as it is, or its connection closes if the stop came before the request was read), and
    // asking the restarted web gets the outcome.
    let job_id = enqueue(3000);
    let waiter = {
        let origin = origin.clone();
        std::thread::spawn(move || {
            http_agent()
                .get(format!("{origin}/api/jobs/{job_id}?wait=60s"))
                .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
                .call()
                .map(|response| response.status().as_u16())
        })
    };
    assert!(wait_until(DEADLINE, || {
        store.get_job(job_id).unwrap().state == JobState::Running
    }));
    let asked = Instant::now();
    suite.web.process.signal(Signal::SIGTERM).unwrap();
    let answer = waiter.join().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the wait was not ended by the stop"
    );
    if let Ok(status) = answer {
        assert!(status == 202 || status == 200, "{status}");
    }
    suite.web.process.wait_for_exit(DEADLINE).unwrap();
    suite.web = WebDaemon::start(&suite.fixture);
    let (status, job) = get(&suite.web.origin, &format!("/api/jobs/{job_id}?wait=60s"));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "succeeded");
}

#[test]
fn the_event_stream_filters_by_event_and_job() {
    let suite = Suite::start();
    let origin = &suite.web.origin;
    let (status, body) = get(origin, "/api/events?kind=NoSuchEvent");
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(origin, "/api/events?job=0");
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(origin, "/api/events?colour=red");
    assert_eq!(status, 400, "{body}");

    let watched = suite
        .fixture
        .store()
        .enqueue(&NewJob::new("noop", json!({ "sleep_ms": 1500 })))
        .unwrap()
        .id;
    let response = http_agent()
        .get(format!(
            "{origin}/api/events?kind=JobFinished,JobStarted&job={watched}"
        ))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (sender, lines) = std::sync::mpsc::channel();
    let reader = BufReader::new(response.into_body().into_reader());
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // Other jobs come and go meanwhile; none of them may show up.
    for _ in 0..5 {
        suite
            .fixture
            .store()
            .enqueue(&NewJob::new("noop", json!({})))
            .unwrap();
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["job_id"], watched, "{data}");
            seen.push(data);
        } else if let Some(name) = line.strip_prefix("event: ") {
            assert!(["JobStarted", "JobFinished"].contains(&name), "{name}");
        }
        if seen.iter().any(|data| data["state"] == "succeeded") {
            break;
        }
    }
    assert!(
        seen.iter().any(|data| data["state"] == "succeeded"),
        "{seen:?}"
    );
}

#[test]
fn sluicectl_submits_files_waits_for_them_and_watches_jobs() {
    let suite = Suite::start();
    suite.fixture.pin_web_listen(suite.web.address);
    let inputs = suite.root().join("to-submit");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("first.txt"), "first submitted file\n").unwrap();
    std::fs::write(inputs.join("second.txt"), "second submitted file\n").unwrap();
    let first = inputs.join("first.txt");
    let second = inputs.join("second.txt");

    let output = suite.sluicectl(&[
        "--json",
        "submit",
        first.to_str().unwrap(),
        second.to_str().unwrap(),
        "--wait",
        "60s",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    for (answer, name) in answers.iter().zip(["first.txt", "second.txt"]) {
        assert_eq!(answer["job"]["state"], "succeeded", "{answer}");
        assert_eq!(answer["job"]["document"]["original_name"], name);
    }
    // The sources are the user's: uploading copies them.
    assert!(first.exists() && second.exists());

    // A name the policy refuses stops the command before anything is sent.
    let hidden = inputs.join(".hidden");
    std::fs::write(&hidden, "x").unwrap();
    let before = job_count(&suite.fixture);
    let output = suite.sluicectl(&["submit", first.to_str().unwrap(), hidden.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains(".hidden"));
    assert_eq!(job_count(&suite.fixture), before);
    let output = suite.sluicectl(&["submit", first.to_str().unwrap(), "--wait", "1day"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");

    // jobs watch follows a job to its end, in plain lines when piped.
    let mut store = suite.fixture.store();
    let slow = store
        .enqueue(&NewJob::new("noop", json!({ "sleep_ms": 1500 })))
        .unwrap()
        .id;
    let output = suite.sluicectl(&["jobs", "watch", &slow.to_string()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(" queued"), "{text}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains(" running (attempt 1")),
        "{text}"
    );
    assert!(lines.last().unwrap().ends_with(" succeeded"), "{text}");
    // A job that fails: exit status 7, with the error.
    let broken = store
        .enqueue(&NewJob::new("noop", json!({ "sleep_ms": "soon" })))
        .unwrap()
        .id;
    let output = suite.sluicectl(&["--json", "jobs", "watch", &broken.to_string()]);
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    // One JSON object per event, then the error object every --json failure prints.
    let values: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    let (error, events) = values.split_last().unwrap();
    assert_eq!(events.last().unwrap()["to"], "failed", "{events:?}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sleep_ms"),
        "{error}"
    );
    let output = suite.sluicectl(&["jobs", "watch", "999999"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
}

#[test]
fn sluicectl_submit_without_sluice_web_says_it_is_unavailable() {
    // No sluice-web runs: the bus has no answer and [web] listen (port 0) none either.
    let fixture = SuiteFixture::new("", "");
    let file = fixture.directory.path().join("a.txt");
    std::fs::write(&file, "a").unwrap();
    let output = sluicectl_submit(&fixture, &file);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("sluice-web does not answer"));
    assert_eq!(job_count(&fixture), 0);
}

/// A stand-in's HTTP listener on 127.0.0.1: it keeps every request head it is sent and
/// answers 503.
fn recording_listener() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = std::sync::Arc::clone(&heads);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut head).is_ok_and(|read| read > 2) {}
            recorded.lock().unwrap().push(head);
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                  Connection: close\r\n\r\n",
            );
        }
    });
    (address, heads)
}

/// Security review (medium): `sudo sluicectl submit` read sluice-web's address from whoever
/// owned `org.sluice.Web1` and sent the admin token there, so a process that took the name
/// could receive it. Now the announcement is believed only from an owner connected with
/// group `_sluice-web` (sluice-web's unit alone has it; see the next test) or when it is the
/// loopback address `[web] listen` names. A stand-in without the group owns the name and
/// announces its own HTTP listener: sluicectl refuses, sends nothing and stores nothing; once
/// the configuration names that same address, the token goes there as it would without a
/// bus.
#[test]
fn sluicectl_submit_sends_the_token_only_where_a_verified_sluice_web_listens() {
    use sluice_core::bus::{CallerPolicy, WebService, WebStatus};

    let fixture = SuiteFixture::new("", "");
    let file = fixture.directory.path().join("a.txt");
    std::fs::write(&file, "a").unwrap();
    let (stand_in_address, heads) = recording_listener();
    // A runtime with a thread of its own, so the stand-in answers while the test waits for
    // sluicectl.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connection = fixture.connect(&runtime);
    let (_stand_in, _commands) = runtime
        .block_on(WebService::start(
            &connection,
            CallerPolicy::for_this_process(),
            WebStatus::starting(&stand_in_address.to_string(), "/", 1, "normal"),
        ))
        .expect("the stand-in owns org.sluice.Web1");
    let submit = || sluicectl_submit(&fixture, &file);

    // [web] listen names another address (where no one listens): refused.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fixture.pin_web_listen(elsewhere.local_addr().unwrap());
    drop(elsewhere);
    let output = submit();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr.contains("not sending the API token")
            && stderr.contains("org.sluice.Web1")
            && stderr.contains(&stand_in_address.to_string()),
        "{stderr}"
    );
    // The stand-in's listener got nothing: sluicectl had ended before this connection, so
    // one of its own would have been accepted (and recorded) first.
    TcpStream::connect(stand_in_address)
        .unwrap()
        .write_all(b"PROBE / HTTP/1.1\r\n\r\n")
        .unwrap();
    assert!(wait_until(DEADLINE, || !heads.lock().unwrap().is_empty()));
    let seen = heads.lock().unwrap().clone();
    assert!(seen[0].starts_with("PROBE"), "sluicectl sent {seen:?}");
    assert_eq!(job_count(&fixture), 0);

    // The configuration names the stand-in's address: where the token would go anyway.
    let text = std::fs::read_to_string(&fixture.config_path).unwrap();
    let listen_line = text
        .lines()
        .find(|line| line.starts_with("listen = "))
        .unwrap()
        .to_owned();
    std::fs::write(
        &fixture.config_path,
        text.replace(&listen_line, &format!("listen = \"{stand_in_address}\"")),
    )
    .unwrap();
    let output = submit();
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let seen = heads.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|head| head.contains(&format!("Bearer {}", WEB_TEST_TOKEN))),
        "{seen:?}"
    );
}

/// Security review (medium, PID reuse): `sluicectl submit` believed another address than
/// `[web] listen` only when systemd placed the PID of `org.sluice.Web1`'s owner in
/// sluice-web.service, and a PID can be reused. Now it believes the owner whose bus
/// connection was made with group `_sluice-web`, which only sluice-web's unit gets. A
/// stand-in process with that group (no systemd here, so the PID check could never pass)
/// announces its own listener while `[web] listen` names another port: the token goes to the
/// stand-in. Without the group, the first test refuses the same announcement.
#[test]
fn sluicectl_submit_believes_an_owner_connected_with_sluice_webs_group() {
    if !crate::support::have_root() {
        return;
    }
    let accounts = crate::support::ensure_sluice_accounts().unwrap();
    let fixture = SuiteFixture::new("", "");
    let file = fixture.directory.path().join("a.txt");
    std::fs::write(&file, "a").unwrap();
    let (stand_in_address, heads) = recording_listener();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fixture.pin_web_listen(elsewhere.local_addr().unwrap());
    drop(elsewhere);
    let mut command = std::process::Command::new("setpriv");
    command
        .args(["--groups", &accounts.forwarding_group_id.to_string()])
        .arg(env!("CARGO_BIN_EXE_bus-fixture"))
        .args(["--address", fixture.bus.address(), "--serve", "web"])
        .args(["--web-listen", &stand_in_address.to_string()]);
    let _stand_in =
        crate::support::DaemonProcess::start_until_line(command, "ready").expect("the stand-in");
    let output = sluicectl_submit(&fixture, &file);
    // The stand-in's listener answers 503: sluicectl reports sluice-web unavailable.
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let seen = heads.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|head| head.contains(&format!("Bearer {}", WEB_TEST_TOKEN))),
        "{seen:?} {output:?}"
    );
}
