//! The JSON bodies the API answers with, beyond the store's own rows: typed, so the handlers
//! and the OpenAPI document (`openapi.rs`) share one definition and cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_core::store::bundles::Bundle;
use sluice_core::store::jobs::{Job, JobTransition};
use sluice_core::store::{Document, Download, SourceStatus};
use utoipa::ToSchema;

use crate::status::DaemonStatus;

/// `GET /api/jobs/{id}/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobHistory {
    pub job_id: i64,
    /// Oldest first; the first entry is the creation (`from_state` null).
    pub transitions: Vec<JobTransition>,
}

/// `POST /api/downloads` (201).
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadCreated {
    pub download: Download,
    /// The job that runs the download.
    pub job_id: i64,
}

/// `DELETE /api/downloads/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadDeleted {
    /// The id of the deleted download.
    pub deleted: i64,
}

/// `GET /api/sources`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    pub items: Vec<SourceStatus>,
}

/// A document in `GET /api/documents`; a search (`?q=`) adds where it matched.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentItem {
    #[serde(flatten)]
    pub document: Document,
    /// Search only: the page of the hit, from 1; null for text without pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub page: Option<Option<u32>>,
    /// Search only: an excerpt with the matches in `[` `]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    /// Search only: FTS5's bm25 rank, lower is better (hits come best first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<f64>,
}

/// `GET /api/documents`: newest first, or best hit first for a search.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    pub items: Vec<DocumentItem>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<i64>,
}

/// A job with the document it produced (null until it has one).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobWithDocument {
    #[serde(flatten)]
    pub job: Job,
    pub document: Option<Document>,
}

/// One file of an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    /// The name it was sent under.
    pub name: String,
    /// The name it has in the inbox.
    pub stored_as: String,
    pub size: u64,
    pub file_id: i64,
    /// Null while the file is held because the ingest queue is full.
    pub job_id: Option<i64>,
    /// Present (true) when the file is held: stored and recorded, queued once there is room.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// With `?wait=`: the job as it was when the wait ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobWithDocument>,
}

/// `POST /api/documents`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadAnswer {
    pub uploads: Vec<UploadedFile>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `alive`.
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Always `ready` (a store that does not answer is a 503).
    pub status: &'static str,
    pub schema_version: i64,
}

/// `GET /api/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuiteStatus {
    pub daemons: Vec<DaemonStatus>,
    /// How many jobs are in each state (every state, 0 included).
    pub jobs: BTreeMap<String, u64>,
    pub thumbnails: Thumbnails,
    pub store: StoreSummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Thumbnails {
    /// `[ingest] thumbnail_size`, pixels.
    pub size: u32,
    /// What renders PDF thumbnails (`pdftoppm 22.12.0`), as the running workers found it;
    /// null when none has one.
    pub pdf: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreSummary {
    pub path: String,
    /// `full` or `normal`.
    pub durability: &'static str,
}

/// `POST /api/bundles` (201) and `POST /api/bundles/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleAnswer {
    pub bundle: Bundle,
}

/// `GET /api/bundles/{id}`: the bundle and its files, each a download.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleWithFiles {
    pub bundle: Bundle,
    pub files: Vec<Download>,
}

/// `DELETE /api/bundles/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleDeleted {
    /// The id of the deleted bundle.
    pub deleted: i64,
}
