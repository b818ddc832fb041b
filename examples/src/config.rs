//! The `node` configuration file (TOML), validated before anything is
//! touched. Every key is documented in `examples/node.example.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that cannot be used, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown (toml's message
    /// names the key and the line).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// toml's message.
        message: String,
    },
    /// A key with a value this node cannot use.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `vrrp.priority`.
        key: String,
        /// Why.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// How advertisements travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// IP protocol 112 on an interface, as keepalived and routers speak it.
    Raw,
    /// The same advertisements over UDP between configured addresses.
    Udp,
}

/// Which VRRPv3-over-IPv4 checksum form to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumForm {
    /// With the IPv4 pseudo-header (keepalived's default).
    PseudoHeader,
    /// Over the message only (keepalived's `v3_checksum_as_v2`).
    MessageOnly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: String,
    #[serde(default = "yes")]
    redundancy: bool,
    state_dir: Option<PathBuf>,
    phones: Option<PathBuf>,
    vrrp: RawVrrp,
    sync: Option<RawSync>,
    status: Option<RawStatus>,
    identity: Option<Identity>,
    hooks: Option<RawHooks>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    staging_dir: Option<PathBuf>,
    max_image_mib: Option<u64>,
    save_config: Option<String>,
    upgrade: Option<String>,
    version: Option<String>,
    restore: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVrrp {
    transport: Option<Transport>,
    interface: Option<String>,
    version: Option<u8>,
    vrid: u8,
    priority: Option<u16>,
    advert_interval_ms: Option<u64>,
    preempt: Option<bool>,
    preempt_delay_ms: Option<u64>,
    accept: Option<bool>,
    virtual_ips: Vec<String>,
    #[serde(default)]
    unicast_peers: Vec<IpAddr>,
    v3_ipv4_checksum: Option<ChecksumForm>,
    auth_pass: Option<String>,
    udp_listen: Option<SocketAddr>,
    #[serde(default)]
    udp_peers: Vec<SocketAddr>,
    garp_count: Option<u8>,
    garp_interval_ms: Option<u64>,
    startup_delay_ms: Option<u64>,
    rt_priority: Option<u8>,
    #[serde(default)]
    no_swap: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    listen: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    interval_s: Option<u64>,
    watch: Option<bool>,
    batch_ms: Option<u64>,
    key_file: PathBuf,
    key_file_next: Option<PathBuf>,
    #[serde(default)]
    exclude: Vec<String>,
    mass_delete_fraction: Option<f64>,
    mass_delete_window_h: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: SocketAddr,
    backup_gui_port: Option<u16>,
    token_file: Option<PathBuf>,
    allowed_hosts: Option<Vec<String>>,
}

/// `[hooks]`: the vendor's commands behind the operator's procedures, and
/// the folder where images and archives wait for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcedureHooks {
    /// Where uploaded firmware images, language packs and configuration
    /// archives are kept, and the only folder a request may name a file
    /// in. Default: `staging` in the state directory.
    pub staging_dir: PathBuf,
    /// The largest image or archive accepted, in bytes (`max_image_mib`,
    /// default 1024 MiB).
    pub max_image_bytes: u64,
    /// Saves the configuration (run on each unit before an upgrade).
    pub save_config: Option<String>,
    /// Installs an image: `$1` is its path; `PBX_IMAGE_KIND` is
    /// `firmware` or `language_pack`, `PBX_IMAGE_VERSION` its version.
    pub upgrade: Option<String>,
    /// Prints the installed versions as `firmware=…` and
    /// `language_pack=…` lines; read at start and after each install,
    /// and overriding `[identity]`'s two fields.
    pub version: Option<String>,
    /// Restores a configuration archive: `$1` is its path.
    pub restore: Option<String>,
}

/// What the peer's parity check compares (manual: same firmware, language
/// pack and licences on both units).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Firmware version.
    #[serde(default)]
    pub firmware: String,
    /// Language pack.
    #[serde(default)]
    pub language_pack: String,
    /// Licence keys installed.
    #[serde(default)]
    pub licenses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    start: String,
    stop: Option<String>,
    ready: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    start_timeout_ms: Option<u64>,
    stop_timeout_ms: Option<u64>,
}

/// A virtual address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualIp {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length (default 32 / 128).
    pub prefix: u8,
}

/// The `[vrrp]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vrrp {
    /// Transport.
    pub transport: Transport,
    /// Interface (raw transport).
    pub interface: Option<String>,
    /// 2 or 3.
    pub version: vrrp_proto::Version,
    /// Virtual router id.
    pub vrid: vrrp_proto::Vrid,
    /// Priority 1–255.
    pub priority: vrrp_proto::Priority,
    /// Advertisement interval.
    pub interval: vrrp_proto::Interval,
    /// Preempt a lower-priority Master (appliance default: off).
    pub preempt: bool,
    /// Preempt delay.
    pub preempt_delay: Duration,
    /// Accept mode (appliance default: on).
    pub accept: bool,
    /// Virtual addresses, one family.
    pub virtual_ips: Vec<VirtualIp>,
    /// Unicast peers; empty for multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// v3/IPv4 checksum form to send.
    pub v3_ipv4_checksum: ChecksumForm,
    /// VRRPv2 simple password.
    pub auth_pass: Option<String>,
    /// UDP transport: where to listen.
    pub udp_listen: Option<SocketAddr>,
    /// UDP transport: where to send.
    pub udp_peers: Vec<SocketAddr>,
    /// Gratuitous ARP / NA burst length on becoming Master.
    pub garp_count: u8,
    /// Spacing of that burst.
    pub garp_interval: Duration,
    /// Do not claim Master for this long after start.
    pub startup_delay: Duration,
    /// SCHED_FIFO priority (1-99) of the election thread, as keepalived's
    /// `vrrp_rt_priority`; `None` for normal scheduling.
    pub rt_priority: Option<u8>,
    /// Lock the node's memory (mlockall), as keepalived's `vrrp_no_swap`.
    pub no_swap: bool,
}

/// The `[sync]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// Where this node accepts the peer link.
    pub listen: SocketAddr,
    /// Where the peer accepts it.
    pub peer: SocketAddr,
    /// The replicated tree.
    pub dir: PathBuf,
    /// `interval_s`: the full-scan period (the whole tree walked and
    /// compared; with `watch` off, every round is one), and the Backup's
    /// round interval when it is told of no change (default 60 s).
    pub interval: Duration,
    /// `watch`: the Master's tree is watched (the kernel's change
    /// notifications) and rounds are built from what changed, the Backup
    /// told at once (default true).
    pub watch: bool,
    /// `batch_ms`: how long changes are collected before the Backup is
    /// told, so that a burst of writes makes one round (default 100 ms).
    pub batch: Duration,
    /// The pre-shared key file (64 hex digits).
    pub key_file: PathBuf,
    /// During a key rotation, the next key's file: the peer may prove
    /// either key when it dials (this node dials with `key_file`).
    pub key_file_next: Option<PathBuf>,
    /// Patterns never replicated.
    pub exclude: Vec<String>,
    /// `mass_delete_fraction`: the share of the tree's content bytes a
    /// round, with the rounds of the window, may lose before it needs a
    /// confirmation (default 0.5).
    pub mass_delete_fraction: Fraction,
    /// `mass_delete_window_h`: how far back lost content counts (default
    /// 24 h; 0: each round on its own).
    pub mass_delete_window: Duration,
}

/// A share in (0, 1], checked when read: never NaN, so it compares as a
/// whole number would.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(f64);

impl Eq for Fraction {}

impl Fraction {
    /// `value` if it is in (0, 1].
    #[must_use]
    pub fn new(value: f64) -> Option<Fraction> {
        (value > 0.0 && value <= 1.0).then_some(Fraction(value))
    }

    /// The share.
    #[must_use]
    pub fn get(self) -> f64 {
        self.0
    }
}

/// The mass-deletion guard's settings, as the `[sync]` keys
/// `mass_delete_fraction` and `mass_delete_window_h` (and the `sync`
/// tool's flags) give them: a share in (0, 1] and a window of hours ≥ 0.
///
/// # Errors
/// What is wrong, naming the key (`key_prefix` then the key's name).
pub fn mass_delete_settings(
    key_prefix: &str,
    fraction: Option<f64>,
    window_h: Option<f64>,
) -> Result<(Fraction, Duration), ConfigError> {
    let fraction = fraction.unwrap_or(0.5);
    let fraction = Fraction::new(fraction).ok_or_else(|| {
        invalid(
            format!("{key_prefix}mass_delete_fraction"),
            format!("{fraction} is not a share of the tree in (0, 1]"),
        )
    })?;
    let hours = window_h.unwrap_or(24.0);
    let window = (hours >= 0.0)
        .then(|| Duration::try_from_secs_f64(hours * 3600.0).ok())
        .flatten()
        .ok_or_else(|| {
            invalid(
                format!("{key_prefix}mass_delete_window_h"),
                format!("{hours} is not a number of hours, 0 or more"),
            )
        })?;
    Ok((fraction, window))
}

/// The `[status]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HTTP status endpoint.
    pub listen: SocketAddr,
    /// On the Master: a port forwarded to the Backup's status page.
    pub backup_gui_port: Option<u16>,
    /// The API token's file; required unless `listen` is a loopback
    /// address.
    pub token_file: Option<PathBuf>,
    /// The `Host` (and `Origin`) values accepted, as `host:port` in lower
    /// case ([`crate::status::host_key`]). Default: `listen`, and with
    /// `backup_gui_port` the GUI-forward address on this node's and on the
    /// peer's address (the peer's is `[sync] peer`'s address), plus
    /// `localhost` at those ports when `listen` is loopback.
    pub allowed_hosts: Vec<String>,
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Shell command the node spawns and supervises while Master.
    pub start: String,
    /// Shell command run before the process is ended at stop.
    pub stop: Option<String>,
    /// Shell command polled until it exits 0: the service is ready.
    pub ready: Option<String>,
    /// Services that must be ready first.
    pub after: Vec<String>,
    /// How long start + readiness may take.
    pub start_timeout: Duration,
    /// How long stop may take before the process is killed.
    pub stop_timeout: Duration,
}

/// A whole node configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id, shown in the peer's status.
    pub id: String,
    /// `false`: standalone Master, no peer.
    pub redundancy: bool,
    /// Persistent state (epoch, backup mode, journal).
    pub state_dir: PathBuf,
    /// Phone inventory file.
    pub phones: Option<PathBuf>,
    /// `[vrrp]`.
    pub vrrp: Vrrp,
    /// `[sync]`.
    pub sync: Option<Sync>,
    /// `[status]`.
    pub status: Option<Status>,
    /// `[identity]`.
    pub identity: Identity,
    /// `[hooks]` (the staging folder defaults to the state directory's
    /// `staging` without the section).
    pub hooks: ProcedureHooks,
    /// `[[service]]`, in file order.
    pub services: Vec<Service>,
    /// The files the configuration names, read and checked
    /// ([`NodeConfig::load`] fills it; [`NodeConfig::parse`] leaves it
    /// `None`, and the node reads them before it touches anything).
    pub files: Option<Files>,
}

impl NodeConfig {
    /// Reads and validates a file. Relative paths in it are taken from the
    /// file's folder.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the reason.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = NodeConfig::parse(&text, base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        // Every file it names is read and checked now, so that a bad one
        // stops the node before it creates a file or sends a packet.
        config.files = Some(config.read_files()?);
        Ok(config)
    }

    /// Reads and checks the files the configuration names: `sync.key_file`,
    /// `phones` and `status.token_file`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and what is wrong with its file.
    pub fn read_files(&self) -> Result<Files, ConfigError> {
        // An unreadable or malformed file is an error of the key naming it.
        let naming = |key: &'static str| {
            move |e: ConfigError| match e {
                ConfigError::Read { path, source } => invalid(key, format!("{path}: {source}")),
                ConfigError::Syntax { path, message } => invalid(key, format!("{path}: {message}")),
                other => other,
            }
        };
        let key = match &self.sync {
            Some(sync) => {
                let key = read_key_file(&sync.key_file).map_err(naming("sync.key_file"))?;
                let next = sync.key_file_next.as_deref().map(|path| {
                    read_key_file_as(path, "sync.key_file_next")
                        .map_err(naming("sync.key_file_next"))
                });
                Some((key, next.transpose()?))
            }
            None => None,
        };
        let phones = match &self.phones {
            Some(p) => crate::phones::load(p).map_err(naming("phones"))?,
            None => Vec::new(),
        };
        let token = match self.status.as_ref().and_then(|s| s.token_file.as_deref()) {
            Some(path) => Some(crate::status::read_token_file(path)?),
            None => None,
        };
        Ok(Files { key, phones, token })
    }

    /// Validates configuration text; relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the reason.
    pub fn parse(text: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<config>".into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if raw.id.trim().is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        let vrrp = validate_vrrp(raw.vrrp)?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let sync = raw
            .sync
            .map(|s| -> Result<Sync, ConfigError> {
                let interval_s = s.interval_s.unwrap_or(60);
                if interval_s == 0 {
                    return Err(invalid("sync.interval_s", "must be at least 1"));
                }
                if s.listen == s.peer {
                    return Err(invalid("sync.peer", "must differ from sync.listen"));
                }
                for (i, pattern) in s.exclude.iter().enumerate() {
                    if pattern.is_empty() {
                        return Err(invalid(format!("sync.exclude[{i}]"), "empty pattern"));
                    }
                }
                let (mass_delete_fraction, mass_delete_window) =
                    mass_delete_settings("sync.", s.mass_delete_fraction, s.mass_delete_window_h)?;
                let batch_ms = s.batch_ms.unwrap_or(100);
                if batch_ms > 60_000 {
                    return Err(invalid("sync.batch_ms", "must be at most 60000"));
                }
                Ok(Sync {
                    listen: s.listen,
                    peer: s.peer,
                    dir: abs(s.dir),
                    interval: Duration::from_secs(interval_s),
                    watch: s.watch.unwrap_or(true),
                    batch: Duration::from_millis(batch_ms),
                    key_file: abs(s.key_file),
                    key_file_next: s.key_file_next.map(abs),
                    exclude: s.exclude,
                    mass_delete_fraction,
                    mass_delete_window,
                })
            })
            .transpose()?;
        let peer_ip = sync.as_ref().map(|s| s.peer.ip());
        let status = raw
            .status
            .map(|s| validate_status(s, peer_ip, &abs))
            .transpose()?;
        let services = validate_services(raw.service)?;
        let state_dir = match (raw.state_dir, &sync) {
            (Some(d), _) => abs(d),
            (None, Some(s)) => {
                let name = s
                    .dir
                    .file_name()
                    .map(|n| format!("{}.state", n.to_string_lossy()))
                    .unwrap_or_else(|| "node.state".into());
                s.dir.with_file_name(name)
            }
            (None, None) => {
                return Err(invalid(
                    "state_dir",
                    "required when there is no [sync] table to put it beside",
                ));
            }
        };
        let hooks = validate_hooks(raw.hooks, &state_dir, &abs)?;
        Ok(NodeConfig {
            id: raw.id,
            redundancy: raw.redundancy,
            state_dir,
            phones: raw.phones.map(abs),
            vrrp,
            sync,
            status,
            identity: raw.identity.unwrap_or_default(),
            hooks,
            services,
            files: None,
        })
    }
}

/// The default `[hooks] max_image_mib`.
pub const DEFAULT_MAX_IMAGE_MIB: u64 = 1024;

fn validate_hooks(
    raw: Option<RawHooks>,
    state_dir: &Path,
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<ProcedureHooks, ConfigError> {
    let raw = raw.unwrap_or(RawHooks {
        staging_dir: None,
        max_image_mib: None,
        save_config: None,
        upgrade: None,
        version: None,
        restore: None,
    });
    let mib = raw.max_image_mib.unwrap_or(DEFAULT_MAX_IMAGE_MIB);
    if mib == 0 || mib > 1 << 20 {
        return Err(ConfigError::Invalid {
            key: "hooks.max_image_mib".into(),
            reason: format!("{mib}: expected 1 to {}", 1u64 << 20),
        });
    }
    for (key, cmd) in [
        ("hooks.save_config", &raw.save_config),
        ("hooks.upgrade", &raw.upgrade),
        ("hooks.version", &raw.version),
        ("hooks.restore", &raw.restore),
    ] {
        if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                reason: "empty command (leave the key out instead)".into(),
            });
        }
    }
    Ok(ProcedureHooks {
        staging_dir: raw
            .staging_dir
            .map_or_else(|| state_dir.join("staging"), abs),
        max_image_bytes: mib << 20,
        save_config: raw.save_config,
        upgrade: raw.upgrade,
        version: raw.version,
        restore: raw.restore,
    })
}

/// The contents of the files a configuration names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// `sync.key_file`'s key, with `sync.key_file_next`'s during a
    /// rotation.
    pub key: Option<([u8; 32], Option<[u8; 32]>)>,
    /// The `phones` inventory (empty without one).
    pub phones: Vec<crate::phones::Phone>,
    /// `status.token_file`'s token.
    pub token: Option<crate::status::Token>,
}

impl Files {
    /// The peer link's keys from `key`: the one this node proves, and
    /// the next one it accepts during a rotation.
    ///
    /// # Errors
    /// A key the link refuses, naming `sync.key_file` or
    /// `sync.key_file_next` (never, for files `read_files` checked).
    pub fn link_keys(&self) -> Result<Option<LinkKeys>, ConfigError> {
        let psk = |bytes: [u8; 32], key: &str| {
            sync_delta::frame::PreSharedKey::new(bytes).map_err(|e| invalid(key, e.to_string()))
        };
        let Some((key, next)) = self.key else {
            return Ok(None);
        };
        let next = next.map(|n| psk(n, "sync.key_file_next")).transpose()?;
        Ok(Some((psk(key, "sync.key_file")?, next)))
    }
}

/// The key a node proves and, during a rotation, the next key it accepts.
pub type LinkKeys = (
    sync_delta::frame::PreSharedKey,
    Option<sync_delta::frame::PreSharedKey>,
);

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("key", &self.key.map(|_| ".."))
            .field("phones", &self.phones.len())
            .field("token", &self.token)
            .finish()
    }
}

fn validate_status(
    s: RawStatus,
    peer_ip: Option<IpAddr>,
    abs: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Status, ConfigError> {
    if s.backup_gui_port == Some(0) {
        return Err(invalid("status.backup_gui_port", "must be 1-65535"));
    }
    let ip = s.listen.ip().to_canonical();
    if !ip.is_loopback() && s.token_file.is_none() {
        return Err(invalid(
            "status.token_file",
            format!(
                "required when status.listen ({}) is not a loopback address: \
                 the API would be open to the network",
                s.listen
            ),
        ));
    }
    let allowed_hosts = match s.allowed_hosts {
        Some(hosts) => {
            if hosts.is_empty() {
                return Err(invalid("status.allowed_hosts", "at least one host"));
            }
            hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    crate::status::host_key(h, 80).ok_or_else(|| {
                        invalid(
                            format!("status.allowed_hosts[{i}]"),
                            format!("`{h}` is not a host or host:port"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None if ip.is_unspecified() => {
            return Err(invalid(
                "status.allowed_hosts",
                format!(
                    "required when status.listen ({}) is a wildcard address: \
                     list the names and addresses the page is opened by",
                    s.listen
                ),
            ));
        }
        None => {
            let mut hosts = vec![s.listen];
            if let Some(port) = s.backup_gui_port {
                hosts.push(SocketAddr::new(s.listen.ip(), port));
                if let Some(peer) = peer_ip {
                    hosts.push(SocketAddr::new(peer, port));
                }
            }
            let mut keys: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            if ip.is_loopback() {
                keys.push(format!("localhost:{}", s.listen.port()));
                keys.extend(s.backup_gui_port.map(|p| format!("localhost:{p}")));
            }
            keys
        }
    };
    Ok(Status {
        listen: s.listen,
        backup_gui_port: s.backup_gui_port,
        token_file: s.token_file.map(abs),
        allowed_hosts,
    })
}

fn parse_virtual_ip(i: usize, s: &str) -> Result<VirtualIp, ConfigError> {
    let key = format!("vrrp.virtual_ips[{i}]");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| invalid(&key, format!("`{s}` is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| invalid(&key, format!("prefix `{p}` is not 0-{max}")))?,
        None => max,
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(invalid(
            &key,
            format!("`{addr}` cannot be a virtual address"),
        ));
    }
    Ok(VirtualIp { addr, prefix })
}

fn validate_vrrp(v: RawVrrp) -> Result<Vrrp, ConfigError> {
    use vrrp_proto::{Interval, Priority, Version, Vrid};
    let transport = v.transport.unwrap_or(Transport::Raw);
    let version = match v.version.unwrap_or(3) {
        2 => Version::V2,
        3 => Version::V3,
        n => return Err(invalid("vrrp.version", format!("must be 2 or 3, got {n}"))),
    };
    let vrid = Vrid::new(v.vrid).ok_or_else(|| invalid("vrrp.vrid", "must be 1-255, got 0"))?;
    let priority = match v.priority.unwrap_or(100) {
        p @ 1..=255 => Priority(p as u8),
        p => return Err(invalid("vrrp.priority", format!("must be 1-255, got {p}"))),
    };
    let ms = v.advert_interval_ms.unwrap_or(1000);
    let interval = match version {
        Version::V2 => {
            if !ms.is_multiple_of(1000) || ms == 0 || ms > 255_000 {
                return Err(invalid(
                    "vrrp.advert_interval_ms",
                    format!("VRRPv2 takes whole seconds 1-255 (1000-255000 ms), got {ms}"),
                ));
            }
            Interval::from_secs((ms / 1000) as u8)
        }
        Version::V3 => {
            if !ms.is_multiple_of(10) || ms == 0 || ms > 40_950 {
                return Err(invalid(
                    "vrrp.advert_interval_ms",
                    format!("VRRPv3 takes multiples of 10 ms from 10 to 40950, got {ms}"),
                ));
            }
            Interval::from_centis((ms / 10) as u16)
        }
    }
    .map_err(|e| invalid("vrrp.advert_interval_ms", e.to_string()))?;
    if v.virtual_ips.is_empty() {
        return Err(invalid("vrrp.virtual_ips", "at least one address"));
    }
    if v.virtual_ips.len() > 255 {
        return Err(invalid("vrrp.virtual_ips", "at most 255 addresses"));
    }
    let virtual_ips = v
        .virtual_ips
        .iter()
        .enumerate()
        .map(|(i, s)| parse_virtual_ip(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let v4 = virtual_ips[0].addr.is_ipv4();
    if virtual_ips.iter().any(|a| a.addr.is_ipv4() != v4) {
        return Err(invalid(
            "vrrp.virtual_ips",
            "one family per router: all IPv4 or all IPv6",
        ));
    }
    if !v4 && version == Version::V2 {
        return Err(invalid(
            "vrrp.virtual_ips",
            "VRRPv2 carries IPv4 addresses only",
        ));
    }
    for (i, p) in v.unicast_peers.iter().enumerate() {
        if p.is_ipv4() != v4 {
            return Err(invalid(
                format!("vrrp.unicast_peers[{i}]"),
                "must be of the virtual addresses' family",
            ));
        }
    }
    match transport {
        Transport::Raw => {
            if v.interface.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "vrrp.interface",
                    "required with transport = \"raw\"",
                ));
            }
            if v.udp_listen.is_some() || !v.udp_peers.is_empty() {
                return Err(invalid(
                    "vrrp.udp_listen",
                    "udp_listen / udp_peers are for transport = \"udp\"",
                ));
            }
        }
        Transport::Udp => {
            let listen = v
                .udp_listen
                .ok_or_else(|| invalid("vrrp.udp_listen", "required with transport = \"udp\""))?;
            if v.udp_peers.is_empty() {
                return Err(invalid(
                    "vrrp.udp_peers",
                    "at least one peer with transport = \"udp\"",
                ));
            }
            if v.udp_peers.contains(&listen) {
                return Err(invalid("vrrp.udp_peers", "must not contain udp_listen"));
            }
        }
    }
    if let Some(pass) = &v.auth_pass {
        if version != Version::V2 {
            return Err(invalid("vrrp.auth_pass", "authentication is VRRPv2-only"));
        }
        if pass.len() > 8 {
            return Err(invalid("vrrp.auth_pass", "at most 8 bytes"));
        }
    }
    if let Some(p) = v.rt_priority
        && !(1..=99).contains(&p)
    {
        return Err(invalid(
            "vrrp.rt_priority",
            format!("must be 1-99, got {p}"),
        ));
    }
    Ok(Vrrp {
        transport,
        interface: v.interface.filter(|s| !s.is_empty()),
        version,
        vrid,
        priority,
        interval,
        preempt: v.preempt.unwrap_or(false),
        preempt_delay: Duration::from_millis(v.preempt_delay_ms.unwrap_or(0)),
        accept: v.accept.unwrap_or(true),
        virtual_ips,
        unicast_peers: v.unicast_peers,
        v3_ipv4_checksum: v.v3_ipv4_checksum.unwrap_or(ChecksumForm::PseudoHeader),
        auth_pass: v.auth_pass,
        udp_listen: v.udp_listen,
        udp_peers: v.udp_peers,
        garp_count: v.garp_count.unwrap_or(5),
        garp_interval: Duration::from_millis(v.garp_interval_ms.unwrap_or(1000)),
        startup_delay: Duration::from_millis(v.startup_delay_ms.unwrap_or(0)),
        rt_priority: v.rt_priority,
        no_swap: v.no_swap,
    })
}

fn validate_services(raw: Vec<RawService>) -> Result<Vec<Service>, ConfigError> {
    let names: Vec<&str> = raw.iter().map(|s| s.name.as_str()).collect();
    for (i, s) in raw.iter().enumerate() {
        let key = |k: &str| format!("service[{i}].{k}");
        if s.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if names[..i].contains(&s.name.as_str()) {
            return Err(invalid(key("name"), format!("`{}` is used twice", s.name)));
        }
        if s.start.trim().is_empty() {
            return Err(invalid(key("start"), "must not be empty"));
        }
        for a in &s.after {
            if !names.contains(&a.as_str()) {
                return Err(invalid(key("after"), format!("no service named `{a}`")));
            }
            if a == &s.name {
                return Err(invalid(key("after"), "a service cannot come after itself"));
            }
        }
    }
    // Dependency cycles: repeatedly take the services whose `after` are all
    // placed; whatever is left is a cycle.
    let mut placed: Vec<&str> = Vec::new();
    while placed.len() < raw.len() {
        let before = placed.len();
        for s in &raw {
            if !placed.contains(&s.name.as_str())
                && s.after.iter().all(|a| placed.contains(&a.as_str()))
            {
                placed.push(&s.name);
            }
        }
        if placed.len() == before {
            let left: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !placed.contains(n))
                .collect();
            return Err(invalid(
                "service.after",
                format!("dependency cycle among {left:?}"),
            ));
        }
    }
    Ok(raw
        .into_iter()
        .map(|s| Service {
            name: s.name,
            start: s.start,
            stop: s.stop,
            ready: s.ready,
            after: s.after,
            start_timeout: Duration::from_millis(s.start_timeout_ms.unwrap_or(30_000)),
            stop_timeout: Duration::from_millis(s.stop_timeout_ms.unwrap_or(10_000)),
        })
        .collect())
}

/// Indices of `names` in an order where every name comes after its
/// `deps`; on a cycle, the indices that could not be placed.
fn topological(names: &[&str], deps: &[Vec<&str>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut placed: Vec<usize> = Vec::with_capacity(names.len());
    while placed.len() < names.len() {
        let before = placed.len();
        for (i, d) in deps.iter().enumerate() {
            if !placed.contains(&i) && d.iter().all(|a| placed.iter().any(|p| names[*p] == *a)) {
                placed.push(i);
            }
        }
        if placed.len() == before {
            return Err((0..names.len()).filter(|i| !placed.contains(i)).collect());
        }
    }
    Ok(placed)
}

impl NodeConfig {
    /// Service indices in start order (every service after those it names
    /// in `after`); stop in the reverse.
    #[must_use]
    pub fn start_order(&self) -> Vec<usize> {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        let deps: Vec<Vec<&str>> = self
            .services
            .iter()
            .map(|s| s.after.iter().map(String::as_str).collect())
            .collect();
        // Validation rejected cycles, so this always places every service.
        topological(&names, &deps).unwrap_or_else(|_| (0..names.len()).collect())
    }
}

/// Reads a pre-shared key file: 64 hex digits (32 bytes), whitespace
/// ignored, that the peer link accepts as a key (random bytes, not all
/// zero nor a pattern: `sync_delta::frame::PreSharedKey::new`), in a file
/// no other user can read.
///
/// # Errors
/// [`ConfigError`] naming `sync.key_file` and what is wrong.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], ConfigError> {
    read_key_file_as(path, "sync.key_file")
}

/// [`read_key_file`] for the key named `key` in errors (`sync.key_file_next`,
/// a tool's `--key-file`).
///
/// # Errors
/// [`ConfigError`] naming `key`, the file and what is wrong.
pub fn read_key_file_as(path: &Path, key: &str) -> Result<[u8; 32], ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| invalid(key, format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mode = std::fs::metadata(path)
        .map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(bad(format!(
            "readable by every user (mode {:o}); `chmod 600` it",
            mode & 0o777
        )));
    }
    let bytes = parse_key(&text).map_err(bad)?;
    sync_delta::frame::PreSharedKey::new(bytes).map_err(|e| {
        bad(format!(
            "{e}; make one with `od -An -tx1 -N32 /dev/urandom`"
        ))
    })?;
    Ok(bytes)
}

/// Parses 64 hex digits, whitespace ignored.
///
/// # Errors
/// What is wrong with the text.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() != 64 {
        return Err(format!("expected 64 hex digits, found {}", digits.len()));
    }
    let mut key = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (hex(pair[0]), hex(pair[1])) {
            (Some(h), Some(l)) => key[i] = (h * 16 + l) as u8,
            _ => return Err("not a hex digit".into()),
        }
    }
    Ok(key)
}
