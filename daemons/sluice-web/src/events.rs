//! Server-Sent Events fed from sluice's D-Bus signals: the main loop turns each signal into a
//! [`BusEvent`] and broadcasts it; every `GET /api/events` stream forwards what it receives as
//! `event: <SignalName>` with the arguments as JSON, plus a keep-alive comment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::web::{Bytes, Data};
use actix_web::{HttpResponse, http::header};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use zbus::message::Message;

use crate::state::AppState;

/// The signals forwarded to event streams; everything else on the bus is ignored.
pub const FORWARDED_SIGNALS: [&str; 7] = [
    "JobQueued",
    "JobStarted",
    "JobProgress",
    "JobFinished",
    "FileDetected",
    "DownloadProgress",
    "DownloadFinished",
];

/// How often an idle stream sends a comment, so proxies and clients see it is alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Events buffered per slow client before it starts missing some (it is told how many).
pub const EVENT_BUFFER: usize = 1024;

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
                let (path, file_id, job_id): (String, u64, u64) = body.deserialize().ok()?;
                json!({ "path": path, "file_id": file_id, "job_id": job_id })
            }
            "DownloadProgress" => {
                let (download_id, bytes, total): (u64, u64, u64) = body.deserialize().ok()?;
                json!({ "download_id": download_id, "bytes": bytes, "total": total })
            }
            "DownloadFinished" => {
                let (download_id, state, path): (u64, String, String) = body.deserialize().ok()?;
                json!({ "download_id": download_id, "state": state, "path": path })
            }
            _ => return None,
        };
        data["interface"] = Value::from(interface);
        data["object_path"] = Value::from(object_path);
        Some(BusEvent { name, data })
    }

    /// The event in SSE wire format: `id:`, `event:`, one `data:` line, blank line.
    pub fn to_sse(&self, sequence: u64) -> String {
        // serde_json never writes a raw newline, so the JSON is always one `data:` line.
        format!(
            "id: {sequence}\nevent: {}\ndata: {}\n\n",
            self.name, self.data
        )
    }
}

/// Counts an open stream in `event_clients` for as long as it lives.
struct ClientGuard {
    state: AppState,
}

impl ClientGuard {
    fn new(state: AppState) -> ClientGuard {
        state.event_clients().fetch_add(1, Ordering::Relaxed);
        ClientGuard { state }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.state.event_clients().fetch_sub(1, Ordering::Relaxed);
    }
}

struct StreamState {
    events: broadcast::Receiver<BusEvent>,
    keep_alive: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    sequence: u64,
    greeted: bool,
    _guard: ClientGuard,
}

/// `GET /api/events`: the stream opens with a `: connected` comment (the subscription exists
/// from then on), then carries every forwarded signal until the client leaves or the daemon
/// stops.
pub async fn event_stream(state: Data<AppState>) -> HttpResponse {
    let state = state.get_ref().clone();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_INTERVAL);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the greeting takes its place.
    keep_alive.reset();
    let initial = StreamState {
        events: state.subscribe_events(),
        keep_alive,
        shutdown: state.shutdown(),
        sequence: 0,
        greeted: false,
        _guard: ClientGuard::new(state),
    };
    let body = stream::unfold(initial, |mut stream_state| async move {
        if !stream_state.greeted {
            stream_state.greeted = true;
            return Some((chunk(": connected\n\n".to_owned()), stream_state));
        }
        if *stream_state.shutdown.borrow() {
            return None;
        }
        let text = tokio::select! {
            received = stream_state.events.recv() => match received {
                Ok(event) => {
                    stream_state.sequence += 1;
                    event.to_sse(stream_state.sequence)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    format!("event: Lagged\ndata: {}\n\n", json!({ "missed": missed }))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = stream_state.keep_alive.tick() => ": keep-alive\n\n".to_owned(),
            _ = stream_state.shutdown.changed() => return None,
        };
        Some((chunk(text), stream_state))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

fn chunk(text: String) -> Result<Bytes, actix_web::Error> {
    Ok(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_have_id_event_and_one_data_line() {
        let event = BusEvent {
            name: "JobFinished".into(),
            data: json!({ "job_id": 7, "state": "succeeded\nREADY", "interface": "org.sluice.Web1" }),
        };
        let frame = event.to_sse(3);
        assert!(
            frame.starts_with("id: 3\nevent: JobFinished\ndata: {"),
            "{frame}"
        );
        assert!(frame.ends_with("}\n\n"));
        assert_eq!(frame.matches('\n').count(), 4, "{frame}");
    }
}
