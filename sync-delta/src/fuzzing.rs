//! Properties the fuzz targets check, shared with the tests that replay
//! their seed corpora on stable.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed property must panic: that is what the fuzzer looks for

use crate::chunk::ChunkParams;
use crate::delta::{Op, apply, diff, signature};
use crate::epoch::Epoch;
use crate::frame::{self, FrameKind, Link, LinkRole, Nonce, PreSharedKey};
use crate::wire::Message;

/// `sync_frame`: any bytes
/// - through [`frame::decode`]: never panic; a decoded frame re-encodes to
///   the same bytes (up to its MAC field);
/// - through [`Message::decode`]: never panic; a decoded message
///   re-encodes and decodes to itself;
/// - fed to an established [`Link`] in pieces: never panic, and never
///   yield a frame (nothing forged without the key gets through).
///
/// # Panics
/// When the property fails: that is the fuzzer's signal.
pub fn sync_frame(data: &[u8]) {
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
    let (mut a, mut b) = established();
    let _ = &mut a;
    for piece in data.chunks(97) {
        if b.handle_bytes(piece).is_err() {
            break;
        }
        match b.poll_frame() {
            Ok(None) => {}
            Ok(Some(f)) => panic!("forged frame accepted: {f:?}"),
            Err(_) => break,
        }
    }
}

fn established() -> (Link, Link) {
    let key = PreSharedKey::from_secret(b"fuzz");
    let mut a = Link::new(
        LinkRole::Initiator,
        key.clone(),
        Nonce([1; 32]),
        Epoch::new(1, 1),
        Epoch::default(),
    );
    let mut b = Link::new(
        LinkRole::Responder,
        key,
        Nonce([2; 32]),
        Epoch::new(1, 2),
        Epoch::default(),
    );
    for _ in 0..2 {
        let mut x = Vec::new();
        a.poll_transmit(&mut x);
        b.handle_bytes(&x).unwrap();
        while b.poll_frame().unwrap().is_some() {}
        let mut y = Vec::new();
        b.poll_transmit(&mut y);
        a.handle_bytes(&y).unwrap();
        while a.poll_frame().unwrap().is_some() {}
    }
    assert!(a.is_established() && b.is_established());
    (a, b)
}

/// `sync_apply`: the first two bytes give a base length; the base follows,
/// the rest is a message.
/// - A `Data` message's ops applied to the base never panic, never read
///   outside it and never produce more than the announced size.
/// - The rest, taken as a new version of the base, round-trips: the delta
///   from the base's signature applies back to exactly it.
///
/// # Panics
/// When the property fails.
pub fn sync_apply(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (base, msg) = rest.split_at(n);
    if let Ok(Message::Data { ops, .. }) = Message::decode(msg) {
        let size = 1 << 16;
        if let Ok(out) = apply(base, &ops, size, &[0; 32]) {
            assert!(out.len() as u64 <= size);
        }
    }
    let params = ChunkParams::new(crate::chunk::MIN_AVG);
    let ops = diff(params, &signature(base, params), msg);
    for op in &ops {
        if let Op::Copy { offset, len } = op {
            assert!(offset + len <= base.len() as u64);
        }
    }
    let hash = *blake3::hash(msg).as_bytes();
    assert_eq!(
        apply(base, &ops, msg.len() as u64, &hash).expect("round trip"),
        msg
    );
}

/// Kinds of frame, for building seeds.
#[must_use]
pub fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
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
    v.push(("hello", f));
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
    v.push(("data", f));
    let mut f = Vec::new();
    Message::Request { digest: [1; 32] }.encode(&mut f);
    v.push(("request", f));
    let mut f = Vec::new();
    Message::Data {
        id: 1,
        ops: vec![Op::Copy { offset: 2, len: 3 }, Op::Literal(b"xyz".to_vec())],
    }
    .encode(&mut f);
    v.push(("data_msg", f));
    v
}
