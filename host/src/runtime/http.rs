//! Outbound HTTP for runs granted it: `wasi:http/outgoing-handler` behind
//! an allowlist of URL prefixes.
//!
//! Every request the guest makes goes through [`GrantHooks::send_request`],
//! which refuses it before any connection is opened unless
//!
//! - its scheme, host, port and path fall under one of the run's grants
//!   ([`HttpGrant`]);
//! - every address the host name resolves to is public, or the grant names
//!   that very address ([`forbidden_range`]): no server-side request forgery
//!   into loopback, private networks or cloud metadata endpoints;
//! - the run has requests left ([`HttpLimits::max_requests`]).
//!
//! The connection goes to the vetted address, never to the name again, so a
//! second DNS answer cannot switch it. Redirects are not followed here (the
//! guest follows them with a new request, checked like any other). Response
//! bodies count against a per-run byte cap, and every wait is capped by the
//! time the task has left.
//!
//! A refusal reaches the guest as `internal-error("wasmq: …")`, and the
//! operator sees a `warn` line.

use super::limits::{env, parse_duration, parse_size};
use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks,
};

/// Most outbound requests one run may make (refused ones included).
pub const DEFAULT_HTTP_MAX_REQUESTS: u32 = 64;
/// Most response-body bytes one run may read, summed over its requests.
pub const DEFAULT_HTTP_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest wait for a connection, for the first byte of a response, and
/// between two bytes of a body, each; never past the task's deadline.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-run bounds on outbound HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_requests: u32,
    pub max_response_bytes: u64,
    pub timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_requests: DEFAULT_HTTP_MAX_REQUESTS,
            max_response_bytes: DEFAULT_HTTP_MAX_RESPONSE_BYTES,
            timeout: DEFAULT_HTTP_TIMEOUT,
        }
    }
}

impl HttpLimits {
    /// The defaults, overridden by `WASMQ_HTTP_MAX_REQUESTS`,
    /// `WASMQ_HTTP_MAX_RESPONSE_BYTES` and `WASMQ_HTTP_TIMEOUT` where set.
    pub fn from_env() -> Result<HttpLimits, String> {
        let mut limits = HttpLimits::default();
        if let Some(v) = env("WASMQ_HTTP_MAX_REQUESTS") {
            limits.max_requests = v
                .trim()
                .parse()
                .map_err(|_| format!("WASMQ_HTTP_MAX_REQUESTS: `{v}` is not a count"))?;
        }
        if let Some(v) = env("WASMQ_HTTP_MAX_RESPONSE_BYTES") {
            limits.max_response_bytes =
                parse_size(&v).map_err(|e| format!("WASMQ_HTTP_MAX_RESPONSE_BYTES: {e}"))?;
        }
        if let Some(v) = env("WASMQ_HTTP_TIMEOUT") {
            limits.timeout = parse_duration(&v).map_err(|e| format!("WASMQ_HTTP_TIMEOUT: {e}"))?;
        }
        Ok(limits)
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantHost {
    /// Exactly this name (lowercase).
    Name(String),
    /// Any name strictly under this domain (`*.example.com`: `example.com`).
    Subdomains(String),
    /// This address, which the grant then allows even if it is private.
    Ip(IpAddr),
}

/// One `--allow-http` grant: `scheme://host[:port][/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub https: bool,
    pub host: GrantHost,
    pub port: u16,
    /// Starts with `/`; `/` allows every path.
    pub path: String,
}

impl std::str::FromStr for HttpGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{s}`: {why} (expected scheme://host[:port][/path-prefix], e.g. \
                 https://api.example.com, https://*.example.com/v1/, http://127.0.0.1:8080)"
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if rest.contains(['?', '#', '@', '\\']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(bad("no query, fragment, user info, backslash or space"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.split('/').any(|seg| seg == "." || seg == "..") || has_encoded_separator(path) {
            return Err(bad(
                "the path prefix has a dot segment or an encoded separator",
            ));
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let (ip, tail) = after.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
            };
            (GrantHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            (parse_grant_host(host).map_err(|why| bad(&why))?, port)
        };
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        Ok(HttpGrant {
            https,
            host,
            port,
            path: path.to_string(),
        })
    }
}

fn parse_grant_host(host: &str) -> Result<GrantHost, String> {
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(GrantHost::Ip(IpAddr::V4(ip)));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = name.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{host}` is not a host name, `*.` followed by one, or an IP address"
        ));
    }
    // All-numeric names are addresses in disguise (`2130706433`, `127.1`).
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("`{host}` is not a valid IPv4 address"));
    }
    Ok(if wild {
        GrantHost::Subdomains(name)
    } else {
        GrantHost::Name(name)
    })
}

fn has_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    ["%2e", "%2f", "%5c"].iter().any(|p| lower.contains(p))
}

/// The host of a request, as matched against grants.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl HttpGrant {
    fn allows(&self, https: bool, host: &Host, port: u16, path: &str) -> bool {
        if self.https != https || self.port != port {
            return false;
        }
        let host_ok = match (&self.host, host) {
            (GrantHost::Name(g), Host::Name(h)) => g == h,
            (GrantHost::Subdomains(g), Host::Name(h)) => h
                .strip_suffix(g.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            (GrantHost::Ip(g), Host::Ip(h)) => g == h,
            _ => false,
        };
        host_ok && self.allows_path(path)
    }

    fn allows_path(&self, path: &str) -> bool {
        if self.path == "/" {
            return true;
        }
        // Under a prefix, a path that a server could resolve elsewhere is
        // not allowed: `/v1/../admin`, `/v1/%2e%2e/admin`.
        if path.split('/').any(|seg| seg == "." || seg == "..") || has_encoded_separator(path) {
            return false;
        }
        match path.strip_prefix(self.path.as_str()) {
            None => false,
            // `/v1` allows `/v1` and `/v1/…`, not `/v1beta`.
            Some(rest) => self.path.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        }
    }
}

impl std::fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = match &self.host {
            GrantHost::Name(n) => n.clone(),
            GrantHost::Subdomains(n) => format!("*.{n}"),
            GrantHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            GrantHost::Ip(ip) => ip.to_string(),
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Why an address may not be reached unless a grant names it: the range it
/// falls in, or `None` for a public address.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return Some("loopback (::1)");
            }
            if v6.is_unspecified() {
                return Some("unspecified (::)");
            }
            let s = v6.segments();
            if s[0] & 0xfe00 == 0xfc00 {
                return Some("unique local (fc00::/7)");
            }
            if s[0] & 0xffc0 == 0xfe80 {
                return Some("link-local (fe80::/10)");
            }
            // IPv4 addresses carried in IPv6: mapped (::ffff:a.b.c.d),
            // compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4
            // (2002:AABB:CCDD::/48).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4).map(|_| "an IPv4-mapped forbidden address");
            }
            if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return forbidden_v4(v4).map(|_| "an IPv4-embedding forbidden address");
            }
            if s[0] == 0x2002 {
                let v4 =
                    Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
                return forbidden_v4(v4).map(|_| "a 6to4 address of a forbidden one");
            }
            None
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    match o {
        [127, ..] => Some("loopback (127.0.0.0/8)"),
        [10, ..] => Some("private (10.0.0.0/8)"),
        [172, b, ..] if (16..32).contains(&b) => Some("private (172.16.0.0/12)"),
        [192, 168, ..] => Some("private (192.168.0.0/16)"),
        [169, 254, ..] => Some("link-local and cloud metadata (169.254.0.0/16)"),
        [0, ..] => Some("unspecified (0.0.0.0/8)"),
        [100, 100, 100, 200] => Some("cloud metadata (100.100.100.200)"),
        [255, 255, 255, 255] => Some("broadcast"),
        _ => None,
    }
}

/// The TLS client configuration of outbound HTTP: the Mozilla roots of
/// `webpki-roots`, plus the certificates of `extra_ca` (PEM) if given.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    match extra_ca {
        None => tls_config_pem(None),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --http-ca-file {}: {e}", path.display()))?;
            tls_config_pem(Some((&pem, &format!("--http-ca-file {}", path.display()))))
        }
    }
}

/// [`tls_config`] with the extra certificates given as PEM text, and where
/// they came from (for error messages).
pub fn tls_config_pem(
    extra_ca: Option<(&[u8], &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some((pem, origin)) = extra_ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("{origin}: not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{origin}: unusable certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{origin}: no PEM certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// What a run may reach over HTTP: its grants, the TLS roots, the limits.
/// Built once per set of grants and shared by the runs it applies to.
pub struct HttpPolicy {
    grants: Vec<HttpGrant>,
    tls: Arc<rustls::ClientConfig>,
    limits: HttpLimits,
}

impl std::fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("grants", &self.grants)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpPolicy {
    /// `grants` must not be empty. TLS trusts the Mozilla roots of
    /// `webpki-roots`, plus the certificates of `extra_ca` (PEM) if given.
    pub fn new(
        grants: Vec<HttpGrant>,
        extra_ca: Option<&Path>,
        limits: HttpLimits,
    ) -> Result<HttpPolicy, String> {
        HttpPolicy::with_tls(grants, tls_config(extra_ca)?, limits)
    }

    /// A policy over a TLS configuration made once by [`tls_config`] and
    /// shared (a worker makes one policy per set of grants).
    pub fn with_tls(
        grants: Vec<HttpGrant>,
        tls: Arc<rustls::ClientConfig>,
        limits: HttpLimits,
    ) -> Result<HttpPolicy, String> {
        if grants.is_empty() {
            return Err("an HTTP policy needs at least one grant".into());
        }
        Ok(HttpPolicy {
            grants,
            tls,
            limits,
        })
    }

    pub fn grants(&self) -> &[HttpGrant] {
        &self.grants
    }

    pub fn limits(&self) -> HttpLimits {
        self.limits
    }

    /// Whether a request to `uri` falls under a grant (the check made before
    /// the address check, which needs a name lookup).
    pub fn allows(&self, uri: &http::Uri) -> bool {
        self.admit(uri).is_ok()
    }

    /// The grant a request falls under, or why none does.
    fn admit(&self, uri: &http::Uri) -> Result<Target, Refusal> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(Refusal::Scheme),
        };
        let raw_host = uri.host().ok_or(Refusal::NoHost)?;
        let host = match raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => Host::Ip(IpAddr::V6(v6.parse().map_err(|_| Refusal::NoHost)?)),
            None => match raw_host.parse::<Ipv4Addr>() {
                Ok(v4) => Host::Ip(IpAddr::V4(v4)),
                Err(_) => Host::Name(raw_host.to_ascii_lowercase()),
            },
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path();
        let grant = self
            .grants
            .iter()
            .find(|g| g.allows(https, &host, port, path))
            .ok_or(Refusal::NotGranted)?;
        Ok(Target {
            https,
            host,
            port,
            explicit_ip: match grant.host {
                GrantHost::Ip(ip) => Some(ip),
                _ => None,
            },
        })
    }
}

/// Where an admitted request goes.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: Host,
    port: u16,
    /// The address the matching grant names, reachable even if private.
    explicit_ip: Option<IpAddr>,
}

/// Why a request was refused before any connection.
#[derive(Debug)]
enum Refusal {
    NoGrant,
    Scheme,
    NoHost,
    NotGranted,
    TooMany(u32),
    Forbidden {
        host: String,
        ip: IpAddr,
        range: &'static str,
    },
    Unresolved(String),
    Deadline,
}

impl Refusal {
    fn message(&self, url: &str) -> String {
        match self {
            Refusal::NoGrant => format!(
                "wasmq: {url}: this run has no HTTP grant (the operator grants hosts with \
                 `wasmq run --allow-http URL`)"
            ),
            Refusal::Scheme => format!("wasmq: {url}: only http and https requests are allowed"),
            Refusal::NoHost => format!("wasmq: {url}: the request has no valid host"),
            Refusal::NotGranted => format!(
                "wasmq: {url} is not granted to this run (no --allow-http grant matches its \
                 scheme, host, port and path)"
            ),
            Refusal::TooMany(max) => format!(
                "wasmq: {url}: this run already made its {max} HTTP requests \
                 (WASMQ_HTTP_MAX_REQUESTS)"
            ),
            Refusal::Forbidden { host, ip, range } => format!(
                "wasmq: {url}: {host} resolves to {ip}, a {range} address, which only a grant \
                 naming that address allows"
            ),
            Refusal::Unresolved(why) => format!("wasmq: {url}: cannot resolve the host: {why}"),
            Refusal::Deadline => format!("wasmq: {url}: the task has no time left"),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Refusal::NoGrant => "no-grant",
            Refusal::Scheme => "scheme",
            Refusal::NoHost => "no-host",
            Refusal::NotGranted => "not-granted",
            Refusal::TooMany(_) => "too-many-requests",
            Refusal::Forbidden { .. } => "forbidden-address",
            Refusal::Unresolved(_) => "unresolved",
            Refusal::Deadline => "deadline",
        }
    }
}

/// Logs a refusal for the operator and turns it into the guest's error.
fn refuse(url: &str, why: Refusal) -> HttpError {
    let message = why.message(url);
    tracing::warn!(
        url,
        reason = why.kind(),
        "refused an outbound HTTP request: {message}"
    );
    HttpError::InternalError(Some(message))
}

/// The `wasi:http` state of one run.
pub(super) struct HttpRun {
    pub(super) ctx: WasiHttpCtx,
    pub(super) hooks: GrantHooks,
}

impl HttpRun {
    pub(super) fn new(policy: Option<Arc<HttpPolicy>>, deadline: Instant) -> HttpRun {
        HttpRun {
            ctx: WasiHttpCtx::new(),
            hooks: GrantHooks {
                policy,
                requests: 0,
                body_bytes: None,
                deadline,
            },
        }
    }
}

/// Sends the guest's requests that the policy allows, and no others.
pub(super) struct GrantHooks {
    policy: Option<Arc<HttpPolicy>>,
    requests: u32,
    /// Response-body bytes read so far by this run, over all its requests;
    /// made at the first request, so a run that makes none allocates nothing.
    body_bytes: Option<Arc<AtomicU64>>,
    deadline: Instant,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for GrantHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let url = request.uri().to_string();
        self.requests = self.requests.saturating_add(1);
        let admitted = match &self.policy {
            None => Err(Refusal::NoGrant),
            Some(p) if self.requests > p.limits.max_requests => {
                Err(Refusal::TooMany(p.limits.max_requests))
            }
            Some(p) => p.admit(request.uri()).map(|t| (t, p.clone())),
        };
        let body_bytes = self
            .body_bytes
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone();
        let deadline = self.deadline;
        Box::new(async move {
            let (target, policy) = admitted.map_err(|why| refuse(&url, why))?;
            send(
                &url, target, &policy, request, options, deadline, body_bytes,
            )
            .await
        })
    }
}

/// The longest of `wanted` and what is left before `deadline`.
fn capped(wanted: Option<Duration>, default: Duration, deadline: Instant) -> Duration {
    wanted
        .unwrap_or(default)
        .min(deadline.saturating_duration_since(Instant::now()))
}

/// Resolves the target's host and keeps its addresses only if every one of
/// them may be reached.
async fn vetted_addresses(target: &Target, timeout: Duration) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs: Vec<SocketAddr> = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), target.port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => return Err(Refusal::Unresolved("timed out".into())),
                Ok(Err(e)) => return Err(Refusal::Unresolved(e.to_string())),
                Ok(Ok(a)) => a.collect(),
            }
        }
    };
    if addrs.is_empty() {
        return Err(Refusal::Unresolved("no address".into()));
    }
    for a in &addrs {
        if let Some(range) = forbidden_range(a.ip())
            && target.explicit_ip != Some(a.ip())
        {
            return Err(Refusal::Forbidden {
                host: target.host.to_string(),
                ip: a.ip(),
                range,
            });
        }
    }
    Ok(addrs)
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn send(
    url: &str,
    target: Target,
    policy: &HttpPolicy,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    deadline: Instant,
    body_bytes: Arc<AtomicU64>,
) -> SendResult {
    let limits = policy.limits;
    let opts = options.unwrap_or_default();
    let connect_timeout = capped(opts.connect_timeout, limits.timeout, deadline);
    if connect_timeout.is_zero() {
        return Err(refuse(url, Refusal::Deadline));
    }
    let addrs = vetted_addresses(&target, connect_timeout)
        .await
        .map_err(|why| refuse(url, why))?;

    // The vetted addresses, in order; never the name again.
    let connect = async {
        let mut last = None;
        for addr in &addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one address"))
    };
    let tcp = match tokio::time::timeout(connect_timeout, connect).await {
        Err(_) => return Err(HttpError::ConnectionTimeout),
        Ok(Err(e)) => return Err(HttpError::Connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if target.https {
        use rustls::pki_types::ServerName;
        let name = match &target.host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(n) => {
                ServerName::try_from(n.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?
            }
        };
        let connector = tokio_rustls::TlsConnector::from(policy.tls.clone());
        let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // Origin form on the wire: the scheme and authority are in `Host`.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let first_byte = capped(opts.first_byte_timeout, limits.timeout, deadline);
    let response = tokio::time::timeout(first_byte, sender.send_request(request));
    let mut conn = Box::pin(conn);
    let mut response = Box::pin(response);
    let mut conn_done = false;
    // The response needs the connection driven while it is awaited.
    let response = loop {
        tokio::select! {
            biased;
            r = &mut response => break r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = c {
                    return Err(e.into());
                }
            }
        }
    };
    let response = response
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let between = capped(opts.between_bytes_timeout, limits.timeout, deadline);
    let response = response.map(|incoming| {
        WasiBody::new(CappedBody {
            incoming,
            total: body_bytes,
            cap: limits.max_response_bytes,
            between,
            deadline,
            timer: Box::pin(tokio::time::sleep(between)),
            failed: false,
        })
    });
    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async move {
        if conn_done {
            Ok(())
        } else {
            conn.await.map_err(HttpError::from)
        }
    });
    Ok((response, io))
}

/// A response body that counts its bytes against the run's cap and gives up
/// when the server stalls longer than the between-bytes timeout.
struct CappedBody {
    incoming: hyper::body::Incoming,
    total: Arc<AtomicU64>,
    cap: u64,
    between: Duration,
    deadline: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    failed: bool,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let total = this.total.fetch_add(n, Ordering::Relaxed).saturating_add(n);
                    if total > this.cap {
                        this.failed = true;
                        let message = format!(
                            "wasmq: the HTTP response bodies of this run went over the cap of \
                             {} bytes (WASMQ_HTTP_MAX_RESPONSE_BYTES)",
                            this.cap
                        );
                        tracing::warn!(cap = this.cap, "cut an HTTP response body: {message}");
                        return Poll::Ready(Some(Err(HttpError::InternalError(Some(message)))));
                    }
                }
                let next = (Instant::now() + this.between).min(this.deadline);
                this.timer.as_mut().reset(next.into());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn grant(s: &str) -> HttpGrant {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy(grants: &[&str]) -> HttpPolicy {
        HttpPolicy::new(
            grants.iter().map(|g| grant(g)).collect(),
            None,
            HttpLimits::default(),
        )
        .unwrap()
    }

    fn allowed(p: &HttpPolicy, url: &str) -> bool {
        p.admit(&url.parse().unwrap()).is_ok()
    }

    #[test]
    fn grants_parse() {
        let g = grant("https://API.example.com");
        assert_eq!(g.host, GrantHost::Name("api.example.com".into()));
        assert_eq!((g.https, g.port, g.path.as_str()), (true, 443, "/"));
        let g = grant("http://*.example.com:8080/v1/");
        assert_eq!(g.host, GrantHost::Subdomains("example.com".into()));
        assert_eq!((g.https, g.port, g.path.as_str()), (false, 8080, "/v1/"));
        assert_eq!(
            grant("http://127.0.0.1:8080").host,
            GrantHost::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            grant("https://[::1]:8443/x").host,
            GrantHost::Ip("::1".parse().unwrap())
        );
        assert_eq!(grant("http://[::1]").port, 80);
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://",
            "https://exa mple.com",
            "https://user@example.com",
            "https://example.com?q",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:x",
            "https://*.com.*",
            "https://a.*.example.com",
            "https://*",
            "https://-bad.example.com",
            "https://example.com/v1/../admin",
            "https://example.com/v1/%2e%2e/",
            "https://2130706433",
            "https://127.1",
            "https://[::1",
            "https://[zz]:80",
            "https://[::1]x",
        ] {
            assert!(bad.parse::<HttpGrant>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn grants_match_scheme_host_port_and_path() {
        let p = policy(&[
            "https://api.example.com",
            "http://*.example.org:8080/v1",
            "http://127.0.0.1:9000/",
        ]);
        assert!(allowed(&p, "https://api.example.com/anything?q=1"));
        assert!(allowed(&p, "https://API.Example.com:443/"));
        assert!(!allowed(&p, "http://api.example.com/"), "scheme");
        assert!(!allowed(&p, "https://api.example.com:8443/"), "port");
        assert!(!allowed(&p, "https://example.com/"), "host");
        assert!(!allowed(&p, "https://api.example.com.evil.net/"), "suffix");
        assert!(!allowed(&p, "https://evilapi.example.com/"), "prefix");

        assert!(allowed(&p, "http://a.example.org:8080/v1"));
        assert!(allowed(&p, "http://a.b.example.org:8080/v1/x"));
        assert!(!allowed(&p, "http://example.org:8080/v1"), "apex");
        assert!(
            !allowed(&p, "http://xexample.org:8080/v1"),
            "not a subdomain"
        );
        assert!(!allowed(&p, "http://a.example.org:8080/v1beta"), "path");
        assert!(!allowed(&p, "http://a.example.org:8080/v2"), "path");
        assert!(
            !allowed(&p, "http://a.example.org:8080/v1/../admin"),
            "dots"
        );
        assert!(
            !allowed(&p, "http://a.example.org:8080/v1/%2E%2E/admin"),
            "encoded"
        );
        assert!(!allowed(&p, "http://a.example.org/v1"), "port 80");

        assert!(allowed(&p, "http://127.0.0.1:9000/x"));
        assert!(
            !allowed(&p, "http://localhost:9000/x"),
            "a name is not the address"
        );
        assert!(!allowed(&p, "http://127.0.0.2:9000/x"));
    }

    #[test]
    fn address_ranges() {
        let no = |s: &str| forbidden_range(s.parse().unwrap());
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.100.100.200",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(no(bad).is_some(), "{bad} allowed");
        }
        for good in [
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.1.1",
            "100.100.100.201",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "fec0::1",
            "64:ff9b::101:101",
        ] {
            assert_eq!(no(good), None, "{good} refused");
        }
    }

    fn target(host: &str, explicit: Option<&str>) -> Target {
        Target {
            https: false,
            host: match host.parse() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(host.into()),
            },
            port: 80,
            explicit_ip: explicit.map(|e| e.parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn private_addresses_need_a_grant_naming_them() {
        let t = Duration::from_secs(5);
        let r = vetted_addresses(&target("localhost", None), t).await;
        assert!(matches!(r, Err(Refusal::Forbidden { .. })), "{r:?}");
        let r = vetted_addresses(&target("127.0.0.1", None), t).await;
        assert!(matches!(r, Err(Refusal::Forbidden { .. })), "{r:?}");
        let r = vetted_addresses(&target("127.0.0.1", Some("127.0.0.1")), t).await;
        assert_eq!(r.unwrap(), vec!["127.0.0.1:80".parse().unwrap()]);
        let r = vetted_addresses(&target("1.1.1.1", None), t).await;
        assert!(r.is_ok());
    }

    #[test]
    fn requests_are_counted_and_refused_past_the_limit() {
        let mut p = policy(&["http://127.0.0.1:9"]);
        p.limits.max_requests = 2;
        let mut hooks = HttpRun::new(Some(Arc::new(p)), Instant::now()).hooks;
        let req = || {
            http::Request::builder()
                .uri("http://127.0.0.1:9/")
                .body(WasiBody::new(
                    http_body_util::Empty::new().map_err(|e: std::convert::Infallible| match e {}),
                ))
                .unwrap()
        };
        // Deadline already passed: the first two are admitted, then refused
        // for lack of time; the third is refused by the count.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for expected in [
            "no time left",
            "no time left",
            "already made its 2 HTTP requests",
        ] {
            let fut = hooks.send_request(req(), None, Box::new(async { Ok(()) }));
            let err = rt.block_on(Box::into_pin(fut)).err().unwrap().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
