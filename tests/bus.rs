//! The D-Bus interfaces and the shipped bus policy, against a real private `dbus-daemon`, the
//! real `bus-fixture` process running as `_sluice`, and real callers (`busctl`, `gdbus`,
//! zbus proxies) running as root, as `nobody`, and as `nobody` in group `sluice`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use sluice_core::bus::{
    self, BusAddress, BusError, BusSetupError, CallerPolicy, DaemonState, IngestService,
    IngestStatus, MonitorProxy, MonitorService, MonitorStatus, ScraperProxy, ScraperService,
    ScraperStatus, WebProxy, WebService, WebStatus, ingest_proxy,
};
use zbus::{Connection, OwnedVariant, Variant};

use crate::support::{BusPolicy, Caller, DaemonProcess, PrivateBus, ensure_sluice_accounts};

const SIGNAL_DEADLINE: Duration = Duration::from_secs(10);

/// One mutating method call, in the form `gdbus call` takes it.
struct MutatingCall {
    destination: &'static str,
    path: &'static str,
    method: &'static str,
    arguments: &'static [&'static str],
}

/// Every mutating method, with arguments that are valid for the fixture.
const MUTATING_CALLS: &[MutatingCall] = &[
    MutatingCall {
        destination: "org.sluice.Monitor1",
        path: "/org/sluice/Monitor1",
        method: "org.sluice.Monitor1.Rescan",
        // GLib's byte string literal: the empty path with its NUL.
        arguments: &["b''"],
    },
    MutatingCall {
        destination: "org.sluice.Scraper1",
        path: "/org/sluice/Scraper1",
        method: "org.sluice.Scraper1.AddDownload",
        arguments: &["https://example.org/model.bin", "@a{sv} {}"],
    },
    MutatingCall {
        destination: "org.sluice.Scraper1",
        path: "/org/sluice/Scraper1",
        method: "org.sluice.Scraper1.CancelDownload",
        arguments: &["1"],
    },
    MutatingCall {
        destination: "org.sluice.Scraper1",
        path: "/org/sluice/Scraper1",
        method: "org.sluice.Scraper1.DeleteDownload",
        arguments: &["1"],
    },
    MutatingCall {
        destination: "org.sluice.Scraper1",
        path: "/org/sluice/Scraper1",
        method: "org.sluice.Scraper1.ScrapeNow",
        arguments: &["nightly"],
    },
    MutatingCall {
        destination: "org.sluice.Ingest1.Worker1",
        path: "/org/sluice/Ingest1/1",
        method: "org.sluice.Ingest1.CancelJob",
        arguments: &["42"],
    },
    MutatingCall {
        destination: "org.sluice.Web1",
        path: "/org/sluice/Web1",
        method: "org.sluice.Web1.CancelJob",
        arguments: &["43"],
    },
    MutatingCall {
        destination: "org.sluice.Web1",
        path: "/org/sluice/Web1",
        method: "org.sluice.Web1.RetryJob",
        arguments: &["44"],
    },
];

/// A private bus with the fixture serving every object as `_sluice`.
struct Setup {
    bus: PrivateBus,
    fixture: DaemonProcess,
    group_id: u32,
    user_id: u32,
    // The fixture binary copied where `_sluice` can execute it.
    _fixture_copy: tempfile::TempDir,
}

/// For the tests that need root: the fixture under the shipped policy, its bus address and a
/// runtime to talk to it; `None` without root.
fn shipped_fixture() -> anyhow::Result<Option<(Setup, String, tokio::runtime::Runtime)>> {
    if !crate::support::have_root() {
        return Ok(None);
    }
    let setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(Some((setup, address, runtime)))
}

fn start_fixture(policy: BusPolicy, extra_arguments: &[&str]) -> anyhow::Result<Setup> {
    let accounts = ensure_sluice_accounts()?;
    let bus = PrivateBus::start(policy)?;
    let (fixture_copy, fixture_path) = fixture_for_other_users()?;
    let fixture = spawn_fixture(&fixture_path, bus.address(), extra_arguments)?;
    Ok(Setup {
        bus,
        fixture,
        group_id: accounts.group_id,
        user_id: accounts.user_id,
        _fixture_copy: fixture_copy,
    })
}

fn spawn_fixture(
    fixture_path: &std::path::Path,
    address: &str,
    extra_arguments: &[&str],
) -> anyhow::Result<DaemonProcess> {
    let mut command = Caller::Sluice.command(fixture_path);
    // A long interval makes the rate limiter's drops deterministic for the signal test.
    command
        .args(["--address", address, "--progress-interval-ms", "3600000"])
        .args(extra_arguments);
    DaemonProcess::start_until_line(command, "ready")
}

/// The build directory may sit under a home that `_sluice` cannot enter; a copy in a
/// world-readable temporary directory can always be run.
///
/// The copy is made by `install` in its own process: a file written by this (multi-threaded)
/// process could be inherited, still open for writing, by a child another test forks at the
/// same moment, and executing it would then fail with ETXTBSY ("Text file busy").
fn fixture_for_other_users() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    copy_for_other_users(env!("CARGO_BIN_EXE_bus-fixture"), "bus-fixture")
}

/// A copy of the test program `binary` (named `name`) that any user can run.
fn copy_for_other_users(binary: &str, name: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().context("cannot make a directory for the fixture")?;
    std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755))?;
    let copy = directory.path().join(name);
    let status = std::process::Command::new("install")
        .args(["-m", "0755", binary])
        .arg(&copy)
        .status()
        .context("cannot run install (coreutils)")?;
    anyhow::ensure!(status.success(), "install could not copy {name}: {status}");
    Ok((directory, copy))
}

/// Runs `gdbus call` as `caller`; returns (succeeded, stdout + stderr).
fn gdbus_call(
    caller: Caller,
    address: &str,
    call: &MutatingCall,
) -> anyhow::Result<(bool, String)> {
    gdbus_call_with(caller, address, call, call.arguments)
}

/// Like [`gdbus_call`] with other arguments for the same method.
fn gdbus_call_with(
    caller: Caller,
    address: &str,
    call: &MutatingCall,
    call_arguments: &[&str],
) -> anyhow::Result<(bool, String)> {
    let mut arguments = vec![
        "call",
        "--address",
        address,
        "--dest",
        call.destination,
        "--object-path",
        call.path,
        "--method",
        call.method,
    ];
    arguments.extend_from_slice(call_arguments);
    let output = caller.run("gdbus", &arguments)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

fn busctl(caller: Caller, address: &str, arguments: &[&str]) -> anyhow::Result<(bool, String)> {
    let address_argument = format!("--address={address}");
    let mut all_arguments = vec![address_argument.as_str()];
    all_arguments.extend_from_slice(arguments);
    let output = caller.run("busctl", &all_arguments)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// `busctl introspect` rows as (name, type, signature, result) for members of `interface`.
fn introspected_members(output: &str) -> Vec<(String, String, String, String)> {
    output
        .lines()
        .filter(|line| line.starts_with('.'))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let column = |index: usize| columns.get(index).copied().unwrap_or("").to_owned();
            (column(0), column(1), column(2), column(3))
        })
        .collect()
}

/// One expected `busctl introspect` row: name, type, signature, result or value ("" = any).
type ExpectedMember = (&'static str, &'static str, &'static str, &'static str);

#[test]
fn introspection_lists_methods_signals_and_properties_with_their_types() -> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address();
    let group_id = setup.group_id;
    let expectations: &[(&str, &str, &str, &[ExpectedMember])] = &[
        (
            "org.sluice.Monitor1",
            "/org/sluice/Monitor1",
            "org.sluice.Monitor1",
            &[
                (".Rescan", "method", "ay", "t"),
                (".FileDetected", "signal", "aytt", "-"),
                (".State", "property", "s", "\"running\""),
                (".Status", "property", "s", ""),
                (".LastError", "property", "s", ""),
                (".WatchedPaths", "property", "aay", "2"),
                (".PollingPaths", "property", "aay", "0"),
                (".Durability", "property", "s", "\"full\""),
                (".FilesDetected", "property", "t", "0"),
                (".JobsQueued", "property", "t", "0"),
                (".FilesHeld", "property", "t", "0"),
            ],
        ),
        (
            "org.sluice.Scraper1",
            "/org/sluice/Scraper1",
            "org.sluice.Scraper1",
            &[
                (".AddDownload", "method", "sa{sv}", "tt"),
                (".CancelDownload", "method", "t", "-"),
                (".DeleteDownload", "method", "t", "-"),
                (".ScrapeNow", "method", "s", "t"),
                (".JobQueued", "signal", "st", "-"),
                (".JobStarted", "signal", "tss", "-"),
                (".JobProgress", "signal", "tds", "-"),
                (".JobFinished", "signal", "ts", "-"),
                (".DownloadProgress", "signal", "ttt", "-"),
                (".DownloadFinished", "signal", "tsay", "-"),
                (".SourceChecked", "signal", "sst", "-"),
                (".State", "property", "s", "\"running\""),
                (".Sources", "property", "as", "1"),
                // `ay` shows as its length: "/srv/sluice/staging" and the NUL.
                (".StagingPath", "property", "ay", "20"),
                (".DownloadsActive", "property", "u", "0"),
                (".DownloadsDone", "property", "t", "0"),
                (".DownloadsFailed", "property", "t", "0"),
                (".BytesDownloaded", "property", "t", "0"),
                (".SourceStates", "property", "a{s(ssxxttt)}", "0"),
            ],
        ),
        (
            "org.sluice.Ingest1.Worker1",
            "/org/sluice/Ingest1/1",
            "org.sluice.Ingest1",
            &[
                (".CancelJob", "method", "t", "-"),
                (".JobStarted", "signal", "tss", "-"),
                (".JobProgress", "signal", "tds", "-"),
                (".JobFinished", "signal", "ts", "-"),
                (".Instance", "property", "s", "\"1\""),
                (".CurrentJob", "property", "t", "42"),
                (".JobsDone", "property", "t", "0"),
                (".JobsFailed", "property", "t", "0"),
                (".Processors", "property", "as", "1"),
            ],
        ),
        (
            "org.sluice.Web1",
            "/org/sluice/Web1",
            "org.sluice.Web1",
            &[
                (".CancelJob", "method", "t", "s"),
                (".RetryJob", "method", "t", "-"),
                (".JobQueued", "signal", "st", "-"),
                (".JobFinished", "signal", "ts", "-"),
                (".ListenAddress", "property", "s", "\"127.0.0.1:8080\""),
                (".BasePath", "property", "s", "\"/\""),
                (".Workers", "property", "u", "2"),
                (".Durability", "property", "s", "\"full\""),
                (".RequestsServed", "property", "t", "0"),
                (".EventClients", "property", "u", "0"),
            ],
        ),
    ];
    for (destination, path, interface, rows) in expectations {
        // The values shown come from GetAll, which is for group sluice (introspection alone
        // is open to everyone: the policy matrix shows it).
        let (succeeded, output) = busctl(
            Caller::NobodyInGroup(group_id),
            address,
            &["introspect", destination, path, interface],
        )?;
        assert!(succeeded, "introspecting {destination} failed: {output}");
        let members = introspected_members(&output);
        for (name, kind, signature, result) in *rows {
            let row = members
                .iter()
                .find(|member| member.0 == *name)
                .unwrap_or_else(|| panic!("{interface} lacks {name}:\n{output}"));
            assert_eq!(
                (row.1.as_str(), row.2.as_str()),
                (*kind, *signature),
                "{interface}{name}"
            );
            if !result.is_empty() {
                assert_eq!(row.3, *result, "{interface}{name}");
            }
        }
    }
    Ok(())
}

#[test]
fn unprivileged_caller_is_refused_every_method_and_property_but_can_introspect()
-> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let mut setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address().to_owned();
    for call in MUTATING_CALLS {
        let (succeeded, output) = gdbus_call(Caller::Nobody, &address, call)?;
        assert!(!succeeded, "nobody could call {}: {output}", call.method);
        assert!(
            output.contains("org.freedesktop.DBus.Error.AccessDenied"),
            "{}: {output}",
            call.method
        );
    }
    // Writing a property is refused as well (there are no writable ones, but the policy
    // must not even deliver the call).
    let (succeeded, output) = busctl(
        Caller::Nobody,
        &address,
        &[
            "set-property",
            "org.sluice.Web1",
            "/org/sluice/Web1",
            "org.sluice.Web1",
            "Workers",
            "u",
            "9",
        ],
    )?;
    assert!(!succeeded, "nobody could set a property: {output}");
    assert!(output.contains("Access denied"), "{output}");

    // Properties name private files (WatchedPaths, StagingPath, LastError): reading them is
    // for root and group sluice only. Introspection and Peer.Ping stay open to everyone.
    let (succeeded, output) = busctl(
        Caller::Nobody,
        &address,
        &[
            "get-property",
            "org.sluice.Monitor1",
            "/org/sluice/Monitor1",
            "org.sluice.Monitor1",
            "WatchedPaths",
        ],
    )?;
    assert!(!succeeded && output.contains("Access denied"), "{output}");
    let (succeeded, output) = busctl(
        Caller::NobodyInGroup(setup.group_id),
        &address,
        &[
            "get-property",
            "org.sluice.Monitor1",
            "/org/sluice/Monitor1",
            "org.sluice.Monitor1",
            "WatchedPaths",
        ],
    )?;
    assert!(succeeded, "{output}");
    // Two byte strings, each the path's bytes and a NUL, as busctl prints `aay`.
    let as_busctl_prints = |path: &str| {
        let bytes: Vec<String> = path
            .bytes()
            .chain([0])
            .map(|byte| byte.to_string())
            .collect();
        format!("{} {}", bytes.len(), bytes.join(" "))
    };
    assert_eq!(
        output.trim(),
        format!(
            "aay 2 {} {}",
            as_busctl_prints("/srv/sluice/inbox"),
            as_busctl_prints("/srv/sluice/library")
        )
    );
    let (succeeded, output) = busctl(
        Caller::Nobody,
        &address,
        &[
            "call",
            "org.sluice.Scraper1",
            "/org/sluice/Scraper1",
            "org.freedesktop.DBus.Properties",
            "GetAll",
            "s",
            "org.sluice.Scraper1",
        ],
    )?;
    assert!(!succeeded && output.contains("Access denied"), "{output}");
    let (succeeded, output) = busctl(
        Caller::Nobody,
        &address,
        &[
            "introspect",
            "--xml-interface",
            "org.sluice.Scraper1",
            "/org/sluice/Scraper1",
        ],
    )?;
    assert!(succeeded, "{output}");
    let (succeeded, output) = busctl(
        Caller::Nobody,
        &address,
        &[
            "call",
            "org.sluice.Ingest1.Worker1",
            "/org/sluice/Ingest1/1",
            "org.freedesktop.DBus.Peer",
            "Ping",
        ],
    )?;
    assert!(succeeded, "{output}");
    assert!(setup.fixture.is_running(), "{}", setup.fixture.log());
    Ok(())
}

#[test]
fn the_daemon_refuses_unprivileged_callers_even_when_the_policy_lets_them_through()
-> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    // A bus that allows everything stands for a broken or missing policy file.
    let mut setup = start_fixture(BusPolicy::AllowEverything, &[])?;
    let address = setup.bus.address().to_owned();
    for call in MUTATING_CALLS {
        let (succeeded, output) = gdbus_call(Caller::Nobody, &address, call)?;
        assert!(!succeeded, "nobody could call {}: {output}", call.method);
        assert!(
            output.contains("org.freedesktop.DBus.Error.AccessDenied"),
            "{}: {output}",
            call.method
        );
    }
    // The group member still gets through the daemon's own check.
    let (succeeded, output) = gdbus_call(
        Caller::NobodyInGroup(setup.group_id),
        &address,
        &MUTATING_CALLS[0],
    )?;
    assert!(succeeded, "{output}");
    assert!(setup.fixture.is_running(), "{}", setup.fixture.log());
    Ok(())
}

/// Security review (medium, PID reuse): under systemd the daemons' own user may call
/// privileged methods only from sluice-web.service, which was decided by asking systemd for
/// the unit of the caller's PID, a PID that a process holding a bus connection could arrange
/// to be reused by sluice-web. Now it is decided by group `_sluice-web`, which only
/// sluice-web's unit gets and which dbus-daemon records when a connection is made. A
/// service with the policy of a daemon under systemd refuses `_sluice` without the group
/// (as the daemons' primary group `sluice`, as every other unit runs it), however its
/// process stands, and lets `_sluice` with the group through; outside systemd (no unit to
/// ask) the PID check let neither through. The refusal says why.
#[tokio::test]
async fn the_daemons_own_user_is_let_through_by_sluice_webs_group_not_by_its_process()
-> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let accounts = ensure_sluice_accounts()?;
    // The policy file would let _sluice call anyway: the daemon's own check is under test.
    let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
    let address = bus.address().to_owned();
    let daemon = bus::connect(&BusAddress::Address(address.clone())).await?;
    let policy = CallerPolicy::as_in_a_unit(
        accounts.user_id,
        Some(accounts.group_id),
        Some(accounts.forwarding_group_id),
    );
    let (_web, mut commands) = WebService::start(
        &daemon,
        policy,
        WebStatus::starting("127.0.0.1:8080", "/", 1, "full"),
    )
    .await?;
    let (reached_sender, mut reached) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            if let bus::WebCommand::RetryJob { job_id, reply } = command {
                let _ = reached_sender.send(job_id);
                let _ = reply.send(Ok(()));
            }
        }
    });
    let call_as = |caller: Caller| {
        let address = address.clone();
        tokio::task::spawn_blocking(move || {
            let retry = MutatingCall {
                destination: "org.sluice.Web1",
                path: "/org/sluice/Web1",
                method: "org.sluice.Web1.RetryJob",
                arguments: &["44"],
            };
            gdbus_call(caller, &address, &retry)
        })
    };

    for caller in [Caller::Sluice, Caller::SluiceInGroup(accounts.group_id)] {
        let (succeeded, output) = call_as(caller).await??;
        assert!(!succeeded, "{caller:?} was let through: {output}");
        assert!(
            output.contains("org.freedesktop.DBus.Error.AccessDenied")
                && output.contains(
                    "the daemons' own user may call it only from sluice-web.service (group \
                     _sluice-web)"
                )
                && output.contains("its connection lacks group _sluice-web"),
            "{caller:?}: {output}"
        );
    }
    assert!(
        reached.try_recv().is_err(),
        "a refused call reached the loop"
    );
    let (succeeded, output) =
        call_as(Caller::SluiceInGroup(accounts.forwarding_group_id)).await??;
    assert!(succeeded, "_sluice with group _sluice-web: {output}");
    assert_eq!(reached.recv().await, Some(44));
    Ok(())
}

#[test]
fn sluice_group_members_and_root_can_call_every_mutating_method() -> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address().to_owned();
    for caller in [Caller::NobodyInGroup(setup.group_id), Caller::Root] {
        // Each AddDownload creates the download that the next CancelDownload and
        // DeleteDownload (id 1, then id 2 for the second caller) act on.
        let download_id = if caller == Caller::Root { "2" } else { "1" };
        for call in MUTATING_CALLS {
            let arguments: &[&str] =
                if call.method.ends_with("Download") && !call.method.ends_with("AddDownload") {
                    &[download_id]
                } else {
                    call.arguments
                };
            let (succeeded, output) = gdbus_call_with(caller, &address, call, arguments)?;
            assert!(
                succeeded,
                "{caller:?} could not call {}: {output}",
                call.method
            );
            let expected = match call.method {
                "org.sluice.Monitor1.Rescan" => "(uint64 2,)",
                "org.sluice.Web1.CancelJob" => "('cancelled',)",
                "org.sluice.Scraper1.AddDownload" | "org.sluice.Scraper1.ScrapeNow" => "(uint64 ",
                _ => "()",
            };
            assert!(
                output.trim().starts_with(expected),
                "{caller:?} {}: {output}",
                call.method
            );
        }
    }
    Ok(())
}

#[test]
fn a_second_process_cannot_take_an_owned_name() -> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let mut setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address().to_owned();
    let (_copy, fixture_path) = fixture_for_other_users()?;
    for (objects, instance) in [
        ("monitor", "1"),
        ("scraper", "1"),
        ("web", "1"),
        ("ingest", "1"),
    ] {
        let mut command = Caller::Sluice.command(&fixture_path);
        command.args([
            "--address",
            &address,
            "--serve",
            objects,
            "--ingest-instance",
            instance,
        ]);
        let output = command.output().context("cannot run a second fixture")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{objects}: {stderr}");
        assert!(stderr.contains("already owned"), "{objects}: {stderr}");
    }
    // Another worker instance gets its own name and object.
    let second_worker = spawn_fixture(
        &fixture_path,
        &address,
        &["--serve", "ingest", "--ingest-instance", "2"],
    )?;
    let (succeeded, output) = busctl(
        Caller::NobodyInGroup(setup.group_id),
        &address,
        &[
            "get-property",
            "org.sluice.Ingest1.Worker2",
            "/org/sluice/Ingest1/2",
            "org.sluice.Ingest1",
            "Instance",
        ],
    )?;
    assert!(succeeded, "{output}");
    assert_eq!(output.trim(), "s \"2\"");
    drop(second_worker);
    // Root may call but not own: the policy gives org.sluice.* to _sluice only.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection = bus::connect(&BusAddress::Address(address.clone())).await?;
        let refused = connection
            .request_name_with_flags(
                "org.sluice.Monitor1",
                zbus::fdo::RequestNameFlags::DO_NOT_QUEUE,
            )
            .await;
        assert!(refused.is_err(), "root took org.sluice.Monitor1");
        let refused = connection
            .request_name_with_flags(
                "org.sluice.Other1",
                zbus::fdo::RequestNameFlags::DO_NOT_QUEUE,
            )
            .await;
        match refused {
            Err(zbus::Error::FDO(error)) => {
                assert!(
                    matches!(*error, zbus::fdo::Error::AccessDenied(_)),
                    "{error}"
                )
            }
            other => panic!("root could own org.sluice.Other1: {other:?}"),
        }
        // The names belong to the fixture running as _sluice.
        let driver = zbus::fdo::DBusProxy::new(&connection).await?;
        let owner_uid = driver
            .get_connection_unix_user(zbus::names::BusName::try_from("org.sluice.Monitor1")?)
            .await?;
        assert_eq!(owner_uid, setup.user_id);
        anyhow::Ok(())
    })?;
    // The first owner is unaffected.
    assert!(setup.fixture.is_running(), "{}", setup.fixture.log());
    let (succeeded, output) = busctl(
        Caller::NobodyInGroup(setup.group_id),
        &address,
        &[
            "get-property",
            "org.sluice.Monitor1",
            "/org/sluice/Monitor1",
            "org.sluice.Monitor1",
            "State",
        ],
    )?;
    assert!(succeeded, "{output}");
    Ok(())
}

/// Issue 17, finding 6: file names are bytes, and a name that is not UTF-8 (byte 0xff, a
/// Latin-1 é) crosses the bus byte for byte both ways: a `Rescan` argument reaches the
/// daemon's loop as the path it names; `FileDetected`, `DownloadFinished` and `BundleFinished`
/// reach a subscriber; `WatchedPaths` and `StagingPath` read back; each with the one trailing
/// NUL sluice adds, as GLib's byte strings have.
#[tokio::test]
async fn paths_that_are_not_utf8_cross_the_bus_byte_exact() -> anyhow::Result<()> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    // No root needed: a permissive private bus, the services in this process.
    let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
    let address = BusAddress::Address(bus.address().to_owned());
    let daemon = bus::connect(&address).await?;
    let watched = PathBuf::from(OsStr::from_bytes(b"/srv/in\xffbox"));
    let (monitor_service, mut monitor_commands) = MonitorService::start(
        &daemon,
        CallerPolicy::for_this_process(),
        MonitorStatus::starting(vec![watched.clone()], "full"),
    )
    .await?;
    let staging = PathBuf::from(OsStr::from_bytes(b"/srv/st\xe9ging"));
    let (scraper_service, _scraper_commands) = ScraperService::start(
        &daemon,
        CallerPolicy::for_this_process(),
        ScraperStatus::starting(vec![], &staging),
        bus::DEFAULT_PROGRESS_INTERVAL,
    )
    .await?;
    let client = bus::connect(&address).await?;
    let monitor = MonitorProxy::new(&client).await?;
    let scraper = ScraperProxy::new(&client).await?;

    let mut watched_bytes = watched.as_os_str().as_bytes().to_vec();
    watched_bytes.push(0);
    assert_eq!(monitor.watched_paths().await?, vec![watched_bytes]);
    assert_eq!(scraper.staging_path().await?, b"/srv/st\xe9ging\0");

    let folder = watched.join(OsStr::from_bytes(b"caf\xe9-\xff"));
    let (answer, ()) = tokio::join!(monitor.rescan(bus::path_to_bytestring(&folder)), async {
        let command = tokio::time::timeout(SIGNAL_DEADLINE, monitor_commands.recv())
            .await
            .expect("Rescan reaches the loop")
            .expect("the command channel is open");
        let bus::MonitorCommand::Rescan { path, reply } = command;
        assert_eq!(
            path.as_deref().map(|path| path.as_os_str().as_bytes()),
            Some(&b"/srv/in\xffbox/caf\xe9-\xff"[..])
        );
        let _ = reply.send(Ok(1));
    });
    assert_eq!(answer?, 1);

    let mut detected = monitor.receive_file_detected().await?;
    let mut download_finished = scraper.receive_download_finished().await?;
    let mut bundle_finished = scraper.receive_bundle_finished().await?;
    let file = folder.join(OsStr::from_bytes(b"\xff.bin"));
    monitor_service
        .file_detected(&bus::path_to_bytestring(&file), 3, 4)
        .await?;
    scraper_service
        .download_finished(5, "succeeded", &bus::path_to_bytestring(&file))
        .await?;
    scraper_service
        .bundle_finished(6, "succeeded", &bus::path_to_bytestring(&folder))
        .await?;
    let signal = next_signal(&mut detected).await?;
    let args = signal.args()?;
    assert_eq!(*args.path(), b"/srv/in\xffbox/caf\xe9-\xff/\xff.bin\0");
    assert_eq!(bus::bytestring_to_path("path", args.path())?, file);
    assert_eq!((*args.file_id(), *args.job_id()), (3, 4));
    let signal = next_signal(&mut download_finished).await?;
    assert_eq!(
        bus::bytestring_to_path("path", signal.args()?.path())?,
        file
    );
    let signal = next_signal(&mut bundle_finished).await?;
    assert_eq!(
        bus::bytestring_to_path("path", signal.args()?.path())?,
        folder
    );
    Ok(())
}

#[tokio::test]
async fn serve_and_own_name_reports_a_taken_name() -> anyhow::Result<()> {
    // No root needed: a permissive private bus as the current user.
    let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
    let address = BusAddress::Address(bus.address().to_owned());
    let policy = CallerPolicy::for_this_process();
    let first = bus::connect(&address).await?;
    let (_service, _commands) = MonitorService::start(
        &first,
        policy,
        MonitorStatus::starting(vec![PathBuf::from("/srv/inbox")], "full"),
    )
    .await?;
    let second = bus::connect(&address).await?;
    let result = MonitorService::start(
        &second,
        policy,
        MonitorStatus::starting(vec![PathBuf::from("/srv/inbox")], "full"),
    )
    .await;
    match result {
        Err(BusSetupError::NameTaken { name }) => assert_eq!(name, "org.sluice.Monitor1"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    // The object the failed attempt served was taken down again, so a retry on the same
    // connection does not trip over it.
    let paths = second
        .object_server()
        .interface::<_, bus::MonitorInterface>(bus::MONITOR_OBJECT_PATH)
        .await;
    assert!(paths.is_err(), "the failed start left its object behind");
    Ok(())
}

#[test]
fn a_subscriber_receives_every_signal_with_its_arguments() -> anyhow::Result<()> {
    let Some((_setup, address, runtime)) = shipped_fixture()? else {
        return Ok(());
    };
    runtime.block_on(receive_every_signal(address))
}

async fn receive_every_signal(address: String) -> anyhow::Result<()> {
    let connection = bus::connect(&BusAddress::Address(address)).await?;
    let monitor = MonitorProxy::new(&connection).await?;
    let scraper = ScraperProxy::new(&connection).await?;
    let web = WebProxy::new(&connection).await?;
    let ingest = ingest_proxy(&connection, "1").await?;

    // Subscribe to everything before anything is emitted.
    let mut file_detected = monitor.receive_file_detected().await?;
    let mut scraper_job_queued = scraper.receive_job_queued().await?;
    let mut scraper_job_started = scraper.receive_job_started().await?;
    let mut scraper_job_progress = scraper.receive_job_progress().await?;
    let mut scraper_job_finished = scraper.receive_job_finished().await?;
    let mut download_progress = scraper.receive_download_progress().await?;
    let mut download_finished = scraper.receive_download_finished().await?;
    let mut ingest_job_started = ingest.receive_job_started().await?;
    let mut ingest_job_progress = ingest.receive_job_progress().await?;
    let mut ingest_job_finished = ingest.receive_job_finished().await?;
    let mut web_job_queued = web.receive_job_queued().await?;
    let mut web_job_finished = web.receive_job_finished().await?;

    let reply = connection
        .call_method(
            Some("org.sluice.Monitor1"),
            "/org/sluice/Test1/Fixture",
            Some("org.sluice.Test1.Fixture"),
            "EmitAllSignals",
            &(),
        )
        .await?;
    let emitted: u32 = reply.body().deserialize()?;
    // 1 monitor + 8 scraper + 4 ingest + 2 web; the two middle progress values of each kind
    // are dropped by the rate limiter.
    assert_eq!(emitted, 15);

    let signal = next_signal(&mut file_detected).await?;
    let args = signal.args()?;
    assert_eq!(
        (*args.path(), *args.file_id(), *args.job_id()),
        (&b"/srv/sluice/inbox/report.pdf\0"[..], 11, 12)
    );

    let signal = next_signal(&mut scraper_job_queued).await?;
    let args = signal.args()?;
    assert_eq!((*args.kind(), *args.job_id()), ("download", 101));
    let signal = next_signal(&mut scraper_job_started).await?;
    let args = signal.args()?;
    assert_eq!(
        (*args.job_id(), *args.kind(), *args.worker()),
        (101, "download", "scraper")
    );
    let mut progress = Vec::new();
    loop {
        let signal = next_signal(&mut scraper_job_progress).await?;
        let args = signal.args()?;
        progress.push((*args.job_id(), *args.fraction(), args.message().to_string()));
        if *args.fraction() >= 1.0 {
            break;
        }
    }
    assert_eq!(
        progress,
        vec![
            (101, 0.0, "connecting".to_owned()),
            (101, 1.0, "done".to_owned())
        ]
    );
    let signal = next_signal(&mut scraper_job_finished).await?;
    let args = signal.args()?;
    assert_eq!((*args.job_id(), *args.state()), (101, "succeeded"));
    let mut bytes = Vec::new();
    loop {
        let signal = next_signal(&mut download_progress).await?;
        let args = signal.args()?;
        bytes.push((*args.download_id(), *args.bytes(), *args.total()));
        if args.bytes() == args.total() {
            break;
        }
    }
    assert_eq!(bytes, vec![(1, 0, 1000), (1, 1000, 1000)]);
    let signal = next_signal(&mut download_finished).await?;
    let args = signal.args()?;
    assert_eq!(
        (*args.download_id(), *args.state(), *args.path()),
        (1, "succeeded", &b"/srv/sluice/inbox/model.bin\0"[..])
    );

    let signal = next_signal(&mut ingest_job_started).await?;
    let args = signal.args()?;
    assert_eq!(
        (*args.job_id(), *args.kind(), *args.worker()),
        (12, "ingest", "1")
    );
    let mut progress = Vec::new();
    loop {
        let signal = next_signal(&mut ingest_job_progress).await?;
        let args = signal.args()?;
        progress.push((*args.job_id(), *args.fraction(), args.message().to_string()));
        if *args.fraction() >= 1.0 {
            break;
        }
    }
    assert_eq!(
        progress,
        vec![
            (12, 0.0, "hashing".to_owned()),
            (12, 1.0, "filed".to_owned())
        ]
    );
    let signal = next_signal(&mut ingest_job_finished).await?;
    let args = signal.args()?;
    assert_eq!((*args.job_id(), *args.state()), (12, "succeeded"));

    let signal = next_signal(&mut web_job_queued).await?;
    let args = signal.args()?;
    assert_eq!((*args.kind(), *args.job_id()), ("ingest", 44));
    let signal = next_signal(&mut web_job_finished).await?;
    let args = signal.args()?;
    assert_eq!((*args.job_id(), *args.state()), (43, "cancelled"));

    // State is properties with PropertiesChanged: adding a download raises DownloadsActive,
    // and a subscriber sees the new value without polling.
    let mut downloads_active = scraper.receive_downloads_active_changed().await;
    let (download_id, job_id) = scraper
        .add_download("https://example.org/model.bin", HashMap::new())
        .await?;
    assert!(download_id > 0 && job_id > 0);
    let seen = tokio::time::timeout(SIGNAL_DEADLINE, property_reaches(&mut downloads_active, 1))
        .await
        .context("no PropertiesChanged for DownloadsActive")??;
    assert!(
        seen,
        "the DownloadsActive stream ended without the new value"
    );
    Ok(())
}

#[test]
fn the_shipped_policy_drops_sluice_signals_sent_by_other_users() -> anyhow::Result<()> {
    let Some((setup, address, runtime)) = shipped_fixture()? else {
        return Ok(());
    };
    runtime.block_on(async {
        let connection = bus::connect(&BusAddress::Address(address.clone())).await?;
        let sluice_signals = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path_namespace("/org/sluice")
            .build()?;
        let mut signals =
            zbus::MessageStream::for_match_rule(sluice_signals, &connection, None).await?;
        let departures = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .build()?;
        let mut departures =
            zbus::MessageStream::for_match_rule(departures, &connection, None).await?;
        for caller in [Caller::Nobody, Caller::NobodyInGroup(setup.group_id)] {
            busctl(caller, &address, &crate::support::FORGED_FILE_DETECTED)?;
            // The bus routes a connection's messages before it announces that it left.
            tokio::time::timeout(
                SIGNAL_DEADLINE,
                crate::support::next_departure(&mut departures),
            )
            .await
            .with_context(|| format!("busctl as {caller:?} never left the bus"))?;
        }
        // The daemons' own signals (the fixture runs as _sluice) still get through.
        connection
            .call_method(
                Some("org.sluice.Monitor1"),
                "/org/sluice/Test1/Fixture",
                Some("org.sluice.Test1.Fixture"),
                "EmitAllSignals",
                &(),
            )
            .await?;
        // A forged FileDetected would have been routed before any of the fixture's.
        let first_path = loop {
            let message = next_signal(&mut signals).await??;
            if message
                .header()
                .member()
                .is_some_and(|member| member == "FileDetected")
            {
                let (path, _, _): (Vec<u8>, u64, u64) = message.body().deserialize()?;
                break path;
            }
        };
        assert_eq!(
            first_path, b"/srv/sluice/inbox/report.pdf\0",
            "a forged signal got through"
        );
        anyhow::Ok(())
    })
}

async fn next_signal<S: futures_util::Stream + Unpin>(stream: &mut S) -> anyhow::Result<S::Item> {
    tokio::time::timeout(SIGNAL_DEADLINE, stream.next())
        .await
        .context("no signal within the deadline")?
        .context("the signal stream ended")
}

/// Sends a raw method call (any body, so also wrong types) and returns the error name.
async fn error_name<B>(
    connection: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> String
where
    B: serde::Serialize + zbus::wire::DynamicType,
{
    match connection
        .call_method(Some(destination), path, Some(interface), method, body)
        .await
    {
        Ok(_) => format!("no error from {interface}.{method}"),
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(zbus::Error::FDO(error)) => zbus::DBusError::name(error.as_ref()).to_string(),
        Err(other) => format!("unexpected failure {other}"),
    }
}

#[test]
fn bad_input_gets_a_named_error_and_the_daemon_keeps_running() -> anyhow::Result<()> {
    if !crate::support::have_root() {
        return Ok(());
    }
    let mut setup = start_fixture(BusPolicy::Shipped, &[])?;
    let address = setup.bus.address().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(send_bad_input(address))?;
    assert!(setup.fixture.is_running(), "{}", setup.fixture.log());
    Ok(())
}

async fn send_bad_input(address: String) -> anyhow::Result<()> {
    let connection = bus::connect(&BusAddress::Address(address)).await?;
    let huge_path = format!("/srv/sluice/inbox/{}", "a".repeat(5000));
    let huge_url = format!("https://example.org/{}", "a".repeat(5000));
    let huge_name = "n".repeat(300);
    let no_options: HashMap<String, OwnedVariant> = HashMap::new();
    let options = |key: &str, value: Variant<'_>| -> HashMap<String, OwnedVariant> {
        HashMap::from([(key.to_owned(), value.try_to_owned().unwrap())])
    };

    let monitor = (
        "org.sluice.Monitor1",
        "/org/sluice/Monitor1",
        "org.sluice.Monitor1",
    );
    let scraper = (
        "org.sluice.Scraper1",
        "/org/sluice/Scraper1",
        "org.sluice.Scraper1",
    );
    let ingest = (
        "org.sluice.Ingest1.Worker1",
        "/org/sluice/Ingest1/1",
        "org.sluice.Ingest1",
    );
    let web = ("org.sluice.Web1", "/org/sluice/Web1", "org.sluice.Web1");
    macro_rules! expect_error {
        ($object:expr, $method:expr, $body:expr, $expected:expr) => {
            let (destination, path, interface) = $object;
            let name = error_name(&connection, destination, path, interface, $method, $body).await;
            assert_eq!(
                name, $expected,
                "{}.{} with {:?}",
                interface, $method, $body
            );
        };
    }
    const INVALID: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    const NOT_FOUND: &str = "org.sluice.Error.NotFound";
    const WRONG_TYPES: &str = "org.freedesktop.DBus.Error.InvalidArgs";

    // Rescan: outside the watched folders, relative, huge, a NUL inside, wrong type (a path
    // is bytes, `ay`, not a string).
    let bytes = |path: &[u8]| path.to_vec();
    expect_error!(monitor, "Rescan", &(bytes(b"/etc\0"),), INVALID);
    expect_error!(monitor, "Rescan", &(bytes(b"srv/sluice/inbox"),), INVALID);
    expect_error!(
        monitor,
        "Rescan",
        &(bytes(b"/srv/sluice/inbox/../../etc\0"),),
        INVALID
    );
    expect_error!(monitor, "Rescan", &(bytes(huge_path.as_bytes()),), INVALID);
    expect_error!(
        monitor,
        "Rescan",
        &(bytes(b"/srv/sluice/inbox\0/etc\0"),),
        INVALID
    );
    expect_error!(monitor, "Rescan", &("/srv/sluice/inbox",), WRONG_TYPES);
    expect_error!(monitor, "Rescan", &(5u64,), WRONG_TYPES);
    expect_error!(monitor, "Rescan", &(), WRONG_TYPES);
    expect_error!(
        monitor,
        "Rescue",
        &(bytes(b"\0"),),
        "org.freedesktop.DBus.Error.UnknownMethod"
    );

    // AddDownload: empty, huge, not http, bad options, unknown source, wrong types.
    expect_error!(scraper, "AddDownload", &("", &no_options), INVALID);
    expect_error!(
        scraper,
        "AddDownload",
        &(huge_url.as_str(), &no_options),
        INVALID
    );
    expect_error!(
        scraper,
        "AddDownload",
        &("file:///etc/shadow", &no_options),
        INVALID
    );
    let url = "https://example.org/model.bin";
    expect_error!(
        scraper,
        "AddDownload",
        &(url, options("colour", Variant::from("red"))),
        INVALID
    );
    expect_error!(
        scraper,
        "AddDownload",
        &(url, options("max_bytes", Variant::from("big"))),
        INVALID
    );
    expect_error!(
        scraper,
        "AddDownload",
        &(url, options("sha256", Variant::from("abc"))),
        INVALID
    );
    expect_error!(
        scraper,
        "AddDownload",
        &(url, options("source", Variant::from("weekly"))),
        NOT_FOUND
    );
    expect_error!(scraper, "AddDownload", &(url,), WRONG_TYPES);
    expect_error!(scraper, "AddDownload", &(url, 7u32), WRONG_TYPES);

    // Downloads and sources that do not exist, id 0, empty and huge names, wrong types.
    expect_error!(scraper, "CancelDownload", &(999u64,), NOT_FOUND);
    expect_error!(scraper, "CancelDownload", &(0u64,), INVALID);
    expect_error!(scraper, "CancelDownload", &("1",), WRONG_TYPES);
    expect_error!(scraper, "DeleteDownload", &(999u64,), NOT_FOUND);
    expect_error!(scraper, "ScrapeNow", &("weekly",), NOT_FOUND);
    expect_error!(scraper, "ScrapeNow", &("",), INVALID);
    expect_error!(scraper, "ScrapeNow", &(huge_name.as_str(),), INVALID);
    expect_error!(scraper, "ScrapeNow", &("../nightly",), INVALID);

    // Jobs that do not exist or are in the wrong state.
    expect_error!(ingest, "CancelJob", &(7u64,), NOT_FOUND);
    expect_error!(ingest, "CancelJob", &(-1i64,), WRONG_TYPES);
    expect_error!(web, "CancelJob", &(999u64,), NOT_FOUND);
    expect_error!(web, "RetryJob", &(45u64,), "org.sluice.Error.WrongState");
    expect_error!(web, "RetryJob", &(0u64,), INVALID);
    expect_error!(web, "RetryJob", &("44",), WRONG_TYPES);

    // The generated proxies turn the named errors back into typed ones for the CLI.
    let typed = ScraperProxy::new(&connection).await?;
    match typed.scrape_now("weekly").await {
        Err(BusError::NotFound(message)) => assert!(message.contains("weekly"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match typed.cancel_download(0).await {
        Err(BusError::InvalidArgument(message)) => assert!(message.contains("download_id")),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // After all that the daemon still answers.
    let monitor = MonitorProxy::new(&connection).await?;
    assert_eq!(monitor.state().await?, "running");
    assert_eq!(
        monitor.rescan(b"/srv/sluice/inbox/new\0".to_vec()).await?,
        1
    );
    Ok(())
}

/// The property names and D-Bus types each object showed before its object was declared
/// through `published_object!`, copied from main's introspection.
const PROPERTIES_ON_MAIN: &[(&str, &[(&str, &str)])] = &[
    (
        "org.sluice.Monitor1",
        &[
            ("State", "s"),
            ("Status", "s"),
            ("LastError", "s"),
            // Paths as byte strings (issue 17, finding 6).
            ("WatchedPaths", "aay"),
            ("PollingPaths", "aay"),
            ("Durability", "s"),
            ("FilesDetected", "t"),
            ("JobsQueued", "t"),
            // Added with the queue limits (issue 9).
            ("FilesHeld", "t"),
            // Added for /metrics (issue 11).
            ("WatchEvents", "t"),
            ("WatchOverflows", "t"),
            ("Reconciles", "t"),
        ],
    ),
    (
        "org.sluice.Scraper1",
        &[
            ("State", "s"),
            ("Status", "s"),
            ("LastError", "s"),
            ("Sources", "as"),
            ("StagingPath", "ay"),
            ("DownloadsActive", "u"),
            ("DownloadsDone", "t"),
            ("DownloadsFailed", "t"),
            ("BytesDownloaded", "t"),
            // Added with sources (issue 14).
            ("SourceStates", "a{s(ssxxttt)}"),
        ],
    ),
    (
        "org.sluice.Ingest1.Worker1",
        &[
            ("State", "s"),
            ("Status", "s"),
            ("LastError", "s"),
            ("Instance", "s"),
            ("CurrentJob", "t"),
            ("JobsDone", "t"),
            ("JobsFailed", "t"),
            ("Processors", "as"),
            // Added with thumbnails (issue 10): what renders PDF pages, "" for nothing.
            ("PdfThumbnailer", "s"),
        ],
    ),
    (
        "org.sluice.Web1",
        &[
            ("State", "s"),
            ("Status", "s"),
            ("LastError", "s"),
            ("ListenAddress", "s"),
            ("BasePath", "s"),
            ("Workers", "u"),
            ("Durability", "s"),
            ("RequestsServed", "t"),
            ("EventClients", "u"),
        ],
    ),
];

#[tokio::test]
async fn one_status_update_is_one_properties_changed_with_every_new_value() -> anyhow::Result<()> {
    // No root needed: a permissive private bus, the service in this process.
    let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
    let address = BusAddress::Address(bus.address().to_owned());
    let daemon_connection = bus::connect(&address).await?;
    let (service, _commands) = MonitorService::start(
        &daemon_connection,
        CallerPolicy::for_this_process(),
        MonitorStatus::starting(vec![PathBuf::from("/srv/inbox")], "full"),
    )
    .await?;
    let client = bus::connect(&address).await?;
    let properties = zbus::fdo::PropertiesProxy::builder(&client)
        .destination(bus::MONITOR_BUS_NAME)
        .path(bus::MONITOR_OBJECT_PATH)
        .build()
        .await?;
    let mut changes = properties.receive_properties_changed().await?;
    let monitor = MonitorProxy::new(&client).await?;
    let mut jobs_queued = monitor.receive_jobs_queued_changed().await;

    service
        .update_status(|status| {
            status.files_detected = 3;
            status.jobs_queued = 2;
        })
        .await?;
    service
        .update_status(|status| status.files_detected = 3)
        .await?;
    service
        .update_status(|status| status.state = DaemonState::Running)
        .await?;

    let first = next_signal(&mut changes).await?;
    let first = first.args()?;
    assert_eq!(first.interface_name().as_str(), "org.sluice.Monitor1");
    assert_eq!(
        first.changed_properties(),
        &HashMap::from([
            ("FilesDetected", Variant::from(3u64)),
            ("JobsQueued", Variant::from(2u64)),
        ])
    );
    assert!(first.invalidated_properties().is_empty());
    // Signals from one connection arrive in order, so the update that changed nothing sent
    // nothing if the next one is the state change.
    let second = next_signal(&mut changes).await?;
    assert_eq!(
        second.args()?.changed_properties(),
        &HashMap::from([("State", Variant::from("running"))])
    );

    // The proxies generated from the same interface still see the new value.
    let seen = tokio::time::timeout(SIGNAL_DEADLINE, property_reaches(&mut jobs_queued, 2))
        .await
        .context("no change of JobsQueued reached the proxy")??;
    assert!(seen, "the JobsQueued stream ended without the new value");
    assert_eq!(monitor.files_detected().await?, 3);
    Ok(())
}

#[tokio::test]
async fn introspection_lists_the_same_properties_as_before_the_object_macro() -> anyhow::Result<()>
{
    let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
    let address = BusAddress::Address(bus.address().to_owned());
    let connection = bus::connect(&address).await?;
    let policy = CallerPolicy::for_this_process();
    let (_monitor, _monitor_commands) = MonitorService::start(
        &connection,
        policy,
        MonitorStatus::starting(vec![PathBuf::from("/srv/inbox")], "full"),
    )
    .await?;
    let (_scraper, _scraper_commands) = ScraperService::start(
        &connection,
        policy,
        ScraperStatus::starting(vec!["nightly".into()], std::path::Path::new("/srv/staging")),
        bus::DEFAULT_PROGRESS_INTERVAL,
    )
    .await?;
    let (_ingest, _ingest_commands) = IngestService::start(
        &connection,
        "1",
        policy,
        IngestStatus::starting(vec!["ocr".into()]),
        bus::DEFAULT_PROGRESS_INTERVAL,
    )
    .await?;
    let (_web, _web_commands) = WebService::start(
        &connection,
        policy,
        WebStatus::starting("127.0.0.1:8080", "/", 2, "full"),
    )
    .await?;
    let objects = [
        ("org.sluice.Monitor1", "/org/sluice/Monitor1"),
        ("org.sluice.Scraper1", "/org/sluice/Scraper1"),
        ("org.sluice.Ingest1.Worker1", "/org/sluice/Ingest1/1"),
        ("org.sluice.Web1", "/org/sluice/Web1"),
    ];
    let client = bus::connect(&address).await?;
    for ((destination, path), (expected_destination, expected_properties)) in
        objects.into_iter().zip(PROPERTIES_ON_MAIN)
    {
        assert_eq!(destination, *expected_destination);
        let introspectable = zbus::fdo::IntrospectableProxy::builder(&client)
            .destination(destination)
            .path(path)
            .build()
            .await?;
        let xml = introspectable.introspect().await?;
        let mut listed = introspected_properties(&xml);
        let mut expected: Vec<(String, String)> = expected_properties
            .iter()
            .map(|(name, signature)| ((*name).to_owned(), (*signature).to_owned()))
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "{destination}:\n{xml}");
    }
    Ok(())
}

/// `(name, type)` of every `<property>` in introspection XML; only sluice's interfaces have
/// properties, so these are the object's own.
fn introspected_properties(xml: &str) -> Vec<(String, String)> {
    let attribute = |element: &str, name: &str| -> String {
        let start = format!("{name}=\"");
        element
            .split_once(start.as_str())
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    xml.split("<property ")
        .skip(1)
        .map(|element| {
            let element = element.split('>').next().unwrap_or("");
            (attribute(element, "name"), attribute(element, "type"))
        })
        .collect()
}

/// Whether a property-change stream delivers `wanted` before it ends.
async fn property_reaches<T>(
    changes: &mut zbus::proxy::PropertyStream<'_, T>,
    wanted: T,
) -> anyhow::Result<bool>
where
    T: zbus::Type + serde::de::DeserializeOwned + PartialEq + Unpin,
{
    while let Some(change) = changes.next().await {
        if change.get().await? == wanted {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One member of a sluice interface, as `busctl introspect` lists it.
#[derive(Debug, Clone)]
struct Member {
    destination: &'static str,
    path: &'static str,
    interface: String,
    name: String,
    kind: String,
    signature: String,
}

/// The fixture's objects: every daemon's.
const OBJECTS: [(&str, &str); 4] = [
    ("org.sluice.Monitor1", "/org/sluice/Monitor1"),
    ("org.sluice.Scraper1", "/org/sluice/Scraper1"),
    ("org.sluice.Web1", "/org/sluice/Web1"),
    ("org.sluice.Ingest1.Worker1", "/org/sluice/Ingest1/1"),
];

/// Every method, property and signal of sluice's own interfaces (not the test object's, not
/// the standard ones), from introspection, so a member added later is in the matrix too.
fn sluice_members(address: &str) -> anyhow::Result<Vec<Member>> {
    let mut members = Vec::new();
    for (destination, path) in OBJECTS {
        let (succeeded, output) =
            busctl(Caller::Root, address, &["introspect", destination, path])?;
        anyhow::ensure!(succeeded, "introspect {destination}: {output}");
        let mut interface = String::new();
        for line in output.lines() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            match columns.as_slice() {
                [name, "interface", ..] => interface = (*name).to_owned(),
                [name, kind, signature, ..]
                    if name.starts_with('.')
                        && interface.starts_with("org.sluice.")
                        && !interface.starts_with("org.sluice.Test1") =>
                {
                    members.push(Member {
                        destination,
                        path,
                        interface: interface.clone(),
                        name: name.trim_start_matches('.').to_owned(),
                        kind: (*kind).to_owned(),
                        signature: (*signature).to_owned(),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(members)
}

/// A value `busctl set-property` takes for a property of type `signature` (the type is right,
/// so only the policy or the read-only answer can refuse it).
fn a_value_of(signature: &str) -> Vec<&'static str> {
    match signature {
        "s" | "o" => vec!["x"],
        "b" => vec!["true"],
        "as" | "ay" | "aay" => vec!["0"],
        "a{sv}" | "a{s(ssxxttt)}" => vec!["0"],
        "d" | "y" | "n" | "q" | "i" | "u" | "x" | "t" => vec!["1"],
        other => panic!("no sample value for a property of type {other}: add one"),
    }
}

/// The methods the shipped policy lets every caller send, because the daemon decides with
/// polkit (`org.sluice.manage-jobs`, `add-download`, `manage-downloads`).
const POLKIT_METHODS: &[&str] = &[
    "Rescan",
    "AddDownload",
    "AddBundle",
    "CancelDownload",
    "DeleteDownload",
    "CancelBundle",
    "DeleteBundle",
    "ScrapeNow",
    "CancelJob",
    "RetryJob",
];

/// Issue 12, "D-Bus policy matrix": every method call, property read, property write and
/// signal of every sluice interface, by each kind of caller (root, the daemons' user
/// `_sluice`, a member of group `sluice`, anyone else), on the shipped policy. The rules:
/// - methods: root, `_sluice` and group `sluice` reach the daemon; anyone else gets the bus's
///   AccessDenied, except for the privileged methods, which reach the daemon for everyone
///   (it asks polkit, and refuses them itself: see the tests above). Methods are called without their arguments, so a call that gets through
///   is answered InvalidArgs (or, for a method without arguments, runs on the stand-in)
///   and changes nothing;
/// - property reads (Get, GetAll): like methods (properties name private files);
///   introspection: everyone;
/// - property writes: like methods at the bus; the daemon answers that no property is
///   writable;
/// - signals of sluice's interfaces: only root and `_sluice` may send them; one sent by
///   anyone else never reaches a subscriber.
#[test]
fn policy_matrix_every_member_by_every_kind_of_caller() -> anyhow::Result<()> {
    let Some((setup, address, runtime)) = shipped_fixture()? else {
        return Ok(());
    };
    let members = sluice_members(&address)?;
    let count = |kind: &str| members.iter().filter(|member| member.kind == kind).count();
    // The interfaces have at least the members the other tests of this file use.
    assert!(
        count("method") >= MUTATING_CALLS.len() && count("property") >= 12 && count("signal") >= 8,
        "introspection found too few members: {members:?}"
    );
    let callers = [
        ("root", Caller::Root, true),
        ("_sluice", Caller::Sluice, true),
        ("group sluice", Caller::NobodyInGroup(setup.group_id), true),
        ("nobody", Caller::Nobody, false),
    ];
    let mut cells = 0;
    for member in &members {
        let target = format!(
            "{}.{} on {}",
            member.interface, member.name, member.destination
        );
        for (who, caller, may_call) in callers {
            match member.kind.as_str() {
                "method" => {
                    let (_, output) = busctl(
                        caller,
                        &address,
                        &[
                            "call",
                            member.destination,
                            member.path,
                            &member.interface,
                            &member.name,
                        ],
                    )?;
                    let denied = output.contains("Access denied");
                    // The privileged methods reach the daemon for everyone: the daemon asks
                    // polkit (here, with no polkit on the bus, it falls back to the group).
                    let reaches = may_call || POLKIT_METHODS.contains(&member.name.as_str());
                    assert_eq!(denied, !reaches, "{who} calling {target}: {output}");
                    cells += 1;
                }
                "property" => {
                    let (read, output) = busctl(
                        caller,
                        &address,
                        &[
                            "get-property",
                            member.destination,
                            member.path,
                            &member.interface,
                            &member.name,
                        ],
                    )?;
                    assert_eq!(read, may_call, "{who} reading {target}: {output}");
                    let mut arguments = vec![
                        "set-property",
                        member.destination,
                        member.path,
                        member.interface.as_str(),
                        member.name.as_str(),
                        member.signature.as_str(),
                    ];
                    arguments.extend(a_value_of(&member.signature));
                    let (written, output) = busctl(caller, &address, &arguments)?;
                    assert!(!written, "{who} wrote {target}: {output}");
                    let denied = output.contains("Access denied");
                    assert_eq!(denied, !may_call, "{who} writing {target}: {output}");
                    cells += 2;
                }
                _ => {}
            }
        }
    }
    for (who, caller, may_call) in callers {
        let (succeeded, output) = busctl(
            caller,
            &address,
            &[
                "call",
                "org.sluice.Scraper1",
                "/org/sluice/Scraper1",
                "org.freedesktop.DBus.Properties",
                "GetAll",
                "s",
                "org.sluice.Scraper1",
            ],
        )?;
        assert_eq!(succeeded, may_call, "{who} GetAll: {output}");
        for (destination, path) in OBJECTS {
            let (succeeded, output) = busctl(
                caller,
                &address,
                &["introspect", "--xml-interface", destination, path],
            )?;
            assert!(succeeded, "{who} introspecting {destination}: {output}");
        }
    }

    // Signals: a subscriber sees, in the order the bus routed them, each emitted signal (if
    // the policy let it through) and then the departure of the busctl that sent it.
    let signals_to_send: Vec<&Member> = members
        .iter()
        .filter(|member| member.kind == "signal")
        .collect();
    let delivered = runtime.block_on(async {
        let connection = bus::connect(&BusAddress::Address(address.clone())).await?;
        let sluice_signals = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path_namespace("/org/sluice")
            .build()?;
        let departures = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .build()?;
        // One reader task feeds both streams in the order the bus routed the messages: when
        // a busctl's departure is in `departures`, the signal it sent before leaving (if the
        // policy let it through) is already waiting in `signals`.
        let mut signals =
            zbus::MessageStream::for_match_rule(sluice_signals, &connection, None).await?;
        let mut departures =
            zbus::MessageStream::for_match_rule(departures, &connection, None).await?;
        let mut delivered = Vec::new();
        for member in &signals_to_send {
            for (who, caller, _) in callers {
                let (sent, output) = busctl(
                    caller,
                    &address,
                    &["emit", member.path, &member.interface, &member.name],
                )?;
                anyhow::ensure!(sent, "busctl emit as {who}: {output}");
                tokio::time::timeout(
                    SIGNAL_DEADLINE,
                    crate::support::next_departure(&mut departures),
                )
                .await
                .with_context(|| format!("busctl as {who} never left the bus"))?;
                let mut arrived = false;
                while let Some(Some(message)) =
                    futures_util::FutureExt::now_or_never(signals.next())
                {
                    let message = message?;
                    let header = message.header();
                    if header
                        .member()
                        .is_some_and(|name| name.as_str() == member.name)
                        && header
                            .interface()
                            .is_some_and(|name| name.as_str() == member.interface)
                    {
                        arrived = true;
                    }
                }
                delivered.push((who, member.name.clone(), arrived));
            }
        }
        anyhow::Ok(delivered)
    })?;
    for (who, signal, arrived) in &delivered {
        let may_send = matches!(*who, "root" | "_sluice");
        assert_eq!(
            *arrived, may_send,
            "{signal} sent by {who}: delivered {arrived}"
        );
    }
    cells += delivered.len();
    eprintln!(
        "policy matrix: {} methods, {} properties, {} signals × 4 callers = {cells} cells held",
        count("method"),
        count("property"),
        count("signal")
    );
    Ok(())
}

/// Issue 17, finding 3: `nobody` received `FileDetected` with the path of a file in a folder
/// it cannot list. Only root and group `sluice` (the daemons' user among them) receive
/// sluice's signals now: a plain subscriber of every signal, run as each kind of caller, gets
/// all of them or none.
#[test]
fn only_root_and_group_sluice_receive_sluice_signals() -> anyhow::Result<()> {
    let Some((setup, address, runtime)) = shipped_fixture()? else {
        return Ok(());
    };
    let (_copy, listener) = copy_for_other_users(env!("CARGO_BIN_EXE_bus-listen"), "bus-listen")?;
    let mut received = Vec::new();
    for (who, caller) in [
        ("root", Caller::Root),
        ("_sluice", Caller::Sluice),
        ("group sluice", Caller::NobodyInGroup(setup.group_id)),
        ("nobody", Caller::Nobody),
    ] {
        let mut command = caller.command(&listener);
        command.args(["--address", &address]);
        let mut listening = DaemonProcess::start_until_line(command, "subscribed")?;
        runtime.block_on(async {
            let connection = bus::connect(&BusAddress::Address(address.clone())).await?;
            connection
                .call_method(
                    Some("org.sluice.Monitor1"),
                    "/org/sluice/Test1/Fixture",
                    Some("org.sluice.Test1.Fixture"),
                    "EmitAllSignals",
                    &(),
                )
                .await?;
            // Routed after every signal of the fixture (they went before its reply).
            connection
                .emit_signal(
                    None::<&str>,
                    "/org/example/Test1",
                    "org.example.Test1",
                    "Done",
                    &(),
                )
                .await?;
            anyhow::Ok(())
        })?;
        listening.wait_for_exit(SIGNAL_DEADLINE)?;
        let sluice_signals: Vec<String> = listening
            .lines()
            .into_iter()
            .filter(|line| line.starts_with("org.sluice."))
            .collect();
        received.push((who, sluice_signals));
    }
    let all = received[0].1.clone();
    assert!(all.len() >= 8, "root received too few: {all:?}");
    for (who, signals) in &received {
        let names = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|line| line.split(' ').take(2).collect::<Vec<_>>().join(" "))
                .collect()
        };
        if *who == "nobody" {
            assert!(signals.is_empty(), "nobody received {signals:?}");
        } else {
            assert_eq!(names(signals), names(&all), "{who}");
        }
    }
    Ok(())
}
