//! Virtual router configuration and its validating builder.

use core::net::IpAddr;
use core::time::Duration;

use smallvec::SmallVec;
use vrrp_proto::{
    Addresses, Advertisement, Auth, BuildError, Family, Interval, Ipv4ChecksumForm, Priority,
    Version, Vrid,
};

/// Whether a higher-priority Backup takes the role from a lower-priority
/// Master (RFC 9568 §6.1 `Preempt_Mode`; the RFC default is on).
///
/// An address owner (priority 255) always preempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preempt {
    /// Preempt a lower-priority Master (RFC default).
    #[default]
    Enabled,
    /// Never preempt: a returning unit stays Backup (the appliance profile's
    /// "no fail-back").
    Disabled,
}

/// Whether the Master accepts packets addressed to the virtual addresses it
/// does not own (RFC 9568 §6.1 `Accept_Mode`; the RFC default is off).
///
/// The engine only reports it ([`crate::Event::AcceptMode`]); the driver
/// opens or closes the local delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AcceptMode {
    /// Only the owner accepts (RFC default).
    #[default]
    Disabled,
    /// The Master accepts traffic to the virtual addresses (a PBX answering on
    /// its virtual address needs this).
    Enabled,
}

/// How a Backup behaves (the appliance's "Backup Device Mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackupMode {
    /// Listens to advertisements and takes over when the Master falls silent.
    #[default]
    Active,
    /// Ignores advertisements and never becomes Master by timer; only an
    /// explicit [`crate::VirtualRouter::takeover`] (or an armed takeover on a
    /// priority-0 release) makes it Master. Used for maintenance.
    Passive,
}

/// Gratuitous ARP / unsolicited Neighbour Advertisement on becoming Master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GratuitousConfig {
    /// How many announcements in the burst (0 = none).
    pub count: u8,
    /// Time between two announcements of the burst.
    pub spacing: Duration,
    /// After the burst, announce again every this long while Master.
    pub refresh: Option<Duration>,
}

impl Default for GratuitousConfig {
    /// Three announcements a second apart, no refresh.
    fn default() -> Self {
        GratuitousConfig {
            count: 3,
            spacing: Duration::from_secs(1),
            refresh: None,
        }
    }
}

/// A tracked object's id (an interface, a process check, a script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u16);

/// A configured tracked object: its id and weight.
///
/// As keepalived's `track_script … weight`: a positive weight is added to
/// the priority while the object is up, a negative one while it is down.
/// The result is kept within 1–254; an owner (255) is never adjusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Track {
    /// Which object.
    pub id: TrackId,
    /// Priority adjustment, -254–254.
    pub weight: i16,
}

/// Most tracked objects one router takes.
pub const MAX_TRACKS: usize = 32;

/// A configuration the builder refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No virtual address was given.
    #[error("no virtual addresses")]
    NoAddresses,
    /// More than the 255 addresses an advertisement carries.
    #[error("{count} virtual addresses; at most 255")]
    TooManyAddresses {
        /// The number given.
        count: usize,
    },
    /// Virtual addresses of both families (one router per family).
    #[error("virtual addresses of both families")]
    MixedFamilies,
    /// The primary address is not of the virtual addresses' family.
    #[error("primary address family differs from the virtual addresses'")]
    PrimaryFamily,
    /// The primary address is not a unicast address.
    #[error("primary address is not unicast")]
    PrimaryNotUnicast,
    /// RFC 9568 §5.1.2.1: an IPv6 router advertises from its link-local
    /// address (multicast operation).
    #[error("ipv6 primary address is not link-local")]
    PrimaryNotLinkLocal,
    /// VRRPv2 is IPv4-only (RFC 3768).
    #[error("vrrpv2 carries ipv4 addresses only")]
    V2Ipv6,
    /// The interval does not fit the version: VRRPv2 whole seconds 1–255,
    /// VRRPv3 1–4095 centiseconds.
    #[error("advertisement interval of {centis} cs is not valid for vrrp version {version}")]
    Interval {
        /// The interval given, in centiseconds.
        centis: u16,
        /// The version number.
        version: u8,
    },
    /// Priority 0 is reserved for the release message.
    #[error("priority 0 is reserved for release")]
    ZeroPriority,
    /// Authentication is a VRRPv2 feature.
    #[error("authentication is vrrpv2-only")]
    V3Auth,
    /// A unicast peer is not a unicast address of the router's family, or is
    /// the primary address itself.
    #[error("unicast peer {index} is not a unicast address of the router's family")]
    Peer {
        /// Its position in the list.
        index: usize,
    },
    /// A burst of more than one announcement needs a non-zero spacing, and
    /// a refresh a non-zero period.
    #[error("gratuitous announcements need a non-zero spacing and refresh period")]
    GratuitousSpacing,
    /// More than [`MAX_TRACKS`] tracked objects, a repeated id, or a weight
    /// outside -254–254.
    #[error("tracked object {index} is invalid (duplicate id, weight out of range or too many)")]
    Track {
        /// Its position in the list.
        index: usize,
    },
}

/// A validated virtual router configuration. Build it with
/// [`Config::builder`].
///
/// The defaults follow the RFC (preempt on, accept mode off). The
/// appliance profile of the redundancy manual (no fail-back: preempt off;
/// the PBX answers on the virtual address: accept mode on) is a choice of
/// the daemon; [`Config::appliance`] is that preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) version: Version,
    pub(crate) vrid: Vrid,
    pub(crate) priority: Priority,
    pub(crate) interval: Interval,
    pub(crate) addresses: Addresses,
    pub(crate) primary: IpAddr,
    pub(crate) peers: SmallVec<[IpAddr; 2]>,
    pub(crate) preempt: Preempt,
    pub(crate) preempt_delay: Duration,
    pub(crate) accept: AcceptMode,
    pub(crate) auth: Auth,
    pub(crate) checksum: Ipv4ChecksumForm,
    pub(crate) backup_mode: BackupMode,
    pub(crate) gratuitous: GratuitousConfig,
    pub(crate) startup_delay: Duration,
    pub(crate) release_hold_off: Duration,
    pub(crate) tracks: SmallVec<[Track; 4]>,
    /// The advertisement at the configured priority, built (and so proven
    /// buildable) by the builder.
    pub(crate) advert: Advertisement,
}

impl Config {
    /// A builder for a router of `vrid` speaking `version`, advertising from
    /// `primary` (its own interface address: the advertisement's source and
    /// the equal-priority tie-break, RFC 9568 §6.4.3).
    ///
    /// Defaults: priority 100, interval 1 s, preempt on without delay,
    /// accept mode off, no authentication, multicast, Active backup mode,
    /// [`GratuitousConfig::default`], no startup delay, a release hold-off of
    /// three intervals.
    pub fn builder(version: Version, vrid: Vrid, primary: IpAddr) -> ConfigBuilder {
        ConfigBuilder {
            version,
            vrid,
            primary,
            priority: Priority::DEFAULT,
            interval: None,
            addresses: SmallVec::new(),
            peers: SmallVec::new(),
            preempt: Preempt::Enabled,
            preempt_delay: Duration::ZERO,
            accept: AcceptMode::Disabled,
            auth: Auth::None,
            checksum: Ipv4ChecksumForm::PseudoHeader,
            backup_mode: BackupMode::Active,
            gratuitous: GratuitousConfig::default(),
            startup_delay: Duration::ZERO,
            release_hold_off: None,
            tracks: SmallVec::new(),
        }
    }

    /// The appliance profile of the redundancy manual: a builder with
    /// preempt off (a unit that returns while a Master is active stays
    /// Backup) and accept mode on (the PBX answers on the virtual address).
    /// VRRPv2 at 1 s, as the original's keepalived.
    pub fn appliance(vrid: Vrid, primary: IpAddr) -> ConfigBuilder {
        Config::builder(Version::V2, vrid, primary)
            .preempt(Preempt::Disabled)
            .accept_mode(AcceptMode::Enabled)
    }

    /// Protocol version.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }
    /// Virtual router id.
    #[must_use]
    pub fn vrid(&self) -> Vrid {
        self.vrid
    }
    /// Configured (base) priority, before tracked-object weights.
    #[must_use]
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// Own advertisement interval.
    #[must_use]
    pub fn interval(&self) -> Interval {
        self.interval
    }
    /// Virtual addresses.
    #[must_use]
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }
    /// Address family.
    #[must_use]
    pub fn family(&self) -> Family {
        self.addresses.family()
    }
    /// Own primary address.
    #[must_use]
    pub fn primary(&self) -> IpAddr {
        self.primary
    }
    /// Unicast peers (empty: the multicast group).
    #[must_use]
    pub fn peers(&self) -> &[IpAddr] {
        &self.peers
    }
    /// Preempt mode.
    #[must_use]
    pub fn preempt(&self) -> Preempt {
        self.preempt
    }
    /// Preempt delay.
    #[must_use]
    pub fn preempt_delay(&self) -> Duration {
        self.preempt_delay
    }
    /// Accept mode.
    #[must_use]
    pub fn accept_mode(&self) -> AcceptMode {
        self.accept
    }
    /// VRRPv2 authentication.
    #[must_use]
    pub fn auth(&self) -> &Auth {
        &self.auth
    }
    /// VRRPv3-over-IPv4 checksum form sent.
    #[must_use]
    pub fn checksum_form(&self) -> Ipv4ChecksumForm {
        self.checksum
    }
    /// Backup mode at startup.
    #[must_use]
    pub fn backup_mode(&self) -> BackupMode {
        self.backup_mode
    }
    /// GratuitousConfig ARP / NA settings.
    #[must_use]
    pub fn gratuitous(&self) -> GratuitousConfig {
        self.gratuitous
    }
    /// Startup delay.
    #[must_use]
    pub fn startup_delay(&self) -> Duration {
        self.startup_delay
    }
    /// Default release hold-off.
    #[must_use]
    pub fn release_hold_off(&self) -> Duration {
        self.release_hold_off
    }
    /// Tracked objects.
    #[must_use]
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }
}

/// Builds a [`Config`]; [`ConfigBuilder::build`] validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    version: Version,
    vrid: Vrid,
    primary: IpAddr,
    priority: Priority,
    interval: Option<Interval>,
    addresses: SmallVec<[IpAddr; 4]>,
    peers: SmallVec<[IpAddr; 2]>,
    preempt: Preempt,
    preempt_delay: Duration,
    accept: AcceptMode,
    auth: Auth,
    checksum: Ipv4ChecksumForm,
    backup_mode: BackupMode,
    gratuitous: GratuitousConfig,
    startup_delay: Duration,
    release_hold_off: Option<Duration>,
    tracks: SmallVec<[Track; 4]>,
}

impl ConfigBuilder {
    /// Priority, 1–255 (255: the address owner).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Advertisement interval (default 1 s).
    pub fn interval(mut self, interval: Interval) -> Self {
        self.interval = Some(interval);
        self
    }
    /// Adds a virtual address.
    pub fn address(mut self, address: impl Into<IpAddr>) -> Self {
        self.addresses.push(address.into());
        self
    }
    /// Adds virtual addresses.
    pub fn addresses<A: Into<IpAddr>>(mut self, addresses: impl IntoIterator<Item = A>) -> Self {
        self.addresses.extend(addresses.into_iter().map(Into::into));
        self
    }
    /// Adds a unicast peer: advertisements go to each peer instead of the
    /// group, and only peers are heard.
    pub fn peer(mut self, peer: impl Into<IpAddr>) -> Self {
        self.peers.push(peer.into());
        self
    }
    /// Preempt mode (default on).
    pub fn preempt(mut self, preempt: Preempt) -> Self {
        self.preempt = preempt;
        self
    }
    /// With preempt on, how long a Backup keeps deferring to a
    /// lower-priority Master after it first hears it (default none).
    pub fn preempt_delay(mut self, delay: Duration) -> Self {
        self.preempt_delay = delay;
        self
    }
    /// Accept mode (default off).
    pub fn accept_mode(mut self, accept: AcceptMode) -> Self {
        self.accept = accept;
        self
    }
    /// VRRPv2 authentication (default none).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    /// VRRPv3-over-IPv4 checksum form to send (default with pseudo-header).
    pub fn checksum_form(mut self, form: Ipv4ChecksumForm) -> Self {
        self.checksum = form;
        self
    }
    /// Backup mode at startup (default Active).
    pub fn backup_mode(mut self, mode: BackupMode) -> Self {
        self.backup_mode = mode;
        self
    }
    /// GratuitousConfig ARP / NA burst and refresh.
    pub fn gratuitous(mut self, gratuitous: GratuitousConfig) -> Self {
        self.gratuitous = gratuitous;
        self
    }
    /// Do not become Master during this long after startup.
    pub fn startup_delay(mut self, delay: Duration) -> Self {
        self.startup_delay = delay;
        self
    }
    /// After a [`crate::VirtualRouter::release`], do not become Master again
    /// by timer for this long (default three intervals).
    pub fn release_hold_off(mut self, hold_off: Duration) -> Self {
        self.release_hold_off = Some(hold_off);
        self
    }
    /// Adds a tracked object.
    pub fn track(mut self, id: TrackId, weight: i16) -> Self {
        self.tracks.push(Track { id, weight });
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn build(self) -> Result<Config, ConfigError> {
        let version = self.version;
        let interval = match self.interval {
            Some(i) => i,
            None => Interval::from_centis(100).map_err(|_| ConfigError::Interval {
                centis: 100,
                version: version.number(),
            })?,
        };
        let interval_ok = match version {
            Version::V2 => interval.as_whole_secs().is_some(),
            Version::V3 => interval.fits_v3(),
        };
        if !interval_ok || interval.as_centis() == 0 {
            return Err(ConfigError::Interval {
                centis: interval.as_centis(),
                version: version.number(),
            });
        }
        if self.priority == Priority::RELEASE {
            return Err(ConfigError::ZeroPriority);
        }
        let family = match self.addresses.first() {
            None => return Err(ConfigError::NoAddresses),
            Some(a) => Family::of(a),
        };
        if self.addresses.len() > 255 {
            return Err(ConfigError::TooManyAddresses {
                count: self.addresses.len(),
            });
        }
        let addresses = match family {
            Family::Ipv4 => {
                let mut v = SmallVec::new();
                for a in &self.addresses {
                    match a {
                        IpAddr::V4(x) => v.push(*x),
                        IpAddr::V6(_) => return Err(ConfigError::MixedFamilies),
                    }
                }
                Addresses::V4(v)
            }
            Family::Ipv6 => {
                if version == Version::V2 {
                    return Err(ConfigError::V2Ipv6);
                }
                let mut v = SmallVec::new();
                for a in &self.addresses {
                    match a {
                        IpAddr::V6(x) => v.push(*x),
                        IpAddr::V4(_) => return Err(ConfigError::MixedFamilies),
                    }
                }
                Addresses::V6(v)
            }
        };
        if Family::of(&self.primary) != family {
            return Err(ConfigError::PrimaryFamily);
        }
        if !is_unicast(&self.primary) {
            return Err(ConfigError::PrimaryNotUnicast);
        }
        if let IpAddr::V6(p) = self.primary
            && self.peers.is_empty()
            && !p.is_unicast_link_local()
        {
            return Err(ConfigError::PrimaryNotLinkLocal);
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if Family::of(peer) != family || !is_unicast(peer) || *peer == self.primary {
                return Err(ConfigError::Peer { index });
            }
        }
        if version == Version::V3 && self.auth != Auth::None {
            return Err(ConfigError::V3Auth);
        }
        let g = self.gratuitous;
        if (g.count > 1 && g.spacing.is_zero()) || g.refresh.is_some_and(|r| r.is_zero()) {
            return Err(ConfigError::GratuitousSpacing);
        }
        if self.tracks.len() > MAX_TRACKS {
            return Err(ConfigError::Track { index: MAX_TRACKS });
        }
        for (index, t) in self.tracks.iter().enumerate() {
            let dup = self.tracks[..index].iter().any(|o| o.id == t.id);
            if dup || !(-254..=254).contains(&t.weight) {
                return Err(ConfigError::Track { index });
            }
        }
        let release_hold_off = self
            .release_hold_off
            .unwrap_or(core::time::Duration::from_micros(3 * interval.as_micros()));
        let built = match version {
            Version::V2 => Advertisement::v2(
                self.vrid,
                self.priority,
                interval,
                self.auth,
                addresses.clone(),
            ),
            Version::V3 => Advertisement::v3(self.vrid, self.priority, interval, addresses.clone()),
        };
        let advert = built.map_err(|e| match e {
            BuildError::AddressCount { count } => ConfigError::TooManyAddresses { count },
            BuildError::V2Ipv6 => ConfigError::V2Ipv6,
            BuildError::V3Auth => ConfigError::V3Auth,
            _ => ConfigError::Interval {
                centis: interval.as_centis(),
                version: version.number(),
            },
        })?;
        Ok(Config {
            advert,
            version,
            vrid: self.vrid,
            priority: self.priority,
            interval,
            addresses,
            primary: self.primary,
            peers: self.peers,
            preempt: self.preempt,
            preempt_delay: self.preempt_delay,
            accept: self.accept,
            auth: self.auth,
            checksum: self.checksum,
            backup_mode: self.backup_mode,
            gratuitous: self.gratuitous,
            startup_delay: self.startup_delay,
            release_hold_off,
            tracks: self.tracks,
        })
    }
}

fn is_unicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(x) => !(x.is_multicast() || x.is_broadcast() || x.is_unspecified()),
        IpAddr::V6(x) => !(x.is_multicast() || x.is_unspecified()),
    }
}
