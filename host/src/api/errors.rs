//! The API's error type: every failure is `{"error": {"kind", "message"}}`
//! with the status that says whose fault it was. An internal error (500)
//! says only that it happened and under which id: its details (a database
//! message, a file path, a query) are for the operator, in the server log
//! under the same id.

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
    /// Of an internal error: the id its details are logged under.
    pub id: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            id: None,
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

    /// A failure that is not the caller's: logged in full under a fresh id,
    /// answered with that id only.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let id = error_id();
        tracing::error!(error_id = %id, error = %e, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: format!("internal error {id}: the details are in the server log"),
            id: Some(id),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                kind: self.kind,
                message: &self.message,
                id: self.id.as_deref(),
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
            // The API sets no secrets; whatever failed here names no value.
            ClientError::Secret(_) => ApiError::internal(e),
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

/// Middleware of the whole application: a handler that panics answers like
/// any internal error (an id, the details in the log) instead of dropping
/// the connection without an answer.
pub async fn catch_panics(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use futures::FutureExt;
    let path = req.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            ApiError::internal(format!("the handler of {path} panicked: {message}")).into_response()
        }
    }
}

/// Characters of an internal error's id: enough to find one line in a log.
const ERROR_ID_LEN: usize = 12;

fn error_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(ERROR_ID_LEN);
    id
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> serde_json::Value {
        let r = e.into_response();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A database error's text reaches the log, never the client.
    #[tokio::test]
    async fn internal_errors_answer_with_an_id_only() {
        let e: ApiError = StoreError::Database(sqlx::Error::Protocol(
            "relation \"secret_table\" does not exist at /var/lib/db".into(),
        ))
        .into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let id = e.id.clone().expect("an id");
        assert_eq!(id.len(), ERROR_ID_LEN);
        let body = body_of(e).await;
        assert_eq!(body["error"]["kind"], "internal");
        assert_eq!(body["error"]["id"], id.as_str());
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&id), "{message}");
        assert!(!body.to_string().contains("secret_table"), "{body}");
        assert!(!body.to_string().contains("/var/lib"), "{body}");
    }

    /// A panic reaches the client as an internal error, not as a dropped
    /// connection.
    #[tokio::test]
    async fn a_panicking_handler_answers_with_an_id() {
        async fn boom() -> &'static str {
            panic!("secret detail of the panic")
        }
        let app = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .layer(axum::middleware::from_fn(catch_panics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let r = reqwest::get(format!("http://{addr}/boom")).await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "internal");
        assert!(body["error"]["id"].is_string(), "{body}");
        assert!(!body.to_string().contains("secret"), "{body}");
    }

    #[tokio::test]
    async fn other_errors_keep_their_message_and_have_no_id() {
        let body = body_of(ApiError::not_found("task x not found")).await;
        assert_eq!(
            body,
            serde_json::json!({"error": {"kind": "not-found", "message": "task x not found"}})
        );
    }
}
