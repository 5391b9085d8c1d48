//! Walking a watched tree (or a part of it) for the regular files in it, without following
//! symlinks and without entering hidden directories.

use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// How many walked chunks may be on their way to the recorder at once, over all walks: at
/// most this many times [`WALK_CHUNK`] files are between a walk and their commit.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The walks' backpressure: a walk takes a [`WalkTicket`] before it hands over a chunk, and
/// the ticket goes back when the recorder has committed the chunk's files (or when the
/// chunk is dropped). A walk faster than the commits waits here instead of queueing the
/// tree in memory: before, a reconcile of 1M files held most of their paths in the
/// channels to the main loop and the recorder, so the monitor's peak memory grew with the
/// tree.
#[derive(Debug, Clone)]
pub struct WalkBudget {
    shared: Arc<(Mutex<usize>, Condvar)>,
}

/// One chunk's place in the [`WalkBudget`], given back when dropped.
#[derive(Debug)]
pub struct WalkTicket {
    shared: Arc<(Mutex<usize>, Condvar)>,
}

impl WalkBudget {
    pub fn new(chunks: usize) -> WalkBudget {
        WalkBudget {
            shared: Arc::new((Mutex::new(chunks.max(1)), Condvar::new())),
        }
    }

    /// Waits (blocking the walk's thread) for a place, or returns `None` as soon as
    /// `give_up()` says the chunk has nowhere to go (the monitor is stopping); that is asked
    /// once a second while waiting, should a ticket never come back.
    pub fn take(&self, give_up: impl Fn() -> bool) -> Option<WalkTicket> {
        let (free, returned) = &*self.shared;
        let mut free = free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if give_up() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(WalkTicket {
                    shared: Arc::clone(&self.shared),
                });
            }
            free = returned
                .wait_timeout(free, Duration::from_secs(1))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Places free now (for tests).
    pub fn free(&self) -> usize {
        *self
            .shared
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for WalkTicket {
    fn drop(&mut self) {
        let (free, returned) = &*self.shared;
        *free.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        returned.notify_one();
    }
}

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
/// regular files to `emit` in chunks of [`WALK_CHUNK`]; the walk stops early when `emit`
/// says `Break` (nobody takes the files any more). Symlinks are neither reported nor
/// followed, hidden directories are not entered, and without `recursive` only the files
/// directly in `root` count.
pub fn walk(
    root: &Path,
    start: &Path,
    rules: &IgnoreRules,
    recursive: bool,
    mut emit: impl FnMut(Vec<FileVersion>) -> ControlFlow<()>,
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
                if chunk.len() >= WALK_CHUNK && emit(std::mem::take(&mut chunk)).is_break() {
                    return summary;
                }
            }
        }
    }
    if !chunk.is_empty() {
        let _ = emit(chunk);
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
            ControlFlow::Continue(())
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

    #[test]
    fn a_walk_waits_for_a_returned_ticket_and_stops_when_told() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("in");
        std::fs::create_dir_all(&root).unwrap();
        for i in 0..WALK_CHUNK * 3 {
            std::fs::write(root.join(format!("f{i}")), "x").unwrap();
        }
        let ignore = rules("");
        let budget = WalkBudget::new(2);
        let (sender, receiver) = std::sync::mpsc::channel();
        let walker = {
            let (root, budget) = (root.clone(), budget.clone());
            std::thread::spawn(move || {
                walk(&root, &root, &ignore, true, |chunk| {
                    let ticket = budget.take(|| false).expect("a ticket");
                    sender.send((chunk.len(), ticket)).unwrap();
                    ControlFlow::Continue(())
                })
            })
        };
        // Two chunks go out; the third waits until one ticket comes back.
        let (first, first_ticket) = receiver.recv().unwrap();
        let (second, _second_ticket) = receiver.recv().unwrap();
        assert_eq!((first, second), (WALK_CHUNK, WALK_CHUNK));
        assert_eq!(budget.free(), 0);
        assert!(
            receiver.recv_timeout(Duration::from_millis(200)).is_err(),
            "a third chunk went out with no ticket free"
        );
        drop(first_ticket);
        let (third, _third_ticket) = receiver.recv().unwrap();
        assert_eq!(third, WALK_CHUNK);
        assert_eq!(walker.join().unwrap().files, (WALK_CHUNK * 3) as u64);

        // A walk told to stop hands over nothing more.
        let mut chunks = 0;
        let summary = walk(&root, &root, &rules(""), true, |_| {
            chunks += 1;
            ControlFlow::Break(())
        });
        assert_eq!(chunks, 1);
        assert!(summary.files < (WALK_CHUNK * 3) as u64);
        // A stopping monitor's walk gets no ticket, even with none free.
        let empty = WalkBudget::new(1);
        let _held = empty.take(|| false).unwrap();
        assert!(empty.take(|| true).is_none());
    }
}
