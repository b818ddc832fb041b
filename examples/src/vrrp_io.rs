//! VRRP transports: raw IP protocol 112 on an interface (what keepalived
//! and routers speak; needs CAP_NET_RAW), or the same advertisements over
//! UDP between configured addresses (unprivileged, for loopback runs).
//!
//! The sockets are non-blocking and meant for a thread of their own that
//! waits with nanosecond timeouts (an epoll set), so that timers fire within
//! microseconds of their deadline rather than on a millisecond tick.
//!
//! The raw IPv4 transport can also **hold** a Backup's routine
//! advertisements (see `VirtualRouter::routine_advertisement`): a socket
//! filter keeps them on the main socket, which then wakes nobody, while a
//! second socket with the opposite filter takes every other VRRP message
//! for the VRID and wakes the engine at once. The engine reads what was
//! held when it wakes anyway (its Master_Down deadline, the peer link),
//! each message with the kernel's receive time: one wake-up per
//! Master_Down_Interval instead of one per advertisement.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::SystemTime;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, recvmmsg, setsockopt, sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockFilter, Socket, Type};
use vrrp_fsm::Routine;
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
        /// The alert socket (see the module docs), when it could be made.
        alert: Option<Socket>,
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
        // Without the alert socket nothing is held: every message is read
        // as it comes, as before.
        let alert = alert_v4(interface, ifindex)
            .and_then(|a| {
                setsockopt(&s, sockopt::ReceiveTimestampns, &true)?;
                Ok(a)
            })
            .inspect_err(
                |e| tracing::debug!(error = %e, "no alert socket: advertisements not held"),
            )
            .ok();
        Ok(VrrpSocket::RawV4 { socket: s, alert })
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
            VrrpSocket::RawV4 { socket, .. }
            | VrrpSocket::RawV6 { socket, .. }
            | VrrpSocket::Udp { socket, .. } => socket.as_fd(),
        }
    }

    /// The alert socket to wait on while holding (see the module docs);
    /// `None` when this transport cannot hold.
    #[must_use]
    pub fn alert_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            VrrpSocket::RawV4 { alert: Some(a), .. } => Some(a.as_fd()),
            _ => None,
        }
    }

    /// Holds the advertisements that match `routine` on the main socket,
    /// and lets every other message for its VRID through the alert socket
    /// (`None`: holds nothing, the main socket takes everything). The
    /// alert's filter changes first when holding starts, the main one
    /// first when it ends: a message that comes in between lands on both
    /// (read twice, which changes nothing), never on neither.
    ///
    /// # Errors
    /// What the OS said; [`io::ErrorKind::Unsupported`] when this transport
    /// cannot hold.
    pub fn hold(&self, routine: Option<&Routine>) -> io::Result<()> {
        let VrrpSocket::RawV4 {
            socket,
            alert: Some(alert),
        } = self
        else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        match routine {
            Some(r) => {
                alert.attach_filter(&routine_filter(r, false))?;
                socket.attach_filter(&routine_filter(r, true))
            }
            None => {
                socket.detach_filter()?;
                alert.attach_filter(&[DROP_ALL])
            }
        }
    }

    /// Reads every message held on the main socket (`alert`: on the alert
    /// socket), a batch per system call, and gives each to `each` with the
    /// kernel's receive time, in the order they came. How many there were.
    ///
    /// # Errors
    /// What the OS said; [`io::ErrorKind::Unsupported`] when this transport
    /// cannot hold.
    pub fn recv_held(
        &self,
        batch: &mut Batch,
        alert: bool,
        mut each: impl FnMut(&[u8], Option<SystemTime>),
    ) -> io::Result<usize> {
        let s = match self {
            VrrpSocket::RawV4 { socket, .. } if !alert => socket,
            VrrpSocket::RawV4 { alert: Some(a), .. } => a,
            _ => return Err(io::ErrorKind::Unsupported.into()),
        };
        let mut total = 0;
        loop {
            let mut got = [(0usize, None::<SystemTime>); BATCH];
            let n = {
                let mut chunks = batch.buf.chunks_mut(BATCH_BUF);
                let mut iovs: [[io::IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                    [io::IoSliceMut::new(chunks.next().unwrap_or_default())]
                });
                let results = match recvmmsg(
                    s.as_raw_fd(),
                    &mut batch.headers,
                    &mut iovs,
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(r) => r,
                    Err(nix::errno::Errno::EAGAIN) => return Ok(total),
                    Err(e) => return Err(e.into()),
                };
                let mut n = 0;
                for (slot, r) in got.iter_mut().zip(results) {
                    let stamp = r.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmTimestampns(t) => {
                                SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from(t))
                            }
                            _ => None,
                        })
                    });
                    *slot = (r.bytes, stamp);
                    n += 1;
                }
                n
            };
            for (i, (len, stamp)) in got.iter().take(n).enumerate() {
                let at = i * BATCH_BUF;
                each(&batch.buf[at..at + (*len).min(BATCH_BUF)], *stamp);
            }
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// The next packet waiting, `None` when there is none.
    ///
    /// # Errors
    /// What the OS said.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let r = match self {
            VrrpSocket::RawV4 { socket, .. } => socket.recv(as_uninit(buf)).map(Received::Datagram),
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
            VrrpSocket::RawV4 { socket, .. } | VrrpSocket::RawV6 { socket, .. } => socket
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

/// Messages read per system call while holding.
const BATCH: usize = 8;
/// Room for each: an advertisement is at most 20 + 8 + 255 × 16 bytes;
/// a longer one is cut short and fails its checks, as it should.
const BATCH_BUF: usize = 4096;

/// What [`VrrpSocket::recv_held`] reads into, made once by the thread that
/// reads (it holds raw pointers and stays on that thread).
pub struct Batch {
    headers: MultiHeaders<()>,
    buf: Vec<u8>,
}

impl Batch {
    /// Room for a batch of messages with their receive times.
    #[must_use]
    pub fn new() -> Batch {
        Batch {
            headers: MultiHeaders::preallocate(
                BATCH,
                Some(nix::cmsg_space!(nix::sys::time::TimeSpec)),
            ),
            buf: vec![0; BATCH * BATCH_BUF],
        }
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

/// The alert socket: a second raw socket on the interface, in the group,
/// that takes nothing until [`VrrpSocket::hold`] gives it a filter, and
/// stamps what it takes.
fn alert_v4(interface: &str, ifindex: u32) -> io::Result<Socket> {
    let a = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(IP_PROTOCOL))),
    )?;
    // The filter first: nothing queues before it.
    a.attach_filter(&[DROP_ALL])?;
    a.bind_device(Some(interface.as_bytes()))?;
    a.join_multicast_v4_n(&IPV4_GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
    a.set_nonblocking(true)?;
    setsockopt(&a, sockopt::ReceiveTimestampns, &true)?;
    Ok(a)
}

/// A classic BPF filter that takes nothing.
const DROP_ALL: SockFilter = SockFilter::new(BPF_RET | BPF_K, 0, 0, 0);

// Classic BPF opcodes (linux/filter.h), for the routine filter.
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_AND: u16 = 0x50;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;

/// The filter of a raw IPv4 socket (it sees the IP header first) that,
/// on the main socket (`main`), takes the routine advertisements of `r`
/// and the messages for other VRIDs (held: the router drops those), and on
/// the alert socket takes every other message for `r`'s VRID. Routine:
/// from `r.source`, with `r.priority`, and in VRRPv3 with `r.interval`
/// (the low 12 bits of the second word).
fn routine_filter(r: &Routine, main: bool) -> Vec<SockFilter> {
    /// Where a failed check goes.
    enum Miss {
        OtherVrid,
        NotRoutine,
    }
    const TAKE: u32 = 0x0004_0000;
    let (routine_ret, other_ret) = if main { (TAKE, 0) } else { (0, TAKE) };
    let src = match r.source {
        IpAddr::V4(a) => u32::from(a),
        // Never a raw IPv4 socket's Master: nothing is routine.
        IpAddr::V6(_) => u32::MAX,
    };
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    // Each check falls through when it holds.
    let mut checks = vec![
        // X := the IP header's length.
        (BPF_LDX | BPF_B | BPF_MSH, 0, None),
        // The VRID (VRRP byte 1).
        (BPF_LD | BPF_B | BPF_IND, 1, None),
        (jeq, u32::from(r.vrid.get()), Some(Miss::OtherVrid)),
        // The priority (VRRP byte 2).
        (BPF_LD | BPF_B | BPF_IND, 2, None),
        (jeq, u32::from(r.priority.0), Some(Miss::NotRoutine)),
        // The IP source.
        (BPF_LD | BPF_W | BPF_ABS, 12, None),
        (jeq, src, Some(Miss::NotRoutine)),
    ];
    if let Some(iv) = r.interval {
        checks.push((BPF_LD | BPF_H | BPF_IND, 4, None));
        checks.push((BPF_ALU | BPF_AND | BPF_K, 0x0fff, None));
        checks.push((jeq, u32::from(iv.as_centis()), Some(Miss::NotRoutine)));
    }
    // After the checks: the routine return (other VRIDs too), then the
    // other one.
    let n = checks.len();
    let mut f: Vec<SockFilter> = checks
        .into_iter()
        .enumerate()
        .map(|(i, (code, k, miss))| {
            let to = match miss {
                None => i + 1,
                Some(Miss::OtherVrid) => n,
                Some(Miss::NotRoutine) => n + 1,
            };
            let jf = u8::try_from(to - i - 1).unwrap_or(u8::MAX);
            SockFilter::new(code, 0, jf, k)
        })
        .collect();
    f.push(SockFilter::new(BPF_RET | BPF_K, 0, 0, routine_ret));
    f.push(SockFilter::new(BPF_RET | BPF_K, 0, 0, other_ret));
    f
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

    /// Whether this process may open raw sockets; outside CI a test that
    /// needs them skips without (saying why), in CI it fails.
    fn raw_allowed(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: CI runs as root, and this test needs raw sockets"
            );
            eprintln!("skipping {test}: needs root (raw sockets)");
        }
        root
    }

    fn advert(vrid: u8, src: [u8; 4], priority: u8, centis: u16) -> Vec<u8> {
        let adv = vrrp_proto::Advertisement::v3(
            vrrp_proto::Vrid::new(vrid).expect("vrid"),
            vrrp_proto::Priority(priority),
            vrrp_proto::Interval::from_centis(centis).expect("interval"),
            [Ipv4Addr::new(10, 9, 9, 9)].into(),
        )
        .expect("advertisement");
        let mut buf = vec![0u8; adv.datagram_len()];
        let n = adv
            .emit_datagram(
                &mut buf,
                vrrp_proto::Endpoints {
                    src: Ipv4Addr::from(src).into(),
                    dst: Ipv4Addr::LOCALHOST.into(),
                },
                vrrp_proto::Ipv4ChecksumForm::PseudoHeader,
            )
            .expect("datagram");
        buf.truncate(n);
        buf
    }

    /// (source's last byte, VRID, priority, interval) of what `alert`
    /// (or the main socket) holds now, waiting up to 300 ms for `want`
    /// messages (loopback delivers within microseconds).
    fn held(
        sock: &VrrpSocket,
        batch: &mut Batch,
        alert: bool,
        want: usize,
    ) -> Vec<(u8, u8, u8, u16)> {
        let mut got = Vec::new();
        let until = std::time::Instant::now() + Duration::from_millis(300);
        while got.len() < want && std::time::Instant::now() < until {
            sock.recv_held(batch, alert, |d, stamp| {
                assert!(stamp.is_some(), "held messages carry their receive time");
                let v = &d[20..];
                let interval = u16::from_be_bytes([v[4], v[5]]) & 0x0fff;
                got.push((d[15], v[1], v[2], interval));
            })
            .expect("read");
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// Holding on loopback: the routine advertisements of the Master heard
    /// stay on the main socket (and so do other VRIDs', which the router
    /// drops), everything else for the VRID comes on the alert socket, each
    /// message on one socket only; holding nothing sends everything to the
    /// main socket again.
    #[test]
    fn held_routine_advertisements_stay_and_the_rest_alerts() {
        if !raw_allowed("held_routine_advertisements_stay_and_the_rest_alerts") {
            return;
        }
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .expect("loopback's index")
            .trim()
            .parse()
            .expect("an index");
        let rx = VrrpSocket::raw_v4("lo", lo, Ipv4Addr::LOCALHOST).expect("raw socket");
        assert!(rx.alert_fd().is_some(), "the raw IPv4 transport can hold");
        let tx = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IP_PROTOCOL))),
        )
        .expect("sender");
        tx.set_header_included_v4(true).expect("header included");
        let send = |d: Vec<u8>| {
            tx.send_to(
                &d,
                &SockAddr::from(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)),
            )
            .expect("send on loopback");
        };
        let mut batch = Batch::new();
        let routine = Routine {
            vrid: vrrp_proto::Vrid::new(7).expect("vrid"),
            source: Ipv4Addr::new(127, 0, 0, 2).into(),
            priority: vrrp_proto::Priority(100),
            interval: Some(vrrp_proto::Interval::from_centis(100).expect("interval")),
        };
        rx.hold(Some(&routine)).expect("hold");
        for _ in 0..3 {
            send(advert(7, [127, 0, 0, 2], 100, 100));
        }
        send(advert(7, [127, 0, 0, 2], 0, 100)); // priority 0
        send(advert(7, [127, 0, 0, 3], 100, 100)); // another source
        send(advert(7, [127, 0, 0, 2], 100, 50)); // another interval
        send(advert(7, [127, 0, 0, 2], 120, 100)); // another priority
        send(advert(9, [127, 0, 0, 3], 0, 100)); // another VRID
        let alerts = held(&rx, &mut batch, true, 4);
        assert_eq!(
            alerts,
            [
                (2, 7, 0, 100),
                (3, 7, 100, 100),
                (2, 7, 100, 50),
                (2, 7, 120, 100)
            ]
        );
        let kept = held(&rx, &mut batch, false, 4);
        assert_eq!(
            kept,
            [
                (2, 7, 100, 100),
                (2, 7, 100, 100),
                (2, 7, 100, 100),
                (3, 9, 0, 100)
            ]
        );
        // Nothing left on either.
        assert!(held(&rx, &mut batch, true, 1).is_empty());
        // Holding nothing: all on the main socket, none on the alert one.
        rx.hold(None).expect("hold nothing");
        send(advert(7, [127, 0, 0, 2], 100, 100));
        send(advert(7, [127, 0, 0, 2], 0, 100));
        assert_eq!(held(&rx, &mut batch, false, 2).len(), 2);
        assert!(held(&rx, &mut batch, true, 1).is_empty());
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
