//! The inbox: where a finished download or upload is moved, atomically and never replacing a
//! file, for the monitor to pick up. The scraper and sluice-web both place files here, the
//! same way.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::Mode;

use crate::beneath;

/// How many `name-N.ext` variants are tried when the inbox already has the name.
const MAX_NAME_SUFFIX: u32 = 10_000;

/// Why a staging or inbox file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The target is not one sluice may write: a symbolic link, a hard-linked file, not a
    /// regular file or folder. Trying again cannot help, so the download or upload fails.
    #[error("{0}")]
    Refused(String),
    /// An ordinary IO error, worth another attempt.
    #[error("{0}")]
    Io(String),
    /// The staging or inbox file system is full: a download waits for space, an upload is
    /// refused until there is some.
    #[error("{0}")]
    NoSpace(String),
}

/// Creates a new, empty file `<prefix><random>.part` in `staging` (created if missing), opened
/// beneath it for writing without following links and never reusing a name. Returns its path
/// and the open file.
pub fn create_staged_file(
    staging: &Path,
    prefix: &str,
) -> Result<(PathBuf, std::fs::File), InboxError> {
    std::fs::create_dir_all(staging).map_err(|error| {
        InboxError::Io(format!(
            "cannot create the staging folder {}: {error}",
            staging.display()
        ))
    })?;
    let directory = beneath::open_root(staging).map_err(|error| {
        InboxError::Io(format!(
            "cannot open the staging folder {}: {error}",
            staging.display()
        ))
    })?;
    let name = format!("{prefix}{:032x}.part", rand::random::<u128>());
    let path = staging.join(&name);
    let opened = beneath::open_beneath(
        &directory,
        Path::new(&name),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_EXCL,
        Mode::from_bits_truncate(0o640),
    )
    .map_err(|errno| refusal("staging file", &path, errno))?;
    Ok((path, std::fs::File::from(opened)))
}

/// Moves the finished, synced `part` into `inbox` (or `inbox/<bundle>`) under `file_name`,
/// adding `-1`, `-2` … before the extension when the name is taken, and syncs the folder so
/// the new name survives a crash. Never replaces an existing file. Returns the final path.
///
/// Everything happens on folder handles: the bundle folder is created with `mkdirat` and
/// opened beneath the inbox without following links, and the move is a `renameat2` between
/// the staging and bundle handles. A bundle that is a symbolic link (which could point
/// anywhere) is refused, never written through.
pub fn place_in_inbox(
    part: &Path,
    inbox: &Path,
    bundle: Option<&str>,
    file_name: &str,
) -> Result<PathBuf, InboxError> {
    let io_error = |what: &Path, error: io::Error| {
        InboxError::Io(format!(
            "cannot open the folder {}: {error}",
            what.display()
        ))
    };
    let (Some(staging), Some(part_name)) = (part.parent(), part.file_name()) else {
        return Err(InboxError::Io(format!("{} names no file", part.display())));
    };
    let staging_directory =
        beneath::open_root(staging).map_err(|error| io_error(staging, error))?;
    let inbox_directory = beneath::open_root(inbox).map_err(|error| io_error(inbox, error))?;
    let (folder_path, folder) = match bundle {
        Some(bundle) => {
            let folder_path = inbox.join(bundle);
            let (folder, created) = beneath::open_or_create_directory(
                &inbox_directory,
                OsStr::new(bundle),
                Mode::from_bits_truncate(0o755),
            )
            .map_err(|errno| refusal("bundle folder", &folder_path, errno))?;
            if created {
                beneath::sync_directory(&inbox_directory).map_err(|error| {
                    InboxError::Io(format!("cannot sync {}: {error}", inbox.display()))
                })?;
            }
            (folder_path, folder)
        }
        None => (inbox.to_path_buf(), inbox_directory),
    };
    for suffix in 0..=MAX_NAME_SUFFIX {
        let name = name_with_suffix(file_name, suffix);
        let target = folder_path.join(&name);
        match beneath::rename_no_replace(&staging_directory, part_name, &folder, OsStr::new(&name))
        {
            Ok(()) => {
                beneath::sync_directory(&folder).map_err(|error| {
                    InboxError::Io(format!("cannot sync {}: {error}", folder_path.display()))
                })?;
                return Ok(target);
            }
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(refusal("target", &target, errno)),
        }
    }
    Err(InboxError::Io(format!(
        "{} and {MAX_NAME_SUFFIX} numbered variants already exist in {}",
        file_name,
        folder_path.display()
    )))
}

/// `name.tar.gz` → `name-3.tar.gz` (the suffix goes before the first dot, so every extension
/// stays); suffix 0 is the name itself. Kept within 255 bytes.
pub fn name_with_suffix(file_name: &str, suffix: u32) -> String {
    if suffix == 0 {
        return file_name.to_owned();
    }
    let (stem, extension) = match file_name.find('.') {
        Some(dot) if dot > 0 => file_name.split_at(dot),
        _ => (file_name, ""),
    };
    let tail = format!("-{suffix}{extension}");
    let mut stem_length = stem.len().min(255usize.saturating_sub(tail.len()));
    while !stem.is_char_boundary(stem_length) {
        stem_length -= 1;
    }
    format!("{}{tail}", &stem[..stem_length])
}

/// Words an `errno` from opening or creating `path` beneath its root: a link or an escape
/// is a refusal, anything else an ordinary IO error.
pub fn refusal(what: &str, path: &Path, errno: Errno) -> InboxError {
    let path = path.display();
    match errno {
        Errno::ELOOP => InboxError::Refused(format!(
            "{what} {path} is a symbolic link; refusing to write through it"
        )),
        Errno::EXDEV => InboxError::Refused(format!(
            "{what} {path} leads outside its folder; refusing to write there"
        )),
        Errno::ENOTDIR => InboxError::Refused(format!("{what} {path} is not a folder")),
        Errno::ENOSPC | Errno::EDQUOT => {
            InboxError::NoSpace(format!("cannot write {what} {path}: {}", errno.desc()))
        }
        errno => InboxError::Io(format!("cannot write {what} {path}: {errno}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_go_before_the_extensions() {
        assert_eq!(name_with_suffix("a.tar.gz", 0), "a.tar.gz");
        assert_eq!(name_with_suffix("a.tar.gz", 2), "a-2.tar.gz");
        assert_eq!(name_with_suffix("README", 1), "README-1");
        let long = name_with_suffix(&format!("{}.bin", "x".repeat(251)), 12);
        assert!(long.len() <= 255 && long.ends_with("-12.bin"), "{long}");
    }

    #[test]
    fn a_taken_name_gets_a_suffix_and_nothing_is_replaced() {
        let directory = tempfile::tempdir().unwrap();
        let staging = directory.path().join("staging");
        let inbox = directory.path().join("inbox");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::write(inbox.join("f.bin"), b"old").unwrap();
        let part = staging.join("7.part");
        std::fs::write(&part, b"new").unwrap();
        let placed = place_in_inbox(&part, &inbox, None, "f.bin").unwrap();
        assert_eq!(placed, inbox.join("f-1.bin"));
        assert_eq!(std::fs::read(inbox.join("f.bin")).unwrap(), b"old");
        assert_eq!(std::fs::read(&placed).unwrap(), b"new");
        assert!(!part.exists());

        std::fs::write(&part, b"bundled").unwrap();
        let placed = place_in_inbox(&part, &inbox, Some("model"), "f.bin").unwrap();
        assert_eq!(placed, inbox.join("model/f.bin"));
        assert!(!part.exists());
    }
}
