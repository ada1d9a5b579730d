//! A virtio-blk device behind a fake [`Transport`]: it negotiates `VERSION_1`, reports its
//! capacity in the device config (virtio 1.2 §5.2.4), and serves the split virtqueue (§2.7)
//! straight from memory: `notify` takes the new available chains, and they complete (data moved,
//! status byte and used ring written) at once, or when the test says so if completions are held.
//! Every request taken is logged ([`FakeDisk::taken`]: type and sector, in ring order), so tests
//! can tell which device performed what, and in which order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use virtio_drivers::device::common::Feature;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// The device's queue 0, as the driver configured it.
#[derive(Clone, Copy, Debug)]
struct Queue {
    size: u16,
    desc: PhysAddr,
    avail: PhysAddr,
    used: PhysAddr,
}

/// The device's state, shared between the transport (owned by the driver) and the test.
#[derive(Debug, Default)]
pub struct FakeDisk {
    /// The disk's bytes (a multiple of 512).
    pub data: Vec<u8>,
    /// Completions wait for [`complete`](Self::complete) instead of happening on `notify`.
    pub hold: bool,
    /// Requests to answer with VIRTIO_BLK_S_IOERR, counted down.
    pub fail_next: usize,
    /// Notifications received.
    pub notifications: usize,
    /// Times the driver wrote status 0 (a reset).
    pub resets: usize,
    /// Flush requests served.
    pub flushes: usize,
    /// Request heads taken off the available ring and not yet completed, oldest first.
    pub pending: VecDeque<u16>,
    /// Every request taken off the available ring, in the order the driver made them available.
    pub taken: Vec<Taken>,
    status: DeviceStatus,
    queue: Option<Queue>,
    last_avail: u16,
    used_idx: u16,
}

/// A request as the device took it off the available ring (its header, virtio 1.2 §5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// `VIRTIO_BLK_T_*`: 0 read, 1 write, 4 flush.
    pub kind: u32,
    /// First 512-byte sector.
    pub sector: u64,
}

impl Taken {
    /// `VIRTIO_BLK_T_IN`.
    pub const READ: u32 = 0;
    /// `VIRTIO_BLK_T_OUT`.
    pub const WRITE: u32 = 1;
}

/// The test's handle on a [`FakeBlkTransport`]'s device.
pub type DiskHandle = Rc<RefCell<FakeDisk>>;

/// The transport the driver owns.
pub struct FakeBlkTransport {
    disk: DiskHandle,
}

impl FakeBlkTransport {
    /// A device with a disk of `sectors` 512-byte sectors, and the test's handle on it.
    pub fn new(sectors: u64) -> (Self, DiskHandle) {
        let disk = Rc::new(RefCell::new(FakeDisk {
            data: vec![0; sectors as usize * 512],
            ..FakeDisk::default()
        }));
        (FakeBlkTransport { disk: disk.clone() }, disk)
    }
}

/// Reads a `T` from device-visible memory at `addr`.
///
/// # Safety
/// `addr` must point to `size_of::<T>()` readable bytes (driver memory from `FakeHal`).
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller's contract.
    unsafe { (addr as *const T).read_volatile() }
}

/// Writes a `T` to device-visible memory at `addr`.
///
/// # Safety
/// `addr` must point to `size_of::<T>()` writable bytes the driver lent to the device.
unsafe fn write<T: Copy>(addr: u64, value: T) {
    // SAFETY: the caller's contract.
    unsafe { (addr as *mut T).write_volatile(value) }
}

impl FakeDisk {
    /// Completes the `n` oldest pending requests (all when `n` exceeds them).
    pub fn complete(&mut self, n: usize) {
        for _ in 0..n.min(self.pending.len()) {
            if let Some(head) = self.pending.pop_front() {
                self.serve(head);
            }
        }
    }

    /// Completes the newest pending request first (the device may complete out of order).
    pub fn complete_newest(&mut self) {
        if let Some(head) = self.pending.pop_back() {
            self.serve(head);
        }
    }

    fn take_available(&mut self) {
        let Some(q) = self.queue else { return };
        // SAFETY: the available ring's index lives at driver area + 2 (virtio 1.2 §2.7.6).
        let avail_idx: u16 = unsafe { read(q.avail + 2) };
        while self.last_avail != avail_idx {
            let slot = u64::from(self.last_avail % q.size);
            // SAFETY: ring entries follow the flags and index, two bytes each.
            let head: u16 = unsafe { read(q.avail + 4 + 2 * slot) };
            // SAFETY: the head descriptor's buffer address (§2.7.5), then the request header
            // (type, reserved, sector) it points to (§5.2.6).
            let (kind, sector): (u32, u64) = unsafe {
                let hdr: u64 = read(q.desc + 16 * u64::from(head));
                (read(hdr), read(hdr + 8))
            };
            self.taken.push(Taken { kind, sector });
            self.pending.push_back(head);
            self.last_avail = self.last_avail.wrapping_add(1);
        }
    }

    /// Performs the request whose chain starts at `head` and puts it on the used ring.
    fn serve(&mut self, head: u16) {
        let Some(q) = self.queue else { return };
        let mut chain = Vec::new();
        let mut i = head;
        loop {
            let d = q.desc + 16 * u64::from(i);
            // SAFETY: descriptor `i` of the table (16 bytes: addr, len, flags, next; §2.7.5).
            let (addr, len, flags, next): (u64, u32, u16, u16) =
                unsafe { (read(d), read(d + 8), read(d + 12), read(d + 14)) };
            chain.push((addr, len as usize, flags));
            if flags & DESC_F_NEXT == 0 || chain.len() > usize::from(q.size) {
                break;
            }
            i = next;
        }
        let (hdr, _, _) = chain[0];
        let (status_addr, _, _) = chain[chain.len() - 1];
        // SAFETY: the request header (type, reserved, sector) in the first descriptor (§5.2.6).
        let (kind, sector): (u32, u64) = unsafe { (read(hdr), read(hdr + 8)) };
        let mut status = 0u8;
        let mut written = 1u32;
        for &(addr, len, flags) in &chain[1..chain.len() - 1] {
            let start = sector as usize * 512;
            let Some(range) = self.data.get_mut(start..start + len) else {
                status = 1;
                continue;
            };
            match (kind, flags & DESC_F_WRITE != 0) {
                // SAFETY: a device-writable data buffer of `len` bytes (a read).
                (0, true) => unsafe {
                    std::ptr::copy_nonoverlapping(range.as_ptr(), addr as *mut u8, len);
                    written += len as u32;
                },
                // SAFETY: a device-readable data buffer of `len` bytes (a write).
                (1, false) => unsafe {
                    std::ptr::copy_nonoverlapping(addr as *const u8, range.as_mut_ptr(), len);
                },
                _ => status = 1,
            }
        }
        if kind == 4 {
            self.flushes += 1;
        }
        if self.fail_next > 0 {
            self.fail_next -= 1;
            status = 1;
        }
        // SAFETY: the last descriptor is the device-writable status byte.
        unsafe { write(status_addr, status) };
        let entry = q.used + 4 + 8 * u64::from(self.used_idx % q.size);
        // SAFETY: the used ring's entry (id, len) and index in the device area (§2.7.8).
        unsafe {
            write(entry, u32::from(head));
            write(entry + 4, written);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            self.used_idx = self.used_idx.wrapping_add(1);
            write(q.used + 2, self.used_idx);
        }
    }
}

impl Transport for FakeBlkTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        Feature::VERSION_1.bits()
    }

    fn write_driver_features(&mut self, _driver_features: u64) {}

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        256
    }

    fn notify(&mut self, _queue: u16) {
        let mut disk = self.disk.borrow_mut();
        disk.notifications += 1;
        disk.take_available();
        if !disk.hold {
            disk.complete(usize::MAX);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.disk.borrow().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut disk = self.disk.borrow_mut();
        if status.is_empty() {
            disk.resets += 1;
            disk.queue = None;
            disk.pending.clear();
        }
        disk.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(&mut self, _q: u16, size: u32, desc: PhysAddr, avail: PhysAddr, used: PhysAddr) {
        self.disk.borrow_mut().queue = Some(Queue {
            size: size as u16,
            desc,
            avail,
            used,
        });
    }

    fn queue_unset(&mut self, _queue: u16) {
        self.disk.borrow_mut().queue = None;
    }

    fn queue_used(&mut self, _queue: u16) -> bool {
        self.disk.borrow().queue.is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let capacity = (self.disk.borrow().data.len() as u64 / 512).to_le_bytes();
        let bytes = capacity
            .get(offset..offset + size_of::<T>())
            .ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
}
