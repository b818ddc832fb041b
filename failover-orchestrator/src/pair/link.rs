//! Peer-link control: who dials, redial backoff, the handshake deadline,
//! how many unauthenticated connections may wait, and which connection is
//! the link. The bytes are the driver's (a TCP stream per connection); the
//! frames, the Noise handshake and the encryption are
//! `sync_delta::frame::Link`'s.

use std::collections::VecDeque;
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
    /// Unauthenticated connections that may wait for their handshake at
    /// once; more are refused.
    pub max_pending: usize,
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
            .finish_non_exhaustive()
    }
}

impl LinkConfig {
    /// The defaults: no next key, 5 s handshake, redial after 200 ms
    /// doubling to 2 s, four handshakes at once.
    #[must_use]
    pub fn new(key: PreSharedKey, dials: bool) -> LinkConfig {
        LinkConfig {
            dials,
            key,
            next_key: None,
            handshake_timeout: sync_delta::frame::HANDSHAKE_TIMEOUT,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            max_pending: 4,
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
    /// The records were bad (wrong key, a record that fails
    /// authentication, another frame version, buffer limit).
    Refused,
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

        /// A connection was accepted; `nonce` is fresh from the driver's
        /// CSPRNG. Returns its id, or `None` when it must be closed at once
        /// (the link is off, or too many handshakes are waiting).
        pub fn handle_accepted(
            &mut self,
            now: ::std::time::Instant,
            nonce: ::sync_delta::frame::Nonce,
        ) -> Option<$crate::pair::ConnId> {
            let id = self.link.handle_accepted(now, nonce);
            self.pump(now);
            id
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
    /// Authenticated frames received.
    pub frames_in: u64,
    /// Frames that could not be sent (no link up).
    pub unsent: u64,
}

/// A connection; its `Link` owns the handshake deadline.
struct Conn {
    id: ConnId,
    link: Link,
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
    pub(crate) failures: VecDeque<(ConnId, LinkFailure)>,
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

    fn open(&mut self, now: Instant, id: ConnId, role: LinkRole, nonce: Nonce) {
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
        let mut c = Conn { id, link };
        let mut bytes = Vec::new();
        if c.link.poll_transmit(&mut bytes) {
            self.out.push_back(LinkOut::Send(c.id, bytes));
        }
        self.pending.push(c);
    }

    pub(crate) fn handle_dialed(&mut self, now: Instant, id: ConnId, nonce: Nonce) {
        if self.dialing.is_some_and(|(d, _)| d == id) && self.enabled {
            self.dialing = None;
            self.open(now, id, LinkRole::Initiator, nonce);
        } else {
            // A dial the engine gave up on, or redundancy went off.
            self.out
                .push_back(LinkOut::Close(id, CloseReason::Disabled));
        }
    }

    pub(crate) fn handle_dial_failed(&mut self, now: Instant, id: ConnId) {
        if self.dialing.is_some_and(|(d, _)| d == id) {
            self.dialing = None;
            self.failures.push_back((id, LinkFailure::DialFailed));
            self.schedule_redial(now);
        }
    }

    pub(crate) fn handle_accepted(&mut self, now: Instant, nonce: Nonce) -> Option<ConnId> {
        if !self.enabled || self.pending.len() >= self.cfg.max_pending {
            self.stats.turned_away += 1;
            return None;
        }
        let id = self.fresh_id();
        self.open(now, id, LinkRole::Responder, nonce);
        Some(id)
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
            self.failures.push_back((id, LinkFailure::of(&e)));
            self.out.push_back(LinkOut::Close(id, CloseReason::Refused));
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
    fn feed(&mut self, now: Instant, c: &mut Conn, bytes: &[u8]) -> Result<(), LinkError> {
        // The link buffers at most two frames undrained: feed in pieces.
        let step = sync_delta::frame::MAX_FRAME;
        let mut result = Ok(());
        for piece in bytes.chunks(step.max(1)) {
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
            self.pending.swap_remove(i);
            self.failures
                .push_back((id, LinkFailure::ClosedInHandshake));
            self.schedule_redial(now);
        } else if self.dialing.is_some_and(|(d, _)| d == id) {
            self.dialing = None;
            self.failures.push_back((id, LinkFailure::DialFailed));
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
        [pending, dialing, self.next_dial]
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
            self.failures
                .push_back((c.id, LinkFailure::HandshakeTimeout));
            self.out
                .push_back(LinkOut::Close(c.id, CloseReason::HandshakeTimeout));
            self.schedule_redial(now);
        }
        if let Some((id, t)) = self.dialing {
            if t <= now {
                // The driver never reported the dial: give up on it.
                self.dialing = None;
                self.out
                    .push_back(LinkOut::Close(id, CloseReason::HandshakeTimeout));
                self.failures.push_back((id, LinkFailure::HandshakeTimeout));
                self.stats.handshake_timeouts += 1;
                self.schedule_redial(now);
            }
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
