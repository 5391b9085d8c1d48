//! systemd's D-Bus API (`org.freedesktop.systemd1.Manager` on the system bus) as
//! `sluicectl workers N` uses it: reload (which runs sluice-worker-generator again), then
//! start the configured worker instances and stop the ones above the count, waiting for each
//! job to finish (a `Type=notify` start job finishes when the worker sent READY=1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_core::bus::{UnitStatus, read_unit_status};
use zbus::Connection;
use zbus::OwnedObjectPath;

/// The target whose being active means "the suite runs, so start the instances now".
pub const SLUICE_TARGET: &str = "sluice.target";

/// How long a start or stop job may take: above the worker unit's TimeoutStartSec= (60s) and
/// TimeoutStopSec= (30s), so systemd decides a slow start failed before sluicectl gives up.
pub const JOB_DEADLINE: Duration = Duration::from_secs(90);

/// The unit name of worker instance `instance`.
pub fn worker_unit(instance: u32) -> String {
    format!("sluice-ingest-worker@{instance}.service")
}

/// The instance number of a worker unit name; `None` for other units and for instances
/// that are not numbers (not ours to count).
pub fn worker_instance(unit: &str) -> Option<u32> {
    unit.strip_prefix("sluice-ingest-worker@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// One entry of `ListUnitsByPatterns`: name, description, load state, active state, sub
/// state, followed unit, unit path, job id, job type, job path.
type UnitEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Re-reads every unit file and re-runs the generators; the reply comes once that is done.
    fn reload(&self) -> zbus::Result<()>;

    /// Asks systemd to send its signals (JobRemoved) to this client.
    fn subscribe(&self) -> zbus::Result<()>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitEntry>>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A unit's state as `ListUnitsByPatterns` reports it.
#[derive(Debug, Clone)]
pub struct UnitState {
    pub name: String,
    pub active_state: String,
}

impl UnitState {
    /// Running or on its way (`active`, `activating`, `reloading`): what a stop is for.
    pub fn is_up(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading"
        )
    }
}

/// How one start or stop job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub unit: String,
    /// systemd's job result: `done` is success; `failed`, `timeout`, `canceled`,
    /// `dependency` and `skipped` are not.
    pub result: String,
    /// From the call that queued the job to its JobRemoved signal.
    pub took: Duration,
}

/// A connection to systemd, proven to answer.
#[derive(Debug)]
pub struct Systemd {
    manager: ManagerProxy<'static>,
}

impl Systemd {
    /// Connects to the system bus and reads systemd's version, so that "unreachable" is
    /// known before anything is changed. Returns the version too.
    pub async fn connect() -> zbus::Result<(Systemd, String)> {
        let connection = Connection::system().await?;
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let version = manager.version().await?;
        Ok((Systemd { manager }, version))
    }

    /// What systemd says about each unit, in the order given.
    pub async fn unit_statuses(&self, units: &[String]) -> zbus::Result<Vec<UnitStatus>> {
        let connection = self.manager.inner().connection();
        let mut statuses = Vec::with_capacity(units.len());
        for unit in units {
            statuses.push(read_unit_status(connection, unit).await?);
        }
        Ok(statuses)
    }

    /// `systemctl daemon-reload`: returns once systemd has reloaded.
    pub async fn reload(&self) -> zbus::Result<()> {
        self.manager.reload().await
    }

    /// sluice.target and every loaded worker instance, with their states.
    pub async fn sluice_units(&self) -> zbus::Result<Vec<UnitState>> {
        let units = self
            .manager
            .list_units_by_patterns(&[], &[SLUICE_TARGET, "sluice-ingest-worker@*.service"])
            .await?;
        Ok(units
            .into_iter()
            .map(|unit| UnitState {
                name: unit.0,
                active_state: unit.3,
            })
            .collect())
    }

    /// Starts `starts` and stops `stops` (mode `replace`, as systemctl does) and waits until
    /// every job is finished or `deadline` passed; a job still pending then is reported with
    /// result `sluicectl-timeout`.
    pub async fn run_jobs(
        &self,
        starts: &[String],
        stops: &[String],
        deadline: Duration,
    ) -> zbus::Result<Vec<JobOutcome>> {
        // Subscribed and listening before any job is queued, so no JobRemoved is missed.
        self.manager.subscribe().await?;
        let mut removed = self.manager.receive_job_removed().await?;
        let mut pending: HashMap<OwnedObjectPath, (String, Instant)> = HashMap::new();
        for unit in stops {
            let job = self.manager.stop_unit(unit, "replace").await?;
            pending.insert(job, (unit.clone(), Instant::now()));
        }
        for unit in starts {
            let job = self.manager.start_unit(unit, "replace").await?;
            pending.insert(job, (unit.clone(), Instant::now()));
        }
        let mut outcomes = Vec::new();
        let give_up = tokio::time::Instant::now() + deadline;
        while !pending.is_empty() {
            let signal = match tokio::time::timeout_at(give_up, removed.next()).await {
                Ok(Some(signal)) => signal,
                Ok(None) | Err(_) => break,
            };
            let Ok(arguments) = signal.args() else {
                continue;
            };
            let job = OwnedObjectPath::from(arguments.job().to_owned());
            if let Some((unit, queued_at)) = pending.remove(&job) {
                outcomes.push(JobOutcome {
                    unit,
                    result: arguments.result().to_string(),
                    took: queued_at.elapsed(),
                });
            }
        }
        for (_, (unit, queued_at)) in pending {
            outcomes.push(JobOutcome {
                unit,
                result: "sluicectl-timeout".to_owned(),
                took: queued_at.elapsed(),
            });
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_unit_names_round_trip_and_other_units_are_not_workers() {
        assert_eq!(worker_unit(3), "sluice-ingest-worker@3.service");
        assert_eq!(worker_instance("sluice-ingest-worker@3.service"), Some(3));
        assert_eq!(worker_instance("sluice-ingest-worker@x.service"), None);
        assert_eq!(worker_instance("sluice-ingest-worker@.service"), None);
        assert_eq!(worker_instance("sluice.target"), None);
        assert_eq!(worker_instance("sluice-monitor.service"), None);
    }
}
