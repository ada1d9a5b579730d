//! The mechanisms of the faults `--inject` arms before they fire (issue 9, item 7; docs/design.md,
//! "Fault injection"): a `blkdebug` rule in the owner's or the peer's block graph (ENOSPC), a
//! small /dev/shm in the shim's own mount namespace, a state-file writer that holds its data
//! back. The faults the shim performs at a step (SIGKILL, a stopped vCPU) are in `recovery`.

use super::scenario::Vms;
use super::*;
use crate::qemu::{DiskErrors, ErrorRule};

/// errno ENOSPC ("No space left on device").
const ENOSPC: i32 = 28;
/// `enospc@owner`: the owner's write whose block fails. Its first pass writes each block once,
/// and at the default queue depth (32) write 16 is in the first batch, submitted as the workload
/// starts: on the disk before any switch point, however slowly a loaded host runs the guest.
const OWNER_FAULT_SEQ: u64 = 16;
/// 512-byte sectors per 4 KiB block (blkdebug's `sector` is in 512-byte units).
const SECTORS_PER_BLOCK: u64 = (baton_core::tag::BLOCK_SIZE as u64) / ring::SECTOR_SIZE;
/// `shm-full`: the size of the shim's private /dev/shm, too small for the ring ([`RING_BYTES`]).
pub const SHM_FULL_BYTES: u64 = 1 << 20;
/// `save-writer-late`: how long the state-file writer holds what QEMU sent after QEMU closed the
/// stream, as a slow disk would, before it writes and syncs the file.
const SAVE_WRITER_HOLD: Duration = Duration::from_secs(2);

impl Inject {
    /// For a fault armed before the run, what was armed (the progress line's text); `None` for
    /// the faults the shim performs at a step.
    pub(super) fn armed_before(self) -> Option<&'static str> {
        match self {
            Inject::PeerCrashHandoff
            | Inject::PeerCrashForwarding
            | Inject::PeerCrashFailback
            | Inject::PeerHangForwarding
            | Inject::StorageRestartForwarding
            | Inject::DestinationCrashMigration => None,
            Inject::EnospcOwner => Some(
                "a blkdebug rule under the owner's virtio-blk failed one of its writes with ENOSPC",
            ),
            Inject::EnospcPeer => {
                Some("a blkdebug rule in the peer's block node failed its first write with ENOSPC")
            }
            Inject::ShmFull => Some(
                "/dev/shm is a 1 MiB tmpfs in the shim's own mount namespace (too small for the ring)",
            ),
            Inject::SaveWriterLate => Some(
                "the state-file writer holds what QEMU sent for 2 s after the stream closed, then writes and syncs it",
            ),
        }
    }

    /// The guest (`owner` or `peer`) whose QEMU gets a blkdebug rule, for `enospc@...`.
    pub(super) fn enospc_in(self) -> Option<&'static str> {
        match self {
            Inject::EnospcOwner => Some("owner"),
            Inject::EnospcPeer => Some("peer"),
            _ => None,
        }
    }
}

impl IoErrorPolicy {
    /// What virtio-blk does with a failed request under this policy: `fail` reports every error
    /// to the guest (the VM is never paused, so the owner can still report what was acknowledged);
    /// `wait` keeps QEMU's default, a pause on ENOSPC that `cont` retries once space was freed.
    pub(super) fn disk_errors(self) -> DiskErrors {
        match self {
            IoErrorPolicy::Fail => DiskErrors::Report,
            IoErrorPolicy::Wait(_) => DiskErrors::PauseOnNoSpace,
        }
    }
}

/// Sets up the owner's and the peer's machines for the run: every virtio-blk of both follows the
/// I/O-error policy ([`IoErrorPolicy::disk_errors`]; the owner's destinations are started from
/// its spec, a fresh peer from the peer's), and `enospc@owner` / `enospc@peer` put their
/// blkdebug rule in the owner's boot disk / the peer's first block node.
pub(super) fn prepare_machines(
    cfg: &MigrateConfig,
    owner_guest: &GuestConfig,
    owner: &mut MachineSpec,
    peer: &mut MachineSpec,
) {
    let errors = cfg.on_io_error.disk_errors();
    owner.disk_errors = errors;
    peer.disk_errors = errors;
    match cfg.inject {
        Some(Inject::EnospcOwner) => {
            let sched = owner_guest.schedule();
            let seq = OWNER_FAULT_SEQ.min(sched.total_writes()).max(1);
            owner.disk_fault = sched.lba_of(seq).map(|lba| ErrorRule {
                errno: ENOSPC,
                sector: Some(lba * SECTORS_PER_BLOCK),
            });
        }
        Some(Inject::EnospcPeer) => {
            peer.disk_fault = Some(ErrorRule {
                errno: ENOSPC,
                sector: None,
            });
        }
        _ => {}
    }
}

impl Vms {
    /// The peer's `blockdev-add` options at a handoff: the disk's backend, under a blkdebug
    /// filter the first time when `enospc@peer` armed one. From then on the owner's boot-disk
    /// rule is gone too: an injected error lives in the first QEMU that holds the disk only,
    /// not in a destination started from the owner's spec after a failback.
    pub(super) fn peer_block_node(&mut self) -> serde_json::Map<String, serde_json::Value> {
        self.owner_spec.disk_fault = None;
        let rule = self.peer_spec.disk_fault.take();
        self.backend.blockdev_options_with(DISK_ID, rule.as_ref())
    }
}

impl Scenario<'_> {
    /// How long the state-file writer of this save holds its data back: [`SAVE_WRITER_HOLD`]
    /// at the first save under `save-writer-late` (reported as injected), else nothing.
    pub(super) fn save_writer_hold(&mut self, p: &mut Progress) -> Option<Duration> {
        if self.cfg.inject != Some(Inject::SaveWriterLate) || self.facts.injected {
            return None;
        }
        self.maybe_inject(p, Inject::SaveWriterLate);
        Some(SAVE_WRITER_HOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_one_spelling_and_armed_ones_say_how() {
        for i in Inject::ALL {
            assert_eq!(Inject::parse(i.as_str()), Some(i));
        }
        assert_eq!(Inject::parse("enospc@nobody"), None);
        let armed: Vec<_> = Inject::ALL
            .into_iter()
            .filter(|i| i.armed_before().is_some())
            .collect();
        assert_eq!(
            armed,
            [
                Inject::EnospcOwner,
                Inject::EnospcPeer,
                Inject::ShmFull,
                Inject::SaveWriterLate
            ]
        );
        assert_eq!(Inject::EnospcPeer.enospc_in(), Some("peer"));
        assert_eq!(Inject::ShmFull.enospc_in(), None);
        const { assert!(SHM_FULL_BYTES < RING_BYTES) };
        assert_eq!(SECTORS_PER_BLOCK, 8);
    }

    #[test]
    fn the_policy_decides_what_virtio_blk_does_with_an_error() {
        assert_eq!(IoErrorPolicy::Fail.disk_errors(), DiskErrors::Report);
        assert_eq!(
            IoErrorPolicy::Wait(Duration::from_secs(1)).disk_errors(),
            DiskErrors::PauseOnNoSpace
        );
    }
}
