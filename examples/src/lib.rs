//! Glue shared by the example programs: what a vendor would otherwise write
//! around the library crates.
//!
//! - [`capture`]: pcap / pcapng files down to IP datagrams.
//! - [`dump`]: the `vrrp-dump` output format.
//! - [`config`]: the `node` configuration file; [`keepalived`] converts a
//!   `keepalived.conf` instance to it (`node import-keepalived`).
//! - [`net`]: interfaces, virtual address claims over netlink, gratuitous
//!   ARP / unsolicited NA.
//! - [`vrrp_io`]: raw and UDP VRRP transports.
//! - [`node`]: the node daemon's runtime; [`status`] its HTTP API;
//!   [`phones`] its phone inventory; [`hooks`] how services and phones
//!   are carried out; [`poller`] the engine thread's epoll wait;
//!   [`procedures`] the staging folder, image hand-over, `[hooks]` and
//!   the recent log behind the operator's procedures;
//!   [`metrics`] the API's `GET /metrics`.
//! - [`demo`]: in-process services and simulated phones for the `pair`
//!   demo and tests.
//! - [`peer`]: the `sync` tool's peer link, a thin driver of the pair
//!   engine's `SyncLink` and `SyncWorker` (sockets and threads shared with
//!   [`node`]).

pub mod capture;
pub mod config;
pub mod demo;
pub mod dump;
pub mod hooks;
pub mod keepalived;
mod link_io;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peer;
pub mod phones;
pub mod poller;
pub mod procedures;
pub mod status;
pub mod vrrp_io;
mod watch;
pub mod words;
