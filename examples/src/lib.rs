//! Glue shared by the example programs: what a vendor would otherwise write
//! around the library crates.
//!
//! - [`capture`]: pcap / pcapng files down to IP datagrams.
//! - [`dump`]: the `vrrp-dump` output format.

pub mod capture;
pub mod dump;
