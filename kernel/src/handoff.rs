//! The owner's side of the handoff (docs/design.md, "The handoff"; US 20070204265A1 claim 1).
//!
//! Driven from the workload's poll loop:
//! 1. `redirect` from the shim (sent when the operator directs a save/migrate, or after this guest
//!    asked with `migrate-request`): the redirector switches; new requests are held for port 2
//!    while port 1 drains.
//! 2. When port 1 has nothing in flight: the device is reset and its slot ejected through the ACPI
//!    hotplug register; the guest reports `drained` and `released`.
//! 3. `ring-opened <slot>` (may arrive any time after `redirect`): the ivshmem device is set up
//!    and the ring formatted; it becomes port 2.
//! 4. `open-port2`: the held requests, then all new ones, are forwarded over the ring in order;
//!    the guest reports `forwarding`.

use crate::clock;
use crate::control::ControlChannel;
use crate::pci::{self, PortCam};
use crate::stack::ResourceStack;
use baton_core::control::{Message, Role};
use baton_core::redirector::State;
use baton_core::ring::RingClient;
use virtio_drivers::transport::pci::bus::PciRoot;

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
const POLL_INTERVAL_US: u64 = 500;

/// Where the owner is in the handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Port 1 in use.
    Direct,
    /// Switch directed; port 1 draining.
    Draining,
    /// Device released; waiting for `open-port2`.
    Released,
    /// Port 2 forwarding.
    Forwarding,
}

/// The owner's handoff driver.
pub struct OwnerHandoff {
    ctl: Option<ControlChannel>,
    root: PciRoot<PortCam>,
    disk_slot: u8,
    phase: Phase,
    migrate_asked: bool,
    next_poll_tsc: u64,
    /// Requests held at port 2 when port 1 finished draining.
    pub held_at_switch: u64,
}

impl OwnerHandoff {
    /// A driver for the disk in PCI slot `disk_slot`; says hello on the control channel.
    pub fn new(root: PciRoot<PortCam>, disk_slot: u8, vm: u32) -> Self {
        let mut ctl = ControlChannel::open();
        if let Some(ctl) = ctl.as_mut() {
            ctl.send(Message::hello(Role::Owner, vm));
        }
        OwnerHandoff {
            ctl,
            root,
            disk_slot,
            phase: Phase::Direct,
            migrate_asked: false,
            next_poll_tsc: 0,
            held_at_switch: 0,
        }
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

    /// One step: finish the drain if it is done, and act on at most one control message.
    pub fn poll(&mut self, stack: &mut ResourceStack) {
        if self.phase == Phase::Draining && stack.state() == State::Drained {
            self.release_device(stack);
        }
        let now = clock::rdtsc();
        if now < self.next_poll_tsc {
            return;
        }
        self.next_poll_tsc = now + POLL_INTERVAL_US * clock::tsc_per_us();
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        let Some(msg) = ctl.poll() else { return };
        match (msg, self.phase) {
            (Message::Redirect, Phase::Direct) => {
                match stack.direct_switch() {
                    Ok(state) => log::info!("handoff: redirect directed, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                self.phase = Phase::Draining;
                if stack.state() == State::Drained {
                    self.release_device(stack);
                }
            }
            (Message::RingOpened { slot }, Phase::Draining | Phase::Released)
                if !stack.has_port2() =>
            {
                match crate::shm::open(&mut self.root, slot)
                    .map_err(|e| log::error!("handoff: ring in slot {slot}: {e:?}"))
                    .and_then(|region| {
                        RingClient::format(region)
                            .map_err(|e| log::error!("handoff: cannot format the ring: {e}"))
                    }) {
                    Ok(client) => {
                        log::info!(
                            "handoff: ring formatted, {} slots",
                            client.layout().slot_count()
                        );
                        stack.attach_port2(client);
                    }
                    Err(()) => self.send(Message::Error {
                        code: codes::RING_UNUSABLE,
                    }),
                }
            }
            (Message::OpenPort2, Phase::Released) if stack.has_port2() => {
                match stack.open_port2() {
                    Ok(state) => log::info!("handoff: port 2 open, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                self.phase = Phase::Forwarding;
                self.send(Message::Forwarding);
            }
            (Message::OpenPort2, _) => {
                log::warn!("handoff: open-port2 in phase {:?}", self.phase);
                self.send(Message::Error {
                    code: codes::NOT_READY,
                });
            }
            (msg, phase) => {
                log::warn!("handoff: unexpected {} in phase {phase:?}", msg.name());
                self.send(Message::Error {
                    code: codes::UNEXPECTED_MESSAGE,
                });
            }
        }
    }

    /// Port 1 drained: quiesce the device, eject it, tell the shim.
    fn release_device(&mut self, stack: &mut ResourceStack) {
        let held = stack.held();
        self.held_at_switch = u64::from(held);
        let completed = stack.port1_requests;
        if let Some(dev) = stack.detach_port1() {
            dev.release();
        }
        pci::hotplug::eject(self.disk_slot);
        if let Err(e) = stack.device_released() {
            panic!("handoff: {e}");
        }
        log::info!(
            "handoff: port 1 drained ({completed} requests), {held} held, slot {} ejected",
            self.disk_slot
        );
        self.phase = Phase::Released;
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
        let deadline = clock::Deadline::after_us(us);
        if let Some(ctl) = self.ctl.as_mut() {
            while !ctl.idle() && !deadline.expired() {
                if let Some(msg) = ctl.poll() {
                    log::warn!("handoff: ignoring {} after the workload", msg.name());
                }
                core::hint::spin_loop();
            }
        }
    }
}
