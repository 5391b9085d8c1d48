//! How the monitor finds files: reconciling a tree with the database (walks), files that
//! become ready from watcher events, the quiet period before a file counts as complete, and
//! handing complete versions to the recorder. A second `impl Monitor` beside the main loop's.

use super::*;

/// At most how many files with names that are not UTF-8 the monitor remembers having
/// reported, so a folder full of them cannot grow its memory without bound.
const MAX_REPORTED_NAMES: usize = 10_000;

impl Monitor {
    pub(super) fn reconcile_all(&mut self, reason: &'static str) {
        for index in 0..self.watches.len() {
            let root = self.watches[index].config.path.clone();
            self.reconcile(index, root, reason);
        }
    }

    /// Walks `scope` of watch `index` now, or after the walk in progress there.
    pub(super) fn reconcile(&mut self, index: usize, scope: PathBuf, reason: &'static str) {
        let watch = &mut self.watches[index];
        if watch.walking.is_some() {
            let root = &watch.config.path;
            // A queued walk of the whole folder covers every narrower one.
            let covered = watch
                .queued_scopes
                .iter()
                .any(|(queued, _)| queued == root || scope.starts_with(queued));
            if !covered {
                if scope == *root {
                    watch.queued_scopes.clear();
                }
                watch.queued_scopes.push_back((scope, reason));
            }
            return;
        }
        watch.walking = Some(scope.clone());
        let root = watch.config.path.clone();
        let rules = watch.config.ignore.clone();
        let recursive = watch.config.recursive;
        let sender = self.internal_sender.clone();
        let generation = self.generation;
        let budget = self.walk_budget.clone();
        tracing::debug!(path = %scope.display(), reason, "reconcile started");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let summary = walk(&root, &scope, &rules, recursive, |files| {
                // Wait for the recorder to catch up (see `WalkBudget`); a stopping monitor
                // takes no more files.
                let Some(ticket) = budget.take(|| sender.is_closed()) else {
                    return ControlFlow::Break(());
                };
                match sender.send(Internal::WalkChunk {
                    generation,
                    watch: index,
                    files,
                    ticket,
                }) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            });
            let _ = sender.send(Internal::WalkDone {
                generation,
                watch: index,
                scope,
                reason,
                summary,
                elapsed: started.elapsed(),
            });
        });
    }

    pub(super) fn reconcile_later(&self, index: usize, scope: PathBuf, delay: Duration) {
        let sender = self.internal_sender.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sender.send(Internal::DelayedWalk {
                generation,
                watch: index,
                scope,
            });
        });
    }

    /// A file closed after writing or moved in: record it now if it is one we want.
    pub(super) fn file_ready(&mut self, index: usize, path: &Path) {
        let config = &self.watches[index].config;
        if !is_wanted(&config.path, path, &config.ignore, config.recursive) {
            return;
        }
        let Ok(metadata) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !metadata.is_file() {
            return;
        }
        self.pending.remove(path);
        self.record(
            index,
            FileVersion::from_metadata(path.to_path_buf(), &metadata),
        );
    }

    /// A file found by a walk: old enough to be complete, or pending until it is quiet.
    pub(super) fn consider_walked(&mut self, index: usize, version: FileVersion) {
        let quiet_period = self.watches[index].config.quiet_period;
        if !self.watches[index].watcher.is_polling() && age_of(version.mtime_ns) >= quiet_period {
            self.record(index, version);
        } else {
            self.make_pending(index, version);
        }
    }

    pub(super) fn make_pending(&mut self, index: usize, version: FileVersion) {
        let config = &self.watches[index].config;
        if version.path.to_str().is_none()
            || !is_wanted(
                &config.path,
                &version.path,
                &config.ignore,
                config.recursive,
            )
        {
            return;
        }
        let observed_at = Instant::now();
        self.pending
            .entry(version.path.clone())
            .and_modify(|pending| {
                if pending.version != version {
                    pending.version = version.clone();
                    pending.observed_at = observed_at;
                }
            })
            .or_insert(PendingFile {
                watch: index,
                version,
                observed_at,
            });
    }

    /// Records pending files whose size and mtime stayed the same for the quiet period.
    pub(super) fn check_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut vanished = Vec::new();
        for (path, pending) in &mut self.pending {
            let quiet_period = self.watches[pending.watch].config.quiet_period;
            let quiet_long_enough = now.duration_since(pending.observed_at) >= quiet_period
                || age_of(pending.version.mtime_ns) >= quiet_period;
            if !quiet_long_enough {
                continue;
            }
            match std::fs::symlink_metadata(path) {
                Ok(metadata) if metadata.is_file() => {
                    let current = FileVersion::from_metadata(path.clone(), &metadata);
                    if current == pending.version {
                        ready.push(path.clone());
                    } else {
                        pending.version = current;
                        pending.observed_at = now;
                    }
                }
                _ => vanished.push(path.clone()),
            }
        }
        for path in vanished {
            self.pending.remove(&path);
        }
        for path in ready {
            if let Some(pending) = self.pending.remove(&path) {
                self.record(pending.watch, pending.version);
            }
        }
    }

    /// Hands a ready file to the recorder, if the watch wants it.
    pub(super) fn record(&mut self, index: usize, version: FileVersion) {
        let config = &self.watches[index].config;
        if !is_wanted(
            &config.path,
            &version.path,
            &config.ignore,
            config.recursive,
        ) {
            return;
        }
        if version.path.to_str().is_none() {
            self.skip_unusable_name(version.path);
            return;
        }
        let file = DetectedFile {
            watch_root: config.path.clone(),
            path: version.path,
            mode: config.mode,
            size: version.size,
            mtime_ns: version.mtime_ns,
            inode: version.inode,
        };
        self.send_to_recorder(RecorderCommand::Record(file));
    }

    /// Skips a file whose name is not UTF-8 (the database and the job payload carry names
    /// as text). Each such file is reported once by this process, naming it and what to do,
    /// rather than on every walk and event; a renamed file is picked up like any other. The
    /// set is bounded: past [`MAX_REPORTED_NAMES`] the walks' counts still say how many.
    pub(super) fn skip_unusable_name(&mut self, path: PathBuf) {
        if self.unusable_names.len() >= MAX_REPORTED_NAMES || self.unusable_names.contains(&path) {
            return;
        }
        tracing::warn!(
            path = %path.display(),
            "skipping {}: its name is not valid UTF-8, which sluice cannot record; rename it \
             and it is picked up (this is said once per file until the monitor restarts)",
            path.display()
        );
        self.unusable_names.insert(path);
    }

    pub(super) fn send_to_recorder(&self, command: RecorderCommand) {
        if let Some(recorder) = &self.recorder {
            recorder.send(command);
        }
    }

    pub(super) fn finish_walk(
        &mut self,
        index: usize,
        scope: PathBuf,
        reason: &'static str,
        summary: WalkSummary,
        elapsed: Duration,
    ) {
        let Some(watch) = self.watches.get_mut(index) else {
            return;
        };
        watch.walking = None;
        let mode = watch.config.mode;
        let next = watch.queued_scopes.pop_front();
        tracing::info!(
            path = %scope.display(),
            reason,
            files = summary.files,
            directories = summary.directories,
            errors = summary.errors,
            skipped_non_utf8 = summary.skipped_non_utf8,
            elapsed_ms = elapsed.as_millis() as u64,
            "reconcile walk finished for {} ({reason}): {} files in {} directories, {} errors, \
             {} ms",
            scope.display(),
            summary.files,
            summary.directories,
            summary.errors,
            elapsed.as_millis()
        );
        for path in summary.non_utf8 {
            self.skip_unusable_name(path);
        }
        // The store records UTF-8 paths only, so nothing it holds lies under a folder whose
        // name is not UTF-8 (one a rescan named, or one moved in): there is nothing to mark
        // gone, and the store would refuse the prefix as an error on every walk.
        if scope.to_str().is_some() {
            self.send_to_recorder(RecorderCommand::Sweep {
                prefix: scope,
                mode,
            });
        }
        if let Some((scope, reason)) = next {
            self.reconcile(index, scope, reason);
        }
    }
}
