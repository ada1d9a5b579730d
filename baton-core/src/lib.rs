//! Hardware-free logic shared by the baton guest kernel and the hypervisor shim.
//!
//! Everything here is plain `no_std` code without allocation, so it builds for the guest
//! (`x86_64-unknown-none`) and is unit-tested, property-tested and (for the lock-free parts)
//! model-checked on the host.
//!
//! - [`crc32`]: the CRC-32 used by block tags.
//! - [`tag`]: the self-describing 4 KiB block format the workload writes.
//! - [`workload`]: the deterministic write schedule.
//! - [`cmdline`]: the guest kernel command line.
//! - [`console`]: every `BATON` line the guest prints, typed, with one parser.
//! - [`guest_steps`]: the `BATON steps` line: when and how a guest took each step of a switch.
//! - [`report`]: the guest's `BATON result` line.
//! - [`net`]: the NIC workload's numbered frames and QEMU's `-netdev stream` framing.
//! - [`redirector`]: the lock-free port redirector (port 1 = device, port 2 = ring).
//! - [`stats`]: latency histograms and the per-port `BATON port-stats` line.
//! - [`timeline`]: completions per millisecond, for the handoff timeline plot.
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod console;
pub mod control;
pub mod crc32;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod guest_steps;
pub mod net;
pub mod redirector;
pub mod report;
pub mod ring;
pub mod stats;
pub mod tag;
pub mod text;
pub mod timeline;
pub mod workload;

mod sync;
