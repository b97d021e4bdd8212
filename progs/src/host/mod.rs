//! The host family: progs that prepare hosts and keep them healthy.
//!
//! - [`nexus`]: `Vm::HostNexus`, a host's lifecycle;
//! - [`install`]: `Host::InstallAgent`, ships the host agent (a sub-prog);
//! - [`learn`]: `Host::Learn`, one fact about a host (budded in parallel);
//! - [`agent`]: the agent bundle compiled into this binary;
//! - [`tunnel`]: the tunnel program shipped beside it;
//! - [`conn`]: a host as a prog reaches it (through the `ssh::Shell` seam, within its step's deadline), and adding one;
//! - [`programs`]: the agent's programs, one typed method of `Host` each;
//! - [`daemon`]: long host work started through the daemonizer, and polled.

pub mod agent;
pub mod conn;
pub mod daemon;
pub mod install;
pub mod learn;
pub mod nexus;
pub mod programs;
pub mod tunnel;

pub use conn::{add, Host, NewHost};
pub use programs::{AgentProgram, VmStatus};

pub fn registry() -> skein_engine::Registry {
    skein_engine::Registry::new().with::<nexus::HostNexus>().with::<install::InstallAgent>().with::<learn::Learn>()
}
