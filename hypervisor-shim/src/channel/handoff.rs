//! The shim's handoff gate: [`baton_core::control::HandoffGate`] (the transition table and the
//! `hello` checks) plus the log of rejections the report carries.

use baton_core::control::{
    self, Event, HandoffGate, HandoffState, Message, Role, ShimAction, step,
};

/// Most rejection descriptions kept.
const MAX_LOG: usize = 32;

/// Why the handoff gate refused a guest message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Who sent it.
    pub from: Role,
    /// The message's name.
    pub msg: &'static str,
    /// The shim's state when it arrived.
    pub state: HandoffState,
    /// Why.
    pub why: control::Rejection,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rejected `{}` from the {} in state {:?}: {}",
            self.msg,
            self.from.name(),
            self.state,
            self.why
        )
    }
}

/// The shim's handoff state and its gate on guest messages.
#[derive(Debug, Clone)]
pub struct Handoff {
    gate: HandoffGate,
    log: Vec<String>,
}

impl Handoff {
    /// A handoff between owner VM `owner_vm` and peer VM `peer_vm`, in state `Booting`.
    pub fn new(owner_vm: u32, peer_vm: u32) -> Self {
        Self {
            gate: HandoffGate::new(owner_vm, peer_vm),
            log: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> HandoffState {
        self.gate.state()
    }

    /// Messages rejected so far.
    pub fn rejected(&self) -> u64 {
        self.gate.rejected()
    }

    /// Descriptions of the first rejections.
    pub fn rejections(&self) -> &[String] {
        &self.log
    }

    /// Whether both guests said hello.
    pub fn both_hello(&self) -> bool {
        self.gate.both_hello()
    }

    /// The guest in `role` was replaced by a fresh one: its `hello` is expected again.
    pub fn replaced(&mut self, role: Role) {
        self.gate.replaced(role);
    }

    /// Offers a guest message to the gate. Accepted: the state moves on and is returned.
    /// Rejected: counted and logged; the state does not change.
    pub fn offer(&mut self, from: Role, msg: &Message) -> Result<HandoffState, Rejection> {
        self.gate.offer(from, msg).map_err(|why| {
            let r = Rejection {
                from,
                msg: msg.name(),
                state: self.gate.state(),
                why,
            };
            if self.log.len() < MAX_LOG {
                self.log.push(r.to_string());
            }
            r
        })
    }

    /// A step the shim takes itself ([`ShimAction`]); refused, with the state unchanged, unless
    /// the transition table has it in the current state.
    pub fn act(&mut self, action: ShimAction) -> Result<HandoffState, control::Rejection> {
        self.gate.act(action)
    }

    /// The shim's step that leads to `next`: `Direct → Redirecting` (redirect sent),
    /// `Forwarding → Migrating` and back. Any other move is refused (returns false).
    pub fn shim_moves_to(&mut self, next: HandoffState) -> bool {
        let state = self.state();
        ShimAction::ALL
            .into_iter()
            .find(|&a| step(state, Event::Shim(a)) == Ok(next))
            .is_some_and(|a| self.act(a).is_ok())
    }
}
