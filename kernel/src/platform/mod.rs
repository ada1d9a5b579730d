//! The machine: the `pc` board under QEMU, as the guest sees it. Each module owns one piece of
//! hardware; none of them depends on the layers above (ports, stack, roles).
//!
//! Each module imports only modules listed before it, so there is no circle: `exit`, `clock`
//! (TSC, PIT channel 2), `serial` (COM1, logger; reads the clock), `gdt`, `interrupts` (IDT,
//! PIC, PIT channel 0; reports exceptions on COM1), `memory`, `hal` (DMA from the frames),
//! [`pci`], `pci_cam`, `shm` (ivshmem BAR2), `control` (the control channel on COM2).
//! [`pci`] (BAR sizing and placement, hotplug slot decoding) is hardware-independent: it works
//! on any `ConfigurationAccess` and is unit-tested on the host.

pub mod pci;

#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod clock;
#[cfg(target_os = "none")]
pub mod control;
#[cfg(target_os = "none")]
pub mod exit;
#[cfg(target_os = "none")]
pub mod gdt;
#[cfg(target_os = "none")]
pub mod hal;
#[cfg(target_os = "none")]
pub mod interrupts;
#[cfg(target_os = "none")]
pub mod memory;
#[cfg(target_os = "none")]
pub mod pci_cam;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
pub mod shm;
