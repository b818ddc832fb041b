//! The peer link: one authenticated TCP connection between the two nodes
//! of a pair, carrying sync-delta rounds on [`frame::CHANNEL_SYNC`] and the
//! orchestrator's peer messages (opaque bytes here) on
//! [`frame::CHANNEL_PEER`].
//!
//! [`spawn`] starts two parts and returns a command sender and an event
//! receiver:
//!
//! - the **link manager**, a task on the caller's tokio runtime: it
//!   listens, dials, runs the pre-shared-key handshake of
//!   [`sync_delta::frame::Link`] with nonces from the OS (the link's own
//!   deadline, [`frame::HANDSHAKE_TIMEOUT`] from its creation, bounds the
//!   connect and the handshake together), and moves frames
//!   between the socket and the other parts (peer messages never wait
//!   behind file work: they go out first and are delivered as events);
//! - the **sync worker**, a thread of its own with a small current-thread
//!   runtime: it owns the sync-delta session ([`Source`] or [`Replica`])
//!   and the [`FsStore`] of the data directory. Scans, hashing and applying
//!   block that thread only, so the caller's timers (VRRP) keep running
//!   during a large round.
//!
//! Connection rule: with both [`PeerConfig::listen`] and
//! [`PeerConfig::peer`] set, both nodes listen and the one whose `listen`
//! address sorts lower dials the other, redialling with backoff
//! ([`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`]) after a loss. With only
//! `peer`, this end only dials; with only `listen`, it only accepts. One
//! connection at a time: a newly authenticated connection replaces the old
//! one (the peer restarted), an unauthenticated one never does. A peer
//! that vanishes without closing (power loss) is noticed by TCP keepalive
//! ([`KEEPALIVE_IDLE`] + [`KEEPALIVE_PROBES`] × [`KEEPALIVE_INTERVAL`]) or,
//! with data in flight, by [`USER_TIMEOUT`].
//!
//! Flow control: a source's data waits for the socket (bounded queues); a
//! replica's requests never wait, so the two sessions cannot block each
//! other.
//!
//! Role changes, as a node daemon drives them:
//! - VRRP Master ⇒ [`SyncRole::Source`]; Backup in Active mode ⇒
//!   [`SyncRole::Replica`]; Passive, or no role yet ⇒ [`SyncRole::Idle`].
//! - Takeover: [`PeerCommand::FinishOrRollback`] (the answer's `age` is the
//!   data lost at most), then [`PeerCommand::SetRole`]`(Source)`.
//! - Planned swap: on the Master, [`PeerCommand::SyncNow`]; it answers once
//!   the source has recorded the replica's commit, so the Master's tree
//!   has nothing unconfirmed when it becomes a replica (otherwise its
//!   unconfirmed changes go to quarantine, see [`Replica::open`]).
//!
//! ```no_run
//! use examples::peer::{self, PeerCommand, PeerConfig, PeerEvent, SyncRole};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let key = examples::config::read_key_file("sync.key".as_ref())?;
//! let mut config = PeerConfig::new("/var/lib/pbx-a", key);
//! config.listen = Some("10.99.0.1:7001".parse()?);
//! config.peer = Some("10.99.0.2:7001".parse()?);
//! config.exclude = vec!["licenses/**".into()];
//! let (cmds, mut events) = peer::spawn(config, SyncRole::Idle);
//! // The election made this node an Active Backup.
//! cmds.send(PeerCommand::SetRole(SyncRole::Replica)).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         PeerEvent::PeerMessage(bytes) => { /* to the orchestrator */ }
//!         PeerEvent::RoundDone(summary) => println!("{}", summary.to_json()),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sync_delta::frame::{self, Frame, Link, LinkRole, Nonce, PreSharedKey};
use sync_delta::wire::Message;
use sync_delta::{
    Epoch, Exclude, FsStore, LinkError, OpenReport, Refusal, Replica, ReplicaConfig, ReplicaEvent,
    ReplicaStatus, Source, SourceConfig, SourceEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// First redial delay after a loss.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest redial delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;
/// Longest time sent data may stay unacknowledged (`TCP_USER_TIMEOUT`).
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A replica round with no message from the source for this long is
/// rolled back and asked again (long enough for a first scan of a large
/// tree).
pub const REPLICA_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Sync messages queued from the socket to the worker.
const TO_WORKER: usize = 16;
/// Source messages queued from the worker to the socket.
const BULK_OUT: usize = 8;
/// Peer messages queued to the socket.
const PEER_OUT: usize = 256;
/// Events queued to the caller.
const EVENTS: usize = 1024;

/// What [`spawn`] needs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Where this node accepts the link (`None`: it only dials).
    pub listen: Option<SocketAddr>,
    /// Where the peer accepts it (`None`: this node only accepts).
    pub peer: Option<SocketAddr>,
    /// The pre-shared key ([`crate::config::read_key_file`] parses the
    /// file).
    pub key: [u8; 32],
    /// The replicated tree. A replica's tree is this directory itself; the
    /// engine's state lives in `dir/.sync-delta/` on both sides.
    pub dir: PathBuf,
    /// Patterns never replicated (see [`sync_delta::Exclude`]).
    pub exclude: Vec<String>,
    /// Replica: time between rounds.
    pub interval: Duration,
    /// This node's stable 64-bit number: its first epoch is `(0, node)`
    /// until [`PeerCommand::SetEpoch`].
    pub node: u64,
    /// Replica: let every round past the mass-deletion guard (the `sync`
    /// tool's `--allow-mass-delete`); otherwise a refused round needs
    /// [`PeerCommand::ConfirmDeletions`].
    pub allow_mass_delete: bool,
}

impl PeerConfig {
    /// A configuration for `dir` and `key` with no addresses, a 60 s
    /// interval, no exclusions and node number 0.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, key: [u8; 32]) -> Self {
        Self {
            listen: None,
            peer: None,
            key,
            dir: dir.into(),
            exclude: Vec::new(),
            interval: Duration::from_secs(60),
            node: 0,
            allow_mass_delete: false,
        }
    }

    /// True when this end dials (see the module docs for the rule).
    #[must_use]
    pub fn dials(&self) -> bool {
        match (self.listen, self.peer) {
            (Some(l), Some(p)) => l < p,
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// The sync role, from the node's VRRP role and backup mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    /// Master: serves its tree.
    Source,
    /// Active Backup: pulls every interval.
    Replica,
    /// Passive Backup, or no role yet: no periodic sync. A replica session
    /// that was open stays open (disconnected) so that
    /// [`PeerCommand::FinishOrRollback`] still answers.
    Idle,
}

/// What a replica round did (the `sync` tool prints it as one JSON line).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplicaSummary {
    /// The generation now current.
    pub generation: u64,
    /// Files whose content crossed the link (whole, delta or appended).
    pub files_sent: u64,
    /// Files made from a local copy whose old path went away (renames).
    pub files_renamed: u64,
    /// Files and symlinks removed (renames not counted).
    pub files_deleted: u64,
    /// Bytes of sync frames received during the round.
    pub bytes_received: u64,
    /// From the request to the commit.
    pub seconds: f64,
}

impl ReplicaSummary {
    /// The JSON line of the `sync` tool:
    /// `{"generation":N,"files_sent":N,"files_renamed":N,"files_deleted":N,"bytes_received":N,"seconds":F}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "generation": self.generation,
            "files_sent": self.files_sent,
            "files_renamed": self.files_renamed,
            "files_deleted": self.files_deleted,
            "bytes_received": self.bytes_received,
            "seconds": self.seconds,
        })
        .to_string()
    }
}

/// The generation a node starts from at takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationInfo {
    /// Its number (0 before the first round).
    pub generation: u64,
    /// When the source took it (wall clock of the source).
    pub taken_at: Option<SystemTime>,
    /// Its age now: the data a takeover loses at most.
    pub age: Option<Duration>,
}

/// Commands to the peer link.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerCommand {
    /// Master ⇒ [`SyncRole::Source`], Active Backup ⇒
    /// [`SyncRole::Replica`], Passive ⇒ [`SyncRole::Idle`].
    SetRole(SyncRole),
    /// Replica: run a round that starts after this request, and answer
    /// with its summary. Source: ask the replica for one and answer when it
    /// confirms (only `generation` and `seconds` are known then).
    SyncNow {
        /// The answer.
        reply: oneshot::Sender<Result<ReplicaSummary, String>>,
    },
    /// Before takeover: finish or roll back the round in progress and
    /// answer with the generation the tree is at. The replica then stays
    /// disconnected until [`PeerCommand::SetRole`].
    FinishOrRollback {
        /// The answer.
        reply: oneshot::Sender<Result<GenerationInfo, String>>,
    },
    /// Replica: let the next round past the mass-deletion guard.
    ConfirmDeletions,
    /// Orchestrator bytes for the peer, on [`frame::CHANNEL_PEER`];
    /// dropped when no connection is up.
    SendPeerMessage(Vec<u8>),
    /// This node's epoch for the frames it sends from now on.
    SetEpoch(Epoch),
    /// Close the link, roll back a round in progress and stop; the event
    /// channel then closes.
    Shutdown,
}

/// Events from the peer link.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The listening socket is bound (its actual address).
    Listening(SocketAddr),
    /// An authenticated connection is up.
    Connected,
    /// It went down.
    Disconnected,
    /// A dial, an accept or a handshake failed (wrong key, refused, …);
    /// a dialling end retries with backoff.
    LinkFailed(String),
    /// Orchestrator bytes from the peer.
    PeerMessage(Vec<u8>),
    /// A replica opened its tree (what it rolled forward, back or put in
    /// quarantine).
    Opened(OpenReport),
    /// Replica: a round committed.
    RoundDone(ReplicaSummary),
    /// Replica: the mass-deletion guard refused a round; nothing was
    /// changed. [`PeerCommand::ConfirmDeletions`] lets the next one pass.
    RoundRefused(Refusal),
    /// Replica: a round failed and was rolled back; the tree is at its last
    /// whole generation.
    RoundFailed(String),
    /// Source: the replica confirmed a generation of what this node served.
    Served {
        /// Its number.
        generation: u64,
        /// When this node took the snapshot the replica now holds (the
        /// Backup's data is as old as this, not as the confirmation).
        taken_at: SystemTime,
    },
    /// Replica status after each round and after opening.
    Status(ReplicaStatus),
    /// A failure that does not stop the link (a source session error, a
    /// tree that cannot be opened for a role).
    Error(String),
    /// The link cannot run (the listen address cannot be bound, the data
    /// directory cannot be opened); the event channel closes next.
    Fatal(String),
}

/// Starts the peer link in `role`. Returns the command sender and the
/// event receiver; drain the events (a full event queue holds the link
/// back). Dropping the command sender or [`PeerCommand::Shutdown`] stops
/// it.
///
/// # Panics
/// When called outside a tokio runtime (the link manager is a task on the
/// caller's runtime).
#[must_use]
pub fn spawn(
    config: PeerConfig,
    role: SyncRole,
) -> (mpsc::Sender<PeerCommand>, mpsc::Receiver<PeerEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(EVENTS);
    let (wctl_tx, wctl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(TO_WORKER);
    let (reset_tx, reset_rx) = mpsc::unbounded_channel();
    let worker = Worker::new(&config, role, ev_tx.clone(), reset_tx);
    let spawned = std::thread::Builder::new()
        .name("peer-sync".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build();
            match rt {
                Ok(rt) => rt.block_on(worker.run(wctl_rx, data_rx)),
                Err(e) => {
                    let _ = worker
                        .events
                        .try_send(PeerEvent::Fatal(format!("sync worker runtime: {e}")));
                }
            }
        });
    if let Err(e) = spawned {
        let _ = ev_tx.try_send(PeerEvent::Fatal(format!("sync worker thread: {e}")));
        return (cmd_tx, ev_rx);
    }
    let manager = Manager {
        listen: config.listen,
        peer: config.peer,
        dials: config.dials(),
        key: PreSharedKey::from_secret(&config.key),
        epoch: Epoch::new(0, config.node),
        newest_peer: Epoch::default(),
        events: ev_tx,
        worker: wctl_tx,
        data: data_tx,
        conn: None,
        next_id: 1,
    };
    tokio::spawn(manager.run(cmd_rx, reset_rx));
    (cmd_tx, ev_rx)
}

// ---------------------------------------------------------------------------
// Handshake and frames

/// A fresh handshake nonce from the OS.
fn os_nonce() -> std::io::Result<Nonce> {
    use std::io::Read;
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(Nonce(n))
}

/// No Nagle delay (small messages), and a peer that vanished without a
/// FIN (power loss) is noticed in seconds, not at the kernel's default
/// retransmission limit: keepalive probes while idle, a user timeout while
/// data is unacknowledged.
fn tune(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    link.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A link for one new connection (a nonce from the OS), created now: its
/// handshake deadline starts here. Make it before connecting so that the
/// deadline bounds the connect as well.
///
/// # Errors
/// The OS could not give a nonce.
pub fn new_link(
    role: LinkRole,
    key: PreSharedKey,
    epoch: Epoch,
    newest_peer: Epoch,
) -> Result<Link, String> {
    let nonce = os_nonce().map_err(|e| format!("nonce from the OS: {e}"))?;
    Ok(Link::new(
        role,
        key,
        nonce,
        epoch,
        newest_peer,
        Instant::now(),
    ))
}

fn link_failure(e: LinkError) -> String {
    match e {
        LinkError::BadProof => "handshake: the peer's proof does not verify (wrong key)".to_owned(),
        LinkError::HandshakeTimeout => "handshake timed out".to_owned(),
        e => format!("handshake: {e}"),
    }
}

/// Runs `fut` until it finishes or `link`'s handshake deadline passes
/// (driving [`Link::handle_timeout`]).
///
/// # Errors
/// The link's [`LinkError::HandshakeTimeout`] (or earlier error), as text.
async fn before_deadline<T>(
    link: &mut Link,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::pin!(fut);
    loop {
        if let Some(e) = link.error() {
            return Err(link_failure(e));
        }
        tokio::select! {
            r = &mut fut => return Ok(r),
            () = sleep_std(link.poll_timeout()) => link.handle_timeout(Instant::now()),
        }
    }
}

/// Runs the handshake of `link` (from [`new_link`]) on `stream`, until the
/// link's own deadline; returns the established link and any application
/// frames that arrived right behind it.
///
/// # Errors
/// A readable reason: I/O, a wrong key, a malformed frame, the deadline.
pub async fn handshake(
    stream: &mut TcpStream,
    mut link: Link,
) -> Result<(Link, Vec<Frame>), String> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let mut out = Vec::new();
        if link.poll_transmit(&mut out) {
            before_deadline(&mut link, stream.write_all(&out))
                .await?
                .map_err(|e| format!("write: {e}"))?;
        }
        if link.is_established() {
            return Ok((link, frames));
        }
        let n = before_deadline(&mut link, stream.read(&mut buf))
            .await?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("peer closed the connection during the handshake \
                        (wrong key?)"
                .to_owned());
        }
        link.handle_bytes(Instant::now(), &buf[..n])
            .map_err(link_failure)?;
        while let Some(f) = link.poll_frame().map_err(link_failure)? {
            frames.push(f);
        }
    }
}

// ---------------------------------------------------------------------------
// Link manager

/// A sync message from the socket, tagged with its connection.
struct SyncIn {
    conn: u64,
    msg: Message,
    wire_len: u64,
}

/// Control inputs of the worker (never blocked on).
enum WorkerIn {
    Connected {
        conn: u64,
        bulk: mpsc::Sender<Message>,
        small: mpsc::UnboundedSender<Message>,
    },
    Disconnected {
        conn: u64,
    },
    SetRole(SyncRole),
    SyncNow(oneshot::Sender<Result<ReplicaSummary, String>>),
    FinishOrRollback(oneshot::Sender<Result<GenerationInfo, String>>),
    ConfirmDeletions,
    Shutdown,
}

/// The worker asks the manager to drop a connection (a session error).
struct Reset {
    conn: u64,
    why: String,
}

struct Conn {
    id: u64,
    link: Arc<Mutex<Link>>,
    peer_tx: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

type Handshaken = (LinkRole, Result<(TcpStream, Link, Vec<Frame>), String>);

struct Manager {
    listen: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    dials: bool,
    key: PreSharedKey,
    epoch: Epoch,
    newest_peer: Epoch,
    events: mpsc::Sender<PeerEvent>,
    worker: mpsc::UnboundedSender<WorkerIn>,
    data: mpsc::Sender<SyncIn>,
    conn: Option<Conn>,
    next_id: u64,
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn accept_opt(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

impl Manager {
    async fn emit(&self, e: PeerEvent) {
        let _ = self.events.send(e).await;
    }

    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<PeerCommand>,
        mut resets: mpsc::UnboundedReceiver<Reset>,
    ) {
        let listener = match self.listen {
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(l) => {
                    let local = l.local_addr().unwrap_or(addr);
                    tracing::info!(%local, "peer link listening");
                    self.emit(PeerEvent::Listening(local)).await;
                    Some(l)
                }
                Err(e) => {
                    self.emit(PeerEvent::Fatal(format!("cannot listen on {addr}: {e}")))
                        .await;
                    let _ = self.worker.send(WorkerIn::Shutdown);
                    return;
                }
            },
            None => None,
        };
        let (hs_tx, mut hs_rx) = mpsc::channel::<Handshaken>(8);
        let (end_tx, mut end_rx) = mpsc::unbounded_channel::<(u64, String)>();
        let mut dialing = false;
        let mut next_dial = self.dials.then(tokio::time::Instant::now);
        let mut backoff = MIN_BACKOFF;
        let worker = self.worker.clone();
        loop {
            let may_dial = self.dials && self.conn.is_none() && !dialing;
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None | Some(PeerCommand::Shutdown) => break,
                    Some(cmd) => self.command(cmd),
                },
                acc = accept_opt(listener.as_ref()) => match acc {
                    Ok((mut stream, from)) => {
                        let link = new_link(LinkRole::Responder, self.key.clone(), self.epoch, self.newest_peer);
                        let tx = hs_tx.clone();
                        tokio::spawn(async move {
                            tune(&stream);
                            let r = match link {
                                Ok(link) => handshake(&mut stream, link)
                                    .await
                                    .map(|(l, f)| (stream, l, f)),
                                Err(e) => Err(e),
                            }
                            .map_err(|e| format!("from {from}: {e}"));
                            let _ = tx.send((LinkRole::Responder, r)).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "peer link accept failed");
                        tokio::time::sleep(MIN_BACKOFF).await;
                    }
                },
                () = sleep_opt(next_dial), if may_dial => {
                    next_dial = None;
                    if let Some(to) = self.peer {
                        dialing = true;
                        let (key, epoch, floor) = (self.key.clone(), self.epoch, self.newest_peer);
                        let tx = hs_tx.clone();
                        tokio::spawn(async move {
                            let r = async {
                                // The link's deadline covers the connect too.
                                let mut link = new_link(LinkRole::Initiator, key, epoch, floor)?;
                                let mut stream = before_deadline(&mut link, TcpStream::connect(to))
                                    .await
                                    .map_err(|e| format!("connect to {to}: {e}"))?
                                    .map_err(|e| format!("connect to {to}: {e}"))?;
                                tune(&stream);
                                let (l, f) = handshake(&mut stream, link)
                                    .await
                                    .map_err(|e| format!("to {to}: {e}"))?;
                                Ok((stream, l, f))
                            }
                            .await;
                            let _ = tx.send((LinkRole::Initiator, r)).await;
                        });
                    }
                },
                Some((role, r)) = hs_rx.recv() => {
                    if role == LinkRole::Initiator {
                        dialing = false;
                    }
                    match r {
                        Ok((stream, link, frames)) => {
                            backoff = MIN_BACKOFF;
                            self.install(stream, link, frames, &end_tx).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "peer link failed");
                            self.emit(PeerEvent::LinkFailed(e)).await;
                            if role == LinkRole::Initiator {
                                next_dial = Some(tokio::time::Instant::now() + backoff);
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                },
                Some((id, why)) = end_rx.recv() => {
                    if self.conn.as_ref().is_some_and(|c| c.id == id) {
                        self.teardown(&why).await;
                        next_dial = Some(tokio::time::Instant::now() + MIN_BACKOFF);
                    }
                },
                Some(r) = resets.recv() => {
                    if self.conn.as_ref().is_some_and(|c| c.id == r.conn) {
                        self.teardown(&r.why).await;
                        next_dial = Some(tokio::time::Instant::now() + MIN_BACKOFF);
                    }
                },
                () = worker.closed() => break,
            }
        }
        if self.conn.is_some() {
            self.teardown("shutting down").await;
        }
        let _ = self.worker.send(WorkerIn::Shutdown);
    }

    fn command(&mut self, cmd: PeerCommand) {
        let to_worker = match cmd {
            PeerCommand::SetRole(r) => WorkerIn::SetRole(r),
            PeerCommand::SyncNow { reply } => WorkerIn::SyncNow(reply),
            PeerCommand::FinishOrRollback { reply } => WorkerIn::FinishOrRollback(reply),
            PeerCommand::ConfirmDeletions => WorkerIn::ConfirmDeletions,
            PeerCommand::SendPeerMessage(bytes) => {
                match &self.conn {
                    Some(c) => {
                        if c.peer_tx.try_send(bytes).is_err() {
                            tracing::warn!("peer message dropped: send queue full");
                        }
                    }
                    None => tracing::debug!("peer message dropped: no connection"),
                }
                return;
            }
            PeerCommand::SetEpoch(e) => {
                self.epoch = e;
                if let Some(c) = &self.conn {
                    lock(&c.link).set_epoch(e);
                }
                return;
            }
            PeerCommand::Shutdown => WorkerIn::Shutdown,
        };
        let _ = self.worker.send(to_worker);
    }

    async fn install(
        &mut self,
        stream: TcpStream,
        link: Link,
        frames: Vec<Frame>,
        end_tx: &mpsc::UnboundedSender<(u64, String)>,
    ) {
        if self.conn.is_some() {
            self.teardown("replaced by a new connection").await;
        }
        let id = self.next_id;
        self.next_id += 1;
        let peer = stream.peer_addr().ok();
        let (rd, wr) = stream.into_split();
        let mut link = link;
        link.set_epoch(self.epoch);
        let link = Arc::new(Mutex::new(link));
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_OUT);
        let (small_tx, small_rx) = mpsc::unbounded_channel();
        let (peer_tx, peer_rx) = mpsc::channel(PEER_OUT);
        // The worker hears of the connection before any of its messages
        // (its control queue is read first).
        let _ = self.worker.send(WorkerIn::Connected {
            conn: id,
            bulk: bulk_tx,
            small: small_tx,
        });
        let reader = tokio::spawn(reader(
            id,
            rd,
            link.clone(),
            frames,
            self.data.clone(),
            self.events.clone(),
            end_tx.clone(),
        ));
        let writer = tokio::spawn(writer(
            id,
            wr,
            link.clone(),
            bulk_rx,
            small_rx,
            peer_rx,
            end_tx.clone(),
        ));
        self.conn = Some(Conn {
            id,
            link,
            peer_tx,
            reader,
            writer,
        });
        tracing::info!(?peer, conn = id, "peer link up");
        self.emit(PeerEvent::Connected).await;
    }

    async fn teardown(&mut self, why: &str) {
        let Some(c) = self.conn.take() else {
            return;
        };
        c.reader.abort();
        c.writer.abort();
        let _ = c.reader.await;
        let _ = c.writer.await;
        self.newest_peer = self.newest_peer.max(lock(&c.link).newest_peer_epoch());
        tracing::info!(conn = c.id, reason = why, "peer link down");
        let _ = self.worker.send(WorkerIn::Disconnected { conn: c.id });
        self.emit(PeerEvent::Disconnected).await;
    }
}

async fn reader(
    id: u64,
    mut rd: OwnedReadHalf,
    link: Arc<Mutex<Link>>,
    first: Vec<Frame>,
    data: mpsc::Sender<SyncIn>,
    events: mpsc::Sender<PeerEvent>,
    end: mpsc::UnboundedSender<(u64, String)>,
) {
    let dispatch = |f: Frame| {
        let data = &data;
        let events = &events;
        async move {
            match f.channel {
                frame::CHANNEL_SYNC => {
                    let wire_len =
                        (f.payload.len() + frame::HEADER_LEN + frame::TRAILER_LEN) as u64;
                    let msg = Message::decode(&f.payload)
                        .map_err(|e| format!("bad sync message: {e}"))?;
                    data.send(SyncIn {
                        conn: id,
                        msg,
                        wire_len,
                    })
                    .await
                    .map_err(|_| "sync worker stopped".to_owned())
                }
                frame::CHANNEL_PEER => {
                    let _ = events.send(PeerEvent::PeerMessage(f.payload)).await;
                    Ok(())
                }
                other => {
                    tracing::debug!(channel = other, "frame on an unknown channel ignored");
                    Ok(())
                }
            }
        }
    };
    let why = async {
        for f in first {
            dispatch(f).await?;
        }
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => return Err("peer closed the connection".to_owned()),
                Ok(n) => n,
                Err(e) => return Err(format!("read: {e}")),
            };
            let frames = {
                let mut l = lock(&link);
                l.handle_bytes(Instant::now(), &buf[..n])
                    .map_err(|e| format!("link: {e}"))?;
                let mut v = Vec::new();
                while let Some(f) = l.poll_frame().map_err(|e| format!("link: {e}"))? {
                    v.push(f);
                }
                v
            };
            for f in frames {
                dispatch(f).await?;
            }
        }
    }
    .await;
    let why: Result<(), String> = why;
    let _ = end.send((id, why.err().unwrap_or_default()));
}

async fn writer(
    id: u64,
    mut wr: OwnedWriteHalf,
    link: Arc<Mutex<Link>>,
    mut bulk: mpsc::Receiver<Message>,
    mut small: mpsc::UnboundedReceiver<Message>,
    mut peer: mpsc::Receiver<Vec<u8>>,
    end: mpsc::UnboundedSender<(u64, String)>,
) {
    let mut payload = Vec::new();
    let mut out = Vec::new();
    loop {
        payload.clear();
        out.clear();
        // Peer messages (heartbeats) first, then the replica's small
        // messages, then bulk data.
        let channel = tokio::select! {
            biased;
            Some(p) = peer.recv() => {
                payload = p;
                frame::CHANNEL_PEER
            }
            Some(m) = small.recv() => {
                m.encode(&mut payload);
                frame::CHANNEL_SYNC
            }
            Some(m) = bulk.recv() => {
                m.encode(&mut payload);
                frame::CHANNEL_SYNC
            }
            else => {
                let _ = end.send((id, "send queues closed".to_owned()));
                return;
            }
        };
        let sent = lock(&link).send(channel, &payload, &mut out);
        if let Err(e) = sent {
            tracing::warn!(error = %e, channel, "frame not sent");
            continue;
        }
        if let Err(e) = wr.write_all(&out).await {
            let _ = end.send((id, format!("write: {e}")));
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Sync worker

enum Session {
    None,
    Source(Box<Source>),
    Replica(Box<Replica>),
}

struct ConnOut {
    id: u64,
    bulk: mpsc::Sender<Message>,
    small: mpsc::UnboundedSender<Message>,
}

struct RoundTrack {
    seq: u64,
    started: Instant,
    bytes: u64,
}

type SummaryReply = oneshot::Sender<Result<ReplicaSummary, String>>;

struct Worker {
    dir: PathBuf,
    exclude: Exclude,
    interval: Duration,
    allow_mass_delete: bool,
    role: SyncRole,
    store: Option<FsStore>,
    session: Session,
    conn: Option<ConnOut>,
    round: Option<RoundTrack>,
    rounds_started: u64,
    waiting: Vec<(u64, SummaryReply)>,
    /// Source: sync-now waiters, with when they asked and how many
    /// requests the replica had made by then (only a round requested later
    /// answers them).
    source_waiting: Vec<(Instant, u64, SummaryReply)>,
    /// Source: requests received from the replica.
    source_requests: u64,
    events: mpsc::Sender<PeerEvent>,
    reset: mpsc::UnboundedSender<Reset>,
}

fn source_bound(m: &Message) -> bool {
    matches!(
        m,
        Message::Request { .. }
            | Message::Want { .. }
            | Message::Committed { .. }
            | Message::Abandon { .. }
    )
}

async fn sleep_std(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    fn new(
        config: &PeerConfig,
        role: SyncRole,
        events: mpsc::Sender<PeerEvent>,
        reset: mpsc::UnboundedSender<Reset>,
    ) -> Self {
        Self {
            dir: config.dir.clone(),
            exclude: Exclude::new(&config.exclude),
            interval: config.interval,
            allow_mass_delete: config.allow_mass_delete,
            role,
            store: None,
            session: Session::None,
            conn: None,
            round: None,
            rounds_started: 0,
            waiting: Vec::new(),
            source_waiting: Vec::new(),
            source_requests: 0,
            events,
            reset,
        }
    }

    async fn emit(&self, e: PeerEvent) {
        let _ = self.events.send(e).await;
    }

    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<WorkerIn>,
        mut data: mpsc::Receiver<SyncIn>,
    ) {
        match FsStore::new(&self.dir) {
            Ok(s) => self.store = Some(s),
            Err(e) => {
                let msg = format!("cannot open {}: {e}", self.dir.display());
                self.emit(PeerEvent::Fatal(msg)).await;
                return;
            }
        }
        let role = self.role;
        self.role = SyncRole::Idle;
        self.set_role(role).await;
        loop {
            self.pump().await;
            let deadline = match &self.session {
                Session::Replica(r) if self.role == SyncRole::Replica => r.poll_timeout(),
                _ => None,
            };
            tokio::select! {
                biased;
                c = ctl.recv() => match c {
                    None | Some(WorkerIn::Shutdown) => break,
                    Some(c) => self.control(c).await,
                },
                Some(m) = data.recv() => self.sync_in(m).await,
                () = sleep_std(deadline) => {
                    if let Session::Replica(r) = &mut self.session {
                        r.handle_timeout(Instant::now());
                    }
                }
            }
        }
        self.disconnect().await;
    }

    /// Drains the session's outputs.
    async fn pump(&mut self) {
        loop {
            match &mut self.session {
                Session::None => return,
                Session::Replica(r) => {
                    while let Some(m) = r.poll_transmit() {
                        if matches!(m, Message::Request { .. }) {
                            self.rounds_started += 1;
                            self.round = Some(RoundTrack {
                                seq: self.rounds_started,
                                started: Instant::now(),
                                bytes: 0,
                            });
                        }
                        if let Some(c) = &self.conn {
                            let _ = c.small.send(m);
                        }
                    }
                    let mut evs = Vec::new();
                    while let Some(e) = r.poll_event() {
                        evs.push(e);
                    }
                    if evs.is_empty() {
                        return;
                    }
                    for e in evs {
                        self.replica_event(e).await;
                    }
                }
                Session::Source(s) => {
                    let mut evs = Vec::new();
                    while let Some(e) = s.poll_event() {
                        evs.push(e);
                    }
                    for e in evs {
                        self.source_event(e).await;
                    }
                    let (Session::Source(s), Some(store)) =
                        (&mut self.session, self.store.as_mut())
                    else {
                        return;
                    };
                    let Some(c) = &self.conn else {
                        return;
                    };
                    let bulk = c.bulk.clone();
                    let Some(m) = s.poll_transmit(store) else {
                        return;
                    };
                    if bulk.send(m).await.is_err() {
                        // The connection ended; its Disconnected follows.
                        s.handle_disconnected(Instant::now());
                        return;
                    }
                }
            }
        }
    }

    async fn source_event(&mut self, e: SourceEvent) {
        match e {
            SourceEvent::Confirmed {
                generation,
                taken_at,
            } => {
                tracing::info!(generation, "replica confirmed a generation");
                self.emit(PeerEvent::Served {
                    generation,
                    taken_at,
                })
                .await;
                let requests = self.source_requests;
                for (at, _, reply) in self.source_due(requests) {
                    let _ = reply.send(Ok(ReplicaSummary {
                        generation,
                        files_sent: 0,
                        files_renamed: 0,
                        files_deleted: 0,
                        bytes_received: 0,
                        seconds: at.elapsed().as_secs_f64(),
                    }));
                }
            }
            SourceEvent::Abandoned => {
                tracing::warn!("replica abandoned a round");
                let requests = self.source_requests;
                for (_, _, reply) in self.source_due(requests) {
                    let _ = reply.send(Err("the replica abandoned the round".into()));
                }
            }
            SourceEvent::Scanned {
                entries,
                hashed,
                unstable,
            } => tracing::debug!(entries, hashed, unstable, "source scanned"),
            _ => {}
        }
    }

    /// Takes the source's waiters that a round requested after they asked
    /// answers; asks the replica again for the others (a replica that was
    /// mid-round when asked runs its next round only at its interval).
    fn source_due(&mut self, requests: u64) -> Vec<(Instant, u64, SummaryReply)> {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.source_waiting)
            .into_iter()
            .partition(|(_, after, _)| requests > *after);
        self.source_waiting = rest;
        if !self.source_waiting.is_empty() {
            if let Session::Source(s) = &mut self.session {
                s.sync_now(Instant::now());
            }
        }
        due
    }

    async fn replica_event(&mut self, e: ReplicaEvent) {
        match e {
            ReplicaEvent::Committed {
                generation,
                fetched,
                deleted,
                renamed,
                ..
            } => {
                let Session::Replica(r) = &self.session else {
                    return;
                };
                let track = self.round.take();
                let summary = ReplicaSummary {
                    generation,
                    files_sent: fetched,
                    files_renamed: renamed,
                    files_deleted: deleted,
                    bytes_received: track.as_ref().map_or(0, |t| t.bytes),
                    seconds: track
                        .as_ref()
                        .map_or(0.0, |t| t.started.elapsed().as_secs_f64()),
                };
                tracing::info!(?summary, "replica round committed");
                let status = r.status(SystemTime::now());
                self.emit(PeerEvent::RoundDone(summary)).await;
                self.emit(PeerEvent::Status(status)).await;
                self.answer(track.map(|t| t.seq), Ok(summary));
            }
            ReplicaEvent::Refused(reason) => {
                tracing::warn!(%reason, "replica round refused");
                let seq = self.round.take().map(|t| t.seq);
                self.emit(PeerEvent::RoundRefused(reason)).await;
                self.answer(seq, Err(format!("round refused: {reason}")));
            }
            ReplicaEvent::FileSkipped(p) => {
                tracing::warn!(path = p.as_str(), "file skipped this round");
            }
            ReplicaEvent::TimedOut => {
                self.round_failed("the round stalled and was rolled back".into())
                    .await;
            }
            _ => {}
        }
        if self.allow_mass_delete {
            if let Session::Replica(r) = &mut self.session {
                r.confirm_deletions();
            }
        }
    }

    /// Answers the waiters of rounds up to `seq`; starts another round for
    /// the rest.
    fn answer(&mut self, seq: Option<u64>, result: Result<ReplicaSummary, String>) {
        let seq = seq.unwrap_or(self.rounds_started);
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(min, _)| *min <= seq);
        for (_, reply) in due {
            let _ = reply.send(result.clone());
        }
        self.waiting = rest;
        if !self.waiting.is_empty() {
            if let Session::Replica(r) = &mut self.session {
                r.sync_now(Instant::now());
            }
        }
    }

    async fn round_failed(&mut self, why: String) {
        let seq = self.round.take().map(|t| t.seq);
        tracing::warn!(reason = %why, "replica round failed");
        self.emit(PeerEvent::RoundFailed(why.clone())).await;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(min, _)| seq.is_some_and(|s| *min <= s) || self.conn.is_none());
        for (_, reply) in due {
            let _ = reply.send(Err(why.clone()));
        }
        self.waiting = rest;
        if !self.waiting.is_empty() {
            if let Session::Replica(r) = &mut self.session {
                r.sync_now(Instant::now());
            }
        }
    }

    async fn sync_in(&mut self, m: SyncIn) {
        if self.conn.as_ref().is_none_or(|c| c.id != m.conn) {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let now = Instant::now();
        let err = match (&mut self.session, self.role) {
            (Session::Source(s), SyncRole::Source) if source_bound(&m.msg) => {
                if matches!(m.msg, Message::Request { .. }) {
                    self.source_requests += 1;
                }
                s.handle_message(now, SystemTime::now(), m.msg, store)
                    .err()
                    .map(|e| format!("source session: {e}"))
            }
            (Session::Replica(r), SyncRole::Replica) if !source_bound(&m.msg) => {
                if let Some(t) = &mut self.round {
                    t.bytes += m.wire_len;
                }
                r.handle_message(now, m.msg, store)
                    .err()
                    .map(|e| format!("replica session: {e}"))
            }
            _ => {
                tracing::debug!("sync message not for this role ignored");
                None
            }
        };
        if let Some(why) = err {
            if matches!(self.session, Session::Replica(_)) {
                // Drain what the engine queued before reporting.
                self.pump().await;
                self.round_failed(why.clone()).await;
            } else {
                self.emit(PeerEvent::Error(why.clone())).await;
            }
            let _ = self.reset.send(Reset { conn: m.conn, why });
        }
    }

    async fn control(&mut self, c: WorkerIn) {
        let now = Instant::now();
        match c {
            WorkerIn::Connected { conn, bulk, small } => {
                self.conn = Some(ConnOut {
                    id: conn,
                    bulk,
                    small,
                });
                if let (Session::Replica(r), SyncRole::Replica) = (&mut self.session, self.role) {
                    r.handle_connected(now);
                }
            }
            WorkerIn::Disconnected { conn } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.disconnect().await;
                }
            }
            WorkerIn::SetRole(role) => self.set_role(role).await,
            WorkerIn::SyncNow(reply) => match (&mut self.session, self.role) {
                (Session::Replica(r), SyncRole::Replica) => {
                    if self.conn.is_none() {
                        let _ = reply.send(Err("the peer is not connected".into()));
                    } else {
                        self.waiting.push((self.rounds_started + 1, reply));
                        if self.round.is_none() {
                            r.sync_now(now);
                        }
                    }
                }
                (Session::Source(s), SyncRole::Source) => {
                    if self.conn.is_none() {
                        let _ = reply.send(Err("the peer is not connected".into()));
                    } else {
                        s.sync_now(now);
                        self.source_waiting.push((now, self.source_requests, reply));
                    }
                }
                _ => {
                    let _ = reply.send(Err("no sync role (idle)".into()));
                }
            },
            WorkerIn::FinishOrRollback(reply) => {
                let had_round = self.round.is_some();
                let r = match (&mut self.session, self.store.as_mut()) {
                    (Session::Replica(r), Some(store)) => r
                        .settle(store)
                        .map(|g| GenerationInfo {
                            generation: g.number,
                            taken_at: g.taken_at,
                            age: g.age(SystemTime::now()),
                        })
                        .map_err(|e| format!("settle: {e}")),
                    (Session::Source(s), _) => {
                        let g = s.confirmed();
                        Ok(GenerationInfo {
                            generation: g.number,
                            taken_at: g.taken_at,
                            age: g.age(SystemTime::now()),
                        })
                    }
                    _ => Err("no replica session to settle".into()),
                };
                if had_round && matches!(self.session, Session::Replica(_)) {
                    self.round_failed("round rolled back for a takeover".into())
                        .await;
                }
                let _ = reply.send(r);
            }
            WorkerIn::ConfirmDeletions => {
                if let Session::Replica(r) = &mut self.session {
                    r.confirm_deletions();
                }
            }
            WorkerIn::Shutdown => {}
        }
    }

    /// The connection went away.
    async fn disconnect(&mut self) {
        self.conn = None;
        let now = Instant::now();
        match (&mut self.session, self.store.as_mut()) {
            (Session::Replica(r), Some(store)) => {
                if let Err(e) = r.handle_disconnected(now, store) {
                    tracing::warn!(error = %e, "staged files not removed");
                }
                while r.poll_transmit().is_some() {}
                if self.round.is_some() || !self.waiting.is_empty() {
                    self.round_failed("the link went down during the round".into())
                        .await;
                }
            }
            (Session::Source(s), _) => {
                s.handle_disconnected(now);
                for (_, _, reply) in self.source_waiting.drain(..) {
                    let _ = reply.send(Err("the link went down".into()));
                }
            }
            _ => {}
        }
    }

    async fn set_role(&mut self, role: SyncRole) {
        let now = Instant::now();
        let Some(store) = self.store.as_mut() else {
            return;
        };
        self.role = role;
        match role {
            SyncRole::Source => {
                if matches!(self.session, Session::Source(_)) {
                    return;
                }
                if let Session::Replica(r) = &mut self.session {
                    let _ = r.handle_disconnected(now, store);
                }
                if self.round.is_some() || !self.waiting.is_empty() {
                    self.round_failed("the node became the source".into()).await;
                }
                let Some(store) = self.store.as_mut() else {
                    return;
                };
                let config = SourceConfig {
                    exclude: self.exclude.clone(),
                };
                self.session = match Source::open(config, now, store) {
                    Ok(s) => Session::Source(Box::new(s)),
                    Err(e) => {
                        let msg = format!("cannot open {} as a source: {e}", self.dir.display());
                        self.emit(PeerEvent::Error(msg)).await;
                        Session::None
                    }
                };
            }
            SyncRole::Replica => {
                if let Session::Replica(r) = &mut self.session {
                    // Also re-arms a replica after a settle.
                    if self.conn.is_some() {
                        r.handle_connected(now);
                    }
                    return;
                }
                if let Session::Source(s) = &mut self.session {
                    s.handle_disconnected(now);
                    for (_, _, reply) in self.source_waiting.drain(..) {
                        let _ = reply.send(Err("the node became a replica".into()));
                    }
                }
                let config = ReplicaConfig {
                    exclude: self.exclude.clone(),
                    interval: self.interval,
                    // A request sent while the peer was still a replica
                    // itself (both units booting at once) is never
                    // answered: give up on it after this long, not 120 s.
                    idle_timeout: REPLICA_IDLE_TIMEOUT,
                    ..ReplicaConfig::default()
                };
                match Replica::open(config, now, store) {
                    Ok((mut r, report)) => {
                        if self.allow_mass_delete {
                            r.confirm_deletions();
                        }
                        if self.conn.is_some() {
                            r.handle_connected(now);
                        }
                        let status = r.status(SystemTime::now());
                        tracing::info!(?report, "replica opened");
                        self.session = Session::Replica(Box::new(r));
                        self.emit(PeerEvent::Opened(report)).await;
                        self.emit(PeerEvent::Status(status)).await;
                    }
                    Err(e) => {
                        self.session = Session::None;
                        let msg = format!("cannot open {} as a replica: {e}", self.dir.display());
                        self.emit(PeerEvent::Error(msg)).await;
                    }
                }
            }
            SyncRole::Idle => match &mut self.session {
                Session::Replica(r) => {
                    let _ = r.handle_disconnected(now, store);
                    while r.poll_transmit().is_some() {}
                    if self.round.is_some() || !self.waiting.is_empty() {
                        self.round_failed("the node became idle".into()).await;
                    }
                }
                Session::Source(s) => {
                    s.handle_disconnected(now);
                    for (_, _, reply) in self.source_waiting.drain(..) {
                        let _ = reply.send(Err("the node became idle".into()));
                    }
                    self.session = Session::None;
                }
                Session::None => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_rule() {
        let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let mut c = PeerConfig::new("/tmp", [0; 32]);
        c.listen = Some(a);
        c.peer = Some(b);
        assert!(c.dials());
        std::mem::swap(&mut c.listen, &mut c.peer);
        assert!(!c.dials());
        c.listen = None;
        assert!(c.dials());
        c.listen = Some(a);
        c.peer = None;
        assert!(!c.dials());
    }

    #[test]
    fn summary_json_shape() {
        let s = ReplicaSummary {
            generation: 3,
            files_sent: 2,
            files_renamed: 1,
            files_deleted: 1,
            bytes_received: 1234,
            seconds: 0.5,
        };
        assert_eq!(
            s.to_json(),
            r#"{"generation":3,"files_sent":2,"files_renamed":1,"files_deleted":1,"bytes_received":1234,"seconds":0.5}"#
        );
    }
}
