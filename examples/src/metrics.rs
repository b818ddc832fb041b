//! `GET /metrics`: the node's figures in the OpenMetrics text format, for
//! Prometheus and compatible scrapers, rendered by the `prometheus-client`
//! crate at request time from the same [`Snapshot`] `GET /status` returns,
//! so that the two never disagree.
//!
//! Every name starts with `pbx_redundancy_`:
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `role{role}` | gauge | 1 for the role the node has (`master`, `backup`, `initialize`, `disabled`), 0 for the others |
//! | `vrrp_priority` | gauge | the election's current priority |
//! | `vrrp_transitions_total` | counter | the election's state changes |
//! | `vrrp_adverts_sent_total` | counter | advertisements sent (one per destination) |
//! | `vrrp_adverts_received_total` | counter | advertisements received and accepted |
//! | `vrrp_drops_total{reason}` | counter | advertisements dropped, by receive rule |
//! | `sync_generation` | gauge | the sync generation this node holds (on the Master: the one its replica confirmed) |
//! | `sync_age_seconds` | gauge | that generation's age when the snapshot was taken |
//! | `sync_window_seconds` | gauge | the data-loss window of the last takeover |
//! | `sync_round_bytes` | gauge | bytes the last committed replica round received |
//! | `sync_round_seconds` | gauge | that round's duration, request to commit |
//! | `procedures_total{kind,outcome}` | counter | operator procedures that ended |
//! | `phones{outcome}` | gauge | the last takeover's phones by outcome (`registered`: confirmed by a check; `unchecked`: no check to confirm it; `needs_person`; `pending`) |
//! | `failover_seconds` | histogram | takeovers, detection to done |
//!
//! The counters count from the node's start (a soft restart or the
//! redundancy switch, which start a new election engine, do not reset
//! them). Gauges that have no value yet (no generation, no takeover, no
//! round) are left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use failover_orchestrator::pair::PairEvent;
use failover_orchestrator::{
    Event, Milestone, PhoneResult, PlanKind, ProcedureOutcome, Timeline,
    pair::{RoundSummary, SyncReport},
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use vrrp_fsm::{ConfigDrop, State, Stats};
use vrrp_proto::DropReason;

use crate::node::Snapshot;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The drop reason counted for VRRP packets a node ignores while
/// redundancy is off.
pub const REDUNDANCY_OFF: &str = "redundancy_off";

/// The figures `/status` shows as `counters` and `/metrics` renders,
/// beside the snapshot's other fields.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Counters {
    /// Advertisements sent since the node started (one per destination).
    pub adverts_sent: u64,
    /// Received advertisements dropped since the node started, by reason
    /// (vrrp-proto's packet rules, vrrp-fsm's configuration rules, and
    /// `redundancy_off`); reasons never seen are left out.
    pub drops: BTreeMap<&'static str, u64>,
    /// The last sync round this node committed as a replica.
    pub last_round: Option<RoundView>,
    /// Operator procedures that ended since the node started, by kind and
    /// outcome.
    pub procedures: Vec<ProcedureCount>,
    /// Every takeover of this run that finished, detection to done, ms,
    /// oldest first.
    #[serde(serialize_with = "as_slice")]
    pub failovers_ms: Arc<Vec<u64>>,
}

fn as_slice<S: serde::Serializer>(v: &Arc<Vec<u64>>, s: S) -> Result<S::Ok, S::Error> {
    v.as_slice().serialize(s)
}

/// A committed replica round.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RoundView {
    /// The generation it committed.
    pub generation: u64,
    /// Bytes of the source's frames it received.
    pub bytes: u64,
    /// From the request to the commit, ms.
    pub took_ms: u64,
}

/// How many procedures of one kind ended one way.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcedureCount {
    /// `swap`, `set_backup_mode`, `set_redundancy`, `rolling_upgrade`,
    /// `configuration_restore`, `hand_back`.
    pub kind: String,
    /// `completed`, `degraded` or `aborted`.
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// The election's counters as the node shows them: summed over every
/// election engine of this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VrrpTotals {
    /// Advertisements sent.
    pub sent: u64,
    /// Advertisements accepted.
    pub received: u64,
    /// State changes.
    pub transitions: u64,
    /// Drops by reason (every reason, in a fixed order).
    pub drops: Vec<(&'static str, u64)>,
}

impl VrrpTotals {
    fn of(s: &Stats) -> VrrpTotals {
        let drops = DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.proto_drops(*r)))
            .chain(
                ConfigDrop::ALL
                    .iter()
                    .map(|r| (r.as_str(), s.config_drops(*r))),
            )
            .collect();
        VrrpTotals {
            sent: s.tx_advertisements,
            received: s.rx_accepted,
            transitions: State::ALL
                .iter()
                .flat_map(|f| State::ALL.iter().map(move |t| s.transitions(*f, *t)))
                .sum(),
            drops,
        }
    }

    fn add(&mut self, o: &VrrpTotals) {
        self.sent += o.sent;
        self.received += o.received;
        self.transitions += o.transitions;
        if self.drops.is_empty() {
            self.drops.clone_from(&o.drops);
        } else {
            for ((_, a), (_, b)) in self.drops.iter_mut().zip(&o.drops) {
                *a += b;
            }
        }
    }

    /// Whether any counter of `self` is below `earlier`'s: a new engine.
    fn restarted_since(&self, earlier: &VrrpTotals) -> bool {
        self.sent < earlier.sent
            || self.received < earlier.received
            || self.transitions < earlier.transitions
            || self
                .drops
                .iter()
                .zip(&earlier.drops)
                .any(|((_, a), (_, b))| a < b)
    }

    /// Every drop.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }
}

/// What the engine thread keeps for [`Counters`] between snapshots: the
/// counts of election engines that were replaced, procedure outcomes, the
/// last replica round and the takeovers' durations.
#[derive(Debug, Default)]
pub struct Tally {
    /// Election engines of this run that are gone.
    base: VrrpTotals,
    /// The current engine as last read.
    last: Option<VrrpTotals>,
    /// Procedures started or resumed, by id: their kind.
    running: BTreeMap<u64, String>,
    procedures: BTreeMap<(String, &'static str), u64>,
    last_round: Option<RoundView>,
    failovers_ms: Arc<Vec<u64>>,
}

/// A procedure's name as a label value: `set backup mode` →
/// `set_backup_mode`.
fn kind_label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn outcome_label(o: ProcedureOutcome) -> &'static str {
    match o {
        ProcedureOutcome::Completed => "completed",
        ProcedureOutcome::Degraded => "degraded",
        ProcedureOutcome::Aborted => "aborted",
    }
}

impl Tally {
    /// The election's totals of this run, given the current engine's
    /// counters (`None` while redundancy is off). An engine whose counters
    /// went down is a new one: the old one's last reading is kept.
    pub fn vrrp(&mut self, current: Option<&Stats>) -> VrrpTotals {
        let now = current.map(VrrpTotals::of);
        match (&self.last, &now) {
            (Some(last), None) => self.base.add(last),
            (Some(last), Some(now)) if now.restarted_since(last) => self.base.add(last),
            _ => {}
        }
        self.last.clone_from(&now);
        let mut total = self.base.clone();
        if let Some(now) = &now {
            total.add(now);
        }
        if total.drops.is_empty() {
            total.add(&VrrpTotals::of(&Stats::default()));
        }
        total
    }

    /// The current election engine is about to be replaced (a soft
    /// restart): its counters are kept.
    pub fn retire_router(&mut self, stats: &Stats) {
        self.base.add(&VrrpTotals::of(stats));
        self.last = None;
    }

    /// Takes what counts from one of the pair's events; `timeline` is the
    /// orchestrator's current one.
    pub fn on_event(&mut self, e: &PairEvent, timeline: Option<&Timeline>) {
        match e {
            PairEvent::Orchestrator(Event::ProcedureStarted { id, procedure }) => {
                self.running.insert(*id, kind_label(procedure.name()));
            }
            PairEvent::Orchestrator(Event::ProcedureFinished { id, outcome }) => {
                let kind = self
                    .running
                    .remove(id)
                    .unwrap_or_else(|| "unknown".to_owned());
                *self
                    .procedures
                    .entry((kind, outcome_label(*outcome)))
                    .or_default() += 1;
            }
            PairEvent::Orchestrator(Event::Milestone(entry))
                if entry.what == Milestone::Done
                    && timeline.is_some_and(|t| t.kind == PlanKind::Takeover) =>
            {
                Arc::make_mut(&mut self.failovers_ms).push(entry.at_ms);
            }
            PairEvent::Sync(SyncReport::RoundDone(RoundSummary {
                generation,
                received,
                took,
                ..
            })) => {
                self.last_round = Some(RoundView {
                    generation: *generation,
                    bytes: *received,
                    took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                });
            }
            _ => {}
        }
    }

    /// The counters for a snapshot.
    #[must_use]
    pub fn counters(&self, vrrp: &VrrpTotals, ignored: u64) -> Counters {
        let mut drops: BTreeMap<&'static str, u64> = vrrp
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, *n))
            .collect();
        if ignored > 0 {
            drops.insert(REDUNDANCY_OFF, ignored);
        }
        Counters {
            adverts_sent: vrrp.sent,
            drops,
            last_round: self.last_round,
            procedures: self
                .procedures
                .iter()
                .map(|((kind, outcome), count)| ProcedureCount {
                    kind: kind.clone(),
                    outcome,
                    count: *count,
                })
                .collect(),
            failovers_ms: self.failovers_ms.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcedureLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The roles `role{role}` lists.
const ROLES: [&str; 4] = ["master", "backup", "initialize", "disabled"];

/// A phone's outcome as `phones{outcome}` names it.
fn phone_label(r: PhoneResult) -> &'static str {
    match r {
        PhoneResult::Pending => "pending",
        PhoneResult::Registered(_) => "registered",
        PhoneResult::NeedsPerson(_) => "needs_person",
        PhoneResult::Unchecked(_) => "unchecked",
    }
}

/// The outcomes `phones{outcome}` lists.
const PHONE_OUTCOMES: [&str; 4] = ["registered", "unchecked", "needs_person", "pending"];

/// The buckets of `failover_seconds`: 0.25 s doubling to 512 s (a takeover
/// ends when its last phone is resolved; a reboot takes tens of seconds).
fn failover_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.25, 2.0, 12)
}

fn gauge_f64(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    g
}

fn gauge_i64(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

#[allow(clippy::cast_precision_loss)]
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The metrics of `s`, in the OpenMetrics text format ([`CONTENT_TYPE`]).
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("pbx_redundancy");

    let role = s.role.to_ascii_lowercase();
    let roles = Family::<RoleLabel, Gauge>::default();
    for name in ROLES {
        roles
            .get_or_create(&RoleLabel { role: name })
            .set(i64::from(role == name));
    }
    r.register("role", "The node's role: 1 for the one it has", roles);
    r.register(
        "vrrp_priority",
        "The election's current priority (0 while redundancy is off)",
        gauge_i64(u64::from(s.vrrp.priority)),
    );
    r.register(
        "vrrp_transitions",
        "State changes of the election since the node started",
        counter(s.vrrp.transitions),
    );
    r.register(
        "vrrp_adverts_sent",
        "VRRP advertisements sent since the node started (one per destination)",
        counter(s.counters.adverts_sent),
    );
    r.register(
        "vrrp_adverts_received",
        "VRRP advertisements received and accepted since the node started",
        counter(s.vrrp.received),
    );
    let drops = Family::<ReasonLabel, Counter>::default();
    let reasons = DropReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(ConfigDrop::ALL.iter().map(|r| r.as_str()))
        .chain([REDUNDANCY_OFF]);
    for reason in reasons {
        drops
            .get_or_create(&ReasonLabel { reason })
            .inc_by(s.counters.drops.get(reason).copied().unwrap_or(0));
    }
    r.register(
        "vrrp_drops",
        "VRRP packets dropped since the node started, by receive rule \
         (redundancy_off: ignored while redundancy is off)",
        drops,
    );

    if let Some(sync) = s.status.as_ref().and_then(|st| st.sync) {
        r.register(
            "sync_generation",
            "The sync generation this node holds (on the Master: the last one its replica confirmed)",
            gauge_i64(sync.generation),
        );
        r.register_with_unit(
            "sync_age",
            "Age of that generation when the node's status was last refreshed",
            Unit::Seconds,
            gauge_f64(seconds(sync.age_ms)),
        );
    }
    if let Some(window) = s.timeline.as_ref().and_then(|t| t.data_loss_window_ms) {
        r.register_with_unit(
            "sync_window",
            "Data-loss window of the last takeover: the age, at takeover, of the \
             generation the new Master started from (the most data that was lost)",
            Unit::Seconds,
            gauge_f64(seconds(window)),
        );
    }
    if let Some(round) = s.counters.last_round {
        r.register_with_unit(
            "sync_round",
            "Bytes of the source's frames the last committed replica round received",
            Unit::Bytes,
            gauge_i64(round.bytes),
        );
        r.register_with_unit(
            "sync_round",
            "Duration of the last committed replica round, request to commit",
            Unit::Seconds,
            gauge_f64(seconds(round.took_ms)),
        );
    }

    let procedures = Family::<ProcedureLabels, Counter>::default();
    for p in &s.counters.procedures {
        procedures
            .get_or_create(&ProcedureLabels {
                kind: p.kind.clone(),
                outcome: p.outcome,
            })
            .inc_by(p.count);
    }
    r.register(
        "procedures",
        "Operator procedures that ended since the node started, by kind and outcome",
        procedures,
    );

    let phones = Family::<OutcomeLabel, Gauge>::default();
    for outcome in PHONE_OUTCOMES {
        let _ = phones.get_or_create(&OutcomeLabel { outcome });
    }
    for p in &s.phones {
        phones
            .get_or_create(&OutcomeLabel {
                outcome: phone_label(p.result),
            })
            .inc();
    }
    r.register(
        "phones",
        "Phones of the last takeover's re-homing, by outcome",
        phones,
    );

    let failovers = Histogram::new(failover_buckets());
    for ms in s.counters.failovers_ms.iter() {
        failovers.observe(seconds(*ms));
    }
    // Named with its unit but without a UNIT line, which some OpenMetrics
    // parsers refuse on a histogram.
    r.register(
        "failover_seconds",
        "Takeovers of this run (failovers and the takeover of a swap), from \
         detection to done: address, services and phones",
        failovers,
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use failover_orchestrator::{
        BackupMode, Epoch, PersonReason, PhoneAction, PhoneId, PhoneOutcome, Procedure, Redundancy,
        Role, SyncView, TimelineEntry,
    };
    use openmetrics_parser::{MetricNumber, OpenMetricsValue};

    use super::*;

    /// A sample's labels and value.
    type Samples = Vec<(Vec<(String, String)>, OpenMetricsValue)>;

    /// Every sample of the text, by metric family and label values.
    fn parse(text: &str) -> HashMap<String, Samples> {
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
        exposition
            .families
            .into_iter()
            .map(|(name, family)| {
                let samples = family
                    .iter_samples()
                    .map(|s| {
                        let labels = s
                            .get_labelset()
                            .map(|l| {
                                l.iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default();
                        (labels, s.value.clone())
                    })
                    .collect();
                (name, samples)
            })
            .collect()
    }

    fn number(v: &OpenMetricsValue) -> f64 {
        match v {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("not a number: {other:?}"),
        }
    }

    fn one(m: &HashMap<String, Samples>, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = m
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {:?}", m.keys()));
        let want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found = samples
            .iter()
            .find(|(l, _)| want.iter().all(|w| l.contains(w)))
            .unwrap_or_else(|| panic!("{name}{labels:?} missing: {samples:?}"));
        number(&found.1)
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            id: "pbx-b".into(),
            role: "Master".into(),
            ..Snapshot::default()
        };
        s.vrrp.priority = 100;
        s.vrrp.transitions = 2;
        s.vrrp.received = 40;
        // `Status` grows (non-exhaustive): one from an engine, then set.
        let mut st = crate::words::tests_support::status("pbx-b");
        st.role = Role::Master;
        st.epoch = Epoch { term: 2, node: 7 };
        st.redundancy = Redundancy::Enabled;
        st.backup_mode = BackupMode::Active;
        st.ready = true;
        st.sync = Some(SyncView {
            generation: 5,
            age_ms: 1_500,
        });
        s.status = Some(st);
        s.timeline = Some(Timeline {
            kind: PlanKind::Takeover,
            reason: None,
            epoch: Epoch { term: 2, node: 7 },
            entries: Vec::new(),
            generation: Some(5),
            data_loss_window_ms: Some(2_250),
            phones: Vec::new(),
        });
        let phone = |i, result| PhoneOutcome {
            phone: PhoneId(i),
            result,
            at_ms: Some(10),
        };
        s.phones = vec![
            phone(0, PhoneResult::Registered(PhoneAction::Followed)),
            phone(1, PhoneResult::Registered(PhoneAction::Nudged)),
            phone(2, PhoneResult::NeedsPerson(PersonReason::UnsupportedModel)),
            phone(3, PhoneResult::Unchecked(PhoneAction::Followed)),
        ];
        s.counters = Counters {
            adverts_sent: 17,
            drops: [("checksum", 3), (REDUNDANCY_OFF, 4)].into_iter().collect(),
            last_round: Some(RoundView {
                generation: 5,
                bytes: 65_536,
                took_ms: 120,
            }),
            procedures: vec![ProcedureCount {
                kind: "swap".into(),
                outcome: "completed",
                count: 2,
            }],
            failovers_ms: Arc::new(vec![800, 3_000]),
        };
        s
    }

    #[test]
    fn a_snapshot_renders_as_openmetrics() {
        let text = render(&snapshot());
        assert!(text.ends_with("# EOF\n"), "{text}");
        let m = parse(&text);
        let p = "pbx_redundancy_";
        assert_eq!(one(&m, &format!("{p}role"), &[("role", "master")]), 1.0);
        for other in ["backup", "initialize", "disabled"] {
            assert_eq!(one(&m, &format!("{p}role"), &[("role", other)]), 0.0);
        }
        assert_eq!(one(&m, &format!("{p}vrrp_priority"), &[]), 100.0);
        assert_eq!(one(&m, &format!("{p}vrrp_transitions"), &[]), 2.0);
        assert_eq!(one(&m, &format!("{p}vrrp_adverts_sent"), &[]), 17.0);
        assert_eq!(one(&m, &format!("{p}vrrp_adverts_received"), &[]), 40.0);
        let drops = format!("{p}vrrp_drops");
        assert_eq!(one(&m, &drops, &[("reason", "checksum")]), 3.0);
        assert_eq!(one(&m, &drops, &[("reason", "redundancy_off")]), 4.0);
        assert_eq!(one(&m, &drops, &[("reason", "vrid")]), 0.0, "every reason");
        assert_eq!(
            m[&drops].len(),
            DropReason::COUNT + ConfigDrop::COUNT + 1,
            "one series per reason"
        );
        assert_eq!(one(&m, &format!("{p}sync_generation"), &[]), 5.0);
        assert_eq!(one(&m, &format!("{p}sync_age_seconds"), &[]), 1.5);
        assert_eq!(one(&m, &format!("{p}sync_window_seconds"), &[]), 2.25);
        assert_eq!(one(&m, &format!("{p}sync_round_bytes"), &[]), 65_536.0);
        assert_eq!(one(&m, &format!("{p}sync_round_seconds"), &[]), 0.12);
        assert_eq!(
            one(
                &m,
                &format!("{p}procedures"),
                &[("kind", "swap"), ("outcome", "completed")]
            ),
            2.0
        );
        let phones = format!("{p}phones");
        assert_eq!(one(&m, &phones, &[("outcome", "registered")]), 2.0);
        assert_eq!(one(&m, &phones, &[("outcome", "needs_person")]), 1.0);
        assert_eq!(one(&m, &phones, &[("outcome", "pending")]), 0.0);
        assert_eq!(one(&m, &phones, &[("outcome", "unchecked")]), 1.0);
        let hist = &m[&format!("{p}failover_seconds")];
        let OpenMetricsValue::Histogram(h) = &hist[0].1 else {
            panic!("not a histogram: {hist:?}");
        };
        assert_eq!(h.count, Some(2));
        assert_eq!(h.sum.map(|s| s.as_f64()), Some(3.8));
        let le = |bound: f64| {
            h.buckets
                .iter()
                .find(|b| (b.upper_bound - bound).abs() < 1e-9)
                .map(|b| b.count.as_f64())
        };
        assert_eq!(le(0.5), Some(0.0));
        assert_eq!(le(1.0), Some(1.0));
        assert_eq!(le(4.0), Some(2.0));
        // HELP says what the window means.
        assert!(
            text.contains(
                "# HELP pbx_redundancy_sync_window_seconds Data-loss window of the last takeover"
            ),
            "{text}"
        );
    }

    #[test]
    fn what_is_not_known_yet_is_left_out() {
        let s = Snapshot {
            role: "Initialize".into(),
            ..Snapshot::default()
        };
        let m = parse(&render(&s));
        for absent in [
            "sync_generation",
            "sync_age_seconds",
            "sync_window_seconds",
            "sync_round_bytes",
            "sync_round_seconds",
        ] {
            assert!(
                !m.contains_key(&format!("pbx_redundancy_{absent}")),
                "{absent}"
            );
        }
        assert_eq!(
            one(&m, "pbx_redundancy_role", &[("role", "initialize")]),
            1.0
        );
        let hist = &m["pbx_redundancy_failover_seconds"];
        let OpenMetricsValue::Histogram(h) = &hist[0].1 else {
            panic!("not a histogram");
        };
        assert_eq!(h.count, Some(0));
        assert_eq!(h.sum, Some(MetricNumber::Float(0.0)));
    }

    fn stats(sent: u64, received: u64) -> Stats {
        let mut s = Stats::default();
        s.tx_advertisements = sent;
        s.rx_accepted = received;
        s
    }

    #[test]
    fn counters_survive_a_new_election_engine() {
        let mut t = Tally::default();
        assert_eq!(t.vrrp(Some(&stats(10, 5))).sent, 10);
        // A soft restart: the old engine's counts are kept.
        t.retire_router(&stats(12, 6));
        let v = t.vrrp(Some(&stats(1, 0)));
        assert_eq!((v.sent, v.received), (13, 6));
        // Redundancy off (no engine), then on (a new one, seen only
        // after it counted less than the old).
        let v = t.vrrp(Some(&stats(4, 2)));
        assert_eq!((v.sent, v.received), (16, 8));
        let v = t.vrrp(None);
        assert_eq!((v.sent, v.received), (16, 8));
        let v = t.vrrp(Some(&stats(2, 0)));
        assert_eq!((v.sent, v.received), (18, 8));
        assert_eq!(v.drops.len(), DropReason::COUNT + ConfigDrop::COUNT);
    }

    #[test]
    fn procedures_and_takeovers_are_counted_from_events() {
        let mut t = Tally::default();
        let ev = |e| PairEvent::Orchestrator(e);
        t.on_event(
            &ev(Event::ProcedureStarted {
                id: 3,
                procedure: Procedure::Swap {
                    peer_mode: BackupMode::Active,
                },
            }),
            None,
        );
        t.on_event(
            &ev(Event::ProcedureFinished {
                id: 3,
                outcome: ProcedureOutcome::Completed,
            }),
            None,
        );
        t.on_event(
            &ev(Event::ProcedureStarted {
                id: 4,
                procedure: Procedure::SetBackupMode {
                    mode: BackupMode::Passive,
                    expires_unix_s: None,
                    on_peer: false,
                },
            }),
            None,
        );
        t.on_event(
            &ev(Event::ProcedureFinished {
                id: 4,
                outcome: ProcedureOutcome::Aborted,
            }),
            None,
        );
        let done = |at_ms| {
            ev(Event::Milestone(TimelineEntry {
                at_ms,
                unix_ms: 0,
                what: Milestone::Done,
            }))
        };
        let timeline = |kind| Timeline {
            kind,
            reason: None,
            epoch: Epoch::default(),
            entries: Vec::new(),
            generation: None,
            data_loss_window_ms: None,
            phones: Vec::new(),
        };
        // A cold start is no failover.
        t.on_event(&done(900), Some(&timeline(PlanKind::ColdStart)));
        t.on_event(&done(1_200), Some(&timeline(PlanKind::Takeover)));
        let c = t.counters(&VrrpTotals::default(), 0);
        assert_eq!(
            c.procedures,
            vec![
                ProcedureCount {
                    kind: "set_backup_mode".into(),
                    outcome: "aborted",
                    count: 1
                },
                ProcedureCount {
                    kind: "swap".into(),
                    outcome: "completed",
                    count: 1
                },
            ]
        );
        assert_eq!(c.failovers_ms.as_slice(), &[1_200]);
    }
}
