//! `Connection: close` on a response sent before its request's body was
//! read to the end.
//!
//! Many refusals (a wrong `Host`, another origin, a wrong `Content-Type`, a
//! body over its limit) answer without reading the body. hyper then drains
//! what has already arrived and, when more is still on its way, closes the
//! connection after the response. Without a header saying so, a client that
//! keeps connections alive sends its next request on that socket and gets
//! the close instead of an answer (reqwest: `IncompleteMessage`). Saying
//! `Connection: close` makes it open a new connection instead.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Middleware of the whole application.
pub async fn close_if_unread(req: Request, next: Next) -> Response {
    if !has_body(&req) {
        return next.run(req).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(Watched {
            inner: body,
            ended: ended.clone(),
        })
    });
    let mut resp = next.run(req).await;
    if !ended.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Whether the request says a body follows.
fn has_body(req: &Request) -> bool {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The response head to one request sent over a fresh connection.
    async fn head_of(path: &str, body: &str) -> String {
        let app = Router::new()
            .route(
                "/read",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route("/refuse", post(|| async { "refused unread" }))
            .layer(axum::middleware::from_fn(close_if_unread));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    }

    #[tokio::test]
    async fn only_a_response_that_left_the_body_unread_closes_the_connection() {
        let read = head_of("/read", "abc").await;
        assert!(!read.contains("connection: close"), "{read}");
        let refused = head_of("/refuse", "abc").await;
        assert!(refused.contains("connection: close"), "{refused}");
        let empty = head_of("/refuse", "").await;
        assert!(!empty.contains("connection: close"), "no body: {empty}");
    }
}
