//! Checks every request passes before any handler sees it: the `Host` it
//! names, where it comes from, and (per endpoint) the type of its body.
//!
//! - **Host.** A page on another site can make a browser send requests to a
//!   server on the victim's loopback or LAN by resolving its own name to that
//!   address (DNS rebinding). Such a request names the attacker's host, so
//!   only hosts the server is known by are served: the listen address (any
//!   address when it listens on all of them), `localhost` when it listens on
//!   loopback, and the `--allowed-host` names. The port is not compared: a
//!   tunnel (`ssh -L`) or a port mapping changes it.
//! - **Origin.** A request that changes something (any method but GET, HEAD
//!   and OPTIONS) from a page of another origin is refused, whether or not it
//!   carries a token: browsers say where a request comes from in `Origin`
//!   and `Sec-Fetch-Site`. Clients that are not browsers send neither.
//! - **Content type.** A JSON endpoint takes `application/json` only, the
//!   module upload only the types it declares, so that a form on another
//!   site cannot send a body the API would read.

use super::AppState;
use super::errors::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

/// The media type of every JSON body.
pub const JSON: &str = "application/json";

/// Host names a server answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    listen: IpAddr,
    /// Lowercase names (or IP literals) from `--allowed-host`; `*` is any.
    names: Vec<String>,
}

impl AllowedHosts {
    pub fn new(listen: SocketAddr, names: &[String]) -> AllowedHosts {
        AllowedHosts {
            listen: listen.ip(),
            // A port given with a name is ignored, as in requests.
            names: names
                .iter()
                .filter_map(|n| match n.trim() {
                    "*" => Some("*".to_string()),
                    n => host_of(n),
                })
                .collect(),
        }
    }

    /// Whether a request naming `authority` (a `Host` header's value:
    /// `name`, `name:port`, `1.2.3.4:80`, `[::1]:80`) may be served.
    pub fn allows(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority) else {
            return false;
        };
        if self.names.iter().any(|n| n == "*" || *n == host) {
            return true;
        }
        match host.parse::<IpAddr>() {
            // An IP literal cannot be rebound to another address.
            Ok(ip) => self.listen.is_unspecified() || ip == self.listen,
            Err(_) => host == "localhost" && self.listen.is_loopback(),
        }
    }
}

/// The host of an authority, lowercase, without port, brackets or a final
/// dot; `None` when it is not one.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.trim_end_matches('.');
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_');
    (!host.is_empty() && host.chars().all(plain)).then(|| host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The authority a request was sent to: its `Host` header, else the URI's.
fn request_authority(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Middleware of the whole application: the `Host` must be one this server
/// is known by.
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if request_authority(&req).is_some_and(|a| state.allowed_hosts.allows(a)) {
        return next.run(req).await;
    }
    tracing::warn!(
        host = ?req.headers().get(header::HOST),
        "request refused: its Host is not this server's (see --allowed-host)"
    );
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "host-not-allowed",
        "this server does not answer to that Host; its operator can add the name with --allowed-host",
    )
    .into_response()
}

/// Middleware of `wasmq worker --metrics-listen` without a token: the
/// endpoint is on loopback, and only loopback names may reach it.
pub async fn check_host_of(hosts: AllowedHosts, req: Request, next: Next) -> Response {
    if request_authority(&req).is_some_and(|a| hosts.allows(a)) {
        return next.run(req).await;
    }
    (
        StatusCode::BAD_REQUEST,
        "this server does not answer to that Host\n",
    )
        .into_response()
}

/// Methods that do not change anything (and that a page of another origin
/// may send without asking).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the browser says the request comes from a page of this server's
/// own origin (or from no page: a bookmark, a typed address, a client that
/// is not a browser).
pub fn same_origin(h: &HeaderMap) -> bool {
    let text = |name| h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = text(header::ORIGIN.as_str()) else {
        return true;
    };
    // `Origin: null` (a sandboxed frame, a redirect across sites) is foreign.
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The scheme is not compared: behind a TLS proxy the page is https and
    // this server sees plain HTTP.
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Middleware of the whole application: a request that changes something
/// is refused when it comes from another origin.
pub async fn refuse_cross_origin(req: Request, next: Next) -> Response {
    if is_safe(req.method()) || same_origin(req.headers()) {
        return next.run(req).await;
    }
    tracing::warn!(
        method = %req.method(),
        path = req.uri().path(),
        origin = ?req.headers().get(header::ORIGIN),
        "request refused: it comes from another origin"
    );
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cross-origin",
        "requests from another origin may not change anything here",
    )
    .into_response()
}

/// The media type of a `Content-Type` value: lowercase, without parameters.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request may reach an endpoint whose declared body types are
/// `declared` (none: the endpoint reads no body, and a body it is sent must
/// still be JSON). The error is a 415.
pub fn check_content_type(declared: &[&str], headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| media_type(v.to_str().unwrap_or_default()));
    let accepted: &[&str] = if declared.is_empty() {
        &[JSON]
    } else {
        declared
    };
    match given {
        None if declared.is_empty() => Ok(()),
        Some(t) if accepted.contains(&t.as_str()) => Ok(()),
        given => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "this endpoint takes {} (the request has {})",
                accepted.join(" or "),
                given.as_deref().unwrap_or("no Content-Type")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn hosts(listen: &str, names: &[&str]) -> AllowedHosts {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new(listen.parse().unwrap(), &names)
    }

    #[test]
    fn hosts_are_the_listen_address_localhost_and_the_allowed_names() {
        let lo = hosts("127.0.0.1:8080", &[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "127.0.0.1:9000",
            "localhost:8080",
            "LOCALHOST",
            "localhost.:1",
        ] {
            assert!(lo.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "127.0.0.1:80:80",
            "127.0.0.1:port",
            "",
            "user@127.0.0.1",
            "[::1]:8080",
        ] {
            assert!(!lo.allows(bad), "{bad}");
        }
        let v6 = hosts("[::1]:8080", &[]);
        assert!(v6.allows("[::1]:8080") && v6.allows("localhost:8080"));
        assert!(!v6.allows("[::1"));
        let any = hosts("0.0.0.0:8080", &["wasmq.example.com:443", ""]);
        for ok in [
            "10.1.2.3:8080",
            "[fe80::1]:8080",
            "wasmq.example.com",
            "WASMQ.example.com:443",
        ] {
            assert!(any.allows(ok), "{ok}");
        }
        for bad in ["localhost:8080", "other.example.com", "example.com"] {
            assert!(!any.allows(bad), "{bad}");
        }
        assert!(hosts("0.0.0.0:1", &["*"]).allows("anything.example"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origins_are_compared_with_the_host() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[host])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "https://127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "none")])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:9999")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-site")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:8080"
        )])));
    }

    #[test]
    fn content_types_are_the_declared_ones() {
        let json = headers(&[("content-type", "Application/JSON; charset=utf-8")]);
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let text = headers(&[("content-type", "text/plain")]);
        let wasm = headers(&[("content-type", "application/wasm")]);
        let none = HeaderMap::new();
        assert!(check_content_type(&[JSON], &json).is_ok());
        for bad in [&form, &text, &wasm, &none] {
            let e = check_content_type(&[JSON], bad).unwrap_err();
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        let upload = [
            "application/wasm",
            "application/octet-stream",
            "multipart/form-data",
        ];
        assert!(check_content_type(&upload, &wasm).is_ok());
        assert!(
            check_content_type(
                &upload,
                &headers(&[("content-type", "multipart/form-data; boundary=x")])
            )
            .is_ok()
        );
        assert!(check_content_type(&upload, &text).is_err());
        assert!(check_content_type(&upload, &none).is_err());
        // No body declared: nothing, or JSON.
        assert!(check_content_type(&[], &none).is_ok());
        assert!(check_content_type(&[], &json).is_ok());
        assert!(check_content_type(&[], &form).is_err());
        assert!(check_content_type(&[], &text).is_err());
    }
}
