//! sluice-web under a flood of connections, with the open-file limit its unit sets: event
//! streams beyond `[web] max_event_streams` are refused with 503, connections that send
//! nothing are closed, slots and files come back when clients leave, `/healthz` and the API
//! keep answering, and memory grows by a bounded amount per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{
    DEADLINE, SuiteFixture, WEB_TEST_TOKEN, WebDaemon, http_agent, http_result, skip, wait_every,
    wait_until, workspace_root,
};

/// The idle connections of the review's attack ("10,000 idle connections").
const IDLE_CONNECTIONS: u64 = 10_000;

/// Files this test process needs besides its connections: the other tests of this binary run
/// beside it, each with its files, pipes and child processes.
const OTHER_FILES_OF_THIS_PROCESS: u64 = 1024;

/// Files sluice-web keeps for itself (`sluice_web`'s `RESERVED_FILES`): connections beyond
/// what the rest of its limit holds wait in the backlog instead of being served.
const FILES_SLUICE_WEB_KEEPS: u64 = 2048;

/// A generous bound on the memory one connection may cost sluice-web. Measured on the debug
/// build the tests run (2 cores, glibc malloc): about 11 KB per open event stream and 10 KB
/// per idle connection, almost all of it actix's read and write buffers of the connection;
/// the bound is six times that, so a slower or differently configured machine stays under it
/// while a leak of a few pages per connection does not.
const MEMORY_BOUND_PER_CONNECTION: u64 = 64 * 1024;

#[test]
fn ten_thousand_idle_connections_and_every_stream_slot_taken_leave_healthz_and_the_api_answering() {
    let unit_limit = unit_open_file_limit();
    // sluice-web inherits the limit, as systemd gives it the unit's.
    let limit = set_open_file_limit(unit_limit);
    let streams = u64::from(sluice_core::config::defaults().web.max_event_streams);
    let idle = IDLE_CONNECTIONS.min(
        limit.saturating_sub(streams + OTHER_FILES_OF_THIS_PROCESS.max(FILES_SLUICE_WEB_KEEPS)),
    );
    if idle < IDLE_CONNECTIONS / 10 {
        skip(&format!(
            "needs an open-file limit of {unit_limit} (LimitNOFILE= of sluice-web.service) for \
             {streams} streams and {IDLE_CONNECTIONS} idle connections; only {limit} is allowed here"
        ));
        return;
    }
    if idle < IDLE_CONNECTIONS {
        eprintln!(
            "note: the open-file limit here is {limit}, not the unit's {unit_limit}: testing with \
             {idle} idle connections instead of {IDLE_CONNECTIONS}"
        );
    }

    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let pid = daemon.process.pid().as_raw();
    for _ in 0..20 {
        assert_eq!(get(&daemon, "/api/jobs").0, 200);
    }
    let baseline = memory_kib(pid, "VmRSS");
    let files_at_start = open_files(pid);

    // Every slot taken.
    let mut open: Vec<TcpStream> = (0..streams)
        .map(|index| match try_open_stream(daemon.address) {
            StreamAttempt::Open(stream) => stream,
            StreamAttempt::Refused(refusal) => {
                panic!("stream {index} of {streams} was refused: {refusal:?}")
            }
        })
        .collect();
    let with_streams = memory_kib(pid, "VmRSS");
    let files_with_streams = open_files(pid);
    eprintln!(
        "{streams} event streams: RSS {baseline} -> {with_streams} KiB, {} bytes per stream",
        with_streams.saturating_sub(baseline) * 1024 / streams
    );
    assert_refused(try_open_stream(daemon.address));

    // The flood: connections that never send a byte, all held open by this process.
    let mut idle_connections: Vec<TcpStream> = (0..idle)
        .map(|index| {
            TcpStream::connect(daemon.address)
                .unwrap_or_else(|error| panic!("idle connection {index} of {idle}: {error}"))
        })
        .collect();
    let (status, body) = get(&daemon, "/healthz");
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("alive")),
        "{body}"
    );
    let (status, body) = get(&daemon, "/api/jobs");
    assert_eq!(status, 200, "{body}");
    assert_refused(try_open_stream(daemon.address));

    let peak = memory_kib(pid, "VmHWM");
    let connections = streams + idle;
    eprintln!(
        "{idle} idle connections on top: peak RSS {peak} KiB, about {} bytes per idle connection",
        peak.saturating_sub(with_streams) * 1024 / idle
    );
    assert!(
        (peak.saturating_sub(baseline)) * 1024 <= connections * MEMORY_BOUND_PER_CONNECTION,
        "{connections} connections took sluice-web from {baseline} to {peak} KiB, more than \
         {MEMORY_BOUND_PER_CONNECTION} bytes each"
    );

    // sluice-web closes every connection that sent nothing (after its request timeout), so
    // its files come back although this process still holds its ends.
    for connection in &idle_connections {
        connection.set_nonblocking(true).expect("non-blocking");
    }
    let all_closed = wait_every(std::time::Duration::from_millis(100), DEADLINE, || {
        idle_connections.retain_mut(|connection| !closed_by_peer(connection));
        idle_connections.is_empty()
    });
    assert!(
        all_closed,
        "{} of {idle} idle connections are still open after {DEADLINE:?}",
        idle_connections.len()
    );
    let files_returned = wait_until(DEADLINE, || open_files(pid) <= files_with_streams + 16);
    assert!(
        files_returned,
        "sluice-web holds {} files, {files_with_streams} before the idle connections",
        open_files(pid)
    );

    // Clients leave: every slot is free again.
    open.clear();
    let released = wait_until(DEADLINE, || open_files(pid) <= files_at_start + 16);
    assert!(
        released,
        "sluice-web still holds {} files after the streams closed ({files_at_start} before)",
        open_files(pid)
    );
    open = (0..streams)
        .map(|index| match try_open_stream(daemon.address) {
            StreamAttempt::Open(stream) => stream,
            StreamAttempt::Refused(refusal) => {
                panic!("stream {index} was refused after every stream closed: {refusal:?}")
            }
        })
        .collect();
    assert_refused(try_open_stream(daemon.address));
    drop(open);
}

#[test]
fn a_reload_changes_the_event_stream_limit_for_new_streams() {
    let fixture = SuiteFixture::new("max_event_streams = 1", "");
    let daemon = WebDaemon::start(&fixture);
    let StreamAttempt::Open(_first) = try_open_stream(daemon.address) else {
        panic!("the first stream was refused");
    };
    assert_refused(try_open_stream(daemon.address));

    let config = std::fs::read_to_string(&fixture.config_path).expect("read the config");
    let raised = config.replace("max_event_streams = 1\n", "max_event_streams = 2\n");
    assert_ne!(raised, config);
    std::fs::write(&fixture.config_path, raised).expect("write the config");
    daemon.process.signal(Signal::SIGHUP).expect("send SIGHUP");
    let mut opened = Vec::new();
    let reloaded = wait_until(DEADLINE, || match try_open_stream(daemon.address) {
        StreamAttempt::Open(stream) => {
            opened.push(stream);
            true
        }
        StreamAttempt::Refused(_) => false,
    });
    assert!(
        reloaded,
        "the raised limit never took effect: {}",
        daemon.process.log()
    );
    // The first stream and the second hold both slots.
    assert_refused(try_open_stream(daemon.address));
    assert_eq!(opened.len(), 1);
}

/// What `GET /api/events` gave: an open stream past its greeting, or a refusal.
enum StreamAttempt {
    Open(TcpStream),
    Refused(Refusal),
}

#[derive(Debug)]
struct Refusal {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// Opens an event stream with plain HTTP/1.1 (so the connection is exactly one open file on
/// each side), with the harness token as every API request will need.
fn try_open_stream(address: SocketAddr) -> StreamAttempt {
    let mut stream = TcpStream::connect(address).expect("connect to sluice-web");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {WEB_TEST_TOKEN}\r\n\r\n"
    )
    .expect("send the request");
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let read = stream.read(&mut buffer).expect("read the answer");
        assert!(
            read > 0,
            "sluice-web closed the connection after {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received);
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        if status == 200 {
            assert!(head.contains("text/event-stream"), "{head}");
            if rest.contains(": connected") {
                return StreamAttempt::Open(stream);
            }
            continue;
        }
        let length: usize = header(head, "content-length")
            .and_then(|length| length.parse().ok())
            .unwrap_or_else(|| panic!("a refusal without Content-Length: {head}"));
        if rest.len() >= length {
            return StreamAttempt::Refused(Refusal {
                status,
                retry_after: header(head, "retry-after"),
                body: serde_json::from_str(&rest[..length])
                    .unwrap_or_else(|_| Value::String(rest.to_owned())),
            });
        }
    }
}

/// A stream beyond the limit: 503 with the API's JSON error and a `Retry-After`.
fn assert_refused(attempt: StreamAttempt) {
    let StreamAttempt::Refused(refusal) = attempt else {
        panic!("a stream beyond [web] max_event_streams was opened");
    };
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(refusal.body["error"]["code"], "unavailable", "{refusal:?}");
    assert!(
        refusal.body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("max_event_streams")),
        "{refusal:?}"
    );
    let retry_after = refusal.retry_after.as_deref().unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|seconds| seconds > 0),
        "Retry-After {retry_after:?}: {refusal:?}"
    );
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// `GET` with the harness token.
fn get(daemon: &WebDaemon, path: &str) -> (u16, Value) {
    http_result(
        http_agent()
            .get(format!("{}{path}", daemon.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .call(),
    )
}

/// Whether sluice-web has closed this (non-blocking) connection: its answer, if any, is read
/// and then the end.
fn closed_by_peer(connection: &mut TcpStream) -> bool {
    let mut buffer = [0; 1024];
    loop {
        match connection.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            // A reset is a close too.
            Err(_) => return true,
        }
    }
}

/// `LimitNOFILE=` of units/sluice-web.service.
fn unit_open_file_limit() -> u64 {
    let unit = workspace_root().join("units/sluice-web.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    text.lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} sets no numeric LimitNOFILE=", unit.display()))
}

/// Sets this process's open-file limit to `wanted`, raising the hard limit when it is lower
/// and that is allowed (root with CAP_SYS_RESOURCE); processes started afterwards inherit it.
/// Returns the limit in effect: `wanted`, or the hard limit when it cannot be raised.
fn set_open_file_limit(wanted: u64) -> u64 {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read the open-file limit");
    let set = if hard >= wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)
    } else {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted)
    };
    if set.is_ok() {
        return wanted;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the soft limit to the hard one");
    hard
}

/// A memory figure of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
fn memory_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_files(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the open files")
        .count() as u64
}

/// Issue 9's "10,000 concurrent waiters": clients that each wait on the same job with
/// `?wait=` hold a connection and a registration, no thread; `/healthz` and the API keep
/// answering while they wait, the memory they cost stays within the per-connection bound, and
/// every one of them is answered with the job's outcome as soon as it ends.
#[test]
fn ten_thousand_clients_waiting_on_one_job_are_all_answered_when_it_ends() {
    const WAITERS: u64 = 10_000;
    let unit_limit = unit_open_file_limit();
    let limit = set_open_file_limit(unit_limit);
    let waiters =
        WAITERS.min(limit.saturating_sub(OTHER_FILES_OF_THIS_PROCESS.max(FILES_SLUICE_WEB_KEEPS)));
    if waiters < WAITERS / 10 {
        skip(&format!(
            "needs an open-file limit of {unit_limit} for {WAITERS} waiting clients; only \
             {limit} is allowed here"
        ));
        return;
    }
    let fixture = SuiteFixture::new("", "");
    let daemon = WebDaemon::start(&fixture);
    let pid = daemon.process.pid().as_raw();
    // No worker runs: the job waits until it is cancelled.
    let job_id = fixture.enqueue("noop");
    for _ in 0..20 {
        assert_eq!(get(&daemon, "/api/jobs").0, 200);
    }
    let baseline = memory_kib(pid, "VmRSS");
    let files_at_start = open_files(pid);
    let request = format!(
        "GET /api/jobs/{job_id}?wait=10m HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {WEB_TEST_TOKEN}\r\n\r\n"
    );
    let mut clients: Vec<TcpStream> = (0..waiters)
        .map(|index| {
            let mut stream = TcpStream::connect(daemon.address)
                .unwrap_or_else(|error| panic!("waiting client {index} of {waiters}: {error}"));
            stream
                .write_all(request.as_bytes())
                .expect("send the request");
            stream
        })
        .collect();
    // Every request has been read: sluice-web holds a file per client and has answered none.
    assert!(
        wait_until(DEADLINE, || open_files(pid) >= files_at_start + waiters),
        "sluice-web holds {} files for {waiters} clients",
        open_files(pid)
    );
    let (status, body) = get(&daemon, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, job) = get(&daemon, &format!("/api/jobs/{job_id}"));
    assert_eq!(
        (status, &job["state"]),
        (200, &Value::from("queued")),
        "{job}"
    );
    let with_waiters = memory_kib(pid, "VmRSS");
    eprintln!(
        "{waiters} waiting clients: RSS {baseline} -> {with_waiters} KiB, about {} bytes each",
        with_waiters.saturating_sub(baseline) * 1024 / waiters
    );
    assert!(
        with_waiters.saturating_sub(baseline) * 1024 <= waiters * MEMORY_BOUND_PER_CONNECTION,
        "{waiters} waiting clients took sluice-web from {baseline} to {with_waiters} KiB"
    );
    for client in &clients {
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(1)))
            .expect("read timeout");
    }
    let mut byte = [0u8; 1];
    assert!(
        clients[..100]
            .iter_mut()
            .all(|client| matches!(client.read(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock || error.kind() == ErrorKind::TimedOut)),
        "a waiting client was answered before its job ended"
    );

    let (status, body) = http_result(
        http_agent()
            .post(format!("{}/api/jobs/{job_id}/cancel", daemon.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .send_empty(),
    );
    assert_eq!(status, 200, "{body}");
    for (index, client) in clients.iter_mut().enumerate() {
        client
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|window| window == b"\r\n\r\n")
            || !String::from_utf8_lossy(&answer).contains("cancelled")
        {
            let read = client
                .read(&mut chunk)
                .unwrap_or_else(|error| panic!("client {index}: {error}"));
            assert!(read > 0, "client {index}: closed without an answer");
            answer.extend_from_slice(&chunk[..read]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "client {index}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(clients);
    assert!(
        wait_until(DEADLINE, || open_files(pid) <= files_at_start + 16),
        "sluice-web still holds {} files after the clients left",
        open_files(pid)
    );
}
