//! The durable job queue: enqueue, claim with a lease, heartbeat, progress, complete, fail with
//! backoff, cancel, rescue of expired leases and of the leases of a gone process, and reading
//! jobs and their history.
//!
//! The rules this module keeps:
//! - **A claim is one statement** (`UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …`), so
//!   two workers can never claim the same job.
//! - **Every state change after a claim is a compare-and-set on the lease token**: the UPDATE
//!   names the job id, `state = 'running'` and the token, and a worker whose lease was lost
//!   (expired and rescued, or cancelled) changes nothing and gets `JobError::LeaseLost`.
//! - **An attempt is counted when it is claimed**; releasing a job on shutdown gives the
//!   attempt back, an expired lease keeps it (the worker may have crashed because of the job),
//!   and so does postponing it because a disk is full (the job is not at fault, and a disk may
//!   stay full for longer than all its attempts would last).
//! - **A lease ends before it expires only when its holder is known to be gone**: its bus
//!   connection closed (`rescue_leases_of`), or a new process of its worker name owns the
//!   exclusive bus name (`rescue_leases_of_predecessors`). Both match on the holder (the
//!   claiming process's connection), never on the name alone, so a successor's leases stay.
//! - Transitions are written to `job_history` by a trigger (see `migrations.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use super::{Store, StoreError, duration_ms, now_ms};

// The plain types (limits, errors, states, inputs and rows) live in `types`; this module keeps
// the queries. Re-exported so every path stays `store::jobs::Name`.
mod activity;
mod limits;
pub(crate) mod log;
mod types;

pub use activity::{ActivityCursor, ActivityTransition, JobActivity};
pub(super) use limits::{require_room, room_for};
pub use log::{JobLogEntry, JobLogEvent, MAX_LOG_PAGE, MAX_STEP_BYTES};
pub use types::*;

const JOB_COLUMNS: &str = "id, kind, payload, state, priority, run_at, attempts, max_attempts, \
     lease_owner, lease_expires_at, cancel_requested, progress, progress_message, result, error, \
     unique_key, created_at, updated_at, started_at, finished_at";

impl Store {
    /// Adds one job (one transaction). With a unique key that already exists, returns the
    /// existing job's id and changes nothing.
    pub fn enqueue(&mut self, job: &NewJob) -> Result<Enqueued, JobError> {
        let payload = job.validate()?;
        let max_attempts = job.max_attempts.unwrap_or(self.options().max_attempts);
        self.write(|transaction| insert_job(transaction, job, &payload, max_attempts, now_ms()))
    }

    /// Adds many jobs in one transaction: all or none.
    pub fn enqueue_many(&mut self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, JobError> {
        let payloads = jobs
            .iter()
            .map(NewJob::validate)
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let default_max_attempts = self.options().max_attempts;
        self.write(|transaction| {
            jobs.iter()
                .zip(&payloads)
                .map(|(job, payload)| {
                    let max_attempts = job.max_attempts.unwrap_or(default_max_attempts);
                    insert_job(transaction, job, payload, max_attempts, now)
                })
                .collect()
        })
    }

    /// Claims up to `limit` runnable jobs of the given kinds for `worker`, in priority, then
    /// run-at, then id order, each with a lease of `lease`. Expired leases are rescued first in
    /// the same transaction, so a crashed worker's job is available to the very next claim.
    pub fn claim_jobs(
        &mut self,
        worker: &Claimant,
        kinds: &[&str],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, JobError> {
        self.complete_and_claim(&[], worker, kinds, limit, lease)
            .map(|(_, claimed)| claimed)
    }

    /// Records the outcomes of several attempts and claims the next jobs in one transaction:
    /// the group commit that lets a worker drain a queue at one sync per batch. Each completion
    /// succeeds or fails on its own (a lost lease fails only that one); the claim happens after.
    #[allow(clippy::type_complexity)]
    pub fn complete_and_claim(
        &mut self,
        completions: &[Completion],
        worker: &Claimant,
        kinds: &[&str],
        limit: usize,
        lease: Duration,
    ) -> Result<(Vec<Result<JobState, JobError>>, Vec<ClaimedJob>), JobError> {
        validate_worker(&worker.worker)?;
        for kind in kinds {
            validate_kind(kind)?;
        }
        for completion in completions {
            validate_outcome(&completion.outcome)?;
        }
        let lease_ms = validate_lease(lease)?;
        let kinds_json = serde_json::to_string(kinds).map_err(|error| {
            JobError::InvalidArgument(format!("cannot encode job kinds: {error}"))
        })?;
        if completions.is_empty()
            && (limit == 0 || kinds.is_empty() || !self.claim_may_find_work(&kinds_json)?)
        {
            // Nothing to write: an idle worker never takes the write lock.
            return Ok((Vec::new(), Vec::new()));
        }
        let retry_policy = self.options().retry;
        self.write(|transaction| {
            let now = now_ms();
            let results = completions
                .iter()
                .map(|completion| complete(transaction, completion, &retry_policy, now))
                .collect::<Result<Vec<_>, StoreError>>()?;
            if limit == 0 || kinds.is_empty() {
                return Ok((results, Vec::new()));
            }
            rescue_expired(transaction, now)?;
            let claimed = claim(transaction, worker, &kinds_json, limit, now, lease_ms)?;
            Ok((results, claimed))
        })
    }

    /// Records several outcomes in one transaction; each succeeds or fails on its own.
    pub fn complete_jobs(
        &mut self,
        completions: &[Completion],
    ) -> Result<Vec<Result<JobState, JobError>>, JobError> {
        for completion in completions {
            validate_outcome(&completion.outcome)?;
        }
        let retry_policy = self.options().retry;
        self.write(|transaction| {
            let now = now_ms();
            completions
                .iter()
                .map(|completion| complete(transaction, completion, &retry_policy, now))
                .collect::<Result<Vec<_>, StoreError>>()
                .map_err(JobError::from)
        })
    }

    /// Extends the lease of a running job; tells the worker if cancellation was requested.
    pub fn heartbeat(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        lease: Duration,
    ) -> Result<Heartbeat, JobError> {
        let lease_ms = validate_lease(lease)?;
        self.write(|transaction| {
            let now = now_ms();
            let row = transaction
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?3, updated_at = ?4
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                     RETURNING cancel_requested, lease_expires_at",
                )?
                .query_row(
                    params![id, lease_token.as_str(), now + lease_ms, now],
                    |row| {
                        Ok(Heartbeat {
                            cancel_requested: row.get(0)?,
                            lease_expires_at_ms: row.get(1)?,
                        })
                    },
                )
                .optional()?;
            row.ok_or_else(|| lease_lost_or_not_found(transaction, id))
        })
    }

    /// Records progress (a fraction in 0..=1 and a short message) of a running job, on the job
    /// and as an entry of its log.
    pub fn report_progress(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        fraction: f64,
        message: &str,
    ) -> Result<(), JobError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(JobError::InvalidArgument(format!(
                "progress must be a fraction in 0..=1, got {fraction}"
            )));
        }
        validate_message("progress message", message)?;
        self.write(|transaction| {
            let changed = transaction
                .prepare_cached(
                    "UPDATE jobs SET progress = ?3, progress_message = ?4, updated_at = ?5
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
                )?
                .execute(params![
                    id,
                    lease_token.as_str(),
                    fraction,
                    message,
                    now_ms()
                ])?;
            if changed == 1 {
                transaction
                    .prepare_cached(log::INSERT_PROGRESS_EVENT)?
                    .execute(params![
                        id,
                        lease_token.as_str(),
                        now_ms(),
                        fraction,
                        message
                    ])?;
                Ok(())
            } else {
                Err(lease_lost_or_not_found(transaction, id))
            }
        })
    }

    pub fn succeed_job(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        result: &Value,
    ) -> Result<(), JobError> {
        self.complete_one(
            id,
            lease_token,
            Outcome::Succeeded {
                result: result.clone(),
            },
        )
        .map(|_| ())
    }

    /// Records a failed attempt; returns the state the job went to (`retrying`, `dead` or
    /// `failed`).
    pub fn fail_job(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        error: &str,
        retryable: bool,
    ) -> Result<JobState, JobError> {
        self.complete_one(
            id,
            lease_token,
            Outcome::Failed {
                error: error.to_string(),
                retryable,
            },
        )
    }

    /// Gives a claimed job back (graceful shutdown): queued again at once, attempt not used.
    pub fn release_job(&mut self, id: i64, lease_token: &LeaseToken) -> Result<(), JobError> {
        self.complete_one(id, lease_token, Outcome::Released)
            .map(|_| ())
    }

    /// The worker acknowledges a requested cancellation.
    pub fn finish_cancelled(&mut self, id: i64, lease_token: &LeaseToken) -> Result<(), JobError> {
        self.complete_one(id, lease_token, Outcome::Cancelled)
            .map(|_| ())
    }

    /// Cancels a job: a queued or retrying job is cancelled at once; a running one is marked,
    /// and its worker learns it at its next heartbeat (or the rescue cancels it if the worker
    /// is gone). A finished job cannot be cancelled.
    pub fn cancel_job(&mut self, id: i64) -> Result<Job, JobError> {
        self.write(|transaction| cancel_in(transaction, id))
    }

    /// Puts a failed, dead or cancelled job back in the queue with a fresh set of attempts.
    pub fn retry_job(&mut self, id: i64) -> Result<Job, JobError> {
        self.write(|transaction| {
            let state = job_state(transaction, id)?;
            if !matches!(
                state,
                JobState::Failed | JobState::Dead | JobState::Cancelled
            ) {
                return Err(JobError::InvalidState {
                    id,
                    state,
                    action: "retry",
                });
            }
            let now = now_ms();
            transaction.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, postponements = 0, run_at = ?2,
                     cancel_requested = 0,
                     progress = NULL, progress_message = NULL, result = NULL, finished_at = NULL,
                     updated_at = ?2
                 WHERE id = ?1",
                params![id, now],
            )?;
            read_job(transaction, id)
        })
    }

    /// Turns every running job whose lease has expired back into `retrying` (or `dead` when it
    /// has used its last attempt, `cancelled` when cancellation was requested). Returns the
    /// rescued ids. `claim_jobs` does this too; daemons call it on a timer as well.
    pub fn rescue_expired_leases(&mut self) -> Result<Vec<i64>, JobError> {
        self.write(|transaction| Ok(rescue_expired(transaction, now_ms())?))
    }

    /// Ends at once every lease `holder` holds, as an expired lease would end (the attempt
    /// stays counted): for a caller that knows the holder's process is gone, because the bus
    /// said its connection closed. `reason` says how it is known and goes into each job's
    /// error. A successor of the same worker name is another holder, so its leases are never
    /// touched; a holder that is in fact still running loses its leases and every later write
    /// of it fails the lease-token check.
    pub fn rescue_leases_of(
        &mut self,
        holder: &LeaseHolder,
        reason: &str,
    ) -> Result<Vec<RescuedJob>, JobError> {
        validate_message("rescue reason", reason)?;
        self.write(|transaction| {
            Ok(end_leases(
                transaction,
                "lease_holder = ?3",
                params![now_ms(), reason, holder.as_str()],
            )?)
        })
    }

    /// Ends at once every lease held under `claimant`'s worker name by another process than
    /// `claimant`'s own (by any process, when it has no holder): for a worker that has just
    /// started and owns its exclusive bus name, so every earlier process of that name is gone
    /// or cut off from the bus. The attempts stay counted, as with an expired lease.
    pub fn rescue_leases_of_predecessors(
        &mut self,
        claimant: &Claimant,
    ) -> Result<Vec<RescuedJob>, JobError> {
        validate_worker(&claimant.worker)?;
        let reason = "a new process of the same name started, so the one that held the lease \
                      is gone";
        let holder = claimant.holder.as_ref().map(LeaseHolder::as_str);
        self.write(|transaction| {
            Ok(end_leases(
                transaction,
                "lease_owner = ?3 AND (?4 IS NULL OR lease_holder IS NOT ?4)",
                params![now_ms(), reason, claimant.worker, holder],
            )?)
        })
    }

    pub fn get_job(&self, id: i64) -> Result<Job, JobError> {
        read_job(self.connection(), id)
    }

    /// Jobs newest first, filtered by states and kind, a page at a time.
    pub fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<Job>, JobError> {
        if page.limit == 0 || page.limit > MAX_PAGE_SIZE {
            return Err(JobError::InvalidArgument(format!(
                "page size must be 1..={MAX_PAGE_SIZE}, got {}",
                page.limit
            )));
        }
        if let Some(kind) = &filter.kind {
            validate_kind(kind)?;
        }
        // One newest-first range per state named (index `jobs_by_state`, migration 9), each
        // read from the cursor for at most a page and a row, merged here: a page costs the
        // same however many jobs there are and however rare the state. Without states, the
        // table itself newest first from the cursor.
        //
        // No index holds the kind (one would cost every enqueue a page: see
        // `KIND_WINDOW`), so with a kind a page looks only at the ids of the window below the
        // cursor, and when that holds less than a page, says where to go on instead of
        // walking further: a rare kind no longer reads the whole table per request.
        let mut states: Vec<&str> = filter.states.iter().map(|state| state.as_str()).collect();
        states.sort_unstable();
        states.dedup();
        let window_end = match (&filter.kind, page.before_id) {
            (None, _) => None,
            (Some(_), Some(before_id)) => Some(before_id),
            (Some(_), None) => Some(
                self.connection()
                    .prepare_cached("SELECT max(id) FROM jobs")?
                    .query_row([], |row| row.get::<_, Option<i64>>(0))?
                    .map_or(0, |newest| newest + 1),
            ),
        };
        // The window is [window_start, window_end); at or below id 1 it reaches the oldest
        // job and needs no lower bound.
        let window_start = window_end
            .map(|end| end.saturating_sub(KIND_WINDOW))
            .filter(|start| *start > 1);
        let sql = list_jobs_sql(
            !states.is_empty(),
            window_end.is_some() || page.before_id.is_some(),
            filter.kind.is_some(),
            window_start.is_some(),
        );
        let mut statement = self.connection().prepare_cached(&sql)?;
        let parameter_count = statement.parameter_count();
        let wanted = i64::from(page.limit) + 1;
        let mut items = Vec::new();
        for state in states.iter().map(|state| Some(*state)).chain(
            // No state named: one pass without the state condition (?1 unused).
            states.is_empty().then_some(None),
        ) {
            let parameters = params![
                state,
                window_end.or(page.before_id),
                filter.kind,
                wanted,
                window_start
            ];
            // Without a window start the query stops at `?4`, and rusqlite wants exactly as
            // many parameters as the statement numbers.
            let rows = statement.query_map(&parameters[..parameter_count], job_from_row)?;
            for row in rows {
                items.push(row?);
            }
        }
        if states.len() > 1 {
            items.sort_unstable_by_key(|job| std::cmp::Reverse(job.id));
            items.truncate(wanted as usize);
        }
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|job| job.id)
        } else {
            // Less than a page in the window: the next page starts below it, if anything is.
            window_start
        };
        Ok(Page { items, next_cursor })
    }

    /// Every transition of a job, oldest first, starting with its creation as `queued`: its
    /// log (see `log.rs`) without the progress and steps between the transitions.
    pub fn job_history(&self, id: i64) -> Result<Vec<JobTransition>, JobError> {
        let mut transitions = Vec::new();
        let mut after = None;
        loop {
            let page = self.job_log(id, after, MAX_LOG_PAGE)?;
            let more = page.len() == MAX_LOG_PAGE as usize;
            for entry in page {
                after = Some(entry.id);
                if let JobLogEvent::State {
                    from,
                    to,
                    attempt,
                    worker,
                    error,
                } = entry.what
                {
                    transitions.push(JobTransition {
                        at_ms: entry.at_ms,
                        from_state: from,
                        to_state: to,
                        attempt,
                        worker,
                        error,
                    });
                }
            }
            if !more {
                return Ok(transitions);
            }
        }
    }

    /// How many jobs are in each state (states with none are listed with 0): the pending
    /// states counted from their ranges of `jobs_by_state`, the finished ones read from the
    /// counts the triggers keep (see [`JOB_COUNTS_SQL`]).
    pub fn job_counts(&self) -> Result<BTreeMap<JobState, u64>, JobError> {
        Ok(super::count_by_state(
            self.connection(),
            JOB_COUNTS_SQL,
            JobState::ALL,
            parse_state_column,
        )?)
    }

    /// A read-only look (no write lock) for claimable jobs or expired leases.
    fn claim_may_find_work(&self, kinds_json: &str) -> Result<bool, JobError> {
        Ok(self
            .connection()
            .prepare_cached(
                "SELECT EXISTS (
                     SELECT 1 FROM jobs INDEXED BY jobs_claimable
                     WHERE state IN ('queued', 'retrying') AND run_at <= ?1
                       AND kind IN (SELECT value FROM json_each(?2)))
                 OR EXISTS (
                     SELECT 1 FROM jobs INDEXED BY jobs_leases
                     WHERE state = 'running' AND lease_expires_at < ?1)",
            )?
            .query_row(params![now_ms(), kinds_json], |row| row.get(0))?)
    }

    fn complete_one(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        outcome: Outcome,
    ) -> Result<JobState, JobError> {
        let completion = Completion {
            id,
            lease_token: lease_token.clone(),
            outcome,
        };
        validate_outcome(&completion.outcome)?;
        let retry_policy = self.options().retry;
        self.write(|transaction| complete(transaction, &completion, &retry_policy, now_ms())?)
    }
}

/// [`Store::cancel_job`] inside a transaction the caller holds (cancelling a download cancels
/// its job in the same transaction).
pub(super) fn cancel_in(transaction: &Transaction<'_>, id: i64) -> Result<Job, JobError> {
    let state = job_state(transaction, id)?;
    let now = now_ms();
    match state {
        JobState::Queued | JobState::Retrying => {
            transaction.execute(
                "UPDATE jobs SET state = 'cancelled', error = 'cancelled on request',
                     updated_at = ?2, finished_at = ?2
                 WHERE id = ?1",
                params![id, now],
            )?;
        }
        JobState::Running => {
            transaction.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
        }
        state => {
            return Err(JobError::InvalidState {
                id,
                state,
                action: "cancel",
            });
        }
    }
    read_job(transaction, id)
}

/// With a kind, a page of [`Store::list_jobs`] looks at the jobs of at most this many ids
/// below its cursor (the newest when there is none): a few milliseconds of rows of the table
/// or of a state's range of `jobs_by_state`. When the window holds less than a page of the
/// kind, the page is short (even empty) and `next_cursor` is the window's lowest id, where
/// the next page goes on; `next_cursor` is absent only when nothing older is left.
///
/// The alternative, an index on (kind, id), answers any page of any kind in one range, but
/// every enqueue then writes one more index page in its transaction; the kinds are few and
/// lists by kind are rare next to enqueues, so the window is the cheaper side (W1 in the
/// README has both measured).
pub const KIND_WINDOW: i64 = 10_000;

/// The per-state counts: the pending states (queued, retrying, running: the backlog, which
/// the queue limits bound for downloads and ingest) counted from their ranges of the
/// covering index `jobs_by_state`, and the finished states, which grow without bound, read
/// from the columns of `job_pending` that triggers keep as jobs enter and leave them
/// (migration 11). Neither reads a finished job.
pub(crate) const JOB_COUNTS_SQL: &str = "SELECT state, count(*) FROM jobs INDEXED BY jobs_by_state
     WHERE state IN ('queued', 'retrying', 'running') GROUP BY state
     UNION ALL SELECT 'succeeded', coalesce(sum(succeeded), 0) FROM job_pending
     UNION ALL SELECT 'failed', coalesce(sum(failed), 0) FROM job_pending
     UNION ALL SELECT 'cancelled', coalesce(sum(cancelled), 0) FROM job_pending
     UNION ALL SELECT 'dead', coalesce(sum(dead), 0) FROM job_pending";

/// [`JOB_COUNTS_SQL`] by kind and state, only the pairs that have any, ordered by kind and
/// state. The pending jobs' kinds are read from their rows (the index holds no kind): as
/// many rows as the backlog.
pub(crate) const JOB_COUNTS_BY_KIND_SQL: &str =
    "SELECT kind, state, count(*) FROM jobs INDEXED BY jobs_by_state
     WHERE state IN ('queued', 'retrying', 'running') GROUP BY kind, state
     UNION ALL SELECT kind, 'succeeded', succeeded FROM job_pending WHERE succeeded > 0
     UNION ALL SELECT kind, 'failed', failed FROM job_pending WHERE failed > 0
     UNION ALL SELECT kind, 'cancelled', cancelled FROM job_pending WHERE cancelled > 0
     UNION ALL SELECT kind, 'dead', dead FROM job_pending WHERE dead > 0
     ORDER BY 1, 2";

/// The query of one range of [`Store::list_jobs`]: `?1` a state, `?2` the cursor (or the end
/// of the kind's window), `?3` the kind, `?4` the limit, `?5` the start of the kind's window;
/// conditions not asked for are left out (not `?x IS NULL OR`), so the cursor and the window
/// are ranges of the index or of the table. Unused numbered parameters are fine in SQLite,
/// so one call binds the first four, or all five when the window has a start.
pub(crate) fn list_jobs_sql(
    by_state: bool,
    before_cursor: bool,
    by_kind: bool,
    window_start: bool,
) -> String {
    let index = if by_state {
        "INDEXED BY jobs_by_state"
    } else {
        ""
    };
    let mut conditions = Vec::new();
    if by_state {
        conditions.push("state = ?1");
    }
    if before_cursor {
        conditions.push("id < ?2");
    }
    if window_start {
        conditions.push("id >= ?5");
    }
    if by_kind {
        conditions.push("kind = ?3");
    }
    let condition = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    format!("SELECT {JOB_COLUMNS} FROM jobs {index} {condition} ORDER BY id DESC LIMIT ?4")
}

/// The claim: the oldest claimable jobs of the kinds asked for, in claim order, from the
/// partial index `jobs_claimable` (pinned with `INDEXED BY`: without statistics SQLite
/// otherwise takes `jobs_by_state` and sorts every queued job in a temporary tree on each
/// claim).
pub(crate) const CLAIM_SQL: &str =
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?1,
             lease_holder = ?7, lease_token = ?2, lease_expires_at = ?3, cancel_requested = 0,
             progress = NULL,
             progress_message = NULL, started_at = coalesce(started_at, ?4), updated_at = ?4
         WHERE id IN (
             SELECT id FROM jobs INDEXED BY jobs_claimable
             WHERE state IN ('queued', 'retrying') AND run_at <= ?4
               AND kind IN (SELECT value FROM json_each(?5))
             ORDER BY priority DESC, run_at, id
             LIMIT ?6)
         RETURNING id, kind, payload, priority, attempts, max_attempts, run_at";

/// Inserts a validated job; `max_attempts` is the job's own or the store's default.
pub(super) fn insert_job(
    transaction: &Transaction<'_>,
    job: &NewJob,
    payload: &str,
    max_attempts: u32,
    now: i64,
) -> Result<Enqueued, JobError> {
    let run_at = job.run_at_ms.unwrap_or(now);
    let inserted: Option<i64> = transaction
        .prepare_cached(
            "INSERT INTO jobs (kind, payload, state, priority, run_at, max_attempts, unique_key,
                               created_at, updated_at)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                job.kind,
                payload,
                job.priority,
                run_at,
                max_attempts,
                job.unique_key,
                now
            ],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = inserted {
        // A new job is pending: the kinds with a queue limit count it (migration 10) here, in
        // its transaction, rather than by a trigger, which would cost every insert of every
        // kind about 1.5 µs even when it does nothing. This is the only insert into `jobs`.
        if limits::COUNTED_KINDS.contains(&job.kind.as_str()) {
            transaction
                .prepare_cached("UPDATE job_pending SET n = n + 1 WHERE kind = ?1")?
                .execute([&job.kind])?;
        }
        return Ok(Enqueued { id, created: true });
    }
    let id = transaction
        .prepare_cached("SELECT id FROM jobs WHERE unique_key = ?1")?
        .query_row([&job.unique_key], |row| row.get(0))?;
    Ok(Enqueued { id, created: false })
}

fn claim(
    transaction: &Transaction<'_>,
    worker: &Claimant,
    kinds_json: &str,
    limit: usize,
    now: i64,
    lease_ms: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let token = LeaseToken::generate();
    let expires = now + lease_ms;
    let mut statement = transaction.prepare_cached(CLAIM_SQL)?;
    let mut claimed = statement
        .query_map(
            params![
                worker.worker,
                token.as_str(),
                expires,
                now,
                kinds_json,
                limit as i64,
                worker.holder.as_ref().map(LeaseHolder::as_str),
            ],
            |row| {
                let payload: String = row.get(2)?;
                Ok((
                    row.get::<_, i64>(6)?,
                    ClaimedJob {
                        id: row.get(0)?,
                        kind: row.get(1)?,
                        payload: parse_json_column(2, &payload)?,
                        priority: row.get(3)?,
                        attempt: row.get(4)?,
                        max_attempts: row.get(5)?,
                        lease_token: token.clone(),
                        lease_expires_at_ms: expires,
                    },
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING gives no order guarantee; hand the jobs out in claim order.
    claimed.sort_by_key(|(run_at, job)| (-job.priority, *run_at, job.id));
    Ok(claimed.into_iter().map(|(_, job)| job).collect())
}

/// How a lease ends without its worker (`?1` is now): the job is claimable again at once as
/// `retrying`, or `dead` when that was its last attempt, or `cancelled` when a cancel was
/// requested; the attempt stays counted, since the worker may have died because of the job.
const END_LEASE: &str = "state = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN attempts >= max_attempts THEN 'dead'
                          ELSE 'retrying' END,
             lease_token = NULL, lease_expires_at = NULL, run_at = ?1, updated_at = ?1,
             finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN ?1 END";

/// Ends the leases of the running jobs that match `condition` (`?1` is now, `?2` the reason,
/// further parameters are the condition's), each with the error "worker W stopped during
/// attempt N: reason". Running jobs are few and `jobs_leases` indexes exactly them, so the
/// condition needs no index of its own.
fn end_leases(
    transaction: &Transaction<'_>,
    condition: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<RescuedJob>, StoreError> {
    let mut statement = transaction.prepare_cached(&format!(
        "UPDATE jobs INDEXED BY jobs_leases SET {END_LEASE},
             error = 'worker ' || coalesce(lease_owner, '?') || ' stopped during attempt '
                     || attempts || ': ' || ?2
         WHERE state = 'running' AND {condition}
         RETURNING id, kind, coalesce(lease_owner, '?'), attempts, state"
    ))?;
    let mut rescued = statement
        .query_map(parameters, |row| {
            Ok(RescuedJob {
                id: row.get(0)?,
                kind: row.get(1)?,
                worker: row.get(2)?,
                attempt: row.get(3)?,
                state: parse_state_column(&row.get::<_, String>(4)?)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rescued.sort_by_key(|job| job.id);
    Ok(rescued)
}

fn rescue_expired(transaction: &Transaction<'_>, now: i64) -> Result<Vec<i64>, StoreError> {
    let mut statement = transaction.prepare_cached(&format!(
        "UPDATE jobs INDEXED BY jobs_leases SET {END_LEASE},
             error = 'lease expired: worker ' || coalesce(lease_owner, '?')
                     || ' stopped heartbeating during attempt ' || attempts
         WHERE state = 'running' AND lease_expires_at < ?1
         RETURNING id"
    ))?;
    let rescued = statement
        .query_map([now], |row| row.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    if !rescued.is_empty() {
        tracing::warn!(jobs = ?rescued, "rescued jobs whose lease expired");
    }
    Ok(rescued)
}

/// Applies one outcome as a compare-and-set on the lease token. The outer `Result` is a
/// database failure (which aborts the whole transaction); the inner one is this job's verdict.
/// `documents.rs` and `downloads.rs` call it inside their own transaction, so a document or a
/// download and the job's outcome commit together.
pub(crate) fn complete(
    transaction: &Transaction<'_>,
    completion: &Completion,
    retry_policy: &RetryPolicy,
    now: i64,
) -> Result<Result<JobState, JobError>, StoreError> {
    let id = completion.id;
    let token = completion.lease_token.as_str();
    let updated: Option<String> = match &completion.outcome {
        Outcome::Succeeded { result } => transaction
            .prepare_cached(
                "UPDATE jobs SET state = 'succeeded', result = ?3, error = NULL, progress = 1.0,
                     lease_token = NULL, lease_expires_at = NULL, updated_at = ?4, finished_at = ?4
                 WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                 RETURNING state",
            )?
            .query_row(params![id, token, result.to_string(), now], |row| {
                row.get(0)
            })
            .optional()?,
        Outcome::Failed { error, retryable } => {
            let attempt: Option<(u32, u32)> = transaction
                .prepare_cached(
                    "SELECT attempts, max_attempts FROM jobs
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
                )?
                .query_row(params![id, token], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            match attempt {
                None => None,
                Some((attempts, max_attempts)) => {
                    let (state, run_at) = if !retryable {
                        (JobState::Failed, now)
                    } else if attempts >= max_attempts {
                        (JobState::Dead, now)
                    } else {
                        let delay = retry_policy.delay_after(attempts);
                        (JobState::Retrying, now + duration_ms(delay))
                    };
                    let finished = state.is_terminal().then_some(now);
                    transaction
                        .prepare_cached(
                            "UPDATE jobs SET state = ?3, error = ?4, run_at = ?5,
                                 lease_token = NULL, lease_expires_at = NULL, updated_at = ?6,
                                 finished_at = ?7
                             WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                             RETURNING state",
                        )?
                        .query_row(
                            params![id, token, state.as_str(), error, run_at, now, finished],
                            |row| row.get(0),
                        )
                        .optional()?
                }
            }
        }
        Outcome::Cancelled => transaction
            .prepare_cached(
                "UPDATE jobs SET state = 'cancelled', error = 'cancelled on request',
                     lease_token = NULL, lease_expires_at = NULL, updated_at = ?3, finished_at = ?3
                 WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                 RETURNING state",
            )?
            .query_row(params![id, token, now], |row| row.get(0))
            .optional()?,
        Outcome::Postponed { error } => {
            let postponements: Option<u32> = transaction
                .prepare_cached(
                    "SELECT postponements FROM jobs
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
                )?
                .query_row(params![id, token], |row| row.get(0))
                .optional()?;
            match postponements {
                None => None,
                Some(postponements) => {
                    let postponements = postponements.saturating_add(1);
                    let run_at = now + duration_ms(retry_policy.delay_after(postponements));
                    transaction
                        .prepare_cached(
                            "UPDATE jobs SET state = 'retrying', attempts = attempts - 1,
                                 postponements = ?3, error = ?4, run_at = ?5,
                                 lease_token = NULL, lease_expires_at = NULL, updated_at = ?6
                             WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                             RETURNING state",
                        )?
                        .query_row(
                            params![id, token, postponements, error, run_at, now],
                            |row| row.get(0),
                        )
                        .optional()?
                }
            }
        }
        Outcome::Released => transaction
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = ?3,
                     lease_token = NULL, lease_expires_at = NULL, progress = NULL,
                     progress_message = NULL, updated_at = ?3
                 WHERE id = ?1 AND state = 'running' AND lease_token = ?2
                 RETURNING state",
            )?
            .query_row(params![id, token, now], |row| row.get(0))
            .optional()?,
    };
    Ok(match updated {
        Some(state) => state.parse(),
        None => Err(lease_lost_or_not_found(transaction, id)),
    })
}

pub(super) fn lease_lost_or_not_found(connection: &rusqlite::Connection, id: i64) -> JobError {
    match job_state(connection, id) {
        Ok(_) => JobError::LeaseLost { id },
        Err(error) => error,
    }
}

fn job_state(connection: &rusqlite::Connection, id: i64) -> Result<JobState, JobError> {
    let state: Option<String> = connection
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    match state {
        Some(state) => state.parse(),
        None => Err(JobError::NotFound(id)),
    }
}

fn read_job(connection: &rusqlite::Connection, id: i64) -> Result<Job, JobError> {
    connection
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id], job_from_row)
        .optional()?
        .ok_or(JobError::NotFound(id))
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let payload: String = row.get(2)?;
    let result: Option<String> = row.get(13)?;
    Ok(Job {
        id: row.get(0)?,
        kind: row.get(1)?,
        payload: parse_json_column(2, &payload)?,
        state: parse_state_column(&row.get::<_, String>(3)?)?,
        priority: row.get(4)?,
        run_at_ms: row.get(5)?,
        attempts: row.get(6)?,
        max_attempts: row.get(7)?,
        lease_owner: row.get(8)?,
        lease_expires_at_ms: row.get(9)?,
        cancel_requested: row.get(10)?,
        progress: row.get(11)?,
        progress_message: row.get(12)?,
        result: result
            .map(|text| parse_json_column(13, &text))
            .transpose()?,
        error: row.get(14)?,
        unique_key: row.get(15)?,
        created_at_ms: row.get(16)?,
        updated_at_ms: row.get(17)?,
        started_at_ms: row.get(18)?,
        finished_at_ms: row.get(19)?,
    })
}

fn parse_json_column(index: usize, text: &str) -> rusqlite::Result<Value> {
    serde_json::from_str(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, error.into())
    })
}

pub(super) fn parse_state_column(text: &str) -> rusqlite::Result<JobState> {
    text.parse().map_err(|error: JobError| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, error.into())
    })
}

fn validate_worker(worker: &str) -> Result<(), JobError> {
    if worker.is_empty() || worker.len() > 256 {
        return Err(JobError::InvalidArgument(format!(
            "worker name must be 1..=256 bytes, got {}",
            worker.len()
        )));
    }
    Ok(())
}

fn validate_lease(lease: Duration) -> Result<i64, JobError> {
    if lease < Duration::from_millis(10) || lease > Duration::from_secs(24 * 3600) {
        return Err(JobError::InvalidArgument(format!(
            "lease must be between 10ms and 24h, got {lease:?}"
        )));
    }
    Ok(duration_ms(lease))
}

fn validate_message(what: &str, message: &str) -> Result<(), JobError> {
    if message.len() > MAX_MESSAGE_LENGTH {
        return Err(JobError::InvalidArgument(format!(
            "{what} is {} bytes, the limit is {MAX_MESSAGE_LENGTH}",
            message.len()
        )));
    }
    Ok(())
}

fn validate_outcome(outcome: &Outcome) -> Result<(), JobError> {
    match outcome {
        Outcome::Succeeded { result } => {
            let size = result.to_string().len();
            if size > MAX_PAYLOAD_BYTES {
                return Err(JobError::InvalidArgument(format!(
                    "result is {size} bytes, the limit is {MAX_PAYLOAD_BYTES}"
                )));
            }
            Ok(())
        }
        Outcome::Failed { error, .. } | Outcome::Postponed { error } => {
            validate_message("error text", error)
        }
        Outcome::Cancelled | Outcome::Released => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::tests::open_temp;
    use crate::store::{Durability, StoreOptions};

    const LEASE: Duration = Duration::from_secs(30);

    fn claim_one(store: &mut Store, worker: &str) -> ClaimedJob {
        let mut claimed = store
            .claim_jobs(&worker.into(), &["test"], 1, LEASE)
            .unwrap();
        assert_eq!(claimed.len(), 1, "expected a job to claim");
        claimed.remove(0)
    }

    fn states(history: &[JobTransition]) -> Vec<(Option<JobState>, JobState)> {
        history
            .iter()
            .map(|transition| (transition.from_state, transition.to_state))
            .collect()
    }

    #[test]
    fn claims_by_priority_then_run_at_then_id() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let now = now_ms();
        let low = store
            .enqueue(&NewJob::new("test", json!({"n": "low"})).with_priority(-5))
            .unwrap();
        let later = store
            .enqueue(&NewJob {
                run_at_ms: Some(now - 10),
                ..NewJob::new("test", json!({"n": "later"}))
            })
            .unwrap();
        let earlier = store
            .enqueue(&NewJob {
                run_at_ms: Some(now - 1000),
                ..NewJob::new("test", json!({"n": "earlier"}))
            })
            .unwrap();
        let high = store
            .enqueue(&NewJob::new("test", json!({"n": "high"})).with_priority(50))
            .unwrap();
        let future = store
            .enqueue(&NewJob {
                run_at_ms: Some(now + 3_600_000),
                ..NewJob::new("test", json!({}))
            })
            .unwrap();
        let other_kind = store.enqueue(&NewJob::new("other", json!({}))).unwrap();
        let claimed = store.claim_jobs(&"w".into(), &["test"], 10, LEASE).unwrap();
        let ids: Vec<i64> = claimed.iter().map(|job| job.id).collect();
        assert_eq!(ids, vec![high.id, earlier.id, later.id, low.id]);
        assert!(claimed.iter().all(|job| job.attempt == 1));
        assert!(!ids.contains(&future.id) && !ids.contains(&other_kind.id));
        assert!(
            store
                .claim_jobs(&"w".into(), &["test"], 10, LEASE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_unique_key_returns_the_existing_job_without_a_second_row() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let first = store
            .enqueue(&NewJob::new("test", json!({"v": 1})).with_unique_key("file:/a:1"))
            .unwrap();
        let second = store
            .enqueue(&NewJob::new("test", json!({"v": 2})).with_unique_key("file:/a:1"))
            .unwrap();
        assert!(first.created);
        assert_eq!(
            second,
            Enqueued {
                id: first.id,
                created: false
            }
        );
        assert_eq!(store.get_job(first.id).unwrap().payload, json!({"v": 1}));
        let batch = store
            .enqueue_many(&[
                NewJob::new("test", json!({})).with_unique_key("file:/a:1"),
                NewJob::new("test", json!({})).with_unique_key("file:/b:1"),
            ])
            .unwrap();
        assert_eq!(
            batch[0],
            Enqueued {
                id: first.id,
                created: false
            }
        );
        assert!(batch[1].created);
        assert_eq!(store.job_counts().unwrap()[&JobState::Queued], 2);
    }

    /// Regression: `NewJob::new` invented 5 attempts, whatever `[jobs] max_attempts` said.
    #[test]
    fn a_job_without_its_own_attempts_gets_the_configured_ones() {
        let directory = tempfile::tempdir().unwrap();
        let (_, template) = open_temp(Durability::Normal);
        let options = StoreOptions {
            max_attempts: 7,
            ..*template.options()
        };
        let mut store = Store::open(&directory.path().join("sluice.db"), &options).unwrap();
        let default = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let own = store
            .enqueue(&NewJob::new("test", json!({})).with_max_attempts(2))
            .unwrap()
            .id;
        let many = store
            .enqueue_many(&[NewJob::new("test", json!({}))])
            .unwrap()[0]
            .id;
        assert_eq!(store.get_job(default).unwrap().max_attempts, 7);
        assert_eq!(store.get_job(own).unwrap().max_attempts, 2);
        assert_eq!(store.get_job(many).unwrap().max_attempts, 7);
    }

    #[test]
    fn enqueue_many_is_all_or_nothing_and_bad_input_changes_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let error = store
            .enqueue_many(&[
                NewJob::new("test", json!({})),
                NewJob::new("test", json!([1, 2])),
            ])
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("payload must be a JSON object, got an array"),
            "{error}"
        );
        for (job, expected) in [
            (NewJob::new("test", json!("text")), "got a string"),
            (NewJob::new("test", json!(null)), "got null"),
            (
                NewJob::new("test", json!({})).with_priority(101),
                "priority 101 is out of range",
            ),
            (
                NewJob::new("test", json!({})).with_priority(-101),
                "out of range",
            ),
            (
                NewJob::new("test", json!({})).with_max_attempts(0),
                "max_attempts 0",
            ),
            (NewJob::new("", json!({})), "job kind"),
            (NewJob::new("bad kind;", json!({})), "job kind"),
            (
                NewJob::new("test", json!({})).with_unique_key(""),
                "unique key",
            ),
            (
                NewJob::new("test", json!({"big": "x".repeat(MAX_PAYLOAD_BYTES)})),
                "the limit is",
            ),
        ] {
            let error = store.enqueue(&job).unwrap_err();
            assert!(matches!(error, JobError::InvalidArgument(_)), "{error}");
            assert!(
                error.to_string().contains(expected),
                "{error} should mention {expected}"
            );
        }
        assert_eq!(store.job_counts().unwrap().values().sum::<u64>(), 0);
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let token = LeaseToken::generate();
        assert!(matches!(store.get_job(42), Err(JobError::NotFound(42))));
        assert!(matches!(store.cancel_job(42), Err(JobError::NotFound(42))));
        assert!(matches!(store.retry_job(42), Err(JobError::NotFound(42))));
        assert!(matches!(store.job_history(42), Err(JobError::NotFound(42))));
        assert!(matches!(
            store.heartbeat(42, &token, LEASE),
            Err(JobError::NotFound(42))
        ));
        assert!(matches!(
            store.succeed_job(42, &token, &json!({})),
            Err(JobError::NotFound(42))
        ));
    }

    #[test]
    fn the_full_lifecycle_is_recorded_in_history() {
        let (_directory, mut store) = open_temp(Durability::Full);
        let id = store
            .enqueue(&NewJob::new("test", json!({"a": 1})))
            .unwrap()
            .id;
        let job = claim_one(&mut store, "worker-1");
        store
            .report_progress(id, &job.lease_token, 0.5, "half way")
            .unwrap();
        let running = store.get_job(id).unwrap();
        assert_eq!(running.state, JobState::Running);
        assert_eq!(running.progress, Some(0.5));
        assert_eq!(running.progress_message.as_deref(), Some("half way"));
        assert_eq!(running.lease_owner.as_deref(), Some("worker-1"));
        let heartbeat = store.heartbeat(id, &job.lease_token, LEASE).unwrap();
        assert!(!heartbeat.cancel_requested);
        store
            .succeed_job(id, &job.lease_token, &json!({"ok": true}))
            .unwrap();
        let done = store.get_job(id).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.result, Some(json!({"ok": true})));
        assert!(done.finished_at_ms.is_some());
        let history = store.job_history(id).unwrap();
        assert_eq!(
            states(&history),
            vec![
                (None, JobState::Queued),
                (Some(JobState::Queued), JobState::Running),
                (Some(JobState::Running), JobState::Succeeded),
            ]
        );
        assert_eq!(history[2].worker.as_deref(), Some("worker-1"));
        // Once finished, the token is worthless.
        assert!(matches!(
            store.succeed_job(id, &job.lease_token, &json!({"again": true})),
            Err(JobError::LeaseLost { .. })
        ));
        assert!(matches!(
            store.report_progress(id, &job.lease_token, 0.7, ""),
            Err(JobError::LeaseLost { .. })
        ));
        assert_eq!(store.get_job(id).unwrap().result, Some(json!({"ok": true})));
    }

    #[test]
    fn bad_progress_is_refused_and_changes_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        store.enqueue(&NewJob::new("test", json!({}))).unwrap();
        let job = claim_one(&mut store, "w");
        for fraction in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let error = store
                .report_progress(job.id, &job.lease_token, fraction, "x")
                .unwrap_err();
            assert!(matches!(error, JobError::InvalidArgument(_)), "{error}");
        }
        let error = store
            .report_progress(
                job.id,
                &job.lease_token,
                0.5,
                &"m".repeat(MAX_MESSAGE_LENGTH + 1),
            )
            .unwrap_err();
        assert!(matches!(error, JobError::InvalidArgument(_)), "{error}");
        assert_eq!(store.get_job(job.id).unwrap().progress, None);
    }

    #[test]
    fn retryable_failures_back_off_then_die_with_their_errors_kept() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store
            .enqueue(&NewJob::new("test", json!({})).with_max_attempts(3))
            .unwrap()
            .id;
        for attempt in 1..=3u32 {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let job = loop {
                // The retry policy of the test store is 10ms..100ms: wait for the backoff.
                if let Some(job) = store
                    .claim_jobs(&"w".into(), &["test"], 1, LEASE)
                    .unwrap()
                    .pop()
                {
                    break job;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "job never became runnable"
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            assert_eq!(job.attempt, attempt);
            let state = store
                .fail_job(id, &job.lease_token, &format!("boom {attempt}"), true)
                .unwrap();
            if attempt < 3 {
                assert_eq!(state, JobState::Retrying);
                let waiting = store.get_job(id).unwrap();
                assert!(
                    waiting.run_at_ms > waiting.updated_at_ms,
                    "retry must back off"
                );
            } else {
                assert_eq!(state, JobState::Dead);
            }
        }
        let dead = store.get_job(id).unwrap();
        assert_eq!((dead.state, dead.attempts), (JobState::Dead, 3));
        assert_eq!(dead.error.as_deref(), Some("boom 3"));
        let errors: Vec<String> = store
            .job_history(id)
            .unwrap()
            .into_iter()
            .filter_map(|transition| transition.error)
            .collect();
        assert_eq!(errors, vec!["boom 1", "boom 2", "boom 3"]);
    }

    #[test]
    fn a_permanent_failure_fails_at_once_and_can_be_retried_by_hand() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let job = claim_one(&mut store, "w");
        assert_eq!(
            store
                .fail_job(id, &job.lease_token, "bad file", false)
                .unwrap(),
            JobState::Failed
        );
        let error = store.cancel_job(id).unwrap_err();
        assert!(
            matches!(
                error,
                JobError::InvalidState {
                    state: JobState::Failed,
                    ..
                }
            ),
            "{error}"
        );
        let retried = store.retry_job(id).unwrap();
        assert_eq!((retried.state, retried.attempts), (JobState::Queued, 0));
        let again = claim_one(&mut store, "w");
        assert_eq!(again.attempt, 1);
        store
            .succeed_job(id, &again.lease_token, &json!({}))
            .unwrap();
        let error = store.retry_job(id).unwrap_err();
        assert!(
            error.to_string().contains("is succeeded; cannot retry"),
            "{error}"
        );
    }

    #[test]
    fn an_expired_lease_is_rescued_counting_the_attempt_and_fences_the_old_worker() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store
            .enqueue(&NewJob::new("test", json!({})).with_max_attempts(2))
            .unwrap()
            .id;
        let first = store
            .claim_jobs(&"slow".into(), &["test"], 1, Duration::from_millis(20))
            .unwrap()
            .remove(0);
        std::thread::sleep(Duration::from_millis(40));
        let second = claim_one(&mut store, "fast");
        assert_eq!(second.id, id);
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            store.heartbeat(id, &first.lease_token, LEASE),
            Err(JobError::LeaseLost { .. })
        ));
        assert!(matches!(
            store.succeed_job(id, &first.lease_token, &json!({"by": "slow"})),
            Err(JobError::LeaseLost { .. })
        ));
        store
            .succeed_job(id, &second.lease_token, &json!({"by": "fast"}))
            .unwrap();
        let job = store.get_job(id).unwrap();
        assert_eq!(job.result, Some(json!({"by": "fast"})));
        assert_eq!(
            states(&store.job_history(id).unwrap()),
            vec![
                (None, JobState::Queued),
                (Some(JobState::Queued), JobState::Running),
                (Some(JobState::Running), JobState::Retrying),
                (Some(JobState::Retrying), JobState::Running),
                (Some(JobState::Running), JobState::Succeeded),
            ]
        );
    }

    #[test]
    fn a_lease_expiring_on_the_last_attempt_makes_the_job_dead() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store
            .enqueue(&NewJob::new("test", json!({})).with_max_attempts(1))
            .unwrap()
            .id;
        store
            .claim_jobs(&"w".into(), &["test"], 1, Duration::from_millis(10))
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(store.rescue_expired_leases().unwrap(), vec![id]);
        let job = store.get_job(id).unwrap();
        assert_eq!(job.state, JobState::Dead);
        assert!(job.error.unwrap().contains("lease expired"));
    }

    fn holding(worker: &str, holder: &str) -> Claimant {
        Claimant::named(worker).with_holder(LeaseHolder::new(holder).unwrap())
    }

    #[test]
    fn the_leases_of_a_gone_process_end_at_once_and_its_successors_are_kept() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let ids: Vec<i64> = (0..3)
            .map(|i| {
                store
                    .enqueue(&NewJob::new("test", json!({"i": i})))
                    .unwrap()
                    .id
            })
            .collect();
        let dead = holding("worker@1", ":1.7@bus-a");
        let successor = holding("worker@1", ":1.9@bus-a");
        let peer = holding("worker@2", ":1.8@bus-a");
        let lost = store
            .claim_jobs(&dead, &["test"], 1, LEASE)
            .unwrap()
            .remove(0);
        let kept = store
            .claim_jobs(&successor, &["test"], 1, LEASE)
            .unwrap()
            .remove(0);
        store.claim_jobs(&peer, &["test"], 1, LEASE).unwrap();

        let rescued = store
            .rescue_leases_of(dead.holder.as_ref().unwrap(), "its bus connection closed")
            .unwrap();
        assert_eq!(
            rescued,
            vec![RescuedJob {
                id: ids[0],
                kind: "test".into(),
                worker: "worker@1".into(),
                attempt: 1,
                state: JobState::Retrying,
            }]
        );
        let job = store.get_job(ids[0]).unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Retrying, 1));
        assert!(job.run_at_ms <= now_ms(), "claimable at once");
        assert_eq!(
            job.error.as_deref(),
            Some("worker worker@1 stopped during attempt 1: its bus connection closed")
        );
        // The old holder is fenced; the successor of the same name and the peer keep theirs.
        assert!(matches!(
            store.succeed_job(lost.id, &lost.lease_token, &json!({})),
            Err(JobError::LeaseLost { .. })
        ));
        assert_eq!(store.get_job(ids[1]).unwrap().state, JobState::Running);
        assert_eq!(store.get_job(ids[2]).unwrap().state, JobState::Running);
        store
            .succeed_job(kept.id, &kept.lease_token, &json!({}))
            .unwrap();
        // Nothing is left to end a second time (every worker that saw the departure tries).
        assert!(
            store
                .rescue_leases_of(dead.holder.as_ref().unwrap(), "again")
                .unwrap()
                .is_empty()
        );
        let again = store
            .claim_jobs(&peer, &["test"], 1, LEASE)
            .unwrap()
            .remove(0);
        assert_eq!((again.id, again.attempt), (ids[0], 2));
    }

    #[test]
    fn a_new_process_ends_the_leases_its_predecessors_held_under_its_name_only() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let ids: Vec<i64> = (0..4)
            .map(|i| {
                store
                    .enqueue(&NewJob::new("test", json!({"i": i})).with_max_attempts(1))
                    .unwrap()
                    .id
            })
            .collect();
        let successor = holding("worker@1", ":1.9@bus-b");
        // An earlier process on another bus, one that was on no bus, another worker, and the
        // new process itself.
        store
            .claim_jobs(&holding("worker@1", ":1.9@bus-a"), &["test"], 1, LEASE)
            .unwrap();
        store
            .claim_jobs(&"worker@1".into(), &["test"], 1, LEASE)
            .unwrap();
        store
            .claim_jobs(&holding("worker@2", ":1.3@bus-b"), &["test"], 1, LEASE)
            .unwrap();
        store.claim_jobs(&successor, &["test"], 1, LEASE).unwrap();
        store.cancel_job(ids[1]).unwrap();

        let rescued = store.rescue_leases_of_predecessors(&successor).unwrap();
        let outcome: Vec<(i64, JobState)> = rescued.iter().map(|job| (job.id, job.state)).collect();
        // One attempt each: the first is dead, the second was asked to cancel.
        assert_eq!(
            outcome,
            vec![(ids[0], JobState::Dead), (ids[1], JobState::Cancelled)]
        );
        let dead = store.get_job(ids[0]).unwrap();
        assert!(dead.finished_at_ms.is_some());
        assert!(
            dead.error
                .unwrap()
                .contains("a new process of the same name started"),
            "the reason is kept"
        );
        assert_eq!(store.get_job(ids[2]).unwrap().state, JobState::Running);
        assert_eq!(store.get_job(ids[3]).unwrap().state, JobState::Running);
    }

    #[test]
    fn release_gives_the_attempt_back() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let job = claim_one(&mut store, "w");
        store.release_job(id, &job.lease_token).unwrap();
        let released = store.get_job(id).unwrap();
        assert_eq!((released.state, released.attempts), (JobState::Queued, 0));
        assert_eq!(claim_one(&mut store, "w").attempt, 1);
    }

    /// Regression (issue 12, full disk): an attempt that found its disk full used up the
    /// attempt, so a disk that stayed full for half a minute made every job on it `dead`.
    #[test]
    fn a_postponed_job_keeps_its_attempts_and_waits_longer_each_time() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store
            .enqueue(&NewJob::new("test", json!({})).with_max_attempts(1))
            .unwrap()
            .id;
        let claim_when_runnable = |store: &mut Store| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(job) = store
                    .claim_jobs(&"w".into(), &["test"], 1, LEASE)
                    .unwrap()
                    .pop()
                {
                    return job;
                }
                assert!(std::time::Instant::now() < deadline, "never runnable");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let mut waits = Vec::new();
        for _ in 0..4 {
            let job = claim_when_runnable(&mut store);
            assert_eq!(job.attempt, 1, "every attempt is the first");
            let postponed = Completion {
                id,
                lease_token: job.lease_token,
                outcome: Outcome::Postponed {
                    error: "disk full".into(),
                },
            };
            let state = store.complete_jobs(&[postponed]).unwrap().remove(0);
            assert_eq!(state.unwrap(), JobState::Retrying);
            let waiting = store.get_job(id).unwrap();
            assert_eq!(waiting.attempts, 0);
            assert_eq!(waiting.error.as_deref(), Some("disk full"));
            waits.push(waiting.run_at_ms - waiting.updated_at_ms);
        }
        // The test store's policy is 10ms doubling up to 100ms, each wait drawn from the
        // upper half of its step: 5..=10ms first, 40..=80ms the fourth time.
        assert!((5..=10).contains(&waits[0]), "{waits:?}");
        assert!((40..=80).contains(&waits[3]), "{waits:?}");
        let steps = store.job_history(id).unwrap();
        assert_eq!(
            steps
                .iter()
                .filter(|step| step.error.as_deref() == Some("disk full"))
                .count(),
            4,
            "each wait is in the history with its reason: {steps:?}"
        );
        // The one attempt is still there for a real failure.
        let job = claim_when_runnable(&mut store);
        let state = store.fail_job(id, &job.lease_token, "boom", true).unwrap();
        assert_eq!(state, JobState::Dead);
    }

    #[test]
    fn cancelling_a_running_job_reaches_its_worker_through_the_heartbeat() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let queued = store
            .enqueue(&NewJob::new("test", json!({"q": 1})))
            .unwrap()
            .id;
        assert_eq!(store.cancel_job(queued).unwrap().state, JobState::Cancelled);
        let id = store
            .enqueue(&NewJob::new("test", json!({"q": 2})))
            .unwrap()
            .id;
        let job = claim_one(&mut store, "w");
        assert_eq!(job.id, id);
        let marked = store.cancel_job(id).unwrap();
        assert!(marked.cancel_requested && marked.state == JobState::Running);
        assert!(
            store
                .heartbeat(id, &job.lease_token, LEASE)
                .unwrap()
                .cancel_requested
        );
        store.finish_cancelled(id, &job.lease_token).unwrap();
        assert_eq!(store.get_job(id).unwrap().state, JobState::Cancelled);
    }

    #[test]
    fn complete_and_claim_batches_outcomes_and_isolates_a_lost_lease() {
        let (_directory, mut store) = open_temp(Durability::Full);
        let jobs: Vec<NewJob> = (0..10)
            .map(|i| NewJob::new("test", json!({"i": i})))
            .collect();
        store.enqueue_many(&jobs).unwrap();
        let first = store.claim_jobs(&"w".into(), &["test"], 4, LEASE).unwrap();
        let mut completions: Vec<Completion> = first
            .iter()
            .map(|job| Completion {
                id: job.id,
                lease_token: job.lease_token.clone(),
                outcome: Outcome::Succeeded {
                    result: json!({"i": job.payload["i"]}),
                },
            })
            .collect();
        completions[1].lease_token = LeaseToken::generate();
        let (results, next) = store
            .complete_and_claim(&completions, &"w".into(), &["test"], 4, LEASE)
            .unwrap();
        assert!(matches!(results[1], Err(JobError::LeaseLost { .. })));
        assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 3);
        assert_eq!(next.len(), 4);
        let counts = store.job_counts().unwrap();
        assert_eq!(counts[&JobState::Succeeded], 3);
        assert_eq!(counts[&JobState::Running], 5);
        assert_eq!(counts[&JobState::Queued], 2);
    }

    #[test]
    fn listing_pages_newest_first_with_filters() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        for i in 0..25 {
            let kind = if i % 2 == 0 { "even" } else { "odd" };
            store.enqueue(&NewJob::new(kind, json!({"i": i}))).unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_jobs(
                    &JobFilter {
                        states: vec![JobState::Queued],
                        kind: Some("even".into()),
                    },
                    PageRequest {
                        before_id: cursor,
                        limit: 5,
                    },
                )
                .unwrap();
            seen.extend(
                page.items
                    .iter()
                    .map(|job| job.payload["i"].as_i64().unwrap()),
            );
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(
            seen,
            (0..25).rev().filter(|i| i % 2 == 0).collect::<Vec<i64>>()
        );
        let none = store
            .list_jobs(
                &JobFilter {
                    states: vec![JobState::Dead],
                    kind: None,
                },
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert!(none.items.is_empty() && none.next_cursor.is_none());
        let error = store
            .list_jobs(
                &JobFilter::default(),
                PageRequest {
                    before_id: None,
                    limit: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(error, JobError::InvalidArgument(_)));
        assert!("bogus".parse::<JobState>().is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        for attempt in 1..=12 {
            let nominal = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(60));
            let delay = policy.delay_after(attempt);
            assert!(
                delay <= nominal && delay >= nominal / 2,
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    /// The plan of `sql` with as many of `parameters` as it numbers, one line per step.
    fn plan_of(store: &Store, sql: &str, parameters: &[&dyn rusqlite::ToSql]) -> String {
        let mut statement = store
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let wanted = statement.parameter_count();
        let plan: Vec<String> = statement
            .query_map(&parameters[..wanted], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    /// Issue 13: every way of listing jobs reads a range of an index or of the table from the
    /// cursor, newest first, and the counts read the backlog's ranges of `jobs_by_state` and
    /// the few rows of `job_pending`; none reads every job or sorts the jobs. (At 1M
    /// jobs the status page's and `/metrics`' GROUP BY over the table took 0.24 s each.)
    #[test]
    fn no_list_or_count_of_jobs_reads_every_job() {
        let (_directory, store) = open_temp(Durability::Normal);
        let parameters = params!["succeeded", 20_000, "ingest", 51, 10_000];
        for by_state in [false, true] {
            for before_cursor in [false, true] {
                for by_kind in [false, true] {
                    for window_start in [false, true] {
                        if (window_start && !by_kind) || (by_kind && !before_cursor) {
                            // Not asked: only a kind has a window, and it always has an end.
                            continue;
                        }
                        let sql = list_jobs_sql(by_state, before_cursor, by_kind, window_start);
                        let plan = plan_of(&store, &sql, parameters);
                        let case = format!("{sql}:\n{plan}");
                        assert!(!plan.contains("TEMP B-TREE"), "{case}");
                        if by_state {
                            assert!(plan.contains("INDEX jobs_by_state (state=?"), "{case}");
                            if window_start {
                                assert!(plan.contains("(state=? AND id>? AND id<?)"), "{case}");
                            } else if before_cursor {
                                assert!(plan.contains("(state=? AND id<?)"), "{case}");
                            }
                        } else if window_start {
                            assert!(
                                plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                                "{case}"
                            );
                        } else if before_cursor {
                            assert!(plan.contains("INTEGER PRIMARY KEY (rowid<?)"), "{case}");
                        } else {
                            // Nothing narrows it: the newest rows, stopping after the page.
                            assert_eq!(plan.trim(), "SCAN jobs", "{case}");
                        }
                    }
                }
            }
        }
        let counts = plan_of(&store, JOB_COUNTS_SQL, &[]);
        assert!(
            counts.contains("COVERING INDEX jobs_by_state (state=?)"),
            "{counts}"
        );
        assert!(counts.contains("job_pending"), "{counts}");
        assert!(
            !counts
                .lines()
                .any(|line| line.trim_start_matches(['|', '-', '`', ' ']) == "SCAN jobs"),
            "{counts}"
        );
        let by_kind = plan_of(&store, JOB_COUNTS_BY_KIND_SQL, &[]);
        assert!(
            by_kind.contains("INDEX jobs_by_state (state=?)"),
            "{by_kind}"
        );
        assert!(by_kind.contains("job_pending"), "{by_kind}");
        assert!(
            !by_kind
                .lines()
                .any(|line| line.trim_start_matches(['|', '-', '`', ' ']) == "SCAN jobs"),
            "{by_kind}"
        );
    }

    /// `?kind=` looks at most `KIND_WINDOW` ids per page: a rare kind among many jobs comes
    /// in short (or empty) pages whose cursor goes on below the window, every job of the kind
    /// exactly once, newest first, with or without states; a common kind fills its pages.
    #[test]
    fn a_rare_kind_is_listed_window_by_window_without_reading_the_table() {
        let (_directory, store) = open_temp(Durability::Normal);
        let jobs = 2 * KIND_WINDOW + KIND_WINDOW / 2;
        let rare = [3, KIND_WINDOW + 2_000, jobs - 10];
        store
            .connection()
            .execute(
                "WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n WHERE id < ?1)
                 INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, created_at,
                                   updated_at)
                 SELECT id, CASE WHEN id IN (?2, ?3, ?4) THEN 'rare' ELSE 'common' END, '{}',
                        CASE WHEN id % 2 = 0 THEN 'queued' ELSE 'succeeded' END, 0, 1, 0, 0
                 FROM n",
                params![jobs, rare[0], rare[1], rare[2]],
            )
            .unwrap();
        let list_all = |kind: &str, states: Vec<JobState>, limit| {
            let mut pages = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .list_jobs(
                        &JobFilter {
                            states: states.clone(),
                            kind: Some(kind.into()),
                        },
                        PageRequest {
                            before_id: cursor,
                            limit,
                        },
                    )
                    .unwrap();
                assert!(page.items.len() <= limit as usize);
                assert!(page.items.iter().all(|job| job.kind == kind));
                pages.push(page.items.iter().map(|job| job.id).collect::<Vec<_>>());
                cursor = page.next_cursor;
                if cursor.is_none() {
                    return pages;
                }
                assert!(pages.len() < 100, "the cursor must go down");
            }
        };
        let pages = list_all("rare", vec![], 2);
        assert_eq!(
            pages,
            vec![vec![rare[2]], vec![rare[1]], vec![rare[0]]],
            "one window per page, newest first"
        );
        let queued = list_all("rare", vec![JobState::Queued], 2);
        assert_eq!(queued.concat(), vec![rare[2], rare[1]]);
        let both = list_all("rare", vec![JobState::Succeeded, JobState::Queued], 50);
        assert_eq!(both.concat(), vec![rare[2], rare[1], rare[0]]);
        // A kind with no jobs: nothing, in as many windows as the ids span.
        let none = list_all("nothing", vec![], 50);
        assert_eq!(none.len(), 3);
        assert!(none.concat().is_empty());
        // A common kind fills each page from its window.
        let first = store
            .list_jobs(
                &JobFilter {
                    states: vec![],
                    kind: Some("common".into()),
                },
                PageRequest {
                    before_id: None,
                    limit: 50,
                },
            )
            .unwrap();
        assert_eq!(first.items.len(), 50);
        assert_eq!(first.items[0].id, jobs);
        assert_eq!(first.next_cursor, Some(first.items[49].id));
    }
}
