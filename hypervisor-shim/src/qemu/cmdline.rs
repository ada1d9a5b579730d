//! QEMU command lines: the machine every baton guest runs on ([`MachineSpec`]), the disk and ring
//! devices as command-line options and as the matching QMP properties for hot-plugging them.

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{
    Accel, BOOT_DISK_SLOT, CONTROL_CHARDEV_ID, DISK_ID, DiskBackend, DiskErrors, ErrorRule, NIC_ID,
    NIC_NETDEV_ID, NIC_SLOT, RING_DEVICE_ID, RING_MEMDEV_ID,
};

/// `device_add` properties of a virtio-blk-pci disk on `node` in PCI `slot`. Every virtio-blk
/// of baton shares the image's write permission (`share-rw=on`): which guest writes is decided
/// by the handoff, whose `released` (the device reset, its slot ejected) comes before the next
/// holder's `device_add`, not by QEMU's image lock, which QEMU drops only when it finalises the
/// old device, 1-10 ms later (docs/design.md, "Where the blackout goes").
pub fn virtio_blk_device_props(node: &str, slot: u8) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("drive".into(), node.into());
    m.insert("addr".into(), format!("{slot:#x}").into());
    m.insert("share-rw".into(), true.into());
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
    /// The network namespace the QEMU process runs in (a simulated host, [`crate::hosts`]); `None`:
    /// the shim's own. QMP, COM1 and COM2 are Unix sockets and pipes either way (the file system
    /// is shared).
    pub netns: Option<String>,
    /// A virtio-net NIC whose backend is a `-netdev stream` socket the shim listens on (issue 11).
    pub nic: Option<NicSpec>,
}

/// A virtio-net NIC in [`NIC_SLOT`] with MAC [`baton_core::net::GUEST_MAC`], its backend a
/// `-netdev stream` client of the Unix socket `socket` (QEMU 7.2 connects at start-up; the
/// shim's end is [`crate::nic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The host end's listening socket.
    pub socket: PathBuf,
}

impl NicSpec {
    /// The `-netdev` argument.
    pub fn netdev_arg(&self) -> String {
        format!(
            "stream,id={NIC_NETDEV_ID},server=off,addr.type=unix,addr.path={}",
            escape_opt(&self.socket.to_string_lossy())
        )
    }

    /// The `-device` argument: no option ROM (the guest boots by PVH, and the ROM file may not be
    /// installed).
    pub fn device_arg(&self) -> String {
        let m = baton_core::net::GUEST_MAC;
        format!(
            "virtio-net-pci,netdev={NIC_NETDEV_ID},id={NIC_ID},addr={NIC_SLOT:#x},romfile=,\
             mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
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
                "virtio-blk-pci,drive={DISK_ID},id={DISK_ID},addr={BOOT_DISK_SLOT:#x},share-rw=on"
            ));
        }
        if let Some(nic) = &self.nic {
            push("-netdev");
            push(&nic.netdev_arg());
            push("-device");
            push(&nic.device_arg());
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

    /// The program and its arguments as spawned: QEMU's own, prefixed with `ip netns exec NS`
    /// when [`MachineSpec::netns`] is set.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            v.extend(
                crate::hosts::wrap_netns(ns, &[])
                    .into_iter()
                    .map(OsString::from),
            );
        }
        v.push(self.qemu.clone().into_os_string());
        v.extend(self.args());
        v
    }

    /// The whole command line as one shell-like string (for logs).
    pub fn display(&self) -> String {
        let mut s = String::new();
        for a in self.argv() {
            let a = a.to_string_lossy();
            if !s.is_empty() {
                s.push(' ');
            }
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
            netns: None,
            nic: None,
        }
    }

    #[test]
    fn a_nic_is_a_stream_client_of_the_shims_socket_without_an_option_rom() {
        let mut s = spec(None);
        s.nic = Some(NicSpec {
            socket: "/tmp/a,b/nic.sock".into(),
        });
        let a = args(&s);
        let at = |flag: &str| a.iter().position(|x| x == flag).unwrap();
        assert_eq!(
            a[at("-netdev") + 1],
            "stream,id=net0,server=off,addr.type=unix,addr.path=/tmp/a,,b/nic.sock"
        );
        assert_eq!(
            a[at("-netdev") + 3],
            "virtio-net-pci,netdev=net0,id=nic0,addr=0x7,romfile=,mac=52:54:00:ba:70:01"
        );
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
                "virtio-blk-pci,drive=disk0,id=disk0,addr=0x4,share-rw=on"
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
            serde_json::json!({"drive": "disk0", "addr": "0x5", "share-rw": true})
        );
    }

    #[test]
    fn a_qemu_in_a_namespace_runs_under_ip_netns_exec() {
        let mut s = spec(Some(DiskBackend::Nbd {
            host: "198.18.0.3".parse().unwrap(),
            port: 10809,
            export: "disk".into(),
        }));
        let plain: Vec<String> = s
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(plain[0], "qemu-system-x86_64");
        assert_eq!(plain[1..], args(&s)[..]);
        s.netns = Some("baton-7-0-a".into());
        let v: Vec<String> = s
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(
            v[..5],
            ["ip", "netns", "exec", "baton-7-0-a", "qemu-system-x86_64"]
        );
        assert_eq!(v[5..], plain[1..]);
        assert!(
            s.display()
                .starts_with("ip netns exec baton-7-0-a qemu-system-x86_64 -machine pc")
        );
        // QMP and the disk are as outside a namespace: Unix sockets and the NBD address.
        assert_eq!(
            after(&v, "-blockdev"),
            [
                "driver=nbd,server.type=inet,server.host=198.18.0.3,server.port=10809,\
                 export=disk,reconnect-delay=10,node-name=disk0"
            ]
        );
    }
}
