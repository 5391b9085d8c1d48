//! The notify watchers behind each `[[watch]]`: inotify where it works, notify's PollWatcher on
//! network file systems (found with `statfs`) or when configured, and the translation of
//! notify's events into the few things the monitor acts on.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use sluice_core::config::{WatchConfig, Watcher};
use std::sync::Arc;

/// What a watcher saw, reduced to what the monitor does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Closed after writing: the file is complete, record it now.
    Closed(PathBuf),
    /// Renamed into place (a file is complete; a directory is walked).
    MovedIn(PathBuf),
    /// A directory was created; files may already be inside before its watch exists.
    NewDirectory(PathBuf),
    /// Polling saw a change; the file counts once it stays unchanged for the quiet period.
    Changed(PathBuf),
    /// Deleted or renamed away (a file or a whole directory).
    Left(PathBuf),
    /// Events were lost (inotify queue overflow, or an event without a path): reconcile the
    /// whole folder.
    Rescan,
    /// The watcher reported an error.
    Failed(String),
}

/// A message with the watch it came from. `generation` tells messages of watchers that a
/// reload replaced from current ones.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub generation: u64,
    pub watch: usize,
    pub message: WatchMessage,
}

/// Where a watcher's messages go; called on notify's threads.
pub type WatchSink = Arc<dyn Fn(WatchEvent) + Send + Sync>;

/// A running watcher; dropping it stops it.
#[derive(Debug)]
pub enum FolderWatcher {
    Inotify(notify::INotifyWatcher),
    Poll(notify::PollWatcher),
}

impl FolderWatcher {
    pub fn is_polling(&self) -> bool {
        matches!(self, FolderWatcher::Poll(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watched folder {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error(
        "watched folder {path} is on {file_system}, where inotify sees no changes made by other \
         machines; set watcher = \"poll\" or \"auto\" for it"
    )]
    InotifyUnsupported {
        path: PathBuf,
        file_system: &'static str,
    },
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Starts the watcher for `watch` (creating the folder if it does not exist yet), handing its
/// messages to `sink`.
pub fn start_watcher(
    watch: &WatchConfig,
    index: usize,
    generation: u64,
    sink: WatchSink,
) -> Result<FolderWatcher, WatchError> {
    prepare_folder(&watch.path)?;
    let network = network_file_system(&watch.path).map_err(|error| WatchError::Folder {
        path: watch.path.clone(),
        reason: format!("statfs failed: {error}"),
    })?;
    let polling = match (watch.watcher, network) {
        (Watcher::Poll, _) | (Watcher::Auto, Some(_)) => true,
        (Watcher::Inotify, Some(file_system)) => {
            return Err(WatchError::InotifyUnsupported {
                path: watch.path.clone(),
                file_system,
            });
        }
        (Watcher::Inotify | Watcher::Auto, None) => false,
    };
    let recursive_mode = if watch.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    // Never follow symlinks: a link inside a watched folder must not pull its target in.
    let notify_config = notify::Config::default()
        .with_follow_symlinks(false)
        .with_poll_interval(watch.poll_interval);
    let notify_error = |source| WatchError::Notify {
        path: watch.path.clone(),
        source,
    };
    let send = move |message: WatchMessage| {
        sink(WatchEvent {
            generation,
            watch: index,
            message,
        });
    };
    let mut watcher = if polling {
        let handler = move |result: notify::Result<notify::Event>| {
            for message in translate_poll(result) {
                send(message);
            }
        };
        FolderWatcher::Poll(notify::PollWatcher::new(handler, notify_config).map_err(notify_error)?)
    } else {
        let handler = move |result: notify::Result<notify::Event>| {
            for message in translate_inotify(result) {
                send(message);
            }
        };
        FolderWatcher::Inotify(
            notify::INotifyWatcher::new(handler, notify_config).map_err(notify_error)?,
        )
    };
    match &mut watcher {
        FolderWatcher::Inotify(inner) => inner.watch(&watch.path, recursive_mode),
        FolderWatcher::Poll(inner) => inner.watch(&watch.path, recursive_mode),
    }
    .map_err(notify_error)?;
    Ok(watcher)
}

/// The name of the network (or user-space) file system `path` is on, if it is one: inotify
/// there only sees changes made through this machine's kernel, so such folders are polled.
pub fn network_file_system(path: &Path) -> nix::Result<Option<&'static str>> {
    let file_system_type = nix::sys::statfs::statfs(path)?.filesystem_type().0;
    // `f_type` is a signed word on some targets; the magic numbers are 32-bit patterns.
    Ok(network_file_system_name(
        file_system_type as u64 & 0xFFFF_FFFF,
    ))
}

/// Maps a `statfs` `f_type` magic number to a network file system's name.
pub fn network_file_system_name(magic: u64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x517B => Some("SMB"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x6573_5546 => Some("FUSE"),
        0x0102_1997 => Some("9P"),
        0x00C3_6400 => Some("Ceph"),
        0x5346_414F => Some("AFS"),
        _ => None,
    }
}

/// Creates a missing watched folder; refuses a symlink or a non-directory, because the walk
/// never follows links and would find nothing.
fn prepare_folder(path: &Path) -> Result<(), WatchError> {
    let folder_error = |reason: String| WatchError::Folder {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => Err(folder_error(
            "is a symbolic link; configure the real path".into(),
        )),
        Ok(metadata) if !metadata.is_dir() => Err(folder_error("is not a directory".into())),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|error| {
                folder_error(format!("does not exist and cannot be created: {error}"))
            })?;
            tracing::info!(
                path = %path.display(),
                "created the missing watched folder {}",
                path.display()
            );
            Ok(())
        }
        Err(error) => Err(folder_error(error.to_string())),
    }
}

/// inotify: a file is ready on IN_CLOSE_WRITE or IN_MOVED_TO; created directories are walked;
/// an overflow (notify's rescan flag) or an event without a path means a full reconcile.
pub fn translate_inotify(result: notify::Result<notify::Event>) -> Vec<WatchMessage> {
    let event = match result {
        Ok(event) => event,
        Err(error) => return vec![WatchMessage::Failed(error.to_string())],
    };
    if event.need_rescan() || event.paths.is_empty() {
        return vec![WatchMessage::Rescan];
    }
    let first_path = || event.paths[0].clone();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            vec![WatchMessage::Closed(first_path())]
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            vec![WatchMessage::MovedIn(first_path())]
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            vec![WatchMessage::Left(first_path())]
        }
        EventKind::Create(CreateKind::Folder) => vec![WatchMessage::NewDirectory(first_path())],
        EventKind::Remove(_) => vec![WatchMessage::Left(first_path())],
        // Opens, reads, writes in progress, attribute changes, plain creations (the close
        // that follows says when the file is complete) and the paired rename event (its two
        // halves came separately) need nothing.
        _ => Vec::new(),
    }
}

/// Polling: every creation or change is a candidate that must stay unchanged for the quiet
/// period; removals are gone files.
pub fn translate_poll(result: notify::Result<notify::Event>) -> Vec<WatchMessage> {
    let event = match result {
        Ok(event) => event,
        Err(error) => return vec![WatchMessage::Failed(error.to_string())],
    };
    if event.need_rescan() || event.paths.is_empty() {
        return vec![WatchMessage::Rescan];
    }
    match event.kind {
        EventKind::Create(_) | EventKind::Modify(_) => {
            event.paths.into_iter().map(WatchMessage::Changed).collect()
        }
        EventKind::Remove(_) => event.paths.into_iter().map(WatchMessage::Left).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag, RemoveKind};

    fn event(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn inotify_events_become_monitor_messages() {
        assert_eq!(
            translate_inotify(event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/in/a"
            )),
            vec![WatchMessage::Closed("/in/a".into())]
        );
        assert_eq!(
            translate_inotify(event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/in/b"
            )),
            vec![WatchMessage::MovedIn("/in/b".into())]
        );
        assert_eq!(
            translate_inotify(event(EventKind::Create(CreateKind::Folder), "/in/d")),
            vec![WatchMessage::NewDirectory("/in/d".into())]
        );
        assert_eq!(
            translate_inotify(event(EventKind::Remove(RemoveKind::File), "/in/a")),
            vec![WatchMessage::Left("/in/a".into())]
        );
        for quiet in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        ] {
            assert_eq!(translate_inotify(event(quiet, "/in/a")), vec![]);
        }
    }

    #[test]
    fn overflow_and_pathless_events_ask_for_a_rescan() {
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(
            translate_inotify(Ok(overflow.clone())),
            vec![WatchMessage::Rescan]
        );
        assert_eq!(translate_poll(Ok(overflow)), vec![WatchMessage::Rescan]);
        let pathless = notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)));
        assert_eq!(translate_inotify(Ok(pathless)), vec![WatchMessage::Rescan]);
    }

    #[test]
    fn network_file_systems_are_recognised_by_their_magic() {
        assert_eq!(network_file_system_name(0x6969), Some("NFS"));
        assert_eq!(network_file_system_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_file_system_name(0x6573_5546), Some("FUSE"));
        // ext4 and tmpfs
        assert_eq!(network_file_system_name(0xEF53), None);
        assert_eq!(network_file_system_name(0x0102_1994), None);
        assert_eq!(network_file_system(Path::new("/")).unwrap(), None);
    }
}
