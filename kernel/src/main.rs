//! The baton guest: a PVH-booted unikernel whose block I/O goes through the port redirector.
//!
//! Boot order: `platform::boot` (assembly, long mode) → [`kmain`]: own GDT/TSS, COM1 log, start
//! info, clock, interrupts, frames, command line, then the role's main loop (`roles::owner`,
//! `roles::peer`). The guest/host contract (command line, `BATON` lines, exit codes) is
//! docs/guest-interface.md. Everything but the entry and the panic handler is the library
//! (`lib.rs`); this binary builds only for `x86_64-unknown-none` (`cargo kbuild`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use baton_core::cmdline::{DeviceClass, GuestConfig, Role};
    use baton_core::console::{GuestLine, Kind, PREFIX};
    use baton_kernel::platform::exit::{ExitCode, exit};
    use baton_kernel::platform::{boot, clock, gdt, interrupts, memory, serial};
    use baton_kernel::roles::{nic, owner, peer};

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
        serial::print_line(&GuestLine::Ready {
            role: cfg.role,
            vm: cfg.vm,
        });
        if cfg.panic {
            panic!("panic requested on the command line");
        }
        match (cfg.role, cfg.device) {
            (Role::Owner, DeviceClass::Net) => nic::run(&cfg),
            (Role::Owner, DeviceClass::Blk) => owner::run(&cfg),
            (Role::Peer, _) => peer::run(&cfg),
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        // `GuestLine::Panic`'s format, written without the console lock (see `write_fmt_emergency`).
        serial::write_fmt_emergency(format_args!("{PREFIX}{} {}\n", Kind::Panic, info.message()));
        if let Some(loc) = info.location() {
            serial::write_fmt_emergency(format_args!(
                "[ERROR] panic at {}:{}\n",
                loc.file(),
                loc.line()
            ));
        }
        exit(ExitCode::Failure)
    }
}

/// On the host the guest has nothing to run: it boots only under QEMU.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("baton-kernel runs only as a QEMU guest: build it with `cargo kbuild`");
    std::process::exit(2);
}
