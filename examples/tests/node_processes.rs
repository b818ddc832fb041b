//! The pair's operator behaviours on two real `node` processes, as a user
//! runs them: each from its own TOML file, VRRP over UDP on loopback
//! (pbx-a on 127.0.0.1, pbx-b on 127.0.0.2), the peer link over TCP, every
//! check and request through the status API over HTTP. Processes are ended
//! by their id, also when a test fails. Also here: the authenticated
//! control plane (token, `Host`, `Origin`, content type, the GUI forward)
//! and configuration errors, which stop a node with exit status 2 before it
//! creates a file or sends a packet.

mod e2e;
mod run;

use e2e::TempDir;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The Backups' sync interval in these tests.
const SYNC_INTERVAL_S: u64 = 4;

fn free_udp(ip: Ipv4Addr) -> std::net::UdpSocket {
    std::net::UdpSocket::bind((ip, 0)).expect("free udp port")
}

fn free_tcp(ip: Ipv4Addr) -> std::net::TcpListener {
    std::net::TcpListener::bind((ip, 0)).expect("free tcp port")
}

/// One node's process, ended by its id on drop.
struct Node {
    name: &'static str,
    config: PathBuf,
    data: PathBuf,
    status: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// The `Authorization` value every request of the test carries.
    auth: Option<String>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(run::example_bin("node"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node");
        self.child = Some(child);
        let t0 = Instant::now();
        while get(self.status, "/status", self.auth.as_deref()).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{} did not answer on {}\n{}",
                self.name,
                self.status,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let keep = if std::env::var_os("NODE_FULL_LOG").is_some() {
            usize::MAX
        } else {
            40
        };
        let tail: Vec<&str> = text.lines().rev().take(keep).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn status(&self) -> Value {
        get(self.status, "/status", self.auth.as_deref()).unwrap_or(Value::Null)
    }

    fn role(&self) -> String {
        self.status()["role"].as_str().unwrap_or("").to_owned()
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post(self.status, path, body, self.auth.as_deref())
    }

    /// Waits until `pred` holds on this node's status.
    #[track_caller]
    fn wait(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "{}: not {what} within {limit:?}: {s}\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Option<Value> {
    let mut req = e2e::agent().get(&format!("http://{addr}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let mut r = req.call().ok()?;
    (r.status() == 200).then(|| r.body_mut().read_json::<Value>().ok())?
}

fn post(addr: SocketAddr, path: &str, body: Value, auth: Option<&str>) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let mut req = e2e::agent().post(&url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let mut r = req
        .send_json(&body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let code = r.status().as_u16();
    let v = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    (code, v)
}

/// Two nodes' configuration files in `dir` (nothing started yet).
struct Pair {
    a: Node,
    b: Node,
    /// pbx-a's Backup GUI forward (served while it is Master).
    gui: SocketAddr,
    _dir: TempDir,
}

/// A TCP port free on both addresses, held by the two listeners returned.
fn free_on_both() -> (std::net::TcpListener, std::net::TcpListener) {
    loop {
        let a = free_tcp(A_IP);
        let port = a.local_addr().expect("address").port();
        if let Ok(b) = std::net::TcpListener::bind((B_IP, port)) {
            break (a, b);
        }
    }
}

fn pair(tag: &str, a_redundancy: bool) -> Pair {
    pair_with(tag, a_redundancy, None)
}

/// A pair whose status API, on the same port on both addresses, forwards
/// the Backup's page on a GUI port; with `token`, both units read it from
/// their `[status] token_file`.
fn pair_with(tag: &str, a_redundancy: bool, token: Option<&str>) -> Pair {
    pair_full(tag, a_redundancy, token, &|_, _| String::new())
}

/// [`pair_with`], each node's file ending with `extra(name, dir)` (TOML
/// sections such as `[hooks]`; `dir` is the pair's folder).
fn pair_full(
    tag: &str,
    a_redundancy: bool,
    token: Option<&str>,
    extra: &dyn Fn(&str, &Path) -> String,
) -> Pair {
    let dir = TempDir::new(tag);
    let root = dir.0.clone();
    // 32 random bytes, readable by the owner only (anything else is refused).
    key_file(
        &root.join("sync.key"),
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    );
    if let Some(t) = token {
        let path = root.join("api.token");
        std::fs::write(&path, format!("{t}\n")).expect("token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    // Every port chosen by the kernel, held until all are picked.
    let (va, vb) = (free_udp(A_IP), free_udp(B_IP));
    let (sa, sb) = (free_tcp(A_IP), free_tcp(B_IP));
    let (ha, hb) = free_on_both();
    let (ga, gb) = free_on_both();
    let addr = |l: &std::net::TcpListener| l.local_addr().expect("address");
    let uaddr = |u: &std::net::UdpSocket| u.local_addr().expect("address");
    let (vra, vrb, sya, syb, sta, stb, gui) = (
        uaddr(&va),
        uaddr(&vb),
        addr(&sa),
        addr(&sb),
        addr(&ha),
        addr(&hb),
        addr(&ga).port(),
    );
    drop((va, vb, sa, sb, ha, hb, ga, gb));
    let token_line = if token.is_some() {
        "token_file = \"api.token\"\n"
    } else {
        ""
    };
    let write = |name: &str, prio: u8, redundancy: bool, vl, vp, sl, sp, st| {
        let text = format!(
            r#"id = "{name}"
redundancy = {redundancy}
state_dir = "{name}/state"
[vrrp]
transport = "udp"
vrid = 51
priority = {prio}
advert_interval_ms = 100
virtual_ips = ["10.99.0.100/24"]
udp_listen = "{vl}"
udp_peers = ["{vp}"]
[sync]
listen = "{sl}"
peer = "{sp}"
dir = "{name}/data"
interval_s = {SYNC_INTERVAL_S}
key_file = "sync.key"
[status]
listen = "{st}"
backup_gui_port = {gui}
{token_line}
{extra}"#,
            extra = extra(name, &root),
        );
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("config");
        std::fs::create_dir_all(root.join(name).join("data")).expect("data dir");
        path
    };
    let ca = write("pbx-a", 200, a_redundancy, vra, vrb, sya, syb, sta);
    let cb = write("pbx-b", 100, true, vrb, vra, syb, sya, stb);
    let node = |name: &'static str, config: PathBuf, status| Node {
        name,
        data: root.join(name).join("data"),
        log: root.join(format!("{name}.log")),
        config,
        status,
        child: None,
        auth: token.map(|t| format!("Bearer {t}")),
    };
    Pair {
        a: node("pbx-a", ca, sta),
        b: node("pbx-b", cb, stb),
        gui: SocketAddr::from((A_IP, gui)),
        _dir: dir,
    }
}

/// The node knows its peer: up, and in the given role.
fn peer_is(s: &Value, role: &str) -> bool {
    s["status"]["peer"]["up"] == true && s["status"]["peer"]["role"] == role
}

fn generation(s: &Value) -> u64 {
    s["status"]["sync"]["generation"].as_u64().unwrap_or(0)
}

/// pbx-a Master, pbx-b its Backup with a first generation.
fn settled(p: &mut Pair) {
    p.a.start();
    p.a.wait("Master", Duration::from_secs(10), |s| s["role"] == "Master");
    p.b.start();
    p.b.wait("Backup with data", Duration::from_secs(20), |s| {
        s["role"] == "Backup" && generation(s) >= 1
    });
    p.a.wait("knowing its Backup", Duration::from_secs(5), |s| {
        peer_is(s, "Backup")
    });
}

#[test]
fn swap_with_a_passive_backup() {
    let mut p = pair("passive-swap", true);
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    let (code, answer) = p.b.post("/mode", json!({"mode": "Passive"}));
    assert_eq!(code, 202, "Passive refused: {answer}");
    p.b.wait("Passive", Duration::from_secs(5), |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    });
    // The Master learns it at once, not a heartbeat later.
    p.a.wait(
        "knowing its Backup is Passive",
        Duration::from_millis(500),
        |s| s["status"]["peer"]["mode"] == "Passive",
    );
    // Left just before the swap: a Passive Backup does not sync, so only
    // the swap's own round brings it over.
    std::fs::write(p.a.data.join("last.wav"), "a voicemail").expect("write");
    let (code, answer) = p.a.post("/swap", json!({}));
    assert_eq!(code, 202, "swap refused: {answer}");
    assert!(answer["procedure"].is_u64(), "{answer}");
    p.b.wait("Master", Duration::from_secs(20), |s| s["role"] == "Master");
    // Manual §8: the old Master returns as Backup, in the Passive mode the
    // Backup had.
    p.a.wait("Passive Backup", Duration::from_secs(20), |s| {
        s["role"] == "Backup" && s["vrrp"]["backup_mode"] == "Passive"
    });
    assert_eq!(
        std::fs::read_to_string(p.b.data.join("last.wav"))
            .ok()
            .as_deref(),
        Some("a voicemail")
    );
}

#[test]
fn five_swaps_in_a_row() {
    let mut p = pair("five-swaps", true);
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    for k in 0..5 {
        let (master, backup) = if p.a.role() == "Master" {
            (&p.a, &p.b)
        } else {
            (&p.b, &p.a)
        };
        std::fs::write(master.data.join(format!("swap-{k}.txt")), "x").expect("write");
        let (code, answer) = master.post("/swap", json!({}));
        assert_eq!(code, 202, "swap {k} refused: {answer}");
        backup.wait("Master", Duration::from_secs(20), |s| s["role"] == "Master");
        master.wait("Backup", Duration::from_secs(20), |s| s["role"] == "Backup");
        assert!(
            backup.data.join(format!("swap-{k}.txt")).exists(),
            "swap {k}"
        );
        // The procedure has finished on the old Master, and the new Master
        // knows its Backup, before the next.
        master.wait("done with the swap", Duration::from_secs(20), |s| {
            s["status"]["procedure"].is_null()
        });
        backup.wait("knowing its Backup", Duration::from_secs(10), |s| {
            peer_is(s, "Backup")
        });
    }
}

#[test]
fn both_units_started_together() {
    let mut p = pair("together", true);
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    p.a.start();
    p.b.start();
    p.a.wait("Master", Duration::from_secs(10), |s| s["role"] == "Master");
    p.b.wait("Backup", Duration::from_secs(10), |s| s["role"] == "Backup");
    let elected = Instant::now();
    // Within one sync interval and two seconds, the Backup holds the
    // Master's data.
    let limit = Duration::from_secs(SYNC_INTERVAL_S + 2);
    p.b.wait("holding the Master's data", limit, |s| generation(s) >= 1);
    assert!(elected.elapsed() <= limit);
    assert_eq!(
        std::fs::read_to_string(p.b.data.join("pbx.conf"))
            .ok()
            .as_deref(),
        Some("trunk=1\n")
    );
}

#[test]
fn redundancy_off_and_on_at_run_time() {
    // pbx-a runs one service: its start command writes its process id,
    // then becomes a sleep.
    let service = |name: &str, dir: &Path| {
        if name == "pbx-a" {
            format!(
                "[[service]]\nname = \"sip\"\nstart = \"echo $$ > {}; exec sleep 60\"\n",
                dir.join("pbx-a-sip.pid").display()
            )
        } else {
            String::new()
        }
    };
    // The node is ended with SIGKILL, which leaves its services: this one
    // is ended by its id after the nodes (declared first, dropped last),
    // also when the test fails.
    let _service: KillOnDrop;
    let mut p = pair_full("redundancy", false, None, &service);
    let pid_file = p._dir.0.join("pbx-a-sip.pid");
    _service = KillOnDrop(pid_file.clone());
    p.a.start();
    p.b.start();
    // pbx-a is standalone: it sends no VRRP, so pbx-b hears nobody and is
    // Master of its own; pbx-a serves as Master, runs its services and
    // says it is disabled.
    let a = p.a.wait("standalone", Duration::from_secs(10), |s| {
        s["status"]["redundancy"] == "Disabled" && s["vrrp"]["state"] == "Disabled"
    });
    assert!(
        a["summary"]
            .as_str()
            .is_some_and(|t| t.contains("Redundancy is disabled")),
        "{a}"
    );
    let t0 = Instant::now();
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the standalone node started no service\n{}",
            p.a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the service is not running"
    );
    p.b.wait("Master", Duration::from_secs(10), |s| s["role"] == "Master");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.b.status()["vrrp"]["received"], 0, "pbx-a advertised");

    // Switched on: pbx-a's election starts, and as after a healed
    // partition the pair settles on one Master.
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": true}));
    assert_eq!(code, 202, "{answer}");
    p.a.wait("in the pair", Duration::from_secs(10), |s| {
        s["status"]["redundancy"] == "Enabled" && s["vrrp"]["state"] != "Disabled"
    });
    // Settled: the same single Master twice, a second apart (the
    // election and the epochs may pass the role once on the way: the
    // newest term keeps it).
    let t0 = Instant::now();
    let roles = |p: &Pair| (p.a.role(), p.b.role());
    let (master, backup) = loop {
        let first = roles(&p);
        std::thread::sleep(Duration::from_secs(1));
        let second = roles(&p);
        match (first == second, second.0.as_str(), second.1.as_str()) {
            (true, "Master", "Backup") => break (&p.a, &p.b),
            (true, "Backup", "Master") => break (&p.b, &p.a),
            (_, a, b) => assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no settled single Master: {a} {b}\n{}\n{}",
                p.a.log_text(),
                p.b.log_text()
            ),
        }
    };
    assert!(p.b.status()["vrrp"]["received"].as_u64().unwrap_or(0) > 0);
    master.wait("knowing its Backup", Duration::from_secs(5), |s| {
        peer_is(s, "Backup") && s["status"]["peer"]["mode"] == "Active"
    });
    backup.wait("knowing its Master", Duration::from_secs(5), |s| {
        peer_is(s, "Master")
    });
    // Malformed requests are 400; refusals 409 with a code.
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": "yes"}));
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["code"], "bad_request");
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": true}));
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "nothing_to_do");
    // Off is refused: beside an up Master (pbx-a Backup), or beside the
    // Active Backup that would take over (pbx-a Master).
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": false}));
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "peer_would_serve_too");

    // The switch outlives a restart and overrides `redundancy = false`.
    p.a.stop();
    p.a.start();
    p.a.wait("enabled after a restart", Duration::from_secs(10), |s| {
        s["status"]["redundancy"] == "Enabled" && s["vrrp"]["state"] != "Disabled"
    });
}

/// Ends the process whose id a file holds (a test service: `sleep 60`),
/// by that id, when dropped, if that id is still the service's.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p > 1)
        else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline == b"sleep\x0060\x00" {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// The `/status` document keeps its fields: what an operator's tools read
/// is a contract.
#[test]
fn status_json_keeps_its_fields() {
    let mut p = pair("schema", true);
    p.a.start();
    let s =
        p.a.wait("Master", Duration::from_secs(10), |s| s["role"] == "Master");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    let want = |names: &[&str]| -> Vec<String> {
        let mut k: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&s),
        want(&[
            "id",
            "role",
            "summary",
            "vrrp",
            "address_held",
            "status",
            "timeline",
            "services",
            "phones",
            "quarantine",
            "sync",
            "counters",
            "operations",
            "last_procedure",
            "words",
        ])
    );
    assert_eq!(keys(&s["sync"]), want(&["refused", "window_ms"]));
    assert!(s["sync"]["refused"].is_null());
    assert_eq!(
        keys(&s["vrrp"]),
        want(&[
            "state",
            "priority",
            "backup_mode",
            "master",
            "interval_ms",
            "master_down_us",
            "transitions",
            "received",
            "dropped",
            "last_change_unix_ms",
            "last_rx_unix_ms",
        ])
    );
    assert_eq!(
        keys(&s["status"]),
        want(&[
            "node_id",
            "role",
            "epoch",
            "redundancy",
            "backup_mode",
            "ready",
            "peer",
            "sync",
            "procedure",
            "findings",
            "timeline",
        ])
    );
    assert!(s["quarantine"].is_array());
}

/// The Backup's mass-deletion guard on two real nodes: a round that would
/// lose most of the content is refused and shows in `/status` (`sync.
/// refused`, with the figures) while the Backup keeps its files; `POST
/// /sync/confirm-deletions` (token-checked, JSON only) confirms it and the
/// next round goes through; with nothing refused it answers 409.
#[test]
fn a_refused_round_shows_in_the_status_until_confirmed() {
    let mut p = pair_with("guard", true, Some(TOKEN));
    for i in 0..10u8 {
        std::fs::write(p.a.data.join(format!("prompt{i}.wav")), [i; 1000]).expect("write");
    }
    settled(&mut p);
    let files = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("data dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != ".sync-delta")
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(&p.b.data).len(), 10);
    let b = p.b.status;
    let host = b.to_string();
    let bearer = format!("Bearer {TOKEN}");
    let confirm = |auth: Option<&str>, content_type: &str| -> (u16, Value) {
        let mut hs = vec![("Host", host.as_str()), ("Content-Type", content_type)];
        if let Some(a) = auth {
            hs.push(("Authorization", a));
        }
        let (code, _, body) = raw(b, "POST", "/sync/confirm-deletions", &hs, "{}");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    };

    // Nothing refused yet: 409; and the endpoint checks the token and the
    // content type like every other.
    let (code, answer) = confirm(Some(&bearer), "application/json");
    assert_eq!(
        (code, answer["code"].as_str()),
        (409, Some("nothing_to_confirm"))
    );
    assert_eq!(confirm(None, "application/json").0, 401);
    assert_eq!(confirm(Some(&bearer), "text/plain").0, 415);

    // Eight of the ten prompts deleted on the Master: 8,000 of 10,000
    // content bytes.
    let g = generation(&p.b.status());
    for i in 0..8 {
        std::fs::remove_file(p.a.data.join(format!("prompt{i}.wav"))).expect("remove");
    }
    let s = p.b.wait(
        "showing the refused round",
        Duration::from_secs(SYNC_INTERVAL_S * 3),
        |s| !s["sync"]["refused"].is_null(),
    );
    let r = &s["sync"]["refused"];
    assert_eq!(r["code"], "mass_deletion", "{r}");
    assert_eq!(r["losing_bytes"], 8000, "{r}");
    assert_eq!(r["lost_in_window_bytes"], 0, "{r}");
    assert_eq!(r["tree_bytes"], 10_000, "{r}");
    assert_eq!(r["limit_bytes"], 5000, "{r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("8000 bytes"),
        "{r}"
    );
    assert_eq!(generation(&s), g, "a refused round commits nothing");
    assert_eq!(files(&p.b.data).len(), 10, "the Backup kept its files");
    // The page shows it: it has the place and the button for it.
    let (code, _, page) = raw(
        b,
        "GET",
        "/",
        &[("Host", &host), ("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 200);
    assert!(page.contains("refused_round") && page.contains("/sync/confirm-deletions"));
    // In words, with its button among the page's actions.
    let s = p.b.status();
    assert_eq!(s["words"]["refused_round"], r["error"], "{}", s["words"]);
    assert_eq!(s["words"]["actions"]["confirm_deletions"], true);

    let (code, answer) = confirm(Some(&bearer), "application/json");
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["confirmed"]["code"], "mass_deletion", "{answer}");
    assert_eq!(answer["confirmed"]["losing_bytes"], 8000, "{answer}");
    let s = p.b.wait(
        "through the confirmed round",
        Duration::from_secs(SYNC_INTERVAL_S * 2),
        |s| s["sync"]["refused"].is_null() && generation(s) > g,
    );
    assert!(generation(&s) > g);
    assert_eq!(files(&p.b.data), files(&p.a.data));
    assert_eq!(files(&p.b.data).len(), 2);
    let (code, answer) = confirm(Some(&bearer), "application/json");
    assert_eq!(
        (code, answer["code"].as_str()),
        (409, Some("nothing_to_confirm"))
    );
}

// ---------------------------------------------------------------------------
// The authenticated control plane

const TOKEN: &str = "c0ffee-0123456789abcdef-token";

/// One HTTP/1.1 request written by hand (so that `Host`, `Origin` and the
/// content type are exactly what the test says): the status code, the
/// head and the body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// With `[status] token_file`, every endpoint of both units needs the
/// token (Bearer, or Basic with user admin) and answers 401 with a Basic
/// challenge without it; a foreign `Host` or `Origin` is 403; a POST body
/// not declared JSON is 415; the Master's GUI forward reaches the Backup's
/// page and API, the Backup checking the credentials and the `Host`
/// itself; and an empty JSON `POST /swap` swaps.
#[test]
fn the_control_plane_needs_the_token() {
    let mut p = pair_with("auth", true, Some(TOKEN));
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    let a = p.a.status;
    let host = a.to_string();
    let bearer = format!("Bearer {TOKEN}");
    let h = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = vec![("Host", host.as_str())];
        v.extend_from_slice(extra);
        v
    };

    // No credentials, or wrong ones: 401 and a Basic challenge, on every
    // path.
    for path in ["/status", "/", "/no-such-page"] {
        let (code, head, body) = raw(a, "GET", path, &h(&[]), "");
        assert_eq!(code, 401, "GET {path}: {head}\n{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic realm="),
            "{head}"
        );
        assert_eq!(code_of(&body), "unauthorized");
    }
    let wrong_user = basic("root", TOKEN);
    let wrong_token = basic("admin", "c0ffee-0123456789abcdef-tokem");
    for auth in [wrong_user.as_str(), wrong_token.as_str(), "Bearer nope"] {
        let mut hs = h(&[]);
        hs.push(("Authorization", auth));
        assert_eq!(raw(a, "GET", "/status", &hs, "").0, 401, "{auth}");
    }
    let (code, ..) = raw(
        a,
        "POST",
        "/mode",
        &h(&[("Content-Type", "application/json")]),
        r#"{"mode":"Passive"}"#,
    );
    assert_eq!(code, 401, "a POST without the token");

    // The token as Bearer or as Basic admin's password.
    let good_basic = basic("admin", TOKEN);
    for auth in [bearer.as_str(), good_basic.as_str()] {
        let mut hs = h(&[]);
        hs.push(("Authorization", auth));
        let (code, _, body) = raw(a, "GET", "/status", &hs, "");
        assert_eq!(code, 200, "{auth}: {body}");
        let (code, _, page) = raw(a, "GET", "/", &hs, "");
        assert_eq!(code, 200);
        assert!(page.contains("<title>Redundancy status</title>"));
    }

    // A foreign Host (DNS rebinding) or Origin (a cross-site form) is 403,
    // token or not.
    let with_token = |extra: &[(&'static str, &'static str)]| {
        let mut v = h(extra);
        v.push(("Authorization", bearer.as_str()));
        v
    };
    let (code, _, body) = raw(
        a,
        "GET",
        "/status",
        &[("Host", "rebound.example"), ("Authorization", &bearer)],
        "",
    );
    assert_eq!((code, code_of(&body)), (403, "host_not_allowed".into()));
    let (code, _, body) = raw(
        a,
        "POST",
        "/mode",
        &with_token(&[
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/json"),
        ]),
        r#"{"mode":"Passive"}"#,
    );
    assert_eq!((code, code_of(&body)), (403, "origin_not_allowed".into()));

    // JSON endpoints take JSON only: what an HTML form can send is 415.
    for (path, ct, body) in [
        ("/mode", "text/plain", r#"{"mode":"Passive"}"#),
        ("/mode", "application/x-www-form-urlencoded", "mode=Passive"),
        ("/swap", "text/plain", ""),
        ("/swap", "multipart/form-data; boundary=x", "--x--"),
        ("/redundancy", "text/plain", r#"{"enabled":false}"#),
    ] {
        let (code, _, answer) = raw(a, "POST", path, &with_token(&[("Content-Type", ct)]), body);
        assert_eq!(
            (code, code_of(&answer)),
            (415, "unsupported_media_type".into()),
            "POST {path} as {ct}: {answer}"
        );
    }
    let mut no_type = h(&[]);
    no_type.push(("Authorization", &bearer));
    assert_eq!(raw(a, "POST", "/swap", &no_type, "").0, 415);
    // None of it reached the pair.
    assert_eq!(p.b.status()["vrrp"]["backup_mode"], "Active");
    assert_eq!(p.a.role(), "Master");

    // The Backup's page and API through the Master's GUI forward: the
    // Backup asks for the token and checks the Host itself.
    let gui = p.gui;
    let gui_host = gui.to_string();
    let (code, head, _) = raw(gui, "GET", "/status", &[("Host", &gui_host)], "");
    assert_eq!(code, 401, "{head}");
    let (code, _, body) = raw(
        gui,
        "GET",
        "/status",
        &[("Host", &gui_host), ("Authorization", &good_basic)],
        "",
    );
    assert_eq!(code, 200, "{body}");
    let through: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(through["id"], "pbx-b");
    let (code, _, body) = raw(
        gui,
        "GET",
        "/status",
        &[("Host", "rebound.example"), ("Authorization", &bearer)],
        "",
    );
    assert_eq!((code, code_of(&body)), (403, "host_not_allowed".into()));
    // Manual §10: the Backup's own /mode, through the forward.
    let origin = format!("http://{gui_host}");
    let (code, _, body) = raw(
        gui,
        "POST",
        "/mode",
        &[
            ("Host", &gui_host),
            ("Origin", &origin),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"mode":"Passive"}"#,
    );
    assert_eq!(code, 202, "{body}");
    p.b.wait("Passive", Duration::from_secs(5), |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    });

    // An empty JSON POST /swap (the page's button sends `{}`) swaps.
    let (code, _, body) = raw(
        a,
        "POST",
        "/swap",
        &with_token(&[("Content-Type", "application/json")]),
        "",
    );
    assert_eq!(code, 202, "{body}");
    p.b.wait("Master", Duration::from_secs(20), |s| s["role"] == "Master");
}

// ---------------------------------------------------------------------------
// Metrics

/// A sample: its family's name, its labels, its value.
type Sample = (
    String,
    Vec<(String, String)>,
    openmetrics_parser::OpenMetricsValue,
);

/// One `/metrics` scrape: every sample's value by family name and labels.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the sample of `family` with these labels (a counter's
    /// or a gauge's value, a histogram's count).
    #[track_caller]
    fn get(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        use openmetrics_parser::OpenMetricsValue as V;
        let (_, _, v) = self
            .0
            .iter()
            .find(|(name, l, _)| {
                name == family
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .unwrap_or_else(|| panic!("no {family}{labels:?} in the scrape"));
        match v {
            V::Gauge(n) | V::Unknown(n) => n.as_f64(),
            V::Counter(c) => c.value.as_f64(),
            V::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
            other => panic!("{family}: {other:?}"),
        }
    }

    /// A histogram's sum.
    fn sum(&self, family: &str) -> f64 {
        self.0
            .iter()
            .find_map(|(name, _, v)| match v {
                openmetrics_parser::OpenMetricsValue::Histogram(h) if name == family => {
                    h.sum.map(|s| s.as_f64())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {family}"))
    }
}

/// `GET /metrics` with the node's credentials, checked and parsed by an
/// OpenMetrics parser.
fn scrape(n: &Node) -> Scrape {
    let host = n.status.to_string();
    let mut headers = vec![("Host", host.as_str())];
    if let Some(a) = n.auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let (code, head, body) = raw(n.status, "GET", "/metrics", &headers, "");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("{}: not OpenMetrics: {e:?}\n{body}", n.name));
    let mut samples = Vec::new();
    for (name, family) in exposition.families {
        for s in family.iter_samples() {
            let labels = s
                .get_labelset()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            samples.push((name.clone(), labels, s.value.clone()));
        }
    }
    Scrape(samples)
}

/// `/status`, `/metrics`, `/status` again, until the two status reads
/// agree on what the test compares (the node's figures move between
/// reads: a sync round, a state change).
fn status_and_metrics(n: &Node) -> (Value, Scrape, Value) {
    let steady = |s: &Value| {
        (
            s["role"].clone(),
            s["vrrp"]["priority"].clone(),
            s["vrrp"]["transitions"].clone(),
            s["status"]["sync"]["generation"].clone(),
            s["counters"]["failovers_ms"].clone(),
        )
    };
    for _ in 0..50 {
        let before = n.status();
        let m = scrape(n);
        let after = n.status();
        if steady(&before) == steady(&after) {
            return (before, m, after);
        }
    }
    panic!("{}: the status never held still over a scrape", n.name);
}

/// `/metrics` shows `/status`'s figures: for each unit, its role, priority,
/// transitions and generation equal those of the status read just before
/// and after, and its advertisement counters lie between the two; the
/// Master has sent advertisements, the Backup received them. After the
/// Master is killed, the new Master's `failover_seconds` holds its one
/// takeover, with the timeline's duration, its transitions grew and
/// `sync_window_seconds` is the timeline's data-loss window. The API's
/// guard covers `/metrics` too.
#[test]
fn metrics_show_the_status_figures_and_a_failover() {
    let mut p = pair_with("metrics", true, Some(TOKEN));
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);

    let host = p.a.status.to_string();
    let bearer = format!("Bearer {TOKEN}");
    let (code, ..) = raw(p.a.status, "GET", "/metrics", &[("Host", &host)], "");
    assert_eq!(code, 401, "no token");
    let (code, ..) = raw(
        p.a.status,
        "GET",
        "/metrics",
        &[("Host", "rebound.example"), ("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 403, "a foreign Host");

    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut backup_transitions = 0.0;
    for (node, role, counter) in [
        (&p.a, "master", "pbx_redundancy_vrrp_adverts_sent"),
        (&p.b, "backup", "pbx_redundancy_vrrp_adverts_received"),
    ] {
        let (before, m, after) = status_and_metrics(node);
        assert_eq!(
            before["role"].as_str().map(str::to_lowercase).as_deref(),
            Some(role)
        );
        assert_eq!(
            m.get("pbx_redundancy_role", &[("role", role)]),
            1.0,
            "{}",
            node.name
        );
        for other in ["master", "backup", "initialize", "disabled"]
            .into_iter()
            .filter(|r| *r != role)
        {
            assert_eq!(m.get("pbx_redundancy_role", &[("role", other)]), 0.0);
        }
        assert_eq!(
            m.get("pbx_redundancy_vrrp_priority", &[]),
            n(&before["vrrp"]["priority"])
        );
        assert_eq!(
            m.get("pbx_redundancy_vrrp_transitions", &[]),
            n(&before["vrrp"]["transitions"])
        );
        assert_eq!(
            m.get("pbx_redundancy_sync_generation", &[]),
            n(&before["status"]["sync"]["generation"])
        );
        assert!(m.get("pbx_redundancy_sync_generation", &[]) >= 1.0);
        for (family, field) in [
            (
                "pbx_redundancy_vrrp_adverts_sent",
                &["counters", "adverts_sent"][..],
            ),
            (
                "pbx_redundancy_vrrp_adverts_received",
                &["vrrp", "received"][..],
            ),
        ] {
            let at = |s: &Value| n(&s[field[0]][field[1]]);
            let v = m.get(family, &[]);
            assert!(
                at(&before) <= v && v <= at(&after),
                "{}: {family} {v} outside [{}, {}]",
                node.name,
                at(&before),
                at(&after)
            );
        }
        assert!(m.get(counter, &[]) > 0.0, "{}: {counter}", node.name);
        assert_eq!(m.get("pbx_redundancy_failover_seconds", &[]), 0.0);
        if role == "backup" {
            backup_transitions = m.get("pbx_redundancy_vrrp_transitions", &[]);
            // The replica's rounds: the last one's bytes, as /status has them.
            assert_eq!(
                m.get("pbx_redundancy_sync_round_bytes", &[]),
                n(&before["counters"]["last_round"]["bytes"])
            );
        }
    }

    // The Master loses power.
    p.a.stop();
    let s = p.b.wait("done taking over", Duration::from_secs(20), |s| {
        s["role"] == "Master"
            && s["timeline"]["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["what"] == "Done"))
    });
    let done_ms = s["timeline"]["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["what"] == "Done"))
        .map_or(f64::NAN, |e| n(&e["at_ms"]));
    let (before, m, _) = status_and_metrics(&p.b);
    assert_eq!(m.get("pbx_redundancy_role", &[("role", "master")]), 1.0);
    assert_eq!(m.get("pbx_redundancy_failover_seconds", &[]), 1.0);
    let sum_ms = m.sum("pbx_redundancy_failover_seconds") * 1000.0;
    assert!(
        (sum_ms - done_ms).abs() < 0.5,
        "{sum_ms} ms, timeline {done_ms} ms"
    );
    assert_eq!(before["counters"]["failovers_ms"], json!([done_ms as u64]));
    let transitions = m.get("pbx_redundancy_vrrp_transitions", &[]);
    assert!(
        transitions > backup_transitions,
        "{transitions} after {backup_transitions}"
    );
    assert_eq!(transitions, n(&before["vrrp"]["transitions"]));
    let window_ms = m.get("pbx_redundancy_sync_window_seconds", &[]) * 1000.0;
    assert!(
        (window_ms - n(&s["timeline"]["data_loss_window_ms"])).abs() < 0.5,
        "{window_ms} ms, timeline {}",
        s["timeline"]["data_loss_window_ms"]
    );
}

// ---------------------------------------------------------------------------
// Configuration errors

/// A node's configuration in a fresh directory, with priority 255 (an
/// address owner advertises at once), its key, phone inventory and token
/// file, and `edit` applied to the configuration's text; and the socket
/// its advertisements go to, reading with `wait` as its time limit.
fn lone_node(
    tag: &str,
    wait: Duration,
    edit: &dyn Fn(String) -> String,
) -> (TempDir, std::net::UdpSocket) {
    let dir = TempDir::new(tag);
    let peer_socket = free_udp(B_IP);
    peer_socket.set_read_timeout(Some(wait)).expect("timeout");
    let peer = peer_socket.local_addr().expect("address");
    let vrrp = free_udp(A_IP).local_addr().expect("address");
    key_file(
        &dir.join("sync.key"),
        "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e",
    );
    std::fs::write(
        dir.join("phones.toml"),
        "[[phone]]\nname = \"r\"\naddress = \"10.99.0.31\"\nmethod = \"follow\"\n",
    )
    .expect("phones");
    let token = dir.join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        r#"id = "pbx-a"
state_dir = "state"
phones = "phones.toml"
[vrrp]
transport = "udp"
vrid = 51
priority = 255
advert_interval_ms = 100
virtual_ips = ["10.99.0.100/24"]
udp_listen = "{vrrp}"
udp_peers = ["{peer}"]
[sync]
listen = "127.0.0.1:1"
peer = "127.0.0.2:1"
dir = "data"
key_file = "sync.key"
[status]
listen = "127.0.0.1:0"
token_file = "api.token"
"#
    );
    std::fs::write(dir.join("node.toml"), edit(text)).expect("config");
    (dir, peer_socket)
}

/// Every configuration error, the files the configuration names included,
/// stops `node` with exit status 2 and the key on stderr before it creates
/// a file or sends a packet: no state or data directory, and not one
/// datagram at the VRRP peer's address (a priority-255 node advertises at
/// once).
#[test]
fn config_errors_exit_2_before_anything_is_touched() {
    type Case = (&'static str, &'static str, fn(&Path));
    let cases: &[Case] = &[
        ("no key file", "sync.key_file", |d| {
            let _ = std::fs::remove_file(d.join("sync.key"));
        }),
        ("a key file that is no key", "sync.key_file", |d| {
            std::fs::write(d.join("sync.key"), "not a key\n").expect("write");
        }),
        ("no phones file", "phones", |d| {
            let _ = std::fs::remove_file(d.join("phones.toml"));
        }),
        ("a phones file that is not TOML", "phones", |d| {
            std::fs::write(d.join("phones.toml"), "[[phone]\n").expect("write");
        }),
        ("a phone with an unknown method", "phone[0].method", |d| {
            std::fs::write(
                d.join("phones.toml"),
                "[[phone]]\nname = \"r\"\naddress = \"10.99.0.31\"\nmethod = \"fly\"\n",
            )
            .expect("write");
        }),
        ("a world-readable token file", "status.token_file", |d| {
            std::fs::set_permissions(d.join("api.token"), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }),
        ("a 15-byte token", "status.token_file", |d| {
            std::fs::write(d.join("api.token"), "0123456789abcde\n").expect("write");
        }),
        ("no token file", "status.token_file", |d| {
            let _ = std::fs::remove_file(d.join("api.token"));
        }),
    ];
    type Edit = (&'static str, &'static str, fn(String) -> String);
    let edits: &[Edit] = &[
        (
            "a status API on the network without a token",
            "status.token_file",
            |t: String| {
                t.replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"")
                    .replace("token_file = \"api.token\"\n", "")
            },
        ),
        (
            "a VRRP address the election cannot send from",
            "vrrp.udp_listen",
            |t: String| t.replace("udp_listen = \"127.0.0.1:", "udp_listen = \"0.0.0.0:"),
        ),
        (
            "a mass-deletion share above the whole tree",
            "sync.mass_delete_fraction",
            |t: String| {
                t.replace(
                    "key_file = \"sync.key\"\n",
                    "key_file = \"sync.key\"\nmass_delete_fraction = 1.5\n",
                )
            },
        ),
        (
            "a negative mass-deletion window",
            "sync.mass_delete_window_h",
            |t: String| {
                t.replace(
                    "key_file = \"sync.key\"\n",
                    "key_file = \"sync.key\"\nmass_delete_window_h = -1\n",
                )
            },
        ),
    ];
    let run = |what: &str, key: &str, file: &dyn Fn(&Path), edit: &dyn Fn(String) -> String| {
        let (dir, peer) = lone_node("config-error", Duration::from_millis(300), edit);
        file(&dir.0);

        let child = Command::new(run::example_bin("node"))
            .arg("--config")
            .arg(dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node");
        let mut guard = run::Kill(Some(child));
        let t0 = Instant::now();
        let status = loop {
            let c = guard.0.as_mut().expect("child");
            if let Some(st) = c.try_wait().expect("wait") {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: node still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = guard.0.take().and_then(|mut c| c.stderr.take()) {
            let _ = e.read_to_string(&mut stderr);
        }
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{what}: stderr does not name `{key}`: {stderr}"
        );
        for made in ["state", "data"] {
            assert!(
                !dir.join(made).exists(),
                "{what}: the {made} directory was created"
            );
        }
        let mut buf = [0u8; 2048];
        match peer.recv_from(&mut buf) {
            Ok((n, from)) => panic!("{what}: {n} bytes of VRRP sent from {from}"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{what}: {e}"
            ),
        }
    };
    for (what, key, file) in cases {
        run(what, key, file, &|t| t);
    }
    for (what, key, edit) in edits {
        run(what, key, &|_| {}, edit);
    }
    // And the same files, right, make a node that starts: the cases above
    // fail for the reason they name.
    let (dir, peer) = lone_node("config-good", Duration::from_secs(5), &|t| t);
    let child = Command::new(run::example_bin("node"))
        .arg("--config")
        .arg(dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let _guard = run::Kill(Some(child));
    let mut buf = [0u8; 2048];
    let (n, _) = peer
        .recv_from(&mut buf)
        .expect("the good configuration's node advertises");
    assert!(n > 0);
    assert!(dir.join("state").exists());
}

/// Writes `hex` as a key file readable by its owner only.
fn key_file(path: &std::path::Path, hex: &str) {
    std::fs::write(path, hex).expect("key file");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("key file mode");
}

/// F14: a key file whose key is all zero or a pattern, or that every user
/// can read, stops the node with exit 2 naming the key and the file,
/// before the state directory is created or a packet sent.
#[test]
fn a_weak_or_world_readable_key_file_exits_2_before_anything() {
    let p = pair("weak-key", true);
    let root = p.a.config.parent().expect("folder").to_path_buf();
    let key = root.join("sync.key");
    for (hex, mode, why) in [
        ("00".repeat(32), 0o600, "all zero"),
        ("42".repeat(32), 0o600, "distinct byte values"),
        (
            "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e".to_owned(),
            0o644,
            "readable by every user",
        ),
    ] {
        key_file(&key, &hex);
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("mode");
        let mut child = Command::new(run::example_bin("node"))
            .arg("--config")
            .arg(&p.a.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node");
        // A hang guard, not a timing assertion: the node must exit on its own.
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node kept running with a {why} key file");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(err.contains("sync.key_file") && err.contains(why), "{err}");
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(!root.join("pbx-a").join("state").exists(), "{err}");
    }
}

/// Key rotation on running units: pbx-b holds the old key and, in its
/// rotation window, the next one (`[sync] key_file_next`); pbx-a, the
/// dialling end, has moved to the next key. The link comes up and the
/// Backup syncs.
#[test]
fn a_unit_in_its_rotation_window_accepts_the_next_key() {
    let mut p = pair("rotation", true);
    let root = p.a.config.parent().expect("folder").to_path_buf();
    key_file(
        &root.join("next.key"),
        "c4e1a7f3092b5d86e0f1c3a5b7d9e2f4061a8c3e5b7d9f1a2c4e6b8d0f1e3a5c",
    );
    let edit = |config: &std::path::Path, with: &str| {
        let text = std::fs::read_to_string(config).expect("config");
        let text = text.replace("key_file = \"sync.key\"", with);
        std::fs::write(config, text).expect("config");
    };
    edit(&p.a.config, "key_file = \"next.key\"");
    edit(
        &p.b.config,
        "key_file = \"sync.key\"\nkey_file_next = \"next.key\"",
    );
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=rotated\n").expect("write");
    settled(&mut p);
    p.b.wait("holding the Master's data", Duration::from_secs(30), |s| {
        generation(s) >= 1
    });
    assert_eq!(
        std::fs::read_to_string(p.b.data.join("pbx.conf"))
            .ok()
            .as_deref(),
        Some("trunk=rotated\n")
    );
}

/// Key rotation on running units, without a restart: at each step both
/// units' configurations change and each gets a SIGHUP (sent to its
/// process id). The link stays up and the data keeps flowing; at the end
/// pbx-a, never restarted, holds only the new key: a restarted pbx-b on
/// the new key alone links with it.
#[test]
fn keys_rotate_on_sighup_without_a_restart() {
    let mut p = pair("rotation-hup", true);
    let root = p.a.config.parent().expect("folder").to_path_buf();
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    key_file(
        &root.join("next.key"),
        "c4e1a7f3092b5d86e0f1c3a5b7d9e2f4061a8c3e5b7d9f1a2c4e6b8d0f1e3a5c",
    );
    let set_keys = |node: &Node, keys: &str| {
        let text = std::fs::read_to_string(&node.config).expect("config");
        let start = text.find("key_file =").expect("key_file");
        let end = text[start..].find("\n[status]").expect("[status]") + start;
        let text = format!("{}{keys}{}", &text[..start], &text[end..]);
        std::fs::write(&node.config, text).expect("config");
    };
    let hup = |node: &Node, reloads: usize| {
        let pid = node.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        let t0 = Instant::now();
        while node.log_text().matches("peer link keys reloaded").count() < reloads {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{}: no reload\n{}",
                node.name,
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let steps = [
        "key_file = \"sync.key\"\nkey_file_next = \"next.key\"",
        "key_file = \"next.key\"\nkey_file_next = \"sync.key\"",
        "key_file = \"next.key\"",
    ];
    for (i, keys) in steps.into_iter().enumerate() {
        for node in [&p.a, &p.b] {
            set_keys(node, keys);
            hup(node, i + 1);
        }
    }
    // The link never dropped, and the data still flows.
    std::fs::write(p.a.data.join("after-rotation.conf"), "rotated\n").expect("write");
    let before = generation(&p.b.status());
    p.b.wait("the next round", Duration::from_secs(30), |s| {
        generation(s) > before
    });
    assert!(p.b.data.join("after-rotation.conf").exists());
    assert!(
        !p.a.log_text().contains("peer link failed"),
        "{}",
        p.a.log_text()
    );
    // The old key is gone from the files; pbx-b restarts on the new one.
    std::fs::write(root.join("sync.key"), "").expect("wipe the old key");
    p.b.stop();
    p.b.start();
    // pbx-b's view is fresh (it just started): the link is up again.
    p.b.wait(
        "linked to pbx-a over the new key",
        Duration::from_secs(20),
        |s| peer_is(s, "Master"),
    );
    // A reload that cannot be used changes nothing.
    set_keys(&p.a, "key_file = \"sync.key\"");
    let pid = p.a.child.as_ref().expect("running").id();
    let _ = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status();
    let t0 = Instant::now();
    while !p
        .a
        .log_text()
        .contains("SIGHUP: the keys and token in use stay")
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", p.a.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(peer_is(&p.a.status(), "Backup"));
}

/// The status API's token rotates on a running unit: a new token in
/// `[status] token_file` and a SIGHUP (to the process id), and the old
/// token is refused, the new one accepted, no restart.
#[test]
fn the_api_token_rotates_on_sighup() {
    let mut p = pair_with("token-hup", true, Some(TOKEN));
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    let root = p.a.config.parent().expect("folder").to_path_buf();
    let new = "a-new-token-0123456789abcdef";
    let path = root.join("api.token");
    std::fs::write(&path, format!("{new}\n")).expect("token");
    let pid = p.a.child.as_ref().expect("running").id();
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(ok.success());
    let old = format!("Bearer {TOKEN}");
    let t0 = Instant::now();
    while get(p.a.status, "/status", Some(&old)).is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the old token still works\n{}",
            p.a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get(p.a.status, "/status", Some(&format!("Bearer {new}"))).is_some());
    // pbx-b was not told: it keeps the token it read.
    assert!(get(p.b.status, "/status", Some(&old)).is_some());
    assert!(p.a.log_text().contains("status API token reloaded"));
}

// ---------------------------------------------------------------------
// The operator's procedures: upgrade, restore, redundancy, timed Passive,
// logs. Each unit's `[hooks]` record their calls, in order, in one file
// both processes append to.

/// `[identity]` and `[hooks]` for a unit whose hooks append
/// `<unit> <hook> …` lines to `calls.log`, install by copying the image
/// beside the unit, and report the version the install wrote.
fn recording_hooks(name: &str, root: &Path) -> String {
    let unit = root.join(name);
    std::fs::create_dir_all(&unit).expect("unit dir");
    std::fs::write(
        unit.join("version.txt"),
        "firmware=5.1.30\nlanguage_pack=en-1\n",
    )
    .expect("version file");
    let log = root.join("calls.log");
    let (log, unit) = (log.display(), unit.display());
    format!(
        r#"[identity]
firmware = "5.1.30"
language_pack = "en-1"
[hooks]
max_image_mib = 8
save_config = 'echo "{name} save_config" >> {log}'
upgrade = 'echo "{name} upgrade $PBX_IMAGE_KIND $PBX_IMAGE_VERSION" >> {log} && cp "$1" {unit}/installed.img && if [ "$PBX_IMAGE_KIND" = firmware ]; then echo "firmware=$PBX_IMAGE_VERSION" > {unit}/version.txt; else echo "language_pack=$PBX_IMAGE_VERSION" >> {unit}/version.txt; fi'
version = 'cat {unit}/version.txt'
restore = 'echo "{name} restore" >> {log} && cp "$1" {unit}/restored.tar'
"#
    )
}

const PROC_TOKEN: &str = "procedures-token-0123456789";

/// A settled pair (pbx-a Master with a file, pbx-b its Backup) with the
/// token and [`recording_hooks`], and the pair's folder.
fn procedures_pair(tag: &str) -> (Pair, PathBuf) {
    let mut p = pair_full(tag, true, Some(PROC_TOKEN), &recording_hooks);
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    let root = p.a.config.parent().expect("dir").to_path_buf();
    (p, root)
}

/// The hooks' calls so far, `unit hook …` per line.
fn calls(p: &Pair) -> Vec<String> {
    let root = p.a.config.parent().expect("dir");
    std::fs::read_to_string(root.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `curl` as an operator types it: a multipart upload with the token.
fn curl_form(node: &Node, path: &str, fields: &[(&str, String)]) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-H")
        .arg(
            node.auth
                .as_deref()
                .map_or(String::new(), |a| format!("Authorization: {a}")),
        );
    for (k, v) in fields {
        c.arg("-F").arg(format!("{k}={v}"));
    }
    let out = c
        .arg(format!("http://{}{path}", node.status))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("HTTP status"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn firmware(s: &Value) -> String {
    s["words"]["unit"].as_str().unwrap_or("").to_owned()
}

/// The manual's §9 from the Master's API: the image uploaded once, shown
/// with its size and BLAKE3, handed to the Passive Backup over the peer
/// link, each unit's configuration saved before its install, the Backup
/// upgraded first, the swap, the old Master upgraded last and back as an
/// Active Backup. Both units end on the new firmware, pbx-b Master.
#[test]
fn rolling_upgrade_of_both_units_in_the_manuals_order() {
    let (p, root) = procedures_pair("upgrade");
    // 3 MiB and a bit: several chunks on the link.
    let image: Vec<u8> = (0..(3 << 20) + 4321u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let image_path = root.join("fw-5.2.0.img");
    std::fs::write(&image_path, &image).expect("image");

    // Refusals first: an Active Backup does not install on its own.
    let (code, answer) = curl_form(
        &p.b,
        "/upgrade",
        &[
            ("image", format!("@{}", image_path.display())),
            ("version", "5.2.0".into()),
        ],
    );
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "not_passive", "{answer}");
    // A path outside the staging folder, and an image over the limit.
    let (code, answer) = p.a.post(
        "/upgrade",
        json!({"path": image_path.display().to_string(), "version": "5.2.0"}),
    );
    assert_eq!(
        (code, answer["code"].as_str()),
        (400, Some("outside_staging")),
        "{answer}"
    );
    let big = root.join("big.img");
    std::fs::write(&big, vec![7u8; 9 << 20]).expect("big image");
    let (code, answer) = curl_form(
        &p.a,
        "/upgrade",
        &[
            ("image", format!("@{}", big.display())),
            ("version", "5.2.0".into()),
        ],
    );
    assert_eq!(code, 413, "{answer}");
    assert!(
        calls(&p).is_empty(),
        "a refused request ran a hook: {:?}",
        calls(&p)
    );

    let (code, answer) = curl_form(
        &p.a,
        "/upgrade",
        &[
            ("image", format!("@{}", image_path.display())),
            ("version", "5.2.0".into()),
            ("kind", "firmware".into()),
        ],
    );
    assert_eq!(code, 202, "{answer}");
    assert!(answer["procedure"].is_u64(), "{answer}");
    let hash = blake3::hash(&image).to_hex().to_string();
    assert_eq!(answer["image"]["blake3"], hash.as_str());
    assert_eq!(answer["image"]["size"], image.len() as u64);
    // While it runs, the Master's page shows the image and the steps.
    let s =
        p.a.wait("showing the procedure", Duration::from_secs(5), |s| {
            s["words"]["procedure"].is_string()
        });
    assert!(
        s["words"]["image"]
            .as_str()
            .is_some_and(|w| w.contains(&hash)),
        "{}",
        s["words"]
    );
    // Another procedure meanwhile is refused with its reason.
    let (code, answer) = p.a.post("/swap", json!({}));
    assert_eq!(code, 409, "{answer}");

    let done = |s: &Value| {
        s["last_procedure"]["name"] == "rolling upgrade" && s["status"]["procedure"].is_null()
    };
    let s =
        p.a.wait("done with the upgrade", Duration::from_secs(90), done);
    assert_eq!(
        s["last_procedure"]["outcome"], "Completed",
        "{}",
        s["words"]
    );
    // The roles at the end, as the manual's §9 leaves them: the upgraded
    // Backup became Master by the swap, the old Master is its Active
    // Backup, both on the new firmware.
    let b =
        p.b.wait("Master", Duration::from_secs(10), |s| s["role"] == "Master");
    let a = p.a.wait("Active Backup", Duration::from_secs(10), |s| {
        s["role"] == "Backup" && s["vrrp"]["backup_mode"] == "Active"
    });
    assert!(firmware(&a).contains("firmware 5.2.0"), "{}", firmware(&a));
    assert!(firmware(&b).contains("firmware 5.2.0"), "{}", firmware(&b));
    assert!(
        b["status"]["findings"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{b}"
    );
    // The order across both units.
    assert_eq!(
        calls(&p),
        [
            "pbx-a save_config",
            "pbx-b save_config",
            "pbx-b upgrade firmware 5.2.0",
            "pbx-a upgrade firmware 5.2.0",
        ],
        "hooks ran out of order"
    );
    // The Backup installed exactly the bytes uploaded to the Master.
    for unit in ["pbx-a", "pbx-b"] {
        let got = std::fs::read(root.join(unit).join("installed.img")).expect("installed");
        assert!(got == image, "{unit} installed other bytes");
    }
    // The old Master's page still shows the last failover (the swap's
    // takeover happened on pbx-b; pbx-a restarted twice since).
    assert!(
        a["words"]["last_procedure"]
            .as_str()
            .is_some_and(|w| w.contains("rolling upgrade completed"))
    );
}

/// The manual's §10 from the Master's API: the archive uploaded, the
/// Backup Passive for the restore, `[hooks] restore` run with it on the
/// Master, the Backup back in its mode after a full sync.
#[test]
fn configuration_restore_from_the_api() {
    let (p, root) = procedures_pair("restore");
    let archive = root.join("config-2026-12-01.tar");
    std::fs::write(&archive, b"a configuration archive").expect("archive");
    let (code, answer) = curl_form(
        &p.a,
        "/restore",
        &[("archive", format!("@{}", archive.display()))],
    );
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["archive"]["name"], "config-2026-12-01.tar");
    let s =
        p.a.wait("done with the restore", Duration::from_secs(60), |s| {
            s["last_procedure"]["name"] == "configuration restore"
        });
    assert_eq!(
        s["last_procedure"]["outcome"], "Completed",
        "{}",
        s["words"]
    );
    assert_eq!(calls(&p), ["pbx-a restore"]);
    assert_eq!(
        std::fs::read(root.join("pbx-a").join("restored.tar")).expect("restored"),
        b"a configuration archive"
    );
    p.b.wait("Active again", Duration::from_secs(10), |s| {
        s["vrrp"]["backup_mode"] == "Active"
    });
    assert_eq!(p.a.role(), "Master");
    // The Backup's API refuses: a restore runs on the Master.
    let (code, answer) = curl_form(
        &p.b,
        "/restore",
        &[("archive", format!("@{}", archive.display()))],
    );
    assert_eq!(code, 409, "{answer}");
}

/// Redundancy off and on at run time, a timed Passive for a maintenance
/// window, and the system log as a download.
#[test]
fn redundancy_switch_timed_passive_and_logs() {
    let (p, _root) = procedures_pair("switch");
    // A timed Passive: back to Active by itself.
    let (code, answer) =
        p.a.post("/mode", json!({"mode": "Passive", "expires_s": 2}));
    assert_eq!(code, 202, "{answer}");
    p.b.wait("Passive", Duration::from_secs(5), |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    });
    p.b.wait("Active again", Duration::from_secs(10), |s| {
        s["vrrp"]["backup_mode"] == "Active"
    });
    let (code, answer) =
        p.a.post("/mode", json!({"mode": "Passive", "expires_s": 0}));
    assert_eq!(code, 400, "{answer}");

    // Off beside an Active Backup would put the address on both: refused.
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": false}));
    assert_eq!(code, 409, "{answer}");
    let (code, answer) = p.a.post("/mode", json!({"mode": "Passive"}));
    assert_eq!(code, 202, "{answer}");
    p.b.wait("Passive", Duration::from_secs(5), |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    });
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": false}));
    assert_eq!(code, 202, "{answer}");
    let s = p.a.wait("standalone", Duration::from_secs(10), |s| {
        s["summary"]
            .as_str()
            .is_some_and(|l| l.starts_with("Redundancy is disabled"))
    });
    assert_eq!(s["words"]["actions"]["redundancy_on"], true);
    let (code, answer) = p.a.post("/redundancy", json!({"enabled": true}));
    assert_eq!(code, 202, "{answer}");
    p.a.wait("Master with its Backup", Duration::from_secs(15), |s| {
        s["role"] == "Master" && peer_is(s, "Backup")
    });

    // The log, as the page's link downloads it.
    let mut r = e2e::agent()
        .get(&format!("http://{}/logs", p.a.status))
        .header("authorization", &format!("Bearer {PROC_TOKEN}"))
        .call()
        .expect("GET /logs");
    assert_eq!(r.status(), 200);
    let disposition = r
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let log = r.body_mut().read_to_string().expect("log text");
    assert!(
        log.contains("redundancy"),
        "the log lacks the switch:\n{log}"
    );
    // Without the token: refused like every endpoint.
    let code = e2e::agent()
        .get(&format!("http://{}/logs", p.a.status))
        .call()
        .map_or_else(
            |e| match e {
                ureq::Error::StatusCode(c) => c,
                _ => 0,
            },
            |r| r.status().as_u16(),
        );
    assert_eq!(code, 401);
}

/// The manual's §9 step by step, each unit from its own API as its page
/// offers it: the Backup set Passive installs alone (Firmware Update) and
/// comes back Passive on the new firmware; the swap, refused over that
/// difference beside an Active Backup, goes ahead beside the Passive one;
/// the old Master, now a Passive Backup, installs alone; set Active.
#[test]
fn manual_upgrade_through_each_units_own_page() {
    let (p, root) = procedures_pair("manual-upgrade");
    let image_path = root.join("fw.img");
    std::fs::write(&image_path, b"firmware 5.2.0").expect("image");
    let upload = |node: &Node| {
        curl_form(
            node,
            "/upgrade",
            &[
                ("image", format!("@{}", image_path.display())),
                ("version", "5.2.0".into()),
            ],
        )
    };
    let (code, answer) = p.b.post("/mode", json!({"mode": "Passive"}));
    assert_eq!(code, 202, "{answer}");
    let s = p.b.wait("Passive", Duration::from_secs(5), |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    });
    assert_eq!(s["words"]["actions"]["firmware_update"], true);
    assert_eq!(s["words"]["actions"]["swap"], false);
    let (code, answer) = upload(&p.b);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["local"], true, "{answer}");
    let b = p.b.wait("upgraded, Passive", Duration::from_secs(30), |s| {
        firmware(s).contains("firmware 5.2.0")
            && s["role"] == "Backup"
            && s["vrrp"]["backup_mode"] == "Passive"
    });
    assert!(
        b["words"]["local_upgrade"]
            .as_str()
            .is_some_and(|w| w.contains("done")),
        "{}",
        b["words"]
    );
    // The Master sees the difference, and swaps anyway: the Backup is
    // Passive, as the manual's upgrade has it.
    p.a.wait("seeing the new firmware", Duration::from_secs(10), |s| {
        s["words"]["findings"].as_array().is_some_and(|f| {
            f.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("5.2.0")))
        })
    });
    let (code, answer) = p.a.post("/swap", json!({}));
    assert_eq!(code, 202, "{answer}");
    p.b.wait("Master", Duration::from_secs(30), |s| s["role"] == "Master");
    p.a.wait("Passive Backup", Duration::from_secs(30), |s| {
        s["role"] == "Backup" && s["vrrp"]["backup_mode"] == "Passive"
    });
    let (code, answer) = upload(&p.a);
    assert_eq!(code, 202, "{answer}");
    p.a.wait("upgraded", Duration::from_secs(30), |s| {
        firmware(s).contains("firmware 5.2.0") && s["vrrp"]["backup_mode"] == "Passive"
    });
    let (code, answer) = p.a.post("/mode", json!({"mode": "Active"}));
    assert_eq!(code, 202, "{answer}");
    p.b.wait("without findings", Duration::from_secs(10), |s| {
        s["status"]["peer"]["mode"] == "Active"
            && s["status"]["findings"]
                .as_array()
                .is_some_and(Vec::is_empty)
    });
    assert_eq!(
        calls(&p),
        [
            "pbx-b save_config",
            "pbx-b upgrade firmware 5.2.0",
            "pbx-a save_config",
            "pbx-a upgrade firmware 5.2.0",
        ]
    );
}

/// The manual's "Upload Language Pack" as a rolling upgrade from the
/// Master: the same order, the firmware untouched, each unit restarted
/// after its install, both on the new pack at the end.
#[test]
fn rolling_language_pack_upgrade() {
    let (p, root) = procedures_pair("language-pack");
    let pack = root.join("en-2.pack");
    std::fs::write(&pack, b"a language pack").expect("pack");
    let (code, answer) = curl_form(
        &p.a,
        "/upgrade",
        &[
            ("image", format!("@{}", pack.display())),
            ("version", "en-2".into()),
            ("kind", "language_pack".into()),
        ],
    );
    assert_eq!(code, 202, "{answer}");
    let s =
        p.a.wait("done with the upgrade", Duration::from_secs(90), |s| {
            s["last_procedure"]["name"] == "rolling upgrade" && s["status"]["procedure"].is_null()
        });
    assert_eq!(
        s["last_procedure"]["outcome"], "Completed",
        "{}",
        s["words"]
    );
    for node in [&p.a, &p.b] {
        let unit = firmware(&node.status());
        assert!(
            unit.contains("firmware 5.1.30, language pack en-2"),
            "{}: {unit}",
            node.name
        );
    }
    assert_eq!(
        calls(&p),
        [
            "pbx-a save_config",
            "pbx-b save_config",
            "pbx-b upgrade language_pack en-2",
            "pbx-a upgrade language_pack en-2",
        ]
    );
    assert_eq!(p.b.role(), "Master");
}

/// Deterministic bytes that compress to nothing.
fn noise_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Both nodes' files with `[sync]` left at its defaults (`watch`,
/// `batch_ms`, `interval_s` 60) and, with `advert_ms`, that advertisement
/// interval.
fn default_sync(p: &Pair, advert_ms: Option<u64>) {
    for n in [&p.a, &p.b] {
        let mut text = std::fs::read_to_string(&n.config).expect("config");
        text = text.replace(&format!("interval_s = {SYNC_INTERVAL_S}\n"), "");
        if let Some(ms) = advert_ms {
            text = text.replace(
                "advert_interval_ms = 100\n",
                &format!("advert_interval_ms = {ms}\n"),
            );
        }
        std::fs::write(&n.config, text).expect("config");
    }
}

/// Waits until `path` holds `data`; returns how long it took.
fn arrival(path: &Path, data: &[u8], limit: Duration, log: &dyn Fn() -> String) -> Duration {
    let t0 = Instant::now();
    loop {
        if std::fs::read(path).is_ok_and(|d| d == data) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{} did not arrive within {limit:?}\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn window_ms(s: &Value) -> Option<u64> {
    s["sync"]["window_ms"].as_u64()
}

/// With the default `[sync]` settings the Master's tree is watched: a new
/// file is on the Backup long before the full-scan period (`interval_s`,
/// 60 s), and the Master's data-loss window drops back to zero.
#[test]
fn a_new_file_reaches_the_backup_long_before_the_full_scan() {
    let mut p = pair("watched", true);
    default_sync(&p, None);
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    p.a.wait("a clear window", Duration::from_secs(10), |s| {
        window_ms(s) == Some(0)
    });
    let data = noise_bytes(64 * 1024, 7);
    std::fs::create_dir_all(p.a.data.join("voicemail/100")).expect("mkdir");
    std::fs::write(p.a.data.join("voicemail/100/msg0001.wav"), &data).expect("write");
    // Half the full-scan period: only a change-driven round can do it.
    let took = arrival(
        &p.b.data.join("voicemail/100/msg0001.wav"),
        &data,
        Duration::from_secs(30),
        &|| p.a.log_text(),
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    p.a.wait("the window back to zero", Duration::from_secs(10), |s| {
        window_ms(s) == Some(0)
    });
    // The Backup, which cannot see the Master's changes, bounds it by its
    // generation's age.
    assert!(window_ms(&p.b.status()).is_some(), "{}", p.b.status());
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// The sync window's figures (`benches/scripts/sync_window.sh`, a release
/// build): with default `[sync]` settings and 1 s advertisements, the
/// worst and median time of 10 new 64 KiB files from the Master's disk to
/// the Backup's, then each node's CPU over `SYNC_IDLE_SECS` (default 60)
/// of no change.
#[test]
#[ignore = "a measurement: benches/scripts/sync_window.sh"]
fn sync_window_figures() {
    let mut p = pair("window-bench", true);
    default_sync(&p, Some(1000));
    std::fs::write(p.a.data.join("pbx.conf"), "trunk=1\n").expect("write");
    settled(&mut p);
    p.a.wait("a clear window", Duration::from_secs(10), |s| {
        window_ms(s) == Some(0)
    });
    let mut times = Vec::new();
    for i in 0..10u64 {
        let data = noise_bytes(64 * 1024, 100 + i);
        let name = format!("msg{i:04}.wav");
        // Apart, so that each is its own round.
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(p.a.data.join(&name), &data).expect("write");
        let took = arrival(
            &p.b.data.join(&name),
            &data,
            Duration::from_secs(120),
            &|| p.a.log_text(),
        );
        times.push(took);
    }
    times.sort();
    println!(
        "sync window: a new 64 KiB file Master -> Backup, 10 writes: worst {:.1} ms, median {:.1} ms",
        times[9].as_secs_f64() * 1e3,
        times[5].as_secs_f64() * 1e3
    );
    let secs: u64 = std::env::var("SYNC_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Settle first: the last round's confirmation, the status pages.
    std::thread::sleep(Duration::from_secs(2));
    let pids = [
        p.a.child.as_ref().expect("running").id(),
        p.b.child.as_ref().expect("running").id(),
    ];
    let before: Vec<u64> = pids.iter().map(|&pid| cpu_ticks(pid)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<u64> = pids.iter().map(|&pid| cpu_ticks(pid)).collect();
    let wall = t0.elapsed().as_secs_f64();
    // The kernel's clock ticks per second for /proc times (USER_HZ).
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    for (name, (b, a)) in ["Master", "Backup"].iter().zip(before.iter().zip(&after)) {
        let cpu = (a - b) as f64 / hz;
        println!(
            "idle CPU, {name}: {:.3} s in {wall:.0} s = {:.2} % of a core",
            cpu,
            100.0 * cpu / wall
        );
    }
}
