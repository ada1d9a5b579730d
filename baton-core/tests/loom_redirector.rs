//! Loom model checks of the port redirector (see the `redirector` module docs for the list).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p baton-core --release --test loom_redirector`.
//!
//! The "seen" flags use a simple argument: a request routed/dispatched to a port keeps that
//! port's in-flight count above zero until its own completion, so the port's drain can never be
//! observed between the routing and the completion. A thread that got a port therefore asserts
//! that nobody has yet seen the drain complete.
#![cfg(loom)]
// A model fails by panicking: `unwrap` and `expect` are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::redirector::{Dispatch, Port, Redirector, Route, State, Ticket};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Drains everything the releaser can give now.
fn dispatch_all<const N: usize>(r: &Redirector<N>) -> Vec<Dispatch> {
    let mut rel = r.releaser().expect("releaser free");
    std::iter::from_fn(|| rel.dispatch()).collect()
}

/// Two submitters, a switcher and a completer racing `direct_switch`.
#[test]
fn switch_while_submitting() {
    model(|| {
        let r = Arc::new(Redirector::<4>::new());
        let drained = Arc::new(AtomicBool::new(false));
        // One request already in flight on port 1, completed by the completer thread.
        assert_eq!(r.submit(100), Ok(Route::Port1));

        let submitter = |token: u64| {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || match r.submit(token).unwrap() {
                Route::Port1 => {
                    // I2: the drain cannot have completed while this request is on port 1.
                    assert!(!drained.load(SeqCst), "port 1 used after the drain");
                    if r.complete_port1().unwrap() == Some(State::Drained) {
                        drained.store(true, SeqCst);
                    }
                    None
                }
                Route::Held(t) => Some(t),
                Route::Port2(_) => panic!("port 2 is not open"),
            })
        };
        let a = submitter(1);
        let b = submitter(2);
        let switcher = {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || {
                if r.direct_switch().unwrap() == State::Drained {
                    drained.store(true, SeqCst);
                }
            })
        };
        let completer = {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || {
                if r.complete_port1().unwrap() == Some(State::Drained) {
                    drained.store(true, SeqCst);
                }
            })
        };
        let held: Vec<(Ticket, u64)> = [(a.join().unwrap(), 1), (b.join().unwrap(), 2)]
            .into_iter()
            .filter_map(|(t, token)| t.map(|t| (t, token)))
            .collect();
        switcher.join().unwrap();
        completer.join().unwrap();

        assert!(drained.load(SeqCst));
        assert_eq!(r.state(), State::Drained);
        assert_eq!(r.snapshot().port1_inflight, 0);
        // Nothing leaves before the release and the opening.
        assert!(dispatch_all(&r).is_empty());
        r.device_released().unwrap();
        assert!(dispatch_all(&r).is_empty());
        r.open_port2().unwrap();
        let out = dispatch_all(&r);
        // I1 + I3: each held request exactly once, on port 2, in ticket order.
        let mut expected = held.clone();
        expected.sort_by_key(|&(t, _)| t.0);
        let got: Vec<(Ticket, u64)> = out.iter().map(|d| (d.ticket, d.token)).collect();
        assert_eq!(got, expected);
        assert!(out.iter().all(|d| d.port == Port::Two));
        for (i, d) in out.iter().enumerate() {
            assert_eq!(d.ticket, Ticket(i as u16));
        }
    });
}

/// Submitters racing the releaser and `open_port2`, with a request already held.
#[test]
fn open_while_submitting() {
    model(|| {
        let r = Arc::new(Redirector::<8>::new());
        r.direct_switch().unwrap();
        assert_eq!(r.submit(0), Ok(Route::Held(Ticket(0))));
        r.device_released().unwrap();

        let a = {
            let r = r.clone();
            thread::spawn(move || {
                r.submit(1).unwrap();
                r.submit(2).unwrap();
            })
        };
        let b = {
            let r = r.clone();
            thread::spawn(move || {
                r.submit(3).unwrap();
            })
        };
        let opener = {
            let r = r.clone();
            thread::spawn(move || assert_eq!(r.open_port2(), Ok(State::Forwarding)))
        };
        let releaser = {
            let r = r.clone();
            thread::spawn(move || {
                let mut rel = r.releaser().unwrap();
                let mut out = Vec::new();
                for _ in 0..2 {
                    if let Some(d) = rel.dispatch() {
                        // I2: only once port 2 is open.
                        assert_eq!(r.state(), State::Forwarding);
                        out.push(d);
                    }
                }
                out
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        opener.join().unwrap();
        let mut out = releaser.join().unwrap();
        out.extend(dispatch_all(&r));

        let tokens: Vec<u64> = out.iter().map(|d| d.token).collect();
        assert_eq!(tokens.len(), 4, "{tokens:?}");
        assert_eq!(tokens[0], 0, "the held request goes first");
        let pos = |t| tokens.iter().position(|&x| x == t).unwrap();
        assert!(
            pos(1) < pos(2),
            "a submitter's order was broken: {tokens:?}"
        );
        assert!(pos(3) > 0);
        for (i, d) in out.iter().enumerate() {
            assert_eq!(d.ticket, Ticket(i as u16));
            assert_eq!(d.port, Port::Two);
        }
        assert_eq!(r.snapshot().port2_inflight, 4);
        assert_eq!(r.snapshot().queued, 0);
    });
}

/// A failback: a submitter, `begin_failback`, the port-2 completer and the releaser.
#[test]
fn failback_while_forwarding() {
    model(|| {
        let r = Arc::new(Redirector::<4>::new());
        r.direct_switch().unwrap();
        r.device_released().unwrap();
        r.open_port2().unwrap();
        r.submit(10).unwrap();
        r.submit(11).unwrap();
        r.submit(12).unwrap();
        {
            let mut rel = r.releaser().unwrap();
            assert_eq!(rel.dispatch().unwrap().token, 10);
            assert_eq!(rel.dispatch().unwrap().token, 11);
        }
        let drained = Arc::new(AtomicBool::new(false));

        let submitter = {
            let r = r.clone();
            thread::spawn(move || {
                assert!(matches!(
                    r.submit(13).unwrap(),
                    Route::Held(_) | Route::Port2(_)
                ))
            })
        };
        let failback = {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || {
                if r.begin_failback().unwrap() == State::FailbackDrained {
                    drained.store(true, SeqCst);
                }
            })
        };
        let completer = {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    if r.complete_port2().unwrap() == Some(State::FailbackDrained) {
                        drained.store(true, SeqCst);
                    }
                }
            })
        };
        let releaser = {
            let (r, drained) = (r.clone(), drained.clone());
            thread::spawn(move || {
                let d = r.releaser().unwrap().dispatch();
                if let Some(d) = d {
                    assert_eq!(d.port, Port::Two);
                    // I2: port 2 cannot have drained while this request is on it.
                    assert!(!drained.load(SeqCst), "port 2 used after its drain");
                    if r.complete_port2().unwrap() == Some(State::FailbackDrained) {
                        drained.store(true, SeqCst);
                    }
                }
                d
            })
        };
        submitter.join().unwrap();
        failback.join().unwrap();
        completer.join().unwrap();
        let first = releaser.join().unwrap();

        assert!(drained.load(SeqCst));
        assert_eq!(r.state(), State::FailbackDrained);
        assert!(dispatch_all(&r).is_empty());
        r.device_attached().unwrap();
        let rest = dispatch_all(&r);
        assert!(rest.iter().all(|d| d.port == Port::One));
        let tokens: Vec<u64> = first.iter().chain(rest.iter()).map(|d| d.token).collect();
        assert_eq!(tokens, [12, 13]);
        assert_eq!(r.submit(14), Ok(Route::Port1));
    });
}

/// A two-slot queue (capacity 1) wrapping under a concurrent submitter and releaser.
#[test]
fn queue_wraps() {
    model(|| {
        let r = Arc::new(Redirector::<2>::new());
        r.direct_switch().unwrap();
        r.device_released().unwrap();
        r.open_port2().unwrap();
        let submitter = {
            let r = r.clone();
            thread::spawn(move || {
                (1..=3u64)
                    .filter(|&t| r.submit(t).is_ok())
                    .collect::<Vec<_>>()
            })
        };
        let releaser = {
            let r = r.clone();
            thread::spawn(move || {
                let mut rel = r.releaser().unwrap();
                (0..3).filter_map(|_| rel.dispatch()).collect::<Vec<_>>()
            })
        };
        let accepted = submitter.join().unwrap();
        let mut out = releaser.join().unwrap();
        out.extend(dispatch_all(&r));
        let tokens: Vec<u64> = out.iter().map(|d| d.token).collect();
        assert_eq!(tokens, accepted);
        for (i, d) in out.iter().enumerate() {
            assert_eq!(d.ticket, Ticket(i as u16));
        }
    });
}

/// Two submitters that pump as the guest's stack does (submit, then take the releaser if it is
/// free, dispatch what is ready, give it back): the releaser passes between threads and the
/// queue's head must carry over with it.
#[test]
fn releaser_passes_between_submitters() {
    model(|| {
        let r = Arc::new(Redirector::<4>::new());
        r.direct_switch().unwrap();
        r.device_released().unwrap();
        r.open_port2().unwrap();
        let pumper = |token: u64| {
            let r = r.clone();
            thread::spawn(move || {
                let Ok(Route::Port2(t)) = r.submit(token) else {
                    panic!("port 2 is open")
                };
                let out: Vec<Dispatch> = match r.releaser() {
                    Some(mut rel) => std::iter::from_fn(|| rel.dispatch()).collect(),
                    None => Vec::new(),
                };
                ((t, token), out)
            })
        };
        let a = pumper(1);
        let b = pumper(2);
        let (sub_a, out_a) = a.join().unwrap();
        let (sub_b, out_b) = b.join().unwrap();
        let rest = dispatch_all(&r);
        // Each holder dispatched in ticket order; together with the rest, every ticket once,
        // each with the token it was submitted with.
        for out in [&out_a, &out_b] {
            assert!(out.windows(2).all(|w| w[0].ticket.0 < w[1].ticket.0));
        }
        let mut all: Vec<(Ticket, u64)> = out_a
            .iter()
            .chain(&out_b)
            .chain(&rest)
            .map(|d| (d.ticket, d.token))
            .collect();
        all.sort_by_key(|&(t, _)| t.0);
        let mut expected = vec![sub_a, sub_b];
        expected.sort_by_key(|&(t, _)| t.0);
        assert_eq!(all, expected);
        assert_eq!(expected[0].0, Ticket(0));
        assert_eq!(expected[1].0, Ticket(1));
        let s = r.snapshot();
        assert_eq!((s.port2_inflight, s.queued), (2, 0));
    });
}
