//! Sync groups: virtual routers that change state together.

use std::collections::VecDeque;
use std::time::Instant;

use vrrp_proto::{Family, RecvMeta, check_datagram};

use crate::config::BackupMode;
use crate::event::{Event, Reason, State};
use crate::router::{
    CommandError, EVENT_QUEUE, Input, LinkState, RecvError, Release, Transmit, VirtualRouter,
};
use crate::stats::ConfigDrop;

/// Several virtual routers (e.g. the dedicated link, the LAN and the WAN of
/// one appliance) that change state together, as keepalived's
/// `vrrp_sync_group`:
///
/// - one member becoming Master (by timer, takeover, …) makes every Backup
///   member Master (a Passive member only when it was a takeover);
/// - one member stepping down from Master makes every Master member Backup;
/// - one member losing its link takes every member to Initialize (so the
///   peer's group takes over everywhere), and they start again when that
///   link is back.
///
/// Transitions the group forces carry [`Reason::SyncGroup`]. The group has
/// the same driver contract as [`VirtualRouter`]; its outputs name the
/// member they come from.
#[derive(Debug, Clone)]
pub struct SyncGroup {
    members: Vec<VirtualRouter>,
    dragged: Vec<bool>,
    events: VecDeque<(usize, Event)>,
    tx_member: usize,
    unrouted: u64,
    events_dropped: u64,
}

impl SyncGroup {
    /// A group of routers (their VRIDs should differ per family, so that
    /// received packets can be routed to them).
    #[must_use]
    pub fn new(members: Vec<VirtualRouter>) -> SyncGroup {
        let n = members.len();
        SyncGroup {
            members,
            dragged: vec![false; n],
            events: VecDeque::with_capacity(EVENT_QUEUE),
            tx_member: 0,
            unrouted: 0,
            events_dropped: 0,
        }
    }

    /// The members.
    #[must_use]
    pub fn members(&self) -> &[VirtualRouter] {
        &self.members
    }

    /// Received packets that no member's VRID and family matched.
    #[must_use]
    pub fn unrouted(&self) -> u64 {
        self.unrouted
    }

    /// Events lost because the group's queue was full (the driver did not
    /// drain).
    #[must_use]
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Starts every member.
    pub fn handle_startup(&mut self, now: Instant) {
        for m in &mut self.members {
            m.handle_startup(now);
        }
        self.settle(now);
    }

    /// Shuts every member down.
    pub fn handle_shutdown(&mut self, now: Instant) {
        for m in &mut self.members {
            m.handle_shutdown(now);
        }
        self.dragged.iter_mut().for_each(|d| *d = false);
        self.settle(now);
    }

    /// One member's link changed.
    ///
    /// # Errors
    /// [`CommandError::NoMember`] for an index out of range.
    pub fn handle_link(
        &mut self,
        now: Instant,
        member: usize,
        link: LinkState,
    ) -> Result<(), CommandError> {
        self.member_mut(member)?.handle_link(now, link);
        self.settle(now);
        Ok(())
    }

    /// Applies an input to one member.
    ///
    /// # Errors
    /// [`CommandError::NoMember`], or the member's error.
    pub fn handle_input(
        &mut self,
        now: Instant,
        member: usize,
        input: Input,
    ) -> Result<(), CommandError> {
        let r = self.member_mut(member)?.handle_input(now, input);
        self.settle(now);
        r
    }

    /// Takes over on every Backup member.
    pub fn takeover(&mut self, now: Instant) {
        for m in &mut self.members {
            let _ = m.takeover(now);
        }
        self.settle(now);
    }

    /// Releases every Master member.
    pub fn release(&mut self, now: Instant, release: Release) {
        for m in &mut self.members {
            let _ = m.release(now, release);
        }
        self.settle(now);
    }

    /// A received bare message, routed to the member of its VRID and
    /// family.
    ///
    /// # Errors
    /// As [`VirtualRouter::handle_message`];
    /// `RecvError::Config(ConfigDrop::Vrid)` when no member matches.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &[u8],
        meta: RecvMeta,
    ) -> Result<(), RecvError> {
        let vrid = message.get(1).copied().unwrap_or(0);
        let family = Family::of(&meta.dst);
        let r = match self.route(vrid, family) {
            Some(i) => self.members[i].handle_message(now, message, meta),
            None => {
                self.unrouted += 1;
                Err(RecvError::Config(ConfigDrop::Vrid))
            }
        };
        self.settle(now);
        r
    }

    /// A received whole datagram, routed as [`SyncGroup::handle_message`].
    ///
    /// # Errors
    /// As [`VirtualRouter::handle_datagram`].
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), RecvError> {
        let target = match check_datagram(datagram) {
            Ok(c) => self.route(c.packet.vrid(), c.packet.family()),
            Err(e) => return Err(RecvError::Packet(e)),
        };
        let r = match target {
            Some(i) => self.members[i].handle_datagram(now, datagram),
            None => {
                self.unrouted += 1;
                Err(RecvError::Config(ConfigDrop::Vrid))
            }
        };
        self.settle(now);
        r
    }

    /// Runs every member's due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for m in &mut self.members {
            m.handle_timeout(now);
        }
        self.settle(now);
    }

    /// The earliest member deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(VirtualRouter::poll_timeout)
            .min()
    }

    /// The next advertisement of any member, with the member's index.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(usize, Transmit)> {
        let n = self.members.len();
        for _ in 0..n {
            let i = self.tx_member % n;
            if let Some(t) = self.members[i].poll_transmit(buf) {
                return Some((i, t));
            }
            self.tx_member = (i + 1) % n;
        }
        None
    }

    /// The next event of any member, with the member's index.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<(usize, Event)> {
        self.events.pop_front()
    }

    fn member_mut(&mut self, index: usize) -> Result<&mut VirtualRouter, CommandError> {
        self.members
            .get_mut(index)
            .ok_or(CommandError::NoMember { index })
    }

    fn route(&self, vrid: u8, family: Family) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.config().vrid().get() == vrid && m.config().family() == family)
    }

    /// Collects member events and propagates their own transitions until
    /// nothing moves (forced transitions do not propagate further).
    fn settle(&mut self, now: Instant) {
        // Each round forces at most every member once; two rounds settle.
        for _ in 0..4 {
            let mut moves: Vec<(usize, State, State, Reason)> = Vec::new();
            for (i, m) in self.members.iter_mut().enumerate() {
                while let Some(e) = m.poll_event() {
                    if let Event::StateChange { from, to, reason } = e
                        && reason != Reason::SyncGroup
                    {
                        moves.push((i, from, to, reason));
                    }
                    if self.events.len() < EVENT_QUEUE * self.dragged.len().max(1) {
                        self.events.push_back((i, e));
                    } else {
                        self.events_dropped += 1;
                    }
                }
            }
            if moves.is_empty() {
                return;
            }
            for (i, from, to, reason) in moves {
                for j in 0..self.members.len() {
                    if j == i {
                        continue;
                    }
                    let sj = self.members[j].state();
                    match (from, to) {
                        // A Passive member follows only a takeover.
                        (_, State::Master)
                            if sj == State::Backup
                                && (self.members[j].backup_mode() == BackupMode::Active
                                    || matches!(
                                        reason,
                                        Reason::Takeover | Reason::ArmedTakeover
                                    )) =>
                        {
                            self.members[j].force(now, State::Master);
                        }
                        (State::Master, State::Backup) if sj == State::Master => {
                            self.members[j].force(now, State::Backup);
                        }
                        (_, State::Initialize)
                            if reason == Reason::LinkDown && sj != State::Initialize =>
                        {
                            self.members[j].force(now, State::Initialize);
                            self.dragged[j] = true;
                        }
                        (State::Initialize, _) if self.dragged[j] => {
                            self.dragged[j] = false;
                            self.members[j].force(now, State::Backup);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
