//! The queue's single consumer: [`Releaser`], taken with [`Redirector::releaser`].

#[cfg(doc)]
use super::MAX_INFLIGHT;
use super::word::{DIRECT, FORWARDING, P1_ONE, P2_ONE, QUEUED_ONE, check_inflight};
use super::{Dispatch, Port, Redirector, Ticket};
use crate::sync::Ordering;

impl<const N: usize> Redirector<N> {
    /// Takes the releaser, the single consumer of the queue. `None` while another one exists.
    pub fn releaser(&self) -> Option<Releaser<'_, N>> {
        // A plain load first: a taken releaser is the common case under contention, and a failed
        // CAS would still pull the line in exclusive mode.
        if self.releaser_taken.load(Ordering::Relaxed) {
            return None;
        }
        self.releaser_taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // Only the releaser writes `head`; the previous holder's write is ordered before this
        // load by `releaser_taken` (Release in its drop, Acquire above).
        let head = self.head.load(Ordering::Relaxed) as u16;
        Some(Releaser {
            redirector: self,
            head,
        })
    }
}

/// The queue's single consumer: dispatches queued requests, in ticket order, to the open port.
///
/// Only one exists per [`Redirector`] at a time (dropping it allows taking another), so
/// dispatch order is the order in which the holder forwards: it must forward each
/// [`Dispatch`] before asking for the next.
pub struct Releaser<'a, const N: usize> {
    redirector: &'a Redirector<N>,
    /// The next ticket to dispatch: the redirector's `head`, kept here while the releaser is
    /// held and written back when it is dropped.
    head: u16,
}

impl<const N: usize> core::fmt::Debug for Releaser<'_, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Releaser").finish_non_exhaustive()
    }
}

impl<const N: usize> Releaser<'_, N> {
    /// The next queued request, if one can go out now: the state is `Forwarding` (it goes to
    /// port 2) or `Direct` (port 1), and the next ticket's request has been published.
    ///
    /// `None` when no port is open, the queue is empty, the next submitter is between taking
    /// its ticket and publishing it (retry on the next poll), or the port already has
    /// [`MAX_INFLIGHT`] requests in flight. Never blocks.
    #[inline]
    pub fn dispatch(&mut self) -> Option<Dispatch> {
        let r = self.redirector;
        let head = self.head;
        let slot = r.slot(head);
        if slot.stamp.load(Ordering::Acquire) != Redirector::<N>::free_stamp(head) + 1 {
            return None;
        }
        let token = slot.token.load(Ordering::Relaxed);
        let port = r
            .update(|w| {
                let (port, one, count) = match w.state_bits() {
                    DIRECT => (Port::One, P1_ONE, w.p1()),
                    FORWARDING => (Port::Two, P2_ONE, w.p2()),
                    // No port is open: refused, nothing is written.
                    _ => return Err(()),
                };
                check_inflight(count, port).map_err(|_| ())?;
                // A published slot is counted in `queued`; checked all the same, so that a
                // broken count refuses instead of borrowing from the tail.
                if w.queued() == 0 {
                    return Err(());
                }
                Ok((w.plus(one).minus(QUEUED_ONE), port))
            })
            .ok()?;
        // Free the slot for the ticket one lap later, then move on.
        slot.stamp.store(
            Redirector::<N>::free_stamp(head.wrapping_add(N as u16)),
            Ordering::Release,
        );
        self.head = head.wrapping_add(1);
        Some(Dispatch {
            port,
            ticket: Ticket(head),
            token,
        })
    }

    /// The redirector this releaser belongs to.
    #[must_use]
    pub fn redirector(&self) -> &Redirector<N> {
        self.redirector
    }
}

impl<const N: usize> Drop for Releaser<'_, N> {
    fn drop(&mut self) {
        let r = self.redirector;
        r.head.store(u32::from(self.head), Ordering::Relaxed);
        r.releaser_taken.store(false, Ordering::Release);
    }
}
