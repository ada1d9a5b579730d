//! The state transitions of the handoff and the completions that end a drain (see the state
//! diagram in the [module docs](super)).

#[cfg(doc)]
use super::Releaser;
use super::word::{DRAINING, FAILBACK_DRAINING, P1_ONE, P2_ONE, Word};
use super::{MAX_INFLIGHT, Op, Port, RedirectError, Redirector, State};

impl<const N: usize> Redirector<N> {
    /// Reports the completion of a port-1 request. Returns the new state if this completion
    /// finished the drain (`Draining` → `Drained`).
    #[inline]
    pub fn complete_port1(&self) -> Result<Option<State>, RedirectError> {
        self.update(|w| match w.p1() {
            0 => Err(RedirectError::NotInflight(Port::One)),
            1 if w.state_bits() == DRAINING => Ok((
                w.minus(P1_ONE).with_state(State::Drained),
                Some(State::Drained),
            )),
            _ => Ok((w.minus(P1_ONE), None)),
        })
    }

    /// Reports the completion of a port-2 request. Returns the new state if this completion
    /// finished the failback drain (`FailbackDraining` → `FailbackDrained`).
    #[inline]
    pub fn complete_port2(&self) -> Result<Option<State>, RedirectError> {
        self.update(|w| match w.p2() {
            0 => Err(RedirectError::NotInflight(Port::Two)),
            1 if w.state_bits() == FAILBACK_DRAINING => Ok((
                w.minus(P2_ONE).with_state(State::FailbackDrained),
                Some(State::FailbackDrained),
            )),
            _ => Ok((w.minus(P2_ONE), None)),
        })
    }

    fn transition(
        &self,
        op: Op,
        from: State,
        to: impl Fn(Word) -> State,
    ) -> Result<State, RedirectError> {
        self.update(|w| {
            if w.state() != from {
                return Err(RedirectError::WrongState {
                    op,
                    state: w.state(),
                });
            }
            let state = to(w);
            Ok((w.with_state(state), state))
        })
    }

    /// The save/migrate was directed: stop using port 1 (`Direct` → `Draining`, or straight to
    /// `Drained` if port 1 has nothing in flight). Returns the new state.
    pub fn direct_switch(&self) -> Result<State, RedirectError> {
        self.transition(Op::DirectSwitch, State::Direct, |w| {
            if w.p1() == 0 {
                State::Drained
            } else {
                State::Draining
            }
        })
    }

    /// The drained device was quiesced and handed back (`Drained` → `Released`).
    pub fn device_released(&self) -> Result<State, RedirectError> {
        self.transition(Op::DeviceReleased, State::Drained, |_| State::Released)
    }

    /// The ring to the peer is ready: start forwarding (`Released` → `Forwarding`).
    pub fn open_port2(&self) -> Result<State, RedirectError> {
        self.transition(Op::OpenPort2, State::Released, |_| State::Forwarding)
    }

    /// Failback was directed: stop using port 2 (`Forwarding` → `FailbackDraining`, or straight
    /// to `FailbackDrained` if port 2 has nothing in flight). Returns the new state.
    pub fn begin_failback(&self) -> Result<State, RedirectError> {
        self.transition(Op::BeginFailback, State::Forwarding, |w| {
            if w.p2() == 0 {
                State::FailbackDrained
            } else {
                State::FailbackDraining
            }
        })
    }

    /// The device is attached again (`FailbackDrained` → `Direct`); the [`Releaser`] then sends
    /// the held requests to port 1, in order, before any new request is routed there.
    pub fn device_attached(&self) -> Result<State, RedirectError> {
        self.transition(Op::DeviceAttached, State::FailbackDrained, |_| {
            State::Direct
        })
    }

    /// The handoff is taken back before port 2 opened (issue 9: the ring could not be set up,
    /// the peer could not take the disk, port 1 did not drain in time). `Draining` or `Drained`
    /// → `Direct`: the device never left, so the held requests go to port 1 through the
    /// [`Releaser`], in order, after those still in flight there (I2: port 1 is used only in
    /// `Direct`, and nothing ever reached port 2). `Released` → `FailbackDrained`: the device was
    /// released, so port 1 reopens only through [`device_attached`](Self::device_attached), as in
    /// a failback. Returns the new state.
    pub fn take_back(&self) -> Result<State, RedirectError> {
        self.update(|w| {
            let state = match w.state() {
                State::Draining | State::Drained => State::Direct,
                State::Released => State::FailbackDrained,
                state => {
                    return Err(RedirectError::WrongState {
                        op: Op::TakeBack,
                        state,
                    });
                }
            };
            Ok((w.with_state(state), state))
        })
    }

    /// The peer is gone (issue 9's emergency failback): port 2 will complete nothing more.
    /// `Forwarding` or `FailbackDraining` → `FailbackDrained`, forgetting port 2's in-flight
    /// count; the caller keeps those requests and replays them on port 1 with
    /// [`resubmit_port1`](Self::resubmit_port1) once the device is attached, before the releaser
    /// sends the held ones. In `FailbackDrained` it changes nothing. Returns how many requests
    /// port 2 had in flight.
    pub fn abandon_port2(&self) -> Result<u16, RedirectError> {
        self.update(|w| match w.state() {
            State::Forwarding | State::FailbackDraining | State::FailbackDrained => {
                Ok((w.without_p2().with_state(State::FailbackDrained), w.p2()))
            }
            state => Err(RedirectError::WrongState {
                op: Op::AbandonPort2,
                state,
            }),
        })
    }

    /// A request abandoned at port 2 is sent to port 1 again (the replay after
    /// [`abandon_port2`](Self::abandon_port2)): counted in flight at port 1. Only in `Direct`, so
    /// (I2) nothing reaches port 1 before the device is attached again.
    pub fn resubmit_port1(&self) -> Result<(), RedirectError> {
        self.update(|w| {
            if w.state() != State::Direct {
                return Err(RedirectError::WrongState {
                    op: Op::ResubmitPort1,
                    state: w.state(),
                });
            }
            if w.p1() >= MAX_INFLIGHT {
                return Err(RedirectError::TooManyInflight(Port::One));
            }
            Ok((w.plus(P1_ONE), ()))
        })
    }
}
