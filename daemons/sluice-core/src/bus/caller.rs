//! The caller check every mutating method runs, so a mistake in the bus policy file is not a
//! hole: the daemon itself asks the bus who is calling and refuses anyone not allowed.

use zbus::Connection;
use zbus::fdo::ConnectionCredentials;
use zbus::message::Header;

use super::BusError;

/// The group whose members may call sluice's mutating methods.
pub const SLUICE_GROUP: &str = "sluice";

/// Who may call mutating methods: uid 0, the daemon's own uid, and members of group `sluice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerPolicy {
    daemon_uid: u32,
    /// `None` when the group does not exist on this host; then only root and the daemon's own
    /// user are allowed.
    sluice_gid: Option<u32>,
}

impl CallerPolicy {
    /// The policy for this process: its effective uid, and the gid of group `sluice` looked up
    /// through NSS once at start (a group created later takes effect at the next restart).
    pub fn for_this_process() -> CallerPolicy {
        CallerPolicy {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            sluice_gid: lookup_group_id(SLUICE_GROUP),
        }
    }

    /// A policy with explicit ids, for tests and for daemons that resolve the group themselves.
    pub fn new(daemon_uid: u32, sluice_gid: Option<u32>) -> CallerPolicy {
        CallerPolicy {
            daemon_uid,
            sluice_gid,
        }
    }

    /// Whether a caller with these credentials may call mutating methods.
    pub fn allows(&self, uid: u32, group_ids: &[u32]) -> bool {
        uid == 0
            || uid == self.daemon_uid
            || self
                .sluice_gid
                .is_some_and(|sluice_gid| group_ids.contains(&sluice_gid))
    }

    /// Asks the bus for the credentials of the message's sender and refuses the call unless
    /// [`CallerPolicy::allows`] them. `method` only names the call in the error message.
    pub async fn authorize(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        method: &str,
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
        // dbus-daemon reports the groups on Linux (SO_PEERGROUPS); without them only the uid
        // can grant access, which fails closed.
        let group_ids = credentials.unix_group_ids().cloned().unwrap_or_default();
        if self.allows(uid, &group_ids) {
            Ok(())
        } else {
            tracing::warn!(
                method,
                caller = %sender,
                caller_uid = uid,
                "refused the D-Bus call {method} from {sender} (uid {uid}): neither root nor in group {SLUICE_GROUP}"
            );
            Err(BusError::AccessDenied(format!(
                "{method} needs root or membership in group {SLUICE_GROUP} (caller uid {uid})"
            )))
        }
    }
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
        assert!(policy.allows(0, &[]));
        assert!(policy.allows(990, &[]));
        assert!(policy.allows(1000, &[100, 985]));
        assert!(!policy.allows(1000, &[100]));
        assert!(!policy.allows(65534, &[65534]));
    }

    #[test]
    fn without_the_group_only_root_and_own_user_are_allowed() {
        let policy = CallerPolicy::new(990, None);
        assert!(policy.allows(0, &[]));
        assert!(policy.allows(990, &[]));
        assert!(!policy.allows(1000, &[0, 985]));
    }

    #[test]
    fn group_lookup_finds_root_and_not_nonsense() {
        assert_eq!(lookup_group_id("root"), Some(0));
        assert_eq!(lookup_group_id("no-such-group-for-sluice-tests"), None);
    }
}
