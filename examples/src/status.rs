//! The status and control API (axum): `GET /status` returns the node's
//! snapshot as JSON; `GET /` is a page that shows it like the appliance's
//! status line, with the last failover timeline and buttons for the Backup
//! mode and Swap; `POST /mode`, `POST /swap` and `POST /redundancy`
//! (`{"enabled": bool}`) take the operator's requests and answer once
//! preflight has decided: `202 {"procedure": N}` when accepted, `409
//! {"error": "<words>", "code": "<snake_case>"}` when refused, `400` for a
//! malformed request, `415` for a body that is not `application/json`. On
//! the Master, `backup_gui_port` forwards to the Backup's page and API.
//! `POST /sync/confirm-deletions` (an empty body or a JSON object, as
//! `application/json`) confirms the round the mass-deletion guard refused
//! (`/status`'s `sync.refused`): `202 {"confirmed": {…}}` with the refusal
//! it confirmed, `409` with code `nothing_to_confirm` when no round waits.
//! `GET /metrics` renders the same snapshot in the OpenMetrics text format
//! (see [`crate::metrics`]).
//!
//! The procedures (see `status/ops_api.rs`): `POST /upgrade/stage` stages
//! an image (multipart field `image`) and answers its name, size and
//! BLAKE3; `POST /upgrade` (multipart `image`, `version`, `kind`, or JSON
//! `{"path", "version", "kind"}` naming a staged file) starts the rolling
//! upgrade on the Master, or this unit's own install on a Passive Backup;
//! `POST /restore` (multipart `archive`, or JSON `{"path"}`) the
//! configuration restore; `POST /mode` takes `"expires_s"` for a timed
//! Passive; `GET /logs` downloads the node's recent log. The page (`GET
//! /`) renders `/status`'s `words` and offers the actions its `actions`
//! allow.
//!
//! Every request, on every path, passes [`Guard`] first:
//! - its `Host` (and its `Origin`, when it has one) must be one of
//!   `[status] allowed_hosts`, or the answer is `403` (DNS rebinding,
//!   cross-site forms);
//! - with `[status] token_file` set, it must carry the token, as
//!   `Authorization: Bearer <token>` or HTTP Basic with user `admin` and
//!   the token as the password, or the answer is `401` with a Basic
//!   challenge, so that a browser asks for it.
//!
//! The Backup GUI forward relays connections unchanged, credentials and
//! `Host` included: the Backup checks both itself, and accepts the
//! Master's forward address as a `Host` by default.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use failover_orchestrator::BackupMode;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{ConfigError, Status};
use crate::node::{ApiReply, ApiRequest, Snapshot};

mod ops_api;

#[derive(Clone)]
struct AppState {
    snapshot: Arc<Mutex<Snapshot>>,
    api: mpsc::Sender<ApiRequest>,
    /// Where uploads go (`[hooks] staging_dir`).
    staging: Option<crate::procedures::Staging>,
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
    /// Back to Active after this many seconds (a maintenance window).
    expires_s: Option<u64>,
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

/// `GET /metrics`: the snapshot `GET /status` returns, as metrics.
async fn metrics(State(s): State<AppState>) -> Response {
    let text = crate::metrics::render(&read(&s.snapshot));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

async fn ask(
    s: &AppState,
    make: impl FnOnce(ApiReply) -> ApiRequest,
) -> (StatusCode, Json<serde_json::Value>) {
    relay(s, make, |id| serde_json::json!({"procedure": id})).await
}

/// Hands a request to the node and answers as preflight decided: `202`
/// with `accepted`'s body, `409` with the refusal, `503` when the node is
/// stopping.
async fn relay<T>(
    s: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, crate::node::Refused>>) -> ApiRequest,
    accepted: impl FnOnce(T) -> serde_json::Value,
) -> (StatusCode, Json<serde_json::Value>) {
    let stopping = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "node is stopping", "code": "stopping"})),
        )
    };
    let (tx, rx) = oneshot::channel();
    if s.api.send(make(tx)).await.is_err() {
        return stopping();
    }
    match rx.await {
        // Accepted after preflight: the procedure runs.
        Ok(Ok(v)) => (StatusCode::ACCEPTED, Json(accepted(v))),
        Ok(Err(refused)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": refused.error, "code": refused.code})),
        ),
        Err(_) => stopping(),
    }
}

/// A malformed request: 400.
fn bad_request(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": why, "code": "bad_request"})),
    )
        .into_response()
}

/// A body that is not declared `application/json`: 415. A cross-site HTML
/// form can only send `text/plain`, `application/x-www-form-urlencoded` or
/// `multipart/form-data`, and a script on another site cannot send
/// `application/json` without a CORS preflight that this API never
/// answers; so no other site can make a browser post here.
fn not_json() -> Response {
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Json(serde_json::json!({
            "error": "the body must be sent as content-type: application/json",
            "code": "unsupported_media_type",
        })),
    )
        .into_response()
}

/// The JSON extractor's refusal: 415 for a missing or other content type,
/// 400 for anything else (syntax, a missing or mistyped field).
fn rejected(e: &JsonRejection) -> Response {
    match e {
        JsonRejection::MissingJsonContentType(_) => not_json(),
        other => bad_request(&other.body_text()),
    }
}

/// Whether the request declares a JSON body (`application/json`, with
/// parameters such as `charset` allowed), as the JSON extractor decides.
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

async fn set_mode(
    State(s): State<AppState>,
    body: Result<Json<ModeBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return rejected(&e),
    };
    let mode = match body.mode.to_ascii_lowercase().as_str() {
        "active" => BackupMode::Active,
        "passive" => BackupMode::Passive,
        other => return bad_request(&format!("mode `{other}`: expected Active or Passive")),
    };
    if body.expires_s == Some(0) {
        return bad_request("expires_s: at least 1 second");
    }
    ask(&s, |tx| ApiRequest::SetBackupMode(mode, body.expires_s, tx))
        .await
        .into_response()
}

/// A JSON request whose body is empty or a JSON object (fields ignored):
/// `None` when it is one, else the answer (415, 400).
fn empty_json(headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    if !declares_json(headers) {
        return Some(not_json());
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Some(bad_request("expected an empty body or a JSON object")),
            Err(e) => return Some(bad_request(&e.to_string())),
        }
    }
    None
}

/// `POST /swap`: a JSON request with an empty body or a JSON object
/// (`{}`, as the page sends), whose fields are ignored.
async fn swap(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = empty_json(&headers, &body) {
        return refused;
    }
    ask(&s, ApiRequest::Swap).await.into_response()
}

/// `POST /sync/confirm-deletions`: like `POST /swap`, an empty body or a
/// JSON object. `202 {"confirmed": <the refusal>}`, or `409` with
/// `nothing_to_confirm`.
async fn confirm_deletions(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = empty_json(&headers, &body) {
        return refused;
    }
    let stopping = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "node is stopping", "code": "stopping"})),
        )
            .into_response()
    };
    let (tx, rx) = oneshot::channel();
    if s.api.send(ApiRequest::ConfirmDeletions(tx)).await.is_err() {
        return stopping();
    }
    match rx.await {
        Ok(Ok(round)) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"confirmed": round})),
        )
            .into_response(),
        Ok(Err(refused)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": refused.error, "code": refused.code})),
        )
            .into_response(),
        Err(_) => stopping(),
    }
}

#[derive(Deserialize)]
struct RedundancyBody {
    enabled: bool,
}

async fn set_redundancy(
    State(s): State<AppState>,
    body: Result<Json<RedundancyBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return rejected(&e),
    };
    ask(&s, |tx| ApiRequest::SetRedundancy(body.enabled, tx))
        .await
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "no such endpoint", "code": "not_found"})),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Who may ask

/// The shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token file read, in bytes.
const MAX_TOKEN_FILE: u64 = 4096;
/// The user name HTTP Basic takes with the token as its password.
pub const BASIC_USER: &str = "admin";

/// The API token of `[status] token_file`. Only its BLAKE3 hash is kept;
/// a presented token is hashed and the two hashes compared in constant
/// time (`blake3::Hash`'s equality), so neither the token's bytes nor its
/// length leak through timing.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    hash: blake3::Hash,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from a file's bytes: surrounding whitespace (a final
    /// newline) is ignored; what is left must be at least
    /// [`MIN_TOKEN_LEN`] bytes of visible ASCII, so that it can be typed
    /// into a browser's prompt and sent in a header.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn new(bytes: &[u8]) -> Result<Token, String> {
        let token = bytes.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token is {} bytes; at least {MIN_TOKEN_LEN} are needed \
                 (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err("the token must be visible ASCII, without spaces".into());
        }
        Ok(Token {
            hash: blake3::hash(token),
        })
    }

    /// Whether `presented` is the token (constant time).
    #[must_use]
    pub fn matches(&self, presented: &[u8]) -> bool {
        blake3::hash(presented) == self.hash
    }
}

fn token_error(reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: "status.token_file".into(),
        reason,
    }
}

/// Reads `[status] token_file`: a regular file that other users can
/// neither read nor write, holding a [`Token`]. The file is opened once
/// and its mode checked on the open handle.
///
/// # Errors
/// [`ConfigError`] naming `status.token_file` and what is wrong.
pub fn read_token_file(path: &Path) -> Result<Token, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| token_error(format!("{shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| token_error(format!("{shown}: {e}")))?;
    if !meta.is_file() {
        return Err(token_error(format!("{shown} is not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o006 != 0 {
        return Err(token_error(format!(
            "{shown} is readable or writable by every user (mode {mode:04o}); \
             `chmod 600` it"
        )));
    }
    if meta.len() > MAX_TOKEN_FILE {
        return Err(token_error(format!(
            "{shown} is {} bytes; a token file holds one token",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| token_error(format!("{shown}: {e}")))?;
    Token::new(&bytes).map_err(|reason| token_error(format!("{shown}: {reason}")))
}

/// The form `Host` values and `allowed_hosts` entries are compared in:
/// `host:port`, the host in lower case, the port made explicit
/// (`default_port` when there is none). `None` when `authority` is not a
/// host with an optional port (user info, a path, spaces, …).
#[must_use]
pub fn host_key(authority: &str, default_port: u16) -> Option<String> {
    if authority.is_empty() || authority.contains(['@', '/', '?', '#']) {
        return None;
    }
    let a: axum::http::uri::Authority = authority.parse().ok()?;
    if a.host().is_empty() {
        return None;
    }
    // Without user info, the authority is the host and then `:port`.
    let port = match authority.get(a.host().len()..)? {
        "" => default_port,
        tail => tail.strip_prefix(':')?.parse::<u16>().ok()?,
    };
    Some(format!("{}:{port}", a.host().to_ascii_lowercase()))
}

/// The `host:port` of an `Origin` header (`scheme://host[:port]`), in
/// [`host_key`]'s form.
fn origin_key(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        return None;
    };
    host_key(rest, default_port)
}

/// Why a request was turned away before it reached an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` missing or not among `allowed_hosts`: 403.
    Host(String),
    /// An `Origin` not among `allowed_hosts`: 403.
    Origin(String),
    /// No valid token: 401 with a Basic challenge.
    Unauthorized,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let json =
            |code: &str, error: String| Json(serde_json::json!({"error": error, "code": code}));
        match self {
            Refusal::Host(h) => (
                StatusCode::FORBIDDEN,
                json(
                    "host_not_allowed",
                    format!("Host `{h}` is not one of [status] allowed_hosts"),
                ),
            )
                .into_response(),
            Refusal::Origin(o) => (
                StatusCode::FORBIDDEN,
                json(
                    "origin_not_allowed",
                    format!("Origin `{o}` is not one of [status] allowed_hosts"),
                ),
            )
                .into_response(),
            Refusal::Unauthorized => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    json(
                        "unauthorized",
                        "the API token is needed: Authorization: Bearer <token>, \
                         or Basic with user admin and the token as the password"
                            .into(),
                    ),
                )
                    .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"pbx-redundancy\", charset=\"UTF-8\""),
                );
                r
            }
        }
    }
}

/// The checks every request passes before any endpoint: `Host` and
/// `Origin` against the allowed hosts, then the token when one is set.
/// The token can be replaced while the server runs (a reload).
#[derive(Debug)]
pub struct Guard {
    allowed_hosts: Vec<String>,
    token: std::sync::RwLock<Option<Token>>,
}

impl Guard {
    /// A guard accepting `allowed_hosts` (in [`host_key`]'s form) and, when
    /// `token` is set, only requests that carry it.
    #[must_use]
    pub fn new(allowed_hosts: Vec<String>, token: Option<Token>) -> Guard {
        Guard {
            allowed_hosts,
            token: std::sync::RwLock::new(token),
        }
    }

    /// Replaces the token: requests from now on need the new one.
    pub fn set_token(&self, token: Option<Token>) {
        match self.token.write() {
            Ok(mut t) => *t = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    /// Decides a request from its headers (and its URI, whose authority
    /// stands for `Host` in an absolute-form request).
    ///
    /// # Errors
    /// The [`Refusal`], in the order checked: `Host`, `Origin`, token.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        if !host_key(&host, 80).is_some_and(|k| self.allowed_hosts.contains(&k)) {
            return Err(Refusal::Host(host));
        }
        for origin in headers.get_all(header::ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            if !origin_key(&origin).is_some_and(|k| self.allowed_hosts.contains(&k)) {
                return Err(Refusal::Origin(origin));
            }
        }
        let token = match self.token.read() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*token {
            None => Ok(()),
            Some(token) => {
                let mut presented = headers.get_all(header::AUTHORIZATION).iter();
                match (presented.next(), presented.next()) {
                    (Some(value), None) if authorizes(token, value.as_bytes()) => Ok(()),
                    _ => Err(Refusal::Unauthorized),
                }
            }
        }
    }
}

/// Whether an `Authorization` value carries the token: `Bearer <token>`,
/// or `Basic base64(admin:<token>)`; schemes are case-insensitive.
fn authorizes(token: &Token, value: &[u8]) -> bool {
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, credentials) = (&value[..space], value[space..].trim_ascii());
    if scheme.eq_ignore_ascii_case(b"bearer") {
        token.matches(credentials)
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both compared, whatever the user: the time does not say which
        // one was wrong.
        let password_ok = token.matches(password);
        user == BASIC_USER.as_bytes() && password_ok
    } else {
        false
    }
}

async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match g.check(req.headers(), req.uri()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The running endpoint; dropping it closes both ports.
pub struct StatusServer {
    stop: Option<oneshot::Sender<()>>,
    forward: Option<tokio::task::JoinHandle<()>>,
    guard: Arc<Guard>,
}

impl StatusServer {
    /// Replaces the token every request must carry (a reload of
    /// `[status] token_file`).
    pub fn set_token(&self, token: Option<Token>) {
        self.guard.set_token(token);
    }
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
/// port). Returns once both are listening. Every request passes a
/// [`Guard`] of `config.allowed_hosts` and `token` (the contents of
/// `config.token_file`, read with the configuration).
///
/// # Errors
/// When a port cannot be bound.
pub async fn spawn(
    config: Status,
    token: Option<Token>,
    peer_host: Option<SocketAddr>,
    snapshot: Arc<Mutex<Snapshot>>,
    api: mpsc::Sender<ApiRequest>,
    staging: Option<crate::procedures::Staging>,
) -> std::io::Result<StatusServer> {
    let guarded = Arc::new(Guard::new(config.allowed_hosts.clone(), token));
    // Uploads up to the staging limit, plus room for the form around them.
    let upload_limit = staging.as_ref().map_or(2 << 20, |s| {
        usize::try_from(s.max_bytes())
            .unwrap_or(usize::MAX)
            .saturating_add(1 << 20)
    });
    let uploads = Router::new()
        .route("/upgrade", post(ops_api::upgrade))
        .route("/upgrade/stage", post(ops_api::stage))
        .route("/restore", post(ops_api::restore))
        .layer(axum::extract::DefaultBodyLimit::max(upload_limit));
    let app = Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/mode", post(set_mode))
        .route("/swap", post(swap))
        .route("/redundancy", post(set_redundancy))
        .route("/sync/confirm-deletions", post(confirm_deletions))
        .route("/logs", get(ops_api::logs))
        .merge(uploads)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(guarded.clone(), guard))
        .with_state(AppState {
            snapshot: snapshot.clone(),
            api,
            staging,
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
        guard: guarded,
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

/// Forwards connections to the Backup's page and API while this node is
/// Master, byte for byte: the Backup checks the `Host`, the `Origin` and
/// the token of each request itself.
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

/// The status page (`GET /`): it renders `/status`'s `words`.
const PAGE: &str = include_str!("status/page.html");

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    fn guard(token: bool) -> Guard {
        Guard::new(
            vec!["127.0.0.1:8080".into(), "pbx-a.example:80".into()],
            token.then(|| Token::new(TOKEN.as_bytes()).expect("token")),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    fn basic(user: &str, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}")
    }

    fn check(g: &Guard, pairs: &[(&'static str, &str)]) -> Result<(), Refusal> {
        g.check(&headers(pairs), &Uri::from_static("/status"))
    }

    #[test]
    fn host_and_origin_must_be_allowed() {
        let g = guard(false);
        assert_eq!(check(&g, &[("host", "127.0.0.1:8080")]), Ok(()));
        assert_eq!(check(&g, &[("host", "PBX-A.example")]), Ok(()), "port 80");
        assert_eq!(check(&g, &[("host", "pbx-a.example:80")]), Ok(()));
        for bad in [
            "evil.example:8080",
            "127.0.0.1",
            "127.0.0.1:8081",
            "127.0.0.1:",
        ] {
            assert_eq!(
                check(&g, &[("host", bad)]),
                Err(Refusal::Host(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(check(&g, &[]), Err(Refusal::Host(String::new())));
        let ok = [("host", "127.0.0.1:8080")];
        assert_eq!(
            check(&g, &[ok[0], ("origin", "http://127.0.0.1:8080")]),
            Ok(())
        );
        assert_eq!(
            check(&g, &[ok[0], ("origin", "http://pbx-a.example")]),
            Ok(())
        );
        for bad in [
            "http://evil.example:8080",
            "null",
            "https://pbx-a.example",
            "file://",
        ] {
            assert_eq!(
                check(&g, &[ok[0], ("origin", bad)]),
                Err(Refusal::Origin(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_token_as_bearer_or_basic_admin() {
        let g = guard(true);
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(check(&g, &[host]), Err(Refusal::Unauthorized));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(check(&g, &[host, ("authorization", &bearer)]), Ok(()));
        let lower = format!("bearer {TOKEN}");
        assert_eq!(check(&g, &[host, ("authorization", &lower)]), Ok(()));
        let good = basic("admin", TOKEN);
        assert_eq!(check(&g, &[host, ("authorization", &good)]), Ok(()));
        let wrong = [
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[1..]),
            "Bearer".to_owned(),
            format!("Token {TOKEN}"),
            basic("root", TOKEN),
            basic("admin", "0123456789abcdef"),
            "Basic !!!notbase64".to_owned(),
            format!("Basic {TOKEN}"),
        ];
        for w in &wrong {
            assert_eq!(
                check(&g, &[host, ("authorization", w)]),
                Err(Refusal::Unauthorized),
                "{w}"
            );
        }
        // Two credentials are one too many.
        assert_eq!(
            check(
                &g,
                &[host, ("authorization", &bearer), ("authorization", &good)]
            ),
            Err(Refusal::Unauthorized)
        );
        // The Host is checked first: a wrong Host is 403 even with the token.
        assert_eq!(
            check(&g, &[("host", "evil.example"), ("authorization", &bearer)]),
            Err(Refusal::Host("evil.example".into()))
        );
    }

    #[test]
    fn a_401_asks_the_browser_for_basic_credentials() {
        let r = Refusal::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenge = r
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert_eq!(
            Refusal::Host("x".into()).into_response().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Refusal::Origin("x".into()).into_response().status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn tokens_are_16_visible_bytes_or_more() {
        assert!(Token::new(b"0123456789abcdef\n").is_ok());
        assert!(
            Token::new(b"0123456789abcde\n")
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(Token::new(b"0123456789 abcdef").is_err(), "a space inside");
        assert!(Token::new("0123456789abcdéf".as_bytes()).is_err());
        let t = Token::new(b"  0123456789abcdef  ").expect("token");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
    }

    #[test]
    fn json_is_declared_by_the_content_type() {
        assert!(declares_json(&headers(&[(
            "content-type",
            "application/json"
        )])));
        assert!(declares_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            assert!(
                !declares_json(&headers(&[("content-type", other)])),
                "{other}"
            );
        }
        assert!(!declares_json(&HeaderMap::new()));
    }

    #[test]
    fn host_keys() {
        assert_eq!(
            host_key("LOCALHOST:8080", 80).as_deref(),
            Some("localhost:8080")
        );
        assert_eq!(host_key("[::1]:8080", 80).as_deref(), Some("[::1]:8080"));
        assert_eq!(host_key("pbx", 80).as_deref(), Some("pbx:80"));
        for bad in [
            "",
            "a b",
            "user@pbx:80",
            "pbx/x",
            "pbx:",
            "pbx:99999",
            ":80",
        ] {
            assert_eq!(host_key(bad, 80), None, "{bad}");
        }
    }
}
