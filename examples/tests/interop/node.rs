//! Our `node` example as a process in a namespace: its TOML written into
//! the bed's directory, the raw transport on `eth0`, the status API on the
//! namespace's own loopback, reached with bash's `/dev/tcp` from inside
//! the namespace (so no traffic leaves it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::bed::{Bed, Proc, wait_until};

/// The status API's port, on 127.0.0.1 in each node's namespace.
pub const STATUS_PORT: u16 = 8080;

/// One node's settings (the subset of the `node` contract the tests use).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// 2 or 3.
    pub version: u8,
    /// Virtual router id.
    pub vrid: u8,
    /// Priority.
    pub priority: u8,
    /// Advertisement interval.
    pub interval_ms: u32,
    /// Preempt a lower-priority Master.
    pub preempt: bool,
    /// Virtual addresses with prefix length.
    pub vips: Vec<String>,
    /// `"pseudo-header"` or `"message-only"`.
    pub v3_ipv4_checksum: &'static str,
    /// `[[service]]` entries: (name, start command).
    pub services: Vec<(String, String)>,
    /// `[sync]`: (listen, peer, dir, interval_s, key file).
    pub sync: Option<SyncConfig>,
    /// `rt_priority = 50` and `no_swap = true`, as keepalived's
    /// `vrrp_rt_priority 50` and `vrrp_no_swap`.
    pub realtime: bool,
}

/// The `[sync]` table.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// This node's peer-link address.
    pub listen: String,
    /// The peer's.
    pub peer: String,
    /// The replicated tree.
    pub dir: PathBuf,
    /// Seconds between rounds.
    pub interval_s: u32,
    /// The key file.
    pub key_file: PathBuf,
}

impl NodeConfig {
    /// VRRPv3, 10.99.0.100/24, vrid 51, no preemption (the appliance
    /// profile), pseudo-header checksums.
    pub fn v3(priority: u8, interval_ms: u32) -> NodeConfig {
        NodeConfig {
            version: 3,
            vrid: 51,
            priority,
            interval_ms,
            preempt: false,
            vips: vec!["10.99.0.100/24".to_owned()],
            v3_ipv4_checksum: "pseudo-header",
            services: Vec::new(),
            sync: None,
            realtime: false,
        }
    }

    /// The TOML text for node `id`, state kept in `state_dir`.
    pub fn render(&self, id: &str, state_dir: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let vips: Vec<String> = self.vips.iter().map(|v| q(v)).collect();
        let mut t = format!(
            "id = {id}\nstate_dir = {state}\n\n[vrrp]\ntransport = \"raw\"\n\
             interface = \"eth0\"\nversion = {version}\nvrid = {vrid}\npriority = {prio}\n\
             advert_interval_ms = {int}\npreempt = {preempt}\naccept = true\n\
             virtual_ips = [{vips}]\nv3_ipv4_checksum = {ck}\n{rt}\n\
             [status]\nlisten = \"127.0.0.1:{STATUS_PORT}\"\n",
            id = q(id),
            state = q(&state_dir.display().to_string()),
            version = self.version,
            vrid = self.vrid,
            prio = self.priority,
            int = self.interval_ms,
            preempt = self.preempt,
            vips = vips.join(", "),
            ck = q(self.v3_ipv4_checksum),
            rt = if self.realtime {
                "rt_priority = 50\nno_swap = true\n"
            } else {
                ""
            },
        );
        if let Some(s) = &self.sync {
            t += &format!(
                "\n[sync]\nlisten = {}\npeer = {}\ndir = {}\ninterval_s = {}\nkey_file = {}\n",
                q(&s.listen),
                q(&s.peer),
                q(&s.dir.display().to_string()),
                s.interval_s,
                q(&s.key_file.display().to_string()),
            );
        }
        for (name, start) in &self.services {
            t += &format!(
                "\n[[service]]\nname = {}\nstart = {}\nstart_timeout_ms = 10000\n\
                 stop_timeout_ms = 2000\n",
                q(name),
                q(start)
            );
        }
        t
    }
}

/// A running node.
pub struct Node {
    proc: Proc,
    /// Its namespace.
    pub ns: String,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Node {
    /// Writes the configuration and starts `node` in node `i`'s namespace;
    /// returns once its status API answers.
    #[track_caller]
    pub fn start(bed: &Bed, binary: &Path, i: usize, name: &str, cfg: &NodeConfig) -> Node {
        let config = bed.path(&format!("{name}.toml"));
        // One state directory per bed node, kept across restarts.
        let state = bed.path(&format!("node{i}.state"));
        std::fs::write(&config, cfg.render(name, &state)).expect("write node config");
        Node::start_with(bed, binary, i, name, config)
    }

    /// Starts `node` in node `i`'s namespace with an existing
    /// configuration file (a restart); returns once its status API
    /// answers.
    #[track_caller]
    pub fn start_with(bed: &Bed, binary: &Path, i: usize, name: &str, config: PathBuf) -> Node {
        let args = ["--config", config.to_str().expect("utf-8 path")];
        let proc = bed.spawn_in(i, &format!("{name}.log"), binary, &args);
        let mut node = Node {
            proc,
            ns: bed.nodes[i].clone(),
            config,
        };
        let up = wait_until(Duration::from_secs(15), || {
            node.status().is_some() || !node.proc.running()
        });
        assert!(
            up && node.proc.running(),
            "node {name} did not start:\n{}",
            node.log_text()
        );
        node
    }

    /// An HTTP/1.0 request to the status API from inside the namespace:
    /// (status code, body).
    pub fn http(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{STATUS_PORT}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{STATUS_PORT} && printf '%s' \"$1\" >&3 && timeout 10 cat <&3"
        );
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "bash", "-c", &script, "http", &request,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.http("GET", "/status", "")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The election role from `GET /status`.
    pub fn role(&self) -> Option<String> {
        self.status()?["role"].as_str().map(str::to_owned)
    }

    /// Waits until the role is `role`.
    pub fn wait_role(&self, role: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.role().as_deref() == Some(role))
    }

    /// SIGKILL (no priority 0, addresses left behind, as a crash).
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn kill_hard(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: graceful stop (priority 0, services stopped, address
    /// released); waits for the exit.
    pub fn stop_graceful(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.stop("TERM", Duration::from_secs(15))
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}
