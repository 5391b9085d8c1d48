//! The scraper's file-system side: the staging folder with its `.part` files, and the
//! atomic, never-overwriting move of a finished download into the inbox.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use sha2::{Digest, Sha256};

/// How many `name-N.ext` variants are tried when the inbox already has the name.
const MAX_NAME_SUFFIX: u32 = 10_000;

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

/// The size of a partial file, 0 when there is none.
pub fn part_size(path: &Path) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(metadata.len()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// Hashes the first `length` bytes of `path`: the part of a resumed download received by an
/// earlier attempt, so the final digest covers the whole file.
pub fn hash_prefix(path: &Path, length: u64) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path)?.take(length);
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
pub fn place_in_inbox(
    part: &Path,
    inbox: &Path,
    bundle: Option<&str>,
    file_name: &str,
) -> io::Result<PathBuf> {
    let folder = match bundle {
        Some(bundle) => {
            let folder = inbox.join(bundle);
            if !folder.is_dir() {
                std::fs::create_dir_all(&folder)?;
                sync_directory(inbox)?;
            }
            folder
        }
        None => inbox.to_path_buf(),
    };
    for suffix in 0..=MAX_NAME_SUFFIX {
        let target = folder.join(name_with_suffix(file_name, suffix));
        match rename_no_replace(part, &target) {
            Ok(()) => {
                sync_directory(&folder)?;
                return Ok(target);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} and {MAX_NAME_SUFFIX} numbered variants already exist in {}",
            file_name,
            folder.display()
        ),
    ))
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

/// `fsync` on a folder, which makes the names created or removed in it durable.
pub fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// `renameat2(RENAME_NOREPLACE)`: atomic, and fails with `AlreadyExists` instead of replacing.
/// Where the kernel or file system lacks the flag, a check-then-rename stands in: only the
/// scraper creates names in the inbox, so the gap is between it and a person copying files.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(errno) => Err(io::Error::from(errno)),
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
        let prefix = hash_prefix(&path, 5).unwrap();
        assert_eq!(prefix.finalize(), Sha256::digest(b"hello"));
        assert!(hash_prefix(&path, 50).is_err());
        assert_eq!(part_size(&path).unwrap(), 11);
        assert_eq!(part_size(&directory.path().join("none")).unwrap(), 0);
    }
}
