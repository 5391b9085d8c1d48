//! The scraper's file-system side: the staging folder with its `.part` files, and the
//! atomic, never-overwriting move of a finished download into the inbox.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use sluice_core::beneath;
pub use sluice_core::inbox::{InboxError as FileError, place_in_inbox, refusal};

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

#[cfg(test)]
mod tests {
    use super::*;

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
