//! The API's error type: every failure is `{"error": {"kind", "message"}}`
//! with the status that says whose fault it was.

use crate::client::ClientError;
use crate::runtime::LoadError;
use crate::store::StoreError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable name (`not-found`, `illegal-transition`, …).
    pub kind: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    kind: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// A failure that is not the caller's: logged in full, answered briefly.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                kind: self.kind,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found"),
            StoreError::IllegalTransition { .. } => (StatusCode::CONFLICT, "illegal-transition"),
            StoreError::ModuleInUse { .. } => (StatusCode::CONFLICT, "module-in-use"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid-argument"),
            StoreError::Database(_) | StoreError::Migrate(_) => return ApiError::internal(e),
        };
        ApiError::new(status.0, status.1, e.to_string())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Store(s) => s.into(),
            ClientError::Module(LoadError::Module(m)) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-module",
                format!("invalid module: {m}"),
            ),
            ClientError::Module(other) => ApiError::internal(other),
            ClientError::InvalidInput(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid-input", e.to_string())
            }
            ClientError::BadReference(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad-reference", e.to_string())
            }
            ClientError::AboveMaximum(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "above-maximum", e.to_string())
            }
            ClientError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let kind = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            _ => "bad-request",
        };
        // 422 (valid JSON, wrong shape) is bad input like any other.
        let status = match r.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        ApiError::new(status, kind, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `Query` and `Path` whose rejections are JSON [`ApiError`]s.
pub struct ApiQuery<T>(pub T);
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Query(t) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(t))
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(ApiPath(t)),
            Err(r) => Err(ApiError::bad_request(r.body_text())),
        }
    }
}

/// How much of an oversized body is read and thrown away before the 413 is
/// sent: a client still sending when the server answers and closes would see
/// a broken pipe instead of the answer.
const DRAIN_MAX: usize = 64 * 1024 * 1024;

/// The whole body, if it is at most `limit` bytes; a 413 otherwise.
pub async fn read_body(body: axum::body::Body, limit: usize) -> ApiResult<bytes::Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > limit.saturating_add(DRAIN_MAX) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}
