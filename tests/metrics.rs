//! `GET /metrics` of the real suite (issue 11): after files were ingested and a job was
//! cancelled, the numbers say what happened, `promtool check metrics` (Debian's `prometheus`)
//! accepts the text, and `[web] metrics_access` refuses whom it should, both ways, over real
//! sockets.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use sluice_core::store::jobs::JobState;

use crate::support::{
    DEADLINE, SUITE_WORKERS, Suite, SuiteFixture, WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon,
    http_agent, skip, wait_until,
};

/// Files the test ingests.
const FILES: usize = 3;

/// `GET {origin}/metrics` with an optional bearer token: status and body text.
fn scrape(origin: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http_agent().get(format!("{origin}/metrics"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().expect("GET /metrics");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    (status, text)
}

/// Every sample of a scrape by its name with labels as written (`name{a="b"}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The path of `promtool`, or `None` after saying the test is skipped (a failure as root,
/// where tests/install-needs.sh installs it).
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|directory| directory.join("promtool"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        if nix::unistd::geteuid().is_root() {
            panic!(
                "promtool is missing although this runs as root: tests/install-needs.sh installs \
                 it (Debian package prometheus)"
            );
        }
        skip("needs promtool (Debian package prometheus; tests/install-needs.sh installs it)");
    }
    found
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool_check(promtool: &std::path::Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn metrics_of_the_real_suite_count_what_happened_and_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let suite = Suite::start();
    let origin = &suite.web.origin;

    // Three files become three ingest jobs that succeed; one job of a kind nobody works on is
    // cancelled through the API.
    for index in 0..FILES {
        std::fs::write(
            suite.inbox().join(format!("note-{index}.txt")),
            format!("metrics test file {index}\n"),
        )
        .expect("write into the inbox");
    }
    let idle_job = suite.fixture.enqueue("metrics-test");
    let cancelled = http_agent()
        .post(format!("{origin}/api/jobs/{idle_job}/cancel"))
        .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
        .send_empty()
        .expect("cancel");
    assert_eq!(cancelled.status().as_u16(), 200);
    let ingested = wait_until(DEADLINE, || {
        suite.fixture.store().job_counts().unwrap()[&JobState::Succeeded] == FILES as u64
    });
    assert!(ingested, "the files were not ingested: {}", suite.logs());
    let (status, _) = suite.get("/api/status");
    assert_eq!(status, 200);

    // The answer is cached for a second, and the monitor publishes its counters at its status
    // interval: read until every number has caught up.
    let expected = [
        (r#"sluice_jobs{kind="ingest",state="succeeded"}"#, FILES),
        (r#"sluice_jobs{kind="metrics-test",state="cancelled"}"#, 1),
        (r#"sluice_jobs_enqueued_total{kind="ingest"}"#, FILES),
        (r#"sluice_jobs_enqueued_total{kind="metrics-test"}"#, 1),
        (r#"sluice_jobs_claimed_total{kind="ingest"}"#, FILES),
        (r#"sluice_jobs_completed_total{kind="ingest"}"#, FILES),
        (r#"sluice_jobs_cancelled_total{kind="metrics-test"}"#, 1),
        (
            r#"sluice_job_attempt_duration_seconds_count{kind="ingest",state="succeeded"}"#,
            FILES,
        ),
        (
            r#"sluice_http_requests_total{method="GET",route="/api/status",status="200"}"#,
            1,
        ),
        (
            r#"sluice_http_requests_total{method="POST",route="/api/jobs/{id}/cancel",status="200"}"#,
            1,
        ),
        (
            r#"sluice_monitor_files_detected_total{daemon="sluice-monitor"}"#,
            FILES,
        ),
        (r#"sluice_daemon_up{daemon="sluice-monitor"}"#, 1),
        (r#"sluice_daemon_up{daemon="sluice-scraper"}"#, 1),
        (r#"sluice_daemon_up{daemon="sluice-web"}"#, 1),
        (r#"sluice_daemon_up{daemon="sluice-ingest-worker@1"}"#, 1),
        (r#"sluice_daemon_up{daemon="sluice-ingest-worker@2"}"#, 1),
    ];
    // The workers publish their counters at their status interval too.
    let workers_done = |seen: &BTreeMap<String, f64>| -> f64 {
        (1..=SUITE_WORKERS)
            .map(|instance| {
                seen.get(&format!(
                    r#"sluice_worker_jobs_done_total{{daemon="sluice-ingest-worker@{instance}"}}"#
                ))
                .copied()
                .unwrap_or_default()
            })
            .sum()
    };
    let mut text = String::new();
    let caught_up = wait_until(DEADLINE, || {
        let (status, body) = scrape(origin, Some(WEB_READ_TOKEN));
        assert_eq!(status, 200, "{body}");
        text = body;
        let seen = samples(&text);
        workers_done(&seen) == FILES as f64
            && expected
                .iter()
                .all(|(series, value)| seen.get(*series) == Some(&(*value as f64)))
    });
    let seen = samples(&text);
    for (series, value) in expected {
        assert_eq!(
            seen.get(series),
            Some(&(value as f64)),
            "{series} should be {value}:\n{text}"
        );
    }
    assert_eq!(
        SUITE_WORKERS, 2,
        "the daemon_up lines above name two workers"
    );
    assert_eq!(workers_done(&seen), FILES as f64, "{text}");
    assert!(caught_up);
    // No job failed, the database has pages, and no raw path became a label.
    assert!(!text.contains("sluice_jobs_failed_total{"), "{text}");
    assert!(seen["sluice_database_size_bytes"] > 0.0, "{text}");
    assert!(
        !text.contains(&format!("/api/jobs/{idle_job}")),
        "a raw path is a label: {text}"
    );

    eprintln!("METRICS\n{text}");
    let (valid, said) = promtool_check(&promtool, &text);
    assert!(valid, "promtool check metrics refused it: {said}\n{text}");
    // Not a test that cannot fail: promtool refuses a broken exposition.
    let (valid, _) = promtool_check(&promtool, "# TYPE x counter\nx{ 1\n");
    assert!(!valid, "promtool accepted a broken exposition");
}

#[test]
fn metrics_access_token_needs_a_read_token() {
    let fixture = SuiteFixture::new("", "");
    let web = WebDaemon::start(&fixture);
    let (status, body) = scrape(&web.origin, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"unauthorized\""), "{body}");
    let (status, body) = scrape(&web.origin, Some("wrong-token-but-long-enough-0123"));
    assert_eq!(status, 401, "{body}");
    for token in [WEB_READ_TOKEN, WEB_TEST_TOKEN] {
        let (status, body) = scrape(&web.origin, Some(token));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("sluice_daemon_up{daemon=\"sluice-web\"} 1"),
            "{body}"
        );
    }
}

/// With `loopback`, a client on 127.0.0.1 needs no token and a client from another address is
/// refused even with the admin token. The other address is this host's own address on its
/// default route, so both clients are real connections; without one the second half is
/// skipped.
#[test]
fn metrics_access_loopback_serves_this_host_only() {
    let outside = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .ok()
        .map(|address| address.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let allowed = match outside {
        Some(ip) => format!(r#"["127.0.0.1", "localhost", "{ip}"]"#),
        None => r#"["127.0.0.1", "localhost"]"#.to_owned(),
    };
    let fixture = SuiteFixture::new(
        &format!("metrics_access = \"loopback\"\nallowed_hosts = {allowed}"),
        "",
    );
    // Listen on every address, so the host's own address reaches it too.
    let config = std::fs::read_to_string(&fixture.config_path).unwrap();
    std::fs::write(
        &fixture.config_path,
        config.replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\""),
    )
    .unwrap();
    let web = WebDaemon::start(&fixture);
    let port = web.address.port();
    let (status, body) = scrape(&format!("http://127.0.0.1:{port}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sluice_daemon_up"), "{body}");
    // The API itself still needs its token.
    let (status, _) = crate::support::http_result(
        http_agent()
            .get(format!("http://127.0.0.1:{port}/api/status"))
            .call(),
    );
    assert_eq!(status, 401);
    let Some(ip) = outside else {
        skip("needs an address besides loopback for the refused half");
        return;
    };
    for token in [None, Some(WEB_TEST_TOKEN)] {
        let (status, body) = scrape(&format!("http://{ip}:{port}"), token);
        assert_eq!(status, 403, "token {token:?} from {ip}: {body}");
        assert!(body.contains("metrics_access"), "{body}");
    }
}
