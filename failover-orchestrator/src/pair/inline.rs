//! [`InlinePair`]: a [`Pair`] with its [`SyncWorker`] run inline, for
//! single-threaded drivers.

use std::time::{Instant, SystemTime};

use sync_delta::Storage;

use super::{Output, Pair, SyncWorker};
use crate::phones::min_opt;

/// The peer-link backlog (bytes handed out in [`Output::Send`] that the
/// driver's socket has not taken yet) at which [`InlinePair::poll_output`]
/// stops taking the sync worker's messages: 1 MiB.
pub const SYNC_BACKLOG_LIMIT: usize = 1 << 20;

/// One node of the pair for a single-threaded driver: the [`Pair`], its
/// [`SyncWorker`] and the tree the worker works on, with the glue between
/// the two engines done here.
///
/// The glue is what [`Pair`]'s driver contract asks of every driver that
/// runs the worker inline: [`Output::Sync`] orders go to
/// [`SyncWorker::handle_order`], the worker's messages to
/// [`Pair::handle_sync_message`] (only while the peer link can take more:
/// a source reads file data for them), its reports to
/// [`Pair::handle_sync_report`], and its deadline joins the pair's. File
/// work then runs on the driver's thread: a driver that must never delay
/// an advertisement behind hashing a large tree runs the worker on a
/// thread of its own instead, with [`Pair`] and [`SyncWorker`] directly.
///
/// Sans-IO like the engines it holds: no clock, no socket; the [`Storage`]
/// is the driver's choice (`sync_delta::FsStore` on a real tree).
///
/// # Driver contract
///
/// 1. Build it from a fresh [`Pair`] (its first outputs not yet drained),
///    a [`SyncWorker`] and the tree's [`Storage`].
/// 2. Feed the pair's inputs through [`InlinePair::pair_mut`] (VRRP, the
///    peer link's connections and bytes, command results, operator
///    requests, the wall clock), with `now`.
/// 3. After every input, call [`InlinePair::poll_output`] until it
///    returns [`Output::Wait`], carrying out each output in order, as
///    [`Pair::poll_output`]'s. It never returns [`Output::Sync`]. Pass the
///    peer link's backlog each time, and call it again when the backlog
///    shrinks: that is the source's flow control.
/// 4. Call [`InlinePair::handle_timeout`] at the instant [`Output::Wait`]
///    gave (the earlier of the pair's and the worker's deadlines; earlier
///    is harmless).
///
/// Never call [`Pair::poll_output`] on the pair inside: the worker's
/// orders would be lost.
///
/// ```
/// use std::time::{Instant, SystemTime};
/// use failover_orchestrator::pair::{InlinePair, LinkConfig, Output, Pair, PairConfig};
/// use failover_orchestrator::pair::{SyncConfig, SyncWorker};
/// use failover_orchestrator::{Config, Identity, PersistentState};
/// use sync_delta::{frame::PreSharedKey, mem::MemStore};
/// use vrrp_proto::{Version, Vrid};
///
/// let primary = std::net::Ipv4Addr::new(127, 0, 0, 1);
/// let vid = Vrid::new(1).ok_or("vrid")?;
/// let vrrp = vrrp_fsm::Config::builder(Version::V3, vid, primary.into())
///     .address(std::net::Ipv4Addr::new(127, 0, 0, 100))
///     .build()?;
/// let orchestrator = Config::builder(Identity::new("pbx-a", "5.1.30", "en")).build()?;
/// # let key_file_bytes = *b"k0Tq9vX2LmZ8aB3nR7yC1eW5uH4sJ6dF";
/// // 32 random bytes, the same on both units (weak keys are refused).
/// let link = LinkConfig::new(PreSharedKey::new(key_file_bytes)?, true);
/// let config = PairConfig::new(vrrp, orchestrator, link);
/// let (now, wall) = (Instant::now(), SystemTime::now());
/// let pair = Pair::new(config, PersistentState::default(), now, wall);
/// let worker = SyncWorker::new(SyncConfig::default());
/// let mut node = InlinePair::new(pair, worker, MemStore::new());
/// let backlog = 0; // bytes the peer link's socket has not taken yet
/// let deadline = loop {
///     match node.poll_output(now, wall, backlog) {
///         Output::Wait(deadline) => break deadline,
///         Output::Sync(_) => unreachable!("carried out inside"),
///         _ => { /* persist, send, dial, run the command, log */ }
///     }
/// };
/// assert!(deadline.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct InlinePair<S> {
    pair: Pair,
    worker: SyncWorker,
    store: S,
}

impl<S: Storage> InlinePair<S> {
    /// The node from its engines and its tree.
    #[must_use]
    pub fn new(pair: Pair, worker: SyncWorker, store: S) -> Self {
        InlinePair {
            pair,
            worker,
            store,
        }
    }

    /// The pair engine (status, the orchestrator, the election).
    #[must_use]
    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    /// The pair engine, for its inputs. Drain with
    /// [`InlinePair::poll_output`], never with [`Pair::poll_output`].
    pub fn pair_mut(&mut self) -> &mut Pair {
        &mut self.pair
    }

    /// The sync worker.
    #[must_use]
    pub fn worker(&self) -> &SyncWorker {
        &self.worker
    }

    /// The tree.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The tree, to change it between calls (outside a round's files, as
    /// the applications do on the Master).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The engines and the tree, apart.
    #[must_use]
    pub fn into_parts(self) -> (Pair, SyncWorker, S) {
        (self.pair, self.worker, self.store)
    }

    /// The next thing to do, as [`Pair::poll_output`], with the sync
    /// worker's orders, messages and reports handled here: never
    /// [`Output::Sync`]. [`Output::Wait`] carries the earlier of the pair's
    /// and the worker's deadlines.
    ///
    /// `wall` is the wall clock, for the generations a source takes.
    /// `link_backlog` is the bytes given in [`Output::Send`] that the
    /// driver's sockets have not taken yet: at [`SYNC_BACKLOG_LIMIT`] or
    /// more the worker's next message waits (a source reads file data for
    /// it), so call again once the sockets have taken some.
    pub fn poll_output(&mut self, now: Instant, wall: SystemTime, link_backlog: usize) -> Output {
        loop {
            // Reports first: they answer the commands the pair waits on.
            let mut fed = false;
            while let Some(report) = self.worker.poll_report() {
                self.pair.handle_sync_report(now, report);
                fed = true;
            }
            match self.pair.poll_output() {
                Output::Sync(order) => {
                    self.worker.handle_order(now, wall, order, &mut self.store);
                }
                Output::Wait(_) if fed => {}
                Output::Wait(deadline) => {
                    // One message at a time, only once the pair's own
                    // outputs are out: each becomes a send the driver
                    // writes before the backlog is looked at again.
                    let message = (link_backlog < SYNC_BACKLOG_LIMIT)
                        .then(|| self.worker.poll_transmit(now, &mut self.store))
                        .flatten();
                    match message {
                        Some(m) => {
                            self.pair.handle_sync_message(now, &m);
                            // Encoded: its buffers take the next data.
                            self.worker.recycle(m.message);
                        }
                        None => {
                            return Output::Wait(min_opt(deadline, self.worker.poll_timeout()));
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// When [`InlinePair::handle_timeout`] is next needed: the earlier of
    /// the pair's and the worker's deadlines.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        min_opt(self.pair.poll_timeout(), self.worker.poll_timeout())
    }

    /// The pair's and the worker's timers that are due, with the wall
    /// clock (as [`Pair::handle_wall_clock`]: the pair's timers include its
    /// heartbeats, which carry it); then drain with
    /// [`InlinePair::poll_output`].
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        // Into the orchestrator only: the pair's own timeout below pumps
        // once for both.
        self.pair.orch.handle_wall_clock(now, wall);
        if self.worker.poll_timeout().is_some_and(|t| t <= now) {
            self.worker.handle_timeout(now, &mut self.store);
        }
        self.pair.handle_timeout(now);
    }
}
