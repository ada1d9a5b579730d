//! QEMU command lines: the machine every baton guest runs on ([`MachineSpec`]), the disk and ring
//! devices as command-line options and as the matching QMP properties for hot-plugging them.

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{Accel, BOOT_DISK_SLOT, CONTROL_CHARDEV_ID, DISK_ID, RING_DEVICE_ID, RING_MEMDEV_ID};

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
}

impl DiskBackend {
    /// Short name for reports: `file` or `null`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Null { .. } => "null",
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

/// `device_add` properties of a virtio-blk-pci disk on `node` in PCI `slot`.
pub fn virtio_blk_device_props(node: &str, slot: u8) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("drive".into(), node.into());
    m.insert("addr".into(), format!("{slot:#x}").into());
    m
}

/// The shared-memory ring of a handoff: a `share=on` file backend and an ivshmem-plain device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSpec {
    /// The backing file (under /dev/shm).
    pub mem_path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// `master=on`: this guest's copy of the region is the one migration carries (the guest that is
    /// migrated must be the master; docs/design.md, "QEMU 7.2 facts the design rests on").
    pub master: bool,
    /// PCI slot of the ivshmem device.
    pub slot: u8,
    /// The region lives in this QEMU's own memory (`memory-backend-ram`), not in `mem_path`: a
    /// destination on another host, where the source's shared file does not exist; migration
    /// copies the region like RAM (docs/design.md, "Across hosts").
    pub private: bool,
}

impl RingSpec {
    /// `object-add` properties (besides `qom-type` and `id`) of the memory backend.
    pub fn backend_props(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "mem-path".into(),
            self.mem_path.to_string_lossy().into_owned().into(),
        );
        m.insert("size".into(), self.size.into());
        m.insert("share".into(), true.into());
        m
    }

    /// `device_add` properties (besides `driver` and `id`) of the ivshmem-plain device.
    pub fn device_props(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("memdev".into(), RING_MEMDEV_ID.into());
        m.insert("master".into(), on_off(self.master).into());
        m.insert("addr".into(), format!("{:#x}", self.slot).into());
        m
    }

    /// The backend as a `-object` argument.
    pub fn object_arg(&self) -> String {
        if self.private {
            return format!("memory-backend-ram,id={RING_MEMDEV_ID},size={}", self.size);
        }
        format!(
            "memory-backend-file,id={RING_MEMDEV_ID},mem-path={},size={},share=on",
            escape_opt(&self.mem_path.to_string_lossy()),
            self.size
        )
    }

    /// The device as a `-device` argument.
    pub fn device_arg(&self) -> String {
        format!(
            "ivshmem-plain,memdev={RING_MEMDEV_ID},master={},id={RING_DEVICE_ID},addr={:#x}",
            on_off(self.master),
            self.slot
        )
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Doubles commas so a value can sit inside a QEMU `key=value,...` option string.
pub fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

/// Everything that defines one QEMU guest process.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Firmware image.
    pub bios: PathBuf,
    /// Guest kernel ELF (PVH).
    pub kernel: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// QMP Unix socket path (QEMU listens).
    pub qmp_socket: PathBuf,
    /// The workload disk present at boot, if any.
    pub boot_disk: Option<DiskBackend>,
    /// The control channel: COM2 (`isa-serial`) on a Unix socket the shim listens on; QEMU
    /// connects to it as a client at start-up.
    pub control_socket: Option<PathBuf>,
    /// A shared ring present from the start (a migration destination needs the source's current
    /// device set, which includes the hot-plugged ivshmem).
    pub ring: Option<RingSpec>,
    /// Start with `-incoming defer` (a migration destination or a restore).
    pub incoming: bool,
    /// What every virtio-blk-pci device of this QEMU does with a failed request (a `-global`
    /// default: it covers the disk at boot and a hot-added one alike).
    pub disk_errors: DiskErrors,
    /// An error injected into the boot disk's writes: its `-blockdev` is a `blkdebug` filter.
    pub disk_fault: Option<ErrorRule>,
}

impl MachineSpec {
    /// The argument vector (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-machine");
        push("pc");
        push("-accel");
        push(self.accel.as_str());
        push("-cpu");
        push(self.accel.cpu_model());
        push("-m");
        push(&format!("{}M", self.memory_mib));
        push("-bios");
        push(&self.bios.to_string_lossy());
        push("-nodefaults");
        push("-no-reboot");
        push("-display");
        push("none");
        push("-serial");
        push("stdio");
        if let Some(sock) = &self.control_socket {
            // After COM1's -serial, so this UART becomes COM2 (0x2f8).
            push("-chardev");
            push(&format!(
                "socket,id={CONTROL_CHARDEV_ID},path={}",
                escape_opt(&sock.to_string_lossy())
            ));
            push("-device");
            push(&format!("isa-serial,chardev={CONTROL_CHARDEV_ID}"));
        }
        push("-device");
        push("isa-debug-exit,iobase=0xf4,iosize=0x04");
        push("-qmp");
        push(&format!(
            "unix:{},server=on,wait=off",
            escape_opt(&self.qmp_socket.to_string_lossy())
        ));
        if self.disk_errors == DiskErrors::Report {
            for p in ["werror", "rerror"] {
                push("-global");
                push(&format!("virtio-blk-pci.{p}=report"));
            }
        }
        if let Some(disk) = &self.boot_disk {
            push("-blockdev");
            match &self.disk_fault {
                // QEMU takes a JSON object where a `-blockdev` argument starts with `{`.
                Some(rule) => push(
                    &Value::Object(disk.blockdev_options_with(DISK_ID, Some(rule))).to_string(),
                ),
                None => push(&disk.blockdev_arg(DISK_ID)),
            }
            push("-device");
            push(&format!(
                "virtio-blk-pci,drive={DISK_ID},id={DISK_ID},addr={BOOT_DISK_SLOT:#x}"
            ));
        }
        if let Some(ring) = &self.ring {
            push("-object");
            push(&ring.object_arg());
            push("-device");
            push(&ring.device_arg());
        }
        push("-kernel");
        push(&self.kernel.to_string_lossy());
        push("-append");
        push(&self.append);
        if self.incoming {
            push("-incoming");
            push("defer");
        }
        a
    }

    /// The whole command line as one shell-like string (for logs).
    pub fn display(&self) -> String {
        let mut s = self.qemu.to_string_lossy().into_owned();
        for a in self.args() {
            let a = a.to_string_lossy();
            s.push(' ');
            if a.contains(' ') || a.is_empty() {
                s.push('\'');
                s.push_str(&a);
                s.push('\'');
            } else {
                s.push_str(&a);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{HOTPLUG_DISK_SLOT, QBOOT_ROM, RING_SLOT};

    fn spec(disk: Option<DiskBackend>) -> MachineSpec {
        MachineSpec {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Kvm,
            memory_mib: 128,
            bios: QBOOT_ROM.into(),
            kernel: "/k/baton-kernel".into(),
            append: "role=owner vm=1".into(),
            qmp_socket: "/tmp/a,b/qmp.sock".into(),
            boot_disk: disk,
            control_socket: None,
            ring: None,
            incoming: false,
            disk_errors: DiskErrors::default(),
            disk_fault: None,
        }
    }

    fn args(s: &MachineSpec) -> Vec<String> {
        s.args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn command_line_has_the_contract_devices() {
        let a = args(&spec(Some(DiskBackend::File("/w/disk.img".into()))));
        assert_eq!(after(&a, "-machine"), ["pc"]);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["max,-arch-capabilities"]);
        assert_eq!(after(&a, "-bios"), [QBOOT_ROM]);
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(after(&a, "-serial"), ["stdio"]);
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/tmp/a,,b/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "virtio-blk-pci,drive=disk0,id=disk0,addr=0x4"
            ]
        );
        assert_eq!(
            after(&a, "-blockdev"),
            ["driver=file,filename=/w/disk.img,node-name=disk0"]
        );
        assert_eq!(after(&a, "-append"), ["role=owner vm=1"]);
        assert_eq!(after(&a, "-kernel"), ["/k/baton-kernel"]);
    }

    #[test]
    fn null_backend_and_no_disk() {
        let a = args(&spec(Some(DiskBackend::Null { size: 1048576 })));
        assert_eq!(
            after(&a, "-blockdev"),
            ["driver=null-co,size=1048576,read-zeroes=on,node-name=disk0"]
        );
        let mut s = spec(None);
        s.accel = Accel::Tcg;
        let a = args(&s);
        assert!(after(&a, "-blockdev").is_empty());
        assert_eq!(after(&a, "-device").len(), 1);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert!(s.display().contains("-append 'role=owner vm=1'"));
    }

    #[test]
    fn handoff_devices_on_the_command_line() {
        let mut s = spec(None);
        s.control_socket = Some("/w/ctl.sock".into());
        s.ring = Some(RingSpec {
            mem_path: "/dev/shm/baton-1".into(),
            size: 4 << 20,
            master: true,
            slot: RING_SLOT,
            private: false,
        });
        s.incoming = true;
        let a = args(&s);
        assert_eq!(after(&a, "-chardev"), ["socket,id=ctl,path=/w/ctl.sock"]);
        assert_eq!(
            after(&a, "-device"),
            [
                "isa-serial,chardev=ctl",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "ivshmem-plain,memdev=ring,master=on,id=ivshmem,addr=0x6"
            ]
        );
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-file,id=ring,mem-path=/dev/shm/baton-1,size=4194304,share=on"]
        );
        assert_eq!(after(&a, "-incoming"), ["defer"]);
        // COM2 comes after COM1.
        let serial = a.iter().position(|x| x == "-serial").unwrap();
        let chardev = a.iter().position(|x| x == "-chardev").unwrap();
        assert!(serial < chardev);
        let r = s.ring.as_ref().unwrap();
        assert_eq!(
            Value::Object(r.backend_props()),
            serde_json::json!({"mem-path": "/dev/shm/baton-1", "size": 4194304, "share": true})
        );
        let peer = RingSpec {
            master: false,
            ..r.clone()
        };
        assert_eq!(
            Value::Object(peer.device_props()),
            serde_json::json!({"memdev": "ring", "master": "off", "addr": "0x6"})
        );
        // A destination on another host keeps the region in its own RAM.
        let far = RingSpec {
            private: true,
            ..r.clone()
        };
        assert_eq!(far.object_arg(), "memory-backend-ram,id=ring,size=4194304");
    }

    #[test]
    fn report_errors_and_an_injected_enospc() {
        let mut s = spec(Some(DiskBackend::File("/w/disk.img".into())));
        assert!(after(&args(&s), "-global").is_empty());
        s.disk_errors = DiskErrors::Report;
        let rule = ErrorRule {
            errno: 28,
            sector: Some(512),
        };
        s.disk_fault = Some(rule);
        let a = args(&s);
        assert_eq!(
            after(&a, "-global"),
            [
                "virtio-blk-pci.werror=report",
                "virtio-blk-pci.rerror=report"
            ]
        );
        let node: Value = serde_json::from_str(after(&a, "-blockdev")[0]).unwrap();
        assert_eq!(
            node,
            serde_json::json!({
                "driver": "blkdebug", "node-name": "disk0",
                "inject-error": [{"event": "pwritev", "iotype": "write", "errno": 28,
                                  "sector": 512, "once": true}],
                "image": {"driver": "file", "filename": "/w/disk.img"}
            })
        );
        let any = ErrorRule {
            errno: 28,
            sector: None,
        };
        let o = DiskBackend::Null { size: 4096 }.blockdev_options_with("d", Some(&any));
        assert_eq!(o["image"]["driver"], "null-co");
        assert!(o["inject-error"][0].get("sector").is_none());
        assert_eq!(
            DiskBackend::Null { size: 4096 }.blockdev_options_with("d", None),
            DiskBackend::Null { size: 4096 }.blockdev_options("d")
        );
    }

    #[test]
    fn qmp_options_match_the_command_line() {
        let o = DiskBackend::Null { size: 4096 }.blockdev_options("disk0");
        assert_eq!(
            Value::Object(o),
            serde_json::json!({"driver": "null-co", "size": 4096, "read-zeroes": true, "node-name": "disk0"})
        );
        let o = DiskBackend::File("/x/d.img".into()).blockdev_options("n");
        assert_eq!(
            Value::Object(o),
            serde_json::json!({"driver": "file", "filename": "/x/d.img", "node-name": "n"})
        );
        assert_eq!(
            Value::Object(virtio_blk_device_props("disk0", HOTPLUG_DISK_SLOT)),
            serde_json::json!({"drive": "disk0", "addr": "0x5"})
        );
    }
}
