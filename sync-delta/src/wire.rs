//! The sync messages carried on channel [`crate::frame::CHANNEL_SYNC`], and
//! the bounded little-endian reader and writer they are built with.
//!
//! # Round (replica pulls)
//!
//! 1. replica → `Request { digest }`: the digest of its manifest.
//! 2. source → `ManifestStart`, `Entries`…, `ManifestEnd`: the changes
//!    from the manifest the replica confirmed last (when `digest` matches
//!    it) or the full listing (`full`).
//! 3. replica → `Want { id, path, base }` for each file whose content it
//!    cannot make locally, with the old copy's size, hash and chunk
//!    signature as `base`.
//! 4. source → `Data { id, ops }`…, `DataEnd { id, status }` for each want.
//! 5. replica commits the generation → `Committed { generation, digest }`;
//!    or refuses it → `Abandon`.
//!
//! Between rounds a source may send `SyncNow` (a round now, before a
//! planned swap) or `Changed` (its tree changed: a replica that runs rounds
//! starts one now instead of waiting for its interval).

use crate::delta::{CHUNK_HASH_LEN, MAX_SIG_CHUNKS, Op, SigChunk};
use crate::error::WireError;
use crate::manifest::{Change, Hash, decode_entry, encode_entry};
use crate::path::RelPath;

/// Bounded reader over a message.
#[derive(Debug)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// Takes `n` bytes.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated {
                need: n,
                have: self.0.len(),
            });
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    /// Takes a fixed array.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A byte.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    /// A little-endian `u16`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A little-endian `u32`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A little-endian `u64`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A little-endian `i64`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// Bytes with a `u16` length.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn bytes16(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// Bytes with a `u32` length.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn bytes32(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count that must be at most `max` and, at `min_size` bytes per
    /// item, fit in what is left.
    ///
    /// # Errors
    /// [`WireError::TooMany`].
    pub fn count(&mut self, max: usize, min_size: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_size) > self.0.len() {
            return Err(WireError::TooMany {
                count: n as u64,
                max: max.min(self.0.len() / min_size.max(1)) as u64,
            });
        }
        Ok(n)
    }
    /// Checks that nothing is left.
    ///
    /// # Errors
    /// [`WireError::Trailing`].
    pub fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                extra: self.0.len(),
            })
        }
    }
}

/// Little-endian writer onto a `Vec`.
#[derive(Debug)]
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// A `u16`.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A `u32`.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A `u64`.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// An `i64`.
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Bytes with a `u16` length (callers keep them under 64 KiB).
    pub fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len().min(u16::MAX as usize) as u16);
        self.0
            .extend_from_slice(&b[..b.len().min(u16::MAX as usize)]);
    }
    /// A string with a `u16` length.
    pub fn str16(&mut self, s: &str) {
        self.bytes16(s.as_bytes());
    }
    /// Bytes with a `u32` length.
    pub fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// Message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageType {
    /// [`Message::Request`].
    Request = 1,
    /// [`Message::ManifestStart`].
    ManifestStart = 2,
    /// [`Message::Entries`].
    Entries = 3,
    /// [`Message::ManifestEnd`].
    ManifestEnd = 4,
    /// [`Message::Want`].
    Want = 5,
    /// [`Message::Data`].
    Data = 6,
    /// [`Message::DataEnd`].
    DataEnd = 7,
    /// [`Message::Committed`].
    Committed = 8,
    /// [`Message::Abandon`].
    Abandon = 9,
    /// [`Message::SyncNow`].
    SyncNow = 10,
    /// [`Message::Changed`].
    Changed = 11,
}

/// The old copy a replica offers as a delta base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Its size.
    pub size: u64,
    /// Its BLAKE3 hash (for the append check).
    pub hash: Hash,
    /// Average chunk size of the signature.
    pub avg: u32,
    /// Its chunk signature.
    pub chunks: Vec<SigChunk>,
}

/// How a file's data ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataStatus {
    /// All data sent.
    Complete = 0,
    /// The file changed or vanished while being read; retried next round.
    Changed = 1,
}

/// Why a replica abandoned a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbandonReason {
    /// Refused by the mass-deletion guard.
    Refused = 0,
    /// Storage failed on the replica.
    Storage = 1,
}

/// A sync message, between a [`Source`](crate::Source) and a
/// [`Replica`](crate::Replica).
///
/// A driver carries messages and does not look inside them: it takes them
/// from one session's `poll_transmit`, sends them on the link's
/// [`CHANNEL_SYNC`](crate::frame::CHANNEL_SYNC) ([`Message::encode`],
/// [`Message::decode`]) and gives them to the other session's
/// `handle_message`. [`Message::ty`] says which kind a message is. The
/// variants' contents are the protocol's, not API: their types are not
/// nameable outside this crate, and new variants may come in any release.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Replica asks for a round.
    Request {
        /// Digest of the replica's current manifest.
        digest: Hash,
    },
    /// Source starts the manifest.
    ManifestStart {
        /// When the source took the snapshot, ns since the Unix epoch.
        taken_at_ns: i64,
        /// A full listing (anything unlisted is gone) rather than changes.
        full: bool,
    },
    /// Some manifest changes.
    Entries {
        /// The changes.
        changes: Vec<Change>,
    },
    /// End of the manifest.
    ManifestEnd {
        /// Number of entries of the source's manifest.
        entries: u64,
        /// Its digest.
        digest: Hash,
    },
    /// Replica asks for a file's content.
    Want {
        /// Round-local id.
        id: u32,
        /// The path.
        path: RelPath,
        /// The replica's old copy, if it has one worth a delta.
        base: Option<Base>,
    },
    /// Content ops for a wanted file.
    Data {
        /// The want's id.
        id: u32,
        /// Ops, in order.
        ops: Vec<Op>,
    },
    /// End of a wanted file's data.
    DataEnd {
        /// The want's id.
        id: u32,
        /// How it ended.
        status: DataStatus,
    },
    /// Replica committed a generation.
    Committed {
        /// Its number.
        generation: u64,
        /// Digest of its manifest.
        digest: Hash,
    },
    /// Replica abandoned the round.
    Abandon {
        /// Why.
        reason: AbandonReason,
    },
    /// Source asks the replica for a round now (before a planned swap).
    SyncNow,
    /// Source tells the replica that its tree changed since the round the
    /// replica last asked for: a replica that runs rounds starts one now
    /// (or right after the one in progress). Sent by a source that is given
    /// change hints ([`crate::Source::handle_hints`]), after its batching
    /// window, and when its next full scan is due.
    Changed,
}

/// Largest frame payload accepted or sent (a message and the orchestrator's
/// peer messages alike).
pub const MAX_PAYLOAD: u32 = 1 << 21;
/// Most changes in one `Entries` message.
pub const MAX_CHANGES: usize = 16 * 1024;
/// Most ops in one `Data` message.
pub const MAX_OPS: usize = 64 * 1024;

impl Message {
    /// Its type.
    #[must_use]
    pub fn ty(&self) -> MessageType {
        match self {
            Self::Request { .. } => MessageType::Request,
            Self::ManifestStart { .. } => MessageType::ManifestStart,
            Self::Entries { .. } => MessageType::Entries,
            Self::ManifestEnd { .. } => MessageType::ManifestEnd,
            Self::Want { .. } => MessageType::Want,
            Self::Data { .. } => MessageType::Data,
            Self::DataEnd { .. } => MessageType::DataEnd,
            Self::Committed { .. } => MessageType::Committed,
            Self::Abandon { .. } => MessageType::Abandon,
            Self::SyncNow => MessageType::SyncNow,
            Self::Changed => MessageType::Changed,
        }
    }

    /// Encodes onto `out` (the senders keep every message under
    /// [`MAX_PAYLOAD`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(self.ty() as u8);
        match self {
            Self::Request { digest } => w.bytes(digest),
            Self::ManifestStart { taken_at_ns, full } => {
                w.i64(*taken_at_ns);
                w.u8(u8::from(*full));
            }
            Self::Entries { changes } => {
                w.u32(changes.len() as u32);
                for c in changes {
                    match c {
                        Change::Upsert(p, m) => {
                            w.u8(0);
                            encode_entry(&mut w, p, m, false);
                        }
                        Change::Gone(p) => {
                            w.u8(1);
                            w.str16(p.as_str());
                        }
                    }
                }
            }
            Self::ManifestEnd { entries, digest } => {
                w.u64(*entries);
                w.bytes(digest);
            }
            Self::Want { id, path, base } => {
                w.u32(*id);
                w.str16(path.as_str());
                match base {
                    None => w.u8(0),
                    Some(b) => {
                        w.u8(1);
                        w.u64(b.size);
                        w.bytes(&b.hash);
                        w.u32(b.avg);
                        w.u32(b.chunks.len() as u32);
                        for c in &b.chunks {
                            // 3-byte length (chunks are at most 1 MiB), 5-byte hash.
                            w.bytes(&c.len.to_le_bytes()[..3]);
                            w.bytes(&c.hash.to_le_bytes()[..CHUNK_HASH_LEN]);
                        }
                    }
                }
            }
            Self::Data { id, ops } => {
                w.u32(*id);
                w.u32(ops.len() as u32);
                for op in ops {
                    match op {
                        Op::Copy { offset, len } => {
                            w.u8(0);
                            w.u64(*offset);
                            w.u64(*len);
                        }
                        Op::Literal(d) => {
                            w.u8(1);
                            w.bytes32(d);
                        }
                    }
                }
            }
            Self::DataEnd { id, status } => {
                w.u32(*id);
                w.u8(*status as u8);
            }
            Self::Committed { generation, digest } => {
                w.u64(*generation);
                w.bytes(digest);
            }
            Self::Abandon { reason } => w.u8(*reason as u8),
            Self::SyncNow | Self::Changed => {}
        }
    }

    /// Encoded length.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode(&mut v);
        v.len()
    }

    /// Decodes one message (a whole frame payload).
    ///
    /// # Errors
    /// [`WireError`] for truncation, unknown types or values, counts over
    /// their bounds, bad paths or trailing bytes.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() > MAX_PAYLOAD as usize {
            return Err(WireError::TooLong {
                len: u32::try_from(b.len()).unwrap_or(u32::MAX),
                max: MAX_PAYLOAD,
            });
        }
        let mut r = Reader(b);
        let ty = r.u8()?;
        let m = match ty {
            1 => Self::Request { digest: r.array()? },
            2 => Self::ManifestStart {
                taken_at_ns: r.i64()?,
                full: match r.u8()? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(WireError::BadValue {
                            field: 10,
                            value: u64::from(v),
                        });
                    }
                },
            },
            3 => {
                let n = r.count(MAX_CHANGES, 4)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    changes.push(match r.u8()? {
                        0 => {
                            let (p, m) = decode_entry(&mut r, false)?;
                            Change::Upsert(p, m)
                        }
                        1 => Change::Gone(RelPath::from_bytes(r.bytes16()?)?),
                        v => {
                            return Err(WireError::BadValue {
                                field: 11,
                                value: u64::from(v),
                            });
                        }
                    });
                }
                Self::Entries { changes }
            }
            4 => Self::ManifestEnd {
                entries: r.u64()?,
                digest: r.array()?,
            },
            5 => {
                let id = r.u32()?;
                let path = RelPath::from_bytes(r.bytes16()?)?;
                let base = match r.u8()? {
                    0 => None,
                    1 => {
                        let size = r.u64()?;
                        let hash = r.array()?;
                        let avg = r.u32()?;
                        let n = r.count(MAX_SIG_CHUNKS, 3 + CHUNK_HASH_LEN)?;
                        let mut chunks = Vec::with_capacity(n);
                        for _ in 0..n {
                            chunks.push(SigChunk {
                                len: {
                                    let b = r.take(3)?;
                                    u32::from_le_bytes([b[0], b[1], b[2], 0])
                                },
                                hash: {
                                    let mut h = [0u8; 8];
                                    h[..CHUNK_HASH_LEN].copy_from_slice(r.take(CHUNK_HASH_LEN)?);
                                    u64::from_le_bytes(h)
                                },
                            });
                        }
                        Some(Base {
                            size,
                            hash,
                            avg,
                            chunks,
                        })
                    }
                    v => {
                        return Err(WireError::BadValue {
                            field: 12,
                            value: u64::from(v),
                        });
                    }
                };
                Self::Want { id, path, base }
            }
            6 => {
                let id = r.u32()?;
                let n = r.count(MAX_OPS, 5)?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(match r.u8()? {
                        0 => Op::Copy {
                            offset: r.u64()?,
                            len: r.u64()?,
                        },
                        1 => Op::Literal(r.bytes32()?.to_vec()),
                        v => {
                            return Err(WireError::BadValue {
                                field: 13,
                                value: u64::from(v),
                            });
                        }
                    });
                }
                Self::Data { id, ops }
            }
            7 => Self::DataEnd {
                id: r.u32()?,
                status: match r.u8()? {
                    0 => DataStatus::Complete,
                    1 => DataStatus::Changed,
                    v => {
                        return Err(WireError::BadValue {
                            field: 14,
                            value: u64::from(v),
                        });
                    }
                },
            },
            8 => Self::Committed {
                generation: r.u64()?,
                digest: r.array()?,
            },
            9 => Self::Abandon {
                reason: match r.u8()? {
                    0 => AbandonReason::Refused,
                    1 => AbandonReason::Storage,
                    v => {
                        return Err(WireError::BadValue {
                            field: 15,
                            value: u64::from(v),
                        });
                    }
                },
            },
            10 => Self::SyncNow,
            11 => Self::Changed,
            ty => return Err(WireError::UnknownMessage { ty }),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Kind, LocalStat, Meta};

    #[test]
    fn round_trip_and_truncation() {
        let msgs = vec![
            Message::Request { digest: [7; 32] },
            Message::ManifestStart {
                taken_at_ns: -5,
                full: true,
            },
            Message::Entries {
                changes: vec![
                    Change::Gone(RelPath::new("x/y").unwrap()),
                    Change::Upsert(
                        RelPath::new("l").unwrap(),
                        Meta {
                            kind: Kind::Symlink {
                                target: b"../t".to_vec(),
                            },
                            mode: 0o777,
                            mtime_ns: 3,
                            local: LocalStat::default(),
                        },
                    ),
                ],
            },
            Message::Want {
                id: 3,
                path: RelPath::new("f").unwrap(),
                base: Some(Base {
                    size: 10,
                    hash: [1; 32],
                    avg: 4096,
                    chunks: vec![SigChunk { len: 10, hash: 99 }],
                }),
            },
            Message::Data {
                id: 3,
                ops: vec![Op::Copy { offset: 1, len: 2 }, Op::Literal(b"abc".to_vec())],
            },
            Message::DataEnd {
                id: 3,
                status: DataStatus::Changed,
            },
            Message::SyncNow,
            Message::Changed,
        ];
        for m in msgs {
            let mut b = Vec::new();
            m.encode(&mut b);
            assert_eq!(Message::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Message::decode(&b[..cut]).is_err());
            }
            b.push(0);
            assert!(matches!(
                Message::decode(&b),
                Err(WireError::Trailing { extra: 1 })
            ));
        }
    }

    #[test]
    fn hostile_counts_and_paths() {
        // a count far beyond what the bytes could hold
        let mut b = vec![6u8, 0, 0, 0, 0];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&b),
            Err(WireError::TooMany { .. })
        ));
        let mut b = vec![5u8, 0, 0, 0, 0];
        Writer(&mut b).str16("../etc/passwd");
        b.push(0);
        assert_eq!(
            Message::decode(&b),
            Err(WireError::Path(crate::PathError::DotDot))
        );
        assert_eq!(
            Message::decode(&[99]),
            Err(WireError::UnknownMessage { ty: 99 })
        );
    }
}
