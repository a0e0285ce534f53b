//! The raw TOML side of a recipe: parsing, `--set` overrides, and mapping dotted keys back to
//! the line they were written on (or the `--set` that set them).
use super::error::{ErrorKind, Origin, RecipeError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::{Spanned, Table, Value};

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a key path the way a user writes it: `model.mixers.lin.heads`, `model.schedule.at.lin[1]`.
/// Keys that are not TOML bare keys are quoted.
pub(crate) fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if is_bare_key(k) {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Splits a dotted key as produced by `validate()` (`model.schedule.at.lin`) into segments.
/// Array indices may follow a key: `optim.betas[1]`.
pub(crate) fn parse_dotted(key: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in key.split('.').filter(|k| !k.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        path.push(Seg::Key(name.to_string()));
        while let Some((index, tail)) = rest.split_once(']') {
            match index.parse() {
                Ok(i) => path.push(Seg::Index(i)),
                Err(_) => break,
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    path
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line and column of byte offset `pos` in `text`.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Maps keys to where their values came from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Locator {
    /// The recipe file, as given.
    pub file: PathBuf,
    /// Dotted key → line where the key is written (its first mention).
    lines: HashMap<String, usize>,
    /// `--set` overrides in order: key path and the whole argument.
    overrides: Vec<Override>,
}

#[derive(Clone, Debug)]
struct Override {
    path: Vec<Seg>,
    arg: String,
    /// The first table this override created because the recipe did not have it, with the
    /// names that did exist next to it.
    created: Option<(Vec<Seg>, Vec<String>)>,
}

impl Locator {
    pub fn new(file: &Path, text: &str) -> Self {
        let mut lines = HashMap::new();
        if let Ok(root) = DeTable::parse(text) {
            index_table(root.get_ref(), &mut Vec::new(), text, &mut lines);
        }
        Self { file: file.to_path_buf(), lines, overrides: Vec::new() }
    }

    /// Where the value at `path` came from: the last `--set` that wrote it or a table above it,
    /// else its line in the file, else (when `fallback_to_parent`) the line of the nearest
    /// enclosing table that is written in the file.
    pub fn origin(&self, path: &[Seg], fallback_to_parent: bool) -> (Origin, Option<String>) {
        if let Some(o) = self.overrides.iter().rev().find(|o| path.starts_with(&o.path)) {
            return (Origin::Set(o.arg.clone()), o.created.as_ref().map(created_note));
        }
        // A key below a table that a --set created (e.g. the `kind` a new mixer table lacks).
        if let Some(o) = self
            .overrides
            .iter()
            .rev()
            .find(|o| o.created.as_ref().is_some_and(|(c, _)| path.starts_with(c)))
        {
            return (Origin::Set(o.arg.clone()), o.created.as_ref().map(created_note));
        }
        // Keys below `path` that a --set changed may be what is wrong with it (a validation
        // error about a whole table, e.g. `model.mlp`): say so.
        let below: Vec<&str> = self
            .overrides
            .iter()
            .filter(|o| !path.is_empty() && o.path.starts_with(path))
            .map(|o| o.arg.as_str())
            .collect();
        let note = (!below.is_empty()).then(|| format!("changed by --set {}", below.join(", --set ")));
        let mut p = path;
        loop {
            if let Some(&line) = self.lines.get(&dotted(p)) {
                return (Origin::Line { line, column: None }, note);
            }
            if !fallback_to_parent || p.is_empty() {
                return (Origin::File, note);
            }
            p = &p[..p.len() - 1];
        }
    }

    /// An error about `path`, located.
    pub fn error(&self, path: &[Seg], kind: ErrorKind) -> RecipeError {
        let fallback = !matches!(kind, ErrorKind::MissingKey { .. } | ErrorKind::UnknownKey { .. });
        let (origin, note) = self.origin(path, fallback);
        let mut e = RecipeError::new(&self.file, origin, kind);
        e.note = note;
        e
    }

    /// Applies `--set KEY=VALUE` overrides to `table`, remembering which keys they set.
    pub fn apply_overrides(&mut self, table: &mut Table, overrides: &[String]) -> Result<(), RecipeError> {
        for arg in overrides {
            let bad = |message: String| {
                RecipeError::new(&self.file, Origin::Set(arg.clone()), ErrorKind::Override { message })
            };
            let (key, raw) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE, e.g. --set optim.lr=3e-4".into()))?;
            let key = key.trim();
            let keys: Vec<&str> = key.split('.').map(str::trim).collect();
            if let Some(k) = keys.iter().find(|k| !is_bare_key(k)) {
                return Err(bad(format!(
                    "{key:?} is not a dotted key (segment {k:?}: use letters, digits, '_' and '-', separated by '.')"
                )));
            }
            let value = parse_value(raw.trim()).map_err(bad)?;
            let path: Vec<Seg> = keys.iter().map(|k| Seg::Key(k.to_string())).collect();
            let mut created = None;
            let mut t = &mut *table;
            for (i, k) in keys[..keys.len() - 1].iter().enumerate() {
                if !t.contains_key(*k) {
                    if created.is_none() {
                        created = Some((path[..=i].to_vec(), t.keys().cloned().collect()));
                    }
                    t.insert(k.to_string(), Value::Table(Table::new()));
                }
                t = match t.get_mut(*k) {
                    Some(Value::Table(inner)) => inner,
                    Some(other) => {
                        return Err(bad(format!(
                            "{} is {}, not a table, so it has no key {:?}",
                            dotted(&path[..=i]),
                            a_type(other),
                            keys[i + 1]
                        )))
                    }
                    None => unreachable!("inserted above"),
                };
            }
            t.insert(keys[keys.len() - 1].to_string(), value);
            self.overrides.push(Override { path, arg: arg.clone(), created });
        }
        Ok(())
    }
}

/// `an integer`, `a string`, ... for messages.
pub(crate) fn a_type(value: &Value) -> String {
    let t = value.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {t}")
}

fn created_note((path, siblings): &(Vec<Seg>, Vec<String>)) -> String {
    let name = match path.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "",
    };
    let parent = dotted(&path[..path.len() - 1]);
    let where_ = if parent.is_empty() { "the top level".to_string() } else { parent };
    let guess = suggest(name, siblings).map(|s| format!("did you mean {s}? ")).unwrap_or_default();
    format!(
        "the recipe has no {}, so this --set created it; {guess}{where_} has: {}",
        dotted(path),
        if siblings.is_empty() { "nothing".to_string() } else { siblings.join(", ") }
    )
}

/// A `--set` value: any TOML value (`3e-4`, `true`, `[1, 6]`, `"text"`, `{ kind = "attention" }`);
/// anything else that does not look like the start of one is taken as a bare string (`cpu`).
fn parse_value(raw: &str) -> Result<Value, String> {
    if raw.is_empty() {
        return Err("no value after '=' (write KEY='\"\"' for an empty string)".into());
    }
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => Ok(t.remove("v").expect("parsed one key")),
        Err(e) => {
            let structured = raw.starts_with(['"', '\'', '[', '{']);
            if structured || raw.contains(['\n', '#']) {
                Err(format!("value {raw:?} is not a valid TOML value: {}", e.message().trim()))
            } else {
                Ok(Value::String(raw.to_string()))
            }
        }
    }
}

fn index_table(t: &DeTable<'_>, path: &mut Vec<Seg>, text: &str, out: &mut HashMap<String, usize>) {
    for (k, v) in t.iter() {
        path.push(Seg::Key(k.get_ref().to_string()));
        out.entry(dotted(path)).or_insert_with(|| line_col(text, k.span().start).0);
        index_value(v, path, text, out);
        path.pop();
    }
}

fn index_value(v: &Spanned<DeValue<'_>>, path: &mut Vec<Seg>, text: &str, out: &mut HashMap<String, usize>) {
    match v.get_ref() {
        DeValue::Table(t) => index_table(t, path, text, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                out.entry(dotted(path)).or_insert_with(|| line_col(text, item.span().start).0);
                index_value(item, path, text, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn suggest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, c)| *score >= 0.8 || strsim::damerau_levenshtein(word, c) <= 1)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}
