//! `sluicectl rescan [PATH]`: asks the monitor to walk its folders (or one) again.

use std::path::PathBuf;

use serde_json::json;
use sluice_core::bus::{self, BusError, MONITOR_BUS_NAME, MonitorProxy};
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_json, print_line};

impl Context {
    /// Only the monitor can walk the folders, so without it this fails with status 5.
    pub(super) fn rescan(&self, path: Option<PathBuf>) -> Result<(), Failure> {
        // The path goes to the monitor as its bytes, so a folder whose name is not UTF-8 can be
        // named too.
        let path = match path {
            Some(path) => std::path::absolute(&path)
                .map_err(|error| Failure::invalid(format!("path {}: {error}", path.display())))?,
            None => PathBuf::new(),
        };
        let address = self.config.bus.address.clone();
        let requested = bus::path_to_bytestring(&path);
        let result = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, MONITOR_BUS_NAME).await {
                return None;
            }
            let proxy = match MonitorProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(proxy.rescan(requested).await)
        })?;
        let folders = result.ok_or_else(|| {
            Failure::new(
                exit::DAEMON_UNAVAILABLE,
                "sluice-monitor is not running (org.sluice.Monitor1 has no owner); start it to rescan",
            )
        })??;
        if self.json {
            print_json(&json!({ "path": path.to_string_lossy(), "folders_queued": folders }));
        } else {
            print_line(&format!("rescan queued for {folders} watched folder(s)"));
        }
        Ok(())
    }
}
