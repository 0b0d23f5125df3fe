//! The pipeline as users write it: the RON schema, parsed and validated.
//!
//! This layer is **pure**: it never touches the filesystem, processes or the network. The
//! caller reads a file and hands its text to [`load`]; what comes back is either a
//! [`Pipeline`] that passed every check in [`validate`] or a list of [`Diagnostic`]s, each with
//! the file, `line:column`, the names involved and a hint saying what to do next.
//!
//! # Design
//! - Everything a user names (steps, services, secrets, toolchains, input sets, environments)
//!   is written as a RON *map* keyed by name and kept in declaration order in a [`Named`].
//!   A name declared twice is a parse error that points at the second declaration.
//! - Every struct denies unknown fields, so a misspelt field is an error; [`load`] adds the
//!   closest valid field name as a hint.
//! - Durations ([`Dur`]) and globs are checked while parsing or validating, never when used.
//! - The RON text's formatting and comments carry no meaning: nothing downstream (keys, plans)
//!   ever sees the source text, only these types.
//!
//! The language reference with an example of every construct is `docs/pipeline.md`.

pub mod edit;
mod locate;
mod placeholder;
mod types;
pub mod validate;

#[cfg(test)]
mod fuzz_tests;

pub use locate::Locator;
pub use placeholder::{placeholders, render, Placeholder};
pub use types::*;

use std::fmt;

/// One problem found in a pipeline file, located and explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The pipeline file as the user named it.
    pub file: String,
    /// 1-based line and column, when the problem has a place in the text.
    pub line: usize,
    pub col: usize,
    /// What is wrong, naming the step, service, field ... involved.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Parse and validate a pipeline. `file` is used only to label diagnostics.
pub fn load(file: &str, bytes: &[u8]) -> Result<Pipeline, Vec<Diagnostic>> {
    let pipeline = parse(file, bytes).map_err(|d| vec![d])?;
    let problems = validate::validate(&pipeline, &Locator::new(file, bytes));
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(problems)
    }
}

/// Parse only (syntax and schema), without semantic checks.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Pipeline, Diagnostic> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, col) = Locator::new(file, bytes).line_col(e.valid_up_to());
        Diagnostic {
            file: file.to_string(),
            line,
            col,
            message: "the file is not valid UTF-8 text".into(),
            hint: Some("pipelines are RON text files; check the file is not binary".into()),
        }
    })?;
    if text.trim().is_empty() {
        return Err(Diagnostic {
            file: file.to_string(),
            line: 1,
            col: 1,
            message: "the pipeline file is empty".into(),
            hint: Some("start from `Pipeline(name: \"my-app\", steps: { ... })`; see docs/pipeline.md".into()),
        });
    }
    let options = ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .with_recursion_limit(64);
    options.from_str::<Pipeline>(text).map_err(|e| from_ron_error(file, e))
}

fn from_ron_error(file: &str, e: ron::error::SpannedError) -> Diagnostic {
    use ron::error::Error as E;
    let (message, hint) = match &e.code {
        E::NoSuchStructField { expected, found, outer } => (
            format!(
                "unknown field `{found}`{}",
                outer.as_deref().map(|o| format!(" in {}", describe_outer(o))).unwrap_or_default()
            ),
            Some(suggest(found, expected)),
        ),
        E::NoSuchEnumVariant { expected, found, outer } => (
            format!(
                "unknown variant `{found}`{}",
                outer.as_deref().map(|o| format!(" of {}", describe_outer(o))).unwrap_or_default()
            ),
            Some(suggest(found, expected)),
        ),
        E::MissingStructField { field, outer } => (
            format!(
                "missing field `{field}`{}",
                outer.as_deref().map(|o| format!(" in {}", describe_outer(o))).unwrap_or_default()
            ),
            Some(format!("add `{field}: ...`; see docs/pipeline.md for what it takes")),
        ),
        E::DuplicateStructField { field, .. } => {
            (format!("field `{field}` is given twice"), Some("remove one of the two".into()))
        }
        E::Eof => ("unexpected end of file".into(), Some("a bracket or parenthesis is probably not closed".into())),
        E::ExceededRecursionLimit => {
            ("the file nests too deeply".into(), Some("pipelines need only a few levels of nesting".into()))
        }
        other => (other.to_string(), None),
    };
    Diagnostic { file: file.to_string(), line: e.span.start.line.max(1), col: e.span.start.col.max(1), message, hint }
}

fn describe_outer(outer: &str) -> String {
    format!("`{outer}`")
}

/// "did you mean" for a misspelt name, or the list of valid names.
pub fn suggest(found: &str, expected: &[&str]) -> String {
    let best = expected.iter().map(|c| (edit_distance(found, c), *c)).min_by_key(|(d, _)| *d);
    match best {
        Some((d, name)) if d <= (found.len().max(3) / 2).max(2) => {
            format!("did you mean `{name}`?")
        }
        _ if expected.is_empty() => "remove it".into(),
        _ => format!("valid names here: {}", expected.join(", ")),
    }
}

/// Levenshtein distance, for hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(edit_distance("nedds", "needs"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("nedds", &["run", "needs", "outputs"]), "did you mean `needs`?");
        assert!(suggest("zzzzzzzz", &["run", "needs"]).starts_with("valid names here"));
    }
}
