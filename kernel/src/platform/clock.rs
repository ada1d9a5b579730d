//! Time: the TSC, calibrated once at boot against PIT channel 2.
//!
//! Depends on nothing else in the kernel (the interrupt setup imports [`PIT_HZ`] from here), so
//! the logger can read the clock without an import circle.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

/// PIT input clock, Hz (channel 2 calibrates the TSC here, channel 0 is the interrupt timer).
pub const PIT_HZ: u64 = 1_193_182;

static TSC_PER_US: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and is always available on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate against a 20 ms one-shot of PIT channel 2.
pub fn init() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    const CALIBRATION_US: u64 = 20_000;
    let count = (PIT_HZ * CALIBRATION_US / 1_000_000) as u16;
    // SAFETY: PIT channel 2 gated through port 0x61 (speaker output off); the kernel owns both.
    let (start, end) = unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        Port::<u8>::new(0x43).write(0xb0); // channel 2, lobyte/hibyte, mode 0
        let mut ch2 = Port::<u8>::new(0x42);
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        // Restart the count by toggling the gate.
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01);
        let start = rdtsc();
        let mut spins: u64 = 0;
        while gate.read() & 0x20 == 0 {
            spins += 1;
            if spins > 1 << 32 {
                break;
            }
            core::hint::spin_loop();
        }
        (start, rdtsc())
    };
    let per_us = ((end - start) / CALIBRATION_US).max(1);
    TSC_PER_US.store(per_us, Ordering::Relaxed);
}

/// TSC ticks per microsecond (1 before [`init`]).
pub fn tsc_per_us() -> u64 {
    TSC_PER_US.load(Ordering::Relaxed).max(1)
}

/// Microseconds since [`init`].
pub fn uptime_us() -> u64 {
    rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed)) / tsc_per_us()
}

/// Measures elapsed time from its start.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(u64);

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Stopwatch(rdtsc())
    }

    /// Microseconds since [`start`](Self::start).
    pub fn elapsed_us(&self) -> u64 {
        rdtsc().wrapping_sub(self.0) / tsc_per_us()
    }
}

/// A point in time after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Deadline(rdtsc().saturating_add(us.saturating_mul(tsc_per_us())))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}
