//! Running jobs as objects on the bus, as systemd shows its queued jobs at
//! `/org/freedesktop/systemd1/job/N`: each job that runs now is `/org/sluice/job/<id>` with an
//! `org.sluice.Job1` interface, under an `org.freedesktop.DBus.ObjectManager` at
//! `/org/sluice/job`, served by sluice-web (the suite's always-on API process).
//!
//! A client that connects late calls `GetManagedObjects` and has every running job with its
//! progress; then `InterfacesAdded` / `InterfacesRemoved` (and `org.sluice.Web1.JobNew` /
//! `JobRemoved`, which also say how the job ended) keep it current, and `PropertiesChanged` on
//! a job's path carries its progress. Signals may be lost (the bus drops them for a slow
//! reader); the objects never lie for longer than one sync, because the web rebuilds them from
//! the store, the truth, after every job signal and at least every second.
//!
//! The objects name no file: a job's subject (a path, a URL) is read through the API, which
//! checks the caller.

use std::borrow::Cow;
use std::collections::HashMap;

use zbus::Connection;
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, Variant};

use super::{SCRAPER_OBJECT_PATH, ingest_object_path, sanitize_instance};

/// The interface of each running job's object.
pub const JOB_INTERFACE: &str = "org.sluice.Job1";

/// Where the ObjectManager of the job objects sits; each job is a child of it.
pub const JOBS_OBJECT_PATH: &str = "/org/sluice/job";

/// At most this many jobs are objects at once (the oldest running ones); more running jobs
/// than this would need more workers or downloads than sluice runs.
pub const MAX_JOB_OBJECTS: usize = 1000;

/// The object path of job `id`.
pub fn job_object_path(id: u64) -> String {
    format!("{JOBS_OBJECT_PATH}/{id}")
}

/// The object of the daemon a lease holder's name stands for: `sluice-ingest-worker@2` is
/// `/org/sluice/Ingest1/2`, `sluice-scraper` is `/org/sluice/Scraper1`; `/` for a name that is
/// neither (a benchmark's worker, say).
pub fn worker_object_path(worker: &str) -> OwnedObjectPath {
    let path = if worker == "sluice-scraper" {
        Some(SCRAPER_OBJECT_PATH.to_owned())
    } else {
        worker
            .strip_prefix("sluice-ingest-worker@")
            .and_then(|instance| sanitize_instance(instance).ok())
            .map(|instance| ingest_object_path(&instance))
    };
    path.and_then(|path| OwnedObjectPath::try_from(path).ok())
        .unwrap_or_else(|| OwnedObjectPath::try_from("/").expect("/ is an object path"))
}

/// A running job as its object shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub id: u64,
    pub kind: String,
    /// Whether a cancel was asked for (the worker stops at its next heartbeat).
    pub cancelling: bool,
    /// From 0 to 1; `None` until the job says.
    pub progress: Option<f64>,
    pub message: String,
    /// The lease holder's name: `sluice-ingest-worker@1`, `sluice-scraper`.
    pub worker: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// When this attempt started, in ms since the epoch.
    pub started_at_ms: u64,
}

impl RunningJob {
    fn state(&self) -> &'static str {
        if self.cancelling {
            "cancelling"
        } else {
            "running"
        }
    }

    fn progress(&self) -> f64 {
        self.progress.unwrap_or(-1.0)
    }

    /// The properties that differ from `before`, with their values now.
    fn changed_since(&self, before: &RunningJob) -> HashMap<&'static str, Variant<'static>> {
        let mut changed = HashMap::new();
        if self.state() != before.state() {
            changed.insert("State", Variant::from(self.state().to_owned()));
        }
        if self.progress() != before.progress() {
            changed.insert("Progress", Variant::from(self.progress()));
        }
        if self.message != before.message {
            changed.insert("Message", Variant::from(self.message.clone()));
        }
        changed
    }
}

/// The object of one running job.
#[derive(Debug)]
pub struct JobObject {
    job: RunningJob,
}

#[zbus::interface(
    name = "org.sluice.Job1",
    proxy(default_service = "org.sluice.Web1", async_name = "JobProxy")
)]
impl JobObject {
    /// The job's id, as the API and sluicectl name it.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> u64 {
        self.job.id
    }

    /// What the job does: `ingest`, `download`, ...
    #[zbus(property(emits_changed_signal = "const"))]
    fn kind(&self) -> String {
        self.job.kind.clone()
    }

    /// `running`, or `cancelling` once a cancel was asked for. When the job leaves the running
    /// state its object goes away, and `org.sluice.Web1.JobRemoved` says how it ended.
    #[zbus(property)]
    fn state(&self) -> String {
        self.job.state().to_owned()
    }

    /// How far the job is, from 0 to 1; -1 until it says.
    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.job.progress()
    }

    /// What the job says it is doing now (`hashing`, `extracting`, a byte count), or empty.
    #[zbus(property)]
    fn message(&self) -> String {
        self.job.message.clone()
    }

    /// The daemon running it: `/org/sluice/Ingest1/<N>` or `/org/sluice/Scraper1`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn worker(&self) -> OwnedObjectPath {
        worker_object_path(&self.job.worker)
    }

    /// Which attempt this is, from 1.
    #[zbus(property(emits_changed_signal = "const"))]
    fn attempt(&self) -> u32 {
        self.job.attempt
    }

    /// When this attempt started, in milliseconds since the Unix epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn started_at(&self) -> u64 {
        self.job.started_at_ms
    }
}

/// What a [`JobObjects::sync`] changed: the jobs whose objects appeared and those whose
/// objects went away, as (id, kind).
#[derive(Debug, Default, PartialEq)]
pub struct JobChanges {
    pub added: Vec<(u64, String)>,
    pub removed: Vec<(u64, String)>,
}

/// The job objects a daemon serves: see the module documentation.
#[derive(Debug)]
pub struct JobObjects {
    connection: Connection,
    exported: HashMap<u64, RunningJob>,
}

impl JobObjects {
    /// Serves the ObjectManager at [`JOBS_OBJECT_PATH`], with no job yet.
    pub async fn serve(connection: &Connection) -> zbus::Result<JobObjects> {
        connection
            .object_server()
            .at(JOBS_OBJECT_PATH, zbus::fdo::ObjectManager)
            .await?;
        Ok(JobObjects {
            connection: connection.clone(),
            exported: HashMap::new(),
        })
    }

    /// Emits `org.sluice.Web1.JobRemoved` for a job [`JobObjects::sync`] removed, with the
    /// state the job is in now (`succeeded`, `failed`, ...), which the caller reads from the
    /// store.
    pub async fn announce_removed(&self, id: u64, kind: &str, result: &str) -> zbus::Result<()> {
        super::web::emit_job_removed(&self.connection, id, kind, result).await
    }

    /// How many jobs are objects now.
    pub fn len(&self) -> usize {
        self.exported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exported.is_empty()
    }

    /// Brings the objects in line with `running`, the jobs running now (at most
    /// [`MAX_JOB_OBJECTS`] are taken): a new job's object appears (`InterfacesAdded`), a changed
    /// one emits one `PropertiesChanged` with every property that changed, and the object of a
    /// job no longer running is removed (`InterfacesRemoved`). `JobNew` is emitted for each new
    /// object; the caller announces the removed ones ([`JobObjects::announce_removed`]).
    pub async fn sync(&mut self, running: Vec<RunningJob>) -> zbus::Result<JobChanges> {
        let running: HashMap<u64, RunningJob> = running
            .into_iter()
            .take(MAX_JOB_OBJECTS)
            .map(|job| (job.id, job))
            .collect();
        let server = self.connection.object_server();
        let mut changes = JobChanges::default();
        let gone: Vec<u64> = self
            .exported
            .keys()
            .filter(|id| !running.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            let job = self.exported.remove(&id).expect("the id was listed");
            server
                .remove::<JobObject, _>(job_object_path(id).as_str())
                .await?;
            changes.removed.push((id, job.kind));
        }
        let mut ids: Vec<u64> = running.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let job = running[&id].clone();
            let path = job_object_path(id);
            match self.exported.get(&id) {
                None => {
                    changes.added.push((id, job.kind.clone()));
                    server
                        .at(path.as_str(), JobObject { job: job.clone() })
                        .await?;
                    super::web::emit_job_new(&self.connection, id, &job.kind).await?;
                    self.exported.insert(id, job);
                }
                Some(before) => {
                    let changed = job.changed_since(before);
                    if changed.is_empty() {
                        continue;
                    }
                    let object = server.interface::<_, JobObject>(path.as_str()).await?;
                    object.get_mut().await.job = job.clone();
                    let emitter = SignalEmitter::new(&self.connection, path.as_str())?;
                    zbus::fdo::Properties::properties_changed(
                        &emitter,
                        JOB_INTERFACE.try_into()?,
                        changed,
                        Cow::Borrowed(&[]),
                    )
                    .await?;
                    self.exported.insert(id, job);
                }
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_map_to_their_daemons_objects() {
        assert_eq!(
            worker_object_path("sluice-ingest-worker@2").as_str(),
            "/org/sluice/Ingest1/2"
        );
        assert_eq!(
            worker_object_path("sluice-scraper").as_str(),
            "/org/sluice/Scraper1"
        );
        assert_eq!(worker_object_path("bench-worker").as_str(), "/");
        assert_eq!(worker_object_path("sluice-ingest-worker@").as_str(), "/");
    }

    #[test]
    fn only_what_changed_is_signalled() {
        let before = RunningJob {
            id: 7,
            kind: "ingest".into(),
            cancelling: false,
            progress: None,
            message: String::new(),
            worker: "sluice-ingest-worker@1".into(),
            attempt: 1,
            started_at_ms: 1,
        };
        assert!(before.changed_since(&before).is_empty());
        let after = RunningJob {
            progress: Some(0.5),
            ..before.clone()
        };
        let changed = after.changed_since(&before);
        assert_eq!(changed.keys().collect::<Vec<_>>(), [&"Progress"]);
        assert_eq!(before.progress(), -1.0);
    }
}
