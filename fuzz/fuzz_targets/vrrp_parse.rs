#![no_main]
//! Any bytes as a datagram (and as a bare message with metadata): never a
//! panic; whatever parses re-emits and parses again to the same value.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vrrp_proto::fuzzing::vrrp_parse(data));
