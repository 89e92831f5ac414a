//! Bearer-token authentication for the API and a session cookie for the
//! dashboard.
//!
//! The token comes from `WASMQ_API_TOKEN` or `--api-token-file`. It is
//! compared in constant time (SHA-256 of both sides, then `subtle`'s
//! `ct_eq`, so neither the content nor the length leaks through timing) and
//! never logged: [`ApiToken`]'s `Debug` prints a placeholder. Without a token
//! the server only binds loopback addresses ([`check_listen`]).

use super::AppState;
use super::errors::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "wasmq_session";

#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Surrounding whitespace (a file's trailing newline) is not part of it.
    pub fn new(token: &str) -> Result<ApiToken, String> {
        let token = token.trim();
        if token.len() < 16 {
            return Err("the API token must be at least 16 characters long".into());
        }
        Ok(ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    pub fn from_file(path: &Path) -> Result<ApiToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API token file {}: {e}", path.display()))?;
        ApiToken::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest[..].ct_eq(&d[..]).into()
    }

    /// The value of the dashboard's session cookie: derived from the token,
    /// so the token itself never sits in a cookie jar.
    pub fn session_value(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"wasmq-dashboard-session\0");
        h.update(self.digest);
        hex::encode(h.finalize())
    }

    pub fn session_matches(&self, cookie: &str) -> bool {
        self.session_value()
            .as_bytes()
            .ct_eq(cookie.as_bytes())
            .into()
    }
}

/// Without a token, only loopback addresses may be bound: anyone who can
/// reach the port could otherwise cancel, retry and enqueue.
pub fn check_listen(addr: &SocketAddr, token: Option<&ApiToken>) -> Result<(), String> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without an API token: set WASMQ_API_TOKEN or \
             --api-token-file, or listen on a loopback address (127.0.0.1, [::1])"
        ));
    }
    Ok(())
}

/// Middleware of `/api` and `/metrics`: `Authorization: Bearer TOKEN`.
pub async fn require_bearer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, t)| t.to_string());
    match presented {
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this request needs an `Authorization: Bearer TOKEN` header",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            r
        }
        Some(t) if token.matches(&t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not valid",
        )
        .into_response(),
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_never_print() {
        let t = ApiToken::new("  correct-horse-battery-staple\n").unwrap();
        assert!(t.matches("correct-horse-battery-staple"));
        assert!(!t.matches("correct-horse-battery-stapler"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("horse"));
        assert!(t.session_matches(&t.session_value()));
        assert!(!t.session_matches("00"));
        assert!(ApiToken::new("short").is_err());
    }

    #[test]
    fn loopback_only_without_token() {
        let t = ApiToken::new("0123456789abcdef").unwrap();
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let lo6: SocketAddr = "[::1]:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_listen(&lo, None).is_ok());
        assert!(check_listen(&lo6, None).is_ok());
        assert!(check_listen(&any, None).is_err());
        assert!(check_listen(&any, Some(&t)).is_ok());
    }
}
