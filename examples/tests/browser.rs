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

/// `[hooks]` that append `<unit> <hook>` to `calls.log` in `root`,
/// install by copying the image beside the unit and report the version
/// the install wrote.
fn recording_hooks(name: &str, root: &std::path::Path) -> examples::config::ProcedureHooks {
    let unit = root.join(name);
    std::fs::create_dir_all(&unit).expect("unit dir");
    std::fs::write(
        unit.join("version.txt"),
        "firmware=5.1.30\nlanguage_pack=en-1\n",
    )
    .expect("version file");
    let log = root.join("calls.log");
    let (log, u) = (log.display(), unit.display());
    examples::config::ProcedureHooks {
        staging_dir: unit.join("staging"),
        max_image_bytes: 8 << 20,
        save_config: Some(format!("echo '{name} save_config' >> {log}")),
        upgrade: Some(format!(
            "echo \"{name} upgrade $PBX_IMAGE_KIND $PBX_IMAGE_VERSION\" >> {log} && \
             cp \"$1\" {u}/installed.img && echo \"firmware=$PBX_IMAGE_VERSION\" > {u}/version.txt"
        )),
        version: Some(format!("cat {u}/version.txt")),
        restore: Some(format!(
            "echo '{name} restore' >> {log} && cp \"$1\" {u}/restored.tar"
        )),
    }
}

/// Sets the window's width, then checks the page as a phone (375 px) or a
/// desktop (1,200 px) shows it: no horizontal scroll, every button shown
/// inside the window; saves a screenshot under `target/screenshots/`.
async fn fits(c: &Client, width: u32, name: &str) {
    c.set_window_size(width, 900).await.expect("window size");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = c
        .execute(
            "const d = document.documentElement;\
             const bad = [];\
             for (const b of document.querySelectorAll('button, a.button')) {\
               const r = b.getBoundingClientRect();\
               if (r.width === 0 && r.height === 0) continue;\
               if (r.left < 0 || r.right > window.innerWidth) bad.push(b.id + ' ' + r.right);\
             }\
             return [d.scrollWidth, d.clientWidth, window.innerWidth, bad];",
            vec![],
        )
        .await
        .expect("layout");
    let (scroll, client) = (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0));
    assert!(
        scroll <= client,
        "{name} at {width} px scrolls sideways: {scroll} > {client}"
    );
    assert_eq!(
        v[3].as_array().map_or(1, Vec::len),
        0,
        "{name} at {width} px: buttons outside the window: {}",
        v[3]
    );
    let png = c.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    std::fs::write(dir.join(format!("{name}-{width}.png")), png).expect("screenshot file");
}

/// Whether `#id` is shown (not hidden by the page's state).
async fn shown(c: &Client, id: &str) -> bool {
    c.execute(
        "const e = document.getElementById(arguments[0]);\
         return e !== null && e.offsetParent !== null;",
        vec![json!(id)],
    )
    .await
    .expect("visibility")
    .as_bool()
    .unwrap_or(false)
}

/// The texts of the items of list `#id`, read in one go (the page
/// rebuilds its lists on every refresh).
async fn items(c: &Client, id: &str) -> Vec<String> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' li'),\
                               li => li.innerText);",
            vec![json!(id)],
        )
        .await
        .expect("list items");
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

/// Clears `#answer`, clicks `#id` and returns the answer the page shows.
async fn click_for_answer(c: &Client, id: &str) -> String {
    c.execute(
        "document.getElementById('answer').textContent = '';",
        vec![],
    )
    .await
    .expect("clear the answer");
    click(c, id).await;
    wait_text(c, "answer", Duration::from_secs(10), |t| {
        !t.is_empty() && !t.starts_with("uploading")
    })
    .await
}

/// The operator's appliance in a real browser. Without credentials the
/// Master's page and the forwarded Backup's page are refused (401). With
/// the token as Basic credentials in the address:
/// - after a real failover the Master's page says, in words, the status
///   line, the peer, the timeline with milliseconds and the phones;
/// - at 375 and 1,200 px it has no horizontal scroll and every button
///   shows;
/// - its Passive button sets the Backup Passive; the Backup's page
///   (through the Master's forward) has no Swap button, offers the
///   manual's Firmware Update and Upload Language Pack, and its Active
///   button works;
/// - the rolling upgrade runs from the Master's page: the image uploaded,
///   shown with its size and BLAKE3, started, both units upgraded in the
///   manual's order;
/// - the configuration restore runs from the new Master's page;
/// - redundancy goes off and on from it.
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
    let root = p.root.0.clone();
    for node in [&mut p.a, &mut p.b] {
        node.config.hooks = recording_hooks(node.name, &root);
        node.config.identity.firmware = "5.1.30".into();
        node.config.identity.language_pack = "en-1".into();
    }
    p.b.start().await;
    p.b.wait_role("Master").await;
    p.a.start().await;
    p.a.wait_role("Backup").await;
    p.b.wait(Duration::from_secs(10), "pbx-a UP", |s| {
        s["summary"] == "Backup device with ID pbx-a is UP (Active mode)"
    })
    .await;
    // pbx-a has finished a round with pbx-b before pbx-b dies, so that
    // the takeover has a data-loss window to report (a loaded machine can
    // take longer over the first round than over the greeting).
    p.a.wait(Duration::from_secs(20), "a round done", |s| {
        !s["counters"]["last_round"].is_null()
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
    let unit = text(&c, "unit").await;
    assert!(unit.starts_with("This unit pbx-a: Master"), "{unit}");
    assert!(unit.contains("firmware 5.1.30"), "{unit}");
    let peer = text(&c, "peer").await;
    assert_eq!(peer, "Peer pbx-b: UP, Backup, Active mode, firmware 5.1.30");
    let title = text(&c, "timeline-title").await;
    assert!(title.starts_with("Takeover (MasterDown) at "), "{title}");
    let timeline = items(&c, "timeline").await;
    assert_eq!(timeline.len(), entries, "one line per entry: {timeline:?}");
    // In words, with the milliseconds of each milestone.
    assert_eq!(timeline[0], "failure detected +0 ms", "{timeline:?}");
    for want in [
        "virtual address claimed +",
        "database ready +",
        "sip ready +",
        "phones 100 % resolved",
    ] {
        assert!(
            timeline.iter().any(|l| l.starts_with(want)),
            "no `{want}` in {timeline:?}"
        );
    }
    let sync = items(&c, "sync").await;
    assert!(
        sync.iter().any(|l| l.starts_with("Generation ")),
        "{sync:?}"
    );
    assert!(
        sync.iter()
            .any(|l| l.starts_with("Data-loss window at the last takeover: ")),
        "{sync:?}"
    );
    // The demo inventory's unsupported model needs a person: by name,
    // address and model, with the reason.
    let phones = items(&c, "phones").await;
    let want: Vec<String> = a["words"]["phones_attention"]
        .as_array()
        .expect("phones needing a person")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!want.is_empty(), "{}", a["words"]);
    assert_eq!(phones, want);
    assert!(
        phones
            .iter()
            .all(|l| l.ends_with(": model not provisioned automatically")),
        "{phones:?}"
    );
    for b in [
        "swap",
        "passive",
        "active",
        "redundancy-off",
        "logs",
        "stage",
        "restore",
    ] {
        assert!(shown(&c, b).await, "the Master's page lacks #{b}");
    }
    assert!(!shown(&c, "redundancy-on").await);
    assert!(
        !shown(&c, "firmware-update").await,
        "a Master installs through the rolling upgrade"
    );
    fits(&c, 1200, "master").await;
    fits(&c, 375, "master").await;
    c.set_window_size(1200, 900).await.expect("window size");

    // The Backup mode button: pbx-b becomes Passive, and the page says so.
    assert_eq!(click_for_answer(&c, "passive").await, "accepted");
    wait_text(&c, "line", Duration::from_secs(10), |t| {
        t == "Backup device with ID pbx-b is UP (Passive mode)"
    })
    .await;
    p.b.wait(Duration::from_secs(5), "Passive", |s| {
        s["vrrp"]["backup_mode"] == "Passive"
    })
    .await;

    // The Backup's page through the Master's Backup GUI port: no Swap
    // button; as a Passive Backup, the manual's two install actions.
    c.goto(&with_token(&gui))
        .await
        .expect("Backup's page through the forward");
    let unit = wait_text(&c, "unit", Duration::from_secs(10), |t| t.contains("pbx-b")).await;
    assert!(
        unit.starts_with("This unit pbx-b: Backup, Passive mode"),
        "{unit}"
    );
    let line = text(&c, "line").await;
    assert_eq!(line, "Device with ID pbx-b is in Backup mode");
    assert!(!shown(&c, "swap").await, "a dead Swap button on the Backup");
    assert!(shown(&c, "firmware-update").await);
    assert!(shown(&c, "language-pack").await);
    assert!(shown(&c, "logs").await);
    fits(&c, 375, "backup-passive").await;
    fits(&c, 1200, "backup-passive").await;
    // The Backup's own /mode through the forward (manual §10).
    assert_eq!(click_for_answer(&c, "active").await, "accepted");
    wait_text(&c, "unit", Duration::from_secs(10), |t| {
        t.contains("Active mode")
    })
    .await;
    p.b.wait(Duration::from_secs(5), "Active", |s| {
        s["vrrp"]["backup_mode"] == "Active"
    })
    .await;
    assert!(
        !shown(&c, "firmware-update").await,
        "an Active Backup does not install"
    );

    // The rolling upgrade from the Master's page.
    c.goto(&with_token(&p.a.status.to_string()))
        .await
        .expect("Master's page");
    wait_text(&c, "line", Duration::from_secs(10), |t| {
        t.contains("is UP (Active mode)")
    })
    .await;
    let image: Vec<u8> = (0..(1 << 20) + 77u32).map(|i| (i % 251) as u8).collect();
    let image_path = root.join("fw-5.2.0.img");
    std::fs::write(&image_path, &image).expect("image");
    c.find(Locator::Id("image-version"))
        .await
        .expect("version field")
        .send_keys("5.2.0")
        .await
        .expect("type the version");
    c.find(Locator::Id("image-file"))
        .await
        .expect("file field")
        .send_keys(&image_path.display().to_string())
        .await
        .expect("choose the image");
    assert_eq!(click_for_answer(&c, "stage").await, "accepted");
    let staged = text(&c, "staged").await;
    let hash = blake3::hash(&image).to_hex().to_string();
    assert_eq!(
        staged,
        format!("Staged fw-5.2.0.img: {} bytes, BLAKE3 {hash}", image.len())
    );
    assert_eq!(click_for_answer(&c, "start-upgrade").await, "accepted");
    let last = wait_text(&c, "last-procedure", Duration::from_secs(90), |t| {
        t.contains("rolling upgrade")
    })
    .await;
    assert!(
        last.starts_with("Last procedure: rolling upgrade completed"),
        "{last}"
    );
    let calls = std::fs::read_to_string(root.join("calls.log")).expect("calls");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "pbx-a save_config",
            "pbx-b save_config",
            "pbx-b upgrade firmware 5.2.0",
            "pbx-a upgrade firmware 5.2.0",
        ]
    );
    let unit = wait_text(&c, "unit", Duration::from_secs(10), |t| {
        t.contains("Backup")
    })
    .await;
    assert!(unit.contains("firmware 5.2.0"), "{unit}");
    assert!(!shown(&c, "swap").await);
    p.b.wait_role("Master").await;

    // The configuration restore from the new Master's page.
    c.goto(&with_token(&p.b.status.to_string()))
        .await
        .expect("new Master's page");
    wait_text(&c, "line", Duration::from_secs(15), |t| {
        t.contains("pbx-a is UP")
    })
    .await;
    let archive = root.join("config.tar");
    std::fs::write(&archive, b"configuration archive").expect("archive");
    c.find(Locator::Id("archive-file"))
        .await
        .expect("archive field")
        .send_keys(&archive.display().to_string())
        .await
        .expect("choose the archive");
    let answer = click_for_answer(&c, "restore").await;
    assert!(answer.starts_with("accepted"), "{answer}");
    let last = wait_text(&c, "last-procedure", Duration::from_secs(60), |t| {
        t.contains("configuration restore")
    })
    .await;
    assert!(last.contains("configuration restore completed"), "{last}");
    assert_eq!(
        std::fs::read(root.join("pbx-b").join("restored.tar")).expect("restored"),
        b"configuration archive"
    );

    // Redundancy off (the Backup Passive first, or both would serve) and on.
    wait_text(&c, "line", Duration::from_secs(15), |t| {
        t.contains("(Active mode)")
    })
    .await;
    assert_eq!(click_for_answer(&c, "passive").await, "accepted");
    wait_text(&c, "line", Duration::from_secs(10), |t| {
        t.contains("(Passive mode)")
    })
    .await;
    assert_eq!(click_for_answer(&c, "redundancy-off").await, "accepted");
    wait_text(&c, "line", Duration::from_secs(10), |t| {
        t == "Redundancy is disabled on device with ID pbx-b"
    })
    .await;
    assert!(shown(&c, "redundancy-on").await);
    assert!(!shown(&c, "swap").await);
    fits(&c, 375, "standalone").await;
    c.set_window_size(1200, 900).await.expect("window size");
    assert_eq!(click_for_answer(&c, "redundancy-on").await, "accepted");
    wait_text(&c, "line", Duration::from_secs(20), |t| {
        t.contains("pbx-a is UP")
    })
    .await;

    c.close().await.expect("end the WebDriver session");
    drop(driver);
    p.stop().await;
}
