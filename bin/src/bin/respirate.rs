//! respirate: the worker daemon. Leases due strands and runs their steps
//! until SIGTERM. Run as many as you like against one database.

/// mimalloc, not glibc's malloc: a step allocates and frees many small
/// objects across threads, and glibc's arenas spent a fifth of a worker's CPU
/// consolidating and unlinking chunks (measured with perf on `skein bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    skein_bin::respirate::main(skein_progs::registry)
}
