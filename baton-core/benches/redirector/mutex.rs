//! The `mutex` baseline: everything under one `std::sync::Mutex`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use baton_core::redirector::{MAX_INFLIGHT, State};

use crate::{CAPACITY, Design, Fifo};

struct MutexInner {
    state: State,
    p1: u16,
    p2: u16,
    /// The next ticket (kept for parity with `baton`, which hands one out per queued request).
    tail: u16,
    queue: VecDeque<u64>,
}

// Aligned like `Baton`.
#[repr(align(128))]
pub(crate) struct MutexDesign {
    inner: Mutex<MutexInner>,
    releaser: AtomicBool,
}

impl Design for MutexDesign {
    const NAME: &'static str = "mutex";

    fn new_in(state: State) -> Box<Self> {
        Box::new(MutexDesign {
            inner: Mutex::new(MutexInner {
                state,
                p1: 0,
                p2: 0,
                tail: 0,
                queue: VecDeque::with_capacity(CAPACITY),
            }),
            releaser: AtomicBool::new(false),
        })
    }

    #[inline]
    fn submit(&self, token: u64) -> Result<bool, ()> {
        let mut g = self.inner.lock().unwrap();
        if g.state == State::Direct && g.queue.is_empty() {
            if g.p1 >= MAX_INFLIGHT {
                return Err(());
            }
            g.p1 += 1;
            return Ok(true);
        }
        if g.queue.len() >= CAPACITY {
            return Err(());
        }
        g.queue.push_back(token);
        g.tail = black_box(g.tail.wrapping_add(1));
        Ok(false)
    }

    #[inline]
    fn complete_port1(&self) {
        let mut g = self.inner.lock().unwrap();
        g.p1 = g.p1.checked_sub(1).expect("port 1 not in flight");
        if g.state == State::Draining && g.p1 == 0 {
            g.state = State::Drained;
        }
    }

    #[inline]
    fn complete_port2(&self) {
        let mut g = self.inner.lock().unwrap();
        g.p2 = g.p2.checked_sub(1).expect("port 2 not in flight");
        if g.state == State::FailbackDraining && g.p2 == 0 {
            g.state = State::FailbackDrained;
        }
    }

    #[inline]
    fn pump(&self) -> Option<u64> {
        self.pump_fifo()
    }

    fn counts(&self) -> (u32, u32, u32) {
        let g = self.inner.lock().unwrap();
        (g.p1.into(), g.p2.into(), g.queue.len() as u32)
    }
}

impl Fifo for MutexDesign {
    fn releaser_flag(&self) -> &AtomicBool {
        &self.releaser
    }

    #[inline]
    fn dispatch(&self) -> Option<(u64, bool)> {
        let mut g = self.inner.lock().unwrap();
        if g.queue.is_empty() {
            return None;
        }
        let port2 = match g.state {
            State::Direct if g.p1 < MAX_INFLIGHT => {
                g.p1 += 1;
                false
            }
            State::Forwarding if g.p2 < MAX_INFLIGHT => {
                g.p2 += 1;
                true
            }
            _ => return None,
        };
        let token = g.queue.pop_front()?;
        Some((token, port2))
    }
}
