//! Properties the fuzz targets check, shared with the tests that replay
//! their seed corpora on stable.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed property must panic: that is what the fuzzer looks for

use crate::delta::Op;
use crate::epoch::Epoch;
use crate::frame::{self, Link, Nonce, PreSharedKey, RecordKind};
use crate::wire::Message;
use std::time::Instant;

mod apply;
mod session;

pub use apply::{seeds_apply, sync_apply};
pub use session::{SessionSummary, session_summary, sync_session};

/// `sync_frame`: any bytes
/// - through [`frame::decode_record`]: never panic; a decoded record
///   re-encodes to the same bytes;
/// - through [`Message::decode`]: never panic; a decoded message
///   re-encodes and decodes to itself;
/// - fed to an established [`Link`] in pieces: never panic, and never
///   yield a frame (nothing forged without the session keys gets
///   through);
/// - fed to a listener waiting for the handshake: never panic, and never
///   answer anything but the constant refusal (nothing that depends on the
///   key goes to a caller who has not proved it).
///
/// `now` is the links' clock (the harness passes the time it starts).
///
/// # Panics
/// When the property fails: that is the fuzzer's signal.
pub fn sync_frame(now: Instant, data: &[u8]) {
    if let Ok(Some((r, used))) = frame::decode_record(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        frame::encode_record(&mut again, r.kind, r.body).expect("body fits");
        assert_eq!(again, data[..used]);
    }
    if let Ok(m) = Message::decode(data) {
        let mut b = Vec::new();
        m.encode(&mut b);
        assert_eq!(Message::decode(&b).expect("re-decodes"), m);
    }
    let (mut a, mut b) = established(now);
    let _ = &mut a;
    for piece in data.chunks(97) {
        if b.handle_bytes(now, piece).is_err() {
            break;
        }
        match b.poll_frame() {
            Ok(None) => {}
            Ok(Some(f)) => panic!("forged frame accepted: {f:?}"),
            Err(_) => break,
        }
    }
    let mut listener = Link::new(
        frame::LinkRole::Responder,
        PreSharedKey::new(*blake3::hash(b"fuzz listener").as_bytes()).expect("random-looking"),
        Nonce([5; 32]),
        Epoch::new(1, 2),
        Epoch::default(),
        now,
    );
    let mut said = Vec::new();
    for piece in data.chunks(97) {
        if listener.handle_bytes(now, piece).is_err() {
            break;
        }
        let r = listener.poll_frame();
        listener.poll_transmit(&mut said);
        match r {
            Ok(None) => assert!(said.is_empty(), "answered a stranger: {said:?}"),
            Ok(Some(f)) => panic!("frame from an unauthenticated caller: {f:?}"),
            Err(_) => break,
        }
    }
    if !said.is_empty() {
        let (r, used) = frame::decode_record(&said)
            .expect("own record")
            .expect("whole");
        assert_eq!((r.kind, used), (RecordKind::Refused, said.len()));
    }
}

fn key() -> PreSharedKey {
    PreSharedKey::new(*blake3::hash(b"fuzz").as_bytes()).expect("a random-looking key")
}

fn established(now: Instant) -> (Link, Link) {
    let (a, b) = Link::connected_pair(
        key(),
        [Nonce([1; 32]), Nonce([2; 32])],
        [Epoch::new(1, 1), Epoch::new(1, 2)],
        now,
    )
    .expect("one key: the handshake succeeds");
    assert!(a.is_established() && b.is_established());
    (a, b)
}

/// A hello of frame version 1 (the MAC-only link): a 26-byte header
/// (magic, version 1, kind 0, channel, flags, length 32, epoch), a 32-byte
/// nonce, CRC-32C and a zero MAC. For tests of what a peer on the old
/// version is told.
#[must_use]
pub fn v1_hello() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"SD\x01\x00\x00\x00");
    f.extend_from_slice(&32u32.to_le_bytes());
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&[7; 32]);
    let crc = crc32c::crc32c(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(&[0; 16]);
    f
}

/// Seed inputs for `sync_frame`: frames of every kind and messages of
/// every type (the committed corpus is made from these). `now` starts the
/// links' clocks; the seeds do not depend on it.
#[must_use]
pub fn seeds_frame(now: Instant) -> Vec<(String, Vec<u8>)> {
    use crate::delta::SigChunk;
    use crate::manifest::{Change, Kind, LocalStat, Meta};
    use crate::path::RelPath;
    use crate::wire::{AbandonReason, Base, DataStatus};
    let mut v = Vec::new();
    let dialer = Link::new(
        frame::LinkRole::Initiator,
        key(),
        Nonce([3; 32]),
        Epoch::new(3, 4),
        Epoch::default(),
        now,
    );
    let mut hello = Vec::new();
    let mut dialer = dialer;
    dialer.poll_transmit(&mut hello);
    v.push(("frame_hello".to_owned(), hello.clone()));
    v.push((
        "frame_truncated".to_owned(),
        hello[..hello.len() - 5].to_vec(),
    ));
    // From another connection than the property's: its session keys
    // differ, so the record must be refused.
    let (mut a, _) = Link::connected_pair(
        key(),
        [Nonce([7; 32]), Nonce([8; 32])],
        [Epoch::new(3, 4), Epoch::new(3, 5)],
        now,
    )
    .expect("one key");
    let mut f = Vec::new();
    a.send(1, b"peer message", &mut f).expect("established");
    v.push(("frame_data".to_owned(), f));
    let mut f = Vec::new();
    frame::encode_record(
        &mut f,
        RecordKind::Refused,
        b"\x01key proof does not verify",
    )
    .expect("short");
    v.push(("frame_refused".to_owned(), f));
    v.push(("frame_v1_hello".to_owned(), v1_hello()));
    let file = Meta {
        kind: Kind::File {
            size: 3,
            hash: [5; 32],
        },
        mode: 0o644,
        mtime_ns: 7,
        local: LocalStat::default(),
    };
    let link = Meta {
        kind: Kind::Symlink {
            target: b"../x".to_vec(),
        },
        mode: 0o777,
        mtime_ns: 0,
        local: LocalStat::default(),
    };
    let msgs = vec![
        Message::Request { digest: [1; 32] },
        Message::ManifestStart {
            taken_at_ns: 1_700_000_000_000_000_000,
            full: true,
        },
        Message::Entries {
            changes: vec![
                Change::Upsert(RelPath::new("etc/pbx.conf").unwrap(), file),
                Change::Upsert(RelPath::new("current").unwrap(), link),
                Change::Gone(RelPath::new("voice/old.wav").unwrap()),
            ],
        },
        Message::ManifestEnd {
            entries: 2,
            digest: [3; 32],
        },
        Message::Want {
            id: 4,
            path: RelPath::new("rec/a.wav").unwrap(),
            base: Some(Base {
                size: 10_000,
                hash: [6; 32],
                avg: 4096,
                chunks: vec![
                    SigChunk { len: 5000, hash: 1 },
                    SigChunk { len: 5000, hash: 2 },
                ],
            }),
        },
        Message::Data {
            id: 4,
            ops: vec![
                Op::Copy {
                    offset: 0,
                    len: 5000,
                },
                Op::Literal(b"tail".to_vec()),
            ],
        },
        Message::DataEnd {
            id: 4,
            status: DataStatus::Complete,
        },
        Message::Committed {
            generation: 9,
            digest: [8; 32],
        },
        Message::Abandon {
            reason: AbandonReason::Refused,
        },
        Message::SyncNow,
        Message::Changed,
    ];
    for (i, m) in msgs.into_iter().enumerate() {
        let mut b = Vec::new();
        m.encode(&mut b);
        v.push((format!("msg_{i:02}_{:?}", m.ty()).to_lowercase(), b));
    }
    v
}
mod handshake;
pub use handshake::{Ending, peer_handshake, seeds_handshake};
