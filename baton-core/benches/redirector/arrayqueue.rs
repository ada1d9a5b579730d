//! The `arrayqueue` baseline: separate atomics for the state and the counts, crossbeam's
//! `ArrayQueue` for the held FIFO.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use baton_core::redirector::{MAX_INFLIGHT, State};
use crossbeam_queue::ArrayQueue;

use crate::{CAPACITY, Design, Fifo};

const S_DIRECT: u8 = 0;
const S_DRAINING: u8 = 1;
const S_DRAINED: u8 = 2;
const S_FORWARDING: u8 = 4;
const S_FAILBACK_DRAINING: u8 = 5;
const S_FAILBACK_DRAINED: u8 = 6;

// Aligned like `Baton`.
#[repr(align(128))]
pub(crate) struct AqDesign {
    state: AtomicU8,
    p1: AtomicU32,
    p2: AtomicU32,
    queue: ArrayQueue<u64>,
    releaser: AtomicBool,
}

impl AqDesign {
    /// Raises `count` if the state is still `want` afterwards (I2 without a shared word).
    #[inline]
    fn enter(&self, count: &AtomicU32, want: u8) -> bool {
        if count.fetch_add(1, Ordering::SeqCst) >= u32::from(MAX_INFLIGHT) {
            self.leave(count, want);
            return false;
        }
        if self.state.load(Ordering::SeqCst) != want {
            self.leave(count, want);
            return false;
        }
        true
    }

    /// Lowers `count`; the last one out of a draining port declares the drain.
    #[inline]
    fn leave(&self, count: &AtomicU32, port_state: u8) {
        let prev = count.fetch_sub(1, Ordering::SeqCst);
        assert!(prev > 0, "arrayqueue: completion with nothing in flight");
        if prev == 1 {
            let (draining, drained) = if port_state == S_DIRECT {
                (S_DRAINING, S_DRAINED)
            } else {
                (S_FAILBACK_DRAINING, S_FAILBACK_DRAINED)
            };
            if self.state.load(Ordering::SeqCst) == draining {
                let _ = self.state.compare_exchange(
                    draining,
                    drained,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
    }
}

impl Design for AqDesign {
    const NAME: &'static str = "arrayqueue";

    fn new_in(state: State) -> Box<Self> {
        Box::new(AqDesign {
            state: AtomicU8::new(if state == State::Forwarding {
                S_FORWARDING
            } else {
                S_DIRECT
            }),
            p1: AtomicU32::new(0),
            p2: AtomicU32::new(0),
            queue: ArrayQueue::new(CAPACITY),
            releaser: AtomicBool::new(false),
        })
    }

    #[inline]
    fn submit(&self, token: u64) -> Result<bool, ()> {
        if self.state.load(Ordering::SeqCst) == S_DIRECT
            && self.queue.is_empty()
            && self.enter(&self.p1, S_DIRECT)
        {
            return Ok(true);
        }
        self.queue.push(token).map_err(|_| ())?;
        Ok(false)
    }

    #[inline]
    fn complete_port1(&self) {
        self.leave(&self.p1, S_DIRECT);
    }

    #[inline]
    fn complete_port2(&self) {
        self.leave(&self.p2, S_FORWARDING);
    }

    #[inline]
    fn pump(&self) -> Option<u64> {
        self.pump_fifo()
    }

    fn counts(&self) -> (u32, u32, u32) {
        (
            self.p1.load(Ordering::SeqCst),
            self.p2.load(Ordering::SeqCst),
            self.queue.len() as u32,
        )
    }
}

impl Fifo for AqDesign {
    fn releaser_flag(&self) -> &AtomicBool {
        &self.releaser
    }

    #[inline]
    fn dispatch(&self) -> Option<(u64, bool)> {
        if self.queue.is_empty() {
            return None;
        }
        let (count, want, port2) = match self.state.load(Ordering::SeqCst) {
            S_DIRECT => (&self.p1, S_DIRECT, false),
            S_FORWARDING => (&self.p2, S_FORWARDING, true),
            _ => return None,
        };
        if !self.enter(count, want) {
            return None;
        }
        // Single consumer and not empty: `pop` returns the head (waiting out a push that took
        // its place but has not written it yet).
        match self.queue.pop() {
            Some(token) => Some((token, port2)),
            None => {
                self.leave(count, want);
                None
            }
        }
    }
}
