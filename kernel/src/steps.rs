//! The guest's log of the switch under way ([`baton_core::guest_steps`]): the roles mark each
//! step where it happens, with the guest clock and how the CPU got there (still running, or woken
//! from `hlt` by the control channel's interrupt or by a timer tick), and print the
//! `BATON steps` line once the switch is over for this guest.
//!
//! One log per guest, behind a spin lock (the guest has one CPU; the host tests may mark from
//! several threads, and nothing there reads the log). Host builds record time 0 and `spin`.

use baton_core::cmdline::Role;
use baton_core::console::SwitchKind;
use baton_core::guest_steps::{StepLog, StepName, StepsLine, Wake};
use spin::Mutex;

static LOG: Mutex<StepLog> = Mutex::new(StepLog::new());

/// Starts recording switch `n` of `kind` for a guest in `role` (a line not printed yet is
/// dropped).
pub fn begin(role: Role, kind: SwitchKind, n: u32) {
    // The wake before the switch began is not one of its steps.
    let _ = now();
    LOG.lock().begin(role, kind, n);
}

/// Records step `name` of the switch under way, if any.
pub fn mark(name: StepName) {
    let (us, wake) = now();
    LOG.lock().mark(name, us, wake);
}

/// Ends the switch under way and returns its line, if one was under way.
pub fn take() -> Option<StepsLine> {
    LOG.lock().take()
}

/// The switch under way, if any: `(kind, n)`.
pub fn current() -> Option<(SwitchKind, u32)> {
    LOG.lock().current()
}

#[cfg(target_os = "none")]
fn now() -> (u64, Wake) {
    use crate::platform::{clock, interrupts};
    (clock::uptime_us(), interrupts::take_last_wake())
}

#[cfg(not(target_os = "none"))]
fn now() -> (u64, Wake) {
    (0, Wake::Spin)
}
