//! The recorder: one thread that owns the monitor's database connection and commits detected
//! files in batches, so the main loop never blocks on SQLite.
//!
//! Batching is group commit: the thread takes the first waiting file, then every file that
//! queued up behind it (at most [`MAX_BATCH`]), and commits them in one transaction. A lone
//! file is committed at once; a burst of thousands goes out in a few large commits.
//!
//! The recorder also queues *held* files: files recorded without an ingest job because the
//! queue was at `[ingest] max_pending` (see `sluice_core::store::files`). Because every
//! recording and every queueing of held files goes through this one thread, it alone keeps
//! their number and the smallest held id ([`HeldTally`]): it counts them once, then follows
//! each change its own commits report, so a look at the held files reads only the rows from
//! the smallest held id on, and only as many as the queue has room for.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_core::config::WatchMode;
use sluice_core::store::{
    DetectedFile, Detection, FileError, FileRecord, GoneFile, HeldFiles, INGEST_JOB_KIND, Store,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::walk::WalkTicket;

/// Most files committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How often a failed commit is tried again before the files are left to the next reconcile.
const COMMIT_ATTEMPTS: u32 = 5;

/// Work for the recorder thread.
#[derive(Debug)]
pub enum RecorderCommand {
    /// Record a file that is ready (and queue its ingest job if this version is new).
    Record(DetectedFile),
    /// Mark as gone every recorded file at or under `prefix` that is no longer a regular file.
    Sweep { prefix: PathBuf, mode: WatchMode },
    /// Count the files that are not gone.
    Count,
    /// Queue as many held files as the ingest queue has room for, oldest first, one
    /// transaction per batch, in the folders `watches` (path and mode of each); held files
    /// that left their folder are marked gone instead. Answered with `HeldChecked`.
    QueueHeld { watches: Vec<(PathBuf, WatchMode)> },
    /// A reload changed `[ingest] max_pending`.
    SetMaxPending(u32),
    /// Follows the files of one walked chunk: dropped once they are committed (and their
    /// report sent), which lets the walk hand over another chunk.
    ReturnTicket(WalkTicket),
}

/// What the recorder reports back to the main loop.
#[derive(Debug)]
pub enum RecorderReport {
    Recorded {
        detections: Vec<Detection>,
        elapsed: Duration,
    },
    Swept {
        prefix: PathBuf,
        gone: usize,
    },
    Counted(u64),
    /// What `QueueHeld` did: the held files it queued (each `new`, with its job), how many
    /// it found gone, and how many files are still held.
    HeldChecked {
        queued: Vec<Detection>,
        gone: usize,
        held: u64,
    },
    /// `QueueHeld` failed (the store is busy or its disk full); the loop tries again later.
    HeldCheckFailed(String),
    /// A batch of files could not be committed (the database's disk is full, or another
    /// process held the lock too long); the main loop walks their folders again later.
    NotRecorded {
        paths: Vec<PathBuf>,
        error: String,
    },
    Failed(String),
}

/// The handle the main loop keeps; dropping it lets the thread finish what is queued and end.
#[derive(Debug)]
pub struct Recorder {
    commands: UnboundedSender<RecorderCommand>,
    thread: std::thread::JoinHandle<()>,
}

impl Recorder {
    /// Starts the thread with its own store connection; reports go to `reports`. New
    /// versions get an ingest job while fewer than `max_pending` are pending, and are held
    /// beyond.
    pub fn start(
        store: Store,
        max_attempts: u32,
        max_pending: u32,
        reports: impl Fn(RecorderReport) + Send + 'static,
    ) -> std::io::Result<Recorder> {
        let (commands, receiver) = unbounded_channel();
        let state = RecorderState {
            store,
            max_attempts,
            max_pending,
            held: HeldTally::Unknown,
            held_roots: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || record_loop(state, receiver, reports))?;
        Ok(Recorder { commands, thread })
    }

    pub fn send(&self, command: RecorderCommand) {
        // The thread only ends after this handle is dropped, or if it panicked; then the
        // command has nowhere to go and the next start's reconcile catches up.
        if let Err(unsent) = self.commands.send(command) {
            let lost = match &unsent.0 {
                RecorderCommand::Record(file) => {
                    format!("{} was not recorded", file.path.display())
                }
                RecorderCommand::Sweep { prefix, .. } => {
                    format!("files gone from {} were not marked gone", prefix.display())
                }
                RecorderCommand::Count => "the files were not counted".to_owned(),
                RecorderCommand::QueueHeld { .. } => "held files were not queued".to_owned(),
                RecorderCommand::SetMaxPending(_) => {
                    "the new [ingest] max_pending was not applied".to_owned()
                }
                // Dropped with the error: the walk goes on and finds nobody to take its files.
                RecorderCommand::ReturnTicket(_) => return,
            };
            tracing::error!("the recorder thread is gone; {lost}");
        }
    }

    /// Closes the queue and waits (on a blocking thread) until everything queued is committed.
    pub async fn finish(self) {
        let Recorder { commands, thread } = self;
        drop(commands);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// What the recorder thread owns.
struct RecorderState {
    store: Store,
    max_attempts: u32,
    max_pending: u32,
    held: HeldTally,
    /// The watched folders of the last `QueueHeld`; held files elsewhere are left alone, and
    /// not counted.
    held_roots: Vec<PathBuf>,
}

impl RecorderState {
    /// Follows what recording `file` did to the held files.
    fn note_recorded(&mut self, file: &DetectedFile, detection: &Detection) {
        if !self.held_roots.contains(&file.watch_root) {
            return;
        }
        match (detection.held_before, detection.is_held()) {
            (false, true) => self.held.add(detection.file_id),
            (true, false) => self.held.remove(),
            _ => {}
        }
    }

    /// Follows what marking `file` gone did to the held files.
    fn note_gone(&mut self, file: &GoneFile) {
        if file.was_held && self.held_roots.contains(&file.watch_root) {
            self.held.remove();
        }
    }
}

/// The held files in the watched folders as this thread knows them: how many, and an id at
/// or below every one of them.
///
/// Files become held, and stop being held, only through this thread's commits (a worker's
/// outcome leaves a held row alone, see `sluice_core::store::documents`), and each commit
/// says which of its files were held before and are now. So the held files are counted once
/// (at start, after a reload changed the folders, or after a failed look: the database is
/// the truth) and then followed. Counting them at every look read every held row, and a
/// tree larger than `[ingest] max_pending` is almost all held, so a reconcile that looks every
/// few batches took time in the square of the tree (issue 13: 1M files, 48 s → 194 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldTally {
    /// Not counted yet; the next look counts.
    Unknown,
    Known {
        count: u64,
        /// No held file has a smaller id: a look reads the rows from here on.
        from_id: i64,
    },
}

impl HeldTally {
    fn counted(held: HeldFiles) -> HeldTally {
        HeldTally::Known {
            count: held.count,
            from_id: held.first_id.unwrap_or(i64::MAX),
        }
    }

    /// File `id` became held.
    fn add(&mut self, id: i64) {
        if let HeldTally::Known { count, from_id } = self {
            *count += 1;
            *from_id = (*from_id).min(id);
        }
    }

    /// A held file was queued or marked gone.
    fn remove(&mut self) {
        if let HeldTally::Known { count, .. } = self {
            match count.checked_sub(1) {
                Some(fewer) => *count = fewer,
                // Cannot happen while only this thread changes held files; if it does, the
                // next look counts again rather than go on with a wrong number.
                None => *self = HeldTally::Unknown,
            }
        }
    }
}

fn record_loop(
    mut state: RecorderState,
    mut receiver: UnboundedReceiver<RecorderCommand>,
    reports: impl Fn(RecorderReport),
) {
    let mut carried: Option<RecorderCommand> = None;
    loop {
        let Some(command) = carried.take().or_else(|| receiver.blocking_recv()) else {
            return;
        };
        match command {
            RecorderCommand::Record(file) => {
                let mut batch = vec![file];
                // The tickets of the chunks whose files are in this batch go back after it.
                let mut tickets = Vec::new();
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(RecorderCommand::Record(file)) => batch.push(file),
                        Ok(RecorderCommand::ReturnTicket(ticket)) => tickets.push(ticket),
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let report = record_batch(
                    &mut state.store,
                    &batch,
                    state.max_attempts,
                    state.max_pending,
                );
                if let RecorderReport::Recorded { detections, .. } = &report {
                    for (file, detection) in batch.iter().zip(detections) {
                        state.note_recorded(file, detection);
                    }
                }
                reports(report);
                drop(tickets);
            }
            // The chunk's files went out with an earlier batch.
            RecorderCommand::ReturnTicket(ticket) => drop(ticket),
            RecorderCommand::Sweep { prefix, mode } => {
                reports(match sweep(&mut state, &prefix, mode) {
                    Ok(gone) => RecorderReport::Swept { prefix, gone },
                    Err(error) => RecorderReport::Failed(format!(
                        "cannot mark vanished files under {} as gone: {error}",
                        prefix.display()
                    )),
                });
            }
            RecorderCommand::Count => {
                reports(match state.store.file_counts() {
                    Ok(counts) => RecorderReport::Counted(
                        counts
                            .iter()
                            .filter(|(state, _)| **state != sluice_core::store::FileState::Gone)
                            .map(|(_, count)| count)
                            .sum(),
                    ),
                    Err(error) => RecorderReport::Failed(format!("cannot count files: {error}")),
                });
            }
            RecorderCommand::QueueHeld { watches } => {
                reports(match queue_held(&mut state, &watches) {
                    Ok(report) => report,
                    Err(error) => {
                        // Some of its commits may have gone through: count again next time.
                        state.held = HeldTally::Unknown;
                        RecorderReport::HeldCheckFailed(error.to_string())
                    }
                });
            }
            RecorderCommand::SetMaxPending(max_pending) => state.max_pending = max_pending,
        }
    }
}

/// `QueueHeld`: while the ingest queue has room, takes that many held files (oldest first),
/// marks those that left their folder gone, and records the rest again, which queues them
/// (one transaction per batch). A held file whose content changed since it was recorded is
/// left held: it may be being written, and the watcher records its new version once ready.
fn queue_held(
    state: &mut RecorderState,
    watches: &[(PathBuf, WatchMode)],
) -> Result<RecorderReport, FileError> {
    let roots: Vec<PathBuf> = watches.iter().map(|(root, _)| root.clone()).collect();
    if roots != state.held_roots {
        // Other folders, other held files: count them.
        state.held = HeldTally::Unknown;
        state.held_roots = roots.clone();
    }
    if state.held == HeldTally::Unknown {
        state.held = HeldTally::counted(state.store.count_held_files(&roots, 0)?);
    }
    let mut queued = Vec::new();
    let mut gone = 0;
    let HeldTally::Known {
        count,
        from_id: start,
    } = state.held
    else {
        unreachable!("counted above");
    };
    if count == 0 {
        return Ok(RecorderReport::HeldChecked {
            queued,
            gone,
            held: 0,
        });
    }
    // The look reads the held rows from `start` on in id order, so the rows below `from_id`
    // that are still held afterwards are among those it read: the ones it left held.
    let mut from_id = start;
    let mut left_held: Vec<i64> = Vec::new();
    let mut read_all = false;
    loop {
        let pending = state
            .store
            .pending_jobs(INGEST_JOB_KIND, state.max_pending)?;
        let room = u64::from(state.max_pending).saturating_sub(pending);
        if room == 0 {
            break;
        }
        let batch_size = usize::try_from(room).unwrap_or(MAX_BATCH).min(MAX_BATCH);
        let candidates = state.store.held_files(&roots, from_id, batch_size)?;
        let Some(last) = candidates.last() else {
            read_all = true;
            break;
        };
        from_id = last.id + 1;
        let mut present = Vec::new();
        let mut vanished: Vec<(PathBuf, WatchMode)> = Vec::new();
        for file in &candidates {
            let Some((_, mode)) = watches.iter().find(|(root, _)| *root == file.watch_root) else {
                left_held.push(file.id);
                continue;
            };
            match still_there(file, *mode) {
                Presence::Unchanged(detected) => present.push(detected),
                Presence::Changed => left_held.push(file.id),
                Presence::Gone => vanished.push((file.path.clone(), *mode)),
            }
        }
        for mode in [WatchMode::Consume, WatchMode::Index] {
            let paths: Vec<PathBuf> = vanished
                .iter()
                .filter(|(_, file_mode)| *file_mode == mode)
                .map(|(path, _)| path.clone())
                .collect();
            if !paths.is_empty() {
                let marked = state.store.mark_gone(&paths, mode)?;
                for file in &marked {
                    state.note_gone(file);
                }
                gone += marked.len();
            }
        }
        if !present.is_empty() {
            let detections = state.store.record_detected_files(
                &present,
                state.max_attempts,
                state.max_pending,
            )?;
            for (file, detection) in present.iter().zip(&detections) {
                state.note_recorded(file, detection);
                if detection.is_held() {
                    // It lost its place to someone else meanwhile (a job retried by hand,
                    // say): still held.
                    left_held.push(detection.file_id);
                }
            }
            queued.extend(detections.into_iter().filter(|detection| detection.new));
        }
        if candidates.len() < batch_size {
            read_all = true;
            break;
        }
    }
    if let HeldTally::Known { count, .. } = state.held {
        let first_left = left_held.iter().copied().min();
        state.held = if read_all {
            // This look read every held file, so it knows their number from the database.
            let counted = left_held.len() as u64;
            if count != counted {
                tracing::warn!(
                    counted,
                    followed = count,
                    "{counted} files are held, not {count} as followed: the count is corrected"
                );
            }
            HeldTally::Known {
                count: counted,
                from_id: first_left.unwrap_or(i64::MAX),
            }
        } else {
            HeldTally::Known {
                count,
                from_id: first_left.map_or(from_id, |first| first.min(from_id)),
            }
        };
    }
    if state.held == HeldTally::Unknown {
        state.held = HeldTally::counted(state.store.count_held_files(&roots, 0)?);
    }
    let HeldTally::Known { count: held, .. } = state.held else {
        unreachable!("counted above");
    };
    Ok(RecorderReport::HeldChecked { queued, gone, held })
}

/// What a held file's path holds now.
enum Presence {
    /// The version recorded, ready to be queued.
    Unchanged(DetectedFile),
    /// Another version of a regular file.
    Changed,
    /// No regular file any more.
    Gone,
}

fn still_there(file: &FileRecord, mode: WatchMode) -> Presence {
    match std::fs::symlink_metadata(&file.path) {
        Ok(metadata) if metadata.is_file() => {
            let version = crate::walk::FileVersion::from_metadata(file.path.clone(), &metadata);
            if (version.size, version.mtime_ns, version.inode)
                != (file.size, file.mtime_ns, file.inode)
            {
                return Presence::Changed;
            }
            Presence::Unchanged(DetectedFile {
                watch_root: file.watch_root.clone(),
                path: file.path.clone(),
                mode,
                size: file.size,
                mtime_ns: file.mtime_ns,
                inode: file.inode,
            })
        }
        Ok(_) => Presence::Gone,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Presence::Gone,
        // Unreadable for now (permissions, I/O): neither queued nor gone; looked at again.
        Err(_) => Presence::Changed,
    }
}

/// Commits one batch, retrying a failed commit with a growing pause (a long write by another
/// process can outlast the busy timeout).
fn record_batch(
    store: &mut Store,
    batch: &[DetectedFile],
    max_attempts: u32,
    max_pending: u32,
) -> RecorderReport {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match store.record_detected_files(batch, max_attempts, max_pending) {
            Ok(detections) => {
                return RecorderReport::Recorded {
                    detections,
                    elapsed: started.elapsed(),
                };
            }
            Err(error @ FileError::InvalidArgument(_)) => {
                // Cannot happen for files the monitor built; retrying would not help.
                return RecorderReport::Failed(format!(
                    "{} files not recorded: {error}",
                    batch.len()
                ));
            }
            Err(error) if attempt >= COMMIT_ATTEMPTS => {
                return RecorderReport::NotRecorded {
                    paths: batch.iter().map(|file| file.path.clone()).collect(),
                    error: format!("{error} (tried {attempt} times)"),
                };
            }
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    attempt,
                    files = batch.len(),
                    "cannot record {} (attempt {attempt} of {COMMIT_ATTEMPTS}): {error}; trying \
                     again in {pause:?}",
                    describe_batch(batch)
                );
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// "a/b.pdf", or "a/b.pdf and 3 more files", for messages about a batch.
pub fn describe_batch(batch: &[DetectedFile]) -> String {
    describe_paths(
        &batch
            .iter()
            .map(|file| file.path.clone())
            .collect::<Vec<_>>(),
    )
}

/// "a/b.pdf", or "a/b.pdf and 3 more files".
pub fn describe_paths(paths: &[PathBuf]) -> String {
    match paths {
        [] => "no files".to_owned(),
        [only] => only.display().to_string(),
        [first, rest @ ..] => format!(
            "{} and {} more file{}",
            first.display(),
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// How many recorded paths a sweep reads (and checks) at a time.
const SWEEP_PAGE: usize = 1000;

/// Marks recorded files at or under `prefix` that are no longer regular files as gone, a page
/// of paths at a time (in path order), so its memory does not grow with the tree.
fn sweep(
    state: &mut RecorderState,
    prefix: &std::path::Path,
    mode: WatchMode,
) -> Result<usize, FileError> {
    let mut gone = 0;
    let mut after: Option<PathBuf> = None;
    loop {
        let page = state
            .store
            .present_files_under_page(prefix, after.as_deref(), SWEEP_PAGE)?;
        let more = page.len() == SWEEP_PAGE;
        after = page.last().cloned();
        let vanished: Vec<PathBuf> = page
            .into_iter()
            .filter(|path| {
                !std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_file())
            })
            .collect();
        if !vanished.is_empty() {
            let marked = state.store.mark_gone(&vanished, mode)?;
            for file in &marked {
                state.note_gone(file);
            }
            gone += marked.len();
        }
        if !more {
            return Ok(gone);
        }
    }
}
