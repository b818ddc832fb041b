//! VRRP virtual router as a Sans-IO state machine: [RFC 9568] (VRRPv3,
//! IPv4 and IPv6) and [RFC 3768] (VRRPv2), with the appliance behaviours
//! a redundant PBX pair needs on top.
//!
//! - [`VirtualRouter`]: one VRID and family. Inputs take `now`; outputs are
//!   advertisements ([`VirtualRouter::poll_transmit`]) and [`Event`]s
//!   ([`VirtualRouter::poll_event`]); [`VirtualRouter::poll_timeout`] says
//!   when to call [`VirtualRouter::handle_timeout`]. The driver contract is
//!   on the type.
//! - [`Config`], built and validated by [`Config::builder`]; RFC defaults
//!   (preempt on, accept mode off); [`Config::appliance`] is the manual's
//!   profile (no fail-back, accept mode on).
//! - Appliance behaviours: [`BackupMode`] Active / Passive, the swap
//!   primitives ([`VirtualRouter::arm_takeover`],
//!   [`VirtualRouter::takeover`], [`VirtualRouter::release`]), tracked
//!   objects with weights, startup delay, [`SyncGroup`].
//! - [`Stats`]: one counter per drop reason (vrrp-proto's packet-alone
//!   [`vrrp_proto::DropReason`]s and this crate's [`ConfigDrop`]s) and per
//!   transition.
//! - `sim` (feature `sim`): a deterministic simulator of several engines on
//!   lossy, delayed, partitionable links in virtual time, generic over the
//!   engine and the packets its network carries.
//!
//! This crate needs `std`: the engine takes `std::time::Instant`, the
//! driver's monotonic clock, in every input. The wire codec underneath,
//! vrrp-proto, is `no_std`.
//!
//! RFC 9568 renamed Master to Active (`Active_Down_Interval`,
//! `Active_Adver_Interval`); this crate keeps RFC 3768's Master, as
//! keepalived and the appliance manuals do.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use std::time::{Duration, Instant};
//! use vrrp_fsm::{Config, Event, Reason, State, VirtualRouter};
//! use vrrp_proto::{Interval, Priority, Version, Vrid};
//!
//! let config = Config::builder(Version::V3, Vrid::new(51).unwrap(), Ipv4Addr::new(10, 0, 0, 1).into())
//!     .priority(Priority(150))
//!     .interval(Interval::from_centis(100)?)
//!     .address(Ipv4Addr::new(10, 0, 0, 100))
//!     .build()?;
//! let t0 = Instant::now(); // the driver's clock, never read inside the crate
//! let mut router = VirtualRouter::new(config, t0);
//! router.handle_startup(t0);
//! assert_eq!(router.state(), State::Backup);
//!
//! // Nobody advertises: after Master_Down_Interval the router takes over.
//! let deadline = router.poll_timeout().unwrap();
//! assert_eq!(deadline - t0, Duration::from_micros(3_414_062));
//! router.handle_timeout(deadline);
//! assert_eq!(router.state(), State::Master);
//!
//! let mut buf = [0u8; 64];
//! let tx = router.poll_transmit(&mut buf).unwrap(); // send buf[..tx.len] to tx.dst
//! assert_eq!(tx.dst, std::net::IpAddr::V4(vrrp_proto::IPV4_GROUP));
//! let events: Vec<Event> = std::iter::from_fn(|| router.poll_event()).collect();
//! assert!(events.contains(&Event::StateChange {
//!     from: State::Backup,
//!     to: State::Master,
//!     reason: Reason::MasterDown,
//! }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [RFC 9568]: https://www.rfc-editor.org/rfc/rfc9568
//! [RFC 3768]: https://www.rfc-editor.org/rfc/rfc3768
#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs`: each item behind a feature says which.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod event;
mod group;
mod router;
mod stats;
pub mod timer;

#[cfg(feature = "__fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "sim")]
pub mod sim;

pub use config::{
    AcceptMode, BackupMode, Config, ConfigBuilder, ConfigError, GratuitousConfig, MAX_TRACKS,
    Preempt, Track, TrackId,
};
pub use event::{Event, Gratuitous, Reason, State};
pub use group::SyncGroup;
pub use router::{
    CommandError, EVENT_QUEUE, Input, LinkState, RecvError, Release, Routine, TRANSMIT_QUEUE,
    TrackState, Transmit, VirtualRouter,
};
pub use stats::{ConfigDrop, Stats};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
