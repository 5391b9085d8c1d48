//! How a job body ends when it does not succeed, and what the queue makes of each case.

use std::io;

/// Why a job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestFailure {
    /// Trying again cannot help (a symlink, a bad payload, a file too large): `failed` now.
    #[error("{0}")]
    Permanent(String),
    /// May work next time (a read error, a busy database): `retrying` with backoff, `dead`
    /// after the last attempt.
    #[error("{0}")]
    Retryable(String),
    /// A disk the job writes to (the library, or the database's) is full: the job waits in
    /// `retrying` without using an attempt and runs again once there is space, however long
    /// that takes.
    #[error("{0}")]
    NoSpace(String),
    /// The attempt ran past `[ingest] job_timeout`; its processes were killed. Retried like
    /// [`IngestFailure::Retryable`].
    #[error("{}", sluice_core::ingest::timed_out_after(*.0, "[ingest] job_timeout"))]
    TimedOut(std::time::Duration),
    /// Cancellation was requested (heartbeat or D-Bus): the job becomes `cancelled`.
    #[error("cancelled on request")]
    Cancelled,
    /// The worker is stopping or lost the lease: the job is released (attempt not used).
    #[error("stopped before the job finished")]
    Stopped,
    /// The file is no longer the version the job was queued for; the job queued for the new
    /// version does the work, so this one ends successfully without touching anything.
    #[error("superseded: {0}")]
    Superseded(String),
}

impl IngestFailure {
    /// Whether the queue tries the job again (up to its attempts).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IngestFailure::Retryable(_) | IngestFailure::TimedOut(_)
        )
    }

    /// An IO error on a file the worker writes: the disk being full is waited out, anything
    /// else is worth another attempt.
    pub fn writing(message: String, error: &io::Error) -> IngestFailure {
        if sluice_core::beneath::is_out_of_space(error) {
            IngestFailure::NoSpace(message)
        } else {
            IngestFailure::Retryable(message)
        }
    }
}
