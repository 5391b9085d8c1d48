//! robots.txt (RFC 9309): which paths of a host the configured User-Agent may fetch, and a
//! cache of each origin's rules that is revalidated with a conditional request.
//!
//! Only the first [`ROBOTS_MAX_BYTES`] of a robots.txt are read and parsed (the RFC asks
//! crawlers to parse at least 500 KiB); a larger file is cut there, so a 10 MB robots.txt
//! costs 512 KiB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Bytes of a robots.txt that are read; the rest is never downloaded.
pub const ROBOTS_MAX_BYTES: usize = 512 * 1024;

/// A cached robots.txt is revalidated when older than the source's `every`, and at least this
/// often.
pub const ROBOTS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The rules of one robots.txt for one user agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RobotsRules {
    /// `(allow, pattern)`; empty allows everything.
    rules: Vec<(bool, String)>,
}

impl RobotsRules {
    pub fn allow_all() -> RobotsRules {
        RobotsRules::default()
    }

    /// The rules for `user_agent` (its product token, e.g. `sluice` of `sluice/0.1`) in
    /// `text`: the groups naming the token (case-insensitively), else the `*` groups.
    pub fn parse(text: &str, user_agent: &str) -> RobotsRules {
        let token = user_agent
            .split(['/', ' '])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut ours = Vec::new();
        let mut anyone = Vec::new();
        // The agents of the group being read, and whether its rules started (a user-agent
        // line after rules starts a new group).
        let mut agents: Vec<String> = Vec::new();
        let mut in_rules = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "user-agent" => {
                    if in_rules {
                        agents.clear();
                        in_rules = false;
                    }
                    agents.push(value.to_ascii_lowercase());
                }
                "allow" | "disallow" => {
                    in_rules = true;
                    if value.is_empty() {
                        continue;
                    }
                    let rule = (key == "allow", value.to_owned());
                    if agents.contains(&token) {
                        ours.push(rule.clone());
                    }
                    if agents.iter().any(|agent| agent == "*") {
                        anyone.push(rule);
                    }
                }
                _ => {}
            }
        }
        let named = text.lines().any(|line| {
            let line = line.split('#').next().unwrap_or_default();
            line.split_once(':').is_some_and(|(key, value)| {
                key.trim().eq_ignore_ascii_case("user-agent")
                    && value.trim().eq_ignore_ascii_case(&token)
            })
        });
        RobotsRules {
            rules: if named { ours } else { anyone },
        }
    }

    /// Whether `path` (path and query of a URL) may be fetched: the longest matching rule
    /// decides, and an allow wins a tie.
    pub fn allows(&self, path: &str) -> bool {
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern.as_bytes(), path.as_bytes()) {
                let length = pattern.len();
                best = match best {
                    Some((best_length, best_allow))
                        if best_length > length || (best_length == length && best_allow) =>
                    {
                        Some((best_length, best_allow))
                    }
                    _ => Some((length, *allow)),
                };
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

/// Whether `path` starts with `pattern`, where `*` matches any run of bytes and a final `$`
/// anchors the end.
fn matches(pattern: &[u8], path: &[u8]) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix(b"$") {
        Some(pattern) => (pattern, true),
        None => (pattern, false),
    };
    // reachable[i]: the pattern so far can end at path position i.
    let mut reachable = vec![false; path.len() + 1];
    reachable[0] = true;
    for &symbol in pattern {
        if symbol == b'*' {
            for index in 1..=path.len() {
                reachable[index] |= reachable[index - 1];
            }
        } else {
            for index in (1..=path.len()).rev() {
                reachable[index] = reachable[index - 1] && path[index - 1] == symbol;
            }
            reachable[0] = false;
        }
    }
    if anchored {
        reachable[path.len()]
    } else {
        reachable.iter().any(|&end| end)
    }
}

/// One origin's robots.txt as last fetched.
#[derive(Debug, Clone)]
pub struct CachedRobots {
    pub rules: Arc<RobotsRules>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub fetched_at: Instant,
}

/// The robots.txt of every origin the sources reach, shared by the check tasks.
#[derive(Debug, Clone, Default)]
pub struct RobotsCache {
    entries: Arc<Mutex<HashMap<String, CachedRobots>>>,
}

impl RobotsCache {
    pub fn get(&self, origin: &str) -> Option<CachedRobots> {
        self.lock().get(origin).cloned()
    }

    pub fn put(&self, origin: &str, entry: CachedRobots) {
        self.lock().insert(origin.to_owned(), entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedRobots>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_group_wins_over_the_star_group() {
        let text = "User-agent: *\nDisallow: /\n\nUser-agent: Sluice\nDisallow: /private\n";
        let rules = RobotsRules::parse(text, "sluice/0.1");
        assert!(rules.allows("/public/a.bin"));
        assert!(!rules.allows("/private/x"));
        let other = RobotsRules::parse(text, "otherbot/1");
        assert!(!other.allows("/public/a.bin"));
    }

    #[test]
    fn longest_match_decides_and_wildcards_work() {
        let text = "User-agent: *\nDisallow: /files/\nAllow: /files/public/\n\
                    Disallow: /*.tmp$\nDisallow:\n# comment\n";
        let rules = RobotsRules::parse(text, "sluice/0.1");
        assert!(!rules.allows("/files/secret.bin"));
        assert!(rules.allows("/files/public/a.bin"));
        assert!(!rules.allows("/x/y.tmp"));
        assert!(rules.allows("/x/y.tmp.bin"));
        assert!(rules.allows("/"));
        assert!(RobotsRules::parse("garbage\0\u{fffd}", "sluice").allows("/"));
    }

    #[test]
    fn consecutive_agents_share_a_group() {
        let text = "User-agent: a\nUser-agent: sluice\nDisallow: /x\nUser-agent: b\nAllow: /\n";
        assert!(!RobotsRules::parse(text, "sluice/0.1").allows("/x/1"));
    }
}
