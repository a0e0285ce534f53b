//! Metric sinks: `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.
//!
//! The TensorBoard writer is ours rather than `tensorboard-rs` 0.5.9: that crate panics on I/O
//! errors (`expect("")`), names files by the second so two writers in one process and second
//! overwrite each other (a resume in the same second loses the first file), and pulls in old
//! `image`/`protobuf` stacks. Scalars need only the TFRecord framing and a three-field protobuf,
//! written below and checked against TensorBoard's own reader (docs/BENCHMARKS.md notes how).
use anyhow::{Context, Result};
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `{"step": .., "time": .., name: value, ..}` lines.
pub struct JsonlSink {
    file: BufWriter<File>,
    path: PathBuf,
}

impl JsonlSink {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open metrics file {}", path.display()))?;
        Ok(Self { file: BufWriter::new(file), path: path.to_path_buf() })
    }

    pub fn log(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), json!(step));
        obj.insert("time".into(), json!(unix_time()));
        for (k, v) in values {
            obj.insert((*k).into(), json!(v));
        }
        writeln!(self.file, "{}", serde_json::Value::Object(obj))
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Writes scalar summaries to `events.out.tfevents.*` in a log directory.
pub struct TensorBoardSink {
    file: BufWriter<File>,
    path: PathBuf,
}

impl TensorBoardSink {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create TensorBoard directory {}", dir.display()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "ember".into());
        // Nanoseconds and pid keep names unique across resumes within one second.
        let name = format!("events.out.tfevents.{}.{host}.{}.{}", now.as_secs(), std::process::id(), now.subsec_nanos());
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut sink = Self { file: BufWriter::new(file), path };
        let mut event = Vec::new();
        proto::double(&mut event, 1, unix_time());
        proto::bytes(&mut event, 3, b"brain.Event:2");
        sink.record(&event)?;
        Ok(sink)
    }

    pub fn log(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            proto::bytes(&mut v, 1, tag.as_bytes());
            proto::float(&mut v, 2, *value as f32);
            proto::bytes(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        proto::double(&mut event, 1, unix_time());
        proto::varint_field(&mut event, 2, step as u64);
        proto::bytes(&mut event, 5, &summary);
        self.record(&event)?;
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data.
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&out).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The few protobuf wire encodings an `Event { wall_time, step, file_version, summary }` needs.
mod proto {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, (field as u64) << 3);
        varint(out, v);
    }
    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        varint(out, ((field as u64) << 3) | 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u32, v: f32) {
        varint(out, ((field as u64) << 3) | 5);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        varint(out, ((field as u64) << 3) | 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// Every enabled sink together.
pub struct Metrics {
    jsonl: Option<JsonlSink>,
    tensorboard: Option<TensorBoardSink>,
}

impl Metrics {
    pub fn open(run_dir: &Path, jsonl: bool, tensorboard: bool) -> Result<Self> {
        Ok(Self {
            jsonl: jsonl.then(|| JsonlSink::open(&run_dir.join("metrics.jsonl"))).transpose()?,
            tensorboard: tensorboard.then(|| TensorBoardSink::create(&run_dir.join("tensorboard"))).transpose()?,
        })
    }

    pub fn log(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        if let Some(s) = &mut self.jsonl {
            s.log(step, values)?;
        }
        if let Some(s) = &mut self.tensorboard {
            s.log(step, values)?;
        }
        Ok(())
    }
}
