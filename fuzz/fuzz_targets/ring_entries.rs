//! Arbitrary bytes as a shared-memory ring region, and as a script of owner/peer actions mixed
//! with hostile writes (see `baton_core::fuzz_entry::fuzz_ring_entries`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_core::fuzz_entry::fuzz_ring_entries(data));
