//! The packed state word: the state, both ports' in-flight counts, the number of queued requests
//! and the next ticket, in one `u64` that every routing decision updates with one CAS.
//!
//! [`Word`] is the raw `u64` with field accessors, so that the hot paths (submit, dispatch,
//! complete) compute the next word with one or two additions of a field's unit (`P1_ONE`, ...)
//! instead of unpacking every field and packing them again.

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

/// One request in flight on port 1 (added to the word).
pub(super) const P1_ONE: u64 = 1 << P1_SHIFT;
/// One request in flight on port 2.
pub(super) const P2_ONE: u64 = 1 << P2_SHIFT;
/// One queued request.
pub(super) const QUEUED_ONE: u64 = 1 << QUEUED_SHIFT;
/// One ticket handed out: the tail is the top field, so a wrapping add wraps it at 2^16 and
/// leaves the other fields alone.
pub(super) const TAIL_ONE: u64 = 1 << TAIL_SHIFT;
/// The bits that are all zero exactly when the state is `Direct` and nothing is queued (the
/// submit fast path: route to port 1).
pub(super) const DIRECT_AND_EMPTY: u64 = STATE_MASK | COUNT_MASK << QUEUED_SHIFT;

/// The state word, `state:3 | p1:15 | p2:15 | queued:15 | tail:16` from the low bits up.
///
/// Every count stays within its 15 bits (`check_inflight` and the capacity check refuse before
/// a field would overflow, and a count is checked non-zero before it is lowered), so adding or
/// subtracting a field's unit never carries into its neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

impl Word {
    /// The state's bits (`State::bits`).
    #[inline]
    pub(super) fn state_bits(self) -> u64 {
        self.0 & STATE_MASK
    }

    #[inline]
    pub(super) fn state(self) -> State {
        State::from_bits(self.0)
    }

    /// The same word in `state`.
    #[inline]
    pub(super) fn with_state(self, state: State) -> Word {
        Word(self.0 & !STATE_MASK | state.bits())
    }

    /// Requests in flight on port 1.
    #[inline]
    pub(super) fn p1(self) -> u16 {
        // Masked to 15 bits before narrowing.
        ((self.0 >> P1_SHIFT) & COUNT_MASK) as u16
    }

    /// Requests in flight on port 2.
    #[inline]
    pub(super) fn p2(self) -> u16 {
        ((self.0 >> P2_SHIFT) & COUNT_MASK) as u16
    }

    /// The same word with no request in flight on port 2.
    #[inline]
    pub(super) fn without_p2(self) -> Word {
        Word(self.0 & !(COUNT_MASK << P2_SHIFT))
    }

    /// Requests queued and not yet dispatched.
    #[inline]
    pub(super) fn queued(self) -> u16 {
        ((self.0 >> QUEUED_SHIFT) & COUNT_MASK) as u16
    }

    /// The next ticket to hand out.
    #[inline]
    pub(super) fn tail(self) -> u16 {
        // The top 16 bits.
        (self.0 >> TAIL_SHIFT) as u16
    }

    /// `self + delta` (one or more field units; see the type's docs for why nothing carries).
    #[inline]
    pub(super) fn plus(self, delta: u64) -> Word {
        Word(self.0.wrapping_add(delta))
    }

    /// `self - delta`, for a field known to be non-zero.
    #[inline]
    pub(super) fn minus(self, delta: u64) -> Word {
        Word(self.0.wrapping_sub(delta))
    }
}

/// Refuses a new request on `port` once it has [`MAX_INFLIGHT`] requests in flight.
#[inline]
pub(super) fn check_inflight(count: u16, port: Port) -> Result<(), RedirectError> {
    if count >= MAX_INFLIGHT {
        Err(RedirectError::TooManyInflight(port))
    } else {
        Ok(())
    }
}

/// `State::bits` of the states the hot paths test for.
pub(super) const DIRECT: u64 = 0;
pub(super) const FORWARDING: u64 = 4;
pub(super) const FAILBACK_DRAINING: u64 = 5;
pub(super) const DRAINING: u64 = 1;

impl State {
    #[inline]
    pub(super) fn bits(self) -> u64 {
        match self {
            State::Direct => DIRECT,
            State::Draining => DRAINING,
            State::Drained => 2,
            State::Released => 3,
            State::Forwarding => FORWARDING,
            State::FailbackDraining => FAILBACK_DRAINING,
            State::FailbackDrained => 6,
        }
    }

    #[inline]
    fn from_bits(bits: u64) -> State {
        match bits & STATE_MASK {
            DRAINING => State::Draining,
            2 => State::Drained,
            3 => State::Released,
            FORWARDING => State::Forwarding,
            FAILBACK_DRAINING => State::FailbackDraining,
            6 => State::FailbackDrained,
            // 0 is Direct; 7 is never written (only `State::bits` values are stored).
            _ => State::Direct,
        }
    }
}
