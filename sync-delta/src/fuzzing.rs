//! Properties the fuzz targets check, shared with the tests that replay
//! their seed corpora on stable.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed property must panic: that is what the fuzzer looks for

use crate::delta::Op;
use crate::epoch::Epoch;
use crate::frame::{self, FrameKind, Link, Nonce, PreSharedKey};
use crate::wire::Message;
use std::time::Instant;

mod apply;
mod session;

pub use apply::{seeds_apply, sync_apply};
pub use session::{SessionSummary, session_summary, sync_session};

/// `sync_frame`: any bytes
/// - through [`frame::decode`]: never panic; a decoded frame re-encodes to
///   the same bytes (up to its MAC field);
/// - through [`Message::decode`]: never panic; a decoded message
///   re-encodes and decodes to itself;
/// - fed to an established [`Link`] in pieces: never panic, and never
///   yield a frame (nothing forged without the key gets through).
///
/// `now` is the links' clock (the harness passes the time it starts).
///
/// # Panics
/// When the property fails: that is the fuzzer's signal.
pub fn sync_frame(now: Instant, data: &[u8]) {
    if let Ok(Some((f, used))) = frame::decode(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        frame::encode(&mut again, f.kind, f.channel, f.epoch, f.payload, None)
            .expect("payload fits");
        assert_eq!(again[..used - 16], data[..used - 16]);
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
}

fn established(now: Instant) -> (Link, Link) {
    let key = PreSharedKey::from_secret(b"fuzz");
    let (a, b) = Link::connected_pair(
        key,
        [Nonce([1; 32]), Nonce([2; 32])],
        [Epoch::new(1, 1), Epoch::new(1, 2)],
        now,
    )
    .expect("one key: the handshake succeeds");
    assert!(a.is_established() && b.is_established());
    (a, b)
}

/// Seed inputs for `sync_frame`: frames of every kind and messages of
/// every type (the committed corpus is made from these).
#[must_use]
pub fn seeds_frame() -> Vec<(String, Vec<u8>)> {
    use crate::delta::SigChunk;
    use crate::manifest::{Change, Kind, LocalStat, Meta};
    use crate::path::RelPath;
    use crate::wire::{AbandonReason, Base, DataStatus};
    let mut v = Vec::new();
    let mut f = Vec::new();
    frame::encode(
        &mut f,
        FrameKind::Hello,
        0,
        Epoch::new(3, 4),
        &[7; 32],
        None,
    )
    .unwrap();
    v.push(("frame_hello".to_owned(), f.clone()));
    v.push(("frame_truncated".to_owned(), f[..f.len() - 5].to_vec()));
    let mut f = Vec::new();
    frame::encode(
        &mut f,
        FrameKind::Data,
        1,
        Epoch::new(3, 4),
        b"peer message",
        Some((&[9; 32], 0)),
    )
    .unwrap();
    v.push(("frame_data".to_owned(), f));
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
    ];
    for (i, m) in msgs.into_iter().enumerate() {
        let mut b = Vec::new();
        m.encode(&mut b);
        v.push((format!("msg_{i:02}_{:?}", m.ty()).to_lowercase(), b));
    }
    v
}
