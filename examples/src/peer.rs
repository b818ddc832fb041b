//! The sync tool's peer link: the library's
//! [`SyncLink`] and
//! [`SyncWorker`] driven by real sockets, threads and the data directory's
//! [`FsStore`]. Who dials, the redial backoff, the handshake deadline,
//! which connection is the link, when a replica's rounds start, how long
//! it waits for the source and what a failed round does are the library's;
//! this module moves bytes, runs the threads and reports.
//!
//! [`spawn`] starts two threads and returns a command sender and an event
//! receiver:
//!
//! - the **link thread** owns the `SyncLink` and waits in one epoll set on the
//!   listener, the connections and its inbox (commands, and the worker's
//!   messages and reports), with the link's deadline as the timeout; the
//!   sockets are the node's ([`crate::node`] shares the code);
//! - the **sync worker thread** owns the [`SyncWorker`] and the
//!   [`FsStore`] of the data directory: scans, hashing and applying block
//!   only it. A source's data is read as the link's send queue drains.
//!
//! With both [`PeerConfig::listen`] and [`PeerConfig::peer`] set, both
//! ends listen and the library's rule
//! ([`LinkConfig::dials_by_address`]) picks the one that dials; with only
//! `peer` this end only dials, with only `listen` it only accepts.
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
//! cmds.send(PeerCommand::SetRole(SyncRole::Replica { periodic: true })).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         PeerEvent::RoundDone(summary) => println!("{}", peer::summary_json(&summary)),
//!         PeerEvent::PeerMessage(bytes) => { /* opaque bytes from the peer */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

pub use failover_orchestrator::pair::SyncRole;
use failover_orchestrator::pair::{
    CloseReason, GenerationStatus, LinkConfig, RoundSummary, SyncConfig, SyncLink, SyncLinkEvent,
    SyncLinkOutput, SyncReport, SyncWorker,
};
use sync_delta::frame::PreSharedKey;
use sync_delta::{Epoch, Exclude, FsStore, OpenReport, Refusal};
use tokio::sync::{mpsc, oneshot};

pub use crate::link_io::RoundWatch;
use crate::link_io::{self, FromWorker, InboxTx, Sockets, ToWorker, Woken};

/// What [`spawn`] needs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Where this end accepts the link (`None`: it only dials).
    pub listen: Option<SocketAddr>,
    /// Where the peer accepts it (`None`: this end only accepts).
    pub peer: Option<SocketAddr>,
    /// The pre-shared key ([`crate::config::read_key_file`] reads and
    /// checks the file); this end dials with it.
    pub key: [u8; 32],
    /// During a key rotation, the next key: a peer that dials with it is
    /// accepted too.
    pub key_next: Option<[u8; 32]>,
    /// The replicated tree. A replica's tree is this directory itself; the
    /// engine's state lives in `dir/.sync-delta/` on both sides.
    pub dir: PathBuf,
    /// Patterns never replicated (see [`sync_delta::Exclude`]).
    pub exclude: Vec<String>,
    /// Replica: time between rounds.
    pub interval: Duration,
    /// This end's stable 64-bit number: its first epoch is `(0, node)`
    /// until [`PeerCommand::SetEpoch`].
    pub node: u64,
    /// Replica: let every round past the mass-deletion guard (the `sync`
    /// tool's `--allow-mass-delete`); otherwise a refused round needs
    /// [`PeerCommand::ConfirmDeletions`].
    pub allow_mass_delete: bool,
    /// Replica: the mass-deletion guard's share of the tree's content
    /// bytes (default 0.5; see `sync_delta::ReplicaConfig`).
    pub mass_delete_fraction: f64,
    /// Replica: how far back lost content counts (default 24 h).
    pub mass_delete_window: Duration,
    /// Replica: where the sync worker shows how far the round in progress
    /// has got (the `sync` tool's progress bar); `None`: nowhere.
    pub progress: Option<RoundWatch>,
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
            key_next: None,
            dir: dir.into(),
            exclude: Vec::new(),
            interval: Duration::from_secs(60),
            node: 0,
            allow_mass_delete: false,
            mass_delete_fraction: 0.5,
            mass_delete_window: Duration::from_secs(24 * 3600),
            progress: None,
        }
    }

    /// True when this end dials: the library's rule when both ends listen,
    /// else whether there is a peer address at all.
    #[must_use]
    pub fn dials(&self) -> bool {
        match (self.listen, self.peer) {
            (Some(l), Some(p)) => LinkConfig::dials_by_address(l, p),
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// The `sync` tool's line for a committed round:
/// `{"generation":N,"files_sent":N,"files_renamed":N,"files_deleted":N,"bytes_received":N,"bytes_written":N,"seconds":F}`
/// (`bytes_written`: file data written to disk, beside the bytes on the
/// wire).
#[must_use]
pub fn summary_json(s: &RoundSummary) -> String {
    serde_json::json!({
        "generation": s.generation,
        "files_sent": s.fetched,
        "files_renamed": s.renamed,
        "files_deleted": s.deleted,
        "bytes_received": s.received,
        "bytes_written": s.written,
        "seconds": s.took.as_secs_f64(),
    })
    .to_string()
}

/// The answer to [`PeerCommand::SyncNow`] and
/// [`PeerCommand::FinishOrRollback`]: the generation after it, or why not.
pub type GenerationReply = oneshot::Sender<Result<GenerationStatus, String>>;

/// Commands to the peer link.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerCommand {
    /// Run this session from now on.
    SetRole(SyncRole),
    /// Replica: run a round that starts after this request and answer when
    /// it commits ([`PeerEvent::RoundDone`] has its counts). Source: ask the
    /// replica for one and answer when it confirms.
    SyncNow {
        /// The answer.
        reply: GenerationReply,
    },
    /// Finish or roll back the round in progress and answer with the
    /// generation the tree is at (a source: what its replica confirmed).
    FinishOrRollback {
        /// The answer.
        reply: GenerationReply,
    },
    /// Replica: let the next round past the mass-deletion guard.
    ConfirmDeletions,
    /// Opaque bytes for the peer, on [`sync_delta::frame::CHANNEL_PEER`];
    /// dropped when no connection is up.
    SendPeerMessage(Vec<u8>),
    /// This end's epoch for the frames it sends from now on.
    SetEpoch(Epoch),
    /// Close the link (a round in progress rolls back) and stop; the event
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
    /// a dialling end tries again after its backoff.
    LinkFailed(String),
    /// Opaque bytes from the peer.
    PeerMessage(Vec<u8>),
    /// A replica opened its tree (what it rolled forward, back or put in
    /// quarantine).
    Opened(OpenReport),
    /// Replica: a round found local changes in its way and set them
    /// aside (quarantine), or fetches what was deleted locally again; the
    /// round goes on.
    Diverged(sync_delta::Divergence),
    /// Replica: a round committed.
    RoundDone(RoundSummary),
    /// Replica: the mass-deletion guard refused a round; nothing was
    /// changed. [`PeerCommand::ConfirmDeletions`] lets the next one pass.
    RoundRefused(Refusal),
    /// A round failed and was rolled back; a replica's tree is at its last
    /// whole generation.
    RoundFailed(String),
    /// The generation a replica holds changed, or (on a source) the
    /// replica confirmed one: its number and when the source took it.
    Status(GenerationStatus),
    /// A failure that does not stop the link (a tree that cannot be opened
    /// for a role).
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
/// When called outside a tokio runtime (commands are forwarded by a task
/// on the caller's runtime).
#[must_use]
pub fn spawn(
    config: PeerConfig,
    role: SyncRole,
) -> (mpsc::Sender<PeerCommand>, mpsc::Receiver<PeerEvent>) {
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let fatal = |ev_tx: &mpsc::Sender<PeerEvent>, why: String| {
        let _ = ev_tx.try_send(PeerEvent::Fatal(why));
    };
    let keys = PreSharedKey::new(config.key).and_then(|key| {
        let next = config.key_next.map(PreSharedKey::new).transpose()?;
        Ok((key, next))
    });
    let (key, next_key) = match keys {
        Ok(k) => k,
        Err(e) => {
            fatal(&ev_tx, format!("the pre-shared key: {e}"));
            return (cmd_tx, ev_rx);
        }
    };
    let store = match FsStore::parallel(&config.dir) {
        Ok(s) => s,
        Err(e) => {
            fatal(&ev_tx, format!("cannot open {}: {e}", config.dir.display()));
            return (cmd_tx, ev_rx);
        }
    };
    let listener = match config.listen.map(link_io::listen).transpose() {
        Ok(l) => l,
        Err(e) => {
            let addr = config.listen.map_or_else(String::new, |a| a.to_string());
            fatal(&ev_tx, format!("cannot listen on {addr}: {e}"));
            return (cmd_tx, ev_rx);
        }
    };
    if let Some(local) = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket())
    {
        tracing::info!(%local, "peer link listening");
        let _ = ev_tx.try_send(PeerEvent::Listening(local));
    }
    let (inbox_tx, inbox) = match link_io::Inbox::new() {
        Ok(i) => i,
        Err(e) => {
            fatal(&ev_tx, format!("wake-up pair: {e}"));
            return (cmd_tx, ev_rx);
        }
    };
    let queued = Arc::new(AtomicUsize::new(0));
    let buffered = Arc::new(AtomicUsize::new(0));
    let inbound = Arc::new(AtomicUsize::new(0));
    let worker = SyncWorker::new(SyncConfig {
        exclude: Exclude::new(&config.exclude),
        interval: config.interval,
        allow_mass_delete: config.allow_mass_delete,
        mass_delete_fraction: config.mass_delete_fraction,
        mass_delete_window: config.mass_delete_window,
        ..SyncConfig::default()
    });
    let (to_worker, orders) = std_mpsc::channel();
    let to_link: InboxTx<In> = inbox_tx.clone();
    let worker_thread = match link_io::spawn_worker_watched(
        worker,
        store,
        orders,
        move |m| to_link.send(In::Worker(m)),
        queued.clone(),
        buffered.clone(),
        inbound.clone(),
        config.progress.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            fatal(&ev_tx, format!("sync worker thread: {e}"));
            return (cmd_tx, ev_rx);
        }
    };
    let mut link = LinkConfig::new(key, config.dials());
    link.next_key = next_key;
    // A known peer keeps one handshake slot (the 8 / 16 limits apply
    // either way).
    link.peer = config.peer.map(|a| a.ip());
    let sockets = match Sockets::new(listener, config.peer, buffered, inbound)
        .and_then(|s| s.watch(&inbox.wake, 0).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            fatal(&ev_tx, format!("peer link poller: {e}"));
            return (cmd_tx, ev_rx);
        }
    };
    let driver = Driver {
        link: SyncLink::new(link, role, Epoch::new(0, config.node), Instant::now()),
        sockets,
        inbox,
        to_worker,
        queued,
        events: ev_tx.clone(),
        replies: HashMap::new(),
        stopping: false,
    };
    let spawned = std::thread::Builder::new()
        .name("peer-link".into())
        .spawn(move || {
            driver.run();
            let _ = worker_thread.join();
        });
    if let Err(e) = spawned {
        fatal(&ev_tx, format!("peer link thread: {e}"));
        return (cmd_tx, ev_rx);
    }
    tokio::spawn(async move {
        while let Some(c) = cmd_rx.recv().await {
            if !inbox_tx.send(In::Command(c)) {
                return;
            }
        }
        // The command sender was dropped: stop.
        inbox_tx.send(In::Command(PeerCommand::Shutdown));
    });
    (cmd_tx, ev_rx)
}

/// What reaches the link thread.
enum In {
    Command(PeerCommand),
    Worker(FromWorker),
}

struct Driver {
    link: SyncLink,
    sockets: Sockets,
    inbox: link_io::Inbox<In>,
    to_worker: std_mpsc::Sender<ToWorker>,
    /// Bytes of the worker's messages not yet handed to the link.
    queued: Arc<AtomicUsize>,
    events: mpsc::Sender<PeerEvent>,
    /// Commands waiting for the worker's answer, by order id.
    replies: HashMap<u64, GenerationReply>,
    stopping: bool,
}

impl Driver {
    fn emit(&self, e: PeerEvent) -> bool {
        self.events.blocking_send(e).is_ok()
    }

    fn run(mut self) {
        let mut woken = Woken::default();
        loop {
            self.drain();
            if self.stopping {
                break;
            }
            let timeout = self
                .link
                .poll_timeout()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.sockets.wait(timeout, &mut woken);
            let now = Instant::now();
            if self.link.poll_timeout().is_some_and(|t| t <= now) {
                self.link.handle_timeout(now);
            }
            if woken.listener {
                self.sockets.accept(&mut self.link, Instant::now());
                self.drain();
            }
            for &(id, ready) in &woken.conns {
                if !self
                    .sockets
                    .connect_ready(&mut self.link, Instant::now(), id, ready)
                    && (ready.read || ready.error)
                {
                    while self.sockets.read(&mut self.link, Instant::now(), id, ready) {
                        self.drain();
                    }
                }
                self.sockets.flush(&mut self.link, Instant::now(), id);
                self.drain();
            }
            if !woken.own.is_empty() {
                while let Some(m) = self.inbox.next() {
                    self.input(m);
                    self.drain();
                }
            }
        }
        // Close the link as any end: the worker hears the link went down
        // (a round in progress rolls back) before it stops.
        for id in self.sockets.ids() {
            self.sockets.close(&mut self.link, Instant::now(), id);
        }
        self.drain();
        self.sockets.shut_all();
        let _ = self.to_worker.send(ToWorker::Stop);
    }

    fn input(&mut self, m: In) {
        let now = Instant::now();
        match m {
            In::Worker(FromWorker::Message(m, len)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.link.handle_sync_message(now, &m);
                link_io::give_back(&self.to_worker, m);
            }
            In::Worker(FromWorker::Report(r)) => self.link.handle_sync_report(now, r),
            // The next wait reads the connections again.
            In::Worker(FromWorker::Room) => {}
            In::Command(c) => match c {
                PeerCommand::SetRole(role) => self.link.set_role(now, role),
                PeerCommand::SyncNow { reply } => {
                    let id = self.link.round_now(now);
                    self.replies.insert(id, reply);
                }
                PeerCommand::FinishOrRollback { reply } => {
                    let id = self.link.settle(now);
                    self.replies.insert(id, reply);
                }
                PeerCommand::ConfirmDeletions => self.link.confirm_deletions(now),
                PeerCommand::SendPeerMessage(bytes) => {
                    if !self.link.send_peer_message(now, &bytes) {
                        tracing::debug!("peer message dropped: no connection");
                    }
                }
                PeerCommand::SetEpoch(e) => self.link.set_epoch(e),
                PeerCommand::Shutdown => self.stopping = true,
            },
        }
    }

    /// Carries out everything the link asks, in order.
    fn drain(&mut self) {
        loop {
            let now = Instant::now();
            match self.link.poll_output() {
                SyncLinkOutput::Wait(_) => break,
                // A stopping end dials no more.
                SyncLinkOutput::Dial(_) if self.stopping => {}
                SyncLinkOutput::Dial(id) => self.sockets.dial(&mut self.link, now, id),
                SyncLinkOutput::Send { conn, bytes } => {
                    self.sockets.send(&mut self.link, now, conn, &bytes);
                }
                SyncLinkOutput::Close { conn, reason } => {
                    if matches!(
                        reason,
                        CloseReason::HandshakeFailed | CloseReason::HandshakeTimeout
                    ) {
                        // Its failure is the engine's event, paced per address.
                        tracing::debug!(conn = conn.0, ?reason, "peer link: closing");
                    } else {
                        tracing::info!(conn = conn.0, ?reason, "peer link: closing");
                    }
                    self.sockets.close(&mut self.link, now, conn);
                }
                SyncLinkOutput::Sync(order) => {
                    let _ = self.sockets.hand_to_worker(&self.to_worker, order);
                }
                SyncLinkOutput::Event(e) => {
                    if !self.event(e) {
                        self.stopping = true;
                    }
                }
            }
        }
    }

    /// Reports an event; false when nobody listens any more.
    fn event(&mut self, e: SyncLinkEvent) -> bool {
        let ev = match e {
            SyncLinkEvent::LinkUp => PeerEvent::Connected,
            SyncLinkEvent::LinkDown => PeerEvent::Disconnected,
            SyncLinkEvent::LinkFailed { conn, why, from } => {
                let text = self.sockets.failure_text(conn, why);
                let text = match from {
                    Some(from) => format!("connection from {from}: {text}"),
                    None => text,
                };
                tracing::warn!(error = %text, "peer link failed");
                PeerEvent::LinkFailed(text)
            }
            SyncLinkEvent::LinkFailuresSuppressed { count, sources } => {
                let text = format!(
                    "{count} more failed connections from {sources} addresses \
                     (not reported one by one)"
                );
                tracing::warn!("peer link: {text}");
                PeerEvent::LinkFailed(text)
            }
            SyncLinkEvent::PeerMessage(m) => PeerEvent::PeerMessage(m),
            SyncLinkEvent::Sync(r) => match r {
                SyncReport::Opened(o) => PeerEvent::Opened(o),
                SyncReport::Status(st) => PeerEvent::Status(st),
                SyncReport::Diverged(d) => PeerEvent::Diverged(d),
                SyncReport::RoundDone(s) => PeerEvent::RoundDone(s),
                SyncReport::Refused(r) => PeerEvent::RoundRefused(r),
                SyncReport::RoundFailed { why, .. } => PeerEvent::RoundFailed(why),
                SyncReport::Done { id, result } => {
                    if let Some(reply) = self.replies.remove(&id) {
                        let _ = reply.send(result);
                    }
                    return true;
                }
                SyncReport::Error(e) => PeerEvent::Error(e),
            },
            _ => return true,
        };
        self.emit(ev)
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
        let s = RoundSummary {
            generation: 3,
            changed: 4,
            fetched: 2,
            copied: 1,
            deleted: 1,
            renamed: 1,
            received: 1234,
            written: 4321,
            took: Duration::from_millis(500),
        };
        assert_eq!(
            summary_json(&s),
            r#"{"generation":3,"files_sent":2,"files_renamed":1,"files_deleted":1,"bytes_received":1234,"bytes_written":4321,"seconds":0.5}"#
        );
    }
}
