//! The summary after criterion's report: the paired pass, its table and the JSON file.

use std::collections::BTreeMap;

use crate::harness::{
    AtomicCosts, Sample, atomic_costs, cpu_model, cpus, loadavg, median_costs, parallel_capacity,
    quick, run_design,
};
use crate::{
    DESIGNS, MIN_REQUESTS, MIN_REQUESTS_QUICK, PAIRED_ROUNDS, PAIRED_ROUNDS_QUICK, PATHS, Path,
    Stats, THREADS,
};

/// One case's figures from the paired pass.
struct Figure {
    /// Median over the rounds of ns per request.
    median: f64,
    /// Fastest round's ns per request.
    min: f64,
    /// Median over the rounds of (the Mutex design's ns / this design's ns) in the same round.
    vs_mutex: Option<f64>,
    /// The same against the `ArrayQueue` design.
    vs_arrayqueue: Option<f64>,
    /// Per 1000 requests: `pump` calls that found the releaser taken, refused submits.
    busy_per_k: f64,
    full_per_k: f64,
}

/// The paired pass's figures by (design, path, threads).
type Figures = BTreeMap<(&'static str, Path, usize), Figure>;

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The paired pass behind the summary: `rounds` rounds, each running every case once with
/// `requests` requests, the three designs of a case back to back in an order that rotates from
/// round to round, so that other load on the machine hits them alike and the ratio of a round
/// compares runs made within milliseconds of each other.
///
/// Each round also measures the [`AtomicCosts`] (200,000 of each operation), so that the floor
/// they put under each design comes from the same machine state as the runs; their median over
/// the rounds is returned with the figures.
fn paired_pass(rounds: usize, requests: u64) -> (Figures, AtomicCosts) {
    let mut runs: BTreeMap<(&'static str, Path, usize), Vec<Sample>> = BTreeMap::new();
    let mut costs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        costs.push(atomic_costs(200_000));
        for path in PATHS {
            for t in THREADS {
                for k in 0..DESIGNS.len() {
                    let design = DESIGNS[(round + k) % DESIGNS.len()];
                    let sample = run_design(design, path, t, requests);
                    runs.entry((design, path, t)).or_default().push(sample);
                }
            }
        }
    }
    let mut figures = BTreeMap::new();
    for (&(design, path, t), samples) in &runs {
        let ns: Vec<f64> = samples.iter().map(Sample::ns_per_request).collect();
        let vs = |other: &'static str| {
            runs.get(&(other, path, t)).and_then(|o| {
                median(
                    o.iter()
                        .zip(samples)
                        .map(|(o, d)| o.ns_per_request() / d.ns_per_request())
                        .collect(),
                )
            })
        };
        let total: u64 = samples.iter().map(|s| s.requests).sum();
        let per_k = |f: fn(&Stats) -> u64| {
            samples.iter().map(|s| f(&s.stats)).sum::<u64>() as f64 * 1000.0 / total as f64
        };
        figures.insert(
            (design, path, t),
            Figure {
                median: median(ns.clone()).unwrap_or(f64::NAN),
                min: ns.iter().copied().fold(f64::INFINITY, f64::min),
                vs_mutex: vs("mutex"),
                vs_arrayqueue: vs("arrayqueue"),
                busy_per_k: per_k(|s| s.busy),
                full_per_k: per_k(|s| s.full),
            },
        );
    }
    (figures, median_costs(&costs))
}

fn json_num(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

fn times(x: Option<f64>) -> String {
    x.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// The worse of `baton`'s ratios over the thread counts, per path.
fn worst(figures: &Figures, path: Path, pick: fn(&Figure) -> Option<f64>) -> Option<f64> {
    THREADS
        .iter()
        .map(|&t| figures.get(&("baton", path, t)).and_then(pick))
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::min)
}

/// Runs the paired pass and prints the summary (and writes the JSON of `BATON_BENCH_JSON`).
pub(crate) fn summarize(load_before: &str) {
    let (rounds, requests) = if quick() {
        (PAIRED_ROUNDS_QUICK, MIN_REQUESTS_QUICK)
    } else {
        (PAIRED_ROUNDS, MIN_REQUESTS)
    };
    let capacity_before = parallel_capacity();
    let (figures, costs) = paired_pass(rounds, requests);
    let capacity_after = parallel_capacity();
    let load_after = loadavg();
    let ncpu = cpus();
    println!();
    println!(
        "redirector summary: {ncpu} CPUs ({}), load average {load_before} before, {load_after} after{}",
        cpu_model(),
        if quick() {
            "; quick mode (BATON_BENCH_QUICK)"
        } else {
            ""
        },
    );
    println!(
        "parallel capacity (2 threads' private work vs 1): {capacity_before:.2} CPUs before the paired pass, {capacity_after:.2} after"
    );
    println!(
        "paired pass: {rounds} rounds of {requests} requests per case, designs back to back in rotating order"
    );
    println!(
        "ns/request = wall time / requests of all threads: median (and fastest) over the rounds; vs_mutex, vs_aq = median over"
    );
    println!(
        "the rounds of (mutex or arrayqueue ns) / (design ns) in the same round; busy/1k = releaser found taken, full/1k = submits"
    );
    println!("refused (queue full), per 1000 requests");
    println!(
        "{:<11} {:<11} {:>7} {:>11} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "design",
        "path",
        "threads",
        "ns/request",
        "fastest",
        "vs_mutex",
        "vs_aq",
        "busy/1k",
        "full/1k"
    );
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for path in PATHS {
        for t in THREADS {
            for design in DESIGNS {
                let Some(f) = figures.get(&(design, path, t)) else {
                    continue;
                };
                let (busy, full) = match path {
                    Path::Direct => ("-".into(), "-".into()),
                    Path::Forwarding => (
                        format!("{:.1}", f.busy_per_k),
                        format!("{:.1}", f.full_per_k),
                    ),
                };
                println!(
                    "{design:<11} {:<11} {t:>7} {:>11.1} {:>9.1} {:>9} {:>9} {busy:>8} {full:>8}",
                    path.name(),
                    f.median,
                    f.min,
                    times(f.vs_mutex),
                    times(f.vs_arrayqueue),
                );
                results.push(format!(
                    "{{\"design\": \"{design}\", \"path\": \"{}\", \"threads\": {t}, \"ns_per_request\": {}, \"fastest_ns_per_request\": {}}}",
                    path.name(),
                    json_num(Some(f.median)),
                    json_num(Some(f.min)),
                ));
                if design == "baton" {
                    ratios.push(format!(
                        "{{\"path\": \"{}\", \"threads\": {t}, \"vs_mutex\": {}, \"vs_arrayqueue\": {}}}",
                        path.name(),
                        json_num(f.vs_mutex),
                        json_num(f.vs_arrayqueue),
                    ));
                }
            }
        }
    }
    println!();
    println!(
        "baton against the baselines (median of the per-round ratios; above 1: baton is faster):"
    );
    println!(
        "{:<11} {:>7} {:>9} {:>14}",
        "path", "threads", "vs_mutex", "vs_arrayqueue"
    );
    for path in PATHS {
        for t in THREADS {
            if let Some(f) = figures.get(&("baton", path, t)) {
                println!(
                    "{:<11} {t:>7} {:>9} {:>14}",
                    path.name(),
                    times(f.vs_mutex),
                    times(f.vs_arrayqueue)
                );
            }
        }
    }
    let vs_mutex = PATHS.map(|p| worst(&figures, p, |f| f.vs_mutex));
    let vs_aq = PATHS.map(|p| worst(&figures, p, |f| f.vs_arrayqueue));
    let fwd = vs_mutex[1];
    println!(
        "forwarding vs mutex, the worse of {} threads: {} (target >= 3x: {})",
        THREADS.map(|t| t.to_string()).join(" and "),
        times(fwd),
        match fwd {
            Some(r) if r >= 3.0 => "met",
            Some(_) => "not met",
            None => "-",
        }
    );
    print_costs(&costs);
    if let Some(path) = std::env::var_os("BATON_BENCH_JSON").filter(|p| !p.is_empty()) {
        let pair = |r: [Option<f64>; 2]| {
            format!(
                "{{\"direct\": {}, \"forwarding\": {}}}",
                json_num(r[0]),
                json_num(r[1])
            )
        };
        let json = format!(
            "{{\"threads\": [{}], \"quick\": {}, \"results\": [{}], \"ratios\": [{}], \"ratio_vs_mutex\": {}, \"ratio_vs_arrayqueue\": {}, \"atomic_costs_ns\": {}, \"machine\": {{\"cpus\": {ncpu}, \"cpu_model\": \"{}\", \"loadavg_before\": \"{load_before}\", \"loadavg_after\": \"{load_after}\", \"parallel_capacity_before\": {}, \"parallel_capacity_after\": {}}}}}\n",
            THREADS.map(|t| t.to_string()).join(", "),
            quick(),
            results.join(", "),
            ratios.join(", "),
            pair(vs_mutex),
            pair(vs_aq),
            costs.json(),
            cpu_model().replace(['"', '\\'], ""),
            json_num(Some(capacity_before)),
            json_num(Some(capacity_after)),
        );
        match std::fs::write(&path, json) {
            Ok(()) => println!("summary written to {}", path.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
}

/// What one uncontended atomic operation costs here, and the floor it puts under each design's
/// forwarded request (the bound on the ratios when these operations dominate).
fn print_costs(c: &AtomicCosts) {
    println!(
        "uncontended costs here (1 thread, median over the rounds): CAS {:.2} ns, Mutex lock+unlock {:.2} ns, releaser flag take+give {:.2} ns",
        c.cas, c.lock_unlock, c.flag
    );
    let baton = c.baton_forwarding_floor();
    let mutex = c.mutex_forwarding_floor();
    println!(
        "forwarded request's floor from these: baton 3 CAS + flag = {baton:.1} ns, mutex 4 lock+unlock + flag = {mutex:.1} ns: at most {:.2}x",
        mutex / baton
    );
}
