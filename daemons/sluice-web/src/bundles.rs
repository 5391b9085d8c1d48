//! `/api/bundles`: several downloads that reach the inbox as one folder, and `hf://` model
//! repositories. Reads come from the store; every change goes through the scraper's D-Bus
//! object (`AddBundle`, `CancelBundle`, `DeleteBundle`), which alone links the HTTP client an
//! `hf://` name is resolved with and runs the files, so a change needs sluice-scraper
//! running (503 otherwise). A list of files is checked by the policy here first, so a hostile
//! one is a 400 whether the scraper runs or not.
//!
//! Who may call: `GET` with the read token (or anyone when reads are public), `POST` and
//! `DELETE` with the write token, like every other route.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web::{Data, Json, Path, Query};
use serde::Deserialize;
use serde_json::json;
use sluice_core::bus::{BusError, SCRAPER_BUS_NAME, ScraperProxy, bundle_request, name_has_owner};
use sluice_core::policy::{SubmitRules, is_hf_reference};

use crate::api::page_request;
use crate::error::ApiError;
use crate::state::AppState;

/// The body of `POST /api/bundles`: `name` is the folder's name with `files`, or
/// `hf://[datasets/]ORG/NAME[@REVISION]` without.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRequest {
    name: String,
    #[serde(default)]
    files: Vec<BundleFileRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFileRequest {
    url: String,
    path: Option<String>,
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesQuery {
    cursor: Option<i64>,
    limit: Option<u32>,
}

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
        .on_bus(move |connection| async move {
            if !name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = ScraperProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await;
            Some(match proxy {
                Ok(proxy) => proxy.add_bundle(&name, files).await,
                Err(error) => Err(BusError::ZBus(error)),
            })
        })
        .await
        .flatten()
        .ok_or_else(scraper_not_running)??;
    let id = i64::try_from(added).unwrap_or_default();
    let bundle = state.with_store(move |store| store.get_bundle(id)).await?;
    tracing::info!(
        bundle_id = id,
        "bundle {id} ({}) queued with {} files",
        request.name,
        bundle.files_total
    );
    Ok(HttpResponse::build(StatusCode::CREATED).json(json!({ "bundle": bundle })))
}

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
    Ok(HttpResponse::Ok().json(json!({ "bundle": bundle, "files": files })))
}

pub async fn cancel_bundle(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state.with_store(move |store| store.get_bundle(id)).await?;
    let bundle_id = u64::try_from(id).unwrap_or_default();
    call_scraper(&state, move |proxy| async move {
        proxy.cancel_bundle(bundle_id).await
    })
    .await?;
    let bundle = state.with_store(move |store| store.get_bundle(id)).await?;
    Ok(HttpResponse::Ok().json(json!({ "bundle": bundle })))
}

pub async fn delete_bundle(state: Data<AppState>, id: Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state.with_store(move |store| store.get_bundle(id)).await?;
    let bundle_id = u64::try_from(id).unwrap_or_default();
    call_scraper(&state, move |proxy| async move {
        proxy.delete_bundle(bundle_id).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": id })))
}

async fn call_scraper<F>(
    state: &AppState,
    call: impl FnOnce(ScraperProxy<'static>) -> F + Send + 'static,
) -> Result<(), ApiError>
where
    F: Future<Output = Result<(), BusError>> + Send + 'static,
{
    state
        .on_bus(move |connection| async move {
            if !name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = ScraperProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await;
            Some(match proxy {
                Ok(proxy) => call(proxy).await,
                Err(error) => Err(BusError::ZBus(error)),
            })
        })
        .await
        .flatten()
        .ok_or_else(scraper_not_running)??;
    Ok(())
}

fn scraper_not_running() -> ApiError {
    ApiError::Unavailable(
        "sluice-scraper is not running; bundles are added, cancelled and deleted through it"
            .to_owned(),
    )
}
