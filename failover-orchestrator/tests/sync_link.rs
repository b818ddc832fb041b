//! `pair::SyncLink` with two `SyncWorker`s on `MemStore` trees in virtual
//! time: a source that only listens and a replica that only dials, joined
//! by in-memory connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{
    CloseReason, ConnId, LinkConfig, LinkFailure, SyncConfig, SyncLink, SyncLinkEvent,
    SyncLinkOutput, SyncReport, SyncRole, SyncWorker,
};
use sync_delta::frame::{Nonce, PreSharedKey};
use sync_delta::mem::MemStore;

const SOURCE: usize = 0;
const REPLICA: usize = 1;
/// The replica's address, as the source's listener sees it.
const REPLICA_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
/// Another host.
const STRANGER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));

struct End {
    link: SyncLink,
    worker: SyncWorker,
    store: MemStore,
    events: Vec<(Duration, SyncLinkEvent)>,
    dials: Vec<Duration>,
    closes: Vec<CloseReason>,
    /// The worker's round progress after each order it carried out.
    progress: Vec<Option<sync_delta::RoundProgress>>,
}

struct World {
    t0: Instant,
    now: Instant,
    ends: [End; 2],
    /// (end, conn) → (other end, its conn).
    conns: HashMap<(usize, ConnId), (usize, ConnId)>,
    /// Whether the source accepts connections.
    listening: bool,
    nonces: u8,
}

fn key(secret: &[u8]) -> PreSharedKey {
    PreSharedKey::new(*blake3::hash(secret).as_bytes()).unwrap()
}

fn end(
    secret: &[u8],
    next: Option<&[u8]>,
    role: SyncRole,
    dials: bool,
    now: Instant,
    store: MemStore,
) -> End {
    let mut link = LinkConfig::new(key(secret), dials);
    link.next_key = next.map(key);
    if !dials {
        // The listening source knows its replica's address.
        link.peer = Some(REPLICA_IP);
    }
    End {
        link: SyncLink::new(link, role, sync_delta::Epoch::default(), now),
        worker: SyncWorker::new(SyncConfig {
            interval: Duration::from_secs(3600),
            ..SyncConfig::default()
        }),
        store,
        events: Vec::new(),
        dials: Vec::new(),
        closes: Vec::new(),
        progress: Vec::new(),
    }
}

impl World {
    /// A source tree of `files` files of `size` bytes each.
    fn new(replica_secret: &[u8], files: usize, size: usize) -> World {
        World::with_keys((b"the key", None), replica_secret, files, size)
    }

    /// The source listens with `source_keys` (its key and a next key),
    /// the replica dials with `replica_secret`.
    fn with_keys(
        source_keys: (&[u8], Option<&[u8]>),
        replica_secret: &[u8],
        files: usize,
        size: usize,
    ) -> World {
        let now = Instant::now();
        let mut src = MemStore::new();
        for i in 0..files {
            let data: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            src.put_file(&format!("voice/msg{i}.wav"), &data, 0o640, 1);
        }
        src.sync_all();
        let source = end(
            source_keys.0,
            source_keys.1,
            SyncRole::Source,
            false,
            now,
            src,
        );
        let replica = end(
            replica_secret,
            None,
            SyncRole::Replica { periodic: true },
            true,
            now,
            MemStore::new(),
        );
        World {
            t0: now,
            now,
            ends: [source, replica],
            conns: HashMap::new(),
            listening: true,
            nonces: 0,
        }
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) + (self.now - self.t0)
    }

    fn nonce(&mut self) -> Nonce {
        self.nonces = self.nonces.wrapping_add(1);
        Nonce([self.nonces; 32])
    }

    /// Carries out every output of both ends and their workers until
    /// nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                moved |= self.drain(i);
            }
            if !moved {
                break;
            }
        }
    }

    fn drain(&mut self, i: usize) -> bool {
        let now = self.now;
        let wall = self.wall();
        let mut moved = false;
        let mut bytes_out = Vec::new();
        loop {
            let e = &mut self.ends[i];
            match e.link.poll_output() {
                SyncLinkOutput::Wait(_) => break,
                SyncLinkOutput::Dial(id) => {
                    e.dials.push(now - self.t0);
                    if self.listening {
                        let (na, nb) = (self.nonce(), self.nonce());
                        if let Some(theirs) =
                            self.ends[1 - i].link.handle_accepted(now, na, REPLICA_IP)
                        {
                            self.conns.insert((i, id), (1 - i, theirs));
                            self.conns.insert((1 - i, theirs), (i, id));
                        }
                        self.ends[i].link.handle_dialed(now, id, nb);
                    } else {
                        e.link.handle_dial_failed(now, id);
                    }
                }
                SyncLinkOutput::Send { conn, bytes } => bytes_out.push((conn, bytes)),
                SyncLinkOutput::Close { conn, reason } => {
                    e.closes.push(reason);
                    // A stream delivers what was written before the close
                    // (a refused handshake's answer).
                    let (mine, rest) = std::mem::take(&mut bytes_out)
                        .into_iter()
                        .partition(|(c, _)| *c == conn);
                    bytes_out = rest;
                    let mine: Vec<(ConnId, Vec<u8>)> = mine;
                    if let Some((j, theirs)) = self.conns.get(&(i, conn)).copied() {
                        for (_, bytes) in mine {
                            self.ends[j].link.handle_link_bytes(now, theirs, &bytes);
                        }
                    }
                    let e = &mut self.ends[i];
                    e.link.handle_link_closed(now, conn);
                    if let Some((j, theirs)) = self.conns.remove(&(i, conn)) {
                        self.conns.remove(&(j, theirs));
                        self.ends[j].link.handle_link_closed(now, theirs);
                    }
                }
                SyncLinkOutput::Sync(order) => {
                    e.worker.handle_order(now, wall, order, &mut e.store);
                    e.progress.push(e.worker.round_progress());
                }
                SyncLinkOutput::Event(ev) => e.events.push((now - self.t0, ev)),
            }
            moved = true;
        }
        let e = &mut self.ends[i];
        while let Some(m) = e.worker.poll_transmit(now, &mut e.store) {
            e.link.handle_sync_message(now, &m);
            e.worker.recycle(m.message);
            moved = true;
        }
        while let Some(r) = e.worker.poll_report() {
            e.link.handle_sync_report(now, r);
            moved = true;
        }
        for (conn, bytes) in bytes_out {
            if let Some((j, theirs)) = self.conns.get(&(i, conn)).copied() {
                self.ends[j].link.handle_link_bytes(now, theirs, &bytes);
            }
        }
        moved
    }

    /// Jumps to the next deadline of either end and runs it.
    fn step(&mut self) {
        self.settle();
        let next = self
            .ends
            .iter()
            .flat_map(|e| [e.link.poll_timeout(), e.worker.poll_timeout()])
            .flatten()
            .min()
            .expect("a deadline");
        self.now = self.now.max(next);
        let now = self.now;
        for e in &mut self.ends {
            e.link.handle_timeout(now);
            if e.worker.poll_timeout().is_some_and(|t| t <= now) {
                e.worker.handle_timeout(now, &mut e.store);
            }
        }
        self.settle();
    }

    /// Steps until `f` finds an event of end `i` (at most a virtual hour).
    #[track_caller]
    fn until<T>(&mut self, i: usize, mut f: impl FnMut(&SyncLinkEvent) -> Option<T>) -> T {
        let from = self.ends[i].events.len();
        self.settle();
        let limit = self.now + Duration::from_secs(3600);
        loop {
            if let Some(t) = self.ends[i].events[from..].iter().find_map(|(_, e)| f(e)) {
                return t;
            }
            assert!(self.now < limit, "nothing found within an hour");
            self.step();
        }
    }

    /// Steps until the replica has finished a round.
    fn round_done(&mut self) {
        self.until(REPLICA, |e| {
            matches!(e, SyncLinkEvent::Sync(SyncReport::RoundDone(_))).then_some(())
        });
    }

    /// The replica's worker reports its session out of step, which closes
    /// the link; steps until the replica has seen it go down.
    fn out_of_step(&mut self) {
        let now = self.now;
        self.ends[REPLICA].link.handle_sync_report(
            now,
            SyncReport::RoundFailed {
                why: "replica session: out of step".into(),
                reset: true,
            },
        );
        self.until(REPLICA, |e| (*e == SyncLinkEvent::LinkDown).then_some(()));
    }

    fn has(&self, i: usize, f: impl Fn(&SyncLinkEvent) -> bool) -> bool {
        self.ends[i].events.iter().any(|(_, e)| f(e))
    }
}

/// Whether the link's outputs, all taken up to its wait, write anything.
fn sends(link: &mut SyncLink) -> bool {
    let outputs: Vec<SyncLinkOutput> = std::iter::from_fn(|| match link.poll_output() {
        SyncLinkOutput::Wait(_) => None,
        o => Some(o),
    })
    .collect();
    outputs
        .iter()
        .any(|o| matches!(o, SyncLinkOutput::Send { .. }))
}

#[test]
fn the_replica_pulls_when_the_link_comes_up_and_counts_the_bytes() {
    let mut w = World::new(b"the key", 3, 20_000);
    let summary = w.until(REPLICA, |e| match e {
        SyncLinkEvent::Sync(SyncReport::RoundDone(s)) => Some(*s),
        _ => None,
    });
    assert_eq!(summary.generation, 1);
    assert_eq!(summary.fetched, 3);
    // Every file's content came over, framed.
    assert!(summary.received > 60_000, "{summary:?}");
    assert!(summary.received < 70_000, "{summary:?}");
    assert!(w.has(REPLICA, |e| *e == SyncLinkEvent::LinkUp));
    assert!(w.has(SOURCE, |e| *e == SyncLinkEvent::LinkUp));
    // The source hears what its replica holds.
    let st = w.until(SOURCE, |e| match e {
        SyncLinkEvent::Sync(SyncReport::Status(st)) => Some(*st),
        _ => None,
    });
    assert_eq!(st.number, 1);
    assert!(st.taken_at.is_some());

    // Opaque bytes beside the sync channel, both ways.
    let now = w.now;
    assert!(w.ends[REPLICA].link.send_peer_message(now, b"hello"));
    let got = w.until(SOURCE, |e| match e {
        SyncLinkEvent::PeerMessage(m) => Some(m.clone()),
        _ => None,
    });
    assert_eq!(got, b"hello");
    assert!(w.ends[SOURCE].link.send_peer_message(now, &[0, 255]));
    let got = w.until(REPLICA, |e| match e {
        SyncLinkEvent::PeerMessage(m) => Some(m.clone()),
        _ => None,
    });
    assert_eq!(got, [0, 255]);
    assert_eq!(w.ends[SOURCE].link.stats().unknown_channel, 0);
}

#[test]
fn the_replica_worker_shows_its_round_progress() {
    let mut w = World::new(b"the key", 3, 20_000);
    w.until(REPLICA, |e| match e {
        SyncLinkEvent::Sync(SyncReport::RoundDone(s)) => Some(*s),
        _ => None,
    });
    let seen: Vec<sync_delta::RoundProgress> =
        w.ends[REPLICA].progress.iter().flatten().copied().collect();
    // The round's own figures: three files of 20,000 bytes, written as
    // their data arrived.
    assert!(
        seen.iter()
            .all(|p| p.files_total == 0 || p.files_total == 3),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p.files_total == 3 && p.bytes_done < 60_000),
        "{seen:?}"
    );
    let last = seen.last().expect("progress during the round");
    assert_eq!((last.bytes_total, last.bytes_done), (60_000, 60_000));
    // None once it committed, and never on the source.
    assert_eq!(w.ends[REPLICA].worker.round_progress(), None);
    assert_eq!(w.ends[REPLICA].progress.last(), Some(&None));
    assert!(w.ends[SOURCE].progress.iter().all(Option::is_none));
}

#[test]
fn the_source_settles_at_what_its_replica_confirmed_with_when_it_took_it() {
    let mut w = World::new(b"the key", 2, 1000);
    let confirmed = w.until(SOURCE, |e| match e {
        SyncLinkEvent::Sync(SyncReport::Status(st)) => Some(*st),
        _ => None,
    });
    let now = w.now;
    let id = w.ends[SOURCE].link.settle(now);
    let got = w.until(SOURCE, |e| match e {
        SyncLinkEvent::Sync(SyncReport::Done { id: d, result }) if *d == id => Some(result.clone()),
        _ => None,
    });
    let st = got.expect("a source settles");
    assert_eq!(st.number, 1);
    assert_eq!(st.taken_at, confirmed.taken_at);
    assert!(st.taken_at.is_some());
}

#[test]
fn a_refused_round_is_reported_once_and_answers_a_round_asked_for() {
    let mut w = World::new(b"the key", 10, 100);
    w.round_done();
    let before = w.ends[REPLICA].store.tree();
    for i in 0..8 {
        w.ends[SOURCE]
            .store
            .remove_tree(&format!("voice/msg{i}.wav"));
    }
    w.ends[SOURCE].store.sync_all();
    let now = w.now;
    let id = w.ends[REPLICA].link.round_now(now);
    let answer = w.until(REPLICA, |e| match e {
        SyncLinkEvent::Sync(SyncReport::Done { id: d, result }) if *d == id => Some(result.clone()),
        _ => None,
    });
    let why = answer.expect_err("a refused round is no round done");
    assert!(why.contains("refused"), "{why}");
    assert!(w.has(REPLICA, |e| matches!(
        e,
        SyncLinkEvent::Sync(SyncReport::Refused(_))
    )));
    assert!(!w.has(REPLICA, |e| matches!(
        e,
        SyncLinkEvent::Sync(SyncReport::RoundFailed { .. })
    )));
    // Nothing was changed, and the link stays up.
    assert_eq!(w.ends[REPLICA].store.tree(), before);
    assert!(w.ends[REPLICA].link.link_up());
}

#[test]
fn a_session_out_of_step_closes_the_link_which_starts_over() {
    let mut w = World::new(b"the key", 1, 100);
    w.round_done();
    w.out_of_step();
    assert_eq!(w.ends[REPLICA].closes, [CloseReason::SyncFailed]);
    // The dialling end comes back after its first backoff.
    let ups = |w: &World| {
        w.ends[REPLICA]
            .events
            .iter()
            .filter(|(_, e)| *e == SyncLinkEvent::LinkUp)
            .count()
    };
    assert_eq!(ups(&w), 1);
    w.until(REPLICA, |e| (*e == SyncLinkEvent::LinkUp).then_some(()));
    assert_eq!(ups(&w), 2);
    let dials = &w.ends[REPLICA].dials;
    assert_eq!(dials[1] - dials[0], Duration::from_millis(200), "{dials:?}");
}

#[test]
fn a_wrong_key_is_named_and_redialled_with_a_growing_backoff() {
    let mut w = World::new(b"another key", 1, 100);
    let why = w.until(REPLICA, |e| match e {
        SyncLinkEvent::LinkFailed { why, .. } => Some(*why),
        _ => None,
    });
    assert_eq!(why, LinkFailure::WrongKey);
    // The listener found the dialer's proof wrong (and said so, which is
    // how the dialer knows).
    let theirs = w.until(SOURCE, |e| match e {
        SyncLinkEvent::LinkFailed { why, .. } => Some(*why),
        _ => None,
    });
    assert_eq!(theirs, LinkFailure::WrongKey);
    while w.ends[REPLICA].dials.len() < 7 {
        w.step();
    }
    let d = &w.ends[REPLICA].dials;
    let gaps: Vec<u64> = d
        .windows(2)
        .map(|p| u64::try_from((p[1] - p[0]).as_millis()).unwrap())
        .collect();
    assert_eq!(gaps, [200, 400, 800, 1600, 2000, 2000]);
    assert!(!w.has(REPLICA, |e| *e == SyncLinkEvent::LinkUp));
    assert!(!w.has(SOURCE, |e| *e == SyncLinkEvent::LinkUp));
}

#[test]
fn a_failed_dial_is_reported_and_tried_again() {
    let mut w = World::new(b"the key", 1, 100);
    w.listening = false;
    let why = w.until(REPLICA, |e| match e {
        SyncLinkEvent::LinkFailed { why, .. } => Some(*why),
        _ => None,
    });
    assert_eq!(why, LinkFailure::DialFailed);
    w.listening = true;
    w.until(REPLICA, |e| (*e == SyncLinkEvent::LinkUp).then_some(()));
    let d = &w.ends[REPLICA].dials;
    assert_eq!(d[1] - d[0], Duration::from_millis(200));
}

#[test]
fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let mut w = World::new(b"the key", 1, 100);
    w.listening = false;
    let now = w.now;
    let nonce = w.nonce();
    let silent = w.ends[SOURCE]
        .link
        .handle_accepted(now, nonce, STRANGER_IP)
        .expect("room for a handshake");
    let (at, why) = loop {
        w.step();
        if let Some((at, SyncLinkEvent::LinkFailed { conn, why, .. })) =
            w.ends[SOURCE].events.last()
        {
            assert_eq!(*conn, silent);
            break (*at, *why);
        }
    };
    assert_eq!(why, LinkFailure::HandshakeTimeout);
    assert_eq!(at, sync_delta::frame::HANDSHAKE_TIMEOUT);
    assert_eq!(w.ends[SOURCE].closes, [CloseReason::HandshakeTimeout]);
}

#[test]
fn during_a_rotation_the_listener_accepts_either_key() {
    // The listener holds the old key and the next one: a dialer still on
    // the old key and one already on the next both come up and sync.
    for dialer in [&b"old key"[..], b"next key"] {
        let mut w = World::with_keys((b"old key", Some(b"next key")), dialer, 2, 1000);
        let summary = w.until(REPLICA, |e| match e {
            SyncLinkEvent::Sync(SyncReport::RoundDone(s)) => Some(*s),
            _ => None,
        });
        assert_eq!(summary.generation, 1);
        assert!(!w.has(SOURCE, |e| matches!(e, SyncLinkEvent::LinkFailed { .. })));
    }
    // After the rotation (the next key is the key, the old one gone), the
    // old key is refused.
    let mut w = World::with_keys((b"next key", None), b"old key", 2, 1000);
    let why = w.until(SOURCE, |e| match e {
        SyncLinkEvent::LinkFailed { why, .. } => Some(*why),
        _ => None,
    });
    assert_eq!(why, LinkFailure::WrongKey);
}

#[test]
fn keys_rotate_on_running_ends_without_a_restart() {
    // Both ends on the old key, linked and synced once.
    let mut w = World::with_keys((b"old key", None), b"old key", 2, 1000);
    let round = |e: &SyncLinkEvent| match e {
        SyncLinkEvent::Sync(SyncReport::RoundDone(s)) => Some(*s),
        _ => None,
    };
    assert_eq!(w.until(REPLICA, round).generation, 1);
    // The rotation, as a driver's reload applies it: the listener
    // accepts either key, then the dialler moves to the next one. The
    // link that is up stays up.
    w.ends[SOURCE]
        .link
        .set_link_keys(key(b"next key"), Some(key(b"old key")));
    w.ends[REPLICA].link.set_link_keys(key(b"next key"), None);
    w.settle();
    assert!(w.ends[REPLICA].link.link_up() && w.ends[SOURCE].link.link_up());
    // The next connection proves the next key: drop this one.
    let now = w.now;
    let conns: Vec<(usize, ConnId)> = w.conns.keys().copied().collect();
    w.conns.clear();
    for (i, conn) in conns {
        w.ends[i].link.handle_link_closed(now, conn);
    }
    let from = w.ends[REPLICA].events.len();
    w.until(REPLICA, |e| {
        matches!(e, SyncLinkEvent::LinkUp).then_some(())
    });
    // The old key retired on the listener too: the link comes up again,
    // with no failed handshake on the way.
    w.ends[SOURCE].link.set_link_keys(key(b"next key"), None);
    let now = w.now;
    let conns: Vec<(usize, ConnId)> = w.conns.keys().copied().collect();
    w.conns.clear();
    for (i, conn) in conns {
        w.ends[i].link.handle_link_closed(now, conn);
    }
    let ups = |w: &World| {
        w.ends[REPLICA].events[from..]
            .iter()
            .filter(|(_, e)| matches!(e, SyncLinkEvent::LinkUp))
            .count()
    };
    while ups(&w) < 2 {
        w.step();
    }
    let failed = |e: &SyncLinkEvent| matches!(e, SyncLinkEvent::LinkFailed { .. });
    assert!(
        !w.has(REPLICA, failed) && !w.has(SOURCE, failed),
        "a handshake failed during the rotation"
    );
    // And an end still on the old key alone is refused now.
    w.ends[REPLICA].link.set_link_keys(key(b"old key"), None);
    let now = w.now;
    let conns: Vec<(usize, ConnId)> = w.conns.keys().copied().collect();
    w.conns.clear();
    for (i, conn) in conns {
        w.ends[i].link.handle_link_closed(now, conn);
    }
    let why = w.until(REPLICA, |e| match e {
        SyncLinkEvent::LinkFailed { why, .. } => Some(*why),
        _ => None,
    });
    assert_eq!(why, LinkFailure::WrongKey);
}

#[test]
fn a_peer_on_the_old_frame_version_is_named_at_both_ends() {
    let now = Instant::now();
    // A version 1 dialer reaching this listener.
    let mut listener = SyncLink::new(
        LinkConfig::new(key(b"k"), false),
        SyncRole::Source,
        sync_delta::Epoch::default(),
        now,
    );
    let drain = |l: &mut SyncLink| {
        let mut out = Vec::new();
        loop {
            match l.poll_output() {
                SyncLinkOutput::Wait(_) => return out,
                o => out.push(o),
            }
        }
    };
    drain(&mut listener);
    let conn = listener
        .handle_accepted(now, Nonce([1; 32]), STRANGER_IP)
        .unwrap();
    // A version 1 hello is 78 bytes after "SD", version 1; the version
    // byte is all this end reads of it.
    let mut v1_hello = b"SD\x01".to_vec();
    v1_hello.resize(78, 0);
    listener.handle_link_bytes(now, conn, &v1_hello);
    let out = drain(&mut listener);
    // It tells the old peer in bytes that peer reads as "version 2", then
    // closes, and reports both versions.
    let sent = out.iter().position(|o| {
        matches!(o, SyncLinkOutput::Send { bytes, .. } if bytes.starts_with(b"SD\x02") && bytes.len() >= 26)
    });
    let closed = out.iter().position(|o| {
        matches!(
            o,
            SyncLinkOutput::Close {
                reason: CloseReason::HandshakeFailed,
                ..
            }
        )
    });
    assert!(sent.is_some() && sent < closed, "{out:?}");
    let why = out
        .iter()
        .find_map(|o| match o {
            SyncLinkOutput::Event(SyncLinkEvent::LinkFailed { why, .. }) => Some(*why),
            _ => None,
        })
        .expect("reported");
    assert_eq!(why, LinkFailure::PeerVersion { theirs: 1 });
    let text = why.to_string();
    assert!(
        text.contains("version 1") && text.contains("version 2"),
        "{text}"
    );

    // This version dialing a version 1 listener: that one closes without
    // a word on a hello it cannot read; the text names both versions.
    let mut dialer = SyncLink::new(
        LinkConfig::new(key(b"k"), true),
        SyncRole::Replica { periodic: true },
        sync_delta::Epoch::default(),
        now,
    );
    drain(&mut dialer);
    dialer.handle_timeout(now);
    let id = drain(&mut dialer)
        .iter()
        .find_map(|o| match o {
            SyncLinkOutput::Dial(id) => Some(*id),
            _ => None,
        })
        .expect("dials");
    dialer.handle_dialed(now, id, Nonce([2; 32]));
    drain(&mut dialer);
    dialer.handle_link_closed(now, id);
    let why = drain(&mut dialer)
        .iter()
        .find_map(|o| match o {
            SyncLinkOutput::Event(SyncLinkEvent::LinkFailed { why, .. }) => Some(*why),
            _ => None,
        })
        .expect("reported");
    assert_eq!(why, LinkFailure::ClosedInHandshake);
    let text = why.to_string();
    assert!(
        text.contains("version 1") && text.contains("version 2"),
        "{text}"
    );
}

/// The attacker's host in the flood test.
const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));

impl World {
    /// Moves virtual time on by `d`, running every deadline due.
    fn advance(&mut self, d: Duration) {
        self.settle();
        self.now += d;
        let now = self.now;
        for e in &mut self.ends {
            e.link.handle_timeout(now);
            if e.worker.poll_timeout().is_some_and(|t| t <= now) {
                e.worker.handle_timeout(now, &mut e.store);
            }
        }
        self.settle();
    }

    /// A stranger's connection to the source from `from`, with what it
    /// sends at once (variant `k` of a few hostile openings). Returns
    /// whether the source let it wait for its handshake.
    fn stranger(&mut self, from: IpAddr, k: usize) -> bool {
        let now = self.now;
        let nonce = self.nonce();
        let Some(conn) = self.ends[SOURCE].link.handle_accepted(now, nonce, from) else {
            return false;
        };
        let bytes: Vec<u8> = match k % 5 {
            // Silent: waits for the handshake deadline.
            0 => Vec::new(),
            // A data record announcing 64 KiB (F5's claimed hello).
            1 => {
                let mut b = vec![b'S', b'D', sync_delta::frame::VERSION, 2, 0xff, 0xff];
                b.resize(4000, 0xaa);
                b
            }
            // A hello under another key.
            2 => {
                let mut l = sync_delta::frame::Link::new(
                    sync_delta::frame::LinkRole::Initiator,
                    key(b"a guess"),
                    Nonce([9; 32]),
                    sync_delta::Epoch::default(),
                    sync_delta::Epoch::default(),
                    now,
                );
                let mut b = Vec::new();
                l.poll_transmit(&mut b);
                b
            }
            // A hello header and part of its body: waits, holding 86 bytes.
            3 => {
                let mut b = vec![b'S', b'D', sync_delta::frame::VERSION, 0, 48, 0];
                b.resize(86, 1);
                b
            }
            // Two kilobytes of noise.
            _ => vec![0x5a; 2048],
        };
        if !bytes.is_empty() {
            self.ends[SOURCE].link.handle_link_bytes(now, conn, &bytes);
        }
        true
    }

    /// The source's handshake limits hold and no waiting connection holds
    /// more than the pre-authentication bound.
    #[track_caller]
    fn check_limits(&self) {
        let pending: Vec<_> = self.ends[SOURCE].link.pending_handshakes().collect();
        let accepted = pending.iter().filter(|p| p.from.is_some()).count();
        assert!(accepted <= 16, "{pending:?}");
        for p in &pending {
            let same = pending.iter().filter(|q| q.from == p.from).count();
            assert!(p.from.is_none() || same <= 8, "{pending:?}");
            assert!(p.buffered <= sync_delta::frame::MAX_PRE_AUTH, "{p:?}");
        }
        let strangers = pending
            .iter()
            .filter(|p| p.from.is_some_and(|a| a != REPLICA_IP))
            .count();
        assert!(strangers <= 15, "the peer's slot was taken: {pending:?}");
    }
}

#[test]
fn a_handshake_flood_stays_within_the_limits_and_the_peer_still_gets_through() {
    let mut w = World::new(b"the key", 3, 20_000);
    // Before the replica dials, strangers fill every slot they may: 8
    // from one host, then one each from others up to 15 in all. The 16th
    // is the configured peer's.
    for k in 0..20 {
        w.stranger(ATTACKER_IP, k * 5);
        w.check_limits();
    }
    let from_attacker = |w: &World| {
        w.ends[SOURCE]
            .link
            .pending_handshakes()
            .filter(|p| p.from == Some(ATTACKER_IP))
            .count()
    };
    assert_eq!(from_attacker(&w), 8);
    for i in 0..10u8 {
        w.stranger(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), 0);
        w.check_limits();
    }
    assert_eq!(w.ends[SOURCE].link.pending_handshakes().count(), 15);
    let stats = w.ends[SOURCE].link.link_stats();
    assert_eq!(stats.over_limit, 12 + 3);
    assert_eq!(stats.turned_away, stats.over_limit);
    // The replica dials and comes up in the kept slot, and syncs.
    let summary = w.until(REPLICA, |e| match e {
        SyncLinkEvent::Sync(SyncReport::RoundDone(s)) => Some(*s),
        _ => None,
    });
    assert_eq!(summary.generation, 1);

    // 600 connections from one host over six seconds, of every kind,
    // while the link is cut once (the replica redials through the flood)
    // and a round runs.
    let t_flood = w.now;
    let downs = |w: &World| {
        w.ends[REPLICA]
            .events
            .iter()
            .filter(|(_, e)| *e == SyncLinkEvent::LinkDown)
            .count()
    };
    for k in 0..600 {
        w.stranger(ATTACKER_IP, k);
        w.check_limits();
        if k == 200 {
            let (&(i, mine), &(j, theirs)) = w.conns.iter().next().expect("the link");
            w.conns.clear();
            w.ends[i].link.handle_link_closed(w.now, mine);
            w.ends[j].link.handle_link_closed(w.now, theirs);
        }
        w.advance(Duration::from_millis(10));
    }
    assert_eq!(downs(&w), 1, "the cut, nothing else");
    assert!(w.ends[REPLICA].link.link_up() && w.ends[SOURCE].link.link_up());
    w.ends[SOURCE]
        .store
        .put_file("voice/new.wav", &[3; 5000], 0o640, 2);
    w.ends[SOURCE].store.sync_all();
    let now = w.now;
    let id = w.ends[REPLICA].link.round_now(now);
    let done = w.until(REPLICA, |e| match e {
        SyncLinkEvent::Sync(SyncReport::Done { id: d, result }) if *d == id => Some(result.clone()),
        _ => None,
    });
    assert!(done.is_ok(), "{done:?}");
    assert!(
        w.ends[REPLICA].store.view() == w.ends[SOURCE].store.view(),
        "the replica holds the source's tree"
    );

    // Every stranger's connection ended without a byte buffered beyond
    // the bound, and the failures were reported at most once a second per
    // address; the rest in summaries that add up.
    let stats = w.ends[SOURCE].link.link_stats();
    assert!(stats.over_limit > 300, "{stats:?}");
    let events = &w.ends[SOURCE].events;
    let reported: Vec<Duration> = events
        .iter()
        .filter_map(|(at, e)| match e {
            SyncLinkEvent::LinkFailed {
                from: Some(ATTACKER_IP),
                ..
            } => Some(*at),
            _ => None,
        })
        .collect();
    for pair in reported.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(1), "{reported:?}");
    }
    let flood_s = (w.now - t_flood).as_secs() + 1;
    assert!(reported.len() as u64 <= flood_s + 1, "{reported:?}");
    let summarised: u64 = events
        .iter()
        .filter_map(|(_, e)| match e {
            SyncLinkEvent::LinkFailuresSuppressed { count, .. } => Some(*count),
            _ => None,
        })
        .sum();
    // Let the last summary go out.
    w.advance(Duration::from_secs(6));
    let summarised_after: u64 = w.ends[SOURCE]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            SyncLinkEvent::LinkFailuresSuppressed { count, .. } => Some(*count),
            _ => None,
        })
        .sum();
    assert!(summarised <= summarised_after);
    let stats = w.ends[SOURCE].link.link_stats();
    assert_eq!(summarised_after, stats.failures_suppressed);
    let failures = w.ends[SOURCE]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SyncLinkEvent::LinkFailed { .. }))
        .count() as u64;
    // Every stranger's connection failed (turned away, refused or timed
    // out) and was either reported or summarised.
    assert_eq!(failures + stats.failures_suppressed, 630);
    assert_eq!(w.ends[SOURCE].link.pending_handshakes().count(), 0);
}

/// A message the worker made for a link that has since gone (it ran behind
/// the engine, on a thread of its own) never reaches the next link: a
/// source's answer to the last peer's request would read as the answer to
/// the new peer's. What the worker makes once told of the new link goes.
#[test]
fn a_message_made_for_a_link_that_has_gone_is_not_sent_on_the_next() {
    use failover_orchestrator::pair::SyncOrder;
    let mut w = World::new(b"the key", 1, 100);
    w.round_done();
    let now = w.now;
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // The source's worker told to run a round: the request it makes.
    let ask = |e: &mut End, now, id| {
        e.worker
            .handle_order(now, wall, SyncOrder::RoundNow { id }, &mut e.store);
        e.worker
            .poll_transmit(now, &mut e.store)
            .expect("the source asks its replica for a round")
    };
    let stale = ask(&mut w.ends[SOURCE], now, 99);
    // The link goes down and comes back before the message is handed on.
    w.out_of_step();
    w.until(SOURCE, |e| (*e == SyncLinkEvent::LinkUp).then_some(()));
    let now = w.now;
    let e = &mut w.ends[SOURCE];
    assert_eq!(e.link.stats().stale_sync_messages, 0);
    e.link.handle_sync_message(now, &stale);
    assert_eq!(e.link.stats().stale_sync_messages, 1);
    assert!(!sends(&mut e.link), "the stale message went out");
    // Made again now, on the new link: it goes.
    let fresh = ask(e, now, 100);
    assert_eq!(fresh.message, stale.message);
    e.link.handle_sync_message(now, &fresh);
    assert_eq!(e.link.stats().stale_sync_messages, 1);
    assert!(sends(&mut e.link), "the fresh message did not go out");
}
