//! Asking a VM or a host to change, from the API or the CLI alike: which
//! requests a subject can honour in which state, the semaphore that carries
//! one to its strand, what it now wants, and the event naming who asked,
//! all in the caller's transaction. A request it cannot honour is refused
//! with a reason, never left pending; one it already honours changes nothing.

use serde_json::{json, Value};
use skein_models::vm::{self, DesiredState, Vm, VmState};
use skein_models::vm_host::{self, HostState, VmHost};
use skein_engine::Signal;
use skein_models::{event, Ubid};
use skein_progs::host::nexus as host_nexus;
use skein_progs::vm::nexus as vm_nexus;
use sqlx::PgConnection;
use uuid::Uuid;

/// Why a request was not taken: a stable code (the API's 409 code) and words.
#[derive(Debug)]
pub enum Refused {
    NotFound(&'static str),
    Conflict { code: &'static str, message: String },
    Failed(anyhow::Error),
}

impl Refused {
    fn conflict(code: &'static str, message: impl Into<String>) -> Refused {
        Refused::Conflict { code, message: message.into() }
    }
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Refused {
        Refused::Failed(e.into())
    }
}

impl From<anyhow::Error> for Refused {
    fn from(e: anyhow::Error) -> Refused {
        Refused::Failed(e)
    }
}

/// For the CLI: the refusal as an error to print.
impl From<Refused> for anyhow::Error {
    fn from(r: Refused) -> anyhow::Error {
        match r {
            Refused::NotFound(what) => anyhow::anyhow!("no such {what}"),
            Refused::Conflict { message, .. } => anyhow::anyhow!(message),
            Refused::Failed(e) => e,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VmAction {
    Stop,
    Start,
    Restart,
    Destroy,
}

impl VmAction {
    pub fn verb(self) -> &'static str {
        match self {
            VmAction::Stop => "stop",
            VmAction::Start => "start",
            VmAction::Restart => "restart",
            VmAction::Destroy => "destroy",
        }
    }
}

/// Ask VM `id` to `action`, as `actor` (detail: the token or operator).
/// Returns the VM as it is now and whether a signal was sent (false: it
/// already wants that). The VM's row is locked while this decides.
pub async fn vm(conn: &mut PgConnection, id: Uuid, action: VmAction, actor: &str, detail: &Value) -> Result<(Vm, bool), Refused> {
    let v = vm::get_for_update(conn, id).await?.ok_or(Refused::NotFound("vm"))?;
    let gone = v.state == VmState::Destroyed || v.desired_state == DesiredState::Destroyed;
    let unplaced = v.state == VmState::Creating || v.state == VmState::Waiting;
    let (semaphore, desired) = match action {
        VmAction::Destroy if gone => return Ok((v, false)),
        VmAction::Destroy => (Signal::DESTROY, DesiredState::Destroyed),
        _ if gone => return Err(Refused::conflict("vm_destroyed", format!("vm {} is destroyed or being destroyed", v.name))),
        VmAction::Stop if v.desired_state == DesiredState::Stopped => return Ok((v, false)),
        VmAction::Stop if unplaced => {
            return Err(Refused::conflict(
                "vm_not_placed",
                format!("vm {} is still waiting for a host, so it cannot be stopped yet: destroy it, or stop it once it runs", v.name),
            ))
        }
        VmAction::Stop => (vm_nexus::Sem::Stop.into(), DesiredState::Stopped),
        VmAction::Start if v.desired_state == DesiredState::Running => return Ok((v, false)),
        VmAction::Start => (vm_nexus::Sem::Start.into(), DesiredState::Running),
        VmAction::Restart if v.state == VmState::Running && v.desired_state == DesiredState::Running => (vm_nexus::Sem::Restart.into(), DesiredState::Running),
        VmAction::Restart if unplaced => {
            return Err(Refused::conflict("vm_not_placed", format!("vm {} is still waiting for a host: it can be restarted once it runs", v.name)))
        }
        VmAction::Restart => {
            let wants = if v.desired_state == DesiredState::Stopped { " (it is stopped or stopping: start it instead)" } else { "" };
            return Err(Refused::conflict(
                "vm_not_running",
                format!("vm {} is {}; only a running VM can be restarted{wants}", v.name, v.state),
            ));
        }
    };
    if !skein_engine::enqueue::incr(conn, Ubid::from_uuid(v.id), semaphore).await? {
        return Err(Refused::conflict("vm_destroyed", format!("vm {}'s strand has ended", v.name)));
    }
    vm::set_desired(conn, v.id, desired).await?;
    event::record(conn, v.id, &format!("{semaphore}-requested"), actor, detail).await?;
    let now = vm::get(conn, v.id).await?.ok_or(Refused::NotFound("vm"))?;
    Ok((now, true))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// No new VMs; those on it keep running.
    Drain,
    /// Retire it; refused while VMs that are not destroyed are on it.
    Destroy,
}

/// Ask host `id` to drain or be destroyed, as `actor`. Returns it as it is now.
pub async fn host(conn: &mut PgConnection, id: Uuid, action: HostAction, actor: &str, detail: &Value) -> Result<VmHost, Refused> {
    // Locked, so no VM is placed on it between counting its VMs and
    // (for destroy) taking it out of placement.
    let row = vm_host::get_for_update(conn, id).await?.ok_or(Refused::NotFound("host"))?;
    if row.state == HostState::Destroyed {
        return Err(Refused::conflict("host_destroyed", format!("host {} is destroyed", row.name)));
    }
    let semaphore = match action {
        HostAction::Drain => host_nexus::Sem::Drain.into(),
        HostAction::Destroy => Signal::DESTROY,
    };
    let vms = vm::on_host(conn, row.id).await?.len();
    if action == HostAction::Destroy && vms > 0 {
        return Err(Refused::conflict("host_has_vms", format!("{vms} VMs are on host {}; destroy them first", row.name)));
    }
    if !skein_engine::enqueue::incr(conn, Ubid::from_uuid(row.id), semaphore).await? {
        return Err(Refused::conflict("host_destroyed", format!("host {}'s strand has ended", row.name)));
    }
    if action == HostAction::Destroy && row.state == HostState::Accepting {
        // Its strand destroys it soon, but until then no VM may land on it.
        vm_host::set_state(conn, row.id, HostState::Draining).await?;
    }
    event::record(conn, row.id, &format!("{semaphore}-requested"), actor, &json!(detail)).await?;
    vm_host::get(conn, row.id).await?.ok_or(Refused::NotFound("host"))
}
