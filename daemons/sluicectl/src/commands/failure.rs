//! `Failure`: how a command fails — the exit status, the message for people and, for an input
//! the policy refused, its code — and the conversions from every error the commands meet.

use serde_json::{Value, json};
use sluice_core::bus::BusError;
use sluice_core::config::ConfigError;
use sluice_core::policy::{self, PolicyError};
use sluice_core::store::documents::DocumentError;
use sluice_core::store::downloads::DownloadError;
use sluice_core::store::jobs::JobError;
use sluice_core::store::{SourceError, StoreError};

use crate::config_file::EditError;
use crate::exit;

/// A failed command: the exit status and what to tell the person.
#[derive(Debug)]
pub struct Failure {
    pub exit_status: u8,
    pub message: String,
    /// The policy's code for a refused input (`invalid_url`, ...), shown as `reason` in
    /// `--json` error output next to the exit status's `code`.
    pub reason: Option<&'static str>,
}

impl Failure {
    pub(super) fn new(exit_status: u8, message: impl Into<String>) -> Failure {
        Failure {
            exit_status,
            message: message.into(),
            reason: None,
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(exit::INVALID_ARGUMENT, message)
    }

    /// The `error` object of `--json` output: `code` from the exit status, plus `reason`
    /// when the input policy refused an argument.
    pub fn json_error(&self) -> Value {
        let mut error = json!({ "code": self.code_name(), "message": self.message });
        if let Some(reason) = self.reason {
            error["reason"] = Value::from(reason);
        }
        json!({ "error": error })
    }

    /// The `code` in `--json` error output.
    pub fn code_name(&self) -> &'static str {
        match self.exit_status {
            exit::NOT_FOUND => "not_found",
            exit::INVALID_ARGUMENT => "invalid_argument",
            exit::DAEMON_UNAVAILABLE => "unavailable",
            exit::USAGE => "usage",
            exit::QUEUE_FULL => "queue_full",
            _ => "error",
        }
    }
}

impl From<PolicyError> for Failure {
    fn from(error: PolicyError) -> Failure {
        Failure {
            reason: Some(error.code()),
            ..Failure::invalid(error.to_string())
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Failure {
        Failure::new(exit::ERROR, format!("invalid configuration: {error}"))
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::new(exit::ERROR, format!("database: {error}"))
    }
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Failure {
        match error {
            JobError::NotFound(_) => Failure::new(exit::NOT_FOUND, error.to_string()),
            JobError::InvalidArgument(_) | JobError::InvalidState { .. } => {
                Failure::invalid(error.to_string())
            }
            JobError::LeaseLost { .. } => Failure::new(exit::ERROR, error.to_string()),
            JobError::QueueFull(full) => Failure::new(exit::QUEUE_FULL, full.to_string()),
            JobError::Store(error) => error.into(),
        }
    }
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        match error {
            DownloadError::NotFound(_) | DownloadError::BundleNotFound(_) => {
                Failure::new(exit::NOT_FOUND, error.to_string())
            }
            DownloadError::InvalidArgument(_)
            | DownloadError::InvalidState { .. }
            | DownloadError::BundleInvalidState { .. }
            | DownloadError::PartOfBundle { .. } => Failure::invalid(error.to_string()),
            DownloadError::Job(error) => error.into(),
            DownloadError::Store(error) => error.into(),
        }
    }
}

impl From<SourceError> for Failure {
    fn from(error: SourceError) -> Failure {
        match error {
            SourceError::NotFound(_) | SourceError::Disabled(_) => {
                Failure::new(exit::NOT_FOUND, error.to_string())
            }
            SourceError::Download(error) => error.into(),
            SourceError::Store(error) => error.into(),
        }
    }
}

impl From<DocumentError> for Failure {
    fn from(error: DocumentError) -> Failure {
        match error {
            DocumentError::NotFound(_) | DocumentError::FileNotFound(_) => {
                Failure::new(exit::NOT_FOUND, error.to_string())
            }
            DocumentError::InvalidArgument(_) => Failure::invalid(error.to_string()),
            DocumentError::Job(error) => error.into(),
            DocumentError::Store(error) => error.into(),
        }
    }
}

impl From<BusError> for Failure {
    fn from(error: BusError) -> Failure {
        match error {
            BusError::NotFound(message) => Failure::new(exit::NOT_FOUND, message),
            BusError::InvalidArgument(message) => Failure {
                reason: policy::code_in_message(&message),
                ..Failure::invalid(message)
            },
            BusError::WrongState(message) => Failure::invalid(message),
            BusError::AccessDenied(message) => Failure::new(
                exit::ERROR,
                format!(
                    "permission denied: {message} (run as root or as a member of group sluice, \
                     or ask the administrator for a polkit rule)"
                ),
            ),
            BusError::InteractiveAuthorizationRequired(message) => Failure::new(
                exit::ERROR,
                format!("authentication required: {message} (run as root, e.g. with sudo)"),
            ),
            BusError::Busy(message) => Failure::new(exit::DAEMON_UNAVAILABLE, message),
            BusError::QueueFull(message) => Failure::new(exit::QUEUE_FULL, message),
            BusError::Internal(message) => {
                Failure::new(exit::ERROR, format!("the daemon failed: {message}"))
            }
            BusError::ZBus(error) => Failure::new(
                exit::DAEMON_UNAVAILABLE,
                format!("D-Bus call failed: {error}"),
            ),
        }
    }
}

impl From<EditError> for Failure {
    fn from(error: EditError) -> Failure {
        match error {
            EditError::InvalidCount { .. } => Failure::invalid(error.to_string()),
            _ => Failure::new(exit::ERROR, error.to_string()),
        }
    }
}
