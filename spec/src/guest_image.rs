//! The guest boot image for tests, built once per machine and reused.
//!
//! `build-guest-image` takes minutes on a fresh machine (it downloads
//! Debian's kernel and packages). Tests that only need a host with an image
//! get one built into `target/guest-image-cache` (the builder is idempotent,
//! and concurrent test processes are serialized by `flock`) and copied into
//! the test host's root, where the host's own build then finds it complete.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The SKEIN_ROOT the cached image is built under. Keyed by the agent
/// bundle's version, which hashes build-guest-image: changing the builder
/// builds a new cache instead of reusing a stale one.
pub fn cache_root() -> PathBuf {
    let root = workspace().join("target/guest-image-cache").join(skein_progs::host::agent::version());
    std::fs::create_dir_all(&root).expect("create the guest image cache");
    root
}

/// The directory holding a complete image (`vmlinuz`, `initrd.img`, `base.qcow2`, `VERSION`).
pub fn cached() -> PathBuf {
    let root = cache_root();
    let image = root.join("images/guest");
    if image.join("VERSION").exists() {
        return image;
    }
    let script = workspace().join("progs/host-agent/bin/build-guest-image");
    let out = Command::new("flock")
        .arg(root.join(".lock"))
        .arg("bash")
        .arg(&script)
        .env("SKEIN_ROOT", &root)
        .output()
        .expect("run build-guest-image");
    assert!(
        out.status.success() && image.join("VERSION").exists(),
        "build-guest-image failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Put the cached image where a host with agent root `root` keeps its image.
pub fn seed(root: &Path) {
    let from = cached();
    let to = root.join("images/guest");
    std::fs::create_dir_all(&to).expect("image dir");
    for entry in std::fs::read_dir(&from).expect("read cache") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy image file");
    }
}
