//! The peer link that sync and the orchestrator's peer messages share:
//! an encrypted, mutually authenticated byte stream carrying frames
//! multiplexed by a channel number.
//!
//! The link is the Noise protocol framework's
//! `Noise_NNpsk0_25519_AESGCM_SHA256` ([`NOISE_PARAMS`]), implemented by
//! the `snow` crate: both ends hold the same 32-byte pre-shared key; each
//! connection makes fresh X25519 ephemeral keys, so a connection's
//! records stay secret even if the pre-shared key leaks later (forward
//! secrecy), and every record is encrypted and authenticated with
//! AES-256-GCM under a per-direction key and an implicit counter, so a
//! tampered, replayed, dropped or reordered record fails.
//!
//! Sans-IO: feed received bytes to [`Link::handle_bytes`], drain
//! [`Link::poll_frame`]; handshake bytes to send come from
//! [`Link::poll_transmit`]; [`Link::send`] encrypts an application frame
//! onto a caller `Vec`. The randomness comes from the caller: each
//! connection's [`Nonce`] is 32 bytes from the driver's CSPRNG, which seed
//! the ChaCha20 generator the handshake draws its ephemeral key from; the
//! library reads no OS randomness and no clock. The time (`now`) comes
//! with the calls; against it the link keeps its own handshake deadline
//! ([`Link::poll_timeout`], [`Link::handle_timeout`]).
//!
//! # Records (version 2)
//!
//! Everything on the wire is a record:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `"SD"` |
//! | 2 | 1 | version ([`VERSION`], 2) |
//! | 3 | 1 | kind: 0 hello, 1 reply, 2 data, 3 refused |
//! | 4 | 2 | body length, little-endian (≤ [`MAX_RECORD_BODY`]; ≤ [`MAX_HANDSHAKE_BODY`] for the others) |
//! | 6 | n | body |
//!
//! The first three bytes are those of version 1, the MAC-only link this
//! one replaces, so a peer on another version is named
//! ([`LinkError::PeerVersion`]) rather than failing a check.
//!
//! # Handshake
//!
//! 1. dialer (initiator) → `hello`: Noise message `psk, e` (48 bytes). Its
//!    tag is keyed by the pre-shared key: it proves the key.
//! 2. The listener (responder) checks it against its key (and, during a
//!    key rotation, the next key: [`Link::with_next_key`]). Only then does
//!    it answer `reply`: Noise message `e, ee` (48 bytes), which proves
//!    the key back and completes the ephemeral exchange. A hello that
//!    fails gets `refused`, a constant body that depends on no key, and
//!    the connection closes ([`LinkError::BadProof`] there,
//!    [`LinkError::KeyRefused`] at the dialer).
//!
//! So the listener says nothing that depends on the key to a caller that
//! has not proved it: a stranger who connects gets nothing to guess the
//! key against offline. The dialer's hello can be tested offline by
//! whoever receives it (the configured peer address, or someone who took
//! it over); that is what keys of 32 random bytes are for
//! ([`PreSharedKey::new`] refuses a weak one).
//!
//! A link that has not finished the handshake [`HANDSHAKE_TIMEOUT`] after
//! it was created fails with [`LinkError::HandshakeTimeout`].
//!
//! # Bounded before authentication
//!
//! Until the peer has proved the key, a link holds at most
//! [`MAX_PRE_AUTH`] (1 KiB) of its bytes: more fed at once, or a record
//! whose header announces more, fails at once with
//! [`LinkError::PreAuthOverflow`] (counted in
//! [`LinkStats::pre_auth_overflows`]), and a record of a kind the
//! handshake does not expect is refused from its header, before its body
//! is awaited. A driver reads at most [`Link::receive_window`] bytes for
//! it, so it needs no larger buffer per connection either (the handshake
//! records are 54 bytes).
//!
//! # Frames
//!
//! After the handshake, `data` records carry Noise transport messages
//! (each at most 65,535 bytes: [`MAX_RECORD_BODY`]). Their plaintexts
//! carry frames; a frame larger than one record is split over as many
//! records as it needs, and a record never carries bytes of two frames:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | channel ([`CHANNEL_SYNC`], [`CHANNEL_PEER`], others opaque) |
//! | 1 | 8 | sender epoch term |
//! | 9 | 8 | sender epoch node |
//! | 17 | 4 | payload length (≤ [`MAX_PAYLOAD`]) |
//! | 21 | n | payload |

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};

use crate::epoch::Epoch;
use crate::error::{KeyError, LinkError, WireError};

/// The frame format version this build speaks. Version 1 was the MAC-only
/// link (authenticated, not encrypted).
pub const VERSION: u8 = 2;
/// The Noise protocol the link runs.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Record header length in bytes.
pub const RECORD_HEADER_LEN: usize = 6;
/// Largest record body: a Noise message (ciphertext and its 16-byte tag).
pub const MAX_RECORD_BODY: usize = 65_535;
/// Largest body of a handshake or refusal record; longer ones are refused
/// from their header, before the body is awaited.
pub const MAX_HANDSHAKE_BODY: usize = 128;
/// Most bytes a link buffers before the peer has proved the key (see
/// "Bounded before authentication" above).
pub const MAX_PRE_AUTH: usize = 1024;
/// Frame header length in bytes (inside the encrypted stream).
pub const FRAME_HEADER_LEN: usize = 21;
/// Largest payload accepted or sent.
pub use crate::wire::MAX_PAYLOAD;
/// Most bytes the largest frame takes on the wire (all its records).
pub const MAX_FRAME: usize = wire_len(MAX_PAYLOAD as usize);
/// Channel of sync-delta's messages.
pub const CHANNEL_SYNC: u8 = 0;
/// Channel conventionally used for the orchestrator's peer messages.
pub const CHANNEL_PEER: u8 = 1;
/// Default time from [`Link::new`] to a finished handshake (see
/// [`Link::with_handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Fewest distinct byte values a key may have ([`PreSharedKey::new`]).
pub const MIN_DISTINCT_KEY_BYTES: u8 = 16;

const MAGIC: [u8; 2] = *b"SD";
const TAG_LEN: usize = 16;
/// Most plaintext one data record carries.
const MAX_RECORD_PLAIN: usize = MAX_RECORD_BODY - TAG_LEN;
/// Binds both ends to this version and suite (a Noise prologue).
const PROLOGUE: &[u8] = b"sync-delta frame v2";
/// The handshake messages: 32 bytes of ephemeral key and a 16-byte tag.
const HANDSHAKE_MSG_LEN: usize = 48;
/// The refusal reasons (first body byte).
const REFUSED_KEY: u8 = 1;
const REFUSED_VERSION: u8 = 2;

/// The bytes a frame with `payload_len` bytes of payload takes on the wire.
#[must_use]
pub const fn wire_len(payload_len: usize) -> usize {
    let plain = FRAME_HEADER_LEN + payload_len;
    let records = plain.div_ceil(MAX_RECORD_PLAIN);
    plain + records * (RECORD_HEADER_LEN + TAG_LEN)
}

// The record codec: the wire format above, before decryption. Internal
// (the `internals` feature shows it to the fuzz and bench harnesses).
mod record {
    use super::{MAGIC, MAX_HANDSHAKE_BODY, MAX_RECORD_BODY, RECORD_HEADER_LEN, VERSION};
    use crate::error::WireError;

    /// Record kinds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum RecordKind {
        /// Handshake message 1, dialer to listener.
        Hello = 0,
        /// Handshake message 2, listener to dialer.
        Reply = 1,
        /// A Noise transport message.
        Data = 2,
        /// The listener refused the hello (plaintext, no key involved).
        Refused = 3,
    }

    impl RecordKind {
        fn from_u8(v: u8) -> Result<Self, WireError> {
            Ok(match v {
                0 => Self::Hello,
                1 => Self::Reply,
                2 => Self::Data,
                3 => Self::Refused,
                kind => return Err(WireError::UnknownKind { kind }),
            })
        }
    }

    /// A record as read from the wire (before decryption).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Record<'a> {
        /// Its kind.
        pub kind: RecordKind,
        /// Its body.
        pub body: &'a [u8],
    }

    /// Decodes one record from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, else the record and the
    /// bytes it used. The header is checked before the body is awaited, so an
    /// oversized length is refused without buffering it.
    ///
    /// # Errors
    /// [`WireError`] for a bad magic, version, kind or length.
    pub fn decode_record(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, WireError> {
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if buf.len() >= 3 && buf[2] != VERSION {
            return Err(WireError::UnsupportedVersion { version: buf[2] });
        }
        if buf.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let kind = RecordKind::from_u8(buf[3])?;
        let len = usize::from(u16::from_le_bytes([buf[4], buf[5]]));
        let max = if kind == RecordKind::Data {
            MAX_RECORD_BODY
        } else {
            MAX_HANDSHAKE_BODY
        };
        if len > max {
            return Err(WireError::TooLong {
                len: u32::from(u16::from_le_bytes([buf[4], buf[5]])),
                max: u32::try_from(max).unwrap_or(u32::MAX),
            });
        }
        let total = RECORD_HEADER_LEN + len;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some((
            Record {
                kind,
                body: &buf[RECORD_HEADER_LEN..total],
            },
            total,
        )))
    }

    /// Appends a record header for a body of `len` bytes.
    pub(super) fn record_header(out: &mut Vec<u8>, kind: RecordKind, len: usize) {
        // Every caller bounds `len` by MAX_RECORD_BODY (u16::MAX).
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&len.to_le_bytes());
    }

    /// Encodes one record with a plaintext `body` onto `out` (handshake and
    /// refusal records, tests and fuzzing; data records are encrypted by
    /// [`Link::send`](super::Link::send)).
    ///
    /// # Errors
    /// [`WireError::TooLong`] when the body exceeds its kind's limit.
    pub fn encode_record(
        out: &mut Vec<u8>,
        kind: RecordKind,
        body: &[u8],
    ) -> Result<(), WireError> {
        let max = if kind == RecordKind::Data {
            MAX_RECORD_BODY
        } else {
            MAX_HANDSHAKE_BODY
        };
        if body.len() > max {
            return Err(WireError::TooLong {
                len: u32::try_from(body.len()).unwrap_or(u32::MAX),
                max: u32::try_from(max).unwrap_or(u32::MAX),
            });
        }
        record_header(out, kind, body.len());
        out.extend_from_slice(body);
        Ok(())
    }
}

use record::record_header;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use record::{Record, RecordKind, decode_record, encode_record};
#[cfg(not(feature = "internals"))]
pub(crate) use record::{RecordKind, decode_record, encode_record};

/// The pre-shared key: 32 random bytes, the same on both units.
#[derive(Clone)]
pub struct PreSharedKey([u8; 32]);

impl PreSharedKey {
    /// The key, if the bytes can be one: not all zero, at least
    /// [`MIN_DISTINCT_KEY_BYTES`] distinct byte values, not a counting
    /// sequence. Make one with `head -c 32 /dev/urandom`.
    ///
    /// # Errors
    /// The [`KeyError`] that names what is wrong.
    pub fn new(bytes: [u8; 32]) -> Result<Self, KeyError> {
        if bytes == [0; 32] {
            return Err(KeyError::AllZero);
        }
        let mut seen = [false; 256];
        for b in bytes {
            seen[usize::from(b)] = true;
        }
        let distinct = seen.iter().filter(|&&s| s).count();
        let distinct = u8::try_from(distinct).unwrap_or(u8::MAX);
        if distinct < MIN_DISTINCT_KEY_BYTES {
            return Err(KeyError::LowEntropy { distinct });
        }
        let step = bytes[1].wrapping_sub(bytes[0]);
        if bytes.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step) {
            return Err(KeyError::Sequence);
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

/// 32 fresh bytes from the driver's CSPRNG, one per connection: they seed
/// the generator the handshake draws this end's ephemeral key from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonce(..)")
    }
}

/// Which side of the handshake this link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// The side that connected; sends `hello` first.
    Initiator,
    /// The side that accepted.
    Responder,
}

/// Which key authenticated a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The primary key.
    Primary,
    /// The next key of a rotation ([`Link::with_next_key`]).
    Next,
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
#[non_exhaustive]
pub struct LinkStats {
    /// Frames received and authenticated.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received (whole records).
    pub bytes_in: u64,
    /// Bytes sent (whole records, handshake included).
    pub bytes_out: u64,
    /// Handshake messages and records that failed authentication.
    pub auth_failures: u64,
    /// Frames refused for a stale epoch.
    pub stale_epochs: u64,
    /// Records or frames that did not decode.
    pub malformed: u64,
    /// Handshakes that did not finish before their deadline.
    pub handshake_timeouts: u64,
    /// Bytes or records refused before the key was proved for exceeding
    /// [`MAX_PRE_AUTH`].
    pub pre_auth_overflows: u64,
}

/// snow's primitives for [`NOISE_PARAMS`] (X25519 and SHA-256 from its
/// default resolver, AES-256-GCM from its ring resolver), with the
/// randomness from the driver's seed instead of the OS.
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRng(ChaCha20Rng);

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        // ring's AES-GCM: AES-NI, carry-less multiplication and, where the
        // CPU has them, VAES and AVX2, detected at run time.
        RingResolver.resolve_cipher(choice)
    }
}

fn handshake(
    role: LinkRole,
    key: &PreSharedKey,
    seed: [u8; 32],
) -> Result<HandshakeState, LinkError> {
    let params = NOISE_PARAMS.parse().map_err(|_| LinkError::Crypto)?;
    let builder = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, &key.0))
        .map_err(|_| LinkError::Crypto)?;
    match role {
        LinkRole::Initiator => builder.build_initiator(),
        LinkRole::Responder => builder.build_responder(),
    }
    .map_err(|_| LinkError::Crypto)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Responder: waiting for the dialer's proof.
    AwaitHello,
    /// Initiator: hello sent, waiting for the listener's answer.
    AwaitReply,
    Established,
    Failed,
}

impl State {
    fn code(self) -> u8 {
        match self {
            Self::AwaitHello => 0,
            Self::AwaitReply => 1,
            Self::Established | Self::Failed => 3,
        }
    }
}

/// A frame being received over several records.
struct Partial {
    channel: u8,
    epoch: Epoch,
    len: usize,
    payload: Vec<u8>,
}

/// One end of the encrypted peer link.
///
/// # Driver contract
/// 1. Create with [`Link::new`], a fresh [`Nonce`] per connection and the
///    current time; the handshake deadline starts then (create the link
///    before connecting to bound the connect too).
/// 2. After creating and after every [`Link::handle_bytes`], drain
///    [`Link::poll_frame`] until `Ok(None)` (or an error), dispatching
///    frames by channel, then [`Link::poll_transmit`] to the socket (also
///    after an error: a refused handshake leaves its `refused` record).
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
    next_key: Option<PreSharedKey>,
    seed: [u8; 32],
    state: State,
    handshake: Option<HandshakeState>,
    transport: Option<TransportState>,
    key_used: Option<KeySlot>,
    epoch: Epoch,
    newest_peer: Epoch,
    rx: Vec<u8>,
    rx_start: usize,
    partial: Option<Partial>,
    scratch: Vec<u8>,
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
        let mut x = Vec::new();
        a.poll_transmit(&mut x);
        b.handle_bytes(now, &x)?;
        while b.poll_frame()?.is_some() {}
        let mut y = Vec::new();
        b.poll_transmit(&mut y);
        a.handle_bytes(now, &y)?;
        while a.poll_frame()?.is_some() {}
        Ok((a, b))
    }

    /// A link for one connection, created at `now`: its handshake must
    /// finish by `now` + [`HANDSHAKE_TIMEOUT`]. `nonce` seeds this end's
    /// ephemeral key; `epoch` is this node's current epoch;
    /// `newest_peer_epoch` the newest the driver has seen from the peer
    /// (persisted across connections), older frames are refused. An
    /// initiator's hello is ready in [`Link::poll_transmit`] at once.
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
            next_key: None,
            seed: nonce.0,
            state: State::AwaitHello,
            handshake: None,
            transport: None,
            key_used: None,
            epoch,
            newest_peer: newest_peer_epoch,
            rx: Vec::new(),
            rx_start: 0,
            partial: None,
            scratch: Vec::new(),
            tx: Vec::new(),
            stats: LinkStats::default(),
            created: now,
            deadline: now + HANDSHAKE_TIMEOUT,
            error: None,
        };
        if role == LinkRole::Initiator
            && let Err(e) = link.start_initiator()
        {
            link.fail(e);
        }
        link
    }

    fn start_initiator(&mut self) -> Result<(), LinkError> {
        let mut hs = handshake(LinkRole::Initiator, &self.key, self.seed)?;
        let mut msg = [0u8; HANDSHAKE_MSG_LEN];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|_| LinkError::Crypto)?;
        self.push_record(RecordKind::Hello, &msg[..n]);
        self.handshake = Some(hs);
        self.state = State::AwaitReply;
        Ok(())
    }

    /// The same link with its handshake deadline at creation +
    /// `timeout` instead of [`HANDSHAKE_TIMEOUT`].
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = self.created + timeout;
        self
    }

    /// The same link accepting, as a responder, a dialer that proves
    /// `next` instead of the primary key: the rotation window, while the
    /// two units move from one key to the next. An initiator always uses
    /// the primary key.
    #[must_use]
    pub fn with_next_key(mut self, next: Option<PreSharedKey>) -> Self {
        self.next_key = next;
        self
    }

    /// True once both sides proved the key.
    #[must_use]
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Which key authenticated the connection (`None` before).
    #[must_use]
    pub fn key_used(&self) -> Option<KeySlot> {
        self.key_used
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
        matches!(self.state, State::AwaitHello | State::AwaitReply).then_some(self.deadline)
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
        self.rx = Vec::new();
        self.rx_start = 0;
        self.partial = None;
        self.tx.clear();
        self.handshake = None;
        self.transport = None;
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
        self.stats.bytes_out += self.tx.len() as u64;
        out.append(&mut self.tx);
        true
    }

    /// Bytes received and not yet consumed by [`Link::poll_frame`] (at
    /// most [`MAX_PRE_AUTH`] until the peer has proved the key).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    /// How many bytes [`Link::handle_bytes`] takes now: up to
    /// [`MAX_PRE_AUTH`] in all before the peer has proved the key, two
    /// whole frames after; 0 once closed. A driver reads at most this
    /// much from the connection before feeding it and draining
    /// [`Link::poll_frame`], so that a caller who has not proved the key
    /// gets no large buffer (the dialer's reply and the peer's first
    /// frames arriving together are read in two steps).
    #[must_use]
    pub fn receive_window(&self) -> usize {
        let limit = match self.state {
            State::AwaitHello | State::AwaitReply => MAX_PRE_AUTH,
            State::Established => 2 * MAX_FRAME,
            State::Failed => return 0,
        };
        limit.saturating_sub(self.buffered())
    }

    /// Buffers bytes received at `now`. Before the handshake finished,
    /// feed at most [`Link::receive_window`] bytes; after, at most
    /// [`MAX_FRAME`] between calls that drain [`Link::poll_frame`].
    ///
    /// # Errors
    /// [`LinkError::HandshakeTimeout`] when the handshake is still
    /// unfinished at its deadline (as [`Link::handle_timeout`] would);
    /// [`LinkError::PreAuthOverflow`] when, before the peer proved the
    /// key, more than [`MAX_PRE_AUTH`] bytes would be buffered;
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
        let buffered = self.buffered();
        if self.state != State::Established && buffered + bytes.len() > MAX_PRE_AUTH {
            self.stats.pre_auth_overflows += 1;
            let e = LinkError::PreAuthOverflow {
                len: buffered + bytes.len(),
                max: MAX_PRE_AUTH,
            };
            self.fail(e);
            return Err(e);
        }
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
    /// buffered. Handshake records are consumed here.
    ///
    /// # Errors
    /// Any [`LinkError`]; the link is then closed (a refused hello leaves
    /// its `refused` record in [`Link::poll_transmit`]).
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.state == State::Failed {
            return Err(LinkError::Closed);
        }
        let r = self.poll_inner();
        if let Err(e) = r {
            let notice = self.refusal_for(e);
            self.fail(e);
            if let Some(body) = notice {
                self.push_record(RecordKind::Refused, &body);
            }
        }
        r
    }

    /// What a responder tells a dialer it refuses: constant bodies that
    /// depend on no key. The version notice is long enough for a version 1
    /// peer to read its header (26 bytes) and name version 2.
    fn refusal_for(&self, e: LinkError) -> Option<Vec<u8>> {
        if self.role != LinkRole::Responder {
            return None;
        }
        let (reason, text): (u8, &[u8]) = match e {
            LinkError::BadProof => (REFUSED_KEY, b"key proof does not verify"),
            LinkError::PeerVersion { .. } => {
                (REFUSED_VERSION, b"this end speaks frame version 2 only")
            }
            _ => return None,
        };
        let mut body = vec![reason];
        body.extend_from_slice(text);
        Some(body)
    }

    fn poll_inner(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            let buf = &self.rx[self.rx_start..];
            if buf.len() >= 3 && buf[..2] == MAGIC && buf[2] != VERSION {
                self.stats.malformed += 1;
                return Err(LinkError::PeerVersion {
                    ours: VERSION,
                    theirs: buf[2],
                });
            }
            if self.state != State::Established
                && let Some(&h) = buf.first_chunk::<RECORD_HEADER_LEN>()
            {
                self.check_pre_auth_header(h)?;
            }
            let buf = &self.rx[self.rx_start..];
            let (record, used) = match decode_record(buf) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.stats.malformed += 1;
                    return Err(e.into());
                }
            };
            let unexpected = LinkError::UnexpectedFrame {
                kind: record.kind as u8,
                state: self.state.code(),
            };
            // Borrow the body out of `rx` while `self` changes.
            let body_range = self.rx_start + RECORD_HEADER_LEN..self.rx_start + used;
            self.stats.bytes_in += used as u64;
            let out = match (self.state, record.kind) {
                (State::AwaitHello, RecordKind::Hello) => {
                    self.answer_hello(body_range)?;
                    None
                }
                (State::AwaitReply, RecordKind::Reply) => {
                    let mut hs = self.handshake.take().ok_or(LinkError::Crypto)?;
                    let mut scratch = [0u8; MAX_HANDSHAKE_BODY];
                    if hs.read_message(&self.rx[body_range], &mut scratch).is_err() {
                        self.stats.auth_failures += 1;
                        return Err(LinkError::BadProof);
                    }
                    self.transport = Some(hs.into_transport_mode().map_err(|_| LinkError::Crypto)?);
                    self.key_used = Some(KeySlot::Primary);
                    self.state = State::Established;
                    None
                }
                (State::AwaitReply, RecordKind::Refused) => {
                    return Err(match self.rx.get(body_range.start) {
                        Some(&REFUSED_KEY) => LinkError::KeyRefused,
                        _ => unexpected,
                    });
                }
                (State::Established, RecordKind::Data) => self.open_record(body_range)?,
                _ => return Err(unexpected),
            };
            self.rx_start += used;
            if self.rx_start == self.rx.len() {
                self.rx.clear();
                self.rx_start = 0;
            }
            if out.is_some() {
                return Ok(out);
            }
        }
    }

    /// Before the key is proved: refuses a data record from its header
    /// alone (one longer than [`MAX_PRE_AUTH`] as an overflow), so that
    /// its body is never awaited.
    fn check_pre_auth_header(&mut self, h: [u8; RECORD_HEADER_LEN]) -> Result<(), LinkError> {
        if h[..2] != MAGIC || h[2] != VERSION {
            // decode_record names it.
            return Ok(());
        }
        // Handshake and refusal records are bounded by MAX_HANDSHAKE_BODY,
        // unknown kinds refused, by decode_record.
        if h[3] == RecordKind::Data as u8 {
            let len = RECORD_HEADER_LEN + usize::from(u16::from_le_bytes([h[4], h[5]]));
            if len > MAX_PRE_AUTH {
                self.stats.pre_auth_overflows += 1;
                return Err(LinkError::PreAuthOverflow {
                    len,
                    max: MAX_PRE_AUTH,
                });
            }
            self.stats.malformed += 1;
            return Err(LinkError::UnexpectedFrame {
                kind: h[3],
                state: self.state.code(),
            });
        }
        Ok(())
    }

    /// The listener's step: check the dialer's proof under each key it
    /// holds; answer only one that verifies.
    fn answer_hello(&mut self, body: std::ops::Range<usize>) -> Result<(), LinkError> {
        let keys = [
            Some((KeySlot::Primary, &self.key)),
            self.next_key.as_ref().map(|k| (KeySlot::Next, k)),
        ];
        let mut scratch = [0u8; MAX_HANDSHAKE_BODY];
        let mut accepted = None;
        for (slot, key) in keys.into_iter().flatten() {
            let mut hs = handshake(LinkRole::Responder, key, self.seed)?;
            if hs
                .read_message(&self.rx[body.clone()], &mut scratch)
                .is_ok()
            {
                accepted = Some((slot, hs));
                break;
            }
        }
        let Some((slot, mut hs)) = accepted else {
            self.stats.auth_failures += 1;
            return Err(LinkError::BadProof);
        };
        let mut msg = [0u8; HANDSHAKE_MSG_LEN];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|_| LinkError::Crypto)?;
        self.push_record(RecordKind::Reply, &msg[..n]);
        self.transport = Some(hs.into_transport_mode().map_err(|_| LinkError::Crypto)?);
        self.key_used = Some(slot);
        self.state = State::Established;
        Ok(())
    }

    /// Decrypts one data record into the frame it belongs to; the frame
    /// when it is whole.
    fn open_record(&mut self, body: std::ops::Range<usize>) -> Result<Option<Frame>, LinkError> {
        let transport = self.transport.as_mut().ok_or(LinkError::Crypto)?;
        let plain_len = body.len().checked_sub(TAG_LEN).ok_or(LinkError::BadMac)?;
        let partial = match self.partial.take() {
            Some(mut p) => {
                let at = p.payload.len();
                if at + plain_len > p.len {
                    self.stats.malformed += 1;
                    return Err(WireError::Trailing {
                        extra: at + plain_len - p.len,
                    }
                    .into());
                }
                p.payload.resize(at + plain_len, 0);
                if transport
                    .read_message(&self.rx[body], &mut p.payload[at..])
                    .is_err()
                {
                    self.stats.auth_failures += 1;
                    return Err(LinkError::BadMac);
                }
                p
            }
            None => {
                self.scratch.resize(plain_len, 0);
                if transport
                    .read_message(&self.rx[body], &mut self.scratch)
                    .is_err()
                {
                    self.stats.auth_failures += 1;
                    return Err(LinkError::BadMac);
                }
                let Some(h) = self.scratch.first_chunk::<FRAME_HEADER_LEN>() else {
                    self.stats.malformed += 1;
                    return Err(WireError::Truncated {
                        need: FRAME_HEADER_LEN,
                        have: self.scratch.len(),
                    }
                    .into());
                };
                let channel = h[0];
                let epoch = Epoch {
                    term: u64::from_le_bytes(le8(&h[1..9])),
                    node: u64::from_le_bytes(le8(&h[9..17])),
                };
                let len = u32::from_le_bytes([h[17], h[18], h[19], h[20]]);
                if len > MAX_PAYLOAD {
                    self.stats.malformed += 1;
                    return Err(WireError::TooLong {
                        len,
                        max: MAX_PAYLOAD,
                    }
                    .into());
                }
                let len = len as usize;
                let first = &self.scratch[FRAME_HEADER_LEN..];
                if first.len() > len {
                    self.stats.malformed += 1;
                    return Err(WireError::Trailing {
                        extra: first.len() - len,
                    }
                    .into());
                }
                if epoch < self.newest_peer {
                    self.stats.stale_epochs += 1;
                    return Err(LinkError::StaleEpoch {
                        term: epoch.term,
                        node: epoch.node,
                        newest_term: self.newest_peer.term,
                        newest_node: self.newest_peer.node,
                    });
                }
                let mut payload = Vec::with_capacity(len);
                payload.extend_from_slice(first);
                Partial {
                    channel,
                    epoch,
                    len,
                    payload,
                }
            }
        };
        if partial.payload.len() < partial.len {
            self.partial = Some(partial);
            return Ok(None);
        }
        self.newest_peer = self.newest_peer.max(partial.epoch);
        self.stats.frames_in += 1;
        Ok(Some(Frame {
            channel: partial.channel,
            epoch: partial.epoch,
            payload: partial.payload,
        }))
    }

    /// Encrypts a frame with `payload` on `channel` onto `out`, in as many
    /// records as it needs.
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
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or(cannot)?;
        if self.state != State::Established {
            return Err(cannot);
        }
        let Some(transport) = self.transport.as_mut() else {
            return Err(cannot);
        };
        let before = out.len();
        out.reserve(wire_len(payload.len()));
        let first = payload.len().min(MAX_RECORD_PLAIN - FRAME_HEADER_LEN);
        self.scratch.clear();
        self.scratch.push(channel);
        self.scratch
            .extend_from_slice(&self.epoch.term.to_le_bytes());
        self.scratch
            .extend_from_slice(&self.epoch.node.to_le_bytes());
        self.scratch.extend_from_slice(&len.to_le_bytes());
        self.scratch.extend_from_slice(&payload[..first]);
        let sealed = seal(transport, out, &self.scratch).and_then(|()| {
            payload[first..]
                .chunks(MAX_RECORD_PLAIN)
                .try_for_each(|chunk| seal(transport, out, chunk))
        });
        if let Err(e) = sealed {
            out.truncate(before);
            self.fail(e);
            return Err(e);
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += (out.len() - before) as u64;
        Ok(())
    }

    fn push_record(&mut self, kind: RecordKind, body: &[u8]) {
        // Handshake and refusal bodies are at most MAX_HANDSHAKE_BODY.
        let _ = encode_record(&mut self.tx, kind, body);
    }
}

/// Appends one data record sealing `plain` (at most one record's worth).
fn seal(transport: &mut TransportState, out: &mut Vec<u8>, plain: &[u8]) -> Result<(), LinkError> {
    let start = out.len();
    record_header(out, RecordKind::Data, plain.len() + TAG_LEN);
    let body = out.len();
    out.resize(body + plain.len() + TAG_LEN, 0);
    match transport.write_message(plain, &mut out[body..]) {
        Ok(n) if n == plain.len() + TAG_LEN => Ok(()),
        _ => {
            out.truncate(start);
            Err(LinkError::Crypto)
        }
    }
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    a
}
