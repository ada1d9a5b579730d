//! The handoff's transition table: the module docs and `TRANSITIONS` agree; random event
//! sequences never reach `Forwarding` without `drained`, `released` and `peer-ready` (I2); a
//! rejected event changes nothing; the gate's `hello` checks.

use baton_core::control::{
    Event, HandoffGate, HandoffState, Message, MessageKind, PROTOCOL_VERSION, Rejection, Role,
    ShimAction, TRANSITIONS, Trigger, accepts, accepts_from, step,
};
use proptest::collection::vec;
use proptest::prelude::*;

mod common;
use common::role;

/// Any message, with small numbers so that `hello`s sometimes carry the right VM id.
fn message() -> impl Strategy<Value = Message> {
    common::message(0u32..4, 0u32..3)
}

fn action() -> impl Strategy<Value = ShimAction> {
    prop_oneof![
        Just(ShimAction::Redirect),
        Just(ShimAction::BeginMigration),
        Just(ShimAction::EndMigration),
        Just(ShimAction::Failback),
        Just(ShimAction::PeerLost),
        Just(ShimAction::TakeBack),
        Just(ShimAction::GiveUp),
    ]
}

/// Mostly the messages of a handoff in order (so that long runs get far), plus anything.
fn event() -> impl Strategy<Value = Event> {
    let in_order = prop_oneof![
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::hello(Role::Owner, 1)
        }),
        Just(Event::Guest {
            from: Role::Peer,
            msg: Message::hello(Role::Peer, 2)
        }),
        Just(Event::Shim(ShimAction::Redirect)),
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::Drained {
                completed: 5,
                held: 1
            }
        }),
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::Released { slot: 4 }
        }),
        Just(Event::Guest {
            from: Role::Peer,
            msg: Message::PeerReady {
                capacity_sectors: 8
            }
        }),
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::Forwarding
        }),
        Just(Event::Shim(ShimAction::Failback)),
        Just(Event::Guest {
            from: Role::Peer,
            msg: Message::Released { slot: 5 }
        }),
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::Direct
        }),
        Just(Event::Shim(ShimAction::PeerLost)),
        Just(Event::Guest {
            from: Role::Owner,
            msg: Message::Abandoned { replay: 3, held: 1 }
        }),
        Just(Event::Shim(ShimAction::TakeBack)),
    ];
    prop_oneof![
        3 => in_order,
        2 => (role(), message()).prop_map(|(from, msg)| Event::Guest { from, msg }),
        1 => action().prop_map(Event::Shim),
    ]
}

/// Applies `event` to the gate the way the shim does.
fn apply(gate: &mut HandoffGate, event: Event) -> Result<HandoffState, Rejection> {
    match event {
        Event::Guest { from, msg } => gate.offer(from, &msg),
        Event::Shim(action) => gate.act(action),
    }
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

#[test]
fn the_docs_table_is_the_transition_table() {
    let source = include_str!("../src/control/handoff.rs");
    let rows: Vec<Vec<String>> = source
        .lines()
        .filter_map(|l| l.strip_prefix("//! |"))
        .map(cells)
        .filter(|c| !c.iter().all(|c| c.chars().all(|ch| ch == '-')))
        .skip(1) // the header
        .collect();
    let state =
        |s: Option<HandoffState>, none: &str| s.map_or(none.to_owned(), |s| format!("{s:?}"));
    let want: Vec<Vec<String>> = TRANSITIONS
        .iter()
        .map(|t| {
            vec![
                state(t.from, "any"),
                t.on.to_string(),
                state(t.to, "unchanged"),
            ]
        })
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn every_row_is_reachable_and_decides() {
    // Each row is the first match for an event built from it (no row is shadowed).
    for (i, t) in TRANSITIONS.iter().enumerate() {
        let states: Vec<HandoffState> = t.from.map_or(HandoffState::ALL.to_vec(), |s| vec![s]);
        for s in states {
            let event = match t.on {
                Trigger::Shim(a) => Event::Shim(a),
                Trigger::Guest(_, kind) => {
                    let msg = sample(kind);
                    let from = [Role::Owner, Role::Peer]
                        .into_iter()
                        .find(|&r| accepts_from(r, s, &msg))
                        .unwrap_or_else(|| panic!("row {i} admits nobody in {s:?}"));
                    Event::Guest { from, msg }
                }
            };
            assert_eq!(step(s, event), Ok(t.to.unwrap_or(s)), "row {i} in {s:?}");
        }
    }
}

/// A message of `kind` (a `hello` claims the owner's role).
fn sample(kind: MessageKind) -> Message {
    match kind {
        MessageKind::Hello => Message::hello(Role::Owner, 1),
        MessageKind::Drained => Message::Drained {
            completed: 1,
            held: 1,
        },
        MessageKind::Released => Message::Released { slot: 4 },
        MessageKind::PeerReady => Message::PeerReady {
            capacity_sectors: 8,
        },
        MessageKind::Forwarding => Message::Forwarding,
        MessageKind::MigrateRequest => Message::MigrateRequest,
        MessageKind::Error => Message::Error { code: 1 },
        MessageKind::Ack => Message::Ack { seq: 1 },
        MessageKind::Redirect => Message::Redirect,
        MessageKind::RingOpened => Message::RingOpened { slot: 6 },
        MessageKind::DiskAttached => Message::DiskAttached { slot: 4 },
        MessageKind::OpenPort2 => Message::OpenPort2,
        MessageKind::FailbackRequest => Message::FailbackRequest,
        MessageKind::Abandoned => Message::Abandoned { replay: 2, held: 1 },
        MessageKind::PeerStalled => Message::PeerStalled { ms: 3000 },
        MessageKind::PeerLost => Message::PeerLost,
        MessageKind::Direct => Message::Direct,
        MessageKind::Failback => Message::Failback,
        MessageKind::ReleaseDisk => Message::ReleaseDisk,
        MessageKind::CloseRing => Message::CloseRing { slot: 6 },
        MessageKind::TakeBack => Message::TakeBack,
        MessageKind::GiveUp => Message::GiveUp,
    }
}

#[test]
fn rejections_say_why() {
    use HandoffState as S;
    let drained = Message::Drained {
        completed: 1,
        held: 0,
    };
    let guest = |from, msg| Event::Guest { from, msg };
    assert_eq!(
        step(S::PeerReady, guest(Role::Owner, Message::OpenPort2)),
        Err(Rejection::ShimOnly)
    );
    assert_eq!(
        step(S::Redirecting, guest(Role::Peer, drained)),
        Err(Rejection::WrongSender)
    );
    assert_eq!(
        step(S::Direct, guest(Role::Owner, drained)),
        Err(Rejection::NotNow)
    );
    assert_eq!(
        step(S::Booting, Event::Shim(ShimAction::Redirect)),
        Err(Rejection::NotNow)
    );
    for r in [
        Rejection::ShimOnly,
        Rejection::WrongSender,
        Rejection::NotNow,
        Rejection::WrongVm { vm: 1, expected: 2 },
        Rejection::BadVersion { found: 9 },
        Rejection::SecondHello,
    ] {
        assert!(!r.to_string().is_empty());
    }
}

#[test]
fn the_gate_checks_hello() {
    let mut g = HandoffGate::new(1, 2);
    let bad_version = Message::Hello {
        role: Role::Owner,
        vm: 1,
        version: PROTOCOL_VERSION + 1,
    };
    assert_eq!(
        g.offer(Role::Owner, &bad_version),
        Err(Rejection::BadVersion {
            found: PROTOCOL_VERSION + 1
        })
    );
    assert_eq!(
        g.offer(Role::Owner, &Message::hello(Role::Owner, 2)),
        Err(Rejection::WrongVm { vm: 2, expected: 1 })
    );
    assert_eq!(
        g.offer(Role::Peer, &Message::hello(Role::Owner, 1)),
        Err(Rejection::WrongSender)
    );
    assert_eq!(g.state(), HandoffState::Booting);
    assert!(!g.said_hello(Role::Owner));
    assert_eq!(
        g.offer(Role::Owner, &Message::hello(Role::Owner, 1)),
        Ok(HandoffState::Direct)
    );
    assert_eq!(
        g.offer(Role::Owner, &Message::hello(Role::Owner, 1)),
        Err(Rejection::SecondHello)
    );
    assert!(!g.both_hello());
    assert_eq!(
        g.offer(Role::Peer, &Message::hello(Role::Peer, 2)),
        Ok(HandoffState::Direct)
    );
    assert!(g.both_hello());
    assert_eq!(g.rejected(), 4);
    // Shim actions are refused out of place and not counted.
    assert_eq!(g.act(ShimAction::EndMigration), Err(Rejection::NotNow));
    assert_eq!(g.rejected(), 4);
    assert_eq!(g.act(ShimAction::Redirect), Ok(HandoffState::Redirecting));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// I2 at the shim, both ways: `Forwarding` only after `drained`, `released` and `peer-ready`
    /// were accepted since the last `Direct`, in that order, from the right guests; `Direct`
    /// again (a failback) only after the owner's `drained`, the peer's `released` and the owner's
    /// `direct` since the last `Forwarding` — or, the peer lost, the owner's `abandoned` (or its
    /// `drained`, the peer dying after it) and `direct`; or, a handoff taken back before port 2
    /// opened, the owner's `direct`; `Migrating` only from `Forwarding`.
    #[test]
    fn each_direction_needs_drained_released_and_ready(events in vec(event(), 0..80)) {
        let mut gate = HandoffGate::new(1, 2);
        let mut since_direct: Vec<(Role, MessageKind)> = Vec::new();
        let mut since_forwarding: Vec<(Role, MessageKind)> = Vec::new();
        let mut taken_back = false;
        let mut last = gate.state();
        for event in events {
            let Ok(next) = apply(&mut gate, event) else { continue };
            if event == Event::Shim(ShimAction::TakeBack) {
                prop_assert!(
                    matches!(
                        last,
                        HandoffState::Redirecting | HandoffState::Drained | HandoffState::Released
                    ),
                    "take-back in {:?}",
                    last
                );
                taken_back = true;
            }
            if let Event::Guest { from, msg } = event {
                since_direct.push((from, msg.kind()));
                since_forwarding.push((from, msg.kind()));
            }
            if next == HandoffState::Forwarding && last != HandoffState::Migrating
                && last != HandoffState::Forwarding
            {
                let order = [
                    (Role::Owner, MessageKind::Drained),
                    (Role::Owner, MessageKind::Released),
                    (Role::Peer, MessageKind::PeerReady),
                    (Role::Owner, MessageKind::Forwarding),
                ];
                let handoff: Vec<_> = since_direct
                    .iter()
                    .copied()
                    .filter(|s| order.contains(s))
                    .collect();
                prop_assert_eq!(handoff, order.to_vec());
                since_forwarding.clear();
            }
            if next == HandoffState::Direct && last != HandoffState::Direct {
                if taken_back {
                    // Port 2 never opened since the last `Direct`; the owner said `direct`.
                    prop_assert!(!since_direct.contains(&(Role::Owner, MessageKind::Forwarding)));
                    prop_assert_eq!(since_direct.last(), Some(&(Role::Owner, MessageKind::Direct)));
                    taken_back = false;
                } else if last != HandoffState::Booting {
                    // A failback: port 2 drained and the peer released the disk; or the peer
                    // died and the owner abandoned port 2 (possibly after it had drained).
                    let steps = [
                        (Role::Owner, MessageKind::Drained),
                        (Role::Peer, MessageKind::Released),
                        (Role::Owner, MessageKind::Abandoned),
                        (Role::Owner, MessageKind::Direct),
                    ];
                    let failback: Vec<_> = since_forwarding
                        .iter()
                        .copied()
                        .filter(|s| steps.contains(s))
                        .collect();
                    let (drained, released, abandoned, direct) = (steps[0], steps[1], steps[2], steps[3]);
                    let ok = [
                        vec![drained, released, direct],
                        vec![abandoned, direct],
                        vec![drained, direct],
                    ];
                    prop_assert!(ok.contains(&failback), "{:?}", failback);
                }
                since_direct.clear();
            }
            if next == HandoffState::Migrating && last != HandoffState::Migrating {
                prop_assert_eq!(last, HandoffState::Forwarding);
            }
            last = next;
        }
    }

    /// A rejected event leaves the gate exactly as it was, but for its rejection count.
    #[test]
    fn a_rejected_event_changes_nothing(events in vec(event(), 0..60)) {
        let mut gate = HandoffGate::new(1, 2);
        for event in events {
            let before = gate;
            match apply(&mut gate, event) {
                Ok(next) => prop_assert_eq!(gate.state(), next),
                Err(_) => {
                    let counted = u64::from(matches!(event, Event::Guest { .. }));
                    prop_assert_eq!(gate.rejected(), before.rejected() + counted);
                    prop_assert_eq!(gate.state(), before.state());
                    prop_assert_eq!(gate.both_hello(), before.both_hello());
                    prop_assert_eq!(gate.said_hello(Role::Owner), before.said_hello(Role::Owner));
                }
            }
        }
    }

    /// `step` is the table: a guest message is accepted iff some row admits it, and the role
    /// check is the only difference between `accepts_from` and `accepts`.
    #[test]
    fn step_agrees_with_accepts(msg in message(), from in role(), i in 0usize..HandoffState::ALL.len()) {
        let state = HandoffState::ALL[i];
        let stepped = step(state, Event::Guest { from, msg });
        prop_assert_eq!(stepped.is_ok(), accepts_from(from, state, &msg));
        if stepped.is_ok() {
            prop_assert!(accepts(state, &msg));
            prop_assert_eq!(state.after(&msg), stepped.ok());
        }
        if !msg.sent_by_guest() {
            prop_assert_eq!(stepped, Err(Rejection::ShimOnly));
        }
        // An error stops the handoff from anywhere; an ack never moves it.
        match msg {
            Message::Error { .. } => prop_assert_eq!(stepped, Ok(HandoffState::Failed)),
            Message::Ack { .. } => prop_assert_eq!(stepped, Ok(state)),
            _ => {}
        }
    }
}
