#![no_main]
//! Hostile bytes and record sequences at a listening and a dialling peer
//! link, before and during the handshake: see
//! `sync_delta::fuzzing::peer_handshake` for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_delta::fuzzing::peer_handshake(std::time::Instant::now(), data);
});
