//! [`SyncLink`]: one end of a peer link that carries replication and
//! nothing else, for a sync tool that runs without an election; and the
//! part of the pair engine that runs its peer link, with the role the
//! election gives and the pair's own channels beside.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

use sync_delta::Epoch;
use sync_delta::Message;
use sync_delta::frame::{CHANNEL_PEER, CHANNEL_SYNC};

use super::link::{
    CloseReason, ConnId, Failure, LinkConfig, LinkControl, LinkFailure, LinkOut, LinkStats,
    PendingHandshake, link_inputs,
};
use super::sync::{ForPeer, SyncOrder, SyncReport, SyncRole};

/// What happened, for the tool's output and logs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SyncLinkEvent {
    /// An authenticated connection is the link now.
    LinkUp,
    /// It went down.
    LinkDown,
    /// A connection never became the link; a dialling end tries again
    /// after its backoff. Failures of accepted connections are reported
    /// at most once a second per source address (and a few a second in
    /// all, see [`LinkConfig::failure_report_interval`]); the rest come
    /// together in [`SyncLinkEvent::LinkFailuresSuppressed`].
    LinkFailed {
        /// Which connection (for one turned away at once, the number it
        /// would have had).
        conn: ConnId,
        /// Why.
        why: LinkFailure,
        /// Its source address, for an accepted connection (`None`: this
        /// end dialled it).
        from: Option<IpAddr>,
    },
    /// Failures of accepted connections not reported one by one since the
    /// last such summary (at most one per
    /// [`LinkConfig::failure_report_interval`]).
    LinkFailuresSuppressed {
        /// How many.
        count: u64,
        /// From how many source addresses (counted up to 64).
        sources: u64,
    },
    /// Bytes from the peer on [`CHANNEL_PEER`] (opaque here).
    PeerMessage(Vec<u8>),
    /// The sync worker's report, after the engine acted on it.
    Sync(SyncReport),
}

/// The driver's next step; [`SyncLink::poll_output`] returns them in order,
/// ending with [`SyncLinkOutput::Wait`].
///
/// Exhaustive on purpose, like [`crate::pair::Output`]: every output is
/// work for the driver.
#[derive(Debug)]
pub enum SyncLinkOutput {
    /// Open a connection to the peer; answer [`SyncLink::handle_dialed`]
    /// or [`SyncLink::handle_dial_failed`].
    Dial(ConnId),
    /// Write these bytes on the connection.
    Send {
        /// Which connection.
        conn: ConnId,
        /// What to write.
        bytes: Vec<u8>,
    },
    /// Close the connection, then report it with
    /// [`SyncLink::handle_link_closed`].
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why, for the log.
        reason: CloseReason,
    },
    /// Give this order to the [`crate::pair::SyncWorker`].
    Sync(SyncOrder),
    /// For the tool's output and logs.
    Event(SyncLinkEvent),
    /// Nothing more to do until this instant (or the next input).
    Wait(Option<Instant>),
}

/// Counters of the [`SyncLink`] itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncLinkStats {
    /// Sync messages from the peer that did not decode (the connection is
    /// closed and started over).
    pub sync_decode_errors: u64,
    /// Frames on a channel this engine does not use.
    pub unknown_channel: u64,
    /// Messages from the worker made for a link that has since gone down
    /// (the worker had not yet been told), dropped.
    pub stale_sync_messages: u64,
}

/// One end of a peer link that carries a [`crate::pair::SyncWorker`]'s
/// rounds, and opaque peer messages beside them, without an election or
/// an orchestrator: what a standalone sync tool (serve a tree, pull it)
/// runs. The link's rules are the pair engine's own (who dials, the redial
/// backoff, the handshake deadline, how many handshakes may wait, a newer
/// authenticated connection replacing the old), and so are the sync
/// rules: the worker is told when the link comes up and goes down, and a
/// round that leaves the session's stream out of step
/// ([`SyncReport::RoundFailed`] with `reset`) closes the connection, which
/// starts over. A replica runs its rounds on the worker's schedule (the
/// first as soon as the link is up); a round on request is
/// [`SyncLink::round_now`].
///
/// [`crate::pair::Pair`] runs its peer link through one of these too: the
/// same link, the same orders to the worker, with the role its election
/// gives and its own channels beside [`CHANNEL_SYNC`].
///
/// # Driver contract
/// The same as [`crate::pair::Pair`]'s for the link and the worker: feed
/// the connections and their bytes with `now` ([`SyncLink::handle_dialed`],
/// [`SyncLink::handle_dial_failed`], [`SyncLink::handle_accepted`],
/// [`SyncLink::handle_link_bytes`], reading at most
/// [`SyncLink::link_receive_window`] bytes each time,
/// [`SyncLink::handle_link_closed`]), the worker's messages and reports ([`SyncLink::handle_sync_message`],
/// [`SyncLink::handle_sync_report`]); after each input drain
/// [`SyncLink::poll_output`] until [`SyncLinkOutput::Wait`], and call
/// [`SyncLink::handle_timeout`] at the instant it gives.
///
/// ```
/// use std::time::Instant;
/// use failover_orchestrator::pair::{LinkConfig, SyncLink, SyncLinkOutput, SyncOrder, SyncRole};
/// use sync_delta::frame::PreSharedKey;
///
/// # let key_file_bytes = *b"k0Tq9vX2LmZ8aB3nR7yC1eW5uH4sJ6dF";
/// // 32 random bytes, the same on both ends (weak keys are refused).
/// let key = PreSharedKey::new(key_file_bytes).expect("32 random bytes");
/// let link = LinkConfig::new(key, true);
/// let role = SyncRole::Replica { periodic: true };
/// let now = Instant::now();
/// let mut replica = SyncLink::new(link, role, sync_delta::Epoch::default(), now);
/// assert!(matches!(replica.poll_output(), SyncLinkOutput::Sync(SyncOrder::Become(r)) if r == role));
/// // A dialling end dials at once.
/// assert!(matches!(replica.poll_output(), SyncLinkOutput::Wait(Some(t)) if t == now));
/// replica.handle_timeout(now);
/// assert!(matches!(replica.poll_output(), SyncLinkOutput::Dial(_)));
/// ```
#[derive(Debug)]
pub struct SyncLink {
    link: LinkControl,
    role: SyncRole,
    next_order: u64,
    /// Link changes told to the worker ([`SyncOrder::Connected`],
    /// [`SyncOrder::Disconnected`]): what its current messages carry.
    link_changes: u64,
    /// Frames on channels other than [`CHANNEL_SYNC`] for the engine that
    /// owns this link (the pair engine), in the order they came; `None`
    /// when they are this engine's: [`CHANNEL_PEER`] as
    /// [`SyncLinkEvent::PeerMessage`], any other counted as unknown.
    owner_frames: Option<VecDeque<(u8, Vec<u8>)>>,
    out: VecDeque<SyncLinkOutput>,
    stats: SyncLinkStats,
}

impl SyncLink {
    /// An end that runs `role` and starts the link at once (dialling now
    /// when [`LinkConfig::dials`]); its frames carry `epoch`.
    #[must_use]
    pub fn new(config: LinkConfig, role: SyncRole, epoch: Epoch, now: Instant) -> SyncLink {
        let mut s = SyncLink::idle(config, epoch, None);
        s.link.set_enabled(now, true);
        s.set_role(now, role);
        s
    }

    /// The pair engine's link: off until [`SyncLink::set_enabled`], no
    /// session until [`SyncLink::set_role`], and the frames on channels
    /// other than [`CHANNEL_SYNC`] kept for [`SyncLink::poll_owner_frame`].
    pub(super) fn for_pair(config: LinkConfig, epoch: Epoch) -> SyncLink {
        SyncLink::idle(config, epoch, Some(VecDeque::new()))
    }

    fn idle(
        config: LinkConfig,
        epoch: Epoch,
        owner_frames: Option<VecDeque<(u8, Vec<u8>)>>,
    ) -> SyncLink {
        SyncLink {
            link: LinkControl::new(config, epoch),
            role: SyncRole::Idle,
            next_order: 1,
            link_changes: 0,
            owner_frames,
            out: VecDeque::new(),
            stats: SyncLinkStats::default(),
        }
    }

    /// Runs `role` from now on (asking again for the same role re-arms a
    /// replica after [`SyncLink::settle`]).
    pub fn set_role(&mut self, now: Instant, role: SyncRole) {
        self.role = role;
        self.out
            .push_back(SyncLinkOutput::Sync(SyncOrder::Become(role)));
        self.pump(now);
    }

    /// The epoch the frames carry from now on.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.link.set_epoch(epoch);
    }

    /// Asks for a round that starts after now (see [`SyncOrder::RoundNow`]);
    /// returns the id its [`SyncReport::Done`] carries.
    pub fn round_now(&mut self, now: Instant) -> u64 {
        let id = self.fresh_order();
        self.out
            .push_back(SyncLinkOutput::Sync(SyncOrder::RoundNow { id }));
        self.pump(now);
        id
    }

    /// Asks to finish or roll back the round in progress (see
    /// [`SyncOrder::Settle`]); returns the id its [`SyncReport::Done`]
    /// carries.
    pub fn settle(&mut self, now: Instant) -> u64 {
        let id = self.fresh_order();
        self.out
            .push_back(SyncLinkOutput::Sync(SyncOrder::Settle { id }));
        self.pump(now);
        id
    }

    /// Lets the next round past the mass-deletion guard once.
    pub fn confirm_deletions(&mut self, now: Instant) {
        self.out
            .push_back(SyncLinkOutput::Sync(SyncOrder::ConfirmDeletions));
        self.pump(now);
    }

    /// Sends opaque bytes to the peer on [`CHANNEL_PEER`]; false when no
    /// link is up (they are dropped).
    pub fn send_peer_message(&mut self, now: Instant, payload: &[u8]) -> bool {
        let sent = self.send(CHANNEL_PEER, payload);
        self.pump(now);
        sent
    }

    link_inputs!("SyncLinkOutput");

    /// A message from the worker for the peer; dropped (and counted) when
    /// the worker made it before it was told of the link's last change.
    pub fn handle_sync_message(&mut self, now: Instant, message: &ForPeer) {
        if !message.made_on(self.link_changes) {
            self.stats.stale_sync_messages += 1;
            return;
        }
        let m = &message.message;
        let mut bytes = Vec::with_capacity(m.encoded_len());
        m.encode(&mut bytes);
        self.link.send(CHANNEL_SYNC, &bytes);
        self.pump(now);
    }

    /// A report from the worker.
    pub fn handle_sync_report(&mut self, now: Instant, report: SyncReport) {
        if let SyncReport::RoundFailed { reset: true, .. } = &report {
            self.link.close_up(now, CloseReason::SyncFailed);
        }
        self.out
            .push_back(SyncLinkOutput::Event(SyncLinkEvent::Sync(report)));
        self.pump(now);
    }

    /// Timers due (the handshake deadlines, the next dial).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        self.pump(now);
    }

    /// The next thing to do; [`SyncLinkOutput::Wait`] when there is
    /// nothing more.
    pub fn poll_output(&mut self) -> SyncLinkOutput {
        self.out
            .pop_front()
            .unwrap_or_else(|| SyncLinkOutput::Wait(self.link.poll_timeout()))
    }

    /// The link's next deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.link.poll_timeout()
    }

    /// The role the worker was last told to run.
    #[must_use]
    pub fn role(&self) -> SyncRole {
        self.role
    }

    /// Whether an authenticated link is up.
    #[must_use]
    pub fn link_up(&self) -> bool {
        self.link.is_up()
    }

    /// Rotates the keys without a restart: connections made from now on
    /// prove `key` when dialling and accept a dialler that proves `key`
    /// or `next` (as [`LinkConfig::key`] and [`LinkConfig::next_key`]).
    /// The link that is up stays: it was authenticated already.
    pub fn set_link_keys(
        &mut self,
        key: sync_delta::frame::PreSharedKey,
        next: Option<sync_delta::frame::PreSharedKey>,
    ) {
        self.link.set_keys(key, next);
    }

    /// The link's counters.
    #[must_use]
    pub fn link_stats(&self) -> LinkStats {
        self.link.stats
    }

    /// The connections waiting for their handshake: at most
    /// [`LinkConfig::max_pending`] accepted ones (and this end's dial),
    /// each holding at most [`sync_delta::frame::MAX_PRE_AUTH`] bytes.
    pub fn pending_handshakes(&self) -> impl Iterator<Item = PendingHandshake> + '_ {
        self.link.pending_handshakes()
    }

    /// This engine's counters.
    #[must_use]
    pub fn stats(&self) -> SyncLinkStats {
        self.stats
    }

    fn fresh_order(&mut self) -> u64 {
        let id = self.next_order;
        self.next_order += 1;
        id
    }

    // ----------------------------------------------------------------
    // For the pair engine, which owns one of these. These calls queue
    // work in the link without moving it to the output queue: the pair
    // engine's `drain_link` does, with `pump`, in the order its own queue
    // keeps.

    /// Runs the link (listening, and dialling when
    /// [`LinkConfig::dials`]) or closes every connection.
    pub(super) fn set_enabled(&mut self, now: Instant, enabled: bool) {
        self.link.set_enabled(now, enabled);
    }

    /// Closes the authenticated connection, which starts over.
    pub(super) fn close(&mut self, now: Instant, why: CloseReason) {
        self.link.close_up(now, why);
    }

    /// How many bytes connection `conn` takes now (the pair engine's
    /// `link_receive_window`).
    pub(super) fn receive_window(&self, conn: ConnId) -> usize {
        self.link.receive_window(conn)
    }

    /// Sends `payload` on `channel`; false when no link is up.
    pub(super) fn send(&mut self, channel: u8, payload: &[u8]) -> bool {
        self.link.send(channel, payload)
    }

    /// The next frame for the owner (see [`SyncLink::for_pair`]).
    pub(super) fn poll_owner_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        self.owner_frames.as_mut()?.pop_front()
    }

    /// Moves what the link produced into the output queue, until nothing
    /// moves (closing a connection produces more).
    pub(super) fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(o) = self.link.out.pop_front() {
                moved = true;
                self.out.push_back(match o {
                    LinkOut::Dial(c) => SyncLinkOutput::Dial(c),
                    LinkOut::Send(conn, bytes) => SyncLinkOutput::Send { conn, bytes },
                    LinkOut::Close(conn, reason) => SyncLinkOutput::Close { conn, reason },
                });
            }
            while let Some(Failure { conn, why, from }) = self.link.failures.pop_front() {
                moved = true;
                self.out
                    .push_back(SyncLinkOutput::Event(SyncLinkEvent::LinkFailed {
                        conn,
                        why,
                        from,
                    }));
            }
            while let Some(s) = self.link.suppressed.pop_front() {
                moved = true;
                self.out.push_back(SyncLinkOutput::Event(
                    SyncLinkEvent::LinkFailuresSuppressed {
                        count: s.count,
                        sources: s.sources,
                    },
                ));
            }
            while let Some(up) = self.link.changes.pop_front() {
                moved = true;
                let (ev, order) = if up {
                    (SyncLinkEvent::LinkUp, SyncOrder::Connected)
                } else {
                    (SyncLinkEvent::LinkDown, SyncOrder::Disconnected)
                };
                self.link_changes += 1;
                self.out.push_back(SyncLinkOutput::Event(ev));
                self.out.push_back(SyncLinkOutput::Sync(order));
            }
            while let Some((channel, payload)) = self.link.frames.pop_front() {
                moved = true;
                match (channel, &mut self.owner_frames) {
                    (CHANNEL_SYNC, _) => match Message::decode(&payload) {
                        Ok(m) => self
                            .out
                            .push_back(SyncLinkOutput::Sync(SyncOrder::Deliver(m))),
                        Err(_) => {
                            self.stats.sync_decode_errors += 1;
                            self.link.close_up(now, CloseReason::Refused);
                        }
                    },
                    (_, Some(owner)) => owner.push_back((channel, payload)),
                    (CHANNEL_PEER, None) => self
                        .out
                        .push_back(SyncLinkOutput::Event(SyncLinkEvent::PeerMessage(payload))),
                    (_, None) => self.stats.unknown_channel += 1,
                }
            }
            if !moved {
                break;
            }
        }
    }
}
