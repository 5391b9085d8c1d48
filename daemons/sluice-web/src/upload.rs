//! `POST {base}/api/documents`: uploads, on the one path every file takes (inbox → ingest job
//! → worker → library).
//!
//! A request carries one or more files, as `multipart/form-data` (every part with a file name
//! is a file) or as a raw body named by `?name=`. Each file is streamed to a `upload-*.part`
//! file in the staging folder (never held in memory), cut off at `[web] max_upload_size`
//! (413), synced, then moved into the inbox with the scraper's never-replacing rename, and
//! recorded with its ingest job in one transaction, exactly as the monitor records a file it
//! finds (so the monitor, seeing the same file, finds it known). Nothing is placed until every
//! file of the request has arrived whole: a client that disconnects, or a file that is
//! refused, leaves no file and no job. A `.part` file left by a killed process is removed at
//! the next start ([`sweep_staging`]).
//!
//! The answer is 202 with each file's job id and `Location` of the first job; with `?wait=`
//! it comes when every job has ended (200) or the wait is over (202).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header;
use actix_web::web::{Data, Payload};
use actix_web::{HttpRequest, HttpResponse, http::StatusCode};
use futures_util::{Stream, StreamExt};
use percent_encoding::percent_decode_str;
use sluice_core::config::WatchConfig;
use sluice_core::inbox::{InboxError, create_staged_file, place_in_inbox};
use sluice_core::policy::{PolicyError, check_file_name, check_file_name_bytes};
use sluice_core::store::{DetectedFile, INGEST_JOB_KIND};
use tokio::io::AsyncWriteExt;

use crate::answers::{UploadAnswer, UploadedFile};
use crate::error::{ApiError, ErrorBody};
use crate::job_stream::{job_with_document, requested_wait, wait_for_jobs};
use crate::state::{Announcement, AppState};

/// Most files one request may carry.
pub const MAX_FILES_PER_UPLOAD: usize = 100;

/// The prefix of the staging files of uploads (downloads use `<id>.part`).
const STAGED_PREFIX: &str = "upload-";

/// Write buffer between the network and the staged file.
const WRITE_BUFFER: usize = 256 * 1024;

/// A file received whole into the staging folder, not yet placed. Dropping it removes the
/// staged file, so every way a request ends early (an error, a refusal, the client leaving
/// and actix dropping the handler) leaves nothing behind.
#[derive(Debug)]
struct Staged {
    name: String,
    path: PathBuf,
    size: u64,
    placed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.placed
            && let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                path = %self.path.display(),
                error = %error,
                "cannot remove the unfinished upload {}: {error}",
                self.path.display()
            );
        }
    }
}

/// One placed and recorded file, as the answer lists it.
#[derive(Debug)]
struct Placed {
    name: String,
    stored_as: String,
    size: u64,
    file_id: i64,
    /// `None`: the file is held (see [`place_all`]).
    job_id: Option<i64>,
}

/// Uploads files into the inbox: `multipart/form-data` (each part a file) or a raw body
/// named by `?name=`; with `?wait=`, answered when their jobs end.
#[utoipa::path(post, path = "/api/documents", tag = "documents",
    params(
        ("name" = Option<String>, Query, description = "The file name of a raw-body upload"),
        ("wait" = Option<String>, Query, description = "Wait up to this long for the jobs to end (`30s`), at most `[web] max_wait`"),
    ),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (Object = "multipart/form-data"),
    ), description = "The file, or files as multipart parts"),
    responses(
        (status = 200, description = "Stored; with `?wait=` every job ended", body = UploadAnswer),
        (status = 202, description = "Stored and queued (or held)", body = UploadAnswer),
        (status = 400, description = "No or a bad name, a bad wait, a malformed multipart body", body = ErrorBody),
        (status = 413, description = "Larger than `[web] max_upload_size`", body = ErrorBody),
        (status = 415, description = "A body format that carries no file", body = ErrorBody),
        (status = 429, description = "The ingest queue is full", body = ErrorBody),
    ))]
pub async fn upload(
    state: Data<AppState>,
    request: HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let state = state.get_ref().clone();
    let settings = state.settings().clone();
    let wait = requested_wait(&state, query_value(&request, "wait")?.as_deref())?;
    let watch = settings.inbox_watch.clone().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "uploads go to the inbox {} ([scraper] inbox), which no [[watch]] folder covers, so \
             nothing would ingest them; add a [[watch]] for it",
            settings.inbox.display()
        ))
    })?;
    // A full ingest queue refuses the upload before its body is read.
    require_ingest_room(&state, 1).await?;
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)").to_ascii_lowercase());
    let staged = match media_type.as_deref() {
        Some(media) if media.starts_with("multipart/form-data") => {
            if query_value(&request, "name")?.is_some() {
                return Err(ApiError::InvalidArgument(
                    "?name= names a raw-body upload; a multipart upload takes each file's name \
                     from its part"
                        .into(),
                ));
            }
            receive_multipart(&state, &request, payload).await?
        }
        Some(media) if media.starts_with("multipart/") => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{media} is not an upload format; send multipart/form-data or a raw body with \
                 ?name="
            )));
        }
        Some(media) if media.starts_with("application/x-www-form-urlencoded") => {
            return Err(ApiError::UnsupportedMediaType(
                "application/x-www-form-urlencoded cannot carry a file (it is what `curl \
                 --data-binary` sends unless told otherwise); send multipart/form-data (`curl \
                 -F file=@report.pdf`) or a raw body with a Content-Type such as \
                 application/octet-stream and ?name="
                    .into(),
            ));
        }
        _ => {
            check_query_keys(&request)?;
            let name = raw_body_name(&request)?;
            check_declared_length(&request, settings.max_upload_size)?;
            vec![receive_file(&state, name, payload).await?]
        }
    };
    // Checked again once the files are received, before any is placed: a full queue refuses
    // the upload and the staged files are removed, so nothing is stored.
    require_ingest_room(&state, staged.len()).await?;
    let placed = place_all(&state, staged, watch).await?;
    let job_ids: Vec<i64> = placed.iter().filter_map(|file| file.job_id).collect();
    for job_id in &job_ids {
        state.announce(Announcement::JobQueued {
            kind: INGEST_JOB_KIND.to_owned(),
            job_id: u64::try_from(*job_id).unwrap_or_default(),
        });
    }
    let jobs = match wait {
        Some(wait) => Some(wait_for_jobs(&state, &job_ids, wait).await?),
        None => None,
    };
    let finished = job_ids.len() == placed.len()
        && jobs
            .as_ref()
            .is_some_and(|jobs| jobs.iter().all(|job| job.state.is_terminal()));
    let mut waited = jobs.into_iter().flatten();
    let mut uploads = Vec::with_capacity(placed.len());
    for file in &placed {
        let mut entry = UploadedFile {
            name: file.name.clone(),
            stored_as: file.stored_as.clone(),
            size: file.size,
            file_id: file.file_id,
            job_id: file.job_id,
            held: false,
            job: None,
        };
        match file.job_id {
            // Held: stored and recorded, queued by the monitor once the queue has room.
            None => entry.held = true,
            Some(_) if wait.is_some() => {
                if let Some(job) = waited.next() {
                    entry.job = Some(job_with_document(&state, &job).await?);
                }
            }
            Some(_) => {}
        }
        uploads.push(entry);
    }
    let mut response = HttpResponse::build(if finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    });
    if let Some(first) = job_ids.first() {
        response.insert_header((
            header::LOCATION,
            format!("{}/api/jobs/{first}", settings.base_path),
        ));
    }
    Ok(response.json(UploadAnswer { uploads }))
}

/// The file name of a raw-body upload, from `?name=`: decoded from the query string as bytes,
/// so a name that is not UTF-8 is refused rather than quietly changed.
fn raw_body_name(request: &HttpRequest) -> Result<String, ApiError> {
    let Some(raw) = raw_query_value(request, "name") else {
        return Err(ApiError::InvalidArgument(
            "a raw-body upload needs its file name as ?name=…; or send multipart/form-data, \
             whose parts carry their names"
                .into(),
        ));
    };
    let bytes: Vec<u8> = percent_decode_str(&raw.replace('+', " ")).collect();
    Ok(check_file_name_bytes("name", &bytes)?.to_owned())
}

/// A query parameter as text (`None` when absent); the whole query must be well formed.
fn query_value(request: &HttpRequest, key: &str) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw_query_value(request, key) else {
        return Ok(None);
    };
    let bytes: Vec<u8> = percent_decode_str(&raw.replace('+', " ")).collect();
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ApiError::InvalidArgument(format!("?{key}= is not valid UTF-8")))
}

/// The still-encoded value of `key` in the query string; refuses no key but knows only
/// `name` and `wait`.
fn raw_query_value(request: &HttpRequest, key: &str) -> Option<String> {
    request
        .query_string()
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(found, _)| *found == key)
        .map(|(_, value)| value.to_owned())
}

/// Checks the query has only the keys an upload knows, so a typo is an error, not ignored.
fn check_query_keys(request: &HttpRequest) -> Result<(), ApiError> {
    for pair in request
        .query_string()
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if key != "name" && key != "wait" {
            return Err(ApiError::InvalidArgument(format!(
                "invalid query string: unknown parameter {:?}; an upload takes name and wait",
                key.chars().take(100).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// A declared body larger than the limit is refused before a byte is read.
fn check_declared_length(request: &HttpRequest, limit: u64) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(too_large(limit)),
        Some(0) => Err(ApiError::InvalidArgument(
            "the body is empty; an upload needs the file's bytes".into(),
        )),
        _ => Ok(()),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the file is larger than {limit} bytes ([web] max_upload_size); nothing was stored"
    ))
}

async fn receive_multipart(
    state: &AppState,
    request: &HttpRequest,
    payload: Payload,
) -> Result<Vec<Staged>, ApiError> {
    check_query_keys(request)?;
    let mut parts = Multipart::new(request.headers(), payload);
    let mut staged = Vec::new();
    while let Some(part) = parts.next().await {
        let part = part.map_err(multipart_error)?;
        let Some(disposition) = part.content_disposition() else {
            return Err(multipart_error(MultipartError::ContentDispositionMissing));
        };
        let field = disposition.get_name().unwrap_or_default().to_owned();
        let name = match (disposition.get_filename_ext(), disposition.get_filename()) {
            (Some(extended), _) => check_file_name_bytes("filename", &extended.value)?.to_owned(),
            (None, Some(name)) => {
                check_file_name("filename", name)?;
                name.to_owned()
            }
            (None, None) => {
                return Err(ApiError::InvalidArgument(format!(
                    "the form part {:?} has no filename; every part of an upload must be a file \
                     (curl -F 'file=@report.pdf')",
                    field.chars().take(100).collect::<String>()
                )));
            }
        };
        if staged.len() == MAX_FILES_PER_UPLOAD {
            return Err(ApiError::InvalidArgument(format!(
                "one upload carries at most {MAX_FILES_PER_UPLOAD} files; send the rest in \
                 another request"
            )));
        }
        staged.push(
            receive_file(
                state,
                name,
                part.map(|chunk| chunk.map_err(multipart_error)),
            )
            .await?,
        );
    }
    if staged.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the form has no file; add one part with a filename (curl -F 'file=@report.pdf')"
                .into(),
        ));
    }
    Ok(staged)
}

fn multipart_error(error: MultipartError) -> ApiError {
    match error {
        MultipartError::ContentDispositionMissing => {
            ApiError::Refused(PolicyError::InvalidFileName(
                "a form part has no Content-Disposition: form-data header that can be read (a \
                 file name must be UTF-8)"
                    .into(),
            ))
        }
        // httparse refuses a part header with control characters; a file name carrying them
        // is how a client gets there.
        MultipartError::Parse(_) => ApiError::Refused(PolicyError::InvalidFileName(
            "a form part's headers cannot be parsed: a header (usually the file name in \
             Content-Disposition) holds control characters"
                .into(),
        )),
        MultipartError::Incomplete | MultipartError::Payload(_) => ApiError::InvalidArgument(
            "the upload ended before its last part did (the client left or the body is cut \
             short); nothing was stored"
                .into(),
        ),
        other => ApiError::InvalidArgument(format!("malformed multipart/form-data body: {other}")),
    }
}

/// Streams one file to a new staging file, refusing it once it passes the size limit, and
/// syncs it.
async fn receive_file<S, E>(state: &AppState, name: String, body: S) -> Result<Staged, ApiError>
where
    S: Stream<Item = Result<actix_web::web::Bytes, E>> + Unpin,
    E: Into<UploadStreamError>,
{
    let settings = state.settings();
    let staging = settings.staging.clone();
    let limit = settings.max_upload_size;
    let (path, file) = create_staged(&staging).await?;
    let mut staged = Staged {
        name,
        path,
        size: 0,
        placed: false,
    };
    let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| error.into().into_api_error())?;
        staged.size += chunk.len() as u64;
        if staged.size > limit {
            return Err(too_large(limit));
        }
        writer
            .write_all(&chunk)
            .await
            .map_err(|error| write_error(&staged.path, error))?;
    }
    if staged.size == 0 {
        return Err(ApiError::InvalidArgument(format!(
            "{:?} is empty; an upload needs the file's bytes",
            staged.name
        )));
    }
    writer
        .flush()
        .await
        .map_err(|error| write_error(&staged.path, error))?;
    writer
        .into_inner()
        .sync_all()
        .await
        .map_err(|error| write_error(&staged.path, error))?;
    Ok(staged)
}

/// Why reading an upload's body failed.
#[derive(Debug)]
pub enum UploadStreamError {
    Api(ApiError),
    Payload(actix_web::error::PayloadError),
}

impl UploadStreamError {
    fn into_api_error(self) -> ApiError {
        match self {
            UploadStreamError::Api(error) => error,
            UploadStreamError::Payload(error) => ApiError::InvalidArgument(format!(
                "the upload ended before the whole file arrived ({error}); nothing was stored"
            )),
        }
    }
}

impl From<ApiError> for UploadStreamError {
    fn from(error: ApiError) -> Self {
        UploadStreamError::Api(error)
    }
}

impl From<actix_web::error::PayloadError> for UploadStreamError {
    fn from(error: actix_web::error::PayloadError) -> Self {
        UploadStreamError::Payload(error)
    }
}

async fn create_staged(staging: &Path) -> Result<(PathBuf, tokio::fs::File), ApiError> {
    let staging = staging.to_path_buf();
    let created = tokio::task::spawn_blocking(move || create_staged_file(&staging, STAGED_PREFIX))
        .await
        .map_err(|error| ApiError::internal("a staging task failed", error))?;
    let (path, file) = created.map_err(inbox_error)?;
    Ok((path, tokio::fs::File::from_std(file)))
}

fn inbox_error(error: InboxError) -> ApiError {
    match error {
        InboxError::NoSpace(message) => {
            tracing::error!(error = %message, "an upload was refused: {message}");
            ApiError::Unavailable(
                "the disk that receives uploads is full; nothing was stored. Try again once \
                 space is freed"
                    .into(),
            )
        }
        InboxError::Refused(message) | InboxError::Io(message) => {
            ApiError::internal("cannot store the upload", message)
        }
    }
}

fn write_error(path: &Path, error: std::io::Error) -> ApiError {
    if sluice_core::beneath::is_out_of_space(&error) {
        tracing::error!(
            path = %path.display(),
            error = %error,
            "an upload was refused: the staging folder's disk is full ({error})"
        );
        return ApiError::Unavailable(
            "the disk that receives uploads is full; nothing was stored. Try again once space \
             is freed"
                .into(),
        );
    }
    ApiError::internal(
        &format!("cannot write the upload {}", path.display()),
        error,
    )
}

/// `[ingest] max_pending`: refuses an upload of `files` files with 429 `queue_full` when
/// fewer places are left in the ingest queue. Uploads are submissions, so they are refused
/// where a file found in the inbox would be held. The count is not the insert's transaction
/// (a file is placed in the inbox between them): uploads racing for the last places may all
/// pass it, and then a file the queue cannot take is held, which `place_all` reports.
async fn require_ingest_room(state: &AppState, files: usize) -> Result<(), ApiError> {
    let limit = state.settings().max_pending_ingest;
    let pending = state
        .with_store(move |store| store.pending_jobs(INGEST_JOB_KIND, limit))
        .await?;
    let wanted = u64::try_from(files).unwrap_or(u64::MAX);
    if pending.saturating_add(wanted) <= u64::from(limit) {
        return Ok(());
    }
    Err(ApiError::QueueFull(format!(
        "the ingest queue is full: {pending} ingest jobs are queued, retrying or running, the \
         limit is {limit} ([ingest] max_pending) and this upload needs {files}; nothing was \
         stored, try again once some have finished"
    )))
}

/// Moves every staged file into the inbox and records it with its ingest job, in the order
/// received. A file that cannot be placed fails the request; files placed before it stay
/// (each is whole and recorded).
async fn place_all(
    state: &AppState,
    staged: Vec<Staged>,
    watch: WatchConfig,
) -> Result<Vec<Placed>, ApiError> {
    let inbox = state.settings().inbox.clone();
    let max_attempts = state.settings().max_attempts;
    let max_pending = state.settings().max_pending_ingest;
    let mut placed = Vec::with_capacity(staged.len());
    for mut file in staged {
        let inbox = inbox.clone();
        let watch = watch.clone();
        // Placing and recording happen on a blocking thread; `file` goes with it, so an
        // unplaced file is still removed if the request is dropped meanwhile.
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = place_one(&mut file, &inbox, &watch);
            (file, result)
        })
        .await
        .map_err(|error| ApiError::internal("an upload task failed", error))?;
        let (stored_path, detected) = result?;
        let stored_as = stored_path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let detections = state
            .with_store(move |store| {
                store.record_detected_files(&[detected], max_attempts, max_pending)
            })
            .await
            .map_err(|error| {
                tracing::error!(
                    path = %stored_path.display(),
                    error = %error,
                    "upload {} is in the inbox but could not be recorded ({error}); the \
                     monitor will queue it",
                    stored_path.display()
                );
                ApiError::Unavailable(format!(
                    "the file was stored but its job could not be recorded ({error}); the \
                     monitor will queue it, but this answer cannot name the job"
                ))
            })?;
        let detection = detections
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("recording the upload returned nothing".into()))?;
        let Some(job_id) = detection.job_id else {
            // The ingest queue filled up between the check before placing and this commit
            // (another upload took the last place): the file is in the inbox, recorded held,
            // and the monitor queues it once there is room. The answer lists it as held;
            // sending it again would only make a duplicate.
            tracing::info!(
                file_id = detection.file_id,
                path = %detection.path.display(),
                "upload {:?} stored as {} and held: the ingest queue is full",
                file.name,
                detection.path.display()
            );
            placed.push(Placed {
                name: file.name.clone(),
                stored_as,
                size: file.size,
                file_id: detection.file_id,
                job_id: None,
            });
            continue;
        };
        tracing::info!(
            file_id = detection.file_id,
            job_id,
            path = %detection.path.display(),
            size = file.size,
            "upload {:?} stored as {} and queued as job {}",
            file.name,
            detection.path.display(),
            job_id
        );
        placed.push(Placed {
            name: file.name.clone(),
            stored_as,
            size: file.size,
            file_id: detection.file_id,
            job_id: Some(job_id),
        });
    }
    Ok(placed)
}

fn place_one(
    file: &mut Staged,
    inbox: &Path,
    watch: &WatchConfig,
) -> Result<(PathBuf, DetectedFile), ApiError> {
    let metadata =
        std::fs::symlink_metadata(&file.path).map_err(|error| write_error(&file.path, error))?;
    let stored = place_in_inbox(&file.path, inbox, None, &file.name).map_err(inbox_error)?;
    file.placed = true;
    let detected = DetectedFile {
        watch_root: watch.path.clone(),
        path: stored.clone(),
        mode: watch.mode,
        size: metadata.size(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        inode: metadata.ino(),
    };
    Ok((stored, detected))
}

/// Removes `upload-*.part` files a previous process left in the staging folder (it was killed
/// mid-upload; those requests were never answered, so nothing refers to them).
pub fn sweep_staging(staging: &Path) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(STAGED_PREFIX) && name.ends_with(".part") {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(
                    path = %path.display(),
                    "removed {}, an upload left unfinished by the previous sluice-web",
                    path.display()
                ),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    error = %error,
                    "cannot remove the unfinished upload {}: {error}",
                    path.display()
                ),
            }
        }
    }
}
