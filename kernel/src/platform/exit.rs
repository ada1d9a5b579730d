//! Leaving QEMU through `isa-debug-exit` (iobase 0xf4): the value `v` written there makes QEMU exit
//! with status `(v << 1) | 1`, so success is 33 and failure 35 (docs/guest-interface.md).

use x86_64::instructions::port::Port;

/// How the guest ends.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
}

/// Ends the VM with `code`.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: writing the isa-debug-exit port only ends the VM; there is no memory effect.
    unsafe { Port::<u32>::new(0xf4).write(code as u32) };
    // Without the device (e.g. a hand-made QEMU command line) park the CPU.
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
