//! Module loading and validation from generated core modules: random bytes
//! rarely get past the parser, so wasm-smith writes valid (or nearly valid)
//! core modules and each is wrapped in a component, which makes wasmtime
//! compile the module's code under wasmq's engine settings (fuel, epochs).
//! The component exports nothing, so validation must end in `missing-export`
//! or in a compile error for a feature the engine leaves off.
#![no_main]

mod common;

use arbitrary::{Result, Unstructured};
use wasm_encoder::{ComponentSectionId, RawSection};

fn component(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut config: wasm_smith::Config = u.arbitrary()?;
    // Small modules: the work per input stays in milliseconds.
    config.max_funcs = config.max_funcs.min(16);
    config.max_instructions = config.max_instructions.min(200);
    config.max_data_segments = config.max_data_segments.min(8);
    config.max_elements = config.max_elements.min(8);
    config.max_imports = config.max_imports.min(16);
    config.max_type_size = config.max_type_size.min(200);
    // Proposals wasmtime's defaults do not enable fail validation at once,
    // which would only waste the fuzzer's time.
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.exceptions_enabled = false;
    config.gc_enabled = false;
    let core = wasm_smith::Module::new(config, u)?.to_bytes();
    let mut component = wasm_encoder::Component::new();
    component.section(&RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: &core,
    });
    Ok(component.finish())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = component(&mut Unstructured::new(data)) {
        common::validate(&bytes);
    }
});
