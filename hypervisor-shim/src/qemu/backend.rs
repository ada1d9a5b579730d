//! Where a virtio-blk disk's data lives ([`DiskBackend`]: a file, null-co, or an NBD export on
//! the storage host) as `-blockdev` arguments and `blockdev-add` options, and the host-side error
//! behaviour of the disk ([`DiskErrors`], [`ErrorRule`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::escape_opt;
/// Where a virtio-blk disk's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBackend {
    /// A raw image file.
    File(PathBuf),
    /// `null-co`: discards writes, reads zeroes; `size` in bytes.
    Null {
        /// Size in bytes (an integer: `-blockdev` rejects suffixes).
        size: u64,
    },
    /// An NBD export over TCP (qemu-storage-daemon on the storage host, [`crate::storage`]),
    /// opened with [`NBD_RECONNECT_DELAY_S`] so a restarted export is survived.
    Nbd {
        /// The export's host address.
        host: Ipv4Addr,
        /// Its TCP port.
        port: u16,
        /// The export's name.
        export: String,
    },
}

/// `reconnect-delay` of every NBD disk, in seconds (QEMU 7.2's `BlockdevOptionsNbd`): after an
/// unexpected disconnect, requests wait this long for a reconnection before they fail.
pub const NBD_RECONNECT_DELAY_S: u32 = 10;

impl DiskBackend {
    /// Short name for reports: `file`, `null` or `nbd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Null { .. } => "null",
            Self::Nbd { .. } => "nbd",
        }
    }

    /// The image's name as QEMU's messages show it: a file's name, `nbd://HOST:PORT/EXPORT`;
    /// `None` for null-co.
    pub fn image_name(&self) -> Option<String> {
        match self {
            Self::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Self::Null { .. } => None,
            Self::Nbd { host, port, export } => Some(format!("nbd://{host}:{port}/{export}")),
        }
    }

    /// The block node's options as a QMP `blockdev-add` argument object.
    pub fn blockdev_options(&self, node_name: &str) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            Self::File(path) => {
                m.insert("driver".into(), "file".into());
                m.insert(
                    "filename".into(),
                    path.to_string_lossy().into_owned().into(),
                );
            }
            Self::Null { size } => {
                m.insert("driver".into(), "null-co".into());
                m.insert("size".into(), (*size).into());
                m.insert("read-zeroes".into(), true.into());
            }
            Self::Nbd { host, port, export } => {
                let mut server = Map::new();
                server.insert("type".into(), "inet".into());
                server.insert("host".into(), host.to_string().into());
                // QAPI's InetSocketAddress takes the port as a string.
                server.insert("port".into(), port.to_string().into());
                m.insert("driver".into(), "nbd".into());
                m.insert("server".into(), Value::Object(server));
                m.insert("export".into(), export.as_str().into());
                m.insert("reconnect-delay".into(), NBD_RECONNECT_DELAY_S.into());
            }
        }
        m.insert("node-name".into(), node_name.into());
        m
    }

    /// The block node's options with an optional injected error ([`ErrorRule`]): with a rule,
    /// node `node_name` is a `blkdebug` filter over this backend's node (the same options, no
    /// node name of its own: QEMU names it and deletes it with the filter).
    pub fn blockdev_options_with(
        &self,
        node_name: &str,
        rule: Option<&ErrorRule>,
    ) -> Map<String, Value> {
        let Some(rule) = rule else {
            return self.blockdev_options(node_name);
        };
        let mut image = self.blockdev_options(node_name);
        image.remove("node-name");
        let mut m = Map::new();
        m.insert("driver".into(), "blkdebug".into());
        m.insert("node-name".into(), node_name.into());
        m.insert(
            "inject-error".into(),
            Value::Array(vec![Value::Object(rule.options())]),
        );
        m.insert("image".into(), Value::Object(image));
        m
    }

    /// The same options as a `-blockdev` argument.
    pub fn blockdev_arg(&self, node_name: &str) -> String {
        match self {
            Self::File(path) => format!(
                "driver=file,filename={},node-name={}",
                escape_opt(&path.to_string_lossy()),
                node_name
            ),
            Self::Null { size } => {
                format!("driver=null-co,size={size},read-zeroes=on,node-name={node_name}")
            }
            Self::Nbd { host, port, export } => format!(
                "driver=nbd,server.type=inet,server.host={host},server.port={port},export={},\
                 reconnect-delay={NBD_RECONNECT_DELAY_S},node-name={node_name}",
                escape_opt(export)
            ),
        }
    }
}

/// An error QEMU's `blkdebug` driver injects into the disk's writes (a test hook, `--inject
/// enospc@...`): an `inject-error` rule on the `pwritev` event (QEMU 7.2's `BlkdebugEvent`, raised
/// for every write that reaches the filter) for writes only (`iotype: write`), `once` (the rule is
/// removed after it fired, so a retried write succeeds). virtio-blk then sees the request fail
/// with `errno`, as if the image's file system had returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRule {
    /// The errno the write fails with (28: ENOSPC).
    pub errno: i32,
    /// The 512-byte sector the failing write covers; `None`: the first write, wherever it goes.
    pub sector: Option<u64>,
}

impl ErrorRule {
    /// The `inject-error` list element of `blkdebug`'s options.
    pub fn options(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("event".into(), "pwritev".into());
        m.insert("iotype".into(), "write".into());
        m.insert("errno".into(), self.errno.into());
        if let Some(s) = self.sector {
            m.insert("sector".into(), s.into());
        }
        m.insert("once".into(), true.into());
        m
    }
}

/// What virtio-blk does with a request that failed on the host (its `werror`/`rerror`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskErrors {
    /// QEMU's default (`werror=enospc`, `rerror=report`): a write that finds no room pauses the
    /// VM (`BLOCK_IO_ERROR`, action `stop`) until `cont` retries it; other errors go to the guest.
    #[default]
    PauseOnNoSpace,
    /// `werror=report,rerror=report`: every failed request completes in the guest with
    /// VIRTIO_BLK_S_IOERR (`BLOCK_IO_ERROR`, action `report`); the VM is never paused.
    Report,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbd() -> DiskBackend {
        DiskBackend::Nbd {
            host: Ipv4Addr::new(198, 18, 0, 3),
            port: 10809,
            export: "disk".into(),
        }
    }

    #[test]
    fn nbd_options_for_blockdev_add_and_the_command_line() {
        let b = nbd();
        assert_eq!(b.kind(), "nbd");
        assert_eq!(
            Value::Object(b.blockdev_options("disk0")),
            serde_json::json!({
                "driver": "nbd",
                "server": {"type": "inet", "host": "198.18.0.3", "port": "10809"},
                "export": "disk",
                "reconnect-delay": 10,
                "node-name": "disk0"
            })
        );
        assert_eq!(
            b.blockdev_arg("disk0"),
            "driver=nbd,server.type=inet,server.host=198.18.0.3,server.port=10809,export=disk,\
             reconnect-delay=10,node-name=disk0"
        );
        assert_eq!(
            b.image_name().as_deref(),
            Some("nbd://198.18.0.3:10809/disk")
        );
    }

    #[test]
    fn the_schema_accepts_the_nbd_options() {
        use crate::qmp::Command as _;
        let add = crate::qmp::BlockdevAdd(nbd().blockdev_options("disk0"));
        add.to_qapi()
            .expect("blockdev-add options fit BlockdevOptionsNbd");
    }

    #[test]
    fn image_names() {
        assert_eq!(
            DiskBackend::File("/w/disk.img".into())
                .image_name()
                .as_deref(),
            Some("disk.img")
        );
        assert_eq!(DiskBackend::Null { size: 4096 }.image_name(), None);
    }

    #[test]
    fn an_injected_error_wraps_the_nbd_node() {
        let rule = ErrorRule {
            errno: 28,
            sector: None,
        };
        let o = nbd().blockdev_options_with("disk0", Some(&rule));
        assert_eq!(o["driver"], "blkdebug");
        assert_eq!(o["image"]["driver"], "nbd");
        assert_eq!(o["image"]["reconnect-delay"], 10);
        assert!(o["image"].get("node-name").is_none());
    }
}
