//! skein-progs: the state machines the control plane runs.
//!
//! `bench` holds the progs `skein bench` measures the engine with.
//!
//! A new prog goes in its own file under the module of its family (`demo/`,
//! later `vm/`, `host/`), and into [`registry`] so workers can run it.

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
