//! The pair's operator behaviours, each on the whole pair in simulation:
//! a swap with a Passive Backup, swaps in a row, both units started
//! together, redundancy off and on at run time, and the rules behind them
//! (who may switch redundancy off, which takeover re-homes phones, the mode
//! a Master keeps, a swap whose Master dies midway).

mod pair_world;

use std::time::Duration;

use failover_orchestrator::pair::LinkFailure;
use failover_orchestrator::{
    BackupMode, OperatorRequest, PreflightError, ProcedureOutcome, Redundancy, Role,
};
use pair_world::{Ev, World, WorldConfig, passive};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Two nodes up, node 0 (the higher priority) booted first: it is Master,
/// node 1 an Active Backup that has synced once.
fn settled_pair(seed: u64) -> World {
    let mut w = World::new(WorldConfig::new(seed));
    w.at(Duration::ZERO, Ev::Boot(0));
    w.at(secs(3), Ev::Boot(1));
    w.run_until(secs(30));
    assert_eq!(w.masters(), vec![0], "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
    w
}

fn role(w: &World, i: usize) -> Role {
    w.nodes[i].pair.as_ref().unwrap().orchestrator().role()
}

#[test]
fn swap_with_a_passive_backup_keeps_the_passive_mode_and_the_last_write() {
    let mut w = settled_pair(1);
    let id = w.request(1, passive());
    assert!(id.is_ok(), "{id:?}");
    w.run_until(w.now + secs(5));
    assert_eq!(w.mode(1), BackupMode::Passive);
    // A voicemail left just before the swap: a Passive Backup has not
    // synced since it went Passive, so the swap's own round must bring it.
    w.write(0, "voicemail/last.wav", b"left just before the swap");
    let swap = w.request(0, OperatorRequest::Swap).expect("swap accepted");
    w.run_until(w.now + secs(60));
    assert_eq!(
        w.outcome(0, swap),
        Some(ProcedureOutcome::Completed),
        "{}",
        w.report()
    );
    assert_eq!(w.masters(), vec![1]);
    assert_eq!(role(&w, 1), Role::Master);
    assert_eq!(role(&w, 0), Role::Backup);
    // Manual §8: the old Master returns as Backup in the mode the Backup had.
    assert_eq!(w.mode(0), BackupMode::Passive);
    assert_eq!(
        w.read(1, "voicemail/last.wav").as_deref(),
        Some(&b"left just before the swap"[..])
    );
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn five_swaps_in_a_row_all_complete() {
    let mut w = settled_pair(2);
    for k in 0..5u64 {
        let master = w.masters()[0];
        w.write(master, &format!("voicemail/before-swap-{k}.wav"), b"x");
        let swap = w
            .request(master, OperatorRequest::Swap)
            .unwrap_or_else(|e| panic!("swap {k} refused on node {master}: {e}\n{}", w.report()));
        w.run_until(w.now + secs(60));
        assert_eq!(
            w.outcome(master, swap),
            Some(ProcedureOutcome::Completed),
            "swap {k}\n{}",
            w.report()
        );
        assert_eq!(w.masters(), vec![1 - master], "swap {k}");
        assert!(
            w.read(1 - master, &format!("voicemail/before-swap-{k}.wav"))
                .is_some()
        );
    }
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn units_started_together_sync_within_one_interval() {
    let mut cfg = WorldConfig::new(3);
    // Node 0 (which has the data) wins the election; node 1's first
    // request goes to it while it is still a replica itself.
    cfg.priorities = [200, 100];
    let interval = cfg.sync_interval;
    let mut w = World::new(cfg);
    w.at(Duration::ZERO, Ev::Boot(0));
    w.at(Duration::ZERO, Ev::Boot(1));
    w.run_until(secs(5));
    let masters = w.masters();
    assert_eq!(masters.len(), 1, "{}", w.report());
    let m = masters[0];
    w.write(m, "etc/after-boot.conf", b"written by the first Master");
    // Within one sync interval and two seconds of the election, the
    // Backup holds the Master's data.
    w.run_until(secs(5) + interval + secs(2));
    assert_eq!(w.tree(1 - m), w.tree(m), "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn redundancy_off_sends_no_vrrp_and_can_be_switched_at_run_time() {
    let mut w = World::new(WorldConfig::new(4));
    w.nodes[0].persisted.redundancy = Redundancy::Disabled;
    w.at(Duration::ZERO, Ev::Boot(0));
    w.run_until(secs(20));
    assert_eq!(w.vrrp_sent[0], 0, "a standalone unit must not advertise");
    let pair = w.nodes[0].pair.as_ref().unwrap();
    assert!(pair.router().is_none());
    assert_eq!(role(&w, 0), Role::Master);
    assert_eq!(
        pair.orchestrator().status(w.base + w.now).redundancy,
        Redundancy::Disabled
    );
    assert!(
        w.nodes[0].services.iter().all(Option::is_some),
        "services run standalone"
    );
    assert!(w.nodes[0].holds_vip);

    // Switched on at run time: the election starts, as Master, and the
    // value is persisted for the next boot.
    let on = w
        .request(0, OperatorRequest::SetRedundancy(Redundancy::Enabled))
        .unwrap();
    w.run_until(w.now + secs(5));
    assert_eq!(w.outcome(0, on), Some(ProcedureOutcome::Completed));
    assert_eq!(w.redundancy(0), Redundancy::Enabled);
    assert!(w.vrrp_sent[0] > 0);
    assert_eq!(w.masters(), vec![0]);
    assert!(
        w.nodes[0].services.iter().all(Option::is_some),
        "no service blip on the way"
    );

    // With no peer, off again is allowed and silences it.
    let off = w
        .request(0, OperatorRequest::SetRedundancy(Redundancy::Disabled))
        .unwrap();
    w.run_until(w.now + secs(2));
    assert_eq!(w.outcome(0, off), Some(ProcedureOutcome::Completed));
    let sent = w.vrrp_sent[0];
    w.run_until(w.now + secs(10));
    assert_eq!(w.vrrp_sent[0], sent);
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn redundancy_off_is_refused_where_the_address_would_be_on_both() {
    let mut w = settled_pair(5);
    // On the Backup, whose peer is an up Master.
    let e = w.request(1, OperatorRequest::SetRedundancy(Redundancy::Disabled));
    assert_eq!(e, Err(PreflightError::PeerWouldServeToo(Role::Master)));
    // On the Master, whose Active Backup would take over.
    let e = w.request(0, OperatorRequest::SetRedundancy(Redundancy::Disabled));
    assert_eq!(e, Err(PreflightError::PeerWouldServeToo(Role::Backup)));
    // A Passive Backup does not take over: then the Master may leave.
    w.request(1, passive()).unwrap();
    w.run_until(w.now + secs(3));
    assert!(
        w.request(0, OperatorRequest::SetRedundancy(Redundancy::Disabled))
            .is_ok()
    );
    w.run_until(w.now + secs(20));
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn a_takeover_rehomes_phones_after_a_master_was_heard_even_without_the_peer_link() {
    let mut w = World::new(WorldConfig::new(6));
    // The peer link never comes up.
    w.at(
        Duration::ZERO,
        Ev::Partition {
            lan: false,
            link: true,
        },
    );
    w.at(Duration::ZERO, Ev::Boot(0));
    w.at(secs(3), Ev::Boot(1));
    w.run_until(secs(20));
    assert_eq!(w.masters(), vec![0]);
    assert!(!w.nodes[1].pair.as_ref().unwrap().link_up());
    w.at(w.now, Ev::Crash(0));
    w.run_until(w.now + secs(10));
    assert_eq!(w.masters(), vec![1]);
    assert_eq!(
        w.takeovers[1],
        1,
        "a takeover, not a cold start\n{}",
        w.report()
    );
}

#[test]
fn a_master_that_restarts_beside_a_passive_backup_takes_the_role_again() {
    let mut w = settled_pair(7);
    w.request(1, passive()).unwrap();
    w.run_until(w.now + secs(3));
    // A swap makes the Passive Backup Master; the old Master returns
    // Passive.
    let swap = w.request(0, OperatorRequest::Swap).unwrap();
    w.run_until(w.now + secs(60));
    assert_eq!(
        w.outcome(0, swap),
        Some(ProcedureOutcome::Completed),
        "{}",
        w.report()
    );
    assert_eq!(w.masters(), vec![1]);
    // The new Master is not Passive any more: if it restarts, it comes
    // back able to take the role, not as a second Passive Backup.
    assert_eq!(w.mode(1), BackupMode::Active);
    w.at(w.now, Ev::Crash(1));
    w.at(w.now + secs(5), Ev::Boot(1));
    w.run_until(w.now + secs(30));
    assert_eq!(w.masters(), vec![1], "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
}

/// A Master loses power beside a Passive Backup, which never takes over,
/// and comes back: it is Master again with its tree as it was, the writes
/// its peer had not yet received included. A unit that boots runs no sync
/// session until it knows of a Master; opening one as a replica at once
/// would have moved those writes into quarantine.
#[test]
fn a_master_that_loses_power_beside_a_passive_backup_keeps_its_unsynced_writes() {
    let mut w = settled_pair(8);
    w.request(1, passive()).unwrap();
    w.run_until(w.now + secs(3));
    w.write(0, "voicemail/unsynced.wav", b"message");
    w.at(w.now, Ev::Crash(0));
    w.at(w.now + secs(5), Ev::Boot(0));
    w.run_until(w.now + secs(30));
    assert_eq!(w.masters(), vec![0], "{}", w.report());
    assert_eq!(
        w.read(0, "voicemail/unsynced.wav").as_deref(),
        Some(&b"message"[..]),
        "{}",
        w.report()
    );
    assert!(
        !w.log.iter().any(|l| l.contains("quarantined: Some")),
        "{}",
        w.report()
    );
    assert!(w.violations.is_empty(), "{}", w.report());
}

/// The VRRP link fails and the peer link stays up: for 30 s the address
/// stays on node 0, node 1's takeovers held back. Then node 0 dies for
/// real: its beacons stop and node 1 takes the address within `takeover`.
fn vouched_through_a_lan_cut(w: &mut World, takeover: Duration) {
    w.at(
        w.now,
        Ev::Partition {
            lan: true,
            link: false,
        },
    );
    w.run_until(w.now + secs(30));
    assert_eq!(role(w, 0), Role::Master);
    assert_eq!(role(w, 1), Role::Backup);
    assert!(w.nodes[0].holds_vip && !w.nodes[1].holds_vip);
    assert!(w.nodes[1].pair.as_ref().unwrap().stats().takeovers_deferred > 0);
    w.at(w.now, Ev::Crash(0));
    w.run_until(w.now + takeover);
    assert!(w.nodes[1].holds_vip, "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn lost_advertisements_do_not_move_the_address_while_the_peer_link_vouches() {
    let mut w = settled_pair(8);
    // After the crash, within a Master_Down_Interval of the last beacon.
    vouched_through_a_lan_cut(&mut w, secs(5));
}

/// The same on a slow peer link (300 ms each way, a 600 ms round trip,
/// longer than the 100 ms a probe waits on a fast one): the Backup's
/// probes wait for two measured round trips, so the Master's answers
/// still hold the address where it is.
#[test]
fn a_slow_peer_link_still_vouches_for_the_master() {
    let mut w = settled_pair(10);
    w.at(w.now, Ev::SetLinkDelay(Duration::from_millis(300)));
    // The round trip is measured every few seconds.
    w.run_until(w.now + secs(12));
    let rtt = w.nodes[1].pair.as_ref().unwrap().link_rtt().unwrap();
    assert!(rtt >= Duration::from_millis(600), "{rtt:?}");
    vouched_through_a_lan_cut(&mut w, secs(8));
}

#[test]
fn a_master_that_dies_in_the_middle_of_a_swap_leaves_the_passive_backup_serving() {
    let mut w = settled_pair(9);
    assert!(w.request(1, passive()).is_ok());
    w.run_until(w.now + secs(5));
    assert_eq!(w.mode(1), BackupMode::Passive);
    w.request(0, OperatorRequest::Swap).expect("swap accepted");
    // Up to the moment the Backup is armed for the hand-over...
    let armed = |w: &World| {
        w.nodes[1]
            .pair
            .as_ref()
            .and_then(|p| p.router())
            .is_some_and(vrrp_fsm::VirtualRouter::is_armed)
    };
    let limit = w.now + secs(60);
    while !armed(&w) && w.now < limit {
        w.run_until(w.now + Duration::from_millis(1));
    }
    assert!(armed(&w), "the Backup was never armed\n{}", w.report());
    // ...then the Master dies before it releases, and stays down.
    let crash_at = w.now;
    w.at(crash_at, Ev::Crash(0));
    w.run_until(crash_at + secs(30));
    // The armed Passive Backup took over: the pair is not left without a
    // Master, and no invariant broke on the way.
    assert_eq!(w.masters(), vec![1], "{}", w.report());
    assert_eq!(role(&w, 1), Role::Master);
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn a_swap_whose_backup_took_over_meanwhile_ends_soon_after_the_pair_hears_again() {
    let mut w = settled_pair(10);
    let swap = w.request(0, OperatorRequest::Swap).expect("swap accepted");
    // The Backup hears nothing from the Master for a moment (a stalled
    // node): no advertisement, the peer link's bytes held. Long enough
    // for it to take over under a newer term, not for the link to drop.
    let cut = w.now;
    w.at(
        cut,
        Ev::Partition {
            lan: true,
            link: true,
        },
    );
    w.run_until(cut + Duration::from_millis(3_300));
    assert_eq!(role(&w, 1), Role::Master, "{}", w.report());
    assert!(
        w.nodes[0].pair.as_ref().unwrap().link_up(),
        "{}",
        w.report()
    );
    let heal = w.now;
    w.at(heal, Ev::Heal);
    // The swap's request reaches the new Master under the older term. It
    // is answered, refused, so the swap ends now rather than after its
    // step's timeout (a minute or more).
    w.run_until(heal + secs(10));
    assert!(
        w.outcome(0, swap).is_some(),
        "the swap still runs 10 s after the heal\n{}",
        w.report()
    );
    assert_eq!(w.masters().len(), 1, "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
}

#[test]
fn a_wrong_key_on_the_peer_link_is_reported_as_a_link_failure() {
    let mut cfg = WorldConfig::new(9);
    cfg.link_secrets[1] = b"another key";
    let mut w = World::new(cfg);
    // Node 1 listens before node 0, the dialling end, starts.
    w.at(Duration::ZERO, Ev::Boot(1));
    w.at(secs(1), Ev::Boot(0));
    w.run_until(secs(10));
    let failures = |i: usize| -> Vec<LinkFailure> {
        w.link_failures
            .iter()
            .filter(|f| f.1 == i)
            .map(|f| f.2)
            .collect()
    };
    // The listening end finds the dialler's proof wrong and refuses it
    // (having said nothing that depends on its key); the dialler reads the
    // refusal. Both name the wrong key; the dials go on after the backoff.
    let dialler = failures(0);
    assert!(dialler.len() >= 3, "{dialler:?}\n{}", w.report());
    assert!(
        dialler.iter().all(|f| *f == LinkFailure::WrongKey),
        "{dialler:?}"
    );
    // The listening end reports a caller's failures at most once a second
    // per address and counts the rest (the dialler retries faster).
    let responder = failures(1);
    let counted = w.nodes[1]
        .pair
        .as_ref()
        .unwrap()
        .link_stats()
        .failures_suppressed;
    assert!(
        counted > 0 && responder.len() < dialler.len(),
        "{responder:?}"
    );
    assert_eq!(
        responder.len() as u64 + counted,
        dialler.len() as u64,
        "{responder:?}"
    );
    assert!(
        responder.iter().all(|f| *f == LinkFailure::WrongKey),
        "{responder:?}"
    );
    assert!(w.nodes.iter().all(|n| !n.pair.as_ref().unwrap().link_up()));
    assert_eq!(
        w.nodes[0].pair.as_ref().unwrap().link_stats().established,
        0
    );
}

/// The mass-deletion guard on a pair: a round that would lose most of the
/// Backup's content is refused, shows on the Backup's engine
/// (`Pair::sync_refused`) with the figures, and goes through once the
/// operator confirms; a confirmation with nothing refused is turned down.
#[test]
fn a_refused_round_waits_for_the_operator_and_a_confirmation_lets_it_through() {
    let mut w = settled_pair(21);
    for k in 0..10u8 {
        w.write(0, &format!("prompts/p{k}.wav"), &[k; 1000]);
    }
    w.run_until(w.now + w.cfg.sync_interval + secs(2));
    assert_eq!(w.tree(1), w.tree(0), "{}", w.report());
    let refused = |w: &World| w.nodes[1].pair.as_ref().unwrap().sync_refused();
    assert_eq!(refused(&w), None);
    // Nothing to confirm: turned down, nothing changes.
    assert!(!w.confirm_deletions(1));

    // Six of the ten prompts deleted on the Master: 6,000 bytes, more than
    // half of the Backup's content.
    let content = |w: &World, i: usize| -> u64 {
        w.tree(i)
            .values()
            .map(|v| match v {
                sync_delta::mem::View::File(data, ..) => data.len() as u64,
                _ => 0,
            })
            .sum()
    };
    let total = content(&w, 1);
    assert!(total < 12_000, "the test's prompts are most of the tree");
    for k in 0..6u8 {
        w.nodes[0].store.remove_tree(&format!("prompts/p{k}.wav"));
    }
    w.nodes[0].store.sync_all();
    let kept = w.tree(1);
    w.run_until(w.now + w.cfg.sync_interval * 2 + secs(2));
    assert_eq!(
        refused(&w),
        Some(sync_delta::Refusal::MassDeletion {
            losing: 6000,
            lost: 0,
            total,
            limit: total / 2,
        }),
        "{}",
        w.report()
    );
    assert_eq!(w.tree(1), kept, "a refused round changes nothing");

    assert!(w.confirm_deletions(1));
    w.run_until(w.now + secs(5));
    assert_eq!(refused(&w), None, "{}", w.report());
    assert_eq!(w.tree(1), w.tree(0), "{}", w.report());
    assert!(w.violations.is_empty(), "{}", w.report());
}
