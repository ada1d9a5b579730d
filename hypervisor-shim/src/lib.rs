//! Host side of baton: the hypervisor shim.
//!
//! baton lets a guest that owns a directly assigned device be saved or migrated, following
//! US 20070204265A1 (claim 1): the guest's I/O goes through a port redirector whose first port is the
//! device and whose second port forwards over a shared-memory ring to a peer guest that takes the
//! device over. The shim starts the QEMU processes, speaks QMP, moves the device, and verifies the
//! disk afterwards. See docs/guest-interface.md for the guest⇄host contract.
//!
//! Modules: [`setup`] is what every scenario sets up first (accelerator, workdir, sockets, kernel
//! and QEMU lookup, the shared limits); [`qemu`] builds every QEMU command line and owns QEMU
//! processes; [`vm`] is one guest as the scenarios drive it (process, console, QMP, stderr, exit);
//! [`qmp`] is the QMP client; [`console`] reads the guest's serial console (its `BATON` lines are
//! typed in `baton_core::console`); [`disk`] creates images and verifies them; [`run`] is the
//! direct-I/O scenario; [`migrate`] is the handoff and the migration (with [`channel`], the guests'
//! control channels, and [`shm`], the ring's shared-memory file); [`steps`] is the typed record of
//! each handoff (which step happened when) and [`progress`] the timestamped progress display;
//! [`report`] holds both JSON reports; [`mod@bench`] repeats `run` and `migrate` to measure;
//! [`cli`] is the command line; [`hosts`] simulates machines as network namespaces and [`storage`]
//! exports the disk over NBD from one of them (issue 10, across hosts); [`nic`] is the host end of
//! a guest's NIC (issue 11).

pub mod bench;
pub mod channel;
pub mod cli;
pub mod console;
pub mod cputime;
pub mod disk;
pub mod hosts;
pub mod migrate;
pub mod nic;
pub mod progress;
pub mod qemu;
pub mod qmp;
pub mod report;
pub mod run;
pub mod setup;
pub mod shm;
pub mod soak;
pub mod steps;
pub mod storage;
pub mod vm;
