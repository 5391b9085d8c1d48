//! Argument checks shared by the D-Bus objects, so every method rejects bad input the same way
//! before anything reaches a daemon's main loop.

use std::path::{Component, Path, PathBuf};

use super::BusError;

/// Longest path a caller may pass (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest URL a caller may pass; longer ones are refused by most servers anyway.
pub const MAX_URL_BYTES: usize = 4096;
/// Longest short name (source, bundle, file name, job kind) a caller may pass.
pub const MAX_NAME_BYTES: usize = 255;

/// Refuses an empty value or one longer than `max_bytes`, naming the argument in the message.
pub fn require_text(argument: &str, value: &str, max_bytes: usize) -> Result<(), BusError> {
    if value.is_empty() {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not be empty"
        )));
    }
    if value.len() > max_bytes {
        return Err(BusError::InvalidArgument(format!(
            "{argument} is {} bytes long, the limit is {max_bytes}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks a URL submitted for download: http or https with a host, no spaces.
///
/// This is only the shape check; the scraper resolves the host and applies the SSRF guard.
pub fn require_download_url(url: &str) -> Result<(), BusError> {
    require_text("url", url, MAX_URL_BYTES)?;
    let lowercase = url.to_ascii_lowercase();
    let rest = lowercase
        .strip_prefix("https://")
        .or_else(|| lowercase.strip_prefix("http://"))
        .ok_or_else(|| {
            BusError::InvalidArgument(format!("url {url:?} must start with http:// or https://"))
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(BusError::InvalidArgument(format!(
            "url {url:?} has no host"
        )));
    }
    if url.contains(char::is_whitespace) {
        return Err(BusError::InvalidArgument(format!(
            "url {url:?} must not contain spaces; percent-encode them"
        )));
    }
    Ok(())
}

/// Checks a short name such as a source or bundle name: non-empty, bounded, one path element.
pub fn require_name(argument: &str, value: &str) -> Result<(), BusError> {
    require_text(argument, value, MAX_NAME_BYTES)?;
    if value.contains('/') || value == "." || value == ".." {
        return Err(BusError::InvalidArgument(format!(
            "{argument} {value:?} must be a single name, not a path"
        )));
    }
    Ok(())
}

/// Resolves the path argument of `Rescan`: empty means every watched folder (`None`); anything
/// else must be absolute, free of `..`, and inside one of `watched_paths`.
///
/// The check is lexical on purpose: the bus object must not touch the file system, and the
/// monitor never follows symlinks out of a watched tree when it walks the path.
pub fn resolve_rescan_path(
    path: &str,
    watched_paths: &[PathBuf],
) -> Result<Option<PathBuf>, BusError> {
    if path.is_empty() {
        return Ok(None);
    }
    require_text("path", path, MAX_PATH_BYTES)?;
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err(BusError::InvalidArgument(format!(
            "path {path:?} must be absolute"
        )));
    }
    if requested
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err(BusError::InvalidArgument(format!(
            "path {path:?} must not contain '..'"
        )));
    }
    // `components()` drops `.` and doubled slashes, so the comparison sees the plain form.
    let normalized: PathBuf = requested.components().collect();
    if watched_paths
        .iter()
        .any(|watched| normalized.starts_with(watched))
    {
        Ok(Some(normalized))
    } else {
        Err(BusError::InvalidArgument(format!(
            "path {path:?} is not inside a watched folder"
        )))
    }
}

/// Refuses the id 0, which no job or download ever has (SQLite rowids start at 1).
pub fn require_id(argument: &str, id: u64) -> Result<(), BusError> {
    if id == 0 {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not be 0"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_invalid_argument(result: Result<impl std::fmt::Debug, BusError>) -> bool {
        matches!(result, Err(BusError::InvalidArgument(_)))
    }

    #[test]
    fn text_must_be_non_empty_bounded_and_printable() {
        assert!(require_text("url", "x", 4).is_ok());
        assert!(is_invalid_argument(require_text("url", "", 4)));
        assert!(is_invalid_argument(require_text("url", "12345", 4)));
        assert!(is_invalid_argument(require_text("url", "a\nb", 4)));
    }

    #[test]
    fn download_urls_need_http_and_a_host() {
        assert!(require_download_url("https://example.org/a.bin").is_ok());
        assert!(require_download_url("HTTP://example.org").is_ok());
        assert!(require_download_url("http://user@example.org:8080/x?y#z").is_ok());
        for bad in [
            "",
            "ftp://example.org/a",
            "file:///etc/passwd",
            "https://",
            "https:///path",
            "http://:80/",
            "https://example.org/a b",
        ] {
            assert!(is_invalid_argument(require_download_url(bad)), "{bad}");
        }
        let huge = format!("https://example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert!(is_invalid_argument(require_download_url(&huge)));
    }

    #[test]
    fn names_are_single_path_elements() {
        assert!(require_name("source", "hourly-news").is_ok());
        assert!(is_invalid_argument(require_name("source", "a/b")));
        assert!(is_invalid_argument(require_name("source", "..")));
        assert!(is_invalid_argument(require_name("source", "")));
    }

    #[test]
    fn rescan_paths_must_stay_inside_a_watched_folder() {
        let watched = vec![PathBuf::from("/srv/inbox"), PathBuf::from("/srv/library")];
        assert_eq!(resolve_rescan_path("", &watched).unwrap(), None);
        assert_eq!(
            resolve_rescan_path("/srv/inbox/sub//dir/.", &watched).unwrap(),
            Some(PathBuf::from("/srv/inbox/sub/dir"))
        );
        assert_eq!(
            resolve_rescan_path("/srv/library", &watched).unwrap(),
            Some(PathBuf::from("/srv/library"))
        );
        for bad in [
            "/srv",
            "/srv/inboxes",
            "/srv/inbox/../secret",
            "relative/path",
            "/etc",
        ] {
            assert!(
                is_invalid_argument(resolve_rescan_path(bad, &watched)),
                "{bad}"
            );
        }
        let huge = format!("/srv/inbox/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(is_invalid_argument(resolve_rescan_path(&huge, &watched)));
    }

    #[test]
    fn id_zero_is_refused() {
        assert!(require_id("job_id", 1).is_ok());
        assert!(is_invalid_argument(require_id("job_id", 0)));
    }
}
