//! The named errors every sluice D-Bus method can fail with (`org.sluice.Error.*`).

use zbus::DBusError;

/// A failure reported to a D-Bus caller as a named error with a message.
///
/// The variant name becomes the error name, so `BusError::NotFound("job 42".into())` reaches the
/// caller as `org.sluice.Error.NotFound: job 42`. Proxies generated from the same interface
/// definitions turn those replies back into the matching variant, which is why the `ZBus`
/// variant exists: it carries transport failures and errors that are not ours.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.sluice.Error")]
pub enum BusError {
    /// Transport failure or a reply with an error name outside `org.sluice.Error`.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The job, download, source or file named in the call does not exist.
    NotFound(String),
    /// An argument is empty, too long, malformed or outside what the daemon serves.
    InvalidArgument(String),
    /// The caller is neither root, the daemon's own user, nor a member of group `sluice`.
    AccessDenied(String),
    /// The daemon cannot take the request now (shutting down, too many requests in flight).
    Busy(String),
    /// The object exists but is in a state where the request makes no sense, such as retrying
    /// a job that already succeeded.
    WrongState(String),
    /// The queue the request would add to is at its limit (`[scraper] max_pending` for
    /// downloads); nothing was added. Try again once some of its jobs have finished.
    QueueFull(String),
    /// The daemon failed while handling the request; the message says what failed.
    Internal(String),
}

impl BusError {
    /// The error name without the `org.sluice.Error.` prefix, for logs.
    pub fn short_name(&self) -> &'static str {
        match self {
            BusError::ZBus(_) => "ZBus",
            BusError::NotFound(_) => "NotFound",
            BusError::InvalidArgument(_) => "InvalidArgument",
            BusError::AccessDenied(_) => "AccessDenied",
            BusError::Busy(_) => "Busy",
            BusError::WrongState(_) => "WrongState",
            BusError::QueueFull(_) => "QueueFull",
            BusError::Internal(_) => "Internal",
        }
    }
}

/// A policy refusal reaches a D-Bus caller as `org.sluice.Error.InvalidArgument` with a
/// message that starts with the policy's machine code (`invalid_url: url "ftp://…" has …`).
impl From<crate::policy::PolicyError> for BusError {
    fn from(error: crate::policy::PolicyError) -> BusError {
        BusError::InvalidArgument(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_carry_the_sluice_prefix_and_the_message() {
        let error = BusError::NotFound("job 42 does not exist".into());
        assert_eq!(error.name().as_str(), "org.sluice.Error.NotFound");
        assert_eq!(error.description(), Some("job 42 does not exist"));
        let error = BusError::InvalidArgument("url must not be empty".into());
        assert_eq!(error.name().as_str(), "org.sluice.Error.InvalidArgument");
        assert_eq!(error.short_name(), "InvalidArgument");
        let error = BusError::QueueFull("the download queue is full".into());
        assert_eq!(error.name().as_str(), "org.sluice.Error.QueueFull");
        assert_eq!(error.short_name(), "QueueFull");
    }
}
