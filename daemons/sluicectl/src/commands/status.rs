//! `sluicectl status`: every daemon of the suite (the list `sluice-core` keeps for sluice-web's
//! status page as well): what systemd knows of its unit (state, main PID, restarts, since
//! when, its `STATUS=` line) beside what the daemon says on the bus; then the jobs by state
//! and the sources' last and next checks.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::bus::{self, suite_daemons};
use sluice_core::store::now_ms;
use zbus::Connection;

use super::{Context, Failure};
use crate::output::{print_json, print_line, print_table};
use crate::systemd::Systemd;

impl Context {
    pub(super) fn status(&self) -> Result<(), Failure> {
        let store = self.open_store()?;
        let counts = store.job_counts()?;
        let sources = store.list_sources()?;
        let workers = self.config.ingest.workers;
        let address = self.config.bus.address.clone();
        let units: Vec<String> = suite_daemons(workers)
            .into_iter()
            .map(|daemon| daemon.unit_name)
            .collect();
        let (daemons, units) = self.block_on(async move {
            let daemons = match bus::connect(&address).await {
                Ok(connection) => Some(daemon_states(&connection, workers).await),
                Err(_) => None,
            };
            // systemd is on the system bus, which need not be sluice's bus; without it (a
            // test bus, a container without systemd) the unit columns are unknown.
            let units = tokio::time::timeout(SYSTEMD_TIMEOUT, async {
                let (systemd, _) = Systemd::connect().await.ok()?;
                systemd.unit_statuses(&units).await.ok()
            })
            .await
            .ok()
            .flatten();
            (daemons, units)
        })?;
        let bus_reachable = daemons.is_some();
        let systemd_reachable = units.is_some();
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
        let units = units.unwrap_or_default();
        let unit_of = |index: usize| units.get(index);
        let now = now_ms();
        if self.json {
            print_json(&json!({
                "bus_reachable": bus_reachable,
                "systemd_reachable": systemd_reachable,
                "daemons": daemons.iter().enumerate().map(|(index, daemon)| json!({
                    "name": daemon.name,
                    "bus_name": daemon.bus_name,
                    "running": daemon.running,
                    "state": daemon.state,
                    "status": daemon.status,
                    "unit": unit_of(index),
                })).collect::<Vec<_>>(),
                "jobs": counts.iter().map(|(state, count)| (state.as_str().to_owned(), Value::from(*count))).collect::<serde_json::Map<_, _>>(),
                "sources": sources.iter().map(|source| json!({
                    "name": source.name,
                    "enabled": source.enabled,
                    "last_outcome": source.last_outcome,
                    "last_error": source.last_error,
                    "last_checked_at_ms": source.last_checked_at_ms,
                    "next_check_at_ms": source.enabled.then_some(source.next_check_at_ms),
                })).collect::<Vec<_>>(),
            }));
            return Ok(());
        }
        if !bus_reachable {
            print_line(&format!(
                "the {} cannot be reached; what the daemons say is unknown",
                self.config.bus.address
            ));
        }
        if !systemd_reachable {
            print_line("systemd cannot be reached on the system bus; unit states are unknown");
        }
        let rows: Vec<Vec<String>> = daemons
            .iter()
            .enumerate()
            .map(|(index, daemon)| {
                let unit = unit_of(index);
                // The bus's Status is fresher; systemd's copy of the STATUS= line is there
                // when the bus is not.
                let status = daemon
                    .status
                    .clone()
                    .or_else(|| unit.and_then(|unit| unit.status_text.clone()))
                    .unwrap_or_else(|| "-".into());
                vec![
                    daemon.name.clone(),
                    unit.and_then(|unit| {
                        let active = unit.active_state.as_deref()?;
                        Some(format!(
                            "{active} ({})",
                            unit.sub_state.as_deref().unwrap_or("-")
                        ))
                    })
                    .unwrap_or_else(|| "-".into()),
                    unit.and_then(|unit| unit.main_pid)
                        .map_or_else(|| "-".into(), |pid| pid.to_string()),
                    unit.and_then(|unit| unit.restarts)
                        .map_or_else(|| "-".into(), |restarts| restarts.to_string()),
                    unit.filter(|unit| unit.active_state.as_deref() == Some("active"))
                        .and_then(|unit| unit.active_since_us)
                        .map_or_else(|| "-".into(), |since| ago((since / 1000) as i64, now)),
                    if daemon.running { "yes" } else { "no" }.to_owned(),
                    daemon.state.clone().unwrap_or_else(|| "-".into()),
                    status,
                ]
            })
            .collect();
        print_table(
            &[
                "DAEMON", "UNIT", "PID", "RESTARTS", "SINCE", "ON BUS", "STATE", "STATUS",
            ],
            &rows,
        );
        let summary: Vec<String> = counts
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        print_line(&format!("jobs: {}", summary.join(", ")));
        for source in &sources {
            let last = match (source.last_checked_at_ms, &source.last_outcome) {
                (Some(at), Some(outcome)) => format!("last check {} ({outcome})", ago(at, now)),
                (Some(at), None) => format!("last check {}", ago(at, now)),
                _ => "never checked".to_owned(),
            };
            let next = if source.enabled {
                let wait = (source.next_check_at_ms - now).max(0) / 1000;
                format!(
                    "next in {}",
                    humantime::format_duration(Duration::from_secs(wait as u64))
                )
            } else {
                "disabled".to_owned()
            };
            let error = source
                .last_error
                .as_deref()
                .map(|error| format!("; last error: {error}"))
                .unwrap_or_default();
            print_line(&format!("source {}: {last}, {next}{error}", source.name));
        }
        Ok(())
    }
}

/// How long status waits for systemd before it shows the unit columns as unknown.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(3);

/// `3m 5s ago` for a time in the past (ms since the epoch).
fn ago(at_ms: i64, now_ms: i64) -> String {
    let seconds = ((now_ms - at_ms).max(0) / 1000) as u64;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(seconds))
    )
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
