//! systemd's D-Bus API (`org.freedesktop.systemd1.Manager` on the system bus) as
//! `sluicectl workers N` uses it: reload (which runs sluice-worker-generator again), then
//! start the configured worker instances and stop the ones above the count, waiting for each
//! job to finish (a `Type=notify` start job finishes when the worker sent READY=1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
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

    /// The object path of a loaded unit; `NoSuchUnit` when it is not loaded.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

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

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    /// When the unit last entered `active` (µs since the epoch; 0 when never).
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    /// The daemon's last `STATUS=` line.
    #[zbus(property)]
    fn status_text(&self) -> zbus::Result<String>;
}

/// What systemd knows of one service unit, as `systemctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDetails {
    pub unit: String,
    /// `active`, `inactive`, `failed`, ...; `not-loaded` when systemd has not loaded it.
    pub active_state: String,
    pub sub_state: String,
    /// 0 when none.
    pub main_pid: u32,
    pub restarts: u32,
    /// When it last became active, µs since the epoch; `None` when never.
    pub active_since_us: Option<u64>,
    pub status_text: String,
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

    /// Each service unit's state, PID, restarts, since when and `STATUS=` line; a unit systemd
    /// has not loaded is `not-loaded`.
    pub async fn service_details(&self, units: &[String]) -> zbus::Result<Vec<ServiceDetails>> {
        let connection = self.manager.inner().connection();
        let mut details = Vec::with_capacity(units.len());
        for unit in units {
            let path = match self.manager.get_unit(unit).await {
                Ok(path) => path,
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
                {
                    details.push(ServiceDetails {
                        unit: unit.clone(),
                        active_state: "not-loaded".to_owned(),
                        sub_state: "-".to_owned(),
                        main_pid: 0,
                        restarts: 0,
                        active_since_us: None,
                        status_text: String::new(),
                    });
                    continue;
                }
                Err(error) => return Err(error),
            };
            let unit_proxy = UnitProxy::builder(connection)
                .path(path.clone())
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let service = ServiceProxy::builder(connection)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let since = unit_proxy.active_enter_timestamp().await?;
            details.push(ServiceDetails {
                unit: unit.clone(),
                active_state: unit_proxy.active_state().await?,
                sub_state: unit_proxy.sub_state().await?,
                main_pid: service.main_pid().await?,
                restarts: service.n_restarts().await?,
                active_since_us: (since > 0).then_some(since),
                status_text: service.status_text().await?,
            });
        }
        Ok(details)
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
