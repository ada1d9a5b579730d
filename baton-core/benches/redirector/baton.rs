//! The `baton` design: the redirector under test, as shipped.

use std::hint::black_box;

use baton_core::redirector::{Port, Redirector, Route, State};

use crate::{Design, SLOTS};

// Aligned to 128 bytes (an adjacent-line pair), so that placement is the same from run to run
// and no design shares a line with another allocation.
#[repr(align(128))]
pub(crate) struct Baton {
    r: Redirector<SLOTS>,
}

impl Design for Baton {
    const NAME: &'static str = "baton";

    fn new_in(state: State) -> Box<Self> {
        let b = Box::new(Baton {
            r: Redirector::new(),
        });
        if state == State::Forwarding {
            b.r.direct_switch().unwrap();
            b.r.device_released().unwrap();
            b.r.open_port2().unwrap();
        }
        b
    }

    #[inline]
    fn submit(&self, token: u64) -> Result<bool, ()> {
        match self.r.submit(token) {
            Ok(Route::Port1) => Ok(true),
            Ok(Route::Held(_) | Route::Port2(_)) => Ok(false),
            Err(_) => Err(()),
        }
    }

    #[inline]
    fn complete_port1(&self) {
        self.r.complete_port1().unwrap();
    }

    #[inline]
    fn complete_port2(&self) {
        self.r.complete_port2().unwrap();
    }

    #[inline]
    fn pump(&self) -> Option<u64> {
        let mut rel = self.r.releaser()?;
        let mut n = 0;
        while let Some(d) = rel.dispatch() {
            assert_eq!(d.port, Port::Two);
            black_box(d.token);
            self.r.complete_port2().unwrap();
            n += 1;
        }
        Some(n)
    }

    fn counts(&self) -> (u32, u32, u32) {
        let s = self.r.snapshot();
        (
            s.port1_inflight.into(),
            s.port2_inflight.into(),
            s.queued.into(),
        )
    }
}
