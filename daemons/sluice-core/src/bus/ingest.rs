//! `org.sluice.Ingest1`: one object per ingest worker instance, each under its own bus name,
//! so the CLI and the web can reach the worker that runs a given job.

use std::ops::Deref;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zbus::Connection;
use zbus::message::Header;

use super::caller::Action;
use super::object::{Published, published_object};
use super::rate_limit::{ProgressRateLimiter, clamp_fraction, lock_limiter};
use super::validate::require_id;
use super::{BusError, BusSetupError, CallerPolicy, DaemonState, Reply, forward};

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

published_object! {
    /// A worker's state as its properties show it.
    status IngestStatus;
    /// The object served at [`ingest_object_path`]. Build it through [`IngestService::start`].
    interface IngestInterface for IngestCommand;
    attributes (
        name = "org.sluice.Ingest1",
        proxy(assume_defaults = false, async_name = "IngestProxy")
    );
    /// What the worker is doing, in one line.
    status_property;
    properties {
        /// The worker's instance name.
        instance: String => String = Clone::clone;
        /// The job being worked on, 0 when idle.
        current_job: u64 => u64 = Clone::clone;
        /// Jobs this worker finished successfully since start.
        jobs_done: u64 => u64 = Clone::clone;
        /// Jobs that failed on this worker since start.
        jobs_failed: u64 => u64 = Clone::clone;
        /// The external processors this worker loaded.
        processors: Vec<String> => Vec<String> = Clone::clone;
        /// The program that renders PDF thumbnails, with its version, as found when the
        /// worker started (`pdftoppm 22.12.0`); empty when there is none.
        pdf_thumbnailer: String => String = Clone::clone;
    }
    members {
        /// Stop the job this worker is running now (the job becomes cancelled). Use
        /// `org.sluice.Web1.CancelJob` for a job whatever its state or worker.
        async fn cancel_job(
            &self,
            job_id: u64,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<(), BusError> {
            self.policy
                .authorize(connection, &header, "CancelJob", Action::ManageJobs)
                .await?;
            require_id("job_id", job_id)?;
            forward(&self.commands, |reply| IngestCommand::CancelJob {
                job_id,
                reply,
            })
            .await
        }
    }
    signals {
        /// This worker claimed a job.
        pub fn job_started(job_id: u64, kind: &str, worker: &str);
        /// Progress of the running job, 0.0 to 1.0; at most one per job every 250 ms.
        fn job_progress(job_id: u64, fraction: f64, message: &str);
        /// A job reached `succeeded`, `failed`, `retrying`, `cancelled` or `dead`.
        pub fn job_finished(job_id: u64, state: &str);
        /// Several jobs changed state, in this order: (job id, kind, new state), where the
        /// state is `running` for a start. A worker sends this instead of single
        /// `JobStarted`/`JobFinished` signals when jobs change faster than the bus should
        /// carry one signal each (above 200 a second); no change is ever left out.
        pub fn jobs_changed(worker: &str, changes: Vec<(u64, String, String)>);
    }
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
            pdf_thumbnailer: String::new(),
        }
    }
}

/// The daemon's side of a worker object: publish status, emit signals (progress through the
/// rate limiter). The rest of [`Published`] is reached through `Deref`.
#[derive(Debug)]
pub struct IngestService {
    object: Published<IngestInterface>,
    progress_limiter: Mutex<ProgressRateLimiter>,
}

impl Deref for IngestService {
    type Target = Published<IngestInterface>;

    fn deref(&self) -> &Published<IngestInterface> {
        &self.object
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
        let (object, commands) = Published::serve(
            connection,
            &ingest_object_path(&sanitized),
            &ingest_bus_name(&sanitized),
            policy,
            initial_status,
        )
        .await?;
        let service = IngestService {
            object,
            progress_limiter: Mutex::new(ProgressRateLimiter::new(progress_interval)),
        };
        Ok((service, commands))
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
            self.object.job_progress(job_id, fraction, message).await?;
        }
        Ok(allowed)
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
