//! The scraper's side of bundles: recording one (after resolving an `hf://` name through the
//! Hub), settling a running one when its files have ended (placing its folder into the inbox,
//! or failing it and stopping its other files), cancelling and deleting one. The files
//! themselves are ordinary download jobs ([`crate::transfer`]); a finished file waits in the
//! bundle's folder in staging ([`inbox::place_in_bundle_folder`]).
//!
//! Settling runs after every download task ends, at start and at every poll, so a bundle whose
//! last file ended in another process's change (a cancel through the web API) or before a
//! kill is settled too; placing is recorded before and after the rename, so it happens once.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use futures_util::FutureExt;
use sluice_core::bus::{BusError, Reply, ScraperService, path_to_bytestring};
use sluice_core::config::Config;
use sluice_core::policy::{NewBundle, SubmitRules, is_hf_reference, parse_hf_reference};
use sluice_core::store::downloads::DOWNLOAD_JOB_KIND;
use sluice_core::store::{BundleState, BundleVerdict, Download, DownloadError};

use tokio::sync::mpsc;

use crate::store_thread::StoreHandle;
use crate::transfer::{StopRequest, TransferSettings};
use crate::{Scraper, bus_error, hf, inbox};

/// At most this many `hf://` names are resolved at once; another `AddBundle` of one is
/// answered "busy" until one ends (each holds a task and a connection to the Hub).
pub const MAX_RESOLVING: usize = 4;

/// What recording a bundle needs, apart from the loop: a resolution runs in a task of its
/// own with this, so a Hub that answers slowly never holds the main loop.
#[derive(Clone)]
pub(crate) struct BundleRecorder {
    pub store: StoreHandle,
    pub service: Arc<ScraperService>,
    pub client: reqwest::Client,
    pub config: Config,
    /// Wakes the loop to claim the new bundle's files.
    pub wake: mpsc::Sender<()>,
}

impl BundleRecorder {
    /// Resolves an `hf://` name through the Hub into the files of one commit, then records
    /// the bundle like any other.
    async fn resolve_and_record(self, bundle: NewBundle) -> Result<u64, BusError> {
        let reference = parse_hf_reference(&bundle.name)?;
        let scraper = &self.config.scraper;
        let hub = hf::Hub {
            client: &self.client,
            endpoint: &scraper.hf_endpoint,
            credentials_file: scraper.hf_credentials_file.as_deref(),
            allow_private_addresses: scraper.allow_private_addresses,
            request_timeout: scraper.request_timeout,
        };
        let resolved = hf::resolve(&hub, &reference).await.map_err(|error| {
            tracing::warn!(error = %error, "bundle {} refused: {error}", bundle.name);
            BusError::InvalidArgument(error)
        })?;
        tracing::info!(
            commit = %resolved.commit,
            files = resolved.files.len(),
            "{} resolved to commit {} with {} files",
            bundle.name,
            resolved.commit,
            resolved.files.len()
        );
        let bundle = NewBundle {
            name: reference.folder_name(),
            files: resolved.files,
            origin: Some(reference.to_uri(&resolved.commit)),
            revision: Some(resolved.commit),
            max_attempts: None,
        };
        let id = self.record(bundle).await?;
        // A full channel already holds a wake-up.
        let _ = self.wake.try_send(());
        Ok(id)
    }

    /// Checks the bundle with the policy and records it whole under `[scraper] max_pending`,
    /// announcing its jobs.
    async fn record(&self, mut bundle: NewBundle) -> Result<u64, BusError> {
        bundle.max_attempts = Some(self.config.jobs.max_attempts);
        let rules = SubmitRules {
            allow_private_addresses: self.config.scraper.allow_private_addresses,
            max_download_size: self.config.scraper.max_download_size,
        };
        let valid = bundle.validate(&rules)?;
        let max_pending = self.config.scraper.max_pending;
        let name = valid.name().to_owned();
        let created = self
            .store
            .call(move |store| store.create_bundle_within_limit(&valid, max_pending))
            .await
            .map_err(|error| {
                if let Some(full) = error.queue_full() {
                    tracing::warn!("bundle {name} refused: {full}");
                }
                bus_error(error)
            })?;
        tracing::info!(
            bundle_id = created.bundle_id,
            "bundle {} ({}) queued with {} files",
            created.bundle_id,
            bundle.name,
            created.job_ids.len()
        );
        for job_id in &created.job_ids {
            let _ = self
                .service
                .job_queued(DOWNLOAD_JOB_KIND, *job_id as u64)
                .await;
        }
        Ok(created.bundle_id as u64)
    }
}

impl Scraper {
    fn bundle_recorder(&self) -> BundleRecorder {
        BundleRecorder {
            store: self.store.clone(),
            service: Arc::clone(&self.service),
            client: self.context.client.clone(),
            config: self.reloader.current().clone(),
            wake: self.wake.clone(),
        }
    }

    /// `AddBundle`. A list of files is checked and recorded at once; an `hf://` name is
    /// resolved through the Hub in a task of its own (at most [`MAX_RESOLVING`] at once),
    /// which answers the caller when the Hub has answered or `request_timeout` has passed.
    pub(crate) async fn add_bundle(&mut self, bundle: NewBundle, reply: Reply<u64>) {
        if !is_hf_reference(&bundle.name) {
            let result = self.bundle_recorder().record(bundle).await;
            if result.is_ok() {
                self.claim().await;
            }
            let _ = reply.send(result);
            return;
        }
        if let Err(error) = parse_hf_reference(&bundle.name) {
            let _ = reply.send(Err(error.into()));
            return;
        }
        self.resolving.retain(|task| !task.is_finished());
        if self.resolving.len() >= MAX_RESOLVING {
            let _ = reply.send(Err(BusError::Busy(format!(
                "{MAX_RESOLVING} hf:// bundles are being resolved already; try again shortly"
            ))));
            return;
        }
        let recorder = self.bundle_recorder();
        let name = bundle.name.clone();
        tracing::info!("resolving {name} through the Hub");
        self.resolving.push(tokio::spawn(async move {
            let resolved = AssertUnwindSafe(recorder.resolve_and_record(bundle))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let error =
                        format!("resolving {name} failed: {}", crate::panic_message(&*panic));
                    tracing::error!("{error}");
                    Err(BusError::Internal(error))
                });
            let _ = reply.send(resolved);
        }));
    }

    /// `CancelBundle`: the bundle and its waiting files are cancelled in the store, running
    /// files are stopped here at once, and the bundle's folder in staging is removed.
    pub(crate) async fn cancel_bundle(&mut self, bundle_id: i64) -> Result<(), BusError> {
        let (bundle, running) = self
            .store
            .call(move |store| store.cancel_bundle(bundle_id))
            .await
            .map_err(bus_error)?;
        self.stop_files(&running);
        self.remove_bundle_staging(bundle_id);
        self.announce_bundle(bundle_id, BundleState::Cancelled, "")
            .await;
        tracing::info!(
            bundle_id,
            "bundle {bundle_id} ({}) cancelled on request",
            bundle.name
        );
        Ok(())
    }

    /// `DeleteBundle`: cancels a running bundle, then, once its running files stopped
    /// ([`Scraper::forget_once_stopped`]), forgets it and its downloads, and removes its
    /// folder in staging and, if it succeeded, its folder in the inbox (`final_path`) with
    /// whatever is still in it (files the monitor already moved to the library in consume
    /// mode are not touched).
    pub(crate) async fn delete_bundle(&mut self, bundle_id: i64, reply: Reply<()>) {
        let stopping = self.stop_bundle_for_delete(bundle_id).await;
        let store = self.store.clone();
        let settings = Arc::clone(&self.context.settings);
        self.forget_once_stopped(stopping, reply, async move {
            forget_bundle(&store, &settings, bundle_id).await
        });
    }

    /// Cancels the bundle if it runs; returns how to wait for its files that still run.
    async fn stop_bundle_for_delete(
        &mut self,
        bundle_id: i64,
    ) -> Result<Vec<crate::Stopping>, BusError> {
        let bundle = self
            .store
            .call(move |store| store.get_bundle(bundle_id))
            .await
            .map_err(bus_error)?;
        if bundle.state == BundleState::Running {
            self.cancel_bundle(bundle_id).await?;
        }
        let files = self
            .store
            .call(move |store| store.bundle_files(bundle_id))
            .await
            .map_err(bus_error)?;
        Ok(files
            .iter()
            .filter_map(|file| self.stopping(file.id))
            .collect())
    }

    /// Places every running bundle whose files all succeeded, and fails every one with a file
    /// that failed or was cancelled.
    pub(crate) async fn settle_bundles(&mut self) {
        let settle = self.store.call(|store| store.bundles_to_settle()).await;
        let settle = match settle {
            Ok(settle) => settle,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the running bundles: {error}");
                return;
            }
        };
        for (bundle, verdict) in settle {
            let bundle_id = bundle.id;
            match verdict {
                BundleVerdict::Failed { error } => {
                    let message = error.clone();
                    let running = self
                        .store
                        .call(move |store| {
                            store.finish_bundle(bundle_id, BundleState::Failed, Some(&message))
                        })
                        .await;
                    match running {
                        Ok(running) => {
                            self.stop_files(&running);
                            self.remove_bundle_staging(bundle_id);
                            self.announce_bundle(bundle_id, BundleState::Failed, "")
                                .await;
                            tracing::error!(
                                bundle_id,
                                "bundle {bundle_id} ({}) failed: {error}; nothing of it was \
                                 placed in the inbox",
                                bundle.name
                            );
                            self.last_error = Some(format!(
                                "bundle {bundle_id} ({}) failed: {error}",
                                bundle.name
                            ));
                        }
                        Err(error) => tracing::error!(
                            error = %error,
                            "cannot record bundle {bundle_id} as failed: {error}"
                        ),
                    }
                }
                BundleVerdict::Complete { target } => {
                    self.place_bundle(bundle_id, &bundle.name, target).await;
                }
            }
        }
    }

    async fn place_bundle(&mut self, bundle_id: i64, name: &str, target: Option<String>) {
        let staging = self.context.settings.staging.clone();
        let inbox_path = self.context.settings.inbox.clone();
        let store = self.store.clone();
        let folder_name = name.to_owned();
        let placed = tokio::task::spawn_blocking(move || {
            inbox::place_bundle_in_inbox(&staging, &inbox_path, bundle_id, &folder_name, |path| {
                let text = path.to_string_lossy().into_owned();
                store
                    .call_blocking(move |store| store.set_bundle_target(bundle_id, &text))
                    .map_err(|error| error.to_string())
            })
        })
        .await;
        let final_path = match placed {
            Ok(Ok(Some(path))) => path.to_string_lossy().into_owned(),
            // Not in staging: an earlier process renamed it and was killed before recording
            // that; the recorded target holds it.
            Ok(Ok(None)) => match target {
                Some(target) if Path::new(&target).is_dir() => target,
                _ => {
                    let error = format!(
                        "the folder of bundle {bundle_id} is neither in staging nor in the inbox"
                    );
                    let message = error.clone();
                    let _ = self
                        .store
                        .call(move |store| {
                            store.finish_bundle(bundle_id, BundleState::Failed, Some(&message))
                        })
                        .await;
                    tracing::error!(bundle_id, "bundle {bundle_id} ({name}) failed: {error}");
                    return;
                }
            },
            Ok(Err(error)) => {
                tracing::error!(
                    bundle_id,
                    error = %error,
                    "cannot move bundle {bundle_id} ({name}) into the inbox: {error}; trying again later"
                );
                self.last_error = Some(format!(
                    "cannot move bundle {bundle_id} into the inbox: {error}"
                ));
                return;
            }
            Err(error) => {
                tracing::error!(error = %error, "bundle {bundle_id}: the moving task failed: {error}");
                return;
            }
        };
        let finished = self
            .store
            .call(move |store| store.finish_bundle(bundle_id, BundleState::Succeeded, None))
            .await;
        match finished {
            Ok(_) => {
                self.announce_bundle(bundle_id, BundleState::Succeeded, &final_path)
                    .await;
                tracing::info!(
                    bundle_id,
                    path = %final_path,
                    "bundle {bundle_id} ({name}) complete: placed as {final_path}"
                );
            }
            Err(error) => tracing::error!(
                error = %error,
                "bundle {bundle_id} was placed as {final_path} but cannot be recorded: {error}"
            ),
        }
    }

    /// Removes `staging/bundle-ID` folders whose bundle is not running.
    pub(crate) async fn sweep_bundle_folders(&mut self) {
        let staging = self.context.settings.staging.clone();
        let Ok(entries) = std::fs::read_dir(&staging) else {
            return;
        };
        let ids: Vec<i64> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.strip_prefix("bundle-"))
                    .and_then(|id| id.parse().ok())
            })
            .collect();
        for bundle_id in ids {
            let state = self
                .store
                .call(move |store| store.get_bundle(bundle_id).map(|bundle| bundle.state))
                .await;
            let stale = match state {
                Ok(state) => state != BundleState::Running,
                Err(DownloadError::BundleNotFound(_)) => true,
                Err(_) => false,
            };
            if stale {
                tracing::info!(
                    bundle_id,
                    "removing the staging folder of bundle {bundle_id}, which is no longer running"
                );
                self.remove_bundle_staging(bundle_id);
            }
        }
    }

    /// Emits `BundleFinished`.
    async fn announce_bundle(&mut self, bundle_id: i64, state: BundleState, path: &str) {
        if let Err(error) = self
            .service
            .bundle_finished(
                bundle_id as u64,
                state.as_str(),
                &path_to_bytestring(Path::new(path)),
            )
            .await
        {
            tracing::warn!(error = %error, "cannot emit BundleFinished for bundle {bundle_id}: {error}");
        }
    }

    fn stop_files(&self, running: &[Download]) {
        for file in running {
            if let Some(job_id) = self.active_for_download(file.id)
                && let Some(active) = self.active.get(&job_id)
            {
                let _ = active.stop.send(StopRequest::Cancel);
            }
        }
    }

    fn remove_bundle_staging(&self, bundle_id: i64) {
        remove_bundle_staging(&self.context.settings, bundle_id);
    }
}

fn remove_bundle_staging(settings: &TransferSettings, bundle_id: i64) {
    let folder = settings.staging.join(inbox::bundle_folder_name(bundle_id));
    if let Err(error) = inbox::remove_folder(&folder) {
        tracing::warn!(
            error = %error,
            "cannot remove the staging folder {} of bundle {bundle_id}: {error}",
            folder.display()
        );
    }
}

/// The end of `DeleteBundle`, once no file of the bundle runs: forgets the bundle and its
/// downloads and removes what it left in staging and the inbox.
async fn forget_bundle(
    store: &StoreHandle,
    settings: &TransferSettings,
    bundle_id: i64,
) -> Result<(), BusError> {
    let (bundle, files) = store
        .call(move |store| store.delete_bundle(bundle_id))
        .await
        .map_err(bus_error)?;
    for file in &files {
        crate::remove_part(settings, file.id);
    }
    remove_bundle_staging(settings, bundle_id);
    let mut removed = String::new();
    if bundle.state == BundleState::Succeeded
        && let Some(folder) = &bundle.final_path
    {
        let folder = Path::new(folder);
        // Only a folder directly in the inbox is the bundle's own.
        if folder.parent() == Some(settings.inbox.as_path()) {
            match inbox::remove_folder(folder) {
                Ok(()) => removed = format!("; folder {} removed", folder.display()),
                Err(error) => tracing::warn!(
                    error = %error,
                    "bundle {bundle_id}: cannot remove {}: {error}",
                    folder.display()
                ),
            }
        }
    }
    tracing::info!(
        bundle_id,
        "bundle {bundle_id} ({}) deleted (it was {}){removed}",
        bundle.name,
        bundle.state
    );
    Ok(())
}
