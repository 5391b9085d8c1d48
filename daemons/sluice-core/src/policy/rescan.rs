//! The rescan path rule: which folder a caller may ask the monitor to walk again.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{MAX_PATH_BYTES, PolicyError};

/// Resolves the path argument of `Rescan`: empty means every watched folder (`None`); anything
/// else must be absolute, free of `..`, and inside one of `watched_paths`.
///
/// The check is lexical on purpose: the bus object must not touch the file system, and the
/// monitor never follows symlinks out of a watched tree when it walks the path.
pub fn resolve_rescan_path(
    path: &Path,
    watched_paths: &[PathBuf],
) -> Result<Option<PathBuf>, PolicyError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let refuse = |reason: &str| Err(PolicyError::InvalidPath(format!("path {path:?} {reason}")));
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        return Err(PolicyError::InvalidPath(format!(
            "path is {} bytes long, the limit is {MAX_PATH_BYTES}",
            bytes.len()
        )));
    }
    // A name need not be UTF-8 (the bus carries it as bytes); where it is, C1 controls count
    // too, and where it is not, the ASCII ones, which every encoding shares.
    let has_control = match path.to_str() {
        Some(text) => text.chars().any(char::is_control),
        None => bytes.iter().any(u8::is_ascii_control),
    };
    if has_control {
        return refuse("must not contain control characters");
    }
    let requested = path;
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
        assert_eq!(resolve_rescan_path(Path::new(""), &watched).unwrap(), None);
        assert_eq!(
            resolve_rescan_path(Path::new("/srv/inbox/sub//dir/."), &watched).unwrap(),
            Some(PathBuf::from("/srv/inbox/sub/dir"))
        );
        assert_eq!(
            resolve_rescan_path(Path::new("/srv/library"), &watched).unwrap(),
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
                resolve_rescan_path(Path::new(bad), &watched)
                    .unwrap_err()
                    .code(),
                "invalid_path",
                "{bad}"
            );
        }
        // A name that is not UTF-8 is a name like any other; an ASCII control in one is not.
        use std::ffi::OsStr;
        let latin1 = Path::new(OsStr::from_bytes(b"/srv/inbox/caf\xe9"));
        assert_eq!(
            resolve_rescan_path(latin1, &watched).unwrap().as_deref(),
            Some(latin1)
        );
        let control = Path::new(OsStr::from_bytes(b"/srv/inbox/\xff\x1b"));
        assert!(resolve_rescan_path(control, &watched).is_err());
        let huge = format!("/srv/inbox/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(resolve_rescan_path(Path::new(&huge), &watched).is_err());
    }
}
