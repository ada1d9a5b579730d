//! Host benchmark of the port redirector ([`baton_core::redirector`]) against two baseline
//! designs of the same job, at 1 and 2 threads, on the direct and the forwarding path (issue 12:
//! "the redirector at 1 and 2 threads against `Mutex<VecDeque>` and `ArrayQueue`, target ≥ 3×
//! the Mutex design on the forwarding path"). More threads than the development machine's 2
//! CPUs would time-slice them and measure the scheduler, so there is no 4-thread case.
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
//! transitions are used only to set the state up before a case starts. The queue holds 255
//! requests in each, and the same harness drives all three (same requests, same pumping, so the
//! same batch of ready requests per releaser turn).
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
//!   share of the releaser take/release and of the last, empty `dispatch` of each pump. In
//!   atomic read-modify-writes, uncontended (1 thread, one request per pump): `baton` 4 (a CAS
//!   each for submit, dispatch and complete, the releaser flag's CAS; its empty dispatch is one
//!   load of a slot stamp and the flag is given back with a plain store); `mutex` 9 (a
//!   lock/unlock pair each for submit, dispatch, complete and the empty dispatch, the flag's
//!   CAS); `arrayqueue` 5 (the `ArrayQueue`'s push and pop, a `fetch_add` and a `fetch_sub` of
//!   port 2's count, the flag's CAS; its empty dispatch is `is_empty`). A submit refused because
//!   the queue is full (its 255 places taken while the releaser's holder is preempted) helps
//!   pump and yields the CPU, then retries. Requests still queued when the threads end (a few
//!   at most) are dispatched after the timed region; every run checks that each request was
//!   dispatched once and that all counters are back to 0.
//!
//! **Criterion** times each (path, design, threads) case as usual, one criterion iteration being
//! one request: `iter_custom(iters)` runs `max(iters, 100_000)` requests and scales the wall
//! time back to `iters` (a run of a handful of requests would measure how far apart the threads
//! woke up).
//!
//! **The summary** (printed after criterion's report, and the JSON) comes from a separate
//! *paired pass*: 25 rounds, each running every case once with 100,000 requests, the three
//! designs of a case back to back in an order that rotates each round. Other load on the
//! machine then hits the three designs alike, and `vs_mutex` / `vs_aq` — the median over the
//! rounds of `mutex ns / design ns` (or `arrayqueue ns / design ns`) within a round (above 1:
//! faster than that design) — compare runs made milliseconds apart. `ns/request` is the median
//! over the rounds, `fastest` the best round; for forwarding, `busy/1k` counts pumps that found
//! the releaser taken and `full/1k` submits refused for a full queue, per 1000 requests. A
//! second table gives `baton`'s two ratios per path and thread count, and the line after it the
//! forwarding target (the worse of 1 and 2 threads against ≥ 3×).
//!
//! Each round also times the uncontended operations the designs are built from (a CAS step, a
//! `Mutex` lock/unlock pair, the releaser flag's take and give-back; 200,000 each, one thread)
//! and the summary prints their medians and the floor they put under a forwarded request:
//! `baton` 3 CAS + flag, `mutex` 4 lock/unlock pairs + flag, and so the largest ratio the two
//! designs can show where these operations dominate. The summary's first lines give the CPU
//! count and model, the load average and the parallel capacity (how many CPUs' worth of work two
//! threads get done) before and after the pass.
//!
//! # Running it
//!
//! `cargo bench -p baton-core --bench redirector`: about 70 s (12 criterion cases of 1 s
//! warm-up and 3 s measurement, then the paired pass). `BATON_BENCH_QUICK=1`: about 5 s
//! (0.1 s + 0.2 s per case, runs of at least 20,000 requests, 7 paired rounds), for smoke
//! checks. Criterion's usual arguments work (`-- direct/` runs the direct criterion cases only;
//! the paired pass always runs all; `-- --profile-time 5 forwarding/baton/1` runs one case for
//! a profiler and skips the paired pass). `BATON_BENCH_PROFILE=DESIGN/PATH/REQUESTS` (e.g.
//! `baton/forwarding/1000000`) runs only that case, once, on one thread, for an instruction
//! count under `valgrind --tool=callgrind` (two request counts, and the difference of the
//! totals over the difference of the requests is one request's cost; see
//! `docs/redirector-figures.md`). On a shared machine, `nice -n -20` keeps other
//! processes from taking the CPUs mid-run.
//!
//! `BATON_BENCH_JSON=FILE` also writes the summary to FILE (the shim's `bench` reads it):
//!
//! ```text
//! {"threads": [1, 2], "quick": bool,
//!  "results": [{"design": "baton"|"mutex"|"arrayqueue", "path": "direct"|"forwarding",
//!               "threads": n, "ns_per_request": f64, "fastest_ns_per_request": f64}, ...],
//!  "ratios": [{"path": p, "threads": n, "vs_mutex": f64, "vs_arrayqueue": f64}, ...],
//!  "ratio_vs_mutex": {"direct": f64, "forwarding": f64},
//!  "ratio_vs_arrayqueue": {"direct": f64, "forwarding": f64},
//!  "atomic_costs_ns": {"cas": f64, "mutex_lock_unlock": f64, "flag_take_give": f64},
//!  "machine": {"cpus": n, "cpu_model": s, "loadavg_before": s, "loadavg_after": s,
//!              "parallel_capacity_before": f64, "parallel_capacity_after": f64}}
//! ```
//!
//! `ratios` are `baton`'s per path and thread count; `ratio_vs_mutex` and `ratio_vs_arrayqueue`
//! are, per path, the worse of them over the thread counts (what a target is checked against).
//! A ratio that could not be computed is `null`.
//!
//! # Files
//!
//! `main.rs` (this file: the [`Design`] every candidate implements and criterion's entry point),
//! `baton.rs`, `mutex.rs` and `arrayqueue.rs` (the three designs), `harness.rs` (one timed run of
//! a case, the uncontended costs, the machine) and `summary.rs` (the paired pass, its tables and
//! JSON).
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
use harness::{bench_design, benchmarking, loadavg, quick, run_design};
use mutex::MutexDesign;
use summary::summarize;

/// Queue slots of the `baton` design; the baselines hold the same `SLOTS - 1` requests.
const SLOTS: usize = 256;
const CAPACITY: usize = SLOTS - 1;
/// Thread counts: at most the 2 CPUs of the development machine (more would time-slice threads
/// and measure the scheduler).
const THREADS: [usize; 2] = [1, 2];
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
    if let Some(spec) = std::env::var_os("BATON_BENCH_PROFILE").filter(|s| !s.is_empty()) {
        profile(&spec.to_string_lossy());
        return;
    }
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

/// `BATON_BENCH_PROFILE=DESIGN/PATH/REQUESTS`: one run of that case on one thread and nothing
/// else, for an instruction count (`valgrind --tool=callgrind`): the difference between two
/// request counts, divided by the difference in requests, is the cost of one request.
fn profile(spec: &str) {
    let parts: Vec<&str> = spec.split('/').collect();
    let [design, path, requests] = parts[..] else {
        panic!("BATON_BENCH_PROFILE={spec}: expected DESIGN/PATH/REQUESTS")
    };
    assert!(DESIGNS.contains(&design), "unknown design {design}");
    let path = PATHS
        .into_iter()
        .find(|p| p.name() == path)
        .unwrap_or_else(|| panic!("unknown path {path}"));
    let requests: u64 = requests.parse().expect("REQUESTS: a number");
    let s = run_design(design, path, 1, requests);
    println!(
        "{design} {} 1 thread: {requests} requests, {:.1} ns/request",
        path.name(),
        s.ns_per_request()
    );
}
