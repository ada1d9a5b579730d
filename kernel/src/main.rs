//! The baton guest: a PVH-booted unikernel whose block I/O goes through the port redirector.
//!
//! Boot order: [`boot`] (assembly, long mode) → [`kmain`]: own GDT/TSS, COM1 log, start info,
//! clock, interrupts, frames, command line, then the role's main loop. The guest/host contract
//! (command line, `BATON` lines, exit codes) is docs/guest-interface.md.
#![no_std]
#![no_main]

mod blk;
mod boot;
mod clock;
mod control;
mod exit;
mod gdt;
mod hal;
mod handoff;
mod interrupts;
mod memory;
mod pci;
mod peer;
mod serial;
mod shm;
mod stack;
mod workload;

use baton_core::cmdline::{DiskMode, GuestConfig, Role};
use clock::Deadline;
use exit::{ExitCode, exit};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};

/// How long `disk=hotplug` waits for the host to plug a disk.
const HOTPLUG_WAIT_US: u64 = 120_000_000;

/// Rust entry, called by the boot stub with the physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u64) -> ! {
    gdt::init();
    serial::init(log::LevelFilter::Info);
    // SAFETY: `start_info` is what QEMU passed in ebx; nothing has reused low memory yet.
    let info = match unsafe { boot::BootInfo::from_start_info(start_info) } {
        Ok(info) => info,
        Err(e) => panic!("bad PVH start info: {e:?}"),
    };
    clock::init();
    interrupts::init();
    memory::init(&info.ram);
    let cfg = match GuestConfig::parse(&info.cmdline) {
        Ok(cfg) => cfg,
        Err(e) => panic!("bad command line {:?}: {e}", info.cmdline.as_str()),
    };
    log::info!(
        "baton guest {}: {} MiB free, TSC {} MHz",
        cfg,
        memory::free_bytes() >> 20,
        clock::tsc_per_us()
    );
    baton_line!("ready role={} vm={}", cfg.role.as_str(), cfg.vm);
    if cfg.panic {
        panic!("panic requested on the command line");
    }
    match cfg.role {
        Role::Owner => owner(&cfg),
        Role::Peer => peer::run(&cfg),
    }
}

/// The owner: find (or wait for) the disk, put it behind port 1, run the workload, report.
fn owner(cfg: &GuestConfig) -> ! {
    let mut root = pci::root();
    let df = match cfg.disk {
        DiskMode::Boot => find_blk(&root, None).unwrap_or_else(|| panic!("no virtio-blk disk")),
        DiskMode::Hotplug => wait_for_hotplugged_blk(&root),
    };
    let dev = open_blk(&mut root, df);
    let Some(mut stack) = stack::ResourceStack::new() else {
        panic!("no memory for request buffers");
    };
    stack.attach_port1(dev);
    let mut handoff = handoff::OwnerHandoff::new(root, df.device, cfg.vm);
    match workload::run(cfg, &mut stack, &mut handoff) {
        Ok(report) => {
            handoff.flush(2_000_000);
            serial::write_fmt(format_args!("{report}\n"));
            let clean = report.write_errors == 0
                && report.read_mismatches == 0
                && report.duplicates == 0
                && stack.ring_fault.is_none();
            exit(if clean {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Err(e) => panic!("workload failed: {e:?}"),
    }
}

/// The first virtio-blk function on bus 0 (in `slot` if given).
fn find_blk(root: &PciRoot<pci::PortCam>, slot: Option<u8>) -> Option<DeviceFunction> {
    pci::find(root, |df, i| {
        i.vendor_id == 0x1af4
            && (i.device_id == 0x1001 || i.device_id == 0x1042)
            && slot.is_none_or(|s| s == df.device)
    })
    .map(|(df, _)| df)
}

/// Waits, sleeping between polls, for the ACPI hotplug register to report a new virtio-blk.
fn wait_for_hotplugged_blk(root: &PciRoot<pci::PortCam>) -> DeviceFunction {
    baton_line!("waiting-for-disk");
    let deadline = Deadline::after_us(HOTPLUG_WAIT_US);
    let waited = clock::Stopwatch::start();
    loop {
        let up = pci::hotplug::take_up();
        for slot in (0..32u8).filter(|s| up & (1 << s) != 0) {
            log::info!("hotplug: device added in slot {slot}");
            if let Some(df) = find_blk(root, Some(slot)) {
                interrupts::busy();
                return df;
            }
        }
        if deadline.expired() {
            panic!(
                "no disk was hot-plugged within {} s",
                HOTPLUG_WAIT_US / 1_000_000
            );
        }
        interrupts::idle(waited.elapsed_us());
    }
}

/// Programs the BARs of `df` and brings the virtio-blk device up.
fn open_blk(root: &mut PciRoot<pci::PortCam>, df: DeviceFunction) -> blk::BlkDevice {
    if let Err(e) = pci::setup_device(root, df) {
        panic!("pci {df}: cannot place BARs: {e:?}");
    }
    let transport = match PciTransport::new::<hal::BatonHal, _>(root, df) {
        Ok(t) => t,
        Err(e) => panic!("pci {df}: not a usable virtio device: {e:?}"),
    };
    match blk::BlkDevice::new(transport) {
        Ok(dev) => {
            log::info!(
                "pci {df}: virtio-blk, {} blocks of 4 KiB",
                dev.capacity_blocks()
            );
            dev
        }
        Err(e) => panic!("pci {df}: virtio-blk init failed: {e:?}"),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::write_fmt_emergency(format_args!("BATON panic {}\n", info.message()));
    if let Some(loc) = info.location() {
        serial::write_fmt_emergency(format_args!(
            "[ERROR] panic at {}:{}\n",
            loc.file(),
            loc.line()
        ));
    }
    exit(ExitCode::Failure)
}
