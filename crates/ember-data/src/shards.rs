//! Read access to a prepared dataset: memory-mapped shards seen as one token stream.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::prepare::{Dtype, Manifest};

/// A prepared dataset opened for reading. Cloning is cheap (shared maps).
#[derive(Clone)]
pub struct TokenShards {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    manifest: Manifest,
    maps: Vec<Mmap>,
    /// `starts[i]` = index of shard i's first token in the stream; last entry = total.
    starts: Vec<usize>,
}

impl TokenShards {
    /// Opens `dir/manifest.json` and maps every shard, checking that each file has exactly
    /// the size the manifest promises (catches truncated or swapped files cheaply; use
    /// [`TokenShards::verify`] for a full checksum).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let manifest = Manifest::load(dir)?;
        let manifest_path = dir.join(crate::MANIFEST_FILE);
        if manifest.dtype == Dtype::U16 && manifest.vocab_size > 1 << 16 {
            bail!(
                "{}: dtype u16 cannot hold a vocabulary of {}",
                manifest_path.display(),
                manifest.vocab_size
            );
        }
        if manifest.eos_id as usize >= manifest.vocab_size {
            bail!(
                "{}: eos_id {} is outside the vocabulary ({})",
                manifest_path.display(),
                manifest.eos_id,
                manifest.vocab_size
            );
        }
        let width = manifest.dtype.bytes() as u64;
        let mut maps = Vec::with_capacity(manifest.shards.len());
        let mut starts = vec![0usize];
        for shard in &manifest.shards {
            if shard.file.contains(['/', '\\']) || shard.file.starts_with('.') {
                bail!(
                    "{}: shard name {:?} must be a plain file name",
                    manifest_path.display(),
                    shard.file
                );
            }
            let path = dir.join(&shard.file);
            let file = File::open(&path).with_context(|| {
                format!(
                    "{}: shard listed in the manifest cannot be opened",
                    path.display()
                )
            })?;
            let size = file
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            if shard.tokens == 0 || size != shard.tokens * width {
                bail!(
                    "{}: file is {size} bytes but the manifest says {} tokens ({} bytes); the dataset is truncated or corrupt, prepare it again",
                    path.display(),
                    shard.tokens,
                    shard.tokens * width
                );
            }
            // SAFETY: prepared datasets are written once and never modified in place; the
            // map is read-only. Mutating the files while they are open is unsupported.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot memory-map {}", path.display()))?;
            maps.push(map);
            starts.push(starts.last().unwrap() + shard.tokens as usize);
        }
        if *starts.last().unwrap() as u64 != manifest.total_tokens {
            bail!(
                "{}: total_tokens is {} but the shards hold {}",
                manifest_path.display(),
                manifest.total_tokens,
                starts.last().unwrap()
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                manifest,
                maps,
                starts,
            }),
        })
    }

    pub fn num_tokens(&self) -> usize {
        *self.inner.starts.last().unwrap()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.manifest.vocab_size
    }

    pub fn eos_id(&self) -> u32 {
        self.inner.manifest.eos_id
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Tokens `range` of the stream, across shard boundaries.
    ///
    /// # Panics
    /// If `range` reaches past [`TokenShards::num_tokens`], like slice indexing.
    pub fn get(&self, range: Range<usize>) -> Vec<u32> {
        let mut out = Vec::with_capacity(range.len());
        self.read_into(range, &mut out);
        out
    }

    /// Appends tokens `range` to `out` (lets the loader reuse its buffers).
    pub fn read_into(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let Inner {
            starts,
            maps,
            manifest,
            ..
        } = &*self.inner;
        assert!(
            range.start <= range.end && range.end <= self.num_tokens(),
            "token range {range:?} out of bounds for a dataset of {} tokens",
            self.num_tokens()
        );
        let mut pos = range.start;
        while pos < range.end {
            let shard = starts.partition_point(|&s| s <= pos) - 1;
            let end = range.end.min(starts[shard + 1]);
            let (a, b) = (pos - starts[shard], end - starts[shard]);
            decode(manifest.dtype, &maps[shard], a..b, out);
            pos = end;
        }
    }

    /// Re-hashes every shard and compares with the manifest's sha256 (reads everything).
    pub fn verify(&self) -> Result<()> {
        for shard in &self.inner.manifest.shards {
            let path = self.inner.dir.join(&shard.file);
            let sha = crate::sha256_file(&path)?;
            if sha != shard.sha256 {
                bail!(
                    "{}: sha256 {sha} does not match the manifest's {}; the shard is corrupt",
                    path.display(),
                    shard.sha256
                );
            }
        }
        Ok(())
    }

    fn for_each_shard(&self, mut f: impl FnMut(&[u8])) {
        for map in &self.inner.maps {
            f(map);
        }
    }
}

fn decode(dtype: Dtype, bytes: &[u8], tokens: Range<usize>, out: &mut Vec<u32>) {
    let w = dtype.bytes();
    let bytes = &bytes[tokens.start * w..tokens.end * w];
    match dtype {
        Dtype::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
        ),
        Dtype::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
    }
}

/// Entropy of the dataset's token frequencies, in nats per token: the loss of the best
/// model that ignores context. A language model whose loss goes below this has learned
/// something from context.
pub fn unigram_entropy(data: &TokenShards) -> f64 {
    let mut counts = vec![0u64; data.vocab_size()];
    let dtype = data.manifest().dtype;
    data.for_each_shard(|bytes| {
        let mut ids = Vec::new();
        for chunk in bytes.chunks(1 << 20) {
            ids.clear();
            decode(dtype, chunk, 0..chunk.len() / dtype.bytes(), &mut ids);
            for &id in &ids {
                let id = id as usize;
                if id >= counts.len() {
                    counts.resize(id + 1, 0);
                }
                counts[id] += 1;
            }
        }
    });
    let total = data.num_tokens() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / total)
        .map(|p| -p * p.ln())
        .sum()
}
