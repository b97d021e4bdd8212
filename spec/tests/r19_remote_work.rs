//! R19: remote work holds no database (`docs/engine.md`). A label reads on a connection given back at once, asks the
//! host holding nothing, and writes at the end; a remote call made while the
//! step holds its transaction or a read connection fails the step (debug and
//! test builds), naming the prog and label. The remote calls here are the
//! real SSH client against a listener that accepts and never answers, or
//! `skein_engine::remote::check`, which every remote client calls.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use skein_engine::prelude::*;
use skein_engine::remote;
use skein_engine::testing::Harness;
use skein_engine::{Outcome, Registry, Resources};
use skein_models::page;
use skein_progs::ssh::{SshError, SshPool, Target};
use skein_spec::{create_spec_tables, SideDoor};

/// Does what `mode` says around one remote call (see `run`).
struct Caller;
labels! { enum CallerLabel for Caller { Act, Wait, Done } }

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct CallerFrame {
    mode: String,
    /// A listener that accepts and never answers, for the real SSH client.
    #[serde(default)]
    port: u16,
}

async fn write(cx: &mut Ctx<'_, Caller>, text: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO spec_write (text) VALUES ($1)").bind(text).execute(cx.tx.conn().await?).await?;
    Ok(())
}

/// The real SSH client's one call to a host that never answers.
async fn ssh_hanging(port: u16, timeout: Duration) -> Result<(), SshError> {
    let target = Target { host: "127.0.0.1".into(), port, user: "root".into(), private_key: String::new(), host_key: None };
    SshPool::new().exec(&target, &skein_progs::cmd!("true").expect("a literal command"), None, timeout).await.map(|_| ())
}

#[async_trait]
impl Prog for Caller {
    const NAME: &'static str = "Spec::Caller";
    type Label = CallerLabel;
    type Frame = CallerFrame;
    type Sem = NoSems;
    type Output = Msg;

    async fn run(cx: &mut Ctx<'_, Self>, label: CallerLabel) -> Step<Self> {
        let call = || "ssh host exec `true`".to_string();
        match label {
            CallerLabel::Done => return pop("done"),
            CallerLabel::Wait => {
                remote::check(call)?;
                return nap(3600);
            }
            CallerLabel::Act => {}
        }
        match cx.frame.mode.as_str() {
            // Wrong: the transaction is open when the host is asked.
            "write_then_call" => {
                write(cx, "early").await?;
                remote::check(call)?;
                hop(CallerLabel::Done)
            }
            // Wrong: a read connection is held across the call.
            "hold_read_then_call" => {
                let mut db = cx.read().await?;
                sqlx::query("SELECT 1").execute(&mut *db).await?;
                remote::check(call)?;
                drop(db);
                hop(CallerLabel::Done)
            }
            // Wrong, and the label even ignores the error: still fails.
            "swallow" => {
                write(cx, "early").await?;
                let _ = remote::check(call);
                hop(CallerLabel::Done)
            }
            // Right: read, drop the connection, ask, then write.
            "read_call_write" => {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM spec_write").fetch_one(&mut *cx.read().await?).await?;
                remote::check(call)?;
                write(cx, &format!("after {n}")).await?;
                hop(CallerLabel::Done)
            }
            // Wrong, with the real SSH client: refused at once, not after its timeout.
            "ssh_in_tx" => {
                write(cx, "early").await?;
                ssh_hanging(cx.frame.port, Duration::from_secs(8)).await?;
                hop(CallerLabel::Done)
            }
            // Right, with the real SSH client: the host does not answer, and
            // the label writes what it learned.
            "ssh_then_write" => {
                let answer = ssh_hanging(cx.frame.port, Duration::from_millis(300)).await;
                let unreachable = answer.as_ref().is_err_and(SshError::is_unreachable);
                write(cx, &format!("unreachable={unreachable}")).await?;
                hop(CallerLabel::Done)
            }
            // Right shape; another worker takes the strand while the host is asked.
            "lease_lost_while_asking" => {
                remote::check(call)?;
                let door = cx.resource::<SideDoor>()?.clone();
                sqlx::query("UPDATE strand SET lease = now() + interval '1 hour' WHERE id = $1")
                    .bind(cx.id().uuid())
                    .execute(&door.pool)
                    .await?;
                write(cx, "stale").await?;
                hop(CallerLabel::Done)
            }
            // Right shape; the label fails after writing.
            "write_then_fail" => {
                remote::check(call)?;
                write(cx, "doomed").await?;
                anyhow::bail!("the host said no")
            }
            // A deadline that passes before the next step, whose label asks a host.
            "deadline" => {
                cx.register_deadline(CallerLabel::Done, Duration::from_millis(1));
                hop(CallerLabel::Wait)
            }
            other => anyhow::bail!("no such mode {other:?}"),
        }
    }
}

async fn harness() -> Harness {
    let mut h = Harness::new(Registry::new().with::<Caller>()).await;
    create_spec_tables(h.pool()).await;
    let door = SideDoor { pool: h.pool().clone(), runner: h.runner.clone() };
    h.runner = h.runner.clone().with_resources(Resources::default().with(door));
    h
}

async fn writes(h: &Harness) -> Vec<String> {
    sqlx::query_scalar("SELECT text FROM spec_write ORDER BY id").fetch_all(h.pool()).await.unwrap()
}

fn caller(mode: &str, port: u16) -> CallerFrame {
    CallerFrame { mode: mode.into(), port }
}

/// A TCP listener that accepts connections and never says a word (an SSH
/// server hung before its banner).
fn hanging_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

#[tokio::test]
async fn r19_remote_call_holding_the_steps_transaction_fails_naming_prog_and_label() {
    let h = harness().await;
    let id = h.start(caller("write_then_call", 0), CallerLabel::Act).await;
    let report = h.step(id).await;
    report.assert_failed("Spec::Caller at Act made a remote call (ssh host exec `true`) while holding the step's database transaction");
    report.assert_failed("read first, ask the host, then write");
    let row = h.strand(id).await;
    assert!(row.last_error.unwrap().contains("Spec::Caller at Act"), "the row says which prog and label");
    assert!(writes(&h).await.is_empty(), "the failed step committed nothing");
}

#[tokio::test]
async fn r19_remote_call_holding_a_read_connection_fails() {
    let h = harness().await;
    let id = h.start(caller("hold_read_then_call", 0), CallerLabel::Act).await;
    h.step(id).await.assert_failed("Spec::Caller at Act made a remote call (ssh host exec `true`) while holding a database read connection");
}

#[tokio::test]
async fn r19_a_label_cannot_swallow_the_failure() {
    let h = harness().await;
    let id = h.start(caller("swallow", 0), CallerLabel::Act).await;
    h.step(id).await.assert_failed("while holding the step's database transaction");
    assert!(writes(&h).await.is_empty());
}

#[tokio::test]
async fn r19_read_then_remote_then_write_succeeds_and_commits_with_the_step() {
    let h = harness().await;
    let id = h.start(caller("read_call_write", 0), CallerLabel::Act).await;
    h.step(id).await.assert_hop(CallerLabel::Done);
    assert_eq!(writes(&h).await, ["after 0"]);
    assert_eq!(h.strand(id).await.label, "Done", "the write committed with the strand update");
}

#[tokio::test]
async fn r19_the_real_ssh_client_refuses_at_once_while_the_transaction_is_open() {
    let h = harness().await;
    let port = hanging_listener();
    let id = h.start(caller("ssh_in_tx", port), CallerLabel::Act).await;
    let began = Instant::now();
    h.step(id).await.assert_failed("Spec::Caller at Act made a remote call (ssh root@127.0.0.1");
    assert!(began.elapsed() < Duration::from_secs(5), "refused before connecting, not after the 8 s timeout");
}

#[tokio::test]
async fn r19_the_real_ssh_client_to_a_hanging_host_holds_nothing_and_the_label_writes_after() {
    let h = harness().await;
    let port = hanging_listener();
    let id = h.start(caller("ssh_then_write", port), CallerLabel::Act).await;
    h.step(id).await.assert_hop(CallerLabel::Done);
    assert_eq!(writes(&h).await, ["unreachable=true"]);
}

#[tokio::test]
async fn r19_writes_after_the_remote_call_commit_with_the_strand_update_or_not_at_all() {
    let h = harness().await;
    // The lease was lost while the host was asked: the fenced strand update
    // fails, and the label's write goes with it.
    let id = h.start(caller("lease_lost_while_asking", 0), CallerLabel::Act).await;
    assert_eq!(h.step(id).await.outcome, Outcome::LeaseLost);
    // The label failed after writing: nothing of it stands.
    let id2 = h.start(caller("write_then_fail", 0), CallerLabel::Act).await;
    h.step(id2).await.assert_failed("the host said no");
    assert!(writes(&h).await.is_empty(), "neither step's write committed: {:?}", writes(&h).await);
    assert_eq!(h.strand(id2).await.label, "Act");
}

#[tokio::test]
async fn r19_the_runner_opens_no_transaction_before_the_label() {
    // A passed deadline pages before the label runs: on a connection of its
    // own, so the label may still ask a host.
    let h = harness().await;
    let id = h.start(caller("deadline", 0), CallerLabel::Act).await;
    h.step(id).await.assert_hop(CallerLabel::Wait);
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.step(id).await.assert_nap(3600);
    let mut conn = h.pool().acquire().await.unwrap();
    assert_eq!(page::by_tag(&mut conn, &format!("deadline:{id}:Done")).await.unwrap().len(), 1, "the deadline paged");
}
