fn main() -> std::process::ExitCode {
    pgsidecar::cli::main()
}
