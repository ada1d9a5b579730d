//! Property test of the port redirector against a simple sequential model.
//!
//! Random operation sequences (submits, completions on either port, dispatches and every
//! transition, valid or not) are applied to a real `Redirector` and to a model written as
//! plainly as possible; results must agree step by step, and the invariants are checked on the
//! side: I1 every request completed exactly once (after driving the run to quiescence), I2 no
//! request enters port 1 outside `Direct` and nothing leaves port 2 before port 1 drained and
//! the device was released, I3 port 2 sees requests in submission order.
#![cfg(not(loom))]

use baton_core::redirector::{Dispatch, Op, Port, RedirectError, Redirector, Route, State, Ticket};
use proptest::prelude::*;
use std::collections::VecDeque;

const N: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Action {
    Submit,
    CompleteP1(usize),
    CompleteP2(usize),
    Dispatch,
    DirectSwitch,
    DeviceReleased,
    OpenPort2,
    BeginFailback,
    DeviceAttached,
    TakeBack,
    AbandonPort2,
    ResubmitPort1,
    /// Drop the releaser and take it again (its place in the queue must carry over).
    Retake,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => Just(Action::Submit),
        3 => any::<usize>().prop_map(Action::CompleteP1),
        3 => any::<usize>().prop_map(Action::CompleteP2),
        4 => Just(Action::Dispatch),
        1 => Just(Action::DirectSwitch),
        1 => Just(Action::DeviceReleased),
        1 => Just(Action::OpenPort2),
        1 => Just(Action::BeginFailback),
        1 => Just(Action::DeviceAttached),
        1 => Just(Action::TakeBack),
        1 => Just(Action::AbandonPort2),
        2 => Just(Action::ResubmitPort1),
        2 => Just(Action::Retake),
    ]
}

/// The sequential specification.
#[derive(Debug)]
struct Model {
    state: State,
    p1: Vec<u64>,
    p2: Vec<u64>,
    queue: VecDeque<(u16, u64)>,
    tail: u16,
    /// Requests abandoned at port 2, to be replayed on port 1 (oldest first).
    replay: VecDeque<u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            state: State::Direct,
            p1: vec![],
            p2: vec![],
            queue: VecDeque::new(),
            tail: 0,
            replay: VecDeque::new(),
        }
    }
}

/// What the harness observed, for the invariant checks.
#[derive(Debug, Default)]
struct Log {
    next_id: u64,
    completions: Vec<u32>,
    port2_order: Vec<u64>,
    /// Set by `device_released` in a switch, cleared by `device_attached`.
    released: bool,
}

struct Harness<'a> {
    real: &'a Redirector<N>,
    rel: Option<baton_core::redirector::Releaser<'a, N>>,
    model: Model,
    log: Log,
}

impl Harness<'_> {
    fn enter_port1(&mut self, id: u64) {
        // I2: port 1 is only used in Direct.
        assert_eq!(
            self.model.state,
            State::Direct,
            "request {id} entered port 1 in {:?}",
            self.model.state
        );
        self.model.p1.push(id);
    }

    fn enter_port2(&mut self, id: u64) {
        // I2: port 2 only after the drain and the release.
        assert_eq!(self.model.state, State::Forwarding);
        assert!(
            self.log.released,
            "port 2 used before the device was released"
        );
        // I3: submission order (ids are assigned in submission order).
        if let Some(&last) = self.log.port2_order.last() {
            assert!(id > last, "port 2 order broken: {id} after {last}");
        }
        self.log.port2_order.push(id);
        self.model.p2.push(id);
    }

    fn complete(&mut self, id: u64) {
        self.log.completions[id as usize] += 1;
    }

    fn transition(&mut self, op: Op, from: State, to: State) -> Result<State, RedirectError> {
        if self.model.state != from {
            return Err(RedirectError::WrongState {
                op,
                state: self.model.state,
            });
        }
        self.model.state = to;
        Ok(to)
    }

    fn step(&mut self, a: Action) {
        let m = &self.model;
        match a {
            Action::Submit => {
                let id = self.log.next_id;
                let got = self.real.submit(id);
                let expected = if m.state == State::Direct && m.queue.is_empty() {
                    Ok(Route::Port1)
                } else if m.queue.len() >= N - 1 {
                    Err(RedirectError::QueueFull)
                } else if m.state == State::Forwarding {
                    Ok(Route::Port2(Ticket(m.tail)))
                } else {
                    Ok(Route::Held(Ticket(m.tail)))
                };
                assert_eq!(got, expected);
                match got {
                    Ok(Route::Port1) => self.enter_port1(id),
                    Ok(Route::Held(t) | Route::Port2(t)) => {
                        self.model.queue.push_back((t.0, id));
                        self.model.tail = self.model.tail.wrapping_add(1);
                    }
                    Err(_) => return,
                }
                self.log.next_id += 1;
                self.log.completions.push(0);
            }
            Action::CompleteP1(i) => {
                let got = self.real.complete_port1();
                if m.p1.is_empty() {
                    assert_eq!(got, Err(RedirectError::NotInflight(Port::One)));
                    return;
                }
                let id = self.model.p1.swap_remove(i % m.p1.len());
                self.complete(id);
                let drained = self.model.state == State::Draining && self.model.p1.is_empty();
                if drained {
                    self.model.state = State::Drained;
                }
                assert_eq!(got, Ok(drained.then_some(State::Drained)));
            }
            Action::CompleteP2(i) => {
                let got = self.real.complete_port2();
                if m.p2.is_empty() {
                    assert_eq!(got, Err(RedirectError::NotInflight(Port::Two)));
                    return;
                }
                let id = self.model.p2.swap_remove(i % m.p2.len());
                self.complete(id);
                let drained =
                    self.model.state == State::FailbackDraining && self.model.p2.is_empty();
                if drained {
                    self.model.state = State::FailbackDrained;
                }
                assert_eq!(got, Ok(drained.then_some(State::FailbackDrained)));
            }
            Action::Dispatch => {
                let got = self.rel.as_mut().and_then(|r| r.dispatch());
                let port = match m.state {
                    State::Direct => Some(Port::One),
                    State::Forwarding => Some(Port::Two),
                    _ => None,
                };
                let expected = match (port, m.queue.front()) {
                    (Some(port), Some(&(t, token))) => Some(Dispatch {
                        port,
                        ticket: Ticket(t),
                        token,
                    }),
                    _ => None,
                };
                assert_eq!(got, expected);
                if let Some(d) = got {
                    self.model.queue.pop_front();
                    match d.port {
                        Port::One => self.enter_port1(d.token),
                        Port::Two => self.enter_port2(d.token),
                    }
                }
            }
            Action::DirectSwitch => {
                let to = if m.p1.is_empty() {
                    State::Drained
                } else {
                    State::Draining
                };
                let expected = self.transition(Op::DirectSwitch, State::Direct, to);
                assert_eq!(self.real.direct_switch(), expected);
            }
            Action::DeviceReleased => {
                let expected = self.transition(Op::DeviceReleased, State::Drained, State::Released);
                if expected.is_ok() {
                    assert!(self.model.p1.is_empty(), "released with port 1 busy");
                    self.log.released = true;
                }
                assert_eq!(self.real.device_released(), expected);
            }
            Action::OpenPort2 => {
                let expected = self.transition(Op::OpenPort2, State::Released, State::Forwarding);
                assert_eq!(self.real.open_port2(), expected);
            }
            Action::BeginFailback => {
                let to = if m.p2.is_empty() {
                    State::FailbackDrained
                } else {
                    State::FailbackDraining
                };
                let expected = self.transition(Op::BeginFailback, State::Forwarding, to);
                assert_eq!(self.real.begin_failback(), expected);
            }
            Action::DeviceAttached => {
                let expected =
                    self.transition(Op::DeviceAttached, State::FailbackDrained, State::Direct);
                if expected.is_ok() {
                    assert!(self.model.p2.is_empty(), "port 1 reopened with port 2 busy");
                    self.log.released = false;
                }
                assert_eq!(self.real.device_attached(), expected);
            }
            Action::TakeBack => {
                let expected = match m.state {
                    State::Draining | State::Drained => {
                        self.transition(Op::TakeBack, m.state, State::Direct)
                    }
                    State::Released => {
                        self.transition(Op::TakeBack, State::Released, State::FailbackDrained)
                    }
                    state => Err(RedirectError::WrongState {
                        op: Op::TakeBack,
                        state,
                    }),
                };
                if expected == Ok(State::Direct) {
                    // The device never left: port 1 is in use again.
                    self.log.released = false;
                }
                assert_eq!(self.real.take_back(), expected);
            }
            Action::AbandonPort2 => {
                let got = self.real.abandon_port2();
                match m.state {
                    State::Forwarding | State::FailbackDraining | State::FailbackDrained => {
                        let n = m.p2.len();
                        self.model.state = State::FailbackDrained;
                        let mut gone = std::mem::take(&mut self.model.p2);
                        gone.sort_unstable();
                        self.model.replay.extend(gone);
                        assert_eq!(got.map(usize::from), Ok(n));
                    }
                    state => assert_eq!(
                        got,
                        Err(RedirectError::WrongState {
                            op: Op::AbandonPort2,
                            state
                        })
                    ),
                }
            }
            Action::ResubmitPort1 => {
                // The caller replays only requests it abandoned.
                if m.replay.is_empty() {
                    return;
                }
                let got = self.real.resubmit_port1();
                if m.state == State::Direct {
                    assert_eq!(got, Ok(()));
                    if let Some(id) = self.model.replay.pop_front() {
                        self.enter_port1(id);
                    }
                } else {
                    assert_eq!(
                        got,
                        Err(RedirectError::WrongState {
                            op: Op::ResubmitPort1,
                            state: m.state
                        })
                    );
                }
            }
            Action::Retake => {
                assert!(self.real.releaser().is_none(), "two releasers at once");
                drop(self.rel.take());
                self.rel = self.real.releaser();
                assert!(self.rel.is_some(), "releaser not given back");
            }
        }
        let snap = self.real.snapshot();
        assert_eq!(snap.state, self.model.state);
        assert_eq!(usize::from(snap.port1_inflight), self.model.p1.len());
        assert_eq!(usize::from(snap.port2_inflight), self.model.p2.len());
        assert_eq!(usize::from(snap.queued), self.model.queue.len());
    }

    /// Completes everything and walks the state machine until nothing is queued or in flight.
    fn finish(&mut self) {
        for _ in 0..8 {
            while !self.model.replay.is_empty() && self.model.state == State::Direct {
                self.step(Action::ResubmitPort1);
            }
            while !self.model.queue.is_empty()
                && matches!(self.model.state, State::Direct | State::Forwarding)
            {
                self.step(Action::Dispatch);
            }
            while !self.model.p1.is_empty() {
                self.step(Action::CompleteP1(0));
            }
            while !self.model.p2.is_empty() {
                self.step(Action::CompleteP2(0));
            }
            if self.model.queue.is_empty()
                && self.model.replay.is_empty()
                && matches!(self.model.state, State::Direct | State::Forwarding)
            {
                return;
            }
            match self.model.state {
                State::Drained => self.step(Action::DeviceReleased),
                State::Released => self.step(Action::OpenPort2),
                State::FailbackDrained => self.step(Action::DeviceAttached),
                // Abandoned requests are replayed on port 1 only: fail back for them.
                State::Forwarding => self.step(Action::BeginFailback),
                _ => {}
            }
        }
        panic!("did not reach quiescence: {:?}", self.model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn redirector_matches_model(actions in proptest::collection::vec(action(), 0..300)) {
        let real = Redirector::<N>::new();
        let rel = real.releaser();
        let mut h = Harness { real: &real, rel, model: Model::new(), log: Log::default() };
        for a in actions {
            h.step(a);
        }
        h.finish();
        // I1: everything accepted was completed exactly once.
        for (id, &n) in h.log.completions.iter().enumerate() {
            prop_assert_eq!(n, 1, "request {} completed {} times", id, n);
        }
    }
}

/// A scripted run that crosses every state twice, with the queue wrapping.
#[test]
fn two_round_trips() {
    use Action::*;
    let real = Redirector::<N>::new();
    let rel = real.releaser();
    let mut h = Harness {
        real: &real,
        rel,
        model: Model::new(),
        log: Log::default(),
    };
    for _ in 0..2 {
        for a in [
            Submit,
            Submit,
            Submit,
            DirectSwitch,
            Submit,
            Submit,
            CompleteP1(1),
            Submit,
            CompleteP1(0),
            CompleteP1(0),
            DeviceReleased,
            Submit,
            OpenPort2,
            Submit,
            Dispatch,
            Dispatch,
            Submit,
            CompleteP2(0),
            Dispatch,
            BeginFailback,
            Submit,
            Dispatch,
            CompleteP2(0),
            CompleteP2(0),
            DeviceAttached,
            Submit,
            Dispatch,
            Dispatch,
            Dispatch,
            Dispatch,
            Dispatch,
            Submit,
        ] {
            h.step(a);
        }
        h.finish();
        assert_eq!(h.model.state, State::Direct);
    }
    h.finish();
    assert!(h.log.completions.iter().all(|&n| n == 1));
    assert_eq!(h.log.port2_order.len(), 6, "{:?}", h.log.port2_order);
}
