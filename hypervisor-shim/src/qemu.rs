//! The one place where QEMU command lines (and the QMP options of hot-plugged disks) are built, and
//! the RAII guard that owns a running QEMU process.
//!
//! Machine choices follow ../shared/qemu-notes.md: `-machine pc` (i440fx + PIIX4, whose ACPI PCI
//! hotplug register block works without an ACPI interpreter), qboot firmware, `-nodefaults`, the guest
//! kernel PVH-booted with `-kernel`, COM1 on stdio, `isa-debug-exit` at 0xf4 (guest writes 0x10 → QEMU
//! exit status 33 = success, 0x11 → 35 = failure; docs/guest-interface.md).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Firmware shipped by Debian's `qemu-system-x86` (fast: first serial byte after ~0.2 s).
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";
/// QEMU exit status when the guest wrote 0x10 to isa-debug-exit.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU exit status when the guest wrote 0x11 to isa-debug-exit.
pub const EXIT_FAILURE: i32 = 35;
/// qdev id and block node name of the workload disk.
pub const DISK_ID: &str = "disk0";
/// PCI slot of the disk present at boot.
pub const BOOT_DISK_SLOT: u8 = 0x4;
/// PCI slot a hot-added disk goes into.
pub const HOTPLUG_DISK_SLOT: u8 = 0x5;
/// PCI slot the disk takes in the peer guest after the handoff (the slot it had in the owner).
pub const PEER_DISK_SLOT: u8 = 0x4;
/// PCI slot of the ivshmem-plain device that carries the shared ring (in both guests).
pub const RING_SLOT: u8 = 0x6;
/// qdev id of the ivshmem-plain device.
pub const RING_DEVICE_ID: &str = "ivshmem";
/// QOM id of the ring's memory backend.
pub const RING_MEMDEV_ID: &str = "ring";
/// chardev id of the control channel (COM2).
pub const CONTROL_CHARDEV_ID: &str = "ctl";
/// How to install QEMU on Debian/Ubuntu.
pub const INSTALL_HINT: &str = "install it with `apt-get install qemu-system-x86` (as root)";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU binary not found
    #[error("QEMU binary `{0}` not found; {INSTALL_HINT}")]
    NotFound(String),
    /// firmware not found
    #[error("firmware {0} not found; it ships with QEMU: {INSTALL_HINT}")]
    NoFirmware(String),
    /// KVM was requested but cannot be used
    #[error("--accel kvm: cannot open /dev/kvm read-write ({0}); use --accel tcg or auto")]
    NoKvm(std::io::Error),
    /// QEMU could not be started
    #[error("cannot start QEMU `{qemu}`")]
    Spawn {
        /// The binary.
        qemu: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// waiting for QEMU failed
    #[error("cannot wait for QEMU")]
    Wait(#[source] std::io::Error),
}

/// Accelerator of a QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// Name as used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    /// The CPU model for this accelerator. Under KVM, `-cpu host` and plain `-cpu max` abort on this
    /// kind of (nested) host with "failed to set MSR 0x10a" (IA32_ARCH_CAPABILITIES); `max` without
    /// that feature works.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Self::Kvm => "max,-arch-capabilities",
            Self::Tcg => "max",
        }
    }
}

/// Whether /dev/kvm can be opened read-write (what QEMU needs for `-accel kvm`).
pub fn kvm_usable() -> Result<(), std::io::Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

/// Whether /dev/kvm is backed by software rather than hardware virtualization: the `kvm_pvm` module
/// (PVM, used for KVM inside VMs without nested VMX/SVM) with neither `kvm_intel` nor `kvm_amd`
/// loaded. PVM runs a guest that is not PVM-aware through instruction emulation; measured here, the
/// baton guest ran about 500 times slower than under TCG (25 vs 12,000 IOPS at QD1), so `auto`
/// prefers TCG on such hosts. Returns the module name when so.
pub fn kvm_is_software() -> Option<&'static str> {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    (loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")).then_some("kvm_pvm")
}

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
    /// migrated must be the master; qemu-notes.md).
    pub master: bool,
    /// PCI slot of the ivshmem device.
    pub slot: u8,
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
        if let Some(disk) = &self.boot_disk {
            push("-blockdev");
            push(&disk.blockdev_arg(DISK_ID));
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

    /// Starts QEMU with stdin closed and stdout (the guest's COM1) and stderr piped.
    pub fn spawn(&self) -> Result<QemuProcess, QemuError> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kill_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            qemu: self.qemu.display().to_string(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        Ok(QemuProcess {
            child,
            exited: None,
            stdout,
            stderr,
            started: Instant::now(),
        })
    }
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so a QEMU never outlives a shim
/// that was killed outright (SIGKILL skips the RAII guard).
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let hook = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a plain signal number, no pointers, and is
        // async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: `hook` runs in the forked child before exec; it only calls prctl(2), allocates
    // nothing and touches no state shared with the parent, as pre_exec requires.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Finds the QEMU binary: a path containing `/` must exist; a bare name is searched on `PATH`.
pub fn locate_qemu(qemu: &Path) -> Result<PathBuf, QemuError> {
    let name = qemu.to_string_lossy().into_owned();
    if name.contains('/') {
        return if qemu.is_file() {
            Ok(qemu.to_path_buf())
        } else {
            Err(QemuError::NotFound(name))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(qemu))
        .find(|p| p.is_file())
        .ok_or(QemuError::NotFound(name))
}

/// Checks that the qboot firmware is installed.
pub fn locate_bios() -> Result<PathBuf, QemuError> {
    let p = PathBuf::from(QBOOT_ROM);
    if p.is_file() {
        Ok(p)
    } else {
        Err(QemuError::NoFirmware(QBOOT_ROM.into()))
    }
}

/// A running QEMU process. Dropping it kills and reaps QEMU.
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    exited: Option<ExitStatus>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    started: Instant,
}

impl QemuProcess {
    /// When QEMU was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the guest's COM1 stream (QEMU's stdout).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Takes QEMU's stderr.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// The exit status if QEMU has exited (non-blocking).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(QemuError::Wait)?;
        }
        Ok(self.exited)
    }

    /// Whether QEMU still runs (an error counts as not running).
    pub fn alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        // ESRCH races (it exited meanwhile) are fine: wait() below reaps it either way.
        let _ = self.child.kill();
        let st = self.child.wait().map_err(QemuError::Wait)?;
        self.exited = Some(st);
        Ok(st)
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; kill() reaps whenever the kill succeeded.
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn locating_a_missing_qemu_says_how_to_install() {
        let e = locate_qemu(Path::new("/nonexistent/qemu")).unwrap_err();
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
        let e = locate_qemu(Path::new("no-such-qemu-binary-xyz")).unwrap_err();
        assert!(matches!(e, QemuError::NotFound(_)));
    }
}
