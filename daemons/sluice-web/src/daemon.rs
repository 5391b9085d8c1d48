//! The web daemon's life: open the store, own `org.sluice.Web1`, listen (socket-activated or
//! bound), tell systemd it is ready, then run the main loop over one closed [`Event`] enum —
//! bus commands, signals to forward as Server-Sent Events, the web's own announcements, the
//! watchdog and status ticks, SIGTERM and SIGHUP — until asked to stop.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use sluice_core::bus::{
    self, BusSetupError, CallerPolicy, DaemonState, WebCommand, WebService, WebStatus,
};
use sluice_core::config::Config;
use sluice_core::runtime::{
    CommonArguments, ConfigReloader, Daemon, DaemonExit, Dependencies, Notifier, ReloadOutcome,
    RuntimeFlavour, Signal, StartError, StatusLine, StopDeadline,
};
use sluice_core::store::StoreError;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::job_objects::follow_running_jobs;
use crate::waiters::CATCH_UP_INTERVAL;

use crate::api;
use crate::app::app;
use crate::connections::{BLOCKING_THREADS_PER_WORKER, ConnectionBudget};
use crate::emitters::TrustedSignals;
use crate::events::{BusEvent, EVENT_BUFFER, FORWARDED_SIGNALS, SseFrame};
use crate::state::{
    AccessRules, Announcement, AppState, BusLink, Settings, StorePool, TokenCredentials, TokenError,
};

/// How long a stopping web lets its HTTP workers take the connections the acceptor already
/// handed over before the graceful stop, which would drop them. Taking one is a channel read;
/// this is orders of magnitude more.
const HANDOVER_GRACE: Duration = Duration::from_millis(200);

/// actix worker threads. The API is light (a store read or one bus call per request) and the
/// machine this runs on also runs the workers, so two are enough.
const HTTP_WORKERS: usize = 2;

/// How long a new connection may take to send its request head, and an idle keep-alive
/// connection may wait for its next request, before it is closed (actix's defaults, set here
/// so they are a decision): a client that connects and sends nothing holds an open file and
/// some memory only this long.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot subscribe to sluice's signals: {0}")]
    BusSubscribe(#[source] zbus::Error),
    #[error("cannot serve the running jobs' objects at /org/sluice/job: {0}")]
    JobObjects(#[source] zbus::Error),
    #[error(transparent)]
    BusSetup(#[from] BusSetupError),
    #[error("cannot listen on {address} ([web] listen): {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
}

impl WebError {
    /// The exit status systemd sees for this failure.
    pub fn exit(&self) -> DaemonExit {
        match self {
            WebError::Token(_) => DaemonExit::Config,
            WebError::Start(error) => error.exit(),
            WebError::Store(_)
            | WebError::BusSubscribe(_)
            | WebError::JobObjects(_)
            | WebError::BusSetup(_)
            | WebError::Listen { .. } => DaemonExit::Unavailable,
            WebError::Server(_) => DaemonExit::Failure,
        }
    }
}

/// sluice's HTTP API and event stream, and the org.sluice.Web1 D-Bus object.
///
/// Listens on the socket systemd passes (LISTEN_FDS) or else on [web] listen. Mutating API
/// calls need the bearer token from [web] token_file; without that file the daemon does not
/// start. At most [web] max_event_streams event streams are open at once, and the
/// connections held stay within the open-file limit (LimitNOFILE=). A token passed by systemd
/// as a credential ($CREDENTIALS_DIRECTORY/api-token, read-token: LoadCredential= in the
/// package's unit) is read instead of the configured file. SIGHUP reloads the tokens (a
/// credential is copied by systemd at start, so a changed token file under systemd takes a
/// restart), allowed hosts and stream limit; SIGTERM stops gracefully.
#[derive(Debug, clap::Parser)]
#[command(name = "sluice-web", version)]
pub struct Arguments {
    #[command(flatten)]
    pub common: CommonArguments,
}

/// sluice-web as the shared start-up runs it ([`sluice_core::runtime::daemon_main`]).
#[derive(Debug)]
pub struct WebDaemon {
    access: AccessRules,
    credentials: TokenCredentials,
}

impl Daemon for WebDaemon {
    type Arguments = Arguments;
    type Error = WebError;
    const RUNTIME: RuntimeFlavour = RuntimeFlavour::MultiThread { worker_threads: 2 };

    fn common_arguments(arguments: &Arguments) -> &CommonArguments {
        &arguments.common
    }

    fn log_identifier(_arguments: &Arguments) -> String {
        "sluice-web".to_owned()
    }

    /// Without its token files the daemon does not start; that is found before anything is
    /// opened.
    fn prepare(
        _arguments: Arguments,
        config: &Config,
        _config_path: &Path,
        _notifier: &Notifier,
    ) -> Result<WebDaemon, WebError> {
        let credentials = TokenCredentials::from_environment();
        Ok(WebDaemon {
            access: AccessRules::from_config(&config.web, &credentials)?,
            credentials,
        })
    }

    async fn run(self, dependencies: Dependencies) -> Result<(), WebError> {
        run(self.access, self.credentials, dependencies).await
    }

    fn report_failure(error: WebError) -> DaemonExit {
        tracing::error!(error = %error, "sluice-web stopped with an error: {error}");
        error.exit()
    }
}

/// Everything the main loop reacts to.
#[derive(Debug)]
enum Event {
    /// A method call on `org.sluice.Web1`.
    Command(WebCommand),
    /// A request handler changed a job; emit the matching Web1 signal.
    Announcement(Announcement),
    /// A sluice signal from the owner of its daemon's name, for the event streams.
    BusSignal(zbus::Result<zbus::Message>),
    Signal(Signal),
    WatchdogTick,
    StatusTick,
    /// The HTTP server ended without being asked to.
    ServerStopped(String),
}

/// Runs the daemon until SIGTERM (Ok) or a fatal error, with the access rules, store, bus
/// connection, signals and notifier it is given. `dependencies.config_path` is re-read on
/// SIGHUP.
pub async fn run(
    access: AccessRules,
    credentials: TokenCredentials,
    dependencies: Dependencies,
) -> Result<(), WebError> {
    let Dependencies {
        config,
        config_path,
        store,
        bus: connection,
        mut signals,
        notifier,
    } = dependencies;
    let stores = StorePool::starting_with(store);
    let token_origin = credentials.describe(&config.web);
    tracing::info!("{token_origin}");
    for warning in credentials.overridden(&config.web) {
        tracing::warn!("{warning}");
    }

    // Subscribe before owning the name, so no signal sent after READY is missed.
    let mut bus_signals = TrustedSignals::subscribe(&connection, EVENT_BUFFER)
        .await
        .map_err(WebError::BusSubscribe)?;

    let (listener, listen_address) = open_listener(&config)?;
    let (service, mut commands) = WebService::start(
        &connection,
        CallerPolicy::for_this_process(),
        WebStatus::starting(
            &listen_address,
            &config.web.base_path,
            config.ingest.workers,
            config.store.durability.as_str(),
        ),
    )
    .await?;

    let job_objects = bus::JobObjects::serve(&connection)
        .await
        .map_err(WebError::JobObjects)?;
    let job_objects_wake = Arc::new(Notify::new());

    let budget = ConnectionBudget::of_this_process();
    let (announcement_sender, mut announcements) = mpsc::channel(bus::COMMAND_QUEUE_DEPTH);
    let (event_sender, _) = broadcast::channel::<SseFrame>(EVENT_BUFFER);
    let (shutdown_sender, shutdown) = watch::channel(false);
    let state = AppState::new(
        Settings::from_config(&config),
        access,
        stores,
        Some(BusLink {
            connection: connection.clone(),
            runtime: tokio::runtime::Handle::current(),
            announcements: announcement_sender.clone(),
        }),
        event_sender.clone(),
        shutdown,
    );
    state.start_metrics();
    apply_stream_limit(&state, &budget, config.web.max_event_streams);
    crate::upload::sweep_staging(&config.scraper.staging);
    tokio::spawn(catch_up_with_jobs(state.clone()));
    tokio::spawn(follow_running_jobs(
        state.clone(),
        job_objects,
        Arc::clone(&job_objects_wake),
    ));
    let server_state = state.clone();
    let server = HttpServer::new(move || app(server_state.clone()))
        .workers(HTTP_WORKERS)
        .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER)
        .max_connections(budget.per_worker(HTTP_WORKERS))
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .keep_alive(KEEP_ALIVE)
        // A client that closes its side has left: its event stream ends (and frees its slot)
        // at once instead of at the next keep-alive write. HTTP/1.1 clients do not half-close
        // while waiting for an answer.
        .h1_allow_half_closed(false)
        .disable_signals()
        .shutdown_timeout(config.service.stop_timeout.as_secs().max(1))
        .listen(listener)
        .map_err(|source| WebError::Listen {
            address: listen_address.clone(),
            source,
        })?
        .run();
    let server_handle = server.handle();
    let mut server_task = tokio::spawn(server);

    let status_text = |state: &AppState| {
        let streams = state.event_streams();
        StatusLine::new(format!("serving on {listen_address}"))
            .detail(format!(
                "{} requests, {} of {} event streams",
                state.requests_served(),
                streams.open(),
                streams.limit()
            ))
            .to_string()
    };
    let initial_status = status_text(&state);
    publish(&service, |status| {
        status.state = DaemonState::Running;
        status.status = initial_status.clone();
    })
    .await;
    tracing::info!(
        listen = %listen_address,
        base_path = %config.web.base_path,
        open_file_limit = budget.open_file_limit,
        max_connections = budget.connections,
        max_event_streams = state.event_streams().limit(),
        "sluice-web is ready on {listen_address}: at most {} connections (open-file limit {}), up to {} of them event streams",
        budget.connections,
        budget.open_file_limit,
        state.event_streams().limit()
    );
    notifier.ready(&initial_status);

    let reload_path = config_path.clone();
    let reload_credentials = credentials.clone();
    let mut reloader = ConfigReloader::new(config.clone(), move || {
        let config = Config::load(&reload_path).map_err(|error| error.to_string())?;
        AccessRules::from_config(&config.web, &reload_credentials)
            .map_err(|error| error.to_string())?;
        Ok::<_, String>(config)
    });
    let mut watchdog = notifier.watchdog_ticker();
    let mut status_ticker = tokio::time::interval(config.service.status_interval);
    status_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streams_refused_reported = 0;

    loop {
        let event = tokio::select! {
            Some(command) = commands.recv() => Event::Command(command),
            Some(announcement) = announcements.recv() => Event::Announcement(announcement),
            Some(message) = bus_signals.next() => Event::BusSignal(message),
            signal = signals.recv() => Event::Signal(signal),
            () = watchdog.tick() => Event::WatchdogTick,
            _ = status_ticker.tick() => Event::StatusTick,
            result = &mut server_task => Event::ServerStopped(match result {
                Ok(Ok(())) => "the HTTP server stopped".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            }),
        };
        match event {
            Event::Command(command) => handle_command(&state, command, &announcement_sender),
            Event::Announcement(announcement) => {
                job_objects_wake.notify_one();
                state
                    .waiters()
                    .wake(i64::try_from(announcement.job_id()).unwrap_or_default());
                emit(&service, announcement).await
            }
            Event::BusSignal(Ok(message)) => {
                for event in BusEvent::all_from_message(&message) {
                    if let Some(job_id) = event.data.get("job_id").and_then(|id| id.as_i64()) {
                        state.waiters().wake(job_id);
                        job_objects_wake.notify_one();
                    }
                    if FORWARDED_SIGNALS.contains(&event.name.as_str()) {
                        // No subscriber is fine: nobody is watching the stream right now.
                        let _ = event_sender.send(event.to_frame());
                    }
                }
            }
            Event::BusSignal(Err(error)) => {
                tracing::warn!(
                    error = %error,
                    "a malformed message arrived on the signal stream: {error}"
                );
            }
            Event::WatchdogTick => notifier.watchdog_ping(),
            Event::StatusTick => {
                report_refused_streams(&state, &mut streams_refused_reported);
                let text = status_text(&state);
                let requests_served = state.requests_served();
                let event_clients = state.event_streams().open();
                if service.status().status != text {
                    notifier.status(&text);
                }
                publish(&service, |status| {
                    status.status = text;
                    status.requests_served = requests_served;
                    status.event_clients = event_clients;
                })
                .await;
            }
            Event::Signal(Signal::Reload) => {
                publish(&service, |status| status.state = DaemonState::Reloading).await;
                let before = reloader.current().clone();
                let outcome = reloader.reload(&notifier);
                match &outcome {
                    ReloadOutcome::Applied => {
                        let after = reloader.current();
                        match AccessRules::from_config(&after.web, &credentials) {
                            Ok(access) => state.replace_access(access),
                            Err(error) => {
                                tracing::error!(
                                    error = %error,
                                    "a token file changed while reloading; keeping the previous \
                                     tokens: {error}"
                                )
                            }
                        }
                        if after.web.max_event_streams != before.web.max_event_streams {
                            apply_stream_limit(&state, &budget, after.web.max_event_streams);
                            let limit = state.event_streams().limit();
                            tracing::info!(
                                limit,
                                "new event streams are now limited to {limit} ([web] max_event_streams)"
                            );
                        }
                        warn_about_restart_only_settings(&before, after);
                    }
                    ReloadOutcome::KeptPrevious { .. } => {}
                }
                let last_error = match outcome {
                    ReloadOutcome::Applied => String::new(),
                    ReloadOutcome::KeptPrevious { reason, .. } => reason,
                };
                publish(&service, |status| {
                    status.state = DaemonState::Running;
                    status.last_error = last_error;
                })
                .await;
            }
            Event::Signal(Signal::Terminate) => {
                notifier.stopping("stopping: finishing open requests");
                publish(&service, |status| {
                    status.state = DaemonState::Stopping;
                    status.status = "stopping".into();
                })
                .await;
                // Event streams never end by themselves; tell them to close first so the
                // graceful stop only waits for ordinary requests.
                let _ = shutdown_sender.send(true);
                let deadline = StopDeadline::after(config.service.stop_timeout);
                // actix-server's graceful stop drops the connections its acceptor already
                // handed to a worker that has not taken them yet (it finishes only active
                // ones). So first stop accepting, which leaves every connection still in the
                // kernel's backlog to the next process (systemd holds the socket), and give the
                // workers a moment to take what was handed over, then stop gracefully.
                server_handle.pause().await;
                tokio::time::sleep(HANDOVER_GRACE).await;
                if deadline
                    .finish_within(server_handle.stop(true))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "open requests did not finish before the stop timeout; closing them"
                    );
                    server_handle.stop(false).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut server_task).await;
                tracing::info!("sluice-web stopped");
                return Ok(());
            }
            Event::ServerStopped(reason) => {
                tracing::error!(reason = %reason, "the HTTP server ended unexpectedly: {reason}");
                return Err(WebError::Server(std::io::Error::other(reason)));
            }
        }
    }
}

/// Wakes the waiters of every job whose log grew, once every [`CATCH_UP_INTERVAL`], until the
/// daemon stops: what makes waiting correct when a signal is lost (see `waiters.rs`).
async fn catch_up_with_jobs(state: AppState) {
    let mut shutdown = state.shutdown();
    let mut ticker = tokio::time::interval(CATCH_UP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start at the newest entry: a waiter reads its job itself before it waits, so only what
    // is logged after it registered can be news to it.
    let mut seen = state
        .with_store(|store| store.newest_job_log_id())
        .await
        .unwrap_or(0);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let waiters = Arc::clone(state.waiters());
        let result = state
            .with_store(move |store| {
                let mut position = seen;
                waiters.catch_up(store, &mut position).map(|_| position)
            })
            .await;
        match result {
            Ok(position) => {
                seen = position;
                reported = false;
            }
            Err(error) if !reported => {
                reported = true;
                tracing::warn!(
                    error = %error,
                    "cannot read the job log for waiting clients ({error}); they are still woken \
                     by D-Bus signals, and this is tried again every second"
                );
            }
            Err(_) => {}
        }
    }
}

/// Sets the event stream limit from `[web] max_event_streams`, within what the open-file limit
/// allows (see [`ConnectionBudget::stream_limit`]); warns when that is less.
fn apply_stream_limit(state: &AppState, budget: &ConnectionBudget, configured: u32) {
    let limit = budget.stream_limit(configured);
    state.event_streams().set_limit(limit);
    if limit < configured {
        tracing::warn!(
            configured,
            limit,
            open_file_limit = budget.open_file_limit,
            "[web] max_event_streams = {configured} does not fit the open-file limit of {}: \
             at most {limit} event streams, so that other requests keep connections of their \
             own; raise LimitNOFILE= of sluice-web.service to allow more",
            budget.open_file_limit
        );
    }
}

/// Logs, once per status tick at most, how many event streams were refused since the last
/// report: a client retrying in a loop must not write a line per attempt.
fn report_refused_streams(state: &AppState, reported: &mut u64) {
    let streams = state.event_streams();
    let refused = streams.refused();
    if refused > *reported {
        tracing::warn!(
            refused = refused - *reported,
            limit = streams.limit(),
            "refused {} event stream(s) with 503: all {} ([web] max_event_streams) are in use",
            refused - *reported,
            streams.limit()
        );
        *reported = refused;
    }
}

/// The systemd socket (`LISTEN_FDS`, first descriptor) when socket-activated, else a socket
/// bound to `[web] listen`. Returns the listener and the address to show.
fn open_listener(config: &Config) -> Result<(TcpListener, String), WebError> {
    let mut inherited = listenfd::ListenFd::from_env();
    let listen_error = |address: String| {
        move |source| WebError::Listen {
            address: address.clone(),
            source,
        }
    };
    if inherited.len() > 0
        && let Some(listener) = inherited
            .take_tcp_listener(0)
            .map_err(listen_error("the socket passed by systemd".into()))?
    {
        let address = listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Ok((listener, format!("{address} (socket-activated)")));
    }
    let listener = bind(config.web.listen).map_err(listen_error(config.web.listen.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(listen_error(config.web.listen.to_string()))?
        .to_string();
    Ok((listener, address))
}

/// A listening socket on `address` with the backlog sluice-web.socket gets from systemd
/// (`Backlog=` defaults to `SOMAXCONN`), instead of the 128 of `std::net::TcpListener::bind`:
/// a burst of connections beyond the backlog has its SYNs dropped and waits a second or more
/// for the retransmission, `/healthz` included.
fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does, so a restart can listen again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// Answers a Web1 call on a task, so a slow store never stalls the loop (and its watchdog).
fn handle_command(
    state: &AppState,
    command: WebCommand,
    announcements: &mpsc::Sender<Announcement>,
) {
    let state = state.clone();
    let announcements = announcements.clone();
    tokio::spawn(async move {
        match command {
            WebCommand::CancelJob { job_id, reply } => {
                let result = job_change(&state, job_id, api::cancel).await;
                let reply_value = result.map(|job| {
                    let announcement = api::announcement_for(&job);
                    let _ = announcements.try_send(announcement);
                    if job.state == sluice_core::store::jobs::JobState::Running {
                        "cancelling".to_owned()
                    } else {
                        job.state.as_str().to_owned()
                    }
                });
                let _ = reply.send(reply_value);
            }
            WebCommand::RetryJob { job_id, reply } => {
                let result = job_change(&state, job_id, api::retry).await;
                let reply_value = result.map(|job| {
                    let _ = announcements.try_send(api::announcement_for(&job));
                });
                let _ = reply.send(reply_value);
            }
        }
    });
}

/// Runs a job change in the store for a bus call and maps the outcome to a named D-Bus error.
async fn job_change(
    state: &AppState,
    job_id: u64,
    change: fn(
        &mut sluice_core::store::Store,
        i64,
    ) -> Result<sluice_core::store::jobs::Job, sluice_core::store::jobs::JobError>,
) -> Result<sluice_core::store::jobs::Job, bus::BusError> {
    use sluice_core::store::jobs::JobError;
    let Ok(id) = i64::try_from(job_id) else {
        return Err(bus::BusError::NotFound(format!(
            "job {job_id} does not exist"
        )));
    };
    let result = state
        .with_store(move |store| Ok::<_, crate::error::ApiError>(change(store, id)))
        .await;
    match result {
        Ok(Ok(job)) => {
            tracing::info!(
                job_id = id,
                state = %job.state,
                "job {id} changed over D-Bus; it is now {}",
                job.state
            );
            Ok(job)
        }
        Ok(Err(JobError::NotFound(_))) => Err(bus::BusError::NotFound(format!(
            "job {job_id} does not exist"
        ))),
        Ok(Err(JobError::InvalidArgument(message))) => Err(bus::BusError::InvalidArgument(message)),
        Ok(Err(error @ (JobError::InvalidState { .. } | JobError::LeaseLost { .. }))) => {
            Err(bus::BusError::WrongState(error.to_string()))
        }
        Ok(Err(JobError::QueueFull(full))) => Err(bus::BusError::QueueFull(full.to_string())),
        Ok(Err(JobError::Store(StoreError::Busy(_)))) => Err(bus::BusError::Busy(
            "the database is busy; try again in a moment".into(),
        )),
        Ok(Err(JobError::Store(error))) => {
            tracing::error!(
                job_id = id,
                error = %error,
                "database error while changing job {id}: {error}"
            );
            Err(bus::BusError::Internal(format!("database error: {error}")))
        }
        Err(error) => Err(bus::BusError::Internal(error.to_string())),
    }
}

async fn emit(service: &WebService, announcement: Announcement) {
    let result = match &announcement {
        Announcement::JobQueued { kind, job_id } => service.job_queued(kind, *job_id).await,
        Announcement::JobFinished { job_id, state } => service.job_finished(*job_id, state).await,
    };
    if let Err(error) = result {
        tracing::warn!(
            error = %error,
            ?announcement,
            "cannot emit a Web1 signal for job {}: {error}",
            announcement.job_id()
        );
    }
}

async fn publish(service: &WebService, change: impl FnOnce(&mut WebStatus)) {
    if let Err(error) = service.update_status(change).await {
        tracing::warn!(
            error = %error,
            "cannot publish the web daemon's status on the bus: {error}"
        );
    }
}

/// The listener, the routes and the store are built at start; say so when a reload changes
/// them instead of pretending they took effect.
fn warn_about_restart_only_settings(before: &Config, after: &Config) {
    let changed = [
        ("[web] listen", before.web.listen != after.web.listen),
        (
            "[web] base_path",
            before.web.base_path != after.web.base_path,
        ),
        ("[store] path", before.store.path != after.store.path),
        ("[bus] address", before.bus.address != after.bus.address),
        ("[limits]", before.limits != after.limits),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(
            key,
            "{key} changed but only takes effect when sluice-web restarts"
        );
    }
}
