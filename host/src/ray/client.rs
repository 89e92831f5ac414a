//! A typed client of Ray's Job Submission REST API (the dashboard's HTTP
//! port, `http://HEAD:8265`), without Ray's Python SDK.

use super::auth::Token;
use super::error::RayError;
use super::types::*;
use reqwest::{Method, StatusCode, Url};
use std::time::Duration;
use tracing::debug;

/// Timeout of one request (uploads have their own).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one package upload.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per call on connection errors and 5xx answers.
pub const DEFAULT_TRIES: u32 = 3;
/// First delay between tries; doubles each time.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(200);

/// In the text of Ray's 500 answer to a duplicate submission id.
const ALREADY_EXISTS: &str = "already exists";

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
    pub connect_timeout: Duration,
    pub tries: u32,
    pub retry_base: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tries: DEFAULT_TRIES,
            retry_base: DEFAULT_RETRY_BASE,
        }
    }
}

/// One client per cluster, cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct RayClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
    config: ClientConfig,
}

/// The body of a request, rebuilt for every try.
enum Body<'a> {
    None,
    Json(bytes::Bytes),
    Upload(&'a bytes::Bytes),
}

impl RayClient {
    /// `address` is the dashboard URL, e.g. `http://127.0.0.1:8265`.
    pub fn new(
        address: &str,
        token: Option<Token>,
        config: ClientConfig,
    ) -> Result<RayClient, RayError> {
        let bad = |message: String| RayError::Address {
            url: address.to_string(),
            message,
        };
        let base = Url::parse(address).map_err(|e| bad(e.to_string()))?;
        if base.scheme() != "http" {
            return Err(bad(
                "use the dashboard's http:// address, e.g. http://HEAD:8265".into(),
            ));
        }
        if base.cannot_be_a_base() {
            return Err(bad("not a base URL".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(RayClient {
            http,
            base,
            token,
            config,
        })
    }

    pub fn address(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        u.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(segments);
        u
    }

    /// Sends with retries on connection errors and 5xx; returns the body of a
    /// 2xx answer. `what` names the call in errors.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
    ) -> Result<bytes::Bytes, RayError> {
        let mut delay = self.config.retry_base;
        let tries = self.config.tries.max(1);
        let mut last = None;
        for attempt in 1..=tries {
            if attempt > 1 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(t) = &self.token {
                req = req.bearer_auth(&t.secret);
            }
            req = match &body {
                Body::None => req,
                Body::Json(v) => req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(v.clone()),
                Body::Upload(b) => req.timeout(self.config.upload_timeout).body((*b).clone()),
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    debug!(what, attempt, error = %e, "Ray request failed");
                    last = Some(RayError::Unreachable {
                        url: self.address().to_string(),
                        message: error_chain(&e),
                    });
                    continue;
                }
            };
            let status = resp.status();
            let text_or_bytes = resp.bytes().await;
            let bytes = match text_or_bytes {
                Ok(b) => b,
                Err(e) => {
                    last = Some(RayError::Unreachable {
                        url: self.address().to_string(),
                        message: format!("reading the answer: {}", error_chain(&e)),
                    });
                    continue;
                }
            };
            if status.is_success() {
                return Ok(bytes);
            }
            let text = String::from_utf8_lossy(&bytes);
            // A taken submission id is a 500 too, but trying again cannot help.
            let retry = status.is_server_error() && !text.contains(ALREADY_EXISTS);
            match self.status_error(status, &text, what) {
                e @ RayError::Status { .. } if retry => {
                    debug!(what, attempt, %status, "Ray answered with a server error");
                    last = Some(e);
                }
                e => return Err(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    fn status_error(&self, status: StatusCode, text: &str, what: &str) -> RayError {
        let url = self.address().to_string();
        match status {
            StatusCode::UNAUTHORIZED => RayError::Unauthorized { url },
            StatusCode::FORBIDDEN => RayError::Forbidden {
                url,
                source_name: self
                    .token
                    .as_ref()
                    .map_or("nowhere".into(), |t| t.source.to_string()),
            },
            StatusCode::NOT_FOUND => RayError::NotFound {
                what: what.into(),
                message: last_line(text),
            },
            _ => RayError::Status {
                status: status.as_u16(),
                what: what.into(),
                message: last_line(text),
            },
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        what: &str,
    ) -> Result<T, RayError> {
        let bytes = self
            .call(Method::GET, self.url(segments), Body::None, what)
            .await?;
        decode(&bytes, what)
    }

    /// `GET /api/version`: also checks that the token is accepted.
    pub async fn version(&self) -> Result<VersionInfo, RayError> {
        self.get_json(&["api", "version"], "GET /api/version").await
    }

    /// `POST /api/jobs/`. A taken `submission_id` is
    /// [`RayError::AlreadyExists`] (Ray answers 500 with "already exists"),
    /// which is never retried: the job is there, attach to it.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<String, RayError> {
        let what = "POST /api/jobs/";
        let r = self
            .call(
                Method::POST,
                self.url(&["api", "jobs", ""]),
                Body::Json(
                    serde_json::to_vec(req)
                        .expect("plain data serializes")
                        .into(),
                ),
                what,
            )
            .await;
        match r {
            Ok(bytes) => Ok(decode::<SubmitResponse>(&bytes, what)?.submission_id),
            Err(RayError::Status {
                status: 500,
                message,
                ..
            }) if message.contains(ALREADY_EXISTS) => Err(RayError::AlreadyExists {
                submission_id: req.submission_id.clone().unwrap_or_default(),
            }),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/jobs/ID`.
    pub async fn job(&self, submission_id: &str) -> Result<JobDetails, RayError> {
        self.get_json(
            &["api", "jobs", submission_id],
            &format!("job {submission_id}"),
        )
        .await
    }

    /// `GET /api/jobs/`: every job the cluster remembers.
    pub async fn list(&self) -> Result<Vec<JobDetails>, RayError> {
        self.get_json(&["api", "jobs", ""], "GET /api/jobs/").await
    }

    /// `GET /api/jobs/ID/logs`: stdout and stderr merged, with Ray's own
    /// lines interleaved.
    pub async fn logs(&self, submission_id: &str) -> Result<String, RayError> {
        let r: LogsResponse = self
            .get_json(
                &["api", "jobs", submission_id, "logs"],
                &format!("logs of job {submission_id}"),
            )
            .await?;
        Ok(r.logs)
    }

    /// `POST /api/jobs/ID/stop`: true if the job was running and is being
    /// stopped, false if it had already ended.
    pub async fn stop(&self, submission_id: &str) -> Result<bool, RayError> {
        let what = format!("stop job {submission_id}");
        let bytes = self
            .call(
                Method::POST,
                self.url(&["api", "jobs", submission_id, "stop"]),
                Body::None,
                &what,
            )
            .await?;
        Ok(decode::<StopResponse>(&bytes, &what)?.stopped)
    }

    /// `DELETE /api/jobs/ID`; Ray refuses (500) while the job is not terminal.
    pub async fn delete(&self, submission_id: &str) -> Result<bool, RayError> {
        let what = format!("delete job {submission_id}");
        let bytes = self
            .call(
                Method::DELETE,
                self.url(&["api", "jobs", submission_id]),
                Body::None,
                &what,
            )
            .await?;
        Ok(decode::<DeleteResponse>(&bytes, &what)?.deleted)
    }

    /// `GET /api/packages/gcs/NAME`: whether the package is stored. Ray also
    /// pins it for 600 s, so a submit right after will find it.
    pub async fn package_exists(&self, name: &str) -> Result<bool, RayError> {
        match self
            .call(
                Method::GET,
                self.url(&["api", "packages", "gcs", name]),
                Body::None,
                &format!("package {name}"),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(RayError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /api/packages/gcs/NAME` with the zip's bytes.
    pub async fn put_package(&self, name: &str, zip: &bytes::Bytes) -> Result<(), RayError> {
        self.call(
            Method::PUT,
            self.url(&["api", "packages", "gcs", name]),
            Body::Upload(zip),
            &format!("upload package {name}"),
        )
        .await
        .map(drop)
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, RayError> {
    serde_json::from_slice(bytes).map_err(|e| RayError::Decode {
        what: what.into(),
        message: format!("{e}: {}", last_line(&String::from_utf8_lossy(bytes))),
    })
}

/// Ray's error bodies are Python tracebacks in text/plain: the last line
/// holds the message. The dashboard wraps its agent's traceback as
/// `RuntimeError: Request failed with status code 400: <traceback>.`, so
/// that the very last line is a lone "."; lines without a letter or digit
/// are skipped.
fn last_line(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.chars().any(char::is_alphanumeric))
        .unwrap_or("(empty body)");
    let mut s: String = line.chars().take(500).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

/// reqwest's errors hide their cause ("error sending request"): show it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ray::TokenSource;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A scripted HTTP server: answers each connection with the next
    /// (status, body) and records "METHOD PATH | authorization".
    async fn fake(script: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in script {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or("").to_string();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("-")
                    .to_string();
                log.lock().unwrap().push(format!("{line} | {auth}"));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn client(url: &str) -> RayClient {
        let token = Token::new("s3cret", TokenSource::Env);
        RayClient::new(
            url,
            Some(token),
            ClientConfig {
                tries: 3,
                retry_base: Duration::from_millis(10),
                request_timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn maps_auth_and_missing_errors() {
        let (url, seen) = fake(vec![
            (401, "Unauthorized: Missing authentication token"),
            (403, "Forbidden: Invalid authentication token"),
            (404, "Job nope-123 does not exist"),
        ])
        .await;
        let c = client(&url);
        assert!(matches!(
            c.version().await,
            Err(RayError::Unauthorized { .. })
        ));
        let e = c.job("x").await.unwrap_err();
        assert!(matches!(e, RayError::Forbidden { .. }), "{e}");
        assert!(e.to_string().contains("RAY_AUTH_TOKEN"), "{e}");
        let e = c.job("nope-123").await.unwrap_err();
        assert!(e.to_string().contains("Job nope-123 does not exist"), "{e}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], "GET /api/version HTTP/1.1 | Bearer s3cret");
        assert_eq!(seen.len(), 3, "4xx answers are not retried: {seen:?}");
    }

    #[tokio::test]
    async fn duplicate_submission_is_not_retried() {
        let (url, seen) = fake(vec![(
            500,
            "Traceback (most recent call last):\n  ...\nValueError: Job with submission_id \
             wasmq-a-1 already exists. Please use a different submission_id.\n",
        )])
        .await;
        let req = SubmitRequest {
            entrypoint: "./wasmq exec".into(),
            submission_id: Some("wasmq-a-1".into()),
            ..Default::default()
        };
        let e = client(&url).submit(&req).await.unwrap_err();
        assert!(
            matches!(&e, RayError::AlreadyExists { submission_id } if submission_id == "wasmq-a-1"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// As Ray 2.60's dashboard answers: its agent's traceback wrapped in
    /// another error, ending with a line holding only ".".
    #[tokio::test]
    async fn duplicate_submission_wrapped_by_the_dashboard() {
        let (url, seen) = fake(vec![(
            500,
            "Traceback (most recent call last):\n  File \"job_head.py\", line 419, in submit_job\n\
             RuntimeError: Request failed with status code 400: Traceback (most recent call last):\n\
             \x20 File \"job_agent.py\", line 48, in submit_job\n\
             ValueError: Job with submission_id wasmq-a-1 already exists. Please use a different \
             submission_id.\n.\n",
        )])
        .await;
        let req = SubmitRequest {
            entrypoint: "./wasmq exec".into(),
            submission_id: Some("wasmq-a-1".into()),
            ..Default::default()
        };
        let e = client(&url).submit(&req).await.unwrap_err();
        assert!(matches!(&e, RayError::AlreadyExists { .. }), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn retries_server_errors_then_succeeds() {
        let (url, seen) = fake(vec![
            (503, "busy"),
            (500, "RuntimeError: something transient"),
            (
                200,
                r#"{"submission_id": "wasmq-b-1", "job_id": "wasmq-b-1"}"#,
            ),
        ])
        .await;
        let req = SubmitRequest {
            entrypoint: "./wasmq exec".into(),
            submission_id: Some("wasmq-b-1".into()),
            ..Default::default()
        };
        assert_eq!(client(&url).submit(&req).await.unwrap(), "wasmq-b-1");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|l| l.starts_with("POST /api/jobs/ HTTP/1.1"))
        );
    }

    #[tokio::test]
    async fn persistent_server_errors_and_refused_connections() {
        let (url, _) = fake(vec![(500, "a"), (500, "b"), (500, "RuntimeError: c")]).await;
        let e = client(&url).logs("j").await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("RuntimeError: c"), "{e}");

        // A port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = client(&format!("http://127.0.0.1:{port}"))
            .version()
            .await
            .unwrap_err();
        assert!(matches!(e, RayError::Unreachable { .. }), "{e}");
        assert!(e.is_unavailable());
    }

    #[tokio::test]
    async fn packages_check_then_upload() {
        let (url, seen) = fake(vec![(404, "Package gcs://p.zip does not exist"), (200, "")]).await;
        let p = crate::ray::Package {
            name: "p.zip".into(),
            bytes: bytes::Bytes::from_static(b"PK"),
        };
        assert!(client(&url).ensure_package(&p).await.unwrap());
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /api/packages/gcs/p.zip "),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("PUT /api/packages/gcs/p.zip "),
            "{seen:?}"
        );
    }

    #[test]
    fn refuses_addresses_that_are_not_http() {
        for bad in ["127.0.0.1:8265", "ray://head:10001", "https://head:8265"] {
            assert!(
                RayClient::new(bad, None, ClientConfig::default()).is_err(),
                "{bad}"
            );
        }
    }
}
