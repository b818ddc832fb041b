//! Configuration and plan validation, previews, and the engine's refusal of
//! stale or malformed peer input.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use failover_orchestrator::{
    Command, Config, ConfigError, Epoch, Identity, Orchestrator, PeerBody, PeerMessage,
    PeerRequest, PersistentState, Plan, PlanError, PlanKind, ProtocolVersion, ReplyOutcome,
    ServiceId, ServiceSpec, Step, StepAction, Timeouts,
};

fn id(node: &str) -> Identity {
    Identity {
        node_id: node.into(),
        firmware: "5.1.30".into(),
        language_pack: "en".into(),
        licences: vec![],
        protocol: ProtocolVersion::CURRENT,
    }
}

#[test]
fn config_rejects_bad_values() {
    assert_eq!(
        Config::builder(id("")).build(),
        Err(ConfigError::EmptyNodeId)
    );
    let forward = Config::builder(id("a"))
        .service(ServiceSpec::new("x").after(&[ServiceId(0)]))
        .build();
    assert_eq!(
        forward,
        Err(ConfigError::ServiceOrder {
            service: 0,
            depends_on: 0
        })
    );
    let long = Config::builder(id("a"))
        .timeouts(Timeouts {
            upgrade: Duration::from_secs(u64::MAX / 2),
            ..Timeouts::default()
        })
        .build();
    assert_eq!(long, Err(ConfigError::TooLong));
    assert!(matches!(
        Config::builder(id("a")).swap_priorities(50, 60).build(),
        Err(ConfigError::SwapPriorities { .. })
    ));
    assert!(matches!(
        Config::builder(id("a"))
            .heartbeat(Duration::from_secs(2), Duration::from_secs(1))
            .build(),
        Err(ConfigError::ZeroDuration(_))
    ));
    let huge = Identity {
        firmware: "x".repeat(300),
        ..id("a")
    };
    assert_eq!(
        Config::builder(huge).build(),
        Err(ConfigError::IdentityTooLarge)
    );
}

#[test]
fn plans_reject_bad_steps_and_preview_the_critical_path() {
    let mut p = Plan::new(PlanKind::Custom);
    let run = |n| StepAction::Run(Command::Custom(n));
    assert_eq!(
        p.add(Step::new(run(0)).after(&[0])),
        Err(PlanError::Dependency { step: 0, dep: 0 })
    );
    assert_eq!(
        p.add(Step::new(run(0)).timeout(Duration::ZERO)),
        Err(PlanError::ZeroTimeout(0))
    );
    assert_eq!(
        p.add(Step::new(run(0)).timeout(Duration::from_secs(u64::MAX / 4))),
        Err(PlanError::TooLong(0))
    );
    let a = p
        .add(Step::new(run(0)).expected(Duration::from_millis(100)))
        .unwrap();
    let b = p
        .add(Step::new(run(1)).expected(Duration::from_millis(300)))
        .unwrap();
    let c = p
        .add(
            Step::new(run(2))
                .after(&[a, b])
                .expected(Duration::from_millis(50)),
        )
        .unwrap();
    let preview = p.preview();
    assert_eq!(preview.steps[usize::from(c)].start_ms, 300);
    assert_eq!(preview.total_ms, 350);
}

#[test]
fn stale_and_malformed_peer_input_is_refused_and_counted() {
    let t0 = Instant::now();
    let state = PersistentState {
        highest_epoch: Epoch { term: 5, node: 1 },
        ..Default::default()
    };
    let mut o = Orchestrator::new(
        Config::builder(id("a")).build().unwrap(),
        state,
        t0,
        SystemTime::UNIX_EPOCH,
    );
    while o.poll_command().is_some() {}
    let before = o.stats().commands_issued;
    // A request from an older epoch is not carried out.
    o.handle_peer_message(
        t0,
        PeerMessage {
            epoch: Epoch { term: 4, node: 99 },
            body: PeerBody::Request {
                id: 1,
                request: PeerRequest::Restart,
            },
        },
    );
    assert_eq!(o.stats().stale_epoch, 1);
    assert_eq!(o.stats().commands_issued, before);
    assert!(o.poll_command().is_none());
    // It is answered, refused, under the newer epoch, so that the peer
    // learns the epoch and does not wait out its step's timeout.
    let replies: Vec<PeerMessage> = std::iter::from_fn(|| o.poll_transmit())
        .filter(|m| matches!(m.body, PeerBody::Reply { .. }))
        .collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].epoch, Epoch { term: 5, node: 1 });
    assert!(matches!(
        replies[0].body,
        PeerBody::Reply {
            id: 1,
            outcome: ReplyOutcome::Refused
        }
    ));
    assert!(o.handle_peer_bytes(t0, &[1, 0xff, 0xff, 0xff]).is_err());
    assert_eq!(o.stats().decode_errors, 1);
    // A newer epoch is adopted and journaled before anything else.
    o.handle_peer_message(
        t0,
        PeerMessage {
            epoch: Epoch { term: 6, node: 99 },
            body: PeerBody::Hello(id("b")),
        },
    );
    assert_eq!(o.epoch(), Epoch { term: 6, node: 99 });
    let rec = std::iter::from_fn(|| o.poll_journal()).last().unwrap();
    assert_eq!(rec.state.highest_epoch, Epoch { term: 6, node: 99 });
    // A Passive expiry beyond any clock from the peer cannot overflow.
    o.handle_peer_message(
        t0,
        PeerMessage {
            epoch: Epoch { term: 6, node: 99 },
            body: PeerBody::Request {
                id: 2,
                request: PeerRequest::SetMode {
                    mode: failover_orchestrator::BackupMode::Passive,
                    expires_unix_s: Some(u64::MAX),
                },
            },
        },
    );
    assert!(o.poll_timeout().is_some());
}
