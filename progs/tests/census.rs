//! Tests of the demo census, label by label and end to end: the way
//! `docs/writing-a-prog.md` shows to test a prog. Each runs against its own
//! fresh Postgres database.

use serde_json::json;
use skein_engine::testing::Harness;
use skein_progs::demo::{census, counter, doubler};

fn census(districts: Vec<u32>) -> census::Frame {
    census::Frame { districts, ..Default::default() }
}

#[tokio::test]
async fn start_buds_one_counter_per_district() {
    let h = Harness::new(skein_progs::registry()).await;
    let step = h.run_label(census(vec![2, 3]), census::Label::Start).await;
    step.assert_hop(census::Label::Tally);
    let counting = |upto| (counter::Label::Count, counter::Frame { upto, at: 0 });
    h.assert_budded(&step, &[counting(2), counting(3)]).await;
}

#[tokio::test]
async fn tally_waits_while_counters_run_then_adds_them_up() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census(vec![2, 3]), census::Label::Start).await;
    let counters = h.step(id).await.budded.clone();

    h.step(id).await.assert_nap(3600); // the last counter to exit wakes it sooner
    for c in counters {
        h.run(c).await;
    }
    h.step(id).await.assert_hop(census::Label::Double);
    assert_eq!(h.frame::<census::Census>(id).await.total, 5);
}

#[tokio::test]
async fn double_calls_the_doubler_and_keeps_its_answer() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census::Frame { total: 4, ..Default::default() }, census::Label::Double).await;
    let step = h.step(id).await;
    assert_eq!(h.pushed(&step, doubler::Label::Start).await.n, 4, "the doubler is given the total");
    h.step(id).await.assert_pop(json!({"value": 8}));
    h.step(id).await.assert_hop(census::Label::Wait);
    assert_eq!(h.frame::<census::Census>(id).await.doubled, Some(8));
}

#[tokio::test]
async fn wait_exits_when_told_to_finish() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census::Frame { total: 1, doubled: Some(2), ..Default::default() }, census::Label::Wait).await;
    h.step(id).await.assert_nap(3600);
    h.incr(id, "finish").await;
    h.step(id).await.assert_exit(json!({"total": 1, "doubled": 2}));
}

#[tokio::test]
async fn destroy_cancels_the_census_wherever_it_is() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census(vec![]), census::Label::Wait).await;
    h.incr(id, "destroy").await;
    h.step(id).await.assert_exit("census cancelled");
}

#[tokio::test]
async fn counter_counts_by_hopping() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(counter::Frame { upto: 2, at: 0 }, counter::Label::Count).await;
    let steps = h.run(id).await;
    assert_eq!(steps.len(), 3);
    steps[2].assert_exit(json!({"count": 2}));
}

#[tokio::test]
async fn the_whole_census_end_to_end() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census(vec![1, 2, 3]), census::Label::Start).await;
    h.drain().await;
    assert_eq!(h.strand(id).await.label, "Wait");
    h.incr(id, "finish").await;
    let last = h.drain().await.pop().unwrap();
    last.assert_exit(json!({"total": 6, "doubled": 12}));
}
