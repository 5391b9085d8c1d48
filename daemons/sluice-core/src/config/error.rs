//! The one error type of configuration loading, and the place in a file that an error points at.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded. Every variant but `Read` names the place in the
/// file — path, line, column and dotted key — so a person can go straight to it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not valid TOML.
    #[error("{location}: invalid TOML: {message}")]
    Syntax { location: Location, message: String },
    /// Valid TOML that does not fit the configuration's shape: an unknown key, a value of the
    /// wrong type, a missing required key.
    #[error("{location}: {message}")]
    Schema { location: Location, message: String },
    /// A value of the right type that is not acceptable: a relative path, a duration that
    /// does not parse, a zero limit, an unknown mode, two settings that contradict each other.
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

impl ConfigError {
    /// Where in which file the error is, when it is about the content of a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { location, .. }
            | ConfigError::Schema { location, .. }
            | ConfigError::Invalid { location, .. } => Some(location),
        }
    }
}

/// A place in a configuration file. Lines and columns count from 1; columns count characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, or [`super::BUILT_IN_DEFAULTS_ORIGIN`] for a value that came from the
    /// compiled-in defaults.
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The dotted key, e.g. `store.busy_timeout` or `watch[1].mode`; `None` only for a
    /// syntax error that is not inside any key.
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}: line {}, column {}",
            self.path.display(),
            self.line,
            self.column
        )?;
        match &self.key {
            Some(key) => write!(formatter, ", key `{key}`"),
            None => write!(formatter, ", outside any key"),
        }
    }
}
