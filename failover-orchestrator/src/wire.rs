//! Peer messages and their encoding ("The peer link" in the repository's
//! `ARCHITECTURE.md`).
//!
//! The messages travel as the payload of sync-delta's authenticated frames on
//! their own channel, so this module only turns a [`PeerMessage`] into opaque
//! bytes and back. Layout: one version byte ([`WIRE_VERSION`]), then the
//! message in postcard (serde's data model with varint integers). Decoding
//! refuses anything longer than [`MAX_MESSAGE_LEN`] before it looks inside,
//! so no allocation can exceed the input size; it never panics.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::epoch::Epoch;
use crate::types::{BackupMode, Identity, ProtocolVersion, Redundancy, Role};

/// Encoding version byte in front of every message.
pub const WIRE_VERSION: u8 = 1;

/// Longest encoded message accepted.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// Longest string field accepted (node id, firmware, language pack, licence).
pub const MAX_STRING_LEN: usize = 256;

/// Most licence entries accepted in a hello.
pub const MAX_LICENCES: usize = 64;

/// A message between the two nodes. Every message carries the sender's
/// newest epoch; a receiver refuses messages older than its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMessage {
    /// Sender's newest epoch.
    pub epoch: Epoch,
    /// What it says.
    pub body: PeerBody,
}

/// The message set.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerBody {
    /// Identity, sent when the link comes up and when the peer asks.
    Hello(Identity),
    /// Status heartbeat; the peer's up/down comes from these.
    Status(PeerStatusReport),
    /// Ask the peer to do something; answered by a [`PeerBody::Reply`].
    Request {
        /// Request id, echoed in the reply.
        id: u32,
        /// What to do.
        request: PeerRequest,
    },
    /// Answer to a request.
    Reply {
        /// The request's id.
        id: u32,
        /// How it went.
        outcome: ReplyOutcome,
    },
}

/// Heartbeat contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatusReport {
    /// Sender's role.
    pub role: Role,
    /// Sender's backup mode (meaningful when Backup).
    pub mode: BackupMode,
    /// Whether redundancy is enabled on the sender.
    pub redundancy: Redundancy,
    /// Last committed sync generation on the sender.
    pub sync_generation: Option<u64>,
    /// Whether the sender passed its readiness checks.
    pub ready: bool,
    /// Whether the sender runs an operator procedure.
    pub busy: bool,
}

/// Procedure steps one node asks the other to take.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Set the Backup mode (persisted on the peer).
    SetMode {
        /// The mode.
        mode: BackupMode,
        /// Wall-clock expiry, seconds since the Unix epoch.
        expires_unix_s: Option<u64>,
    },
    /// Run a sync round now (even when Passive), reply when committed.
    SyncNow {
        /// Compare every file.
        full: bool,
    },
    /// Arm the takeover for a swap.
    Arm {
        /// Priority while armed and after.
        priority: u8,
    },
    /// Install firmware and reboot.
    Upgrade {
        /// Firmware version.
        firmware: String,
        /// Language pack, if it changes too.
        language_pack: Option<String>,
    },
    /// Restart.
    Restart,
}

impl core::fmt::Display for PeerRequest {
    /// In words, after "ask the peer to": `go Passive`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PeerRequest::SetMode {
                mode,
                expires_unix_s: None,
            } => write!(f, "go {mode}"),
            PeerRequest::SetMode { mode, .. } => write!(f, "go {mode} for a while"),
            PeerRequest::SyncNow { full: true } => f.write_str("sync now, every file compared"),
            PeerRequest::SyncNow { full: false } => f.write_str("sync now"),
            PeerRequest::Arm { priority } => write!(f, "arm its takeover at priority {priority}"),
            PeerRequest::Upgrade {
                firmware,
                language_pack: Some(pack),
            } => write!(f, "install firmware {firmware} and language pack {pack}"),
            PeerRequest::Upgrade {
                firmware,
                language_pack: None,
            } => write!(f, "install firmware {firmware}"),
            PeerRequest::Restart => f.write_str("restart"),
        }
    }
}

/// Result of a request.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyOutcome {
    /// Done.
    Done,
    /// Refused before starting (busy, wrong role, incompatible).
    Refused,
    /// Started but failed.
    Failed,
}

/// Why bytes are not a valid message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// No bytes.
    #[error("empty message")]
    Empty,
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Unknown version byte.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// The body does not decode.
    #[error("malformed message body")]
    Malformed,
    /// Bytes after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A field over its limit.
    #[error("field over its limit: {0:?}")]
    Limit(LimitField),
}

/// Which field was over its limit.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitField {
    /// A string field.
    String,
    /// The licence list.
    Licences,
}

/// Why a message could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The message would exceed [`MAX_MESSAGE_LEN`] or a field limit.
    #[error("message over a limit: {0:?}")]
    Limit(LimitField),
    /// The serializer failed.
    #[error("serializer failed")]
    Serializer,
    /// The encoding exceeds [`MAX_MESSAGE_LEN`].
    #[error("encoded message of {0} bytes is too long")]
    TooLong(usize),
}

fn check_limits(msg: &PeerMessage) -> Result<(), LimitField> {
    let long = |s: &str| s.len() > MAX_STRING_LEN;
    match &msg.body {
        PeerBody::Hello(id) => {
            if id.licences.len() > MAX_LICENCES {
                return Err(LimitField::Licences);
            }
            if long(&id.node_id)
                || long(&id.firmware)
                || long(&id.language_pack)
                || id.licences.iter().any(|l| long(l))
            {
                return Err(LimitField::String);
            }
        }
        PeerBody::Request {
            request:
                PeerRequest::Upgrade {
                    firmware,
                    language_pack,
                },
            ..
        } if long(firmware) || language_pack.as_deref().is_some_and(long) => {
            return Err(LimitField::String);
        }
        _ => {}
    }
    Ok(())
}

/// Appends the encoding of `msg` to `out`.
///
/// # Errors
/// [`EncodeError::Limit`] when a field is over its limit (the peer would
/// refuse it), [`EncodeError::TooLong`] when the whole message is.
pub fn encode(msg: &PeerMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_limits(msg).map_err(EncodeError::Limit)?;
    let body = postcard::to_allocvec(msg).map_err(|_| EncodeError::Serializer)?;
    let len = body.len() + 1;
    if len > MAX_MESSAGE_LEN {
        return Err(EncodeError::TooLong(len));
    }
    out.reserve(len);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&body);
    Ok(())
}

/// Decodes one message.
///
/// # Errors
/// Every way the bytes can be wrong is a [`DecodeError`] variant; this never
/// panics and allocates at most in proportion to `bytes.len()`.
pub fn decode(bytes: &[u8]) -> Result<PeerMessage, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (msg, rest): (PeerMessage, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    check_limits(&msg).map_err(DecodeError::Limit)?;
    Ok(msg)
}

/// The peer-protocol version carried by this encoding.
#[must_use]
pub fn protocol_version() -> ProtocolVersion {
    ProtocolVersion::CURRENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> PeerMessage {
        PeerMessage {
            epoch: Epoch { term: 7, node: 42 },
            body: PeerBody::Hello(Identity {
                node_id: "06-5.1.30-005400".into(),
                firmware: "5.1.30".into(),
                language_pack: "en-US 3".into(),
                licences: vec!["sip-trunk-16".into(), "acd".into()],
                protocol: ProtocolVersion::CURRENT,
            }),
        }
    }

    #[test]
    fn round_trip_and_version_byte() {
        let mut buf = vec![0xa5];
        encode(&hello(), &mut buf).unwrap();
        assert_eq!(buf[0], 0xa5, "encode appends");
        assert_eq!(buf[1], WIRE_VERSION);
        assert_eq!(decode(&buf[1..]).unwrap(), hello());
    }

    #[test]
    fn refuses_bad_input() {
        let mut buf = Vec::new();
        encode(&hello(), &mut buf).unwrap();
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        let mut v2 = buf.clone();
        v2[0] = 2;
        assert_eq!(decode(&v2), Err(DecodeError::Version(2)));
        let mut trailing = buf.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::Trailing(1)));
        for cut in 1..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let huge = vec![WIRE_VERSION; MAX_MESSAGE_LEN + 1];
        assert!(matches!(decode(&huge), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn limits_enforced_both_ways() {
        let mut m = hello();
        if let PeerBody::Hello(id) = &mut m.body {
            id.firmware = "x".repeat(MAX_STRING_LEN + 1);
        }
        let mut buf = Vec::new();
        assert_eq!(
            encode(&m, &mut buf),
            Err(EncodeError::Limit(LimitField::String))
        );
        // Hand-build the over-long message to check the decoder too.
        let mut raw = vec![WIRE_VERSION];
        raw = postcard::to_extend(&m, raw).unwrap();
        assert_eq!(decode(&raw), Err(DecodeError::Limit(LimitField::String)));
    }
}
