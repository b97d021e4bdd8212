//! The tail of a VM's serial console, for its owner: qemu writes the
//! guest's ttyS0 to `<root>/vms/<vm>/console.log` on the host (the agent's
//! `vm-run`); this reads at most its last bytes over SSH. It runs outside
//! any strand (an API request, a CLI command), so it builds its own SSH
//! target from the host's row, and only to a host whose key is pinned.

use std::time::Duration;

use skein_models::vm::Vm;
use skein_models::{sshable, vm_host, Ubid};
use sqlx::PgConnection;

use crate::ssh::keys::SecretKey;
use crate::ssh::{SshPool, Target};

/// The most of a console that is ever read and answered.
pub const CONSOLE_MAX: u64 = 64 * 1024;

/// The end of a console log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleTail {
    /// As UTF-8 (invalid bytes replaced); terminal escapes are left to the reader.
    pub text: String,
    /// How long the whole log is, in bytes (0: nothing written yet).
    pub size: u64,
    /// Whether `text` is only its end.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the VM has no host yet: it writes a console once it is placed and started")]
    NotPlaced,
    #[error("the VM's host does not answer: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Where a VM's console is: its host's SSH target and the log's directory.
pub struct Located {
    target: Target,
    root: String,
    vm: Ubid,
}

/// Find `vm`'s console (database only; the connection is free again before
/// any SSH is done, so a slow host holds no connection of the pool).
pub async fn locate(conn: &mut PgConnection, secret: &SecretKey, vm: &Vm) -> Result<Located, ConsoleError> {
    let host_id = vm.host_id.ok_or(ConsoleError::NotPlaced)?;
    let fail = |what: &str| ConsoleError::Failed(anyhow::anyhow!("{what}"));
    let host = vm_host::get(conn, host_id).await.map_err(anyhow::Error::from)?.ok_or_else(|| fail("the VM's host is gone"))?;
    let endpoint = sshable::get(conn, host.sshable_id).await.map_err(anyhow::Error::from)?.ok_or_else(|| fail("the host's SSH endpoint is gone"))?;
    if endpoint.host_key.is_none() {
        return Err(ConsoleError::Unreachable("it has not been taken over yet".into()));
    }
    let key = secret.open(endpoint.id.as_bytes(), &endpoint.private_key)?;
    let target = Target {
        host: endpoint.host.clone(),
        port: endpoint.port as u16,
        user: endpoint.unix_user.clone(),
        private_key: String::from_utf8(key).map_err(anyhow::Error::from)?,
        host_key: endpoint.host_key.clone(),
    };
    Ok(Located { target, root: host.root_dir, vm: Ubid::from_uuid(vm.id) })
}

/// The last `max` bytes (at most [`CONSOLE_MAX`]) of the console, within `timeout`.
pub async fn read(ssh: &SshPool, at: &Located, max: u64, timeout: Duration) -> Result<ConsoleTail, ConsoleError> {
    let max = max.min(CONSOLE_MAX);
    // The size first (one line), then the tail: both from one command, so
    // "truncated" describes the bytes that came back.
    let cmd = crate::cmd!(
        "f={}/vms/{}/console.log; if test -f \"$f\"; then wc -c < \"$f\"; tail -c {} \"$f\"; else echo 0; fi",
        at.root,
        at.vm,
        max
    )
    .map_err(anyhow::Error::from)?;
    let out = ssh.exec(&at.target, &cmd, None, timeout).await.map_err(|e| match e.is_unreachable() {
        true => ConsoleError::Unreachable(e.to_string()),
        false => ConsoleError::Failed(e.into()),
    })?;
    parse(&out.stdout, max).ok_or_else(|| ConsoleError::Failed(anyhow::anyhow!("the host answered something other than a size and a log")))
}

/// `<size>\n<tail>` as the command above prints it.
fn parse(stdout: &[u8], max: u64) -> Option<ConsoleTail> {
    let newline = stdout.iter().position(|&b| b == b'\n')?;
    let size: u64 = std::str::from_utf8(&stdout[..newline]).ok()?.trim().parse().ok()?;
    let body = &stdout[newline + 1..];
    let body = &body[..body.len().min(max as usize)];
    Some(ConsoleTail { text: String::from_utf8_lossy(body).into_owned(), size, truncated: size > body.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_size_line_and_the_tail_are_told_apart() {
        let t = parse(b"12\nhello\nworld\n", 100).unwrap();
        assert_eq!((t.text.as_str(), t.size, t.truncated), ("hello\nworld\n", 12, false));
        let t = parse(b"5000\nend\n", 4).unwrap();
        assert_eq!((t.text.as_str(), t.truncated), ("end\n", true));
        assert_eq!(parse(b"0\n", 10).unwrap().text, "");
        assert!(parse(b"nonsense", 10).is_none());
        assert!(parse(b"x\n", 10).is_none());
    }
}
