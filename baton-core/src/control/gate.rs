//! The shim's gate on guest messages (I6): the transition table ([`step`]) plus what `hello`
//! must carry (the VM id the shim started in that role, [`PROTOCOL_VERSION`], once per guest).

use super::PROTOCOL_VERSION;
use super::handoff::{Event, HandoffState, Rejection, ShimAction, step};
use super::message::{Message, Role};

/// One handoff's state and the checks every guest message passes before the shim acts on it.
///
/// An accepted message moves the state per [`TRANSITIONS`](super::TRANSITIONS); a rejected one
/// is counted and changes nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffGate {
    state: HandoffState,
    owner_vm: u32,
    peer_vm: u32,
    /// Whether the owner (index 0) and the peer (index 1) said hello.
    hello: [bool; 2],
    rejected: u64,
}

impl HandoffGate {
    /// A handoff between owner VM `owner_vm` and peer VM `peer_vm`, in state `Booting`.
    pub const fn new(owner_vm: u32, peer_vm: u32) -> Self {
        HandoffGate {
            state: HandoffState::Booting,
            owner_vm,
            peer_vm,
            hello: [false; 2],
            rejected: 0,
        }
    }

    /// The current state.
    pub const fn state(&self) -> HandoffState {
        self.state
    }

    /// Guest messages rejected so far.
    pub const fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Whether the guest in `role` said hello.
    pub const fn said_hello(&self, role: Role) -> bool {
        self.hello[Self::index(role)]
    }

    /// Whether both guests said hello.
    pub const fn both_hello(&self) -> bool {
        self.hello[0] && self.hello[1]
    }

    const fn index(role: Role) -> usize {
        match role {
            Role::Owner => 0,
            Role::Peer => 1,
        }
    }

    /// Offers `msg` from the guest in role `from`. Accepted: the state moves on and is returned.
    /// Rejected: counted; nothing else changes.
    ///
    /// Errors: what [`step`] rejects; for `hello`, [`Rejection::WrongVm`],
    /// [`Rejection::BadVersion`] and [`Rejection::SecondHello`].
    pub fn offer(&mut self, from: Role, msg: &Message) -> Result<HandoffState, Rejection> {
        let checked = self.check(from, msg);
        match checked {
            Ok(next) => {
                if let Message::Hello { .. } = msg {
                    self.hello[Self::index(from)] = true;
                }
                self.state = next;
            }
            Err(_) => self.rejected = self.rejected.saturating_add(1),
        }
        checked
    }

    fn check(&self, from: Role, msg: &Message) -> Result<HandoffState, Rejection> {
        let next = step(self.state, Event::Guest { from, msg: *msg })?;
        if let Message::Hello { vm, version, .. } = *msg {
            let expected = match from {
                Role::Owner => self.owner_vm,
                Role::Peer => self.peer_vm,
            };
            if vm != expected {
                return Err(Rejection::WrongVm { vm, expected });
            }
            if version != PROTOCOL_VERSION {
                return Err(Rejection::BadVersion { found: version });
            }
            if self.said_hello(from) {
                return Err(Rejection::SecondHello);
            }
        }
        Ok(next)
    }

    /// The guest in `role` was replaced by a fresh one (a dead peer's successor): its `hello` is
    /// expected again.
    pub fn replaced(&mut self, role: Role) {
        self.hello[Self::index(role)] = false;
    }

    /// A step the shim takes itself. Refused (not counted, state unchanged) unless the table has
    /// it in the current state.
    pub fn act(&mut self, action: ShimAction) -> Result<HandoffState, Rejection> {
        let next = step(self.state, Event::Shim(action))?;
        self.state = next;
        Ok(next)
    }
}
