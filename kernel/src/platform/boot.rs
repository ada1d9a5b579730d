//! PVH entry: from QEMU's 32-bit protected-mode hand-off to Rust in 64-bit long mode.
//!
//! QEMU finds the entry point through an ELF note of type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`, owner
//! "Xen") and jumps there with paging off, a flat 32-bit code segment, interrupts disabled and
//! `ebx` holding the physical address of the `hvm_start_info` structure (Xen's
//! `arch-x86/hvm/start_info.h`). The stub below zeroes `.bss`, builds identity page tables for the
//! first 4 GiB (RAM and the PCI hole, 2 MiB pages), enables PAE + long mode + paging, loads its own
//! GDT and stack, and calls `kmain` (the binary, `main.rs`) with the start-info address.

use core::arch::global_asm;

/// Bytes of the boot stack (the only stack the kernel has).
pub const STACK_SIZE: usize = 256 * 1024;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* name size ("Xen\0") */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    movl %ebx, %esi                 /* keep hvm_start_info */

    /* zero .bss (page tables and stack live there) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories; 2 MiB identity pages */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    movl $boot_pdpt, %edi
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl $4, %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 1b
    movl $boot_pd, %edi
    movl $0x83, %eax                /* present | writable | page size */
    movl $2048, %ecx
2:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

    movl %cr4, %eax
    orl $(1 << 5), %eax             /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* EFER */
    rdmsr
    orl $(1 << 8), %eax             /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax           /* PG | WP | PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                 /* first argument: hvm_start_info physical address */
    call kmain
3:  hlt
    jmp 3b
    .popsection

    .pushsection .rodata
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .popsection

    .pushsection .bss
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .p2align 4
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    .popsection
    "#,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);

/// `hvm_start_info` magic (`XEN_HVM_START_MAGIC_VALUE`).
const START_MAGIC: u32 = 0x336e_c578;

/// The parts of `hvm_start_info` (version 1) the kernel reads.
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One `hvm_memmap_table_entry` (E820 style).
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// What the kernel keeps of the boot information, copied out of low memory before anything
/// reuses it.
pub struct BootInfo {
    /// The kernel command line (`-append`), lossily truncated to its capacity.
    pub cmdline: heapless::String<512>,
    /// Usable RAM ranges `(start, end)`, physical, end exclusive.
    pub ram: heapless::Vec<(u64, u64), 32>,
}

/// Reasons the start-info block cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// `ebx` did not point at a `hvm_start_info` block.
    #[error("bad start-info magic {0:#x}")]
    BadMagic(u32),
    /// The memory map had no usable RAM.
    #[error("no usable RAM in the memory map")]
    NoRam,
}

impl BootInfo {
    /// Copies what the kernel needs out of the PVH start-info block.
    ///
    /// # Safety
    /// `paddr` must be the address QEMU passed in `ebx`, still identity-mapped and not yet reused.
    pub unsafe fn from_start_info(paddr: u64) -> Result<Self, BootError> {
        // SAFETY: the caller guarantees `paddr` points at QEMU's start-info block, which lies in
        // identity-mapped low memory the kernel has not touched yet.
        let info = unsafe { core::ptr::read_unaligned(paddr as *const StartInfo) };
        if info.magic != START_MAGIC {
            return Err(BootError::BadMagic(info.magic));
        }
        let mut cmdline = heapless::String::new();
        if info.cmdline_paddr != 0 {
            let mut p = info.cmdline_paddr as *const u8;
            loop {
                // SAFETY: the command line is a NUL-terminated string QEMU placed in low memory;
                // we stop at the NUL or at our capacity, whichever comes first.
                let b = unsafe { p.read() };
                if b == 0 || cmdline.push(b as char).is_err() {
                    break;
                }
                // SAFETY: still inside the NUL-terminated string (we have not seen the NUL).
                p = unsafe { p.add(1) };
            }
        }
        let mut ram = heapless::Vec::new();
        for i in 0..info.memmap_entries as usize {
            // SAFETY: `memmap_entries` entries follow `memmap_paddr`, per the PVH ABI.
            let e = unsafe {
                core::ptr::read_unaligned((info.memmap_paddr as *const MemmapEntry).wrapping_add(i))
            };
            if e.kind == E820_RAM && e.size != 0 && ram.push((e.addr, e.addr + e.size)).is_err() {
                break;
            }
        }
        if ram.is_empty() {
            return Err(BootError::NoRam);
        }
        Ok(BootInfo { cmdline, ram })
    }
}
