//! Reading documents out of source files: `.txt`, `.jsonl`/`.json` (JSON lines) and
//! `.parquet`. Shared by [`crate::prepare`] and [`crate::train_tokenizer`] so both see
//! exactly the same text.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

/// Extensions [`expand_sources`] accepts.
const EXTENSIONS: &[&str] = &["txt", "jsonl", "json", "parquet"];

/// One document and where it came from (`path`, `path:line` or `path row N`), for errors.
pub(crate) struct Document {
    pub text: String,
    pub origin: String,
}

/// Replaces each directory by the supported files inside it (recursively, sorted,
/// hidden entries skipped) and checks that explicitly named files have a supported
/// extension. Directories may hold other files (README.md, ...): those are ignored.
pub(crate) fn expand_sources(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for source in sources {
        let meta = std::fs::metadata(source).with_context(|| {
            format!(
                "data source {} does not exist or is unreadable",
                source.display()
            )
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(source, &mut files)?;
            if files.len() == before {
                bail!(
                    "data source directory {} contains no .txt, .jsonl, .json or .parquet files",
                    source.display()
                );
            }
        } else {
            kind_of(source)?;
            files.push(source.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list directory {}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if kind_of(&path).is_ok() {
            files.push(path);
        }
    }
    Ok(())
}

fn kind_of(path: &Path) -> Result<&'static str> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    EXTENSIONS.iter().copied().find(|e| *e == ext).ok_or_else(|| {
        anyhow!(
            "{}: unknown extension {:?}; expected one of .txt, .jsonl, .json (JSON lines) or .parquet",
            path.display(),
            ext
        )
    })
}

type DocIter = Box<dyn Iterator<Item = Result<Document>> + Send>;

/// Streams the documents of a list of files in order; stops after the first error.
pub(crate) struct Documents {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<DocIter>,
    text_field: String,
    split_lines: bool,
    failed: bool,
}

impl Documents {
    /// `files` should come from [`expand_sources`]. `split_lines` makes each non-empty
    /// line of a `.txt` file one document; `text_field` names the JSON field / parquet column.
    pub fn new(files: Vec<PathBuf>, text_field: &str, split_lines: bool) -> Self {
        Self {
            files: files.into_iter(),
            current: None,
            text_field: text_field.to_string(),
            split_lines,
            failed: false,
        }
    }

    fn open(&self, path: PathBuf) -> Result<DocIter> {
        Ok(match kind_of(&path)? {
            "txt" if self.split_lines => {
                let origin = path.display().to_string();
                // Blank lines become empty documents, which `next` skips.
                Box::new(Lines::open(&path)?.map(move |line| {
                    line.map(|(n, text)| Document {
                        text,
                        origin: format!("{origin}:{n}"),
                    })
                }))
            }
            "txt" => {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    anyhow!(
                        "{}: not valid UTF-8 (at byte {})",
                        path.display(),
                        e.utf8_error().valid_up_to()
                    )
                })?;
                Box::new(std::iter::once(Ok(Document {
                    text,
                    origin: path.display().to_string(),
                })))
            }
            "jsonl" | "json" => {
                let field = self.text_field.clone();
                let origin = path.display().to_string();
                Box::new(Lines::open(&path)?.filter_map(move |line| {
                    let (n, line) = match line {
                        Ok((_, l)) if l.trim().is_empty() => return None,
                        Ok(x) => x,
                        Err(e) => return Some(Err(e)),
                    };
                    Some(
                        json_text(&line, &field)
                            .map(|text| Document {
                                text,
                                origin: format!("{origin}:{n}"),
                            })
                            .map_err(|e| anyhow!("{origin}:{n}: {e}")),
                    )
                }))
            }
            _ => parquet_docs(&path, &self.text_field)?,
        })
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        while !self.failed {
            if let Some(docs) = &mut self.current {
                match docs.next() {
                    Some(Ok(doc)) if doc.text.trim().is_empty() => continue, // nothing to learn from
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    Some(doc) => return Some(doc),
                    None => self.current = None,
                }
            }
            let path = self.files.next()?;
            match self.open(path) {
                Ok(docs) => self.current = Some(docs),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

fn json_text(line: &str, field: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        if line.trim_start().starts_with('[') {
            anyhow!("expected one JSON object per line (JSON lines), found an array; convert the file to JSON lines")
        } else {
            anyhow!("invalid JSON: {e}")
        }
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| anyhow!("expected a JSON object, found {}", kind(&value)))?;
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("field {field:?} is {}, expected a string", kind(other)),
        None => bail!("missing field {field:?}"),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// UTF-8 lines with 1-based numbers, without the line terminator; errors name `path:line`.
struct Lines {
    reader: BufReader<File>,
    path: PathBuf,
    line: u64,
    done: bool,
}

impl Lines {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            reader: BufReader::new(file),
            path: path.to_path_buf(),
            line: 0,
            done: false,
        })
    }
}

impl Iterator for Lines {
    type Item = Result<(u64, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        self.line += 1;
        let result = match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(_) => {
                if buf.ends_with(b"\n") {
                    buf.pop();
                    if buf.ends_with(b"\r") {
                        buf.pop();
                    }
                }
                String::from_utf8(buf).map(|s| (self.line, s)).map_err(|e| {
                    anyhow!(
                        "{}:{}: not valid UTF-8 (at byte {} of the line)",
                        self.path.display(),
                        self.line,
                        e.utf8_error().valid_up_to()
                    )
                })
            }
            Err(e) => Err(anyhow!(
                "{}:{}: read error: {e}",
                self.path.display(),
                self.line
            )),
        };
        self.done = result.is_err();
        Some(result)
    }
}

/// Rows of one string column of a parquet file (any compression the crate was built with).
fn parquet_docs(path: &Path, column: &str) -> Result<DocIter> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema();
    let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    let field = schema
        .get_fields()
        .iter()
        .find(|f| f.name() == column)
        .ok_or_else(|| {
            anyhow!(
                "{}: parquet file has no column {column:?} (columns: {})",
                path.display(),
                names.join(", ")
            )
        })?;
    if !field.is_primitive() || field.get_physical_type() != PhysicalType::BYTE_ARRAY {
        bail!(
            "{}: parquet column {column:?} is not a string column",
            path.display()
        );
    }
    let projection = Type::group_type_builder("schema")
        .with_fields(vec![field.clone()])
        .build()?;
    let rows = RowIter::from_file_into(Box::new(reader))
        .project(Some(projection))
        .with_context(|| format!("{}: cannot read parquet column {column:?}", path.display()))?;
    let origin = path.display().to_string();
    let column = column.to_string();
    Ok(Box::new(rows.enumerate().filter_map(move |(i, row)| {
        let at = || format!("{origin} row {i}");
        let row = match row {
            Ok(row) => row,
            Err(e) => return Some(Err(anyhow!("{}: unreadable parquet data: {e}", at()))),
        };
        let text = match row.get_column_iter().next().map(|(_, f)| f) {
            Some(Field::Str(s)) => s.clone(),
            Some(Field::Bytes(b)) => match std::str::from_utf8(b.data()) {
                Ok(s) => s.to_string(),
                Err(_) => {
                    return Some(Err(anyhow!(
                        "{}: column {column:?} is not valid UTF-8",
                        at()
                    )))
                }
            },
            Some(Field::Null) | None => return None, // missing text: nothing to train on
            Some(other) => {
                return Some(Err(anyhow!(
                    "{}: column {column:?} holds {other:?}, not a string",
                    at()
                )))
            }
        };
        Some(Ok(Document { text, origin: at() }))
    })))
}
