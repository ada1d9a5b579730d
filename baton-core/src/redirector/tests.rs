//! Unit tests of the redirector's word packing and its state machine (single-threaded).

use super::word::{DIRECT_AND_EMPTY, P1_ONE, P2_ONE, QUEUED_ONE, TAIL_ONE, Word};
use super::*;

#[test]
fn word_fields_are_independent() {
    for state in [
        State::Direct,
        State::Draining,
        State::Drained,
        State::Released,
        State::Forwarding,
        State::FailbackDraining,
        State::FailbackDrained,
    ] {
        let full = Word(u64::MAX).with_state(state);
        assert_eq!(full.state(), state);
        assert_eq!(
            (full.p1(), full.p2(), full.queued(), full.tail()),
            (MAX_INFLIGHT, MAX_INFLIGHT, MAX_INFLIGHT, u16::MAX)
        );
        let w = Word(0)
            .with_state(state)
            .plus(P1_ONE * 3 + P2_ONE * 5 + QUEUED_ONE * 7 + TAIL_ONE * 9);
        assert_eq!(
            (w.state(), w.p1(), w.p2(), w.queued(), w.tail()),
            (state, 3, 5, 7, 9)
        );
        let w = w.without_p2().minus(P1_ONE);
        assert_eq!(
            (w.state(), w.p1(), w.p2(), w.queued(), w.tail()),
            (state, 2, 0, 7, 9)
        );
    }
    // The tail wraps without touching the fields below it.
    let top = Word(u64::MAX << 48).plus(TAIL_ONE + QUEUED_ONE);
    assert_eq!((top.tail(), top.queued(), top.p2()), (0, 1, 0));
    // The submit fast path's test: `Direct` and nothing queued, whatever the other fields.
    assert_eq!(Word(0).0 & DIRECT_AND_EMPTY, 0);
    assert_eq!(
        Word(0).plus(P1_ONE + P2_ONE + TAIL_ONE).0 & DIRECT_AND_EMPTY,
        0
    );
    assert_ne!(Word(0).plus(QUEUED_ONE).0 & DIRECT_AND_EMPTY, 0);
    assert_ne!(
        Word(0).with_state(State::Forwarding).0 & DIRECT_AND_EMPTY,
        0
    );
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

#[test]
fn a_lost_peer_s_requests_are_replayed_on_port_1_before_the_held_ones() {
    let r: Redirector<8> = Redirector::new();
    assert_eq!(r.direct_switch(), Ok(State::Drained));
    assert_eq!(r.device_released(), Ok(State::Released));
    assert_eq!(r.open_port2(), Ok(State::Forwarding));
    // Two requests forwarded, then the peer dies.
    for t in 0..2 {
        assert!(matches!(r.submit(t), Ok(Route::Port2(_))));
    }
    let mut rel = r.releaser().unwrap();
    assert_eq!(rel.dispatch().map(|d| d.port), Some(Port::Two));
    assert_eq!(rel.dispatch().map(|d| d.port), Some(Port::Two));
    drop(rel);
    // Not before port 2 is given up: resubmitting needs `Direct`.
    assert!(matches!(
        r.resubmit_port1(),
        Err(RedirectError::WrongState {
            state: State::Forwarding,
            ..
        })
    ));
    assert_eq!(r.abandon_port2(), Ok(2));
    assert_eq!(r.state(), State::FailbackDrained);
    assert_eq!(r.snapshot().port2_inflight, 0);
    // A request submitted now is held.
    assert!(matches!(r.submit(7), Ok(Route::Held(_))));
    // The device is back: the two replays are counted at port 1 first, then the held one goes.
    assert_eq!(r.device_attached(), Ok(State::Direct));
    r.resubmit_port1().unwrap();
    r.resubmit_port1().unwrap();
    let mut rel = r.releaser().unwrap();
    let d = rel.dispatch().unwrap();
    assert_eq!((d.port, d.token), (Port::One, 7));
    drop(rel);
    assert_eq!(r.snapshot().port1_inflight, 3);
    // Abandoning twice, or from `Direct`, is refused or harmless as documented.
    assert!(matches!(
        r.abandon_port2(),
        Err(RedirectError::WrongState {
            state: State::Direct,
            ..
        })
    ));
}

#[test]
fn a_handoff_taken_back_sends_the_held_requests_to_port_1_in_order() {
    let r: Redirector<8> = Redirector::new();
    assert_eq!(r.submit(0), Ok(Route::Port1));
    assert_eq!(r.direct_switch(), Ok(State::Draining));
    for t in 1..3 {
        assert!(matches!(r.submit(t), Ok(Route::Held(_))));
    }
    // Port 1 still has request 0 in flight: taken back, the held ones follow it there.
    assert_eq!(r.take_back(), Ok(State::Direct));
    let mut rel = r.releaser().unwrap();
    for t in 1..3 {
        let d = rel.dispatch().unwrap();
        assert_eq!((d.port, d.token), (Port::One, t));
    }
    drop(rel);
    assert_eq!(r.snapshot().port1_inflight, 3);
    assert!(matches!(
        r.take_back(),
        Err(RedirectError::WrongState {
            op: Op::TakeBack,
            state: State::Direct
        })
    ));
    // After the release, the device has to come back first.
    for _ in 0..3 {
        r.complete_port1().unwrap();
    }
    assert_eq!(r.direct_switch(), Ok(State::Drained));
    assert!(matches!(r.submit(9), Ok(Route::Held(_))));
    assert_eq!(r.device_released(), Ok(State::Released));
    assert_eq!(r.take_back(), Ok(State::FailbackDrained));
    assert!(
        r.releaser().unwrap().dispatch().is_none(),
        "no port is open"
    );
    assert_eq!(r.device_attached(), Ok(State::Direct));
    let d = r.releaser().unwrap().dispatch().unwrap();
    assert_eq!((d.port, d.token), (Port::One, 9));
    // Not once port 2 is open.
    assert_eq!(r.direct_switch(), Ok(State::Draining));
    r.complete_port1().unwrap();
    assert_eq!(r.device_released(), Ok(State::Released));
    assert_eq!(r.open_port2(), Ok(State::Forwarding));
    assert!(r.take_back().is_err());
}
