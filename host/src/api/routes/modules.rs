//! `/api/v1/modules`: upload (raw body or multipart), list, show, delete.

use super::{Endpoint, In, endpoint};
use crate::api::AppState;
use crate::api::errors::{ApiError, ApiResult};
use crate::api::errors::{ApiPath, ApiQuery, read_body};
use crate::client::parse_reference;
use crate::store::{ModuleRecord, Store};
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use serde::Deserialize;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint("post", "/api/v1/modules", upload)
            .doc(
                "modules",
                "Upload a task module: the raw component as the body (`name` and `version` \
                 in the query) or multipart/form-data with fields `file`, `name`, `version`. \
                 It is validated against the task world before it is stored.",
            )
            .params(&[
                (
                    "name",
                    In::Query,
                    "string",
                    false,
                    "Module name (raw uploads)",
                ),
                (
                    "version",
                    In::Query,
                    "string",
                    false,
                    "Version; default: the next integer",
                ),
            ])
            .body(&[
                ("application/wasm", "Binary"),
                ("application/octet-stream", "Binary"),
                ("multipart/form-data", "ModuleUpload"),
            ])
            .responses(&[
                (201, "Stored", "Module"),
                (
                    200,
                    "These bytes were already stored under this name",
                    "Module",
                ),
                (
                    400,
                    "Not a valid task module (the reason is in the message)",
                    "Error",
                ),
                (409, "NAME@VERSION already holds other bytes", "Error"),
                (413, "Larger than the module size limit", "Error"),
            ]),
        endpoint("get", "/api/v1/modules", list)
            .doc("modules", "Every module version, by name then age")
            .responses(&[(200, "The modules", "ModuleList")]),
        endpoint("get", "/api/v1/modules/{reference}", show)
            .doc("modules", "One module version (`NAME` is the latest)")
            .params(&[REFERENCE])
            .responses(&[(200, "The module", "Module"), (404, "Unknown", "Error")]),
        endpoint("delete", "/api/v1/modules/{reference}", delete)
            .doc(
                "modules",
                "Delete NAME@VERSION, or every version of NAME; refused while queued or \
                 running tasks use it unless `force=true`",
            )
            .params(&[
                REFERENCE,
                (
                    "force",
                    In::Query,
                    "boolean",
                    false,
                    "Delete even while tasks use it",
                ),
            ])
            .responses(&[
                (200, "Deleted", "Deleted"),
                (404, "Unknown", "Error"),
                (409, "In use by queued or running tasks", "Error"),
            ]),
    ]
}

const REFERENCE: super::Param = (
    "reference",
    In::Path,
    "string",
    true,
    "NAME or NAME@VERSION",
);

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
    version: Option<String>,
}

async fn upload(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    req: Request,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    let limit = state.max_module_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Multipart framing adds a little to the module's own size.
    if declared.is_some_and(|n| n > limit + 64 * 1024) {
        return Err(read_body(req.into_body(), limit)
            .await
            .err()
            .unwrap_or_else(|| ApiError::too_large(limit)));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (name, version, bytes) = if multipart {
        let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit + 64 * 1024)));
        let mut form = Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let (mut name, mut version, mut bytes) = (q.name, q.version, None);
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            let field_name = field.name().unwrap_or_default().to_string();
            match field_name.as_str() {
                "name" => name = Some(field.text().await.map_err(multipart_error)?),
                "version" => version = Some(field.text().await.map_err(multipart_error)?),
                "file" | "module" => bytes = Some(field.bytes().await.map_err(multipart_error)?),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unexpected form field {other:?} (expected file, name, version)"
                    )));
                }
            }
        }
        let bytes = bytes.ok_or_else(|| ApiError::bad_request("the form has no `file` field"))?;
        (name, version, bytes)
    } else {
        let bytes = read_body(req.into_body(), limit).await?;
        (q.name, q.version, bytes)
    };
    if bytes.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    let name = name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("a module name is required (`name`)"))?;
    let version = version.filter(|v| !v.is_empty());
    let m = state
        .client
        .push_module(&state.runtime, &name, version.as_deref(), bytes.to_vec())
        .await?;
    let status = if m.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(module = %m.reference(), sha256 = %m.sha256, created = m.created, "module uploaded");
    Ok((status, Json(m)))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(e.status(), "too-large", e.body_text());
    }
    ApiError::bad_request(e.body_text())
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let modules = state.client.store().list_modules().await?;
    Ok(Json(serde_json::json!({ "modules": modules })))
}

async fn show(
    State(state): State<AppState>,
    ApiPath(reference): ApiPath<String>,
) -> ApiResult<Json<ModuleRecord>> {
    let (name, version) = parse_reference(&reference)?;
    Ok(Json(
        state.client.store().resolve_module(name, version).await?,
    ))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(state): State<AppState>,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (name, version) = parse_reference(&reference)?;
    let n = state
        .client
        .store()
        .delete_module(name, version, q.force)
        .await?;
    if n == 0 {
        return Err(ApiError::not_found(format!("module {reference} not found")));
    }
    tracing::info!(module = %reference, versions = n, "module deleted");
    Ok(Json(serde_json::json!({ "deleted": n })))
}
