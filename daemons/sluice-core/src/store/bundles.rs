//! Bundles: several downloads that reach the inbox as one folder. A bundle is a row of
//! `bundles` plus one ordinary download (row and `download` job) per file, all created in one
//! transaction by [`Store::create_bundle_within_limit`] from a [`ValidBundle`]. The files run
//! like any download; the scraper moves each finished one into the bundle's folder in staging,
//! and once every file succeeded renames that folder into the inbox (recording the target
//! first, [`Store::set_bundle_target`], and the success after, [`Store::finish_bundle`], so a
//! kill between the two places it exactly once). A file that fails for good fails the bundle.
//!
//! The bundle's progress is not stored twice: files done and failed, bytes and rate are summed
//! from its downloads when read.

use std::fmt;

use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use super::downloads::{
    BundleFileOf, DOWNLOAD_JOB_KIND, Download, DownloadError, DownloadState, insert_download_in,
    read_download,
};
use super::jobs::{self, JobError, Page, PageRequest};
use super::{Store, now_ms};
pub use crate::policy::ValidBundle;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BundleState {
    pub fn as_str(self) -> &'static str {
        match self {
            BundleState::Running => "running",
            BundleState::Succeeded => "succeeded",
            BundleState::Failed => "failed",
            BundleState::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<BundleState> {
        [
            BundleState::Running,
            BundleState::Succeeded,
            BundleState::Failed,
            BundleState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for BundleState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What [`Store::create_bundle_within_limit`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedBundle {
    pub bundle_id: i64,
    pub job_ids: Vec<i64>,
}

/// A bundle with its progress summed over its files.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bundle {
    pub id: i64,
    /// The folder's name in the inbox (a `-N` is added when it is taken).
    pub name: String,
    /// `hf://…@COMMIT` when resolved from a Hugging Face repository.
    pub origin: Option<String>,
    /// The commit a Hugging Face revision pointed at when the bundle was made.
    pub revision: Option<String>,
    pub state: BundleState,
    pub files_total: u64,
    pub files_done: u64,
    pub files_failed: u64,
    pub bytes_done: u64,
    /// The sum of the sizes known so far (a file's size is known once its server said it).
    pub bytes_total: u64,
    /// The sum of the running files' rates.
    pub rate_bytes_per_second: f64,
    /// The folder in the inbox, once placed.
    pub final_path: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// What the scraper must do about a running bundle whose files all ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleVerdict {
    /// Every file succeeded: place the folder (or, with `target`, finish a placement that a
    /// kill interrupted).
    Complete { target: Option<String> },
    /// A file failed or was cancelled: fail the bundle with this error.
    Failed { error: String },
}

const BUNDLE_SUMMARY: &str = "SELECT b.id, b.name, b.origin, b.revision, b.state, b.files_total,
        (SELECT count(*) FROM downloads d WHERE d.bundle_id = b.id AND d.state = 'succeeded'),
        (SELECT count(*) FROM downloads d WHERE d.bundle_id = b.id
             AND d.state IN ('failed', 'cancelled')),
        (SELECT CAST(total(bytes_done) AS INTEGER) FROM downloads d WHERE d.bundle_id = b.id),
        (SELECT CAST(total(bytes_total) AS INTEGER) FROM downloads d WHERE d.bundle_id = b.id),
        (SELECT coalesce(sum(rate_bytes_per_s), 0.0) FROM downloads d WHERE d.bundle_id = b.id
             AND d.state = 'running'),
        b.final_path, b.error, b.created_at, b.updated_at, b.finished_at
     FROM bundles b";

impl Store {
    /// Records the bundle and one download with its job per file, when the download queue has
    /// room for all of them under `max_pending` (`[scraper] max_pending`); otherwise
    /// `QueueFull` and nothing is recorded. One `BEGIN IMMEDIATE` transaction.
    pub fn create_bundle_within_limit(
        &mut self,
        bundle: &ValidBundle,
        max_pending: u32,
    ) -> Result<CreatedBundle, DownloadError> {
        let max_attempts = self.options().max_attempts;
        self.write(|transaction| {
            let wanted = bundle.files().len() as u64;
            let room = jobs::room_for(transaction, DOWNLOAD_JOB_KIND, max_pending)?;
            if room < wanted {
                return Err(DownloadError::Job(JobError::QueueFull(jobs::QueueFull {
                    kind: DOWNLOAD_JOB_KIND.to_owned(),
                    pending: u64::from(max_pending) - room,
                    limit: max_pending,
                })));
            }
            let now = now_ms();
            let bundle_id: i64 = transaction
                .prepare_cached(
                    "INSERT INTO bundles (name, origin, revision, state, files_total,
                         created_at, updated_at)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5) RETURNING id",
                )?
                .query_row(
                    params![
                        bundle.name(),
                        bundle.origin(),
                        bundle.revision(),
                        wanted as i64,
                        now
                    ],
                    |row| row.get(0),
                )?;
            let mut job_ids = Vec::with_capacity(bundle.files().len());
            for file in bundle.files() {
                let attempts = file.download.max_attempts().unwrap_or(max_attempts);
                let created = insert_download_in(
                    transaction,
                    &file.download,
                    attempts,
                    Some(BundleFileOf {
                        bundle_id,
                        relative_path: file.relative_path.as_str(),
                        size: file.size,
                        git_sha1: file.git_sha1.as_deref(),
                    }),
                    now,
                )?;
                job_ids.push(created.job_id);
            }
            Ok(CreatedBundle { bundle_id, job_ids })
        })
    }

    pub fn get_bundle(&self, id: i64) -> Result<Bundle, DownloadError> {
        read_bundle(self.connection(), id)
    }

    /// The bundle's files, in the order they were given.
    pub fn bundle_files(&self, id: i64) -> Result<Vec<Download>, DownloadError> {
        read_bundle(self.connection(), id)?;
        bundle_files_in(self.connection(), id)
    }

    /// Bundles newest first, a page at a time (`next_cursor` is the `before_id` of the next).
    pub fn list_bundles(&self, page: PageRequest) -> Result<Page<Bundle>, DownloadError> {
        if page.limit == 0 || page.limit > jobs::MAX_PAGE_SIZE {
            return Err(DownloadError::InvalidArgument(format!(
                "page size must be 1..={}, got {}",
                jobs::MAX_PAGE_SIZE,
                page.limit
            )));
        }
        let mut statement = self.connection().prepare_cached(&format!(
            "{BUNDLE_SUMMARY} WHERE (?1 IS NULL OR b.id < ?1) ORDER BY b.id DESC LIMIT ?2"
        ))?;
        let mut items = statement
            .query_map(params![page.before_id, page.limit + 1], bundle_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|bundle| bundle.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The running bundles that need the scraper: every file succeeded, or one failed or was
    /// cancelled. With the verdict for each.
    pub fn bundles_to_settle(&self) -> Result<Vec<(Bundle, BundleVerdict)>, DownloadError> {
        let mut statement = self
            .connection()
            .prepare_cached(&format!("{BUNDLE_SUMMARY} WHERE b.state = 'running'"))?;
        let running = statement
            .query_map([], bundle_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut settle = Vec::new();
        for bundle in running {
            if bundle.files_failed > 0 {
                let files = bundle_files_in(self.connection(), bundle.id)?;
                let error = files
                    .iter()
                    .find(|file| {
                        matches!(file.state, DownloadState::Failed | DownloadState::Cancelled)
                    })
                    .map(|file| {
                        format!(
                            "file {} ({}) {}: {}",
                            file.relative_path.as_deref().unwrap_or(&file.file_name),
                            file.url,
                            file.state,
                            file.error.as_deref().unwrap_or("no error recorded")
                        )
                    })
                    .unwrap_or_else(|| "a file failed".to_owned());
                settle.push((bundle, BundleVerdict::Failed { error }));
            } else if bundle.files_done == bundle.files_total {
                let target = bundle.final_path.clone();
                settle.push((bundle, BundleVerdict::Complete { target }));
            }
        }
        Ok(settle)
    }

    /// Records where the running bundle's folder is about to be renamed to.
    pub fn set_bundle_target(&mut self, id: i64, target: &str) -> Result<(), DownloadError> {
        self.write(|transaction| {
            let changed = transaction.execute(
                "UPDATE bundles SET final_path = ?2, updated_at = ?3
                 WHERE id = ?1 AND state = 'running'",
                params![id, target, now_ms()],
            )?;
            require_running(transaction, id, changed, "place")
        })
    }

    /// Ends a running bundle: `Succeeded` once its folder is at `final_path`, or `Failed` with
    /// the error (its files that have not ended are cancelled in the same transaction; the
    /// running ones stop at their next progress save, or at once when the scraper stops them).
    /// Returns the files that were still running.
    pub fn finish_bundle(
        &mut self,
        id: i64,
        state: BundleState,
        error: Option<&str>,
    ) -> Result<Vec<Download>, DownloadError> {
        if state == BundleState::Running {
            return Err(DownloadError::InvalidArgument(
                "a bundle cannot be finished as running".to_owned(),
            ));
        }
        self.write(|transaction| {
            let now = now_ms();
            let changed = transaction.execute(
                "UPDATE bundles SET state = ?2, error = ?3, updated_at = ?4, finished_at = ?4
                 WHERE id = ?1 AND state = 'running'",
                params![id, state.as_str(), error, now],
            )?;
            require_running(transaction, id, changed, "finish")?;
            if state == BundleState::Succeeded {
                return Ok(Vec::new());
            }
            cancel_files_in(transaction, id)
        })
    }

    /// Cancels a running bundle and every file of it that has not ended. Returns the bundle
    /// and the files that were running (the scraper stops those).
    pub fn cancel_bundle(&mut self, id: i64) -> Result<(Bundle, Vec<Download>), DownloadError> {
        self.write(|transaction| {
            let now = now_ms();
            let changed = transaction.execute(
                "UPDATE bundles SET state = 'cancelled', error = 'cancelled on request',
                     updated_at = ?2, finished_at = ?2
                 WHERE id = ?1 AND state = 'running'",
                params![id, now],
            )?;
            require_running(transaction, id, changed, "cancel")?;
            let running = cancel_files_in(transaction, id)?;
            Ok((read_bundle(transaction, id)?, running))
        })
    }

    /// Forgets a bundle that is not running, with its downloads (their jobs stay in the
    /// history). Returns its last state and files, so the caller can remove what it left.
    pub fn delete_bundle(&mut self, id: i64) -> Result<(Bundle, Vec<Download>), DownloadError> {
        self.write(|transaction| {
            let bundle = read_bundle(transaction, id)?;
            let files = bundle_files_in(transaction, id)?;
            if bundle.state == BundleState::Running
                || files.iter().any(|file| !file.state.is_finished())
            {
                return Err(DownloadError::BundleInvalidState {
                    id,
                    state: bundle.state,
                    action: "delete (cancel it first)",
                });
            }
            transaction.execute("DELETE FROM bundles WHERE id = ?1", [id])?;
            Ok((bundle, files))
        })
    }
}

fn require_running(
    transaction: &Transaction<'_>,
    id: i64,
    changed: usize,
    action: &'static str,
) -> Result<(), DownloadError> {
    if changed == 1 {
        return Ok(());
    }
    let bundle = read_bundle(transaction, id)?;
    Err(DownloadError::BundleInvalidState {
        id,
        state: bundle.state,
        action,
    })
}

/// Cancels the bundle's files that have not ended; returns those that were running.
fn cancel_files_in(
    transaction: &Transaction<'_>,
    bundle_id: i64,
) -> Result<Vec<Download>, DownloadError> {
    let mut running = Vec::new();
    for file in bundle_files_in(transaction, bundle_id)? {
        if file.state.is_finished() {
            continue;
        }
        if let Some(job_id) = file.job_id {
            match jobs::cancel_in(transaction, job_id) {
                Ok(_) | Err(JobError::InvalidState { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let file = read_download(transaction, file.id)?;
        if file.state == DownloadState::Running {
            running.push(file);
        }
    }
    Ok(running)
}

fn bundle_files_in(
    connection: &rusqlite::Connection,
    bundle_id: i64,
) -> Result<Vec<Download>, DownloadError> {
    let ids = connection
        .prepare_cached("SELECT id FROM downloads WHERE bundle_id = ?1 ORDER BY id")?
        .query_map([bundle_id], |row| row.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.into_iter()
        .map(|id| read_download(connection, id))
        .collect()
}

fn read_bundle(connection: &rusqlite::Connection, id: i64) -> Result<Bundle, DownloadError> {
    connection
        .prepare_cached(&format!("{BUNDLE_SUMMARY} WHERE b.id = ?1"))?
        .query_row([id], bundle_from_row)
        .optional()?
        .ok_or(DownloadError::BundleNotFound(id))
}

fn bundle_from_row(row: &Row<'_>) -> rusqlite::Result<Bundle> {
    let state: String = row.get(4)?;
    let state = BundleState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown bundle state {state:?}").into(),
        )
    })?;
    Ok(Bundle {
        id: row.get(0)?,
        name: row.get(1)?,
        origin: row.get(2)?,
        revision: row.get(3)?,
        state,
        files_total: row.get::<_, i64>(5)? as u64,
        files_done: row.get::<_, i64>(6)? as u64,
        files_failed: row.get::<_, i64>(7)? as u64,
        bytes_done: row.get::<_, i64>(8)? as u64,
        bytes_total: row.get::<_, i64>(9)? as u64,
        rate_bytes_per_second: row.get(10)?,
        final_path: row.get(11)?,
        error: row.get(12)?,
        created_at_ms: row.get(13)?,
        updated_at_ms: row.get(14)?,
        finished_at_ms: row.get(15)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{NewBundle, NewBundleFile, SubmitRules};
    use crate::store::tests::open_temp;
    use crate::store::{Claimant, DownloadOutcome, Durability};

    const RULES: SubmitRules = SubmitRules {
        allow_private_addresses: false,
        max_download_size: 1 << 30,
    };

    fn valid(count: usize) -> ValidBundle {
        NewBundle {
            name: "model".into(),
            files: (0..count)
                .map(|index| NewBundleFile {
                    url: format!("https://example.org/{index}"),
                    path: Some(format!("dir/{index}.bin")),
                    sha256: None,
                    size: Some(10),
                    git_sha1: None,
                })
                .collect(),
            origin: None,
            revision: None,
            max_attempts: None,
        }
        .validate(&RULES)
        .unwrap()
    }

    #[test]
    fn a_bundle_is_created_whole_or_not_at_all_under_the_queue_limit() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let full = store.create_bundle_within_limit(&valid(3), 2).unwrap_err();
        assert!(full.queue_full().is_some(), "{full:?}");
        assert!(
            store
                .list_bundles(PageRequest {
                    before_id: None,
                    limit: 10
                })
                .unwrap()
                .items
                .is_empty()
        );
        let created = store.create_bundle_within_limit(&valid(3), 3).unwrap();
        assert_eq!(created.job_ids.len(), 3);
        let bundle = store.get_bundle(created.bundle_id).unwrap();
        assert_eq!(
            (bundle.state, bundle.files_total),
            (BundleState::Running, 3)
        );
        let files = store.bundle_files(created.bundle_id).unwrap();
        assert_eq!(files[2].relative_path.as_deref(), Some("dir/2.bin"));
        assert!(store.bundles_to_settle().unwrap().is_empty());
    }

    #[test]
    fn a_failed_file_fails_the_bundle_and_cancels_the_rest() {
        let (_directory, mut store) = open_temp(Durability::Normal);
        let created = store.create_bundle_within_limit(&valid(2), 10).unwrap();
        let claimant = Claimant::named("test");
        let claimed = store
            .claim_jobs(&claimant, &[DOWNLOAD_JOB_KIND], 1, Duration::from_secs(30))
            .unwrap()
            .remove(0);
        let download_id = claimed.payload["download_id"].as_i64().unwrap();
        store
            .finish_download(
                download_id,
                claimed.id,
                &claimed.lease_token,
                &DownloadOutcome::Failed {
                    error: "SHA-256 mismatch".into(),
                    retryable: false,
                },
            )
            .unwrap();
        let settle = store.bundles_to_settle().unwrap();
        let BundleVerdict::Failed { error } = &settle[0].1 else {
            panic!("{settle:?}");
        };
        assert!(error.contains("SHA-256 mismatch"), "{error}");
        store
            .finish_bundle(created.bundle_id, BundleState::Failed, Some(error))
            .unwrap();
        let files = store.bundle_files(created.bundle_id).unwrap();
        assert!(
            files.iter().all(|file| file.state.is_finished()),
            "{files:?}"
        );
        // A file goes with its bundle, never on its own (the bundle would wait for it).
        assert!(matches!(
            store.delete_download(files[0].id),
            Err(DownloadError::PartOfBundle { bundle_id, .. }) if bundle_id == created.bundle_id
        ));
        let (deleted, files) = store.delete_bundle(created.bundle_id).unwrap();
        assert_eq!((deleted.state, files.len()), (BundleState::Failed, 2));
        assert!(matches!(
            store.get_download(files[0].id),
            Err(DownloadError::NotFound(_))
        ));
        assert!(matches!(
            store.get_bundle(created.bundle_id),
            Err(DownloadError::BundleNotFound(_))
        ));
    }
}
