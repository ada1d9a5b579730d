//! One round of the owner's main loop, hardware-independent: poll the handoff (which may switch
//! ports, release the device, open port 2, or in a failback take the disk back), ask for the
//! migration or the failback when the command line says so, then let the workload submit and
//! complete. `roles::owner` runs it on the machine; the host
//! tests run it with the shim, the peer and both disks played by fakes.

use super::handoff::OwnerHandoff;
use super::{ControlLink, OwnerPlatform};
use crate::stack::ResourceStack;
use crate::workload::{Clock, Workload, WorkloadError};
use baton_core::cmdline::GuestConfig;
use baton_core::console::SwitchKind;
use baton_core::redirector::Port;
use core::fmt::Write;
use virtio_drivers::Hal;

/// One round; `Ok(true)` once the workload's report is ready.
/// Errors: the workload's ([`WorkloadError`]).
pub fn round<L, P, H, C, W>(
    cfg: &GuestConfig,
    handoff: &mut OwnerHandoff<L, P>,
    workload: &mut Workload<'_, C, W>,
    stack: &mut ResourceStack<H, P::Disk>,
) -> Result<bool, WorkloadError>
where
    L: ControlLink,
    P: OwnerPlatform,
    H: Hal,
    C: Clock,
    W: Write,
{
    handoff.poll(stack);
    if let Some(arm) = handoff.take_switch() {
        // The blackout of a handoff ends at the first port-2 completion, that of a failback at
        // the first port-1 completion.
        let (kind, port) = if arm.failback {
            (SwitchKind::Failback, Port::One)
        } else {
            (SwitchKind::Handoff, Port::Two)
        };
        workload.arm_switch(kind, arm.n, port);
    }
    if cfg.migrate_at != 0 && workload.writes_submitted() >= cfg.migrate_at {
        handoff.request_migration();
    }
    if cfg.failback_at != 0 && workload.writes_submitted() >= cfg.failback_at {
        handoff.request_failback(stack.state());
    }
    if handoff.given_up() {
        workload.give_up(stack);
    }
    workload.step(stack)
}

#[cfg(test)]
#[path = "owner_loop_tests.rs"]
mod tests;
