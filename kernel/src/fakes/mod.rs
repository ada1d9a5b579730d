//! Test doubles for the host unit tests (built only under `cfg(test)`), in the manner of
//! virtio-drivers' own `FakeHal`/`FakeTransport` but written for this driver: a DMA [`Hal`] over
//! the host allocator, a virtio-blk device that serves the split virtqueue straight from memory
//! (single-threaded: requests are taken on `notify` and completed when the test says so), a PCI
//! configuration space with BARs and hot-added functions, and the owner's control link and
//! platform.
//!
//! [`Hal`]: virtio_drivers::Hal

pub mod blk;
pub mod hal;
pub mod owner;
pub mod pci;
