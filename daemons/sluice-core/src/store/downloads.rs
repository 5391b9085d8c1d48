//! Downloads: one URL fetched into one file in the inbox. A download is a row in `downloads`
//! plus a `download` job in the queue, created together in one transaction so that neither
//! can exist without the other; the scraper claims the job and updates the row as it goes.

use std::fmt;
use std::str::FromStr;

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::jobs::{JobError, MAX_PAGE_SIZE, NewJob, Page, PageRequest, enqueue_in_transaction};
use super::{Store, StoreError, now_ms};

/// The job kind the scraper claims for downloads.
pub const DOWNLOAD_JOB_KIND: &str = "download";
/// Longest URL stored (the D-Bus and API checks use the same limit).
pub const MAX_URL_BYTES: usize = 4096;
/// Longest file or bundle name: one path element on Linux.
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("download {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DownloadError {
    fn from(error: rusqlite::Error) -> Self {
        DownloadError::Store(StoreError::from(error))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl DownloadState {
    pub const ALL: [DownloadState; 5] = [
        DownloadState::Queued,
        DownloadState::Running,
        DownloadState::Succeeded,
        DownloadState::Failed,
        DownloadState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DownloadState::Queued => "queued",
            DownloadState::Running => "running",
            DownloadState::Succeeded => "succeeded",
            DownloadState::Failed => "failed",
            DownloadState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for DownloadState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for DownloadState {
    type Err = DownloadError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DownloadState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                DownloadError::InvalidArgument(format!(
                    "unknown download state {text:?} (expected one of queued, running, \
                     succeeded, failed, cancelled)"
                ))
            })
    }
}

/// A download to record. The caller has already checked the URL's scheme and host (the SSRF
/// guard needs the network, which the store does not touch); the store checks what it can
/// check without IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDownload {
    pub url: String,
    /// The name of the file in the inbox (one path element).
    pub file_name: String,
    /// Sub-folder of the inbox grouping several downloads.
    pub bundle: Option<String>,
    /// 64 lowercase hex digits.
    pub expected_sha256: Option<String>,
    /// Bytes; the download fails when it grows past this.
    pub size_limit: Option<u64>,
    /// Attempts of the download job (`[jobs] max_attempts`).
    pub max_attempts: u32,
}

/// A download as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Download {
    pub id: i64,
    pub url: String,
    pub file_name: String,
    pub bundle: Option<String>,
    pub source_id: Option<i64>,
    pub state: DownloadState,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub rate_bytes_per_s: Option<f64>,
    pub expected_sha256: Option<String>,
    pub size_limit: Option<u64>,
    pub part_path: Option<String>,
    pub final_path: Option<String>,
    pub error: Option<String>,
    pub job_id: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What `create_download` made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreatedDownload {
    pub download: Download,
    pub job_id: i64,
}

const DOWNLOAD_COLUMNS: &str = "id, url, file_name, bundle, source_id, state, bytes_done, \
     bytes_total, rate_bytes_per_s, expected_sha256, size_limit, part_path, final_path, error, \
     job_id, created_at, updated_at";

impl Store {
    /// Records a download and queues its `download` job (payload `{"download_id": id}`) in one
    /// transaction.
    pub fn create_download(
        &mut self,
        download: &NewDownload,
    ) -> Result<CreatedDownload, DownloadError> {
        validate_new_download(download)?;
        self.write(|transaction| {
            let now = now_ms();
            let size_limit = download
                .size_limit
                .map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
            let download_id: i64 = transaction
                .prepare_cached(
                    "INSERT INTO downloads (url, file_name, bundle, state, expected_sha256,
                                            size_limit, created_at, updated_at)
                     VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?6)
                     RETURNING id",
                )?
                .query_row(
                    params![
                        download.url,
                        download.file_name,
                        download.bundle,
                        download.expected_sha256,
                        size_limit,
                        now
                    ],
                    |row| row.get(0),
                )?;
            let job = NewJob::new(
                DOWNLOAD_JOB_KIND,
                serde_json::json!({ "download_id": download_id }),
            )
            .with_unique_key(format!("download:{download_id}"))
            .with_max_attempts(download.max_attempts);
            let job_id = enqueue_in_transaction(transaction, &job)?.id;
            transaction.execute(
                "UPDATE downloads SET job_id = ?2 WHERE id = ?1",
                params![download_id, job_id],
            )?;
            let download = read_download(transaction, download_id)?;
            Ok(CreatedDownload { download, job_id })
        })
    }

    pub fn get_download(&self, id: i64) -> Result<Download, DownloadError> {
        read_download(self.connection(), id)
    }

    /// Downloads newest first, optionally only those in `state`, a page at a time.
    pub fn list_downloads(
        &self,
        state: Option<DownloadState>,
        page: PageRequest,
    ) -> Result<Page<Download>, DownloadError> {
        if page.limit == 0 || page.limit > MAX_PAGE_SIZE {
            return Err(DownloadError::InvalidArgument(format!(
                "page size must be 1..={MAX_PAGE_SIZE}, got {}",
                page.limit
            )));
        }
        let mut statement = self.connection().prepare_cached(&format!(
            "SELECT {DOWNLOAD_COLUMNS} FROM downloads
             WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let mut items = statement
            .query_map(
                params![
                    page.before_id,
                    state.map(DownloadState::as_str),
                    page.limit + 1
                ],
                download_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|download| download.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Forgets a download: its job is cancelled (at once when waiting; a running one is asked
    /// to stop at its next heartbeat) and the row is removed, in one transaction. Returns the
    /// row as it was, so the caller can remove a partial file it names.
    pub fn delete_download(&mut self, id: i64) -> Result<Download, DownloadError> {
        self.write(|transaction| {
            let download = read_download(transaction, id)?;
            if let Some(job_id) = download.job_id {
                let now = now_ms();
                transaction.execute(
                    "UPDATE jobs SET state = 'cancelled', error = 'download deleted',
                         updated_at = ?2, finished_at = ?2
                     WHERE id = ?1 AND state IN ('queued', 'retrying')",
                    params![job_id, now],
                )?;
                transaction.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ?2
                     WHERE id = ?1 AND state = 'running'",
                    params![job_id, now],
                )?;
            }
            transaction.execute("DELETE FROM downloads WHERE id = ?1", [id])?;
            Ok(download)
        })
    }
}

fn validate_new_download(download: &NewDownload) -> Result<(), DownloadError> {
    let invalid = |message: String| Err(DownloadError::InvalidArgument(message));
    let url = download.url.to_ascii_lowercase();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return invalid(format!(
            "url {:?} must start with http:// or https://",
            download.url
        ));
    }
    if download.url.len() > MAX_URL_BYTES {
        return invalid(format!("url is longer than {MAX_URL_BYTES} bytes"));
    }
    validate_name("file_name", &download.file_name)?;
    if let Some(bundle) = &download.bundle {
        validate_name("bundle", bundle)?;
    }
    if let Some(digest) = &download.expected_sha256
        && (digest.len() != 64
            || !digest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    {
        return invalid("sha256 must be 64 lowercase hexadecimal digits".into());
    }
    if download.size_limit == Some(0) {
        return invalid("max_bytes must not be 0".into());
    }
    Ok(())
}

fn validate_name(argument: &str, name: &str) -> Result<(), DownloadError> {
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else if name.contains('/') || name == "." || name == ".." {
        Some("must be a single name, not a path")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.starts_with('.') || name.ends_with(".part") {
        Some("would be ignored by the monitor (dot-files and *.part are skipped)")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(DownloadError::InvalidArgument(format!(
            "{argument} {name:?} {problem}"
        ))),
        None => Ok(()),
    }
}

fn read_download(connection: &rusqlite::Connection, id: i64) -> Result<Download, DownloadError> {
    connection
        .prepare_cached(&format!(
            "SELECT {DOWNLOAD_COLUMNS} FROM downloads WHERE id = ?1"
        ))?
        .query_row([id], download_from_row)
        .optional()?
        .ok_or(DownloadError::NotFound(id))
}

fn download_from_row(row: &Row<'_>) -> rusqlite::Result<Download> {
    let state: String = row.get(5)?;
    Ok(Download {
        id: row.get(0)?,
        url: row.get(1)?,
        file_name: row.get(2)?,
        bundle: row.get(3)?,
        source_id: row.get(4)?,
        state: state.parse().map_err(|error: DownloadError| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, error.into())
        })?,
        bytes_done: unsigned_column(6, row.get(6)?)?,
        bytes_total: row
            .get::<_, Option<i64>>(7)?
            .map(|value| unsigned_column(7, value))
            .transpose()?,
        rate_bytes_per_s: row.get(8)?,
        expected_sha256: row.get(9)?,
        size_limit: row
            .get::<_, Option<i64>>(10)?
            .map(|value| unsigned_column(10, value))
            .transpose()?,
        part_path: row.get(11)?,
        final_path: row.get(12)?,
        error: row.get(13)?,
        job_id: row.get(14)?,
        created_at_ms: row.get(15)?,
        updated_at_ms: row.get(16)?,
    })
}

/// Counts are stored as SQLite integers (i64) and kept non-negative by CHECK constraints.
fn unsigned_column(index: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use crate::store::jobs::JobState;
    use crate::store::tests::open_temp;

    fn new_download(url: &str) -> NewDownload {
        NewDownload {
            url: url.into(),
            file_name: "model.bin".into(),
            bundle: Some("model-x".into()),
            expected_sha256: Some("ab".repeat(32)),
            size_limit: Some(1 << 20),
            max_attempts: 3,
        }
    }

    #[test]
    fn a_download_and_its_job_are_created_together() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store
            .create_download(&new_download("https://example.org/model.bin"))
            .unwrap();
        assert_eq!(created.download.state, DownloadState::Queued);
        assert_eq!(created.download.job_id, Some(created.job_id));
        let job = store.get_job(created.job_id).unwrap();
        assert_eq!(job.kind, DOWNLOAD_JOB_KIND);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(
            job.payload,
            serde_json::json!({ "download_id": created.download.id })
        );
        assert_eq!(
            store.get_download(created.download.id).unwrap(),
            created.download
        );
    }

    #[test]
    fn bad_downloads_change_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let cases = [
            NewDownload {
                url: "ftp://example.org/a".into(),
                ..new_download("")
            },
            NewDownload {
                file_name: "../escape".into(),
                ..new_download("https://example.org/a")
            },
            NewDownload {
                file_name: "x.part".into(),
                ..new_download("https://example.org/a")
            },
            NewDownload {
                expected_sha256: Some("XYZ".into()),
                ..new_download("https://example.org/a")
            },
            NewDownload {
                size_limit: Some(0),
                ..new_download("https://example.org/a")
            },
            NewDownload {
                max_attempts: 0,
                ..new_download("https://example.org/a")
            },
        ];
        for case in cases {
            let result = store.create_download(&case);
            assert!(
                matches!(
                    result,
                    Err(DownloadError::InvalidArgument(_))
                        | Err(DownloadError::Job(JobError::InvalidArgument(_)))
                ),
                "{case:?} gave {result:?}"
            );
        }
        let page = PageRequest {
            before_id: None,
            limit: 10,
        };
        assert!(store.list_downloads(None, page).unwrap().items.is_empty());
        assert!(
            store
                .list_jobs(&Default::default(), page)
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[test]
    fn downloads_list_newest_first_with_a_cursor_and_delete_cancels_the_job() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let ids: Vec<i64> = (0..3)
            .map(|index| {
                store
                    .create_download(&new_download(&format!("https://example.org/{index}")))
                    .unwrap()
                    .download
                    .id
            })
            .collect();
        let first = store
            .list_downloads(
                None,
                PageRequest {
                    before_id: None,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(
            first.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![ids[2], ids[1]]
        );
        let second = store
            .list_downloads(
                Some(DownloadState::Queued),
                PageRequest {
                    before_id: first.next_cursor,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.next_cursor, None);

        let deleted = store.delete_download(ids[0]).unwrap();
        assert!(matches!(
            store.get_download(ids[0]),
            Err(DownloadError::NotFound(_))
        ));
        let job = store.get_job(deleted.job_id.unwrap()).unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert!(matches!(
            store.delete_download(ids[0]),
            Err(DownloadError::NotFound(_))
        ));
    }
}
