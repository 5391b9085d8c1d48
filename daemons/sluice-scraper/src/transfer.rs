//! One download attempt, run as its own task: claim → wait for the host → request (resuming
//! with `Range` when a partial file exists) → stream to the `.part` file while saving progress
//! → check size and SHA-256 → fsync → rename into the inbox → record the outcome.
//!
//! The task answers to three voices: its own transfer, a tick that saves progress and renews
//! the lease (and learns about a cancel requested through the store), and a stop request from
//! the main loop (cancel over D-Bus, or release on shutdown). Whichever comes first decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_core::bus::ScraperService;
use sluice_core::ingest::timed_out_after;
use sluice_core::store::{
    ClaimedJob, Download, DownloadError, DownloadOutcome, DownloadProgress, DownloadState,
    JobError, JobState,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

use crate::guard;
use crate::hosts::HostLimiter;
use crate::inbox;
use crate::sources::credentials;
/// The longest a download's `Retry-After` holds its host (and the download slots of every
/// download waiting for that host): shorter than a source check's cap
/// (`sources::fetch::MAX_RETRY_AFTER`, a day), since a held host keeps downloads claimed.
pub const MAX_DOWNLOAD_RETRY_AFTER: Duration = Duration::from_secs(3600);
use crate::store_thread::StoreHandle;

mod outcome;
pub use outcome::record_panic;
use outcome::*;

/// The name the scraper claims jobs under (its bus name is exclusive, so it is unique).
pub const WORKER_NAME: &str = "sluice-scraper";

/// What a download task needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct TransferContext {
    pub store: StoreHandle,
    pub service: Arc<ScraperService>,
    pub client: reqwest::Client,
    pub settings: Arc<TransferSettings>,
    pub hosts: HostLimiter,
    pub counters: Arc<Counters>,
}

/// The part of the configuration a download attempt runs with (a reload affects the next
/// attempts, not the running ones).
#[derive(Debug, Clone, PartialEq)]
pub struct TransferSettings {
    pub staging: std::path::PathBuf,
    pub inbox: std::path::PathBuf,
    pub max_download_size: u64,
    pub allow_private_addresses: bool,
    pub progress_interval: Duration,
    pub heartbeat_interval: Duration,
    pub lease: Duration,
    /// `[scraper] download_timeout`: the limit of one attempt's request and body.
    pub download_timeout: Duration,
    /// `[scraper] hf_endpoint` and `hf_credentials_file`, when a file is configured: its
    /// credentials go with the files of `hf://` bundles, on the Hub's origin only.
    pub hub_credentials: Option<(Url, std::path::PathBuf)>,
    /// Each source with a `credentials_file`, by name: its URL and the file. The credentials
    /// go with the downloads that source created, on the source's own origin only.
    pub source_credentials: std::collections::BTreeMap<String, (Url, std::path::PathBuf)>,
}

/// Totals since start, for the properties and `STATUS=`.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_received: AtomicU64,
}

/// What the main loop asks of a running download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    Continue,
    /// Stop, remove the partial file, record the download as cancelled.
    Cancel,
    /// Stop, keep the partial file, give the job back to the queue (shutdown).
    Release,
}

/// How a task ended, for the main loop's counters and last error.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    pub download_id: Option<i64>,
    pub job_id: i64,
    pub ended: Ended,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Succeeded {
        path: String,
    },
    /// Failed for good (the download is `failed`).
    Failed {
        error: String,
    },
    /// Failed this attempt; the job will be retried.
    Retrying {
        error: String,
    },
    /// The staging disk is full; the download waits for space, its attempt given back.
    Postponed {
        error: String,
    },
    Cancelled,
    Released,
    /// The outcome could not be recorded (lease lost, database error); the lease expiry
    /// brings the job back.
    NotRecorded {
        error: String,
    },
}

/// Runs one claimed download job to its end.
pub async fn run_download(
    context: TransferContext,
    job: ClaimedJob,
    stop: watch::Receiver<StopRequest>,
) -> TaskReport {
    let job_id = job.id;
    let Some(download_id) = job.payload.get("download_id").and_then(Value::as_i64) else {
        let error = format!("job {job_id} has no download_id in its payload");
        return fail_job_without_download(&context, &job, error).await;
    };
    let span = tracing::info_span!("download", download_id, job_id, attempt = job.attempt);
    async move {
        let download = match context
            .store
            .call(move |store| store.get_download(download_id))
            .await
        {
            Ok(download) if download.job_id == Some(job_id) => download,
            Ok(download) => {
                let error = format!(
                    "download {download_id} belongs to job {:?}, not to job {job_id}",
                    download.job_id
                );
                return fail_job_without_download(&context, &job, error).await;
            }
            Err(DownloadError::NotFound(_)) => {
                let error = format!("download {download_id} was deleted");
                return fail_job_without_download(&context, &job, error).await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot read download {download_id}: {error}");
                return report(
                    job_id,
                    Some(download_id),
                    Ended::NotRecorded {
                        error: error.to_string(),
                    },
                );
            }
        };
        tracing::info!(
            url = %download.url,
            "download {download_id} started: {}",
            download.url
        );
        #[cfg(test)]
        test_hooks::panic_if_asked(&download.url);
        run_attempt(context, job, download, stop).await
    }
    .instrument(span)
    .await
}

/// The end of a transfer as the task's select loop saw it.
enum Finish {
    Transfer(Result<Completed, Failure>),
    Stop(StopRequest),
    LeaseLost(String),
}

struct Completed {
    final_path: String,
    bytes: u64,
    sha256: String,
}

/// Why a transfer failed, and what to do about it.
struct Failure {
    error: String,
    retryable: bool,
    /// Remove the partial file (it cannot be resumed: wrong content, too large, refused).
    discard_part: bool,
    /// The disk is full: wait for space without using an attempt, keeping the partial file.
    out_of_space: bool,
    /// The server's `Retry-After` (429, 503), capped: the retry comes no earlier.
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retryable: true,
            discard_part: false,
            out_of_space: false,
            retry_after: None,
        }
    }

    fn permanent(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retryable: false,
            discard_part: true,
            out_of_space: false,
            retry_after: None,
        }
    }

    fn out_of_space(error: impl Into<String>) -> Failure {
        Failure {
            out_of_space: true,
            ..Failure::retryable(error)
        }
    }

    /// A failed write to the partial file: the disk being full is waited out.
    fn writing(part: &std::path::Path, error: &std::io::Error) -> Failure {
        let message = format!("cannot write {}: {error}", part.display());
        if sluice_core::beneath::is_out_of_space(error) {
            Failure::out_of_space(message)
        } else {
            Failure::retryable(message)
        }
    }
}

/// What the transfer shares with the progress tick.
#[derive(Debug, Clone, Default)]
struct SharedProgress {
    bytes_done: u64,
    bytes_total: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

async fn run_attempt(
    context: TransferContext,
    job: ClaimedJob,
    download: Download,
    mut stop: watch::Receiver<StopRequest>,
) -> TaskReport {
    let download_id = download.id;
    let job_id = job.id;
    let token = job.lease_token.clone();
    let part = inbox::part_path(&context.settings.staging, download_id);
    let part_text = part.to_string_lossy().into_owned();
    let started = {
        let token = token.clone();
        context
            .store
            .call(move |store| {
                store.start_download_attempt(download_id, job_id, &token, &part_text)
            })
            .await
    };
    if let Err(error) = started {
        tracing::error!(
            error = %error,
            "download {download_id} (job {job_id}): cannot start attempt {}: {error}",
            job.attempt
        );
        return report(
            job_id,
            Some(download_id),
            Ended::NotRecorded {
                error: error.to_string(),
            },
        );
    }
    if let Err(error) = context
        .service
        .job_started(job_id as u64, "download", WORKER_NAME)
        .await
    {
        tracing::warn!(error = %error, "cannot emit JobStarted for job {job_id}: {error}");
    }

    let shared = Arc::new(Mutex::new(SharedProgress {
        bytes_done: inbox::part_size(&part).unwrap_or(0),
        bytes_total: download.bytes_total,
        etag: download.etag.clone(),
        last_modified: download.last_modified.clone(),
    }));
    let git_sha1 = job
        .payload
        .get("git_blob_sha1")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut transfer = Box::pin(transfer(
        &context,
        &download,
        &part,
        git_sha1.as_deref(),
        Arc::clone(&shared),
    ));
    let settings = &context.settings;
    let mut tick =
        tokio::time::interval(settings.progress_interval.min(settings.heartbeat_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_saved = (Instant::now(), shared_snapshot(&shared).bytes_done);
    let finish = loop {
        tokio::select! {
            result = &mut transfer => break Finish::Transfer(result),
            _ = tick.tick() => {
                match save_progress(&context, &job, download_id, &shared, &mut last_saved).await {
                    Ok(true) => break Finish::Stop(StopRequest::Cancel),
                    Ok(false) => {}
                    Err(DownloadError::Job(error @ (JobError::LeaseLost { .. } | JobError::NotFound(_)))) => {
                        break Finish::LeaseLost(error.to_string());
                    }
                    Err(error) => tracing::warn!(
                        error = %error,
                        "download {download_id}: cannot save progress ({error}); trying again at the next tick"
                    ),
                }
            }
            changed = stop.changed() => {
                let request = if changed.is_ok() { *stop.borrow_and_update() } else { StopRequest::Release };
                if request != StopRequest::Continue {
                    break Finish::Stop(request);
                }
            }
        }
    };
    // Dropping the transfer closes the connection and the file before anything else happens.
    drop(transfer);
    let retry_after = match &finish {
        Finish::Transfer(Err(failure)) => failure.retry_after,
        _ => None,
    };

    let outcome = match finish {
        Finish::Transfer(Ok(completed)) => {
            let _ = context
                .service
                .download_progress(download_id as u64, completed.bytes, completed.bytes)
                .await;
            DownloadOutcome::Succeeded {
                final_path: completed.final_path,
                bytes: completed.bytes,
                sha256: completed.sha256,
            }
        }
        Finish::Transfer(Err(failure)) => {
            if failure.discard_part {
                discard_part(&part);
            }
            // Logged once the outcome is recorded, when it is known whether the job is
            // tried again.
            if failure.out_of_space {
                DownloadOutcome::Postponed {
                    error: failure.error,
                }
            } else {
                DownloadOutcome::Failed {
                    error: failure.error,
                    retryable: failure.retryable,
                }
            }
        }
        Finish::Stop(StopRequest::Cancel) => {
            discard_part(&part);
            tracing::info!(
                "download {download_id} cancelled; partial file {} removed",
                part.display()
            );
            DownloadOutcome::Cancelled
        }
        Finish::Stop(_) => {
            let bytes_done = inbox::part_size(&part).unwrap_or(0);
            // O_NOFOLLOW: the sync is for our own file, never a link's target.
            let opened = std::os::unix::fs::OpenOptionsExt::custom_flags(
                std::fs::OpenOptions::new().read(true),
                libc::O_NOFOLLOW,
            )
            .open(&part);
            if let Ok(file) = opened {
                // What was received so far survives a power cut too, so the resume is honest.
                let _ = file.sync_all();
            }
            tracing::info!(
                bytes_done,
                "download {download_id} released after {bytes_done} bytes; it resumes from there later"
            );
            DownloadOutcome::Released { bytes_done }
        }
        Finish::LeaseLost(error) => {
            tracing::error!(
                error = %error,
                "download {download_id} (job {job_id}): lost the job's lease; stopping without \
                 recording: {error}"
            );
            return report(job_id, Some(download_id), Ended::NotRecorded { error });
        }
    };
    let attempt = job.attempt;
    let report = record_outcome(&context, &job, download_id, outcome).await;
    if let (Ended::Retrying { .. }, Some(wait)) = (&report.ended, retry_after) {
        let run_at_ms = sluice_core::store::now_ms() + wait.as_millis() as i64;
        let postponed = context
            .store
            .call(move |store| store.postpone_retry(job_id, run_at_ms))
            .await;
        if let Err(error) = postponed {
            // The host's hold still keeps the request back; only the slot is taken meanwhile.
            tracing::warn!(error = %error, "download {download_id}: cannot postpone its retry: {error}");
        }
    }
    match &report.ended {
        Ended::Postponed { error } => tracing::warn!(
            error = %error,
            "download {download_id} (job {job_id}) waits for space: {error}; it resumes from \
             its partial file once space is freed, without using an attempt"
        ),
        Ended::Retrying { error } => tracing::warn!(
            error = %error,
            "download {download_id} (job {job_id}): attempt {attempt} failed: {error}; trying again"
        ),
        Ended::Failed { error } => tracing::error!(
            error = %error,
            "download {download_id} (job {job_id}) failed at attempt {attempt}: {error}"
        ),
        _ => {}
    }
    report
}

/// Saves progress and renews the lease; returns whether a cancel was requested.
async fn save_progress(
    context: &TransferContext,
    job: &ClaimedJob,
    download_id: i64,
    shared: &Arc<Mutex<SharedProgress>>,
    last_saved: &mut (Instant, u64),
) -> Result<bool, DownloadError> {
    let snapshot = shared_snapshot(shared);
    let now = Instant::now();
    let elapsed = now.duration_since(last_saved.0).as_secs_f64();
    let rate = if elapsed > 0.0 {
        snapshot.bytes_done.saturating_sub(last_saved.1) as f64 / elapsed
    } else {
        0.0
    };
    *last_saved = (now, snapshot.bytes_done);
    let progress = DownloadProgress {
        bytes_done: snapshot.bytes_done,
        bytes_total: snapshot.bytes_total,
        rate_bytes_per_second: rate,
        etag: snapshot.etag.clone(),
        last_modified: snapshot.last_modified.clone(),
    };
    let job_id = job.id;
    let token = job.lease_token.clone();
    let lease = context.settings.lease;
    let heartbeat = context
        .store
        .call(move |store| {
            store.record_download_progress(download_id, job_id, &token, &progress, lease)
        })
        .await?;
    let total = snapshot.bytes_total.unwrap_or(0);
    if let Err(error) = context
        .service
        .download_progress(download_id as u64, snapshot.bytes_done, total)
        .await
    {
        tracing::warn!(
            error = %error,
            "cannot emit DownloadProgress for download {download_id}: {error}"
        );
    }
    if total > 0 {
        let fraction = snapshot.bytes_done as f64 / total as f64;
        let message = format!("{} of {total} bytes", snapshot.bytes_done);
        let _ = context
            .service
            .job_progress(job_id as u64, fraction, &message)
            .await;
    }
    Ok(heartbeat.cancel_requested)
}

fn shared_snapshot(shared: &Arc<Mutex<SharedProgress>>) -> SharedProgress {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn update_shared(shared: &Arc<Mutex<SharedProgress>>, change: impl FnOnce(&mut SharedProgress)) {
    change(
        &mut shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
}

/// The transfer itself. Returns once the file is in the inbox, or why not. `git_sha1` is the
/// git blob SHA-1 the file must have (the job's `git_blob_sha1`, from the Hub).
async fn transfer(
    context: &TransferContext,
    download: &Download,
    part: &std::path::Path,
    git_sha1: Option<&str>,
    shared: Arc<Mutex<SharedProgress>>,
) -> Result<Completed, Failure> {
    let settings = &context.settings;
    let url = Url::parse(&download.url)
        .map_err(|error| Failure::permanent(format!("stored url is invalid: {error}")))?;
    guard::check_target(&url, settings.allow_private_addresses)
        .map_err(|refused| Failure::permanent(refused.to_string()))?;
    let limit = download
        .size_limit
        .map_or(settings.max_download_size, |limit| {
            limit.min(settings.max_download_size)
        });

    let host_key = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    );
    let _slot = context.hosts.acquire(&host_key).await;

    // The partial file of an earlier attempt, opened beneath the staging folder without
    // following links; its size on the descriptor is where the download resumes.
    let staging = settings.staging.clone();
    let download_id = download.id;
    let existing =
        tokio::task::spawn_blocking(move || inbox::open_part(&staging, download_id, false))
            .await
            .map_err(|error| Failure::retryable(format!("opening task failed: {error}")))?
            .map_err(file_failure)?;
    let offset = match &existing {
        Some(file) => file
            .metadata()
            .map(|metadata| metadata.len())
            .map_err(|error| {
                Failure::retryable(format!("cannot inspect {}: {error}", part.display()))
            })?,
        None => 0,
    };
    if offset > limit {
        return Err(Failure::permanent(format!(
            "the partial file already has {offset} bytes, over the size limit of {limit} bytes"
        )));
    }
    let hasher = match existing {
        Some(file) if offset > 0 => {
            let prefix_path = part.to_path_buf();
            tokio::task::spawn_blocking(move || inbox::hash_prefix(&file, &prefix_path, offset))
                .await
                .map_err(|error| Failure::retryable(format!("hashing task failed: {error}")))?
                .map_err(|error| {
                    Failure::retryable(format!("cannot read the partial file: {error}"))
                })?
        }
        _ => Sha256::new(),
    };

    // The attempt's wall-clock limit runs from here, once it may connect: waiting for the
    // host's slot is the queue's time, not the transfer's. It covers the request and the body
    // only; the checks and the move into the inbox below are short and must not be cut off
    // halfway (a move interrupted by a timeout would leave the outcome unclear).
    // A partial file that already hashes to the expected SHA-256 is the file: a page its
    // source check fetched and left here, or a download stopped after its last byte. No
    // request is made for it.
    let complete_already = offset > 0
        && download
            .expected_sha256
            .as_deref()
            .is_some_and(|expected| hex(&hasher.clone().finalize()) == expected);
    if complete_already {
        tracing::info!(
            bytes = offset,
            "download {}: the partial file already is the expected file ({offset} bytes, \
             SHA-256 matches); not fetched again",
            download.id
        );
        update_shared(&shared, |progress| {
            progress.bytes_done = offset;
            progress.bytes_total = Some(offset);
        });
    }
    let received = if complete_already {
        Ok(Ok((offset, hasher)))
    } else {
        tokio::time::timeout(
            settings.download_timeout,
            receive(
                context,
                download,
                part,
                &url,
                limit,
                (offset, hasher),
                &shared,
            ),
        )
        .await
    };
    let (bytes_done, hasher) = match received {
        Ok(received) => received?,
        Err(_elapsed) => {
            let bytes_done = shared_snapshot(&shared).bytes_done;
            // Retried like a broken connection: the partial file stays, and the next attempt
            // resumes from it.
            return Err(Failure::retryable(format!(
                "{} with {bytes_done} bytes received; the next attempt resumes from them",
                timed_out_after(settings.download_timeout, "[scraper] download_timeout")
            )));
        }
    };

    let sha256 = hex(&hasher.finalize());
    if let Some(expected) = &download.expected_sha256
        && *expected != sha256
    {
        return Err(Failure::permanent(format!(
            "SHA-256 mismatch: expected {expected}, the file has {sha256}"
        )));
    }
    // A small file of an hf:// bundle, kept in git rather than LFS: its git blob SHA-1.
    if let Some(expected) = git_sha1 {
        let staging = settings.staging.clone();
        let download_id = download.id;
        let actual = tokio::task::spawn_blocking(move || {
            inbox::git_blob_sha1(&staging, download_id, bytes_done)
        })
        .await
        .map_err(|error| Failure::retryable(format!("hashing task failed: {error}")))?
        .map_err(file_failure)?;
        if actual != expected {
            return Err(Failure::permanent(format!(
                "git blob SHA-1 mismatch: expected {expected}, the file has {actual}"
            )));
        }
    }
    let part_owned = part.to_path_buf();
    let inbox_path = settings.inbox.clone();
    let bundle = download.bundle.clone();
    let file_name = download.file_name.clone();
    let staging = settings.staging.clone();
    let bundle_file = download.bundle_id.zip(download.relative_path.clone());
    let final_path = tokio::task::spawn_blocking(move || match bundle_file {
        // A bundle's file waits in the bundle's folder in staging until every file is done;
        // the scraper's loop then moves the whole folder into the inbox.
        Some((bundle_id, relative_path)) => {
            inbox::place_in_bundle_folder(&part_owned, &staging, bundle_id, &relative_path)
        }
        None => inbox::place_in_inbox(&part_owned, &inbox_path, bundle.as_deref(), &file_name),
    })
    .await
    .map_err(|error| Failure::retryable(format!("moving task failed: {error}")))?
    .map_err(|error| match error {
        inbox::FileError::Refused(reason) => Failure {
            error: format!("cannot move the file into the inbox: {reason}"),
            retryable: false,
            discard_part: true,
            out_of_space: false,
            retry_after: None,
        },
        inbox::FileError::Io(reason) => {
            Failure::retryable(format!("cannot move the file into the inbox: {reason}"))
        }
        inbox::FileError::NoSpace(reason) => {
            Failure::out_of_space(format!("cannot move the file into the inbox: {reason}"))
        }
    })?;
    tracing::info!(
        path = %final_path.display(),
        bytes = bytes_done,
        sha256 = %sha256,
        "download {} complete: {url} saved as {} ({bytes_done} bytes)",
        download.id,
        final_path.display()
    );
    Ok(Completed {
        final_path: final_path.to_string_lossy().into_owned(),
        bytes: bytes_done,
        sha256,
    })
}

/// The credentials that go with `download`'s request to `url`: the Hub's
/// (`[scraper] hf_credentials_file`) for a file of an `hf://` bundle on the Hub's origin; a
/// source's (`credentials_file`) for a download that source created, on the source's origin.
/// Nothing else gets any: not a user's download that happens to be on the Hub or on a
/// source's host. The file is read at every attempt, so a rotated secret applies at once.
async fn download_credentials(
    context: &TransferContext,
    download: &Download,
    url: &Url,
) -> Result<Vec<credentials::Credential>, Failure> {
    let settings = &context.settings;
    let chosen = if let Some(bundle_id) = download.bundle_id {
        match &settings.hub_credentials {
            Some((hub, file)) if url.origin() == hub.origin() => {
                let origin = context
                    .store
                    .call(move |store| store.get_bundle(bundle_id).map(|bundle| bundle.origin))
                    .await
                    .map_err(|error| {
                        Failure::retryable(format!("cannot read bundle {bundle_id}: {error}"))
                    })?;
                origin
                    .is_some_and(|origin| origin.starts_with("hf://"))
                    .then(|| {
                        (
                            file.clone(),
                            format!("[scraper] hf_credentials_file {}", file.display()),
                        )
                    })
            }
            _ => None,
        }
    } else if let Some(source_id) = download.source_id
        && !settings.source_credentials.is_empty()
    {
        let sources = context
            .store
            .call(|store| store.list_sources())
            .await
            .map_err(|error| Failure::retryable(format!("cannot read the sources: {error}")))?;
        sources
            .into_iter()
            .find(|source| source.id == source_id)
            .and_then(|source| {
                let (source_url, file) = settings.source_credentials.get(&source.name)?;
                (url.origin() == source_url.origin()).then(|| {
                    (
                        file.clone(),
                        format!(
                            "credentials_file {} of source {}",
                            file.display(),
                            source.name
                        ),
                    )
                })
            })
    } else {
        None
    };
    let Some((file, what)) = chosen else {
        return Ok(Vec::new());
    };
    let read = credentials::read_credentials(&file)
        .map_err(|error| Failure::retryable(format!("{what}: {error}")))?;
    credentials::for_downloads(read, &what).map_err(Failure::permanent)
}

/// The request and the body of one attempt, appended to (or replacing) the partial file.
/// `resume_from` is what the partial file holds: its length and the hash of those bytes.
/// Returns the bytes now in the file and their hash.
async fn receive(
    context: &TransferContext,
    download: &Download,
    part: &std::path::Path,
    url: &Url,
    limit: u64,
    resume_from: (u64, Sha256),
    shared: &Arc<Mutex<SharedProgress>>,
) -> Result<(u64, Sha256), Failure> {
    let settings = &context.settings;
    let (mut offset, mut hasher) = resume_from;
    let mut request = context.client.get(url.clone());
    // Credentials go with the first request only to the origin they belong to; reqwest drops
    // Authorization when a redirect leads to another host or port (the Hub sends large files
    // on to its CDN that way), and only bearer and basic are sent (`for_downloads`).
    let credentials = download_credentials(context, download, url).await?;
    request = credentials::apply(request, &credentials);
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
        let strong_etag = download
            .etag
            .as_deref()
            .filter(|etag| !etag.starts_with("W/"));
        if let Some(validator) = strong_etag.or(download.last_modified.as_deref()) {
            request = request.header(IF_RANGE, validator);
        }
        tracing::info!(
            offset,
            "download {}: resuming {url} at byte {offset} with a range request",
            download.id
        );
    }
    let mut response = request
        .send()
        .await
        .map_err(|error| match guard::refusal_in(&error) {
            Some(refused) => Failure::permanent(refused.to_string()),
            None => Failure::retryable(format!(
                "request to {url} failed: {}",
                guard::describe_error(&error)
            )),
        })?;

    let status = response.status();
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_length = header_text(CONTENT_LENGTH).and_then(|text| text.parse::<u64>().ok());
    let content_range = header_text(CONTENT_RANGE);
    let etag = header_text(ETAG);
    let last_modified = header_text(LAST_MODIFIED);
    let mut already_complete = false;
    let (append, total) = match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range = content_range.as_deref().and_then(parse_content_range);
            match range {
                Some((start, total)) if start == offset => {
                    (true, total.or(content_length.map(|length| offset + length)))
                }
                _ => {
                    return Err(Failure {
                        error: format!(
                            "asked to resume at byte {offset}, the server sent the range {:?}; \
                             starting over",
                            content_range.unwrap_or_default()
                        ),
                        retryable: true,
                        discard_part: true,
                        out_of_space: false,
                        retry_after: None,
                    });
                }
            }
        }
        StatusCode::OK => {
            if offset > 0 {
                tracing::info!(
                    offset,
                    "download {}: the server sent the whole file instead of the range from byte \
                     {offset}; starting over",
                    download.id
                );
                offset = 0;
                hasher = Sha256::new();
            }
            (false, content_length)
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            let complete_size = content_range
                .as_deref()
                .and_then(|text| text.strip_prefix("bytes */"))
                .and_then(|size| size.trim().parse::<u64>().ok());
            if complete_size == Some(offset) {
                tracing::info!(
                    offset,
                    "download {}: the partial file already holds the whole file ({offset} bytes)",
                    download.id
                );
                already_complete = true;
                (true, Some(offset))
            } else {
                return Err(Failure {
                    error: format!(
                        "the server refused to resume at byte {offset} (HTTP 416, file size \
                         {}); starting over",
                        complete_size.map_or("unknown".to_owned(), |size| size.to_string())
                    ),
                    retryable: true,
                    discard_part: true,
                    out_of_space: false,
                    retry_after: None,
                });
            }
        }
        status if status.is_success() => {
            return Err(Failure::permanent(format!(
                "unexpected HTTP {status} from {url}"
            )));
        }
        status if status.is_redirection() => {
            return Err(unfollowed_redirect(
                status,
                response.url(),
                header_text(LOCATION),
            ));
        }
        status @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
            // The host asked everyone to wait: its gate is held (source checks and other
            // downloads to it wait too), and this download's retry comes no earlier.
            let wait = header_text(RETRY_AFTER)
                .as_deref()
                .and_then(crate::sources::fetch::parse_retry_after)
                .map(|wait| wait.min(MAX_DOWNLOAD_RETRY_AFTER));
            let failure = status_failure(status, response.url());
            let Some(wait) = wait else {
                return Err(failure);
            };
            let host = crate::sources::fetch::host_key(response.url());
            context.hosts.hold(&host, Instant::now() + wait).await;
            return Err(Failure {
                error: format!(
                    "{}; asked to retry after {} s, not tried again before then",
                    failure.error,
                    wait.as_secs()
                ),
                retry_after: Some(wait),
                ..failure
            });
        }
        status => return Err(status_failure(status, response.url())),
    };
    if let Some(total) = total
        && total > limit
    {
        return Err(Failure::permanent(format!(
            "the file is {total} bytes, over the size limit of {limit} bytes"
        )));
    }
    update_shared(shared, |progress| {
        progress.bytes_done = offset;
        progress.bytes_total = total;
        progress.etag = etag;
        progress.last_modified = last_modified;
    });

    let mut bytes_done = offset;
    if !already_complete {
        let io_failure = |error: std::io::Error| Failure::writing(part, &error);
        let staging = settings.staging.clone();
        let download_id = download.id;
        let opened =
            tokio::task::spawn_blocking(move || inbox::open_part(&staging, download_id, true))
                .await
                .map_err(|error| Failure::retryable(format!("opening task failed: {error}")))?
                .map_err(file_failure)?
                .ok_or_else(|| Failure::retryable(format!("{} vanished", part.display())))?;
        // Truncated only now, after the checks on the descriptor: O_TRUNC at open would
        // have emptied a hard-linked file before it could be refused.
        if append {
            use std::io::{Seek, SeekFrom};
            let mut opened = &opened;
            opened.seek(SeekFrom::End(0)).map_err(io_failure)?;
        } else {
            opened.set_len(0).map_err(io_failure)?;
        }
        let mut file = tokio::fs::File::from_std(opened);
        while let Some(chunk) = response.chunk().await.map_err(|error| {
            Failure::retryable(format!(
                "the transfer broke off after {bytes_done} bytes: {}",
                guard::describe_error(&error)
            ))
        })? {
            let length = chunk.len() as u64;
            if bytes_done + length > limit {
                return Err(Failure::permanent(format!(
                    "the file grew past the size limit of {limit} bytes"
                )));
            }
            file.write_all(&chunk).await.map_err(io_failure)?;
            hasher.update(&chunk);
            bytes_done += length;
            context
                .counters
                .bytes_received
                .fetch_add(length, Ordering::Relaxed);
            update_shared(shared, |progress| progress.bytes_done = bytes_done);
        }
        file.flush().await.map_err(io_failure)?;
        if let Some(total) = total
            && bytes_done != total
        {
            return Err(Failure::retryable(format!(
                "the connection closed after {bytes_done} of {total} bytes"
            )));
        }
        file.sync_all().await.map_err(io_failure)?;
    }

    Ok((bytes_done, hasher))
}

/// A way for the scraper's own tests to make a download task panic, as a bug would. Compiled
/// only into the crate's unit tests (`cfg(test)`), so no shipped binary can be made to
/// panic on purpose; there is no real input that panics (that would be the bug to fix).
#[cfg(test)]
pub mod test_hooks {
    /// A download whose URL contains this panics as soon as its task starts.
    pub const PANIC_MARKER: &str = "panic-in-download-task";

    pub fn panic_if_asked(url: &str) {
        if url.contains(PANIC_MARKER) {
            panic!("test hook: asked to panic for {url}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/500"),
            Some((100, Some(500)))
        );
        assert_eq!(parse_content_range("bytes 7-9/*"), Some((7, None)));
        assert_eq!(parse_content_range("bytes */500"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn server_errors_and_throttling_are_retried_other_statuses_are_final() {
        let url = Url::parse("http://example.org/x").unwrap();
        for code in [500, 502, 503, 408, 429] {
            assert!(
                status_failure(StatusCode::from_u16(code).unwrap(), &url).retryable,
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 304] {
            let failure = status_failure(StatusCode::from_u16(code).unwrap(), &url);
            assert!(!failure.retryable, "{code}");
            assert!(
                failure.error.contains(&code.to_string()),
                "{}",
                failure.error
            );
        }
    }
}
