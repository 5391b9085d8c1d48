//! Builds the one-line `STATUS=` text that `systemctl status` shows, so every daemon reports
//! in the same shape: what it is doing, then the queue, then the last error.

use std::fmt;

/// A `STATUS=` line: `"<activity>; queue <q> queued, <r> running; <detail>…; last error: <e>"`.
///
/// ```
/// use sluice_core::runtime::StatusLine;
/// let line = StatusLine::new("idle").queue(12, 3).last_error(Some("disk full"));
/// assert_eq!(line.to_string(), "idle; queue 12 queued, 3 running; last error: disk full");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    activity: String,
    queue: Option<(u64, u64)>,
    details: Vec<String>,
    last_error: Option<String>,
}

/// Longer lines are cut: `systemctl status` shows one line, and an error that quotes a whole
/// file would push the useful part out of sight.
const MAX_STATUS_CHARS: usize = 400;

impl StatusLine {
    /// Starts with what the daemon is doing ("idle", "scanning /srv/inbox", "stopping").
    pub fn new(activity: impl Into<String>) -> StatusLine {
        StatusLine {
            activity: activity.into(),
            queue: None,
            details: Vec::new(),
            last_error: None,
        }
    }

    /// Adds the job queue depth: jobs waiting and jobs being worked on.
    pub fn queue(mut self, queued: u64, running: u64) -> StatusLine {
        self.queue = Some((queued, running));
        self
    }

    /// Adds a free-form part ("watching 4 folders", "job 42 attempt 2").
    pub fn detail(mut self, detail: impl Into<String>) -> StatusLine {
        self.details.push(detail.into());
        self
    }

    /// Adds the most recent error, if there is one.
    pub fn last_error(mut self, error: Option<&str>) -> StatusLine {
        self.last_error = error.map(str::to_owned);
        self
    }
}

impl fmt::Display for StatusLine {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.activity.clone();
        if let Some((queued, running)) = self.queue {
            line.push_str(&format!("; queue {queued} queued, {running} running"));
        }
        for detail in &self.details {
            line.push_str("; ");
            line.push_str(detail);
        }
        if let Some(error) = &self.last_error {
            line.push_str("; last error: ");
            line.push_str(error);
        }
        let line: String = line
            .split(['\n', '\r'])
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if line.chars().count() > MAX_STATUS_CHARS {
            let cut: String = line.chars().take(MAX_STATUS_CHARS - 1).collect();
            write!(formatter, "{cut}…")
        } else {
            formatter.write_str(&line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_appear_in_a_fixed_order() {
        let line = StatusLine::new("scanning /srv/inbox")
            .last_error(Some("x"))
            .detail("4 folders")
            .queue(0, 1);
        assert_eq!(
            line.to_string(),
            "scanning /srv/inbox; queue 0 queued, 1 running; 4 folders; last error: x"
        );
        assert_eq!(StatusLine::new("idle").to_string(), "idle");
    }

    #[test]
    fn long_or_multi_line_errors_stay_one_bounded_line() {
        let error = format!("parse error:\n{}", "y".repeat(2000));
        let line = StatusLine::new("idle").last_error(Some(&error)).to_string();
        assert!(!line.contains('\n'));
        assert_eq!(line.chars().count(), MAX_STATUS_CHARS);
        assert!(line.starts_with("idle; last error: parse error: yyy"));
        assert!(line.ends_with('…'));
    }
}
