//! Versioned, length-prefixed, checksummed and authenticated frames, and
//! the pre-shared-key handshake: the peer link that sync and the
//! orchestrator's peer messages share, multiplexed by a channel number.
//!
//! Sans-IO: feed received bytes to [`Link::handle_bytes`], drain
//! [`Link::poll_frame`]; handshake bytes to send come from
//! [`Link::poll_transmit`]; [`Link::send`] encodes an application frame
//! into a caller `Vec`. The handshake nonces come from the caller (a
//! CSPRNG in the driver), never from configuration; so does the time
//! (`now`), against which the link keeps its own handshake deadline
//! ([`Link::poll_timeout`], [`Link::handle_timeout`]).
//!
//! # Frame layout (version 1, little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `"SD"` |
//! | 2 | 1 | version (1) |
//! | 3 | 1 | kind: 0 hello, 1 reply, 2 proof, 3 data |
//! | 4 | 1 | channel ([`CHANNEL_SYNC`], [`CHANNEL_PEER`], others opaque) |
//! | 5 | 1 | flags (0) |
//! | 6 | 4 | payload length (≤ [`MAX_PAYLOAD`]) |
//! | 10 | 8 | sender epoch term |
//! | 18 | 8 | sender epoch node |
//! | 26 | n | payload |
//! | 26+n | 4 | CRC-32C of the header and payload |
//! | 30+n | 16 | MAC: keyed BLAKE3 of (sequence number, header, payload) under the direction's session key; zero in handshake frames |
//!
//! # Handshake (mutual challenge)
//!
//! 1. initiator → `hello(n_i)`
//! 2. responder → `reply(n_r, P_r)`, `P_r = BLAKE3_keyed(K, "responder" ‖ n_i ‖ n_r)`
//! 3. initiator checks `P_r`, → `proof(P_i)`, `P_i = BLAKE3_keyed(K, "initiator" ‖ n_i ‖ n_r)`
//! 4. responder checks `P_i`.
//!
//! A link that has not finished the handshake [`HANDSHAKE_TIMEOUT`] after
//! it was created fails with [`LinkError::HandshakeTimeout`].
//!
//! `K` is derived from the pre-shared secret; each direction's session key
//! is derived from `K`, both nonces and the direction. Frame sequence
//! numbers are implicit (counted per direction), so a replayed, dropped or
//! reordered frame fails its MAC.

use std::time::{Duration, Instant};

use crate::epoch::Epoch;
use crate::error::{LinkError, WireError};

/// The frame format version this build speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 26;
/// Trailer (CRC + MAC) length in bytes.
pub const TRAILER_LEN: usize = 20;
/// Largest payload accepted or sent.
pub const MAX_PAYLOAD: u32 = 1 << 21;
/// Largest whole frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD as usize + TRAILER_LEN;
/// Channel of sync-delta's messages.
pub const CHANNEL_SYNC: u8 = 0;
/// Channel conventionally used for the orchestrator's peer messages.
pub const CHANNEL_PEER: u8 = 1;
/// Default time from [`Link::new`] to a finished handshake (see
/// [`Link::with_handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const MAGIC: [u8; 2] = *b"SD";
const MAC_LEN: usize = 16;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind {
    /// Handshake step 1.
    Hello = 0,
    /// Handshake step 2.
    Reply = 1,
    /// Handshake step 3.
    Proof = 2,
    /// Authenticated application data.
    Data = 3,
}

impl FrameKind {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Self::Hello,
            1 => Self::Reply,
            2 => Self::Proof,
            3 => Self::Data,
            kind => return Err(WireError::UnknownKind { kind }),
        })
    }
}

/// A decoded frame (before authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// Its kind.
    pub kind: FrameKind,
    /// Its channel.
    pub channel: u8,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The header bytes (covered by the MAC).
    pub header: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// The MAC field.
    pub mac: [u8; MAC_LEN],
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, else the frame and the
/// bytes it used. The header is checked before the payload is awaited, so
/// an oversized length is refused without buffering it.
///
/// # Errors
/// [`WireError`] for a bad magic, version, kind, flags, length or checksum.
pub fn decode(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        return Ok(None);
    }
    let header = &buf[..HEADER_LEN];
    if header[..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if header[2] != VERSION {
        return Err(WireError::UnsupportedVersion { version: header[2] });
    }
    let kind = FrameKind::from_u8(header[3])?;
    if header[5] != 0 {
        return Err(WireError::Reserved);
    }
    let len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            len,
            max: MAX_PAYLOAD,
        });
    }
    let total = HEADER_LEN + len as usize + TRAILER_LEN;
    if buf.len() < total {
        return Ok(None);
    }
    let body_end = HEADER_LEN + len as usize;
    let crc = u32::from_le_bytes(le4(&buf[body_end..body_end + 4]));
    if crc32c::crc32c(&buf[..body_end]) != crc {
        return Err(WireError::BadChecksum);
    }
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&buf[body_end + 4..total]);
    let epoch = Epoch {
        term: u64::from_le_bytes(le8(&header[10..18])),
        node: u64::from_le_bytes(le8(&header[18..26])),
    };
    Ok(Some((
        RawFrame {
            kind,
            channel: header[4],
            epoch,
            header,
            payload: &buf[HEADER_LEN..body_end],
            mac,
        },
        total,
    )))
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    a
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    a
}

/// Encodes one frame onto `out`; `mac_key` and `seq` authenticate it (no
/// key: a zero MAC, for handshake frames).
///
/// # Errors
/// [`WireError::TooLong`] when the payload exceeds [`MAX_PAYLOAD`].
pub fn encode(
    out: &mut Vec<u8>,
    kind: FrameKind,
    channel: u8,
    epoch: Epoch,
    payload: &[u8],
    mac_key: Option<(&[u8; 32], u64)>,
) -> Result<(), WireError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or(WireError::TooLong {
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            max: MAX_PAYLOAD,
        })?;
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.push(channel);
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&epoch.term.to_le_bytes());
    out.extend_from_slice(&epoch.node.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    let mac = match mac_key {
        Some((key, seq)) => frame_mac(key, seq, &out[start..start + HEADER_LEN], payload),
        None => [0u8; MAC_LEN],
    };
    out.extend_from_slice(&mac);
    Ok(())
}

fn frame_mac(key: &[u8; 32], seq: u64, header: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&seq.to_le_bytes());
    h.update(header);
    h.update(payload);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&h.finalize().as_bytes()[..MAC_LEN]);
    mac
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The pre-shared key, derived from the configured secret.
#[derive(Clone)]
pub struct PreSharedKey([u8; 32]);

impl PreSharedKey {
    /// Derives the key from a secret of any length (BLAKE3 `derive_key`).
    #[must_use]
    pub fn from_secret(secret: &[u8]) -> Self {
        Self(blake3::derive_key("sync-delta v1 pre-shared key", secret))
    }
}

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

/// A fresh 32-byte handshake nonce from the driver's CSPRNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

/// Which side of the handshake this link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// The side that connected; sends `hello` first.
    Initiator,
    /// The side that accepted.
    Responder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitReply,
    AwaitProof,
    Established,
    Failed,
}

impl State {
    fn code(self) -> u8 {
        match self {
            Self::AwaitHello => 0,
            Self::AwaitReply => 1,
            Self::AwaitProof => 2,
            Self::Established | Self::Failed => 3,
        }
    }
}

/// An authenticated application frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The channel it arrived on.
    pub channel: u8,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Counters of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received and authenticated.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received (whole frames).
    pub bytes_in: u64,
    /// Bytes sent (whole frames).
    pub bytes_out: u64,
    /// Frames refused for a bad MAC or proof.
    pub auth_failures: u64,
    /// Frames refused for a stale epoch.
    pub stale_epochs: u64,
    /// Frames that did not decode.
    pub malformed: u64,
    /// Handshakes that did not finish before their deadline.
    pub handshake_timeouts: u64,
}

/// One end of the authenticated peer link.
///
/// # Driver contract
/// 1. Create with [`Link::new`], a fresh [`Nonce`] per connection and the
///    current time; the handshake deadline starts then (create the link
///    before connecting to bound the connect too).
/// 2. After creating and after every [`Link::handle_bytes`], drain
///    [`Link::poll_transmit`] to the socket, and [`Link::poll_frame`]
///    until `Ok(None)`, dispatching frames by channel.
/// 3. Arm a timer for [`Link::poll_timeout`] (the handshake deadline;
///    `None` once established) and call [`Link::handle_timeout`] when it
///    fires (early calls are harmless). A link past its deadline is
///    closed: [`Link::error`] is [`LinkError::HandshakeTimeout`].
/// 4. Once [`Link::is_established`], [`Link::send`] frames.
/// 5. Any error is final ([`Link::error`] keeps the first one): close the
///    connection and drop the link; nothing from an unauthenticated peer
///    was ever returned by `poll_frame`.
pub struct Link {
    role: LinkRole,
    key: PreSharedKey,
    nonce: [u8; 32],
    peer_nonce: [u8; 32],
    state: State,
    epoch: Epoch,
    newest_peer: Epoch,
    seen_peer: bool,
    send_key: [u8; 32],
    recv_key: [u8; 32],
    send_seq: u64,
    recv_seq: u64,
    rx: Vec<u8>,
    rx_start: usize,
    tx: Vec<u8>,
    stats: LinkStats,
    created: Instant,
    deadline: Instant,
    error: Option<LinkError>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Two links that have completed the handshake with each other in
    /// memory at `now` (`nonces[0]` and `epochs[0]` for the initiator): for
    /// tests, benches and tools that run both ends in one process.
    ///
    /// # Errors
    /// The [`LinkError`] of a failed handshake (none with one key).
    pub fn connected_pair(
        key: PreSharedKey,
        nonces: [Nonce; 2],
        epochs: [Epoch; 2],
        now: Instant,
    ) -> Result<(Link, Link), LinkError> {
        let mut a = Link::new(
            LinkRole::Initiator,
            key.clone(),
            nonces[0],
            epochs[0],
            Epoch::default(),
            now,
        );
        let mut b = Link::new(
            LinkRole::Responder,
            key,
            nonces[1],
            epochs[1],
            Epoch::default(),
            now,
        );
        for _ in 0..2 {
            let mut x = Vec::new();
            a.poll_transmit(&mut x);
            b.handle_bytes(now, &x)?;
            while b.poll_frame()?.is_some() {}
            let mut y = Vec::new();
            b.poll_transmit(&mut y);
            a.handle_bytes(now, &y)?;
            while a.poll_frame()?.is_some() {}
        }
        Ok((a, b))
    }

    /// A link for one connection, created at `now`: its handshake must
    /// finish by `now` + [`HANDSHAKE_TIMEOUT`]. `epoch` is this node's
    /// current epoch; `newest_peer_epoch` the newest the driver has seen
    /// from the peer (persisted across connections), older frames are
    /// refused.
    #[must_use]
    pub fn new(
        role: LinkRole,
        key: PreSharedKey,
        nonce: Nonce,
        epoch: Epoch,
        newest_peer_epoch: Epoch,
        now: Instant,
    ) -> Self {
        let mut link = Self {
            role,
            key,
            nonce: nonce.0,
            peer_nonce: [0; 32],
            state: State::AwaitHello,
            epoch,
            newest_peer: newest_peer_epoch,
            seen_peer: false,
            send_key: [0; 32],
            recv_key: [0; 32],
            send_seq: 0,
            recv_seq: 0,
            rx: Vec::new(),
            rx_start: 0,
            tx: Vec::new(),
            stats: LinkStats::default(),
            created: now,
            deadline: now + HANDSHAKE_TIMEOUT,
            error: None,
        };
        if role == LinkRole::Initiator {
            let nonce = link.nonce;
            link.push_handshake(FrameKind::Hello, &nonce);
            link.state = State::AwaitReply;
        }
        link
    }

    /// The same link with its handshake deadline at creation +
    /// `timeout` instead of [`HANDSHAKE_TIMEOUT`].
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = self.created + timeout;
        self
    }

    /// True once both sides proved the key.
    #[must_use]
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// The error that closed the link ([`LinkError::HandshakeTimeout`]
    /// after a missed deadline), `None` while it is usable.
    #[must_use]
    pub fn error(&self) -> Option<LinkError> {
        self.error
    }

    /// When [`Link::handle_timeout`] is next needed: the handshake
    /// deadline while the handshake runs; `None` once established or
    /// closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        matches!(
            self.state,
            State::AwaitHello | State::AwaitReply | State::AwaitProof
        )
        .then_some(self.deadline)
    }

    /// Closes a link whose handshake has not finished by its deadline
    /// ([`Link::error`] then says [`LinkError::HandshakeTimeout`]); does
    /// nothing before the deadline or once established.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.stats.handshake_timeouts += 1;
            self.fail(LinkError::HandshakeTimeout);
        }
    }

    fn fail(&mut self, e: LinkError) {
        self.state = State::Failed;
        self.error.get_or_insert(e);
        self.rx.clear();
        self.rx_start = 0;
        self.tx.clear();
    }

    /// The newest epoch seen in an authenticated frame from the peer (or
    /// the floor given at creation).
    #[must_use]
    pub fn newest_peer_epoch(&self) -> Epoch {
        self.newest_peer
    }

    /// Changes this node's epoch for the frames it sends next.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = epoch;
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Moves pending handshake bytes to `out`; false when there were none.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.tx.is_empty() {
            return false;
        }
        out.append(&mut self.tx);
        true
    }

    /// Buffers bytes received at `now`. Feed at most [`MAX_FRAME`] bytes
    /// between calls that drain [`Link::poll_frame`].
    ///
    /// # Errors
    /// [`LinkError::HandshakeTimeout`] when the handshake is still
    /// unfinished at its deadline (as [`Link::handle_timeout`] would);
    /// [`LinkError::BufferFull`] when more than two whole frames are
    /// buffered undrained; [`LinkError::Closed`] after an earlier error.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), LinkError> {
        if self.state == State::Failed {
            return Err(LinkError::Closed);
        }
        self.handle_timeout(now);
        if let Some(e) = self.error {
            return Err(e);
        }
        let buffered = self.rx.len() - self.rx_start;
        if buffered + bytes.len() > 2 * MAX_FRAME {
            let e = LinkError::BufferFull { buffered };
            self.fail(e);
            return Err(e);
        }
        if self.rx_start > 0 && self.rx_start >= self.rx.len() / 2 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        self.rx.extend_from_slice(bytes);
        Ok(())
    }

    /// The next authenticated application frame, if a whole one is
    /// buffered. Handshake frames are consumed here.
    ///
    /// # Errors
    /// Any [`LinkError`]; the link is then closed.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.state == State::Failed {
            return Err(LinkError::Closed);
        }
        let r = self.poll_inner();
        if let Err(e) = r {
            self.fail(e);
        }
        r
    }

    fn poll_inner(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            let buf = &self.rx[self.rx_start..];
            let (frame, used) = match decode(buf) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.stats.malformed += 1;
                    return Err(e.into());
                }
            };
            if frame.epoch < self.newest_peer {
                self.stats.stale_epochs += 1;
                return Err(LinkError::StaleEpoch {
                    term: frame.epoch.term,
                    node: frame.epoch.node,
                    newest_term: self.newest_peer.term,
                    newest_node: self.newest_peer.node,
                });
            }
            let kind = frame.kind;
            let unexpected = LinkError::UnexpectedFrame {
                kind: kind as u8,
                state: self.state.code(),
            };
            let out = match (self.state, kind) {
                (State::AwaitHello, FrameKind::Hello) if self.role == LinkRole::Responder => {
                    let n: [u8; 32] = frame.payload.try_into().map_err(|_| unexpected)?;
                    self.peer_nonce = n;
                    let mut reply = [0u8; 64];
                    reply[..32].copy_from_slice(&self.nonce);
                    reply[32..].copy_from_slice(&self.proof(LinkRole::Responder));
                    self.rx_start += used;
                    self.push_handshake(FrameKind::Reply, &reply);
                    self.state = State::AwaitProof;
                    None
                }
                (State::AwaitReply, FrameKind::Reply) => {
                    if frame.payload.len() != 64 {
                        return Err(unexpected);
                    }
                    self.peer_nonce.copy_from_slice(&frame.payload[..32]);
                    let expect = self.proof(LinkRole::Responder);
                    if !ct_eq(&expect, &frame.payload[32..]) {
                        self.stats.auth_failures += 1;
                        return Err(LinkError::BadProof);
                    }
                    self.rx_start += used;
                    let proof = self.proof(LinkRole::Initiator);
                    self.push_handshake(FrameKind::Proof, &proof);
                    self.establish();
                    None
                }
                (State::AwaitProof, FrameKind::Proof) => {
                    let expect = self.proof(LinkRole::Initiator);
                    if !ct_eq(&expect, frame.payload) {
                        self.stats.auth_failures += 1;
                        return Err(LinkError::BadProof);
                    }
                    self.rx_start += used;
                    self.establish();
                    None
                }
                (State::Established, FrameKind::Data) => {
                    let mac = frame_mac(&self.recv_key, self.recv_seq, frame.header, frame.payload);
                    if !ct_eq(&mac, &frame.mac) {
                        self.stats.auth_failures += 1;
                        return Err(LinkError::BadMac);
                    }
                    self.recv_seq += 1;
                    self.newest_peer = self.newest_peer.max(frame.epoch);
                    self.seen_peer = true;
                    let f = Frame {
                        channel: frame.channel,
                        epoch: frame.epoch,
                        payload: frame.payload.to_vec(),
                    };
                    self.stats.frames_in += 1;
                    self.stats.bytes_in += used as u64;
                    self.rx_start += used;
                    Some(f)
                }
                _ => return Err(unexpected),
            };
            if self.rx_start == self.rx.len() {
                self.rx.clear();
                self.rx_start = 0;
            }
            if out.is_some() {
                return Ok(out);
            }
        }
    }

    /// Encodes an authenticated frame with `payload` on `channel` onto
    /// `out`.
    ///
    /// # Errors
    /// [`LinkError::CannotSend`] before the handshake finished or for a
    /// payload over [`MAX_PAYLOAD`].
    pub fn send(
        &mut self,
        channel: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), LinkError> {
        let cannot = LinkError::CannotSend {
            channel,
            len: payload.len(),
        };
        if self.state != State::Established {
            return Err(cannot);
        }
        let before = out.len();
        encode(
            out,
            FrameKind::Data,
            channel,
            self.epoch,
            payload,
            Some((&self.send_key, self.send_seq)),
        )
        .map_err(|_| cannot)?;
        self.send_seq += 1;
        self.stats.frames_out += 1;
        self.stats.bytes_out += (out.len() - before) as u64;
        Ok(())
    }

    fn push_handshake(&mut self, kind: FrameKind, payload: &[u8]) {
        // Handshake payloads are at most 64 bytes: encoding cannot fail.
        let _ = encode(&mut self.tx, kind, CHANNEL_SYNC, self.epoch, payload, None);
        self.stats.frames_out += 1;
    }

    fn nonces(&self) -> ([u8; 32], [u8; 32]) {
        match self.role {
            LinkRole::Initiator => (self.nonce, self.peer_nonce),
            LinkRole::Responder => (self.peer_nonce, self.nonce),
        }
    }

    fn proof(&self, by: LinkRole) -> [u8; 32] {
        let (ni, nr) = self.nonces();
        let mut h = blake3::Hasher::new_keyed(&self.key.0);
        h.update(match by {
            LinkRole::Initiator => b"initiator",
            LinkRole::Responder => b"responder",
        });
        h.update(&ni);
        h.update(&nr);
        *h.finalize().as_bytes()
    }

    fn establish(&mut self) {
        let (ni, nr) = self.nonces();
        let derive = |ctx: &str| {
            let mut h = blake3::Hasher::new_derive_key(ctx);
            h.update(&self.key.0);
            h.update(&ni);
            h.update(&nr);
            *h.finalize().as_bytes()
        };
        let i2r = derive("sync-delta v1 session initiator to responder");
        let r2i = derive("sync-delta v1 session responder to initiator");
        (self.send_key, self.recv_key) = match self.role {
            LinkRole::Initiator => (i2r, r2i),
            LinkRole::Responder => (r2i, i2r),
        };
        self.state = State::Established;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn pair_at(now: Instant, secret_a: &[u8], secret_b: &[u8]) -> (Link, Link) {
        let a = Link::new(
            LinkRole::Initiator,
            PreSharedKey::from_secret(secret_a),
            Nonce([1; 32]),
            Epoch::new(1, 1),
            Epoch::default(),
            now,
        );
        let b = Link::new(
            LinkRole::Responder,
            PreSharedKey::from_secret(secret_b),
            Nonce([2; 32]),
            Epoch::new(1, 2),
            Epoch::default(),
            now,
        );
        (a, b)
    }

    fn pair(secret_a: &[u8], secret_b: &[u8]) -> (Link, Link) {
        pair_at(t0(), secret_a, secret_b)
    }

    fn pump_at(now: Instant, from: &mut Link, to: &mut Link) -> Result<Vec<Frame>, LinkError> {
        let mut bytes = Vec::new();
        from.poll_transmit(&mut bytes);
        to.handle_bytes(now, &bytes)?;
        let mut got = Vec::new();
        while let Some(f) = to.poll_frame()? {
            got.push(f);
        }
        Ok(got)
    }

    fn pump(from: &mut Link, to: &mut Link) -> Result<Vec<Frame>, LinkError> {
        let mut bytes = Vec::new();
        from.poll_transmit(&mut bytes);
        to.handle_bytes(t0(), &bytes)?;
        let mut got = Vec::new();
        while let Some(f) = to.poll_frame()? {
            got.push(f);
        }
        Ok(got)
    }

    #[test]
    fn handshake_and_data() {
        let (mut a, mut b) = pair(b"k", b"k");
        pump(&mut a, &mut b).unwrap();
        pump(&mut b, &mut a).unwrap();
        assert!(a.is_established());
        pump(&mut a, &mut b).unwrap();
        assert!(b.is_established());
        let mut wire = Vec::new();
        a.send(CHANNEL_PEER, b"hello", &mut wire).unwrap();
        a.send(CHANNEL_SYNC, b"", &mut wire).unwrap();
        // byte by byte
        let mut got = Vec::new();
        for byte in &wire {
            b.handle_bytes(t0(), std::slice::from_ref(byte)).unwrap();
            while let Some(f) = b.poll_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload, b"hello");
        assert_eq!(got[0].channel, CHANNEL_PEER);
        assert_eq!(got[1].epoch, Epoch::new(1, 1));
    }

    #[test]
    fn wrong_key_fails_both_ways() {
        let (mut a, mut b) = pair(b"k", b"other");
        pump(&mut a, &mut b).unwrap();
        assert_eq!(pump(&mut b, &mut a), Err(LinkError::BadProof));
        assert!(!a.is_established());
        let mut wire = Vec::new();
        assert!(a.send(0, b"x", &mut wire).is_err());
    }

    #[test]
    fn replay_tamper_and_stale_epoch() {
        let (mut a, mut b) = pair(b"k", b"k");
        pump(&mut a, &mut b).unwrap();
        pump(&mut b, &mut a).unwrap();
        pump(&mut a, &mut b).unwrap();
        let mut f1 = Vec::new();
        a.send(0, b"one", &mut f1).unwrap();
        b.handle_bytes(t0(), &f1).unwrap();
        assert!(b.poll_frame().unwrap().is_some());
        // replay of the same frame: sequence moved on
        b.handle_bytes(t0(), &f1).unwrap();
        assert_eq!(b.poll_frame(), Err(LinkError::BadMac));
        assert_eq!(b.poll_frame(), Err(LinkError::Closed));

        let (mut a, mut b) = pair(b"k", b"k");
        pump(&mut a, &mut b).unwrap();
        pump(&mut b, &mut a).unwrap();
        pump(&mut a, &mut b).unwrap();
        let mut f = Vec::new();
        a.send(0, b"two", &mut f).unwrap();
        a.set_epoch(Epoch::new(0, 9));
        a.send(0, b"old", &mut f).unwrap();
        b.handle_bytes(t0(), &f).unwrap();
        assert!(b.poll_frame().unwrap().is_some());
        assert!(matches!(
            b.poll_frame(),
            Err(LinkError::StaleEpoch { term: 0, .. })
        ));
    }

    #[test]
    fn data_before_handshake_refused() {
        let (_, mut b) = pair(b"k", b"k");
        let mut f = Vec::new();
        encode(
            &mut f,
            FrameKind::Data,
            0,
            Epoch::default(),
            b"x",
            Some((&[0; 32], 0)),
        )
        .unwrap();
        b.handle_bytes(t0(), &f).unwrap();
        assert!(matches!(
            b.poll_frame(),
            Err(LinkError::UnexpectedFrame { kind: 3, .. })
        ));
    }

    #[test]
    fn oversized_and_undrained_input_is_refused() {
        let (_, mut b) = pair(b"k", b"k");
        // A header announcing more than MAX_PAYLOAD fails before any payload.
        let mut f = Vec::new();
        encode(
            &mut f,
            FrameKind::Hello,
            0,
            Epoch::default(),
            &[0; 32],
            None,
        )
        .unwrap();
        f[6..10].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        b.handle_bytes(t0(), &f[..HEADER_LEN]).unwrap();
        assert!(matches!(
            b.poll_frame(),
            Err(LinkError::Wire(WireError::TooLong { .. }))
        ));
        // Bytes fed without draining are bounded.
        let (_, mut b) = pair(b"k", b"k");
        let chunk = vec![0u8; MAX_FRAME];
        b.handle_bytes(t0(), &chunk).unwrap();
        b.handle_bytes(t0(), &chunk).unwrap();
        assert!(matches!(
            b.handle_bytes(t0(), &chunk),
            Err(LinkError::BufferFull { .. })
        ));
        assert_eq!(b.handle_bytes(t0(), b"x"), Err(LinkError::Closed));
    }

    #[test]
    fn handshake_deadline() {
        let now = t0();
        let (mut a, mut b) = pair_at(now, b"k", b"k");
        let deadline = now + HANDSHAKE_TIMEOUT;
        assert_eq!(a.poll_timeout(), Some(deadline));
        assert_eq!(b.poll_timeout(), Some(deadline));
        // Early calls change nothing.
        a.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(a.error(), None);
        assert_eq!(a.poll_timeout(), Some(deadline));
        // The responder hears the hello; the initiator never hears back.
        pump_at(now, &mut a, &mut b).unwrap();
        a.handle_timeout(deadline);
        assert_eq!(a.error(), Some(LinkError::HandshakeTimeout));
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.stats().handshake_timeouts, 1);
        assert!(!a.is_established());
        let mut wire = Vec::new();
        assert!(a.send(CHANNEL_SYNC, b"x", &mut wire).is_err());
        // The reply that comes late is refused; the count stays at one.
        let mut reply = Vec::new();
        b.poll_transmit(&mut reply);
        assert_eq!(a.handle_bytes(deadline, &reply), Err(LinkError::Closed));
        a.handle_timeout(deadline + HANDSHAKE_TIMEOUT);
        assert_eq!(a.stats().handshake_timeouts, 1);
        assert_eq!(a.error(), Some(LinkError::HandshakeTimeout));

        // A hello that arrives after the deadline, before any timer
        // fired, is refused the same way.
        let (mut a, mut b) = pair_at(now, b"k", b"k");
        let late = deadline + Duration::from_secs(1);
        assert_eq!(
            pump_at(late, &mut a, &mut b),
            Err(LinkError::HandshakeTimeout)
        );
        assert_eq!(b.error(), Some(LinkError::HandshakeTimeout));
        assert_eq!(b.stats().handshake_timeouts, 1);
        let mut nothing = Vec::new();
        assert!(!b.poll_transmit(&mut nothing));
    }

    #[test]
    fn established_link_has_no_deadline() {
        let now = t0();
        let (mut a, mut b) = pair_at(now, b"k", b"k");
        let just_in_time = now + HANDSHAKE_TIMEOUT - Duration::from_nanos(1);
        pump_at(now, &mut a, &mut b).unwrap();
        pump_at(now, &mut b, &mut a).unwrap();
        pump_at(just_in_time, &mut a, &mut b).unwrap();
        assert!(a.is_established() && b.is_established());
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(b.poll_timeout(), None);
        let much_later = now + 100 * HANDSHAKE_TIMEOUT;
        a.handle_timeout(much_later);
        b.handle_timeout(much_later);
        let mut wire = Vec::new();
        a.send(CHANNEL_PEER, b"still up", &mut wire).unwrap();
        b.handle_bytes(much_later, &wire).unwrap();
        assert_eq!(b.poll_frame().unwrap().unwrap().payload, b"still up");
        assert_eq!(b.error(), None);
        assert_eq!(a.stats().handshake_timeouts, 0);
    }

    #[test]
    fn handshake_timeout_is_configurable_and_errors_are_kept() {
        let now = t0();
        let (a, _) = pair_at(now, b"k", b"k");
        let mut a = a.with_handshake_timeout(Duration::from_millis(200));
        assert_eq!(a.poll_timeout(), Some(now + Duration::from_millis(200)));
        a.handle_timeout(now + Duration::from_millis(200));
        assert_eq!(a.error(), Some(LinkError::HandshakeTimeout));
        // Any other failure is kept too, and closes the link.
        let (mut a, mut b) = pair(b"k", b"other");
        pump(&mut a, &mut b).unwrap();
        assert_eq!(pump(&mut b, &mut a), Err(LinkError::BadProof));
        assert_eq!(a.error(), Some(LinkError::BadProof));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn decode_errors() {
        let mut f = Vec::new();
        encode(&mut f, FrameKind::Data, 0, Epoch::default(), b"abc", None).unwrap();
        for cut in 0..f.len() {
            assert!(matches!(decode(&f[..cut]), Ok(None)), "cut {cut}");
        }
        let mut bad = f.clone();
        bad[HEADER_LEN] ^= 1;
        assert_eq!(decode(&bad), Err(WireError::BadChecksum));
        let mut bad = f.clone();
        bad[2] = 9;
        assert_eq!(
            decode(&bad),
            Err(WireError::UnsupportedVersion { version: 9 })
        );
        let mut bad = f.clone();
        bad[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bad), Err(WireError::TooLong { .. })));
        assert_eq!(decode(b"XX"), Err(WireError::BadMagic));
    }
}
