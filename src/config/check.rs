//! The refusal vocabulary the config and policy loaders share, so that
//! "every invalid value is refused with the file, the field and the rule"
//! (DESIGN §3) is written once: the three ways a file is refused
//! ([`ReadError`], [`SyntaxError`], [`FieldError`]) and the [`Checker`] that
//! builds field errors for one file, with the rules of a value's shape that
//! either file may use (non-empty, paths, durations, integer ranges, web
//! URLs).
//!
//! Owns: the message shapes and those shape rules. Does not own: the rules
//! of one file only (they stay in `daemon.rs` and `policy.rs`), or what a
//! web URL may be (`url.rs`).

use std::fmt;
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use hyper::Uri;
use serde::de::DeserializeOwned;

use super::url::parse_web_url;
use crate::types::Span;

/// The rule stated for a duration field whose text does not parse.
const DURATION_RULE: &str = "not a duration like \"90s\", \"5m\", \"1h30m\", \"7d\" or \"2w\" (units s, m, h, d, w; not zero)";

/// A file could not be read. Display: `<file>: cannot read <what> file: <error>`.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot read {what} file: {source}", file.display())]
pub struct ReadError {
    /// The file, as given.
    pub file: PathBuf,
    /// What the file is, for the message: `config` or `policy`.
    pub what: &'static str,
    /// The I/O error.
    pub source: io::Error,
}

/// TOML syntax error, unknown section or field, or wrong value type.
/// Display: `<file>: line <line>, column <column>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: line {line}, column {column}: {message}", file.display())]
pub struct SyntaxError {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line of the problem (1 when the parser does not say).
    pub line: usize,
    /// 1-based column of the problem (1 when the parser does not say).
    pub column: usize,
    /// The parser's message, e.g. ``unknown field `rotat`, expected ...``.
    pub message: String,
}

/// A field breaks one of its rules. Display: `<file>: <field> = <value>: <rule>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field} = {value}: {rule}", file.display())]
pub struct FieldError {
    /// The file, as given.
    pub file: PathBuf,
    /// Path of the field, e.g. `server.socket_mode`, `grace` or
    /// `clients[1].audiences[0]`.
    pub field: String,
    /// The value as written (strings quoted, passwords redacted), or `(unset)`.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

/// A file or directory that others than its owner may change, although
/// what it holds decides who may sign. Display: `<path>: mode <mode>: <rule>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: mode {mode:04o}: {rule}", path.display())]
pub struct WritableError {
    /// The file or directory, as given.
    pub path: PathBuf,
    /// Its permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    /// The rule it breaks.
    pub rule: String,
}

/// Group or other write bits.
const WRITE_BY_OTHERS: u32 = 0o022;

/// Whether a write bit for group or others lets anyone write: not on a file
/// system mounted read-only (a Kubernetes ConfigMap volume shows mode 0777
/// directories that nobody can change).
fn lets_others_write(mode: u32, read_only_fs: nix::Result<bool>) -> bool {
    mode & WRITE_BY_OTHERS != 0 && !read_only_fs.unwrap_or(false)
}

fn read_only(stat: nix::Result<nix::sys::statvfs::Statvfs>) -> nix::Result<bool> {
    stat.map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Reads a whole file like [`read`], and tells whether group or others may
/// write it, judged on the opened file (not on a path that could be swapped
/// in between).
pub fn read_guarded(
    file: &Path,
    what: &'static str,
) -> Result<(String, Option<WritableError>), ReadError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let fail = |source| ReadError {
        file: file.to_owned(),
        what,
        source,
    };
    let mut f = fs::File::open(file).map_err(fail)?;
    let mode = f.metadata().map_err(fail)?.mode() & 0o7777;
    let writable = lets_others_write(mode, read_only(nix::sys::statvfs::fstatvfs(&f))).then(|| {
        WritableError {
            path: file.to_owned(),
            mode,
            rule: format!(
                "a {what} file must not be writable by group or others: whoever can change it decides who may sign (chmod go-w)"
            ),
        }
    });
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(fail)?;
    Ok((text, writable))
}

/// Whether group or others may add, remove or replace files in `dir`.
/// `None` also when it cannot be examined: listing it will say why.
pub fn dir_writable(dir: &Path, what: &'static str) -> Option<WritableError> {
    use std::os::unix::fs::MetadataExt as _;
    let mode = fs::metadata(dir).ok()?.mode() & 0o7777;
    lets_others_write(mode, read_only(nix::sys::statvfs::statvfs(dir))).then(|| WritableError {
        path: dir.to_owned(),
        mode,
        rule: format!(
            "a {what} directory must not be writable by group or others: whoever can add or replace a file in it decides who may sign (chmod go-w)"
        ),
    })
}

/// Reads a whole file; `what` (`config`, `policy`) names it in the error.
pub fn read(file: &Path, what: &'static str) -> Result<String, ReadError> {
    fs::read_to_string(file).map_err(|source| ReadError {
        file: file.to_owned(),
        what,
        source,
    })
}

/// Deserializes TOML text, locating a syntax error by 1-based line and
/// column in `file`.
pub fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, SyntaxError> {
    toml::from_str(text).map_err(|err| {
        let (line, column) = match err.span() {
            Some(span) => {
                // `get` rather than slicing: never panic on a span off a char boundary.
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (line, column)
            }
            None => (1, 1),
        };
        SyntaxError {
            file: file.to_owned(),
            line,
            column,
            message: err.message().trim().to_owned(),
        }
    })
}

/// Checks the fields of one file: every refusal it builds names that file.
#[derive(Debug, Clone, Copy)]
pub struct Checker<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl<'a> Checker<'a> {
    /// A checker for `file`; relative paths in it resolve against the
    /// file's directory as given.
    pub fn new(file: &'a Path) -> Self {
        Checker::with_base(file, file.parent().unwrap_or(Path::new("")))
    }

    /// A checker for `file` whose relative paths resolve against `base`.
    pub fn with_base(file: &'a Path, base: &'a Path) -> Self {
        Checker { file, base }
    }

    /// The file whose fields this checks.
    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// The refusal of `value` (as it should be shown) for `field`.
    pub fn err(
        &self,
        field: impl Into<String>,
        value: impl Into<String>,
        rule: impl Into<String>,
    ) -> FieldError {
        FieldError {
            file: self.file.to_owned(),
            field: field.into(),
            value: value.into(),
            rule: rule.into(),
        }
    }

    /// `text` if it is not empty.
    pub fn non_empty<'t>(&self, field: &str, text: &'t str) -> Result<&'t str, FieldError> {
        if text.is_empty() {
            return Err(self.err(field, "\"\"", "must not be empty"));
        }
        Ok(text)
    }

    /// A path field: non-empty; a relative one joins the base directory.
    pub fn path(&self, field: &str, text: &str) -> Result<PathBuf, FieldError> {
        Ok(self.resolve(self.non_empty(field, text)?))
    }

    /// `text` as a path, a relative one joined to the base directory.
    pub fn resolve(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// A duration field such as `"5m"` (see [`Span::parse`]).
    pub fn span(&self, field: &str, text: &str) -> Result<Span, FieldError> {
        Span::parse(text).map_err(|_| self.err(field, format!("{text:?}"), DURATION_RULE))
    }

    /// An optional duration field: `default` when it is not set.
    pub fn span_or(
        &self,
        field: &str,
        text: Option<&str>,
        default: Span,
    ) -> Result<Span, FieldError> {
        text.map_or(Ok(default), |t| self.span(field, t))
    }

    /// An integer field that must lie in `range` (both ends included).
    pub fn within<T>(&self, field: &str, n: i64, range: RangeInclusive<T>) -> Result<T, FieldError>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        T::try_from(n)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                self.err(
                    field,
                    n.to_string(),
                    format!("must be between {} and {}", range.start(), range.end()),
                )
            })
    }

    /// A web URL field: "https unless localhost" (see [`parse_web_url`]).
    pub fn web_url(&self, field: &str, text: &str) -> Result<Uri, FieldError> {
        parse_web_url(text).map_err(|e| self.err(field, format!("{text:?}"), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker<'static> {
        Checker::new(Path::new("etc/f.toml"))
    }

    #[test]
    fn a_field_error_names_the_file_the_field_the_value_and_the_rule() {
        assert_eq!(
            checker().err("a.b", "3", "must be 4").to_string(),
            "etc/f.toml: a.b = 3: must be 4"
        );
    }

    #[test]
    fn a_syntax_error_names_the_file_line_and_column() {
        let err = parse_toml::<toml::Table>(Path::new("f.toml"), "a = 1\nb = \n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 5), "{err}");
        assert!(err.to_string().starts_with("f.toml: line 2, column 5: "));
    }

    #[test]
    fn relative_paths_join_the_base_and_absolute_ones_stay() {
        let c = Checker::with_base(Path::new("x.toml"), Path::new("/srv"));
        assert_eq!(c.path("p", "a/b").unwrap(), Path::new("/srv/a/b"));
        assert_eq!(c.path("p", "/a").unwrap(), Path::new("/a"));
        assert_eq!(checker().resolve("k.db"), Path::new("etc/k.db"));
        assert_eq!(
            c.path("p", "").unwrap_err().to_string(),
            "x.toml: p = \"\": must not be empty"
        );
    }

    #[test]
    fn range_ends_are_included_and_named_in_the_rule() {
        let c = checker();
        assert_eq!(c.within::<u32>("n", 1, 1..=10), Ok(1));
        assert_eq!(c.within::<u32>("n", 10, 1..=10), Ok(10));
        for bad in [0, 11, -1] {
            assert_eq!(
                c.within::<u32>("n", bad, 1..=10).unwrap_err().rule,
                "must be between 1 and 10"
            );
        }
    }

    #[test]
    fn group_or_other_write_bits_are_reported_with_file_and_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        fs::write(&file, "x = 1\n").unwrap();
        for (mode, refused) in [(0o644, false), (0o600, false), (0o664, true), (0o646, true)] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let (text, writable) = read_guarded(&file, "policy").unwrap();
            assert_eq!(text, "x = 1\n");
            assert_eq!(writable.is_some(), refused, "{mode:o}");
        }
        let (_, writable) = read_guarded(&file, "policy").unwrap();
        assert_eq!(
            writable.unwrap().to_string(),
            format!(
                "{}: mode 0646: a policy file must not be writable by group or others: whoever can change it decides who may sign (chmod go-w)",
                file.display()
            )
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let err = dir_writable(dir.path(), "policy").unwrap();
        assert_eq!(err.mode, 0o1777, "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(dir_writable(dir.path(), "policy"), None);
    }

    #[test]
    fn write_bits_on_a_read_only_file_system_let_nobody_write() {
        assert!(lets_others_write(0o777, Ok(false)));
        assert!(!lets_others_write(0o777, Ok(true)));
        assert!(lets_others_write(0o664, Err(nix::errno::Errno::ENOSYS)));
        assert!(!lets_others_write(0o755, Ok(false)));
    }

    #[test]
    fn a_duration_that_does_not_parse_is_refused_with_the_rule() {
        let c = checker();
        assert_eq!(c.span("d", "90s").unwrap().as_secs(), 90);
        assert_eq!(
            c.span_or("d", None, Span::from_secs(7)).unwrap().as_secs(),
            7
        );
        assert_eq!(
            c.span("d", "0s").unwrap_err().to_string(),
            format!("etc/f.toml: d = \"0s\": {DURATION_RULE}")
        );
    }
}
