//! Fixtures of the tests and the benchmarks: temporary state directories with a configuration
//! file, the store, the root skip rule, sluice-web and the whole suite as real processes on a
//! private bus, an HTTP client, and a real HTTP fixture server on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_core::store::{
    Durability, JobState, JobTransition, NewJob, RetryPolicy, Store, StoreOptions,
};

use crate::bus::{BusPolicy, PrivateBus};
use crate::process::{
    DEADLINE, DaemonProcess, STARTUP_DEADLINE, SpawnOptions, binary_path, wait_until,
};

pub fn store_options(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        // The shipped default, as a daemon would get it from the configuration.
        max_attempts: sluice_core::config::defaults().jobs.max_attempts,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    }
}

/// Whether a job's history has a retry whose error mentions `reason`.
pub fn retried_because(history: &[JobTransition], reason: &str) -> bool {
    history.iter().any(|step| {
        step.to_state == JobState::Retrying
            && step
                .error
                .as_deref()
                .is_some_and(|error| error.contains(reason))
    })
}

/// The first transition of a job's history to `to` in attempt `attempt`.
pub fn transition(
    history: &[JobTransition],
    to: JobState,
    attempt: u32,
) -> anyhow::Result<&JobTransition> {
    history
        .iter()
        .find(|step| step.to_state == to && step.attempt == attempt)
        .with_context(|| format!("no transition to {to} at attempt {attempt}: {history:?}"))
}

/// Checks a job whose holder was killed at `killed_at_ms` (issue 16): its first attempt ended
/// in `retrying` with `reason` in the error, the second claim came before the dead holder's
/// lease could have expired (so the rescue did it, not the expiry), and prints how long the
/// take-over took (`what` names it). Returns the transition of the second claim.
pub fn assert_taken_over_before_the_lease_expired<'h>(
    history: &'h [JobTransition],
    reason: &str,
    killed_at_ms: i64,
    lease_expires_at_ms: i64,
    what: &str,
) -> anyhow::Result<&'h JobTransition> {
    let rescued = transition(history, JobState::Retrying, 1)?;
    anyhow::ensure!(
        rescued
            .error
            .as_deref()
            .is_some_and(|error| error.contains(reason)),
        "the first attempt did not end because {reason:?}: {history:?}"
    );
    let claimed_again = transition(history, JobState::Running, 2)?;
    eprintln!(
        "kill -9 → {what} after {} ms (the lease would have expired after {} ms)",
        claimed_again.at_ms - killed_at_ms,
        lease_expires_at_ms - killed_at_ms
    );
    anyhow::ensure!(
        claimed_again.at_ms < lease_expires_at_ms,
        "claimed again at {}, not before the lease could have expired at \
         {lease_expires_at_ms}: {history:?}",
        claimed_again.at_ms
    );
    Ok(claimed_again)
}

/// The SHA-256 of `bytes` as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Every regular file under `directory`, recursively, dot-files included, sorted.
pub fn files_under(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("read a folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

pub fn open_store(path: &Path, durability: Durability) -> Store {
    Store::open(path, &store_options(durability)).expect("open store")
}

/// The queue client helper program (tests/src/bin/queue-child.rs) for a database.
pub fn queue_child(database: &Path, durability: Durability) -> Command {
    let mut command = Command::new(binary_path("queue-child"));
    command
        .arg("--db")
        .arg(database)
        .arg("--durability")
        .arg(durability.as_str());
    command
}

pub fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().to_path_buf();
    (directory, path)
}

/// The skip rule for tests that need root: `false` (after saying so) when not root, unless
/// `SLUICE_REQUIRE_ROOT_TESTS=1`, in which case not being root fails the test.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip("needs root");
    false
}

/// Says why a test does not run here; the caller then returns. Under
/// `SLUICE_REQUIRE_ROOT_TESTS=1` (CI, run as root, where every test must run) a skip is a
/// failure instead, so that no test passes there without having run.
pub fn skip(reason: &str) {
    if std::env::var("SLUICE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("this test would be skipped ({reason}) and SLUICE_REQUIRE_ROOT_TESTS=1 is set");
    }
    eprintln!("skipped: {reason}");
}

/// A tmpfs of the test's own, mounted on a temporary directory (needs root): a file system
/// that is certainly not the one of the temp folder, and a small one when asked, to fill up.
/// Unmounted when dropped.
#[derive(Debug)]
pub struct TmpfsMount {
    directory: tempfile::TempDir,
}

impl TmpfsMount {
    /// 64 MiB: room for anything a test writes.
    pub fn new() -> anyhow::Result<TmpfsMount> {
        TmpfsMount::with_size("64m")
    }

    /// A tmpfs of `size`, in mount(8)'s syntax ("1m", "512k").
    pub fn with_size(size: &str) -> anyhow::Result<TmpfsMount> {
        let directory = tempfile::tempdir().context("cannot make a mount point")?;
        run_mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            &directory.path().to_string_lossy(),
        ])?;
        Ok(TmpfsMount { directory })
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// Grows (or shrinks) the file system in place; the files on it stay, and the processes
    /// that have them open keep them.
    pub fn resize(&self, size: &str) -> anyhow::Result<()> {
        run_mount(&[
            "-o",
            &format!("remount,size={size}"),
            &self.path().to_string_lossy(),
        ])
    }

    /// Bytes an unprivileged writer could still write (`statvfs`'s `f_bavail`).
    pub fn free_bytes(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(self.path()).expect("statvfs of the tmpfs");
        stats.blocks_available() as u64 * stats.fragment_size() as u64
    }

    /// Writes the file `name` until the file system is full (the write fails with ENOSPC) and
    /// returns its size; removing the file gives the space back.
    pub fn fill(&self, name: &str) -> anyhow::Result<u64> {
        use std::io::Write;
        let path = self.path().join(name);
        let mut filler = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let chunk = vec![0xa5_u8; 64 * 1024];
        loop {
            match filler.write_all(&chunk) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => bail!("cannot fill {}: {error}", path.display()),
            }
        }
        // Whatever a short write left in the page cache is on the file system now too.
        let _ = filler.sync_all();
        let length = filler.metadata()?.len();
        Ok(length)
    }
}

fn run_mount(arguments: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("mount")
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .context("cannot run mount")?;
    if !output.status.success() {
        bail!(
            "mount {} failed: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazily, so a file a killed daemon still holds open cannot keep the mount (and the
        // temporary directory's removal then fails quietly instead of leaking a mount).
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.directory.path())
            .output();
    }
}

/// The admin API token the web harness writes into its token file.
pub const WEB_TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// The read API token the web harness writes into its read token file.
pub const WEB_READ_TOKEN: &str = "read-token-fedcba9876543210";

/// Everything a test of sluice-web or sluicectl needs: a private bus, a temporary state
/// directory with a configuration file, a token file and the database path.
#[derive(Debug)]
pub struct SuiteFixture {
    pub bus: PrivateBus,
    pub directory: tempfile::TempDir,
    pub config_path: PathBuf,
    pub database: PathBuf,
}

impl SuiteFixture {
    /// Writes a configuration for this fixture; `extra` is appended to the file (more keys of
    /// tables that are not written here, or whole tables).
    pub fn new(web_section: &str, extra: &str) -> SuiteFixture {
        SuiteFixture::with_config(|root, address| {
            format!(
                r#"[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{address}"

[web]
listen = "127.0.0.1:0"
token_file = "{root}/api-token"
read_token_file = "{root}/read-token"
{web_section}

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
allow_private_addresses = false

[service]
status_interval = "200ms"
stop_timeout = "5s"

[limits]
max_request_body = "4 KiB"

{extra}
"#,
                root = root.display(),
            )
        })
    }

    pub fn store(&self) -> Store {
        open_store(&self.database, Durability::Normal)
    }

    /// Writes `address` as `[web] listen` in the configuration file, in place of the
    /// `127.0.0.1:0` sluice-web was started with (it keeps the port it bound). `sluicectl
    /// submit` outside systemd believes the address announced on the bus only when it is the
    /// configured one, as it is in a real installation.
    pub fn pin_web_listen(&self, address: std::net::SocketAddr) {
        let text = std::fs::read_to_string(&self.config_path).expect("read the configuration");
        let pinned = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{address}\""),
            1,
        );
        assert_ne!(
            pinned, text,
            "the configuration has no listen = \"127.0.0.1:0\""
        );
        std::fs::write(&self.config_path, pinned).expect("write the configuration");
    }

    /// How many jobs the database holds, in any state.
    pub fn job_total(&self) -> usize {
        self.store()
            .job_counts()
            .expect("job counts")
            .values()
            .sum::<u64>() as usize
    }

    /// Queues a job of `kind` with a small payload; returns its id.
    pub fn enqueue(&self, kind: &str) -> i64 {
        self.store()
            .enqueue(&NewJob::new(kind, serde_json::json!({ "n": 1 })))
            .expect("enqueue")
            .id
    }

    /// A zbus connection to the fixture's bus, on `runtime`.
    pub fn connect(&self, runtime: &tokio::runtime::Runtime) -> zbus::Connection {
        runtime
            .block_on(sluice_core::bus::connect(
                &sluice_core::bus::BusAddress::Address(self.bus.address().to_owned()),
            ))
            .expect("connect to the private bus")
    }

    /// A private bus and a state directory with `inbox/`, `staging/`, `library/` and the
    /// token file; `config(root, bus address)` gives the configuration file's text.
    fn with_config(config: impl FnOnce(&Path, &str) -> String) -> SuiteFixture {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        for folder in ["inbox", "staging", "library"] {
            std::fs::create_dir_all(root.join(folder)).expect("state folder");
        }
        std::fs::write(root.join("api-token"), format!("{WEB_TEST_TOKEN}\n")).expect("token");
        std::fs::write(root.join("read-token"), format!("{WEB_READ_TOKEN}\n")).expect("read token");
        let config_path = root.join("sluice.toml");
        std::fs::write(&config_path, config(root, bus.address())).expect("config file");
        SuiteFixture {
            database: root.join("sluice.db"),
            bus,
            directory,
            config_path,
        }
    }
}

/// A running `sluice-web` process (killed when dropped) and the address it listens on.
#[derive(Debug)]
pub struct WebDaemon {
    pub process: DaemonProcess,
    /// `http://127.0.0.1:PORT` (without the base path).
    pub origin: String,
    pub address: std::net::SocketAddr,
}

impl WebDaemon {
    /// Starts sluice-web with the fixture's configuration and waits until it owns
    /// `org.sluice.Web1`, says it is running and names the address it listens on.
    pub fn start(fixture: &SuiteFixture) -> WebDaemon {
        WebDaemon::start_with_environment(fixture, &[])
    }

    /// Like [`WebDaemon::start`], with these environment variables set as well (e.g.
    /// `CREDENTIALS_DIRECTORY`, as systemd sets it for a unit with `LoadCredential=`).
    pub fn start_with_environment(
        fixture: &SuiteFixture,
        environment: &[(&str, &std::ffi::OsStr)],
    ) -> WebDaemon {
        let mut command = Command::new(binary_path("sluice-web"));
        command
            .arg("--config")
            .arg(&fixture.config_path)
            .env("SLUICE_LOG", "info");
        for (name, value) in environment {
            command.env(name, value);
        }
        let mut process = DaemonProcess::spawn(&mut command, SpawnOptions::named("sluice-web"))
            .unwrap_or_else(|error| panic!("{error:#}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let connection = fixture.connect(&runtime);
        let mut listen_address = None;
        let started = wait_until(STARTUP_DEADLINE, || {
            assert!(
                process.is_running(),
                "sluice-web exited with {:?}: {}",
                process.wait_for_exit(Duration::ZERO),
                process.log()
            );
            listen_address = runtime.block_on(async {
                let proxy = sluice_core::bus::WebProxy::builder(&connection)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .ok()?;
                (proxy.state().await.ok()? == "running").then_some(())?;
                proxy.listen_address().await.ok()
            });
            listen_address.is_some()
        });
        assert!(started, "sluice-web did not start: {}", process.log());
        let address: std::net::SocketAddr = listen_address
            .expect("listen address")
            .parse()
            .expect("ListenAddress is ip:port");
        WebDaemon {
            process,
            origin: format!("http://{address}"),
            address,
        }
    }
}

/// An HTTP client that returns 4xx and 5xx responses instead of failing on them.
/// Opens `GET {origin}/api/events`, checks that it is an event stream, and hands over its
/// lines from a reader thread as they arrive.
pub fn event_stream_lines(agent: &ureq::Agent, origin: &str) -> std::sync::mpsc::Receiver<String> {
    let response = agent
        .get(format!("{origin}/api/events"))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .call()
        .expect("open the event stream");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = response.into_body().into_reader();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Status and body of a response, with the body parsed as JSON when it is JSON.
pub fn http_result(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, serde_json::Value) {
    let mut response = response.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

// --- scraper harness ---

/// What the HTTP fixture answers on one path.
#[derive(Debug, Clone)]
pub enum FixtureRoute {
    /// A file with a strong ETag, honouring `Range: bytes=N-` (with `If-Range`), sent in
    /// chunks of `chunk` bytes with `pause` between them (slow enough to kill or cancel
    /// mid-transfer). Without `content_length` the body is delimited by closing the
    /// connection.
    File {
        body: Arc<Vec<u8>>,
        etag: String,
        chunk: usize,
        pause: Duration,
        content_length: bool,
    },
    /// A bare status with a short text body.
    Status(u16),
    /// `302 Found` to this location.
    Redirect(String),
    /// `status` with extra header lines (e.g. `Retry-After: 2`, or none) for the first
    /// `failures` requests, then the file.
    ThrottleThenServe {
        failures: Arc<std::sync::atomic::AtomicUsize>,
        status: u16,
        headers: String,
        body: Arc<Vec<u8>>,
    },
    /// The file, sent `chunk` bytes at a time with `pause` between them for the first
    /// `slow_requests` requests (a transfer that trickles), at full speed after that.
    SlowThenFast {
        slow_requests: Arc<std::sync::atomic::AtomicUsize>,
        body: Arc<Vec<u8>>,
        chunk: usize,
        pause: Duration,
    },
    /// A page or feed with a content type and, when `etag` is set, that ETag: a request with
    /// a matching `If-None-Match` gets `304 Not Modified`.
    Page {
        body: Arc<Vec<u8>>,
        content_type: String,
        etag: Option<String>,
    },
    /// `status` with extra header lines (e.g. `Retry-After: 60`) and a short body.
    StatusWithHeaders { status: u16, headers: String },
    /// A JSON document with extra header lines (e.g. a `Link` to the next page).
    Json { body: Arc<Vec<u8>>, headers: String },
    /// Reads the request and answers nothing for `stall`, then closes the connection.
    Hang(Duration),
    /// Promises `length` bytes, sends `sent` of them, then stalls for `stall`.
    Stall {
        length: usize,
        sent: usize,
        stall: Duration,
    },
}

impl FixtureRoute {
    /// A file served at full speed.
    pub fn file(body: Vec<u8>) -> FixtureRoute {
        FixtureRoute::File {
            body: Arc::new(body),
            etag: "\"fixture-v1\"".to_owned(),
            chunk: 64 * 1024,
            pause: Duration::ZERO,
            content_length: true,
        }
    }

    /// The file trickling for the first `slow_requests` requests, then at full speed.
    pub fn slow_then_fast(
        body: Vec<u8>,
        slow_requests: usize,
        chunk: usize,
        pause: Duration,
    ) -> FixtureRoute {
        FixtureRoute::SlowThenFast {
            slow_requests: Arc::new(std::sync::atomic::AtomicUsize::new(slow_requests)),
            body: Arc::new(body),
            chunk,
            pause,
        }
    }

    /// A page or feed with an ETag (answered 304 when the client has it).
    pub fn page(body: impl Into<Vec<u8>>, content_type: &str, etag: &str) -> FixtureRoute {
        FixtureRoute::Page {
            body: Arc::new(body.into()),
            content_type: content_type.to_owned(),
            etag: Some(etag.to_owned()),
        }
    }

    /// A JSON document.
    pub fn json(body: &serde_json::Value) -> FixtureRoute {
        FixtureRoute::Json {
            body: Arc::new(body.to_string().into_bytes()),
            headers: String::new(),
        }
    }

    /// The same file sent `chunk` bytes at a time with `pause` between chunks.
    pub fn slow_file(body: Vec<u8>, chunk: usize, pause: Duration) -> FixtureRoute {
        FixtureRoute::File {
            body: Arc::new(body),
            etag: "\"fixture-v1\"".to_owned(),
            chunk,
            pause,
            content_length: true,
        }
    }
}

/// One request the fixture received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureRequest {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub user_agent: Option<String>,
    pub authorization: Option<String>,
    pub if_none_match: Option<String>,
    /// When the request's head had been read.
    pub received: std::time::Instant,
}

#[derive(Debug, Default)]
struct FixtureState {
    routes: Mutex<std::collections::HashMap<String, FixtureRoute>>,
    requests: Mutex<Vec<FixtureRequest>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// A real HTTP/1.1 server on 127.0.0.1 with an OS-chosen port, one thread per connection,
/// every response `Connection: close`. It records every request it gets.
#[derive(Debug)]
pub struct HttpFixture {
    address: std::net::SocketAddr,
    state: Arc<FixtureState>,
}

impl HttpFixture {
    pub fn start() -> HttpFixture {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fixture");
        let address = listener.local_addr().expect("fixture address");
        let state = Arc::new(FixtureState::default());
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    // A client that goes away mid-response (killed, cancelled) is expected.
                    let _ = serve_fixture_connection(stream, &state);
                });
            }
        });
        HttpFixture { address, state }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.address.port())
    }

    /// Sets (or replaces) what `path` answers.
    pub fn route(&self, path: &str, route: FixtureRoute) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), route);
    }

    pub fn requests(&self) -> Vec<FixtureRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests for one path.
    pub fn requests_for(&self, path: &str) -> Vec<FixtureRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.state
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.address);
    }
}

fn serve_fixture_connection(
    stream: std::net::TcpStream,
    state: &FixtureState,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let request = FixtureRequest {
        path: path.clone(),
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        user_agent: headers.get("user-agent").cloned(),
        authorization: headers.get("authorization").cloned(),
        if_none_match: headers.get("if-none-match").cloned(),
        received: std::time::Instant::now(),
    };
    state.requests.lock().unwrap().push(request.clone());
    let route = state.routes.lock().unwrap().get(&path).cloned();
    let mut stream = stream;
    let simple = |stream: &mut std::net::TcpStream, status: u16, extra: &str| {
        let body = format!("status {status}\n");
        write!(
            stream,
            "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            reason_phrase(status),
            body.len()
        )
    };
    match route {
        None => simple(&mut stream, 404, ""),
        Some(FixtureRoute::Status(status)) => simple(&mut stream, status, ""),
        Some(FixtureRoute::Redirect(location)) => {
            simple(&mut stream, 302, &format!("Location: {location}\r\n"))
        }
        Some(FixtureRoute::ThrottleThenServe {
            failures,
            status,
            headers,
            body,
        }) => {
            let failed = failures
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            if failed {
                simple(&mut stream, status, &headers)
            } else {
                send_fixture_file(
                    &mut stream,
                    &request,
                    &body,
                    "\"fixture-v1\"",
                    64 * 1024,
                    Duration::ZERO,
                    true,
                )
            }
        }
        Some(FixtureRoute::SlowThenFast {
            slow_requests,
            body,
            chunk,
            pause,
        }) => {
            let slow = slow_requests
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            let (chunk, pause) = if slow {
                (chunk, pause)
            } else {
                (64 * 1024, Duration::ZERO)
            };
            send_fixture_file(
                &mut stream,
                &request,
                &body,
                "\"fixture-v1\"",
                chunk,
                pause,
                true,
            )
        }
        Some(FixtureRoute::Page {
            body,
            content_type,
            etag,
        }) => {
            if etag.is_some() && request.if_none_match == etag {
                return write!(
                    stream,
                    "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nConnection: close\r\n\r\n",
                    etag.unwrap_or_default()
                );
            }
            let etag_line = etag
                .map(|etag| format!("ETag: {etag}\r\n"))
                .unwrap_or_default();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 {etag_line}Connection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        Some(FixtureRoute::StatusWithHeaders { status, headers }) => {
            simple(&mut stream, status, &headers)
        }
        Some(FixtureRoute::Json { body, headers }) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 {headers}Connection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        Some(FixtureRoute::Hang(stall)) => {
            std::thread::sleep(stall);
            Ok(())
        }
        Some(FixtureRoute::Stall {
            length,
            sent,
            stall,
        }) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {length}\r\n\
                 Connection: close\r\n\r\n"
            )?;
            stream.write_all(&vec![b' '; sent])?;
            stream.flush()?;
            std::thread::sleep(stall);
            Ok(())
        }
        Some(FixtureRoute::File {
            body,
            etag,
            chunk,
            pause,
            content_length,
        }) => send_fixture_file(
            &mut stream,
            &request,
            &body,
            &etag,
            chunk,
            pause,
            content_length,
        ),
    }
}

fn send_fixture_file(
    stream: &mut std::net::TcpStream,
    request: &FixtureRequest,
    body: &[u8],
    etag: &str,
    chunk: usize,
    pause: Duration,
    content_length: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let length = body.len() as u64;
    let validator_matches = request
        .if_range
        .as_deref()
        .is_none_or(|validator| validator == etag);
    let start = request
        .range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<u64>().ok())
        .filter(|_| validator_matches);
    let mut head = String::new();
    let offset = match start {
        Some(start) if start >= length => {
            write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{length}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(start) => {
            head.push_str("HTTP/1.1 206 Partial Content\r\n");
            head.push_str(&format!(
                "Content-Range: bytes {start}-{}/{length}\r\n",
                length - 1
            ));
            start
        }
        None => {
            head.push_str("HTTP/1.1 200 OK\r\n");
            0
        }
    };
    if content_length {
        head.push_str(&format!("Content-Length: {}\r\n", length - offset));
    }
    head.push_str(&format!(
        "ETag: {etag}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())?;
    for piece in body[offset as usize..].chunks(chunk.max(1)) {
        stream.write_all(piece)?;
        stream.flush()?;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        429 => "Too Many Requests",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

// --- suite harness ---

/// The whole suite as real processes on one private bus, with one state directory and one
/// configuration file (passed to every process as `SLUICE_CONFIG`): sluice-monitor watching
/// the inbox in consume mode, ingest workers `1` and `2`, sluice-scraper (private addresses
/// allowed, so an [`HttpFixture`] on 127.0.0.1 is reachable; staging and inbox on the same
/// filesystem) and sluice-web on 127.0.0.1 with the harness token. Every process is killed
/// when the suite is dropped, before the bus goes away.
#[derive(Debug)]
pub struct Suite {
    // Declared first so they are dropped (killed) before the bus in `fixture`.
    pub web: WebDaemon,
    pub scraper: DaemonProcess,
    pub workers: Vec<DaemonProcess>,
    pub monitor: DaemonProcess,
    pub fixture: SuiteFixture,
}

/// How many ingest workers [`Suite::start`] runs (and `[ingest] workers` says).
pub const SUITE_WORKERS: usize = 2;

impl Suite {
    /// Writes the configuration, starts every daemon and waits until each one says it is
    /// ready: the monitor has finished its start reconcile, the workers and the scraper have
    /// logged `ready`, and sluice-web answers on the bus with its listen address.
    pub fn start() -> Suite {
        Suite::start_with("", &[])
    }

    /// [`Suite::start`] with `extra` appended to the configuration (whole tables, such as a
    /// second `[[watch]]`; `{root}` in it becomes the state directory) and `folders` created
    /// in the state directory before anything starts.
    pub fn start_with(extra: &str, folders: &[&str]) -> Suite {
        Suite::start_configured("", extra, folders)
    }

    /// [`Suite::start_with`] with `web_keys` added to the `[web]` table (e.g. a `base_path`).
    pub fn start_configured(web_keys: &str, extra: &str, folders: &[&str]) -> Suite {
        let fixture = SuiteFixture::for_whole_suite_configured(web_keys, extra);
        for folder in folders {
            std::fs::create_dir_all(fixture.directory.path().join(folder)).expect("a folder");
        }
        // Everything is spawned before anything is waited on: the start-ups overlap.
        let mut monitor = fixture.start_daemon("sluice-monitor", &[], "monitor.log");
        let mut workers: Vec<DaemonProcess> = (1..=SUITE_WORKERS)
            .map(|instance| {
                let instance = instance.to_string();
                fixture.start_daemon(
                    "sluice-ingest-worker",
                    &["--instance", &instance],
                    &format!("worker-{instance}.log"),
                )
            })
            .collect();
        let mut scraper = fixture.start_daemon("sluice-scraper", &[], "scraper.log");
        let web = WebDaemon::start(&fixture);
        monitor.wait_for_log_lines(
            &["reconcile walk finished", "reason=\"start\""],
            1,
            DEADLINE,
        );
        for worker in &mut workers {
            worker.wait_for_log_lines(&["ready: claiming"], 1, DEADLINE);
        }
        scraper.wait_for_log_lines(&["ready", "staging="], 1, DEADLINE);
        Suite {
            web,
            scraper,
            workers,
            monitor,
            fixture,
        }
    }

    pub fn root(&self) -> &Path {
        self.fixture.directory.path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    pub fn staging(&self) -> PathBuf {
        self.root().join("staging")
    }

    pub fn library(&self) -> PathBuf {
        self.root().join("library")
    }

    /// `GET` on sluice-web with the harness's read token; status and JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_result(
            http_agent()
                .get(format!("{}{path}", self.web.origin))
                .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
                .call(),
        )
    }

    /// `POST` of a JSON body to sluice-web with the harness token.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        http_result(
            http_agent()
                .post(format!("{}{path}", self.web.origin))
                .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    /// Runs `sluicectl` with the suite's configuration in `SLUICE_CONFIG`.
    pub fn sluicectl(&self, arguments: &[&str]) -> Output {
        Command::new(binary_path("sluicectl"))
            .args(arguments)
            .env("SLUICE_CONFIG", &self.fixture.config_path)
            .stdin(Stdio::null())
            .output()
            .expect("run sluicectl")
    }

    /// Every file row the monitor recorded, oldest first.
    pub fn files(&self) -> Vec<sluice_core::store::FileRecord> {
        let page = self
            .fixture
            .store()
            .list_files(
                &sluice_core::store::FileFilter::default(),
                sluice_core::store::PageRequest {
                    before_id: None,
                    limit: 1000,
                },
            )
            .expect("list files");
        let mut files = page.items;
        files.sort_by_key(|file| file.id);
        files
    }

    /// Every daemon's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut logs = format!("--- monitor\n{}", self.monitor.log());
        for (index, worker) in self.workers.iter().enumerate() {
            logs.push_str(&format!("--- worker {}\n{}", index + 1, worker.log()));
        }
        logs.push_str(&format!("--- scraper\n{}", self.scraper.log()));
        logs.push_str(&format!("--- web\n{}", self.web.process.log()));
        logs
    }
}

impl SuiteFixture {
    /// A fixture whose configuration serves every daemon (see [`Suite`]).
    pub fn for_whole_suite() -> SuiteFixture {
        SuiteFixture::for_whole_suite_with("")
    }

    /// [`SuiteFixture::for_whole_suite`] with `extra` appended to the configuration (`{root}`
    /// in it becomes the state directory).
    pub fn for_whole_suite_with(extra: &str) -> SuiteFixture {
        SuiteFixture::for_whole_suite_configured("", extra)
    }

    /// [`SuiteFixture::for_whole_suite_with`] with `web_keys` added to the `[web]` table.
    pub fn for_whole_suite_configured(web_keys: &str, extra: &str) -> SuiteFixture {
        SuiteFixture::with_config(|root, address| {
            let extra = extra.replace("{root}", &root.display().to_string());
            format!(
                r#"[store]
path = "{root}/sluice.db"
durability = "normal"
busy_timeout = "30s"

[bus]
address = "{address}"

[service]
status_interval = "200ms"
stop_timeout = "5s"

[web]
listen = "127.0.0.1:0"
token_file = "{root}/api-token"
read_token_file = "{root}/read-token"
{web_keys}

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"
workers = {SUITE_WORKERS}

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
# The HTTP fixture listens on 127.0.0.1.
allow_private_addresses = true
politeness_delay = "0s"
progress_interval = "200ms"

{extra}
"#,
                root = root.display(),
            )
        })
    }

    /// Starts daemon `name` with this fixture's configuration in `SLUICE_CONFIG`, logging at
    /// `info` into `log_name` inside the state directory. Does not wait for it.
    pub fn start_daemon(&self, name: &str, arguments: &[&str], log_name: &str) -> DaemonProcess {
        let mut command = Command::new(binary_path(name));
        command
            .args(arguments)
            .env("SLUICE_CONFIG", &self.config_path);
        DaemonProcess::start(command, &self.directory.path().join(log_name), "info")
    }
}

/// A proxy for sluice-scraper's `org.sluice.Scraper1` on the bus at `address`, reading every
/// property afresh.
pub async fn scraper_proxy(
    address: &str,
) -> anyhow::Result<sluice_core::bus::ScraperProxy<'static>> {
    let connection = zbus::connection::Builder::address(address).build().await?;
    Ok(sluice_core::bus::ScraperProxy::builder(&connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// Starts sluice-scraper with the configuration at `config` (whose bus is `bus_address`) and
/// waits until its `State` says `running`.
pub async fn start_scraper(config: &Path, bus_address: &str) -> anyhow::Result<DaemonProcess> {
    start_scraper_with(config, bus_address, None).await
}

/// [`start_scraper`] with a notify socket and `WATCHDOG_USEC` (the watchdog timeout systemd
/// would give it), so a test can watch its pings in [`DaemonProcess::notifications`].
pub async fn start_watched_scraper(
    config: &Path,
    bus_address: &str,
    watchdog: Duration,
) -> anyhow::Result<DaemonProcess> {
    start_scraper_with(config, bus_address, Some(watchdog)).await
}

async fn start_scraper_with(
    config: &Path,
    bus_address: &str,
    watchdog: Option<Duration>,
) -> anyhow::Result<DaemonProcess> {
    let mut command = Command::new(binary_path("sluice-scraper"));
    command
        .arg("--config")
        .arg(config)
        .env("SLUICE_LOG", "debug");
    let mut options = SpawnOptions::named("sluice-scraper");
    if let Some(watchdog) = watchdog {
        command.env("WATCHDOG_USEC", watchdog.as_micros().to_string());
        options = options.notify();
    }
    let mut process = DaemonProcess::spawn(&mut command, options)?;
    let proxy = scraper_proxy(bus_address).await?;
    let started = std::time::Instant::now();
    loop {
        if proxy.state().await.is_ok_and(|state| state == "running") {
            return Ok(process);
        }
        if !process.is_running() {
            anyhow::bail!("sluice-scraper exited: {}", process.log());
        }
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "never running: {}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
