//! The sync engine on its own, for trying it and for scripting.
//!
//! ```text
//! sync serve --dir DIR --listen ADDR --key-file F [--key-next F] [--exclude PATTERN]...
//! sync pull  --dir DIR --from ADDR --key-file F [--once] [--interval-s 60]
//!            [--allow-mass-delete] [--mass-delete-fraction 0.5]
//!            [--mass-delete-window-h 24] [--exclude PATTERN]...
//! ```
//!
//! `serve` serves DIR as a source until killed (it prints
//! `listening on ADDR` on stderr once bound; port 0 picks a free one).
//!
//! `pull --once` runs one round into the replica DIR (created if missing),
//! commits the generation, prints one JSON line and exits 0:
//!
//! ```text
//! {"generation":N,"files_sent":N,"files_renamed":N,"files_deleted":N,"bytes_received":N,"bytes_written":N,"seconds":F}
//! ```
//!
//! A round refused by the mass-deletion guard exits 3 (confirm with
//! `--allow-mass-delete`): one that would lose more than
//! `--mass-delete-fraction` of the replica's content bytes, counting what
//! the rounds of the last `--mass-delete-window-h` hours lost (renames,
//! moves and copies lose nothing; truncation does), or an empty source.
//! Argument errors exit 2 (clap's convention); any other failure is an
//! error on stderr and exit 1, with the replica left at its last whole
//! generation. Without `--once` it pulls every `--interval-s` seconds and
//! prints a line per round.
//!
//! On a terminal, a round that runs longer than 2 s shows a progress bar on
//! stderr: the files the round fetches (done of planned), the bytes written
//! into them of their size, and the rate, all as the round applies them;
//! its last line stays with the round's final figures. With stderr not a
//! terminal nothing is drawn, and stdout always carries only the JSON
//! lines. `SYNC_PROGRESS_AFTER_MS` sets the 2 s (in milliseconds; 0 draws
//! every round, as the tests do).
//!
//! The key file holds 64 hex digits (whitespace ignored): 32 random bytes
//! (`od -An -tx1 -N32 /dev/urandom`), in a file other users cannot read.
//! A key file that is readable by every user, or whose key is all zero or
//! a pattern, is an error naming the file, and exit 2. During a key
//! rotation `serve --key-next F` also accepts a replica that proves the
//! next key; `pull` always proves `--key-file`. The link is encrypted
//! (Noise, AES-256-GCM). The replica's
//! tree is DIR itself; the engine's state lives in `DIR/.sync-delta/` on
//! both sides and is never replicated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::io::IsTerminal;
use std::time::Instant;

use clap::{Parser, Subcommand};
use examples::config::{mass_delete_settings, read_key_file_as};
use examples::peer::{self, PeerCommand, PeerConfig, PeerEvent, RoundWatch, SyncRole};
use failover_orchestrator::pair::RoundSummary;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "sync",
    about = "Delta replication of a directory tree over an encrypted, authenticated link"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve DIR as a source until killed.
    Serve {
        /// The tree to serve.
        #[arg(long)]
        dir: PathBuf,
        /// Address to accept replicas on.
        #[arg(long)]
        listen: SocketAddr,
        /// File with the pre-shared key (64 hex digits).
        #[arg(long)]
        key_file: PathBuf,
        /// During a key rotation: the next key's file; a replica proving
        /// either key is served.
        #[arg(long)]
        key_next: Option<PathBuf>,
        /// Paths never served (glob; repeat for more).
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Pull rounds from a source into the replica DIR.
    Pull {
        /// The replica tree (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The source's address.
        #[arg(long)]
        from: SocketAddr,
        /// File with the pre-shared key (64 hex digits).
        #[arg(long)]
        key_file: PathBuf,
        /// Run one round and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between rounds without `--once`.
        #[arg(long, default_value_t = 60)]
        interval_s: u64,
        /// Let a round past the mass-deletion guard.
        #[arg(long)]
        allow_mass_delete: bool,
        /// The mass-deletion guard: the share of the replica's content
        /// bytes, in (0, 1], that a round, with the rounds of the window,
        /// may lose before it is refused.
        #[arg(long, default_value_t = 0.5, value_parser = fraction, allow_negative_numbers = true)]
        mass_delete_fraction: f64,
        /// Hours back that lost content counts for the guard (0: each
        /// round on its own).
        #[arg(long, default_value_t = 24.0, value_parser = window_h, allow_negative_numbers = true)]
        mass_delete_window_h: f64,
        /// Paths never written or deleted here (glob; repeat for more).
        #[arg(long)]
        exclude: Vec<String>,
    },
}

/// `--mass-delete-fraction`: a share in (0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    mass_delete_settings("", Some(v), None)
        .map(|(f, _)| f.get())
        .map_err(|_| "must be a share of the tree in (0, 1]".into())
}

/// `--mass-delete-window-h`: hours, 0 or more.
fn window_h(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    mass_delete_settings("", None, Some(v))
        .map(|_| v)
        .map_err(|_| "must be a number of hours, 0 or more".into())
}

/// The exit status of a round the mass-deletion guard refused.
const EXIT_REFUSED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Serve {
            dir,
            listen,
            key_file,
            key_next,
            exclude,
        } => {
            let key = match read_key_file_as(&key_file, "--key-file") {
                Ok(k) => k,
                Err(e) => return Ok(usage_error(&e)),
            };
            let key_next = match key_next
                .map(|p| read_key_file_as(&p, "--key-next"))
                .transpose()
            {
                Ok(k) => k,
                Err(e) => return Ok(usage_error(&e)),
            };
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            let mut config = PeerConfig::new(dir, key);
            config.key_next = key_next;
            config.listen = Some(listen);
            config.exclude = exclude;
            serve(config).await
        }
        Cmd::Pull {
            dir,
            from,
            key_file,
            once,
            interval_s,
            allow_mass_delete,
            mass_delete_fraction,
            mass_delete_window_h,
            exclude,
        } => {
            let key = match read_key_file_as(&key_file, "--key-file") {
                Ok(k) => k,
                Err(e) => return Ok(usage_error(&e)),
            };
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut config = PeerConfig::new(dir, key);
            config.peer = Some(from);
            config.exclude = exclude;
            config.interval = Duration::from_secs(interval_s.max(1));
            config.allow_mass_delete = allow_mass_delete;
            let (fraction, window) =
                mass_delete_settings("--", Some(mass_delete_fraction), Some(mass_delete_window_h))
                    .map_err(|e| e.to_string())?;
            config.mass_delete_fraction = fraction.get();
            config.mass_delete_window = window;
            let progress = std::io::stderr().is_terminal().then(|| {
                let watch = RoundWatch::default();
                config.progress = Some(watch.clone());
                Progress::new(watch, progress_after())
            });
            pull(config, once, progress).await
        }
    }
}

/// A key file that cannot be used: an argument error, exit 2 (clap's
/// convention), before anything is created or sent.
fn usage_error(e: &examples::config::ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

async fn serve(config: PeerConfig) -> Result<ExitCode, String> {
    let (_cmds, mut events) = peer::spawn(config, SyncRole::Source);
    while let Some(e) = events.recv().await {
        match e {
            PeerEvent::Listening(a) => eprintln!("listening on {a}"),
            PeerEvent::Connected => eprintln!("replica connected"),
            PeerEvent::Disconnected => eprintln!("replica disconnected"),
            PeerEvent::Status(st) => {
                eprintln!("replica confirmed generation {}", st.number);
            }
            PeerEvent::LinkFailed(e) | PeerEvent::Error(e) => eprintln!("warning: {e}"),
            PeerEvent::Fatal(e) => return Err(e),
            _ => {}
        }
    }
    Err("the peer link stopped".into())
}

/// How long a round runs before its progress bar shows.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);

/// [`PROGRESS_AFTER`], or `SYNC_PROGRESS_AFTER_MS`.
fn progress_after() -> Duration {
    std::env::var("SYNC_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(PROGRESS_AFTER, Duration::from_millis)
}

/// How often the bar reads the worker's figures.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// `pull`'s progress bar on a terminal's stderr: the round's own figures
/// as the sync worker last showed them ([`RoundWatch`]).
struct Progress {
    watch: RoundWatch,
    after: Duration,
    /// When this round was first seen in progress.
    since: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(watch: RoundWatch, after: Duration) -> Self {
        Progress {
            watch,
            after,
            since: None,
            bar: None,
        }
    }

    fn bar() -> ProgressBar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "pull {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    }

    fn files(p: &sync_delta::RoundProgress, done: u64) -> String {
        if p.files_total == 0 && p.bytes_total == 0 {
            "(the source lists its changes)".to_owned()
        } else {
            format!("files {done}/{}", p.files_total)
        }
    }

    /// Every tick: the bar, once the round has run `after`.
    fn tick(&mut self) {
        let Some(p) = self.watch.current() else {
            return;
        };
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.bar.is_none() && since.elapsed() >= self.after {
            self.bar = Some(Self::bar());
        }
        if let Some(bar) = &self.bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(Self::files(&p, p.files_done));
        }
    }

    /// The round committed: a round that ran `after` or longer leaves its
    /// final figures (files and bytes of what it fetched, its rate).
    fn done(&mut self, s: &RoundSummary) {
        let bar = self.bar.take();
        self.since = None;
        if bar.is_none() && s.took < self.after {
            return;
        }
        let bar = bar.unwrap_or_else(Self::bar);
        let last = self.watch.last().unwrap_or_default();
        // Every planned file ended with the commit; `fetched` counts those
        // that verified (a file skipped keeps its old content).
        let bytes = if s.fetched == last.files_total {
            last.bytes_total
        } else {
            last.bytes_done
        };
        let secs = s.took.as_secs_f64();
        let rate = if secs > 0.0 {
            format!("{}/s", HumanBytes((bytes as f64 / secs) as u64))
        } else {
            "-".to_owned()
        };
        bar.set_style(
            ProgressStyle::with_template("pull {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.finish_with_message(format!(
            "{}, {} of {}, {rate}, {secs:.1} s: generation {}",
            Self::files(&last, s.fetched),
            HumanBytes(bytes),
            HumanBytes(last.bytes_total),
            s.generation
        ));
        // The bar leaves the cursor on its line: what follows (the JSON,
        // when stdout is the same terminal) starts on the next one.
        eprintln!();
    }

    /// The round ended without a commit: the bar stays where it stopped.
    fn stopped(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
            eprintln!();
        }
        self.since = None;
    }

    /// A line on stderr, above the bar.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

/// A line on stderr, above the bar when there is one.
fn say(progress: Option<&Progress>, line: &str) {
    match progress {
        Some(p) => p.say(line),
        None => eprintln!("{line}"),
    }
}

async fn pull(
    config: PeerConfig,
    once: bool,
    mut progress: Option<Progress>,
) -> Result<ExitCode, String> {
    // The replica's first round starts as soon as the link is up, the next
    // ones every interval: the library's schedule.
    let (cmds, mut events) = peer::spawn(config, SyncRole::Replica { periodic: true });
    let mut ticks = tokio::time::interval(PROGRESS_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let e = tokio::select! {
            e = events.recv() => e,
            _ = ticks.tick(), if progress.is_some() => {
                if let Some(p) = &mut progress {
                    p.tick();
                }
                continue;
            }
        };
        let Some(e) = e else {
            break Err("the peer link stopped".into());
        };
        let p = progress.as_ref();
        match e {
            PeerEvent::Opened(report) => {
                if report.rolled_forward {
                    say(p, "finished an interrupted round that had committed");
                }
                if report.rolled_back > 0 {
                    say(
                        p,
                        &format!(
                            "rolled back an interrupted round ({} staged files removed)",
                            report.rolled_back
                        ),
                    );
                }
                if let Some((folder, n)) = report.quarantined {
                    say(
                        p,
                        &format!("moved {n} unconfirmed local changes to quarantine {folder}"),
                    );
                }
                if let Some(d) = report.repaired {
                    say(
                        p,
                        &format!(
                            "the interrupted round met local changes: {} paths moved to \
                             quarantine {}, {} missing entries to fetch again",
                            d.quarantined,
                            d.folder.as_deref().unwrap_or("-"),
                            d.missing
                        ),
                    );
                }
            }
            PeerEvent::Diverged(d) => say(
                p,
                &format!(
                    "local changes were in the round's way: {} paths moved to quarantine {}, \
                     {} missing entries fetched again",
                    d.quarantined,
                    d.folder.as_deref().unwrap_or("-"),
                    d.missing
                ),
            ),
            PeerEvent::RoundDone(s) => {
                if let Some(p) = &mut progress {
                    p.done(&s);
                }
                println!("{}", peer::summary_json(&s));
                if once {
                    break Ok(ExitCode::SUCCESS);
                }
            }
            PeerEvent::RoundRefused(r) => {
                if let Some(p) = &mut progress {
                    p.stopped();
                }
                eprintln!(
                    "error: round refused by the mass-deletion guard: {r}; nothing was changed \
                     (rerun with --allow-mass-delete to confirm)"
                );
                if once {
                    break Ok(ExitCode::from(EXIT_REFUSED));
                }
            }
            PeerEvent::RoundFailed(e) | PeerEvent::LinkFailed(e) | PeerEvent::Error(e) => {
                if let Some(p) = &mut progress {
                    p.stopped();
                }
                if once {
                    break Err(e);
                }
                eprintln!("warning: {e}");
            }
            PeerEvent::Fatal(e) => break Err(e),
            _ => {}
        }
    };
    // Stop the link cleanly (a round in progress is rolled back).
    let _ = cmds.send(PeerCommand::Shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while events.recv().await.is_some() {}
    })
    .await;
    result
}
