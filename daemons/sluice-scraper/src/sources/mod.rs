//! Scheduled sources: each configured `[[source]]` is checked every `every` (with jitter),
//! conditionally on the validators of its last answer; what a check finds becomes downloads
//! through the same store call, policy and queue as any other download.
//!
//! A check is a task ([`run_check`]): robots.txt → conditional GET → unchanged (304 or the
//! same content hash: recorded, nothing more) or changed → the page itself (page mode), the
//! links a selector picks (links mode) or the entries of a feed (feed mode) → the items not
//! seen before become downloads, each item with its downloads in one transaction → the
//! outcome and the next check time are recorded.
//!
//! Caps per check, so a hostile page or feed costs bounded memory and time: the body is read
//! up to [`MAX_BODY_BYTES`] (more fails the check), and at most [`MAX_NEW_ITEMS_PER_CHECK`]
//! new links or entries become downloads; the rest, like items that find the download queue
//! at `[scraper] max_pending`, wait for the next check (the validators are then forgotten, so
//! that check reads the page again in full). Nothing is lost: an item is remembered only
//! together with its downloads.

pub(crate) mod credentials;
mod extract;
pub(crate) mod fetch;
mod robots;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_core::config::{Config, SourceConfig, SourceMode};
use sluice_core::policy::{NewDownload, SubmitRules, validate_submission};
use sluice_core::store::{
    CreatedDownload, SourceCheck, SourceDefinition, SourceItem, SourceStatus, Validators,
};
use tokio::time::Instant;
use url::Url;

use crate::hosts::HostLimiter;
use crate::inbox;
use crate::store_thread::StoreHandle;
use fetch::{Answer, FetchError, Request};
pub use robots::RobotsCache;
use robots::{CachedRobots, ROBOTS_MAX_AGE, ROBOTS_MAX_BYTES, RobotsRules};

/// Largest page or feed a check reads; a larger one fails the check.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// At most this many new links or entries become downloads in one check; the rest wait for
/// the next check.
pub const MAX_NEW_ITEMS_PER_CHECK: usize = 1000;

/// Items are recorded this many to a transaction.
const ITEMS_PER_TRANSACTION: usize = 200;

/// At most this many checks run at once.
pub const MAX_ACTIVE_CHECKS: usize = 4;

/// The configuration's sources as the store keeps them.
pub fn definitions(config: &Config) -> Vec<SourceDefinition> {
    config
        .sources
        .iter()
        .map(|source| SourceDefinition {
            name: source.name.clone(),
            url: source.url.to_string(),
            mode: mode_name(source.mode).to_owned(),
            every: source.every,
            selector: source.selector.clone(),
            pattern: source.pattern.as_ref().map(|pattern| pattern.0.to_string()),
        })
        .collect()
}

pub fn mode_name(mode: SourceMode) -> &'static str {
    match mode {
        SourceMode::Page => "page",
        SourceMode::Links => "links",
        SourceMode::Feed => "feed",
    }
}

/// When the first check of a new source (or an overdue one after a restart) happens: at a
/// random point within `min(every, 1 min)`, so a boot spreads its sources out.
pub fn first_check_in(every: Duration) -> Duration {
    let window = every.min(Duration::from_secs(60));
    window.mul_f64(rand::random::<f64>())
}

/// The next check after one at `now`: `every`, give or take 10%.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// What a check needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckContext {
    pub store: StoreHandle,
    /// The guarded client without automatic redirects (they are followed in [`fetch`]).
    pub client: reqwest::Client,
    pub hosts: HostLimiter,
    pub robots: RobotsCache,
    /// `[scraper] staging`: a page-mode check leaves the page it fetched there as its
    /// download's partial file, so the download needs no request of its own.
    pub staging: std::path::PathBuf,
    pub user_agent: String,
    pub allow_private_addresses: bool,
    pub max_redirects: u32,
    pub max_pending: u32,
    pub max_download_size: u64,
    pub max_attempts: u32,
}

/// How a check ended, for the loop (signals, counters, status).
#[derive(Debug)]
pub struct CheckReport {
    pub source_id: i64,
    pub name: String,
    pub created: Vec<CreatedDownload>,
    pub outcome: &'static str,
}

/// Runs one check of `source` (its row) as `config` defines it.
pub async fn run_check(
    context: CheckContext,
    source: SourceStatus,
    config: SourceConfig,
) -> CheckReport {
    let span = tracing::info_span!("source", source = %source.name, url = %source.url);
    let _entered = span.enter();
    drop(_entered);
    let name = source.name.clone();
    let source_id = source.id;
    let every = config.every;
    let (check, created) = match check(&context, &source, &config).await {
        Ok(Checked {
            outcome,
            validators,
            changed,
            created,
            error,
        }) => (
            SourceCheck {
                outcome,
                error,
                validators,
                changed,
                next_check_at_ms: next_check_at(jittered(every)),
            },
            created,
        ),
        Err(CheckFailure {
            outcome,
            error,
            wait,
        }) => (
            SourceCheck {
                outcome,
                error: Some(error),
                validators: Validators::Keep,
                changed: false,
                next_check_at_ms: next_check_at(jittered(every).max(wait)),
            },
            Vec::new(),
        ),
    };
    let outcome = check.outcome;
    let error = check.error.clone();
    let recorded = context
        .store
        .call(move |store| store.finish_source_check(source_id, &check))
        .await;
    if let Err(error) = recorded {
        tracing::error!(source = %name, error = %error, "source {name}: cannot record its check: {error}");
    }
    match &error {
        Some(error) => tracing::warn!(
            source = %name,
            outcome,
            error = %error,
            "source {name} checked: {outcome}: {error}"
        ),
        None => tracing::info!(
            source = %name,
            outcome,
            downloads = created.len(),
            "source {name} checked: {outcome}, {} new download{}",
            created.len(),
            if created.len() == 1 { "" } else { "s" }
        ),
    }
    CheckReport {
        source_id,
        name,
        created,
        outcome,
    }
}

fn next_check_at(after: Duration) -> i64 {
    sluice_core::store::now_ms() + after.as_millis() as i64
}

struct Checked {
    outcome: &'static str,
    validators: Validators,
    changed: bool,
    created: Vec<CreatedDownload>,
    /// Set for a partial outcome: why the rest waits.
    error: Option<String>,
}

struct CheckFailure {
    outcome: &'static str,
    error: String,
    /// The next check no earlier than this (a `Retry-After`).
    wait: Duration,
}

impl CheckFailure {
    fn failed(error: impl Into<String>) -> CheckFailure {
        CheckFailure {
            outcome: "failed",
            error: error.into(),
            wait: Duration::ZERO,
        }
    }
}

impl From<FetchError> for CheckFailure {
    fn from(error: FetchError) -> CheckFailure {
        match error {
            FetchError::Failed(error) => CheckFailure::failed(error),
            FetchError::Deferred { until, error } => CheckFailure {
                outcome: "deferred",
                error,
                wait: until.saturating_duration_since(Instant::now()),
            },
        }
    }
}

async fn check(
    context: &CheckContext,
    source: &SourceStatus,
    config: &SourceConfig,
) -> Result<Checked, CheckFailure> {
    let url = config.url.clone();
    let host = fetch::host_key(&url);
    if let Some(until) = context.hosts.held_until(&host).await {
        return Err(CheckFailure {
            outcome: "deferred",
            error: format!("{host} asked to wait (Retry-After); not asked again before then"),
            wait: until.saturating_duration_since(Instant::now()),
        });
    }
    let credentials = match &config.credentials_file {
        Some(path) => credentials::read_credentials(path).map_err(CheckFailure::failed)?,
        None => Vec::new(),
    };
    let rules = robots_rules(context, &url, config.every).await?;
    if !rules.allows(&path_and_query(&url)) {
        return Err(CheckFailure {
            outcome: "disallowed",
            error: format!(
                "robots.txt of {} disallows {} for user agent {:?}",
                origin_text(&url),
                url.path(),
                context.user_agent
            ),
            wait: Duration::ZERO,
        });
    }
    let request = Request {
        client: &context.client,
        hosts: &context.hosts,
        allow_private_addresses: context.allow_private_addresses,
        max_redirects: context.max_redirects,
        accept: match config.mode {
            SourceMode::Feed => {
                "application/rss+xml, application/atom+xml, application/feed+json, \
                 application/xml;q=0.9, */*;q=0.8"
            }
            _ => "text/html, application/xhtml+xml, */*;q=0.8",
        },
        origin_of: &url,
        credentials: &credentials,
        etag: source.etag.as_deref(),
        last_modified: source.last_modified.as_deref(),
        max_bytes: MAX_BODY_BYTES,
        cut: false,
    };
    let (bytes, final_url, etag, last_modified, content_type) =
        match fetch::get(&request, &url).await? {
            Answer::NotModified => {
                return Ok(Checked {
                    outcome: "unchanged",
                    validators: Validators::Keep,
                    changed: false,
                    created: Vec::new(),
                    error: None,
                });
            }
            Answer::ClientError(status) => {
                return Err(CheckFailure::failed(format!("{status} from {url}")));
            }
            Answer::Body {
                bytes,
                url,
                etag,
                last_modified,
                content_type,
            } => (bytes, url, etag, last_modified, content_type),
        };
    let content_hash = hex(&Sha256::digest(&bytes));
    let validators = Validators::Set {
        etag,
        last_modified,
        content_hash: content_hash.clone(),
    };
    if source.content_hash.as_deref() == Some(content_hash.as_str()) {
        return Ok(Checked {
            outcome: "unchanged",
            validators,
            changed: false,
            created: Vec::new(),
            error: None,
        });
    }

    // A page-mode source's download is the page just fetched: its SHA-256 is expected, and
    // the bytes become the download's partial file below (fetched once, not twice).
    let page = (config.mode == SourceMode::Page).then(|| PageVersion {
        file_name: page_file_name(&config.name, content_type.as_deref()),
        sha256: content_hash.clone(),
        bytes: bytes.clone(),
    });
    let found = {
        let mode = config.mode;
        let selector = config.selector.clone();
        let pattern = config.pattern.clone();
        let base = final_url.clone();
        let page_url = url.clone();
        tokio::task::spawn_blocking(move || match mode {
            SourceMode::Page => Ok(vec![extract::Found {
                key: format!("page:{content_hash}"),
                urls: vec![page_url],
            }]),
            SourceMode::Links => extract::links(
                &bytes,
                &base,
                selector.as_deref().unwrap_or("a"),
                pattern.as_ref().map(|pattern| &pattern.0),
            ),
            SourceMode::Feed => {
                extract::feed_entries(&bytes, &base, pattern.as_ref().map(|pattern| &pattern.0))
            }
        })
        .await
        .map_err(|error| CheckFailure::failed(format!("parsing failed: {error}")))?
        .map_err(CheckFailure::failed)?
    };
    let checked = record_found(context, source, config, found, page.as_ref(), validators).await?;
    if let Some(page) = page {
        for created in &checked.created {
            let staging = context.staging.clone();
            let bytes = page.bytes.clone();
            let download_id = created.download_id;
            let prefilled = tokio::task::spawn_blocking(move || {
                inbox::prefill_part(&staging, download_id, &bytes)
            })
            .await;
            match prefilled {
                Ok(Ok(true)) => tracing::debug!(
                    source = %config.name,
                    "source {}: the page is download {download_id}'s file already",
                    config.name
                ),
                // The download's task started first: it fetches the page itself.
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(
                    source = %config.name,
                    error = %error,
                    "source {}: cannot leave the page for download {download_id} ({error}); \
                     it fetches the page itself",
                    config.name
                ),
                Err(error) => tracing::warn!(error = %error, "the prefilling task failed: {error}"),
            }
        }
    }
    Ok(checked)
}

/// The page a page-mode check fetched, for its download.
struct PageVersion {
    file_name: String,
    sha256: String,
    bytes: Vec<u8>,
}

/// Records the new items among `found`, in order, capped per check and by the queue.
async fn record_found(
    context: &CheckContext,
    source: &SourceStatus,
    config: &SourceConfig,
    found: Vec<extract::Found>,
    page: Option<&PageVersion>,
    validators: Validators,
) -> Result<Checked, CheckFailure> {
    let rules = SubmitRules {
        allow_private_addresses: context.allow_private_addresses,
        max_download_size: context.max_download_size,
    };
    let source_id = source.id;
    let mut created = Vec::new();
    let mut new_items = 0usize;
    let mut refused = 0usize;
    let mut waiting: Option<String> = None;
    // Links robots.txt disallows are recorded as seen without a download; the first reason
    // is the check's error. A link whose host's robots.txt cannot be read now is left for
    // the next check (which reads the page again in full).
    let mut disallowed = 0usize;
    let mut first_disallowed: Option<String> = None;
    let mut robots_unavailable: Option<String> = None;
    for chunk in found.chunks(ITEMS_PER_TRANSACTION) {
        let keys: Vec<String> = chunk.iter().map(|item| item.key.clone()).collect();
        let unseen = context
            .store
            .call(move |store| store.unseen_source_items(source_id, &keys))
            .await
            .map_err(|error| CheckFailure::failed(error.to_string()))?;
        let mut items = Vec::new();
        for (item, _) in chunk.iter().zip(unseen).filter(|(_, unseen)| *unseen) {
            if new_items + items.len() >= MAX_NEW_ITEMS_PER_CHECK {
                waiting = Some(format!(
                    "more than {MAX_NEW_ITEMS_PER_CHECK} new items; the rest wait for the \
                     next check"
                ));
                break;
            }
            let mut downloads = Vec::new();
            let mut skip_item = false;
            for url in &item.urls {
                // The page of a page-mode source is the source's own URL, checked already.
                if config.mode != SourceMode::Page {
                    match robots_rules(context, url, config.every).await {
                        Ok(rules) if rules.allows(&path_and_query(url)) => {}
                        Ok(_) => {
                            disallowed += 1;
                            let reason = format!(
                                "robots.txt of {} disallows {} for user agent {:?}",
                                origin_text(url),
                                url.path(),
                                context.user_agent
                            );
                            tracing::info!(source = %config.name, url = %url, "source {}: link {url} not downloaded: {reason}", config.name);
                            first_disallowed.get_or_insert(reason);
                            continue;
                        }
                        Err(failure) => {
                            tracing::info!(source = %config.name, url = %url, "source {}: link {url} left for the next check: {}", config.name, failure.error);
                            robots_unavailable.get_or_insert(format!(
                                "link {url} left for the next check: {}",
                                failure.error
                            ));
                            skip_item = true;
                            break;
                        }
                    }
                }
                let submitted = NewDownload {
                    url: url.to_string(),
                    file_name: page.map(|page| page.file_name.clone()),
                    bundle: None,
                    expected_sha256: page.map(|page| page.sha256.clone()),
                    max_bytes: None,
                    source: Some(config.name.clone()),
                    max_attempts: Some(context.max_attempts),
                };
                match validate_submission(&submitted, &rules) {
                    Ok(valid) => downloads.push(valid),
                    Err(error) => {
                        refused += 1;
                        tracing::info!(source = %config.name, url = %url, "source {}: link {url} refused: {error}", config.name);
                    }
                }
            }
            if skip_item {
                continue;
            }
            items.push(SourceItem {
                key: item.key.clone(),
                downloads,
            });
        }
        let max_pending = context.max_pending;
        let recorded = context
            .store
            .call(move |store| store.record_source_items(source_id, &items, max_pending))
            .await
            .map_err(|error| CheckFailure::failed(error.to_string()))?;
        new_items += recorded.new_items as usize;
        created.extend(recorded.created);
        if let Some(full) = recorded.queue_full {
            waiting = Some(format!(
                "{full}; the remaining new items wait for the next check"
            ));
        }
        if waiting.is_some() {
            break;
        }
    }
    if refused > 0 {
        tracing::info!(source = %config.name, "source {}: {refused} links refused by the download policy", config.name);
    }
    let disallowed_note = first_disallowed.map(|reason| {
        format!(
            "{disallowed} link{} not downloaded: {reason}{}",
            if disallowed == 1 { "" } else { "s" },
            if disallowed > 1 { " (and others)" } else { "" }
        )
    });
    let waiting = waiting.or(robots_unavailable);
    let join = |first: Option<String>, second: Option<String>| match (first, second) {
        (Some(first), Some(second)) => Some(format!("{first}; {second}")),
        (first, second) => first.or(second),
    };
    Ok(match waiting {
        Some(reason) => Checked {
            outcome: "partial",
            validators: Validators::Clear,
            changed: true,
            created,
            error: join(Some(reason), disallowed_note),
        },
        None => Checked {
            outcome: "changed",
            validators,
            changed: true,
            created,
            error: disallowed_note,
        },
    })
}

/// The rules of `url`'s origin for our user agent: cached, revalidated (conditionally) when
/// older than the source's `every` or [`ROBOTS_MAX_AGE`].
async fn robots_rules(
    context: &CheckContext,
    url: &Url,
    every: Duration,
) -> Result<Arc<RobotsRules>, CheckFailure> {
    let origin = origin_text(url);
    let cached = context.robots.get(&origin);
    if let Some(cached) = &cached
        && cached.fetched_at.elapsed() < every.min(ROBOTS_MAX_AGE)
    {
        return Ok(Arc::clone(&cached.rules));
    }
    let robots_url = url
        .join("/robots.txt")
        .map_err(|error| CheckFailure::failed(format!("robots.txt URL: {error}")))?;
    let request = Request {
        client: &context.client,
        hosts: &context.hosts,
        allow_private_addresses: context.allow_private_addresses,
        max_redirects: context.max_redirects.min(5),
        accept: "text/plain",
        origin_of: url,
        credentials: &[],
        etag: cached.as_ref().and_then(|cached| cached.etag.as_deref()),
        last_modified: cached
            .as_ref()
            .and_then(|cached| cached.last_modified.as_deref()),
        max_bytes: ROBOTS_MAX_BYTES,
        cut: true,
    };
    let answer = fetch::get(&request, &robots_url).await.map_err(|error| {
        // RFC 9309: an unreachable robots.txt means the whole site is disallowed for now.
        let mut failure = CheckFailure::from(error);
        failure.error = format!("robots.txt unavailable, so not checking: {}", failure.error);
        failure
    })?;
    let entry = match answer {
        Answer::NotModified => match cached {
            Some(cached) => CachedRobots {
                fetched_at: Instant::now(),
                ..cached
            },
            None => {
                return Err(CheckFailure::failed(
                    "robots.txt: 304 without a cached copy",
                ));
            }
        },
        // RFC 9309: a robots.txt that does not exist (4xx) allows everything.
        Answer::ClientError(_) => CachedRobots {
            rules: Arc::new(RobotsRules::allow_all()),
            etag: None,
            last_modified: None,
            fetched_at: Instant::now(),
        },
        Answer::Body {
            bytes,
            etag,
            last_modified,
            ..
        } => CachedRobots {
            rules: Arc::new(RobotsRules::parse(
                &String::from_utf8_lossy(&bytes),
                &context.user_agent,
            )),
            etag,
            last_modified,
            fetched_at: Instant::now(),
        },
    };
    let rules = Arc::clone(&entry.rules);
    context.robots.put(&origin, entry);
    Ok(rules)
}

fn origin_text(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// The page of a page-mode source is stored as `NAME.html` (or `.xml`, `.json`, `.txt` by its
/// type), so each version is a recognisable file in the library.
fn page_file_name(name: &str, content_type: Option<&str>) -> String {
    let content_type = content_type.unwrap_or_default().to_ascii_lowercase();
    let extension = if content_type.contains("html") {
        "html"
    } else if content_type.contains("json") {
        "json"
    } else if content_type.contains("xml") {
        "xml"
    } else if content_type.starts_with("text/") {
        "txt"
    } else {
        "bin"
    };
    format!("{name}.{extension}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
