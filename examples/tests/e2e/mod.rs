//! Two nodes of a pair in this process, on loopback (udp transport, pbx-a on
//! 127.0.0.1, pbx-b on 127.0.0.2), with temporary directories, in-process
//! services and a few simulated phones; and a small client for their status
//! API. Shared by `two_nodes.rs` and `browser.rs`: every check goes through
//! HTTP, as an operator's tools would.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use examples::config::NodeConfig;
use examples::demo::{
    DemoAddrs, DemoHooks, DemoNode, InProcessNode, PhoneModel, demo_config, phone_inventory,
};
use examples::node::Stop;
use serde_json::Value;

/// Advertisement interval of every test pair.
pub const INTERVAL_MS: u64 = 100;

/// pbx-a's loopback address.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// pbx-b's loopback address.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temporary directory");
        Self(p)
    }

    /// A path inside.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports for one pair, all chosen by the kernel and distinct. The probe
/// sockets are held until every port is picked, so that no two coincide.
struct Ports {
    vrrp: (SocketAddr, SocketAddr),
    sync: (SocketAddr, SocketAddr),
    /// The status port, free on both addresses: the Master's Backup GUI
    /// forward goes to the peer's address at its own status port.
    status: u16,
    /// The Backup GUI port, free on both addresses: each node listens on
    /// it (and forwards while Master).
    gui: u16,
}

fn pick_ports() -> Ports {
    let udp = |ip: Ipv4Addr| std::net::UdpSocket::bind((ip, 0)).expect("free udp port");
    let tcp = |ip: Ipv4Addr| std::net::TcpListener::bind((ip, 0)).expect("free tcp port");
    let (va, vb) = (udp(A_IP), udp(B_IP));
    let (sa, sb) = (tcp(A_IP), tcp(B_IP));
    // A port free on both addresses.
    let both = || loop {
        let a = tcp(A_IP);
        let port = a.local_addr().expect("local address").port();
        if let Ok(b) = std::net::TcpListener::bind((B_IP, port)) {
            break (a, b);
        }
    };
    let (status_a, status_b) = both();
    let (gui, gui_b) = both();
    let addr = |s: &std::net::UdpSocket| s.local_addr().expect("local address");
    let taddr = |s: &std::net::TcpListener| s.local_addr().expect("local address");
    let ports = Ports {
        vrrp: (addr(&va), addr(&vb)),
        sync: (taddr(&sa), taddr(&sb)),
        status: taddr(&status_a).port(),
        gui: taddr(&gui).port(),
    };
    drop((va, vb, sa, sb, gui, gui_b, status_a, status_b));
    ports
}

/// What a test pair looks like.
pub struct PairSpec {
    /// A tag for the temporary directory.
    pub tag: &'static str,
    /// pbx-a's priority.
    pub priority_a: u8,
    /// pbx-b's priority.
    pub priority_b: u8,
    /// Simulated phones in the inventory.
    pub phones: usize,
}

/// One node: its configuration and, while it runs, its task.
pub struct Node {
    /// Its id.
    pub name: &'static str,
    /// Its configuration.
    pub config: NodeConfig,
    /// Its status endpoint.
    pub status: SocketAddr,
    /// The `Authorization` value its requests carry (see
    /// [`Pair::use_token`]).
    pub auth: Option<String>,
    /// Its services and phones; `None`: [`DemoHooks`] with short delays.
    pub hooks: Option<Arc<dyn examples::hooks::Hooks>>,
    running: Option<InProcessNode>,
}

impl Node {
    /// Starts the node; returns once its status endpoint listens.
    pub async fn start(&mut self) {
        let hooks = self
            .hooks
            .clone()
            .unwrap_or_else(|| Arc::new(quick_hooks()));
        match InProcessNode::start(self.config.clone(), hooks).await {
            Ok(n) => self.running = Some(n),
            Err(e) => panic!("{} did not start: {e}", self.name),
        }
    }

    /// Stops the node (`Stop::Crash`: at once, without a word to the peer)
    /// and waits until it has.
    pub async fn stop(&mut self, how: Stop) {
        if let Some(n) = self.running.take() {
            match tokio::time::timeout(Duration::from_secs(15), n.stop(how)).await {
                Ok(Ok(())) => {}
                other => panic!("{} did not stop cleanly: {other:?}", self.name),
            }
        }
    }

    /// `http://ADDR` of its status endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.status)
    }

    /// `GET /status`.
    pub async fn status(&self) -> Value {
        get_json_as(format!("{}/status", self.url()), self.auth.clone()).await
    }

    /// `POST path` with a JSON body: the HTTP status code and the answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post_json_as(format!("{}{path}", self.url()), body, self.auth.clone()).await
    }

    /// Polls `GET /status` every 10 ms until `cond` holds; panics after
    /// `limit`, with the last status.
    pub async fn wait(&self, limit: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + limit;
        loop {
            let s = self.status().await;
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "{}: no {what} within {limit:?}; last status: {s:#}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the election made this node `role`.
    pub async fn wait_role(&self, role: &str) -> Value {
        self.wait(Duration::from_secs(10), role, |s| s["role"] == role)
            .await
    }
}

/// In-process services ready 30 ms after they start, and simulated phones
/// that register within 150 ms.
pub fn quick_hooks() -> DemoHooks {
    DemoHooks::new(
        Duration::from_millis(30),
        PhoneModel {
            follow: (Duration::from_millis(20), Duration::from_millis(80)),
            nudge: Duration::from_millis(50),
            reboot: Duration::from_millis(150),
        },
    )
}

/// Two nodes and their directories (not started).
pub struct Pair {
    /// pbx-a (127.0.0.1).
    pub a: Node,
    /// pbx-b (127.0.0.2).
    pub b: Node,
    /// The Backup GUI forward port on the Master (pbx-a's address).
    pub gui: u16,
    /// Configuration, key, phones and both data directories.
    pub root: TempDir,
}

impl Pair {
    /// pbx-a's data directory (`[sync].dir`).
    pub fn dir_a(&self) -> PathBuf {
        self.root.join("pbx-a/data")
    }

    /// pbx-b's data directory.
    pub fn dir_b(&self) -> PathBuf {
        self.root.join("pbx-b/data")
    }

    /// Gives both units `[status] token_file` with `token` (before they
    /// start); every request of the test then carries it as a Bearer token.
    pub fn use_token(&mut self, token: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.root.join("api.token");
        std::fs::write(&path, format!("{token}\n")).expect("token file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("token file mode");
        for node in [&mut self.a, &mut self.b] {
            let status = node.config.status.as_mut().expect("a [status] table");
            status.token_file = Some(path.clone());
            node.auth = Some(format!("Bearer {token}"));
        }
    }

    /// Stops both nodes gracefully, the Backup and the Master together.
    pub async fn stop(&mut self) {
        let (a, b) = (&mut self.a, &mut self.b);
        tokio::join!(a.stop(Stop::Graceful), b.stop(Stop::Graceful));
    }
}

/// Builds a pair: configuration files, a key, a phone inventory, and a
/// small tree of config and voice data in pbx-a's data directory.
pub fn pair(spec: &PairSpec) -> Pair {
    let root = TempDir::new(spec.tag);
    let ports = pick_ports();
    // 32 random bytes, readable by the owner only (anything else is refused).
    std::fs::write(
        root.join("sync.key"),
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    )
    .expect("key file");
    std::fs::set_permissions(
        root.join("sync.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("key file mode");
    std::fs::write(root.join("phones.toml"), phone_inventory(spec.phones)).expect("phones");
    seed(&root.join("pbx-a/data"));
    std::fs::create_dir_all(root.join("pbx-b/data")).expect("pbx-b data directory");
    let node = |name: &'static str, priority: u8, ip: Ipv4Addr, vrrp, sync| {
        let status = SocketAddr::from((ip, ports.status));
        let node = DemoNode {
            name,
            priority,
            interval_ms: INTERVAL_MS,
            sync_interval_s: 1,
            phones: spec.phones > 0,
            services: &["database", "sip"],
        };
        let addrs = DemoAddrs {
            vrrp,
            sync,
            status,
            gui: ports.gui,
        };
        let config =
            demo_config(&node, &addrs, &root.0).unwrap_or_else(|e| panic!("config of {name}: {e}"));
        Node {
            name,
            config,
            status,
            auth: None,
            hooks: None,
            running: None,
        }
    };
    let a = node("pbx-a", spec.priority_a, A_IP, ports.vrrp, ports.sync);
    let b = node(
        "pbx-b",
        spec.priority_b,
        B_IP,
        (ports.vrrp.1, ports.vrrp.0),
        (ports.sync.1, ports.sync.0),
    );
    Pair {
        a,
        b,
        gui: ports.gui,
        root,
    }
}

fn seed(dir: &Path) {
    for d in ["config", "voicemail/100", "licenses"] {
        std::fs::create_dir_all(dir.join(d)).expect("seed directory");
    }
    for ext in 100..110 {
        std::fs::write(
            dir.join(format!("config/ext-{ext}.conf")),
            format!("[ext-{ext}]\ntype=friend\ncontext=internal\n"),
        )
        .expect("seed file");
    }
    std::fs::write(
        dir.join("voicemail/100/msg0001.wav"),
        vec![0x11u8; 16 * 1024],
    )
    .expect("seed file");
    std::fs::write(dir.join("licenses/pbx-32.lic"), "stays with its unit\n").expect("seed file");
}

/// Starts both nodes together: the lower-priority one first, so that the
/// start order cannot be what decides the election.
pub async fn start_both(pair: &mut Pair) {
    let (first, second) = if pair.a.config.vrrp.priority.get() < pair.b.config.vrrp.priority.get() {
        (&mut pair.a, &mut pair.b)
    } else {
        (&mut pair.b, &mut pair.a)
    };
    first.start().await;
    second.start().await;
}

/// Starts pbx-a, waits until it is a ready Master, then starts pbx-b and
/// waits until pbx-a reports it UP as an Active Backup (its heartbeat
/// says Backup): the state every scenario starts from.
pub async fn established(pair: &mut Pair) {
    pair.a.start().await;
    pair.a.wait_role("Master").await;
    pair.b.start().await;
    pair.b.wait_role("Backup").await;
    pair.a
        .wait(Duration::from_secs(10), "Backup reported UP", |s| {
            s["summary"] == "Backup device with ID pbx-b is UP (Active mode)"
                && s["status"]["peer"]["role"] == "Backup"
        })
        .await;
}

/// The Backup's last sync generation (0 before the first).
pub fn generation(s: &Value) -> u64 {
    s["status"]["sync"]["generation"].as_u64().unwrap_or(0)
}

/// Milestone names of the last timeline, in order (`"ServiceReady"` for
/// `{"ServiceReady": {...}}`).
pub fn milestones(s: &Value) -> Vec<String> {
    s["timeline"]["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| match &e["what"] {
                    Value::String(m) => m.clone(),
                    Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A blocking HTTP client for loopback: no proxy, statuses as values.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .proxy(None)
        .build()
        .into()
}

/// `GET url` as JSON (a blocking client on the blocking pool).
pub async fn get_json(url: String) -> Value {
    get_json_as(url, None).await
}

/// `GET url` as JSON, with `auth` as its `Authorization`.
pub async fn get_json_as(url: String, auth: Option<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let mut req = agent().get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut r = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(r.status(), 200, "GET {url}");
        r.body_mut()
            .read_json::<Value>()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    })
    .await
    .expect("GET task")
}

/// `GET url` as text.
pub async fn get_text(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut r = agent()
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let code = r.status().as_u16();
        let text = r
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (code, text)
    })
    .await
    .expect("GET task")
}

/// `POST url` with a JSON body: the status code and the JSON answer.
pub async fn post_json(url: String, body: Value) -> (u16, Value) {
    post_json_as(url, body, None).await
}

/// `POST url` with a JSON body and `auth` as its `Authorization`.
pub async fn post_json_as(url: String, body: Value, auth: Option<String>) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let mut req = agent().post(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut r = req
            .send_json(&body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let code = r.status().as_u16();
        let v = r
            .body_mut()
            .read_json::<Value>()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        (code, v)
    })
    .await
    .expect("POST task")
}
