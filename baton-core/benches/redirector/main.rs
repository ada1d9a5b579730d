//! Host benchmark of the port redirector ([`baton_core::redirector`]) against two baseline
//! designs of the same job, at 1, 2 and 4 threads (issue 4: "redirector ≥ 3× the Mutex design
//! at 4 threads").
//!
//! # The three designs
//!
//! - **`baton`**: `Redirector<256>` as shipped: state, both in-flight counts, the queued count and
//!   the next ticket packed in one `AtomicU64` updated by CAS loops, plus a bounded array of
//!   stamped slots (Vyukov style) for the held FIFO and an `AtomicBool` that makes the
//!   [`Releaser`](baton_core::redirector::Releaser) the single consumer.
//! - **`mutex`**: one `std::sync::Mutex` around the state, the in-flight counts, the next ticket
//!   and a `VecDeque<u64>` (the held FIFO, preallocated for 255 entries); every operation takes
//!   the lock once. The single-consumer role is an `AtomicBool`, as in `baton`.
//! - **`arrayqueue`**: the state and the two in-flight counts as separate atomics and a
//!   `crossbeam_queue::ArrayQueue<u64>` (capacity 255) as the held FIFO; the single-consumer role
//!   is again an `AtomicBool`. To keep I2 (nothing reaches a port that is not open) without a
//!   shared word, the in-flight count is raised *before* the state is rechecked (Dekker style,
//!   `SeqCst`) and lowered again if the recheck fails, the same way `direct_switch` and the last
//!   completion race to declare the drain. It is a plausible design, not a verified one (it
//!   hands out no tickets and is not loom-checked); it is here for its cost.
//!
//! Each design implements the operations the measured paths use with the same checks as
//! `baton` (state, capacity, the `MAX_INFLIGHT` bound, underflow on completion, the
//! `Draining → Drained` / `FailbackDraining → FailbackDrained` step on the last completion);
//! transitions are used only to set the state up before a case starts.
//!
//! # What is measured
//!
//! A *run* of a case gives each of `T` threads its share of `R` requests, releases the threads
//! together from a barrier and takes the wall time from the first thread's start to the last
//! thread's end (thread start-up is outside it). Every figure is **ns per request = wall time /
//! R**, R counting the requests of all threads: the inverse of aggregate throughput, lower is
//! better, comparable across thread counts.
//!
//! - **direct** (state `Direct`): each request is `submit` (must route to port 1), then
//!   `complete_port1`. `baton`: two CAS on the state word; `mutex`: two lock/unlock pairs;
//!   `arrayqueue`: a `fetch_add`, a `fetch_sub` and a few loads.
//! - **forwarding** (state `Forwarding`): each request is `submit` (queued, port 2 open), then
//!   what the guest's stack (`kernel/src/stack.rs`, `dispatch_queued`) does after a submit: try
//!   to take the releaser without waiting; if it was free, call `dispatch` until it returns
//!   nothing, completing each dispatched request at port 2 at once (port 2 is modelled as
//!   completing instantly), then give the releaser back. A thread that finds the releaser taken
//!   goes on: the holder, or the next thread to take it, dispatches its request. So per request
//!   every design does one submit, one successful dispatch and one `complete_port2`, plus its
//!   share of the releaser take/release and of the last, empty `dispatch` of each pump (`baton`:
//!   one load of a slot stamp; `arrayqueue`: `is_empty`; `mutex`: a lock/unlock). A submit
//!   refused because the queue is full (its 255 places taken while the releaser's holder is
//!   preempted) helps pump and yields the CPU, then retries. Requests still queued when the
//!   threads end (a few at most) are dispatched after the timed region; every run checks that
//!   each request was dispatched once and that all counters are back to 0.
//!
//! **Criterion** times each (path, design, threads) case as usual, one criterion iteration being
//! one request: `iter_custom(iters)` runs `max(iters, 100_000)` requests and scales the wall
//! time back to `iters` (a run of a handful of requests would measure how far apart the threads
//! woke up).
//!
//! **The summary** (printed after criterion's report, and the JSON) comes from a separate
//! *paired pass*: 25 rounds, each running every case once with 100,000 requests, the three
//! designs of a case back to back in an order that rotates each round. Other load on the
//! machine then hits the three designs alike, and `vs_mutex` — the median over the rounds of
//! `mutex ns / design ns` within a round (above 1: faster than the Mutex design) — compares
//! runs made milliseconds apart. `ns/request` is the median over the rounds, `fastest` the
//! best round; for forwarding, `busy/1k` counts pumps that found the releaser taken and
//! `full/1k` submits refused for a full queue, per 1000 requests. The summary's first line
//! gives the CPU count and model and the load average before and after the run.
//!
//! # Running it
//!
//! `cargo bench -p baton-core --bench redirector`: about 80 s (18 criterion cases of 1 s
//! warm-up and 3 s measurement, then the paired pass). `BATON_BENCH_QUICK=1`: about 6 s
//! (0.1 s + 0.2 s per case, runs of at least 20,000 requests, 7 paired rounds), for smoke
//! checks. `BATON_BENCH_JSON=FILE` also writes the summary to FILE:
//! `{"threads": [1,2,4], "results": [{"design": "baton"|"mutex"|"arrayqueue", "path":
//! "direct"|"forwarding", "threads": n, "ns_per_request": f64}], "ratio_vs_mutex_4_threads":
//! {"direct": f64, "forwarding": f64}}`, the ratios being `baton`'s `vs_mutex` at 4 threads.
//! Criterion's usual arguments work (`-- direct/` runs the direct cases only; the paired pass
//! always runs all). On a shared machine, `nice -n -20` keeps other processes from taking the
//! CPUs mid-run.
//!
//! With fewer CPUs than threads (the 2-CPU development VM), the 4-thread cases oversubscribe
//! them: threads are time-sliced, and one preempted while it holds a lock or the releaser
//! stalls the others (that is what `busy/1k` and `full/1k` show); the summary says so.
//!
//! # Files
//!
//! `main.rs` (this file: the [`Design`] every candidate implements and criterion's entry point),
//! `baton.rs`, `mutex.rs` and `arrayqueue.rs` (the three designs), `harness.rs` (one timed run of
//! a case) and `summary.rs` (the paired pass, its table and JSON).
// A bench fails by panicking when its books do not balance: `unwrap` and `expect` are its
// assertions (the workspace denies them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod arrayqueue;
mod baton;
mod harness;
mod mutex;
mod summary;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_core::redirector::State;
use criterion::{Criterion, Throughput};

use arrayqueue::AqDesign;
use baton::Baton;
use harness::{bench_design, benchmarking, loadavg, quick};
use mutex::MutexDesign;
use summary::summarize;

/// Queue slots of the `baton` design; the baselines hold the same `SLOTS - 1` requests.
const SLOTS: usize = 256;
const CAPACITY: usize = SLOTS - 1;
const THREADS: [usize; 3] = [1, 2, 4];
const DESIGNS: [&str; 3] = ["mutex", "arrayqueue", "baton"];
const PATHS: [Path; 2] = [Path::Direct, Path::Forwarding];
/// The fewest requests one sample runs (criterion's iteration counts below it are scaled).
const MIN_REQUESTS: u64 = 100_000;
const MIN_REQUESTS_QUICK: u64 = 20_000;
/// Rounds of the paired pass behind the summary (each runs every case with `min_requests()`).
const PAIRED_ROUNDS: usize = 25;
const PAIRED_ROUNDS_QUICK: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Direct,
    Forwarding,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Forwarding => "forwarding",
        }
    }
}

/// The operations a measured path needs, implemented by each design.
trait Design: Sync + Sized {
    const NAME: &'static str;
    /// A redirector in `state` (`Direct` or `Forwarding`), nothing in flight or queued.
    fn new_in(state: State) -> Box<Self>;
    /// `submit`: `Ok(true)` for port 1, `Ok(false)` for queued; `Err(())` when the queue is full.
    fn submit(&self, token: u64) -> Result<bool, ()>;
    fn complete_port1(&self);
    fn complete_port2(&self);
    /// What the guest's stack does after a submit: if the releaser is free, take it, dispatch
    /// every request that is ready (completing each at port 2 at once), give it back. Returns
    /// how many requests it dispatched, `None` if the releaser was taken.
    fn pump(&self) -> Option<u64>;
    /// (port 1 in flight, port 2 in flight, queued).
    fn counts(&self) -> (u32, u32, u32);

    /// One request on the direct path.
    #[inline]
    fn direct_request(&self, token: u64) {
        let port1 = self.submit(token);
        assert_eq!(
            port1,
            Ok(true),
            "{}: direct submit not routed to port 1",
            Self::NAME
        );
        self.complete_port1();
    }

    /// One request on the forwarding path.
    #[inline]
    fn forwarding_request(&self, token: u64, stats: &mut Stats) {
        loop {
            match self.submit(token) {
                Ok(false) => break,
                Ok(true) => panic!("{}: forwarding submit routed to port 1", Self::NAME),
                Err(()) => {
                    // Queue full: the releaser's holder is behind (typically preempted). Help
                    // if the releaser is free, else give the CPU away and retry.
                    stats.full += 1;
                    stats.pump(self);
                    std::thread::yield_now();
                }
            }
        }
        stats.pump(self);
    }
}

/// What one thread saw on the forwarding path (for the books and the diagnostics).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Requests this thread dispatched while holding the releaser.
    dispatched: u64,
    /// `pump` calls that found the releaser taken.
    busy: u64,
    /// `submit` calls refused because the queue was full.
    full: u64,
}

impl Stats {
    #[inline]
    fn pump<D: Design>(&mut self, d: &D) {
        match d.pump() {
            Some(n) => self.dispatched += n,
            None => self.busy += 1,
        }
    }

    fn add(&mut self, o: Stats) {
        self.dispatched += o.dispatched;
        self.busy += o.busy;
        self.full += o.full;
    }
}

// The baselines' releaser: an `AtomicBool` taken without waiting, as `Redirector::releaser` does.

/// The single-consumer side of a baseline design.
trait Fifo: Design {
    fn releaser_flag(&self) -> &AtomicBool;
    /// One dispatch by the releaser holder: the token and whether it went to port 2.
    fn dispatch(&self) -> Option<(u64, bool)>;

    #[inline]
    fn pump_fifo(&self) -> Option<u64> {
        let flag = self.releaser_flag();
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        let mut n = 0;
        while let Some((token, port2)) = self.dispatch() {
            assert!(
                port2,
                "{}: dispatched to port 1 while forwarding",
                Self::NAME
            );
            black_box(token);
            self.complete_port2();
            n += 1;
        }
        flag.store(false, Ordering::Release);
        Some(n)
    }
}

fn main() {
    let load_before = loadavg();
    let (warm_up, measure, samples, resamples) = if quick() {
        (
            Duration::from_millis(100),
            Duration::from_millis(200),
            10,
            1_000,
        )
    } else {
        (Duration::from_secs(1), Duration::from_secs(3), 20, 20_000)
    };
    let mut c = Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .sample_size(samples)
        .nresamples(resamples)
        .without_plots()
        .configure_from_args();
    for path in PATHS {
        let mut group = c.benchmark_group(path.name());
        group.throughput(Throughput::Elements(1));
        for t in THREADS {
            bench_design::<MutexDesign>(&mut group, path, t);
            bench_design::<AqDesign>(&mut group, path, t);
            bench_design::<Baton>(&mut group, path, t);
        }
        group.finish();
    }
    c.final_summary();
    if benchmarking() {
        summarize(&load_before);
    }
}
