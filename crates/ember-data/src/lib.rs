//! Data pipeline for ember: tokenizers, prepared token shards, the packed, resumable training
//! loader, and synthetic tasks ([`mqar`], [`niah`], sharing [`synthetic`]).
//!
//! The flow is `text files -> prepare() -> shard-*.bin + manifest.json ->
//! TokenShards::open() -> PackedLoader`. [`open_source`] does the first two steps
//! on demand and caches the result, so a recipe can point at raw text, JSON lines
//! or parquet files directly.

mod cache;
mod documents;
mod loader;
pub mod mqar;
pub mod niah;
mod prepare;
mod shards;
pub mod synthetic;
mod tokenizer;

pub use cache::{open_source, open_source_with};
pub use loader::{Batch, LoaderState, PackedLoader, TrainLoader, IGNORE};
pub use mqar::{mqar_batch, mqar_eval_batches, MqarLoader};
pub use niah::NiahLoader;
pub use prepare::{
    prepare, Dtype, Manifest, PrepareOptions, ShardInfo, MANIFEST_FILE, MANIFEST_VERSION,
};
pub use shards::{unigram_entropy, TokenShards};
pub use tokenizer::{train_tokenizer, Tokenizer, EOS_TOKEN};

/// Lower-case hex sha256 of a file, streamed so large shards don't need to fit in memory.
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {} to hash it", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
