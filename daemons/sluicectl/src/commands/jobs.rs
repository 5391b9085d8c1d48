//! `sluicectl jobs list|show|retry|cancel`.

use serde_json::{Value, json};
use sluice_core::bus::{self, BusError, WEB_BUS_NAME, WebProxy};
use sluice_core::store::jobs::{JobFilter, JobState};
use zbus::proxy::CacheProperties;

use super::{Context, Failure};
use crate::output::{print_fields, print_json, print_line, print_table};

#[derive(Debug, Clone, Copy)]
pub(super) enum JobChange {
    Retry,
    Cancel,
}

impl Context {
    pub(super) fn jobs_list(
        &self,
        state: Option<String>,
        kind: Option<String>,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let mut filter = JobFilter::default();
        for name in state.iter().flat_map(|text| text.split(',')) {
            if !name.is_empty() {
                filter.states.push(name.trim().parse::<JobState>()?);
            }
        }
        filter.kind = kind.filter(|kind| !kind.is_empty());
        let store = self.open_store()?;
        let mut jobs = store.list_jobs(&filter, page)?;
        // A page with a kind looks at a window of job ids at most, so it can come back short
        // with a cursor to go on: read on until the page is full or the jobs end.
        while let Some(next) = jobs.next_cursor
            && filter.kind.is_some()
            && jobs.items.len() < limit as usize
        {
            let more = store.list_jobs(
                &filter,
                sluice_core::store::PageRequest {
                    before_id: Some(next),
                    limit: limit - jobs.items.len() as u32,
                },
            )?;
            jobs.items.extend(more.items);
            jobs.next_cursor = more.next_cursor;
        }
        if self.json {
            print_json(&serde_json::to_value(&jobs).unwrap_or_default());
            return Ok(());
        }
        let rows: Vec<Vec<String>> = jobs
            .items
            .iter()
            .map(|job| {
                vec![
                    job.id.to_string(),
                    job.kind.clone(),
                    job.state.to_string(),
                    format!("{}/{}", job.attempts, job.max_attempts),
                    job.progress
                        .map(|fraction| format!("{:.0}%", fraction * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    job.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(
            &["ID", "KIND", "STATE", "ATTEMPTS", "PROGRESS", "ERROR"],
            &rows,
        );
        if let Some(next) = jobs.next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }

    pub(super) fn jobs_show(&self, id: i64) -> Result<(), Failure> {
        let store = self.open_store()?;
        let job = store.get_job(id)?;
        let history = store.job_history(id)?;
        if self.json {
            print_json(&json!({ "job": job, "history": history }));
            return Ok(());
        }
        let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        print_fields(&[
            ("id", job.id.to_string()),
            ("kind", job.kind.clone()),
            ("state", job.state.to_string()),
            ("attempts", format!("{}/{}", job.attempts, job.max_attempts)),
            ("priority", job.priority.to_string()),
            ("payload", job.payload.to_string()),
            ("worker", optional(job.lease_owner.clone())),
            (
                "progress",
                optional(
                    job.progress
                        .map(|fraction| format!("{:.0}%", fraction * 100.0)),
                ),
            ),
            (
                "result",
                optional(job.result.as_ref().map(Value::to_string)),
            ),
            ("error", optional(job.error.clone())),
        ]);
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|transition| {
                vec![
                    transition.at_ms.to_string(),
                    transition
                        .from_state
                        .map(|state| state.to_string())
                        .unwrap_or_else(|| "-".into()),
                    transition.to_state.to_string(),
                    transition.attempt.to_string(),
                    transition.worker.clone().unwrap_or_default(),
                    transition.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_line("");
        print_table(
            &["AT_MS", "FROM", "TO", "ATTEMPT", "WORKER", "ERROR"],
            &rows,
        );
        Ok(())
    }

    /// Retry or cancel through `org.sluice.Web1` when sluice-web runs (it also wakes the
    /// workers), else in the store directly, which every worker sees at its next poll or
    /// heartbeat.
    pub(super) fn job_change(&self, id: i64, change: JobChange) -> Result<(), Failure> {
        let job_id = u64::try_from(id).ok().filter(|id| *id > 0).ok_or_else(|| {
            Failure::invalid(format!("job id must be a positive number, got {id}"))
        })?;
        let address = self.config.bus.address.clone();
        let through_bus = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, WEB_BUS_NAME).await {
                return None;
            }
            let proxy = match WebProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(match change {
                JobChange::Retry => proxy.retry_job(job_id).await.map(|()| "queued".to_owned()),
                JobChange::Cancel => proxy.cancel_job(job_id).await,
            })
        })?;
        let (state, via) = match through_bus {
            Some(result) => (result?, "dbus"),
            None => {
                let mut store = self.open_store()?;
                let job = match change {
                    JobChange::Retry => store.retry_job(id)?,
                    JobChange::Cancel => store.cancel_job(id)?,
                };
                let state = if job.state == JobState::Running {
                    "cancelling".to_owned()
                } else {
                    job.state.to_string()
                };
                (state, "store")
            }
        };
        if self.json {
            print_json(&json!({ "job_id": id, "state": state, "via": via }));
        } else {
            print_line(&format!("job {id}: {state}"));
        }
        Ok(())
    }
}
