//! The procedures' endpoints: `POST /upgrade/stage`, `POST /upgrade`,
//! `POST /restore` and `GET /logs`.
//!
//! Uploads are `multipart/form-data`, streamed into the staging folder
//! (`[hooks] staging_dir`) while their size is counted against `[hooks]
//! max_image_mib` (`413` past it) and their BLAKE3 computed. Instead of a
//! file, `POST /upgrade` and `POST /restore` take JSON naming one already
//! in the staging folder (`{"path": "fw-5.2.img", …}`); a path that
//! resolves outside it is `400` with code `outside_staging`.

// The helpers end a handler early with the answer itself, as axum handlers
// return it: `Result<_, Response>` is the shape, boxing it buys nothing.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::{AppState, declares_json, read, relay};
use crate::node::ApiRequest;
use crate::procedures::{ImageKind, ImageMeta, StagedFile, Staging, StagingError};

fn error(status: StatusCode, code: &str, why: impl Into<String>) -> Response {
    (status, Json(json!({"error": why.into(), "code": code}))).into_response()
}

fn staging_error(e: &StagingError) -> Response {
    let status = match e {
        StagingError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StagingError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StagingError::Outside(_) | StagingError::Missing(_) => StatusCode::BAD_REQUEST,
    };
    error(status, e.code(), e.to_string())
}

/// The text fields and the one file of a multipart request.
struct Form {
    fields: Vec<(String, String)>,
    file: Option<StagedFile>,
}

impl Form {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Streams a multipart request: text fields kept (each at most 4 KiB),
/// the field `file_field` written into the staging folder under its file
/// name.
async fn read_form(
    staging: &Staging,
    mut parts: Multipart,
    file_field: &str,
) -> Result<Form, Response> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        // A body cut at the limit is the limit.
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            staging_error(&StagingError::TooLarge {
                limit: staging.max_bytes(),
            })
        } else {
            error(e.status(), "bad_multipart", e.body_text())
        }
    };
    let mut form = Form {
        fields: Vec::new(),
        file: None,
    };
    while let Some(mut field) = parts.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == file_field {
            let file_name = field
                .file_name()
                .map(|f| {
                    std::path::Path::new(f)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| format!("{file_field}.bin"));
            let mut w = staging.writer(&file_name).map_err(|e| staging_error(&e))?;
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                w = tokio::task::spawn_blocking(move || w.write(&chunk).map(|()| w))
                    .await
                    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()))?
                    .map_err(|e| staging_error(&e))?;
            }
            let staged = tokio::task::spawn_blocking(move || w.finish())
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()))?
                .map_err(|e| staging_error(&e))?;
            tracing::info!(name = %staged.name, size = staged.size, blake3 = %staged.blake3,
                           "staged");
            form.file = Some(staged);
        } else {
            let text = field.text().await.map_err(bad)?;
            if text.len() > 4096 {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_field",
                    format!("field `{name}` is longer than 4 KiB"),
                ));
            }
            form.fields.push((name, text));
        }
    }
    Ok(form)
}

fn staging_of(s: &AppState) -> Result<&Staging, Response> {
    s.staging.as_ref().ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            "not_configured",
            "this node has no staging folder",
        )
    })
}

/// The request as a form (multipart) or as JSON naming a staged file;
/// `file_field` is the upload's field name.
async fn form_or_json(
    s: &AppState,
    req: Request,
    file_field: &str,
) -> Result<(Form, Option<String>), Response> {
    let staging = staging_of(s)?.clone();
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if is_multipart {
        let parts = Multipart::from_request(req, &())
            .await
            .map_err(IntoResponse::into_response)?;
        let form = read_form(&staging, parts, file_field).await?;
        return Ok((form, None));
    }
    if !declares_json(req.headers()) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected multipart/form-data or application/json",
        ));
    }
    let body = Bytes::from_request(req, &())
        .await
        .map_err(IntoResponse::into_response)?;
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))?;
    let fields = v
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    let path = v.get("path").and_then(|p| p.as_str()).map(str::to_string);
    Ok((Form { fields, file: None }, path))
}

/// The staged file a request names or carries.
async fn staged(s: &AppState, form: &Form, path: Option<String>) -> Result<StagedFile, Response> {
    if let Some(f) = &form.file {
        return Ok(f.clone());
    }
    let staging = staging_of(s)?.clone();
    let Some(path) = path else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no_file",
            "no file: send it as a multipart field, or name a staged one as \"path\"",
        ));
    };
    tokio::task::spawn_blocking(move || staging.describe(&path))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()))?
        .map_err(|e| staging_error(&e))
}

/// `POST /upgrade/stage`: multipart field `image` → `200 {"name", "size",
/// "blake3"}`, to show before the start.
pub(super) async fn stage(State(s): State<AppState>, req: Request) -> Response {
    match form_or_json(&s, req, "image").await {
        Ok((Form { file: Some(f), .. }, _)) => (StatusCode::OK, Json(f)).into_response(),
        Ok(_) => error(
            StatusCode::BAD_REQUEST,
            "no_file",
            "no multipart field `image`",
        ),
        Err(r) => r,
    }
}

/// `POST /upgrade`: the image (multipart field `image`, or `"path"` of a
/// staged one), its `version` and `kind` (`firmware`, the default, or
/// `language_pack`). `202 {"procedure": N, "image": {…}}` on the Master
/// (the rolling upgrade of both units), `202 {"procedure": null, "local":
/// true, …}` on a Passive Backup (this unit alone), `409` when refused.
pub(super) async fn upgrade(State(s): State<AppState>, req: Request) -> Response {
    let (form, path) = match form_or_json(&s, req, "image").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let kind = match ImageKind::parse(form.field("kind").unwrap_or("firmware")) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_kind", e),
    };
    let Some(version) = form
        .field("version")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "no_version",
            "`version`: the firmware or language pack the image installs",
        );
    };
    let version = version.to_string();
    let file = match staged(&s, &form, path).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let image = ImageMeta {
        file,
        kind,
        version,
    };
    relay(
        &s,
        |tx| ApiRequest::Upgrade(image.clone(), tx),
        |id| match id {
            Some(id) => json!({"procedure": id, "image": image}),
            None => json!({"procedure": null, "local": true, "image": image}),
        },
    )
    .await
    .into_response()
}

/// `POST /restore`: multipart field `archive` (or `"path"` of a staged
/// one) → `202 {"procedure": N, "archive": {…}}`, `409` when refused.
pub(super) async fn restore(State(s): State<AppState>, req: Request) -> Response {
    let (form, path) = match form_or_json(&s, req, "archive").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let file = match staged(&s, &form, path).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    relay(
        &s,
        |tx| ApiRequest::Restore(file.clone(), tx),
        |id| json!({"procedure": id, "archive": file}),
    )
    .await
    .into_response()
}

/// `GET /logs`: this node's recent log as a download.
pub(super) async fn logs(State(s): State<AppState>) -> Response {
    let id = read(&s.snapshot).id;
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let log = tokio::task::spawn_blocking(crate::procedures::recent_log)
        .await
        .unwrap_or_default();
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"pbx-node-{safe}.log\""),
            ),
        ],
        log,
    )
        .into_response()
}
