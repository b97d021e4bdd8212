//! `Demo::Doubler`: a sub-prog that returns twice its input to its caller.

use skein_engine::prelude::*;

pub struct Doubler;

labels! {
    pub enum Label for Doubler { Start }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub n: u64,
}

/// What the doubler returns to its caller.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub value: u64,
}

#[async_trait]
impl Prog for Doubler {
    const NAME: &'static str = "Demo::Doubler";
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Output;

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Start => pop(Output { value: cx.frame.n * 2 }),
        }
    }
}
