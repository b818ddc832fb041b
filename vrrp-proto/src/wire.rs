//! The zero-copy view of a VRRP message.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v2: |  Auth Type  |  Adver Int   |          Checksum            |
//! v3: |(rsvd) |  Max Adver Int     |          Checksum            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 IPvX Address(es) (count × 4 or 16 bytes)       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v2 only: Authentication Data (8 bytes)
//! ```
//!
//! [`Packet::new_checked`] applies every rule a message alone can decide
//! except the checksum, which needs the IP addresses (see [`crate::ip`]).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{ParseError, Warning, Warnings};
use crate::types::{Family, Version};

/// Field offsets and sizes.
pub mod field {
    use core::ops::Range;
    /// Version (high nibble) and type (low nibble).
    pub const VER_TYPE: usize = 0;
    /// Virtual router id.
    pub const VRID: usize = 1;
    /// Priority.
    pub const PRIORITY: usize = 2;
    /// Count of addresses.
    pub const COUNT: usize = 3;
    /// v2: authentication type.
    pub const AUTH_TYPE: usize = 4;
    /// v2: advertisement interval in seconds.
    pub const ADVER_INT_V2: usize = 5;
    /// v3: reserved (4 bits) and max advertisement interval (12 bits).
    pub const ADVER_INT_V3: Range<usize> = 4..6;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 6..8;
    /// Start of the address list.
    pub const ADDRESSES: usize = 8;
    /// Bytes of v2 authentication data after the addresses.
    pub const AUTH_DATA_LEN: usize = 8;
}

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = field::ADDRESSES;

/// The type of an advertisement, the only VRRP packet type.
pub const TYPE_ADVERTISEMENT: u8 = 1;

/// Length of the whole message for a version, family and address count.
#[must_use]
pub const fn message_len(version: Version, family: Family, count: u8) -> usize {
    let auth = match version {
        Version::V2 => field::AUTH_DATA_LEN,
        Version::V3 => 0,
    };
    HEADER_LEN + count as usize * family.address_len() + auth
}

/// A checked view of a VRRP message in a buffer.
///
/// The buffer may hold trailing bytes after the message (Ethernet padding,
/// vendor trailers); [`Packet::trailing_len`] reports them.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: Family,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks; accessors may panic on a short buffer. For
    /// writing into a buffer of [`message_len`] bytes.
    pub const fn new_unchecked(buffer: T, family: Family) -> Packet<T> {
        Packet { buffer, family }
    }

    /// A view of a message of `family` (the family of the IP header it came
    /// in), checked against every rule that needs neither configuration nor
    /// the IP addresses.
    ///
    /// # Errors
    /// The [`ParseError`] of the first rule broken, in the order: length of
    /// the fixed header, version, version/family, type, VRID, address count,
    /// whole message present, interval, v2 auth type.
    pub fn new_checked(buffer: T, family: Family) -> Result<Packet<T>, ParseError> {
        let p = Packet { buffer, family };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), ParseError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated {
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        let version = Version::from_number(b[field::VER_TYPE] >> 4).ok_or(ParseError::Version {
            version: b[field::VER_TYPE] >> 4,
        })?;
        if version == Version::V2 && self.family == Family::Ipv6 {
            return Err(ParseError::V2OverIpv6);
        }
        let kind = b[field::VER_TYPE] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(ParseError::Type { kind });
        }
        if b[field::VRID] == 0 {
            return Err(ParseError::ZeroVrid);
        }
        let count = b[field::COUNT];
        if count == 0 {
            return Err(ParseError::ZeroAddressCount);
        }
        let need = message_len(version, self.family, count);
        if b.len() < need {
            return Err(ParseError::Truncated {
                need,
                have: b.len(),
            });
        }
        if self.interval_raw() == 0 {
            return Err(ParseError::ZeroInterval);
        }
        if version == Version::V2 {
            match b[field::AUTH_TYPE] {
                0 | 1 => {}
                2 => return Err(ParseError::AuthAh),
                auth_type => return Err(ParseError::AuthType { auth_type }),
            }
        }
        Ok(())
    }

    /// Warnings a checked message alone can raise (reserved bits, stray
    /// authentication data, erratum 8300's first-address rule).
    #[must_use]
    pub fn warnings(&self) -> Warnings {
        let mut w = Warnings::NONE;
        let b = self.buffer.as_ref();
        match self.version() {
            Version::V3 => {
                if b[field::ADVER_INT_V3.start] & 0xf0 != 0 {
                    w.insert(Warning::ReservedBitsSet);
                }
            }
            Version::V2 => {
                if self.auth_type() == Some(0) && self.auth_data().is_some_and(|d| d != [0; 8]) {
                    w.insert(Warning::AuthDataWithoutAuth);
                }
            }
        }
        if self.family == Family::Ipv6 {
            // RFC 9568 erratum 8300: the first address is the link-local one.
            if self
                .ipv6_addresses()
                .next()
                .is_some_and(|a| !a.is_unicast_link_local())
            {
                w.insert(Warning::FirstAddressNotLinkLocal);
            }
        }
        w
    }

    /// The family the view was made for.
    #[must_use]
    pub fn family(&self) -> Family {
        self.family
    }

    /// The whole buffer, trailing bytes included.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Protocol version. (An unchecked view with a version nibble other
    /// than 2 reads as version 3.)
    #[must_use]
    #[inline]
    pub fn version(&self) -> Version {
        if self.buffer.as_ref()[field::VER_TYPE] >> 4 == 2 {
            Version::V2
        } else {
            Version::V3
        }
    }

    /// The type nibble (1 on every checked view).
    #[must_use]
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & 0x0f
    }

    /// Virtual router id as on the wire (1–255 on a checked view).
    #[must_use]
    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    /// Priority.
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    /// Number of addresses.
    #[must_use]
    pub fn count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// v2 authentication type; `None` for v3.
    #[must_use]
    pub fn auth_type(&self) -> Option<u8> {
        match self.version() {
            Version::V2 => Some(self.buffer.as_ref()[field::AUTH_TYPE]),
            Version::V3 => None,
        }
    }

    /// The interval field as on the wire: seconds (v2) or centiseconds (v3,
    /// reserved bits masked off).
    #[must_use]
    pub fn interval_raw(&self) -> u16 {
        let b = self.buffer.as_ref();
        match self.version() {
            Version::V2 => u16::from(b[field::ADVER_INT_V2]),
            Version::V3 => {
                u16::from_be_bytes([
                    b[field::ADVER_INT_V3.start],
                    b[field::ADVER_INT_V3.start + 1],
                ]) & 0x0fff
            }
        }
    }

    /// The interval in centiseconds for both versions.
    #[must_use]
    pub fn interval_centis(&self) -> u16 {
        match self.version() {
            Version::V2 => self.interval_raw() * 100,
            Version::V3 => self.interval_raw(),
        }
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// Length of the message: header, addresses and (v2) auth data.
    #[must_use]
    pub fn message_len(&self) -> usize {
        message_len(self.version(), self.family, self.count())
    }

    /// The message bytes, without trailing bytes.
    #[must_use]
    pub fn message(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.message_len()]
    }

    /// Bytes after the message in the buffer.
    #[must_use]
    pub fn trailing_len(&self) -> usize {
        self.buffer.as_ref().len() - self.message_len()
    }

    /// The raw address list.
    #[must_use]
    pub fn address_bytes(&self) -> &[u8] {
        let end = field::ADDRESSES + usize::from(self.count()) * self.family.address_len();
        &self.buffer.as_ref()[field::ADDRESSES..end]
    }

    /// IPv4 addresses (empty for an IPv6 view).
    pub fn ipv4_addresses(&self) -> impl ExactSizeIterator<Item = Ipv4Addr> + '_ {
        let bytes = match self.family {
            Family::Ipv4 => self.address_bytes(),
            Family::Ipv6 => &[],
        };
        bytes
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
    }

    /// IPv6 addresses (empty for an IPv4 view).
    pub fn ipv6_addresses(&self) -> impl ExactSizeIterator<Item = Ipv6Addr> + '_ {
        let bytes = match self.family {
            Family::Ipv6 => self.address_bytes(),
            Family::Ipv4 => &[],
        };
        bytes.chunks_exact(16).map(|c| {
            let mut a = [0u8; 16];
            a.copy_from_slice(c);
            Ipv6Addr::from(a)
        })
    }

    /// v2 authentication data; `None` for v3.
    #[must_use]
    pub fn auth_data(&self) -> Option<[u8; 8]> {
        match self.version() {
            Version::V2 => {
                let start = field::ADDRESSES + usize::from(self.count()) * 4;
                let mut d = [0u8; 8];
                d.copy_from_slice(&self.buffer.as_ref()[start..start + field::AUTH_DATA_LEN]);
                Some(d)
            }
            Version::V3 => None,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version and type (type is always ADVERTISEMENT).
    pub fn set_version(&mut self, version: Version) {
        self.buffer.as_mut()[field::VER_TYPE] = (version.number() << 4) | TYPE_ADVERTISEMENT;
    }

    /// Sets the VRID.
    pub fn set_vrid(&mut self, vrid: u8) {
        self.buffer.as_mut()[field::VRID] = vrid;
    }

    /// Sets the priority.
    pub fn set_priority(&mut self, priority: u8) {
        self.buffer.as_mut()[field::PRIORITY] = priority;
    }

    /// Sets the address count.
    pub fn set_count(&mut self, count: u8) {
        self.buffer.as_mut()[field::COUNT] = count;
    }

    /// v2: sets authentication type and interval in seconds.
    pub fn set_v2_auth_and_interval(&mut self, auth_type: u8, secs: u8) {
        let b = self.buffer.as_mut();
        b[field::AUTH_TYPE] = auth_type;
        b[field::ADVER_INT_V2] = secs;
    }

    /// v3: sets the interval in centiseconds, with the reserved bits zero.
    pub fn set_v3_interval(&mut self, centis: u16) {
        self.buffer.as_mut()[field::ADVER_INT_V3].copy_from_slice(&(centis & 0x0fff).to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// The address list, for writing; its length follows the count field.
    pub fn address_bytes_mut(&mut self) -> &mut [u8] {
        let end = field::ADDRESSES + usize::from(self.count()) * self.family.address_len();
        &mut self.buffer.as_mut()[field::ADDRESSES..end]
    }

    /// v2: sets the authentication data after the addresses (set the count
    /// and version first).
    pub fn set_auth_data(&mut self, data: &[u8; 8]) {
        let start = field::ADDRESSES + usize::from(self.count()) * 4;
        self.buffer.as_mut()[start..start + field::AUTH_DATA_LEN].copy_from_slice(data);
    }
}
