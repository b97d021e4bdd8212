//! The demo family: a small census that uses every verb of the engine.
//! It is the worked example in `docs/writing-a-prog.md` and what `skein up` shows.

pub mod census;
pub mod counter;
pub mod doubler;

use skein_engine::Registry;

pub fn registry() -> Registry {
    Registry::new().with::<census::Census>().with::<counter::Counter>().with::<doubler::Doubler>()
}
