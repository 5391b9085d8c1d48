//! A job's log: its transitions and what happened while it ran (progress, result steps), in
//! one id order, for the per-job event stream (`GET /api/jobs/{id}/events`) and for
//! `sluicectl jobs watch`.
//!
//! Entries are rows of `job_history`; a transition has no `event`, an event row carries a JSON
//! object (see migration 5). The job's creation has no row: it is reported as entry 0, so a
//! reader that starts from nothing sees the job queued first, and one that resumes after 0
//! does not see it again.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::{JobError, JobState, LeaseToken, lease_lost_or_not_found, parse_state_column};
use crate::store::{Store, now_ms};

/// Most entries one read returns; a reader that got this many reads again after the last.
pub const MAX_LOG_PAGE: u32 = 1000;

/// Largest serialized step a body may record.
pub const MAX_STEP_BYTES: usize = 16 * 1024;

/// One entry of a job's log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobLogEntry {
    /// The `job_history` row id (0 for the creation): the position a reader resumes after.
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub what: JobLogEvent,
}

/// What an entry records.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum JobLogEvent {
    /// The job changed state.
    State {
        from: Option<JobState>,
        to: JobState,
        attempt: u32,
        worker: Option<String>,
        error: Option<String>,
    },
    /// Saved progress of a running job.
    Progress { fraction: f64, message: String },
    /// A result step a body recorded (its fields as the body gave them).
    Step { step: Value },
}

impl JobLogEntry {
    /// The name an event stream gives this entry (`state`, `progress`, `step`).
    pub fn name(&self) -> &'static str {
        match self.what {
            JobLogEvent::State { .. } => "state",
            JobLogEvent::Progress { .. } => "progress",
            JobLogEvent::Step { .. } => "step",
        }
    }
}

impl Store {
    /// The entries of job `id` after entry `after` (none: from its creation), oldest first, at
    /// most `limit` (1..=[`MAX_LOG_PAGE`]). An `after` beyond the newest entry returns nothing
    /// (the reader has seen everything); one from another job's log is just a position in
    /// the shared id order. `JobError::NotFound` when the job does not exist.
    pub fn job_log(
        &self,
        id: i64,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<JobLogEntry>, JobError> {
        if limit == 0 || limit > MAX_LOG_PAGE {
            return Err(JobError::InvalidArgument(format!(
                "a job log page holds 1..={MAX_LOG_PAGE} entries, asked for {limit}"
            )));
        }
        let created_at_ms: Option<i64> = self
            .connection()
            .prepare_cached("SELECT created_at FROM jobs WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        let created_at_ms = created_at_ms.ok_or(JobError::NotFound(id))?;
        let mut entries = Vec::new();
        if after.is_none_or(|after| after < 0) {
            entries.push(JobLogEntry {
                id: 0,
                at_ms: created_at_ms,
                what: JobLogEvent::State {
                    from: None,
                    to: JobState::Queued,
                    attempt: 0,
                    worker: None,
                    error: None,
                },
            });
        }
        let mut statement = self.connection().prepare_cached(
            "SELECT id, at, from_state, to_state, attempt, worker, error, event FROM job_history
             WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![id, after.unwrap_or(0).max(0), limit - entries.len() as u32],
            |row| {
                let event: Option<String> = row.get(7)?;
                let what = match event {
                    None => JobLogEvent::State {
                        from: row
                            .get::<_, Option<String>>(2)?
                            .map(|text| parse_state_column(&text))
                            .transpose()?,
                        to: parse_state_column(&row.get::<_, String>(3)?)?,
                        attempt: row.get(4)?,
                        worker: row.get(5)?,
                        error: row.get(6)?,
                    },
                    Some(text) => event_from_json(&text),
                };
                Ok(JobLogEntry {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    what,
                })
            },
        )?;
        for entry in rows {
            entries.push(entry?);
        }
        Ok(entries)
    }

    /// The newest `job_history` id, or 0: where a reader of every job's log starts.
    pub fn newest_job_log_id(&self) -> Result<i64, JobError> {
        Ok(self
            .connection()
            .prepare_cached("SELECT coalesce(max(id), 0) FROM job_history")?
            .query_row([], |row| row.get(0))?)
    }

    /// The jobs with log entries after `after`, the newest id among them (or `after`), and
    /// whether there may be more: the one query that wakes every waiter whose job changed,
    /// whatever changed it. At most `limit` entries are looked at; while there may be more,
    /// call again from the returned id.
    pub fn jobs_logged_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<i64>, i64, bool), JobError> {
        let mut statement = self.connection().prepare_cached(
            "SELECT id, job_id FROM job_history WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut newest = after;
        let mut jobs = Vec::new();
        let rows = statement.query_map(params![after, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut read = 0u32;
        for row in rows {
            let (id, job_id) = row?;
            newest = newest.max(id);
            jobs.push(job_id);
            read += 1;
        }
        jobs.sort_unstable();
        jobs.dedup();
        Ok((jobs, newest, read == limit))
    }

    /// Records result steps of a running job, under its lease (one transaction). Each step is
    /// a JSON object of at most [`MAX_STEP_BYTES`].
    pub fn record_job_steps(
        &mut self,
        id: i64,
        lease_token: &LeaseToken,
        steps: &[Value],
    ) -> Result<(), JobError> {
        let texts = step_texts(steps)?;
        self.write(|transaction| insert_steps(transaction, id, lease_token, &texts))
    }
}

/// Checks steps and renders their log rows: each a JSON object, at most [`MAX_STEP_BYTES`].
pub(crate) fn step_texts(steps: &[Value]) -> Result<Vec<String>, JobError> {
    steps
        .iter()
        .map(|step| {
            if !step.is_object() {
                return Err(JobError::InvalidArgument(format!(
                    "a job step must be a JSON object, got {step}"
                )));
            }
            let text = json!({ "step": step }).to_string();
            if text.len() > MAX_STEP_BYTES {
                return Err(JobError::InvalidArgument(format!(
                    "a job step is {} bytes, the limit is {MAX_STEP_BYTES}",
                    text.len()
                )));
            }
            Ok(text)
        })
        .collect()
}

/// Inserts rendered steps (see [`step_texts`]) into the job's log, inside `transaction`, only
/// while `lease_token` holds the running job.
pub(crate) fn insert_steps(
    transaction: &rusqlite::Transaction<'_>,
    id: i64,
    lease_token: &LeaseToken,
    texts: &[String],
) -> Result<(), JobError> {
    let now = now_ms();
    let mut insert = transaction.prepare_cached(
        "INSERT INTO job_history (job_id, at, from_state, to_state, attempt, worker, event)
         SELECT id, ?3, state, state, attempts, lease_owner, ?4 FROM jobs
         WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
    )?;
    for text in texts {
        if insert.execute(params![id, lease_token.as_str(), now, text])? != 1 {
            return Err(lease_lost_or_not_found(transaction, id));
        }
    }
    Ok(())
}

/// The event row's JSON as an entry; a row this version cannot read (written by a newer one)
/// is shown as a step with its JSON, never dropped.
fn event_from_json(text: &str) -> JobLogEvent {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if let Some(fraction) = value.get("progress").and_then(Value::as_f64) {
        return JobLogEvent::Progress {
            fraction,
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
    }
    match value {
        Value::Object(mut object) if object.contains_key("step") => JobLogEvent::Step {
            step: object.remove("step").unwrap_or(Value::Null),
        },
        other => JobLogEvent::Step { step: other },
    }
}

/// The SQL that records a progress event under the lease, run by `report_progress` right
/// after it updated the job row.
pub(super) const INSERT_PROGRESS_EVENT: &str =
    "INSERT INTO job_history (job_id, at, from_state, to_state, attempt, worker, event)
     SELECT id, ?3, state, state, attempts, lease_owner,
            json_object('progress', ?4, 'message', ?5) FROM jobs
     WHERE id = ?1 AND state = 'running' AND lease_token = ?2";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::jobs::NewJob;
    use crate::store::tests::open_temp;

    #[test]
    fn a_jobs_log_holds_transitions_progress_and_steps_in_one_order() {
        let (_directory, mut store) = open_temp(crate::store::Durability::Normal);
        let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let job = store
            .claim_jobs(&"w".into(), &["test"], 1, Duration::from_secs(30))
            .unwrap()
            .remove(0);
        store
            .report_progress(id, &job.lease_token, 0.5, "half way")
            .unwrap();
        store
            .record_job_steps(
                id,
                &job.lease_token,
                &[json!({ "page": 1 }), json!({ "page": 2 })],
            )
            .unwrap();
        store.succeed_job(id, &job.lease_token, &json!({})).unwrap();

        let log = store.job_log(id, None, MAX_LOG_PAGE).unwrap();
        let names: Vec<&str> = log.iter().map(JobLogEntry::name).collect();
        assert_eq!(
            names,
            ["state", "state", "progress", "step", "step", "state"]
        );
        assert_eq!(log[0].id, 0, "the creation is entry 0");
        assert!(
            log.windows(2).all(|pair| pair[0].id < pair[1].id),
            "{log:?}"
        );
        assert_eq!(
            log[2].what,
            JobLogEvent::Progress {
                fraction: 0.5,
                message: "half way".into()
            }
        );
        assert_eq!(
            log[4].what,
            JobLogEvent::Step {
                step: json!({ "page": 2 })
            }
        );
        // The history of transitions is unchanged by the events between them.
        assert_eq!(store.job_history(id).unwrap().len(), 3);

        // Resuming after an entry gives what came after it; after the last, nothing.
        let rest = store.job_log(id, Some(log[2].id), MAX_LOG_PAGE).unwrap();
        assert_eq!(rest, log[3..].to_vec());
        assert!(store.job_log(id, Some(log[5].id), 10).unwrap().is_empty());
        // A page limit holds, and resuming from 0 skips only the creation.
        assert_eq!(store.job_log(id, None, 2).unwrap(), log[..2].to_vec());
        assert_eq!(
            store.job_log(id, Some(0), MAX_LOG_PAGE).unwrap(),
            log[1..].to_vec()
        );
        assert!(matches!(
            store.job_log(id, None, 0),
            Err(JobError::InvalidArgument(_))
        ));
        assert!(matches!(
            store.job_log(id + 1, None, 10),
            Err(JobError::NotFound(_))
        ));

        // The catch-up query of waiters names the job once, with the newest id.
        let (jobs, newest, more) = store.jobs_logged_after(0, 100).unwrap();
        assert_eq!((jobs, newest, more), (vec![id], log[5].id, false));
        assert_eq!(store.newest_job_log_id().unwrap(), log[5].id);
    }

    #[test]
    fn steps_need_the_lease_and_must_be_small_objects() {
        let (_directory, mut store) = open_temp(crate::store::Durability::Normal);
        let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let job = store
            .claim_jobs(&"w".into(), &["test"], 1, Duration::from_secs(30))
            .unwrap()
            .remove(0);
        assert!(matches!(
            store.record_job_steps(id, &job.lease_token, &[json!("text")]),
            Err(JobError::InvalidArgument(_))
        ));
        let big = json!({ "text": "x".repeat(MAX_STEP_BYTES) });
        assert!(matches!(
            store.record_job_steps(id, &job.lease_token, &[big]),
            Err(JobError::InvalidArgument(_))
        ));
        store.cancel_job(id).unwrap();
        store.finish_cancelled(id, &job.lease_token).unwrap();
        assert!(matches!(
            store.record_job_steps(id, &job.lease_token, &[json!({ "late": true })]),
            Err(JobError::LeaseLost { .. })
        ));
        let log = store.job_log(id, None, MAX_LOG_PAGE).unwrap();
        assert!(log.iter().all(|entry| entry.name() == "state"), "{log:?}");
    }
}
