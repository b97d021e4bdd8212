//! The pages family: delivering pages to where operators are woken
//! (`skein page hook`); see `skein_models::page` for when a delivery starts.

pub mod forward;

use skein_engine::Registry;

pub fn registry() -> Registry {
    Registry::new().with::<forward::Forward>()
}
