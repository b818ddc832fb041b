#![no_main]
//! Arbitrary input sequences never panic the orchestrator and never make it
//! emit a command under a stale epoch (see `failover_orchestrator::fuzzing`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    failover_orchestrator::fuzzing::orchestrator_inputs(std::time::Instant::now(), data);
});
