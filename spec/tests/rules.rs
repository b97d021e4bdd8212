//! The engine's contract (`docs/engine.md`), rules R01-R18, rule by rule,
//! against a real Postgres. Each test name starts with the rule's id.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use skein_engine::testing::{test_config, Harness};
use skein_engine::{Config, Msg, Outcome, Resources, Runner, Signal, Ubid, UbidType};
use skein_models::{archive, page, strand};
use skein_progs::demo::{census, counter, doubler};
use skein_spec::rule_progs::*;
use skein_spec::{create_spec_tables, notes, registry, SideDoor};

async fn harness() -> Harness {
    harness_with(test_config()).await
}

async fn harness_with(config: Config) -> Harness {
    let mut h = Harness::with_config(registry(), config).await;
    create_spec_tables(h.pool()).await;
    let door = SideDoor { pool: h.pool().clone(), runner: h.runner.clone() };
    h.runner = h.runner.clone().with_resources(Resources::default().with(door));
    h
}

async fn count(h: &Harness, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(h.pool()).await.unwrap()
}

async fn seconds_until_schedule(h: &Harness, id: Ubid) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM schedule - now())::float8 FROM strand WHERE id = $1")
        .bind(id.uuid())
        .fetch_one(h.pool())
        .await
        .unwrap()
}

async fn lease_is_free(h: &Harness, id: Ubid) -> bool {
    sqlx::query_scalar("SELECT lease < now() FROM strand WHERE id = $1").bind(id.uuid()).fetch_one(h.pool()).await.unwrap()
}

fn waiting_census(districts: Vec<u32>) -> census::Frame {
    census::Frame { districts, ..Default::default() }
}

// R01 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r01_concurrent_claimers_lease_disjoint_strands() {
    let h = harness().await;
    let mut ids = HashSet::new();
    for _ in 0..300 {
        ids.insert(h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await.uuid());
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut config = test_config();
        config.holder = format!("claimer-{w}");
        let runner = Runner::new(h.pool().clone(), registry()).with_config(config);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claims = runner.claim(7, &[]).await.unwrap();
                if claims.is_empty() {
                    return mine;
                }
                mine.extend(claims.into_iter().map(|c| c.leased.strand.id));
            }
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let distinct: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), distinct.len(), "a strand was leased twice");
    assert_eq!(distinct, ids, "every due strand was leased exactly once");
}

#[tokio::test]
async fn r01_leased_strand_is_not_leased_again_until_expired_or_released() {
    let mut config = test_config();
    config.lease = Duration::from_secs(1);
    let h = harness_with(config).await;
    let id = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;

    let first = h.runner.claim_id(id.uuid(), false).await.unwrap().expect("free strand is leased");
    assert!(h.runner.claim_id(id.uuid(), false).await.unwrap().is_none(), "held lease is not taken again");
    assert!(h.runner.claim(10, &[]).await.unwrap().is_empty(), "held lease is not claimed as due");

    let mut conn = h.pool().acquire().await.unwrap();
    assert!(strand::release(&mut conn, id.uuid(), first.leased.strand.lease).await.unwrap());
    let second = h.runner.claim_id(id.uuid(), false).await.unwrap().expect("released strand is leased again");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = h.runner.claim_id(id.uuid(), false).await.unwrap().expect("expired lease is taken over");
    assert_ne!(second.leased.strand.lease, third.leased.strand.lease);
}

#[tokio::test]
async fn r01_claim_excludes_ids_the_worker_already_holds() {
    let h = harness().await;
    let a = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    let b = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    let got = h.runner.claim(10, &[a.uuid()]).await.unwrap();
    let got: Vec<_> = got.iter().map(|c| c.leased.strand.id).collect();
    assert_eq!(got, vec![b.uuid()]);
}

/// Where each strand's row lies: its heap page.
async fn pages(h: &Harness, ids: &[uuid::Uuid]) -> Vec<(uuid::Uuid, String)> {
    sqlx::query_as("SELECT id, split_part(ctid::text, ',', 1) FROM strand WHERE id = ANY($1) ORDER BY id")
        .bind(ids)
        .fetch_all(h.pool())
        .await
        .unwrap()
}

/// A claim takes whole pages at once (schedule order is insertion order), and
/// must still update every row in place (HOT): a row that moved to another
/// page was a new entry in every index of the hot table, for the next claim
/// to walk past (migration 20261206000010 leaves each page room for it).
#[tokio::test]
async fn a_batch_claim_updates_every_row_on_its_own_page() {
    let h = harness().await;
    let mut ids = Vec::new();
    for _ in 0..400 {
        ids.push(h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await.uuid());
    }
    let before = pages(&h, &ids).await;
    assert!(before.iter().map(|(_, page)| page).collect::<HashSet<_>>().len() > 4, "the strands span many pages");
    assert_eq!(h.runner.claim(400, &[]).await.unwrap().len(), 400);
    let moved: Vec<_> = pages(&h, &ids).await.into_iter().zip(&before).filter(|(after, before)| after.1 != before.1).collect();
    assert!(moved.is_empty(), "{} of 400 claimed rows left their page (not a HOT update)", moved.len());
}

/// A claim is one statement that does not wait for its WAL flush (see the
/// note on TAKE in models/src/strand.rs). The setting lives only as long as
/// that statement's own transaction: the pooled connection goes on to carry
/// step writes, which must wait for theirs.
#[tokio::test]
async fn a_claim_skips_its_flush_wait_in_its_own_statement_only() {
    let h = harness().await;
    let terms = strand::LeaseTerms { lease_secs: 60.0 };
    // Run inside a transaction that outlives it, the statement is seen to
    // turn the wait off for the transaction it runs in.
    let seen = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    let mut tx = h.pool().begin().await.unwrap();
    assert_eq!(strand::claim_due(&mut tx, 10, terms, "claimer", &[], None).await.unwrap().len(), 1);
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(setting, "off", "the claim did not turn off its transaction's flush wait");
    tx.rollback().await.unwrap();
    sqlx::query("DELETE FROM strand WHERE id = $1").bind(seen.uuid()).execute(h.pool()).await.unwrap();

    // Run alone, as the engine runs it: its own transaction ends with it.
    let id = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    let mut conn = h.pool().acquire().await.unwrap();
    let claimed = strand::claim_due(&mut conn, 10, terms, "claimer", &[], None).await.unwrap();
    assert_eq!(claimed.iter().map(|l| l.strand.id).collect::<Vec<_>>(), vec![id.uuid()]);
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(setting, "on", "the claim's setting outlived its statement");
    let open: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(open, None, "the claim left its transaction open");
    assert_eq!(h.strand(id).await.lease_holder.as_deref(), Some("claimer"), "committed: seen from another connection");
}

/// A worker that idles caches its claim's plan (a generic plan, after five
/// runs) while the table is empty (its work done, vacuumed); then a burst
/// arrives. The claim still locks its batch in one pass. As a join, such a
/// plan rescanned the locking subquery once per row of the table: a claim
/// took 720 ms at 10,000 strands, and every step write of its batch waited
/// behind it.
#[tokio::test]
async fn a_claim_locks_its_batch_once_whatever_plan_it_cached_on_an_empty_table() {
    let h = harness().await;
    let mut conn = h.pool().acquire().await.unwrap();
    // Statistics that say "empty" stay so: no autovacuum re-plans it midway.
    sqlx::query("ALTER TABLE strand SET (autovacuum_enabled = false)").execute(&mut *conn).await.unwrap();
    let earlier = (0..2000).map(|_| NapperFrame { naps: vec![] });
    skein_engine::enqueue::start_many(&mut conn, earlier, NapperLabel::Next).await.unwrap();
    sqlx::query("ANALYZE strand").execute(&mut *conn).await.unwrap();
    sqlx::query("DELETE FROM strand").execute(&mut *conn).await.unwrap();
    sqlx::query("VACUUM strand").execute(&mut *conn).await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    let prepare = format!("PREPARE claim(int8, float8, text, uuid[], timestamptz) AS {}", strand::claim_due_statement());
    sqlx::query(&prepare).execute(&mut *conn).await.unwrap();
    let idle = sqlx::query("EXECUTE claim(64, 60, 'idle', '{}', NULL)").execute(&mut *conn).await.unwrap();
    assert_eq!(idle.rows_affected(), 0, "nothing to claim yet");

    let burst = (0..2000).map(|_| NapperFrame { naps: vec![] });
    skein_engine::enqueue::start_many(&mut conn, burst, NapperLabel::Next).await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim(64, 60, 'burst', '{}', NULL)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    fn nodes<'a>(plan: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        out.push(plan);
        for child in plan["Plans"].as_array().into_iter().flatten() {
            nodes(child, out);
        }
    }
    let mut all = Vec::new();
    nodes(&plan[0]["Plan"], &mut all);
    let locking: Vec<_> = all.iter().filter(|n| n["Node Type"] == "LockRows").collect();
    assert_eq!(locking.len(), 1, "{plan:#}");
    assert_eq!(locking[0]["Actual Loops"], 1, "the locking subquery ran more than once: {plan:#}");
    assert_eq!(locking[0]["Actual Rows"], 64, "{plan:#}");
    let updated = all.iter().find(|n| n["Node Type"] == "ModifyTable").expect("an update");
    assert_eq!(updated["Actual Rows"], 64, "the whole batch was leased: {plan:#}");
}

// R02 ---------------------------------------------------------------------

#[tokio::test]
async fn r02_leasing_assumes_failure_and_success_resets_try() {
    let h = harness().await;
    let id = h.start(NapperFrame { naps: vec![60.0] }, NapperLabel::Next).await;
    sqlx::query("UPDATE strand SET try = 3 WHERE id = $1").bind(id.uuid()).execute(h.pool()).await.unwrap();
    let before = h.strand(id).await;

    let claim = h.runner.claim_id(id.uuid(), true).await.unwrap().unwrap();
    let row = h.strand(id).await;
    assert_eq!(row.try_, 4, "the lease counts the step as failed in advance");
    assert_eq!(row.schedule, before.schedule, "the claim writes no indexed column (a HOT update)");

    h.runner.run(claim, 1).await[0].assert_nap(60.0);
    let row = h.strand(id).await;
    assert_eq!(row.try_, 0, "a successful step resets try");
    assert!(row.last_error.is_none());
}

#[tokio::test]
async fn r02_a_claim_its_worker_never_finished_backs_off_with_its_attempts() {
    let h = harness().await;
    let mut conn = h.pool().acquire().await.unwrap();
    let mut delays = Vec::new();
    for tries in [1, 4, 6] {
        let id = h.start(NapperFrame { naps: vec![60.0] }, NapperLabel::Next).await;
        sqlx::query("UPDATE strand SET try = $2 - 1 WHERE id = $1").bind(id.uuid()).bind(tries).execute(h.pool()).await.unwrap();
        // A worker registers, claims, and dies (its liveness session ends).
        let mut session = sqlx::Connection::connect(&h.db.url()).await.unwrap();
        let dead = skein_models::worker::register(&mut session, "doomed", "doomed").await.unwrap();
        h.runner.claim_as(10, &[], &dead.holder).await.unwrap();
        sqlx::Connection::close(session).await.unwrap();
        let me = skein_models::worker::register(&mut conn, "peer", "peer").await.unwrap();
        // Its backend exits a moment after the session closes.
        let mut reaped = (vec![], vec![]);
        for _ in 0..100 {
            reaped = skein_models::worker::reap_dead(&mut conn, me.id, 60.0, 600.0).await.unwrap();
            if !reaped.0.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (gone, broken) = reaped;
        assert_eq!(gone.len(), 1, "the dead worker is found within moments");
        assert!(gone[0].session_ended);
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].try_, tries, "the attempt counts");
        let row = h.strand(id).await;
        assert!(row.lease < chrono::Utc::now(), "its claim is broken");
        assert!(row.last_error.as_deref().is_some_and(|e| e.contains("died during this step")), "{:?}", row.last_error);
        delays.push(seconds_until_schedule(&h, id).await);
        skein_models::worker::deregister(&mut conn, me.id).await.unwrap();
        sqlx::query("DELETE FROM strand WHERE id = $1").bind(id.uuid()).execute(h.pool()).await.unwrap();
    }
    assert!(delays[0] <= 0.0, "the first lost attempt runs again at once: {delays:?}");
    assert!(delays[1] <= 7.0, "the fourth within 2^3 - 1 s: {delays:?}");
    assert!(delays[2] <= 31.0, "the sixth within 2^5 - 1 s: {delays:?}");
}

// R03 ---------------------------------------------------------------------

#[tokio::test]
async fn r03_step_whose_lease_was_lost_commits_nothing() {
    let h = harness().await;
    let id = h.start(MeddlerFrame { mode: "take_lease".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    let report = h.step(id).await;
    assert_eq!(report.outcome, Outcome::LeaseLost);
    assert_eq!(notes(h.pool()).await, vec!["take_lease ran"], "the label did run");
    assert_eq!(count(&h, "SELECT count(*) FROM spec_write").await, 0, "its write was rolled back");
    let row = h.strand(id).await;
    assert_eq!(row.label, "Act", "the hop was not committed");
    assert!(row.lease > chrono::Utc::now() + chrono::Duration::minutes(30), "the new holder's lease stands");
}

// R04 ---------------------------------------------------------------------

#[tokio::test]
async fn r04_hop_changes_label_clears_retval_and_continues_under_same_lease() {
    let h = harness().await;
    let id = h.start(counter::Frame { upto: 3, at: 0 }, counter::Label::Count).await;
    let claim = h.runner.claim_id(id.uuid(), true).await.unwrap().unwrap();
    let reports = h.runner.run(claim, usize::MAX).await;
    let flows: Vec<_> = reports.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        flows,
        vec![
            Outcome::Hop { to: "Count".into() },
            Outcome::Hop { to: "Count".into() },
            Outcome::Hop { to: "Count".into() },
            Outcome::Exit { exitval: json!({"count": 3}) },
        ],
        "four steps under one lease"
    );

    // A pop leaves retval for the caller; the caller's next hop clears it.
    let id = h.start(waiting_census(vec![]), census::Label::Double).await;
    h.step(id).await.assert_push(doubler::Label::Start);
    h.step(id).await.assert_pop(doubler::Output { value: 0 });
    assert_eq!(h.strand(id).await.retval, Some(json!({"value": 0})));
    h.step(id).await.assert_hop(census::Label::Wait);
    let row = h.strand(id).await;
    assert_eq!(row.label, "Wait");
    assert_eq!(row.retval, None, "hop clears retval");
}

// R05 ---------------------------------------------------------------------

#[tokio::test]
async fn r05_nap_reschedules_and_nap_zero_continues_at_once() {
    let h = harness().await;
    let id = h.start(NapperFrame { naps: vec![0.0, 0.0, 30.0] }, NapperLabel::Next).await;
    let reports = h.run(id).await;
    let flows: Vec<_> = reports.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(flows, vec![Outcome::Nap { secs: 0.0 }, Outcome::Nap { secs: 0.0 }, Outcome::Nap { secs: 30.0 }]);
    let ahead = seconds_until_schedule(&h, id).await;
    assert!((29.0..=30.5).contains(&ahead), "due again in 30 s, got {ahead}");
    assert!(lease_is_free(&h, id).await, "a real nap releases the lease");
    assert!(h.runner.claim(10, &[]).await.unwrap().is_empty(), "a napping strand is not due");
}

// R06 ---------------------------------------------------------------------

#[tokio::test]
async fn r06_nap_keeps_wakeup_that_arrived_during_step() {
    let h = harness().await;
    let id = h.start(MeddlerFrame { mode: "poke".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    h.step(id).await.assert_nap(3600);
    assert!(seconds_until_schedule(&h, id).await <= 0.0, "the increment's wake-up survived the nap");
    assert_eq!(h.sems(id).await, vec!["poke"]);
    let next = h.runner.claim(10, &[]).await.unwrap();
    assert_eq!(next.len(), 1, "the strand is due at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r06_child_exit_during_parents_step_survives_its_nap() {
    let h = harness().await;
    let id = h.start(RacerFrame { children: 1, reaped: 0 }, RacerLabel::Start).await;
    h.step(id).await.assert_hop(RacerLabel::Reap);
    // Reap sees the child running and the parent naps; the child exits meanwhile.
    let report = h.step(id).await;
    assert_eq!(report.outcome, Outcome::Nap { secs: test_config().children_nap.as_secs_f64() });
    assert!(seconds_until_schedule(&h, id).await <= 0.0, "the child's wake-up survived the nap");
    h.drain().await;
    assert!(h.try_strand(id).await.is_none(), "the parent reaped and exited");
}

// R07 ---------------------------------------------------------------------

#[tokio::test]
async fn r07_push_pop_returns_to_callers_label_with_retval() {
    let h = harness().await;
    let id = h.start(census::Frame { total: 21, ..Default::default() }, census::Label::Double).await;
    h.step(id).await.assert_push(doubler::Label::Start);
    let row = h.strand(id).await;
    assert_eq!((row.prog.as_str(), row.label.as_str()), ("Demo::Doubler", "Start"));
    assert_eq!(row.stack[0], json!({"n": 21, "link": ["Demo::Census", "Double"]}));
    assert_eq!(row.stack.as_array().unwrap().len(), 2);

    h.step(id).await.assert_pop(doubler::Output { value: 42 });
    let row = h.strand(id).await;
    assert_eq!((row.prog.as_str(), row.label.as_str()), ("Demo::Census", "Double"));
    assert_eq!(row.retval, Some(json!({"value": 42})));
    assert_eq!(row.stack.as_array().unwrap().len(), 1);

    h.step(id).await.assert_hop(census::Label::Wait);
    assert_eq!(h.frame::<census::Census>(id).await.doubled, Some(42));
}

#[tokio::test]
async fn r07_pop_on_last_frame_exits_and_strings_become_msg() {
    let h = harness().await;
    let id = h.start(counter::Frame { upto: 0, at: 0 }, counter::Label::Count).await;
    h.step(id).await.assert_exit(counter::Output { count: 0 });

    let mut conn = h.pool().acquire().await.unwrap();
    let id = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    h.step(id).await.assert_exit(Msg::from("rested"));
    let archived = archive::get(&mut conn, id.uuid()).await.unwrap().unwrap();
    assert_eq!(archived.exitval, json!({"msg": "rested"}));
}

/// A frame its label left alone is not written back: the stack stays as
/// stored, keys the prog does not know included. One its label changed is
/// written back as the prog's type has it.
#[tokio::test]
async fn a_frame_its_label_left_alone_is_not_written_back() {
    let h = harness().await;
    let note = |id: Ubid| {
        sqlx::query("UPDATE strand SET stack = jsonb_set(stack, '{0,note}', '\"an operator wrote this\"') WHERE id = $1")
            .bind(id.uuid())
            .execute(h.pool())
    };
    let mut conn = h.pool().acquire().await.unwrap();

    let left_alone = h.start(counter::Frame { upto: 0, at: 0 }, counter::Label::Count).await;
    note(left_alone).await.unwrap();
    h.step(left_alone).await.assert_exit(counter::Output { count: 0 });
    let archived = archive::get(&mut conn, left_alone.uuid()).await.unwrap().unwrap();
    assert_eq!(archived.stack, json!([{"upto": 0, "at": 0, "note": "an operator wrote this"}]));

    let changed = h.start(counter::Frame { upto: 1, at: 0 }, counter::Label::Count).await;
    note(changed).await.unwrap();
    h.step(changed).await.assert_hop(counter::Label::Count);
    assert_eq!(h.strand(changed).await.stack, json!([{"upto": 1, "at": 1}]));
}

// R08 ---------------------------------------------------------------------

#[tokio::test]
async fn r08_bud_creates_runnable_child_with_parent_id() {
    let h = harness().await;
    let id = h.start(waiting_census(vec![2, 3, 4]), census::Label::Start).await;
    let report = h.step(id).await;
    report.assert_hop(census::Label::Tally).assert_buds(3);

    let mut conn = h.pool().acquire().await.unwrap();
    let kids = strand::children(&mut conn, id.uuid()).await.unwrap();
    assert_eq!(kids.len(), 3);
    for kid in &kids {
        assert_eq!(kid.parent_id, Some(id.uuid()));
        assert_eq!((kid.prog.as_str(), kid.label.as_str()), ("Demo::Counter", "Count"));
        assert_eq!(kid.stack[0]["subject_id"], json!(id.uuid().to_string()), "children drive the parent's subject");
        assert_eq!(Ubid::from_uuid(kid.id).kind(), Some(UbidType::Strand));
    }
    let due: HashSet<_> = h.runner.claim(10, &[id.uuid()]).await.unwrap().iter().map(|c| c.leased.strand.id).collect();
    assert_eq!(due, kids.iter().map(|k| k.id).collect(), "children are runnable at once");
}

// R09 ---------------------------------------------------------------------

#[tokio::test]
async fn r09_reap_passes_exitvals_deletes_children_and_their_semaphores() {
    let h = harness().await;
    let id = h.start(waiting_census(vec![2, 3]), census::Label::Start).await;
    let report = h.step(id).await;
    for kid in &report.budded {
        h.incr_name(*kid, "noise").await;
        h.run(*kid).await.last().unwrap().exitval().expect("child exits");
    }
    assert_eq!(count(&h, "SELECT count(*) FROM semaphore").await, 2, "exited children keep rows until reaped");

    h.step(id).await.assert_hop(census::Label::Double);
    assert_eq!(h.frame::<census::Census>(id).await.total, 5, "each child's exitval reached the parent");
    assert_eq!(count(&h, "SELECT count(*) FROM strand WHERE parent_id IS NOT NULL").await, 0);
    assert_eq!(count(&h, "SELECT count(*) FROM semaphore").await, 0);
}

#[tokio::test]
async fn r09_reap_never_deletes_a_child_that_holds_a_lease() {
    let h = harness().await;
    let id = h.start(waiting_census(vec![1]), census::Label::Start).await;
    let kid = h.step(id).await.budded[0];
    // An exited child whose lease is still held (its worker has not let go).
    sqlx::query("UPDATE strand SET exitval = '{\"count\": 7}', lease = now() + interval '1 minute' WHERE id = $1")
        .bind(kid.uuid())
        .execute(h.pool())
        .await
        .unwrap();
    h.step(id).await.assert_nap(test_config().children_nap.as_secs_f64());
    assert!(h.try_strand(kid).await.is_some(), "a leased child is not deleted");
    assert_eq!(h.frame::<census::Census>(id).await.total, 0);

    sqlx::query("UPDATE strand SET lease = now() - interval '1 second' WHERE id = $1")
        .bind(kid.uuid())
        .execute(h.pool())
        .await
        .unwrap();
    h.step(id).await.assert_hop(census::Label::Double);
    assert_eq!(h.frame::<census::Census>(id).await.total, 7);
}

// R10 ---------------------------------------------------------------------

#[tokio::test]
async fn r10_last_child_wakes_parent_and_waiting_parent_runs_no_steps() {
    let h = harness().await;
    let id = h.start(waiting_census(vec![1, 1, 1, 1, 1]), census::Label::Start).await;
    let kids = h.step(id).await.budded.clone();
    h.step(id).await.assert_nap(test_config().children_nap.as_secs_f64());

    for kid in &kids[..4] {
        h.run(*kid).await;
        // (The census's own deadline shortens its nap to 600 s.)
        assert!(seconds_until_schedule(&h, id).await > 300.0, "a child with running siblings does not wake the parent");
    }
    h.run(kids[4]).await;
    assert!(seconds_until_schedule(&h, id).await <= 0.0, "the last child wakes the parent");

    let reports = h.drain().await;
    let parent_steps: Vec<_> = reports.iter().filter(|r| r.strand == id).map(|r| r.label.as_str()).collect();
    // One Tally (the wake-up), then Double pushes the doubler (its Start), gets
    // the value back in Double, and waits.
    assert_eq!(parent_steps, vec!["Tally", "Double", "Start", "Double", "Wait"], "woken once, then on to Wait");
    assert_eq!(h.frame::<census::Census>(id).await.doubled, Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_last_siblings_exiting_together_still_wake_parent() {
    let h = harness().await;
    for round in 0..15 {
        let id = h.start(waiting_census(vec![0, 0]), census::Label::Start).await;
        h.step(id).await;
        h.step(id).await.assert_nap(test_config().children_nap.as_secs_f64());
        let claims = h.runner.claim(10, &[id.uuid()]).await.unwrap();
        assert_eq!(claims.len(), 2);
        let mut claims = claims.into_iter();
        let (a, b) = (claims.next().unwrap(), claims.next().unwrap());
        let (ra, rb) = (h.runner.clone(), h.runner.clone());
        let (x, y) = tokio::join!(
            tokio::spawn(async move { ra.run(a, 1).await }),
            tokio::spawn(async move { rb.run(b, 1).await })
        );
        assert!(x.unwrap()[0].exitval().is_some() && y.unwrap()[0].exitval().is_some());
        assert!(seconds_until_schedule(&h, id).await <= 0.0, "round {round}: parent not woken");
        h.drain().await;
    }
}

// R11 ---------------------------------------------------------------------

#[tokio::test]
async fn r11_incr_from_outside_wakes_the_strand() {
    let h = harness().await;
    let id = h.start(waiting_census(vec![]), census::Label::Wait).await;
    h.step(id).await.assert_nap(3600);
    assert!(seconds_until_schedule(&h, id).await > 3000.0);
    assert!(h.incr(id, census::Sem::Finish).await);
    assert!(seconds_until_schedule(&h, id).await <= 0.0, "the increment woke it");
    let reports = h.drain().await;
    reports.last().unwrap().assert_exit(census::Output { total: 0, doubled: None, cancelled: false });

    assert!(!h.incr(id, census::Sem::Finish).await, "incr on a gone strand does nothing");
    assert!(!h.incr(Ubid::generate(UbidType::Strand), census::Sem::Finish).await);
}

#[tokio::test]
async fn r11_decr_deletes_only_the_snapshot_and_an_incr_during_the_step_survives() {
    let h = harness().await;
    let id = h.start(MeddlerFrame { mode: "poke".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    h.incr(id, MeddlerSem::Poke).await;
    h.incr(id, MeddlerSem::Poke).await;
    // The step sees two pokes and consumes them; it pokes once more meanwhile.
    h.step(id).await.assert_nap(3600);
    assert_eq!(h.frame::<Meddler>(id).await.pokes_seen, 1);
    assert_eq!(h.sems(id).await, vec!["poke"], "only the snapshot's increments were deleted");
}

// R12 ---------------------------------------------------------------------

#[tokio::test]
async fn r12_destroy_pops_pushed_frames_and_runs_destroy_label_once() {
    let h = harness().await;
    let id = h.start(TeardownFrame::default(), TeardownLabel::Start).await;
    h.step(id).await.assert_push(WaiterLabel::Wait);
    h.step(id).await.assert_nap(3600);
    assert_eq!(h.strand(id).await.prog, "Spec::Waiter");

    h.incr(id, Signal::DESTROY).await;
    let reports = h.drain().await;
    assert_eq!(reports[0].outcome, Outcome::Hop { to: "Gone".into() }, "Teardown ran first: {reports:?}");
    assert_eq!(
        (reports[0].prog.as_str(), reports[0].label.as_str()),
        ("Spec::Teardown", "Teardown"),
        "the report names the label that ran, not the one the strand was at"
    );
    let row = h.strand(id).await;
    assert_eq!((row.prog.as_str(), row.label.as_str()), ("Spec::Teardown", "Gone"));
    assert_eq!(row.stack.as_array().unwrap().len(), 1, "the pushed frame was popped");
    assert_eq!(row.stack[0]["destroying"], json!(true));

    // The semaphore is still set, but the protocol does not run again.
    h.step(id).await.assert_nap(3600);
    assert_eq!(h.frame::<Teardown>(id).await.teardowns, 1);
    assert_eq!(h.strand(id).await.label, "Gone");
}

#[tokio::test]
async fn r12_destroy_without_a_destroy_label_exits() {
    let h = harness().await;
    let id = h.start(WaiterFrame {}, WaiterLabel::Wait).await;
    h.incr(id, Signal::DESTROY).await;
    h.step(id).await.assert_exit(Msg::from("destroyed"));
    assert!(h.try_strand(id).await.is_none());
}

// R13 ---------------------------------------------------------------------

#[tokio::test]
async fn r13_exited_top_level_strand_is_deleted_with_semaphores_and_archived() {
    let h = harness().await;
    let id = h.start(counter::Frame { upto: 1, at: 0 }, counter::Label::Count).await;
    h.incr_name(id, "ignored").await;
    h.run(id).await.last().unwrap().assert_exit(counter::Output { count: 1 });

    assert!(h.try_strand(id).await.is_none(), "the hot table holds only live work");
    assert_eq!(count(&h, "SELECT count(*) FROM semaphore").await, 0);
    let mut conn = h.pool().acquire().await.unwrap();
    let archived = archive::get(&mut conn, id.uuid()).await.unwrap().expect("archive record");
    assert_eq!(archived.prog, "Demo::Counter");
    assert_eq!(archived.exitval, json!({"count": 1}));
    assert_eq!(archived.stack[0]["at"], json!(1));
    assert!(archived.exited_at >= archived.created_at);
}

#[tokio::test]
async fn r13_a_batch_of_exits_archives_each_strand_with_its_own_exit_value() {
    let h = harness().await;
    let mut ids = Vec::new();
    for upto in 0..6 {
        ids.push(h.start(counter::Frame { upto, at: 0 }, counter::Label::Count).await.uuid());
    }
    let mut conn = h.pool().acquire().await.unwrap();
    let leased = strand::claim_due(&mut conn, 10, strand::LeaseTerms { lease_secs: 60.0 }, "exiter", &[], None).await.unwrap();
    assert_eq!(leased.len(), 6);
    // Repeated values, as a batch's exits mostly are, and ones of their own.
    let value_of = |id: uuid::Uuid| match ids.iter().position(|i| *i == id).unwrap() {
        0 | 2 => json!({"count": 1}),
        1 | 4 => json!("done"),
        3 => json!(null),
        _ => json!({"count": 5, "of": [1, 2]}),
    };
    let exits: Vec<strand::ExitWrite> = leased
        .iter()
        .map(|l| strand::ExitWrite {
            id: l.strand.id,
            lease: l.strand.lease,
            label: "count".into(),
            stack: None,
            exitval: value_of(l.strand.id),
        })
        .collect();
    let exited = strand::exit_top_level(&mut conn, &exits).await.unwrap();
    assert_eq!(exited.len(), 6);
    for id in &ids {
        let archived = archive::get(&mut conn, *id).await.unwrap().expect("archive record");
        assert_eq!(archived.exitval, value_of(*id), "strand {} archived another's exit value", ids.iter().position(|i| i == id).unwrap());
    }
}

#[tokio::test]
async fn r13_an_increment_that_races_the_exit_is_swept_and_live_strands_keep_theirs() {
    let h = harness().await;
    let id = h.start(counter::Frame { upto: 1, at: 0 }, counter::Label::Count).await;
    let live = h.start(counter::Frame { upto: 1, at: 0 }, counter::Label::Count).await;
    h.incr_name(live, "kept").await;
    let mut conn = h.pool().acquire().await.unwrap();
    let terms = strand::LeaseTerms { lease_secs: 60.0 };
    let leased = strand::claim_one(&mut conn, id.uuid(), terms, "r13", false).await.unwrap().expect("claimed");

    // An increment holds the strand's row lock while the exit starts...
    let mut incr = h.pool().begin().await.unwrap();
    assert!(skein_models::semaphore::incr(&mut incr, id.uuid(), "late").await.unwrap());
    let exit = strand::ExitWrite {
        id: id.uuid(),
        lease: leased.strand.lease,
        label: "Count".into(),
        stack: None, // unchanged by the step: the archive takes the row's
        exitval: json!({"count": 1}),
    };
    let pool = h.pool().clone();
    let exiting = tokio::spawn(async move { strand::exit_top_level(&mut pool.acquire().await.unwrap(), &[exit]).await.unwrap() });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%strand_archive%'";
    while count(&h, waiting).await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and commits while the exit waits: the exit's statement began before
    // the increment existed, so it cannot delete it.
    incr.commit().await.unwrap();
    assert_eq!(exiting.await.unwrap(), vec![id.uuid()], "the exit still wins: the increment left the lease alone");
    assert!(h.try_strand(id).await.is_none());
    let archived = archive::get(&mut conn, id.uuid()).await.unwrap().expect("archived");
    assert_eq!(archived.stack, leased.strand.stack, "an exit that sends no stack archives the row's");
    let of = |u: Ubid| format!("SELECT count(*) FROM semaphore WHERE strand_id = '{}'", u.uuid());
    assert_eq!(count(&h, &of(id)).await, 1, "the racing increment outlived its strand");

    assert_eq!(skein_models::semaphore::sweep_orphans(&mut conn).await.unwrap(), 1);
    assert_eq!(count(&h, &of(id)).await, 0);
    assert_eq!(h.sems(live).await, vec!["kept"], "a live strand's semaphores are not orphans");
}

#[tokio::test]
async fn r13_archive_partitions_are_maintained_and_old_ones_dropped() {
    let h = harness().await;
    let mut conn = h.pool().acquire().await.unwrap();
    sqlx::query("CREATE TABLE strand_archive_200001 PARTITION OF strand_archive FOR VALUES FROM ('2000-01-01') TO ('2000-02-01')")
        .execute(&mut *conn)
        .await
        .unwrap();
    let dropped = archive::maintain(&mut conn, 3).await.unwrap();
    assert_eq!(dropped, vec!["strand_archive_200001"]);
    let this_month = chrono::Utc::now().format("strand_archive_%Y%m").to_string();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&this_month).fetch_one(&mut *conn).await.unwrap();
    assert!(exists);
}

// R14 ---------------------------------------------------------------------

#[tokio::test]
async fn r14_failing_label_rolls_back_records_error_retries_with_backoff_and_pages() {
    let h = harness().await;
    let id = h.start(MeddlerFrame { mode: "fail_until_told".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    h.incr(id, MeddlerSem::Poke).await;
    let tag = format!("strand-failing:{id}");
    let mut conn = h.pool().acquire().await.unwrap();

    for attempt in 1..=3 {
        h.step(id).await.assert_failed("still broken");
        let row = h.strand(id).await;
        assert_eq!(row.try_, attempt);
        assert!(row.last_error.as_deref().unwrap().contains("still broken"));
        assert!(row.last_error_at.is_some());
        assert!(row.lease < chrono::Utc::now(), "the lease is released");
        let ahead = seconds_until_schedule(&h, id).await;
        assert!(ahead > -0.5 && ahead <= 2.0, "retried after a capped backoff, got {ahead}");
        let open = page::by_tag(&mut conn, &tag).await.unwrap();
        assert_eq!(open.len(), usize::from(attempt >= 3), "paged after 3 failures, not before");
    }
    assert_eq!(count(&h, "SELECT count(*) FROM spec_write").await, 0, "each failure rolled back its write");
    assert_eq!(h.sems(id).await, vec!["poke"], "the failed step's decr was rolled back too");

    h.incr(id, MeddlerSem::Heal).await;
    h.step(id).await.assert_nap(3600);
    let row = h.strand(id).await;
    assert_eq!((row.try_, row.last_error), (0, None));
    assert_eq!(count(&h, "SELECT count(*) FROM spec_write").await, 1);
    let pages = page::by_tag(&mut conn, &tag).await.unwrap();
    assert!(pages.len() == 1 && pages[0].resolved_at.is_some(), "success resolves the page");
}

#[tokio::test]
async fn r14_a_failure_after_quick_hops_keeps_their_progress() {
    let h = harness().await;
    let id = h.start(StumblerFrame::default(), StumblerLabel::A).await;
    let reports = h.run(id).await;
    assert_eq!(reports.len(), 3, "A and B hop under one lease (in memory), C fails");
    reports[2].assert_failed("tripped at C");
    let row = h.strand(id).await;
    assert_eq!(row.label, "C", "the hops that succeeded are committed with the failure record");
    assert_eq!(row.stack[0]["visited"], json!(["A", "B"]), "with their frame changes, not the failed step's");
    assert_eq!(row.try_, 1);
}

/// Steps that write share transactions (engine/src/shared_tx.rs). A label
/// that writes and then fails spoils its group; its neighbours run again in
/// transactions of their own. Run many of both at once on one lane: every
/// counted step commits exactly once, no failed step's write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r14_a_failing_step_in_a_shared_transaction_costs_its_neighbours_a_replay_not_their_writes() {
    use skein_progs::bench::{StepFrame, StepLabel};
    let h = harness().await;
    sqlx::query("CREATE TABLE bench_count (strand_id uuid PRIMARY KEY, steps integer NOT NULL)").execute(h.pool()).await.unwrap();
    let (counters, hops, failing) = (200u32, 4u32, 20u32);
    for _ in 0..counters {
        h.start(StepFrame { hops, count: true, ..Default::default() }, StepLabel::Run).await;
    }
    for _ in 0..failing {
        h.start(MeddlerFrame { mode: "fail".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;
    }
    // Four connections: one lane, so writers share its transactions.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&h.db.url()).await.unwrap();
    let door = SideDoor { pool: h.pool().clone(), runner: h.runner.clone() };
    let runner = Runner::new(pool, registry()).with_config(test_config()).with_resources(Resources::default().with(door));
    let dispatcher = skein_engine::Dispatcher::new(runner, skein_engine::DispatchConfig { concurrency: 64, ..Default::default() });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(dispatcher.run(async move { stopped.await.ok(); }));
    let began = std::time::Instant::now();
    while count(&h, "SELECT count(*) FROM strand WHERE prog = 'Bench::Step'").await > 0 {
        assert!(began.elapsed() < Duration::from_secs(120), "the counters did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap();

    let per_strand: Vec<i32> = sqlx::query_scalar("SELECT steps FROM bench_count").fetch_all(h.pool()).await.unwrap();
    assert_eq!(per_strand.len(), counters as usize);
    assert!(per_strand.iter().all(|&n| n == hops as i32 + 1), "each step counted exactly once: {per_strand:?}");
    assert_eq!(count(&h, "SELECT count(*) FROM spec_write").await, 0, "no failed step's write committed");
    let failures = count(&h, "SELECT count(*) FROM strand WHERE prog = 'Spec::Meddler' AND try > 0").await;
    assert_eq!(failures, failing as i64, "every failing strand recorded its failure");
    let errors: Vec<String> = sqlx::query_scalar("SELECT DISTINCT last_error FROM strand WHERE prog = 'Spec::Meddler'").fetch_all(h.pool()).await.unwrap();
    assert_eq!(errors, vec!["disk on fire".to_string()], "they failed in their label, after writing");
}

// R15 ---------------------------------------------------------------------

#[tokio::test]
async fn r15_passed_deadline_pages_once_and_reaching_target_resolves_it() {
    let h = harness().await;
    let id = h.start(LateFrame { within_ms: 1000 }, LateLabel::Start).await;
    let reports = h.run(id).await;
    assert_eq!(reports.len(), 2, "Start hops to Wait, which naps");
    let ahead = seconds_until_schedule(&h, id).await;
    assert!(ahead <= 1.0, "the 3600 s nap was shortened to wake for the deadline, got {ahead}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tag = format!("deadline:{id}:Done");
    let mut conn = h.pool().acquire().await.unwrap();
    assert!(page::by_tag(&mut conn, &tag).await.unwrap().is_empty());
    h.drain().await;
    assert_eq!(page::by_tag(&mut conn, &tag).await.unwrap().len(), 1, "a passed deadline pages");
    assert!(seconds_until_schedule(&h, id).await > 3000.0, "once notified, the nap is no longer shortened");

    h.step(id).await.assert_nap(3600);
    assert_eq!(page::by_tag(&mut conn, &tag).await.unwrap().len(), 1, "it pages only once");

    h.incr(id, LateSem::Go).await;
    h.drain().await;
    let pages = page::by_tag(&mut conn, &tag).await.unwrap();
    assert!(pages[0].resolved_at.is_some(), "reaching the target resolves the page");
    assert!(h.strand(id).await.stack[0].get("deadline_at").is_none(), "and clears the deadline");
}

// R16 ---------------------------------------------------------------------

#[tokio::test]
async fn r16_step_overrunning_its_budget_is_abandoned_before_the_lease_expires() {
    let mut config = test_config();
    config.lease = Duration::from_secs(8);
    config.step_budget = Duration::from_millis(500);
    let h = harness_with(config).await;
    let id = h.start(MeddlerFrame { mode: "hang".into(), pokes_seen: 0 }, MeddlerLabel::Act).await;

    let report = h.step(id).await;
    report.assert_failed("time budget");
    let row = h.strand(id).await;
    assert_eq!(row.try_, 1);
    assert!(row.lease < chrono::Utc::now(), "the failure was recorded under the still-valid lease, and released");
    assert_eq!(count(&h, "SELECT count(*) FROM spec_write").await, 0, "the abandoned step committed nothing");

    // Retried: this time it is told to finish.
    h.incr(id, MeddlerSem::Done).await;
    h.step(id).await.assert_hop(MeddlerLabel::Done);
}

// R17 ---------------------------------------------------------------------

#[tokio::test]
async fn r17_unknown_prog_unknown_label_and_corrupt_stack_fail_only_their_strand() {
    let h = harness().await;
    let insert = |prog: &'static str, label: &'static str, stack: serde_json::Value| {
        let pool = h.pool().clone();
        async move {
            let id = Ubid::generate(UbidType::Strand);
            sqlx::query("INSERT INTO strand (id, prog, label, stack) VALUES ($1, $2, $3, $4)")
                .bind(id.uuid())
                .bind(prog)
                .bind(label)
                .bind(stack)
                .execute(&pool)
                .await
                .unwrap();
            id
        }
    };
    let no_prog = insert("Nope::Gone", "Start", json!([{}])).await;
    let no_label = insert("Demo::Counter", "Sing", json!([{"upto": 1, "at": 0}])).await;
    // (A stack that is not an array is refused by the table's CHECK constraint.)
    let empty = insert("Demo::Counter", "Count", json!([])).await;
    let not_object = insert("Demo::Counter", "Count", json!([7])).await;
    let unlinked = insert("Demo::Counter", "Count", json!([{"upto": 1}, {}])).await;
    let bad_frame = insert("Demo::Counter", "Count", json!([{"upto": "three"}])).await;
    let good = h.start(counter::Frame { upto: 2, at: 0 }, counter::Label::Count).await;

    // One step each (a drain could retry a failed strand whose random
    // backoff came out near zero, and count a second try).
    let reports = h.run(good).await;
    assert!(reports.iter().any(|r| r.exitval() == Some(&json!({"count": 2}))), "the good strand ran");
    for (id, needle) in [
        (no_prog, "unknown prog \"Nope::Gone\""),
        (no_label, "unknown label \"Sing\" for prog Demo::Counter (its labels: Count)"),
        (empty, "corrupt stack: stack is empty"),
        (not_object, "corrupt stack: stack frame 0 must be a json object, got a number"),
        (unlinked, "corrupt stack: stack frame 0 is above another frame"),
        (bad_frame, "does not fit Demo::Counter's frame type"),
    ] {
        h.step(id).await;
        let row = h.strand(id).await;
        let error = row.last_error.unwrap_or_default();
        assert!(error.contains(needle), "{id}: {error:?} lacks {needle:?}");
        assert_eq!(row.try_, 1);
        assert!(row.lease < chrono::Utc::now());
    }
}

// R18 ---------------------------------------------------------------------

#[tokio::test]
async fn r18_ubids_round_trip_through_the_database() {
    let h = harness().await;
    let id = h.start(NapperFrame { naps: vec![] }, NapperLabel::Next).await;
    let stored: Ubid = sqlx::query_scalar("SELECT id FROM strand").fetch_one(h.pool()).await.unwrap();
    assert_eq!(stored, id);
    assert_eq!(stored.kind(), Some(UbidType::Strand));
    assert!(stored.to_string().starts_with("st"));
}
