//! The strand's stack: a jsonb array of frames, top frame first.
//!
//! A frame is one json object holding the prog's own data next to the
//! engine's keys. Keeping both in one plain object is what lets an operator
//! read a stack as it is; this module is the one place that knows which keys
//! are the engine's.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The subject this frame drives (a host, a VM), when it is not the strand itself.
pub const SUBJECT_ID: &str = "subject_id";
/// `[caller prog, caller label]` on a frame made by `push`.
pub const LINK: &str = "link";
pub const DEADLINE_TARGET: &str = "deadline_target";
pub const DEADLINE_AT: &str = "deadline_at";
pub const DEADLINE_NOTIFIED: &str = "deadline_notified";
/// Set on the bottom frame once the destroy protocol has run.
pub const DESTROYING: &str = "destroying";

pub const ENGINE_KEYS: &[&str] = &[SUBJECT_ID, LINK, DEADLINE_TARGET, DEADLINE_AT, DEADLINE_NOTIFIED, DESTROYING];

pub type Frame = Map<String, Value>;

#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Top frame first; never empty.
    pub frames: Vec<Frame>,
}

impl Stack {
    pub fn parse(v: &Value) -> Result<Stack, String> {
        let items = v.as_array().ok_or_else(|| format!("stack must be a json array of frames, got {}", kind(v)))?;
        if items.is_empty() {
            return Err("stack is empty: a strand needs at least one frame".into());
        }
        let mut frames = Vec::with_capacity(items.len());
        for (i, f) in items.iter().enumerate() {
            let frame = f.as_object().ok_or_else(|| format!("stack frame {i} must be a json object, got {}", kind(f)))?;
            if i + 1 < items.len() && link(frame).is_none() {
                return Err(format!("stack frame {i} is above another frame but has no valid \"link\": [prog, label]"));
            }
            frames.push(frame.clone());
        }
        Ok(Stack { frames })
    }

    pub fn into_value(self) -> Value {
        Value::Array(self.frames.into_iter().map(Value::Object).collect())
    }

    pub fn top(&self) -> &Frame {
        &self.frames[0]
    }

    pub fn top_mut(&mut self) -> &mut Frame {
        &mut self.frames[0]
    }

    pub fn bottom(&self) -> &Frame {
        self.frames.last().expect("stack is never empty")
    }

    pub fn bottom_mut(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("stack is never empty")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `[prog, label]` a pushed frame returns to.
pub fn link(frame: &Frame) -> Option<(String, String)> {
    match frame.get(LINK)?.as_array()?.as_slice() {
        [Value::String(p), Value::String(l)] => Some((p.clone(), l.clone())),
        _ => None,
    }
}

/// Replace the prog's part of `frame` with `data` (its typed frame, serialized),
/// keeping the engine's keys. Engine keys in `data` are ignored.
pub fn replace_prog_data(frame: &mut Frame, data: Value) -> Result<(), String> {
    let data = match data {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(format!("a prog's frame must serialize to a json object, got {}", kind(&other))),
    };
    frame.retain(|k, _| ENGINE_KEYS.contains(&k.as_str()));
    for (k, v) in data {
        if !ENGINE_KEYS.contains(&k.as_str()) {
            frame.insert(k, v);
        }
    }
    Ok(())
}

/// "Reach `target` by `at`", registered on a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Deadline {
    pub target: String,
    pub at: DateTime<Utc>,
    pub notified: bool,
}

impl Deadline {
    pub fn read(frame: &Frame) -> Option<Deadline> {
        let target = frame.get(DEADLINE_TARGET)?.as_str()?.to_string();
        let at = frame.get(DEADLINE_AT)?.as_str()?.parse().ok()?;
        let notified = frame.get(DEADLINE_NOTIFIED).and_then(Value::as_bool).unwrap_or(false);
        Some(Deadline { target, at, notified })
    }

    pub fn write(&self, frame: &mut Frame) {
        frame.insert(DEADLINE_TARGET.into(), Value::String(self.target.clone()));
        frame.insert(DEADLINE_AT.into(), Value::String(self.at.to_rfc3339()));
        frame.insert(DEADLINE_NOTIFIED.into(), Value::Bool(self.notified));
    }

    pub fn clear(frame: &mut Frame) {
        frame.remove(DEADLINE_TARGET);
        frame.remove(DEADLINE_AT);
        frame.remove(DEADLINE_NOTIFIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn corrupt_stacks_are_described() {
        assert!(Stack::parse(&json!({"a": 1})).unwrap_err().contains("json array"));
        assert!(Stack::parse(&json!([])).unwrap_err().contains("empty"));
        assert!(Stack::parse(&json!([1])).unwrap_err().contains("frame 0 must be a json object"));
        assert!(Stack::parse(&json!([{}, {}])).unwrap_err().contains("no valid \"link\""));
        assert!(Stack::parse(&json!([{"link": ["P", "l"]}, {}])).is_ok());
    }

    #[test]
    fn prog_data_replaces_only_the_progs_keys() {
        let mut f = json!({"link": ["P", "l"], "old": 1, "n": 2}).as_object().unwrap().clone();
        replace_prog_data(&mut f, json!({"n": 3, "link": "ignored"})).unwrap();
        assert_eq!(Value::Object(f), json!({"link": ["P", "l"], "n": 3}));
    }
}
