//! Sweep results: the table of training runs every fit starts from, with CSV and JSONL I/O.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One finished training run of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Architecture label; runs with different labels are fitted separately.
    pub arch: String,
    /// Non-embedding parameter count N.
    pub n_params: f64,
    /// Training tokens D.
    pub tokens: f64,
    /// Training compute C in FLOPs (6·N·D when the input leaves it out).
    pub flops: f64,
    /// Final validation loss L (nats per token).
    pub loss: f64,
    /// Run identifier, shown in the report.
    pub name: String,
    /// Optional nominal isoFLOP budget; when set, approach 2 groups runs by this
    /// value instead of by nearby `flops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

impl RunResult {
    /// A run whose compute is the usual 6·N·D estimate.
    pub fn new(
        name: impl Into<String>,
        arch: impl Into<String>,
        n_params: f64,
        tokens: f64,
        loss: f64,
    ) -> Self {
        Self {
            arch: arch.into(),
            n_params,
            tokens,
            flops: 6.0 * n_params * tokens,
            loss,
            name: name.into(),
            budget: None,
        }
    }
}

/// A file of runs could not be read; names the file and, for bad rows, the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    BadRow {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: unknown extension (expected .csv, .jsonl or .json)")]
    UnknownFormat { path: PathBuf },
}

/// A row as written by people: only N, D and L are required.
#[derive(Deserialize)]
struct InputRow {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arch: String,
    n_params: f64,
    tokens: f64,
    #[serde(default)]
    flops: Option<f64>,
    loss: f64,
    #[serde(default)]
    budget: Option<f64>,
}

impl InputRow {
    /// Fills defaults and rejects values no fit can use (logs of them are taken).
    fn into_run(self, line: u64) -> Result<RunResult, String> {
        let flops = self.flops.unwrap_or(6.0 * self.n_params * self.tokens);
        for (field, value) in [
            ("n_params", self.n_params),
            ("tokens", self.tokens),
            ("flops", flops),
            ("loss", self.loss),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "{field} must be a positive finite number, got {value}"
                ));
            }
        }
        if let Some(b) = self.budget {
            if !(b.is_finite() && b > 0.0) {
                return Err(format!("budget must be a positive finite number, got {b}"));
            }
        }
        let name = if self.name.is_empty() {
            format!("line{line}")
        } else {
            self.name
        };
        Ok(RunResult {
            arch: self.arch,
            n_params: self.n_params,
            tokens: self.tokens,
            flops,
            loss: self.loss,
            name,
            budget: self.budget,
        })
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad_row(path: &Path, line: u64, message: impl ToString) -> DataError {
    DataError::BadRow {
        path: path.to_owned(),
        line,
        message: message.to_string(),
    }
}

/// Reads runs from a CSV file with a header row (`name,arch,n_params,tokens,flops,loss`,
/// optional `budget`; other columns are ignored, `flops` may be empty).
pub fn load_csv(path: &Path) -> Result<Vec<RunResult>, DataError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(file);
    let headers = reader.headers().map_err(|e| bad_row(path, 1, e))?.clone();
    let mut runs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad_row(path, line, e)
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let row: InputRow = record
            .deserialize(Some(&headers))
            .map_err(|e| bad_row(path, line, csv_message(&e, &headers)))?;
        runs.push(row.into_run(line).map_err(|e| bad_row(path, line, e))?);
    }
    Ok(runs)
}

/// Names the offending column instead of csv's record and field numbers.
fn csv_message(error: &csv::Error, headers: &csv::StringRecord) -> String {
    match error.kind() {
        csv::ErrorKind::Deserialize { err, .. } => {
            match err.field().and_then(|i| headers.get(i as usize)) {
                Some(column) => format!("column `{column}`: {}", err.kind()),
                None => err.kind().to_string(),
            }
        }
        _ => error.to_string(),
    }
}

/// serde_json's message without its "at line 1 column N" suffix (the line is the file's).
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

/// Reads runs from a JSON-lines file, one object per line; blank lines are skipped.
pub fn load_jsonl(path: &Path) -> Result<Vec<RunResult>, DataError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut runs = Vec::new();
    for (index, text) in BufReader::new(file).lines().enumerate() {
        let line = index as u64 + 1;
        let text = text.map_err(io_error(path))?;
        if text.trim().is_empty() {
            continue;
        }
        let row: InputRow = serde_json::from_str(&text).map_err(|e| {
            bad_row(
                path,
                line,
                format!("{}, column {}", json_message(&e), e.column()),
            )
        })?;
        runs.push(row.into_run(line).map_err(|e| bad_row(path, line, e))?);
    }
    Ok(runs)
}

/// Reads runs from `.csv` or `.jsonl`/`.json` (JSON lines), chosen by extension.
pub fn load_runs(path: &Path) -> Result<Vec<RunResult>, DataError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => load_csv(path),
        Some("jsonl" | "json") => load_jsonl(path),
        _ => Err(DataError::UnknownFormat {
            path: path.to_owned(),
        }),
    }
}

/// Writes runs as CSV in the column order `load_csv` documents.
pub fn write_csv(path: &Path, runs: &[RunResult]) -> Result<(), DataError> {
    let mut writer = csv::Writer::from_path(path).map_err(|e| DataError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    writer
        .write_record([
            "name", "arch", "n_params", "tokens", "flops", "loss", "budget",
        ])
        .and_then(|_| {
            runs.iter().try_for_each(|r| {
                let budget = r.budget.map(|b| b.to_string()).unwrap_or_default();
                writer.write_record([
                    r.name.clone(),
                    r.arch.clone(),
                    r.n_params.to_string(),
                    r.tokens.to_string(),
                    r.flops.to_string(),
                    r.loss.to_string(),
                    budget,
                ])
            })
        })
        .map_err(|e| DataError::Io {
            path: path.to_owned(),
            source: e.into(),
        })?;
    writer.flush().map_err(io_error(path))
}

/// Writes runs as JSON lines.
pub fn write_jsonl(path: &Path, runs: &[RunResult]) -> Result<(), DataError> {
    let mut out = BufWriter::new(File::create(path).map_err(io_error(path))?);
    for run in runs {
        let text = serde_json::to_string(run).expect("RunResult always serialises");
        writeln!(out, "{text}").map_err(io_error(path))?;
    }
    out.flush().map_err(io_error(path))
}
