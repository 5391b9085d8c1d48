//! The content-addressed library: a consumed file lives at
//! `<library>/<b3[0..2]>/<b3[2..4]>/<b3>`, so the same content always has the same path and
//! filing it twice is harmless.
//!
//! Filing is idempotent: if the target exists it holds the same content (its name is the
//! hash), and the source is just removed. Moves are `renameat` between the two opened
//! directories, so the entry moved is the one in the directory the file was opened from, and
//! the moved inode is checked to be the one that was hashed. Both directories are fsynced, so
//! a move that returned survives a power cut before the database commit that follows it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, renameat};
use nix::sys::stat::Mode;
use nix::sys::stat::{FileStat, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use sluice_core::beneath;

use crate::analyze::{OpenedFile, open_directory, open_in_directory};
use crate::failure::IngestFailure;

/// Opens (creating what is missing) the folder `<library>/<b3[0..2]>/<b3[2..4]>` the way
/// every write target is opened: the library itself is the configured root, each folder
/// beneath it is made with `mkdirat` and opened with `openat2` without following links, so a
/// symlink planted as a shard folder cannot send a consumed file anywhere else.
fn open_library_folder(library: &Path, blake3: &str) -> Result<File, IngestFailure> {
    // The configured root is trusted (an administrator may make it a symlink); it is created
    // when missing, like every folder the configuration names.
    std::fs::create_dir_all(library).map_err(|error| {
        IngestFailure::writing(
            format!("cannot create the library {}: {error}", library.display()),
            &error,
        )
    })?;
    let mut folder = open_directory(library)?;
    let mut path = library.to_path_buf();
    for shard in [&blake3[0..2], &blake3[2..4]] {
        path.push(shard);
        folder = match beneath::open_or_create_directory(
            &folder,
            OsStr::new(shard),
            Mode::from_bits_truncate(0o750),
        ) {
            Ok((opened, _created)) => opened,
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                return Err(IngestFailure::Permanent(format!(
                    "library folder {} is not a plain folder inside the library (a symlink, a \
                     file or a mount point); refusing to file into it",
                    path.display()
                )));
            }
            Err(errno) => {
                let error = io::Error::from(errno);
                return Err(IngestFailure::writing(
                    format!("cannot create library folder {}: {error}", path.display()),
                    &error,
                ));
            }
        };
    }
    Ok(folder)
}

/// `aa/bb/aabb…` for a BLAKE3 hex digest.
pub fn relative_library_path(blake3: &str) -> PathBuf {
    Path::new(&blake3[0..2]).join(&blake3[2..4]).join(blake3)
}

/// How a consumed file ended up in the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    /// Renamed (or copied, across filesystems) into place.
    Moved,
    /// The library already had this content; the source was removed.
    AlreadyThere,
}

/// Moves the opened file into the library under its hash. Returns the library path.
pub fn file_into_library(
    library: &Path,
    blake3: &str,
    source: &mut OpenedFile,
) -> Result<(PathBuf, Filed), IngestFailure> {
    let target_path = library.join(relative_library_path(blake3));
    let target_directory_path = target_path
        .parent()
        .expect("a library path has parent folders");
    let target_directory = open_library_folder(library, blake3)?;
    let name = OsStr::new(blake3);
    let filed = match entry_status(&target_directory, name)? {
        Some(existing) if is_regular(&existing) => {
            remove_source(source)?;
            Filed::AlreadyThere
        }
        Some(_) => {
            return Err(IngestFailure::Permanent(format!(
                "library entry {} exists but is not a regular file; refusing to use it",
                target_path.display()
            )));
        }
        None => {
            ensure_entry_is_ours(source)?;
            match renameat(
                &source.directory,
                source.name.as_os_str(),
                &target_directory,
                name,
            ) {
                Ok(()) => {
                    let moved = entry_status(&target_directory, name)?;
                    if !moved.is_some_and(|stat| same_inode(&stat, source)) {
                        // Someone replaced the source entry between the check and the move:
                        // put back what was moved, and try again later.
                        let _ = renameat(
                            &target_directory,
                            name,
                            &source.directory,
                            source.name.as_os_str(),
                        );
                        return Err(IngestFailure::Retryable(
                            "the file was replaced while it was being filed".into(),
                        ));
                    }
                }
                Err(Errno::EXDEV) => {
                    copy_across_filesystems(source, &target_directory, &target_path)?
                }
                Err(errno) => {
                    return Err(IngestFailure::writing(
                        format!(
                            "cannot move the file into {}: {errno}",
                            target_path.display()
                        ),
                        &errno.into(),
                    ));
                }
            }
            Filed::Moved
        }
    };
    sync_directory(&target_directory, target_directory_path)?;
    sync_directory(&source.directory, Path::new("the source folder"))?;
    Ok((target_path, filed))
}

/// Opens a library file by hash, for an attempt that finds its source already moved.
pub fn open_library_file(
    library: &Path,
    blake3: &str,
) -> Result<Option<OpenedFile>, IngestFailure> {
    let target_path = library.join(relative_library_path(blake3));
    let directory_path = target_path.parent().expect("library paths have parents");
    let directory = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(directory_path)
    {
        Ok(directory) => directory,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(IngestFailure::Retryable(format!(
                "cannot open library folder {}: {error}",
                directory_path.display()
            )));
        }
    };
    open_in_directory(directory, OsStr::new(blake3)).map_err(|errno| {
        IngestFailure::Permanent(format!(
            "cannot open library file {}: {errno}",
            target_path.display()
        ))
    })
}

fn entry_status(directory: &File, name: &OsStr) -> Result<Option<FileStat>, IngestFailure> {
    match fstatat(directory, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(IngestFailure::Retryable(format!(
            "cannot stat {}: {errno}",
            Path::new(name).display()
        ))),
    }
}

fn is_regular(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

fn same_inode(stat: &FileStat, file: &OpenedFile) -> bool {
    stat.st_dev == file.device && stat.st_ino == file.inode
}

/// The source's directory entry must still be the inode that was hashed.
fn ensure_entry_is_ours(source: &OpenedFile) -> Result<(), IngestFailure> {
    match entry_status(&source.directory, &source.name)? {
        Some(stat) if same_inode(&stat, source) => Ok(()),
        _ => Err(IngestFailure::Retryable(
            "the file was replaced or removed while it was being ingested".into(),
        )),
    }
}

fn remove_source(source: &OpenedFile) -> Result<(), IngestFailure> {
    ensure_entry_is_ours(source)?;
    match unlinkat(
        &source.directory,
        source.name.as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(IngestFailure::Retryable(format!(
            "cannot remove the consumed file: {errno}"
        ))),
    }
}

/// The library is on another filesystem: copy from the hashed descriptor into a temporary
/// name, fsync, rename into place, then remove the source. A copy that fails (a full library
/// disk, most likely) is removed again, so it neither looks like a filed file nor keeps the
/// space the next attempt needs.
fn copy_across_filesystems(
    source: &mut OpenedFile,
    target_directory: &File,
    target_path: &Path,
) -> Result<(), IngestFailure> {
    let name = target_path
        .file_name()
        .expect("a library path ends in the file's hash");
    let temporary_name = format!(".{}.part-{}", Path::new(name).display(), std::process::id());
    let temporary_path = target_path.with_file_name(&temporary_name);
    let failure = |what: &str, error: io::Error| {
        IngestFailure::writing(
            format!(
                "cannot copy the file into the library as {} ({what}): {error}",
                temporary_path.display()
            ),
            &error,
        )
    };
    let descriptor = nix::fcntl::openat(
        target_directory,
        temporary_name.as_str(),
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_TRUNC
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o640),
    )
    .map_err(|errno| failure("create", errno.into()))?;
    let mut copy = File::from(descriptor);
    let copied = source
        .file
        .seek(SeekFrom::Start(0))
        .map_err(|error| failure("rewind", error))
        .and_then(|_| {
            io::copy(&mut source.file, &mut copy).map_err(|error| failure("write", error))
        })
        .and_then(|_| copy.sync_all().map_err(|error| failure("fsync", error)))
        .and_then(|()| {
            renameat(
                target_directory,
                temporary_name.as_str(),
                target_directory,
                name,
            )
            .map_err(|errno| failure("rename", errno.into()))
        });
    if let Err(failure) = copied {
        drop(copy);
        if let Err(errno) = unlinkat(
            target_directory,
            temporary_name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        ) && errno != Errno::ENOENT
        {
            tracing::warn!(
                path = %temporary_path.display(),
                error = %errno,
                "cannot remove the unfinished copy {}: {errno}",
                temporary_path.display()
            );
        }
        return Err(failure);
    }
    remove_source(source)
}

fn sync_directory(directory: &File, path: &Path) -> Result<(), IngestFailure> {
    directory.sync_all().map_err(|error| {
        IngestFailure::Retryable(format!("cannot fsync folder {}: {error}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::open_beneath;

    #[test]
    fn filing_moves_once_and_is_idempotent() {
        let inbox = tempfile::tempdir().unwrap();
        let library = tempfile::tempdir().unwrap();
        let hash = blake3::hash(b"content").to_hex().to_string();
        std::fs::write(inbox.path().join("a"), b"content").unwrap();
        std::fs::write(inbox.path().join("b"), b"content").unwrap();

        let mut first = open_beneath(inbox.path(), Path::new("a")).unwrap().unwrap();
        let (path, filed) = file_into_library(library.path(), &hash, &mut first).unwrap();
        assert_eq!(filed, Filed::Moved);
        assert_eq!(
            path,
            library
                .path()
                .join(&hash[0..2])
                .join(&hash[2..4])
                .join(&hash)
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"content");
        assert!(!inbox.path().join("a").exists());

        let mut second = open_beneath(inbox.path(), Path::new("b")).unwrap().unwrap();
        let (again, filed) = file_into_library(library.path(), &hash, &mut second).unwrap();
        assert_eq!((again, filed), (path.clone(), Filed::AlreadyThere));
        assert!(!inbox.path().join("b").exists());
        assert!(open_library_file(library.path(), &hash).unwrap().is_some());
    }

    #[test]
    fn a_replaced_source_is_not_filed() {
        let inbox = tempfile::tempdir().unwrap();
        let library = tempfile::tempdir().unwrap();
        std::fs::write(inbox.path().join("a"), b"one").unwrap();
        let mut opened = open_beneath(inbox.path(), Path::new("a")).unwrap().unwrap();
        std::fs::remove_file(inbox.path().join("a")).unwrap();
        std::fs::write(inbox.path().join("a"), b"two").unwrap();
        let hash = blake3::hash(b"one").to_hex().to_string();
        let error = file_into_library(library.path(), &hash, &mut opened).unwrap_err();
        assert!(matches!(error, IngestFailure::Retryable(_)), "{error:?}");
        assert_eq!(std::fs::read(inbox.path().join("a")).unwrap(), b"two");
        assert!(open_library_file(library.path(), &hash).unwrap().is_none());
    }
}
