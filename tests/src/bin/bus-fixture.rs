//! A stand-in daemon for the bus tests: serves sluice's real D-Bus objects from `sluice-core`
//! and answers their commands with a trivial loop, so the tests exercise the interfaces, the
//! caller check and the shipped bus policy through a real process on a real bus.
//!
//! It writes `ready` on stdout once every requested name is owned, exits 3 when a name is
//! already taken, and serves a test-only object (`org.sluice.Test1.Fixture`) whose
//! `EmitAllSignals` method emits every sluice signal once with fixed arguments.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_core::bus::{
    self, BusAddress, BusError, BusSetupError, CallerPolicy, DaemonState, IngestCommand,
    IngestService, IngestStatus, MonitorCommand, MonitorService, MonitorStatus, ScraperCommand,
    ScraperService, ScraperStatus, WebCommand, WebService, WebStatus,
};
use tokio::sync::{mpsc, oneshot};

/// Exit code when a bus name is already owned by another process.
const EXIT_NAME_TAKEN: u8 = 3;
/// The only source the fixture knows.
const KNOWN_SOURCE: &str = "nightly";
/// The job the fixture's ingest worker pretends to run.
const RUNNING_JOB: u64 = 42;
/// A queued job (cancel → cancelled), a failed one (retry → ok), a succeeded one (retry →
/// WrongState).
const QUEUED_JOB: u64 = 43;
const FAILED_JOB: u64 = 44;
const SUCCEEDED_JOB: u64 = 45;
const FIXTURE_OBJECT_PATH: &str = "/org/sluice/Test1/Fixture";

#[derive(Debug, Parser)]
struct Arguments {
    /// D-Bus address of the private bus.
    #[arg(long)]
    address: String,
    /// Objects to serve: monitor, scraper, web, ingest.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "monitor,scraper,web,ingest"
    )]
    serve: Vec<String>,
    /// Instance name of the ingest worker object.
    #[arg(long, default_value = "1")]
    ingest_instance: String,
    /// The address the web object announces as its `ListenAddress`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    web_listen: String,
    /// Spacing of progress signals; the tests use a long one so drops are deterministic.
    #[arg(long, default_value_t = 250)]
    progress_interval_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let arguments = Arguments::parse();
    match run(arguments).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let name_taken = error
                .chain()
                .any(|cause| matches!(cause.downcast_ref(), Some(BusSetupError::NameTaken { .. })));
            eprintln!("bus-fixture: {error:#}");
            if name_taken {
                ExitCode::from(EXIT_NAME_TAKEN)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Which emitters the `EmitAllSignals` command can use.
struct Services {
    monitor: Option<MonitorService>,
    scraper: Option<ScraperService>,
    ingest: Option<IngestService>,
    web: Option<WebService>,
}

enum Event {
    Monitor(MonitorCommand),
    Scraper(ScraperCommand),
    Ingest(IngestCommand),
    Web(WebCommand),
    EmitAllSignals(oneshot::Sender<u32>),
}

async fn run(arguments: Arguments) -> anyhow::Result<()> {
    let connection = bus::connect(&BusAddress::Address(arguments.address.clone()))
        .await
        .with_context(|| format!("cannot connect to {}", arguments.address))?;
    let policy = CallerPolicy::for_this_process();
    let progress_interval = Duration::from_millis(arguments.progress_interval_ms);
    let serve: BTreeSet<&str> = arguments.serve.iter().map(String::as_str).collect();
    let (event_sender, mut events) = mpsc::channel::<Event>(16);

    let (emit_sender, emit_requests) = mpsc::channel(4);
    connection
        .object_server()
        .at(FIXTURE_OBJECT_PATH, FixtureInterface { emit_sender })
        .await
        .context("cannot serve the fixture object")?;
    forward_events(&event_sender, emit_requests, Event::EmitAllSignals);

    let mut services = Services {
        monitor: None,
        scraper: None,
        ingest: None,
        web: None,
    };
    if serve.contains("monitor") {
        let status = MonitorStatus::starting(
            vec![
                PathBuf::from("/srv/sluice/inbox"),
                PathBuf::from("/srv/sluice/library"),
            ],
            "full",
        );
        let (service, commands) = MonitorService::start(&connection, policy, status).await?;
        forward_events(&event_sender, commands, Event::Monitor);
        service
            .update_status(|status| {
                status.state = DaemonState::Running;
                status.status = "watching 2 folders".into();
            })
            .await?;
        services.monitor = Some(service);
    }
    if serve.contains("scraper") {
        let status = ScraperStatus::starting(
            vec![KNOWN_SOURCE.into()],
            std::path::Path::new("/srv/sluice/staging"),
        );
        let (service, commands) =
            ScraperService::start(&connection, policy, status, progress_interval).await?;
        forward_events(&event_sender, commands, Event::Scraper);
        service
            .update_status(|status| {
                status.state = DaemonState::Running;
                status.status = "idle".into();
            })
            .await?;
        services.scraper = Some(service);
    }
    if serve.contains("ingest") {
        let status = IngestStatus::starting(vec!["ocr".into()]);
        let (service, commands) = IngestService::start(
            &connection,
            &arguments.ingest_instance,
            policy,
            status,
            progress_interval,
        )
        .await?;
        forward_events(&event_sender, commands, Event::Ingest);
        service
            .update_status(|status| {
                status.state = DaemonState::Running;
                status.current_job = RUNNING_JOB;
                status.status = format!("running job {RUNNING_JOB}");
            })
            .await?;
        services.ingest = Some(service);
    }
    if serve.contains("web") {
        let status = WebStatus::starting(&arguments.web_listen, "/", 2, "full");
        let (service, commands) = WebService::start(&connection, policy, status).await?;
        forward_events(&event_sender, commands, Event::Web);
        service
            .update_status(|status| status.state = DaemonState::Running)
            .await?;
        services.web = Some(service);
    }
    drop(event_sender);

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready").context("cannot write to stdout")?;
    stdout.flush().context("cannot flush stdout")?;
    drop(stdout);

    let mut state = FixtureState::default();
    while let Some(event) = events.recv().await {
        handle_event(event, &mut state, &services).await?;
    }
    Ok(())
}

/// Moves a command channel's messages into the one event channel of the main loop.
fn forward_events<Command: Send + 'static>(
    events: &mpsc::Sender<Event>,
    mut commands: mpsc::Receiver<Command>,
    wrap: fn(Command) -> Event,
) {
    let events = events.clone();
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            if events.send(wrap(command)).await.is_err() {
                break;
            }
        }
    });
}

#[derive(Debug, Default)]
struct FixtureState {
    next_download_id: u64,
    next_job_id: u64,
    downloads: BTreeSet<u64>,
}

async fn handle_event(
    event: Event,
    state: &mut FixtureState,
    services: &Services,
) -> anyhow::Result<()> {
    match event {
        Event::Monitor(MonitorCommand::Rescan { path, reply }) => {
            let folders = if path.is_some() { 1 } else { 2 };
            let _ = reply.send(Ok(folders));
        }
        Event::Scraper(command) => handle_scraper(command, state, services).await?,
        Event::Ingest(IngestCommand::CancelJob { job_id, reply }) => {
            let result = if job_id == RUNNING_JOB {
                Ok(())
            } else {
                Err(BusError::NotFound(format!(
                    "this worker is not running job {job_id}"
                )))
            };
            let _ = reply.send(result);
        }
        Event::Web(WebCommand::CancelJob { job_id, reply }) => {
            let result = match job_id {
                RUNNING_JOB => Ok("cancelling".to_owned()),
                QUEUED_JOB => Ok("cancelled".to_owned()),
                _ => Err(BusError::NotFound(format!("job {job_id} does not exist"))),
            };
            let _ = reply.send(result);
        }
        Event::Web(WebCommand::RetryJob { job_id, reply }) => {
            let result = match job_id {
                FAILED_JOB => Ok(()),
                SUCCEEDED_JOB => Err(BusError::WrongState(format!(
                    "job {job_id} succeeded; only failed, dead or cancelled jobs can be retried"
                ))),
                _ => Err(BusError::NotFound(format!("job {job_id} does not exist"))),
            };
            let _ = reply.send(result);
        }
        Event::EmitAllSignals(reply) => {
            let emitted = emit_all_signals(services).await?;
            let _ = reply.send(emitted);
        }
    }
    Ok(())
}

async fn handle_scraper(
    command: ScraperCommand,
    state: &mut FixtureState,
    services: &Services,
) -> anyhow::Result<()> {
    match command {
        ScraperCommand::AddDownload {
            url: _,
            options,
            reply,
        } => {
            if let Some(source) = options.source.filter(|source| source != KNOWN_SOURCE) {
                let _ = reply.send(Err(BusError::NotFound(format!(
                    "source {source:?} is not configured"
                ))));
                return Ok(());
            }
            state.next_download_id += 1;
            state.next_job_id += 1;
            let download_id = state.next_download_id;
            state.downloads.insert(download_id);
            if let Some(scraper) = &services.scraper {
                let active = u32::try_from(state.downloads.len()).unwrap_or(u32::MAX);
                scraper
                    .update_status(|status| status.downloads_active = active)
                    .await?;
            }
            let _ = reply.send(Ok((download_id, 1000 + state.next_job_id)));
        }
        ScraperCommand::CancelDownload { download_id, reply } => {
            let result = if state.downloads.contains(&download_id) {
                Ok(())
            } else {
                Err(BusError::NotFound(format!(
                    "download {download_id} does not exist"
                )))
            };
            let _ = reply.send(result);
        }
        ScraperCommand::DeleteDownload { download_id, reply } => {
            let result = if state.downloads.remove(&download_id) {
                Ok(())
            } else {
                Err(BusError::NotFound(format!(
                    "download {download_id} does not exist"
                )))
            };
            let _ = reply.send(result);
        }
        ScraperCommand::AddBundle { reply, .. } => {
            state.next_job_id += 1;
            let _ = reply.send(Ok(state.next_job_id));
        }
        ScraperCommand::CancelBundle { bundle_id, reply }
        | ScraperCommand::DeleteBundle { bundle_id, reply } => {
            let _ = reply.send(Err(BusError::NotFound(format!(
                "bundle {bundle_id} does not exist"
            ))));
        }
        ScraperCommand::ScrapeNow { source, reply } => {
            let result = if source == KNOWN_SOURCE {
                state.next_job_id += 1;
                Ok(1000 + state.next_job_id)
            } else {
                Err(BusError::NotFound(format!(
                    "source {source:?} is not configured"
                )))
            };
            let _ = reply.send(result);
        }
    }
    Ok(())
}

/// Emits every signal of every served object with the fixed arguments the tests expect; the
/// middle progress values are there to be dropped by the rate limiter. Returns how many
/// signals were actually sent.
async fn emit_all_signals(services: &Services) -> anyhow::Result<u32> {
    let mut emitted = 0;
    if let Some(monitor) = &services.monitor {
        monitor
            .file_detected(b"/srv/sluice/inbox/report.pdf\0", 11, 12)
            .await?;
        emitted += 1;
    }
    if let Some(scraper) = &services.scraper {
        scraper.job_queued("download", 101).await?;
        scraper.job_started(101, "download", "scraper").await?;
        emitted += 2;
        for (fraction, message) in [(0.0, "connecting"), (0.5, "halfway"), (1.0, "done")] {
            emitted += u32::from(scraper.job_progress(101, fraction, message).await?);
        }
        scraper.job_finished(101, "succeeded").await?;
        emitted += 1;
        for bytes in [0, 500, 1000] {
            emitted += u32::from(scraper.download_progress(1, bytes, 1000).await?);
        }
        scraper
            .download_finished(1, "succeeded", b"/srv/sluice/inbox/model.bin\0")
            .await?;
        emitted += 1;
    }
    if let Some(ingest) = &services.ingest {
        ingest.job_started(12, "ingest", "1").await?;
        emitted += 1;
        for (fraction, message) in [(0.0, "hashing"), (0.4, "extracting"), (1.0, "filed")] {
            emitted += u32::from(ingest.job_progress(12, fraction, message).await?);
        }
        ingest.job_finished(12, "succeeded").await?;
        emitted += 1;
    }
    if let Some(web) = &services.web {
        web.job_queued("ingest", FAILED_JOB).await?;
        web.job_finished(QUEUED_JOB, "cancelled").await?;
        emitted += 2;
    }
    Ok(emitted)
}

/// The test-only object: asks the main loop to emit every signal.
struct FixtureInterface {
    emit_sender: mpsc::Sender<oneshot::Sender<u32>>,
}

#[zbus::interface(name = "org.sluice.Test1.Fixture")]
impl FixtureInterface {
    /// Emits every sluice signal once; returns how many were sent.
    async fn emit_all_signals(&self) -> Result<u32, BusError> {
        let (reply, reply_receiver) = oneshot::channel();
        self.emit_sender
            .send(reply)
            .await
            .map_err(|_| BusError::Busy("the fixture is stopping".into()))?;
        reply_receiver
            .await
            .map_err(|_| BusError::Internal("the fixture failed to emit".into()))
    }
}
