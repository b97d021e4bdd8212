//! A host as a prog reaches it: its row, its SSH target (key unsealed), and
//! the agent's programs under the host's root directory. Loading a host
//! holds no connection afterwards, so a label can go on to SSH.

use std::time::Duration;

use skein_engine::{Ctx, Prog};
use skein_models::sshable::{self, Sshable};
use skein_models::vm_host::{self, VmHost};
use skein_models::{Ubid, UbidType};
use sqlx::PgConnection;

use crate::ssh::keys::SecretKey;
use crate::ssh::{Cmd, Output, SshError, SshPool, Target};

/// The longest one SSH call of a host or VM label may take (each call is
/// also bounded by the step's time left).
pub const SSH_LIMIT: Duration = Duration::from_secs(30);

pub struct Host {
    pub row: VmHost,
    pub sshable: Sshable,
    pub target: Target,
    ssh: SshPool,
}

impl Host {
    /// The host this strand drives (its subject).
    pub async fn load<P: Prog>(cx: &Ctx<'_, P>) -> anyhow::Result<Host> {
        Host::load_id(cx, cx.subject_id()).await
    }

    /// Host `id`, for a strand that drives something on it (a VM). Read on
    /// a connection given back before this returns: SSH to the host comes
    /// next, and must hold no database.
    pub async fn load_id<P: Prog>(cx: &Ctx<'_, P>, id: Ubid) -> anyhow::Result<Host> {
        let ssh = cx.resource::<SshPool>()?.clone();
        let secret = cx.resource::<SecretKey>()?.clone();
        let mut db = cx.read().await?;
        let row = vm_host::get(&mut db, id.uuid()).await?.ok_or_else(|| anyhow::anyhow!("host {id} is gone"))?;
        let sshable = sshable::get(&mut db, row.sshable_id).await?.ok_or_else(|| anyhow::anyhow!("sshable of host {id} is gone"))?;
        drop(db);
        let key = secret.open(sshable.id.as_bytes(), &sshable.private_key)?;
        let target = Target {
            host: sshable.host.clone(),
            port: sshable.port as u16,
            user: sshable.unix_user.clone(),
            private_key: String::from_utf8(key)?,
            host_key: sshable.host_key.clone(),
        };
        Ok(Host { row, sshable, target, ssh })
    }

    pub fn id(&self) -> Ubid {
        Ubid::from_uuid(self.row.id)
    }

    pub fn root(&self) -> &str {
        &self.row.root_dir
    }

    /// Run `cmd`, failing on a non-zero exit, within `timeout`.
    pub async fn exec(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, SshError> {
        self.ssh.exec(&self.target, cmd, None, timeout).await
    }

    /// Run `cmd` with `stdin`, failing on a non-zero exit, within `timeout`.
    pub async fn exec_with_stdin(&self, cmd: &Cmd, stdin: Vec<u8>, timeout: Duration) -> Result<Output, SshError> {
        self.ssh.exec(&self.target, cmd, Some(stdin), timeout).await
    }

    /// Run an agent program with up to two arguments:
    /// `SKEIN_ROOT=<root> <root>/agent/bin/<program> <args>`.
    pub async fn agent(&self, program: AgentProgram, args: &[&str], timeout: Duration) -> Result<Output, SshError> {
        let (root, name) = (self.root(), program.name());
        let line = match args {
            [] => crate::cmd!("SKEIN_ROOT={} {}/agent/bin/{}", root, root, name),
            [a] => crate::cmd!("SKEIN_ROOT={} {}/agent/bin/{} {}", root, root, name, a),
            [a, b] => crate::cmd!("SKEIN_ROOT={} {}/agent/bin/{} {} {}", root, root, name, a, b),
            _ => {
                // A prog's mistake: fail its step with a message, never crash a worker.
                let reason = format!("Host::agent takes at most two arguments, got {}; write a template for more", args.len());
                return Err(SshError::Session { host: self.target.host.clone(), cmd: name.into(), reason });
            }
        };
        let line = line.map_err(|e| SshError::Session { host: self.target.host.clone(), cmd: name.into(), reason: e.to_string() })?;
        self.exec(&line, timeout).await
    }
}

/// The programs of the host agent (`progs/host-agent/bin`).
#[derive(Clone, Copy, Debug)]
pub enum AgentProgram {
    Daemonizer,
    Learn,
    BootId,
    AgentVersion,
    RebootHost,
    ProbeKvmGuest,
}

impl AgentProgram {
    pub fn name(self) -> &'static str {
        match self {
            AgentProgram::Daemonizer => "daemonizer",
            AgentProgram::Learn => "learn",
            AgentProgram::BootId => "boot-id",
            AgentProgram::AgentVersion => "agent-version",
            AgentProgram::RebootHost => "reboot-host",
            AgentProgram::ProbeKvmGuest => "probe-kvm-guest",
        }
    }
}

/// What an operator gives to add a host.
#[derive(Clone)]
pub struct NewHost<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// A key the host already authorizes; the host is then taken over with a generated one.
    pub bootstrap_private_key: &'a str,
    pub root_dir: &'a str,
}

/// Add a host: its sshable, its row and the strand that prepares it, in the
/// caller's transaction (all or nothing).
pub async fn add(conn: &mut PgConnection, secret: &SecretKey, new: &NewHost<'_>, frame: super::nexus::Frame) -> anyhow::Result<Ubid> {
    let sshable_id = Ubid::generate(UbidType::Sshable);
    let host_id = Ubid::generate(UbidType::VmHost);
    let sealed = secret.seal(sshable_id.uuid().as_bytes(), new.bootstrap_private_key.as_bytes());
    sshable::insert(conn, sshable_id.uuid(), new.address, new.port as i32, new.user, &sealed).await?;
    vm_host::insert(conn, host_id.uuid(), sshable_id.uuid(), new.name, new.root_dir).await?;
    skein_engine::enqueue::start_for(conn, host_id, frame, super::nexus::Label::Start).await?;
    Ok(host_id)
}
