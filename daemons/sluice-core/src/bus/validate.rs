//! Generic argument checks shared by the D-Bus objects (text bounds, ids), so every method
//! rejects bad input the same way before anything reaches a daemon's main loop. The rules for
//! what a download, a name or a rescan path may be live in [`crate::policy`].

use super::BusError;

/// Refuses an empty value or one longer than `max_bytes`, naming the argument in the message.
pub fn require_text(argument: &str, value: &str, max_bytes: usize) -> Result<(), BusError> {
    if value.is_empty() {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not be empty"
        )));
    }
    if value.len() > max_bytes {
        return Err(BusError::InvalidArgument(format!(
            "{argument} is {} bytes long, the limit is {max_bytes}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not contain control characters"
        )));
    }
    Ok(())
}

/// Refuses the id 0, which no job or download ever has (SQLite rowids start at 1).
pub fn require_id(argument: &str, id: u64) -> Result<(), BusError> {
    if id == 0 {
        return Err(BusError::InvalidArgument(format!(
            "{argument} must not be 0"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_invalid_argument(result: Result<impl std::fmt::Debug, BusError>) -> bool {
        matches!(result, Err(BusError::InvalidArgument(_)))
    }

    #[test]
    fn text_must_be_non_empty_bounded_and_printable() {
        assert!(require_text("url", "x", 4).is_ok());
        assert!(is_invalid_argument(require_text("url", "", 4)));
        assert!(is_invalid_argument(require_text("url", "12345", 4)));
        assert!(is_invalid_argument(require_text("url", "a\nb", 4)));
    }

    #[test]
    fn id_zero_is_refused() {
        assert!(require_id("job_id", 1).is_ok());
        assert!(is_invalid_argument(require_id("job_id", 0)));
    }
}
