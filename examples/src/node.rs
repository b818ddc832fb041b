//! The node daemon: the four engines wired to sockets, netlink, processes,
//! files and the clock.
//!
//! Threads and tasks:
//! - the VRRP engine runs on a thread of its own that waits in `ppoll(2)`
//!   on its socket with the engine's deadline (optionally SCHED_FIFO), so
//!   that nothing else (file hashing, HTTP, process spawns) can delay an
//!   advertisement or a timeout;
//! - the main task owns the orchestrator: it feeds it role changes, peer
//!   messages, sync status, operator requests and command results, and
//!   carries out the commands it emits;
//! - the peer link ([`crate::peer`]) runs sync rounds on its own threads;
//! - the status API ([`crate::status`]) reads a snapshot the main task
//!   publishes after every input.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::{
    self as orch, Command, CommandOutcome, Issued, OperatorRequest, Orchestrator, PersistentState,
    PhoneId, Role, RoleChange, RoleChangeReason, ServiceId, ServiceSpec,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use vrrp_fsm::{BackupMode, Event as VrrpEvent, Reason, Release, State};

use crate::config::{NodeConfig, Transport};
use crate::hooks::{Hooks, Readiness};
use crate::net::Netlink;
use crate::peer::{PeerCommand, PeerConfig, PeerEvent, SyncRole};
use crate::phones::Phone;
use crate::vrrp_io::{Received, VrrpSocket};

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

/// An operator request from the status API, answered on `reply`.
#[derive(Debug)]
pub enum ApiRequest {
    /// Set the Backup mode (on a Backup its own, on a Master the peer's).
    SetBackupMode(orch::BackupMode, oneshot::Sender<Result<u64, String>>),
    /// Swap Master and Backup (on the Master).
    Swap(oneshot::Sender<Result<u64, String>>),
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
    /// State changes so far.
    pub transitions: u64,
    /// Advertisements received and accepted.
    pub received: u64,
    /// Advertisements dropped by receive rules.
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
// The VRRP thread

/// Inputs to the VRRP thread.
#[derive(Debug)]
enum VrrpCmd {
    Arm(u8),
    Release(Option<u8>),
    StepDown,
    Mode(BackupMode),
    /// Graceful stop (priority 0 as Master), then the thread ends.
    Shutdown(oneshot::Sender<()>),
    /// Shut down and start again (a soft restart of "this node").
    Restart,
    /// Stop at once, sending nothing: a simulated power cut.
    Crash,
}

/// What the VRRP thread reports.
#[derive(Debug)]
enum VrrpOut {
    Event(VrrpEvent),
    View(VrrpView),
}

struct VrrpSetup {
    config: vrrp_fsm::Config,
    socket_spec: SocketSpec,
    garp: Option<GarpSpec>,
    rt_priority: Option<u8>,
}

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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn view(r: &vrrp_fsm::VirtualRouter, last_change_unix_ms: u64, last_rx_unix_ms: u64) -> VrrpView {
    let s = r.stats();
    VrrpView {
        state: format!("{:?}", r.state()),
        priority: r.priority().get(),
        backup_mode: format!("{:?}", r.backup_mode()),
        master: r.master(),
        interval_ms: u64::from(r.master_interval().as_centis()) * 10,
        master_down_us: u64::try_from(r.master_down_interval().as_micros()).unwrap_or(u64::MAX),
        transitions: State::ALL
            .iter()
            .flat_map(|f| State::ALL.iter().map(move |t| (*f, *t)))
            .map(|(f, t)| s.transitions(f, t))
            .sum(),
        received: s.rx_accepted,
        dropped: s.dropped(),
        last_change_unix_ms,
        last_rx_unix_ms,
    }
}

/// The sending side of the VRRP thread's command queue: a channel, and a
/// datagram socket pair whose byte wakes the thread's `ppoll`.
#[derive(Clone)]
struct VrrpTx {
    tx: std::sync::mpsc::Sender<VrrpCmd>,
    wake: Arc<std::os::unix::net::UnixDatagram>,
}

impl VrrpTx {
    fn send(&self, cmd: VrrpCmd) -> Result<(), ()> {
        self.tx.send(cmd).map_err(drop)?;
        // A full wake buffer already wakes the thread: ignore that error.
        let _ = self.wake.send(&[1]);
        Ok(())
    }
}

fn spawn_vrrp(
    setup: VrrpSetup,
    out: mpsc::UnboundedSender<VrrpOut>,
) -> Result<(VrrpTx, std::thread::JoinHandle<()>), NodeError> {
    let socket = open_socket(&setup.socket_spec).map_err(io_err("opening the VRRP socket"))?;
    let (wake_tx, wake_rx) = std::os::unix::net::UnixDatagram::pair()
        .map_err(io_err("creating the VRRP wake-up pair"))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(io_err("creating the VRRP wake-up pair"))?;
    wake_tx
        .set_nonblocking(true)
        .map_err(io_err("creating the VRRP wake-up pair"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("vrrp".into())
        .spawn(move || {
            if let Some(prio) = setup.rt_priority {
                set_realtime(prio);
            }
            vrrp_loop(&setup, &socket, &rx, &wake_rx, &out);
        })
        .map_err(io_err("starting the vrrp thread"))?;
    Ok((
        VrrpTx {
            tx,
            wake: Arc::new(wake_tx),
        },
        handle,
    ))
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

/// The election thread's side of the I/O: where advertisements go, where
/// events are reported, and the times the status shows.
struct ThreadIo<'a> {
    socket: &'a VrrpSocket,
    tx: Vec<u8>,
    garp: Option<&'a GarpSpec>,
    out: &'a mpsc::UnboundedSender<VrrpOut>,
    last_change: u64,
    last_rx: u64,
}

impl ThreadIo<'_> {
    /// Sends what the router has queued and reports its events.
    fn flush(&mut self, router: &mut vrrp_fsm::VirtualRouter) {
        let (socket, tx, garp, out) = (self.socket, &mut self.tx, self.garp, self.out);
        loop {
            let t = if socket.sends_datagrams() {
                router.poll_transmit_datagram(tx)
            } else {
                router.poll_transmit(tx)
            };
            let Some(t) = t else { break };
            if let Err(e) = socket.send(&tx[..t.len], t.dst) {
                warn!(error = %e, "advertisement not sent");
            }
        }
        while let Some(ev) = router.poll_event() {
            match ev {
                VrrpEvent::SendGratuitous(_) => {
                    if let Some(g) = garp {
                        g.send();
                    }
                }
                VrrpEvent::StateChange { .. } => self.last_change = unix_ms(SystemTime::now()),
                _ => {}
            }
            let _ = out.send(VrrpOut::Event(ev));
        }
    }

    /// Publishes the router's view.
    fn publish(&self, router: &vrrp_fsm::VirtualRouter) {
        let _ = self
            .out
            .send(VrrpOut::View(view(router, self.last_change, self.last_rx)));
    }
}

/// How long to ask `ppoll` to wait for a deadline `left` away. For threads
/// that are not real-time the kernel may wake a poll up to 0.1 % of its
/// timeout late (3.6 ms on a 3.6 s Master_Down_Interval), so a long wait
/// ends a little early by design and the short remainder, whose slack is
/// microseconds, is waited for on the next round of the loop.
fn poll_wait(left: Duration) -> Duration {
    const EARLY: Duration = Duration::from_micros(200);
    if left > Duration::from_millis(2) {
        left - left / 500 - EARLY
    } else {
        left
    }
}

/// The election thread: one `ppoll` on the socket and the wake-up socket,
/// with the engine's next deadline as a nanosecond timeout.
fn vrrp_loop(
    setup: &VrrpSetup,
    socket: &VrrpSocket,
    cmds: &std::sync::mpsc::Receiver<VrrpCmd>,
    wake: &std::os::unix::net::UnixDatagram,
    out: &mpsc::UnboundedSender<VrrpOut>,
) {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use std::os::fd::AsFd;

    let mut router = vrrp_fsm::VirtualRouter::new(setup.config.clone(), Instant::now());
    router.handle_startup(Instant::now());
    let mut rx = vec![0u8; 65_536];
    let mut io = ThreadIo {
        socket,
        tx: vec![0u8; router.max_transmit_len().max(64) + 64],
        garp: setup.garp.as_ref(),
        out,
        last_change: unix_ms(SystemTime::now()),
        last_rx: 0,
    };
    let mut wake_buf = [0u8; 64];
    loop {
        io.flush(&mut router);
        io.publish(&router);

        let timeout = router.poll_timeout().map(|d| {
            nix::sys::time::TimeSpec::from_duration(poll_wait(
                d.saturating_duration_since(Instant::now()),
            ))
        });
        let mut fds = [
            PollFd::new(socket.fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match ppoll(&mut fds, timeout, None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "vrrp poll");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let now = Instant::now();
        if router.poll_timeout().is_some_and(|d| d <= now) {
            router.handle_timeout(now);
        }
        // Every packet waiting, each with the time it was read.
        loop {
            match socket.try_recv(&mut rx) {
                Ok(Some(Received::Datagram(n))) => {
                    if router.handle_datagram(Instant::now(), &rx[..n]).is_ok() {
                        io.last_rx = unix_ms(SystemTime::now());
                    }
                }
                Ok(Some(Received::Message(n, meta))) => {
                    if router
                        .handle_message(Instant::now(), &rx[..n], meta)
                        .is_ok()
                    {
                        io.last_rx = unix_ms(SystemTime::now());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "vrrp receive");
                    break;
                }
            }
            io.flush(&mut router);
        }
        while wake.recv(&mut wake_buf).is_ok() {}
        loop {
            let now = Instant::now();
            let result = match cmds.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    router.handle_shutdown(now);
                    io.flush(&mut router);
                    return;
                }
                Ok(VrrpCmd::Crash) => return,
                Ok(VrrpCmd::Shutdown(reply)) => {
                    router.handle_shutdown(now);
                    io.flush(&mut router);
                    io.publish(&router);
                    let _ = reply.send(());
                    return;
                }
                Ok(VrrpCmd::Restart) => {
                    router.handle_shutdown(now);
                    io.flush(&mut router);
                    let config = rebuild(&setup.config, router.backup_mode(), router.priority())
                        .unwrap_or_else(|| setup.config.clone());
                    router = vrrp_fsm::VirtualRouter::new(config, now);
                    router.handle_startup(now);
                    Ok(())
                }
                Ok(VrrpCmd::Arm(p)) => router
                    .set_priority(now, vrrp_proto::Priority(p))
                    .and_then(|()| router.arm_takeover(now)),
                Ok(VrrpCmd::Release(p)) => {
                    let mut r = Release::new();
                    if let Some(p) = p {
                        r = r.priority(vrrp_proto::Priority(p));
                    }
                    router.release(now, r)
                }
                Ok(VrrpCmd::StepDown) => router.release(now, Release::new()),
                Ok(VrrpCmd::Mode(m)) => {
                    router.set_backup_mode(now, m);
                    Ok(())
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "vrrp command refused");
            }
            io.flush(&mut router);
        }
    }
}

/// The configuration again with the mode and priority a restart keeps.
fn rebuild(
    config: &vrrp_fsm::Config,
    mode: BackupMode,
    priority: vrrp_proto::Priority,
) -> Option<vrrp_fsm::Config> {
    let mut b = vrrp_fsm::Config::builder(config.version(), config.vrid(), config.primary())
        .priority(priority)
        .interval(config.interval())
        .addresses(config.addresses().iter())
        .preempt(config.preempt())
        .preempt_delay(config.preempt_delay())
        .accept_mode(config.accept_mode())
        .auth(*config.auth())
        .checksum_form(config.checksum_form())
        .backup_mode(mode)
        .gratuitous(config.gratuitous())
        .startup_delay(config.startup_delay())
        .release_hold_off(config.release_hold_off());
    for p in config.peers() {
        b = b.peer(*p);
    }
    b.build().ok()
}

/// Receives from an optional channel; pending forever without one.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------
// The main task

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

/// Maps an election state change to the orchestrator's mirror type.
fn role_change(from: State, to: State, reason: Reason) -> RoleChange {
    let role = |s| match s {
        State::Initialize => Role::Initialize,
        State::Backup => Role::Backup,
        State::Master => Role::Master,
    };
    let reason = match reason {
        Reason::MasterDown | Reason::Preempt => RoleChangeReason::MasterDown,
        Reason::MasterReleased => RoleChangeReason::PeerReleased,
        Reason::HigherPriority => RoleChangeReason::HigherPriorityMaster,
        Reason::ArmedTakeover | Reason::Takeover => RoleChangeReason::SwapTakeover,
        Reason::Release => RoleChangeReason::Released,
        Reason::Shutdown | Reason::LinkDown => RoleChangeReason::Shutdown,
        _ => RoleChangeReason::Startup,
    };
    RoleChange {
        from: role(from),
        to: role(to),
        reason,
    }
}

fn fsm_mode(m: orch::BackupMode) -> BackupMode {
    match m {
        orch::BackupMode::Active => BackupMode::Active,
        orch::BackupMode::Passive => BackupMode::Passive,
    }
}

fn load_state(dir: &Path) -> PersistentState {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
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

struct Main {
    config: NodeConfig,
    orch: Orchestrator,
    vrrp: VrrpTx,
    results: mpsc::UnboundedSender<(orch::CommandId, CommandOutcome)>,
    registered: mpsc::UnboundedSender<PhoneId>,
    sync_status: mpsc::UnboundedSender<orch::SyncStatus>,
    netlink: Option<(Netlink, u32)>,
    garp: Option<GarpSpec>,
    phones: Vec<Phone>,
    hooks: Arc<dyn Hooks>,
    peer: Option<mpsc::Sender<PeerCommand>>,
    vrrp_state: State,
    orch_config: orch::Config,
    restart_pending: bool,
    snapshot: Arc<Mutex<Snapshot>>,
    vrrp_view: VrrpView,
    address_held: bool,
}

impl Main {
    fn wall() -> SystemTime {
        SystemTime::now()
    }

    fn drain(&mut self) {
        let now = Instant::now();
        while let Some(record) = self.orch.poll_journal() {
            if let Err(e) = save_state(&self.config.state_dir, &record) {
                warn!(error = %e, "cannot persist the orchestrator's state");
            }
        }
        while let Some(issued) = self.orch.poll_command() {
            self.execute(issued);
        }
        while let Some(msg) = self.orch.poll_transmit() {
            let mut bytes = Vec::new();
            match orch::wire::encode(&msg, &mut bytes) {
                Ok(()) => self.to_peer(PeerCommand::SendPeerMessage(bytes)),
                Err(e) => warn!(error = %e, "peer message not encoded"),
            }
        }
        while let Some(ev) = self.orch.poll_event() {
            log_event(&ev);
            match ev {
                orch::Event::TermTaken(e) | orch::Event::EpochAdopted(e) => {
                    self.to_peer(PeerCommand::SetEpoch(sync_delta::Epoch {
                        term: e.term,
                        node: e.node,
                    }));
                }
                orch::Event::ModeChanged(_) => self.update_sync_role(),
                _ => {}
            }
        }
        self.publish(now);
    }

    fn publish(&self, now: Instant) {
        let status = self.orch.status(now);
        let mut s = match self.snapshot.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.id.clone_from(&self.config.id);
        s.role = self.vrrp_view.state.clone();
        s.summary = status.one_liner();
        s.vrrp = self.vrrp_view.clone();
        s.address_held = self.address_held;
        s.timeline = self.orch.timeline().cloned();
        s.status = Some(status);
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
        s.phones = self.orch.phone_outcomes();
    }

    /// "Restart this node" without leaving the process: the election
    /// from Initialize, the orchestrator from its persisted state (which
    /// resumes a procedure in progress, as after a reboot).
    fn soft_restart(&mut self) {
        self.restart_pending = false;
        info!("restarting (soft): election from Initialize, orchestrator from its journal");
        let _ = self.vrrp.send(VrrpCmd::Restart);
        let state = self.orch.persistent_state().clone();
        let now = Instant::now();
        self.orch = Orchestrator::new(self.orch_config.clone(), state, now, SystemTime::now());
        self.vrrp_state = State::Initialize;
        self.update_sync_role();
    }

    fn to_peer(&self, cmd: PeerCommand) {
        if let Some(p) = &self.peer {
            if let Err(e) = p.try_send(cmd) {
                warn!(error = %e, "peer link busy; command dropped");
            }
        }
    }

    /// Master serves, an Active Backup pulls, a Passive one stays idle.
    fn update_sync_role(&self) {
        let role = match self.vrrp_state {
            State::Master => SyncRole::Source,
            State::Backup
                if self.orch.persistent_state().backup_mode == orch::BackupMode::Active =>
            {
                SyncRole::Replica
            }
            _ => SyncRole::Idle,
        };
        self.to_peer(PeerCommand::SetRole(role));
    }

    fn peer_event(&mut self, ev: PeerEvent) {
        let now = Instant::now();
        match ev {
            PeerEvent::PeerMessage(bytes) => {
                if let Err(e) = self.orch.handle_peer_bytes(now, &bytes) {
                    warn!(error = %e, "peer message refused");
                }
            }
            PeerEvent::Status(st) => {
                if let Some(taken_at) = st.generation.taken_at {
                    self.orch.handle_sync_status(
                        now,
                        orch::SyncStatus {
                            generation: st.generation.number,
                            taken_at,
                            round_in_progress: st.round_in_progress,
                        },
                    );
                }
            }
            PeerEvent::RoundDone(r) => info!(
                generation = r.generation,
                files_sent = r.files_sent,
                files_renamed = r.files_renamed,
                files_deleted = r.files_deleted,
                bytes = r.bytes_received,
                seconds = r.seconds,
                "sync round"
            ),
            PeerEvent::Served {
                generation,
                taken_at,
            } => {
                // The Master's view of what its Backup holds: the generation
                // the replica confirmed, as of when this node took it.
                self.orch.handle_sync_status(
                    now,
                    orch::SyncStatus {
                        generation,
                        taken_at,
                        round_in_progress: false,
                    },
                );
            }
            PeerEvent::Connected => info!("peer link up"),
            PeerEvent::Disconnected => info!("peer link down"),
            other => info!(event = ?other, "peer link"),
        }
    }

    fn done(&self, id: orch::CommandId, outcome: CommandOutcome) {
        let _ = self.results.send((id, outcome));
    }

    fn execute(&mut self, issued: Issued) {
        let id = issued.id;
        info!(command = ?issued.command, "command");
        match issued.command {
            Command::FinishOrRollbackRound => {
                let Some(peer) = self.peer.clone() else {
                    self.done(id, CommandOutcome::Done);
                    return;
                };
                let results = self.results.clone();
                let status = self.sync_status.clone();
                tokio::spawn(async move {
                    let (tx, rx) = oneshot::channel();
                    let ok = peer
                        .send(PeerCommand::FinishOrRollback { reply: tx })
                        .await
                        .is_ok();
                    let o = match (ok, rx.await) {
                        (true, Ok(Ok(info))) => {
                            if let Some(taken_at) = info.taken_at {
                                let _ = status.send(orch::SyncStatus {
                                    generation: info.generation,
                                    taken_at,
                                    round_in_progress: false,
                                });
                            }
                            CommandOutcome::Done
                        }
                        (_, Ok(Err(e))) => {
                            warn!(error = %e, "settling the sync round failed");
                            CommandOutcome::Failed { code: 6 }
                        }
                        // No replica session: nothing in progress to settle.
                        _ => CommandOutcome::Done,
                    };
                    let _ = results.send((id, o));
                });
            }
            Command::SyncNow { .. } => {
                let Some(peer) = self.peer.clone() else {
                    self.done(id, CommandOutcome::Failed { code: 7 });
                    return;
                };
                let results = self.results.clone();
                tokio::spawn(async move {
                    let (tx, rx) = oneshot::channel();
                    let ok = peer.send(PeerCommand::SyncNow { reply: tx }).await.is_ok();
                    let o = match (ok, rx.await) {
                        (true, Ok(Ok(summary))) => {
                            info!(
                                generation = summary.generation,
                                seconds = summary.seconds,
                                "sync now"
                            );
                            CommandOutcome::Done
                        }
                        (_, Ok(Err(e))) => {
                            warn!(error = %e, "sync now failed");
                            CommandOutcome::Failed { code: 8 }
                        }
                        _ => CommandOutcome::Failed { code: 8 },
                    };
                    let _ = results.send((id, o));
                });
            }
            Command::ClaimAddress => self.set_addresses(id, true),
            Command::ReleaseAddress => self.set_addresses(id, false),
            Command::AnnounceAddress => {
                if let Some(g) = &self.garp {
                    g.send();
                }
                self.done(id, CommandOutcome::Done);
                // Phones that only follow the address and have no check
                // are home once it is announced.
                for (i, p) in self.phones.iter().enumerate() {
                    if p.spec.method == orch::PhoneMethod::FollowsAddress && p.check.is_none() {
                        let _ = self.registered.send(PhoneId(i as u32));
                    }
                }
            }
            Command::ArmTakeover { priority } => {
                let _ = self.vrrp.send(VrrpCmd::Arm(priority));
                self.done(id, CommandOutcome::Done);
            }
            Command::Release { new_priority } => {
                let _ = self.vrrp.send(VrrpCmd::Release(new_priority));
                self.done(id, CommandOutcome::Done);
            }
            Command::StepDown => {
                let _ = self.vrrp.send(VrrpCmd::StepDown);
                self.done(id, CommandOutcome::Done);
            }
            Command::SetBackupMode(m) => {
                let _ = self.vrrp.send(VrrpCmd::Mode(fsm_mode(m)));
                self.done(id, CommandOutcome::Done);
            }
            Command::StartService(ServiceId(i)) => self.start_service(id, i),
            Command::StopService(ServiceId(i)) => self.stop_service(id, i),
            Command::CheckService(ServiceId(i)) => {
                let Some(svc) = self.config.services.get(usize::from(i)) else {
                    self.done(id, CommandOutcome::Failed { code: 2 });
                    return;
                };
                let check = self.hooks.check_service(usize::from(i), svc);
                let results = self.results.clone();
                tokio::spawn(async move {
                    let o = match check.await {
                        Readiness::Ready => CommandOutcome::Done,
                        Readiness::NotReady => CommandOutcome::NotReady,
                        Readiness::Dead => CommandOutcome::Failed { code: 3 },
                    };
                    let _ = results.send((id, o));
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
                let results = self.results.clone();
                let registered = self.registered.clone();
                tokio::spawn(async move {
                    let ok = action.await;
                    let _ = results.send((id, outcome(ok)));
                    let home = match (ok, check) {
                        (false, _) => false,
                        (true, None) => true,
                        (true, Some(check)) => check.await,
                    };
                    if home {
                        let _ = registered.send(p);
                    }
                });
            }
            Command::RestartNode => {
                // A soft restart, done by the main loop once this round of
                // outputs is persisted: the election starts again from
                // Initialize and the orchestrator resumes from its state.
                self.restart_pending = true;
            }
            Command::CheckNode | Command::SetRedundancy(_) => self.done(id, CommandOutcome::Done),
            other => {
                warn!(command = ?other, "no hook configured for this command");
                self.done(id, CommandOutcome::Failed { code: 1 });
            }
        }
    }

    /// Adds (`claim`) or removes the virtual addresses over netlink, or
    /// logs what it would do when unprivileged.
    fn set_addresses(&mut self, id: orch::CommandId, claim: bool) {
        self.address_held = claim;
        let what = if claim { "claim" } else { "release" };
        let Some((nl, index)) = self.netlink.clone() else {
            info!(addresses = ?self.config.vrrp.virtual_ips, "{what} (logged, not made: unprivileged)");
            self.done(id, CommandOutcome::Done);
            return;
        };
        let vips = self.config.vrrp.virtual_ips.clone();
        let results = self.results.clone();
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
            let _ = results.send((id, outcome(ok)));
        });
    }

    fn start_service(&mut self, id: orch::CommandId, i: u16) {
        let Some(svc) = self.config.services.get(usize::from(i)) else {
            self.done(id, CommandOutcome::Failed { code: 2 });
            return;
        };
        let start = self.hooks.start_service(usize::from(i), svc);
        let results = self.results.clone();
        tokio::spawn(async move {
            let o = match start.await {
                Ok(()) => CommandOutcome::Done,
                Err(e) => {
                    warn!(error = %e, "service failed to start");
                    CommandOutcome::Failed { code: 5 }
                }
            };
            let _ = results.send((id, o));
        });
    }

    fn stop_service(&mut self, id: orch::CommandId, i: u16) {
        let Some(svc) = self.config.services.get(usize::from(i)) else {
            self.done(id, CommandOutcome::Failed { code: 2 });
            return;
        };
        let stop = self.hooks.stop_service(usize::from(i), svc);
        let results = self.results.clone();
        tokio::spawn(async move {
            stop.await;
            let _ = results.send((id, CommandOutcome::Done));
        });
    }
}

fn outcome(ok: bool) -> CommandOutcome {
    if ok {
        CommandOutcome::Done
    } else {
        CommandOutcome::Failed { code: 1 }
    }
}

fn log_event(ev: &orch::Event) {
    match ev {
        orch::Event::Milestone(m) => info!(milestone = ?m, "timeline"),
        orch::Event::StepStarted { .. } | orch::Event::StepDone { .. } => {
            tracing::debug!(event = ?ev, "orchestrator");
        }
        _ => info!(event = ?ev, "orchestrator"),
    }
}

/// Builds the orchestrator's configuration from the node's.
fn orchestrator_config(config: &NodeConfig, phones: &[Phone]) -> Result<orch::Config, NodeError> {
    let identity = orch::Identity {
        node_id: config.id.clone(),
        firmware: config.identity.firmware.clone(),
        language_pack: config.identity.language_pack.clone(),
        licences: config.identity.licenses.clone(),
        protocol: orch::ProtocolVersion::CURRENT,
    };
    let mut b = orch::Config::builder(identity);
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

/// Starts a node; returns when it has shut down (after `shutdown`
/// resolves, gracefully: priority 0, services stopped).
///
/// # Errors
/// [`NodeError`] before anything is touched for a bad configuration, and
/// for sockets or interfaces that cannot be opened.
pub async fn run(
    config: NodeConfig,
    options: Options,
    hooks: Arc<dyn Hooks>,
    shutdown: impl std::future::Future<Output = Stop>,
    ready: Option<oneshot::Sender<NodeHandle>>,
) -> Result<(), NodeError> {
    let phones = match &config.phones {
        Some(p) => crate::phones::load(p)?,
        None => Vec::new(),
    };
    let orch_config = orchestrator_config(&config, &phones)?;
    std::fs::create_dir_all(&config.state_dir).map_err(io_err(format!(
        "creating the state directory {}",
        config.state_dir.display()
    )))?;
    let persisted = load_state(&config.state_dir);
    let initial_epoch = persisted.highest_epoch;

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
    if let (true, Some(nl), Some(iface)) = (privileged, &netlink, &iface) {
        for v in &vrrp_cfg.virtual_ips {
            if iface.addresses.contains(&v.addr) {
                info!(address = %v.addr, "removing a virtual address left by an earlier run");
                nl.remove(iface.index, *v).await?;
            }
        }
    }

    // The election engine.
    let mut b = vrrp_fsm::Config::builder(vrrp_cfg.version, vrrp_cfg.vrid, primary)
        .priority(
            persisted
                .priority
                .map_or(vrrp_cfg.priority, vrrp_proto::Priority),
        )
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
        .backup_mode(fsm_mode(persisted.backup_mode))
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
    let peers: Vec<IpAddr> = match vrrp_cfg.transport {
        Transport::Raw => vrrp_cfg.unicast_peers.clone(),
        Transport::Udp => vrrp_cfg
            .udp_peers
            .iter()
            .map(std::net::SocketAddr::ip)
            .collect(),
    };
    for p in &peers {
        b = b.peer(*p);
    }
    let fsm_config = b.build()?;
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
    let (vrrp_out_tx, mut vrrp_out) = mpsc::unbounded_channel();
    let (vrrp_tx, vrrp_thread) = spawn_vrrp(
        VrrpSetup {
            config: fsm_config,
            socket_spec,
            garp: garp.clone(),
            rt_priority: vrrp_cfg.rt_priority,
        },
        vrrp_out_tx,
    )?;

    let now = Instant::now();
    let orch_config_copy = orch_config.clone();
    let orch = Orchestrator::new(orch_config, persisted, now, SystemTime::now());
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let (registered_tx, mut registered) = mpsc::unbounded_channel();
    let (sync_status_tx, mut sync_status) = mpsc::unbounded_channel();
    let (api_tx, mut api) = mpsc::channel(16);
    // The peer link: sync rounds and the orchestrator's peer messages.
    let (peer_tx, mut peer_events) = match (&config.sync, config.redundancy) {
        (Some(sync), true) => {
            let key = crate::config::read_key_file(&sync.key_file)?;
            std::fs::create_dir_all(&sync.dir).map_err(io_err(format!(
                "creating the data directory {}",
                sync.dir.display()
            )))?;
            let mut pc = PeerConfig::new(sync.dir.clone(), key);
            pc.listen = Some(sync.listen);
            pc.peer = Some(sync.peer);
            pc.exclude.clone_from(&sync.exclude);
            pc.interval = sync.interval;
            pc.node = orch::Epoch::node_number(&config.id);
            let (tx, rx) = crate::peer::spawn(pc, SyncRole::Idle);
            // Frames carry the newest epoch this node knows, from the first
            // handshake on: a peer refuses anything older than what it saw.
            let e = initial_epoch;
            let _ = tx.try_send(PeerCommand::SetEpoch(sync_delta::Epoch {
                term: e.term,
                node: e.node,
            }));
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let mut main = Main {
        orch,
        vrrp: vrrp_tx,
        results: results_tx,
        registered: registered_tx,
        netlink: match (netlink, &iface, privileged) {
            (Some(nl), Some(i), true) => Some((nl, i.index)),
            _ => None,
        },
        garp,
        hooks,
        peer: peer_tx,
        vrrp_state: State::Initialize,
        orch_config: orch_config_copy,
        restart_pending: false,
        sync_status: sync_status_tx,
        phones,
        snapshot: snapshot.clone(),
        vrrp_view: VrrpView::default(),
        address_held: false,
        config,
    };
    let _status_server = if let Some(status) = main.config.status {
        Some(
            crate::status::spawn(
                status,
                main.config.sync.as_ref().map(|s| s.peer),
                snapshot.clone(),
                api_tx.clone(),
            )
            .await
            .map_err(io_err(format!("status endpoint on {}", status.listen)))?,
        )
    } else {
        None
    };
    main.drain();
    if let Some(r) = ready {
        let _ = r.send(NodeHandle {
            api: api_tx.clone(),
            snapshot: snapshot.clone(),
        });
    }

    tokio::pin!(shutdown);
    let stop = loop {
        let deadline = main.orch.poll_timeout();
        tokio::select! {
            how = &mut shutdown => break how,
            () = sleep_until(deadline) => {
                let now = Instant::now();
                main.orch.handle_wall_clock(now, Main::wall());
                main.orch.handle_timeout(now);
            }
            Some(out) = vrrp_out.recv() => match out {
                VrrpOut::View(v) => main.vrrp_view = v,
                VrrpOut::Event(VrrpEvent::StateChange { from, to, reason }) => {
                    info!(?from, ?to, ?reason, "vrrp state change");
                    let now = Instant::now();
                    main.orch.handle_wall_clock(now, Main::wall());
                    main.orch.handle_role_change(now, role_change(from, to, reason));
                    main.vrrp_state = to;
                    main.update_sync_role();
                }
                VrrpOut::Event(ev) => tracing::debug!(event = ?ev, "vrrp"),
            },
            Some((id, outcome)) = results.recv() => {
                main.orch.handle_command_result(Instant::now(), id, outcome);
            }
            Some(phone) = registered.recv() => {
                main.orch.handle_phone_registered(Instant::now(), phone);
            }
            Some(st) = sync_status.recv() => {
                main.orch.handle_sync_status(Instant::now(), st);
            }
            Some(ev) = recv_opt(&mut peer_events) => main.peer_event(ev),
            Some(req) = api.recv() => {
                let now = Instant::now();
                let (request, reply) = match req {
                    ApiRequest::SetBackupMode(mode, reply) => (OperatorRequest::SetBackupMode { mode, expires_at: None }, reply),
                    ApiRequest::Swap(reply) => (OperatorRequest::Swap, reply),
                };
                let r = main.orch.handle_operator(now, request).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
        main.drain();
        if main.restart_pending {
            main.soft_restart();
            main.drain();
        }
    };

    if stop == Stop::Crash {
        info!("crash: stopping without a word to the peer");
        let _ = main.vrrp.send(VrrpCmd::Crash);
        for i in main.config.start_order().into_iter().rev() {
            if let Some(svc) = main.config.services.get(i) {
                main.hooks.stop_service(i, svc).await;
            }
        }
        if let Some(p) = &main.peer {
            let _ = p.send(PeerCommand::Shutdown).await;
        }
        let _ = tokio::task::spawn_blocking(move || vrrp_thread.join()).await;
        return Ok(());
    }

    // Graceful stop: services in reverse order, the address, priority 0.
    info!("shutting down");
    for i in main.config.start_order().into_iter().rev() {
        if let Some(svc) = main.config.services.get(i) {
            main.hooks.stop_service(i, svc).await;
        }
    }
    if let Some(p) = &main.peer {
        let _ = p.send(PeerCommand::Shutdown).await;
    }
    if let Some((nl, index)) = &main.netlink {
        for v in &main.config.vrrp.virtual_ips {
            let _ = nl.remove(*index, *v).await;
        }
    }
    let (tx, rx) = oneshot::channel();
    let _ = main.vrrp.send(VrrpCmd::Shutdown(tx));
    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
    let _ = tokio::task::spawn_blocking(move || vrrp_thread.join()).await;
    Ok(())
}
