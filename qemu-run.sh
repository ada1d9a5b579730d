#!/usr/bin/env bash
# baton: install what is missing, build the guest kernel and the shim, then run.
#
#   ./qemu-run.sh                  the demo, the whole life of a guest that owns a device
#                                  (`migrate --mode live`): the owner guest writes, its disk moves to
#                                  a peer guest, its I/O is forwarded over a shared-memory ring, it is
#                                  live-migrated, gets its disk back at the destination (failback,
#                                  the ring closed) and finishes there with direct I/O; the disk is
#                                  verified on the host. Progress on stderr, then a short summary on stdout;
#                                  the full report in reports/migrate.json, the disk image, serial
#                                  logs and timeline plot kept in reports/migrate/
#   ./qemu-run.sh test [ARGS]      the gates, then the whole test suite. The gates, in order, each
#                                  stopping the command if it fails: `cargo fmt --all --check`,
#                                  clippy of the host crates and `cargo kclippy` of the guest kernel
#                                  (both with `-D warnings`), and the loom models of the redirector
#                                  (LOOM_MAX_PREEMPTIONS, default 2; built in target/loom). Then the
#                                  suite: `cargo test --release` (unit tests + QEMU integration
#                                  tests); ARGS go to it. BATON_TEST_ACCEL=kvm|tcg|auto picks the
#                                  accelerator of the QEMU tests (default auto).
#   ./qemu-run.sh SUBCOMMAND ARGS  any hypervisor-shim subcommand, e.g. `migrate --mode save`,
#                                  `run --accel tcg --report r.json` (direct I/O, no handoff)
#                                  (`./qemu-run.sh --help` lists them); relative paths are taken from
#                                  the directory you call it in
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)

log() { printf 'qemu-run: %s\n' "$*" >&2; }

QBOOT=/usr/share/qemu/qboot.rom

ensure_qemu() {
    if command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -f "$QBOOT" ]; then
        return
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "QEMU is missing: installing qemu-system-x86"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y qemu-system-x86
    else
        log "QEMU (qemu-system-x86_64 and $QBOOT) is missing. Install it with:"
        log "    sudo apt-get install -y qemu-system-x86"
        exit 1
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "Rust is missing. Install rustup (https://rustup.rs), then run this script again:"
        log "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal"
        exit 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        # rust-toolchain.toml pins the toolchain and the x86_64-unknown-none target.
        if ! (cd "$ROOT" && rustup show active-toolchain >/dev/null 2>&1); then
            (cd "$ROOT" && rustup toolchain install)
        fi
        if ! (cd "$ROOT" && rustup target list --installed) | grep -qx x86_64-unknown-none; then
            (cd "$ROOT" && rustup target add x86_64-unknown-none)
        fi
        # rustfmt and clippy (for the gates of `test`): listed in rust-toolchain.toml, which a
        # fresh install honours; a toolchain installed earlier without them gets them here.
        local missing=()
        (cd "$ROOT" && cargo fmt --version) >/dev/null 2>&1 || missing+=(rustfmt)
        (cd "$ROOT" && cargo clippy --version) >/dev/null 2>&1 || missing+=(clippy)
        if [ ${#missing[@]} -gt 0 ]; then
            (cd "$ROOT" && rustup component add "${missing[@]}")
        fi
    fi
}

build() {
    log "building the guest kernel (cargo kbuild)"
    (cd "$ROOT" && cargo kbuild)
    log "building the shim (cargo build --release -p hypervisor-shim)"
    (cd "$ROOT" && cargo build --release -p hypervisor-shim)
}

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SHIM="$TARGET_DIR/release/hypervisor-shim"

# Runs one gate of `test`: says what it runs, and stops the command with a clear line if it fails.
gate() {
    local what=$1
    shift
    log "gate: $what: $*"
    if ! (cd "$ROOT" && "$@"); then
        log "FAILED gate: $what ($* failed; see above). The test suite did not run."
        exit 1
    fi
}

# The gates run before the test suite (and so in CI, through .ci/run).
gates() {
    gate "formatting" cargo fmt --all --check
    gate "clippy, host crates" cargo clippy --workspace --all-targets --release -- -D warnings
    gate "clippy, guest kernel" cargo kclippy -- -D warnings
    # The loom build gets its own target directory: `--cfg loom` would otherwise invalidate the
    # release build of the suite. Two preemptions per execution: about 1.5 CPU-minutes for the
    # four models (measured), a few minutes with the build.
    gate "loom models of the redirector" env RUSTFLAGS="--cfg loom" \
        LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" \
        cargo test --release -p baton-core --test loom_redirector --target-dir "$TARGET_DIR/loom"
}

ensure_qemu
ensure_rust

case "${1-}" in
"")
    build
    reports="$ROOT/reports"
    rm -rf "$reports/migrate"
    rm -f "$reports/migrate.json"
    mkdir -p "$reports"
    # The shim ends with its summary (what happened, the figures, the verdict, where the report,
    # logs, disk image and plot are); the workdir and everything in it are kept.
    exec "$SHIM" migrate --mode live --workdir "$reports/migrate" --report "$reports/migrate.json"
    ;;
test)
    shift
    gates
    build
    log "running the test suite (cargo test --release)"
    out=$(mktemp)
    trap 'rm -f "$out"' EXIT
    status=0
    (cd "$ROOT" && cargo test --release "$@") 2>&1 | tee "$out" || status=$?
    # One closing line over all test binaries (the last binary is often doc-tests with 0 tests).
    awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i-1);
                if ($(i) ~ /^failed;?$/) f += $(i-1);
                if ($(i) ~ /^ignored;?$/) s += $(i-1);
            }
        }
        END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
    exit "$status"
    ;;
*)
    build
    exec "$SHIM" "$@"
    ;;
esac
