//! The progs `skein bench` runs. They do no work of their own, so what is
//! measured is the engine: leasing, stepping, committing. With `count` set,
//! each step also counts itself in `bench_count` in its own transaction,
//! which is how `skein bench --verify` proves every step committed exactly once.
//! `Bench::Remote` waits on a slow remote peer each step, beside them.

use std::time::{Duration, Instant};

use skein_engine::prelude::*;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn count_step(cx_tx: &mut sqlx::PgConnection, strand: Ubid) -> anyhow::Result<()> {
    Ok(skein_models::bench::count_step(cx_tx, strand.uuid()).await?)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `Bench::Step` (`Stepper`): hops `hops` times, then exits with its step count (and,
/// if it knows when it was enqueued, how long it waited for its first step).
pub struct Stepper;

labels! {
    pub enum StepLabel for Stepper { Run }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepFrame {
    pub hops: u32,
    #[serde(default)]
    pub at: u32,
    #[serde(default)]
    pub count: bool,
    /// Milliseconds each step waits first, holding no connection, as a remote
    /// call would (the takeover scenario needs steps that are caught mid-way).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub work_ms: u64,
    /// Microseconds since the epoch when it was enqueued (the latency scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<i64>,
    /// With `count`: the longest any step waited for and used its database
    /// connection (where a starved pool shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_us: Option<i64>,
}

/// What a `Bench::Step` exits with.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StepOutput {
    pub steps: u32,
    pub latency_us: Option<i64>,
    pub write_us: Option<i64>,
}

#[async_trait]
impl Prog for Stepper {
    const NAME: &'static str = "Bench::Step";
    type Label = StepLabel;
    type Frame = StepFrame;
    type Sem = NoSems;
    type Output = StepOutput;

    async fn run(cx: &mut Ctx<'_, Self>, _: StepLabel) -> Step<Self> {
        if cx.frame.at == 0 {
            cx.frame.latency_us = cx.frame.enqueued_us.map(|t| now_us() - t);
        }
        if cx.frame.work_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(cx.frame.work_ms)).await;
        }
        if cx.frame.count {
            let id = cx.id();
            let asked = Instant::now();
            count_step(cx.tx.conn().await?, id).await?;
            let took = asked.elapsed().as_micros() as i64;
            cx.frame.write_us = Some(cx.frame.write_us.unwrap_or(0).max(took));
        }
        if cx.frame.at < cx.frame.hops {
            cx.frame.at += 1;
            return hop(StepLabel::Run);
        }
        pop(StepOutput { steps: cx.frame.at + 1, latency_us: cx.frame.latency_us, write_us: cx.frame.write_us })
    }
}

/// `Bench::Fanout`: buds `children` one-step strands at once, reaps them all.
pub struct Fanout;

labels! {
    pub enum FanoutLabel for Fanout { Start, Reap, Done }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FanoutFrame {
    pub children: u32,
    #[serde(default)]
    pub count: bool,
    #[serde(default)]
    pub budded_us: Option<i64>,
    #[serde(default)]
    pub reaped: u64,
}

/// What a `Bench::Fanout` exits with: how long its children took, start to last reaped.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FanoutOutput {
    pub reaped: u64,
    pub budded_us: Option<i64>,
    pub done_us: i64,
}

#[async_trait]
impl Prog for Fanout {
    const NAME: &'static str = "Bench::Fanout";
    type Label = FanoutLabel;
    type Frame = FanoutFrame;
    type Sem = NoSems;
    type Output = FanoutOutput;

    async fn run(cx: &mut Ctx<'_, Self>, label: FanoutLabel) -> Step<Self> {
        if cx.frame.count {
            let id = cx.id();
            count_step(cx.tx.conn().await?, id).await?;
        }
        match label {
            FanoutLabel::Start => {
                let count = cx.frame.count;
                let kids = (0..cx.frame.children).map(|_| StepFrame { count, ..Default::default() });
                cx.bud_many(kids, StepLabel::Run).await?;
                cx.frame.budded_us = Some(now_us());
                hop(FanoutLabel::Reap)
            }
            FanoutLabel::Reap => {
                let reaped = cx.reap::<Stepper>().await?;
                cx.frame.reaped += reaped.exited.len() as u64;
                reaped.hop_when_done(FanoutLabel::Done)
            }
            FanoutLabel::Done => pop(FanoutOutput { reaped: cx.frame.reaped, budded_us: cx.frame.budded_us, done_us: now_us() }),
        }
    }
}

/// `Bench::Sleeper`: naps for a day; the `sleepers` scenario fills the table with them.
pub struct Sleeper;

labels! {
    pub enum SleeperLabel for Sleeper { Sleep }
}

#[async_trait]
impl Prog for Sleeper {
    const NAME: &'static str = "Bench::Sleeper";
    type Label = SleeperLabel;
    type Frame = NoFrame;
    type Sem = NoSems;
    type Output = Msg;

    async fn run(_: &mut Ctx<'_, Self>, _: SleeperLabel) -> Step<Self> {
        nap(86400)
    }
}

/// `Bench::Remote`: each step reads, asks a remote peer on `port` that is
/// slow to answer (waiting up to `wait_ms`), then writes what it heard, and
/// goes round again until `stop` is set. With `hold` it begins its transaction first and keeps it
/// across the wait: the shape R19 forbids (debug builds refuse it), measured
/// so the difference shows.
pub struct Remote;

labels! {
    pub enum RemoteLabel for Remote { Ask }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteFrame {
    pub port: u16,
    pub wait_ms: u64,
    #[serde(default)]
    pub hold: bool,
    #[serde(default)]
    pub asked: u64,
}

/// One call to the peer: connect, send a line, wait for an answer until `wait`.
async fn ask_peer(port: u16, wait: Duration) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    skein_engine::remote::check(|| format!("tcp 127.0.0.1:{port}"))?;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"status\n").await?;
    let mut answer = [0u8; 64];
    Ok(matches!(tokio::time::timeout(wait, stream.read(&mut answer)).await, Ok(Ok(n)) if n > 0))
}

semaphores! {
    /// `stop`: exit with how many times the peer was asked.
    pub enum RemoteSem { Stop = "stop" }
}

/// What a `Bench::Remote` exits with.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RemoteOutput {
    pub asked: u64,
}

#[async_trait]
impl Prog for Remote {
    const NAME: &'static str = "Bench::Remote";
    type Label = RemoteLabel;
    type Frame = RemoteFrame;
    type Sem = RemoteSem;
    type Output = RemoteOutput;

    async fn run(cx: &mut Ctx<'_, Self>, _: RemoteLabel) -> Step<Self> {
        if cx.is_set(RemoteSem::Stop) {
            return pop(RemoteOutput { asked: cx.frame.asked });
        }
        let id = cx.id();
        if cx.frame.hold {
            skein_models::bench::round_trip(cx.tx.conn().await?).await?;
        } else {
            skein_models::bench::round_trip(&mut *cx.read().await?).await?;
        }
        let wait = Duration::from_millis(cx.frame.wait_ms).min(cx.time_left());
        ask_peer(cx.frame.port, wait).await?;
        cx.frame.asked += 1;
        count_step(cx.tx.conn().await?, id).await?;
        nap(0)
    }
}

pub fn registry() -> skein_engine::Registry {
    skein_engine::Registry::new().with::<Stepper>().with::<Fanout>().with::<Sleeper>().with::<Remote>()
}
