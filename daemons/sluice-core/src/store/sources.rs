//! Sources: the configured pages and feeds the scraper checks on a schedule. The
//! configuration says what a source is; this table says where it stands: when it is checked
//! next, the validators of the last answer (ETag, Last-Modified, content hash), the outcome
//! of the last check, and which links or feed entries it has already seen
//! (`source_items`, migration 6).
//!
//! **An item and the downloads it becomes are inserted in one transaction** (with the queue
//! limit counted inside it), so each link or entry becomes downloads exactly once, however
//! often the page is read again and whenever the scraper is killed.

use std::time::Duration;

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use super::downloads::{CreatedDownload, DOWNLOAD_JOB_KIND, DownloadError, insert_download_in};
use super::jobs::{self, QueueFull};
use super::{Store, StoreError, duration_ms, now_ms};
use crate::policy::ValidDownload;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {0:?} is not configured")]
    NotFound(String),
    #[error("source {0:?} is disabled (no longer in the configuration)")]
    Disabled(String),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for SourceError {
    fn from(error: rusqlite::Error) -> Self {
        SourceError::Store(StoreError::from(error))
    }
}

/// A source as the configuration defines it (the scraper turns `SourceConfig` into this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDefinition {
    pub name: String,
    pub url: String,
    /// `page`, `links` or `feed`.
    pub mode: String,
    pub every: Duration,
    pub selector: Option<String>,
    pub pattern: Option<String>,
}

/// One row of `sources`: its definition, schedule, validators and status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub mode: String,
    pub every_ms: i64,
    pub selector: Option<String>,
    pub pattern: Option<String>,
    /// False once the source left the configuration; its history stays.
    pub enabled: bool,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_hash: Option<String>,
    /// Checks recorded so far.
    pub checks: u64,
    /// `unchanged`, `changed`, `partial`, `failed`, `disallowed` or `deferred`; `None`
    /// before the first check.
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_checked_at_ms: Option<i64>,
    pub last_changed_at_ms: Option<i64>,
    pub next_check_at_ms: i64,
    /// Links or entries seen so far.
    pub items_seen: u64,
    /// Downloads this source created.
    pub downloads_made: u64,
}

/// What [`Store::sync_sources`] changed, by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSync {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub disabled: Vec<String>,
}

/// A link or feed entry found by a check, with the downloads it becomes when it is new (none
/// when its URLs were refused by the policy: it is then only remembered as seen).
#[derive(Debug, Clone)]
pub struct SourceItem {
    /// The absolute URL of a link, or `entry:` and the id of a feed entry.
    pub key: String,
    pub downloads: Vec<ValidDownload>,
}

/// What [`Store::record_source_items`] did.
#[derive(Debug, Clone, Default)]
pub struct RecordedItems {
    pub created: Vec<CreatedDownload>,
    /// New items remembered (with or without downloads).
    pub new_items: u64,
    pub already_seen: u64,
    /// The download queue reached `[scraper] max_pending`: the items from this one on were not
    /// recorded and wait for the next check.
    pub queue_full: Option<QueueFull>,
}

/// What a check leaves of the validators of the source's last answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validators {
    /// An error: the previous validators stay.
    Keep,
    /// The answer was handled completely: the next check is conditional on it.
    Set {
        etag: Option<String>,
        last_modified: Option<String>,
        content_hash: String,
    },
    /// The answer was handled only in part (queue full, per-check cap): the next check must
    /// read the page again in full.
    Clear,
}

/// The end of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCheck {
    pub outcome: &'static str,
    pub error: Option<String>,
    pub validators: Validators,
    pub changed: bool,
    pub next_check_at_ms: i64,
}

const SOURCE_COLUMNS: &str = "id, name, url, mode, every_ms, selector, pattern, enabled, etag, \
     last_modified, content_hash, checks, last_outcome, last_error, last_checked_at, \
     last_changed_at, next_check_at, items_seen, downloads_made";

impl Store {
    /// Makes the table match the configuration: new names are added (first check after
    /// `first_check_in(every)`, so a boot does not fire every source at once), changed ones
    /// updated (a new URL forgets the old validators; a new selector or pattern forgets the
    /// content hash, so the page is read again with it; a shorter `every` brings the next
    /// check forward), and names no longer configured are disabled, keeping what they saw.
    pub fn sync_sources(
        &mut self,
        definitions: &[SourceDefinition],
        first_check_in: &mut dyn FnMut(Duration) -> Duration,
    ) -> Result<SourceSync, SourceError> {
        self.write(|transaction| {
            let now = now_ms();
            let mut sync = SourceSync::default();
            let existing: Vec<SourceStatus> = transaction
                .prepare_cached(&format!("SELECT {SOURCE_COLUMNS} FROM sources"))?
                .query_map([], source_from_row)?
                .collect::<Result<_, _>>()?;
            for definition in definitions {
                let every_ms = duration_ms(definition.every);
                let Some(old) = existing.iter().find(|row| row.name == definition.name) else {
                    let first = now + duration_ms(first_check_in(definition.every));
                    transaction.execute(
                        "INSERT INTO sources (name, url, mode, every_ms, selector, pattern,
                             enabled, next_check_at, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?8)",
                        params![
                            definition.name,
                            definition.url,
                            definition.mode,
                            every_ms,
                            definition.selector,
                            definition.pattern,
                            first,
                            now
                        ],
                    )?;
                    sync.added.push(definition.name.clone());
                    continue;
                };
                let same = old.url == definition.url
                    && old.mode == definition.mode
                    && old.every_ms == every_ms
                    && old.selector == definition.selector
                    && old.pattern == definition.pattern
                    && old.enabled;
                if same {
                    continue;
                }
                let url_changed = old.url != definition.url || old.mode != definition.mode;
                let reading_changed = url_changed
                    || old.selector != definition.selector
                    || old.pattern != definition.pattern;
                let mut next = old.next_check_at_ms;
                if let Some(last) = old.last_checked_at_ms {
                    next = next.min(last + every_ms);
                }
                if !old.enabled {
                    next = next.max(now + duration_ms(first_check_in(definition.every)));
                }
                transaction.execute(
                    "UPDATE sources SET url = ?2, mode = ?3, every_ms = ?4, selector = ?5,
                         pattern = ?6, enabled = 1, next_check_at = ?7, updated_at = ?8,
                         etag = CASE WHEN ?9 THEN NULL ELSE etag END,
                         last_modified = CASE WHEN ?9 THEN NULL ELSE last_modified END,
                         content_hash = CASE WHEN ?10 THEN NULL ELSE content_hash END
                     WHERE id = ?1",
                    params![
                        old.id,
                        definition.url,
                        definition.mode,
                        every_ms,
                        definition.selector,
                        definition.pattern,
                        next,
                        now,
                        url_changed,
                        reading_changed
                    ],
                )?;
                sync.changed.push(definition.name.clone());
            }
            for old in &existing {
                if old.enabled && !definitions.iter().any(|new| new.name == old.name) {
                    transaction.execute(
                        "UPDATE sources SET enabled = 0, updated_at = ?2 WHERE id = ?1",
                        params![old.id, now],
                    )?;
                    sync.disabled.push(old.name.clone());
                }
            }
            Ok(sync)
        })
    }

    /// Enabled sources whose check is overdue by more than `slack` are moved to
    /// `now + spread(every)`: after a restart, the sources that came due while the scraper was
    /// down are spread out instead of all fired at once. Returns how many moved.
    pub fn spread_overdue_sources(
        &mut self,
        slack: Duration,
        spread: &mut dyn FnMut(Duration) -> Duration,
    ) -> Result<u64, SourceError> {
        self.write(|transaction| {
            let now = now_ms();
            let overdue: Vec<(i64, i64)> = transaction
                .prepare_cached(
                    "SELECT id, every_ms FROM sources WHERE enabled AND next_check_at < ?1",
                )?
                .query_map([now - duration_ms(slack)], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            for (id, every_ms) in &overdue {
                let every = Duration::from_millis((*every_ms).max(0) as u64);
                transaction.execute(
                    "UPDATE sources SET next_check_at = ?2 WHERE id = ?1",
                    params![id, now + duration_ms(spread(every))],
                )?;
            }
            Ok(overdue.len() as u64)
        })
    }

    /// Every source, enabled or not, by name.
    pub fn list_sources(&self) -> Result<Vec<SourceStatus>, SourceError> {
        Ok(self
            .connection()
            .prepare_cached(&format!(
                "SELECT {SOURCE_COLUMNS} FROM sources ORDER BY name"
            ))?
            .query_map([], source_from_row)?
            .collect::<Result<_, _>>()?)
    }

    pub fn get_source(&self, name: &str) -> Result<SourceStatus, SourceError> {
        self.connection()
            .prepare_cached(&format!(
                "SELECT {SOURCE_COLUMNS} FROM sources WHERE name = ?1"
            ))?
            .query_row([name], source_from_row)
            .optional()?
            .ok_or_else(|| SourceError::NotFound(name.to_owned()))
    }

    /// Enabled sources whose next check is at or before `now_ms`, soonest first.
    pub fn due_sources(&self, now_ms: i64) -> Result<Vec<SourceStatus>, SourceError> {
        Ok(self
            .connection()
            .prepare_cached(&format!(
                "SELECT {SOURCE_COLUMNS} FROM sources
                 WHERE enabled AND next_check_at <= ?1 ORDER BY next_check_at, id"
            ))?
            .query_map([now_ms], source_from_row)?
            .collect::<Result<_, _>>()?)
    }

    /// Makes an enabled source due now (`ScrapeNow`) and returns it, with the number its
    /// check will have once recorded (`checks + 1`).
    pub fn check_source_now(&mut self, name: &str) -> Result<(SourceStatus, u64), SourceError> {
        self.write(|transaction| {
            let source = transaction
                .prepare_cached(&format!(
                    "SELECT {SOURCE_COLUMNS} FROM sources WHERE name = ?1"
                ))?
                .query_row([name], source_from_row)
                .optional()?
                .ok_or_else(|| SourceError::NotFound(name.to_owned()))?;
            if !source.enabled {
                return Err(SourceError::Disabled(name.to_owned()));
            }
            transaction.execute(
                "UPDATE sources SET next_check_at = min(next_check_at, ?2) WHERE id = ?1",
                params![source.id, now_ms()],
            )?;
            let checks = source.checks + 1;
            Ok((source, checks))
        })
    }

    /// Which of `keys` the source has not seen yet (in the order given).
    pub fn unseen_source_items(
        &self,
        source_id: i64,
        keys: &[String],
    ) -> Result<Vec<bool>, SourceError> {
        let mut statement = self
            .connection()
            .prepare_cached("SELECT 1 FROM source_items WHERE source_id = ?1 AND item_key = ?2")?;
        keys.iter()
            .map(|key| {
                Ok(statement
                    .query_row(params![source_id, key], |_| Ok(()))
                    .optional()?
                    .is_none())
            })
            .collect()
    }

    /// Remembers the new items among `items` and creates their downloads, in one
    /// transaction, while the download queue has room under `max_pending`; the first item
    /// that does not fit stops the batch, and it and the rest are left for the next check.
    pub fn record_source_items(
        &mut self,
        source_id: i64,
        items: &[SourceItem],
        max_pending: u32,
    ) -> Result<RecordedItems, SourceError> {
        let max_attempts = self.options().max_attempts;
        self.write(|transaction| {
            let now = now_ms();
            let mut recorded = RecordedItems::default();
            let mut room = jobs::room_for(transaction, DOWNLOAD_JOB_KIND, max_pending)?;
            for item in items {
                if seen(transaction, source_id, &item.key)? {
                    recorded.already_seen += 1;
                    continue;
                }
                if (item.downloads.len() as u64) > room {
                    recorded.queue_full = Some(QueueFull {
                        kind: DOWNLOAD_JOB_KIND.to_owned(),
                        pending: u64::from(max_pending) - room,
                        limit: max_pending,
                    });
                    break;
                }
                let mut first_download = None;
                for download in &item.downloads {
                    let attempts = download.max_attempts().unwrap_or(max_attempts);
                    let created = insert_download_in(transaction, download, attempts, None, now)?;
                    first_download.get_or_insert(created.download_id);
                    recorded.created.push(created);
                    room -= 1;
                }
                transaction
                    .prepare_cached(
                        "INSERT INTO source_items (source_id, item_key, download_id, seen_at)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![source_id, item.key, first_download, now])?;
                recorded.new_items += 1;
            }
            transaction.execute(
                "UPDATE sources SET items_seen = items_seen + ?2,
                     downloads_made = downloads_made + ?3 WHERE id = ?1",
                params![
                    source_id,
                    recorded.new_items as i64,
                    recorded.created.len() as i64
                ],
            )?;
            Ok(recorded)
        })
    }

    /// Records the end of a check and the time of the next one; returns the updated row.
    pub fn finish_source_check(
        &mut self,
        source_id: i64,
        check: &SourceCheck,
    ) -> Result<SourceStatus, SourceError> {
        self.write(|transaction| {
            let now = now_ms();
            transaction.execute(
                "UPDATE sources SET checks = checks + 1, last_outcome = ?2, last_error = ?3,
                     last_checked_at = ?4,
                     last_changed_at = CASE WHEN ?5 THEN ?4 ELSE last_changed_at END,
                     next_check_at = ?6, updated_at = ?4
                 WHERE id = ?1",
                params![
                    source_id,
                    check.outcome,
                    check.error,
                    now,
                    check.changed,
                    check.next_check_at_ms
                ],
            )?;
            match &check.validators {
                Validators::Keep => {}
                Validators::Set {
                    etag,
                    last_modified,
                    content_hash,
                } => {
                    transaction.execute(
                        "UPDATE sources SET etag = ?2, last_modified = ?3, content_hash = ?4
                         WHERE id = ?1",
                        params![source_id, etag, last_modified, content_hash],
                    )?;
                }
                Validators::Clear => {
                    transaction.execute(
                        "UPDATE sources SET etag = NULL, last_modified = NULL,
                             content_hash = NULL WHERE id = ?1",
                        [source_id],
                    )?;
                }
            }
            read_source(transaction, source_id)
        })
    }
}

fn seen(transaction: &Transaction<'_>, source_id: i64, key: &str) -> rusqlite::Result<bool> {
    Ok(transaction
        .prepare_cached("SELECT 1 FROM source_items WHERE source_id = ?1 AND item_key = ?2")?
        .query_row(params![source_id, key], |_| Ok(()))
        .optional()?
        .is_some())
}

fn read_source(transaction: &Transaction<'_>, id: i64) -> Result<SourceStatus, SourceError> {
    Ok(transaction
        .prepare_cached(&format!(
            "SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?1"
        ))?
        .query_row([id], source_from_row)?)
}

fn source_from_row(row: &Row<'_>) -> rusqlite::Result<SourceStatus> {
    Ok(SourceStatus {
        id: row.get(0)?,
        name: row.get(1)?,
        url: row.get(2)?,
        mode: row.get(3)?,
        every_ms: row.get(4)?,
        selector: row.get(5)?,
        pattern: row.get(6)?,
        enabled: row.get(7)?,
        etag: row.get(8)?,
        last_modified: row.get(9)?,
        content_hash: row.get(10)?,
        checks: row.get::<_, i64>(11)? as u64,
        last_outcome: row.get(12)?,
        last_error: row.get(13)?,
        last_checked_at_ms: row.get(14)?,
        last_changed_at_ms: row.get(15)?,
        next_check_at_ms: row.get(16)?,
        items_seen: row.get::<_, i64>(17)? as u64,
        downloads_made: row.get::<_, i64>(18)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NewDownload;
    use crate::store::Durability;
    use crate::store::tests::open_temp;

    fn definition(name: &str, url: &str) -> SourceDefinition {
        SourceDefinition {
            name: name.into(),
            url: url.into(),
            mode: "links".into(),
            every: Duration::from_secs(60),
            selector: Some("a".into()),
            pattern: None,
        }
    }

    fn item(source: &str, url: &str) -> SourceItem {
        let mut download = NewDownload::new(url);
        download.source = Some(source.into());
        SourceItem {
            key: url.into(),
            downloads: vec![download.validate().unwrap()],
        }
    }

    #[test]
    fn sync_adds_changes_and_disables_by_name() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let mut no_delay = |_| Duration::ZERO;
        let a = definition("a", "http://example.org/a");
        let b = definition("b", "http://example.org/b");
        let sync = store
            .sync_sources(&[a.clone(), b.clone()], &mut no_delay)
            .unwrap();
        assert_eq!(sync.added, vec!["a", "b"]);
        let id = store.get_source("a").unwrap().id;
        store
            .finish_source_check(
                id,
                &SourceCheck {
                    outcome: "changed",
                    error: None,
                    validators: Validators::Set {
                        etag: Some("\"1\"".into()),
                        last_modified: None,
                        content_hash: "h".into(),
                    },
                    changed: true,
                    next_check_at_ms: now_ms() + 60_000,
                },
            )
            .unwrap();
        // Same definitions: nothing changes.
        assert_eq!(
            store
                .sync_sources(&[a.clone(), b.clone()], &mut no_delay)
                .unwrap(),
            SourceSync::default()
        );
        // A new selector forgets the hash but keeps the ETag; a removed source is disabled.
        let mut a2 = a.clone();
        a2.selector = Some("a.new".into());
        let sync = store.sync_sources(&[a2], &mut no_delay).unwrap();
        assert_eq!(sync.changed, vec!["a"]);
        assert_eq!(sync.disabled, vec!["b"]);
        let row = store.get_source("a").unwrap();
        assert_eq!(row.content_hash, None);
        assert_eq!(row.etag.as_deref(), Some("\"1\""));
        assert_eq!(row.checks, 1);
        assert!(!store.get_source("b").unwrap().enabled);
        assert!(matches!(
            store.check_source_now("b"),
            Err(SourceError::Disabled(_))
        ));
        assert!(matches!(
            store.check_source_now("zzz"),
            Err(SourceError::NotFound(_))
        ));
    }

    #[test]
    fn an_item_becomes_a_download_once_and_a_full_queue_leaves_the_rest() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        store
            .sync_sources(&[definition("s", "http://example.org/")], &mut |_| {
                Duration::ZERO
            })
            .unwrap();
        let id = store.get_source("s").unwrap().id;
        let items: Vec<SourceItem> = (0..5)
            .map(|n| item("s", &format!("http://example.org/{n}.bin")))
            .collect();
        let first = store.record_source_items(id, &items[..3], 1000).unwrap();
        assert_eq!(first.created.len(), 3);
        let second = store.record_source_items(id, &items, 4).unwrap();
        assert_eq!(second.already_seen, 3);
        assert_eq!(second.created.len(), 1, "room for one more under 4");
        assert!(second.queue_full.is_some());
        let row = store.get_source("s").unwrap();
        assert_eq!((row.items_seen, row.downloads_made), (4, 4));
        let unseen = store
            .unseen_source_items(id, &[items[0].key.clone(), items[4].key.clone()])
            .unwrap();
        assert_eq!(unseen, vec![false, true]);
        let download = store.get_download(first.created[0].download_id).unwrap();
        assert_eq!(download.source_id, Some(id));
    }
}
