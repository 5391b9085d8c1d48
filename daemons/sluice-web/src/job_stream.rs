//! Waiting for jobs and following one: `?wait=` on `GET /api/jobs/{id}` and on uploads, and
//! `GET /api/jobs/{id}/events` (Server-Sent Events, or NDJSON with
//! `Accept: application/x-ndjson`).
//!
//! Both read the job from the database and sleep on the job's [`Waiter`] in between, woken by
//! the job's D-Bus signals and by the main loop's catch-up read of the job log (see
//! `waiters.rs`). A waiting request costs a future and a registration, not a thread or a
//! timer loop. The daemon's stop ends every wait at once: the client gets the job as it is.
//!
//! The event stream replays the job's log (`job_history`: its creation, every transition,
//! saved progress and result steps) in id order, each event with its `id:`, then follows it
//! live; it ends after the job's final state with an `end` event carrying the job (and its
//! document). A client that reconnects with `Last-Event-ID` gets what came after that id;
//! one that reconnects after the end gets 204 No Content, which tells a browser's
//! `EventSource` to stop reconnecting.

use std::collections::VecDeque;
use std::pin::pin;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{Bytes, Data, Path, Query};
use actix_web::{HttpRequest, HttpResponse, http::StatusCode};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::policy::{check_last_event_id, check_wait};
use sluice_core::store::jobs::{Job, JobLogEntry, JobLogEvent, MAX_LOG_PAGE};

use crate::answers::JobWithDocument;
use crate::error::{ApiError, ErrorBody};
use crate::events::{KEEP_ALIVE_INTERVAL, StreamSlot, no_free_slot};
use crate::state::AppState;

/// `?wait=` on a job or an upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this long for the job to end (`30s`, `2m`), at most `[web] max_wait`.
    wait: Option<String>,
}

/// `?after=` on a job's event stream: the same as `Last-Event-ID`, for clients (curl, NDJSON
/// readers) that do not send that header.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Resume after this event id (as `Last-Event-ID`).
    after: Option<String>,
}

/// The wait a request asked for, checked against `[web] max_wait`; `None` when it asked none.
pub fn requested_wait(state: &AppState, wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    wait.map(|text| check_wait(text, state.settings().max_wait))
        .transpose()
        .map_err(ApiError::from)
}

/// `GET /api/jobs/{id}`: the job; with `?wait=`, answered when the job ends (200) or when the
/// wait is over (202, the job as it is then), with its document once it has one.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id"), WaitQuery),
    responses(
        (status = 200, description = "The job (with `?wait=`: it ended, with its document)", body = JobWithDocument),
        (status = 202, description = "With `?wait=`: the wait is over and the job has not ended", body = JobWithDocument),
        (status = 400, description = "The id or the wait is invalid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn get_job(
    state: Data<AppState>,
    id: Path<i64>,
    query: Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let Some(wait) = requested_wait(&state, query.wait.as_deref())? else {
        let job = state.read_now(|store| store.get_job(id))?;
        return Ok(HttpResponse::Ok().json(job));
    };
    let jobs = wait_for_jobs(&state, &[id], wait).await?;
    let finished = jobs.iter().all(|job| job.state.is_terminal());
    let body = with_document(&state, &jobs[0]).await?;
    Ok(HttpResponse::build(if finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    })
    .json(body))
}

/// Waits up to `wait` until every job in `ids` is in a final state and returns them as they
/// are then (in the order of `ids`). Returns early, with the jobs as they are, when the daemon
/// stops.
pub async fn wait_for_jobs(
    state: &AppState,
    ids: &[i64],
    wait: Duration,
) -> Result<Vec<Job>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let waiters: Vec<_> = ids.iter().map(|id| state.waiters().register(*id)).collect();
    let mut shutdown = state.shutdown();
    loop {
        // Armed before the read: a change committed after the read still wakes this wait.
        let mut woken: Vec<_> = waiters
            .iter()
            .map(|waiter| Box::pin(waiter.notify().notified()))
            .collect();
        for notified in &mut woken {
            notified.as_mut().enable();
        }
        let jobs = ids
            .iter()
            .map(|id| state.read_now(|store| store.get_job(*id)))
            .collect::<Result<Vec<_>, _>>()?;
        let finished = jobs.iter().all(|job| job.state.is_terminal());
        if finished || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            return Ok(jobs);
        }
        tokio::select! {
            _ = futures_util::future::select_all(woken) => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The job with `document` (the document it produced, when it succeeded with one).
pub async fn job_with_document(state: &AppState, job: &Job) -> Result<JobWithDocument, ApiError> {
    let document_id = job
        .result
        .as_ref()
        .and_then(|result| result.get("document_id"))
        .and_then(Value::as_i64);
    let document = match document_id {
        Some(document_id) => Some(
            state
                .with_store(move |store| store.get_document(document_id))
                .await?,
        ),
        None => None,
    };
    Ok(JobWithDocument {
        job: job.clone(),
        document,
    })
}

/// [`job_with_document`] as JSON.
pub async fn with_document(state: &AppState, job: &Job) -> Result<Value, ApiError> {
    serde_json::to_value(job_with_document(state, job).await?)
        .map_err(|error| ApiError::internal("cannot serialise a job", error))
}

/// How a job's events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    ServerSentEvents,
    NdJson,
}

impl Format {
    fn of(request: &HttpRequest) -> Format {
        let wants_ndjson = request
            .headers()
            .get_all(header::ACCEPT)
            .filter_map(|value| value.to_str().ok())
            .any(|accept| accept.contains("application/x-ndjson"));
        if wants_ndjson {
            Format::NdJson
        } else {
            Format::ServerSentEvents
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::ServerSentEvents => "text/event-stream",
            Format::NdJson => "application/x-ndjson",
        }
    }

    fn keep_alive(self) -> Bytes {
        match self {
            Format::ServerSentEvents => Bytes::from_static(b": keep-alive\n\n"),
            // A blank line between JSON values, which NDJSON readers (jq, json.loads per
            // non-empty line) skip.
            Format::NdJson => Bytes::from_static(b"\n"),
        }
    }

    fn entry(self, job_id: i64, entry: &JobLogEntry) -> Bytes {
        let mut data = serde_json::to_value(entry).unwrap_or_default();
        data["job_id"] = job_id.into();
        match self {
            Format::ServerSentEvents => Bytes::from(format!(
                "id: {}\nevent: {}\ndata: {data}\n\n",
                entry.id,
                entry.name()
            )),
            Format::NdJson => {
                data["event"] = entry.name().into();
                Bytes::from(format!("{data}\n"))
            }
        }
    }

    fn end(self, job: &Value) -> Bytes {
        match self {
            Format::ServerSentEvents => Bytes::from(format!("event: end\ndata: {job}\n\n")),
            Format::NdJson => Bytes::from(format!("{}\n", json!({ "event": "end", "job": job }))),
        }
    }
}

struct Follow {
    state: AppState,
    job_id: i64,
    format: Format,
    /// The id of the last entry sent (`None`: nothing yet, so the creation comes first).
    after: Option<i64>,
    pending: VecDeque<Bytes>,
    ended: bool,
    waiter: crate::waiters::Waiter,
    keep_alive: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _slot: StreamSlot,
}

/// `GET /api/jobs/{id}/events`.
#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs",
    params(("id" = i64, Path, description = "The job's id"), StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "The job's log replayed, then followed until it ends: \
            Server-Sent Events (`state`, `progress`, `step`, `end`), or NDJSON when `Accept` \
            names application/x-ndjson",
            content((String = "text/event-stream"), (String = "application/x-ndjson"))),
        (status = 204, description = "Resumed after the job's last event: nothing more to send"),
        (status = 400, description = "The id or the event id is invalid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn job_events(
    state: Data<AppState>,
    id: Path<i64>,
    query: Query<StreamQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let state = state.get_ref().clone();
    let job_id = id.into_inner();
    let format = Format::of(&request);
    let header_id = request
        .headers()
        .get("Last-Event-ID")
        .map(|value| {
            value.to_str().map_err(|_| {
                ApiError::InvalidArgument("the Last-Event-ID header is not plain text".into())
            })
        })
        .transpose()?;
    let after = match query.after.as_deref().or(header_id) {
        Some(text) => Some(check_last_event_id(text)?),
        None => None,
    };
    // The job must exist before a stream starts; an unknown id is a 404.
    let job = state.read_now(|store| store.get_job(job_id))?;
    if after.is_some() && job.state.is_terminal() {
        let rest = state
            .with_store(move |store| store.job_log(job_id, after, 1))
            .await?;
        if rest.is_empty() {
            // Everything up to the end was sent: nothing to reconnect for.
            return Ok(HttpResponse::NoContent().finish());
        }
    }
    let Some(slot) = StreamSlot::take(&state) else {
        return Ok(no_free_slot(state.event_streams().limit()));
    };
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keep_alive.reset();
    let follow = Follow {
        waiter: state.waiters().register(job_id),
        shutdown: state.shutdown(),
        state,
        job_id,
        format,
        after,
        pending: VecDeque::new(),
        ended: false,
        keep_alive,
        _slot: slot,
    };
    let body = stream::unfold(follow, |mut follow| async move {
        let next = follow.next().await;
        next.map(|bytes| (Ok::<_, actix_web::Error>(bytes), follow))
    });
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

impl Follow {
    /// The next piece of the stream; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.ended || *self.shutdown.borrow() {
                return None;
            }
            let notify = std::sync::Arc::clone(self.waiter.notify());
            let woken = notify.notified();
            let mut woken = pin!(woken);
            woken.as_mut().enable();
            let (job_id, after) = (self.job_id, self.after);
            let read = self
                .state
                .with_store(move |store| store.job_log(job_id, after, MAX_LOG_PAGE))
                .await;
            let entries = match read {
                Ok(entries) => entries,
                Err(ApiError::NotFound(_)) => return None,
                Err(error) => {
                    // A busy database: say so on the stream and look again at the next wake.
                    tracing::warn!(
                        job_id,
                        error = %error,
                        "cannot read the events of job {job_id}: {error}"
                    );
                    Vec::new()
                }
            };
            if !entries.is_empty() {
                for entry in &entries {
                    self.after = Some(entry.id);
                    self.pending.push_back(self.format.entry(job_id, entry));
                    if let JobLogEvent::State { to, .. } = entry.what
                        && to.is_terminal()
                    {
                        self.finish().await;
                        break;
                    }
                }
                continue;
            }
            tokio::select! {
                () = &mut woken => {}
                _ = self.keep_alive.tick() => return Some(self.format.keep_alive()),
                _ = self.shutdown.changed() => return None,
            }
        }
    }

    /// Queues the `end` event with the job as it is now, and ends the stream after it.
    async fn finish(&mut self) {
        self.ended = true;
        let job_id = self.job_id;
        let job = match self.state.read_now(|store| store.get_job(job_id)) {
            Ok(job) => with_document(&self.state, &job).await,
            Err(error) => Err(error),
        };
        match job {
            Ok(job) => self.pending.push_back(self.format.end(&job)),
            Err(error) => tracing::warn!(
                job_id,
                error = %error,
                "job {job_id} ended but cannot be read for its event stream's end: {error}"
            ),
        }
    }
}
