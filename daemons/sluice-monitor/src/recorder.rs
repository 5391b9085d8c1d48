//! The recorder: one thread that owns the monitor's database connection and commits detected
//! files in batches, so the main loop never blocks on SQLite.
//!
//! Batching is group commit: the thread takes the first waiting file, then every file that
//! queued up behind it (at most [`MAX_BATCH`]), and commits them in one transaction. A lone
//! file is committed at once; a burst of thousands goes out in a few large commits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_core::config::WatchMode;
use sluice_core::store::{DetectedFile, Detection, FileError, Store};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

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
    /// Starts the thread with its own store connection; reports go to `reports`.
    pub fn start(
        store: Store,
        max_attempts: u32,
        reports: impl Fn(RecorderReport) + Send + 'static,
    ) -> std::io::Result<Recorder> {
        let (commands, receiver) = unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || record_loop(store, max_attempts, receiver, reports))?;
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

fn record_loop(
    mut store: Store,
    max_attempts: u32,
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
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(RecorderCommand::Record(file)) => batch.push(file),
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                reports(record_batch(&mut store, &batch, max_attempts));
            }
            RecorderCommand::Sweep { prefix, mode } => {
                reports(match sweep(&mut store, &prefix, mode) {
                    Ok(gone) => RecorderReport::Swept { prefix, gone },
                    Err(error) => RecorderReport::Failed(format!(
                        "cannot mark vanished files under {} as gone: {error}",
                        prefix.display()
                    )),
                });
            }
            RecorderCommand::Count => {
                reports(match store.file_counts() {
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
        }
    }
}

/// Commits one batch, retrying a failed commit with a growing pause (a long write by another
/// process can outlast the busy timeout).
fn record_batch(store: &mut Store, batch: &[DetectedFile], max_attempts: u32) -> RecorderReport {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match store.record_detected_files(batch, max_attempts) {
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

/// Marks recorded files at or under `prefix` that are no longer regular files as gone.
fn sweep(store: &mut Store, prefix: &std::path::Path, mode: WatchMode) -> Result<usize, FileError> {
    let vanished: Vec<PathBuf> = store
        .present_files_under(prefix)?
        .into_iter()
        .filter(|path| !std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_file()))
        .collect();
    if vanished.is_empty() {
        return Ok(0);
    }
    Ok(store.mark_gone(&vanished, mode)?.len())
}
