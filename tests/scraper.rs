//! sluice-scraper end to end: the real binary on a private dbus-daemon, a real SQLite file, a
//! real inbox and staging folder, and a real HTTP fixture server on 127.0.0.1 that supports
//! ranges, counts requests and can send slowly enough to kill or cancel mid-transfer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use sluice_core::bus::{self, BusError, DownloadOptions, ScraperProxy};
use sluice_core::policy::{PolicyError, check_download_target, parse_download_url};
use sluice_core::store::downloads::DOWNLOAD_JOB_KIND;
use sluice_core::store::{
    Download, DownloadError, DownloadState, Durability, JobState, NewDownload, Store,
};
use zbus::Connection;
use zbus::proxy::CacheProperties;

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, FixtureRoute, HttpFixture, PrivateBus, STARTUP_DEADLINE,
    TmpfsMount, assert_taken_over_before_the_lease_expired, binary_path, open_store,
    retried_because, sha256_hex, skip,
};

/// A scraper's world: temp folders, a private bus and a config file pointing at both.
struct Setup {
    _directory: tempfile::TempDir,
    root: PathBuf,
    bus: PrivateBus,
    config_path: PathBuf,
    /// `[jobs] lease`.
    lease: &'static str,
}

impl Setup {
    /// `allow_private` is true for most tests, because the fixture is on 127.0.0.1.
    fn new(allow_private: bool) -> Result<Setup> {
        Setup::with_scraper_settings(allow_private, "")
    }

    fn with_scraper_settings(allow_private: bool, extra_scraper_settings: &str) -> Result<Setup> {
        Setup::with_lease(allow_private, extra_scraper_settings, "10s")
    }

    fn with_lease(
        allow_private: bool,
        extra_scraper_settings: &str,
        lease: &'static str,
    ) -> Result<Setup> {
        let directory = tempfile::tempdir()?;
        let root = directory.path().to_path_buf();
        let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
        let config_path = root.join("sluice.toml");
        let setup = Setup {
            _directory: directory,
            root,
            bus,
            config_path,
            lease,
        };
        setup.write_config(allow_private, extra_scraper_settings)?;
        Ok(setup)
    }

    fn write_config(&self, allow_private: bool, extra_scraper_settings: &str) -> Result<()> {
        let root = self.root.display();
        let text = format!(
            r#"
[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{address}"

[jobs]
lease = "{lease}"
heartbeat_interval = "1s"
max_attempts = 3
retry_backoff_base = "100ms"
retry_backoff_max = "300ms"

[service]
status_interval = "1s"
stop_timeout = "5s"

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
allow_private_addresses = {allow_private}
politeness_delay = "0s"
progress_interval = "200ms"
request_timeout = "10s"
max_redirects = 3
{extra_scraper_settings}
"#,
            address = self.bus.address(),
            lease = self.lease,
        );
        std::fs::write(&self.config_path, text).context("write the config")
    }

    fn inbox(&self) -> PathBuf {
        self.root.join("inbox")
    }

    fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn store(&self) -> Store {
        open_store(&self.root.join("sluice.db"), Durability::Normal)
    }

    fn download(&self, id: u64) -> Download {
        self.store().get_download(id as i64).expect("download row")
    }

    /// Starts the scraper and waits until it says `running` on the bus.
    async fn start(&self) -> Result<DaemonProcess> {
        crate::support::start_scraper(&self.config_path, self.bus.address()).await
    }

    async fn connect(&self) -> Result<Connection> {
        Ok(zbus::connection::Builder::address(self.bus.address())
            .build()
            .await?)
    }
}

async fn scraper_proxy(connection: &Connection) -> Result<ScraperProxy<'static>> {
    Ok(ScraperProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// The download signals a test saw, in arrival order.
#[derive(Debug, Default, Clone)]
struct SeenSignals {
    progress: Vec<(u64, u64, u64)>,
    finished: Vec<(u64, String, String)>,
}

/// Collects DownloadProgress and DownloadFinished from the scraper from now on.
async fn watch_signals(proxy: &ScraperProxy<'static>) -> Result<Arc<Mutex<SeenSignals>>> {
    let seen = Arc::new(Mutex::new(SeenSignals::default()));
    let mut progress = proxy.receive_download_progress().await?;
    let mut finished = proxy.receive_download_finished().await?;
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(signal) = progress.next().await {
            if let Ok(args) = signal.args() {
                sink.lock()
                    .unwrap()
                    .progress
                    .push((args.download_id, args.bytes, args.total));
            }
        }
    });
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(signal) = finished.next().await {
            if let Ok(args) = signal.args() {
                sink.lock().unwrap().finished.push((
                    args.download_id,
                    args.state.to_owned(),
                    // A byte string; the scraper's names are UTF-8.
                    bus::bytestring_to_path_lossy(args.path)
                        .to_string_lossy()
                        .into_owned(),
                ));
            }
        }
    });
    Ok(seen)
}

/// Polls `condition` (without blocking the runtime) until it holds or the deadline passes.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !condition() {
        ensure!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn wait_for_state(setup: &Setup, id: u64, state: DownloadState) -> Result<Download> {
    let mut last = None;
    let reached = wait_for(&format!("download {id} to be {state}"), || {
        let download = setup.download(id);
        let done = download.state == state;
        last = Some(download);
        done
    })
    .await;
    reached.with_context(|| format!("last seen: {last:?}"))?;
    Ok(last.expect("read at least once"))
}

/// Deterministic, non-repeating-looking content of `length` bytes.
fn content(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn files_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// AddDownload options that put the file into `bundle` under `file_name`.
fn bundled_as(bundle: &str, file_name: &str) -> HashMap<String, zbus::OwnedVariant> {
    options(|options| {
        options.bundle = Some(bundle.into());
        options.file_name = Some(file_name.into());
    })
}

fn options(change: impl FnOnce(&mut DownloadOptions)) -> HashMap<String, zbus::OwnedVariant> {
    let mut options = DownloadOptions::default();
    change(&mut options);
    options.to_variants()
}

fn invalid_argument_message(result: Result<(u64, u64), BusError>) -> String {
    match result {
        Err(BusError::InvalidArgument(message)) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_lands_in_the_inbox_with_its_bytes_and_sha256() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(300 * 1024, 1);
    fixture.route("/files/model.bin", FixtureRoute::file(body.clone()));
    let _scraper = setup.start().await?;
    let connection = setup.connect().await?;
    let proxy = scraper_proxy(&connection).await?;
    let seen = watch_signals(&proxy).await?;

    let digest = sha256_hex(&body);
    let (download_id, job_id) = proxy
        .add_download(
            &fixture.url("/files/model.bin"),
            options(|options| options.sha256 = Some(digest.to_uppercase())),
        )
        .await?;
    let download = wait_for_state(&setup, download_id, DownloadState::Succeeded).await?;
    let final_path = setup.inbox().join("model.bin");
    assert_eq!(
        download.final_path.as_deref(),
        Some(final_path.to_str().unwrap())
    );
    assert_eq!(std::fs::read(&final_path)?, body);
    assert_eq!(download.bytes_done, body.len() as u64);
    assert_eq!(download.part_path, None);
    assert_eq!(files_in(&setup.staging()), Vec::<String>::new());
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result.as_ref().unwrap()["sha256"], digest);
    let requests = fixture.requests_for("/files/model.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[0].user_agent.as_deref(), Some("sluice/0.1"));

    wait_for("the DownloadFinished signal", || {
        seen.lock()
            .unwrap()
            .finished
            .iter()
            .any(|(id, _, _)| *id == download_id)
    })
    .await?;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.finished,
        vec![(
            download_id,
            "succeeded".to_owned(),
            final_path.to_string_lossy().into_owned()
        )]
    );
    let total = body.len() as u64;
    assert!(
        seen.progress.contains(&(download_id, total, total)),
        "a final DownloadProgress with every byte: {:?}",
        seen.progress
    );

    // The same name again goes beside it with a suffix; a bundle gets its own folder.
    let (second, _) = proxy
        .add_download(&fixture.url("/files/model.bin"), options(|_| {}))
        .await?;
    let (bundled, _) = proxy
        .add_download(
            &fixture.url("/files/model.bin"),
            bundled_as("model-x", "weights.bin"),
        )
        .await?;
    let second = wait_for_state(&setup, second, DownloadState::Succeeded).await?;
    let bundled = wait_for_state(&setup, bundled, DownloadState::Succeeded).await?;
    assert_eq!(
        second.final_path.as_deref(),
        Some(setup.inbox().join("model-1.bin").to_str().unwrap())
    );
    assert_eq!(
        bundled.final_path.as_deref(),
        Some(setup.inbox().join("model-x/weights.bin").to_str().unwrap())
    );
    assert_eq!(
        std::fs::read(setup.inbox().join("model-x/weights.bin"))?,
        body
    );
    assert_eq!(
        std::fs::read(&final_path)?,
        body,
        "the first file is untouched"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_fails_and_leaves_nothing_in_the_inbox() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    fixture.route("/a.bin", FixtureRoute::file(content(100_000, 2)));
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let seen = watch_signals(&proxy).await?;
    let (id, job_id) = proxy
        .add_download(
            &fixture.url("/a.bin"),
            options(|options| options.sha256 = Some("0".repeat(64))),
        )
        .await?;
    let download = wait_for_state(&setup, id, DownloadState::Failed).await?;
    let error = download.error.unwrap_or_default();
    assert!(error.contains("SHA-256 mismatch"), "{error}");
    assert_eq!(files_in(&setup.inbox()), Vec::<String>::new());
    assert_eq!(files_in(&setup.staging()), Vec::<String>::new());
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "no retry");
    wait_for("DownloadFinished(failed)", || {
        seen.lock()
            .unwrap()
            .finished
            .contains(&(id, "failed".into(), String::new()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_over_the_size_limit_fail_with_or_without_a_content_length() -> Result<()> {
    let setup = Setup::with_scraper_settings(true, "max_download_size = \"64 KiB\"")?;
    let fixture = HttpFixture::start();
    let body = content(200 * 1024, 3);
    fixture.route("/announced.bin", FixtureRoute::file(body.clone()));
    fixture.route(
        "/unannounced.bin",
        FixtureRoute::File {
            body: Arc::new(body.clone()),
            etag: "\"x\"".into(),
            chunk: 16 * 1024,
            pause: Duration::ZERO,
            content_length: false,
        },
    );
    fixture.route("/small.bin", FixtureRoute::file(content(50 * 1024, 4)));
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    let (announced, _) = proxy
        .add_download(&fixture.url("/announced.bin"), options(|_| {}))
        .await?;
    let (unannounced, _) = proxy
        .add_download(&fixture.url("/unannounced.bin"), options(|_| {}))
        .await?;
    // The per-download limit applies below the configured one.
    let (own_limit, _) = proxy
        .add_download(
            &fixture.url("/small.bin"),
            options(|options| options.max_bytes = Some(10_000)),
        )
        .await?;
    for id in [announced, unannounced, own_limit] {
        let download = wait_for_state(&setup, id, DownloadState::Failed).await?;
        let error = download.error.unwrap_or_default();
        assert!(error.contains("size limit"), "download {id}: {error}");
    }
    assert_eq!(files_in(&setup.inbox()), Vec::<String>::new());
    wait_for("partial files removed", || {
        files_in(&setup.staging()).is_empty()
    })
    .await
}

/// Issue 9 (timeouts): an attempt that trickles past `[scraper] download_timeout` fails with
/// "timed out after N s", keeps its partial file, and the retry resumes from it with a range
/// request. The first request trickles for far longer than the limit (1 MiB at 16 KiB every
/// 200 ms is 12.8 s against 5 s), so it times out however fast the machine; the retry is
/// served at full speed, and 5 s leave it room on a machine busy with other work (1 s did
/// not, once, with the load at 7 on 2 cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_past_its_timeout_fails_keeps_its_partial_file_and_the_retry_resumes()
-> Result<()> {
    let setup = Setup::with_scraper_settings(true, "download_timeout = \"5s\"")?;
    let fixture = HttpFixture::start();
    let body = content(1024 * 1024, 9);
    fixture.route(
        "/trickle.bin",
        FixtureRoute::slow_then_fast(body.clone(), 1, 16 * 1024, Duration::from_millis(200)),
    );
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, job_id) = proxy
        .add_download(
            &fixture.url("/trickle.bin"),
            options(|options| options.sha256 = Some(sha256_hex(&body))),
        )
        .await?;
    let download = wait_for_state(&setup, id, DownloadState::Succeeded).await?;
    let received = std::fs::read(download.final_path.context("a final path")?)?;
    assert_eq!(received, body);

    let history = setup.store().job_history(job_id as i64)?;
    assert!(
        retried_because(
            &history,
            "timed out after 5 s (the [scraper] download_timeout)"
        ),
        "{history:#?}"
    );
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2, "the timed-out attempt counts: {job:?}");
    let requests = fixture.requests_for("/trickle.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let range = requests[1]
        .range
        .clone()
        .context("the retry resumes the partial file with a Range")?;
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|rest| rest.strip_suffix('-'))
        .context("Range: bytes=N-")?
        .parse()?;
    assert!(
        offset > 0 && offset < body.len() as u64,
        "the partial file was kept: resumed at {offset}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scraper_resumes_with_a_range_request_and_the_right_sha256() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(2 * 1024 * 1024, 5);
    // About 64 KiB every 40 ms: long enough to kill it half way.
    fixture.route(
        "/big.bin",
        FixtureRoute::slow_file(body.clone(), 64 * 1024, Duration::from_millis(40)),
    );
    let mut scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, job_id) = proxy
        .add_download(
            &fixture.url("/big.bin"),
            options(|options| options.sha256 = Some(sha256_hex(&body))),
        )
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("a quarter of the file on disk", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() >= 512 * 1024)
    })
    .await?;
    scraper.kill_hard();
    let kept = std::fs::metadata(&part)?.len();
    assert!(kept < body.len() as u64, "killed before the end");

    // The rest comes at full speed, from a new process.
    fixture.route("/big.bin", FixtureRoute::file(body.clone()));
    let _scraper = setup.start().await?;
    let download = wait_for_state(&setup, id, DownloadState::Succeeded).await?;
    let final_path = PathBuf::from(download.final_path.unwrap());
    let received = std::fs::read(&final_path)?;
    assert_eq!(sha256_hex(&received), sha256_hex(&body));
    assert_eq!(received, body);

    let requests = fixture.requests_for("/big.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let range = requests[1]
        .range
        .clone()
        .context("the second request has a Range")?;
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|rest| rest.strip_suffix('-'))
        .context("Range: bytes=N-")?
        .parse()?;
    assert!(
        offset > 0 && offset >= kept.min(512 * 1024),
        "offset {offset}, kept {kept}"
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"fixture-v1\""));
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2, "the killed attempt counts");
    Ok(())
}

/// Milliseconds since the Unix epoch, the clock of the store's timestamps.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Starts a slow 1 MiB download and waits until part of it is on disk; returns the download
/// and job ids, the body, and when the job's lease would expire.
async fn hold_a_download(
    setup: &Setup,
    fixture: &HttpFixture,
    path: &str,
    seed: u8,
) -> Result<(u64, i64, Vec<u8>, i64)> {
    let body = content(1024 * 1024, seed);
    fixture.route(
        path,
        FixtureRoute::slow_file(body.clone(), 32 * 1024, Duration::from_millis(50)),
    );
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, job_id) = proxy
        .add_download(
            &fixture.url(path),
            options(|options| options.sha256 = Some(sha256_hex(&body))),
        )
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("part of the file on disk", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() >= 128 * 1024)
    })
    .await?;
    let job = setup.store().get_job(job_id as i64)?;
    ensure!(job.state == JobState::Running, "{job:?}");
    ensure!(
        job.lease_owner.as_deref() == Some("sluice-scraper"),
        "{job:?}"
    );
    let lease_expires_at_ms = job
        .lease_expires_at_ms
        .context("a running job has a lease")?;
    Ok((id, job_id as i64, body, lease_expires_at_ms))
}

/// The download's one file in the inbox, its job's one success, and the two requests (the
/// second a resume).
async fn assert_downloaded_once(
    setup: &Setup,
    fixture: &HttpFixture,
    path: &str,
    id: u64,
    job_id: i64,
    body: &[u8],
) -> Result<()> {
    let download = wait_for_state(setup, id, DownloadState::Succeeded).await?;
    let final_path = PathBuf::from(download.final_path.context("a final path")?);
    assert_eq!(std::fs::read(&final_path)?, body);
    assert_eq!(files_in(&setup.inbox()).len(), 1, "one file in the inbox");
    let history = setup.store().job_history(job_id)?;
    let successes = history
        .iter()
        .filter(|step| step.to_state == JobState::Succeeded)
        .count();
    assert_eq!(successes, 1, "{history:?}");
    let requests = fixture.requests_for(path);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].range.is_some(), "the second attempt resumes");
    Ok(())
}

/// Issue 16: a scraper killed mid-download left the download leased until the lease expired.
/// The next scraper owns the exclusive bus name, so what an earlier process left leased is
/// orphaned: it takes it over at start, and the download completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scrapers_download_is_taken_over_by_the_next_one_before_its_lease_could_expire()
-> Result<()> {
    // A lease of a minute: a takeover within it cannot have come from the expiry.
    let setup = Setup::with_lease(true, "", "60s")?;
    let fixture = HttpFixture::start();
    let mut scraper = setup.start().await?;
    let (id, job_id, body, lease_expires_at_ms) =
        hold_a_download(&setup, &fixture, "/held.bin", 31).await?;

    let killed_at_ms = now_ms();
    scraper.kill_hard();
    fixture.route("/held.bin", FixtureRoute::file(body.clone()));
    let next = setup.start().await?;
    assert_downloaded_once(&setup, &fixture, "/held.bin", id, job_id, &body).await?;
    let history = setup.store().job_history(job_id)?;
    assert_taken_over_before_the_lease_expired(
        &history,
        "a new process of the same name started",
        killed_at_ms,
        lease_expires_at_ms,
        &format!("download job {job_id} taken over by the next scraper (process start included)"),
    )?;
    assert!(
        next.log().contains(&format!(
            "rescued download job {job_id} from an earlier scraper process: queued again"
        )),
        "{}",
        next.log()
    );
    Ok(())
}

/// Issue 16: while no scraper runs, a running ingest worker sees the scraper's connection
/// leave the bus and ends its leases: the download shows as queued at once (with the reason)
/// instead of running until its lease expires, and the next scraper simply claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frees_the_downloads_of_a_scraper_that_left_the_bus() -> Result<()> {
    let setup = Setup::with_lease(true, "", "60s")?;
    let fixture = HttpFixture::start();
    let mut worker = Command::new(binary_path("sluice-ingest-worker"));
    worker
        .args(["--instance", "1", "--config"])
        .arg(&setup.config_path);
    let mut worker = DaemonProcess::start(worker, &setup.root.join("worker-1.log"), "info");
    worker.wait_for_log_lines(&["ready"], 1, STARTUP_DEADLINE);
    let mut scraper = setup.start().await?;
    let (id, job_id, body, lease_expires_at_ms) =
        hold_a_download(&setup, &fixture, "/freed.bin", 32).await?;

    scraper.kill_hard();
    let freed = wait_for_state(&setup, id, DownloadState::Queued).await?;
    assert!(
        freed
            .error
            .as_deref()
            .is_some_and(|error| error.contains("bus connection")),
        "{freed:?}"
    );
    let job = setup.store().get_job(job_id)?;
    assert!(
        job.updated_at_ms < lease_expires_at_ms,
        "freed before the lease could have expired: {job:?}"
    );
    // The worker logs once the store has answered, a moment after the change is visible.
    worker.wait_for_log_lines(
        &[&format!(
            "rescued job {job_id} from sluice-scraper (its bus connection"
        )],
        1,
        DEADLINE,
    );
    fixture.route("/freed.bin", FixtureRoute::file(body.clone()));
    let _next = setup.start().await?;
    assert_downloaded_once(&setup, &fixture, "/freed.bin", id, job_id, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_a_running_download_which_resumes_after_restart() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(1024 * 1024, 6);
    fixture.route(
        "/slow.bin",
        FixtureRoute::slow_file(body.clone(), 32 * 1024, Duration::from_millis(50)),
    );
    let mut scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, job_id) = proxy
        .add_download(&fixture.url("/slow.bin"), options(|_| {}))
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("part of the file on disk", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() >= 128 * 1024)
    })
    .await?;
    let status = scraper.terminate(DEADLINE)?;
    assert!(status.success(), "exit {status}: {}", scraper.log());
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0), "released");
    let download = setup.download(id);
    assert_eq!(download.state, DownloadState::Queued);
    assert!(download.bytes_done > 0 && part.exists(), "{download:?}");

    fixture.route("/slow.bin", FixtureRoute::file(body.clone()));
    let _scraper = setup.start().await?;
    let download = wait_for_state(&setup, id, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(download.final_path.unwrap())?, body);
    let requests = fixture.requests_for("/slow.bin");
    assert!(
        requests[1]
            .range
            .as_deref()
            .is_some_and(|range| range != "bytes=0-"),
        "{requests:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_download_and_removes_its_partial_file_and_delete_forgets_it() -> Result<()>
{
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    // Far too slow to finish during the test.
    for path in ["/one.bin", "/two.bin"] {
        fixture.route(
            path,
            FixtureRoute::slow_file(
                content(4 * 1024 * 1024, 7),
                16 * 1024,
                Duration::from_millis(100),
            ),
        );
    }
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let seen = watch_signals(&proxy).await?;

    // Over D-Bus: the task stops at once.
    let (id, job_id) = proxy
        .add_download(&fixture.url("/one.bin"), options(|_| {}))
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("the partial file", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() > 0)
    })
    .await?;
    proxy.cancel_download(id).await?;
    wait_for_state(&setup, id, DownloadState::Cancelled).await?;
    wait_for("the partial file removed", || !part.exists()).await?;
    assert_eq!(
        setup.store().get_job(job_id as i64)?.state,
        JobState::Cancelled
    );
    wait_for("DownloadFinished(cancelled)", || {
        seen.lock()
            .unwrap()
            .finished
            .contains(&(id, "cancelled".into(), String::new()))
    })
    .await?;
    let again = proxy.cancel_download(id).await;
    assert!(matches!(again, Err(BusError::WrongState(_))), "{again:?}");

    // Through the store, as the web API does: the scraper learns it at its next save.
    let (other, _) = proxy
        .add_download(&fixture.url("/two.bin"), options(|_| {}))
        .await?;
    let other_part = setup.staging().join(format!("{other}.part"));
    wait_for("the second partial file", || {
        std::fs::metadata(&other_part).is_ok_and(|metadata| metadata.len() > 0)
    })
    .await?;
    setup.store().cancel_download(other as i64)?;
    wait_for_state(&setup, other, DownloadState::Cancelled).await?;
    wait_for("the second partial file removed", || !other_part.exists()).await?;
    assert_eq!(files_in(&setup.inbox()), Vec::<String>::new());

    // Delete forgets a finished download; a second delete finds nothing.
    proxy.delete_download(id).await?;
    assert!(matches!(
        setup.store().get_download(id as i64),
        Err(DownloadError::NotFound(_))
    ));
    let missing = proxy.delete_download(id).await;
    assert!(matches!(missing, Err(BusError::NotFound(_))), "{missing:?}");
    let missing = proxy.cancel_download(987_654).await;
    assert!(matches!(missing, Err(BusError::NotFound(_))), "{missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_download_stops_it_first() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    fixture.route(
        "/slow.bin",
        FixtureRoute::slow_file(
            content(4 * 1024 * 1024, 8),
            16 * 1024,
            Duration::from_millis(100),
        ),
    );
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, _) = proxy
        .add_download(&fixture.url("/slow.bin"), options(|_| {}))
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("the partial file", || part.exists()).await?;
    proxy.delete_download(id).await?;
    assert!(matches!(
        setup.store().get_download(id as i64),
        Err(DownloadError::NotFound(_))
    ));
    assert!(!part.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_targets_are_refused_when_private_addresses_are_not_allowed() -> Result<()> {
    let setup = Setup::new(false)?;
    let fixture = HttpFixture::start();
    fixture.route("/secret", FixtureRoute::file(b"internal".to_vec()));
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    // A literal loopback address is refused at submission.
    let message = invalid_argument_message(
        proxy
            .add_download(&fixture.url("/secret"), options(|_| {}))
            .await,
    );
    assert!(
        message.contains("loopback") && message.contains("allow_private_addresses"),
        "{message}"
    );
    let message = invalid_argument_message(
        proxy
            .add_download(
                &format!("http://[::1]:{}/secret", fixture.port()),
                options(|_| {}),
            )
            .await,
    );
    assert!(message.contains("loopback"), "{message}");
    let metadata = proxy
        .add_download("http://169.254.169.254/latest/meta-data/", options(|_| {}))
        .await;
    assert!(invalid_argument_message(metadata).contains("cloud metadata"));
    assert_eq!(setup.store().download_counts()?[&DownloadState::Queued], 0);

    // `localhost` always means this machine: AddDownload refuses it at once, like the web
    // API and sluicectl (the stricter of the old verdicts).
    let localhost_url = format!("http://localhost:{}/secret", fixture.port());
    let message =
        invalid_argument_message(proxy.add_download(&localhost_url, options(|_| {})).await);
    assert!(message.starts_with("forbidden_address: "), "{message}");
    // A host name is checked when resolved: a row for localhost written without the
    // submission check resolves to 127.0.0.1 and is refused, never fetched.
    let by_name = setup
        .store()
        .create_download(&NewDownload::new(localhost_url).validate()?)?
        .download_id as u64;
    let download = wait_for_state(&setup, by_name, DownloadState::Failed).await?;
    let error = download.error.unwrap_or_default();
    assert!(
        error.contains("localhost resolves to 127.0.0.1") && error.contains("loopback"),
        "{error}"
    );

    // A row written by another process without the submission check is refused too.
    let created = setup
        .store()
        .create_download(&NewDownload::new(fixture.url("/secret")).validate()?)?;
    let download =
        wait_for_state(&setup, created.download_id as u64, DownloadState::Failed).await?;
    assert!(download.error.unwrap_or_default().contains("loopback"));

    assert_eq!(
        fixture.requests(),
        Vec::new(),
        "nothing reached the fixture"
    );
    assert_eq!(files_in(&setup.inbox()), Vec::<String>::new());
    // The policy check the web API uses gives the same answer.
    let url = parse_download_url(&fixture.url("/secret"))?;
    assert!(matches!(
        check_download_target(&url, false),
        Err(PolicyError::ForbiddenAddress(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_checked_at_every_hop() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(10_000, 9);
    fixture.route("/target.bin", FixtureRoute::file(body.clone()));
    fixture.route(
        "/moved.bin",
        FixtureRoute::Redirect(fixture.url("/target.bin")),
    );
    fixture.route(
        "/to-file",
        FixtureRoute::Redirect("file:///etc/passwd".into()),
    );
    fixture.route(
        "/to-ftp",
        FixtureRoute::Redirect("ftp://example.org/x".into()),
    );
    for hop in 0..6 {
        fixture.route(
            &format!("/loop{hop}"),
            FixtureRoute::Redirect(fixture.url(&format!("/loop{}", hop + 1))),
        );
    }
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    let (followed, _) = proxy
        .add_download(&fixture.url("/moved.bin"), options(|_| {}))
        .await?;
    let download = wait_for_state(&setup, followed, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(download.final_path.unwrap())?, body);

    for (path, expected) in [
        ("/to-file", "only http and https"),
        ("/to-ftp", "only http and https"),
        ("/loop0", "more than 3 redirects"),
    ] {
        let (id, job_id) = proxy
            .add_download(&fixture.url(path), options(|_| {}))
            .await?;
        let download = wait_for_state(&setup, id, DownloadState::Failed).await?;
        let error = download.error.unwrap_or_default();
        assert!(error.contains(expected), "{path}: {error}");
        assert_eq!(
            setup.store().get_job(job_id as i64)?.attempts,
            1,
            "{path}: no retry"
        );
    }
    assert_eq!(
        fixture.requests_for("/loop4"),
        Vec::new(),
        "the 4th redirect is not followed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_options_are_invalid_arguments_over_dbus_and_in_the_store() -> Result<()> {
    let setup = Setup::new(true)?;
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let bad_urls = [
        "ftp://example.org/file",
        "file:///etc/passwd",
        "garbage",
        "http://",
        "",
        "javascript:alert(1)",
        "http://user:password@example.org/x",
    ];
    for url in bad_urls {
        let over_bus = proxy.add_download(url, options(|_| {})).await;
        assert!(
            matches!(over_bus, Err(BusError::InvalidArgument(_))),
            "{url}: {over_bus:?}"
        );
        // The store records only what passed the policy; the policy refuses these.
        let in_store = NewDownload::new(url).validate();
        assert!(
            matches!(in_store, Err(PolicyError::InvalidUrl(_))),
            "{url}: {in_store:?}"
        );
    }
    let bad_options = [
        options(|options| options.sha256 = Some("xyz".into())),
        options(|options| options.file_name = Some("../escape".into())),
        options(|options| options.file_name = Some(".hidden".into())),
        options(|options| options.bundle = Some("a/b".into())),
        options(|options| options.max_bytes = Some(0)),
        options(|options| options.source = Some("no-such-source".into())),
    ];
    for bad in bad_options {
        let result = proxy
            .add_download("https://example.org/a.bin", bad.clone())
            .await;
        assert!(
            matches!(result, Err(BusError::InvalidArgument(_))),
            "{bad:?}: {result:?}"
        );
    }
    let message = invalid_argument_message(
        proxy
            .add_download("ftp://example.org/f", options(|_| {}))
            .await,
    );
    assert!(message.contains("http"), "{message}");
    let store = setup.store();
    assert!(store.download_counts()?.values().all(|count| *count == 0));
    assert!(store.job_counts()?.values().all(|count| *count == 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_fails_for_good_and_a_503_is_retried() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    fixture.route("/gone.bin", FixtureRoute::Status(404));
    let body = content(20_000, 10);
    fixture.route(
        "/flaky.bin",
        FixtureRoute::ThrottleThenServe {
            failures: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            status: 503,
            headers: String::new(),
            body: Arc::new(body.clone()),
        },
    );
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    let (gone, gone_job) = proxy
        .add_download(&fixture.url("/gone.bin"), options(|_| {}))
        .await?;
    let download = wait_for_state(&setup, gone, DownloadState::Failed).await?;
    let error = download.error.unwrap_or_default();
    assert!(error.contains("HTTP 404 Not Found"), "{error}");
    let job = setup.store().get_job(gone_job as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    assert_eq!(fixture.requests_for("/gone.bin").len(), 1);

    let (flaky, flaky_job) = proxy
        .add_download(&fixture.url("/flaky.bin"), options(|_| {}))
        .await?;
    let download = wait_for_state(&setup, flaky, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(download.final_path.unwrap())?, body);
    let job = setup.store().get_job(flaky_job as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 2));
    let history = setup.store().job_history(flaky_job as i64)?;
    assert!(retried_because(&history, "503"), "{history:?}");
    Ok(())
}

/// A 429 with `Retry-After: 2`: the download is retried no earlier than 2 s after that
/// answer, and another download to the same host waits as long (the host is held). Both are
/// lower bounds, which hold on any machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_retry_and_the_host() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(10_000, 12);
    fixture.route(
        "/throttled.bin",
        FixtureRoute::ThrottleThenServe {
            failures: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            status: 429,
            headers: "Retry-After: 2\r\n".into(),
            body: Arc::new(body.clone()),
        },
    );
    let other = content(3_000, 13);
    fixture.route("/other.bin", FixtureRoute::file(other.clone()));
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    let (throttled, job_id) = proxy
        .add_download(&fixture.url("/throttled.bin"), options(|_| {}))
        .await?;
    wait_for("the 429", || {
        !fixture.requests_for("/throttled.bin").is_empty()
    })
    .await?;
    let refused_at = fixture.requests_for("/throttled.bin")[0].received;
    let (other_id, _) = proxy
        .add_download(&fixture.url("/other.bin"), options(|_| {}))
        .await?;

    let download = wait_for_state(&setup, throttled, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(download.final_path.unwrap())?, body);
    let requests = fixture.requests_for("/throttled.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let waited = requests[1].received.duration_since(refused_at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    let history = setup.store().job_history(job_id as i64)?;
    assert!(
        retried_because(&history, "asked to retry after 2 s"),
        "{history:?}"
    );

    wait_for_state(&setup, other_id, DownloadState::Succeeded).await?;
    let other_request = fixture.requests_for("/other.bin")[0].received;
    let held = other_request.duration_since(refused_at);
    assert!(
        held >= Duration::from_secs(2),
        "another download to the host waited {held:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_written_by_another_process_is_picked_up_without_a_signal() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(5_000, 11);
    fixture.route("/polled.bin", FixtureRoute::file(body.clone()));
    let _scraper = setup.start().await?;
    let created = setup
        .store()
        .create_download(&NewDownload::new(fixture.url("/polled.bin")).validate()?)?;
    let download =
        wait_for_state(&setup, created.download_id as u64, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(download.final_path.unwrap())?, body);
    let job = setup.store().get_job(created.job_id)?;
    assert_eq!(job.kind, DOWNLOAD_JOB_KIND);
    Ok(())
}

/// Where the staging folder of `staging_on_another_file_system_is_refused_at_start` goes.
enum OtherFileSystem {
    Mounted(TmpfsMount),
    SharedMemory(tempfile::TempDir),
}

impl OtherFileSystem {
    fn path(&self) -> &Path {
        match self {
            OtherFileSystem::Mounted(mount) => mount.path(),
            OtherFileSystem::SharedMemory(directory) => directory.path(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_on_another_file_system_is_refused_at_start() -> Result<()> {
    let setup = Setup::new(true)?;
    // Another file system than the temp folder's: as root a tmpfs of the test's own, so the
    // test runs wherever root can mount (CI); otherwise /dev/shm, which most machines have
    // (a skip without it, which is a failure under SLUICE_REQUIRE_ROOT_TESTS=1).
    let other_file_system = if nix::unistd::geteuid().is_root() {
        OtherFileSystem::Mounted(TmpfsMount::new()?)
    } else {
        match tempfile::tempdir_in("/dev/shm") {
            Ok(directory) => OtherFileSystem::SharedMemory(directory),
            Err(error) => {
                skip(&format!("not root and /dev/shm is not available: {error}"));
                return Ok(());
            }
        }
    };
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(setup.inbox())?;
    if std::fs::metadata(other_file_system.path())?.dev() == std::fs::metadata(setup.inbox())?.dev()
    {
        skip(&format!(
            "{} and the temp folder share a file system here",
            other_file_system.path().display()
        ));
        return Ok(());
    }
    let text = std::fs::read_to_string(&setup.config_path)?.replace(
        &format!("staging = \"{}\"", setup.staging().display()),
        &format!(
            "staging = \"{}\"",
            other_file_system.path().join("staging").display()
        ),
    );
    std::fs::write(&setup.config_path, text)?;
    let output = Command::new(binary_path("sluice-scraper"))
        .arg("--config")
        .arg(&setup.config_path)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("different file systems"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_is_finished_or_restarted_on_http_416() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(40_000, 12);
    fixture.route("/whole.bin", FixtureRoute::file(body.clone()));
    fixture.route("/shrunk.bin", FixtureRoute::file(body.clone()));
    fixture.route("/known.bin", FixtureRoute::file(body.clone()));
    // The downloads exist before the scraper starts, each with a partial file from an
    // earlier run: one already complete, one longer than the file now is, and one complete
    // whose SHA-256 is expected.
    let mut store = setup.store();
    let complete =
        store.create_download(&NewDownload::new(fixture.url("/whole.bin")).validate()?)?;
    let mut known = NewDownload::new(fixture.url("/known.bin"));
    known.expected_sha256 = Some(sha256_hex(&body));
    let known = store.create_download(&known.validate()?)?;
    std::fs::create_dir_all(setup.staging())?;
    std::fs::write(
        setup.staging().join(format!("{}.part", known.download_id)),
        &body,
    )?;
    let too_long =
        store.create_download(&NewDownload::new(fixture.url("/shrunk.bin")).validate()?)?;
    std::fs::create_dir_all(setup.staging())?;
    std::fs::write(
        setup
            .staging()
            .join(format!("{}.part", complete.download_id)),
        &body,
    )?;
    let mut stale = body.clone();
    stale.extend_from_slice(b"bytes the server no longer has");
    std::fs::write(
        setup
            .staging()
            .join(format!("{}.part", too_long.download_id)),
        &stale,
    )?;

    // And what a crash in the middle of a prefill leaves (a source's page being written as
    // a download's partial file): removed at start.
    let unfinished_prefill = setup
        .staging()
        .join(format!("{}.prefill", too_long.download_id));
    std::fs::write(&unfinished_prefill, b"half a page")?;

    let _scraper = setup.start().await?;
    let finished = wait_for_state(
        &setup,
        complete.download_id as u64,
        DownloadState::Succeeded,
    )
    .await?;
    assert_eq!(std::fs::read(finished.final_path.unwrap())?, body);
    assert!(
        !unfinished_prefill.exists(),
        "the unfinished prefill is still there"
    );
    let requests = fixture.requests_for("/whole.bin");
    assert_eq!(requests.len(), 1, "no body was fetched again: {requests:?}");
    assert_eq!(requests[0].range, Some(format!("bytes={}-", body.len())));
    // A partial file that hashes to the expected SHA-256 is the file: no request at all.
    let finished =
        wait_for_state(&setup, known.download_id as u64, DownloadState::Succeeded).await?;
    assert_eq!(std::fs::read(finished.final_path.unwrap())?, body);
    assert!(fixture.requests_for("/known.bin").is_empty());

    let restarted = wait_for_state(
        &setup,
        too_long.download_id as u64,
        DownloadState::Succeeded,
    )
    .await?;
    assert_eq!(std::fs::read(restarted.final_path.unwrap())?, body);
    let requests = fixture.requests_for("/shrunk.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, Some(format!("bytes={}-", stale.len())));
    assert_eq!(requests[1].range, None, "the second attempt starts over");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changed_on_the_server_is_fetched_again_from_the_start() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let old_body = content(1024 * 1024, 13);
    fixture.route(
        "/changing.bin",
        FixtureRoute::slow_file(old_body, 32 * 1024, Duration::from_millis(40)),
    );
    let mut scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, _) = proxy
        .add_download(&fixture.url("/changing.bin"), options(|_| {}))
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("part of the old file on disk", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() >= 128 * 1024)
    })
    .await?;
    // The ETag was saved with the progress; wait for it so the resume can send If-Range.
    wait_for("the validator saved", || setup.download(id).etag.is_some()).await?;
    scraper.kill_hard();

    let new_body = content(700_000, 14);
    fixture.route(
        "/changing.bin",
        FixtureRoute::File {
            body: Arc::new(new_body.clone()),
            etag: "\"fixture-v2\"".into(),
            chunk: 64 * 1024,
            pause: Duration::ZERO,
            content_length: true,
        },
    );
    let _scraper = setup.start().await?;
    let download = wait_for_state(&setup, id, DownloadState::Succeeded).await?;
    assert_eq!(
        std::fs::read(download.final_path.unwrap())?,
        new_body,
        "no old bytes mixed in"
    );
    let requests = fixture.requests_for("/changing.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].range.is_some());
    assert_eq!(requests[1].if_range.as_deref(), Some("\"fixture-v1\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    fixture.route("/a.bin", FixtureRoute::file(content(1000, 15)));
    let scraper = setup.start().await?;
    let connection = setup.connect().await?;
    let proxy = scraper_proxy(&connection).await?;
    let status = proxy.status().await?;
    assert!(
        status.starts_with("0 downloads running, 0 queued"),
        "{status}"
    );

    setup.write_config(true, "user_agent = \"sluice-test/2\"")?;
    scraper.signal(Signal::SIGHUP)?;
    // A reload is visible only in what the next request does; retry until it shows.
    let started = Instant::now();
    loop {
        let (id, _) = proxy
            .add_download(&fixture.url("/a.bin"), options(|_| {}))
            .await?;
        wait_for_state(&setup, id, DownloadState::Succeeded).await?;
        let agent = fixture
            .requests()
            .last()
            .and_then(|request| request.user_agent.clone());
        if agent.as_deref() == Some("sluice-test/2") {
            break;
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "the new user agent never appeared"
        );
    }

    std::fs::write(&setup.config_path, "[scraper]\nmax_redirects = \"many\"\n")?;
    scraper.signal(Signal::SIGHUP)?;
    let mut last_error;
    let started = Instant::now();
    loop {
        last_error = proxy.last_error().await?;
        if last_error.contains("reload failed") {
            break;
        }
        ensure!(started.elapsed() < DEADLINE, "no reload failure reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last_error.contains("max_redirects"), "{last_error}");
    assert!(proxy.status().await?.contains("reload failed"));
    let (id, _) = proxy
        .add_download(&fixture.url("/a.bin"), options(|_| {}))
        .await?;
    wait_for_state(&setup, id, DownloadState::Succeeded).await?;
    assert_eq!(
        fixture
            .requests()
            .last()
            .and_then(|request| request.user_agent.clone())
            .as_deref(),
        Some("sluice-test/2"),
        "still the configuration from before the failed reload"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_folder_that_is_a_symlink_is_refused_and_nothing_is_written_outside() -> Result<()>
{
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    fixture.route(
        "/keys",
        FixtureRoute::file(b"ssh-ed25519 AAAA attacker\n".to_vec()),
    );
    // The folder the link points to stands for ~/.ssh or any other place outside the inbox.
    let outside = setup.root.join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::create_dir_all(setup.inbox())?;
    let bundle = setup.inbox().join("evil-bundle");
    std::os::unix::fs::symlink(&outside, &bundle)?;
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;

    let (id, job_id) = proxy
        .add_download(
            &fixture.url("/keys"),
            bundled_as("evil-bundle", "authorized_keys"),
        )
        .await?;
    let download = wait_for_state(&setup, id, DownloadState::Failed).await?;
    let error = download.error.unwrap_or_default();
    let expected = format!(
        "bundle folder {} is a symbolic link; refusing to write through it",
        bundle.display()
    );
    assert!(error.contains(&expected), "{error}");
    assert_eq!(files_in(&outside), Vec::<String>::new(), "nothing outside");
    assert_eq!(download.final_path, None);
    assert!(std::fs::symlink_metadata(&bundle)?.file_type().is_symlink());
    assert_eq!(files_in(&setup.staging()), Vec::<String>::new());
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "no retry");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_planted_as_a_link_is_refused_and_its_target_is_untouched() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    let body = content(20_000, 13);
    fixture.route("/a.bin", FixtureRoute::file(body.clone()));
    let outside = setup.root.join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::create_dir_all(setup.staging())?;
    let precious = outside.join("precious");
    std::fs::write(&precious, b"precious contents")?;
    let linked = outside.join("linked");
    std::fs::write(&linked, b"linked contents")?;
    let dangling = outside.join("created-through-a-link");

    // Three downloads exist before the scraper starts, each with a planted partial file: a
    // symlink to nowhere (writing would create the target), a symlink to a file (resuming
    // would read and append to it) and a hard link to a file.
    let mut store = setup.store();
    let mut create = || -> Result<i64> {
        Ok(store
            .create_download(&NewDownload::new(fixture.url("/a.bin")).validate()?)?
            .download_id)
    };
    let (to_nowhere, to_file, hard) = (create()?, create()?, create()?);
    let part = |id: i64| setup.staging().join(format!("{id}.part"));
    std::os::unix::fs::symlink(&dangling, part(to_nowhere))?;
    std::os::unix::fs::symlink(&precious, part(to_file))?;
    std::fs::hard_link(&linked, part(hard))?;

    let _scraper = setup.start().await?;
    for (id, reason) in [
        (
            to_nowhere,
            "is a symbolic link; refusing to write through it",
        ),
        (to_file, "is a symbolic link; refusing to write through it"),
        (
            hard,
            "has 2 hard links; refusing to write to a file linked from elsewhere",
        ),
    ] {
        let download = wait_for_state(&setup, id as u64, DownloadState::Failed).await?;
        let error = download.error.unwrap_or_default();
        let expected = format!("partial file {} {reason}", part(id).display());
        assert!(error.contains(&expected), "{error}");
    }
    assert!(!dangling.exists(), "nothing was created through the link");
    assert_eq!(std::fs::read(&precious)?, b"precious contents");
    assert_eq!(std::fs::read(&linked)?, b"linked contents");
    assert_eq!(files_in(&setup.inbox()), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_folder_swapped_for_a_symlink_during_the_transfer_is_refused() -> Result<()> {
    let setup = Setup::new(true)?;
    let fixture = HttpFixture::start();
    // Slow enough that the swap below happens while the body is still arriving, by
    // construction: 32 chunks with a pause after each.
    fixture.route(
        "/slow.bin",
        FixtureRoute::slow_file(
            content(1024 * 1024, 14),
            32 * 1024,
            Duration::from_millis(50),
        ),
    );
    let outside = setup.root.join("outside");
    std::fs::create_dir_all(&outside)?;
    let bundle = setup.inbox().join("swap");
    std::fs::create_dir_all(&bundle)?;
    let _scraper = setup.start().await?;
    let proxy = scraper_proxy(&setup.connect().await?).await?;
    let (id, job_id) = proxy
        .add_download(
            &fixture.url("/slow.bin"),
            options(|options| options.bundle = Some("swap".into())),
        )
        .await?;
    let part = setup.staging().join(format!("{id}.part"));
    wait_for("part of the file on disk", || {
        std::fs::metadata(&part).is_ok_and(|metadata| metadata.len() >= 32 * 1024)
    })
    .await?;
    std::fs::rename(&bundle, setup.root.join("moved-aside"))?;
    std::os::unix::fs::symlink(&outside, &bundle)?;
    ensure!(
        setup.download(id).state == DownloadState::Running,
        "the swap must happen while the download runs"
    );

    let download = wait_for_state(&setup, id, DownloadState::Failed).await?;
    let error = download.error.unwrap_or_default();
    let expected = format!(
        "bundle folder {} is a symbolic link; refusing to write through it",
        bundle.display()
    );
    assert!(error.contains(&expected), "{error}");
    assert_eq!(files_in(&outside), Vec::<String>::new(), "nothing outside");
    let job = setup.store().get_job(job_id as i64)?;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "no retry");
    Ok(())
}
