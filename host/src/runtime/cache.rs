//! Compiled-module caches: in memory (ready `InstancePre`s) and on disk
//! (precompiled artifacts, so a new process does not recompile).
//!
//! On-disk artifacts are keyed by the module's SHA-256 and the engine's
//! compatibility hash, so a wasmtime upgrade or a config change misses
//! instead of loading code compiled for another engine.

use sha2::{Digest, Sha256};
use std::collections::hash_map::DefaultHasher;
use std::fs::{DirBuilder, Metadata};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every artifact this cache writes.
const MAGIC: &[u8; 12] = b"wasmq-cwasm1";
/// Magic, the module's SHA-256 in hex, then the SHA-256 of the payload.
const HEADER_LEN: usize = MAGIC.len() + 64 + 32;

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

    /// The artifact's file name: the module and this engine's key.
    pub(super) fn file_name(&self, sha256: &str) -> String {
        format!("{sha256}-{}.cwasm", self.engine_key)
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(self.file_name(sha256))
    }

    /// The artifact of `sha256` as stored, if there is one.
    pub(super) fn read(&self, sha256: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(sha256)).ok()
    }

    /// Adds `bytes`, an artifact of module `sha256` that came from
    /// elsewhere (a Ray job's package, named by [`DiskCache::file_name`] so
    /// that only this engine takes it), unless one is stored already. It is
    /// checked like any stored artifact when it is loaded.
    pub(super) fn seed(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<bool> {
        if self.path(sha256).exists() {
            return Ok(false);
        }
        unwrap_artifact(bytes, sha256).map_err(anyhow::Error::msg)?;
        self.write(sha256, bytes)?;
        Ok(true)
    }

    /// Loads a precompiled component if one exists for this engine and
    /// can be trusted: see [`trusted`] and [`unwrap_artifact`]. Anything
    /// else is logged and costs a recompile.
    pub(super) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.exists() {
            return None;
        }
        let refuse = |why: String| {
            tracing::warn!(path = %path.display(), %why, "ignoring a precompiled module");
            None
        };
        if let Err(why) = trusted(&self.dir, true).and_then(|()| trusted(&path, false)) {
            return refuse(why);
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return refuse(format!("unreadable: {e}")),
        };
        let payload = match unwrap_artifact(&bytes, sha256) {
            Ok(p) => p,
            Err(why) => return refuse(why),
        };
        // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output
        // for this engine. They are: the file sits in a directory only this
        // user can write, is owned by this user and not writable by others,
        // names this engine's compatibility hash, and its header binds it to
        // this module's SHA-256 with the payload's own SHA-256 checked.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(c) => Some(c),
            Err(e) => refuse(format!("{e:#}")),
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
        let payload = component.serialize()?;
        self.write(sha256, &wrap_artifact(sha256, &payload))
    }

    /// Writes an artifact (header included) under its name, atomically.
    fn write(&self, sha256: &str, artifact: &[u8]) -> anyhow::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        trusted(&self.dir, true).map_err(anyhow::Error::msg)?;
        let tmp = tempfile_in(&self.dir, sha256);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        use std::io::Write as _;
        let written = file.write_all(artifact).and_then(|()| file.sync_data());
        drop(file);
        written
            .and_then(|()| std::fs::rename(&tmp, self.path(sha256)))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        Ok(())
    }
}

/// Whether `path` (a directory when `dir`) may hold code this process will
/// run: owned by this user and not writable by the group or others.
/// Anyone who can write there could make the worker run native code.
fn trusted(path: &Path, dir: bool) -> Result<(), String> {
    let meta: Metadata =
        std::fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if dir != meta.is_dir() || meta.file_type().is_symlink() {
        return Err(format!(
            "not a plain {}",
            if dir { "directory" } else { "file" }
        ));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by the group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The artifact as written: [`MAGIC`], the module's SHA-256, the payload's
/// SHA-256, the payload.
fn wrap_artifact(sha256: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(sha256.as_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of an artifact for module `sha256`, if its header says so
/// and its content hash matches (no other module's artifact under this
/// name, no truncated or altered file).
fn unwrap_artifact<'a>(bytes: &'a [u8], sha256: &str) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC || sha256.len() != 64 {
        return Err("not an artifact of this cache".into());
    }
    let (module, rest) = bytes[MAGIC.len()..].split_at(64);
    if module != sha256.as_bytes() {
        return Err(format!(
            "compiled from another module ({})",
            String::from_utf8_lossy(module)
        ));
    }
    let (recorded, payload) = rest.split_at(32);
    if Sha256::digest(payload)[..] != *recorded {
        return Err("its content does not match its recorded hash".into());
    }
    Ok(payload)
}

fn tempfile_in(dir: &Path, sha256: &str) -> PathBuf {
    let nonce: u64 = rand::random();
    dir.join(format!(".{sha256}.{}.{nonce:x}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn an_artifact_is_bound_to_its_module_and_its_content() {
        let art = wrap_artifact(A, b"code");
        assert_eq!(unwrap_artifact(&art, A), Ok(&b"code"[..]));
        assert!(
            unwrap_artifact(&art, B)
                .unwrap_err()
                .contains("another module")
        );
        let mut altered = art.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(unwrap_artifact(&altered, A).unwrap_err().contains("hash"));
        assert!(unwrap_artifact(&art[..art.len() - 1], A).is_err());
        assert!(unwrap_artifact(b"\x7fELF", A).is_err());
    }

    #[test]
    fn a_directory_others_can_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(trusted(dir.path(), true), Ok(()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(trusted(dir.path(), true).unwrap_err().contains("writable"));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(trusted(&file, true).unwrap_err().contains("directory"));
    }
}
