//! Wake-ups: the `JobQueued` signals of the monitor, the web and the scraper say "look at the
//! queue now". They only shorten the wait; a missed signal costs at most one poll interval,
//! because the worker also polls the database.

use std::num::NonZeroUsize;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::Notify;
use zbus::message::Type;
use zbus::{Connection, MatchRule, MessageStream};

use crate::execute::KINDS;

/// The interfaces whose `JobQueued` signal wakes a worker. The rule matches the interface and
/// member, not the sender, so any client that enqueues through the store may announce its job
/// (a benchmark producer, sluicectl); a forged signal costs one empty claim, nothing more.
pub const JOB_QUEUED_INTERFACES: [&str; 3] = [
    "org.sluice.Monitor1",
    "org.sluice.Web1",
    "org.sluice.Scraper1",
];

/// Subscribes to every `JobQueued` and sets `wake` for those of a kind this worker runs.
/// Several signals before the loop looks collapse into one wake-up (`Notify` keeps a single
/// permit), which is all a wake-up needs.
pub async fn subscribe(connection: &Connection, wake: Arc<Notify>) -> zbus::Result<()> {
    let queue = NonZeroUsize::new(256).expect("non-zero");
    for interface in JOB_QUEUED_INTERFACES {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .interface(interface)
            .member("JobQueued")
            .build()?;
        let mut stream = MessageStream::for_match_rule(rule, connection, Some(queue)).await?;
        let wake = Arc::clone(&wake);
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let Ok(message) = message else { continue };
                match message.body().deserialize::<(String, u64)>() {
                    Ok((kind, _job_id)) if KINDS.contains(&kind.as_str()) => wake.notify_one(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(error = %error, "ignoring a JobQueued signal with an unexpected body");
                    }
                }
            }
        });
    }
    Ok(())
}
