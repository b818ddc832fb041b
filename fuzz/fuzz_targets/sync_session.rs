#![no_main]
//! Hostile message sequences, timeouts, restarts and power cuts into the
//! sync sessions: see `sync_delta::fuzzing::sync_session` for the
//! properties.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_delta::fuzzing::sync_session(std::time::Instant::now(), data);
});
