//! `org.sluice.Scraper1`: the scraper's object — downloads on request, sources scraped on
//! demand, and the progress of both as signals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Connection, OwnedVariant, Variant, interface};

use super::rate_limit::{ProgressRateLimiter, clamp_fraction, lock_limiter};
use super::validate::require_id;
use super::{
    BusError, BusSetupError, COMMAND_QUEUE_DEPTH, CallerPolicy, DaemonState, Reply, forward,
    serve_and_own_name,
};
use crate::policy;

pub const SCRAPER_BUS_NAME: &str = "org.sluice.Scraper1";
pub const SCRAPER_OBJECT_PATH: &str = "/org/sluice/Scraper1";

/// The options `AddDownload` accepts in its `a{sv}` argument; any other key is refused.
///
/// | key | type | meaning |
/// |---|---|---|
/// | `sha256` | s | expected SHA-256 (64 hex digits); a mismatch fails the download |
/// | `bundle` | s | put the file in this bundle's sub-folder |
/// | `file_name` | s | name of the file in the inbox instead of the one from the URL |
/// | `max_bytes` | t | size limit for this download, below the configured one |
/// | `source` | s | the configured source this download belongs to (must exist) |
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadOptions {
    pub sha256: Option<String>,
    pub bundle: Option<String>,
    pub file_name: Option<String>,
    pub max_bytes: Option<u64>,
    pub source: Option<String>,
}

impl DownloadOptions {
    /// Parses and checks the options dictionary of `AddDownload`.
    pub fn from_variants(options: &HashMap<String, OwnedVariant>) -> Result<Self, BusError> {
        let mut parsed = DownloadOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "sha256" => {
                    parsed.sha256 = Some(policy::check_sha256(option_text(key, value)?)?);
                }
                "bundle" => {
                    let bundle = option_text(key, value)?;
                    policy::check_bundle_name(bundle)?;
                    parsed.bundle = Some(bundle.to_owned());
                }
                "file_name" => {
                    let file_name = option_text(key, value)?;
                    policy::check_file_name("file_name", file_name)?;
                    parsed.file_name = Some(file_name.to_owned());
                }
                "max_bytes" => {
                    let max_bytes = u64::try_from(value).map_err(|_| {
                        BusError::InvalidArgument(format!(
                            "option max_bytes must be of type t (uint64), not {}",
                            value.value_signature()
                        ))
                    })?;
                    policy::check_max_bytes(max_bytes)?;
                    parsed.max_bytes = Some(max_bytes);
                }
                "source" => {
                    let source = option_text(key, value)?;
                    policy::check_source_name(source)?;
                    parsed.source = Some(source.to_owned());
                }
                unknown => {
                    let mut known = ["bundle", "file_name", "max_bytes", "sha256", "source"];
                    known.sort_unstable();
                    return Err(BusError::InvalidArgument(format!(
                        "unknown option {unknown:?}; known options: {}",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// The options as the `a{sv}` dictionary `AddDownload` takes, for callers using the proxy.
    pub fn to_variants(&self) -> HashMap<String, OwnedVariant> {
        let mut options = HashMap::new();
        let mut put = |key: &str, value: Variant<'_>| {
            // Strings and integers never hold file descriptors, so this cannot fail.
            if let Ok(owned) = value.try_into_owned() {
                options.insert(key.to_owned(), owned);
            }
        };
        if let Some(sha256) = &self.sha256 {
            put("sha256", Variant::from(sha256.as_str()));
        }
        if let Some(bundle) = &self.bundle {
            put("bundle", Variant::from(bundle.as_str()));
        }
        if let Some(file_name) = &self.file_name {
            put("file_name", Variant::from(file_name.as_str()));
        }
        if let Some(max_bytes) = self.max_bytes {
            put("max_bytes", Variant::from(max_bytes));
        }
        if let Some(source) = &self.source {
            put("source", Variant::from(source.as_str()));
        }
        options
    }
}

/// What the scraper's main loop is asked to do.
#[derive(Debug)]
pub enum ScraperCommand {
    /// Record a download and queue its job; the reply is `(download_id, job_id)`.
    AddDownload {
        url: String,
        options: DownloadOptions,
        reply: Reply<(u64, u64)>,
    },
    CancelDownload {
        download_id: u64,
        reply: Reply<()>,
    },
    /// Cancel if needed, then remove the download's row and its partial file.
    DeleteDownload {
        download_id: u64,
        reply: Reply<()>,
    },
    /// Queue a scrape of the named source now; the reply is the job id.
    ScrapeNow {
        source: String,
        reply: Reply<u64>,
    },
}

/// The scraper's state as its properties show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScraperStatus {
    pub state: DaemonState,
    pub status: String,
    pub last_error: String,
    /// Names of the configured sources.
    pub sources: Vec<String>,
    /// Where `.part` files are written before the rename into the inbox.
    pub staging_path: String,
    pub downloads_active: u32,
    pub downloads_done: u64,
    pub downloads_failed: u64,
    pub bytes_downloaded: u64,
}

impl ScraperStatus {
    pub fn starting(sources: Vec<String>, staging_path: &str) -> ScraperStatus {
        ScraperStatus {
            state: DaemonState::Starting,
            status: "starting".into(),
            last_error: String::new(),
            sources,
            staging_path: staging_path.to_owned(),
            downloads_active: 0,
            downloads_done: 0,
            downloads_failed: 0,
            bytes_downloaded: 0,
        }
    }
}

/// The object served at [`SCRAPER_OBJECT_PATH`]. Build it through [`ScraperService::start`].
#[derive(Debug)]
pub struct ScraperInterface {
    commands: mpsc::Sender<ScraperCommand>,
    status: watch::Receiver<ScraperStatus>,
    policy: CallerPolicy,
}

#[interface(
    name = "org.sluice.Scraper1",
    proxy(
        default_service = "org.sluice.Scraper1",
        default_path = "/org/sluice/Scraper1",
        async_name = "ScraperProxy"
    )
)]
impl ScraperInterface {
    /// Download `url` (http or https) into the inbox. `options` keys: sha256 (s), bundle (s),
    /// file_name (s), max_bytes (t), source (s).
    #[zbus(out_args("download_id", "job_id"))]
    async fn add_download(
        &self,
        url: &str,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(u64, u64), BusError> {
        self.policy
            .authorize(connection, &header, "AddDownload")
            .await?;
        policy::parse_download_url(url)?;
        let options = DownloadOptions::from_variants(&options)?;
        let url = url.to_owned();
        forward(&self.commands, |reply| ScraperCommand::AddDownload {
            url,
            options,
            reply,
        })
        .await
    }

    /// Stop a download; its row stays, in state cancelled.
    async fn cancel_download(
        &self,
        download_id: u64,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BusError> {
        self.policy
            .authorize(connection, &header, "CancelDownload")
            .await?;
        require_id("download_id", download_id)?;
        forward(&self.commands, |reply| ScraperCommand::CancelDownload {
            download_id,
            reply,
        })
        .await
    }

    /// Stop a download if it runs, then forget it and remove its partial file.
    async fn delete_download(
        &self,
        download_id: u64,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BusError> {
        self.policy
            .authorize(connection, &header, "DeleteDownload")
            .await?;
        require_id("download_id", download_id)?;
        forward(&self.commands, |reply| ScraperCommand::DeleteDownload {
            download_id,
            reply,
        })
        .await
    }

    /// Scrape the named source now instead of at its next scheduled time. Returns the job id.
    #[zbus(out_args("job_id"))]
    async fn scrape_now(
        &self,
        source: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<u64, BusError> {
        self.policy
            .authorize(connection, &header, "ScrapeNow")
            .await?;
        policy::check_source_name(source)?;
        let source = source.to_owned();
        forward(&self.commands, |reply| ScraperCommand::ScrapeNow {
            source,
            reply,
        })
        .await
    }

    /// A job was added to the queue.
    #[zbus(signal)]
    async fn job_queued(emitter: &SignalEmitter<'_>, kind: &str, job_id: u64) -> zbus::Result<()>;

    /// A job was claimed; `worker` names the process running it.
    #[zbus(signal)]
    async fn job_started(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        kind: &str,
        worker: &str,
    ) -> zbus::Result<()>;

    /// Progress of a running job, 0.0 to 1.0; at most one per job every 250 ms.
    #[zbus(signal)]
    async fn job_progress(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        fraction: f64,
        message: &str,
    ) -> zbus::Result<()>;

    /// A job reached `succeeded`, `failed`, `retrying`, `cancelled` or `dead`.
    #[zbus(signal)]
    async fn job_finished(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        state: &str,
    ) -> zbus::Result<()>;

    /// Bytes received so far of `total` (0 when unknown); rate-limited like `JobProgress`.
    #[zbus(signal)]
    async fn download_progress(
        emitter: &SignalEmitter<'_>,
        download_id: u64,
        bytes: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// A download ended in `state`; `path` is the file in the inbox, empty unless succeeded.
    #[zbus(signal)]
    async fn download_finished(
        emitter: &SignalEmitter<'_>,
        download_id: u64,
        state: &str,
        path: &str,
    ) -> zbus::Result<()>;

    /// `starting`, `running`, `reloading` or `stopping`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.status.borrow().state.as_str().to_owned()
    }

    /// What the scraper is doing, in one line.
    #[zbus(property)]
    fn status(&self) -> String {
        self.status.borrow().status.clone()
    }

    /// The last error, empty when there was none.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.status.borrow().last_error.clone()
    }

    /// Names of the configured sources.
    #[zbus(property)]
    fn sources(&self) -> Vec<String> {
        self.status.borrow().sources.clone()
    }

    /// The staging folder for partial downloads.
    #[zbus(property)]
    fn staging_path(&self) -> String {
        self.status.borrow().staging_path.clone()
    }

    /// Downloads transferring now.
    #[zbus(property)]
    fn downloads_active(&self) -> u32 {
        self.status.borrow().downloads_active
    }

    /// Downloads completed since start.
    #[zbus(property)]
    fn downloads_done(&self) -> u64 {
        self.status.borrow().downloads_done
    }

    /// Downloads that failed for good since start.
    #[zbus(property)]
    fn downloads_failed(&self) -> u64 {
        self.status.borrow().downloads_failed
    }

    /// Bytes received since start.
    #[zbus(property)]
    fn bytes_downloaded(&self) -> u64 {
        self.status.borrow().bytes_downloaded
    }
}

/// The daemon's side of the scraper object: publish status, emit signals (progress through
/// the rate limiter).
pub struct ScraperService {
    interface: InterfaceRef<ScraperInterface>,
    status: watch::Sender<ScraperStatus>,
    progress_limiter: Mutex<ProgressRateLimiter>,
}

impl std::fmt::Debug for ScraperService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `InterfaceRef` has no `Debug`; the object path is what identifies the service.
        formatter
            .debug_struct("ScraperService")
            .field("path", self.interface.signal_emitter().path())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl ScraperService {
    /// Serves the object and owns [`SCRAPER_BUS_NAME`]. `progress_interval` spaces progress
    /// signals per job or download (normally [`super::DEFAULT_PROGRESS_INTERVAL`]).
    pub async fn start(
        connection: &Connection,
        policy: CallerPolicy,
        initial_status: ScraperStatus,
        progress_interval: Duration,
    ) -> Result<(ScraperService, mpsc::Receiver<ScraperCommand>), BusSetupError> {
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (status_sender, status_receiver) = watch::channel(initial_status);
        let interface = ScraperInterface {
            commands: command_sender,
            status: status_receiver,
            policy,
        };
        let interface =
            serve_and_own_name(connection, SCRAPER_OBJECT_PATH, SCRAPER_BUS_NAME, interface)
                .await?;
        let service = ScraperService {
            interface,
            status: status_sender,
            progress_limiter: Mutex::new(ProgressRateLimiter::new(progress_interval)),
        };
        Ok((service, command_receiver))
    }

    pub fn status(&self) -> ScraperStatus {
        self.status.borrow().clone()
    }

    /// Changes the status and emits `PropertiesChanged` for each property that changed.
    pub async fn update_status(&self, change: impl FnOnce(&mut ScraperStatus)) -> zbus::Result<()> {
        let before = self.status();
        self.status.send_modify(change);
        let after = self.status();
        let interface = self.interface.get().await;
        let emitter = self.interface.signal_emitter();
        if before.state != after.state {
            interface.state_changed(emitter).await?;
        }
        if before.status != after.status {
            interface.status_changed(emitter).await?;
        }
        if before.last_error != after.last_error {
            interface.last_error_changed(emitter).await?;
        }
        if before.sources != after.sources {
            interface.sources_changed(emitter).await?;
        }
        if before.staging_path != after.staging_path {
            interface.staging_path_changed(emitter).await?;
        }
        if before.downloads_active != after.downloads_active {
            interface.downloads_active_changed(emitter).await?;
        }
        if before.downloads_done != after.downloads_done {
            interface.downloads_done_changed(emitter).await?;
        }
        if before.downloads_failed != after.downloads_failed {
            interface.downloads_failed_changed(emitter).await?;
        }
        if before.bytes_downloaded != after.bytes_downloaded {
            interface.bytes_downloaded_changed(emitter).await?;
        }
        Ok(())
    }

    pub async fn job_queued(&self, kind: &str, job_id: u64) -> zbus::Result<()> {
        ScraperInterface::job_queued(self.interface.signal_emitter(), kind, job_id).await
    }

    pub async fn job_started(&self, job_id: u64, kind: &str, worker: &str) -> zbus::Result<()> {
        ScraperInterface::job_started(self.interface.signal_emitter(), job_id, kind, worker).await
    }

    /// Emits `JobProgress` unless the rate limiter drops it; returns whether it was sent.
    pub async fn job_progress(
        &self,
        job_id: u64,
        fraction: f64,
        message: &str,
    ) -> zbus::Result<bool> {
        let fraction = clamp_fraction(fraction);
        let allowed = lock_limiter(&self.progress_limiter).allow_job_progress(
            job_id,
            fraction,
            Instant::now(),
        );
        if allowed {
            ScraperInterface::job_progress(
                self.interface.signal_emitter(),
                job_id,
                fraction,
                message,
            )
            .await?;
        }
        Ok(allowed)
    }

    pub async fn job_finished(&self, job_id: u64, state: &str) -> zbus::Result<()> {
        ScraperInterface::job_finished(self.interface.signal_emitter(), job_id, state).await
    }

    /// Emits `DownloadProgress` unless the rate limiter drops it; returns whether it was sent.
    pub async fn download_progress(
        &self,
        download_id: u64,
        bytes: u64,
        total: u64,
    ) -> zbus::Result<bool> {
        let allowed = lock_limiter(&self.progress_limiter).allow_download_progress(
            download_id,
            bytes,
            total,
            Instant::now(),
        );
        if allowed {
            ScraperInterface::download_progress(
                self.interface.signal_emitter(),
                download_id,
                bytes,
                total,
            )
            .await?;
        }
        Ok(allowed)
    }

    pub async fn download_finished(
        &self,
        download_id: u64,
        state: &str,
        path: &str,
    ) -> zbus::Result<()> {
        ScraperInterface::download_finished(
            self.interface.signal_emitter(),
            download_id,
            state,
            path,
        )
        .await
    }
}

fn option_text<'value>(key: &str, value: &'value OwnedVariant) -> Result<&'value str, BusError> {
    <&str>::try_from(value).map_err(|_| {
        BusError::InvalidArgument(format!(
            "option {key} must be of type s (string), not {}",
            value.value_signature()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(pairs: &[(&str, Variant<'_>)]) -> HashMap<String, OwnedVariant> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.try_to_owned().unwrap()))
            .collect()
    }

    #[test]
    fn download_options_round_trip_through_variants() {
        let options = DownloadOptions {
            sha256: Some("ab".repeat(32)),
            bundle: Some("model-x".into()),
            file_name: Some("weights.bin".into()),
            max_bytes: Some(1 << 30),
            source: Some("nightly".into()),
        };
        let parsed = DownloadOptions::from_variants(&options.to_variants()).unwrap();
        assert_eq!(parsed, options);
        assert_eq!(
            DownloadOptions::from_variants(&HashMap::new()).unwrap(),
            DownloadOptions::default()
        );
    }

    #[test]
    fn bad_download_options_are_invalid_arguments() {
        let cases = [
            variants(&[("colour", Variant::from("red"))]),
            variants(&[("sha256", Variant::from("abc"))]),
            variants(&[("sha256", Variant::from(7u64))]),
            variants(&[("max_bytes", Variant::from("big"))]),
            variants(&[("max_bytes", Variant::from(0u64))]),
            variants(&[("bundle", Variant::from("a/b"))]),
            variants(&[("file_name", Variant::from(".hidden"))]),
            variants(&[("file_name", Variant::from("x.part"))]),
            variants(&[("source", Variant::from(""))]),
        ];
        for case in cases {
            let result = DownloadOptions::from_variants(&case);
            assert!(
                matches!(result, Err(BusError::InvalidArgument(_))),
                "{case:?} gave {result:?}"
            );
        }
    }
}
