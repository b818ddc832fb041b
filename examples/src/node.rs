//! The node daemon: the pair engine ([`failover_orchestrator::pair::Pair`])
//! driven by real sockets, netlink, processes, files and the clock. No
//! role, sync or epoch policy lives here: the engine decides, this module
//! carries out.
//!
//! Threads and tasks:
//! - the **engine thread** owns the [`Pair`] and waits in one epoll set on the
//!   VRRP socket, the peer link's listener and connections and a wake-up
//!   socket, with the engine's deadline as a nanosecond timeout (optionally
//!   SCHED_FIFO), so that nothing else (file hashing, HTTP, process spawns)
//!   delays an advertisement or a timeout. It persists the journal records
//!   before it carries out what follows them, sends VRRP, announcements and
//!   the link's bytes itself, and hands commands to the main task and sync
//!   orders to the sync worker;
//! - the **sync worker thread** owns the [`SyncWorker`] and the
//!   [`FsStore`] of the data directory: scans, hashing and applying block
//!   only it. A source's data is read as the link's send queue drains;
//! - the **main task** (tokio) carries out commands through the [`Hooks`]
//!   and netlink and answers them, and relays the status API's requests;
//! - the status API ([`crate::status`]) reads a snapshot the engine thread
//!   publishes after every batch of work.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::pair::{
    ConnId, LinkConfig, LinkFailure, Output, Pair, PairConfig, PairEvent, SyncConfig, SyncOrder,
    SyncReport, SyncWorker,
};
use failover_orchestrator::{
    self as orch, Command, CommandId, CommandOutcome, Issued, OperatorRequest, PersistentState,
    PhoneId, PreflightError, Redundancy, ServiceId, ServiceSpec,
};
use serde::Serialize;
use sync_delta::FsStore;
use sync_delta::frame::PreSharedKey;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{NodeConfig, Transport};
use crate::hooks::{Hooks, Readiness};
use crate::link_io::{self, FromWorker, InboxTx, Sockets, ToWorker, Woken};
use crate::net::Netlink;
use crate::phones::Phone;
use crate::poller::Ready;
use crate::vrrp_io::{Batch, Received, VrrpSocket};

mod ops;
pub use ops::{Operations, TransferView, UpgradeReply};

/// Why the node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The election engine's configuration.
    #[error("vrrp: {0}")]
    Vrrp(#[from] vrrp_fsm::ConfigError),
    /// The orchestrator's configuration.
    #[error("orchestrator: {0}")]
    Orchestrator(#[from] orch::ConfigError),
    /// Interfaces and addresses.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// Sockets, files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// Why an operator request was refused: the words and a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// For people.
    pub error: String,
    /// `snake_case`, stable (see [`PreflightError::code`]).
    pub code: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.code)
    }
}

impl From<PreflightError> for Refused {
    fn from(e: PreflightError) -> Self {
        Refused {
            error: e.to_string(),
            code: e.code().to_owned(),
        }
    }
}

/// The answer to an operator request: the procedure's id once preflight
/// accepted it, or why it was refused.
pub type ApiReply = oneshot::Sender<Result<u64, Refused>>;

/// An operator request from the status API, answered on its reply channel.
#[derive(Debug)]
pub enum ApiRequest {
    /// Set the Backup mode (on a Backup its own, on a Master the peer's),
    /// for this many seconds when given (back to Active then).
    SetBackupMode(orch::BackupMode, Option<u64>, ApiReply),
    /// Upgrade with this staged image: on the Master the rolling upgrade of
    /// both units (the manual's order), on a Passive Backup this unit
    /// alone.
    Upgrade(crate::procedures::ImageMeta, UpgradeReply),
    /// Restore this staged configuration archive (on the Master).
    Restore(crate::procedures::StagedFile, ApiReply),
    /// Swap Master and Backup (on the Master).
    Swap(ApiReply),
    /// Switch redundancy on or off; the value is kept in the state
    /// directory and overrides the configuration from then on.
    SetRedundancy(bool, ApiReply),
    /// The files reloaded (`SIGHUP`): the peer link's keys (the key this
    /// node proves, and the next key it accepts during a rotation; the
    /// link that is up stays, the next connection uses them) and the
    /// status API's token.
    Reload {
        /// `[sync] key_file` and `key_file_next`, with a `[sync]` section.
        keys: Option<(PreSharedKey, Option<PreSharedKey>)>,
        /// `[status] token_file`'s token, if set.
        token: Option<crate::status::Token>,
    },
    /// Confirm the deletions the mass-deletion guard held back (on the
    /// Backup): the refused round runs now and goes through. Answered with
    /// the refusal confirmed, or `nothing_to_confirm`.
    ConfirmDeletions(oneshot::Sender<Result<RefusedRound, Refused>>),
}

/// Replication as the status API shows it (`/status`'s `sync`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct SyncSnapshot {
    /// The last round the mass-deletion guard refused, while it waits for
    /// `POST /sync/confirm-deletions` (until a round commits or the node
    /// is no longer a Backup).
    pub refused: Option<RefusedRound>,
    /// The data-loss window, ms: the age of the oldest change the Backup
    /// does not hold yet. On the Master, from what it knows of its own
    /// changes (0 when the Backup holds every one; with `watch` off, or
    /// until the first full scan after a start or an overflow is
    /// confirmed, the age of the last snapshot the Backup confirmed); on
    /// the Backup, the age of its generation (an upper bound: it cannot
    /// see changes it was not told of). `null` when nothing is bounded (no
    /// generation confirmed yet, or no `[sync]`).
    pub window_ms: Option<u64>,
}

/// A round the mass-deletion guard refused: the words and the figures.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefusedRound {
    /// For people.
    pub error: String,
    /// `mass_deletion` (too much content lost) or `empty_source`.
    pub code: String,
    /// Content bytes the round would lose (`mass_deletion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub losing_bytes: Option<u64>,
    /// Content bytes the rounds committed within the window lost
    /// (`mass_deletion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_in_window_bytes: Option<u64>,
    /// The tree's content bytes the share is taken of (`mass_deletion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_bytes: Option<u64>,
    /// The most the window may lose unconfirmed (`mass_deletion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// Entries the Backup holds (`empty_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
}

impl From<sync_delta::Refusal> for RefusedRound {
    fn from(r: sync_delta::Refusal) -> Self {
        let mut v = RefusedRound {
            error: r.to_string(),
            code: String::new(),
            losing_bytes: None,
            lost_in_window_bytes: None,
            tree_bytes: None,
            limit_bytes: None,
            entries: None,
        };
        match r {
            sync_delta::Refusal::MassDeletion {
                losing,
                lost,
                total,
                limit,
            } => {
                v.code = "mass_deletion".into();
                v.losing_bytes = Some(losing);
                v.lost_in_window_bytes = Some(lost);
                v.tree_bytes = Some(total);
                v.limit_bytes = Some(limit);
            }
            sync_delta::Refusal::EmptySource { total } => {
                v.code = "empty_source".into();
                v.entries = Some(total);
            }
            _ => v.code = "refused".into(),
        }
        v
    }
}

/// What the status API shows, refreshed after every input.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    /// This node's id.
    pub id: String,
    /// `"Master"`, `"Backup"` or `"Initialize"`, from the election.
    pub role: String,
    /// The appliance's one-liner.
    pub summary: String,
    /// The election's view.
    pub vrrp: VrrpView,
    /// Whether the virtual addresses are configured here.
    pub address_held: bool,
    /// The orchestrator's status model, as is.
    pub status: Option<orch::Status>,
    /// The last failover timeline.
    pub timeline: Option<orch::Timeline>,
    /// Services by name: running or not.
    pub services: Vec<ServiceView>,
    /// Phones re-homed by the last takeover.
    pub phones: Vec<orch::PhoneOutcome>,
    /// Quarantine folders (in the data directory's
    /// `.sync-delta/quarantine/`) where a returning Master's changes that
    /// its peer never received were moved: those there at start, then any
    /// made since.
    pub quarantine: Vec<String>,
    /// Replication: a round waiting for a confirmation.
    pub sync: SyncSnapshot,
    /// Counters and figures `GET /metrics` renders with the fields above.
    pub counters: crate::metrics::Counters,
    /// The procedures' files: the image to install, its hand-over to the
    /// peer, a Passive Backup's own install, the archive to restore.
    pub operations: Operations,
    /// How the last operator procedure ended (kept across restarts).
    pub last_procedure: Option<LastProcedure>,
    /// The page's words, from all of the above.
    pub words: crate::words::Words,
}

/// How an operator procedure ended.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LastProcedure {
    /// Its id.
    pub id: u64,
    /// Its name (`rolling upgrade`, `swap`, …).
    pub name: String,
    /// `Completed`, `Degraded` or `Aborted`.
    pub outcome: String,
    /// The steps that failed, in words.
    pub failed_steps: Vec<String>,
    /// When it ended, ms since the Unix epoch.
    pub finished_unix_ms: u64,
}

/// The election as the status API shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VrrpView {
    /// State.
    pub state: String,
    /// Current priority.
    pub priority: u8,
    /// Backup mode.
    pub backup_mode: String,
    /// The Master heard last, as Backup.
    pub master: Option<IpAddr>,
    /// Advertisement interval, ms.
    pub interval_ms: u64,
    /// Master_Down_Interval, µs.
    pub master_down_us: u64,
    /// State changes since the node started.
    pub transitions: u64,
    /// Advertisements received and accepted since the node started.
    pub received: u64,
    /// Advertisements dropped by receive rules since the node started.
    pub dropped: u64,
    /// Wall-clock time of the last state change, ms since the Unix epoch.
    pub last_change_unix_ms: u64,
    /// Wall-clock time of the last advertisement accepted, ms since the
    /// Unix epoch (0 before the first).
    pub last_rx_unix_ms: u64,
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// Whether its process runs.
    pub running: bool,
}

/// A handle on a running node.
pub struct NodeHandle {
    /// Operator requests.
    pub api: mpsc::Sender<ApiRequest>,
    /// The latest snapshot.
    pub snapshot: Arc<Mutex<Snapshot>>,
}

// ---------------------------------------------------------------------------
// Sockets and announcements

enum SocketSpec {
    RawV4 {
        interface: String,
        ifindex: u32,
        primary: std::net::Ipv4Addr,
    },
    RawV6 {
        interface: String,
        ifindex: u32,
        src: std::net::Ipv6Addr,
        dst: IpAddr,
    },
    Udp {
        listen: std::net::SocketAddr,
        peers: Vec<std::net::SocketAddr>,
    },
}

#[derive(Clone)]
struct GarpSpec {
    ifindex: u32,
    mac: [u8; 6],
    primary: IpAddr,
    addresses: Vec<IpAddr>,
}

impl GarpSpec {
    fn send(&self) {
        for a in &self.addresses {
            let frame = match (a, self.primary) {
                (IpAddr::V4(v4), _) => crate::net::gratuitous_arp(self.mac, *v4).to_vec(),
                (IpAddr::V6(v6), IpAddr::V6(src)) => crate::net::unsolicited_na(self.mac, src, *v6),
                (IpAddr::V6(_), IpAddr::V4(_)) => continue,
            };
            if let Err(e) = crate::net::send_frame(self.ifindex, &frame) {
                warn!(address = %a, error = %e, "gratuitous announcement failed");
            }
        }
    }
}

/// SCHED_FIFO at `priority` for the calling thread, as keepalived's
/// `vrrp_rt_priority`: a loaded machine then cannot starve the timers.
fn set_realtime(priority: u8) {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with a
    // valid policy and a parameter that lives across the call.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    if r == 0 {
        info!(priority, "vrrp thread runs SCHED_FIFO");
    } else {
        warn!(error = %std::io::Error::last_os_error(), "SCHED_FIFO refused; running at normal priority");
    }
}

fn open_socket(spec: &SocketSpec) -> std::io::Result<VrrpSocket> {
    match spec {
        SocketSpec::RawV4 {
            interface,
            ifindex,
            primary,
        } => VrrpSocket::raw_v4(interface, *ifindex, *primary),
        SocketSpec::RawV6 {
            interface,
            ifindex,
            src,
            dst,
        } => VrrpSocket::raw_v6(interface, *ifindex, *src, *dst),
        SocketSpec::Udp { listen, peers } => VrrpSocket::udp(*listen, peers.clone()),
    }
}

/// How long to ask the poller to wait for a deadline `left` away. The kernel
/// may end a poll late by its timer slack (0.1 % of the timeout, at least
/// 50 µs, for threads that are not real-time): asking that much less lands
/// the wake-up at the deadline or just before it, which the loop takes as
/// due ([`DUE_EARLY`]), so that one wake-up serves one deadline. A long wait
/// (a 3.6 s Master_Down_Interval) ends up to 0.1 % early and waits the
/// short remainder on the next round.
fn poll_wait(left: Duration) -> Duration {
    let slack = (left / 1000).max(Duration::from_micros(50));
    left.saturating_sub(slack)
}

/// The engines' clock: the monotonic clock, never behind a deadline
/// already handed to them (see [`DUE_EARLY`]).
fn tick(clock: &mut Instant) -> Instant {
    let t = Instant::now().max(*clock);
    *clock = t;
    t
}

/// A deadline this close is taken as due: the engines see the deadline's
/// instant, never an earlier one (the engine thread's clock only moves
/// forward), and an advertisement leaves at most this much early.
const DUE_EARLY: Duration = Duration::from_micros(100);

/// The engine thread's own descriptors in its poller.
const TOKEN_VRRP: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_ALERT: u64 = 2;

/// How a node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Services stopped in reverse order, the address released, priority 0
    /// sent.
    Graceful,
    /// Everything stops at once and nothing is sent: a power cut, for demos
    /// and tests.
    Crash,
}

/// Everything `run` needs besides the configuration.
pub struct Options {
    /// Whether addresses and gratuitous ARP are made for real (root, raw
    /// transport); otherwise they are logged.
    pub privileged: bool,
}

impl Options {
    /// Privileged when root and the transport is raw.
    #[must_use]
    pub fn detect(config: &NodeConfig) -> Options {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Options {
            privileged: root && config.vrrp.transport == Transport::Raw,
        }
    }
}

fn save_state(dir: &Path, record: &orch::JournalRecord) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("state.json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&record.state)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("state.json"))?;
    let mut j = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("journal.jsonl"))?;
    writeln!(j, "{}", serde_json::to_string(record)?)?;
    Ok(())
}

fn outcome(ok: bool) -> CommandOutcome {
    if ok {
        CommandOutcome::Done
    } else {
        CommandOutcome::Failed { code: 1 }
    }
}

/// The election's configuration error as the node's, naming the key that
/// led to it.
fn vrrp_key(e: vrrp_fsm::ConfigError, transport: Transport) -> NodeError {
    use vrrp_fsm::ConfigError as E;
    let key = match (&e, transport) {
        (E::PrimaryFamily | E::PrimaryNotUnicast | E::PrimaryNotLinkLocal, Transport::Udp) => {
            "vrrp.udp_listen"
        }
        (E::PrimaryFamily | E::PrimaryNotUnicast | E::PrimaryNotLinkLocal, Transport::Raw) => {
            "vrrp.interface"
        }
        _ => "vrrp",
    };
    NodeError::Config(crate::config::ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    })
}

/// The orchestrator's configuration error as the node's, naming the key
/// that led to it.
fn orchestrator_key(e: NodeError) -> NodeError {
    use orch::ConfigError as E;
    let NodeError::Orchestrator(e) = e else {
        return e;
    };
    let key = match &e {
        E::EmptyNodeId => "id",
        E::IdentityTooLarge => {
            return NodeError::Config(crate::config::ConfigError::Invalid {
                key: "identity".into(),
                reason: format!(
                    "{e} (id, identity.firmware, identity.language_pack, identity.licenses)"
                ),
            });
        }
        E::TooManyPhones => "phones",
        E::TooManyServices(_) | E::ServiceOrder { .. } => "service",
        _ => return NodeError::Orchestrator(e),
    };
    NodeError::Config(crate::config::ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    })
}

/// Builds the orchestrator's configuration from the node's.
fn orch_identity(config: &NodeConfig) -> orch::Identity {
    orch::Identity {
        node_id: config.id.clone(),
        firmware: config.identity.firmware.clone(),
        language_pack: config.identity.language_pack.clone(),
        licences: config.identity.licenses.clone(),
        protocol: orch::ProtocolVersion::CURRENT,
    }
}

fn orchestrator_config(config: &NodeConfig, phones: &[Phone]) -> Result<orch::Config, NodeError> {
    let mut b = orch::Config::builder(orch_identity(config));
    for svc in &config.services {
        let deps: Vec<ServiceId> = svc
            .after
            .iter()
            .filter_map(|a| config.services.iter().position(|s| &s.name == a))
            .map(|p| ServiceId(p as u16))
            .collect();
        b = b.service(
            ServiceSpec::new(svc.name.clone())
                .after(&deps)
                .ready_within(svc.start_timeout, 0),
        );
    }
    b = b.phones(phones.iter().map(|p| p.spec).collect());
    Ok(b.build()?)
}

// ---------------------------------------------------------------------------
// Messages between the threads

/// What reaches the engine thread (each followed by a byte on its wake-up
/// socket).
enum Inbox {
    Result(CommandId, CommandOutcome),
    Registered(PhoneId),
    /// A phone's action was carried out (or the address it follows
    /// announced), and nothing can check its registration.
    Unchecked(PhoneId),
    Operator(OperatorRequest, ApiReply),
    ConfirmDeletions(oneshot::Sender<Result<RefusedRound, Refused>>),
    Worker(FromWorker),
    Stop(Stop, oneshot::Sender<()>),
    Keys(PreSharedKey, Option<PreSharedKey>),
    /// A payload for the peer's driver on the transfer channel.
    Transfer(Vec<u8>),
    /// An install changed this unit's identity; `restart`: restart softly
    /// now (a firmware's install ends with the restart).
    Installed {
        identity: orch::Identity,
        restart: bool,
    },
}

/// The sending side of the engine thread's inbox.
type EngineTx = InboxTx<Inbox>;

/// What the engine thread asks of the main task.
enum ToMain {
    Command(Issued),
    /// The address was announced: check whether this phone, which follows
    /// the address, registers.
    WatchPhone(PhoneId),
    /// A payload from the peer's driver on the transfer channel.
    Transfer(Vec<u8>),
}

// ---------------------------------------------------------------------------
// The engine thread

/// The engine thread's state: the pair and everything it does I/O on.
struct Engine {
    pair: Pair,
    vrrp: VrrpSocket,
    rx: Vec<u8>,
    /// The peer link's listener and connections.
    sockets: Sockets,
    garp: Option<GarpSpec>,
    state_dir: PathBuf,
    inbox: link_io::Inbox<Inbox>,
    to_main: mpsc::UnboundedSender<ToMain>,
    to_worker: Option<std_mpsc::Sender<ToWorker>>,
    /// Bytes of sync messages from the worker not yet handed to the pair.
    queued: Arc<AtomicUsize>,
    /// What the sync worker thread last saw (the data-loss window).
    round_watch: link_io::RoundWatch,
    snapshot: Arc<Mutex<Snapshot>>,
    hooks: Arc<dyn Hooks>,
    config: NodeConfig,
    phones: Vec<Phone>,
    last_change: u64,
    /// When the last valid advertisement arrived.
    last_rx: Option<Instant>,
    /// The routine advertisements the VRRP socket holds (see
    /// [`Engine::hold`]); `None` while it holds nothing.
    holding: Option<vrrp_fsm::Routine>,
    /// The transport can hold (it has an alert socket, and holding has not
    /// failed).
    can_hold: bool,
    /// The phones that follow the address are being checked (since the
    /// first announcement of this Master term).
    watching_phones: bool,
    stop: Option<(Stop, oneshot::Sender<()>)>,
    /// Something worth showing happened since the last snapshot.
    dirty: bool,
    /// See [`Engine::now`].
    clock: Instant,
    /// Quarantine folders reported since start.
    quarantine: Vec<String>,
    published_at: Instant,
    /// What `/metrics` counts beyond the engines' current state.
    tally: crate::metrics::Tally,
    /// The procedures' files and hooks, as the main task updates them.
    operations: Arc<Mutex<Operations>>,
    /// Bytes of transfer payloads in the inbox (see `ops::to_link`).
    transfer_queued: Arc<AtomicUsize>,
    /// The running procedure: its id, name and plan, the words of its
    /// steps as they ran, and those that failed.
    procedure: Option<RunningProcedure>,
    /// Kept in the state directory: the last procedure's end and the last
    /// failover's timeline (a soft restart or a reboot keeps them).
    kept: Kept,
}

/// See [`Engine::procedure`].
struct RunningProcedure {
    id: u64,
    name: String,
    plan: Option<orch::PlanId>,
    steps: std::collections::HashMap<u16, String>,
    failed: Vec<String>,
}

/// What the page keeps across restarts (`operator.json` in the state
/// directory).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
struct Kept {
    last_procedure: Option<LastProcedure>,
    timeline: Option<orch::Timeline>,
}

impl Kept {
    fn load(dir: &Path) -> Kept {
        std::fs::read(dir.join("operator.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) {
        let tmp = dir.join("operator.json.tmp");
        let r = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, dir.join("operator.json")));
        if let Err(e) = r {
            warn!(error = %e, "cannot keep the last procedure and timeline");
        }
    }
}

/// An instant of this run as Unix milliseconds (for the status).
fn wall_ms(at: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(at);
    unix_ms(
        SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Engine {
    fn now(&mut self) -> Instant {
        tick(&mut self.clock)
    }

    fn run(mut self) {
        let mut woken = Woken::default();
        // Made here: it stays on this thread.
        let mut batch = Batch::new();
        loop {
            // One deadline per round: nothing reaches the pair between
            // the drain and the check after the wait.
            let mut deadline = self.drain();
            self.hold();
            // The clock as last read (after the wait, or by an input since):
            // the wait below may end later by the time this round took,
            // tens of microseconds, for one clock read less per wake-up.
            let now = self.clock;
            self.maybe_publish(now);
            if let Some((how, done)) = self.stop.take() {
                self.shut_down(how);
                let _ = done.send(());
                return;
            }
            let publish = self
                .dirty
                .then(|| self.published_at + Duration::from_millis(20));
            let wake_at = [deadline, publish].into_iter().flatten().min();
            let timeout = wake_at.map(|d| poll_wait(d.saturating_duration_since(now)));
            let floor = self.clock;
            self.sockets.wait(timeout, &mut woken);
            let now = self.now();
            if self.holding.is_some() {
                // What was held goes in first, at the times it came; the
                // deadline moves with it.
                let alert = woken.own.contains(&TOKEN_ALERT);
                if self.receive_held(&mut batch, floor, now, alert) {
                    deadline = self.drain();
                }
            }
            if let Some(d) = deadline.filter(|d| *d <= now + DUE_EARLY) {
                self.clock = self.clock.max(d);
                self.pair.handle_timeout(self.clock);
            }
            // Only what the poller reported: a read that would block is a
            // syscall for nothing, at a hundred wake-ups a second.
            for &token in &woken.own {
                match token {
                    // While holding, the main socket wakes only on an
                    // error, and the alert socket was read above.
                    TOKEN_VRRP if self.holding.is_none() => self.receive_vrrp(now),
                    TOKEN_VRRP | TOKEN_ALERT => {}
                    _ => self.read_inbox(),
                }
            }
            if woken.listener {
                let now = self.now();
                self.sockets.accept(&mut self.pair, now);
                self.drain();
            }
            for &(id, ready) in &woken.conns {
                self.conn_ready(id, ready);
            }
        }
    }

    /// Every packet waiting, each with the time it was read.
    /// The packet waiting, with the time it was read. One per wake-up: the
    /// poll is level-triggered, so another waiting wakes it again at once,
    /// and no read ends in EAGAIN.
    fn receive_vrrp(&mut self, now: Instant) {
        let r = match self.vrrp.try_recv(&mut self.rx) {
            Ok(Some(Received::Datagram(n))) => self.pair.handle_vrrp_datagram(now, &self.rx[..n]),
            Ok(Some(Received::Message(n, meta))) => {
                self.pair.handle_vrrp_message(now, &self.rx[..n], meta)
            }
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "vrrp receive");
                return;
            }
        };
        if r.is_ok() {
            self.last_rx = Some(now);
        }
        // What it asks for is carried out at the top of the loop.
    }

    /// Holds what the election says may wait (see
    /// `Pair::routine_advertisement`): the main socket stops waking the
    /// loop and keeps the routine advertisements, the alert socket wakes
    /// it for anything else. Checked once per round, after the drain.
    fn hold(&mut self) {
        if !self.can_hold {
            return;
        }
        let want = self.pair.routine_advertisement();
        if want == self.holding {
            return;
        }
        let r = self.vrrp.hold(want.as_ref()).and_then(|()| {
            self.sockets
                .watch_reads(self.vrrp.fd(), TOKEN_VRRP, want.is_none())
        });
        match r {
            Ok(()) => self.holding = want,
            Err(e) => {
                // Back to reading every message as it comes, for good.
                warn!(error = %e, "cannot hold routine advertisements; reading each as it comes");
                self.can_hold = false;
                let _ = self.vrrp.hold(None);
                let _ = self.sockets.watch_reads(self.vrrp.fd(), TOKEN_VRRP, true);
                self.holding = None;
            }
        }
    }

    /// Hands the pair every message held on the main socket (and, with
    /// `alert`, those on the alert socket), in the order and at the times
    /// they came: the kernel's receive time, taken as an age on the
    /// monotonic clock, never before `floor` (the last time the engines
    /// saw) nor after `now`. Whether anything came.
    fn receive_held(
        &mut self,
        batch: &mut Batch,
        floor: Instant,
        now: Instant,
        alert: bool,
    ) -> bool {
        let wall = SystemTime::now();
        let mut last = floor;
        let mut came = 0;
        for from_alert in [false, true] {
            if from_alert && !alert {
                continue;
            }
            let (pair, last_rx) = (&mut self.pair, &mut self.last_rx);
            let r = self.vrrp.recv_held(batch, from_alert, |datagram, stamp| {
                let age = stamp
                    .and_then(|t| wall.duration_since(t).ok())
                    .unwrap_or_default();
                // One order across the two sockets: a message read from the
                // alert socket after the held ones is never given an
                // earlier time.
                let at = now.checked_sub(age).unwrap_or(last).max(last).min(now);
                last = at;
                if pair.handle_vrrp_datagram(at, datagram).is_ok() {
                    *last_rx = Some(at);
                }
            });
            match r {
                Ok(n) => came += n,
                Err(e) => warn!(error = %e, "vrrp receive"),
            }
        }
        came > 0
    }

    fn conn_ready(&mut self, id: ConnId, ready: Ready) {
        let now = self.now();
        if self.sockets.connect_ready(&mut self.pair, now, id, ready) {
            return;
        }
        if ready.read || ready.error {
            // What the peer says (its status, mode, generation) shows in
            // the snapshot without waiting for the idle refresh.
            self.dirty = true;
            loop {
                let now = self.now();
                if !self.sockets.read(&mut self.pair, now, id, ready) {
                    break;
                }
                self.drain();
            }
        }
        let now = self.now();
        self.sockets.flush(&mut self.pair, now, id);
    }

    fn read_inbox(&mut self) {
        while let Some(m) = self.inbox.next() {
            self.dirty = true;
            let now = self.now();
            match m {
                Inbox::Result(id, outcome) => self.pair.handle_command_result(now, id, outcome),
                Inbox::Registered(p) => self.pair.handle_phone_registered(now, p),
                Inbox::Unchecked(p) => self.pair.handle_phone_unchecked(now, p),
                Inbox::Operator(request, reply) => {
                    let r = self
                        .pair
                        .handle_operator(now, request)
                        .map_err(Refused::from);
                    let _ = reply.send(r);
                }
                Inbox::ConfirmDeletions(reply) => {
                    let waiting = self.pair.sync_refused();
                    let r = match waiting {
                        Some(why) if self.pair.confirm_deletions(now) => {
                            warn!(refusal = %why, "the operator confirmed the deletions");
                            Ok(RefusedRound::from(why))
                        }
                        _ => Err(Refused {
                            error: "no sync round is waiting for a confirmation".into(),
                            code: "nothing_to_confirm".into(),
                        }),
                    };
                    let _ = reply.send(r);
                }
                Inbox::Worker(FromWorker::Message(m, len)) => {
                    self.queued.fetch_sub(len, Ordering::Relaxed);
                    self.pair.handle_sync_message(now, &m);
                    if let Some(w) = &self.to_worker {
                        link_io::give_back(w, m);
                    }
                }
                Inbox::Worker(FromWorker::Report(r)) => self.pair.handle_sync_report(now, r),
                // The next wait reads the connections again.
                Inbox::Worker(FromWorker::Room) => {}
                Inbox::Stop(how, done) => self.stop = Some((how, done)),
                Inbox::Keys(key, next) => {
                    info!(next_key = next.is_some(), "peer link keys reloaded");
                    self.pair.set_link_keys(key, next);
                }
                Inbox::Transfer(payload) => {
                    if !self.pair.send_transfer(now, &payload) {
                        warn!("image frame not sent: the peer link is down");
                    }
                    self.transfer_queued
                        .fetch_sub(payload.len(), Ordering::Relaxed);
                }
                Inbox::Installed { identity, restart } => {
                    info!(firmware = %identity.firmware, language_pack = %identity.language_pack,
                          "this unit's versions");
                    self.config.identity.firmware.clone_from(&identity.firmware);
                    self.config
                        .identity
                        .language_pack
                        .clone_from(&identity.language_pack);
                    self.pair.set_identity(now, identity);
                    if restart {
                        info!("restarting (soft) after the install");
                        // The reply to the peer's request goes out first.
                        self.drain();
                        self.soft_restart();
                    }
                }
            }
            self.drain();
        }
    }

    /// Carries out everything the engine asks, in order.
    /// Returns the pair's next deadline.
    fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.pair.poll_output() {
                Output::Wait(deadline) => return deadline,
                Output::Persist(record) => {
                    if let Err(e) = save_state(&self.state_dir, &record) {
                        warn!(error = %e, "cannot persist the orchestrator's state");
                    }
                }
                Output::Vrrp(p) => {
                    if let Err(e) = self.vrrp.send(&p.bytes, p.dst) {
                        warn!(error = %e, "advertisement not sent");
                    }
                }
                Output::Announce => {
                    if let Some(g) = &self.garp {
                        g.send();
                    }
                    // Phones that only follow the address: their checks
                    // start with the term's first announcement (a phone
                    // without a check is reported unchecked, never home).
                    if !self.watching_phones {
                        self.watching_phones = true;
                        for (i, p) in self.phones.iter().enumerate() {
                            if p.spec.method == orch::PhoneMethod::FollowsAddress {
                                let _ = self.to_main.send(ToMain::WatchPhone(PhoneId(i as u32)));
                            }
                        }
                    }
                }
                Output::Command(issued) => {
                    self.dirty = true;
                    info!(command = ?issued.command, "command");
                    if issued.command == Command::RestartNode {
                        // A soft restart: the election from Initialize, the
                        // orchestrator from its journal (everything before
                        // this output is persisted).
                        info!(
                            "restarting (soft): election from Initialize, orchestrator from its journal"
                        );
                        self.soft_restart();
                    } else {
                        let _ = self.to_main.send(ToMain::Command(issued));
                    }
                }
                Output::Dial(id) => {
                    let now = self.now();
                    self.sockets.dial(&mut self.pair, now, id);
                }
                Output::Send { conn, bytes } => {
                    let now = self.now();
                    self.sockets.send(&mut self.pair, now, conn, &bytes);
                }
                Output::Close { conn, reason } => {
                    use failover_orchestrator::pair::CloseReason as Why;
                    if matches!(reason, Why::HandshakeFailed | Why::HandshakeTimeout) {
                        // Its failure is the engine's event, paced per address.
                        tracing::debug!(conn = conn.0, ?reason, "peer link: closing");
                    } else {
                        info!(conn = conn.0, ?reason, "peer link: closing");
                    }
                    let now = self.now();
                    self.sockets.close(&mut self.pair, now, conn);
                }
                Output::Sync(order) => match &self.to_worker {
                    Some(w) => {
                        let _ = self.sockets.hand_to_worker(w, order);
                    }
                    None => self.no_sync(order),
                },
                Output::Transfer(payload) => {
                    let _ = self.to_main.send(ToMain::Transfer(payload));
                }
                Output::Event(e) => {
                    self.dirty = true;
                    self.event(&e);
                }
            }
        }
    }

    /// Restarts the engines in-process: the election from Initialize, the
    /// orchestrator from its journal. The election's counters so far are
    /// kept for `/metrics`.
    fn soft_restart(&mut self) {
        if let Some(r) = self.pair.router() {
            self.tally.retire_router(r.stats());
        }
        self.pair
            .soft_restart(tick(&mut self.clock), SystemTime::now());
    }

    /// Without a `[sync]` section there is no tree to serve or settle.
    fn no_sync(&mut self, order: SyncOrder) {
        let report = match order {
            SyncOrder::Settle { id } => SyncReport::Done {
                id,
                result: Ok(failover_orchestrator::pair::GenerationStatus {
                    number: 0,
                    taken_at: None,
                    round_in_progress: false,
                }),
            },
            SyncOrder::RoundNow { id } => SyncReport::Done {
                id,
                result: Err("no [sync] section in the configuration".into()),
            },
            _ => return,
        };
        self.pair.handle_sync_report(tick(&mut self.clock), report);
    }

    fn event(&mut self, e: &PairEvent) {
        self.tally.on_event(e, self.pair.orchestrator().timeline());
        match e {
            PairEvent::Election(vrrp_fsm::Event::StateChange { from, to, reason }) => {
                self.last_change = unix_ms(SystemTime::now());
                if *to != vrrp_fsm::State::Master {
                    self.watching_phones = false;
                }
                info!(?from, ?to, ?reason, "vrrp state change");
            }
            PairEvent::Election(ev) => tracing::debug!(event = ?ev, "vrrp"),
            PairEvent::Orchestrator(ev) => match ev {
                orch::Event::Milestone(m) => {
                    info!(milestone = ?m, "timeline");
                    if let Some(t) = self.pair.orchestrator().timeline() {
                        self.kept.timeline = Some(t.clone());
                        self.kept.save(&self.state_dir);
                    }
                }
                orch::Event::ProcedureStarted { id, procedure } => {
                    info!(id, procedure = procedure.name(), "procedure started");
                    self.procedure = Some(RunningProcedure {
                        id: *id,
                        name: procedure.name().into(),
                        plan: None,
                        steps: std::collections::HashMap::new(),
                        failed: Vec::new(),
                    });
                }
                orch::Event::PlanStarted {
                    plan,
                    kind: orch::PlanKind::Procedure,
                } => {
                    if let Some(p) = &mut self.procedure {
                        p.plan.get_or_insert(*plan);
                    }
                }
                orch::Event::StepStarted { plan, .. } => {
                    tracing::debug!(event = ?ev, "orchestrator");
                    if let Some(p) = &mut self.procedure
                        && p.plan == Some(*plan)
                    {
                        let o = self
                            .pair
                            .orchestrator()
                            .status(Instant::now().max(self.clock));
                        if let Some(v) = o.procedure {
                            for (i, words) in v.active_steps {
                                p.steps.insert(i, words);
                            }
                        }
                    }
                }
                orch::Event::StepFailed { plan, step, policy } => {
                    warn!(?plan, step, ?policy, "step failed");
                    if let Some(p) = &mut self.procedure
                        && p.plan == Some(*plan)
                    {
                        let words = p
                            .steps
                            .get(step)
                            .cloned()
                            .unwrap_or_else(|| format!("step {step}"));
                        p.failed.push(words);
                    }
                }
                orch::Event::ProcedureFinished { id, outcome } => {
                    info!(id, ?outcome, "procedure finished");
                    let running = self.procedure.take().filter(|p| p.id == *id);
                    self.kept.last_procedure = Some(LastProcedure {
                        id: *id,
                        name: running
                            .as_ref()
                            .map_or_else(|| "procedure".into(), |p| p.name.clone()),
                        outcome: format!("{outcome:?}"),
                        failed_steps: running.map(|p| p.failed).unwrap_or_default(),
                        finished_unix_ms: unix_ms(SystemTime::now()),
                    });
                    self.kept.save(&self.state_dir);
                }
                orch::Event::StepDone { .. } => {
                    tracing::debug!(event = ?ev, "orchestrator");
                }
                _ => info!(event = ?ev, "orchestrator"),
            },
            PairEvent::LinkFailed { conn, why, from } => {
                let text = self.sockets.failure_text(*conn, *why);
                let from = from.map(|a| a.to_string());
                let from = from.as_deref().unwrap_or("-");
                if *why == LinkFailure::DialFailed {
                    // The socket layer logged the dial's failure already.
                    tracing::debug!(conn = conn.0, error = %text, "peer link failed");
                } else {
                    warn!(conn = conn.0, from, error = %text, "peer link failed");
                }
            }
            PairEvent::LinkFailuresSuppressed { .. } => warn!("{e}"),
            PairEvent::Sync(SyncReport::Opened(report)) => {
                if let Some((folder, files)) = &report.quarantined {
                    warn!(folder = %folder, files, "unconfirmed changes moved to quarantine");
                    if !self.quarantine.contains(folder) {
                        self.quarantine.push(folder.clone());
                    }
                }
                info!(?report, "replica opened");
            }
            PairEvent::Sync(SyncReport::Diverged(d)) => {
                warn!(
                    folder = d.folder.as_deref().unwrap_or("-"),
                    quarantined = d.quarantined,
                    missing = d.missing,
                    "local changes in the sync round's way, set aside"
                );
                if let Some(folder) = &d.folder
                    && !self.quarantine.contains(folder)
                {
                    self.quarantine.push(folder.clone());
                }
            }
            PairEvent::Sync(SyncReport::Refused(why)) => warn!(
                refusal = %why,
                "sync round refused by the mass-deletion guard; nothing changed \
                 (POST /sync/confirm-deletions confirms)"
            ),
            PairEvent::Sync(SyncReport::RoundDone(s)) => info!(
                generation = s.generation,
                fetched = s.fetched,
                renamed = s.renamed,
                deleted = s.deleted,
                seconds = s.took.as_secs_f64(),
                "sync round"
            ),
            other => info!(event = ?other, "pair"),
        }
    }

    /// The snapshot is rebuilt when something other than the steady beat
    /// happened (a state change, a command, an event, a request), at most
    /// every 20 ms, and at least every second for the counters: rebuilding
    /// it on every advertisement would cost more than the election.
    fn maybe_publish(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.published_at);
        if (self.dirty && since >= Duration::from_millis(20)) || since >= Duration::from_secs(1) {
            self.publish();
            self.published_at = now;
            self.dirty = false;
        }
    }

    fn publish(&mut self) {
        let now = Instant::now().max(self.clock);
        let totals = self.tally.vrrp(self.pair.router().map(|r| r.stats()));
        let counters = self.tally.counters(&totals, self.pair.stats().vrrp_ignored);
        let o = self.pair.orchestrator();
        let status = o.status(now);
        let mut s = match self.snapshot.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.id.clone_from(&self.config.id);
        s.vrrp = match self.pair.router() {
            Some(r) => view(
                r,
                &totals,
                self.last_change,
                self.last_rx.map_or(0, wall_ms),
            ),
            None => VrrpView {
                state: "Disabled".into(),
                transitions: totals.transitions,
                received: totals.received,
                dropped: totals.dropped(),
                ..VrrpView::default()
            },
        };
        s.role = s.vrrp.state.clone();
        s.summary = status.one_liner();
        s.address_held = self.pair.address_held();
        s.timeline = o.timeline().cloned().or_else(|| self.kept.timeline.clone());
        s.status = Some(status);
        s.operations = self
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        s.last_procedure.clone_from(&self.kept.last_procedure);
        s.services = self
            .config
            .services
            .iter()
            .enumerate()
            .map(|(i, svc)| ServiceView {
                name: svc.name.clone(),
                running: self.hooks.service_running(i),
            })
            .collect();
        s.phones = o.phone_outcomes();
        s.quarantine.clone_from(&self.quarantine);
        s.sync.refused = self.pair.sync_refused().map(RefusedRound::from);
        s.sync.window_ms = self
            .round_watch
            .exposure()
            .and_then(|e| e.window(SystemTime::now()))
            .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        s.counters = counters;
        s.words = crate::words::Words::of(&s, &self.phones, &self.config);
    }

    fn shut_down(&mut self, how: Stop) {
        if how == Stop::Graceful {
            // Priority 0 as Master, so that the Backup takes over at once.
            self.pair.handle_shutdown(tick(&mut self.clock));
            self.drain();
        }
        self.sockets.shut_all();
        if let Some(w) = &self.to_worker {
            let _ = w.send(ToWorker::Stop);
        }
    }
}

fn view(
    r: &vrrp_fsm::VirtualRouter,
    totals: &crate::metrics::VrrpTotals,
    last_change_unix_ms: u64,
    last_rx_unix_ms: u64,
) -> VrrpView {
    VrrpView {
        state: format!("{:?}", r.state()),
        priority: r.priority().get(),
        backup_mode: format!("{:?}", r.backup_mode()),
        master: r.master(),
        interval_ms: u64::from(r.master_interval().as_centis()) * 10,
        master_down_us: u64::try_from(r.master_down_interval().as_micros()).unwrap_or(u64::MAX),
        transitions: totals.transitions,
        received: totals.received,
        dropped: totals.dropped(),
        last_change_unix_ms,
        last_rx_unix_ms,
    }
}

// ---------------------------------------------------------------------------
// The main task: commands through the hooks and netlink

/// What the main task needs to carry out commands.
struct Runner {
    config: NodeConfig,
    hooks: Arc<dyn Hooks>,
    phones: Vec<Phone>,
    netlink: Option<(Netlink, u32)>,
    engine: EngineTx,
    ops: ops::Ops,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Runner {
    fn done(&self, id: CommandId, outcome: CommandOutcome) {
        self.engine.send(Inbox::Result(id, outcome));
    }

    fn execute(&self, issued: Issued) {
        let id = issued.id;
        if self.ops.execute(id, &issued.command) {
            return;
        }
        let engine = self.engine.clone();
        let answer = move |o: CommandOutcome| {
            engine.send(Inbox::Result(id, o));
        };
        match issued.command {
            Command::ClaimAddress => self.set_addresses(id, true),
            Command::ReleaseAddress => self.set_addresses(id, false),
            Command::StartService(ServiceId(i)) => {
                let Some(svc) = self.config.services.get(usize::from(i)) else {
                    self.done(id, CommandOutcome::Failed { code: 2 });
                    return;
                };
                let start = self.hooks.start_service(usize::from(i), svc);
                tokio::spawn(async move {
                    answer(match start.await {
                        Ok(()) => CommandOutcome::Done,
                        Err(e) => {
                            warn!(error = %e, "service failed to start");
                            CommandOutcome::Failed { code: 5 }
                        }
                    });
                });
            }
            Command::StopService(ServiceId(i)) => {
                let Some(svc) = self.config.services.get(usize::from(i)) else {
                    self.done(id, CommandOutcome::Failed { code: 2 });
                    return;
                };
                let stop = self.hooks.stop_service(usize::from(i), svc);
                tokio::spawn(async move {
                    stop.await;
                    answer(CommandOutcome::Done);
                });
            }
            Command::CheckService(ServiceId(i)) => {
                let Some(svc) = self.config.services.get(usize::from(i)) else {
                    self.done(id, CommandOutcome::Failed { code: 2 });
                    return;
                };
                let check = self.hooks.check_service(usize::from(i), svc);
                tokio::spawn(async move {
                    answer(match check.await {
                        Readiness::Ready => CommandOutcome::Done,
                        Readiness::NotReady => CommandOutcome::NotReady,
                        Readiness::Dead => CommandOutcome::Failed { code: 3 },
                    });
                });
            }
            Command::NudgePhone(p) | Command::RebootPhone(p) => {
                let reboot = matches!(issued.command, Command::RebootPhone(_));
                let Some(phone) = self.phones.get(p.0 as usize) else {
                    self.done(id, CommandOutcome::Failed { code: 2 });
                    return;
                };
                let action = self.hooks.phone_action(phone, reboot);
                let check = self.hooks.phone_registered(phone);
                let engine = self.engine.clone();
                tokio::spawn(async move {
                    let ok = action.await;
                    answer(outcome(ok));
                    // Home only when a check says so; without one the
                    // action's success leaves the phone unchecked.
                    match (ok, check) {
                        (false, _) => {}
                        (true, None) => {
                            engine.send(Inbox::Unchecked(p));
                        }
                        (true, Some(check)) => {
                            if check.await {
                                engine.send(Inbox::Registered(p));
                            }
                        }
                    }
                });
            }
            Command::CheckNode => self.done(id, CommandOutcome::Done),
            other => {
                warn!(command = ?other, "no hook configured for this command");
                self.done(id, CommandOutcome::Failed { code: 1 });
            }
        }
    }

    /// Checks whether a phone that follows the address registers once it
    /// is announced; reports it unchecked when it has no check.
    fn watch_phone(&self, p: PhoneId) {
        let Some(phone) = self.phones.get(p.0 as usize) else {
            return;
        };
        let engine = self.engine.clone();
        match self.hooks.phone_registered(phone) {
            None => {
                engine.send(Inbox::Unchecked(p));
            }
            Some(check) => {
                tokio::spawn(async move {
                    if check.await {
                        engine.send(Inbox::Registered(p));
                    }
                });
            }
        }
    }

    /// Adds (`claim`) or removes the virtual addresses over netlink, or
    /// logs what it would do when unprivileged.
    fn set_addresses(&self, id: CommandId, claim: bool) {
        let what = if claim { "claim" } else { "release" };
        let Some((nl, index)) = self.netlink.clone() else {
            info!(addresses = ?self.config.vrrp.virtual_ips, "{what} (logged, not made: unprivileged)");
            self.done(id, CommandOutcome::Done);
            return;
        };
        let vips = self.config.vrrp.virtual_ips.clone();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let mut ok = true;
            for v in vips {
                let r = if claim {
                    nl.add(index, v).await
                } else {
                    nl.remove(index, v).await
                };
                if let Err(e) = r {
                    warn!(address = %v.addr, error = %e, "{what} failed");
                    ok = false;
                }
            }
            engine.send(Inbox::Result(id, outcome(ok)));
        });
    }
}

/// Where the operator's redundancy switch is kept: once set through the
/// API, it overrides the configuration's `redundancy`.
fn redundancy_file(state_dir: &Path) -> PathBuf {
    state_dir.join("redundancy")
}

/// The redundancy this node starts with: the operator's switch if it was
/// ever used, else the configuration.
fn start_redundancy(config: &NodeConfig) -> Redundancy {
    let stored = std::fs::read_to_string(redundancy_file(&config.state_dir)).ok();
    let enabled = match stored.as_deref().map(str::trim) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => config.redundancy,
    };
    if enabled {
        Redundancy::Enabled
    } else {
        Redundancy::Disabled
    }
}

fn store_redundancy(state_dir: &Path, enabled: bool) -> std::io::Result<()> {
    let tmp = state_dir.join("redundancy.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(if enabled { b"enabled\n" } else { b"disabled\n" })?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, redundancy_file(state_dir))
}

/// The quarantine folders already in a data directory, by name.
fn quarantine_folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(".sync-delta").join("quarantine"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn load_state(dir: &Path) -> PersistentState {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Starts a node; returns when it has shut down (after `shutdown`
/// resolves, gracefully: services stopped, the address released,
/// priority 0 sent).
///
/// # Errors
/// [`NodeError`] before anything is touched for a bad configuration, and
/// for sockets or interfaces that cannot be opened.
#[allow(clippy::too_many_lines)]
pub async fn run(
    mut config: NodeConfig,
    options: Options,
    hooks: Arc<dyn Hooks>,
    shutdown: impl std::future::Future<Output = Stop>,
    ready: Option<oneshot::Sender<NodeHandle>>,
) -> Result<(), NodeError> {
    // Everything the configuration names is read, and every engine's
    // configuration built, before a file is made or a packet sent: a bad
    // configuration touches nothing.
    let files = match &config.files {
        Some(files) => files.clone(),
        None => config.read_files()?,
    };
    let key = files.link_keys()?;
    let phones = files.phones;
    // The installed versions, from the vendor's hook when there is one.
    if let Some(cmd) = &config.hooks.version {
        crate::procedures::read_versions(
            cmd,
            Duration::from_secs(60),
            &mut config.identity.firmware,
            &mut config.identity.language_pack,
        )
        .await
        .map_err(|e| io_err("[hooks] version")(std::io::Error::other(e)))?;
    }
    let orch_config = orchestrator_config(&config, &phones).map_err(orchestrator_key)?;

    // The interface, the primary address and leftovers of a crashed run.
    let vrrp_cfg = &config.vrrp;
    let v4 = vrrp_cfg.virtual_ips[0].addr.is_ipv4();
    let (netlink, iface, primary, socket_spec) = match vrrp_cfg.transport {
        Transport::Raw => {
            let name = vrrp_cfg.interface.clone().unwrap_or_default();
            let nl = Netlink::open()?;
            let iface = nl.interface(&name).await?;
            let primary = iface.primary(v4, &vrrp_cfg.virtual_ips)?;
            let spec = match primary {
                IpAddr::V4(p) => SocketSpec::RawV4 {
                    interface: name,
                    ifindex: iface.index,
                    primary: p,
                },
                IpAddr::V6(p) => SocketSpec::RawV6 {
                    interface: name,
                    ifindex: iface.index,
                    src: p,
                    dst: if vrrp_cfg.unicast_peers.is_empty() {
                        IpAddr::V6(vrrp_proto::IPV6_GROUP)
                    } else {
                        primary
                    },
                },
            };
            (Some(nl), Some(iface), primary, spec)
        }
        Transport::Udp => {
            let listen =
                vrrp_cfg
                    .udp_listen
                    .ok_or_else(|| crate::config::ConfigError::Invalid {
                        key: "vrrp.udp_listen".into(),
                        reason: "required".into(),
                    })?;
            (
                None,
                None,
                listen.ip(),
                SocketSpec::Udp {
                    listen,
                    peers: vrrp_cfg.udp_peers.clone(),
                },
            )
        }
    };
    let privileged = options.privileged && netlink.is_some();

    // The election's configuration (the pair engine applies the persisted
    // priority and backup mode).
    let mut b = vrrp_fsm::Config::builder(vrrp_cfg.version, vrrp_cfg.vrid, primary)
        .priority(vrrp_cfg.priority)
        .interval(vrrp_cfg.interval)
        .addresses(vrrp_cfg.virtual_ips.iter().map(|v| v.addr))
        .preempt(if vrrp_cfg.preempt {
            vrrp_fsm::Preempt::Enabled
        } else {
            vrrp_fsm::Preempt::Disabled
        })
        .preempt_delay(vrrp_cfg.preempt_delay)
        .accept_mode(if vrrp_cfg.accept {
            vrrp_fsm::AcceptMode::Enabled
        } else {
            vrrp_fsm::AcceptMode::Disabled
        })
        .checksum_form(match vrrp_cfg.v3_ipv4_checksum {
            crate::config::ChecksumForm::PseudoHeader => vrrp_proto::Ipv4ChecksumForm::PseudoHeader,
            crate::config::ChecksumForm::MessageOnly => vrrp_proto::Ipv4ChecksumForm::MessageOnly,
        })
        .startup_delay(vrrp_cfg.startup_delay)
        .gratuitous(vrrp_fsm::GratuitousConfig {
            count: vrrp_cfg.garp_count,
            spacing: vrrp_cfg.garp_interval,
            refresh: None,
        });
    if let Some(pass) = &vrrp_cfg.auth_pass {
        b = b.auth(vrrp_proto::Auth::simple(pass.as_bytes()).map_err(|e| {
            crate::config::ConfigError::Invalid {
                key: "vrrp.auth_pass".into(),
                reason: e.to_string(),
            }
        })?);
    }
    let mut peers: Vec<IpAddr> = match vrrp_cfg.transport {
        Transport::Raw => vrrp_cfg.unicast_peers.clone(),
        Transport::Udp => vrrp_cfg
            .udp_peers
            .iter()
            .map(std::net::SocketAddr::ip)
            .collect(),
    };
    // One message per address: UDP peers that share an address (ports
    // apart) each get it from the socket.
    let mut seen = std::collections::HashSet::new();
    peers.retain(|p| seen.insert(*p));
    for p in &peers {
        b = b.peer(*p);
    }
    let fsm_config = b.build().map_err(|e| vrrp_key(e, vrrp_cfg.transport))?;

    // From here on, things are made.
    std::fs::create_dir_all(&config.state_dir).map_err(io_err(format!(
        "creating the state directory {}",
        config.state_dir.display()
    )))?;
    let mut persisted = load_state(&config.state_dir);
    persisted.redundancy = start_redundancy(&config);
    if let (true, Some(nl), Some(iface)) = (privileged, &netlink, &iface) {
        for v in &vrrp_cfg.virtual_ips {
            if iface.addresses.contains(&v.addr) {
                info!(address = %v.addr, "removing a virtual address left by an earlier run");
                nl.remove(iface.index, *v).await?;
            }
        }
    }
    let garp = match (&iface, privileged) {
        (Some(iface), true) => Some(GarpSpec {
            ifindex: iface.index,
            mac: iface.mac,
            primary,
            addresses: vrrp_cfg.virtual_ips.iter().map(|v| v.addr).collect(),
        }),
        _ => None,
    };
    if vrrp_cfg.no_swap {
        use nix::sys::mman::{MlockAllFlags, mlockall};
        match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => info!("memory locked (no_swap)"),
            Err(e) => warn!(error = %e, "mlockall refused; memory may be swapped"),
        }
    }
    let vrrp = open_socket(&socket_spec).map_err(io_err("opening the VRRP socket"))?;

    // The peer link and the tree.
    let (link, listener, peer_addr, worker) = match (&config.sync, key) {
        (Some(sync), Some(key)) => {
            std::fs::create_dir_all(&sync.dir).map_err(io_err(format!(
                "creating the data directory {}",
                sync.dir.display()
            )))?;
            let store = FsStore::parallel(&sync.dir).map_err(|e| NodeError::Io {
                what: format!("opening {}", sync.dir.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
            let listener = link_io::listen(sync.listen)
                .map_err(io_err(format!("peer link listener on {}", sync.listen)))?;
            let mut link =
                LinkConfig::new(key.0, LinkConfig::dials_by_address(sync.listen, sync.peer));
            link.next_key = key.1;
            // One handshake slot is always the peer's.
            link.peer = Some(sync.peer.ip());
            let (tx, rx) = std_mpsc::channel();
            // Change hints for the source: the kernel's notifications on
            // the tree, kept until the node stops. Without them (watching
            // off, or refused) the source counts its data-loss window from
            // the last full scan its replica confirmed, never as clear.
            let watcher = if sync.watch {
                let exclude = sync_delta::Exclude::new(&sync.exclude);
                match crate::watch::watch_tree(&sync.dir, exclude, tx.clone()) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        warn!(error = %e, interval_s = sync.interval.as_secs(),
                              "cannot watch the data directory; changes reach the \
                               Backup at the next full scan");
                        None
                    }
                }
            } else {
                None
            };
            let worker = SyncWorker::new(SyncConfig {
                exclude: sync_delta::Exclude::new(&sync.exclude),
                interval: sync.interval,
                watch: watcher.is_some(),
                batch: sync.batch,
                mass_delete_fraction: sync.mass_delete_fraction.get(),
                mass_delete_window: sync.mass_delete_window,
                ..SyncConfig::default()
            });
            (
                link,
                Some(listener),
                Some(sync.peer),
                Some((worker, store, tx, rx, watcher)),
            )
        }
        _ => {
            // No peer link: this end never dials and nobody can prove a
            // key made of fresh OS randomness.
            let secret = link_io::os_nonce().map_err(io_err("a key from the OS"))?;
            let key = PreSharedKey::new(secret.0)
                .map_err(|e| io_err("a key from the OS")(std::io::Error::other(e)))?;
            (LinkConfig::new(key, false), None, None, None)
        }
    };

    let pair = Pair::new(
        PairConfig {
            vrrp: fsm_config,
            orchestrator: orch_config,
            link,
            vrrp_datagrams: vrrp.sends_datagrams(),
        },
        persisted,
        Instant::now(),
        SystemTime::now(),
    );

    let (engine_tx, inbox) =
        link_io::Inbox::new().map_err(io_err("creating the engine's wake-up pair"))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let buffered = Arc::new(AtomicUsize::new(0));
    let inbound = Arc::new(AtomicUsize::new(0));
    let round_watch = link_io::RoundWatch::default();
    let (to_worker, worker_thread, _tree_watcher) = match worker {
        Some((worker, store, tx, rx, watcher)) => {
            let to_engine = engine_tx.clone();
            let t = link_io::spawn_worker_watched(
                worker,
                store,
                rx,
                move |m| to_engine.send(Inbox::Worker(m)),
                queued.clone(),
                buffered.clone(),
                inbound.clone(),
                Some(round_watch.clone()),
            )
            .map_err(io_err("starting the sync thread"))?;
            (Some(tx), Some(t), watcher)
        }
        None => (None, None, None),
    };
    let (to_main, mut from_engine) = mpsc::unbounded_channel();
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let netlink = match (netlink, &iface, privileged) {
        (Some(nl), Some(i), true) => Some((nl, i.index)),
        _ => None,
    };
    let staging =
        crate::procedures::Staging::new(&config.hooks.staging_dir, config.hooks.max_image_bytes)
            .map_err(io_err(format!(
                "creating the staging folder {}",
                config.hooks.staging_dir.display()
            )))?;
    let operations = Arc::new(Mutex::new(Operations::default()));
    let transfer_queued = Arc::new(AtomicUsize::new(0));
    let identity = orch_identity(&config);
    let sockets = Sockets::new(listener, peer_addr, buffered.clone(), inbound)
        .and_then(|s| {
            s.watch(vrrp.fd(), TOKEN_VRRP)?;
            s.watch(&inbox.wake, TOKEN_WAKE)?;
            if let Some(alert) = vrrp.alert_fd() {
                s.watch(alert, TOKEN_ALERT)?;
            }
            Ok(s)
        })
        .map_err(io_err("creating the engine's poller"))?;
    let can_hold = vrrp.alert_fd().is_some();
    let engine = Engine {
        pair,
        rx: vec![0u8; 65_536],
        vrrp,
        sockets,
        garp,
        state_dir: config.state_dir.clone(),
        inbox,
        to_main,
        to_worker,
        queued,
        round_watch,
        snapshot: snapshot.clone(),
        hooks: hooks.clone(),
        config: config.clone(),
        phones: phones.clone(),
        last_change: unix_ms(SystemTime::now()),
        last_rx: None,
        holding: None,
        can_hold,
        watching_phones: false,
        stop: None,
        dirty: true,
        published_at: Instant::now(),
        clock: Instant::now(),
        quarantine: config
            .sync
            .as_ref()
            .map(|s| quarantine_folders(&s.dir))
            .unwrap_or_default(),
        tally: crate::metrics::Tally::default(),
        operations: operations.clone(),
        transfer_queued: transfer_queued.clone(),
        procedure: None,
        kept: Kept::load(&config.state_dir),
    };
    let rt_priority = vrrp_cfg.rt_priority;
    let engine_thread = std::thread::Builder::new()
        .name("pair".into())
        .spawn(move || {
            if let Some(prio) = rt_priority {
                set_realtime(prio);
            }
            engine.run();
        })
        .map_err(io_err("starting the engine thread"))?;

    let ops = ops::Ops::new(
        staging,
        config.hooks.clone(),
        engine_tx.clone(),
        operations,
        identity,
        buffered,
        transfer_queued,
    )
    .map_err(io_err("starting the image receiver"))?;
    let runner = Runner {
        hooks: hooks.clone(),
        phones,
        netlink,
        engine: engine_tx.clone(),
        config,
        ops,
        snapshot: snapshot.clone(),
    };
    let (api_tx, mut api) = mpsc::channel(16);
    let status_server = if let Some(status) = runner.config.status.clone() {
        let listen = status.listen;
        Some(
            crate::status::spawn(
                status,
                files.token,
                runner.config.sync.as_ref().map(|s| s.peer),
                snapshot.clone(),
                api_tx.clone(),
                Some(runner.ops.staging.clone()),
            )
            .await
            .map_err(io_err(format!("status endpoint on {listen}")))?,
        )
    } else {
        None
    };
    if let Some(r) = ready {
        let _ = r.send(NodeHandle {
            api: api_tx.clone(),
            snapshot: snapshot.clone(),
        });
    }

    tokio::pin!(shutdown);
    let stop = loop {
        tokio::select! {
            how = &mut shutdown => break how,
            Some(m) = from_engine.recv() => match m {
                ToMain::Command(issued) => runner.execute(issued),
                ToMain::WatchPhone(p) => runner.watch_phone(p),
                ToMain::Transfer(payload) => runner.ops.transfer_in(payload),
            },
            Some(req) = api.recv() => forward(&runner, status_server.as_ref(), req),
        }
    };

    let (done_tx, done_rx) = oneshot::channel();
    if stop == Stop::Crash {
        info!("crash: stopping without a word to the peer");
        engine_tx.send(Inbox::Stop(Stop::Crash, done_tx));
        let _ = done_rx.await;
        stop_services(&runner).await;
    } else {
        // Graceful: services in reverse order, the address, priority 0.
        info!("shutting down");
        stop_services(&runner).await;
        if let Some((nl, index)) = &runner.netlink {
            for v in &runner.config.vrrp.virtual_ips {
                let _ = nl.remove(*index, *v).await;
            }
        }
        engine_tx.send(Inbox::Stop(Stop::Graceful, done_tx));
        let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = engine_thread.join();
        if let Some(t) = worker_thread {
            let _ = t.join();
        }
    })
    .await;
    Ok(())
}

async fn stop_services(runner: &Runner) {
    for i in runner.config.start_order().into_iter().rev() {
        if let Some(svc) = runner.config.services.get(i) {
            runner.hooks.stop_service(i, svc).await;
        }
    }
}

/// Hands an operator request to the engine thread; the answer comes once
/// preflight has decided. A reload goes to the engine (the keys) and to
/// the status server (the token).
fn forward(runner: &Runner, status: Option<&crate::status::StatusServer>, req: ApiRequest) {
    match req {
        ApiRequest::Reload { keys, token } => {
            if let Some((key, next)) = keys {
                runner.engine.send(Inbox::Keys(key, next));
            }
            if let Some(server) = status {
                server.set_token(token);
                info!("status API token reloaded");
            }
        }
        ApiRequest::ConfirmDeletions(reply) => {
            runner.engine.send(Inbox::ConfirmDeletions(reply));
        }
        ApiRequest::SetBackupMode(mode, expires_s, reply) => {
            runner.engine.send(Inbox::Operator(
                OperatorRequest::SetBackupMode {
                    mode,
                    expires_at: expires_s
                        .and_then(|s| SystemTime::now().checked_add(Duration::from_secs(s))),
                },
                reply,
            ));
        }
        ApiRequest::Upgrade(image, reply) => {
            let snapshot = runner
                .snapshot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            runner.ops.upgrade(image, &snapshot, reply);
        }
        ApiRequest::Restore(archive, reply) => runner.ops.restore(archive, reply),
        ApiRequest::Swap(reply) => {
            runner
                .engine
                .send(Inbox::Operator(OperatorRequest::Swap, reply));
        }
        ApiRequest::SetRedundancy(enabled, reply) => {
            let r = if enabled {
                Redundancy::Enabled
            } else {
                Redundancy::Disabled
            };
            let (tx, rx) = oneshot::channel();
            runner
                .engine
                .send(Inbox::Operator(OperatorRequest::SetRedundancy(r), tx));
            let state_dir = runner.config.state_dir.clone();
            tokio::spawn(async move {
                let answer = match rx.await {
                    Ok(Ok(id)) => {
                        // From now on the switch, not the configuration.
                        if let Err(e) = store_redundancy(&state_dir, enabled) {
                            warn!(error = %e, "the redundancy switch is not stored");
                        }
                        Ok(id)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Refused {
                        error: "the node is stopping".into(),
                        code: "stopping".into(),
                    }),
                };
                let _ = reply.send(answer);
            });
        }
    }
}
