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

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// How far each district's counter counts.
    pub districts: Vec<u32>,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub doubled: Option<u64>,
}

#[async_trait]
impl Prog for Census {
    const NAME: &'static str = "Demo::Census";
    type Label = Label;
    type Frame = Frame;
    const DESTROY: Option<Label> = Some(Label::Cancel);
    const SEMAPHORES: &'static [&'static str] = &["finish"];

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
                let reaped = cx.reap().await?;
                for child in &reaped.exited {
                    cx.frame.total += child.exitval["count"].as_u64().unwrap_or(0);
                }
                reaped.hop_when_done(Label::Double)
            }
            Label::Double => match cx.retval() {
                Some(r) => {
                    cx.frame.doubled = r["value"].as_u64();
                    hop(Label::Wait)
                }
                None => push(doubler::Frame { n: cx.frame.total }, doubler::Label::Start),
            },
            Label::Wait => {
                if cx.take("finish") {
                    return pop(json!({ "total": cx.frame.total, "doubled": cx.frame.doubled }));
                }
                nap(3600)
            }
            Label::Cancel => pop("census cancelled"),
        }
    }
}
