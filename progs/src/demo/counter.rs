//! `Demo::Counter`: count to `upto`, one hop per number, and exit with the count.

use skein_engine::prelude::*;

pub struct Counter;

labels! {
    pub enum Label for Counter { Count }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub upto: u32,
    pub at: u32,
}

/// What a counter exits with.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub count: u32,
}

#[async_trait]
impl Prog for Counter {
    const NAME: &'static str = "Demo::Counter";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Output;

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Count if cx.frame.at < cx.frame.upto => {
                cx.frame.at += 1;
                hop(Label::Count)
            }
            Label::Count => pop(Output { count: cx.frame.at }),
        }
    }
}
