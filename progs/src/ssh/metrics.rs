//! SSH metrics: how long calls to each host take and how they fail.
//! `host` is the target's `address:port` (not the user or key), so there
//! is one series per host, and `kind` is one of five values.

use std::time::Instant;

use super::client::SshError;

pub const DURATION: &str = "skein_ssh_call_duration_seconds";
pub const FAILURES: &str = "skein_ssh_call_failures_total";

/// What went wrong, in a word. A changed host key is refused during
/// authentication of the server, so it counts as `auth`; a call a label
/// made while holding the database never reached the host: `other`
/// (as does a command that could not be built, or an answer that could not be read).
pub fn kind(e: &SshError) -> &'static str {
    match e {
        SshError::Connect { .. } => "connect",
        SshError::Timeout { .. } => "timeout",
        SshError::Auth { .. } | SshError::HostKeyMismatch { .. } => "auth",
        SshError::Exit { .. } => "exit_status",
        SshError::Session { .. } | SshError::HeldDatabase(_) | SshError::Command(_) | SshError::Unreadable { .. } => "other",
    }
}

/// One call to `host` that began at `started`: its duration, whatever the outcome.
pub fn call(host: &str, started: Instant) {
    metrics::histogram!(DURATION, "host" => host.to_string()).record(started.elapsed().as_secs_f64());
}

/// One failed call to `host`.
pub fn failure(host: &str, e: &SshError) {
    metrics::counter!(FAILURES, "host" => host.to_string(), "kind" => kind(e)).increment(1);
}

/// Record a finished call and, if it failed, its failure.
pub fn observe<T>(host: &str, started: Instant, result: &Result<T, SshError>) {
    call(host, started);
    if let Err(e) = result {
        failure(host, e);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_error_has_one_of_five_kinds() {
        let host = || "root@h:22".to_string();
        let cases = [
            (SshError::Connect { host: host(), reason: "refused".into() }, "connect"),
            (SshError::Timeout { host: host(), cmd: "x".into(), after: Duration::from_secs(1) }, "timeout"),
            (SshError::Auth { host: host(), reason: "no".into() }, "auth"),
            (SshError::HostKeyMismatch { host: host(), pinned: "a".into(), presented: "b".into() }, "auth"),
            (SshError::Exit { host: host(), cmd: "x".into(), status: 1, stdout: "".into(), stderr: "".into() }, "exit_status"),
            (SshError::Session { host: host(), cmd: "x".into(), reason: "eof".into() }, "other"),
        ];
        for (e, want) in cases {
            assert_eq!(kind(&e), want, "{e}");
        }
    }
}
