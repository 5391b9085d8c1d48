//! One corpus of good and bad download submissions sent through every entry point — the HTTP
//! API of a real `sluice-web`, `AddDownload` on a real `sluice-scraper` on a private bus, and
//! a real `sluicectl download` — with the same verdict (accepted or refused), the same policy
//! code (`invalid_url`, `forbidden_address`, ...) everywhere, and nothing created by a refusal.
//!
//! Good inputs use the public IP literal 93.184.216.34, which the submit-time check passes
//! without DNS; nothing here needs the network (the accepted downloads fail later, unseen).

use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};
use sluice_core::bus::{BusError, DownloadOptions, ScraperProxy};
use sluice_core::policy::code_in_message;
use zbus::proxy::CacheProperties;

use crate::support::{
    DaemonProcess, SuiteFixture, WEB_TEST_TOKEN, WebDaemon, binary_path, http_agent, http_result,
    wait_until,
};

/// A URL-shaped public address; `GOOD` plus a path is an accepted submission.
const GOOD: &str = "https://93.184.216.34/a.bin";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// One submission and the verdict every entry point must give it.
#[derive(Debug, Clone)]
struct Case {
    url: String,
    file_name: Option<String>,
    bundle: Option<String>,
    sha256: Option<String>,
    max_bytes: Option<u64>,
    /// `None`: accepted. `Some(code)`: refused with this policy code.
    refused_with: Option<&'static str>,
}

impl Case {
    fn url(url: impl Into<String>, refused_with: Option<&'static str>) -> Case {
        Case {
            url: url.into(),
            file_name: None,
            bundle: None,
            sha256: None,
            max_bytes: None,
            refused_with,
        }
    }

    fn with(change: impl FnOnce(&mut Case), refused_with: Option<&'static str>) -> Case {
        let mut case = Case::url(GOOD, refused_with);
        change(&mut case);
        case
    }

    /// D-Bus strings and command-line arguments cannot carry NUL at all (the client library
    /// and the kernel refuse them before sluice sees anything), so such a case goes over HTTP
    /// only, where JSON can encode it.
    fn carries_nul(&self) -> bool {
        [
            Some(&self.url),
            self.file_name.as_ref(),
            self.bundle.as_ref(),
            self.sha256.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.contains('\0'))
    }
}

fn corpus() -> Vec<Case> {
    let invalid_url = Some("invalid_url");
    let forbidden = Some("forbidden_address");
    let file_name = Some("invalid_file_name");
    let name = Some("invalid_name");
    let sha256 = Some("invalid_sha256");
    let range = Some("out_of_range");
    vec![
        // Accepted.
        Case::url(GOOD, None),
        Case::url("http://93.184.216.34:8080/dir/model%20v2.bin?x=1#top", None),
        Case::url("https://[2606:4700::1111]/weights.bin", None),
        Case::with(
            |case| {
                case.file_name = Some("weights.bin".into());
                case.bundle = Some("model-x".into());
                case.sha256 = Some("AB".repeat(32));
                case.max_bytes = Some(1000);
            },
            None,
        ),
        // URL shape.
        Case::url("", invalid_url),
        Case::url("file:///etc/passwd", invalid_url),
        Case::url("ftp://93.184.216.34/a.bin", invalid_url),
        Case::url("javascript:alert(1)", invalid_url),
        Case::url("not a url", invalid_url),
        Case::url("http://", invalid_url),
        Case::url("https:///a.bin", invalid_url),
        Case::url("http://:80/a.bin", invalid_url),
        Case::url("https://93.184.216.34/a b.bin", invalid_url),
        Case::url("https://93.184.216.34/a\tb.bin", invalid_url),
        Case::url("http://user:secret@93.184.216.34/a.bin", invalid_url),
        Case::url("http://user@93.184.216.34/a.bin", invalid_url),
        Case::url(format!("{GOOD}/{}", "a".repeat(4100)), invalid_url),
        // Addresses downloads may not reach.
        Case::url("http://127.0.0.1/", forbidden),
        Case::url("http://127.0.0.1:8080/a.bin", forbidden),
        Case::url("http://[::1]/", forbidden),
        Case::url("http://169.254.169.254/latest/meta-data/", forbidden),
        Case::url("http://localhost/", forbidden),
        Case::url("http://LOCALHOST./a.bin", forbidden),
        Case::url("http://api.localhost/a.bin", forbidden),
        Case::url("http://10.0.0.1/", forbidden),
        Case::url("http://192.168.1.1/a.bin", forbidden),
        Case::url("http://100.64.0.1/a.bin", forbidden),
        Case::url("http://[::ffff:127.0.0.1]/a.bin", forbidden),
        Case::url("http://[64:ff9b::a00:1]/a.bin", forbidden),
        Case::url("http://[fe80::1]/a.bin", forbidden),
        Case::url("http://0.0.0.0/a.bin", forbidden),
        // File names.
        Case::with(|case| case.file_name = Some("..".into()), file_name),
        Case::with(
            |case| case.file_name = Some("../../etc/passwd".into()),
            file_name,
        ),
        Case::with(|case| case.file_name = Some("x..y".into()), file_name),
        Case::with(|case| case.file_name = Some(" ".into()), file_name),
        Case::with(
            |case| case.file_name = Some(" leading.bin".into()),
            file_name,
        ),
        Case::with(|case| case.file_name = Some("a/b".into()), file_name),
        Case::with(|case| case.file_name = Some("a\\b".into()), file_name),
        Case::with(|case| case.file_name = Some("a\0b".into()), file_name),
        Case::with(|case| case.file_name = Some("a\nb".into()), file_name),
        Case::with(|case| case.file_name = Some("a\u{7}b".into()), file_name),
        Case::with(|case| case.file_name = Some(".hidden".into()), file_name),
        Case::with(|case| case.file_name = Some("x.part".into()), file_name),
        Case::with(|case| case.file_name = Some(String::new()), file_name),
        Case::with(|case| case.file_name = Some("n".repeat(256)), file_name),
        // Digests.
        Case::with(|case| case.sha256 = Some("abc".into()), sha256),
        Case::with(|case| case.sha256 = Some("g".repeat(64)), sha256),
        Case::with(|case| case.sha256 = Some("a".repeat(65)), sha256),
        // Bundle names.
        Case::with(|case| case.bundle = Some("a/b".into()), name),
        Case::with(|case| case.bundle = Some("..".into()), name),
        Case::with(|case| case.bundle = Some("../up".into()), name),
        Case::with(|case| case.bundle = Some("a\\b".into()), name),
        Case::with(|case| case.bundle = Some(String::new()), name),
        Case::with(|case| case.bundle = Some("b".repeat(256)), name),
        // Sizes: zero, above the configured max_download_size (10 GiB), unstorable.
        Case::with(|case| case.max_bytes = Some(0), range),
        Case::with(|case| case.max_bytes = Some(20 << 30), range),
        Case::with(|case| case.max_bytes = Some(u64::MAX), range),
    ]
}

/// What an entry point answered: `Ok(())` accepted, `Err(code)` refused with that policy code
/// (`None` when the refusal carried no policy code, which the test reports as a mismatch).
type Verdict = Result<(), Option<String>>;

#[test]
fn every_entry_point_gives_the_same_verdict_and_code_and_a_refusal_creates_nothing() {
    let web_fixture = SuiteFixture::new("", "");
    // Room for the over-long URL: the harness's 4 KiB body limit would answer 413 before the
    // policy sees the URL, which tests the body limit, not the URL rule.
    let config = std::fs::read_to_string(&web_fixture.config_path).expect("web config");
    std::fs::write(
        &web_fixture.config_path,
        config.replace(
            "max_request_body = \"4 KiB\"",
            "max_request_body = \"64 KiB\"",
        ),
    )
    .expect("rewrite web config");
    let web = WebDaemon::start(&web_fixture);

    let bus_fixture = SuiteFixture::new("", "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut scraper_command = Command::new(binary_path("sluice-scraper"));
    scraper_command
        .arg("--config")
        .arg(&bus_fixture.config_path);
    let scraper = DaemonProcess::start(
        scraper_command,
        &bus_fixture.directory.path().join("scraper.log"),
        "info",
    );
    let connection = bus_fixture.connect(&runtime);
    let proxy: ScraperProxy<'static> = runtime
        .block_on(
            ScraperProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build(),
        )
        .expect("scraper proxy");
    let running = wait_until(STARTUP_DEADLINE, || {
        runtime
            .block_on(proxy.state())
            .is_ok_and(|state| state == "running")
    });
    assert!(running, "sluice-scraper did not start: {}", scraper.log());

    // No daemon on this bus: sluicectl checks, then records the download in the store.
    let cli_fixture = SuiteFixture::new("", "");

    let mut mismatches = Vec::new();
    for case in corpus() {
        let expected: Verdict = match case.refused_with {
            None => Ok(()),
            Some(code) => Err(Some(code.to_owned())),
        };
        let mut answers = vec![(
            "http",
            submitted_through(&web_fixture, || through_http(&web, &case)),
        )];
        if !case.carries_nul() {
            answers.push((
                "dbus",
                submitted_through(&bus_fixture, || through_dbus(&runtime, &proxy, &case)),
            ));
            answers.push((
                "cli",
                submitted_through(&cli_fixture, || through_cli(&cli_fixture, &case)),
            ));
        }
        for (entry_point, (verdict, created)) in answers {
            let expected_created = usize::from(expected.is_ok());
            if verdict != expected || created != expected_created {
                mismatches.push(format!(
                    "{entry_point}: {case:?}\n    expected {expected:?} creating \
                     {expected_created}, got {verdict:?} creating {created}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    drop(scraper);
}

/// Runs one submission and counts the downloads and jobs it created in `fixture`'s store.
fn submitted_through(fixture: &SuiteFixture, submit: impl FnOnce() -> Verdict) -> (Verdict, usize) {
    let before = rows(fixture);
    let verdict = submit();
    let after = rows(fixture);
    assert_eq!(
        after.0 - before.0,
        after.1 - before.1,
        "a download and its job are created together"
    );
    (verdict, (after.0 - before.0) as usize)
}

/// Downloads and jobs in the fixture's store.
fn rows(fixture: &SuiteFixture) -> (u64, u64) {
    let store = fixture.store();
    let downloads = store.download_counts().expect("download counts");
    let jobs = store.job_counts().expect("job counts");
    (downloads.values().sum(), jobs.values().sum())
}

fn through_http(web: &WebDaemon, case: &Case) -> Verdict {
    let mut body = Map::new();
    body.insert("url".into(), Value::from(case.url.as_str()));
    if let Some(file_name) = &case.file_name {
        body.insert("file_name".into(), Value::from(file_name.as_str()));
    }
    if let Some(bundle) = &case.bundle {
        body.insert("bundle".into(), Value::from(bundle.as_str()));
    }
    if let Some(sha256) = &case.sha256 {
        body.insert("sha256".into(), Value::from(sha256.as_str()));
    }
    if let Some(max_bytes) = case.max_bytes {
        body.insert("max_bytes".into(), Value::from(max_bytes));
    }
    let (status, response) = http_result(
        http_agent()
            .post(format!("{}/api/downloads", web.origin))
            .header("Content-Type", "application/json")
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .send(Value::Object(body).to_string()),
    );
    match status {
        201 => Ok(()),
        400 => {
            // The code every client already matches on stays; the policy's is `reason`.
            assert_eq!(response["error"]["code"], "invalid_argument", "{response}");
            let reason = response["error"]["reason"].as_str().map(str::to_owned);
            let message = response["error"]["message"].as_str().unwrap_or_default();
            if let Some(reason) = &reason {
                assert!(message.starts_with(reason.as_str()), "{response}");
            }
            Err(reason)
        }
        other => panic!("HTTP {other} for {case:?}: {response}"),
    }
}

fn through_dbus(
    runtime: &tokio::runtime::Runtime,
    proxy: &ScraperProxy<'static>,
    case: &Case,
) -> Verdict {
    let options = DownloadOptions {
        sha256: case.sha256.clone(),
        bundle: case.bundle.clone(),
        file_name: case.file_name.clone(),
        max_bytes: case.max_bytes,
        source: None,
    };
    match runtime.block_on(proxy.add_download(&case.url, options.to_variants())) {
        Ok(_) => Ok(()),
        Err(BusError::InvalidArgument(message)) => {
            Err(code_in_message(&message).map(str::to_owned))
        }
        Err(other) => panic!("AddDownload {case:?}: {other:?}"),
    }
}

fn through_cli(fixture: &SuiteFixture, case: &Case) -> Verdict {
    let mut command = Command::new(binary_path("sluicectl"));
    command
        .arg("--config")
        .arg(&fixture.config_path)
        .arg("--json")
        .env_remove("SLUICE_CONFIG")
        .arg("download");
    // `--option=value` so a value that starts with '-' stays a value.
    if let Some(file_name) = &case.file_name {
        command.arg(format!("--name={file_name}"));
    }
    if let Some(bundle) = &case.bundle {
        command.arg(format!("--bundle={bundle}"));
    }
    if let Some(sha256) = &case.sha256 {
        command.arg(format!("--sha256={sha256}"));
    }
    if let Some(max_bytes) = case.max_bytes {
        command.arg(format!("--max-bytes={max_bytes}"));
    }
    command.arg("--").arg(&case.url);
    let output = command.output().expect("run sluicectl");
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "sluicectl printed no JSON ({error}) for {case:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    match output.status.code() {
        Some(0) => Ok(()),
        Some(4) => {
            assert_eq!(stdout["error"]["code"], "invalid_argument", "{stdout}");
            let reason = stdout["error"]["reason"].as_str().map(str::to_owned);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if let Some(reason) = &reason {
                assert!(stderr.contains(reason.as_str()), "{stderr}");
            }
            Err(reason)
        }
        other => panic!(
            "sluicectl exited with {other:?} for {case:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
