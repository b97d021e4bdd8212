//! One module per `skein` subcommand, and what they share.
//!
//! - [`up`]: the control plane on its defaults, with a demo ([`up::vm_demo`]:
//!   a VM on a local host, end to end).
//! - [`api`]: the HTTP API alone. [`bench`](mod@bench): the benchmark, with its
//!   in-run Postgres baseline and its scenarios (`api`, `remote`, `takeover`).
//! - [`host`], [`vm`], [`subnet`], [`project`], [`token`]: the fleet and its
//!   tenants. `host` and `vm` also hold the grammar of the console's `host`
//!   and `vm` commands, which the console runs.
//! - Shared by them: [`session`] (the database, the operator, the reply),
//!   [`change`] (confirm, make and audit a change in one transaction; bounded
//!   file reads), [`follow`] (`--wait`: a strand followed live).
//!
//! Layers: `main.rs` and `console/` use `cmd`; `cmd` uses `api` and the
//! process-wide modules below it (`process`, `embedded`, `metrics`,
//! `render`, `signals`), and never `console`.

pub mod api;
pub mod bench;
pub mod change;
pub mod follow;
pub mod host;
pub mod project;
pub mod session;
pub mod subnet;
pub mod token;
pub mod up;
pub mod vm;
