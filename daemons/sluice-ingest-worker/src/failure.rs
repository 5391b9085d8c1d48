//! How a job body ends when it does not succeed, and what the queue makes of each case.

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
