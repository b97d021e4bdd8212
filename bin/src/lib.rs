//! The `respirate` daemon and the `skein` CLI share these modules.
//!
//! - [`worker`]: the flags, database connection, logging, signals and metrics
//!   of a worker process (`respirate`, and the one inside `skein up`).
//! - [`embedded`]: the private Postgres cluster used when no URL is given.
//! - [`bench`]: `skein bench`, the benchmark with its in-run Postgres baseline.
//! - [`up`]: `skein up`, the control plane on its defaults, with a demo.

pub mod bench;
pub mod embedded;
pub mod host_cmd;
pub mod up;
pub mod worker;
