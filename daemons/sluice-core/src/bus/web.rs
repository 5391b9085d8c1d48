//! `org.sluice.Web1`: the web daemon's object — the suite-wide `CancelJob` and `RetryJob`, and
//! the web's own state as properties.

use tokio::sync::mpsc;
use zbus::Connection;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;

use super::caller::Action;
use super::object::{Published, published_object};
use super::validate::require_id;
use super::{BusError, BusSetupError, CallerPolicy, DaemonState, Reply, forward};

pub const WEB_BUS_NAME: &str = "org.sluice.Web1";
pub const WEB_OBJECT_PATH: &str = "/org/sluice/Web1";

/// What the web daemon's main loop is asked to do.
#[derive(Debug)]
pub enum WebCommand {
    /// Cancel any job. The reply is the state it is in afterwards: `cancelled` for a job that
    /// was waiting, `cancelling` for a running one whose worker stops at its next heartbeat.
    CancelJob { job_id: u64, reply: Reply<String> },
    /// Put a `failed`, `dead` or `cancelled` job back in the queue.
    RetryJob { job_id: u64, reply: Reply<()> },
}

published_object! {
    /// The web daemon's state as its properties show it.
    status WebStatus;
    /// The object served at [`WEB_OBJECT_PATH`]. Build it through [`WebService::start`].
    interface WebInterface for WebCommand;
    attributes (
        name = "org.sluice.Web1",
        proxy(
            default_service = "org.sluice.Web1",
            default_path = "/org/sluice/Web1",
            async_name = "WebProxy"
        )
    );
    /// What the web daemon is doing, in one line.
    status_property;
    properties {
        /// Where the HTTP API listens.
        listen_address: String => String = Clone::clone;
        /// The base path of the API and dashboard.
        base_path: String => String = Clone::clone;
        /// The configured number of ingest workers.
        workers: u32 => u32 = Clone::clone;
        /// The store's durability setting, `full` or `normal`.
        durability: String => String = Clone::clone;
        /// Open Server-Sent Events streams.
        event_clients: u32 => u32 = Clone::clone;
    }
    counters {
        /// HTTP requests answered since start.
        requests_served: u64 => u64 = Clone::clone;
    }
    members {
        /// Cancel any job, whichever daemon owns it. Returns `cancelled` or `cancelling`.
        #[zbus(out_args("state"))]
        async fn cancel_job(
            &self,
            job_id: u64,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<String, BusError> {
            self.policy
                .authorize(connection, &header, "CancelJob", Action::ManageJobs)
                .await?;
            require_id("job_id", job_id)?;
            forward(&self.commands, |reply| WebCommand::CancelJob {
                job_id,
                reply,
            })
            .await
        }

        /// Queue a failed, dead or cancelled job again.
        async fn retry_job(
            &self,
            job_id: u64,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<(), BusError> {
            self.policy
                .authorize(connection, &header, "RetryJob", Action::ManageJobs)
                .await?;
            require_id("job_id", job_id)?;
            forward(&self.commands, |reply| WebCommand::RetryJob {
                job_id,
                reply,
            })
            .await
        }
    }
    signals {
        /// A job was queued through the web (an upload, a retry).
        pub fn job_queued(kind: &str, job_id: u64);
        /// A job was finished through the web (a waiting job cancelled).
        pub fn job_finished(job_id: u64, state: &str);
        /// A job started running: its object `job` (`/org/sluice/job/<id>`) appeared.
        pub fn job_new(job_id: u64, job: zbus::ObjectPath<'_>, kind: &str);
        /// A job stopped running and its object went away; `result` is the state it is in now:
        /// `succeeded`, `failed`, `dead`, `cancelled`, or `retrying`/`queued` when it runs again.
        pub fn job_removed(
            job_id: u64,
            job: zbus::ObjectPath<'_>,
            kind: &str,
            result: &str,
        );
    }
}

/// Emits `JobNew` for job `job_id` from any task on the web's connection (the job objects'
/// own task, see `jobs.rs`).
pub(super) async fn emit_job_new(
    connection: &Connection,
    job_id: u64,
    kind: &str,
) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(connection, WEB_OBJECT_PATH)?;
    let path = zbus::ObjectPath::try_from(super::job_object_path(job_id))?;
    WebInterface::job_new(&emitter, job_id, path, kind).await
}

/// Emits `JobRemoved` for job `job_id`, with the state it ended in.
pub(super) async fn emit_job_removed(
    connection: &Connection,
    job_id: u64,
    kind: &str,
    result: &str,
) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(connection, WEB_OBJECT_PATH)?;
    let path = zbus::ObjectPath::try_from(super::job_object_path(job_id))?;
    WebInterface::job_removed(&emitter, job_id, path, kind, result).await
}

impl WebStatus {
    pub fn starting(
        listen_address: &str,
        base_path: &str,
        workers: u32,
        durability: &str,
    ) -> WebStatus {
        WebStatus {
            state: DaemonState::Starting,
            status: "starting".into(),
            last_error: String::new(),
            listen_address: listen_address.to_owned(),
            base_path: base_path.to_owned(),
            workers,
            durability: durability.to_owned(),
            requests_served: 0,
            event_clients: 0,
        }
    }
}

/// The daemon's side of the web object: publish status, emit signals.
pub type WebService = Published<WebInterface>;

impl WebService {
    /// Serves the object and owns [`WEB_BUS_NAME`].
    pub async fn start(
        connection: &Connection,
        policy: CallerPolicy,
        initial_status: WebStatus,
    ) -> Result<(WebService, mpsc::Receiver<WebCommand>), BusSetupError> {
        Published::serve(
            connection,
            WEB_OBJECT_PATH,
            WEB_BUS_NAME,
            policy,
            initial_status,
        )
        .await
    }
}
