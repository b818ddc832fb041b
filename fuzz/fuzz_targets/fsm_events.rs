#![no_main]
//! `fsm_events`: arbitrary (time step, input) sequences against one
//! virtual router; see `vrrp_fsm::fuzzing::fsm_events` for the properties.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vrrp_fsm::fuzzing::fsm_events(std::time::Instant::now(), data);
});
