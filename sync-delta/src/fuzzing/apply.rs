//! `sync_apply`: a file's new version fetched as a delta against the
//! replica's old copy, through the code a round runs: the [`Source`]'s
//! matcher and append check, the [`Replica`]'s data path and its
//! verification.

use super::session::{assert_sendable, assert_whole};
use crate::mem::{MemStore, View};
use crate::wire::{DataStatus, Message};
use crate::{Replica, ReplicaConfig, Source, SourceConfig};
use std::time::{Duration, Instant, SystemTime};

fn config() -> ReplicaConfig {
    ReplicaConfig {
        // Every file with an old copy is fetched as a delta.
        delta_min_size: 1,
        // Nothing held back: the property is the data path's.
        mass_delete_fraction: 1.0,
        ..ReplicaConfig::default()
    }
}

/// One honest round; `hostile` (the ops of a `Data` message) replaces
/// the source's data for the file when given.
fn round(
    now: Instant,
    src: &mut MemStore,
    dst: &mut MemStore,
    hostile: Option<&Message>,
) -> (Replica, Result<(), crate::SessionError>, bool) {
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut source = Source::open(SourceConfig::default(), now, src).expect("opens");
    let (mut replica, _) = Replica::open(config(), now, dst).expect("opens");
    replica.handle_connected(now);
    let mut offered_base = false;
    loop {
        let mut moved = false;
        while let Some(m) = replica.poll_transmit() {
            assert_sendable(&m);
            if let Message::Want { id, base, .. } = &m {
                offered_base |= base.is_some();
                if let Some(Message::Data { ops, .. }) = hostile {
                    // The hostile source answers the want itself.
                    for m in [
                        Message::Data {
                            id: *id,
                            ops: ops.clone(),
                        },
                        Message::DataEnd {
                            id: *id,
                            status: DataStatus::Complete,
                        },
                    ] {
                        if let Err(e) = replica.handle_message(now, m, dst) {
                            return (replica, Err(e), offered_base);
                        }
                    }
                    moved = true;
                    continue;
                }
            }
            source
                .handle_message(now, wall, m, src)
                .expect("an honest replica's messages");
            moved = true;
        }
        while let Some(m) = source.poll_transmit(src) {
            assert_sendable(&m);
            if hostile.is_some() && matches!(m, Message::Data { .. } | Message::DataEnd { .. }) {
                continue;
            }
            if let Err(e) = replica.handle_message(now, m, dst) {
                return (replica, Err(e), offered_base);
            }
            moved = true;
        }
        if !moved {
            return (replica, Ok(()), offered_base);
        }
    }
}

/// `sync_apply`: the first two bytes give a base length; the base follows,
/// the rest is the file's new version (and, when it decodes as one, a
/// `Data` message of a hostile source).
/// - The replica holds the base as generation 1 of file `f`; the source's
///   `f` becomes the new version. The round fetches it as a delta against
///   the old copy (when the base is not empty) and the replica ends with
///   exactly the source's tree.
/// - The same round with the hostile `Data` answering the replica's want:
///   never a panic; either a typed error or a commit; and the tree is a
///   whole generation in which `f` is the old or the new version, never
///   anything else.
///
/// # Panics
/// When the property fails.
pub fn sync_apply(now: Instant, data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (base, new) = rest.split_at(n);
    let mut src = MemStore::new();
    src.put_file("f", base, 0o644, 1);
    let mut dst = MemStore::new();
    let (_, r, _) = round(now, &mut src, &mut dst, None);
    r.expect("the first round");
    assert_eq!(dst.view(), src.view());
    src.put_file("f", new, 0o640, 2);

    let (mut s2, mut d2) = (src.clone(), dst.clone());
    let (_, r, offered) = round(now, &mut s2, &mut d2, None);
    r.expect("an honest round");
    assert_eq!(d2.view(), s2.view(), "the delta rebuilds the new version");
    assert_eq!(
        offered,
        !base.is_empty() && !new.is_empty() && base != new,
        "the old copy is offered as a delta base"
    );

    let hostile = Message::decode(new).ok();
    if let Some(m @ Message::Data { .. }) = &hostile {
        let (replica, r, _) = round(now, &mut src, &mut dst, Some(m));
        if let Err(e) = &r {
            assert!(!matches!(e, crate::SessionError::Store(_)), "{e}");
        }
        assert_whole(&dst, &replica.manifest(), 0o777, "after hostile data");
        let f = dst.view().get("f").cloned();
        assert!(
            matches!(&f, Some(View::File(d, ..)) if d == base || d == new),
            "f is neither version: {f:?}"
        );
    }
}

/// Seed inputs for `sync_apply`.
#[must_use]
pub fn seeds_apply() -> Vec<(String, Vec<u8>)> {
    use crate::delta::Op;
    let base: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let with = |base: &[u8], rest: &[u8]| {
        let mut v = (base.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(base);
        v.extend_from_slice(rest);
        v
    };
    let mut edited = base.clone();
    edited.splice(1000..1000, *b"inserted");
    let mut appended = base.clone();
    appended.extend_from_slice(b"appended at the end");
    let mut data = Vec::new();
    Message::Data {
        id: 0,
        ops: vec![
            Op::Copy {
                offset: 10,
                len: 100,
            },
            Op::Literal(b"abc".to_vec()),
        ],
    }
    .encode(&mut data);
    let mut oob = Vec::new();
    Message::Data {
        id: 0,
        ops: vec![Op::Copy {
            offset: u64::MAX - 1,
            len: 10,
        }],
    }
    .encode(&mut oob);
    vec![
        ("empty".to_owned(), vec![0, 0]),
        ("insert".to_owned(), with(&base, &edited)),
        ("append".to_owned(), with(&base, &appended)),
        ("unrelated".to_owned(), with(&base[..100], &base[200..])),
        ("data_ops".to_owned(), with(&base, &data)),
        ("copy_out_of_range".to_owned(), with(&base, &oob)),
    ]
}
