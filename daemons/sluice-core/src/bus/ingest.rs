//! `org.sluice.Ingest1`: one object per ingest worker instance, each under its own bus name,
//! so the CLI and the web can reach the worker that runs a given job.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Connection, interface};

use super::rate_limit::{ProgressRateLimiter, clamp_fraction, lock_limiter};
use super::validate::require_id;
use super::{
    BusError, BusSetupError, COMMAND_QUEUE_DEPTH, CallerPolicy, DaemonState, Reply, forward,
    serve_and_own_name,
};

pub const INGEST_INTERFACE: &str = "org.sluice.Ingest1";
/// Longest instance name kept; systemd instance names are short numbers in practice.
const MAX_INSTANCE_BYTES: usize = 64;

/// Turns a systemd instance name (`%i`, e.g. `1`) into a bus name element and path element:
/// every character outside `[A-Za-z0-9_]` becomes `_`.
///
/// Two instances that differ only in such characters map to the same name, and the second
/// then fails to own it — a clear error instead of two workers answering as one.
pub fn sanitize_instance(instance: &str) -> Result<String, BusSetupError> {
    if instance.is_empty() {
        return Err(BusSetupError::InvalidInstance {
            instance: instance.to_owned(),
            reason: "it is empty".into(),
        });
    }
    if instance.len() > MAX_INSTANCE_BYTES {
        return Err(BusSetupError::InvalidInstance {
            instance: instance.to_owned(),
            reason: format!("it is longer than {MAX_INSTANCE_BYTES} bytes"),
        });
    }
    Ok(instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect())
}

/// `org.sluice.Ingest1.Worker<instance>` for an already sanitized instance.
pub fn ingest_bus_name(sanitized_instance: &str) -> String {
    format!("{INGEST_INTERFACE}.Worker{sanitized_instance}")
}

/// `/org/sluice/Ingest1/<instance>` for an already sanitized instance.
pub fn ingest_object_path(sanitized_instance: &str) -> String {
    format!("/org/sluice/Ingest1/{sanitized_instance}")
}

/// A proxy for the worker `instance` (sanitized here the same way the worker does).
pub async fn ingest_proxy(
    connection: &Connection,
    instance: &str,
) -> zbus::Result<IngestProxy<'static>> {
    let sanitized =
        sanitize_instance(instance).map_err(|error| zbus::Error::Failure(error.to_string()))?;
    IngestProxy::builder(connection)
        .destination(ingest_bus_name(&sanitized))
        .path(ingest_object_path(&sanitized))
        .build()
        .await
}

/// What a worker's main loop is asked to do.
#[derive(Debug)]
pub enum IngestCommand {
    /// Stop the job this worker is running now; `NotFound` if it runs another or none.
    CancelJob { job_id: u64, reply: Reply<()> },
}

/// A worker's state as its properties show it.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestStatus {
    pub state: DaemonState,
    pub status: String,
    pub last_error: String,
    /// The sanitized instance name.
    pub instance: String,
    /// The job being worked on, 0 when idle.
    pub current_job: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// Names of the configured external processors loaded by this worker.
    pub processors: Vec<String>,
}

impl IngestStatus {
    pub fn starting(processors: Vec<String>) -> IngestStatus {
        IngestStatus {
            state: DaemonState::Starting,
            status: "starting".into(),
            last_error: String::new(),
            // Filled in by `IngestService::start`, which knows the sanitized name.
            instance: String::new(),
            current_job: 0,
            jobs_done: 0,
            jobs_failed: 0,
            processors,
        }
    }
}

/// The object served at [`ingest_object_path`]. Build it through [`IngestService::start`].
#[derive(Debug)]
pub struct IngestInterface {
    commands: mpsc::Sender<IngestCommand>,
    status: watch::Receiver<IngestStatus>,
    policy: CallerPolicy,
}

#[interface(
    name = "org.sluice.Ingest1",
    proxy(assume_defaults = false, async_name = "IngestProxy")
)]
impl IngestInterface {
    /// Stop the job this worker is running now (the job becomes cancelled). Use
    /// `org.sluice.Web1.CancelJob` for a job whatever its state or worker.
    async fn cancel_job(
        &self,
        job_id: u64,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BusError> {
        self.policy
            .authorize(connection, &header, "CancelJob")
            .await?;
        require_id("job_id", job_id)?;
        forward(&self.commands, |reply| IngestCommand::CancelJob {
            job_id,
            reply,
        })
        .await
    }

    /// This worker claimed a job.
    #[zbus(signal)]
    async fn job_started(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        kind: &str,
        worker: &str,
    ) -> zbus::Result<()>;

    /// Progress of the running job, 0.0 to 1.0; at most one per job every 250 ms.
    #[zbus(signal)]
    async fn job_progress(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        fraction: f64,
        message: &str,
    ) -> zbus::Result<()>;

    /// A job reached `succeeded`, `failed`, `retrying`, `cancelled` or `dead`.
    #[zbus(signal)]
    async fn job_finished(
        emitter: &SignalEmitter<'_>,
        job_id: u64,
        state: &str,
    ) -> zbus::Result<()>;

    /// `starting`, `running`, `reloading` or `stopping`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.status.borrow().state.as_str().to_owned()
    }

    /// What the worker is doing, in one line.
    #[zbus(property)]
    fn status(&self) -> String {
        self.status.borrow().status.clone()
    }

    /// The last error, empty when there was none.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.status.borrow().last_error.clone()
    }

    /// The worker's instance name.
    #[zbus(property)]
    fn instance(&self) -> String {
        self.status.borrow().instance.clone()
    }

    /// The job being worked on, 0 when idle.
    #[zbus(property)]
    fn current_job(&self) -> u64 {
        self.status.borrow().current_job
    }

    /// Jobs this worker finished successfully since start.
    #[zbus(property)]
    fn jobs_done(&self) -> u64 {
        self.status.borrow().jobs_done
    }

    /// Jobs that failed on this worker since start.
    #[zbus(property)]
    fn jobs_failed(&self) -> u64 {
        self.status.borrow().jobs_failed
    }

    /// The external processors this worker loaded.
    #[zbus(property)]
    fn processors(&self) -> Vec<String> {
        self.status.borrow().processors.clone()
    }
}

/// The daemon's side of a worker object: publish status, emit signals.
pub struct IngestService {
    interface: InterfaceRef<IngestInterface>,
    status: watch::Sender<IngestStatus>,
    progress_limiter: Mutex<ProgressRateLimiter>,
}

impl std::fmt::Debug for IngestService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `InterfaceRef` has no `Debug`; the object path is what identifies the service.
        formatter
            .debug_struct("IngestService")
            .field("path", self.interface.signal_emitter().path())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl IngestService {
    /// Serves the worker object for `instance` and owns its bus name.
    pub async fn start(
        connection: &Connection,
        instance: &str,
        policy: CallerPolicy,
        mut initial_status: IngestStatus,
        progress_interval: Duration,
    ) -> Result<(IngestService, mpsc::Receiver<IngestCommand>), BusSetupError> {
        let sanitized = sanitize_instance(instance)?;
        initial_status.instance = sanitized.clone();
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (status_sender, status_receiver) = watch::channel(initial_status);
        let interface = IngestInterface {
            commands: command_sender,
            status: status_receiver,
            policy,
        };
        let interface = serve_and_own_name(
            connection,
            &ingest_object_path(&sanitized),
            &ingest_bus_name(&sanitized),
            interface,
        )
        .await?;
        let service = IngestService {
            interface,
            status: status_sender,
            progress_limiter: Mutex::new(ProgressRateLimiter::new(progress_interval)),
        };
        Ok((service, command_receiver))
    }

    pub fn status(&self) -> IngestStatus {
        self.status.borrow().clone()
    }

    /// Changes the status and emits `PropertiesChanged` for each property that changed.
    pub async fn update_status(&self, change: impl FnOnce(&mut IngestStatus)) -> zbus::Result<()> {
        let before = self.status();
        self.status.send_modify(change);
        let after = self.status();
        let interface = self.interface.get().await;
        let emitter = self.interface.signal_emitter();
        if before.state != after.state {
            interface.state_changed(emitter).await?;
        }
        if before.status != after.status {
            interface.status_changed(emitter).await?;
        }
        if before.last_error != after.last_error {
            interface.last_error_changed(emitter).await?;
        }
        if before.instance != after.instance {
            interface.instance_changed(emitter).await?;
        }
        if before.current_job != after.current_job {
            interface.current_job_changed(emitter).await?;
        }
        if before.jobs_done != after.jobs_done {
            interface.jobs_done_changed(emitter).await?;
        }
        if before.jobs_failed != after.jobs_failed {
            interface.jobs_failed_changed(emitter).await?;
        }
        if before.processors != after.processors {
            interface.processors_changed(emitter).await?;
        }
        Ok(())
    }

    pub async fn job_started(&self, job_id: u64, kind: &str, worker: &str) -> zbus::Result<()> {
        IngestInterface::job_started(self.interface.signal_emitter(), job_id, kind, worker).await
    }

    /// Emits `JobProgress` unless the rate limiter drops it; returns whether it was sent.
    pub async fn job_progress(
        &self,
        job_id: u64,
        fraction: f64,
        message: &str,
    ) -> zbus::Result<bool> {
        let fraction = clamp_fraction(fraction);
        let allowed = lock_limiter(&self.progress_limiter).allow_job_progress(
            job_id,
            fraction,
            Instant::now(),
        );
        if allowed {
            IngestInterface::job_progress(
                self.interface.signal_emitter(),
                job_id,
                fraction,
                message,
            )
            .await?;
        }
        Ok(allowed)
    }

    pub async fn job_finished(&self, job_id: u64, state: &str) -> zbus::Result<()> {
        IngestInterface::job_finished(self.interface.signal_emitter(), job_id, state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_become_valid_name_elements() {
        assert_eq!(sanitize_instance("1").unwrap(), "1");
        assert_eq!(sanitize_instance("gpu-0.a").unwrap(), "gpu_0_a");
        assert_eq!(ingest_bus_name("1"), "org.sluice.Ingest1.Worker1");
        assert_eq!(ingest_object_path("1"), "/org/sluice/Ingest1/1");
        assert!(sanitize_instance("").is_err());
        assert!(sanitize_instance(&"x".repeat(65)).is_err());
        // The results must be accepted by zbus as a bus name and an object path.
        let sanitized = sanitize_instance("é/../x y").unwrap();
        assert!(zbus::names::WellKnownName::try_from(ingest_bus_name(&sanitized)).is_ok());
        assert!(zbus::ObjectPath::try_from(ingest_object_path(&sanitized)).is_ok());
    }
}
