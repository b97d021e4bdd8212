//! The operator console: inspect and steer strands, pages, hosts and VMs.
//!
//! One grammar ([`command::Ops`]) is reachable three ways: the interactive
//! prompt (`skein console`: history, tab completion, `help`), one-shot
//! (`skein console -c 'strand list --state failing'`) and plain
//! subcommands (`skein strand list --state failing`). Every command answers
//! as text or, with `--json`, as one JSON document; every change asks first
//! (unless `--yes`) and lands in the `operator_audit` table.
//!
//! The console sits above `cmd`: it runs `host add` and `vm create` from
//! `cmd::host` and `cmd::vm`, on `cmd::session`. Nothing in `cmd` reaches
//! back up here; `main.rs` hands `skein host list` and the like to the
//! console itself.

pub mod command;
mod fleet;
mod repl;
mod strands;

use clap::Parser;

pub use command::Ops;
use crate::cmd::session::{OpsOptions, Reply, Session};

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Run this command instead of prompting (repeatable; `;` also separates commands).
    /// They run in order; the first that fails stops the rest (exit status 1).
    #[arg(short = 'c', long = "command")]
    pub commands: Vec<String>,
    /// Where the prompt keeps its history across sessions [default: ~/.skein_history].
    #[arg(long, env = "SKEIN_HISTORY")]
    pub history: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub opts: OpsOptions,
}

/// One line typed at the console: a command and the per-line flags.
#[derive(Parser, Debug)]
#[command(name = "skein>", no_binary_name = true, disable_version_flag = true, about = "The console's commands: look at and steer strands, pages, hosts and VMs.")]
#[command(after_help = "Every command has its own help: `help strand`, `strand list --help`. `exit` or Ctrl-D leaves.")]
pub struct Line {
    #[command(subcommand)]
    pub ops: Ops,
    /// Print this command's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not ask before changing anything.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
}

/// Run one command and say what it answered.
pub async fn execute(s: &Session, ops: Ops, opts: &OpsOptions) -> anyhow::Result<Reply> {
    match ops {
        Ops::Strand(cmd) => strands::run(s, cmd, opts.yes).await,
        Ops::Page(cmd) => fleet::pages(s, cmd, opts.yes).await,
        Ops::Host(cmd) => fleet::hosts(s, cmd, opts).await,
        Ops::Vm(cmd) => fleet::vms(s, cmd, opts).await,
        Ops::Subnet(cmd) => crate::cmd::subnet::execute(s, cmd, opts).await,
        Ops::Ubid { id } => fleet::ubid(s, &id).await,
        Ops::Audit { target, limit } => fleet::audit_list(s, target, limit).await,
        Ops::Workers => fleet::workers(s).await,
    }
}

/// `skein strand ...` and friends: one command, printed.
pub async fn run_one(ops: Ops, opts: OpsOptions) -> anyhow::Result<()> {
    let session = Session::open(&opts).await?;
    execute(&session, ops, &opts).await?.print(opts.json);
    Ok(())
}

/// `skein console`: the prompt, or the `-c` commands one after another
/// (stopping at the first that fails).
pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let session = Session::open(&args.opts).await?;
    if args.commands.is_empty() {
        return repl::run(&session, &args.opts, args.history).await;
    }
    for words in args.commands.iter().flat_map(|c| split_commands(c)) {
        let words = words?;
        let line = match parse_line(&words) {
            Parsed::Line(line) => line,
            Parsed::Help(text) => {
                println!("{text}");
                continue;
            }
            Parsed::Refused(message) => anyhow::bail!("{message}"),
        };
        let opts = OpsOptions { json: args.opts.json || line.json, yes: args.opts.yes || line.yes, ..args.opts.clone() };
        execute(&session, line.ops, &opts).await?.print(opts.json);
    }
    Ok(())
}

/// What a typed line turned out to be.
pub(crate) enum Parsed {
    Line(Line),
    /// `help`, `--help`: an answer, for stdout.
    Help(String),
    /// A mistake, said once: no `error:` prefix (the caller adds one) and no
    /// usage line naming the prompt.
    Refused(String),
}

pub(crate) fn parse_line(words: &[String]) -> Parsed {
    use clap::error::ErrorKind;
    let e = match Line::try_parse_from(words) {
        Ok(line) => return Parsed::Line(line),
        Err(e) => e,
    };
    let text = e.render().to_string();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return Parsed::Help(text.trim_end().to_string());
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let typed = words.join(" ");
        return Parsed::Refused(format!("`{typed}` needs a subcommand: `{typed} --help` lists them"));
    }
    // clap's text, on one line: its own `error:` and usage lines dropped
    // (the usage would name the prompt), its tips kept.
    let mut said = String::new();
    for line in text.lines().map(|l| l.strip_prefix("error: ").unwrap_or(l).trim()) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information") {
            continue;
        }
        if !said.is_empty() {
            said.push_str(if line.starts_with("tip:") { "; " } else { " " });
        }
        said.push_str(line);
    }
    Parsed::Refused(format!("{said} (`help` lists the commands, `<command> --help` explains one)"))
}

/// Shell-like words, one list per command (`;` between commands).
fn split_commands(text: &str) -> Vec<anyhow::Result<Vec<String>>> {
    let Some(words) = shlex::split(text) else {
        return vec![Err(anyhow::anyhow!("unbalanced quotes in {text:?}"))];
    };
    let mut out = vec![];
    let mut cur = vec![];
    for mut w in words {
        // `;` at either end of a word ends a command; inside one (a quoted
        // `'a;b'`) it is part of the word.
        while let Some(rest) = w.strip_prefix(';') {
            out.push(std::mem::take(&mut cur));
            w = rest.to_string();
        }
        let ends = w.ends_with(';');
        let w = w.trim_end_matches(';');
        if !w.is_empty() {
            cur.push(w.to_string());
        }
        if ends {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out.into_iter().filter(|c| !c.is_empty()).map(Ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_on_semicolons_and_respect_quotes() {
        let got: Vec<Vec<String>> = split_commands("strand list; page list ;ubid 'a;b'").into_iter().map(|c| c.unwrap()).collect();
        assert_eq!(got, vec![vec!["strand", "list"], vec!["page", "list"], vec!["ubid", "a;b"]]);
        assert!(split_commands("ubid 'open").pop().unwrap().is_err());
    }

    fn parsed(line: &str) -> Parsed {
        parse_line(&split_commands(line).pop().unwrap().unwrap())
    }

    #[test]
    fn help_is_an_answer_and_a_mistake_is_one_clean_message() {
        assert!(matches!(parsed("help"), Parsed::Help(t) if t.contains("strand")));
        assert!(matches!(parsed("strand list --help"), Parsed::Help(t) if t.contains("--older-than")));
        match parsed("frobnicate now") {
            Parsed::Refused(m) => {
                assert!(m.starts_with("unrecognized subcommand 'frobnicate'"), "{m}");
                assert!(!m.contains("error:") && !m.contains("Usage:"), "{m}");
            }
            _ => panic!("an unknown command is refused"),
        }
        assert!(matches!(parsed("strand show"), Parsed::Refused(m) if m.starts_with("the following required arguments were not provided: <ID>")));
        assert!(matches!(parsed("strand"), Parsed::Refused(m) if m == "`strand` needs a subcommand: `strand --help` lists them"));
    }

    #[test]
    fn the_console_grammar_is_consistent() {
        use clap::CommandFactory;
        Line::command().debug_assert();
    }
}
