//! [`RecipeError`]: every problem a user can cause in a recipe, located by file, line and key.
use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a recipe an error points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line (1-based) of the recipe file, and the column (1-based) when it is meaningful
    /// (TOML syntax errors).
    Line { line: usize, column: Option<usize> },
    /// The value came from a `--set KEY=VALUE` override (the whole argument).
    Set(String),
    /// The whole file (a missing key, an unreadable file).
    File,
}

impl fmt::Display for Origin {
    /// The part between the file name and the message, separators included:
    /// `:14: `, `:3:9: `, `: --set optim.lr=abc: ` or `: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { line, column: Some(column) } => write!(f, ":{line}:{column}: "),
            Origin::Line { line, column: None } => write!(f, ":{line}: "),
            Origin::Set(arg) => write!(f, ": --set {arg}: "),
            Origin::File => write!(f, ": "),
        }
    }
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    /// The recipe file exists but could not be read.
    #[error("cannot read the recipe: {message}")]
    Read { message: String },
    /// The recipe file was not found in any of the places `Recipe::resolve_path` looks.
    #[error("recipe not found (looked at: {})", list(.tried))]
    NotFound { tried: Vec<PathBuf> },
    /// The text is not valid TOML.
    #[error("TOML syntax error: {message}")]
    Syntax { message: String },
    /// A `--set` argument is malformed (no `=`, bad key, unparsable value, ...).
    #[error("bad override: {message}")]
    Override { message: String },
    /// A key the schema does not have.
    #[error("unknown key {key}{}", unknown_hint(.suggestion, .expected))]
    UnknownKey {
        /// Dotted path of the offending key.
        key: String,
        /// The closest valid key at that level, when one is close enough.
        suggestion: Option<String>,
        /// Every valid key at that level.
        expected: Vec<String>,
    },
    /// A required key is absent.
    #[error("missing key {key}{hint}")]
    MissingKey { key: String, hint: String },
    /// A value of the wrong type, or one that fails validation.
    #[error("key {key}: {message}")]
    Invalid { key: String, message: String },
    /// A data path that does not exist.
    #[error("key {key}: {what} {} not found (looked at: {})", .path.display(), list(.tried))]
    FileNotFound { key: String, what: &'static str, path: PathBuf, tried: Vec<PathBuf> },
}

/// A recipe error. Its `Display` is `FILE[:LINE[:COL]]: [--set ARG: ]MESSAGE[ (note: ...)]`,
/// for example `recipes/x.toml:14: key optim.lr: invalid type: string "fast", expected f64`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{origin}{kind}{}", .file.display(), note_suffix(.note))]
pub struct RecipeError {
    /// The recipe file, as given.
    pub file: PathBuf,
    /// Line or `--set` argument the error points at.
    pub origin: Origin,
    /// What is wrong (boxed to keep `Result<_, RecipeError>` small).
    pub kind: Box<ErrorKind>,
    /// Extra context, e.g. that a `--set` created a table the recipe does not define.
    pub note: Option<String>,
}

impl RecipeError {
    pub(crate) fn new(file: &Path, origin: Origin, kind: ErrorKind) -> Self {
        Self { file: file.to_path_buf(), origin, kind: Box::new(kind), note: None }
    }

    /// The dotted key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match &*self.kind {
            ErrorKind::UnknownKey { key, .. }
            | ErrorKind::MissingKey { key, .. }
            | ErrorKind::Invalid { key, .. }
            | ErrorKind::FileNotFound { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based line of the recipe file the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self.origin {
            Origin::Line { line, .. } => Some(line),
            _ => None,
        }
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn unknown_hint(suggestion: &Option<String>, expected: &[String]) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None if expected.is_empty() => String::new(),
        None => format!(" (expected one of: {})", expected.join(", ")),
    }
}

fn note_suffix(note: &Option<String>) -> String {
    note.as_ref().map(|n| format!(" (note: {n})")).unwrap_or_default()
}
