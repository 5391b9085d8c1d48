//! The API's one error shape, `{"error": {"code": "...", "message": "..."}}`, and the
//! conversions from store, bus and extractor errors into it, so every failure a client sees
//! has a stable code and the matching HTTP status.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use sluice_core::bus::BusError;
use sluice_core::policy::PolicyError;
use sluice_core::store::FileError;
use sluice_core::store::SourceError;
use sluice_core::store::StoreError;
use sluice_core::store::documents::DocumentError;
use sluice_core::store::downloads::DownloadError;
use sluice_core::store::jobs::JobError;

/// What a submission refused for a full queue is told to wait (`Retry-After`): a queue at
/// its limit drains at the pace of its jobs, seconds to minutes each, so asking again sooner
/// would mostly be refused again.
pub const QUEUE_FULL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What a request for a thumbnail still being made is told to wait (`Retry-After`): its job
/// runs once the ingests ahead of it are done, a second or so on a quiet queue.
pub const THUMBNAIL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A failed API request. The variant decides the status and the `code`; the message is for
/// people and never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 400 `invalid_argument`: malformed JSON, wrong types, values out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// 400 `invalid_argument` with the policy's machine code as `reason` (`invalid_url`,
    /// `forbidden_address`, ...): the same refusal D-Bus and sluicectl give. The `code` stays
    /// `invalid_argument` so clients matching on it keep working.
    #[error(transparent)]
    Refused(#[from] PolicyError),
    /// 401 `unauthorized`: the bearer token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: the bearer token is right but does not allow this (the read token on
    /// a change).
    #[error("{0}")]
    Forbidden(String),
    /// 405 `method_not_allowed` with `Allow`: the path exists, the method does not.
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allow: &'static str,
    },
    /// 404 `not_found` with reason `thumbnail_pending` and `Retry-After`: the thumbnail is
    /// being made (its job is queued or running); asking again shortly finds it.
    #[error("{0}")]
    ThumbnailPending(String),
    /// 409 `conflict`: the object is in a state where the request makes no sense.
    #[error("{0}")]
    Conflict(String),
    /// 413 `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415 `unsupported_media_type`: a body in a format the endpoint does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 421 `misdirected_request`: the Host header names a host this server does not serve
    /// (DNS-rebinding protection).
    #[error("{0}")]
    MisdirectedRequest(String),
    /// 416 `range_not_satisfiable` with `Content-Range: bytes */size`: a `Range` request
    /// for bytes the content does not have.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, size: u64 },
    /// 429 `queue_full` with `Retry-After`: the queue the request would add to is at its
    /// limit (`[scraper] max_pending` for downloads); nothing was created.
    #[error("{0}")]
    QueueFull(String),
    /// 503 `unavailable`: the store is busy or unreachable, or a daemon is not running.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `internal`: a bug or an unexpected failure; details are in the log.
    #[error("{0}")]
    Internal(String),
}

/// Every error the API answers: `{"error": {"code": ..., "message": ...}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// not_found, invalid_argument, unauthorized, forbidden, method_not_allowed, conflict,
    /// payload_too_large,
    /// unsupported_media_type, misdirected_request, range_not_satisfiable, queue_full,
    /// unavailable or internal.
    code: &'static str,
    /// The policy's specific code for a refused input, or `thumbnail_pending` (a 404 for a
    /// thumbnail that is being made: ask again after `Retry-After`); absent for other errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// For people; never carries secrets.
    message: &'a str,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) | ApiError::ThumbnailPending(_) => "not_found",
            ApiError::InvalidArgument(_) | ApiError::Refused(_) => "invalid_argument",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MisdirectedRequest(_) => "misdirected_request",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Logs an unexpected failure once, here, and returns the error a client sees.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "{context}: {error}");
        ApiError::Internal(format!("{context}; see the sluice-web log"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::ThumbnailPending(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidArgument(_) | ApiError::Refused(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"sluice\""));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::QueueFull(_) => {
                response.insert_header((header::RETRY_AFTER, QUEUE_FULL_RETRY_AFTER.as_secs()));
            }
            ApiError::ThumbnailPending(_) => {
                response.insert_header((header::RETRY_AFTER, THUMBNAIL_RETRY_AFTER.as_secs()));
            }
            ApiError::RangeNotSatisfiable { size, .. } => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                reason: match self {
                    ApiError::Refused(error) => Some(error.code()),
                    ApiError::ThumbnailPending(_) => Some("thumbnail_pending"),
                    _ => None,
                },
                message: &message,
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Busy(_) => {
                ApiError::Unavailable("the database is busy; try again in a moment".into())
            }
            StoreError::Full(error) => {
                tracing::error!(
                    error = %error,
                    "a request changed nothing: the disk holding the database is full ({error})"
                );
                ApiError::Unavailable(
                    "the disk holding the database is full; nothing was changed. Try again once \
                     space is freed"
                        .into(),
                )
            }
            other => ApiError::internal("database error", other),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> ApiError {
        match error {
            JobError::NotFound(id) => ApiError::NotFound(format!("job {id} does not exist")),
            JobError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            error @ (JobError::InvalidState { .. } | JobError::LeaseLost { .. }) => {
                ApiError::Conflict(error.to_string())
            }
            JobError::QueueFull(full) => ApiError::QueueFull(full.to_string()),
            JobError::Store(error) => error.into(),
        }
    }
}

impl From<DownloadError> for ApiError {
    fn from(error: DownloadError) -> ApiError {
        match error {
            DownloadError::BundleNotFound(id) => {
                ApiError::NotFound(format!("bundle {id} does not exist"))
            }
            DownloadError::NotFound(id) => {
                ApiError::NotFound(format!("download {id} does not exist"))
            }
            DownloadError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            error @ (DownloadError::InvalidState { .. }
            | DownloadError::BundleInvalidState { .. }
            | DownloadError::PartOfBundle { .. }) => ApiError::Conflict(error.to_string()),
            DownloadError::Job(error) => error.into(),
            DownloadError::Store(error) => error.into(),
        }
    }
}

impl From<SourceError> for ApiError {
    fn from(error: SourceError) -> ApiError {
        match error {
            SourceError::NotFound(name) => {
                ApiError::NotFound(format!("source {name:?} is not configured"))
            }
            error @ SourceError::Disabled(_) => ApiError::NotFound(error.to_string()),
            SourceError::Download(error) => error.into(),
            SourceError::Store(error) => error.into(),
        }
    }
}

impl From<DocumentError> for ApiError {
    fn from(error: DocumentError) -> ApiError {
        match error {
            DocumentError::NotFound(id) => {
                ApiError::NotFound(format!("document {id} does not exist"))
            }
            DocumentError::FileNotFound(id) => {
                ApiError::NotFound(format!("file {id} does not exist"))
            }
            DocumentError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            DocumentError::Job(error) => error.into(),
            DocumentError::Store(error) => error.into(),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(error: FileError) -> ApiError {
        match error {
            FileError::NotFound(id) => ApiError::NotFound(format!("file {id} does not exist")),
            FileError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            FileError::Job(error) => error.into(),
            FileError::Store(error) => error.into(),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> ApiError {
        match error {
            BusError::NotFound(message) => ApiError::NotFound(message),
            BusError::InvalidArgument(message) => ApiError::InvalidArgument(message),
            BusError::WrongState(message) => ApiError::Conflict(message),
            BusError::QueueFull(message) => ApiError::QueueFull(message),
            BusError::Busy(message) => ApiError::Unavailable(message),
            BusError::AccessDenied(message)
            | BusError::InteractiveAuthorizationRequired(message) => {
                ApiError::internal("the daemon refused sluice-web's D-Bus call", message)
            }
            BusError::Internal(message) => ApiError::internal("a daemon failed", message),
            BusError::ZBus(error) => ApiError::Unavailable(format!("D-Bus call failed: {error}")),
        }
    }
}

/// Malformed or oversize JSON bodies: 413 for size (checked against Content-Length before
/// anything is read, and while reading a chunked body), 400 for everything else.
pub fn json_error(error: JsonPayloadError, _request: &HttpRequest) -> actix_web::Error {
    let api_error = match &error {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::PayloadTooLarge(
            format!("the body is {length} bytes; the limit is {limit} ([limits] max_request_body)"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge(format!(
            "the body is larger than {limit} bytes ([limits] max_request_body)"
        )),
        JsonPayloadError::ContentType => ApiError::InvalidArgument(
            "the body must be JSON (Content-Type: application/json)".into(),
        ),
        JsonPayloadError::Deserialize(error) => {
            ApiError::InvalidArgument(format!("malformed JSON body: {error}"))
        }
        other => ApiError::InvalidArgument(format!("cannot read the JSON body: {other}")),
    };
    api_error.into()
}

/// Query strings with unknown keys or values of the wrong type.
pub fn query_error(error: QueryPayloadError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidArgument(format!("invalid query string: {error}")).into()
}

/// Path segments of the wrong type, such as `/api/jobs/abc`.
pub fn path_error(error: PathError, _request: &HttpRequest) -> actix_web::Error {
    let message = match error {
        PathError::Deserialize(error) => {
            format!("invalid id in the path: {error}; ids are positive whole numbers")
        }
        other => format!("invalid path: {other}"),
    };
    ApiError::InvalidArgument(message).into()
}
