//! In-process services and simulated phones for the `pair` demo and the
//! integration tests: what [`crate::hooks::ShellHooks`] does with real
//! processes, with delays instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use failover_orchestrator::PhoneMethod;

use crate::config::Service;
use crate::hooks::{BoxFut, Hooks, Readiness};
use crate::phones::Phone;

/// Services that are ready a fixed time after they start, and phones that
/// register a fixed time after a nudge or a reboot.
pub struct DemoHooks {
    /// How long a service takes to become ready.
    pub service_ready_after: Duration,
    /// How long a phone takes to register after a nudge.
    pub nudge_register_after: Duration,
    /// How long a phone takes to register after a reboot starts.
    pub reboot_register_after: Duration,
    started: Mutex<HashMap<usize, Instant>>,
}

impl DemoHooks {
    /// Hooks with the given delays.
    #[must_use]
    pub fn new(
        service_ready_after: Duration,
        nudge_register_after: Duration,
        reboot_register_after: Duration,
    ) -> Self {
        DemoHooks {
            service_ready_after,
            nudge_register_after,
            reboot_register_after,
            started: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<usize, Instant>) -> R) -> R {
        match self.started.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

impl Hooks for DemoHooks {
    fn start_service(&self, index: usize, _svc: &Service) -> BoxFut<Result<(), String>> {
        self.with(|s| {
            s.entry(index).or_insert_with(Instant::now);
        });
        Box::pin(async { Ok(()) })
    }

    fn check_service(&self, index: usize, _svc: &Service) -> BoxFut<Readiness> {
        let r = match self.with(|s| s.get(&index).copied()) {
            None => Readiness::Dead,
            Some(t) if t.elapsed() >= self.service_ready_after => Readiness::Ready,
            Some(_) => Readiness::NotReady,
        };
        Box::pin(async move { r })
    }

    fn stop_service(&self, index: usize, _svc: &Service) -> BoxFut<()> {
        self.with(|s| s.remove(&index));
        Box::pin(async {})
    }

    fn service_running(&self, index: usize) -> bool {
        self.with(|s| s.contains_key(&index))
    }

    fn phone_action(&self, phone: &Phone, _reboot: bool) -> BoxFut<bool> {
        let ok = !matches!(phone.spec.method, PhoneMethod::Person(_));
        Box::pin(async move { ok })
    }

    fn phone_registered(&self, phone: &Phone) -> Option<BoxFut<bool>> {
        let after = match phone.spec.method {
            PhoneMethod::Reboot => self.reboot_register_after,
            _ => self.nudge_register_after,
        };
        Some(Box::pin(async move {
            tokio::time::sleep(after).await;
            true
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
