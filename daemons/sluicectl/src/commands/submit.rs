//! `sluicectl submit FILE… [--wait[=DURATION]]` (uploads through sluice-web, the one way a
//! file reaches the inbox from outside) and `sluicectl jobs watch ID` (a job's log, followed
//! from the database until the job ends).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::bus::{self, FORWARDING_GROUP, FORWARDING_UNIT, WEB_BUS_NAME, WebProxy};
use sluice_core::policy::{check_file_name_bytes, check_wait};
use sluice_core::store::jobs::{JobLogEntry, JobLogEvent, JobState};
use zbus::names::BusName;
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_json, print_line, print_table};

/// How often `jobs watch` reads the job's log.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// An HTTP client for sluice-web: its address from `[web] listen`, the admin token from
/// `[web] token_file` (root-only in the package: the token is a secret of sluice-web and of
/// the administrator who hands it to HTTP clients, not of everyone in group sluice).
struct WebClient {
    origin: String,
    base_path: String,
    token: String,
    agent: ureq::Agent,
}

impl WebClient {
    fn new(context: &Context) -> Result<WebClient, Failure> {
        let web = &context.config.web;
        let token = std::fs::read_to_string(&web.token_file).map_err(|error| {
            Failure::new(
                exit::ERROR,
                format!(
                    "cannot read the API token {} ([web] token_file): {error}; the package \
                     makes it readable by root only (sluice-web gets it as a systemd \
                     credential), so submitting needs root: sudo sluicectl submit …",
                    web.token_file.display()
                ),
            )
        })?;
        // Where sluice-web really listens (with sluice-web.socket, systemd's socket, whatever
        // [web] listen says), as it says on the bus, once the announcer is known to be
        // sluice-web; [web] listen when the bus has no answer.
        let bus_address = context.config.bus.address.clone();
        let configured = web.listen;
        let announced = match context.block_on(verified_web_address(&bus_address, configured)) {
            Ok(verified) => verified.map_err(|reason| {
                Failure::new(exit::ERROR, format!("not sending the API token: {reason}"))
            })?,
            // No answer from the bus in time: as without a bus.
            Err(_) => None,
        };
        let address = loopback_if_unspecified(announced.unwrap_or(web.listen));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(WebClient {
            origin: format!("http://{address}"),
            base_path: if web.base_path == "/" {
                String::new()
            } else {
                web.base_path.clone()
            },
            token: token.trim().to_owned(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.origin, self.base_path)
    }

    /// The answer's JSON, or the failure its status stands for.
    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), Failure> {
        let mut response = response.map_err(|error| {
            Failure::new(
                exit::DAEMON_UNAVAILABLE,
                format!("sluice-web does not answer on {}: {error}", self.origin),
            )
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status < 400 {
            return Ok((status, body));
        }
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        let exit_status = match status {
            400 | 413 | 415 => exit::INVALID_ARGUMENT,
            404 => exit::NOT_FOUND,
            // The ingest queue is at [ingest] max_pending; nothing was stored.
            429 => exit::QUEUE_FULL,
            503 => exit::DAEMON_UNAVAILABLE,
            _ => exit::ERROR,
        };
        let mut failure = Failure::new(exit_status, format!("sluice-web refused: {message}"));
        failure.reason = body["error"]["reason"].as_str().and_then(|reason| {
            sluice_core::policy::CODES
                .into_iter()
                .find(|code| *code == reason)
        });
        Err(failure)
    }
}

/// The address sluice-web announces on the bus (`org.sluice.Web1.ListenAddress`), if the
/// announcer may be trusted with the token sent there; `None` when the bus names no address
/// (no bus, no owner, no valid answer), so `[web] listen` is used as without a bus.
///
/// Whoever owns `org.sluice.Web1` announces the address, and `sudo sluicectl submit` sends the
/// admin token to it: a process that took the name while sluice-web was down (the daemons'
/// own user, a processor inside a worker) would receive the token. So the announcement is
/// believed only from a connection made with group [`FORWARDING_GROUP`], which
/// `sluice-web.service` alone gets (`SupplementaryGroups=`; dbus-daemon records a
/// connection's groups when it connects, so unlike the owner's PID, which could be recycled,
/// no other process can come to hold it), or when it names the loopback address
/// `[web] listen` configures, where the token would go anyway (a developer's machine, the
/// tests, a host without the group). Otherwise the reason is returned and nothing is sent.
async fn verified_web_address(
    bus_address: &bus::BusAddress,
    configured: SocketAddr,
) -> Result<Option<SocketAddr>, String> {
    let Ok(connection) = bus::connect(bus_address).await else {
        return Ok(None);
    };
    let Ok(dbus) = zbus::fdo::DBusProxy::new(&connection).await else {
        return Ok(None);
    };
    let name = BusName::from_static_str(WEB_BUS_NAME).map_err(|error| error.to_string())?;
    let Ok(owner) = dbus.get_name_owner(name).await else {
        return Ok(None);
    };
    // Read from the unique name checked below, so a new owner cannot answer in between.
    let announced = match WebProxy::builder(&connection)
        .destination(owner.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
    {
        Ok(proxy) => proxy.listen_address().await.ok(),
        Err(_) => None,
    };
    // "127.0.0.1:8080", or "127.0.0.1:8080 (socket-activated)" when systemd passed the socket.
    let Some(announced) = announced.and_then(|text| {
        text.split_whitespace()
            .next()
            .and_then(|address| address.parse::<SocketAddr>().ok())
    }) else {
        return Ok(None);
    };
    let forwarding_gid = bus::lookup_group_id(FORWARDING_GROUP);
    let groups = match dbus
        .get_connection_credentials(BusName::from(owner.clone()))
        .await
    {
        Ok(credentials) => Ok(credentials.unix_group_ids().cloned().unwrap_or_default()),
        Err(error) => Err(format!("the bus does not name its credentials: {error}")),
    };
    if let (Some(gid), Ok(groups)) = (forwarding_gid, &groups)
        && groups.contains(&gid)
    {
        return Ok(Some(announced));
    }
    let announced_here = loopback_if_unspecified(announced);
    if announced_here.ip().is_loopback() && announced_here == loopback_if_unspecified(configured) {
        return Ok(Some(announced));
    }
    let who = match (forwarding_gid, groups) {
        (None, _) => format!("group {FORWARDING_GROUP} does not exist on this host"),
        (Some(_), Ok(_)) => format!("its connection is not in group {FORWARDING_GROUP}"),
        (Some(_), Err(reason)) => reason,
    };
    Err(format!(
        "{WEB_BUS_NAME} is owned by {} ({who}), which announces {announced}; only \
         {FORWARDING_UNIT} may name another address than [web] listen ({configured})",
        owner.as_str()
    ))
}

/// `address` with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback of its family:
/// where a client on this machine reaches a server listening on every address.
fn loopback_if_unspecified(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    address
}

impl Context {
    pub(super) fn submit(&self, files: Vec<PathBuf>, wait: Option<String>) -> Result<(), Failure> {
        let wait = match wait {
            None => None,
            // `--wait` alone: as long as sluice-web allows.
            Some(text) if text.is_empty() => Some(self.config.web.max_wait),
            Some(text) => Some(
                check_wait(&text, self.config.web.max_wait)
                    .map_err(|error| Failure::invalid(format!("--wait: {}", error.message())))?,
            ),
        };
        // Every name is checked before anything is sent, so a bad one stops nothing halfway.
        let mut named = Vec::with_capacity(files.len());
        for path in &files {
            named.push((path, upload_name(path)?));
        }
        let client = WebClient::new(self)?;
        let mut submitted = Vec::new();
        for (path, name) in named {
            let file = File::open(path).map_err(|error| {
                Failure::invalid(format!("cannot read {}: {error}", path.display()))
            })?;
            let query: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("name", &name)
                .finish();
            let response = client
                .agent
                .post(client.url(&format!("/api/documents?{query}")))
                .header("Authorization", format!("Bearer {}", client.token))
                .header("Content-Type", "application/octet-stream")
                .send(ureq::SendBody::from_owned_reader(file));
            let (_, body) = client.answer(response)?;
            let upload = body["uploads"][0].clone();
            submitted.push(json!({
                "file": path.display().to_string(),
                "job_id": upload["job_id"],
                "stored_as": upload["stored_as"],
            }));
        }
        let mut outcome = exit::OK;
        if let Some(wait) = wait {
            let deadline = Instant::now() + wait;
            for entry in &mut submitted {
                let job_id = entry["job_id"].as_i64().unwrap_or_default();
                let left = deadline.saturating_duration_since(Instant::now());
                let response = client
                    .agent
                    .get(client.url(&format!("/api/jobs/{job_id}?wait={}ms", left.as_millis())))
                    .header("Authorization", format!("Bearer {}", client.token))
                    .call();
                let (status, job) = client.answer(response)?;
                let state = job["state"].as_str().unwrap_or_default().to_owned();
                outcome = outcome.max(match (status, state.as_str()) {
                    (_, "succeeded") => exit::OK,
                    (202, _) => exit::STILL_RUNNING,
                    _ => exit::JOB_FAILED,
                });
                entry["job"] = job;
            }
        }
        if self.json {
            print_json(&Value::Array(submitted));
        } else {
            let rows: Vec<Vec<String>> = submitted
                .iter()
                .map(|entry| {
                    let job = &entry["job"];
                    vec![
                        entry["file"].as_str().unwrap_or_default().to_owned(),
                        entry["job_id"].to_string(),
                        job["state"].as_str().unwrap_or("queued").to_owned(),
                        job["document"]["id"]
                            .as_i64()
                            .map(|id| id.to_string())
                            .unwrap_or_else(|| "-".into()),
                        job["error"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            print_table(&["FILE", "JOB", "STATE", "DOCUMENT", "ERROR"], &rows);
        }
        match outcome {
            exit::OK => Ok(()),
            exit::STILL_RUNNING => Err(Failure::new(
                exit::STILL_RUNNING,
                "a job was still running when the wait ended (sluicectl jobs watch ID follows it)",
            )),
            status => Err(Failure::new(status, "a job did not succeed (see ERROR)")),
        }
    }

    pub(super) fn jobs_watch(&self, id: i64) -> Result<(), Failure> {
        let store = self.open_store()?;
        let terminal = std::io::stdout().is_terminal() && !self.json;
        let mut after = None;
        let mut bar_shown = false;
        loop {
            // The job first, then its log: a job that ended before its log was read has its
            // final transition in what is read, so the last line is always the outcome.
            let job = store.get_job(id)?;
            let entries = store.job_log(id, after, sluice_core::store::jobs::MAX_LOG_PAGE)?;
            for entry in &entries {
                after = Some(entry.id);
                if self.json {
                    let mut line = serde_json::to_value(entry).unwrap_or_default();
                    line["job_id"] = id.into();
                    line["event"] = entry.name().into();
                    print_line(&line.to_string());
                    continue;
                }
                match &entry.what {
                    JobLogEvent::Progress { fraction, message } if terminal => {
                        draw_bar(*fraction, message);
                        bar_shown = true;
                    }
                    _ => {
                        if bar_shown {
                            // End the bar's line before a plain one.
                            print_line("");
                            bar_shown = false;
                        }
                        print_line(&describe(entry));
                    }
                }
            }
            let caught_up = entries.len() < sluice_core::store::jobs::MAX_LOG_PAGE as usize;
            if job.state.is_terminal() && caught_up {
                if bar_shown {
                    print_line("");
                }
                return match job.state {
                    JobState::Succeeded => Ok(()),
                    state => Err(Failure::new(
                        exit::JOB_FAILED,
                        format!(
                            "job {id} {state}{}",
                            job.error
                                .map(|error| format!(": {error}"))
                                .unwrap_or_default()
                        ),
                    )),
                };
            }
            if caught_up {
                std::thread::sleep(WATCH_INTERVAL);
            }
        }
    }
}

/// The name a file is uploaded under: its own, checked by the policy the web applies.
fn upload_name(path: &Path) -> Result<String, Failure> {
    let name = path
        .file_name()
        .ok_or_else(|| Failure::invalid(format!("{} names no file", path.display())))?;
    use std::os::unix::ffi::OsStrExt;
    Ok(check_file_name_bytes("file name", name.as_bytes())?.to_owned())
}

/// One log entry as a line for people.
fn describe(entry: &JobLogEntry) -> String {
    let at = format_time(entry.at_ms);
    match &entry.what {
        JobLogEvent::State {
            to,
            attempt,
            worker,
            error,
            ..
        } => {
            let mut line = format!("{at} {to}");
            if *to == JobState::Running {
                line.push_str(&format!(" (attempt {attempt}"));
                if let Some(worker) = worker {
                    line.push_str(&format!(", {worker}"));
                }
                line.push(')');
            }
            if let Some(error) = error {
                line.push_str(&format!(": {error}"));
            }
            line
        }
        JobLogEvent::Progress { fraction, message } => {
            format!("{at} {:.0}% {message}", fraction * 100.0)
        }
        JobLogEvent::Step { step } => format!("{at} step {step}"),
    }
}

fn draw_bar(fraction: f64, message: &str) {
    const WIDTH: usize = 30;
    let filled = ((fraction.clamp(0.0, 1.0) * WIDTH as f64).round() as usize).min(WIDTH);
    let mut stdout = std::io::stdout().lock();
    let _ = write!(
        stdout,
        "\r[{}{}] {:>3.0}% {}\x1b[K",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        fraction * 100.0,
        message.chars().take(60).collect::<String>()
    );
    let _ = stdout.flush();
}

/// `HH:MM:SS.mmm` in UTC: enough to follow one job.
fn format_time(at_ms: i64) -> String {
    let ms = at_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
