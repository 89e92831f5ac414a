//! The `/api/v1` endpoints, one file per resource. Each endpoint is one
//! [`Endpoint`] row: the router and the OpenAPI document are both built from
//! [`endpoints`], so the document cannot miss a route.

mod modules;
pub(super) mod system;
pub(super) mod tasks;

use super::AppState;
use super::errors::ApiError;
use super::guard::check_content_type;
use axum::Router;
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, get, on};

use system::{healthz, readyz};

/// Where a parameter travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
}

/// A documented parameter: name, location, JSON type, required, description.
pub type Param = (&'static str, In, &'static str, bool, &'static str);

/// One operation: its documentation and its handler.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// Request body: (media type, schema name in the document's components).
    pub body: &'static [(&'static str, &'static str)],
    /// (status, description, schema name or "" for none).
    pub responses: &'static [(u16, &'static str, &'static str)],
    pub handler: MethodRouter<AppState>,
}

/// Builds an [`Endpoint`] whose method router serves exactly `method`.
pub(crate) fn endpoint<H, T>(method: &'static str, path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = match method {
        "get" => MethodFilter::GET,
        "post" => MethodFilter::POST,
        "delete" => MethodFilter::DELETE,
        "put" => MethodFilter::PUT,
        other => panic!("unsupported method {other}"),
    };
    Endpoint {
        method,
        path,
        tag: "",
        summary: "",
        params: &[],
        body: &[],
        responses: &[],
        handler: on(filter, handler),
    }
}

impl Endpoint {
    pub fn doc(mut self, tag: &'static str, summary: &'static str) -> Self {
        self.tag = tag;
        self.summary = summary;
        self
    }
    pub fn params(mut self, params: &'static [Param]) -> Self {
        self.params = params;
        self
    }
    pub fn body(mut self, body: &'static [(&'static str, &'static str)]) -> Self {
        self.body = body;
        self
    }
    pub fn responses(mut self, responses: &'static [(u16, &'static str, &'static str)]) -> Self {
        self.responses = responses;
        self
    }
}

/// Every `/api/v1` operation, the OpenAPI document's own included.
pub fn endpoints() -> Vec<Endpoint> {
    let mut all = Vec::new();
    all.extend(modules::endpoints());
    all.extend(tasks::endpoints());
    all.extend(system::endpoints());
    all.push(
        endpoint("get", "/api/v1/openapi.json", super::openapi::document)
            .doc("meta", "This OpenAPI 3.1 document")
            .responses(&[(200, "The document", "")]),
    );
    all
}

/// Every endpoint, each taking only the body types it declares
/// ([`check_content_type`]).
pub(super) fn router() -> Router<AppState> {
    let mut r = Router::new();
    for e in endpoints() {
        let declared: Vec<&'static str> = e.body.iter().map(|&(media, _)| media).collect();
        let handler = e.handler.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let checked = check_content_type(&declared, req.headers());
                async move {
                    match checked {
                        Ok(()) => next.run(req).await,
                        Err(e) => e.into_response(),
                    }
                }
            },
        ));
        r = r.route(e.path, handler);
    }
    r
}

/// `/healthz` and `/readyz`: unauthenticated, for probes.
pub(super) fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub(super) async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "no-route",
        format!("no such endpoint: {}", uri.path()),
    )
}

/// Shared parameter rows.
pub(crate) const TASK_ID: Param = ("id", In::Path, "string", true, "Task id (UUID)");
