//! The owned advertisement: build, parse from a checked view, emit.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smallvec::SmallVec;

use crate::checksum;
use crate::error::{BuildError, EmitError, ParseError};
use crate::types::{Family, Interval, Ipv4ChecksumForm, Priority, Version, Vrid};
use crate::wire::{self, Packet};

/// IPv4 addresses kept inline before spilling to the heap.
pub const INLINE_V4: usize = 4;
/// IPv6 addresses kept inline before spilling to the heap.
pub const INLINE_V6: usize = 2;

/// The virtual addresses an advertisement carries: one family, 1–255 of
/// them, the first few inline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// IPv4 addresses.
    V4(SmallVec<[Ipv4Addr; INLINE_V4]>),
    /// IPv6 addresses.
    V6(SmallVec<[Ipv6Addr; INLINE_V6]>),
}

impl Addresses {
    /// The family.
    #[must_use]
    pub fn family(&self) -> Family {
        match self {
            Addresses::V4(_) => Family::Ipv4,
            Addresses::V6(_) => Family::Ipv6,
        }
    }

    /// Number of addresses.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Addresses::V4(a) => a.len(),
            Addresses::V6(a) => a.len(),
        }
    }

    /// Whether there are none (never true of a parsed advertisement).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses as [`IpAddr`]s.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (v4, v6): (&[Ipv4Addr], &[Ipv6Addr]) = match self {
            Addresses::V4(a) => (a, &[]),
            Addresses::V6(a) => (&[], a),
        };
        v4.iter()
            .map(|a| IpAddr::V4(*a))
            .chain(v6.iter().map(|a| IpAddr::V6(*a)))
    }

    /// Whether `addr` is in the list.
    #[must_use]
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match (self, addr) {
            (Addresses::V4(a), IpAddr::V4(x)) => a.contains(x),
            (Addresses::V6(a), IpAddr::V6(x)) => a.contains(x),
            _ => false,
        }
    }
}

impl From<&[Ipv4Addr]> for Addresses {
    fn from(a: &[Ipv4Addr]) -> Self {
        Addresses::V4(SmallVec::from_slice(a))
    }
}

impl From<&[Ipv6Addr]> for Addresses {
    fn from(a: &[Ipv6Addr]) -> Self {
        Addresses::V6(SmallVec::from_slice(a))
    }
}

impl<const N: usize> From<[Ipv4Addr; N]> for Addresses {
    fn from(a: [Ipv4Addr; N]) -> Self {
        Addresses::from(&a[..])
    }
}

impl<const N: usize> From<[Ipv6Addr; N]> for Addresses {
    fn from(a: [Ipv6Addr; N]) -> Self {
        Addresses::from(&a[..])
    }
}

/// VRRPv2 authentication (RFC 2338 §5.3.6; kept in RFC 3768 only as
/// reserved types, but keepalived still sends type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    /// Type 0: none. Always the case in VRRPv3.
    #[default]
    None,
    /// Type 1: an up-to-8-byte password in clear, zero padded. It keeps
    /// honest neighbours apart; it is no protection against an attacker.
    Simple([u8; 8]),
}

impl Auth {
    /// A simple-password authentication from a key of at most 8 bytes.
    ///
    /// # Errors
    /// [`BuildError::AuthKeyLen`] for a longer key.
    pub fn simple(key: &[u8]) -> Result<Auth, BuildError> {
        if key.len() > 8 {
            return Err(BuildError::AuthKeyLen { len: key.len() });
        }
        let mut d = [0u8; 8];
        d[..key.len()].copy_from_slice(key);
        Ok(Auth::Simple(d))
    }

    /// The auth type number on the wire.
    #[must_use]
    pub const fn type_number(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Simple(_) => 1,
        }
    }

    /// The 8 bytes of authentication data on the wire.
    #[must_use]
    pub const fn data(&self) -> [u8; 8] {
        match self {
            Auth::None => [0; 8],
            Auth::Simple(d) => *d,
        }
    }

    /// Whether a received authentication satisfies a configured one
    /// (RFC 2338 §7.1): same type, and for type 1 the same zero-padded key.
    /// The comparison takes the same time wherever the keys differ.
    #[must_use]
    pub fn matches(&self, configured: &Auth) -> bool {
        let diff = self
            .data()
            .iter()
            .zip(configured.data().iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.type_number() == configured.type_number() && diff == 0
    }
}

/// Where an advertisement goes: the addresses its checksum and IP header
/// use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    /// Source address (IPv6: the link-local address of the interface).
    pub src: IpAddr,
    /// Destination: the VRRP group or a unicast peer.
    pub dst: IpAddr,
}

/// One VRRP advertisement, owned.
///
/// Built by [`Advertisement::v2`] / [`Advertisement::v3`], which enforce what
/// each version can carry, or parsed from a checked [`Packet`]; so every
/// value can be emitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertisement {
    version: Version,
    vrid: Vrid,
    priority: Priority,
    interval: Interval,
    auth: Auth,
    addresses: Addresses,
}

/// A SmallVec of what `it` yields, filling the inline buffer in one go when
/// everything fits.
#[inline]
fn inline_or_heap<T: Copy, const N: usize>(
    mut it: impl ExactSizeIterator<Item = T>,
    fill: T,
) -> SmallVec<[T; N]> {
    let len = it.len();
    if len <= N {
        let mut buf = [fill; N];
        for slot in buf.iter_mut().take(len) {
            if let Some(x) = it.next() {
                *slot = x;
            }
        }
        SmallVec::from_buf_and_len(buf, len)
    } else {
        it.collect()
    }
}

fn check_count(addresses: &Addresses) -> Result<(), BuildError> {
    match addresses.len() {
        1..=255 => Ok(()),
        count => Err(BuildError::AddressCount { count }),
    }
}

impl Advertisement {
    /// A VRRPv2 advertisement (RFC 3768): IPv4 addresses, interval in whole
    /// seconds.
    ///
    /// # Errors
    /// [`BuildError::Interval`] if the interval is not 1–255 whole seconds,
    /// [`BuildError::V2Ipv6`] for IPv6 addresses,
    /// [`BuildError::AddressCount`] for 0 or more than 255 addresses.
    pub fn v2(
        vrid: Vrid,
        priority: Priority,
        interval: Interval,
        auth: Auth,
        addresses: Addresses,
    ) -> Result<Advertisement, BuildError> {
        if interval.as_whole_secs().is_none() {
            return Err(BuildError::Interval {
                centis: u32::from(interval.as_centis()),
            });
        }
        if addresses.family() != Family::Ipv4 {
            return Err(BuildError::V2Ipv6);
        }
        check_count(&addresses)?;
        Ok(Advertisement {
            version: Version::V2,
            vrid,
            priority,
            interval,
            auth,
            addresses,
        })
    }

    /// A VRRPv3 advertisement (RFC 9568): IPv4 or IPv6 addresses, interval
    /// in centiseconds up to 4095.
    ///
    /// # Errors
    /// [`BuildError::Interval`] if the interval is above 4095 cs,
    /// [`BuildError::AddressCount`] for 0 or more than 255 addresses.
    pub fn v3(
        vrid: Vrid,
        priority: Priority,
        interval: Interval,
        addresses: Addresses,
    ) -> Result<Advertisement, BuildError> {
        if !interval.fits_v3() {
            return Err(BuildError::Interval {
                centis: u32::from(interval.as_centis()),
            });
        }
        check_count(&addresses)?;
        Ok(Advertisement {
            version: Version::V3,
            vrid,
            priority,
            interval,
            auth: Auth::None,
            addresses,
        })
    }

    /// The owned form of a checked view. Allocates only past
    /// [`INLINE_V4`] / [`INLINE_V6`] addresses.
    ///
    /// # Errors
    /// Those of [`Packet::new_checked`]; a view made by it never fails here.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Advertisement, ParseError> {
        // Re-checked (a few compares) so that a view made with
        // `new_unchecked` cannot make an invalid advertisement.
        let p = Packet::new_checked(packet.as_bytes(), packet.family())?;
        Advertisement::from_checked(&p)
    }

    /// The owned form of a view that `new_checked` made.
    #[inline]
    pub(crate) fn from_checked<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Advertisement, ParseError> {
        let vrid = Vrid::new(p.vrid()).ok_or(ParseError::ZeroVrid)?;
        let interval = Interval::from_wire_centis(p.interval_centis());
        // Built from a whole inline buffer when they fit: SmallVec's
        // `collect` / `push` cost more than the rest of the parse.
        let addresses = match p.family() {
            Family::Ipv4 => {
                Addresses::V4(inline_or_heap(p.ipv4_addresses(), Ipv4Addr::UNSPECIFIED))
            }
            Family::Ipv6 => {
                Addresses::V6(inline_or_heap(p.ipv6_addresses(), Ipv6Addr::UNSPECIFIED))
            }
        };
        let auth = match p.auth_type() {
            Some(1) => Auth::Simple(p.auth_data().unwrap_or_default()),
            _ => Auth::None,
        };
        Ok(Advertisement {
            version: p.version(),
            vrid,
            priority: Priority(p.priority()),
            interval,
            auth,
            addresses,
        })
    }

    /// Protocol version.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// Virtual router id.
    #[must_use]
    pub fn vrid(&self) -> Vrid {
        self.vrid
    }

    /// Sender's priority.
    #[must_use]
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The same advertisement with another priority (a Master's release
    /// sends its last advertisement at priority 0).
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Advertisement {
        self.priority = priority;
        self
    }

    /// Advertisement interval.
    #[must_use]
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// Authentication (always [`Auth::None`] in v3).
    #[must_use]
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Virtual addresses.
    #[must_use]
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Address family.
    #[must_use]
    pub fn family(&self) -> Family {
        self.addresses.family()
    }

    /// Bytes [`Advertisement::emit`] writes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        // check_count keeps the count within u8.
        wire::message_len(self.version, self.family(), self.addresses.len() as u8)
    }

    /// Writes the message into `buf` with its checksum for `endpoints`;
    /// returns the bytes written. `form` matters for VRRPv3 over IPv4 only.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is shorter than
    /// [`Advertisement::buffer_len`]; [`EmitError::FamilyMismatch`] if the
    /// endpoints are not of the advertisement's family.
    pub fn emit(
        &self,
        buf: &mut [u8],
        endpoints: Endpoints,
        form: Ipv4ChecksumForm,
    ) -> Result<usize, EmitError> {
        let family = self.family();
        if Family::of(&endpoints.src) != family || Family::of(&endpoints.dst) != family {
            return Err(EmitError::FamilyMismatch);
        }
        let len = self.buffer_len();
        let have = buf.len();
        let buf = buf
            .get_mut(..len)
            .ok_or(EmitError::BufferTooSmall { need: len, have })?;
        let mut p = Packet::new_unchecked(&mut *buf, family);
        p.set_version(self.version);
        p.set_vrid(self.vrid.get());
        p.set_priority(self.priority.get());
        p.set_count(self.addresses.len() as u8);
        match self.version {
            Version::V2 => {
                let secs = self.interval.as_whole_secs().unwrap_or(1);
                p.set_v2_auth_and_interval(self.auth.type_number(), secs);
            }
            Version::V3 => p.set_v3_interval(self.interval.as_centis()),
        }
        p.set_checksum(0);
        {
            let out = p.address_bytes_mut();
            match &self.addresses {
                Addresses::V4(a) => {
                    for (chunk, addr) in out.chunks_exact_mut(4).zip(a) {
                        chunk.copy_from_slice(&addr.octets());
                    }
                }
                Addresses::V6(a) => {
                    for (chunk, addr) in out.chunks_exact_mut(16).zip(a) {
                        chunk.copy_from_slice(&addr.octets());
                    }
                }
            }
        }
        if self.version == Version::V2 {
            p.set_auth_data(&self.auth.data());
        }
        let cover = checksum::send_cover(self.version, endpoints.dst, form);
        let sum = checksum::compute(buf, endpoints.src, endpoints.dst, cover);
        Packet::new_unchecked(buf, family).set_checksum(sum);
        Ok(len)
    }
}
