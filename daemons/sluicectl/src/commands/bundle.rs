//! `sluicectl bundle add|list|show|cancel|delete`: changes through `org.sluice.Scraper1`
//! (`AddBundle`, `CancelBundle`, `DeleteBundle`; the scraper alone resolves `hf://` names and
//! runs the files), reads from the store.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_core::bus::{self, BusError, SCRAPER_BUS_NAME, ScraperProxy, bundle_request};
use sluice_core::policy::{SubmitRules, is_hf_reference};
use sluice_core::store::{Bundle, BundleState, Download};
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_fields, print_json, print_line, print_table};

impl Context {
    pub(super) fn bundle_add(
        &self,
        name: &str,
        entries: &[String],
        wait: Option<&str>,
    ) -> Result<(), Failure> {
        // `--wait` alone waits without a limit; `--wait DURATION` at most that long.
        let wait = match wait {
            None => None,
            Some("") => Some(None),
            Some(text) => {
                Some(Some(humantime::parse_duration(text).map_err(|error| {
                    Failure::invalid(format!("--wait {text:?}: {error}"))
                })?))
            }
        };
        let files = entries
            .iter()
            .map(|entry| parse_entry(entry))
            .collect::<Result<Vec<_>, _>>()?;
        // The policy first, the same as the scraper's: a refused bundle never reaches the bus.
        let bundle = bundle_request(name, files.clone())?;
        if !is_hf_reference(name) {
            bundle.validate(&SubmitRules {
                allow_private_addresses: self.config.scraper.allow_private_addresses,
                max_download_size: self.config.scraper.max_download_size,
            })?;
        }
        let name = name.to_owned();
        let id =
            self.on_scraper(move |proxy| async move { proxy.add_bundle(&name, files).await })?;
        let store = self.open_store()?;
        let bundle = store.get_bundle(id as i64)?;
        let Some(limit) = wait else {
            if self.json {
                print_json(&json!({ "bundle": bundle }));
            } else {
                print_line(&format!(
                    "bundle {} ({}) queued with {} files",
                    bundle.id, bundle.name, bundle.files_total
                ));
            }
            return Ok(());
        };
        if !self.json {
            print_line(&format!(
                "bundle {} ({}) queued with {} files; waiting for it",
                bundle.id, bundle.name, bundle.files_total
            ));
        }
        let started = Instant::now();
        loop {
            let bundle = store.get_bundle(id as i64)?;
            if bundle.state != BundleState::Running {
                let files = store.bundle_files(bundle.id)?;
                if self.json {
                    print_json(&json!({ "bundle": bundle, "files": files }));
                } else {
                    print_bundle(&bundle, &files);
                }
                return match bundle.state {
                    BundleState::Succeeded => Ok(()),
                    state => Err(Failure::new(
                        exit::JOB_FAILED,
                        format!(
                            "bundle {} ({}) {state}: {}",
                            bundle.id,
                            bundle.name,
                            bundle.error.as_deref().unwrap_or("no error recorded")
                        ),
                    )),
                };
            }
            if let Some(limit) = limit
                && started.elapsed() > limit
            {
                return Err(Failure::new(
                    exit::STILL_RUNNING,
                    format!(
                        "bundle {} ({}) still running after {limit:?}: {}/{} files done",
                        bundle.id, bundle.name, bundle.files_done, bundle.files_total
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn bundle_list(&self, limit: u32, cursor: Option<i64>) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let page = self.open_store()?.list_bundles(page)?;
        if self.json {
            print_json(&json!(page));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = page
            .items
            .iter()
            .map(|bundle| {
                vec![
                    bundle.id.to_string(),
                    bundle.name.clone(),
                    bundle.state.to_string(),
                    format!("{}/{}", bundle.files_done, bundle.files_total),
                    bundle.files_failed.to_string(),
                    format!("{}/{}", bundle.bytes_done, bundle.bytes_total),
                    bundle.origin.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(
            &["ID", "NAME", "STATE", "FILES", "FAILED", "BYTES", "ORIGIN"],
            &rows,
        );
        if let Some(next) = page.next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }

    pub(super) fn bundle_show(&self, id: i64) -> Result<(), Failure> {
        let store = self.open_store()?;
        let bundle = store.get_bundle(id)?;
        let files = store.bundle_files(id)?;
        if self.json {
            print_json(&json!({ "bundle": bundle, "files": files }));
            return Ok(());
        }
        print_bundle(&bundle, &files);
        Ok(())
    }

    /// `cancel` (`delete` false) or `delete`, through the scraper.
    pub(super) fn bundle_change(&self, id: i64, delete: bool) -> Result<(), Failure> {
        // Existence first: an unknown id is "not found" whether or not the scraper runs.
        self.open_store()?.get_bundle(id)?;
        let bundle_id = u64::try_from(id).unwrap_or_default();
        self.on_scraper(move |proxy| async move {
            if delete {
                proxy.delete_bundle(bundle_id).await
            } else {
                proxy.cancel_bundle(bundle_id).await
            }
        })?;
        let done = if delete { "deleted" } else { "cancelled" };
        if self.json {
            print_json(&json!({ "bundle_id": id, "done": done }));
        } else {
            print_line(&format!("bundle {id} {done}"));
        }
        Ok(())
    }

    fn on_scraper<T, F>(&self, call: impl FnOnce(ScraperProxy<'static>) -> F) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, BusError>>,
    {
        let address = self.config.bus.address.clone();
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
                Ok(proxy) => call(proxy).await,
                Err(error) => Err(BusError::ZBus(error)),
            })
        })?;
        match answer {
            Some(result) => Ok(result?),
            None => Err(Failure::new(
                exit::DAEMON_UNAVAILABLE,
                "sluice-scraper is not running; bundles are added, cancelled and deleted \
                 through it",
            )),
        }
    }
}

/// `[PATH=]URL[#sha256=HEX]` as (url, path, sha256) with "" for what is absent. PATH ends at
/// the `=` before `http://` or `https://`, so a path may itself hold `=`.
fn parse_entry(entry: &str) -> Result<(String, String, String), Failure> {
    let start = ["=http://", "=https://"]
        .iter()
        .filter_map(|marker| entry.find(marker))
        .min();
    let (path, rest) = match start {
        Some(index) => (&entry[..index], &entry[index + 1..]),
        None => ("", entry),
    };
    let (url, sha256) = match rest.split_once("#sha256=") {
        Some((url, digest)) => (url, digest),
        None => (rest, ""),
    };
    if start.is_some() && path.is_empty() {
        return Err(Failure::invalid(format!(
            "{entry:?}: the path before '=' is empty"
        )));
    }
    Ok((url.to_owned(), path.to_owned(), sha256.to_owned()))
}

fn print_bundle(bundle: &Bundle, files: &[Download]) {
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    print_fields(&[
        ("id", bundle.id.to_string()),
        ("name", bundle.name.clone()),
        ("state", bundle.state.to_string()),
        ("origin", text(&bundle.origin)),
        ("revision", text(&bundle.revision)),
        (
            "files",
            format!(
                "{} done, {} failed, {} in all",
                bundle.files_done, bundle.files_failed, bundle.files_total
            ),
        ),
        (
            "bytes",
            format!("{} of {}", bundle.bytes_done, bundle.bytes_total),
        ),
        (
            "rate",
            format!("{:.0} bytes/s", bundle.rate_bytes_per_second),
        ),
        ("folder", text(&bundle.final_path)),
        ("error", text(&bundle.error)),
    ]);
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|file| {
            vec![
                file.id.to_string(),
                file.relative_path.clone().unwrap_or_default(),
                file.state.to_string(),
                match file.bytes_total {
                    Some(total) => format!("{}/{total}", file.bytes_done),
                    None => file.bytes_done.to_string(),
                },
                file.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["DOWNLOAD", "PATH", "STATE", "BYTES", "ERROR"], &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_a_path_a_url_and_a_digest() {
        let digest = "a".repeat(64);
        assert_eq!(
            parse_entry(&format!("w/a=b.bin=https://x.org/a?x=1#sha256={digest}")).unwrap(),
            (
                "https://x.org/a?x=1".to_owned(),
                "w/a=b.bin".to_owned(),
                digest
            )
        );
        assert_eq!(
            parse_entry("http://x.org/a").unwrap(),
            ("http://x.org/a".to_owned(), String::new(), String::new())
        );
        assert!(parse_entry("=http://x.org/a").is_err());
    }
}
