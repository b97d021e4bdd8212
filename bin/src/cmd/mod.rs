//! One module per `skein` subcommand, and what they share.

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
