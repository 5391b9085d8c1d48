//! What every request handler shares: the settings taken from the configuration, the rules
//! a reload may change (tokens, allowed hosts), a small pool of store connections, and the
//! link to the daemon's main loop and the bus.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sluice_core::bus::{BusError, SCRAPER_BUS_NAME, ScraperProxy, name_has_owner};
use sluice_core::config::{Config, MetricsAccess, WebConfig};
use sluice_core::store::{Store, StoreError, StoreOptions};
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::ApiError;
use crate::events::{EventStreamSlots, SseFrame};
use crate::metrics::Metrics;
use crate::waiters::JobWaiters;

/// The shared state of the HTTP side; cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
    access: RwLock<AccessRules>,
    stores: StorePool,
    bus: Option<BusLink>,
    events: broadcast::Sender<SseFrame>,
    shutdown: watch::Receiver<bool>,
    requests_served: AtomicU64,
    event_streams: EventStreamSlots,
    waiters: Arc<JobWaiters>,
    metrics: Metrics,
}

/// Settings read once at start; changing them needs a restart (the listener and the routes
/// are built from them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `""` for `/`, else e.g. `/sluice`: the prefix every route is mounted under.
    pub base_path: String,
    pub max_request_body: usize,
    pub max_page_size: u32,
    pub max_string_length: usize,
    pub allow_private_addresses: bool,
    pub max_download_size: u64,
    /// `[scraper] max_pending`: downloads beyond it are refused with 429.
    pub max_pending_downloads: u32,
    /// `[ingest] max_pending`: uploads beyond it are refused with 429.
    pub max_pending_ingest: u32,
    pub max_attempts: u32,
    pub staging: PathBuf,
    pub workers: u32,
    pub store_path: PathBuf,
    pub durability: &'static str,
    /// The limit event streams start with; a reload changes it live, through
    /// [`AppState::event_streams`].
    pub max_event_streams: u32,
    /// The longest `?wait=` allowed.
    pub max_wait: std::time::Duration,
    /// Largest uploaded file, in bytes.
    pub max_upload_size: u64,
    /// Where uploads are placed (`[scraper] inbox`), and the watched folder that holds it,
    /// with its configuration; `None` when no `[[watch]]` covers the inbox (uploads are then
    /// refused, since nothing would pick them up).
    pub inbox: PathBuf,
    pub inbox_watch: Option<sluice_core::config::WatchConfig>,
    /// `[ingest] library`: where consumed documents and every thumbnail are read from.
    pub library: PathBuf,
    /// The `[[watch]]` folders in index mode: where indexed documents are read from.
    pub index_roots: Vec<PathBuf>,
    /// `[ingest] thumbnail_size`, shown in `GET /api/status`.
    pub thumbnail_size: u32,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let base_path = if config.web.base_path == "/" {
            String::new()
        } else {
            config.web.base_path.clone()
        };
        Settings {
            base_path,
            max_request_body: usize::try_from(config.limits.max_request_body).unwrap_or(usize::MAX),
            max_page_size: config
                .limits
                .max_page_size
                .min(sluice_core::store::jobs::MAX_PAGE_SIZE),
            max_string_length: config.limits.max_string_length as usize,
            allow_private_addresses: config.scraper.allow_private_addresses,
            max_download_size: config.scraper.max_download_size,
            max_pending_downloads: config.scraper.max_pending,
            max_pending_ingest: config.ingest.max_pending,
            max_attempts: config.jobs.max_attempts,
            staging: config.scraper.staging.clone(),
            workers: config.ingest.workers,
            store_path: config.store.path.clone(),
            durability: config.store.durability.as_str(),
            max_event_streams: config.web.max_event_streams,
            max_wait: config.web.max_wait,
            max_upload_size: config.web.max_upload_size,
            inbox: config.scraper.inbox.clone(),
            inbox_watch: config
                .watches
                .iter()
                .find(|watch| {
                    watch.path == config.scraper.inbox
                        || (watch.recursive && config.scraper.inbox.starts_with(&watch.path))
                })
                .cloned(),
            library: config.ingest.library.clone(),
            index_roots: config
                .watches
                .iter()
                .filter(|watch| watch.mode == sluice_core::ingest::IngestMode::Index)
                .map(|watch| watch.path.clone())
                .collect(),
            thumbnail_size: config.ingest.thumbnail_size,
        }
    }
}

/// Who may call: the tokens and the host names the server answers to. A reload replaces
/// them all at once.
#[derive(Debug, Clone)]
pub struct AccessRules {
    /// Good for every request: the only token that may change something.
    pub admin_token: ApiToken,
    /// Who may read.
    pub reads: ReadAccess,
    /// Lower-case host names without port.
    pub allowed_hosts: Vec<String>,
    /// Who may read `{base}/metrics`.
    pub metrics: MetricsAccess,
}

/// Who may read the API (`GET`, `HEAD`) besides the holder of the admin token.
#[derive(Debug, Clone)]
pub enum ReadAccess {
    /// `[web] public_reads = true`: anyone who reaches the socket.
    Public,
    /// The holder of the read token from `[web] read_token_file`.
    Token(ApiToken),
}

/// What a request's bearer token entitles it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No token, or none that is needed: public reads only.
    Anonymous,
    /// The read token.
    Read,
    /// The admin token.
    Admin,
}

/// Where the token files are read from. Under systemd the package hands the tokens to
/// sluice-web alone as credentials (`LoadCredential=api-token:/etc/sluice/api-token` and
/// `read-token:…` in sluice-web.service): systemd copies each root-only file at start into
/// `$CREDENTIALS_DIRECTORY`, readable by this service only, so no other daemon (the networked
/// scraper, the workers parsing untrusted files) and no member of group sluice can read them.
/// A credential of that name wins over the configured path; without one (a run outside
/// systemd, the tests, a drop-in that removed the credential) the configured path is read.
#[derive(Debug, Clone, Default)]
pub struct TokenCredentials {
    directory: Option<PathBuf>,
}

impl TokenCredentials {
    /// The credential name of the admin token (`[web] token_file`).
    pub const ADMIN: &'static str = "api-token";
    /// The credential name of the read token (`[web] read_token_file`).
    pub const READ: &'static str = "read-token";

    /// The credentials systemd passed this process (`$CREDENTIALS_DIRECTORY`), if any.
    pub fn from_environment() -> TokenCredentials {
        TokenCredentials {
            directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|directory| !directory.is_empty())
                .map(PathBuf::from),
        }
    }

    /// The credentials in `directory`, as systemd would pass them.
    pub fn in_directory(directory: impl Into<PathBuf>) -> TokenCredentials {
        TokenCredentials {
            directory: Some(directory.into()),
        }
    }

    /// Where the tokens come from, for the log.
    pub fn describe(&self, config: &WebConfig) -> String {
        let admin = self.path_for(TokenCredentials::ADMIN, &config.token_file);
        let read = self.path_for(TokenCredentials::READ, &config.read_token_file);
        let origin = if admin != config.token_file {
            "systemd credentials"
        } else {
            "the configured files"
        };
        format!(
            "API tokens from {origin}: admin {}, read {}",
            admin.display(),
            read.display()
        )
    }

    /// What an administrator should hear: a `[web]` token key that names another file than
    /// the package's while systemd passed the credential of that name, which wins (the
    /// configured file is not read).
    pub fn overridden(&self, config: &WebConfig) -> Vec<String> {
        let defaults = sluice_core::config::defaults().web;
        [
            (
                TokenCredentials::ADMIN,
                "token_file",
                &config.token_file,
                &defaults.token_file,
            ),
            (
                TokenCredentials::READ,
                "read_token_file",
                &config.read_token_file,
                &defaults.read_token_file,
            ),
        ]
        .into_iter()
        .filter(|(name, _, configured, default)| {
            configured != default && self.path_for(name, configured) != **configured
        })
        .map(|(name, key, configured, _)| {
            format!(
                "[web] {key} names {}, but systemd passed the credential {name} \
                 (LoadCredential= in sluice-web.service), which is used instead: point \
                 LoadCredential={name}:… at {} in a drop-in",
                configured.display(),
                configured.display()
            )
        })
        .collect()
    }

    /// No credentials: the configured paths are read.
    pub fn none() -> TokenCredentials {
        TokenCredentials::default()
    }

    /// The file to read for the credential `name`: the credential when systemd passed one of
    /// that name, else `configured`.
    pub fn path_for(&self, name: &str, configured: &Path) -> PathBuf {
        match &self.directory {
            Some(directory) if directory.join(name).is_file() => directory.join(name),
            _ => configured.to_path_buf(),
        }
    }
}

impl AccessRules {
    /// The rules `config` describes: reads the tokens (each from its credential when systemd
    /// passed one, else from the configured file; the read token only when reads are not
    /// public) and refuses a read token equal to the admin token, which would let every reader
    /// change things.
    pub fn from_config(
        config: &WebConfig,
        credentials: &TokenCredentials,
    ) -> Result<AccessRules, TokenError> {
        let admin_file = credentials.path_for(TokenCredentials::ADMIN, &config.token_file);
        let admin_token = ApiToken::read(&admin_file, "token_file")?;
        let reads = if config.public_reads {
            ReadAccess::Public
        } else {
            let read_file = credentials.path_for(TokenCredentials::READ, &config.read_token_file);
            let read_token = ApiToken::read(&read_file, "read_token_file")?;
            if read_token.same_as(&admin_token) {
                return Err(TokenError::SameToken {
                    admin: admin_file,
                    read: read_file,
                });
            }
            ReadAccess::Token(read_token)
        };
        Ok(AccessRules {
            admin_token,
            reads,
            allowed_hosts: config.allowed_hosts.clone(),
            metrics: config.metrics_access,
        })
    }

    /// The grant of a presented bearer token; `None` when the token is neither of ours.
    pub fn grant(&self, presented: &str) -> Option<Grant> {
        if self.admin_token.matches(presented) {
            return Some(Grant::Admin);
        }
        match &self.reads {
            ReadAccess::Token(read_token) if read_token.matches(presented) => Some(Grant::Read),
            _ => None,
        }
    }

    /// Whether a request without a token may read.
    pub fn reads_are_public(&self) -> bool {
        matches!(self.reads, ReadAccess::Public)
    }
}

/// A bearer token. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiToken(<redacted>)")
    }
}

/// Why a token file cannot be used; `key` is the `[web]` key that names it.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the API token file {path} ([web] {key}): {source}; sluice-web does not \
         start without it (the package generates it at install and hands it to sluice-web with \
         LoadCredential= in sluice-web.service; the file itself is readable by root only)"
    )]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API token file {path} ([web] {key}) must hold a token of at least \
         {MINIMUM_TOKEN_LENGTH} printable characters without spaces"
    )]
    Malformed { key: &'static str, path: PathBuf },
    #[error(
        "the read token in {read} ([web] read_token_file) is the admin token of {admin} \
         ([web] token_file): every reader could change things; write a different token in one \
         of them"
    )]
    SameToken { admin: PathBuf, read: PathBuf },
}

/// Shorter tokens are guessable; the installed ones are 64 hex digits.
pub const MINIMUM_TOKEN_LENGTH: usize = 16;

impl ApiToken {
    /// Reads the token: the file's content without surrounding whitespace. `key` names the
    /// setting the path came from, for the error.
    pub fn read(path: &Path, key: &'static str) -> Result<ApiToken, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })?;
        ApiToken::new(text.trim()).ok_or_else(|| TokenError::Malformed {
            key,
            path: path.to_path_buf(),
        })
    }

    fn same_as(&self, other: &ApiToken) -> bool {
        self.matches(&other.0)
    }

    pub fn new(token: &str) -> Option<ApiToken> {
        let well_formed =
            token.len() >= MINIMUM_TOKEN_LENGTH && token.chars().all(|c| c.is_ascii_graphic());
        well_formed.then(|| ApiToken(token.to_owned()))
    }

    /// Constant-time comparison, so the time a wrong guess takes says nothing about how much
    /// of it was right.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// The link from request handlers to the daemon's main loop and the bus. Absent when the app
/// runs without a bus (unit tests with `actix_web::test`).
#[derive(Debug, Clone)]
pub struct BusLink {
    pub connection: zbus::Connection,
    /// The main runtime, where the bus connection lives; bus calls are spawned there so no
    /// bus I/O is driven from an actix worker's runtime.
    pub runtime: tokio::runtime::Handle,
    pub announcements: mpsc::Sender<Announcement>,
}

/// A signal the web's own D-Bus object should emit; the main loop owns the object.
#[derive(Debug, Clone, PartialEq)]
pub enum Announcement {
    JobQueued { kind: String, job_id: u64 },
    JobFinished { job_id: u64, state: String },
}

impl Announcement {
    /// The job the signal is about, for log lines.
    pub fn job_id(&self) -> u64 {
        match self {
            Announcement::JobQueued { job_id, .. } | Announcement::JobFinished { job_id, .. } => {
                *job_id
            }
        }
    }
}

/// Store connections for the handlers. A `Store` is one SQLite connection and not `Sync`;
/// handlers take one on a blocking thread and put it back, so a handful serve every request.
#[derive(Debug)]
pub struct StorePool {
    path: PathBuf,
    options: StoreOptions,
    idle: Mutex<Vec<Store>>,
}

/// Idle connections kept; more are opened under load and closed when returned.
const MAX_IDLE_STORES: usize = 4;

impl StorePool {
    pub fn new(path: PathBuf, options: StoreOptions) -> StorePool {
        StorePool {
            path,
            options,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A pool of connections to the database `store` is connected to, starting with `store`
    /// (opened at start-up, so a broken database fails the start at once).
    pub fn starting_with(store: Store) -> StorePool {
        let pool = StorePool::new(store.path().to_path_buf(), *store.options());
        pool.put_back(store);
        pool
    }

    /// Opens one connection now, so a start-up with a broken database fails at once.
    pub fn check(&self) -> Result<(), StoreError> {
        let store = Store::open(&self.path, &self.options)?;
        self.put_back(store);
        Ok(())
    }

    /// Runs `work` with a connection; call it on a blocking thread.
    pub fn with<T>(&self, work: impl FnOnce(&mut Store) -> T) -> Result<T, StoreError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut store = match taken {
            Some(store) => store,
            None => Store::open(&self.path, &self.options)?,
        };
        let value = work(&mut store);
        self.put_back(store);
        Ok(value)
    }

    fn put_back(&self, store: Store) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_STORES {
            idle.push(store);
        }
    }
}

thread_local! {
    /// The read connection of the HTTP worker thread this runs on, with the database it is
    /// for (tests run several apps, on several databases, on one thread).
    static WORKER_READ_STORE: RefCell<Option<(PathBuf, Store)>> = const { RefCell::new(None) };
}

impl StorePool {
    /// Runs `work` on the calling thread's own connection, opened on first use and kept for
    /// the thread's life. For lookups by primary key only: see [`AppState::read_now`].
    fn with_thread_store<T>(&self, work: impl FnOnce(&Store) -> T) -> Result<T, StoreError> {
        WORKER_READ_STORE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let reusable = matches!(&*slot, Some((path, _)) if *path == self.path);
            if !reusable {
                *slot = Some((self.path.clone(), Store::open(&self.path, &self.options)?));
            }
            let (_, store) = slot.as_ref().expect("the slot was just filled");
            Ok(work(store))
        })
    }
}

impl AppState {
    pub fn new(
        settings: Settings,
        access: AccessRules,
        stores: StorePool,
        bus: Option<BusLink>,
        events: broadcast::Sender<SseFrame>,
        shutdown: watch::Receiver<bool>,
    ) -> AppState {
        let event_streams = EventStreamSlots::new(settings.max_event_streams);
        AppState {
            inner: Arc::new(Shared {
                settings,
                access: RwLock::new(access),
                stores,
                bus,
                events,
                shutdown,
                requests_served: AtomicU64::new(0),
                event_streams,
                waiters: Arc::new(JobWaiters::default()),
                metrics: Metrics::new(),
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn access(&self) -> AccessRules {
        self.inner
            .access
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace_access(&self, access: AccessRules) {
        *self
            .inner
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = access;
    }

    pub fn bus(&self) -> Option<&BusLink> {
        self.inner.bus.as_ref()
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<SseFrame> {
        self.inner.events.subscribe()
    }

    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.clone()
    }

    pub fn count_request(&self) {
        self.inner.requests_served.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests_served(&self) -> u64 {
        self.inner.requests_served.load(Ordering::Relaxed)
    }

    pub fn event_streams(&self) -> &EventStreamSlots {
        &self.inner.event_streams
    }

    /// The counters of `/metrics` and its cached answer.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Starts the job counters of `/metrics` at what the database holds now, so jobs that
    /// end after the start and before the first scrape count too.
    pub fn start_metrics(&self) {
        let started = self
            .inner
            .stores
            .with(|store| self.inner.metrics.start_counting(store));
        let error = match started {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(
            error = %error,
            "cannot read where the job counters of /metrics start ({error}); the first scrape \
             starts them"
        );
    }

    /// The requests and streams waiting for jobs.
    pub fn waiters(&self) -> &Arc<JobWaiters> {
        &self.inner.waiters
    }

    /// Runs `work` with a store connection on a blocking thread; store and join failures
    /// become API errors.
    pub async fn with_store<T, E>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        let state = self.clone();
        let outcome = actix_web::web::block(move || state.inner.stores.with(work))
            .await
            .map_err(|error| ApiError::internal("a database task failed", error))?;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.into()),
            Err(store_error) => Err(store_error.into()),
        }
    }

    /// Runs a lookup by primary key right here on the HTTP worker thread, on that thread's own
    /// connection, instead of handing it to the blocking pool. In WAL mode a reader never
    /// waits for a writer, so such a read takes tens of microseconds — less than the thread
    /// hand-off costs, and W2 (status reads at tens of thousands a second on 2 cores) spent
    /// most of its time in that hand-off and in reopening pooled connections. Anything that
    /// may scan, write or wait goes through [`AppState::with_store`].
    pub fn read_now<T, E>(&self, work: impl FnOnce(&Store) -> Result<T, E>) -> Result<T, ApiError>
    where
        E: Into<ApiError>,
    {
        match self.inner.stores.with_thread_store(work) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.into()),
            Err(store_error) => Err(store_error.into()),
        }
    }

    /// Asks the main loop to emit a signal of the web's D-Bus object. Best effort: the job is
    /// already in the database, and workers poll it slowly when a wake-up is lost.
    pub fn announce(&self, announcement: Announcement) {
        let job_id = announcement.job_id();
        if let Some(bus) = self.bus()
            && let Err(error) = bus.announcements.try_send(announcement)
        {
            tracing::warn!(
                error = %error,
                "cannot pass the signal for job {job_id} to the main loop ({error}); workers will \
                 find the job by polling"
            );
        }
    }

    /// Calls sluice-scraper (`org.sluice.Scraper1`) on the main runtime and waits for the
    /// answer; `None` when there is no bus or no scraper holds its name, so the caller can
    /// fall back to the store or answer 503.
    pub async fn on_scraper<T, F>(
        &self,
        call: impl FnOnce(ScraperProxy<'static>) -> F + Send + 'static,
    ) -> Option<Result<T, BusError>>
    where
        F: Future<Output = Result<T, BusError>> + Send + 'static,
        T: Send + 'static,
    {
        self.on_bus(move |connection| async move {
            if !name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = ScraperProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await;
            Some(match proxy {
                Ok(proxy) => call(proxy).await,
                Err(error) => Err(BusError::ZBus(error)),
            })
        })
        .await
        .flatten()
    }

    /// Runs a bus call on the main runtime and waits for it.
    pub async fn on_bus<T, F>(&self, call: impl FnOnce(zbus::Connection) -> F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let bus = self.bus()?;
        let task = bus.runtime.spawn(call(bus.connection.clone()));
        match task.await {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::error!(error = %error, "a D-Bus task failed: {error}");
                None
            }
        }
    }
}
