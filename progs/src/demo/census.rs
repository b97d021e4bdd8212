//! `Demo::Census`: count in parallel, double the total, then wait to be told.
//!
//! Start buds one counter per district -> Tally reaps them as they exit ->
//! Double calls the doubler sub-prog -> Wait sleeps until `finish` is set,
//! then exits with the result. `destroy` at any point ends it early.

use std::time::Duration;

use skein_engine::prelude::*;

use super::{counter, doubler};

pub struct Census;

labels! {
    pub enum Label for Census { Start, Tally, Double, Wait, Cancel }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// How far each district's counter counts.
    pub districts: Vec<u32>,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub doubled: Option<u64>,
}

semaphores! {
    /// `finish`: stop waiting and exit with the result.
    pub enum Sem { Finish = "finish" }
}

/// What a census exits with.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub total: u64,
    pub doubled: Option<u64>,
    /// Destroyed before it was told to finish (written only when true, so a
    /// finished census reads `{"total":16,"doubled":32}`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

#[async_trait]
impl Prog for Census {
    const NAME: &'static str = "Demo::Census";
    type Label = Label;
    type Frame = Frame;
    type Sem = Sem;
    type Output = Output;
    const DESTROY: Option<Label> = Some(Label::Cancel);

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Start => {
                for &upto in &cx.frame.districts.clone() {
                    cx.bud(counter::Frame { upto, at: 0 }, counter::Label::Count).await?;
                }
                cx.register_deadline(Label::Wait, Duration::from_secs(600));
                hop(Label::Tally)
            }
            Label::Tally => {
                let reaped = cx.reap::<counter::Counter>().await?;
                for child in &reaped.exited {
                    cx.frame.total += u64::from(child.output.count);
                }
                reaped.hop_when_done(Label::Double)
            }
            Label::Double => match cx.retval::<doubler::Doubler>()? {
                Some(doubled) => {
                    cx.frame.doubled = Some(doubled.value);
                    hop(Label::Wait)
                }
                None => push(doubler::Frame { n: cx.frame.total }, doubler::Label::Start),
            },
            Label::Wait => {
                if cx.take(Sem::Finish) {
                    return pop(Output { total: cx.frame.total, doubled: cx.frame.doubled, cancelled: false });
                }
                nap(3600)
            }
            Label::Cancel => pop(Output { total: cx.frame.total, doubled: cx.frame.doubled, cancelled: true }),
        }
    }
}
