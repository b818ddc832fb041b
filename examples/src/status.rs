//! The status and control API (axum): `GET /status` returns the node's
//! snapshot as JSON; `GET /` is a page that shows it like the appliance's
//! status line, with the last failover timeline and buttons for the Backup
//! mode and Swap; `POST /mode`, `POST /swap` and `POST /redundancy`
//! (`{"enabled": bool}`) take the operator's requests and answer once
//! preflight has decided: `202 {"procedure": N}` when accepted, `409
//! {"error": "<words>", "code": "<snake_case>"}` when refused, `400` for a
//! malformed request. On the Master, `backup_gui_port` forwards to the
//! Backup's page (the manual's "Backup Device GUI Access Port").

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use failover_orchestrator::BackupMode;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::Status;
use crate::node::{ApiReply, ApiRequest, Snapshot};

#[derive(Clone)]
struct AppState {
    snapshot: Arc<Mutex<Snapshot>>,
    api: mpsc::Sender<ApiRequest>,
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

fn read(snapshot: &Mutex<Snapshot>) -> Snapshot {
    match snapshot.lock() {
        Ok(s) => s.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

async fn status(State(s): State<AppState>) -> Json<Snapshot> {
    Json(read(&s.snapshot))
}

async fn ask(
    s: &AppState,
    make: impl FnOnce(ApiReply) -> ApiRequest,
) -> (StatusCode, Json<serde_json::Value>) {
    let (tx, rx) = oneshot::channel();
    if s.api.send(make(tx)).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "node is stopping", "code": "stopping"})),
        );
    }
    match rx.await {
        // Accepted after preflight: the procedure runs.
        Ok(Ok(id)) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"procedure": id})),
        ),
        Ok(Err(refused)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": refused.error, "code": refused.code})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "node is stopping", "code": "stopping"})),
        ),
    }
}

/// A malformed request: 400, whatever the JSON extractor would have said.
fn bad_request(why: &str) -> axum::response::Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": why, "code": "bad_request"})),
    )
        .into_response()
}

async fn set_mode(
    State(s): State<AppState>,
    body: Result<Json<ModeBody>, JsonRejection>,
) -> axum::response::Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_request(&e.body_text()),
    };
    let mode = match body.mode.to_ascii_lowercase().as_str() {
        "active" => BackupMode::Active,
        "passive" => BackupMode::Passive,
        other => return bad_request(&format!("mode `{other}`: expected Active or Passive")),
    };
    ask(&s, |tx| ApiRequest::SetBackupMode(mode, tx))
        .await
        .into_response()
}

async fn swap(State(s): State<AppState>) -> axum::response::Response {
    ask(&s, ApiRequest::Swap).await.into_response()
}

#[derive(Deserialize)]
struct RedundancyBody {
    enabled: bool,
}

async fn set_redundancy(
    State(s): State<AppState>,
    body: Result<Json<RedundancyBody>, JsonRejection>,
) -> axum::response::Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_request(&e.body_text()),
    };
    ask(&s, |tx| ApiRequest::SetRedundancy(body.enabled, tx))
        .await
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The running endpoint; dropping it closes both ports.
pub struct StatusServer {
    stop: Option<oneshot::Sender<()>>,
    forward: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(f) = self.forward.take() {
            f.abort();
        }
    }
}

/// Serves the API on `config.listen`, and the Backup GUI forward on the
/// Master's `backup_gui_port` (to the peer's host at this node's status
/// port). Returns once both are listening.
///
/// # Errors
/// When a port cannot be bound.
pub async fn spawn(
    config: Status,
    peer_host: Option<SocketAddr>,
    snapshot: Arc<Mutex<Snapshot>>,
    api: mpsc::Sender<ApiRequest>,
) -> std::io::Result<StatusServer> {
    let app = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/mode", post(set_mode))
        .route("/swap", post(swap))
        .route("/redundancy", post(set_redundancy))
        .with_state(AppState {
            snapshot: snapshot.clone(),
            api,
        });
    let listener = TcpListener::bind(config.listen).await?;
    info!(listen = %config.listen, "status endpoint");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "status endpoint stopped");
        }
    });
    let mut server = StatusServer {
        stop: Some(stop_tx),
        forward: None,
    };
    if let (Some(port), Some(peer)) = (config.backup_gui_port, peer_host) {
        let listen = SocketAddr::new(config.listen.ip(), port);
        let target = SocketAddr::new(peer.ip(), config.listen.port());
        let gui = TcpListener::bind(listen).await?;
        info!(%listen, %target, "backup GUI forward (served while Master)");
        server.forward = Some(tokio::spawn(forward(gui, target, snapshot)));
    }
    Ok(server)
}

/// Forwards connections to the Backup's page while this node is Master.
async fn forward(listener: TcpListener, target: SocketAddr, snapshot: Arc<Mutex<Snapshot>>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if read(&snapshot).role != "Master" {
            // Only the Master forwards; on the Backup the port is closed to
            // callers.
            drop(inbound);
            continue;
        }
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => warn!(%target, error = %e, "backup GUI unreachable"),
            }
        });
    }
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Redundancy status</title>
<style>
 body { font-family: sans-serif; margin: 2em; max-width: 60em; }
 #line { font-size: 1.3em; font-weight: bold; margin: 1em 0; }
 table { border-collapse: collapse; }
 td, th { border: 1px solid #bbb; padding: .2em .6em; text-align: left; }
 button { margin-right: .5em; }
 .muted { color: #666; }
</style>
</head>
<body>
<h1>Redundancy</h1>
<div>Node <span id="id"></span>, role <span id="role"></span> <span class="muted" id="vrrp"></span></div>
<div id="line">loading…</div>
<div>
 <button id="active" type="button">Backup mode: Active</button>
 <button id="passive" type="button">Backup mode: Passive</button>
 <button id="swap" type="button">Swap Master and Backup</button>
 <span id="answer" class="muted"></span>
</div>
<h2>Last failover</h2>
<div id="timeline-summary" class="muted">none yet</div>
<table id="timeline"><thead><tr><th>at (ms)</th><th>milestone</th></tr></thead><tbody></tbody></table>
<script>
async function refresh() {
  try {
    const s = await (await fetch('/status')).json();
    document.getElementById('id').textContent = s.id;
    document.getElementById('role').textContent = s.role;
    document.getElementById('vrrp').textContent =
      '(priority ' + s.vrrp.priority + ', ' + s.vrrp.backup_mode + ')';
    document.getElementById('line').textContent = s.summary;
    const body = document.querySelector('#timeline tbody');
    body.innerHTML = '';
    if (s.timeline) {
      const t = s.timeline;
      document.getElementById('timeline-summary').textContent =
        'reason ' + t.reason + ', data-loss window ' +
        (t.data_loss_window_ms === null ? 'n/a' : t.data_loss_window_ms + ' ms');
      for (const e of t.entries) {
        const tr = document.createElement('tr');
        const what = typeof e.what === 'string' ? e.what : JSON.stringify(e.what);
        tr.innerHTML = '<td></td><td></td>';
        tr.children[0].textContent = e.at_ms;
        tr.children[1].textContent = what;
        body.appendChild(tr);
      }
    }
  } catch (e) {
    document.getElementById('line').textContent = 'status unavailable';
  }
}
async function post(path, body) {
  const r = await fetch(path, {method: 'POST', headers: {'content-type': 'application/json'},
                               body: JSON.stringify(body || {})});
  const a = await r.json();
  document.getElementById('answer').textContent = r.ok ? 'accepted' : ('refused: ' + a.error);
  refresh();
}
document.getElementById('active').onclick = () => post('/mode', {mode: 'Active'});
document.getElementById('passive').onclick = () => post('/mode', {mode: 'Passive'});
document.getElementById('swap').onclick = () => post('/swap');
refresh();
setInterval(refresh, 500);
</script>
</body>
</html>
"#;
