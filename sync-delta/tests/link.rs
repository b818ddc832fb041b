//! The encrypted peer link (`frame::Link`): the handshake with the right,
//! a wrong and a rotated key, what the listener says before the dialer
//! proved the key, tampered, replayed, reordered and dropped records, a
//! peer on the old frame version, frames split over records, no plaintext
//! on the wire, weak keys, and the handshake deadline.

use std::time::{Duration, Instant};

use sync_delta::frame::{
    self, CHANNEL_PEER, CHANNEL_SYNC, Frame, HANDSHAKE_TIMEOUT, KeySlot, Link, LinkRole,
    MAX_PAYLOAD, MAX_PRE_AUTH, MAX_RECORD_BODY, Nonce, PreSharedKey, RECORD_HEADER_LEN, RecordKind,
    VERSION,
};
use sync_delta::{Epoch, KeyError, LinkError, WireError};

fn key(label: &str) -> PreSharedKey {
    PreSharedKey::new(*blake3::hash(label.as_bytes()).as_bytes()).unwrap()
}

fn dialer(now: Instant, k: &str) -> Link {
    Link::new(
        LinkRole::Initiator,
        key(k),
        Nonce([1; 32]),
        Epoch::new(1, 1),
        Epoch::default(),
        now,
    )
}

fn listener(now: Instant, k: &str) -> Link {
    Link::new(
        LinkRole::Responder,
        key(k),
        Nonce([2; 32]),
        Epoch::new(1, 2),
        Epoch::default(),
        now,
    )
}

/// Moves `from`'s pending bytes to `to`; the frames `to` yields.
fn pump(now: Instant, from: &mut Link, to: &mut Link) -> Result<Vec<Frame>, LinkError> {
    let mut bytes = Vec::new();
    from.poll_transmit(&mut bytes);
    feed(now, to, &bytes)
}

fn feed(now: Instant, to: &mut Link, bytes: &[u8]) -> Result<Vec<Frame>, LinkError> {
    to.handle_bytes(now, bytes)?;
    let mut got = Vec::new();
    while let Some(f) = to.poll_frame()? {
        got.push(f);
    }
    Ok(got)
}

fn established(now: Instant) -> (Link, Link) {
    let (mut a, mut b) = (dialer(now, "k"), listener(now, "k"));
    pump(now, &mut a, &mut b).unwrap();
    pump(now, &mut b, &mut a).unwrap();
    assert!(a.is_established() && b.is_established());
    (a, b)
}

fn records(wire: &[u8]) -> Vec<(RecordKind, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((r, used)) = frame::decode_record(&wire[at..]).unwrap() {
        out.push((r.kind, used));
        at += used;
    }
    assert_eq!(at, wire.len(), "whole records");
    out
}

#[test]
fn handshake_with_the_right_key_then_frames_both_ways() {
    let now = Instant::now();
    let (mut a, mut b) = (dialer(now, "k"), listener(now, "k"));
    // The dialer's hello is one record, ready at once; the listener
    // answers it with one reply and is established; the dialer is once it
    // read the reply.
    let mut hello = Vec::new();
    assert!(a.poll_transmit(&mut hello));
    assert_eq!(
        records(&hello),
        [(RecordKind::Hello, RECORD_HEADER_LEN + 48)]
    );
    assert!(feed(now, &mut b, &hello).unwrap().is_empty());
    assert!(b.is_established());
    assert_eq!(b.key_used(), Some(KeySlot::Primary));
    let mut reply = Vec::new();
    assert!(b.poll_transmit(&mut reply));
    assert_eq!(
        records(&reply),
        [(RecordKind::Reply, RECORD_HEADER_LEN + 48)]
    );
    assert!(!a.is_established());
    feed(now, &mut a, &reply).unwrap();
    assert!(a.is_established());
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None));

    let mut wire = Vec::new();
    a.send(CHANNEL_PEER, b"hello", &mut wire).unwrap();
    a.send(CHANNEL_SYNC, b"", &mut wire).unwrap();
    // Byte by byte.
    let mut got = Vec::new();
    for byte in &wire {
        got.extend(feed(now, &mut b, std::slice::from_ref(byte)).unwrap());
    }
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].channel, got[0].payload.as_slice()),
        (CHANNEL_PEER, &b"hello"[..])
    );
    assert_eq!(
        (got[1].channel, got[1].epoch),
        (CHANNEL_SYNC, Epoch::new(1, 1))
    );
    let mut back = Vec::new();
    b.send(CHANNEL_PEER, b"and back", &mut back).unwrap();
    let got = feed(now, &mut a, &back).unwrap();
    assert_eq!(got[0].payload, b"and back");
    assert_eq!(got[0].epoch, Epoch::new(1, 2));
    assert_eq!(a.newest_peer_epoch(), Epoch::new(1, 2));
}

#[test]
fn the_listener_says_nothing_before_the_dialer_proved_the_key() {
    let now = Instant::now();
    // A fresh listener has nothing to send, and a caller that sends
    // nothing or only part of a hello gets nothing.
    let mut b = listener(now, "k");
    let mut said = Vec::new();
    assert!(!b.poll_transmit(&mut said));
    let mut a = dialer(now, "another key");
    let mut hello = Vec::new();
    a.poll_transmit(&mut hello);
    assert!(
        feed(now, &mut b, &hello[..hello.len() - 1])
            .unwrap()
            .is_empty()
    );
    assert!(!b.poll_transmit(&mut said), "{said:?}");
    assert!(!b.is_established());
    // The wrong key's hello: refused, and the answer is the constant
    // refusal, the same bytes whatever key the listener holds.
    assert_eq!(
        feed(now, &mut b, &hello[hello.len() - 1..]),
        Err(LinkError::BadProof)
    );
    assert_eq!(b.error(), Some(LinkError::BadProof));
    assert_eq!(b.stats().auth_failures, 1);
    assert!(b.poll_transmit(&mut said));
    assert_eq!(records(&said), [(RecordKind::Refused, said.len())]);
    let mut other = listener(now, "yet another key");
    assert_eq!(feed(now, &mut other, &hello), Err(LinkError::BadProof));
    let mut said_other = Vec::new();
    other.poll_transmit(&mut said_other);
    assert_eq!(said, said_other);
    // The dialer learns its key was refused; neither end can send.
    assert_eq!(feed(now, &mut a, &said), Err(LinkError::KeyRefused));
    let mut wire = Vec::new();
    assert!(a.send(CHANNEL_SYNC, b"x", &mut wire).is_err());
    assert!(b.send(CHANNEL_SYNC, b"x", &mut wire).is_err());
    assert!(wire.is_empty());
    assert_eq!(b.handle_bytes(now, b"more"), Err(LinkError::Closed));
}

#[test]
fn a_listener_that_does_not_hold_the_key_cannot_answer() {
    // A dialer that reaches an impostor (or a unit with another key) gets
    // no reply it accepts: a reply made under another key fails.
    let now = Instant::now();
    let mut a = dialer(now, "k");
    let mut impostor_dialer = dialer(now, "impostor");
    let mut impostor = listener(now, "impostor");
    pump(now, &mut impostor_dialer, &mut impostor).unwrap();
    let mut reply = Vec::new();
    impostor.poll_transmit(&mut reply);
    assert_eq!(feed(now, &mut a, &reply), Err(LinkError::BadProof));
    assert!(!a.is_established());
}

#[test]
fn rotation_the_listener_accepts_the_next_key_too() {
    let now = Instant::now();
    let rotating = |now| listener(now, "old").with_next_key(Some(key("new")));
    for (dialer_key, slot) in [("old", KeySlot::Primary), ("new", KeySlot::Next)] {
        let (mut a, mut b) = (dialer(now, dialer_key), rotating(now));
        pump(now, &mut a, &mut b).unwrap();
        pump(now, &mut b, &mut a).unwrap();
        assert!(a.is_established() && b.is_established(), "{dialer_key}");
        assert_eq!(b.key_used(), Some(slot));
        let mut wire = Vec::new();
        a.send(CHANNEL_SYNC, b"rotated", &mut wire).unwrap();
        assert_eq!(feed(now, &mut b, &wire).unwrap()[0].payload, b"rotated");
    }
    // A third key is still refused, and a dialer never tries its next key:
    // it proves the primary one only.
    let (mut a, mut b) = (dialer(now, "third"), rotating(now));
    assert_eq!(pump(now, &mut a, &mut b), Err(LinkError::BadProof));
    let mut a = dialer(now, "third").with_next_key(Some(key("old")));
    let mut b = rotating(now);
    assert_eq!(pump(now, &mut a, &mut b), Err(LinkError::BadProof));
}

#[test]
fn tampered_replayed_reordered_and_dropped_records_are_refused() {
    let now = Instant::now();
    let sent = |a: &mut Link| {
        let mut one = Vec::new();
        a.send(CHANNEL_SYNC, b"one", &mut one).unwrap();
        let mut two = Vec::new();
        a.send(CHANNEL_SYNC, b"two", &mut two).unwrap();
        (one, two)
    };
    // Every single-bit flip of a record is refused, never delivered.
    let (mut a, _) = established(now);
    let (one, _) = sent(&mut a);
    for i in 0..one.len() {
        for bit in [0x01, 0x80] {
            let (mut a, mut b) = established(now);
            let (mut one, _) = sent(&mut a);
            one[i] ^= bit;
            match feed(now, &mut b, &one) {
                Err(_) => {}
                Ok(got) => {
                    // A length grown by the flip waits for more bytes; none
                    // may come out.
                    assert!(got.is_empty(), "byte {i} bit {bit:#x}: {got:?}");
                    assert!(i == 4 || i == 5, "byte {i} bit {bit:#x} accepted");
                }
            }
        }
    }
    // A body flip is an authentication failure, counted.
    let (mut a, mut b) = established(now);
    let (mut one, _) = sent(&mut a);
    let last = one.len() - 1;
    one[last] ^= 1;
    assert_eq!(feed(now, &mut b, &one), Err(LinkError::BadMac));
    assert_eq!(b.stats().auth_failures, 1);
    assert_eq!(b.poll_frame(), Err(LinkError::Closed));
    // Replay: the counter moved on.
    let (mut a, mut b) = established(now);
    let (one, _) = sent(&mut a);
    assert_eq!(feed(now, &mut b, &one).unwrap().len(), 1);
    assert_eq!(feed(now, &mut b, &one), Err(LinkError::BadMac));
    // Reordered.
    let (mut a, mut b) = established(now);
    let (one, two) = sent(&mut a);
    assert_eq!(feed(now, &mut b, &two), Err(LinkError::BadMac));
    let _ = one;
    // Dropped.
    let (mut a, mut b) = established(now);
    let (_, two) = sent(&mut a);
    assert_eq!(feed(now, &mut b, &two), Err(LinkError::BadMac));
    // A record from another connection with the same key.
    let (mut a, _) = established(now);
    let (one, _) = sent(&mut a);
    let mut c = dialer(now, "k");
    let mut d = Link::new(
        LinkRole::Responder,
        key("k"),
        Nonce([9; 32]),
        Epoch::new(1, 2),
        Epoch::default(),
        now,
    );
    pump(now, &mut c, &mut d).unwrap();
    pump(now, &mut d, &mut c).unwrap();
    assert_eq!(feed(now, &mut d, &one), Err(LinkError::BadMac));
}

#[test]
fn a_stale_epoch_is_refused() {
    let now = Instant::now();
    let (mut a, mut b) = established(now);
    let mut f = Vec::new();
    a.send(CHANNEL_SYNC, b"two", &mut f).unwrap();
    a.set_epoch(Epoch::new(0, 9));
    a.send(CHANNEL_SYNC, b"old", &mut f).unwrap();
    b.handle_bytes(now, &f).unwrap();
    assert!(b.poll_frame().unwrap().is_some());
    assert!(matches!(
        b.poll_frame(),
        Err(LinkError::StaleEpoch { term: 0, .. })
    ));
    assert_eq!(b.stats().stale_epochs, 1);
}

#[test]
fn a_peer_on_the_old_version_gets_an_error_naming_both_versions() {
    let now = Instant::now();
    let v1_hello = sync_delta::fuzzing::v1_hello();
    // A version 1 dialer reaching this listener: named, not a failed check.
    let mut b = listener(now, "k");
    let e = feed(now, &mut b, &v1_hello).unwrap_err();
    assert_eq!(
        e,
        LinkError::PeerVersion {
            ours: VERSION,
            theirs: 1
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("version 1") && text.contains("version 2"),
        "{text}"
    );
    // The old peer is answered with a record it reads as far as its
    // version byte (its header is 26 bytes): it reports version 2.
    let mut said = Vec::new();
    assert!(b.poll_transmit(&mut said));
    assert!(said.len() >= 26, "{}", said.len());
    assert_eq!(&said[..3], b"SD\x02");
    assert_eq!(records(&said), [(RecordKind::Refused, said.len())]);
    // Three bytes are enough to tell.
    let mut b = listener(now, "k");
    assert_eq!(feed(now, &mut b, &v1_hello[..2]).unwrap(), []);
    assert!(matches!(
        feed(now, &mut b, &v1_hello[2..3]),
        Err(LinkError::PeerVersion { theirs: 1, .. })
    ));
    // A dialer that hears version 1 bytes (or any other version) says so too.
    let mut a = dialer(now, "k");
    let mut other = v1_hello.clone();
    other[2] = 3;
    assert_eq!(
        feed(now, &mut a, &other),
        Err(LinkError::PeerVersion {
            ours: VERSION,
            theirs: 3
        })
    );
}

#[test]
fn large_frames_are_split_into_records_and_joined() {
    let now = Instant::now();
    let (mut a, mut b) = established(now);
    let big: Vec<u8> = (0..MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    a.send(CHANNEL_SYNC, &big, &mut wire).unwrap();
    a.send(CHANNEL_PEER, b"after", &mut wire).unwrap();
    assert_eq!(
        wire.len(),
        frame::wire_len(big.len()) + frame::wire_len(5),
        "wire_len is exact"
    );
    let recs = records(&wire);
    assert_eq!(
        recs.len(),
        (21 + big.len()).div_ceil(MAX_RECORD_BODY - 16) + 1
    );
    assert!(
        recs.iter()
            .all(|&(k, used)| k == RecordKind::Data && used <= RECORD_HEADER_LEN + MAX_RECORD_BODY)
    );
    // Fed in odd pieces.
    let mut got = Vec::new();
    for piece in wire.chunks(40_000) {
        got.extend(feed(now, &mut b, piece).unwrap());
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, big);
    assert_eq!(got[1].payload, b"after");
    // Over the limit: refused at the sender, nothing written.
    let mut wire = Vec::new();
    let too_big = vec![0u8; MAX_PAYLOAD as usize + 1];
    assert!(matches!(
        a.send(CHANNEL_SYNC, &too_big, &mut wire),
        Err(LinkError::CannotSend { .. })
    ));
    assert!(wire.is_empty());
    assert!(a.is_established());
}

#[test]
fn no_plaintext_crosses_the_wire() {
    let now = Instant::now();
    let marker = b"SIP-TRUNK-PASSWORD=hunter2-marker";
    let (mut a, mut b) = established(now);
    let mut wire = Vec::new();
    a.send(CHANNEL_SYNC, marker, &mut wire).unwrap();
    let mut long = marker.repeat(3000);
    long.extend_from_slice(marker);
    a.send(CHANNEL_PEER, &long, &mut wire).unwrap();
    assert!(!wire.windows(marker.len()).any(|w| w == marker));
    // Nor any 8-byte piece of it.
    assert!(!wire.windows(8).any(|w| marker.windows(8).any(|m| m == w)));
    let got = feed(now, &mut b, &wire).unwrap();
    assert_eq!(got[0].payload, marker);
    assert_eq!(got[1].payload, long);
}

#[test]
fn the_ephemeral_key_comes_from_the_drivers_bytes() {
    let now = Instant::now();
    let hello = |n: u8| {
        let mut a = Link::new(
            LinkRole::Initiator,
            key("k"),
            Nonce([n; 32]),
            Epoch::default(),
            Epoch::default(),
            now,
        );
        let mut out = Vec::new();
        a.poll_transmit(&mut out);
        out
    };
    // The same bytes make the same hello (nothing else is drawn); other
    // bytes another one.
    assert_eq!(hello(1), hello(1));
    assert_ne!(hello(1), hello(2));
}

#[test]
fn weak_keys_are_refused() {
    assert_eq!(PreSharedKey::new([0; 32]).unwrap_err(), KeyError::AllZero);
    assert_eq!(
        PreSharedKey::new([0x41; 32]).unwrap_err(),
        KeyError::LowEntropy { distinct: 1 }
    );
    // A short secret repeated: 15 distinct values.
    let repeated: [u8; 32] = std::array::from_fn(|i| b"abcdefghijklmno"[i % 15]);
    assert_eq!(
        PreSharedKey::new(repeated).unwrap_err(),
        KeyError::LowEntropy { distinct: 15 }
    );
    let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert_eq!(PreSharedKey::new(counting).unwrap_err(), KeyError::Sequence);
    let down: [u8; 32] = std::array::from_fn(|i| 200 - 3 * i as u8);
    assert_eq!(PreSharedKey::new(down).unwrap_err(), KeyError::Sequence);
    // 16 distinct values pass; so does a hash.
    let sixteen: [u8; 32] =
        std::array::from_fn(|i| [3, 1, 4, 15, 9, 2, 6, 5, 35, 8, 97, 93, 23, 84, 62, 64][i % 16]);
    assert!(PreSharedKey::new(sixteen).is_ok());
    assert!(PreSharedKey::new(*blake3::hash(b"x").as_bytes()).is_ok());
    assert!(KeyError::AllZero.to_string().contains("zero"));
}

#[test]
fn oversized_and_unexpected_records_are_refused_early() {
    let now = Instant::now();
    // A hello header announcing more than a handshake needs fails before
    // its body is awaited.
    let mut b = listener(now, "k");
    let header = [b'S', b'D', VERSION, 0, 0x00, 0x10];
    assert!(matches!(
        feed(now, &mut b, &header),
        Err(LinkError::Wire(WireError::TooLong { .. }))
    ));
    // Data before the handshake.
    let mut b = listener(now, "k");
    let mut f = Vec::new();
    frame::encode_record(&mut f, RecordKind::Data, &[0; 40]).unwrap();
    assert!(matches!(
        feed(now, &mut b, &f),
        Err(LinkError::UnexpectedFrame { kind: 2, .. })
    ));
    // Bad magic.
    let mut b = listener(now, "k");
    assert_eq!(
        feed(now, &mut b, b"XX"),
        Err(LinkError::Wire(WireError::BadMagic))
    );
    // Bytes fed without draining are bounded.
    let (_, mut b) = established(now);
    let chunk = vec![0u8; frame::MAX_FRAME];
    b.handle_bytes(now, &chunk).unwrap();
    b.handle_bytes(now, &chunk).unwrap();
    assert!(matches!(
        b.handle_bytes(now, &chunk),
        Err(LinkError::BufferFull { .. })
    ));
    assert_eq!(b.handle_bytes(now, b"x"), Err(LinkError::Closed));
}

#[test]
fn handshake_deadline() {
    let now = Instant::now();
    let (mut a, mut b) = (dialer(now, "k"), listener(now, "k"));
    let deadline = now + HANDSHAKE_TIMEOUT;
    assert_eq!(a.poll_timeout(), Some(deadline));
    assert_eq!(b.poll_timeout(), Some(deadline));
    // Early calls change nothing.
    a.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(a.error(), None);
    // The listener hears the hello; the dialer never hears back.
    pump(now, &mut a, &mut b).unwrap();
    a.handle_timeout(deadline);
    assert_eq!(a.error(), Some(LinkError::HandshakeTimeout));
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(a.stats().handshake_timeouts, 1);
    let mut wire = Vec::new();
    assert!(a.send(CHANNEL_SYNC, b"x", &mut wire).is_err());
    // The reply that comes late is refused; the count stays at one.
    let mut reply = Vec::new();
    b.poll_transmit(&mut reply);
    assert_eq!(a.handle_bytes(deadline, &reply), Err(LinkError::Closed));
    a.handle_timeout(deadline + HANDSHAKE_TIMEOUT);
    assert_eq!(a.stats().handshake_timeouts, 1);

    // A hello that arrives after the deadline, before any timer fired, is
    // refused the same way, and answered with nothing.
    let (mut a, mut b) = (dialer(now, "k"), listener(now, "k"));
    let late = deadline + Duration::from_secs(1);
    assert_eq!(pump(late, &mut a, &mut b), Err(LinkError::HandshakeTimeout));
    assert_eq!(b.stats().handshake_timeouts, 1);
    let mut nothing = Vec::new();
    assert!(!b.poll_transmit(&mut nothing));

    // Configurable; an established link has no deadline.
    let a = dialer(now, "k").with_handshake_timeout(Duration::from_millis(200));
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_millis(200)));
    let (mut a, mut b) = established(now);
    let much_later = now + 100 * HANDSHAKE_TIMEOUT;
    a.handle_timeout(much_later);
    b.handle_timeout(much_later);
    let mut wire = Vec::new();
    a.send(CHANNEL_PEER, b"still up", &mut wire).unwrap();
    assert_eq!(
        feed(much_later, &mut b, &wire).unwrap()[0].payload,
        b"still up"
    );
}

#[test]
fn before_the_key_is_proved_at_most_1_kib_is_buffered() {
    let now = Instant::now();
    // A listener takes 1 KiB in all from a caller that has not proved the
    // key; one byte more fails at once, counted, and answers nothing.
    let mut b = listener(now, "k");
    assert_eq!(b.receive_window(), MAX_PRE_AUTH);
    let mut partial = Vec::new();
    frame::encode_record(&mut partial, RecordKind::Hello, &[9; 100]).unwrap();
    partial[4] = 128; // announces 128 bytes, 100 came
    b.handle_bytes(now, &partial).unwrap();
    assert_eq!(b.poll_frame(), Ok(None));
    assert_eq!(b.buffered(), partial.len());
    assert_eq!(b.receive_window(), MAX_PRE_AUTH - partial.len());
    let more = vec![0u8; MAX_PRE_AUTH - partial.len() + 1];
    assert_eq!(
        b.handle_bytes(now, &more),
        Err(LinkError::PreAuthOverflow {
            len: MAX_PRE_AUTH + 1,
            max: MAX_PRE_AUTH
        })
    );
    assert_eq!(b.stats().pre_auth_overflows, 1);
    assert_eq!((b.buffered(), b.receive_window()), (0, 0));
    let mut said = Vec::new();
    assert!(!b.poll_transmit(&mut said));
    assert_eq!(b.handle_bytes(now, b"x"), Err(LinkError::Closed));

    // A data record announcing more than the bound is refused from its
    // header (the F5 attack: a claimed 64 KiB the listener would wait for).
    let mut b = listener(now, "k");
    let header = [b'S', b'D', VERSION, RecordKind::Data as u8, 0xff, 0xff];
    assert_eq!(
        feed(now, &mut b, &header),
        Err(LinkError::PreAuthOverflow {
            len: RECORD_HEADER_LEN + 65_535,
            max: MAX_PRE_AUTH
        })
    );
    assert_eq!(b.stats().pre_auth_overflows, 1);

    // The dialer is bounded the same way until the listener proved the
    // key: its reply and the first frames, arriving together, are read in
    // two steps (the window, then the rest).
    let (mut a, mut b) = (dialer(now, "k"), listener(now, "k"));
    pump(now, &mut a, &mut b).unwrap();
    assert!(b.is_established());
    let mut wire = Vec::new();
    b.poll_transmit(&mut wire);
    let reply_len = wire.len();
    let payload = vec![7u8; 5000];
    b.send(CHANNEL_SYNC, &payload, &mut wire).unwrap();
    assert!(wire.len() > MAX_PRE_AUTH);
    // All at once is more than the dialer takes yet.
    let mut eager = dialer(now, "k");
    let mut hello = Vec::new();
    eager.poll_transmit(&mut hello);
    assert!(matches!(
        eager.handle_bytes(now, &wire),
        Err(LinkError::PreAuthOverflow { .. })
    ));
    // Within the window it works.
    assert_eq!(a.receive_window(), MAX_PRE_AUTH);
    let first = a.receive_window();
    let mut got = feed(now, &mut a, &wire[..first]).unwrap();
    assert!(a.is_established());
    assert_eq!(a.buffered(), first - reply_len);
    assert_eq!(a.receive_window(), 2 * frame::MAX_FRAME - a.buffered());
    got.extend(feed(now, &mut a, &wire[first..]).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, payload);
    assert_eq!(a.stats().pre_auth_overflows, 0);
}
