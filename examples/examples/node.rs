//! `node --config node.toml`: one redundant-pair node, until SIGINT or
//! SIGTERM, then a graceful stop (services stopped in reverse order, the
//! address released, priority 0 sent).
//!
//! ```text
//! cargo run --release --example node -- --config examples/node.example.toml
//! ```
//!
//! Every configuration key is documented in `examples/node.example.toml`.
//! A bad configuration is an error naming the key and the reason, and exit
//! status 2, before anything is touched. Logs go to stderr (`RUST_LOG`
//! sets the level; default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use examples::config::NodeConfig;
use examples::hooks::ShellHooks;
use examples::node::{Options, Stop, run};
use tokio::signal::unix::{SignalKind, signal};

/// One node of a redundant PBX pair.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node's configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match NodeConfig::load(&args.config) {
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
        run(
            config,
            options,
            std::sync::Arc::new(ShellHooks::default()),
            stop,
            None,
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A configuration the node finds unusable when it reads the files
        // the configuration names (the key files): also exit 2.
        Err(e @ examples::node::NodeError::Config(_)) => {
            eprintln!("node: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("node: {e}");
            ExitCode::FAILURE
        }
    }
}
