//! `Vm::HostNexus`: a host's life, from first contact to accepting VMs, and
//! its health ever after.
//!
//! ```text
//! Start -> TakeOver -> InstallAgent -> Learn -> WaitLearn -> PrepImage -> ProbeKvm -> Wait
//! Wait -> Wait (checkup) | Unreachable | InstallAgent (agent drift) | Drain | Reboot -> WaitReboot -> Wait
//! Unreachable -> Unreachable | Wait (answers again) | InstallAgent (answers, agent drifted) | Drain
//! any -> Destroy (the `destroy` semaphore)
//! ```
//!
//! Start pins the host key (trust on first use); TakeOver authorizes a
//! generated key and switches to it; InstallAgent (a sub-prog) ships the
//! host agent; Learn buds one child per fact and WaitLearn reaps them into
//! the host row; PrepImage builds the guest boot image through the
//! daemonizer; ProbeKvm decides, by booting that image, whether VMs may use
//! KVM. Then the host accepts VMs (each time it does, the VMs waiting for a
//! host with room are woken: `capacity::wake_waiting`).
//!
//! Wait: every wake-up is a checkup (each `checkup_secs`, or sooner when the
//! `checkup` semaphore is set). A host that misses `unreachable_after`
//! checkups in a row is marked unreachable, its VMs unavailable, and paged;
//! Unreachable asks it at every wake-up, and when it answers, reconciles its
//! VMs and returns to Wait. A changed host key is refused and paged.
//! `reboot` reboots it and waits for a new boot id (paging if it is not back
//! in ten minutes). `drain` stops new VMs from being placed on it (its VMs
//! keep running): it is 'draining' from then on, and stays so when it comes
//! back from unreachable or is prepared again. `destroy` retires the host.
//!
//! The house rule shows here: helpers return facts (what the host
//! answered), labels decide the flow.

use std::time::Duration;

use skein_engine::prelude::*;
use skein_models::vm_host::HostState;
use skein_models::{capacity, event, sshable, vm, vm_host, Ubid};

use super::conn::Host;
use super::daemon::{self, Progress};
use super::programs::AgentProgram;
use super::{agent, install, learn};
use crate::ssh::keys::{self, SecretKey};
use crate::ssh::SshError;

pub struct HostNexus;

labels! {
    pub enum Label for HostNexus { Start, TakeOver, InstallAgent, Learn, WaitLearn, PrepImage, ProbeKvm, Wait, Unreachable, Drain, Reboot, WaitReboot, Destroy }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
            Label::Wait => wait(cx).await,
            Label::Unreachable => unreachable(cx).await,
            Label::Drain => drain(cx).await,
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
        None => Some(host.presented_key().await?),
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
    let authorize = crate::cmd!(
        "mkdir -p {root}/ssh && touch {keys} && chmod 600 {keys} && (grep -qxF {key} {keys} || printf '%s\\n' {key} >> {keys})",
        root = host.root(),
        keys = format!("{}/ssh/authorized_keys", host.root()),
        key = pair.public
    )?;
    host.exec(&authorize).await?;
    host.exec_with_key(&pair.private, &crate::cmd!("true")?).await?;
    let sealed = cx.resource::<SecretKey>()?.seal(host.sshable.id.as_bytes(), pair.private.as_bytes());
    let conn = cx.tx.conn().await?;
    sshable::set_next_key(conn, host.sshable.id, Some(&sealed)).await?;
    sshable::promote_next_key(conn, host.sshable.id).await?;
    hop(Label::InstallAgent)
}

/// Gather the children's facts into the host row (as each one exits), then
/// build the image once all have.
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
    reaped.hop_when_done(Label::PrepImage)
}

fn image_page(host: &Host) -> String {
    format!("host-image:{}", host.id())
}

/// Build the guest boot image on the host (detached: it takes minutes the
/// first time), then probe KVM with it.
async fn prep_image(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    match daemon::drive(&host, "guest-image", AgentProgram::BuildGuestImage).await? {
        Progress::Running => nap(5),
        Progress::Retrying => {
            cx.frame.image_failures += 1;
            if cx.frame.image_failures >= 3 {
                let log = host.run_logs("guest-image").await.unwrap_or_default();
                let summary = format!("host {} cannot build the guest image ({} failures)", host.row.name, cx.frame.image_failures);
                cx.raise_page(&image_page(&host), &summary, &json!({ "log": log })).await?;
            }
            nap(10)
        }
        Progress::Done => {
            let version = host.line(&crate::cmd!("cat {}/images/guest/VERSION", host.root())?).await?;
            vm_host::set_image_version(cx.tx.conn().await?, host.row.id, &version).await?;
            cx.resolve_page(&image_page(&host)).await?;
            hop(Label::ProbeKvm)
        }
    }
}

/// `learn kvm` only saw a toy guest. Whether VMs use KVM is decided by
/// booting the real image under it (detached: it may take 25 s); the probe
/// leaves vm-run's marker and its answer on the host. Then accept VMs.
async fn probe_kvm(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    match daemon::drive(&host, "kvm-probe", AgentProgram::ProbeKvmGuest).await? {
        Progress::Running | Progress::Retrying => nap(2),
        Progress::Done => {
            let kvm: Value = host.json(&crate::cmd!("cat {}/kvm-probe.json", host.root())?).await?;
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
/// drained it (or asked to, and Wait has not taken the semaphore yet).
fn open_state(cx: &Ctx<'_, HostNexus>) -> HostState {
    if cx.frame.draining || cx.is_set(Sem::Drain) {
        HostState::Draining
    } else {
        HostState::Accepting
    }
}

/// How long one checkup may wait for the host: a checkup is quick, or missed.
const CHECKUP_LIMIT: Duration = Duration::from_secs(10);

/// What a checkup learned from the host.
struct Checkup {
    boot: String,
    version: String,
}

/// What came of asking the host: the expected failures (it does not answer,
/// its key changed) are facts for the label; anything else fails the step.
enum Answer<T> {
    Answered(T),
    Missed(SshError),
}

fn answer<T>(result: Result<T, SshError>) -> anyhow::Result<Answer<T>> {
    match result {
        Ok(value) => Ok(Answer::Answered(value)),
        Err(e) if e.is_unreachable() || matches!(e, SshError::HostKeyMismatch { .. }) => Ok(Answer::Missed(e)),
        Err(e) => Err(e.into()),
    }
}

/// Its boot id and its agent's version.
async fn ask_checkup(host: &Host) -> Result<Checkup, SshError> {
    Ok(Checkup { boot: host.boot_id().await?, version: host.agent_version().await? })
}

/// The VM directories on the host (under the agent root).
async fn vm_dirs(host: &Host) -> Result<Vec<String>, SshError> {
    let out = host.exec(&crate::cmd!("ls -1 {}/vms 2>/dev/null || true", host.root())?).await?.stdout_str();
    Ok(out.lines().map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect())
}

/// A changed host key is refused (the client will not log in) and paged: a
/// reinstalled host is re-pinned by an operator, deliberately.
async fn page_if_key_changed(cx: &mut Ctx<'_, HostNexus>, host: &Host, e: &SshError) -> anyhow::Result<()> {
    if matches!(e, SshError::HostKeyMismatch { .. }) {
        let details = json!({"host": host.id(), "error": e.to_string()});
        cx.raise_page(&format!("host-key-mismatch:{}", host.id()), &format!("host {} presented another host key", host.row.name), &details)
            .await?;
    }
    Ok(())
}

/// Accepting VMs (or draining). Every wake-up is a checkup; the `checkup`
/// semaphore only makes it sooner. A host that stops answering for
/// `unreachable_after` checkups in a row is marked unreachable.
async fn wait(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    if cx.take(Sem::Drain) {
        return hop(Label::Drain);
    }
    if cx.take(Sem::Reboot) {
        return hop(Label::Reboot);
    }
    cx.take(Sem::Checkup);
    let host = Host::load(cx).await?.limit(CHECKUP_LIMIT);
    if host.row.state == HostState::Unreachable {
        // Marked so by an older build that kept unreachable hosts in Wait.
        return hop(Label::Unreachable);
    }
    let checkup = answer(ask_checkup(&host).await)?;
    match checkup {
        Answer::Answered(Checkup { boot, version }) => {
            if host.row.boot_id.as_deref().is_some_and(|b| b != boot) {
                tracing::info!(host = %host.id(), "host rebooted since the last checkup");
                // Its taps, segments and tunnels went with the boot.
                crate::vnet::host_rebooted(cx, host.row.id).await?;
            }
            vm_host::checkup_ok(cx.tx.conn().await?, host.row.id, &boot).await?;
            if version != agent::version() {
                // Agent drift (an old agent, or someone changed it): reinstall.
                return hop(Label::InstallAgent);
            }
            nap(cx.frame.checkup_secs as f64)
        }
        Answer::Missed(e) => {
            page_if_key_changed(cx, &host, &e).await?;
            let misses = vm_host::checkup_missed(cx.tx.conn().await?, host.row.id).await?;
            tracing::warn!(host = %host.id(), misses, error = %e, "checkup missed");
            if misses < cx.frame.unreachable_after {
                return nap(cx.frame.checkup_secs as f64);
            }
            became_unreachable(cx, &host, misses, &e).await?;
            hop(Label::Unreachable)
        }
    }
}

fn unreachable_page(host: &Host) -> String {
    format!("host-unreachable:{}", host.id())
}

/// Say so: the host's state, its VMs (no longer known to run: not "running"),
/// events, and a page.
async fn became_unreachable(cx: &mut Ctx<'_, HostNexus>, host: &Host, misses: i32, e: &SshError) -> anyhow::Result<()> {
    let conn = cx.tx.conn().await?;
    vm_host::set_state(conn, host.row.id, HostState::Unreachable).await?;
    event::record(conn, host.row.id, "unreachable", "system", &json!({"misses": misses})).await?;
    for id in vm::mark_unavailable_on(conn, host.row.id).await? {
        event::record(conn, id, "unavailable", "system", &json!({"host": host.id()})).await?;
    }
    let summary = format!("host {} is unreachable: {misses} checkups missed in a row", host.row.name);
    cx.raise_page(&unreachable_page(host), &summary, &json!({"host": host.id(), "error": e.to_string()})).await?;
    Ok(())
}

/// The host does not answer. Each wake-up asks again; when it answers, its
/// VMs are reconciled with what runs there and it accepts VMs again.
/// `reboot` waits until it is back; `drain` is taken at once.
async fn unreachable(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    if cx.take(Sem::Drain) {
        return hop(Label::Drain);
    }
    cx.take(Sem::Checkup);
    let host = Host::load(cx).await?.limit(CHECKUP_LIMIT);
    let asked = async { Ok((ask_checkup(&host).await?, vm_dirs(&host).await?)) }.await;
    let (Checkup { boot, version }, listed) = match answer(asked)? {
        Answer::Answered(seen) => seen,
        Answer::Missed(e) => {
            page_if_key_changed(cx, &host, &e).await?;
            tracing::debug!(host = %host.id(), error = %e, "still unreachable");
            return nap(cx.frame.checkup_secs as f64);
        }
    };
    let rebooted = host.row.boot_id.as_deref().is_some_and(|b| b != boot);
    let open = open_state(cx);
    let conn = cx.tx.conn().await?;
    vm_host::checkup_ok(conn, host.row.id, &boot).await?;
    vm_host::set_state(conn, host.row.id, open).await?;
    if open == HostState::Accepting {
        capacity::wake_waiting(conn).await?;
    }
    event::record(conn, host.row.id, "reachable-again", "system", &json!({})).await?;
    // Reconcile its VMs with what actually runs there: each one's strand
    // checks (alive: running again; gone: per desired state).
    let vms = vm::on_host(conn, host.row.id).await?;
    for vm in &vms {
        cx.incr(Ubid::from_uuid(*vm), crate::vm::nexus::Sem::Checkup).await?;
    }
    if rebooted {
        // It was down, not just unreachable: its taps, segments and tunnels went with the boot.
        crate::vnet::host_rebooted(cx, host.row.id).await?;
    }
    cx.resolve_page(&unreachable_page(&host)).await?;
    report_unknown_vms(cx, &host, &vms, &listed).await?;
    if version != agent::version() {
        return hop(Label::InstallAgent);
    }
    hop(Label::Wait)
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

/// Place no new VMs here; those on it keep running. An unreachable host
/// stays 'unreachable' (that is what is true now) and comes back draining.
async fn drain(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let subject = cx.subject_id();
    let id = subject.uuid();
    let was_draining = std::mem::replace(&mut cx.frame.draining, true);
    let conn = cx.tx.conn().await?;
    let row = vm_host::get(conn, id).await?.ok_or_else(|| anyhow::anyhow!("host {subject} is gone"))?;
    if !was_draining {
        if row.state == HostState::Accepting {
            vm_host::set_state(conn, id, HostState::Draining).await?;
        }
        event::record(conn, id, "draining", "system", &json!({"was": row.state})).await?;
    }
    match row.state {
        HostState::Unreachable => hop(Label::Unreachable),
        _ => hop(Label::Wait),
    }
}

/// Ask the host to reboot; remember its boot id to see when it is back.
async fn reboot(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    let before = host.boot_id().await?;
    let said = host.reboot_host().await?;
    tracing::info!(host = %host.id(), answer = %said, "reboot requested");
    cx.frame.boot_id_before_reboot = Some(before);
    cx.register_deadline(Label::Wait, Duration::from_secs(600));
    hop(Label::WaitReboot)
}

/// Back when the host answers with a new boot id.
async fn wait_reboot(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?.limit(CHECKUP_LIMIT);
    let boot = match answer(host.boot_id().await)? {
        Answer::Answered(boot) if Some(boot.as_str()) != cx.frame.boot_id_before_reboot.as_deref() => boot,
        Answer::Answered(_) => return nap(2),
        Answer::Missed(e) => {
            page_if_key_changed(cx, &host, &e).await?;
            return nap(2);
        }
    };
    let conn = cx.tx.conn().await?;
    vm_host::checkup_ok(conn, host.row.id, &boot).await?;
    event::record(conn, host.row.id, "rebooted", "system", &json!({})).await?;
    cx.frame.boot_id_before_reboot = None;
    // Its taps, segments and tunnels went with the boot.
    crate::vnet::host_rebooted(cx, host.row.id).await?;
    hop(Label::Wait)
}

/// Retire the host: remove the agent (if the host answers) and mark it destroyed.
async fn destroy(cx: &mut Ctx<'_, HostNexus>) -> Step<HostNexus> {
    let host = Host::load(cx).await?;
    // Its private networking first, while its agent is there to remove it.
    if let Err(e) = crate::vnet::teardown(cx, &host).await {
        tracing::warn!(host = %host.id(), error = %e, "could not tear down the host's private networks while destroying it");
    }
    let removed = host.exec(&crate::cmd!("rm -rf {root}/agent {root}/ssh", root = host.root())?).await;
    if let Err(e) = &removed {
        tracing::warn!(host = %host.id(), error = %e, "could not clean the host while destroying it");
    }
    let conn = cx.tx.conn().await?;
    vm_host::set_state(conn, host.row.id, HostState::Destroyed).await?;
    crate::vnet::host_destroyed(cx, host.row.id).await?;
    let conn = cx.tx.conn().await?;
    event::record(conn, host.row.id, "destroyed", "system", &json!({"cleaned": removed.is_ok()})).await?;
    cx.resolve_page(&unreachable_page(&host)).await?;
    pop(Destroyed { msg: "host destroyed".into(), cleaned: removed.is_ok() })
}
