//! Helpers shared by the integration tests: run the shim binary with a hard timeout, find or build
//! the guest kernel, and give every test its own working directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The shim binary cargo built for these tests.
pub const SHIM: &str = env!("CARGO_BIN_EXE_hypervisor-shim");

/// What a finished shim run left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status {:?} after {:.1?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Kills the child when dropped (e.g. when an assertion fails mid-test).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Runs the shim with `args`; kills it and fails the test if it runs longer than `limit`.
pub fn shim(args: &[&str], limit: Duration) -> Output {
    let start = Instant::now();
    let child = Command::new(SHIM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the shim binary");
    let mut guard = ChildGuard(child);
    let out = drain(guard.0.stdout.take());
    let err = drain(guard.0.stderr.take());
    let status = loop {
        if let Some(st) = guard.0.try_wait().expect("wait for the shim") {
            break st;
        }
        if start.elapsed() > limit {
            drop(guard);
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "shim {args:?} still running after {limit:?}: killed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("manifest dir has a parent")
        .to_path_buf()
}

/// Where the shim looks for the kernel by default: `<shim dir>/../x86_64-unknown-none/release/`.
pub fn kernel_path() -> PathBuf {
    let target_dir = Path::new(SHIM)
        .parent()
        .and_then(Path::parent)
        .expect("shim binary lives in <target>/<profile>/");
    target_dir.join("x86_64-unknown-none/release/baton-kernel")
}

static KERNEL: Once = Once::new();

/// Makes sure the guest kernel exists (building it once with `cargo kbuild` if not) and that QEMU
/// is installed; returns the kernel's path.
pub fn kernel() -> PathBuf {
    require_qemu();
    let k = kernel_path();
    KERNEL.call_once(|| {
        if k.is_file() {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = k.ancestors().nth(3).expect("kernel path has a target dir");
        let st = Command::new(cargo)
            .arg("kbuild")
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("cannot run `cargo kbuild`");
        assert!(st.success(), "`cargo kbuild` failed: {st}");
    });
    assert!(
        k.is_file(),
        "guest kernel {} missing (did `cargo kbuild` fail in another test?)",
        k.display()
    );
    k
}

/// Fails the test with a clear message when QEMU is not installed.
pub fn require_qemu() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join("qemu-system-x86_64").is_file());
    assert!(
        found,
        "qemu-system-x86_64 not found on PATH: these tests boot real guests. \
         Install QEMU with `apt-get install qemu-system-x86` (or run ./qemu-run.sh test, which does)"
    );
}

/// The accelerator the tests use: `BATON_TEST_ACCEL` = `kvm` | `tcg` | `auto` (default `auto`).
pub fn accel() -> String {
    match std::env::var("BATON_TEST_ACCEL") {
        Ok(a) if ["kvm", "tcg", "auto"].contains(&a.as_str()) => a,
        Ok(a) if a.is_empty() => "auto".into(),
        Ok(a) => panic!("BATON_TEST_ACCEL must be kvm, tcg or auto, not `{a}`"),
        Err(_) => "auto".into(),
    }
}

/// Parses the JSON report the shim wrote.
pub fn report(path: &Path, out: &Output) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}\n{}", path.display(), out.dump()));
    serde_json::from_str(&text).expect("report is JSON")
}

/// `run` arguments every QEMU test uses: kernel, accelerator, workdir, report, timeout.
pub fn run_args(dir: &Path, accel: &str, timeout_secs: u64) -> Vec<String> {
    vec![
        "run".into(),
        "--kernel".into(),
        kernel().display().to_string(),
        "--accel".into(),
        accel.into(),
        "--workdir".into(),
        dir.join("work").display().to_string(),
        "--report".into(),
        dir.join("report.json").display().to_string(),
        "--timeout-secs".into(),
        timeout_secs.to_string(),
    ]
}

/// `migrate` arguments every handoff test uses: kernel, accelerator, workdir, report, timeout.
pub fn migrate_args(dir: &Path, accel: &str, timeout_secs: u64) -> Vec<String> {
    vec![
        "migrate".into(),
        "--kernel".into(),
        kernel().display().to_string(),
        "--accel".into(),
        accel.into(),
        "--workdir".into(),
        dir.join("work").display().to_string(),
        "--report".into(),
        dir.join("report.json").display().to_string(),
        "--timeout-secs".into(),
        timeout_secs.to_string(),
    ]
}

/// Runs `migrate` with `extra` arguments in a fresh temporary directory named `prefix…` (the
/// shim's own timeout `timeout_secs`, killed after `limit`); returns the directory (kept alive by
/// the caller), the run and its report.
pub fn run_migrate(
    prefix: &str,
    extra: &[&str],
    timeout_secs: u64,
    limit: Duration,
) -> (tempfile::TempDir, Output, serde_json::Value) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let mut args = migrate_args(dir.path(), &accel(), timeout_secs);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, limit);
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

/// Report field `k` of `v` as a number; panics, showing `v`, if it is not one.
pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("report field `{k}` is not a number: {v:#}"))
}
