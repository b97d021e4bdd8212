//! `Host::InstallAgent`: put this build's host agent on the host, unless it
//! is there already. One archive over SSH, unpacked beside the current one,
//! checked against its manifest, then swapped in; a half-done install never
//! replaces a working agent. Then the tunnel program (`tunnel.rs`), the same
//! way: uploaded only if its digest differs, checked, renamed into place
//! (a running tunnel keeps the file it started from).

use std::time::Duration;

use skein_engine::prelude::*;
use skein_models::vm_host;

use super::{agent, tunnel};
use super::conn::Host;

pub struct InstallAgent;

labels! {
    pub enum Label for InstallAgent { Install }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {}

/// What an install returns: the agent version now on the host, and the
/// SHA-256 of the tunnel program beside it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Output {
    pub agent_version: String,
    /// The digest of the `skein-tunnel` binary now on the host.
    #[serde(default)]
    pub tunnel_sha256: String,
}

#[async_trait]
impl Prog for InstallAgent {
    const NAME: &'static str = "Host::InstallAgent";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Output;

    async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
        let host = Host::load(cx).await?.limit(Duration::from_secs(60));
        let root = host.root().to_string();
        let want = agent::version();
        let have = host.exec(&crate::cmd!("cat {}/agent/VERSION 2>/dev/null || true", root)?).await?.stdout_str();
        if have.trim() != want {
            let install = crate::cmd!(
                "set -e; cd {}; rm -rf agent.new agent.old; mkdir -p agent.new; tar -x -C agent.new; \
                 (cd agent.new && sha256sum -c --quiet MANIFEST); \
                 if [ -d agent ]; then mv agent agent.old; fi; mv agent.new agent; rm -rf agent.old",
                root
            )?;
            host.exec_with_stdin(&install, agent::archive()).await?;
        }
        let (binary, digest) = tunnel::local()?;
        let have = host.exec(&crate::cmd!("cat {}/tunnel/SHA256 2>/dev/null || true", root)?).await?.stdout_str();
        if have.trim() != digest {
            let install = crate::cmd!(
                "set -e; mkdir -p {root}/tunnel; cd {root}/tunnel; cat > skein-tunnel.new; \
                 printf '%s  skein-tunnel.new\\n' {digest} | sha256sum -c --quiet; \
                 chmod 0755 skein-tunnel.new; mv -f skein-tunnel.new skein-tunnel; printf '%s\\n' {digest} > SHA256",
                root = root,
                digest = digest
            )?;
            host.exec_with_stdin(&install, binary.clone()).await?;
        }
        vm_host::set_agent_version(cx.tx.conn().await?, host.row.id, &want).await?;
        pop(Output { agent_version: want, tunnel_sha256: digest.clone() })
    }
}
