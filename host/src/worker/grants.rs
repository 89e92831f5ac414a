//! The operator's grants (`wasmq module grant`) as a worker's runs see them.
//!
//! A worker reads the whole grant table (a few rows per granted module),
//! and the sealed secrets granted in it, at most once per `WASMQ_GRANT_TTL`,
//! and keeps one [`TaskGrants`] per module and queue that has grants: the
//! run of a task costs one map lookup, and none of the claim's SQL changes.
//! A grant given or taken back, or a secret set again, applies to tasks
//! that start after the cache next refreshes.
//!
//! When a refresh fails, the previous grants stay in force until the next
//! one (and a worker that never read them fails its tasks as host errors,
//! which are retried): a database hiccup neither grants nor revokes.

use crate::runtime::{HttpGrant, HttpLimits, HttpPolicy, Outcome, RunConfig};
use crate::secrets::{Sealed, SecretKey};
use crate::store::{
    AnyStore, GrantKind, ModuleGrant, Store, StoreError, StoredSecret, config_entry,
};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a worker uses the grants it read before reading them again.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(5);

/// A worker's cached view of the grant table.
pub struct Grants {
    store: AnyStore,
    ttl: Duration,
    tls: Arc<rustls::ClientConfig>,
    /// The extra CA certificates `tls` trusts, for runners elsewhere.
    ca_pem: Option<Arc<str>>,
    limits: HttpLimits,
    /// The key that opens secrets, and the file it came from (which a
    /// cluster worker names to its runners).
    key: Option<(Arc<SecretKey>, PathBuf)>,
    cache: tokio::sync::Mutex<Snapshot>,
}

/// What the tasks of one module in one queue are granted.
#[derive(Debug)]
pub struct TaskGrants {
    /// `None`: no outbound HTTP (no `wasi:http` linked).
    pub http: Option<Arc<HttpPolicy>>,
    /// The granted secrets, sealed, by name (what a Ray job's runner gets).
    pub sealed: Vec<StoredSecret>,
    /// The plain config values by key, a queue's own over every queue's.
    pub plain: Vec<(String, String)>,
    /// The granted secrets opened, for an in-process run; `Err` when this
    /// worker cannot open them (no key, another key), which fails the task.
    pub config: Result<Option<Arc<RunConfig>>, String>,
}

#[derive(Default)]
struct Snapshot {
    /// When the table was last read (successfully or not); `None`: never.
    read_at: Option<Instant>,
    /// Whether any read has succeeded.
    loaded: bool,
    by_module: HashMap<String, ModuleGrants>,
    /// Every granted secret, sealed, by name.
    sealed: HashMap<String, StoredSecret>,
}

/// One module name's grants, and what was made of them per queue.
#[derive(Default)]
struct ModuleGrants {
    http: Vec<(Option<String>, HttpGrant)>,
    secrets: Vec<(Option<String>, String)>,
    /// (queue, key, value)
    config: Vec<(Option<String>, String, String)>,
    per_queue: HashMap<String, Option<Arc<TaskGrants>>>,
}

impl Grants {
    /// `tls` is shared by every policy (see [`crate::runtime::tls_config`]).
    pub fn new(
        store: AnyStore,
        tls: Arc<rustls::ClientConfig>,
        limits: HttpLimits,
        ttl: Duration,
    ) -> Grants {
        Grants {
            store,
            ttl,
            tls,
            ca_pem: None,
            limits,
            key: None,
            cache: tokio::sync::Mutex::new(Snapshot::default()),
        }
    }

    /// A worker's grants: TLS trusting the webpki roots and `extra_ca`
    /// (`--http-ca-file`), the `WASMQ_HTTP_*` limits, the secret key of
    /// `WASMQ_SECRET_KEY_FILE` if set, and a TTL of `WASMQ_GRANT_TTL` (else
    /// [`DEFAULT_GRANT_TTL`]).
    pub fn from_env(store: AnyStore, extra_ca: Option<&Path>) -> Result<Grants, String> {
        let tls = crate::runtime::tls_config(extra_ca)?;
        let limits = HttpLimits::from_env()?;
        let ttl = super::config::env_duration("WASMQ_GRANT_TTL").unwrap_or(DEFAULT_GRANT_TTL);
        let mut grants = Grants::new(store, tls, limits, ttl);
        if let Some(path) = extra_ca {
            // Read again after tls_config accepted it: small, and plain text.
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --http-ca-file {}: {e}", path.display()))?;
            grants.ca_pem = Some(pem.into());
        }
        if let Some(key) = SecretKey::from_env().map_err(|e| e.to_string())? {
            let path = std::env::var_os(crate::secrets::KEY_FILE_ENV).unwrap_or_default();
            grants.key = Some((Arc::new(key), PathBuf::from(path)));
        }
        Ok(grants)
    }

    /// The PEM text of `--http-ca-file`, which a cluster worker ships to
    /// its runners.
    pub fn ca_pem(&self) -> Option<Arc<str>> {
        self.ca_pem.clone()
    }

    /// The secret key file, which a cluster worker names to its runners
    /// (never the key).
    pub fn key_file(&self) -> Option<&Path> {
        self.key.as_ref().map(|(_, p)| p.as_path())
    }

    /// What a task of `module` in `queue` is granted; `None` when nothing
    /// (the common case, one map lookup).
    pub async fn for_task(
        &self,
        module: &str,
        queue: &str,
    ) -> Result<Option<Arc<TaskGrants>>, StoreError> {
        let mut cache = self.cache.lock().await;
        let stale = !cache.loaded || cache.read_at.is_none_or(|t| t.elapsed() >= self.ttl);
        if stale {
            let read = self.read().await;
            cache.read_at = Some(Instant::now());
            match read {
                Ok((by_module, sealed)) => {
                    cache.by_module = by_module;
                    cache.sealed = sealed;
                    cache.loaded = true;
                }
                Err(e) if cache.loaded => tracing::warn!(
                    error = %e,
                    "could not read the module grants; the previous ones stay in force"
                ),
                Err(e) => return Err(e),
            }
        }
        let Snapshot {
            by_module, sealed, ..
        } = &mut *cache;
        let Some(module_grants) = by_module.get_mut(module) else {
            return Ok(None);
        };
        if let Some(made) = module_grants.per_queue.get(queue) {
            return Ok(made.clone());
        }
        let made = self.make(module_grants, sealed, queue).map(Arc::new);
        module_grants
            .per_queue
            .insert(queue.to_string(), made.clone());
        Ok(made)
    }

    /// The grant table grouped by module, and the granted secrets.
    async fn read(
        &self,
    ) -> Result<(HashMap<String, ModuleGrants>, HashMap<String, StoredSecret>), StoreError> {
        let rows = self.store.list_grants(None).await?;
        let by_module = by_module(rows);
        let names: BTreeSet<String> = by_module
            .values()
            .flat_map(|m| m.secrets.iter().map(|(_, n)| n.clone()))
            .collect();
        let names: Vec<String> = names.into_iter().collect();
        let sealed = self
            .store
            .sealed_secrets(&names)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        Ok((by_module, sealed))
    }

    /// The grants of one module that apply in `queue`; `None` when none do.
    fn make(
        &self,
        m: &ModuleGrants,
        sealed: &HashMap<String, StoredSecret>,
        queue: &str,
    ) -> Option<TaskGrants> {
        let applies = |q: &Option<String>| q.as_deref().is_none_or(|q| q == queue);
        let http: Vec<HttpGrant> = m
            .http
            .iter()
            .filter(|(q, _)| applies(q))
            .map(|(_, g)| g.clone())
            .collect();
        let names: BTreeSet<&str> = m
            .secrets
            .iter()
            .filter(|(q, _)| applies(q))
            .map(|(_, n)| n.as_str())
            .collect();
        // Every queue's values first, so that the queue's own replace them.
        let mut plain: Vec<&(Option<String>, String, String)> =
            m.config.iter().filter(|(q, _, _)| applies(q)).collect();
        plain.sort_by_key(|(q, _, _)| q.is_some());
        let plain: Vec<(String, String)> = plain
            .into_iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        if http.is_empty() && names.is_empty() && plain.is_empty() {
            return None;
        }
        let http = (!http.is_empty())
            .then(|| HttpPolicy::with_tls(http, self.tls.clone(), self.limits).ok())
            .flatten()
            .map(Arc::new);
        // A secret deleted since the grant was read is not granted.
        let sealed: Vec<StoredSecret> = names
            .iter()
            .filter_map(|n| sealed.get(*n).cloned())
            .collect();
        let config = self.open(&plain, &sealed);
        Some(TaskGrants {
            http,
            sealed,
            plain,
            config,
        })
    }

    fn open(
        &self,
        plain: &[(String, String)],
        sealed: &[StoredSecret],
    ) -> Result<Option<Arc<RunConfig>>, String> {
        if sealed.is_empty() {
            return Ok(RunConfig::shared(plain.to_vec(), Vec::new()));
        }
        let Some((key, _)) = &self.key else {
            return Err(format!(
                "the module is granted secrets, and this worker has no key to open them: {}",
                crate::secrets::SecretError::NoKey
            ));
        };
        let values = sealed
            .iter()
            .map(|s| {
                let value = key
                    .open(&s.name, &sealed_of(s))
                    .map_err(|e| e.to_string())?;
                Ok((s.name.clone(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(RunConfig::shared(plain.to_vec(), values))
    }
}

/// A stored secret as [`crate::secrets`] opens it.
pub fn sealed_of(s: &StoredSecret) -> Sealed {
    Sealed {
        key_id: s.key_id.clone(),
        nonce: s.nonce.clone(),
        ciphertext: s.ciphertext.clone(),
    }
}

impl TaskGrants {
    /// The opened secrets, or the outcome that fails the task (retried:
    /// the operator may fix the worker's key).
    pub fn config(&self) -> Result<Option<Arc<RunConfig>>, Outcome> {
        self.config.clone().map_err(|message| Outcome::HostError {
            message: format!("could not open the module's secrets: {message}"),
        })
    }
}

/// Grant rows grouped by module; an HTTP grant that does not parse (written
/// by a newer wasmq, or by hand) is left out with a warning.
fn by_module(rows: Vec<ModuleGrant>) -> HashMap<String, ModuleGrants> {
    let mut out: HashMap<String, ModuleGrants> = HashMap::new();
    for row in rows {
        let entry = out.entry(row.module.clone()).or_default();
        match row.kind {
            GrantKind::Http => match row.value.parse::<HttpGrant>() {
                Ok(grant) => entry.http.push((row.queue, grant)),
                Err(e) => tracing::warn!(
                    module = %row.module,
                    error = %e,
                    "ignoring a stored HTTP grant that does not parse"
                ),
            },
            GrantKind::Secret => entry.secrets.push((row.queue, row.value)),
            GrantKind::Config => match config_entry(&row.value) {
                Some((k, v)) => entry.config.push((row.queue, k.to_string(), v.to_string())),
                None => tracing::warn!(
                    module = %row.module,
                    "ignoring a stored config grant without `=`"
                ),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::GrantSet;

    async fn store_with_module(name: &str) -> AnyStore {
        let store = AnyStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let bytes = b"\0asm\x0d\0\x01\0".to_vec();
        let sha = crate::runtime::sha256_hex(&bytes);
        store.push_module(name, None, &bytes, &sha).await.unwrap();
        store
    }

    async fn grant(store: &AnyStore, module: &str, queue: Option<&str>, values: &[&str]) {
        let values: Vec<String> = values
            .iter()
            .map(|v| v.parse::<HttpGrant>().unwrap().to_string())
            .collect();
        store
            .add_grants(GrantSet {
                module,
                queue,
                kind: GrantKind::Http,
                values: &values,
            })
            .await
            .unwrap();
    }

    fn grants(store: &AnyStore, ttl: Duration) -> Grants {
        let tls = crate::runtime::tls_config(None).unwrap();
        Grants::new(store.clone(), tls, HttpLimits::default(), ttl)
    }

    impl Grants {
        async fn http(
            &self,
            module: &str,
            queue: &str,
        ) -> Result<Option<Arc<HttpPolicy>>, StoreError> {
            Ok(self
                .for_task(module, queue)
                .await?
                .and_then(|g| g.http.clone()))
        }
    }

    fn names(policy: &Option<Arc<HttpPolicy>>) -> Vec<String> {
        let mut v: Vec<String> = policy
            .iter()
            .flat_map(|p| p.grants().iter().map(|g| g.to_string()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_task_gets_the_grants_of_its_module_in_its_queue() {
        let store = store_with_module("fetch").await;
        grant(&store, "fetch", None, &["https://api.example.com"]).await;
        grant(
            &store,
            "fetch",
            Some("mail"),
            &["https://smtp.example.com/send"],
        )
        .await;
        let g = grants(&store, Duration::from_secs(60));
        assert_eq!(
            names(&g.http("fetch", "default").await.unwrap()),
            ["https://api.example.com:443/"]
        );
        assert_eq!(
            names(&g.http("fetch", "mail").await.unwrap()),
            [
                "https://api.example.com:443/",
                "https://smtp.example.com:443/send"
            ]
        );
        assert!(g.http("other", "default").await.unwrap().is_none());
        // One policy per module and queue, shared by its runs.
        let a = g.http("fetch", "mail").await.unwrap().unwrap();
        let b = g.http("fetch", "mail").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn a_change_applies_once_the_cache_expires() {
        let store = store_with_module("fetch").await;
        let g = grants(&store, Duration::from_millis(50));
        assert!(g.http("fetch", "default").await.unwrap().is_none());
        grant(&store, "fetch", None, &["http://10.0.0.1:8080"]).await;
        // Still the old view within the TTL…
        assert!(g.http("fetch", "default").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        // …the new one after it.
        assert_eq!(
            names(&g.http("fetch", "default").await.unwrap()),
            ["http://10.0.0.1:8080/"]
        );
        store.revoke_all_grants("fetch", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(g.http("fetch", "default").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failed_read_keeps_the_previous_grants_and_a_first_one_is_an_error() {
        let store = store_with_module("fetch").await;
        grant(&store, "fetch", None, &["https://api.example.com"]).await;
        let g = grants(&store, Duration::ZERO);
        assert!(g.http("fetch", "default").await.unwrap().is_some());
        store.close().await;
        assert!(g.http("fetch", "default").await.unwrap().is_some(), "kept");
        let fresh = grants(&store, Duration::ZERO);
        assert!(fresh.http("fetch", "default").await.is_err());
    }

    #[tokio::test]
    async fn granted_secrets_open_with_the_workers_key_only() {
        let store = store_with_module("fetch").await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, SecretKey::generate_hex().as_str()).unwrap();
        let key = SecretKey::from_file(&key_file).unwrap();
        let sealed = key.seal("api-token", "tok-canary-1").unwrap();
        store
            .put_secret(&StoredSecret {
                name: "api-token".into(),
                key_id: sealed.key_id,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
            })
            .await
            .unwrap();
        store
            .add_grants(GrantSet {
                module: "fetch",
                queue: None,
                kind: GrantKind::Secret,
                values: &["api-token".to_string()],
            })
            .await
            .unwrap();

        let mut g = grants(&store, Duration::from_secs(60));
        g.key = Some((Arc::new(key), key_file));
        let t = g.for_task("fetch", "default").await.unwrap().unwrap();
        assert!(t.http.is_none());
        let config = t.config().unwrap().unwrap();
        assert_eq!(config.get("api-token"), Some("tok-canary-1"));
        assert_eq!(t.sealed.len(), 1);

        // Without the key, the task fails as a host error naming why.
        let keyless = grants(&store, Duration::from_secs(60));
        let t = keyless.for_task("fetch", "default").await.unwrap().unwrap();
        match t.config() {
            Err(Outcome::HostError { message }) => {
                assert!(message.contains("WASMQ_SECRET_KEY_FILE"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
