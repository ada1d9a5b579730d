//! Arbitrary bytes as a `-netdev stream` byte stream through the stream decoder, the numbered
//! frame parser and the sequence check (see `baton_core::fuzz_entry::fuzz_net_frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_core::fuzz_entry::fuzz_net_frames(data));
