//! The binary a Ray job runs: `wasmq exec` and nothing else (see
//! `wasmq::cli::runner_main`). Cluster workers ship it in place of the
//! full `wasmq` when it sits next to them.

fn main() -> std::process::ExitCode {
    wasmq::cli::runner_main()
}
