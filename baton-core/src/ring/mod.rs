//! The shared-memory request ring between the owner guest and the peer guest.
//!
//! After a directed handoff (US 20070204265A1, claim 1: "port 2 forwards the queued requests to the
//! peer that now holds the device") the owner's port 2 is a [`RingClient`] and the peer serves it
//! with a [`RingServer`]. Both sides live in one byte region: the ivshmem-plain BAR2 (4 MiB in
//! practice; any page-multiple length from [`MIN_REGION_LEN`] to [`MAX_REGION_LEN`] works).
//!
//! # Layout (version 1, little-endian, x86_64)
//!
//! Everything is derived from the region length by [`RingLayout::new`]; the header only *records*
//! the numbers, and [`attach`] accepts a header only if every recorded number equals what this
//! code computes for the region it was given. No offset is ever taken from shared memory.
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0x000 | u64 | magic `"BATNRING"` ([`RING_MAGIC`]), stored last with Release | owner ([`format`]) |
//! | 0x008 | u32 | version ([`RING_VERSION`]) | owner |
//! | 0x00c | u32 | header length (0x1000) | owner |
//! | 0x010 | u64 | region length | owner |
//! | 0x018 | u32 | ring entries *E* (SQ and CQ; power of two; equals the slot count) | owner |
//! | 0x01c | u32 | data slots *S* (64..=256) | owner |
//! | 0x020 | u32 | submission entry size (32) | owner |
//! | 0x024 | u32 | completion entry size (16) | owner |
//! | 0x028 | u32 | slot size (4096) | owner |
//! | 0x02c | u32 | submission ring offset (0x1000) | owner |
//! | 0x030 | u32 | completion ring offset (0x1000 + 32·E) | owner |
//! | 0x034 | u32 | first slot offset (page-aligned end of the completion ring) | owner |
//! | 0x040 | u32 | owner state ([`SideState`]) | owner |
//! | 0x044 | u32 | owner heartbeat counter | owner |
//! | 0x048 | u32 | owner fault word: [`RingError::code`] of what the owner found wrong with the peer | owner |
//! | 0x080 | u32 | peer state | peer |
//! | 0x084 | u32 | peer heartbeat counter | peer |
//! | 0x088 | u32 | peer fault word: what the peer found wrong with the owner | peer |
//! | 0x0c0 | u32 | SQ tail (free-running; owner produces) | owner |
//! | 0x100 | u32 | SQ head (free-running; peer consumes) | peer |
//! | 0x140 | u32 | CQ tail (free-running; peer produces) | peer |
//! | 0x180 | u32 | CQ head (free-running; owner consumes) | owner |
//! | 0x1000 | 32·E | submission ring | owner |
//! | 0x1000+32·E | 16·E | completion ring | peer |
//! | slots | 4096·S | data slots | owner (writes), peer (reads) |
//!
//! Each side's words sit in their own 64-byte line. With the 4 MiB BAR the layout has E = S = 256:
//! submission ring 0x1000..0x3000, completion ring 0x3000..0x4000, slots 0x4000..0x10_4000.
//!
//! Submission entry (32 bytes): `op: u32` ([`Op`]), `slot: u32`, `id: u64` (the owner's ticket),
//! `lba: u64` (512-byte sectors, as in virtio-blk), `len: u32` (bytes), `flags: u32` (must be 0).
//! Completion entry (16 bytes): `id: u64`, `slot: u32`, `status: u32` ([`Status`]).
//!
//! # Protocol
//!
//! A producer writes the entry, then publishes its index with a Release store; the consumer loads
//! the index with Acquire, copies the entry out once, then validates the copy. Indices are
//! free-running `u32`s masked by `E - 1`. Each side keeps its *own* indices locally and only ever
//! writes the shared copies; it reads only the other side's indices. Every request holds one data
//! slot from [`RingClient::reserve_slot`] until its completion has been consumed and the slot
//! released, so at most S = E requests are in flight and neither ring can overflow when both sides
//! behave.
//!
//! # Threat model
//!
//! The other side is untrusted (invariant I5): the peer may be buggy or hostile towards the owner
//! and vice versa, and either may write any word of the region at any time. Therefore:
//! - every shared-memory access is an atomic access at an aligned, bounds-checked offset (relaxed
//!   for data, Acquire/Release for indices), so a concurrent hostile write yields a garbage value,
//!   never undefined behaviour; nothing is read twice for one decision (copy once, then validate);
//! - indices that run ahead of what the ring can hold, slot numbers out of range or not owned by the
//!   request, lengths that are not a multiple of 4096 or exceed a slot, LBA ranges beyond the disk,
//!   unknown ops and completions for unknown or already completed requests are reported as
//!   [`RingError`]s; no input can make this code panic or access outside the region;
//! - errors that make the ring unusable (the other side broke the protocol) *latch*: the side
//!   records the error code in its fault word and state, and from then on polls return `None` and
//!   submits fail with [`RingError::Faulted`]. The owner then fails its in-flight requests with
//!   [`RingClient::abandon`]. Errors in a single request (bad op, length, LBA range) do not latch:
//!   the server answers that request with an error completion itself.
//!
//! Data slot contents are not validated here (they are the payload); the owner checks block tags.
//! A hostile peer can of course return wrong data or stop answering (heartbeats let the owner notice).
//!
//! Not covered: re-formatting a region a peer is still attached to (the shim creates a fresh region
//! per handoff). The code is exercised by host unit tests, a two-thread stress test, proptests and
//! the `ring_entries` fuzz target; it is not loom-checked because loom cannot model atomics placed
//! in raw memory (the region is not a loom object).
//!
//! # Files
//!
//! - `layout.rs`: the constants, [`offsets`], [`RingLayout`], [`format`] and [`attach`];
//! - `region.rs`: [`SharedRegion`], the only code that touches the shared bytes;
//! - `entry.rs`: [`Op`], [`Status`], [`SideState`], [`Submission`], [`Completion`] and the request
//!   shape check both sides apply;
//! - `error.rs`: [`RingError`] and its fault-word codes;
//! - `client.rs`: the owner's [`RingClient`];
//! - `server.rs`: the peer's [`RingServer`].

mod client;
mod entry;
mod error;
mod layout;
mod region;
mod server;

pub use client::RingClient;
use entry::check_shape;
pub use entry::{Completion, Op, SideState, Status, Submission};
pub use error::RingError;
#[doc(hidden)]
pub use layout::format_at;
pub use layout::{
    COMPLETION_ENTRY_SIZE, HEADER_LEN, MAX_REGION_LEN, MAX_SLOTS, MIN_REGION_LEN, MIN_SLOTS,
    REGION_ALIGN, RING_MAGIC, RING_VERSION, RingLayout, SECTOR_SIZE, SLOT_SIZE,
    SUBMISSION_ENTRY_SIZE, attach, format, offsets,
};
pub use region::SharedRegion;
pub use server::RingServer;
