//! Arbitrary bytes through the parser of the guest's `BATON` console lines, checking that every
//! line it accepts prints back as the same line (see `baton_core::fuzz_entry::fuzz_guest_lines`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_core::fuzz_entry::fuzz_guest_lines(data));
