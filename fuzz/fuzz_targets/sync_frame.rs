#![no_main]
//! Frame and message decoders, and an established link fed hostile bytes:
//! see `sync_delta::fuzzing::sync_frame` for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_delta::fuzzing::sync_frame(std::time::Instant::now(), data);
});
