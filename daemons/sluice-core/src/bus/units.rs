//! What systemd says about a sluice unit (state, main PID, restarts, since when, its
//! `STATUS=` line), read from `org.freedesktop.systemd1` on the system bus: one reader for
//! sluice-web's `/api/status` and `sluicectl status`.

use serde::Serialize;
use zbus::Connection;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;

/// One unit as systemd sees it; every field but the name `None` where systemd did not say
/// (not the service manager, not loaded, or not a service).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnitStatus {
    pub name: String,
    /// `loaded`, `not-found`, ...
    pub load_state: Option<String>,
    /// `active`, `inactive`, `failed`, ...
    pub active_state: Option<String>,
    /// `running`, `dead`, `auto-restart`, ...
    pub sub_state: Option<String>,
    /// The service's main process; `None` when it has none.
    pub main_pid: Option<u32>,
    /// How often systemd restarted the service since it was last started by hand.
    pub restarts: Option<u32>,
    /// When the unit last became active, µs since the epoch; `None` when never.
    pub active_since_us: Option<u64>,
    /// The daemon's last `STATUS=` line; `None` when empty.
    pub status_text: Option<String>,
}

impl UnitStatus {
    /// A unit nothing is known of yet.
    pub fn unknown(name: &str) -> UnitStatus {
        UnitStatus {
            name: name.to_owned(),
            ..UnitStatus::default()
        }
    }
}

/// Reads `name` (e.g. `sluice-monitor.service`) from systemd on `systemd` (the system bus).
/// `LoadUnit`, unlike `GetUnit`, answers for a unit that is not loaded too, with load state
/// `not-found` for one that does not exist.
pub async fn read_unit_status(systemd: &Connection, name: &str) -> zbus::Result<UnitStatus> {
    let mut unit = UnitStatus::unknown(name);
    let reply = systemd
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "LoadUnit",
            &(name,),
        )
        .await?;
    let path: zbus::OwnedObjectPath = reply.body().deserialize()?;
    let properties = PropertiesProxy::builder(systemd)
        .destination("org.freedesktop.systemd1")
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let unit_interface = InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
    let service_interface =
        InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service");
    let text = |value: zbus::OwnedVariant| String::try_from(value).ok();
    unit.load_state = text(properties.get(unit_interface.clone(), "LoadState").await?);
    unit.active_state = text(
        properties
            .get(unit_interface.clone(), "ActiveState")
            .await?,
    );
    unit.sub_state = text(properties.get(unit_interface.clone(), "SubState").await?);
    unit.active_since_us = u64::try_from(
        properties
            .get(unit_interface, "ActiveEnterTimestamp")
            .await?,
    )
    .ok()
    .filter(|since| *since != 0);
    if unit.load_state.as_deref() == Some("loaded") && name.ends_with(".service") {
        unit.main_pid = u32::try_from(properties.get(service_interface.clone(), "MainPID").await?)
            .ok()
            .filter(|pid| *pid != 0);
        unit.restarts = u32::try_from(
            properties
                .get(service_interface.clone(), "NRestarts")
                .await?,
        )
        .ok();
        unit.status_text = text(properties.get(service_interface, "StatusText").await?)
            .filter(|status| !status.is_empty());
    }
    Ok(unit)
}
