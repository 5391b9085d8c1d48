//! The input policy: what a download or bundle submission, a file or bundle name, a bundle's
//! relative paths, a Hugging Face reference, a digest, a rescan
//! path or a search query must look like, and which addresses a download may reach. Every entry point (the
//! D-Bus objects, the HTTP API, sluicectl, the scraper's connect-time guard) asks this module,
//! so a value gets the same verdict and the same machine code whichever way it arrives.
//!
//! Plain types at the bottom of the core: this module imports neither the store, the bus nor
//! the configuration. Callers pass the configured limits in ([`SubmitRules`]).

mod address;
mod bundle;
mod download;
mod names;
mod rescan;
mod search;
mod url_shape;
mod waiting;

pub use address::{
    HOST_RESOLVE_TIMEOUT, check_download_target, forbidden_address_reason, is_local_name,
    resolve_download_host,
};
pub use bundle::{
    HF_PREFIX, HfReference, MAX_BUNDLE_FILES, MAX_RELATIVE_PATH_BYTES, MAX_RELATIVE_PATH_DEPTH,
    NewBundle, NewBundleFile, ValidBundle, ValidBundleFile, check_relative_path, is_hf_reference,
    parse_hf_reference,
};
pub use download::{NewDownload, SubmitRules, ValidDownload, check_max_bytes, validate_submission};
pub use names::{
    FALLBACK_FILE_NAME, check_bundle_name, check_file_name, check_file_name_bytes, check_name,
    check_sha256, check_source_name, file_name_from_url,
};
pub use rescan::resolve_rescan_path;
pub use search::{MAX_SEARCH_QUERY_BYTES, MAX_SEARCH_TERMS, SearchQuery, parse_search_query};
pub use url_shape::parse_download_url;
pub use waiting::{check_last_event_id, check_wait};

/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 4096;
/// Longest file, bundle or source name, in bytes (the limit of one name on Linux file systems).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path a caller may pass (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Attempts a job may be given before it is `dead`.
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

/// Why an input was refused. Each variant has a stable machine code ([`PolicyError::code`])
/// that the edges pass on (the HTTP error's `reason`, the start of the D-Bus error message,
/// sluicectl's `--json` error), and a message for people that names the argument and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not an http(s) URL with a host, too long, with spaces or credentials.
    #[error("invalid_url: {0}")]
    InvalidUrl(String),
    /// The URL's host is (or resolves to) an address downloads may not reach.
    #[error("forbidden_address: {0}")]
    ForbiddenAddress(String),
    /// A file name that is not one safe path element the monitor will pick up.
    #[error("invalid_file_name: {0}")]
    InvalidFileName(String),
    /// A bundle or source name that is not one safe path element.
    #[error("invalid_name: {0}")]
    InvalidName(String),
    /// An expected SHA-256 that is not 64 hexadecimal digits.
    #[error("invalid_sha256: {0}")]
    InvalidSha256(String),
    /// A number outside its allowed range.
    #[error("out_of_range: {0}")]
    OutOfRange(String),
    /// A rescan path that is relative, climbs with `..` or lies outside every watched folder.
    #[error("invalid_path: {0}")]
    InvalidPath(String),
    /// A wait that is not a duration.
    #[error("invalid_duration: {0}")]
    InvalidDuration(String),
    /// A `Last-Event-ID` that is not an id the stream sent.
    #[error("invalid_event_id: {0}")]
    InvalidEventId(String),
    /// A search query with no word to look for, or too long (see [`parse_search_query`]).
    #[error("invalid_query: {0}")]
    InvalidQuery(String),
}

impl PolicyError {
    /// The stable machine code, e.g. `invalid_url`; clients may match on it.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::InvalidUrl(_) => "invalid_url",
            PolicyError::ForbiddenAddress(_) => "forbidden_address",
            PolicyError::InvalidFileName(_) => "invalid_file_name",
            PolicyError::InvalidName(_) => "invalid_name",
            PolicyError::InvalidSha256(_) => "invalid_sha256",
            PolicyError::OutOfRange(_) => "out_of_range",
            PolicyError::InvalidPath(_) => "invalid_path",
            PolicyError::InvalidDuration(_) => "invalid_duration",
            PolicyError::InvalidEventId(_) => "invalid_event_id",
            PolicyError::InvalidQuery(_) => "invalid_query",
        }
    }

    /// The message for people, without the code.
    pub fn message(&self) -> &str {
        match self {
            PolicyError::InvalidUrl(message)
            | PolicyError::ForbiddenAddress(message)
            | PolicyError::InvalidFileName(message)
            | PolicyError::InvalidName(message)
            | PolicyError::InvalidSha256(message)
            | PolicyError::OutOfRange(message)
            | PolicyError::InvalidPath(message)
            | PolicyError::InvalidDuration(message)
            | PolicyError::InvalidEventId(message)
            | PolicyError::InvalidQuery(message) => message,
        }
    }
}

/// Every code [`PolicyError::code`] returns.
pub const CODES: [&str; 10] = [
    "invalid_url",
    "forbidden_address",
    "invalid_file_name",
    "invalid_name",
    "invalid_sha256",
    "out_of_range",
    "invalid_path",
    "invalid_duration",
    "invalid_event_id",
    "invalid_query",
];

/// The policy code a refusal message starts with (`"invalid_url: …"`), as a D-Bus client
/// receives it in an `org.freedesktop.DBus.Error.InvalidArgs` reply; `None` for other messages.
/// Text from outside (a server's stderr, a feed, a query) as a log line, a terminal or FTS5 may
/// show it: every control character, a terminal's escape sequences among them, becomes a
/// space; with `keep_newlines`, line breaks stay.
pub fn controls_as_spaces(text: &str, keep_newlines: bool) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() && !(keep_newlines && character == '\n') {
                ' '
            } else {
                character
            }
        })
        .collect()
}

pub fn code_in_message(message: &str) -> Option<&'static str> {
    let (prefix, _) = message.split_once(": ")?;
    CODES.into_iter().find(|code| *code == prefix)
}

/// Cuts `text` to at most `max_bytes` on a character boundary (for names and for quoting a
/// long value in a message).
fn truncate_to_bytes(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_spaces() {
        assert_eq!(controls_as_spaces("a\x1b[31mb\tc\nd", false), "a [31mb c d");
        assert_eq!(controls_as_spaces("a\x07\nb", true), "a \nb");
    }

    #[test]
    fn every_error_starts_with_its_code() {
        let error = PolicyError::InvalidSha256("sha256 \"abc\" is not 64 hex digits".into());
        assert_eq!(error.code(), "invalid_sha256");
        assert!(error.to_string().starts_with("invalid_sha256: sha256"));
        assert_eq!(error.message(), "sha256 \"abc\" is not 64 hex digits");
        assert_eq!(code_in_message(&error.to_string()), Some("invalid_sha256"));
        assert_eq!(code_in_message("job 0: not found"), None);
    }
}
