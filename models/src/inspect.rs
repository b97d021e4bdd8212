//! Strands as operators see and steer them: filtered lists, counts, one
//! strand with its family, and the hand-made changes (wake, reschedule,
//! retry). The engine never calls these; the console and the API do.
//!
//! A strand's state is derived, never stored: `exited` (waiting for its
//! parent to reap it), `leased` (a worker holds it), `failing` (its last step
//! failed; it retries on a backoff), `due` (runs as soon as a worker is free),
//! `napping` (runs at its schedule or when woken).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

/// The SQL that derives a strand's state; the order of its cases is the
/// precedence (a leased strand that failed before is `leased`).
const STATE_SQL: &str = "CASE WHEN exitval IS NOT NULL THEN 'exited' \
                              WHEN lease > now() THEN 'leased' \
                              WHEN last_error IS NOT NULL THEN 'failing' \
                              WHEN schedule <= now() THEN 'due' \
                              ELSE 'napping' END";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrandState {
    Due,
    Napping,
    Leased,
    Failing,
    Exited,
}

impl StrandState {
    pub const ALL: [StrandState; 5] = [Self::Due, Self::Napping, Self::Leased, Self::Failing, Self::Exited];

    pub fn name(self) -> &'static str {
        match self {
            Self::Due => "due",
            Self::Napping => "napping",
            Self::Leased => "leased",
            Self::Failing => "failing",
            Self::Exited => "exited",
        }
    }

    /// The filter for this state. `failing` means "its last step failed",
    /// whatever else is true of it now.
    fn condition(self) -> &'static str {
        match self {
            Self::Exited => "exitval IS NOT NULL",
            Self::Leased => "exitval IS NULL AND lease > now()",
            Self::Failing => "exitval IS NULL AND last_error IS NOT NULL",
            Self::Due => "exitval IS NULL AND lease <= now() AND last_error IS NULL AND schedule <= now()",
            Self::Napping => "exitval IS NULL AND lease <= now() AND last_error IS NULL AND schedule > now()",
        }
    }
}

impl fmt::Display for StrandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StrandState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            format!("unknown state {s:?}: one of {}", Self::ALL.map(|s| s.name()).join(", "))
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StrandSort {
    /// Soonest due first.
    #[default]
    Schedule,
    /// Oldest first.
    Created,
    /// Most consecutive failures first.
    Try,
}

impl StrandSort {
    pub const NAMES: [&'static str; 3] = ["schedule", "created", "try"];

    fn order_by(self) -> &'static str {
        match self {
            Self::Schedule => "schedule, id",
            Self::Created => "created_at, id",
            Self::Try => "try DESC, schedule, id",
        }
    }
}

impl FromStr for StrandSort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "schedule" => Ok(Self::Schedule),
            "created" => Ok(Self::Created),
            "try" => Ok(Self::Try),
            _ => Err(format!("unknown sort {s:?}: one of {}", Self::NAMES.join(", "))),
        }
    }
}

/// Which strands to list. Every field narrows; the default lists them all.
#[derive(Clone, Debug, Default)]
pub struct StrandFilter {
    pub prog: Option<String>,
    pub label: Option<String>,
    pub state: Option<StrandState>,
    pub min_try: Option<i32>,
    pub parent: Option<Uuid>,
    /// Created at least this many seconds ago.
    pub older_than_secs: Option<f64>,
    pub sort: StrandSort,
    pub limit: i64,
    pub offset: i64,
}

/// A strand in a list: enough to choose which one to look at.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct StrandSummary {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub prog: String,
    pub label: String,
    pub state: String,
    pub schedule: DateTime<Utc>,
    pub lease_holder: Option<String>,
    #[sqlx(rename = "try")]
    #[serde(rename = "try")]
    pub try_: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn summary_columns() -> String {
    format!(
        "id, parent_id, prog, label, {STATE_SQL} AS state, schedule, \
         CASE WHEN lease > now() THEN lease_holder END AS lease_holder, try, last_error, created_at"
    )
}

fn push_filter(q: &mut QueryBuilder<'_, Postgres>, f: &StrandFilter) {
    q.push(" WHERE true");
    if let Some(prog) = &f.prog {
        q.push(" AND prog = ").push_bind(prog.clone());
    }
    if let Some(label) = &f.label {
        q.push(" AND label = ").push_bind(label.clone());
    }
    if let Some(state) = f.state {
        q.push(" AND ").push(state.condition());
    }
    if let Some(t) = f.min_try {
        q.push(" AND try >= ").push_bind(t);
    }
    if let Some(parent) = f.parent {
        q.push(" AND parent_id = ").push_bind(parent);
    }
    if let Some(secs) = f.older_than_secs {
        q.push(" AND created_at <= now() - make_interval(secs => ").push_bind(secs).push(")");
    }
}

/// One page of strands matching `f`, and how many match in all.
pub async fn list(conn: &mut PgConnection, f: &StrandFilter) -> Result<(Vec<StrandSummary>, i64), sqlx::Error> {
    let mut q = QueryBuilder::new(format!("SELECT {} FROM strand", summary_columns()));
    push_filter(&mut q, f);
    q.push(" ORDER BY ").push(f.sort.order_by());
    q.push(" LIMIT ").push_bind(f.limit).push(" OFFSET ").push_bind(f.offset);
    let rows = q.build_query_as().fetch_all(&mut *conn).await?;
    let mut c = QueryBuilder::new("SELECT count(*) FROM strand");
    push_filter(&mut c, f);
    let total: i64 = c.build_query_scalar().fetch_one(conn).await?;
    Ok((rows, total))
}

/// How many strands each (prog, label) has, and in which states.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct LabelCount {
    pub prog: String,
    pub label: String,
    pub total: i64,
    pub due: i64,
    pub napping: i64,
    pub leased: i64,
    pub failing: i64,
    pub exited: i64,
}

pub async fn counts(conn: &mut PgConnection) -> Result<Vec<LabelCount>, sqlx::Error> {
    let per_state = StrandState::ALL.map(|s| format!("count(*) FILTER (WHERE {}) AS {}", s.condition(), s.name())).join(", ");
    sqlx::query_as(&format!("SELECT prog, label, count(*) AS total, {per_state} FROM strand GROUP BY prog, label ORDER BY prog, label"))
        .fetch_all(conn)
        .await
}

/// One strand's summary (with its derived state), if it is in the hot table.
pub async fn summary(conn: &mut PgConnection, id: Uuid) -> Result<Option<StrandSummary>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {} FROM strand WHERE id = $1", summary_columns())).bind(id).fetch_optional(conn).await
}

/// The summaries of those of `ids` that are live strands (a subject's
/// strand has the subject's id), in one query.
pub async fn summaries(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<StrandSummary>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {} FROM strand WHERE id = ANY($1)", summary_columns())).bind(ids).fetch_all(conn).await
}

/// A strand's descendants, depth first, each with its depth under `root`
/// (children are 1). At most `limit` of them.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Descendant {
    pub depth: i32,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub strand: StrandSummary,
}

pub async fn descendants(conn: &mut PgConnection, root: Uuid, limit: i64) -> Result<Vec<Descendant>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH RECURSIVE tree AS ( \
             SELECT s.id, 1 AS depth, ARRAY[s.id] AS path FROM strand s WHERE s.parent_id = $1 \
             UNION ALL \
             SELECT s.id, t.depth + 1, t.path || s.id FROM strand s JOIN tree t ON s.parent_id = t.id \
             WHERE t.depth < 32) \
         SELECT t.depth, {} FROM tree t JOIN strand USING (id) ORDER BY t.path LIMIT $2",
        summary_columns()
    ))
    .bind(root)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Semaphores set on a strand: each name with how many increments it has.
pub async fn semaphore_counts(conn: &mut PgConnection, id: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT name, count(*) FROM semaphore WHERE strand_id = $1 GROUP BY name ORDER BY name")
        .bind(id)
        .fetch_all(conn)
        .await
}

/// Make a live strand due now. The new schedule differs from the one any
/// running step leased it with, so that step's nap keeps this wake-up.
pub async fn wake(conn: &mut PgConnection, id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    reschedule_to(conn, id, None, false).await
}

/// Move a live strand's schedule to `at`.
pub async fn reschedule(conn: &mut PgConnection, id: Uuid, at: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    reschedule_to(conn, id, Some(at), false).await
}

/// Run a failing strand again now instead of at its backoff. Its failure
/// count stays: if it fails again, the backoff goes on growing.
pub async fn retry(conn: &mut PgConnection, id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    reschedule_to(conn, id, None, true).await
}

/// `at`, or now (`None`); only if the strand is live (and, with
/// `failing_only`, failing). Returns the new schedule, or None if nothing changed.
async fn reschedule_to(
    conn: &mut PgConnection,
    id: Uuid,
    at: Option<DateTime<Utc>>,
    failing_only: bool,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE strand SET schedule = coalesce($2, least(schedule, now()) - interval '1 microsecond') \
         WHERE id = $1 AND exitval IS NULL AND (NOT $3 OR last_error IS NOT NULL) RETURNING schedule",
    )
    .bind(id)
    .bind(at)
    .bind(failing_only)
    .fetch_optional(&mut *conn)
    .await?;
    if at.is_some() {
        crate::strand::notify_due(conn).await?;
    }
    Ok(at)
}

/// How many strands are due and free, and how long the oldest has waited (s).
pub async fn due_and_lag(pool: &sqlx::PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(schedule))::float8, 0) FROM strand \
         WHERE exitval IS NULL AND lease < now() AND schedule <= now()",
    )
    .fetch_one(pool)
    .await
}

/// Ids an operator is likely to type next (the console completes them).
#[derive(Debug, Default)]
pub struct RecentIds {
    /// Live strands with their progs, latest schedule first.
    pub strands: Vec<(Uuid, String)>,
    /// Open pages (a resolved one can no longer be acted on).
    pub pages: Vec<Uuid>,
    /// Hosts not destroyed.
    pub hosts: Vec<Uuid>,
    /// VMs not destroyed.
    pub vms: Vec<Uuid>,
    /// Project names.
    pub projects: Vec<String>,
}

pub async fn recent_ids(conn: &mut PgConnection) -> Result<RecentIds, sqlx::Error> {
    let ids = |q: &'static str| sqlx::query_scalar::<_, Uuid>(q);
    Ok(RecentIds {
        strands: sqlx::query_as("SELECT id, prog FROM strand ORDER BY schedule DESC LIMIT 500").fetch_all(&mut *conn).await?,
        pages: ids("SELECT id FROM page WHERE resolved_at IS NULL ORDER BY created_at DESC LIMIT 200").fetch_all(&mut *conn).await?,
        hosts: ids("SELECT id FROM vm_host WHERE state <> 'destroyed' ORDER BY id LIMIT 500").fetch_all(&mut *conn).await?,
        vms: ids("SELECT id FROM vm WHERE state <> 'destroyed' ORDER BY id LIMIT 500").fetch_all(&mut *conn).await?,
        projects: sqlx::query_scalar("SELECT name FROM project ORDER BY name LIMIT 500").fetch_all(&mut *conn).await?,
    })
}
