//! The control messages, who sends them, and the errors of the wire format.

use core::fmt;

use super::{MAX_FRAME_LEN, PROTOCOL_VERSION};

/// Everything that can go wrong encoding or decoding a frame. The doc comment is the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// output buffer too small for the frame
    BufferTooSmall,
    /// frame longer than the maximum frame length
    TooLong,
    /// frame cut short by the start of another frame
    Truncated,
    /// byte that may not appear in a frame
    BadByte {
        /// The byte.
        byte: u8,
    },
    /// frame does not follow the grammar
    Syntax,
    /// checksum mismatch
    BadChecksum {
        /// CRC-32 of the received body.
        computed: u32,
        /// CRC-32 in the frame.
        found: u32,
    },
    /// unsupported protocol version
    BadVersion {
        /// The version in the frame.
        found: u32,
    },
    /// malformed or out-of-range number
    BadNumber,
    /// unknown message name
    UnknownMessage,
    /// wrong number of arguments for the message
    WrongArity,
    /// unknown role
    BadRole,
    /// PCI slot out of range
    BadSlot,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ControlError::BufferTooSmall => f.write_str("output buffer too small"),
            ControlError::TooLong => write!(f, "frame longer than {MAX_FRAME_LEN} bytes"),
            ControlError::Truncated => f.write_str("frame cut short"),
            ControlError::BadByte { byte } => write!(f, "byte {byte:#04x} in a frame"),
            ControlError::Syntax => f.write_str("malformed frame"),
            ControlError::BadChecksum { computed, found } => {
                write!(f, "checksum {found:08x}, computed {computed:08x}")
            }
            ControlError::BadVersion { found } => write!(f, "unsupported protocol version {found}"),
            ControlError::BadNumber => f.write_str("malformed or out-of-range number"),
            ControlError::UnknownMessage => f.write_str("unknown message"),
            ControlError::WrongArity => f.write_str("wrong number of arguments"),
            ControlError::BadRole => f.write_str("unknown role"),
            ControlError::BadSlot => f.write_str("PCI slot out of range"),
        }
    }
}

impl core::error::Error for ControlError {}

/// Which part a guest plays. The handoff moves the device from the owner to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs the workload and hands its disk over.
    Owner,
    /// Receives the disk and serves the ring.
    Peer,
}

impl Role {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Peer => "peer",
        }
    }
}

/// A control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Guest → shim: booted, speaking `version`.
    Hello {
        /// The guest's role.
        role: Role,
        /// The guest's VM id.
        vm: u32,
        /// Guest software version.
        version: u32,
    },
    /// Guest (owner) → shim: the port it stopped using drained — port 1 after `redirect`, port 2
    /// after `failback`.
    Drained {
        /// Requests that port completed in total.
        completed: u64,
        /// Requests held for the next port.
        held: u32,
    },
    /// Guest → shim: device quiesced and ejected from `slot` (the owner in a handoff, the peer in
    /// a failback).
    Released {
        /// PCI slot written to the eject register.
        slot: u8,
    },
    /// Guest (peer) → shim: disk initialised, ring served.
    PeerReady {
        /// Disk capacity in 512-byte sectors.
        capacity_sectors: u64,
    },
    /// Guest (owner) → shim: port 2 is forwarding.
    Forwarding,
    /// Guest (owner) → shim: please migrate me.
    MigrateRequest,
    /// Guest (owner) → shim: please give my device back (honoured once the owner's migration is
    /// over).
    FailbackRequest,
    /// Guest (owner) → shim, after `peer-lost`: port 2 abandoned; `replay` forwarded requests
    /// had no completion and go to port 1 first, then the `held` ones.
    Abandoned {
        /// Forwarded requests without a completion, to be replayed on port 1.
        replay: u32,
        /// Requests held for port 1 (never forwarded).
        held: u32,
    },
    /// Guest (owner) → shim: the peer's heartbeat in the ring has not moved for `ms`
    /// milliseconds while forwarded requests waited for it: the peer stopped serving (the shim
    /// fences it and recovers as from a peer that died).
    PeerStalled {
        /// How long the heartbeat has been frozen, in milliseconds.
        ms: u32,
    },
    /// Guest (owner) → shim: the failback is done: the disk is initialised behind port 1 again
    /// and the held requests went to it first, in order.
    Direct,
    /// Guest → shim: something failed.
    Error {
        /// Guest-defined error code.
        code: u32,
    },
    /// Either way: frame `seq` received.
    Ack {
        /// The acknowledged frame's sequence number.
        seq: u32,
    },
    /// Shim → owner: switch to port 2 and drain port 1.
    Redirect,
    /// Shim → guest: ivshmem plugged at `slot`.
    RingOpened {
        /// PCI slot of the ivshmem device.
        slot: u8,
    },
    /// Shim → peer: the disk was plugged at `slot`.
    DiskAttached {
        /// PCI slot of the virtio-blk device.
        slot: u8,
    },
    /// Shim → owner: start forwarding over the ring.
    OpenPort2,
    /// Shim → owner: the failback is directed: hold new requests while port 2 drains.
    Failback,
    /// Shim → peer: the failback: quiesce the disk and eject its slot (its `device_del` is
    /// issued).
    ReleaseDisk,
    /// Shim → owner: the peer is gone (its QEMU exited and was reaped: nothing more reaches the
    /// disk through it): abandon port 2, keep every forwarded request without a completion for
    /// replay on port 1, and hold new requests until the disk is back.
    PeerLost,
    /// Shim → guest: the ring's ivshmem device in `slot` is being unplugged: stop using the ring
    /// and eject the slot.
    CloseRing {
        /// PCI slot of the ivshmem device.
        slot: u8,
    },
    /// Shim → owner: the handoff cannot complete (port 1 did not drain in time, the ring could
    /// not be set up, the peer could not take the disk): take it back. With the device still
    /// attached (port 1 draining), port 1 reopens and the held requests go to it after those in
    /// flight there; the owner answers `direct`. With the device already released, the owner
    /// answers `abandoned 0 <held>` and waits for `disk-attached`, as in a failback.
    TakeBack,
    /// Shim → owner: the run is given up: submit nothing more, count every request without a
    /// completion as failed, print the report and stop, so that the host can still check every
    /// acknowledged write (issue 9, "every ending is verified").
    GiveUp,
}

impl Message {
    /// A guest's `hello` in `role` from VM `vm`, speaking [`PROTOCOL_VERSION`].
    pub const fn hello(role: Role, vm: u32) -> Message {
        Message::Hello {
            role,
            vm,
            version: PROTOCOL_VERSION,
        }
    }

    /// The message without its arguments.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Message::Hello { .. } => MessageKind::Hello,
            Message::Drained { .. } => MessageKind::Drained,
            Message::Released { .. } => MessageKind::Released,
            Message::PeerReady { .. } => MessageKind::PeerReady,
            Message::Forwarding => MessageKind::Forwarding,
            Message::MigrateRequest => MessageKind::MigrateRequest,
            Message::FailbackRequest => MessageKind::FailbackRequest,
            Message::Abandoned { .. } => MessageKind::Abandoned,
            Message::PeerStalled { .. } => MessageKind::PeerStalled,
            Message::Direct => MessageKind::Direct,
            Message::Error { .. } => MessageKind::Error,
            Message::Ack { .. } => MessageKind::Ack,
            Message::Redirect => MessageKind::Redirect,
            Message::RingOpened { .. } => MessageKind::RingOpened,
            Message::DiskAttached { .. } => MessageKind::DiskAttached,
            Message::OpenPort2 => MessageKind::OpenPort2,
            Message::Failback => MessageKind::Failback,
            Message::ReleaseDisk => MessageKind::ReleaseDisk,
            Message::PeerLost => MessageKind::PeerLost,
            Message::CloseRing { .. } => MessageKind::CloseRing,
            Message::TakeBack => MessageKind::TakeBack,
            Message::GiveUp => MessageKind::GiveUp,
        }
    }

    /// The wire name.
    pub const fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether a guest may send this message (`Ack` goes both ways).
    pub const fn sent_by_guest(&self) -> bool {
        self.kind().sent_by(Side::Guest)
    }

    /// Whether the shim may send this message (`Ack` goes both ways).
    pub const fn sent_by_shim(&self) -> bool {
        self.kind().sent_by(Side::Shim)
    }

    /// Whether the receiver acknowledges this message.
    pub const fn needs_ack(&self) -> bool {
        !matches!(self, Message::Ack { .. })
    }
}

/// A [`Message`] without its arguments: what the transition table and the direction check look
/// at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `hello`, guest → shim.
    Hello,
    /// `drained`, guest → shim.
    Drained,
    /// `released`, guest → shim.
    Released,
    /// `peer-ready`, guest → shim.
    PeerReady,
    /// `forwarding`, guest → shim.
    Forwarding,
    /// `migrate-request`, guest → shim.
    MigrateRequest,
    /// `failback-request`, guest → shim.
    FailbackRequest,
    /// `abandoned`, guest → shim.
    Abandoned,
    /// `peer-stalled`, guest → shim.
    PeerStalled,
    /// `direct`, guest → shim.
    Direct,
    /// `error`, guest → shim.
    Error,
    /// `ack`, both ways.
    Ack,
    /// `redirect`, shim → guest.
    Redirect,
    /// `ring-opened`, shim → guest.
    RingOpened,
    /// `disk-attached`, shim → guest.
    DiskAttached,
    /// `open-port2`, shim → guest.
    OpenPort2,
    /// `failback`, shim → guest.
    Failback,
    /// `release-disk`, shim → guest.
    ReleaseDisk,
    /// `peer-lost`, shim → guest.
    PeerLost,
    /// `close-ring`, shim → guest.
    CloseRing,
    /// `take-back`, shim → guest.
    TakeBack,
    /// `give-up`, shim → guest.
    GiveUp,
}

impl MessageKind {
    /// Every kind, in grammar order.
    pub const ALL: [MessageKind; 22] = [
        MessageKind::Hello,
        MessageKind::Drained,
        MessageKind::Released,
        MessageKind::PeerReady,
        MessageKind::Forwarding,
        MessageKind::MigrateRequest,
        MessageKind::FailbackRequest,
        MessageKind::Abandoned,
        MessageKind::PeerStalled,
        MessageKind::Direct,
        MessageKind::Error,
        MessageKind::Ack,
        MessageKind::Redirect,
        MessageKind::RingOpened,
        MessageKind::DiskAttached,
        MessageKind::OpenPort2,
        MessageKind::Failback,
        MessageKind::ReleaseDisk,
        MessageKind::PeerLost,
        MessageKind::CloseRing,
        MessageKind::TakeBack,
        MessageKind::GiveUp,
    ];

    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "hello",
            MessageKind::Drained => "drained",
            MessageKind::Released => "released",
            MessageKind::PeerReady => "peer-ready",
            MessageKind::Forwarding => "forwarding",
            MessageKind::MigrateRequest => "migrate-request",
            MessageKind::FailbackRequest => "failback-request",
            MessageKind::Abandoned => "abandoned",
            MessageKind::PeerStalled => "peer-stalled",
            MessageKind::Direct => "direct",
            MessageKind::Error => "error",
            MessageKind::Ack => "ack",
            MessageKind::Redirect => "redirect",
            MessageKind::RingOpened => "ring-opened",
            MessageKind::DiskAttached => "disk-attached",
            MessageKind::OpenPort2 => "open-port2",
            MessageKind::Failback => "failback",
            MessageKind::ReleaseDisk => "release-disk",
            MessageKind::PeerLost => "peer-lost",
            MessageKind::CloseRing => "close-ring",
            MessageKind::TakeBack => "take-back",
            MessageKind::GiveUp => "give-up",
        }
    }

    /// Whether `side` may send this kind of message (`ack` goes both ways).
    pub const fn sent_by(self, side: Side) -> bool {
        let shim_only = matches!(
            self,
            MessageKind::Redirect
                | MessageKind::RingOpened
                | MessageKind::DiskAttached
                | MessageKind::OpenPort2
                | MessageKind::Failback
                | MessageKind::ReleaseDisk
                | MessageKind::PeerLost
                | MessageKind::CloseRing
                | MessageKind::TakeBack
                | MessageKind::GiveUp
        );
        match side {
            Side::Guest => !shim_only,
            Side::Shim => shim_only || matches!(self, MessageKind::Ack),
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which end of a control channel: a guest (either [`Role`]) or the shim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// A guest kernel, on its COM2.
    Guest,
    /// The hypervisor shim, on the Unix socket behind the guest's COM2.
    Shim,
}

impl Side {
    /// The other end.
    pub const fn peer(self) -> Side {
        match self {
            Side::Guest => Side::Shim,
            Side::Shim => Side::Guest,
        }
    }

    /// `"guest"` or `"shim"`.
    pub const fn name(self) -> &'static str {
        match self {
            Side::Guest => "guest",
            Side::Shim => "shim",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Protocol version (always [`PROTOCOL_VERSION`] once decoded).
    pub version: u32,
    /// The sender's frame number.
    pub seq: u32,
    /// The message.
    pub msg: Message,
}
