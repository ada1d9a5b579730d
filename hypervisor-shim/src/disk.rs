//! Disk images and host-side verification of what the guest wrote.
//!
//! Verification does not trust the guest (architecture invariants I4, I6). The shim chose the seed,
//! VM id, block count, passes and first LBA, so it recomputes the write schedule itself
//! ([`baton_core::workload::Schedule`]); from the guest it takes only *which* writes were acknowledged
//! (seq `s` is acknowledged iff `s <= writes_submitted` and `s` is not a failed seq). It then reads
//! every block of the image and checks the tag, the LBA, the VM id and the whole payload against
//! [`baton_core::tag::fill_block`] regenerated on the host.
//!
//! Definitions (see [`Verification`]): an acknowledged write `w` is *verified* when the block at its
//! LBA holds a valid write of this schedule for that LBA with seq >= `w.seq` (it was written and then,
//! at most, overwritten by a later write); *lost* = acknowledged and not verified; *stale* = an LBA
//! whose block does not hold its last acknowledged write or a later submitted one.
//!
//! When the guest's report is missing (its QEMU died), the acknowledged writes are unknown: the
//! integrity-only check ([`check_integrity`], in `integrity.rs`) still judges every block on its
//! own (a valid tag for its own LBA, the payload CRC, a write this schedule could have submitted).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use baton_core::report::GuestReport;
use baton_core::tag::{self, BLOCK_SIZE};
use baton_core::workload::Schedule;
use serde::Serialize;

mod integrity;

pub use integrity::{Integrity, check_integrity, check_integrity_image};

/// Images are sized in whole MiB.
const IMAGE_ALIGN: u64 = 1 << 20;
/// How many problems are described individually in a [`Verification`].
const MAX_EXAMPLES: usize = 8;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// cannot create the disk image
    #[error("cannot create disk image {path}")]
    Create {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cannot read the disk image
    #[error("cannot read disk image {path}")]
    Read {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// the image is smaller than the workload's range
    #[error("disk image holds {have} bytes, the workload needs {need}")]
    TooSmall {
        /// Bytes in the image.
        have: u64,
        /// Bytes the schedule covers.
        need: u64,
    },
    /// the workload range does not fit in 64 bits
    #[error("workload range (first_lba {first_lba} + {blocks} blocks) is too large")]
    Range {
        /// First LBA.
        first_lba: u64,
        /// Blocks.
        blocks: u64,
    },
}

/// Size in bytes of an image for `blocks` blocks from `first_lba`: rounded up to whole MiB.
pub fn image_size(first_lba: u64, blocks: u64) -> Result<u64, DiskError> {
    let range = || DiskError::Range { first_lba, blocks };
    let bytes = first_lba
        .checked_add(blocks)
        .and_then(|b| b.checked_mul(BLOCK_SIZE as u64))
        .ok_or_else(range)?;
    bytes
        .checked_next_multiple_of(IMAGE_ALIGN)
        .map(|b| b.max(IMAGE_ALIGN))
        .ok_or_else(range)
}

/// A raw image file owned by the shim; removed when dropped unless [`DiskImage::keep`] was called.
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    size: u64,
    keep: bool,
}

impl DiskImage {
    /// Creates `path` (which must not exist) as a zero-filled (sparse) raw image of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self, DiskError> {
        let err = |source| DiskError::Create {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err)?;
        // From here on the guard owns the file, so a failure below still removes it.
        let image = Self {
            path: path.to_path_buf(),
            size,
            keep: false,
        };
        file.set_len(size).map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(image)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Leaves the file in place when the guard is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        if !self.keep {
            // Nothing to do about a failure here; a temp workdir guard removes it anyway.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Which writes the guest acknowledged, taken from its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acks {
    /// Writes submitted: seqs `1..=writes_submitted`.
    pub writes_submitted: u64,
    /// Seqs that completed with an error (sorted).
    pub failed: Vec<u64>,
}

impl Acks {
    /// The acknowledgement set a guest report describes. `None` when the report cannot name every
    /// failed write (more errors than it lists), so the set is unknown.
    pub fn from_report(r: &GuestReport) -> Option<Self> {
        let listed = r.error_seqs();
        if r.write_errors != listed.len() as u64 {
            return None;
        }
        let mut failed = listed.to_vec();
        failed.sort_unstable();
        failed.dedup();
        Some(Self {
            writes_submitted: r.writes_submitted,
            failed,
        })
    }

    /// Whether write `seq` was acknowledged.
    pub fn is_acked(&self, seq: u64) -> bool {
        seq >= 1 && seq <= self.writes_submitted && self.failed.binary_search(&seq).is_err()
    }
}

/// Result of checking an image against a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Blocks read from the image.
    pub blocks_checked: u64,
    /// Acknowledged writes (host-computed from the schedule and the ack set).
    pub writes_acked: u64,
    /// Acknowledged writes found on disk (or superseded by a later write of the same LBA).
    pub writes_verified: u64,
    /// Acknowledged writes not found.
    pub lost: u64,
    /// LBAs not holding their last acknowledged write (nor a later submitted one).
    pub stale: u64,
    /// LBAs holding a submitted but unacknowledged write newer than their last acknowledged one
    /// (legal: e.g. a write that failed after reaching the medium).
    pub newer_unacked: u64,
    /// Non-zero blocks that are not a valid, submitted write of this schedule for their LBA
    /// (inside or outside the workload range).
    pub corrupt_blocks: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
}

impl Verification {
    /// No write lost, no LBA stale, no corrupt block.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.stale == 0 && self.corrupt_blocks == 0
    }

    /// Why this verification fails a run (empty when it passes): anything lost, stale or corrupt,
    /// or nothing acknowledged to check at all.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.clean() {
            failures.push(format!(
                "disk verification: {} lost, {} stale, {} corrupt blocks",
                self.lost, self.stale, self.corrupt_blocks
            ));
        }
        if self.writes_verified == 0 {
            failures.push("disk verification: no acknowledged write to verify".into());
        }
        failures
    }

    fn note(&mut self, msg: impl FnOnce() -> String) {
        if self.problems.len() < MAX_EXAMPLES {
            self.problems.push(msg());
        }
    }
}

/// Verifies the image at `path`.
pub fn verify_image(path: &Path, sched: &Schedule, acks: &Acks) -> Result<Verification, DiskError> {
    let read_err = |source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    verify(BufReader::with_capacity(1 << 20, file), len, sched, acks).map_err(|e| match e {
        DiskError::Read { source, .. } => read_err(source),
        other => other,
    })
}

/// Verifies an image of `len` bytes read from `image`.
pub fn verify<R: Read>(
    mut image: R,
    len: u64,
    sched: &Schedule,
    acks: &Acks,
) -> Result<Verification, DiskError> {
    let range = DiskError::Range {
        first_lba: sched.first_lba,
        blocks: sched.blocks,
    };
    let end_lba = sched.first_lba.checked_add(sched.blocks).ok_or(range)?;
    let need = end_lba
        .checked_mul(BLOCK_SIZE as u64)
        .ok_or(DiskError::Range {
            first_lba: sched.first_lba,
            blocks: sched.blocks,
        })?;
    if len < need {
        return Err(DiskError::TooSmall { have: len, need });
    }
    let total_blocks = len / BLOCK_SIZE as u64;
    let mut v = Verification::default();
    let mut block = [0u8; BLOCK_SIZE];
    let mut expect = [0u8; BLOCK_SIZE];
    for lba in 0..total_blocks {
        image
            .read_exact(&mut block)
            .map_err(|source| DiskError::Read {
                path: PathBuf::new(),
                source,
            })?;
        v.blocks_checked += 1;
        let zero = block.iter().all(|&b| b == 0);
        if lba < sched.first_lba || lba >= end_lba {
            if !zero {
                v.corrupt_blocks += 1;
                v.note(|| format!("lba {lba}: data outside the workload range"));
            }
            continue;
        }
        // The seq this block validly holds, if any.
        let held = if zero {
            None
        } else {
            match valid_write(&block, &mut expect, sched, acks, lba) {
                Ok(seq) => Some(seq),
                Err(why) => {
                    v.corrupt_blocks += 1;
                    v.note(|| format!("lba {lba}: {why}"));
                    None
                }
            }
        };
        let mut last_acked = None;
        for pass in 0..sched.passes {
            let Some(seq) = sched.seq_of(pass, lba) else {
                continue;
            };
            if !acks.is_acked(seq) {
                continue;
            }
            v.writes_acked += 1;
            last_acked = Some(seq);
            if held.is_some_and(|h| h >= seq) {
                v.writes_verified += 1;
            } else {
                v.lost += 1;
                v.note(|| format!("lba {lba}: acknowledged write seq {seq} lost"));
            }
        }
        match (last_acked, held) {
            (Some(want), Some(h)) if h == want => {}
            (Some(want), Some(h)) if h > want => v.newer_unacked += 1,
            (Some(want), h) => {
                v.stale += 1;
                v.note(|| match h {
                    Some(h) => {
                        format!("lba {lba}: stale, holds seq {h}, last acknowledged seq {want}")
                    }
                    None => format!(
                        "lba {lba}: stale, holds no valid write, last acknowledged seq {want}"
                    ),
                });
            }
            (None, Some(_)) => v.newer_unacked += 1,
            (None, None) => {}
        }
    }
    Ok(v)
}

/// The seq of the write `block` validly holds at `lba`, or why it is not valid.
fn valid_write(
    block: &[u8; BLOCK_SIZE],
    expect: &mut [u8; BLOCK_SIZE],
    sched: &Schedule,
    acks: &Acks,
    lba: u64,
) -> Result<u64, String> {
    let t = tag::check_block(block).map_err(|e| e.to_string())?;
    if t.vm != sched.vm {
        return Err(format!("written by vm {}, expected vm {}", t.vm, sched.vm));
    }
    if t.lba != lba {
        return Err(format!("tag names lba {} (misdirected write)", t.lba));
    }
    if sched.lba_of(t.seq) != Some(lba) {
        return Err(format!("seq {} is not a write of this lba", t.seq));
    }
    if t.seq > acks.writes_submitted {
        return Err(format!("seq {} was never submitted", t.seq));
    }
    tag::fill_block(sched.seed, sched.vm, t.seq, lba, expect);
    if block != expect {
        return Err(format!("seq {}: payload differs from the schedule", t.seq));
    }
    Ok(t.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const SCHED: Schedule = Schedule {
        seed: 42,
        vm: 3,
        blocks: 16,
        passes: 3,
        first_lba: 2,
    };

    fn acks_all() -> Acks {
        Acks {
            writes_submitted: SCHED.total_writes(),
            failed: vec![],
        }
    }

    /// The image a perfect device would hold after writes `1..=upto` (in order), skipping `skip`.
    fn image(upto: u64, skip: &[u64]) -> Vec<u8> {
        let len = image_size(SCHED.first_lba, SCHED.blocks).unwrap() as usize;
        let mut img = vec![0u8; len];
        let mut b = [0u8; BLOCK_SIZE];
        for seq in 1..=upto {
            if skip.contains(&seq) {
                continue;
            }
            let lba = SCHED.fill(seq, &mut b).unwrap() as usize;
            img[lba * BLOCK_SIZE..(lba + 1) * BLOCK_SIZE].copy_from_slice(&b);
        }
        img
    }

    fn check(img: &[u8], acks: &Acks) -> Verification {
        verify(Cursor::new(img), img.len() as u64, &SCHED, acks).unwrap()
    }

    fn put(img: &mut [u8], lba: u64, seq: u64) {
        let mut b = [0u8; BLOCK_SIZE];
        tag::fill_block(SCHED.seed, SCHED.vm, seq, lba, &mut b);
        let lba = lba as usize;
        img[lba * BLOCK_SIZE..(lba + 1) * BLOCK_SIZE].copy_from_slice(&b);
    }

    #[test]
    fn sizes_round_up_to_mib() {
        assert_eq!(image_size(0, 1).unwrap(), 1 << 20);
        assert_eq!(image_size(0, 256).unwrap(), 1 << 20);
        assert_eq!(image_size(0, 257).unwrap(), 2 << 20);
        assert_eq!(image_size(1, 256).unwrap(), 2 << 20);
        assert!(image_size(u64::MAX, 2).is_err());
    }

    #[test]
    fn a_perfect_disk_verifies() {
        let img = image(SCHED.total_writes(), &[]);
        let v = check(&img, &acks_all());
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.writes_acked, 48);
        assert_eq!(v.writes_verified, 48);
        assert_eq!(v.blocks_checked, 256);
        assert_eq!(v.newer_unacked, 0);
    }

    #[test]
    fn stale_block_and_lost_write_are_counted() {
        let total = SCHED.total_writes();
        let lba_a = SCHED.first_lba + 5;
        let lba_b = SCHED.first_lba + 9;
        // lba_a: the last pass's write never reached the disk; it still holds pass 1's write.
        let last_a = SCHED.last_seq_of(lba_a).unwrap();
        let mut img = image(total, &[last_a]);
        // lba_b: nothing ever reached the disk.
        img[lba_b as usize * BLOCK_SIZE..(lba_b as usize + 1) * BLOCK_SIZE].fill(0);
        let v = check(&img, &acks_all());
        assert_eq!(v.stale, 2, "{v:?}");
        assert_eq!(v.lost, 1 + 3, "{v:?}");
        assert_eq!(v.writes_verified, 48 - 4);
        assert_eq!(v.writes_acked, 48);
        assert_eq!(v.corrupt_blocks, 0);
        assert!(!v.clean());
        assert!(v.problems.iter().any(|p| p.contains("stale")));
    }

    #[test]
    fn corruption_and_foreign_data_are_caught() {
        let total = SCHED.total_writes();
        let lba = SCHED.first_lba + 3;
        // A flipped payload bit, a block from another VM, a block misdirected to the wrong LBA,
        // and data outside the range.
        let mut img = image(total, &[]);
        img[lba as usize * BLOCK_SIZE + 100] ^= 1;
        let other_vm = SCHED.first_lba + 4;
        let mut b = [0u8; BLOCK_SIZE];
        tag::fill_block(SCHED.seed, SCHED.vm + 1, 1, other_vm, &mut b);
        img[other_vm as usize * BLOCK_SIZE..][..BLOCK_SIZE].copy_from_slice(&b);
        let wrong = SCHED.first_lba + 6;
        let s = SCHED.last_seq_of(SCHED.first_lba + 7).unwrap();
        tag::fill_block(SCHED.seed, SCHED.vm, s, SCHED.first_lba + 7, &mut b);
        img[wrong as usize * BLOCK_SIZE..][..BLOCK_SIZE].copy_from_slice(&b);
        img[0] = 1;
        let v = check(&img, &acks_all());
        assert_eq!(v.corrupt_blocks, 4, "{v:?}");
        assert_eq!(v.stale, 3);
        assert_eq!(v.lost, 9);
    }

    #[test]
    fn failed_and_unsubmitted_writes_are_not_acked() {
        let total = SCHED.total_writes();
        let lba = SCHED.first_lba + 11;
        let last = SCHED.last_seq_of(lba).unwrap();
        // The last write of `lba` failed and did not land: nothing lost, nothing stale.
        let img = image(total, &[last]);
        let acks = Acks {
            writes_submitted: total,
            failed: vec![last],
        };
        let v = check(&img, &acks);
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.writes_acked, 47);
        // It failed but landed anyway: legal, counted separately.
        let img = image(total, &[]);
        let v = check(&img, &acks);
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.newer_unacked, 1);
        // A run cut short after 20 writes: only those are acknowledged.
        let acks = Acks {
            writes_submitted: 20,
            failed: vec![],
        };
        let v = check(&image(20, &[]), &acks);
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.writes_acked, 20);
        // A block holding a write that was never submitted is corrupt.
        let mut img = image(20, &[]);
        let l = SCHED.lba_of(30).unwrap();
        put(&mut img, l, 30);
        let v = check(&img, &acks);
        assert_eq!(v.corrupt_blocks, 1, "{v:?}");
    }

    #[test]
    fn short_images_are_rejected() {
        let e = verify(Cursor::new(vec![0u8; 4096]), 4096, &SCHED, &acks_all()).unwrap_err();
        assert!(matches!(e, DiskError::TooSmall { .. }), "{e}");
    }

    #[test]
    fn image_guard_creates_zeroes_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        {
            let img = DiskImage::create(&p, 1 << 20).unwrap();
            assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 1 << 20);
            let v = verify_image(img.path(), &SCHED, &acks_all()).unwrap();
            assert_eq!(v.lost, 48);
            assert_eq!(v.stale, 16);
            assert!(DiskImage::create(&p, 1).is_err(), "must not clobber");
        }
        assert!(!p.exists());
        let mut img = DiskImage::create(&p, 4096).unwrap();
        img.keep();
        drop(img);
        assert!(p.exists());
    }

    #[test]
    fn acks_from_report() {
        let cfg = baton_core::cmdline::GuestConfig::default();
        let mut r = GuestReport::new(&cfg);
        r.writes_submitted = 10;
        r.record_write_error(4);
        let a = Acks::from_report(&r).unwrap();
        assert!(a.is_acked(3) && !a.is_acked(4) && !a.is_acked(11) && !a.is_acked(0));
        r.write_errors = 2;
        assert!(Acks::from_report(&r).is_none());
    }
}
