//! `Vm::HostNexus`: a host's life, from first contact to accepting VMs, and
//! its health ever after.
//!
//! Start pins the host key (trust on first use) -> TakeOver authorizes a
//! generated key and switches to it -> InstallAgent (a sub-prog) ships the
//! host agent -> Learn buds one child per fact and WaitLearn reaps them into
//! the host row -> PrepImage builds the guest boot image through the
//! daemonizer -> ProbeKvm decides, by booting that image, whether VMs may
//! use KVM -> Wait: accepting, with a checkup every `checkup_secs`
//! (or when `checkup` is set); `reboot` reboots it and waits for a new boot
//! id (paging if it is not back in ten minutes). A host that misses `unreachable_after`
//! checkups in a row is marked unreachable and paged; it returns to accepting
//! when it answers again. Each time it becomes accepting, the VMs waiting
//! for a host with room are woken (`capacity::wake_waiting`). `drain` stops
//! new VMs from being placed on it (its VMs keep running): it is 'draining'
//! from then on, and stays so when it comes back from unreachable or is
//! prepared again. `destroy` retires the host.

use std::time::Duration;

use skein_engine::prelude::*;
use skein_models::vm_host::HostState;
use skein_models::{capacity, event, sshable, vm, vm_host, Ubid};

use super::conn::{AgentProgram, Host, SSH_LIMIT};
use super::daemon::{self, Progress};
use super::{agent, install, learn};
use crate::ssh::keys::{self, SecretKey};
use crate::ssh::{Cmd, SshError, SshPool, Target};

pub struct HostNexus;

labels! {
    pub enum Label for HostNexus { Start, TakeOver, InstallAgent, Learn, WaitLearn, PrepImage, ProbeKvm, Wait, Reboot, WaitReboot, Destroy }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    /// Seconds between checkups.
    #[serde(default = "default_checkup_secs")]
    pub checkup_secs: u64,
    /// Missed checkups in a row before the host counts as unreachable.
    #[serde(default = "default_unreachable_after")]
    pub unreachable_after: i32,
    /// Failed image builds seen so far (a page is raised after a few).
    #[serde(default)]
    pub image_failures: u32,
    /// The boot id before a requested reboot; the reboot is done when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id_before_reboot: Option<String>,
    /// Drained by an operator: never accepting again (see [`open_state`]).
    #[serde(default)]
    pub draining: bool,
}

fn default_checkup_secs() -> u64 {
    60
}

fn default_unreachable_after() -> i32 {
    3
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            checkup_secs: default_checkup_secs(),
            unreachable_after: default_unreachable_after(),
            image_failures: 0,
            boot_id_before_reboot: None,
            draining: false,
        }
    }
}

semaphores! {
    /// `reboot`: reboot the host and wait for it; `checkup`: check it now;
    /// `drain`: place no new VMs on it.
    pub enum Sem { Reboot = "reboot", Checkup = "checkup", Drain = "drain" }
}

/// What a host's strand exits with once it is destroyed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Destroyed {
    pub msg: String,
    /// Whether its agent's files were removed from the host.
    pub cleaned: bool,
}

#[async_trait]
impl Prog for HostNexus {
    const NAME: &'static str = "Vm::HostNexus";
    type Label = Label;
    type Frame = Frame;
    type Sem = Sem;
    type Output = Destroyed;
    const DESTROY: Option<Label> = Some(Label::Destroy);

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Start => start(cx).await,
            Label::TakeOver => take_over(cx).await,
            Label::InstallAgent => match cx.retval::<install::InstallAgent>()? {
                Some(_) => hop(Label::Learn),
                None => push(install::Frame {}, install::Label::Install),
            },
            Label::Learn => {
                let asks = learn::FACTS.iter().map(|what| learn::Frame { what: what.to_string() });
                cx.bud_many(asks, learn::Label::Ask).await?;
                hop(Label::WaitLearn)
            }
            Label::WaitLearn => wait_learn(cx).await,
            Label::PrepImage => prep_image(cx).await,
            Label::ProbeKvm => probe_kvm(cx).await,
            Label::Wait if cx.take(Sem::Drain) => drain(cx).await,
            Label::Wait if cx.take(Sem::Reboot) => hop(Label::Reboot),
            Label::Wait => checkup(cx).await,
            Label::Reboot => reboot(cx).await,
            Label::WaitReboot => wait_reboot(cx).await,
            Label::Destroy => destroy(cx).await,
        }
    }
}

/// Pin the host key on first contact; a later mismatch is refused.
async fn start(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let presented = match host.sshable.host_key {
        Some(_) => None,
        None => {
            let ssh = cx.resource::<SshPool>()?;
            Some(ssh.host_key(&host.sshable.host, host.sshable.port as u16, cx.time_left().min(SSH_LIMIT)).await?)
        }
    };
    let conn = cx.tx.conn().await?;
    vm_host::set_state(conn, host.row.id, HostState::Preparing).await?;
    if let Some(key) = presented {
        sshable::pin_host_key(conn, host.sshable.id, &key).await?;
    }
    hop(Label::TakeOver)
}

/// Authorize a key made here (in the agent root's authorized_keys, which the
/// host's sshd reads), prove it works, and use only it from now on.
async fn take_over(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let pair = keys::generate()?;
    let timeout = cx.time_left().min(SSH_LIMIT);
    let keys_file = format!("{}/ssh/authorized_keys", host.root());
    let authorize = crate::cmd!(
        "mkdir -p {}/ssh && touch {} && chmod 600 {} && (grep -qxF {} {} || printf '%s\\n' {} >> {})",
        host.root(),
        keys_file,
        keys_file,
        pair.public,
        keys_file,
        pair.public,
        keys_file
    )?;
    host.exec(&authorize, timeout).await?;
    let next = Target { private_key: pair.private.clone(), ..host.target.clone() };
    cx.resource::<SshPool>()?.exec(&next, &crate::cmd!("true")?, None, timeout).await?;
    let sealed = cx.resource::<SecretKey>()?.seal(host.sshable.id.as_bytes(), pair.private.as_bytes());
    let conn = cx.tx.conn().await?;
    sshable::set_next_key(conn, host.sshable.id, Some(&sealed)).await?;
    sshable::promote_next_key(conn, host.sshable.id).await?;
    hop(Label::InstallAgent)
}

/// Gather the children's facts into the host row.
async fn wait_learn(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let mut reaped = cx.reap::<learn::Learn>().await?;
    let mut facts = vm_host::Facts::default();
    for child in reaped.exited.drain(..) {
        match child.output {
            learn::Output::Cpu(c) => {
                facts.cpus = Some(c.cpus);
                facts.cores = Some(c.cores);
                facts.sockets = Some(c.sockets);
                facts.cpu_model = Some(c.model);
            }
            learn::Output::Memory(m) => facts.memory_mib = Some(m.total_mib),
            learn::Output::Storage(s) => {
                facts.storage_total_mib = Some(s.total_mib);
                facts.storage_free_mib = Some(s.free_mib);
            }
            learn::Output::Os(o) => {
                facts.os = Some(o.pretty_name);
                facts.kernel = Some(o.kernel);
                facts.arch = Some(o.arch);
            }
            learn::Output::Kvm(k) => {
                facts.kvm_usable = Some(k.usable);
                facts.kvm_reason = Some(k.reason);
            }
        }
    }
    let id = cx.subject_id().uuid();
    vm_host::record_facts(cx.tx.conn().await?, id, &facts).await?;
    if reaped.running > 0 {
        return reaped.hop_when_done(Label::Wait);
    }
    hop(Label::PrepImage)
}

/// Build the guest boot image on the host (detached: it takes minutes the
/// first time), then accept VMs.
async fn prep_image(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let timeout = cx.time_left().min(SSH_LIMIT);
    match daemon::drive(&host, "guest-image", "build-guest-image", timeout).await? {
        Progress::Running => nap(5),
        Progress::Retrying => {
            cx.frame.image_failures += 1;
            if cx.frame.image_failures >= 3 {
                let log = host.agent(AgentProgram::Daemonizer, &["logs", "guest-image"], timeout).await.map(|o| o.stdout_str());
                let summary = format!("host {} cannot build the guest image ({} failures)", host.row.name, cx.frame.image_failures);
                cx.raise_page(&format!("host-image:{}", host.id()), &summary, &json!({"log": log.unwrap_or_default()})).await?;
            }
            nap(10)
        }
        Progress::Done => {
            let version = host.exec(&crate::cmd!("cat {}/images/guest/VERSION", host.root())?, timeout).await?.stdout_str();
            vm_host::set_image_version(cx.tx.conn().await?, host.row.id, version.trim()).await?;
            cx.resolve_page(&format!("host-image:{}", host.id())).await?;
            hop(Label::ProbeKvm)
        }
    }
}

/// `learn kvm` only saw a toy guest. Whether VMs use KVM is decided by
/// booting the real image under it (detached: it may take 25 s); the probe
/// leaves vm-run's marker and its answer on the host. Then accept VMs.
async fn probe_kvm(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let timeout = cx.time_left().min(SSH_LIMIT);
    match daemon::drive(&host, "kvm-probe", "probe-kvm-guest", timeout).await? {
        Progress::Running | Progress::Retrying => nap(2),
        Progress::Done => {
            let answer = host.exec(&crate::cmd!("cat {}/kvm-probe.json", host.root())?, timeout).await?;
            let kvm: Value = serde_json::from_slice(&answer.stdout)
                .map_err(|e| anyhow::anyhow!("probe-kvm-guest left no JSON ({e}): {}", answer.stdout_str()))?;
            let facts = vm_host::Facts {
                kvm_usable: kvm["usable"].as_bool(),
                kvm_reason: kvm["reason"].as_str().map(String::from),
                ..Default::default()
            };
            let open = open_state(cx);
            let conn = cx.tx.conn().await?;
            vm_host::record_facts(conn, host.row.id, &facts).await?;
            vm_host::set_state(conn, host.row.id, open).await?;
            if open == HostState::Accepting {
                capacity::wake_waiting(conn).await?;
            }
            let image = host.row.image_version.clone().unwrap_or_default();
            event::record(conn, host.row.id, open.as_str(), "system", &json!({"image": image, "kvm": kvm})).await?;
            hop(Label::Wait)
        }
    }
}

/// The state of a prepared, reachable host: 'accepting', unless an operator
/// drained it (or asked to, and the Wait label has not taken it yet).
fn open_state(cx: &Ctx<'_, HostNexus>) -> HostState {
    if cx.frame.draining || cx.is_set(Sem::Drain) {
        HostState::Draining
    } else {
        HostState::Accepting
    }
}

/// Place no new VMs here; those on it keep running. An unreachable host
/// stays 'unreachable' (that is what is true now) and comes back draining.
async fn drain(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    if cx.frame.draining {
        return hop(Label::Wait);
    }
    cx.frame.draining = true;
    let subject = cx.subject_id();
    let id = subject.uuid();
    let conn = cx.tx.conn().await?;
    let row = vm_host::get(conn, id).await?.ok_or_else(|| anyhow::anyhow!("host {subject} is gone"))?;
    if row.state == HostState::Accepting {
        vm_host::set_state(conn, id, HostState::Draining).await?;
    }
    event::record(conn, id, "draining", "system", &json!({"was": row.state})).await?;
    hop(Label::Wait)
}

fn unreachable_tag(host: &Host) -> String {
    format!("host-unreachable:{}", host.id())
}

/// What a checkup asks the host: its boot id, its agent's version, and (when
/// it comes back from unreachable) the VM directories it has.
struct Checkup {
    boot: String,
    version: String,
    listed: Option<Vec<String>>,
}

async fn ask_checkup(host: &Host, list_vms: Option<Cmd>, timeout: Duration) -> Result<Checkup, SshError> {
    let boot = host.agent(AgentProgram::BootId, &[], timeout).await?.stdout_str().trim().to_string();
    let version = host.agent(AgentProgram::AgentVersion, &[], timeout).await?.stdout_str().trim().to_string();
    let listed = match list_vms {
        Some(ls) => {
            let out = host.exec(&ls, timeout).await?.stdout_str();
            Some(out.lines().map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect())
        }
        None => None,
    };
    Ok(Checkup { boot, version, listed })
}

/// One checkup, then sleep until the next. Unreachability is expected and
/// handled here; only the unexpected fails the step.
async fn checkup(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    cx.take(Sem::Checkup);
    let host = Host::load(cx).await?;
    // Back from unreachable: also see which VMs it has.
    let list_vms = match host.row.state {
        HostState::Unreachable => Some(crate::cmd!("ls -1 {}/vms 2>/dev/null || true", host.root())?),
        _ => None,
    };
    let answer = ask_checkup(&host, list_vms, cx.time_left().min(Duration::from_secs(10))).await;
    let interval = cx.frame.checkup_secs;
    match answer {
        Ok(Checkup { boot, version, listed }) => {
            let rebooted = host.row.boot_id.as_deref().is_some_and(|b| b != boot);
            if rebooted {
                tracing::info!(host = %host.id(), "host rebooted since the last checkup");
                // Its taps, segments and tunnels went with the boot.
                crate::vnet::host_rebooted(cx, host.row.id).await?;
            }
            let open = open_state(cx);
            let conn = cx.tx.conn().await?;
            vm_host::checkup_ok(conn, host.row.id, &boot).await?;
            // Back from unreachable (only then was it asked for its VMs).
            if let Some(listed) = listed {
                vm_host::set_state(conn, host.row.id, open).await?;
                if open == HostState::Accepting {
                    capacity::wake_waiting(conn).await?;
                }
                event::record(conn, host.row.id, "reachable-again", "system", &json!({})).await?;
                // Reconcile its VMs with what actually runs there: each one's
                // strand checks (alive: running again; gone: per desired state).
                let vms = vm::on_host(conn, host.row.id).await?;
                for vm in &vms {
                    cx.incr(Ubid::from_uuid(*vm), crate::vm::nexus::Sem::Checkup).await?;
                }
                cx.resolve_page(&unreachable_tag(&host)).await?;
                report_unknown_vms(cx, &host, &vms, &listed).await?;
            }
            if version != agent::version() {
                // Agent drift (an old agent, or someone changed it): reinstall.
                return hop(Label::InstallAgent);
            }
            nap(interval as f64)
        }
        Err(e @ SshError::HostKeyMismatch { .. }) => {
            let details = json!({"host": host.id(), "error": e.to_string()});
            cx.raise_page(&format!("host-key-mismatch:{}", host.id()), &format!("host {} presented another host key", host.row.name), &details)
                .await?;
            missed(cx, &host, &e).await
        }
        Err(e) if e.is_unreachable() => missed(cx, &host, &e).await,
        Err(e) => Err(e.into()),
    }
}

/// Ask the host to reboot; remember its boot id to see when it is back.
async fn reboot(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let timeout = cx.time_left().min(SSH_LIMIT);
    let before = host.agent(AgentProgram::BootId, &[], timeout).await?.stdout_str().trim().to_string();
    let said = host.agent(AgentProgram::RebootHost, &[], timeout).await?.stdout_str();
    tracing::info!(host = %host.id(), answer = %said.trim(), "reboot requested");
    cx.frame.boot_id_before_reboot = Some(before);
    cx.register_deadline(Label::Wait, Duration::from_secs(600));
    hop(Label::WaitReboot)
}

/// Back when the host answers with a new boot id.
async fn wait_reboot(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let answer = host.agent(AgentProgram::BootId, &[], cx.time_left().min(Duration::from_secs(10))).await;
    match answer {
        Ok(out) if Some(out.stdout_str().trim()) != cx.frame.boot_id_before_reboot.as_deref() => {
            let conn = cx.tx.conn().await?;
            vm_host::checkup_ok(conn, host.row.id, out.stdout_str().trim()).await?;
            event::record(conn, host.row.id, "rebooted", "system", &json!({})).await?;
            cx.frame.boot_id_before_reboot = None;
            crate::vnet::host_rebooted(cx, host.row.id).await?;
            hop(Label::Wait)
        }
        Ok(_) => nap(2),
        Err(e) if e.is_unreachable() => nap(2),
        Err(e) => Err(e.into()),
    }
}

/// VMs found on the host that the control plane does not know (their
/// directory under the agent root): reported, never touched.
async fn report_unknown_vms(cx: &mut Ctx<'_, HostNexus>, host: &Host, known: &[uuid::Uuid], listed: &[String]) -> anyhow::Result<()> {
    let known: Vec<String> = known.iter().map(|id| Ubid::from_uuid(*id).to_string()).collect();
    for name in listed.iter().filter(|n| !known.contains(n)) {
        event::record(cx.tx.conn().await?, host.row.id, "unknown-vm", "system", &json!({"name": name})).await?;
        let summary = format!("host {} has a VM the control plane does not know: {name}", host.row.name);
        cx.raise_page(&format!("host-unknown-vm:{}:{name}", host.id()), &summary, &json!({"host": host.id(), "name": name})).await?;
    }
    Ok(())
}

async fn missed(cx: &mut Ctx<'_, HostNexus>, host: &Host, e: &SshError) -> Step<HostNexus> {
    let misses = vm_host::checkup_missed(cx.tx.conn().await?, host.row.id).await?;
    tracing::warn!(host = %host.id(), misses, error = %e, "checkup missed");
    if misses >= cx.frame.unreachable_after && host.row.state != HostState::Unreachable {
        vm_host::set_state(cx.tx.conn().await?, host.row.id, HostState::Unreachable).await?;
        event::record(cx.tx.conn().await?, host.row.id, "unreachable", "system", &json!({"misses": misses})).await?;
        // Its VMs are not known to run any more: say so rather than "running".
        for id in vm::mark_unavailable_on(cx.tx.conn().await?, host.row.id).await? {
            event::record(cx.tx.conn().await?, id, "unavailable", "system", &json!({"host": host.id()})).await?;
        }
        let summary = format!("host {} is unreachable: {misses} checkups missed in a row", host.row.name);
        cx.raise_page(&unreachable_tag(host), &summary, &json!({"host": host.id(), "error": e.to_string()})).await?;
    }
    nap(cx.frame.checkup_secs as f64)
}

/// Retire the host: remove the agent (if the host answers) and mark it destroyed.
async fn destroy(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    // Its private networking first, while its agent is there to remove it.
    if let Err(e) = crate::vnet::teardown(cx, &host).await {
        tracing::warn!(host = %host.id(), error = %e, "could not tear down the host's private networks while destroying it");
    }
    let removed = host.exec(&crate::cmd!("rm -rf {}/agent {}/ssh", host.root(), host.root())?, cx.time_left().min(SSH_LIMIT)).await;
    if let Err(e) = &removed {
        tracing::warn!(host = %host.id(), error = %e, "could not clean the host while destroying it");
    }
    vm_host::set_state(cx.tx.conn().await?, host.row.id, HostState::Destroyed).await?;
    crate::vnet::host_destroyed(cx, host.row.id).await?;
    event::record(cx.tx.conn().await?, host.row.id, "destroyed", "system", &json!({"cleaned": removed.is_ok()})).await?;
    cx.resolve_page(&unreachable_tag(&host)).await?;
    pop(Destroyed { msg: "host destroyed".into(), cleaned: removed.is_ok() })
}
