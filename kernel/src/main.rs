//! The baton guest: a PVH-booted unikernel whose block I/O goes through the port redirector.
//!
//! Boot order: [`boot`] (assembly, long mode) → [`kmain`]: COM1 log, start info, clock,
//! interrupts, frames, command line, then the role's main loop.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod blk;
mod boot;
mod clock;
mod exit;
mod hal;
mod interrupts;
mod memory;
mod pci;
mod serial;

use exit::{ExitCode, exit};

/// Rust entry, called by the boot stub with the physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u64) -> ! {
    serial::init(log::LevelFilter::Info);
    // SAFETY: `start_info` is what QEMU passed in ebx; nothing has reused low memory yet.
    let info = match unsafe { boot::BootInfo::from_start_info(start_info) } {
        Ok(info) => info,
        Err(e) => panic!("bad PVH start info: {e:?}"),
    };
    clock::init();
    interrupts::init();
    memory::init(&info.ram);
    log::info!(
        "baton guest: cmdline {:?}, {} MiB free, TSC {} MHz",
        info.cmdline.as_str(),
        memory::free_bytes() >> 20,
        clock::tsc_per_us()
    );
    baton_line!("ready");
    let mut root = pci::root();
    for (df, info) in root.enumerate_bus(0) {
        log::info!("pci {df}: {info}");
    }
    let blk = pci::find(&root, |_, i| {
        i.vendor_id == 0x1af4 && (i.device_id == 0x1001 || i.device_id == 0x1042)
    });
    if let Some((df, _)) = blk {
        pci::setup_device(&mut root, df).expect("setup");
        let t =
            virtio_drivers::transport::pci::PciTransport::new::<hal::BatonHal, _>(&mut root, df)
                .expect("transport");
        let mut dev = blk::BlkDevice::new(t).expect("blk");
        log::info!("disk: {} blocks", dev.capacity_blocks());
        for i in 0..8u64 {
            dev.data(i as usize).fill(i as u8 + 1);
            dev.submit(i as usize, blk::Op::Write, i).expect("submit");
        }
        let mut n = 0;
        while n < 8 {
            if let Some((slot, st)) = dev.poll() {
                log::info!("done slot {slot} {st:?}");
                n += 1;
            }
        }
    }
    exit(ExitCode::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::write_fmt_emergency(format_args!("BATON panic {}\n", info.message()));
    if let Some(loc) = info.location() {
        serial::write_fmt_emergency(format_args!("  at {}:{}\n", loc.file(), loc.line()));
    }
    exit(ExitCode::Failure)
}
