//! The owner's side of the handoff (US 20070204265A1 claim 1). The sequence diagram in
//! docs/design.md ("The handoff") shows where each of these falls among the shim's and the peer's
//! steps, under the step names the shim records (`Directed`, `RingOpened`, `Drained`, ...).
//!
//! Polled from the owner's main loop, next to the workload:
//! 1. `redirect` from the shim (step `Directed`, sent when the operator directs a save/migrate, or
//!    after this guest asked with `migrate-request`): the redirector switches; new requests are
//!    held for port 2 while port 1 drains.
//! 2. When port 1 has nothing in flight (redirector `Drained`): the device is reset and its slot
//!    ejected through the ACPI hotplug register, the redirector moves to `Released`, and the guest
//!    reports `drained` and `released` (steps `Drained` and `Released`).
//! 3. `ring-opened <slot>` (step `RingOpened`; may arrive any time after `redirect`): the ivshmem
//!    device is set up and the ring formatted; it becomes port 2.
//! 4. `open-port2`: the held requests, then all new ones, are forwarded over the ring in order;
//!    the guest reports `forwarding` (step `PortOpen`).
//!
//! Where the owner is in the handoff is the redirector's own [`State`] (read from the stack), not
//! a second copy of it: `Direct` before `redirect`, `Draining`/`Drained` until the release,
//! `Released` until `open-port2`, `Forwarding` after.
//!
//! This is the owner's half of the protocol; the shim's half, which messages it accepts from
//! which guest in which step, is the transition table of `baton_core::control::handoff`. Every
//! message this driver sends or accepts is a `baton_core::control::Message`, under the same name
//! on both sides.

use super::{ControlLink, OwnerPlatform};
use crate::ports::BlockPort;
use crate::stack::ResourceStack;
use baton_core::control::{Message, PROTOCOL_VERSION, Role};
use baton_core::redirector::State;
use baton_core::ring::RingClient;
use virtio_drivers::Hal;

/// Error codes sent in `error` messages.
pub mod codes {
    /// A message arrived in a state where it makes no sense.
    pub const UNEXPECTED_MESSAGE: u32 = 1;
    /// The ivshmem device could not be used.
    pub const RING_UNUSABLE: u32 = 2;
    /// `open-port2` came before the ring or before the release.
    pub const NOT_READY: u32 = 3;
}

/// Control-channel polls are spaced this far apart (port I/O is a VM exit).
pub const POLL_INTERVAL_US: u64 = 500;

/// The owner's handoff driver, over control link `C` and platform `P`.
pub struct OwnerHandoff<C: ControlLink, P: OwnerPlatform> {
    ctl: Option<C>,
    platform: P,
    disk_slot: u8,
    migrate_asked: bool,
    next_poll_us: u64,
    /// Requests held at port 2 when port 1 finished draining.
    pub held_at_switch: u64,
}

impl<C: ControlLink, P: OwnerPlatform> OwnerHandoff<C, P> {
    /// A driver for the disk in PCI slot `disk_slot`; says hello on `ctl` (`None`: the guest has
    /// no control channel, so no handoff can be directed).
    pub fn new(ctl: Option<C>, platform: P, disk_slot: u8, vm: u32) -> Self {
        let mut ctl = ctl;
        if let Some(ctl) = ctl.as_mut() {
            ctl.send(Message::Hello {
                role: Role::Owner,
                vm,
                version: PROTOCOL_VERSION,
            });
        }
        OwnerHandoff {
            ctl,
            platform,
            disk_slot,
            migrate_asked: false,
            next_poll_us: 0,
            held_at_switch: 0,
        }
    }

    /// The control link, for tests and diagnostics.
    pub fn link(&mut self) -> Option<&mut C> {
        self.ctl.as_mut()
    }

    /// Asks the shim to migrate this guest (once).
    pub fn request_migration(&mut self) {
        if !self.migrate_asked {
            self.migrate_asked = true;
            if let Some(ctl) = self.ctl.as_mut() {
                log::info!("handoff: asking to be migrated");
                ctl.send(Message::MigrateRequest);
            }
        }
    }

    /// One step: finish the drain if it is done, and act on at most one control message
    /// (messages are read at most every [`POLL_INTERVAL_US`]).
    pub fn poll<H: Hal, B: BlockPort>(&mut self, stack: &mut ResourceStack<H, B>) {
        if stack.state() == State::Drained {
            self.release_device(stack);
        }
        let now = self.platform.now_us();
        if now < self.next_poll_us {
            return;
        }
        self.next_poll_us = now + POLL_INTERVAL_US;
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        let Some(msg) = ctl.poll() else { return };
        self.on_message(stack, msg);
    }

    /// Acts on one message from the shim in the redirector's current state.
    fn on_message<H: Hal, B: BlockPort>(&mut self, stack: &mut ResourceStack<H, B>, msg: Message) {
        let state = stack.state();
        match (msg, state) {
            (Message::Redirect, State::Direct) => {
                match stack.direct_switch() {
                    Ok(state) => log::info!("handoff: redirect directed, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                if stack.state() == State::Drained {
                    self.release_device(stack);
                }
            }
            (Message::RingOpened { slot }, State::Draining | State::Drained | State::Released)
                if !stack.has_port2() =>
            {
                let client = self.platform.open_ring(slot).and_then(|region| {
                    RingClient::format(region)
                        .map_err(|e| log::error!("handoff: cannot format the ring: {e}"))
                        .ok()
                });
                match client {
                    Some(client) => {
                        log::info!(
                            "handoff: ring formatted, {} slots",
                            client.layout().slot_count()
                        );
                        stack.attach_port2(client);
                    }
                    None => self.send(Message::Error {
                        code: codes::RING_UNUSABLE,
                    }),
                }
            }
            (Message::OpenPort2, State::Released) if stack.has_port2() => {
                match stack.open_port2() {
                    Ok(state) => log::info!("handoff: port 2 open, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                self.send(Message::Forwarding);
            }
            (Message::OpenPort2, _) => {
                log::warn!("handoff: open-port2 in state {state:?}");
                self.send(Message::Error {
                    code: codes::NOT_READY,
                });
            }
            (msg, state) => {
                log::warn!("handoff: unexpected {} in state {state:?}", msg.name());
                self.send(Message::Error {
                    code: codes::UNEXPECTED_MESSAGE,
                });
            }
        }
    }

    /// Port 1 drained: quiesce the device, eject it, tell the shim.
    fn release_device<H: Hal, B: BlockPort>(&mut self, stack: &mut ResourceStack<H, B>) {
        let held = stack.held();
        self.held_at_switch = u64::from(held);
        let completed = stack.port1_requests;
        if let Some(dev) = stack.detach_port1() {
            dev.release();
        }
        self.platform.eject(self.disk_slot);
        if let Err(e) = stack.device_released() {
            panic!("handoff: {e}");
        }
        log::info!(
            "handoff: port 1 drained ({completed} requests), {held} held, slot {} ejected",
            self.disk_slot
        );
        self.send(Message::Drained {
            port1_completed: completed,
            held: u32::from(held),
        });
        self.send(Message::Released {
            slot: self.disk_slot,
        });
    }

    fn send(&mut self, msg: Message) {
        if let Some(ctl) = self.ctl.as_mut()
            && !ctl.send(msg)
        {
            log::error!("control: send queue full, {} dropped", msg.name());
        }
    }

    /// Keeps the control channel moving until everything queued was acknowledged or `us` passed.
    pub fn flush(&mut self, us: u64) {
        let deadline = self.platform.now_us().saturating_add(us);
        if let Some(ctl) = self.ctl.as_mut() {
            while !ctl.idle() && self.platform.now_us() < deadline {
                if let Some(msg) = ctl.poll() {
                    log::warn!("handoff: ignoring {} after the workload", msg.name());
                }
                core::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
