//! The host-touching prog of docs/writing-a-prog.md ("A prog that talks to
//! a host"), compiled and tested here exactly as the page shows it: a label
//! shaped read / ask the host / write, and its fast tests with a scripted
//! host. It lives in a test so nothing of it ships.

use serde_json::json;
use skein_engine::prelude::*;
use skein_engine::testing::Harness;
use skein_engine::{enqueue, Registry};
use skein_models::event;
use skein_progs::host::Host;
use skein_progs::ssh::scripted::Scripted;

mod support;

// --- the prog ------------------------------------------------------------------

/// `Host::DiskUse`: how much the agent's root directory holds and how much
/// room is left on its disk, recorded as an event of the host.
pub struct DiskUse;

labels! {
    pub enum Label for DiskUse { Ask }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {}

/// What it learned (and returns).
#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub used_kib: u64,
    pub free_kib: u64,
}

#[async_trait]
impl Prog for DiskUse {
    const NAME: &'static str = "Host::DiskUse";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Usage;

    async fn run(cx: &mut Ctx<'_, Self>, _: Label) -> Step<Self> {
        // Read: the host's row and key, on a connection given back at once.
        let host = Host::load(cx).await?;
        // Ask the host, holding nothing; the call is bounded by the step's time left.
        let du = skein_progs::cmd!("du -sk {root} | cut -f1 && df -k --output=avail {root} | tail -n1", root = host.root())?;
        let said = host.exec(&du).await?.stdout_str();
        let (used_kib, free_kib) = two_numbers(&said).ok_or_else(|| anyhow::anyhow!("du and df said {said:?}, not two numbers"))?;
        // Write, at the end: commits with the step, or not at all.
        let usage = Usage { used_kib, free_kib };
        event::record(cx.tx.conn().await?, host.row.id, "disk-use", "system", &serde_json::to_value(&usage)?).await?;
        pop(usage)
    }
}

/// A fact from what the host printed: two numbers, one a line.
fn two_numbers(said: &str) -> Option<(u64, u64)> {
    let mut lines = said.lines().map(|l| l.trim().parse::<u64>());
    match (lines.next(), lines.next(), lines.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Some((a, b)),
        _ => None,
    }
}

// --- its tests -----------------------------------------------------------------

/// A harness that runs `DiskUse` against a scripted host, and the host's
/// id (the strand is started on it).
async fn disk_use_of_a_scripted_host() -> (Harness, Scripted, Ubid) {
    let mut h = Harness::new(Registry::new().with::<DiskUse>()).await;
    let host = support::script_hosts(&mut h);
    let id = support::host_row(&h, skein_models::vm_host::HostState::Accepting).await;
    enqueue::start_for(&mut h.pool().acquire().await.unwrap(), id, Frame {}, Label::Ask).await.unwrap();
    (h, host, id)
}

#[tokio::test]
async fn the_disk_use_is_recorded_as_an_event_of_the_host() {
    let (h, host, id) = disk_use_of_a_scripted_host().await;
    host.answer("du -sk", "1200\n880000\n");
    h.step(id).await.assert_exit(json!({ "used_kib": 1200, "free_kib": 880000 }));
    assert_eq!(support::event_kinds(&h, id).await, ["disk-use"]);
    assert_eq!(host.sent(), ["du -sk /var/lib/skein | cut -f1 && df -k --output=avail /var/lib/skein | tail -n1"]);
}

#[tokio::test]
async fn a_host_that_does_not_answer_fails_the_step_which_is_retried() {
    let (h, host, id) = disk_use_of_a_scripted_host().await;
    host.go_down();
    h.step(id).await.assert_failed("does not answer");
    assert!(support::event_kinds(&h, id).await.is_empty(), "nothing written");
}

#[tokio::test]
async fn an_answer_that_is_not_two_numbers_fails_the_step_and_says_what_came() {
    let (h, host, id) = disk_use_of_a_scripted_host().await;
    host.answer("du -sk", "du: cannot access '/var/lib/skein'\n");
    h.step(id).await.assert_failed("du and df said");
}
