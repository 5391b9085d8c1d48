//! File paths on the bus as byte strings: a Linux file name is any bytes but `/` and NUL, so
//! a D-Bus `s` (UTF-8 only) cannot carry every one. Every argument, return value, property and
//! signal of sluice's interfaces that names a file is `ay` holding the path's bytes followed
//! by one NUL, as GLib's `g_variant_new_bytestring`, UDisks and Flatpak send paths, so a C
//! client can use the bytes as a string in place and `gdbus` shows them as `b'/srv/…'`.
//! Received paths may come with or without that NUL (a client built on another binding may
//! not add one); a NUL anywhere else is refused.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::BusError;

/// `path` as the bus carries it: its bytes and a trailing NUL (the empty path is one NUL).
pub fn path_to_bytestring(path: &Path) -> Vec<u8> {
    let bytes = path.as_os_str().as_bytes();
    let mut bytestring = Vec::with_capacity(bytes.len() + 1);
    bytestring.extend_from_slice(bytes);
    bytestring.push(0);
    bytestring
}

/// Each of `paths` as [`path_to_bytestring`] makes it (an `aay` property).
pub fn paths_to_bytestrings(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|path| path_to_bytestring(path)).collect()
}

/// The path a received byte string names, exactly as its bytes are (one trailing NUL
/// dropped); `InvalidArgument` naming `argument` when a NUL is anywhere else, since no file
/// name holds one.
pub fn bytestring_to_path(argument: &str, bytestring: &[u8]) -> Result<PathBuf, BusError> {
    let bytes = bytestring.strip_suffix(&[0]).unwrap_or(bytestring);
    if bytes.contains(&0) {
        return Err(BusError::InvalidArgument(format!(
            "{argument} holds a NUL byte before its end; a path is its bytes and at most one \
             trailing NUL"
        )));
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec())))
}

/// The path a byte string from a sluice daemon names, for clients: like
/// [`bytestring_to_path`], but a malformed one (which a daemon never sends) is cut at its first
/// NUL instead of refused, since a client has no one to refuse it to.
pub fn bytestring_to_path_lossy(bytestring: &[u8]) -> PathBuf {
    let end = bytestring
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(bytestring.len());
    PathBuf::from(OsStr::from_bytes(&bytestring[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_byte_exact_with_one_trailing_nul() {
        let name = OsStr::from_bytes(b"/srv/inbox/caf\xe9-\xff.pdf");
        let bytestring = path_to_bytestring(Path::new(name));
        assert_eq!(bytestring, b"/srv/inbox/caf\xe9-\xff.pdf\0");
        assert_eq!(
            bytestring_to_path("path", &bytestring).unwrap().as_os_str(),
            name
        );
        assert_eq!(bytestring_to_path_lossy(&bytestring).as_os_str(), name);
        // Without the NUL, as some bindings send `ay`, it names the same path.
        let bare = &bytestring[..bytestring.len() - 1];
        assert_eq!(bytestring_to_path("path", bare).unwrap().as_os_str(), name);
        assert_eq!(path_to_bytestring(Path::new("")), b"\0");
        assert_eq!(bytestring_to_path("path", b"").unwrap(), PathBuf::new());
        assert_eq!(bytestring_to_path("path", b"\0").unwrap(), PathBuf::new());
    }

    #[test]
    fn a_nul_inside_a_path_is_an_invalid_argument() {
        for bad in [&b"/srv/a\0b"[..], b"/srv/a\0\0", b"\0\0"] {
            assert!(
                matches!(
                    bytestring_to_path("path", bad),
                    Err(BusError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            bytestring_to_path_lossy(b"/srv/a\0b"),
            PathBuf::from("/srv/a")
        );
    }
}
