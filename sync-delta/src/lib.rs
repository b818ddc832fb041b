//! Delta replication of a directory tree, from the Master (the *source*)
//! to the Backup (the *replica*), in atomic, verified generations.
//!
//! - [`frame`]: the peer link: Noise (`Noise_NNpsk0_25519_AESGCM_SHA256`,
//!   the `snow` crate) keyed by a pre-shared key of 32 random bytes, the
//!   dialer proving it first; encrypted, authenticated records carrying
//!   frames multiplexed by channel so the orchestrator's peer messages
//!   share the connection. Sans-IO; the randomness comes from the driver.
//! - [`Message`]: the sync messages on channel [`frame::CHANNEL_SYNC`],
//!   opaque to a driver.
//! - [`Source`] and [`Replica`]: the two sessions, Sans-IO engines in the
//!   house shape. They read and write files only through a [`Storage`]
//!   passed as `&mut S` to the calls that need it, and hold no file
//!   handles between calls. [`FsStore`] is the real store; [`mem::MemStore`]
//!   an in-memory, fault-injecting one.
//! - Inside: content-defined chunking (Gear hash, FastCDC-style normalized
//!   cuts) and chunk deltas; renames and copies are done locally from
//!   content hashes, appends travel as the tail.
//!
//! # Features
//!
//! - `link` (default): the peer link, [`frame`] (the `snow` and
//!   `rand_chacha` crates). Without it, a driver carries the sessions'
//!   [`Message`]s over a transport of its own.
//! - `mmap` (default): [`FsStore`] hashes files of up to 8 MiB through a
//!   memory map; without it, through a buffer.
//! - `internals` and `__fuzzing`: not API. They make the codec internals
//!   and the fuzz properties public for this repository's benches, tests
//!   and fuzz targets; hidden from these docs, and any release may change
//!   them.
//!
//! No thread is spawned unless asked for: [`FsStore::new`] walks, hashes
//! and fsyncs in the calling thread; [`FsStore::parallel`] and
//! [`FsStore::with_threads`] opt in (see [`FsStore`]).
//!
//! A replica applies each round as a generation: new content is written in
//! `.sync-delta/stage/` and verified against its BLAKE3 hash, a journal
//! (the commit record) is made durable, then files are renamed into place.
//! After any crash, [`Replica::open`] leaves the tree at exactly the
//! previous or the new generation. A tree that diverged locally (a stray
//! file where the round makes a directory, a tracked directory deleted)
//! does not stop it: what is in a round's way moves into a quarantine
//! folder before the commit record is written ([`ReplicaEvent::Diverged`]),
//! and a record that cannot be applied as written is rolled forward by
//! clearing its way ([`OpenReport::repaired`]).
//!
//! # For drivers
//!
//! - Backup: [`Replica::open`] at start (finishes or rolls back a round,
//!   quarantines a returning Master's unconfirmed changes), then the house
//!   loop (`handle_*`, `poll_transmit`, `poll_event`, `poll_timeout`).
//!   [`Replica::sync_now`] before a planned swap; [`Replica::status`] with
//!   the wall clock gives the generation, when the source took it, its age
//!   and the quarantine folders. Give the wall clock with
//!   [`Replica::handle_wall_clock`]: the mass-deletion guard's window of
//!   lost content is measured in it; a refused round
//!   ([`ReplicaEvent::Refused`]) goes through after
//!   [`Replica::confirm_deletions`].
//! - Takeover: [`Replica::settle`] finishes or rolls back the round in
//!   progress and returns the [`Generation`] the new Master starts from;
//!   then [`Source::open`] on the same tree.
//! - Master: [`Source::open`], then feed it the replica's messages with the
//!   wall clock ([`Source::handle_message`]) and drain
//!   [`Source::poll_transmit`] as the socket accepts data.
//!   [`SourceEvent::Confirmed`] (and [`Source::confirmed`]) give the
//!   generation the Backup holds and when this node took it. Give it the
//!   kernel's change notifications as hints ([`Source::handle_hints`]):
//!   rounds are then built from what changed without walking the tree, the
//!   replica is told at once, and [`Source::exposure`] gives the data-loss
//!   window; the tree is still walked after opening, after lost hints and
//!   every [`SourceConfig::full_scan_interval`].
//! - The link: [`frame::Link`] carries both sync messages (channel
//!   [`frame::CHANNEL_SYNC`]) and the orchestrator's peer messages (any
//!   other channel, opaque here), with each frame's sender [`Epoch`].
//!
//! # Durability and limits
//!
//! - A round costs fsyncs: the staged files (overlapped), the journal, the
//!   directories it touched (overlapped), the manifest and the state file.
//!   That is the price of "exactly N or N+1" after a power cut; rsync pays
//!   none of it and guarantees none of it.
//! - The tree's own root directory's metadata and symlink mtimes are not
//!   replicated; names that are not UTF-8 are skipped (counted).
//! - Manifests live in memory as ordered maps: a few hundred bytes per
//!   entry. A replica bounds what a source can make it hold in entries
//!   ([`ReplicaConfig::max_entries`]) and in bytes
//!   ([`ReplicaConfig::max_manifest_bytes`]).
//! - A replica writes no setuid, setgid or sticky bit unless
//!   [`ReplicaConfig::keep_special_bits`].
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use sync_delta::mem::MemStore;
//! use sync_delta::{Replica, ReplicaConfig, Source, SourceConfig};
//!
//! let now = Instant::now();
//! let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! let mut master = MemStore::new();
//! master.put_file("voicemail/100/msg0001.wav", b"RIFF....", 0o640, 5);
//! let mut backup = MemStore::new();
//!
//! let mut source = Source::open(SourceConfig::default(), now, &mut master)?;
//! let (mut replica, _) = Replica::open(ReplicaConfig::default(), now, &mut backup)?;
//! replica.handle_connected(now);
//! // The driver would carry these over a `frame::Link`; here, directly.
//! loop {
//!     let mut moved = false;
//!     while let Some(m) = replica.poll_transmit() {
//!         source.handle_message(now, wall, m, &mut master)?;
//!         moved = true;
//!     }
//!     while let Some(m) = source.poll_transmit(&mut master) {
//!         replica.handle_message(now, m, &mut backup)?;
//!         moved = true;
//!     }
//!     if !moved {
//!         break;
//!     }
//! }
//! assert_eq!(backup.view(), master.view());
//! let status = replica.status(wall + Duration::from_secs(30));
//! assert_eq!(status.generation.number, 1);
//! assert_eq!(status.age, Some(Duration::from_secs(30)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs`: each item behind a feature says which.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The items re-exported from the internal modules are public in every
// build: no badge for the feature that only makes their modules public.
#![cfg_attr(docsrs, doc(auto_cfg(hide(feature = "internals"))))]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The codec and engine internals: private, or public with the `internals`
// feature for the repository's bench and test harnesses (not API).
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

internal!(chunk, delta, exclude, files, manifest, packed, path, wire);

mod epoch;
mod error;
#[cfg(feature = "link")]
pub mod frame;
#[cfg(feature = "__fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod generation;
mod guard;
mod hints;
pub mod mem;
mod replica;
mod source;
mod split;
pub mod store;

pub use epoch::Epoch;
pub use error::{ApplyError, PathError, Refusal, SessionError, StoreError, WireError};
#[cfg(feature = "link")]
pub use error::{KeyError, LinkError};
pub use exclude::Exclude;
pub use generation::Role;
pub use manifest::{ENTRY_COST, Kind, MAX_LINK_LEN, Manifest, Meta};
pub use path::{MAX_NAME_LEN, MAX_PATH_LEN, RelPath, STATE_DIR};
pub use replica::{
    Divergence, Generation, OpenReport, Replica, ReplicaConfig, ReplicaEvent, ReplicaStats,
    ReplicaStatus, RoundProgress,
};
pub use source::{Exposure, Source, SourceConfig, SourceEvent, SourceStats};
pub use store::{FsStore, Storage};
pub use wire::{Message, MessageType};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
