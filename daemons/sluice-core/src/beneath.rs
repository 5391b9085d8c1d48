//! Opening, creating and renaming files beneath a root folder without ever following a
//! symbolic link: the one place the daemons that write or read untrusted folders (the
//! scraper's staging and inbox, the worker's watched folders and library) get their `openat2`.
//!
//! The functions return the kernel's `Errno` rather than an error enum of their own, because
//! what a refusal means (`ELOOP`: a link on the way, `EXDEV`: a path climbing out) is worded
//! by the caller, who knows what it was trying to do to which path.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag, openat2};
use nix::fcntl::{renameat, renameat2};
use nix::sys::stat::{Mode, fstatat, mkdirat};

/// Opens a folder the configuration names. It is trusted (an administrator may make it a
/// symlink), so it is opened normally; everything beneath it is opened with the functions
/// below.
pub fn open_root(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` beneath `directory` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_XDEV)`: a symlink in any component fails with `ELOOP`, a path that climbs out or
/// crosses into another mount (a file system mounted inside a watched folder) with `EXDEV`.
/// Mount crossings are refused here rather than by comparing `st_dev`: on overlayfs (the root
/// of most containers) a regular file reports the device of its layer, not its folder's.
/// `flags` are added to `O_CLOEXEC`; give `O_RDONLY`/`O_RDWR`, and `O_CREAT` with `mode`.
/// A file (not `O_DIRECTORY`) is also opened with `O_NOFOLLOW`.
pub fn open_beneath(
    directory: &File,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    // RESOLVE_NO_SYMLINKS already refuses a symlink in any component (ELOOP). O_NOFOLLOW is
    // added for files as well, but not for directories, where the kernel would report a
    // final symlink as ENOTDIR instead.
    let no_follow = if flags.contains(OFlag::O_DIRECTORY) {
        OFlag::empty()
    } else {
        OFlag::O_NOFOLLOW
    };
    let mut how = OpenHow::new()
        .flags(OFlag::O_CLOEXEC | no_follow | flags)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    // The kernel refuses a mode without O_CREAT or O_TMPFILE.
    if flags.contains(OFlag::O_CREAT) {
        how = how.mode(mode);
    }
    loop {
        match openat2(directory, path, how) {
            // openat2 may ask to retry when a rename raced the lookup.
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Opens the folder `name` directly inside `directory`, creating it (`mkdirat`, `mode`) when
/// missing. A symlink named `name` is never followed: `mkdirat` does not follow it and the
/// open fails with `ELOOP`. Returns the folder and whether it was created.
pub fn open_or_create_directory(
    directory: &File,
    name: &OsStr,
    mode: Mode,
) -> Result<(File, bool), Errno> {
    let name = single_component(name)?;
    let created = match mkdirat(directory, name, mode) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(errno) => return Err(errno),
    };
    let opened = open_beneath(
        directory,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    Ok((File::from(opened), created))
}

/// Renames `from_name` in `from_directory` to `to_name` in `to_directory` with
/// `renameat2(RENAME_NOREPLACE)`: on folder handles, so no path is resolved again, and
/// `EEXIST` instead of replacing a file. Where the file system lacks the flag a
/// check-then-rename stands in (the gap is only against a person creating the same name).
pub fn rename_no_replace(
    from_directory: &File,
    from_name: &OsStr,
    to_directory: &File,
    to_name: &OsStr,
) -> Result<(), Errno> {
    let from_name = single_component(from_name)?;
    let to_name = single_component(to_name)?;
    match renameat2(
        from_directory,
        from_name,
        to_directory,
        to_name,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            match fstatat(to_directory, to_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(_) => Err(Errno::EEXIST),
                Err(Errno::ENOENT) => renameat(from_directory, from_name, to_directory, to_name),
                Err(errno) => Err(errno),
            }
        }
        other => other,
    }
}

/// `fsync` on an opened folder, which makes the names created or removed in it durable.
pub fn sync_directory(directory: &File) -> io::Result<()> {
    directory.sync_all()
}

/// Whether a write failed because its file system is full (`ENOSPC`) or the writer's quota
/// is used up (`EDQUOT`): the failure a daemon waits out instead of counting it against the
/// job, since freeing space is all it takes.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The `*at` calls below resolve a name with slashes component by component, following
/// links; a single component is the only shape they are safe with.
fn single_component(name: &OsStr) -> Result<&Path, Errno> {
    let path = Path::new(name);
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(Errno::EINVAL);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_folder_is_neither_created_through_nor_renamed_into() {
        let directory = tempfile::tempdir().unwrap();
        let root_path = directory.path().join("root");
        let outside = directory.path().join("outside");
        std::fs::create_dir_all(&root_path).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("evil")).unwrap();
        std::fs::write(root_path.join("f"), b"x").unwrap();
        let root = open_root(&root_path).unwrap();

        let refused =
            open_or_create_directory(&root, OsStr::new("evil"), Mode::from_bits_truncate(0o755));
        assert_eq!(refused.unwrap_err(), Errno::ELOOP);
        let refused = open_beneath(
            &root,
            Path::new("evil/new"),
            OFlag::O_RDWR | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o600),
        );
        assert_eq!(refused.unwrap_err(), Errno::ELOOP);
        assert_eq!(
            rename_no_replace(&root, OsStr::new("f"), &root, OsStr::new("evil/f")),
            Err(Errno::EINVAL)
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        let (bundle, created) =
            open_or_create_directory(&root, OsStr::new("bundle"), Mode::from_bits_truncate(0o755))
                .unwrap();
        assert!(created);
        rename_no_replace(&root, OsStr::new("f"), &bundle, OsStr::new("f")).unwrap();
        std::fs::write(root_path.join("g"), b"y").unwrap();
        assert_eq!(
            rename_no_replace(&root, OsStr::new("g"), &bundle, OsStr::new("f")),
            Err(Errno::EEXIST)
        );
        assert_eq!(std::fs::read(root_path.join("bundle/f")).unwrap(), b"x");
    }
}
