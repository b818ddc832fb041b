//! `peer_handshake`: hostile bytes and record sequences at a listening and
//! at a dialling [`Link`], before and during the handshake.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::epoch::Epoch;
use crate::error::LinkError;
use crate::frame::{
    self, Link, LinkRole, MAX_PRE_AUTH, Nonce, PreSharedKey, RECORD_HEADER_LEN, RecordKind,
};

fn key(label: &[u8]) -> PreSharedKey {
    PreSharedKey::new(*blake3::hash(label).as_bytes()).expect("a random-looking key")
}

/// The script the fuzzer's bytes are read as.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, rest) = self.data.split_at(n);
        self.data = rest;
        a
    }
}

/// One step of a script, as read from the fuzzer's bytes.
enum Step {
    /// Bytes as they come.
    Raw(Vec<u8>),
    /// The genuine counterpart's next handshake message (a dialer under
    /// the key; or the reply of a listener under the key to this
    /// dialer's hello).
    Genuine,
    /// The genuine counterpart's message cut short.
    GenuinePrefix(usize),
    /// A frame from the genuine counterpart, once it is established.
    GenuineFrame(u8, Vec<u8>),
    /// Time passes, then the timer runs.
    Wait(Duration),
}

impl Step {
    fn read(s: &mut Script<'_>, now: Instant) -> Option<Step> {
        let op = s.byte()?;
        let n = usize::from(s.byte().unwrap_or(0));
        Some(match op % 10 {
            0 => Step::Raw(s.take(n).to_vec()),
            // Up to 2 KiB of one byte: more than a stranger may send.
            1 => Step::Raw(vec![s.byte().unwrap_or(0); n * 8]),
            2 => Step::Genuine,
            // A hello under a key guessed from the script.
            3 => Step::Raw(guessed_hellos(now)[n % GUESSES].clone()),
            4 => {
                // A record header with any kind and length, and some body.
                let kind = s.byte().unwrap_or(0);
                let len = [s.byte().unwrap_or(0), s.byte().unwrap_or(0)];
                let mut b = vec![b'S', b'D', frame::VERSION, kind, len[0], len[1]];
                b.extend_from_slice(s.take(n));
                Step::Raw(b)
            }
            5 => Step::Wait(Duration::from_millis(n as u64 * 50)),
            6 => Step::GenuineFrame(s.byte().unwrap_or(0), s.take(n).to_vec()),
            // Data records of another connection's session.
            7 => Step::Raw(foreign_records(now)[n % FOREIGN.len()].clone()),
            8 => {
                // Another version's bytes.
                let mut b = vec![b'S', b'D', n as u8];
                b.extend_from_slice(s.take(usize::from(s.data.first().copied().unwrap_or(0))));
                Step::Raw(b)
            }
            _ => Step::GenuinePrefix(n),
        })
    }
}

const GUESSES: usize = 16;

/// Hellos under keys that are not the link's (made once: each costs a
/// key exchange).
fn guessed_hellos(now: Instant) -> &'static [Vec<u8>] {
    static HELLOS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    HELLOS.get_or_init(|| {
        (0..GUESSES as u8)
            .map(|i| {
                let mut l = Link::new(
                    LinkRole::Initiator,
                    key(&[i, 1]),
                    Nonce([i; 32]),
                    Epoch::default(),
                    Epoch::default(),
                    now,
                );
                let mut b = Vec::new();
                l.poll_transmit(&mut b);
                b
            })
            .collect()
    })
}

/// Payload lengths of [`foreign_records`]' frames (the last ones span
/// several records).
const FOREIGN: [usize; 6] = [0, 1, 100, 1000, 70_000, 140_000];

/// Frames of another connection's session, one per length in
/// [`FOREIGN`] (made once).
fn foreign_records(now: Instant) -> &'static [Vec<u8>] {
    static RECORDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let (mut a, _) = Link::connected_pair(
            key(b"fuzz link"),
            [Nonce([3; 32]), Nonce([9; 32])],
            [Epoch::new(1, 1), Epoch::new(1, 2)],
            now,
        )
        .expect("one key");
        FOREIGN
            .iter()
            .map(|&len| {
                let mut b = Vec::new();
                a.send(frame::CHANNEL_SYNC, &vec![0x42; len], &mut b)
                    .expect("established");
                b
            })
            .collect()
    })
}

/// How the harness feeds a link: pieces of some size, within the link's
/// receive window (as the drivers read) or not.
#[derive(Clone, Copy)]
struct Feeding {
    piece: usize,
    obey_window: bool,
}

/// A link under test and what the property tracks about it.
struct Subject {
    link: Link,
    /// Everything it transmitted (its first hello excluded for a dialer).
    said: Vec<u8>,
    /// Frames the genuine counterpart sent it, in order.
    expected: VecDeque<Vec<u8>>,
    dead: bool,
}

impl Subject {
    fn new(mut link: Link) -> (Subject, Vec<u8>) {
        let mut first = Vec::new();
        link.poll_transmit(&mut first);
        let s = Subject {
            link,
            said: Vec::new(),
            expected: VecDeque::new(),
            dead: false,
        };
        (s, first)
    }

    /// Feeds `bytes` as the harness does; returns what the link sent back
    /// in answer.
    fn feed(&mut self, now: Instant, bytes: &[u8], how: Feeding) -> Vec<u8> {
        let mut answer = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() && !self.dead {
            let mut n = how.piece.min(rest.len());
            if how.obey_window {
                n = n.min(self.link.receive_window()).max(1);
            }
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            let was_established = self.link.is_established();
            let before = self.link.buffered();
            let r = self.link.handle_bytes(now, piece);
            if !was_established && before + piece.len() > MAX_PRE_AUTH {
                // More than an unauthenticated caller may send: refused,
                // typed, counted.
                assert!(
                    matches!(
                        r,
                        Err(LinkError::PreAuthOverflow { .. } | LinkError::HandshakeTimeout)
                    ),
                    "{r:?}"
                );
            }
            let r = r.and_then(|()| {
                while let Some(f) = self.link.poll_frame()? {
                    let want = self.expected.pop_front();
                    assert_eq!(
                        Some(&f.payload),
                        want.as_ref(),
                        "a frame the genuine peer did not send"
                    );
                }
                Ok(())
            });
            self.link.poll_transmit(&mut answer);
            if let Err(e) = r {
                self.closed(now, e);
            }
            self.check();
        }
        self.said.extend_from_slice(&answer);
        answer
    }

    /// An error is final and leaves nothing buffered.
    fn closed(&mut self, now: Instant, e: LinkError) {
        self.dead = true;
        assert!(
            self.link.error().is_some() || e == LinkError::Closed,
            "{e:?}"
        );
        assert_eq!(self.link.receive_window(), 0);
        assert_eq!(self.link.buffered(), 0);
        assert_eq!(self.link.handle_bytes(now, b"x"), Err(LinkError::Closed));
        assert!(matches!(self.link.poll_frame(), Err(LinkError::Closed)));
    }

    fn check(&self) {
        if !self.link.is_established() {
            assert!(self.link.buffered() <= MAX_PRE_AUTH);
            assert!(self.link.buffered() + self.link.receive_window() <= MAX_PRE_AUTH);
        }
    }

    fn wait(&mut self, now: Instant) {
        self.link.handle_timeout(now);
        if let Some(e) = self.link.error()
            && !self.dead
        {
            self.closed(now, e);
        }
        self.check();
    }
}

/// `peer_handshake`: the first byte chooses the harness (whether the
/// listener holds a next key and the genuine dialer proves it, the piece
/// size, whether pieces stay within the receive window); the rest is a
/// script of steps (raw bytes, floods of more than 1 KiB, hellos under
/// guessed keys, records of any kind and length, the genuine peer's
/// messages whole or cut, another session's records, other versions,
/// time passing), run against a listening and a dialling [`Link`].
///
/// - No panic; every failure is a [`LinkError`], final, and leaves
///   nothing buffered.
/// - Before the key is proved, a link holds at most [`MAX_PRE_AUTH`]
///   bytes, and more fed at once is refused with
///   [`LinkError::PreAuthOverflow`].
/// - The listener sends nothing that depends on the key to a caller who
///   has not proved it: a twin listener under another key, fed the same
///   bytes, says byte for byte the same until the genuine hello arrives,
///   and what they say is at most one `refused` record.
/// - A frame comes out only from the genuine peer, in the order it was
///   sent; the dialer is established only by the genuine reply.
///
/// Returns how each side ended, for the seed tests.
///
/// # Panics
/// When the property fails: that is the fuzzer's signal.
pub fn peer_handshake(now: Instant, data: &[u8]) -> [Ending; 2] {
    let Some((&flags, script)) = data.split_first() else {
        return [Ending::default(); 2];
    };
    let how = Feeding {
        piece: [1, 7, 64, 1500][usize::from(flags >> 2) & 3],
        obey_window: flags & 2 == 0,
    };
    [
        listener_side(now, flags & 1 == 1, how, script),
        dialer_side(now, how, script),
    ]
}

/// How one side of a [`peer_handshake`] run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// The handshake finished.
    pub established: bool,
    /// Frames it returned (all from the genuine peer).
    pub frames: usize,
    /// The error that closed it.
    pub error: Option<LinkError>,
    /// Its counters.
    pub stats: frame::LinkStats,
}

impl Subject {
    fn ending(&self) -> Ending {
        Ending {
            established: self.link.is_established(),
            frames: usize::try_from(self.link.stats().frames_in).unwrap_or(usize::MAX),
            error: self.link.error(),
            stats: self.link.stats(),
        }
    }
}

fn listener_side(t0: Instant, rotation: bool, how: Feeding, script: &[u8]) -> Ending {
    let responder = |k: &[u8], next: &[u8]| {
        Link::new(
            LinkRole::Responder,
            key(k),
            Nonce([5; 32]),
            Epoch::new(1, 2),
            Epoch::default(),
            t0,
        )
        .with_next_key(rotation.then(|| key(next)))
    };
    let (mut l, _) = Subject::new(responder(b"fuzz key", b"fuzz next key"));
    let (mut twin, _) = Subject::new(responder(b"twin key", b"twin next key"));
    let proves = if rotation {
        b"fuzz next key".as_slice()
    } else {
        b"fuzz key"
    };
    let (mut genuine, hello) = Subject::new(Link::new(
        LinkRole::Initiator,
        key(proves),
        Nonce([6; 32]),
        Epoch::new(1, 1),
        Epoch::default(),
        t0,
    ));
    let mut now = t0;
    let mut proved = false;
    let mut s = Script { data: script };
    while let Some(step) = Step::read(&mut s, now) {
        let bytes = match step {
            Step::Raw(b) => b,
            Step::Genuine => {
                proved = true;
                hello.clone()
            }
            Step::GenuinePrefix(n) => hello[..n % hello.len()].to_vec(),
            Step::GenuineFrame(channel, payload) => {
                let mut b = Vec::new();
                if genuine.link.send(channel, &payload, &mut b).is_ok() {
                    l.expected.push_back(payload);
                    // The twin never proved this key.
                    proved = true;
                }
                b
            }
            Step::Wait(d) => {
                now += d;
                l.wait(now);
                if !proved {
                    twin.wait(now);
                    assert_eq!(l.dead, twin.dead);
                }
                continue;
            }
        };
        let answer = l.feed(now, &bytes, how);
        if !proved {
            let twin_answer = twin.feed(now, &bytes, how);
            assert_eq!(answer, twin_answer, "the answer depends on the key");
            assert_eq!(l.link.error(), twin.link.error());
            assert!(!l.link.is_established(), "established by a stranger");
        } else if !genuine.dead {
            genuine.feed(now, &answer, how);
        }
    }
    if !proved {
        // What a stranger heard: nothing, or one constant refusal.
        assert_eq!(l.said, twin.said);
        if !l.said.is_empty() {
            let (r, used) = frame::decode_record(&l.said)
                .expect("its own record")
                .expect("whole");
            assert_eq!((r.kind, used), (RecordKind::Refused, l.said.len()));
            assert!(used <= RECORD_HEADER_LEN + frame::MAX_HANDSHAKE_BODY);
        }
    }
    l.ending()
}

fn dialer_side(t0: Instant, how: Feeding, script: &[u8]) -> Ending {
    let (mut d, hello) = Subject::new(Link::new(
        LinkRole::Initiator,
        key(b"fuzz key"),
        Nonce([7; 32]),
        Epoch::new(1, 1),
        Epoch::default(),
        t0,
    ));
    let (mut genuine, _) = Subject::new(Link::new(
        LinkRole::Responder,
        key(b"fuzz key"),
        Nonce([8; 32]),
        Epoch::new(1, 2),
        Epoch::default(),
        t0,
    ));
    let mut now = t0;
    let mut reply: Option<Vec<u8>> = None;
    let mut s = Script { data: script };
    while let Some(step) = Step::read(&mut s, now) {
        let bytes = match step {
            Step::Raw(b) => b,
            Step::Genuine | Step::GenuinePrefix(_) => {
                let r = reply
                    .get_or_insert_with(|| genuine.feed(now, &hello, how))
                    .clone();
                match step {
                    Step::GenuinePrefix(n) if !r.is_empty() => r[..n % r.len()].to_vec(),
                    _ => r,
                }
            }
            Step::GenuineFrame(channel, payload) => {
                let mut b = Vec::new();
                if genuine.link.send(channel, &payload, &mut b).is_ok() {
                    d.expected.push_back(payload);
                }
                b
            }
            Step::Wait(dt) => {
                now += dt;
                d.wait(now);
                continue;
            }
        };
        d.feed(now, &bytes, how);
        // Nothing but its first hello goes out of a dialer.
        assert!(d.said.is_empty(), "a dialer answered: {:?}", d.said);
        if d.link.is_established() {
            assert!(reply.is_some(), "established without the genuine reply");
        }
    }
    d.ending()
}

/// Seed inputs for `peer_handshake`.
#[must_use]
pub fn seeds_handshake() -> Vec<(String, Vec<u8>)> {
    let seed = |flags: u8, steps: &[&[u8]]| {
        let mut v = vec![flags];
        for s in steps {
            v.extend_from_slice(s);
        }
        v
    };
    let mut junk = vec![0u8, 200];
    junk.extend((0..200u8).map(|i| i.wrapping_mul(37)));
    vec![
        // The genuine handshake, then frames both ways.
        (
            "genuine_then_frames".into(),
            seed(
                0,
                &[
                    &[2, 0],
                    &[6, 5, 1, b'h', b'e', b'l', b'l', b'o'],
                    &[6, 0, 0],
                ],
            ),
        ),
        // The same during a key rotation, the dialer proving the next key,
        // in pieces of 7 bytes.
        (
            "rotation_next_key".into(),
            seed(1 | 4, &[&[2, 0], &[6, 3, 2, 1, 2, 3]]),
        ),
        // A hello under a guessed key, then the genuine one.
        (
            "wrong_key_then_genuine".into(),
            seed(8, &[&[3, 9], &[2, 0]]),
        ),
        // F5: a data record claiming 64 KiB before the key, its body.
        (
            "claimed_64k".into(),
            seed(12, &[&[4, 200, 2, 0xff, 0xff], &[1, 255, 0xaa]]),
        ),
        // More than 1 KiB at once, the driver ignoring the window.
        ("flood_past_window".into(), seed(2 | 12, &[&[1, 200, 0x5a]])),
        // A hello cut short, then silence past the deadline.
        (
            "truncated_then_timeout".into(),
            seed(4, &[&[9, 30], &[5, 120]]),
        ),
        // A version 1 peer, and a reply where a hello belongs.
        ("other_version".into(), seed(0, &[&[8, 1, 20]])),
        (
            "reply_kind_first".into(),
            seed(4, &[&[4, 48, 1, 48, 0], &[2, 0]]),
        ),
        // Another session's data record before and after the handshake.
        (
            "foreign_data".into(),
            seed(8, &[&[7, 40], &[2, 0], &[7, 40]]),
        ),
        // Junk.
        ("junk".into(), seed(12, &[&junk])),
    ]
}
