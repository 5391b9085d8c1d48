//! A real private `dbus-daemon` configured like the system bus (deny by default, then the
//! shipped `packaging/dbus/org.sluice.conf` included), and callers as real users, for the
//! tests and the benchmarks.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::process::{DaemonProcess, STARTUP_DEADLINE, SpawnOptions, wait_until, workspace_root};

/// Which policy the private bus enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusPolicy {
    /// The system bus defaults (deny owning names and method calls) plus the shipped
    /// `packaging/dbus/org.sluice.conf`.
    Shipped,
    /// Everything allowed: stands for a broken policy, to show the daemons' own caller check,
    /// and serves the tests and benchmarks that are not about the policy.
    AllowEverything,
}

/// A private `dbus-daemon`, killed when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    // Declared before the directory, so the daemon is gone before its socket is removed.
    process: DaemonProcess,
    address: String,
    // Holds the socket and the generated config.
    _directory: tempfile::TempDir,
}

impl PrivateBus {
    pub fn start(policy: BusPolicy) -> anyhow::Result<PrivateBus> {
        let directory = tempfile::tempdir().context("cannot make the bus directory")?;
        // Callers of other users must reach the socket inside.
        set_mode(directory.path(), 0o755)?;
        let socket = directory.path().join("bus.socket");
        let config_path = directory.path().join("bus.conf");
        std::fs::write(&config_path, bus_config(&socket, policy))
            .context("cannot write the bus config")?;
        let mut command = Command::new("dbus-daemon");
        command
            .arg(format!("--config-file={}", config_path.display()))
            .arg("--nofork")
            .arg("--print-address=1");
        let mut process = DaemonProcess::spawn(
            &mut command,
            SpawnOptions::named("dbus-daemon").capture_stdout(),
        )
        .context("cannot start dbus-daemon (package dbus-daemon or dbus)")?;
        // dbus-daemon prints its address once it listens.
        let mut address = None;
        wait_until(STARTUP_DEADLINE, || {
            address = process.lines().first().map(|line| line.trim().to_owned());
            address.is_some() || !process.is_running()
        });
        let Some(address) = address else {
            bail!(
                "dbus-daemon printed no address within {STARTUP_DEADLINE:?}: {}",
                process.log()
            );
        };
        Ok(PrivateBus {
            process,
            address,
            _directory: directory,
        })
    }

    /// The address to pass to clients, e.g. `unix:path=/tmp/.../bus.socket,guid=...`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's process, e.g. for its log.
    pub fn process(&self) -> &DaemonProcess {
        &self.process
    }
}
/// The system-bus-like config: EXTERNAL auth, a unix socket, deny by default like
/// /usr/share/dbus-1/system.conf, then the shipped policy included.
/// The default-context rules both policies share: replies and signals flow, and anyone may
/// receive (what a system bus allows before a service's own policy file).
const REPLIES_AND_SIGNALS: &str = r#"    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>"#;

fn bus_config(socket: &Path, policy: BusPolicy) -> String {
    let policy_rules = match policy {
        BusPolicy::Shipped => format!(
            r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
{REPLIES_AND_SIGNALS}
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{}</include>"#,
            workspace_root()
                .join("packaging/dbus/org.sluice.conf")
                .display()
        ),
        BusPolicy::AllowEverything => format!(
            r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
{REPLIES_AND_SIGNALS}
  </policy>"#
        ),
    };
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={}</listen>
{policy_rules}
</busconfig>
"#,
        socket.display()
    )
}

/// Who runs a command: root, `nobody` without groups, or `nobody` with group `sluice` added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Root,
    Nobody,
    NobodyInGroup(u32),
    /// The daemons' user `_sluice` with primary group `sluice` (needs the accounts).
    Sluice,
    /// `_sluice` with one supplementary group, as `SupplementaryGroups=` gives sluice-web
    /// group `_sluice-web`.
    SluiceInGroup(u32),
}

/// `nobody`'s ids on Debian and most distributions.
pub const NOBODY_ID: u32 = 65534;

impl Caller {
    /// A command that runs `program` as this caller, through `setpriv` (util-linux).
    pub fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Caller::Root => Command::new(program),
            Caller::Nobody => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", &NOBODY_ID.to_string()])
                    .args(["--regid", &NOBODY_ID.to_string()])
                    .arg("--clear-groups")
                    .arg(program);
                command
            }
            Caller::NobodyInGroup(group_id) => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", &NOBODY_ID.to_string()])
                    .args(["--regid", &NOBODY_ID.to_string()])
                    .args(["--groups", &group_id.to_string()])
                    .arg(program);
                command
            }
            Caller::Sluice => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", "_sluice", "--regid", "sluice", "--clear-groups"])
                    .arg(program);
                command
            }
            Caller::SluiceInGroup(group_id) => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", "_sluice", "--regid", "sluice"])
                    .args(["--groups", &group_id.to_string()])
                    .arg(program);
                command
            }
        }
    }

    /// Runs `program args…` as this caller and collects its output.
    pub fn run(self, program: &str, arguments: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .args(arguments)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {program} as {self:?}"))
    }
}

/// The ids of sluice's system accounts.
#[derive(Debug, Clone, Copy)]
pub struct SluiceAccounts {
    pub user_id: u32,
    pub group_id: u32,
    /// Group `_sluice-web`, which sluice-web's unit alone gets.
    pub forwarding_group_id: u32,
}

/// Creates user `_sluice`, group `sluice` and group `_sluice-web` from the shipped sysusers.d file (idempotent;
/// works without systemd as PID 1) and returns their ids. Needs root. Runs once per test
/// process, so parallel tests do not race on /etc/passwd.
pub fn ensure_sluice_accounts() -> anyhow::Result<SluiceAccounts> {
    static ACCOUNTS: OnceLock<Result<SluiceAccounts, String>> = OnceLock::new();
    ACCOUNTS
        .get_or_init(|| create_sluice_accounts().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn create_sluice_accounts() -> anyhow::Result<SluiceAccounts> {
    let sysusers_file = workspace_root().join("packaging/sysusers.d/sluice.conf");
    // systemd-sysusers ignores a relative path argument, so it gets the absolute one.
    let output = Command::new("systemd-sysusers")
        .arg(&sysusers_file)
        .output()
        .context("cannot run systemd-sysusers (package systemd)")?;
    if !output.status.success() {
        bail!(
            "systemd-sysusers {} failed: {}",
            sysusers_file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let user = nix::unistd::User::from_name("_sluice")
        .context("cannot look up user _sluice")?
        .context("systemd-sysusers did not create user _sluice")?;
    let group = nix::unistd::Group::from_name("sluice")
        .context("cannot look up group sluice")?
        .context("systemd-sysusers did not create group sluice")?;
    let forwarding_group = nix::unistd::Group::from_name(sluice_core::bus::FORWARDING_GROUP)
        .context("cannot look up group _sluice-web")?
        .context("systemd-sysusers did not create group _sluice-web")?;
    Ok(SluiceAccounts {
        user_id: user.uid.as_raw(),
        group_id: group.gid.as_raw(),
        forwarding_group_id: forwarding_group.gid.as_raw(),
    })
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// The outside review's forged signal: `busctl` arguments that emit a `FileDetected` as if
/// from the monitor, with a path no daemon would send (`/FAKE` as a byte string with its NUL).
pub const FORGED_FILE_DETECTED: [&str; 14] = [
    "emit",
    "/org/sluice/Monitor1",
    "org.sluice.Monitor1",
    "FileDetected",
    "aytt",
    "6",
    "47",
    "70",
    "65",
    "75",
    "69",
    "0",
    "4242",
    "4243",
];

/// Waits until the bus announces that a client connection left (`NameOwnerChanged` for a
/// unique name with no new owner). `departures` is a stream of `NameOwnerChanged` signals;
/// the bus routes a connection's messages before it announces the departure, so after this
/// everything that connection sent has been delivered.
pub async fn next_departure(departures: &mut zbus::MessageStream) {
    use futures_util::StreamExt;
    while let Some(Ok(message)) = departures.next().await {
        let Ok((name, _old, new)) = message.body().deserialize::<(String, String, String)>() else {
            continue;
        };
        if name.starts_with(':') && new.is_empty() {
            return;
        }
    }
}
