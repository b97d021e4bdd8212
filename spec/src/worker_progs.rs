//! Progs for the tests that kill, stop and starve real worker processes
//! (`spec-respirate` serves them beside every shipped prog).

use std::time::Duration;

use skein_engine::prelude::*;

/// Steps `steps` times, each step journaled (strand, step, worker pid) in the
/// step's own transaction, so a test can see exactly which process committed
/// which step, and when. Each step first "works" for `work_ms` with no
/// database held, as a remote call would.
pub struct Journal;
labels! { pub enum JournalLabel for Journal { Step } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JournalFrame {
    pub steps: u32,
    #[serde(default)]
    pub work_ms: u64,
    #[serde(default)]
    pub at: u32,
}
#[derive(Debug, Serialize, Deserialize)]
pub struct JournalOutput {
    pub steps: u32,
}
#[async_trait]
impl Prog for Journal {
    const NAME: &'static str = "Spec::Journal";
    type Label = JournalLabel;
    type Frame = JournalFrame;
    type Sem = NoSems;
    type Output = JournalOutput;
    async fn run(cx: &mut Ctx<'_, Self>, _: JournalLabel) -> Step<Self> {
        if cx.frame.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cx.frame.work_ms)).await;
        }
        let (id, step) = (cx.id().uuid(), cx.frame.at as i32);
        sqlx::query("INSERT INTO spec_journal (strand_id, step, pid) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(step)
            .bind(std::process::id() as i32)
            .execute(cx.tx.conn().await?)
            .await?;
        cx.frame.at += 1;
        if cx.frame.at < cx.frame.steps {
            return hop(JournalLabel::Step);
        }
        pop(JournalOutput { steps: cx.frame.at })
    }
}

/// A poison pill: its label takes its worker process down, every time.
pub struct Poison;
labels! { pub enum PoisonLabel for Poison { Swallow } }
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PoisonFrame {}
#[async_trait]
impl Prog for Poison {
    const NAME: &'static str = "Spec::Poison";
    type Label = PoisonLabel;
    type Frame = PoisonFrame;
    type Sem = NoSems;
    type Output = Msg;
    async fn run(_: &mut Ctx<'_, Self>, _: PoisonLabel) -> Step<Self> {
        std::process::abort()
    }
}
