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
//! Templates are shell commands (`sh -c`); `{name}`, `{model}` and
//! `{address}` are replaced by the phone's values, each shell-quoted (by
//! `shlex`) and substituted in one pass, so that a value is always one
//! word and never evaluated by the shell: `$(…)`, `;`, quotes or a
//! placeholder inside a value stay text. A placeholder must therefore not
//! be quoted in the template itself (`'{name}'` is refused when the file
//! is read). A phone counts as registered only when its `check` passes
//! (run after its action, or, for a `follow` phone, from the address's
//! announcement). Without `check`, a phone whose action command exits 0
//! (a `follow` phone: once the address is announced) is reported
//! unchecked: resolved, not confirmed, and not counted as registered.

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

/// The placeholders a template may hold.
const PLACEHOLDERS: [&str; 3] = ["{name}", "{model}", "{address}"];

impl Phone {
    /// A template with this phone's values filled in, each shell-quoted,
    /// in one pass (a value that holds a placeholder is not filled again).
    #[must_use]
    pub fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let value = PLACEHOLDERS
                .iter()
                .zip([&self.name, &self.model, &self.address])
                .find(|(p, _)| rest.starts_with(**p));
            match value {
                Some((p, v)) => {
                    // Values with a NUL byte are refused when the file is
                    // read; should one get here, it becomes an empty word.
                    out.push_str(&shlex::try_quote(v).unwrap_or("''".into()));
                    rest = &rest[p.len()..];
                }
                None => {
                    out.push('{');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// A template's placeholder written inside quotes: the value, quoted
/// again by [`Phone::fill`], would come out of its quotes.
fn quoted_placeholder(template: &str) -> Option<&'static str> {
    PLACEHOLDERS.into_iter().find(|p| {
        template.match_indices(p).any(|(at, _)| {
            let before = template[..at].chars().next_back();
            let after = template[at + p.len()..].chars().next();
            matches!(before, Some('\'' | '"')) || matches!(after, Some('\'' | '"'))
        })
    })
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
        for (k, v) in [
            ("name", &p.name),
            ("model", &p.model),
            ("address", &p.address),
        ] {
            if v.chars().any(char::is_control) {
                return Err(bad(k, "must not hold control characters".into()));
            }
        }
        for (k, t) in [
            ("nudge", &p.nudge),
            ("reboot", &p.reboot),
            ("check", &p.check),
        ] {
            if let Some(placeholder) = t.as_deref().and_then(quoted_placeholder) {
                return Err(bad(
                    k,
                    format!(
                        "{placeholder} is quoted; the node quotes each value itself, \
                         so write it bare"
                    ),
                ));
            }
        }
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
