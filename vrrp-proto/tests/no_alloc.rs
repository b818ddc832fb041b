//! Checking, parsing (with addresses that fit inline) and emitting never
//! allocate: counted by a global allocator wrapper in this test binary.

// The counting allocator needs `unsafe impl GlobalAlloc`; the library
// itself forbids unsafe code.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};

use vrrp_proto::{
    Addresses, Advertisement, Endpoints, IPV4_GROUP, IPV6_GROUP, Interval, Ipv4ChecksumForm,
    Priority, Vrid, check_datagram, parse_datagram,
};

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations made by the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (ALLOCS.with(Cell::get) - before, r)
}

#[test]
fn check_parse_and_emit_do_not_allocate() {
    let v4 = Advertisement::v3(
        Vrid::new(51).unwrap(),
        Priority(150),
        Interval::from_centis(100).unwrap(),
        [Ipv4Addr::new(10, 99, 0, 100); 4].into(),
    )
    .unwrap();
    let v6 = Advertisement::v3(
        Vrid::new(51).unwrap(),
        Priority(150),
        Interval::from_centis(100).unwrap(),
        Addresses::from([
            "fe80::1".parse::<Ipv6Addr>().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]),
    )
    .unwrap();
    let cases = [
        (
            v4,
            Endpoints {
                src: Ipv4Addr::new(10, 99, 0, 1).into(),
                dst: IPV4_GROUP.into(),
            },
        ),
        (
            v6,
            Endpoints {
                src: "fe80::2".parse::<Ipv6Addr>().unwrap().into(),
                dst: IPV6_GROUP.into(),
            },
        ),
    ];
    let mut buf = [0u8; 256];
    for (adv, ends) in &cases {
        let (n_alloc, n) = allocations(|| {
            adv.emit_datagram(&mut buf, *ends, Ipv4ChecksumForm::PseudoHeader)
                .unwrap()
        });
        assert_eq!(n_alloc, 0, "emit_datagram allocated");
        let (n_alloc, _) = allocations(|| {
            adv.emit(&mut buf[100..], *ends, Ipv4ChecksumForm::MessageOnly)
                .unwrap()
        });
        assert_eq!(n_alloc, 0, "emit allocated");
        let (n_alloc, ok) = allocations(|| check_datagram(&buf[..n]).is_ok());
        assert!(ok);
        assert_eq!(n_alloc, 0, "check_datagram allocated");
        let (n_alloc, rx) = allocations(|| parse_datagram(&buf[..n]).unwrap());
        assert_eq!(n_alloc, 0, "parse_datagram allocated");
        assert_eq!(&rx.advertisement, adv);
    }

    // The counter does see allocations: more addresses than fit inline
    // spill to the heap.
    let many: Vec<Ipv4Addr> = (1..=8).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    let big = Advertisement::v3(
        Vrid::new(1).unwrap(),
        Priority(1),
        Interval::from_centis(1).unwrap(),
        many[..].into(),
    )
    .unwrap();
    let ends = cases[0].1;
    let n = big
        .emit_datagram(&mut buf, ends, Ipv4ChecksumForm::PseudoHeader)
        .unwrap();
    let (n_alloc, _) = allocations(|| parse_datagram(&buf[..n]).unwrap());
    assert!(n_alloc > 0, "the counting allocator counts");
    let (n_alloc, _) = allocations(|| check_datagram(&buf[..n]).unwrap());
    assert_eq!(n_alloc, 0, "the zero-copy view never allocates");
}
