//! Downloads: one URL fetched into one file of the inbox. A download is a row in `downloads`
//! plus a job of kind `download` that the scraper claims; both are created in one transaction
//! by [`Store::create_download`], which every submitter (D-Bus, web API, sluicectl) calls with
//! a [`ValidDownload`]: the rules for what may be downloaded live in [`crate::policy`], and
//! this module only records what passed them.
//!
//! The download's `state` follows its job's state through a trigger (migration 2): whatever
//! changes the job (the scraper finishing it, the web cancelling or retrying it, the rescue of
//! an expired lease) changes the download in the same statement, so the two never disagree.
//!
//! | job state | download state |
//! |---|---|
//! | queued, retrying | queued |
//! | running | running |
//! | succeeded | succeeded |
//! | failed, dead | failed |
//! | cancelled | cancelled |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use super::jobs::{
    self, Completion, Heartbeat, JobError, JobState, LeaseToken, NewJob, Outcome, Page, PageRequest,
};
use super::{Store, StoreError, duration_ms, now_ms};

/// The job kind the scraper claims.
pub const DOWNLOAD_JOB_KIND: &str = "download";
// A submission is a policy type: callers validate a `NewDownload` into a `ValidDownload`,
// which is all `create_download` takes. Re-exported so `store::NewDownload` keeps its path.
pub use crate::policy::{NewDownload, ValidDownload};

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("download {0} not found")]
    NotFound(i64),
    #[error("bundle {0} not found")]
    BundleNotFound(i64),
    #[error("bundle {id} is {state}; cannot {action} it")]
    BundleInvalidState {
        id: i64,
        state: super::bundles::BundleState,
        action: &'static str,
    },
    /// A bundle's file is deleted with its bundle, not on its own (the bundle would wait for
    /// it forever).
    #[error("download {id} is a file of bundle {bundle_id}; delete or cancel the bundle instead")]
    PartOfBundle { id: i64, bundle_id: i64 },
    #[error("download {id} is {state}; cannot {action} it")]
    InvalidState {
        id: i64,
        state: DownloadState,
        action: &'static str,
    },
    /// The job behind the download refused the change (lease lost, not found).
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DownloadError {
    /// The refusal when the download queue is at `[scraper] max_pending`.
    pub fn queue_full(&self) -> Option<&jobs::QueueFull> {
        match self {
            DownloadError::Job(JobError::QueueFull(full)) => Some(full),
            _ => None,
        }
    }

    /// Whether the store refused the change only because the database's disk is full.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            DownloadError::Job(error) => error.is_out_of_space(),
            DownloadError::Store(error) => error.is_out_of_space(),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for DownloadError {
    fn from(error: rusqlite::Error) -> Self {
        DownloadError::Store(StoreError::from(error))
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl DownloadState {
    pub const ALL: [DownloadState; 5] = [
        DownloadState::Queued,
        DownloadState::Running,
        DownloadState::Succeeded,
        DownloadState::Failed,
        DownloadState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DownloadState::Queued => "queued",
            DownloadState::Running => "running",
            DownloadState::Succeeded => "succeeded",
            DownloadState::Failed => "failed",
            DownloadState::Cancelled => "cancelled",
        }
    }

    /// Succeeded, failed or cancelled: nothing happens to it unless its job is retried.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DownloadState::Succeeded | DownloadState::Failed | DownloadState::Cancelled
        )
    }
}

impl fmt::Display for DownloadState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for DownloadState {
    type Err = DownloadError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DownloadState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                DownloadError::InvalidArgument(format!(
                    "unknown download state {text:?} (expected one of queued, running, \
                     succeeded, failed, cancelled)"
                ))
            })
    }
}

/// The ids [`Store::create_download`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CreatedDownload {
    pub download_id: i64,
    pub job_id: i64,
}

/// One row of `downloads`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Download {
    pub id: i64,
    pub url: String,
    pub file_name: String,
    pub bundle: Option<String>,
    pub source_id: Option<i64>,
    pub state: DownloadState,
    pub bytes_done: u64,
    /// `None` until the server said how large the file is.
    pub bytes_total: Option<u64>,
    /// Over the last progress interval; `None` unless running.
    pub rate_bytes_per_second: Option<f64>,
    pub expected_sha256: Option<String>,
    pub size_limit: Option<u64>,
    pub part_path: Option<String>,
    /// The file in the inbox, once succeeded.
    pub final_path: Option<String>,
    /// The validators of the partial content, sent as `If-Range` when resuming.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The last error (also while a retry is pending).
    pub error: Option<String>,
    pub job_id: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The bundle this download is a file of ([`super::bundles`]).
    pub bundle_id: Option<i64>,
    /// Where the file goes inside its bundle's folder.
    pub relative_path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadFilter {
    /// Empty means every state.
    pub states: Vec<DownloadState>,
}

/// Where a running download stands, saved at most once per progress interval.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadProgress {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub rate_bytes_per_second: f64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// How an attempt at a download ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadOutcome {
    /// The file is in the inbox at `final_path`.
    Succeeded {
        final_path: String,
        bytes: u64,
        sha256: String,
    },
    /// `retryable` failures (5xx, a reset connection) are tried again with backoff; others
    /// (4xx, a wrong checksum, too large, a refused address) fail the download for good.
    Failed { error: String, retryable: bool },
    /// Stopped because cancellation was requested; the partial file is gone.
    Cancelled,
    /// Given back on shutdown: the partial file stays and the next attempt resumes it.
    Released { bytes_done: u64 },
    /// The staging disk is full: the partial file stays, the download waits (queued, with
    /// the error) and resumes without having used an attempt ([`Outcome::Postponed`]).
    Postponed { error: String },
}

const DOWNLOAD_COLUMNS: &str = "id, url, file_name, bundle, source_id, state, bytes_done, \
     bytes_total, rate_bytes_per_s, expected_sha256, size_limit, part_path, final_path, etag, \
     last_modified, error, job_id, created_at, updated_at, bundle_id, relative_path";

impl Store {
    /// Inserts the row of a download that passed the policy and its `download` job in one
    /// transaction. The named source must be configured (that is the store's to know).
    ///
    /// No queue limit applies: this is for the scraper's own work and for tests. A download
    /// someone submits goes through [`Store::create_download_within_limit`].
    pub fn create_download(
        &mut self,
        download: &ValidDownload,
    ) -> Result<CreatedDownload, DownloadError> {
        self.insert_download(download, None)
    }

    /// [`Store::create_download`] when fewer than `max_pending` download jobs are queued,
    /// retrying or running (`[scraper] max_pending`); otherwise
    /// `DownloadError::Job(JobError::QueueFull)` and nothing is recorded. The count and the
    /// inserts are one `BEGIN IMMEDIATE` transaction, so concurrent submitters, in any
    /// process, cannot take the queue past the limit.
    pub fn create_download_within_limit(
        &mut self,
        download: &ValidDownload,
        max_pending: u32,
    ) -> Result<CreatedDownload, DownloadError> {
        self.insert_download(download, Some(max_pending))
    }

    fn insert_download(
        &mut self,
        download: &ValidDownload,
        max_pending: Option<u32>,
    ) -> Result<CreatedDownload, DownloadError> {
        let max_attempts = download
            .max_attempts()
            .unwrap_or(self.options().max_attempts);
        self.write(|transaction| {
            if let Some(max_pending) = max_pending {
                jobs::require_room(transaction, DOWNLOAD_JOB_KIND, max_pending)?;
            }
            insert_download_in(transaction, download, max_attempts, None, now_ms())
        })
    }

    pub fn get_download(&self, id: i64) -> Result<Download, DownloadError> {
        read_download(self.connection(), id)
    }

    /// Downloads newest first, filtered by state, a page at a time (`next_cursor` is the
    /// `before_id` of the next page).
    pub fn list_downloads(
        &self,
        filter: &DownloadFilter,
        page: PageRequest,
    ) -> Result<Page<Download>, DownloadError> {
        if page.limit == 0 || page.limit > jobs::MAX_PAGE_SIZE {
            return Err(DownloadError::InvalidArgument(format!(
                "page size must be 1..={}, got {}",
                jobs::MAX_PAGE_SIZE,
                page.limit
            )));
        }
        let states: Vec<&str> = filter.states.iter().map(|state| state.as_str()).collect();
        let states_json = serde_json::to_string(&states).unwrap_or_else(|_| "[]".to_owned());
        let mut statement = self.connection().prepare_cached(&format!(
            "SELECT {DOWNLOAD_COLUMNS} FROM downloads
             WHERE (?1 IS NULL OR id < ?1)
               AND (?2 = '[]' OR state IN (SELECT value FROM json_each(?2)))
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let mut items = statement
            .query_map(
                params![page.before_id, states_json, page.limit + 1],
                download_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|download| download.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// How many downloads are in each state (states with none are listed with 0).
    pub fn download_counts(&self) -> Result<BTreeMap<DownloadState, u64>, DownloadError> {
        Ok(super::count_by_state(
            self.connection(),
            "SELECT state, count(*) FROM downloads GROUP BY state",
            DownloadState::ALL,
            parse_state_column,
        )?)
    }

    /// Cancels a download through its job: a queued one is cancelled at once, a running one is
    /// marked and the scraper stops it (and removes its partial file) at its next progress
    /// save, or at once when asked over D-Bus. A finished download cannot be cancelled.
    pub fn cancel_download(&mut self, id: i64) -> Result<Download, DownloadError> {
        self.write(|transaction| {
            let download = read_download(transaction, id)?;
            let job_id = match (download.state, download.job_id) {
                (state, _) if state.is_finished() => {
                    return Err(DownloadError::InvalidState {
                        id,
                        state,
                        action: "cancel",
                    });
                }
                (_, Some(job_id)) => job_id,
                (_, None) => {
                    // Its job was deleted from under it; nothing can run it any more.
                    transaction.execute(
                        "UPDATE downloads SET state = 'cancelled', error = 'cancelled on request',
                             updated_at = ?2 WHERE id = ?1",
                        params![id, now_ms()],
                    )?;
                    return read_download(transaction, id);
                }
            };
            match jobs::cancel_in(transaction, job_id) {
                Ok(_) => {}
                Err(JobError::InvalidState { state, .. }) => {
                    // Only reachable if the rows disagree, which the trigger prevents; say
                    // what the job is rather than pretending it was cancelled.
                    return Err(DownloadError::InvalidArgument(format!(
                        "download {id}: its job {job_id} is already {state}"
                    )));
                }
                Err(error) => return Err(error.into()),
            }
            read_download(transaction, id)
        })
    }

    /// Forgets a finished (succeeded, failed or cancelled) download and returns its last row,
    /// so the caller can remove a partial file it may have left. Its job stays in the history.
    pub fn delete_download(&mut self, id: i64) -> Result<Download, DownloadError> {
        self.write(|transaction| {
            let download = read_download(transaction, id)?;
            if let Some(bundle_id) = download.bundle_id {
                return Err(DownloadError::PartOfBundle { id, bundle_id });
            }
            if !download.state.is_finished() {
                return Err(DownloadError::InvalidState {
                    id,
                    state: download.state,
                    action: "delete (cancel it first)",
                });
            }
            transaction.execute("DELETE FROM downloads WHERE id = ?1", [id])?;
            Ok(download)
        })
    }

    /// The scraper starts an attempt of a claimed download job: records where the partial
    /// file lives. Fenced on the job's lease like every change a worker makes.
    pub fn start_download_attempt(
        &mut self,
        download_id: i64,
        job_id: i64,
        lease_token: &LeaseToken,
        part_path: &str,
    ) -> Result<Download, DownloadError> {
        self.write(|transaction| {
            require_lease(transaction, job_id, lease_token)?;
            let changed = transaction
                .prepare_cached(
                    "UPDATE downloads SET part_path = ?3, final_path = NULL, updated_at = ?4
                     WHERE id = ?1 AND job_id = ?2",
                )?
                .execute(params![download_id, job_id, part_path, now_ms()])?;
            if changed == 0 {
                return Err(missing_download(transaction, download_id, job_id));
            }
            read_download(transaction, download_id)
        })
    }

    /// Saves the progress of a running download, mirrors it into the job's progress, and
    /// extends the job's lease: one commit per progress interval does all three. The returned
    /// heartbeat says whether cancellation was requested.
    pub fn record_download_progress(
        &mut self,
        download_id: i64,
        job_id: i64,
        lease_token: &LeaseToken,
        progress: &DownloadProgress,
        lease: Duration,
    ) -> Result<Heartbeat, DownloadError> {
        let lease_ms = duration_ms(lease);
        if lease_ms < 10 {
            return Err(DownloadError::InvalidArgument(format!(
                "lease must be at least 10ms, got {lease:?}"
            )));
        }
        check_validator("etag", progress.etag.as_deref())?;
        check_validator("last_modified", progress.last_modified.as_deref())?;
        self.write(|transaction| {
            let now = now_ms();
            let fraction = match progress.bytes_total {
                Some(total) if total > 0 => (progress.bytes_done as f64 / total as f64).min(1.0),
                _ => 0.0,
            };
            let message = match progress.bytes_total {
                Some(total) => format!("{} of {} bytes", progress.bytes_done, total),
                None => format!("{} bytes", progress.bytes_done),
            };
            let heartbeat = transaction
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?3, progress = ?4, progress_message = ?5,
                         updated_at = ?6
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                     RETURNING cancel_requested, lease_expires_at",
                )?
                .query_row(
                    params![
                        job_id,
                        lease_token.as_str(),
                        now + lease_ms,
                        fraction,
                        message,
                        now
                    ],
                    |row| {
                        Ok(Heartbeat {
                            cancel_requested: row.get(0)?,
                            lease_expires_at_ms: row.get(1)?,
                        })
                    },
                )
                .optional()?;
            let Some(heartbeat) = heartbeat else {
                return Err(jobs::lease_lost_or_not_found(transaction, job_id).into());
            };
            let rate = if progress.rate_bytes_per_second.is_finite() {
                progress.rate_bytes_per_second.max(0.0)
            } else {
                0.0
            };
            let changed = transaction
                .prepare_cached(
                    "UPDATE downloads SET bytes_done = ?3, bytes_total = ?4, rate_bytes_per_s = ?5,
                         etag = ?6, last_modified = ?7, updated_at = ?8
                     WHERE id = ?1 AND job_id = ?2",
                )?
                .execute(params![
                    download_id,
                    job_id,
                    progress.bytes_done as i64,
                    progress.bytes_total.map(|total| total as i64),
                    rate,
                    progress.etag,
                    progress.last_modified,
                    now
                ])?;
            if changed == 0 {
                return Err(missing_download(transaction, download_id, job_id));
            }
            Ok(heartbeat)
        })
    }

    /// Ends an attempt: the job's outcome and the download's final fields in one transaction
    /// (the trigger moves the download's state with the job's). Returns the download's new
    /// state and the job's.
    pub fn finish_download(
        &mut self,
        download_id: i64,
        job_id: i64,
        lease_token: &LeaseToken,
        outcome: &DownloadOutcome,
    ) -> Result<(DownloadState, JobState), DownloadError> {
        if let DownloadOutcome::Failed { error, .. } | DownloadOutcome::Postponed { error } =
            outcome
            && error.len() > jobs::MAX_MESSAGE_LENGTH
        {
            return Err(DownloadError::InvalidArgument(format!(
                "error text is {} bytes, the limit is {}",
                error.len(),
                jobs::MAX_MESSAGE_LENGTH
            )));
        }
        let retry_policy = self.options().retry;
        self.write(|transaction| {
            let now = now_ms();
            // Checked first so that a deleted download does not leave a finished job behind
            // with nothing recorded.
            read_download(transaction, download_id)?;
            let job_outcome = match outcome {
                DownloadOutcome::Succeeded {
                    final_path,
                    bytes,
                    sha256,
                } => Outcome::Succeeded {
                    result: serde_json::json!({
                        "download_id": download_id,
                        "path": final_path,
                        "bytes": bytes,
                        "sha256": sha256,
                    }),
                },
                DownloadOutcome::Failed { error, retryable } => Outcome::Failed {
                    error: error.clone(),
                    retryable: *retryable,
                },
                DownloadOutcome::Postponed { error } => Outcome::Postponed {
                    error: error.clone(),
                },
                DownloadOutcome::Cancelled => Outcome::Cancelled,
                DownloadOutcome::Released { .. } => Outcome::Released,
            };
            let completion = Completion {
                id: job_id,
                lease_token: lease_token.clone(),
                outcome: job_outcome,
            };
            let job_state = jobs::complete(transaction, &completion, &retry_policy, now)??;
            match outcome {
                DownloadOutcome::Succeeded {
                    final_path, bytes, ..
                } => {
                    transaction.execute(
                        "UPDATE downloads SET final_path = ?2, part_path = NULL, bytes_done = ?3,
                             bytes_total = ?3, rate_bytes_per_s = NULL, updated_at = ?4
                         WHERE id = ?1",
                        params![download_id, final_path, *bytes as i64, now],
                    )?;
                }
                DownloadOutcome::Cancelled => {
                    transaction.execute(
                        "UPDATE downloads SET part_path = NULL, bytes_done = 0,
                             rate_bytes_per_s = NULL, updated_at = ?2
                         WHERE id = ?1",
                        params![download_id, now],
                    )?;
                }
                DownloadOutcome::Released { bytes_done } => {
                    transaction.execute(
                        "UPDATE downloads SET bytes_done = ?2, rate_bytes_per_s = NULL,
                             updated_at = ?3
                         WHERE id = ?1",
                        params![download_id, *bytes_done as i64, now],
                    )?;
                }
                DownloadOutcome::Failed { .. } | DownloadOutcome::Postponed { .. } => {}
            }
            let state = read_download(transaction, download_id)?.state;
            Ok((state, job_state))
        })
    }
}

impl Store {
    /// A download job waiting to be retried becomes due no earlier than `run_at_ms` (the
    /// server's `Retry-After`); an earlier retry time is moved, a later one kept. Returns
    /// whether the job was waiting for a retry (it may have been cancelled meanwhile).
    pub fn postpone_retry(&mut self, job_id: i64, run_at_ms: i64) -> Result<bool, DownloadError> {
        self.write(|transaction| {
            let changed = transaction.execute(
                "UPDATE jobs SET run_at = MAX(run_at, ?2), updated_at = ?3
                 WHERE id = ?1 AND state = 'retrying'",
                params![job_id, run_at_ms, now_ms()],
            )?;
            Ok(changed == 1)
        })
    }
}

fn check_validator(what: &str, value: Option<&str>) -> Result<(), DownloadError> {
    match value {
        Some(value) if value.len() > 1024 => Err(DownloadError::InvalidArgument(format!(
            "{what} is {} bytes, the limit is 1024",
            value.len()
        ))),
        _ => Ok(()),
    }
}

fn require_lease(
    transaction: &Transaction<'_>,
    job_id: i64,
    lease_token: &LeaseToken,
) -> Result<(), DownloadError> {
    let held: Option<i64> = transaction
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
        )?
        .query_row(params![job_id, lease_token.as_str()], |row| row.get(0))
        .optional()?;
    match held {
        Some(_) => Ok(()),
        None => Err(jobs::lease_lost_or_not_found(transaction, job_id).into()),
    }
}

/// The error for an update that matched no download: gone, or not this job's.
fn missing_download(transaction: &Transaction<'_>, download_id: i64, job_id: i64) -> DownloadError {
    match read_download(transaction, download_id) {
        Ok(download) => DownloadError::InvalidArgument(format!(
            "download {download_id} belongs to job {:?}, not job {job_id}",
            download.job_id
        )),
        Err(error) => error,
    }
}

/// Inserts a download row and its job inside the caller's transaction (no queue limit: the
/// caller checks it), resolving the named source to its id.
/// What makes a download a bundle's file.
#[derive(Debug, Clone, Copy)]
pub(super) struct BundleFileOf<'a> {
    pub bundle_id: i64,
    pub relative_path: &'a str,
    pub size: Option<u64>,
    /// Goes into the job's payload (`git_blob_sha1`), which the scraper checks.
    pub git_sha1: Option<&'a str>,
}

pub(super) fn insert_download_in(
    transaction: &Transaction<'_>,
    download: &ValidDownload,
    max_attempts: u32,
    bundle_file: Option<BundleFileOf<'_>>,
    now: i64,
) -> Result<CreatedDownload, DownloadError> {
    let source_id = match download.source() {
        Some(name) => Some(
            transaction
                .prepare_cached("SELECT id FROM sources WHERE name = ?1")?
                .query_row([name], |row| row.get::<_, i64>(0))
                .optional()?
                .ok_or_else(|| {
                    DownloadError::InvalidArgument(format!("source {name:?} is not configured"))
                })?,
        ),
        None => None,
    };
    let download_id: i64 = transaction
        .prepare_cached(
            "INSERT INTO downloads (url, file_name, bundle, source_id, state,
                 expected_sha256, size_limit, created_at, updated_at, bundle_id, relative_path,
                 bytes_total)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?7, ?8, ?9, ?10)
             RETURNING id",
        )?
        .query_row(
            params![
                download.url().as_str(),
                download.file_name(),
                download.bundle(),
                source_id,
                download.expected_sha256(),
                download.max_bytes().map(|bytes| bytes as i64),
                now,
                bundle_file.map(|file| file.bundle_id),
                bundle_file.map(|file| file.relative_path),
                bundle_file
                    .and_then(|file| file.size)
                    .map(|size| size as i64),
            ],
            |row| row.get(0),
        )?;
    let mut payload = serde_json::json!({ "download_id": download_id });
    if let Some(git_sha1) = bundle_file.and_then(|file| file.git_sha1) {
        payload["git_blob_sha1"] = serde_json::Value::from(git_sha1);
    }
    let job = NewJob::new(DOWNLOAD_JOB_KIND, payload);
    let payload = job.payload.to_string();
    let enqueued = jobs::insert_job(transaction, &job, &payload, max_attempts, now)?;
    transaction
        .prepare_cached("UPDATE downloads SET job_id = ?2 WHERE id = ?1")?
        .execute(params![download_id, enqueued.id])?;
    Ok(CreatedDownload {
        download_id,
        job_id: enqueued.id,
    })
}

pub(super) fn read_download(
    connection: &rusqlite::Connection,
    id: i64,
) -> Result<Download, DownloadError> {
    connection
        .prepare_cached(&format!(
            "SELECT {DOWNLOAD_COLUMNS} FROM downloads WHERE id = ?1"
        ))?
        .query_row([id], download_from_row)
        .optional()?
        .ok_or(DownloadError::NotFound(id))
}

fn download_from_row(row: &Row<'_>) -> rusqlite::Result<Download> {
    let optional_size = |index: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(index)?.map(|value| value as u64))
    };
    Ok(Download {
        id: row.get(0)?,
        url: row.get(1)?,
        file_name: row.get(2)?,
        bundle: row.get(3)?,
        source_id: row.get(4)?,
        state: parse_state_column(&row.get::<_, String>(5)?)?,
        bytes_done: row.get::<_, i64>(6)? as u64,
        bytes_total: optional_size(7)?,
        rate_bytes_per_second: row.get(8)?,
        expected_sha256: row.get(9)?,
        size_limit: optional_size(10)?,
        part_path: row.get(11)?,
        final_path: row.get(12)?,
        etag: row.get(13)?,
        last_modified: row.get(14)?,
        error: row.get(15)?,
        job_id: row.get(16)?,
        created_at_ms: row.get(17)?,
        updated_at_ms: row.get(18)?,
        bundle_id: row.get(19)?,
        relative_path: row.get(20)?,
    })
}

fn parse_state_column(text: &str) -> rusqlite::Result<DownloadState> {
    text.parse().map_err(|error: DownloadError| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, error.into())
    })
}

#[cfg(test)]
mod tests {
    use super::super::Durability;
    use super::super::tests::open_temp;
    use super::*;
    use crate::store::{Claimant, LeaseHolder};

    const WORKER: &str = "test-scraper";
    const LEASE: Duration = Duration::from_secs(30);

    fn claim_one(store: &mut Store) -> jobs::ClaimedJob {
        let mut claimed = store
            .claim_jobs(&WORKER.into(), &[DOWNLOAD_JOB_KIND], 1, LEASE)
            .unwrap();
        assert_eq!(claimed.len(), 1, "one download job claimable");
        claimed.remove(0)
    }

    fn progress(bytes_done: u64) -> DownloadProgress {
        DownloadProgress {
            bytes_done,
            bytes_total: Some(100),
            rate_bytes_per_second: 10.0,
            etag: Some("\"v1\"".into()),
            last_modified: None,
        }
    }

    fn valid(download: NewDownload) -> ValidDownload {
        download.validate().expect("a valid download")
    }

    fn is_invalid(result: Result<impl fmt::Debug, DownloadError>) -> bool {
        matches!(result, Err(DownloadError::InvalidArgument(_)))
    }

    #[test]
    fn a_download_is_a_row_and_a_job_created_together() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let mut new = NewDownload::new("https://example.org/files/model%20v2.bin?x=1");
        new.expected_sha256 = Some("AB".repeat(32));
        new.max_bytes = Some(1000);
        new.bundle = Some("model-x".into());
        new.max_attempts = Some(3);
        let created = store.create_download(&valid(new)).unwrap();
        let download = store.get_download(created.download_id).unwrap();
        assert_eq!(download.state, DownloadState::Queued);
        assert_eq!(download.file_name, "model v2.bin");
        assert_eq!(download.expected_sha256, Some("ab".repeat(32)));
        assert_eq!(download.size_limit, Some(1000));
        assert_eq!(download.bundle.as_deref(), Some("model-x"));
        assert_eq!(download.job_id, Some(created.job_id));
        let job = store.get_job(created.job_id).unwrap();
        assert_eq!(job.kind, DOWNLOAD_JOB_KIND);
        assert_eq!(job.payload["download_id"], created.download_id);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.state, JobState::Queued);
    }

    #[test]
    fn bad_submissions_are_refused_and_change_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let with = |change: &dyn Fn(&mut NewDownload)| {
            let mut new = NewDownload::new("https://example.org/a.bin");
            change(&mut new);
            new
        };
        let cases = [
            NewDownload::new(""),
            NewDownload::new("ftp://example.org/a.bin"),
            NewDownload::new("file:///etc/passwd"),
            NewDownload::new("not a url"),
            NewDownload::new("garbage"),
            NewDownload::new("https://"),
            NewDownload::new("http://user:secret@example.org/a"),
            NewDownload::new("https://example.org/a b"),
            NewDownload::new(format!("https://example.org/{}", "a".repeat(5000))),
            with(&|new| new.file_name = Some("a/b".into())),
            with(&|new| new.file_name = Some("..".into())),
            with(&|new| new.file_name = Some("x..y".into())),
            with(&|new| new.file_name = Some(".hidden".into())),
            with(&|new| new.file_name = Some("x.part".into())),
            with(&|new| new.file_name = Some(String::new())),
            with(&|new| new.file_name = Some("a\nb".into())),
            with(&|new| new.file_name = Some("n".repeat(256))),
            with(&|new| new.bundle = Some("../up".into())),
            with(&|new| new.expected_sha256 = Some("abc".into())),
            with(&|new| new.expected_sha256 = Some("g".repeat(64))),
            with(&|new| new.max_bytes = Some(0)),
            with(&|new| new.max_bytes = Some(u64::MAX)),
            with(&|new| new.max_attempts = Some(0)),
            with(&|new| new.source = Some("not-configured".into())),
        ];
        for case in cases {
            // Refused by the policy, or (an unknown source) by the store.
            let result = case
                .validate()
                .map_err(|error| error.to_string())
                .and_then(|valid| {
                    store.create_download(&valid).map_err(|error| match error {
                        DownloadError::InvalidArgument(message) => message,
                        other => panic!("{case:?} gave {other:?}"),
                    })
                });
            assert!(result.is_err(), "{case:?} gave {result:?}");
        }
        let counts = store.download_counts().unwrap();
        assert!(counts.values().all(|count| *count == 0), "{counts:?}");
        assert!(
            store
                .job_counts()
                .unwrap()
                .values()
                .all(|count| *count == 0)
        );
        let message = NewDownload::new("ftp://example.org/a")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(message.contains("only http and https"), "{message}");
    }

    #[test]
    fn an_attempt_saves_progress_and_succeeds_in_one_transaction_with_its_job() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/a.bin")))
            .unwrap();
        let claimed = claim_one(&mut store);
        assert_eq!(claimed.id, created.job_id);
        assert_eq!(
            store.get_download(created.download_id).unwrap().state,
            DownloadState::Running
        );
        let id = created.download_id;
        let token = &claimed.lease_token;
        store
            .start_download_attempt(id, claimed.id, token, "/staging/1.part")
            .unwrap();
        let heartbeat = store
            .record_download_progress(id, claimed.id, token, &progress(40), LEASE)
            .unwrap();
        assert!(!heartbeat.cancel_requested);
        let download = store.get_download(id).unwrap();
        assert_eq!(download.bytes_done, 40);
        assert_eq!(download.bytes_total, Some(100));
        assert_eq!(download.etag.as_deref(), Some("\"v1\""));
        assert_eq!(download.part_path.as_deref(), Some("/staging/1.part"));
        let job = store.get_job(claimed.id).unwrap();
        assert_eq!(job.progress, Some(0.4));

        let (state, job_state) = store
            .finish_download(
                id,
                claimed.id,
                token,
                &DownloadOutcome::Succeeded {
                    final_path: "/inbox/a.bin".into(),
                    bytes: 100,
                    sha256: "0".repeat(64),
                },
            )
            .unwrap();
        assert_eq!(
            (state, job_state),
            (DownloadState::Succeeded, JobState::Succeeded)
        );
        let download = store.get_download(id).unwrap();
        assert_eq!(download.final_path.as_deref(), Some("/inbox/a.bin"));
        assert_eq!(download.part_path, None);
        assert_eq!(download.bytes_done, 100);
        assert_eq!(download.rate_bytes_per_second, None);
        let job = store.get_job(claimed.id).unwrap();
        assert_eq!(job.result.unwrap()["path"], "/inbox/a.bin");
    }

    #[test]
    fn failures_follow_the_job_retryable_to_queued_permanent_to_failed() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let mut new = NewDownload::new("https://example.org/a.bin");
        new.max_attempts = Some(2);
        let created = store.create_download(&valid(new)).unwrap();
        let id = created.download_id;

        let claimed = claim_one(&mut store);
        let outcome = DownloadOutcome::Failed {
            error: "HTTP 503 Service Unavailable".into(),
            retryable: true,
        };
        let states = store
            .finish_download(id, claimed.id, &claimed.lease_token, &outcome)
            .unwrap();
        assert_eq!(states, (DownloadState::Queued, JobState::Retrying));
        let download = store.get_download(id).unwrap();
        assert_eq!(
            download.error.as_deref(),
            Some("HTTP 503 Service Unavailable")
        );

        // The retry is due after the test policy's backoff (at most 100 ms).
        let mut claimed = Vec::new();
        for _ in 0..200 {
            claimed = store
                .claim_jobs(&WORKER.into(), &[DOWNLOAD_JOB_KIND], 1, LEASE)
                .unwrap();
            if !claimed.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let claimed = claimed.pop().expect("the retry became claimable");
        let states = store
            .finish_download(id, claimed.id, &claimed.lease_token, &outcome)
            .unwrap();
        assert_eq!(states, (DownloadState::Failed, JobState::Dead));

        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/b.bin")))
            .unwrap();
        let claimed = claim_one(&mut store);
        let states = store
            .finish_download(
                created.download_id,
                claimed.id,
                &claimed.lease_token,
                &DownloadOutcome::Failed {
                    error: "HTTP 404 Not Found".into(),
                    retryable: false,
                },
            )
            .unwrap();
        assert_eq!(states, (DownloadState::Failed, JobState::Failed));
    }

    #[test]
    fn cancel_stops_a_queued_download_at_once_and_flags_a_running_one() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let queued = store
            .create_download(&valid(NewDownload::new("https://example.org/q.bin")))
            .unwrap();
        let cancelled = store.cancel_download(queued.download_id).unwrap();
        assert_eq!(cancelled.state, DownloadState::Cancelled);
        assert_eq!(
            store.get_job(queued.job_id).unwrap().state,
            JobState::Cancelled
        );
        assert!(matches!(
            store.cancel_download(queued.download_id),
            Err(DownloadError::InvalidState { .. })
        ));

        let running = store
            .create_download(&valid(NewDownload::new("https://example.org/r.bin")))
            .unwrap();
        let claimed = claim_one(&mut store);
        let id = running.download_id;
        assert_eq!(
            store.cancel_download(id).unwrap().state,
            DownloadState::Running
        );
        let heartbeat = store
            .record_download_progress(id, claimed.id, &claimed.lease_token, &progress(5), LEASE)
            .unwrap();
        assert!(heartbeat.cancel_requested);
        let states = store
            .finish_download(
                id,
                claimed.id,
                &claimed.lease_token,
                &DownloadOutcome::Cancelled,
            )
            .unwrap();
        assert_eq!(states, (DownloadState::Cancelled, JobState::Cancelled));
        assert_eq!(store.get_download(id).unwrap().bytes_done, 0);
        assert!(matches!(
            store.cancel_download(999),
            Err(DownloadError::NotFound(999))
        ));
    }

    #[test]
    fn only_finished_downloads_can_be_deleted() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/a.bin")))
            .unwrap();
        assert!(matches!(
            store.delete_download(created.download_id),
            Err(DownloadError::InvalidState { .. })
        ));
        store.cancel_download(created.download_id).unwrap();
        let deleted = store.delete_download(created.download_id).unwrap();
        assert_eq!(deleted.id, created.download_id);
        assert!(matches!(
            store.get_download(created.download_id),
            Err(DownloadError::NotFound(_))
        ));
        assert!(matches!(
            store.delete_download(created.download_id),
            Err(DownloadError::NotFound(_))
        ));
        // The job's history stays.
        assert_eq!(
            store.get_job(created.job_id).unwrap().state,
            JobState::Cancelled
        );
    }

    #[test]
    fn the_download_follows_its_job_when_the_job_is_cancelled_or_retried_directly() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/a.bin")))
            .unwrap();
        store.cancel_job(created.job_id).unwrap();
        let download = store.get_download(created.download_id).unwrap();
        assert_eq!(download.state, DownloadState::Cancelled);
        assert_eq!(download.error.as_deref(), Some("cancelled on request"));
        store.retry_job(created.job_id).unwrap();
        assert_eq!(
            store.get_download(created.download_id).unwrap().state,
            DownloadState::Queued
        );
    }

    #[test]
    fn a_lost_lease_changes_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/a.bin")))
            .unwrap();
        let claimed = claim_one(&mut store);
        let stale = LeaseToken::from("0".repeat(32));
        let id = created.download_id;
        assert!(matches!(
            store.start_download_attempt(id, claimed.id, &stale, "/x.part"),
            Err(DownloadError::Job(JobError::LeaseLost { .. }))
        ));
        assert!(matches!(
            store.record_download_progress(id, claimed.id, &stale, &progress(9), LEASE),
            Err(DownloadError::Job(JobError::LeaseLost { .. }))
        ));
        assert!(matches!(
            store.finish_download(id, claimed.id, &stale, &DownloadOutcome::Cancelled),
            Err(DownloadError::Job(JobError::LeaseLost { .. }))
        ));
        let download = store.get_download(id).unwrap();
        assert_eq!(download.bytes_done, 0);
        assert_eq!(download.state, DownloadState::Running);
    }

    #[test]
    fn released_downloads_keep_their_progress_and_orphans_become_claimable() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&valid(NewDownload::new("https://example.org/a.bin")))
            .unwrap();
        let claimed = claim_one(&mut store);
        let id = created.download_id;
        let states = store
            .finish_download(
                id,
                claimed.id,
                &claimed.lease_token,
                &DownloadOutcome::Released { bytes_done: 77 },
            )
            .unwrap();
        assert_eq!(states, (DownloadState::Queued, JobState::Queued));
        assert_eq!(store.get_download(id).unwrap().bytes_done, 77);

        let claimed = claim_one(&mut store);
        assert_eq!(claimed.attempt, 1, "a release gives the attempt back");
        // A scraper that starts takes over what an earlier process of its name held.
        let successor = Claimant::named(WORKER).with_holder(LeaseHolder::new(":1.9@bus").unwrap());
        assert!(
            store
                .rescue_leases_of_predecessors(&Claimant::named("someone-else"))
                .unwrap()
                .is_empty()
        );
        let rescued = store.rescue_leases_of_predecessors(&successor).unwrap();
        assert_eq!(
            rescued.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![claimed.id]
        );
        let orphan = store.get_download(id).unwrap();
        assert_eq!(
            (orphan.state, orphan.bytes_done),
            (DownloadState::Queued, 77)
        );
        let again = store
            .claim_jobs(&successor, &[DOWNLOAD_JOB_KIND], 1, LEASE)
            .unwrap()
            .remove(0);
        assert_eq!(again.id, claimed.id);
        assert_eq!(again.attempt, 2);
    }

    #[test]
    fn downloads_list_newest_first_by_state_a_page_at_a_time() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let ids: Vec<i64> = (0..5)
            .map(|index| {
                store
                    .create_download(&valid(NewDownload::new(format!(
                        "https://example.org/{index}"
                    ))))
                    .unwrap()
                    .download_id
            })
            .collect();
        store.cancel_download(ids[1]).unwrap();
        let all = DownloadFilter::default();
        let first = store
            .list_downloads(
                &all,
                PageRequest {
                    before_id: None,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(
            first.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![ids[4], ids[3]]
        );
        let second = store
            .list_downloads(
                &all,
                PageRequest {
                    before_id: first.next_cursor,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(
            second.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![ids[2], ids[1], ids[0]]
        );
        assert_eq!(second.next_cursor, None);
        let cancelled = store
            .list_downloads(
                &DownloadFilter {
                    states: vec![DownloadState::Cancelled],
                },
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(cancelled.items.len(), 1);
        assert_eq!(cancelled.items[0].id, ids[1]);
        assert!(is_invalid(store.list_downloads(
            &all,
            PageRequest {
                before_id: None,
                limit: 0
            }
        )));
        let counts = store.download_counts().unwrap();
        assert_eq!(counts[&DownloadState::Queued], 4);
        assert_eq!(counts[&DownloadState::Cancelled], 1);
    }
}
