//! A document's bytes, its thumbnail and its processors' derived files:
//! `GET|HEAD /api/documents/{id}/content`, `…/thumbnail` and `…/derived/{processor}/{name}`.
//!
//! The file is found and checked by `sluice_core::content` (beneath its folder, no links,
//! still the catalogued version) and streamed from the opened descriptor, never read whole.
//! The content hash is the entity tag, so a cached copy is revalidated with a 304 and a range
//! request resumed with `If-Range` can only ever be answered with bytes of the same content.
//!
//! What a browser is told, because these bytes come from anyone who could drop a file in a
//! folder: the detected type with `X-Content-Type-Options: nosniff` (no second guess that turns
//! text into HTML), `Content-Security-Policy: sandbox` (a page opened from here runs no script
//! and has no origin), and `Content-Disposition: attachment` for everything but a short list
//! of passive types (see [`shown_inline`]), so HTML, SVG, XML and the like are downloaded, not
//! rendered on the API's origin.

use std::io::SeekFrom;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{Bytes, Data, Path};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::Stream;
use serde_json::Value;
use sluice_core::content::{
    ContentError, ContentPlaces, OpenedContent, open_derived, open_document_content, open_thumbnail,
};
use sluice_core::store::jobs::JobError;
use sluice_core::store::{Document, Store};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Bytes read from the file per body chunk.
const CHUNK_BYTES: u64 = 64 * 1024;

/// Types a browser shows without running anything: shown inline. Everything else, including
/// HTML, SVG, XML, JavaScript and unknown types, is an attachment.
const INLINE_TYPES: &[&str] = &[
    "application/pdf",
    "text/plain",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/flac",
    "video/mp4",
    "video/webm",
    "video/ogg",
];

/// File name endings a browser or the desktop may treat as active content whatever the
/// detected type says (a `<svg>` file without an XML declaration is detected as text): a
/// document arriving under such a name is always an attachment.
const ACTIVE_EXTENSIONS: &[&str] = &[
    "htm", "html", "xhtml", "xht", "shtml", "svg", "svgz", "xml", "xsl", "xslt", "js", "mjs",
    "css", "swf", "hta", "mht", "mhtml", "wasm",
];

/// The document's bytes (also `HEAD`), with `Range`, `ETag` and `If-None-Match`.
#[utoipa::path(get, path = "/api/documents/{id}/content", tag = "documents",
    params(("id" = i64, Path, description = "The document's id"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`")),
    responses(
        (status = 200, description = "The content", content((Vec<u8> = "*/*"))),
        (status = 206, description = "The range asked for", content((Vec<u8> = "*/*"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such document, or its file is gone", body = ErrorBody),
        (status = 416, description = "The range is outside the content", body = ErrorBody),
    ))]
pub async fn document_content(
    state: Data<AppState>,
    id: Path<i64>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let library = state.settings().library.clone();
    let index_roots = state.settings().index_roots.clone();
    let (document, opened) = state
        .with_store(move |store| {
            let document = store.get_document(id)?;
            let places = ContentPlaces {
                library: &library,
                index_roots: &index_roots,
            };
            // The library copy needs no file rows; the rows are read only when it is missing
            // or the document lives in an index folder.
            let opened = match open_document_content(&document, &[], places) {
                Ok(opened) => Ok(opened),
                Err(_) if !index_roots.is_empty() => {
                    let copies = store.catalogued_copies(id)?;
                    open_document_content(&document, &copies, places)
                }
                Err(error) => Err(error),
            };
            match opened {
                Ok(opened) => Ok((document, opened)),
                Err(error) => {
                    tracing::warn!(
                        doc_id = id,
                        error = %error,
                        "document {id} cannot be served: {error}"
                    );
                    Err(ApiError::from(error))
                }
            }
        })
        .await?;
    let entity_tag = format!("\"{}\"", document.blake3);
    let mut response = respond(&request, &entity_tag, opened)?;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type(&document)) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&document)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The document's thumbnail, a PNG (also `HEAD`).
#[utoipa::path(get, path = "/api/documents/{id}/thumbnail", tag = "documents",
    params(("id" = i64, Path, description = "The document's id"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`")),
    responses(
        (status = 200, description = "The thumbnail", content((Vec<u8> = "image/png"))),
        (status = 206, description = "The range asked for", content((Vec<u8> = "image/png"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "The id is not a whole number", body = ErrorBody),
        (status = 404, description = "No such document, or it has no thumbnail (the message \
            says why), or it is still being made: then the reason is `thumbnail_pending` and \
            `Retry-After` says when to ask again", body = ErrorBody),
        (status = 416, description = "The range is outside the thumbnail", body = ErrorBody),
    ))]
pub async fn document_thumbnail(
    state: Data<AppState>,
    id: Path<i64>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let library = state.settings().library.clone();
    let (thumbnail, opened) = state
        .with_store(move |store| {
            let document = store.get_document(id)?;
            let Some(thumbnail) = recorded_thumbnail(&document) else {
                return Err(missing_thumbnail(store, &document));
            };
            match open_thumbnail(&library, &thumbnail.path) {
                Ok(Some(opened)) if opened.size == thumbnail.bytes => Ok((thumbnail, opened)),
                Ok(Some(_)) => Err(ApiError::Conflict(format!(
                    "the thumbnail file of document {id} is not the one recorded; it is not served"
                ))),
                Ok(None) => Err(ApiError::NotFound(format!(
                    "document {id}'s thumbnail is gone from the library"
                ))),
                Err(error) => Err(ApiError::from(error)),
            }
        })
        .await?;
    let entity_tag = format!("\"{}\"", thumbnail.blake3);
    let mut response = respond(&request, &entity_tag, opened)?;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline; filename=\"thumbnail.png\""),
    );
    Ok(response)
}

/// Why `document` has no thumbnail to serve: one could not be made (the reason recorded), its
/// job has not run yet (404 `thumbnail_pending` with `Retry-After`), its job ended without
/// recording one, or the type has none.
fn missing_thumbnail(store: &Store, document: &Document) -> ApiError {
    let id = document.id;
    if let Some(reason) = document
        .metadata
        .get("thumbnail_error")
        .and_then(Value::as_str)
    {
        return ApiError::NotFound(format!("document {id} has no thumbnail: {reason}"));
    }
    let Some(job_id) = document
        .metadata
        .get("thumbnail_job")
        .and_then(Value::as_i64)
    else {
        return ApiError::NotFound(format!("document {id} has no thumbnail"));
    };
    match store.get_job(job_id) {
        Ok(job) if !job.state.is_terminal() => ApiError::ThumbnailPending(format!(
            "document {id}'s thumbnail is not made yet (thumbnail job {job_id} is {}); ask \
             again shortly",
            job.state
        )),
        Ok(job) => ApiError::NotFound(format!(
            "document {id} has no thumbnail: thumbnail job {job_id} ended {}{}",
            job.state,
            job.error
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        )),
        Err(JobError::NotFound(_)) => ApiError::NotFound(format!(
            "document {id} has no thumbnail (thumbnail job {job_id} is no longer recorded)"
        )),
        Err(error) => error.into(),
    }
}

/// A file a processor derived from the document's content (also `HEAD`), one of those its
/// metadata lists under `derived_files`, read from where the worker files it beneath the
/// library. Served like the content: `Range`, an `ETag`, `nosniff`, `sandbox`, and
/// `attachment` unless the name says plain text.
#[utoipa::path(get, path = "/api/documents/{id}/derived/{processor}/{name}", tag = "documents",
    params(("id" = i64, Path, description = "The document's id"),
        ("processor" = String, Path, description = "The `[[processor]]` that made the file"),
        ("name" = String, Path, description = "The file's name, as `derived_files` lists it"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`")),
    responses(
        (status = 200, description = "The derived file", content((Vec<u8> = "*/*"))),
        (status = 206, description = "The range asked for", content((Vec<u8> = "*/*"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "The id is not a whole number, or a name is not one plain \
            file name", body = ErrorBody),
        (status = 404, description = "No such document, or it lists no such derived file, or \
            the file is gone", body = ErrorBody),
        (status = 409, description = "The file in the library is not the one listed", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ))]
pub async fn document_derived(
    state: Data<AppState>,
    path: Path<(i64, String, String)>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, processor, name) = path.into_inner();
    sluice_core::policy::check_file_name("processor", &processor)?;
    sluice_core::policy::check_file_name("derived file", &name)?;
    let library = state.settings().library.clone();
    let (answer_name, document, opened) = state
        .with_store(move |store| {
            let document = store.get_document(id)?;
            let listed = document
                .metadata
                .get("derived_files")
                .and_then(Value::as_array)
                .and_then(|files| {
                    files.iter().find(|file| {
                        file.get("processor").and_then(Value::as_str) == Some(processor.as_str())
                            && file.get("name").and_then(Value::as_str) == Some(name.as_str())
                    })
                })
                .and_then(|file| file.get("size").and_then(Value::as_u64));
            let Some(size) = listed else {
                return Err(ApiError::NotFound(format!(
                    "document {id} lists no derived file {name:?} of processor {processor:?}"
                )));
            };
            match open_derived(&library, &document.blake3, &processor, &name) {
                Ok(Some(opened)) if opened.size == size => Ok((name, document, opened)),
                Ok(Some(_)) => Err(ApiError::Conflict(format!(
                    "derived file {name:?} of document {id} is not the one recorded; it is not \
                     served"
                ))),
                Ok(None) => Err(ApiError::NotFound(format!(
                    "derived file {name:?} of document {id} is gone from the library"
                ))),
                Err(error) => Err(ApiError::from(error)),
            }
            .map(|(name, document, opened)| (format!("{processor}/{name}"), document, opened))
        })
        .await?;
    // A derived file is written before its document is committed and never after, so the
    // content's hash and the file's place name its bytes.
    let entity_tag = format!(
        "\"{}\"",
        blake3::hash(format!("{}/{answer_name}", document.blake3).as_bytes()).to_hex()
    );
    let file_name = answer_name
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mime = derived_type(&file_name);
    let mut response = respond(&request, &entity_tag, opened)?;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(value) = HeaderValue::from_str(&disposition(mime, &file_name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The type a derived file is served as: nothing detected it, so only its name speaks, and
/// only plain text and JSON are named; everything else is bytes.
fn derived_type(name: &str) -> &'static str {
    match name
        .rsplit_once('.')
        .map(|(_, ending)| ending.to_ascii_lowercase())
    {
        Some(ending) if ending == "txt" => "text/plain",
        Some(ending) if ending == "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// A thumbnail as the worker records it in a document's metadata.
struct RecordedThumbnail {
    path: String,
    bytes: u64,
    blake3: String,
}

fn recorded_thumbnail(document: &Document) -> Option<RecordedThumbnail> {
    let thumbnail = document.metadata.get("thumbnail")?;
    Some(RecordedThumbnail {
        path: thumbnail.get("path")?.as_str()?.to_owned(),
        bytes: thumbnail.get("bytes")?.as_u64()?,
        blake3: thumbnail.get("blake3")?.as_str()?.to_owned(),
    })
}

/// The answer for an opened file with entity tag `entity_tag` (quoted): 304 when the client's
/// copy is current, 206 for a satisfiable single range, 416 for one that is not, else 200
/// with the whole file. `HEAD` gets the same status and headers and no body, without reading
/// the file.
fn respond(
    request: &HttpRequest,
    entity_tag: &str,
    opened: OpenedContent,
) -> Result<HttpResponse, ApiError> {
    let size = opened.size;
    let headers = request.headers();
    let mut response = if none_match(headers, entity_tag) {
        HttpResponse::build(StatusCode::NOT_MODIFIED).finish()
    } else {
        let wanted = if if_range_holds(headers, entity_tag) {
            requested_range(headers, size)
        } else {
            Requested::Whole
        };
        let (status, start, length) = match wanted {
            Requested::Whole => (StatusCode::OK, 0, size),
            Requested::Range { first, last } => {
                (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
            }
            Requested::Unsatisfiable => {
                return Err(ApiError::RangeNotSatisfiable {
                    message: format!(
                        "the requested range is outside the {size} bytes of the content"
                    ),
                    size,
                });
            }
        };
        let mut builder = HttpResponse::build(status);
        if status == StatusCode::PARTIAL_CONTENT {
            builder.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", start + length - 1),
            ));
        }
        if request.method() == Method::HEAD {
            builder.body(SizedStream::new(
                length,
                futures_util::stream::empty::<Result<Bytes, std::io::Error>>(),
            ))
        } else {
            builder.body(SizedStream::new(length, file_chunks(opened, start, length)))
        }
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(entity_tag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    // Behind a token: no shared cache may keep it, and a private one asks again (a cheap 304)
    // because an indexed file can go away.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

/// `length` bytes of the file from `start`, read a chunk at a time on the blocking pool. A
/// file that shrinks under the reader ends the body with an error, so the client sees a cut
/// response rather than a short one passing for whole.
fn file_chunks(
    opened: OpenedContent,
    start: u64,
    length: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let file = tokio::fs::File::from_std(opened.file);
    futures_util::stream::try_unfold(
        (file, length, false),
        move |(mut file, remaining, positioned)| async move {
            if remaining == 0 {
                return Ok(None);
            }
            if !positioned {
                file.seek(SeekFrom::Start(start)).await?;
            }
            let mut buffer = vec![0u8; CHUNK_BYTES.min(remaining) as usize];
            let read = file.read(&mut buffer).await?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was sent",
                ));
            }
            buffer.truncate(read);
            Ok(Some((
                Bytes::from(buffer),
                (file, remaining - read as u64, true),
            )))
        },
    )
}

/// What the `Range` header asks for, as far as it is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requested {
    /// No range, several ranges, another unit or a malformed header: the whole content
    /// (RFC 9110 lets a server ignore a Range it does not serve).
    Whole,
    /// Bytes `first..=last`, `last` within the content.
    Range {
        first: u64,
        last: u64,
    },
    Unsatisfiable,
}

fn requested_range(headers: &HeaderMap, size: u64) -> Requested {
    let Some(text) = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
    else {
        return Requested::Whole;
    };
    parse_range(text, size)
}

fn parse_range(text: &str, size: u64) -> Requested {
    let Some(specification) = text.trim().strip_prefix("bytes=") else {
        return Requested::Whole;
    };
    let mut ranges = specification.split(',');
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return Requested::Whole;
    };
    let Some((first, last)) = range.trim().split_once('-') else {
        return Requested::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                Requested::Unsatisfiable
            } else {
                Requested::Range {
                    first: size - suffix.min(size),
                    last: size - 1,
                }
            }
        }
        // `A-` or `A-B`.
        (false, Some(first), last_number) => {
            let last = match (last.is_empty(), last_number) {
                (true, _) => u64::MAX,
                (false, Some(last)) if last >= first => last,
                _ => return Requested::Whole,
            };
            if first >= size {
                Requested::Unsatisfiable
            } else {
                Requested::Range {
                    first,
                    last: last.min(size - 1),
                }
            }
        }
        _ => Requested::Whole,
    }
}

/// Whether `If-None-Match` names the current content (weak comparison, as RFC 9110 asks for
/// this header), or is `*`.
fn none_match(headers: &HeaderMap, entity_tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == entity_tag)
}

/// Whether a `Range` may be honoured: there is no `If-Range`, or it is the current entity tag
/// (strong comparison). A date there cannot be checked (no Last-Modified is sent), so the
/// whole content is sent, which is always correct.
fn if_range_holds(headers: &HeaderMap, entity_tag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|tag| tag.trim() == entity_tag),
    }
}

/// The detected type, with the character set the worker found for text.
fn content_type(document: &Document) -> String {
    let charset = match document.metadata.get("encoding").and_then(Value::as_str) {
        Some("ascii" | "utf-8") => Some("utf-8"),
        Some(encoding @ ("iso-8859-1" | "utf-16le" | "utf-16be")) => Some(encoding),
        _ => None,
    };
    match charset {
        Some(charset) if document.mime.starts_with("text/") => {
            format!("{}; charset={charset}", document.mime)
        }
        _ => document.mime.clone(),
    }
}

/// `inline` for passive types under a harmless name, else `attachment`; with the original
/// name as an ASCII fallback and, when it is not plain ASCII, RFC 5987 encoded
/// (RFC 6266, section 4.3).
fn content_disposition(document: &Document) -> String {
    disposition(&document.mime, &document.original_name)
}

/// [`content_disposition`] for a file of type `mime` named `name`.
fn disposition(mime: &str, name: &str) -> String {
    let disposition = if shown_inline(mime, name) {
        "inline"
    } else {
        "attachment"
    };
    let fallback: String = name
        .chars()
        .map(|character| match character {
            ' '..='~' if character != '"' && character != '\\' => character,
            _ => '_',
        })
        .collect();
    let fallback = if fallback.is_empty() {
        "document".to_owned()
    } else {
        fallback
    };
    if fallback == *name {
        format!("{disposition}; filename=\"{fallback}\"")
    } else {
        format!(
            "{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{}",
            percent_encoding::utf8_percent_encode(name, ATTRIBUTE_CHARACTERS)
        )
    }
}

/// Whether content of type `mime` arriving as `name` may be shown in the browser.
fn shown_inline(mime: &str, name: &str) -> bool {
    let essence = mime.split(';').next().unwrap_or_default().trim();
    let extension = name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase());
    INLINE_TYPES.contains(&essence)
        && !extension.is_some_and(|extension| ACTIVE_EXTENSIONS.contains(&extension.as_str()))
}

/// Everything but RFC 5987's `attr-char` is percent-encoded.
const ATTRIBUTE_CHARACTERS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

impl From<ContentError> for ApiError {
    fn from(error: ContentError) -> ApiError {
        match error {
            ContentError::Gone(message) => ApiError::NotFound(message),
            ContentError::Changed(message) | ContentError::Refused(message) => {
                ApiError::Conflict(message)
            }
            ContentError::Unreadable(message) => ApiError::Unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let range = |first, last| Requested::Range { first, last };
        assert_eq!(parse_range("bytes=0-9", 100), range(0, 9));
        assert_eq!(parse_range("bytes=10-", 100), range(10, 99));
        assert_eq!(parse_range("bytes=90-200", 100), range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), range(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), range(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Requested::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Requested::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Requested::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Requested::Unsatisfiable);
        // Ignored, so the whole content is sent: several ranges, other units, nonsense.
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(parse_range(ignored, 100), Requested::Whole, "{ignored}");
        }
    }

    fn document(mime: &str, name: &str) -> Document {
        Document {
            id: 1,
            blake3: "a".repeat(64),
            sha256: "b".repeat(64),
            size: 1,
            mime: mime.into(),
            original_name: name.into(),
            library_path: None,
            metadata: json!({"encoding": "utf-8"}),
            duplicates: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn only_passive_types_under_harmless_names_are_inline() {
        let disposition = |mime, name| content_disposition(&document(mime, name));
        assert_eq!(
            disposition("image/png", "cat.png"),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(
            disposition("application/pdf", "a.pdf"),
            "inline; filename=\"a.pdf\""
        );
        assert_eq!(
            disposition("text/html", "page.html"),
            "attachment; filename=\"page.html\""
        );
        assert_eq!(
            disposition("text/xml", "x.xml"),
            "attachment; filename=\"x.xml\""
        );
        // Detected as text, named as SVG: still an attachment.
        assert_eq!(
            disposition("text/plain", "logo.svg"),
            "attachment; filename=\"logo.svg\""
        );
        assert_eq!(
            disposition("application/octet-stream", "tool.bin"),
            "attachment; filename=\"tool.bin\""
        );
        assert_eq!(
            disposition("text/plain", "Übersicht \"Q3\".txt"),
            "inline; filename=\"_bersicht _Q3_.txt\"; \
             filename*=UTF-8''%C3%9Cbersicht%20%22Q3%22.txt"
        );
        assert_eq!(
            content_type(&document("text/plain", "a.txt")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type(&document("image/png", "a.png")), "image/png");
    }

    #[test]
    fn validators_compare_as_the_rfc_says() {
        let tag = "\"abc\"";
        let headers = |name, value: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(name, HeaderValue::from_static(value));
            map
        };
        assert!(none_match(
            &headers(header::IF_NONE_MATCH, "\"x\", W/\"abc\""),
            tag
        ));
        assert!(none_match(&headers(header::IF_NONE_MATCH, "*"), tag));
        assert!(!none_match(&headers(header::IF_NONE_MATCH, "\"abd\""), tag));
        assert!(if_range_holds(&HeaderMap::new(), tag));
        assert!(if_range_holds(&headers(header::IF_RANGE, "\"abc\""), tag));
        assert!(!if_range_holds(
            &headers(header::IF_RANGE, "W/\"abc\""),
            tag
        ));
        assert!(!if_range_holds(
            &headers(header::IF_RANGE, "Wed, 21 Oct 2015 07:28:00 GMT"),
            tag
        ));
    }
}
