//! The control protocol between a guest and the hypervisor shim, over the COM2 serial line.
//!
//! The shim directs the handoff (docs/design.md, "The handoff"; US 20070204265A1, claim 1: the
//! redirector switches to port 2, port 1 drains, the device is released and reassigned, then port 2
//! forwards) and the guests report each step. Both ends of the protocol are defined here, once:
//!
//! - the messages ([`Message`], [`MessageKind`], [`Role`], [`Side`]);
//! - their framing: [`encode`], [`decode_line`] and the streaming [`Decoder`] for the
//!   byte-at-a-time serial line;
//! - the reliable channel both sides run ([`Endpoint`]): sequence numbers, one outstanding frame
//!   retransmitted after a timeout, acknowledgements, de-duplication ([`SeqTracker`]) and the
//!   counters the shim reports. It does no I/O and reads no clock: the caller feeds it received
//!   bytes, passes the time in, and writes the frames it hands out to its transport (the guest's
//!   UART, the shim's Unix socket);
//! - the handoff's transition table ([`TRANSITIONS`], [`step`]): which guest message is accepted
//!   from which role in which [`HandoffState`], and which shim action moves the state; and the
//!   shim's gate built on it ([`HandoffGate`]: the table plus the `hello` checks).
//!
//! # Frame grammar (version 1)
//!
//! One ASCII line per frame, at most [`MAX_FRAME_LEN`] bytes including the newline:
//!
//! ```text
//! frame    = body " *" crc "\n"
//! body     = "@baton" SP version SP seq SP message
//! version  = dec            ; must be 1 (PROTOCOL_VERSION)
//! seq      = dec            ; u32, the sender's frame number
//! crc      = 8 lowercase hex digits: CRC-32 (crate::crc32) of the body bytes
//! dec      = "0" / %x31-39 *%x30-39   ; no sign, no leading zeros, must fit the field
//! message  = "hello" SP role SP vm SP version       ; guest → shim   role = "owner" / "peer"
//!          / "drained" SP completed SP held         ; guest → shim   u64, u32
//!          / "released" SP slot                     ; guest → shim   PCI slot 0..=31
//!          / "peer-ready" SP capacity_sectors       ; guest → shim   u64
//!          / "forwarding"                           ; guest → shim
//!          / "migrate-request"                      ; guest → shim
//!          / "failback-request"                     ; guest → shim
//!          / "direct"                               ; guest → shim
//!          / "abandoned" SP replay SP held          ; guest → shim   u32, u32
//!          / "peer-stalled" SP ms                   ; guest → shim   u32
//!          / "error" SP code                        ; guest → shim   u32
//!          / "redirect"                             ; shim → guest
//!          / "ring-opened" SP slot                  ; shim → guest
//!          / "disk-attached" SP slot                ; shim → guest
//!          / "open-port2"                           ; shim → guest
//!          / "failback"                             ; shim → guest
//!          / "release-disk"                         ; shim → guest
//!          / "peer-lost"                            ; shim → guest
//!          / "close-ring" SP slot                   ; shim → guest
//!          / "take-back"                            ; shim → guest
//!          / "give-up"                              ; shim → guest
//!          / "ack" SP seq                           ; both ways
//! ```
//!
//! Fields are separated by exactly one space; there is nothing else on the line (no `\r`). The
//! character `@` appears only at the start of a frame, so a receiver that lost bytes (COM2 drops
//! guest output while the shim is not connected) resynchronises at the next `@`. The `version` in
//! `hello` is the guest's protocol version, [`PROTOCOL_VERSION`] ([`Message::hello`]).
//!
//! Example: `@baton 1 7 drained 1042 17 *00199c43\n` (CRC-32 as zlib computes it).
//!
//! # Reliability
//!
//! Each side numbers its own frames (`seq`, starting at 1, +1 per frame). Every frame except
//! `ack` is acknowledged with `ack <seq>` (sent with `seq` 0); the sender keeps one frame
//! outstanding and retransmits it unchanged until acknowledged. A receiver re-acknowledges but
//! does not re-act on a duplicate ([`SeqTracker`]). The `seq` of an `ack` frame itself is not
//! checked. [`Endpoint`] implements all of this for both sides; each side picks its retransmit
//! interval (200 ms on both today).
//!
//! # Threat model
//!
//! The shim treats guest bytes as hostile (I6): frames are bounded ([`MAX_FRAME_LEN`]), parsed
//! strictly by code that cannot panic (no indexing on untrusted values, checked arithmetic), every
//! number is range-checked, a message the guest may not send is dropped by the [`Endpoint`], and a
//! message is acted on only if the transition table accepts it from that guest in the current
//! [`HandoffState`] ([`HandoffGate::offer`]). No message can name a host path or device: slots
//! are small integers the shim itself chose. The guest applies the same parser to the shim's bytes.

pub mod endpoint;
pub mod frame;
pub mod gate;
pub mod handoff;
pub mod message;

pub use endpoint::{
    ACK_BACKLOG, BadFrame, Endpoint, EndpointStats, Received, SendError, SeqTracker, SeqVerdict,
};
pub use frame::{Decoder, decode_line, encode};
pub use gate::HandoffGate;
pub use handoff::{
    Event, HandoffState, Rejection, Sender, ShimAction, TRANSITIONS, Transition, Trigger, accepts,
    accepts_from, step,
};
pub use message::{ControlError, Frame, Message, MessageKind, Role, Side};

/// Protocol version carried in every frame and in the guests' `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest frame, including the trailing newline.
pub const MAX_FRAME_LEN: usize = 128;
/// The start of every frame.
pub const FRAME_PREFIX: &str = "@baton";
/// Highest PCI slot number on the root bus.
pub const MAX_PCI_SLOT: u8 = 31;
/// How long each side waits for the ack of its outstanding frame before sending it again, in µs
/// (200 ms: about 18 times what the longest frame takes on a 115200-baud line, and well below any
/// handoff step's timeout). The guest and the shim use the same interval, passed to
/// [`Endpoint::new`].
pub const RETRANSMIT_US: u64 = 200_000;
