//! What each guest does with its devices: the owner runs the workload and hands its disk over
//! (`owner`, one round of its loop in [`owner_loop`], the handoff driver in [`handoff`]), the peer
//! receives the disk and serves the owner's ring (`peer`, with the ring server [`serve`]). Where
//! each message falls in the handoff is drawn in docs/design.md ("The handoff").
//!
//! The handoff driver is written against two small traits, so it runs on the host against fakes:
//! [`ControlLink`] (the control channel: `baton_core::control` messages, delivered reliably and
//! once) and [`OwnerPlatform`] (the clock, the ACPI eject, the ivshmem device).

#[cfg(target_os = "none")]
pub mod disk;
pub mod handoff;
#[cfg(target_os = "none")]
pub mod nic;
#[cfg(target_os = "none")]
pub mod owner;
pub mod owner_loop;
#[cfg(target_os = "none")]
pub mod peer;
pub mod serve;

use baton_core::control::Message;
use baton_core::ring::SharedRegion;

/// A control channel to the shim (docs/guest-interface.md): messages go out in order and are
/// delivered once; in the guest, `crate::platform::control::ControlChannel` over COM2.
pub trait ControlLink {
    /// Queues `msg` for delivery. Returns `false` if the queue is full (the message is dropped).
    fn send(&mut self, msg: Message) -> bool;

    /// Moves bytes both ways and returns the next new message from the shim, if any.
    fn poll(&mut self) -> Option<Message>;

    /// Whether every queued message was acknowledged.
    fn idle(&self) -> bool;

    /// Whether bytes from the shim arrived since the last call (in the guest: COM2 interrupted),
    /// so that a loop that polls the link only every so often polls now. `false` where nothing
    /// signals arrivals (the host tests' links).
    fn arrived(&mut self) -> bool {
        false
    }

    /// Whether a frame is arriving now (its first bytes came in): a guest should keep polling
    /// rather than halt. `false` where nothing tells (the host tests' links).
    fn receiving(&self) -> bool {
        false
    }
}

/// What the owner's handoff needs from the machine.
pub trait OwnerPlatform {
    /// The disk behind port 1 (in the guest the virtio-blk driver on its PCI transport).
    type Disk: crate::ports::BlockPort;

    /// Microseconds on a monotonic clock.
    fn now_us(&self) -> u64;

    /// Completes the ACPI removal of PCI slot `slot` (the device in it was quiesced).
    fn eject(&mut self, slot: u8);

    /// Sets up the ivshmem device in PCI slot `slot` and returns its shared memory; `None` (after
    /// logging why) when it is unusable.
    fn open_ring(&mut self, slot: u8) -> Option<SharedRegion<'static>>;

    /// Places the BARs of the virtio-blk function the shim plugged into PCI slot `slot` and
    /// brings it up (the failback's disk); `None` (after logging why) when there is none or it
    /// is unusable.
    fn open_disk(&mut self, slot: u8) -> Option<Self::Disk>;
}
