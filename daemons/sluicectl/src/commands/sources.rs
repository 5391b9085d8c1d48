//! `sluicectl sources list|show|check`: the sources' status from the store, and a check on
//! request through `org.sluice.Scraper1.ScrapeNow`, waited for in the store.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_core::bus::{self, SCRAPER_BUS_NAME, ScraperProxy};
use sluice_core::store::{SourceStatus, now_ms};
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_fields, print_json, print_line, print_table};

impl Context {
    pub(super) fn sources_list(&self) -> Result<(), Failure> {
        let sources = self.open_store()?.list_sources()?;
        if self.json {
            print_json(&json!({ "items": sources }));
            return Ok(());
        }
        let now = now_ms();
        let rows: Vec<Vec<String>> = sources
            .iter()
            .map(|source| {
                vec![
                    source.name.clone(),
                    source.mode.clone(),
                    if source.enabled {
                        source.last_outcome.clone().unwrap_or_else(|| "-".into())
                    } else {
                        "disabled".into()
                    },
                    source
                        .last_checked_at_ms
                        .map_or_else(|| "never".into(), |at| relative(at, now)),
                    if source.enabled {
                        relative(source.next_check_at_ms, now)
                    } else {
                        "-".into()
                    },
                    source.items_seen.to_string(),
                    source.downloads_made.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "MODE",
                "LAST OUTCOME",
                "LAST CHECK",
                "NEXT CHECK",
                "SEEN",
                "DOWNLOADS",
            ],
            &rows,
        );
        Ok(())
    }

    pub(super) fn sources_show(&self, name: &str) -> Result<(), Failure> {
        sluice_core::policy::check_source_name(name)?;
        let source = self.open_store()?.get_source(name)?;
        self.print_source(&source);
        Ok(())
    }

    /// Asks the scraper to check now, then waits in the store until the check it was told
    /// about is recorded.
    pub(super) fn sources_check(&self, name: &str, wait: &str) -> Result<(), Failure> {
        sluice_core::policy::check_source_name(name)?;
        let wait = humantime::parse_duration(wait)
            .map_err(|error| Failure::invalid(format!("--wait {wait:?}: {error}")))?;
        let address = self.config.bus.address.clone();
        let source_name = name.to_owned();
        let answer = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = ScraperProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await;
            Some(match proxy {
                Ok(proxy) => proxy.scrape_now(&source_name).await,
                Err(error) => Err(bus::BusError::ZBus(error)),
            })
        })?;
        let Some(answer) = answer else {
            return Err(Failure::new(
                exit::DAEMON_UNAVAILABLE,
                "sluice-scraper is not running; sources are checked only by it",
            ));
        };
        let check = answer?;
        let store = self.open_store()?;
        let started = Instant::now();
        loop {
            let source = store.get_source(name)?;
            if source.checks >= check {
                self.print_source(&source);
                return match source.last_outcome.as_deref() {
                    Some("failed" | "disallowed" | "deferred") => Err(Failure::new(
                        exit::JOB_FAILED,
                        format!("source {name}: {}", source.last_error.unwrap_or_default()),
                    )),
                    _ => Ok(()),
                };
            }
            if started.elapsed() > wait {
                return Err(Failure::new(
                    exit::STILL_RUNNING,
                    format!("source {name}: check {check} had not ended after {wait:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn print_source(&self, source: &SourceStatus) {
        if self.json {
            print_json(&json!(source));
            return;
        }
        let now = now_ms();
        let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
        print_fields(&[
            ("name", source.name.clone()),
            ("url", source.url.clone()),
            ("mode", source.mode.clone()),
            ("every", format!("{} s", source.every_ms / 1000)),
            ("enabled", source.enabled.to_string()),
            ("checks", source.checks.to_string()),
            ("last outcome", text(&source.last_outcome)),
            ("last error", text(&source.last_error)),
            (
                "last check",
                source
                    .last_checked_at_ms
                    .map_or_else(|| "never".into(), |at| relative(at, now)),
            ),
            (
                "last change",
                source
                    .last_changed_at_ms
                    .map_or_else(|| "never".into(), |at| relative(at, now)),
            ),
            ("next check", relative(source.next_check_at_ms, now)),
            ("items seen", source.items_seen.to_string()),
            ("downloads made", source.downloads_made.to_string()),
        ]);
        if source.checks == 0 {
            print_line("(not checked yet)");
        }
    }
}

/// "12 s ago" or "in 40 s".
fn relative(at_ms: i64, now_ms: i64) -> String {
    let seconds = (at_ms - now_ms) / 1000;
    if seconds >= 0 {
        format!("in {seconds} s")
    } else {
        format!("{} s ago", -seconds)
    }
}
