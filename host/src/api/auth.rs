//! Bearer-token authentication for the API, and the dashboard's sessions and
//! CSRF tokens.
//!
//! The token comes from `WASMQ_API_TOKEN` or `--api-token-file`. It is
//! compared in constant time (SHA-256 of both sides, then `subtle`'s
//! `ct_eq`, so neither the content nor the length leaks through timing) and
//! never logged: [`ApiToken`]'s `Debug` prints a placeholder. Without a token
//! the server only binds loopback addresses ([`check_listen`]).
//!
//! A dashboard session is a signed cookie ([`Sessions`]): a random id and an
//! expiry, with an HMAC-SHA256 under a key derived from the API token, so
//! every `wasmq serve` with the same token accepts it (replicas, restarts)
//! and a new token ends every session. Logging out revokes the id in this
//! process. Each session has its own CSRF token, the HMAC of its id, which
//! the dashboard's forms carry.

use super::AppState;
use super::errors::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "wasmq_session";

/// How long a dashboard session lasts unless `--session-ttl` says otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

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

    /// The key that signs dashboard sessions: derived from the token, so the
    /// token itself never sits in a cookie jar and a new token ends every
    /// session.
    fn session_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"wasmq-dashboard-session-key\0");
        h.update(self.digest);
        h.finalize().into()
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A dashboard viewer's session, from a valid cookie (or the anonymous one
/// when the server has no token).
#[derive(Clone, Debug)]
pub struct Session {
    /// 32 hex digits; "anonymous" without a token.
    id: String,
    /// False for the anonymous session of a server without a token.
    pub logged_in: bool,
    csrf: String,
}

impl Session {
    /// The CSRF token the session's forms carry.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a submitted form carries this session's CSRF token.
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| self.csrf.as_bytes().ct_eq(p.as_bytes()).into())
    }
}

/// Issues, checks and revokes dashboard sessions.
pub struct Sessions {
    key: [u8; 32],
    ttl: Duration,
    /// Ids logged out before their expiry, with that expiry (unix seconds),
    /// so that a copy of the cookie kept elsewhere is refused too.
    revoked: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).finish()
    }
}

/// The version prefix of a session cookie's value.
const SESSION_FORMAT: &str = "v1";

impl Sessions {
    /// Sessions signed with a key derived from `token`; without one, a key of
    /// this process only (there are no logins then, only the CSRF tokens of
    /// the anonymous session).
    pub fn new(token: Option<&ApiToken>, ttl: Duration) -> Sessions {
        Sessions {
            key: token.map_or_else(rand::random, ApiToken::session_key),
            ttl,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn csrf_for(&self, id: &str) -> String {
        hex::encode(hmac_sha256(&self.key, &[b"csrf|", id.as_bytes()]))
    }

    fn mac(&self, id: &str, expires: i64) -> [u8; 32] {
        hmac_sha256(
            &self.key,
            &[
                b"session|",
                SESSION_FORMAT.as_bytes(),
                b"|",
                id.as_bytes(),
                b"|",
                expires.to_string().as_bytes(),
            ],
        )
    }

    /// The session of a server without a token.
    pub fn anonymous(&self) -> Session {
        let id = "anonymous".to_string();
        Session {
            csrf: self.csrf_for(&id),
            id,
            logged_in: false,
        }
    }

    /// A new session expiring `ttl` from `now` (unix seconds): its cookie
    /// value and the session.
    pub fn issue(&self, now: i64) -> (String, Session) {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let expires = now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let value = format!(
            "{SESSION_FORMAT}.{id}.{expires}.{}",
            hex::encode(self.mac(&id, expires))
        );
        let session = Session {
            csrf: self.csrf_for(&id),
            id,
            logged_in: true,
        };
        (value, session)
    }

    /// The session of a cookie value that is well formed, signed by this
    /// key, not expired at `now` and not logged out.
    pub fn verify(&self, cookie: &str, now: i64) -> Option<Session> {
        let mut parts = cookie.split('.');
        let (Some(SESSION_FORMAT), Some(id), Some(expires), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: i64 = expires.parse().ok()?;
        let mac = hex::decode(mac).ok()?;
        let ok: bool = self.mac(id, expires)[..].ct_eq(&mac[..]).into();
        if !ok || expires <= now {
            return None;
        }
        if self.revoked.lock().unwrap().contains_key(id) {
            return None;
        }
        Some(Session {
            csrf: self.csrf_for(id),
            id: id.to_string(),
            logged_in: true,
        })
    }

    /// Logs `session` out: its cookie is refused from now on, in this process.
    pub fn revoke(&self, session: &Session, now: i64) {
        if !session.logged_in {
            return;
        }
        let expires = now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let mut revoked = self.revoked.lock().unwrap();
        // Forget the ids whose cookies have expired anyway.
        revoked.retain(|_, until| *until > now);
        revoked.insert(session.id.clone(), expires);
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
    match &state.token {
        Some(token) => bearer_checked(token, req, next).await,
        None => next.run(req).await,
    }
}

/// Runs `next` when `req` carries `token` as its bearer token; a 401 (none
/// given) or 403 (another one) otherwise.
pub async fn bearer_checked(token: &ApiToken, req: Request, next: Next) -> Response {
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
        assert!(ApiToken::new("short").is_err());
    }

    /// RFC 4231, test cases 1, 2 and 6 (a key longer than the block).
    #[test]
    fn hmac_matches_the_rfc_vectors() {
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sessions_are_signed_expire_and_can_be_revoked() {
        let t = ApiToken::new("correct-horse-battery-staple").unwrap();
        let sessions = Sessions::new(Some(&t), Duration::from_secs(100));
        let now = 1_000_000;
        let (cookie, s) = sessions.issue(now);
        assert!(!cookie.contains("horse"));
        let back = sessions.verify(&cookie, now + 99).expect("valid");
        assert!(back.logged_in);
        assert_eq!(back.csrf(), s.csrf());
        assert!(back.csrf_matches(Some(s.csrf())));
        assert!(!back.csrf_matches(Some("00")));
        assert!(!back.csrf_matches(None));
        // Expired.
        assert!(sessions.verify(&cookie, now + 100).is_none());
        // Tampered: a later expiry under the old signature, another id.
        let parts: Vec<&str> = cookie.split('.').collect();
        let later = format!("v1.{}.{}.{}", parts[1], now + 10_000, parts[3]);
        assert!(sessions.verify(&later, now).is_none());
        let other_id = format!("v1.{}.{}.{}", "0".repeat(32), parts[2], parts[3]);
        assert!(sessions.verify(&other_id, now).is_none());
        assert!(sessions.verify("garbage", now).is_none());
        assert!(sessions.verify(&format!("{cookie}.x"), now).is_none());
        // Another server with the same token accepts it; another token does not.
        let same = Sessions::new(Some(&t), Duration::from_secs(100));
        assert!(same.verify(&cookie, now).is_some());
        let other = Sessions::new(
            Some(&ApiToken::new("another-token-0123456789").unwrap()),
            Duration::from_secs(100),
        );
        assert!(other.verify(&cookie, now).is_none());
        // Each session has its own CSRF token.
        let (_, s2) = sessions.issue(now);
        assert_ne!(s.csrf(), s2.csrf());
        // Logged out.
        sessions.revoke(&back, now);
        assert!(sessions.verify(&cookie, now + 1).is_none());
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
