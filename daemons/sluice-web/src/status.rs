//! Health and status: `/healthz` (the process answers), `/readyz` (the store answers) and
//! `GET /api/status`, which asks each daemon over D-Bus (one `Properties.GetAll` per daemon) and systemd over its own D-Bus API.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::web::Data;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_core::bus::{
    SuiteDaemon, UnitStatus, daemon_properties, name_has_owner, read_unit_status, suite_daemons,
};
use zbus::Connection;

use crate::answers::{Health, Readiness, StoreSummary, SuiteStatus, Thumbnails};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// How long one daemon may take to answer its property reads before it is shown as not
/// answering; a hung daemon must not hang the status page.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);

/// One daemon in `GET /api/status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DaemonStatus {
    pub name: String,
    pub bus_name: String,
    /// Whether the bus name has an owner, i.e. the daemon runs and is reachable.
    pub running: bool,
    pub state: Option<String>,
    pub status: Option<String>,
    pub last_error: Option<String>,
    /// The daemon's own counters (files detected, downloads done, ...), by property name.
    #[schema(value_type = Object)]
    pub counters: Value,
    pub unit: UnitStatus,
}

/// Whether the process answers; for anyone, no token.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "alive" })
}

/// Whether the store answers; for anyone, no token.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "The store answers", body = Readiness),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    ))]
pub async fn readyz(state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    let version = state
        .with_store(|store| store.schema_version())
        .await
        .map_err(|error| ApiError::Unavailable(format!("the store does not answer: {error}")))?;
    Ok(HttpResponse::Ok().json(Readiness {
        status: "ready",
        schema_version: version,
    }))
}

/// Each daemon (from D-Bus and systemd), the job counts and the store.
#[utoipa::path(get, path = "/api/status", tag = "status",
    responses((status = 200, description = "The suite's status", body = SuiteStatus)))]
pub async fn api_status(state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = state.with_store(|store| store.job_counts()).await?;
    let settings = state.settings();
    let workers = settings.workers;
    let daemons = state
        .on_bus(move |connection| async move { all_daemons(&connection, workers).await })
        .await
        .unwrap_or_else(|| daemons_without_bus(workers));
    let jobs = counts
        .into_iter()
        .map(|(job_state, count)| (job_state.as_str().to_owned(), count))
        .collect();
    let thumbnails = Thumbnails {
        size: settings.thumbnail_size,
        pdf: pdf_thumbnailer(&daemons),
    };
    Ok(HttpResponse::Ok().json(SuiteStatus {
        daemons,
        jobs,
        thumbnails,
        store: StoreSummary {
            path: settings.store_path.display().to_string(),
            durability: settings.durability,
        },
    }))
}

/// What renders PDF thumbnails (`"pdftoppm 22.12.0"`), as the running workers found it at
/// their start (their `PdfThumbnailer` property); `null` when no running worker has one.
fn pdf_thumbnailer(daemons: &[DaemonStatus]) -> Option<String> {
    daemons
        .iter()
        .filter(|daemon| daemon.running)
        .filter_map(|daemon| daemon.counters.get("pdf_thumbnailer")?.as_str())
        .find(|renderer| !renderer.is_empty())
        .map(str::to_owned)
}

fn daemons_without_bus(workers: u32) -> Vec<DaemonStatus> {
    suite_daemons(workers)
        .into_iter()
        .map(|daemon| DaemonStatus {
            name: daemon.name,
            bus_name: daemon.bus_name,
            running: false,
            state: None,
            status: None,
            last_error: None,
            counters: json!({}),
            unit: UnitStatus::unknown(&daemon.unit_name),
        })
        .collect()
}

async fn all_daemons(connection: &Connection, workers: u32) -> Vec<DaemonStatus> {
    let systemd = systemd_connection().await;
    let mut daemons = Vec::new();
    for SuiteDaemon {
        name,
        bus_name,
        unit_name,
        ..
    } in suite_daemons(workers)
    {
        let running = name_has_owner(connection, &bus_name).await;
        let mut daemon = DaemonStatus {
            name,
            bus_name: bus_name.clone(),
            running,
            state: None,
            status: None,
            last_error: None,
            counters: json!({}),
            unit: unit_status(systemd.as_ref(), &unit_name).await,
        };
        if running {
            let read = tokio::time::timeout(
                DAEMON_TIMEOUT,
                read_daemon_properties(connection, &bus_name, &mut daemon),
            )
            .await;
            match read {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(
                        bus_name = %bus_name,
                        error = %error,
                        "cannot read the properties of {bus_name}: {error}"
                    );
                }
                Err(_) => {
                    tracing::warn!(
                        bus_name = %bus_name,
                        "{bus_name} did not answer its property reads in time"
                    );
                }
            }
        }
        daemons.push(daemon);
    }
    daemons
}

/// `State`, `Status` and `LastError` go to their fields, every other property (counters,
/// paths, lists) into `counters` under its snake_case name (`FilesDetected` →
/// `files_detected`).
async fn read_daemon_properties(
    connection: &Connection,
    bus_name: &str,
    daemon: &mut DaemonStatus,
) -> zbus::Result<()> {
    let mut counters = serde_json::Map::new();
    for (name, value) in daemon_properties(connection, bus_name).await? {
        match (name.as_str(), property_json(&value)) {
            ("State", Value::String(text)) => daemon.state = Some(text),
            ("Status", Value::String(text)) => daemon.status = Some(text),
            ("LastError", Value::String(text)) => daemon.last_error = Some(text),
            (_, value) => {
                counters.insert(snake_case(&name), value);
            }
        }
    }
    daemon.counters = Value::Object(counters);
    Ok(())
}

/// A property value as JSON: the types sluice's interfaces use (strings, integers, floats,
/// booleans, string lists); anything else as its D-Bus text form.
fn property_json(value: &zbus::OwnedVariant) -> Value {
    use zbus::Variant;
    match &**value {
        Variant::Str(text) => json!(text.as_str()),
        Variant::U64(number) => json!(number),
        Variant::U32(number) => json!(number),
        Variant::U16(number) => json!(number),
        Variant::U8(number) => json!(number),
        Variant::I64(number) => json!(number),
        Variant::I32(number) => json!(number),
        Variant::I16(number) => json!(number),
        Variant::F64(number) => json!(number),
        Variant::Bool(flag) => json!(flag),
        Variant::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Variant::Str(text) => json!(text.as_str()),
                    other => json!(other.to_string()),
                })
                .collect(),
        ),
        other => json!(other.to_string()),
    }
}

/// `FilesDetected` → `files_detected`.
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, character) in name.chars().enumerate() {
        if character.is_ascii_uppercase() {
            if index > 0 {
                snake.push('_');
            }
            snake.push(character.to_ascii_lowercase());
        } else {
            snake.push(character);
        }
    }
    snake
}

/// The system bus, when systemd is the service manager (`/run/systemd/system` exists, the
/// sd_booted test); otherwise `None` and the unit fields stay null.
async fn systemd_connection() -> Option<Connection> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    match tokio::time::timeout(DAEMON_TIMEOUT, Connection::system()).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "systemd runs but its bus cannot be reached: {error}");
            None
        }
        Err(_) => None,
    }
}

/// What systemd says about `unit_name`; only the name where systemd is not the service
/// manager or does not answer in time.
async fn unit_status(systemd: Option<&Connection>, unit_name: &str) -> UnitStatus {
    let Some(systemd) = systemd else {
        return UnitStatus::unknown(unit_name);
    };
    match tokio::time::timeout(DAEMON_TIMEOUT, read_unit_status(systemd, unit_name)).await {
        Ok(Ok(unit)) => unit,
        Ok(Err(error)) => {
            tracing::debug!(unit = unit_name, error = %error, "cannot read a unit's state from systemd");
            UnitStatus::unknown(unit_name)
        }
        Err(_) => UnitStatus::unknown(unit_name),
    }
}
