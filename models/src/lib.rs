//! skein-models: the rows and the queries on them.
//!
//! This is the only crate that writes SQL. The engine calls these functions
//! to lease and step strands; progs never do (they use the engine's API), but
//! they own their own tables (hosts, VMs, subnets...), queried here too, as
//! are the CLI's, the API's and `skein bench`'s.

pub mod api_token;
pub mod archive;
pub mod audit;
pub mod bench;
pub mod capacity;
pub mod db;
pub mod event;
pub mod idempotency;
pub mod inspect;
pub mod network;
pub mod page;
pub mod project;
pub mod semaphore;
pub mod sshable;
pub mod strand;
pub mod subnet;
pub mod text_enum;
pub mod ubid;
pub mod vm;
pub mod vm_host;
pub mod worker;

pub use ubid::{Ubid, UbidError, UbidType};
