#![no_main]
//! Placeholder until the target lands.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
