//! `respirate` serving the spec's test progs too (journaling steps, a poison
//! pill), for the tests that kill, stop and starve real worker processes.

fn main() -> std::process::ExitCode {
    skein_bin::respirate::main(skein_spec::registry)
}
