//! Tests of the demo census, label by label and end to end: the way
//! `docs/writing-a-prog.md` shows to test a prog. Each runs against its own
//! fresh Postgres database.

use skein_engine::prelude::*;
use skein_engine::testing::Harness;
use skein_engine::Registry;
use skein_progs::demo::{census, counter, doubler};

fn census(districts: Vec<u32>) -> census::Frame {
    census::Frame { districts, ..Default::default() }
}

#[tokio::test]
async fn start_buds_one_counter_per_district() {
    let h = Harness::new(skein_progs::registry()).await;
    h.run_label(census(vec![2, 3]), census::Label::Start).await.assert_hop(census::Label::Tally).assert_buds(2);
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
    h.step(id).await.assert_push(doubler::Label::Start);
    h.step(id).await.assert_pop(doubler::Output { value: 8 });
    h.step(id).await.assert_hop(census::Label::Wait);
    assert_eq!(h.frame::<census::Census>(id).await.doubled, Some(8));
}

#[tokio::test]
async fn wait_exits_when_told_to_finish() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census::Frame { total: 1, doubled: Some(2), ..Default::default() }, census::Label::Wait).await;
    h.step(id).await.assert_nap(3600);
    h.incr(id, census::Sem::Finish).await;
    h.step(id).await.assert_exit(census::Output { total: 1, doubled: Some(2), cancelled: false });
}

#[tokio::test]
async fn destroy_cancels_the_census_wherever_it_is() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census(vec![]), census::Label::Wait).await;
    h.incr(id, Signal::DESTROY).await;
    h.step(id).await.assert_exit(census::Output { cancelled: true, ..Default::default() });
}

#[tokio::test]
async fn counter_counts_by_hopping() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(counter::Frame { upto: 2, at: 0 }, counter::Label::Count).await;
    let steps = h.run(id).await;
    assert_eq!(steps.len(), 3);
    steps[2].assert_exit(counter::Output { count: 2 });
}

#[tokio::test]
async fn the_whole_census_end_to_end() {
    let h = Harness::new(skein_progs::registry()).await;
    let id = h.start(census(vec![1, 2, 3]), census::Label::Start).await;
    h.drain().await;
    assert_eq!(h.strand(id).await.label, "Wait");
    h.incr(id, census::Sem::Finish).await;
    let last = h.drain().await.pop().unwrap();
    last.assert_exit(census::Output { total: 6, doubled: Some(12), cancelled: false });
}

/// Stands in for `Demo::Counter` as a release that changed its output would:
/// its count is not a number.
struct BadCounter;

labels! {
    enum BadCounterLabel for BadCounter { Count }
}

#[async_trait]
impl Prog for BadCounter {
    const NAME: &'static str = "Demo::Counter";
    type Label = BadCounterLabel;
    type Frame = NoFrame;
    type Sem = NoSems;
    type Output = Value;

    async fn run(_: &mut Ctx<'_, Self>, _: BadCounterLabel) -> Step<Self> {
        pop(json!({"count": "seven"}))
    }
}

/// Stands in for `Demo::Doubler`, returning its answer under another name.
struct BadDoubler;

labels! {
    enum BadDoublerLabel for BadDoubler { Start }
}

#[async_trait]
impl Prog for BadDoubler {
    const NAME: &'static str = "Demo::Doubler";
    type Label = BadDoublerLabel;
    type Frame = NoFrame;
    type Sem = NoSems;
    type Output = Value;

    async fn run(_: &mut Ctx<'_, Self>, _: BadDoublerLabel) -> Step<Self> {
        pop(json!({"doubled": 8}))
    }
}

#[tokio::test]
async fn a_childs_wrong_output_fails_the_tally_and_loses_nothing() {
    let h = Harness::new(Registry::new().with::<census::Census>().with::<BadCounter>()).await;
    let id = h.start(census(vec![7]), census::Label::Start).await;
    let child = h.step(id).await.budded[0];
    h.run(child).await.last().unwrap().assert_exit(json!({"count": "seven"}));

    h.step(id).await.assert_failed(&format!(
        "child strand {child} of Demo::Census returned {{\"count\":\"seven\"}}, which is not a Demo::Counter output: invalid type: string \"seven\", expected u32"
    ));
    assert!(h.try_strand(child).await.is_some(), "the failed step reaped nothing: the child and its output are still there");
    assert_eq!(h.frame::<census::Census>(id).await.total, 0, "no bad count was added as zero");
}

#[tokio::test]
async fn a_sub_progs_wrong_output_fails_the_callers_step() {
    let h = Harness::new(Registry::new().with::<census::Census>().with::<BadDoubler>()).await;
    let id = h.start(census::Frame { total: 4, ..Default::default() }, census::Label::Double).await;
    h.step(id).await.assert_push(doubler::Label::Start);
    h.step(id).await.assert_pop(json!({"doubled": 8}));
    h.step(id).await.assert_failed("returned {\"doubled\":8}, which is not a Demo::Doubler output: missing field `value`");
    assert_eq!(h.frame::<census::Census>(id).await.doubled, None);
}
