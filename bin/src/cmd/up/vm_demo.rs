//! The VM part of `skein up`'s demo: two local hosts (each a real sshd in a
//! network namespace on this machine, joined by an underlay of their own)
//! are added like any host, their strands prepare them, two VMs of one
//! private subnet are created, one on each, reach running, and talk over
//! their subnet (a ping, and SSH from one into the other by its private
//! address) through the encrypted tunnel between the hosts; then the VMs
//! are destroyed, the subnet deleted and the hosts removed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skein_models::vm::VmState;
use skein_models::vm_host::HostState;
use skein_models::{project, vm, vm_host, Ubid, UbidType};
use skein_progs::host::{self, nexus as host_nexus, NewHost};
use skein_progs::vm::{self as vms, nexus as vm_nexus, Spec};
use sqlx::PgPool;

use crate::local_host::{generate_keypair, LocalHost};

/// The `demo` project its VMs are made in: made by the first demo, kept for
/// the next (a project is cheap, and an operator may have raised its quota).
async fn demo_project(pool: &PgPool) -> anyhow::Result<Ubid> {
    let mut conn = pool.acquire().await?;
    if let Some(p) = project::by_name(&mut conn, "demo").await? {
        return Ok(Ubid::from_uuid(p.id));
    }
    let id = Ubid::generate(UbidType::Project);
    project::insert(&mut conn, id.uuid(), "demo", 10).await?;
    Ok(id)
}

/// Why the demo cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1).map(String::from));
    if uid.as_deref() != Some("0") {
        return Some("it needs root (network namespaces, a local sshd, VM users)".into());
    }
    for (what, path) in [("sshd", "/usr/sbin/sshd"), ("qemu", "/usr/bin/qemu-system-x86_64"), ("ip", "/usr/sbin/ip")] {
        if !std::path::Path::new(path).exists() && !std::path::Path::new(&path.replace("/usr/sbin", "/sbin")).exists() {
            return Some(format!("{what} is not installed ({path}); scripts/install-deps installs it"));
        }
    }
    None
}

fn say(msg: impl AsRef<str>) {
    println!("\nvm demo: {}\n", msg.as_ref());
}

/// What a run has made so far: all of it is removed at the end, whether
/// the demo got through or failed half-way.
#[derive(Default)]
struct Made {
    locals: Vec<LocalHost>,
    hosts: Vec<Ubid>,
    vms: Vec<Ubid>,
    subnet: Option<Ubid>,
    key_file: Option<PathBuf>,
}

/// The demo, then its teardown. Names are fresh on every run, so it runs
/// any number of times on one cluster; a failure, or `interrupted`
/// completing first, is reported after what it made has been removed.
pub async fn run(pool: &PgPool, interrupted: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let mut made = Made::default();
    let result = tokio::select! {
        result = demo(pool, &mut made) => result,
        () = interrupted => Err(anyhow::anyhow!("interrupted (Ctrl-C or SIGTERM)")),
    };
    if let Err(e) = &result {
        say(format!("failed: {e:#}; removing what it made"));
    } else {
        say("destroying the vms and their subnet, then the hosts");
    }
    let cleaned = teardown(pool, made).await;
    if let (Err(_), Err(e)) = (&result, &cleaned) {
        say(format!("and removing what it made failed too: {e:#}"));
    }
    result?;
    cleaned?;
    say("done: nothing of the vms, their subnet or the local hosts is left on this machine");
    Ok(())
}

async fn demo(pool: &PgPool, made: &mut Made) -> anyhow::Result<()> {
    let secret = crate::process::secret_key()?;
    let (bootstrap_private, bootstrap_public) = generate_keypair();
    for _ in 0..2 {
        let public = bootstrap_public.clone();
        let local = tokio::task::spawn_blocking(move || LocalHost::start(&public)).await?;
        made.locals.push(local);
    }
    for local in &made.locals {
        say(format!(
            "a local host: sshd in network namespace {} at {}, tunnels on {} (its files under {})",
            local.netns(),
            local.addr(),
            local.underlay_addr(),
            local.root_dir().display()
        ));
    }
    // A local host has no network of its own (it reaches only this machine),
    // so it cannot download Debian's packages: its guest image is built here,
    // by the same builder, and placed where the host's own build finds it.
    let mut image = String::new();
    for local in &made.locals {
        image = seed_image(local).await?;
    }
    say(format!("guest image {image} placed in the local hosts' roots (built once, cached)"));
    for local in &made.locals {
        let name = format!("local-{}", suffix());
        let (addr, root, port, underlay) =
            (local.addr().to_string(), local.root_dir().display().to_string(), local.port(), local.underlay_addr().to_string());
        let new = NewHost { name: &name, address: &addr, port, user: "root", bootstrap_private_key: &bootstrap_private, root_dir: &root };
        let mut tx = pool.begin().await?;
        let host_id = host::add(&mut tx, &secret, &new, host_nexus::Frame::default()).await?;
        vm_host::set_underlay(&mut tx, host_id.uuid(), Some(&underlay)).await?;
        tx.commit().await?;
        made.hosts.push(host_id);
        say(format!(
            "host {name} ({host_id}) added: its strand pins the host key, takes it over with its own key, installs the agent \
             and the tunnel program, learns the machine, checks the guest image and probes KVM by booting it"
        ));
    }
    for host_id in made.hosts.clone() {
        let host = wait(Duration::from_secs(600), || async {
            let h = vm_host::get(&mut *pool.acquire().await?, host_id.uuid()).await?.context("host row gone")?;
            Ok((h.state == HostState::Accepting).then_some(h))
        })
        .await
        .context("a local host did not become ready")?;
        let kvm = if host.facts.kvm_usable == Some(true) { "yes".to_string() } else { format!("no: {}", host.facts.kvm_reason.unwrap_or_default()) };
        say(format!("host {} accepting VMs: {} cpus, {} MiB, KVM {kvm}", host.name, host.facts.cpus.unwrap_or(0), host.facts.memory_mib.unwrap_or(0)));
    }

    let (owner_private, owner_public) = generate_keypair();
    let key_file = made.key_file.insert(key_file(&owner_private)?).clone();
    let project = demo_project(pool).await?;
    let net_name = format!("net-{}", suffix());
    let subnet = skein_models::subnet::create(&mut *pool.acquire().await?, project.uuid(), &net_name, "10.77.0.0/24").await?;
    made.subnet = Some(subnet);
    say(format!("private subnet {net_name} ({subnet}, 10.77.0.0/24) created in project demo"));

    // One VM on each host: once the first is placed, its host is drained
    // (as is each demo host once it has its VM), so the second goes to the
    // other one, and no other waiting VM lands on a host that lives only as
    // long as this demo.
    let began = Instant::now();
    let mut placed_on = Vec::new();
    for _ in 0..2 {
        let vm_name = format!("hello-{}", suffix());
        let net = subnet.to_string();
        let spec = Spec { name: &vm_name, cores: 1, memory_mib: 256, disk_mib: 64, public_key: &owner_public, subnet: Some(&net) };
        let mut tx = pool.begin().await?;
        let vm_id = vms::create(&mut tx, project, &spec, vm_nexus::Frame::default()).await?;
        tx.commit().await?;
        made.vms.push(vm_id);
        say(format!("vm {vm_name} ({vm_id}) created in {net_name} (1 vCPU, 256 MiB); its strand places it, sets it up, has its host make its NIC, boots it"));
        let placed = wait(Duration::from_secs(600), || async {
            let v = vm::get(&mut *pool.acquire().await?, vm_id.uuid()).await?.context("vm row gone")?;
            Ok(v.host_id)
        })
        .await
        .context("the vm was not placed")?;
        let Some(host_id) = made.hosts.iter().find(|h| h.uuid() == placed).copied() else {
            bail!("the vm was placed on another host ({}), not one of the demo's local hosts", Ubid::from_uuid(placed));
        };
        skein_engine::enqueue::incr(&mut *pool.acquire().await?, host_id, host_nexus::Sem::Drain).await?;
        placed_on.push(host_id);
    }
    if placed_on[0] == placed_on[1] {
        bail!("both vms went to one host ({})", placed_on[0]);
    }
    // Where to reach each: what the VM says (as the API and `vm show` do).
    let mut running = Vec::new();
    for vm_id in made.vms.clone() {
        let v = wait(Duration::from_secs(600), || async {
            let v = vm::get(&mut *pool.acquire().await?, vm_id.uuid()).await?.context("vm row gone")?;
            Ok((v.state == VmState::Running && v.ssh().is_some()).then_some(v))
        })
        .await
        .context("a vm did not reach running")?;
        running.push(v);
    }
    let (first, second) = (&running[0], &running[1]);
    let at = first.ssh().context("the first vm says nowhere to reach it")?;
    let second_ip = second.private_ip.clone().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
    let ssh = format!("ssh -i {} -p {} {}@{}", key_file.display(), at.port, at.user, at.host);
    say(format!(
        "both vms running after {:.1} s, {} on host {} and {} on host {}; reach the first with: {ssh} (or: skein vm ssh {} -i {})",
        began.elapsed().as_secs_f64(),
        first.private_ip.clone().unwrap_or_default(),
        placed_on[0],
        second.private_ip.clone().unwrap_or_default(),
        placed_on[1],
        Ubid::from_uuid(first.id),
        key_file.display()
    ));
    let base = |port: String| {
        let mut c = Command::new("ssh");
        c.args(["-i", &key_file.display().to_string(), "-p", &port]);
        c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]);
        c
    };
    let ping = base(at.port.to_string()).arg(format!("{}@{}", at.user, at.host)).arg(format!("ping -c 3 -W 2 {second_ip}")).output().context("running ssh")?;
    if !ping.status.success() {
        bail!("the first vm could not ping the second over the subnet: {}{}", String::from_utf8_lossy(&ping.stdout), String::from_utf8_lossy(&ping.stderr));
    }
    let summary = String::from_utf8_lossy(&ping.stdout).lines().filter(|l| l.contains("transmitted") || l.contains("round-trip")).collect::<Vec<_>>().join("; ");
    say(format!("inside the first vm, `ping {second_ip}` (the other host, through the encrypted tunnel) says: {summary}"));
    let proxy = format!(
        "ProxyCommand=ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR {}@{} nc %h %p",
        key_file.display(),
        at.port,
        at.user,
        at.host
    );
    let hop = base("22".into()).args(["-o", &proxy]).arg(format!("root@{second_ip}")).arg("hostname").output().context("running ssh")?;
    if !hop.status.success() {
        bail!("ssh from the first vm into the second over the subnet failed: {}", String::from_utf8_lossy(&hop.stderr));
    }
    say(format!("ssh into {second_ip} through the first vm lands in: {}", String::from_utf8_lossy(&hop.stdout).trim()));
    Ok(())
}

/// Six characters of a fresh UBID: names no earlier run has used.
fn suffix() -> String {
    Ubid::generate(skein_models::UbidType::VmHost).to_string()[20..].to_string()
}

/// Destroy the VM (its strand takes it off the host), then the host (while
/// its sshd still answers, so its strand can clean it), then the local
/// host itself and the key file. Every part is tried even if one fails;
/// the first failure is returned.
async fn teardown(pool: &PgPool, made: Made) -> anyhow::Result<()> {
    let mut first_error = None;
    for vm_id in &made.vms {
        let vm_id = *vm_id;
        // Gone when its strand is: it ends once its host dropped its NIC.
        let done = destroy(pool, vm_id, Duration::from_secs(180), |c| async move {
            Ok(skein_models::strand::get(&mut *c.acquire().await?, vm_id.uuid()).await?.is_none_or(|s| s.exitval.is_some()))
        });
        if let Err(e) = done.await {
            first_error.get_or_insert(e.context(format!("destroying vm {vm_id}")));
        }
    }
    if let Some(subnet) = made.subnet {
        skein_models::subnet::delete(&mut *pool.acquire().await?, subnet.uuid()).await?;
    }
    for host_id in &made.hosts {
        let host_id = *host_id;
        // VMs of others placed on it before it was drained lose their host
        // with it: say which, loudly, rather than leave a host that is gone
        // looking as if it could run them.
        let others: Vec<Ubid> = vm::on_host(&mut *pool.acquire().await?, host_id.uuid())
            .await?
            .into_iter()
            .filter(|v| !made.vms.iter().any(|m| m.uuid() == *v))
            .map(Ubid::from_uuid)
            .collect();
        if !others.is_empty() {
            let ids = others.iter().map(Ubid::to_string).collect::<Vec<_>>().join(", ");
            say(format!("warning: other VMs were placed on a demo host before it was drained: {ids}; they lose their host with it"));
        }
        let done = destroy(pool, host_id, Duration::from_secs(120), |c| async move {
            Ok(vm_host::get(&mut *c.acquire().await?, host_id.uuid()).await?.is_none_or(|h| h.state == HostState::Destroyed))
        });
        if let Err(e) = done.await {
            first_error.get_or_insert(e.context(format!("destroying host {host_id}")));
        }
    }
    if !made.locals.is_empty() {
        let locals = made.locals;
        tokio::task::spawn_blocking(move || drop(locals)).await?;
    }
    if let Some(path) = made.key_file {
        let _ = std::fs::remove_file(path);
    }
    first_error.map_or(Ok(()), Err)
}

/// Set `destroy` on a strand and wait until `gone` says its subject is.
async fn destroy<F, Fut>(pool: &PgPool, id: Ubid, limit: Duration, gone: F) -> anyhow::Result<()>
where
    F: Fn(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    if gone(pool.clone()).await? {
        return Ok(());
    }
    skein_engine::enqueue::incr(&mut *pool.acquire().await?, id, skein_engine::Signal::DESTROY).await?;
    wait(limit, || async { Ok(gone(pool.clone()).await?.then_some(())) }).await
}

/// Poll `check` every half second until it yields something, or fail after `limit`.
async fn wait<T, F, Fut>(limit: Duration, check: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("gave up after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The VM owner's private key, where the printed ssh command can use it.
fn key_file(private: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let home = crate::embedded::Embedded::from_env()?.home;
    std::fs::create_dir_all(&home)?;
    // Its own file per run: two demos on one machine never share one.
    let path = home.join(format!("demo-vm-key-{}", suffix()));
    std::fs::write(&path, private)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Build the guest image on this machine (once per agent version, cached in
/// `$SKEIN_HOME`), and copy it into the local host's root. Returns its version.
async fn seed_image(local: &LocalHost) -> anyhow::Result<String> {
    let home = crate::embedded::Embedded::from_env()?.home;
    let cache = home.join("guest-image").join(skein_progs::host::agent::version());
    let image = cache.join("images/guest");
    if !image.join("VERSION").exists() {
        say("building the guest image from Debian's packages (first run only; takes a minute)");
        std::fs::create_dir_all(&cache)?;
        let script = cache.join("build-guest-image");
        let body = skein_progs::host::agent::FILES
            .iter()
            .find(|(path, _)| *path == "bin/build-guest-image")
            .map(|(_, body)| *body)
            .context("the agent bundle has no build-guest-image")?;
        std::fs::write(&script, body)?;
        let out = tokio::process::Command::new("bash").arg(&script).env("SKEIN_ROOT", &cache).output().await?;
        if !out.status.success() {
            bail!("building the guest image failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
    }
    let to = local.root_dir().join("images/guest");
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(&image)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(std::fs::read_to_string(image.join("VERSION"))?.trim().to_string())
}
