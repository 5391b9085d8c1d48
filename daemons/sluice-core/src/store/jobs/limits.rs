//! Queue limits: how many jobs of a kind are pending (queued, retrying or running), read from
//! the count the database keeps per kind, and enqueueing only while that is below a limit. The seed service refused work
//! beyond 100 pending jobs; here `[scraper] max_pending` refuses a download and `[ingest]
//! max_pending` makes the monitor hold a file (see `files.rs`).
//!
//! **The count and the insert are one `BEGIN IMMEDIATE` transaction**: the write lock is
//! taken before counting, so two submitters (in any processes) cannot both see the last free
//! place and overshoot.

use rusqlite::{OptionalExtension, Transaction, params};

use super::types::validate_kind;
use super::{Enqueued, JobError, NewJob, QueueFull, insert_job};
use crate::store::{Store, now_ms};

impl Store {
    /// Adds one job when its kind has room: fewer than `max_pending` jobs of that kind are
    /// queued, retrying or running. The count and the insert are one `BEGIN IMMEDIATE`
    /// transaction, so submitters racing each other (other processes included) can never
    /// take the queue past the limit. A job whose unique key already exists is returned as it
    /// is, full queue or not: submitting it again adds nothing.
    pub fn enqueue_within_limit(
        &mut self,
        job: &NewJob,
        max_pending: u32,
    ) -> Result<Enqueued, JobError> {
        let payload = job.validate()?;
        let max_attempts = job.max_attempts.unwrap_or(self.options().max_attempts);
        self.write(|transaction| {
            if let Some(unique_key) = &job.unique_key
                && let Some(id) = transaction
                    .prepare_cached("SELECT id FROM jobs WHERE unique_key = ?1")?
                    .query_row([unique_key], |row| row.get(0))
                    .optional()?
            {
                return Ok(Enqueued { id, created: false });
            }
            require_room(transaction, &job.kind, max_pending)?;
            insert_job(transaction, job, &payload, max_attempts, now_ms())
        })
    }

    /// How many jobs of `kind` are pending (queued, retrying or running), up to `limit`: the
    /// answer is `min(pending, limit)`. For the kinds with a queue limit ([`COUNTED_KINDS`]) it
    /// is one row the database keeps (migration 10), read in constant time however many jobs
    /// are pending or finished; any other kind's jobs are counted, at most `limit` rows.
    pub fn pending_jobs(&self, kind: &str, limit: u32) -> Result<u64, JobError> {
        validate_kind(kind)?;
        Ok(count_pending(self.connection(), kind, limit)?)
    }
}

/// The kinds whose pending jobs the database counts (migration 10): those with a queue limit.
pub const COUNTED_KINDS: [&str; 2] = [
    crate::ingest::INGEST_JOB_KIND,
    crate::store::downloads::DOWNLOAD_JOB_KIND,
];

/// The SQL of [`count_pending`] for a kind in [`COUNTED_KINDS`]: one row of `job_pending`,
/// kept equal to the number of its queued, retrying and running jobs in the same transaction
/// as every change (by `insert_job` and the history trigger). Counting the jobs read up to `limit` rows of the pending
/// indexes in every transaction that recorded a file or took an upload.
const COUNT_PENDING_SQL: &str = "SELECT min(n, ?2) FROM job_pending WHERE kind = ?1";

/// The SQL of [`count_pending`] for any other kind (no queue limit uses one): each arm names
/// exactly the `WHERE` of one partial index (`jobs_claimable`: queued and retrying;
/// `jobs_leases`: running) and is pinned to it with `INDEXED BY`, and the `LIMIT` of the
/// compound stops the count at the limit, so it reads at most `limit` rows of those indexes.
const COUNT_PENDING_BY_ROWS_SQL: &str = "SELECT count(*) FROM (
         SELECT 1 FROM jobs INDEXED BY jobs_claimable
         WHERE state IN ('queued', 'retrying') AND kind = ?1
         UNION ALL
         SELECT 1 FROM jobs INDEXED BY jobs_leases WHERE state = 'running' AND kind = ?1
         LIMIT ?2)";

/// `min(pending jobs of kind, limit)`, on a connection or inside a caller's transaction.
fn count_pending(
    connection: &rusqlite::Connection,
    kind: &str,
    limit: u32,
) -> rusqlite::Result<u64> {
    let sql = if COUNTED_KINDS.contains(&kind) {
        COUNT_PENDING_SQL
    } else {
        COUNT_PENDING_BY_ROWS_SQL
    };
    connection
        .prepare_cached(sql)?
        .query_row(params![kind, limit], |row| row.get::<_, i64>(0))
        .map(|count| count as u64)
}

/// How many more jobs of `kind` fit under `max_pending`, inside the caller's write
/// transaction (which holds the write lock, so the answer stays true until it commits).
pub(crate) fn room_for(
    transaction: &Transaction<'_>,
    kind: &str,
    max_pending: u32,
) -> rusqlite::Result<u64> {
    Ok(u64::from(max_pending).saturating_sub(count_pending(transaction, kind, max_pending)?))
}

/// `Ok` when one more job of `kind` fits under `max_pending`, else [`QueueFull`].
pub(crate) fn require_room(
    transaction: &Transaction<'_>,
    kind: &str,
    max_pending: u32,
) -> Result<(), JobError> {
    if room_for(transaction, kind, max_pending)? > 0 {
        return Ok(());
    }
    Err(JobError::QueueFull(QueueFull {
        kind: kind.to_owned(),
        pending: u64::from(max_pending),
        limit: max_pending,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::tests::open_temp;
    use crate::store::{Claimant, Durability, JobState, LeaseHolder};

    const LEASE: Duration = Duration::from_secs(30);

    fn job(kind: &str) -> NewJob {
        NewJob::new(kind, json!({}))
    }

    #[test]
    fn pending_counts_queued_retrying_and_running_of_one_kind_up_to_the_limit() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        for _ in 0..6 {
            store.enqueue(&job("test")).unwrap();
        }
        for _ in 0..4 {
            store.enqueue(&job("other")).unwrap();
        }
        // One running, one retrying, one finished: five of the six are still pending.
        let claimed = store
            .claim_jobs(&"worker".into(), &["test"], 3, LEASE)
            .unwrap();
        assert_eq!(claimed.len(), 3);
        store
            .fail_job(claimed[1].id, &claimed[1].lease_token, "try again", true)
            .unwrap();
        store
            .succeed_job(claimed[2].id, &claimed[2].lease_token, &json!({}))
            .unwrap();
        assert_eq!(
            store.get_job(claimed[1].id).unwrap().state,
            JobState::Retrying
        );
        assert_eq!(store.pending_jobs("test", 100).unwrap(), 5);
        assert_eq!(store.pending_jobs("other", 100).unwrap(), 4);
        // Counting stops at the limit.
        assert_eq!(store.pending_jobs("test", 2).unwrap(), 2);
        assert_eq!(store.pending_jobs("test", 5).unwrap(), 5);
        assert_eq!(store.pending_jobs("none", 100).unwrap(), 0);
        assert!(matches!(
            store.pending_jobs("not a kind", 1),
            Err(JobError::InvalidArgument(_))
        ));
    }

    fn plan(store: &Store, sql: &str, kind: &str) -> String {
        let mut statement = store
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let plan: Vec<String> = statement
            .query_map(params![kind, 10], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    #[test]
    fn the_count_of_a_limited_kind_reads_one_row_and_never_the_jobs() {
        let (_directory, store) = open_temp(Durability::Normal);
        let plan = plan(&store, COUNT_PENDING_SQL, "ingest");
        assert!(
            plan.contains("SEARCH job_pending USING PRIMARY KEY (kind=?)"),
            "{plan}"
        );
        assert!(
            !plan.contains("jobs"),
            "the count must not read jobs:\n{plan}"
        );
    }

    #[test]
    fn the_count_of_another_kind_reads_only_the_partial_indexes_of_pending_jobs() {
        let (_directory, store) = open_temp(Durability::Normal);
        let plan = plan(&store, COUNT_PENDING_BY_ROWS_SQL, "noop");
        assert!(plan.contains("INDEX jobs_claimable"), "{plan}");
        assert!(plan.contains("INDEX jobs_leases"), "{plan}");
        assert!(
            !plan.lines().any(|line| line.trim() == "SCAN jobs"),
            "the count must never scan the whole table:\n{plan}"
        );
    }

    /// The kinds the migration's SQL counts are the ones the code reads the count for.
    #[test]
    fn the_counted_kinds_are_the_kinds_the_schema_counts() {
        let (_directory, store) = open_temp(Durability::Normal);
        let mut kinds: Vec<String> = store
            .connection()
            .prepare("SELECT kind FROM job_pending ORDER BY kind")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut expected: Vec<String> = COUNTED_KINDS.iter().map(|kind| kind.to_string()).collect();
        expected.sort();
        kinds.sort();
        assert_eq!(kinds, expected);
    }

    /// Pending jobs per kind, in kind order.
    type PerKind = Vec<(String, i64)>;

    /// What counting the jobs says, and the per-kind counts kept.
    fn counted_and_kept(store: &Store) -> (PerKind, PerKind) {
        let read = |sql: &str| {
            let mut statement = store.connection().prepare(sql).unwrap();
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .collect::<Result<Vec<(String, i64)>, _>>()
                .unwrap()
        };
        (
            read(
                "SELECT kind, count(*) FROM jobs WHERE kind IN ('ingest', 'download')
                 AND state IN ('queued', 'retrying', 'running') GROUP BY kind ORDER BY kind",
            ),
            read("SELECT kind, n FROM job_pending WHERE n > 0 ORDER BY kind"),
        )
    }

    #[test]
    fn the_kept_counts_equal_the_pending_jobs_through_every_transition() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let holder = LeaseHolder::new(":1.7@bus").unwrap();
        let claimant = Claimant::named("worker").with_holder(holder.clone());
        let check = |store: &Store, step: &str| {
            let (counted, kept) = counted_and_kept(store);
            assert_eq!(kept, counted, "after {step}");
        };
        let mut last = Vec::new();
        for step in 0..400u32 {
            // The two counted kinds, and one that is not.
            let kind = ["ingest", "download", "noop"][(step % 3) as usize];
            let done = match step % 11 {
                0 | 1 => store.enqueue(&job(kind)).is_ok(),
                2 => store
                    .enqueue_many(&[
                        job(kind),
                        job("ingest"),
                        job("download").with_max_attempts(1),
                    ])
                    .is_ok(),
                3 => {
                    last = store
                        .claim_jobs(&claimant, &[kind, "download"], 3, LEASE)
                        .unwrap();
                    true
                }
                4 => last.pop().is_some_and(|claimed| {
                    store
                        .succeed_job(claimed.id, &claimed.lease_token, &json!({}))
                        .is_ok()
                }),
                // Retrying, or dead at the last attempt, or failed for good.
                5 => last.pop().is_some_and(|claimed| {
                    store
                        .fail_job(claimed.id, &claimed.lease_token, "no", step % 2 == 0)
                        .is_ok()
                }),
                6 => {
                    // A queued job and a running one (marked, finished by its worker).
                    let queued = store.enqueue(&job(kind)).unwrap().id;
                    store.cancel_job(queued).unwrap();
                    if let Some(claimed) = last.pop() {
                        store.cancel_job(claimed.id).unwrap();
                        store
                            .finish_cancelled(claimed.id, &claimed.lease_token)
                            .unwrap();
                    }
                    true
                }
                7 => last.pop().is_some_and(|claimed| {
                    store.release_job(claimed.id, &claimed.lease_token).is_ok()
                }),
                8 => {
                    // Every failed, dead or cancelled job back in the queue.
                    let ended: Vec<i64> = store
                        .connection()
                        .prepare(
                            "SELECT id FROM jobs WHERE state IN ('failed', 'dead', 'cancelled')",
                        )
                        .unwrap()
                        .query_map([], |row| row.get(0))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    ended.into_iter().all(|id| store.retry_job(id).is_ok())
                }
                9 => {
                    last.clear();
                    store.rescue_leases_of(&holder, "the bus said so").is_ok()
                }
                _ => {
                    // Whatever deletes jobs: finished ones by retention, a pending one by hand.
                    store
                        .apply_retention(
                            &crate::store::maintenance::RetentionPolicy::everything_older_than(
                                Duration::ZERO,
                            ),
                            now_ms() + 1,
                        )
                        .unwrap();
                    store
                        .connection()
                        .execute(
                            "DELETE FROM jobs WHERE id = (SELECT min(id) FROM jobs
                             WHERE state = 'queued' AND kind = ?1)",
                            [kind],
                        )
                        .unwrap();
                    true
                }
            };
            check(&store, &format!("step {step} ({done})"));
        }
        let (counted, _) = counted_and_kept(&store);
        assert!(
            !counted.is_empty(),
            "the run ended with pending jobs to count"
        );
        for (kind, pending) in counted {
            assert_eq!(store.pending_jobs(&kind, u32::MAX).unwrap(), pending as u64);
        }
    }

    #[test]
    fn a_jobs_kind_cannot_change() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store.enqueue(&job("ingest")).unwrap().id;
        let error = store
            .connection()
            .execute("UPDATE jobs SET kind = 'download' WHERE id = ?1", [id])
            .unwrap_err();
        assert!(error.to_string().contains("kind cannot change"), "{error}");
        assert_eq!(store.pending_jobs("ingest", 10).unwrap(), 1);
        assert_eq!(store.pending_jobs("download", 10).unwrap(), 0);
    }

    #[test]
    fn a_claim_reads_the_claimable_index_in_claim_order_without_sorting() {
        let (_directory, store) = open_temp(Durability::Normal);
        let mut statement = store
            .connection()
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                crate::store::jobs::CLAIM_SQL
            ))
            .unwrap();
        let plan: Vec<String> = statement
            .query_map(params!["w", "t", 1, 1, "[\"test\"]", 8, "h"], |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("INDEX jobs_claimable"), "{plan}");
        assert!(
            !plan.contains("TEMP B-TREE FOR ORDER BY"),
            "a claim must not sort the queued jobs:\n{plan}"
        );
    }

    #[test]
    fn a_full_queue_refuses_a_job_and_changes_nothing_until_one_finishes() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let first = store.enqueue_within_limit(&job("test"), 2).unwrap();
        store.enqueue_within_limit(&job("test"), 2).unwrap();
        // Another kind has its own limit.
        store.enqueue_within_limit(&job("other"), 2).unwrap();
        let error = store
            .enqueue_within_limit(&job("test").with_unique_key("third"), 2)
            .unwrap_err();
        let JobError::QueueFull(full) = &error else {
            panic!("expected QueueFull, got {error:?}");
        };
        assert_eq!(
            full,
            &QueueFull {
                kind: "test".into(),
                pending: 2,
                limit: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "the test queue is full: 2 test jobs are queued, retrying or running, and the limit \
             is 2; nothing was added, try again once some have finished"
        );
        assert_eq!(store.job_counts().unwrap()[&JobState::Queued], 3);

        // A job submitted again under its unique key is the one already there, full or not.
        let keyed = store
            .enqueue_within_limit(&job("other").with_unique_key("k"), 2)
            .unwrap();
        assert!(keyed.created);
        let again = store
            .enqueue_within_limit(&job("other").with_unique_key("k"), 2)
            .unwrap();
        assert_eq!((again.id, again.created), (keyed.id, false));

        // Once one ends, there is room for one more, and only one.
        let claimed = store
            .claim_jobs(&"worker".into(), &["test"], 1, LEASE)
            .unwrap();
        assert_eq!(claimed[0].id, first.id);
        store
            .succeed_job(claimed[0].id, &claimed[0].lease_token, &json!({}))
            .unwrap();
        store.enqueue_within_limit(&job("test"), 2).unwrap();
        assert!(matches!(
            store.enqueue_within_limit(&job("test"), 2),
            Err(JobError::QueueFull(_))
        ));
    }

    #[test]
    fn submitters_racing_on_two_connections_never_take_the_queue_past_its_limit() {
        const LIMIT: u32 = 25;
        const ATTEMPTS_EACH: usize = 40;
        let (directory, store) = open_temp(Durability::Normal);
        let path = store.path().to_owned();
        let options = *store.options();
        drop(store);
        let start = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|racer| {
                let (path, options, start) = (path.clone(), options, Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut store = Store::open(&path, &options).expect("second connection");
                    start.wait();
                    let mut created = 0;
                    let mut refused = 0;
                    for attempt in 0..ATTEMPTS_EACH {
                        let submitted = job("test").with_unique_key(format!("{racer}-{attempt}"));
                        match store.enqueue_within_limit(&submitted, LIMIT) {
                            Ok(enqueued) => {
                                assert!(enqueued.created);
                                created += 1;
                            }
                            Err(JobError::QueueFull(_)) => refused += 1,
                            Err(error) => panic!("racer {racer}: {error}"),
                        }
                    }
                    (created, refused)
                })
            })
            .collect();
        let results: Vec<(u32, u32)> = racers
            .into_iter()
            .map(|racer| racer.join().expect("racer"))
            .collect();
        let created: u32 = results.iter().map(|(created, _)| created).sum();
        let refused: u32 = results.iter().map(|(_, refused)| refused).sum();
        assert_eq!(created, LIMIT, "{results:?}");
        assert_eq!(refused as usize, 2 * ATTEMPTS_EACH - LIMIT as usize);
        let store = Store::open(&path, &options).unwrap();
        assert_eq!(
            store.job_counts().unwrap()[&JobState::Queued],
            u64::from(LIMIT)
        );
        drop(directory);
    }
}
