//! How the node carries out the orchestrator's service and phone commands.
//!
//! [`ShellHooks`] runs the commands of the configuration (services as
//! supervised process groups, phone actions from templates); a vendor, or
//! the `pair` demo with its in-process services and simulated phones,
//! brings its own [`Hooks`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Service;
use crate::phones::Phone;

/// A boxed future, as the hooks return.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The answer to a readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Ready.
    Ready,
    /// Not yet; ask again.
    NotReady,
    /// Not running at all.
    Dead,
}

/// Services and phones, as the node's environment provides them.
pub trait Hooks: Send + Sync + 'static {
    /// Starts service `index`.
    fn start_service(&self, index: usize, svc: &Service) -> BoxFut<Result<(), String>>;
    /// Checks whether service `index` is ready.
    fn check_service(&self, index: usize, svc: &Service) -> BoxFut<Readiness>;
    /// Stops service `index` (a no-op when it is not running).
    fn stop_service(&self, index: usize, svc: &Service) -> BoxFut<()>;
    /// Whether service `index` runs, for the status page.
    fn service_running(&self, index: usize) -> bool;
    /// Nudges (or, with `reboot`, reboots) a phone; `true` when the action
    /// was carried out.
    fn phone_action(&self, phone: &Phone, reboot: bool) -> BoxFut<bool>;
    /// Waits until a phone has registered after an action, or after the
    /// address it follows was announced (`true`), or gives up (`false`);
    /// `None` when there is no way to tell, in which case the phone is
    /// reported unchecked (never as registered).
    fn phone_registered(&self, phone: &Phone) -> Option<BoxFut<bool>>;
}

/// A shell command in a process group of its own, so that stopping it
/// reaches whatever it started.
fn shell(cmd: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    c
}

/// Runs a shell command to completion; `true` when it exits 0 in time.
pub async fn run_shell(cmd: &str, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, shell(cmd).status()).await, Ok(Ok(s)) if s.success())
}

/// Ends a process group: SIGTERM, then SIGKILL after `grace`.
async fn end_group(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // The group id is the child's pid (process_group(0)).
        // SAFETY: kill(2) on a process group we created, with a valid signal.
        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let _ = child.wait().await;
        }
    }
}

/// The configuration's commands.
#[derive(Default)]
pub struct ShellHooks {
    running: Mutex<HashMap<usize, tokio::process::Child>>,
}

impl ShellHooks {
    fn with_running<R>(
        &self,
        f: impl FnOnce(&mut HashMap<usize, tokio::process::Child>) -> R,
    ) -> R {
        match self.running.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

impl Hooks for ShellHooks {
    fn start_service(&self, index: usize, svc: &Service) -> BoxFut<Result<(), String>> {
        let alive = self.with_running(|r| {
            r.get_mut(&index)
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        });
        if alive {
            return Box::pin(async { Ok(()) });
        }
        let result = match shell(&svc.start).spawn() {
            Ok(child) => {
                info!(service = %svc.name, pid = child.id(), "service started");
                self.with_running(|r| r.insert(index, child));
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", svc.name)),
        };
        Box::pin(async move { result })
    }

    fn check_service(&self, index: usize, svc: &Service) -> BoxFut<Readiness> {
        let alive = self.with_running(|r| {
            r.get_mut(&index)
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        });
        let ready = svc.ready.clone();
        Box::pin(async move {
            if !alive {
                return Readiness::Dead;
            }
            match ready {
                Some(cmd) if !run_shell(&cmd, Duration::from_secs(5)).await => Readiness::NotReady,
                _ => Readiness::Ready,
            }
        })
    }

    fn stop_service(&self, index: usize, svc: &Service) -> BoxFut<()> {
        let child = self.with_running(|r| r.remove(&index));
        let (name, stop, grace) = (svc.name.clone(), svc.stop.clone(), svc.stop_timeout);
        Box::pin(async move {
            let Some(mut child) = child else { return };
            if let Some(stop) = stop
                && !run_shell(&stop, grace).await
            {
                warn!(service = %name, "stop command failed; ending the process group");
            }
            end_group(&mut child, grace).await;
            info!(service = %name, "service stopped");
        })
    }

    fn service_running(&self, index: usize) -> bool {
        self.with_running(|r| r.contains_key(&index))
    }

    fn phone_action(&self, phone: &Phone, reboot: bool) -> BoxFut<bool> {
        let template = if reboot { &phone.reboot } else { &phone.nudge };
        let cmd = template.as_ref().map(|t| phone.fill(t));
        Box::pin(async move {
            match cmd {
                Some(cmd) => run_shell(&cmd, Duration::from_secs(30)).await,
                None => false,
            }
        })
    }

    fn phone_registered(&self, phone: &Phone) -> Option<BoxFut<bool>> {
        let check = phone.fill(phone.check.as_ref()?);
        Some(Box::pin(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(120);
            while tokio::time::Instant::now() < until {
                if run_shell(&check, Duration::from_secs(5)).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        }))
    }
}
