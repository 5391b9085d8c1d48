//! Reading the other daemons from a client (sluice-web's status page, `sluicectl status`):
//! whether a daemon's name has an owner, and every property of its interface in one
//! `Properties.GetAll` round trip, found from its bus name alone.

use std::collections::HashMap;

use zbus::Connection;
use zbus::fdo::{DBusProxy, PropertiesProxy};
use zbus::names::{BusName, InterfaceName};
use zbus::proxy::CacheProperties;

use super::{
    INGEST_INTERFACE, MONITOR_BUS_NAME, MONITOR_OBJECT_PATH, SCRAPER_BUS_NAME, SCRAPER_OBJECT_PATH,
    WEB_BUS_NAME, WEB_OBJECT_PATH, ingest_object_path,
};

/// Whether `name` has an owner on the bus (the daemon runs and holds its name); `false` for a
/// name that is not a valid bus name or when the bus cannot be asked.
pub async fn name_has_owner(connection: &Connection, name: &str) -> bool {
    let Ok(proxy) = DBusProxy::new(connection).await else {
        return false;
    };
    let Ok(name) = BusName::try_from(name) else {
        return false;
    };
    proxy.name_has_owner(name).await.unwrap_or(false)
}

/// The object path and interface a sluice daemon serves under `bus_name`
/// (`org.sluice.Ingest1.Worker<N>` → `/org/sluice/Ingest1/<N>`, `org.sluice.Ingest1`);
/// `None` for a name that is not a sluice daemon's.
pub fn daemon_object(bus_name: &str) -> Option<(String, &'static str)> {
    match bus_name {
        MONITOR_BUS_NAME => Some((MONITOR_OBJECT_PATH.to_owned(), MONITOR_BUS_NAME)),
        SCRAPER_BUS_NAME => Some((SCRAPER_OBJECT_PATH.to_owned(), SCRAPER_BUS_NAME)),
        WEB_BUS_NAME => Some((WEB_OBJECT_PATH.to_owned(), WEB_BUS_NAME)),
        ingest => {
            let instance = ingest
                .strip_prefix(INGEST_INTERFACE)?
                .strip_prefix(".Worker")?;
            Some((ingest_object_path(instance), INGEST_INTERFACE))
        }
    }
}

/// Every property of the daemon at `bus_name`, by D-Bus property name (`State`, `Status`,
/// `LastError`, its counters); empty for a name that is not a sluice daemon's.
pub async fn daemon_properties(
    connection: &Connection,
    bus_name: &str,
) -> zbus::Result<HashMap<String, zbus::OwnedVariant>> {
    let Some((path, interface)) = daemon_object(bus_name) else {
        return Ok(HashMap::new());
    };
    let properties = PropertiesProxy::builder(connection)
        .destination(bus_name)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    properties
        .get_all(InterfaceName::from_static_str_unchecked(interface))
        .await
        .map_err(zbus::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_daemon_name_maps_to_its_object_and_others_to_none() {
        assert_eq!(
            daemon_object("org.sluice.Monitor1"),
            Some(("/org/sluice/Monitor1".to_owned(), "org.sluice.Monitor1"))
        );
        assert_eq!(
            daemon_object("org.sluice.Ingest1.Worker7"),
            Some(("/org/sluice/Ingest1/7".to_owned(), "org.sluice.Ingest1"))
        );
        assert_eq!(daemon_object("org.sluice.Ingest1"), None);
        assert_eq!(daemon_object("org.example.Other"), None);
    }
}
