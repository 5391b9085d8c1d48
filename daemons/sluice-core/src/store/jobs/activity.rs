//! What happened to jobs after a point, read incrementally for counters (sluice-web's
//! `/metrics`): jobs created and state transitions since a cursor, each read as a range of
//! primary keys, so a reader that looks once a second reads only that second's rows.
//!
//! This works because ids only grow in commit order: SQLite has one writer at a time and a row
//! takes the largest id plus one, so once a reader has seen id N every row committed later has
//! a larger id. Retention deletes only old rows, never the newest, so it does not move the
//! largest id back.

use rusqlite::params;

use super::{JobError, JobState, parse_state_column};
use crate::store::Store;

/// Where an incremental read stopped: the last job and the last history row already counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivityCursor {
    pub last_job_id: i64,
    pub last_history_id: i64,
}

/// Jobs created and transitions made after an [`ActivityCursor`], and the cursor to read on
/// from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobActivity {
    pub cursor: ActivityCursor,
    /// Jobs created, as (kind, how many).
    pub created: Vec<(String, u64)>,
    pub transitions: Vec<ActivityTransition>,
}

/// One state change of a job (progress and result steps are not transitions).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityTransition {
    pub kind: String,
    pub from_state: Option<JobState>,
    pub to_state: JobState,
    /// For a transition out of `running`: how long that attempt ran, in milliseconds.
    pub attempt_ms: Option<i64>,
}

impl Store {
    /// The cursor of "now": everything already in the database counts as seen.
    pub fn activity_cursor(&self) -> Result<ActivityCursor, JobError> {
        Ok(self.connection().query_row(
            "SELECT coalesce((SELECT max(id) FROM jobs), 0),
                    coalesce((SELECT max(id) FROM job_history), 0)",
            [],
            |row| {
                Ok(ActivityCursor {
                    last_job_id: row.get(0)?,
                    last_history_id: row.get(1)?,
                })
            },
        )?)
    }

    /// Jobs created and transitions made after `cursor`, at most `max_transitions` of them
    /// (the cursor then stops at the last one read, and the next call goes on from there).
    pub fn job_activity_since(
        &self,
        cursor: ActivityCursor,
        max_transitions: u32,
    ) -> Result<JobActivity, JobError> {
        let now = self.activity_cursor()?;
        let connection = self.connection();
        let mut created = Vec::new();
        {
            let mut statement = connection.prepare_cached(
                "SELECT kind, count(*) FROM jobs WHERE id > ?1 AND id <= ?2 GROUP BY kind",
            )?;
            let rows = statement
                .query_map(params![cursor.last_job_id, now.last_job_id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
                })?;
            for row in rows {
                created.push(row?);
            }
        }
        // A transition is a row without `event`; the attempt it ends started at the job's
        // latest transition into `running` before it (found through job_history_by_job).
        let mut statement = connection.prepare_cached(
            "SELECT h.id, j.kind, h.from_state, h.to_state,
                    CASE WHEN h.from_state = 'running' THEN h.at - (
                        SELECT max(p.at) FROM job_history p
                        WHERE p.job_id = h.job_id AND p.id < h.id
                          AND p.to_state = 'running' AND p.event IS NULL
                          AND p.from_state IS NOT 'running') END
             FROM job_history h JOIN jobs j ON j.id = h.job_id
             WHERE h.id > ?1 AND h.id <= ?2 AND h.event IS NULL
             ORDER BY h.id LIMIT ?3",
        )?;
        let mut transitions = Vec::new();
        let mut last_history_id = now.last_history_id;
        let rows = statement.query_map(
            params![cursor.last_history_id, now.last_history_id, max_transitions],
            |row| {
                let from_state: Option<String> = row.get(2)?;
                Ok((
                    row.get::<_, i64>(0)?,
                    ActivityTransition {
                        kind: row.get(1)?,
                        from_state: from_state.as_deref().map(parse_state_column).transpose()?,
                        to_state: parse_state_column(&row.get::<_, String>(3)?)?,
                        attempt_ms: row.get(4)?,
                    },
                ))
            },
        )?;
        for row in rows {
            let (id, transition) = row?;
            transitions.push(transition);
            if transitions.len() == max_transitions as usize {
                last_history_id = id;
            }
        }
        Ok(JobActivity {
            cursor: ActivityCursor {
                last_job_id: now.last_job_id,
                last_history_id,
            },
            created,
            transitions,
        })
    }

    /// How many jobs there are of each kind in each state (only the pairs that have any),
    /// ordered by kind and state: the backlog counted from its rows, the finished jobs from
    /// the counts the triggers keep (see `JOB_COUNTS_BY_KIND_SQL`), so the cost follows the
    /// backlog, not the history (sluice-web also caches the answer for a second).
    pub fn job_counts_by_kind(&self) -> Result<Vec<(String, JobState, u64)>, JobError> {
        let mut statement = self
            .connection()
            .prepare_cached(super::JOB_COUNTS_BY_KIND_SQL)?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                parse_state_column(&row.get::<_, String>(1)?)?,
                row.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::Durability;
    use crate::store::jobs::{Claimant, Completion, NewJob, Outcome};
    use crate::store::tests::open_temp;

    #[test]
    fn activity_counts_each_job_and_transition_once() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        store.enqueue(&NewJob::new("noop", json!({}))).unwrap();
        let start = store.activity_cursor().unwrap();
        store.enqueue(&NewJob::new("noop", json!({}))).unwrap();
        store.enqueue(&NewJob::new("ingest", json!({}))).unwrap();
        let claimed = store
            .claim_jobs(
                &Claimant::named("worker-1"),
                &["noop"],
                10,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let completions: Vec<Completion> = claimed
            .iter()
            .map(|job| Completion {
                id: job.id,
                lease_token: job.lease_token.clone(),
                outcome: Outcome::Succeeded { result: json!({}) },
            })
            .collect();
        store.complete_jobs(&completions).unwrap();
        let activity = store.job_activity_since(start, 1000).unwrap();
        let mut created = activity.created.clone();
        created.sort();
        assert_eq!(created, [("ingest".to_owned(), 1), ("noop".to_owned(), 1)]);
        let claims = activity
            .transitions
            .iter()
            .filter(|transition| transition.to_state == JobState::Running)
            .count();
        let successes: Vec<&ActivityTransition> = activity
            .transitions
            .iter()
            .filter(|transition| transition.to_state == JobState::Succeeded)
            .collect();
        assert_eq!(claims, 2);
        assert_eq!(successes.len(), 2);
        assert!(
            successes
                .iter()
                .all(|success| success.attempt_ms >= Some(0))
        );
        // Read on from the returned cursor: nothing twice.
        let again = store.job_activity_since(activity.cursor, 1000).unwrap();
        assert!(again.created.is_empty() && again.transitions.is_empty());
        // A bounded read stops where it stopped and the next one goes on.
        let first = store.job_activity_since(start, 3).unwrap();
        let rest = store.job_activity_since(first.cursor, 1000).unwrap();
        assert_eq!(first.transitions.len() + rest.transitions.len(), 4);
        assert!(rest.created.is_empty());
        let counts = store.job_counts_by_kind().unwrap();
        assert!(counts.contains(&("noop".to_owned(), JobState::Succeeded, 2)));
        assert!(counts.contains(&("ingest".to_owned(), JobState::Queued, 1)));
    }
}
