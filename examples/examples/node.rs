//! `node --config node.toml`: one redundant-pair node, until SIGINT or
//! SIGTERM, then a graceful stop (services stopped in reverse order, the
//! address released, priority 0 sent). SIGHUP reads the configuration
//! again for the peer link's keys (`[sync] key_file`, `key_file_next`) and
//! the status API's token (`[status] token_file`): a rotation without a
//! restart. Other settings apply at the next start.
//!
//! ```text
//! cargo run --release --example node -- --config examples/node.example.toml
//! ```
//!
//! Every configuration key is documented in `examples/node.example.toml`.
//! A bad configuration (the files it names included: the key, the phone
//! inventory, the API token) is an error naming the key and the reason,
//! and exit status 2, before a file is created or a packet sent. Logs go to stderr (`RUST_LOG`
//! sets the level; default `info`).
//!
//! `node import-keepalived FILE [--instance NAME]` converts one
//! `vrrp_instance` of a `keepalived.conf` to this node's configuration:
//! the TOML on stdout (exit 0), and each item it could not carry on stderr
//! as `line N: keyword: hint`. A file with no `vrrp_instance`, or with
//! several and no `--instance`, exits 2 (the instances are listed on
//! stderr); an unreadable file, an unknown `--instance` or a value the node
//! cannot take exits 1. `include` is not followed (a note says so). What is
//! carried is listed in `examples::keepalived`.
//!
//! ```text
//! cargo run --example node -- import-keepalived /etc/keepalived/keepalived.conf --instance VI_1 > node.toml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use examples::config::NodeConfig;
use examples::hooks::ShellHooks;
use examples::keepalived::{self, KeepalivedError};
use examples::node::{ApiRequest, NodeError, NodeHandle, Options, Stop, run};
use tokio::signal::unix::{SignalKind, signal};

/// One node of a redundant PBX pair.
#[derive(Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    /// The node's configuration file (TOML).
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the node configuration (TOML) for one vrrp_instance of a
    /// keepalived.conf; what cannot be carried is listed on stderr.
    ImportKeepalived {
        /// The keepalived configuration file.
        file: PathBuf,
        /// The vrrp_instance to convert (required when the file has
        /// several).
        #[arg(long)]
        instance: Option<String>,
    },
}

/// `node import-keepalived`: TOML on stdout and exit 0; no instance, or
/// several and none named, exit 2; anything else that stops the
/// conversion, exit 1.
fn import_keepalived(file: &std::path::Path, instance: Option<&str>) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("node: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match keepalived::convert(&text, instance) {
        Ok(c) => {
            print!("{}", c.toml);
            for note in &c.notes {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(KeepalivedError::NoInstance { includes }) => {
            eprintln!("node: {}: no vrrp_instance to convert", file.display());
            for note in &includes {
                eprintln!("{note}");
            }
            ExitCode::from(2)
        }
        Err(KeepalivedError::SeveralInstances { instances }) => {
            eprintln!(
                "node: {}: {} vrrp_instance blocks and a node runs one; choose one with \
                 --instance NAME:",
                file.display(),
                instances.len()
            );
            for i in &instances {
                eprintln!("  {i}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("node: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// At each SIGHUP, the configuration read again, its key and token files
/// checked as at the start; the peer link's keys and the status API's
/// token go to the running node. A configuration that does not load
/// changes nothing (the keys and token in use stay), and says why.
async fn reload_keys_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    path: PathBuf,
    handle: tokio::sync::oneshot::Receiver<NodeHandle>,
) {
    let Ok(handle) = handle.await else {
        return;
    };
    while hup.recv().await.is_some() {
        let reload = NodeConfig::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let files = c.files.unwrap_or_default();
                let keys = files.link_keys().map_err(|e| e.to_string())?;
                Ok(ApiRequest::Reload {
                    keys,
                    token: files.token,
                })
            });
        match reload {
            Ok(request) => {
                if handle.api.send(request).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: the keys and token in use stay"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config_path = match (args.cmd, args.config) {
        (Some(Cmd::ImportKeepalived { file, instance }), _) => {
            return import_keepalived(&file, instance.as_deref());
        }
        (None, Some(path)) => path,
        // clap requires --config without a subcommand.
        (None, None) => return ExitCode::from(2),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Standard error, and the recent log that GET /logs downloads
        // (plain text: no colour codes in the file).
        .with_writer(examples::procedures::LogTee)
        .with_ansi(false)
        .init();
    let config = match NodeConfig::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options::detect(&config);
    let result = runtime.block_on(async move {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("node: cannot install signal handlers");
                return Ok(());
            }
        };
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            Stop::Graceful
        };
        let (ready, handle) = tokio::sync::oneshot::channel();
        if let Ok(hup) = signal(SignalKind::hangup()) {
            tokio::spawn(reload_keys_on_hangup(hup, config_path.clone(), handle));
        }
        run(
            config,
            options,
            std::sync::Arc::new(ShellHooks::default()),
            stop,
            Some(ready),
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A configuration error the node found itself (every file it names
        // was read above, so this is rare) is still one: exit 2.
        Err(e @ (NodeError::Config(_) | NodeError::Vrrp(_) | NodeError::Orchestrator(_))) => {
            eprintln!("node: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("node: {e}");
            ExitCode::FAILURE
        }
    }
}
