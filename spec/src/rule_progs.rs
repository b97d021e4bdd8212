//! Progs that exist only to pin down one engine rule each.

use std::time::Duration;

use skein_engine::prelude::*;

use crate::SideDoor;

/// Naps each of `naps` in turn, then exits.
pub struct Napper;
labels! { pub enum NapperLabel for Napper { Next } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NapperFrame {
    pub naps: Vec<f64>,
}
#[async_trait]
impl Prog for Napper {
    const NAME: &'static str = "Spec::Napper";
    type Label = NapperLabel;
    type Frame = NapperFrame;
    type Sem = NoSems;
    type Output = Msg;
    async fn run(cx: &mut Ctx<'_, Self>, _: NapperLabel) -> Step<Self> {
        if cx.frame.naps.is_empty() {
            return pop("rested");
        }
        nap(cx.frame.naps.remove(0))
    }
}

/// Writes a row in its step, then acts through the side door as `mode` says:
/// - "take_lease": another worker takes the lease mid-step;
/// - "poke": an operator increments `poke` mid-step, then the label naps;
/// - "fail": the label fails after writing;
/// - "hang": the label never finishes.
///
/// It consumes `poke` when it sees it, and exits on `done`.
pub struct Meddler;
labels! { pub enum MeddlerLabel for Meddler { Act, Done } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MeddlerFrame {
    pub mode: String,
    #[serde(default)]
    pub pokes_seen: u32,
}
semaphores! { pub enum MeddlerSem { Done = "done", Poke = "poke", Heal = "heal" } }
#[async_trait]
impl Prog for Meddler {
    const NAME: &'static str = "Spec::Meddler";
    type Label = MeddlerLabel;
    type Frame = MeddlerFrame;
    type Sem = MeddlerSem;
    type Output = Msg;
    async fn run(cx: &mut Ctx<'_, Self>, label: MeddlerLabel) -> Step<Self> {
        if label == MeddlerLabel::Done {
            return pop("done");
        }
        let door = cx.resource::<SideDoor>()?.clone();
        door.note(&format!("{} ran", cx.frame.mode)).await;
        sqlx::query("INSERT INTO spec_write (text) VALUES ($1)").bind(&cx.frame.mode).execute(cx.tx.conn().await?).await?;
        if cx.take(MeddlerSem::Done) {
            return hop(MeddlerLabel::Done);
        }
        if cx.take(MeddlerSem::Poke) {
            cx.frame.pokes_seen += 1;
        }
        match cx.frame.mode.as_str() {
            "take_lease" => {
                sqlx::query("UPDATE strand SET lease = now() + interval '1 hour' WHERE id = $1")
                    .bind(cx.id().uuid())
                    .execute(&door.pool)
                    .await?;
                hop(MeddlerLabel::Done)
            }
            "poke" => {
                let mut conn = door.pool.acquire().await?;
                skein_engine::enqueue::incr(&mut conn, cx.id(), MeddlerSem::Poke).await?;
                nap(3600)
            }
            "fail" => anyhow::bail!("disk on fire"),
            "fail_until_told" if !cx.is_set(MeddlerSem::Heal) => anyhow::bail!("still broken"),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                nap(1)
            }
            _ => nap(3600),
        }
    }
}

/// A parent that buds `children` counters, and during its reap step runs
/// one of them to its exit through the side door, as another worker would.
pub struct Racer;
labels! { pub enum RacerLabel for Racer { Start, Reap, Done } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RacerFrame {
    pub children: u32,
    #[serde(default)]
    pub reaped: u32,
}
#[derive(Debug, Serialize, Deserialize)]
pub struct RacerOutput {
    pub reaped: u32,
}
#[async_trait]
impl Prog for Racer {
    const NAME: &'static str = "Spec::Racer";
    type Label = RacerLabel;
    type Frame = RacerFrame;
    type Sem = NoSems;
    type Output = RacerOutput;
    async fn run(cx: &mut Ctx<'_, Self>, label: RacerLabel) -> Step<Self> {
        match label {
            RacerLabel::Start => {
                for _ in 0..cx.frame.children {
                    cx.bud(skein_progs::demo::counter::Frame { upto: 1, at: 0 }, skein_progs::demo::counter::Label::Count)
                        .await?;
                }
                hop(RacerLabel::Reap)
            }
            RacerLabel::Reap => {
                let reaped = cx.reap::<skein_progs::demo::counter::Counter>().await?;
                cx.frame.reaped += reaped.exited.len() as u32;
                if reaped.running > 0 {
                    // A child exits after this step's reap, before its nap is written.
                    let door = cx.resource::<SideDoor>()?.clone();
                    door.runner.drain().await?;
                }
                reaped.hop_when_done(RacerLabel::Done)
            }
            RacerLabel::Done => pop(RacerOutput { reaped: cx.frame.reaped }),
        }
    }
}

/// Pushes a sub-prog that waits forever; its destroy label counts teardowns.
pub struct Teardown;
labels! { pub enum TeardownLabel for Teardown { Start, Wait, Teardown, Gone } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TeardownFrame {
    #[serde(default)]
    pub teardowns: u32,
}
#[async_trait]
impl Prog for Teardown {
    const NAME: &'static str = "Spec::Teardown";
    type Label = TeardownLabel;
    type Frame = TeardownFrame;
    type Sem = NoSems;
    type Output = Msg;
    const DESTROY: Option<TeardownLabel> = Some(TeardownLabel::Teardown);
    async fn run(cx: &mut Ctx<'_, Self>, label: TeardownLabel) -> Step<Self> {
        match label {
            TeardownLabel::Start => push(WaiterFrame {}, WaiterLabel::Wait),
            TeardownLabel::Wait => nap(3600),
            TeardownLabel::Teardown => {
                cx.frame.teardowns += 1;
                hop(TeardownLabel::Gone)
            }
            TeardownLabel::Gone => nap(3600),
        }
    }
}

/// Waits forever; has no destroy label of its own.
pub struct Waiter;
labels! { pub enum WaiterLabel for Waiter { Wait } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WaiterFrame {}
#[async_trait]
impl Prog for Waiter {
    const NAME: &'static str = "Spec::Waiter";
    type Label = WaiterLabel;
    type Frame = WaiterFrame;
    type Sem = NoSems;
    type Output = Msg;
    async fn run(_: &mut Ctx<'_, Self>, _: WaiterLabel) -> Step<Self> {
        nap(3600)
    }
}

/// Naps `every` seconds, forever, its frame unchanged: work that never runs dry.
pub struct Ticker;
labels! { pub enum TickerLabel for Ticker { Tick } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TickerFrame {
    pub every: f64,
}
#[async_trait]
impl Prog for Ticker {
    const NAME: &'static str = "Spec::Ticker";
    type Label = TickerLabel;
    type Frame = TickerFrame;
    type Sem = NoSems;
    type Output = Msg;
    async fn run(cx: &mut Ctx<'_, Self>, _: TickerLabel) -> Step<Self> {
        nap(cx.frame.every)
    }
}

/// Must reach `Done` within `within_ms`; gets there when `go` is set.
pub struct Late;
labels! { pub enum LateLabel for Late { Start, Wait, Done } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LateFrame {
    pub within_ms: u64,
}
semaphores! { pub enum LateSem { Go = "go" } }
#[async_trait]
impl Prog for Late {
    const NAME: &'static str = "Spec::Late";
    type Label = LateLabel;
    type Frame = LateFrame;
    type Sem = LateSem;
    type Output = Msg;
    async fn run(cx: &mut Ctx<'_, Self>, label: LateLabel) -> Step<Self> {
        match label {
            LateLabel::Start => {
                cx.register_deadline(LateLabel::Done, Duration::from_millis(cx.frame.within_ms));
                hop(LateLabel::Wait)
            }
            LateLabel::Wait if cx.take(LateSem::Go) => hop(LateLabel::Done),
            LateLabel::Wait => nap(3600),
            LateLabel::Done => nap(3600),
        }
    }
}

/// Hops A -> B -> C quickly (pure steps, coalesced in memory), then fails at C.
pub struct Stumbler;
labels! { pub enum StumblerLabel for Stumbler { A, B, C } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StumblerFrame {
    #[serde(default)]
    pub visited: Vec<String>,
}
#[async_trait]
impl Prog for Stumbler {
    const NAME: &'static str = "Spec::Stumbler";
    type Label = StumblerLabel;
    type Frame = StumblerFrame;
    type Sem = NoSems;
    type Output = Msg;
    async fn run(cx: &mut Ctx<'_, Self>, label: StumblerLabel) -> Step<Self> {
        cx.frame.visited.push(label.name().to_string());
        match label {
            StumblerLabel::A => hop(StumblerLabel::B),
            StumblerLabel::B => hop(StumblerLabel::C),
            StumblerLabel::C => anyhow::bail!("tripped at C"),
        }
    }
}

/// Every prog the rule tests use, with the demo progs they build on.
pub fn registry() -> skein_engine::Registry {
    skein_progs::registry()
        .with::<Napper>()
        .with::<Meddler>()
        .with::<Racer>()
        .with::<Teardown>()
        .with::<Waiter>()
        .with::<Ticker>()
        .with::<Late>()
        .with::<Stumbler>()
        .with::<crate::worker_progs::Journal>()
        .with::<crate::worker_progs::Poison>()
}
