//! The status page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, by `fantoccini`), against two nodes running in
//! this process on loopback, with the API token set (`[status]
//! token_file`): opened without credentials the page is refused, opened
//! with them (`http://admin:TOKEN@host/`, HTTP Basic) its buttons work.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`; `CHROMIUM` and `CHROMEDRIVER` name
//! other paths). Without them the test says why and passes, except under
//! CI (`CI` set), where it fails.

mod e2e;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{PairSpec, TempDir, milestones, pair};
use examples::node::Stop;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Where a program is: the environment variable `var`, else `default`.
fn program(var: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    p.exists().then_some(p)
}

/// chromedriver in a process group of its own, ended with everything it
/// started (the browser) when dropped, also when the test fails.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Driver {
    fn start(path: &PathBuf) -> Driver {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = Command::new(path);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start chromedriver");
        let driver = Driver { child, port };
        // Ready once it answers its status endpoint.
        let until = Instant::now() + Duration::from_secs(20);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        while agent
            .get(format!("{}/status", driver.url()))
            .call()
            .is_err()
        {
            assert!(Instant::now() < until, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test created for
            // chromedriver (process_group(0): its id is the child's pid).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &std::path::Path, profile: &TempDir) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--disable-breakpad",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .expect("WebDriver session")
}

/// The text of element `#id`.
async fn text(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
}

/// Waits until `#id`'s text satisfies `cond` (the page refreshes every
/// 500 ms); panics with the last text after `limit`.
async fn wait_text(c: &Client, id: &str, limit: Duration, cond: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + limit;
    loop {
        let t = text(c, id).await;
        if cond(&t) {
            return t;
        }
        assert!(Instant::now() < until, "#{id} still shows `{t}`");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API token, the same on both units.
const TOKEN: &str = "browser-test-token-0123456789";

/// What the browser made of the last navigation: the HTTP status it got
/// (the Navigation Timing entry's `responseStatus`) and whether the
/// status page's line is in the document.
async fn navigated(c: &Client) -> (u64, bool) {
    let v = c
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];\
             return [n ? n.responseStatus : 0, document.getElementById('line') !== null];",
            vec![],
        )
        .await
        .expect("read the navigation");
    (v[0].as_u64().unwrap_or(0), v[1].as_bool().unwrap_or(true))
}

/// Without credentials the Master's page and the forwarded Backup's page
/// are refused (401); with the token as Basic credentials in the address,
/// the Master's page shows the appliance's status line and the last
/// failover, its button sets the Backup Passive and the page shows it, and
/// the Backup's page loads through the Master's forwarded port, where its
/// own button sets it Active again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium() {
    let (Some(chromium), Some(chromedriver)) = (
        program("CHROMIUM", "/usr/bin/chromium"),
        program("CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        let why = "no /usr/bin/chromium or /usr/bin/chromedriver \
                   (apt-get install chromium chromium-driver)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("browser test skipped: {why}");
        return;
    };

    // A real failover first, so that the page has one to show: pbx-b
    // starts alone and is Master, pbx-a joins as Backup (no fail-back),
    // pbx-b dies and pbx-a takes over, pbx-b returns as Backup.
    let mut p = pair(&PairSpec {
        tag: "browser",
        priority_a: 150,
        priority_b: 100,
        phones: 4,
    });
    p.use_token(TOKEN);
    p.b.start().await;
    p.b.wait_role("Master").await;
    p.a.start().await;
    p.a.wait_role("Backup").await;
    p.b.wait(Duration::from_secs(10), "pbx-a UP", |s| {
        s["summary"] == "Backup device with ID pbx-a is UP (Active mode)"
    })
    .await;
    p.b.stop(Stop::Crash).await;
    p.a.wait(Duration::from_secs(20), "takeover done", |s| {
        s["role"] == "Master" && milestones(s).iter().any(|m| m == "Done")
    })
    .await;
    // pbx-b stays away until pbx-a has seen it down (the peer timeout), as
    // a rebooting unit does: the two then greet each other afresh.
    p.a.wait(Duration::from_secs(10), "pbx-b DOWN", |s| {
        s["summary"] == "Backup device with ID pbx-b is DOWN"
    })
    .await;
    p.b.start().await;
    p.b.wait_role("Backup").await;
    let a =
        p.a.wait(
            Duration::from_secs(10),
            "pbx-b UP as an Active Backup",
            |s| {
                s["summary"] == "Backup device with ID pbx-b is UP (Active mode)"
                    && s["status"]["peer"]["role"] == "Backup"
                    && s["status"]["peer"]["mode"] == "Active"
            },
        )
        .await;
    let entries = a["timeline"]["entries"].as_array().map_or(0, Vec::len);

    let driver = Driver::start(&chromedriver);
    let profile = TempDir::new("chromium-profile");
    let c = browser(&driver, &chromium, &profile).await;

    // Without credentials: refused, nothing of the status shown.
    let gui = format!("127.0.0.1:{}", p.gui);
    for url in [format!("{}/", p.a.url()), format!("http://{gui}/")] {
        c.goto(&url).await.expect("a page without credentials");
        // Headless, nobody answers the Basic prompt: the browser shows
        // its error page for the 401.
        assert_eq!(
            navigated(&c).await,
            (401, false),
            "{url} without credentials"
        );
    }

    // The Master's page, the token as Basic credentials in the address.
    let with_token = |host: &str| format!("http://admin:{TOKEN}@{host}/");
    c.goto(&with_token(&p.a.status.to_string()))
        .await
        .expect("Master's page");
    assert_eq!(navigated(&c).await, (200, true), "with the token");
    let line = wait_text(&c, "line", Duration::from_secs(10), |t| {
        t.contains("is UP (")
    })
    .await;
    assert_eq!(line, "Backup device with ID pbx-b is UP (Active mode)");
    assert_eq!(text(&c, "id").await, "pbx-a");
    assert_eq!(text(&c, "role").await, "Master");
    let summary = text(&c, "timeline-summary").await;
    assert!(summary.starts_with("reason MasterDown"), "{summary}");
    assert!(summary.contains("data-loss window"), "{summary}");
    // The table is rebuilt on every refresh: read its rows in one go.
    let rows = c
        .execute(
            "return Array.from(document.querySelectorAll('#timeline tbody tr'), r => r.innerText);",
            vec![],
        )
        .await
        .expect("timeline rows");
    let shown: Vec<String> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        shown.len(),
        entries,
        "one row per timeline entry: {shown:?}"
    );
    let table = shown.join("\n");
    for want in [
        "Detected",
        "AddressClaimed",
        "ServiceReady",
        "Phones",
        "Done",
    ] {
        assert!(table.contains(want), "no {want} in the timeline:\n{table}");
    }

    // The Backup mode button: pbx-b becomes Passive, and the page says so.
    c.find(Locator::Id("passive"))
        .await
        .expect("Passive button")
        .click()
        .await
        .expect("click");
    let answer = wait_text(&c, "answer", Duration::from_secs(5), |t| !t.is_empty()).await;
    assert_eq!(answer, "accepted", "the Passive button's request");
    wait_text(&c, "line", Duration::from_secs(10), |t| {
        t == "Backup device with ID pbx-b is UP (Passive mode)"
    })
    .await;
    p.b.wait(Duration::from_secs(5), "Passive", |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    })
    .await;

    // The Backup's page through the Master's Backup GUI port.
    c.goto(&with_token(&gui))
        .await
        .expect("Backup's page through the forward");
    wait_text(&c, "id", Duration::from_secs(10), |t| t == "pbx-b").await;
    assert_eq!(text(&c, "role").await, "Backup");
    let line = wait_text(&c, "line", Duration::from_secs(10), |t| t != "loading…").await;
    assert_eq!(line, "Device with ID pbx-b is in Backup mode");
    let vrrp = text(&c, "vrrp").await;
    assert!(vrrp.contains("Passive"), "{vrrp}");
    // The Backup's own /mode through the forward (manual §10).
    c.find(Locator::Id("active"))
        .await
        .expect("Active button")
        .click()
        .await
        .expect("click");
    let answer = wait_text(&c, "answer", Duration::from_secs(5), |t| !t.is_empty()).await;
    assert_eq!(answer, "accepted", "the Backup's Active button, forwarded");
    wait_text(&c, "vrrp", Duration::from_secs(10), |t| {
        t.contains("Active")
    })
    .await;
    p.b.wait(Duration::from_secs(5), "Active", |s| {
        s["vrrp"]["backup_mode"] == "Active"
    })
    .await;

    c.close().await.expect("end the WebDriver session");
    drop(driver);
    p.stop().await;
}
