//! The summary after criterion's report: the paired pass, its table and the JSON file.

use std::collections::BTreeMap;

use crate::harness::{Sample, cpu_model, cpus, loadavg, parallel_capacity, quick, run_design};
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
    /// Per 1000 requests: `pump` calls that found the releaser taken, refused submits.
    busy_per_k: f64,
    full_per_k: f64,
}

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
fn paired_pass(rounds: usize, requests: u64) -> BTreeMap<(&'static str, Path, usize), Figure> {
    let mut runs: BTreeMap<(&'static str, Path, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
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
        let vs_mutex = runs.get(&("mutex", path, t)).and_then(|m| {
            median(
                m.iter()
                    .zip(samples)
                    .map(|(m, d)| m.ns_per_request() / d.ns_per_request())
                    .collect(),
            )
        });
        let total: u64 = samples.iter().map(|s| s.requests).sum();
        let per_k = |f: fn(&Stats) -> u64| {
            samples.iter().map(|s| f(&s.stats)).sum::<u64>() as f64 * 1000.0 / total as f64
        };
        figures.insert(
            (design, path, t),
            Figure {
                median: median(ns.clone()).unwrap_or(f64::NAN),
                min: ns.iter().copied().fold(f64::INFINITY, f64::min),
                vs_mutex,
                busy_per_k: per_k(|s| s.busy),
                full_per_k: per_k(|s| s.full),
            },
        );
    }
    figures
}

fn json_num(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

pub(crate) fn summarize(load_before: &str) {
    let (rounds, requests) = if quick() {
        (PAIRED_ROUNDS_QUICK, MIN_REQUESTS_QUICK)
    } else {
        (PAIRED_ROUNDS, MIN_REQUESTS)
    };
    let capacity_before = parallel_capacity();
    let figures = paired_pass(rounds, requests);
    let capacity_after = parallel_capacity();
    let ncpu = cpus();
    let max_threads = THREADS.iter().copied().max().unwrap_or(1);
    println!();
    println!(
        "redirector summary: {ncpu} CPUs ({}), load average {load_before} before, {} after{}{}",
        cpu_model(),
        loadavg(),
        if max_threads > ncpu {
            format!("; {max_threads} threads on {ncpu} CPUs oversubscribes")
        } else {
            String::new()
        },
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
        "ns/request = wall time / requests of all threads (submit+complete): median (and fastest) over the rounds;"
    );
    println!(
        "vs_mutex = median over the rounds of mutex ns / design ns; busy/1k = releaser found taken, full/1k = submits refused (queue full), per 1000 requests"
    );
    println!(
        "{:<11} {:<11} {:>7} {:>11} {:>9} {:>9} {:>8} {:>8}",
        "design", "path", "threads", "ns/request", "fastest", "vs_mutex", "busy/1k", "full/1k"
    );
    let ratio = |design: &str, path: Path, t: usize| -> Option<f64> {
        figures.get(&(design, path, t))?.vs_mutex
    };
    let mut results = Vec::new();
    for path in PATHS {
        for t in THREADS {
            for design in DESIGNS {
                let Some(f) = figures.get(&(design, path, t)) else {
                    continue;
                };
                let r = ratio(design, path, t).map_or("-".into(), |r| format!("{r:.2}x"));
                let (busy, full) = match path {
                    Path::Direct => ("-".into(), "-".into()),
                    Path::Forwarding => (
                        format!("{:.1}", f.busy_per_k),
                        format!("{:.1}", f.full_per_k),
                    ),
                };
                println!(
                    "{design:<11} {:<11} {t:>7} {:>11.1} {:>9.1} {r:>9} {busy:>8} {full:>8}",
                    path.name(),
                    f.median,
                    f.min
                );
                results.push(format!(
                    "{{\"design\": \"{design}\", \"path\": \"{}\", \"threads\": {t}, \"ns_per_request\": {}}}",
                    path.name(),
                    json_num(Some(f.median))
                ));
            }
        }
    }
    let r_direct = ratio("baton", Path::Direct, 4);
    let r_fwd = ratio("baton", Path::Forwarding, 4);
    println!(
        "baton vs mutex at 4 threads: direct {}, forwarding {} (target >= 3x)",
        r_direct.map_or("-".into(), |r| format!("{r:.2}x")),
        r_fwd.map_or("-".into(), |r| format!("{r:.2}x")),
    );
    if let Some(path) = std::env::var_os("BATON_BENCH_JSON").filter(|p| !p.is_empty()) {
        let json = format!(
            "{{\"threads\": [{}], \"results\": [{}], \"ratio_vs_mutex_4_threads\": {{\"direct\": {}, \"forwarding\": {}}}}}\n",
            THREADS.map(|t| t.to_string()).join(", "),
            results.join(", "),
            json_num(r_direct),
            json_num(r_fwd),
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
