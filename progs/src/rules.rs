//! What a VM or host may be asked to be, checked before the database: the
//! CLI and the API share these, so both refuse the same input with the same
//! words. The schema's CHECKs stay the last word; [`refusal`] turns the
//! constraint violations that still get through into the same kind of answer.

use crate::host::NewHost;
use crate::vm::Spec;

/// A field's value breaks a rule: `"{field} {rule}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub rule: String,
}

impl Invalid {
    pub fn new(field: &'static str, rule: impl Into<String>) -> Invalid {
        Invalid { field, rule: rule.into() }
    }

    /// As the API says it: `cores must be between 1 and 64`.
    pub fn message(&self) -> String {
        format!("{} {}", self.field, self.rule)
    }

    /// As the CLI says it, naming the flag: `--root-dir must be an absolute path`.
    pub fn cli_message(&self) -> String {
        let flag = match self.field {
            "bootstrap_private_key" => "key-file".to_string(),
            f => f.replace('_', "-"),
        };
        format!("--{flag} {}", self.rule)
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

pub const VM_CORES: (i64, i64) = (1, 64);
pub const VM_MEMORY_MIB: (i64, i64) = (64, 262_144);
pub const VM_DISK_MIB: (i64, i64) = (16, 1_048_576);
pub const PUBLIC_KEY_MAX: usize = 8192;
pub const PRIVATE_KEY_MAX: usize = 16384;
pub const KEY_TYPES: [&str; 3] = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"];

/// A VM or project name: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn vm_name(field: &'static str, name: &str) -> Result<(), Invalid> {
    label(field, name, "-")
}

/// A host name: `^[a-z0-9][a-z0-9.-]{0,62}$`.
pub fn host_name(name: &str) -> Result<(), Invalid> {
    label("name", name, ".-")
}

fn label(field: &'static str, name: &str, extra: &str) -> Result<(), Invalid> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.as_bytes().contains(&c));
    let extras = if extra.contains('.') { "digits, dots and dashes" } else { "digits and dashes" };
    ok.then_some(()).ok_or_else(|| Invalid::new(field, format!("must be 1-63 lowercase letters, {extras}, starting with a letter or digit")))
}

pub fn in_range(field: &'static str, value: i64, (lo, hi): (i64, i64)) -> Result<(), Invalid> {
    (lo..=hi).contains(&value).then_some(()).ok_or_else(|| Invalid::new(field, format!("must be between {lo} and {hi}")))
}

/// An OpenSSH public key line: `<type> <base64> [comment]`, one line.
pub fn public_key(key: &str) -> Result<(), Invalid> {
    let bad = |rule: &str| Err(Invalid::new("public_key", rule));
    if key.len() > PUBLIC_KEY_MAX {
        return bad(&format!("must be at most {PUBLIC_KEY_MAX} bytes"));
    }
    if key.chars().any(char::is_control) {
        return bad("must be one line without control characters");
    }
    let mut parts = key.splitn(3, ' ');
    let (kind, data) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !KEY_TYPES.contains(&kind) {
        return bad(&format!("must start with one of {}", KEY_TYPES.join(", ")));
    }
    if data.is_empty() || !data.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
        return bad("must be `<type> <base64 key> [comment]`");
    }
    Ok(())
}

/// Everything about a VM spec that can be checked without the database.
pub fn vm_spec(spec: &Spec<'_>) -> Result<(), Invalid> {
    vm_name("name", spec.name)?;
    in_range("cores", spec.cores.into(), VM_CORES)?;
    in_range("memory_mib", spec.memory_mib.into(), VM_MEMORY_MIB)?;
    in_range("disk_mib", spec.disk_mib.into(), VM_DISK_MIB)?;
    public_key(spec.public_key)
}

/// Everything about a new host that can be checked without the database.
pub fn new_host(new: &NewHost<'_>) -> Result<(), Invalid> {
    host_name(new.name)?;
    let a = new.address;
    if a.is_empty() || a.len() > 253 || !a.bytes().all(|c| c.is_ascii_alphanumeric() || b".:-".contains(&c)) || a.starts_with('-') {
        return Err(Invalid::new("address", "must be an IP address or DNS name"));
    }
    if new.port == 0 {
        return Err(Invalid::new("port", "must be between 1 and 65535"));
    }
    let u = new.user.as_bytes();
    let user_ok = (1..=32).contains(&u.len())
        && (u[0].is_ascii_lowercase() || u[0] == b'_')
        && u.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !user_ok {
        return Err(Invalid::new("user", "must be a plain unix user name"));
    }
    let r = new.root_dir;
    if !r.starts_with('/') {
        return Err(Invalid::new("root_dir", "must be an absolute path"));
    }
    if r.len() > 255 || r.chars().any(char::is_control) || r.split('/').any(|p| p == "..") {
        return Err(Invalid::new("root_dir", "must be a plain absolute path of at most 255 bytes"));
    }
    let k = new.bootstrap_private_key;
    if k.len() > PRIVATE_KEY_MAX || !k.contains("-----BEGIN ") || !k.contains("PRIVATE KEY-----") {
        return Err(Invalid::new("bootstrap_private_key", "must be a PEM or OpenSSH private key"));
    }
    Ok(())
}

/// Why the database refused a write, as the client should hear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Something with that name (or key) exists already.
    Conflict(String),
    Invalid(Invalid),
}

impl Refusal {
    /// As the CLI says it.
    pub fn cli_message(&self) -> String {
        match self {
            Refusal::Conflict(why) => why.clone(),
            Refusal::Invalid(i) => i.cli_message(),
        }
    }
}

/// For the CLI: an error that is a refusal becomes what the user should
/// change; any other error is returned as it was.
pub fn explain(error: anyhow::Error) -> anyhow::Error {
    match refusal(&format!("{error:#}")) {
        Some(r) => anyhow::anyhow!(r.cli_message()),
        None => error,
    }
}

/// A constraint violation named in `error` (any error whose text carries
/// the constraint's name), as a refusal; None for anything else.
pub fn refusal(error: &str) -> Option<Refusal> {
    let invalid = |field, rule: &str| Some(Refusal::Invalid(Invalid::new(field, rule)));
    if error.contains("vm_host_name_key") {
        Some(Refusal::Conflict("a host with that name exists already".into()))
    } else if error.contains("vm_project_id_name_key") {
        Some(Refusal::Conflict("a VM with that name exists in this project already".into()))
    } else if error.contains("project_name_key") {
        Some(Refusal::Conflict("a project with that name exists already".into()))
    } else if error.contains("vm_host_name_check") {
        Some(Refusal::Invalid(host_name("").unwrap_err()))
    } else if error.contains("sshable_unix_user_check") {
        invalid("user", "must be a plain unix user name")
    } else if error.contains("vm_host_root_dir_check") {
        invalid("root_dir", "must be an absolute path")
    } else if error.contains("vm_name_check") || error.contains("project_name_check") {
        Some(Refusal::Invalid(vm_name("name", "").unwrap_err()))
    } else if error.contains("vm_public_key_check") {
        invalid("public_key", "must be `<type> <base64 key> [comment]`")
    } else {
        ["cores", "memory_mib", "disk_mib"]
            .into_iter()
            .find(|f| error.contains(&format!("vm_{f}_check")))
            .and_then(|f| invalid(f, "is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_schema() {
        assert!(vm_name("name", "web-1").is_ok());
        assert!(vm_name("name", &"a".repeat(63)).is_ok());
        for bad in ["", "-a", "A", "a.b", "a b", &"a".repeat(64), "é"] {
            assert!(vm_name("name", bad).is_err(), "{bad:?}");
        }
        assert!(host_name("h1.example").is_ok());
        assert!(host_name(".h").is_err());
    }

    #[test]
    fn public_keys_are_one_line_of_a_known_type() {
        assert!(public_key("ssh-ed25519 AAAAC3Nza+/= me@host").is_ok());
        assert!(public_key("ssh-ed25519 AAAA").is_ok());
        for bad in ["", "ssh-ed25519", "ssh-ed25519 ", "ssh-dss AAAA", "ssh-ed25519 AA AA\nssh-rsa BBBB", "ssh-ed25519 AA!"] {
            assert!(public_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn constraint_names_become_refusals() {
        let e = "error returned from database: duplicate key value violates unique constraint \"vm_project_id_name_key\"";
        assert!(matches!(refusal(e), Some(Refusal::Conflict(_))));
        assert_eq!(refusal("violates check constraint \"vm_cores_check\"").map(|r| matches!(r, Refusal::Invalid(i) if i.field == "cores")), Some(true));
        assert_eq!(refusal("connection reset"), None);
    }
}
