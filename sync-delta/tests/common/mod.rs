//! Test harness: a source and a replica over in-memory stores, their
//! messages carried over a real authenticated `Link` pair.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};
use sync_delta::Message;
use sync_delta::frame::{CHANNEL_SYNC, Link, Nonce, PreSharedKey};
use sync_delta::mem::MemStore;
use sync_delta::{
    Epoch, Replica, ReplicaConfig, ReplicaEvent, SessionError, Source, SourceConfig, Storage,
};

pub use sync_delta::mem::View as Norm;

pub fn norm(s: &MemStore) -> BTreeMap<String, Norm> {
    s.view()
}

pub struct Pair {
    pub src: MemStore,
    pub dst: MemStore,
    pub source: Source,
    pub replica: Replica,
    pub t0: Instant,
    pub now: Instant,
    pub wall: SystemTime,
    pub wire_bytes: u64,
    pub events: Vec<ReplicaEvent>,
    link_r: Link,
    link_s: Link,
}

pub fn links(now: Instant) -> (Link, Link) {
    let key =
        PreSharedKey::new(*blake3::hash(b"pair secret").as_bytes()).expect("a random-looking key");
    let (r, s) = Link::connected_pair(
        key,
        [Nonce([3; 32]), Nonce([4; 32])],
        [Epoch::new(1, 2), Epoch::new(1, 1)],
        now,
    )
    .unwrap();
    assert!(r.is_established() && s.is_established());
    (r, s)
}

fn carry(now: Instant, from: &mut Link, to: &mut Link, m: &Message, bytes: &mut u64) -> Message {
    let mut payload = Vec::new();
    m.encode(&mut payload);
    let mut wire = Vec::new();
    from.send(CHANNEL_SYNC, &payload, &mut wire).unwrap();
    *bytes += wire.len() as u64;
    to.handle_bytes(now, &wire).unwrap();
    let f = to.poll_frame().unwrap().unwrap();
    assert_eq!(f.channel, CHANNEL_SYNC);
    Message::decode(&f.payload).unwrap()
}

impl Pair {
    pub fn new(src: MemStore, dst: MemStore) -> Self {
        Self::with_config(src, dst, SourceConfig::default(), ReplicaConfig::default())
    }

    pub fn with_config(
        mut src: MemStore,
        mut dst: MemStore,
        sc: SourceConfig,
        rc: ReplicaConfig,
    ) -> Self {
        let t0 = Instant::now();
        let source = Source::open(sc, t0, &mut src).unwrap();
        let (mut replica, _) = Replica::open(rc, t0, &mut dst).unwrap();
        replica.handle_connected(t0);
        let (link_r, link_s) = links(t0);
        Self {
            src,
            dst,
            source,
            replica,
            t0,
            now: t0,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            wire_bytes: 0,
            events: Vec::new(),
            link_r,
            link_s,
        }
    }

    /// Runs one round to quiescence.
    pub fn round(&mut self) -> Result<(), SessionError> {
        self.now += Duration::from_secs(61);
        self.wall += Duration::from_secs(61);
        self.replica.handle_timeout(self.now);
        self.pump(|_, _| {})
    }

    /// Carries messages until neither side has anything to send; `hook`
    /// sees every message the source is about to receive.
    pub fn pump(&mut self, hook: impl FnMut(&Message, &mut MemStore)) -> Result<(), SessionError> {
        self.pump_watching(hook, |_| {})
    }

    /// [`Pair::pump`], with `after` seeing the replica after each message
    /// it was given.
    pub fn pump_watching(
        &mut self,
        mut hook: impl FnMut(&Message, &mut MemStore),
        mut after: impl FnMut(&Replica),
    ) -> Result<(), SessionError> {
        loop {
            let mut moved = false;
            while let Some(m) = self.replica.poll_transmit() {
                let m = carry(
                    self.now,
                    &mut self.link_r,
                    &mut self.link_s,
                    &m,
                    &mut self.wire_bytes,
                );
                hook(&m, &mut self.src);
                self.source
                    .handle_message(self.now, self.wall, m, &mut self.src)?;
                moved = true;
            }
            while let Some(m) = self.source.poll_transmit(&mut self.src) {
                let m = carry(
                    self.now,
                    &mut self.link_s,
                    &mut self.link_r,
                    &m,
                    &mut self.wire_bytes,
                );
                self.replica.handle_wall_clock(self.now, self.wall);
                self.replica.handle_message(self.now, m, &mut self.dst)?;
                after(&self.replica);
                moved = true;
            }
            while let Some(e) = self.replica.poll_event() {
                self.events.push(e);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    pub fn assert_synced(&self) {
        assert_eq!(norm(&self.dst), norm(&self.src));
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads a whole file from any store.
pub fn read<S: Storage>(s: &mut S, path: &str) -> Vec<u8> {
    let mut out = vec![0u8; s.stat(path).unwrap().size as usize];
    let mut off = 0;
    while off < out.len() {
        let n = s.read_at(path, off as u64, &mut out[off..]).unwrap();
        if n == 0 {
            out.truncate(off);
            break;
        }
        off += n;
    }
    out
}
