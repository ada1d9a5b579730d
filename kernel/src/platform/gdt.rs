//! The kernel's own GDT and TSS, replacing the boot stub's minimal table.
//!
//! Long mode itself needs no TSS, but VM entry does: under KVM, a guest whose task register is
//! unusable has an invalid state, and KVM falls back to emulating it instruction by instruction
//! (measured here: ~19 000 TSC cycles per loop iteration instead of a handful). Loading a real TSS
//! keeps the guest runnable in hardware. The TSS also gives the double-fault handler its own stack.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, GS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK_BYTES: usize = 16 * 1024;

#[repr(align(16))]
struct IstStack(#[allow(dead_code)] [u8; IST_STACK_BYTES]);
static mut DOUBLE_FAULT_STACK: IstStack = IstStack([0; IST_STACK_BYTES]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, [SegmentSelector; 3])> = Once::new();

/// Loads the GDT, reloads every segment register and loads the task register.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let stack = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST)] = stack + IST_STACK_BYTES as u64;
        tss
    });
    let (gdt, [code, data, tss_sel]) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, [code, data, tss_sel])
    });
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded: a 64-bit code segment, a
    // data segment and an available TSS that lives in a `'static`.
    unsafe {
        CS::set_reg(*code);
        SS::set_reg(*data);
        DS::set_reg(*data);
        ES::set_reg(*data);
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(*tss_sel);
    }
}
