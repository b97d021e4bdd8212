//! Reaching guests and test hosts with the `ssh` client, as a VM's owner
//! would: a private key in a file of its own, and the client told to trust
//! whatever host key it meets (test hosts and guests are made fresh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A private key in a file (mode 0600) for `ssh -i`, removed when dropped.
pub struct KeyFile(pub PathBuf);

impl KeyFile {
    /// `tag` keeps the files of tests in one process apart.
    pub fn new(tag: &str, private: &str) -> KeyFile {
        let path = std::env::temp_dir().join(format!("skein-key-{tag}-{}", std::process::id()));
        std::fs::write(&path, private).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        KeyFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ssh` with `key` on `port`, no config, no prompts, no known hosts, and
/// stdin closed (set another before spawning to feed it).
pub fn ssh_base(key: &Path, port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-i"]).arg(key).args(["-p", &port.to_string()]);
    c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]);
    c.args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]);
    c.stdin(Stdio::null());
    c
}

/// Bytes as text, lossily (what a command printed).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
