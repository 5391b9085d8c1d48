//! Server-Sent Events fed from sluice's D-Bus signals: the main loop turns each signal into a
//! [`BusEvent`], renders it once as an [`SseFrame`] and broadcasts that; every
//! `GET /api/events` stream forwards what it receives as `event: <SignalName>` with the
//! arguments as JSON, plus a keep-alive comment. At most `[web] max_event_streams` streams are
//! open at once ([`EventStreamSlots`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::web::{BufMut, Bytes, BytesMut, Data, Query};
use actix_web::{HttpResponse, ResponseError, http::header};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::store::INGEST_JOB_KIND;
use tokio::sync::broadcast;
use zbus::message::Message;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The signals forwarded to event streams; everything else on the bus is ignored.
pub const FORWARDED_SIGNALS: [&str; 8] = [
    "JobQueued",
    "JobStarted",
    "JobProgress",
    "JobFinished",
    "FileDetected",
    "DownloadProgress",
    "DownloadFinished",
    "BundleFinished",
];

/// How often an idle stream sends a comment, so proxies and clients see it is alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How far a slow stream may fall behind before it starts missing events (it is told how
/// many). One ring of this many rendered frames is shared by every stream, so this costs
/// memory once, not once per stream; a stream itself only holds its position in the ring.
pub const EVENT_BUFFER: usize = 1024;

/// What a stream refused for want of a slot is told to wait (`Retry-After`): long enough that
/// refused clients retrying do not add to the load, short enough that a dashboard comes back
/// soon after others leave.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(15);

/// One D-Bus signal as the event stream shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusEvent {
    /// The signal name, e.g. `JobQueued`; the SSE `event:` field.
    pub name: String,
    /// The signal's arguments by name, plus `interface` and `object_path` of the emitting object.
    pub data: Value,
}

impl BusEvent {
    /// Decodes a signal message of one of sluice's interfaces; `None` for any other message
    /// and for a signal whose body does not have the documented arguments.
    pub fn from_message(message: &Message) -> Option<BusEvent> {
        let header = message.header();
        let interface = header.interface()?.to_string();
        if !interface.starts_with("org.sluice.") {
            return None;
        }
        let name = header.member()?.to_string();
        let object_path = header
            .path()
            .map(|path| path.to_string())
            .unwrap_or_default();
        let body = message.body();
        let mut data = match name.as_str() {
            "JobQueued" => {
                let (kind, job_id): (String, u64) = body.deserialize().ok()?;
                json!({ "kind": kind, "job_id": job_id })
            }
            "JobStarted" => {
                let (job_id, kind, worker): (u64, String, String) = body.deserialize().ok()?;
                json!({ "job_id": job_id, "kind": kind, "worker": worker })
            }
            "JobProgress" => {
                let (job_id, fraction, message): (u64, f64, String) = body.deserialize().ok()?;
                json!({ "job_id": job_id, "fraction": fraction, "message": message })
            }
            "JobFinished" => {
                let (job_id, state): (u64, String) = body.deserialize().ok()?;
                json!({ "job_id": job_id, "state": state })
            }
            "FileDetected" => {
                let (path, file_id, job_id): (Vec<u8>, u64, u64) = body.deserialize().ok()?;
                json!({ "path": display_path(&path), "file_id": file_id, "job_id": job_id })
            }
            "DownloadProgress" => {
                let (download_id, bytes, total): (u64, u64, u64) = body.deserialize().ok()?;
                json!({ "download_id": download_id, "bytes": bytes, "total": total })
            }
            "DownloadFinished" => {
                let (download_id, state, path): (u64, String, Vec<u8>) = body.deserialize().ok()?;
                json!({ "download_id": download_id, "state": state, "path": display_path(&path) })
            }
            "BundleFinished" => {
                let (bundle_id, state, path): (u64, String, Vec<u8>) = body.deserialize().ok()?;
                json!({ "bundle_id": bundle_id, "state": state, "path": display_path(&path) })
            }
            _ => return None,
        };
        data["interface"] = Value::from(interface);
        data["object_path"] = Value::from(object_path);
        Some(BusEvent { name, data })
    }

    /// Every event a signal stands for: one for most signals, one per change for a worker's
    /// `JobsChanged` batch (each as the `JobStarted` or `JobFinished` it replaces, so stream
    /// clients see every state change whichever way the worker sent it), the monitor's
    /// `FileDetected` followed by the `JobQueued` of its ingest job (the monitor announces the
    /// two in one signal; streams keep both events, as they had when it sent two), none for a
    /// message that is not one of sluice's signals.
    pub fn all_from_message(message: &Message) -> Vec<BusEvent> {
        let header = message.header();
        let is_file_detected = header
            .interface()
            .is_some_and(|interface| interface.as_str() == "org.sluice.Monitor1")
            && header
                .member()
                .is_some_and(|member| member.as_str() == "FileDetected");
        if is_file_detected {
            let Some(detected) = BusEvent::from_message(message) else {
                return Vec::new();
            };
            let queued = BusEvent {
                name: "JobQueued".to_owned(),
                data: json!({
                    "kind": INGEST_JOB_KIND,
                    "job_id": detected.data["job_id"],
                    "interface": detected.data["interface"],
                    "object_path": detected.data["object_path"],
                }),
            };
            return vec![detected, queued];
        }
        let is_batch = header
            .interface()
            .is_some_and(|interface| interface.as_str() == "org.sluice.Ingest1")
            && header
                .member()
                .is_some_and(|member| member.as_str() == "JobsChanged");
        if !is_batch {
            return BusEvent::from_message(message).into_iter().collect();
        }
        let object_path = header
            .path()
            .map(|path| path.to_string())
            .unwrap_or_default();
        let Ok((worker, changes)) = message
            .body()
            .deserialize::<(String, Vec<(u64, String, String)>)>()
        else {
            return Vec::new();
        };
        changes
            .into_iter()
            .map(|(job_id, kind, state)| {
                let (name, mut data) = if state == "running" {
                    (
                        "JobStarted",
                        json!({ "job_id": job_id, "kind": kind, "worker": worker }),
                    )
                } else {
                    ("JobFinished", json!({ "job_id": job_id, "state": state }))
                };
                data["interface"] = Value::from("org.sluice.Ingest1");
                data["object_path"] = Value::from(object_path.as_str());
                BusEvent {
                    name: name.to_owned(),
                    data,
                }
            })
            .collect()
    }

    /// The event as every stream sends it, rendered once for all of them.
    pub fn to_frame(&self) -> SseFrame {
        // serde_json never writes a raw newline, so the JSON is always one `data:` line.
        SseFrame {
            name: FORWARDED_SIGNALS
                .into_iter()
                .find(|name| *name == self.name)
                .unwrap_or("other"),
            job_id: self.data.get("job_id").and_then(Value::as_u64),
            bytes: Bytes::from(format!("event: {}\ndata: {}\n\n", self.name, self.data)),
        }
    }
}

/// A path from a signal (bytes with a trailing NUL) as JSON can carry it: as text, with
/// U+FFFD for each byte that is not UTF-8 (the file's own name is read through the API).
fn display_path(bytestring: &[u8]) -> String {
    sluice_core::bus::bytestring_to_path_lossy(bytestring)
        .to_string_lossy()
        .into_owned()
}

/// An event in SSE wire format without its `id:` line: `event:`, one `data:` line, blank line.
/// The broadcast carries these, so a thousand streams share one rendering and one buffer
/// instead of each cloning the JSON value and serialising it again.
#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    /// The event name, for the `?kind=` filter.
    name: &'static str,
    /// The job the event is about, for the `?job=` filter.
    job_id: Option<u64>,
    bytes: Bytes,
}

impl SseFrame {
    /// The frame with this stream's own `id:` line in front.
    fn with_id(&self, sequence: u64) -> Bytes {
        let id = format!("id: {sequence}\n");
        let mut frame = BytesMut::with_capacity(id.len() + self.bytes.len());
        frame.put_slice(id.as_bytes());
        frame.put_slice(&self.bytes);
        frame.freeze()
    }
}

/// The event streams open now and how many may be. A stream takes a slot before its response
/// starts and gives it back when it ends, however it ends (the client leaves, the daemon
/// stops), so the count is exact. A reload changes the limit for streams opened after it;
/// streams already open above a lowered limit stay.
#[derive(Debug)]
pub struct EventStreamSlots {
    limit: AtomicU32,
    open: AtomicU32,
    /// Streams refused since the daemon started, for the status line and the log.
    refused: AtomicU64,
}

impl EventStreamSlots {
    pub fn new(limit: u32) -> EventStreamSlots {
        EventStreamSlots {
            limit: AtomicU32::new(limit),
            open: AtomicU32::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free; the check and the count are one atomic step, so many
    /// streams opening at once never overshoot the limit.
    fn try_take(&self) -> bool {
        let limit = self.limit();
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < limit).then_some(open + 1)
            })
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A taken slot of [`EventStreamSlots`], given back when dropped with the stream.
pub(crate) struct StreamSlot {
    state: AppState,
}

impl StreamSlot {
    pub(crate) fn take(state: &AppState) -> Option<StreamSlot> {
        state.event_streams().try_take().then(|| StreamSlot {
            state: state.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.event_streams().give_back();
    }
}

/// `GET /api/events?kind=JobFinished,JobProgress&job=42`: only these events.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Event names, separated by commas (any of [`FORWARDED_SIGNALS`]).
    kind: Option<String>,
    /// Only events about this job.
    job: Option<u64>,
}

/// Which events a stream forwards.
#[derive(Debug, Clone, Default, PartialEq)]
struct EventFilter {
    names: Option<Vec<&'static str>>,
    job_id: Option<u64>,
}

impl EventFilter {
    fn from_query(query: EventsQuery) -> Result<EventFilter, ApiError> {
        let names = match query.kind {
            None => None,
            Some(text) => Some(
                text.split(',')
                    .filter(|name| !name.is_empty())
                    .map(|name| {
                        FORWARDED_SIGNALS
                            .into_iter()
                            .find(|known| *known == name)
                            .ok_or_else(|| {
                                ApiError::InvalidArgument(format!(
                                    "kind {:?} is not an event name; the events are {}",
                                    name.chars().take(100).collect::<String>(),
                                    FORWARDED_SIGNALS.join(", ")
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if query.job == Some(0) {
            return Err(ApiError::InvalidArgument(
                "job must be a job id, a whole number from 1".into(),
            ));
        }
        Ok(EventFilter {
            names,
            job_id: query.job,
        })
    }

    fn passes(&self, frame: &SseFrame) -> bool {
        self.names
            .as_ref()
            .is_none_or(|names| names.contains(&frame.name))
            && self
                .job_id
                .is_none_or(|job_id| frame.job_id == Some(job_id))
    }
}

struct StreamState {
    events: broadcast::Receiver<SseFrame>,
    filter: EventFilter,
    keep_alive: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    sequence: u64,
    greeted: bool,
    _slot: StreamSlot,
}

/// `GET /api/events`: the stream opens with a `: connected` comment (the subscription exists
/// from then on), then carries every forwarded signal until the client leaves or the daemon
/// stops. With every slot taken it is refused with 503 and `Retry-After`.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events: `event: <SignalName>` with the \
            signal's arguments as JSON, until the client leaves", content((String = "text/event-stream"))),
        (status = 400, description = "An unknown event name or job id", body = ErrorBody),
        (status = 503, description = "Every stream slot is taken (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn event_stream(
    state: Data<AppState>,
    query: Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = EventFilter::from_query(query.into_inner())?;
    let state = state.get_ref().clone();
    let Some(slot) = StreamSlot::take(&state) else {
        return Ok(no_free_slot(state.event_streams().limit()));
    };
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the greeting takes its place.
    keep_alive.reset();
    let initial = StreamState {
        events: state.subscribe_events(),
        filter,
        keep_alive,
        shutdown: state.shutdown(),
        sequence: 0,
        greeted: false,
        _slot: slot,
    };
    let body = stream::unfold(initial, |mut stream_state| async move {
        if !stream_state.greeted {
            stream_state.greeted = true;
            return Some((Ok(Bytes::from_static(b": connected\n\n")), stream_state));
        }
        if *stream_state.shutdown.borrow() {
            return None;
        }
        let bytes = loop {
            break tokio::select! {
            received = stream_state.events.recv() => match received {
                Ok(frame) if !stream_state.filter.passes(&frame) => continue,
                Ok(frame) => {
                    stream_state.sequence += 1;
                    frame.with_id(stream_state.sequence)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => Bytes::from(format!(
                    "event: Lagged\ndata: {}\n\n",
                    json!({ "missed": missed })
                )),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = stream_state.keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            _ = stream_state.shutdown.changed() => return None,
            };
        };
        Some((Ok::<_, actix_web::Error>(bytes), stream_state))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The API's JSON error (503 `unavailable`), with the `Retry-After` a client should honour.
/// Not logged here: a client retrying in a loop would flood the log; the main loop reports
/// refusals with the status.
pub(crate) fn no_free_slot(limit: u32) -> HttpResponse {
    let mut response = ApiError::Unavailable(format!(
        "all {limit} event streams are in use ([web] max_event_streams); try again later"
    ))
    .error_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(STREAM_RETRY_AFTER.as_secs()),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_of_job_changes_becomes_one_event_per_change() {
        let changes: Vec<(u64, String, String)> = vec![
            (7, "ingest".into(), "running".into()),
            (7, "ingest".into(), "succeeded".into()),
            (8, "noop".into(), "running".into()),
        ];
        let message = Message::signal("/org/sluice/Ingest1/2", "org.sluice.Ingest1", "JobsChanged")
            .build(&("sluice-ingest-worker@2", changes))
            .unwrap();
        let events = BusEvent::all_from_message(&message);
        let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
        assert_eq!(names, ["JobStarted", "JobFinished", "JobStarted"]);
        assert_eq!(events[0].data["worker"], "sluice-ingest-worker@2");
        assert_eq!(events[0].data["kind"], "ingest");
        assert_eq!(events[1].data["state"], "succeeded");
        assert_eq!(events[2].data["job_id"], 8);
        assert_eq!(events[2].data["object_path"], "/org/sluice/Ingest1/2");
        // A single signal is still one event.
        let single = Message::signal("/org/sluice/Ingest1/2", "org.sluice.Ingest1", "JobFinished")
            .build(&(9u64, "failed"))
            .unwrap();
        assert_eq!(BusEvent::all_from_message(&single).len(), 1);
    }

    use super::*;

    #[test]
    fn sse_frames_have_id_event_and_one_data_line() {
        let event = BusEvent {
            name: "JobFinished".into(),
            data: json!({ "job_id": 7, "state": "succeeded\nREADY", "interface": "org.sluice.Web1" }),
        };
        let frame = event.to_frame().with_id(3);
        let frame = std::str::from_utf8(&frame).unwrap();
        assert!(
            frame.starts_with("id: 3\nevent: JobFinished\ndata: {"),
            "{frame}"
        );
        assert!(frame.ends_with("}\n\n"));
        assert_eq!(frame.matches('\n').count(), 4, "{frame}");
    }
}
