//! Wake-ups: the `JobQueued` signals of the web and the scraper, and the monitor's
//! `FileDetected` (which names the ingest job it queued; the monitor sends no `JobQueued`
//! beside it), say "look at the queue now". They only shorten the wait; a missed signal costs
//! at most one poll interval, because the worker also polls the database.

use std::num::NonZeroUsize;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::Notify;
use zbus::message::{Message, Type};
use zbus::{Connection, MatchRule, MessageStream};

use sluice_core::store::INGEST_JOB_KIND;

use crate::execute::KINDS;

/// The interfaces whose `JobQueued` signal wakes a worker. The rule matches the interface and
/// member, not the sender, so any client that enqueues through the store may announce its job
/// (a benchmark producer, sluicectl); a forged signal costs one empty claim, nothing more.
pub const JOB_QUEUED_INTERFACES: [&str; 2] = ["org.sluice.Web1", "org.sluice.Scraper1"];

/// The monitor's interface, whose `FileDetected` announces an `ingest` job.
pub const FILE_DETECTED_INTERFACE: &str = "org.sluice.Monitor1";

/// Subscribes to every `JobQueued` and `FileDetected` and sets `wake` for those of a kind this
/// worker runs. Several signals before the loop looks collapse into one wake-up (`Notify`
/// keeps a single permit), which is all a wake-up needs.
pub async fn subscribe(connection: &Connection, wake: Arc<Notify>) -> zbus::Result<()> {
    let subscriptions = JOB_QUEUED_INTERFACES
        .into_iter()
        .map(|interface| (interface, "JobQueued"))
        .chain([(FILE_DETECTED_INTERFACE, "FileDetected")]);
    for (interface, member) in subscriptions {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .interface(interface)
            .member(member)
            .build()?;
        let queue = NonZeroUsize::new(256).expect("non-zero");
        let mut stream = MessageStream::for_match_rule(rule, connection, Some(queue)).await?;
        let wake = Arc::clone(&wake);
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let Ok(message) = message else { continue };
                match queued_kind(&message) {
                    Ok(kind) if KINDS.contains(&kind.as_str()) => wake.notify_one(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(error = %error, "ignoring a {member} signal with an unexpected body");
                    }
                }
            }
        });
    }
    Ok(())
}

/// The kind of job a wake-up signal announces: `JobQueued(kind, job_id)` says it,
/// `FileDetected(path, file_id, job_id)` is always an `ingest` job.
fn queued_kind(message: &Message) -> zbus::Result<String> {
    let body = message.body();
    let is_file_detected = message
        .header()
        .member()
        .is_some_and(|member| member.as_str() == "FileDetected");
    if is_file_detected {
        body.deserialize::<(Vec<u8>, u64, u64)>()?;
        return Ok(INGEST_JOB_KIND.to_owned());
    }
    let (kind, _job_id) = body.deserialize::<(String, u64)>()?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal<B>(interface: &str, member: &str, body: &B) -> Message
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        Message::signal("/org/sluice/Test1", interface, member)
            .build(body)
            .unwrap()
    }

    /// The monitor announces an ingest job only with `FileDetected` (issue 17, finding 4):
    /// a worker must wake on it as on another daemon's `JobQueued`.
    #[test]
    fn file_detected_announces_an_ingest_job_and_job_queued_names_its_kind() {
        let detected = signal(
            FILE_DETECTED_INTERFACE,
            "FileDetected",
            &(b"/srv/inbox/\xff.pdf\0".to_vec(), 3u64, 4u64),
        );
        assert_eq!(queued_kind(&detected).unwrap(), INGEST_JOB_KIND);
        assert!(KINDS.contains(&INGEST_JOB_KIND));
        let queued = signal("org.sluice.Web1", "JobQueued", &("download", 5u64));
        assert_eq!(queued_kind(&queued).unwrap(), "download");
        // A body of the wrong shape is no wake-up (and no panic).
        let forged = signal(FILE_DETECTED_INTERFACE, "FileDetected", &("/a", 3u64));
        assert!(queued_kind(&forged).is_err());
        let forged = signal("org.sluice.Web1", "JobQueued", &(5u64,));
        assert!(queued_kind(&forged).is_err());
    }
}
