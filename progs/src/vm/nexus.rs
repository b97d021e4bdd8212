//! `Vm::Nexus`: a VM's life on a host.
//!
//! Start places it on a host with room (reserving the capacity atomically;
//! with no room it waits, visibly, woken when capacity appears, and one page
//! for all waiting VMs is raised after `wait_page_secs`: `super::waiting`) ->
//! Setup makes its unix user, directory and overlay disk on the host ->
//! Launch starts qemu through the daemonizer (a VM of a private subnet
//! first has its host's network strand apply a state with its NIC, its tap
//! owned by its user: WaitNic, before every qemu start, so a restart or a
//! host reboot finds the NIC there too) -> WaitBoot waits until the
//! guest's SSH answers -> Running watches it every `checkup_secs`, and
//! starts it again if its qemu died while it should run; it answers `stop`
//! (-> Stopped, which answers `start`) and `restart`. `destroy` marks it
//! destroying, then Remove stops qemu, removes user, disk and directory, and
//! returns capacity and quota (its NIC goes with the next state its host
//! applies: WaitNicGone). Every change is recorded as an event of the VM.
//!
//! Each label reads (on a connection given back at once), asks the host
//! holding no database, then writes at the end, with the strand's update.
//!
//! What the VM is lives in the database; what is true on the host right now
//! (qemu's pid, the SSH port picked at launch) is asked of the host
//! (`vm-status`) every time, never trusted from an old copy. Where its SSH
//! answers is recorded for its owner each time it is asked (at boot and on
//! every checkup), with the time it was seen.


use skein_engine::prelude::*;
use skein_models::vm::{DesiredState, VmState};
use skein_models::vm_host::HostState;
use skein_models::vm::{self, Vm};
use skein_models::{capacity, event, Ubid};

use crate::host::daemon::RunState;
use crate::host::{AgentProgram, Host, VmStatus};
use crate::ssh::client::base64_encode;

use super::waiting;

pub struct Nexus;

labels! {
    pub enum Label for Nexus { Start, Setup, Launch, WaitNic, WaitBoot, Running, Stopped, Destroy, Remove, WaitNicGone }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// Page an operator when no host has had room for this long.
    #[serde(default = "default_wait_page_secs")]
    pub wait_page_secs: u64,
    /// Seconds between checkups of a running VM.
    #[serde(default = "default_checkup_secs")]
    pub checkup_secs: u64,
    /// Times qemu was found dead and started again.
    #[serde(default)]
    pub restarts: u32,
    /// Launches that failed in a row (a page is raised at three).
    #[serde(default)]
    pub launch_failures: u32,
    /// The seq its host's network must reach: its NIC is there (WaitNic) or gone (WaitNicGone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_seq: Option<i64>,
    /// Its host applied a state with its NIC since qemu last started.
    #[serde(default)]
    pub nic_ready: bool,
}

fn default_wait_page_secs() -> u64 {
    300
}

fn default_checkup_secs() -> u64 {
    30
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            wait_page_secs: default_wait_page_secs(),
            checkup_secs: default_checkup_secs(),
            restarts: 0,
            launch_failures: 0,
            nic_seq: None,
            nic_ready: false,
        }
    }
}

semaphores! {
    /// What a VM is asked to do (`checkup`: its host saw it change; look now).
    pub enum Sem { Stop = "stop", Start = "start", Restart = "restart", Checkup = "checkup" }
}

#[async_trait]
impl Prog for Nexus {
    const NAME: &'static str = "Vm::Nexus";
    type Label = Label;
    type Frame = Frame;
    type Sem = Sem;
    type Output = Msg;
    const DESTROY: Option<Label> = Some(Label::Destroy);

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Start => start(cx).await,
            Label::Setup => setup(cx).await,
            Label::Launch => launch(cx).await,
            Label::WaitNic => wait_nic(cx).await,
            Label::WaitBoot => wait_boot(cx).await,
            Label::Running => running(cx).await,
            Label::Stopped => stopped(cx).await,
            Label::Destroy => destroy(cx).await,
            Label::Remove => remove(cx).await,
            Label::WaitNicGone => wait_nic_gone(cx).await,
        }
    }
}

/// The VM's row, read on a connection given back at once.
async fn load(cx: &Ctx<'_, Nexus>) -> anyhow::Result<Vm> {
    let id = cx.subject_id();
    vm::get(&mut *cx.read().await?, id.uuid()).await?.ok_or_else(|| anyhow::anyhow!("vm {id} is gone"))
}

async fn host_of(cx: &Ctx<'_, Nexus>, vm: &Vm) -> anyhow::Result<Host> {
    let host = vm.host_id.ok_or_else(|| anyhow::anyhow!("vm {} is not placed on a host", vm.name))?;
    Host::load_id(cx, Ubid::from_uuid(host)).await
}

/// The VM's name on its host: its id (also its unix user).
fn unix_name(vm: &Vm) -> String {
    Ubid::from_uuid(vm.id).to_string()
}

/// Record what the strand did to the VM.
async fn happened(cx: &mut Ctx<'_, Nexus>, vm: &Vm, kind: &str, detail: Value) -> anyhow::Result<()> {
    Ok(event::record(cx.tx.conn().await?, vm.id, kind, "system", &detail).await?)
}

/// How long a waiting VM sleeps when nothing wakes it. Capacity appearing
/// wakes it at once (`capacity::wake_waiting`); this is only the fallback.
pub const WAIT_NAP_SECS: u64 = 600;

/// Place the VM on a host with room, or wait where an operator can see why
/// (one page for all waiting VMs: `super::waiting`).
async fn start(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    if vm.host_id.is_some() {
        return hop(Label::Setup);
    }
    let wait_page_secs = cx.frame.wait_page_secs;
    let conn = cx.tx.conn().await?;
    match capacity::reserve(conn, vm.size()).await? {
        Some(host) => {
            vm::place(conn, vm.id, host).await?;
            waiting::update(conn, wait_page_secs).await?;
            happened(cx, &vm, "placed", json!({"host": Ubid::from_uuid(host)})).await?;
            hop(Label::Setup)
        }
        None => {
            if vm.state != VmState::Waiting {
                event::record(conn, vm.id, "waiting", "system", &json!({"reason": "no host has room"})).await?;
            }
            vm::set_state(conn, vm.id, VmState::Waiting).await?;
            // Asleep until capacity appears; awake in time to page if none does.
            let page_due = waiting::update(conn, wait_page_secs).await?;
            let secs = page_due.map(|due| (due - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0);
            nap(secs.map_or(WAIT_NAP_SECS as f64, |s| s.clamp(0.0, WAIT_NAP_SECS as f64)))
        }
    }
}

/// Its user, directory and disk on the host (idempotent on the host side).
async fn setup(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    let host = host_of(cx, &vm).await?;
    let key = base64_encode(vm.public_key.as_bytes());
    // Its address on its subnet; its NIC (a tap owned by the user made here)
    // is made by its host's network strand before qemu starts.
    host.vm_setup(&unix_name(&vm), vm.cores, vm.memory_mib, &key, vm.private_ip.as_deref()).await?;
    hop(Label::Launch)
}

/// The daemonizer's name for the VM's qemu run.
fn qemu_run(vm: &Vm) -> String {
    format!("vm-{}", unix_name(vm))
}

/// Start qemu detached, unless it runs already.
async fn launch(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    let host = host_of(cx, &vm).await?;
    let (run, name) = (qemu_run(&vm), unix_name(&vm));
    let before = host.run_state(&run).await?;
    if before == RunState::InProgress {
        return hop(Label::WaitBoot);
    }
    if vm.subnet_id.is_some() && !cx.frame.nic_ready {
        // Its NIC first: a state with it, applied by its host's network strand.
        cx.frame.nic_seq = Some(crate::vnet::want_nic(cx, &vm).await?);
        return hop(Label::WaitNic);
    }
    // A failed launch: fetch why, to say it where operators look.
    let failed_log = match before {
        RunState::Failed => {
            let log = host.run_logs(&run).await.unwrap_or_default();
            Some(log.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect::<String>())
        }
        _ => None,
    };
    if before != RunState::NotStarted {
        // qemu exited (or was killed): forget that run before the next.
        host.clean_run(&run).await?;
    }
    host.start_run(&run, AgentProgram::VmRun, &[&name]).await?;
    cx.frame.nic_ready = false;

    if let Some(tail) = failed_log {
        cx.frame.launch_failures += 1;
        happened(cx, &vm, "launch-failed", json!({"log": tail, "failures": cx.frame.launch_failures})).await?;
        if cx.frame.launch_failures >= 3 {
            let summary = format!("vm {} failed to launch {} times", vm.name, cx.frame.launch_failures);
            cx.raise_page(&format!("vm-launch:{}", Ubid::from_uuid(vm.id)), &summary, &json!({"log": tail})).await?;
        }
    }
    vm::set_state(cx.tx.conn().await?, vm.id, VmState::Starting).await?;
    happened(cx, &vm, "launched", json!({"after": format!("{before:?}")})).await?;
    nap(1)
}

/// Until its host's network strand applied a state with its NIC.
async fn wait_nic(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    let (Some(host), Some(seq)) = (vm.host_id, cx.frame.nic_seq) else { return hop(Label::Launch) };
    if !crate::vnet::applied(&mut *cx.read().await?, host, seq).await? {
        return nap(1);
    }
    cx.frame.nic_ready = true;
    cx.frame.nic_seq = None;
    hop(Label::Launch)
}

/// Wait until the guest's SSH answers through the host.
async fn wait_boot(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    // Read: the VM's row, then its host's; each connection is given back at once.
    let vm = load(cx).await?;
    let host = host_of(cx, &vm).await?;
    // Ask the host, holding nothing.
    let now = host.vm_status(&unix_name(&vm)).await?;
    if !now.running {
        return hop(Label::Launch);
    }
    if !now.ssh_ready {
        return nap(1);
    }
    // Write, at the end: commits with the hop, or not at all.
    let conn = cx.tx.conn().await?;
    vm::set_state(conn, vm.id, VmState::Running).await?;
    learned_ssh(conn, &host, &vm, &now).await?;
    cx.frame.launch_failures = 0;
    cx.resolve_page(&format!("vm-launch:{}", Ubid::from_uuid(vm.id))).await?;
    happened(cx, &vm, "running", json!({"ssh_port": now.ssh_port})).await?;
    hop(Label::Running)
}

/// The user the owner's key lets in on the guest.
pub const GUEST_USER: &str = "root";

/// Where the owner reaches the guest, as its host just said (`vm-status`):
/// the port its host forwards, on the host's own SSH address. Recorded only
/// when the guest's SSH answered, so what is shown was true when it was seen.
async fn learned_ssh(conn: &mut sqlx::PgConnection, host: &Host, vm: &Vm, now: &VmStatus) -> anyhow::Result<()> {
    if let Some(port) = now.ssh_answering() {
        vm::set_ssh(conn, vm.id, &host.sshable.host, port.into(), GUEST_USER).await?;
    }
    Ok(())
}

/// How old the shown endpoint may grow before a checkup that finds it
/// unchanged writes it again: a quiet checkup stays a step that writes nothing
/// of its own (group-committed), while `seen_at` stays recent.
const SSH_SEEN_REFRESH: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Whether a checkup has news for the owner: the endpoint moved, or what is
/// shown was seen longer ago than `SSH_SEEN_REFRESH`.
fn ssh_news(host: &Host, vm: &Vm, now: &VmStatus) -> bool {
    let Some(port) = now.ssh_answering().map(i32::from) else { return false };
    match vm.ssh() {
        Some(shown) => {
            shown.host != host.sshable.host || shown.port != port || chrono::Utc::now() - shown.seen_at > SSH_SEEN_REFRESH
        }
        None => true,
    }
}

/// Stop qemu and forget its run, keeping user, directory and disk.
async fn stop_qemu(host: &Host, vm: &Vm) -> anyhow::Result<()> {
    host.vm_stop(&unix_name(vm)).await?;
    let _ = host.clean_run(&qemu_run(vm)).await;
    Ok(())
}

/// Watch a running VM, answer stop and restart, start it again if its qemu died.
async fn running(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    cx.take(Sem::Checkup);
    let vm = load(cx).await?;
    let host = host_of(cx, &vm).await?;
    if cx.take(Sem::Stop) {
        stop_qemu(&host, &vm).await?;
        let conn = cx.tx.conn().await?;
        vm::set_desired(conn, vm.id, DesiredState::Stopped).await?;
        vm::set_state(conn, vm.id, VmState::Stopped).await?;
        happened(cx, &vm, "stopped", json!({})).await?;
        return hop(Label::Stopped);
    }
    if cx.take(Sem::Restart) {
        stop_qemu(&host, &vm).await?;
        vm::set_state(cx.tx.conn().await?, vm.id, VmState::Starting).await?;
        happened(cx, &vm, "restarting", json!({})).await?;
        return hop(Label::Launch);
    }
    if host.row.state == HostState::Unreachable {
        // The host's checkups mark its VMs unavailable and ask them to check
        // again when it answers; until then there is nothing to ask.
        return nap(cx.frame.checkup_secs as f64);
    }
    let now = host.vm_status(&unix_name(&vm)).await?;
    let alive = now.running;
    if !alive && vm.desired_state == DesiredState::Running {
        tracing::warn!(vm = %Ubid::from_uuid(vm.id), "qemu is gone; starting the VM again");
        // Its run ended with it; forget it here, where the death is known, so
        // Launch does not take it for a failed launch.
        let _ = host.clean_run(&qemu_run(&vm)).await;
        cx.frame.restarts += 1;
        vm::set_state(cx.tx.conn().await?, vm.id, VmState::Starting).await?;
        happened(cx, &vm, "qemu-died", json!({"restarts": cx.frame.restarts})).await?;
        return hop(Label::Launch);
    }
    if alive && vm.state == VmState::Unavailable {
        vm::set_state(cx.tx.conn().await?, vm.id, VmState::Running).await?;
        happened(cx, &vm, "available-again", json!({})).await?;
    }
    if alive && ssh_news(&host, &vm, &now) {
        learned_ssh(cx.tx.conn().await?, &host, &vm, &now).await?;
    }
    nap(cx.frame.checkup_secs as f64)
}

/// A stopped VM keeps its disk and capacity; `start` boots it again.
async fn stopped(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    if cx.take(Sem::Start) {
        let vm = load(cx).await?;
        vm::set_desired(cx.tx.conn().await?, vm.id, DesiredState::Running).await?;
        happened(cx, &vm, "starting", json!({})).await?;
        return hop(Label::Launch);
    }
    nap(3600)
}

/// Say the VM is going, before the host is asked to remove it (which may
/// take a while, or be retried while the host does not answer).
async fn destroy(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let id = cx.subject_id().uuid();
    let conn = cx.tx.conn().await?;
    vm::set_state(conn, id, VmState::Destroying).await?;
    // However the destroy was asked for (API, console, a parent strand), it is what the VM now wants.
    vm::set_desired(conn, id, DesiredState::Destroyed).await?;
    hop(Label::Remove)
}

/// Take the VM off its host and give back what it held.
async fn remove(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    if vm.host_id.is_some() {
        let host = host_of(cx, &vm).await?;
        host.vm_remove(&unix_name(&vm)).await?;
        // The run is over (its qemu is gone): forget it; it may never have started.
        let _ = host.clean_run(&qemu_run(&vm)).await;
    }
    let conn = cx.tx.conn().await?;
    if let Some(host_id) = vm.host_id {
        capacity::release(conn, host_id, vm.size()).await?;
    }
    capacity::return_quota(conn, vm.project_id).await?;
    vm::set_state(conn, vm.id, VmState::Destroyed).await?;
    if vm.host_id.is_some() {
        // Its share is free again: a waiting VM may fit now.
        capacity::wake_waiting(conn).await?;
    } else {
        // It may have been the last one waiting.
        waiting::update(conn, cx.frame.wait_page_secs).await?;
    }
    happened(cx, &vm, "destroyed", json!({})).await?;
    // Its NIC goes with the next state its host applies; its subnet's other hosts forget it too.
    cx.frame.nic_seq = crate::vnet::nic_gone(cx, &vm).await?;
    if cx.frame.nic_seq.is_some() {
        return hop(Label::WaitNicGone);
    }
    pop("vm destroyed")
}

/// Until its host applied a state without its NIC (or has no network any more).
async fn wait_nic_gone(cx: &mut Ctx<'_, Nexus>) -> Step<Nexus> {
    let vm = load(cx).await?;
    let done = match (vm.host_id, cx.frame.nic_seq) {
        (Some(host), Some(seq)) => crate::vnet::applied(&mut *cx.read().await?, host, seq).await?,
        _ => true,
    };
    if !done {
        return nap(1);
    }
    pop("vm destroyed")
}
