//! What a client that waits for a job may ask: how long (`?wait=`), and where to resume a job's
//! event stream (`Last-Event-ID`).

use std::time::Duration;

use super::{PolicyError, truncate_to_bytes};

/// Parses a wait such as `30s`, `500ms`, `2m` or a bare number of seconds (`30`), at most
/// `max` (`[web] max_wait`). `0` (or `0s`) means "do not wait".
pub fn check_wait(text: &str, max: Duration) -> Result<Duration, PolicyError> {
    let trimmed = text.trim();
    let parsed = match trimmed.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(trimmed).map_err(|error| error.to_string()),
    };
    let wait = parsed.map_err(|error| {
        PolicyError::InvalidDuration(format!(
            "wait {:?} is not a duration ({error}); write e.g. \"30s\", \"500ms\" or \"2m\"",
            truncate_to_bytes(text, 100)
        ))
    })?;
    if wait > max {
        return Err(PolicyError::OutOfRange(format!(
            "wait {} is longer than the longest wait allowed, {} ([web] max_wait)",
            humantime::format_duration(wait),
            humantime::format_duration(max)
        )));
    }
    Ok(wait)
}

/// Parses a `Last-Event-ID` a client sends back to resume a job's event stream: the id of the
/// last event it received, a whole number ≥ 0 as the stream sent it.
pub fn check_last_event_id(text: &str) -> Result<i64, PolicyError> {
    let trimmed = text.trim();
    match trimmed.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(PolicyError::InvalidEventId(format!(
            "Last-Event-ID {:?} is not an event id of this stream (a whole number from an \
             `id:` line); reconnect without it to replay the job's events from the start",
            truncate_to_bytes(text, 100)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_durations_within_the_maximum() {
        let max = Duration::from_secs(600);
        assert_eq!(check_wait("30s", max), Ok(Duration::from_secs(30)));
        assert_eq!(check_wait("30", max), Ok(Duration::from_secs(30)));
        assert_eq!(check_wait("500ms", max), Ok(Duration::from_millis(500)));
        assert_eq!(check_wait("0", max), Ok(Duration::ZERO));
        assert_eq!(check_wait("10m", max), Ok(max));
        assert_eq!(
            check_wait("10m 1s", max).unwrap_err().code(),
            "out_of_range"
        );
        assert_eq!(
            check_wait("soon", max).unwrap_err().code(),
            "invalid_duration"
        );
        assert_eq!(
            check_wait("-5s", max).unwrap_err().code(),
            "invalid_duration"
        );
        assert_eq!(check_wait("", max).unwrap_err().code(), "invalid_duration");
    }

    #[test]
    fn event_ids_are_whole_numbers() {
        assert_eq!(check_last_event_id("0"), Ok(0));
        assert_eq!(check_last_event_id(" 42 "), Ok(42));
        for garbage in ["", "-1", "abc", "1.5", "99999999999999999999", "4\u{0}2"] {
            assert_eq!(
                check_last_event_id(garbage).unwrap_err().code(),
                "invalid_event_id",
                "{garbage:?}"
            );
        }
    }
}
