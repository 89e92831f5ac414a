//! `working_dir` packages: zips with their entries at the root (Ray does not
//! strip a top-level folder) and Unix modes kept (Ray chmods from them; an
//! entry without a mode unpacks as `-rw-------` and cannot be executed),
//! named by the hash of their bytes so each is uploaded once.

use super::client::RayClient;
use super::error::RayError;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

/// One file of a package.
#[derive(Debug, Clone)]
pub struct PackageEntry {
    /// Path inside the working dir, without a leading `/`.
    pub path: String,
    pub bytes: Bytes,
    /// Unix permission bits, e.g. 0o755 for an executable.
    pub mode: u32,
}

/// A built package, ready to upload.
#[derive(Debug, Clone)]
pub struct Package {
    /// `PREFIX_<sha256 of the zip, 32 hex digits>.zip`.
    pub name: String,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("building package: {0}")]
pub struct PackageError(String);

impl From<zip::result::ZipError> for PackageError {
    fn from(e: zip::result::ZipError) -> Self {
        PackageError(e.to_string())
    }
}

impl From<std::io::Error> for PackageError {
    fn from(e: std::io::Error) -> Self {
        PackageError(e.to_string())
    }
}

fn options(mode: u32) -> SimpleFileOptions {
    // A fixed timestamp keeps the bytes, and so the name, deterministic.
    // The fastest level: the runner is tens of MB and compressed at start-up.
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1))
        .last_modified_time(DateTime::default())
        .unix_permissions(mode)
        .large_file(false)
}

impl Package {
    /// Zips `entries` in the order given.
    pub fn build(prefix: &str, entries: &[PackageEntry]) -> Result<Package, PackageError> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for e in entries {
            add(&mut w, e)?;
        }
        Ok(Self::named(prefix, w.finish()?.into_inner()))
    }

    /// This package plus `extra` entries. The existing entries are copied
    /// compressed as they are, so a large runner is not deflated again.
    pub fn extended(&self, prefix: &str, extra: &[PackageEntry]) -> Result<Package, PackageError> {
        let mut src = ZipArchive::new(Cursor::new(self.bytes.as_ref()))?;
        let mut w = ZipWriter::new(Cursor::new(Vec::with_capacity(self.bytes.len() + 4096)));
        for i in 0..src.len() {
            w.raw_copy_file(src.by_index_raw(i)?)?;
        }
        for e in extra {
            add(&mut w, e)?;
        }
        Ok(Self::named(prefix, w.finish()?.into_inner()))
    }

    fn named(prefix: &str, bytes: Vec<u8>) -> Package {
        let hash = hex::encode(Sha256::digest(&bytes));
        Package {
            name: format!("{prefix}_{}.zip", &hash[..32]),
            bytes: bytes.into(),
        }
    }

    /// The `runtime_env.working_dir` value.
    pub fn uri(&self) -> String {
        format!("gcs://{}", self.name)
    }
}

fn add(w: &mut ZipWriter<Cursor<Vec<u8>>>, e: &PackageEntry) -> Result<(), PackageError> {
    w.start_file(e.path.as_str(), options(e.mode))?;
    w.write_all(&e.bytes)?;
    Ok(())
}

impl RayClient {
    /// Makes sure the cluster holds `package`, uploading it if not. Ray
    /// deletes packages no job uses (and loses them on restart), so call this
    /// before every submit; the check also pins the package for 600 s.
    /// Returns whether it was uploaded.
    pub async fn ensure_package(&self, package: &Package) -> Result<bool, RayError> {
        if self.package_exists(&package.name).await? {
            return Ok(false);
        }
        self.put_package(&package.name, &package.bytes).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entry(path: &str, bytes: &'static [u8], mode: u32) -> PackageEntry {
        PackageEntry {
            path: path.into(),
            bytes: Bytes::from_static(bytes),
            mode,
        }
    }

    #[test]
    fn entries_at_the_root_with_modes_and_a_content_name() {
        let entries = [
            entry("run", b"#!/bin/sh\n", 0o755),
            entry("task.wasm", b"\0asm", 0o644),
        ];
        let p = Package::build("wasmq", &entries).unwrap();
        let again = Package::build("wasmq", &entries).unwrap();
        assert_eq!(
            p.name, again.name,
            "the same content must get the same name"
        );
        assert!(p.name.starts_with("wasmq_") && p.name.ends_with(".zip"));
        assert_eq!(p.uri(), format!("gcs://{}", p.name));

        let mut z = ZipArchive::new(Cursor::new(p.bytes.as_ref())).unwrap();
        let f = z.by_name("run").unwrap();
        assert_eq!(f.unix_mode().unwrap() & 0o777, 0o755);
        drop(f);
        assert_eq!(
            z.by_name("task.wasm").unwrap().unix_mode().unwrap() & 0o777,
            0o644
        );

        let other = Package::build("wasmq", &entries[..1]).unwrap();
        assert_ne!(other.name, p.name);
    }

    #[test]
    fn extended_keeps_the_old_entries() {
        let p = Package::build("wasmq", &[entry("run", b"binary", 0o755)]).unwrap();
        let big = p
            .extended("wasmq-input", &[entry("input.json", b"{\"a\":1}", 0o644)])
            .unwrap();
        assert_ne!(big.name, p.name);
        let mut z = ZipArchive::new(Cursor::new(big.bytes.as_ref())).unwrap();
        let mut s = String::new();
        z.by_name("run").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "binary");
        assert_eq!(
            z.by_name("run").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        s.clear();
        z.by_name("input.json")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "{\"a\":1}");
    }
}
