//! The operator's language, one grammar for three doors: the console's
//! prompt (`strand show vm1...`), its one-shot form (`skein console -c
//! '...'`) and the plain CLI (`skein strand show vm1...`). clap gives every
//! command its `--help` and every mistake its message.

use skein_models::inspect::{StrandSort, StrandState};

pub use crate::cmd::host::HostCmd;
pub use crate::cmd::vm::VmCmd;

#[derive(clap::Subcommand, Debug)]
pub enum Ops {
    /// Strands: list, count, show, steer.
    #[command(subcommand)]
    Strand(StrandCmd),
    /// Pages: problems waiting for an operator.
    #[command(subcommand)]
    Page(PageCmd),
    /// Hosts that run VMs.
    #[command(subcommand)]
    Host(HostCmd),
    /// VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Private subnets: show one (its VMs, hosts, tunnels, last rekey), rekey its tunnels.
    #[command(subcommand)]
    Subnet(crate::cmd::subnet::SubnetCmd),
    /// Decode a UBID (its type and time) and look up what it names.
    Ubid {
        /// A UBID (26 characters) or a uuid.
        id: String,
    },
    /// Live worker processes (respirate, skein up) and the claims each holds.
    Workers,
    /// What operators changed by hand, newest first.
    Audit {
        /// Only changes to this strand or page.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum StrandCmd {
    /// List strands (soonest due first), filtered and paged.
    List(ListArgs),
    /// How many strands each prog and label has, by state.
    Counts,
    /// Everything about one strand: schedule, lease, error, stack, semaphores, family.
    Show {
        /// The strand's id (a VM's or host's strand has the VM's or host's id).
        id: String,
    },
    /// Set a semaphore on a strand, and wake it.
    Incr { id: String, semaphore: String },
    /// Take back one increment of a semaphore.
    Decr { id: String, semaphore: String },
    /// Make a strand due now.
    Wake { id: String },
    /// Move a strand's schedule: `+10m`, `90s`, `2h` from now, or an RFC 3339 time.
    Reschedule {
        id: String,
        #[arg(allow_hyphen_values = true)]
        when: String,
    },
    /// Run one step of a strand here and now, and show the flow it returned.
    Step { id: String },
    /// Run a failing strand again now instead of at its backoff.
    Retry { id: String },
    /// Destroy a strand's subject: set its `destroy` semaphore.
    Destroy { id: String },
}

#[derive(clap::Args, Debug, Default)]
pub struct ListArgs {
    /// Only this prog (e.g. Vm::Nexus).
    #[arg(long)]
    pub prog: Option<String>,
    /// Only strands at this label.
    #[arg(long)]
    pub label: Option<String>,
    /// due, napping, leased, failing or exited (exited: from the archive too, latest exit first).
    #[arg(long)]
    pub state: Option<StrandState>,
    /// With --state exited: only those that exited since this time (`2h` ago, or RFC 3339).
    #[arg(long, value_parser = parse_past)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// With --state exited: only those that exited before this time (`2h` ago, or RFC 3339).
    #[arg(long, value_parser = parse_past)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// With --state exited: only those whose exit value contains this text (case-insensitive).
    #[arg(long)]
    pub exitval: Option<String>,
    /// Only strands that failed at least this many times in a row.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub min_try: Option<i32>,
    /// Only children of this strand.
    #[arg(long)]
    pub parent: Option<String>,
    /// Only strands created at least this long ago (`90s`, `10m`, `2h`, `1d`).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<f64>,
    /// schedule, created or try.
    #[arg(long, default_value = "schedule")]
    pub sort: StrandSort,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,
    /// Which page of results, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub page: i64,
}

#[derive(clap::Subcommand, Debug)]
pub enum PageCmd {
    /// Open pages, newest first (with --all, also those resolved this week).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One page with its details.
    Show { id: String },
    /// Mark a page resolved.
    Resolve { id: String },
    /// Where new and resolved pages are forwarded: show it, or set or clear it.
    Hook {
        /// POST each change as JSON to this http:// URL.
        #[arg(long, conflicts_with_all = ["command", "clear"])]
        url: Option<String>,
        /// Run this shell command with each change as JSON on stdin (e.g. `curl` for https).
        #[arg(long, conflicts_with = "clear")]
        command: Option<String>,
        /// Stop forwarding.
        #[arg(long)]
        clear: bool,
    },
}

/// A time in the past: `2h` (that long ago) or an RFC 3339 time.
pub fn parse_past(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let secs = parse_duration(s)
        .map_err(|_| format!("{s:?} is not a time: give how long ago (90s, 10m, 2h, 1d) or an RFC 3339 time (2026-11-22T10:00:00Z)"))?;
    Ok(chrono::Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64))
}

/// Seconds from `90`, `90s`, `10m`, `2h`, `1d` (a leading `+` is allowed).
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_start_matches('+');
    let (num, unit) = t.split_at(t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len()));
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration: use e.g. 90s, 10m, 2h, 1d"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}: use s, m, h or d")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert_eq!(parse_duration("+10m").unwrap(), 600.0);
        assert_eq!(parse_duration("2h").unwrap(), 7200.0);
        assert_eq!(parse_duration("1.5d").unwrap(), 129_600.0);
        assert!(parse_duration("10 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("99999999d").unwrap_err().contains("too long"));
    }
}
