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
//! pop(Output { .. })        // return the prog's output to the caller, or exit with it
//! ```
//!
//! `bud` and `reap` are calls on the step context (`cx.bud(..)`,
//! `cx.reap::<Child>()`), because a label buds children and then still says
//! where it goes next.
//!
//! The compiler checks what a string would leave to chance: labels are an
//! enum, so `hop(Label::Typo)` does not compile; a pushed prog is named by its
//! label type, so neither does pushing a frame of the wrong type; semaphores
//! are an enum per prog ([`semaphores!`](crate::semaphores)), so neither does
//! `cx.take(Sem::Typo)`; and a prog pops only its own `Output` type, which
//! its caller (`cx.retval::<Sub>()`) and parent (`cx.reap::<Child>()`) read
//! back typed: a value that does not fit fails their step, never reads as zero.

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

/// The semaphores one prog answers, besides `destroy` (which every prog
/// answers and the engine handles). Write it with
/// [`semaphores!`](crate::semaphores); a prog with none uses [`NoSems`].
pub trait Semaphore: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    const ALL: &'static [Self];

    /// The name stored in the `semaphore` table.
    fn name(self) -> &'static str;
}

/// Declare a prog's semaphores with their stored names:
/// `semaphores! { pub enum Sem { Reboot = "reboot", Drain = "drain" } }`,
/// then `type Sem = Sem;` in its `Prog`. A label reads them as
/// `cx.take(Sem::Reboot)`; the API signals `enqueue::incr(conn, id, Sem::Drain)`.
/// A stored name is what operators type (the console completes it): never
/// rename one a live strand may have set.
///
/// A misspelled semaphore does not compile (nor does a bare string):
///
/// ```
/// use skein_engine::prelude::*;
/// pub struct Host;
/// labels! { pub enum Label for Host { Wait } }
/// semaphores! { pub enum Sem { Reboot = "reboot" } }
/// #[async_trait]
/// impl Prog for Host {
///     const NAME: &'static str = "Doc::Host";
///     type Label = Label;
///     type Frame = NoFrame;
///     type Sem = Sem;
///     type Output = Msg;
///     async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
///         if cx.take(Sem::Reboot) { return pop("rebooting"); }
///         nap(60)
///     }
/// }
/// ```
///
/// ```compile_fail
/// use skein_engine::prelude::*;
/// pub struct Host;
/// labels! { pub enum Label for Host { Wait } }
/// semaphores! { pub enum Sem { Reboot = "reboot" } }
/// #[async_trait]
/// impl Prog for Host {
///     const NAME: &'static str = "Doc::Host";
///     type Label = Label;
///     type Frame = NoFrame;
///     type Sem = Sem;
///     type Output = Msg;
///     async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
///         if cx.take(Sem::Rebot) { return pop("rebooting"); }
///         nap(60)
///     }
/// }
/// ```
///
/// ```compile_fail
/// use skein_engine::prelude::*;
/// pub struct Host;
/// labels! { pub enum Label for Host { Wait } }
/// semaphores! { pub enum Sem { Reboot = "reboot" } }
/// #[async_trait]
/// impl Prog for Host {
///     const NAME: &'static str = "Doc::Host";
///     type Label = Label;
///     type Frame = NoFrame;
///     type Sem = Sem;
///     type Output = Msg;
///     async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
///         if cx.take("reboot") { return pop("rebooting"); }
///         nap(60)
///     }
/// }
/// ```
#[macro_export]
macro_rules! semaphores {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident = $stored:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($variant),+ }

        impl $crate::prog::Semaphore for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn name(self) -> &'static str {
                match self { $($name::$variant => $stored),+ }
            }
        }
    };
}

/// The semaphores of a prog that answers none but `destroy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoSems {}

impl Semaphore for NoSems {
    const ALL: &'static [Self] = &[];
    fn name(self) -> &'static str {
        match self {}
    }
}

/// A semaphore a caller sets on a strand: one a prog declares (any
/// [`Semaphore`] converts) or [`Signal::DESTROY`], which every prog answers.
/// Only those make one, so every signal sent from code names a real semaphore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(&'static str);

impl Signal {
    /// Unwind the strand and run its prog's `DESTROY` label (or just exit).
    pub const DESTROY: Signal = Signal("destroy");

    /// The stored name.
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl<S: Semaphore> From<S> for Signal {
    fn from(s: S) -> Signal {
        Signal(s.name())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A state machine. See the module docs and `docs/writing-a-prog.md`.
#[async_trait::async_trait]
pub trait Prog: Send + Sync + Sized + 'static {
    /// The stored name, e.g. `"Vm::HostNexus"`. Never rename a prog that has live strands.
    const NAME: &'static str;
    type Label: Label<Prog = Self>;
    /// The prog's own data in its stack frame. Unknown keys are ignored on
    /// read, so it sits beside the engine's keys (`subject_id`, `link`, ...).
    /// Written back only if the label changed it (`Clone` + `PartialEq`
    /// tell): most steps leave it alone, and serializing it back into the
    /// stack cost more than the rest of a step's bookkeeping.
    type Frame: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync;
    /// The semaphores this prog answers besides `destroy` ([`semaphores!`](crate::semaphores),
    /// or [`NoSems`]). Labels read only these; operators' tools complete and
    /// check names against them.
    type Sem: Semaphore;
    /// What the prog pops: to its caller (`cx.retval::<ThisProg>()`), or as
    /// its exit value (`cx.reap::<ThisProg>()` in its parent). Stored as JSON,
    /// so give new fields `#[serde(default)]`. [`Msg`] is `{"msg": ..}`.
    type Output: Serialize + DeserializeOwned + Send + Sync;
    /// Where a `destroy` semaphore sends the strand; `None` means it just
    /// exits with `{"msg": "destroyed"}` (not an `Output`: a parent reaping
    /// it fails, saying so).
    const DESTROY: Option<Self::Label> = None;

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
    Pop(P::Output),
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
/// When it pops, this prog's current label runs again with `cx.retval::<Sub>()` set.
pub fn push<P: Prog, L: Label>(frame: <L::Prog as Prog>::Frame, label: L) -> Step<P> {
    let frame = serde_json::to_value(frame)?;
    Ok(Flow::Push(Pushed { prog: <L::Prog as Prog>::NAME, label: label.name(), frame }))
}

/// Return the prog's output to the caller; on the last frame, exit with it.
/// A prog whose `Output` is [`Msg`] may pop a string: `pop("done")`.
pub fn pop<P: Prog>(output: impl Into<P::Output>) -> Step<P> {
    Ok(Flow::Pop(output.into()))
}

/// The output of a prog that only says what happened: `{"msg": "done"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Msg {
    pub msg: String,
}

impl From<&str> for Msg {
    fn from(msg: &str) -> Msg {
        Msg { msg: msg.to_string() }
    }
}

impl From<String> for Msg {
    fn from(msg: String) -> Msg {
        Msg { msg }
    }
}

/// Read a value a prog popped as `P::Output`, or say clearly why it is not one.
pub(crate) fn output_of<P: Prog>(value: &Value, whose: impl FnOnce() -> String) -> anyhow::Result<P::Output> {
    serde_json::from_value(value.clone())
        .map_err(|e| anyhow::anyhow!("{} returned {value}, which is not a {} output: {e}", whose(), P::NAME))
}

/// The frame of a prog that keeps no data of its own.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct NoFrame {}
