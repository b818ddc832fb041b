//! VRRP wire codec: versions 2 ([RFC 3768]) and 3 ([RFC 5798], [RFC 9568]),
//! IPv4 and IPv6.
//!
//! Two layers, as in smoltcp:
//! - [`Packet`], a checked zero-copy view over a buffer with field
//!   accessors and setters;
//! - [`Advertisement`], an owned value with [`Advertisement::parse`],
//!   [`Advertisement::emit`] into a caller buffer and
//!   [`Advertisement::buffer_len`].
//!
//! On top, the IP layer ([`ip`]): whole datagrams in and out, or bare
//! messages with the receive metadata a socket gives. Every packet-alone
//! receive rule of RFC 3768 §7.1 and RFC 9568 §7.1 is a distinct
//! [`ParseError`] variant with a [`DropReason`] counter slot. Rules that need
//! configuration (VRID configured, key, peers, addresses) are the state
//! machine's (vrrp-fsm).
//!
//! VRRPv3 over IPv4 has two checksum forms in the field (with and without
//! the IPv4 pseudo-header): receiving accepts both and reports which one
//! matched ([`ChecksumMatch`]); sending takes an [`Ipv4ChecksumForm`].
//!
//! `no_std` (with `alloc`, for more than a few addresses) when the default
//! `std` feature is off: nothing in the dependency graph links `std` then,
//! which the repository's CI proves by building a `#![no_std]` static
//! library with its own panic handler on top of it. Checking a packet and
//! emitting one never allocate.
//!
//! ```
//! use core::net::{IpAddr, Ipv4Addr};
//! use vrrp_proto::{Advertisement, Endpoints, Interval, Ipv4ChecksumForm, Priority, Vrid, ip};
//!
//! let adv = Advertisement::v3(
//!     Vrid::new(51).unwrap(),
//!     Priority(150),
//!     Interval::from_centis(100)?,
//!     [Ipv4Addr::new(10, 99, 0, 100)].into(),
//! )?;
//! let to = Endpoints {
//!     src: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
//!     dst: IpAddr::V4(vrrp_proto::IPV4_GROUP),
//! };
//! let mut buf = [0u8; 64];
//! let n = adv.emit_datagram(&mut buf, to, Ipv4ChecksumForm::PseudoHeader)?;
//!
//! let rx = ip::parse_datagram(&buf[..n])?;
//! assert_eq!(rx.advertisement, adv);
//! assert_eq!(rx.checksum, vrrp_proto::ChecksumMatch::PseudoHeader);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [RFC 3768]: https://www.rfc-editor.org/rfc/rfc3768
//! [RFC 5798]: https://www.rfc-editor.org/rfc/rfc5798
//! [RFC 9568]: https://www.rfc-editor.org/rfc/rfc9568
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs`: each item behind a feature says which.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod checksum;
mod error;
pub mod ip;
mod repr;
mod types;
pub mod wire;

#[cfg(feature = "__fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use error::{BuildError, DropReason, EmitError, ParseError, Warning, Warnings};
pub use ip::{
    Checked, Received, RecvMeta, check_datagram, check_message, parse_datagram, parse_message,
};
pub use repr::{Addresses, Advertisement, Auth, Endpoints, INLINE_V4, INLINE_V6};
pub use types::{
    ChecksumMatch, Family, IP_PROTOCOL, IPV4_GROUP, IPV6_GROUP, Interval, Ipv4ChecksumForm,
    Priority, TTL, Version, Vrid,
};
pub use wire::Packet;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
