//! The prog side of the host agent's daemonizer: long host work (building
//! an image, running a VM) is started detached and polled, so no step waits
//! minutes on an SSH command. Every use of the daemonizer goes through the
//! methods here; a label that only waits for a run to finish calls [`drive`]
//! once per step and naps while it says `Running`.

use super::conn::Host;
use super::programs::AgentProgram;
use crate::ssh::{ShellArg, SshError};

/// What `daemonizer check` says about a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    NotStarted,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Started or still going: nap and call again.
    Running,
    /// Finished well; the run is forgotten (cleaned) so it can run again later.
    Done,
    /// The last attempt failed; it has been started again.
    Retrying,
}

impl Host {
    /// The state of the detached run `run`.
    pub async fn run_state(&self, run: &str) -> Result<RunState, SshError> {
        let cmd = self.agent_cmd(AgentProgram::Daemonizer, &[&"check", &run])?;
        match self.line(&cmd).await?.as_str() {
            "NotStarted" => Ok(RunState::NotStarted),
            "InProgress" => Ok(RunState::InProgress),
            "Succeeded" => Ok(RunState::Succeeded),
            "Failed" => Ok(RunState::Failed),
            other => Err(SshError::Unreadable {
                host: self.target.name(),
                cmd: cmd.shown().to_string(),
                reason: "not a run state".into(),
                printed: other.to_string(),
            }),
        }
    }

    /// Start `program args` detached as run `run` (a failed run is replaced).
    pub async fn start_run(&self, run: &str, program: AgentProgram, args: &[&dyn ShellArg]) -> Result<(), SshError> {
        let path = format!("{}/agent/bin/{}", self.root(), program.name());
        let mut all: Vec<&dyn ShellArg> = vec![&"run", &run, &path];
        all.extend_from_slice(args);
        self.agent(AgentProgram::Daemonizer, &all).await.map(drop)
    }

    /// Forget a finished run, so it can run again.
    pub async fn clean_run(&self, run: &str) -> Result<(), SshError> {
        self.agent(AgentProgram::Daemonizer, &[&"clean", &run]).await.map(drop)
    }

    /// What the run printed, for operators.
    pub async fn run_logs(&self, run: &str) -> Result<String, SshError> {
        Ok(self.agent(AgentProgram::Daemonizer, &[&"logs", &run]).await?.stdout_str())
    }
}

/// One poll of the detached run `run` of agent program `program`: start it
/// if it has not started (or failed), report when it is done.
pub async fn drive(host: &Host, run: &str, program: AgentProgram) -> Result<Progress, SshError> {
    match host.run_state(run).await? {
        RunState::Succeeded => {
            host.clean_run(run).await?;
            Ok(Progress::Done)
        }
        RunState::InProgress => Ok(Progress::Running),
        RunState::NotStarted => {
            host.start_run(run, program, &[]).await?;
            Ok(Progress::Running)
        }
        RunState::Failed => {
            host.start_run(run, program, &[]).await?;
            Ok(Progress::Retrying)
        }
    }
}
