//! The interactive prompt: rustyline for editing and history (kept across
//! sessions), and tab completion that knows the grammar (commands, flags)
//! and the data (prog names, labels, semaphores, states, and the ids of
//! live strands, pages, hosts and VMs, refreshed before each prompt).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::CommandFactory;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};
use skein_engine::Registry;
use skein_models::inspect::{self, StrandSort, StrandState};
use skein_models::Ubid;

use crate::cmd::session::{OpsOptions, Session};
use super::{execute, parse_line, split_commands, Line, Parsed};
use crate::render;

/// What completion draws ids from; read from the database before each prompt.
#[derive(Default)]
struct Known {
    /// Live strands and their progs (for semaphore completion).
    strands: BTreeMap<String, String>,
    /// Open pages, hosts and VMs not destroyed: what can still be acted on.
    pages: Vec<String>,
    hosts: Vec<String>,
    vms: Vec<String>,
    projects: Vec<String>,
}

async fn refresh(s: &Session) -> Result<Known, sqlx::Error> {
    let recent = inspect::recent_ids(&mut *s.pool.acquire().await?).await?;
    let show = |v: Vec<uuid::Uuid>| v.into_iter().map(|u| Ubid::from_uuid(u).to_string()).collect();
    Ok(Known {
        strands: recent.strands.into_iter().map(|(id, prog)| (Ubid::from_uuid(id).to_string(), prog)).collect(),
        pages: show(recent.pages),
        hosts: show(recent.hosts),
        vms: show(recent.vms),
        projects: recent.projects,
    })
}

pub async fn run(s: &Session, opts: &OpsOptions, history: Option<PathBuf>) -> anyhow::Result<()> {
    let known = Arc::new(Mutex::new(Known::default()));
    // Tab lists every candidate (and completes what they share) rather than
    // cycling through them one at a time, where none is seen before it is chosen.
    let config = Config::builder().completion_type(CompletionType::List).build();
    let mut editor: Editor<Completion, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(Completion { registry: s.registry.clone(), known: known.clone() }));
    let history = history.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".skein_history")));
    if let Some(path) = &history {
        let _ = editor.load_history(path); // a first session has none
    }
    println!("skein console as {} on {}: `help` lists commands, Tab completes, Ctrl-D leaves", s.operator, s.database);
    loop {
        if let Ok(k) = refresh(s).await {
            *known.lock().unwrap_or_else(|p| p.into_inner()) = k;
        }
        let line = match tokio::task::block_in_place(|| editor.readline("skein> ")) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        editor.add_history_entry(text)?;
        if let Some(path) = &history {
            if let Err(e) = editor.save_history(path) {
                eprintln!("warning: could not save history to {}: {e}", path.display());
            }
        }
        if matches!(text, "exit" | "quit") {
            break;
        }
        for words in split_commands(text) {
            let words = match words {
                Ok(words) => words,
                Err(e) => {
                    eprintln!("error: {e}");
                    break;
                }
            };
            let line = match parse_line(&words) {
                Parsed::Line(line) => line,
                Parsed::Help(text) => {
                    println!("{text}");
                    continue;
                }
                Parsed::Refused(message) => {
                    eprintln!("error: {}", render::clean(&message));
                    break;
                }
            };
            let opts = OpsOptions { json: opts.json || line.json, yes: opts.yes || line.yes, ..opts.clone() };
            match execute(s, line.ops, &opts).await {
                Ok(reply) => reply.print(opts.json),
                Err(e) => {
                    eprintln!("error: {}", render::clean(&format!("{e:#}")));
                    break;
                }
            }
        }
    }
    Ok(())
}

struct Completion {
    registry: Registry,
    known: Arc<Mutex<Known>>,
}

impl Completion {
    /// Candidates for the word being typed, given the words before it.
    fn candidates(&self, before: &[&str], partial: &str) -> Vec<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let root = Line::command();
        // Walk down the subcommands typed so far.
        let mut cmd = &root;
        let mut path = vec![];
        let mut positional = 0;
        let mut i = 0;
        while i < before.len() {
            let w = before[i];
            if let Some(sub) = cmd.find_subcommand(w) {
                cmd = sub;
                path.push(sub.get_name().to_string());
            } else if let Some(flag) = w.strip_prefix("--") {
                let takes_value = cmd.get_arguments().any(|a| a.get_long() == Some(flag) && a.get_action().takes_values());
                i += takes_value as usize;
            } else if !w.starts_with('-') {
                positional += 1;
            }
            i += 1;
        }
        let flag_before = before.last().and_then(|w| w.strip_prefix("--"));
        if let Some(flag) = flag_before.filter(|f| cmd.get_arguments().any(|a| a.get_long() == Some(*f) && a.get_action().takes_values())) {
            return self.values(flag, before, &known);
        }
        if partial.starts_with('-') {
            let mut flags: Vec<String> = cmd.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
            flags.push("--help".into());
            return flags;
        }
        if cmd.has_subcommands() {
            let mut subs: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
            if path.is_empty() {
                subs.extend(["exit".to_string()]);
            }
            return subs;
        }
        let group = path.first().map(String::as_str).unwrap_or("");
        let leaf = path.last().map(String::as_str).unwrap_or("");
        match (group, leaf, positional) {
            ("strand", "incr" | "decr", 1) => {
                let prog = before.iter().rev().find_map(|w| known.strands.get(*w));
                match prog.and_then(|p| self.registry.semaphores(p)) {
                    Some(sems) => sems.iter().map(|s| s.to_string()).collect(),
                    None => self.all_semaphores(),
                }
            }
            ("strand", "reschedule", 1) => ["+1m", "+10m", "+1h", "+1d"].map(String::from).to_vec(),
            ("strand", _, 0) | ("ubid", _, 0) => known.strands.keys().cloned().chain(known.vms.iter().cloned()).collect(),
            ("page", _, 0) => known.pages.clone(),
            ("host", "show", 0) => known.hosts.clone(),
            ("vm", "show", 0) => known.vms.clone(),
            _ => vec![],
        }
    }

    fn values(&self, flag: &str, before: &[&str], known: &Known) -> Vec<String> {
        match flag {
            "prog" => self.registry.names().map(String::from).collect(),
            "label" => {
                let prog = before.windows(2).find(|w| w[0] == "--prog").map(|w| w[1]);
                let progs: Vec<&str> = match prog {
                    Some(p) => vec![p],
                    None => self.registry.names().collect(),
                };
                let mut labels: Vec<String> =
                    progs.iter().flat_map(|p| self.registry.labels(p).unwrap_or_default()).map(String::from).collect();
                labels.sort();
                labels.dedup();
                labels
            }
            "state" => StrandState::ALL.map(|s| s.name().to_string()).to_vec(),
            "sort" => StrandSort::NAMES.map(String::from).to_vec(),
            "parent" | "target" => known.strands.keys().cloned().collect(),
            "project" => known.projects.clone(),
            _ => vec![],
        }
    }

    fn all_semaphores(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.registry.names().flat_map(|p| self.registry.semaphores(p).unwrap_or_default()).map(String::from).collect();
        all.sort();
        all.dedup();
        all
    }
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        // The word being typed starts after the last whitespace (which may be
        // more than one byte: U+3000 is whitespace too).
        let start = head.char_indices().rev().find(|(_, c)| c.is_whitespace()).map(|(i, c)| i + c.len_utf8()).unwrap_or(0);
        let partial = &head[start..];
        let before: Vec<&str> = head[..start].split_whitespace().collect();
        let mut found: Vec<Pair> = self
            .candidates(&before, partial)
            .into_iter()
            .filter(|c| c.to_lowercase().starts_with(&partial.to_lowercase()))
            .map(|c| Pair { display: c.clone(), replacement: format!("{c} ") })
            .collect();
        found.sort_by(|a, b| a.display.cmp(&b.display));
        found.dedup_by(|a, b| a.display == b.display);
        Ok((start, found))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn completion() -> Completion {
        let mut known = Known::default();
        known.strands.insert("vm0000000000000000000000ab".into(), "Vm::Nexus".into());
        Completion { registry: skein_progs::registry(), known: Arc::new(Mutex::new(known)) }
    }

    fn complete(c: &Completion, line: &str) -> Vec<String> {
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        c.complete(line, line.len(), &ctx).unwrap().1.into_iter().map(|p| p.display).collect()
    }

    #[test]
    fn completion_knows_commands_flags_progs_labels_states_and_semaphores() {
        let c = completion();
        assert_eq!(complete(&c, "str"), ["strand"]);
        assert!(complete(&c, "strand ").contains(&"reschedule".to_string()));
        assert!(complete(&c, "strand list --").contains(&"--older-than".to_string()));
        assert!(complete(&c, "strand list --prog Vm").contains(&"Vm::HostNexus".to_string()));
        assert_eq!(complete(&c, "strand list --prog Vm::Nexus --label Wa"), ["WaitBoot", "WaitNic", "WaitNicGone"]);
        assert_eq!(complete(&c, "strand list --state fa"), ["failing"]);
        assert_eq!(complete(&c, "strand show vm0"), ["vm0000000000000000000000ab"]);
        assert_eq!(complete(&c, "strand incr vm0000000000000000000000ab re"), ["restart"]);
        assert_eq!(complete(&c, "strand incr vm0000000000000000000000ab d"), ["destroy"]);
        assert_eq!(complete(&c, "strand\u{3000}li"), ["list"], "a wide space separates words too");
    }

    proptest::proptest! {
        #[test]
        fn completion_never_panics_on_any_line(line in "\\PC{0,40}", cut in 0usize..60) {
            let c = completion();
            let pos = line.char_indices().map(|(i, _)| i).chain([line.len()]).nth(cut).unwrap_or(line.len());
            let history = DefaultHistory::new();
            let (start, found) = c.complete(&line, pos, &Context::new(&history)).unwrap();
            proptest::prop_assert!(line.is_char_boundary(start) && start <= pos);
            for pair in found {
                proptest::prop_assert!(pair.replacement.to_lowercase().starts_with(&line[start..pos].to_lowercase()));
            }
        }

        #[test]
        fn any_console_line_parses_or_is_refused_without_panicking(words in proptest::collection::vec("\\PC{0,12}|strand|list|show|--state|--prog|--limit|-y|--json|help", 0..6)) {
            let _ = Line::try_parse_from(&words);
            let _ = super::super::split_commands(&words.join(" "));
        }
    }
}
