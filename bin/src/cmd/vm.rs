//! `skein vm create|stop|start|restart|destroy|ssh` (and the console's
//! `list` and `show`): a VM for a project, written with its strand in one
//! transaction (with `--wait`, followed until it runs), and the everyday
//! requests to it. Each change is confirmed and audited in the transaction
//! that makes it; what a VM can be asked in which state is `signals::vm`,
//! as for the API.

use anyhow::anyhow;
use serde_json::json;
use skein_models::{project, vm, Ubid, UbidType};
use skein_progs::rules;
use skein_progs::vm::{self as vms, console as vm_console, nexus, Spec};

use crate::cmd::change::{self, Change};
use crate::cmd::follow::{self, Subject, WaitArgs};
use crate::cmd::session::{OpsOptions, Reply, Session};
use crate::signals::{self, VmAction};

/// `skein vm ...`: the console's VM commands and the everyday requests.
#[derive(clap::Subcommand, Debug)]
pub enum VmCli {
    #[command(flatten)]
    Ops(VmCmd),
    #[command(flatten)]
    Request(Request),
}

/// The VM commands the console has too (it runs them: `console::fleet`).
#[derive(clap::Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM for a project; its strand places and starts it.
    Create(CreateArgs),
    /// VMs with their state and host.
    List {
        /// Only this project's (by name).
        #[arg(long)]
        project: Option<String>,
        /// Include destroyed VMs.
        #[arg(long)]
        all: bool,
    },
    /// One VM: size, host, its strand and recent events.
    Show { id: String },
}

/// The everyday requests to a VM, the CLI's alone.
#[derive(clap::Subcommand, Debug)]
pub enum Request {
    /// Stop a running VM (it keeps its disk and its place on the host).
    Stop { id: String },
    /// Start a stopped VM.
    Start { id: String },
    /// Restart a running VM.
    Restart { id: String },
    /// Destroy a VM: its strand takes it off its host; the row stays as history.
    Destroy { id: String },
    /// SSH into a running VM, where its host last said its SSH answers
    /// (`vm show` says it too): runs `ssh -p PORT USER@HOST [ARGS...]`.
    Ssh {
        id: String,
        /// The private key to log in with (`ssh -i`); else ssh's own defaults.
        #[arg(long, short = 'i')]
        identity: Option<std::path::PathBuf>,
        /// More for ssh after `--`: options, or a command to run in the VM.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The end of a VM's serial console (what the guest printed), read from its host.
    Console {
        id: String,
        /// How many bytes of the end, at most 65536.
        #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
        bytes: u64,
    },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The project (tenant) it belongs to, by name.
    #[arg(long)]
    pub project: String,
    /// Its name, unique among the project's live VMs (lowercase letters, digits, dashes).
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub cores: i32,
    #[arg(long, default_value_t = 512)]
    pub memory_mib: i32,
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: i32,
    /// The owner's SSH public key (`ssh-ed25519 AAAA... comment`), or `@path` to read it from a file.
    #[arg(long)]
    pub public_key: String,
    /// A private subnet of the project to join, by id (ps...) or name; it gets an address there.
    #[arg(long)]
    pub subnet: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `skein vm stop|start|restart|destroy|ssh|console`, printed.
pub async fn run(cmd: Request, opts: OpsOptions) -> anyhow::Result<()> {
    let (id, action) = match cmd {
        Request::Stop { id } => (id, VmAction::Stop),
        Request::Start { id } => (id, VmAction::Start),
        Request::Restart { id } => (id, VmAction::Restart),
        Request::Destroy { id } => (id, VmAction::Destroy),
        Request::Ssh { id, identity, args } => {
            let s = Session::open(&opts).await?;
            return ssh(&s, &id, identity.as_deref(), &args).await;
        }
        Request::Console { id, bytes } => {
            let s = Session::open(&opts).await?;
            console(&s, &id, bytes).await?.print(opts.json);
            return Ok(());
        }
    };
    let s = Session::open(&opts).await?;
    signal(&s, &id, action, &opts).await?.print(opts.json);
    Ok(())
}

async fn signal(s: &Session, id: &str, action: VmAction, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let vm_id = Ubid::parse_as(id, UbidType::Vm).map_err(|e| anyhow!("{e}"))?;
    let row = vm::get(&mut *s.pool.acquire().await?, vm_id.uuid()).await?.ok_or_else(|| anyhow!("no vm {id}"))?;
    let verb = action.verb();
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &format!("{verb} vm {} ({id})", row.name)).await?;
    let (now, signalled) = signals::vm(change.conn(), vm_id.uuid(), action, "operator", &json!({"operator": s.operator})).await?;
    let answer = json!({"id": vm_id, "name": now.name, "state": now.state, "desired_state": now.desired_state, "signalled": signalled});
    if !signalled {
        // Nothing changed, so there is nothing to audit.
        return Ok(Reply::new(format!("vm {} already wants to be {}; nothing changed", now.name, now.desired_state), answer));
    }
    change.commit(&format!("vm-{verb}"), Some(vm_id.uuid()), &json!({"name": now.name})).await?;
    Ok(Reply::new(format!("vm {}: {verb} asked; its strand does it (`skein vm show {id}`)", now.name), answer))
}

/// Become `ssh` to the VM (its exit status is the command's): the
/// endpoint its host last reported, never a guess.
async fn ssh(s: &Session, id: &str, identity: Option<&std::path::Path>, extra: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let vm_id = Ubid::parse_as(id, UbidType::Vm).map_err(|e| anyhow!("{e}"))?;
    let row = vm::get(&mut *s.pool.acquire().await?, vm_id.uuid()).await?.ok_or_else(|| anyhow!("no vm {id}"))?;
    let at = row.ssh().ok_or_else(|| anyhow!("vm {} is {}: it has no SSH endpoint until it runs (`skein vm show {id}`)", row.name, row.state))?;
    let mut cmd = std::process::Command::new("ssh");
    if let Some(key) = identity {
        cmd.arg("-i").arg(key);
    }
    cmd.arg("-p").arg(at.port.to_string()).arg(format!("{}@{}", at.user, at.host)).args(extra);
    // Only returns if ssh could not be started.
    let e = cmd.exec();
    Err(anyhow!("could not run ssh: {e}"))
}

/// The console's tail; printed with control characters escaped, so a guest
/// cannot rewrite the operator's terminal.
async fn console(s: &Session, id: &str, bytes: u64) -> anyhow::Result<Reply> {
    let vm_id = Ubid::parse_as(id, UbidType::Vm).map_err(|e| anyhow!("{e}"))?;
    let row = vm::get(&mut *s.pool.acquire().await?, vm_id.uuid()).await?.ok_or_else(|| anyhow!("no vm {id}"))?;
    let at = vm_console::locate(&mut *s.pool.acquire().await?, &crate::process::secret_key()?, &row).await?;
    let tail = vm_console::read(&skein_progs::ssh::SshPool::new(), &at, bytes, std::time::Duration::from_secs(15)).await?;
    // A serial console ends its lines with \r\n; the rest of what it holds
    // (terminal escapes included) is shown escaped by `Reply::print`.
    let shown = tail.text.replace("\r\n", "\n");
    let head = match (tail.size, tail.truncated) {
        (0, _) => format!("vm {}: its console is empty so far", row.name),
        (size, true) => format!("vm {}: the last {} of {size} bytes of its console:", row.name, tail.text.len()),
        (size, false) => format!("vm {}: its console ({size} bytes):", row.name),
    };
    let answer = json!({"id": vm_id, "size": tail.size, "truncated": tail.truncated, "text": tail.text});
    Ok(Reply::new(format!("{head}\n{shown}"), answer))
}

pub async fn create(s: &Session, args: CreateArgs, opts: &OpsOptions) -> anyhow::Result<Reply> {
    let key = match args.public_key.strip_prefix('@') {
        Some(path) => change::read_small_file(path.as_ref(), change::KEY_FILE_MAX, "--public-key")?,
        None => args.public_key.clone(),
    };
    let spec = Spec {
        name: &args.name,
        cores: args.cores,
        memory_mib: args.memory_mib,
        disk_mib: args.disk_mib,
        public_key: key.trim(),
        subnet: args.subnet.as_deref(),
    };
    rules::vm_spec(&spec).map_err(|e| anyhow!(e.cli_message()))?;
    let owner = project::by_name(&mut *s.pool.acquire().await?, &args.project)
        .await?
        .ok_or_else(|| anyhow!("no project {:?} (`skein project list` shows them)", args.project))?;
    let what = format!("create vm {} in project {} ({} cores, {} MiB)", args.name, args.project, args.cores, args.memory_mib);
    let mut change = Change::begin(&s.pool, &s.operator, opts.yes, &what).await?;
    let id = vms::create(change.conn(), Ubid::from_uuid(owner.id), &spec, nexus::Frame::default()).await.map_err(|e| rules::explain(e.into()))?;
    let detail = json!({"name": args.name, "project": args.project, "cores": args.cores, "memory_mib": args.memory_mib, "disk_mib": args.disk_mib});
    change.commit("vm-create", Some(id.uuid()), &detail).await?;
    let made = format!("vm {} created as {id} in project {}", args.name, args.project);
    if !args.wait.wait {
        let text = format!("{made}; its strand places and starts it (`skein vm show {id}`, or add --wait)");
        return Ok(Reply::new(text, json!({"id": id, "name": args.name, "state": skein_models::vm::VmState::Creating})));
    }
    if !opts.json {
        println!("{made}; following its strand until it runs");
    }
    let end = follow::follow(&s.pool, id, Subject::Vm, &args.wait, opts.json).await?;
    Ok(Reply::new(end.summary(), json!({"id": id, "name": args.name, "state": end.state})))
}
