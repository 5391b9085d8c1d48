//! Documents (unique content, deduplicated by BLAKE3), their full-text index, and the ingest
//! worker's commit: the document, the file row and the job's success in one transaction.
//!
//! **Exactly-once effects**: [`Store::finish_ingest`] checks the job's lease token inside the
//! same `BEGIN IMMEDIATE` transaction that inserts the document and updates the file row, by
//! applying the job's success with the queue's own compare-and-set. A worker that lost its
//! lease (killed, paused past its lease, cancelled) therefore changes nothing at all, and the
//! worker that took the job over records the document once.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use serde_json::Value;

use super::jobs::{
    Completion, JobError, JobState, LeaseToken, MAX_PAGE_SIZE, NewJob, Outcome, Page, PageRequest,
    complete, insert_job,
};
use super::{Store, StoreError, now_ms};
use crate::ingest::{
    INGEST_JOB_KIND, THUMBNAIL_JOB_KIND, THUMBNAIL_JOB_PRIORITY, thumbnail_unique_key,
};
use crate::policy::SearchQuery;

/// The query of one range of [`Store::list_documents`]: `?1` a MIME type, `?2` the cursor,
/// `?3` the limit; conditions not asked for are left out, so the cursor is a range.
pub(crate) fn list_documents_sql(by_type: bool, after_cursor: bool) -> String {
    let (index, mut conditions) = if by_type {
        ("INDEXED BY documents_by_mime", vec!["mime = ?1"])
    } else {
        ("", Vec::new())
    };
    if after_cursor {
        conditions.push("id < ?2");
    }
    let condition = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {DOCUMENT_COLUMNS} FROM documents {index} {condition} ORDER BY id DESC LIMIT ?3"
    )
}

/// The condition under which a worker's outcome may change a file row: unless the row is
/// held (detected, no job: the ingest queue was full, see `files.rs`) for another version
/// than the one its job ingested, going by the job's unique key. Such a row keeps describing
/// the held version, so that version is queued once there is room instead of passing for
/// ingested. `job` is the SQL parameter that holds the job's id.
fn not_held_for_another_version(job: &str) -> String {
    format!(
        "NOT (state = 'detected' AND job_id IS NULL AND EXISTS (
             SELECT 1 FROM jobs WHERE jobs.id = {job}
               AND jobs.unique_key GLOB '{INGEST_JOB_KIND}:*'
               AND jobs.unique_key != '{INGEST_JOB_KIND}:' || files.id || ':' || files.version_key))"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("document {0} not found")]
    NotFound(i64),
    #[error("file row {0} not found (was it removed while the file was being ingested?)")]
    FileNotFound(i64),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DocumentError {
    /// Whether the store refused the change only because the database's disk is full.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            DocumentError::Job(error) => error.is_out_of_space(),
            DocumentError::Store(error) => error.is_out_of_space(),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for DocumentError {
    fn from(error: rusqlite::Error) -> Self {
        DocumentError::Store(StoreError::from(error))
    }
}

/// One catalogued piece of content.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: i64,
    /// Lower-case hex, 64 characters.
    pub blake3: String,
    /// Lower-case hex, 64 characters.
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    /// The file name it first arrived under.
    pub original_name: String,
    /// Where the content sits in the library; `None` for content only seen in index folders.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub library_path: Option<PathBuf>,
    pub metadata: Value,
    /// How many more times the same content arrived after the first.
    pub duplicates: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A search result: a page of a document (or its text without pages), with a short excerpt
/// that has the matches in `[` `]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocumentHit {
    pub document: Document,
    /// The page the text is from, from 1; `None` for text without pages (a text file, HTML,
    /// a processor's output).
    pub page: Option<u32>,
    pub snippet: String,
    /// FTS5's bm25 rank: lower is better; hits come best first.
    pub rank: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentFilter {
    /// Only documents whose MIME type starts with this, e.g. `image/` or `text/plain`.
    pub mime_prefix: Option<String>,
}

/// What the worker learned about a file's content.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    pub blake3: String,
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    pub original_name: String,
    /// Set when this ingest filed the content into the library (or found it there).
    pub library_path: Option<PathBuf>,
    pub metadata: Value,
    /// Extracted text without pages for the full-text index (already cut to the configured
    /// limit, together with `pages`).
    pub text: Option<String>,
    /// The text of each page of a paged document (a PDF), page 1 first; indexed page by page.
    pub pages: Vec<String>,
    /// The content is of a type that has thumbnails: a new document gets a `thumbnail` job
    /// (queued in the same transaction, its id recorded as `thumbnail_job` in the metadata).
    pub wants_thumbnail: bool,
}

/// Everything [`Store::finish_ingest`] commits at once.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestRecord {
    pub job_id: i64,
    pub lease_token: LeaseToken,
    /// The monitor's `files` row, when there is one.
    pub file_id: Option<i64>,
    pub document: NewDocument,
}

/// What [`Store::finish_ingest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IngestFinished {
    pub document_id: i64,
    /// The content was already catalogued from another file.
    pub duplicate: bool,
}

const DOCUMENT_COLUMNS: &str = "documents.id, blake3, sha256, size, mime, original_name, \
     library_path, metadata, duplicates, created_at, updated_at";

impl Store {
    /// Commits an ingest in one transaction: the document (new, or the existing one with the
    /// same BLAKE3 counted as a duplicate), its text in the full-text index, the file row's
    /// new state, and the job's success with `{"document_id", "duplicate", "blake3"}` as its
    /// result, all conditional on the job's lease token. A lost lease changes nothing and is
    /// `DocumentError::Job(JobError::LeaseLost)`.
    pub fn finish_ingest(
        &mut self,
        record: &IngestRecord,
    ) -> Result<IngestFinished, DocumentError> {
        self.finish_ingest_with_steps(record, &[])
    }

    /// [`Store::finish_ingest`], with result steps recorded in the job's log in the same
    /// transaction, before the job's success (see `jobs::log`).
    pub fn finish_ingest_with_steps(
        &mut self,
        record: &IngestRecord,
        steps: &[Value],
    ) -> Result<IngestFinished, DocumentError> {
        validate_document(&record.document)?;
        let step_texts = super::jobs::log::step_texts(steps)?;
        let retry_policy = self.options().retry;
        let max_attempts = self.options().max_attempts;
        self.write(|transaction| {
            let now = now_ms();
            let document = &record.document;
            let existing: Option<i64> = transaction
                .prepare_cached("SELECT id FROM documents WHERE blake3 = ?1")?
                .query_row([&document.blake3], |row| row.get(0))
                .optional()?;
            let previous_document_of_file = match record.file_id {
                Some(file_id) => Some(file_document(transaction, file_id)?),
                None => None,
            };
            let library_path = document
                .library_path
                .as_deref()
                .map(path_text)
                .transpose()?;
            let (document_id, duplicate) = match existing {
                Some(document_id) => {
                    // The same file ingested again (a retried job, a rescan) is not a second
                    // copy of its content.
                    let same_file = previous_document_of_file == Some(Some(document_id));
                    transaction
                        .prepare_cached(
                            "UPDATE documents SET duplicates = duplicates + ?2,
                                 library_path = coalesce(library_path, ?3), updated_at = ?4
                             WHERE id = ?1",
                        )?
                        .execute(params![
                            document_id,
                            if same_file { 0 } else { 1 },
                            library_path,
                            now
                        ])?;
                    (document_id, !same_file)
                }
                None => {
                    let document_id: i64 = transaction
                        .prepare_cached(
                            "INSERT INTO documents (blake3, sha256, size, mime, original_name,
                                 library_path, metadata, duplicates, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8)
                             RETURNING id",
                        )?
                        .query_row(
                            params![
                                document.blake3,
                                document.sha256,
                                document.size as i64,
                                document.mime,
                                document.original_name,
                                library_path,
                                document.metadata.to_string(),
                                now
                            ],
                            |row| row.get(0),
                        )?;
                    insert_text(transaction, document_id, document)?;
                    if document.wants_thumbnail {
                        queue_thumbnail(
                            transaction,
                            document_id,
                            &document.blake3,
                            max_attempts,
                            now,
                        )?;
                    }
                    (document_id, false)
                }
            };
            if let Some(file_id) = record.file_id {
                transaction
                    .prepare_cached(&format!(
                        "UPDATE files SET state = ?2, document_id = ?3, job_id = ?4, updated_at = ?5
                         WHERE id = ?1 AND {}",
                        not_held_for_another_version("?4")
                    ))?
                    .execute(params![
                        file_id,
                        if duplicate { "duplicate" } else { "ingested" },
                        document_id,
                        record.job_id,
                        now
                    ])?;
            }
            let completion = Completion {
                id: record.job_id,
                lease_token: record.lease_token.clone(),
                outcome: Outcome::Succeeded {
                    result: serde_json::json!({
                        "document_id": document_id,
                        "duplicate": duplicate,
                        "blake3": document.blake3,
                    }),
                },
            };
            super::jobs::log::insert_steps(
                transaction,
                record.job_id,
                &record.lease_token,
                &step_texts,
            )?;
            // Any verdict but success (a lost lease) aborts the transaction: nothing above
            // is committed.
            complete(transaction, &completion, &retry_policy, now)??;
            Ok(IngestFinished {
                document_id,
                duplicate,
            })
        })
    }

    /// Records a failed ingest attempt: the job fails (retryable or not) and, once the job
    /// will not be tried again, the file row is marked `failed`; one transaction, conditional
    /// on the lease. Returns the job's new state.
    pub fn fail_ingest(
        &mut self,
        job_id: i64,
        lease_token: &LeaseToken,
        file_id: Option<i64>,
        error: &str,
        retryable: bool,
    ) -> Result<JobState, DocumentError> {
        let retry_policy = self.options().retry;
        let completion = Completion {
            id: job_id,
            lease_token: lease_token.clone(),
            outcome: Outcome::Failed {
                error: truncate_message(error),
                retryable,
            },
        };
        self.write(|transaction| {
            let now = now_ms();
            let state = complete(transaction, &completion, &retry_policy, now)??;
            if let Some(file_id) = file_id
                && state.is_terminal()
            {
                // A missing row is no reason to keep the job's failure from being recorded.
                transaction
                    .prepare_cached(&format!(
                        "UPDATE files SET state = 'failed', job_id = ?2, updated_at = ?3
                         WHERE id = ?1 AND {}",
                        not_held_for_another_version("?2")
                    ))?
                    .execute(params![file_id, job_id, now])?;
            }
            Ok(state)
        })
    }

    /// Records what a `thumbnail` job made of document `document_id`'s content, together with
    /// the job's success, in one transaction under the lease: `Ok(thumbnail)` goes under
    /// `thumbnail` in the metadata (path, size, hash, as the worker describes the file it
    /// filed), `Err(reason)` under `thumbnail_error`. A lost lease changes nothing, so a job
    /// run twice (a worker killed after filing the file, rescued) records its thumbnail once.
    pub fn finish_thumbnail(
        &mut self,
        job_id: i64,
        lease_token: &LeaseToken,
        document_id: i64,
        made: Result<&Value, &str>,
    ) -> Result<JobState, DocumentError> {
        let (key, value) = match made {
            Ok(thumbnail) if thumbnail.is_object() => ("$.thumbnail", thumbnail.to_string()),
            Ok(other) => {
                return Err(DocumentError::InvalidArgument(format!(
                    "a thumbnail is described by a JSON object, not {other}"
                )));
            }
            Err(reason) => (
                "$.thumbnail_error",
                Value::String(truncate_message(reason)).to_string(),
            ),
        };
        let completion = Completion {
            id: job_id,
            lease_token: lease_token.clone(),
            outcome: Outcome::Succeeded {
                result: serde_json::json!({
                    "document_id": document_id,
                    "thumbnail": made.is_ok(),
                }),
            },
        };
        let retry_policy = self.options().retry;
        self.write(|transaction| {
            let now = now_ms();
            let changed = transaction
                .prepare_cached(
                    "UPDATE documents SET metadata = json_set(metadata, ?2, json(?3)),
                         updated_at = ?4
                     WHERE id = ?1",
                )?
                .execute(params![document_id, key, value, now])?;
            if changed == 0 {
                return Err(DocumentError::NotFound(document_id));
            }
            Ok(complete(transaction, &completion, &retry_policy, now)??)
        })
    }

    /// Notes, durably and under the lease, the content hash of the file an ingest is about to
    /// move into the library. If the worker dies between the move and the commit, the next
    /// attempt finds the source gone and reads this note (from the job's `result`, which a
    /// claim keeps and success overwrites) to find the file in the library.
    pub fn record_ingest_intent(
        &mut self,
        job_id: i64,
        lease_token: &LeaseToken,
        blake3: &str,
    ) -> Result<(), DocumentError> {
        validate_hex_hash("blake3", blake3)?;
        self.write(|transaction| {
            let changed = transaction
                .prepare_cached(
                    "UPDATE jobs SET result = json_object('filing_blake3', ?3), updated_at = ?4
                     WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
                )?
                .execute(params![job_id, lease_token.as_str(), blake3, now_ms()])?;
            if changed == 1 {
                Ok(())
            } else {
                Err(DocumentError::Job(JobError::LeaseLost { id: job_id }))
            }
        })
    }

    /// The hash noted by [`Store::record_ingest_intent`] during an earlier attempt, if any.
    pub fn ingest_intent(&self, job_id: i64) -> Result<Option<String>, DocumentError> {
        let intent: Option<Option<String>> = self
            .connection()
            .prepare_cached(
                "SELECT CASE WHEN json_valid(result)
                             THEN json_extract(result, '$.filing_blake3') END
                 FROM jobs WHERE id = ?1",
            )?
            .query_row([job_id], |row| row.get(0))
            .optional()?;
        match intent {
            Some(intent) => Ok(intent),
            None => Err(DocumentError::Job(JobError::NotFound(job_id))),
        }
    }

    pub fn get_document(&self, id: i64) -> Result<Document, DocumentError> {
        self.connection()
            .prepare_cached(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?1"
            ))?
            .query_row([id], document_from_row)
            .optional()?
            .ok_or(DocumentError::NotFound(id))
    }

    pub fn find_document_by_blake3(&self, blake3: &str) -> Result<Option<Document>, DocumentError> {
        validate_hex_hash("blake3", blake3)?;
        Ok(self
            .connection()
            .prepare_cached(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE blake3 = ?1"
            ))?
            .query_row([blake3], document_from_row)
            .optional()?)
    }

    /// Documents newest first, a page at a time (`next_cursor` as in `list_jobs`).
    pub fn list_documents(
        &self,
        filter: &DocumentFilter,
        page: PageRequest,
    ) -> Result<Page<Document>, DocumentError> {
        validate_page(page)?;
        if let Some(prefix) = &filter.mime_prefix
            && (prefix.is_empty() || prefix.len() > 255)
        {
            return Err(DocumentError::InvalidArgument(
                "MIME prefix must be 1..=255 bytes".into(),
            ));
        }
        let wanted = page.limit + 1;
        let Some(prefix) = &filter.mime_prefix else {
            // The newest rows of the table from the cursor (a range of the primary key).
            let mut statement = self
                .connection()
                .prepare_cached(&list_documents_sql(false, page.before_id.is_some()))?;
            let items = statement
                .query_map(
                    params![Option::<String>::None, page.before_id, wanted],
                    document_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(paginate(items, page.limit, |document| document.id));
        };
        // One newest-first range of `documents_by_mime` (mime, id; migration 11) per MIME
        // type that starts with the prefix, found one at a time by a seek of the same index,
        // merged here: a page of a rare type no longer walks every document newest first.
        // The types are few (one per format), so a page costs a seek per type and a page of
        // rows, however many documents there are.
        let mut first_type = self.connection().prepare_cached(
            "SELECT mime FROM documents INDEXED BY documents_by_mime
             WHERE mime >= ?1 AND mime < ?2 ORDER BY mime LIMIT 1",
        )?;
        let mut next_type = self.connection().prepare_cached(
            "SELECT mime FROM documents INDEXED BY documents_by_mime
             WHERE mime > ?1 AND mime < ?2 ORDER BY mime LIMIT 1",
        )?;
        let mut of_type = self
            .connection()
            .prepare_cached(&list_documents_sql(true, page.before_id.is_some()))?;
        // Every text that starts with the prefix sorts at or after it and before it followed
        // by the greatest character.
        let end = format!("{prefix}\u{10FFFF}");
        let mut items = Vec::new();
        let mut mime: Option<String> = first_type
            .query_row(params![prefix, end], |row| row.get(0))
            .optional()?;
        while let Some(this_type) = mime {
            if this_type.starts_with(prefix.as_str()) {
                let rows = of_type.query_map(
                    params![this_type, page.before_id, wanted],
                    document_from_row,
                )?;
                for row in rows {
                    items.push(row?);
                }
            }
            mime = next_type
                .query_row(params![this_type, end], |row| row.get(0))
                .optional()?;
        }
        items.sort_unstable_by_key(|document| std::cmp::Reverse(document.id));
        items.truncate(wanted as usize);
        Ok(paginate(items, page.limit, |document| document.id))
    }

    /// Full-text search, page by page: the pages (and texts without pages) that have every
    /// word and phrase of `query`, best first (FTS5's bm25; ties newest first), a page of
    /// hits at a time. The cursor counts the hits already returned (`next_cursor` is where
    /// the next page starts): ranks move as documents arrive, so a hit may move between pages
    /// read at different times.
    pub fn search_documents(
        &self,
        query: &SearchQuery,
        page: PageRequest,
    ) -> Result<Page<DocumentHit>, DocumentError> {
        validate_page(page)?;
        let offset = page.before_id.unwrap_or(0).max(0);
        let mut statement = self.connection().prepare_cached(&format!(
            "SELECT {DOCUMENT_COLUMNS}, page_text.page,
                    snippet(page_text, -1, '[', ']', '…', 12), page_text.rank
             FROM page_text JOIN documents ON documents.id = page_text.document_id
             WHERE page_text MATCH ?1
             ORDER BY page_text.rank, page_text.rowid DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let mut items = statement
            .query_map(params![query.fts5(), page.limit + 1, offset], |row| {
                Ok(DocumentHit {
                    document: document_from_row(row)?,
                    page: row.get(11)?,
                    snippet: row.get(12)?,
                    rank: row.get(13)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            Some(offset + i64::from(page.limit))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

/// Queues the thumbnail job of a new document (once per content: a unique key) and records
/// its id in the document's metadata as `thumbnail_job`, so a reader can tell a thumbnail that
/// is coming from one that never will.
fn queue_thumbnail(
    transaction: &Transaction<'_>,
    document_id: i64,
    blake3: &str,
    max_attempts: u32,
    now: i64,
) -> Result<(), DocumentError> {
    let job = NewJob::new(
        THUMBNAIL_JOB_KIND,
        serde_json::json!({ "document_id": document_id }),
    )
    .with_priority(THUMBNAIL_JOB_PRIORITY)
    .with_unique_key(thumbnail_unique_key(blake3));
    let payload = job.validate()?;
    let queued = insert_job(transaction, &job, &payload, max_attempts, now)?;
    transaction
        .prepare_cached(
            "UPDATE documents SET metadata = json_set(metadata, '$.thumbnail_job', ?2)
             WHERE id = ?1",
        )?
        .execute(params![document_id, queued.id])?;
    Ok(())
}

/// Indexes a new document's text: its text without pages, then each page that has text. The
/// document's name is the title of the first row.
fn insert_text(
    transaction: &Transaction<'_>,
    document_id: i64,
    document: &NewDocument,
) -> Result<(), DocumentError> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO page_text (document_id, page, title, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut title = Some(document.original_name.as_str());
    if let Some(text) = &document.text {
        statement.execute(params![document_id, None::<u32>, title.take(), text])?;
    }
    for (index, text) in document.pages.iter().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        statement.execute(params![document_id, index as i64 + 1, title.take(), text])?;
    }
    Ok(())
}

/// The document id a file row points at now (`None` when it has none yet).
fn file_document(
    transaction: &Transaction<'_>,
    file_id: i64,
) -> Result<Option<i64>, DocumentError> {
    transaction
        .prepare_cached("SELECT document_id FROM files WHERE id = ?1")?
        .query_row([file_id], |row| row.get::<_, Option<i64>>(0))
        .optional()?
        .ok_or(DocumentError::FileNotFound(file_id))
}

fn paginate<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(id)
    } else {
        None
    };
    Page { items, next_cursor }
}

fn validate_page(page: PageRequest) -> Result<(), DocumentError> {
    if page.limit == 0 || page.limit > MAX_PAGE_SIZE {
        return Err(DocumentError::InvalidArgument(format!(
            "page size must be 1..={MAX_PAGE_SIZE}, got {}",
            page.limit
        )));
    }
    Ok(())
}

fn validate_hex_hash(what: &str, hash: &str) -> Result<(), DocumentError> {
    if hash.len() == 64
        && hash
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(DocumentError::InvalidArgument(format!(
            "{what} must be 64 lower-case hex digits, got {hash:?}"
        )))
    }
}

fn validate_document(document: &NewDocument) -> Result<(), DocumentError> {
    validate_hex_hash("blake3", &document.blake3)?;
    validate_hex_hash("sha256", &document.sha256)?;
    if document.mime.is_empty() || document.mime.len() > 255 {
        return Err(DocumentError::InvalidArgument(
            "MIME type must be 1..=255 bytes".into(),
        ));
    }
    if !document.metadata.is_object() {
        return Err(DocumentError::InvalidArgument(
            "document metadata must be a JSON object".into(),
        ));
    }
    if i64::try_from(document.size).is_err() {
        return Err(DocumentError::InvalidArgument(
            "document size does not fit the database".into(),
        ));
    }
    Ok(())
}

fn path_text(path: &Path) -> Result<&str, DocumentError> {
    path.to_str().ok_or_else(|| {
        DocumentError::InvalidArgument(format!("library path {path:?} is not valid UTF-8"))
    })
}

/// Keeps a huge error text (a processor's stderr, say) from hitting the queue's message limit.
fn truncate_message(error: &str) -> String {
    const LIMIT: usize = super::jobs::MAX_MESSAGE_LENGTH;
    if error.len() <= LIMIT {
        return error.to_owned();
    }
    let mut cut = LIMIT - 3;
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &error[..cut])
}

fn document_from_row(row: &Row<'_>) -> rusqlite::Result<Document> {
    let metadata: String = row.get(7)?;
    Ok(Document {
        id: row.get(0)?,
        blake3: row.get(1)?,
        sha256: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        mime: row.get(4)?,
        original_name: row.get(5)?,
        library_path: row.get::<_, Option<String>>(6)?.map(PathBuf::from),
        metadata: serde_json::from_str(&metadata).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, error.into())
        })?,
        duplicates: row.get::<_, i64>(8)? as u64,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::tests::open_temp;
    use crate::store::{ClaimedJob, Durability, NewJob};

    fn claim_one(store: &mut Store) -> ClaimedJob {
        store
            .enqueue(&NewJob::new(
                "ingest",
                json!({"path": "/x/y", "watch_root": "/x", "mode": "index"}),
            ))
            .unwrap();
        store
            .claim_jobs(
                &"test-worker".into(),
                &["ingest"],
                1,
                Duration::from_secs(30),
            )
            .unwrap()
            .pop()
            .unwrap()
    }

    fn document(hash_byte: char, text: Option<&str>) -> NewDocument {
        NewDocument {
            blake3: hash_byte.to_string().repeat(64),
            sha256: "0".repeat(64),
            size: 5,
            mime: "text/plain".into(),
            original_name: "hello.txt".into(),
            library_path: None,
            metadata: json!({"lines": 1}),
            text: text.map(str::to_owned),
            pages: Vec::new(),
            wants_thumbnail: false,
        }
    }

    fn query(text: &str) -> SearchQuery {
        crate::policy::parse_search_query(text).unwrap()
    }

    #[test]
    fn an_ingest_commits_document_text_and_success_together() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        let finished = store
            .finish_ingest(&IngestRecord {
                job_id: job.id,
                lease_token: job.lease_token.clone(),
                file_id: None,
                document: document('a', Some("hello searchable world")),
            })
            .unwrap();
        assert!(!finished.duplicate);
        let stored = store.get_document(finished.document_id).unwrap();
        assert_eq!(stored.blake3, "a".repeat(64));
        assert_eq!(stored.metadata, json!({"lines": 1}));
        let job_row = store.get_job(job.id).unwrap();
        assert_eq!(job_row.state, JobState::Succeeded);
        assert_eq!(job_row.result.unwrap()["document_id"], finished.document_id);

        let hits = store
            .search_documents(
                &query("searchable"),
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(hits.items.len(), 1);
        assert!(
            hits.items[0].snippet.contains("[searchable]"),
            "{:?}",
            hits.items[0]
        );
    }

    #[test]
    fn a_lost_lease_commits_nothing() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        let error = store
            .finish_ingest(&IngestRecord {
                job_id: job.id,
                lease_token: LeaseToken::from("f".repeat(32)),
                file_id: None,
                document: document('b', Some("never")),
            })
            .unwrap_err();
        assert!(
            matches!(error, DocumentError::Job(JobError::LeaseLost { .. })),
            "{error}"
        );
        assert!(
            store
                .find_document_by_blake3(&"b".repeat(64))
                .unwrap()
                .is_none()
        );
        let page = store
            .search_documents(
                &query("never"),
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert!(page.items.is_empty());
        assert_eq!(store.get_job(job.id).unwrap().state, JobState::Running);
    }

    #[test]
    fn the_same_content_again_is_a_duplicate_not_a_second_document() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let first = claim_one(&mut store);
        let created = store
            .finish_ingest(&IngestRecord {
                job_id: first.id,
                lease_token: first.lease_token,
                file_id: None,
                document: document('c', None),
            })
            .unwrap();
        let second = claim_one(&mut store);
        let again = store
            .finish_ingest(&IngestRecord {
                job_id: second.id,
                lease_token: second.lease_token,
                file_id: None,
                document: NewDocument {
                    library_path: Some(PathBuf::from("/lib/cc/cc/c")),
                    ..document('c', None)
                },
            })
            .unwrap();
        assert_eq!(again.document_id, created.document_id);
        assert!(again.duplicate);
        let stored = store.get_document(created.document_id).unwrap();
        assert_eq!(stored.duplicates, 1);
        assert_eq!(stored.library_path, Some(PathBuf::from("/lib/cc/cc/c")));
        let all = store
            .list_documents(
                &DocumentFilter::default(),
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(all.items.len(), 1);
    }

    /// The monitor's `files` rows (written here with SQL, as the monitor's own store code
    /// lives elsewhere) follow the ingest outcome in the same transaction.
    #[test]
    fn file_rows_become_ingested_duplicate_or_failed_with_the_job() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        for (id, path) in [(1, "/in/a"), (2, "/in/b"), (3, "/in/c")] {
            store
                .connection()
                .execute(
                    "INSERT INTO files (id, watch_root, path, size, mtime_ns, inode, version_key,
                         state, first_seen_at, updated_at)
                     VALUES (?1, '/in', ?2, 5, 1, 1, 'v', 'detected', 0, 0)",
                    params![id, path],
                )
                .unwrap();
        }
        let file_state = |store: &Store, id: i64| -> (String, Option<i64>) {
            store
                .connection()
                .query_row(
                    "SELECT state, document_id FROM files WHERE id = ?1",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .unwrap()
        };
        let record = |job: ClaimedJob, file_id| IngestRecord {
            job_id: job.id,
            lease_token: job.lease_token,
            file_id: Some(file_id),
            document: document('e', None),
        };
        let job = claim_one(&mut store);
        let first = store.finish_ingest(&record(job, 1)).unwrap();
        assert_eq!(
            file_state(&store, 1),
            ("ingested".into(), Some(first.document_id))
        );
        // The same file again (a retry, a rescan) is not a duplicate of itself.
        let job = claim_one(&mut store);
        let again = store.finish_ingest(&record(job, 1)).unwrap();
        assert!(!again.duplicate);
        assert_eq!(store.get_document(first.document_id).unwrap().duplicates, 0);
        // Another file with the same content is.
        let job = claim_one(&mut store);
        let copy = store.finish_ingest(&record(job, 2)).unwrap();
        assert!(copy.duplicate);
        assert_eq!(
            file_state(&store, 2),
            ("duplicate".into(), Some(first.document_id))
        );
        assert_eq!(store.get_document(first.document_id).unwrap().duplicates, 1);
        // A failure marks the file failed once the job is finished for good.
        let job = claim_one(&mut store);
        store
            .fail_ingest(job.id, &job.lease_token, Some(3), "broken", true)
            .unwrap();
        assert_eq!(
            file_state(&store, 3).0,
            "detected",
            "a retrying job leaves the file be"
        );
        let job = claim_one(&mut store);
        store
            .fail_ingest(job.id, &job.lease_token, Some(3), "broken", false)
            .unwrap();
        assert_eq!(file_state(&store, 3).0, "failed");
        // A file row that vanished is a clear error, and nothing is committed.
        let job = claim_one(&mut store);
        let error = store
            .finish_ingest(&IngestRecord {
                document: document('f', None),
                ..record(job.clone(), 99)
            })
            .unwrap_err();
        assert!(matches!(error, DocumentError::FileNotFound(99)), "{error}");
        assert!(
            store
                .find_document_by_blake3(&"f".repeat(64))
                .unwrap()
                .is_none()
        );
        assert_eq!(store.get_job(job.id).unwrap().state, JobState::Running);
    }

    #[test]
    fn intents_survive_a_new_claim_and_need_the_lease() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        assert_eq!(store.ingest_intent(job.id).unwrap(), None);
        let hash = "d".repeat(64);
        store
            .record_ingest_intent(job.id, &job.lease_token, &hash)
            .unwrap();
        store.release_job(job.id, &job.lease_token).unwrap();
        let again = store
            .claim_jobs(&"other".into(), &["ingest"], 1, Duration::from_secs(30))
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(store.ingest_intent(again.id).unwrap(), Some(hash.clone()));
        let error = store
            .record_ingest_intent(again.id, &job.lease_token, &hash)
            .unwrap_err();
        assert!(matches!(
            error,
            DocumentError::Job(JobError::LeaseLost { .. })
        ));
        assert!(matches!(
            store.record_ingest_intent(again.id, &again.lease_token, "xyz"),
            Err(DocumentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_failed_ingest_records_the_error() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        let state = store
            .fail_ingest(job.id, &job.lease_token, None, "not a regular file", false)
            .unwrap();
        assert_eq!(state, JobState::Failed);
        assert_eq!(
            store.get_job(job.id).unwrap().error.as_deref(),
            Some("not a regular file")
        );
    }

    #[test]
    fn hostile_queries_are_plain_words_and_bad_pages_are_invalid_arguments() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        store
            .finish_ingest(&IngestRecord {
                job_id: job.id,
                lease_token: job.lease_token,
                file_id: None,
                document: document('d', Some("the topsecret-f2-marker and body: near words")),
            })
            .unwrap();
        let page = PageRequest {
            before_id: None,
            limit: 10,
        };
        // FTS5 syntax in a query is only text: each of these runs and finds what its words say.
        for (text, hits) in [
            ("topsecret-f2-marker", 1),
            ("\"unbalanced", 0),
            ("nosuchcolumn:word", 0),
            ("body:", 1),
            ("NEAR(words", 1),
            // The word "and", which the text has, not FTS5's operator.
            ("AND", 1),
            ("OR", 0),
            ("top*", 1),
        ] {
            let found = store.search_documents(&query(text), page).unwrap();
            assert_eq!(found.items.len(), hits, "{text:?}: {found:?}");
        }
        assert!(matches!(
            store.list_documents(
                &DocumentFilter::default(),
                PageRequest {
                    before_id: None,
                    limit: 0
                }
            ),
            Err(DocumentError::InvalidArgument(_))
        ));
        assert!(matches!(
            store.get_document(99),
            Err(DocumentError::NotFound(99))
        ));
    }

    #[test]
    fn document_pages_follow_the_cursor() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        for byte in ['1', '2', '3'] {
            let job = claim_one(&mut store);
            store
                .finish_ingest(&IngestRecord {
                    job_id: job.id,
                    lease_token: job.lease_token,
                    file_id: None,
                    document: NewDocument {
                        mime: if byte == '2' {
                            "image/png".into()
                        } else {
                            "text/plain".into()
                        },
                        ..document(byte, Some("common words here"))
                    },
                })
                .unwrap();
        }
        let first = store
            .list_documents(
                &DocumentFilter::default(),
                PageRequest {
                    before_id: None,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(first.items.len(), 2);
        let rest = store
            .list_documents(
                &DocumentFilter::default(),
                PageRequest {
                    before_id: first.next_cursor,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.next_cursor, None);
        let images = store
            .list_documents(
                &DocumentFilter {
                    mime_prefix: Some("image/".into()),
                },
                PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(images.items.len(), 1);
        let hits = store
            .search_documents(
                &query("common"),
                PageRequest {
                    before_id: None,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(hits.items.len(), 2);
        assert!(hits.next_cursor.is_some());
    }

    /// Issue 13: a page of documents of a MIME prefix is merged from one range per type
    /// (newest first across types, the cursor continuing each), and neither that nor the
    /// plain list walks the documents table.
    #[test]
    fn documents_of_a_type_are_paged_newest_first_from_an_index() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let types = [
            "image/png",
            "text/plain",
            "image/jpeg",
            "image/png",
            "application/pdf",
            "image/gif",
            "imagex/odd",
            "image/jpeg",
        ];
        let mut ids = Vec::new();
        for (index, mime) in types.iter().enumerate() {
            let job = claim_one(&mut store);
            let finished = store
                .finish_ingest(&IngestRecord {
                    job_id: job.id,
                    lease_token: job.lease_token,
                    file_id: None,
                    document: NewDocument {
                        mime: (*mime).into(),
                        ..document(char::from(b"0123456789abcdef"[index]), None)
                    },
                })
                .unwrap();
            ids.push((*mime, finished.document_id));
        }
        let of = |prefix: &str| -> Vec<i64> {
            ids.iter()
                .rev()
                .filter(|(mime, _)| mime.starts_with(prefix))
                .map(|(_, id)| *id)
                .collect()
        };
        for prefix in [
            "image/",
            "image/png",
            "text/plain",
            "i",
            "nothing/",
            "image/jpeg",
        ] {
            let mut listed = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .list_documents(
                        &DocumentFilter {
                            mime_prefix: Some(prefix.into()),
                        },
                        PageRequest {
                            before_id: cursor,
                            limit: 2,
                        },
                    )
                    .unwrap();
                assert!(page.items.len() <= 2);
                listed.extend(page.items.iter().map(|document| document.id));
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(listed, of(prefix), "{prefix}");
        }

        let plan = |sql: &str| -> String {
            let mut statement = store
                .connection()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let parameters: [&dyn rusqlite::ToSql; 3] = [&"image/png", &100, &51];
            let wanted = statement.parameter_count();
            let steps: Vec<String> = statement
                .query_map(&parameters[..wanted], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            steps.join("\n")
        };
        for after_cursor in [false, true] {
            let by_type = plan(&list_documents_sql(true, after_cursor));
            assert!(
                by_type.contains("INDEX documents_by_mime (mime=?"),
                "{by_type}"
            );
            assert!(!by_type.contains("TEMP B-TREE"), "{by_type}");
        }
        assert!(
            plan(&list_documents_sql(false, true)).contains("INTEGER PRIMARY KEY (rowid<?)"),
            "the cursor must be a range of the primary key"
        );
        let next_type = plan(
            "SELECT mime FROM documents INDEXED BY documents_by_mime
             WHERE mime > ?1 AND mime < ?2 ORDER BY mime LIMIT 1",
        );
        assert!(
            next_type.contains("documents_by_mime (mime>? AND mime<?)"),
            "{next_type}"
        );
        assert!(!next_type.contains("TEMP B-TREE"), "{next_type}");
    }

    #[test]
    fn each_page_is_a_hit_of_its_own_best_first_with_a_snippet() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let job = claim_one(&mut store);
        let pages = vec![
            "first page about rivers".to_owned(),
            String::new(),
            "third page: river river river ledger".to_owned(),
        ];
        let finished = store
            .finish_ingest(&IngestRecord {
                job_id: job.id,
                lease_token: job.lease_token,
                file_id: None,
                document: NewDocument {
                    mime: "application/pdf".into(),
                    original_name: "report.pdf".into(),
                    pages,
                    ..document('e', None)
                },
            })
            .unwrap();
        let all = PageRequest {
            before_id: None,
            limit: 10,
        };
        let hits = store.search_documents(&query("river"), all).unwrap();
        let found: Vec<Option<u32>> = hits.items.iter().map(|hit| hit.page).collect();
        // Page 3 says it three times; page 1 has "rivers", another word.
        assert_eq!(found, vec![Some(3)], "{hits:?}");
        assert_eq!(hits.items[0].document.id, finished.document_id);
        assert!(
            hits.items[0].snippet.contains("[river] [river]"),
            "{:?}",
            hits.items[0].snippet
        );
        let hits = store.search_documents(&query("river*"), all).unwrap();
        let found: Vec<Option<u32>> = hits.items.iter().map(|hit| hit.page).collect();
        assert_eq!(found, vec![Some(3), Some(1)], "{hits:?}");
        assert!(hits.items[0].rank <= hits.items[1].rank);
        // The name is indexed once, with the first page that has text.
        let by_name = store.search_documents(&query("report"), all).unwrap();
        assert_eq!(by_name.items.len(), 1);
        assert_eq!(by_name.items[0].page, Some(1));
        // The cursor counts the hits seen.
        let first = store
            .search_documents(
                &query("river*"),
                PageRequest {
                    before_id: None,
                    limit: 1,
                },
            )
            .unwrap();
        assert_eq!(first.next_cursor, Some(1));
        let second = store
            .search_documents(
                &query("river*"),
                PageRequest {
                    before_id: first.next_cursor,
                    limit: 1,
                },
            )
            .unwrap();
        assert_eq!(second.items[0].page, Some(1));
        assert_eq!(second.next_cursor, None);
    }

    #[test]
    fn a_new_document_queues_one_thumbnail_job_whose_result_needs_the_lease() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let record = |job: ClaimedJob| IngestRecord {
            job_id: job.id,
            lease_token: job.lease_token,
            file_id: None,
            document: NewDocument {
                mime: "image/png".into(),
                wants_thumbnail: true,
                ..document('a', None)
            },
        };
        let job = claim_one(&mut store);
        let first = store.finish_ingest(&record(job)).unwrap();
        let thumbnail_job =
            store.get_document(first.document_id).unwrap().metadata["thumbnail_job"]
                .as_i64()
                .expect("the thumbnail job is recorded with the document");
        // The same content again (a duplicate) queues nothing more.
        let job = claim_one(&mut store);
        store.finish_ingest(&record(job)).unwrap();
        let kind = |store: &mut Store| {
            store
                .claim_jobs(
                    &"thumbnailer".into(),
                    &[THUMBNAIL_JOB_KIND],
                    10,
                    Duration::from_secs(30),
                )
                .unwrap()
        };
        let claimed = kind(&mut store);
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(claimed[0].id, thumbnail_job);
        assert_eq!(claimed[0].priority, THUMBNAIL_JOB_PRIORITY);
        assert_eq!(
            claimed[0].payload,
            json!({"document_id": first.document_id})
        );

        // A lost lease records nothing; the holder's result is recorded with the success.
        let thumbnail = json!({"path": "thumbnails/aa/x.png", "width": 2, "height": 1});
        let error = store
            .finish_thumbnail(
                thumbnail_job,
                &LeaseToken::from("f".repeat(32)),
                first.document_id,
                Ok(&thumbnail),
            )
            .unwrap_err();
        assert!(
            matches!(error, DocumentError::Job(JobError::LeaseLost { .. })),
            "{error}"
        );
        assert!(store.get_document(first.document_id).unwrap().metadata["thumbnail"].is_null());
        let state = store
            .finish_thumbnail(
                thumbnail_job,
                &claimed[0].lease_token,
                first.document_id,
                Ok(&thumbnail),
            )
            .unwrap();
        assert_eq!(state, JobState::Succeeded);
        let metadata = store.get_document(first.document_id).unwrap().metadata;
        assert_eq!(metadata["thumbnail"], thumbnail);
        assert_eq!(metadata["lines"], 1, "the rest of the metadata is kept");

        // Text gets no thumbnail job.
        let job = claim_one(&mut store);
        let text = store
            .finish_ingest(&IngestRecord {
                job_id: job.id,
                lease_token: job.lease_token,
                file_id: None,
                document: document('b', Some("words")),
            })
            .unwrap();
        assert!(store.get_document(text.document_id).unwrap().metadata["thumbnail_job"].is_null());
        assert!(kind(&mut store).is_empty());
    }
}
