//! The deterministic write schedule of the guest workload.
//!
//! The owner guest writes `blocks * passes` tagged blocks ([`crate::tag`]). Write `seq` (1-based)
//! belongs to pass `(seq - 1) / blocks`; every pass writes each LBA of
//! `[first_lba, first_lba + blocks)` exactly once, in an order that is a pseudo-random
//! permutation chosen per pass: index `i` of pass `p` goes to `first_lba + (a_p * i + b_p) mod
//! blocks`, with `gcd(a_p, blocks) = 1` so the map is a bijection, and `(a_p, b_p)` derived from
//! `(seed, p)`. Consecutive passes overwrite the same LBAs in a different order, so a request
//! reordered across the handoff (invariant I3/I4) leaves a stale tag on disk.
//!
//! Everything is computed on demand: no tables, a bounded amount of arithmetic per call, so the
//! guest can call it for every request and the host verifier can recompute the expected disk.

use crate::tag::{self, BLOCK_SIZE};

/// The write schedule of one workload run (from [`crate::cmdline::GuestConfig::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Seed of the permutations and of the block payloads.
    pub seed: u64,
    /// VM id written into every tag.
    pub vm: u32,
    /// Number of distinct LBAs written.
    pub blocks: u64,
    /// How many times each LBA is written.
    pub passes: u32,
    /// First LBA (in 4 KiB blocks) used.
    pub first_lba: u64,
}

/// The affine permutation `i -> (a * i + b) mod n` of one pass.
#[derive(Debug, Clone, Copy)]
struct Perm {
    a: u64,
    b: u64,
    n: u64,
}

fn gcd(mut x: u64, mut y: u64) -> u64 {
    while y != 0 {
        (x, y) = (y, x % y);
    }
    x
}

/// Inverse of `a` modulo `n`, for `gcd(a, n) == 1` and `n >= 1`.
fn mod_inverse(a: u64, n: u64) -> u64 {
    let (mut old_r, mut r) = (i128::from(a), i128::from(n));
    let (mut old_s, mut s) = (1i128, 0i128);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    // rem_euclid of a value in (-n, n) by n > 0 lies in [0, n), so it fits a u64.
    old_s.rem_euclid(i128::from(n)) as u64
}

impl Perm {
    fn new(seed: u64, pass: u64, n: u64) -> Perm {
        let h = tag::mix64(seed ^ tag::mix64(pass.wrapping_add(0x5043_4152_4F54_4142)));
        if n <= 1 {
            return Perm {
                a: 1,
                b: 0,
                n: n.max(1),
            };
        }
        // Step up from a random start to the next multiplier coprime to n. `a = 1` is always
        // coprime, so this ends within n steps; in practice within a few dozen (Jacobsthal's
        // function is small for n <= 2^20).
        let mut a = h % n;
        while a == 0 || gcd(a, n) != 1 {
            a = if a + 1 >= n { 1 } else { a + 1 };
        }
        let b = tag::mix64(h) % n;
        Perm { a, b, n }
    }

    fn apply(&self, i: u64) -> u64 {
        ((u128::from(self.a) * u128::from(i) + u128::from(self.b)) % u128::from(self.n)) as u64
    }

    fn invert(&self, x: u64) -> u64 {
        let inv = mod_inverse(self.a, self.n);
        let diff = (u128::from(x) + u128::from(self.n) - u128::from(self.b)) % u128::from(self.n);
        ((diff * u128::from(inv)) % u128::from(self.n)) as u64
    }
}

impl Schedule {
    /// Total number of writes, `blocks * passes` (saturating; never overflows in practice since
    /// the command line bounds both).
    #[must_use]
    pub fn total_writes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.passes))
    }

    /// The 0-based pass that write `seq` belongs to; `None` if `seq` is not in `1..=total`.
    #[must_use]
    pub fn pass_of(&self, seq: u64) -> Option<u32> {
        if seq == 0 || seq > self.total_writes() {
            return None;
        }
        u32::try_from((seq - 1) / self.blocks).ok()
    }

    /// The LBA that write `seq` targets; `None` if `seq == 0` or `seq > total_writes()`.
    #[must_use]
    pub fn lba_of(&self, seq: u64) -> Option<u64> {
        let pass = self.pass_of(seq)?;
        let i = (seq - 1) % self.blocks;
        let perm = Perm::new(self.seed, u64::from(pass), self.blocks);
        self.first_lba.checked_add(perm.apply(i))
    }

    /// The write of pass `pass` (0-based) that targets `lba`; `None` if either is out of range.
    #[must_use]
    pub fn seq_of(&self, pass: u32, lba: u64) -> Option<u64> {
        if pass >= self.passes || self.blocks == 0 {
            return None;
        }
        let offset = lba.checked_sub(self.first_lba)?;
        if offset >= self.blocks {
            return None;
        }
        let perm = Perm::new(self.seed, u64::from(pass), self.blocks);
        let i = perm.invert(offset);
        u64::from(pass)
            .checked_mul(self.blocks)?
            .checked_add(i)?
            .checked_add(1)
    }

    /// The last write the schedule makes to `lba` (what the disk holds after a complete run).
    #[must_use]
    pub fn last_seq_of(&self, lba: u64) -> Option<u64> {
        self.seq_of(self.passes.checked_sub(1)?, lba)
    }

    /// Fills `block` with the data of write `seq` (see [`tag::fill_block`]) and returns its LBA;
    /// `None` (block untouched) if `seq` is out of range.
    pub fn fill(&self, seq: u64, block: &mut [u8; BLOCK_SIZE]) -> Option<u64> {
        let lba = self.lba_of(seq)?;
        tag::fill_block(self.seed, self.vm, seq, lba, block);
        Some(lba)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sched(seed: u64, blocks: u64, passes: u32, first_lba: u64) -> Schedule {
        Schedule {
            seed,
            vm: 1,
            blocks,
            passes,
            first_lba,
        }
    }

    fn check_coverage(s: &Schedule) {
        let mut seen = std::vec![0u32; s.blocks as usize];
        for pass in 0..s.passes {
            for i in 0..s.blocks {
                let seq = u64::from(pass) * s.blocks + i + 1;
                assert_eq!(s.pass_of(seq), Some(pass));
                let lba = s.lba_of(seq).unwrap();
                assert!(lba >= s.first_lba && lba < s.first_lba + s.blocks);
                let off = (lba - s.first_lba) as usize;
                seen[off] += 1;
                assert_eq!(seen[off], pass + 1, "lba {lba} twice in pass {pass}");
                assert_eq!(s.seq_of(pass, lba), Some(seq));
            }
        }
        assert!(seen.iter().all(|&c| c == s.passes));
    }

    #[test]
    fn each_lba_once_per_pass() {
        for blocks in [1, 2, 3, 7, 30, 64, 255, 256, 1000, 4096] {
            check_coverage(&sched(1, blocks, 4, 100));
        }
        check_coverage(&sched(0xDEAD_BEEF, 510_510, 2, 0));
    }

    #[test]
    fn bounds() {
        let s = sched(1, 256, 4, 0);
        assert_eq!(s.total_writes(), 1024);
        assert_eq!(s.lba_of(0), None);
        assert!(s.lba_of(1024).is_some());
        assert_eq!(s.lba_of(1025), None);
        assert_eq!(s.seq_of(4, 0), None);
        assert_eq!(s.seq_of(0, 256), None);
        let mut block = [0u8; BLOCK_SIZE];
        assert_eq!(s.fill(0, &mut block), None);
        assert_eq!(block, [0u8; BLOCK_SIZE]);
        let empty = sched(1, 0, 4, 0);
        assert_eq!(empty.total_writes(), 0);
        assert_eq!(empty.lba_of(1), None);
        assert_eq!(empty.last_seq_of(0), None);
    }

    #[test]
    fn passes_differ() {
        let s = sched(1, 256, 4, 0);
        let order = |p: u64| {
            (1..=256)
                .map(|i| s.lba_of(p * 256 + i).unwrap())
                .collect::<Vec<_>>()
        };
        for p in 0..3 {
            assert_ne!(order(p), order(p + 1));
        }
        let other = sched(2, 256, 4, 0);
        let other_order = (1..=256)
            .map(|i| other.lba_of(i).unwrap())
            .collect::<Vec<_>>();
        assert_ne!(order(0), other_order);
    }

    #[test]
    fn fill_tags_the_write() {
        let s = Schedule {
            seed: 9,
            vm: 5,
            blocks: 16,
            passes: 2,
            first_lba: 1 << 20,
        };
        let mut block = [0u8; BLOCK_SIZE];
        for seq in 1..=s.total_writes() {
            let lba = s.fill(seq, &mut block).unwrap();
            let tag = tag::check_block(&block).unwrap();
            assert_eq!((tag.vm, tag.seq, tag.lba), (5, seq, lba));
        }
        for lba in s.first_lba..s.first_lba + 16 {
            let last = s.last_seq_of(lba).unwrap();
            assert!(last > 16 && last <= 32);
            assert_eq!(s.lba_of(last), Some(lba));
        }
    }

    #[test]
    fn mod_inverse_works() {
        for n in [2u64, 3, 10, 97, 256, 1 << 20] {
            for a in 1..n.min(300) {
                if gcd(a, n) == 1 {
                    assert_eq!(
                        (u128::from(a) * u128::from(mod_inverse(a, n))) % u128::from(n),
                        1 % u128::from(n)
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn lba_seq_inverse(seed: u64, blocks in 1u64..=1_048_576, passes in 1u32..=64, first_lba in 0u64..1 << 40, k: u64) {
            let s = sched(seed, blocks, passes, first_lba);
            let seq = k % s.total_writes() + 1;
            let lba = s.lba_of(seq).unwrap();
            prop_assert!(lba >= first_lba && lba < first_lba + blocks);
            prop_assert_eq!(s.seq_of(s.pass_of(seq).unwrap(), lba), Some(seq));
        }

        #[test]
        fn never_panics(seed: u64, vm: u32, blocks: u64, passes: u32, first_lba: u64, seq: u64, pass: u32, lba: u64) {
            let s = Schedule { seed, vm, blocks, passes, first_lba };
            let _ = s.total_writes();
            let _ = s.lba_of(seq);
            let _ = s.seq_of(pass, lba);
            let _ = s.last_seq_of(lba);
        }
    }
}
