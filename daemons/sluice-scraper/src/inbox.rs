//! The scraper's file-system side: the staging folder with its `.part` files, and the
//! atomic, never-overwriting move of a finished download into the inbox.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use sluice_core::beneath;

/// How many `name-N.ext` variants are tried when the inbox already has the name.
const MAX_NAME_SUFFIX: u32 = 10_000;

/// Why a staging or inbox file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The target is not one the scraper may write: a symbolic link, a hard-linked file, not
    /// a regular file or folder. Trying again cannot help, so the download fails for good.
    #[error("{0}")]
    Refused(String),
    /// An ordinary IO error, worth another attempt.
    #[error("{0}")]
    Io(String),
    /// The staging or inbox file system is full: the download waits for space.
    #[error("{0}")]
    NoSpace(String),
}

/// Creates the staging folder and the inbox if missing and checks they are on the same file
/// system, since the final move must be a `rename`. The error is a sentence for the log and
/// `STATUS=`.
pub fn prepare_folders(staging: &Path, inbox: &Path) -> Result<(), String> {
    for (what, path) in [("staging", staging), ("inbox", inbox)] {
        std::fs::create_dir_all(path).map_err(|error| {
            format!(
                "cannot create the {what} folder {}: {error}",
                path.display()
            )
        })?;
    }
    let device = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.dev())
            .map_err(|error| format!("cannot inspect {}: {error}", path.display()))
    };
    if device(staging)? != device(inbox)? {
        return Err(format!(
            "scraper.staging ({}) and scraper.inbox ({}) are on different file systems; a \
             finished download could not be renamed into the inbox atomically. Put the \
             staging folder on the inbox's file system.",
            staging.display(),
            inbox.display()
        ));
    }
    Ok(())
}

/// Where download `id` is written while it runs.
pub fn part_path(staging: &Path, download_id: i64) -> PathBuf {
    staging.join(format!("{download_id}.part"))
}

/// The download ids of the `.part` files in `staging`, with their paths.
pub fn part_files(staging: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(staging)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".part"))
            .and_then(|id| id.parse::<i64>().ok())
        else {
            continue;
        };
        parts.push((id, entry.path()));
    }
    Ok(parts)
}

/// Removes a partial file; one that is already gone is fine.
pub fn remove_part(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The size of a partial file, 0 when there is none. Only for progress reports: a symlink
/// is not followed (its own size is reported), and the transfer measures the file it opened.
pub fn part_size(path: &Path) -> io::Result<u64> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => Ok(metadata.len()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// Opens the partial file of download `download_id` beneath `staging` for reading and
/// writing, creating it when `create` is set (`Ok(None)`: it does not exist). A symlink, a
/// file with other hard links or anything but a regular file is refused, checked on the
/// opened descriptor, so a planted link cannot make the scraper write elsewhere.
pub fn open_part(
    staging: &Path,
    download_id: i64,
    create: bool,
) -> Result<Option<File>, FileError> {
    let path = part_path(staging, download_id);
    let root = beneath::open_root(staging).map_err(|error| {
        FileError::Io(format!(
            "cannot open the staging folder {}: {error}",
            staging.display()
        ))
    })?;
    let flags = if create {
        OFlag::O_RDWR | OFlag::O_CREAT
    } else {
        OFlag::O_RDWR
    };
    let name = format!("{download_id}.part");
    let file = match beneath::open_beneath(
        &root,
        Path::new(&name),
        flags,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(descriptor) => File::from(descriptor),
        Err(Errno::ENOENT) if !create => return Ok(None),
        Err(errno) => return Err(refusal("partial file", &path, errno)),
    };
    let metadata = file
        .metadata()
        .map_err(|error| FileError::Io(format!("cannot inspect {}: {error}", path.display())))?;
    if !metadata.is_file() {
        return Err(FileError::Refused(format!(
            "partial file {} is not a regular file; refusing to write to it",
            path.display()
        )));
    }
    if metadata.nlink() > 1 {
        return Err(FileError::Refused(format!(
            "partial file {} has {} hard links; refusing to write to a file linked from elsewhere",
            path.display(),
            metadata.nlink()
        )));
    }
    Ok(Some(file))
}

/// Hashes the first `length` bytes of `file` (read from its start): the part of a resumed
/// download received by an earlier attempt, so the final digest covers the whole file.
pub fn hash_prefix(file: &File, path: &Path, length: u64) -> io::Result<Sha256> {
    use std::io::{Seek, SeekFrom};
    let mut hasher = Sha256::new();
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(0))?;
    let mut file = file.take(length);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut hashed = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        hashed += read as u64;
    }
    if hashed != length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} has {hashed} bytes, expected {length}", path.display()),
        ));
    }
    Ok(hasher)
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
) -> Result<PathBuf, FileError> {
    let io_error = |what: &Path, error: io::Error| {
        FileError::Io(format!(
            "cannot open the folder {}: {error}",
            what.display()
        ))
    };
    let (Some(staging), Some(part_name)) = (part.parent(), part.file_name()) else {
        return Err(FileError::Io(format!("{} names no file", part.display())));
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
                    FileError::Io(format!("cannot sync {}: {error}", inbox.display()))
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
                    FileError::Io(format!("cannot sync {}: {error}", folder_path.display()))
                })?;
                return Ok(target);
            }
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(refusal("target", &target, errno)),
        }
    }
    Err(FileError::Io(format!(
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
fn refusal(what: &str, path: &Path, errno: Errno) -> FileError {
    let path = path.display();
    match errno {
        Errno::ELOOP => FileError::Refused(format!(
            "{what} {path} is a symbolic link; refusing to write through it"
        )),
        Errno::EXDEV => FileError::Refused(format!(
            "{what} {path} leads outside its folder; refusing to write there"
        )),
        Errno::ENOTDIR => FileError::Refused(format!("{what} {path} is not a folder")),
        Errno::ENOSPC | Errno::EDQUOT => {
            FileError::NoSpace(format!("cannot write {what} {path}: {}", errno.desc()))
        }
        errno => FileError::Io(format!("cannot write {what} {path}: {errno}")),
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
        prepare_folders(&staging, &inbox).unwrap();
        std::fs::write(inbox.join("f.bin"), b"old").unwrap();
        let part = part_path(&staging, 7);
        std::fs::write(&part, b"new").unwrap();
        let placed = place_in_inbox(&part, &inbox, None, "f.bin").unwrap();
        assert_eq!(placed, inbox.join("f-1.bin"));
        assert_eq!(std::fs::read(inbox.join("f.bin")).unwrap(), b"old");
        assert_eq!(std::fs::read(&placed).unwrap(), b"new");
        assert!(!part.exists());

        std::fs::write(&part, b"bundled").unwrap();
        let placed = place_in_inbox(&part, &inbox, Some("model"), "f.bin").unwrap();
        assert_eq!(placed, inbox.join("model/f.bin"));
        assert_eq!(part_files(&staging).unwrap(), Vec::new());
    }

    #[test]
    fn a_resumed_prefix_hashes_like_the_start_of_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("1.part");
        std::fs::write(&path, b"hello world").unwrap();
        let file = open_part(directory.path(), 1, false).unwrap().unwrap();
        let prefix = hash_prefix(&file, &path, 5).unwrap();
        assert_eq!(prefix.finalize(), Sha256::digest(b"hello"));
        assert!(hash_prefix(&file, &path, 50).is_err());
        assert_eq!(part_size(&path).unwrap(), 11);
        assert_eq!(part_size(&directory.path().join("none")).unwrap(), 0);
    }
}
