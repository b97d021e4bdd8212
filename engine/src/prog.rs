//! The prog API: what a control-plane engineer writes.
//!
//! A prog is a Rust type with a name (stored in `strand.prog`), a label enum
//! (stored in `strand.label`) and a frame struct (its part of `strand.stack`).
//! A label is one match arm of `run` that does its work and returns a flow:
//!
//! ```ignore
//! hop(Label::Wait)          // next label, now, under the same lease
//! nap(30)                   // come back in 30 s (or when woken)
//! push(sub::Frame { .. }, sub::Label::Start)   // call a sub-prog
//! pop("done")               // return to the caller, or exit
//! ```
//!
//! `bud` and `reap` are calls on the step context (`cx.bud(..)`, `cx.reap()`),
//! because a label buds children and then still says where it goes next.
//!
//! Because labels are an enum, `hop(Label::Typo)` does not compile, and
//! because a pushed prog is named by its label type, neither does pushing a
//! frame of the wrong type.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::ctx::Ctx;

/// The states of one prog. Write it with [`labels!`](crate::labels), which
/// derives the names and the list of all labels.
pub trait Label: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The prog these labels belong to.
    type Prog: Prog<Label = Self>;
    const ALL: &'static [Self];

    /// The name stored in `strand.label`.
    fn name(self) -> &'static str;

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|l| l.name() == name)
    }
}

/// Declare a prog's labels: `labels! { pub enum Label for MyProg { Start, Wait } }`.
/// Each variant is stored under its own name (`"Start"`, `"Wait"`).
#[macro_export]
macro_rules! labels {
    ($(#[$meta:meta])* $vis:vis enum $name:ident for $prog:ty { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($variant),+ }

        impl $crate::Label for $name {
            type Prog = $prog;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn name(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
        }
    };
}

/// A state machine. See the module docs and `docs/writing-a-prog.md`.
#[async_trait::async_trait]
pub trait Prog: Send + Sync + Sized + 'static {
    /// The stored name, e.g. `"Vm::HostNexus"`. Never rename a prog that has live strands.
    const NAME: &'static str;
    type Label: Label<Prog = Self>;
    /// The prog's own data in its stack frame. Unknown keys are ignored on
    /// read, so it sits beside the engine's keys (`subject_id`, `link`, ...).
    type Frame: Serialize + DeserializeOwned + Send + Sync;
    /// Where a `destroy` semaphore sends the strand; `None` means it just exits.
    const DESTROY: Option<Self::Label> = None;
    /// The semaphores this prog answers (besides `destroy`, which every prog
    /// answers). Operators' tools complete and check names against it, and
    /// a debug build refuses to read one that is not declared here.
    const SEMAPHORES: &'static [&'static str] = &[];

    /// Run one label.
    async fn run(cx: &mut Ctx<'_, Self>, label: Self::Label) -> Step<Self>;
}

/// What a label returns.
pub type Step<P> = anyhow::Result<Flow<P>>;

/// What happens after a label.
pub enum Flow<P: Prog> {
    Hop(P::Label),
    Nap(f64),
    Push(Pushed),
    Pop(Value),
}

/// A call into a sub-prog, type-checked when it was built by [`push`].
#[derive(Debug)]
pub struct Pushed {
    pub prog: &'static str,
    pub label: &'static str,
    pub frame: Value,
}

/// Go to `label` next, at once, under the same lease. Clears `retval`.
pub fn hop<P: Prog>(label: P::Label) -> Step<P> {
    Ok(Flow::Hop(label))
}

/// Come back after `secs` seconds, or sooner if woken. `nap(0)` continues at once.
pub fn nap<P: Prog>(secs: impl Into<f64>) -> Step<P> {
    let secs = secs.into();
    anyhow::ensure!(secs.is_finite() && secs >= 0.0, "nap needs a finite, non-negative number of seconds, got {secs}");
    Ok(Flow::Nap(secs))
}

/// Call the sub-prog that owns `label`, with `frame` as its new top frame.
/// When it pops, this prog's current label runs again with `cx.retval()` set.
pub fn push<P: Prog, L: Label>(frame: <L::Prog as Prog>::Frame, label: L) -> Step<P> {
    let frame = serde_json::to_value(frame)?;
    Ok(Flow::Push(Pushed { prog: <L::Prog as Prog>::NAME, label: label.name(), frame }))
}

/// Return `value` to the caller; on the last frame, exit with it.
/// A string becomes `{"msg": value}`.
pub fn pop<P: Prog>(value: impl Into<Popped>) -> Step<P> {
    Ok(Flow::Pop(value.into().0))
}

/// A value a label pops: any JSON, or a message.
pub struct Popped(pub Value);

impl From<Value> for Popped {
    fn from(v: Value) -> Popped {
        Popped(v)
    }
}

impl From<&str> for Popped {
    fn from(msg: &str) -> Popped {
        Popped(serde_json::json!({ "msg": msg }))
    }
}

impl From<String> for Popped {
    fn from(msg: String) -> Popped {
        Popped(serde_json::json!({ "msg": msg }))
    }
}

/// The frame of a prog that keeps no data of its own.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct NoFrame {}
