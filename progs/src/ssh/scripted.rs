//! A host whose answers a test writes: the [`Shell`] of fast label tests
//! (feature `testing`; never in what ships).
//!
//! A test says what the host answers to commands containing a phrase, runs
//! the label, then asks which commands were sent:
//!
//! ```ignore
//! let host = Scripted::new();
//! host.answer("boot-id", "b-1\n").answer("agent-version", agent::version());
//! // ... run the label with `ssh::shell(host.clone())` as the runner's resource ...
//! assert!(host.was_sent("agent/bin/reboot-host"));
//! ```
//!
//! Commands are matched as shown with their quotes removed
//! (`SKEIN_ROOT=/r /r/agent/bin/daemonizer check vm-x`), the newest
//! matching answer first, so a test overrides a default by adding one.
//! A command nobody scripted fails with status 127 and names itself, so a
//! test never passes by accident on an unscripted call. Like the real
//! client, every call first checks that the step holds no database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::client::{Output, SshError, Target};
use super::cmd::Cmd;
use super::shell::Shell;

/// What the host does with a command.
#[derive(Clone, Debug)]
enum Reply {
    Exit { status: i32, stdout: String, stderr: String },
    Dropped,
}

#[derive(Debug)]
struct Rule {
    phrase: String,
    reply: Reply,
    /// Answers this many more times (None: always).
    left: Option<usize>,
}

#[derive(Default, Debug)]
struct Script {
    rules: Vec<Rule>,
    sent: Vec<String>,
    down: Option<Down>,
    host_key: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum Down {
    Unreachable,
    KeyChanged,
}

/// A scripted host; clones share one script, so the test keeps a handle
/// while the runner holds another.
#[derive(Clone, Default)]
pub struct Scripted(Arc<Mutex<Script>>);

/// The host key a scripted host presents unless told otherwise.
pub const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIScriptedHostKeyForTestsOnly00000000000";

/// What [`Scripted::sent`] lists when the host key was asked for (first contact).
pub const HOST_KEY_ASKED: &str = "(host key asked)";

impl Scripted {
    pub fn new() -> Scripted {
        Scripted::default()
    }

    fn add(&self, phrase: &str, reply: Reply, left: Option<usize>) -> &Self {
        self.0.lock().unwrap().rules.push(Rule { phrase: phrase.to_string(), reply, left });
        self
    }

    /// Commands containing `phrase` succeed and print `stdout`.
    pub fn answer(&self, phrase: &str, stdout: impl Into<String>) -> &Self {
        self.add(phrase, Reply::Exit { status: 0, stdout: stdout.into(), stderr: String::new() }, None)
    }

    /// The next command containing `phrase` (once) succeeds and prints `stdout`.
    pub fn answer_once(&self, phrase: &str, stdout: impl Into<String>) -> &Self {
        self.add(phrase, Reply::Exit { status: 0, stdout: stdout.into(), stderr: String::new() }, Some(1))
    }

    /// Commands containing `phrase` exit with `status`, printing `stderr`.
    pub fn fail(&self, phrase: &str, status: i32, stderr: impl Into<String>) -> &Self {
        self.add(phrase, Reply::Exit { status, stdout: String::new(), stderr: stderr.into() }, None)
    }

    /// Commands containing `phrase` lose the connection (a host that went away mid-way).
    pub fn drop_on(&self, phrase: &str) -> &Self {
        self.add(phrase, Reply::Dropped, None)
    }

    /// The host does not answer at all: every call fails to connect.
    pub fn go_down(&self) -> &Self {
        self.0.lock().unwrap().down = Some(Down::Unreachable);
        self
    }

    /// The host presents another host key than the one pinned: refused, as the real client does.
    pub fn change_key(&self) -> &Self {
        self.0.lock().unwrap().down = Some(Down::KeyChanged);
        self
    }

    /// The host answers again.
    pub fn come_back(&self) -> &Self {
        self.0.lock().unwrap().down = None;
        self
    }

    /// The host key it presents on first contact.
    pub fn present_key(&self, key: &str) -> &Self {
        self.0.lock().unwrap().host_key = Some(key.to_string());
        self
    }

    /// Every command sent so far, as matched (quotes removed), oldest first.
    pub fn sent(&self) -> Vec<String> {
        self.0.lock().unwrap().sent.clone()
    }

    /// Whether a command containing `phrase` was sent.
    pub fn was_sent(&self, phrase: &str) -> bool {
        self.sent().iter().any(|c| c.contains(phrase))
    }

    /// Forget the commands sent so far (between two steps of one test).
    pub fn clear_sent(&self) {
        self.0.lock().unwrap().sent.clear();
    }
}

fn unreachable(t: &Target) -> SshError {
    SshError::Connect { host: t.name(), reason: "scripted: the host does not answer".into() }
}

#[async_trait]
impl Shell for Scripted {
    async fn host_key(&self, host: &str, port: u16, _timeout: Duration) -> Result<String, SshError> {
        skein_engine::remote::check(|| format!("ssh {host}:{port} host-key"))?;
        let mut script = self.0.lock().unwrap();
        script.sent.push(HOST_KEY_ASKED.to_string());
        match script.down {
            Some(Down::Unreachable) => Err(SshError::Connect { host: format!("{host}:{port}"), reason: "scripted: the host does not answer".into() }),
            _ => Ok(script.host_key.clone().unwrap_or_else(|| HOST_KEY.to_string())),
        }
    }

    async fn run(&self, t: &Target, cmd: &Cmd, _stdin: Option<Vec<u8>>, _timeout: Duration) -> Result<Output, SshError> {
        skein_engine::remote::check(|| format!("ssh {} `{}`", t.name(), cmd.shown()))?;
        let line = cmd.shown().replace('\'', "");
        let mut script = self.0.lock().unwrap();
        match script.down {
            Some(Down::Unreachable) => return Err(unreachable(t)),
            Some(Down::KeyChanged) => {
                let pinned = t.host_key.clone().unwrap_or_else(|| HOST_KEY.to_string());
                return Err(SshError::HostKeyMismatch { host: t.name(), pinned, presented: "ssh-ed25519 AAAAscriptedOtherKey".into() });
            }
            None => {}
        }
        script.sent.push(line.clone());
        let Some(rule) = script.rules.iter_mut().rev().find(|r| r.left != Some(0) && line.contains(&r.phrase)) else {
            let stderr = format!("scripted host: no answer for `{line}` (add one with Scripted::answer)");
            return Ok(Output { status: 127, stdout: Vec::new(), stderr: stderr.into_bytes() });
        };
        if let Some(left) = &mut rule.left {
            *left -= 1;
        }
        match rule.reply.clone() {
            Reply::Exit { status, stdout, stderr } => Ok(Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() }),
            Reply::Dropped => {
                Err(SshError::Session { host: t.name(), cmd: cmd.shown().to_string(), reason: "scripted: the connection dropped".into() })
            }
        }
    }
}
