//! The prog registry: from the name stored in `strand.prog` back to the Rust
//! type that runs it. Erasing the type here is what lets one worker serve
//! every prog while each prog's own code stays fully typed.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::ctx::{Ctx, StepState, Tx};
use crate::error::StepError;
use crate::prog::{Flow, Label, Prog, Pushed, Semaphore};
use crate::stack::Frame;

/// A flow with the prog's types erased, as the runner applies it.
#[derive(Debug)]
pub(crate) enum RawFlow {
    Hop(&'static str),
    Nap(f64),
    Push(Pushed),
    Pop(Value),
}

#[async_trait::async_trait]
pub(crate) trait AnyProg: Send + Sync {
    fn labels(&self) -> Vec<&'static str>;
    fn has_label(&self, label: &str) -> bool;
    fn destroy_label(&self) -> Option<&'static str>;
    fn semaphores(&self) -> Vec<&'static str>;
    /// Run `label` with the prog's data read from `frame`; returns the flow and
    /// the frame data to write back, if the label changed it.
    async fn run(&self, tx: Tx<'_>, st: &mut StepState, label: &str, frame: &Frame) -> Result<(RawFlow, Option<Value>), StepError>;
}

struct Typed<P>(PhantomData<fn() -> P>);

#[async_trait::async_trait]
impl<P: Prog> AnyProg for Typed<P> {
    fn labels(&self) -> Vec<&'static str> {
        P::Label::ALL.iter().map(|l| l.name()).collect()
    }

    fn has_label(&self, label: &str) -> bool {
        P::Label::parse(label).is_some()
    }

    fn destroy_label(&self) -> Option<&'static str> {
        P::DESTROY.map(Label::name)
    }

    fn semaphores(&self) -> Vec<&'static str> {
        <P::Sem as Semaphore>::ALL.iter().map(|s| s.name()).collect()
    }

    async fn run(&self, tx: Tx<'_>, st: &mut StepState, label: &str, frame: &Frame) -> Result<(RawFlow, Option<Value>), StepError> {
        let label = P::Label::parse(label).ok_or_else(|| StepError::UnknownLabel {
            prog: P::NAME.to_string(),
            label: label.to_string(),
            known: self.labels().join(", "),
        })?;
        let data = P::Frame::deserialize(frame)
            .map_err(|e| StepError::BadFrame { prog: P::NAME.to_string(), error: e.to_string() })?;
        let mut cx = Ctx::<P>::new(data.clone(), tx, st);
        let flow = P::run(&mut cx, label).await.map_err(StepError::Label)?;
        let changed = if cx.frame == data {
            None
        } else {
            Some(serde_json::to_value(&cx.frame).map_err(|e| StepError::BadFrame { prog: P::NAME.to_string(), error: e.to_string() })?)
        };
        let flow = match flow {
            Flow::Hop(l) => RawFlow::Hop(l.name()),
            Flow::Nap(s) => RawFlow::Nap(s),
            Flow::Push(p) => RawFlow::Push(p),
            Flow::Pop(out) => RawFlow::Pop(serde_json::to_value(out).map_err(|e| {
                StepError::Label(anyhow::anyhow!("{} popped an output that does not serialize to JSON: {e}", P::NAME))
            })?),
        };
        Ok((flow, changed))
    }
}

/// Every prog a runner can run, by stored name.
#[derive(Clone, Default)]
pub struct Registry {
    progs: BTreeMap<&'static str, Arc<dyn AnyProg>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Register `P` under `P::NAME`.
    pub fn with<P: Prog>(mut self) -> Self {
        self.progs.insert(P::NAME, Arc::new(Typed::<P>(PhantomData)));
        self
    }

    /// Everything in `other` too.
    pub fn merge(mut self, other: &Registry) -> Self {
        self.progs.extend(other.progs.iter().map(|(k, v)| (*k, v.clone())));
        self
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Arc<dyn AnyProg>, StepError> {
        self.progs.get(name).ok_or_else(|| StepError::UnknownProg {
            prog: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Registered prog names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.progs.keys().copied()
    }

    /// The labels of a registered prog (for completion and validation).
    pub fn labels(&self, prog: &str) -> Option<Vec<&'static str>> {
        self.progs.get(prog).map(|p| p.labels())
    }

    /// The semaphores a registered prog answers: the ones it declares, then `destroy`.
    pub fn semaphores(&self, prog: &str) -> Option<Vec<&'static str>> {
        self.progs.get(prog).map(|p| p.semaphores().into_iter().chain([crate::prog::Signal::DESTROY.name()]).collect())
    }
}
