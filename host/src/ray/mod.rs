//! A client of Ray's Job Submission REST API: jobs (submit, status, logs,
//! stop, delete, list), `working_dir` packages, and token discovery.
//!
//! This module knows nothing of tasks, the runtime or the store: the cluster
//! worker (`worker::cluster`) decides what to ship and what a job means.
//! Ray's behaviour as measured (token auth, 500 on a duplicate submission
//! id, packages garbage-collected, modes in zips) is in
//! `platform-notes.md`, section 1.

mod auth;
mod client;
mod error;
mod package;
mod types;

pub use auth::{ENV_TOKEN, ENV_TOKEN_PATH, Token, TokenSource};
pub use client::{
    ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_BASE,
    DEFAULT_TRIES, DEFAULT_UPLOAD_TIMEOUT, RayClient,
};
pub use error::RayError;
pub use package::{Package, PackageEntry, PackageError};
pub use types::{
    JobDetails, JobStatus, RUNTIME_ENV_SETUP_FAILURE, RuntimeEnv, SubmitRequest, SubmitResponse,
    VersionInfo,
};
