//! The tunnel program, `skein-tunnel` (progs/src/bin/skein-tunnel.rs): the
//! userspace WireGuard that carries private subnets between hosts. It ships
//! with the host agent (`Host::InstallAgent` uploads it to
//! `$ROOT/tunnel/skein-tunnel` and checks its SHA-256 there), but is not in
//! the agent's tar: it is a compiled binary built beside this one, and the
//! agent's version (a digest of its scripts) stays independent of it.

use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Where the binary to ship is: `$SKEIN_TUNNEL_BIN`, else beside the running
/// executable (cargo builds every binary of the workspace into one directory).
pub fn local_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SKEIN_TUNNEL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))?;
    // Test executables live one level down, in target/<profile>/deps.
    let beside = [dir.join("skein-tunnel"), dir.join("../skein-tunnel")];
    beside.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "skein-tunnel is not beside {}: build it (`cargo build -p skein-progs --bin skein-tunnel`) or set SKEIN_TUNNEL_BIN",
            exe.display()
        )
    })
}

/// The binary and the hex SHA-256 of it, read once per process.
pub fn local() -> anyhow::Result<&'static (Vec<u8>, String)> {
    static LOCAL: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    if let Some(found) = LOCAL.get() {
        return Ok(found);
    }
    let path = local_path()?;
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok(LOCAL.get_or_init(|| (bytes, digest)))
}
