//! The redirector on the host: runs `cargo bench -p baton-core --bench redirector` (criterion;
//! `BATON_BENCH_QUICK=1` under `--quick`) with `BATON_BENCH_JSON` and takes its summary. When cargo
//! or the workspace is not there, or the run fails or overruns, the result says why instead of
//! failing the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// The redirector benchmark's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RedirectorResult {
    /// Whether figures were obtained.
    pub available: bool,
    /// Why not.
    pub error: Option<String>,
    /// The command run.
    pub command: String,
    /// Quick mode (`BATON_BENCH_QUICK=1`).
    pub quick: bool,
    /// `baton` vs the `Mutex<VecDeque>` design (`mutex ns / baton ns`), per path
    /// (`{"direct", "forwarding"}`): the bench's `ratio_vs_mutex`, the worse over its thread
    /// counts (1 and 2 since issue 12), or its older `ratio_vs_mutex_4_threads`. The field keeps
    /// its issue-4 name.
    pub vs_mutex_4_threads: Option<Value>,
    /// The bench's whole JSON summary (`threads`, `results`, `ratios` per path and thread count
    /// against both baselines, `ratio_vs_mutex`, `ratio_vs_arrayqueue`, `atomic_costs_ns`,
    /// `machine`; see `baton-core/benches/redirector/main.rs`).
    pub summary: Option<Value>,
    /// Wall time, in s (including any build).
    pub seconds: f64,
}

/// The workspace root: where this crate was built from, if it is still there, else two levels
/// above the shim's `target/<profile>` directory.
pub fn workspace_root() -> Option<PathBuf> {
    let has_bench = |d: &Path| d.join("baton-core/benches/redirector/main.rs").is_file();
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    if has_bench(&built) {
        return Some(built);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .find(|d| has_bench(d))
        .map(Path::to_path_buf)
}

/// The cargo binary: `cargo` on `PATH` or in `~/.cargo/bin` (rustup's proxy, which honours the
/// workspace's `rust-toolchain.toml`), else `$CARGO` (set when run under cargo).
fn cargo() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("cargo"))
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/cargo")))
        .chain(std::env::var_os("CARGO").map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Runs the bench; `dir` holds its JSON and log.
pub fn run(quick: bool, timeout: Duration, dir: &Path) -> RedirectorResult {
    let start = Instant::now();
    let mut out = RedirectorResult {
        available: false,
        error: None,
        command: "cargo bench -p baton-core --bench redirector".into(),
        quick,
        vs_mutex_4_threads: None,
        summary: None,
        seconds: 0.0,
    };
    if quick {
        out.command = format!("BATON_BENCH_QUICK=1 {}", out.command);
    }
    match run_inner(quick, timeout, dir) {
        Ok(v) => {
            out.vs_mutex_4_threads = vs_mutex(&v);
            out.available = out.vs_mutex_4_threads.is_some();
            if !out.available {
                out.error = Some("the bench's JSON has no ratio_vs_mutex".into());
            }
            out.summary = Some(v);
        }
        Err(e) => out.error = Some(e),
    }
    out.seconds = super::stats::round(start.elapsed().as_secs_f64(), 1);
    out
}

/// The bench summary's ratios against the Mutex design (`{"direct", "forwarding"}`), if it
/// has them with at least a direct figure: `ratio_vs_mutex`, else the older
/// `ratio_vs_mutex_4_threads`.
fn vs_mutex(summary: &Value) -> Option<Value> {
    summary
        .get("ratio_vs_mutex")
        .or_else(|| summary.get("ratio_vs_mutex_4_threads"))
        .filter(|r| r.get("direct").and_then(Value::as_f64).is_some())
        .cloned()
}

fn run_inner(quick: bool, timeout: Duration, dir: &Path) -> Result<Value, String> {
    let root = workspace_root().ok_or("the baton workspace (baton-core/benches) is not here")?;
    let cargo = cargo().ok_or("cargo is not available")?;
    let json = dir.join("redirector.json");
    let log_path = dir.join("redirector.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
    let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    let mut cmd = Command::new(&cargo);
    cmd.args(["bench", "-p", "baton-core", "--bench", "redirector"])
        .current_dir(&root)
        .env("BATON_BENCH_JSON", &json)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if quick {
        cmd.env("BATON_BENCH_QUICK", "1");
    } else {
        cmd.env_remove("BATON_BENCH_QUICK");
    }
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a timeout can stop cargo and whatever it started.
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cargo.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for cargo: {e}")),
        }
        if start.elapsed() >= timeout || crate::setup::interrupted() {
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with a negative pid signals the process group we created
                // (`process_group(0)` made cargo its leader); no memory is touched.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
            return Err(format!(
                "cargo bench did not finish within {timeout:?}; stopped (log: {})",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "cargo bench failed ({status}): {}",
            tail.join(" | ")
        ));
    }
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("cargo bench wrote no {}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("malformed bench JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ratios_of_either_summary_shape() {
        let now = serde_json::json!({
            "threads": [1, 2],
            "ratio_vs_mutex": {"direct": 1.7, "forwarding": 1.9},
            "ratio_vs_arrayqueue": {"direct": 0.8, "forwarding": 1.2},
        });
        assert_eq!(
            vs_mutex(&now),
            Some(serde_json::json!({"direct": 1.7, "forwarding": 1.9}))
        );
        let before = serde_json::json!({
            "threads": [1, 2, 4],
            "ratio_vs_mutex_4_threads": {"direct": 5.4, "forwarding": 2.5},
        });
        assert_eq!(
            vs_mutex(&before),
            Some(serde_json::json!({"direct": 5.4, "forwarding": 2.5}))
        );
        let none = serde_json::json!({"ratio_vs_mutex": {"direct": null, "forwarding": 2.0}});
        assert_eq!(vs_mutex(&none), None);
        assert_eq!(vs_mutex(&serde_json::json!({})), None);
    }
}
