//! Configuration: identity, services, phone inventory, pacing and timeouts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::epoch::Epoch;
use crate::plan::FailurePolicy;
use crate::types::{Identity, MAX_DURATION, ServiceId};
use crate::wire::{MAX_LICENCES, MAX_STRING_LEN};

/// One application the Master runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Name for status and the timeline.
    pub name: String,
    /// Services that must be ready before this one starts. Each must come
    /// earlier in the service list, so the list is a valid start order.
    pub depends_on: Vec<ServiceId>,
    /// Time from start until the readiness check must pass.
    pub ready_timeout: Duration,
    /// Interval between readiness checks.
    pub check_interval: Duration,
    /// Extra attempts (stop is not issued between attempts; start again).
    pub retries: u8,
    /// What the takeover does when the service never becomes ready.
    pub on_failure: FailurePolicy,
    /// Typical time to ready, for the dry-run timeline.
    pub expected_ready: Duration,
}

impl ServiceSpec {
    /// A service with defaults: 60 s to become ready, checks every 200 ms,
    /// one retry, continue degraded, 2 s expected.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            depends_on: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            check_interval: Duration::from_millis(200),
            retries: 1,
            on_failure: FailurePolicy::ContinueDegraded,
            expected_ready: Duration::from_secs(2),
        }
    }

    /// Adds dependencies.
    #[must_use]
    pub fn after(mut self, deps: &[ServiceId]) -> Self {
        self.depends_on.extend_from_slice(deps);
        self
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Sets the ready timeout and retries.
    #[must_use]
    pub fn ready_within(mut self, timeout: Duration, retries: u8) -> Self {
        self.ready_timeout = timeout;
        self.retries = retries;
        self
    }

    /// Sets the expected time to ready (dry run only).
    #[must_use]
    pub fn expected(mut self, d: Duration) -> Self {
        self.expected_ready = d;
        self
    }
}

/// Why a phone needs a person (manual §5: unsupported models and phones
/// whose login was changed are not rebooted automatically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PersonReason {
    /// Model not auto-provisioned by this PBX.
    UnsupportedModel,
    /// Provisioning credentials changed on the phone.
    ChangedCredentials,
    /// Every automatic action was tried and the phone did not register.
    NoRegistration,
}

/// How a phone can be moved to the new Master, gentlest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PhoneMethod {
    /// It re-registers by itself once the address moves.
    FollowsAddress,
    /// A re-register nudge (SIP NOTIFY check-sync / resync) moves it.
    Nudge,
    /// Only a reboot moves it.
    Reboot,
    /// Nothing automatic: listed for a person.
    Person(PersonReason),
}

/// One phone in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PhoneSpec {
    /// Priority class, lower first (e.g. 0 emergency, 1 reception).
    pub class: u8,
    /// Gentlest action expected to work.
    pub method: PhoneMethod,
    /// Whether a nudge may be tried when following fails.
    pub can_nudge: bool,
    /// Whether a reboot may be tried when gentler actions fail.
    pub can_reboot: bool,
}

impl PhoneSpec {
    /// A phone of class 5 whose escalation ladder starts at `method`;
    /// auto-provisioned phones (all but `Person`) may be rebooted, phones
    /// that follow the address may also be nudged.
    #[must_use]
    pub fn new(method: PhoneMethod) -> Self {
        let (can_nudge, can_reboot) = match method {
            PhoneMethod::FollowsAddress | PhoneMethod::Nudge => (true, true),
            PhoneMethod::Reboot => (false, true),
            PhoneMethod::Person(_) => (false, false),
        };
        PhoneSpec {
            class: 5,
            method,
            can_nudge,
            can_reboot,
        }
    }

    /// Sets the priority class.
    #[must_use]
    pub fn class(mut self, class: u8) -> Self {
        self.class = class;
        self
    }
}

/// Phone re-homing pacing and deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehomeConfig {
    /// How long a phone that follows the address gets before a nudge.
    pub follow_deadline: Duration,
    /// Minimum gap between two nudges (rate limit).
    pub nudge_interval: Duration,
    /// How long after a nudge before escalating to a reboot.
    pub nudge_deadline: Duration,
    /// Gap between two reboot starts (the manual's one per second).
    pub reboot_interval: Duration,
    /// Most phones rebooting at once.
    pub max_concurrent_reboots: u32,
    /// How long after a reboot before the phone is listed for a person.
    pub reboot_deadline: Duration,
    /// Expected time from nudge to registration (dry run).
    pub expected_nudge: Duration,
    /// Expected time from reboot to registration (dry run).
    pub expected_reboot: Duration,
}

impl Default for RehomeConfig {
    fn default() -> Self {
        RehomeConfig {
            follow_deadline: Duration::from_secs(4),
            nudge_interval: Duration::from_millis(5),
            nudge_deadline: Duration::from_secs(3),
            reboot_interval: Duration::from_secs(1),
            max_concurrent_reboots: 32,
            reboot_deadline: Duration::from_secs(90),
            expected_nudge: Duration::from_millis(500),
            expected_reboot: Duration::from_secs(20),
        }
    }
}

/// Step deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Ordinary commands (address, mode, priority).
    pub command: Duration,
    /// A sync round (finish / roll back, sync now).
    pub sync: Duration,
    /// A request to the peer.
    pub peer_request: Duration,
    /// Firmware upgrade or configuration restore until the node is back.
    pub upgrade: Duration,
    /// Waiting for the peer (role, firmware, readiness) or this node's role.
    pub await_peer: Duration,
    /// This node's readiness check after boot.
    pub node_ready: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(10),
            sync: Duration::from_secs(300),
            peer_request: Duration::from_secs(60),
            upgrade: Duration::from_secs(30 * 60),
            await_peer: Duration::from_secs(15 * 60),
            node_ready: Duration::from_secs(5 * 60),
        }
    }
}

/// Validated configuration; build with [`Config::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) identity: Identity,
    pub(crate) node: u64,
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) phones: Vec<PhoneSpec>,
    pub(crate) rehome: RehomeConfig,
    pub(crate) timeouts: Timeouts,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) peer_timeout: Duration,
    pub(crate) armed_priority: u8,
    pub(crate) released_priority: u8,
    pub(crate) stale_sync_after: Duration,
    pub(crate) event_capacity: usize,
}

impl Config {
    /// Starts a builder for the node with this identity.
    #[must_use]
    pub fn builder(identity: Identity) -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                node: Epoch::node_number(&identity.node_id),
                identity,
                services: Vec::new(),
                phones: Vec::new(),
                rehome: RehomeConfig::default(),
                timeouts: Timeouts::default(),
                heartbeat_interval: Duration::from_secs(1),
                peer_timeout: Duration::from_millis(3500),
                armed_priority: 254,
                released_priority: 50,
                stale_sync_after: Duration::from_secs(600),
                event_capacity: 4096,
            },
        }
    }

    /// This node's identity.
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This node's epoch number ([`Epoch::node_number`] of its id).
    #[must_use]
    pub fn node_number(&self) -> u64 {
        self.node
    }

    /// Services in start order.
    #[must_use]
    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The phone inventory; a phone's [`crate::PhoneId`] is its index.
    #[must_use]
    pub fn phones(&self) -> &[PhoneSpec] {
        &self.phones
    }

    /// Re-homing pacing.
    #[must_use]
    pub fn rehome(&self) -> &RehomeConfig {
        &self.rehome
    }

    /// Step deadlines.
    #[must_use]
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
}

/// Builder for [`Config`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Appends a service (its id is its position).
    #[must_use]
    pub fn service(mut self, spec: ServiceSpec) -> Self {
        self.config.services.push(spec);
        self
    }

    /// Sets the phone inventory.
    #[must_use]
    pub fn phones(mut self, phones: Vec<PhoneSpec>) -> Self {
        self.config.phones = phones;
        self
    }

    /// Sets re-homing pacing.
    #[must_use]
    pub fn rehome(mut self, rehome: RehomeConfig) -> Self {
        self.config.rehome = rehome;
        self
    }

    /// Sets step deadlines.
    #[must_use]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Heartbeat interval and how long without a valid peer message before
    /// the peer is down (defaults 1 s and 3.5 s).
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, peer_timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.peer_timeout = peer_timeout;
        self
    }

    /// Priorities for a swap: the armed Backup's and the released Master's
    /// (defaults 254 and 50), so that the swap holds when preempt is on.
    #[must_use]
    pub fn swap_priorities(mut self, armed: u8, released: u8) -> Self {
        self.config.armed_priority = armed;
        self.config.released_priority = released;
        self
    }

    /// Age beyond which the Backup's data counts as stale in preflight
    /// (default 10 min).
    #[must_use]
    pub fn stale_sync_after(mut self, d: Duration) -> Self {
        self.config.stale_sync_after = d;
        self
    }

    /// Most events kept before the oldest are dropped (default 4096).
    #[must_use]
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.config.event_capacity = n;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first problem found.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        let id = &c.identity;
        if id.node_id.is_empty() {
            return Err(ConfigError::EmptyNodeId);
        }
        let long = |s: &str| s.len() > MAX_STRING_LEN;
        if long(&id.node_id)
            || long(&id.firmware)
            || long(&id.language_pack)
            || id.licences.len() > MAX_LICENCES
            || id.licences.iter().any(|l| long(l))
        {
            return Err(ConfigError::IdentityTooLarge);
        }
        if c.services.len() > usize::from(u16::MAX) / 4 {
            return Err(ConfigError::TooManyServices(c.services.len()));
        }
        let r = &c.rehome;
        let t = &c.timeouts;
        let all = [
            r.follow_deadline,
            r.nudge_interval,
            r.nudge_deadline,
            r.reboot_interval,
            r.reboot_deadline,
            r.expected_nudge,
            r.expected_reboot,
            t.command,
            t.sync,
            t.peer_request,
            t.upgrade,
            t.await_peer,
            t.node_ready,
            c.heartbeat_interval,
            c.peer_timeout,
            c.stale_sync_after,
        ];
        if all.iter().any(|d| *d > MAX_DURATION)
            || c.services.iter().any(|s| {
                s.ready_timeout > MAX_DURATION
                    || s.check_interval > MAX_DURATION
                    || s.expected_ready > MAX_DURATION
            })
        {
            return Err(ConfigError::TooLong);
        }
        for (i, s) in c.services.iter().enumerate() {
            for d in &s.depends_on {
                if usize::from(d.0) >= i {
                    return Err(ConfigError::ServiceOrder {
                        service: i,
                        depends_on: d.0,
                    });
                }
            }
            if s.check_interval.is_zero() || s.ready_timeout.is_zero() {
                return Err(ConfigError::ZeroDuration(Field::ServiceTiming));
            }
        }
        if u32::try_from(c.phones.len()).is_err() {
            return Err(ConfigError::TooManyPhones);
        }
        let r = &c.rehome;
        if r.nudge_interval.is_zero() || r.reboot_interval.is_zero() {
            return Err(ConfigError::ZeroDuration(Field::Pacing));
        }
        if r.max_concurrent_reboots == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if c.heartbeat_interval.is_zero() || c.peer_timeout <= c.heartbeat_interval {
            return Err(ConfigError::ZeroDuration(Field::Heartbeat));
        }
        let t = &c.timeouts;
        if [
            t.command,
            t.sync,
            t.peer_request,
            t.upgrade,
            t.await_peer,
            t.node_ready,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err(ConfigError::ZeroDuration(Field::Timeouts));
        }
        if c.released_priority >= c.armed_priority
            || c.released_priority == 0
            || c.armed_priority == 255
        {
            return Err(ConfigError::SwapPriorities {
                armed: c.armed_priority,
                released: c.released_priority,
            });
        }
        if c.event_capacity == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        Ok(c)
    }
}

/// Which setting a [`ConfigError::ZeroDuration`] is about.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A service's check interval or ready timeout.
    ServiceTiming,
    /// Nudge or reboot pacing.
    Pacing,
    /// Heartbeat interval or peer timeout (which must exceed the interval).
    Heartbeat,
    /// A step deadline.
    Timeouts,
}

/// Why a configuration is invalid.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The node id is empty.
    #[error("node id is empty")]
    EmptyNodeId,
    /// An identity field exceeds the peer-message limits.
    #[error("identity exceeds the peer-message limits")]
    IdentityTooLarge,
    /// Too many services.
    #[error("{0} services is too many")]
    TooManyServices(usize),
    /// A service depends on itself or on a later service.
    #[error("service {service} depends on service {depends_on}, which does not come before it")]
    ServiceOrder {
        /// The service.
        service: usize,
        /// Its bad dependency.
        depends_on: u16,
    },
    /// More phones than ids.
    #[error("too many phones")]
    TooManyPhones,
    /// A duration that must be positive is zero.
    #[error("zero or inconsistent duration: {0:?}")]
    ZeroDuration(Field),
    /// A duration exceeds [`MAX_DURATION`].
    #[error("a duration exceeds 30 days")]
    TooLong,
    /// A count that must be positive is zero.
    #[error("zero concurrency or capacity")]
    ZeroConcurrency,
    /// Swap priorities out of order.
    #[error(
        "swap priorities armed {armed} and released {released} must satisfy 0 < released < armed < 255"
    )]
    SwapPriorities {
        /// Armed priority.
        armed: u8,
        /// Released priority.
        released: u8,
    },
}
