//! Stage two: check every raw value and build the typed [`Config`]. Each error points at the
//! value it is about (its span), so it names the file, line, column and key.

use std::collections::HashMap;
use std::ops::{Range, RangeInclusive};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSetBuilder};
use regex::Regex;
use toml::Spanned;
use toml::de::DeTable;
use url::Url;

use super::bounds::*;
use super::document::Sources;
use super::raw::{
    Number, RawConfig, RawProcessor, RawProcessorDefaults, RawSize, RawSource, RawSourceDefaults,
    RawWatch, RawWatchDefaults, Size, Text, TextList,
};
use super::{
    BusAddress, BusConfig, Config, ConfigError, Durability, IgnoreRules, IngestConfig, JobsConfig,
    LimitsConfig, LinkPattern, MetricsAccess, MimePattern, MonitorConfig, ProcessorConfig,
    ProcessorMode, RetentionConfig, ScraperConfig, ServiceConfig, SourceConfig, SourceMode,
    StoreConfig, WatchConfig, WatchMode, Watcher, WebConfig,
};

/// Turns spans into error locations for validation.
#[derive(Debug)]
pub(super) struct Locator<'a> {
    sources: &'a Sources<'a>,
    key_index: &'a Spanned<DeTable<'a>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(sources: &'a Sources<'a>, key_index: &'a Spanned<DeTable<'a>>) -> Self {
        Locator { sources, key_index }
    }

    fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.sources.locate_in(self.key_index, span),
            message: message.into(),
        }
    }

    /// The dotted key a span belongs to, for messages that mention a second key.
    fn key_name(&self, span: Range<usize>) -> String {
        self.sources
            .locate_in(self.key_index, span)
            .key
            .unwrap_or_else(|| "?".to_owned())
    }

    /// Whether a span points into the user's file rather than the built-in defaults.
    fn is_from_user_file(&self, span: &Range<usize>) -> bool {
        self.sources.is_in_user_text(span)
    }

    fn absolute_path(&self, value: &Text) -> Result<PathBuf, ConfigError> {
        let path = Path::new(value.get_ref());
        if !path.is_absolute() {
            return Err(self.invalid(
                value.span(),
                format!("path {:?} must be absolute", value.get_ref()),
            ));
        }
        if path
            .components()
            .any(|component| component == Component::ParentDir)
        {
            return Err(self.invalid(
                value.span(),
                format!("path {:?} must not contain `..`", value.get_ref()),
            ));
        }
        Ok(path.to_path_buf())
    }

    /// A duration within `range`.
    fn duration(&self, value: &Text, range: DurationRange) -> Result<Duration, ConfigError> {
        let duration = self.duration_or_zero(value)?;
        if duration.is_zero() && !range.minimum.is_zero() {
            return Err(self.invalid(value.span(), "duration must be more than zero"));
        }
        if duration < range.minimum {
            return Err(self.invalid(
                value.span(),
                format!(
                    "must be at least \"{}\"",
                    humantime::format_duration(range.minimum)
                ),
            ));
        }
        if duration > range.maximum {
            return Err(self.invalid(
                value.span(),
                format!(
                    "{:?} is too long: must be at most \"{}\"",
                    value.get_ref(),
                    humantime::format_duration(range.maximum)
                ),
            ));
        }
        Ok(duration)
    }

    fn duration_or_zero(&self, value: &Text) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref().trim()).map_err(|error| {
            self.invalid(
                value.span(),
                format!(
                    "invalid duration {:?} ({error}); write e.g. \"500ms\", \"5s\", \"15m\"",
                    value.get_ref()
                ),
            )
        })
    }

    /// A size in bytes above zero.
    fn size(&self, value: &Size) -> Result<u64, ConfigError> {
        let bytes = match value.get_ref() {
            RawSize::Bytes(bytes) => *bytes,
            RawSize::Text(text) => parse_size(text).map_err(|reason| {
                self.invalid(value.span(), format!("invalid size {text:?}: {reason}"))
            })?,
        };
        if bytes == 0 {
            return Err(self.invalid(value.span(), "size must be more than zero"));
        }
        Ok(bytes)
    }

    /// A whole number within `range`.
    fn number(&self, value: &Number, range: RangeInclusive<u32>) -> Result<u32, ConfigError> {
        let (minimum, maximum) = range.into_inner();
        let number = *value.get_ref();
        match u32::try_from(number) {
            Ok(number) if (minimum..=maximum).contains(&number) => Ok(number),
            _ if minimum == 1 && number == 0 => {
                Err(self.invalid(value.span(), "must be more than zero"))
            }
            _ => Err(self.invalid(
                value.span(),
                format!("{number} is out of range: must be from {minimum} to {maximum}"),
            )),
        }
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(&self, value: &Text, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        choices
            .iter()
            .find(|(word, _)| *word == value.get_ref())
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let words: Vec<String> = choices
                    .iter()
                    .map(|(word, _)| format!("{word:?}"))
                    .collect();
                self.invalid(
                    value.span(),
                    format!(
                        "unknown value {:?}: expected one of {}",
                        value.get_ref(),
                        words.join(", ")
                    ),
                )
            })
    }

    fn non_empty_text(&self, value: &Text) -> Result<String, ConfigError> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            return Err(self.invalid(value.span(), "must not be empty"));
        }
        if text.chars().any(char::is_control) {
            return Err(self.invalid(value.span(), "must not contain control characters"));
        }
        Ok(text.clone())
    }

    /// A name of a processor or source: short, plain and unique in its list.
    fn entry_name(
        &self,
        value: &Text,
        seen: &mut HashMap<String, Range<usize>>,
    ) -> Result<String, ConfigError> {
        let name = value.get_ref();
        let is_plain = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || "-_".contains(character));
        if !is_plain {
            return Err(self.invalid(
                value.span(),
                format!("name {name:?} must be 1 to 64 letters, digits, \"-\" or \"_\""),
            ));
        }
        if let Some(first) = seen.get(name) {
            let first = self.sources.locate(first.clone());
            return Err(self.invalid(
                value.span(),
                format!("name {name:?} is already used at line {}", first.line),
            ));
        }
        seen.insert(name.clone(), value.span());
        Ok(name.clone())
    }
}

pub(super) fn validate(raw: RawConfig, locator: &Locator<'_>) -> Result<Config, ConfigError> {
    let store = StoreConfig {
        path: locator.absolute_path(&raw.store.path)?,
        durability: locator.choice(
            &raw.store.durability,
            &[("full", Durability::Full), ("normal", Durability::Normal)],
        )?,
        busy_timeout: locator.duration(&raw.store.busy_timeout, BUSY_TIMEOUT)?,
    };
    let bus = BusConfig {
        address: bus_address(locator, &raw.bus.address)?,
    };
    let jobs = validate_jobs(locator, &raw)?;
    let service = ServiceConfig {
        stop_timeout: locator.duration(&raw.service.stop_timeout, STOP_TIMEOUT)?,
        status_interval: locator.duration(&raw.service.status_interval, STATUS_INTERVAL)?,
    };
    let web = WebConfig {
        listen: raw.web.listen.get_ref().parse().map_err(|_| {
            locator.invalid(
                raw.web.listen.span(),
                format!(
                    "invalid socket address {:?}: write \"IP:port\", e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    raw.web.listen.get_ref()
                ),
            )
        })?,
        base_path: base_path(locator, &raw.web.base_path)?,
        token_file: locator.absolute_path(&raw.web.token_file)?,
        read_token_file: locator.absolute_path(&raw.web.read_token_file)?,
        public_reads: *raw.web.public_reads.get_ref(),
        max_upload_size: locator.size(&raw.web.max_upload_size)?,
        allowed_hosts: allowed_hosts(locator, &raw.web.allowed_hosts)?,
        max_event_streams: locator.number(&raw.web.max_event_streams, MAX_EVENT_STREAMS)?,
        max_wait: locator.duration(&raw.web.max_wait, MAX_WAIT)?,
        metrics_access: locator.choice(
            &raw.web.metrics_access,
            &[
                ("token", MetricsAccess::Token),
                ("loopback", MetricsAccess::Loopback),
            ],
        )?,
    };
    let monitor = MonitorConfig {
        reconcile_interval: locator
            .duration(&raw.monitor.reconcile_interval, RECONCILE_INTERVAL)?,
    };
    let ingest = IngestConfig {
        workers: locator.number(&raw.ingest.workers, super::INGEST_WORKERS_RANGE)?,
        library: locator.absolute_path(&raw.ingest.library)?,
        max_file_size: locator.size(&raw.ingest.max_file_size)?,
        text_max_bytes: locator.size(&raw.ingest.text_max_bytes)?,
        thumbnail_size: locator.number(&raw.ingest.thumbnail_size, THUMBNAIL_SIZE)?,
        extract_max_memory: locator.size(&raw.ingest.extract_max_memory)?,
        max_pages: locator.number(&raw.ingest.max_pages, MAX_PAGES)?,
        job_timeout: locator.duration(&raw.ingest.job_timeout, JOB_TIMEOUT)?,
        max_pending: locator.number(&raw.ingest.max_pending, MAX_PENDING)?,
    };
    // The defaults tables are checked even when no entry takes a value from them, so a bad
    // default is refused when it is written, not later when the first entry starts using it.
    locator.duration(&raw.watch_defaults.poll_interval, POLL_INTERVAL)?;
    locator.duration(&raw.watch_defaults.quiet_period, QUIET_PERIOD)?;
    locator.duration(&raw.processor_defaults.timeout, PROCESSOR_TIMEOUT)?;
    locator.duration(&raw.source_defaults.every, SOURCE_EVERY)?;
    let watches = validate_watches(
        locator,
        &raw.watch,
        &raw.watch_defaults,
        &raw.ingest.library,
    )?;
    let scraper = validate_scraper(locator, &raw)?;
    // What a processor's `writable` folders must stay apart from: everything of sluice's own
    // that its confinement keeps it from writing.
    let mut protected: Vec<(&str, &Path)> = vec![
        ("the library", &ingest.library),
        ("the scraper's inbox", &scraper.inbox),
        ("the scraper's staging folder", &scraper.staging),
    ];
    if let Some(folder) = store.path.parent() {
        protected.push(("the database's folder", folder));
    }
    protected.extend(
        watches
            .iter()
            .map(|watch| ("a watched folder", watch.path.as_path())),
    );
    let mut processor_names = HashMap::new();
    let processors = raw
        .processor
        .iter()
        .map(|entry| {
            validate_processor(
                locator,
                entry.get_ref(),
                &raw.processor_defaults,
                &mut processor_names,
                &protected,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut source_names = HashMap::new();
    let sources = raw
        .source
        .iter()
        .map(|entry| validate_source(locator, entry, &raw.source_defaults, &mut source_names))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = LimitsConfig {
        max_payload_bytes: locator.size(&raw.limits.max_payload_bytes)?,
        max_request_body: locator.size(&raw.limits.max_request_body)?,
        max_string_length: locator.number(&raw.limits.max_string_length, MAX_STRING_LENGTH)?,
        max_page_size: locator.number(&raw.limits.max_page_size, MAX_PAGE_SIZE)?,
    };
    let retention = RetentionConfig {
        succeeded_jobs: locator.duration(&raw.retention.succeeded_jobs, RETENTION_AGE)?,
        failed_jobs: locator.duration(&raw.retention.failed_jobs, RETENTION_AGE)?,
        history: locator.duration(&raw.retention.history, RETENTION_AGE)?,
        finished_downloads: locator.duration(&raw.retention.finished_downloads, RETENTION_AGE)?,
    };
    Ok(Config {
        store,
        bus,
        jobs,
        service,
        web,
        monitor,
        watches,
        ingest,
        processors,
        scraper,
        sources,
        limits,
        retention,
    })
}

fn validate_jobs(locator: &Locator<'_>, raw: &RawConfig) -> Result<JobsConfig, ConfigError> {
    let jobs = &raw.jobs;
    let lease = locator.duration(&jobs.lease, LEASE)?;
    let heartbeat_interval = locator.duration(&jobs.heartbeat_interval, HEARTBEAT_INTERVAL)?;
    // A heartbeat at most every half lease means one late heartbeat does not lose the job.
    if heartbeat_interval > lease / 2 {
        // Point at whichever of the two the user wrote, since that is what they will edit.
        let span = if locator.is_from_user_file(&jobs.heartbeat_interval.span()) {
            jobs.heartbeat_interval.span()
        } else {
            jobs.lease.span()
        };
        return Err(locator.invalid(
            span,
            format!(
                "{} ({}) must be at most half of {} ({})",
                locator.key_name(jobs.heartbeat_interval.span()),
                jobs.heartbeat_interval.get_ref(),
                locator.key_name(jobs.lease.span()),
                jobs.lease.get_ref()
            ),
        ));
    }
    let retry_backoff_base = locator.duration(&jobs.retry_backoff_base, RETRY_BACKOFF)?;
    let retry_backoff_max = locator.duration(&jobs.retry_backoff_max, RETRY_BACKOFF)?;
    if retry_backoff_max < retry_backoff_base {
        let span = if locator.is_from_user_file(&jobs.retry_backoff_max.span()) {
            jobs.retry_backoff_max.span()
        } else {
            jobs.retry_backoff_base.span()
        };
        return Err(locator.invalid(
            span,
            format!(
                "{} ({}) must be at least {} ({})",
                locator.key_name(jobs.retry_backoff_max.span()),
                jobs.retry_backoff_max.get_ref(),
                locator.key_name(jobs.retry_backoff_base.span()),
                jobs.retry_backoff_base.get_ref()
            ),
        ));
    }
    Ok(JobsConfig {
        lease,
        heartbeat_interval,
        max_attempts: locator.number(&jobs.max_attempts, MAX_ATTEMPTS)?,
        retry_backoff_base,
        retry_backoff_max,
        claim_batch: locator.number(&jobs.claim_batch, CLAIM_BATCH)?,
    })
}

/// "system", "session", or a D-Bus address, parsed the way the bus module connects.
fn bus_address(locator: &Locator<'_>, value: &Text) -> Result<BusAddress, ConfigError> {
    value.get_ref().parse().map_err(|error| {
        locator.invalid(
            value.span(),
            format!(
                "invalid bus {:?} ({error}): expected \"system\", \"session\" or a D-Bus address like \"unix:path=/run/sluice/bus\"",
                value.get_ref()
            ),
        )
    })
}

fn base_path(locator: &Locator<'_>, value: &Text) -> Result<String, ConfigError> {
    let path = value.get_ref();
    let problem = if !path.starts_with('/') {
        Some("must start with \"/\"")
    } else if path.len() > 1 && path.ends_with('/') {
        Some("must not end with \"/\" (except \"/\" itself)")
    } else if path.contains("//") {
        Some("must not contain \"//\"")
    } else if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        Some("must not contain \".\" or \"..\" segments")
    } else if !path
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "/-_.~".contains(character))
    {
        Some("may only contain letters, digits and \"/-_.~\"")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            Err(locator.invalid(value.span(), format!("base path {path:?} {problem}")))
        }
        None => Ok(path.clone()),
    }
}

fn allowed_hosts(locator: &Locator<'_>, value: &TextList) -> Result<Vec<String>, ConfigError> {
    if value.get_ref().is_empty() {
        return Err(locator.invalid(
            value.span(),
            "must name at least one host, or the dashboard would refuse every request",
        ));
    }
    value
        .get_ref()
        .iter()
        .map(|host| {
            let is_host = !host.get_ref().is_empty()
                && host.get_ref().chars().all(|character| {
                    character.is_ascii_alphanumeric() || ".-:[]".contains(character)
                })
                && !host.get_ref().contains("]:");
            if is_host {
                Ok(host.get_ref().to_ascii_lowercase())
            } else {
                Err(locator.invalid(
                    host.span(),
                    format!(
                        "{:?} is not a host name (write names or IP addresses without port, e.g. \"localhost\", \"[::1]\")",
                        host.get_ref()
                    ),
                ))
            }
        })
        .collect()
}

fn validate_watches(
    locator: &Locator<'_>,
    entries: &[Spanned<RawWatch>],
    defaults: &RawWatchDefaults,
    library: &Text,
) -> Result<Vec<WatchConfig>, ConfigError> {
    let library_path = locator.absolute_path(library)?;
    let mut watches: Vec<(WatchConfig, Range<usize>)> = Vec::new();
    for entry in entries {
        let raw = entry.get_ref();
        let path = locator.absolute_path(&raw.path)?;
        for (earlier, earlier_span) in &watches {
            if path.starts_with(&earlier.path) || earlier.path.starts_with(&path) {
                return Err(locator.invalid(
                    raw.path.span(),
                    format!(
                        "{} overlaps {} ({}): a folder may be watched only once",
                        path.display(),
                        locator.key_name(earlier_span.clone()),
                        earlier.path.display()
                    ),
                ));
            }
        }
        if path.starts_with(&library_path) || library_path.starts_with(&path) {
            // Files filed into a watched library would be picked up again, forever.
            let span = if locator.is_from_user_file(&raw.path.span()) {
                raw.path.span()
            } else {
                library.span()
            };
            return Err(locator.invalid(
                span,
                format!(
                    "watched folder {} overlaps the library {}: they must be separate",
                    path.display(),
                    library_path.display()
                ),
            ));
        }
        let watch = WatchConfig {
            mode: locator.choice(
                &raw.mode,
                &[("consume", WatchMode::Consume), ("index", WatchMode::Index)],
            )?,
            ignore: ignore_rules(locator, raw.ignore.as_ref().unwrap_or(&defaults.ignore))?,
            recursive: *raw
                .recursive
                .as_ref()
                .unwrap_or(&defaults.recursive)
                .get_ref(),
            watcher: locator.choice(
                raw.watcher.as_ref().unwrap_or(&defaults.watcher),
                &[
                    ("auto", Watcher::Auto),
                    ("inotify", Watcher::Inotify),
                    ("poll", Watcher::Poll),
                ],
            )?,
            poll_interval: locator.duration(
                raw.poll_interval
                    .as_ref()
                    .unwrap_or(&defaults.poll_interval),
                POLL_INTERVAL,
            )?,
            quiet_period: locator.duration(
                raw.quiet_period.as_ref().unwrap_or(&defaults.quiet_period),
                QUIET_PERIOD,
            )?,
            path,
        };
        watches.push((watch, raw.path.span()));
    }
    Ok(watches.into_iter().map(|(watch, _)| watch).collect())
}

fn ignore_rules(locator: &Locator<'_>, value: &TextList) -> Result<IgnoreRules, ConfigError> {
    let mut globs = Vec::new();
    let mut name_globs = GlobSetBuilder::new();
    let mut path_globs = GlobSetBuilder::new();
    for pattern in value.get_ref() {
        let glob = GlobBuilder::new(pattern.get_ref())
            .literal_separator(true)
            .build()
            .map_err(|error| {
                locator.invalid(pattern.span(), format!("invalid glob: {}", error.kind()))
            })?;
        if pattern.get_ref().contains('/') {
            path_globs.add(glob.clone());
        } else {
            name_globs.add(glob.clone());
        }
        globs.push(glob);
    }
    let build = |builder: GlobSetBuilder| {
        builder
            .build()
            .map_err(|error| locator.invalid(value.span(), format!("invalid glob list: {error}")))
    };
    Ok(IgnoreRules {
        globs,
        name_globs: build(name_globs)?,
        path_globs: build(path_globs)?,
    })
}

/// Folders a processor may not write beneath: shared temporary folders (anyone may put a link
/// or a file there for it to trust; its own `TMPDIR` is given to it anyway) and the system's
/// folders.
const NOT_WRITABLE_BENEATH: [&str; 15] = [
    "/tmp", "/var/tmp", "/dev", "/proc", "/sys", "/run", "/usr", "/bin", "/sbin", "/lib", "/lib32",
    "/lib64", "/libx32", "/etc", "/boot",
];

/// Folders a processor may write beneath but not be given whole (nor any folder above them).
const NOT_WRITABLE_WHOLE: [&str; 10] = [
    "/var",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/opt",
    "/srv",
    "/home",
    "/root",
    "/mnt",
    "/media",
];

/// Why `path` cannot be a processor's writable folder, if it cannot: `/`, a shared temporary
/// folder, a system folder, or a folder that holds either (lexically; the launcher opens it
/// without following links).
fn shared_or_system_folder(path: &Path) -> Option<String> {
    if let Some(folder) = NOT_WRITABLE_BENEATH
        .iter()
        .map(Path::new)
        .find(|folder| path.starts_with(folder))
    {
        let how = if path == folder { "is" } else { "is beneath" };
        return Some(format!(
            "{how} {}, a shared or system folder",
            folder.display()
        ));
    }
    NOT_WRITABLE_BENEATH
        .iter()
        .chain(NOT_WRITABLE_WHOLE.iter())
        .map(Path::new)
        .find(|folder| folder.starts_with(path))
        .map(|folder| format!("holds {}, a shared or system folder", folder.display()))
}

fn validate_processor(
    locator: &Locator<'_>,
    raw: &RawProcessor,
    defaults: &RawProcessorDefaults,
    names: &mut HashMap<String, Range<usize>>,
    protected: &[(&str, &Path)],
) -> Result<ProcessorConfig, ConfigError> {
    let name = locator.entry_name(&raw.name, names)?;
    let mut writable = Vec::new();
    for folder in raw.writable.iter().flat_map(|list| list.get_ref()) {
        let path = locator.absolute_path(folder)?;
        if let Some(reason) = shared_or_system_folder(&path) {
            return Err(locator.invalid(
                folder.span(),
                format!(
                    "{} {reason}: a processor's writable folder must be one of its own (e.g. \
                     /var/cache/sluice-NAME)",
                    path.display()
                ),
            ));
        }
        let clash = protected
            .iter()
            .find(|(_, protected)| path.starts_with(protected) || protected.starts_with(&path));
        if let Some((what, protected)) = clash {
            return Err(locator.invalid(
                folder.span(),
                format!(
                    "{} overlaps {what} ({}): a processor may write only apart from sluice's \
                     own folders",
                    path.display(),
                    protected.display()
                ),
            ));
        }
        writable.push(path);
    }
    let glob = Glob::new(raw.mime.get_ref()).map_err(|error| {
        locator.invalid(
            raw.mime.span(),
            format!("invalid MIME glob: {}", error.kind()),
        )
    })?;
    let mime = MimePattern {
        matcher: glob.compile_matcher(),
        glob,
    };
    let Some(program) = raw.argv.get_ref().first() else {
        return Err(locator.invalid(raw.argv.span(), "must name at least the program to run"));
    };
    if !Path::new(program.get_ref()).is_absolute() {
        return Err(locator.invalid(
            program.span(),
            format!(
                "program {:?} must be an absolute path (processors run without a shell or PATH search)",
                program.get_ref()
            ),
        ));
    }
    let mode = match &raw.mode {
        None => ProcessorMode::Once,
        Some(mode) => locator.choice(
            mode,
            &[
                ("once", ProcessorMode::Once),
                ("server", ProcessorMode::Server),
            ],
        )?,
    };
    for argument in raw.argv.get_ref() {
        let pieces = argument_pieces(argument.get_ref())
            .map_err(|reason| locator.invalid(argument.span(), reason))?;
        let placeholder = pieces
            .iter()
            .any(|piece| !matches!(piece, ArgumentPiece::Literal(_)));
        if mode == ProcessorMode::Server && placeholder {
            return Err(locator.invalid(
                argument.span(),
                format!(
                    "{:?}: a server processor is started once for many files, so its argv takes \
                     no {{path}}, {{mime}} or {{output}}; each request names the file, its type \
                     and the output folder",
                    argument.get_ref()
                ),
            ));
        }
    }
    Ok(ProcessorConfig {
        name,
        mime,
        mode,
        argv: raw
            .argv
            .get_ref()
            .iter()
            .map(|argument| argument.get_ref().clone())
            .collect(),
        timeout: locator.duration(
            raw.timeout.as_ref().unwrap_or(&defaults.timeout),
            PROCESSOR_TIMEOUT,
        )?,
        max_output: locator.size(raw.max_output.as_ref().unwrap_or(&defaults.max_output))?,
        writable,
    })
}

/// A piece of a processor argument template.
#[derive(Debug, PartialEq)]
pub(super) enum ArgumentPiece {
    Literal(String),
    Path,
    Mime,
    Output,
}

/// Splits an argument template into literal text and placeholders: `{path}`, `{mime}`,
/// `{output}`, with
/// `{{` and `}}` for literal braces. Any other use of a brace is an error, so a typo such as
/// `{paht}` is found at load time instead of being passed to the program.
pub(super) fn argument_pieces(template: &str) -> Result<Vec<ArgumentPiece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut characters = template.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            '{' if characters.peek() == Some(&'{') => {
                characters.next();
                literal.push('{');
            }
            '}' if characters.peek() == Some(&'}') => {
                characters.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for next in characters.by_ref() {
                    if next == '}' {
                        closed = true;
                        break;
                    }
                    name.push(next);
                }
                if !closed {
                    return Err(format!(
                        "unmatched \"{{\" in {template:?}: write {{{{ for a literal brace"
                    ));
                }
                let piece = match name.as_str() {
                    "path" => ArgumentPiece::Path,
                    "mime" => ArgumentPiece::Mime,
                    "output" => ArgumentPiece::Output,
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} in {template:?}: use {{path}}, {{mime}} or {{output}}, and {{{{ or }}}} for a literal brace"
                        ));
                    }
                };
                if !literal.is_empty() {
                    pieces.push(ArgumentPiece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(piece);
            }
            '}' => {
                return Err(format!(
                    "unmatched \"}}\" in {template:?}: write }}}} for a literal brace"
                ));
            }
            other => literal.push(other),
        }
    }
    if !literal.is_empty() {
        pieces.push(ArgumentPiece::Literal(literal));
    }
    Ok(pieces)
}

fn validate_scraper(locator: &Locator<'_>, raw: &RawConfig) -> Result<ScraperConfig, ConfigError> {
    let scraper = &raw.scraper;
    Ok(ScraperConfig {
        inbox: locator.absolute_path(&scraper.inbox)?,
        staging: locator.absolute_path(&scraper.staging)?,
        user_agent: locator.non_empty_text(&scraper.user_agent)?,
        max_download_size: locator.size(&scraper.max_download_size)?,
        per_host_concurrency: locator
            .number(&scraper.per_host_concurrency, PER_HOST_CONCURRENCY)?,
        politeness_delay: locator.duration(&scraper.politeness_delay, POLITENESS_DELAY)?,
        allow_private_addresses: *scraper.allow_private_addresses.get_ref(),
        request_timeout: locator.duration(&scraper.request_timeout, REQUEST_TIMEOUT)?,
        max_redirects: locator.number(&scraper.max_redirects, MAX_REDIRECTS)?,
        progress_interval: locator.duration(&scraper.progress_interval, PROGRESS_INTERVAL)?,
        download_timeout: locator.duration(&scraper.download_timeout, DOWNLOAD_TIMEOUT)?,
        max_pending: locator.number(&scraper.max_pending, MAX_PENDING)?,
        hf_endpoint: hf_endpoint(locator, &scraper.hf_endpoint)?,
        hf_credentials_file: scraper
            .hf_credentials_file
            .as_ref()
            .map(|path| locator.absolute_path(path))
            .transpose()?,
    })
}

/// The Hugging Face Hub's base URL: http(s), a host, no credentials, query or fragment;
/// stored without a trailing `/` so API paths append to it.
fn hf_endpoint(locator: &Locator<'_>, value: &Text) -> Result<Url, ConfigError> {
    let url = source_url(locator, value)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(locator.invalid(
            value.span(),
            "the Hub's base URL must not have a query or fragment",
        ));
    }
    Ok(url)
}

fn validate_source(
    locator: &Locator<'_>,
    entry: &Spanned<RawSource>,
    defaults: &RawSourceDefaults,
    names: &mut HashMap<String, Range<usize>>,
) -> Result<SourceConfig, ConfigError> {
    let raw = entry.get_ref();
    let name = locator.entry_name(&raw.name, names)?;
    let url = source_url(locator, &raw.url)?;
    let mode = locator.choice(
        &raw.mode,
        &[
            ("page", SourceMode::Page),
            ("links", SourceMode::Links),
            ("feed", SourceMode::Feed),
        ],
    )?;
    let every_value = raw.every.as_ref().unwrap_or(&defaults.every);
    let every = locator.duration(every_value, SOURCE_EVERY)?;
    let selector = match (mode, &raw.selector) {
        (SourceMode::Links, Some(selector)) => {
            let text = locator.non_empty_text(selector)?;
            if let Err(error) = scraper::Selector::parse(&text) {
                return Err(locator.invalid(
                    selector.span(),
                    format!("invalid CSS selector {text:?}: {error}"),
                ));
            }
            Some(text)
        }
        (SourceMode::Links, None) => {
            return Err(locator.invalid(
                entry.span(),
                "a source in \"links\" mode needs a `selector` (a CSS selector for the links)",
            ));
        }
        (_, Some(selector)) => {
            return Err(
                locator.invalid(selector.span(), "`selector` is only used in \"links\" mode")
            );
        }
        (_, None) => None,
    };
    let pattern = match (&raw.pattern, mode) {
        (Some(pattern), SourceMode::Page) => {
            return Err(locator.invalid(
                pattern.span(),
                "`pattern` is only used in \"links\" and \"feed\" modes",
            ));
        }
        (Some(pattern), _) => Some(LinkPattern(Regex::new(pattern.get_ref()).map_err(
            |error| {
                locator.invalid(
                    pattern.span(),
                    format!("invalid regular expression: {error}"),
                )
            },
        )?)),
        (None, _) => None,
    };
    let credentials_file = raw
        .credentials_file
        .as_ref()
        .map(|path| locator.absolute_path(path))
        .transpose()?;
    Ok(SourceConfig {
        name,
        url,
        mode,
        every,
        selector,
        pattern,
        credentials_file,
    })
}

fn source_url(locator: &Locator<'_>, value: &Text) -> Result<Url, ConfigError> {
    let url = Url::parse(value.get_ref()).map_err(|error| {
        locator.invalid(
            value.span(),
            format!("invalid URL {:?}: {error}", value.get_ref()),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(locator.invalid(
            value.span(),
            format!(
                "URL scheme {:?} is not allowed: only http and https",
                url.scheme()
            ),
        ));
    }
    if url.host().is_none() {
        return Err(locator.invalid(value.span(), "URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would end up in logs, signals and the dashboard.
        return Err(locator.invalid(
            value.span(),
            "URL must not contain credentials: put them in a file named by `credentials_file`",
        ));
    }
    Ok(url)
}

/// Parses "64 KiB", "10GiB", "1.5 MB", "512" (bytes) into bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    if number.is_empty() {
        return Err("no number before the unit".to_owned());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| "too large".to_owned());
    }
    let fraction: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let bytes = (fraction * multiplier as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err("too large".to_owned());
    }
    // Rounded, finite and in range just above, so the conversion is exact enough for a size.
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64 KiB"), Ok(65_536));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse_size("2 KB"), Ok(2_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1.2.3 MiB").is_err());
        assert!(parse_size("99999999999 TiB").is_err());
    }

    #[test]
    fn argument_templates_split_into_placeholders_and_literals() {
        assert_eq!(
            argument_pieces("--in={path}").unwrap(),
            vec![ArgumentPiece::Literal("--in=".into()), ArgumentPiece::Path]
        );
        assert_eq!(
            argument_pieces("{{x}} {mime}").unwrap(),
            vec![ArgumentPiece::Literal("{x} ".into()), ArgumentPiece::Mime]
        );
        assert!(argument_pieces("{paht}").unwrap_err().contains("{paht}"));
        assert!(argument_pieces("a}b").is_err());
        assert!(argument_pieces("{path").is_err());
    }
}
