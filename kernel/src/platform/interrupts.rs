//! IDT, CPU exceptions and the timer interrupt.
//!
//! Every CPU exception is fatal: its stub records the vector and error code, and
//! `exception_handler` logs the frame and ends the VM with failure. The only device interrupt is
//! the PIT on IRQ 0 (vector 32, through the 8259 PIC), which exists so that an idle guest can
//! `hlt` instead of spinning; its handler only acknowledges the PIC.

use baton_core::console::{Kind, PREFIX};
use baton_core::guest_steps::Wake;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::port::Port;
use x86_64::structures::idt::InterruptDescriptorTable;

use super::clock::PIT_HZ;
use super::{exit, gdt, serial};

/// Timer interrupt vector (PIC master remapped to 32..40).
const TIMER_VECTOR: u8 = 32;
/// COM2's interrupt (IRQ 3): received control bytes wake a halted guest at once.
pub const COM2_IRQ: u8 = 3;
/// Timer interrupts per second while the guest expects work.
pub const TICK_HZ: u64 = 1000;
/// Timer interrupts per second after a long idle stretch: each tick costs the host a wake-up, and
/// 1 kHz of them kept an idle TCG guest near 4 % of a core; 100 Hz keeps it well under 1 %.
pub const IDLE_TICK_HZ: u64 = 100;
/// Idle time after which [`idle`] slows the timer down.
const SLOW_AFTER_US: u64 = 50_000;

static CURRENT_HZ: AtomicU64 = AtomicU64::new(0);

/// Set by the wake stub when COM2 interrupted (bytes from the shim arrived), cleared by
/// [`take_wake`]. A byte store from the stub and an atomic swap here: both are single
/// instructions on x86_64, so the flag needs no lock.
static WAKE_PENDING: AtomicBool = AtomicBool::new(false);

/// COM2 interrupts so far (incremented by the wake stub).
static COM2_WAKES: AtomicU32 = AtomicU32::new(0);
/// How the last `hlt` ended (a [`Wake`] as `u8`: 1 COM2, 2 timer), 0 when the CPU has not halted
/// since [`take_last_wake`] last read it.
static LAST_WAKE: AtomicU8 = AtomicU8::new(0);

/// How the CPU came to run since the last call: [`Wake::Spin`] if it has not halted since, else
/// what ended the last `hlt` (COM2's interrupt or a timer tick). For the step log
/// (`crate::steps`).
pub fn take_last_wake() -> Wake {
    match LAST_WAKE.swap(0, Ordering::Relaxed) {
        1 => Wake::Irq,
        2 => Wake::Tick,
        _ => Wake::Spin,
    }
}

/// Whether COM2 interrupted since the last call: a loop that polls the control channel only now
/// and then (port I/O is a VM exit) polls at once when this says bytes arrived.
pub fn take_wake() -> bool {
    WAKE_PENDING.swap(false, Ordering::Relaxed)
}

static IDT: Once<InterruptDescriptorTable> = Once::new();

// One stub per exception. `err` vectors have the CPU push an error code; the others push 0 so the
// frame layout is the same.
global_asm!(
    ".macro baton_stub vector, has_error",
    ".global baton_exception_\\vector",
    "baton_exception_\\vector:",
    ".if \\has_error == 0",
    "push 0",
    ".endif",
    "push \\vector",
    "jmp baton_exception_common",
    ".endm",
    "baton_stub 0, 0",
    "baton_stub 1, 0",
    "baton_stub 2, 0",
    "baton_stub 3, 0",
    "baton_stub 4, 0",
    "baton_stub 5, 0",
    "baton_stub 6, 0",
    "baton_stub 7, 0",
    "baton_stub 8, 1",
    "baton_stub 10, 1",
    "baton_stub 11, 1",
    "baton_stub 12, 1",
    "baton_stub 13, 1",
    "baton_stub 14, 1",
    "baton_stub 16, 0",
    "baton_stub 17, 1",
    "baton_stub 18, 0",
    "baton_stub 19, 0",
    "baton_stub 20, 0",
    "baton_stub 21, 1",
    // A device IRQ on the master PIC (COM2's): note it for `take_wake`, acknowledge it; the poll
    // loop that resumes reads the device.
    ".global baton_wake_entry",
    "baton_wake_entry:",
    "mov byte ptr [rip + {wake}], 1",
    "lock inc dword ptr [rip + {wakes}]",
    "push rax",
    "mov al, 0x20",
    "out 0x20, al",
    "pop rax",
    "iretq",
    // Spurious APIC interrupts need no EOI.
    ".global baton_spurious_entry",
    "baton_spurious_entry:",
    "iretq",
    "baton_exception_common:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {handler}",
    "ud2",
    // Timer: save the caller-saved registers, count, acknowledge, return.
    ".global baton_timer_entry",
    "baton_timer_entry:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "call {timer}",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    handler = sym exception_handler,
    timer = sym timer_tick,
    wake = sym WAKE_PENDING,
    wakes = sym COM2_WAKES,
);

unsafe extern "C" {
    fn baton_exception_0();
    fn baton_exception_1();
    fn baton_exception_2();
    fn baton_exception_3();
    fn baton_exception_4();
    fn baton_exception_5();
    fn baton_exception_6();
    fn baton_exception_7();
    fn baton_exception_8();
    fn baton_exception_10();
    fn baton_exception_11();
    fn baton_exception_12();
    fn baton_exception_13();
    fn baton_exception_14();
    fn baton_exception_16();
    fn baton_exception_17();
    fn baton_exception_18();
    fn baton_exception_19();
    fn baton_exception_20();
    fn baton_exception_21();
    fn baton_timer_entry();
    fn baton_spurious_entry();
    fn baton_wake_entry();
}

/// What an exception stub leaves on the stack, lowest address first.
#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

extern "C" fn exception_handler(frame: &ExceptionFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    serial::write_fmt_emergency(format_args!(
        "{PREFIX}{} cpu exception {} error={:#x} rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x}\n",
        Kind::Panic,
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.rflags,
        cr2
    ));
    exit::exit(exit::ExitCode::Failure)
}

extern "C" fn timer_tick() {
    // SAFETY: non-specific EOI to the master PIC, which delivered this interrupt.
    unsafe { Port::<u8>::new(0x20).write(0x20) };
}

/// Loads the IDT, remaps the PIC (everything masked but IRQ 0), starts the PIT at [`TICK_HZ`] and
/// enables interrupts.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        let addr = |f: unsafe extern "C" fn()| VirtAddr::new(f as usize as u64);
        // SAFETY: each address is a stub defined above that either ends the VM (exceptions) or
        // saves every register it clobbers and returns with iretq (timer, spurious).
        unsafe {
            idt.divide_error.set_handler_addr(addr(baton_exception_0));
            idt.debug.set_handler_addr(addr(baton_exception_1));
            idt.non_maskable_interrupt
                .set_handler_addr(addr(baton_exception_2));
            idt.breakpoint.set_handler_addr(addr(baton_exception_3));
            idt.overflow.set_handler_addr(addr(baton_exception_4));
            idt.bound_range_exceeded
                .set_handler_addr(addr(baton_exception_5));
            idt.invalid_opcode.set_handler_addr(addr(baton_exception_6));
            idt.device_not_available
                .set_handler_addr(addr(baton_exception_7));
            idt.double_fault
                .set_handler_addr(addr(baton_exception_8))
                .set_stack_index(gdt::DOUBLE_FAULT_IST);
            idt.invalid_tss.set_handler_addr(addr(baton_exception_10));
            idt.segment_not_present
                .set_handler_addr(addr(baton_exception_11));
            idt.stack_segment_fault
                .set_handler_addr(addr(baton_exception_12));
            idt.general_protection_fault
                .set_handler_addr(addr(baton_exception_13));
            idt.page_fault.set_handler_addr(addr(baton_exception_14));
            idt.x87_floating_point
                .set_handler_addr(addr(baton_exception_16));
            idt.alignment_check
                .set_handler_addr(addr(baton_exception_17));
            idt.machine_check.set_handler_addr(addr(baton_exception_18));
            idt.simd_floating_point
                .set_handler_addr(addr(baton_exception_19));
            idt.virtualization
                .set_handler_addr(addr(baton_exception_20));
            idt.cp_protection_exception
                .set_handler_addr(addr(baton_exception_21));
            idt[TIMER_VECTOR].set_handler_addr(addr(baton_timer_entry));
            idt[0xff].set_handler_addr(addr(baton_spurious_entry));
            idt[TIMER_VECTOR + COM2_IRQ].set_handler_addr(addr(baton_wake_entry));
        }
        idt
    });
    idt.load();
    init_lapic_virtual_wire();
    init_pic();
    set_tick_hz(TICK_HZ);
    x86_64::instructions::interrupts::enable();
}

/// Local APIC MMIO base (the reset value of IA32_APIC_BASE; identity-mapped).
const LAPIC_BASE: u64 = 0xfee0_0000;

/// Puts the local APIC in virtual-wire mode so that the 8259's output reaches the CPU: software
/// enable (spurious vector register) and LINT0 as ExtINT, LINT1 as NMI. qboot leaves LINT0 masked,
/// and QEMU then drops PIC interrupts.
fn init_lapic_virtual_wire() {
    let reg = |offset: u64| (LAPIC_BASE + offset) as *mut u32;
    // SAFETY: the local APIC register page, identity-mapped; 32-bit aligned accesses as the APIC
    // requires. The kernel owns the APIC.
    unsafe {
        reg(0xf0).write_volatile(0x1ff); // SVR: enabled, spurious vector 0xff
        reg(0x350).write_volatile(0x700); // LVT LINT0: ExtINT, unmasked
        reg(0x360).write_volatile(0x400); // LVT LINT1: NMI
    }
}

fn init_pic() {
    // SAFETY: the standard 8259 initialisation sequence on the `pc` machine's PIC ports; the
    // kernel owns the PICs.
    unsafe {
        let mut m_cmd = Port::<u8>::new(0x20);
        let mut m_data = Port::<u8>::new(0x21);
        let mut s_cmd = Port::<u8>::new(0xa0);
        let mut s_data = Port::<u8>::new(0xa1);
        m_cmd.write(0x11); // ICW1: init, ICW4 follows
        s_cmd.write(0x11);
        m_data.write(TIMER_VECTOR); // ICW2: vector base
        s_data.write(TIMER_VECTOR + 8);
        m_data.write(0x04); // ICW3: slave on IRQ 2
        s_data.write(0x02);
        m_data.write(0x01); // ICW4: 8086 mode
        s_data.write(0x01);
        m_data.write(0xfe); // mask all but IRQ 0
        s_data.write(0xff);
    }
}

/// Lets master-PIC interrupt `irq` (2..8) through; its handler only acknowledges it, so it just
/// wakes the CPU from `hlt`.
pub fn unmask_wake_irq(irq: u8) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: read-modify-write of the master PIC's mask register, which the kernel owns;
        // interrupts are off so nothing else touches it meanwhile.
        unsafe {
            let mut mask = Port::<u8>::new(0x21);
            let m = mask.read();
            mask.write(m & !(1 << irq));
        }
    });
}

/// Programs PIT channel 0 for `hz` interrupts per second (unless it already runs at that rate).
fn set_tick_hz(hz: u64) {
    if CURRENT_HZ.swap(hz, Ordering::Relaxed) == hz {
        return;
    }
    let divisor = (PIT_HZ / hz).min(u64::from(u16::MAX)) as u16;
    // SAFETY: PIT channel 0, mode 2 (rate generator); the kernel owns the PIT.
    unsafe {
        Port::<u8>::new(0x43).write(0x34);
        let mut ch0 = Port::<u8>::new(0x40);
        ch0.write(divisor as u8);
        ch0.write((divisor >> 8) as u8);
    }
}

/// The line status register of the UART whose received bytes must end a wait (COM2 once the
/// control channel is open), 0 for none.
static WAKE_UART_LSR: AtomicU16 = AtomicU16::new(0);

/// Names the UART at I/O `base` whose received bytes end [`wait_for_interrupt`] (the control
/// channel's): a byte that arrived just before the `hlt` is not left for the next tick.
pub fn set_wake_uart(base: u16) {
    WAKE_UART_LSR.store(base + 5, Ordering::Relaxed);
}

/// Sleeps until the next interrupt (the timer fires every millisecond), and notes which one it
/// was ([`take_last_wake`]). Returns at once when the wake UART ([`set_wake_uart`]) holds a
/// received byte: interrupts are off while its line status is read, so a byte that arrives
/// after that read raises its interrupt after `sti` and ends the `hlt` (`sti; hlt` takes no
/// interrupt in between).
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::disable();
    let lsr = WAKE_UART_LSR.load(Ordering::Relaxed);
    // SAFETY: reading a 16550's line status register (base + 5) has no effect on the UART
    // besides clearing its error bits, which nothing here uses; only the control channel drives
    // that UART and it runs on this CPU, not concurrently.
    let data_ready = lsr != 0 && unsafe { Port::<u8>::new(lsr).read() } & 0x01 != 0;
    if data_ready {
        x86_64::instructions::interrupts::enable();
        return;
    }
    let before = COM2_WAKES.load(Ordering::Relaxed);
    x86_64::instructions::interrupts::enable_and_hlt();
    let by_com2 = COM2_WAKES.load(Ordering::Relaxed) != before;
    LAST_WAKE.store(if by_com2 { 1 } else { 2 }, Ordering::Relaxed);
}

/// Sleeps until the next interrupt after `idle_us` without work: at the fast tick for a while,
/// then at [`IDLE_TICK_HZ`]. Call [`busy`] when work shows up again.
pub fn idle(idle_us: u64) {
    if idle_us > SLOW_AFTER_US {
        set_tick_hz(IDLE_TICK_HZ);
    }
    wait_for_interrupt();
}

/// Work showed up: back to the fast tick, so the next wait ends within a millisecond.
pub fn busy() {
    set_tick_hz(TICK_HZ);
}
