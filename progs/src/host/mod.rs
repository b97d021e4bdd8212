//! The host family: progs that prepare hosts and keep them healthy.
//!
//! - [`nexus`]: `Vm::HostNexus`, a host's lifecycle;
//! - [`install`]: `Host::InstallAgent`, ships the host agent (a sub-prog);
//! - [`learn`]: `Host::Learn`, one fact about a host (budded in parallel);
//! - [`agent`]: the agent bundle compiled into this binary;
//! - [`tunnel`]: the tunnel program shipped beside it;
//! - [`conn`]: a host as a prog reaches it, and adding one;
//! - [`daemon`]: polling long host work started through the daemonizer.

pub mod agent;
pub mod conn;
pub mod daemon;
pub mod install;
pub mod learn;
pub mod nexus;
pub mod tunnel;

pub use conn::{add, Host, NewHost};

pub fn registry() -> skein_engine::Registry {
    skein_engine::Registry::new().with::<nexus::HostNexus>().with::<install::InstallAgent>().with::<learn::Learn>()
}
