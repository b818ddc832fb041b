//! Peer-link control: who dials, redial backoff, the handshake deadline,
//! how many unauthenticated connections may wait (per source address and
//! in all, one slot kept for the configured peer), how often their
//! failures are reported, and which connection is the link. The bytes are
//! the driver's (a TCP stream per connection); the frames, the Noise
//! handshake, the encryption and the bound on what an unauthenticated
//! connection may buffer are `sync_delta::frame::Link`'s.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sync_delta::LinkError;
use sync_delta::frame::{Link, LinkRole, Nonce, PreSharedKey};

/// One connection of the peer link, numbered by the engine: dials get their
/// number in [`crate::pair::Output::Dial`], accepted connections from
/// [`crate::pair::Pair::handle_accepted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How the peer link is run.
#[derive(Clone)]
pub struct LinkConfig {
    /// Whether this end dials. Both ends listen; exactly one should dial
    /// (see [`LinkConfig::dials_by_address`]).
    pub dials: bool,
    /// The pre-shared key both ends hold; this end proves it when it dials.
    pub key: PreSharedKey,
    /// During a key rotation, the next key: a dialer that proves it is
    /// accepted too (see `sync_delta::frame::Link::with_next_key`).
    pub next_key: Option<PreSharedKey>,
    /// A connection that has not proved the key in this time is closed
    /// (the `Link`'s own deadline, [`sync_delta::frame::HANDSHAKE_TIMEOUT`]
    /// by default).
    pub handshake_timeout: Duration,
    /// First redial delay after a failure or a loss.
    pub min_backoff: Duration,
    /// Longest redial delay (the delay doubles up to it).
    pub max_backoff: Duration,
    /// Accepted connections that may wait for their handshake at once, in
    /// all; more are closed at once ([`LinkFailure::TooManyHandshakes`]).
    /// With [`LinkConfig::peer`] set, one of them is kept for the peer.
    /// This end's own dials are not counted.
    pub max_pending: usize,
    /// Accepted connections from one source address that may wait for
    /// their handshake at once; more are closed at once.
    pub max_pending_per_source: usize,
    /// The configured peer's address: the last of
    /// [`LinkConfig::max_pending`] slots is kept for connections from it,
    /// so that strangers flooding the listener cannot keep the peer out.
    pub peer: Option<IpAddr>,
    /// Failures of accepted connections reported one by one
    /// ([`crate::pair::SyncLinkEvent::LinkFailed`]): at most one per
    /// source address per this interval, and at most
    /// [`LinkConfig::failure_reports`] from all sources in one; the rest
    /// are counted and reported together once per interval
    /// ([`crate::pair::SyncLinkEvent::LinkFailuresSuppressed`]).
    pub failure_report_interval: Duration,
    /// Most failures of accepted connections reported one by one per
    /// [`LinkConfig::failure_report_interval`], from all sources.
    pub failure_reports: u32,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("dials", &self.dials)
            .field("next_key", &self.next_key.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_pending", &self.max_pending)
            .field("max_pending_per_source", &self.max_pending_per_source)
            .field("peer", &self.peer)
            .field("failure_report_interval", &self.failure_report_interval)
            .field("failure_reports", &self.failure_reports)
            .finish_non_exhaustive()
    }
}

impl LinkConfig {
    /// The defaults: no next key, 5 s handshake, redial after 200 ms
    /// doubling to 2 s, at most 16 accepted handshakes waiting at once and
    /// 8 from one address, no peer address (no slot kept), failures of
    /// accepted connections reported at most once a second per address
    /// and 8 times a second in all.
    #[must_use]
    pub fn new(key: PreSharedKey, dials: bool) -> LinkConfig {
        LinkConfig {
            dials,
            key,
            next_key: None,
            handshake_timeout: sync_delta::frame::HANDSHAKE_TIMEOUT,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            max_pending: 16,
            max_pending_per_source: 8,
            peer: None,
            failure_report_interval: Duration::from_secs(1),
            failure_reports: 8,
        }
    }

    /// The dial rule for two ends that both listen: the one whose own
    /// address sorts lower dials the other.
    #[must_use]
    pub fn dials_by_address(own: std::net::SocketAddr, peer: std::net::SocketAddr) -> bool {
        own < peer
    }
}

/// Why the engine closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The authenticated connection's records were bad (a record that
    /// fails authentication or does not decode, a stale epoch, buffer
    /// limit).
    Refused,
    /// The handshake failed (wrong key, malformed records, another frame
    /// version, more bytes than an unauthenticated caller may send); the
    /// connection is reported with its [`LinkFailure`].
    HandshakeFailed,
    /// A newer authenticated connection replaced this one (the peer
    /// restarted).
    Replaced,
    /// The peer stopped answering heartbeats over an open connection.
    PeerSilent,
    /// Redundancy was switched off.
    Disabled,
    /// The sync session failed; the connection starts over.
    SyncFailed,
}

/// Why a connection never became the link (a dialling end tries again
/// after its backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkFailure {
    /// The dial did not connect (refused, unreachable).
    DialFailed,
    /// The connect and the handshake did not finish in time.
    HandshakeTimeout,
    /// The peer's handshake proof did not verify, or the peer refused
    /// this end's: one of the two holds another key.
    WrongKey,
    /// The handshake's records were malformed.
    Refused,
    /// The peer speaks another frame version (`sync_delta::frame::VERSION`
    /// here): both units must run the same release.
    PeerVersion {
        /// The version the peer's bytes carry.
        theirs: u8,
    },
    /// The peer closed the connection before the handshake finished
    /// without a word: a listener on frame version 1 does that with a
    /// version 2 hello (one on this version says why it refuses).
    ClosedInHandshake,
    /// The caller sent more than an unauthenticated connection may
    /// buffer (`sync_delta::frame::MAX_PRE_AUTH`, 1 KiB) before it proved
    /// the key.
    PreAuthOverflow,
    /// An accepted connection closed at once: too many handshakes were
    /// waiting from its address ([`LinkConfig::max_pending_per_source`])
    /// or in all ([`LinkConfig::max_pending`]).
    TooManyHandshakes,
}

impl std::fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ours = sync_delta::frame::VERSION;
        match self {
            LinkFailure::DialFailed => f.write_str("connect failed"),
            LinkFailure::HandshakeTimeout => f.write_str("handshake timed out"),
            LinkFailure::WrongKey => {
                f.write_str("handshake: the key proof does not verify (wrong key)")
            }
            LinkFailure::Refused => f.write_str("handshake: malformed records"),
            LinkFailure::PreAuthOverflow => write!(
                f,
                "handshake: more than {} bytes before the key was proved",
                sync_delta::frame::MAX_PRE_AUTH
            ),
            LinkFailure::TooManyHandshakes => {
                f.write_str("too many handshakes waiting: closed at once")
            }
            LinkFailure::PeerVersion { theirs } => write!(
                f,
                "the peer speaks frame version {theirs}, this node speaks version {ours}: \
                 both units must run the same release (see the CHANGELOG's upgrade path)"
            ),
            LinkFailure::ClosedInHandshake => write!(
                f,
                "the peer closed the connection during the handshake without an answer \
                 (a peer on frame version {} does that; this node speaks version {ours})",
                ours - 1
            ),
        }
    }
}

impl LinkFailure {
    fn of(e: &LinkError) -> LinkFailure {
        match e {
            LinkError::BadProof | LinkError::KeyRefused => LinkFailure::WrongKey,
            LinkError::HandshakeTimeout => LinkFailure::HandshakeTimeout,
            LinkError::PreAuthOverflow { .. } => LinkFailure::PreAuthOverflow,
            LinkError::PeerVersion { theirs, .. } => LinkFailure::PeerVersion { theirs: *theirs },
            _ => LinkFailure::Refused,
        }
    }
}

/// The connection inputs of an engine that owns a peer link
/// ([`crate::pair::Pair`], [`crate::pair::SyncLink`]), written once: each
/// hands the input to the engine's `link` and moves what came of it with
/// the engine's `pump`. `$out` names the engine's output type, for the
/// docs.
macro_rules! link_inputs {
    ($out:literal) => {
        #[doc = concat!(
            "The dial [`", $out, "::Dial`](crate::pair::", $out, "::Dial) asked for ",
            "connected; `nonce` is fresh from the driver's CSPRNG."
        )]
        pub fn handle_dialed(
            &mut self,
            now: ::std::time::Instant,
            conn: $crate::pair::ConnId,
            nonce: ::sync_delta::frame::Nonce,
        ) {
            self.link.handle_dialed(now, conn, nonce);
            self.pump(now);
        }

        /// The dial failed (refused, unreachable).
        pub fn handle_dial_failed(&mut self, now: ::std::time::Instant, conn: $crate::pair::ConnId) {
            self.link.handle_dial_failed(now, conn);
            self.pump(now);
        }

        /// A connection from `from` (its source address) was accepted;
        /// `nonce` is fresh from the driver's CSPRNG. Returns its id, or
        /// `None` when it must be closed at once: the link is off, or too
        /// many handshakes are waiting from that address or in all (see
        /// [`LinkConfig::max_pending`](crate::pair::LinkConfig::max_pending);
        /// counted, and reported like a failed handshake).
        pub fn handle_accepted(
            &mut self,
            now: ::std::time::Instant,
            nonce: ::sync_delta::frame::Nonce,
            from: ::std::net::IpAddr,
        ) -> Option<$crate::pair::ConnId> {
            let id = self.link.handle_accepted(now, nonce, from);
            self.pump(now);
            id
        }

        /// How many bytes to read from connection `conn` before passing
        /// them to [`Self::handle_link_bytes`]: at most
        /// [`sync_delta::frame::MAX_PRE_AUTH`] (1 KiB) in all until its
        /// peer has proved the key, unbounded (`usize::MAX`) once it is
        /// the link; 0 for a connection the engine does not hold. Reading
        /// no more than this keeps a caller that has not proved the key
        /// from filling a buffer.
        #[must_use]
        pub fn link_receive_window(&self, conn: $crate::pair::ConnId) -> usize {
            self.link.receive_window(conn)
        }

        /// Bytes read from a connection.
        pub fn handle_link_bytes(
            &mut self,
            now: ::std::time::Instant,
            conn: $crate::pair::ConnId,
            bytes: &[u8],
        ) {
            self.link.handle_link_bytes(now, conn, bytes);
            self.pump(now);
        }

        #[doc = concat!(
            "The connection ended (EOF, reset, or after [`", $out, "::Close`](crate::pair::",
            $out, "::Close))."
        )]
        pub fn handle_link_closed(&mut self, now: ::std::time::Instant, conn: $crate::pair::ConnId) {
            self.link.handle_link_closed(now, conn);
            self.pump(now);
        }
    };
}
pub(super) use link_inputs;

pub(crate) enum LinkOut {
    Dial(ConnId),
    Send(ConnId, Vec<u8>),
    Close(ConnId, CloseReason),
}

/// Counters of the peer link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Dials asked of the driver.
    pub dials: u64,
    /// Connections that proved the key.
    pub established: u64,
    /// Connections closed for a handshake that did not finish in time.
    pub handshake_timeouts: u64,
    /// Connections closed for bad records (wrong key, failed
    /// authentication, another frame version).
    pub refused: u64,
    /// Accepted connections turned away (redundancy off, too many
    /// handshakes waiting).
    pub turned_away: u64,
    /// Of those, the ones over a handshake limit (per source address or
    /// in all).
    pub over_limit: u64,
    /// Failures of accepted connections not reported one by one (counted
    /// in a [`crate::pair::SyncLinkEvent::LinkFailuresSuppressed`]).
    pub failures_suppressed: u64,
    /// Authenticated frames received.
    pub frames_in: u64,
    /// Frames that could not be sent (no link up).
    pub unsent: u64,
}

/// A connection; its `Link` owns the handshake deadline.
struct Conn {
    id: ConnId,
    link: Link,
    /// The source address of an accepted connection; `None` for a dial.
    from: Option<IpAddr>,
}

/// A connection waiting for its handshake, as
/// [`crate::pair::SyncLink::pending_handshakes`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingHandshake {
    /// The connection.
    pub conn: ConnId,
    /// Its source address (`None`: this end dialled it).
    pub from: Option<IpAddr>,
    /// The bytes its link holds (at most
    /// [`sync_delta::frame::MAX_PRE_AUTH`]).
    pub buffered: usize,
}

/// A connection that never became the link, for the engine's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) conn: ConnId,
    pub(crate) why: LinkFailure,
    pub(crate) from: Option<IpAddr>,
}

/// Failures reported together: how many, from how many addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub(crate) count: u64,
    pub(crate) sources: u64,
}

/// Paces the reports of accepted connections' failures, so that a flood
/// of strangers costs a log line a second per address at most, plus one
/// summary.
#[derive(Debug, Default)]
struct FailureReports {
    /// Addresses reported one by one in the current interval, and when.
    reported: Vec<(IpAddr, Instant)>,
    /// The current interval's start.
    window: Option<Instant>,
    /// Reports one by one in the current interval.
    in_window: u32,
    /// Suppressed since the last summary.
    count: u64,
    /// Their distinct addresses, up to [`SUMMARY_ADDRESSES`].
    addresses: Vec<IpAddr>,
    /// When the summary goes out.
    due: Option<Instant>,
}

/// Distinct addresses a summary counts, at most.
const SUMMARY_ADDRESSES: usize = 64;

impl FailureReports {
    /// Whether a failure from `from` at `now` is reported one by one;
    /// false when it is counted for the summary instead.
    fn admit(&mut self, now: Instant, from: IpAddr, every: Duration, most: u32) -> bool {
        if self.window.is_none_or(|w| now >= w + every) {
            self.window = Some(now);
            self.in_window = 0;
        }
        self.reported.retain(|&(_, t)| now < t + every);
        let quiet = !self.reported.iter().any(|&(a, _)| a == from);
        if quiet && self.in_window < most {
            self.in_window += 1;
            self.reported.push((from, now));
            return true;
        }
        self.count += 1;
        if !self.addresses.contains(&from) && self.addresses.len() < SUMMARY_ADDRESSES {
            self.addresses.push(from);
        }
        self.due.get_or_insert(now + every);
        false
    }

    /// The summary, when it is due at `now`.
    fn summary(&mut self, now: Instant) -> Option<Suppressed> {
        if self.due.is_none_or(|d| now < d) {
            return None;
        }
        self.due = None;
        let s = Suppressed {
            count: self.count,
            sources: self.addresses.len() as u64,
        };
        self.count = 0;
        self.addresses.clear();
        Some(s)
    }
}

pub(crate) struct LinkControl {
    cfg: LinkConfig,
    enabled: bool,
    up: Option<Conn>,
    pending: Vec<Conn>,
    dialing: Option<(ConnId, Instant)>,
    next_dial: Option<Instant>,
    backoff: Duration,
    next_id: u64,
    epoch: sync_delta::Epoch,
    newest_peer: sync_delta::Epoch,
    pub(crate) out: VecDeque<LinkOut>,
    pub(crate) frames: VecDeque<(u8, Vec<u8>)>,
    /// `Some(true)` when the link came up, `Some(false)` when it went down,
    /// since the engine last looked.
    pub(crate) changes: VecDeque<bool>,
    /// Connections that never became the link, since the engine last
    /// looked.
    pub(crate) failures: VecDeque<Failure>,
    /// Summaries of the failures not reported one by one.
    pub(crate) suppressed: VecDeque<Suppressed>,
    reports: FailureReports,
    pub(crate) stats: LinkStats,
}

impl std::fmt::Debug for LinkControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkControl")
            .field("enabled", &self.enabled)
            .field("up", &self.up.as_ref().map(|c| c.id))
            .field("pending", &self.pending.len())
            .field("dialing", &self.dialing)
            .field("next_dial", &self.next_dial)
            .finish_non_exhaustive()
    }
}

impl LinkControl {
    /// New keys for the connections made from now on (a rotation); the
    /// link that is up, already authenticated, stays.
    pub(crate) fn set_keys(&mut self, key: PreSharedKey, next: Option<PreSharedKey>) {
        self.cfg.key = key;
        self.cfg.next_key = next;
    }

    pub(crate) fn new(cfg: LinkConfig, epoch: sync_delta::Epoch) -> LinkControl {
        let backoff = cfg.min_backoff;
        LinkControl {
            cfg,
            enabled: false,
            up: None,
            pending: Vec::new(),
            dialing: None,
            next_dial: None,
            backoff,
            next_id: 1,
            epoch,
            newest_peer: sync_delta::Epoch::default(),
            out: VecDeque::new(),
            frames: VecDeque::new(),
            changes: VecDeque::new(),
            failures: VecDeque::new(),
            suppressed: VecDeque::new(),
            reports: FailureReports::default(),
            stats: LinkStats::default(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.is_some()
    }

    pub(crate) fn set_enabled(&mut self, now: Instant, enabled: bool) {
        if enabled == self.enabled {
            return;
        }
        self.enabled = enabled;
        if enabled {
            self.backoff = self.cfg.min_backoff;
            self.next_dial = self.cfg.dials.then_some(now);
        } else {
            self.next_dial = None;
            if let Some((id, _)) = self.dialing.take() {
                self.out
                    .push_back(LinkOut::Close(id, CloseReason::Disabled));
            }
            for c in std::mem::take(&mut self.pending) {
                self.out
                    .push_back(LinkOut::Close(c.id, CloseReason::Disabled));
            }
            self.close_up(now, CloseReason::Disabled);
        }
    }

    pub(crate) fn set_epoch(&mut self, epoch: sync_delta::Epoch) {
        self.epoch = epoch;
        if let Some(c) = &mut self.up {
            c.link.set_epoch(epoch);
        }
        for c in &mut self.pending {
            c.link.set_epoch(epoch);
        }
    }

    fn fresh_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn open(
        &mut self,
        now: Instant,
        id: ConnId,
        role: LinkRole,
        nonce: Nonce,
        from: Option<IpAddr>,
    ) {
        let link = Link::new(
            role,
            self.cfg.key.clone(),
            nonce,
            self.epoch,
            self.newest_peer,
            now,
        )
        .with_handshake_timeout(self.cfg.handshake_timeout)
        .with_next_key(self.cfg.next_key.clone());
        let mut c = Conn { id, link, from };
        let mut bytes = Vec::new();
        if c.link.poll_transmit(&mut bytes) {
            self.out.push_back(LinkOut::Send(c.id, bytes));
        }
        self.pending.push(c);
    }

    pub(crate) fn handle_dialed(&mut self, now: Instant, id: ConnId, nonce: Nonce) {
        if self.dialing.is_some_and(|(d, _)| d == id) && self.enabled {
            self.dialing = None;
            self.open(now, id, LinkRole::Initiator, nonce, None);
        } else {
            // A dial the engine gave up on, or redundancy went off.
            self.out
                .push_back(LinkOut::Close(id, CloseReason::Disabled));
        }
    }

    pub(crate) fn handle_dial_failed(&mut self, now: Instant, id: ConnId) {
        if self.dialing.is_some_and(|(d, _)| d == id) {
            self.dialing = None;
            self.fail(now, id, LinkFailure::DialFailed, None);
            self.schedule_redial(now);
        }
    }

    /// Reports a connection that never became the link: a dial's at once,
    /// an accepted one's paced by [`FailureReports`].
    fn fail(&mut self, now: Instant, conn: ConnId, why: LinkFailure, from: Option<IpAddr>) {
        if let Some(addr) = from {
            let every = self.cfg.failure_report_interval;
            if !self
                .reports
                .admit(now, addr, every, self.cfg.failure_reports)
            {
                self.stats.failures_suppressed += 1;
                return;
            }
        }
        self.failures.push_back(Failure { conn, why, from });
    }

    pub(crate) fn handle_accepted(
        &mut self,
        now: Instant,
        nonce: Nonce,
        from: IpAddr,
    ) -> Option<ConnId> {
        if !self.enabled {
            self.stats.turned_away += 1;
            return None;
        }
        // A dual-stack listener sees IPv4 callers as ::ffff:a.b.c.d.
        let from = from.to_canonical();
        let (mut all, mut same) = (0, 0);
        for c in &self.pending {
            if let Some(a) = c.from {
                all += 1;
                same += usize::from(a == from);
            }
        }
        // One slot of the total is the configured peer's.
        let total = match self.cfg.peer {
            Some(peer) if peer.to_canonical() != from => self.cfg.max_pending.saturating_sub(1),
            _ => self.cfg.max_pending,
        };
        if all >= total || same >= self.cfg.max_pending_per_source {
            self.stats.turned_away += 1;
            self.stats.over_limit += 1;
            let id = self.fresh_id();
            self.fail(now, id, LinkFailure::TooManyHandshakes, Some(from));
            return None;
        }
        let id = self.fresh_id();
        self.open(now, id, LinkRole::Responder, nonce, Some(from));
        Some(id)
    }

    /// How many bytes connection `id` takes now (see
    /// `link_receive_window`).
    pub(crate) fn receive_window(&self, id: ConnId) -> usize {
        if self.up.as_ref().is_some_and(|c| c.id == id) {
            return usize::MAX;
        }
        self.pending
            .iter()
            .find(|c| c.id == id)
            .map_or(0, |c| c.link.receive_window())
    }

    /// The connections waiting for their handshake.
    pub(crate) fn pending_handshakes(&self) -> impl Iterator<Item = PendingHandshake> + '_ {
        self.pending.iter().map(|c| PendingHandshake {
            conn: c.id,
            from: c.from,
            buffered: c.link.buffered(),
        })
    }

    fn schedule_redial(&mut self, now: Instant) {
        if self.enabled && self.cfg.dials && self.up.is_none() && self.dialing.is_none() {
            let at = now + self.backoff;
            self.next_dial = Some(self.next_dial.map_or(at, |t| t.max(at)));
            self.backoff = (self.backoff * 2).min(self.cfg.max_backoff);
        }
    }

    /// Bytes read from connection `id`.
    pub(crate) fn handle_link_bytes(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        if self.up.as_ref().is_some_and(|c| c.id == id) {
            let Some(mut c) = self.up.take() else { return };
            let ok = self.feed(now, &mut c, bytes).is_ok();
            if ok {
                self.up = Some(c);
            } else {
                self.stats.refused += 1;
                self.out.push_back(LinkOut::Close(id, CloseReason::Refused));
                self.newest_peer = self.newest_peer.max(c.link.newest_peer_epoch());
                self.changes.push_back(false);
                self.schedule_redial(now);
            }
            return;
        }
        let Some(i) = self.pending.iter().position(|c| c.id == id) else {
            return;
        };
        let mut c = self.pending.swap_remove(i);
        if let Err(e) = self.feed(now, &mut c, bytes) {
            self.stats.refused += 1;
            self.fail(now, id, LinkFailure::of(&e), c.from);
            self.out
                .push_back(LinkOut::Close(id, CloseReason::HandshakeFailed));
            self.schedule_redial(now);
            return;
        }
        if !c.link.is_established() {
            self.pending.push(c);
            return;
        }
        // Authenticated: it is the link now. An older one is from before
        // the peer restarted.
        self.stats.established += 1;
        self.backoff = self.cfg.min_backoff;
        self.next_dial = None;
        if let Some(old) = self.up.take() {
            self.out
                .push_back(LinkOut::Close(old.id, CloseReason::Replaced));
            self.changes.push_back(false);
        }
        self.up = Some(c);
        self.changes.push_back(true);
    }

    /// Feeds bytes, collects frames and handshake answers (a refusal too,
    /// sent before the close); the error when the connection must close.
    fn feed(&mut self, now: Instant, c: &mut Conn, mut bytes: &[u8]) -> Result<(), LinkError> {
        let mut result = Ok(());
        while !bytes.is_empty() {
            // The link buffers at most two frames undrained, and 1 KiB
            // before the handshake finished: feed in pieces it takes (a
            // driver that read more than the window, say the peer's reply
            // and its first frames together, is served too; a piece it
            // cannot take fails the link).
            let step = c
                .link
                .receive_window()
                .clamp(1, sync_delta::frame::MAX_FRAME);
            let (piece, rest) = bytes.split_at(step.min(bytes.len()));
            bytes = rest;
            result = c.link.handle_bytes(now, piece).and_then(|()| {
                while let Some(f) = c.link.poll_frame()? {
                    self.stats.frames_in += 1;
                    self.frames.push_back((f.channel, f.payload));
                }
                Ok(())
            });
            let mut out = Vec::new();
            if c.link.poll_transmit(&mut out) {
                self.out.push_back(LinkOut::Send(c.id, out));
            }
            if result.is_err() {
                break;
            }
        }
        self.newest_peer = self.newest_peer.max(c.link.newest_peer_epoch());
        result
    }

    /// The driver saw connection `id` end.
    pub(crate) fn handle_link_closed(&mut self, now: Instant, id: ConnId) {
        if self.up.as_ref().is_some_and(|c| c.id == id) {
            if let Some(c) = self.up.take() {
                self.newest_peer = self.newest_peer.max(c.link.newest_peer_epoch());
            }
            self.changes.push_back(false);
            self.schedule_redial(now);
        } else if let Some(i) = self.pending.iter().position(|c| c.id == id) {
            let c = self.pending.swap_remove(i);
            self.fail(now, id, LinkFailure::ClosedInHandshake, c.from);
            self.schedule_redial(now);
        } else if self.dialing.is_some_and(|(d, _)| d == id) {
            self.dialing = None;
            self.fail(now, id, LinkFailure::DialFailed, None);
            self.schedule_redial(now);
        }
    }

    /// Closes the authenticated connection (heartbeats stopped, redundancy
    /// off, a failed sync session).
    pub(crate) fn close_up(&mut self, now: Instant, why: CloseReason) {
        if let Some(c) = self.up.take() {
            self.newest_peer = self.newest_peer.max(c.link.newest_peer_epoch());
            self.out.push_back(LinkOut::Close(c.id, why));
            self.changes.push_back(false);
            self.schedule_redial(now);
        }
    }

    /// Sends `payload` on `channel` over the authenticated connection.
    pub(crate) fn send(&mut self, channel: u8, payload: &[u8]) -> bool {
        let Some(c) = &mut self.up else {
            self.stats.unsent += 1;
            return false;
        };
        let mut out = Vec::new();
        if c.link.send(channel, payload, &mut out).is_err() {
            self.stats.unsent += 1;
            return false;
        }
        self.out.push_back(LinkOut::Send(c.id, out));
        true
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let pending = self
            .pending
            .iter()
            .filter_map(|c| c.link.poll_timeout())
            .min();
        let dialing = self.dialing.map(|(_, t)| t);
        [pending, dialing, self.next_dial, self.reports.due]
            .into_iter()
            .flatten()
            .min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for c in &mut self.pending {
            c.link.handle_timeout(now);
        }
        let (late, keep): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|c| c.link.error().is_some());
        self.pending = keep;
        for c in late {
            self.stats.handshake_timeouts += 1;
            self.fail(now, c.id, LinkFailure::HandshakeTimeout, c.from);
            self.out
                .push_back(LinkOut::Close(c.id, CloseReason::HandshakeTimeout));
            self.schedule_redial(now);
        }
        if let Some((id, t)) = self.dialing
            && t <= now
        {
            // The driver never reported the dial: give up on it.
            self.dialing = None;
            self.out
                .push_back(LinkOut::Close(id, CloseReason::HandshakeTimeout));
            self.fail(now, id, LinkFailure::HandshakeTimeout, None);
            self.stats.handshake_timeouts += 1;
            self.schedule_redial(now);
        }
        if let Some(s) = self.reports.summary(now) {
            self.suppressed.push_back(s);
        }
        if self.next_dial.is_some_and(|t| t <= now) {
            self.next_dial = None;
            let busy = self.up.is_some()
                || self.dialing.is_some()
                || self.pending.iter().any(|c| c.link.is_established());
            if self.enabled && self.cfg.dials && !busy {
                let id = self.fresh_id();
                self.stats.dials += 1;
                self.dialing = Some((id, now + self.cfg.handshake_timeout));
                self.out.push_back(LinkOut::Dial(id));
            }
        }
    }
}
