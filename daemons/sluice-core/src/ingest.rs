//! The contract between the producers of ingest jobs (the monitor, sluicectl) and the ingest
//! workers: the job kinds and the JSON payload of an `ingest` job, with its validation.
//!
//! There is one payload type, [`IngestPayload`]: the monitor writes it with every field set
//! (the `files` row and the version it recorded); a hand-made job (tests, a future upload)
//! may leave out the row and the version. Workers parse and validate it with
//! [`IngestPayload::from_json`]. Payloads carry no knobs that change how a worker behaves:
//! whoever can queue a job must not be able to make a worker wait (the deliberate pause of
//! the `noop` kind is the one exception, bounded by [`MAX_SLEEP_MS`]).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The job kind of "read this file, hash it, catalogue it, file it".
pub const INGEST_JOB_KIND: &str = "ingest";

/// The job kind that does nothing but record when it ran: benchmark W1 and health checks.
///
/// Payload: any JSON object; `{"i": <any JSON>}` is echoed back as the result's `i`, and the
/// result's `t` is the time the body ran (µs since the Unix epoch). An optional
/// `"sleep_ms": n` (at most [`MAX_SLEEP_MS`]) makes the body take that long, in small steps
/// that notice cancellation and shutdown; tests use it to have a job running when they kill
/// or stop a worker.
pub const NOOP_JOB_KIND: &str = "noop";

/// The job kind of "make the thumbnail of this document's content": queued by the store in the
/// transaction that records a new document of a type that has thumbnails (see
/// `Store::finish_ingest`), once per content (its unique key is [`thumbnail_unique_key`]), at
/// [`THUMBNAIL_JOB_PRIORITY`], and run by the ingest workers when no ingest or noop job waits.
///
/// Payload: `{"document_id": N}`. The worker reads the document's content where
/// `sluice_core::content` finds it, files `thumbnails/<b3[0..2]>/<b3>.png` in the library
/// (under a temporary name, then renamed: a retry after a kill rewrites the same file) and
/// records `thumbnail` or `thumbnail_error` in the document's metadata together with the job's
/// success, under the lease, so a rerun takes effect once.
pub const THUMBNAIL_JOB_KIND: &str = "thumbnail";

/// Thumbnails wait for every ingest (priority 0): they are for people browsing, and a PDF's
/// first page costs more to render than the rest of its ingest.
pub const THUMBNAIL_JOB_PRIORITY: i32 = -10;

/// The unique key of the thumbnail job of content `blake3`: one job per content, so a
/// duplicate of it reuses the thumbnail (or the job that will make it).
pub fn thumbnail_unique_key(blake3: &str) -> String {
    format!("{THUMBNAIL_JOB_KIND}:{blake3}")
}

/// The longest deliberate pause a payload may ask for (`sleep_ms`), ten minutes.
pub const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;

/// The error of an attempt stopped by its wall-clock limit, worded the same by every daemon
/// ("timed out after 600 s (the [ingest] job_timeout)"), so people and tests can look for it.
/// `setting` names the configuration key that set the limit.
pub fn timed_out_after(limit: Duration, setting: &str) -> String {
    format!("timed out after {} s (the {setting})", seconds(limit))
}

/// `duration` in seconds for messages: whole ("600") or with up to three decimals ("2.5").
pub fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        duration.as_secs().to_string()
    } else {
        let text = format!("{:.3}", duration.as_secs_f64());
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// How the file of an ingest job is filed: the watch mode of the folder it was found in.
pub use WatchMode as IngestMode;

/// What happens to a file in a watched folder once it is ingested. Serialized in lower case,
/// as in the file, because it travels in the ingest job's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Moved into the library; the folder empties.
    Consume,
    /// Catalogued in place.
    Index,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Consume => "consume",
            WatchMode::Index => "index",
        }
    }
}

/// The payload of an `ingest` job.
///
/// ```json
/// {"path": "/var/lib/sluice/inbox/a.pdf", "file_id": 17,
///  "watch_root": "/var/lib/sluice/inbox", "mode": "consume"}
/// ```
///
/// Unknown keys are ignored so that a newer monitor can add fields an older worker does not
/// need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestPayload {
    /// The file, absolute, inside `watch_root`.
    pub path: PathBuf,
    /// The `files` row the monitor recorded for this file version; the worker marks it
    /// `ingested`, `duplicate` or `failed` in the same transaction as the job's outcome.
    /// Absent for a file ingested by hand (no row to update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<i64>,
    /// The configured `[[watch]]` folder the file was found in; a worker refuses a root that
    /// is not configured, so a job cannot make it read or move files elsewhere.
    pub watch_root: PathBuf,
    pub mode: IngestMode,
    /// The version of the file the job was queued for (the monitor writes all three): a
    /// worker that finds another version on disk leaves the file to the job queued for that
    /// version and finishes this one as superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
}

/// A file version: size, modification time in ns since the epoch, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

/// Why a payload is not a valid ingest payload; the message is what the failed job shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestPayloadError {
    #[error("ingest payload is not valid: {0}")]
    Malformed(String),
    #[error("ingest payload path {path:?} must be absolute")]
    RelativePath { path: PathBuf },
    #[error("ingest payload path {path:?} must not contain '.' or '..' components")]
    UncleanPath { path: PathBuf },
    #[error("ingest payload path {path:?} is not inside its watch_root {watch_root:?}")]
    OutsideWatchRoot { path: PathBuf, watch_root: PathBuf },
    #[error("ingest payload file_id {0} must be a positive row id")]
    BadFileId(i64),
}

impl IngestPayload {
    /// Parses and validates a job payload.
    pub fn from_json(payload: &Value) -> Result<IngestPayload, IngestPayloadError> {
        if !payload.is_object() {
            return Err(IngestPayloadError::Malformed(format!(
                "expected a JSON object, got {payload}"
            )));
        }
        let parsed: IngestPayload = serde_json::from_value(payload.clone())
            .map_err(|error| IngestPayloadError::Malformed(error.to_string()))?;
        parsed.validate()?;
        Ok(parsed)
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an ingest payload always serializes")
    }

    /// The version the job was queued for, when the payload names one completely.
    pub fn version(&self) -> Option<FileVersion> {
        Some(FileVersion {
            size: self.size?,
            mtime_ns: self.mtime_ns?,
            inode: self.inode?,
        })
    }

    /// The path relative to the watch root (valid payloads only).
    pub fn relative_path(&self) -> Result<&Path, IngestPayloadError> {
        self.path
            .strip_prefix(&self.watch_root)
            .map_err(|_| IngestPayloadError::OutsideWatchRoot {
                path: self.path.clone(),
                watch_root: self.watch_root.clone(),
            })
    }

    pub fn validate(&self) -> Result<(), IngestPayloadError> {
        for path in [&self.path, &self.watch_root] {
            if !path.is_absolute() {
                return Err(IngestPayloadError::RelativePath { path: path.clone() });
            }
            // `Path::components` already drops inner "." components, so look at the text.
            let unclean = path
                .components()
                .any(|component| matches!(component, Component::ParentDir | Component::CurDir))
                || path
                    .as_os_str()
                    .as_encoded_bytes()
                    .split(|byte| *byte == b'/')
                    .any(|part| part == b"." || part == b"..");
            if unclean {
                return Err(IngestPayloadError::UncleanPath { path: path.clone() });
            }
        }
        let relative = self.relative_path()?;
        if relative.as_os_str().is_empty() {
            return Err(IngestPayloadError::OutsideWatchRoot {
                path: self.path.clone(),
                watch_root: self.watch_root.clone(),
            });
        }
        if let Some(file_id) = self.file_id
            && file_id <= 0
        {
            return Err(IngestPayloadError::BadFileId(file_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timeouts_are_worded_in_whole_or_fractional_seconds() {
        assert_eq!(
            timed_out_after(Duration::from_secs(600), "[ingest] job_timeout"),
            "timed out after 600 s (the [ingest] job_timeout)"
        );
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5");
        assert_eq!(seconds(Duration::from_millis(1)), "0.001");
    }

    #[test]
    fn a_monitor_payload_round_trips() {
        let payload = json!({"path": "/srv/inbox/a/b.txt", "file_id": 3,
                             "watch_root": "/srv/inbox", "mode": "consume", "extra": 1,
                             "size": 10, "mtime_ns": 20, "inode": 30});
        let parsed = IngestPayload::from_json(&payload).unwrap();
        assert_eq!(parsed.path, Path::new("/srv/inbox/a/b.txt"));
        assert_eq!(parsed.file_id, Some(3));
        assert_eq!(parsed.mode, IngestMode::Consume);
        assert_eq!(parsed.relative_path().unwrap(), Path::new("a/b.txt"));
        assert_eq!(
            parsed.version(),
            Some(FileVersion {
                size: 10,
                mtime_ns: 20,
                inode: 30
            })
        );
        let again = IngestPayload::from_json(&parsed.to_json()).unwrap();
        assert_eq!(again, parsed);
    }

    /// Regression: `sleep_ms` in an ingest payload let any producer park a worker for up to
    /// ten minutes. It is only a `noop` knob now; in an ingest payload it is an ignored key.
    #[test]
    fn an_ingest_payload_cannot_ask_the_worker_to_sleep() {
        let payload = json!({"path": "/srv/a", "watch_root": "/srv", "mode": "index",
                             "sleep_ms": MAX_SLEEP_MS});
        let parsed = IngestPayload::from_json(&payload).unwrap();
        assert!(parsed.to_json().get("sleep_ms").is_none());
    }

    #[test]
    fn bad_payloads_are_refused_with_a_reason() {
        let cases = [
            (json!([1, 2]), "expected a JSON object"),
            (
                json!({"watch_root": "/srv", "mode": "index"}),
                "missing field `path`",
            ),
            (
                json!({"path": "a.txt", "watch_root": "/srv", "mode": "index"}),
                "must be absolute",
            ),
            (
                json!({"path": "/srv/../etc/passwd", "watch_root": "/srv", "mode": "index"}),
                "'..'",
            ),
            (
                json!({"path": "/etc/passwd", "watch_root": "/srv", "mode": "index"}),
                "not inside",
            ),
            (
                json!({"path": "/srv", "watch_root": "/srv", "mode": "index"}),
                "not inside",
            ),
            (
                json!({"path": "/srv/a", "watch_root": "/srv", "mode": "shred"}),
                "unknown variant",
            ),
            (
                json!({"path": "/srv/a", "watch_root": "/srv", "mode": "index", "file_id": 0}),
                "positive",
            ),
        ];
        for (payload, expected) in cases {
            let error = IngestPayload::from_json(&payload).unwrap_err().to_string();
            assert!(error.contains(expected), "{payload}: {error}");
        }
    }
}
