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
    download_files(staging, ".part")
}

/// The download ids of the files named `ID{suffix}` in `staging`, with their paths.
fn download_files(staging: &Path, suffix: &str) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(staging)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_suffix(suffix))
            .and_then(|id| id.parse::<i64>().ok())
        else {
            continue;
        };
        files.push((id, entry.path()));
    }
    Ok(files)
}

/// Removes the `ID.prefill` files in `staging`: a prefill writes one and renames it to
/// `ID.part` at once, so one found when the scraper starts was left by a crash mid-write,
/// and would keep that download from ever being prefilled (its name is taken exclusively).
/// Called before anything can prefill. Says what it removed; an error is logged, not fatal.
pub fn remove_stale_prefills(staging: &Path) {
    let prefills = match download_files(staging, ".prefill") {
        Ok(prefills) => prefills,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(
                error = %error,
                "cannot look for unfinished prefills in {}: {error}",
                staging.display()
            );
            return;
        }
    };
    for (_, path) in prefills {
        match remove_part(&path) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                "removed {}, left by a prefill that did not finish",
                path.display()
            ),
            Err(error) => tracing::warn!(
                error = %error,
                "cannot remove the unfinished prefill {}: {error}",
                path.display()
            ),
        }
    }
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

/// Makes `bytes` the partial file of download `download_id` (a page a source check has
/// already fetched, so the download needs no request): written to `ID.prefill` beneath
/// `staging`, then renamed to `ID.part` without replacing anything. `Ok(false)` when the
/// download has a partial file already (its task started first and fetches it itself).
pub fn prefill_part(staging: &Path, download_id: i64, bytes: &[u8]) -> Result<bool, FileError> {
    use std::io::Write;
    let root = beneath::open_root(staging).map_err(|error| {
        FileError::Io(format!(
            "cannot open the staging folder {}: {error}",
            staging.display()
        ))
    })?;
    let temporary = format!("{download_id}.prefill");
    let temporary_path = staging.join(&temporary);
    let descriptor = beneath::open_beneath(
        &root,
        Path::new(&temporary),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|errno| refusal("prefilled file", &temporary_path, errno))?;
    let written = File::from(descriptor).write_all(bytes).map_err(|error| {
        FileError::Io(format!(
            "cannot write {}: {error}",
            temporary_path.display()
        ))
    });
    let renamed = written.and_then(|()| {
        match beneath::rename_no_replace(
            &root,
            temporary.as_ref(),
            &root,
            format!("{download_id}.part").as_ref(),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(errno) => Err(refusal(
                "partial file",
                &part_path(staging, download_id),
                errno,
            )),
        }
    });
    if !matches!(renamed, Ok(true)) {
        let _ = remove_part(&temporary_path);
    }
    renamed
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

/// The git blob SHA-1 of the first `length` bytes of download `download_id`'s partial file
/// (its whole content once received): `sha1("blob LENGTH\0" + content)`, in hex, as git and
/// the Hub name a file. Read beneath `staging` like every partial file.
pub fn git_blob_sha1(staging: &Path, download_id: i64, length: u64) -> Result<String, FileError> {
    use sha1::Digest as _;
    let path = part_path(staging, download_id);
    let file = open_part(staging, download_id, false)?
        .ok_or_else(|| FileError::Io(format!("{} vanished", path.display())))?;
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {length}\0").as_bytes());
    let mut content = file.take(length);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut hashed = 0u64;
    loop {
        let read = content
            .read(&mut buffer)
            .map_err(|error| FileError::Io(format!("cannot read {}: {error}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        hashed += read as u64;
    }
    if hashed != length {
        return Err(FileError::Io(format!(
            "{} has {hashed} bytes, expected {length}",
            path.display()
        )));
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// The folder in staging where bundle `bundle_id`'s finished files wait for the others.
pub fn bundle_folder_name(bundle_id: i64) -> String {
    format!("bundle-{bundle_id}")
}

/// Moves a finished, synced bundle file from `part` to `relative_path` inside its bundle's
/// folder in staging, creating the folders on the way beneath staging without following
/// links. A file already there (an attempt that was moved but not recorded before a kill) is
/// replaced: the folder is the scraper's own. Returns the new path.
pub fn place_in_bundle_folder(
    part: &Path,
    staging: &Path,
    bundle_id: i64,
    relative_path: &str,
) -> Result<PathBuf, FileError> {
    let staging_directory = beneath::open_root(staging).map_err(|error| {
        FileError::Io(format!(
            "cannot open the staging folder {}: {error}",
            staging.display()
        ))
    })?;
    let Some(part_name) = part.file_name() else {
        return Err(FileError::Io(format!("{} names no file", part.display())));
    };
    let mut folder_path = staging.join(bundle_folder_name(bundle_id));
    let (mut folder, _) = beneath::open_or_create_directory(
        &staging_directory,
        std::ffi::OsStr::new(&bundle_folder_name(bundle_id)),
        Mode::from_bits_truncate(0o755),
    )
    .map_err(|errno| refusal("bundle folder", &folder_path, errno))?;
    let mut elements: Vec<&str> = relative_path.split('/').collect();
    let Some(file_name) = elements.pop() else {
        return Err(FileError::Refused(format!(
            "{relative_path:?} names no file"
        )));
    };
    for element in elements {
        folder_path = folder_path.join(element);
        let (inner, created) = beneath::open_or_create_directory(
            &folder,
            std::ffi::OsStr::new(element),
            Mode::from_bits_truncate(0o755),
        )
        .map_err(|errno| refusal("bundle folder", &folder_path, errno))?;
        if created {
            beneath::sync_directory(&folder).map_err(|error| {
                FileError::Io(format!("cannot sync {}: {error}", folder_path.display()))
            })?;
        }
        folder = inner;
    }
    let target = folder_path.join(file_name);
    nix::fcntl::renameat(&staging_directory, part_name, &folder, file_name)
        .map_err(|errno| refusal("bundle file", &target, errno))?;
    beneath::sync_directory(&folder).map_err(|error| {
        FileError::Io(format!("cannot sync {}: {error}", folder_path.display()))
    })?;
    Ok(target)
}

/// Renames the complete folder of bundle `bundle_id` from staging into the inbox as `name`
/// (or `name-N` when taken), never replacing anything, and syncs the inbox. `Ok(None)` when
/// the folder is not in staging (already moved). Returns the folder in the inbox.
pub fn place_bundle_in_inbox(
    staging: &Path,
    inbox: &Path,
    bundle_id: i64,
    name: &str,
    mut record_target: impl FnMut(&Path) -> Result<(), String>,
) -> Result<Option<PathBuf>, FileError> {
    let open = |path: &Path| {
        beneath::open_root(path).map_err(|error| {
            FileError::Io(format!(
                "cannot open the folder {}: {error}",
                path.display()
            ))
        })
    };
    let staging_directory = open(staging)?;
    let inbox_directory = open(inbox)?;
    let from = bundle_folder_name(bundle_id);
    match nix::sys::stat::fstatat(
        &staging_directory,
        from.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(refusal("bundle folder", &staging.join(&from), errno)),
    }
    for suffix in 0..=10_000 {
        let candidate = sluice_core::inbox::name_with_suffix(name, suffix);
        let target = inbox.join(&candidate);
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        // The target is recorded before the rename, so a scraper killed between the two
        // finds the folder there and does not place it twice.
        record_target(&target).map_err(FileError::Io)?;
        match beneath::rename_no_replace(
            &staging_directory,
            std::ffi::OsStr::new(&from),
            &inbox_directory,
            std::ffi::OsStr::new(&candidate),
        ) {
            Ok(()) => {
                beneath::sync_directory(&inbox_directory).map_err(|error| {
                    FileError::Io(format!("cannot sync {}: {error}", inbox.display()))
                })?;
                return Ok(Some(target));
            }
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(refusal("bundle folder", &target, errno)),
        }
    }
    Err(FileError::Io(format!(
        "{name} and 10000 numbered variants already exist in {}",
        inbox.display()
    )))
}

/// Removes a folder and everything in it; one that is already gone is fine. The folder
/// itself must not be a symbolic link (checked without following it), and `remove_dir_all`
/// does not follow links inside it.
pub fn remove_folder(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => Err(io::Error::other(format!(
            "{} is not a folder; left alone",
            path.display()
        ))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
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
