//! The harness: one timed run of a case over a barrier of threads, criterion's hook, and the
//! facts about the machine the summary prints.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use baton_core::redirector::State;
use criterion::BenchmarkId;

use crate::arrayqueue::AqDesign;
use crate::baton::Baton;
use crate::mutex::MutexDesign;
use crate::summary::median;
use crate::{Design, MIN_REQUESTS, MIN_REQUESTS_QUICK, Path, Stats};

/// One run of a case: the wall time, the requests of all threads, the threads' forwarding stats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) requests: u64,
    pub(crate) stats: Stats,
}

impl Sample {
    pub(crate) fn ns_per_request(&self) -> f64 {
        self.wall.as_nanos() as f64 / self.requests as f64
    }
}

/// Runs `requests` requests of `path` split over `threads` threads; the wall time runs from the
/// first thread's start to the last one's end.
pub(crate) fn run_case<D: Design>(path: Path, threads: usize, requests: u64) -> Sample {
    let state = match path {
        Path::Direct => State::Direct,
        Path::Forwarding => State::Forwarding,
    };
    let design = D::new_in(state);
    let d: &D = &design;
    let barrier = Barrier::new(threads);
    let per = requests / threads as u64;
    let extra = requests % threads as u64;
    let outcomes: Vec<(Instant, Instant, Stats)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let barrier = &barrier;
                let n = per + u64::from(t < extra);
                s.spawn(move || {
                    let mut stats = Stats::default();
                    let base = t << 40;
                    barrier.wait();
                    let start = Instant::now();
                    match path {
                        Path::Direct => {
                            for i in 0..n {
                                d.direct_request(black_box(base | i));
                            }
                        }
                        Path::Forwarding => {
                            for i in 0..n {
                                d.forwarding_request(black_box(base | i), &mut stats);
                            }
                        }
                    }
                    (start, Instant::now(), stats)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = outcomes.iter().map(|o| o.0).min().unwrap();
    let end = outcomes.iter().map(|o| o.1).max().unwrap();
    let mut stats = Stats::default();
    for o in &outcomes {
        stats.add(o.2);
    }
    // Outside the timed region: dispatch what is left and check the books.
    if path == Path::Forwarding {
        let rest = d
            .pump()
            .expect("releaser still taken after the threads ended");
        assert_eq!(
            stats.dispatched + rest,
            requests,
            "{}: requests lost or duplicated",
            D::NAME
        );
    }
    assert_eq!(d.counts(), (0, 0, 0), "{}: counters not back to 0", D::NAME);
    Sample {
        wall: end - start,
        requests,
        stats,
    }
}

pub(crate) fn bench_design<D: Design>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    path: Path,
    threads: usize,
) {
    group.bench_with_input(BenchmarkId::new(D::NAME, threads), &threads, |b, &t| {
        b.iter_custom(|iters| {
            // Criterion starts with a handful of iterations; a sample that short would measure
            // how far apart the threads woke up. Run at least `min_requests()` and scale back.
            let requests = iters.max(min_requests());
            run_case::<D>(path, t, requests)
                .wall
                .mul_f64(iters as f64 / requests as f64)
        });
    });
}

pub(crate) fn run_design(design: &str, path: Path, threads: usize, requests: u64) -> Sample {
    match design {
        "mutex" => run_case::<MutexDesign>(path, threads, requests),
        "arrayqueue" => run_case::<AqDesign>(path, threads, requests),
        "baton" => run_case::<Baton>(path, threads, requests),
        _ => unreachable!("unknown design {design}"),
    }
}

pub(crate) fn quick() -> bool {
    std::env::var("BATON_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn min_requests() -> u64 {
    if quick() {
        MIN_REQUESTS_QUICK
    } else {
        MIN_REQUESTS
    }
}

/// The 1-minute load average: other processes compete for the same CPUs.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// How many CPUs' worth of work two threads get done at once here (2.0 on two idle cores; less
/// when the CPUs are shared with other processes or are not backed by separate cores): the time
/// of one thread's private spin loop over that of two such threads, doubled; median of 3.
pub(crate) fn parallel_capacity() -> f64 {
    fn spin(threads: usize) -> Duration {
        let barrier = Barrier::new(threads);
        let times: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        let mut x = 0u64;
                        for i in 0..20_000_000u64 {
                            x = black_box(x.wrapping_add(i));
                        }
                        black_box(x);
                        start.elapsed()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        times.into_iter().max().unwrap_or_default()
    }
    let probes = (0..3)
        .map(|_| 2.0 * spin(1).as_secs_f64() / spin(2).as_secs_f64())
        .collect();
    median(probes).unwrap_or(f64::NAN)
}

/// Whether criterion is benchmarking (not `cargo test --benches`, `--test`, `--list`, or
/// `--profile-time`, which runs one filtered case under a profiler and should run nothing else).
pub(crate) fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// The cost of the uncontended operations the designs are made of, on one thread, in ns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AtomicCosts {
    /// A load and a `compare_exchange` (`AcqRel`) of an `AtomicU64`: one step of a CAS loop.
    pub(crate) cas: f64,
    /// `Mutex::lock`, an increment, the guard's drop.
    pub(crate) lock_unlock: f64,
    /// The releaser flag: a `compare_exchange(false, true)` and a `store(false)`.
    pub(crate) flag: f64,
}

impl AtomicCosts {
    /// `baton`'s forwarded request: submit, dispatch and complete (a CAS each), the releaser.
    pub(crate) fn baton_forwarding_floor(&self) -> f64 {
        3.0 * self.cas + self.flag
    }

    /// The Mutex design's: submit, dispatch, complete and the last, empty dispatch (a lock
    /// each), the releaser.
    pub(crate) fn mutex_forwarding_floor(&self) -> f64 {
        4.0 * self.lock_unlock + self.flag
    }

    pub(crate) fn json(&self) -> String {
        format!(
            "{{\"cas\": {:.3}, \"mutex_lock_unlock\": {:.3}, \"flag_take_give\": {:.3}}}",
            self.cas, self.lock_unlock, self.flag
        )
    }
}

/// Measures [`AtomicCosts`] once: each operation `ops` times in a loop.
pub(crate) fn atomic_costs(ops: u64) -> AtomicCosts {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[repr(align(128))]
    struct Line<T>(T);
    let per_op = |f: &mut dyn FnMut(u64)| {
        let start = Instant::now();
        for i in 0..ops {
            f(black_box(i));
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    };
    let word = Line(AtomicU64::new(0));
    let cas = per_op(&mut |i| {
        let cur = word.0.load(Ordering::Acquire);
        let _ = word.0.compare_exchange_weak(
            cur,
            cur.wrapping_add(i),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    });
    let mutex = Line(Mutex::new(0u64));
    let lock_unlock = per_op(&mut |i| {
        let mut g = mutex.0.lock().unwrap();
        *g = g.wrapping_add(i);
    });
    let taken = Line(AtomicBool::new(false));
    let flag = per_op(&mut |_| {
        if taken
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            taken.0.store(false, Ordering::Release);
        }
    });
    AtomicCosts {
        cas,
        lock_unlock,
        flag,
    }
}

/// The median of each of [`AtomicCosts`]'s fields over `runs`.
pub(crate) fn median_costs(runs: &[AtomicCosts]) -> AtomicCosts {
    let m = |f: fn(&AtomicCosts) -> f64| median(runs.iter().map(f).collect()).unwrap_or(f64::NAN);
    AtomicCosts {
        cas: m(|c| c.cas),
        lock_unlock: m(|c| c.lock_unlock),
        flag: m(|c| c.flag),
    }
}
