//! The VM part of `skein up`'s demo: a local host (a real sshd in a network
//! namespace on this machine) is added like any host, its strand prepares
//! it, a VM is created on it and reaches running, a command runs inside the
//! guest over SSH, and then the VM is destroyed and the host removed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skein_models::vm::VmState;
use skein_models::vm_host::HostState;
use skein_models::{vm, vm_host, Ubid};
use skein_progs::host::{self, nexus as host_nexus, NewHost};
use skein_progs::vm::{self as vms, nexus as vm_nexus, Spec};
use sqlx::PgPool;
use uuid::Uuid;

use crate::local_host::{generate_keypair, TestHost};

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
    local: Option<TestHost>,
    host: Option<Ubid>,
    vm: Option<Ubid>,
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
        say("destroying the vm, then the host");
    }
    let cleaned = teardown(pool, made).await;
    if let (Err(_), Err(e)) = (&result, &cleaned) {
        say(format!("and removing what it made failed too: {e:#}"));
    }
    result?;
    cleaned?;
    say("done: nothing of the vm or the local host is left on this machine");
    Ok(())
}

async fn demo(pool: &PgPool, made: &mut Made) -> anyhow::Result<()> {
    let (bootstrap_private, bootstrap_public) = generate_keypair();
    let local = made.local.insert(tokio::task::spawn_blocking(move || TestHost::start(&bootstrap_public)).await?);
    say(format!(
        "a local host: sshd in network namespace {} at {} (its files under {})",
        local.netns(),
        local.addr(),
        local.root_dir().display()
    ));
    // A local host has no network of its own (it reaches only this machine),
    // so it cannot download Debian's packages: its guest image is built here,
    // by the same builder, and placed where the host's own build finds it.
    let image = seed_image(local).await?;
    say(format!("guest image {image} placed in the local host's root (built once, cached)"));
    let secret = crate::worker::secret_key()?;
    let name = format!("local-{}", suffix());
    let (addr, root, port) = (local.addr().to_string(), local.root_dir().display().to_string(), local.port());
    let new = NewHost { name: &name, address: &addr, port, user: "root", bootstrap_private_key: &bootstrap_private, root_dir: &root };
    let mut tx = pool.begin().await?;
    let host_id = host::add(&mut tx, &secret, &new, host_nexus::Frame::default()).await?;
    tx.commit().await?;
    made.host = Some(host_id);
    say(format!(
        "host {name} ({host_id}) added: its strand pins the host key, takes it over with its own key, installs the agent, \
         learns the machine, checks the guest image and probes KVM by booting it"
    ));
    let host = wait(Duration::from_secs(600), || async {
        let h = vm_host::get(&mut *pool.acquire().await?, host_id.uuid()).await?.context("host row gone")?;
        Ok((h.state == HostState::Accepting).then_some(h))
    })
    .await
    .context("the local host did not become ready")?;
    let kvm = if host.facts.kvm_usable == Some(true) { "yes".to_string() } else { format!("no: {}", host.facts.kvm_reason.unwrap_or_default()) };
    say(format!("host accepting VMs: {} cpus, {} MiB, KVM {kvm}", host.facts.cpus.unwrap_or(0), host.facts.memory_mib.unwrap_or(0)));

    let (owner_private, owner_public) = generate_keypair();
    let key_file = made.key_file.insert(key_file(&owner_private)?).clone();
    let project: Uuid = sqlx::query_scalar(
        "INSERT INTO project (id, name, vm_quota) VALUES ($1, 'demo', 10) \
         ON CONFLICT (name) WHERE deleted_at IS NULL DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind(Ubid::generate(skein_models::UbidType::Project).uuid())
    .fetch_one(pool)
    .await?;
    let vm_name = format!("hello-{}", suffix());
    let spec = Spec { name: &vm_name, cores: 1, memory_mib: 256, disk_mib: 64, public_key: &owner_public, subnet: None };
    let began = Instant::now();
    let mut tx = pool.begin().await?;
    let vm_id = vms::create(&mut tx, Ubid::from_uuid(project), &spec, vm_nexus::Frame::default()).await?;
    tx.commit().await?;
    made.vm = Some(vm_id);
    say(format!("vm {vm_name} ({vm_id}) created (1 vCPU, 256 MiB); its strand places it, sets it up, boots it, waits for its SSH"));
    // The local host lives only as long as this demo: once its VM is
    // placed, it is drained, so no other waiting VM lands on it meanwhile.
    let placed = wait(Duration::from_secs(600), || async {
        let v = vm::get(&mut *pool.acquire().await?, vm_id.uuid()).await?.context("vm row gone")?;
        Ok(v.host_id)
    })
    .await
    .context("the vm was not placed")?;
    if placed != host_id.uuid() {
        bail!("the vm was placed on another host ({}), not the demo's local host", Ubid::from_uuid(placed));
    }
    skein_engine::enqueue::incr(&mut *pool.acquire().await?, host_id, skein_progs::host::nexus::Sem::Drain).await?;
    // Where to reach it: what the VM says (as the API and `vm show` do).
    let at = wait(Duration::from_secs(600), || async {
        let v = vm::get(&mut *pool.acquire().await?, vm_id.uuid()).await?.context("vm row gone")?;
        Ok(v.ssh().filter(|_| v.state == VmState::Running))
    })
    .await
    .context("the vm did not reach running")?;
    let (port, target) = (at.port.to_string(), format!("{}@{}", at.user, at.host));
    let ssh = format!("ssh -i {} -p {port} {target}", key_file.display());
    say(format!("vm running after {:.1} s; reach it with: {ssh} (or: skein vm ssh {vm_id} -i {})", began.elapsed().as_secs_f64(), key_file.display()));
    let out = Command::new("ssh")
        .args(["-i", &key_file.display().to_string(), "-p", &port])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .arg(&target)
        .arg("uname -a")
        .output()
        .context("running ssh")?;
    if !out.status.success() {
        bail!("ssh into the guest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    say(format!("inside the guest, `uname -a` says: {}", String::from_utf8_lossy(&out.stdout).trim()));
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
    if let Some(vm_id) = made.vm {
        let done = destroy(pool, vm_id, Duration::from_secs(180), |c| async move {
            Ok(vm::get(&mut *c.acquire().await?, vm_id.uuid()).await?.is_none_or(|v| v.state == VmState::Destroyed))
        });
        if let Err(e) = done.await {
            first_error.get_or_insert(e.context(format!("destroying vm {vm_id}")));
        }
    }
    if let Some(host_id) = made.host {
        // VMs of others placed on it before it was drained lose their host
        // with it: say which, loudly, rather than leave a host that is gone
        // looking as if it could run them.
        let others: Vec<Ubid> = vm::on_host(&mut *pool.acquire().await?, host_id.uuid())
            .await?
            .into_iter()
            .filter(|v| Some(*v) != made.vm.map(|m| m.uuid()))
            .map(Ubid::from_uuid)
            .collect();
        if !others.is_empty() {
            let ids = others.iter().map(Ubid::to_string).collect::<Vec<_>>().join(", ");
            say(format!("warning: other VMs were placed on the demo's local host before it was drained: {ids}; they lose their host with it"));
        }
        let done = destroy(pool, host_id, Duration::from_secs(120), |c| async move {
            Ok(vm_host::get(&mut *c.acquire().await?, host_id.uuid()).await?.is_none_or(|h| h.state == HostState::Destroyed))
        });
        if let Err(e) = done.await {
            first_error.get_or_insert(e.context(format!("destroying host {host_id}")));
        }
    }
    if let Some(local) = made.local {
        tokio::task::spawn_blocking(move || drop(local)).await?;
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
async fn seed_image(local: &TestHost) -> anyhow::Result<String> {
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
