//! `sluicectl db check|backup FILE|vacuum|maintain`: care of the database the suite shares,
//! safe while the daemons run (see `sluice_core::store::maintenance`).

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use sluice_core::store::now_ms;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_fields, print_json};

impl Context {
    /// Integrity and foreign-key checks; exit status 1 with the problems when either finds
    /// any.
    pub(super) fn db_check(&self) -> Result<(), Failure> {
        let store = self.open_store()?;
        let integrity = store.integrity_check()?;
        let foreign_keys = store.foreign_key_check()?;
        let healthy = integrity == ["ok"] && foreign_keys.is_empty();
        if self.json {
            print_json(&json!({
                "database": self.config.store.path.display().to_string(),
                "integrity_check": integrity,
                "foreign_key_check": foreign_keys,
                "ok": healthy,
            }));
        } else {
            print_fields(&[
                ("database", self.config.store.path.display().to_string()),
                ("integrity", integrity.join("; ")),
                (
                    "foreign keys",
                    if foreign_keys.is_empty() {
                        "ok".to_owned()
                    } else {
                        foreign_keys.join("; ")
                    },
                ),
            ]);
        }
        if healthy {
            Ok(())
        } else {
            Err(Failure::new(
                exit::ERROR,
                format!(
                    "{} is damaged; restore a backup (see the README, \"Backups\")",
                    self.config.store.path.display()
                ),
            ))
        }
    }

    /// An online backup into `target`, consistent while the daemons write.
    pub(super) fn db_backup(&self, target: PathBuf) -> Result<(), Failure> {
        let store = self.open_store()?;
        let started = Instant::now();
        let size = store.backup_to(&target).map_err(|error| {
            let message = if error.is_out_of_space() {
                format!("{error}; the backup's file system is full, nothing was written")
            } else {
                format!("{error}; nothing was written")
            };
            match error {
                sluice_core::store::maintenance::BackupError::Exists(_) => {
                    Failure::invalid(message)
                }
                _ => Failure::new(exit::ERROR, message),
            }
        })?;
        let elapsed = started.elapsed();
        if self.json {
            print_json(&json!({
                "backup": target.display().to_string(),
                "bytes": size,
                "seconds": elapsed.as_secs_f64(),
            }));
        } else {
            print_fields(&[
                ("backup", target.display().to_string()),
                ("bytes", size.to_string()),
                ("took", format!("{:.2} s", elapsed.as_secs_f64())),
            ]);
        }
        Ok(())
    }

    pub(super) fn db_vacuum(&self) -> Result<(), Failure> {
        let store = self.open_store()?;
        let before = file_size(&self.config.store.path);
        store.vacuum()?;
        let after = file_size(&self.config.store.path);
        if self.json {
            print_json(&json!({ "bytes_before": before, "bytes_after": after }));
        } else {
            print_fields(&[
                ("before", format!("{before} bytes")),
                ("after", format!("{after} bytes")),
            ]);
        }
        Ok(())
    }

    /// Retention by `[retention]`, then `PRAGMA optimize` and a WAL checkpoint: what
    /// sluice-maintenance.timer runs daily.
    pub(super) fn db_maintain(&self) -> Result<(), Failure> {
        let mut store = self.open_store()?;
        let policy = self.config.retention.policy();
        let started = Instant::now();
        let deleted = store.apply_retention(&policy, now_ms())?;
        store.optimize()?;
        let checkpoint = store.checkpoint()?;
        let elapsed = started.elapsed();
        if self.json {
            print_json(&json!({
                "deleted": deleted,
                "checkpoint": checkpoint,
                "seconds": elapsed.as_secs_f64(),
            }));
        } else {
            print_fields(&[
                (
                    "deleted",
                    format!(
                        "{} succeeded jobs, {} failed/dead/cancelled jobs, {} history entries, \
                         {} downloads",
                        deleted.succeeded_jobs,
                        deleted.failed_jobs,
                        deleted.history_entries,
                        deleted.downloads
                    ),
                ),
                (
                    "checkpoint",
                    format!(
                        "{} of {} WAL pages{}",
                        checkpoint.checkpointed_pages,
                        checkpoint.wal_pages,
                        if checkpoint.busy {
                            " (a reader kept it from finishing; the next run continues)"
                        } else {
                            ""
                        }
                    ),
                ),
                ("took", format!("{:.2} s", elapsed.as_secs_f64())),
            ]);
        }
        Ok(())
    }
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path)
        .map(|metadata| metadata.len())
        .unwrap_or(0)
}
