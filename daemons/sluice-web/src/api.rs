//! The JSON API over the store: jobs, downloads, sources and documents. Handlers validate, run one store
//! call on a blocking thread, and answer; changes that workers must hear about are announced
//! on the bus through the main loop.

// utoipa's `params(Query)` expands to paths it qualifies fully, with the span of the
// name written here.
#![allow(unused_qualifications)]

use actix_web::web::{Data, Json, Path, Query};
use actix_web::{HttpResponse, http::StatusCode};
use serde::Deserialize;
use sluice_core::policy::{SubmitRules, parse_search_query};
use sluice_core::store::Store;
use sluice_core::store::documents::DocumentFilter;
use sluice_core::store::downloads::{
    DOWNLOAD_JOB_KIND, DownloadError, DownloadFilter, DownloadState, NewDownload,
};
use sluice_core::store::jobs::{Job, JobError, JobFilter, JobState, Page, PageRequest};
use sluice_core::store::{Document, Download, SourceStatus};
use utoipa::{IntoParams, ToSchema};

use crate::address::check_download_submission;
use crate::answers::{
    DocumentItem, DocumentList, DownloadCreated, DownloadDeleted, JobHistory, SourceList,
};
use crate::error::{ApiError, ErrorBody};
use crate::state::{Announcement, AppState};

/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// One state or several separated by commas (queued, running, retrying, succeeded,
    /// failed, cancelled, dead).
    state: Option<String>,
    /// Only jobs of this kind (`ingest`, `download`, ...). A page with a kind looks at the
    /// 10,000 job ids below the cursor at most, so it can be short or even empty while
    /// `next_cursor` is still given: follow `next_cursor` until it is absent.
    kind: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(minimum = 1)]
    cursor: Option<i64>,
    /// Page size, 1 to `[limits] max_page_size` (at most 500); default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DownloadsQuery {
    /// One state or several separated by commas (queued, running, succeeded, failed,
    /// cancelled).
    state: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(minimum = 1)]
    cursor: Option<i64>,
    /// Page size, 1 to `[limits] max_page_size` (at most 500); default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DocumentsQuery {
    /// A search as a person types it: words, "phrases", a trailing prefix* (see
    /// `sluice_core::policy::parse_search_query`); hits are pages, best first.
    q: Option<String>,
    /// Only documents whose MIME type starts with this, e.g. `image/`.
    mime: Option<String>,
    /// `next_cursor` of the previous page (for a search: the offset it gave).
    #[param(minimum = 1)]
    cursor: Option<i64>,
    /// Page size, 1 to `[limits] max_page_size` (at most 500); default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// The body of `POST /api/downloads`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// An http or https URL.
    #[schema(min_length = 1)]
    url: String,
    /// The expected SHA-256 of the file, 64 hex digits; a mismatch fails the download.
    sha256: Option<String>,
    /// The name in the inbox; by default the last segment of the URL's path.
    file_name: Option<String>,
    /// A limit below `[scraper] max_download_size`.
    max_bytes: Option<u64>,
    /// The sub-folder of the inbox that groups several downloads.
    bundle: Option<String>,
}

/// Jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(JobsQuery),
    responses(
        (status = 200, description = "A page of jobs", body = Page<Job>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ))]
pub async fn list_jobs(
    state: Data<AppState>,
    query: Query<JobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = page_request(&state, query.cursor, query.limit)?;
    let mut filter = JobFilter::default();
    if let Some(states) = &query.state {
        for name in states.split(',').filter(|name| !name.is_empty()) {
            filter.states.push(name.parse::<JobState>()?);
        }
    }
    if let Some(kind) = query.kind.filter(|kind| !kind.is_empty()) {
        check_length(&state, "kind", &kind)?;
        filter.kind = Some(kind);
    }
    let page = state
        .with_store(move |store| store.list_jobs(&filter, page))
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Every state change of a job, oldest first.
#[utoipa::path(get, path = "/api/jobs/{id}/history", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job's transitions", body = JobHistory),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn job_history(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let transitions = state.with_store(move |store| store.job_history(id)).await?;
    Ok(HttpResponse::Ok().json(JobHistory {
        job_id: id,
        transitions,
    }))
}

/// Queues a failed, dead or cancelled job again.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, queued again", body = Job),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not in a state that can be retried", body = ErrorBody),
    ))]
pub async fn retry_job(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let job = state.with_store(move |store| retry(store, id)).await?;
    tracing::info!(job_id = id, "job {id} queued again on request");
    state.announce(announcement_for(&job));
    Ok(HttpResponse::Ok().json(job))
}

/// Cancels a job: at once when it waits, at its worker's next heartbeat when it runs.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, cancelled or (running) asked to stop", body = Job),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already ended", body = ErrorBody),
    ))]
pub async fn cancel_job(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let job = state.with_store(move |store| cancel(store, id)).await?;
    tracing::info!(
        job_id = id,
        state = %job.state,
        "job {id} cancelled on request; it is now {}",
        job.state
    );
    state.announce(announcement_for(&job));
    Ok(HttpResponse::Ok().json(job))
}

/// Retries a job: the one rule shared by the HTTP API and `org.sluice.Web1.RetryJob`.
pub fn retry(store: &mut Store, id: i64) -> Result<Job, JobError> {
    store.retry_job(id)
}

/// Cancels a job: the one rule shared by the HTTP API and `org.sluice.Web1.CancelJob`. The
/// job comes back `cancelled` when it was waiting, or still `running` with
/// `cancel_requested` set, until its worker stops at the next heartbeat.
pub fn cancel(store: &mut Store, id: i64) -> Result<Job, JobError> {
    store.cancel_job(id)
}

/// The signal a changed job deserves: `JobQueued` when it waits to be claimed, otherwise
/// `JobFinished` with its state (`cancelled`) or, for a running job asked to stop,
/// nothing more than the database change (its worker reports the end).
pub fn announcement_for(job: &Job) -> Announcement {
    let job_id = u64::try_from(job.id).unwrap_or_default();
    match job.state {
        JobState::Queued | JobState::Retrying => Announcement::JobQueued {
            kind: job.kind.clone(),
            job_id,
        },
        state => Announcement::JobFinished {
            job_id,
            state: if state == JobState::Running {
                "cancelling".to_owned()
            } else {
                state.as_str().to_owned()
            },
        },
    }
}

/// Queues a download of one URL into the inbox.
#[utoipa::path(post, path = "/api/downloads", tag = "downloads", request_body = DownloadRequest,
    responses(
        (status = 201, description = "The download and its job", body = DownloadCreated),
        (status = 400, description = "The body or the URL is refused (the `reason` says why)", body = ErrorBody),
        (status = 413, description = "The body is larger than `[limits] max_request_body`", body = ErrorBody),
        (status = 429, description = "`[scraper] max_pending` downloads wait already", body = ErrorBody),
    ))]
pub async fn create_download(
    state: Data<AppState>,
    body: Json<DownloadRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let settings = state.settings();
    let submitted = NewDownload {
        url: request.url,
        file_name: request.file_name,
        bundle: request.bundle,
        expected_sha256: request.sha256,
        max_bytes: request.max_bytes,
        source: None,
        max_attempts: Some(settings.max_attempts),
    };
    let rules = SubmitRules {
        allow_private_addresses: settings.allow_private_addresses,
        max_download_size: settings.max_download_size,
    };
    // The policy first, so an over-long URL gets its `invalid_url` reason like on D-Bus and
    // in sluicectl; the configured text limit applies on top.
    let download = check_download_submission(&submitted, &rules).await?;
    check_length(&state, "url", &submitted.url)?;
    let max_pending = settings.max_pending_downloads;
    let (download, job_id) = state
        .with_store(move |store| {
            let created = store.create_download_within_limit(&download, max_pending)?;
            let row = store.get_download(created.download_id)?;
            Ok::<_, DownloadError>((row, created.job_id))
        })
        .await?;
    tracing::info!(
        download_id = download.id,
        job_id,
        url = %download.url,
        "download {} queued as job {job_id}: {}",
        download.id,
        download.url
    );
    state.announce(Announcement::JobQueued {
        kind: DOWNLOAD_JOB_KIND.to_owned(),
        job_id: u64::try_from(job_id).unwrap_or_default(),
    });
    Ok(HttpResponse::build(StatusCode::CREATED).json(DownloadCreated { download, job_id }))
}

/// Downloads, newest first, a page at a time.
#[utoipa::path(get, path = "/api/downloads", tag = "downloads", params(DownloadsQuery),
    responses(
        (status = 200, description = "A page of downloads", body = Page<Download>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ))]
pub async fn list_downloads(
    state: Data<AppState>,
    query: Query<DownloadsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = page_request(&state, query.cursor, query.limit)?;
    let mut filter = DownloadFilter::default();
    for name in query.state.iter().flat_map(|text| text.split(',')) {
        if !name.is_empty() {
            filter.states.push(name.parse::<DownloadState>()?);
        }
    }
    let page = state
        .with_store(move |store| store.list_downloads(&filter, page))
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(get, path = "/api/sources", tag = "sources",
    responses((status = 200, description = "Every source the scraper has recorded", body = SourceList)))]
/// `GET /api/sources`: every source the scraper has recorded, by name — the configured ones
/// and, with `enabled: false`, those removed from the configuration — with the schedule, the
/// validators and the outcome of the last check.
pub async fn list_sources(state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    let sources = state.with_store(|store| store.list_sources()).await?;
    Ok(HttpResponse::Ok().json(SourceList { items: sources }))
}

/// `GET /api/sources/{name}`.
#[utoipa::path(get, path = "/api/sources/{name}", tag = "sources",
    params(("name" = String, Path, description = "The source's name from the configuration")),
    responses(
        (status = 200, description = "The source", body = SourceStatus),
        (status = 400, description = "Not a valid source name", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
    ))]
pub async fn get_source(
    state: Data<AppState>,
    name: Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    sluice_core::policy::check_source_name(&name)?;
    let source = state.read_now(|store| store.get_source(&name))?;
    Ok(HttpResponse::Ok().json(source))
}

/// One download.
#[utoipa::path(get, path = "/api/downloads/{id}", tag = "downloads",
    params(("id" = i64, Path, description = "The download's id")),
    responses(
        (status = 200, description = "The download", body = Download),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such download", body = ErrorBody),
    ))]
pub async fn get_download(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let download = state.read_now(|store| store.get_download(id))?;
    Ok(HttpResponse::Ok().json(download))
}

/// Deletes a download. A running scraper does it (it stops the transfer and removes the
/// partial file); without one, the store cancels the job and removes the row here, and the
/// partial file, if any, is removed when it lies in the staging folder.
#[utoipa::path(delete, path = "/api/downloads/{id}", tag = "downloads",
    params(("id" = i64, Path, description = "The download's id")),
    responses(
        (status = 200, description = "Deleted", body = DownloadDeleted),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such download", body = ErrorBody),
        (status = 409, description = "It still runs and no scraper is there to stop it", body = ErrorBody),
    ))]
pub async fn delete_download(
    state: Data<AppState>,
    id: Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    // Existence first, so an unknown id is a 404 whoever would do the deleting.
    state
        .with_store(move |store| store.get_download(id))
        .await?;
    let download_id = u64::try_from(id).unwrap_or_default();
    let through_scraper = state
        .on_scraper(move |proxy| async move { proxy.delete_download(download_id).await })
        .await;
    match through_scraper {
        Some(result) => result?,
        None => {
            let staging = state.settings().staging.clone();
            let deleted = state
                .with_store(move |store| {
                    let download = store.get_download(id)?;
                    if !download.state.is_finished() {
                        let cancelled = store.cancel_download(id)?;
                        if !cancelled.state.is_finished() {
                            return Err(DownloadError::InvalidState {
                                id,
                                state: cancelled.state,
                                action: "delete while sluice-scraper is not running to stop \
                                         it (cancellation is requested; delete it again once \
                                         it is cancelled)",
                            });
                        }
                    }
                    store.delete_download(id)
                })
                .await?;
            if let Some(part_path) = &deleted.part_path {
                remove_partial_file(std::path::Path::new(part_path), &staging);
            }
        }
    }
    tracing::info!(download_id = id, "download {id} deleted");
    Ok(HttpResponse::Ok().json(DownloadDeleted { deleted: id }))
}

/// Documents, newest first; with `q`, the pages that match, best first.
#[utoipa::path(get, path = "/api/documents", tag = "documents", params(DocumentsQuery),
    responses(
        (status = 200, description = "A page of documents or of search hits", body = DocumentList),
        (status = 400, description = "A parameter or the query is invalid", body = ErrorBody),
    ))]
pub async fn list_documents(
    state: Data<AppState>,
    query: Query<DocumentsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = page_request(&state, query.cursor, query.limit)?;
    // A blank `q` lists documents as if it were absent; anything else must be a query.
    let search = query
        .q
        .filter(|text| !text.trim().is_empty())
        .map(|text| parse_search_query(&text))
        .transpose()?;
    let filter = DocumentFilter {
        mime_prefix: query.mime.filter(|prefix| !prefix.is_empty()),
    };
    let page = state
        .with_store(move |store| match search {
            // Search hits have the document's fields plus the page and the matching snippet,
            // so a client reads both lists the same way.
            Some(search) => store
                .search_documents(&search, page)
                .map(|hits| DocumentList {
                    items: hits
                        .items
                        .into_iter()
                        .map(|hit| DocumentItem {
                            document: hit.document,
                            page: Some(hit.page),
                            snippet: Some(hit.snippet),
                            rank: Some(hit.rank),
                        })
                        .collect(),
                    next_cursor: hits.next_cursor,
                }),
            None => store
                .list_documents(&filter, page)
                .map(|documents| DocumentList {
                    items: documents
                        .items
                        .into_iter()
                        .map(|document| DocumentItem {
                            document,
                            page: None,
                            snippet: None,
                            rank: None,
                        })
                        .collect(),
                    next_cursor: documents.next_cursor,
                }),
        })
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// One document.
#[utoipa::path(get, path = "/api/documents/{id}", tag = "documents",
    params(("id" = i64, Path, description = "The document's id")),
    responses(
        (status = 200, description = "The document", body = Document),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such document", body = ErrorBody),
    ))]
pub async fn get_document(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let document = state
        .with_store(move |store| store.get_document(id))
        .await?;
    Ok(HttpResponse::Ok().json(document))
}

pub(crate) fn page_request(
    state: &AppState,
    cursor: Option<i64>,
    limit: Option<u32>,
) -> Result<PageRequest, ApiError> {
    let max_page_size = state.settings().max_page_size;
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE.min(max_page_size));
    if limit == 0 || limit > max_page_size {
        return Err(ApiError::InvalidArgument(format!(
            "limit must be 1..={max_page_size} ([limits] max_page_size), got {limit}"
        )));
    }
    if let Some(cursor) = cursor
        && cursor <= 0
    {
        return Err(ApiError::InvalidArgument(format!(
            "cursor must be a positive id from next_cursor, got {cursor}"
        )));
    }
    Ok(PageRequest {
        before_id: cursor,
        limit,
    })
}

fn check_length(state: &AppState, argument: &str, value: &str) -> Result<(), ApiError> {
    let limit = state.settings().max_string_length;
    let length = value.chars().count();
    if length > limit {
        return Err(ApiError::InvalidArgument(format!(
            "{argument} is {length} characters long; the limit is {limit} ([limits] max_string_length)"
        )));
    }
    Ok(())
}

/// Removes a partial download file, only if it is a regular file directly inside `staging`;
/// a row pointing anywhere else is not trusted to name a file to delete.
fn remove_partial_file(part_path: &std::path::Path, staging: &std::path::Path) {
    let inside_staging = part_path.parent() == Some(staging)
        && part_path
            .symlink_metadata()
            .is_ok_and(|metadata| metadata.file_type().is_file());
    if !inside_staging {
        return;
    }
    if let Err(error) = std::fs::remove_file(part_path) {
        tracing::warn!(
            path = %part_path.display(),
            error = %error,
            "cannot remove the partial download {}: {error}",
            part_path.display()
        );
    }
}
