//! Care of the database: retention (finished work older than the configured ages is deleted),
//! `PRAGMA optimize`, WAL checkpoints, integrity and foreign-key checks, online backups and
//! `VACUUM`. `sluicectl db …` and `sluice-maintenance.timer` run these.
//!
//! The rules this module keeps:
//! - **Retention never touches documents, their text or their files**, and never a job that
//!   is queued, running or retrying, nor a finished job that a file still waiting for ingest
//!   (`files.state = 'detected'`) points at: deleting it would leave that file looking held,
//!   and the monitor would queue it again.
//! - **Retention deletes in small batches** ([`RETENTION_BATCH`] rows per transaction), so the
//!   daemons' writes wait at most one short transaction while it runs.
//! - **A backup is consistent and complete or absent**: SQLite's online backup copies one
//!   read snapshot (the daemons keep writing meanwhile) into `<file>.partial` beside the target,
//!   which is synced and renamed over the target only when the copy is whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use super::{Store, StoreError, duration_ms};

/// Rows deleted per transaction.
pub const RETENTION_BATCH: u32 = 5000;

/// How long finished work is kept (see `[retention]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub succeeded_jobs: Duration,
    pub failed_jobs: Duration,
    pub history: Duration,
    pub finished_downloads: Duration,
}

#[cfg(test)]
impl RetentionPolicy {
    /// The same age for everything the retention deletes.
    pub(crate) fn everything_older_than(age: Duration) -> RetentionPolicy {
        RetentionPolicy {
            succeeded_jobs: age,
            failed_jobs: age,
            history: age,
            finished_downloads: age,
        }
    }
}

/// What one retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub succeeded_jobs: u64,
    pub failed_jobs: u64,
    pub history_entries: u64,
    pub downloads: u64,
}

/// What `PRAGMA wal_checkpoint(TRUNCATE)` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// A reader or writer kept the checkpoint from finishing (it is complete up to there).
    pub busy: bool,
    /// Pages in the WAL, and how many of them are now in the database file.
    pub wal_pages: i64,
    pub checkpointed_pages: i64,
}

impl Store {
    /// Deletes finished work older than `policy` says, as of `now_ms`, in batches; see the
    /// module's rules for what is never deleted.
    pub fn apply_retention(
        &mut self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        let cutoff = |age: Duration| now_ms.saturating_sub(duration_ms(age));
        let mut report = RetentionReport {
            downloads: self.delete_in_batches(
                "DELETE FROM downloads WHERE id IN (
                     SELECT id FROM downloads
                     WHERE state IN ('succeeded', 'failed', 'cancelled') AND updated_at < ?1
                     LIMIT ?2)",
                cutoff(policy.finished_downloads),
            )?,
            ..RetentionReport::default()
        };
        // Jobs a file waiting for ingest points at stay; read once, so the deletes below need
        // no scan of `files` per job.
        self.write(|transaction| {
            transaction.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS retention_kept (job_id INTEGER PRIMARY KEY);
                 DELETE FROM temp.retention_kept;
                 INSERT OR IGNORE INTO temp.retention_kept
                     SELECT job_id FROM files WHERE state = 'detected' AND job_id IS NOT NULL;",
            )?;
            Ok::<_, StoreError>(())
        })?;
        report.succeeded_jobs = self.delete_in_batches(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state = 'succeeded' AND coalesce(finished_at, updated_at) < ?1
                   AND id NOT IN (SELECT job_id FROM temp.retention_kept)
                 LIMIT ?2)",
            cutoff(policy.succeeded_jobs),
        )?;
        report.failed_jobs = self.delete_in_batches(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state IN ('failed', 'dead', 'cancelled')
                   AND coalesce(finished_at, updated_at) < ?1
                   AND id NOT IN (SELECT job_id FROM temp.retention_kept)
                 LIMIT ?2)",
            cutoff(policy.failed_jobs),
        )?;
        report.history_entries = self.delete_in_batches(
            "DELETE FROM job_history WHERE id IN (
                 SELECT job_history.id FROM job_history JOIN jobs ON jobs.id = job_history.job_id
                 WHERE job_history.at < ?1
                   AND jobs.state IN ('succeeded', 'failed', 'dead', 'cancelled')
                 LIMIT ?2)",
            cutoff(policy.history),
        )?;
        self.connection()
            .execute_batch("DROP TABLE IF EXISTS temp.retention_kept")?;
        Ok(report)
    }

    /// Runs a `DELETE … LIMIT ?2` with cutoff `?1` until it deletes nothing; one transaction
    /// per batch. Returns the rows deleted.
    fn delete_in_batches(&mut self, sql: &str, cutoff: i64) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        loop {
            let batch = self.write(|transaction| {
                Ok::<_, StoreError>(
                    transaction
                        .prepare_cached(sql)?
                        .execute(params![cutoff, RETENTION_BATCH])?,
                )
            })?;
            deleted += batch as u64;
            if batch < RETENTION_BATCH as usize {
                return Ok(deleted);
            }
        }
    }

    /// `PRAGMA optimize`: lets SQLite refresh the statistics its query planner uses.
    pub fn optimize(&self) -> Result<(), StoreError> {
        self.connection().execute_batch("PRAGMA optimize")?;
        Ok(())
    }

    /// Copies the WAL into the database file and truncates it, as far as readers allow.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        Ok(self
            .connection()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok(Checkpoint {
                    busy: row.get::<_, i64>(0)? != 0,
                    wal_pages: row.get(1)?,
                    checkpointed_pages: row.get(2)?,
                })
            })?)
    }

    /// `PRAGMA foreign_key_check`: one line per row whose reference is broken; empty is
    /// healthy.
    pub fn foreign_key_check(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self.connection().prepare("PRAGMA foreign_key_check")?;
        let lines = statement
            .query_map([], |row| {
                Ok(format!(
                    "{} row {} refers to a missing {} row (constraint {})",
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?
                        .map_or_else(|| "?".to_owned(), |id| id.to_string()),
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines)
    }

    /// `VACUUM`: rewrites the database file without its free pages. Waits for the write
    /// lock like any writer.
    pub fn vacuum(&self) -> Result<(), StoreError> {
        self.connection().execute_batch("VACUUM")?;
        Ok(())
    }

    /// Writes a consistent copy of the database to `target` with SQLite's online backup
    /// (the daemons may keep writing), through `<target>.partial`, synced and renamed when
    /// whole; the partial file is removed on any failure. Returns the size of the copy.
    pub fn backup_to(&self, target: &Path) -> Result<u64, BackupError> {
        let partial = partial_path(target);
        let result = self.backup_through(&partial, target);
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    fn backup_through(&self, partial: &Path, target: &Path) -> Result<u64, BackupError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| BackupError::Io { what, path, source }
        };
        if target.exists() {
            return Err(BackupError::Exists(target.to_path_buf()));
        }
        // A stale partial file of an interrupted backup is ours to replace.
        match std::fs::remove_file(partial) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("remove the stale", partial)(error)),
        }
        {
            let mut destination = Connection::open_with_flags(
                partial,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|source| BackupError::Sqlite {
                path: partial.to_path_buf(),
                source,
            })?;
            let backup = rusqlite::backup::Backup::new(self.connection(), &mut destination)
                .map_err(|source| BackupError::Sqlite {
                    path: partial.to_path_buf(),
                    source,
                })?;
            // All pages in one step: one read snapshot of the source, so the copy is
            // consistent however much the daemons write meanwhile.
            loop {
                let step = backup.step(-1).map_err(|source| BackupError::Sqlite {
                    path: partial.to_path_buf(),
                    source,
                })?;
                match step {
                    rusqlite::backup::StepResult::Done => break,
                    // A writer held a lock the copy needs for a moment: try again.
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(backup);
            // The copy is a plain rollback-journal database: one file, nothing beside it.
            destination
                .pragma_update(None, "journal_mode", "DELETE")
                .map_err(|source| BackupError::Sqlite {
                    path: partial.to_path_buf(),
                    source,
                })?;
        }
        let file = std::fs::File::open(partial).map_err(io("open", partial))?;
        file.sync_all().map_err(io("sync", partial))?;
        let size = file.metadata().map_err(io("inspect", partial))?.len();
        std::fs::rename(partial, target).map_err(io("rename into place", target))?;
        if let Some(folder) = target
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
        {
            std::fs::File::open(folder)
                .and_then(|folder| folder.sync_all())
                .map_err(io("sync the folder of", target))?;
        }
        Ok(size)
    }
}

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

/// Why a backup was not made. No partial file is left in any case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; choose a new file (a backup never replaces one)")]
    Exists(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the backup {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl BackupError {
    /// Whether the target's file system is full (or the quota used up).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            BackupError::Io { source, .. } => crate::beneath::is_out_of_space(source),
            BackupError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            BackupError::Exists(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::WatchMode;
    use crate::store::jobs::{JobState, NewJob};
    use crate::store::now_ms;
    use crate::store::tests::open_temp;
    use crate::store::{DetectedFile, Durability};

    const LEASE: Duration = Duration::from_secs(30);

    fn policy(age: Duration) -> RetentionPolicy {
        RetentionPolicy::everything_older_than(age)
    }

    #[test]
    fn retention_deletes_old_finished_jobs_and_keeps_pending_ones_and_documents() {
        let (directory, mut store) = open_temp(Durability::Normal);
        let jobs: Vec<i64> = (0..7)
            .map(|index| {
                store
                    .enqueue(&NewJob::new("test", json!({ "i": index })))
                    .unwrap()
                    .id
            })
            .collect();
        let claimed = store.claim_jobs(&"w".into(), &["test"], 4, LEASE).unwrap();
        store
            .succeed_job(claimed[0].id, &claimed[0].lease_token, &json!({}))
            .unwrap();
        store
            .succeed_job(claimed[1].id, &claimed[1].lease_token, &json!({}))
            .unwrap();
        store
            .fail_job(claimed[2].id, &claimed[2].lease_token, "broken", false)
            .unwrap();
        // claimed[3] stays running; jobs[4..] stay queued; one of them is cancelled.
        store.cancel_job(jobs[6]).unwrap();
        // A file waiting for ingest whose (cancelled) job must not vanish under it.
        let root = directory.path().join("inbox");
        let detected = store
            .record_detected_files(
                &[DetectedFile {
                    watch_root: root.clone(),
                    path: root.join("waiting.txt"),
                    mode: WatchMode::Consume,
                    size: 1,
                    mtime_ns: 1,
                    inode: 1,
                }],
                5,
                100,
            )
            .unwrap();
        let file_job = detected[0].job_id.unwrap();
        store.cancel_job(file_job).unwrap();

        // Nothing is old enough yet.
        let now = now_ms();
        let report = store
            .apply_retention(&policy(Duration::from_secs(3600)), now)
            .unwrap();
        assert_eq!(report, RetentionReport::default());
        // An hour later, everything finished is old enough.
        let later = now + 3_600_000 + 1;
        let report = store
            .apply_retention(&policy(Duration::from_secs(3600)), later)
            .unwrap();
        assert_eq!(report.succeeded_jobs, 2, "{report:?}");
        assert_eq!(report.failed_jobs, 2, "{report:?}");
        let counts = store.job_counts().unwrap();
        assert_eq!(counts[&JobState::Running], 1);
        assert_eq!(counts[&JobState::Queued], 2);
        assert_eq!(
            counts[&JobState::Cancelled],
            1,
            "the waiting file's job stays"
        );
        assert_eq!(store.get_job(file_job).unwrap().state, JobState::Cancelled);
        assert!(store.get_job(claimed[0].id).is_err());
        assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_owned()]);
        assert!(store.foreign_key_check().unwrap().is_empty());
        // A second run finds nothing more.
        let again = store
            .apply_retention(&policy(Duration::from_secs(3600)), later)
            .unwrap();
        assert_eq!(again, RetentionReport::default());
    }

    #[test]
    fn history_of_finished_jobs_goes_before_the_jobs_do() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
        let job = store
            .claim_jobs(&"w".into(), &["test"], 1, LEASE)
            .unwrap()
            .remove(0);
        store.succeed_job(id, &job.lease_token, &json!({})).unwrap();
        let mut ages = policy(Duration::from_secs(10 * 24 * 3600));
        ages.history = Duration::from_secs(1);
        let report = store.apply_retention(&ages, now_ms() + 2000).unwrap();
        assert_eq!(report.history_entries, 2, "{report:?}");
        assert_eq!(report.succeeded_jobs, 0);
        assert_eq!(store.get_job(id).unwrap().state, JobState::Succeeded);
    }

    #[test]
    fn a_backup_is_a_whole_database_or_nothing() {
        let (directory, mut store) = open_temp(Durability::Normal);
        for index in 0..100 {
            store
                .enqueue(&NewJob::new("test", json!({ "i": index })))
                .unwrap();
        }
        let target = directory.path().join("copy.db");
        let size = store.backup_to(&target).unwrap();
        assert!(size > 0);
        assert!(!directory.path().join("copy.db.partial").exists());
        let copy = Connection::open(&target).unwrap();
        let jobs: i64 = copy
            .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(jobs, 100);
        // Never over an existing file.
        assert!(matches!(
            store.backup_to(&target),
            Err(BackupError::Exists(_))
        ));
        // A folder that does not exist: a clear error and no partial file.
        let nowhere = directory.path().join("missing/copy.db");
        let error = store.backup_to(&nowhere).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
        assert!(!directory.path().join("missing").exists());
    }
}
