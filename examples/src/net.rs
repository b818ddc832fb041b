//! Linux interface glue: look up an interface, claim and release virtual
//! addresses over netlink (rtnetlink), and send gratuitous ARP / unsolicited
//! neighbour advertisements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use crate::config::VirtualIp;

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused a request.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    /// No interface of that name.
    #[error("no interface named `{0}`")]
    NoInterface(String),
    /// The interface has no address of the family to send from.
    #[error("interface `{name}` has no {family} address to send from")]
    NoAddress {
        /// Interface.
        name: String,
        /// "IPv4" or "IPv6 link-local".
        family: &'static str,
    },
}

/// An interface and what the VRRP glue needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Kernel index.
    pub index: u32,
    /// Hardware (MAC) address.
    pub mac: [u8; 6],
    /// Addresses configured on it.
    pub addresses: Vec<IpAddr>,
}

impl Interface {
    /// The address advertisements go out from: the first IPv4 address, or
    /// the link-local IPv6 one (RFC 9568 §5.1.2.1), skipping `skip`
    /// (virtual addresses left by an earlier run).
    ///
    /// # Errors
    /// [`NetError::NoAddress`] if there is none.
    pub fn primary(&self, ipv4: bool, skip: &[VirtualIp]) -> Result<IpAddr, NetError> {
        self.addresses
            .iter()
            .copied()
            .filter(|a| !skip.iter().any(|v| v.addr == *a))
            .find(|a| match a {
                IpAddr::V4(_) => ipv4,
                IpAddr::V6(v6) => !ipv4 && v6.is_unicast_link_local(),
            })
            .ok_or(NetError::NoAddress {
                name: self.name.clone(),
                family: if ipv4 { "IPv4" } else { "IPv6 link-local" },
            })
    }
}

/// A netlink handle, with its connection task running on the current tokio
/// runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink connection.
    ///
    /// # Errors
    /// [`NetError::Io`] if the socket cannot be opened.
    pub fn open() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Looks an interface up by name.
    ///
    /// # Errors
    /// [`NetError::NoInterface`], or the kernel's refusal.
    pub async fn interface(&self, name: &str) -> Result<Interface, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let link: LinkMessage = match links.try_next().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => return Err(NetError::NoInterface(name.to_owned())),
        };
        let index = link.header.index;
        let mut mac = [0u8; 6];
        for attr in &link.attributes {
            if let LinkAttribute::Address(bytes) = attr
                && bytes.len() == 6
            {
                mac.copy_from_slice(bytes);
            }
        }
        let mut addresses = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await? {
            if let Some(a) = address_of(&msg) {
                addresses.push(a);
            }
        }
        Ok(Interface {
            name: name.to_owned(),
            index,
            mac,
            addresses,
        })
    }

    /// Adds a virtual address to an interface; IPv6 without duplicate
    /// address detection, so that it answers at once. Adding an address that
    /// is already there succeeds.
    ///
    /// # Errors
    /// The kernel's refusal.
    pub async fn add(&self, index: u32, vip: VirtualIp) -> Result<(), NetError> {
        let mut req = self
            .handle
            .address()
            .add(index, vip.addr, vip.prefix)
            .replace();
        if vip.addr.is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await?;
        Ok(())
    }

    /// Removes a virtual address from an interface. Removing one that is not
    /// there succeeds, so that a crashed run's leftovers can be cleared at
    /// start.
    ///
    /// # Errors
    /// The kernel's refusal.
    pub async fn remove(&self, index: u32, vip: VirtualIp) -> Result<(), NetError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(vip.addr)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            if address_of(&msg) == Some(vip.addr) {
                found.push(msg);
            }
        }
        for msg in found {
            self.handle.address().del(msg).execute().await?;
        }
        Ok(())
    }

    /// Whether an address is configured on the interface.
    ///
    /// # Errors
    /// The kernel's refusal.
    pub async fn has(&self, index: u32, addr: IpAddr) -> Result<bool, NetError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await? {
            if address_of(&msg) == Some(addr) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on point-to-point links;
    // IFA_ADDRESS elsewhere.
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    match msg.header.family {
        AddressFamily::Inet | AddressFamily::Inet6 => address,
        _ => None,
    }
}

/// A gratuitous ARP request for `ip` from `mac` (RFC 5227 §3 style: sender
/// and target protocol address both `ip`), as an Ethernet frame.
#[must_use]
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request)
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement for `ip` from `mac` (RFC 4861
/// §7.2.6: to all-nodes, override flag, target link-layer address option),
/// as an Ethernet frame, sent from `src` (link-local).
#[must_use]
pub fn unsolicited_na(mac: [u8; 6], src: Ipv6Addr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    // ICMPv6: type 136, code 0, checksum, flags (override), target, option 2 (target LL).
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let ip6 = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: etherparse::Ipv6FlowLabel::ZERO,
        payload_length: icmp.len() as u16,
        next_header: etherparse::IpNumber::IPV6_ICMP,
        hop_limit: 255,
        source: src.octets(),
        destination: all_nodes.octets(),
    };
    let icmp_header = etherparse::Icmpv6Header::with_checksum(
        etherparse::Icmpv6Type::Unknown {
            type_u8: 136,
            code_u8: 0,
            bytes5to8: [0x20, 0, 0, 0],
        },
        src.octets(),
        all_nodes.octets(),
        &icmp[8..],
    );
    if let Ok(h) = icmp_header {
        icmp[2..4].copy_from_slice(&h.checksum.to_be_bytes());
    }
    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&ip6.to_bytes());
    f.extend_from_slice(&icmp);
    f
}

/// Sends one Ethernet frame out of an interface through an `AF_PACKET`
/// socket (needs CAP_NET_RAW).
///
/// # Errors
/// What the OS said.
pub fn send_frame(ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let proto = u16::from_be_bytes([frame[12], frame[13]]);
    let sock = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(proto.to_be()))),
    )?;
    // socket2 has no constructor for a link-layer address: build the
    // sockaddr_ll by hand.
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of this platform's sockaddr types (what
    // `view_as` asks), and the length given to `SockAddr::new` is its size.
    let addr = unsafe {
        let ll = storage.view_as::<libc::sockaddr_ll>();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = proto.to_be();
        ll.sll_ifindex = ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&frame[0..6]);
        SockAddr::new(
            storage,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    sock.send_to(frame, &addr)?;
    Ok(())
}
