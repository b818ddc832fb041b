//! Protocol numbers as checked newtypes.

use core::fmt;
use core::num::NonZeroU8;

use crate::error::BuildError;

/// IP protocol number of VRRP (RFC 3768 §5.2.4, RFC 9568 §5.1.1.3).
pub const IP_PROTOCOL: u8 = 112;

/// TTL / hop limit every VRRP packet is sent with and must arrive with.
pub const TTL: u8 = 255;

/// The IPv4 multicast group of VRRP (RFC 3768 §5.2.2, RFC 9568 §5.1.1.2).
pub const IPV4_GROUP: core::net::Ipv4Addr = core::net::Ipv4Addr::new(224, 0, 0, 18);

/// The IPv6 multicast group of VRRP (RFC 9568 §5.1.2.2).
pub const IPV6_GROUP: core::net::Ipv6Addr =
    core::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// Protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// VRRPv2, RFC 3768: IPv4 only, interval in whole seconds, auth trailer.
    V2,
    /// VRRPv3, RFC 5798 / RFC 9568: IPv4 and IPv6, interval in centiseconds.
    V3,
}

impl Version {
    /// The number carried in the version nibble.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    /// The version for a version nibble, if it is one we speak.
    #[must_use]
    pub const fn from_number(n: u8) -> Option<Version> {
        match n {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }
}

/// Address family of the virtual router: what the IP header and the address
/// list carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: 4-byte addresses.
    Ipv4,
    /// IPv6: 16-byte addresses (VRRPv3 only).
    Ipv6,
}

impl Family {
    /// Bytes one address of this family takes in the address list.
    #[must_use]
    pub const fn address_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }

    /// The family of an address.
    #[must_use]
    pub const fn of(addr: &core::net::IpAddr) -> Family {
        match addr {
            core::net::IpAddr::V4(_) => Family::Ipv4,
            core::net::IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// Virtual Router Identifier, 1–255 (RFC 9568 §5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vrid(NonZeroU8);

impl Vrid {
    /// A VRID; `None` for 0, which no router may use.
    #[must_use]
    pub const fn new(id: u8) -> Option<Vrid> {
        match NonZeroU8::new(id) {
            Some(v) => Some(Vrid(v)),
            None => None,
        }
    }

    /// The number on the wire.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

impl TryFrom<u8> for Vrid {
    type Error = BuildError;
    fn try_from(id: u8) -> Result<Self, Self::Error> {
        Vrid::new(id).ok_or(BuildError::ZeroVrid)
    }
}

impl fmt::Display for Vrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Router priority (RFC 9568 §5.2.4): 255 for the address owner, 1–254 for
/// backups, 0 for a Master that gives up the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(pub u8);

impl Priority {
    /// 0: the Master stops participating; Backups take over after Skew_Time.
    pub const RELEASE: Priority = Priority(0);
    /// 100: the RFC default for a backup router.
    pub const DEFAULT: Priority = Priority(100);
    /// 255: the router owns the virtual addresses.
    pub const OWNER: Priority = Priority(255);

    /// The number on the wire.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether this is the priority-0 release.
    #[must_use]
    pub const fn is_release(self) -> bool {
        self.0 == 0
    }

    /// Whether this is the address owner's 255.
    #[must_use]
    pub const fn is_owner(self) -> bool {
        self.0 == 255
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Advertisement interval, kept in centiseconds for both versions.
///
/// VRRPv2 carries whole seconds (1–255, RFC 3768 §5.3.7); VRRPv3 carries a
/// 12-bit count of centiseconds (1–4095, RFC 9568 §5.2.7). Zero is invalid
/// in both (errata 4024 / 7382).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval(u16);

impl Interval {
    /// Largest VRRPv3 interval: 4095 cs.
    pub const MAX_V3_CENTIS: u16 = 0x0fff;
    /// Largest VRRPv2 interval: 255 s.
    pub const MAX_V2_SECS: u8 = 255;

    /// A VRRPv3 interval in centiseconds, 1–4095.
    ///
    /// # Errors
    /// [`BuildError::Interval`] outside that range.
    pub const fn from_centis(cs: u16) -> Result<Interval, BuildError> {
        if cs == 0 || cs > Self::MAX_V3_CENTIS {
            Err(BuildError::Interval { centis: cs as u32 })
        } else {
            Ok(Interval(cs))
        }
    }

    /// A VRRPv2 interval in whole seconds, 1–255.
    ///
    /// # Errors
    /// [`BuildError::Interval`] for 0.
    pub const fn from_secs(secs: u8) -> Result<Interval, BuildError> {
        if secs == 0 {
            Err(BuildError::Interval { centis: 0 })
        } else {
            Ok(Interval(secs as u16 * 100))
        }
    }

    /// An interval from a checked view: non-zero, and either v3's 12 bits
    /// or v2's seconds × 100.
    pub(crate) const fn from_wire_centis(cs: u16) -> Interval {
        Interval(cs)
    }

    /// Centiseconds.
    #[must_use]
    pub const fn as_centis(self) -> u16 {
        self.0
    }

    /// Microseconds: the unit timer arithmetic uses.
    #[must_use]
    pub const fn as_micros(self) -> u64 {
        self.0 as u64 * 10_000
    }

    /// Whole seconds if this is a whole number of seconds up to 255, the only
    /// intervals VRRPv2 can carry.
    #[must_use]
    pub const fn as_whole_secs(self) -> Option<u8> {
        if self.0.is_multiple_of(100) && self.0 / 100 <= 255 {
            Some((self.0 / 100) as u8)
        } else {
            None
        }
    }

    /// Whether VRRPv3 can carry this interval.
    #[must_use]
    pub const fn fits_v3(self) -> bool {
        self.0 <= Self::MAX_V3_CENTIS
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}0 ms", self.0)
    }
}

/// How a VRRPv3-over-IPv4 checksum is computed.
///
/// RFC 5798 §5.2.8 includes the IPv4 pseudo-header; keepalived and FRR do by
/// default. RFC 9568 and several vendors (keepalived's `v3_checksum_as_v2`)
/// cover the VRRP message only. Receivers here accept either; senders pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ipv4ChecksumForm {
    /// With the IPv4 pseudo-header (keepalived's default, ours too).
    #[default]
    PseudoHeader,
    /// Over the VRRP message alone, as for VRRPv2.
    MessageOnly,
}

/// Which checksum form a received packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumMatch {
    /// The only form the version and family allow (VRRPv2, VRRPv3/IPv6).
    Standard,
    /// VRRPv3/IPv4 with the IPv4 pseudo-header.
    PseudoHeader,
    /// VRRPv3/IPv4 over the message only.
    MessageOnly,
}

impl ChecksumMatch {
    /// The short name tools print: `ok`, `pseudo-header` or `message-only`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ChecksumMatch::Standard => "ok",
            ChecksumMatch::PseudoHeader => "pseudo-header",
            ChecksumMatch::MessageOnly => "message-only",
        }
    }
}
