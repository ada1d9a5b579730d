//! The baton guest's logic, in layers (docs/design.md, "Pieces"):
//!
//! - [`nicload`] (issue 11) sends and checks numbered frames through a [`ports::nic::NicPort`];
//! - [`workload`] (the owner's writes and read-back) sits on the [`stack`] (the block API over
//!   `baton_core::redirector`, US 20070204265A1 claim 1), which routes requests to
//! - [`ports`]: port 1, any [`ports::BlockPort`] (the virtio-blk driver [`ports::blk`], generic over
//!   virtio-drivers' `Hal` and `Transport`), and port 2, the shared-memory ring;
//! - [`roles`]: the owner's handoff driver ([`roles::handoff`], written against the
//!   [`roles::ControlLink`] and [`roles::OwnerPlatform`] traits), one round of the owner's main
//!   loop ([`roles::owner_loop`]), the peer's ring server ([`roles::serve`]), and, on the machine
//!   only, the owner's and the peer's main loops and the wiring of the guest's disk;
//! - [`platform`]: everything that touches the machine (PVH boot, GDT, interrupts, clock, frames,
//!   DMA `Hal`, COM1, the control channel on COM2, PCI configuration access and BAR placement,
//!   ivshmem, exit).
//!
//! Why one crate with a library and a binary rather than a separate no_std crate: the layers share
//! one set of types (ports, stack, roles) and one dependency list, and the split that matters —
//! what needs the machine and what does not — is a `cfg`, as in hermit's kernel. The library is
//! `no_std` for `x86_64-unknown-none` and uses `std` on the host, where `cargo test -p
//! baton-kernel --lib` runs the hardware-independent layers against fakes (the `fakes` module,
//! test builds only); modules that execute privileged instructions or touch fixed addresses exist
//! only under `cfg(target_os = "none")`. The binary (`main.rs`: PVH entry, panic handler) builds
//! only for the bare-metal target (`cargo kbuild`).
#![cfg_attr(target_os = "none", no_std)]

pub mod nicload;
pub mod platform;
pub mod ports;
pub mod roles;
pub mod stack;
pub mod steps;
pub mod workload;

#[cfg(test)]
pub mod fakes;
