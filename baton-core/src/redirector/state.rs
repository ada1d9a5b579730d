//! The redirector's [`State`], the transitions that change it ([`Op`]), why one is refused
//! ([`RedirectError`]) and a consistent view of the counters ([`Snapshot`]).

use super::Port;
#[cfg(doc)]
use super::{MAX_INFLIGHT, Redirector};

/// The redirector's state (see the module documentation for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests go to port 1 (the device).
    Direct,
    /// A switch was directed: new requests are held; port 1 still has requests in flight.
    Draining,
    /// Port 1 has drained; the device can be released.
    Drained,
    /// The device was released; waiting for port 2 to open.
    Released,
    /// Requests go to port 2 (the ring), in submission order.
    Forwarding,
    /// A failback was directed: new requests are held; port 2 still has requests in flight.
    FailbackDraining,
    /// Port 2 has drained; waiting for the device to be attached again.
    FailbackDrained,
}

/// The state-changing operations, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Redirector::direct_switch`]
    DirectSwitch,
    /// [`Redirector::device_released`]
    DeviceReleased,
    /// [`Redirector::open_port2`]
    OpenPort2,
    /// [`Redirector::begin_failback`]
    BeginFailback,
    /// [`Redirector::device_attached`]
    DeviceAttached,
    /// [`Redirector::abandon_port2`]
    AbandonPort2,
    /// [`Redirector::resubmit_port1`]
    ResubmitPort1,
    /// [`Redirector::take_back`]
    TakeBack,
}

/// Why a redirector operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectError {
    /// The operation is not valid in the current state.
    WrongState {
        /// What was attempted.
        op: Op,
        /// The state it was attempted in.
        state: State,
    },
    /// The queue is full (it holds `N - 1` requests).
    QueueFull,
    /// A port already has [`MAX_INFLIGHT`] requests in flight.
    TooManyInflight(Port),
    /// A completion was reported for a port with nothing in flight.
    NotInflight(Port),
}

impl core::fmt::Display for RedirectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RedirectError::WrongState { op, state } => {
                write!(f, "redirector: {op:?} not allowed in state {state:?}")
            }
            RedirectError::QueueFull => f.write_str("redirector: queue full"),
            RedirectError::TooManyInflight(p) => {
                write!(f, "redirector: too many requests in flight on port {p:?}")
            }
            RedirectError::NotInflight(p) => {
                write!(
                    f,
                    "redirector: completion on port {p:?} with nothing in flight"
                )
            }
        }
    }
}

/// A consistent view of the redirector's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Current state.
    pub state: State,
    /// Requests routed or dispatched to port 1 and not yet completed.
    pub port1_inflight: u16,
    /// Requests dispatched to port 2 and not yet completed.
    pub port2_inflight: u16,
    /// Requests queued and not yet dispatched.
    pub queued: u16,
}
