//! The IP layer: receive checks and whole datagrams.
//!
//! Two ways in, because transports differ:
//! - [`check_datagram`] / [`parse_datagram`] take a whole IPv4 or IPv6
//!   datagram (IPv4 raw sockets, captures);
//! - [`check_message`] / [`parse_message`] take a bare VRRP message plus
//!   the [`RecvMeta`] the driver read from socket ancillary data (IPv6 raw
//!   sockets and UDP deliver no IP header).
//!
//! Both apply the same rules, and the `check_*` forms allocate nothing.
//! IP headers are read and written with etherparse.

use core::net::IpAddr;

use etherparse::{
    IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6FlowLabel, Ipv6Header, Ipv6HeaderSlice, Ipv6Slice,
};

use crate::checksum;
use crate::error::{EmitError, ParseError, Warning, Warnings};
use crate::repr::{Advertisement, Endpoints};
use crate::types::{
    ChecksumMatch, Family, IP_PROTOCOL, IPV4_GROUP, IPV6_GROUP, Ipv4ChecksumForm, TTL,
};
use crate::wire::Packet;

/// What the driver knows of a received message besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecvMeta {
    /// IP source address.
    pub src: IpAddr,
    /// IP destination address (the group, or our unicast address).
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

/// A received message that passed every packet-alone rule, as a view.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    /// The message (trailing bytes included; see [`Checked::trailing`]).
    pub packet: Packet<&'a [u8]>,
    /// Source, destination and TTL.
    pub meta: RecvMeta,
    /// Which checksum form matched.
    pub checksum: ChecksumMatch,
    /// Bytes after the message within the IP payload (vendor trailers;
    /// Ethernet padding after the datagram is not counted).
    pub trailing: usize,
    /// Rules broken that do not drop the packet.
    pub warnings: Warnings,
}

/// A received advertisement, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The advertisement.
    pub advertisement: Advertisement,
    /// Source, destination and TTL.
    pub meta: RecvMeta,
    /// Which checksum form matched.
    pub checksum: ChecksumMatch,
    /// Bytes after the message within the IP payload.
    pub trailing: usize,
    /// Rules broken that do not drop the packet.
    pub warnings: Warnings,
}

impl Checked<'_> {
    /// The owned form. Allocates only for more than a few addresses.
    ///
    /// # Errors
    /// None in practice: the view was checked when made.
    #[inline]
    pub fn to_received(&self) -> Result<Received, ParseError> {
        Ok(Received {
            advertisement: Advertisement::from_checked(&self.packet)?,
            meta: self.meta,
            checksum: self.checksum,
            trailing: self.trailing,
            warnings: self.warnings,
        })
    }
}

/// Checks a whole IPv4 or IPv6 datagram carrying VRRP.
///
/// Bytes after the datagram's own length (Ethernet padding) are ignored;
/// bytes after the VRRP message inside the datagram are counted in
/// [`Checked::trailing`].
///
/// # Errors
/// The [`ParseError`] of the first rule broken.
#[inline]
pub fn check_datagram(datagram: &[u8]) -> Result<Checked<'_>, ParseError> {
    let (payload, meta) = match datagram.first().map(|b| b >> 4) {
        Some(4) => ipv4_payload(datagram)?,
        Some(6) => ipv6_payload(datagram)?,
        _ => return Err(ParseError::MalformedIp),
    };
    check_message(payload, meta)
}

/// The VRRP payload of an IPv4 datagram. Header slices rather than a full
/// `IpSlice`: the common case is one fixed header, and this is the hot path.
#[inline]
fn ipv4_payload(datagram: &[u8]) -> Result<(&[u8], RecvMeta), ParseError> {
    let h = Ipv4HeaderSlice::from_slice(datagram).map_err(|_| ParseError::MalformedIp)?;
    let header_len = h.slice().len();
    let total = usize::from(h.total_len());
    // Bytes past total_len are link padding, not ours.
    let payload = datagram
        .get(header_len..total)
        .ok_or(ParseError::MalformedIp)?;
    if h.protocol() != IpNumber(IP_PROTOCOL) {
        return Err(ParseError::NotVrrp {
            protocol: h.protocol().0,
        });
    }
    if h.is_fragmenting_payload() {
        return Err(ParseError::Fragmented);
    }
    let meta = RecvMeta {
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        ttl: h.ttl(),
    };
    Ok((payload, meta))
}

/// The VRRP payload of an IPv6 datagram, walking extension headers with
/// etherparse when there are any.
fn ipv6_payload(datagram: &[u8]) -> Result<(&[u8], RecvMeta), ParseError> {
    let h = Ipv6HeaderSlice::from_slice(datagram).map_err(|_| ParseError::MalformedIp)?;
    let meta = RecvMeta {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        ttl: h.hop_limit(),
    };
    if h.next_header() == IpNumber(IP_PROTOCOL) {
        let end = Ipv6Header::LEN + usize::from(h.payload_length());
        let payload = datagram
            .get(Ipv6Header::LEN..end)
            .ok_or(ParseError::MalformedIp)?;
        return Ok((payload, meta));
    }
    let ip = Ipv6Slice::from_slice(datagram).map_err(|_| ParseError::MalformedIp)?;
    let payload = ip.payload();
    if payload.ip_number != IpNumber(IP_PROTOCOL) {
        return Err(ParseError::NotVrrp {
            protocol: payload.ip_number.0,
        });
    }
    if payload.fragmented {
        return Err(ParseError::Fragmented);
    }
    Ok((payload.payload, meta))
}

/// Checks a bare VRRP message with its receive metadata.
///
/// # Errors
/// The [`ParseError`] of the first rule broken, in the order: TTL,
/// destination, source, then [`Packet::new_checked`]'s rules, then the
/// checksum.
#[inline]
pub fn check_message(message: &[u8], meta: RecvMeta) -> Result<Checked<'_>, ParseError> {
    // RFC 3768 §7.1 / RFC 9568 §7.1: TTL / hop limit 255, first.
    if meta.ttl != TTL {
        return Err(ParseError::Ttl { ttl: meta.ttl });
    }
    let family = Family::of(&meta.dst);
    if Family::of(&meta.src) != family {
        return Err(ParseError::Source);
    }
    let mut warnings = Warnings::NONE;
    match (meta.src, meta.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if dst.is_broadcast()
                || (dst.is_multicast() && dst != IPV4_GROUP)
                || dst.is_unspecified()
            {
                return Err(ParseError::Destination);
            }
            if src.is_multicast() || src.is_broadcast() || src.is_unspecified() {
                return Err(ParseError::Source);
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if (dst.is_multicast() && dst != IPV6_GROUP) || dst.is_unspecified() {
                return Err(ParseError::Destination);
            }
            if src.is_multicast() || src.is_unspecified() {
                return Err(ParseError::Source);
            }
            // RFC 9568 §5.1.2.1: sent from the link-local address. Unicast
            // peers on a routed network cannot, so there it is a warning.
            if !src.is_unicast_link_local() {
                if dst == IPV6_GROUP {
                    return Err(ParseError::Ipv6SourceNotLinkLocal);
                }
                warnings.insert(Warning::SourceNotLinkLocal);
            }
        }
        _ => return Err(ParseError::Source),
    }
    let packet = Packet::new_checked(message, family)?;
    let msg = packet.message();
    let checksum = checksum::verify(packet.version(), msg, meta.src, meta.dst).ok_or(
        ParseError::Checksum {
            found: packet.checksum(),
        },
    )?;
    let w = packet.warnings();
    for x in w.iter() {
        warnings.insert(x);
    }
    Ok(Checked {
        trailing: packet.trailing_len(),
        packet,
        meta,
        checksum,
        warnings,
    })
}

/// [`check_datagram`], then the owned form.
#[inline]
///
/// # Errors
/// As [`check_datagram`].
pub fn parse_datagram(datagram: &[u8]) -> Result<Received, ParseError> {
    check_datagram(datagram)?.to_received()
}

/// [`check_message`], then the owned form.
#[inline]
///
/// # Errors
/// As [`check_message`].
pub fn parse_message(message: &[u8], meta: RecvMeta) -> Result<Received, ParseError> {
    check_message(message, meta)?.to_received()
}

/// Bytes of the IP header [`Advertisement::emit_datagram`] writes for a family.
#[must_use]
pub const fn ip_header_len(family: Family) -> usize {
    match family {
        Family::Ipv4 => Ipv4Header::MIN_LEN,
        Family::Ipv6 => Ipv6Header::LEN,
    }
}

/// DSCP CS6 (network control), as keepalived and routers send VRRP.
const DSCP_CS6: u8 = 48;

impl Advertisement {
    /// Bytes [`Advertisement::emit_datagram`] writes.
    #[must_use]
    pub fn datagram_len(&self) -> usize {
        ip_header_len(self.family()) + self.buffer_len()
    }

    /// Writes a whole IP datagram for a raw-socket sender: an IPv4 header
    /// (TTL 255, protocol 112, DSCP CS6, header checksum) or an IPv6 header
    /// (hop limit 255, next header 112, traffic class CS6), then the message.
    /// Returns the bytes written.
    ///
    /// The IPv4 identification is 0, which a Linux raw socket replaces with
    /// one of its own choosing (a keyed hash and a shared counter, per
    /// datagram); [`Advertisement::emit_datagram_identified`] sets it.
    ///
    /// # Errors
    /// As [`Advertisement::emit`], with the datagram's length.
    pub fn emit_datagram(
        &self,
        buf: &mut [u8],
        endpoints: Endpoints,
        form: Ipv4ChecksumForm,
    ) -> Result<usize, EmitError> {
        self.emit_datagram_identified(buf, endpoints, form, 0)
    }

    /// [`Advertisement::emit_datagram`] with the IPv4 header's
    /// identification field set to `identification` (an IPv6 header has
    /// none: ignored there). A sender numbers its datagrams, as keepalived
    /// does, so the kernel need not pick a number for each.
    ///
    /// # Errors
    /// As [`Advertisement::emit_datagram`].
    pub fn emit_datagram_identified(
        &self,
        buf: &mut [u8],
        endpoints: Endpoints,
        form: Ipv4ChecksumForm,
        identification: u16,
    ) -> Result<usize, EmitError> {
        let family = self.family();
        let hlen = ip_header_len(family);
        let need = hlen + self.buffer_len();
        if buf.len() < need {
            return Err(EmitError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let (head, rest) = buf.split_at_mut(hlen);
        let n = self.emit(rest, endpoints, form)?;
        // A message is at most 8 + 255 × 16 bytes: it fits the length fields.
        match (endpoints.src, endpoints.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h =
                    Ipv4Header::new(n as u16, TTL, IpNumber(IP_PROTOCOL), s.octets(), d.octets())
                        .map_err(|_| EmitError::BufferTooSmall { need, have: need })?;
                h.dont_fragment = false;
                h.identification = identification;
                h.dscp = etherparse::IpDscp::try_new(DSCP_CS6).unwrap_or_default();
                h.header_checksum = h.calc_header_checksum();
                head.copy_from_slice(&h.to_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header {
                    traffic_class: DSCP_CS6 << 2,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: n as u16,
                    next_header: IpNumber(IP_PROTOCOL),
                    hop_limit: TTL,
                    source: s.octets(),
                    destination: d.octets(),
                };
                head.copy_from_slice(&h.to_bytes());
            }
            _ => return Err(EmitError::FamilyMismatch),
        }
        Ok(need)
    }
}
