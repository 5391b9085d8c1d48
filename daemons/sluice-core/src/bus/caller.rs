//! The caller check every privileged method runs, so a mistake in the bus policy file is not a
//! hole: the daemon itself asks who is calling and refuses anyone not allowed.
//!
//! The decision is polkit's, as for systemd's own services (hostnamed, timedated): each
//! privileged method belongs to one [`Action`] (`org.sluice.manage-jobs`,
//! `org.sluice.add-download`, `org.sluice.manage-downloads`, declared in
//! `/usr/share/polkit-1/actions/org.sluice.policy`), and the package's rules file grants them to
//! members of group `sluice`. An administrator can grant or refuse more in
//! `/etc/polkit-1/rules.d/`. Two callers never reach polkit:
//!
//! - root, which polkit itself always allows;
//! - the daemons' own user (`_sluice`). It is allowed only from `sluice-web.service`, which
//!   forwards requests made over HTTP with the admin token; from any other unit (an ingest
//!   worker, and so any processor it runs) it is refused, so a processor, which has no network,
//!   cannot make the scraper fetch for it. sluice-web is recognised by a credential fixed when
//!   its bus connection was made: its unit gives it the supplementary group
//!   [`FORWARDING_GROUP`] (`SupplementaryGroups=`), which no account is a member of, and
//!   dbus-daemon records a connection's groups when it connects (`SO_PEERGROUPS`) and reports
//!   them as `UnixGroupIDs` in `GetConnectionCredentials`. No process of `_sluice` outside that
//!   unit can gain the group (every unit has `NoNewPrivileges=yes` and no capabilities), and a
//!   connection keeps the groups it was made with, so a recycled PID proves nothing either way.
//!   (An earlier check asked systemd for the unit of the connection's PID, which a process
//!   holding a connection could have arranged to be reused by sluice-web. The pidfd route,
//!   the `ProcessFD` credential with `GetUnitByPIDFD`, needs dbus-daemon 1.15.8; Debian 12
//!   ships 1.14.) Outside systemd (a development run) it is allowed.
//!
//! Where polkit is not installed (no `org.freedesktop.PolicyKit1` on the bus), the check falls
//! back to what the rules file grants: root and members of group `sluice`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zbus::Connection;
use zbus::Variant;
use zbus::fdo::ConnectionCredentials;
use zbus::message::{Flags, Header};

use super::BusError;

/// The group whose members may call sluice's privileged methods.
pub const SLUICE_GROUP: &str = "sluice";

/// The unit whose processes may call privileged methods as the daemons' own user.
pub const FORWARDING_UNIT: &str = "sluice-web.service";

/// The system group that [`FORWARDING_UNIT`] alone gets (`SupplementaryGroups=` in its unit;
/// created by the package's sysusers.d file with no members): how a bus connection of the
/// daemons' own user is known to come from that unit.
pub const FORWARDING_GROUP: &str = "_sluice-web";

/// How many questions to polkit one daemon has open at once.
const MAX_POLKIT_QUESTIONS: usize = 16;
static POLKIT_QUESTIONS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_POLKIT_QUESTIONS);

/// How long polkit may take to decide a call that does not allow interaction, and one that
/// does (a person types a password).
const POLKIT_TIMEOUT: Duration = Duration::from_secs(25);
const INTERACTIVE_POLKIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Refusals are logged at most once a second per daemon, with a count of those left out, so a
/// caller repeating refused calls cannot push the daemon's other lines out of journald's rate
/// limit.
static REFUSAL_LOG: LogBudget = LogBudget::new(Duration::from_secs(1));

/// At most one log line per interval; counts the lines it refuses.
struct LogBudget {
    interval_ms: u64,
    /// The last line's time in ms since the process's first line, plus one (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    const fn new(interval: Duration) -> LogBudget {
        LogBudget {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    fn admit(&self) -> Option<u64> {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now_ms = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// What a privileged method does, as the polkit action that authorizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Cancel or retry jobs, rescan a folder, check a source now.
    ManageJobs,
    /// Make the scraper fetch a URL: `AddDownload`, `AddBundle`.
    AddDownload,
    /// Cancel or delete downloads and bundles.
    ManageDownloads,
}

impl Action {
    /// Every action, in the order of the policy file.
    pub const ALL: [Action; 3] = [
        Action::ManageJobs,
        Action::AddDownload,
        Action::ManageDownloads,
    ];

    /// The polkit action id.
    pub fn id(self) -> &'static str {
        match self {
            Action::ManageJobs => "org.sluice.manage-jobs",
            Action::AddDownload => "org.sluice.add-download",
            Action::ManageDownloads => "org.sluice.manage-downloads",
        }
    }
}

/// Who may call privileged methods: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerPolicy {
    daemon_uid: u32,
    /// `None` when the group does not exist on this host; then only root and the daemon's own
    /// user are allowed where polkit is not installed.
    sluice_gid: Option<u32>,
    /// The gid of [`FORWARDING_GROUP`]; `None` when the group does not exist, and then the
    /// daemons' own user is refused everywhere under systemd (fails closed).
    forwarding_gid: Option<u32>,
    /// Whether this daemon runs as one of sluice's systemd units; outside them (a development
    /// run) the daemons' own user is allowed from anywhere.
    under_sluice_unit: bool,
}

/// What polkit answered, or that it is not there.
enum Verdict {
    Authorized,
    Challenge,
    Refused,
    NoPolkit,
}

impl CallerPolicy {
    /// The policy for this process: its effective uid, the gid of group `sluice` looked up
    /// through NSS once at start (a group created later takes effect at the next restart), and
    /// the unit it runs as.
    pub fn for_this_process() -> CallerPolicy {
        CallerPolicy {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            sluice_gid: lookup_group_id(SLUICE_GROUP),
            forwarding_gid: lookup_group_id(FORWARDING_GROUP),
            under_sluice_unit: std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|cgroup| sluice_unit_of(&cgroup))
                .is_some(),
        }
    }

    /// A policy with explicit ids and no unit, for tests.
    pub fn new(daemon_uid: u32, sluice_gid: Option<u32>) -> CallerPolicy {
        CallerPolicy {
            daemon_uid,
            sluice_gid,
            forwarding_gid: None,
            under_sluice_unit: false,
        }
    }

    /// A policy with explicit ids as a daemon running in one of sluice's units has it, so
    /// the daemons' own user needs `forwarding_gid`: for tests, which run outside systemd.
    pub fn as_in_a_unit(
        daemon_uid: u32,
        sluice_gid: Option<u32>,
        forwarding_gid: Option<u32>,
    ) -> CallerPolicy {
        CallerPolicy {
            daemon_uid,
            sluice_gid,
            forwarding_gid,
            under_sluice_unit: true,
        }
    }

    /// Whether the daemons' own user, connected with these groups, is let through: anywhere
    /// outside systemd; under it only with [`FORWARDING_GROUP`] among them.
    pub fn allows_own_user(&self, group_ids: &[u32]) -> bool {
        !self.under_sluice_unit
            || self
                .forwarding_gid
                .is_some_and(|forwarding_gid| group_ids.contains(&forwarding_gid))
    }

    /// Whether a caller with these credentials may call privileged methods where polkit is
    /// not installed: root, the daemon's own user, members of group `sluice`.
    pub fn allows_without_polkit(&self, uid: u32, group_ids: &[u32]) -> bool {
        uid == 0
            || uid == self.daemon_uid
            || self
                .sluice_gid
                .is_some_and(|sluice_gid| group_ids.contains(&sluice_gid))
    }

    /// Refuses the call unless the message's sender may perform `action` (see the module
    /// documentation). `method` only names the call in messages.
    pub async fn authorize(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        method: &str,
        action: Action,
    ) -> Result<(), BusError> {
        let sender = header.sender().ok_or_else(|| {
            BusError::AccessDenied(format!("{method}: the call has no sender to check"))
        })?;
        // One plain call: a `DBusProxy` built per request would also subscribe to the
        // driver's PropertiesChanged, an extra round trip and match rule for every call.
        let credentials: ConnectionCredentials = connection
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetConnectionCredentials",
                &(sender.as_str(),),
            )
            .await
            .and_then(|reply| reply.body().deserialize())
            .map_err(|error| {
                BusError::Internal(format!(
                    "{method}: cannot read the credentials of {sender}: {error}"
                ))
            })?;
        let uid = credentials.unix_user_id().ok_or_else(|| {
            BusError::AccessDenied(format!("{method}: the bus did not report the caller's uid"))
        })?;
        if uid == 0 {
            return Ok(());
        }
        if uid == self.daemon_uid {
            return self.authorize_own_user(method, sender.as_str(), &credentials);
        }
        let interactive = header
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH);
        // Everyone may send these methods, so what one caller can make the daemon hold is
        // bounded: a few questions to polkit at once (Busy beyond), each for a limited time
        // (an agent that never answers an interactive one cannot keep it forever).
        let Ok(_slot) = POLKIT_QUESTIONS.try_acquire() else {
            return Err(BusError::Busy(format!(
                "{method}: {MAX_POLKIT_QUESTIONS} authorizations are pending; try again shortly"
            )));
        };
        let limit = if interactive {
            INTERACTIVE_POLKIT_TIMEOUT
        } else {
            POLKIT_TIMEOUT
        };
        let verdict = tokio::time::timeout(
            limit,
            ask_polkit(connection, sender.as_str(), action, interactive),
        )
        .await
        .map_err(|_| {
            BusError::AccessDenied(format!(
                "{method}: polkit did not decide within {} s",
                limit.as_secs()
            ))
        })?
        .map_err(|error| {
            BusError::Internal(format!(
                "{method}: cannot ask polkit about {sender} (uid {uid}): {error}"
            ))
        })?;
        let refusal = match verdict {
            Verdict::Authorized => return Ok(()),
            Verdict::NoPolkit => {
                // dbus-daemon reports the groups on Linux (SO_PEERGROUPS); without them only
                // the uid can grant access, which fails closed.
                let group_ids = credentials.unix_group_ids().cloned().unwrap_or_default();
                if self.allows_without_polkit(uid, &group_ids) {
                    return Ok(());
                }
                BusError::AccessDenied(format!(
                    "{method} needs root or membership in group {SLUICE_GROUP} (caller uid {uid})"
                ))
            }
            Verdict::Challenge => BusError::InteractiveAuthorizationRequired(format!(
                "{method} needs authentication for polkit action {} (caller uid {uid}); call \
                 it allowing interactive authorization",
                action.id()
            )),
            Verdict::Refused => BusError::AccessDenied(format!(
                "{method}: polkit refused action {} to uid {uid}",
                action.id()
            )),
        };
        if let Some(suppressed) = REFUSAL_LOG.admit() {
            tracing::warn!(
                method,
                caller = %sender,
                caller_uid = uid,
                action = action.id(),
                suppressed,
                "refused the D-Bus call {method} from {sender} (uid {uid}): {}{}",
                zbus::DBusError::description(&refusal).unwrap_or_default(),
                if suppressed > 0 {
                    format!(" ({suppressed} more refusals since the last one logged)")
                } else {
                    String::new()
                }
            );
        }
        Err(refusal)
    }

    /// The daemons' own user: allowed from sluice-web's unit, recognised by the group its
    /// connection was made with, or anywhere outside systemd.
    fn authorize_own_user(
        &self,
        method: &str,
        sender: &str,
        credentials: &ConnectionCredentials,
    ) -> Result<(), BusError> {
        // dbus-daemon reports the groups on Linux; without them the group cannot be shown,
        // which fails closed.
        let group_ids = credentials.unix_group_ids().cloned().unwrap_or_default();
        if self.allows_own_user(&group_ids) {
            return Ok(());
        }
        let lacking = match self.forwarding_gid {
            Some(gid) => format!("its connection lacks group {FORWARDING_GROUP} ({gid})"),
            None => format!("group {FORWARDING_GROUP} does not exist on this host"),
        };
        let pid = credentials
            .process_id()
            .map_or_else(|| "?".to_owned(), |pid| pid.to_string());
        if let Some(suppressed) = REFUSAL_LOG.admit() {
            tracing::warn!(
                method,
                caller = %sender,
                caller_pid = %pid,
                suppressed,
                "refused the D-Bus call {method} from {sender} (process {pid}): the daemons' own \
                 user may call it only from {FORWARDING_UNIT}, and {lacking}"
            );
        }
        Err(BusError::AccessDenied(format!(
            "{method}: the daemons' own user may call it only from {FORWARDING_UNIT} (group \
             {FORWARDING_GROUP}); {lacking}"
        )))
    }
}

/// Asks polkit whether `sender` may perform `action`: `CheckAuthorization` with a
/// `system-bus-name` subject, as systemd's services do.
async fn ask_polkit(
    connection: &Connection,
    sender: &str,
    action: Action,
    interactive: bool,
) -> zbus::Result<Verdict> {
    let subject_details = HashMap::from([("name", Variant::from(sender))]);
    let subject = ("system-bus-name", subject_details);
    let details: HashMap<&str, &str> = HashMap::new();
    let flags: u32 = u32::from(interactive);
    let reply = connection
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &(subject, action.id(), details, flags, ""),
        )
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) if polkit_is_absent(&error) => return Ok(Verdict::NoPolkit),
        Err(error) => return Err(error),
    };
    let ((authorized, challenge, _details),): ((bool, bool, HashMap<String, String>),) =
        reply.body().deserialize()?;
    Ok(if authorized {
        Verdict::Authorized
    } else if challenge {
        Verdict::Challenge
    } else {
        Verdict::Refused
    })
}

/// Whether a failed call means nobody serves polkit's name (not installed, or not activatable
/// on this bus), as opposed to polkit failing.
fn polkit_is_absent(error: &zbus::Error) -> bool {
    let name = match error {
        zbus::Error::FDO(error) => zbus::DBusError::name(error.as_ref()).to_string(),
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        _ => return false,
    };
    matches!(
        name.as_str(),
        "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner"
    )
}

/// The unit a process runs in, from its `/proc/PID/cgroup`: the cgroup v2 line `0::/…/UNIT`,
/// or on a legacy or hybrid hierarchy systemd's own `N:name=systemd:/…/UNIT`.
fn unit_of(cgroup: &str) -> Option<String> {
    let path = cgroup
        .lines()
        .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
        .or_else(|| cgroup.lines().find_map(|line| line.strip_prefix("0::")))?;
    let unit = path.rsplit('/').next()?;
    (unit.ends_with(".service") || unit.ends_with(".scope")).then(|| unit.to_owned())
}

/// [`unit_of`] when that unit is one of sluice's services.
fn sluice_unit_of(cgroup: &str) -> Option<String> {
    unit_of(cgroup).filter(|unit| unit.starts_with("sluice-") && unit.ends_with(".service"))
}

/// Looks a group up by name through NSS (getgrnam_r), so groups from LDAP or systemd-userdb
/// count as well as /etc/group. The `nix` crate wraps the buffer-growing loop safely, which
/// keeps `unsafe` out of this crate.
pub fn lookup_group_id(name: &str) -> Option<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Some(group.gid.as_raw()),
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(group = name, error = %error, "cannot look up group {name}: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_own_user_and_group_members_are_allowed() {
        let policy = CallerPolicy::new(990, Some(985));
        assert!(policy.allows_without_polkit(0, &[]));
        assert!(policy.allows_without_polkit(990, &[]));
        assert!(policy.allows_without_polkit(1000, &[100, 985]));
        assert!(!policy.allows_without_polkit(1000, &[100]));
        assert!(!policy.allows_without_polkit(65534, &[65534]));
    }

    #[test]
    fn without_the_group_only_root_and_own_user_are_allowed() {
        let policy = CallerPolicy::new(990, None);
        assert!(policy.allows_without_polkit(0, &[]));
        assert!(policy.allows_without_polkit(990, &[]));
        assert!(!policy.allows_without_polkit(1000, &[0, 985]));
    }

    #[test]
    fn under_a_unit_the_own_user_needs_the_forwarding_group() {
        // Outside systemd (a development run) the daemons' own user is let through anywhere.
        assert!(CallerPolicy::new(990, Some(985)).allows_own_user(&[]));
        let policy = CallerPolicy::as_in_a_unit(990, Some(985), Some(977));
        assert!(policy.allows_own_user(&[985, 977]));
        // Group sluice, the daemons' primary group, is not sluice-web's.
        assert!(!policy.allows_own_user(&[985]));
        assert!(!policy.allows_own_user(&[]));
        // Without the group on the host nobody is sluice-web: fails closed.
        let without_group = CallerPolicy::as_in_a_unit(990, Some(985), None);
        assert!(!without_group.allows_own_user(&[985, 977]));
    }

    #[test]
    fn units_are_read_from_the_cgroup_v2_line() {
        let web = "0::/system.slice/sluice-web.service\n";
        assert_eq!(unit_of(web).as_deref(), Some(FORWARDING_UNIT));
        assert_eq!(sluice_unit_of(web).as_deref(), Some(FORWARDING_UNIT));
        let worker = "0::/sluice.slice/sluice-ingest-worker@2.service\n";
        assert_eq!(
            sluice_unit_of(worker).as_deref(),
            Some("sluice-ingest-worker@2.service")
        );
        let shell = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(unit_of(shell).as_deref(), Some("session-3.scope"));
        assert_eq!(sluice_unit_of(shell), None);
        assert_eq!(unit_of("0::/\n"), None);
        let hybrid = "1:name=systemd:/sluice.slice/sluice-scraper.service\n0::/other.scope\n";
        assert_eq!(
            sluice_unit_of(hybrid).as_deref(),
            Some("sluice-scraper.service")
        );
    }

    #[test]
    fn the_refusal_log_admits_one_line_per_interval_and_counts_the_rest() {
        let budget = LogBudget::new(Duration::from_secs(3600));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), None);
        assert_eq!(budget.admit(), None);
        let budget = LogBudget::new(Duration::ZERO);
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), Some(0));
    }

    #[test]
    fn action_ids_are_the_policy_files() {
        let ids: Vec<_> = Action::ALL.iter().map(|action| action.id()).collect();
        assert_eq!(
            ids,
            [
                "org.sluice.manage-jobs",
                "org.sluice.add-download",
                "org.sluice.manage-downloads"
            ]
        );
    }

    #[test]
    fn group_lookup_finds_root_and_not_nonsense() {
        assert_eq!(lookup_group_id("root"), Some(0));
        assert_eq!(lookup_group_id("no-such-group-for-sluice-tests"), None);
    }
}
