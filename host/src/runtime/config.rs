//! `wasi:config/store` for tasks: the values granted to a run (its module's
//! secrets), and their removal from whatever the guest hands back.
//!
//! The interface is linked into every run; a run granted nothing reads an
//! empty store. Values are never copied into the store data: every run of a
//! module and queue shares one [`RunConfig`].

use super::outcome::RunReport;
use super::state::HostState;
use crate::secrets::{Redactor, SecretValue};
use std::collections::BTreeMap;
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
    values: BTreeMap<String, SecretValue>,
    redactor: Redactor,
}

impl RunConfig {
    /// Secrets by name; each value is also redacted from the run's report.
    pub fn new(secrets: Vec<(String, SecretValue)>) -> RunConfig {
        RunConfig {
            redactor: Redactor::new(&secrets),
            values: secrets.into_iter().collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(SecretValue::expose)
    }

    /// The names a run can read.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
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
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Takes the run's secret values out of everything in `report` that the
/// guest wrote (before it is bounded, so that a cut cannot leave half of a
/// value behind).
pub(super) fn redact_report(report: &mut RunReport, r: &Redactor) {
    if r.is_empty() {
        return;
    }
    if let Some(output) = &mut report.output {
        r.redact_string(output);
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
