//! What several targets share: one engine for the whole fuzzing process.

use std::sync::LazyLock;
use wasmq::runtime::{Allocator, LoadError, Runtime, RuntimeConfig, check_header, sha256_hex};

struct Harness {
    tokio: tokio::runtime::Runtime,
    wasmq: Runtime,
}

// Building the engine costs far more than checking one small input: once per
// process, as in the worker.
static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let config = RuntimeConfig {
        // Nothing is instantiated here, and the pool would reserve gigabytes
        // of address space for slots that are never used.
        allocator: Allocator::OnDemand,
        // A disk cache would turn the second sight of an input into a cache
        // load instead of a compile, and fill the disk.
        cache_dir: None,
        ..RuntimeConfig::default()
    };
    let wasmq = Runtime::new(config).expect("the wasmq runtime");
    Harness { tokio, wasmq }
});

/// `Runtime::validate`, what `wasmq push` runs on a file before storing it:
/// it must answer with the module's hash or a module error, and agree with
/// the cheap header check.
pub fn validate(bytes: &[u8]) {
    let h = &*HARNESS;
    let header = check_header(bytes);
    match h.tokio.block_on(h.wasmq.validate(bytes.to_vec())) {
        Ok(sha256) => {
            assert!(header.is_ok(), "valid despite {header:?}");
            assert_eq!(sha256, sha256_hex(bytes));
        }
        Err(LoadError::Module(e)) => {
            if let Err(expected) = header {
                assert_eq!(e, expected);
            }
            assert!(!e.reason().is_empty() && !e.to_string().is_empty());
        }
        // A compiler thread that panicked comes back as a join error.
        Err(other) => panic!("validate failed outside the module: {other}"),
    }
}
