//! `Host::Learn`: one fact about a host (cpu, memory, storage, os, kvm),
//! learned by the agent's `learn` program. A host buds one per fact, so they
//! are learned in parallel, and reaps their answers.

use std::time::Duration;

use skein_engine::prelude::*;

use super::conn::Host;

pub const FACTS: &[&str] = &["cpu", "memory", "storage", "os", "kvm"];

pub struct Learn;

labels! {
    pub enum Label for Learn { Ask }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Frame {
    pub what: String,
}

#[async_trait]
impl Prog for Learn {
    const NAME: &'static str = "Host::Learn";
    type Label = Label;
    type Frame = Frame;

    async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
        anyhow::ensure!(FACTS.contains(&cx.frame.what.as_str()), "no such fact to learn: {:?}", cx.frame.what);
        // The KVM probe starts qemu; give it longer than the others.
        let limit = if cx.frame.what == "kvm" { 30 } else { 10 };
        let host = Host::load(cx).await?.limit(Duration::from_secs(limit));
        let facts = host.learn(&cx.frame.what).await?;
        pop(json!({ "what": cx.frame.what, "facts": facts }))
    }
}
