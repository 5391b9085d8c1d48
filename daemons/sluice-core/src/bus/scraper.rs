//! `org.sluice.Scraper1`: the scraper's object — downloads on request, sources scraped on
//! demand, and the progress of both as signals.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zbus::message::Header;
use zbus::{Connection, OwnedVariant, Variant};

use super::bytestring::path_to_bytestring;
use super::caller::Action;
use super::object::{Published, published_object};
use super::rate_limit::{ProgressRateLimiter, clamp_fraction, lock_limiter};
use super::validate::require_id;
use super::{BusError, BusSetupError, CallerPolicy, DaemonState, Reply, forward};
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

/// One source's entry in the `SourceStates` property: (last outcome, last error, last check,
/// next check, checks, items seen, downloads made).
pub type SourceState = (String, String, i64, i64, u64, u64, u64);
/// The `SourceStates` property: every enabled source by name.
pub type SourceStates = HashMap<String, SourceState>;

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
    /// Record a bundle (or resolve an `hf://` one first) and queue its files; the reply is
    /// the bundle's id.
    AddBundle {
        bundle: policy::NewBundle,
        reply: Reply<u64>,
    },
    /// Cancel a running bundle and its files.
    CancelBundle {
        bundle_id: u64,
        reply: Reply<()>,
    },
    /// Cancel if needed, then forget the bundle and remove its folder (see `DeleteBundle`).
    DeleteBundle {
        bundle_id: u64,
        reply: Reply<()>,
    },
    /// Check the named source now; the reply is the number its check will have in the
    /// source's count of checks.
    ScrapeNow {
        source: String,
        reply: Reply<u64>,
    },
}

published_object! {
    /// The scraper's state as its properties show it.
    status ScraperStatus;
    /// The object served at [`SCRAPER_OBJECT_PATH`]. Build it through [`ScraperService::start`].
    interface ScraperInterface for ScraperCommand;
    attributes (
        name = "org.sluice.Scraper1",
        proxy(
            default_service = "org.sluice.Scraper1",
            default_path = "/org/sluice/Scraper1",
            async_name = "ScraperProxy"
        )
    );
    /// What the scraper is doing, in one line.
    status_property;
    properties {
        /// Names of the configured sources.
        sources: Vec<String> => Vec<String> = Clone::clone;
        /// The staging folder for partial downloads: its bytes with a trailing NUL.
        staging_path: PathBuf => Vec<u8> = |path: &PathBuf| path_to_bytestring(path);
        /// Downloads transferring now.
        downloads_active: u32 => u32 = Clone::clone;
        /// Downloads completed since start.
        downloads_done: u64 => u64 = Clone::clone;
        /// Downloads that failed for good since start.
        downloads_failed: u64 => u64 = Clone::clone;
        /// Each enabled source by name: (last outcome, last error, last check, next check,
        /// checks, links or entries seen, downloads made); times in ms since the epoch, 0 for
        /// never. Outcomes: unchanged, changed, partial, failed, disallowed, deferred, or ""
        /// before the first check.
        source_states: SourceStates => SourceStates = Clone::clone;
    }
    counters {
        /// Bytes received since start.
        bytes_downloaded: u64 => u64 = Clone::clone;
    }
    members {
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
                .authorize(connection, &header, "AddDownload", Action::AddDownload)
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
                .authorize(connection, &header, "CancelDownload", Action::ManageDownloads)
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
                .authorize(connection, &header, "DeleteDownload", Action::ManageDownloads)
                .await?;
            require_id("download_id", download_id)?;
            forward(&self.commands, |reply| ScraperCommand::DeleteDownload {
                download_id,
                reply,
            })
            .await
        }

        /// Download several files into one folder of the inbox, which appears only when every
        /// file is complete. `name` is the folder's name, with `files` as (url, relative path,
        /// sha256) where an empty path means the URL's file name and an empty sha256 none; or
        /// `name` is `hf://[datasets/]ORG/NAME[@REVISION]` with no files, and the repository's
        /// files at the commit the revision points at are the bundle (folder `ORG--NAME`).
        #[zbus(out_args("bundle_id"))]
        async fn add_bundle(
            &self,
            name: &str,
            files: Vec<(String, String, String)>,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<u64, BusError> {
            self.policy
                .authorize(connection, &header, "AddBundle", Action::AddDownload)
                .await?;
            let bundle = bundle_request(name, files)?;
            forward(&self.commands, |reply| ScraperCommand::AddBundle { bundle, reply }).await
        }

        /// Stop a bundle: its files that have not ended are cancelled; nothing reaches the
        /// inbox. The bundle stays, in state cancelled.
        async fn cancel_bundle(
            &self,
            bundle_id: u64,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<(), BusError> {
            self.policy
                .authorize(connection, &header, "CancelBundle", Action::ManageDownloads)
                .await?;
            require_id("bundle_id", bundle_id)?;
            forward(&self.commands, |reply| ScraperCommand::CancelBundle {
                bundle_id,
                reply,
            })
            .await
        }

        /// Stop a bundle if it runs, then forget it and its downloads, and remove its folder
        /// in staging and, when it succeeded, its folder in the inbox (with whatever is still
        /// in it).
        async fn delete_bundle(
            &self,
            bundle_id: u64,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<(), BusError> {
            self.policy
                .authorize(connection, &header, "DeleteBundle", Action::ManageDownloads)
                .await?;
            require_id("bundle_id", bundle_id)?;
            forward(&self.commands, |reply| ScraperCommand::DeleteBundle {
                bundle_id,
                reply,
            })
            .await
        }

        /// Check the named source now instead of at its next scheduled time. Returns the
        /// number this check will have in the source's count of checks (SourceStates), so a
        /// caller can wait for it.
        #[zbus(out_args("check"))]
        async fn scrape_now(
            &self,
            source: &str,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<u64, BusError> {
            self.policy
                .authorize(connection, &header, "ScrapeNow", Action::ManageJobs)
                .await?;
            policy::check_source_name(source)?;
            let source = source.to_owned();
            forward(&self.commands, |reply| ScraperCommand::ScrapeNow {
                source,
                reply,
            })
            .await
        }
    }
    signals {
        /// A job was added to the queue.
        pub fn job_queued(kind: &str, job_id: u64);
        /// A job was claimed; `worker` names the process running it.
        pub fn job_started(job_id: u64, kind: &str, worker: &str);
        /// Progress of a running job, 0.0 to 1.0; at most one per job every 250 ms.
        fn job_progress(job_id: u64, fraction: f64, message: &str);
        /// A job reached `succeeded`, `failed`, `retrying`, `cancelled` or `dead`.
        pub fn job_finished(job_id: u64, state: &str);
        /// Bytes received so far of `total` (0 when unknown); rate-limited like `JobProgress`.
        fn download_progress(download_id: u64, bytes: u64, total: u64);
        /// A download ended in `state`; `path` is the file in the inbox (bytes with a trailing
        /// NUL), empty (one NUL) unless succeeded.
        pub fn download_finished(download_id: u64, state: &str, path: &[u8]);
        /// A bundle ended in `state` (succeeded, failed, cancelled); `path` is its folder in
        /// the inbox as `DownloadFinished` gives paths, empty unless succeeded.
        pub fn bundle_finished(bundle_id: u64, state: &str, path: &[u8]);
        /// A check of `source` ended with `outcome` and queued `downloads` new downloads.
        pub fn source_checked(source: &str, outcome: &str, downloads: u64);
    }
}

impl ScraperStatus {
    pub fn starting(sources: Vec<String>, staging_path: &Path) -> ScraperStatus {
        ScraperStatus {
            state: DaemonState::Starting,
            status: "starting".into(),
            last_error: String::new(),
            sources,
            staging_path: staging_path.to_path_buf(),
            downloads_active: 0,
            downloads_done: 0,
            downloads_failed: 0,
            bytes_downloaded: 0,
            source_states: SourceStates::new(),
        }
    }
}

/// The daemon's side of the scraper object: publish status, emit signals (progress through
/// the rate limiter). The rest of [`Published`] is reached through `Deref`.
#[derive(Debug)]
pub struct ScraperService {
    object: Published<ScraperInterface>,
    progress_limiter: Mutex<ProgressRateLimiter>,
}

impl Deref for ScraperService {
    type Target = Published<ScraperInterface>;

    fn deref(&self) -> &Published<ScraperInterface> {
        &self.object
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
        let (object, commands) = Published::serve(
            connection,
            SCRAPER_OBJECT_PATH,
            SCRAPER_BUS_NAME,
            policy,
            initial_status,
        )
        .await?;
        let service = ScraperService {
            object,
            progress_limiter: Mutex::new(ProgressRateLimiter::new(progress_interval)),
        };
        Ok((service, commands))
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
            self.object.job_progress(job_id, fraction, message).await?;
        }
        Ok(allowed)
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
            self.object
                .download_progress(download_id, bytes, total)
                .await?;
        }
        Ok(allowed)
    }
}

/// The `AddBundle` arguments as a [`policy::NewBundle`]: the shape of an `hf://` name, or the
/// count of files, is checked here; each file is checked with the rest of the policy when the
/// scraper validates the bundle (it knows the configured limits).
pub fn bundle_request(
    name: &str,
    files: Vec<(String, String, String)>,
) -> Result<policy::NewBundle, BusError> {
    if policy::is_hf_reference(name) {
        policy::parse_hf_reference(name)?;
        if !files.is_empty() {
            return Err(BusError::InvalidArgument(
                "an hf:// bundle takes no list of files; its files come from the Hub".to_owned(),
            ));
        }
    } else {
        policy::check_bundle_name(name)?;
        if files.is_empty() || files.len() > policy::MAX_BUNDLE_FILES {
            return Err(policy::PolicyError::OutOfRange(format!(
                "a bundle holds 1..={} files, got {}",
                policy::MAX_BUNDLE_FILES,
                files.len()
            ))
            .into());
        }
    }
    let optional = |text: String| (!text.is_empty()).then_some(text);
    Ok(policy::NewBundle {
        name: name.to_owned(),
        files: files
            .into_iter()
            .map(|(url, path, sha256)| policy::NewBundleFile {
                url,
                path: optional(path),
                sha256: optional(sha256),
                size: None,
                git_sha1: None,
            })
            .collect(),
        origin: None,
        revision: None,
        max_attempts: None,
    })
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
