//! skein-progs: the state machines the control plane runs.
//!
//! - Families of progs: [`host`] (a host's lifecycle, and the agent shipped
//!   to it), [`vm`] (a VM's), [`pages`] (delivering pages to operators),
//!   [`demo`] (the census `skein up` runs and `docs/writing-a-prog.md`
//!   builds), [`bench`](mod@bench) (what `skein bench` measures the engine with).
//! - [`ssh`]: how progs reach hosts (`cmd!`, the client, sealed keys).
//! - [`rules`]: what a host or VM may be, checked alike by the API and the CLI.
//!
//! A new prog goes in its own file under the module of its family, and into
//! its family's registry (so [`registry`]) so workers can run it.

pub mod bench;
pub mod demo;
pub mod host;
pub mod pages;
pub mod rules;
pub mod ssh;
pub mod vm;
pub mod vnet;

use skein_engine::Registry;

/// Every prog in this crate.
pub fn registry() -> Registry {
    Registry::new().merge(&demo::registry()).merge(&bench::registry()).merge(&host::registry()).merge(&vm::registry()).merge(&pages::registry()).merge(&vnet::registry())
}
