//! The owner with a NIC (`device=net`, issue 11): find the virtio-net function, bring it up as
//! a [`VirtioNic`], run the numbered-frame workload ([`crate::nicload`]) until it is done or
//! nothing moved for [`STALL_US`], print `BATON net-result`, release the NIC and exit (success
//! only when every frame went out and every frame of the host came in once and in order).

use crate::nicload::NicWorkload;
use crate::platform::exit::{ExitCode, exit};
use crate::platform::hal::BatonHal;
use crate::platform::{clock, pci, pci_cam, serial};
use crate::ports::nic::{NicPort, VirtioNic};
use baton_core::cmdline::GuestConfig;
use baton_core::console::GuestLine;
use virtio_drivers::transport::pci::PciTransport;

/// The workload gives up when nothing moved for this long (µs): a frame lost on either side
/// would otherwise leave it waiting for ever; the host's check names what is missing.
pub const STALL_US: u64 = 20_000_000;

/// Runs the NIC workload; never returns.
pub fn run(cfg: &GuestConfig) -> ! {
    let mut root = pci_cam::root();
    pci_cam::learn_bus(&mut root);
    let Some(df) = pci::find_net(&root) else {
        panic!("no virtio-net NIC");
    };
    if let Err(e) = pci_cam::setup_device(&mut root, df) {
        panic!("pci {df}: cannot place BARs: {e:?}");
    }
    let transport = match PciTransport::new::<BatonHal, _>(&mut root, df) {
        Ok(t) => t,
        Err(e) => panic!("pci {df}: not a usable virtio device: {e:?}"),
    };
    pci_cam::enable(&mut root, df);
    let mut nic = match VirtioNic::<BatonHal, _>::new(transport) {
        Ok(n) => n,
        Err(e) => panic!("pci {df}: virtio-net init failed: {e}"),
    };
    let mac = nic.mac();
    log::info!(
        "pci {df}: virtio-net, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}; {} frames each way, window {}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        cfg.frames,
        cfg.qd
    );
    let mut w = NicWorkload::<BatonHal>::new(cfg.frames, usize::from(cfg.qd), cfg.seed, mac);
    if let Err(e) = w.start(&mut nic, clock::uptime_us()) {
        panic!("virtio-net: cannot post receive buffers: {e}");
    }
    serial::print_line(&GuestLine::FirstIo);
    while !w.done() {
        let now = clock::uptime_us();
        match w.step(&mut nic, now) {
            Ok(true) => {}
            Ok(false) if now - w.last_progress_us() > STALL_US => {
                log::error!(
                    "net: nothing moved for {} s, giving up",
                    STALL_US / 1_000_000
                );
                break;
            }
            Ok(false) => core::hint::spin_loop(),
            Err(e) => {
                log::error!("net: {e}");
                break;
            }
        }
    }
    let result = w.result();
    serial::print_line(&GuestLine::NetResult(result));
    let clean = w.clean();
    nic.release();
    exit(if clean {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}
