//! Where a request goes: the two [`Port`]s, a queued request's [`Ticket`], the [`Route`] that
//! [`Redirector::submit`] decides and the [`Dispatch`] the [`Releaser`] hands out.

#[cfg(doc)]
use super::{Redirector, Releaser};

/// One of the two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Port 1: the directly assigned device.
    One,
    /// Port 2: the shared-memory ring to the peer guest.
    Two,
}

/// A queued request's place in line. Tickets are consecutive in submission order and wrap at
/// 2^16; the releaser hands requests out in ticket order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub u16);

/// Where [`Redirector::submit`] sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Submit it to port 1 now; report its completion with [`Redirector::complete_port1`].
    Port1,
    /// Queued: it is dispatched by the [`Releaser`] once a port is open.
    Held(Ticket),
    /// Queued, and port 2 is open: the [`Releaser`] dispatches it to port 2 in order.
    Port2(Ticket),
}

/// A queued request handed out by [`Releaser::dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    /// Send it here now; report its completion with [`Redirector::complete_port1`] or
    /// [`Redirector::complete_port2`].
    pub port: Port,
    /// Its ticket.
    pub ticket: Ticket,
    /// The token given to [`Redirector::submit`].
    pub token: u64,
}
