//! Text for people: times both relative and absolute, aligned tables, ids
//! as UBIDs, long errors cut to a line, and control characters escaped
//! (names, errors and frames come from outside; they must not be able to
//! colour the terminal or forge a line of output).

use chrono::{DateTime, Utc};
use skein_models::Ubid;
use uuid::Uuid;

/// `text` with every control character escaped as Rust writes it (`\n`,
/// `\u{1b}`), and the invisible characters that reorder a line (bidi
/// overrides and isolates) too.
pub fn clean(text: &str) -> String {
    text.chars().map(escape).collect()
}

/// [`clean`], except that newlines still end lines: for text this program
/// laid out itself, whose cells are [`clean`] already.
pub fn clean_lines(text: &str) -> String {
    text.split('\n').map(clean).collect::<Vec<_>>().join("\n")
}

fn escape(c: char) -> String {
    let reorders = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if c.is_control() || reorders {
        c.escape_default().collect()
    } else {
        c.to_string()
    }
}

pub fn id(u: Uuid) -> String {
    Ubid::from_uuid(u).to_string()
}

/// "in 4m10s" / "12s ago" / "now".
pub fn relative(t: DateTime<Utc>) -> String {
    let secs = (t - Utc::now()).num_milliseconds() as f64 / 1000.0;
    if secs.abs() < 1.0 {
        return "now".into();
    }
    let span = duration(secs.abs());
    if secs > 0.0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// "in 4m10s (2026-11-22 02:40:01 UTC)"
pub fn when(t: DateTime<Utc>) -> String {
    format!("{} ({})", relative(t), t.format("%Y-%m-%d %H:%M:%S UTC"))
}

/// A duration in the largest two units: "3d4h", "4m10s", "12s".
pub fn duration(secs: f64) -> String {
    let s = secs.round() as i64;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// The first line of `text`, at most `max` characters.
pub fn line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() > max || text.lines().nth(1).is_some() {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    for row in std::iter::once(&head).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// "  key: value" lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:>w$}: {}\n", clean(v))).collect()
}


/// JSON, pretty, indented under a heading.
pub fn indented_json(v: &serde_json::Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    serde_json::to_string_pretty(v).unwrap_or_default().lines().map(|l| format!("{pad}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_cannot_colour_or_forge_lines() {
        let evil = "evil\u{1b}[31mRED\u{1b}[0m\nfake line\u{202e}";
        assert_eq!(super::clean(evil), "evil\\u{1b}[31mRED\\u{1b}[0m\\nfake line\\u{202e}");
        let table = super::table(&["who"], &[vec![evil.to_string()]]);
        assert_eq!(table.lines().count(), 2, "a header and one row: {table}");
        assert_eq!(super::clean_lines("a\nb\u{7}"), "a\nb\\u{7}");
        assert_eq!(super::clean("zoë ok"), "zoë ok");
    }
}
