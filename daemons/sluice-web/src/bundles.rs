//! `/api/bundles`: several downloads that reach the inbox as one folder, and `hf://` model
//! repositories. Reads come from the store; every change goes through the scraper's D-Bus
//! object (`AddBundle`, `CancelBundle`, `DeleteBundle`), which alone links the HTTP client an
//! `hf://` name is resolved with and runs the files, so a change needs sluice-scraper
//! running (503 otherwise). A list of files is checked by the policy here first, so a hostile
//! one is a 400 whether the scraper runs or not.
//!
//! Who may call: `GET` with the read token (or anyone when reads are public), `POST` and
//! `DELETE` with the write token, like every other route.

// utoipa's `params(Query)` expands to paths it qualifies fully, with the span of the
// name written here.
#![allow(unused_qualifications)]

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web::{Data, Json, Path, Query};
use serde::Deserialize;
use sluice_core::bus::{BusError, ScraperProxy, bundle_request};
use sluice_core::policy::{SubmitRules, is_hf_reference};

use crate::answers::{BundleAnswer, BundleDeleted, BundleWithFiles};
use crate::api::page_request;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use sluice_core::store::bundles::Bundle;
use sluice_core::store::jobs::Page;

/// The body of `POST /api/bundles`: `name` is the folder's name with `files`, or
/// `hf://[datasets/]ORG/NAME[@REVISION]` without.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleRequest {
    /// The folder's name, or `hf://[datasets/]ORG/NAME[@REVISION]` (then without files).
    #[schema(min_length = 1)]
    name: String,
    #[serde(default)]
    files: Vec<BundleFileRequest>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleFileRequest {
    /// An http or https URL.
    url: String,
    /// The file's path inside the bundle's folder; by default the URL's last segment.
    path: Option<String>,
    /// The expected SHA-256, 64 hex digits.
    sha256: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BundlesQuery {
    /// `next_cursor` of the previous page.
    #[param(minimum = 1)]
    cursor: Option<i64>,
    /// Page size, 1 to `[limits] max_page_size` (at most 500); default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// Queues a bundle: several downloads into one folder of the inbox (through the scraper).
#[utoipa::path(post, path = "/api/bundles", tag = "bundles", request_body = BundleRequest,
    responses(
        (status = 201, description = "The bundle", body = BundleAnswer),
        (status = 400, description = "The body, a URL, a path or a digest is refused", body = ErrorBody),
        (status = 413, description = "The body is larger than `[limits] max_request_body`", body = ErrorBody),
        (status = 429, description = "The download queue is full", body = ErrorBody),
    ))]
pub async fn create_bundle(
    state: Data<AppState>,
    body: Json<BundleRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let settings = state.settings();
    // D-Bus carries an absent path or digest as "", so an empty one is refused here, where
    // JSON can tell the two apart.
    for (index, file) in request.files.iter().enumerate() {
        if file.path.as_deref() == Some("") {
            return Err(ApiError::InvalidArgument(format!(
                "invalid_path: file {index}: path \"\" must not be empty"
            )));
        }
        if file.sha256.as_deref() == Some("") {
            return Err(ApiError::InvalidArgument(format!(
                "invalid_sha256: file {index}: sha256 \"\" is not 64 hexadecimal digits"
            )));
        }
    }
    let files: Vec<(String, String, String)> = request
        .files
        .into_iter()
        .map(|file| {
            (
                file.url,
                file.path.unwrap_or_default(),
                file.sha256.unwrap_or_default(),
            )
        })
        .collect();
    let bundle = bundle_request(&request.name, files.clone())?;
    if !is_hf_reference(&request.name) {
        let rules = SubmitRules {
            allow_private_addresses: settings.allow_private_addresses,
            max_download_size: settings.max_download_size,
        };
        bundle.validate(&rules)?;
    }
    let name = request.name.clone();
    let added = state
        .on_scraper(move |proxy| async move { proxy.add_bundle(&name, files).await })
        .await
        .ok_or_else(scraper_not_running)??;
    let id = i64::try_from(added).unwrap_or_default();
    let bundle = state.with_store(move |store| store.get_bundle(id)).await?;
    tracing::info!(
        bundle_id = id,
        "bundle {id} ({}) queued with {} files",
        request.name,
        bundle.files_total
    );
    Ok(HttpResponse::build(StatusCode::CREATED).json(BundleAnswer { bundle }))
}

/// Bundles, newest first, a page at a time.
#[utoipa::path(get, path = "/api/bundles", tag = "bundles", params(BundlesQuery),
    responses(
        (status = 200, description = "A page of bundles", body = Page<Bundle>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ))]
pub async fn list_bundles(
    state: Data<AppState>,
    query: Query<BundlesQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = page_request(&state, query.cursor, query.limit)?;
    let page = state
        .with_store(move |store| store.list_bundles(page))
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /api/bundles/{id}`: the bundle's status and its files (each a download).
#[utoipa::path(get, path = "/api/bundles/{id}", tag = "bundles",
    params(("id" = i64, Path, description = "The bundle's id")),
    responses(
        (status = 200, description = "The bundle and its files", body = BundleWithFiles),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such bundle", body = ErrorBody),
    ))]
pub async fn get_bundle(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let (bundle, files) = state
        .with_store(move |store| {
            Ok::<_, sluice_core::store::DownloadError>((
                store.get_bundle(id)?,
                store.bundle_files(id)?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(BundleWithFiles { bundle, files }))
}

/// Cancels a running bundle and its files (through the scraper).
#[utoipa::path(post, path = "/api/bundles/{id}/cancel", tag = "bundles",
    params(("id" = i64, Path, description = "The bundle's id")),
    responses(
        (status = 200, description = "The bundle", body = BundleAnswer),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such bundle", body = ErrorBody),
        (status = 409, description = "The bundle has already ended", body = ErrorBody),
    ))]
pub async fn cancel_bundle(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state.with_store(move |store| store.get_bundle(id)).await?;
    let bundle_id = u64::try_from(id).unwrap_or_default();
    call_scraper(&state, move |proxy| async move {
        proxy.cancel_bundle(bundle_id).await
    })
    .await?;
    let bundle = state.with_store(move |store| store.get_bundle(id)).await?;
    Ok(HttpResponse::Ok().json(BundleAnswer { bundle }))
}

/// Deletes a bundle and its files (through the scraper).
#[utoipa::path(delete, path = "/api/bundles/{id}", tag = "bundles",
    params(("id" = i64, Path, description = "The bundle's id")),
    responses(
        (status = 200, description = "Deleted", body = BundleDeleted),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such bundle", body = ErrorBody),
        (status = 409, description = "The bundle cannot be deleted in its state", body = ErrorBody),
    ))]
pub async fn delete_bundle(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state.with_store(move |store| store.get_bundle(id)).await?;
    let bundle_id = u64::try_from(id).unwrap_or_default();
    call_scraper(&state, move |proxy| async move {
        proxy.delete_bundle(bundle_id).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(BundleDeleted { deleted: id }))
}

async fn call_scraper<F>(
    state: &AppState,
    call: impl FnOnce(ScraperProxy<'static>) -> F + Send + 'static,
) -> Result<(), ApiError>
where
    F: Future<Output = Result<(), BusError>> + Send + 'static,
{
    state
        .on_scraper(call)
        .await
        .ok_or_else(scraper_not_running)??;
    Ok(())
}

fn scraper_not_running() -> ApiError {
    ApiError::Unavailable(
        "sluice-scraper is not running; bundles are added, cancelled and deleted through it"
            .to_owned(),
    )
}
