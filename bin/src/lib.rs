//! The `respirate` daemon and the `skein` CLI share these modules.
//!
//! - [`respirate`]: the `respirate` process, over any registry of progs.
//! - [`worker`]: the flags, database connection, logging, signals and metrics
//!   of a worker process (`respirate`, and the one inside `skein up`).
//! - [`metrics`]: the Prometheus series of a process (steps, API, pool, pages).
//! - [`local_host`]: real sshd hosts in network namespaces (tests, the VM demo).
//! - [`embedded`]: the private Postgres cluster used when no URL is given.
//! - [`bench`]: `skein bench`, the benchmark with its in-run Postgres baseline
//!   ([`bench_api`]: its scenario for creates through the HTTP API;
//!   [`bench_takeover`]: how fast a killed worker's strands move on;
//!   [`bench_remote`]: strands beside slow remote calls).
//! - [`up`]: `skein up`, the control plane on its defaults, with a demo.
//! - [`api`]: the HTTP API (`skein api`, and inside `skein up`); [`api_cmd`],
//!   [`project_cmd`], [`token_cmd`], [`subnet_cmd`]: `skein api`, `skein project`,
//!   `skein token`, `skein subnet`.
//! - [`console`]: the operator console and the `skein strand|page|host|vm|ubid|audit`
//!   commands; [`host_cmd`], [`vm_cmd`]: adding hosts and creating VMs;
//!   [`follow`]: following a strand live (`--wait`); [`cli`]: what every CLI
//!   change shares (confirm, audit, bounded file reads); [`signals`]: what
//!   a VM or host can be asked to do in which state (API and CLI alike).

pub mod api;
pub mod api_cmd;
pub mod bench;
pub mod bench_api;
pub mod bench_remote;
pub mod bench_takeover;
pub mod cli;
pub mod console;
pub mod embedded;
pub mod follow;
pub mod host_cmd;
pub mod local_host;
pub mod local_underlay;
pub mod metrics;
pub mod project_cmd;
pub mod respirate;
pub mod signals;
pub mod subnet_cmd;
pub mod token_cmd;
pub mod up;
pub mod vm_cmd;
pub mod vm_demo;
pub mod worker;
