//! Error types, one enum per family of operation.

use crate::wire::MessageType;

/// Why a path from a peer, a manifest or a walk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The whole path is longer than [`crate::MAX_PATH_LEN`] bytes.
    #[error("path of {len} bytes is too long")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// One component is longer than [`crate::MAX_NAME_LEN`] bytes.
    #[error("path component of {len} bytes is too long")]
    NameTooLong {
        /// The component's length in bytes.
        len: usize,
    },
    /// The path starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// A component is `..`.
    #[error("parent component in path")]
    DotDot,
    /// A component is `.` or empty (`a//b`, trailing `/`).
    #[error("empty or dot component in path")]
    EmptyComponent,
    /// The path contains a NUL byte.
    #[error("nul byte in path")]
    Nul,
    /// The path is not UTF-8.
    #[error("path is not utf-8")]
    NotUtf8,
    /// The path names the engine's own state folder (`.sync-delta`).
    #[error("path is inside the reserved state folder")]
    Reserved,
    /// An ancestor of the path is not a directory in the manifest (it is a
    /// file or a symlink, or missing): writing there could leave the root.
    #[error("an ancestor of the path is not a directory")]
    ParentNotDir,
}

/// A frame or message that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the field needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The frame does not start with the magic bytes.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this build does not speak.
    #[error("unsupported version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The frame's payload is longer than allowed.
    #[error("frame payload of {len} bytes exceeds {max}")]
    TooLong {
        /// Announced payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The CRC-32C does not match.
    #[error("frame checksum mismatch")]
    BadChecksum,
    /// An unknown frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// Reserved header bits were set.
    #[error("reserved header bits set")]
    Reserved,
    /// An unknown message type.
    #[error("unknown message type {ty}")]
    UnknownMessage {
        /// The type byte.
        ty: u8,
    },
    /// An enum field holds an unknown value.
    #[error("bad value {value} in field {field}")]
    BadValue {
        /// Which field (a stable number, see the codec).
        field: u8,
        /// The value found.
        value: u64,
    },
    /// A count is larger than its bound.
    #[error("count {count} exceeds the bound {max}")]
    TooMany {
        /// The count received.
        count: u64,
        /// The bound.
        max: u64,
    },
    /// Bytes were left after the message.
    #[error("{extra} trailing bytes after the message")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// A path in the message was refused.
    #[error("bad path: {0}")]
    Path(#[from] PathError),
}

/// The authenticated link failed; the connection must be closed.
#[cfg(feature = "link")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A frame could not be decoded.
    #[error("frame: {0}")]
    Wire(#[from] WireError),
    /// A record does not decrypt and authenticate (tampering, replay,
    /// reordering, or bytes that were never sent by the peer).
    #[error("record authentication failed")]
    BadMac,
    /// The peer's handshake message does not verify under the pre-shared
    /// key (or either key during a rotation): it holds another key.
    #[error("handshake: the peer's key proof does not verify (wrong key)")]
    BadProof,
    /// The responder refused this end's handshake message: the peer holds
    /// another key.
    #[error("handshake: the peer refused this end's key proof (wrong key)")]
    KeyRefused,
    /// The peer speaks another frame version (an older or newer release):
    /// both units must run the same one.
    #[error("the peer speaks frame version {theirs}, this node speaks version {ours}")]
    PeerVersion {
        /// The version this build speaks ([`crate::frame::VERSION`]).
        ours: u8,
        /// The version the peer's bytes carry.
        theirs: u8,
    },
    /// The Noise implementation refused an operation this link should never
    /// ask of it (a bug, reported instead of a panic).
    #[error("noise state error")]
    Crypto,
    /// A handshake frame arrived out of order, or data before the
    /// handshake finished.
    #[error("unexpected frame kind {kind} in handshake state {state}")]
    UnexpectedFrame {
        /// The frame kind.
        kind: u8,
        /// The link state (0 = awaiting hello, 1 = awaiting reply, 2 = awaiting proof, 3 = established).
        state: u8,
    },
    /// The frame's epoch is older than the newest seen from the peer.
    #[error("stale epoch {term}/{node}, newest seen {newest_term}/{newest_node}")]
    StaleEpoch {
        /// Received term.
        term: u64,
        /// Received node.
        node: u64,
        /// Newest term seen.
        newest_term: u64,
        /// Newest node seen.
        newest_node: u64,
    },
    /// The caller fed more bytes than the decoder buffers before draining
    /// frames with `poll_frame`.
    #[error("receive buffer full ({buffered} bytes buffered)")]
    BufferFull {
        /// Bytes buffered.
        buffered: usize,
    },
    /// Before the peer proved the key, more bytes arrived (or a record
    /// announced more) than the link buffers for an unauthenticated
    /// caller ([`crate::frame::MAX_PRE_AUTH`]).
    #[error("{len} bytes before the key was proved, over the {max}-byte bound")]
    PreAuthOverflow {
        /// The bytes buffered with the new ones, or the record's length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Sending before the handshake finished, on the reserved channel, or a
    /// payload that is too long.
    #[error("cannot send {len} bytes on channel {channel} now")]
    CannotSend {
        /// The channel.
        channel: u8,
        /// The payload length.
        len: usize,
    },
    /// The handshake did not finish by the link's deadline (see
    /// [`crate::frame::Link::poll_timeout`]).
    #[error("handshake not finished by its deadline")]
    HandshakeTimeout,
    /// The link already failed; it must be dropped.
    #[error("link closed after an earlier error")]
    Closed,
}

/// Why bytes cannot be a pre-shared key: a key must be 32 random bytes
/// (`head -c 32 /dev/urandom`), and a pattern a person typed, a zeroed
/// buffer or a short secret spread over 32 bytes is refused. The checks
/// are cheap and catch mistakes, not every weak key: 32 random bytes have
/// about 30 distinct values, the bound below sits far under that.
#[cfg(feature = "link")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Every byte is zero.
    #[error("the key is all zero bytes")]
    AllZero,
    /// Fewer distinct byte values than [`crate::frame::MIN_DISTINCT_KEY_BYTES`].
    #[error(
        "the key has only {distinct} distinct byte values (random keys have about 30; at least 16 are needed)"
    )]
    LowEntropy {
        /// Distinct byte values found.
        distinct: u8,
    },
    /// The bytes count up or down by a fixed step (`00 01 02 …`).
    #[error("the key is a counting sequence, not random bytes")]
    Sequence,
}

/// What a storage operation failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The path does not exist.
    #[error("not found")]
    NotFound,
    /// The path exists already.
    #[error("already exists")]
    AlreadyExists,
    /// The directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory where a file was expected.
    #[error("is a directory")]
    IsDir,
    /// A non-directory where a directory was expected.
    #[error("not a directory")]
    NotDir,
    /// An ancestor of the path is a symlink: refused, never followed.
    #[error("symlink in path")]
    SymlinkInPath,
    /// A state file does not decode.
    #[error("state file corrupt")]
    Corrupt,
    /// Another I/O error.
    #[error("i/o error: {kind}")]
    Io {
        /// Its kind.
        kind: std::io::ErrorKind,
    },
    /// An error injected by the test store at mutating step `step`.
    #[error("injected failure at step {step}")]
    Injected {
        /// The step number.
        step: u64,
    },
    /// The test store lost power: everything fails until it is rebooted.
    #[error("power off")]
    PowerOff,
}

impl StoreError {
    /// Whether the error says the path is not there as a regular file:
    /// gone, a directory, or a missing directory or a symlink on the way.
    /// A replica reading what it recorded takes it as a local change, not
    /// a failure.
    pub(crate) fn is_not_there(&self) -> bool {
        matches!(
            self,
            Self::NotFound | Self::NotDir | Self::IsDir | Self::SymlinkInPath
        )
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => Self::NotFound,
            K::AlreadyExists => Self::AlreadyExists,
            K::DirectoryNotEmpty => Self::NotEmpty,
            K::IsADirectory => Self::IsDir,
            K::NotADirectory => Self::NotDir,
            kind => Self::Io { kind },
        }
    }
}

/// A round or session failed. The session is over (close the connection);
/// the replica stays at its last whole generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A message did not decode.
    #[error("message: {0}")]
    Wire(#[from] WireError),
    /// A path was refused.
    #[error("path: {0}")]
    Path(#[from] PathError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A message that is not valid in the session's current state.
    #[error("unexpected {ty:?} message")]
    Unexpected {
        /// The message type.
        ty: MessageType,
    },
    /// A message names a file id that is not in the round.
    #[error("unknown file id {id}")]
    UnknownFile {
        /// The id.
        id: u32,
    },
    /// A copy op reaches outside the replica's old file.
    #[error("copy of {len} bytes at {offset} outside the base of {base_len} bytes")]
    CopyOutOfRange {
        /// Offset in the base.
        offset: u64,
        /// Length.
        len: u64,
        /// The base file's length.
        base_len: u64,
    },
    /// Data beyond the file size the manifest announced.
    #[error("data beyond the announced size of {size} bytes")]
    BeyondSize {
        /// Announced size.
        size: u64,
    },
    /// A file larger than the configured maximum.
    #[error("file of {size} bytes exceeds the maximum {max}")]
    FileTooLarge {
        /// Announced size.
        size: u64,
        /// Configured maximum.
        max: u64,
    },
    /// More manifest entries than the configured maximum.
    #[error("more than {max} manifest entries")]
    TooManyEntries {
        /// Configured maximum.
        max: u64,
    },
    /// The manifest the replica rebuilt does not hash to what the source
    /// announced (the diff base disagrees).
    #[error("manifest digest mismatch")]
    DigestMismatch,
    /// A symlink target longer than allowed.
    #[error("symlink target of {len} bytes too long")]
    LinkTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// A generation number that cannot be counted up from: claimed by the
    /// replica in its `Committed` (a source stores it, and counts from it
    /// after a role change), or reached by the replica's own tree.
    #[error("generation {generation} is out of range")]
    GenerationOutOfRange {
        /// The number.
        generation: u64,
    },
    /// The manifest would take more memory than the configured budget
    /// (`ReplicaConfig::max_manifest_bytes`): its paths and symlink
    /// targets, plus a fixed cost per entry.
    #[error("manifest of at least {bytes} bytes exceeds the budget of {max}")]
    ManifestTooLarge {
        /// Bytes counted so far.
        bytes: u64,
        /// The budget.
        max: u64,
    },
    /// A change would leave entries under a path that is no longer a
    /// directory: a directory that still has children turned into a file
    /// or a symlink, or removed (a hostile or broken source).
    #[error("a change would orphan the entries under a path")]
    OrphansEntries,
}

/// Why the replica refused to commit a round (until the operator confirms
/// with [`crate::Replica::confirm_deletions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The round would lose more content than the guard lets through: what
    /// it loses, with what rounds committed within the window
    /// (`ReplicaConfig::mass_delete_window`) lost, is more than
    /// `ReplicaConfig::mass_delete_fraction` of the tree's content bytes.
    /// Content the new generation still holds at any path (renames, moves,
    /// copies) is not lost; a deleted file loses its size, a file that
    /// shrinks the bytes it no longer holds.
    #[error(
        "round would lose {losing} bytes of content, {lost} more were lost earlier in the \
         window: more than the {limit} allowed of the tree's {total}"
    )]
    MassDeletion {
        /// Content bytes this round would lose.
        losing: u64,
        /// Content bytes rounds committed within the window lost.
        lost: u64,
        /// The tree's content bytes the share is taken of: the most it
        /// held before any round in the window.
        total: u64,
        /// The most the window may lose without a confirmation.
        limit: u64,
    },
    /// The source root is empty while the replica is not.
    #[error("source is empty, replica has {total} entries")]
    EmptySource {
        /// Entries the replica has.
        total: u64,
    },
}

/// Applying a delta to a file's old copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A copy op reaches outside the base.
    #[error("copy of {len} bytes at {offset} outside the base of {base_len} bytes")]
    CopyOutOfRange {
        /// Offset in the base.
        offset: u64,
        /// Length.
        len: u64,
        /// Base length.
        base_len: u64,
    },
    /// The output would exceed the announced size.
    #[error("output beyond the announced size of {size} bytes")]
    BeyondSize {
        /// Announced size.
        size: u64,
    },
    /// The output is shorter than announced.
    #[error("output of {got} bytes, {size} announced")]
    Short {
        /// Bytes produced.
        got: u64,
        /// Announced size.
        size: u64,
    },
    /// The output does not hash to the announced BLAKE3 hash.
    #[error("output hash mismatch")]
    HashMismatch,
}
