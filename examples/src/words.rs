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
    /// Configuration restore (the Master).
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
            if let Some(p) = &st.peer {
                let state = if p.up { "UP" } else { "DOWN" };
                let mut line = format!("Peer {}: {state}", p.id);
                if p.up {
                    if let Some(r) = p.role {
                        line += &format!(", {r}");
                    }
                    if p.role == Some(Role::Backup) {
                        if let Some(m) = p.mode {
                            line += &format!(", {m} mode");
                        }
                    }
                }
                line += &format!(", firmware {}", nonempty(&p.firmware));
                w.peer = Some(line);
            } else if redundancy == Redundancy::Enabled {
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
            if let Some(g) = st.peer.as_ref().and_then(|p| p.sync_generation) {
                w.sync.push(format!("Peer at generation {g}"));
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
            restore: master,
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
