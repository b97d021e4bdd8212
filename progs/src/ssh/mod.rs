//! SSH: how progs reach hosts.
//!
//! - [`cmd`]: commands built only from literal templates with quoted parameters;
//! - [`shell`]: the seam every command to a host goes through (real SSH, or a script in tests);
//! - [`client`]: ssh2 sessions on blocking threads, reused per host, with deadlines;
//! - [`keys`]: key generation, and sealing private keys at rest;
//! - [`metrics`]: call durations and failures by host;
//! - `scripted` (feature `testing`): a host whose answers a test writes.

pub mod client;
pub mod cmd;
pub mod keys;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod scripted;
pub mod shell;

pub use client::{Output, SshError, SshPool, Target};
pub use cmd::{Cmd, CmdError, Secret, ShellArg};
pub use shell::{shell, Shared, Shell};
