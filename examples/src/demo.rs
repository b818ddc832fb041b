//! In-process services and simulated phones for the `pair` demo and the
//! integration tests: what [`crate::hooks::ShellHooks`] does with real
//! processes, with delays instead, and a simulated registrar that the
//! phones' registration checks ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failover_orchestrator::PhoneMethod;

use crate::config::Service;
use crate::hooks::{BoxFut, Hooks, Readiness};
use crate::phones::Phone;

/// The service the simulated phones register with.
pub const REGISTRAR: &str = "sip";

/// When a simulated phone registers with the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneModel {
    /// A phone that follows the address registers by its own retry timer,
    /// between these two delays (spread by phone) after the node's
    /// registrar ([`REGISTRAR`]) is ready.
    pub follow: (Duration, Duration),
    /// A phone that follows the address or is nudged registers this long
    /// after a nudge.
    pub nudge: Duration,
    /// Any phone but one listed for a person registers this long after its
    /// reboot starts.
    pub reboot: Duration,
}

impl PhoneModel {
    /// The project's phone model, as the orchestrator's simulation runs it
    /// and its `RehomeConfig` expects: a phone that follows the address
    /// re-registers 0.2 to 3.0 s after the registrar is back, a nudged one
    /// 0.5 s after the nudge, a rebooted one 20 s after the reboot.
    pub const PROJECT: PhoneModel = PhoneModel {
        follow: (Duration::from_millis(200), Duration::from_millis(3_000)),
        nudge: Duration::from_millis(500),
        reboot: Duration::from_secs(20),
    };

    /// When a phone that follows the address registers, after the
    /// registrar is ready: the same delay for the same phone every time.
    #[must_use]
    pub fn follow_delay(&self, phone: &str) -> Duration {
        let (lo, hi) = self.follow;
        let span = u64::try_from(hi.saturating_sub(lo).as_millis()).unwrap_or(u64::MAX);
        if span == 0 {
            return lo;
        }
        // FNV-1a, then SplitMix64's finaliser: names that differ in one
        // digit land far apart.
        let mut h = phone.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        lo + Duration::from_millis(h % span)
    }
}

impl std::fmt::Display for PhoneModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        write!(
            f,
            "a phone that follows the address registers {} to {} after the registrar ({REGISTRAR}) \
             is ready, a nudged one {} after the nudge, a rebooted one {} after the reboot; \
             each counts as home once the registrar's check sees it",
            s(self.follow.0),
            s(self.follow.1),
            s(self.nudge),
            s(self.reboot)
        )
    }
}

/// What the simulated services and phones remember.
#[derive(Default)]
struct DemoState {
    /// Services started, by index.
    started: HashMap<usize, Instant>,
    /// When the registrar was started.
    registrar_started: Option<Instant>,
    /// Each phone's last action: when, and whether it was a reboot.
    acted: HashMap<String, (Instant, bool)>,
}

/// Services that are ready a fixed time after they start, and simulated
/// phones that register with the node as [`PhoneModel`] says; the
/// registration check asks that simulated registrar.
pub struct DemoHooks {
    /// How long a service takes to become ready.
    pub service_ready_after: Duration,
    /// When phones register.
    pub phones: PhoneModel,
    state: Arc<Mutex<DemoState>>,
}

/// The longest a registration check waits.
const CHECK_LIMIT: Duration = Duration::from_secs(120);

impl DemoHooks {
    /// Hooks with the given service delay and phone model.
    #[must_use]
    pub fn new(service_ready_after: Duration, phones: PhoneModel) -> Self {
        DemoHooks {
            service_ready_after,
            phones,
            state: Arc::new(Mutex::new(DemoState::default())),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut DemoState) -> R) -> R {
        lock(&self.state, f)
    }
}

fn lock<R>(state: &Mutex<DemoState>, f: impl FnOnce(&mut DemoState) -> R) -> R {
    match state.lock() {
        Ok(mut g) => f(&mut g),
        Err(p) => f(&mut p.into_inner()),
    }
}

/// When the simulated phone registers with this node, if it does.
fn registers_at(
    st: &DemoState,
    model: &PhoneModel,
    ready_after: Duration,
    phone: &Phone,
) -> Option<Instant> {
    let method = phone.spec.method;
    if matches!(method, PhoneMethod::Person(_)) {
        return None;
    }
    let after_action = st.acted.get(&phone.name).and_then(|(at, reboot)| {
        if *reboot {
            Some(*at + model.reboot)
        } else if method == PhoneMethod::Reboot {
            None
        } else {
            Some(*at + model.nudge)
        }
    });
    let by_itself = (method == PhoneMethod::FollowsAddress)
        .then_some(st.registrar_started)
        .flatten()
        .map(|t| t + ready_after + model.follow_delay(&phone.name));
    match (after_action, by_itself) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Hooks for DemoHooks {
    fn start_service(&self, index: usize, svc: &Service) -> BoxFut<Result<(), String>> {
        let registrar = svc.name == REGISTRAR;
        self.with(|s| {
            let at = *s.started.entry(index).or_insert_with(Instant::now);
            if registrar {
                s.registrar_started = Some(at);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn check_service(&self, index: usize, _svc: &Service) -> BoxFut<Readiness> {
        let r = match self.with(|s| s.started.get(&index).copied()) {
            None => Readiness::Dead,
            Some(t) if t.elapsed() >= self.service_ready_after => Readiness::Ready,
            Some(_) => Readiness::NotReady,
        };
        Box::pin(async move { r })
    }

    fn stop_service(&self, index: usize, svc: &Service) -> BoxFut<()> {
        let registrar = svc.name == REGISTRAR;
        self.with(|s| {
            s.started.remove(&index);
            if registrar {
                // The phones registered with it are gone with it.
                s.registrar_started = None;
                s.acted.clear();
            }
        });
        Box::pin(async {})
    }

    fn service_running(&self, index: usize) -> bool {
        self.with(|s| s.started.contains_key(&index))
    }

    fn phone_action(&self, phone: &Phone, reboot: bool) -> BoxFut<bool> {
        let ok = !matches!(phone.spec.method, PhoneMethod::Person(_));
        if ok {
            self.with(|s| s.acted.insert(phone.name.clone(), (Instant::now(), reboot)));
        }
        Box::pin(async move { ok })
    }

    /// Asks the simulated registrar every 10 ms until the phone is there.
    fn phone_registered(&self, phone: &Phone) -> Option<BoxFut<bool>> {
        let (state, model, ready_after) =
            (self.state.clone(), self.phones, self.service_ready_after);
        let phone = phone.clone();
        Some(Box::pin(async move {
            let until = Instant::now() + CHECK_LIMIT;
            loop {
                let at = lock(&state, |s| registers_at(s, &model, ready_after, &phone));
                let now = Instant::now();
                if at.is_some_and(|t| t <= now) {
                    return true;
                }
                if now >= until {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }))
    }
}

/// A phone inventory of `n` simulated phones: 60 % follow the address,
/// 30 % need a nudge, 8 % a reboot, 2 % a person (at least one of each
/// when `n` allows); the first two nudge phones are the reception (class 1).
#[must_use]
pub fn phone_inventory(n: usize) -> String {
    let person = (n / 50).max(1);
    let reboot = (n * 8 / 100).max(1);
    let nudge = n * 30 / 100;
    let follow = n.saturating_sub(person + reboot + nudge);
    let mut out = String::new();
    for i in 0..n {
        let (method, extra) = if i < follow {
            ("follow", "")
        } else if i < follow + nudge {
            ("nudge", "nudge = \"true\"\nreboot = \"true\"\n")
        } else if i < follow + nudge + reboot {
            ("reboot", "reboot = \"true\"\n")
        } else {
            ("person", "reason = \"unsupported-model\"\n")
        };
        let class = if method == "nudge" && i < follow + 2 {
            1
        } else {
            5
        };
        out.push_str(&format!(
            "[[phone]]\nname = \"ext-{n:03}\"\nmodel = \"sim\"\naddress = \"phone-{n:03}\"\nmethod = \"{method}\"\nclass = {class}\n{extra}\n",
            n = 100 + i
        ));
    }
    out
}

/// A node running in this process as a tokio task: what the `pair` demo
/// and the integration tests start, stop and crash.
pub struct InProcessNode {
    stop: Option<tokio::sync::oneshot::Sender<crate::node::Stop>>,
    task: tokio::task::JoinHandle<Result<(), crate::node::NodeError>>,
    /// Operator requests and the status snapshot.
    pub handle: crate::node::NodeHandle,
}

impl InProcessNode {
    /// Starts a node with `hooks`, unprivileged; returns once it runs
    /// (its status endpoint, if any, listens).
    ///
    /// # Errors
    /// Why the node did not start.
    pub async fn start(
        config: crate::config::NodeConfig,
        hooks: std::sync::Arc<dyn Hooks>,
    ) -> Result<InProcessNode, String> {
        use crate::node::{Options, Stop, run};
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
        let task = tokio::spawn(run(
            config,
            Options { privileged: false },
            hooks,
            async move { stop_rx.await.unwrap_or(Stop::Graceful) },
            Some(ready_tx),
        ));
        match ready_rx.await {
            Ok(handle) => Ok(InProcessNode {
                stop: Some(stop_tx),
                task,
                handle,
            }),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "stopped during start".into(),
                Err(e) => e.to_string(),
            }),
        }
    }

    /// Stops the node (`Stop::Crash`: at once, without a word to the peer)
    /// and waits until it has.
    ///
    /// # Errors
    /// What the node's run ended with, if not success.
    pub async fn stop(mut self, how: crate::node::Stop) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(how);
        }
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The latest status snapshot.
    #[must_use]
    pub fn snapshot(&self) -> crate::node::Snapshot {
        match self.handle.snapshot.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// What differs between the demo nodes that the `pair` demo and the tests
/// configure (udp transport, VRID 51, one virtual address, sync with the
/// licences excluded, a status endpoint and the appliance's identity).
pub struct DemoNode<'a> {
    /// Node id; its tree is `<root>/<name>/data`.
    pub name: &'a str,
    /// VRRP priority.
    pub priority: u8,
    /// Advertisement interval.
    pub interval_ms: u64,
    /// Seconds between sync rounds.
    pub sync_interval_s: u64,
    /// Whether `<root>/phones.toml` is its phone inventory.
    pub phones: bool,
    /// In-process services, each started after the one before it.
    pub services: &'a [&'a str],
}

/// Where a demo node listens and what it talks to.
pub struct DemoAddrs {
    /// VRRP over UDP: ours, the peer's.
    pub vrrp: (std::net::SocketAddr, std::net::SocketAddr),
    /// Peer link: ours, the peer's.
    pub sync: (std::net::SocketAddr, std::net::SocketAddr),
    /// Status API.
    pub status: std::net::SocketAddr,
    /// Backup GUI forward.
    pub gui: u16,
}

/// A demo node's configuration, through the same parser as a file's
/// (`sync.key` in `root`).
///
/// # Errors
/// What the parser says of it.
pub fn demo_config(
    node: &DemoNode<'_>,
    addrs: &DemoAddrs,
    root: &std::path::Path,
) -> Result<crate::config::NodeConfig, crate::config::ConfigError> {
    let DemoNode {
        name,
        priority,
        interval_ms,
        sync_interval_s,
        phones,
        services,
    } = node;
    let phones = if *phones {
        "phones = \"phones.toml\""
    } else {
        ""
    };
    let mut text = format!(
        r#"
id = "{name}"
{phones}
[vrrp]
transport = "udp"
vrid = 51
priority = {priority}
advert_interval_ms = {interval_ms}
virtual_ips = ["10.99.0.100/24"]
udp_listen = "{vl}"
udp_peers = ["{vp}"]
[sync]
listen = "{sl}"
peer = "{sp}"
dir = "{name}/data"
interval_s = {sync_interval_s}
key_file = "sync.key"
exclude = ["licenses/**"]
[status]
listen = "{status}"
backup_gui_port = {gui}
[identity]
firmware = "5.1.30"
language_pack = "en-1"
licenses = ["pbx-32"]
"#,
        vl = addrs.vrrp.0,
        vp = addrs.vrrp.1,
        sl = addrs.sync.0,
        sp = addrs.sync.1,
        status = addrs.status,
        gui = addrs.gui,
    );
    for (i, svc) in services.iter().enumerate() {
        text.push_str(&format!(
            "[[service]]\nname = \"{svc}\"\nstart = \"in-process\"\n"
        ));
        if let Some(prev) = i.checked_sub(1).and_then(|p| services.get(p)) {
            text.push_str(&format!("after = [\"{prev}\"]\n"));
        }
    }
    crate::config::NodeConfig::parse(&text, root)
}
