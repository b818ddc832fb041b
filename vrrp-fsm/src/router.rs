//! The virtual router engine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use core::net::IpAddr;

use smallvec::SmallVec;
use vrrp_proto::{
    Addresses, Advertisement, Auth, Endpoints, Family, IPV4_GROUP, IPV6_GROUP, Interval, Packet,
    ParseError, Priority, RecvMeta, Version, check_datagram, check_message,
};

use crate::config::{BackupMode, Config, Preempt, TrackId};
use crate::event::{Event, Gratuitous, Reason, State};
use crate::stats::{ConfigDrop, Stats};
use crate::timer;

/// Most events queued between two drains; more are counted in
/// [`Stats::events_dropped`] and lost.
pub const EVENT_QUEUE: usize = 64;
/// Most advertisements queued between two drains.
pub const TRANSMIT_QUEUE: usize = 8;

/// An advertisement [`VirtualRouter::poll_transmit`] wrote into the
/// caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transmit {
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// Source address to send from (the configured primary address).
    pub src: IpAddr,
    /// Destination: the VRRP group (224.0.0.18 / ff02::12) or a unicast peer.
    pub dst: IpAddr,
}

/// Whether the interface the router runs on is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LinkState {
    /// Up (the initial assumption).
    #[default]
    Up,
    /// Down: the router drops to Initialize until it is up again.
    Down,
}

/// A tracked object's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrackState {
    /// Healthy (the initial assumption).
    #[default]
    Up,
    /// Failed.
    Down,
}

/// How a Master steps down in [`VirtualRouter::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Release {
    hold_off: Option<Duration>,
    priority: Option<Priority>,
}

impl Release {
    /// Release with the configured hold-off and no priority change.
    #[must_use]
    pub fn new() -> Release {
        Release::default()
    }
    /// Hold off re-election by timer for this long instead of the
    /// configured [`Config::release_hold_off`].
    #[must_use]
    pub fn hold_off(mut self, hold_off: Duration) -> Release {
        self.hold_off = Some(hold_off);
        self
    }
    /// Take this (base) priority in the same step: the durable half of a
    /// swap. Without it, a higher-priority old Master with preempt on takes
    /// the role back once its hold-off ends.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Release {
        self.priority = Some(priority);
        self
    }
}

/// An operator or driver input, as one value: what the simulator schedules
/// and the fuzz target generates. Each maps to one method of
/// [`VirtualRouter`]; [`VirtualRouter::handle_input`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Input {
    /// [`VirtualRouter::handle_startup`].
    Startup,
    /// [`VirtualRouter::handle_shutdown`].
    Shutdown,
    /// [`VirtualRouter::handle_link`].
    Link(LinkState),
    /// [`VirtualRouter::set_priority`].
    SetPriority(Priority),
    /// [`VirtualRouter::set_track`].
    Track(TrackId, TrackState),
    /// [`VirtualRouter::set_backup_mode`].
    SetBackupMode(BackupMode),
    /// [`VirtualRouter::arm_takeover`].
    Arm,
    /// [`VirtualRouter::disarm`].
    Disarm,
    /// [`VirtualRouter::takeover`].
    Takeover,
    /// [`VirtualRouter::release`].
    Release(Release),
}

/// A command that does not apply in the router's state, or names a tracked
/// object or sync-group member that does not exist: the error of the
/// operator methods ([`VirtualRouter::set_priority`], the swap primitives,
/// …) and so of [`VirtualRouter::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Only a Master can do this.
    #[error("not master (state {state:?})")]
    NotMaster {
        /// The state the router is in.
        state: State,
    },
    /// Only a Backup can do this.
    #[error("not backup (state {state:?})")]
    NotBackup {
        /// The state the router is in.
        state: State,
    },
    /// Priority 0 is the release message, not a router priority.
    #[error("priority 0 is reserved for release")]
    ZeroPriority,
    /// No tracked object of this id is configured.
    #[error("tracked object {id} is not configured")]
    UnknownTrack {
        /// The id given.
        id: u16,
    },
    /// A sync group has no member of this index.
    #[error("sync group has no member {index}")]
    NoMember {
        /// The index given.
        index: usize,
    },
}

/// Why a received advertisement was dropped. Every drop is also counted in
/// [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// A packet-alone rule (vrrp-proto).
    #[error("packet: {0}")]
    Packet(ParseError),
    /// A rule that needs this router's configuration.
    #[error("config: {0}")]
    Config(ConfigDrop),
}

#[derive(Debug, Clone, Copy)]
struct BackupTimers {
    /// `Master_Down_Timer` (RFC 9568 §6.2); `None` in Passive mode.
    down_at: Option<Instant>,
    /// The reason the transition will carry if `down_at` fires.
    cause: Reason,
    /// Not Master by timer before this (startup delay, release hold-off).
    hold_until: Option<Instant>,
    /// With a preempt delay: preempting allowed from this instant.
    preempt_after: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct MasterTimers {
    /// `Adver_Timer` (RFC 9568 §6.2).
    adver_at: Instant,
    /// Next gratuitous ARP / NA.
    garp_at: Option<Instant>,
    /// Burst announcements sent so far.
    garp_sent: u8,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Initialize,
    Backup(BackupTimers),
    Master(MasterTimers),
}

/// An advertisement that changes nothing a driver acts on (see
/// [`VirtualRouter::routine_advertisement`]): from `source`, for `vrid`,
/// with `priority` and, in VRRPv3, `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routine {
    /// The virtual router.
    pub vrid: vrrp_proto::Vrid,
    /// The Master's address (the packet's source).
    pub source: IpAddr,
    /// The priority it advertises.
    pub priority: Priority,
    /// The interval it advertises (VRRPv3; `None` for v2, where any other
    /// interval is dropped).
    pub interval: Option<Interval>,
}

/// One VRRP virtual router (one VRID, one address family): RFC 9568 (v3) or
/// RFC 3768 (v2), Sans-IO.
///
/// # Driver contract
///
/// The engine does no I/O and reads no clock; the driver (a tokio task,
/// an event loop, the `sim` simulator) owns the socket and the
/// clock and calls, with a monotonic `now` that never goes backwards:
///
/// 1. [`VirtualRouter::new`] then [`VirtualRouter::handle_startup`] when the
///    interface is ready (RFC 9568 §6.4.1 Startup event).
/// 2. For every received packet, [`VirtualRouter::handle_datagram`] (a whole
///    IP datagram, e.g. from an IPv4 raw socket) or
///    [`VirtualRouter::handle_message`] (a bare VRRP message plus the
///    source, destination and TTL / hop limit from ancillary data).
/// 3. [`VirtualRouter::handle_timeout`] once `now` reaches
///    [`VirtualRouter::poll_timeout`]; calling it early is harmless.
/// 4. Operator and health inputs whenever they happen:
///    [`VirtualRouter::set_priority`], [`VirtualRouter::set_track`],
///    [`VirtualRouter::set_backup_mode`], [`VirtualRouter::handle_link`], and
///    the swap primitives [`VirtualRouter::arm_takeover`],
///    [`VirtualRouter::takeover`], [`VirtualRouter::release`].
/// 5. After **every** call above, drain [`VirtualRouter::poll_transmit`]
///    (or [`VirtualRouter::poll_transmit_datagram`]) and
///    [`VirtualRouter::poll_event`] until `None`, then re-read
///    [`VirtualRouter::poll_timeout`] and sleep until then or the next
///    packet. Queues are bounded ([`EVENT_QUEUE`], [`TRANSMIT_QUEUE`]).
/// 6. [`VirtualRouter::handle_shutdown`] before exit: a Master sends
///    priority 0 so that its Backup takes over after `Skew_Time` only.
///
/// The failover orchestrator consumes [`Event::StateChange`] (its takeover
/// plan starts on `to: Master`, the hand-back on leaving it); a swap is
/// `arm_takeover` on the Backup, then `release` with a lower priority on
/// the Master: the armed Backup becomes Master on the priority-0
/// advertisement, without waiting `Skew_Time`.
///
/// The drain step, as a driver writes it (a tokio driver wraps this in a
/// `select!` over the socket, a `sleep_until(poll_timeout())` and its
/// command channel):
///
/// ```
/// use std::net::IpAddr;
/// use vrrp_fsm::{Event, VirtualRouter};
///
/// fn drain(
///     router: &mut VirtualRouter,
///     send: &mut impl FnMut(&[u8], IpAddr),
///     report: &mut impl FnMut(Event),
/// ) {
///     let mut buf = [0u8; 8 + 255 * 16 + 8];
///     while let Some(t) = router.poll_transmit(&mut buf) {
///         send(&buf[..t.len], t.dst);
///     }
///     while let Some(e) = router.poll_event() {
///         report(e); // e.g. to the failover orchestrator
///     }
/// }
/// ```
///
/// # Timers
///
/// `Skew_Time` and `Master_Down_Interval` are computed exactly as RFC 9568
/// §6.1 (v3) / RFC 3768 §6.1 (v2) in integer microseconds (RFC 9568 calls
/// the latter `Active_Down_Interval`); see [`crate::timer`]. A v3 Backup
/// adopts the Master's advertised interval (RFC 9568 §6.4.2).
#[derive(Debug, Clone)]
pub struct VirtualRouter {
    config: Config,
    role: Role,
    /// Effective priority: base plus tracked weights.
    priority: Priority,
    base_priority: Priority,
    tracks: SmallVec<[TrackState; 4]>,
    master_interval: Interval,
    skew: Duration,
    down_interval: Duration,
    backup_mode: BackupMode,
    armed: bool,
    link: LinkState,
    /// Started and not shut down (restarts when the link comes back).
    wanted: bool,
    accept_on: bool,
    master_heard: Option<(IpAddr, Priority)>,
    advert: Advertisement,
    release_advert: Advertisement,
    address_bytes: SmallVec<[u8; 16]>,
    tx: VecDeque<Priority>,
    tx_peer: usize,
    /// The IPv4 identification of the next datagram (never 0).
    ident: u16,
    events: VecDeque<Event>,
    stats: Stats,
}

fn build_advert(config: &Config, priority: Priority) -> Advertisement {
    config.advert.clone().with_priority(priority)
}

fn address_bytes(a: &Addresses) -> SmallVec<[u8; 16]> {
    let mut v = SmallVec::new();
    match a {
        Addresses::V4(x) => x.iter().for_each(|a| v.extend_from_slice(&a.octets())),
        Addresses::V6(x) => x.iter().for_each(|a| v.extend_from_slice(&a.octets())),
    }
    v
}

enum Wrap {
    Message,
    Datagram,
}

impl VirtualRouter {
    /// A router in Initialize. Nothing happens until
    /// [`VirtualRouter::handle_startup`].
    #[must_use]
    pub fn new(config: Config, now: Instant) -> VirtualRouter {
        let _ = now;
        let advert = build_advert(&config, config.priority);
        let release_advert = advert.clone().with_priority(Priority::RELEASE);
        let mut r = VirtualRouter {
            role: Role::Initialize,
            priority: config.priority,
            base_priority: config.priority,
            tracks: config.tracks.iter().map(|_| TrackState::Up).collect(),
            master_interval: config.interval,
            skew: Duration::ZERO,
            down_interval: Duration::ZERO,
            backup_mode: config.backup_mode,
            armed: false,
            link: LinkState::Up,
            wanted: false,
            accept_on: false,
            master_heard: None,
            address_bytes: address_bytes(&config.addresses),
            advert,
            release_advert,
            tx: VecDeque::with_capacity(TRANSMIT_QUEUE),
            tx_peer: 0,
            ident: 1,
            events: VecDeque::with_capacity(EVENT_QUEUE),
            stats: Stats::default(),
            config,
        };
        r.apply_priority(r.effective_priority());
        r
    }

    // ----- accessors -----

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Current state.
    #[must_use]
    pub fn state(&self) -> State {
        match self.role {
            Role::Initialize => State::Initialize,
            Role::Backup(_) => State::Backup,
            Role::Master(_) => State::Master,
        }
    }
    /// Effective priority (base plus tracked-object weights).
    #[must_use]
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// Current backup mode.
    #[must_use]
    pub fn backup_mode(&self) -> BackupMode {
        self.backup_mode
    }
    /// Whether an armed takeover is pending.
    #[must_use]
    pub fn is_armed(&self) -> bool {
        self.armed
    }
    /// `Master_Adver_Interval`: the interval the current Master advertises
    /// (v3 Backups adopt it, RFC 9568 §6.4.2), or the own one.
    #[must_use]
    pub fn master_interval(&self) -> Interval {
        self.master_interval
    }
    /// Current `Skew_Time`.
    #[must_use]
    pub fn skew_time(&self) -> Duration {
        self.skew
    }
    /// Current `Master_Down_Interval` (RFC 9568: `Active_Down_Interval`).
    #[must_use]
    pub fn master_down_interval(&self) -> Duration {
        self.down_interval
    }
    /// The Master as known here: the own primary address when Master, the
    /// last Master heard when Backup.
    #[must_use]
    pub fn master(&self) -> Option<IpAddr> {
        match self.role {
            Role::Master(_) => Some(self.config.primary),
            Role::Backup(_) => self.master_heard.map(|m| m.0),
            Role::Initialize => None,
        }
    }
    /// The advertisements a driver may hand in late, if any: in Backup,
    /// once a Master has been heard, an advertisement from that Master
    /// with the same (non-zero) priority and interval does nothing but
    /// restart the `Master_Down_Timer` (or, while preempting, leave it
    /// running): no transmit, no event. So does any message for another
    /// VRID, which is dropped.
    ///
    /// A driver may then keep such messages in the socket and hand them in
    /// later, each with the instant it arrived (a kernel receive timestamp),
    /// as long as it hands in everything held, in order, before any other
    /// input and before [`VirtualRouter::handle_timeout`]: the router ends
    /// in the state it would have reached had each come at once. Any other
    /// message for this VRID (another source, priority or interval,
    /// priority 0 above all: it starts the skew timer) must come at once.
    /// A Backup then wakes once per `Master_Down_Interval` instead of once
    /// per advertisement. Ask again after every input: the answer changes
    /// with the state and the Master heard.
    #[must_use]
    pub fn routine_advertisement(&self) -> Option<Routine> {
        let Role::Backup(_) = self.role else {
            return None;
        };
        let (source, priority) = self.master_heard?;
        if priority == Priority::RELEASE {
            return None;
        }
        Some(Routine {
            vrid: self.config.vrid,
            source,
            priority,
            // A v2 advertisement with another interval is dropped: no
            // output either.
            interval: match self.config.version {
                Version::V2 => None,
                Version::V3 => Some(self.master_interval),
            },
        })
    }
    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The largest message [`VirtualRouter::poll_transmit`] writes; a
    /// buffer this long (plus 40 bytes for
    /// [`VirtualRouter::poll_transmit_datagram`]) never is too small.
    #[must_use]
    pub fn max_transmit_len(&self) -> usize {
        self.advert.buffer_len()
    }

    // ----- the house engine shape -----

    /// When [`VirtualRouter::handle_timeout`] is next needed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.role {
            Role::Initialize => None,
            Role::Backup(b) => b.down_at,
            Role::Master(m) => Some(match m.garp_at {
                Some(g) if g < m.adver_at => g,
                _ => m.adver_at,
            }),
        }
    }

    /// Runs the timers that are due. Safe to call early or often.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.role {
            Role::Initialize => {}
            Role::Master(mut m) => {
                if now >= m.adver_at {
                    // RFC 9568 §6.4.3: Adver_Timer fires: send, reset.
                    self.queue_advert(self.priority);
                    m.adver_at = now + self.interval_duration();
                }
                if let Some(g) = m.garp_at
                    && now >= g
                {
                    let cfg = self.config.gratuitous;
                    if m.garp_sent < cfg.count {
                        m.garp_sent += 1;
                        self.push_event(Event::SendGratuitous(Gratuitous::Burst {
                            index: m.garp_sent,
                            count: cfg.count,
                        }));
                    } else {
                        self.push_event(Event::SendGratuitous(Gratuitous::Refresh));
                    }
                    m.garp_at = self.next_garp(now, m.garp_sent);
                }
                self.role = Role::Master(m);
            }
            Role::Backup(mut b) => {
                let Some(down) = b.down_at else { return };
                if now < down {
                    return;
                }
                if let Some(h) = b.hold_until
                    && now < h
                {
                    b.down_at = Some(h);
                    self.role = Role::Backup(b);
                    return;
                }
                // RFC 9568 §6.4.2: Master_Down_Timer fires: become Master.
                self.become_master(now, b.cause);
            }
        }
    }

    /// The next advertisement to send, written as a bare VRRP message into
    /// `buf` (for a raw IPv6 socket or any socket that builds the IP
    /// header). `None` when nothing is queued. A buffer shorter than
    /// [`VirtualRouter::max_transmit_len`] loses that advertisement (counted
    /// in [`Stats::tx_buffer_too_small`]).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_wrapped(buf, Wrap::Message)
    }

    /// As [`VirtualRouter::poll_transmit`], but writes the whole IPv4 / IPv6
    /// datagram (header with TTL 255, protocol 112) for an `IP_HDRINCL` raw
    /// socket or a capture.
    #[must_use]
    pub fn poll_transmit_datagram(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_wrapped(buf, Wrap::Datagram)
    }

    /// The next event, `None` when drained.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- inputs -----

    /// Startup event (RFC 9568 §6.4.1): the owner (priority 255, no
    /// startup delay, Active mode) becomes Master at once; any other router becomes
    /// Backup and waits `Master_Down_Interval` (and at least the configured
    /// startup delay). Ignored unless in Initialize.
    pub fn handle_startup(&mut self, now: Instant) {
        self.wanted = true;
        if matches!(self.role, Role::Initialize) && self.link == LinkState::Up {
            self.start(now);
        }
    }

    /// Shutdown event (RFC 9568 §6.4.2 / §6.4.3): a Master sends a priority-0
    /// advertisement and releases the addresses; any router goes to
    /// Initialize.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.wanted = false;
        self.stop(now, Reason::Shutdown);
    }

    /// The interface went down or came back. Down: to Initialize at once
    /// (nothing is sent); up: started again if it was started.
    pub fn handle_link(&mut self, now: Instant, link: LinkState) {
        self.link = link;
        match link {
            LinkState::Down => {
                self.tx.clear();
                self.tx_peer = 0;
                self.stop(now, Reason::LinkDown);
            }
            LinkState::Up => {
                if self.wanted && matches!(self.role, Role::Initialize) {
                    self.start(now);
                }
            }
        }
    }

    /// A received whole IPv4 / IPv6 datagram. vrrp-proto's packet-alone
    /// rules run first, then this router's configuration rules.
    ///
    /// # Errors
    /// Why the packet was dropped (also counted in [`Stats`]).
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), RecvError> {
        match check_datagram(datagram) {
            Ok(c) => self.receive(now, &c.packet, c.meta.src),
            Err(e) => {
                self.stats.count_proto(e.reason());
                Err(RecvError::Packet(e))
            }
        }
    }

    /// A received bare VRRP message with its receive metadata.
    ///
    /// # Errors
    /// Why the packet was dropped (also counted in [`Stats`]).
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &[u8],
        meta: RecvMeta,
    ) -> Result<(), RecvError> {
        match check_message(message, meta) {
            Ok(c) => self.receive(now, &c.packet, c.meta.src),
            Err(e) => {
                self.stats.count_proto(e.reason());
                Err(RecvError::Packet(e))
            }
        }
    }

    /// Sets the base priority (tracked weights still apply). A Master
    /// advertises the new priority at once, so that a higher Backup can
    /// preempt without waiting an interval.
    ///
    /// # Errors
    /// [`CommandError::ZeroPriority`] for priority 0.
    pub fn set_priority(&mut self, now: Instant, priority: Priority) -> Result<(), CommandError> {
        if priority == Priority::RELEASE {
            return Err(CommandError::ZeroPriority);
        }
        self.base_priority = priority;
        self.reprioritise(now);
        Ok(())
    }

    /// A tracked object changed state; its configured weight applies.
    ///
    /// # Errors
    /// [`CommandError::UnknownTrack`] if `id` is not configured.
    pub fn set_track(
        &mut self,
        now: Instant,
        id: TrackId,
        state: TrackState,
    ) -> Result<(), CommandError> {
        let idx = self
            .config
            .tracks
            .iter()
            .position(|t| t.id == id)
            .ok_or(CommandError::UnknownTrack { id: id.0 })?;
        if let Some(s) = self.tracks.get_mut(idx) {
            *s = state;
        }
        self.reprioritise(now);
        Ok(())
    }

    /// Sets the backup mode. A Passive Backup stops its
    /// `Master_Down_Timer`; going Active starts it afresh. A Master keeps
    /// the mode for when it is Backup again.
    pub fn set_backup_mode(&mut self, now: Instant, mode: BackupMode) {
        if self.backup_mode == mode {
            return;
        }
        self.backup_mode = mode;
        if let Role::Backup(mut b) = self.role {
            match mode {
                // An armed takeover keeps watching the Master.
                BackupMode::Passive if self.armed => b.cause = Reason::ArmedTakeover,
                BackupMode::Passive => b.down_at = None,
                BackupMode::Active => {
                    b.down_at = Some(now + self.down_interval);
                    b.cause = Reason::MasterDown;
                }
            }
            self.role = Role::Backup(b);
        }
    }

    /// Arms a Backup for a swap: it becomes Master as soon as it hears
    /// priority 0 (without waiting `Skew_Time`), even in Passive mode. The
    /// arm lasts until it fires, [`VirtualRouter::disarm`], or the state
    /// changes.
    ///
    /// An armed Passive Backup also watches the Master as an Active one
    /// does: if the Master falls silent for `Master_Down_Interval` before
    /// it releases (it died in the middle of the swap), the armed Backup
    /// takes over then ([`Reason::ArmedTakeover`]), so that a swap never
    /// leaves the pair without a Master.
    ///
    /// # Errors
    /// [`CommandError::NotBackup`] unless in Backup.
    pub fn arm_takeover(&mut self, now: Instant) -> Result<(), CommandError> {
        match self.role {
            Role::Backup(mut b) => {
                self.armed = true;
                if b.down_at.is_none() {
                    b.down_at = Some(now + self.down_interval);
                    b.cause = Reason::ArmedTakeover;
                    self.role = Role::Backup(b);
                }
                Ok(())
            }
            _ => Err(CommandError::NotBackup {
                state: self.state(),
            }),
        }
    }

    /// Cancels an armed takeover (a Passive Backup stops watching the
    /// Master again).
    pub fn disarm(&mut self, now: Instant) {
        let _ = now;
        self.armed = false;
        if let (Role::Backup(mut b), BackupMode::Passive) = (self.role, self.backup_mode) {
            b.down_at = None;
            self.role = Role::Backup(b);
        }
    }

    /// Becomes Master now (an explicit takeover; the only way out of
    /// Passive). A higher-priority Master that still runs will answer
    /// (RFC 9568 §6.4.3) and this router steps back down: pair it with a
    /// `release` on the Master, or lower the Master's priority.
    ///
    /// # Errors
    /// [`CommandError::NotBackup`] unless in Backup.
    pub fn takeover(&mut self, now: Instant) -> Result<(), CommandError> {
        match self.role {
            Role::Backup(_) => {
                self.become_master(now, Reason::Takeover);
                Ok(())
            }
            _ => Err(CommandError::NotBackup {
                state: self.state(),
            }),
        }
    }

    /// Steps down as Master: sends priority 0 (so that a Backup takes over
    /// after `Skew_Time`, an armed one at once), releases the addresses,
    /// becomes Backup and does not become Master again by timer during the
    /// hold-off. [`Release::priority`] changes the priority in the same
    /// step, which makes the swap durable.
    ///
    /// # Errors
    /// [`CommandError::NotMaster`] unless Master;
    /// [`CommandError::ZeroPriority`] for a new priority of 0.
    pub fn release(&mut self, now: Instant, release: Release) -> Result<(), CommandError> {
        if !matches!(self.role, Role::Master(_)) {
            return Err(CommandError::NotMaster {
                state: self.state(),
            });
        }
        if release.priority == Some(Priority::RELEASE) {
            return Err(CommandError::ZeroPriority);
        }
        self.queue_advert(Priority::RELEASE);
        let hold = now + release.hold_off.unwrap_or(self.config.release_hold_off);
        self.master_interval = self.config.interval;
        if let Some(p) = release.priority {
            self.base_priority = p;
        }
        let eff = self.effective_priority();
        self.apply_priority(eff);
        self.enter_backup(now, Reason::Release, Some(hold));
        Ok(())
    }

    /// Applies an [`Input`].
    ///
    /// # Errors
    /// As the method the input maps to.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), CommandError> {
        match input {
            Input::Startup => self.handle_startup(now),
            Input::Shutdown => self.handle_shutdown(now),
            Input::Link(l) => self.handle_link(now, l),
            Input::SetPriority(p) => self.set_priority(now, p)?,
            Input::Track(id, s) => self.set_track(now, id, s)?,
            Input::SetBackupMode(m) => self.set_backup_mode(now, m),
            Input::Arm => self.arm_takeover(now)?,
            Input::Disarm => self.disarm(now),
            Input::Takeover => self.takeover(now)?,
            Input::Release(r) => self.release(now, r)?,
        }
        Ok(())
    }

    // ----- sync-group hooks -----

    /// Forced transitions for [`crate::SyncGroup`]: no-ops when already
    /// there.
    pub(crate) fn force(&mut self, now: Instant, to: State) {
        match (self.state(), to) {
            (State::Backup, State::Master) => self.become_master(now, Reason::SyncGroup),
            (State::Master, State::Backup) => {
                self.master_interval = self.config.interval;
                self.recompute_timers();
                self.enter_backup(now, Reason::SyncGroup, None);
            }
            (State::Backup | State::Master, State::Initialize) => self.stop(now, Reason::SyncGroup),
            (State::Initialize, State::Backup) if self.wanted && self.link == LinkState::Up => {
                self.start(now);
            }
            _ => {}
        }
    }

    // ----- internals -----

    fn interval_duration(&self) -> Duration {
        Duration::from_micros(self.config.interval.as_micros())
    }

    fn effective_priority(&self) -> Priority {
        let base = self.base_priority;
        if base.is_owner() {
            return base;
        }
        let mut p = i32::from(base.get());
        for (t, s) in self.config.tracks.iter().zip(self.tracks.iter()) {
            let w = i32::from(t.weight);
            let applies = match s {
                TrackState::Up => w > 0,
                TrackState::Down => w < 0,
            };
            if applies {
                p += w;
            }
        }
        Priority(p.clamp(1, 254) as u8)
    }

    fn apply_priority(&mut self, p: Priority) {
        if p != self.advert.priority() {
            self.advert = self.advert.clone().with_priority(p);
        }
        self.priority = p;
        self.recompute_timers();
    }

    fn reprioritise(&mut self, now: Instant) {
        let p = self.effective_priority();
        if p == self.priority {
            return;
        }
        self.apply_priority(p);
        if let Role::Master(mut m) = self.role {
            self.queue_advert(p);
            m.adver_at = now + self.interval_duration();
            self.role = Role::Master(m);
        }
    }

    fn recompute_timers(&mut self) {
        let v = self.config.version;
        self.skew = timer::skew_time(v, self.priority, self.master_interval);
        self.down_interval = timer::master_down_interval(v, self.priority, self.master_interval);
    }

    fn preempts(&self) -> bool {
        self.config.preempt == Preempt::Enabled || self.priority.is_owner()
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= EVENT_QUEUE {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn queue_advert(&mut self, p: Priority) {
        if self.link == LinkState::Down {
            return;
        }
        // An identical advertisement not yet started replaces nothing new.
        let started_back = self.tx.len() == 1 && self.tx_peer > 0;
        if self.tx.back() == Some(&p) && !started_back {
            return;
        }
        if self.tx.len() >= TRANSMIT_QUEUE {
            self.stats.tx_queue_full += 1;
            return;
        }
        self.tx.push_back(p);
    }

    fn next_garp(&self, now: Instant, sent: u8) -> Option<Instant> {
        let g = self.config.gratuitous;
        if sent < g.count {
            Some(now + g.spacing)
        } else {
            g.refresh.map(|r| now + r)
        }
    }

    fn transition(&mut self, from: State, to: State, reason: Reason) {
        self.stats.count_transition(from, to, reason);
        self.push_event(Event::StateChange { from, to, reason });
        if from == State::Master {
            self.push_event(Event::ReleaseAddresses);
            if self.accept_on {
                self.accept_on = false;
                self.push_event(Event::AcceptMode(false));
            }
        }
    }

    fn start(&mut self, now: Instant) {
        // RFC 9568 §6.4.1: Master_Adver_Interval := Advertisement_Interval.
        self.master_interval = self.config.interval;
        self.recompute_timers();
        let delay = self.config.startup_delay;
        // A Passive owner waits for a takeover like any Passive Backup.
        if self.priority.is_owner() && delay.is_zero() && self.backup_mode == BackupMode::Active {
            self.become_master(now, Reason::Owner);
        } else {
            let hold = (!delay.is_zero()).then(|| now + delay);
            self.enter_backup(now, Reason::Startup, hold);
        }
    }

    fn stop(&mut self, now: Instant, reason: Reason) {
        let _ = now;
        let from = self.state();
        if from == State::Initialize {
            return;
        }
        if from == State::Master && reason != Reason::LinkDown {
            // RFC 9568 §6.4.3 Shutdown: send priority 0.
            self.queue_advert(Priority::RELEASE);
        }
        self.role = Role::Initialize;
        self.armed = false;
        self.master_heard = None;
        self.transition(from, State::Initialize, reason);
    }

    fn enter_backup(&mut self, now: Instant, reason: Reason, hold_until: Option<Instant>) {
        let from = self.state();
        let down_at = match self.backup_mode {
            BackupMode::Active => {
                let t = now + self.down_interval;
                Some(match hold_until {
                    Some(h) if h > t => h,
                    _ => t,
                })
            }
            BackupMode::Passive => None,
        };
        self.role = Role::Backup(BackupTimers {
            down_at,
            cause: Reason::MasterDown,
            hold_until,
            preempt_after: None,
        });
        self.armed = false;
        self.master_heard = None;
        self.transition(from, State::Backup, reason);
    }

    fn become_master(&mut self, now: Instant, reason: Reason) {
        let from = self.state();
        let g = self.config.gratuitous;
        let sent = u8::from(g.count > 0);
        self.role = Role::Master(MasterTimers {
            adver_at: now + self.interval_duration(),
            garp_at: self.next_garp(now, sent),
            garp_sent: sent,
        });
        self.armed = false;
        self.master_heard = None;
        // RFC 9568 §6.4.2: send an ADVERTISEMENT, then announce.
        self.queue_advert(self.priority);
        self.transition(from, State::Master, reason);
        self.push_event(Event::ClaimAddresses);
        if self.config.accept == crate::config::AcceptMode::Enabled || self.priority.is_owner() {
            self.accept_on = true;
            self.push_event(Event::AcceptMode(true));
        }
        if sent > 0 {
            self.push_event(Event::SendGratuitous(Gratuitous::Burst {
                index: 1,
                count: g.count,
            }));
        }
    }

    fn poll_wrapped(&mut self, buf: &mut [u8], wrap: Wrap) -> Option<Transmit> {
        loop {
            let p = *self.tx.front()?;
            let npeers = self.config.peers.len();
            let dst = match self.config.peers.get(self.tx_peer) {
                Some(d) => *d,
                None => match self.config.family() {
                    Family::Ipv4 => IpAddr::V4(IPV4_GROUP),
                    Family::Ipv6 => IpAddr::V6(IPV6_GROUP),
                },
            };
            self.tx_peer += 1;
            if self.tx_peer >= npeers.max(1) {
                self.tx_peer = 0;
                self.tx.pop_front();
            }
            let ends = Endpoints {
                src: self.config.primary,
                dst,
            };
            let form = self.config.checksum;
            let other;
            let adv = if p == self.advert.priority() {
                &self.advert
            } else if p == Priority::RELEASE {
                &self.release_advert
            } else {
                other = self.advert.clone().with_priority(p);
                &other
            };
            let r = match wrap {
                Wrap::Message => adv.emit(buf, ends, form),
                Wrap::Datagram => {
                    // Numbered here, as keepalived numbers its own: an
                    // identification of 0 has a Linux raw socket pick one
                    // per datagram (a keyed hash and a shared counter).
                    // VRRP is never fragmented, so a number that wraps
                    // within a few minutes does no harm.
                    let id = self.ident;
                    self.ident = self.ident.checked_add(1).unwrap_or(1);
                    adv.emit_datagram_identified(buf, ends, form, id)
                }
            };
            match r {
                Ok(len) => {
                    self.stats.tx_advertisements += 1;
                    if p == Priority::RELEASE {
                        self.stats.tx_priority_zero += 1;
                    }
                    return Some(Transmit {
                        len,
                        src: ends.src,
                        dst,
                    });
                }
                Err(_) => self.stats.tx_buffer_too_small += 1,
            }
        }
    }

    fn drop_config(&mut self, why: ConfigDrop) -> Result<(), RecvError> {
        self.stats.count_config(why);
        Err(RecvError::Config(why))
    }

    fn addresses_match(&self, got: &[u8], family: Family) -> bool {
        if got == self.address_bytes.as_slice() {
            return true;
        }
        if got.len() != self.address_bytes.len() {
            return false;
        }
        // Same count, another order: compare as sets.
        let n = family.address_len();
        got.chunks_exact(n)
            .all(|a| self.address_bytes.chunks_exact(n).any(|b| a == b))
    }

    /// RFC 9568 §7.1 / RFC 3768 §7.1: the rules that need configuration,
    /// then the state machine.
    fn receive(&mut self, now: Instant, p: &Packet<&[u8]>, src: IpAddr) -> Result<(), RecvError> {
        if matches!(self.role, Role::Initialize) {
            return self.drop_config(ConfigDrop::NotRunning);
        }
        let cfg = &self.config;
        if p.version() != cfg.version {
            return self.drop_config(ConfigDrop::Version);
        }
        if p.family() != cfg.family() {
            return self.drop_config(ConfigDrop::Addresses);
        }
        // RFC 9568 §7.1: the VRID must be configured here.
        if p.vrid() != cfg.vrid.get() {
            return self.drop_config(ConfigDrop::Vrid);
        }
        if cfg.version == Version::V2 {
            // RFC 2338 §7.1 (kept by deployed VRRPv2): type and key match.
            let got = match p.auth_type() {
                Some(1) => Auth::Simple(p.auth_data().unwrap_or_default()),
                Some(0) | None => Auth::None,
                Some(_) => return self.drop_config(ConfigDrop::Auth),
            };
            if !got.matches(&cfg.auth) {
                return self.drop_config(ConfigDrop::Auth);
            }
        }
        if src == cfg.primary {
            return self.drop_config(ConfigDrop::Own);
        }
        if !cfg.peers.is_empty() && !cfg.peers.contains(&src) {
            return self.drop_config(ConfigDrop::Peer);
        }
        let prio = Priority(p.priority());
        // RFC 9568 §7.1: count and list must match unless the owner sent it.
        if !self.addresses_match(p.address_bytes(), cfg.family()) {
            if prio.is_owner() {
                self.stats.rx_address_mismatch_owner += 1;
            } else {
                return self.drop_config(ConfigDrop::Addresses);
            }
        }
        let cfg = &self.config;
        let interval = match cfg.version {
            // RFC 3768 §7.1: the interval must be the configured one.
            Version::V2 => {
                if p.interval_centis() != cfg.interval.as_centis() {
                    return self.drop_config(ConfigDrop::Interval);
                }
                cfg.interval
            }
            Version::V3 => Interval::from_centis(p.interval_centis()).unwrap_or(cfg.interval),
        };
        self.stats.rx_accepted += 1;
        if prio == Priority::RELEASE {
            self.stats.rx_priority_zero += 1;
        }
        self.on_advertisement(now, prio, interval, src);
        Ok(())
    }

    fn adopt_interval(&mut self, interval: Interval) {
        // RFC 9568 §6.4.2 / §6.4.3: Master_Adver_Interval := Adver Interval.
        if self.config.version == Version::V3 && self.master_interval != interval {
            self.master_interval = interval;
            self.recompute_timers();
        }
    }

    fn heard(&mut self, src: IpAddr, prio: Priority) {
        if self.master_heard != Some((src, prio)) {
            self.master_heard = Some((src, prio));
            self.push_event(Event::MasterHeard {
                address: src,
                priority: prio,
            });
        }
    }

    fn on_advertisement(&mut self, now: Instant, prio: Priority, interval: Interval, src: IpAddr) {
        match self.role {
            Role::Initialize => {}
            Role::Backup(mut b) => {
                if self.backup_mode == BackupMode::Passive {
                    if !self.armed {
                        self.stats.rx_ignored_passive += 1;
                        return;
                    }
                    if prio != Priority::RELEASE {
                        // Armed: the Master still speaks; keep watching.
                        b.down_at = Some(now + self.down_interval);
                        b.cause = Reason::ArmedTakeover;
                        self.role = Role::Backup(b);
                        self.heard(src, prio);
                        return;
                    }
                }
                if prio == Priority::RELEASE {
                    if self.armed {
                        self.become_master(now, Reason::ArmedTakeover);
                        return;
                    }
                    // RFC 9568 §6.4.2: priority 0: Master_Down_Timer := Skew_Time.
                    b.down_at = Some(now + self.skew);
                    b.cause = Reason::MasterReleased;
                    self.role = Role::Backup(b);
                    return;
                }
                if self.preempts() && prio < self.priority {
                    let delay = self.config.preempt_delay;
                    let deferring =
                        !delay.is_zero() && now < *b.preempt_after.get_or_insert(now + delay);
                    if !deferring {
                        // RFC 9568 §6.4.2: preempt: discard.
                        self.stats.rx_preempt_discards += 1;
                        b.cause = Reason::Preempt;
                        self.role = Role::Backup(b);
                        return;
                    }
                } else {
                    b.preempt_after = None;
                }
                // RFC 9568 §6.4.2: accept: adopt interval, reset the timer.
                self.adopt_interval(interval);
                b.down_at = Some(now + self.down_interval);
                b.cause = Reason::MasterDown;
                self.role = Role::Backup(b);
                self.heard(src, prio);
            }
            Role::Master(mut m) => {
                if prio == Priority::RELEASE {
                    // RFC 9568 §6.4.3: send an ADVERTISEMENT, reset Adver_Timer.
                    self.queue_advert(self.priority);
                    m.adver_at = now + self.interval_duration();
                    self.role = Role::Master(m);
                    return;
                }
                let higher =
                    prio > self.priority || (prio == self.priority && src > self.config.primary);
                if higher {
                    // RFC 9568 §6.4.3: to Backup, Master_Down_Timer running.
                    self.adopt_interval(interval);
                    self.enter_backup(now, Reason::HigherPriority, None);
                    self.heard(src, prio);
                } else {
                    // RFC 9568 §6.4.3: a lower priority is answered at once,
                    // so that a split brain heals within one interval.
                    self.queue_advert(self.priority);
                    m.adver_at = now + self.interval_duration();
                    self.role = Role::Master(m);
                }
            }
        }
    }
}
