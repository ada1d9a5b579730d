//! The port redirector: decides, per block request, whether it goes to port 1 (the assigned
//! virtio-blk device) or port 2 (the shared-memory ring to the peer guest), and carries the
//! handoff between them without losing, duplicating or reordering a request.
//!
//! This is the mechanism of US 20070204265A1 claim 1: requests go to the first port until a
//! save/migrate is directed; from then on new requests queue at the second port while the first
//! port drains; the device is released; only then does the second port forward the queued
//! requests, in order. Failback is the mirror image. docs/design.md ("The handoff") shows where
//! each transition falls in the handoff, next to the shim's step names.
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
//! port has nothing in flight. A handoff that cannot complete is taken back before port 2 opens:
//! `take_back()` moves `Draining`/`Drained` to `Direct` (the device never left) and `Released` to
//! `FailbackDrained` (the device comes back through `device_attached()`). A lost peer's port 2 is
//! given up with `abandon_port2()` (`Forwarding`/`FailbackDraining` → `FailbackDrained`). Any
//! other transition returns [`RedirectError::WrongState`].
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
//! # Cost
//!
//! Each operation is one CAS on the state word (submit, dispatch, each completion) and the
//! releaser is one CAS on its flag plus a plain store to give it back, so a forwarded request
//! costs four atomic read-modify-writes (submit, take the releaser, dispatch, complete). The next
//! word is computed by adding a field's unit to the raw `u64` (`word.rs`), and the releaser keeps
//! the queue's head in the [`Releaser`] while it is held, so nothing else is on the path.
//! `docs/redirector-figures.md` has the measured costs.
//!
//! # Model checking
//!
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p baton-core --release --test
//! loom_redirector` (one of the gates of `./qemu-run.sh test`, built there in `target/loom`)
//! explores, with at most two preemptions per execution, every interleaving of:
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
//!    that a slot is never reused before the releaser freed it;
//! 5. two submitters that each pump as the guest's stack does (submit, take the releaser if it
//!    is free, dispatch what is ready, give it back): the releaser and the queue's head pass
//!    between threads, and every ticket is dispatched once, with its own token.
//!
//! # Files
//!
//! - `state.rs`: [`State`], [`Op`], [`RedirectError`], [`Snapshot`];
//! - `route.rs`: [`Port`], [`Ticket`], [`Route`], [`Dispatch`];
//! - `word.rs`: the packed state word;
//! - `queue.rs`: the [`Redirector`], its slots and [`Redirector::submit`];
//! - `transition.rs`: the transitions and the completions that end a drain;
//! - `releaser.rs`: the [`Releaser`].

mod queue;
mod releaser;
mod route;
mod state;
mod transition;
mod word;

pub use queue::Redirector;
pub use releaser::Releaser;
pub use route::{Dispatch, Port, Route, Ticket};
pub use state::{Op, RedirectError, Snapshot, State};
pub use word::MAX_INFLIGHT;

#[cfg(all(test, not(loom)))]
mod tests;
