//! QEMU for baton: the one place where QEMU command lines (and the QMP options of hot-plugged
//! disks) are built ([`MachineSpec`], in `cmdline`; [`DiskBackend`], in `backend`), and the RAII
//! guard that owns a running QEMU process ([`QemuProcess`], in `process`); here, the fixed ids and
//! slots, the accelerator and finding QEMU and its firmware. A QEMU can run inside a simulated
//! host's network namespace ([`MachineSpec::netns`], [`crate::hosts`]).
//!
//! Machine choices follow docs/design.md ("QEMU 7.2 facts the design rests on"): `-machine pc`
//! (i440fx + PIIX4, whose ACPI PCI hotplug register block works without an ACPI interpreter), qboot
//! firmware, `-nodefaults`, the guest kernel PVH-booted with `-kernel`, COM1 on stdio, `isa-debug-exit` at 0xf4 (guest writes 0x10 → QEMU
//! exit status 33 = success, 0x11 → 35 = failure; docs/guest-interface.md).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

mod backend;
mod cmdline;
mod process;

pub use backend::{DiskBackend, DiskErrors, ErrorRule, NBD_RECONNECT_DELAY_S};
pub use cmdline::{MachineSpec, NicSpec, RingSpec, escape_opt, virtio_blk_device_props};
pub use process::QemuProcess;
pub(crate) use process::kill_with_parent;

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
/// The NIC's PCI slot (issue 11).
pub const NIC_SLOT: u8 = 0x7;
/// The NIC's QOM id.
pub const NIC_ID: &str = "nic0";
/// The NIC's netdev id.
pub const NIC_NETDEV_ID: &str = "net0";
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

#[cfg(test)]
mod tests {
    use super::*;

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
