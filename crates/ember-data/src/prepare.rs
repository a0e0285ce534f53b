//! Tokenizing source documents into binary token shards plus a `manifest.json`.
//!
//! Layout of a prepared dataset directory:
//! `shard-00000.bin, shard-00001.bin, ...` (little-endian u16 or u32 token ids, each
//! document followed by EOS) and `manifest.json` ([`Manifest`]). The directory is built
//! under a temporary name and renamed into place at the end, so a directory that has a
//! manifest is always complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::documents::{expand_sources, Document, Documents};
use crate::tokenizer::Tokenizer;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the shard or manifest format changes incompatibly.
pub const MANIFEST_VERSION: u32 = 1;

/// How [`prepare`] reads its sources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrepareOptions {
    /// JSON field / parquet column holding the text.
    pub text_field: String,
    /// Treat each non-empty line of a `.txt` file as its own document.
    pub split_lines: bool,
    /// Upper bound on one shard file's size.
    pub max_shard_bytes: u64,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            split_lines: false,
            max_shard_bytes: 64 << 20,
        }
    }
}

/// Storage type of token ids in the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// The smallest type that holds every id of a vocabulary.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the dataset directory.
    pub file: String,
    pub tokens: u64,
    pub sha256: String,
}

/// Contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub dtype: Dtype,
    pub vocab_size: usize,
    pub eos_id: u32,
    /// sha256 of the tokenizer file the shards were made with.
    pub tokenizer_sha256: String,
    /// Where that tokenizer was (informational).
    pub tokenizer_path: String,
    /// Source files, after directory expansion, in reading order.
    pub sources: Vec<String>,
    pub options: PrepareOptions,
    pub documents: u64,
    /// All tokens, EOS included.
    pub total_tokens: u64,
    pub shards: Vec<ShardInfo>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: cannot read the manifest; {} is not a prepared dataset (or its preparation never finished)", path.display(), dir.display())
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid manifest", path.display()))?;
        if manifest.format_version != MANIFEST_VERSION {
            bail!(
                "{}: format version {} is not supported (expected {MANIFEST_VERSION}); prepare the data again",
                path.display(),
                manifest.format_version
            );
        }
        Ok(manifest)
    }
}

/// Documents per `encode_batch` call: large enough to keep all cores busy.
const BATCH_DOCS: usize = 512;
const BATCH_BYTES: usize = 8 << 20;

/// Tokenizes every document of `sources` (files or directories of `.txt`, `.jsonl`/`.json`,
/// `.parquet`), appends EOS after each, and writes shards + manifest into `out_dir`, which
/// must not exist yet (or be empty). Empty or whitespace-only documents and parquet nulls
/// are skipped.
pub fn prepare(
    sources: &[PathBuf],
    tokenizer: &Path,
    out_dir: &Path,
    opts: &PrepareOptions,
) -> Result<Manifest> {
    let tok = Tokenizer::from_file(tokenizer)?;
    let files = expand_sources(sources)?;
    let dtype = Dtype::for_vocab(tok.vocab_size());
    let shard_tokens = (opts.max_shard_bytes / dtype.bytes() as u64).max(1);

    let staging = Staging::new(out_dir)?;
    let mut writer = ShardWriter::new(staging.dir.clone(), dtype, shard_tokens);
    let mut docs = Documents::new(files.clone(), &opts.text_field, opts.split_lines).peekable();
    let mut documents = 0u64;
    while docs.peek().is_some() {
        let mut batch: Vec<Document> = Vec::new();
        let mut bytes = 0;
        while batch.len() < BATCH_DOCS && bytes < BATCH_BYTES {
            match docs.next() {
                Some(doc) => {
                    let doc = doc?;
                    bytes += doc.text.len();
                    batch.push(doc);
                }
                None => break,
            }
        }
        let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
        let encoded = tok
            .encode_batch(&texts)
            .with_context(|| format!("tokenizing documents starting at {}", batch[0].origin))?;
        for ids in encoded {
            writer.push(&ids)?;
            writer.push(&[tok.eos_id()])?;
            documents += 1;
        }
    }
    if documents == 0 {
        let list: Vec<String> = sources.iter().map(|s| s.display().to_string()).collect();
        bail!("no documents found in {}", list.join(", "));
    }
    let shards = writer.finish()?;

    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        dtype,
        vocab_size: tok.vocab_size(),
        eos_id: tok.eos_id(),
        tokenizer_sha256: tok.sha256().to_string(),
        tokenizer_path: tokenizer.display().to_string(),
        sources: files.iter().map(|f| f.display().to_string()).collect(),
        options: opts.clone(),
        documents,
        total_tokens: shards.iter().map(|s| s.tokens).sum(),
        shards,
    };
    let path = staging.dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&manifest)?;
    write_synced(&path, json.as_bytes())?;
    staging.commit(out_dir)?;
    Ok(manifest)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Appends tokens to `shard-NNNNN.bin` files of at most `max_tokens` tokens each.
struct ShardWriter {
    dir: PathBuf,
    dtype: Dtype,
    max_tokens: u64,
    current: Option<(BufWriter<File>, Sha256, u64)>,
    done: Vec<ShardInfo>,
    buf: Vec<u8>,
}

impl ShardWriter {
    fn new(dir: PathBuf, dtype: Dtype, max_tokens: u64) -> Self {
        Self {
            dir,
            dtype,
            max_tokens,
            current: None,
            done: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn name(index: usize) -> String {
        format!("shard-{index:05}.bin")
    }

    fn push(&mut self, mut ids: &[u32]) -> Result<()> {
        while !ids.is_empty() {
            if self.current.is_none() {
                let path = self.dir.join(Self::name(self.done.len()));
                let file = File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                self.current = Some((BufWriter::with_capacity(1 << 20, file), Sha256::new(), 0));
            }
            let (file, hasher, count) = self.current.as_mut().unwrap();
            let take = ids.len().min((self.max_tokens - *count) as usize);
            self.buf.clear();
            for &id in &ids[..take] {
                match self.dtype {
                    Dtype::U16 => self.buf.extend_from_slice(&(id as u16).to_le_bytes()),
                    Dtype::U32 => self.buf.extend_from_slice(&id.to_le_bytes()),
                }
            }
            let path = self.dir.join(Self::name(self.done.len()));
            file.write_all(&self.buf)
                .with_context(|| format!("cannot write {}", path.display()))?;
            hasher.update(&self.buf);
            *count += take as u64;
            ids = &ids[take..];
            if *count == self.max_tokens {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((file, hasher, tokens)) = self.current.take() {
            let file_name = Self::name(self.done.len());
            let path = self.dir.join(&file_name);
            let file = file
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("cannot write {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot sync {}", path.display()))?;
            self.done.push(ShardInfo {
                file: file_name,
                tokens,
                sha256: crate::hex(&hasher.finalize()),
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ShardInfo>> {
        self.close_current()?;
        Ok(self.done)
    }
}

/// A temporary sibling of the output directory; removed on drop unless committed.
pub(crate) struct Staging {
    pub dir: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn new(out_dir: &Path) -> Result<Self> {
        if std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "output directory {} already exists and is not empty; remove it first",
                out_dir.display()
            );
        }
        let parent = parent_of(out_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = out_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        let dir = parent.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover from a crashed run with the same pid is garbage: start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        Ok(Self {
            dir,
            committed: false,
        })
    }

    /// Makes the staged directory durable and moves it to `out_dir` in one rename.
    pub fn commit(mut self, out_dir: &Path) -> Result<()> {
        sync_dir(&self.dir)?;
        if out_dir.exists() {
            // rename() only replaces an empty directory; re-check to give a clear error.
            std::fs::remove_dir(out_dir).with_context(|| {
                format!(
                    "output directory {} appeared while preparing and is not empty",
                    out_dir.display()
                )
            })?;
        }
        std::fs::rename(&self.dir, out_dir).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.dir.display(),
                out_dir.display()
            )
        })?;
        self.committed = true;
        sync_dir(&parent_of(out_dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a directory so that the names in it (renames, new files) survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
