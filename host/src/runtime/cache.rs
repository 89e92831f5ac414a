//! Compiled-module caches: in memory (ready `InstancePre`s) and on disk
//! (precompiled artifacts, so a new process does not recompile).
//!
//! On-disk artifacts are keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a wasmtime upgrade or a config change misses
//! instead of loading code compiled for another engine.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(super) struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    pub(super) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        DiskCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Loads a precompiled component if one exists for this engine.
    pub(super) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.exists() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output.
        // Only this cache writes into the directory, under a name that binds the
        // content hash and the engine, and writes are atomic (temp file + rename).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"),
                    "ignoring unreadable precompiled module");
                None
            }
        }
    }

    /// Stores a precompiled component; failures only cost a recompile later.
    pub(super) fn store(&self, sha256: &str, component: &Component) {
        if let Err(e) = self.try_store(sha256, component) {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"),
                "could not write the precompiled module cache");
        }
    }

    fn try_store(&self, sha256: &str, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize()?;
        let tmp = tempfile_in(&self.dir, sha256);
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.path(sha256)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(())
    }
}

fn tempfile_in(dir: &Path, sha256: &str) -> PathBuf {
    let nonce: u64 = rand::random();
    dir.join(format!(".{sha256}.{}.{nonce:x}.tmp", std::process::id()))
}
