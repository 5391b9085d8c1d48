//! Walking a watched tree (or a part of it) for the regular files in it, without following
//! symlinks and without entering hidden directories.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sluice_core::config::IgnoreRules;

/// A regular file found by a walk, with the version data the store records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileVersion {
    pub fn from_metadata(path: PathBuf, metadata: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            path,
            size: metadata.len(),
            mtime_ns: metadata
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(metadata.mtime_nsec()),
            inode: metadata.ino(),
        }
    }
}

/// What a walk counted besides the files it reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkSummary {
    pub files: u64,
    pub directories: u64,
    /// Entries skipped because they could not be read (vanished meanwhile, permissions).
    pub errors: u64,
    /// Names that are not UTF-8, which the database and the job payload cannot carry.
    pub skipped_non_utf8: u64,
    /// The first [`NAMED_NON_UTF8`] of them, so each can be reported by name.
    pub non_utf8: Vec<PathBuf>,
}

/// How many non-UTF-8 names one walk keeps to report by name.
pub const NAMED_NON_UTF8: usize = 100;

/// How many files a walk hands over at once.
pub const WALK_CHUNK: usize = 512;

/// Whether `path` is a file the monitor records: inside `root`, directly in it unless
/// `recursive`, not ignored, and valid UTF-8 (checked by the caller).
pub fn is_wanted(root: &Path, path: &Path, rules: &IgnoreRules, recursive: bool) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return false;
    };
    if relative.as_os_str().is_empty() {
        return false;
    }
    if !recursive && relative.components().count() != 1 {
        return false;
    }
    !rules.is_ignored(relative)
}

/// Walks `start` (the watched folder `root` or something inside it) and hands the wanted
/// regular files to `emit` in chunks of [`WALK_CHUNK`]. Symlinks are neither reported nor
/// followed, hidden directories are not entered, and without `recursive` only the files
/// directly in `root` count.
pub fn walk(
    root: &Path,
    start: &Path,
    rules: &IgnoreRules,
    recursive: bool,
    mut emit: impl FnMut(Vec<FileVersion>),
) -> WalkSummary {
    let mut summary = WalkSummary::default();
    let mut chunk = Vec::new();
    let mut directories = Vec::new();
    match std::fs::symlink_metadata(start) {
        Ok(metadata) if metadata.is_dir() => directories.push(start.to_path_buf()),
        Ok(metadata) if metadata.is_file() => {
            consider_file(
                root,
                start.to_path_buf(),
                &metadata,
                rules,
                recursive,
                &mut summary,
                &mut chunk,
            );
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => summary.errors += 1,
    }
    while let Some(directory) = directories.pop() {
        summary.directories += 1;
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(
                        path = %directory.display(),
                        error = %error,
                        "cannot read the directory {} while walking: {error}",
                        directory.display()
                    );
                    summary.errors += 1;
                }
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                summary.errors += 1;
                continue;
            };
            // `file_type` comes from the directory entry and does not follow symlinks.
            let Ok(file_type) = entry.file_type() else {
                summary.errors += 1;
                continue;
            };
            let path = entry.path();
            if file_type.is_dir() {
                let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
                if recursive && !hidden {
                    directories.push(path);
                }
            } else if file_type.is_file() {
                match std::fs::symlink_metadata(&path) {
                    Ok(metadata) => consider_file(
                        root,
                        path,
                        &metadata,
                        rules,
                        recursive,
                        &mut summary,
                        &mut chunk,
                    ),
                    Err(_) => summary.errors += 1,
                }
                if chunk.len() >= WALK_CHUNK {
                    emit(std::mem::take(&mut chunk));
                }
            }
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    summary
}

fn consider_file(
    root: &Path,
    path: PathBuf,
    metadata: &std::fs::Metadata,
    rules: &IgnoreRules,
    recursive: bool,
    summary: &mut WalkSummary,
    chunk: &mut Vec<FileVersion>,
) {
    if !metadata.is_file() || !is_wanted(root, &path, rules, recursive) {
        return;
    }
    if path.to_str().is_none() {
        summary.skipped_non_utf8 += 1;
        if summary.non_utf8.len() < NAMED_NON_UTF8 {
            summary.non_utf8.push(path);
        }
        return;
    }
    summary.files += 1;
    chunk.push(FileVersion::from_metadata(path, metadata));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(globs: &str) -> IgnoreRules {
        let text = format!(
            "[[watch]]\npath = \"/srv/in\"\nmode = \"index\"\nignore = [{globs}]\n[ingest]\nlibrary = \"/srv/library\"\n"
        );
        sluice_core::config::Config::from_toml_str(&text, Path::new("test.toml"))
            .unwrap()
            .watches
            .remove(0)
            .ignore
    }

    fn walked(root: &Path, start: &Path, rules: &IgnoreRules, recursive: bool) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(root, start, rules, recursive, |chunk| {
            found.extend(chunk.into_iter().map(|file| file.path));
        });
        found.sort();
        found
    }

    #[test]
    fn walks_regular_files_only_and_never_follows_links() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("in");
        let outside = directory.path().join("outside");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        for name in [
            "a",
            "sub/b",
            "sub/deeper/c",
            ".hidden/d",
            "e.part",
            ".f",
            "g.tmp",
        ] {
            std::fs::write(root.join(name), "x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, root.join("linked-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("linked-file")).unwrap();

        let rules = rules("\"*.tmp\"");
        assert_eq!(
            walked(&root, &root, &rules, true),
            vec![
                root.join("a"),
                root.join("sub/b"),
                root.join("sub/deeper/c")
            ]
        );
        assert_eq!(walked(&root, &root, &rules, false), vec![root.join("a")]);
        assert_eq!(
            walked(&root, &root.join("sub/deeper"), &rules, true),
            vec![root.join("sub/deeper/c")]
        );
        assert_eq!(
            walked(&root, &root.join("a"), &rules, true),
            vec![root.join("a")]
        );
        assert!(walked(&root, &root.join("linked-dir"), &rules, true).is_empty());
        assert!(walked(&root, &root.join("missing"), &rules, true).is_empty());
    }
}
