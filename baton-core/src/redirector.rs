//! The port redirector: decides, per block request, whether it goes to port 1 (the assigned
//! virtio-blk device) or port 2 (the shared-memory ring to the peer guest), and carries the
//! handoff between them without losing, duplicating or reordering a request.
//!
//! This is the mechanism of US 20070204265A1 claim 1: requests go to the first port until a
//! save/migrate is directed; from then on new requests queue at the second port while the first
//! port drains; the device is released; only then does the second port forward the queued
//! requests, in order. Failback is the mirror image.
//!
//! # States
//!
//! ```text
//!   Direct ──direct_switch()──► Draining ──(port 1 idle)──► Drained ──device_released()──► Released
//!     ▲                                                                                        │
//!  device_attached()                                                                  open_port2()
//!     │                                                                                        ▼
//!   FailbackDrained ◄──(port 2 idle)── FailbackDraining ◄──────begin_failback()────────── Forwarding
//! ```
//!
//! `direct_switch()` and `begin_failback()` skip straight to `Drained` / `FailbackDrained` when the
//! port has nothing in flight. Any other transition returns [`RedirectError::WrongState`].
//!
//! # Routing
//!
//! [`Redirector::submit`] returns a [`Route`]:
//! - [`Route::Port1`]: state `Direct` and nothing queued — the caller submits to the device now
//!   and later reports the completion with [`Redirector::complete_port1`].
//! - [`Route::Held`] / [`Route::Port2`]: the request went into the redirector's ordered queue
//!   with a [`Ticket`]. Queued requests leave it only through the (single) [`Releaser`], in
//!   ticket order, and only to the port that is open *when they are dispatched*: port 2 in
//!   `Forwarding`, port 1 in `Direct` (the requests held during a failback). `Port2` just says
//!   port 2 is already open, so the releaser should run soon.
//!
//! So a request queued during the drain, or still queued when a failback begins, is simply sent
//! to whichever device is attached next — in order, ahead of everything submitted after it.
//!
//! # Invariants (tested in `tests/redirector_model.rs` and `tests/loom_redirector.rs`)
//! - I1: every submitted request is either routed to port 1 or dispatched exactly once from the
//!   queue; completions are counted per port and a completion without a request in flight is an
//!   error ([`RedirectError::NotInflight`]).
//! - I2: no request is routed or dispatched to port 1 unless the state is `Direct`; `Drained` is
//!   reached only when port 1 has nothing in flight; nothing is dispatched to port 2 unless the
//!   state is `Forwarding`, which is only reachable through `Drained` → `Released`.
//! - I3: the queue is FIFO in ticket order and tickets are taken in the same atomic step that
//!   decides the route, so the releaser dispatches in submission order.
//!
//! # Concurrency
//!
//! All routing state — the state, the in-flight count of each port, the number of queued
//! requests and the next ticket — lives in one `AtomicU64`, updated by compare-and-swap loops:
//! submit, complete and the transitions are lock-free (a CAS only fails because another
//! operation succeeded) and need no lock of any kind. The queue is a bounded array of slots,
//! each with its own stamp (in the style of Vyukov's bounded queue): a submitter that took
//! ticket `t` writes slot `t % N` and publishes it with a `Release` store of the stamp; the
//! releaser reads it with `Acquire`, then claims it with a CAS on the state word (which also
//! rechecks that the destination port is open), then frees the slot. A queue of `N` slots holds
//! at most `N - 1` requests, which guarantees that a ticket's slot has been freed before the
//! ticket can be taken. The releaser is single-consumer by ownership (one [`Releaser`] exists at
//! a time) and never blocks: when the next ticket is taken but not yet published, `dispatch`
//! returns `None` and is retried on the next poll.
//!
//! # Model checking
//!
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p baton-core --release --test
//! loom_redirector` explores, with at most two preemptions per execution, every interleaving of:
//! 1. two submitters, a switcher (`direct_switch` then, once drained, `device_released` and
//!    `open_port2`) and a completer of port 1: no request reaches port 1 once the drain could
//!    have completed, the switch ends `Drained`, and every request is completed or dispatched
//!    to port 2 exactly once, in ticket order;
//! 2. two submitters (one submitting two requests) racing the releaser and `open_port2` with
//!    requests already held: nothing is dispatched before `open_port2`, dispatch order is ticket
//!    order and each submitter's own requests stay in program order;
//! 3. a failback: a submitter, `begin_failback`, the port-2 completer and the releaser: no
//!    dispatch to port 2 after `begin_failback`, the failback ends `FailbackDrained`, and after
//!    `device_attached` the held requests go to port 1 in order;
//! 4. a wrap of a two-slot queue (capacity 1) with a concurrent submitter and releaser, checking
//!    that a slot is never reused before the releaser freed it.

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The redirector's state (see the module documentation for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests go to port 1 (the device).
    Direct,
    /// A switch was directed: new requests are held; port 1 still has requests in flight.
    Draining,
    /// Port 1 has drained; the device can be released.
    Drained,
    /// The device was released; waiting for port 2 to open.
    Released,
    /// Requests go to port 2 (the ring), in submission order.
    Forwarding,
    /// A failback was directed: new requests are held; port 2 still has requests in flight.
    FailbackDraining,
    /// Port 2 has drained; waiting for the device to be attached again.
    FailbackDrained,
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

/// One of the two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Port 1: the directly assigned device.
    One,
    /// Port 2: the shared-memory ring to the peer guest.
    Two,
}

/// A queued request's place in line. Tickets are consecutive in submission order and wrap at
/// 2^16; the releaser hands requests out in ticket order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub u16);

/// Where [`Redirector::submit`] sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Submit it to port 1 now; report its completion with [`Redirector::complete_port1`].
    Port1,
    /// Queued: it is dispatched by the [`Releaser`] once a port is open.
    Held(Ticket),
    /// Queued, and port 2 is open: the [`Releaser`] dispatches it to port 2 in order.
    Port2(Ticket),
}

/// A queued request handed out by [`Releaser::dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// Send it here now; report its completion with [`Redirector::complete_port1`] or
    /// [`Redirector::complete_port2`].
    pub port: Port,
    /// Its ticket.
    pub ticket: Ticket,
    /// The token given to [`Redirector::submit`].
    pub token: u64,
}

/// The state-changing operations, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Redirector::direct_switch`]
    DirectSwitch,
    /// [`Redirector::device_released`]
    DeviceReleased,
    /// [`Redirector::open_port2`]
    OpenPort2,
    /// [`Redirector::begin_failback`]
    BeginFailback,
    /// [`Redirector::device_attached`]
    DeviceAttached,
}

/// Why a redirector operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectError {
    /// The operation is not valid in the current state.
    WrongState {
        /// What was attempted.
        op: Op,
        /// The state it was attempted in.
        state: State,
    },
    /// The queue is full (it holds `N - 1` requests).
    QueueFull,
    /// A port already has [`MAX_INFLIGHT`] requests in flight.
    TooManyInflight(Port),
    /// A completion was reported for a port with nothing in flight.
    NotInflight(Port),
}

impl core::fmt::Display for RedirectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RedirectError::WrongState { op, state } => {
                write!(f, "redirector: {op:?} not allowed in state {state:?}")
            }
            RedirectError::QueueFull => f.write_str("redirector: queue full"),
            RedirectError::TooManyInflight(p) => {
                write!(f, "redirector: too many requests in flight on port {p:?}")
            }
            RedirectError::NotInflight(p) => {
                write!(
                    f,
                    "redirector: completion on port {p:?} with nothing in flight"
                )
            }
        }
    }
}

/// A consistent view of the redirector's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Current state.
    pub state: State,
    /// Requests routed or dispatched to port 1 and not yet completed.
    pub port1_inflight: u16,
    /// Requests dispatched to port 2 and not yet completed.
    pub port2_inflight: u16,
    /// Requests queued and not yet dispatched.
    pub queued: u16,
}

/// Most requests in flight on one port.
pub const MAX_INFLIGHT: u16 = (1 << COUNT_BITS) - 1;

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const COUNT_BITS: u32 = 15;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const P1_SHIFT: u32 = STATE_BITS;
const P2_SHIFT: u32 = P1_SHIFT + COUNT_BITS;
const QUEUED_SHIFT: u32 = P2_SHIFT + COUNT_BITS;
const TAIL_SHIFT: u32 = QUEUED_SHIFT + COUNT_BITS;

/// The unpacked state word: `state:3 | p1:15 | p2:15 | queued:15 | tail:16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    p1: u16,
    p2: u16,
    queued: u16,
    /// The next ticket to hand out.
    tail: u16,
}

impl Word {
    fn pack(self) -> u64 {
        self.state.bits()
            | (u64::from(self.p1) & COUNT_MASK) << P1_SHIFT
            | (u64::from(self.p2) & COUNT_MASK) << P2_SHIFT
            | (u64::from(self.queued) & COUNT_MASK) << QUEUED_SHIFT
            | u64::from(self.tail) << TAIL_SHIFT
    }

    fn unpack(v: u64) -> Word {
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

fn inc(count: u16, port: Port) -> Result<u16, RedirectError> {
    if count >= MAX_INFLIGHT {
        Err(RedirectError::TooManyInflight(port))
    } else {
        Ok(count + 1)
    }
}

/// One queue slot: `stamp` says whose turn it is, `token` is the request.
struct Slot {
    /// `2 * lap` while free for the ticket of that lap, `2 * lap + 1` once that ticket's token
    /// is published (lap = ticket / N, over wrapping 16-bit tickets).
    stamp: AtomicU32,
    token: AtomicU64,
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
    head: CacheLine<AtomicU32>,
    releaser_taken: AtomicBool,
}

/// Keeps a value on a 64-byte cache line of its own.
#[repr(align(64))]
struct CacheLine<T>(T);

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
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    /// Applies `f` to the state word with a CAS loop; `f` may refuse (nothing is written).
    fn update<T, E>(&self, mut f: impl FnMut(Word) -> Result<(Word, T), E>) -> Result<T, E> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let (next, out) = f(Word::unpack(cur))?;
            match self.word.compare_exchange_weak(
                cur,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(out),
                Err(actual) => cur = actual,
            }
        }
    }

    fn slot(&self, ticket: u16) -> &Slot {
        &self.slots[usize::from(ticket) % N]
    }

    /// The stamp of `ticket`'s slot while it is free for that ticket.
    fn free_stamp(ticket: u16) -> u32 {
        // N <= 2^15, so the quotient and the stamp stay far below u32::MAX.
        2 * (u32::from(ticket) / N as u32)
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.load().state
    }

    /// State and counters, read atomically together.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let w = self.load();
        Snapshot {
            state: w.state,
            port1_inflight: w.p1,
            port2_inflight: w.p2,
            queued: w.queued,
        }
    }

    /// Routes one request, identified by `token` (any value the caller likes, e.g. a request
    /// slot index), and returns where it went. Lock-free; any number of concurrent submitters.
    ///
    /// Errors: [`RedirectError::QueueFull`], [`RedirectError::TooManyInflight`]; the request was
    /// not accepted and may be retried.
    pub fn submit(&self, token: u64) -> Result<Route, RedirectError> {
        let route = self.update(|mut w| {
            if w.state == State::Direct && w.queued == 0 {
                w.p1 = inc(w.p1, Port::One)?;
                return Ok((w, Route::Port1));
            }
            if usize::from(w.queued) >= Self::CAPACITY {
                return Err(RedirectError::QueueFull);
            }
            let ticket = Ticket(w.tail);
            w.tail = w.tail.wrapping_add(1);
            w.queued += 1;
            let route = if w.state == State::Forwarding {
                Route::Port2(ticket)
            } else {
                Route::Held(ticket)
            };
            Ok((w, route))
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

    /// Reports the completion of a port-1 request. Returns the new state if this completion
    /// finished the drain (`Draining` → `Drained`).
    pub fn complete_port1(&self) -> Result<Option<State>, RedirectError> {
        self.update(|mut w| {
            w.p1 =
                w.p1.checked_sub(1)
                    .ok_or(RedirectError::NotInflight(Port::One))?;
            if w.state == State::Draining && w.p1 == 0 {
                w.state = State::Drained;
                return Ok((w, Some(State::Drained)));
            }
            Ok((w, None))
        })
    }

    /// Reports the completion of a port-2 request. Returns the new state if this completion
    /// finished the failback drain (`FailbackDraining` → `FailbackDrained`).
    pub fn complete_port2(&self) -> Result<Option<State>, RedirectError> {
        self.update(|mut w| {
            w.p2 =
                w.p2.checked_sub(1)
                    .ok_or(RedirectError::NotInflight(Port::Two))?;
            if w.state == State::FailbackDraining && w.p2 == 0 {
                w.state = State::FailbackDrained;
                return Ok((w, Some(State::FailbackDrained)));
            }
            Ok((w, None))
        })
    }

    fn transition(
        &self,
        op: Op,
        from: State,
        to: impl Fn(Word) -> State,
    ) -> Result<State, RedirectError> {
        self.update(|mut w| {
            if w.state != from {
                return Err(RedirectError::WrongState { op, state: w.state });
            }
            w.state = to(w);
            Ok((w, w.state))
        })
    }

    /// The save/migrate was directed: stop using port 1 (`Direct` → `Draining`, or straight to
    /// `Drained` if port 1 has nothing in flight). Returns the new state.
    pub fn direct_switch(&self) -> Result<State, RedirectError> {
        self.transition(Op::DirectSwitch, State::Direct, |w| {
            if w.p1 == 0 {
                State::Drained
            } else {
                State::Draining
            }
        })
    }

    /// The drained device was quiesced and handed back (`Drained` → `Released`).
    pub fn device_released(&self) -> Result<State, RedirectError> {
        self.transition(Op::DeviceReleased, State::Drained, |_| State::Released)
    }

    /// The ring to the peer is ready: start forwarding (`Released` → `Forwarding`).
    pub fn open_port2(&self) -> Result<State, RedirectError> {
        self.transition(Op::OpenPort2, State::Released, |_| State::Forwarding)
    }

    /// Failback was directed: stop using port 2 (`Forwarding` → `FailbackDraining`, or straight
    /// to `FailbackDrained` if port 2 has nothing in flight). Returns the new state.
    pub fn begin_failback(&self) -> Result<State, RedirectError> {
        self.transition(Op::BeginFailback, State::Forwarding, |w| {
            if w.p2 == 0 {
                State::FailbackDrained
            } else {
                State::FailbackDraining
            }
        })
    }

    /// The device is attached again (`FailbackDrained` → `Direct`); the [`Releaser`] then sends
    /// the held requests to port 1, in order, before any new request is routed there.
    pub fn device_attached(&self) -> Result<State, RedirectError> {
        self.transition(Op::DeviceAttached, State::FailbackDrained, |_| {
            State::Direct
        })
    }

    /// Takes the releaser, the single consumer of the queue. `None` while another one exists.
    pub fn releaser(&self) -> Option<Releaser<'_, N>> {
        // A plain load first: a taken releaser is the common case under contention, and a failed
        // CAS would still pull the line in exclusive mode.
        if self.releaser_taken.load(Ordering::Relaxed) {
            return None;
        }
        self.releaser_taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        Some(Releaser { redirector: self })
    }
}

/// The queue's single consumer: dispatches queued requests, in ticket order, to the open port.
///
/// Only one exists per [`Redirector`] at a time (dropping it allows taking another), so
/// dispatch order is the order in which the holder forwards: it must forward each
/// [`Dispatch`] before asking for the next.
pub struct Releaser<'a, const N: usize> {
    redirector: &'a Redirector<N>,
}

impl<const N: usize> core::fmt::Debug for Releaser<'_, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Releaser").finish_non_exhaustive()
    }
}

impl<const N: usize> Releaser<'_, N> {
    /// The next queued request, if one can go out now: the state is `Forwarding` (it goes to
    /// port 2) or `Direct` (port 1), and the next ticket's request has been published.
    ///
    /// `None` when no port is open, the queue is empty, the next submitter is between taking
    /// its ticket and publishing it (retry on the next poll), or the port already has
    /// [`MAX_INFLIGHT`] requests in flight. Never blocks.
    pub fn dispatch(&mut self) -> Option<Dispatch> {
        let r = self.redirector;
        // Only the releaser writes `head`; the previous holder's writes are ordered before us
        // by `releaser_taken` (Release in drop, Acquire in take).
        let head = r.head.load(Ordering::Relaxed) as u16;
        let slot = r.slot(head);
        if slot.stamp.load(Ordering::Acquire) != Redirector::<N>::free_stamp(head) + 1 {
            return None;
        }
        let token = slot.token.load(Ordering::Relaxed);
        let port = r
            .update(|mut w| {
                let port = match w.state {
                    State::Direct => {
                        w.p1 = inc(w.p1, Port::One).map_err(|_| ())?;
                        Port::One
                    }
                    State::Forwarding => {
                        w.p2 = inc(w.p2, Port::Two).map_err(|_| ())?;
                        Port::Two
                    }
                    // No port is open: refused, nothing is written.
                    _ => return Err(()),
                };
                // A published slot is counted in `queued`, so this cannot underflow.
                w.queued = w.queued.saturating_sub(1);
                Ok((w, port))
            })
            .ok()?;
        // Free the slot for the ticket one lap later, then move on.
        slot.stamp.store(
            Redirector::<N>::free_stamp(head.wrapping_add(N as u16)),
            Ordering::Release,
        );
        r.head
            .store(u32::from(head.wrapping_add(1)), Ordering::Relaxed);
        Some(Dispatch {
            port,
            ticket: Ticket(head),
            token,
        })
    }

    /// The redirector this releaser belongs to.
    #[must_use]
    pub fn redirector(&self) -> &Redirector<N> {
        self.redirector
    }
}

impl<const N: usize> Drop for Releaser<'_, N> {
    fn drop(&mut self) {
        self.redirector
            .releaser_taken
            .store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_round_trip() {
        for state in [
            State::Direct,
            State::Draining,
            State::Drained,
            State::Released,
            State::Forwarding,
            State::FailbackDraining,
            State::FailbackDrained,
        ] {
            for (p1, p2, queued, tail) in [
                (0, 0, 0, 0),
                (MAX_INFLIGHT, 1, 32767, u16::MAX),
                (5, MAX_INFLIGHT, 0, 12345),
            ] {
                let w = Word {
                    state,
                    p1,
                    p2,
                    queued,
                    tail,
                };
                assert_eq!(Word::unpack(w.pack()), w);
            }
        }
    }

    #[test]
    fn full_cycle() {
        let r = Redirector::<4>::new();
        let mut rel = r.releaser().unwrap();
        assert!(r.releaser().is_none());
        assert_eq!(r.submit(1), Ok(Route::Port1));
        assert_eq!(r.submit(2), Ok(Route::Port1));
        assert_eq!(rel.dispatch(), None);
        assert_eq!(r.direct_switch(), Ok(State::Draining));
        assert_eq!(r.submit(3), Ok(Route::Held(Ticket(0))));
        assert_eq!(
            r.device_released(),
            Err(RedirectError::WrongState {
                op: Op::DeviceReleased,
                state: State::Draining
            })
        );
        assert_eq!(rel.dispatch(), None);
        assert_eq!(r.complete_port1(), Ok(None));
        assert_eq!(r.complete_port1(), Ok(Some(State::Drained)));
        assert_eq!(
            r.complete_port1(),
            Err(RedirectError::NotInflight(Port::One))
        );
        assert_eq!(r.submit(4), Ok(Route::Held(Ticket(1))));
        assert_eq!(r.submit(5), Ok(Route::Held(Ticket(2))));
        assert_eq!(r.submit(6), Err(RedirectError::QueueFull));
        assert_eq!(
            r.open_port2(),
            Err(RedirectError::WrongState {
                op: Op::OpenPort2,
                state: State::Drained
            })
        );
        assert_eq!(r.device_released(), Ok(State::Released));
        assert_eq!(rel.dispatch(), None);
        assert_eq!(r.open_port2(), Ok(State::Forwarding));
        assert_eq!(
            rel.dispatch(),
            Some(Dispatch {
                port: Port::Two,
                ticket: Ticket(0),
                token: 3
            })
        );
        assert_eq!(r.submit(6), Ok(Route::Port2(Ticket(3))));
        assert_eq!(rel.dispatch().map(|d| d.token), Some(4));
        assert_eq!(rel.dispatch().map(|d| d.token), Some(5));
        assert_eq!(rel.dispatch().map(|d| d.token), Some(6));
        assert_eq!(rel.dispatch(), None);
        assert_eq!(
            r.snapshot(),
            Snapshot {
                state: State::Forwarding,
                port1_inflight: 0,
                port2_inflight: 4,
                queued: 0
            }
        );
        assert_eq!(r.complete_port2(), Ok(None));
        assert_eq!(r.begin_failback(), Ok(State::FailbackDraining));
        assert_eq!(r.submit(7), Ok(Route::Held(Ticket(4))));
        assert_eq!(rel.dispatch(), None);
        for _ in 0..2 {
            assert_eq!(r.complete_port2(), Ok(None));
        }
        assert_eq!(r.complete_port2(), Ok(Some(State::FailbackDrained)));
        assert_eq!(r.device_attached(), Ok(State::Direct));
        // Backlog first: new requests queue behind it until it is dispatched.
        assert_eq!(r.submit(8), Ok(Route::Held(Ticket(5))));
        assert_eq!(
            rel.dispatch(),
            Some(Dispatch {
                port: Port::One,
                ticket: Ticket(4),
                token: 7
            })
        );
        assert_eq!(
            rel.dispatch(),
            Some(Dispatch {
                port: Port::One,
                ticket: Ticket(5),
                token: 8
            })
        );
        assert_eq!(r.submit(9), Ok(Route::Port1));
        assert_eq!(r.snapshot().port1_inflight, 3);
        drop(rel);
        assert!(r.releaser().is_some());
        assert_eq!(r.direct_switch(), Ok(State::Draining));
    }

    #[test]
    fn immediate_drains() {
        let r = Redirector::<2>::new();
        assert_eq!(r.direct_switch(), Ok(State::Drained));
        assert_eq!(
            r.direct_switch(),
            Err(RedirectError::WrongState {
                op: Op::DirectSwitch,
                state: State::Drained
            })
        );
        assert_eq!(r.device_released(), Ok(State::Released));
        assert_eq!(r.open_port2(), Ok(State::Forwarding));
        assert_eq!(r.begin_failback(), Ok(State::FailbackDrained));
        assert_eq!(
            r.complete_port2(),
            Err(RedirectError::NotInflight(Port::Two))
        );
        assert_eq!(r.device_attached(), Ok(State::Direct));
    }

    #[test]
    fn tickets_wrap() {
        let r = Redirector::<8>::new();
        r.direct_switch().unwrap();
        r.device_released().unwrap();
        r.open_port2().unwrap();
        let mut rel = r.releaser().unwrap();
        let mut next = 0u16;
        for i in 0..70_000u64 {
            let Ok(Route::Port2(t)) = r.submit(i) else {
                panic!()
            };
            assert_eq!(t, Ticket(i as u16));
            if i % 3 == 0 {
                continue;
            }
            while let Some(d) = rel.dispatch() {
                assert_eq!(d.ticket, Ticket(next));
                assert_eq!(d.token as u16, next);
                next = next.wrapping_add(1);
                r.complete_port2().unwrap();
            }
        }
    }

    #[test]
    fn static_use() {
        static R: Redirector<64> = Redirector::new();
        assert_eq!(R.submit(0), Ok(Route::Port1));
        assert_eq!(Redirector::<64>::CAPACITY, 63);
    }
}
