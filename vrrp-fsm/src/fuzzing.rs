//! Properties the `fsm_events` fuzz target checks, shared with the tests
//! that replay its seed corpus on stable.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed property must panic: that is the fuzzer's signal

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use vrrp_proto::{
    Advertisement, Endpoints, IPV4_GROUP, Interval, Ipv4ChecksumForm, Priority, RecvMeta, Version,
    Vrid, check_message,
};

use crate::config::{BackupMode, Config, GratuitousConfig, TrackId};
use crate::event::{Event, Reason, State};
use crate::router::{Input, LinkState, Release, TrackState, VirtualRouter};

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// What the checker knows from the outputs alone.
struct Watch {
    state: State,
    claimed: bool,
    transitions: u64,
}

/// `fsm_events`: the first bytes pick a configuration; the rest are
/// (time step, input) pairs: timeouts, valid advertisements of any
/// priority, interval and source, raw bytes, and every [`Input`]. Nothing
/// panics; `poll_timeout` never goes into the past; the events agree with
/// `state()`; addresses are claimed exactly while Master; a Passive Backup
/// becomes Master only by takeover; every advertisement sent checks and
/// names our VRID; counters match the events. `t0` is the virtual time
/// the run starts at (the harness's clock; nothing depends on its value).
///
/// # Panics
/// When a property fails: that is the fuzzer's signal.
pub fn fsm_events(t0: Instant, data: &[u8]) {
    fsm_events_transitions(t0, data);
}

/// [`fsm_events`], returning the number of state transitions seen (so that
/// tests can tell a corpus reaches the state machine).
///
/// # Panics
/// As [`fsm_events`].
pub fn fsm_events_transitions(t0: Instant, data: &[u8]) -> u64 {
    let mut b = Bytes(data);
    let sel = b.u8().unwrap_or(0);
    let prio = b.u8().unwrap_or(100).max(1);
    let icent = u16::from(b.u8().unwrap_or(100)).max(1);
    let version = if sel & 1 == 0 {
        Version::V3
    } else {
        Version::V2
    };
    let interval = match version {
        Version::V3 => Interval::from_centis(icent).unwrap(),
        Version::V2 => Interval::from_secs((icent % 8).max(1) as u8).unwrap(),
    };
    let mut builder = Config::builder(version, Vrid::new(7).unwrap(), ME.into())
        .priority(Priority(prio))
        .interval(interval)
        .address(VIP)
        .gratuitous(GratuitousConfig {
            count: (sel >> 1) & 3,
            spacing: Duration::from_millis(u64::from(sel >> 3) + 1),
            refresh: (sel & 0x80 != 0).then(|| Duration::from_secs(1)),
        })
        .track(TrackId(1), -50)
        .track(TrackId(2), 20);
    if sel & 0x20 != 0 {
        builder = builder.preempt(crate::config::Preempt::Disabled);
    }
    if sel & 0x40 != 0 {
        builder = builder.backup_mode(BackupMode::Passive);
    }
    if sel & 0x10 != 0 {
        builder = builder
            .startup_delay(Duration::from_millis(1500))
            .preempt_delay(Duration::from_millis(700));
    }
    let config = builder.build().expect("fuzz configs are valid");
    let mut now = t0;
    let mut r = VirtualRouter::new(config, now);
    let mut w = Watch {
        state: State::Initialize,
        claimed: false,
        transitions: 0,
    };
    let mut buf = [0u8; 128];
    let mut steps = 0u32;
    while let Some(op) = b.u8() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        // Time step first, then run every deadline in between, in order.
        let dt = u64::from(b.u16().unwrap_or(0)) * u64::from(op >> 4).pow(2);
        let until = now + Duration::from_micros(dt);
        let mut guard = 0;
        while let Some(t) = r.poll_timeout() {
            assert!(t >= now, "poll_timeout went into the past");
            if t > until {
                break;
            }
            now = t;
            r.handle_timeout(now);
            assert!(
                r.poll_timeout().is_none_or(|n| n > now),
                "a deadline was not cleared by handle_timeout"
            );
            check(&mut r, &mut w, &mut buf);
            guard += 1;
            assert!(guard < 100_000, "timer storm");
        }
        now = until;
        match op & 0x0f {
            0 => r.handle_timeout(now),
            1..=4 => {
                let p = b.u8().unwrap_or(0);
                let i = b.u8().unwrap_or(1).max(1);
                let src = Ipv4Addr::new(10, 0, 0, b.u8().unwrap_or(9) % 12);
                let adv = match version {
                    Version::V3 => Advertisement::v3(
                        Vrid::new(7).unwrap(),
                        Priority(p),
                        Interval::from_centis(u16::from(i)).unwrap(),
                        [VIP].into(),
                    ),
                    Version::V2 => Advertisement::v2(
                        Vrid::new(7).unwrap(),
                        Priority(p),
                        interval,
                        vrrp_proto::Auth::None,
                        [VIP].into(),
                    ),
                }
                .unwrap();
                if src.is_unspecified() {
                    continue;
                }
                let ends = Endpoints {
                    src: src.into(),
                    dst: IPV4_GROUP.into(),
                };
                let mut m = [0u8; 64];
                let n = adv
                    .emit(&mut m, ends, Ipv4ChecksumForm::PseudoHeader)
                    .unwrap();
                let meta = RecvMeta {
                    src: src.into(),
                    dst: IPV4_GROUP.into(),
                    ttl: 255,
                };
                // What the router said a driver may hand in late changes
                // nothing the driver acts on: no transmit, no event, the
                // same state (the queues were drained by `check`).
                let routine = r.routine_advertisement().filter(|x| {
                    x.source == IpAddr::from(src)
                        && x.priority == Priority(p)
                        && x.interval.is_none_or(|iv| iv.as_centis() == u16::from(i))
                });
                if let Some(x) = r.routine_advertisement() {
                    assert_eq!(r.state(), State::Backup, "routine only in Backup");
                    assert_ne!(x.priority, Priority::RELEASE);
                }
                let before = r.state();
                let _ = r.handle_message(now, &m[..n], meta);
                if let Some(x) = routine {
                    assert!(
                        r.poll_transmit(&mut buf).is_none(),
                        "a routine advertisement ({x:?}) made a transmit"
                    );
                    let ev = r.poll_event();
                    assert!(ev.is_none(), "a routine advertisement made {ev:?}");
                    assert_eq!(r.state(), before);
                }
            }
            5 => {
                let len = usize::from(b.u8().unwrap_or(0));
                let raw = b.take(len).to_vec();
                let _ = r.handle_datagram(now, &raw);
                let meta = RecvMeta {
                    src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                    dst: IPV4_GROUP.into(),
                    ttl: 255,
                };
                let _ = r.handle_message(now, &raw, meta);
            }
            c => {
                let arg = b.u8().unwrap_or(0);
                let cmd = match c {
                    6 => Input::Startup,
                    7 => Input::Shutdown,
                    8 => Input::Link(if arg & 1 == 0 {
                        LinkState::Down
                    } else {
                        LinkState::Up
                    }),
                    9 => Input::SetPriority(Priority(arg)),
                    10 => Input::Track(
                        TrackId(u16::from(arg & 3)),
                        if arg & 4 == 0 {
                            TrackState::Down
                        } else {
                            TrackState::Up
                        },
                    ),
                    11 => Input::SetBackupMode(if arg & 1 == 0 {
                        BackupMode::Active
                    } else {
                        BackupMode::Passive
                    }),
                    12 => Input::Arm,
                    13 => Input::Disarm,
                    14 => Input::Takeover,
                    _ => {
                        let mut rel =
                            Release::new().hold_off(Duration::from_millis(u64::from(arg) * 10));
                        if arg & 1 == 1 {
                            rel = rel.priority(Priority(arg));
                        }
                        Input::Release(rel)
                    }
                };
                let _ = r.handle_input(now, cmd);
            }
        }
        if let Some(t) = r.poll_timeout() {
            assert!(t >= now, "poll_timeout went into the past after an input");
        }
        check(&mut r, &mut w, &mut buf);
    }
    assert_eq!(r.stats().events_dropped, 0);
    w.transitions
}

fn check(r: &mut VirtualRouter, w: &mut Watch, buf: &mut [u8]) {
    while let Some(t) = r.poll_transmit(buf) {
        let meta = RecvMeta {
            src: t.src,
            dst: t.dst,
            ttl: 255,
        };
        let c = check_message(&buf[..t.len], meta).expect("what we send checks");
        assert_eq!(c.packet.vrid(), 7);
        assert_eq!(c.packet.version(), r.config().version());
        if c.packet.priority() != 0 {
            assert_eq!(
                w_state_or(r, w),
                State::Master,
                "only a Master advertises non-zero"
            );
        }
    }
    while let Some(e) = r.poll_event() {
        match e {
            Event::StateChange { from, to, reason } => {
                assert_eq!(from, w.state, "event from-state disagrees");
                assert_ne!(from, to);
                if to == State::Master && r.backup_mode() == BackupMode::Passive {
                    assert!(
                        matches!(reason, Reason::Takeover | Reason::ArmedTakeover),
                        "passive backup became master by {reason:?}"
                    );
                }
                w.state = to;
                w.transitions += 1;
            }
            Event::ClaimAddresses => {
                assert!(!w.claimed, "claimed twice");
                assert_eq!(w.state, State::Master);
                w.claimed = true;
            }
            Event::ReleaseAddresses => {
                assert!(w.claimed, "released without a claim");
                assert_ne!(w.state, State::Master);
                w.claimed = false;
            }
            Event::SendGratuitous(_) => assert_eq!(w.state, State::Master),
            Event::AcceptMode(_) | Event::MasterHeard { .. } => {}
        }
    }
    assert_eq!(w.state, r.state(), "events disagree with state()");
    assert_eq!(w.claimed, r.state() == State::Master);
    let counted: u64 = State::ALL
        .iter()
        .flat_map(|f| State::ALL.iter().map(move |t| (*f, *t)))
        .map(|(f, t)| r.stats().transitions(f, t))
        .sum();
    assert_eq!(counted, w.transitions);
}

/// The state the outputs describe. Transmits are drained before events,
/// so a priority-non-zero advertisement may belong to a Master term whose
/// events are still queued: use the router's view then.
fn w_state_or(r: &VirtualRouter, w: &Watch) -> State {
    if w.state == State::Master {
        State::Master
    } else {
        r.state()
    }
}
