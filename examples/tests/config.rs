//! The `node` configuration contract: the documented example parses, and
//! every bad value is an error that names its key, the files the
//! configuration names included; phone templates quote the values they
//! are given.

mod e2e;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use e2e::TempDir;
use examples::config::{ChecksumForm, ConfigError, NodeConfig, Transport, parse_key};
use examples::hooks::{Hooks, ShellHooks};

const MINIMAL: &str = r#"
id = "pbx-a"
state_dir = "/tmp/x"
[vrrp]
transport = "udp"
vrid = 51
virtual_ips = ["10.99.0.100/24"]
udp_listen = "127.0.0.1:5112"
udp_peers = ["127.0.0.2:5112"]
"#;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(text, Path::new("/etc/pbx"))
}

#[test]
fn the_documented_example_parses_with_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("node.example.toml");
    // Parsed, not loaded: the files it names are the operator's.
    let text = std::fs::read_to_string(&path).unwrap();
    let c = NodeConfig::parse(&text, path.parent().unwrap()).unwrap();
    assert_eq!(c.id, "pbx-a");
    assert_eq!(c.vrrp.transport, Transport::Raw);
    assert_eq!(c.vrrp.interface.as_deref(), Some("eth1"));
    assert_eq!(c.vrrp.vrid.get(), 51);
    assert_eq!(c.vrrp.priority.get(), 150);
    assert_eq!(c.vrrp.interval.as_centis(), 100);
    assert!(!c.vrrp.preempt);
    assert!(c.vrrp.accept);
    assert_eq!(c.vrrp.v3_ipv4_checksum, ChecksumForm::PseudoHeader);
    assert_eq!(c.vrrp.virtual_ips[0].prefix, 24);
    let sync = c.sync.as_ref().unwrap();
    assert_eq!(sync.interval.as_secs(), 60);
    assert_eq!(sync.key_file, path.parent().unwrap().join("sync.key"));
    assert_eq!(sync.exclude, ["licenses/**"]);
    assert_eq!(c.state_dir, Path::new("/var/lib/pbx-a.state"));
    let status = c.status.as_ref().unwrap();
    assert_eq!(status.backup_gui_port, Some(8765));
    assert_eq!(status.token_file, None);
    assert!(c.files.is_none());
    assert_eq!(c.identity.licenses, ["pbx-32"]);
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.start_order(), [0, 1]);

    let phones =
        examples::phones::load(&path.parent().unwrap().join("phones.example.toml")).unwrap();
    assert_eq!(phones.len(), 2);
    assert_eq!(phones[0].fill("ping {address}"), "ping 10.99.0.31");
}

#[test]
fn defaults_follow_the_appliance_profile() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.vrrp.version, vrrp_proto::Version::V3);
    assert_eq!(c.vrrp.priority.get(), 100);
    assert_eq!(c.vrrp.interval.as_centis(), 100);
    assert!(!c.vrrp.preempt, "no fail-back");
    assert!(c.vrrp.accept, "the PBX answers on the address");
    assert!(c.redundancy);
    assert_eq!(c.vrrp.virtual_ips[0].prefix, 24);
    let bare = parse(&MINIMAL.replace("/24", "")).unwrap();
    assert_eq!(bare.vrrp.virtual_ips[0].prefix, 32);
}

#[track_caller]
fn rejects(edit: &str, key: &str) {
    let text = format!("{MINIMAL}\n{edit}");
    let err = parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(key), "error `{msg}` does not name `{key}`");
}

#[track_caller]
fn rejects_replacing(from: &str, to: &str, key: &str) {
    assert!(MINIMAL.contains(from), "test edit `{from}`");
    let err = parse(&MINIMAL.replace(from, to)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(key), "error `{msg}` does not name `{key}`");
}

#[test]
fn bad_values_name_their_key() {
    rejects_replacing("vrid = 51", "vrid = 0", "vrrp.vrid");
    rejects_replacing("vrid = 51", "vrid = 51\npriority = 0", "vrrp.priority");
    rejects_replacing("vrid = 51", "vrid = 51\npriority = 256", "vrrp.priority");
    rejects_replacing("vrid = 51", "vrid = 51\nversion = 4", "vrrp.version");
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nadvert_interval_ms = 15",
        "vrrp.advert_interval_ms",
    );
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nadvert_interval_ms = 50000",
        "vrrp.advert_interval_ms",
    );
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nversion = 2\nadvert_interval_ms = 1500",
        "vrrp.advert_interval_ms",
    );
    rejects_replacing(
        "\"10.99.0.100/24\"",
        "\"10.99.0.100/33\"",
        "vrrp.virtual_ips[0]",
    );
    rejects_replacing("\"10.99.0.100/24\"", "\"pbx\"", "vrrp.virtual_ips[0]");
    rejects_replacing(
        "\"10.99.0.100/24\"",
        "\"10.99.0.100\", \"fd99::1\"",
        "vrrp.virtual_ips",
    );
    rejects_replacing(
        "virtual_ips = [\"10.99.0.100/24\"]",
        "virtual_ips = []",
        "vrrp.virtual_ips",
    );
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nversion = 2\nauth_pass = \"longerthan8\"",
        "vrrp.auth_pass",
    );
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nauth_pass = \"pw\"",
        "vrrp.auth_pass",
    );
    rejects_replacing(
        "transport = \"udp\"",
        "transport = \"raw\"",
        "vrrp.interface",
    );
    rejects_replacing("transport = \"udp\"", "transport = \"tcp\"", "transport");
    rejects_replacing(
        "udp_peers = [\"127.0.0.2:5112\"]",
        "udp_peers = []",
        "vrrp.udp_peers",
    );
    rejects_replacing(
        "vrid = 51",
        "vrid = 51\nunicast_peers = [\"fd99::2\"]",
        "vrrp.unicast_peers[0]",
    );
    rejects_replacing("id = \"pbx-a\"", "id = \"\"", "id");
    rejects_replacing("state_dir = \"/tmp/x\"\n", "", "state_dir");
    rejects_replacing("vrid = 51", "vrid = 51\nprioritty = 5", "prioritty");
    rejects(
        "[[service]]\nname = \"a\"\nstart = \"x\"\nafter = [\"b\"]\n[[service]]\nname = \"b\"\nstart = \"y\"\nafter = [\"a\"]",
        "service.after",
    );
    rejects(
        "[[service]]\nname = \"a\"\nstart = \"x\"\nafter = [\"nope\"]",
        "service[0].after",
    );
    rejects(
        "[[service]]\nname = \"a\"\nstart = \"x\"\n[[service]]\nname = \"a\"\nstart = \"y\"",
        "service[1].name",
    );
    rejects(
        "[status]\nlisten = \"127.0.0.1:8080\"\nbackup_gui_port = 0",
        "status.backup_gui_port",
    );
    rejects(
        "[sync]\nlisten = \"127.0.0.1:7001\"\npeer = \"127.0.0.1:7001\"\ndir = \"d\"\nkey_file = \"k\"",
        "sync.peer",
    );
    rejects(
        "[sync]\nlisten = \"127.0.0.1:7001\"\npeer = \"127.0.0.2:7001\"\ndir = \"d\"\nkey_file = \"k\"\ninterval_s = 0",
        "sync.interval_s",
    );
    for (edit, key) in [
        ("mass_delete_fraction = 0", "sync.mass_delete_fraction"),
        ("mass_delete_fraction = 1.5", "sync.mass_delete_fraction"),
        ("mass_delete_fraction = -0.5", "sync.mass_delete_fraction"),
        ("mass_delete_fraction = nan", "sync.mass_delete_fraction"),
        ("mass_delete_window_h = -1", "sync.mass_delete_window_h"),
        ("mass_delete_window_h = inf", "sync.mass_delete_window_h"),
    ] {
        rejects(&format!("{STATUS_SYNC}{edit}"), key);
    }
}

#[test]
fn the_mass_deletion_guard_has_defaults_and_takes_its_keys() {
    let c = parse(&format!("{MINIMAL}\n{STATUS_SYNC}")).unwrap();
    let s = c.sync.unwrap();
    assert_eq!(s.mass_delete_fraction.get(), 0.5);
    assert_eq!(s.mass_delete_window, Duration::from_secs(24 * 3600));
    let c = parse(&format!(
        "{MINIMAL}\n{STATUS_SYNC}mass_delete_fraction = 1\nmass_delete_window_h = 0.5"
    ))
    .unwrap();
    let s = c.sync.unwrap();
    assert_eq!(s.mass_delete_fraction.get(), 1.0);
    assert_eq!(s.mass_delete_window, Duration::from_secs(1800));
    let c = parse(&format!("{MINIMAL}\n{STATUS_SYNC}mass_delete_window_h = 0")).unwrap();
    assert_eq!(c.sync.unwrap().mass_delete_window, Duration::ZERO);
}

#[test]
fn change_driven_sync_has_defaults_and_takes_its_keys() {
    let c = parse(&format!("{MINIMAL}\n{STATUS_SYNC}")).unwrap();
    let s = c.sync.unwrap();
    assert!(s.watch, "the tree is watched by default");
    assert_eq!(s.batch, Duration::from_millis(100));
    assert_eq!(s.interval, Duration::from_secs(60), "the full-scan period");
    let c = parse(&format!(
        "{MINIMAL}\n{STATUS_SYNC}watch = false\nbatch_ms = 250\ninterval_s = 300"
    ))
    .unwrap();
    let s = c.sync.unwrap();
    assert!(!s.watch);
    assert_eq!(s.batch, Duration::from_millis(250));
    assert_eq!(s.interval, Duration::from_secs(300));
    let err = parse(&format!("{MINIMAL}\n{STATUS_SYNC}batch_ms = 60001"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sync.batch_ms"), "{err}");
}

#[test]
fn services_start_in_dependency_order() {
    let c = parse(&format!(
        "{MINIMAL}\n[[service]]\nname = \"vm\"\nstart = \"x\"\nafter = [\"db\", \"sip\"]\n\
         [[service]]\nname = \"sip\"\nstart = \"x\"\nafter = [\"db\"]\n[[service]]\nname = \"db\"\nstart = \"x\""
    ))
    .unwrap();
    let order: Vec<&str> = c
        .start_order()
        .iter()
        .map(|i| c.services[*i].name.as_str())
        .collect();
    assert_eq!(order, ["db", "sip", "vm"]);
}

#[test]
fn key_files_hold_64_hex_digits() {
    let k =
        parse_key("00112233445566778899aabbccddeeff\n00112233445566778899AABBCCDDEEFF\n").unwrap();
    assert_eq!(k[0], 0x00);
    assert_eq!(k[15], 0xff);
    assert_eq!(k[31], 0xff);
    assert!(parse_key("0011").unwrap_err().contains("64 hex digits"));
    assert!(parse_key(&"zz".repeat(32)).unwrap_err().contains("hex"));
}

const STATUS_SYNC: &str = "[sync]\nlisten = \"10.99.0.1:7001\"\npeer = \"10.99.0.2:7001\"\n\
                           dir = \"d\"\nkey_file = \"k\"\n";

#[test]
fn a_status_api_beyond_loopback_needs_a_token() {
    rejects("[status]\nlisten = \"10.99.0.1:8080\"", "status.token_file");
    rejects("[status]\nlisten = \"0.0.0.0:8080\"", "status.token_file");
    rejects("[status]\nlisten = \"[fd99::1]:8080\"", "status.token_file");
    let c = parse(&format!(
        "{MINIMAL}\n[status]\nlisten = \"10.99.0.1:8080\"\ntoken_file = \"api.token\""
    ))
    .unwrap();
    let s = c.status.unwrap();
    assert_eq!(
        s.token_file.as_deref(),
        Some(Path::new("/etc/pbx/api.token"))
    );
    // Loopback needs none.
    for listen in ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"] {
        let c = parse(&format!("{MINIMAL}\n[status]\nlisten = \"{listen}\"")).unwrap();
        assert_eq!(c.status.unwrap().token_file, None, "{listen}");
    }
}

#[test]
fn allowed_hosts_default_to_the_listen_and_forward_addresses() {
    let c = parse(&format!(
        "{MINIMAL}\n{STATUS_SYNC}[status]\nlisten = \"10.99.0.1:8080\"\nbackup_gui_port = 8765\n\
         token_file = \"t\""
    ))
    .unwrap();
    assert_eq!(
        c.status.unwrap().allowed_hosts,
        ["10.99.0.1:8080", "10.99.0.1:8765", "10.99.0.2:8765"]
    );
    let c = parse(&format!(
        "{MINIMAL}\n[status]\nlisten = \"127.0.0.1:8080\"\nbackup_gui_port = 8765"
    ))
    .unwrap();
    assert_eq!(
        c.status.unwrap().allowed_hosts,
        [
            "127.0.0.1:8080",
            "127.0.0.1:8765",
            "localhost:8080",
            "localhost:8765"
        ]
    );
    // Given, they replace the default, in the compared form.
    let c = parse(&format!(
        "{MINIMAL}\n[status]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"t\"\n\
         allowed_hosts = [\"PBX-A.example\", \"10.99.0.1:8080\", \"[fd99::1]:8080\"]"
    ))
    .unwrap();
    assert_eq!(
        c.status.unwrap().allowed_hosts,
        ["pbx-a.example:80", "10.99.0.1:8080", "[fd99::1]:8080"]
    );
    rejects(
        "[status]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"t\"",
        "status.allowed_hosts",
    );
    rejects(
        "[status]\nlisten = \"127.0.0.1:8080\"\nallowed_hosts = []",
        "status.allowed_hosts",
    );
    rejects(
        "[status]\nlisten = \"127.0.0.1:8080\"\nallowed_hosts = [\"ok:1\", \"http://x/\"]",
        "status.allowed_hosts[1]",
    );
}

/// A configuration in `dir` naming a key, a phone inventory and a token
/// file there.
fn config_with_files(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    let text = format!(
        "{}\n{}[status]\nlisten = \"10.99.0.1:8080\"\ntoken_file = \"api.token\"\n",
        MINIMAL.replace("state_dir", "phones = \"phones.toml\"\nstate_dir"),
        STATUS_SYNC.replace("\"k\"", "\"sync.key\""),
    );
    std::fs::write(&path, text).unwrap();
    write_key(dir, KEY_HEX);
    std::fs::write(
        dir.join("phones.toml"),
        "[[phone]]\nname = \"r\"\naddress = \"10.99.0.31\"\nmethod = \"follow\"\n",
    )
    .unwrap();
    write_token(dir, "0123456789abcdef0123\n", 0o600);
    path
}

/// A key as a key file holds it: random-looking bytes (the link refuses
/// patterns), in a file only its owner reads.
const KEY_HEX: &str = "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e";

fn write_key(dir: &TempDir, text: &str) {
    let path = dir.join("sync.key");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn write_token(dir: &TempDir, text: &str, mode: u32) {
    let path = dir.join("api.token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[track_caller]
fn load_names(path: &Path, key: &str) {
    let msg = NodeConfig::load(path).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("`{key}`")),
        "error `{msg}` does not name `{key}`"
    );
}

#[test]
fn a_next_key_file_is_optional_and_taken_from_the_config_folder() {
    let sync = "[sync]\nlisten = \"127.0.0.1:7001\"\npeer = \"127.0.0.2:7001\"\ndir = \"d\"\nkey_file = \"k\"";
    let c = parse(&format!("{MINIMAL}\n{sync}")).unwrap();
    assert_eq!(c.sync.unwrap().key_file_next, None);
    let c = parse(&format!("{MINIMAL}\n{sync}\nkey_file_next = \"k2\"")).unwrap();
    assert_eq!(
        c.sync.unwrap().key_file_next.as_deref(),
        Some(Path::new("/etc/pbx/k2"))
    );
}

#[test]
fn the_files_it_names_are_read_with_the_configuration() {
    let dir = TempDir::new("config-files");
    let path = config_with_files(&dir);
    let c = NodeConfig::load(&path).unwrap();
    let files = c.files.as_ref().expect("files read");
    assert_eq!(files.key, Some((parse_key(KEY_HEX).unwrap(), None)));
    assert_eq!(files.phones.len(), 1);
    assert!(
        files
            .token
            .as_ref()
            .is_some_and(|t| t.matches(b"0123456789abcdef0123"))
    );
    // The token never shows in a debug print.
    assert!(!format!("{c:?}").contains("0123456789abcdef0123"));

    std::fs::remove_file(dir.join("sync.key")).unwrap();
    load_names(&path, "sync.key_file");
    std::fs::write(dir.join("sync.key"), "not a key").unwrap();
    load_names(&path, "sync.key_file");
    write_key(&dir, KEY_HEX);

    std::fs::remove_file(dir.join("phones.toml")).unwrap();
    load_names(&path, "phones");
    std::fs::write(dir.join("phones.toml"), "[[phone]]\nname = ").unwrap();
    load_names(&path, "phones");
    std::fs::write(
        dir.join("phones.toml"),
        "[[phone]]\nname = \"r\"\naddress = \"a\"\nmethod = \"fly\"\n",
    )
    .unwrap();
    load_names(&path, "phone[0].method");
    std::fs::write(
        dir.join("phones.toml"),
        "[[phone]]\nname = \"r\"\naddress = \"a\"\nmethod = \"follow\"\n",
    )
    .unwrap();

    write_token(&dir, "0123456789abcdef0123\n", 0o644);
    load_names(&path, "status.token_file");
    write_token(&dir, "0123456789abcdef0123\n", 0o602);
    load_names(&path, "status.token_file");
    write_token(&dir, "0123456789abcde\n", 0o600);
    load_names(&path, "status.token_file");
    std::fs::remove_file(dir.join("api.token")).unwrap();
    load_names(&path, "status.token_file");
    // Group-readable is the operator's choice (a group of admins).
    write_token(&dir, "0123456789abcdef\n", 0o640);
    assert!(NodeConfig::load(&path).is_ok());
}

fn phone(name: &str, model: &str, address: &str) -> examples::phones::Phone {
    let text = format!(
        "[[phone]]\nname = {name:?}\nmodel = {model:?}\naddress = {address:?}\nmethod = \"follow\"\n"
    );
    examples::phones::parse(&text).unwrap().remove(0)
}

/// Phone template values are quoted, in one pass: whatever a value holds
/// reaches the command as one word, and the shell evaluates none of it.
#[tokio::test]
async fn phone_template_values_are_one_word_never_evaluated() {
    let dir = TempDir::new("phone-quoting");
    let out = dir.join("out");
    let pwned = dir.join("pwned");
    let p = pwned.display();
    let hostile = [
        format!("$(touch {p})"),
        format!("a; touch {p}"),
        format!("it's \"quoted\" `touch {p}`"),
        format!("' ; touch {p} ; '"),
        "{model}".to_owned(),
    ];
    for name in &hostile {
        let mut ph = phone(name, &format!("$(touch {p})"), "10.99.0.31");
        ph.nudge = Some(format!(
            "printf '%s|%s|%s' {{name}} {{model}} {{address}} > {}",
            out.display()
        ));
        let _ = std::fs::remove_file(&out);
        let hooks = ShellHooks::default();
        let done = tokio::time::timeout(Duration::from_secs(10), hooks.phone_action(&ph, false))
            .await
            .expect("the command ended");
        assert!(done, "{name}: the command failed");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{name}|$(touch {p})|10.99.0.31"),
            "{name}: the values did not arrive as they are"
        );
        assert!(!pwned.exists(), "{name}: the shell evaluated a value");
    }
    // Plain values stay as they are.
    assert_eq!(
        phone("r", "m", "10.99.0.31").fill("ping {address}"),
        "ping 10.99.0.31"
    );
}

#[test]
fn phone_templates_leave_placeholders_bare() {
    for (template, key) in [
        ("notify '{name}'", "phone[0].nudge"),
        ("notify \"{address}\"", "phone[0].nudge"),
    ] {
        let text = format!(
            "[[phone]]\nname = \"r\"\naddress = \"a\"\nmethod = \"nudge\"\nnudge = {template:?}\n"
        );
        let msg = examples::phones::parse(&text).unwrap_err().to_string();
        assert!(msg.contains(key), "{msg}");
    }
    let text = "[[phone]]\nname = \"r\\u0000\"\naddress = \"a\"\nmethod = \"follow\"\n";
    let msg = examples::phones::parse(text).unwrap_err().to_string();
    assert!(msg.contains("phone[0].name"), "{msg}");
}

#[test]
fn key_files_are_checked_for_weak_keys_and_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("key-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = "5be0c3a91f7d2e846a0b9c5d3f1e7a2684c9d0b5e3f6a7182c4b9e0d1f3a5c7e";
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let key = examples::config::read_key_file(&write("good", good, 0o600)).unwrap();
    assert_eq!(key, parse_key(good).unwrap());
    // Group-readable is the owner's choice; every user is not.
    assert!(examples::config::read_key_file(&write("group", good, 0o640)).is_ok());
    for (name, text, mode, why) in [
        ("open", good, 0o644, "readable by every user"),
        ("zero", &"00".repeat(32)[..], 0o600, "all zero"),
        ("same", &"7e".repeat(32)[..], 0o600, "distinct byte values"),
    ] {
        let p = write(name, text, mode);
        let e = examples::config::read_key_file_as(&p, "sync.key_file_next")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync.key_file_next") && e.contains(why), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
