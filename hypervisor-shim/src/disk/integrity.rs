//! The integrity-only check of an image: what the host can still say about the disk when the
//! owner's report is missing (its QEMU died, or the shim gave up and killed it), so the set of
//! acknowledged writes is unknown (issue 9, "every ending is verified").
//!
//! Without the acknowledgements nothing can be called lost or stale, but every block can still be
//! judged on its own: a zero block was never written; a non-zero block is *intact* when it carries
//! a valid tag ([`baton_core::tag::check_block`]: magic, version, payload CRC) naming this run's VM
//! and its own LBA, with a seq that this schedule writes to that LBA, and its whole payload matches
//! [`baton_core::tag::fill_block`] regenerated on the host. Anything else (a torn or flipped block,
//! another LBA's or another VM's write, a seq never in the schedule, data outside the workload
//! range) is *corrupt*. The per-block test is the full check's ([`super::verify`]), with every
//! write of the schedule counted as possibly submitted.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use baton_core::tag::BLOCK_SIZE;
use baton_core::workload::Schedule;
use serde::Serialize;

use super::{Acks, DiskError, MAX_EXAMPLES, valid_write};

/// Result of the integrity-only check of an image against a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Blocks read from the image (the whole image, in 4 KiB blocks).
    pub blocks_checked: u64,
    /// Non-zero blocks holding a valid write of this schedule for their own LBA.
    pub blocks_intact: u64,
    /// All-zero blocks (never written) inside the workload range.
    pub blocks_unwritten: u64,
    /// Non-zero blocks that are no valid write of this schedule for their LBA (inside or outside
    /// the workload range).
    pub corrupt_blocks: u64,
    /// The highest seq found intact on the disk (0: none), a lower bound of how far the owner got.
    pub highest_seq: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
}

impl Integrity {
    /// No corrupt block.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.corrupt_blocks == 0
    }

    /// Why this check fails a run (empty when every non-zero block is intact).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        if self.clean() {
            Vec::new()
        } else {
            vec![format!(
                "disk integrity check: {} corrupt blocks ({} intact)",
                self.corrupt_blocks, self.blocks_intact
            )]
        }
    }

    fn note(&mut self, msg: impl FnOnce() -> String) {
        if self.problems.len() < MAX_EXAMPLES {
            self.problems.push(msg());
        }
    }
}

/// Checks the integrity of the image at `path` (see the module docs).
///
/// # Errors
/// [`DiskError::Read`] when the image cannot be opened or read, [`DiskError::TooSmall`] when it
/// does not cover the schedule's range, [`DiskError::Range`] when that range overflows.
pub fn check_integrity_image(path: &Path, sched: &Schedule) -> Result<Integrity, DiskError> {
    let read_err = |source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    check_integrity(BufReader::with_capacity(1 << 20, file), len, sched).map_err(|e| match e {
        DiskError::Read { source, .. } => read_err(source),
        other => other,
    })
}

/// Checks the integrity of an image of `len` bytes read from `image` (see the module docs).
///
/// # Errors
/// As [`check_integrity_image`] (a read error carries an empty path).
pub fn check_integrity<R: Read>(
    mut image: R,
    len: u64,
    sched: &Schedule,
) -> Result<Integrity, DiskError> {
    let range = || DiskError::Range {
        first_lba: sched.first_lba,
        blocks: sched.blocks,
    };
    let end_lba = sched
        .first_lba
        .checked_add(sched.blocks)
        .ok_or_else(range)?;
    let need = end_lba.checked_mul(BLOCK_SIZE as u64).ok_or_else(range)?;
    if len < need {
        return Err(DiskError::TooSmall { have: len, need });
    }
    // Any write of the schedule may have been submitted: only the block itself is judged.
    let any = Acks {
        writes_submitted: sched.total_writes(),
        failed: Vec::new(),
    };
    let mut v = Integrity::default();
    let mut block = [0u8; BLOCK_SIZE];
    let mut expect = [0u8; BLOCK_SIZE];
    for lba in 0..len / BLOCK_SIZE as u64 {
        image
            .read_exact(&mut block)
            .map_err(|source| DiskError::Read {
                path: PathBuf::new(),
                source,
            })?;
        v.blocks_checked += 1;
        let inside = lba >= sched.first_lba && lba < end_lba;
        if block.iter().all(|&b| b == 0) {
            v.blocks_unwritten += u64::from(inside);
            continue;
        }
        if !inside {
            v.corrupt_blocks += 1;
            v.note(|| format!("lba {lba}: data outside the workload range"));
            continue;
        }
        match valid_write(&block, &mut expect, sched, &any, lba) {
            Ok(seq) => {
                v.blocks_intact += 1;
                v.highest_seq = v.highest_seq.max(seq);
            }
            Err(why) => {
                v.corrupt_blocks += 1;
                v.note(|| format!("lba {lba}: {why}"));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::image_size;
    use baton_core::tag;
    use std::io::Cursor;

    const SCHED: Schedule = Schedule {
        seed: 7,
        vm: 2,
        blocks: 16,
        passes: 3,
        first_lba: 2,
    };

    /// The image after writes `1..=upto` in order.
    fn image(upto: u64) -> Vec<u8> {
        let len = image_size(SCHED.first_lba, SCHED.blocks).unwrap() as usize;
        let mut img = vec![0u8; len];
        let mut b = [0u8; BLOCK_SIZE];
        for seq in 1..=upto {
            let lba = SCHED.fill(seq, &mut b).unwrap() as usize;
            img[lba * BLOCK_SIZE..(lba + 1) * BLOCK_SIZE].copy_from_slice(&b);
        }
        img
    }

    fn check(img: &[u8]) -> Integrity {
        check_integrity(Cursor::new(img), img.len() as u64, &SCHED).unwrap()
    }

    fn block_mut(img: &mut [u8], lba: u64) -> &mut [u8] {
        let lba = lba as usize;
        &mut img[lba * BLOCK_SIZE..(lba + 1) * BLOCK_SIZE]
    }

    #[test]
    fn a_run_cut_short_is_intact() {
        // Ten writes landed: ten blocks intact, the rest of the range never written.
        let v = check(&image(10));
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.blocks_intact, 10);
        assert_eq!(v.blocks_unwritten, 6);
        assert_eq!(v.blocks_checked, 256);
        assert_eq!(v.highest_seq, 10);
        assert!(v.failures().is_empty());
        // A later pass overwrote some blocks: each still holds one intact write.
        let v = check(&image(20));
        assert_eq!((v.blocks_intact, v.blocks_unwritten), (16, 0), "{v:?}");
    }

    #[test]
    fn a_zero_image_has_nothing_intact_and_nothing_corrupt() {
        let v = check(&image(0));
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.blocks_intact, v.blocks_unwritten), (0, 16));
        assert_eq!(v.highest_seq, 0);
    }

    #[test]
    fn a_corrupted_block_is_corrupt() {
        let mut img = image(SCHED.total_writes());
        block_mut(&mut img, SCHED.first_lba + 3)[100] ^= 1;
        let v = check(&img);
        assert_eq!((v.corrupt_blocks, v.blocks_intact), (1, 15), "{v:?}");
        assert!(v.problems[0].starts_with("lba 5:"), "{v:?}");
        assert_eq!(v.failures().len(), 1);
    }

    #[test]
    fn another_lbas_write_is_corrupt() {
        // A valid block of lba 9, misdirected to lba 6: its tag and CRC are fine, its LBA is not.
        let mut img = image(SCHED.total_writes());
        let seq = SCHED.last_seq_of(9).unwrap();
        let mut b = [0u8; BLOCK_SIZE];
        tag::fill_block(SCHED.seed, SCHED.vm, seq, 9, &mut b);
        block_mut(&mut img, 6).copy_from_slice(&b);
        let v = check(&img);
        assert_eq!((v.corrupt_blocks, v.blocks_intact), (1, 15), "{v:?}");
        assert!(v.problems[0].contains("misdirected"), "{v:?}");
        // Tagged for its own LBA but with a seq this schedule never writes there.
        let other = (1..=SCHED.total_writes())
            .find(|&s| SCHED.lba_of(s) != Some(6))
            .unwrap();
        tag::fill_block(SCHED.seed, SCHED.vm, other, 6, &mut b);
        block_mut(&mut img, 6).copy_from_slice(&b);
        assert_eq!(check(&img).corrupt_blocks, 1);
        // Another VM's write.
        tag::fill_block(SCHED.seed, SCHED.vm + 1, 1, 6, &mut b);
        block_mut(&mut img, 6).copy_from_slice(&b);
        assert_eq!(check(&img).corrupt_blocks, 1);
    }

    #[test]
    fn data_outside_the_range_is_corrupt() {
        let mut img = image(4);
        img[0] = 1;
        let v = check(&img);
        assert_eq!((v.corrupt_blocks, v.blocks_intact), (1, 4), "{v:?}");
    }

    #[test]
    fn short_images_are_rejected() {
        let e = check_integrity(Cursor::new(vec![0u8; 4096]), 4096, &SCHED).unwrap_err();
        assert!(matches!(e, DiskError::TooSmall { .. }), "{e}");
    }
}
