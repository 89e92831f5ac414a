//! Errors of the Ray client.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RayError {
    /// No answer: connection refused or reset, DNS, or a timeout, after the
    /// client's retries.
    #[error("Ray cluster at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// 401: the cluster has token auth on and no token was sent.
    #[error(
        "Ray cluster at {url} requires a token (401): set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, \
         put it in ~/.ray/auth_token, or pass --ray-token-file"
    )]
    Unauthorized { url: String },
    /// 403: the token was refused.
    #[error("Ray cluster at {url} refused the auth token (403, token from {source_name})")]
    Forbidden { url: String, source_name: String },
    /// 404 on a job or package.
    #[error("not found on the Ray cluster: {what}: {message}")]
    NotFound { what: String, message: String },
    /// The submission id is taken: the job was submitted before (Ray
    /// answers 500 with "already exists" in its text body).
    #[error("a Ray job with submission id {submission_id} already exists")]
    AlreadyExists { submission_id: String },
    /// Any other error status, after retries for 5xx.
    #[error("Ray answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error("unexpected answer from Ray to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("cannot read the Ray auth token from {}: {message}", path.display())]
    Token { path: PathBuf, message: String },
    #[error("invalid Ray address {url:?}: {message}")]
    Address { url: String, message: String },
}

impl RayError {
    /// The cluster could not be reached or is failing (5xx): worth trying
    /// again later, and not the task's fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RayError::Unreachable { .. } => true,
            RayError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
