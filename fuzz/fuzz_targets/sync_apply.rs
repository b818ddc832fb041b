#![no_main]
//! A file's new version fetched as a delta through the real source and
//! replica, and hostile data for it: see `sync_delta::fuzzing::sync_apply`
//! for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_delta::fuzzing::sync_apply(std::time::Instant::now(), data);
});
