//! The [`Redirector`] itself: the state word on its own cache line, the bounded queue of stamped
//! slots, and [`Redirector::submit`], which routes a request or queues it with a ticket.

#[cfg(doc)]
use super::Releaser;
use super::word::{
    COUNT_BITS, DIRECT_AND_EMPTY, FORWARDING, P1_ONE, QUEUED_ONE, TAIL_ONE, Word, check_inflight,
};
use super::{Port, RedirectError, Route, Snapshot, State, Ticket};
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One queue slot: `stamp` says whose turn it is, `token` is the request.
pub(super) struct Slot {
    /// `2 * lap` while free for the ticket of that lap, `2 * lap + 1` once that ticket's token
    /// is published (lap = ticket / N, over wrapping 16-bit tickets).
    pub(super) stamp: AtomicU32,
    /// The request's token, valid while the stamp says published.
    pub(super) token: AtomicU64,
}

impl Slot {
    #[cfg(not(loom))]
    const fn new() -> Slot {
        Slot {
            stamp: AtomicU32::new(0),
            token: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Slot {
        Slot {
            stamp: AtomicU32::new(0),
            token: AtomicU64::new(0),
        }
    }
}

/// The port redirector with a queue of `N` slots (a power of two, 2..=32768), holding at most
/// `N - 1` queued requests.
///
/// Shared by reference between submitters, completers, the control path (transitions) and one
/// [`Releaser`]; every method takes `&self`.
pub struct Redirector<const N: usize> {
    /// The state word, alone on its cache line: every submit and completion CASes it, and
    /// nothing else should share the line it bounces on.
    word: CacheLine<AtomicU64>,
    slots: [Slot; N],
    /// The next ticket the releaser dispatches; touched only by the current [`Releaser`].
    pub(super) head: CacheLine<AtomicU32>,
    pub(super) releaser_taken: AtomicBool,
}

/// Keeps a value on a 64-byte cache line of its own.
#[repr(align(64))]
pub(super) struct CacheLine<T>(T);

impl<T> core::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<const N: usize> Default for Redirector<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Redirector<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Redirector")
            .field("capacity", &Self::CAPACITY)
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Redirector<N> {
    /// How many requests the queue holds.
    pub const CAPACITY: usize = {
        assert!(
            N.is_power_of_two() && N >= 2 && N <= 1 << COUNT_BITS,
            "Redirector<N>: N must be a power of two in 2..=32768"
        );
        N - 1
    };

    /// A redirector in state `Direct` with nothing in flight.
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        let _ = Self::CAPACITY; // compile-time check of N
        Redirector {
            word: CacheLine(AtomicU64::new(0)),
            slots: [const { Slot::new() }; N],
            head: CacheLine(AtomicU32::new(0)),
            releaser_taken: AtomicBool::new(false),
        }
    }

    /// A redirector in state `Direct` with nothing in flight.
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        let _ = Self::CAPACITY; // compile-time check of N
        Redirector {
            word: CacheLine(AtomicU64::new(0)),
            slots: core::array::from_fn(|_| Slot::new()),
            head: CacheLine(AtomicU32::new(0)),
            releaser_taken: AtomicBool::new(false),
        }
    }

    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// Applies `f` to the state word with a CAS loop; `f` may refuse (nothing is written).
    #[inline]
    pub(super) fn update<T, E>(
        &self,
        mut f: impl FnMut(Word) -> Result<(Word, T), E>,
    ) -> Result<T, E> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let (next, out) = f(Word(cur))?;
            match self
                .word
                .compare_exchange_weak(cur, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(out),
                Err(actual) => cur = actual,
            }
        }
    }

    #[inline]
    pub(super) fn slot(&self, ticket: u16) -> &Slot {
        &self.slots[usize::from(ticket) % N]
    }

    /// The stamp of `ticket`'s slot while it is free for that ticket.
    #[inline]
    pub(super) fn free_stamp(ticket: u16) -> u32 {
        // N <= 2^15, so the quotient and the stamp stay far below u32::MAX.
        2 * (u32::from(ticket) / N as u32)
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.load().state()
    }

    /// State and counters, read atomically together.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let w = self.load();
        Snapshot {
            state: w.state(),
            port1_inflight: w.p1(),
            port2_inflight: w.p2(),
            queued: w.queued(),
        }
    }

    /// Routes one request, identified by `token` (any value the caller likes, e.g. a request
    /// slot index), and returns where it went. Lock-free; any number of concurrent submitters.
    ///
    /// Errors: [`RedirectError::QueueFull`], [`RedirectError::TooManyInflight`]; the request was
    /// not accepted and may be retried.
    pub fn submit(&self, token: u64) -> Result<Route, RedirectError> {
        let route = self.update(|w| {
            // `Direct` with nothing queued: port 1 (one test of the word's bits).
            if w.0 & DIRECT_AND_EMPTY == 0 {
                check_inflight(w.p1(), Port::One)?;
                return Ok((w.plus(P1_ONE), Route::Port1));
            }
            if usize::from(w.queued()) >= Self::CAPACITY {
                return Err(RedirectError::QueueFull);
            }
            let ticket = Ticket(w.tail());
            let route = if w.state_bits() == FORWARDING {
                Route::Port2(ticket)
            } else {
                Route::Held(ticket)
            };
            Ok((w.plus(QUEUED_ONE + TAIL_ONE), route))
        })?;
        if let Route::Held(t) | Route::Port2(t) = route {
            let slot = self.slot(t.0);
            // Internal invariant (the N - 1 bound): the slot was freed before the ticket could
            // be taken. Checked in debug and loom builds.
            #[cfg(any(loom, debug_assertions))]
            assert_eq!(
                slot.stamp.load(Ordering::Acquire),
                Self::free_stamp(t.0),
                "redirector slot reused before it was freed"
            );
            slot.token.store(token, Ordering::Relaxed);
            slot.stamp
                .store(Self::free_stamp(t.0) + 1, Ordering::Release);
        }
        Ok(route)
    }
}
