//! The phone inventory file: which phones the PBX re-homes on takeover and
//! how each can be moved.
//!
//! ```toml
//! [[phone]]
//! name = "reception"
//! model = "yealink-t46"
//! address = "10.99.0.31"
//! method = "nudge"           # "follow" | "nudge" | "reboot" | "person"
//! class = 1                  # lower first (0 emergency, 1 reception, ... default 5)
//! nudge = "sip-notify --event check-sync {address}"
//! reboot = "ssh admin@{address} reboot"
//! check = "sip-registered {name}"   # exits 0 once the phone is registered
//! ```
//!
//! Templates are shell commands; `{name}`, `{model}` and `{address}` are
//! replaced. Without `check`, a phone counts as registered when its action
//! command exits 0 (a `follow` phone: as soon as the address is announced).

use std::path::Path;

use failover_orchestrator::{PersonReason, PhoneMethod, PhoneSpec};
use serde::Deserialize;

use crate::config::ConfigError;

/// One phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// Name (unique).
    pub name: String,
    /// Model.
    pub model: String,
    /// Address.
    pub address: String,
    /// What the orchestrator knows of it.
    pub spec: PhoneSpec,
    /// Nudge command template.
    pub nudge: Option<String>,
    /// Reboot command template.
    pub reboot: Option<String>,
    /// Registration check template.
    pub check: Option<String>,
}

impl Phone {
    /// A template with this phone's values filled in.
    #[must_use]
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{name}", &self.name)
            .replace("{model}", &self.model)
            .replace("{address}", &self.address)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    phone: Vec<RawPhone>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhone {
    name: String,
    #[serde(default)]
    model: String,
    address: String,
    method: String,
    reason: Option<String>,
    class: Option<u8>,
    nudge: Option<String>,
    reboot: Option<String>,
    check: Option<String>,
}

/// Reads and validates an inventory file.
///
/// # Errors
/// [`ConfigError`] naming the phone entry and the reason.
pub fn load(path: &Path) -> Result<Vec<Phone>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })
}

/// Validates inventory text.
///
/// # Errors
/// [`ConfigError`] naming the phone entry and the reason.
pub fn parse(text: &str) -> Result<Vec<Phone>, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: "<phones>".into(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let mut out: Vec<Phone> = Vec::with_capacity(raw.phone.len());
    for (i, p) in raw.phone.into_iter().enumerate() {
        let key = |k: &str| format!("phone[{i}].{k}");
        let bad = |k: &str, reason: String| ConfigError::Invalid {
            key: key(k),
            reason,
        };
        if p.name.is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if out.iter().any(|o| o.name == p.name) {
            return Err(bad("name", format!("`{}` is used twice", p.name)));
        }
        let method = match p.method.as_str() {
            "follow" => PhoneMethod::FollowsAddress,
            "nudge" => PhoneMethod::Nudge,
            "reboot" => PhoneMethod::Reboot,
            "person" => PhoneMethod::Person(match p.reason.as_deref() {
                None | Some("unsupported-model") => PersonReason::UnsupportedModel,
                Some("changed-credentials") => PersonReason::ChangedCredentials,
                Some(r) => {
                    return Err(bad(
                        "reason",
                        format!("`{r}`: expected \"unsupported-model\" or \"changed-credentials\""),
                    ));
                }
            }),
            m => {
                return Err(bad(
                    "method",
                    format!("`{m}`: expected \"follow\", \"nudge\", \"reboot\" or \"person\""),
                ));
            }
        };
        let mut spec = PhoneSpec::new(method).class(p.class.unwrap_or(5));
        spec.can_nudge &= p.nudge.is_some();
        spec.can_reboot &= p.reboot.is_some();
        if method == PhoneMethod::Nudge && p.nudge.is_none() {
            return Err(bad(
                "nudge",
                "method \"nudge\" needs a nudge command".into(),
            ));
        }
        if method == PhoneMethod::Reboot && p.reboot.is_none() {
            return Err(bad(
                "reboot",
                "method \"reboot\" needs a reboot command".into(),
            ));
        }
        out.push(Phone {
            name: p.name,
            model: p.model,
            address: p.address,
            spec,
            nudge: p.nudge,
            reboot: p.reboot,
            check: p.check,
        });
    }
    Ok(out)
}
