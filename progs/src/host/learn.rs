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

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub what: String,
}

/// One fact, as the agent's `learn` prints it; stored as
/// `{"what": "cpu", "facts": {...}}`. A field the agent did not print fails
/// the child, so the host's parent never records a missing fact as nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", content = "facts", rename_all = "lowercase")]
pub enum Output {
    Cpu(Cpu),
    Memory(Memory),
    Storage(Storage),
    Os(Os),
    Kvm(Kvm),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub cpus: i32,
    pub cores: i32,
    pub sockets: i32,
    pub threads_per_core: i32,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_mib: i64,
    pub available_mib: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Storage {
    pub total_mib: i64,
    pub free_mib: i64,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Os {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
    pub kernel: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kvm {
    pub device: bool,
    pub usable: bool,
    pub reason: String,
}

#[async_trait]
impl Prog for Learn {
    const NAME: &'static str = "Host::Learn";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Output;

    async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
        anyhow::ensure!(FACTS.contains(&cx.frame.what.as_str()), "no such fact to learn: {:?}", cx.frame.what);
        // The KVM probe starts qemu; give it longer than the others.
        let limit = if cx.frame.what == "kvm" { 30 } else { 10 };
        let host = Host::load(cx).await?.limit(Duration::from_secs(limit));
        let facts = host.learn(&cx.frame.what).await?;
        let learned: Output = serde_json::from_value(json!({ "what": cx.frame.what, "facts": facts.clone() }))
            .map_err(|e| anyhow::anyhow!("learn {} printed facts that do not fit ({e}): {facts}", cx.frame.what))?;
        pop(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fact_the_agent_prints_reads_as_its_typed_output() {
        let cpu = json!({"what": "cpu", "facts": {"cpus": 4, "cores": 2, "sockets": 1, "threads_per_core": 2, "model": "x"}});
        let Output::Cpu(c) = serde_json::from_value(cpu.clone()).unwrap() else { panic!("not cpu") };
        assert_eq!((c.cpus, c.cores, c.model.as_str()), (4, 2, "x"));
        assert_eq!(serde_json::to_value(Output::Cpu(c)).unwrap(), cpu, "stored as the agent printed it");
        let kvm = json!({"what": "kvm", "facts": {"device": true, "usable": false, "reason": "guest hung"}});
        assert!(matches!(serde_json::from_value(kvm).unwrap(), Output::Kvm(Kvm { usable: false, .. })));
    }

    #[test]
    fn a_fact_missing_a_field_is_refused_not_recorded_as_nothing() {
        let err = serde_json::from_value::<Output>(json!({"what": "memory", "facts": {"available_mib": 5}})).unwrap_err();
        assert!(err.to_string().contains("missing field `total_mib`"), "{err}");
    }
}
