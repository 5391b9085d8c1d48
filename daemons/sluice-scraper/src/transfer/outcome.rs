//! How a download attempt ends: the failure values for files, HTTP statuses and redirects,
//! recording the outcome (or a panic) against the download and its job, and the report the
//! main loop gets.

use super::*;
use sluice_core::bus::path_to_bytestring;
use std::path::Path;

/// A refused partial file fails the download for good (and the planted entry is removed,
/// which unlinks a symlink itself, never its target); an IO error is worth another attempt.
pub(super) fn file_failure(error: inbox::FileError) -> Failure {
    match error {
        inbox::FileError::Refused(reason) => Failure::permanent(reason),
        inbox::FileError::Io(reason) => Failure::retryable(reason),
        inbox::FileError::NoSpace(reason) => Failure::out_of_space(reason),
    }
}

/// 408, 425, 429 and 5xx are worth another attempt; any other status is the answer.
pub(super) fn status_failure(status: StatusCode, url: &Url) -> Failure {
    let error = format!("HTTP {status} from {url}");
    let retryable = status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429);
    if retryable {
        Failure::retryable(error)
    } else {
        Failure::permanent(error)
    }
}

/// A redirect that reached us instead of being followed: the client leaves redirects to
/// schemes it cannot fetch (file:, ftp:) to the caller. Final either way.
pub(super) fn unfollowed_redirect(
    status: StatusCode,
    url: &Url,
    location: Option<String>,
) -> Failure {
    let target = location
        .as_deref()
        .and_then(|location| url.join(location).ok());
    match target {
        Some(target) if !matches!(target.scheme(), "http" | "https") => Failure::permanent(
            guard::Refused::RedirectScheme {
                url: target.to_string(),
            }
            .to_string(),
        ),
        _ => Failure::permanent(format!(
            "HTTP {status} from {url}: redirect to {} not followed",
            location.unwrap_or_else(|| "nowhere (no Location header)".to_owned())
        )),
    }
}

/// `bytes 100-199/500` → (100, Some(500)); `bytes 100-199/*` → (100, None).
pub(super) fn parse_content_range(text: &str) -> Option<(u64, Option<u64>)> {
    let rest = text.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start, total))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn discard_part(part: &Path) {
    if let Err(error) = inbox::remove_part(part) {
        tracing::warn!(
            error = %error,
            path = %part.display(),
            "cannot remove the partial file {}: {error}",
            part.display()
        );
    }
}

pub(super) async fn record_outcome(
    context: &TransferContext,
    job: &ClaimedJob,
    download_id: i64,
    outcome: DownloadOutcome,
) -> TaskReport {
    let job_id = job.id;
    let token = job.lease_token.clone();
    let recorded_outcome = outcome.clone();
    let result = context
        .store
        .call(move |store| store.finish_download(download_id, job_id, &token, &recorded_outcome))
        .await;
    let (download_state, job_state) = match result {
        Ok(states) => states,
        Err(error) => {
            tracing::error!(
                error = %error,
                "download {download_id} (job {job_id}): cannot record how the attempt ended: \
                 {error}; the job is tried again when its lease expires"
            );
            return report(
                job_id,
                Some(download_id),
                Ended::NotRecorded {
                    error: error.to_string(),
                },
            );
        }
    };
    if let Err(error) = context
        .service
        .job_finished(job_id as u64, job_state.as_str())
        .await
    {
        tracing::warn!(error = %error, "cannot emit JobFinished for job {job_id}: {error}");
    }
    let path = match &outcome {
        DownloadOutcome::Succeeded { final_path, .. } => final_path.clone(),
        _ => String::new(),
    };
    if download_state.is_finished()
        && let Err(error) = context
            .service
            .download_finished(
                download_id as u64,
                download_state.as_str(),
                &path_to_bytestring(Path::new(&path)),
            )
            .await
    {
        tracing::warn!(
            error = %error,
            "cannot emit DownloadFinished for download {download_id}: {error}"
        );
    }
    let ended = match (outcome, download_state, job_state) {
        (DownloadOutcome::Succeeded { final_path, .. }, _, _) => {
            Ended::Succeeded { path: final_path }
        }
        (DownloadOutcome::Failed { error, .. }, _, JobState::Retrying) => Ended::Retrying { error },
        (DownloadOutcome::Failed { error, .. }, _, _) => Ended::Failed { error },
        (DownloadOutcome::Postponed { error }, _, _) => Ended::Postponed { error },
        (DownloadOutcome::Cancelled, _, _) => Ended::Cancelled,
        (DownloadOutcome::Released { .. }, _, _) => Ended::Released,
    };
    debug_assert!(download_state != DownloadState::Running);
    report(job_id, Some(download_id), ended)
}

/// A download task that panicked (a bug): fail its download (or, without one, its job) for
/// good with "download task panicked: …", so the job does not hang as running and the loop
/// frees its slot. Not retried: the same input would most likely panic again.
pub async fn record_panic(
    context: &TransferContext,
    job: &ClaimedJob,
    download_id: Option<i64>,
    message: &str,
) -> TaskReport {
    let error = format!("download task panicked: {message}");
    tracing::error!(job_id = job.id, download_id, error = %error, "job {}: {error}", job.id);
    match download_id {
        Some(download_id) => {
            let outcome = DownloadOutcome::Failed {
                error,
                retryable: false,
            };
            record_outcome(context, job, download_id, outcome).await
        }
        None => fail_job_without_download(context, job, error).await,
    }
}

/// A job whose download cannot be found or does not match: fail it for good, with the reason.
pub(super) async fn fail_job_without_download(
    context: &TransferContext,
    job: &ClaimedJob,
    error: String,
) -> TaskReport {
    tracing::error!(
        job_id = job.id,
        error = %error,
        "download job {} failed without its download: {error}",
        job.id
    );
    let job_id = job.id;
    let token = job.lease_token.clone();
    let message = error.clone();
    let result = context
        .store
        .call(move |store| store.fail_job(job_id, &token, &message, false))
        .await;
    match result {
        Ok(state) => {
            let _ = context
                .service
                .job_finished(job_id as u64, state.as_str())
                .await;
            report(job_id, None, Ended::Failed { error })
        }
        Err(record_error) => report(
            job_id,
            None,
            Ended::NotRecorded {
                error: record_error.to_string(),
            },
        ),
    }
}

pub(super) fn report(job_id: i64, download_id: Option<i64>, ended: Ended) -> TaskReport {
    TaskReport {
        download_id,
        job_id,
        ended,
    }
}
