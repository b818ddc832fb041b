//! A `#![no_std]` consumer of vrrp-proto (see `Cargo.toml`): firmware
//! without an operating system would export functions like these.
#![no_std]

use core::net::{IpAddr, Ipv4Addr};
use vrrp_proto::{
    Advertisement, Endpoints, Interval, Ipv4ChecksumForm, Priority, Vrid, check_datagram,
    parse_datagram,
};

/// Emits a VRRPv3 advertisement as an IPv4 datagram, checks it and parses
/// it back: 0 when the parsed advertisement is the one sent, a negative
/// number naming the step that failed otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn nostd_check_roundtrip(vrid: u8, priority: u8) -> i32 {
    let Some(vrid) = Vrid::new(vrid) else {
        return -1;
    };
    let Ok(interval) = Interval::from_centis(100) else {
        return -2;
    };
    let Ok(adv) = Advertisement::v3(
        vrid,
        Priority(priority),
        interval,
        [Ipv4Addr::new(10, 99, 0, 100)].into(),
    ) else {
        return -3;
    };
    let to = Endpoints {
        src: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
        dst: IpAddr::V4(vrrp_proto::IPV4_GROUP),
    };
    let mut buf = [0u8; 64];
    let Ok(n) = adv.emit_datagram(&mut buf, to, Ipv4ChecksumForm::PseudoHeader) else {
        return -4;
    };
    let Some(datagram) = buf.get(..n) else {
        return -5;
    };
    if check_datagram(datagram).is_err() {
        return -6;
    }
    match parse_datagram(datagram) {
        Ok(rx) if rx.advertisement == adv => 0,
        Ok(_) => -7,
        Err(_) => -8,
    }
}

/// Checks a received datagram: 0 when it passes every receive rule a
/// packet alone can decide, 1 when it does not.
#[unsafe(no_mangle)]
pub extern "C" fn nostd_check_datagram(first: u8, second: u8) -> i32 {
    let datagram = [first, second];
    i32::from(check_datagram(&datagram).is_err())
}

/// vrrp-proto needs `alloc` (for advertisements of more addresses than
/// fit inline), so the final artifact needs a global allocator. Firmware
/// brings its own heap; this check brings one with no memory at all: the
/// calls above allocate nothing, and an allocation would fail (and abort)
/// rather than touch memory.
struct NoHeap;

// SAFETY: `alloc` never returns memory (a null pointer is the allocation
// failure GlobalAlloc defines), so `dealloc` is never given a block.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static HEAP: NoHeap = NoHeap;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
