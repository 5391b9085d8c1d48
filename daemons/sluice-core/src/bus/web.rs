//! `org.sluice.Web1`: the web daemon's object — the suite-wide `CancelJob` and `RetryJob`, and
//! the web's own state as properties.

use tokio::sync::{mpsc, watch};
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Connection, interface};

use super::validate::require_id;
use super::{
    BusError, BusSetupError, COMMAND_QUEUE_DEPTH, CallerPolicy, DaemonState, Reply, forward,
    serve_and_own_name,
};

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

/// The web daemon's state as its properties show it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebStatus {
    pub state: DaemonState,
    pub status: String,
    pub last_error: String,
    /// Where the HTTP API listens, e.g. `127.0.0.1:8080` or `socket-activated`.
    pub listen_address: String,
    /// The base path the API and dashboard are served under.
    pub base_path: String,
    /// The configured number of ingest workers (`workers = N`).
    pub workers: u32,
    pub durability: String,
    pub requests_served: u64,
    /// Open Server-Sent Events streams.
    pub event_clients: u32,
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

/// The object served at [`WEB_OBJECT_PATH`]. Build it through [`WebService::start`].
#[derive(Debug)]
pub struct WebInterface {
    commands: mpsc::Sender<WebCommand>,
    status: watch::Receiver<WebStatus>,
    policy: CallerPolicy,
}

#[interface(
    name = "org.sluice.Web1",
    proxy(
        default_service = "org.sluice.Web1",
        default_path = "/org/sluice/Web1",
        async_name = "WebProxy"
    )
)]
impl WebInterface {
    /// Cancel any job, whichever daemon owns it. Returns `cancelled` or `cancelling`.
    #[zbus(out_args("state"))]
    async fn cancel_job(
        &self,
        job_id: u64,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<String, BusError> {
        self.policy
            .authorize(connection, &header, "CancelJob")
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
            .authorize(connection, &header, "RetryJob")
            .await?;
        require_id("job_id", job_id)?;
        forward(&self.commands, |reply| WebCommand::RetryJob {
            job_id,
            reply,
        })
        .await
    }

    /// A job was queued through the web (an upload, a retry).
    #[zbus(signal)]
    async fn job_queued(emitter: &SignalEmitter<'_>, kind: &str, job_id: u64) -> zbus::Result<()>;

    /// A job was finished through the web (a waiting job cancelled).
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

    /// What the web daemon is doing, in one line.
    #[zbus(property)]
    fn status(&self) -> String {
        self.status.borrow().status.clone()
    }

    /// The last error, empty when there was none.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.status.borrow().last_error.clone()
    }

    /// Where the HTTP API listens.
    #[zbus(property)]
    fn listen_address(&self) -> String {
        self.status.borrow().listen_address.clone()
    }

    /// The base path of the API and dashboard.
    #[zbus(property)]
    fn base_path(&self) -> String {
        self.status.borrow().base_path.clone()
    }

    /// The configured number of ingest workers.
    #[zbus(property)]
    fn workers(&self) -> u32 {
        self.status.borrow().workers
    }

    /// The store's durability setting, `full` or `normal`.
    #[zbus(property)]
    fn durability(&self) -> String {
        self.status.borrow().durability.clone()
    }

    /// HTTP requests answered since start.
    #[zbus(property)]
    fn requests_served(&self) -> u64 {
        self.status.borrow().requests_served
    }

    /// Open Server-Sent Events streams.
    #[zbus(property)]
    fn event_clients(&self) -> u32 {
        self.status.borrow().event_clients
    }
}

/// The daemon's side of the web object: publish status, emit signals.
pub struct WebService {
    interface: InterfaceRef<WebInterface>,
    status: watch::Sender<WebStatus>,
}

impl std::fmt::Debug for WebService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `InterfaceRef` has no `Debug`; the object path is what identifies the service.
        formatter
            .debug_struct("WebService")
            .field("path", self.interface.signal_emitter().path())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl WebService {
    /// Serves the object and owns [`WEB_BUS_NAME`].
    pub async fn start(
        connection: &Connection,
        policy: CallerPolicy,
        initial_status: WebStatus,
    ) -> Result<(WebService, mpsc::Receiver<WebCommand>), BusSetupError> {
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (status_sender, status_receiver) = watch::channel(initial_status);
        let interface = WebInterface {
            commands: command_sender,
            status: status_receiver,
            policy,
        };
        let interface =
            serve_and_own_name(connection, WEB_OBJECT_PATH, WEB_BUS_NAME, interface).await?;
        let service = WebService {
            interface,
            status: status_sender,
        };
        Ok((service, command_receiver))
    }

    pub fn status(&self) -> WebStatus {
        self.status.borrow().clone()
    }

    /// Changes the status and emits `PropertiesChanged` for each property that changed.
    pub async fn update_status(&self, change: impl FnOnce(&mut WebStatus)) -> zbus::Result<()> {
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
        if before.listen_address != after.listen_address {
            interface.listen_address_changed(emitter).await?;
        }
        if before.base_path != after.base_path {
            interface.base_path_changed(emitter).await?;
        }
        if before.workers != after.workers {
            interface.workers_changed(emitter).await?;
        }
        if before.durability != after.durability {
            interface.durability_changed(emitter).await?;
        }
        if before.requests_served != after.requests_served {
            interface.requests_served_changed(emitter).await?;
        }
        if before.event_clients != after.event_clients {
            interface.event_clients_changed(emitter).await?;
        }
        Ok(())
    }

    pub async fn job_queued(&self, kind: &str, job_id: u64) -> zbus::Result<()> {
        WebInterface::job_queued(self.interface.signal_emitter(), kind, job_id).await
    }

    pub async fn job_finished(&self, job_id: u64, state: &str) -> zbus::Result<()> {
        WebInterface::job_finished(self.interface.signal_emitter(), job_id, state).await
    }
}
