//! `wasi:config/store` for tasks: the values granted to a run (its module's
//! config values and secrets), and the secrets' removal from whatever the
//! guest hands back.
//!
//! The interface is linked into every run; a run granted nothing reads an
//! empty store. Values are never copied into the store data: every run of a
//! module and queue shares one [`RunConfig`].

use super::outcome::RunReport;
use super::state::HostState;
use crate::secrets::{Redactor, SecretValue};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:config/imports",
    });
}

use bindings::wasi::config::store;

/// What a run may read through `wasi:config/store`.
#[derive(Debug, Default)]
pub struct RunConfig {
    values: BTreeMap<String, Value>,
    redactor: Redactor,
}

#[derive(Debug)]
enum Value {
    Plain(String),
    Secret(SecretValue),
}

impl Value {
    fn as_str(&self) -> &str {
        match self {
            Value::Plain(v) => v,
            Value::Secret(v) => v.expose(),
        }
    }
}

impl RunConfig {
    /// Plain config values and secrets by key; a secret shadows a config
    /// value of the same key. Secret values are also redacted from the
    /// run's report.
    pub fn new(plain: Vec<(String, String)>, secrets: Vec<(String, SecretValue)>) -> RunConfig {
        let redactor = Redactor::new(&secrets);
        let mut values: BTreeMap<String, Value> = plain
            .into_iter()
            .map(|(k, v)| (k, Value::Plain(v)))
            .collect();
        values.extend(secrets.into_iter().map(|(k, v)| (k, Value::Secret(v))));
        RunConfig { values, redactor }
    }

    /// [`RunConfig::new`] as a run takes it; `None` when there is nothing
    /// to read (the store is then empty, and nothing is redacted).
    pub fn shared(
        plain: Vec<(String, String)>,
        secrets: Vec<(String, SecretValue)>,
    ) -> Option<Arc<RunConfig>> {
        (!plain.is_empty() || !secrets.is_empty()).then(|| Arc::new(RunConfig::new(plain, secrets)))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(Value::as_str)
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    store::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

impl store::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.config().and_then(|c| c.get(&key)).map(str::to_owned))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self
            .config()
            .map(|c| {
                c.values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Takes the run's secret values out of everything in `report` that the
/// guest wrote (before it is bounded, so that a cut cannot leave half of a
/// value behind). The output is not here: it is redacted before its size
/// and JSON are checked.
pub(super) fn redact_report(report: &mut RunReport, r: &Redactor) {
    if r.is_empty() {
        return;
    }
    r.redact_string(&mut report.stdout);
    r.redact_string(&mut report.stderr);
    for log in &mut report.logs {
        r.redact_string(&mut log.message);
    }
    if let Some((_, message)) = &mut report.progress {
        r.redact_string(message);
    }
    for spawn in &mut report.spawns {
        r.redact_string(&mut spawn.input);
    }
    for text in report.outcome.texts_mut() {
        r.redact_string(text);
    }
}
