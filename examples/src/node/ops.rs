//! The operator's procedures on the node's side: the API's upgrade and
//! restore requests, the commands behind them (`[hooks]`), and the image's
//! hand-over to the peer on the link's transfer channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failover_orchestrator::{
    self as orch, CommandId, CommandOutcome, OperatorRequest, ProtocolVersion,
};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{ApiReply, EngineTx, Inbox, Refused, Snapshot};
use crate::config::ProcedureHooks;
use crate::procedures::{
    CHUNK, ImageKind, ImageMeta, Receiver, StagedFile, Staging, TransferFrame, read_versions,
    run_hook,
};

/// The reply to an upgrade request: the rolling upgrade's procedure id on
/// the Master, `None` when a Passive Backup installs on its own.
pub type UpgradeReply = oneshot::Sender<Result<Option<u64>, Refused>>;

/// What the status shows of the procedures' files and hooks.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Operations {
    /// The image the next install uses: staged here, or handed over by the
    /// Master.
    pub image: Option<ImageMeta>,
    /// The image's hand-over to the peer, while it runs and how it ended.
    pub transfer: Option<TransferView>,
    /// A Passive Backup's own install: what it does, or how it ended.
    pub local_upgrade: Option<String>,
    /// The configuration archive staged last (for `POST /restore`).
    pub archive: Option<StagedFile>,
    /// Images from the peer stored / refused since start.
    pub images_received: u64,
    /// Images from the peer refused (size, hash, order, space).
    pub images_refused: u64,
}

/// The hand-over of an image to the peer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransferView {
    /// The image's file name.
    pub name: String,
    /// Bytes handed to the link so far.
    pub sent: u64,
    /// Its size.
    pub total: u64,
    /// `sending`, `done` or `failed: …`.
    pub state: String,
}

/// How long the install hook may run.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long saving, restoring and the version hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Bytes buffered on the link before the image's sender waits.
const SEND_WINDOW: usize = 8 << 20;

/// Where the peer's answer to the image in flight goes.
type AnswerSlot = Arc<Mutex<Option<oneshot::Sender<(bool, String)>>>>;

/// The procedures' side of the node's main task.
pub(super) struct Ops {
    pub(super) staging: Staging,
    hooks: ProcedureHooks,
    engine: EngineTx,
    view: Arc<Mutex<Operations>>,
    identity: Arc<Mutex<orch::Identity>>,
    /// Bytes the link has not written yet (the sender's flow control).
    buffered: Arc<AtomicUsize>,
    /// Transfer payloads handed to the engine thread, not yet to the pair.
    queued: Arc<AtomicUsize>,
    /// The sender waiting for the peer's answer.
    awaiting: AnswerSlot,
    to_receiver: std::sync::mpsc::Sender<Vec<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(code: &str, error: impl Into<String>) -> Refused {
    Refused {
        error: error.into(),
        code: code.into(),
    }
}

impl Ops {
    /// The staging folder, the receiver's thread and the shared views.
    pub(super) fn new(
        staging: Staging,
        hooks: ProcedureHooks,
        engine: EngineTx,
        view: Arc<Mutex<Operations>>,
        identity: orch::Identity,
        buffered: Arc<AtomicUsize>,
        queued: Arc<AtomicUsize>,
    ) -> std::io::Result<Ops> {
        lock(&view).image = staging.upgrade_image();
        let (to_receiver, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut receiver = Receiver::new(staging.clone());
        let (tx, v, q) = (engine.clone(), view.clone(), queued.clone());
        std::thread::Builder::new()
            .name("images".into())
            .spawn(move || {
                while let Ok(payload) = rx.recv() {
                    if let Some(answer) = receiver.handle(&payload) {
                        to_link(&tx, &q, answer.encode());
                        let mut v = lock(&v);
                        v.images_received = receiver.stored;
                        v.images_refused = receiver.refused;
                        if matches!(answer, TransferFrame::Answer { ok: true, .. }) {
                            v.image = receiver_image(&receiver);
                        }
                    }
                }
            })?;
        Ok(Ops {
            staging,
            hooks,
            engine,
            view,
            identity: Arc::new(Mutex::new(identity)),
            buffered,
            queued,
            awaiting: Arc::new(Mutex::new(None)),
            to_receiver,
        })
    }

    /// A payload from the peer's driver on the transfer channel.
    pub(super) fn transfer_in(&self, payload: Vec<u8>) {
        if payload.first() == Some(&3) {
            // An answer to the image this node sent.
            let answer = match TransferFrame::decode(&payload) {
                Ok(TransferFrame::Answer { ok, error }) => (ok, error),
                Ok(_) | Err(_) => (false, "an answer that does not decode".into()),
            };
            match lock(&self.awaiting).take() {
                Some(tx) => {
                    let _ = tx.send(answer);
                }
                None => warn!("an image answer nobody waits for"),
            }
        } else {
            let _ = self.to_receiver.send(payload);
        }
    }

    /// `POST /upgrade`: on the Master the rolling upgrade of both units, on
    /// a Passive Backup this unit alone (the manual's Backup page).
    pub(super) fn upgrade(&self, image: ImageMeta, snapshot: &Snapshot, reply: UpgradeReply) {
        let Some(cmd) = self.hooks.upgrade.clone() else {
            let _ = reply.send(Err(refused(
                "not_configured",
                "no [hooks] upgrade command on this unit",
            )));
            return;
        };
        if lock(&self.view)
            .local_upgrade
            .as_deref()
            .is_some_and(|s| !s.starts_with("done") && !s.starts_with("failed"))
        {
            let _ = reply.send(Err(refused("busy", "an install is running on this unit")));
            return;
        }
        let ours = lock(&self.identity).clone();
        match (snapshot.role.as_str(), snapshot.vrrp.backup_mode.as_str()) {
            ("Master", _) => {
                if let Err(e) = self.staging.set_upgrade_image(&image) {
                    let _ = reply.send(Err(refused("io", format!("staging folder: {e}"))));
                    return;
                }
                lock(&self.view).image = Some(image.clone());
                let (firmware, language_pack) = match image.kind {
                    ImageKind::Firmware => (image.version.clone(), None),
                    // The firmware stays: its step restarts the unit only.
                    ImageKind::LanguagePack => (ours.firmware.clone(), Some(image.version.clone())),
                };
                let (tx, rx) = oneshot::channel();
                self.engine.send(Inbox::Operator(
                    OperatorRequest::RollingUpgrade {
                        firmware,
                        language_pack,
                        protocol: ProtocolVersion::CURRENT,
                    },
                    tx,
                ));
                tokio::spawn(async move {
                    let r = match rx.await {
                        Ok(r) => r.map(Some),
                        Err(_) => Err(refused("stopping", "the node is stopping")),
                    };
                    let _ = reply.send(r);
                });
            }
            ("Backup", "Passive") => {
                if let Err(e) = self.staging.set_upgrade_image(&image) {
                    let _ = reply.send(Err(refused("io", format!("staging folder: {e}"))));
                    return;
                }
                lock(&self.view).image = Some(image.clone());
                lock(&self.view).local_upgrade = Some("saving the configuration".into());
                let _ = reply.send(Ok(None));
                let (hooks, staging, view, identity, engine) = (
                    self.hooks.clone(),
                    self.staging.clone(),
                    self.view.clone(),
                    self.identity.clone(),
                    self.engine.clone(),
                );
                tokio::spawn(async move {
                    let r = async {
                        if let Some(save) = &hooks.save_config {
                            run_hook("save_config", save, None, &[], HOOK_TIMEOUT).await?;
                        }
                        lock(&view).local_upgrade = Some(format!(
                            "installing {} {}",
                            image.kind.words(),
                            image.version
                        ));
                        install_image(&cmd, &staging, &image).await?;
                        read_identity(&hooks, &identity).await
                    }
                    .await;
                    match r {
                        Ok(id) => {
                            info!(firmware = %id.firmware, language_pack = %id.language_pack,
                                  "installed; restarting");
                            lock(&view).local_upgrade = Some(format!(
                                "done: {} {} installed, restarted",
                                image.kind.words(),
                                image.version
                            ));
                            engine.send(Inbox::Installed {
                                identity: id,
                                restart: true,
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "install failed");
                            lock(&view).local_upgrade = Some(format!("failed: {e}"));
                        }
                    }
                });
            }
            ("Backup", _) => {
                let _ = reply.send(Err(refused(
                    "not_passive",
                    "an Active Backup does not install: set it Passive first (the Master's \
                     POST /upgrade does both units in order)",
                )));
            }
            (role, _) => {
                let _ = reply.send(Err(refused(
                    "wrong_role",
                    format!("cannot upgrade while {role}"),
                )));
            }
        }
    }

    /// `POST /restore` with a staged archive, on the Master.
    pub(super) fn restore(&self, archive: StagedFile, reply: ApiReply) {
        if self.hooks.restore.is_none() {
            let _ = reply.send(Err(refused(
                "not_configured",
                "no [hooks] restore command on this unit",
            )));
            return;
        }
        let backup = archive.name.clone();
        lock(&self.view).archive = Some(archive);
        self.engine.send(Inbox::Operator(
            OperatorRequest::ConfigRestore { backup },
            reply,
        ));
    }

    /// The commands behind the procedures; `false` for any other command.
    pub(super) fn execute(&self, id: CommandId, command: &orch::Command) -> bool {
        let engine = self.engine.clone();
        let answer = move |o: CommandOutcome| {
            engine.send(Inbox::Result(id, o));
        };
        let failed = |what: &str, e: &str| {
            warn!(error = %e, "{what} failed");
            CommandOutcome::Failed { code: 6 }
        };
        match command {
            orch::Command::SaveConfig => {
                let hook = self.hooks.save_config.clone();
                tokio::spawn(async move {
                    answer(match hook {
                        Some(cmd) => {
                            match run_hook("save_config", &cmd, None, &[], HOOK_TIMEOUT).await {
                                Ok(_) => {
                                    info!("configuration saved");
                                    CommandOutcome::Done
                                }
                                Err(e) => failed("saving the configuration", &e),
                            }
                        }
                        None => {
                            info!("no [hooks] save_config: nothing to save");
                            CommandOutcome::Done
                        }
                    });
                });
            }
            orch::Command::StageImageOnPeer => self.send_image(answer),
            orch::Command::UpgradeFirmware { version }
            | orch::Command::UpgradeLanguagePack { pack: version } => {
                let kind = if matches!(command, orch::Command::UpgradeFirmware { .. }) {
                    ImageKind::Firmware
                } else {
                    ImageKind::LanguagePack
                };
                let (hooks, staging, identity, engine) = (
                    self.hooks.clone(),
                    self.staging.clone(),
                    self.identity.clone(),
                    self.engine.clone(),
                );
                let version = version.clone();
                tokio::spawn(async move {
                    let r = async {
                        let current = lock(&identity).clone();
                        match staging.upgrade_image() {
                            Some(image) if image.kind == kind && image.version == version => {
                                let cmd = hooks.upgrade.as_deref().ok_or("no [hooks] upgrade")?;
                                install_image(cmd, &staging, &image).await?;
                            }
                            // A language pack's upgrade: the firmware stays,
                            // its step is the restart.
                            _ if kind == ImageKind::Firmware && current.firmware == version => {}
                            _ => {
                                return Err(format!(
                                    "no staged image of {} {version}",
                                    kind.words()
                                ));
                            }
                        }
                        read_identity(&hooks, &identity).await
                    }
                    .await;
                    match r {
                        Ok(id) => {
                            info!(firmware = %id.firmware, language_pack = %id.language_pack,
                                  "installed");
                            answer(CommandOutcome::Done);
                            // The firmware's step ends with the restart.
                            engine.send(Inbox::Installed {
                                identity: id,
                                restart: kind == ImageKind::Firmware,
                            });
                        }
                        Err(e) => answer(failed("the install", &e)),
                    }
                });
            }
            orch::Command::RestoreConfig { backup } => {
                let hook = self.hooks.restore.clone();
                let path = self.staging.confine(backup);
                tokio::spawn(async move {
                    let r = async {
                        let cmd = hook.ok_or("no [hooks] restore")?;
                        let path = path.map_err(|e| e.to_string())?;
                        run_hook("restore", &cmd, Some(&path), &[], HOOK_TIMEOUT).await
                    }
                    .await;
                    answer(match r {
                        Ok(_) => {
                            info!("configuration restored");
                            CommandOutcome::Done
                        }
                        Err(e) => failed("the restore", &e),
                    });
                });
            }
            _ => return false,
        }
        true
    }

    /// Streams the upgrade's image to the peer and waits for its answer.
    fn send_image(&self, answer: impl FnOnce(CommandOutcome) + Send + 'static) {
        let Some(image) = self.staging.upgrade_image() else {
            warn!("no staged image to hand to the peer");
            answer(CommandOutcome::Failed { code: 6 });
            return;
        };
        let (tx, rx) = oneshot::channel();
        *lock(&self.awaiting) = Some(tx);
        let path = self.staging.path_of(&image.file);
        let (engine, view, buffered, queued) = (
            self.engine.clone(),
            self.view.clone(),
            self.buffered.clone(),
            self.queued.clone(),
        );
        let (name, total) = (image.file.name.clone(), image.file.size);
        let set = move |sent: u64, state: &str| {
            lock(&view).transfer = Some(TransferView {
                name: name.clone(),
                sent,
                total,
                state: state.into(),
            });
        };
        let meta = image;
        tokio::spawn(async move {
            let size = meta.file.size;
            set(0, "sending");
            let sent = async {
                use tokio::io::AsyncReadExt;
                let mut f = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                to_link(&engine, &queued, TransferFrame::Begin(meta).encode());
                let mut offset = 0u64;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = f.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    // What waits for the engine thread and for the socket,
                    // together, stays under the window: never the whole
                    // image in memory.
                    while buffered.load(Ordering::Relaxed) + queued.load(Ordering::Relaxed)
                        > SEND_WINDOW
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let data = buf[..n].to_vec();
                    to_link(
                        &engine,
                        &queued,
                        TransferFrame::Chunk { offset, data }.encode(),
                    );
                    offset += n as u64;
                    set(offset, "sending");
                }
                to_link(&engine, &queued, TransferFrame::End.encode());
                // A minute, plus a second per MiB for the peer's writes.
                let wait = Duration::from_secs(60 + (size >> 20));
                match tokio::time::timeout(wait, rx).await {
                    Ok(Ok((true, _))) => Ok(offset),
                    Ok(Ok((false, why))) => Err(format!("the peer refused it: {why}")),
                    Ok(Err(_)) => Err("no answer".into()),
                    Err(_) => Err(format!("no answer within {wait:?}")),
                }
            }
            .await;
            match sent {
                Ok(n) => {
                    info!(bytes = n, "image handed to the peer, size and hash checked");
                    set(n, "done");
                    answer(CommandOutcome::Done);
                }
                Err(e) => {
                    warn!(error = %e, "image not handed to the peer");
                    set(0, &format!("failed: {e}"));
                    answer(CommandOutcome::Failed { code: 6 });
                }
            }
        });
    }
}

/// Hands a transfer payload to the engine thread, counted until it has
/// given it to the pair.
fn to_link(engine: &EngineTx, queued: &AtomicUsize, payload: Vec<u8>) {
    queued.fetch_add(payload.len(), Ordering::Relaxed);
    engine.send(Inbox::Transfer(payload));
}

fn receiver_image(r: &Receiver) -> Option<ImageMeta> {
    r.staging().upgrade_image()
}

/// Runs `[hooks] upgrade` on a staged image.
async fn install_image(cmd: &str, staging: &Staging, image: &ImageMeta) -> Result<(), String> {
    // The file is checked again right before the install.
    let now = staging
        .describe(&image.file.name)
        .map_err(|e| e.to_string())?;
    if now != image.file {
        return Err(format!(
            "{} changed since it was staged (BLAKE3 {} ≠ {})",
            image.file.name, now.blake3, image.file.blake3
        ));
    }
    let path = staging.path_of(&image.file);
    run_hook(
        "upgrade",
        cmd,
        Some(&path),
        &[
            ("PBX_IMAGE_KIND", image.kind.as_str()),
            ("PBX_IMAGE_VERSION", &image.version),
        ],
        INSTALL_TIMEOUT,
    )
    .await
    .map(|_| ())
}

/// This unit's identity after an install: `[hooks] version`'s answer over
/// the one before.
async fn read_identity(
    hooks: &ProcedureHooks,
    identity: &Mutex<orch::Identity>,
) -> Result<orch::Identity, String> {
    let mut id = lock(identity).clone();
    if let Some(cmd) = &hooks.version {
        read_versions(cmd, HOOK_TIMEOUT, &mut id.firmware, &mut id.language_pack).await?;
    }
    *lock(identity) = id.clone();
    Ok(id)
}
