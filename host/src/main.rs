fn main() -> std::process::ExitCode {
    wasmq::cli::main()
}
