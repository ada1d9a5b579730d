//! The ivshmem-plain device (docs/specs/ivshmem-spec.rst in QEMU): a PCI function whose BAR2 is
//! memory shared with another guest. The shim hot-plugs it into both guests when it opens the ring
//! for a handoff; the guest places its BARs like any other hot-added device.

use super::pci::{self, PciSetupError};
use super::pci_cam::{self, PortCam};
use baton_core::ring::SharedRegion;
use virtio_drivers::transport::pci::bus::PciRoot;

/// ivshmem's PCI vendor and device ids.
const IVSHMEM_ID: (u16, u16) = (0x1af4, 0x1110);

/// Why the shared region is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// No ivshmem function in the slot the shim named.
    #[error("no ivshmem device in slot {0}")]
    NotFound(u8),
    /// Its BARs could not be placed.
    #[error("{0}")]
    Setup(PciSetupError),
    /// BAR2 is missing or not memory.
    #[error("BAR2 is missing, not memory or above 4 GiB")]
    NoSharedMemory,
    /// BAR2 is placed outside the identity-mapped 4 GiB or is not aligned.
    #[error("shared memory unusable: {0}")]
    Unusable(baton_core::ring::RingError),
}

/// Sets up the ivshmem device in `slot` and returns its shared memory.
pub fn open(root: &mut PciRoot<PortCam>, slot: u8) -> Result<SharedRegion<'static>, ShmError> {
    let (df, _) = pci::find(root, |df, i| {
        df.device == slot && (i.vendor_id, i.device_id) == IVSHMEM_ID
    })
    .ok_or(ShmError::NotFound(slot))?;
    let bars = pci_cam::setup_device(root, df).map_err(ShmError::Setup)?;
    pci_cam::enable(root, df);
    let Some((false, address, end)) = bars[2] else {
        return Err(ShmError::NoSharedMemory);
    };
    let size = end - address;
    if address == 0 || address.saturating_add(size) > 1 << 32 {
        return Err(ShmError::NoSharedMemory);
    }
    log::info!("ivshmem {df}: {} KiB shared at {address:#x}", size >> 10);
    // SAFETY: BAR2 was just placed at `address` inside the identity-mapped first 4 GiB and is RAM
    // shared with the other guest; the kernel accesses it only through `SharedRegion` (atomics)
    // from now on, and never unplugs the device while the region is in use.
    unsafe { SharedRegion::from_raw(address as *mut u8, size as usize) }.map_err(ShmError::Unusable)
}
