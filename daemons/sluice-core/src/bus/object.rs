//! The one mechanism behind every sluice D-Bus object: [`published_object!`] declares an
//! object's status, properties and signals once, and [`Published`] serves it and publishes
//! status changes.
//!
//! Adding a property is one line in the object's `properties { ... }` list: the status field,
//! the `#[zbus(property)]` getter and the `PropertiesChanged` entry all come from it. Adding a
//! signal is one line in its `signals { ... }` list: the `#[zbus(signal)]` declaration and the
//! method the daemon calls to emit it come from it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use tokio::sync::{mpsc, watch};
use zbus::Connection;
use zbus::object_server::{Interface, InterfaceRef, SignalEmitter};
use zbus::zvariant::Variant;

use super::{BusSetupError, COMMAND_QUEUE_DEPTH, CallerPolicy, serve_and_own_name};

/// A status snapshot whose fields are an object's properties.
pub trait PublishedStatus: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// The properties whose values differ between `before` and `after`, by D-Bus name, with
    /// their values in `after`.
    fn changed_properties(before: &Self, after: &Self) -> Vec<(String, Variant<'static>)>;
}

/// An object interface built by [`published_object!`]: it reads its properties from a status
/// snapshot and forwards its methods as commands to the daemon's main loop.
pub trait PublishedInterface: Interface {
    type Status: PublishedStatus;
    type Command: Send + 'static;

    fn new(
        commands: mpsc::Sender<Self::Command>,
        status: watch::Receiver<Self::Status>,
        policy: CallerPolicy,
    ) -> Self;
}

/// The daemon's side of an object: publishes its status and emits its signals.
pub struct Published<I: PublishedInterface> {
    interface: InterfaceRef<I>,
    status: watch::Sender<I::Status>,
}

impl<I: PublishedInterface> fmt::Debug for Published<I> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `InterfaceRef` has no `Debug`; the object path is what identifies the service.
        formatter
            .debug_struct("Published")
            .field("path", self.signal_emitter().path())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl<I: PublishedInterface> Published<I> {
    /// Serves the object at `path` and owns `name`; the receiver yields the commands the
    /// daemon's main loop must answer.
    pub async fn serve(
        connection: &Connection,
        path: &str,
        name: &str,
        policy: CallerPolicy,
        initial_status: I::Status,
    ) -> Result<(Published<I>, mpsc::Receiver<I::Command>), BusSetupError> {
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (status_sender, status_receiver) = watch::channel(initial_status);
        let interface = I::new(command_sender, status_receiver, policy);
        let interface = serve_and_own_name(connection, path, name, interface).await?;
        let published = Published {
            interface,
            status: status_sender,
        };
        Ok((published, command_receiver))
    }

    /// The status as the properties show it now.
    pub fn status(&self) -> I::Status {
        self.status.borrow().clone()
    }

    /// Where the object's signals go out from (its bus connection and object path).
    pub fn signal_emitter(&self) -> &SignalEmitter<'static> {
        self.interface.signal_emitter()
    }

    /// Changes the status and emits one `PropertiesChanged` carrying every property that
    /// changed with its new value; nothing when nothing changed.
    pub async fn update_status(&self, change: impl FnOnce(&mut I::Status)) -> zbus::Result<()> {
        let before = self.status();
        self.status.send_modify(change);
        let after = self.status();
        let changed = I::Status::changed_properties(&before, &after);
        if changed.is_empty() {
            return Ok(());
        }
        let (names, values): (Vec<String>, Vec<Variant<'static>>) = changed.into_iter().unzip();
        let changed_properties: HashMap<&str, Variant<'_>> =
            names.iter().map(String::as_str).zip(values).collect();
        zbus::fdo::Properties::properties_changed(
            self.signal_emitter(),
            I::name(),
            changed_properties,
            Cow::Borrowed(&[]),
        )
        .await
    }
}

/// The D-Bus member name zbus gives a Rust method: `files_detected` becomes `FilesDetected`.
pub fn dbus_member_name(rust_name: &str) -> String {
    let mut member_name = String::with_capacity(rust_name.len());
    let mut capitalize = true;
    for character in rust_name.chars() {
        if character == '_' {
            capitalize = true;
        } else if capitalize {
            member_name.push(character.to_ascii_uppercase());
            capitalize = false;
        } else {
            member_name.push(character);
        }
    }
    member_name
}

/// Declares a D-Bus object from one list of its properties and one of its signals.
///
/// It generates the status struct (the common `state`, `status` and `last_error` fields first,
/// then the listed ones), the interface struct, the whole `#[zbus::interface]` impl (the
/// `members` tokens as written, then the signals, then one getter per property) and, on
/// [`Published`], one method per `pub` signal that emits it. A signal declared without `pub`
/// (a rate-limited one) gets a private method for the service's own wrapper to call.
///
/// A property is `name: StoredType => DBusType = conversion;` where `conversion` turns a
/// `&StoredType` into the `DBusType` value (`Clone::clone` when they are the same); its doc
/// comment is the one introspection shows. Properties in the optional `counters { ... }` list
/// have the same form but change too often to announce (a byte or request count): they are
/// annotated `EmitsChangedSignal=false`, as systemd marks its own counters, and never appear
/// in a `PropertiesChanged`; a client reads them when it wants them.
macro_rules! published_object {
    (
        $(#[doc = $status_doc:tt])*
        status $status:ident;
        $(#[doc = $interface_doc:tt])*
        interface $interface:ident for $command:ty;
        attributes ($($interface_attributes:tt)*);
        $(#[doc = $status_property_doc:tt])*
        status_property;
        properties {
            $(
                $(#[doc = $property_doc:tt])*
                $property:ident : $stored:ty => $dbus:ty = $convert:expr;
            )*
        }
        $(counters {
            $(
                $(#[doc = $counter_doc:tt])*
                $counter:ident : $counter_stored:ty => $counter_dbus:ty = $counter_convert:expr;
            )*
        })?
        members { $($members:tt)* }
        signals {
            $(
                $(#[doc = $signal_doc:tt])*
                $signal_visibility:vis fn $signal:ident(
                    $($argument:ident : $argument_type:ty),* $(,)?
                );
            )*
        }
    ) => {
        $(#[doc = $status_doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $status {
            pub state: $crate::bus::DaemonState,
            /// One line a person can read, the same as the `STATUS=` sent to systemd.
            pub status: String,
            /// The last error, empty when there was none.
            pub last_error: String,
            $(
                $(#[doc = $property_doc])*
                pub $property: $stored,
            )*
            $($(
                $(#[doc = $counter_doc])*
                pub $counter: $counter_stored,
            )*)?
        }

        impl $crate::bus::object::PublishedStatus for $status {
            fn changed_properties(
                before: &Self,
                after: &Self,
            ) -> Vec<(String, zbus::zvariant::Variant<'static>)> {
                let mut changed = Vec::new();
                $crate::bus::object::published_object!(
                    @compare changed, before, after,
                    state = |state: &$crate::bus::DaemonState| state.as_str().to_owned(),
                    status = Clone::clone,
                    last_error = Clone::clone,
                    $($property = $convert,)*
                );
                changed
            }
        }

        $(#[doc = $interface_doc])*
        #[derive(Debug)]
        pub struct $interface {
            commands: tokio::sync::mpsc::Sender<$command>,
            status: tokio::sync::watch::Receiver<$status>,
            policy: $crate::bus::CallerPolicy,
        }

        impl $crate::bus::object::PublishedInterface for $interface {
            type Status = $status;
            type Command = $command;

            fn new(
                commands: tokio::sync::mpsc::Sender<$command>,
                status: tokio::sync::watch::Receiver<$status>,
                policy: $crate::bus::CallerPolicy,
            ) -> Self {
                $interface {
                    commands,
                    status,
                    policy,
                }
            }
        }

        #[zbus::interface($($interface_attributes)*)]
        impl $interface {
            $($members)*

            $(
                $(#[doc = $signal_doc])*
                #[zbus(signal)]
                async fn $signal(
                    emitter: &zbus::object_server::SignalEmitter<'_>,
                    $($argument: $argument_type),*
                ) -> zbus::Result<()>;
            )*

            /// `starting`, `running`, `reloading` or `stopping`.
            #[zbus(property)]
            fn state(&self) -> String {
                self.status.borrow().state.as_str().to_owned()
            }

            $(#[doc = $status_property_doc])*
            #[zbus(property)]
            fn status(&self) -> String {
                self.status.borrow().status.clone()
            }

            /// The last error, empty when there was none.
            #[zbus(property)]
            fn last_error(&self) -> String {
                self.status.borrow().last_error.clone()
            }

            $(
                $(#[doc = $property_doc])*
                #[zbus(property)]
                fn $property(&self) -> $dbus {
                    let convert = $convert;
                    convert(&self.status.borrow().$property)
                }
            )*

            $($(
                $(#[doc = $counter_doc])*
                #[zbus(property(emits_changed_signal = "false"))]
                fn $counter(&self) -> $counter_dbus {
                    let convert = $counter_convert;
                    convert(&self.status.borrow().$counter)
                }
            )*)?
        }

        impl $crate::bus::object::Published<$interface> {
            $(
                $(#[doc = $signal_doc])*
                $signal_visibility async fn $signal(
                    &self,
                    $($argument: $argument_type),*
                ) -> zbus::Result<()> {
                    $interface::$signal(self.signal_emitter(), $($argument),*).await
                }
            )*
        }
    };
    (@compare $changed:ident, $before:ident, $after:ident, $($field:ident = $convert:expr,)*) => {
        $(
            if $before.$field != $after.$field {
                let convert = $convert;
                $changed.push((
                    $crate::bus::object::dbus_member_name(stringify!($field)),
                    zbus::zvariant::Variant::from(convert(&$after.$field)),
                ));
            }
        )*
    };
}

pub(crate) use published_object;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_follow_zbus() {
        assert_eq!(dbus_member_name("state"), "State");
        assert_eq!(dbus_member_name("files_detected"), "FilesDetected");
        assert_eq!(dbus_member_name("last_error"), "LastError");
    }
}
