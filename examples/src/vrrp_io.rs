//! VRRP transports: raw IP protocol 112 on an interface (what keepalived
//! and routers speak; needs CAP_NET_RAW), or the same advertisements over
//! UDP between configured addresses (unprivileged, for loopback runs).
//!
//! The sockets are non-blocking and meant for a thread of their own that
//! waits with nanosecond timeouts (an epoll set), so that timers fire within
//! microseconds of their deadline rather than on a millisecond tick.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use vrrp_proto::{IP_PROTOCOL, IPV4_GROUP, IPV6_GROUP, RecvMeta};

/// What arrived.
#[derive(Debug, Clone, Copy)]
pub enum Received {
    /// A whole IP datagram of this many bytes at the start of the buffer
    /// (IPv4 raw sockets deliver the header).
    Datagram(usize),
    /// A bare VRRP message of this many bytes, with what the socket told of
    /// it.
    Message(usize, RecvMeta),
}

/// A transport.
pub enum VrrpSocket {
    /// IPv4 raw socket bound to an interface: receives whole datagrams,
    /// sends whole datagrams (IP_HDRINCL) so that TTL, DSCP and source are
    /// exactly ours.
    RawV4 {
        /// The socket.
        socket: Socket,
    },
    /// IPv6 raw socket bound to an interface: the kernel builds the IPv6
    /// header (hop limit 255 set on the socket) and reports the hop limit as
    /// ancillary data.
    RawV6 {
        /// The socket.
        socket: Socket,
        /// Where received advertisements count as sent to: the group, or our
        /// link-local address when the peers are unicast.
        dst: IpAddr,
    },
    /// UDP between configured addresses.
    Udp {
        /// The socket.
        socket: Socket,
        /// Our address (the receive destination).
        local: IpAddr,
        /// Where advertisements go.
        peers: Vec<SocketAddr>,
    },
}

impl VrrpSocket {
    /// An IPv4 raw transport on an interface, sending from `primary`.
    ///
    /// # Errors
    /// What the OS said (EPERM without CAP_NET_RAW).
    pub fn raw_v4(interface: &str, ifindex: u32, primary: Ipv4Addr) -> io::Result<VrrpSocket> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IP_PROTOCOL))),
        )?;
        s.bind_device(Some(interface.as_bytes()))?;
        s.set_header_included_v4(true)?;
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_if_v4(&primary)?;
        s.join_multicast_v4_n(&IPV4_GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
        s.set_nonblocking(true)?;
        Ok(VrrpSocket::RawV4 { socket: s })
    }

    /// An IPv6 raw transport on an interface, sending from `src` (the
    /// interface's link-local address, RFC 9568 §5.1.2.1). `dst` is the
    /// group, or `src` when the peers are unicast.
    ///
    /// # Errors
    /// What the OS said.
    pub fn raw_v6(
        interface: &str,
        ifindex: u32,
        src: std::net::Ipv6Addr,
        dst: IpAddr,
    ) -> io::Result<VrrpSocket> {
        let s = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(i32::from(IP_PROTOCOL))),
        )?;
        s.bind_device(Some(interface.as_bytes()))?;
        // Bound to our own link-local address: once a link-local virtual
        // address is claimed the kernel could otherwise pick it as the
        // source, and the checksum (taken over ours) would not match.
        s.bind(&SockAddr::from(std::net::SocketAddrV6::new(
            src, 0, 0, ifindex,
        )))?;
        s.set_multicast_hops_v6(255)?;
        s.set_unicast_hops_v6(255)?;
        s.set_multicast_loop_v6(false)?;
        s.set_multicast_if_v6(ifindex)?;
        s.join_multicast_v6(&IPV6_GROUP, ifindex)?;
        s.set_recv_hoplimit_v6(true)?;
        s.set_nonblocking(true)?;
        Ok(VrrpSocket::RawV6 { socket: s, dst })
    }

    /// A UDP transport.
    ///
    /// # Errors
    /// What the OS said.
    pub fn udp(listen: SocketAddr, peers: Vec<SocketAddr>) -> io::Result<VrrpSocket> {
        let domain = if listen.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&listen.into())?;
        s.set_nonblocking(true)?;
        Ok(VrrpSocket::Udp {
            socket: s,
            local: listen.ip(),
            peers,
        })
    }

    /// The file descriptor to wait on.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            VrrpSocket::RawV4 { socket }
            | VrrpSocket::RawV6 { socket, .. }
            | VrrpSocket::Udp { socket, .. } => socket.as_fd(),
        }
    }

    /// The next packet waiting, `None` when there is none.
    ///
    /// # Errors
    /// What the OS said.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let r = match self {
            VrrpSocket::RawV4 { socket } => socket.recv(as_uninit(buf)).map(Received::Datagram),
            VrrpSocket::RawV6 { socket, dst } => recv_v6(socket, buf, *dst),
            VrrpSocket::Udp { socket, local, .. } => {
                socket.recv_from(as_uninit(buf)).map(|(n, from)| {
                    // UDP carries no TTL to us; the peers are configured
                    // addresses, so the TTL rule has nothing to protect here.
                    let src = from.as_socket().map_or(*local, |a| a.ip());
                    Received::Message(
                        n,
                        RecvMeta {
                            src,
                            dst: *local,
                            ttl: vrrp_proto::TTL,
                        },
                    )
                })
            }
        };
        match r {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one advertisement. `bytes` is a whole datagram for the raw IPv4
    /// transport and a bare message otherwise; `dst` is where the state
    /// machine sends it. The UDP transport sends it to the configured peers
    /// at that address: the state machine makes one message per peer
    /// address, its checksum over that destination, so each peer gets its
    /// own once (to all peers when `dst` is none of theirs, a multicast
    /// group).
    ///
    /// # Errors
    /// What the OS said.
    pub fn send(&self, bytes: &[u8], dst: IpAddr) -> io::Result<()> {
        match self {
            VrrpSocket::RawV4 { socket } | VrrpSocket::RawV6 { socket, .. } => socket
                .send_to(bytes, &SockAddr::from(SocketAddr::new(dst, 0)))
                .map(drop),
            VrrpSocket::Udp { socket, peers, .. } => {
                let addressed = peers.iter().any(|p| p.ip() == dst);
                for p in peers.iter().filter(|p| !addressed || p.ip() == dst) {
                    socket.send_to(bytes, &SockAddr::from(*p))?;
                }
                Ok(())
            }
        }
    }

    /// Whether [`VrrpSocket::send`] takes whole datagrams.
    #[must_use]
    pub fn sends_datagrams(&self) -> bool {
        matches!(self, VrrpSocket::RawV4 { .. })
    }
}

fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout, and the socket
    // only writes initialised bytes into it.
    unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [std::mem::MaybeUninit<u8>]) }
}

/// recvmsg with the IPV6_HOPLIMIT ancillary data.
fn recv_v6(s: &Socket, buf: &mut [u8], dst: IpAddr) -> io::Result<Received> {
    let mut control = [0u8; 128];
    let mut bufs = [socket2::MaybeUninitSlice::new(as_uninit(buf))];
    let mut from = SockAddr::from(SocketAddr::new(dst, 0));
    let mut msg = socket2::MsgHdrMut::new()
        .with_addr(&mut from)
        .with_buffers(&mut bufs)
        .with_control(as_uninit(&mut control));
    let n = s.recvmsg(&mut msg, 0)?;
    let control_len = msg.control_len();
    let src = from.as_socket().map_or(dst, |a| a.ip());
    let mut ttl = 0u8;
    // Walk the cmsg headers (struct cmsghdr: len, level, type, data).
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    let mut off = 0;
    while off + hdr <= control_len {
        let len = usize::from_ne_bytes(control[off..off + 8].try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(control[off + 8..off + 12].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(control[off + 12..off + 16].try_into().unwrap_or_default());
        if len < hdr || off + len > control_len {
            break;
        }
        let data = &control[off + hdr..off + len];
        if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT && data.len() >= 4 {
            ttl = i32::from_ne_bytes(data[..4].try_into().unwrap_or_default()) as u8;
        }
        off += (len + 7) & !7;
    }
    Ok(Received::Message(n, RecvMeta { src, dst, ttl }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn peer(ip: [u8; 4]) -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::from(ip), 0)).expect("bind on loopback");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s
    }

    fn count(s: &UdpSocket) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while s.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    /// The state machine makes one message per peer address (the checksum
    /// covers the destination): each UDP peer gets the one made for it,
    /// once, never the others'. Two peers sharing an address both get it.
    #[test]
    fn a_udp_peer_gets_only_the_message_addressed_to_it() {
        let a = peer([127, 0, 0, 2]);
        let a2 = peer([127, 0, 0, 2]);
        let b = peer([127, 0, 0, 5]);
        let addr = |s: &UdpSocket| s.local_addr().expect("address");
        let sock = VrrpSocket::udp(
            "127.0.0.3:0".parse().expect("address"),
            vec![addr(&a), addr(&a2), addr(&b)],
        )
        .expect("udp transport");
        sock.send(b"for a", IpAddr::from([127, 0, 0, 2]))
            .expect("send");
        sock.send(b"for b", IpAddr::from([127, 0, 0, 5]))
            .expect("send");
        assert_eq!((count(&a), count(&a2), count(&b)), (1, 1, 1));
        // A destination that is no peer's (a group) goes to every peer.
        sock.send(b"group", IpAddr::from([224, 0, 0, 18]))
            .expect("send");
        assert_eq!((count(&a), count(&a2), count(&b)), (1, 1, 1));
    }
}
