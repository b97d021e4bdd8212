//! The seam between progs and hosts: every command a prog sends goes
//! through a [`Shell`]. Workers use [`SshPool`](super::SshPool) (real SSH);
//! label tests use a scripted host (`ssh::scripted`, behind the `testing`
//! feature), so a label's every branch is tested without a machine.
//!
//! A runner is given the shell as a resource: `Resources::default().with(ssh::shell(SshPool::new()))`,
//! and a prog reaches it through [`Host`](crate::host::Host), never directly.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::client::{Output, SshError, Target};
use super::cmd::Cmd;

/// How commands reach hosts.
#[async_trait]
pub trait Shell: Send + Sync + 'static {
    /// The host key `host:port` presents (no authentication): for pinning on first contact.
    async fn host_key(&self, host: &str, port: u16, timeout: Duration) -> Result<String, SshError>;

    /// Run `cmd` with `stdin` within `timeout`, and return its output whatever its exit status.
    async fn run(&self, t: &Target, cmd: &Cmd, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output, SshError>;

    /// Run `cmd`; a non-zero exit is an error ([`SshError::Exit`]) carrying what it printed.
    async fn exec(&self, t: &Target, cmd: &Cmd, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output, SshError> {
        let out = self.run(t, cmd, stdin, timeout).await?;
        if out.status != 0 {
            let e = SshError::Exit {
                host: t.name(),
                cmd: cmd.shown().to_string(),
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            // `run` timed the call; a command that ran and failed is counted here.
            super::metrics::failure(&t.label(), &e);
            return Err(e);
        }
        Ok(out)
    }
}

/// The runner resource progs find their shell by (`cx.resource::<Shared>()`).
pub type Shared = Arc<dyn Shell>;

/// `shell` as the resource a runner hands to steps.
pub fn shell(shell: impl Shell) -> Shared {
    Arc::new(shell)
}
