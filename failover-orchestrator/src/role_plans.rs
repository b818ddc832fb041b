//! The plans that take and give up the Master role, built from the
//! configuration: takeover (and cold start), the lost role, the planned
//! hand-back, and a swap's hand-over part.

use std::time::Duration;

use crate::command::Command;
use crate::config::{Config, PhoneMethod};
use crate::plan::{FailurePolicy, PeerCondition, Plan, PlanKind, Step, StepAction};
use crate::types::{Role, ServiceId};
use crate::wire::PeerRequest;

fn command_step(config: &Config, c: Command) -> Step {
    Step::new(StepAction::Run(c)).timeout(config.timeouts.command)
}

/// Expected time to re-home the inventory (dry run).
pub(crate) fn expected_rehome(config: &Config) -> Duration {
    let r = &config.rehome;
    let mut nudges = 0u32;
    let mut reboots = 0u32;
    let mut follows = false;
    for p in &config.phones {
        match p.method {
            PhoneMethod::FollowsAddress => follows = true,
            PhoneMethod::Nudge => nudges += 1,
            PhoneMethod::Reboot => reboots += 1,
            PhoneMethod::Person(_) => {}
        }
    }
    let mut d = Duration::ZERO;
    if follows {
        d = d.max(Duration::from_secs(2));
    }
    if nudges > 0 {
        d = d.max(r.nudge_interval * (nudges - 1) + r.expected_nudge);
    }
    if reboots > 0 {
        d = d.max(r.reboot_interval * (reboots - 1) + r.expected_reboot);
    }
    d
}

/// Takeover (or cold start): claim the address first, finish or roll back
/// the sync round beside it, announce the address, start services in
/// dependency order, then re-home phones (failover only).
pub(crate) fn takeover(config: &Config, kind: PlanKind) -> Plan {
    let t = &config.timeouts;
    let mut p = Plan::new(kind);
    let claim = p.push(
        command_step(config, Command::ClaimAddress)
            .retries(2)
            .on_failure(FailurePolicy::StepDown)
            .expected(Duration::from_millis(20))
            .undo(StepAction::Run(Command::ReleaseAddress)),
    );
    let settle = p.push(
        Step::new(StepAction::Run(Command::FinishOrRollbackRound))
            .timeout(t.sync)
            .retries(1)
            .on_failure(FailurePolicy::ContinueDegraded)
            .expected(Duration::from_millis(50)),
    );
    p.push(
        command_step(config, Command::AnnounceAddress)
            .after(&[claim])
            .on_failure(FailurePolicy::ContinueDegraded)
            .expected(Duration::from_millis(5)),
    );
    let first_service = p.steps.len();
    let mut service_steps = Vec::with_capacity(config.services.len());
    for (i, s) in config.services.iter().enumerate() {
        let mut deps = vec![claim, settle];
        for d in &s.depends_on {
            // Validated: d < i, so the step exists.
            let idx = first_service + usize::from(d.0);
            deps.push(u16::try_from(idx).unwrap_or(0));
        }
        let sid = ServiceId(u16::try_from(i).unwrap_or(u16::MAX));
        let step = Step::new(StepAction::ServiceUp(sid))
            .after(&deps)
            .timeout(s.ready_timeout)
            .retries(s.retries)
            .on_failure(s.on_failure)
            .expected(s.expected_ready)
            .undo(StepAction::Run(Command::StopService(sid)));
        service_steps.push(p.push(step));
    }
    if kind == PlanKind::Takeover && !config.phones.is_empty() {
        let mut deps = vec![claim];
        deps.extend_from_slice(&service_steps);
        let rehome = expected_rehome(config);
        p.push(
            Step::new(StepAction::RehomePhones)
                .after(&deps)
                .timeout(rehome * 3 + config.rehome.reboot_deadline + config.rehome.follow_deadline)
                .on_failure(FailurePolicy::ContinueDegraded)
                .expected(rehome),
        );
    }
    p
}

/// Stop services in reverse dependency order. Each stop waits for the
/// stops of the services that depend on it. Returns the stop step indices.
fn stop_services(config: &Config, p: &mut Plan, base: &[u16]) -> Vec<u16> {
    let n = config.services.len();
    // stop_idx[i] = plan index of service i's stop step, filled from the end.
    let mut stop_idx = vec![0u16; n];
    let mut all = Vec::with_capacity(n);
    for i in (0..n).rev() {
        let mut deps = base.to_vec();
        for (j, s) in config.services.iter().enumerate().skip(i + 1) {
            if s.depends_on.iter().any(|d| usize::from(d.0) == i) {
                deps.push(stop_idx[j]);
            }
        }
        let sid = ServiceId(u16::try_from(i).unwrap_or(u16::MAX));
        let idx = p.push(
            command_step(config, Command::StopService(sid))
                .after(&deps)
                .retries(1)
                .on_failure(FailurePolicy::ContinueDegraded)
                .expected(Duration::from_millis(200)),
        );
        stop_idx[i] = idx;
        all.push(idx);
    }
    all
}

/// Planned hand-back: stop services in reverse order, release the address
/// last.
pub(crate) fn hand_back(config: &Config) -> Plan {
    let mut p = Plan::new(PlanKind::HandBack);
    let stops = stop_services(config, &mut p, &[]);
    p.push(
        command_step(config, Command::ReleaseAddress)
            .after(&stops)
            .retries(2)
            .on_failure(FailurePolicy::ContinueDegraded)
            .expected(Duration::from_millis(20)),
    );
    p
}

/// Lost the role: release the address at once, then stop services.
pub(crate) fn lost_role(config: &Config) -> Plan {
    let mut p = Plan::new(PlanKind::LostRole);
    let release = p.push(
        command_step(config, Command::ReleaseAddress)
            .retries(2)
            .on_failure(FailurePolicy::ContinueDegraded)
            .expected(Duration::from_millis(20)),
    );
    stop_services(config, &mut p, &[release]);
    p
}

/// Append the swap's hand-over part after `dep`: one-off sync on the
/// peer, arm it, stop services, release the address, release Mastership
/// with a lower priority, wait until the peer is Master. Returns the last
/// step.
pub(crate) fn swap_handover(config: &Config, p: &mut Plan, dep: Option<u16>) -> u16 {
    let t = &config.timeouts;
    let deps: Vec<u16> = dep.into_iter().collect();
    // After a restart this node must be a settled Master again before it
    // hands over (fails at once when the peer holds the role).
    let master = p.push(
        Step::new(StepAction::AwaitRole(Role::Master))
            .after(&deps)
            .timeout(t.await_peer)
            .expected(Duration::ZERO),
    );
    // Every hand-over step depends on the checks directly, so that a resume
    // from the journal re-runs them before the next hand-over step.
    let mut guards = deps.clone();
    guards.push(master);
    let with = |extra: &[u16]| -> Vec<u16> {
        let mut v = guards.clone();
        v.extend_from_slice(extra);
        v
    };
    let sync = p.push(
        Step::new(StepAction::AskPeer(PeerRequest::SyncNow { full: false }))
            .after(&guards)
            .timeout(t.sync)
            .retries(1)
            .expected(Duration::from_secs(2)),
    );
    let arm = p.push(
        Step::new(StepAction::AskPeer(PeerRequest::Arm {
            priority: config.armed_priority,
        }))
        .after(&with(&[sync]))
        .timeout(t.peer_request)
        .retries(1)
        .expected(Duration::from_millis(20)),
    );
    let stops = stop_services(config, p, &with(&[arm]));
    let mut last = stops.clone();
    last.push(arm);
    let release_addr = p.push(
        command_step(config, Command::ReleaseAddress)
            .after(&with(&last))
            .retries(2)
            .on_failure(FailurePolicy::ContinueDegraded)
            .expected(Duration::from_millis(20)),
    );
    let release = p.push(
        command_step(
            config,
            Command::Release {
                new_priority: Some(config.released_priority),
            },
        )
        .after(&with(&[release_addr]))
        .retries(2)
        .expected(Duration::from_millis(5)),
    );
    p.push(
        Step::new(StepAction::AwaitPeer(PeerCondition {
            role: Some(Role::Master),
            ..PeerCondition::default()
        }))
        .after(&[release])
        .timeout(t.peer_request)
        .expected(Duration::from_millis(50)),
    )
}
