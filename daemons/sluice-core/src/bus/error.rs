//! The named errors every sluice D-Bus method can fail with.
//!
//! Where a freedesktop name fits, it is used, as systemd's own services do:
//! `org.freedesktop.DBus.Error.AccessDenied`, `…InvalidArgs` and
//! `…InteractiveAuthorizationRequired`. The failures only sluice has are `org.sluice.Error.*`.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;
use zbus::{DBusError, fdo};

/// A failure reported to a D-Bus caller as a named error with a message.
///
/// `BusError::NotFound("job 42".into())` reaches the caller as
/// `org.sluice.Error.NotFound: job 42`. Proxies generated from the same interface definitions
/// turn those replies back into the matching variant (see the `From<zbus::Error>` impl), which
/// is why the `ZBus` variant exists: it carries transport failures and errors that are not ours.
#[derive(Debug)]
pub enum BusError {
    /// Transport failure or a reply with an error name sluice does not define.
    ZBus(zbus::Error),
    /// `org.sluice.Error.NotFound`: the job, download, source or file named in the call does
    /// not exist.
    NotFound(String),
    /// `org.freedesktop.DBus.Error.InvalidArgs`: an argument is empty, too long, malformed or
    /// outside what the daemon serves.
    InvalidArgument(String),
    /// `org.freedesktop.DBus.Error.AccessDenied`: polkit (or, where polkit is not installed,
    /// the group check) refused the caller.
    AccessDenied(String),
    /// `org.freedesktop.DBus.Error.InteractiveAuthorizationRequired`: polkit would allow the
    /// call after the caller authenticates, and the call did not allow interaction.
    InteractiveAuthorizationRequired(String),
    /// `org.sluice.Error.Busy`: the daemon cannot take the request now (shutting down, too many
    /// requests in flight).
    Busy(String),
    /// `org.sluice.Error.WrongState`: the object exists but is in a state where the request
    /// makes no sense, such as retrying a job that already succeeded.
    WrongState(String),
    /// `org.sluice.Error.QueueFull`: the queue the request would add to is at its limit
    /// (`[scraper] max_pending` for downloads); nothing was added. Try again once some of its
    /// jobs have finished.
    QueueFull(String),
    /// `org.sluice.Error.Internal`: the daemon failed while handling the request; the message
    /// says what failed.
    Internal(String),
}

/// Makes a variant from an error's message.
type MakeError = fn(String) -> BusError;

/// Every error name sluice replies with, beside the variant it comes from (without message).
const NAMES: [(&str, MakeError); 8] = [
    ("org.sluice.Error.NotFound", BusError::NotFound),
    (
        "org.freedesktop.DBus.Error.InvalidArgs",
        BusError::InvalidArgument,
    ),
    (
        "org.freedesktop.DBus.Error.AccessDenied",
        BusError::AccessDenied,
    ),
    (
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        BusError::InteractiveAuthorizationRequired,
    ),
    ("org.sluice.Error.Busy", BusError::Busy),
    ("org.sluice.Error.WrongState", BusError::WrongState),
    ("org.sluice.Error.QueueFull", BusError::QueueFull),
    ("org.sluice.Error.Internal", BusError::Internal),
];

impl BusError {
    /// The error name without its prefix, for logs.
    pub fn short_name(&self) -> &'static str {
        match self {
            BusError::ZBus(_) => "ZBus",
            BusError::NotFound(_) => "NotFound",
            BusError::InvalidArgument(_) => "InvalidArgs",
            BusError::AccessDenied(_) => "AccessDenied",
            BusError::InteractiveAuthorizationRequired(_) => "InteractiveAuthorizationRequired",
            BusError::Busy(_) => "Busy",
            BusError::WrongState(_) => "WrongState",
            BusError::QueueFull(_) => "QueueFull",
            BusError::Internal(_) => "Internal",
        }
    }

    /// The full error name a caller receives.
    fn full_name(&self) -> Option<&'static str> {
        let index = match self {
            BusError::ZBus(_) => return None,
            BusError::NotFound(_) => 0,
            BusError::InvalidArgument(_) => 1,
            BusError::AccessDenied(_) => 2,
            BusError::InteractiveAuthorizationRequired(_) => 3,
            BusError::Busy(_) => 4,
            BusError::WrongState(_) => 5,
            BusError::QueueFull(_) => 6,
            BusError::Internal(_) => 7,
        };
        Some(NAMES[index].0)
    }

    fn message(&self) -> Option<&str> {
        match self {
            BusError::ZBus(zbus::Error::MethodError(_, message, _)) => message.as_deref(),
            BusError::ZBus(zbus::Error::FDO(error)) => error.description(),
            BusError::ZBus(_) => None,
            BusError::NotFound(message)
            | BusError::InvalidArgument(message)
            | BusError::AccessDenied(message)
            | BusError::InteractiveAuthorizationRequired(message)
            | BusError::Busy(message)
            | BusError::WrongState(message)
            | BusError::QueueFull(message)
            | BusError::Internal(message) => Some(message),
        }
    }
}

impl DBusError for BusError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        if let BusError::ZBus(zbus::Error::FDO(error)) = self {
            return error.create_reply(call);
        }
        let message = match self {
            BusError::ZBus(error) => self
                .message()
                .map_or_else(|| error.to_string(), str::to_owned),
            _ => self.message().unwrap_or_default().to_owned(),
        };
        Message::error(call, self.name()).build(&(message,))
    }

    fn name(&self) -> ErrorName<'_> {
        match (self, self.full_name()) {
            (_, Some(name)) => ErrorName::from_static_str_unchecked(name),
            (BusError::ZBus(zbus::Error::MethodError(name, _, _)), None) => name.inner().clone(),
            (BusError::ZBus(zbus::Error::FDO(error)), None) => error.name(),
            // What zbus's own derive names a transport failure.
            (_, None) => ErrorName::from_static_str_unchecked("org.freedesktop.zbus.Error"),
        }
    }

    fn description(&self) -> Option<&str> {
        self.message()
    }
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let description = self.description().unwrap_or("no description");
        write!(f, "{}: {description}", self.name())
    }
}

impl std::error::Error for BusError {}

/// A reply a proxy received becomes the variant its name stands for; any other failure stays
/// a `ZBus` error.
impl From<zbus::Error> for BusError {
    fn from(error: zbus::Error) -> BusError {
        let (name, message) = match &error {
            zbus::Error::MethodError(name, message, _) => (
                name.as_str().to_owned(),
                message.clone().unwrap_or_default(),
            ),
            zbus::Error::FDO(fdo_error) => {
                let fdo_error: &fdo::Error = fdo_error;
                (
                    fdo_error.name().as_str().to_owned(),
                    fdo_error.description().unwrap_or_default().to_owned(),
                )
            }
            _ => return BusError::ZBus(error),
        };
        match NAMES.iter().find(|(known, _)| *known == name) {
            Some((_, variant)) => variant(message),
            None => BusError::ZBus(error),
        }
    }
}

impl From<fdo::Error> for BusError {
    fn from(error: fdo::Error) -> BusError {
        BusError::from(zbus::Error::FDO(Box::new(error)))
    }
}

/// A policy refusal reaches a D-Bus caller as `org.freedesktop.DBus.Error.InvalidArgs` with a
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
    fn error_names_are_freedesktop_where_they_fit_and_sluice_otherwise() {
        let error = BusError::NotFound("job 42 does not exist".into());
        assert_eq!(error.name().as_str(), "org.sluice.Error.NotFound");
        assert_eq!(error.description(), Some("job 42 does not exist"));
        let error = BusError::InvalidArgument("url must not be empty".into());
        assert_eq!(
            error.name().as_str(),
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
        assert_eq!(error.short_name(), "InvalidArgs");
        let error = BusError::AccessDenied("no".into());
        assert_eq!(
            error.name().as_str(),
            "org.freedesktop.DBus.Error.AccessDenied"
        );
        let error = BusError::QueueFull("the download queue is full".into());
        assert_eq!(error.name().as_str(), "org.sluice.Error.QueueFull");
        assert_eq!(error.short_name(), "QueueFull");
        assert_eq!(
            error.to_string(),
            "org.sluice.Error.QueueFull: the download queue is full"
        );
    }

    #[test]
    fn replies_turn_back_into_their_variant() {
        for (name, _) in NAMES {
            let error = zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).unwrap(),
                Some("why".into()),
                Message::method_call("/", "M").build(&()).unwrap(),
            );
            let back = BusError::from(error);
            assert_eq!(back.name().as_str(), name);
            assert_eq!(back.description(), Some("why"));
        }
        let denied = BusError::from(fdo::Error::AccessDenied("polkit said no".into()));
        assert!(matches!(denied, BusError::AccessDenied(ref m) if m == "polkit said no"));
        let other = BusError::from(fdo::Error::Failed("x".into()));
        assert!(matches!(other, BusError::ZBus(_)));
    }
}
