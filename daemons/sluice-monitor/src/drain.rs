//! Noticing that the ingest queue drains, so held files are queued soon after a worker makes
//! room: the workers' `JobFinished` and `JobsChanged` signals. They only say "look now"; a
//! lost one costs at most one status interval, because the loop also looks on its status
//! tick while files are held.

use std::num::NonZeroUsize;

use futures_util::StreamExt;
use sluice_core::bus::INGEST_INTERFACE;
use tokio::sync::mpsc;
use zbus::message::Type;
use zbus::{Connection, MatchRule, MessageStream};

/// The worker signals that say a job ended (alone, or in a batch of changes).
const JOB_END_MEMBERS: [&str; 2] = ["JobFinished", "JobsChanged"];

/// Subscribes to every worker's job-end signals and puts a wake-up on `wake` for each; a
/// full channel already holds one, which is all a wake-up needs. The rule matches the
/// interface and member, not the sender: a forged signal costs one look at the queue.
pub async fn subscribe_to_job_ends(
    connection: &Connection,
    wake: mpsc::Sender<()>,
) -> zbus::Result<()> {
    let queue = NonZeroUsize::new(64).expect("non-zero");
    for member in JOB_END_MEMBERS {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .interface(INGEST_INTERFACE)
            .member(member)
            .build()?;
        let mut stream = MessageStream::for_match_rule(rule, connection, Some(queue)).await?;
        let wake = wake.clone();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                if message.is_ok() && wake.try_send(()).is_err() && wake.is_closed() {
                    return;
                }
            }
        });
    }
    Ok(())
}
