//! Errors and warnings.
//!
//! Every receive-drop rule of RFC 3768 §7.1 and RFC 9568 §7.1 that a packet
//! alone can decide is its own [`ParseError`] variant, and every variant maps
//! to a [`DropReason`] so that a daemon can keep one counter per reason.

use core::fmt;

/// Why a received packet was dropped.
///
/// Each variant is one receive rule; the comment names where the rule comes
/// from. Rules that need configuration (VRID, authentication key, peer list,
/// address list) are vrrp-fsm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The IP header could not be read (too short, bad IHL, bad lengths).
    #[error("malformed ip header")]
    MalformedIp,
    /// The IP payload is not VRRP.
    #[error("ip protocol {protocol} is not vrrp (112)")]
    NotVrrp {
        /// The protocol / next header found.
        protocol: u8,
    },
    /// A fragment: VRRP packets are never fragmented, and a fragment cannot
    /// be checked on its own.
    #[error("fragmented ip datagram")]
    Fragmented,
    /// RFC 3768 §7.1 / RFC 9568 §7.1: the TTL or hop limit must be 255.
    #[error("ttl/hop limit {ttl} is not 255")]
    Ttl {
        /// The TTL or hop limit received.
        ttl: u8,
    },
    /// The destination is a multicast group other than VRRP's
    /// (224.0.0.18 / ff02::12), or a broadcast address.
    #[error("destination is not the vrrp group or a unicast address")]
    Destination,
    /// The source is not a unicast address (multicast, broadcast,
    /// unspecified), or the family of source and destination differ.
    #[error("source is not a unicast address of the datagram's family")]
    Source,
    /// RFC 9568 §5.1.2.1: a multicast IPv6 advertisement comes from a
    /// link-local address.
    #[error("ipv6 source is not link-local")]
    Ipv6SourceNotLinkLocal,
    /// RFC 3768 §7.1 / RFC 9568 §7.1: the packet must hold the whole
    /// message (fixed fields, addresses and, for v2, authentication data).
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header says the message has.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// RFC 3768 §7.1 (version 2) / RFC 9568 §7.1 (version 3).
    #[error("unsupported vrrp version {version}")]
    Version {
        /// The version nibble.
        version: u8,
    },
    /// VRRPv2 is IPv4-only (RFC 3768 §5.2).
    #[error("vrrp version 2 over ipv6")]
    V2OverIpv6,
    /// RFC 3768 §5.3.2 / RFC 9568 §5.2.2: only type 1 (ADVERTISEMENT)
    /// exists; others are discarded.
    #[error("unknown vrrp packet type {kind}")]
    Type {
        /// The type nibble.
        kind: u8,
    },
    /// VRID 0 is not a virtual router (RFC 9568 §5.2.3: 1–255).
    #[error("vrid 0")]
    ZeroVrid,
    /// Address count 0 (RFC 3768 erratum 4024 family, RFC 9568 §5.2.5:
    /// at least one address).
    #[error("address count is 0")]
    ZeroAddressCount,
    /// Advertisement interval 0 (RFC 3768 erratum, RFC 9568 §5.2.7).
    #[error("advertisement interval is 0")]
    ZeroInterval,
    /// RFC 3768 §7.1 / RFC 9568 §7.1: the checksum must verify. For
    /// VRRPv3/IPv4 neither form (with or without pseudo-header) matched.
    #[error("bad checksum {found:#06x}")]
    Checksum {
        /// The checksum field received.
        found: u16,
    },
    /// VRRPv2 authentication type 2 (IP Authentication Header, RFC 2338),
    /// removed in RFC 3768 and refused here.
    #[error("vrrpv2 ip authentication header (auth type 2) is not supported")]
    AuthAh,
    /// A VRRPv2 authentication type other than 0, 1 or 2.
    #[error("unknown vrrpv2 auth type {auth_type}")]
    AuthType {
        /// The auth type received.
        auth_type: u8,
    },
}

/// A counter slot for each [`ParseError`] variant.
///
/// `reason as usize` indexes an array of [`DropReason::COUNT`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
#[allow(missing_docs)] // each mirrors the ParseError variant of the same name
pub enum DropReason {
    MalformedIp,
    NotVrrp,
    Fragmented,
    Ttl,
    Destination,
    Source,
    Ipv6SourceNotLinkLocal,
    Truncated,
    Version,
    V2OverIpv6,
    Type,
    ZeroVrid,
    ZeroAddressCount,
    ZeroInterval,
    Checksum,
    AuthAh,
    AuthType,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 17;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::MalformedIp,
        DropReason::NotVrrp,
        DropReason::Fragmented,
        DropReason::Ttl,
        DropReason::Destination,
        DropReason::Source,
        DropReason::Ipv6SourceNotLinkLocal,
        DropReason::Truncated,
        DropReason::Version,
        DropReason::V2OverIpv6,
        DropReason::Type,
        DropReason::ZeroVrid,
        DropReason::ZeroAddressCount,
        DropReason::ZeroInterval,
        DropReason::Checksum,
        DropReason::AuthAh,
        DropReason::AuthType,
    ];

    /// A stable snake_case name for metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::MalformedIp => "malformed_ip",
            DropReason::NotVrrp => "not_vrrp",
            DropReason::Fragmented => "fragmented",
            DropReason::Ttl => "ttl",
            DropReason::Destination => "destination",
            DropReason::Source => "source",
            DropReason::Ipv6SourceNotLinkLocal => "ipv6_source_not_link_local",
            DropReason::Truncated => "truncated",
            DropReason::Version => "version",
            DropReason::V2OverIpv6 => "v2_over_ipv6",
            DropReason::Type => "type",
            DropReason::ZeroVrid => "zero_vrid",
            DropReason::ZeroAddressCount => "zero_address_count",
            DropReason::ZeroInterval => "zero_interval",
            DropReason::Checksum => "checksum",
            DropReason::AuthAh => "auth_ah",
            DropReason::AuthType => "auth_type",
        }
    }
}

impl ParseError {
    /// The counter this error belongs to.
    #[must_use]
    pub const fn reason(&self) -> DropReason {
        match self {
            ParseError::MalformedIp => DropReason::MalformedIp,
            ParseError::NotVrrp { .. } => DropReason::NotVrrp,
            ParseError::Fragmented => DropReason::Fragmented,
            ParseError::Ttl { .. } => DropReason::Ttl,
            ParseError::Destination => DropReason::Destination,
            ParseError::Source => DropReason::Source,
            ParseError::Ipv6SourceNotLinkLocal => DropReason::Ipv6SourceNotLinkLocal,
            ParseError::Truncated { .. } => DropReason::Truncated,
            ParseError::Version { .. } => DropReason::Version,
            ParseError::V2OverIpv6 => DropReason::V2OverIpv6,
            ParseError::Type { .. } => DropReason::Type,
            ParseError::ZeroVrid => DropReason::ZeroVrid,
            ParseError::ZeroAddressCount => DropReason::ZeroAddressCount,
            ParseError::ZeroInterval => DropReason::ZeroInterval,
            ParseError::Checksum { .. } => DropReason::Checksum,
            ParseError::AuthAh => DropReason::AuthAh,
            ParseError::AuthType { .. } => DropReason::AuthType,
        }
    }
}

/// An advertisement that cannot be built as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// VRID 0.
    #[error("vrid must be 1-255")]
    ZeroVrid,
    /// An interval of 0, or one the version cannot carry (v2: whole seconds
    /// up to 255 s; v3: 10 ms to 40.95 s).
    #[error("advertisement interval of {centis} cs is not valid for this version")]
    Interval {
        /// The interval asked for, in centiseconds.
        centis: u32,
    },
    /// No addresses, or more than the 255 the count field holds.
    #[error("{count} addresses; an advertisement carries 1-255")]
    AddressCount {
        /// The number asked for.
        count: usize,
    },
    /// VRRPv2 carries IPv4 addresses only.
    #[error("vrrpv2 carries ipv4 addresses only")]
    V2Ipv6,
    /// Authentication is a VRRPv2 feature.
    #[error("authentication is vrrpv2-only")]
    V3Auth,
    /// A simple-password key is at most 8 bytes.
    #[error("auth key of {len} bytes; at most 8")]
    AuthKeyLen {
        /// The length given.
        len: usize,
    },
}

/// An advertisement that cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The caller's buffer is too small.
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Source and destination are not of the advertisement's family.
    #[error("source or destination address is not of the advertisement's family")]
    FamilyMismatch,
}

/// Something a received packet got wrong that does not cost it its place.
///
/// Where a strict reading would cut us off from a real peer, we keep the
/// packet and say so here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Warning {
    /// RFC 9568 erratum 8300: a sender must put a link-local address first
    /// in an IPv6 address list. FRR does not; receivers stay tolerant.
    FirstAddressNotLinkLocal = 0,
    /// A unicast IPv6 advertisement from a non-link-local source (unicast
    /// peers across a routed network do this).
    SourceNotLinkLocal = 1,
    /// VRRPv3's reserved bits (RFC 9568 §5.2.6) were not zero; ignored.
    ReservedBitsSet = 2,
    /// VRRPv2 auth type 0 with non-zero authentication data; ignored.
    AuthDataWithoutAuth = 3,
}

impl Warning {
    /// Every warning, in bit order.
    pub const ALL: [Warning; 4] = [
        Warning::FirstAddressNotLinkLocal,
        Warning::SourceNotLinkLocal,
        Warning::ReservedBitsSet,
        Warning::AuthDataWithoutAuth,
    ];

    /// A stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Warning::FirstAddressNotLinkLocal => "first_address_not_link_local",
            Warning::SourceNotLinkLocal => "source_not_link_local",
            Warning::ReservedBitsSet => "reserved_bits_set",
            Warning::AuthDataWithoutAuth => "auth_data_without_auth",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Warning`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Warnings(u8);

impl Warnings {
    /// No warnings.
    pub const NONE: Warnings = Warnings(0);

    /// Adds one.
    pub fn insert(&mut self, w: Warning) {
        self.0 |= 1 << (w as u8);
    }

    /// Whether `w` is set.
    #[must_use]
    pub const fn contains(self, w: Warning) -> bool {
        self.0 & (1 << (w as u8)) != 0
    }

    /// Whether there are none.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The warnings set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Warning> {
        Warning::ALL.into_iter().filter(move |w| self.contains(*w))
    }
}
