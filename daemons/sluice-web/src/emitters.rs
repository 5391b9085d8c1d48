//! The bus signals the event streams may trust: only those sent by the connection that owns
//! the emitting daemon's well-known name at that moment.
//!
//! Any client of the bus can send a signal with any object path and interface (`busctl emit
//! /org/sluice/Monitor1 org.sluice.Monitor1 FileDetected …` as `nobody`), so path and
//! interface say nothing about who sent it. The bus does stamp every message with its
//! sender's unique name, and tells who owns which name through `NameOwnerChanged`; this module
//! keeps that table and lets through only a signal whose sender owns the matching name.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{Peekable, Stream, StreamExt};
use sluice_core::bus::{daemon_object, ingest_bus_name};
use zbus::message::{Message, Type};
use zbus::names::BusName;
use zbus::{MatchRule, MessageStream};

/// The bus itself: the only sender of `NameOwnerChanged` worth believing.
const BUS_DRIVER: &str = "org.freedesktop.DBus";

/// The well-known name whose owner alone may emit a signal of `interface` at `path`
/// (`/org/sluice/Ingest1/2`, `org.sluice.Ingest1` → `org.sluice.Ingest1.Worker2`); `None`
/// for an object no sluice daemon serves.
pub fn emitter_name(interface: &str, path: &str) -> Option<String> {
    let candidate = match path.strip_prefix("/org/sluice/Ingest1/") {
        Some(instance) => ingest_bus_name(instance),
        None => path.strip_prefix('/')?.replace('/', "."),
    };
    let (expected_path, expected_interface) = daemon_object(&candidate)?;
    (expected_path == path && expected_interface == interface).then_some(candidate)
}

/// Which unique name owns each `org.sluice.*` name, as far as the bus has told.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameOwners {
    owners: HashMap<String, String>,
}

impl NameOwners {
    /// Records a `NameOwnerChanged(name, old_owner, new_owner)`; an empty owner is none.
    pub fn owner_changed(&mut self, name: &str, old_owner: &str, new_owner: &str) {
        if !new_owner.is_empty() {
            self.owners.insert(name.to_owned(), new_owner.to_owned());
        } else if self.owners.get(name).map(String::as_str) == Some(old_owner) {
            // Only the owner that left is forgotten: a change already overtaken by a newer
            // owner (seen in the start-up snapshot) must not erase that owner.
            self.owners.remove(name);
        }
    }

    /// Whether `sender` may emit a signal of `interface` at `path`: it owns the daemon's name.
    pub fn may_emit(&self, sender: &str, interface: &str, path: &str) -> bool {
        emitter_name(interface, path)
            .and_then(|name| self.owners.get(&name))
            .is_some_and(|owner| owner == sender)
    }
}

/// Signals on `/org/sluice/…`, in the order the bus delivered them, each from the current
/// owner of its daemon's name; everything else is dropped here.
pub struct TrustedSignals {
    signals: Peekable<MessageStream>,
    owner_changes: Peekable<MessageStream>,
    owners: NameOwners,
}

impl TrustedSignals {
    /// Subscribes to sluice's signals and to ownership changes of `org.sluice.*` names, then
    /// reads the current owners; in that order, so no change between the two is missed.
    pub async fn subscribe(
        connection: &zbus::Connection,
        capacity: usize,
    ) -> zbus::Result<TrustedSignals> {
        let capacity = std::num::NonZeroUsize::new(capacity);
        let signal_rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .path_namespace("/org/sluice")
            .build()?;
        let owner_rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(BUS_DRIVER)
            .path("/org/freedesktop/DBus")
            .interface(BUS_DRIVER)
            .member("NameOwnerChanged")
            .arg0ns("org.sluice")
            .build()?;
        let owner_changes = MessageStream::for_match_rule(owner_rule, connection, capacity)
            .await?
            .peekable();
        let signals = MessageStream::for_match_rule(signal_rule, connection, capacity)
            .await?
            .peekable();
        let driver = zbus::fdo::DBusProxy::new(connection).await?;
        let mut owners = NameOwners::default();
        for name in driver.list_names().await? {
            if !name.starts_with("org.sluice.") {
                continue;
            }
            // A name released since the list was made has no owner; that is not an error.
            if let Ok(owner) = driver.get_name_owner(BusName::from(&name)).await {
                owners.owner_changed(name.as_str(), "", owner.as_str());
            }
        }
        Ok(TrustedSignals {
            signals,
            owner_changes,
            owners,
        })
    }

    /// The next trusted signal, or a stream error; `None` once the connection is gone.
    /// Cancel-safe: nothing is taken from a stream unless it is used in the same poll.
    pub async fn next(&mut self) -> Option<zbus::Result<Message>> {
        std::future::poll_fn(|context| self.poll_next_trusted(context)).await
    }

    fn poll_next_trusted(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<Option<zbus::Result<Message>>> {
        loop {
            let signal_position = match Pin::new(&mut self.signals).poll_peek(context) {
                Poll::Ready(Some(Ok(message))) => Some(message.recv_position()),
                Poll::Ready(Some(Err(_))) => return Pin::new(&mut self.signals).poll_next(context),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => None,
            };
            // The connection hands each message to every matching stream before it reads the
            // next one, so an ownership change received before this signal is already
            // queued: apply those first, and the signal is judged by the owner it was sent
            // under.
            let change_first = match Pin::new(&mut self.owner_changes).poll_peek(context) {
                Poll::Ready(Some(Ok(change))) => {
                    signal_position.is_none_or(|position| change.recv_position() < position)
                }
                Poll::Ready(Some(Err(_))) => true,
                Poll::Ready(None) | Poll::Pending => false,
            };
            if change_first {
                match Pin::new(&mut self.owner_changes).poll_next(context) {
                    Poll::Ready(Some(Ok(change))) => self.apply_owner_change(&change),
                    Poll::Ready(Some(Err(error))) => {
                        tracing::warn!(
                            error = %error,
                            "a malformed message arrived on the name-owner stream: {error}"
                        );
                    }
                    Poll::Ready(None) | Poll::Pending => {}
                }
                continue;
            }
            if signal_position.is_none() {
                return Poll::Pending;
            }
            let Poll::Ready(Some(Ok(message))) = Pin::new(&mut self.signals).poll_next(context)
            else {
                continue;
            };
            if self.is_trusted(&message) {
                return Poll::Ready(Some(Ok(message)));
            }
        }
    }

    fn apply_owner_change(&mut self, message: &Message) {
        // zbus matches a well-known sender only on the bus side; any other match rule of this
        // connection could bring in a look-alike, so the sender is checked here again.
        let header = message.header();
        if header.sender().map(|sender| sender.as_str()) != Some(BUS_DRIVER) {
            return;
        }
        let Ok((name, old_owner, new_owner)) =
            message.body().deserialize::<(String, String, String)>()
        else {
            return;
        };
        self.owners.owner_changed(&name, &old_owner, &new_owner);
    }

    fn is_trusted(&self, message: &Message) -> bool {
        let header = message.header();
        let (Some(sender), Some(interface), Some(path)) =
            (header.sender(), header.interface(), header.path())
        else {
            return false;
        };
        let trusted = self
            .owners
            .may_emit(sender.as_str(), interface.as_str(), path.as_str());
        if !trusted {
            // Debug, not warn: whoever can reach the bus could otherwise fill the journal.
            tracing::debug!(
                sender = %sender,
                interface = %interface,
                path = %path,
                member = ?header.member().map(|member| member.as_str()),
                "ignored a signal on {path} from {sender}: that connection does not own the daemon's bus name"
            );
        }
        trusted
    }
}

impl std::fmt::Debug for TrustedSignals {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TrustedSignals")
            .field("owners", &self.owners)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_daemon_object_has_one_emitter_name() {
        assert_eq!(
            emitter_name("org.sluice.Monitor1", "/org/sluice/Monitor1").as_deref(),
            Some("org.sluice.Monitor1")
        );
        assert_eq!(
            emitter_name("org.sluice.Scraper1", "/org/sluice/Scraper1").as_deref(),
            Some("org.sluice.Scraper1")
        );
        assert_eq!(
            emitter_name("org.sluice.Web1", "/org/sluice/Web1").as_deref(),
            Some("org.sluice.Web1")
        );
        assert_eq!(
            emitter_name("org.sluice.Ingest1", "/org/sluice/Ingest1/2").as_deref(),
            Some("org.sluice.Ingest1.Worker2")
        );
        // An interface at another daemon's path, or an object nobody serves, has none.
        assert_eq!(
            emitter_name("org.sluice.Monitor1", "/org/sluice/Scraper1"),
            None
        );
        assert_eq!(emitter_name("org.sluice.Evil1", "/org/sluice/Evil1"), None);
        assert_eq!(
            emitter_name("org.sluice.Ingest1", "/org/sluice/Ingest1"),
            None
        );
        assert_eq!(emitter_name("org.sluice.Monitor1", "/FAKE"), None);
    }

    #[test]
    fn only_the_current_owner_may_emit() {
        let mut owners = NameOwners::default();
        let monitor = ("org.sluice.Monitor1", "/org/sluice/Monitor1");
        assert!(
            !owners.may_emit(":1.5", monitor.0, monitor.1),
            "no owner yet"
        );
        owners.owner_changed("org.sluice.Monitor1", "", ":1.5");
        assert!(owners.may_emit(":1.5", monitor.0, monitor.1));
        assert!(!owners.may_emit(":1.6", monitor.0, monitor.1));
        // A stale release of an earlier owner does not erase the current one.
        owners.owner_changed("org.sluice.Monitor1", ":1.3", "");
        assert!(owners.may_emit(":1.5", monitor.0, monitor.1));
        owners.owner_changed("org.sluice.Monitor1", ":1.5", "");
        assert!(!owners.may_emit(":1.5", monitor.0, monitor.1));
    }
}
