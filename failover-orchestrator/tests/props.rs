//! Properties: random step graphs run every step once in dependency order;
//! random command results never leave a plan hanging without a deadline;
//! the wire decoder never panics and round-trips.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::{
    Command, CommandId, CommandOutcome, Config, Epoch, Event, FailurePolicy, Identity,
    Orchestrator, PeerBody, PeerMessage, PeerRequest, PeerStatusReport, PersistentState, Plan,
    PlanKind, PlanOutcome, ProtocolVersion, Redundancy, Role, Step, StepAction, wire,
};
use proptest::prelude::*;

fn orch(t0: Instant) -> Orchestrator {
    let id = Identity {
        node_id: "06-5.1.30-005400".into(),
        firmware: "5.1.30".into(),
        language_pack: "en".into(),
        licences: vec![],
        protocol: ProtocolVersion::CURRENT,
    };
    // Standalone keeps heartbeats out of the way; no services, no phones.
    let state = PersistentState {
        redundancy: Redundancy::Disabled,
        ..PersistentState::default()
    };
    let mut o = Orchestrator::new(
        Config::builder(id).build().unwrap(),
        state,
        t0,
        SystemTime::UNIX_EPOCH,
    );
    // Let the standalone cold start and the startup check finish.
    for _ in 0..10 {
        while let Some(c) = o.poll_command() {
            o.handle_command_result(t0, c.id, CommandOutcome::Done);
        }
    }
    while o.poll_event().is_some() {}
    assert!(!o.busy());
    o
}

/// A DAG as deps lists: step i depends on a subset of 0..i.
fn dag() -> impl Strategy<Value = Vec<Vec<u16>>> {
    (1usize..16).prop_flat_map(|n| {
        (0..n)
            .map(|i| proptest::collection::vec(any::<bool>(), i))
            .collect::<Vec<_>>()
            .prop_map(|bits| {
                bits.into_iter()
                    .map(|b| {
                        b.into_iter()
                            .enumerate()
                            .filter(|(_, x)| *x)
                            .map(|(j, _)| j as u16)
                            .collect()
                    })
                    .collect()
            })
    })
}

fn custom_index(c: &Command) -> usize {
    match c {
        Command::Custom(i) => *i as usize,
        other => panic!("unexpected command {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_step_runs_once_in_dependency_order(deps in dag(), order in any::<u64>()) {
        let t0 = Instant::now();
        let mut o = orch(t0);
        let mut plan = Plan::new(PlanKind::Custom);
        for (i, d) in deps.iter().enumerate() {
            plan.add(Step::new(StepAction::Run(Command::Custom(i as u32))).after(d)).unwrap();
        }
        let preview = plan.preview();
        prop_assert_eq!(preview.steps.len(), deps.len());
        let id = o.run_plan(t0, plan);
        let mut issued = vec![0u32; deps.len()];
        let mut done = vec![false; deps.len()];
        let mut outstanding: Vec<(usize, CommandId)> = Vec::new();
        let mut seed = order;
        let mut now = t0;
        loop {
            while let Some(c) = o.poll_command() {
                let i = custom_index(&c.command);
                issued[i] += 1;
                for d in &deps[i] {
                    prop_assert!(done[usize::from(*d)], "step {i} issued before dep {d} finished");
                }
                outstanding.push((i, c.id));
            }
            if outstanding.is_empty() {
                break;
            }
            // Answer one outstanding command, picked pseudo-randomly.
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = (seed >> 33) as usize % outstanding.len();
            let (i, cid) = outstanding.swap_remove(k);
            now += Duration::from_millis(1);
            done[i] = true;
            o.handle_command_result(now, cid, CommandOutcome::Done);
        }
        prop_assert!(issued.iter().all(|n| *n == 1), "{issued:?}");
        let finished = std::iter::from_fn(|| o.poll_event()).any(|e| {
            e == Event::PlanFinished { plan: id, kind: PlanKind::Custom, outcome: PlanOutcome::Completed }
        });
        prop_assert!(finished);
        prop_assert!(!o.busy());
    }

    #[test]
    fn random_results_never_leave_a_plan_hanging(
        deps in dag(),
        knobs in proptest::collection::vec((0u8..3, 0u8..3, 1u64..20), 16),
        answers in proptest::collection::vec((0u8..5, 0u64..3000), 64),
    ) {
        let t0 = Instant::now();
        let mut o = orch(t0);
        let mut plan = Plan::new(PlanKind::Custom);
        for (i, d) in deps.iter().enumerate() {
            let (retries, policy, timeout_s) = knobs[i];
            let policy = match policy {
                0 => FailurePolicy::AbortAndRollBack,
                1 => FailurePolicy::ContinueDegraded,
                _ => FailurePolicy::StepDown,
            };
            let step = Step::new(StepAction::Run(Command::Custom(i as u32)))
                .after(d)
                .retries(retries)
                .on_failure(policy)
                .timeout(Duration::from_secs(timeout_s))
                .undo(StepAction::Run(Command::Custom(1000 + i as u32)));
            plan.add(step).unwrap();
        }
        o.run_plan(t0, plan);
        let mut now = t0;
        let mut pending: BTreeMap<Instant, Vec<(CommandId, CommandOutcome)>> = BTreeMap::new();
        let mut a = 0usize;
        let limit = t0 + Duration::from_secs(3600);
        while o.busy() {
            while let Some(c) = o.poll_command() {
                let (kind, delay) = answers[a % answers.len()];
                a += 1;
                let outcome = match kind {
                    0 | 1 => Some(CommandOutcome::Done),
                    2 => Some(CommandOutcome::Failed { code: 7 }),
                    3 => Some(CommandOutcome::NotReady),
                    _ => None, // never answered
                };
                if let Some(out) = outcome {
                    pending.entry(now + Duration::from_millis(delay)).or_default().push((c.id, out));
                }
            }
            while o.poll_event().is_some() {}
            // The property: a running plan always has a deadline.
            let deadline = o.poll_timeout();
            prop_assert!(deadline.is_some(), "busy without a deadline");
            let next_answer = pending.keys().next().copied();
            let next = match (deadline, next_answer) {
                (Some(d), Some(n)) => d.min(n),
                (Some(d), None) => d,
                (None, Some(n)) => n,
                (None, None) => unreachable!(),
            };
            prop_assert!(next <= limit, "plan still running after an hour");
            now = now.max(next);
            if let Some(batch) = pending.remove(&next) {
                for (id, out) in batch {
                    o.handle_command_result(now, id, out);
                }
            }
            o.handle_timeout(now);
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = wire::decode(&bytes);
        let mut v = vec![wire::WIRE_VERSION];
        v.extend_from_slice(&bytes);
        if let Ok(m) = wire::decode(&v) {
            let mut again = Vec::new();
            wire::encode(&m, &mut again).unwrap();
            prop_assert_eq!(wire::decode(&again).unwrap(), m);
        }
    }

    #[test]
    fn messages_round_trip(term in any::<u64>(), node in any::<u64>(), id in any::<u32>(), generation in proptest::option::of(any::<u64>()), prio in any::<u8>(), fw in "[a-z0-9.]{0,40}") {
        let epoch = Epoch { term, node };
        let bodies = vec![
            PeerBody::Status(PeerStatusReport {
                role: Role::Backup,
                mode: failover_orchestrator::BackupMode::Passive,
                redundancy: Redundancy::Enabled,
                sync_generation: generation,
                ready: true,
                busy: false,
            }),
            PeerBody::Request { id, request: PeerRequest::Arm { priority: prio } },
            PeerBody::Request { id, request: PeerRequest::Upgrade { firmware: fw.clone(), language_pack: Some(fw.clone()) } },
            PeerBody::Reply { id, outcome: failover_orchestrator::ReplyOutcome::Refused },
        ];
        for body in bodies {
            let m = PeerMessage { epoch, body };
            let mut buf = Vec::new();
            wire::encode(&m, &mut buf).unwrap();
            prop_assert_eq!(wire::decode(&buf).unwrap(), m);
            for cut in 0..buf.len() {
                prop_assert!(wire::decode(&buf[..cut]).is_err());
            }
        }
    }
}
