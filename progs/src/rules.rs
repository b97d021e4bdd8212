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
pub const KEY_TYPES: [&str; 5] = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"];
pub const RSA_MIN_BITS: usize = 2048;
pub const HOST_CHECKUP_SECS: (i64, i64) = (1, 86_400);
pub const HOST_PORT: (i64, i64) = (1, 65_535);
/// A private subnet's prefix length: from 65,536 addresses down to 8.
pub const SUBNET_PREFIX: (u8, u8) = (16, 29);
/// The ranges a private subnet may use (RFC 1918).
pub const PRIVATE_RANGES: [([u8; 4], u8); 3] = [([10, 0, 0, 0], 8), ([172, 16, 0, 0], 12), ([192, 168, 0, 0], 16)];

/// A VM or project name: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn vm_name(field: &'static str, name: &str) -> Result<(), Invalid> {
    label(field, name, "-")
}

/// A host name: `^[a-z0-9][a-z0-9.-]{0,62}$`.
pub fn host_name(name: &str) -> Result<(), Invalid> {
    label("name", name, ".-")
}

/// An API token's name: `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn token_name(name: &str) -> Result<(), Invalid> {
    label("name", name, "._-")
}

fn label(field: &'static str, name: &str, extra: &str) -> Result<(), Invalid> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.as_bytes().contains(&c));
    let extras = match extra {
        "-" => "digits and dashes",
        ".-" => "digits, dots and dashes",
        _ => "digits, dots, dashes and underscores",
    };
    ok.then_some(()).ok_or_else(|| Invalid::new(field, format!("must be 1-63 lowercase letters, {extras}, starting with a letter or digit")))
}

pub fn in_range(field: &'static str, value: i64, (lo, hi): (i64, i64)) -> Result<(), Invalid> {
    (lo..=hi).contains(&value).then_some(()).ok_or_else(|| Invalid::new(field, format!("must be between {lo} and {hi}")))
}

/// An OpenSSH public key line, `<type> <base64 key> [comment]`, parsed for
/// real: the key inside must be a whole key of the type named (ed25519,
/// ECDSA on a NIST curve, or RSA of at least 2048 bits). A key nobody
/// holds the private half of makes a VM nobody can log into.
pub fn public_key(key: &str) -> Result<(), Invalid> {
    let bad = |rule: String| Err(Invalid::new("public_key", rule));
    if key.len() > PUBLIC_KEY_MAX {
        return bad(format!("must be at most {PUBLIC_KEY_MAX} bytes"));
    }
    if key.chars().any(char::is_control) {
        return bad("must be one line without control characters".into());
    }
    let mut parts = key.splitn(3, ' ');
    let (kind, data) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !KEY_TYPES.contains(&kind) {
        return bad(format!("must start with one of {}", KEY_TYPES.join(", ")));
    }
    if data.is_empty() || !data.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
        return bad("must be `<type> <base64 key> [comment]`".into());
    }
    let parsed = match ssh_key::PublicKey::from_openssh(key) {
        Ok(k) => k,
        Err(e) => return bad(format!("is not a valid {kind} key: its base64 part does not hold one ({e})")),
    };
    if parsed.algorithm().as_str() != kind {
        return bad(format!("says {kind} but holds a {} key", parsed.algorithm().as_str()));
    }
    if let ssh_key::public::KeyData::Rsa(rsa) = parsed.key_data() {
        let bits = rsa.n.as_positive_bytes().map(bit_length).unwrap_or(0);
        if bits < RSA_MIN_BITS {
            return bad(format!("is a {bits}-bit RSA key; RSA keys must have at least {RSA_MIN_BITS} bits"));
        }
    }
    Ok(())
}

/// Bits of a big-endian unsigned number.
fn bit_length(bytes: &[u8]) -> usize {
    let bytes = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
    bytes.first().map_or(0, |b| bytes.len() * 8 - b.leading_zeros() as usize)
}

/// Where a host answers: an IP address, or a DNS name. Dotted numbers that
/// are not an IPv4 address (`256.1.1.1`) are neither, and are refused here
/// rather than sent to a resolver.
pub fn host_address(a: &str) -> Result<(), Invalid> {
    let bad = |rule: &str| Err(Invalid::new("address", rule));
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        if ip.is_unspecified() || ip.is_multicast() {
            return bad("must be a host's address, not an unspecified or multicast one");
        }
        return Ok(());
    }
    let labels: Vec<&str> = a.split('.').collect();
    if labels.iter().all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit())) {
        return bad("is not an IPv4 address: it has four numbers, each 0-255");
    }
    let name_ok = a.len() <= 253
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !labels.last().is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()));
    if !name_ok {
        return bad("must be an IP address or a DNS name (letters, digits, dashes and dots)");
    }
    Ok(())
}

/// The directory on a host under which skein keeps everything. It is put
/// into host-side commands (quoted) and removed when the host is
/// destroyed, so it must be a plain path and never the root itself.
/// A host's underlay address: where its private-network tunnels listen
/// for the other hosts (a dotted IPv4 address, as the database keeps it).
pub fn underlay(u: &str) -> Result<(), Invalid> {
    match u.parse::<std::net::Ipv4Addr>() {
        Ok(a) if a.to_string() == u && !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => Ok(()),
        _ => Err(Invalid::new("underlay", "must be the host's IPv4 address that other hosts reach it at, e.g. 10.0.0.7")),
    }
}

pub fn root_dir(r: &str) -> Result<(), Invalid> {
    let bad = |rule: &str| Err(Invalid::new("root_dir", rule));
    if !r.starts_with('/') {
        return bad("must be an absolute path");
    }
    if r.len() > 255 || !r.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c)) {
        return bad("must be a plain absolute path of at most 255 bytes: letters, digits and . _ - / only (no spaces, quotes or shell characters)");
    }
    let parts: Vec<&str> = r.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return bad("must not be / itself: skein removes its directory when the host goes; use e.g. /var/lib/skein");
    }
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return bad("must not contain . or .. components");
    }
    Ok(())
}

/// A private subnet's range: `a.b.c.d/len`, IPv4, inside 10/8, 172.16/12
/// or 192.168/16, a prefix length in [`SUBNET_PREFIX`], and the network
/// address itself (`10.0.0.5/24` is refused, naming `10.0.0.0/24`).
pub fn cidr(c: &str) -> Result<(), Invalid> {
    let bad = |rule: String| Err(Invalid::new("cidr", rule));
    let (lo, hi) = SUBNET_PREFIX;
    let Some((addr, len)) = c.split_once('/') else {
        return bad(format!("must be an IPv4 range such as 10.0.0.0/24 (address/prefix length), not {c:?}"));
    };
    let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() else {
        return bad(format!("must be an IPv4 range such as 10.0.0.0/24; {addr:?} is not an IPv4 address"));
    };
    let len = match len.parse::<u8>() {
        Ok(l) if len.bytes().all(|b| b.is_ascii_digit()) && (lo..=hi).contains(&l) => l,
        _ => return bad(format!("must have a prefix length between /{lo} and /{hi}, not /{len}")),
    };
    let bits = u32::from(ip);
    let mask = |l: u8| u32::MAX << (32 - l);
    let private = PRIVATE_RANGES.iter().any(|&(net, l)| bits & mask(l) == u32::from_be_bytes(net));
    if !private {
        return bad("must be inside a private range: 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16".into());
    }
    let network = std::net::Ipv4Addr::from(bits & mask(len));
    if network != ip {
        return bad(format!("must start at its network address: {network}/{len}, not {c}"));
    }
    Ok(())
}

/// Everything about a VM spec that can be checked without the database.
pub fn vm_spec(spec: &Spec<'_>) -> Result<(), Invalid> {
    vm_name("name", spec.name)?;
    in_range("cores", spec.cores.into(), VM_CORES)?;
    in_range("memory_mib", spec.memory_mib.into(), VM_MEMORY_MIB)?;
    in_range("disk_mib", spec.disk_mib.into(), VM_DISK_MIB)?;
    if let Some(subnet) = spec.subnet {
        // A subnet's id (`ps...`) has the shape of a name too.
        vm_name("subnet", subnet).map_err(|_| Invalid::new("subnet", "must be a private subnet's id (ps...) or name"))?;
    }
    public_key(spec.public_key)
}

/// Everything about a new host that can be checked without the database.
pub fn new_host(new: &NewHost<'_>) -> Result<(), Invalid> {
    host_name(new.name)?;
    host_address(new.address)?;
    in_range("port", new.port.into(), HOST_PORT)?;
    let u = new.user.as_bytes();
    let user_ok = (1..=32).contains(&u.len())
        && (u[0].is_ascii_lowercase() || u[0] == b'_')
        && u.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !user_ok {
        return Err(Invalid::new("user", "must be a plain unix user name"));
    }
    root_dir(new.root_dir)?;
    let k = new.bootstrap_private_key;
    if k.len() > PRIVATE_KEY_MAX || !k.contains("-----BEGIN ") || !k.contains("PRIVATE KEY-----") {
        return Err(Invalid::new("bootstrap_private_key", "must be a PEM or OpenSSH private key"));
    }
    Ok(())
}

/// How often a host's strand checks on it.
pub fn host_checkup_secs(secs: i64) -> Result<(), Invalid> {
    in_range("checkup_secs", secs, HOST_CHECKUP_SECS)
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
    } else if error.contains("api_token_name_key") {
        Some(Refusal::Conflict("a live token with that name exists in this project already".into()))
    } else if error.contains("private_subnet_project_id_name_key") {
        Some(Refusal::Conflict("a subnet with that name exists in this project already".into()))
    } else if error.contains("project_name_key") {
        Some(Refusal::Conflict("a project with that name exists already".into()))
    } else if error.contains("vm_host_name_check") {
        Some(Refusal::Invalid(host_name("").unwrap_err()))
    } else if error.contains("sshable_unix_user_check") {
        invalid("user", "must be a plain unix user name")
    } else if error.contains("vm_host_root_dir_check") {
        invalid("root_dir", "must be an absolute path")
    } else if error.contains("vm_name_check") || error.contains("project_name_check") || error.contains("private_subnet_name_check") {
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

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEQVQjpXNjUotCw3Ik6gfF1BSfLKtrtKETqtFYlRQIFu t@x";
    const ECDSA_256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGSDdQLfddgjJf3sBu8aEnwsBsnRXIqFO4clD7Qi0xvrs9vURIunfz/RDaTklysq4jmr33wDrlpE/e3D4EYTnLI= t@x";
    const ECDSA_384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBPrHHi1RcWGA+EpdF8ik5dgxxVTPh1WJsDLxwxWFfLk3TBfmo4O5rpnjVWV798LwW/rpAfntq5B3u3O/uCEI4T8ptqvTIKyCMGXL/caBDYQ+XkslqEBkyNNt1bPd1FKjkQ== t@x";
    const ECDSA_521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBADIpRHHNYGQQApljyUCc9iayaVIF5/HDwZaJFWqbGlTV6Ed4sHZuUzsSVmxNCYv7Rp4Ei+DRUv6MAuDJAddiJ/G6gHYRu+szo1W8MZUw6uSWy+iO7+BzdWMi+pjWbwAZNEbmINSKbuW6qUbsr/x2Z9zG8xKELKaOrRvLTjr9jI2RJTmjA== t@x";
    const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCciyz9AZgbNOg2fIPZejKOb367HzbykkItfhiCxz5OiIx5msG6o195zcsE4D/Er5gLKWdUc+oQnSX3gZhn1+sptDz9Qq8NFkvYAh2lWM0SyMfpxTnhY75mFRWhfjM5ykPGMIfwhWFJ3PpSrT1DkaqEJfs1YavtijNwkCHBxbZTZofbFRd/VvJ1GRTVZvzWZqut063ymCnTpojPxKmosGyux9ynpouC+K0RzFkBFruKCuoAbfm2DunxO/CimQAf90oMWyr9msLsnU0wh0j0RBhzktpIdLuHFQjbo2ON3WFVHV11tS/SEglKaLdsHmSurR8da5niqVmLtvFUWhy81Waf t@x";
    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDV/JC+i6rvNxZMHj1S73iC3knBsujXbOY7FCQPDDB10e3Q0z/tHiHxAa3wBXmQ31pu9kqh2+ja3suMKZ9gDVlwvpIhjkuozvCFEq1l6eu3HKeRIhoy5TrZXYGWV3+4uHKYqcpFXsInfrM3J1v8CS4qdxOsfe/9l2XE8u0zTjZxbw== t@x";

    #[test]
    fn public_keys_are_parsed_for_real() {
        for good in [ED25519, ECDSA_256, ECDSA_384, ECDSA_521, RSA_2048, &ED25519.replace(" t@x", "")] {
            assert_eq!(public_key(good), Ok(()), "{good}");
        }
        let says = |key: &str| public_key(key).unwrap_err().message();
        assert!(says("ssh-ed25519 AAAA").contains("is not a valid ssh-ed25519 key"), "{}", says("ssh-ed25519 AAAA"));
        assert!(says("ssh-ed25519 ////").contains("is not a valid ssh-ed25519 key"));
        assert!(says(RSA_1024).contains("1024-bit RSA key; RSA keys must have at least 2048 bits"), "{}", says(RSA_1024));
        // The type named must be the type inside.
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(says(&swapped).starts_with("public_key is not a valid ssh-rsa key"), "{}", says(&swapped));
        for bad in ["", "ssh-ed25519", "ssh-ed25519 ", "ssh-dss AAAA", "ssh-ed25519 AA AA\nssh-rsa BBBB", "ssh-ed25519 AA!"] {
            assert!(public_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnet_ranges_are_private_aligned_ipv4() {
        for good in ["10.0.0.0/24", "10.9.0.0/16", "172.16.4.0/22", "172.31.255.248/29", "192.168.1.0/24"] {
            assert_eq!(cidr(good), Ok(()), "{good}");
        }
        let says = |c: &str| cidr(c).unwrap_err().message();
        assert!(says("10.0.0.5/24").contains("10.0.0.0/24"), "{}", says("10.0.0.5/24"));
        assert!(says("8.8.8.0/24").contains("private range"));
        assert!(says("172.32.0.0/16").contains("private range"));
        assert!(says("10.0.0.0/8").contains("between /16 and /29"));
        assert!(says("10.0.0.0/30").contains("between /16 and /29"));
        assert!(says("fd00::/64").contains("IPv4"));
        for bad in ["", "10.0.0.0", "10.0.0.0/", "10.0.0.0/+24", "10.0.0/24", "10.0.0.0/24 ", "256.0.0.0/24"] {
            assert!(cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_addresses_are_ips_or_dns_names() {
        for good in ["192.0.2.1", "10.0.0.1", "::1", "fe80::1", "host-1.example.com", "localhost"] {
            assert_eq!(host_address(good), Ok(()), "{good}");
        }
        assert!(host_address("256.1.1.1").unwrap_err().rule.contains("not an IPv4 address"));
        for bad in ["", "1.2.3", "0.0.0.0", "a..b", "-a.b", "a_b.c", "a b", "$(id)", "example.123", &"a".repeat(64)] {
            assert!(host_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_dirs_are_plain_paths_below_the_root() {
        for good in ["/var/lib/skein", "/tmp/skein-test_1.x"] {
            assert_eq!(root_dir(good), Ok(()), "{good}");
        }
        assert!(root_dir("/").unwrap_err().rule.contains("must not be / itself"));
        for bad in ["//", "relative", "/a/../b", "/a b", "/a'b", "/a\"b", "/$(id)", "/a;b", "/a`b`"] {
            assert!(root_dir(bad).is_err(), "{bad:?}");
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
