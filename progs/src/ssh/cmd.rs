//! Commands for remote shells, built only from templates.
//!
//! A command is a `&'static str` template whose `{}` placeholders are filled
//! with parameters that are always shell-quoted:
//!
//! ```ignore
//! let c = cmd!("mkdir -p {} && chown {} {}", dir, user, dir)?;
//! ```
//!
//! There is no way to make a `Cmd` from a `String`: the template must be a
//! literal, so a command assembled with `format!` does not compile. A VM named
//! `x; rm -rf /` is one quoted word. The number of placeholders is checked
//! against the number of parameters at compile time.
//!
//! ```
//! let c = skein_progs::cmd!("cp {} {}", "a b", "c;d").unwrap();
//! assert_eq!(c.as_bytes(), b"cp 'a b' 'c;d'");
//! ```
//!
//! A template built at run time does not compile:
//!
//! ```compile_fail
//! let template = format!("rm -rf {}", "/srv/vm");
//! let _ = skein_progs::cmd!(template);
//! ```
//!
//! Nor does a template whose placeholders and parameters disagree:
//!
//! ```compile_fail
//! let _ = skein_progs::cmd!("cp {} {}", "only-one");
//! ```
//!
//! Where a template repeats a parameter, name it: `{name}` placeholders
//! (lowercase, not after a `$`, so a shell's `${VAR}` stays the shell's)
//! are filled by `name = value` parameters, each quoted the same way.
//!
//! ```
//! let c = skein_progs::cmd!("SKEIN_ROOT={root} {root}/agent/bin/boot-id", root = "/srv/a b").unwrap();
//! assert_eq!(c.as_bytes(), b"SKEIN_ROOT='/srv/a b' '/srv/a b'/agent/bin/boot-id");
//! ```
//!
//! A name the template lacks, or a placeholder no parameter fills, does not compile:
//!
//! ```compile_fail
//! let _ = skein_progs::cmd!("ls {dir}", path = "/tmp");
//! ```
//!
//! A command takes more words, each quoted, with [`Cmd::arg`]: how a
//! program with a variable number of arguments is called.

use std::borrow::Cow;
use std::fmt;

/// Something that can stand as one shell word (`Sync`, so a command's
/// parameters may be held across an `.await`).
pub trait ShellArg: Sync {
    fn shell_bytes(&self) -> Cow<'_, [u8]>;
    /// Whether to hide the value when the command is shown or logged.
    fn is_secret(&self) -> bool {
        false
    }
}

impl ShellArg for str {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl ShellArg for String {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl ShellArg for [u8] {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl ShellArg for Vec<u8> {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl ShellArg for std::path::Path {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(self.as_os_str().as_bytes())
    }
}

impl ShellArg for std::path::PathBuf {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        self.as_path().shell_bytes()
    }
}

impl ShellArg for skein_models::Ubid {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_string().into_bytes())
    }
}

macro_rules! display_arg {
    ($($t:ty),*) => {$(
        impl ShellArg for $t {
            fn shell_bytes(&self) -> Cow<'_, [u8]> {
                Cow::Owned(self.to_string().into_bytes())
            }
        }
    )*};
}
display_arg!(u8, u16, u32, u64, usize, i32, i64);

impl<T: ShellArg + ?Sized> ShellArg for &T {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        (**self).shell_bytes()
    }
    fn is_secret(&self) -> bool {
        (**self).is_secret()
    }
}

/// A parameter shown as `<redacted>` in logs and errors.
pub struct Secret<T>(pub T);

impl<T: ShellArg> ShellArg for Secret<T> {
    fn shell_bytes(&self) -> Cow<'_, [u8]> {
        self.0.shell_bytes()
    }
    fn is_secret(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdError {
    #[error("parameter {index} of command template {template:?} contains a NUL byte, which no shell word can hold")]
    NulByte { template: &'static str, index: usize },
}

/// A command line ready to send, with a redacted form for people.
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    line: Vec<u8>,
    shown: String,
}

impl Cmd {
    /// Fill `template`'s `{}`s with quoted `args`. Use the [`cmd!`](crate::cmd) macro,
    /// which checks the count at compile time.
    pub fn template(template: &'static str, args: &[&dyn ShellArg]) -> Result<Cmd, CmdError> {
        let mut cmd = Cmd { line: Vec::with_capacity(template.len() + 16 * args.len()), shown: String::new() };
        let mut parts = template.split("{}");
        cmd.push_literal(parts.next().unwrap_or_default());
        for (index, (part, arg)) in parts.zip(args).enumerate() {
            cmd.push_word(*arg, template, index)?;
            cmd.push_literal(part);
        }
        Ok(cmd)
    }

    /// Fill `template`'s `{name}`s with quoted `args` by name. Use the
    /// [`cmd!`](crate::cmd) macro, which checks the names at compile time.
    pub fn template_named(template: &'static str, args: &[(&'static str, &dyn ShellArg)]) -> Result<Cmd, CmdError> {
        let mut cmd = Cmd { line: Vec::with_capacity(template.len() + 16 * args.len()), shown: String::new() };
        let b = template.as_bytes();
        let (mut i, mut literal) = (0, 0);
        while i < b.len() {
            if let Some(len) = named_at(b, i) {
                let name = &template[i + 1..i + 1 + len];
                let (index, (_, arg)) = args
                    .iter()
                    .enumerate()
                    .find(|(_, (n, _))| *n == name)
                    .expect("cmd! checked at compile time that every placeholder has a parameter");
                cmd.push_literal(&template[literal..i]);
                cmd.push_word(*arg, template, index)?;
                i += len + 2;
                literal = i;
            } else {
                i += 1;
            }
        }
        cmd.push_literal(&template[literal..]);
        Ok(cmd)
    }

    /// This command with one more word, quoted: ` 'arg'`.
    pub fn arg(mut self, arg: &dyn ShellArg) -> Result<Cmd, CmdError> {
        self.push_literal(" ");
        self.push_word(arg, "(an added argument)", 0)?;
        Ok(self)
    }

    fn push_literal(&mut self, text: &str) {
        self.line.extend_from_slice(text.as_bytes());
        self.shown.push_str(text);
    }

    fn push_word(&mut self, arg: &dyn ShellArg, template: &'static str, index: usize) -> Result<(), CmdError> {
        let bytes = arg.shell_bytes();
        if bytes.contains(&0) {
            return Err(CmdError::NulByte { template, index });
        }
        let quoted = quote(&bytes);
        self.line.extend_from_slice(&quoted);
        if arg.is_secret() {
            self.shown.push_str("<redacted>");
        } else {
            self.shown.push_str(&String::from_utf8_lossy(&quoted));
        }
        Ok(())
    }

    /// What is sent to the remote shell.
    pub fn as_bytes(&self) -> &[u8] {
        &self.line
    }

    /// The command with secrets redacted: for logs, errors and operators.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({:?})", self.shown)
    }
}

/// One shell word: the bytes in single quotes, each `'` written as `'\''`.
/// Inside single quotes a POSIX shell interprets nothing: not `$`, `` ` ``,
/// `\`, `;` or newlines.
pub fn quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// How many `{}` a template has (for the compile-time check in `cmd!`).
pub const fn placeholders(template: &str) -> usize {
    let b = template.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i + 1 < b.len() {
        if b[i] == b'{' && b[i + 1] == b'}' {
            n += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    n
}

/// The length of the name of a `{name}` placeholder starting at `i`: a
/// lowercase name in braces, not after a `$` (that is the shell's `${VAR}`).
const fn named_at(b: &[u8], i: usize) -> Option<usize> {
    if b[i] != b'{' || (i > 0 && b[i - 1] == b'$') {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_lowercase() || b[j] == b'_' || (j > i + 1 && b[j].is_ascii_digit())) {
        j += 1;
    }
    if j > i + 1 && j < b.len() && b[j] == b'}' {
        Some(j - i - 1)
    } else {
        None
    }
}

const fn same(a: &[u8], a_from: usize, len: usize, b: &str) -> bool {
    let b = b.as_bytes();
    if b.len() != len {
        return false;
    }
    let mut k = 0;
    while k < len {
        if a[a_from + k] != b[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Whether a template's `{name}` placeholders and the given names agree:
/// every placeholder has a parameter, every parameter is used, and there
/// is no positional `{}` (for the compile-time check in `cmd!`).
pub const fn names_agree(template: &str, names: &[&str]) -> bool {
    if placeholders(template) != 0 {
        return false;
    }
    let b = template.as_bytes();
    let mut used = [false; 32];
    if names.len() > used.len() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if let Some(len) = named_at(b, i) {
            let mut k = 0;
            let mut found = false;
            while k < names.len() {
                if same(b, i + 1, len, names[k]) {
                    used[k] = true;
                    found = true;
                }
                k += 1;
            }
            if !found {
                return false;
            }
            i += len + 2;
        } else {
            i += 1;
        }
    }
    let mut k = 0;
    while k < names.len() {
        if !used[k] {
            return false;
        }
        k += 1;
    }
    true
}

#[doc(hidden)]
#[macro_export]
macro_rules! __count {
    () => { 0usize };
    ($head:expr $(, $tail:expr)*) => { 1usize + $crate::__count!($($tail),*) };
}

/// Build a [`Cmd`](crate::ssh::Cmd) from a literal template and quoted parameters:
/// `cmd!("ls -l {}", path)?`, or by name: `cmd!("cp {f} {f}.bak", f = path)?`.
/// The template must be a string literal.
#[macro_export]
macro_rules! cmd {
    ($template:literal $(, $name:ident = $arg:expr)+ $(,)?) => {{
        const _: () = assert!(
            $crate::ssh::cmd::names_agree($template, &[$(stringify!($name)),+]),
            "cmd!: the template's {{name}} placeholders and the named parameters disagree (or it mixes in a positional {{}})"
        );
        let built = $crate::ssh::Cmd::template_named($template, &[$((stringify!($name), &$arg as &dyn $crate::ssh::ShellArg)),+]);
        built
    }};
    ($template:literal $(, $arg:expr)* $(,)?) => {{
        const _: () = assert!(
            $crate::ssh::cmd::placeholders($template) == $crate::__count!($($arg),*),
            "cmd!: the template has a different number of placeholders than parameters"
        );
        // Bound to a local so the borrowed parameters end here, not at the end
        // of the caller's statement (which may hold an `.await`).
        let built = $crate::ssh::Cmd::template($template, &[$(&$arg as &dyn $crate::ssh::ShellArg),*]);
        built
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Run `line` in a real POSIX shell with `printf '%s\n'` and return what it printed.
    fn words_via_sh(c: &Cmd) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let out = Command::new("sh").arg("-c").arg(std::ffi::OsStr::from_bytes(c.as_bytes())).output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn hostile_parameters_are_single_words_and_never_run() {
        let marker = std::env::temp_dir().join(format!("skein-cmd-test-{}", std::process::id()));
        let m = marker.display().to_string();
        let hostile = [
            format!("x; touch {m}"),
            format!("$(touch {m})"),
            format!("`touch {m}`"),
            format!("'; touch {m}; echo '"),
            format!("\"; touch {m}; echo \""),
            format!("a\ntouch {m}"),
            format!("$HOME && touch {m} || touch {m}"),
            "-n".to_string(),
            String::new(),
        ];
        for h in &hostile {
            let c = cmd!("printf '%s\\n' {}", h).unwrap();
            assert_eq!(words_via_sh(&c), format!("{h}\n").into_bytes(), "{c:?}");
        }
        assert!(!marker.exists(), "a hostile parameter ran a command");
    }

    #[test]
    fn non_utf8_bytes_pass_through_and_nul_is_refused() {
        let bytes: Vec<u8> = vec![b'a', 0xff, 0xfe, b'\'', b'b'];
        let c = cmd!("printf '%s' {}", bytes).unwrap();
        assert_eq!(words_via_sh(&c), bytes);
        let err = cmd!("echo {}", b"a\0b".to_vec()).unwrap_err();
        assert_eq!(err, CmdError::NulByte { template: "echo {}", index: 0 });
    }

    #[test]
    fn secrets_are_redacted_when_shown() {
        let c = cmd!("login {} {}", "alice", Secret("hunter2")).unwrap();
        assert_eq!(c.shown(), "login 'alice' <redacted>");
        assert!(!format!("{c} {c:?}").contains("hunter2"));
        assert_eq!(c.as_bytes(), b"login 'alice' 'hunter2'");
    }

    #[test]
    fn named_placeholders_repeat_one_quoted_value_and_leave_the_shells_braces() {
        let c = cmd!("d={dir}; mkdir -p {dir} && echo ${HOME} {x} >/dev/null && printf '%s\\n' {dir}", dir = "a'b c", x = 1u32).unwrap();
        assert_eq!(words_via_sh(&c), b"a'b c\n");
        assert!(c.shown().contains("${HOME}"), "{c:?}");
        assert!(names_agree("{a} {b} {a}", &["a", "b"]));
        assert!(!names_agree("{a}", &["a", "b"]), "an unused parameter");
        assert!(!names_agree("{a} {c}", &["a"]), "an unfilled placeholder");
        assert!(!names_agree("{a} {}", &["a"]), "mixed with positional");
    }

    #[test]
    fn added_arguments_are_quoted_words() {
        let c = cmd!("printf '%s\\n'").unwrap().arg(&"x; y").unwrap().arg(&Secret("s")).unwrap();
        assert_eq!(words_via_sh(&c), b"x; y\ns\n");
        assert_eq!(c.shown(), "printf '%s\\n' 'x; y' <redacted>");
        assert!(cmd!("echo").unwrap().arg(&"a\0b").is_err());
    }

    #[test]
    fn placeholders_are_counted() {
        assert_eq!(placeholders("a {} b {}{}"), 3);
        assert_eq!(placeholders("no holes"), 0);
    }
}
