//! Phone re-homing: escalate per phone from the gentlest action to a reboot
//! after deadlines, with a nudge rate limit, the manual's reboot pacing and a
//! reboot concurrency limit, priority classes first.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::config::{PersonReason, PhoneMethod, PhoneSpec, RehomeConfig};
use crate::types::PhoneId;

/// The last automatic action taken for a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PhoneAction {
    /// None: it followed the address.
    Followed,
    /// A re-register nudge.
    Nudged,
    /// A reboot.
    Rebooted,
}

/// Where a phone ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PhoneResult {
    /// Not resolved yet.
    Pending,
    /// Registered with the new Master after this action.
    Registered(PhoneAction),
    /// Listed for a person.
    NeedsPerson(PersonReason),
    /// The action was carried out (for [`PhoneAction::Followed`]: the
    /// address was announced) but the driver has no way to check the
    /// phone's registration ([`crate::Orchestrator::handle_phone_unchecked`]):
    /// not confirmed, so not counted as registered. Resolved all the same:
    /// nothing the re-homing could do next would be checked either.
    Unchecked(PhoneAction),
}

/// Per-phone outcome of a re-homing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PhoneOutcome {
    /// Which phone.
    pub phone: PhoneId,
    /// Result.
    pub result: PhoneResult,
    /// When it was resolved, ms after the re-homing started.
    pub at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Action taken, waiting for the registration until the deadline.
    Waiting(PhoneAction),
    QueuedNudge,
    QueuedReboot,
    Resolved,
}

#[derive(Debug, Clone)]
struct PhoneState {
    spec: PhoneSpec,
    stage: Stage,
    deadline: Option<Instant>,
    outcome: PhoneOutcome,
}

/// Re-homing state for one takeover.
#[derive(Debug, Clone)]
pub(crate) struct Rehoming {
    cfg: RehomeConfig,
    start: Option<Instant>,
    phones: Vec<PhoneState>,
    /// (class, phone index)
    nudge_q: BTreeSet<(u8, u32)>,
    reboot_q: BTreeSet<(u8, u32)>,
    /// (deadline, phone index)
    waits: BTreeSet<(Instant, u32)>,
    next_nudge: Option<Instant>,
    next_reboot: Option<Instant>,
    rebooting: u32,
    resolved: u32,
    registered: u32,
    /// Phones reported before acting, resolved when it starts: registered
    /// (`true`) or unchecked.
    early: Vec<(u32, bool)>,
    milestones_hit: [bool; 3],
    pub(crate) out: VecDeque<(PhoneId, Command)>,
    pub(crate) milestones: VecDeque<u8>,
    pub(crate) person: VecDeque<(PhoneId, PersonReason)>,
}

const MILESTONES: [u8; 3] = [50, 95, 100];

impl Rehoming {
    pub(crate) fn new(cfg: RehomeConfig, phones: &[PhoneSpec]) -> Self {
        Rehoming {
            cfg,
            start: None,
            phones: phones
                .iter()
                .enumerate()
                .map(|(i, spec)| PhoneState {
                    spec: *spec,
                    stage: Stage::Waiting(PhoneAction::Followed),
                    deadline: None,
                    outcome: PhoneOutcome {
                        phone: PhoneId(u32::try_from(i).unwrap_or(u32::MAX)),
                        result: PhoneResult::Pending,
                        at_ms: None,
                    },
                })
                .collect(),
            nudge_q: BTreeSet::new(),
            reboot_q: BTreeSet::new(),
            waits: BTreeSet::new(),
            next_nudge: None,
            next_reboot: None,
            rebooting: 0,
            resolved: 0,
            registered: 0,
            early: Vec::new(),
            milestones_hit: [false; 3],
            out: VecDeque::new(),
            milestones: VecDeque::new(),
            person: VecDeque::new(),
        }
    }

    pub(crate) fn started(&self) -> bool {
        self.start.is_some()
    }

    /// Begin acting: each phone enters the ladder at its inventory method.
    pub(crate) fn start(&mut self, now: Instant) {
        if self.start.is_some() {
            return;
        }
        self.start = Some(now);
        for i in 0..self.phones.len() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let Some(p) = self.phones.get(i) else {
                continue;
            };
            match p.spec.method {
                PhoneMethod::FollowsAddress => {
                    self.wait(idx, PhoneAction::Followed, now + self.cfg.follow_deadline);
                }
                PhoneMethod::Nudge => self.enqueue_nudge(idx, now),
                PhoneMethod::Reboot => self.enqueue_reboot(idx, now),
                PhoneMethod::Person(reason) => {
                    self.resolve(idx, now, PhoneResult::NeedsPerson(reason))
                }
            }
        }
        for (idx, registered) in core::mem::take(&mut self.early) {
            if registered {
                self.registered(now, PhoneId(idx));
            } else {
                self.unchecked(now, PhoneId(idx));
            }
        }
        self.milestone_check();
    }

    fn wait(&mut self, idx: u32, action: PhoneAction, deadline: Instant) {
        if let Some(p) = self.phones.get_mut(idx as usize) {
            p.stage = Stage::Waiting(action);
            p.deadline = Some(deadline);
            self.waits.insert((deadline, idx));
        }
    }

    fn enqueue_nudge(&mut self, idx: u32, now: Instant) {
        if let Some(p) = self.phones.get_mut(idx as usize) {
            p.stage = Stage::QueuedNudge;
            if self.nudge_q.is_empty() {
                self.next_nudge = Some(self.next_nudge.map_or(now, |t| t.max(now)));
            }
            self.nudge_q.insert((p.spec.class, idx));
        }
    }

    fn enqueue_reboot(&mut self, idx: u32, now: Instant) {
        if let Some(p) = self.phones.get_mut(idx as usize) {
            p.stage = Stage::QueuedReboot;
            if self.reboot_q.is_empty() {
                self.next_reboot = Some(self.next_reboot.map_or(now, |t| t.max(now)));
            }
            self.reboot_q.insert((p.spec.class, idx));
        }
    }

    fn resolve(&mut self, idx: u32, now: Instant, result: PhoneResult) {
        let start = self.start.unwrap_or(now);
        if let Some(p) = self.phones.get_mut(idx as usize) {
            if p.stage == Stage::Resolved {
                return;
            }
            if let Some(d) = p.deadline.take() {
                self.waits.remove(&(d, idx));
            }
            match p.stage {
                Stage::QueuedNudge => {
                    self.nudge_q.remove(&(p.spec.class, idx));
                }
                Stage::QueuedReboot => {
                    self.reboot_q.remove(&(p.spec.class, idx));
                }
                Stage::Waiting(PhoneAction::Rebooted) => {
                    self.rebooting = self.rebooting.saturating_sub(1);
                }
                _ => {}
            }
            p.stage = Stage::Resolved;
            p.outcome.result = result;
            p.outcome.at_ms = Some(crate::types::ms(now.saturating_duration_since(start)));
            self.resolved += 1;
            match result {
                PhoneResult::Registered(_) => self.registered += 1,
                PhoneResult::NeedsPerson(r) => self.person.push_back((p.outcome.phone, r)),
                PhoneResult::Pending | PhoneResult::Unchecked(_) => {}
            }
        }
    }

    /// The registrar saw the phone register with this node.
    pub(crate) fn registered(&mut self, now: Instant, phone: PhoneId) -> bool {
        self.report(now, phone, true)
    }

    /// The driver carried out the phone's action (or announced the address
    /// it follows) and cannot check its registration.
    pub(crate) fn unchecked(&mut self, now: Instant, phone: PhoneId) -> bool {
        self.report(now, phone, false)
    }

    fn report(&mut self, now: Instant, phone: PhoneId, registered: bool) -> bool {
        let idx = phone.0;
        let Some(p) = self.phones.get(idx as usize) else {
            return false;
        };
        if self.start.is_none() {
            // Before acting (services still starting): remember it; a
            // registration outranks an unchecked report.
            match self.early.iter_mut().find(|(i, _)| *i == idx) {
                Some(e) => e.1 |= registered,
                None => self.early.push((idx, registered)),
            }
            return true;
        }
        let action = match p.stage {
            Stage::Resolved => return false,
            Stage::Waiting(a) => a,
            // Registered while still queued: it followed the address after all.
            Stage::QueuedNudge | Stage::QueuedReboot => PhoneAction::Followed,
        };
        let result = if registered {
            PhoneResult::Registered(action)
        } else {
            PhoneResult::Unchecked(action)
        };
        self.resolve(idx, now, result);
        self.milestone_check();
        true
    }

    /// A nudge or reboot command failed: escalate at once.
    pub(crate) fn action_failed(&mut self, now: Instant, phone: PhoneId) {
        if let Some(Stage::Waiting(a)) = self.phones.get(phone.0 as usize).map(|p| p.stage) {
            self.escalate(phone.0, a, now);
            self.milestone_check();
        }
    }

    fn escalate(&mut self, idx: u32, from: PhoneAction, now: Instant) {
        let Some(p) = self.phones.get_mut(idx as usize) else {
            return;
        };
        if let Some(d) = p.deadline.take() {
            self.waits.remove(&(d, idx));
        }
        let (can_nudge, can_reboot) = (p.spec.can_nudge, p.spec.can_reboot);
        match from {
            PhoneAction::Followed if can_nudge => self.enqueue_nudge(idx, now),
            PhoneAction::Followed | PhoneAction::Nudged if can_reboot => {
                self.enqueue_reboot(idx, now);
            }
            // After a reboot (or with nothing left to try) a person must look;
            // `resolve` frees the reboot slot.
            _ => self.resolve(
                idx,
                now,
                PhoneResult::NeedsPerson(PersonReason::NoRegistration),
            ),
        }
    }

    fn milestone_check(&mut self) {
        let n = self.phones.len().max(1) as u64;
        for (i, m) in MILESTONES.iter().enumerate() {
            if !self.milestones_hit[i] && u64::from(self.resolved) * 100 >= u64::from(*m) * n {
                self.milestones_hit[i] = true;
                self.milestones.push_back(*m);
            }
        }
    }

    /// Act on everything due at `now`.
    pub(crate) fn poll(&mut self, now: Instant) {
        if self.start.is_none() {
            return;
        }
        while let Some(&(t, idx)) = self.waits.first() {
            if t > now {
                break;
            }
            self.waits.remove(&(t, idx));
            if let Some(p) = self.phones.get_mut(idx as usize) {
                p.deadline = None;
                if let Stage::Waiting(a) = p.stage {
                    self.escalate(idx, a, now);
                }
            }
        }
        // Nudges: rate-limited, priority class first.
        while let Some(t) = self.next_nudge {
            if t > now {
                break;
            }
            let Some(&(class, idx)) = self.nudge_q.first() else {
                break;
            };
            self.nudge_q.remove(&(class, idx));
            self.out
                .push_back((PhoneId(idx), Command::NudgePhone(PhoneId(idx))));
            self.wait(idx, PhoneAction::Nudged, now + self.cfg.nudge_deadline);
            self.next_nudge = Some(t + self.cfg.nudge_interval);
        }
        // Reboots: paced, with a concurrency limit.
        while let Some(t) = self.next_reboot {
            if t > now || self.rebooting >= self.cfg.max_concurrent_reboots {
                break;
            }
            let Some(&(class, idx)) = self.reboot_q.first() else {
                break;
            };
            self.reboot_q.remove(&(class, idx));
            self.rebooting += 1;
            self.out
                .push_back((PhoneId(idx), Command::RebootPhone(PhoneId(idx))));
            self.wait(idx, PhoneAction::Rebooted, now + self.cfg.reboot_deadline);
            // Pacing counts from the later of the slot and now, so a freed
            // concurrency slot does not release a burst.
            self.next_reboot = Some(t.max(now) + self.cfg.reboot_interval);
        }
        self.milestone_check();
    }

    /// When `poll` next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.start?;
        let mut d = self.waits.first().map(|(t, _)| *t);
        if !self.nudge_q.is_empty() {
            d = min_opt(d, self.next_nudge);
        }
        if !self.reboot_q.is_empty() && self.rebooting < self.cfg.max_concurrent_reboots {
            d = min_opt(d, self.next_reboot);
        }
        d
    }

    pub(crate) fn done(&self) -> bool {
        self.start.is_some() && self.resolved as usize == self.phones.len()
    }

    /// The step's deadline passed: list everyone left for a person.
    pub(crate) fn give_up(&mut self, now: Instant) {
        for i in 0..self.phones.len() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            self.resolve(
                idx,
                now,
                PhoneResult::NeedsPerson(PersonReason::NoRegistration),
            );
        }
        self.milestone_check();
    }

    pub(crate) fn counts(&self) -> (u32, u32, u32) {
        (
            self.registered,
            self.resolved - self.registered,
            u32::try_from(self.phones.len()).unwrap_or(u32::MAX),
        )
    }

    pub(crate) fn outcomes(&self) -> Vec<PhoneOutcome> {
        self.phones.iter().map(|p| p.outcome).collect()
    }
}

pub(crate) fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn phones() -> Vec<PhoneSpec> {
        vec![
            PhoneSpec::new(PhoneMethod::FollowsAddress),
            PhoneSpec::new(PhoneMethod::Nudge),
            PhoneSpec::new(PhoneMethod::FollowsAddress),
        ]
    }

    fn result(r: &Rehoming, i: u32) -> PhoneResult {
        r.outcomes()[i as usize].result
    }

    #[test]
    fn an_unchecked_phone_is_resolved_but_not_registered() {
        let t0 = Instant::now();
        let mut r = Rehoming::new(RehomeConfig::default(), &phones());
        // Reported at the announcement, before acting: kept until the
        // re-homing starts; a registration outranks an unchecked report.
        assert!(r.unchecked(t0, PhoneId(0)));
        assert!(r.unchecked(t0, PhoneId(2)));
        assert!(r.registered(t0, PhoneId(2)));
        assert!(r.unchecked(t0, PhoneId(2)));
        r.start(t0);
        assert_eq!(result(&r, 0), PhoneResult::Unchecked(PhoneAction::Followed));
        assert_eq!(
            result(&r, 2),
            PhoneResult::Registered(PhoneAction::Followed)
        );
        // The nudge goes out; its command succeeded and nothing can check.
        r.poll(t0);
        assert_eq!(
            r.out.pop_front(),
            Some((PhoneId(1), Command::NudgePhone(PhoneId(1))))
        );
        let t1 = t0 + Duration::from_millis(10);
        assert!(r.unchecked(t1, PhoneId(1)));
        assert_eq!(result(&r, 1), PhoneResult::Unchecked(PhoneAction::Nudged));
        assert!(r.done());
        // Resolved once: a later report is not taken.
        assert!(!r.registered(t1, PhoneId(1)));
        assert_eq!(result(&r, 1), PhoneResult::Unchecked(PhoneAction::Nudged));
        let (registered, not_registered, total) = r.counts();
        assert_eq!((registered, not_registered, total), (1, 2, 3));
        // Every phone is resolved: the milestones are reached, no one is
        // listed for a person.
        assert_eq!(
            r.milestones.iter().copied().collect::<Vec<_>>(),
            [50, 95, 100]
        );
        assert!(r.person.is_empty());
        // An unchecked phone is not escalated: its deadline is gone.
        assert_eq!(r.next_deadline(), None);
    }
}
