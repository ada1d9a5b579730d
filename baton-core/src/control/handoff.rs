//! The handoff's transition table: which guest message is accepted from which role in which
//! [`HandoffState`], and which shim action moves the state — written once, as data
//! ([`TRANSITIONS`]), and read by one step function ([`step`]).
//!
//! This is the shim's view of one handoff between an owner and a peer (US 20070204265A1, claim 1:
//! the switch is directed, port 1 drains, the device is released, reassigned to the peer, and only
//! then does port 2 forward). The guests' messages move it; the shim moves it itself when it acts
//! (sending `redirect`, saving or migrating the owner). The sequence diagram is in
//! docs/design.md ("The handoff").
//!
//! | in state    | on                                | to          |
//! |-------------|-----------------------------------|-------------|
//! | Booting     | hello from the role it claims     | Direct      |
//! | Direct      | hello from the role it claims     | Direct      |
//! | Direct      | migrate-request from the owner    | Direct      |
//! | Direct      | shim: redirect                    | Redirecting |
//! | Redirecting | drained from the owner            | Drained     |
//! | Drained     | released from the owner           | Released    |
//! | Released    | peer-ready from the peer          | PeerReady   |
//! | PeerReady   | forwarding from the owner         | Forwarding  |
//! | Forwarding  | shim: begin-migration             | Migrating   |
//! | Migrating   | shim: end-migration               | Forwarding  |
//! | Forwarding  | failback-request from the owner   | Forwarding  |
//! | Migrating   | failback-request from the owner   | Migrating   |
//! | Forwarding  | shim: failback                    | FailingBack |
//! | FailingBack | drained from the owner            | FailbackDrained |
//! | FailbackDrained | released from the peer        | FailbackReleased |
//! | FailbackReleased | direct from the owner        | Direct      |
//! | Forwarding  | shim: peer-lost                   | PeerLost    |
//! | FailingBack | shim: peer-lost                   | PeerLost    |
//! | FailbackDrained | shim: peer-lost               | FailbackReleased |
//! | PeerLost    | abandoned from the owner          | FailbackReleased |
//! | Forwarding  | peer-stalled from the owner       | Forwarding  |
//! | Migrating   | peer-stalled from the owner       | Migrating   |
//! | FailingBack | peer-stalled from the owner       | FailingBack |
//! | PeerLost    | peer-stalled from the owner       | PeerLost    |
//! | Redirecting | shim: take-back                   | TakingBack  |
//! | Drained     | shim: take-back                   | TakingBack  |
//! | Released    | shim: take-back                   | TakingBack  |
//! | TakingBack  | drained from the owner            | TakingBack  |
//! | TakingBack  | released from the owner           | TakingBack  |
//! | TakingBack  | direct from the owner             | Direct      |
//! | TakingBack  | abandoned from the owner          | FailbackReleased |
//! | any         | shim: give-up                     | Failed      |
//! | any         | ack from either guest             | unchanged   |
//! | any         | error from either guest           | Failed      |
//!
//! Everything else is rejected and leaves the state as it was: a message only the shim sends
//! ([`Rejection::ShimOnly`]), a message this state accepts from the other guest
//! ([`Rejection::WrongSender`]), anything else ([`Rejection::NotNow`]). Hence (I2) `Forwarding`
//! is reachable only through `Drained → Released → PeerReady`: the shim sends `open-port2` once
//! the state is `PeerReady`, so port 2 forwards only after port 1 drained, the device was
//! released and the peer is ready. `baton-core/tests/control_handoff.rs` checks this over random
//! event sequences, and that this table and [`TRANSITIONS`] agree.
//!
//! The failback (docs/design.md, "Failback") is the handoff in reverse, with its own three states:
//! the owner's port 2 drains (`FailingBack` → `FailbackDrained`), the peer releases the disk
//! (`FailbackReleased`), and the owner's `direct` (the disk is behind port 1 again, the held
//! requests went there first) brings the handoff back to `Direct`, where the next cycle's
//! `redirect` can start. So (mirrored I2) `Direct` is reachable from `Forwarding` only through
//! `FailbackDrained → FailbackReleased`: nothing reaches port 1 before port 2 drained and the
//! peer let the disk go.
//!
//! A peer whose QEMU exited while the owner forwarded (issue 9's emergency failback) is the one
//! other way back: `peer-lost` moves the table to `PeerLost` (or straight to `FailbackReleased`
//! when the owner had already drained); the owner's `abandoned` (port 2 given up, its unanswered
//! requests kept for replay) stands for both `drained` and the peer's `released`, since a peer
//! whose process is gone can neither serve nor write. The owner's `peer-stalled` (the peer's
//! heartbeat in the ring froze while requests waited) changes nothing in the table: the shim
//! fences the peer, and the loss is then handled as above.
//!
//! A handoff that cannot complete before port 2 opens (port 1 does not drain in time, the ring
//! cannot be set up, the peer cannot take the disk) is taken back (issue 9; docs/design.md, "A
//! handoff taken back"): `take-back` moves the table to `TakingBack`. An owner that still had the
//! device answers `direct` (back to `Direct`); one that had released it answers `abandoned`
//! (nothing was forwarded, so nothing to replay), which leads to `FailbackReleased`, and the disk
//! comes back as in a failback. A `drained` or `released` the owner sent before it saw `take-back`
//! changes nothing. `give-up` (the shim ends the run and asks the owner for its report) moves any
//! state to `Failed`.

use core::fmt;

use super::message::{Message, MessageKind, Role};

/// The shim's view of one handoff (one owner, one peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoffState {
    /// Guests starting; waiting for their `hello`s.
    Booting,
    /// The owner does I/O through port 1.
    Direct,
    /// `redirect` sent, `device_del` issued, ring being opened; port 1 draining.
    Redirecting,
    /// The owner reported port 1 drained.
    Drained,
    /// The owner released the device; the shim moves it to the peer.
    Released,
    /// The peer has the disk and serves the ring; `open-port2` is next.
    PeerReady,
    /// Port 2 forwards over the ring.
    Forwarding,
    /// The owner is being saved or migrated (still forwarding).
    Migrating,
    /// `failback` sent: the owner holds new requests while port 2 drains.
    FailingBack,
    /// The owner reported port 2 drained; the peer is told to release the disk.
    FailbackDrained,
    /// The peer released the disk (or died); the shim moves it back to the owner.
    FailbackReleased,
    /// The peer died while the owner forwarded: `peer-lost` sent, the owner abandons port 2.
    PeerLost,
    /// The handoff could not complete: `take-back` sent, the owner returns to port 1.
    TakingBack,
    /// A guest reported an error; the handoff is stopped.
    Failed,
}

impl HandoffState {
    /// Every state, in handoff order.
    pub const ALL: [HandoffState; 14] = [
        HandoffState::Booting,
        HandoffState::Direct,
        HandoffState::Redirecting,
        HandoffState::Drained,
        HandoffState::Released,
        HandoffState::PeerReady,
        HandoffState::Forwarding,
        HandoffState::Migrating,
        HandoffState::FailingBack,
        HandoffState::FailbackDrained,
        HandoffState::FailbackReleased,
        HandoffState::PeerLost,
        HandoffState::TakingBack,
        HandoffState::Failed,
    ];

    /// The state after `msg` from whichever guest may send it, or `None` if no guest may send it
    /// now. See [`step`] for the check that includes the sender.
    pub fn after(self, msg: &Message) -> Option<HandoffState> {
        [Role::Owner, Role::Peer]
            .into_iter()
            .find_map(|from| step(self, Event::Guest { from, msg: *msg }).ok())
    }
}

/// A step the shim takes itself, moving the handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShimAction {
    /// The shim directed the switch (sent `redirect`, issued `device_del`).
    Redirect,
    /// The guest that gave its device up is being saved or migrated.
    BeginMigration,
    /// Its save or migration ended (completed or rolled back); port 2 still forwards.
    EndMigration,
    /// The shim directed the failback (sent `failback` to the owner).
    Failback,
    /// The peer's QEMU exited (and was reaped) while the owner forwarded: an emergency failback.
    PeerLost,
    /// The handoff could not complete before port 2 opened: the shim sent `take-back`.
    TakeBack,
    /// The shim ends the run: it sent `give-up` to the owner.
    GiveUp,
}

impl ShimAction {
    /// Every action.
    pub const ALL: [ShimAction; 7] = [
        ShimAction::Redirect,
        ShimAction::BeginMigration,
        ShimAction::EndMigration,
        ShimAction::Failback,
        ShimAction::PeerLost,
        ShimAction::TakeBack,
        ShimAction::GiveUp,
    ];

    /// The name in the transition table.
    pub const fn name(self) -> &'static str {
        match self {
            ShimAction::Redirect => "redirect",
            ShimAction::BeginMigration => "begin-migration",
            ShimAction::EndMigration => "end-migration",
            ShimAction::Failback => "failback",
            ShimAction::PeerLost => "peer-lost",
            ShimAction::TakeBack => "take-back",
            ShimAction::GiveUp => "give-up",
        }
    }
}

/// Something that may move the handoff: a guest's message or the shim's own action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A message from the guest in role `from` (its control channel says who it is, not the
    /// message).
    Guest {
        /// The sender's role.
        from: Role,
        /// The message.
        msg: Message,
    },
    /// A step of the shim.
    Shim(ShimAction),
}

/// Which guest a table row accepts a message from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Only the owner.
    Owner,
    /// Only the peer.
    Peer,
    /// Either guest.
    Either,
    /// The guest whose role the message names (`hello` claims a role).
    ClaimedRole,
}

impl Sender {
    /// Whether `msg` from `from` fits this row.
    fn admits(self, from: Role, msg: &Message) -> bool {
        match self {
            Sender::Owner => from == Role::Owner,
            Sender::Peer => from == Role::Peer,
            Sender::Either => true,
            Sender::ClaimedRole => matches!(*msg, Message::Hello { role, .. } if role == from),
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Owner => "the owner",
            Sender::Peer => "the peer",
            Sender::Either => "either guest",
            Sender::ClaimedRole => "the role it claims",
        })
    }
}

/// What a table row reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A guest message of this kind from this sender.
    Guest(Sender, MessageKind),
    /// A shim action.
    Shim(ShimAction),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Guest(sender, kind) => write!(f, "{kind} from {sender}"),
            Trigger::Shim(action) => write!(f, "shim: {}", action.name()),
        }
    }
}

/// One row of the transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state it applies in; `None`: every state.
    pub from: Option<HandoffState>,
    /// What it reacts to.
    pub on: Trigger,
    /// The state after it; `None`: unchanged.
    pub to: Option<HandoffState>,
}

const fn row(from: Option<HandoffState>, on: Trigger, to: Option<HandoffState>) -> Transition {
    Transition { from, on, to }
}

/// The handoff's transition table, in the order of the module docs' table. The first row that
/// matches the state and the event decides.
pub const TRANSITIONS: [Transition; 34] = {
    use HandoffState as S;
    use MessageKind as K;
    use Trigger::{Guest, Shim};
    [
        row(
            Some(S::Booting),
            Guest(Sender::ClaimedRole, K::Hello),
            Some(S::Direct),
        ),
        row(
            Some(S::Direct),
            Guest(Sender::ClaimedRole, K::Hello),
            Some(S::Direct),
        ),
        row(
            Some(S::Direct),
            Guest(Sender::Owner, K::MigrateRequest),
            Some(S::Direct),
        ),
        row(
            Some(S::Direct),
            Shim(ShimAction::Redirect),
            Some(S::Redirecting),
        ),
        row(
            Some(S::Redirecting),
            Guest(Sender::Owner, K::Drained),
            Some(S::Drained),
        ),
        row(
            Some(S::Drained),
            Guest(Sender::Owner, K::Released),
            Some(S::Released),
        ),
        row(
            Some(S::Released),
            Guest(Sender::Peer, K::PeerReady),
            Some(S::PeerReady),
        ),
        row(
            Some(S::PeerReady),
            Guest(Sender::Owner, K::Forwarding),
            Some(S::Forwarding),
        ),
        row(
            Some(S::Forwarding),
            Shim(ShimAction::BeginMigration),
            Some(S::Migrating),
        ),
        row(
            Some(S::Migrating),
            Shim(ShimAction::EndMigration),
            Some(S::Forwarding),
        ),
        row(
            Some(S::Forwarding),
            Guest(Sender::Owner, K::FailbackRequest),
            Some(S::Forwarding),
        ),
        row(
            Some(S::Migrating),
            Guest(Sender::Owner, K::FailbackRequest),
            Some(S::Migrating),
        ),
        row(
            Some(S::Forwarding),
            Shim(ShimAction::Failback),
            Some(S::FailingBack),
        ),
        row(
            Some(S::FailingBack),
            Guest(Sender::Owner, K::Drained),
            Some(S::FailbackDrained),
        ),
        row(
            Some(S::FailbackDrained),
            Guest(Sender::Peer, K::Released),
            Some(S::FailbackReleased),
        ),
        row(
            Some(S::FailbackReleased),
            Guest(Sender::Owner, K::Direct),
            Some(S::Direct),
        ),
        row(
            Some(S::Forwarding),
            Shim(ShimAction::PeerLost),
            Some(S::PeerLost),
        ),
        row(
            Some(S::FailingBack),
            Shim(ShimAction::PeerLost),
            Some(S::PeerLost),
        ),
        row(
            Some(S::FailbackDrained),
            Shim(ShimAction::PeerLost),
            Some(S::FailbackReleased),
        ),
        row(
            Some(S::PeerLost),
            Guest(Sender::Owner, K::Abandoned),
            Some(S::FailbackReleased),
        ),
        row(
            Some(S::Forwarding),
            Guest(Sender::Owner, K::PeerStalled),
            Some(S::Forwarding),
        ),
        row(
            Some(S::Migrating),
            Guest(Sender::Owner, K::PeerStalled),
            Some(S::Migrating),
        ),
        row(
            Some(S::FailingBack),
            Guest(Sender::Owner, K::PeerStalled),
            Some(S::FailingBack),
        ),
        row(
            Some(S::PeerLost),
            Guest(Sender::Owner, K::PeerStalled),
            Some(S::PeerLost),
        ),
        row(
            Some(S::Redirecting),
            Shim(ShimAction::TakeBack),
            Some(S::TakingBack),
        ),
        row(
            Some(S::Drained),
            Shim(ShimAction::TakeBack),
            Some(S::TakingBack),
        ),
        row(
            Some(S::Released),
            Shim(ShimAction::TakeBack),
            Some(S::TakingBack),
        ),
        row(
            Some(S::TakingBack),
            Guest(Sender::Owner, K::Drained),
            Some(S::TakingBack),
        ),
        row(
            Some(S::TakingBack),
            Guest(Sender::Owner, K::Released),
            Some(S::TakingBack),
        ),
        row(
            Some(S::TakingBack),
            Guest(Sender::Owner, K::Direct),
            Some(S::Direct),
        ),
        row(
            Some(S::TakingBack),
            Guest(Sender::Owner, K::Abandoned),
            Some(S::FailbackReleased),
        ),
        row(None, Shim(ShimAction::GiveUp), Some(S::Failed)),
        row(None, Guest(Sender::Either, K::Ack), None),
        row(None, Guest(Sender::Either, K::Error), Some(S::Failed)),
    ]
};

/// Why an event does not move the handoff (or why the shim's gate refused a guest message). The
/// doc comment is the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// a message only the shim sends
    ShimOnly,
    /// accepted in this state, but not from this guest
    WrongSender,
    /// not acceptable in this state
    NotNow,
    /// `hello` names another VM
    WrongVm {
        /// The VM id in the message.
        vm: u32,
        /// The VM id the shim started in that role.
        expected: u32,
    },
    /// `hello` speaks an unsupported protocol version
    BadVersion {
        /// The version in the message.
        found: u32,
    },
    /// a second `hello` from the same guest
    SecondHello,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rejection::ShimOnly => f.write_str("a message only the shim sends"),
            Rejection::WrongSender => f.write_str("not acceptable from this guest in this state"),
            Rejection::NotNow => f.write_str("not acceptable in this state"),
            Rejection::WrongVm { vm, expected } => write!(f, "vm {vm}, expected {expected}"),
            Rejection::BadVersion { found } => write!(f, "guest version {found} unsupported"),
            Rejection::SecondHello => f.write_str("second hello (did the guest restart?)"),
        }
    }
}

impl core::error::Error for Rejection {}

/// One step of the handoff: the state after `event` in `state`, per [`TRANSITIONS`].
///
/// Errors: [`Rejection::ShimOnly`] for a guest sending a shim message, [`Rejection::WrongSender`]
/// when the state accepts the message from the other guest only, [`Rejection::NotNow`] otherwise.
/// Pure: a rejected event changes nothing.
pub fn step(state: HandoffState, event: Event) -> Result<HandoffState, Rejection> {
    if let Event::Guest { msg, .. } = event
        && !msg.sent_by_guest()
    {
        return Err(Rejection::ShimOnly);
    }
    let mut wrong_sender = false;
    for t in TRANSITIONS
        .iter()
        .filter(|t| t.from.is_none_or(|s| s == state))
    {
        let fits = match (t.on, event) {
            (Trigger::Shim(want), Event::Shim(action)) => want == action,
            (Trigger::Guest(sender, kind), Event::Guest { from, msg }) if kind == msg.kind() => {
                let ok = sender.admits(from, &msg);
                wrong_sender |= !ok;
                ok
            }
            _ => false,
        };
        if fits {
            return Ok(t.to.unwrap_or(state));
        }
    }
    Err(if wrong_sender {
        Rejection::WrongSender
    } else {
        Rejection::NotNow
    })
}

/// Whether the shim accepts `msg` from some guest in `state` (ignoring who sent it).
pub fn accepts(state: HandoffState, msg: &Message) -> bool {
    state.after(msg).is_some()
}

/// Whether the shim accepts `msg` from the guest in role `role` in `state` ([`step`] succeeds).
pub fn accepts_from(role: Role, state: HandoffState, msg: &Message) -> bool {
    step(
        state,
        Event::Guest {
            from: role,
            msg: *msg,
        },
    )
    .is_ok()
}
