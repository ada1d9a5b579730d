//! Arbitrary bytes through the control-channel frame decoder, a shim-side endpoint and the
//! handoff gate (see `baton_core::fuzz_entry::fuzz_control_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_core::fuzz_entry::fuzz_control_decoder(data));
