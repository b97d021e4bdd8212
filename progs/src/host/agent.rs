//! The host agent bundle: the host-side programs in `progs/host-agent/bin`,
//! compiled into this binary, shipped to a host as one tar archive with a
//! manifest of SHA-256 digests. The version is the digest of the manifest,
//! so two builds with the same scripts agree on it, and an operator can see
//! which hosts run which version (`vm_host.agent_version`).

use sha2::{Digest, Sha256};

/// Every file of the agent, by path inside the bundle.
pub const FILES: &[(&str, &str)] = &[
    ("bin/daemonizer", include_str!("../../host-agent/bin/daemonizer")),
    ("bin/learn", include_str!("../../host-agent/bin/learn")),
    ("bin/boot-id", include_str!("../../host-agent/bin/boot-id")),
    ("bin/agent-version", include_str!("../../host-agent/bin/agent-version")),
    ("bin/build-guest-image", include_str!("../../host-agent/bin/build-guest-image")),
    ("bin/reboot-host", include_str!("../../host-agent/bin/reboot-host")),
    ("bin/vm-setup", include_str!("../../host-agent/bin/vm-setup")),
    ("bin/vm-run", include_str!("../../host-agent/bin/vm-run")),
    ("bin/vm-status", include_str!("../../host-agent/bin/vm-status")),
    ("bin/vm-remove", include_str!("../../host-agent/bin/vm-remove")),
    ("bin/vm-stop", include_str!("../../host-agent/bin/vm-stop")),
    ("bin/probe-kvm-guest", include_str!("../../host-agent/bin/probe-kvm-guest")),
    ("bin/net-apply", include_str!("../../host-agent/bin/net-apply")),
    ("bin/net-status", include_str!("../../host-agent/bin/net-status")),
];

/// `"<sha256>  <path>\n"` per file, as `sha256sum -c` reads it.
pub fn manifest() -> String {
    FILES.iter().map(|(path, body)| format!("{}  {path}\n", hex::encode(Sha256::digest(body.as_bytes())))).collect()
}

/// The bundle's version: the first 16 hex digits of the manifest's digest.
pub fn version() -> String {
    hex::encode(Sha256::digest(manifest().as_bytes()))[..16].to_string()
}

/// The tar archive: every file (executable), MANIFEST and VERSION.
pub fn archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, body: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, body).expect("writing to memory");
    };
    for (path, body) in FILES {
        add(path, body.as_bytes(), 0o755);
    }
    add("MANIFEST", manifest().as_bytes(), 0o644);
    add("VERSION", format!("{}\n", version()).as_bytes(), 0o644);
    tar.into_inner().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_holds_every_file_of_the_agent_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("host-agent/bin");
        let mut on_disk: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| format!("bin/{}", e.unwrap().file_name().to_string_lossy())).collect();
        on_disk.sort();
        let mut bundled: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        bundled.sort();
        assert_eq!(bundled, on_disk, "add new host-agent scripts to FILES");
    }

    #[test]
    fn the_archive_unpacks_and_its_manifest_checks() {
        let dir = std::env::temp_dir().join(format!("skein-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("tar")
            .args(["-x", "-C"])
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &archive()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let check = std::process::Command::new("sha256sum").args(["-c", "--quiet", "MANIFEST"]).current_dir(&dir).status().unwrap();
        assert!(check.success());
        assert_eq!(std::fs::read_to_string(dir.join("VERSION")).unwrap().trim(), version());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
