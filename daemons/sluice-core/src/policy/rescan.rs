//! The rescan path rule: which folder a caller may ask the monitor to walk again.

use std::path::{Component, Path, PathBuf};

use super::{MAX_PATH_BYTES, PolicyError};

/// Resolves the path argument of `Rescan`: empty means every watched folder (`None`); anything
/// else must be absolute, free of `..`, and inside one of `watched_paths`.
///
/// The check is lexical on purpose: the bus object must not touch the file system, and the
/// monitor never follows symlinks out of a watched tree when it walks the path.
pub fn resolve_rescan_path(
    path: &str,
    watched_paths: &[PathBuf],
) -> Result<Option<PathBuf>, PolicyError> {
    if path.is_empty() {
        return Ok(None);
    }
    let refuse = |reason: &str| Err(PolicyError::InvalidPath(format!("path {path:?} {reason}")));
    if path.len() > MAX_PATH_BYTES {
        return Err(PolicyError::InvalidPath(format!(
            "path is {} bytes long, the limit is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if path.chars().any(char::is_control) {
        return refuse("must not contain control characters");
    }
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return refuse("must be absolute");
    }
    if requested
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return refuse("must not contain '..'");
    }
    // `components()` drops `.` and doubled slashes, so the comparison sees the plain form.
    let normalized: PathBuf = requested.components().collect();
    if watched_paths
        .iter()
        .any(|watched| normalized.starts_with(watched))
    {
        Ok(Some(normalized))
    } else {
        refuse("is not inside a watched folder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "/srv/inbox/a\nb",
        ] {
            assert_eq!(
                resolve_rescan_path(bad, &watched).unwrap_err().code(),
                "invalid_path",
                "{bad}"
            );
        }
        let huge = format!("/srv/inbox/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(resolve_rescan_path(&huge, &watched).is_err());
    }
}
