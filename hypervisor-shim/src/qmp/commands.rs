//! The QMP commands the shim sends, each mapped onto the command type that `qapi-qmp` generates from
//! QEMU's schema, and the parts of their replies the shim reads.
//!
//! A command here keeps the shape its callers build (a driver, an id and free-form properties for
//! `device_add`, the `blockdev-add` options as a JSON object, ...); [`Command::to_qapi`] turns it
//! into the schema's type, so arguments that the schema rejects (an unknown block driver, a
//! capability QEMU does not have, a property of the wrong type) fail before anything is sent.
//! [`Command::reply`] narrows the schema's reply to what the shim uses.

use qapi::Enum as _;
use qapi::qmp as q;
use serde_json::{Map, Value};

pub use qapi::Empty;

/// A QMP command as the shim builds it: the schema's command it is sent as and what the caller gets
/// back.
pub trait Command {
    /// The schema's command (`qapi::qmp::query_status`, ...): its name, its arguments and its reply
    /// type.
    type Qapi: qapi::Command;
    /// The command name, e.g. `query-status` (the schema's).
    const NAME: &'static str = <Self::Qapi as qapi::Command>::NAME;
    /// What the caller gets back.
    type Ok;
    /// The schema's command for these arguments; an error when they do not fit the schema.
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error>;
    /// The caller's view of the schema's reply.
    fn reply(ok: <Self::Qapi as qapi::Command>::Ok) -> Self::Ok;
}

/// Commands whose arguments and reply are the schema's, field for field.
macro_rules! schema_command {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* } => $qapi:ident, $ok:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }
        impl Command for $name {
            type Qapi = q::$qapi;
            type Ok = $ok;
            fn to_qapi(&self) -> Result<q::$qapi, serde_json::Error> {
                Ok(q::$qapi { $($field: self.$field.clone(),)* })
            }
            fn reply(ok: $ok) -> $ok {
                ok
            }
        }
    };
}

schema_command!(
    /// `cont`: resume the VCPUs.
    Cont {} => cont, Empty
);
schema_command!(
    /// `stop`: pause the VCPUs.
    Stop {} => stop, Empty
);
schema_command!(
    /// `migrate_cancel`: cancel the outgoing migration, whatever state it is in (a no-op when none
    /// runs). The cancellation is asynchronous: `query-migrate` says `cancelling`, then
    /// `cancelled` (or the migration's own final state when it ended first).
    MigrateCancel {} => migrate_cancel, Empty
);
schema_command!(
    /// `quit`: terminate QEMU.
    Quit {} => quit, Empty
);
schema_command!(
    /// `device_del`: asks the guest to release a device (completes on the guest's eject; QEMU then
    /// sends `DEVICE_DELETED`).
    DeviceDel {
        /// qdev id.
        id: String
    } => device_del, Empty
);
schema_command!(
    /// `blockdev-del`: removes a block node no device uses any more.
    BlockdevDel {
        /// Node name.
        node_name: String
    } => blockdev_del, Empty
);

/// `qmp_capabilities`: leave capabilities negotiation mode (no optional capability enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpCapabilities {}
impl Command for QmpCapabilities {
    type Qapi = q::qmp_capabilities;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::qmp_capabilities { enable: None })
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryStatus {}
/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// Run state as QEMU names it, e.g. `running`, `paused`, `inmigrate`, `postmigrate`.
    pub status: String,
    /// Whether the VCPUs run.
    pub running: bool,
}
impl Command for QueryStatus {
    type Qapi = q::query_status;
    type Ok = StatusInfo;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::query_status {})
    }
    fn reply(ok: q::StatusInfo) -> StatusInfo {
        StatusInfo {
            status: ok.status.name().to_owned(),
            running: ok.running,
        }
    }
}

/// `query-version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryVersion {}
/// Reply of `query-version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Numeric version.
    pub qemu: VersionTriple,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7`.
    pub package: String,
}
/// QEMU's major.minor.micro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}
impl std::fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.qemu;
        write!(f, "{}.{}.{}", v.major, v.minor, v.micro)?;
        let pkg = self.package.trim();
        if !pkg.is_empty() {
            write!(f, " ({pkg})")?;
        }
        Ok(())
    }
}
impl Command for QueryVersion {
    type Qapi = q::query_version;
    type Ok = VersionInfo;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::query_version {})
    }
    fn reply(ok: q::VersionInfo) -> VersionInfo {
        let n = |v: i64| u32::try_from(v).unwrap_or(0);
        VersionInfo {
            qemu: VersionTriple {
                major: n(ok.qemu.major),
                minor: n(ok.qemu.minor),
                micro: n(ok.qemu.micro),
            },
            package: ok.package,
        }
    }
}

/// `query-pci`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPci {}
/// One PCI bus in the `query-pci` reply.
#[derive(Debug, Clone)]
pub struct PciBus {
    /// Bus number.
    pub bus: u32,
    /// Devices on the bus.
    pub devices: Vec<PciDevice>,
}
/// One PCI function in the `query-pci` reply.
#[derive(Debug, Clone)]
pub struct PciDevice {
    /// Slot number.
    pub slot: u32,
    /// Function number.
    pub function: u32,
    /// The qdev id (`""` when none).
    pub qdev_id: String,
    /// BARs.
    pub regions: Vec<PciRegion>,
}
/// One BAR in the `query-pci` reply.
#[derive(Debug, Clone)]
pub struct PciRegion {
    /// BAR index.
    pub bar: u32,
    /// `io` or `memory`.
    pub kind: String,
    /// Address; QEMU reports -1 (all ones as a signed 64-bit integer) for an unmapped BAR.
    pub address: serde_json::Number,
    /// Size in bytes.
    pub size: u64,
}
impl PciRegion {
    /// The BAR's address, or `None` when QEMU reports it unmapped (-1 / all ones).
    pub fn mapped_address(&self) -> Option<u64> {
        self.address
            .as_u64()
            .filter(|&a| a != u64::MAX && a != u64::from(u32::MAX))
    }
}
impl Command for QueryPci {
    type Qapi = q::query_pci;
    type Ok = Vec<PciBus>;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::query_pci {})
    }
    fn reply(ok: Vec<q::PciInfo>) -> Vec<PciBus> {
        // Bus, slot, function and BAR numbers are small non-negative integers in QEMU's replies.
        let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        let region = |r: q::PciMemoryRegion| PciRegion {
            bar: n(r.bar),
            kind: r.type_,
            address: r.address.into(),
            size: u64::try_from(r.size).unwrap_or(0),
        };
        let device = |d: q::PciDeviceInfo| PciDevice {
            slot: n(d.slot),
            function: n(d.function),
            qdev_id: d.qdev_id,
            regions: d.regions.into_iter().map(region).collect(),
        };
        ok.into_iter()
            .map(|b| PciBus {
                bus: n(b.bus),
                devices: b.devices.into_iter().map(device).collect(),
            })
            .collect()
    }
}

/// `device_add` with a driver, an id and further properties (`drive`, `addr`, `memdev`, ...: the
/// schema leaves a device's properties free-form).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAdd {
    /// Device model, e.g. `virtio-blk-pci`.
    pub driver: String,
    /// qdev id.
    pub id: String,
    /// Further properties.
    pub props: Map<String, Value>,
}
impl Command for DeviceAdd {
    type Qapi = q::device_add;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        let mut props = self.props.clone();
        let bus = match props.remove("bus") {
            Some(v) => Some(serde_json::from_value(v)?),
            None => None,
        };
        Ok(q::device_add::new(
            self.driver.clone(),
            self.id.clone(),
            bus,
            props,
        ))
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `blockdev-add` with the node's options as a JSON object (`driver`, `node-name`, the driver's
/// options); checked against the schema's `BlockdevOptions`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockdevAdd(pub Map<String, Value>);
impl Command for BlockdevAdd {
    type Qapi = q::blockdev_add;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        serde_json::from_value(Value::Object(self.0.clone())).map(q::blockdev_add)
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `object-add` (e.g. a `memory-backend-file` for a shared ring); checked against the schema's
/// `ObjectOptions` for that QOM type.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectAdd {
    /// QOM type.
    pub qom_type: String,
    /// Object id.
    pub id: String,
    /// Further properties.
    pub props: Map<String, Value>,
}
impl Command for ObjectAdd {
    type Qapi = q::object_add;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        let mut m = self.props.clone();
        m.insert("qom-type".into(), Value::from(self.qom_type.as_str()));
        m.insert("id".into(), Value::from(self.id.as_str()));
        serde_json::from_value(Value::Object(m)).map(q::object_add)
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `object-del`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDel {
    /// Object id.
    pub id: String,
}
impl Command for ObjectDel {
    type Qapi = q::object_del;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::object_del {
            id: self.id.clone(),
        })
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `migrate` to a URI (e.g. `unix:/path`, `exec:cat > file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrate {
    /// Destination URI.
    pub uri: String,
}
impl Command for Migrate {
    type Qapi = q::migrate;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        // Only `uri`: `channels` and `resume` are newer than QEMU 7.2, `detach` is ignored.
        Ok(q::migrate {
            uri: Some(self.uri.clone()),
            channels: None,
            detach: None,
            resume: None,
        })
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `migrate-incoming` on a destination started with `-incoming defer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateIncoming {
    /// Listening URI.
    pub uri: String,
}
impl Command for MigrateIncoming {
    type Qapi = q::migrate_incoming;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        // Only `uri`: `channels` and `exit-on-error` are newer than QEMU 7.2.
        Ok(q::migrate_incoming {
            uri: Some(self.uri.clone()),
            channels: None,
            exit_on_error: None,
        })
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMigrate {}
/// Reply of `query-migrate` (the fields baton uses; all absent before a migration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    pub status: Option<String>,
    /// Milliseconds from start to completion (source side).
    pub total_time: Option<u64>,
    /// Milliseconds the guest was stopped for the final copy (source side).
    pub downtime: Option<u64>,
    /// Why a migration failed.
    pub error_desc: Option<String>,
}
impl MigrationInfo {
    /// Whether a migration is under way: any state but none, `completed`, `failed` and
    /// `cancelled` (`setup`, `active`, `cancelling`, `pre-switchover`, `device`, the postcopy
    /// states, `wait-unplug`, ...).
    pub fn in_progress(&self) -> bool {
        self.status.is_some() && !self.finished()
    }

    /// Whether the migration reached a final state.
    pub fn finished(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("completed" | "failed" | "cancelled")
        )
    }
}
impl Command for QueryMigrate {
    type Qapi = q::query_migrate;
    type Ok = MigrationInfo;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::query_migrate {})
    }
    fn reply(ok: q::MigrationInfo) -> MigrationInfo {
        let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        MigrationInfo {
            status: ok.status.map(|s| s.name().to_owned()),
            total_time: ms(ok.total_time),
            downtime: ms(ok.downtime),
            error_desc: ok.error_desc,
        }
    }
}

/// One migration capability and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationCapability {
    /// Capability name, e.g. `x-ignore-shared` (one of the schema's `MigrationCapability`).
    pub capability: String,
    /// On or off.
    pub state: bool,
}

/// `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateSetCapabilities {
    /// Capabilities to set.
    pub capabilities: Vec<MigrationCapability>,
}
impl Command for MigrateSetCapabilities {
    type Qapi = q::migrate_set_capabilities;
    type Ok = Empty;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        let capabilities = self
            .capabilities
            .iter()
            .map(|c| {
                Ok(q::MigrationCapabilityStatus {
                    capability: serde_json::from_value(Value::from(c.capability.as_str()))?,
                    state: c.state,
                })
            })
            .collect::<Result<_, serde_json::Error>>()?;
        Ok(q::migrate_set_capabilities { capabilities })
    }
    fn reply(ok: Empty) -> Empty {
        ok
    }
}

/// `human-monitor-command`: one HMP command line (used only for the QEMU 7.2 BAR2 workaround).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanMonitorCommand {
    /// The HMP command line.
    pub command_line: String,
}
impl Command for HumanMonitorCommand {
    type Qapi = q::human_monitor_command;
    type Ok = String;
    fn to_qapi(&self) -> Result<Self::Qapi, serde_json::Error> {
        Ok(q::human_monitor_command {
            command_line: self.command_line.clone(),
            cpu_index: None,
        })
    }
    fn reply(ok: String) -> String {
        ok
    }
}
