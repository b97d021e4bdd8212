//! A host as a prog reaches it: its row, its SSH target (key unsealed), the
//! shell commands go through, and the step's deadline. Loading a host holds
//! no connection afterwards, so a label can go on to call it. Its agent's
//! programs are typed methods (`host/programs.rs`, `host/daemon.rs`).

use std::time::{Duration, Instant};

use skein_engine::{Ctx, Prog};
use skein_models::sshable::{self, Sshable};
use skein_models::vm_host::{self, VmHost};
use skein_models::{Ubid, UbidType};
use sqlx::PgConnection;

use crate::ssh::keys::SecretKey;
use crate::ssh::{Cmd, Output, Shared, SshError, Target};

/// The longest one SSH call of a host or VM label may take (each call is
/// also bounded by the step's time left).
pub const SSH_LIMIT: Duration = Duration::from_secs(30);

pub struct Host {
    pub row: VmHost,
    pub sshable: Sshable,
    pub target: Target,
    shell: Shared,
    /// When the step that loaded this handle must be done: no call runs past it.
    step_ends: Instant,
    /// The longest one call may take ([`SSH_LIMIT`] unless [`Host::limit`] says otherwise).
    limit: Duration,
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
        let shell = cx.resource::<Shared>()?.clone();
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
        Ok(Host { row, sshable, target, shell, step_ends: Instant::now() + cx.time_left(), limit: SSH_LIMIT })
    }

    /// The same host, each call bounded by `limit` instead (and still by the step's time left).
    pub fn limit(self, limit: Duration) -> Host {
        Host { limit, ..self }
    }

    /// How long the next call may take.
    pub fn timeout(&self) -> Duration {
        self.step_ends.saturating_duration_since(Instant::now()).min(self.limit)
    }

    pub fn id(&self) -> Ubid {
        Ubid::from_uuid(self.row.id)
    }

    pub fn root(&self) -> &str {
        &self.row.root_dir
    }

    /// Run `cmd`, failing on a non-zero exit.
    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, SshError> {
        self.shell.exec(&self.target, cmd, None, self.timeout()).await
    }

    /// Run `cmd` with `stdin`, failing on a non-zero exit.
    pub async fn exec_with_stdin(&self, cmd: &Cmd, stdin: Vec<u8>) -> Result<Output, SshError> {
        self.shell.exec(&self.target, cmd, Some(stdin), self.timeout()).await
    }

    /// Run `cmd` logged in with another private key (to prove a new key works before switching to it).
    pub async fn exec_with_key(&self, private_key: &str, cmd: &Cmd) -> Result<Output, SshError> {
        let target = Target { private_key: private_key.to_string(), ..self.target.clone() };
        self.shell.exec(&target, cmd, None, self.timeout()).await
    }

    /// The host key the host presents now (no login): for pinning on first contact.
    pub async fn presented_key(&self) -> Result<String, SshError> {
        self.shell.host_key(&self.target.host, self.target.port, self.timeout()).await
    }

    /// A trimmed line of what `cmd` printed.
    pub(crate) async fn line(&self, cmd: &Cmd) -> Result<String, SshError> {
        Ok(self.exec(cmd).await?.stdout_str().trim().to_string())
    }

    /// What `cmd` printed, read as JSON of type `T`.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(&self, cmd: &Cmd) -> Result<T, SshError> {
        let out = self.exec(cmd).await?;
        self.read_json(cmd, &out)
    }

    /// What `cmd` printed (`out`), read as JSON of type `T`.
    pub(crate) fn read_json<T: serde::de::DeserializeOwned>(&self, cmd: &Cmd, out: &Output) -> Result<T, SshError> {
        serde_json::from_slice(&out.stdout).map_err(|e| SshError::Unreadable {
            host: self.target.name(),
            cmd: cmd.shown().to_string(),
            reason: format!("not the JSON expected: {e}"),
            printed: out.stdout_str(),
        })
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
