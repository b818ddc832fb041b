#![no_main]
//! Delta apply against a base, and the diff/apply round trip: see
//! `sync_delta::fuzzing::sync_apply` for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sync_delta::fuzzing::sync_apply(data));
