//! The packed state word: the state, both ports' in-flight counts, the number of queued requests
//! and the next ticket, in one `u64` that every routing decision updates with one CAS.

use super::{Port, RedirectError, State};

/// Most requests in flight on one port.
pub const MAX_INFLIGHT: u16 = (1 << COUNT_BITS) - 1;

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
pub(super) const COUNT_BITS: u32 = 15;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const P1_SHIFT: u32 = STATE_BITS;
const P2_SHIFT: u32 = P1_SHIFT + COUNT_BITS;
const QUEUED_SHIFT: u32 = P2_SHIFT + COUNT_BITS;
const TAIL_SHIFT: u32 = QUEUED_SHIFT + COUNT_BITS;

/// The unpacked state word: `state:3 | p1:15 | p2:15 | queued:15 | tail:16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word {
    pub(super) state: State,
    pub(super) p1: u16,
    pub(super) p2: u16,
    pub(super) queued: u16,
    /// The next ticket to hand out.
    pub(super) tail: u16,
}

impl Word {
    pub(super) fn pack(self) -> u64 {
        self.state.bits()
            | (u64::from(self.p1) & COUNT_MASK) << P1_SHIFT
            | (u64::from(self.p2) & COUNT_MASK) << P2_SHIFT
            | (u64::from(self.queued) & COUNT_MASK) << QUEUED_SHIFT
            | u64::from(self.tail) << TAIL_SHIFT
    }

    pub(super) fn unpack(v: u64) -> Word {
        // Each field is masked to at most 16 bits before narrowing.
        Word {
            state: State::from_bits(v),
            p1: ((v >> P1_SHIFT) & COUNT_MASK) as u16,
            p2: ((v >> P2_SHIFT) & COUNT_MASK) as u16,
            queued: ((v >> QUEUED_SHIFT) & COUNT_MASK) as u16,
            tail: (v >> TAIL_SHIFT) as u16,
        }
    }
}

/// `count + 1`, refused once a port has [`MAX_INFLIGHT`] requests in flight.
pub(super) fn inc(count: u16, port: Port) -> Result<u16, RedirectError> {
    if count >= MAX_INFLIGHT {
        Err(RedirectError::TooManyInflight(port))
    } else {
        Ok(count + 1)
    }
}

impl State {
    fn bits(self) -> u64 {
        match self {
            State::Direct => 0,
            State::Draining => 1,
            State::Drained => 2,
            State::Released => 3,
            State::Forwarding => 4,
            State::FailbackDraining => 5,
            State::FailbackDrained => 6,
        }
    }

    fn from_bits(bits: u64) -> State {
        match bits & STATE_MASK {
            1 => State::Draining,
            2 => State::Drained,
            3 => State::Released,
            4 => State::Forwarding,
            5 => State::FailbackDraining,
            6 => State::FailbackDrained,
            // 0 is Direct; 7 is never written (only `State::bits` values are stored).
            _ => State::Direct,
        }
    }
}
