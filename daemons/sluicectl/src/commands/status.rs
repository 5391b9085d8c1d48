//! `sluicectl status`: every daemon of the suite (the list `sluice-core` keeps for sluice-web's
//! status page as well), whether it runs and what it says, and the jobs by state.

use serde_json::{Value, json};
use sluice_core::bus::{self, suite_daemons};
use zbus::Connection;

use super::{Context, Failure};
use crate::output::{print_json, print_line, print_table};

impl Context {
    pub(super) fn status(&self) -> Result<(), Failure> {
        let store = self.open_store()?;
        let counts = store.job_counts()?;
        let workers = self.config.ingest.workers;
        let address = self.config.bus.address.clone();
        let daemons = self.block_on(async move {
            match bus::connect(&address).await {
                Ok(connection) => Some(daemon_states(&connection, workers).await),
                Err(_) => None,
            }
        })?;
        let bus_reachable = daemons.is_some();
        let daemons = daemons.unwrap_or_else(|| {
            suite_daemons(workers)
                .into_iter()
                .map(|daemon| DaemonRow {
                    name: daemon.name,
                    bus_name: daemon.bus_name,
                    running: false,
                    state: None,
                    status: None,
                })
                .collect()
        });
        if self.json {
            print_json(&json!({
                "bus_reachable": bus_reachable,
                "daemons": daemons.iter().map(|daemon| json!({
                    "name": daemon.name,
                    "bus_name": daemon.bus_name,
                    "running": daemon.running,
                    "state": daemon.state,
                    "status": daemon.status,
                })).collect::<Vec<_>>(),
                "jobs": counts.iter().map(|(state, count)| (state.as_str().to_owned(), Value::from(*count))).collect::<serde_json::Map<_, _>>(),
            }));
            return Ok(());
        }
        if !bus_reachable {
            print_line(&format!(
                "the {} cannot be reached; daemon states are unknown",
                self.config.bus.address
            ));
        }
        let rows: Vec<Vec<String>> = daemons
            .iter()
            .map(|daemon| {
                vec![
                    daemon.name.clone(),
                    if daemon.running { "yes" } else { "no" }.to_owned(),
                    daemon.state.clone().unwrap_or_else(|| "-".into()),
                    daemon.status.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(&["DAEMON", "RUNNING", "STATE", "STATUS"], &rows);
        let summary: Vec<String> = counts
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        print_line(&format!("jobs: {}", summary.join(", ")));
        Ok(())
    }
}

struct DaemonRow {
    name: String,
    bus_name: String,
    running: bool,
    state: Option<String>,
    status: Option<String>,
}

async fn daemon_states(connection: &Connection, workers: u32) -> Vec<DaemonRow> {
    let mut rows = Vec::new();
    for daemon in suite_daemons(workers) {
        let (name, bus_name) = (daemon.name, daemon.bus_name);
        let running = bus::name_has_owner(connection, &bus_name).await;
        let (state, status) = if running {
            read_state(connection, &bus_name)
                .await
                .unwrap_or((None, None))
        } else {
            (None, None)
        };
        rows.push(DaemonRow {
            name,
            bus_name,
            running,
            state,
            status,
        });
    }
    rows
}

type StatePair = (Option<String>, Option<String>);

async fn read_state(connection: &Connection, bus_name: &str) -> zbus::Result<StatePair> {
    let mut properties = bus::daemon_properties(connection, bus_name).await?;
    let mut text = |name: &str| {
        properties
            .remove(name)
            .and_then(|value| String::try_from(value).ok())
    };
    Ok((text("State"), text("Status")))
}
