//! Building and running a takeover plan for 50 services and 1,000 phones to
//! completion in simulated time (a driver model answers every command after
//! a simulated delay; time jumps to the next deadline).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use failover_orchestrator::{
    Command, CommandId, CommandOutcome, Config, Event, Identity, Orchestrator, PersistentState,
    PhoneId, PhoneMethod, PhoneSpec, PlanKind, ProtocolVersion, Role, RoleChange, RoleChangeReason,
    ServiceId, ServiceSpec,
};

const SERVICES: usize = 50;
const PHONES: usize = 1000;

fn config() -> Config {
    let id = Identity {
        node_id: "06-5.1.31-005400".into(),
        firmware: "5.1.30".into(),
        language_pack: "en".into(),
        licences: vec![],
        protocol: ProtocolVersion::CURRENT,
    };
    let phones = (0..PHONES)
        .map(|i| {
            let method = match i % 50 {
                0..30 => PhoneMethod::FollowsAddress,
                30..45 => PhoneMethod::Nudge,
                45..49 => PhoneMethod::Reboot,
                _ => PhoneMethod::Person(failover_orchestrator::PersonReason::UnsupportedModel),
            };
            PhoneSpec::new(method).class((i % 3) as u8)
        })
        .collect();
    let mut b = Config::builder(id).phones(phones);
    for i in 0..SERVICES {
        // Five layers of ten; each service depends on two of the layer below.
        let deps: Vec<ServiceId> = if i < 10 {
            vec![]
        } else {
            let base = (i / 10 - 1) * 10;
            vec![
                ServiceId((base + i % 10) as u16),
                ServiceId((base + (i + 3) % 10) as u16),
            ]
        };
        b = b.service(ServiceSpec::new(format!("svc{i}")).after(&deps));
    }
    b.build().expect("valid bench config")
}

enum Due {
    Result(CommandId, CommandOutcome),
    Registered(PhoneId),
}

/// Runs one takeover to completion; returns simulated ms until done.
fn takeover(config: &Config) -> u64 {
    let t0 = Instant::now();
    let mut o = Orchestrator::new(
        config.clone(),
        PersistentState::default(),
        t0,
        SystemTime::UNIX_EPOCH,
    );
    o.handle_role_change(
        t0,
        RoleChange {
            from: Role::Initialize,
            to: Role::Backup,
            reason: RoleChangeReason::Startup,
        },
    );
    o.handle_role_change(
        t0,
        RoleChange {
            from: Role::Backup,
            to: Role::Master,
            reason: RoleChangeReason::PeerReleased,
        },
    );
    let mut queue: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut due: Vec<Option<Due>> = Vec::new();
    let mut started = vec![None; SERVICES];
    let mut follow_scheduled = false;
    let mut now = t0;
    fn push(
        queue: &mut BinaryHeap<Reverse<(Instant, u64)>>,
        due: &mut Vec<Option<Due>>,
        at: Instant,
        d: Due,
    ) {
        due.push(Some(d));
        queue.push(Reverse((at, (due.len() - 1) as u64)));
    }
    loop {
        while let Some(c) = o.poll_command() {
            let ms = |n| now + Duration::from_millis(n);
            match c.command {
                Command::StartService(s) => {
                    started[usize::from(s.0)] = Some(now);
                    push(
                        &mut queue,
                        &mut due,
                        ms(5),
                        Due::Result(c.id, CommandOutcome::Done),
                    );
                }
                Command::CheckService(s) => {
                    let ready = started[usize::from(s.0)]
                        .is_some_and(|t| now >= t + Duration::from_millis(100));
                    let out = if ready {
                        CommandOutcome::Done
                    } else {
                        CommandOutcome::NotReady
                    };
                    push(&mut queue, &mut due, ms(1), Due::Result(c.id, out));
                    if ready && usize::from(s.0) == SERVICES - 1 && !follow_scheduled {
                        follow_scheduled = true;
                        for p in (0..PHONES).filter(|p| p % 50 < 30) {
                            let at = ms(200 + (p as u64 * 37) % 2800);
                            push(&mut queue, &mut due, at, Due::Registered(PhoneId(p as u32)));
                        }
                    }
                }
                Command::NudgePhone(p) => {
                    push(
                        &mut queue,
                        &mut due,
                        ms(1),
                        Due::Result(c.id, CommandOutcome::Done),
                    );
                    push(&mut queue, &mut due, ms(500), Due::Registered(p));
                }
                Command::RebootPhone(p) => {
                    push(
                        &mut queue,
                        &mut due,
                        ms(1),
                        Due::Result(c.id, CommandOutcome::Done),
                    );
                    push(&mut queue, &mut due, ms(20_000), Due::Registered(p));
                }
                _ => push(
                    &mut queue,
                    &mut due,
                    ms(1),
                    Due::Result(c.id, CommandOutcome::Done),
                ),
            }
        }
        while o.poll_transmit().is_some() {}
        while o.poll_journal().is_some() {}
        while let Some(e) = o.poll_event() {
            if let Event::PlanFinished {
                kind: PlanKind::Takeover,
                ..
            } = e
            {
                return (now - t0).as_millis() as u64;
            }
        }
        let next_due = queue.peek().map(|Reverse((t, _))| *t);
        let next = match (next_due, o.poll_timeout()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("takeover stalled"),
        };
        now = now.max(next);
        while let Some(Reverse((t, i))) = queue.peek().copied() {
            if t > now {
                break;
            }
            queue.pop();
            match due[i as usize].take() {
                Some(Due::Result(id, out)) => o.handle_command_result(now, id, out),
                Some(Due::Registered(p)) => o.handle_phone_registered(now, p),
                None => {}
            }
        }
        o.handle_timeout(now);
    }
}

fn bench(c: &mut Criterion) {
    let config = config();
    let simulated = takeover(&config);
    assert!(
        simulated < 120_000,
        "takeover took {simulated} ms simulated"
    );
    c.bench_function("takeover_50_services_1000_phones", |b| {
        b.iter(|| black_box(takeover(black_box(&config))));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
