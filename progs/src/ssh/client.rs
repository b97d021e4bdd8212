//! The SSH client: ssh2 sessions, reused per host, run on blocking threads.
//!
//! `ssh2` (libssh2) is blocking, so every call runs under
//! `tokio::task::spawn_blocking`, never on the async workers. A worker keeps
//! one session per host and reuses it for the next command; any error drops
//! it, and the next command reconnects. Every call has a deadline (a step
//! passes the time left on its lease), and every error says which host, which
//! command (secrets redacted) and what the command printed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cmd::Cmd;
use super::metrics;
use super::shell::Shell;

/// Where and as whom to connect, with the host key pinned (or not yet).
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH private key text.
    pub private_key: String,
    /// `"ssh-ed25519 AAAA..."`; None before the first contact pins it.
    pub host_key: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

impl Target {
    pub fn name(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// The `host` label of its metrics: one per host, whoever logs in.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("host key of {host} changed: pinned {pinned}, presented {presented}; refusing to connect (if the host was reinstalled, re-pin it deliberately)")]
    HostKeyMismatch { host: String, pinned: String, presented: String },
    #[error("authentication as {host} failed: {reason} (is the right key authorized on the host?)")]
    Auth { host: String, reason: String },
    #[error("`{cmd}` on {host} timed out after {after:?}")]
    Timeout { host: String, cmd: String, after: Duration },
    #[error("`{cmd}` on {host} exited with status {status}: {}", tail(.stderr, .stdout))]
    Exit { host: String, cmd: String, status: i32, stdout: String, stderr: String },
    #[error("`{cmd}` on {host} failed mid-way: {reason}")]
    Session { host: String, cmd: String, reason: String },
    /// The host answered, but not in the shape its program promises.
    #[error("`{cmd}` on {host} printed what cannot be read ({reason}): {printed}")]
    Unreadable { host: String, cmd: String, reason: String, printed: String },
    /// A command could not be built (a parameter held a NUL byte).
    #[error(transparent)]
    Command(#[from] super::cmd::CmdError),
    /// A label's mistake, caught in debug and test builds: it called a host
    /// while holding the database (see `skein_engine::remote`).
    #[error(transparent)]
    HeldDatabase(#[from] skein_engine::remote::HeldDatabase),
}

impl SshError {
    /// Worth retrying after a while (the host may come back); a key mismatch
    /// or a command's own failure is not fixed by retrying the connection.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SshError::Connect { .. } | SshError::Timeout { .. } | SshError::Session { .. })
    }
}

fn tail(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() { stdout } else { stderr };
    let text = text.trim();
    let start = text.len().saturating_sub(400);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    if text.is_empty() {
        "(no output)".into()
    } else {
        text[start..].to_string()
    }
}

/// `"ssh-ed25519 AAAA..."` from a host key blob in SSH wire format.
fn openssh_line(blob: &[u8]) -> String {
    match ssh_key::PublicKey::from_bytes(blob).and_then(|k| k.to_openssh()) {
        Ok(line) => line.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
        Err(_) => format!("unparsed:{}", hex::encode(blob)),
    }
}

/// The first two fields of a public key line (type and key), without the comment.
pub fn key_identity(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

type Slot = Arc<Mutex<Option<ssh2::Session>>>;

/// One process's SSH sessions, by host. Hand it to a runner as a resource.
#[derive(Default, Clone)]
pub struct SshPool {
    sessions: Arc<Mutex<HashMap<String, Slot>>>,
}

impl SshPool {
    pub fn new() -> SshPool {
        SshPool::default()
    }

    fn slot(&self, t: &Target) -> Slot {
        // A new key or pin means a new session: never reuse one made under other terms.
        let key = format!("{}|{}|{}", t.name(), t.host_key.as_deref().unwrap_or(""), hex::encode(sha256(t.private_key.as_bytes())));
        self.sessions.lock().unwrap().entry(key).or_default().clone()
    }

    /// The host key `host:port` presents (no authentication): for pinning on first contact.
    pub async fn host_key(&self, host: &str, port: u16, timeout: Duration) -> Result<String, SshError> {
        let (host, name) = (host.to_string(), format!("{host}:{port}"));
        skein_engine::remote::check(|| format!("ssh {name} host-key"))?;
        let (started, label) = (Instant::now(), name.clone());
        let result = blocking(move || {
            let session = handshake(&host, port, &name, timeout)?;
            let (blob, _) = session.host_key().ok_or_else(|| SshError::Connect { host: name, reason: "no host key presented".into() })?;
            Ok(openssh_line(blob))
        })
        .await;
        metrics::observe(&label, started, &result);
        result
    }

    /// Run `cmd` with `stdin`, within `timeout`. A non-zero exit is an error
    /// ([`SshError::Exit`]) carrying what the command printed.
    pub async fn exec(&self, t: &Target, cmd: &Cmd, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output, SshError> {
        Shell::exec(self, t, cmd, stdin, timeout).await
    }

    /// Run `cmd` and return its output whatever its exit status.
    pub async fn run(&self, t: &Target, cmd: &Cmd, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output, SshError> {
        skein_engine::remote::check(|| format!("ssh {} `{}`", t.name(), cmd.shown()))?;
        let (started, label) = (Instant::now(), t.label());
        let (slot, t, cmd) = (self.slot(t), t.clone(), cmd.clone());
        let result = blocking(move || {
            let deadline = Instant::now() + timeout;
            let mut guard = slot.lock().unwrap();
            let reused = guard.is_some();
            if guard.is_none() {
                *guard = Some(connect(&t, timeout)?);
            }
            let mut channel = guard.as_ref().expect("connected").channel_session();
            if channel.is_err() && reused {
                // A kept session can go stale (the host's sshd restarted). Nothing
                // was sent yet, so a fresh connection may safely try again.
                *guard = None;
                *guard = Some(connect(&t, deadline.saturating_duration_since(Instant::now()))?);
                channel = guard.as_ref().expect("connected").channel_session();
            }
            let session = guard.as_ref().expect("connected");
            let result = match channel {
                Ok(channel) => exec_on(session, channel, &t, &cmd, stdin.as_deref(), deadline, timeout),
                Err(e) => Err(SshError::Session { host: t.name(), cmd: cmd.shown().to_string(), reason: e.to_string() }),
            };
            if result.is_err() {
                // The session may be in any state: start over next time.
                *guard = None;
            }
            result
        })
        .await;
        metrics::observe(&label, started, &result);
        result
    }
}

#[async_trait::async_trait]
impl Shell for SshPool {
    async fn host_key(&self, host: &str, port: u16, timeout: Duration) -> Result<String, SshError> {
        SshPool::host_key(self, host, port, timeout).await
    }

    async fn run(&self, t: &Target, cmd: &Cmd, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Output, SshError> {
        SshPool::run(self, t, cmd, stdin, timeout).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, SshError> + Send + 'static) -> Result<T, SshError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SshError::Connect { host: "?".into(), reason: format!("ssh task failed: {e}") }))
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

fn handshake(host: &str, port: u16, name: &str, timeout: Duration) -> Result<ssh2::Session, SshError> {
    let connect_err = |reason: String| SshError::Connect { host: name.to_string(), reason };
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| connect_err("no address".into()))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| connect_err(e.to_string()))?;
    let mut session = ssh2::Session::new().map_err(|e| connect_err(e.to_string()))?;
    session.set_tcp_stream(tcp);
    session.set_timeout(millis(timeout));
    session.handshake().map_err(|e| connect_err(format!("SSH handshake: {e}")))?;
    Ok(session)
}

fn connect(t: &Target, timeout: Duration) -> Result<ssh2::Session, SshError> {
    let name = t.name();
    let session = handshake(&t.host, t.port, &name, timeout)?;
    let (blob, _) = session.host_key().ok_or_else(|| SshError::Connect { host: name.clone(), reason: "no host key presented".into() })?;
    let presented = openssh_line(blob);
    if let Some(pinned) = &t.host_key {
        if key_identity(pinned) != presented {
            return Err(SshError::HostKeyMismatch { host: name, pinned: key_identity(pinned), presented });
        }
    }
    session
        .userauth_pubkey_memory(&t.user, None, &t.private_key, None)
        .map_err(|e| SshError::Auth { host: name.clone(), reason: e.message().to_string() })?;
    if !session.authenticated() {
        return Err(SshError::Auth { host: name, reason: "not authenticated".into() });
    }
    Ok(session)
}

/// ssh2 sends commands as UTF-8 text. A line holding other bytes (a hostile
/// file name, say) travels base64-encoded and is decoded by the remote shell.
fn wire_command(cmd: &Cmd) -> String {
    match std::str::from_utf8(cmd.as_bytes()) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let b64 = base64_encode(cmd.as_bytes());
            format!("sh -c \"$(printf %s {b64} | base64 -d)\"")
        }
    }
}

/// Standard base64 with padding (what coreutils' `base64 -d` reads).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn exec_on(
    session: &ssh2::Session,
    mut channel: ssh2::Channel,
    t: &Target,
    cmd: &Cmd,
    stdin: Option<&[u8]>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Output, SshError> {
    let host = t.name();
    let shown = cmd.shown().to_string();
    let left = || deadline.saturating_duration_since(Instant::now());
    let fail = |e: &dyn std::fmt::Display| {
        if left().is_zero() || e.to_string().to_lowercase().contains("timed out") {
            SshError::Timeout { host: host.clone(), cmd: shown.clone(), after: timeout }
        } else {
            SshError::Session { host: host.clone(), cmd: shown.clone(), reason: e.to_string() }
        }
    };
    session.set_timeout(millis(left()));
    channel.exec(&wire_command(cmd)).map_err(|e| fail(&e))?;
    if let Some(input) = stdin {
        channel.write_all(input).map_err(|e| fail(&e))?;
    }
    channel.send_eof().map_err(|e| fail(&e))?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut buf = [0u8; 32 * 1024];
    loop {
        session.set_timeout(millis(left()));
        match channel.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stdout.extend_from_slice(&buf[..n]),
            Err(e) => return Err(fail(&e)),
        }
        if left().is_zero() {
            return Err(fail(&"deadline passed"));
        }
    }
    session.set_timeout(millis(left()));
    channel.stderr().read_to_end(&mut stderr).map_err(|e| fail(&e))?;
    channel.wait_close().map_err(|e| fail(&e))?;
    let status = channel.exit_status().map_err(|e| fail(&e))?;
    Ok(Output { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_coreutils_tool() {
        for input in [&b""[..], b"a", b"ab", b"abc", b"\xff\xfe'\n;x"] {
            let mut child = std::process::Command::new("base64")
                .arg("-w0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(base64_encode(input), String::from_utf8(out.stdout).unwrap());
        }
    }

    #[test]
    fn errors_name_host_and_command_and_show_the_output_tail() {
        let e = SshError::Exit { host: "root@h:22".into(), cmd: "'x'".into(), status: 3, stdout: "".into(), stderr: "boom\n".into() };
        assert_eq!(e.to_string(), "`'x'` on root@h:22 exited with status 3: boom");
    }
}
