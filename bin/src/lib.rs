//! The `respirate` daemon and the `skein` CLI share these modules. From the
//! top down (a module uses only those below it):
//!
//! - [`console`]: the operator console, and the `skein strand|page|host|vm|ubid|audit`
//!   commands it answers (one grammar, three doors).
//! - [`cmd`]: one module per `skein` subcommand (`up`, `api`, `bench`, `host`,
//!   `vm`, `subnet`, `project`, `token`) and what they share (the operator's
//!   session, confirmed and audited changes, following a strand live).
//! - [`api`]: the HTTP API (`skein api`, and inside `skein up`).
//! - [`respirate`]: the `respirate` process, over any registry of progs.
//! - Process-wide: [`process`] (the plumbing every command shares: logs,
//!   database, secrets key, signals, exit codes, and a worker's dispatcher),
//!   [`embedded`] (the private Postgres cluster used when no URL is given, and
//!   that choice), [`metrics`] (the Prometheus series of a process),
//!   [`render`] (text for people), [`signals`] (what a VM or host can be
//!   asked to do in which state, for the API and the CLI alike).
//! - [`local_host`]: real sshd hosts in network namespaces (tests, the VM demo),
//!   and [`local_underlay`]: the network between them.

pub mod api;
pub mod cmd;
pub mod console;
pub mod embedded;
pub mod local_host;
pub mod local_underlay;
pub mod metrics;
pub mod process;
pub mod render;
pub mod respirate;
pub mod signals;
