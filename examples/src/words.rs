//! The status page's words: what an administrator reads, built from the
//! node's snapshot (so that `/status` carries them and tests read them
//! without a browser), and which of the page's actions make sense now.

use failover_orchestrator::{
    BackupMode, Milestone, ParityField, PersonReason, PhoneResult, PlanKind, Redundancy, Role,
};
use serde::Serialize;

use crate::config::NodeConfig;
use crate::node::Snapshot;
use crate::phones::Phone;

/// The page's text, section by section.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Words {
    /// The manual's status line.
    pub status_line: String,
    /// This unit: id, role, mode, versions.
    pub unit: String,
    /// The peer: id, up or down, role, mode, firmware.
    pub peer: Option<String>,
    /// Replication: generation and age, the peer's generation, the
    /// data-loss window at the last takeover.
    pub sync: Vec<String>,
    /// Where the two units differ.
    pub findings: Vec<String>,
    /// The running procedure and its progress.
    pub procedure: Option<String>,
    /// Its steps running now.
    pub procedure_steps: Vec<String>,
    /// How the last procedure ended, and why.
    pub last_procedure: Option<String>,
    /// The last failover: kind, reason, when, the data-loss window.
    pub timeline_title: Option<String>,
    /// Its milestones, `voicemail ready +608 ms`.
    pub timeline: Vec<String>,
    /// Phones a person must move, by name and address, with the reason.
    pub phones_attention: Vec<String>,
    /// Folders where a returning Master's unconfirmed changes were set
    /// aside.
    pub quarantine: Vec<String>,
    /// A replication round the mass-deletion guard holds back.
    pub refused_round: Option<String>,
    /// The image the next install uses.
    pub image: Option<String>,
    /// Its hand-over to the peer.
    pub transfer: Option<String>,
    /// A Passive Backup's own install.
    pub local_upgrade: Option<String>,
    /// Which actions the page offers now.
    pub actions: Actions,
}

/// The page's buttons that make sense in this unit's state (a request that
/// fails preflight is still refused with its reason).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Actions {
    /// Swap Master and Backup (the Master, with a Backup up).
    pub swap: bool,
    /// Set the Backup mode: a Backup its own, a Master its peer's.
    pub set_mode: bool,
    /// The rolling upgrade of both units (the Master).
    pub rolling_upgrade: bool,
    /// The manual's Firmware Update / Upload Language Pack on a Passive
    /// Backup (this unit alone).
    pub firmware_update: bool,
    /// Configuration restore (the Master, with its Backup up).
    pub restore: bool,
    /// Turn redundancy off (on a Master) or on (when off).
    pub redundancy_off: bool,
    /// Turn redundancy on.
    pub redundancy_on: bool,
    /// Confirm the deletions a held-back round would make.
    pub confirm_deletions: bool,
}

/// `1.5 s`, `608 ms`.
fn ms(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.0} s", v as f64 / 1000.0)
    } else if v >= 1000 {
        format!("{:.1} s", v as f64 / 1000.0)
    } else {
        format!("{v} ms")
    }
}

/// `12.3 MiB`, `512 bytes`.
fn bytes(v: u64) -> String {
    if v >= 1 << 20 {
        format!("{:.1} MiB", v as f64 / f64::from(1u32 << 20))
    } else if v >= 1 << 10 {
        format!("{:.1} KiB", v as f64 / 1024.0)
    } else {
        format!("{v} bytes")
    }
}

/// A Unix time in ms as UTC, to the second.
fn when(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace('T', " ").replace('Z', " UTC")
}

fn milestone(m: &Milestone) -> String {
    match m {
        Milestone::Detected => "failure detected".into(),
        Milestone::SyncSettled => "sync round settled".into(),
        Milestone::AddressClaimed => "virtual address claimed".into(),
        Milestone::ServiceReady { name, .. } => format!("{name} ready"),
        Milestone::ServiceFailed { name, .. } => format!("{name} FAILED its check"),
        Milestone::Phones {
            percent,
            registered,
        } => format!("phones {percent} % resolved ({registered} registered)"),
        Milestone::Done => "done".into(),
        Milestone::Aborted => "aborted".into(),
        other => format!("{other:?}"),
    }
}

fn kind(k: PlanKind) -> &'static str {
    match k {
        PlanKind::Takeover => "Takeover",
        PlanKind::ColdStart => "Cold start",
        PlanKind::HandBack => "Hand-back",
        _ => "Role change",
    }
}

fn person(r: PersonReason) -> &'static str {
    match r {
        PersonReason::UnsupportedModel => "model not provisioned automatically",
        PersonReason::ChangedCredentials => "provisioning credentials changed on the phone",
        PersonReason::NoRegistration => "did not register after every automatic action",
    }
}

fn field(f: ParityField) -> &'static str {
    match f {
        ParityField::Firmware => "Firmware",
        ParityField::LanguagePack => "Language pack",
        ParityField::Licences => "Licences",
        ParityField::Protocol => "Peer protocol",
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

impl Words {
    /// The words of a snapshot; `phones` names the phones, `config` gives
    /// this unit's versions.
    #[must_use]
    pub fn of(s: &Snapshot, phones: &[Phone], config: &NodeConfig) -> Words {
        let mut w = Words {
            status_line: s.summary.clone(),
            ..Words::default()
        };
        let status = s.status.as_ref();
        let role = status.map_or(Role::Initialize, |st| st.role);
        let redundancy = status.map_or(Redundancy::Enabled, |st| st.redundancy);
        let mode = status.map_or(BackupMode::Active, |st| st.backup_mode);
        let peer = status.and_then(|st| st.peer.as_ref());
        let peer_up = peer.is_some_and(|p| p.up);
        let peer_role = peer.and_then(|p| p.role);

        w.unit = match role {
            Role::Backup => format!("This unit {}: Backup, {mode} mode", s.id),
            r => format!("This unit {}: {r}", s.id),
        };
        w.unit += &format!(
            ", firmware {}, language pack {}",
            nonempty(&config.identity.firmware),
            nonempty(&config.identity.language_pack)
        );
        if let Some(st) = status {
            if redundancy == Redundancy::Disabled {
                w.peer = Some("Peer: not watched while redundancy is disabled".into());
            } else if let Some(p) = &st.peer {
                let state = if p.up { "UP" } else { "DOWN" };
                let mut line = format!("Peer {}: {state}", p.id);
                if p.up {
                    if let Some(r) = p.role {
                        line += &format!(", {r}");
                    }
                    if p.role == Some(Role::Backup)
                        && let Some(m) = p.mode
                    {
                        line += &format!(", {m} mode");
                    }
                }
                line += &format!(", firmware {}", nonempty(&p.firmware));
                w.peer = Some(line);
            } else {
                w.peer = Some("Peer: not heard yet".into());
            }
            match st.sync {
                Some(g) => w.sync.push(format!(
                    "Generation {}, taken {} ago",
                    g.generation,
                    ms(g.age_ms)
                )),
                None if config.sync.is_some() => w.sync.push("No generation yet".into()),
                None => w.sync.push("Replication is not configured".into()),
            }
            if config.sync.is_some() {
                w.sync.push(match s.sync.window_ms {
                    Some(0) => "Data-loss window now: none (the Backup holds every change)".into(),
                    Some(win) => format!("Data-loss window now: {}", ms(win)),
                    None => "Data-loss window now: unbounded (no generation yet)".into(),
                });
            }
            if let Some(g) = st.peer.as_ref().and_then(|p| p.sync_generation) {
                w.sync.push(format!("Peer at generation {g}"));
            }
            if let Some(r) = &s.counters.last_round {
                w.sync.push(format!(
                    "Last round: generation {}, {} received in {}",
                    r.generation,
                    bytes(r.bytes),
                    ms(r.took_ms)
                ));
            }
            for f in &st.findings {
                w.findings.push(format!(
                    "{} differs: this unit {}, peer {}",
                    field(f.field),
                    nonempty(&f.ours),
                    nonempty(&f.theirs)
                ));
            }
            if let Some(p) = &st.procedure {
                w.procedure = Some(format!(
                    "{} running: {} of {} steps done",
                    capitalised(&p.name),
                    p.done,
                    p.total
                ));
                w.procedure_steps = p
                    .active_steps
                    .iter()
                    .map(|(i, a)| format!("step {}: {a}", i + 1))
                    .collect();
            }
        }
        if let Some(t) = &s.timeline {
            if let Some(window) = t.data_loss_window_ms {
                w.sync.push(format!(
                    "Data-loss window at the last takeover: {}",
                    ms(window)
                ));
            }
            let started = t.entries.first().map(|e| e.unix_ms);
            let mut title = kind(t.kind).to_string();
            if let Some(r) = t.reason {
                title += &format!(" ({r:?})");
            }
            if let Some(at) = started {
                title += &format!(" at {}", when(at));
            }
            if let Some(g) = t.generation {
                title += &format!(", from generation {g}");
            }
            w.timeline_title = Some(title);
            w.timeline = t
                .entries
                .iter()
                .map(|e| format!("{} +{} ms", milestone(&e.what), e.at_ms))
                .collect();
        }
        if let Some(l) = &s.last_procedure {
            let mut line = format!(
                "Last procedure: {} {} at {}",
                l.name,
                l.outcome.to_lowercase(),
                when(l.finished_unix_ms)
            );
            if !l.failed_steps.is_empty() {
                line += &format!("; failed: {}", l.failed_steps.join("; "));
            }
            w.last_procedure = Some(line);
        }
        for o in &s.phones {
            if let PhoneResult::NeedsPerson(r) = o.result {
                let p = phones.get(o.phone.0 as usize);
                let name = p.map_or_else(
                    || format!("phone {}", o.phone.0),
                    |p| format!("{} ({}, {})", p.name, p.address, p.model),
                );
                w.phones_attention.push(format!("{name}: {}", person(r)));
            }
        }
        w.quarantine = s
            .quarantine
            .iter()
            .map(|f| format!("{f}: a returning Master's changes its peer never received"))
            .collect();
        w.refused_round = s.sync.refused.as_ref().map(|r| r.error.clone());
        let ops = &s.operations;
        w.image = ops.image.as_ref().map(|i| {
            format!(
                "Image to install: {} ({} {}), {} ({} bytes), BLAKE3 {}",
                i.file.name,
                i.kind.words(),
                i.version,
                bytes(i.file.size),
                i.file.size,
                i.file.blake3
            )
        });
        w.transfer = ops.transfer.as_ref().map(|t| match t.state.as_str() {
            "sending" => format!(
                "Handing {} to the peer: {} of {}",
                t.name,
                bytes(t.sent),
                bytes(t.total)
            ),
            "done" => format!(
                "{} handed to the peer, its size and BLAKE3 checked there",
                t.name
            ),
            other => format!("{} not handed to the peer: {other}", t.name),
        });
        w.local_upgrade = ops
            .local_upgrade
            .as_ref()
            .map(|l| format!("Install on this unit: {l}"));

        let master = role == Role::Master;
        let enabled = redundancy == Redundancy::Enabled;
        let backup_up = peer_up && peer_role == Some(Role::Backup);
        w.actions = Actions {
            swap: master && enabled && backup_up,
            set_mode: enabled && ((master && backup_up) || role == Role::Backup),
            rolling_upgrade: master && enabled && backup_up,
            firmware_update: role == Role::Backup && mode == BackupMode::Passive,
            // The manual's restore sets the Backup Passive meanwhile.
            restore: master && enabled && backup_up,
            redundancy_off: master && enabled,
            redundancy_on: !enabled,
            confirm_deletions: s.sync.refused.is_some(),
        };
        w
    }
}

fn nonempty(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// What the crate's unit tests share.
#[cfg(test)]
pub(crate) mod tests_support {
    use failover_orchestrator::{Config, Identity, Orchestrator, PersistentState, Status};

    /// A fresh engine's status (`Status` is non-exhaustive: tests set
    /// its public fields on one).
    pub(crate) fn status(node: &str) -> Status {
        let config = Config::builder(Identity::new(node, "5.1.30", "en-1"))
            .build()
            .expect("config");
        let now = std::time::Instant::now();
        let o = Orchestrator::new(
            config,
            PersistentState::default(),
            now,
            std::time::SystemTime::now(),
        );
        o.status(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_orchestrator::{
        Epoch, Finding, PeerView, ProtocolVersion, RoleChangeReason, Status, Timeline,
        TimelineEntry,
    };

    fn config() -> NodeConfig {
        let mut c = NodeConfig::parse(
            r#"id = "pbx-a"
state_dir = "state"
[vrrp]
transport = "udp"
vrid = 51
virtual_ips = ["10.99.0.100/24"]
udp_listen = "127.0.0.1:1"
udp_peers = ["127.0.0.2:1"]
"#,
            std::path::Path::new("/nonexistent"),
        )
        .expect("config");
        c.identity.firmware = "5.1.30".into();
        c
    }

    fn status(role: Role, peer_role: Role, mode: BackupMode) -> Status {
        let mut s = super::tests_support::status("pbx-a");
        s.role = role;
        s.epoch = Epoch { term: 3, node: 1 };
        s.peer = Some(PeerView {
            id: "pbx-b".into(),
            up: true,
            role: Some(peer_role),
            mode: Some(mode),
            firmware: "5.2.0".into(),
            protocol: ProtocolVersion::CURRENT,
            ready: true,
            sync_generation: Some(7),
        });
        s.findings = vec![Finding {
            field: ParityField::Firmware,
            ours: "5.1.30".into(),
            theirs: "5.2.0".into(),
        }];
        s
    }

    /// The words of pbx-a's snapshot holding `st`.
    fn words_of(st: Status) -> Words {
        let s = Snapshot {
            id: "pbx-a".into(),
            status: Some(st),
            ..Snapshot::default()
        };
        Words::of(&s, &[], &config())
    }

    #[test]
    fn a_masters_words_and_actions() {
        let mut s = Snapshot {
            id: "pbx-a".into(),
            status: Some(status(Role::Master, Role::Backup, BackupMode::Passive)),
            ..Snapshot::default()
        };
        s.timeline = Some(Timeline {
            kind: PlanKind::Takeover,
            reason: Some(RoleChangeReason::MasterDown),
            epoch: Epoch { term: 3, node: 1 },
            entries: vec![
                TimelineEntry {
                    at_ms: 0,
                    unix_ms: 1_796_227_702_989,
                    what: Milestone::Detected,
                },
                TimelineEntry {
                    at_ms: 608,
                    unix_ms: 1_796_227_703_597,
                    what: Milestone::ServiceReady {
                        service: 1,
                        name: "voicemail".into(),
                    },
                },
            ],
            generation: Some(7),
            data_loss_window_ms: Some(1_250),
            phones: Vec::new(),
        });
        let w = Words::of(&s, &[], &config());
        assert_eq!(
            w.peer.as_deref(),
            Some("Peer pbx-b: UP, Backup, Passive mode, firmware 5.2.0")
        );
        assert_eq!(
            w.findings,
            ["Firmware differs: this unit 5.1.30, peer 5.2.0"]
        );
        assert_eq!(
            w.timeline,
            ["failure detected +0 ms", "voicemail ready +608 ms"]
        );
        assert_eq!(
            w.timeline_title.as_deref(),
            Some("Takeover (MasterDown) at 2026-12-02 16:08:22 UTC, from generation 7")
        );
        assert!(
            w.sync
                .contains(&"Data-loss window at the last takeover: 1.2 s".to_string())
        );
        assert!(w.actions.swap && w.actions.rolling_upgrade && w.actions.restore);
        assert!(!w.actions.firmware_update && !w.actions.redundancy_on);
    }

    #[test]
    fn a_passive_backup_offers_its_own_install_and_no_swap() {
        let mut st = status(Role::Backup, Role::Master, BackupMode::Active);
        st.backup_mode = BackupMode::Passive;
        let w = words_of(st);
        assert!(
            w.unit
                .starts_with("This unit pbx-a: Backup, Passive mode, firmware 5.1.30")
        );
        assert_eq!(
            w.peer.as_deref(),
            Some("Peer pbx-b: UP, Master, firmware 5.2.0")
        );
        assert!(w.actions.firmware_update && w.actions.set_mode);
        assert!(!w.actions.swap && !w.actions.rolling_upgrade && !w.actions.restore);
        assert!(!w.actions.redundancy_off);
    }

    #[test]
    fn a_standalone_unit_watches_no_peer() {
        let mut st = status(Role::Master, Role::Backup, BackupMode::Active);
        st.redundancy = Redundancy::Disabled;
        let w = words_of(st);
        assert_eq!(
            w.peer.as_deref(),
            Some("Peer: not watched while redundancy is disabled")
        );
        assert!(w.actions.redundancy_on && !w.actions.redundancy_off);
        assert!(!w.actions.swap && !w.actions.restore && !w.actions.set_mode);
    }

    #[test]
    fn the_data_loss_window_in_words() {
        let c = NodeConfig::parse(
            r#"id = "pbx-a"
state_dir = "state"
[vrrp]
transport = "udp"
vrid = 51
virtual_ips = ["10.99.0.100/24"]
udp_listen = "127.0.0.1:1"
udp_peers = ["127.0.0.2:1"]
[sync]
listen = "127.0.0.1:7001"
peer = "127.0.0.2:7001"
dir = "data"
key_file = "sync.key"
"#,
            std::path::Path::new("/nonexistent"),
        )
        .expect("config");
        let mut s = Snapshot {
            id: "pbx-a".into(),
            status: Some(status(Role::Master, Role::Backup, BackupMode::Active)),
            ..Snapshot::default()
        };
        let line = |s: &Snapshot| {
            Words::of(s, &[], &c)
                .sync
                .into_iter()
                .find(|l| l.starts_with("Data-loss window now"))
        };
        s.sync.window_ms = Some(250);
        assert_eq!(line(&s).as_deref(), Some("Data-loss window now: 250 ms"));
        s.sync.window_ms = Some(0);
        assert_eq!(
            line(&s).as_deref(),
            Some("Data-loss window now: none (the Backup holds every change)")
        );
        s.sync.window_ms = None;
        assert_eq!(
            line(&s).as_deref(),
            Some("Data-loss window now: unbounded (no generation yet)")
        );
    }
}
