//! sluice's configuration: `/etc/sluice/sluice.toml` (or `SLUICE_CONFIG`) merged over the
//! compiled-in defaults, which are the shipped `config/sluice.toml` itself.
//!
//! Loading has two stages, as in ripgrep: [`raw`] mirrors the file with serde (unknown keys
//! and wrong types are errors there), then [`validate`] turns it into the typed [`Config`]
//! (absolute paths, parsed durations and sizes, enums, limits above zero, cross-checks).
//! Every error names the file, line, column and dotted key; see [`ConfigError`].
//!
//! There is deliberately no `Default` impl on any of these types: the only defaults are the
//! documented ones in the shipped file, available as [`defaults()`].

mod bounds;
mod document;
mod error;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobMatcher, GlobSet};
use regex::Regex;
use serde::Deserialize;
use url::Url;

pub use bounds::{DURATION_KEYS, DurationRange, NUMBER_KEYS};
pub use error::{ConfigError, Location};

/// Where the installed configuration lives; used when `SLUICE_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// The environment variable that points the daemons at another configuration file.
pub const CONFIG_PATH_VARIABLE: &str = "SLUICE_CONFIG";

/// The shipped, documented default configuration, compiled in.
pub const BUILT_IN_DEFAULTS: &str = include_str!("../../../config/sluice.toml");

/// The path that errors name for a value taken from [`BUILT_IN_DEFAULTS`].
pub const BUILT_IN_DEFAULTS_ORIGIN: &str = "<built-in defaults: config/sluice.toml>";

/// How many ingest worker instances `[ingest] workers` may ask for; `sluicectl workers N`
/// checks its argument against the same range before it edits the file.
pub const INGEST_WORKERS_RANGE: std::ops::RangeInclusive<u32> = 1..=256;

/// The whole validated configuration. Field names follow the file; the lists of tables
/// `[[watch]]`, `[[processor]]` and `[[source]]` become `watches`, `processors` and `sources`,
/// with the `*_defaults` tables already applied to each entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub jobs: JobsConfig,
    pub service: ServiceConfig,
    pub web: WebConfig,
    pub monitor: MonitorConfig,
    pub watches: Vec<WatchConfig>,
    pub ingest: IngestConfig,
    pub processors: Vec<ProcessorConfig>,
    pub scraper: ScraperConfig,
    pub sources: Vec<SourceConfig>,
    pub limits: LimitsConfig,
    pub retention: RetentionConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    pub busy_timeout: Duration,
}

/// How hard a commit is pushed to disk before it is acknowledged (SQLite `synchronous`);
/// defined beside the store that applies it.
pub use crate::ingest::WatchMode;
pub use crate::store::Durability;

#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    pub address: BusAddress,
}

/// Which D-Bus bus to connect to; defined beside the code that connects.
pub use crate::bus::BusAddress;

#[derive(Clone, Debug, PartialEq)]
pub struct JobsConfig {
    pub lease: Duration,
    /// At most half of `lease`.
    pub heartbeat_interval: Duration,
    /// At least 1.
    pub max_attempts: u32,
    pub retry_backoff_base: Duration,
    /// At least `retry_backoff_base`.
    pub retry_backoff_max: Duration,
    /// At least 1.
    pub claim_batch: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub stop_timeout: Duration,
    pub status_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// `/` or a path starting with `/` and not ending with one, e.g. `/sluice`.
    pub base_path: String,
    /// The admin token: every request that changes something, and reads too.
    pub token_file: PathBuf,
    /// The read token: reads only (`GET`, `HEAD`); refused for changes.
    pub read_token_file: PathBuf,
    /// Reads need no token at all (changes still need the admin token).
    pub public_reads: bool,
    /// Bytes.
    pub max_upload_size: u64,
    /// Host names without port, at least one, lower-cased.
    pub allowed_hosts: Vec<String>,
    /// At most this many `GET /api/events` streams at once; 1 to 100000.
    pub max_event_streams: u32,
    /// The longest `?wait=` a request may ask for.
    pub max_wait: Duration,
    /// Who may read `{base}/metrics`.
    pub metrics_access: MetricsAccess,
}

/// Who may read `{base}/metrics` (`[web] metrics_access`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    /// `"token"`: whoever may read the API (the read or the admin token, or anyone when
    /// `public_reads = true`).
    Token,
    /// `"loopback"`: any connection from 127.0.0.0/8 or ::1, without a token (a Prometheus on
    /// the same host); everyone else is refused whatever token they send.
    Loopback,
}

impl MetricsAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAccess::Token => "token",
            MetricsAccess::Loopback => "loopback",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    pub reconcile_interval: Duration,
}

/// One watched folder, with the `[watch_defaults]` already applied.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchConfig {
    pub path: PathBuf,
    pub mode: WatchMode,
    pub ignore: IgnoreRules,
    pub recursive: bool,
    pub watcher: Watcher,
    pub poll_interval: Duration,
    pub quiet_period: Duration,
}

/// How the monitor notices changes in a watched folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watcher {
    /// inotify, or polling on filesystems without it.
    Auto,
    Inotify,
    Poll,
}

/// Which files of a watched folder the monitor skips: names ending in `.part`, names
/// starting with `.` (files or folders, at any depth), and the configured globs. A glob
/// without `/` is matched against the file name, one with `/` against the path relative to
/// the watched folder (where `*` does not cross `/` and `**` does).
#[derive(Clone, Debug)]
pub struct IgnoreRules {
    globs: Vec<Glob>,
    name_globs: GlobSet,
    path_globs: GlobSet,
}

impl IgnoreRules {
    /// The configured globs, as written.
    pub fn globs(&self) -> &[Glob] {
        &self.globs
    }

    /// Whether a file at `relative_path` (relative to the watched folder) is skipped.
    pub fn is_ignored(&self, relative_path: &Path) -> bool {
        // Only real names count: a leading "./" is not a hidden folder.
        let hidden_component = relative_path.components().any(|component| {
            matches!(component, Component::Normal(name) if name.as_encoded_bytes().starts_with(b"."))
        });
        let file_name = relative_path.file_name().unwrap_or(OsStr::new(""));
        hidden_component
            || file_name.as_encoded_bytes().ends_with(b".part")
            || self.name_globs.is_match(file_name)
            || self.path_globs.is_match(relative_path)
    }
}

impl PartialEq for IgnoreRules {
    fn eq(&self, other: &Self) -> bool {
        self.globs == other.globs
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngestConfig {
    /// 1 to 256.
    pub workers: u32,
    pub library: PathBuf,
    /// Bytes.
    pub max_file_size: u64,
    /// Bytes.
    pub text_max_bytes: u64,
    /// Pixels, 1 to 4096.
    pub thumbnail_size: u32,
    /// Bytes of address space the extraction child of one file may use (RLIMIT_AS).
    pub extract_max_memory: u64,
    /// A PDF with more pages fails its job. 1 to 1,000,000.
    pub max_pages: u32,
    /// The wall-clock limit of one attempt of an `ingest` (or `noop`) job, processors
    /// included; a job still running after it is stopped and fails "timed out after N s".
    pub job_timeout: Duration,
    /// Most ingest jobs queued, retrying or running at once; files detected beyond it are
    /// recorded without a job and queued as room appears. 1 to 10,000,000.
    pub max_pending: u32,
}

/// One external processor, with `[processor_defaults]` already applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorConfig {
    pub name: String,
    pub mime: MimePattern,
    /// One run per file, or one long-lived server per worker.
    pub mode: ProcessorMode,
    /// The program (an absolute path) and its arguments, with the `{path}`, `{mime}` and
    /// `{output}` placeholders still in (a server's have none);
    /// [`ProcessorConfig::command_line`] fills them in.
    pub argv: Vec<String>,
    /// A run's limit (`once`), or the limit of one request's answer (`server`).
    pub timeout: Duration,
    /// Bytes: most stdout of one run (`once`) or one answer line (`server`), and the largest
    /// derived file either may leave.
    pub max_output: u64,
    /// Folders the processor may write beneath besides its private temporary folder (a
    /// cache of its models, say): absolute, apart from the database's folder, the library,
    /// the inbox, the staging folder and every watched folder. Everything else it may only
    /// read.
    pub writable: Vec<PathBuf>,
}

/// How a processor is run (`mode` in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorMode {
    /// `"once"`: the program is run once per file, with the file's path in its `argv`.
    Once,
    /// `"server"`: the program is started once per worker and kept; it answers one
    /// line-delimited JSON request per file on its stdin and stdout.
    Server,
}

impl ProcessorConfig {
    /// The argv to run for one file: placeholders replaced (`{output}` by `output`, the
    /// run's empty folder for derived files), `{{`/`}}` unescaped. The template was checked
    /// at load time, so this cannot fail.
    pub fn command_line(&self, path: &Path, mime: &str, output: &Path) -> Vec<OsString> {
        self.argv
            .iter()
            .map(|template| {
                let mut argument = OsString::new();
                for piece in validate::argument_pieces(template)
                    .expect("argv templates are checked when the configuration is loaded")
                {
                    match piece {
                        validate::ArgumentPiece::Literal(text) => argument.push(text),
                        validate::ArgumentPiece::Path => argument.push(path),
                        validate::ArgumentPiece::Mime => argument.push(mime),
                        validate::ArgumentPiece::Output => argument.push(output),
                    }
                }
                argument
            })
            .collect()
    }
}

/// A glob over MIME types, such as `image/*` or `application/pdf`.
#[derive(Clone, Debug)]
pub struct MimePattern {
    glob: Glob,
    matcher: GlobMatcher,
}

impl MimePattern {
    pub fn as_str(&self) -> &str {
        self.glob.glob()
    }

    pub fn matches(&self, mime: &str) -> bool {
        self.matcher.is_match(mime)
    }
}

impl PartialEq for MimePattern {
    fn eq(&self, other: &Self) -> bool {
        self.glob == other.glob
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScraperConfig {
    pub inbox: PathBuf,
    pub staging: PathBuf,
    pub user_agent: String,
    /// Bytes.
    pub max_download_size: u64,
    /// At least 1.
    pub per_host_concurrency: u32,
    /// May be zero.
    pub politeness_delay: Duration,
    pub allow_private_addresses: bool,
    pub request_timeout: Duration,
    /// 0 to 100.
    pub max_redirects: u32,
    pub progress_interval: Duration,
    /// The wall-clock limit of one download attempt, from the moment it has its host's slot
    /// until the body is on disk; the partial file is kept for the next attempt's resume.
    pub download_timeout: Duration,
    /// Most download jobs queued, retrying or running at once; one more is refused.
    /// 1 to 10,000,000.
    pub max_pending: u32,
    /// The Hugging Face Hub that `hf://` bundles are resolved against (http or https).
    pub hf_endpoint: Url,
    /// A credentials file (the sources' format) whose header is sent to `hf_endpoint` only.
    pub hf_credentials_file: Option<PathBuf>,
}

/// One polled source, with `[source_defaults]` already applied.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    /// http or https, without credentials in it.
    pub url: Url,
    pub mode: SourceMode,
    pub every: Duration,
    /// Set exactly when `mode` is `Links`; a valid CSS selector (checked at load).
    pub selector: Option<String>,
    /// Only for `Links` and `Feed`.
    pub pattern: Option<LinkPattern>,
    pub credentials_file: Option<PathBuf>,
}

/// What the scraper does with a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceMode {
    /// Store the page when it changed.
    Page,
    /// Download each new link matching the selector (and pattern).
    Links,
    /// Download enclosures and links of new RSS/Atom entries.
    Feed,
}

/// A compiled regular expression that link URLs must match.
#[derive(Clone, Debug)]
pub struct LinkPattern(pub Regex);

impl PartialEq for LinkPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// How long finished work is kept before `sluicectl db maintain` deletes it. Documents and
/// their files are never deleted by retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    pub succeeded_jobs: Duration,
    /// Failed, dead and cancelled jobs.
    pub failed_jobs: Duration,
    /// Entries of a finished job's history (its transitions, progress and steps).
    pub history: Duration,
    /// Download rows that succeeded, failed or were cancelled.
    pub finished_downloads: Duration,
}

impl RetentionConfig {
    /// The ages as the store's retention policy.
    pub fn policy(&self) -> crate::store::maintenance::RetentionPolicy {
        crate::store::maintenance::RetentionPolicy {
            succeeded_jobs: self.succeeded_jobs,
            failed_jobs: self.failed_jobs,
            history: self.history,
            finished_downloads: self.finished_downloads,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    /// Bytes.
    pub max_payload_bytes: u64,
    /// Bytes.
    pub max_request_body: u64,
    /// Characters.
    pub max_string_length: u32,
    pub max_page_size: u32,
}

impl Config {
    /// How the store is opened, from `[store]` and the retry backoff of `[jobs]`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            durability: self.store.durability,
            busy_timeout: self.store.busy_timeout,
            max_attempts: self.jobs.max_attempts,
            retry: crate::store::RetryPolicy {
                base: self.jobs.retry_backoff_base,
                max: self.jobs.retry_backoff_max,
            },
        }
    }

    /// Loads a configuration file and its drop-ins ([`dropin_directory`]) merged over the
    /// built-in defaults. A file that does not exist is an error naming it; a drop-in
    /// directory that does not exist is no drop-ins.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_files(&read_config_files(path, false)?)
    }

    /// Parses and validates configuration text merged over the built-in defaults; `origin`
    /// is only used to name the file in errors. No IO.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::from_files(&[ConfigFile {
            path: origin.to_path_buf(),
            text: text.to_owned(),
        }])
    }

    /// Parses and validates configuration texts, each merged over the ones before it and all
    /// over the built-in defaults: tables key by key, the lists of tables (`[[watch]]`,
    /// `[[processor]]`, `[[source]]`) each replaced as a whole by a later file that has one.
    /// Errors name the file, line and key. No IO.
    pub fn from_files(files: &[ConfigFile]) -> Result<Config, ConfigError> {
        let sources = document::Sources::new(files);
        let merged_tree = sources.merged_tree()?;
        // The deserializer consumes the tree; a copy stays to name the key of an error.
        let key_index = merged_tree.clone();
        let raw = raw::RawConfig::deserialize(toml::de::Deserializer::from(merged_tree)).map_err(
            |error| ConfigError::Schema {
                location: sources.locate_in(&key_index, error.span().unwrap_or(0..0)),
                message: error.message().trim_end().to_owned(),
            },
        )?;
        validate::validate(raw, &validate::Locator::new(&sources, &key_index))
    }

    /// Loads the file named by `SLUICE_CONFIG`, or else [`DEFAULT_CONFIG_PATH`]. Returns the
    /// path used with the configuration. A file named by `SLUICE_CONFIG` must exist; when the
    /// default file does not exist the built-in defaults are used (they are that file's
    /// shipped content), and the default path is returned.
    pub fn load_from_env() -> Result<(PathBuf, Config), ConfigError> {
        load_from_variable(
            std::env::var_os(CONFIG_PATH_VARIABLE),
            Path::new(DEFAULT_CONFIG_PATH),
        )
    }
}

/// The built-in defaults as a validated configuration.
pub fn defaults() -> Config {
    Config::from_toml_str("", Path::new(BUILT_IN_DEFAULTS_ORIGIN))
        .expect("the shipped config/sluice.toml is valid (proven by a unit test)")
}

/// [`Config::load_from_env`] with the variable's value and the default path passed in, so
/// tests need not change the process environment. An empty value counts as unset, as
/// systemd's `Environment=SLUICE_CONFIG=` means "not set" to a person.
fn load_from_variable(
    variable: Option<OsString>,
    default_path: &Path,
) -> Result<(PathBuf, Config), ConfigError> {
    match variable.filter(|value| !value.is_empty()) {
        Some(explicit_path) => {
            let path = PathBuf::from(explicit_path);
            let config = Config::load(&path)?;
            Ok((path, config))
        }
        // No file at the default path is the built-in defaults (the shipped file's content),
        // still with any drop-ins beside it.
        None => {
            let files = read_config_files(default_path, true)?;
            Ok((default_path.to_path_buf(), Config::from_files(&files)?))
        }
    }
}

/// One configuration text and the file it came from (named in errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// The file name suffix of a drop-in: `NAME.toml` in [`dropin_directory`].
pub const DROPIN_SUFFIX: &str = ".toml";

/// The drop-in directory of a configuration file: `/etc/sluice/sluice.toml.d` for
/// `/etc/sluice/sluice.toml`. Its files named `*.toml` (not hidden) are merged over the
/// configuration file in the byte order of their names, as systemd orders its drop-ins, so
/// local changes and `sluicectl workers` never edit the packaged conffile.
pub fn dropin_directory(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".d");
    path.with_file_name(name)
}

/// The configuration file at `path` and its drop-ins, in merge order. A missing file is an
/// error naming it, unless `missing_is_empty` (the default path, whose absence means the
/// built-in defaults); a missing drop-in directory is no drop-ins; an unreadable one, or an
/// unreadable drop-in, is an error naming it.
pub fn read_config_files(
    path: &Path,
    missing_is_empty: bool,
) -> Result<Vec<ConfigFile>, ConfigError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut files = Vec::new();
    match read(path) {
        Ok(text) => files.push(ConfigFile {
            path: path.to_path_buf(),
            text,
        }),
        Err(ConfigError::Read { source, .. })
            if missing_is_empty && source.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    for dropin in dropin_paths(path)? {
        let text = read(&dropin)?;
        files.push(ConfigFile { path: dropin, text });
    }
    Ok(files)
}

/// The drop-ins of the configuration file at `path`, sorted by name.
pub fn dropin_paths(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let directory = dropin_directory(path);
    let entries = match std::fs::read_dir(&directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: directory,
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: directory.clone(),
            source,
        })?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(DROPIN_SUFFIX.as_bytes()) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names.into_iter().map(|name| directory.join(name)).collect())
}
