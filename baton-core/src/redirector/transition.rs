//! The state transitions of the handoff and the completions that end a drain (see the state
//! diagram in the [module docs](super)).

#[cfg(doc)]
use super::Releaser;
use super::word::Word;
use super::{MAX_INFLIGHT, Op, Port, RedirectError, Redirector, State};

impl<const N: usize> Redirector<N> {
    /// Reports the completion of a port-1 request. Returns the new state if this completion
    /// finished the drain (`Draining` → `Drained`).
    pub fn complete_port1(&self) -> Result<Option<State>, RedirectError> {
        self.update(|mut w| {
            w.p1 =
                w.p1.checked_sub(1)
                    .ok_or(RedirectError::NotInflight(Port::One))?;
            if w.state == State::Draining && w.p1 == 0 {
                w.state = State::Drained;
                return Ok((w, Some(State::Drained)));
            }
            Ok((w, None))
        })
    }

    /// Reports the completion of a port-2 request. Returns the new state if this completion
    /// finished the failback drain (`FailbackDraining` → `FailbackDrained`).
    pub fn complete_port2(&self) -> Result<Option<State>, RedirectError> {
        self.update(|mut w| {
            w.p2 =
                w.p2.checked_sub(1)
                    .ok_or(RedirectError::NotInflight(Port::Two))?;
            if w.state == State::FailbackDraining && w.p2 == 0 {
                w.state = State::FailbackDrained;
                return Ok((w, Some(State::FailbackDrained)));
            }
            Ok((w, None))
        })
    }

    fn transition(
        &self,
        op: Op,
        from: State,
        to: impl Fn(Word) -> State,
    ) -> Result<State, RedirectError> {
        self.update(|mut w| {
            if w.state != from {
                return Err(RedirectError::WrongState { op, state: w.state });
            }
            w.state = to(w);
            Ok((w, w.state))
        })
    }

    /// The save/migrate was directed: stop using port 1 (`Direct` → `Draining`, or straight to
    /// `Drained` if port 1 has nothing in flight). Returns the new state.
    pub fn direct_switch(&self) -> Result<State, RedirectError> {
        self.transition(Op::DirectSwitch, State::Direct, |w| {
            if w.p1 == 0 {
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
            if w.p2 == 0 {
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
        self.update(|mut w| {
            w.state = match w.state {
                State::Draining | State::Drained => State::Direct,
                State::Released => State::FailbackDrained,
                state => {
                    return Err(RedirectError::WrongState {
                        op: Op::TakeBack,
                        state,
                    });
                }
            };
            Ok((w, w.state))
        })
    }

    /// The peer is gone (issue 9's emergency failback): port 2 will complete nothing more.
    /// `Forwarding` or `FailbackDraining` → `FailbackDrained`, forgetting port 2's in-flight
    /// count; the caller keeps those requests and replays them on port 1 with
    /// [`resubmit_port1`](Self::resubmit_port1) once the device is attached, before the releaser
    /// sends the held ones. In `FailbackDrained` it changes nothing. Returns how many requests
    /// port 2 had in flight.
    pub fn abandon_port2(&self) -> Result<u16, RedirectError> {
        self.update(|mut w| match w.state {
            State::Forwarding | State::FailbackDraining | State::FailbackDrained => {
                let abandoned = w.p2;
                w.p2 = 0;
                w.state = State::FailbackDrained;
                Ok((w, abandoned))
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
        self.update(|mut w| {
            if w.state != State::Direct {
                return Err(RedirectError::WrongState {
                    op: Op::ResubmitPort1,
                    state: w.state,
                });
            }
            if w.p1 >= MAX_INFLIGHT {
                return Err(RedirectError::TooManyInflight(Port::One));
            }
            w.p1 += 1;
            Ok((w, ()))
        })
    }
}
