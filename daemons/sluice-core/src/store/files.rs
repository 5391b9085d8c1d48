//! The files the monitor finds in watched folders, and the ingest job queued for each version
//! of each file, recorded together.
//!
//! The rules this module keeps:
//! - **Recording a file and enqueuing its ingest job is one transaction.** A crash between the
//!   two cannot leave a recorded file without its job, or a job without its file.
//! - **A detected file is never dropped.** When the ingest queue is at its limit (`[ingest]
//!   max_pending`), a new version is still recorded (`detected`) but without a job
//!   (`job_id` NULL): it is *held*. The monitor queues held files, oldest first, through the
//!   same [`Store::record_detected_files`] once workers make room. A held file that leaves
//!   its folder is marked `gone` like any other, and a worker finishing an older version's
//!   job leaves a held row alone.
//! - **One version of one file is queued once.** A version is (size, mtime in ns, inode); the
//!   job's unique key is `ingest:<file id>:<size>:<mtime_ns>:<inode>`, and the file row is one
//!   per path, so a restart, a rescan or an event seen twice finds the existing job instead of
//!   adding another.
//! - A file that left its folder is marked `gone`, never deleted: its documents and jobs keep
//!   their history. In a consume folder a file the worker already ingested left because it was
//!   consumed, so it keeps its state; so does one whose ingest job is running, because the
//!   worker moves the file into the library before it commits the outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::{Deserialize, Serialize};

use super::jobs::{JobError, NewJob, Page, PageRequest, insert_job, room_for};
use super::{Store, StoreError, now_ms};
pub use crate::ingest::INGEST_JOB_KIND;
use crate::ingest::{IngestPayload, WatchMode};

/// Most files recorded in one transaction; callers with more split them, so that one commit
/// never holds the write lock for long.
pub const MAX_FILES_PER_BATCH: usize = 4096;

/// A regular file the monitor found ready in a watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedFile {
    pub watch_root: PathBuf,
    /// Absolute, inside `watch_root`, valid UTF-8.
    pub path: PathBuf,
    pub mode: WatchMode,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl DetectedFile {
    /// The text that names this version of the file.
    pub fn version_key(&self) -> String {
        format!("{}:{}:{}", self.size, self.mtime_ns, self.inode)
    }
}

/// What recording one detected file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub path: PathBuf,
    pub file_id: i64,
    /// The ingest job of this version (new or existing); `None` when the file is held: the
    /// ingest queue was full, so it is recorded without a job and queued later.
    pub job_id: Option<i64>,
    /// Whether this call queued the job; `false` means this version was already known, or
    /// is held.
    pub new: bool,
    /// The row was held before this call, in the same watched folder. With
    /// [`Detection::is_held`] it says how the held files changed: held now and not before
    /// is one more, held before and not now (queued) one less. The monitor keeps its count
    /// of held files that way instead of counting them again (issue 13).
    pub held_before: bool,
}

impl Detection {
    /// Recorded without a job because the ingest queue was full.
    pub fn is_held(&self) -> bool {
        self.job_id.is_none()
    }
}

/// A file [`Store::mark_gone`] marked gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneFile {
    pub id: i64,
    pub watch_root: PathBuf,
    /// It was held (detected, no job) until now.
    pub was_held: bool,
}

/// The files held back for want of room in the ingest queue, as far as one look saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldFiles {
    pub count: u64,
    /// The oldest (smallest) id among them; `None` when there are none.
    pub first_id: Option<i64>,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Found and queued for ingest, or held until the ingest queue has room (no job yet).
    Detected,
    Ingested,
    /// Its content was already in the catalogue.
    Duplicate,
    /// It left its folder.
    Gone,
    Failed,
}

impl FileState {
    pub const ALL: [FileState; 5] = [
        FileState::Detected,
        FileState::Ingested,
        FileState::Duplicate,
        FileState::Gone,
        FileState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Detected => "detected",
            FileState::Ingested => "ingested",
            FileState::Duplicate => "duplicate",
            FileState::Gone => "gone",
            FileState::Failed => "failed",
        }
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for FileState {
    type Err = FileError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FileState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| FileError::InvalidArgument(format!("unknown file state {text:?}")))
    }
}

/// One row of the `files` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    pub id: i64,
    pub watch_root: PathBuf,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub version_key: String,
    pub state: FileState,
    pub job_id: Option<i64>,
    pub document_id: Option<i64>,
    pub first_seen_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which files [`Store::list_files`] returns; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFilter {
    pub states: Vec<FileState>,
    /// Only files at or under this path.
    pub under: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("file {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for FileError {
    fn from(error: rusqlite::Error) -> Self {
        FileError::Store(StoreError::from(error))
    }
}

const FILE_COLUMNS: &str = "id, watch_root, path, size, mtime_ns, inode, version_key, state, \
     job_id, document_id, first_seen_at, updated_at";

impl Store {
    /// Records detected files and queues an ingest job for every version not seen before, all
    /// in one transaction. Returns one [`Detection`] per file, in order.
    ///
    /// A file whose current version is already recorded changes nothing (`new = false`), so a
    /// rescan costs reads only. A new version updates the row and queues a new job, as long
    /// as fewer than `max_pending` ingest jobs are queued, retrying or running (counted once,
    /// in this transaction, so no concurrent writer can overshoot); the files beyond it are
    /// recorded held (`job_id = None`), in the order given.
    pub fn record_detected_files(
        &mut self,
        files: &[DetectedFile],
        max_attempts: u32,
        max_pending: u32,
    ) -> Result<Vec<Detection>, FileError> {
        if files.len() > MAX_FILES_PER_BATCH {
            return Err(FileError::InvalidArgument(format!(
                "{} files in one batch, the limit is {MAX_FILES_PER_BATCH}",
                files.len()
            )));
        }
        let texts = files
            .iter()
            .map(validate_detected)
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        self.write(|transaction| {
            let mut room = room_for(transaction, INGEST_JOB_KIND, max_pending)?;
            files
                .iter()
                .zip(&texts)
                .map(|(file, (path, root))| {
                    record_one(transaction, file, path, root, max_attempts, &mut room, now)
                })
                .collect()
        })
    }

    /// The files held for want of room in the ingest queue (detected, without a job) in the
    /// folders `watch_roots`, oldest first, from id `from_id` on, at most `limit`.
    ///
    /// `from_id` lets the monitor, which knows the smallest held id, skip the older rows:
    /// `files` keeps a row for every file ever seen and has no index on its state.
    pub fn held_files(
        &self,
        watch_roots: &[PathBuf],
        from_id: i64,
        limit: usize,
    ) -> Result<Vec<FileRecord>, FileError> {
        let roots = roots_json(watch_roots)?;
        let mut statement = self.connection().prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE id >= ?1 AND state = 'detected' AND job_id IS NULL
               AND watch_root IN (SELECT value FROM json_each(?2))
             ORDER BY id LIMIT ?3"
        ))?;
        let files = statement
            .query_map(
                params![from_id, roots, i64::try_from(limit).unwrap_or(i64::MAX)],
                file_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(files)
    }

    /// How many files are held in the folders `watch_roots` (from id `from_id` on), and the
    /// oldest one's id.
    pub fn count_held_files(
        &self,
        watch_roots: &[PathBuf],
        from_id: i64,
    ) -> Result<HeldFiles, FileError> {
        let roots = roots_json(watch_roots)?;
        let (count, first_id) = self
            .connection()
            .prepare_cached(
                "SELECT count(*), min(id) FROM files
                 WHERE id >= ?1 AND state = 'detected' AND job_id IS NULL
                   AND watch_root IN (SELECT value FROM json_each(?2))",
            )?
            .query_row(params![from_id, roots], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
            })?;
        Ok(HeldFiles {
            count: count as u64,
            first_id,
        })
    }

    /// Marks the files at `paths` as `gone` (one transaction) and returns those that changed.
    /// Paths without a row, and rows already gone, are left alone. In a consume folder
    /// (`mode`), files already ingested or found duplicate keep their state: they left because
    /// the worker consumed them. So do detected files whose ingest job is running: the worker
    /// moves the file into the library and then commits its outcome, so a file leaving during
    /// the run is being consumed, and the outcome (ingested, duplicate or failed) decides the
    /// row's state rather than a moment of `gone` in between.
    pub fn mark_gone(
        &mut self,
        paths: &[PathBuf],
        mode: WatchMode,
    ) -> Result<Vec<GoneFile>, FileError> {
        let texts = paths
            .iter()
            .map(|path| path_text("path", path).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let kept = match mode {
            WatchMode::Consume => {
                "state IN ('gone', 'ingested', 'duplicate')
                 OR (state = 'detected' AND EXISTS (
                     SELECT 1 FROM jobs WHERE jobs.id = files.job_id AND jobs.state = 'running'))"
            }
            WatchMode::Index => "state = 'gone'",
        };
        // RETURNING sees the row as updated, but the job_id is left as it was, and of the
        // rows not gone before only a held one has none (see `record_one`).
        let sql = format!(
            "UPDATE files SET state = 'gone', updated_at = ?2
             WHERE path = ?1 AND NOT ({kept}) RETURNING id, watch_root, job_id IS NULL"
        );
        self.write(|transaction| {
            let mut changed = Vec::new();
            let mut statement = transaction.prepare_cached(&sql)?;
            for path in &texts {
                if let Some(gone) = statement
                    .query_row(params![path, now], |row| {
                        Ok(GoneFile {
                            id: row.get(0)?,
                            watch_root: PathBuf::from(row.get::<_, String>(1)?),
                            was_held: row.get(2)?,
                        })
                    })
                    .optional()?
                {
                    changed.push(gone);
                }
            }
            Ok::<_, FileError>(changed)
        })
    }

    /// The paths of files at or under `prefix` that are not `gone`, in path order: what a
    /// reconcile compares with the folder. Every one at once; a reconcile reads them a page
    /// at a time with [`Store::present_files_under_page`].
    pub fn present_files_under(&self, prefix: &Path) -> Result<Vec<PathBuf>, FileError> {
        let mut paths: Vec<PathBuf> = Vec::new();
        loop {
            let page =
                self.present_files_under_page(prefix, paths.last().map(PathBuf::as_path), 1000)?;
            let more = page.len() == 1000;
            paths.extend(page);
            if !more {
                return Ok(paths);
            }
        }
    }

    /// At most `limit` of [`Store::present_files_under`]'s paths, those after `after` (the
    /// last path of the previous page; `None` for the first). One range of the `path` index,
    /// so a reconcile of a tree of any size holds one page of paths at a time (issue 13).
    pub fn present_files_under_page(
        &self,
        prefix: &Path,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<PathBuf>, FileError> {
        let (exact, lower, upper) = prefix_bounds(prefix)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let row_path = |row: &Row<'_>| row.get::<_, String>(0).map(PathBuf::from);
        let paths = match after {
            None => self
                .connection()
                .prepare_cached(
                    "SELECT path FROM files
                     WHERE (path = ?1 OR (path >= ?2 AND path < ?3)) AND state != 'gone'
                     ORDER BY path LIMIT ?4",
                )?
                .query_map(params![exact, lower, upper, limit], row_path)?
                .collect::<Result<Vec<_>, _>>()?,
            Some(after) => {
                let after = path_text("after", after)?;
                self.connection()
                    .prepare_cached(
                        "SELECT path FROM files
                         WHERE path > ?1 AND path >= ?2 AND path < ?3 AND state != 'gone'
                         ORDER BY path LIMIT ?4",
                    )?
                    .query_map(params![after, lower, upper, limit], row_path)?
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(paths)
    }

    /// One file by id.
    pub fn get_file(&self, id: i64) -> Result<FileRecord, FileError> {
        self.connection()
            .prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1"))?
            .query_row([id], file_from_row)
            .optional()?
            .ok_or(FileError::NotFound(id))
    }

    /// The file recorded at `path`, if any.
    pub fn get_file_by_path(&self, path: &Path) -> Result<Option<FileRecord>, FileError> {
        let path = path_text("path", path)?;
        Ok(self
            .connection()
            .prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?1"))?
            .query_row([path], file_from_row)
            .optional()?)
    }

    /// The files whose current version was catalogued as document `document_id` (state
    /// `ingested` or `duplicate`), newest first: where an indexed document's bytes may still
    /// be read. There is no index on `document_id`, so this reads the whole table; it runs
    /// once per content request for a document outside the library, which is cheap next to
    /// sending the file (a later migration may add the index).
    pub fn catalogued_copies(&self, document_id: i64) -> Result<Vec<FileRecord>, FileError> {
        Ok(self
            .connection()
            .prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files
                 WHERE document_id = ?1 AND state IN ('ingested', 'duplicate')
                 ORDER BY id DESC"
            ))?
            .query_map([document_id], file_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Files, newest id first, one page at a time (`next_cursor` is the `before_id` of the
    /// next page).
    pub fn list_files(
        &self,
        filter: &FileFilter,
        page: PageRequest,
    ) -> Result<Page<FileRecord>, FileError> {
        if page.limit == 0 || page.limit > super::jobs::MAX_PAGE_SIZE {
            return Err(FileError::InvalidArgument(format!(
                "page size must be 1..={}, got {}",
                super::jobs::MAX_PAGE_SIZE,
                page.limit
            )));
        }
        let states = serde_json::to_string(
            &filter
                .states
                .iter()
                .map(|state| state.as_str())
                .collect::<Vec<_>>(),
        )
        .expect("a list of strings serializes");
        let (exact, lower, upper) = match &filter.under {
            Some(prefix) => {
                let (exact, lower, upper) = prefix_bounds(prefix)?;
                (Some(exact), Some(lower), Some(upper))
            }
            None => (None, None, None),
        };
        let mut statement = self.connection().prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files
             WHERE (?1 = '[]' OR state IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR path = ?2 OR (path >= ?3 AND path < ?4))
               AND (?5 IS NULL OR id < ?5)
             ORDER BY id DESC LIMIT ?6"
        ))?;
        let mut items = statement
            .query_map(
                params![states, exact, lower, upper, page.before_id, page.limit + 1],
                file_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|file| file.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// How many files are in each state (states without files are absent).
    ///
    /// One pass with a sum per state, not `GROUP BY state`: without an index on the state,
    /// SQLite groups through a temporary b-tree of every row, which `temp_store = MEMORY`
    /// keeps in memory (about 50 MiB at 1M files, in the monitor at every status tick; issue
    /// 13). The sums need no memory beyond the row being read.
    pub fn file_counts(&self) -> Result<BTreeMap<FileState, u64>, FileError> {
        let sums = FileState::ALL
            .iter()
            .map(|state| format!("coalesce(sum(state = '{}'), 0)", state.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let counts: Vec<i64> = self
            .connection()
            .prepare_cached(&format!("SELECT {sums} FROM files"))?
            .query_row([], |row| {
                (0..FileState::ALL.len())
                    .map(|index| row.get::<_, i64>(index))
                    .collect()
            })?;
        Ok(FileState::ALL
            .into_iter()
            .zip(counts)
            .filter(|(_, count)| *count > 0)
            .map(|(state, count)| (state, count as u64))
            .collect())
    }
}

/// Records one file; `room` is how many more ingest jobs fit in the queue, and goes down by
/// one for each job this call creates.
fn record_one(
    transaction: &Transaction<'_>,
    file: &DetectedFile,
    path: &str,
    root: &str,
    max_attempts: u32,
    room: &mut u64,
    now: i64,
) -> Result<Detection, FileError> {
    let version_key = file.version_key();
    let existing: Option<(i64, String, String, Option<i64>, String)> = transaction
        .prepare_cached(
            "SELECT id, version_key, state, job_id, watch_root FROM files WHERE path = ?1",
        )?
        .query_row([path], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let size = i64::try_from(file.size)
        .map_err(|_| FileError::InvalidArgument(format!("{path}: size out of range")))?;
    let inode = file.inode as i64;
    let mut held_before = false;
    let file_id = match existing {
        Some((id, ref known_key, ref state, Some(job_id), _)) if *known_key == version_key => {
            if state == FileState::Gone.as_str() {
                // The same version came back (moved out and in again): present once more,
                // and its job is the one it already had.
                transaction
                    .prepare_cached(
                        "UPDATE files SET state = 'detected', watch_root = ?2, updated_at = ?3
                         WHERE id = ?1",
                    )?
                    .execute(params![id, root, now])?;
            }
            return Ok(Detection {
                path: file.path.clone(),
                file_id: id,
                job_id: Some(job_id),
                new: false,
                held_before: false,
            });
        }
        Some((id, _, ref state, job_id, ref known_root)) => {
            held_before =
                state == FileState::Detected.as_str() && job_id.is_none() && known_root == root;
            // A new version, or a held one seen again (its job_id is NULL). The job_id of an
            // older version is cleared here and set again below when this version gets a job,
            // so a row without a job always means held.
            transaction
                .prepare_cached(
                    "UPDATE files SET watch_root = ?2, size = ?3, mtime_ns = ?4, inode = ?5,
                         version_key = ?6, state = 'detected', job_id = NULL, updated_at = ?7
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    root,
                    size,
                    file.mtime_ns,
                    inode,
                    version_key,
                    now
                ])?;
            id
        }
        None => transaction
            .prepare_cached(
                "INSERT INTO files (watch_root, path, size, mtime_ns, inode, version_key, state,
                                    first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'detected', ?7, ?7)
                 RETURNING id",
            )?
            .query_row(
                params![root, path, size, file.mtime_ns, inode, version_key, now],
                |row| row.get(0),
            )?,
    };
    let unique_key = format!("{INGEST_JOB_KIND}:{file_id}:{version_key}");
    let known_job: Option<i64> = transaction
        .prepare_cached("SELECT id FROM jobs WHERE unique_key = ?1")?
        .query_row([&unique_key], |row| row.get(0))
        .optional()?;
    let (job_id, new) = match known_job {
        // This version already has its job (the key guards against queueing it twice).
        Some(job_id) => (job_id, false),
        None if *room == 0 => {
            return Ok(Detection {
                path: file.path.clone(),
                file_id,
                job_id: None,
                new: false,
                held_before,
            });
        }
        None => {
            // The version the job is queued for: a worker that finds another version on disk
            // knows a newer job exists (or will) for that one.
            let payload = IngestPayload {
                path: file.path.clone(),
                file_id: Some(file_id),
                watch_root: file.watch_root.clone(),
                mode: file.mode,
                size: Some(file.size),
                mtime_ns: Some(file.mtime_ns),
                inode: Some(file.inode),
            };
            let job = NewJob::new(
                INGEST_JOB_KIND,
                serde_json::to_value(&payload).expect("the payload serializes"),
            )
            .with_max_attempts(max_attempts)
            .with_unique_key(unique_key);
            let payload_text = job.validate()?;
            let enqueued = insert_job(transaction, &job, &payload_text, max_attempts, now)?;
            if enqueued.created {
                *room -= 1;
            }
            (enqueued.id, enqueued.created)
        }
    };
    transaction
        .prepare_cached("UPDATE files SET job_id = ?2 WHERE id = ?1")?
        .execute(params![file_id, job_id])?;
    Ok(Detection {
        path: file.path.clone(),
        file_id,
        job_id: Some(job_id),
        new,
        held_before,
    })
}

/// The watched folders as a JSON list for `json_each`.
fn roots_json(watch_roots: &[PathBuf]) -> Result<String, FileError> {
    let roots = watch_roots
        .iter()
        .map(|root| path_text("watch_root", root))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::to_string(&roots).expect("a list of strings serializes"))
}

/// The path and root as text, after checking the shape the table relies on.
fn validate_detected(file: &DetectedFile) -> Result<(String, String), FileError> {
    let path = path_text("path", &file.path)?;
    let root = path_text("watch_root", &file.watch_root)?;
    if !file.path.starts_with(&file.watch_root) || file.path == file.watch_root {
        return Err(FileError::InvalidArgument(format!(
            "{path} is not inside the watched folder {root}"
        )));
    }
    Ok((path.to_owned(), root.to_owned()))
}

fn path_text<'a>(argument: &str, path: &'a Path) -> Result<&'a str, FileError> {
    let text = path.to_str().ok_or_else(|| {
        FileError::InvalidArgument(format!("{argument} {} is not valid UTF-8", path.display()))
    })?;
    if !path.is_absolute() {
        return Err(FileError::InvalidArgument(format!(
            "{argument} {text:?} must be absolute"
        )));
    }
    Ok(text)
}

/// `(prefix, prefix + "/", prefix + "0")`: a path is at or under `prefix` when it equals the
/// first or sorts between the other two ('0' is the byte after '/'), which SQLite answers
/// from the unique index on `path`.
fn prefix_bounds(prefix: &Path) -> Result<(String, String, String), FileError> {
    let text = path_text("prefix", prefix)?;
    let directory = text.trim_end_matches('/');
    Ok((
        text.to_owned(),
        format!("{directory}/"),
        format!("{directory}0"),
    ))
}

fn file_from_row(row: &Row<'_>) -> rusqlite::Result<FileRecord> {
    let state: String = row.get(7)?;
    Ok(FileRecord {
        id: row.get(0)?,
        watch_root: PathBuf::from(row.get::<_, String>(1)?),
        path: PathBuf::from(row.get::<_, String>(2)?),
        size: row.get::<_, i64>(3)? as u64,
        mtime_ns: row.get(4)?,
        inode: row.get::<_, i64>(5)? as u64,
        version_key: row.get(6)?,
        state: state.parse().map_err(|error: FileError| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                error.to_string().into(),
            )
        })?,
        job_id: row.get(8)?,
        document_id: row.get(9)?,
        first_seen_at_ms: row.get(10)?,
        updated_at_ms: row.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::open_temp;
    use std::time::Duration;

    use crate::store::{Durability, JobState};

    fn detected(name: &str, size: u64, mtime_ns: i64) -> DetectedFile {
        DetectedFile {
            watch_root: PathBuf::from("/srv/inbox"),
            path: PathBuf::from("/srv/inbox").join(name),
            mode: WatchMode::Consume,
            size,
            mtime_ns,
            inode: 77,
        }
    }

    #[test]
    fn a_file_and_its_ingest_job_are_recorded_together_once_per_version() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let first = store
            .record_detected_files(
                &[detected("a.pdf", 10, 1), detected("b.pdf", 20, 2)],
                5,
                1000,
            )
            .unwrap();
        assert!(first.iter().all(|detection| detection.new));
        let job = store.get_job(first[0].job_id.unwrap()).unwrap();
        assert_eq!(job.kind, INGEST_JOB_KIND);
        assert_eq!(job.state, JobState::Queued);
        let payload: IngestPayload = serde_json::from_value(job.payload).unwrap();
        assert_eq!(
            payload,
            IngestPayload {
                path: PathBuf::from("/srv/inbox/a.pdf"),
                file_id: Some(first[0].file_id),
                watch_root: PathBuf::from("/srv/inbox"),
                mode: WatchMode::Consume,
                size: Some(10),
                mtime_ns: Some(1),
                inode: Some(77),
            }
        );
        let file = store.get_file(first[0].file_id).unwrap();
        assert_eq!(file.job_id, first[0].job_id);
        assert_eq!(file.state, FileState::Detected);

        // The same versions again: nothing new.
        let again = store
            .record_detected_files(
                &[detected("a.pdf", 10, 1), detected("b.pdf", 20, 2)],
                5,
                1000,
            )
            .unwrap();
        assert_eq!(
            again
                .iter()
                .map(|detection| (detection.file_id, detection.job_id, detection.new))
                .collect::<Vec<_>>(),
            first
                .iter()
                .map(|detection| (detection.file_id, detection.job_id, false))
                .collect::<Vec<_>>()
        );

        // A new version of a: same file row, new job.
        let changed = store
            .record_detected_files(&[detected("a.pdf", 11, 3)], 5, 1000)
            .unwrap();
        assert!(changed[0].new);
        assert_eq!(changed[0].file_id, first[0].file_id);
        assert_ne!(changed[0].job_id, first[0].job_id);
        assert_eq!(store.job_counts().unwrap()[&JobState::Queued], 3);
    }

    #[test]
    fn gone_files_are_marked_and_consumed_ones_keep_their_state() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let detections = store
            .record_detected_files(&[detected("a", 1, 1), detected("b", 1, 1)], 5, 1000)
            .unwrap();
        store
            .connection()
            .execute(
                "UPDATE files SET state = 'ingested' WHERE id = ?1",
                [detections[1].file_id],
            )
            .unwrap();
        let paths = vec![
            PathBuf::from("/srv/inbox/a"),
            PathBuf::from("/srv/inbox/b"),
            PathBuf::from("/srv/inbox/never-seen"),
        ];
        let changed = store.mark_gone(&paths, WatchMode::Consume).unwrap();
        assert_eq!(gone_ids(&changed), vec![detections[0].file_id]);
        assert_eq!(
            store.get_file(detections[1].file_id).unwrap().state,
            FileState::Ingested
        );
        assert_eq!(
            store.present_files_under(Path::new("/srv/inbox")).unwrap(),
            vec![PathBuf::from("/srv/inbox/b")]
        );
        // In an index folder an ingested file that leaves is gone.
        let changed = store.mark_gone(&paths, WatchMode::Index).unwrap();
        assert_eq!(gone_ids(&changed), vec![detections[1].file_id]);

        // The same version coming back is present again without a second job.
        let back = store
            .record_detected_files(&[detected("a", 1, 1)], 5, 1000)
            .unwrap();
        assert!(!back[0].new);
        assert_eq!(back[0].job_id, detections[0].job_id);
        assert_eq!(
            store.get_file(back[0].file_id).unwrap().state,
            FileState::Detected
        );
    }

    #[test]
    fn a_consumed_file_leaving_while_its_ingest_job_runs_is_not_gone() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let detections = store
            .record_detected_files(
                &[detected("running", 1, 1), detected("waiting", 1, 1)],
                5,
                1000,
            )
            .unwrap();
        // A worker claims the first file's job (only that one: the claim takes the oldest).
        let claimed = store
            .claim_jobs(
                &"worker".into(),
                &[INGEST_JOB_KIND],
                1,
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(Some(claimed[0].id), detections[0].job_id);
        let paths = vec![
            PathBuf::from("/srv/inbox/running"),
            PathBuf::from("/srv/inbox/waiting"),
        ];
        // The running job's file left because the worker moved it into the library; the
        // file whose job did not start yet really went away.
        let changed = store.mark_gone(&paths, WatchMode::Consume).unwrap();
        assert_eq!(gone_ids(&changed), vec![detections[1].file_id]);
        assert!(!changed[0].was_held);
        assert_eq!(
            store.get_file(detections[0].file_id).unwrap().state,
            FileState::Detected
        );
        // In an index folder the worker never moves files: leaving means gone.
        let changed = store.mark_gone(&paths, WatchMode::Index).unwrap();
        assert_eq!(gone_ids(&changed), vec![detections[0].file_id]);
    }

    fn gone_ids(gone: &[GoneFile]) -> Vec<i64> {
        gone.iter().map(|file| file.id).collect()
    }

    fn inbox() -> Vec<PathBuf> {
        vec![PathBuf::from("/srv/inbox")]
    }

    /// A held file as the monitor queues it again: the version recorded.
    fn as_detected(file: &FileRecord) -> DetectedFile {
        DetectedFile {
            watch_root: file.watch_root.clone(),
            path: file.path.clone(),
            mode: WatchMode::Consume,
            size: file.size,
            mtime_ns: file.mtime_ns,
            inode: file.inode,
        }
    }

    #[test]
    fn files_beyond_the_ingest_limit_are_held_and_queued_oldest_first_as_room_appears() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let files: Vec<DetectedFile> = (0..5)
            .map(|index| detected(&format!("{index}.pdf"), 10, index))
            .collect();
        let detections = store.record_detected_files(&files, 5, 2).unwrap();
        assert_eq!(
            detections
                .iter()
                .map(|detection| (detection.is_held(), detection.new, detection.held_before))
                .collect::<Vec<_>>(),
            [
                (false, true, false),
                (false, true, false),
                (true, false, false),
                (true, false, false),
                (true, false, false)
            ]
        );
        assert_eq!(store.pending_jobs(INGEST_JOB_KIND, 100).unwrap(), 2);
        // Held files are recorded: detected, without a job.
        for detection in &detections[2..] {
            let row = store.get_file(detection.file_id).unwrap();
            assert_eq!((row.state, row.job_id), (FileState::Detected, None));
        }
        let held = store.held_files(&inbox(), 0, 100).unwrap();
        assert_eq!(
            held.iter().map(|file| file.id).collect::<Vec<_>>(),
            detections[2..]
                .iter()
                .map(|detection| detection.file_id)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            store.count_held_files(&inbox(), 0).unwrap(),
            HeldFiles {
                count: 3,
                first_id: Some(detections[2].file_id)
            }
        );
        // Only the folders asked about, and only from the id given.
        assert!(
            store
                .held_files(&[PathBuf::from("/srv/other")], 0, 100)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .count_held_files(&inbox(), detections[3].file_id)
                .unwrap()
                .count,
            2
        );

        // Seen again while the queue is still full: still held, nothing added.
        let again = store.record_detected_files(&files, 5, 2).unwrap();
        assert_eq!(
            again
                .iter()
                .map(|detection| (detection.is_held(), detection.held_before))
                .collect::<Vec<_>>(),
            [
                (false, false),
                (false, false),
                (true, true),
                (true, true),
                (true, true)
            ]
        );
        assert_eq!(store.job_counts().unwrap()[&JobState::Queued], 2);

        // One job ends: the oldest held file, and only it, gets the free place.
        let claimed = store
            .claim_jobs(
                &"worker".into(),
                &[INGEST_JOB_KIND],
                1,
                Duration::from_secs(30),
            )
            .unwrap();
        store
            .succeed_job(
                claimed[0].id,
                &claimed[0].lease_token,
                &serde_json::json!({}),
            )
            .unwrap();
        let held_again: Vec<DetectedFile> = store
            .held_files(&inbox(), 0, 100)
            .unwrap()
            .iter()
            .map(as_detected)
            .collect();
        let queued = store.record_detected_files(&held_again, 5, 2).unwrap();
        // Each was held before; the first is queued now (one fewer held), the others not.
        assert_eq!(
            queued
                .iter()
                .map(|detection| (detection.new, detection.held_before))
                .collect::<Vec<_>>(),
            [(true, true), (false, true), (false, true)]
        );
        assert_eq!(queued[0].file_id, detections[2].file_id);
        assert_eq!(store.count_held_files(&inbox(), 0).unwrap().count, 2);

        // A generous limit queues the rest; once queued, a version is never queued twice.
        let rest: Vec<DetectedFile> = store
            .held_files(&inbox(), 0, 100)
            .unwrap()
            .iter()
            .map(as_detected)
            .collect();
        store.record_detected_files(&rest, 5, 100).unwrap();
        let last = store.record_detected_files(&files, 5, 100).unwrap();
        assert!(
            last.iter()
                .all(|detection| !detection.new && !detection.is_held())
        );
        assert_eq!(
            store.count_held_files(&inbox(), 0).unwrap(),
            HeldFiles::default()
        );
        let jobs = store.job_counts().unwrap();
        assert_eq!(
            (jobs[&JobState::Queued], jobs[&JobState::Succeeded]),
            (4, 1)
        );
    }

    #[test]
    fn a_held_file_that_leaves_is_gone_and_not_queued_and_a_held_new_version_stays_held() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let first = store
            .record_detected_files(&[detected("a", 1, 1)], 5, 1)
            .unwrap();
        let job_id = first[0].job_id.unwrap();
        // The queue is full: b is held, and so is a's new version.
        let held = store
            .record_detected_files(&[detected("b", 1, 1), detected("a", 2, 2)], 5, 1)
            .unwrap();
        assert!(held.iter().all(Detection::is_held));
        // Neither was held before: b is new, and a had a job for its first version.
        assert!(held.iter().all(|detection| !detection.held_before));
        assert_eq!(held[1].file_id, first[0].file_id);

        // b leaves before it was queued: gone, and not queued when room appears.
        let changed = store
            .mark_gone(&[PathBuf::from("/srv/inbox/b")], WatchMode::Consume)
            .unwrap();
        assert_eq!(
            changed,
            vec![GoneFile {
                id: held[0].file_id,
                watch_root: PathBuf::from("/srv/inbox"),
                was_held: true
            }]
        );
        assert_eq!(
            store.get_file(held[0].file_id).unwrap().state,
            FileState::Gone
        );

        // a's first version fails for good: the row keeps describing the held version.
        let claimed = store
            .claim_jobs(
                &"worker".into(),
                &[INGEST_JOB_KIND],
                1,
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(claimed[0].id, job_id);
        store
            .fail_ingest(
                job_id,
                &claimed[0].lease_token,
                Some(first[0].file_id),
                "not a PDF",
                false,
            )
            .unwrap();
        let row = store.get_file(first[0].file_id).unwrap();
        assert_eq!((row.state, row.job_id), (FileState::Detected, None));
        assert_eq!(row.version_key, detected("a", 2, 2).version_key());
        let still_held = store.held_files(&inbox(), 0, 10).unwrap();
        assert_eq!(
            still_held.iter().map(|file| file.id).collect::<Vec<_>>(),
            vec![first[0].file_id]
        );
        let queued = store
            .record_detected_files(&[as_detected(&still_held[0])], 5, 1)
            .unwrap();
        assert!(queued[0].new);
        assert_ne!(queued[0].job_id, Some(job_id));

        // b comes back (the same version): present again, and now it is queued once room
        // appears, like a file seen for the first time.
        let back = store
            .record_detected_files(&[detected("b", 1, 1)], 5, 2)
            .unwrap();
        assert!(back[0].new);
        assert_eq!(back[0].file_id, held[0].file_id);
    }

    #[test]
    fn prefixes_match_whole_path_components() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        store
            .record_detected_files(
                &[
                    detected("sub/x", 1, 1),
                    detected("sub0", 1, 1),
                    detected("sub-y", 1, 1),
                    detected("sub/deeper/z", 1, 1),
                ],
                5,
                1000,
            )
            .unwrap();
        assert_eq!(
            store
                .present_files_under(Path::new("/srv/inbox/sub"))
                .unwrap(),
            vec![
                PathBuf::from("/srv/inbox/sub/deeper/z"),
                PathBuf::from("/srv/inbox/sub/x")
            ]
        );
        // A page at a time (the sweep's way): the same paths, and never a sibling with a
        // longer name ("sub-y" sorts between "sub" and "sub/").
        let prefix = Path::new("/srv/inbox/sub");
        let first = store.present_files_under_page(prefix, None, 1).unwrap();
        assert_eq!(first, vec![PathBuf::from("/srv/inbox/sub/deeper/z")]);
        let second = store
            .present_files_under_page(prefix, Some(&first[0]), 1)
            .unwrap();
        assert_eq!(second, vec![PathBuf::from("/srv/inbox/sub/x")]);
        assert!(
            store
                .present_files_under_page(prefix, Some(&second[0]), 1)
                .unwrap()
                .is_empty()
        );
        let page = store
            .list_files(
                &FileFilter {
                    states: vec![FileState::Detected],
                    under: Some(PathBuf::from("/srv/inbox/sub/deeper")),
                },
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].path, PathBuf::from("/srv/inbox/sub/deeper/z"));
        assert_eq!(store.file_counts().unwrap()[&FileState::Detected], 4);
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let mut outside = detected("a", 1, 1);
        outside.path = PathBuf::from("/etc/passwd");
        let mut relative = detected("a", 1, 1);
        relative.path = PathBuf::from("inbox/a");
        relative.watch_root = PathBuf::from("inbox");
        for bad in [outside, relative] {
            let error = store
                .record_detected_files(&[detected("fine", 1, 1), bad], 5, 1000)
                .unwrap_err();
            assert!(matches!(error, FileError::InvalidArgument(_)), "{error}");
        }
        assert!(store.file_counts().unwrap().is_empty());
        assert!(
            store
                .job_counts()
                .unwrap()
                .values()
                .all(|count| *count == 0)
        );
        let error = store
            .list_files(
                &FileFilter::default(),
                PageRequest {
                    before_id: None,
                    limit: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(error, FileError::InvalidArgument(_)), "{error}");
        assert!(matches!(store.get_file(42), Err(FileError::NotFound(42))));
    }
}
