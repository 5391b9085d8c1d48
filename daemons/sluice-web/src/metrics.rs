//! `GET {base}/metrics`: the suite in the Prometheus text format (0.0.4), for Prometheus and
//! `promtool check metrics`.
//!
//! What is measured where:
//! - **from the database, at scrape**: jobs by state and kind (one grouped count), and the jobs
//!   created and the transitions made since the last look, read as a range of primary keys
//!   (`Store::job_activity_since`). Those feed the job counters and the attempt-duration
//!   histogram, so they count what every process did, exactly, whether or not a signal was
//!   lost. They count from the start of this sluice-web process (Prometheus' `rate()` and
//!   `increase()` take a restart's reset in their stride); the database cannot give
//!   all-time totals because retention deletes old jobs and history;
//! - **in this process**: HTTP requests by method, route pattern and status;
//! - **on the bus, at scrape**: which daemons own their names (up/down), and the counters the
//!   monitor, the scraper and the workers publish as properties (watch events, overflows,
//!   reconciles, bytes downloaded, ...), which count from that daemon's own start;
//! - **the file system**: the sizes of the database and its WAL.
//!
//! A scrape reads all of this at most once a second ([`CACHE_TIME`]); other scrapes in that
//! second get the same text, so a thousand scrapes a second cost one refresh a second plus the
//! copying of the answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, Data};
use actix_web::{Error, HttpResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::bus::{daemon_properties, name_has_owner, suite_daemons};
use sluice_core::store::Store;
use sluice_core::store::jobs::{ActivityCursor, JobActivity, JobError, JobState};

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// How long one reading of the suite is served before the next scrape reads it again.
pub const CACHE_TIME: Duration = Duration::from_secs(1);

/// How long a daemon may take to answer its property read before it is left out of this
/// scrape (it still counts as up when it owns its name); a hung daemon must not hang scrapes.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many transitions are read per refresh; more wait for the next one, so one
/// scrape after a burst of a million jobs does not read them all at once.
const MAX_TRANSITIONS_PER_REFRESH: u32 = 100_000;

/// Buckets of the attempt-duration histogram, in seconds: from a no-op job to a long OCR run.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStateLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    /// The matched route pattern (`/api/jobs/{id}`), never the raw path, so the number of
    /// series is bounded by the route table.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DaemonLabels {
    daemon: String,
}

type HistogramFamily<Labels> = Family<Labels, Histogram, fn() -> Histogram>;

/// The metrics of one sluice-web process: the counters it keeps and the cached answer.
#[derive(Debug)]
pub struct Metrics {
    /// Counters kept for the life of the process.
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    jobs_enqueued: Family<KindLabels, Counter>,
    jobs_claimed: Family<KindLabels, Counter>,
    jobs_completed: Family<KindLabels, Counter>,
    jobs_failed: Family<KindStateLabels, Counter>,
    jobs_cancelled: Family<KindLabels, Counter>,
    job_duration: HistogramFamily<KindStateLabels>,
    /// Where the job counters stopped reading; `None` until the first look.
    cursor: Mutex<Option<ActivityCursor>>,
    /// The last answer and when it was made.
    cached: Mutex<Option<(Instant, Bytes)>>,
    /// Held while the suite is read, so concurrent scrapes of a stale cache make one reading.
    refreshing: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "sluice_http_requests",
            "HTTP requests answered by sluice-web since it started, by method, matched route \
             pattern (\"unmatched\" for none) and status",
            http_requests.clone(),
        );
        let jobs_enqueued = Family::<KindLabels, Counter>::default();
        registry.register(
            "sluice_jobs_enqueued",
            "Jobs created since sluice-web started, by kind (read from the database)",
            jobs_enqueued.clone(),
        );
        let jobs_claimed = Family::<KindLabels, Counter>::default();
        registry.register(
            "sluice_jobs_claimed",
            "Job attempts started (claims) since sluice-web started, by kind",
            jobs_claimed.clone(),
        );
        let jobs_completed = Family::<KindLabels, Counter>::default();
        registry.register(
            "sluice_jobs_completed",
            "Jobs that succeeded since sluice-web started, by kind",
            jobs_completed.clone(),
        );
        let jobs_failed = Family::<KindStateLabels, Counter>::default();
        registry.register(
            "sluice_jobs_failed",
            "Job attempts that failed since sluice-web started, by kind and what the job became \
             (retrying, failed, dead)",
            jobs_failed.clone(),
        );
        let jobs_cancelled = Family::<KindLabels, Counter>::default();
        registry.register(
            "sluice_jobs_cancelled",
            "Jobs cancelled since sluice-web started, by kind",
            jobs_cancelled.clone(),
        );
        let job_duration: HistogramFamily<KindStateLabels> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "sluice_job_attempt_duration_seconds",
            "How long job attempts ran that ended since sluice-web started, by kind and the \
             state the attempt ended in",
            job_duration.clone(),
        );
        Metrics {
            registry,
            http_requests,
            jobs_enqueued,
            jobs_claimed,
            jobs_completed,
            jobs_failed,
            jobs_cancelled,
            job_duration,
            cursor: Mutex::new(None),
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the job counters at what the database holds now: only what happens from here on
    /// counts. The daemon calls it before it serves; otherwise the first scrape does.
    pub fn start_counting(&self, store: &Store) -> Result<(), JobError> {
        let cursor = store.activity_cursor()?;
        *lock(&self.cursor) = Some(cursor);
        Ok(())
    }

    /// Counts one answered request.
    pub fn count_request(&self, method: &Method, route: Option<&str>, status: u16) {
        let labels = HttpLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
    }

    fn fresh_answer(&self) -> Option<Bytes> {
        lock(&self.cached)
            .as_ref()
            .filter(|(made, _)| made.elapsed() < CACHE_TIME)
            .map(|(_, body)| body.clone())
    }

    fn count_activity(&self, activity: &JobActivity) {
        for (kind, count) in &activity.created {
            self.jobs_enqueued
                .get_or_create(&KindLabels { kind: kind.clone() })
                .inc_by(*count);
        }
        for transition in &activity.transitions {
            let kind = KindLabels {
                kind: transition.kind.clone(),
            };
            let kind_state = KindStateLabels {
                kind: transition.kind.clone(),
                state: transition.to_state.as_str().to_owned(),
            };
            match transition.to_state {
                JobState::Running => {
                    self.jobs_claimed.get_or_create(&kind).inc();
                }
                JobState::Succeeded => {
                    self.jobs_completed.get_or_create(&kind).inc();
                }
                JobState::Retrying | JobState::Failed | JobState::Dead => {
                    self.jobs_failed.get_or_create(&kind_state).inc();
                }
                JobState::Cancelled => {
                    self.jobs_cancelled.get_or_create(&kind).inc();
                }
                JobState::Queued => {}
            }
            if let Some(milliseconds) = transition.attempt_ms {
                self.job_duration
                    .get_or_create(&kind_state)
                    .observe(milliseconds.max(0) as f64 / 1000.0);
            }
        }
    }
}

/// What one refresh read from the database.
struct StoreReading {
    jobs: Vec<(String, JobState, u64)>,
    activity: JobActivity,
}

/// One daemon as the bus shows it.
struct DaemonReading {
    name: String,
    up: bool,
    /// Its numeric properties by D-Bus name (`FilesDetected`, `BytesDownloaded`).
    counters: Vec<(String, u64)>,
}

#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses(
        (status = 200, description = "The Prometheus text format 0.0.4", content((String = "text/plain"))),
        (status = 401, description = "`metrics_access = \"token\"` and no or a wrong token", body = ErrorBody),
        (status = 403, description = "`metrics_access = \"loopback\"` and a client from elsewhere", body = ErrorBody),
    ))]
/// `GET {base}/metrics`. Who may call it is `[web] metrics_access` (see
/// [`require_metrics_access`]).
pub async fn metrics(state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    let metrics = state.metrics();
    let body = match metrics.fresh_answer() {
        Some(body) => body,
        None => {
            let _refreshing = metrics.refreshing.lock().await;
            // Another scrape may have refreshed while this one waited.
            match metrics.fresh_answer() {
                Some(body) => body,
                None => {
                    let body = refresh(&state).await?;
                    *lock(&metrics.cached) = Some((Instant::now(), body.clone()));
                    body
                }
            }
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(prometheus_text::CONTENT_TYPE)
        .body(body))
}

/// Refuses a `/metrics` request that `[web] metrics_access` does not allow: with `token`, the
/// API's read rule; with `loopback`, a client that does not connect from a loopback address.
pub async fn require_metrics_access<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<B>>, Error> {
    let refusal = match request.app_data::<Data<AppState>>() {
        None => Some(ApiError::Internal("the app has no state".into())),
        Some(state) => match state.access().metrics {
            sluice_core::config::MetricsAccess::Token => crate::app::check_token(&request).err(),
            sluice_core::config::MetricsAccess::Loopback => {
                let peer = request.peer_addr().map(|address| address.ip());
                let loopback = peer.is_some_and(|ip| ip.to_canonical().is_loopback());
                (!loopback).then(|| {
                    let client =
                        peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
                    tracing::warn!(
                        client = %client,
                        "refused GET /metrics from {client}: [web] metrics_access = \"loopback\""
                    );
                    ApiError::Forbidden(format!(
                        "the metrics are only served to clients on this host ([web] \
                         metrics_access = \"loopback\"); this client connects from {client}"
                    ))
                })
            }
        },
    };
    if let Some(refusal) = refusal {
        return Ok(request.error_response(refusal).map_into_right_body());
    }
    Ok(next.call(request).await?.map_into_left_body())
}

/// Counts every answered request by method, route pattern and status (the outermost
/// middleware, so refusals by the other checks count too).
pub async fn count_requests<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let state = request.app_data::<Data<AppState>>().cloned();
    let method = request.method().clone();
    let outcome = next.call(request).await;
    if let Some(state) = state {
        let (route, status) = match &outcome {
            Ok(response) => (
                response.request().match_pattern(),
                response.status().as_u16(),
            ),
            Err(error) => (None, error.as_response_error().status_code().as_u16()),
        };
        let base_path = &state.settings().base_path;
        let route = route.map(|pattern| match pattern.strip_prefix(base_path.as_str()) {
            Some("") => "/".to_owned(),
            Some(rest) => rest.to_owned(),
            None => pattern,
        });
        state
            .metrics()
            .count_request(&method, route.as_deref(), status);
    }
    outcome
}

/// Reads the suite and renders the answer.
async fn refresh(state: &AppState) -> Result<Bytes, ApiError> {
    let metrics = state.metrics();
    let cursor = *lock(&metrics.cursor);
    let reading = state
        .with_store(move |store| {
            let cursor = match cursor {
                Some(cursor) => cursor,
                None => store.activity_cursor()?,
            };
            Ok::<_, JobError>(StoreReading {
                jobs: store.job_counts_by_kind()?,
                activity: store.job_activity_since(cursor, MAX_TRANSITIONS_PER_REFRESH)?,
            })
        })
        .await?;
    metrics.count_activity(&reading.activity);
    *lock(&metrics.cursor) = Some(reading.activity.cursor);

    let workers = state.settings().workers;
    let daemons = match state
        .on_bus(move |connection| async move { read_daemons(&connection, workers).await })
        .await
    {
        Some(daemons) => daemons,
        // Without a bus (in-process tests) only this process is known to be up.
        None => vec![DaemonReading {
            name: "sluice-web".to_owned(),
            up: true,
            counters: Vec::new(),
        }],
    };
    let store_path = &state.settings().store_path;
    let database_bytes = file_size(store_path);
    let mut wal_path = store_path.clone().into_os_string();
    wal_path.push("-wal");
    let wal_bytes = file_size(std::path::Path::new(&wal_path));

    let mut text = String::with_capacity(16 * 1024);
    let render = |text: &mut String| -> std::fmt::Result {
        prometheus_text::encode(text, &metrics.registry)?;
        prometheus_text::encode(
            text,
            &snapshot_registry(
                &reading.jobs,
                &daemons,
                database_bytes,
                wal_bytes,
                state.event_streams().open(),
            ),
        )
    };
    render(&mut text).map_err(|error| ApiError::internal("cannot render the metrics", error))?;
    Ok(Bytes::from(text))
}

/// The gauges and the daemons' own counters of this reading, in a registry made for it.
fn snapshot_registry(
    jobs: &[(String, JobState, u64)],
    daemons: &[DaemonReading],
    database_bytes: u64,
    wal_bytes: u64,
    event_streams: u32,
) -> Registry {
    let mut registry = Registry::default();
    let job_gauge = Family::<KindStateLabels, Gauge>::default();
    for (kind, state, count) in jobs {
        job_gauge
            .get_or_create(&KindStateLabels {
                kind: kind.clone(),
                state: state.as_str().to_owned(),
            })
            .set(saturating_i64(*count));
    }
    registry.register(
        "sluice_jobs",
        "Jobs in the database by kind and state, now",
        job_gauge,
    );
    let up = Family::<DaemonLabels, Gauge>::default();
    for daemon in daemons {
        up.get_or_create(&DaemonLabels {
            daemon: daemon.name.clone(),
        })
        .set(i64::from(daemon.up));
    }
    registry.register(
        "sluice_daemon_up",
        "Whether each daemon of the suite owns its D-Bus name (1) or not (0)",
        up,
    );
    for &(property, name, help) in &DAEMON_COUNTERS {
        let family = Family::<DaemonLabels, Counter>::default();
        for daemon in daemons {
            if let Some((_, value)) = daemon.counters.iter().find(|(key, _)| key == property) {
                family
                    .get_or_create(&DaemonLabels {
                        daemon: daemon.name.clone(),
                    })
                    .inc_by(*value);
            }
        }
        registry.register(name, help, family);
    }
    for &(property, name, help) in &DAEMON_GAUGES {
        let family = Family::<DaemonLabels, Gauge>::default();
        for daemon in daemons {
            if let Some((_, value)) = daemon.counters.iter().find(|(key, _)| key == property) {
                family
                    .get_or_create(&DaemonLabels {
                        daemon: daemon.name.clone(),
                    })
                    .set(saturating_i64(*value));
            }
        }
        registry.register(name, help, family);
    }
    let database = Gauge::<i64>::default();
    database.set(saturating_i64(database_bytes));
    registry.register(
        "sluice_database_size_bytes",
        "Size of the SQLite database file",
        database,
    );
    let wal = Gauge::<i64>::default();
    wal.set(saturating_i64(wal_bytes));
    registry.register(
        "sluice_database_wal_size_bytes",
        "Size of the database's write-ahead log (-wal file); 0 when there is none",
        wal,
    );
    let streams = Gauge::<i64>::default();
    streams.set(i64::from(event_streams));
    registry.register(
        "sluice_web_event_streams_open",
        "Event streams (GET /api/events) open now",
        streams,
    );
    registry
}

/// Counters the daemons publish as D-Bus properties: (property, metric name without
/// `_total`, help). Each counts from that daemon's own start.
const DAEMON_COUNTERS: [(&str, &str, &str); 11] = [
    (
        "WatchEvents",
        "sluice_monitor_watch_events",
        "Watcher events (inotify or polling) the monitor handled since it started",
    ),
    (
        "WatchOverflows",
        "sluice_monitor_watch_overflows",
        "Times the monitor lost events (inotify overflow) since it started; each starts a reconcile",
    ),
    (
        "Reconciles",
        "sluice_monitor_reconciles",
        "Reconcile walks the monitor finished since it started",
    ),
    (
        "FilesDetected",
        "sluice_monitor_files_detected",
        "Files the monitor detected since it started",
    ),
    (
        "JobsQueued",
        "sluice_monitor_jobs_queued",
        "Ingest jobs the monitor queued since it started",
    ),
    (
        "DownloadsDone",
        "sluice_scraper_downloads_done",
        "Downloads the scraper completed since it started",
    ),
    (
        "DownloadsFailed",
        "sluice_scraper_downloads_failed",
        "Downloads that failed for good on the scraper since it started",
    ),
    (
        "BytesDownloaded",
        "sluice_scraper_downloaded_bytes",
        "Bytes the scraper received since it started",
    ),
    (
        "JobsDone",
        "sluice_worker_jobs_done",
        "Jobs each ingest worker finished successfully since it started",
    ),
    (
        "JobsFailed",
        "sluice_worker_jobs_failed",
        "Jobs that failed on each ingest worker since it started",
    ),
    (
        "RequestsServed",
        "sluice_web_requests_served",
        "Requests sluice-web answered since it started (every route, as its status shows)",
    ),
];

/// Gauges the daemons publish as D-Bus properties.
const DAEMON_GAUGES: [(&str, &str, &str); 2] = [
    (
        "FilesHeld",
        "sluice_monitor_files_held",
        "Files recorded but not yet queued because the ingest queue is full",
    ),
    (
        "DownloadsActive",
        "sluice_scraper_downloads_active",
        "Downloads transferring now",
    ),
];

async fn read_daemons(connection: &zbus::Connection, workers: u32) -> Vec<DaemonReading> {
    let mut daemons = Vec::new();
    for daemon in suite_daemons(workers) {
        let up = name_has_owner(connection, &daemon.bus_name).await;
        let mut counters = Vec::new();
        if up {
            let read = tokio::time::timeout(
                DAEMON_TIMEOUT,
                daemon_properties(connection, &daemon.bus_name),
            )
            .await;
            match read {
                Ok(Ok(properties)) => {
                    for (name, value) in properties {
                        if let Some(number) = property_number(&value) {
                            counters.push((name, number));
                        }
                    }
                }
                Ok(Err(error)) => tracing::debug!(
                    bus_name = %daemon.bus_name,
                    error = %error,
                    "metrics: cannot read the properties of {}: {error}",
                    daemon.bus_name
                ),
                Err(_) => tracing::debug!(
                    bus_name = %daemon.bus_name,
                    "metrics: {} did not answer its property read in time",
                    daemon.bus_name
                ),
            }
        }
        daemons.push(DaemonReading {
            name: daemon.name,
            up,
            counters,
        });
    }
    daemons
}

fn property_number(value: &zbus::OwnedVariant) -> Option<u64> {
    use zbus::Variant;
    match &**value {
        Variant::U64(number) => Some(*number),
        Variant::U32(number) => Some(u64::from(*number)),
        Variant::U16(number) => Some(u64::from(*number)),
        _ => None,
    }
}

/// A bounded method label: clients may send any method name (`FOO`), which must not make a
/// series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The size of a file without following a link; 0 when it does not exist.
fn file_size(path: &std::path::Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |metadata| metadata.len())
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_known_set_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
