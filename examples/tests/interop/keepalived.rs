//! keepalived as a peer: its configuration written into the bed's
//! directory, run in the foreground in a node namespace (VRRP subsystem
//! only, no respawn, no syslog), one instance per namespace with its own
//! pid files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::bed::{Bed, Proc, signal, wait_until};

/// One keepalived VRRP instance's settings.
#[derive(Debug, Clone)]
pub struct KaConfig {
    /// 2 or 3.
    pub version: u8,
    /// Virtual router id.
    pub vrid: u8,
    /// Priority.
    pub priority: u8,
    /// Advertisement interval; v2 takes whole seconds.
    pub interval_ms: u32,
    /// Start as Master (sends at once) rather than as Backup.
    pub start_master: bool,
    /// `nopreempt`.
    pub nopreempt: bool,
    /// Virtual addresses with prefix length, e.g. `10.99.0.100/24`.
    pub vips: Vec<String>,
    /// keepalived's real-time options (`vrrp_rt_priority`, `vrrp_no_swap`),
    /// for a fair comparison with a node that schedules in real time.
    pub realtime: bool,
    /// `v3_checksum_as_v2` (VRRPv3/IPv4 checksum without the
    /// pseudo-header); only newer keepalived has it, see [`supports_checksum_as_v2`].
    pub checksum_as_v2: bool,
}

impl KaConfig {
    /// VRRPv3, 10.99.0.100/24, vrid 51.
    pub fn v3(priority: u8, interval_ms: u32) -> KaConfig {
        KaConfig {
            version: 3,
            vrid: 51,
            priority,
            interval_ms,
            start_master: false,
            nopreempt: false,
            vips: vec!["10.99.0.100/24".to_owned()],
            realtime: false,
            checksum_as_v2: false,
        }
    }

    /// keepalived's `advert_int`: seconds, fractions allowed for v3.
    fn advert_int(&self) -> String {
        let ms = self.interval_ms;
        if ms.is_multiple_of(1000) {
            (ms / 1000).to_string()
        } else {
            format!("{}.{:03}", ms / 1000, ms % 1000)
                .trim_end_matches('0')
                .to_owned()
        }
    }

    /// The configuration file text.
    pub fn render(&self, router_id: &str) -> String {
        let mut g = format!(
            "global_defs {{\n  router_id {router_id}\n  vrrp_version {}\n",
            self.version
        );
        if self.realtime {
            g += "  vrrp_rt_priority 50\n  vrrp_no_swap\n";
        }
        g += "}\n";
        let mut i = format!(
            "vrrp_instance VI_{vrid} {{\n  state {state}\n  interface eth0\n  \
             virtual_router_id {vrid}\n  priority {prio}\n  advert_int {int}\n",
            vrid = self.vrid,
            state = if self.start_master {
                "MASTER"
            } else {
                "BACKUP"
            },
            prio = self.priority,
            int = self.advert_int(),
        );
        if self.nopreempt {
            i += "  nopreempt\n";
        }
        if self.checksum_as_v2 {
            i += "  v3_checksum_as_v2\n";
        }
        i += "  virtual_ipaddress {\n";
        for v in &self.vips {
            i += &format!("    {v}\n");
        }
        i += "  }\n}\n";
        g + &i
    }
}

/// A running keepalived.
pub struct Keepalived {
    proc: Proc,
    vrrp_pidfile: std::path::PathBuf,
}

impl Keepalived {
    /// Writes the configuration and starts keepalived in node `node`'s
    /// namespace; returns once its VRRP process runs.
    #[track_caller]
    pub fn start(bed: &Bed, node: usize, name: &str, config: &KaConfig) -> Keepalived {
        let conf = bed.path(&format!("{name}.conf"));
        std::fs::write(&conf, config.render(name)).expect("write keepalived.conf");
        let pidfile = bed.path(&format!("{name}.pid"));
        let vrrp_pidfile = bed.path(&format!("{name}.vrrp.pid"));
        let _ = std::fs::remove_file(&vrrp_pidfile);
        let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let args = [
            "--dont-fork".to_owned(),
            "--log-console".to_owned(),
            "--log-detail".to_owned(),
            "--no-syslog".to_owned(),
            "--vrrp".to_owned(),
            "--dont-respawn".to_owned(),
            format!("--use-file={}", s(&conf)),
            format!("--pid={}", s(&pidfile)),
            format!("--vrrp_pid={}", s(&vrrp_pidfile)),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = bed.spawn_in(node, &format!("{name}.log"), Path::new("keepalived"), &args);
        let started = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&vrrp_pidfile).is_ok_and(|p| p.trim().parse::<u32>().is_ok())
        });
        assert!(
            started && proc.running(),
            "keepalived {name} did not start: {}",
            proc.log_text()
        );
        Keepalived { proc, vrrp_pidfile }
    }

    fn vrrp_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.vrrp_pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// SIGKILL: the VRRP process first (so that it cannot hear of its
    /// parent's death and stop gracefully), then the parent.
    /// Its processes: the parent and the VRRP child.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.proc.pid().into_iter().collect();
        pids.extend(self.vrrp_pid());
        pids
    }

    pub fn kill_hard(&mut self) {
        // Once the parent is reaped, its VRRP child is gone too (killed
        // here, or ended by the parent's graceful stop): no pid is reused.
        let Some(parent) = self.proc.pid() else {
            return;
        };
        let mut pids: Vec<u32> = self.vrrp_pid().into_iter().collect();
        pids.push(parent);
        signal("KILL", &pids);
        self.proc.kill();
    }

    /// SIGTERM: keepalived sends priority 0 and releases its addresses.
    pub fn stop_graceful(&mut self) {
        self.proc.stop("TERM", Duration::from_secs(10));
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// How many times its log says it entered MASTER state.
    pub fn master_entries(&self) -> usize {
        self.log_text().matches("Entering MASTER STATE").count()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// Whether the installed keepalived knows `v3_checksum_as_v2` (keepalived
/// 2.3 and later); asked with a configuration test, so nothing runs.
pub fn supports_checksum_as_v2(dir: &Path) -> bool {
    let mut c = KaConfig::v3(100, 1000);
    c.checksum_as_v2 = true;
    let conf = dir.join("probe-as-v2.conf");
    if std::fs::write(&conf, c.render("probe")).is_err() {
        return false;
    }
    Command::new("keepalived")
        .arg(format!("--use-file={}", conf.display()))
        .arg("--config-test")
        .output()
        .is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            o.status.success() && !text.contains("Unknown keyword")
        })
}
