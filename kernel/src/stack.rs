//! The resource stack: the block API the workload sees (allocate a request, fill its buffer,
//! submit, poll for completions), on top of the port redirector and its ports.
//!
//! Each request owns one 4 KiB DMA buffer for its whole life, so port 1 (virtio-blk) transfers
//! straight from it and port 2 (the ring) copies it into a ring slot.

use crate::blk::{BLOCK_BYTES, BlkDevice, BlkError, MAX_INFLIGHT, Op, Status};
use crate::memory::alloc_zeroed;

/// Identifies one outstanding request (an index into the stack's request table).
pub type Tag = usize;

/// Why a submission was refused (reported through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
pub enum StackError {
    /// No device behind the port the redirector chose.
    NoDevice,
    /// The port refused the request.
    Port1(BlkError),
}

/// A finished request.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The request.
    pub tag: Tag,
    /// What it was.
    pub op: Op,
    /// Its 4 KiB block.
    pub lba: u64,
    /// How it ended.
    pub status: Status,
}

#[derive(Clone, Copy)]
struct Entry {
    buf: *mut u8,
    op: Op,
    lba: u64,
}

/// The block API over the redirector's ports.
pub struct ResourceStack {
    port1: Option<BlkDevice>,
    entries: [Entry; MAX_INFLIGHT],
    free: heapless::Vec<u8, MAX_INFLIGHT>,
    /// Requests sent to port 1 so far.
    pub port1_requests: u64,
    /// Requests sent to port 2 so far.
    pub port2_requests: u64,
}

impl ResourceStack {
    /// A stack with no device yet; `None` when there is no memory for the request buffers.
    pub fn new() -> Option<Self> {
        let mut entries = [Entry {
            buf: core::ptr::null_mut(),
            op: Op::Read,
            lba: 0,
        }; MAX_INFLIGHT];
        for e in &mut entries {
            e.buf = alloc_zeroed(BLOCK_BYTES / 4096)? as *mut u8;
        }
        let mut free = heapless::Vec::new();
        for tag in (0..MAX_INFLIGHT as u8).rev() {
            let _ = free.push(tag);
        }
        Some(ResourceStack {
            port1: None,
            entries,
            free,
            port1_requests: 0,
            port2_requests: 0,
        })
    }

    /// Puts `dev` behind port 1.
    pub fn attach_port1(&mut self, dev: BlkDevice) {
        self.port1 = Some(dev);
    }

    /// Size of the port-1 disk in 4 KiB blocks.
    pub fn capacity_blocks(&self) -> Option<u64> {
        self.port1.as_ref().map(BlkDevice::capacity_blocks)
    }

    /// Takes a free request; `None` when [`MAX_INFLIGHT`] are outstanding.
    pub fn alloc(&mut self) -> Option<Tag> {
        self.free.pop().map(usize::from)
    }

    /// Returns a request taken by [`alloc`](Self::alloc) after its completion was handled.
    pub fn release(&mut self, tag: Tag) {
        let _ = self.free.push(tag as u8);
    }

    /// Requests allocated and not yet released.
    pub fn outstanding(&self) -> usize {
        MAX_INFLIGHT - self.free.len()
    }

    /// The buffer of request `tag`: fill it before a write, read it after a read completed.
    pub fn buffer(&mut self, tag: Tag) -> &mut [u8; BLOCK_BYTES] {
        // SAFETY: each entry owns its DMA page; the caller only asks for the buffer of a request
        // it holds and that is not outstanding at a port, and `&mut self` makes it unique.
        unsafe { &mut *(self.entries[tag].buf as *mut [u8; BLOCK_BYTES]) }
    }

    /// Sends request `tag` to the port the redirector chooses.
    pub fn submit(&mut self, tag: Tag, op: Op, lba: u64) -> Result<(), StackError> {
        let entry = &mut self.entries[tag];
        entry.op = op;
        entry.lba = lba;
        let dev = self.port1.as_mut().ok_or(StackError::NoDevice)?;
        // SAFETY: the entry's buffer is a DMA page that stays allocated for the stack's lifetime
        // and is not handed out again until the completion for `tag` has been returned.
        unsafe { dev.submit(tag, op, lba, entry.buf) }.map_err(StackError::Port1)?;
        self.port1_requests += 1;
        Ok(())
    }

    /// Takes one completion, if any port has one.
    pub fn poll(&mut self) -> Option<Completion> {
        let (tag, status) = self.port1.as_mut()?.poll()?;
        let e = self.entries[tag];
        Some(Completion {
            tag,
            op: e.op,
            lba: e.lba,
            status,
        })
    }
}
