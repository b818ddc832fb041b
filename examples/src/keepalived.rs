//! A bridge from keepalived: one `vrrp_instance` of a `keepalived.conf`
//! converted to the `node` configuration (TOML), and every item that could
//! not be carried listed as a [`Note`] with its line.
//!
//! `node import-keepalived FILE [--instance NAME]` is the command line of
//! [`convert`]. A node runs one virtual router, so one instance is
//! converted per call.
//!
//! # What is carried
//!
//! | keepalived | node |
//! | --- | --- |
//! | `interface` | `vrrp.interface` (transport `raw`, as keepalived speaks it) |
//! | `virtual_router_id` | `vrrp.vrid` |
//! | `priority` (default 100) | `vrrp.priority` |
//! | `advert_int` (seconds, default 1) | `vrrp.advert_interval_ms` |
//! | `nopreempt`, `preempt_delay` (keepalived preempts by default) | `vrrp.preempt`, `vrrp.preempt_delay_ms` |
//! | `accept`, `no_accept` | `vrrp.accept` |
//! | `virtual_ipaddress` (`ADDR`, `ADDR/PREFIX`, `dev` of the instance's interface) | `vrrp.virtual_ips` |
//! | `unicast_peer` | `vrrp.unicast_peers` |
//! | `authentication { auth_type PASS  auth_pass … }` (VRRPv2) | `vrrp.auth_pass` |
//! | `version`, `global_defs { vrrp_version }` (default 2) | `vrrp.version` |
//! | `v3_checksum_as_v2` | `vrrp.v3_ipv4_checksum = "message-only"` |
//! | `garp_master_repeat`, `vrrp_garp_master_repeat` | `vrrp.garp_count` |
//! | `garp_interval`, `vrrp_garp_interval` | `vrrp.garp_interval_ms` |
//! | `global_defs { vrrp_rt_priority, vrrp_no_swap }` | `vrrp.rt_priority`, `vrrp.no_swap` |
//! | `global_defs { router_id }` (else the instance's name) | `id` |
//!
//! `state_dir` is set to `<id>.state`, beside the TOML file (relative
//! paths are taken from the file's folder). Everything else is a [`Note`]
//! (`line N: keyword: hint`): notify scripts (the node runs `[[service]]`
//! hooks), `track_script` / `track_interface` (tracked objects),
//! `vrrp_sync_group` (one router per node), `state` (the node starts as
//! Backup and the election decides), `unicast_src_ip` (the node sends
//! from its interface's primary address), AH authentication (the peer
//! link is authenticated by `[sync] key_file`), the LVS sections, and any
//! keyword this converter does not know, each with the line it is on.
//!
//! # The grammar read
//!
//! keepalived's own, as far as a converter needs it: words separated by
//! blanks, `#` or `!` at the start of a word begins a comment, `"…"`
//! quotes a word (`\"` and `\\` inside), `{` and `}` open and close a
//! block (on the keyword's line or the next one, or around a one-line
//! block). `include` is not followed: it is a note, so convert the
//! included file on its own or paste it in. Lines guarded by a
//! configuration id (`@high priority 170`, keepalived's `-i high`) are
//! not applied, and noted. `$NAME=…` parameters are not expanded.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// Deepest block nesting read (keepalived's own files nest four deep).
pub const MAX_DEPTH: usize = 64;

/// An item of the keepalived configuration that was not carried into the
/// node's: printed as `line N: keyword: hint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based line of the item.
    pub line: usize,
    /// The keyword (or the word) as written.
    pub keyword: String,
    /// What became of it, and what to use instead.
    pub hint: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.keyword, self.hint)
    }
}

/// A `vrrp_instance` of the file: its name and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance's name.
    pub name: String,
    /// The line of its `vrrp_instance` keyword.
    pub line: usize,
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {})", self.name, self.line)
    }
}

fn list(instances: &[Instance]) -> String {
    instances
        .iter()
        .map(Instance::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeepalivedError {
    /// A `"` with no closing `"` on its line.
    #[error("line {line}: unterminated quoted string")]
    UnterminatedQuote {
        /// The line.
        line: usize,
    },
    /// A `{` that no `}` closes.
    #[error("line {line}: this block is never closed (a `}}` is missing)")]
    Unclosed {
        /// The line of the `{`.
        line: usize,
    },
    /// A `}` with no block open.
    #[error("line {line}: `}}` closes no block")]
    UnexpectedClose {
        /// The line.
        line: usize,
    },
    /// A `{` with no keyword before it.
    #[error("line {line}: `{{` opens a block with no keyword")]
    UnexpectedOpen {
        /// The line.
        line: usize,
    },
    /// Blocks nested deeper than [`MAX_DEPTH`].
    #[error("line {line}: blocks nested deeper than {MAX_DEPTH}")]
    TooDeep {
        /// The line of the block too many.
        line: usize,
    },
    /// The file has no `vrrp_instance`.
    #[error("no vrrp_instance in the file")]
    NoInstance {
        /// `include` lines not followed (an instance may be there).
        includes: Vec<Note>,
    },
    /// Several instances and none chosen.
    #[error(
        "{} vrrp_instance blocks and a node runs one: choose one with --instance NAME: {}",
        .instances.len(),
        list(.instances)
    )]
    SeveralInstances {
        /// The instances of the file, in order.
        instances: Vec<Instance>,
    },
    /// The instance asked for is not in the file.
    #[error("no vrrp_instance named `{name}`; the file has: {}", list(.instances))]
    UnknownInstance {
        /// The name asked for.
        name: String,
        /// The instances of the file.
        instances: Vec<Instance>,
    },
    /// A value the node cannot take.
    #[error("line {line}: {keyword}: {reason}")]
    Invalid {
        /// The line.
        line: usize,
        /// The keyword.
        keyword: String,
        /// Why.
        reason: String,
    },
    /// A setting the node needs that the instance does not give.
    #[error("vrrp_instance {instance} (line {line}) has no {keyword}")]
    Missing {
        /// The instance.
        instance: String,
        /// Its line.
        line: usize,
        /// The missing keyword.
        keyword: &'static str,
    },
    /// The converted configuration is refused by the node's own loader
    /// (a value keepalived takes and the node does not).
    #[error("the node would not accept the converted configuration: {0}")]
    NotAccepted(#[from] crate::config::ConfigError),
}

fn invalid(line: usize, keyword: &str, reason: impl Into<String>) -> KeepalivedError {
    KeepalivedError::Invalid {
        line,
        keyword: keyword.to_owned(),
        reason: reason.into(),
    }
}

/// A token of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A word (quotes removed).
    Word(String),
    /// `{`.
    Open,
    /// `}`.
    Close,
}

/// Splits the text into tokens, each with its 1-based line.
///
/// # Errors
/// [`KeepalivedError::UnterminatedQuote`].
pub fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, KeepalivedError> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                c if c.is_whitespace() => {
                    chars.next();
                }
                '#' | '!' => break,
                '{' => {
                    chars.next();
                    out.push((n, Token::Open));
                }
                '}' => {
                    chars.next();
                    out.push((n, Token::Close));
                }
                '"' => {
                    chars.next();
                    let mut word = String::new();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => {
                                closed = true;
                                break;
                            }
                            '\\' => match chars.next() {
                                Some(e @ ('"' | '\\')) => word.push(e),
                                Some(other) => {
                                    word.push('\\');
                                    word.push(other);
                                }
                                None => word.push('\\'),
                            },
                            c => word.push(c),
                        }
                    }
                    if !closed {
                        return Err(KeepalivedError::UnterminatedQuote { line: n });
                    }
                    out.push((n, Token::Word(word)));
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || c == '{' || c == '}' {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    out.push((n, Token::Word(word)));
                }
            }
        }
    }
    Ok(out)
}

/// A statement: its words on one line, and the block that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// 1-based line of its first word.
    pub line: usize,
    /// The configuration id of a `@id` line (only applied by keepalived
    /// when started with `-i id`); not part of `words`.
    pub condition: Option<String>,
    /// The keyword and its values.
    pub words: Vec<String>,
    /// `{ … }` after it.
    pub block: Option<Vec<Item>>,
}

impl Item {
    fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }

    fn children(&self) -> &[Item] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// Reads the text into statements and blocks.
///
/// # Errors
/// [`KeepalivedError`]: an unterminated quote, unbalanced braces, or
/// nesting deeper than [`MAX_DEPTH`].
pub fn parse(text: &str) -> Result<Vec<Item>, KeepalivedError> {
    let tokens = tokenize(text)?;
    // The open blocks: their items so far, and the statement that opened
    // each (with the line of its `{`); the file's top level first.
    type Opener = Option<(Item, usize)>;
    let mut stack: Vec<(Vec<Item>, Opener)> = vec![(Vec::new(), None)];
    let mut current: Option<Item> = None;
    for (line, token) in tokens {
        let top = stack.len() - 1;
        match token {
            Token::Word(w) => match &mut current {
                Some(item) if item.line == line => item.words.push(w),
                _ => {
                    stack[top].0.extend(current.take());
                    let mut item = Item {
                        line,
                        condition: None,
                        words: Vec::new(),
                        block: None,
                    };
                    match w.strip_prefix('@') {
                        Some(id) => item.condition = Some(id.to_owned()),
                        None => item.words.push(w),
                    }
                    current = Some(item);
                }
            },
            Token::Open => {
                // The statement on this line or the one before, or the last
                // one of the block if it has no block yet.
                let opener = match current.take() {
                    Some(item) => item,
                    None => match stack[top].0.pop() {
                        Some(item) if item.block.is_none() => item,
                        Some(item) => {
                            stack[top].0.push(item);
                            return Err(KeepalivedError::UnexpectedOpen { line });
                        }
                        None => return Err(KeepalivedError::UnexpectedOpen { line }),
                    },
                };
                if stack.len() > MAX_DEPTH {
                    return Err(KeepalivedError::TooDeep { line });
                }
                stack.push((Vec::new(), Some((opener, line))));
            }
            Token::Close => {
                stack[top].0.extend(current.take());
                if top == 0 {
                    return Err(KeepalivedError::UnexpectedClose { line });
                }
                if let Some((items, Some((mut opener, _)))) = stack.pop() {
                    opener.block = Some(items);
                    stack[top - 1].0.push(opener);
                }
            }
        }
    }
    let top = stack.len() - 1;
    stack[top].0.extend(current.take());
    if let Some((_, Some((_, line)))) = stack.last()
        && top > 0
    {
        return Err(KeepalivedError::Unclosed { line: *line });
    }
    Ok(stack.pop().map(|(items, _)| items).unwrap_or_default())
}

/// The `vrrp_instance` blocks of a parsed file.
#[must_use]
pub fn instances(items: &[Item]) -> Vec<Instance> {
    items
        .iter()
        .filter(|i| i.condition.is_none() && i.keyword() == "vrrp_instance")
        .map(|i| Instance {
            name: i.arg(1).unwrap_or("").to_owned(),
            line: i.line,
        })
        .collect()
}

/// One instance converted.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The instance converted.
    pub instance: Instance,
    /// The node's configuration, as TOML the node's loader accepts.
    pub toml: String,
    /// What was not carried, in line order.
    pub notes: Vec<Note>,
}

#[derive(Serialize)]
struct OutConfig {
    id: String,
    state_dir: String,
    vrrp: OutVrrp,
}

#[derive(Serialize)]
struct OutVrrp {
    transport: &'static str,
    interface: String,
    version: u8,
    vrid: u8,
    priority: u8,
    advert_interval_ms: u64,
    preempt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    preempt_delay_ms: Option<u64>,
    accept: bool,
    virtual_ips: Vec<String>,
    unicast_peers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v3_ipv4_checksum: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    garp_count: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    garp_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rt_priority: Option<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_swap: bool,
}

/// What `global_defs` gives every instance.
#[derive(Default)]
struct Globals {
    router_id: Option<String>,
    version: Option<(u8, usize)>,
    garp_count: Option<u8>,
    garp_interval_ms: Option<u64>,
    rt_priority: Option<u8>,
    no_swap: bool,
}

struct Notes(Vec<Note>);

impl Notes {
    fn add(&mut self, line: usize, keyword: &str, hint: impl Into<String>) {
        self.0.push(Note {
            line,
            keyword: keyword.to_owned(),
            hint: hint.into(),
        });
    }

    /// A conditional line: never applied.
    fn condition(&mut self, item: &Item) {
        if let Some(id) = &item.condition {
            self.add(
                item.line,
                &format!("@{id}"),
                format!(
                    "conditional line (keepalived -i {id}) not applied; set its value \
                     in this unit's TOML"
                ),
            );
        }
    }
}

const NO_EQUIVALENT: &str = "not carried: the node has no equivalent";
const NOT_MAILED: &str = "not carried: the node sends no mail; GET /status and its log report \
                          role changes";

fn number<T: std::str::FromStr>(item: &Item, what: &str) -> Result<T, KeepalivedError> {
    let word = item
        .arg(1)
        .ok_or_else(|| invalid(item.line, item.keyword(), format!("expects {what}")))?;
    word.parse()
        .map_err(|_| invalid(item.line, item.keyword(), format!("`{word}` is not {what}")))
}

/// Seconds (fractions allowed) as whole milliseconds.
fn seconds_ms(item: &Item, max_s: f64) -> Result<u64, KeepalivedError> {
    let s: f64 = number(item, "a number of seconds")?;
    if !s.is_finite() || s < 0.0 || s > max_s {
        return Err(invalid(
            item.line,
            item.keyword(),
            format!("{s} is not 0-{max_s} seconds"),
        ));
    }
    Ok((s * 1000.0).round() as u64)
}

fn globals(items: &[Item], notes: &mut Notes) -> Result<Globals, KeepalivedError> {
    let mut g = Globals::default();
    for item in items {
        if item.condition.is_some() {
            notes.condition(item);
            continue;
        }
        match item.keyword() {
            "router_id" => g.router_id = item.arg(1).map(str::to_owned),
            "vrrp_version" => g.version = Some((version(item)?, item.line)),
            "vrrp_garp_master_repeat" => g.garp_count = Some(number(item, "a count 0-255")?),
            "vrrp_garp_interval" => g.garp_interval_ms = Some(seconds_ms(item, 3600.0)?),
            "vrrp_no_swap" => g.no_swap = true,
            "vrrp_rt_priority" => {
                let p: u8 = number(item, "a priority 1-99")?;
                if (1..=99).contains(&p) {
                    g.rt_priority = Some(p);
                } else {
                    notes.add(
                        item.line,
                        item.keyword(),
                        "not carried: the node takes 1-99",
                    );
                }
            }
            "vrrp_strict" => notes.add(
                item.line,
                item.keyword(),
                "not carried: the node follows the RFC's receive rules and sets accept \
                 itself (vrrp.accept)",
            ),
            "enable_script_security" | "script_user" => notes.add(
                item.line,
                item.keyword(),
                "not carried: [[service]] commands run as the node's user",
            ),
            kw @ ("notification_email"
            | "notification_email_from"
            | "smtp_server"
            | "smtp_connect_timeout"
            | "smtp_helo_name") => {
                notes.add(item.line, kw, NOT_MAILED);
            }
            kw => notes.add(item.line, kw, NO_EQUIVALENT),
        }
    }
    Ok(g)
}

fn version(item: &Item) -> Result<u8, KeepalivedError> {
    match item.arg(1) {
        Some("2") => Ok(2),
        Some("3") => Ok(3),
        other => Err(invalid(
            item.line,
            item.keyword(),
            format!("must be 2 or 3, got `{}`", other.unwrap_or("")),
        )),
    }
}

/// Notes for a top-level section that is not the converted instance.
fn top_level(item: &Item, notes: &mut Notes) {
    let hint = match item.keyword() {
        "global_defs" | "vrrp_instance" => return,
        "vrrp_sync_group" => {
            "not carried: a node runs one virtual router, and the pair engine moves \
             the whole node (address, services, phones) as one"
        }
        "vrrp_script" => {
            "not carried: health checks become tracked objects of the election \
             (vrrp_fsm's track API) in a node of your own"
        }
        "include" => "not followed: convert the included file on its own, or paste it in",
        "virtual_server" | "virtual_server_group" | "real_server" => {
            "not carried: the node does no load balancing (LVS)"
        }
        "static_ipaddress" | "static_routes" | "static_rules" => {
            "not carried: set up static addresses, routes and rules in the system's \
             network configuration"
        }
        "net_namespace" => "not carried: run the node in the namespace instead",
        kw if kw.starts_with('$') => "parameter not expanded: write the value out",
        _ => NO_EQUIVALENT,
    };
    notes.add(item.line, item.keyword(), hint);
}

/// Converts one `vrrp_instance` of a keepalived configuration: the
/// instance named `instance`, or the file's only one.
///
/// # Errors
/// [`KeepalivedError`]: a file that does not parse, no instance, several
/// and none named, an unknown name, a value the node cannot take.
pub fn convert(text: &str, instance: Option<&str>) -> Result<Conversion, KeepalivedError> {
    let items = parse(text)?;
    let all = instances(&items);
    let mut notes = Notes(Vec::new());
    let chosen = match (instance, all.as_slice()) {
        (_, []) => {
            let mut includes = Notes(Vec::new());
            for item in items.iter().filter(|i| i.keyword() == "include") {
                top_level(item, &mut includes);
            }
            return Err(KeepalivedError::NoInstance {
                includes: includes.0,
            });
        }
        (None, [one]) => one.clone(),
        (None, _) => return Err(KeepalivedError::SeveralInstances { instances: all }),
        (Some(name), _) => all
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .ok_or_else(|| KeepalivedError::UnknownInstance {
                name: name.to_owned(),
                instances: all.clone(),
            })?,
    };
    let mut g = Globals::default();
    let mut block = None;
    for item in &items {
        if item.condition.is_some() {
            notes.condition(item);
            continue;
        }
        match item.keyword() {
            "global_defs" => g = globals(item.children(), &mut notes)?,
            "vrrp_instance" if item.line == chosen.line => block = Some(item),
            _ => top_level(item, &mut notes),
        }
    }
    let Some(block) = block else {
        // `instances` found it among these items.
        return Err(KeepalivedError::UnknownInstance {
            name: chosen.name,
            instances: all,
        });
    };
    let vrrp = instance_vrrp(&chosen, block, &g, &mut notes)?;
    let id = g.router_id.unwrap_or_else(|| chosen.name.clone());
    let state_dir = format!(
        "{}.state",
        id.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            })
            .collect::<String>()
    );
    let out = OutConfig {
        id,
        state_dir,
        vrrp,
    };
    let body =
        toml::to_string(&out).map_err(|e| invalid(chosen.line, "vrrp_instance", e.to_string()))?;
    let toml = format!(
        "# The node's configuration for keepalived's vrrp_instance {} (line {}).\n\
         # What was not carried is listed on stderr. state_dir is taken from this\n\
         # file's folder. Add [sync], [status] and [[service]] tables as\n\
         # examples/node.example.toml documents them.\n\n{body}",
        chosen.name, chosen.line
    );
    // The node's own loader is the judge of what it accepts.
    crate::config::NodeConfig::parse(&toml, std::path::Path::new("."))?;
    notes.0.sort_by_key(|n| n.line);
    Ok(Conversion {
        instance: chosen,
        toml,
        notes: notes.0,
    })
}

fn instance_vrrp(
    chosen: &Instance,
    block: &Item,
    g: &Globals,
    notes: &mut Notes,
) -> Result<OutVrrp, KeepalivedError> {
    let mut interface = None;
    let mut vrid = None;
    let mut priority = 100u8;
    let mut advert: Option<(f64, usize)> = None;
    let mut preempt = true;
    let mut preempt_delay: Option<(u64, usize)> = None;
    let mut accept = true;
    let mut vip_items: Vec<&Item> = Vec::new();
    let mut vip_line = block.line;
    let mut peers = Vec::new();
    let mut auth: Option<(String, usize)> = None;
    let mut auth_type: Option<(String, usize)> = None;
    let mut version = g.version;
    let mut checksum = None;
    let mut garp_count = g.garp_count;
    let mut garp_interval_ms = g.garp_interval_ms;
    for item in block.children() {
        if item.condition.is_some() {
            notes.condition(item);
            continue;
        }
        let kw = item.keyword();
        match kw {
            "interface" => {
                interface = Some(
                    item.arg(1)
                        .ok_or_else(|| invalid(item.line, kw, "expects an interface name"))?
                        .to_owned(),
                );
            }
            "virtual_router_id" => {
                let v: u16 = number(item, "a virtual router id 1-255")?;
                if !(1..=255).contains(&v) {
                    return Err(invalid(item.line, kw, format!("must be 1-255, got {v}")));
                }
                vrid = Some(v as u8);
            }
            "priority" => {
                let v: u16 = number(item, "a priority 1-255")?;
                if !(1..=255).contains(&v) {
                    return Err(invalid(item.line, kw, format!("must be 1-255, got {v}")));
                }
                priority = v as u8;
            }
            "advert_int" => {
                let s: f64 = number(item, "a number of seconds")?;
                if !s.is_finite() || s <= 0.0 {
                    return Err(invalid(item.line, kw, format!("{s} is not a positive number of seconds")));
                }
                advert = Some((s, item.line));
            }
            "nopreempt" => preempt = false,
            "preempt" => preempt = true,
            "preempt_delay" => preempt_delay = Some((seconds_ms(item, 1000.0)?, item.line)),
            "accept" => accept = true,
            "no_accept" => accept = false,
            "virtual_ipaddress" => {
                vip_line = item.line;
                vip_items.extend(item.children());
            }
            "unicast_peer" => {
                for p in item.children() {
                    if p.condition.is_some() {
                        notes.condition(p);
                        continue;
                    }
                    let ip: IpAddr = p.keyword().parse().map_err(|_| {
                        invalid(p.line, "unicast_peer", format!("`{}` is not an IP address", p.keyword()))
                    })?;
                    peers.push(ip);
                    for extra in p.words.iter().skip(1).step_by(2) {
                        notes.add(p.line, extra, NO_EQUIVALENT);
                    }
                }
            }
            "unicast_src_ip" => notes.add(
                item.line,
                kw,
                "not carried: the node sends from the interface's primary address; make it this one",
            ),
            "authentication" => {
                for a in item.children() {
                    match a.keyword() {
                        "auth_type" => {
                            auth_type = Some((a.arg(1).unwrap_or("").to_owned(), a.line));
                        }
                        "auth_pass" => auth = Some((a.arg(1).unwrap_or("").to_owned(), a.line)),
                        other => notes.add(a.line, other, NO_EQUIVALENT),
                    }
                }
            }
            "version" => version = Some((self::version(item)?, item.line)),
            "v3_checksum_as_v2" => checksum = Some("message-only"),
            "garp_master_repeat" => garp_count = Some(number(item, "a count 0-255")?),
            "garp_interval" => garp_interval_ms = Some(seconds_ms(item, 3600.0)?),
            "native_ipv6" => {}
            "state" => {
                let hint = match item.arg(1) {
                    Some("MASTER" | "BACKUP") => {
                        "not carried: the node starts as Backup and the election decides \
                         (priority, preempt)"
                    }
                    _ => "not carried (keepalived takes MASTER or BACKUP)",
                };
                notes.add(item.line, kw, hint);
            }
            "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify"
            | "notify_master_rx_lower_pri" | "notify_deleted" => notes.add(
                item.line,
                kw,
                "not carried: the node starts and stops [[service]] hooks as it becomes \
                 Master and stops being it (start, stop, ready, after)",
            ),
            "track_script" | "track_interface" | "track_file" | "track_process" | "track_bfd" => {
                notes.add(
                    item.line,
                    kw,
                    "not carried: tracked objects lower the priority or fault the \
                     router (vrrp_fsm's track API), wired in a node of your own",
                )
            }
            "use_vmac" | "vmac_xmit_base" => notes.add(
                item.line,
                kw,
                "not carried: the node claims the addresses on the interface with the \
                 interface's own MAC and announces them with gratuitous ARP / NA",
            ),
            "smtp_alert" => notes.add(item.line, kw, NOT_MAILED),
            _ => notes.add(item.line, kw, NO_EQUIVALENT),
        }
    }
    let interface = interface.ok_or_else(|| KeepalivedError::Missing {
        instance: chosen.name.clone(),
        line: chosen.line,
        keyword: "interface",
    })?;
    let vrid = vrid.ok_or_else(|| KeepalivedError::Missing {
        instance: chosen.name.clone(),
        line: chosen.line,
        keyword: "virtual_router_id",
    })?;

    // Virtual addresses: one per line, with options.
    let mut vips: Vec<(IpAddr, u8)> = Vec::new();
    for v in vip_items {
        if v.condition.is_some() {
            notes.condition(v);
            continue;
        }
        let word = v.keyword();
        let (addr, prefix) = match word.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (word, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            invalid(
                v.line,
                "virtual_ipaddress",
                format!("`{word}` is not an address or ADDRESS/PREFIX"),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                invalid(
                    v.line,
                    "virtual_ipaddress",
                    format!("prefix `{p}` is not 0-{max}"),
                )
            })?,
        };
        let mut opts = v.words.iter().skip(1).map(String::as_str);
        while let Some(opt) = opts.next() {
            match opt {
                "dev" => match opts.next() {
                    Some(dev) if dev == interface => {}
                    Some(dev) => notes.add(
                        v.line,
                        opt,
                        format!(
                            "not carried: the node claims every address on its one \
                             interface ({interface}), not on {dev}"
                        ),
                    ),
                    None => notes.add(v.line, opt, "expects an interface name"),
                },
                "label" | "brd" | "broadcast" | "scope" | "track_group" | "preferred_lft" => {
                    opts.next();
                    notes.add(v.line, opt, NO_EQUIVALENT);
                }
                other => notes.add(v.line, other, NO_EQUIVALENT),
            }
        }
        if vips.iter().any(|(a, _)| *a == addr) {
            notes.add(v.line, word, "the address is listed twice: carried once");
            continue;
        }
        vips.push((addr, prefix));
    }
    if vips.is_empty() {
        return Err(KeepalivedError::Missing {
            instance: chosen.name.clone(),
            line: chosen.line,
            keyword: "virtual_ipaddress",
        });
    }

    // keepalived's default is VRRPv2; IPv6 needs v3 (keepalived switches).
    let mut version_n = version.map_or(2, |(v, _)| v);
    if version_n == 2 && vips[0].0.is_ipv6() {
        notes.add(
            vip_line,
            "virtual_ipaddress",
            "IPv6 needs VRRPv3: version 3, as keepalived sets it",
        );
        version_n = 3;
    }
    let advert_interval_ms = match advert {
        None => 1000,
        Some((s, line)) if version_n == 2 => {
            let whole = s.ceil();
            if whole > 255.0 {
                return Err(invalid(line, "advert_int", "VRRPv2 takes 1-255 seconds"));
            }
            if whole != s {
                notes.add(
                    line,
                    "advert_int",
                    format!("VRRPv2 takes whole seconds: {whole} s"),
                );
            }
            whole as u64 * 1000
        }
        Some((s, line)) => {
            let centis = (s * 100.0).round();
            if !(1.0..=4095.0).contains(&centis) {
                return Err(invalid(
                    line,
                    "advert_int",
                    "VRRPv3 takes 0.01-40.95 seconds",
                ));
            }
            centis as u64 * 10
        }
    };
    let preempt_delay_ms = match preempt_delay {
        Some((ms, _)) if preempt => Some(ms),
        Some((_, line)) => {
            notes.add(
                line,
                "preempt_delay",
                "ignored with nopreempt, as keepalived does",
            );
            None
        }
        None => None,
    };
    let auth_pass = match (auth_type, auth) {
        (None, None) => None,
        (Some((t, line)), pass) if t != "PASS" => {
            notes.add(
                line,
                "auth_type",
                format!(
                    "{t} is not carried: the node's VRRP takes only the VRRPv2 password; \
                     the peer link is authenticated by [sync] key_file"
                ),
            );
            if let Some((_, l)) = pass {
                notes.add(l, "auth_pass", "not carried with auth_type AH");
            }
            None
        }
        (_, None) => None,
        (_, Some((_, line))) if version_n == 3 => {
            notes.add(
                line,
                "auth_pass",
                "not carried: VRRPv3 has no authentication; the peer link is \
                 authenticated by [sync] key_file",
            );
            None
        }
        (_, Some((mut pass, line))) => {
            if pass.len() > 8 {
                let mut end = 8;
                while !pass.is_char_boundary(end) {
                    end -= 1;
                }
                pass.truncate(end);
                notes.add(
                    line,
                    "auth_pass",
                    format!("the password is 8 bytes at most: `{pass}`, as keepalived cuts it"),
                );
            }
            Some(pass)
        }
    };
    Ok(OutVrrp {
        transport: "raw",
        interface,
        version: version_n,
        vrid,
        priority,
        advert_interval_ms,
        preempt,
        preempt_delay_ms,
        accept,
        virtual_ips: vips.iter().map(|(a, p)| format!("{a}/{p}")).collect(),
        unicast_peers: peers.iter().map(IpAddr::to_string).collect(),
        v3_ipv4_checksum: checksum,
        auth_pass,
        garp_count,
        garp_interval_ms,
        rt_priority: g.rt_priority,
        no_swap: g.no_swap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use std::path::Path;

    fn words(text: &str) -> Vec<Token> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    fn w(s: &str) -> Token {
        Token::Word(s.into())
    }

    #[test]
    fn tokens_comments_quotes_and_braces() {
        assert_eq!(
            words("vrrp_instance VI_1{ # comment\n  state MASTER ! other\n}"),
            [
                w("vrrp_instance"),
                w("VI_1"),
                Token::Open,
                w("state"),
                w("MASTER"),
                Token::Close
            ]
        );
        assert_eq!(
            words(r#"notify "/bin/x \"a b\" \\ c" after"#),
            [w("notify"), w(r#"/bin/x "a b" \ c"#), w("after")]
        );
        // A `#` inside a word is part of it (a password may hold one).
        assert_eq!(words("auth_pass ab#1"), [w("auth_pass"), w("ab#1")]);
        assert_eq!(words("script \"a # b\""), [w("script"), w("a # b")]);
        assert_eq!(
            tokenize("a\n b \"open").unwrap_err().to_string(),
            "line 2: unterminated quoted string"
        );
        assert_eq!(tokenize("x\r\ny").unwrap(), [(1, w("x")), (2, w("y"))]);
    }

    #[test]
    fn blocks_nest_and_keep_their_lines() {
        let items = parse("a 1\nb {\n  c\n  d { e f }\n}\ng\n{\n h\n}\n").unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].words, ["a", "1"]);
        assert_eq!(items[1].line, 2);
        let b = items[1].children();
        assert_eq!(b[0].words, ["c"]);
        assert_eq!(b[1].line, 4);
        assert_eq!(b[1].children()[0].words, ["e", "f"]);
        // A `{` on the line after its keyword.
        assert_eq!(items[2].words, ["g"]);
        assert_eq!(items[2].children()[0].line, 8);
    }

    #[test]
    fn unbalanced_braces_are_errors_with_their_line() {
        assert!(matches!(
            parse("a {\n b\n"),
            Err(KeepalivedError::Unclosed { line: 1 })
        ));
        assert!(matches!(
            parse("a\n}\n"),
            Err(KeepalivedError::UnexpectedClose { line: 2 })
        ));
        assert!(matches!(
            parse("{\n"),
            Err(KeepalivedError::UnexpectedOpen { line: 1 })
        ));
        let deep = "a {\n".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(&deep), Err(KeepalivedError::TooDeep { .. })));
    }

    #[test]
    fn conditional_lines_are_marked() {
        let items = parse("@high priority 170\n@^low x\n").unwrap();
        assert_eq!(items[0].condition.as_deref(), Some("high"));
        assert_eq!(items[0].words, ["priority", "170"]);
        assert_eq!(items[1].condition.as_deref(), Some("^low"));
    }

    const PBX: &str = r#"global_defs {
   router_id pbx-a
   enable_script_security
}
vrrp_sync_group PBX {
  group {
    VI_VOICE
  }
}
vrrp_script chk_sip {
  script "/usr/local/bin/sip-alive"
  interval 2
}
vrrp_instance VI_VOICE {
    state BACKUP
    interface ens192
    virtual_router_id 51
    priority 150
    advert_int 1
    nopreempt
    preempt_delay 30
    unicast_src_ip 10.0.0.11
    unicast_peer {
        10.0.0.12
    }
    authentication {
        auth_type PASS
        auth_pass "s3cret-long"
    }
    virtual_ipaddress {
        10.0.0.100/24 dev ens192
        10.0.0.101 dev ens224 label ens224:1
    }
    track_script {
        chk_sip
    }
    notify_master "/usr/local/bin/pbx-up"
}
"#;

    fn hints(c: &Conversion) -> Vec<String> {
        c.notes.iter().map(Note::to_string).collect()
    }

    #[test]
    fn a_pbx_instance_carries_and_notes() {
        let c = convert(PBX, None).unwrap();
        let n = NodeConfig::parse(&c.toml, Path::new("/etc/pbx")).unwrap();
        assert_eq!(n.id, "pbx-a");
        assert_eq!(n.state_dir, Path::new("/etc/pbx/pbx-a.state"));
        let v = &n.vrrp;
        assert_eq!(v.interface.as_deref(), Some("ens192"));
        assert_eq!(v.version, vrrp_proto::Version::V2);
        assert_eq!(v.vrid.get(), 51);
        assert_eq!(v.priority.get(), 150);
        assert_eq!(v.interval.as_centis(), 100);
        assert!(!v.preempt);
        assert_eq!(v.auth_pass.as_deref(), Some("s3cret-l"));
        assert_eq!(v.unicast_peers, ["10.0.0.12".parse::<IpAddr>().unwrap()]);
        let vips: Vec<String> = v
            .virtual_ips
            .iter()
            .map(|a| format!("{}/{}", a.addr, a.prefix))
            .collect();
        assert_eq!(vips, ["10.0.0.100/24", "10.0.0.101/32"]);
        let h = hints(&c);
        for expected in [
            "line 3: enable_script_security: ",
            "line 5: vrrp_sync_group: not carried",
            "line 10: vrrp_script: ",
            "line 15: state: ",
            "line 21: preempt_delay: ignored with nopreempt",
            "line 22: unicast_src_ip: ",
            "line 28: auth_pass: the password is 8 bytes at most",
            "line 32: dev: ",
            "line 32: label: ",
            "line 34: track_script: not carried: tracked objects",
            "line 37: notify_master: not carried: the node starts and stops [[service]] hooks",
        ] {
            assert!(
                h.iter().any(|l| l.starts_with(expected)),
                "no `{expected}` in {h:#?}"
            );
        }
        // Line 31's `dev ens192` is the instance's own interface: carried.
        assert!(!h.iter().any(|l| l.starts_with("line 31:")), "{h:#?}");
        // Lines are in order.
        assert!(c.notes.windows(2).all(|p| p[0].line <= p[1].line));
    }

    #[test]
    fn keepalived_defaults_are_written_out() {
        let c = convert(
            "vrrp_instance X {\n interface eth0\n virtual_router_id 7\n \
             virtual_ipaddress {\n  192.0.2.1\n }\n}\n",
            None,
        )
        .unwrap();
        let n = NodeConfig::parse(&c.toml, Path::new(".")).unwrap();
        assert_eq!(n.id, "X");
        // keepalived preempts and speaks VRRPv2 unless told otherwise.
        assert!(n.vrrp.preempt);
        assert_eq!(n.vrrp.version, vrrp_proto::Version::V2);
        assert_eq!(n.vrrp.priority.get(), 100);
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn v3_fractions_ipv6_and_auth() {
        let text = "global_defs {\n vrrp_version 3\n}\nvrrp_instance X {\n interface eth0\n \
                    virtual_router_id 7\n advert_int 0.05\n preempt_delay 2.5\n \
                    authentication {\n  auth_type PASS\n  auth_pass x\n }\n \
                    virtual_ipaddress {\n  fe80::1\n  2001:db8::1/64\n }\n}\n";
        let c = convert(text, None).unwrap();
        let n = NodeConfig::parse(&c.toml, Path::new(".")).unwrap();
        assert_eq!(n.vrrp.version, vrrp_proto::Version::V3);
        assert_eq!(n.vrrp.interval.as_centis(), 5);
        assert_eq!(n.vrrp.preempt_delay.as_millis(), 2500);
        assert_eq!(n.vrrp.auth_pass, None);
        assert!(
            hints(&c)
                .iter()
                .any(|h| h.starts_with("line 11: auth_pass: not carried"))
        );
        // v2 with IPv6 becomes v3, and a fraction of a second is rounded up.
        let c = convert(&text.replace("vrrp_version 3", "vrrp_version 2"), None).unwrap();
        assert!(c.toml.contains("version = 3"));
        let c = convert(
            &text
                .replace("fe80::1\n  2001:db8::1/64", "192.0.2.1")
                .replace("vrrp_version 3", "vrrp_version 2"),
            None,
        )
        .unwrap();
        assert!(c.toml.contains("advert_interval_ms = 1000"), "{}", c.toml);
        assert!(
            hints(&c)
                .iter()
                .any(|h| h == "line 7: advert_int: VRRPv2 takes whole seconds: 1 s")
        );
    }

    #[test]
    fn instance_selection() {
        let two = "vrrp_instance A {\n}\nvrrp_instance B {\n}\n";
        match convert(two, None) {
            Err(e @ KeepalivedError::SeveralInstances { .. }) => {
                assert!(e.to_string().ends_with("A (line 1), B (line 3)"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            convert(two, Some("C")),
            Err(KeepalivedError::UnknownInstance { .. })
        ));
        assert!(matches!(
            convert(two, Some("B")),
            Err(KeepalivedError::Missing {
                keyword: "interface",
                line: 3,
                ..
            })
        ));
        match convert("include /etc/keepalived/*.conf\nglobal_defs {\n}\n", None) {
            Err(KeepalivedError::NoInstance { includes }) => {
                assert_eq!(includes[0].line, 1);
                assert_eq!(includes[0].keyword, "include");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_the_node_cannot_take_are_errors() {
        let base = "vrrp_instance X {\n interface eth0\n virtual_router_id 7\n \
                    virtual_ipaddress {\n  192.0.2.1\n }\n}\n";
        let bad = |from: &str, to: &str| convert(&base.replace(from, to), None).unwrap_err();
        assert_eq!(
            bad("virtual_router_id 7", "virtual_router_id 300").to_string(),
            "line 3: virtual_router_id: must be 1-255, got 300"
        );
        assert!(
            bad("192.0.2.1", "192.0.2.x")
                .to_string()
                .starts_with("line 5: virtual_ipaddress")
        );
        assert!(matches!(
            bad("192.0.2.1", "127.0.0.5"),
            KeepalivedError::NotAccepted(_)
        ));
        assert!(matches!(
            bad("192.0.2.1\n", ""),
            KeepalivedError::Missing {
                keyword: "virtual_ipaddress",
                ..
            }
        ));
    }

    proptest::proptest! {
        /// Never a panic, whatever the bytes; and when a file converts, the
        /// node's loader takes it.
        #[test]
        fn never_panics(text in "[ -~\n\t{}\"#!@]{0,400}") {
            if let Ok(c) = convert(&text, None) {
                proptest::prop_assert!(NodeConfig::parse(&c.toml, Path::new(".")).is_ok());
            }
        }

        /// Any text at all, multi-byte characters included.
        #[test]
        fn never_panics_on_any_text(text in "(?s).{0,300}") {
            let _ = convert(&text, None);
        }

        #[test]
        fn never_panics_on_keepalived_words(
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("vrrp_instance".to_owned()),
                    proptest::strategy::Just("virtual_ipaddress".to_owned()),
                    proptest::strategy::Just("interface".to_owned()),
                    proptest::strategy::Just("virtual_router_id".to_owned()),
                    proptest::strategy::Just("advert_int".to_owned()),
                    proptest::strategy::Just("authentication".to_owned()),
                    proptest::strategy::Just("auth_pass".to_owned()),
                    proptest::strategy::Just("{".to_owned()),
                    proptest::strategy::Just("}".to_owned()),
                    proptest::strategy::Just("\n".to_owned()),
                    "[0-9./:a-f]{1,12}",
                ],
                0..80,
            )
        ) {
            let text = words.join(" ");
            let _ = convert(&text, None);
            let _ = convert(&text, Some("x"));
        }
    }
}
