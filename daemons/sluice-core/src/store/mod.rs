//! The SQLite store: the one database that is both sluice's shared status and its durable job
//! queue. Only this module (and its children) runs SQL.
//!
//! Every process opens its own `Store` (one connection) on the same file. The database runs in
//! WAL mode so readers never block the writer; writes start with `BEGIN IMMEDIATE` so that two
//! writers never deadlock on a lock upgrade, and `busy_timeout` makes a writer wait its turn
//! instead of failing. Durability is a configuration choice (`Durability`), documented with its
//! loss window.

pub mod bundles;
pub mod documents;
pub mod downloads;
pub mod files;
pub mod jobs;
pub mod maintenance;
mod migrations;
pub mod sources;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

pub use bundles::{Bundle, BundleState, BundleVerdict, CreatedBundle};
pub use documents::{
    Document, DocumentError, DocumentFilter, DocumentHit, IngestFinished, IngestRecord, NewDocument,
};
pub use downloads::{
    CreatedDownload, Download, DownloadError, DownloadFilter, DownloadOutcome, DownloadProgress,
    DownloadState, NewDownload,
};
pub use files::{
    DetectedFile, Detection, FileError, FileFilter, FileRecord, FileState, GoneFile, HeldFiles,
    INGEST_JOB_KIND,
};
pub use jobs::{
    Claimant, ClaimedJob, Completion, Enqueued, Heartbeat, Job, JobError, JobFilter, JobState,
    JobTransition, LeaseHolder, LeaseToken, NewJob, Outcome, Page, PageRequest, QueueFull,
    RescuedJob, RetryPolicy,
};
pub use migrations::MIGRATIONS;
pub use sources::{
    RecordedItems, SourceCheck, SourceDefinition, SourceError, SourceItem, SourceStatus,
    SourceSync, Validators,
};

/// How much of the recent past survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: every acknowledged change survives a power loss.
    Full,
    /// `synchronous=NORMAL`: every acknowledged change survives a crash of any process; a
    /// power cut may roll back the last commits (the monitor's reconcile and download resume
    /// recover them).
    Normal,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

/// How to open the store; built from the `[store]` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub durability: Durability,
    /// How long a writer waits for the write lock before giving up with `Busy`.
    pub busy_timeout: Duration,
    /// Backoff between attempts of a job that failed with a retryable error.
    pub retry: RetryPolicy,
    /// Attempts of a job whose submitter names none (`[jobs] max_attempts`).
    pub max_attempts: u32,
}

/// Errors of the store itself (opening, schema, SQLite). Job-level errors are `JobError`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "SQLite {found} lacks the WAL-reset fix; sluice needs 3.51.3 or later (or the 3.50.7 / 3.44.6 backports)"
    )]
    SqliteTooOld { found: String },
    #[error(
        "database {path} has schema version {found}, newer than this build understands ({supported}); upgrade sluice"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database migration to version {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} stays in journal mode {mode}: sluice needs WAL (an in-memory database, or a file system without shared memory?)"
    )]
    NotWal { path: PathBuf, mode: String },
    #[error("database is busy: another process held the write lock longer than the busy timeout")]
    Busy(#[source] rusqlite::Error),
    /// `SQLITE_FULL`: the write-ahead log could not grow. Nothing of the transaction is
    /// committed and the database stays intact; the same write succeeds once space is freed.
    #[error("the disk holding the database is full; nothing was written ({0})")]
    Full(#[source] rusqlite::Error),
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl StoreError {
    /// Whether the write failed only because the disk is full: worth waiting for, not a
    /// reason to give up on the work.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StoreError::Full(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy(error)
            }
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(error),
            _ => StoreError::Sqlite(error),
        }
    }
}

/// One connection to the sluice database. `Send` but not `Sync`: a daemon keeps one per thread
/// (or behind a mutex) and runs its queries on a blocking thread.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: PathBuf,
    options: StoreOptions,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, checks the SQLite library, sets the
    /// pragmas and brings the schema up to date. Many processes may call this at once on a
    /// fresh file: exactly one of them applies each migration.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        check_sqlite_version(rusqlite::version_number(), rusqlite::version())?;
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut connection = Connection::open_with_flags(path, flags).map_err(open_error)?;
        connection
            .busy_handler(Some(wait_for_lock(options.busy_timeout)))
            .map_err(open_error)?;
        let mode = enable_wal(&connection, options.busy_timeout).map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        let synchronous = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        connection
            .execute_batch(&format!(
                "PRAGMA synchronous = {synchronous};
                 PRAGMA foreign_keys = ON;
                 PRAGMA temp_store = MEMORY;
                 PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
            ))
            .map_err(open_error)?;
        connection.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            connection,
            path: path.to_path_buf(),
            options: *options,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The schema version of the open database (the number of applied migrations).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// The applied migrations, as (version, "pid N" of the process that applied it).
    pub fn schema_history(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT version, applied_by FROM schema_history ORDER BY version")?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Runs `PRAGMA integrity_check` and returns its lines; `["ok"]` means healthy.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self.connection.prepare("PRAGMA integrity_check")?;
        let lines = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines)
    }

    /// Runs `work` inside one `BEGIN IMMEDIATE` transaction: everything it does commits
    /// together or not at all. Batching several changes into one call is how writers go
    /// fast, since each commit costs one sync of the WAL.
    pub(crate) fn write<T, E>(
        &mut self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = work(&transaction)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let supported = MIGRATIONS.len() as i64;
        // Cheap check first: an up-to-date database needs no write lock at all.
        if self.schema_version()? == supported {
            return Ok(());
        }
        let path = self.path.clone();
        let applied_by = format!("pid {}", std::process::id());
        self.write(|transaction| {
            // Re-read under the write lock: another process may have migrated meanwhile.
            let found: i64 =
                transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if found > supported {
                return Err(StoreError::SchemaTooNew {
                    path,
                    found,
                    supported,
                });
            }
            for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                let version = index as i64 + 1;
                let migration_error = |source| StoreError::Migration {
                    version,
                    name: migration.name,
                    source,
                };
                transaction
                    .execute_batch(migration.sql)
                    .map_err(migration_error)?;
                transaction
                    .execute(
                        "INSERT INTO schema_history (version, name, applied_at, applied_by)
                         VALUES (?1, ?2, ?3, ?4)",
                        rusqlite::params![version, migration.name, now_ms(), applied_by],
                    )
                    .map_err(migration_error)?;
            }
            transaction.pragma_update(None, "user_version", supported)?;
            Ok(())
        })
    }
}

/// Checkpoint the WAL into the database every this many pages (32 MiB) instead of SQLite's
/// 1000: each checkpoint writes and syncs the database file inside some writer's commit, and
/// at a thousand small commits a second the default made that stall frequent (W1's enqueue
/// rate went from 28k/s to 35k/s with this).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 8000;

/// Milliseconds since the Unix epoch: the one time unit of the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The busy handler: when another process holds the write lock, try again after a short
/// pause, for at most `timeout`. SQLite's own `busy_timeout` handler sleeps in steps of
/// 1, 2, 5, 10 … 100 ms; with several processes committing small transactions thousands of
/// times a second, those long naps (not the lock itself) would dominate every wait, so the
/// pauses here start at 20 µs and grow to at most 1 ms.
fn wait_for_lock(timeout: Duration) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut started = Instant::now();
    move |attempt| {
        if attempt == 0 {
            started = Instant::now();
        }
        if started.elapsed() >= timeout {
            return false;
        }
        let pause_micros = 20u64 << attempt.clamp(0, 6);
        std::thread::sleep(Duration::from_micros(pause_micros.min(1000)));
        true
    }
}

/// The WAL-reset bug (corruption when a checkpoint races a WAL reset) is fixed in 3.51.3 and
/// backported to 3.50.7 and 3.44.6. Anything else older is refused.
fn check_sqlite_version(number: i32, text: &str) -> Result<(), StoreError> {
    let fixed = match number {
        n if n >= 3_051_003 => true,
        n if (3_050_007..3_051_000).contains(&n) => true,
        n if (3_044_006..3_045_000).contains(&n) => true,
        _ => false,
    };
    if fixed {
        Ok(())
    } else {
        Err(StoreError::SqliteTooOld {
            found: text.to_string(),
        })
    }
}

/// Switching a fresh database to WAL needs an exclusive lock, and SQLite does not run the busy
/// handler for it; when many processes open a new file at once, retry until the timeout.
/// Returns the journal mode SQLite reports afterwards, which the caller checks.
fn enable_wal(connection: &Connection, timeout: Duration) -> rusqlite::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        {
            Ok(mode) => return Ok(mode),
            Err(error)
                if matches!(
                    error.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Counts the rows of a `SELECT state, count(*) … GROUP BY state` query; every state in
/// `all` is present, with 0 when no row has it.
fn count_by_state<State: Ord + Copy>(
    connection: &Connection,
    query: &str,
    all: impl IntoIterator<Item = State>,
    parse_state: fn(&str) -> rusqlite::Result<State>,
) -> rusqlite::Result<std::collections::BTreeMap<State, u64>> {
    let mut counts: std::collections::BTreeMap<State, u64> =
        all.into_iter().map(|state| (state, 0)).collect();
    let mut statement = connection.prepare_cached(query)?;
    let rows = statement.query_map([], |row| {
        Ok((
            parse_state(&row.get::<_, String>(0)?)?,
            row.get::<_, i64>(1)? as u64,
        ))
    })?;
    for row in rows {
        let (state, count) = row?;
        counts.insert(state, count);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options for a test store: short retry backoff, 5 attempts.
    pub(crate) fn test_options(durability: Durability, busy_timeout: Duration) -> StoreOptions {
        StoreOptions {
            durability,
            max_attempts: 5,
            busy_timeout,
            retry: RetryPolicy {
                base: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
        }
    }

    /// Regression: a database that cannot be WAL was reported as a bad parameter name.
    #[test]
    fn a_database_that_cannot_be_wal_says_so() {
        let options = test_options(Durability::Full, Duration::from_secs(1));
        let Err(error) = Store::open(Path::new(":memory:"), &options) else {
            panic!("an in-memory database cannot be WAL, yet it opened");
        };
        assert!(
            matches!(&error, StoreError::NotWal { mode, .. } if mode == "memory"),
            "{error:?}"
        );
        assert!(error.to_string().contains("needs WAL"), "{error}");
    }

    pub(crate) fn open_temp(durability: Durability) -> (tempfile::TempDir, Store) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = Store::open(
            &directory.path().join("sluice.db"),
            &StoreOptions {
                durability,
                max_attempts: 5,
                busy_timeout: Duration::from_secs(5),
                retry: RetryPolicy {
                    base: Duration::from_millis(10),
                    max: Duration::from_millis(100),
                },
            },
        )
        .expect("open store");
        (directory, store)
    }

    #[test]
    fn opens_with_wal_foreign_keys_and_the_chosen_durability() {
        for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let (_directory, store) = open_temp(durability);
            let connection = store.connection();
            let mode: String = connection
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let foreign_keys: i64 = connection
                .pragma_query_value(None, "foreign_keys", |row| row.get(0))
                .unwrap();
            assert_eq!(foreign_keys, 1);
            let synchronous: i64 = connection
                .pragma_query_value(None, "synchronous", |row| row.get(0))
                .unwrap();
            assert_eq!(synchronous, expected);
            assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_string()]);
        }
    }

    #[test]
    fn bundled_sqlite_has_the_wal_reset_fix_and_fts5() {
        check_sqlite_version(rusqlite::version_number(), rusqlite::version()).unwrap();
        let (_directory, store) = open_temp(Durability::Normal);
        store
            .connection()
            .execute(
                "INSERT INTO page_text (document_id, page, title, body) VALUES (1, 2, 'a', 'hello world')",
                [],
            )
            .unwrap();
        let hits: i64 = store
            .connection()
            .query_row(
                "SELECT count(*) FROM page_text WHERE page_text MATCH 'hello'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(hits, 1);
    }

    #[test]
    fn sqlite_versions_without_the_fix_are_refused() {
        for (number, ok) in [
            (3_051_002, false),
            (3_051_003, true),
            (3_054_001, true),
            (3_050_006, false),
            (3_050_007, true),
            (3_044_005, false),
            (3_044_006, true),
            (3_045_000, false),
            (3_046_001, false),
        ] {
            let result = check_sqlite_version(number, "x");
            assert_eq!(result.is_ok(), ok, "version {number}");
        }
        let message = check_sqlite_version(3_046_001, "3.46.1")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("3.46.1") && message.contains("3.51.3"),
            "{message}"
        );
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused_unchanged() {
        let (directory, store) = open_temp(Durability::Normal);
        store
            .connection()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        drop(store);
        let error = Store::open(
            &directory.path().join("sluice.db"),
            &test_options(Durability::Normal, Duration::from_secs(1)),
        )
        .unwrap_err();
        assert!(
            matches!(error, StoreError::SchemaTooNew { found: 999, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_writer_waits_for_the_lock_then_gives_up_at_the_busy_timeout() {
        let (directory, mut store) = open_temp(Durability::Normal);
        let path = directory.path().join("sluice.db");
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            blocker.execute_batch("COMMIT").unwrap();
        });
        // Waits out the 200ms lock (timeout is 5s) and then writes.
        store
            .write(|transaction| {
                transaction.execute_batch("CREATE TABLE waited (x)")?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        release.join().unwrap();

        let mut impatient = Store::open(
            &path,
            &test_options(Durability::Normal, Duration::from_millis(100)),
        )
        .unwrap();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = Instant::now();
        let error = impatient
            .write(|transaction| {
                transaction.execute_batch("CREATE TABLE never (x)")?;
                Ok::<_, StoreError>(())
            })
            .unwrap_err();
        assert!(matches!(error, StoreError::Busy(_)), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        blocker.execute_batch("ROLLBACK").unwrap();
    }

    /// A database as a release at schema `version` left it (WAL, the first `version`
    /// migrations), for a test to fill before a newer `Store::open` migrates it.
    fn database_at_version(path: &Path, version: usize) -> Connection {
        let connection = Connection::open(path).unwrap();
        connection
            .pragma_update(None, "journal_mode", "wal")
            .unwrap();
        for migration in &MIGRATIONS[..version] {
            connection.execute_batch(migration.sql).unwrap();
        }
        connection
            .pragma_update(None, "user_version", version as i64)
            .unwrap();
        connection
    }

    /// Migration 10 (issue 13) counts the pending ingest and download jobs a version-9 database
    /// already holds, and the queue limits read that count from then on.
    #[test]
    fn the_pending_counts_start_from_the_jobs_an_existing_database_holds() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.db");
        {
            let connection = database_at_version(&path, 9);
            let states = [
                "queued",
                "retrying",
                "succeeded",
                "failed",
                "dead",
                "cancelled",
            ];
            for id in 1..=60_i64 {
                let kind = if id % 2 == 0 { "ingest" } else { "download" };
                connection
                    .execute(
                        "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, \
                         created_at, updated_at) VALUES (?1, ?2, '{}', ?3, 0, 1, 0, 0)",
                        rusqlite::params![id, kind, states[(id % 6) as usize]],
                    )
                    .unwrap();
            }
            // Two running jobs (a running job holds a lease).
            connection
                .execute(
                    "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, \
                     lease_token, created_at, updated_at) VALUES \
                     (61, 'ingest', '{}', 'running', 0, 1, 't1', 0, 0), \
                     (62, 'ingest', '{}', 'running', 0, 1, 't2', 0, 0)",
                    [],
                )
                .unwrap();
        }
        let store = Store::open(
            &path,
            &test_options(Durability::Normal, Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(store.schema_version().unwrap() as usize, MIGRATIONS.len());
        assert_eq!(
            MIGRATIONS[9].name,
            "pending jobs of the kinds with a queue limit are counted"
        );
        // Ids 1..=60: state by id % 6, kind by parity. Queued (0) and retrying (1): even ids
        // with id % 6 == 0 are ingest (10), odd ones with id % 6 == 1 are downloads (10).
        assert_eq!(store.pending_jobs("ingest", 1000).unwrap(), 10 + 2);
        assert_eq!(store.pending_jobs("download", 1000).unwrap(), 10);
        assert_eq!(store.pending_jobs("noop", 1000).unwrap(), 0);
    }

    /// Migration 9 (issue 13) applies to a database at version 8 that already holds jobs: the
    /// jobs stay, listing by state reads the new index, and each page is the newest of its
    /// states whatever the cursor.
    #[test]
    fn the_state_index_applies_to_an_existing_database_with_jobs() {
        use crate::store::jobs::{JobFilter, JobState, PageRequest};

        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.db");
        {
            // A version-8 database as the previous release left it, with jobs in it.
            let connection = database_at_version(&path, 8);
            for id in 1..=300_i64 {
                let state = match id % 3 {
                    0 => "failed",
                    1 => "succeeded",
                    _ => "cancelled",
                };
                connection
                    .execute(
                        "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, \
                         created_at, updated_at) VALUES (?1, 'noop', '{}', ?2, 0, 1, 0, 0)",
                        rusqlite::params![id, state],
                    )
                    .unwrap();
            }
        }
        let store = Store::open(
            &path,
            &test_options(Durability::Normal, Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(store.schema_version().unwrap() as usize, MIGRATIONS.len());
        assert_eq!(MIGRATIONS[8].name, "jobs are listed by state from an index");
        let plan: Vec<String> = store
            .connection()
            .prepare("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = ?1 AND id < ?2 ORDER BY id DESC LIMIT 5")
            .unwrap()
            .query_map(rusqlite::params!["failed", 100], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("jobs_by_state")),
            "{plan:?}"
        );
        let filter = JobFilter {
            states: vec![JobState::Failed, JobState::Cancelled, JobState::Failed],
            kind: None,
        };
        let first = store
            .list_jobs(
                &filter,
                PageRequest {
                    before_id: None,
                    limit: 4,
                },
            )
            .unwrap();
        let ids: Vec<i64> = first.items.iter().map(|job| job.id).collect();
        assert_eq!(ids, vec![300, 299, 297, 296]);
        assert_eq!(first.next_cursor, Some(296));
        let next = store
            .list_jobs(
                &filter,
                PageRequest {
                    before_id: first.next_cursor,
                    limit: 3,
                },
            )
            .unwrap();
        let ids: Vec<i64> = next.items.iter().map(|job| job.id).collect();
        assert_eq!(ids, vec![294, 293, 291]);
        let succeeded = store
            .list_jobs(
                &JobFilter {
                    states: vec![JobState::Succeeded],
                    kind: Some("noop".into()),
                },
                PageRequest {
                    before_id: Some(5),
                    limit: 10,
                },
            )
            .unwrap();
        let ids: Vec<i64> = succeeded.items.iter().map(|job| job.id).collect();
        assert_eq!(ids, vec![4, 1]);
        assert_eq!(succeeded.next_cursor, None);
    }

    /// Migration 11 (issue 13) applies to a database at version 9 that already holds jobs:
    /// the finished counts start from what is there, and from then on the counts the status
    /// page and `/metrics` read stay equal to a GROUP BY over the table through enqueues,
    /// claims, batched completions, failures (retried, dead, failed), releases, cancels,
    /// retries by a person, the retention's deletes and a rollback.
    #[test]
    fn the_job_counts_start_from_an_existing_database_and_stay_exact() {
        use crate::store::jobs::{Claimant, Completion, JobState, NewJob, Outcome};
        use crate::store::maintenance::RetentionPolicy;
        use serde_json::json;

        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.db");
        {
            let connection = database_at_version(&path, 9);
            for id in 1..=300_i64 {
                let (kind, state) = match id % 5 {
                    0 => ("noop", "failed"),
                    1 => ("noop", "succeeded"),
                    2 => ("ingest", "succeeded"),
                    3 => ("ingest", "dead"),
                    _ => ("ingest", "queued"),
                };
                connection
                    .execute(
                        "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, \
                         created_at, updated_at) VALUES (?1, ?2, '{}', ?3, 0, 3, 0, 0)",
                        rusqlite::params![id, kind, state],
                    )
                    .unwrap();
            }
        }
        let mut store = Store::open(
            &path,
            &test_options(Durability::Normal, Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(store.schema_version().unwrap() as usize, MIGRATIONS.len());
        let grouped = |store: &Store| -> Vec<(String, JobState, u64)> {
            let mut statement = store
                .connection()
                .prepare(
                    "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state \
                     ORDER BY kind, state",
                )
                .unwrap();
            statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        jobs::parse_state_column(&row.get::<_, String>(1)?)?,
                        row.get::<_, i64>(2)? as u64,
                    ))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let check = |store: &Store, when: &str| {
            let expected = grouped(store);
            assert_eq!(store.job_counts_by_kind().unwrap(), expected, "{when}");
            let mut by_state: std::collections::BTreeMap<JobState, u64> =
                JobState::ALL.iter().map(|state| (*state, 0)).collect();
            for (_, state, count) in &expected {
                *by_state.get_mut(state).unwrap() += count;
            }
            assert_eq!(store.job_counts().unwrap(), by_state, "{when}");
        };
        check(&store, "after the migration");
        assert_eq!(store.job_counts().unwrap()[&JobState::Queued], 60);
        assert_eq!(store.job_counts().unwrap()[&JobState::Dead], 60);

        let claimant = Claimant::named("w");
        let lease = Duration::from_secs(30);
        let mut last_try = NewJob::new("thumbnail", json!({}));
        last_try.max_attempts = Some(1);
        store.enqueue(&last_try).unwrap();
        for index in 0..5 {
            store
                .enqueue(&NewJob::new("thumbnail", json!({ "i": index })))
                .unwrap();
        }
        check(&store, "after enqueues");
        let claimed = store
            .claim_jobs(&claimant, &["thumbnail"], 6, lease)
            .unwrap();
        assert_eq!(claimed.len(), 6);
        check(&store, "after a claim");
        // One batch: a success, a retryable failure on the last attempt (dead), a retryable
        // failure with attempts left (retrying), a failure for good, a cancel, a release.
        let outcomes = [
            Outcome::Failed {
                error: "out of tries".into(),
                retryable: true,
            },
            Outcome::Succeeded { result: json!({}) },
            Outcome::Failed {
                error: "try again".into(),
                retryable: true,
            },
            Outcome::Failed {
                error: "broken".into(),
                retryable: false,
            },
            Outcome::Cancelled,
            Outcome::Released,
        ];
        let completions: Vec<Completion> = claimed
            .iter()
            .zip(outcomes)
            .map(|(job, outcome)| Completion {
                id: job.id,
                lease_token: job.lease_token.clone(),
                outcome,
            })
            .collect();
        let results = store.complete_jobs(&completions).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        check(&store, "after a batch of outcomes");
        assert_eq!(store.job_counts().unwrap()[&JobState::Dead], 61);
        let ingest = store.claim_jobs(&claimant, &["ingest"], 3, lease).unwrap();
        store
            .succeed_job(ingest[0].id, &ingest[0].lease_token, &json!({}))
            .unwrap();
        store
            .fail_job(ingest[1].id, &ingest[1].lease_token, "boom", false)
            .unwrap();
        // A running job is asked to stop (it stays running until its worker answers); a
        // queued one is cancelled at once.
        store.cancel_job(ingest[2].id).unwrap();
        let queued = 19;
        assert_eq!(store.cancel_job(queued).unwrap().state, JobState::Cancelled);
        check(&store, "after single outcomes and cancels");
        // A person retries a dead, a failed and a cancelled job: each leaves its count.
        store.retry_job(3).unwrap();
        store.retry_job(5).unwrap();
        store.retry_job(queued).unwrap();
        check(&store, "after retries");
        // The retention deletes every finished job (all are older than a moment from now).
        let report = store
            .apply_retention(
                &RetentionPolicy::everything_older_than(Duration::ZERO),
                now_ms() + 1,
            )
            .unwrap();
        assert!(
            report.succeeded_jobs > 0 && report.failed_jobs > 0,
            "{report:?}"
        );
        check(&store, "after the retention's deletes");
        for state in [JobState::Succeeded, JobState::Failed, JobState::Dead] {
            assert_eq!(store.job_counts().unwrap()[&state], 0, "{state}");
        }
        // A change rolled back leaves the counts as they were.
        let before = store.job_counts_by_kind().unwrap();
        let rolled_back: Result<(), StoreError> = store.write(|transaction| {
            transaction.execute("UPDATE jobs SET state = 'dead' WHERE kind = 'ingest'", [])?;
            Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
        });
        assert!(rolled_back.is_err());
        assert_eq!(store.job_counts_by_kind().unwrap(), before);
        check(&store, "after a rollback");
        // A job finished by hand is counted; a change of its kind is refused (migration 10)
        // and leaves the counts as they were.
        let finished = store
            .connection()
            .execute("UPDATE jobs SET state = 'succeeded' WHERE id = 24", [])
            .unwrap();
        assert_eq!(finished, 1);
        check(&store, "after a job finished by hand");
        assert!(
            store
                .connection()
                .execute("UPDATE jobs SET kind = 'renamed' WHERE id = 24", [])
                .is_err()
        );
        check(&store, "after a refused change of kind");
    }

    /// Issue 13: migration 11's counts cost an enqueue no page. W1's producer (one job per
    /// transaction) writes exactly as many pages to the WAL as without its triggers (their
    /// WHEN is false for a new queued job), and claiming and completing 64 jobs a transaction
    /// writes at most one page more per transaction (the kind's row of `job_pending`; for an
    /// ingest or download job migration 10's trigger already changes that row as the job
    /// stops being pending). Pages are counted from the
    /// WAL's size, so this does not depend on the machine's speed. (An index on (kind, id),
    /// measured the same way, wrote 1.1 pages more per enqueue: 4.3 → 5.4.)
    #[test]
    fn the_finished_counts_add_no_page_to_an_enqueue() {
        use crate::store::jobs::{Claimant, Completion, NewJob, Outcome};
        use serde_json::json;

        const JOBS: usize = 2_000;
        const BATCH: usize = 64;
        fn wal_pages(path: &Path, page_size: u64) -> u64 {
            let bytes = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
            bytes.saturating_sub(32) / (page_size + 24)
        }
        fn pages_per_job(without_triggers: bool) -> (f64, f64) {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("sluice.db");
            let mut store = Store::open(
                &path,
                &test_options(Durability::Normal, Duration::from_secs(5)),
            )
            .unwrap();
            if without_triggers {
                store
                    .connection()
                    .execute_batch(
                        "DROP TRIGGER job_finished_on_delete;
                         DROP TRIGGER jobs_history_on_transition;
                         CREATE TRIGGER jobs_history_on_transition AFTER UPDATE OF state ON jobs
                             WHEN old.state IS NOT new.state BEGIN
                             INSERT INTO job_history (job_id, at, from_state, to_state, attempt,
                                                      worker, error)
                             VALUES (new.id, new.updated_at, old.state, new.state, new.attempts,
                                     coalesce(new.lease_owner, old.lease_owner),
                                     CASE WHEN new.state IN ('retrying', 'failed', 'dead',
                                                             'cancelled') THEN new.error END);
                         END;",
                    )
                    .unwrap();
            }
            store
                .connection()
                .pragma_update(None, "wal_autocheckpoint", 0)
                .unwrap();
            let page_size = store
                .connection()
                .pragma_query_value(None, "page_size", |row| row.get::<_, i64>(0))
                .unwrap() as u64;
            let checkpoint = |store: &Store| {
                store
                    .connection()
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .unwrap();
                assert_eq!(wal_pages(&path, page_size), 0);
            };
            checkpoint(&store);
            for index in 0..JOBS {
                store
                    .enqueue(&NewJob::new("noop", json!({ "i": index })))
                    .unwrap();
            }
            let enqueue = wal_pages(&path, page_size) as f64 / JOBS as f64;
            checkpoint(&store);
            let claimant = Claimant::named("w");
            loop {
                let claimed = store
                    .claim_jobs(&claimant, &["noop"], BATCH, Duration::from_secs(30))
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                let completions: Vec<Completion> = claimed
                    .into_iter()
                    .map(|job| Completion {
                        id: job.id,
                        lease_token: job.lease_token,
                        outcome: Outcome::Succeeded { result: json!({}) },
                    })
                    .collect();
                store.complete_jobs(&completions).unwrap();
            }
            let complete = wal_pages(&path, page_size) as f64 / JOBS as f64;
            (enqueue, complete)
        }
        let (enqueue, complete) = pages_per_job(false);
        let (enqueue_before, complete_before) = pages_per_job(true);
        assert_eq!(enqueue, enqueue_before, "WAL pages per enqueue");
        // A completed noop job changes no `job_pending` row before migration 11 (migration 10
        // counts only the kinds with a queue limit), so the finished count's row is at most
        // one page more per transaction of completions.
        let transactions = JOBS.div_ceil(BATCH) as f64;
        assert!(
            complete * JOBS as f64 <= complete_before * JOBS as f64 + transactions,
            "WAL pages per job claimed and completed: {complete} against {complete_before}"
        );
    }

    #[test]
    fn a_missing_directory_is_a_clear_open_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("no/such/dir/sluice.db");
        let error = Store::open(
            &path,
            &test_options(Durability::Full, Duration::from_secs(1)),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no/such/dir/sluice.db"),
            "{error}"
        );
    }
}
