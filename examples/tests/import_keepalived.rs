//! `node import-keepalived` through the real binary: every sample
//! configuration Debian's keepalived package ships, a two-node PBX
//! configuration of our own (checked by keepalived itself), the exit
//! statuses, and a real `node` started on a converted configuration.
//!
//! The Debian samples and keepalived are installed by `.ci/run`; without
//! them these tests say why and pass, except when `CI` is set.
//! `KEEPALIVED_SAMPLES=DIR` reads the samples from another folder.

mod e2e;
mod run;

use e2e::TempDir;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use examples::config::NodeConfig;

/// Where Debian's keepalived package puts its sample configurations.
const SAMPLES: &str = "/usr/share/doc/keepalived/samples";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Skips (false, printing why) or, when `CI` is set, fails.
fn require(what: &str, present: bool) -> bool {
    if !present {
        assert!(!in_ci(), "{what} (CI is set, so this is a failure)");
        eprintln!("skipping: {what}");
    }
    present
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What one run of the converter gave.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `node import-keepalived ARGS…`, to its end (at most 30 s).
fn import(args: &[&str]) -> Out {
    let child = Command::new(run::example_bin("node"))
        .arg("import-keepalived")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node import-keepalived");
    let mut guard = run::Kill(Some(child));
    let t0 = Instant::now();
    loop {
        let child = guard.0.as_mut().expect("child");
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "node import-keepalived {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = guard
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("output");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every stderr line of a conversion is `line N: keyword: hint`, and line
/// N of the file holds that keyword.
#[track_caller]
fn check_notes(file: &Path, stderr: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).expect("read");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut notes = Vec::new();
    for l in stderr.lines() {
        let rest = l
            .strip_prefix("line ")
            .unwrap_or_else(|| panic!("{}: not a note: `{l}`", file.display()));
        let mut parts = rest.splitn(3, ": ");
        let (n, keyword, hint) = (
            parts.next().and_then(|n| n.parse::<usize>().ok()),
            parts.next(),
            parts.next(),
        );
        let (Some(n), Some(keyword), Some(hint)) = (n, keyword, hint) else {
            panic!("{}: not `line N: keyword: hint`: `{l}`", file.display());
        };
        assert!(!hint.trim().is_empty(), "{l}");
        let line = lines.get(n - 1).copied().unwrap_or("");
        assert!(
            line.contains(keyword),
            "{}: note `{l}`, but line {n} is `{line}`",
            file.display()
        );
        notes.push((n, keyword.to_owned()));
    }
    notes
}

/// The printed TOML, as the node's loader reads it from a file.
#[track_caller]
fn load(toml: &str) -> NodeConfig {
    let dir = TempDir::new("load");
    let path = dir.join("node.toml");
    std::fs::write(&path, toml).expect("write");
    NodeConfig::load(&path).unwrap_or_else(|e| panic!("the node refuses it: {e}\n{toml}"))
}

/// The names of a file's instances, read without the converter: the
/// second word of each line that starts with `vrrp_instance`.
fn instance_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("vrrp_instance")).then(|| w.next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Each instance's `virtual_router_id`, in file order.
fn vrids(text: &str) -> Vec<u8> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("virtual_router_id")).then(|| w.next()?.parse().ok())?
        })
        .collect()
}

#[test]
fn every_debian_sample_converts_or_exits_2() {
    let dir = std::env::var_os("KEEPALIVED_SAMPLES")
        .map_or_else(|| PathBuf::from(SAMPLES), PathBuf::from);
    if !require(
        &format!("{} is missing (Debian's keepalived package)", dir.display()),
        dir.is_dir(),
    ) {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("keepalived.conf"))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no keepalived.conf.* in {}",
        dir.display()
    );
    let (mut none, mut one, mut several, mut converted) = (0, 0, 0, 0);
    for file in &files {
        let path = file.to_str().expect("utf-8 path");
        let text = std::fs::read_to_string(file).expect("read sample");
        let names = instance_names(&text);
        let out = import(&[path]);
        match names.len() {
            0 => {
                none += 1;
                assert_eq!(out.code, Some(2), "{path}: {out:?}");
                assert!(out.stdout.is_empty(), "{path}: {out:?}");
                assert!(out.stderr.contains("no vrrp_instance"), "{path}: {out:?}");
            }
            1 => {
                one += 1;
                assert_eq!(out.code, Some(0), "{path}: {out:?}");
                let c = load(&out.stdout);
                assert_eq!(c.vrrp.vrid.get(), vrids(&text)[0], "{path}");
                check_notes(file, &out.stderr);
                converted += 1;
            }
            _ => {
                several += 1;
                assert_eq!(out.code, Some(2), "{path}: {out:?}");
                assert!(out.stdout.is_empty(), "{path}: {out:?}");
                for n in &names {
                    assert!(
                        out.stderr.contains(n.as_str()),
                        "{path}: {n} not listed: {out:?}"
                    );
                }
                let ids = vrids(&text);
                for (n, vrid) in names.iter().zip(ids) {
                    let out = import(&[path, "--instance", n]);
                    assert_eq!(out.code, Some(0), "{path} --instance {n}: {out:?}");
                    let c = load(&out.stdout);
                    assert_eq!(c.vrrp.vrid.get(), vrid, "{path} --instance {n}");
                    check_notes(file, &out.stderr);
                    converted += 1;
                }
            }
        }
    }
    // Debian's 2.2.7 ships all three kinds.
    assert!(
        none > 0 && one > 0 && several > 0,
        "{none} / {one} / {several}"
    );
    eprintln!(
        "{} samples: {none} without vrrp_instance, {one} with one, {several} with several; \
         {converted} instances converted",
        files.len()
    );
}

/// pbx-a's keepalived.conf in a typical two-node PBX: unicast peers, a
/// sync group of two instances, notify scripts, a tracked script and
/// interface. keepalived itself accepts it (see below).
const PBX: &str = r#"! keepalived.conf of pbx-a, the first unit of a two-node PBX pair.
global_defs {
    router_id pbx-a
    enable_script_security
    script_user root
    vrrp_garp_master_repeat 3
}

vrrp_script chk_asterisk {
    script "/usr/bin/pgrep -x asterisk"
    interval 2
    fall 2
    rise 2
}

vrrp_sync_group PBX {
    group {
        VI_VOICE
        VI_MGMT
    }
    notify_master "/etc/keepalived/pbx-notify.sh master"
}

vrrp_instance VI_VOICE {
    state BACKUP
    interface ens192
    virtual_router_id 51
    priority 150
    advert_int 1
    nopreempt
    unicast_src_ip 10.20.0.11
    unicast_peer {
        10.20.0.12
    }
    authentication {
        auth_type PASS
        auth_pass "pbx#pass"        # 8 bytes, a '#' inside the quotes
    }
    virtual_ipaddress {
        10.20.0.100/24 dev ens192
        10.20.0.101/24 dev ens192 label ens192:sip
    }
    track_script {
        chk_asterisk
    }
    notify_master "/etc/keepalived/pbx-notify.sh master VOICE"
    notify_backup "/etc/keepalived/pbx-notify.sh backup VOICE"
    notify_fault  "/etc/keepalived/pbx-notify.sh fault VOICE"
}

vrrp_instance VI_MGMT {
    state BACKUP
    interface ens224
    virtual_router_id 52
    version 3
    priority 150
    advert_int 0.5
    preempt_delay 10
    unicast_src_ip 10.30.0.11
    unicast_peer {
        10.30.0.12
    }
    virtual_ipaddress {
        10.30.0.100/24
    }
    track_interface {
        ens192
    }
}
"#;

#[test]
fn a_two_node_pbx_configuration() {
    let dir = TempDir::new("pbx");
    let file = dir.join("keepalived.conf");
    std::fs::write(&file, PBX).expect("write");
    let path = file.to_str().expect("utf-8 path");

    // Two instances, none chosen: exit 2 with both listed.
    let out = import(&[path]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("VI_VOICE (line 24)"), "{out:?}");
    assert!(out.stderr.contains("VI_MGMT (line 51)"), "{out:?}");
    assert!(out.stderr.contains("--instance"), "{out:?}");

    let out = import(&[path, "--instance", "VI_VOICE"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let c = load(&out.stdout);
    assert_eq!(c.id, "pbx-a");
    let v = &c.vrrp;
    assert_eq!(v.interface.as_deref(), Some("ens192"));
    assert_eq!(v.version, vrrp_proto::Version::V2);
    assert_eq!((v.vrid.get(), v.priority.get()), (51, 150));
    assert_eq!(v.interval.as_centis(), 100);
    assert!(!v.preempt, "nopreempt");
    assert_eq!(v.auth_pass.as_deref(), Some("pbx#pass"));
    assert_eq!(
        v.unicast_peers,
        ["10.20.0.12".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(v.garp_count, 3);
    let vips: Vec<String> = v
        .virtual_ips
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix))
        .collect();
    assert_eq!(vips, ["10.20.0.100/24", "10.20.0.101/24"]);
    let notes = check_notes(&file, &out.stderr);
    let got: BTreeSet<(usize, &str)> = notes.iter().map(|(n, k)| (*n, k.as_str())).collect();
    let want: BTreeSet<(usize, &str)> = [
        (4, "enable_script_security"),
        (5, "script_user"),
        (9, "vrrp_script"),
        (16, "vrrp_sync_group"),
        (25, "state"),
        (31, "unicast_src_ip"),
        (41, "label"),
        (43, "track_script"),
        (46, "notify_master"),
        (47, "notify_backup"),
        (48, "notify_fault"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{}", out.stderr);
    assert!(out.stderr.contains("line 16: vrrp_sync_group: not carried"));
    assert!(out.stderr.contains(
        "line 46: notify_master: not carried: the node starts and stops [[service]] hooks"
    ));
    assert!(
        out.stderr
            .contains("line 43: track_script: not carried: tracked objects")
    );

    let out = import(&[path, "--instance", "VI_MGMT"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let c = load(&out.stdout);
    assert_eq!(c.vrrp.version, vrrp_proto::Version::V3);
    assert_eq!(c.vrrp.interval.as_centis(), 50);
    assert!(c.vrrp.preempt, "keepalived preempts by default");
    assert_eq!(c.vrrp.preempt_delay, Duration::from_secs(10));
    let notes = check_notes(&file, &out.stderr);
    assert!(
        notes.contains(&(66, "track_interface".to_owned())),
        "{}",
        out.stderr
    );

    // An instance the file does not have: exit 1, the names listed.
    let out = import(&[path, "--instance", "VI_NOPE"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("no vrrp_instance named `VI_NOPE`"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("VI_VOICE (line 24), VI_MGMT (line 51)"),
        "{out:?}"
    );
}

/// A network namespace of this test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("ka-import-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns(name);
        ns.ip(&["netns", "add", &ns.0]);
        ns
    }

    #[track_caller]
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The PBX configuration above is keepalived's: `keepalived -t` checks it
/// in a namespace of this test's own that has its two interfaces.
#[test]
fn keepalived_itself_accepts_the_pbx_configuration() {
    if !require(
        "keepalived_itself_accepts_the_pbx_configuration needs root",
        is_root(),
    ) || !require("keepalived is not installed", have("keepalived"))
        || !require("ip (iproute2) is not installed", have("ip"))
    {
        return;
    }
    let dir = TempDir::new("ka-t");
    let file = dir.join("keepalived.conf");
    std::fs::write(&file, PBX).expect("write");
    let ns = Netns::new();
    for (name, peer) in [("ens192", "p192"), ("ens224", "p224")] {
        ns.ip(&[
            "-n", &ns.0, "link", "add", name, "type", "veth", "peer", "name", peer,
        ]);
    }
    let check = |path: &Path| {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "keepalived", "-t", "-f"])
            .arg(path)
            .output()
            .expect("keepalived -t")
    };
    let out = check(&file);
    assert!(
        out.status.success(),
        "keepalived -t: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check can fail: a priority keepalived refuses.
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, PBX.replace("priority 150", "priority 1000")).expect("write");
    assert!(!check(&bad).status.success());
}

#[test]
fn unreadable_files_and_bad_values_are_errors() {
    let out = import(&["/nonexistent/keepalived.conf"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot read /nonexistent/keepalived.conf"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());

    let dir = TempDir::new("bad");
    let file = dir.join("keepalived.conf");
    std::fs::write(
        &file,
        "vrrp_instance X {\n interface eth0\n virtual_router_id 0\n virtual_ipaddress {\n 192.0.2.1\n }\n}\n",
    )
    .expect("write");
    let out = import(&[file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("line 3: virtual_router_id: must be 1-255, got 0"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());

    std::fs::write(&file, "global_defs {\n router_id x\n").expect("write");
    let out = import(&[file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("line 1: this block is never closed"),
        "{out:?}"
    );

    // A file with only an `include`: no instance here, exit 2, and the
    // include named as not followed.
    std::fs::write(&file, "include /etc/keepalived/conf.d/*.conf\n").expect("write");
    let out = import(&[file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("line 1: include: not followed"),
        "{out:?}"
    );

    // The node's own invocation is unchanged: --config is still required.
    let out = Command::new(run::example_bin("node"))
        .stdin(Stdio::null())
        .output()
        .expect("node");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// A real `node` on a converted configuration: keepalived's instance on
/// `lo` with a unicast peer on loopback, the printed TOML plus a status
/// endpoint on loopback and a startup delay longer than the test (so the
/// node stays Backup and claims no address). It answers `/status` with the
/// converted settings, and stops cleanly on SIGTERM.
#[test]
fn a_node_runs_on_a_converted_configuration() {
    // The raw transport opens a raw socket: root.
    if !require(
        "a_node_runs_on_a_converted_configuration needs root",
        is_root(),
    ) {
        return;
    }
    let dir = TempDir::new("run");
    let file = dir.join("keepalived.conf");
    std::fs::write(
        &file,
        "vrrp_instance VI_LO {\n  state BACKUP\n  interface lo\n  virtual_router_id 77\n  \
         priority 90\n  advert_int 1\n  unicast_peer {\n    127.0.0.2\n  }\n  \
         virtual_ipaddress {\n    192.0.2.77/32\n  }\n}\n",
    )
    .expect("write");
    let out = import(&[file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut table: toml::Table = out.stdout.parse().expect("TOML");
    table["vrrp"]
        .as_table_mut()
        .expect("[vrrp]")
        .insert("startup_delay_ms".into(), toml::Value::Integer(600_000));
    let config = format!(
        "{}\n[status]\nlisten = \"127.0.0.1:{port}\"\n",
        toml::to_string(&table).expect("TOML")
    );
    let config_path = dir.join("node.toml");
    std::fs::write(&config_path, config).expect("write");
    let log = dir.join("node.log");
    let child = Command::new(run::example_bin("node"))
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start node");
    let mut guard = run::Kill(Some(child));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .proxy(None)
        .build();
    let agent: ureq::Agent = agent.into();
    let t0 = Instant::now();
    let status: serde_json::Value = loop {
        if let Ok(mut r) = agent.get(&format!("http://127.0.0.1:{port}/status")).call()
            && r.status() == 200
        {
            break r.body_mut().read_json().expect("JSON");
        }
        let child = guard.0.as_mut().expect("child");
        if let Some(st) = child.try_wait().expect("wait") {
            panic!(
                "node exited {st:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no /status\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["id"], "VI_LO", "{status}");
    assert_eq!(status["vrrp"]["state"], "Backup", "{status}");
    assert_eq!(status["vrrp"]["priority"], 90, "{status}");
    assert_eq!(status["vrrp"]["interval_ms"], 1000, "{status}");
    assert_eq!(status["address_held"], false, "{status}");
    // SIGTERM (by pid): a graceful stop, exit 0.
    let child = guard.0.as_mut().expect("child");
    let pid = i32::try_from(child.id()).expect("pid");
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.0 = None;
    assert!(
        st.success(),
        "{st:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
