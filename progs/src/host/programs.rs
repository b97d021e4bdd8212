//! The host agent's programs (`progs/host-agent/bin`), one typed method of
//! [`Host`] each, so no label writes an agent command line by hand. Every
//! program is called the same way: `SKEIN_ROOT=<root> <root>/agent/bin/<program> <args>`,
//! each argument one quoted word. Long ones run detached through the
//! daemonizer (`host/daemon.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::conn::Host;
use crate::ssh::{Cmd, Output, ShellArg, SshError};

/// The programs of the host agent: every file of `progs/host-agent/bin`
/// (a test checks the two agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentProgram {
    AgentVersion,
    BootId,
    BuildGuestImage,
    Daemonizer,
    Learn,
    NetApply,
    NetStatus,
    ProbeKvmGuest,
    RebootHost,
    VmRemove,
    VmRun,
    VmSetup,
    VmStatus,
    VmStop,
}

impl AgentProgram {
    pub const ALL: &'static [AgentProgram] = &[
        AgentProgram::AgentVersion,
        AgentProgram::BootId,
        AgentProgram::BuildGuestImage,
        AgentProgram::Daemonizer,
        AgentProgram::Learn,
        AgentProgram::NetApply,
        AgentProgram::NetStatus,
        AgentProgram::ProbeKvmGuest,
        AgentProgram::RebootHost,
        AgentProgram::VmRemove,
        AgentProgram::VmRun,
        AgentProgram::VmSetup,
        AgentProgram::VmStatus,
        AgentProgram::VmStop,
    ];

    /// Its file name under `agent/bin`.
    pub fn name(self) -> &'static str {
        match self {
            AgentProgram::AgentVersion => "agent-version",
            AgentProgram::BootId => "boot-id",
            AgentProgram::BuildGuestImage => "build-guest-image",
            AgentProgram::Daemonizer => "daemonizer",
            AgentProgram::Learn => "learn",
            AgentProgram::NetApply => "net-apply",
            AgentProgram::NetStatus => "net-status",
            AgentProgram::ProbeKvmGuest => "probe-kvm-guest",
            AgentProgram::RebootHost => "reboot-host",
            AgentProgram::VmRemove => "vm-remove",
            AgentProgram::VmRun => "vm-run",
            AgentProgram::VmSetup => "vm-setup",
            AgentProgram::VmStatus => "vm-status",
            AgentProgram::VmStop => "vm-stop",
        }
    }
}

/// What `vm-status` says about a VM on its host right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// Its directory is there.
    pub exists: bool,
    /// Its qemu runs.
    pub running: bool,
    pub pid: Option<u32>,
    /// The host port forwarded to the guest's SSH, picked at launch.
    pub ssh_port: Option<u16>,
    /// The guest's SSH server answered on that port just now.
    pub ssh_ready: bool,
}

impl VmStatus {
    /// The forwarded SSH port, if the guest's SSH answered just now.
    pub fn ssh_answering(&self) -> Option<u16> {
        self.ssh_port.filter(|_| self.running && self.ssh_ready)
    }
}

/// The `vm_*` methods take the VM's name on the host (also its unix user): its id.
impl Host {
    /// `SKEIN_ROOT=<root> <root>/agent/bin/<program> <args>`, each argument one quoted word.
    pub fn agent_cmd(&self, program: AgentProgram, args: &[&dyn ShellArg]) -> Result<Cmd, SshError> {
        let mut cmd = crate::cmd!("SKEIN_ROOT={root} {root}/agent/bin/{program}", root = self.root(), program = program.name())?;
        for arg in args {
            cmd = cmd.arg(*arg)?;
        }
        Ok(cmd)
    }

    /// Run an agent program, failing on a non-zero exit.
    pub async fn agent(&self, program: AgentProgram, args: &[&dyn ShellArg]) -> Result<Output, SshError> {
        self.exec(&self.agent_cmd(program, args)?).await
    }

    /// The id of the host's current boot: it changes when the host reboots.
    pub async fn boot_id(&self) -> Result<String, SshError> {
        self.line(&self.agent_cmd(AgentProgram::BootId, &[])?).await
    }

    /// The version of the agent installed on the host (compare with `agent::version()`).
    pub async fn agent_version(&self) -> Result<String, SshError> {
        self.line(&self.agent_cmd(AgentProgram::AgentVersion, &[])?).await
    }

    /// One fact about the host (`cpu`, `memory`, `storage`, `os`, `kvm`), as the JSON `learn` prints.
    pub async fn learn(&self, what: &str) -> Result<Value, SshError> {
        self.json(&self.agent_cmd(AgentProgram::Learn, &[&what])?).await
    }

    /// Ask the host to reboot; returns what it said.
    pub async fn reboot_host(&self) -> Result<String, SshError> {
        self.line(&self.agent_cmd(AgentProgram::RebootHost, &[])?).await
    }

    /// Make the host's private networking what `desired` (JSON, docs/host-network.md)
    /// says; returns what is true afterwards (as `net_status`). The desired
    /// state travels on stdin: it holds keys, which never go in argv.
    pub async fn net_apply(&self, desired: &Value) -> Result<Value, SshError> {
        let cmd = self.agent_cmd(AgentProgram::NetApply, &[])?;
        let out = self.exec_with_stdin(&cmd, serde_json::to_vec(desired).expect("JSON serializes")).await?;
        self.read_json(&cmd, &out)
    }

    /// What the host's private networking is right now (docs/host-network.md).
    pub async fn net_status(&self) -> Result<Value, SshError> {
        self.json(&self.agent_cmd(AgentProgram::NetStatus, &[])?).await
    }

    /// Make a VM's user, directory and disk (idempotent). `private_ip` is its
    /// address on its subnet, when it is in one; its NIC (a tap owned by that
    /// user) is made by `net-apply` before qemu starts.
    pub async fn vm_setup(&self, name: &str, cores: i32, memory_mib: i32, key_b64: &str, private_ip: Option<&str>) -> Result<(), SshError> {
        let cmd = self.agent_cmd(AgentProgram::VmSetup, &[&name, &cores, &memory_mib, &key_b64])?;
        let cmd = match private_ip {
            Some(ip) => cmd.arg(&ip)?,
            None => cmd,
        };
        self.exec(&cmd).await.map(drop)
    }

    /// What is true about the VM on the host right now.
    pub async fn vm_status(&self, name: &str) -> Result<VmStatus, SshError> {
        self.json(&self.agent_cmd(AgentProgram::VmStatus, &[&name])?).await
    }

    /// Stop the VM's qemu, keeping its user, directory and disk.
    pub async fn vm_stop(&self, name: &str) -> Result<(), SshError> {
        self.agent(AgentProgram::VmStop, &[&name]).await.map(drop)
    }

    /// Remove the VM from the host: qemu, user, disk and directory.
    pub async fn vm_remove(&self, name: &str) -> Result<(), SshError> {
        self.agent(AgentProgram::VmRemove, &[&name]).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_program_has_a_variant() {
        let mut bundled: Vec<String> = super::super::agent::FILES.iter().filter_map(|(p, _)| p.strip_prefix("bin/")).map(String::from).collect();
        bundled.sort();
        let mut known: Vec<String> = AgentProgram::ALL.iter().map(|p| p.name().to_string()).collect();
        known.sort();
        assert_eq!(known, bundled, "give each program of host-agent/bin a variant of AgentProgram (and a method of Host)");
    }

    #[test]
    fn vm_status_reads_what_the_program_prints() {
        let line = r#"{"exists": true, "running": true, "pid": 42, "ssh_port": 10022, "ssh_ready": false}"#;
        let s: VmStatus = serde_json::from_str(line).unwrap();
        assert_eq!(s, VmStatus { exists: true, running: true, pid: Some(42), ssh_port: Some(10022), ssh_ready: false });
        assert_eq!(s.ssh_answering(), None, "not ready yet");
        let gone: VmStatus = serde_json::from_str(r#"{"exists": false, "running": false, "pid": null, "ssh_port": null, "ssh_ready": false}"#).unwrap();
        assert_eq!(gone, VmStatus::default());
    }
}
