//! The prog side of the host agent's daemonizer: long host work (building
//! an image, running a VM) is started detached and polled, so no step waits
//! minutes on an SSH command. A label calls [`drive`] once per step and naps
//! while it says `Running`.

use std::time::Duration;

use super::conn::{AgentProgram, Host};
use crate::ssh::SshError;

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Started or still going: nap and call again.
    Running,
    /// Finished well; the run is forgotten (cleaned) so it can run again later.
    Done,
    /// The last attempt failed; it has been started again.
    Retrying,
}

/// One poll of the detached run `name` of agent program `program`: start it
/// if it has not started (or failed), report when it is done.
pub async fn drive(host: &Host, name: &str, program: &str, timeout: Duration) -> Result<Progress, SshError> {
    let state = host.agent(AgentProgram::Daemonizer, &["check", name], timeout).await?.stdout_str();
    match state.trim() {
        "Succeeded" => {
            host.agent(AgentProgram::Daemonizer, &["clean", name], timeout).await?;
            Ok(Progress::Done)
        }
        "InProgress" => Ok(Progress::Running),
        other => {
            let root = host.root();
            let run = crate::cmd!("SKEIN_ROOT={} {}/agent/bin/daemonizer run {} {}/agent/bin/{}", root, root, name, root, program)
                .map_err(|e| SshError::Session { host: host.target.host.clone(), cmd: "daemonizer run".into(), reason: e.to_string() })?;
            host.exec(&run, timeout).await?;
            Ok(if other == "Failed" { Progress::Retrying } else { Progress::Running })
        }
    }
}
