//! Which sluice processes that hold job leases have left the bus. When an ingest worker's or
//! the scraper's process dies, the kernel closes its socket, the bus daemon drops the
//! connection and announces that the name it owned (`org.sluice.Ingest1.Worker1`,
//! `org.sluice.Scraper1`) has no owner any more. A [`Departure`] names that connection, so the
//! leases it held can end at once (`Store::rescue_leases_of`) instead of when they expire.
//!
//! What is trusted, for what: only the bus daemon may say that a connection closed. A
//! `NameOwnerChanged` counts when the bus daemon sent it and the bus then answers that the old
//! owner's unique name has no owner either: the connection itself is gone, not only the name.
//! That says nothing about the process (it may live on, cut off from the bus); the lease token
//! fences such a process. And nothing depends on the signal arriving: a lease still expires.

use std::num::NonZeroUsize;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::fdo::DBusProxy;
use zbus::message::Type;
use zbus::names::BusName;
use zbus::{Connection, MatchRule, MessageStream};

use super::{INGEST_INTERFACE, SCRAPER_BUS_NAME};

/// A lease-holding sluice daemon's connection left the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The name that lost its owner: `org.sluice.Ingest1.Worker1`.
    pub bus_name: String,
    /// The departed connection's unique name: `:1.42`.
    pub unique_name: String,
    /// The departed connection's identity, as [`connection_identity`] gave it to that
    /// connection: what the leases it took record as their holder.
    pub identity: String,
}

/// This connection's identity: `<unique name>@<bus GUID>`. A bus daemon hands out each unique
/// name once, and a restarted one has a new GUID (and starts again at `:1.1`), so no two
/// connections ever share an identity. `None` on a peer-to-peer connection (no unique name).
pub fn connection_identity(connection: &Connection) -> Option<String> {
    let unique_name = connection.unique_name()?;
    Some(identity(
        unique_name.as_str(),
        connection.server_guid().as_str(),
    ))
}

/// Whether the owner of `bus_name` takes leases on jobs: an ingest worker or the scraper.
pub fn holds_leases(bus_name: &str) -> bool {
    bus_name == SCRAPER_BUS_NAME
        || bus_name
            .strip_prefix(INGEST_INTERFACE)
            .is_some_and(|rest| rest.starts_with(".Worker"))
}

/// Watches the bus for lease-holding sluice daemons whose connection closed, and yields one
/// [`Departure`] each. The receiver ends when this connection to the bus is lost.
pub async fn watch_departures(
    connection: &Connection,
) -> zbus::Result<mpsc::UnboundedReceiver<Departure>> {
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .arg0ns("org.sluice")
        .build()?;
    let queue = NonZeroUsize::new(256).expect("non-zero");
    let mut stream = MessageStream::for_match_rule(rule, connection, Some(queue)).await?;
    let bus = DBusProxy::new(connection).await?;
    let guid = connection.server_guid().as_str().to_owned();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            let body = message.body();
            let Ok((bus_name, old_owner, new_owner)) =
                body.deserialize::<(String, String, String)>()
            else {
                continue;
            };
            if !new_owner.is_empty() || old_owner.is_empty() || !holds_leases(&bus_name) {
                continue;
            }
            if !connection_closed(&bus, &old_owner).await {
                continue;
            }
            let departure = Departure {
                identity: identity(&old_owner, &guid),
                bus_name,
                unique_name: old_owner,
            };
            if sender.send(departure).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

fn identity(unique_name: &str, guid: &str) -> String {
    format!("{unique_name}@{guid}")
}

/// Whether the bus says the connection `unique_name` is gone. The bus daemon drops every name
/// of a closing connection before it answers another call, so `false` after a name lost its
/// owner means the owner gave the name up and is still connected.
async fn connection_closed(bus: &DBusProxy<'_>, unique_name: &str) -> bool {
    let Ok(name) = BusName::try_from(unique_name) else {
        return false;
    };
    match bus.name_has_owner(name).await {
        Ok(has_owner) => {
            if has_owner {
                tracing::debug!(
                    unique_name,
                    "{unique_name} gave up a sluice name but is still connected; its leases stay"
                );
            }
            !has_owner
        }
        Err(error) => {
            tracing::warn!(
                unique_name,
                error = %error,
                "cannot ask the bus whether {unique_name} is still connected: {error}; its \
                 leases end when they expire"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workers_and_the_scraper_hold_leases() {
        assert!(holds_leases("org.sluice.Ingest1.Worker1"));
        assert!(holds_leases("org.sluice.Ingest1.Worker_2d1"));
        assert!(holds_leases("org.sluice.Scraper1"));
        assert!(!holds_leases("org.sluice.Monitor1"));
        assert!(!holds_leases("org.sluice.Web1"));
        assert!(!holds_leases("org.sluice.Ingest1"));
        assert!(!holds_leases("org.sluice.Scraper10"));
    }
}
