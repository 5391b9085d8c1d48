//! Stage one: serde structs that mirror the file exactly. No IO, no validation beyond types;
//! unknown keys are rejected here. Every leaf keeps its span so stage two can point at it.
//!
//! Tables are required: the merged tree always has them, since the compiled-in defaults
//! define every key. Only keys that are optional by design (per-entry overrides, a source's
//! selector) are `Option`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the configuration table")]
pub(super) struct RawConfig {
    pub store: RawStore,
    pub bus: RawBus,
    pub jobs: RawJobs,
    pub service: RawService,
    pub web: RawWeb,
    pub monitor: RawMonitor,
    pub watch_defaults: RawWatchDefaults,
    pub watch: Vec<Spanned<RawWatch>>,
    pub ingest: RawIngest,
    pub processor_defaults: RawProcessorDefaults,
    // The shipped file has no processors and no sources, and TOML has no way to write an
    // empty list of tables after the first [table]; so an absent list means an empty one.
    #[serde(default)]
    pub processor: Vec<Spanned<RawProcessor>>,
    pub scraper: RawScraper,
    pub source_defaults: RawSourceDefaults,
    #[serde(default)]
    pub source: Vec<Spanned<RawSource>>,
    pub limits: RawLimits,
    pub retention: RawRetention,
}

pub(super) type Text = Spanned<String>;
pub(super) type Number = Spanned<u64>;
pub(super) type Flag = Spanned<bool>;
pub(super) type Size = Spanned<RawSize>;
pub(super) type TextList = Spanned<Vec<Text>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [store] table")]
pub(super) struct RawStore {
    pub path: Text,
    pub durability: Text,
    pub busy_timeout: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [bus] table")]
pub(super) struct RawBus {
    pub address: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [jobs] table")]
pub(super) struct RawJobs {
    pub lease: Text,
    pub heartbeat_interval: Text,
    pub max_attempts: Number,
    pub retry_backoff_base: Text,
    pub retry_backoff_max: Text,
    pub claim_batch: Number,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [service] table")]
pub(super) struct RawService {
    pub stop_timeout: Text,
    pub status_interval: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [web] table")]
pub(super) struct RawWeb {
    pub listen: Text,
    pub base_path: Text,
    pub token_file: Text,
    pub read_token_file: Text,
    pub public_reads: Flag,
    pub max_upload_size: Size,
    pub allowed_hosts: TextList,
    pub max_event_streams: Number,
    pub max_wait: Text,
    pub metrics_access: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [monitor] table")]
pub(super) struct RawMonitor {
    pub reconcile_interval: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [watch_defaults] table")]
pub(super) struct RawWatchDefaults {
    pub ignore: TextList,
    pub recursive: Flag,
    pub watcher: Text,
    pub poll_interval: Text,
    pub quiet_period: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[watch]] table")]
pub(super) struct RawWatch {
    pub path: Text,
    pub mode: Text,
    pub ignore: Option<TextList>,
    pub recursive: Option<Flag>,
    pub watcher: Option<Text>,
    pub poll_interval: Option<Text>,
    pub quiet_period: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [ingest] table")]
pub(super) struct RawIngest {
    pub workers: Number,
    pub library: Text,
    pub max_file_size: Size,
    pub text_max_bytes: Size,
    pub thumbnail_size: Number,
    pub extract_max_memory: Size,
    pub max_pages: Number,
    pub job_timeout: Text,
    pub max_pending: Number,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [processor_defaults] table")]
pub(super) struct RawProcessorDefaults {
    pub timeout: Text,
    pub max_output: Size,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[processor]] table")]
pub(super) struct RawProcessor {
    pub name: Text,
    pub mime: Text,
    pub mode: Option<Text>,
    pub argv: TextList,
    pub timeout: Option<Text>,
    pub max_output: Option<Size>,
    pub writable: Option<TextList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [scraper] table")]
pub(super) struct RawScraper {
    pub inbox: Text,
    pub staging: Text,
    pub user_agent: Text,
    pub max_download_size: Size,
    pub per_host_concurrency: Number,
    pub politeness_delay: Text,
    pub allow_private_addresses: Flag,
    pub request_timeout: Text,
    pub max_redirects: Number,
    pub progress_interval: Text,
    pub download_timeout: Text,
    pub max_pending: Number,
    pub hf_endpoint: Text,
    pub hf_credentials_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [source_defaults] table")]
pub(super) struct RawSourceDefaults {
    pub every: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[source]] table")]
pub(super) struct RawSource {
    pub name: Text,
    pub url: Text,
    pub mode: Text,
    pub every: Option<Text>,
    pub selector: Option<Text>,
    pub pattern: Option<Text>,
    pub credentials_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [limits] table")]
pub(super) struct RawLimits {
    pub max_payload_bytes: Size,
    pub max_request_body: Size,
    pub max_string_length: Number,
    pub max_page_size: Number,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [retention] table")]
pub(super) struct RawRetention {
    pub succeeded_jobs: Text,
    pub failed_jobs: Text,
    pub history: Text,
    pub finished_downloads: Text,
}

/// A size as written: a whole number of bytes, or text with a unit ("64 KiB"), which stage
/// two parses.
#[derive(Debug)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(r#"a size: a whole number of bytes or a string like "64 MiB""#)
            }

            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(bytes))
            }

            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<RawSize, E> {
                u64::try_from(bytes)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(bytes), &self))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(text.to_owned()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}
