//! Prometheus metrics of a skein process (`respirate`, `skein up`, `skein
//! api` with `--metrics-addr`): what its steps, its API and its database
//! pool do, and what the database says (due strands, lag, open pages).
//! The README lists every series with example alert rules; the engine adds
//! its own (`skein_steps_total`, `skein_steps_failed_total`,
//! `skein_lease_takeovers_total`), and the SSH client its calls by host
//! (`skein_progs::ssh::metrics`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use skein_engine::{Outcome, StepReport};
use skein_models::{inspect, page};
use sqlx::PgPool;

/// Seconds, from a millisecond to ten minutes: steps and requests alike.
const BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

/// Serve `/metrics` on `addr`, and sample the database every few seconds.
pub fn serve(addr: SocketAddr, pool: PgPool) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    tokio::spawn(sample(pool));
    Ok(())
}

/// Every step: its duration by prog and label and, if it failed, why.
pub fn record_step(r: &StepReport) {
    let (prog, label) = (r.prog.clone(), r.label.clone());
    metrics::histogram!("skein_step_duration_seconds", "prog" => prog.clone(), "label" => label.clone())
        .record(r.micros as f64 / 1e6);
    if let Outcome::Failed { error, .. } = &r.outcome {
        metrics::counter!("skein_step_failures_total", "prog" => prog, "label" => label, "kind" => failure_kind(error)).increment(1);
    }
}

/// A failure's kind, from the message the engine's `StepError` gives it
/// (the report carries only the text): a handful of values, so a series
/// per kind stays cheap.
fn failure_kind(error: &str) -> &'static str {
    const KINDS: [(&str, &str); 7] = [
        ("unknown prog", "unknown_prog"),
        ("unknown label", "unknown_label"),
        ("corrupt stack", "corrupt_stack"),
        ("the top frame does not fit", "bad_frame"),
        ("step abandoned after", "overran"),
        ("the lease was lost", "lease_lost"),
        ("database", "database"),
    ];
    KINDS.iter().find(|(prefix, _)| error.starts_with(prefix)).map(|(_, kind)| *kind).unwrap_or("label")
}

const SEVERITIES: [&str; 4] = ["info", "warning", "error", "critical"];

/// What only the database knows, and this process's pool, every 5 s.
async fn sample(pool: PgPool) {
    loop {
        let size = f64::from(pool.size());
        let idle = pool.num_idle() as f64;
        metrics::gauge!("skein_db_pool_connections", "state" => "in_use").set(size - idle);
        metrics::gauge!("skein_db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("skein_db_pool_connections", "state" => "waiting").set(skein_engine::pool::waiting() as f64);
        metrics::gauge!("skein_db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
        if let Ok((due, lag)) = inspect::due_and_lag(&pool).await {
            metrics::gauge!("skein_due_strands").set(due as f64);
            metrics::gauge!("skein_oldest_due_lag_seconds").set(lag);
        }
        if let Ok(open) = page::open_by_severity(&pool).await {
            for severity in SEVERITIES {
                let n = open.iter().find(|(s, _)| s == severity).map(|(_, n)| *n).unwrap_or(0);
                metrics::gauge!("skein_open_pages", "severity" => severity).set(n as f64);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failures_have_a_few_kinds() {
        assert_eq!(super::failure_kind("database: pool timed out"), "database");
        assert_eq!(super::failure_kind("step abandoned after its time budget of 60s"), "overran");
        assert_eq!(super::failure_kind("disk on fire"), "label");
    }
}
