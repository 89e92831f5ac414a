//! The Rust client API: push modules, enqueue tasks, follow and steer them.
//! The `wasmq` CLI is built on it.

use crate::runtime::{AboveMaximum, HttpGrant, LoadError, Maxima, Runtime, sha256_hex};
use crate::secrets::{SecretError, SecretKey};
use crate::store::{
    AnyStore, CancelOutcome, EnqueueOutcome, GrantKind, GrantSet, ModuleRecord, NewTask, Store,
    StoreError, StoredSecret, TaskLimits, TaskRecord, validate_new_task,
};
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

mod batcher;

pub use crate::store::DEFAULT_MAX_ATTEMPTS;
pub use batcher::{
    BatchConfig, DEFAULT_BATCH_IN_FLIGHT, DEFAULT_BATCH_LINGER, DEFAULT_BATCH_MAX, EnqueueBatcher,
};
/// Grants as the store keeps them: the canonical text of each (explicit
/// port, lowercase host), so that two spellings of a grant are one row.
fn canonical(grants: &[HttpGrant]) -> Vec<String> {
    grants.iter().map(HttpGrant::to_string).collect()
}

/// The queue used when none is named.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid module: {0}")]
    Module(#[from] LoadError),
    #[error("input is not valid JSON: {0}")]
    InvalidInput(String),
    #[error("invalid module reference `{0}`: expected NAME or NAME@VERSION")]
    BadReference(String),
    #[error(transparent)]
    AboveMaximum(#[from] AboveMaximum),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl ClientError {
    /// True when the caller's input was at fault (as opposed to the database).
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            ClientError::Store(StoreError::Database(_) | StoreError::Migrate(_))
                | ClientError::Unavailable(_)
        )
    }
}

/// What to enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    /// `NAME` (the latest version) or `NAME@VERSION`.
    pub module: String,
    pub input: String,
    pub queue: String,
    pub priority: i16,
    pub run_after: Option<DateTime<Utc>>,
    pub max_attempts: u32,
    pub unique_key: Option<String>,
    pub limits: TaskLimits,
}

impl EnqueueRequest {
    pub fn new(module: impl Into<String>, input: impl Into<String>) -> Self {
        EnqueueRequest {
            module: module.into(),
            input: input.into(),
            queue: DEFAULT_QUEUE.into(),
            priority: 0,
            run_after: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            limits: TaskLimits::default(),
        }
    }
}

/// Splits `NAME[@VERSION]`.
pub fn parse_reference(reference: &str) -> Result<(&str, Option<&str>), ClientError> {
    let (name, version) = match reference.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    };
    if name.is_empty() || version.is_some_and(str::is_empty) {
        return Err(ClientError::BadReference(reference.to_string()));
    }
    Ok((name, version))
}

/// Refuses the limits a task asks for when they are above `maxima`, before
/// anything is stored. Limits left to the worker's defaults are the
/// worker's business: it checks them against its own maxima.
pub fn check_limits(maxima: &Maxima, limits: &TaskLimits) -> Result<(), AboveMaximum> {
    if let Some(f) = limits.fuel {
        maxima.check_fuel(f)?;
    }
    if let Some(m) = limits.memory_bytes {
        maxima.check_memory(m)?;
    }
    if let Some(t) = limits.timeout_ms {
        maxima.check_timeout(Duration::from_millis(t))?;
    }
    Ok(())
}

/// What can be checked of a request without the database: its input is
/// JSON, its limits are within `maxima`, its module reference parses.
pub(crate) fn check_request(maxima: &Maxima, req: &EnqueueRequest) -> Result<(), ClientError> {
    serde_json::from_str::<serde::de::IgnoredAny>(&req.input)
        .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
    check_limits(maxima, &req.limits)?;
    parse_reference(&req.module)?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Client {
    store: AnyStore,
    maxima: Maxima,
}

impl Client {
    /// Connects and applies migrations.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let store = AnyStore::connect(url).await?;
        store.migrate().await?;
        Ok(Client::from_store(store))
    }

    /// A client enqueueing under the default [`Maxima`].
    pub fn from_store(store: AnyStore) -> Client {
        Client {
            store,
            maxima: Maxima::default(),
        }
    }

    /// This client with other ceilings on what a task may ask for.
    pub fn with_maxima(self, maxima: Maxima) -> Client {
        Client { maxima, ..self }
    }

    pub fn maxima(&self) -> &Maxima {
        &self.maxima
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Validates `bytes` against the task world (compiling them, which also
    /// fills the local precompiled cache), then stores them.
    pub async fn push_module(
        &self,
        runtime: &Runtime,
        name: &str,
        version: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<ModuleRecord, ClientError> {
        if name.is_empty() || name.contains('@') {
            return Err(ClientError::BadReference(name.to_string()));
        }
        let sha256 = sha256_hex(&bytes);
        runtime.validate(bytes.clone()).await?;
        Ok(self
            .store
            .push_module(name, version, &bytes, &sha256)
            .await?)
    }

    /// Lets the tasks of module `name` (every version), in `queue` or in
    /// every queue, make HTTP requests under `grants`; returns how many
    /// grants were new. Workers apply a change within their grant cache's
    /// lifetime (`WASMQ_GRANT_TTL`).
    pub async fn grant_http(
        &self,
        name: &str,
        queue: Option<&str>,
        grants: &[HttpGrant],
    ) -> Result<u64, ClientError> {
        let values = canonical(grants);
        self.change_grants(true, name, queue, GrantKind::Http, &values)
            .await
    }

    /// Takes `grants` back from module `name` in the scope `queue` names
    /// (the every-queue scope when `None`); returns how many were removed.
    pub async fn revoke_http(
        &self,
        name: &str,
        queue: Option<&str>,
        grants: &[HttpGrant],
    ) -> Result<u64, ClientError> {
        let values = canonical(grants);
        self.change_grants(false, name, queue, GrantKind::Http, &values)
            .await
    }

    /// Lets the tasks of module `name`, in `queue` or in every queue, read
    /// `secrets` through `wasi:config/store`; returns how many grants were
    /// new.
    pub async fn grant_secrets(
        &self,
        name: &str,
        queue: Option<&str>,
        secrets: &[String],
    ) -> Result<u64, ClientError> {
        self.change_grants(true, name, queue, GrantKind::Secret, secrets)
            .await
    }

    /// Takes secret grants back from a scope, as [`Client::revoke_http`].
    pub async fn revoke_secrets(
        &self,
        name: &str,
        queue: Option<&str>,
        secrets: &[String],
    ) -> Result<u64, ClientError> {
        self.change_grants(false, name, queue, GrantKind::Secret, secrets)
            .await
    }

    /// Sets plain config values (`KEY=VALUE`, one value per key and scope)
    /// that the tasks of module `name` read through `wasi:config/store`;
    /// returns how many were new or changed.
    pub async fn set_config(
        &self,
        name: &str,
        queue: Option<&str>,
        entries: &[String],
    ) -> Result<u64, ClientError> {
        if let Some(bad) = entries.iter().find(|e| !e.contains('=')) {
            return Err(StoreError::InvalidArgument(format!(
                "config entry {bad:?} is not KEY=VALUE"
            ))
            .into());
        }
        self.change_grants(true, name, queue, GrantKind::Config, entries)
            .await
    }

    /// Removes config keys from a scope; returns how many were removed.
    pub async fn unset_config(
        &self,
        name: &str,
        queue: Option<&str>,
        keys: &[String],
    ) -> Result<u64, ClientError> {
        self.change_grants(false, name, queue, GrantKind::Config, keys)
            .await
    }

    async fn change_grants(
        &self,
        add: bool,
        module: &str,
        queue: Option<&str>,
        kind: GrantKind,
        values: &[String],
    ) -> Result<u64, ClientError> {
        let set = GrantSet {
            module,
            queue,
            kind,
            values,
        };
        Ok(if add {
            self.store.add_grants(set).await?
        } else {
            self.store.remove_grants(set).await?
        })
    }

    /// Seals `value` under `key` and stores it as secret `name`; returns
    /// whether the name is new. Workers use the new value within their
    /// grant cache's lifetime.
    pub async fn set_secret(
        &self,
        key: &SecretKey,
        name: &str,
        value: &str,
    ) -> Result<bool, ClientError> {
        crate::store::validate_secret_name(name)?;
        let sealed = key.seal(name, value)?;
        Ok(self
            .store
            .put_secret(&StoredSecret {
                name: name.to_string(),
                key_id: sealed.key_id,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
            })
            .await?)
    }

    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<EnqueueOutcome, ClientError> {
        let task = self.new_task(req).await?;
        Ok(self.store.enqueue(task).await?)
    }

    /// Resolves the module and checks the input; the task is not stored.
    pub async fn new_task(&self, req: EnqueueRequest) -> Result<NewTask, ClientError> {
        let mut tasks = self.new_tasks(vec![req]).await.map_err(|(_, e)| e)?;
        Ok(tasks.remove(0))
    }

    /// [`Client::new_task`] for many, resolving each module reference once.
    /// A failure names the index of the request that caused it.
    pub async fn new_tasks(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<NewTask>, (usize, ClientError)> {
        let mut modules: std::collections::HashMap<String, ModuleRecord> = Default::default();
        let mut tasks = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            check_request(&self.maxima, &req).map_err(|e| (i, e))?;
            let module = match modules.get(&req.module) {
                Some(m) => m.clone(),
                None => {
                    let (name, version) = parse_reference(&req.module).map_err(|e| (i, e))?;
                    let m = self
                        .store
                        .resolve_module(name, version)
                        .await
                        .map_err(|e| (i, e.into()))?;
                    modules.insert(req.module.clone(), m.clone());
                    m
                }
            };
            let task = batcher::new_task_for(&module, req);
            validate_new_task(&task).map_err(|e| (i, e.into()))?;
            tasks.push(task);
        }
        Ok(tasks)
    }

    pub async fn get(&self, id: Uuid) -> Result<TaskRecord, ClientError> {
        Ok(self.store.get_task(id).await?)
    }

    /// Polls `id` until it reaches a terminal state, calling `on_change` with
    /// each new view of it (state, attempt or progress changed).
    pub async fn wait(
        &self,
        id: Uuid,
        mut on_change: impl FnMut(&TaskRecord),
    ) -> Result<TaskRecord, ClientError> {
        let mut last: Option<(String, u32, Option<u8>)> = None;
        let mut delay = Duration::from_millis(20);
        loop {
            let t = self.store.get_task(id).await?;
            let key = (t.state.as_str().to_string(), t.attempt, t.progress_percent);
            if last.as_ref() != Some(&key) {
                on_change(&t);
                last = Some(key);
            }
            if t.state.is_terminal() {
                return Ok(t);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, ClientError> {
        Ok(self.store.request_cancel(id).await?)
    }

    pub async fn retry(&self, id: Uuid) -> Result<TaskRecord, ClientError> {
        Ok(self.store.retry(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(parse_reference("hello").unwrap(), ("hello", None));
        assert_eq!(parse_reference("hello@2").unwrap(), ("hello", Some("2")));
        assert!(parse_reference("@2").is_err());
        assert!(parse_reference("hello@").is_err());
    }
}
