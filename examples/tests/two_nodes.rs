//! Two nodes in this process on loopback (udp transport, 100 ms
//! advertisements, temporary directories), checked through their HTTP
//! status API only: election, failover within Master_Down_Interval, sync of
//! a changed file, swap, and a Passive Backup that does not take over.
//!
//! Each test has its own ports and directories; they run in parallel.

mod e2e;

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use e2e::{PairSpec, established, generation, milestones, pair, quick_hooks, start_both};
use examples::config::Service;
use examples::demo::DemoHooks;
use examples::hooks::{BoxFut, Hooks, Readiness};
use examples::node::Stop;
use examples::phones::Phone;
use serde_json::json;

/// How late a takeover may be, past Master_Down_Interval, measured in whole
/// wall-clock milliseconds on a shared CI machine: timer and scheduling
/// slack, plus 1 ms for each of the two truncated timestamps.
const MARGIN_MS: u64 = 40;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Both nodes start together, the lower-priority one first: the higher
/// priority becomes Master (its Master_Down_Interval is the shorter one),
/// the other hears it and stays Backup, and each reports the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_is_elected() {
    let mut p = pair(&PairSpec {
        tag: "election",
        priority_a: 50,
        priority_b: 250,
        phones: 0,
    });
    start_both(&mut p).await;
    let b = p.b.wait_role("Master").await;
    let a = p.a.wait_role("Backup").await;
    assert_eq!(b["vrrp"]["priority"], 250);
    assert_eq!(a["vrrp"]["priority"], 50);
    assert_eq!(a["vrrp"]["master"], "127.0.0.2", "pbx-a follows pbx-b");
    assert_eq!(a["summary"], "Device with ID pbx-a is in Backup mode");
    // The Master down intervals the priorities give (RFC 5798 §6.1):
    // 3 × 100 ms + (256 − priority) × 100 ms / 256.
    assert_eq!(
        u(&a["vrrp"]["master_down_us"]),
        300_000 + 206 * 100_000 / 256
    );
    let b =
        p.b.wait(
            Duration::from_secs(10),
            "pbx-a reported UP as Backup",
            |s| {
                s["summary"] == "Backup device with ID pbx-a is UP (Active mode)"
                    && s["status"]["peer"]["role"] == "Backup"
                    // The status is a snapshot: the claim's answer may
                    // come a moment after the role.
                    && s["address_held"] == true
            },
        )
        .await;
    assert_eq!(b["address_held"], true);
    // Nobody changed roles after the election settled.
    let a = p.a.status().await;
    assert_eq!(a["role"], "Backup");
    assert_eq!(a["address_held"], false);
    p.stop().await;
}

/// The Master is killed (no priority 0): the Backup becomes Master
/// Master_Down_Interval after the last advertisement it accepted, within a
/// small margin, and runs the takeover to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_within_master_down_interval() {
    let mut p = pair(&PairSpec {
        tag: "failover",
        priority_a: 150,
        priority_b: 100,
        phones: 4,
    });
    established(&mut p).await;
    let before = p.b.status().await;
    let down_us = u(&before["vrrp"]["master_down_us"]);
    assert_eq!(down_us, 300_000 + 156 * 100_000 / 256);
    let down_ms = down_us / 1000;
    assert!(u(&before["vrrp"]["received"]) > 0);

    let crash_ms = unix_ms();
    p.a.stop(Stop::Crash).await;
    let s = p.b.wait_role("Master").await;
    let changed = u(&s["vrrp"]["last_change_unix_ms"]);
    let last_rx = u(&s["vrrp"]["last_rx_unix_ms"]);
    let detect = changed.saturating_sub(last_rx);
    eprintln!(
        "failover: Master {detect} ms after the last advertisement, {} ms after the crash \
         (Master_Down_Interval {down_us} µs)",
        changed.saturating_sub(crash_ms)
    );
    assert!(
        detect + 1 >= down_ms,
        "took over {detect} ms after the last advertisement: before Master_Down_Interval ({down_us} µs)"
    );
    assert!(
        detect <= down_ms + MARGIN_MS,
        "took over {detect} ms after the last advertisement; Master_Down_Interval is {down_us} µs"
    );
    // The last advertisement came before the crash, so the takeover is due
    // at most Master_Down_Interval after it.
    assert!(last_rx <= crash_ms + 1, "an advertisement after the crash");
    assert!(
        changed <= crash_ms + down_ms + MARGIN_MS,
        "took over {} ms after the crash",
        changed - crash_ms
    );

    // The takeover runs to the end: address, services, phones.
    let s =
        p.b.wait(Duration::from_secs(20), "takeover done", |s| {
            milestones(s).iter().any(|m| m == "Done")
        })
        .await;
    let m = milestones(&s);
    for (i, want) in [
        "Detected",
        "AddressClaimed",
        "ServiceReady",
        "Phones",
        "Done",
    ]
    .iter()
    .enumerate()
    {
        let at = m.iter().position(|x| x == want);
        assert!(at.is_some(), "no {want} in {m:?}");
        if i > 0 {
            assert!(at > m.iter().position(|x| x == "Detected"), "{m:?}");
        }
    }
    assert_eq!(s["timeline"]["reason"], "MasterDown");
    assert_eq!(s["address_held"], true);
    let running: Vec<bool> = s["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|v| v["running"] == true)
        .collect();
    assert_eq!(running, [true, true]);
    // Once the peer timeout passes without a heartbeat, the old Master is
    // reported down.
    p.b.wait(Duration::from_secs(10), "pbx-a reported DOWN", |s| {
        s["summary"] == "Backup device with ID pbx-a is DOWN"
    })
    .await;
    p.b.stop(Stop::Graceful).await;
}

/// A file changed in the Master's data directory, and one added, are in
/// the Backup's after its next round; excluded paths stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_file_reaches_the_backup() {
    let mut p = pair(&PairSpec {
        tag: "sync",
        priority_a: 150,
        priority_b: 100,
        phones: 0,
    });
    established(&mut p).await;
    let s =
        p.b.wait(Duration::from_secs(20), "first round", |s| {
            generation(s) >= 1
        })
        .await;
    let first = generation(&s);
    let (da, db) = (p.dir_a(), p.dir_b());
    assert_eq!(
        std::fs::read(db.join("config/ext-105.conf")).expect("replicated"),
        std::fs::read(da.join("config/ext-105.conf")).expect("source")
    );
    assert_eq!(
        std::fs::read(db.join("voicemail/100/msg0001.wav")).expect("replicated"),
        vec![0x11u8; 16 * 1024]
    );
    assert!(
        !db.join("licenses/pbx-32.lic").exists(),
        "excluded path replicated"
    );

    let changed = "[ext-105]\ntype=friend\ncontext=external\ncallerid=\"Reception\"\n";
    std::fs::write(da.join("config/ext-105.conf"), changed).expect("change");
    std::fs::write(da.join("voicemail/100/msg0002.wav"), vec![0x22u8; 8 * 1024]).expect("add");
    // Rounds may already be running; wait for the one that carries both.
    p.b.wait(Duration::from_secs(20), "the change", |s| {
        generation(s) > first
            && std::fs::read_to_string(db.join("config/ext-105.conf"))
                .ok()
                .as_deref()
                == Some(changed)
            && db.join("voicemail/100/msg0002.wav").exists()
    })
    .await;
    assert_eq!(
        std::fs::read(db.join("voicemail/100/msg0002.wav")).expect("replicated"),
        vec![0x22u8; 8 * 1024]
    );
    // The Master sees what its Backup holds.
    let a =
        p.a.wait(Duration::from_secs(10), "the peer's generation", |s| {
            // Null until the Backup's first heartbeat with a generation.
            s["status"]["peer"]["sync_generation"].as_u64().unwrap_or(0) > first
        })
        .await;
    assert_eq!(a["role"], "Master");
    p.stop().await;
}

/// `POST /swap` on the Master: the roles exchange and the procedure
/// finishes on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_exchanges_roles() {
    let mut p = pair(&PairSpec {
        tag: "swap",
        priority_a: 150,
        priority_b: 100,
        phones: 0,
    });
    established(&mut p).await;
    p.b.wait(Duration::from_secs(20), "first round", |s| {
        generation(s) >= 1
    })
    .await;
    // The swap's preflight needs the Master to know what its Backup holds
    // (the confirmation comes back a moment after the Backup commits).
    p.a.wait(Duration::from_secs(20), "its Backup's first round", |s| {
        generation(s) >= 1
    })
    .await;

    // The Backup refuses: a swap is the Master's to start.
    let (code, answer) = p.b.post("/swap", json!({})).await;
    assert_eq!(code, 409, "swap on the Backup: {answer}");
    assert!(answer["error"].is_string());

    let (code, answer) = p.a.post("/swap", json!({})).await;
    assert_eq!(code, 202, "swap refused: {answer}");
    assert!(answer["procedure"].is_u64(), "{answer}");
    let b = p.b.wait_role("Master").await;
    p.a.wait(Duration::from_secs(20), "Backup", |s| s["role"] == "Backup")
        .await;
    for n in [&p.a, &p.b] {
        n.wait(Duration::from_secs(20), "procedure finished", |s| {
            s["status"].is_object() && s["status"]["procedure"].is_null()
        })
        .await;
    }
    assert_eq!(b["vrrp"]["state"], "Master");
    p.b.wait(Duration::from_secs(10), "pbx-a reported UP", |s| {
        s["summary"] == "Backup device with ID pbx-a is UP (Active mode)"
    })
    .await;
    // The roles stay exchanged.
    let (a, b) = (p.a.status().await, p.b.status().await);
    assert_eq!(
        (a["role"].as_str(), b["role"].as_str()),
        (Some("Backup"), Some("Master"))
    );
    assert_eq!(a["address_held"], false);
    assert_eq!(b["address_held"], true);
    p.stop().await;
}

/// A Passive Backup ignores advertisements: when the Master dies it stays
/// Backup. Set Active again, it takes over (the node was alive all along).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_backup_does_not_take_over() {
    let mut p = pair(&PairSpec {
        tag: "passive",
        priority_a: 150,
        priority_b: 100,
        phones: 0,
    });
    established(&mut p).await;

    let (code, answer) = p.b.post("/mode", json!({"mode": "Nonsense"})).await;
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = p.b.post("/mode", json!({"mode": "Passive"})).await;
    assert_eq!(code, 202, "Passive refused: {answer}");
    let b =
        p.b.wait(Duration::from_secs(10), "Passive", |s| {
            s["vrrp"]["backup_mode"] == "Passive"
        })
        .await;
    let down_ms = u(&b["vrrp"]["master_down_us"]) / 1000;
    p.a.wait(Duration::from_secs(10), "Passive reported", |s| {
        s["summary"] == "Backup device with ID pbx-b is UP (Passive mode)"
    })
    .await;

    p.a.stop(Stop::Crash).await;
    // Three Master_Down_Intervals: an Active Backup would be Master by now.
    tokio::time::sleep(Duration::from_millis(3 * down_ms)).await;
    let s = p.b.status().await;
    assert_eq!(s["role"], "Backup", "a Passive Backup took over: {s:#}");
    assert_eq!(s["vrrp"]["backup_mode"], "Passive");
    assert_eq!(s["address_held"], false);

    let (code, answer) = p.b.post("/mode", json!({"mode": "Active"})).await;
    assert_eq!(code, 202, "Active refused: {answer}");
    p.b.wait_role("Master").await;
    p.b.stop(Stop::Graceful).await;
}

/// Swap there and back: after the first swap the old Master has restarted
/// (soft, faster than the peer timeout) and must still learn the new
/// Master's identity, and accept its requests, for the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_there_and_back() {
    let mut p = pair(&PairSpec {
        tag: "swap-back",
        priority_a: 150,
        priority_b: 100,
        phones: 0,
    });
    established(&mut p).await;
    p.b.wait(Duration::from_secs(20), "first round", |s| {
        generation(s) >= 1
    })
    .await;
    // The swap's preflight needs the Master to know what its Backup holds
    // (the confirmation comes back a moment after the Backup commits).
    p.a.wait(Duration::from_secs(20), "its Backup's first round", |s| {
        generation(s) >= 1
    })
    .await;
    let (code, answer) = p.a.post("/swap", json!({})).await;
    assert_eq!(code, 202, "first swap refused: {answer}");
    p.b.wait_role("Master").await;
    for n in [&p.a, &p.b] {
        n.wait(Duration::from_secs(20), "procedure finished", |s| {
            s["role"]
                == if n.name == "pbx-a" {
                    "Backup"
                } else {
                    "Master"
                }
                && s["status"]["procedure"].is_null()
        })
        .await;
    }
    p.b.wait(Duration::from_secs(10), "pbx-a UP as Backup", |s| {
        s["status"]["peer"]["role"] == "Backup" && s["status"]["peer"]["mode"] == "Active"
    })
    .await;
    let (code, answer) = p.b.post("/swap", json!({})).await;
    assert_eq!(code, 202, "second swap refused: {answer}");
    p.a.wait_role("Master").await;
    p.b.wait(Duration::from_secs(20), "Backup again", |s| {
        s["role"] == "Backup" && s["status"]["procedure"].is_null()
    })
    .await;
    p.stop().await;
}

/// Simulated services and phones with no way to check a phone's
/// registration.
struct NoCheck(DemoHooks);

impl Hooks for NoCheck {
    fn start_service(&self, index: usize, svc: &Service) -> BoxFut<Result<(), String>> {
        self.0.start_service(index, svc)
    }
    fn check_service(&self, index: usize, svc: &Service) -> BoxFut<Readiness> {
        self.0.check_service(index, svc)
    }
    fn stop_service(&self, index: usize, svc: &Service) -> BoxFut<()> {
        self.0.stop_service(index, svc)
    }
    fn service_running(&self, index: usize) -> bool {
        self.0.service_running(index)
    }
    fn phone_action(&self, phone: &Phone, reboot: bool) -> BoxFut<bool> {
        self.0.phone_action(phone, reboot)
    }
    fn phone_registered(&self, _phone: &Phone) -> Option<BoxFut<bool>> {
        None
    }
}

/// No phone counts as home without a check: on a node that cannot check
/// registrations, the takeover reports the phone that follows the address
/// unchecked at the announcement, and the nudged and rebooted ones
/// unchecked once their commands succeeded; none registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_without_a_check_are_unchecked_not_home() {
    let mut p = pair(&PairSpec {
        tag: "unchecked",
        priority_a: 150,
        priority_b: 100,
        phones: 4,
    });
    p.b.hooks = Some(Arc::new(NoCheck(quick_hooks())));
    established(&mut p).await;
    p.a.stop(Stop::Crash).await;
    let s =
        p.b.wait(Duration::from_secs(20), "takeover done", |s| {
            milestones(s).iter().any(|m| m == "Done")
        })
        .await;
    // The inventory: follow, nudge, reboot, person.
    let results: Vec<serde_json::Value> = s["phones"]
        .as_array()
        .expect("phones")
        .iter()
        .map(|o| o["result"].clone())
        .collect();
    assert_eq!(
        results,
        [
            json!({"Unchecked": "Followed"}),
            json!({"Unchecked": "Nudged"}),
            json!({"Unchecked": "Rebooted"}),
            json!({"NeedsPerson": "UnsupportedModel"}),
        ],
        "{s:#}"
    );
    // The timeline counts them resolved, none registered.
    let phones: Vec<&serde_json::Value> = s["timeline"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["what"].get("Phones"))
        .collect();
    assert_eq!(phones.last().map(|p| &p["percent"]), Some(&json!(100)));
    assert!(phones.iter().all(|p| p["registered"] == 0), "{phones:?}");
    p.b.stop(Stop::Graceful).await;
}
