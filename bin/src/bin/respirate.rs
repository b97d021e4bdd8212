//! respirate: the worker daemon. Leases due strands and runs their steps
//! until SIGTERM. Run as many as you like against one database.

fn main() -> std::process::ExitCode {
    skein_bin::respirate::main(skein_progs::registry)
}
