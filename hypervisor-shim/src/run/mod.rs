//! `hypervisor-shim run`: one owner guest doing direct I/O on one virtio-blk disk (issue 2).
//!
//! The scenario: create the disk, boot the guest under QEMU ([`crate::vm`]), hold a QMP session
//! (capabilities, version, status, events), follow the guest's `BATON` lines on COM1
//! ([`baton_core::console`], docs/guest-interface.md), hot-add the disk when the guest asks for it
//! (`--hotplug-disk`), wait for the guest's exit under a hard timeout, then verify the disk on the
//! host ([`crate::disk`]) and build the [`RunReport`].
//!
//! Guest lines are untrusted (invariant I6): each is accepted only once and only in the state where it
//! makes sense; a malformed `BATON result` line is an error in the report, never a panic.
//!
//! Layout: this file holds the configuration and the entry point; `session` follows the guest;
//! `verdict` turns the facts of a finished run into its failures; `assemble` builds the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::cmdline::{DeviceClass, DiskMode, GuestConfig, Role};

use crate::disk::{self, DiskImage};
use crate::qemu::{Accel, DiskBackend, MachineSpec};
use crate::report::RunReport;
use crate::setup::{self, Binaries, SetupError, Workdir};

mod assemble;
pub mod net;
mod session;
mod shared;
mod verdict;

use crate::setup::{AccelChoice, BackendKind};
use assemble::{Plan, build_report};
use session::Session;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Disk backend.
    pub backend: BackendKind,
    /// Accelerator.
    pub accel: AccelChoice,
    /// VM id.
    pub vm: u32,
    /// Distinct blocks.
    pub blocks: u64,
    /// Passes.
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Schedule seed.
    pub seed: u64,
    /// First LBA.
    pub first_lba: u64,
    /// Boot without a disk and hot-add it when the guest waits for it.
    pub hotplug_disk: bool,
    /// Ask the guest to panic right after boot (test hook).
    pub guest_panic: bool,
    /// Hard timeout for the whole guest run.
    pub timeout: Duration,
    /// Guest kernel; default: next to the shim's build output.
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or path).
    pub qemu: PathBuf,
    /// Working directory; default: a fresh temporary directory.
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, socket and (temporary) workdir after the run.
    pub keep: bool,
    /// Test hook: the image is exported over NBD from a simulated storage host and the guest's
    /// QEMU runs in host A (network namespaces, root only; `run/shared.rs`). File backend only.
    pub shared_storage: bool,
    /// Test hook (with `shared_storage`): restart the storage daemon this long after QEMU started.
    pub restart_storage_after: Option<Duration>,
    /// The owner's device: a disk (this module's scenario) or a NIC ([`net`]).
    pub device: DeviceClass,
    /// Numbered frames each way (NIC only).
    pub frames: u64,
    /// Test hook (NIC only): the host end never sends the guest this frame number.
    pub nic_skip: Option<u64>,
}

/// A finished run: its report and its working directory (removed when this is dropped, unless kept).
#[derive(Debug)]
pub struct RunOutcome {
    /// The report.
    pub report: RunReport,
    /// Owns the working directory.
    pub workdir: Workdir,
}

/// Runs the scenario. Guest failures end up in the report (`ok: false`); only set-up problems are
/// errors.
pub fn run(cfg: &RunConfig) -> Result<RunOutcome, SetupError> {
    if cfg.device != DeviceClass::Blk {
        return Err(SetupError::Config(
            "a NIC run is `run::net::run`, not the disk scenario".into(),
        ));
    }
    if cfg.shared_storage {
        crate::hosts::require_root()?;
    }
    let bins = Binaries::locate(&cfg.qemu, cfg.kernel.as_deref())?;
    let (accel, accel_reason) = cfg.accel.resolve()?;
    let guest = GuestConfig {
        role: Role::Owner,
        vm: cfg.vm,
        blocks: cfg.blocks,
        passes: cfg.passes,
        qd: cfg.qd,
        seed: cfg.seed,
        first_lba: cfg.first_lba,
        disk: if cfg.hotplug_disk {
            DiskMode::Hotplug
        } else {
            DiskMode::Boot
        },
        // null-co reads zeroes: a read-back check there can only fail.
        verify: cfg.backend == BackendKind::File,
        panic: cfg.guest_panic,
        ..GuestConfig::default()
    };
    // Validate with the guest's own parser, so the guest cannot reject what we send.
    let append = guest.to_string();
    GuestConfig::parse(&append).map_err(|e| SetupError::Config(e.to_string()))?;

    let workdir = Workdir::create(cfg.workdir.as_deref(), cfg.keep)?;
    let dir = workdir.path().to_path_buf();
    let disk_bytes = disk::image_size(cfg.first_lba, cfg.blocks)?;
    let mut image = None;
    let backend = match cfg.backend {
        BackendKind::File => {
            let img = DiskImage::create(&dir.join("disk.img"), disk_bytes)?;
            let b = DiskBackend::File(img.path().to_path_buf());
            image = Some(img);
            b
        }
        BackendKind::Null => DiskBackend::Null { size: disk_bytes },
    };
    if cfg.keep
        && let Some(img) = image.as_mut()
    {
        img.keep();
    }
    let mut shared = match (&image, cfg.shared_storage) {
        (Some(img), true) => Some(shared::SharedStorage::start(img.path(), &dir)?),
        (None, true) => {
            return Err(SetupError::Config(
                "--shared-storage needs the file backend".into(),
            ));
        }
        (_, false) => None,
    };
    let backend = match shared.as_ref().and_then(shared::SharedStorage::backend) {
        Some(nbd) => nbd,
        None => backend,
    };
    let mut spec = qemu_spec(&bins, accel, append, &dir, cfg, &backend);
    spec.netns = shared.as_ref().map(|s| s.hosts.source().netns.clone());

    let mut session = Session::start(&spec, &dir, cfg.timeout)?;
    if let (Some(s), Some(after)) = (shared.as_mut(), cfg.restart_storage_after) {
        s.restart_after(after);
    }
    let outcome = session.drive(cfg.hotplug_disk.then_some(&backend));
    // The image is read only after the export flushed and exited.
    let (storage_note, storage_failure) = match shared.as_mut() {
        Some(s) => s.finish(),
        None => (None, None),
    };
    let plan = Plan {
        cfg,
        spec: &spec,
        guest: &guest,
        schedule: guest.schedule(),
        backend: &backend,
        disk_bytes,
        accel_reason,
        workdir: &workdir,
        image: image.as_ref(),
    };
    let mut report = build_report(&plan, session, outcome);
    report.notes.extend(storage_note);
    if let Some(f) = storage_failure {
        report.failures.push(f);
        report.ok = false;
    }
    drop(image);
    drop(shared);
    Ok(RunOutcome { report, workdir })
}

/// The guest's machine: the disk at boot unless it is to be hot-added.
fn qemu_spec(
    bins: &Binaries,
    accel: Accel,
    append: String,
    dir: &Path,
    cfg: &RunConfig,
    backend: &DiskBackend,
) -> MachineSpec {
    MachineSpec {
        boot_disk: (!cfg.hotplug_disk).then(|| backend.clone()),
        ..bins.machine(accel, append, setup::qmp_socket(dir, None))
    }
}
