//! The pair engine: one node of a redundant pair as one Sans-IO engine
//! (features `vrrp` and `sync`).
//!
//! [`Pair`] composes the node's election (a `vrrp-fsm` `VirtualRouter`),
//! the [`Orchestrator`], and a [`SyncLink`], the sync tool's engine: the
//! control of the peer link (who dials, redial backoff, the handshake
//! deadline, which connection is the link) and of replication (which
//! `sync-delta` session runs, when a round must run now, when the round in
//! progress is settled), to which the pair adds its own channels and the
//! role the election gives. Every policy that ties those together is here,
//! so that a driver only moves bytes, runs commands and does file work:
//!
//! - the election's state changes become the orchestrator's role changes
//!   ([`convert`], the one exhaustive mapping);
//! - the orchestrator's election commands (arm, release, step down, backup
//!   mode) and sync commands (sync now, settle) are carried out here; the
//!   rest (address, services, phones, hooks) go to the driver;
//! - Master serves its tree, an Active Backup pulls every interval, a
//!   Passive Backup pulls only when asked (every swap first runs a round
//!   into the Backup, whatever its mode);
//! - the address is announced by one owner: the takeover plan's announce
//!   step, after the address is claimed, and the election's repeats while
//!   it is held ([`Output::Announce`]);
//! - a takeover re-homes phones whenever this node had heard a Master
//!   before (on the VRRP link or from the peer), peer link or not;
//! - lost advertisements do not move the address: when the election makes
//!   a Backup Master while the peer link last said the peer serves as
//!   Master, the node probes the peer and holds the takeover until it
//!   stops answering (within one advertisement interval, 2-100 ms, or
//!   two of the link's round trips, measured every 5 s, if longer), says
//!   it serves no more, or the link drops;
//! - with redundancy off the node sends no VRRP and keeps no peer link: a
//!   standalone Master. Switching it back on starts the election as Master,
//!   like a healed partition: the higher priority keeps the role.
//!
//! # Driver contract
//!
//! 1. Build with [`Pair::new`] from the persisted [`PersistentState`]
//!    ([`PersistentState::default`] on first boot), the monotonic `now` and
//!    the wall clock.
//! 2. Feed inputs with `now`: VRRP packets ([`Pair::handle_vrrp_message`] /
//!    [`Pair::handle_vrrp_datagram`]), the peer link's connections and
//!    bytes ([`Pair::handle_dialed`], [`Pair::handle_accepted`],
//!    [`Pair::handle_link_bytes`], [`Pair::handle_link_closed`]), command
//!    results, phone registrations, operator requests, the [`SyncWorker`]'s
//!    messages and reports, and the wall clock from time to time. An
//!    accepted connection comes with its source address (the engine
//!    limits how many handshakes wait per address and in all, and closes
//!    the rest at once); read at most [`Pair::link_receive_window`] bytes
//!    from a connection before each [`Pair::handle_link_bytes`] (1 KiB
//!    until its peer proved the key).
//! 3. After every input, drain [`Pair::poll_output`] until it returns
//!    [`Output::Wait`], doing each output in order. The order is the
//!    contract: a [`Output::Persist`] record must be durable before any
//!    output after it is carried out (crash safety). The [`SyncWorker`]
//!    is an engine of its own: its messages and reports are inputs here,
//!    and after feeding them, drain again (its deadline is its own, too).
//!    Call its `poll_transmit` while the link's send queue has room: that
//!    is the source's flow control.
//! 4. Call [`Pair::handle_timeout`] at the instant [`Output::Wait`] gave
//!    (earlier is harmless).
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use failover_orchestrator::pair::{LinkConfig, Output, Pair, PairConfig};
//! use failover_orchestrator::{Config, Identity, PersistentState, ProtocolVersion};
//! use sync_delta::frame::PreSharedKey;
//! use vrrp_proto::{Priority, Version, Vrid};
//!
//! let identity = Identity {
//!     node_id: "pbx-a".into(),
//!     firmware: "5.1.30".into(),
//!     language_pack: "en".into(),
//!     licences: vec![],
//!     protocol: ProtocolVersion::CURRENT,
//! };
//! let primary = std::net::Ipv4Addr::new(127, 0, 0, 1).into();
//! let vrrp = vrrp_fsm::Config::builder(Version::V3, Vrid::new(1).unwrap(), primary)
//!     .priority(Priority(200))
//!     .address(std::net::Ipv4Addr::new(127, 0, 0, 100))
//!     .build()
//!     .unwrap();
//! let config = PairConfig {
//!     vrrp,
//!     orchestrator: Config::builder(identity).build().unwrap(),
//!     // 32 random bytes, the same on both units (weak keys are refused).
//!     link: LinkConfig::new(PreSharedKey::new(*b"k0Tq9vX2LmZ8aB3nR7yC1eW5uH4sJ6dF").unwrap(), true),
//!     vrrp_datagrams: false,
//! };
//! let now = Instant::now();
//! let mut pair = Pair::new(config, PersistentState::default(), now, SystemTime::now());
//! loop {
//!     match pair.poll_output() {
//!         Output::Wait(deadline) => {
//!             // Sleep until `deadline` or the next socket event.
//!             assert!(deadline.is_some());
//!             break;
//!         }
//!         Output::Persist(record) => { /* write it durably */ }
//!         Output::Vrrp(packet) => { /* send packet.bytes to packet.dst */ }
//!         other => { /* dial, send, run the command, order the sync worker, log */ }
//!     }
//! }
//! ```

mod config;
pub mod convert;
mod inline;
mod link;
mod sync;
mod sync_link;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use sync_delta::frame::CHANNEL_PEER;

/// The peer-link channel of the pair engine's beacon: one byte, the role
/// the sender serves in (0 Initialize, 1 Backup, 2 Master), sent when the
/// link comes up, at each role change, and in answer to a probe (255).
pub const CHANNEL_BEACON: u8 = 2;
/// The peer-link channel the driver may use for its own bulk transfers
/// (a firmware image the Master hands its Backup, say): opaque to the
/// engine, encrypted, authenticated and ordered like everything on the
/// link. Send with [`Pair::send_transfer`]; what the peer sent comes out as
/// [`Output::Transfer`].
pub const CHANNEL_TRANSFER: u8 = 3;
const BEACON_INITIALIZE: u8 = 0;
const BEACON_BACKUP: u8 = 1;
const BEACON_MASTER: u8 = 2;
const BEACON_PROBE: u8 = 255;

/// Requests and replies kept for the peer while the link is down.
const HELD_MESSAGES: usize = 64;
/// How often the link's round trip is measured (one probe and its
/// answer), starting when the link comes up.
const RTT_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
use vrrp_fsm::VirtualRouter;
use vrrp_proto::RecvMeta;

pub use inline::{InlinePair, SYNC_BACKLOG_LIMIT};
use link::link_inputs;
pub use link::{CloseReason, ConnId, LinkConfig, LinkFailure, LinkStats, PendingHandshake};
pub use sync::{
    ForPeer, GenerationStatus, RoundSummary, SyncConfig, SyncOrder, SyncReport, SyncRole,
    SyncWorker,
};
pub use sync_link::{SyncLink, SyncLinkEvent, SyncLinkOutput, SyncLinkStats};

use crate::command::{Command, CommandId, CommandOutcome, Issued};
use crate::engine::{Event, Orchestrator};
use crate::journal::{JournalRecord, PersistentState};
use crate::procedure::{OperatorRequest, PreflightError};
use crate::types::{PhoneId, Redundancy, Role, SyncStatus};
use crate::wire::PeerBody;

/// Everything a node of the pair is configured with.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// The election (priority and backup mode are overridden by the
    /// persisted state).
    pub vrrp: vrrp_fsm::Config,
    /// Services, phones, timeouts.
    pub orchestrator: crate::Config,
    /// The peer link.
    pub link: LinkConfig,
    /// Send VRRP as whole IP datagrams (raw IPv4 sockets) instead of bare
    /// messages (UDP, raw IPv6).
    pub vrrp_datagrams: bool,
}

/// A VRRP message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpPacket {
    /// The address to send from.
    pub src: IpAddr,
    /// The VRRP group or a unicast peer.
    pub dst: IpAddr,
    /// The message (or the whole datagram with
    /// [`PairConfig::vrrp_datagrams`]).
    pub bytes: PacketBytes,
}

/// The bytes of a [`VrrpPacket`]: up to [`PacketBytes::INLINE`] bytes held
/// in place, longer ones on the heap. An advertisement goes out every
/// advertisement interval (100 a second at 10 ms) and most are a few dozen
/// bytes: this keeps the steady state free of an allocation per packet.
/// Derefs to `[u8]`.
#[derive(Clone)]
pub struct PacketBytes(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        buf: [u8; PacketBytes::INLINE],
    },
    Heap(Vec<u8>),
}

impl PacketBytes {
    /// The longest packet held in place: an IPv4 datagram with 20
    /// addresses, or an IPv6 message with 7.
    pub const INLINE: usize = 128;

    /// A copy of `bytes`.
    #[must_use]
    pub fn copy_from(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= Self::INLINE => {
                let mut buf = [0u8; Self::INLINE];
                buf[..bytes.len()].copy_from_slice(bytes);
                Self(Repr::Inline { len, buf })
            }
            _ => Self(Repr::Heap(bytes.to_vec())),
        }
    }

    /// The bytes as a vector.
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Inline { .. } => self.to_vec(),
            Repr::Heap(v) => v,
        }
    }
}

impl std::ops::Deref for PacketBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(v) => v,
        }
    }
}

impl AsRef<[u8]> for PacketBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for PacketBytes {
    fn eq(&self, o: &Self) -> bool {
        **self == **o
    }
}

impl Eq for PacketBytes {}

impl std::fmt::Debug for PacketBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<PacketBytes> for Vec<u8> {
    fn from(b: PacketBytes) -> Self {
        b.into_vec()
    }
}

/// What happened, for logs and the UI.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PairEvent {
    /// The election's report (state changes, the Master heard, …).
    Election(vrrp_fsm::Event),
    /// The orchestrator's report (plans, steps, milestones, …).
    Orchestrator(Event),
    /// An authenticated peer link is up.
    LinkUp,
    /// It went down.
    LinkDown,
    /// A connection never became the link: the peer holds another key,
    /// the handshake timed out, the dial failed (its words are the
    /// failure's `Display`). A dialling node tries again after its
    /// backoff.
    LinkFailed {
        /// Which connection.
        conn: ConnId,
        /// Why.
        why: LinkFailure,
        /// Its source address, for an accepted connection (`None`: this
        /// node dialled it). Failures of accepted connections are paced:
        /// see [`SyncLinkEvent::LinkFailed`].
        from: Option<IpAddr>,
    },
    /// Failures of accepted connections not reported one by one (see
    /// [`SyncLinkEvent::LinkFailuresSuppressed`]).
    LinkFailuresSuppressed {
        /// How many.
        count: u64,
        /// From how many source addresses (counted up to 64).
        sources: u64,
    },
    /// The sync worker's report (rounds, refusals, failures).
    Sync(SyncReport),
    /// Redundancy was switched on or off.
    Redundancy(Redundancy),
}

/// One line for a log, the engines' own lines: `Backup -> Master
/// (MasterDown)`, `plan Takeover started (plan 1)`, `peer link up`,
/// `sync round committed generation 3 (…)`, ….
impl std::fmt::Display for PairEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairEvent::Election(e) => e.fmt(f),
            PairEvent::Orchestrator(e) => e.fmt(f),
            PairEvent::LinkUp => f.write_str("peer link up"),
            PairEvent::LinkDown => f.write_str("peer link down"),
            PairEvent::LinkFailed {
                conn,
                why,
                from: Some(from),
            } => write!(
                f,
                "peer link connection {} from {from} failed: {why}",
                conn.0
            ),
            PairEvent::LinkFailed {
                conn,
                why,
                from: None,
            } => write!(f, "peer link connection {} failed: {why}", conn.0),
            PairEvent::LinkFailuresSuppressed { count, sources } => write!(
                f,
                "peer link: {count} more failed connections from {sources} addresses \
                 (not reported one by one)"
            ),
            PairEvent::Sync(r) => r.fmt(f),
            PairEvent::Redundancy(Redundancy::Enabled) => f.write_str("redundancy enabled"),
            PairEvent::Redundancy(Redundancy::Disabled) => f.write_str("redundancy disabled"),
        }
    }
}

/// The driver's next step. [`Pair::poll_output`] returns them in the
/// order they must be carried out, ending with [`Output::Wait`].
///
/// Exhaustive on purpose: every output is work the driver must do, so a
/// new kind must fail to compile in a driver rather than fall into a
/// catch-all arm.
#[derive(Debug)]
pub enum Output {
    /// Persist this record durably (replace the state, append the entry)
    /// before carrying out anything after it.
    Persist(JournalRecord),
    /// Send this VRRP message.
    Vrrp(VrrpPacket),
    /// Announce the virtual addresses now (gratuitous ARP / unsolicited
    /// NA for each).
    Announce,
    /// Carry out this command and answer [`Pair::handle_command_result`]
    /// with its id: the address, services, phones, node checks and the
    /// vendor's hooks. [`Command::RestartNode`] is answered by the restart
    /// itself: reboot (the engine resumes from the persisted state), or
    /// call [`Pair::soft_restart`] to restart in-process.
    Command(Issued),
    /// Open a connection to the peer; answer [`Pair::handle_dialed`] or
    /// [`Pair::handle_dial_failed`].
    Dial(ConnId),
    /// Write these bytes on the connection.
    Send {
        /// Which connection.
        conn: ConnId,
        /// What to write.
        bytes: Vec<u8>,
    },
    /// Close the connection, then report it with
    /// [`Pair::handle_link_closed`] like any other end.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why, for the log.
        reason: CloseReason,
    },
    /// Give this order to the [`SyncWorker`].
    Sync(SyncOrder),
    /// A payload the peer's driver sent on [`CHANNEL_TRANSFER`]
    /// ([`Pair::send_transfer`]), in order; the engine does not read it.
    Transfer(Vec<u8>),
    /// For logs and the UI.
    Event(PairEvent),
    /// Nothing more to do until this instant (or the next input).
    Wait(Option<Instant>),
}

/// Counters of the pair engine itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairStats {
    /// VRRP packets ignored because redundancy is off.
    pub vrrp_ignored: u64,
    /// Sync messages from the peer that did not decode (the connection is
    /// closed and started over).
    pub sync_decode_errors: u64,
    /// Orchestrator messages from the peer that did not decode.
    pub peer_decode_errors: u64,
    /// Frames on a channel this engine does not use.
    pub unknown_channel: u64,
    /// Election commands the router refused (answered as failed).
    pub refused_by_router: u64,
    /// Announcements of the election that came while the address was not
    /// held (the takeover plan announces once it holds it).
    pub announcements_deferred: u64,
    /// Takeovers held back because the peer link showed the Master alive
    /// (advertisements lost on the VRRP link).
    pub takeovers_deferred: u64,
    /// Beacons from the peer that did not decode.
    pub bad_beacons: u64,
    /// Requests and replies held for a link that stayed down too long (the
    /// oldest are dropped past the limit).
    pub held_dropped: u64,
    /// Commands the orchestrator issued under an epoch older than one it
    /// had already journaled, the ones carried out here included (never
    /// expected: the whole-pair simulation checks that it stays 0).
    pub stale_commands: u64,
}

/// Where the answer of a command carried out by the sync worker goes.
#[derive(Debug, Clone, Copy)]
enum SyncWait {
    Settle(CommandId),
    RoundNow(CommandId),
}

/// One node of a redundant pair (see the module docs).
#[derive(Debug)]
pub struct Pair {
    config: PairConfig,
    router: Option<VirtualRouter>,
    orch: Orchestrator,
    /// The peer link and the sync worker's orders, run like the sync
    /// tool's with the role the election gives.
    link: SyncLink,
    sync_waits: HashMap<u64, SyncWait>,
    /// Commands whose result changes whether the address is held.
    address_commands: HashMap<CommandId, bool>,
    address_held: bool,
    /// The election restarts as Master (redundancy re-enabled): its way
    /// there is not reported to the orchestrator.
    quiet_start: bool,
    /// The peer's last beacon on the peer link: when, and the role it
    /// serves in.
    peer_beacon: Option<(Instant, Role)>,
    /// Requests and replies for the peer while the link is down.
    held: VecDeque<crate::wire::PeerMessage>,
    /// The election made this node Master while the peer link said the
    /// peer serves as Master: not reported until the peer stops vouching.
    vetoed: bool,
    /// When the last probe went out, while a takeover is held back.
    probe_sent_at: Option<Instant>,
    /// When to probe again (the last one was answered).
    next_probe: Option<Instant>,
    /// The peer link's round trip, from probes and their answers: the
    /// longest of the recent ones (a longer one counts at once, a shorter
    /// one lowers it by an eighth at a time). A held-back takeover waits
    /// two of them for the peer's answer.
    link_rtt: Option<std::time::Duration>,
    /// A probe out to measure the round trip: when it went.
    rtt_probe_at: Option<Instant>,
    /// When to measure the round trip next.
    next_rtt_probe: Option<Instant>,
    /// The replica's last round the mass-deletion guard refused, until a
    /// round commits or the node stops being a replica.
    sync_refused: Option<sync_delta::Refusal>,
    out: VecDeque<Output>,
    /// Results of commands carried out here, fed back in order.
    results: VecDeque<(CommandId, CommandOutcome)>,
    tx: Vec<u8>,
    stats: PairStats,
}

impl Pair {
    /// A node from its configuration and persisted state. With redundancy
    /// off it starts as a standalone Master (no VRRP, no peer link).
    #[must_use]
    pub fn new(
        config: PairConfig,
        persisted: PersistentState,
        now: Instant,
        wall: SystemTime,
    ) -> Pair {
        let redundancy = persisted.redundancy;
        let epoch = persisted.highest_epoch;
        let orch = Orchestrator::new(config.orchestrator.clone(), persisted, now, wall);
        let link = SyncLink::for_pair(config.link.clone(), epoch.into());
        let tx = vec![0u8; 2048];
        let mut pair = Pair {
            config,
            router: None,
            orch,
            link,
            sync_waits: HashMap::new(),
            address_commands: HashMap::new(),
            address_held: false,
            quiet_start: false,
            peer_beacon: None,
            held: VecDeque::new(),
            vetoed: false,
            probe_sent_at: None,
            next_probe: None,
            link_rtt: None,
            rtt_probe_at: None,
            next_rtt_probe: None,
            sync_refused: None,
            out: VecDeque::new(),
            results: VecDeque::new(),
            tx,
            stats: PairStats::default(),
        };
        if redundancy == Redundancy::Enabled {
            pair.start_election(now, false);
        }
        pair.pump(now);
        pair
    }

    /// A new election engine with the persisted priority and mode.
    fn start_election(&mut self, now: Instant, as_master: bool) {
        let mut r = VirtualRouter::new(self.config.vrrp.clone(), now);
        let state = self.orch.persistent_state();
        if let Some(p) = state.priority {
            // A persisted priority outside 1..=254 is ignored: the
            // configured one stays.
            let _ = r.set_priority(now, vrrp_proto::Priority(p));
        }
        r.set_backup_mode(now, state.backup_mode.into());
        r.handle_startup(now);
        if as_master && r.state() == vrrp_fsm::State::Backup {
            // Re-enabled on a standalone Master: it keeps the role and the
            // election decides like after a healed partition.
            self.quiet_start = r.takeover(now).is_ok();
        }
        let size = r.max_transmit_len().max(64) + 64;
        if self.tx.len() < size {
            self.tx.resize(size, 0);
        }
        self.router = Some(r);
        self.link.set_enabled(now, true);
    }

    // ----------------------------------------------------------------
    // Inputs

    /// The wall clock now (for journal and timeline times, and the age of
    /// generations); give it from time to time.
    pub fn handle_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        self.orch.handle_wall_clock(now, wall);
        self.pump(now);
    }

    /// A bare VRRP message with its receive metadata (UDP, raw IPv6).
    ///
    /// # Errors
    /// The election's [`vrrp_fsm::RecvError`] for a packet it drops
    /// (counted in its stats). With redundancy off the packet is ignored.
    pub fn handle_vrrp_message(
        &mut self,
        now: Instant,
        message: &[u8],
        meta: RecvMeta,
    ) -> Result<(), vrrp_fsm::RecvError> {
        let Some(r) = &mut self.router else {
            self.stats.vrrp_ignored += 1;
            return Ok(());
        };
        let res = r.handle_message(now, message, meta);
        self.pump(now);
        res
    }

    /// A whole VRRP datagram (raw IPv4 sockets, captures).
    ///
    /// # Errors
    /// As [`Pair::handle_vrrp_message`].
    pub fn handle_vrrp_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Result<(), vrrp_fsm::RecvError> {
        let Some(r) = &mut self.router else {
            self.stats.vrrp_ignored += 1;
            return Ok(());
        };
        let res = r.handle_datagram(now, datagram);
        self.pump(now);
        res
    }

    link_inputs!("Output");

    /// The result of an [`Output::Command`].
    pub fn handle_command_result(&mut self, now: Instant, id: CommandId, outcome: CommandOutcome) {
        if let Some(claim) = self.address_commands.remove(&id) {
            if outcome == CommandOutcome::Done {
                self.address_held = claim;
            } else if !claim {
                // A failed release leaves the address in an unknown state;
                // count it as gone so that no announcement follows.
                self.address_held = false;
            }
        }
        self.orch.handle_command_result(now, id, outcome);
        self.pump(now);
    }

    /// The registrar saw a phone register with this node.
    pub fn handle_phone_registered(&mut self, now: Instant, phone: PhoneId) {
        self.orch.handle_phone_registered(now, phone);
        self.pump(now);
    }

    /// A phone's action was carried out (or the address it follows
    /// announced) and its registration cannot be checked (see
    /// [`Orchestrator::handle_phone_unchecked`]).
    pub fn handle_phone_unchecked(&mut self, now: Instant, phone: PhoneId) {
        self.orch.handle_phone_unchecked(now, phone);
        self.pump(now);
    }

    /// An operator request, answered after preflight.
    ///
    /// # Errors
    /// The [`PreflightError`] that refuses it; nothing starts then.
    pub fn handle_operator(
        &mut self,
        now: Instant,
        request: OperatorRequest,
    ) -> Result<u64, PreflightError> {
        let r = self.orch.handle_operator(now, request);
        self.pump(now);
        r
    }

    /// A message from the [`SyncWorker`] for the peer (dropped when the
    /// worker made it before it was told of the peer link's last change).
    pub fn handle_sync_message(&mut self, now: Instant, message: &ForPeer) {
        self.link.handle_sync_message(now, message);
        self.pump(now);
    }

    /// A report from the [`SyncWorker`]. A round that left the session's
    /// stream out of step closes the link, which starts over.
    pub fn handle_sync_report(&mut self, now: Instant, report: SyncReport) {
        match &report {
            SyncReport::Refused(why) => self.sync_refused = Some(*why),
            SyncReport::RoundDone(_) => self.sync_refused = None,
            SyncReport::Status(st) => self.sync_status(now, *st),
            SyncReport::Done { id, result } => {
                if let Some(wait) = self.sync_waits.remove(id) {
                    if let Ok(st) = result {
                        self.sync_status(now, *st);
                    }
                    let (cid, outcome) = match (wait, result) {
                        (SyncWait::Settle(c) | SyncWait::RoundNow(c), Ok(_)) => {
                            (c, CommandOutcome::Done)
                        }
                        // Nothing to settle: the tree is whole as it is.
                        (SyncWait::Settle(c), Err(_)) if self.link.role() == SyncRole::Idle => {
                            (c, CommandOutcome::Done)
                        }
                        (SyncWait::Settle(c), Err(_)) => (c, CommandOutcome::Failed { code: 6 }),
                        (SyncWait::RoundNow(c), Err(_)) => (c, CommandOutcome::Failed { code: 8 }),
                    };
                    self.orch.handle_command_result(now, cid, outcome);
                }
            }
            _ => {}
        }
        self.link.handle_sync_report(now, report);
        self.pump(now);
    }

    fn sync_status(&mut self, now: Instant, st: GenerationStatus) {
        if let Some(taken_at) = st.taken_at {
            self.orch.handle_sync_status(
                now,
                SyncStatus {
                    generation: st.number,
                    taken_at,
                    round_in_progress: st.round_in_progress,
                },
            );
        }
    }

    /// The operator confirms the deletions the mass-deletion guard held
    /// back ([`SyncReport::Refused`], [`Pair::sync_refused`]): the next
    /// round goes through, now. False, and nothing done, when no refused
    /// round waits for a confirmation (a confirmation is for what the
    /// operator saw, never for a later round).
    pub fn confirm_deletions(&mut self, now: Instant) -> bool {
        if self.sync_refused.is_none() {
            return false;
        }
        self.link.confirm_deletions(now);
        self.pump(now);
        true
    }

    /// The round the mass-deletion guard refused last, while this node is
    /// a replica and no round has committed since: what the operator
    /// confirms with [`Pair::confirm_deletions`].
    #[must_use]
    pub fn sync_refused(&self) -> Option<sync_delta::Refusal> {
        self.sync_refused
    }

    /// Timers due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = &mut self.router
            && r.poll_timeout().is_some_and(|t| t <= now)
        {
            r.handle_timeout(now);
        }
        if self.orch.poll_timeout().is_some_and(|t| t <= now) {
            self.orch.handle_timeout(now);
        }
        self.link.handle_timeout(now);
        if self.vetoed && self.next_probe.is_some_and(|t| t <= now) {
            self.send_probe(now);
        }
        if self.next_rtt_probe.is_some_and(|t| t <= now) {
            self.next_rtt_probe = Some(now + RTT_PROBE_EVERY);
            if self.link.link_up() && self.rtt_probe_at.is_none() {
                self.rtt_probe_at = Some(now);
                self.link.send(CHANNEL_BEACON, &[BEACON_PROBE]);
            }
        }
        self.pump(now);
    }

    /// How long a probe waits for the peer's answer: one advertisement
    /// interval, within 2 ms and 100 ms, or two of the link's measured
    /// round trips if that is longer. A live peer on the LAN answers in
    /// well under a millisecond; a dead one's takeover waits this long. On
    /// a slow peer link (a round trip over 50 ms) a live peer's answer
    /// would come after the interval: taking over then would put the
    /// address on both nodes.
    fn probe_timeout(&self) -> std::time::Duration {
        let interval = std::time::Duration::from_micros(self.config.vrrp.interval().as_micros());
        let base = interval.clamp(
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(100),
        );
        self.link_rtt.map_or(base, |rtt| base.max(rtt * 2))
    }

    /// The peer link's measured round trip, if any probe was answered
    /// yet.
    #[must_use]
    pub fn link_rtt(&self) -> Option<std::time::Duration> {
        self.link_rtt
    }

    /// Sends this node's beacon: the role it serves in. Sent when the
    /// link comes up, at each role change, and in answer to a probe; the
    /// steady state costs nothing.
    fn send_beacon(&mut self) {
        if !self.link.link_up() {
            return;
        }
        let role = match self.orch.role() {
            Role::Initialize => BEACON_INITIALIZE,
            Role::Backup => BEACON_BACKUP,
            Role::Master => BEACON_MASTER,
        };
        self.link.send(CHANNEL_BEACON, &[role]);
    }

    /// Asks the peer whether it is alive and what it serves as.
    fn send_probe(&mut self, now: Instant) {
        self.probe_sent_at = Some(now);
        self.next_probe = None;
        // Its answer measures the round trip too, even a late one.
        self.rtt_probe_at.get_or_insert(now);
        self.link.send(CHANNEL_BEACON, &[BEACON_PROBE]);
    }

    /// Whether the link says the peer serves as Master (its last beacon).
    fn peer_said_master(&self) -> bool {
        self.link.link_up()
            && self
                .peer_beacon
                .is_some_and(|(_, role)| role == Role::Master)
    }

    /// While a takeover is held back: the peer still vouches for itself
    /// (it serves as Master and answered the last probe, or the answer's
    /// time has not run out).
    fn peer_vouches(&self, now: Instant) -> bool {
        if !self.peer_said_master() {
            return false;
        }
        match self.probe_sent_at {
            Some(sent) => {
                let answered = self.peer_beacon.is_some_and(|(at, _)| at >= sent);
                answered || now < sent + self.probe_timeout()
            }
            None => true,
        }
    }

    /// A held-back takeover goes ahead once the peer stops vouching for
    /// itself (it does not answer a probe in time, says it serves no more,
    /// or the link drops).
    fn lift_veto(&mut self, now: Instant) -> bool {
        if !self.vetoed || self.peer_vouches(now) {
            return false;
        }
        self.vetoed = false;
        self.probe_sent_at = None;
        self.next_probe = None;
        if self
            .router
            .as_ref()
            .is_some_and(|r| r.state() == vrrp_fsm::State::Master)
        {
            self.orch.handle_role_change(
                now,
                convert::role_change(
                    vrrp_fsm::State::Backup,
                    vrrp_fsm::State::Master,
                    vrrp_fsm::Reason::MasterDown,
                ),
            );
        }
        true
    }

    /// A graceful stop: as Master, the election sends priority 0 so that
    /// the Backup takes over at once (RFC 9568 §6.4.3). Drain the outputs,
    /// then drop the engine.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if let Some(r) = &mut self.router {
            r.handle_shutdown(now);
        }
        self.pump(now);
    }

    /// "Restart this node" without a reboot: the election from
    /// Initialize, the orchestrator from its persisted state (which resumes
    /// a procedure in progress, as after a reboot). For drivers that answer
    /// [`Command::RestartNode`] in-process; persist every
    /// [`Output::Persist`] drained so far first.
    pub fn soft_restart(&mut self, now: Instant, wall: SystemTime) {
        if let Some(r) = &mut self.router {
            r.handle_shutdown(now);
        }
        // The old engines' last word goes out: a Master's release of the
        // address and its services (the lost-role plan's first steps), the
        // journal records before them.
        self.drain_router(now);
        self.drain_orchestrator(now);
        let state = self.orch.persistent_state().clone();
        let redundancy = state.redundancy;
        self.orch = Orchestrator::new(self.config.orchestrator.clone(), state, now, wall);
        self.router = None;
        self.results.clear();
        self.sync_waits.clear();
        self.address_commands.clear();
        if redundancy == Redundancy::Enabled {
            self.start_election(now, false);
        }
        self.pump(now);
    }

    // ----------------------------------------------------------------
    // Outputs and state

    /// Sends `payload` to the peer's driver on [`CHANNEL_TRANSFER`]; false
    /// when the link is down or the payload is longer than
    /// [`sync_delta::frame::MAX_PAYLOAD`]. The bytes come out as
    /// [`Output::Send`]; a driver sending much paces itself by what it has
    /// not yet written to the connection.
    pub fn send_transfer(&mut self, now: Instant, payload: &[u8]) -> bool {
        if !self.link.link_up() || payload.len() > sync_delta::frame::MAX_PAYLOAD as usize {
            return false;
        }
        let sent = self.link.send(CHANNEL_TRANSFER, payload);
        self.pump(now);
        sent
    }

    /// This node's identity changed (an upgrade installed new firmware or
    /// a new language pack): the orchestrator takes it, tells the peer in a
    /// new hello, and keeps it across [`Pair::soft_restart`].
    pub fn set_identity(&mut self, now: Instant, identity: crate::Identity) {
        self.config.orchestrator.identity = identity.clone();
        self.orch.set_identity(now, identity);
        self.pump(now);
    }

    /// The next thing to do; [`Output::Wait`] when there is nothing more.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop_front()
            .unwrap_or_else(|| Output::Wait(self.poll_timeout()))
    }

    /// The next deadline of the election, the orchestrator and the link.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.router.as_ref().and_then(VirtualRouter::poll_timeout);
        // While a takeover is held back: the answer's deadline, and the
        // next probe once the last one was answered.
        let answer = self
            .probe_sent_at
            .filter(|sent| self.vetoed && self.peer_beacon.is_none_or(|(at, _)| at < *sent))
            .map(|t| t + self.probe_timeout());
        let probe = self.next_probe.filter(|_| self.vetoed);
        let rtt_probe = self.next_rtt_probe.filter(|_| self.link.link_up());
        [
            r,
            self.orch.poll_timeout(),
            self.link.poll_timeout(),
            answer,
            probe,
            rtt_probe,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The orchestrator (status, timeline, previews).
    #[must_use]
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// The election, `None` while redundancy is off.
    #[must_use]
    pub fn router(&self) -> Option<&VirtualRouter> {
        self.router.as_ref()
    }

    /// The VRRP messages the driver may hand in late, each with the
    /// instant it arrived: the election's
    /// [`VirtualRouter::routine_advertisement`] (a Backup's routine
    /// advertisements from the Master it hears), which move nothing in the
    /// pair either. Everything held goes in, in order, before any other
    /// input and before [`Pair::handle_timeout`]; any other VRRP message
    /// at once. `None` while redundancy is off or the election has nothing
    /// routine. Ask again after every input.
    #[must_use]
    pub fn routine_advertisement(&self) -> Option<vrrp_fsm::Routine> {
        self.router.as_ref()?.routine_advertisement()
    }

    /// The session the sync worker was last told to run.
    #[must_use]
    pub fn sync_role(&self) -> SyncRole {
        self.link.role()
    }

    /// Whether this node holds the virtual address (a claim answered done,
    /// no release since).
    #[must_use]
    pub fn address_held(&self) -> bool {
        self.address_held
    }

    /// Whether an authenticated peer link is up.
    #[must_use]
    pub fn link_up(&self) -> bool {
        self.link.link_up()
    }

    /// Rotates the peer link's keys without a restart (a driver's reload
    /// of its key files): see [`SyncLink::set_link_keys`].
    pub fn set_link_keys(
        &mut self,
        key: sync_delta::frame::PreSharedKey,
        next: Option<sync_delta::frame::PreSharedKey>,
    ) {
        self.link.set_link_keys(key, next);
    }

    /// The engine's counters.
    #[must_use]
    pub fn stats(&self) -> PairStats {
        PairStats {
            sync_decode_errors: self.link.stats().sync_decode_errors,
            ..self.stats
        }
    }

    /// The peer link's counters.
    #[must_use]
    pub fn link_stats(&self) -> LinkStats {
        self.link.link_stats()
    }

    /// The peer link's connections waiting for their handshake (see
    /// [`SyncLink::pending_handshakes`]).
    pub fn pending_handshakes(&self) -> impl Iterator<Item = PendingHandshake> + '_ {
        self.link.pending_handshakes()
    }

    // ----------------------------------------------------------------
    // The work behind every input

    /// Moves everything the sub-engines produced into the output queue,
    /// carrying out what is decided here, until nothing moves.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = self.lift_veto(now);
            moved |= self.drain_router(now);
            moved |= self.drain_link(now);
            moved |= self.drain_orchestrator(now);
            while let Some((id, outcome)) = self.results.pop_front() {
                self.orch.handle_command_result(now, id, outcome);
                moved = true;
            }
            moved |= self.update_sync_role(now);
            if !moved {
                break;
            }
        }
    }

    fn drain_router(&mut self, now: Instant) -> bool {
        let Some(r) = &mut self.router else {
            return false;
        };
        let mut moved = false;
        loop {
            let t = if self.config.vrrp_datagrams {
                r.poll_transmit_datagram(&mut self.tx)
            } else {
                r.poll_transmit(&mut self.tx)
            };
            let Some(t) = t else { break };
            let len = t.len.min(self.tx.len());
            self.out.push_back(Output::Vrrp(VrrpPacket {
                src: t.src,
                dst: t.dst,
                bytes: PacketBytes::copy_from(&self.tx[..len]),
            }));
            moved = true;
        }
        let mut events = Vec::new();
        while let Some(ev) = r.poll_event() {
            events.push(ev);
        }

        for ev in events {
            moved = true;
            match ev {
                vrrp_fsm::Event::StateChange { from, to, reason } => {
                    use vrrp_fsm::{Reason as R, State as S};
                    if self.quiet_start {
                        // Re-enabled as Master: the orchestrator already
                        // is; the way through Backup is not a role change.
                        self.quiet_start = to != S::Master;
                    } else if from == S::Backup
                        && to == S::Master
                        && matches!(reason, R::MasterDown | R::Preempt)
                        && self.peer_said_master()
                    {
                        // The election lost the Master's advertisements,
                        // but the peer link last said it serves: ask it.
                        // Taking over while it does would put the address
                        // on both.
                        self.vetoed = true;
                        self.stats.takeovers_deferred += 1;
                        self.send_probe(now);
                    } else if self.vetoed && from == S::Master {
                        // The election settled before the orchestrator
                        // ever heard of it.
                        self.vetoed = false;
                        self.probe_sent_at = None;
                        self.next_probe = None;
                    } else {
                        self.orch
                            .handle_role_change(now, convert::role_change(from, to, reason));
                    }
                }
                vrrp_fsm::Event::MasterHeard { .. } => self.orch.handle_master_heard(now),
                vrrp_fsm::Event::SendGratuitous(_) => {
                    if self.address_held {
                        self.out.push_back(Output::Announce);
                    } else {
                        self.stats.announcements_deferred += 1;
                    }
                    continue;
                }
                // The orchestrator's plans claim and release the address
                // (claim first on takeover; at once when the role is lost).
                vrrp_fsm::Event::ClaimAddresses
                | vrrp_fsm::Event::ReleaseAddresses
                | vrrp_fsm::Event::AcceptMode(_) => {}
                _ => {}
            }
            self.out.push_back(Output::Event(PairEvent::Election(ev)));
        }
        moved
    }

    /// Carries the link's outputs over, doing the pair's part on the way:
    /// the orchestrator hears of the link coming up, the peer hears this
    /// node's beacon, and the frames on the pair's own channels (the
    /// orchestrator's messages, the beacons) are read here.
    fn drain_link(&mut self, now: Instant) -> bool {
        self.link.pump(now);
        let mut moved = false;
        loop {
            let out = match self.link.poll_output() {
                SyncLinkOutput::Wait(_) => break,
                SyncLinkOutput::Dial(conn) => Output::Dial(conn),
                SyncLinkOutput::Send { conn, bytes } => Output::Send { conn, bytes },
                SyncLinkOutput::Close { conn, reason } => Output::Close { conn, reason },
                SyncLinkOutput::Sync(order) => Output::Sync(order),
                SyncLinkOutput::Event(ev) => Output::Event(match ev {
                    SyncLinkEvent::LinkUp => {
                        self.orch.handle_transport_up(now);
                        self.send_beacon();
                        // The round trip is measured at once, then every
                        // few seconds.
                        self.rtt_probe_at = None;
                        self.next_rtt_probe = Some(now);
                        PairEvent::LinkUp
                    }
                    SyncLinkEvent::LinkDown => {
                        self.peer_beacon = None;
                        self.rtt_probe_at = None;
                        self.next_rtt_probe = None;
                        PairEvent::LinkDown
                    }
                    SyncLinkEvent::LinkFailed { conn, why, from } => {
                        PairEvent::LinkFailed { conn, why, from }
                    }
                    SyncLinkEvent::LinkFailuresSuppressed { count, sources } => {
                        PairEvent::LinkFailuresSuppressed { count, sources }
                    }
                    SyncLinkEvent::Sync(report) => PairEvent::Sync(report),
                    // Not on the pair's link: its peer channel comes
                    // through `poll_owner_frame`.
                    SyncLinkEvent::PeerMessage(_) => continue,
                }),
            };
            moved = true;
            self.out.push_back(out);
        }
        while let Some((channel, payload)) = self.link.poll_owner_frame() {
            moved = true;
            match channel {
                CHANNEL_PEER => {
                    if self.orch.handle_peer_bytes(now, &payload).is_err() {
                        self.stats.peer_decode_errors += 1;
                    }
                }
                CHANNEL_BEACON => {
                    let role = match payload.as_slice() {
                        [BEACON_PROBE] => {
                            self.send_beacon();
                            continue;
                        }
                        [BEACON_INITIALIZE] => Role::Initialize,
                        [BEACON_BACKUP] => Role::Backup,
                        [BEACON_MASTER] => Role::Master,
                        _ => {
                            self.stats.bad_beacons += 1;
                            continue;
                        }
                    };
                    self.peer_beacon = Some((now, role));
                    if let Some(sent) = self.rtt_probe_at.take() {
                        let rtt = now.saturating_duration_since(sent);
                        let kept = self.link_rtt.map_or(rtt, |r| r - r / 8);
                        self.link_rtt = Some(rtt.max(kept));
                    }
                    if self.vetoed && role == Role::Master {
                        // Alive and serving: ask again an interval on.
                        let every = std::time::Duration::from_micros(
                            self.config.vrrp.interval().as_micros(),
                        );
                        self.next_probe = Some(now + every);
                    }
                }
                CHANNEL_TRANSFER => self.out.push_back(Output::Transfer(payload)),
                _ => self.stats.unknown_channel += 1,
            }
        }
        moved
    }

    fn drain_orchestrator(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(rec) = self.orch.poll_journal() {
            moved = true;
            self.out.push_back(Output::Persist(rec));
        }
        while let Some(issued) = self.orch.poll_command() {
            moved = true;
            self.command(now, issued);
        }
        while let Some(msg) = self.orch.poll_transmit() {
            moved = true;
            if self.link.link_up() {
                self.send_peer(&msg);
            } else if matches!(msg.body, PeerBody::Request { .. } | PeerBody::Reply { .. }) {
                // A request or a reply is not lost to a link that is down
                // for a moment (a reconnect): it goes out once the link is
                // back, behind the fresh hello and status. Heartbeats are
                // not kept: the next one says it all.
                if self.held.len() == HELD_MESSAGES {
                    self.held.pop_front();
                    self.stats.held_dropped += 1;
                }
                self.held.push_back(msg);
            }
        }
        if self.link.link_up() {
            while let Some(msg) = self.held.pop_front() {
                moved = true;
                self.send_peer(&msg);
            }
        }
        while let Some(ev) = self.orch.poll_event() {
            moved = true;
            match &ev {
                Event::TermTaken(e) | Event::EpochAdopted(e) => self.link.set_epoch((*e).into()),
                // The peer hears of a new role at once, not at the next beat.
                Event::RoleChanged(_) => self.send_beacon(),
                // The mode a Master keeps for its next time as Backup.
                Event::ModeChanged(m) => {
                    if let Some(r) = &mut self.router {
                        r.set_backup_mode(now, (*m).into());
                    }
                }
                // Heartbeats stopped over an open connection: start over.
                Event::PeerDown => self.link.close(now, CloseReason::PeerSilent),
                _ => {}
            }
            self.out
                .push_back(Output::Event(PairEvent::Orchestrator(ev)));
        }
        moved
    }

    fn send_peer(&mut self, msg: &crate::wire::PeerMessage) {
        let mut bytes = Vec::new();
        if crate::wire::encode(msg, &mut bytes).is_ok() {
            self.link.send(CHANNEL_PEER, &bytes);
        }
    }

    /// Carries out an orchestrator command here, or hands it to the
    /// driver.
    fn command(&mut self, now: Instant, issued: Issued) {
        let id = issued.id;
        // Commands come after the journal records drained before them: the
        // orchestrator's persisted epoch is the newest one handed out.
        if issued.epoch < self.orch.persistent_state().highest_epoch {
            self.stats.stale_commands += 1;
        }
        let done = |ok: bool| {
            if ok {
                CommandOutcome::Done
            } else {
                CommandOutcome::Failed { code: 1 }
            }
        };
        match issued.command {
            Command::FinishOrRollbackRound => {
                let order = self.link.settle(now);
                self.sync_waits.insert(order, SyncWait::Settle(id));
            }
            Command::SyncNow { .. } => {
                self.update_sync_role(now);
                let order = self.link.round_now(now);
                self.sync_waits.insert(order, SyncWait::RoundNow(id));
            }
            Command::AnnounceAddress => {
                self.out.push_back(Output::Announce);
                self.results.push_back((id, CommandOutcome::Done));
            }
            Command::ArmTakeover { priority } => {
                let ok = self.router.as_mut().is_some_and(|r| {
                    r.set_priority(now, vrrp_proto::Priority(priority)).is_ok()
                        && r.arm_takeover(now).is_ok()
                });
                self.router_result(id, ok);
            }
            Command::Release { new_priority } => {
                let ok = self.router.as_mut().is_some_and(|r| {
                    let mut rel = vrrp_fsm::Release::new();
                    if let Some(p) = new_priority {
                        rel = rel.priority(vrrp_proto::Priority(p));
                    }
                    r.release(now, rel).is_ok()
                });
                self.router_result(id, ok);
            }
            Command::StepDown => {
                // Already out of Master is fine: the point is not to be it.
                if let Some(r) = &mut self.router
                    && r.state() == vrrp_fsm::State::Master
                {
                    let _ = r.release(now, vrrp_fsm::Release::new());
                }
                self.results.push_back((id, CommandOutcome::Done));
            }
            Command::SetBackupMode(m) => {
                if let Some(r) = &mut self.router {
                    r.set_backup_mode(now, m.into());
                }
                self.results.push_back((id, CommandOutcome::Done));
            }
            Command::SetRedundancy(r) => {
                self.set_redundancy(now, r);
                self.results.push_back((id, done(true)));
            }
            Command::ClaimAddress => {
                self.address_commands.insert(id, true);
                self.out.push_back(Output::Command(issued));
            }
            Command::ReleaseAddress => {
                self.address_commands.insert(id, false);
                self.out.push_back(Output::Command(issued));
            }
            Command::StartService(_)
            | Command::StopService(_)
            | Command::CheckService(_)
            | Command::CheckNode
            | Command::NudgePhone(_)
            | Command::RebootPhone(_)
            | Command::UpgradeFirmware { .. }
            | Command::UpgradeLanguagePack { .. }
            | Command::SaveConfig
            | Command::StageImageOnPeer
            | Command::RestoreConfig { .. }
            | Command::RestartNode
            | Command::Custom(_) => self.out.push_back(Output::Command(issued)),
        }
    }

    fn router_result(&mut self, id: CommandId, ok: bool) {
        if !ok {
            self.stats.refused_by_router += 1;
        }
        let outcome = if ok {
            CommandOutcome::Done
        } else {
            CommandOutcome::Failed { code: 4 }
        };
        self.results.push_back((id, outcome));
    }

    fn set_redundancy(&mut self, now: Instant, r: Redundancy) {
        match r {
            Redundancy::Enabled if self.router.is_none() => {
                let master = self.orch.role() == Role::Master;
                self.start_election(now, master);
                self.out
                    .push_back(Output::Event(PairEvent::Redundancy(Redundancy::Enabled)));
            }
            Redundancy::Disabled if self.router.is_some() => {
                // Silent: no priority-0 release, so that a peer does not
                // take over from a node that keeps serving.
                self.router = None;
                self.link.set_enabled(now, false);
                self.out
                    .push_back(Output::Event(PairEvent::Redundancy(Redundancy::Disabled)));
            }
            _ => {}
        }
    }

    /// Master serves, a Backup receives (pulling every interval only when
    /// Active), anything else runs no session.
    fn update_sync_role(&mut self, now: Instant) -> bool {
        let role = match &self.router {
            None => SyncRole::Idle,
            Some(r) => match r.state() {
                vrrp_fsm::State::Master => SyncRole::Source,
                // A Backup replicates a Master it knows of: one the election
                // heard, or one the peer link says serves. Until then (a
                // unit that boots alone, or beside a Passive Backup, which
                // never takes over) it runs no session: opening the replica
                // would move this unit's own changes since the generation
                // its peer last confirmed into quarantine, and when no
                // other Master appears this unit is Master again, with the
                // tree to keep.
                vrrp_fsm::State::Backup if r.master().is_some() || self.peer_said_master() => {
                    SyncRole::Replica {
                        periodic: r.backup_mode() == vrrp_fsm::BackupMode::Active,
                    }
                }
                vrrp_fsm::State::Backup | vrrp_fsm::State::Initialize => SyncRole::Idle,
            },
        };
        if role == self.link.role() {
            return false;
        }
        if !matches!(role, SyncRole::Replica { .. }) {
            self.sync_refused = None;
        }
        self.link.set_role(now, role);
        true
    }
}

#[cfg(test)]
mod packet_bytes_tests {
    use super::PacketBytes;

    #[test]
    fn short_and_long_packets_keep_their_bytes() {
        for len in [
            0usize,
            1,
            32,
            PacketBytes::INLINE,
            PacketBytes::INLINE + 1,
            4096,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let b = PacketBytes::copy_from(&data);
            assert_eq!(&*b, data.as_slice(), "len {len}");
            assert_eq!(b.len(), len);
            assert_eq!(b.clone(), b);
            assert_eq!(b.into_vec(), data);
        }
        assert_ne!(PacketBytes::copy_from(b"ab"), PacketBytes::copy_from(b"ac"));
    }
}
