//! `sluicectl download URL`: the input policy first (the same as the scraper's D-Bus object
//! and the web API), then `AddDownload` when the scraper runs, else a row in the store.

use serde_json::json;
use sluice_core::bus::{self, BusError, DownloadOptions, SCRAPER_BUS_NAME, ScraperProxy};
use sluice_core::policy::{self, NewDownload, SubmitRules};
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::DownloadArguments;
use crate::output::{print_json, print_line};

impl Context {
    /// Through `org.sluice.Scraper1.AddDownload` when the scraper runs; else recorded in the
    /// store after the same checks, to be fetched when the scraper starts.
    pub(super) fn download(&self, arguments: DownloadArguments) -> Result<(), Failure> {
        // The same policy as the scraper's D-Bus object and the web API, including the
        // lookup of the host name (on this command's runtime, with the policy's timeout).
        let submitted = NewDownload {
            url: arguments.url.clone(),
            file_name: arguments.name.clone(),
            bundle: arguments.bundle.clone(),
            expected_sha256: arguments.sha256.clone(),
            max_bytes: arguments.max_bytes,
            source: None,
            max_attempts: Some(self.config.jobs.max_attempts),
        };
        let rules = SubmitRules {
            allow_private_addresses: self.config.scraper.allow_private_addresses,
            max_download_size: self.config.scraper.max_download_size,
        };
        let download = policy::validate_submission(&submitted, &rules)?;
        let resolve_url = download.url().clone();
        self.block_on(async move {
            policy::resolve_download_host(&resolve_url, rules.allow_private_addresses).await
        })??;
        let options = DownloadOptions {
            sha256: arguments.sha256.clone(),
            bundle: arguments.bundle.clone(),
            file_name: arguments.name.clone(),
            max_bytes: arguments.max_bytes,
            source: None,
        };
        let address = self.config.bus.address.clone();
        let url = arguments.url.clone();
        let variants = options.to_variants();
        let through_bus = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = match ScraperProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(proxy.add_download(&url, variants).await)
        })?;
        let (download_id, job_id, via) = match through_bus {
            Some(result) => {
                let (download_id, job_id) = result?;
                (download_id as i64, job_id as i64, "dbus")
            }
            None => {
                let mut store = self.open_store()?;
                let created = store
                    .create_download_within_limit(&download, self.config.scraper.max_pending)?;
                (created.download_id, created.job_id, "store")
            }
        };
        if self.json {
            print_json(&json!({ "download_id": download_id, "job_id": job_id, "via": via }));
        } else {
            print_line(&format!("download {download_id} queued as job {job_id}"));
            if via == "store" {
                print_line("sluice-scraper is not running; it fetches the download when it starts");
            }
        }
        Ok(())
    }
}
