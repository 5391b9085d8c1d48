//! Reading the other daemons from a client (sluice-web's status page, `sluicectl status`):
//! the list of the suite's daemons, whether a daemon's name has an owner, and every property
//! of its interface in one `Properties.GetAll` round trip, found from its bus name alone.

use std::collections::HashMap;

use zbus::Connection;
use zbus::fdo::{DBusProxy, PropertiesProxy};
use zbus::names::{BusName, InterfaceName};
use zbus::proxy::CacheProperties;

use super::{
    INGEST_INTERFACE, MONITOR_BUS_NAME, MONITOR_OBJECT_PATH, SCRAPER_BUS_NAME, SCRAPER_OBJECT_PATH,
    WEB_BUS_NAME, WEB_OBJECT_PATH, ingest_bus_name, ingest_object_path, sanitize_instance,
};

/// One daemon of the suite as a client lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteDaemon {
    /// What people call it: `sluice-monitor`, `sluice-ingest-worker@2`.
    pub name: String,
    pub bus_name: String,
    pub object_path: String,
    /// Its systemd unit: `sluice-monitor.service`, `sluice-ingest-worker@2.service`.
    pub unit_name: String,
}

/// The suite's daemons, in the order status pages show them: monitor, scraper, web, then
/// ingest workers 1..=`workers` (the instances `sluice-worker-generator` starts).
pub fn suite_daemons(workers: u32) -> Vec<SuiteDaemon> {
    let single = |name: &str, bus_name: &str, object_path: &str| SuiteDaemon {
        name: name.to_owned(),
        bus_name: bus_name.to_owned(),
        object_path: object_path.to_owned(),
        unit_name: format!("{name}.service"),
    };
    let mut daemons = vec![
        single("sluice-monitor", MONITOR_BUS_NAME, MONITOR_OBJECT_PATH),
        single("sluice-scraper", SCRAPER_BUS_NAME, SCRAPER_OBJECT_PATH),
        single("sluice-web", WEB_BUS_NAME, WEB_OBJECT_PATH),
    ];
    for instance in 1..=workers {
        let instance = instance.to_string();
        // A number is its own sanitized form; the fallback only keeps this infallible.
        let sanitized = sanitize_instance(&instance).unwrap_or_else(|_| instance.clone());
        daemons.push(SuiteDaemon {
            name: format!("sluice-ingest-worker@{instance}"),
            bus_name: ingest_bus_name(&sanitized),
            object_path: ingest_object_path(&sanitized),
            unit_name: format!("sluice-ingest-worker@{instance}.service"),
        });
    }
    daemons
}

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
    fn the_suite_lists_three_daemons_then_each_worker_instance() {
        let daemons = suite_daemons(2);
        let names: Vec<&str> = daemons.iter().map(|daemon| daemon.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sluice-monitor",
                "sluice-scraper",
                "sluice-web",
                "sluice-ingest-worker@1",
                "sluice-ingest-worker@2"
            ]
        );
        assert_eq!(daemons[4].bus_name, "org.sluice.Ingest1.Worker2");
        assert_eq!(daemons[4].object_path, "/org/sluice/Ingest1/2");
        assert_eq!(daemons[4].unit_name, "sluice-ingest-worker@2.service");
        assert_eq!(daemons[0].unit_name, "sluice-monitor.service");
        for daemon in &daemons {
            assert_eq!(
                daemon_object(&daemon.bus_name).map(|(path, _)| path),
                Some(daemon.object_path.clone())
            );
        }
    }

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
