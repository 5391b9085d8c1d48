//! The job queue's plain types: limits, errors, states, what is submitted and what is read
//! back. The queries that move jobs between states are in the parent module.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rand::Rng;

use crate::store::{StoreError, duration_ms};

/// Largest accepted job payload, as serialized JSON.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
pub const MAX_KIND_LENGTH: usize = 64;
pub const MAX_UNIQUE_KEY_LENGTH: usize = 1024;
pub const MAX_MESSAGE_LENGTH: usize = 4096;
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = crate::policy::MAX_ATTEMPTS_RANGE;
pub const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("job {0} not found")]
    NotFound(i64),
    #[error("job {id}: lease lost (the job was rescued, cancelled or finished by someone else)")]
    LeaseLost { id: i64 },
    #[error("job {id} is {state}; cannot {action} it")]
    InvalidState {
        id: i64,
        state: JobState,
        action: &'static str,
    },
    /// The job's kind already has as many pending jobs as its limit allows; nothing was added.
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A submission refused because its queue is at its limit: `pending` jobs of `kind` are
/// queued, retrying or running, and `limit` is the most allowed (`[scraper] max_pending` for
/// downloads, `[ingest] max_pending` for ingest). Counting stops at the limit, so `pending`
/// is never more than it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {kind} queue is full: {pending} {kind} jobs are queued, retrying or running, and the \
     limit is {limit}; nothing was added, try again once some have finished"
)]
pub struct QueueFull {
    pub kind: String,
    pub pending: u64,
    pub limit: u32,
}

impl JobError {
    /// Whether the store refused the change only because the database's disk is full.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, JobError::Store(error) if error.is_out_of_space())
    }
}

impl From<rusqlite::Error> for JobError {
    fn from(error: rusqlite::Error) -> Self {
        JobError::Store(StoreError::from(error))
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// A job in a terminal state never changes again unless a person retries it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Dead
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = JobError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                JobError::InvalidArgument(format!(
                    "unknown job state {text:?} (expected one of queued, running, retrying, succeeded, failed, cancelled, dead)"
                ))
            })
    }
}

/// A job to enqueue. `NewJob::new` gives priority 0, run now, no unique key, and the store's
/// configured attempts (`[jobs] max_attempts`, passed in [`crate::store::StoreOptions`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    /// Higher runs first; -100 ..= 100.
    pub priority: i32,
    /// Do not run before this time (ms since the epoch); `None` = now.
    pub run_at_ms: Option<i64>,
    /// Attempts before the job is `dead`; `None` = the store's `max_attempts` option.
    pub max_attempts: Option<u32>,
    /// Idempotent submit: enqueuing a second job with the same key returns the first one.
    pub unique_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: Value) -> NewJob {
        NewJob {
            kind: kind.into(),
            payload,
            priority: 0,
            run_at_ms: None,
            max_attempts: None,
            unique_key: None,
        }
    }

    pub fn with_unique_key(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }

    pub fn with_priority(mut self, priority: i32) -> NewJob {
        self.priority = priority;
        self
    }

    pub fn with_max_attempts(mut self, max_attempts: u32) -> NewJob {
        self.max_attempts = Some(max_attempts);
        self
    }

    pub(in crate::store) fn validate(&self) -> Result<String, JobError> {
        validate_kind(&self.kind)?;
        if !self.payload.is_object() {
            return Err(JobError::InvalidArgument(format!(
                "payload must be a JSON object, got {}",
                json_type_name(&self.payload)
            )));
        }
        let payload = self.payload.to_string();
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(JobError::InvalidArgument(format!(
                "payload is {} bytes, the limit is {MAX_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(JobError::InvalidArgument(format!(
                "priority {} is out of range -100..=100",
                self.priority
            )));
        }
        if let Some(max_attempts) = self.max_attempts
            && !MAX_ATTEMPTS_RANGE.contains(&max_attempts)
        {
            return Err(JobError::InvalidArgument(format!(
                "max_attempts {max_attempts} is out of range 1..=1000"
            )));
        }
        if let Some(key) = &self.unique_key
            && (key.is_empty() || key.len() > MAX_UNIQUE_KEY_LENGTH)
        {
            return Err(JobError::InvalidArgument(format!(
                "unique key must be 1..={MAX_UNIQUE_KEY_LENGTH} bytes, got {}",
                key.len()
            )));
        }
        Ok(payload)
    }
}

/// What enqueue did: `created = false` means a job with the same unique key already existed and
/// `id` is that job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: i64,
    pub created: bool,
}

/// Proof of a claim. Only the holder of the current token may change a running job.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(String);

impl LeaseToken {
    pub(super) fn generate() -> LeaseToken {
        let bits: u128 = rand::rng().random();
        LeaseToken(format!("{bits:032x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for LeaseToken {
    fn from(text: String) -> Self {
        LeaseToken(text)
    }
}

impl fmt::Debug for LeaseToken {
    // A token is a capability: logs show only its start.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "LeaseToken({}…)", &self.0[..self.0.len().min(8)])
    }
}

/// Who claims a job: the worker's name, which people read and the job's history keeps
/// (`sluice-ingest-worker@1`), and the one process behind that name when it is on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub worker: String,
    pub holder: Option<LeaseHolder>,
}

impl Claimant {
    /// A claimant known only by its name (tests, benchmarks, a process not on a bus): its
    /// leases end only when they expire or when a successor of the same name starts.
    pub fn named(worker: impl Into<String>) -> Claimant {
        Claimant {
            worker: worker.into(),
            holder: None,
        }
    }

    pub fn with_holder(mut self, holder: LeaseHolder) -> Claimant {
        self.holder = Some(holder);
        self
    }
}

impl From<&str> for Claimant {
    fn from(worker: &str) -> Claimant {
        Claimant::named(worker)
    }
}

/// The process that holds a lease, as its bus connection (`:1.42@<bus GUID>`): a worker's name
/// is taken again by the process systemd restarts, a connection never is. The store only
/// compares it; the bus module makes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseHolder(String);

impl LeaseHolder {
    pub fn new(identity: impl Into<String>) -> Result<LeaseHolder, JobError> {
        let identity = identity.into();
        if identity.is_empty() || identity.len() > 256 {
            return Err(JobError::InvalidArgument(format!(
                "lease holder must be 1..=256 bytes, got {}",
                identity.len()
            )));
        }
        Ok(LeaseHolder(identity))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A running job whose lease was ended because its holder is gone, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescuedJob {
    pub id: i64,
    pub kind: String,
    /// The worker that held it.
    pub worker: String,
    /// The attempt that was cut short (it stays counted).
    pub attempt: u32,
    /// `retrying` (claimable at once), `dead` after the last attempt, or `cancelled` when a
    /// cancel was requested.
    pub state: JobState,
}

impl RescuedJob {
    /// Where the job went, for a log line: "queued again", "dead", "cancelled".
    pub fn outcome(&self) -> &'static str {
        match self.state {
            JobState::Dead => "dead: that was its last attempt",
            JobState::Cancelled => "cancelled, as was requested",
            _ => "queued again",
        }
    }
}

/// A job handed to a worker by `claim_jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_token: LeaseToken,
    pub lease_expires_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Someone asked to cancel this job: the worker should stop and call `finish_cancelled`.
    pub cancel_requested: bool,
    pub lease_expires_at_ms: i64,
}

/// How a failed attempt is retried: exponential backoff from `base`, capped at `max`, with
/// jitter (each delay is drawn from the upper half of its step, so a herd of failures spreads
/// out without ever retrying sooner than half the nominal delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let nominal = self.base.saturating_mul(1 << exponent).min(self.max);
        let nominal_ms = duration_ms(nominal).max(1) as u64;
        let jittered = rand::rng().random_range(nominal_ms / 2..=nominal_ms);
        Duration::from_millis(jittered)
    }
}

/// What a worker reports at the end of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        result: Value,
    },
    /// `retryable` failures go to `retrying` (or `dead` after the last attempt); others to
    /// `failed` at once.
    Failed {
        error: String,
        retryable: bool,
    },
    /// The worker stopped because cancellation was requested.
    Cancelled,
    /// The worker gives the job back without using up the attempt (graceful shutdown).
    Released,
    /// The attempt could not do its work because the host lacks room (a disk it writes to is
    /// full): the job waits in `retrying` with the error, like a retry, but the attempt is
    /// given back, so a disk that stays full for hours never makes a job `dead`. The wait
    /// grows with the job's consecutive postponements, as a retry's grows with its attempts.
    Postponed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: i64,
    pub lease_token: LeaseToken,
    pub outcome: Outcome,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    pub priority: i32,
    pub run_at_ms: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub cancel_requested: bool,
    pub progress: Option<f64>,
    pub progress_message: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub unique_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobTransition {
    pub at_ms: i64,
    pub from_state: Option<JobState>,
    pub to_state: JobState,
    pub attempt: u32,
    pub worker: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub kind: Option<String>,
}

/// Newest first; `before_id` is the cursor returned as `next_cursor` by the previous page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageRequest {
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<i64>,
}

pub(super) fn validate_kind(kind: &str) -> Result<(), JobError> {
    let well_formed = !kind.is_empty()
        && kind.len() <= MAX_KIND_LENGTH
        && kind
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'));
    if well_formed {
        Ok(())
    } else {
        Err(JobError::InvalidArgument(format!(
            "job kind {kind:?} must be 1..={MAX_KIND_LENGTH} characters of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
