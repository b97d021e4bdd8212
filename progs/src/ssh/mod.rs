//! SSH: how progs reach hosts.
//!
//! - [`cmd`]: commands built only from literal templates with quoted parameters;
//! - [`client`]: ssh2 sessions on blocking threads, reused per host, with deadlines;
//! - [`keys`]: key generation, and sealing private keys at rest;
//! - [`metrics`]: call durations and failures by host.

pub mod client;
pub mod cmd;
pub mod keys;
pub mod metrics;

pub use client::{Output, SshError, SshPool, Target};
pub use cmd::{Cmd, CmdError, Secret, ShellArg};
