//! The I/O both peer-link drivers share: the node's engine thread
//! ([`crate::node`], driving the pair engine) and the sync tool's link
//! thread ([`crate::peer`], driving `SyncLink`). Non-blocking sockets
//! waited on in one epoll set ([`crate::poller`]), a wake-up socket for
//! the thread's inbox, and
//! the sync worker thread that does the file work. No policy: who dials,
//! when, which connection is the link, how many handshakes may wait and
//! what a sync failure does are the engines'. A connection that has not
//! proved the key is read at most the engine's receive window at a time
//! (1 KiB in all), into the one read buffer the thread has, so a stranger
//! costs no buffer of its own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{
    ConnId, ForPeer, LinkFailure, Pair, SyncLink, SyncOrder, SyncReport, SyncWorker,
};
use socket2::{Domain, SockAddr, Socket, Type};
use sync_delta::frame::Nonce;
use sync_delta::{Exposure, FsStore, RoundProgress};
use tracing::{info, warn};

use crate::poller::{Interest, Poller, Ready};

/// The inputs an engine takes from the peer link's sockets.
pub(crate) trait LinkEngine {
    fn handle_dialed(&mut self, now: Instant, conn: ConnId, nonce: Nonce);
    fn handle_dial_failed(&mut self, now: Instant, conn: ConnId);
    fn handle_accepted(&mut self, now: Instant, nonce: Nonce, from: IpAddr) -> Option<ConnId>;
    fn link_receive_window(&self, conn: ConnId) -> usize;
    fn handle_link_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]);
    fn handle_link_closed(&mut self, now: Instant, conn: ConnId);
}

macro_rules! link_engine {
    ($t:ty) => {
        impl LinkEngine for $t {
            fn handle_dialed(&mut self, now: Instant, conn: ConnId, nonce: Nonce) {
                <$t>::handle_dialed(self, now, conn, nonce);
            }
            fn handle_dial_failed(&mut self, now: Instant, conn: ConnId) {
                <$t>::handle_dial_failed(self, now, conn);
            }
            fn handle_accepted(
                &mut self,
                now: Instant,
                nonce: Nonce,
                from: IpAddr,
            ) -> Option<ConnId> {
                <$t>::handle_accepted(self, now, nonce, from)
            }
            fn link_receive_window(&self, conn: ConnId) -> usize {
                <$t>::link_receive_window(self, conn)
            }
            fn handle_link_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
                <$t>::handle_link_bytes(self, now, conn, bytes);
            }
            fn handle_link_closed(&mut self, now: Instant, conn: ConnId) {
                <$t>::handle_link_closed(self, now, conn);
            }
        }
    };
}
link_engine!(Pair);
link_engine!(SyncLink);

/// A fresh handshake nonce from the OS.
pub(crate) fn os_nonce() -> std::io::Result<Nonce> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(Nonce(n))
}

/// No Nagle delay (small messages), and a peer that vanished without a
/// FIN (power loss) is noticed in seconds: keepalive probes while idle, a
/// user timeout while data is unacknowledged. The engines' own deadlines
/// (handshake, heartbeats) notice it sooner; these bound what the kernel
/// holds.
fn tune(sock: &Socket) {
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(10)));
    let _ = sock.set_nonblocking(true);
}

/// A non-blocking listener on `addr`.
///
/// # Errors
/// The address cannot be bound.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(16)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// One connection of the peer link.
struct Conn {
    socket: Socket,
    /// A dial still connecting (non-blocking connect).
    connecting: bool,
    out: Vec<u8>,
    sent: usize,
    /// What the poller watches it for.
    interest: Interest,
}

impl Conn {
    fn new(socket: Socket, connecting: bool) -> Conn {
        let mut c = Conn {
            socket,
            connecting,
            out: Vec::new(),
            sent: 0,
            interest: Interest::Read,
        };
        c.interest = c.wants(false);
        c
    }

    /// Writable matters while connecting or with bytes left to write;
    /// readable unless reading is `paused`.
    fn wants(&self, paused: bool) -> Interest {
        let write = self.connecting || self.sent < self.out.len();
        match (paused, write) {
            (false, true) => Interest::ReadWrite,
            (false, false) => Interest::Read,
            (true, true) => Interest::Write,
            (true, false) => Interest::Nothing,
        }
    }
}

/// Tokens below this are the caller's ([`Sockets::watch`]).
pub(crate) const OWN_TOKENS: u64 = 16;
const TOKEN_LISTENER: u64 = OWN_TOKENS;

fn conn_token(id: ConnId) -> u64 {
    (OWN_TOKENS + 1).saturating_add(id.0)
}

/// What one wait found ready.
#[derive(Default)]
pub(crate) struct Woken {
    /// The caller's own descriptors, by token.
    pub(crate) own: Vec<u64>,
    /// A connection waits to be accepted.
    pub(crate) listener: bool,
    /// Connections and what they are ready for.
    pub(crate) conns: Vec<(ConnId, Ready)>,
}

/// The peer link's listener and connections, numbered by the engine, in
/// one epoll set with the caller's own descriptors.
pub(crate) struct Sockets {
    poller: Poller,
    listener: Option<Socket>,
    peer: Option<SocketAddr>,
    conns: HashMap<ConnId, Conn>,
    /// Bytes the connections have not written yet (the sync worker's
    /// window counts them).
    buffered: Arc<AtomicUsize>,
    /// Bytes of the peer's sync messages handed to the sync worker and not
    /// handled yet: past [`RECEIVE_WINDOW`] the connections are not read
    /// (TCP's own flow control then holds the sender back).
    inbound: Arc<AtomicUsize>,
    /// Since when reading is paused (see [`Sockets::reading_paused`]).
    pause: Option<Instant>,
    /// Why the last dial failed, for a tool that reports it.
    last_dial_error: Option<(ConnId, String)>,
}

impl Sockets {
    ///
    /// # Errors
    /// No epoll set, or the listener cannot join it.
    pub(crate) fn new(
        listener: Option<Socket>,
        peer: Option<SocketAddr>,
        buffered: Arc<AtomicUsize>,
        inbound: Arc<AtomicUsize>,
    ) -> std::io::Result<Sockets> {
        let poller = Poller::new()?;
        if let Some(l) = &listener {
            poller.add(l, TOKEN_LISTENER, Interest::Read)?;
        }
        Ok(Sockets {
            poller,
            listener,
            peer,
            conns: HashMap::new(),
            buffered,
            inbound,
            pause: None,
            last_dial_error: None,
        })
    }

    /// Watches one of the caller's descriptors (readable) under `token`,
    /// below [`OWN_TOKENS`].
    ///
    /// # Errors
    /// The kernel refused the registration.
    pub(crate) fn watch(&self, fd: impl AsFd, token: u64) -> std::io::Result<()> {
        debug_assert!(token < OWN_TOKENS);
        self.poller.add(fd, token, Interest::Read)
    }

    /// Watches one of the caller's descriptors for readability again
    /// (`read`), or for errors only (reading paused).
    ///
    /// # Errors
    /// The kernel refused the change.
    pub(crate) fn watch_reads(&self, fd: impl AsFd, token: u64, read: bool) -> std::io::Result<()> {
        debug_assert!(token < OWN_TOKENS);
        let interest = if read {
            Interest::Read
        } else {
            Interest::Nothing
        };
        self.poller.modify(fd, token, interest)
    }

    /// Waits for something to be ready, or `timeout` (`None`: no limit).
    /// What was found goes into `woken` (cleared first).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>, woken: &mut Woken) {
        woken.own.clear();
        woken.listener = false;
        woken.conns.clear();
        // Writable only while something waits to be written; readable
        // while the sync worker keeps up, and at the end of a pause. The
        // clock is read only when the worker is behind (not at each of a
        // hundred wake-ups a second).
        let mut read_at = None;
        let paused = self.reading_paused(|| *read_at.get_or_insert_with(Instant::now));
        let timeout = match (self.pause, read_at) {
            (Some(since), Some(now)) if paused => {
                let end = (since + MAX_PAUSE).saturating_duration_since(now);
                Some(timeout.map_or(end, |t| t.min(end)))
            }
            _ => timeout,
        };
        for (id, c) in &mut self.conns {
            let wants = c.wants(paused);
            if wants != c.interest {
                match self.poller.modify(&c.socket, conn_token(*id), wants) {
                    Ok(()) => c.interest = wants,
                    Err(e) => warn!(error = %e, conn = id.0, "peer link: poller"),
                }
            }
        }
        if let Err(e) = self.poller.wait(timeout) {
            warn!(error = %e, "poll");
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        for (token, ready) in self.poller.ready() {
            match token {
                t if t < OWN_TOKENS => woken.own.push(t),
                TOKEN_LISTENER => woken.listener = true,
                t => woken.conns.push((ConnId(t - OWN_TOKENS - 1), ready)),
            }
        }
    }

    /// A new connection joins the table and the poller, or is given up.
    fn add_conn(&mut self, engine: &mut impl LinkEngine, now: Instant, id: ConnId, c: Conn) {
        if let Err(e) = self.poller.add(&c.socket, conn_token(id), c.interest) {
            if c.connecting {
                self.dial_failed(engine, now, id, format!("poller: {e}"));
            } else {
                warn!(error = %e, conn = id.0, "peer link: poller");
                engine.handle_link_closed(now, id);
            }
            return;
        }
        self.conns.insert(id, c);
    }

    /// Accepts every waiting connection. The engine decides which may
    /// wait for their handshake; the others are closed at once (dropped).
    /// Failures of accepted connections are the engine's events, paced by
    /// it: nothing is logged here per connection above debug level.
    pub(crate) fn accept(&mut self, engine: &mut impl LinkEngine, now: Instant) {
        loop {
            let Some(l) = &self.listener else { return };
            match l.accept() {
                Ok((sock, from)) => {
                    let Some(from) = from.as_socket() else {
                        continue;
                    };
                    let nonce = match os_nonce() {
                        Ok(n) => n,
                        Err(e) => {
                            warn!(error = %e, "no nonce from the OS; connection refused");
                            continue;
                        }
                    };
                    match engine.handle_accepted(now, nonce, from.ip()) {
                        Some(id) => {
                            tune(&sock);
                            tracing::debug!(%from, conn = id.0, "peer link: accepted");
                            self.add_conn(engine, now, id, Conn::new(sock, false));
                        }
                        None => {
                            tracing::debug!(%from, "peer link: connection turned away");
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(error = %e, "peer link: accept");
                    break;
                }
            }
        }
    }

    fn dial_failed(&mut self, engine: &mut impl LinkEngine, now: Instant, id: ConnId, why: String) {
        info!(error = %why, conn = id.0, "peer link: dial failed");
        self.last_dial_error = Some((id, why));
        engine.handle_dial_failed(now, id);
    }

    /// Starts the dial the engine asked for (a non-blocking connect).
    pub(crate) fn dial(&mut self, engine: &mut impl LinkEngine, now: Instant, id: ConnId) {
        let Some(addr) = self.peer else {
            self.dial_failed(engine, now, id, "no peer address".into());
            return;
        };
        let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
            Ok(s) => s,
            Err(e) => {
                self.dial_failed(engine, now, id, format!("socket: {e}"));
                return;
            }
        };
        tune(&sock);
        // From the listening address, when it is a specific one: the peer
        // sees this end's connections come from the address it knows (and
        // keeps a handshake slot for).
        if let Some(local) = self.dial_from(addr)
            && let Err(e) = sock.bind(&SockAddr::from(local))
        {
            self.dial_failed(engine, now, id, format!("bind to {local}: {e}"));
            return;
        }
        match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS)
                    || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                self.dial_failed(engine, now, id, format!("connect to {addr}: {e}"));
                return;
            }
        }
        self.add_conn(engine, now, id, Conn::new(sock, true));
    }

    /// The address dials go out from: the listener's, when it is a
    /// specific address of the peer's family and scope (port chosen by the
    /// kernel).
    fn dial_from(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let local = self.listener.as_ref()?.local_addr().ok()?.as_socket()?;
        let ip = local.ip();
        let fits = !ip.is_unspecified()
            && ip.is_ipv4() == peer.is_ipv4()
            && ip.is_loopback() == peer.ip().is_loopback();
        fits.then_some(SocketAddr::new(ip, 0))
    }

    /// Why connection `id` never became the link, in words: a failed
    /// dial's own (the OS error) when it was the last one that failed,
    /// else the engine's.
    pub(crate) fn failure_text(&mut self, id: ConnId, why: LinkFailure) -> String {
        match self.last_dial_error.take() {
            Some((d, text)) if d == id => text,
            other => {
                self.last_dial_error = other;
                why.to_string()
            }
        }
    }

    /// A dial that is still connecting: finishes it when `ready` says so.
    /// Returns false when the connection is established (or gone) and the
    /// caller may read it.
    pub(crate) fn connect_ready(
        &mut self,
        engine: &mut impl LinkEngine,
        now: Instant,
        id: ConnId,
        ready: Ready,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return true;
        };
        if !c.connecting {
            return false;
        }
        if ready.write || ready.error {
            let error = match c.socket.take_error() {
                Ok(None) => c.socket.peer_addr().err(),
                Ok(Some(e)) | Err(e) => Some(e),
            };
            if let Some(e) = error {
                self.conns.remove(&id);
                let to = self.peer.map_or_else(String::new, |a| a.to_string());
                self.dial_failed(engine, now, id, format!("connect to {to}: {e}"));
                return true;
            }
            c.connecting = false;
            match os_nonce() {
                Ok(n) => engine.handle_dialed(now, id, n),
                Err(e) => {
                    self.conns.remove(&id);
                    self.dial_failed(engine, now, id, format!("no nonce from the OS: {e}"));
                }
            }
        }
        true
    }

    /// Reads once from a readable connection into the engine, at most
    /// what the engine's link takes now (1 KiB in all before the peer
    /// proved the key). Returns true when there may be more to read (drain
    /// the engine, then call again).
    ///
    /// While reading is paused ([`Sockets::reading_paused`]) nothing is
    /// read unless `ready` shows an error or a hang-up: those are read to
    /// their end at once (the kernel reports them whatever the interest,
    /// so leaving them would wake the thread again and again).
    pub(crate) fn read(
        &mut self,
        engine: &mut impl LinkEngine,
        now: Instant,
        id: ConnId,
        ready: Ready,
    ) -> bool {
        if !ready.error && self.reading_paused(|| now) {
            return false;
        }
        let mut buf = [0u8; 64 * 1024];
        // At least one byte: a connection the engine gave up on is read to
        // its end (or refused on that byte) rather than polled forever.
        let window = engine.link_receive_window(id).clamp(1, buf.len());
        let buf = &mut buf[..window];
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return false;
            };
            match (&c.socket).read(buf) {
                Ok(0) => {
                    self.close(engine, now, id);
                    return false;
                }
                Ok(n) => {
                    engine.handle_link_bytes(now, id, &buf[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Read dry at the end of a pause: the next one starts.
                    if self.inbound.load(Ordering::Relaxed) > RECEIVE_WINDOW {
                        self.pause = Some(now);
                    }
                    return false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    info!(error = %e, conn = id.0, "peer link: read");
                    self.close(engine, now, id);
                    return false;
                }
            }
        }
    }

    /// Hands `order` to the sync worker, counting a message of the peer's
    /// until the worker has handled it. False when the worker is gone.
    pub(crate) fn hand_to_worker(&self, w: &mpsc::Sender<ToWorker>, order: SyncOrder) -> bool {
        if let SyncOrder::Deliver(m) = &order {
            self.inbound.fetch_add(m.encoded_len(), Ordering::Relaxed);
        }
        w.send(ToWorker::Order(order)).is_ok()
    }

    /// Whether the connections wait unread: the sync worker has more than
    /// [`RECEIVE_WINDOW`] of the peer's messages to handle, until it
    /// reports room ([`FromWorker::Room`]), for [`MAX_PAUSE`] at most at a
    /// time. The peer's heartbeats come on the same stream behind the
    /// data: after a pause the connections are read dry (then the next
    /// pause starts), so a worker busy for long (a commit's fsyncs) never
    /// makes the peer look silent. What a long stall lets in is bounded by
    /// the kernel's buffers per pause. `now` is asked for only while the
    /// worker is behind.
    pub(crate) fn reading_paused(&mut self, now: impl FnOnce() -> Instant) -> bool {
        if self.inbound.load(Ordering::Relaxed) <= RECEIVE_WINDOW {
            self.pause = None;
            return false;
        }
        match self.pause {
            None => {
                self.pause = Some(now());
                true
            }
            Some(since) => now().saturating_duration_since(since) < MAX_PAUSE,
        }
    }

    /// Queues bytes the engine asked to send, and writes what the
    /// connection takes now.
    pub(crate) fn send(
        &mut self,
        engine: &mut impl LinkEngine,
        now: Instant,
        id: ConnId,
        bytes: &[u8],
    ) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.out.extend_from_slice(bytes);
        }
        self.flush(engine, now, id);
    }

    /// Writes what the connection can take now.
    pub(crate) fn flush(&mut self, engine: &mut impl LinkEngine, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.connecting {
            return;
        }
        while c.sent < c.out.len() {
            match (&c.socket).write(&c.out[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    info!(error = %e, conn = id.0, "peer link: write");
                    self.close(engine, now, id);
                    return;
                }
            }
        }
        if c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
        }
        self.account();
    }

    fn account(&self) {
        let buffered: usize = self.conns.values().map(|c| c.out.len() - c.sent).sum();
        self.buffered.store(buffered, Ordering::Relaxed);
    }

    /// Closes the connection and tells the engine.
    pub(crate) fn close(&mut self, engine: &mut impl LinkEngine, now: Instant, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            let _ = c.socket.shutdown(std::net::Shutdown::Both);
        }
        self.account();
        engine.handle_link_closed(now, id);
    }

    /// Shuts every connection down (the thread is stopping).
    pub(crate) fn shut_all(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = c.socket.shutdown(std::net::Shutdown::Both);
        }
        self.account();
    }

    /// The connections' ids.
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }
}

// ---------------------------------------------------------------------------
// A thread's inbox

/// The sending side of a thread's inbox: a channel, and a datagram socket
/// pair whose byte wakes the thread's wait.
pub(crate) struct InboxTx<T> {
    tx: mpsc::Sender<T>,
    wake: Arc<UnixDatagram>,
}

impl<T> Clone for InboxTx<T> {
    fn clone(&self) -> Self {
        InboxTx {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> InboxTx<T> {
    /// False when the thread is gone.
    pub(crate) fn send(&self, m: T) -> bool {
        let ok = self.tx.send(m).is_ok();
        // A full wake buffer already wakes the thread: ignore that error.
        let _ = self.wake.send(&[1]);
        ok
    }
}

/// The receiving side: poll [`Inbox::wake`], then [`Inbox::drain`].
pub(crate) struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    pub(crate) wake: UnixDatagram,
}

impl<T> Inbox<T> {
    /// A new inbox and its sender.
    ///
    /// # Errors
    /// The socket pair cannot be made.
    pub(crate) fn new() -> std::io::Result<(InboxTx<T>, Inbox<T>)> {
        let (a, b) = UnixDatagram::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        Ok((
            InboxTx {
                tx,
                wake: Arc::new(a),
            },
            Inbox { rx, wake: b },
        ))
    }

    /// Clears the wake-up bytes and takes the next message.
    pub(crate) fn next(&self) -> Option<T> {
        let mut buf = [0u8; 64];
        while self.wake.recv(&mut buf).is_ok() {}
        self.rx.try_recv().ok()
    }
}

// ---------------------------------------------------------------------------
// The sync worker thread

/// What the sync worker thread is given.
pub(crate) enum ToWorker {
    Order(SyncOrder),
    /// Paths of the tree that changed (from the kernel's notifications),
    /// with when the watcher learnt of them.
    Hints {
        paths: Vec<String>,
        at: Instant,
        wall: SystemTime,
    },
    /// The watcher lost notifications: the next round walks the tree.
    Overflow {
        at: Instant,
        wall: SystemTime,
    },
    /// The watcher failed (a directory it could not watch): hints are
    /// incomplete from now on and the source stops using them.
    HintsLost {
        at: Instant,
        error: notify::Error,
    },
    /// A data message the engine has encoded, given back: its buffers
    /// take the source's next data ([`SyncWorker::recycle`]).
    Recycle(sync_delta::Message),
    Stop,
}

/// Gives a message from the worker back to it once the engine has
/// encoded it ([`ToWorker::Recycle`]): data only, the rest is dropped
/// here. The source keeps a bounded few MiB of such buffers.
pub(crate) fn give_back(w: &mpsc::Sender<ToWorker>, m: ForPeer) {
    if matches!(m.message, sync_delta::Message::Data { .. }) {
        let _ = w.send(ToWorker::Recycle(m.message));
    }
}

/// What the sync worker thread hands back: a message for the link (with
/// its encoded length, counted in the window until the engine takes it)
/// or a report.
pub(crate) enum FromWorker {
    Message(ForPeer, usize),
    Report(SyncReport),
    /// The worker's backlog of the peer's messages fell back within
    /// [`RECEIVE_WINDOW`]: read the connections again.
    Room,
}

/// Bytes of the peer's sync messages the sync worker may have waiting
/// (handed over, not handled) before the connections are not read: a
/// replica whose disk is slower than the link holds this much of the
/// source's data in memory, not the whole round's.
pub(crate) const RECEIVE_WINDOW: usize = 4 << 20;

/// The longest the connections wait unread at a time (the orchestrator's
/// peer timeout is 3.5 s by default).
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Bytes of sync messages the source may have queued towards the link
/// (in the engine's inbox or a connection's send buffer) before it waits.
const SEND_WINDOW: usize = 4 << 20;

/// The replica's round in progress as the sync worker thread last saw it
/// ([`SyncWorker::round_progress`]), for a progress display on another
/// thread. The worker updates it after every order and timeout.
#[derive(Debug, Clone, Default)]
pub struct RoundWatch(Arc<std::sync::Mutex<Watched>>);

#[derive(Debug, Default)]
struct Watched {
    current: Option<RoundProgress>,
    last: Option<RoundProgress>,
    exposure: Option<Exposure>,
}

impl RoundWatch {
    /// The round in progress, `None` between rounds.
    #[must_use]
    pub fn current(&self) -> Option<RoundProgress> {
        self.0.lock().map_or(None, |w| w.current)
    }

    /// The last progress the latest round showed before it ended (the
    /// round in progress, while one runs).
    #[must_use]
    pub fn last(&self) -> Option<RoundProgress> {
        self.0.lock().map_or(None, |w| w.last)
    }

    /// Since when the Backup may lack changes, as the worker last saw it
    /// ([`SyncWorker::exposure`]).
    #[must_use]
    pub fn exposure(&self) -> Option<Exposure> {
        self.0.lock().map_or(None, |w| w.exposure)
    }

    fn set(&self, p: Option<RoundProgress>, exposure: Option<Exposure>) {
        if let Ok(mut w) = self.0.lock() {
            w.current = p;
            w.exposure = exposure;
            if p.is_some() {
                w.last = p;
            }
        }
    }
}

/// Runs the [`SyncWorker`] and its [`FsStore`] on a thread of their own:
/// scans, hashing and applying block only it. `queued` counts the bytes
/// of messages handed to `out` that the engine has not taken yet,
/// `buffered` those the connections have not written: together they are
/// the source's send window.
///
/// # Errors
/// The thread cannot be spawned.
/// `watch` (when given) is updated as rounds go.
/// `inbound` counts the peer's messages handed over and not handled yet
/// (see [`Sockets::hand_to_worker`]); the worker sends [`FromWorker::Room`]
/// when it falls back within [`RECEIVE_WINDOW`].
#[allow(clippy::too_many_arguments)] // the three shared windows, apart
pub(crate) fn spawn_worker_watched(
    mut worker: SyncWorker,
    mut store: FsStore,
    orders: mpsc::Receiver<ToWorker>,
    out: impl Fn(FromWorker) -> bool + Send + 'static,
    queued: Arc<AtomicUsize>,
    buffered: Arc<AtomicUsize>,
    inbound: Arc<AtomicUsize>,
    watch: Option<RoundWatch>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || {
            let mut more = false;
            let mut hints_lost = false;
            loop {
                let now = Instant::now();
                // Wait for an order, the session's deadline, or (when the
                // link's queue was full) room to send more.
                let mut wait = worker
                    .poll_timeout()
                    .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
                if more {
                    wait = wait.min(Duration::from_millis(2));
                }
                let mut batch = Vec::new();
                match orders.recv_timeout(wait) {
                    Ok(m) => batch.push(m),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                while let Ok(m) = orders.try_recv() {
                    batch.push(m);
                }
                // Hints first: a request among the orders must see every
                // change the watcher had reported by then.
                for m in &batch {
                    match m {
                        ToWorker::Hints { paths, at, wall } => {
                            worker.handle_hints(*at, *wall, paths);
                        }
                        ToWorker::Overflow { at, wall } => worker.handle_hint_overflow(*at, *wall),
                        ToWorker::HintsLost { at, error } => {
                            if !std::mem::replace(&mut hints_lost, true) {
                                warn!(%error, "the data directory's watch failed; changes \
                                      reach the Backup at the next full scan from now on");
                            }
                            worker.handle_hints_lost(*at);
                        }
                        ToWorker::Order(_) | ToWorker::Recycle(_) | ToWorker::Stop => {}
                    }
                }
                let mut handled = 0;
                for m in batch {
                    match m {
                        ToWorker::Order(o) => {
                            if let SyncOrder::Deliver(m) = &o {
                                handled += m.encoded_len();
                            }
                            worker.handle_order(Instant::now(), SystemTime::now(), o, &mut store);
                        }
                        ToWorker::Recycle(m) => worker.recycle(m),
                        ToWorker::Stop => return,
                        ToWorker::Hints { .. }
                        | ToWorker::Overflow { .. }
                        | ToWorker::HintsLost { .. } => {}
                    }
                }
                if handled > 0 {
                    let before = inbound.fetch_sub(handled, Ordering::Relaxed);
                    // Back within the window: the engine reads again.
                    if before > RECEIVE_WINDOW
                        && before - handled <= RECEIVE_WINDOW
                        && !out(FromWorker::Room)
                    {
                        return;
                    }
                }
                let now = Instant::now();
                if worker.poll_timeout().is_some_and(|t| t <= now) {
                    worker.handle_timeout(now, &mut store);
                }
                more = false;
                while queued.load(Ordering::Relaxed) + buffered.load(Ordering::Relaxed)
                    < SEND_WINDOW
                {
                    let Some(m) = worker.poll_transmit(Instant::now(), &mut store) else {
                        break;
                    };
                    let len = m.message.encoded_len();
                    queued.fetch_add(len, Ordering::Relaxed);
                    if !out(FromWorker::Message(m, len)) {
                        return;
                    }
                    more = true;
                }
                // Before the reports: a round's last figures are there
                // when its end is reported.
                if let Some(w) = &watch {
                    w.set(worker.round_progress(), worker.exposure());
                }
                while let Some(r) = worker.poll_report() {
                    if !out(FromWorker::Report(r)) {
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every connection and counts what it reads.
    #[derive(Default)]
    struct Taker {
        next: u64,
        read: usize,
        closed: bool,
    }

    impl LinkEngine for Taker {
        fn handle_dialed(&mut self, _: Instant, _: ConnId, _: Nonce) {}
        fn handle_dial_failed(&mut self, _: Instant, _: ConnId) {}
        fn handle_accepted(&mut self, _: Instant, _: Nonce, _: IpAddr) -> Option<ConnId> {
            self.next += 1;
            Some(ConnId(self.next))
        }
        fn link_receive_window(&self, _: ConnId) -> usize {
            usize::MAX
        }
        fn handle_link_bytes(&mut self, _: Instant, _: ConnId, bytes: &[u8]) {
            self.read += bytes.len();
        }
        fn handle_link_closed(&mut self, _: Instant, _: ConnId) {
            self.closed = true;
        }
    }

    /// Waits once (up to `ms`) and reads what is ready.
    fn pump(s: &mut Sockets, e: &mut Taker, ms: u64) -> usize {
        let mut woken = Woken::default();
        s.wait(Some(Duration::from_millis(ms)), &mut woken);
        if woken.listener {
            s.accept(e, Instant::now());
        }
        let conns = woken.conns.clone();
        for (id, ready) in conns {
            while s.read(e, Instant::now(), id, ready) {}
        }
        woken.conns.len()
    }

    /// Past the receive window the connection is not read (its bytes wait
    /// in the kernel, which holds the sender back) for up to a pause;
    /// then it is read dry, and the next pause starts. Back within the
    /// window, it is read at once, and the stream's end after its bytes.
    #[test]
    fn a_worker_behind_pauses_reading_until_it_has_room() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).expect("listen");
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let inbound = Arc::new(AtomicUsize::new(0));
        let mut s = Sockets::new(
            Some(listener),
            None,
            Arc::new(AtomicUsize::new(0)),
            inbound.clone(),
        )
        .expect("sockets");
        let mut e = Taker::default();
        let mut peer = std::net::TcpStream::connect(addr).expect("connect");
        for _ in 0..20 {
            pump(&mut s, &mut e, 20);
            if e.next == 1 {
                break;
            }
        }
        assert_eq!(e.next, 1, "accepted");

        peer.write_all(&[7u8; 1000]).unwrap();
        for _ in 0..20 {
            pump(&mut s, &mut e, 20);
        }
        assert_eq!(e.read, 1000, "read while the worker keeps up");

        // Behind: a pause. Nothing read, no wake-up, until it ends.
        inbound.store(RECEIVE_WINDOW + 1, Ordering::Relaxed);
        let t0 = Instant::now();
        assert!(s.reading_paused(|| t0));
        peer.write_all(&[8u8; 1000]).unwrap();
        while t0.elapsed() < MAX_PAUSE / 2 {
            assert_eq!(pump(&mut s, &mut e, 20), 0, "no wake-up while paused");
        }
        assert_eq!(e.read, 1000, "nothing read while paused");
        // Still behind at the pause's end: read dry, then paused again.
        while e.read < 2000 {
            assert!(t0.elapsed() < MAX_PAUSE * 3, "not read at the pause's end");
            pump(&mut s, &mut e, 50);
        }
        assert!(t0.elapsed() >= MAX_PAUSE, "read before the pause ended");
        peer.write_all(&[9u8; 1000]).unwrap();
        for _ in 0..5 {
            pump(&mut s, &mut e, 20);
        }
        assert_eq!(e.read, 2000, "a new pause after reading dry");

        // Room: read at once.
        inbound.store(RECEIVE_WINDOW, Ordering::Relaxed);
        for _ in 0..20 {
            pump(&mut s, &mut e, 20);
        }
        assert_eq!(e.read, 3000, "read again with room");

        // The peer's end waits with its bytes, and is read with room.
        inbound.store(RECEIVE_WINDOW + 1, Ordering::Relaxed);
        peer.write_all(&[10u8; 10]).unwrap();
        drop(peer);
        for _ in 0..3 {
            pump(&mut s, &mut e, 20);
        }
        assert!(!e.closed && e.read == 3000);
        inbound.store(0, Ordering::Relaxed);
        for _ in 0..20 {
            pump(&mut s, &mut e, 20);
            if e.closed {
                break;
            }
        }
        assert_eq!(e.read, 3010);
        assert!(e.closed, "the end of the stream, after its bytes");
    }
}
