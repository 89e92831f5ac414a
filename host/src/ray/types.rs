//! The JSON shapes of Ray's Job Submission REST API (Ray 2.60), as observed
//! on the wire; see `platform-notes.md` section 1.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// `JobStatus` of Ray. A fast job may go from `Pending` straight to a
/// terminal state: never wait for `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

impl JobStatus {
    /// Stopped, succeeded and failed jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Stopped | JobStatus::Succeeded | JobStatus::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Stopped => "STOPPED",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error_type` of a failed job whose runtime environment (here: the
/// working_dir package) could not be set up.
pub const RUNTIME_ENV_SETUP_FAILURE: &str = "RUNTIME_ENV_SETUP_FAILURE";

/// The runtime environment of a job: the package unpacked as its working
/// directory and the environment variables its entrypoint sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEnv {
    /// `gcs://NAME.zip`, a package uploaded with [`super::RayClient::put_package`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
}

/// Body of `POST /api/jobs/` (`JobSubmitRequest`). Ray rejects unknown
/// fields with a 400, so optional ones are left out when unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubmitRequest {
    /// A shell command line (Ray runs it with `/bin/sh -c`).
    pub entrypoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submission_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_env: Option<RuntimeEnv>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_num_cpus: Option<f64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_memory: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entrypoint_resources: BTreeMap<String, f64>,
}

/// Answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubmitResponse {
    pub submission_id: String,
}

/// `JobDetails` of `GET /api/jobs/ID` and `GET /api/jobs/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobDetails {
    /// `SUBMISSION` for jobs submitted through this API.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// None for drivers that were not submitted as jobs.
    pub submission_id: Option<String>,
    pub status: JobStatus,
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// For example `JOB_ENTRYPOINT_COMMAND_ERROR` or
    /// [`RUNTIME_ENV_SETUP_FAILURE`].
    #[serde(default)]
    pub error_type: Option<String>,
    /// Epoch milliseconds.
    #[serde(default)]
    pub start_time: Option<u64>,
    #[serde(default)]
    pub end_time: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
    /// The node the job's supervisor (and so its entrypoint) runs on; set
    /// by Ray when the job starts running.
    #[serde(default)]
    pub driver_node_id: Option<String>,
}

/// Longest node id [`JobDetails::node_id`] accepts (Ray's are 56 hex digits).
const MAX_NODE_ID_LEN: usize = 128;

impl JobDetails {
    /// The job's node id when Ray gave a plausible one (hex digits only, of
    /// a bounded length): it is stored and shown, so nothing else passes.
    pub fn node_id(&self) -> Option<&str> {
        self.driver_node_id.as_deref().filter(|n| {
            !n.is_empty() && n.len() <= MAX_NODE_ID_LEN && n.bytes().all(|b| b.is_ascii_hexdigit())
        })
    }

    /// Ray's own time for the job (start to end), in milliseconds.
    pub fn ray_duration_ms(&self) -> Option<u64> {
        Some(self.end_time?.saturating_sub(self.start_time?))
    }
}

/// `GET /api/version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub ray_version: String,
    #[serde(default)]
    pub ray_commit: Option<String>,
    #[serde(default)]
    pub session_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LogsResponse {
    pub logs: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct StopResponse {
    pub stopped: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct DeleteResponse {
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_job_details_as_ray_sends_them() {
        let j: JobDetails = serde_json::from_str(
            r#"{"type": "SUBMISSION", "job_id": null, "submission_id": "raysubmit_q",
            "driver_info": null, "status": "SUCCEEDED", "entrypoint": "echo hello",
            "message": "Job finished successfully.", "error_type": null,
            "start_time": 1795689231312, "end_time": 1795689232985,
            "metadata": {"owner": "example"}, "runtime_env": null,
            "driver_agent_http_address": "http://127.0.0.1:52365",
            "driver_node_id": "dd14c7", "driver_exit_code": 0}"#,
        )
        .unwrap();
        assert_eq!(j.status, JobStatus::Succeeded);
        assert_eq!(j.ray_duration_ms(), Some(1673));
        assert_eq!(j.node_id(), Some("dd14c7"));
        assert_eq!(j.metadata.unwrap()["owner"], "example");
    }

    #[test]
    fn only_plausible_node_ids_are_taken() {
        let with = |node: &str| JobDetails {
            driver_node_id: Some(node.into()),
            ..serde_json::from_str(r#"{"submission_id": "j", "status": "RUNNING"}"#).unwrap()
        };
        assert_eq!(with("0a1B").node_id(), Some("0a1B"));
        for bad in ["", "node<script>", "dd 14", &"a".repeat(129)] {
            assert_eq!(with(bad).node_id(), None, "{bad:?}");
        }
    }

    #[test]
    fn submit_request_leaves_out_unset_fields() {
        let r = SubmitRequest {
            entrypoint: "./wasmq exec".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"entrypoint":"./wasmq exec"}"#
        );
    }
}
