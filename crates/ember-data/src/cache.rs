//! "Give me tokens for this path": open a prepared dataset, or prepare raw files once
//! into a content-addressed cache directory and reuse it afterwards.

use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::documents::expand_sources;
use crate::prepare::{prepare, PrepareOptions, MANIFEST_FILE, MANIFEST_VERSION};
use crate::shards::TokenShards;

/// [`open_source_with`] with default [`PrepareOptions`].
pub fn open_source(source: &Path, tokenizer: &Path, cache_root: &Path) -> Result<TokenShards> {
    open_source_with(source, tokenizer, cache_root, &PrepareOptions::default())
}

/// If `source` is a prepared dataset (a directory with `manifest.json`), opens it after
/// checking it was made with `tokenizer`. Otherwise `source` is a raw file or directory of
/// files: they are prepared into `cache_root/<name>-<key>/`, where the key hashes the
/// canonical file paths, sizes and modification times, the tokenizer's sha256 and
/// `opts`; a later call with unchanged inputs reuses that directory.
pub fn open_source_with(
    source: &Path,
    tokenizer: &Path,
    cache_root: &Path,
    opts: &PrepareOptions,
) -> Result<TokenShards> {
    let tokenizer_sha = crate::sha256_file(tokenizer)?;
    if source.is_dir() && source.join(MANIFEST_FILE).exists() {
        let data = TokenShards::open(source)?;
        let made_with = &data.manifest().tokenizer_sha256;
        if *made_with != tokenizer_sha {
            bail!(
                "prepared dataset {} was tokenized with a different tokenizer (sha256 {made_with}, file {}) than {} (sha256 {tokenizer_sha}); \
                 its token ids would mean other words. Use the tokenizer it was prepared with, or prepare the raw data again",
                source.display(),
                data.manifest().tokenizer_path,
                tokenizer.display()
            );
        }
        return Ok(data);
    }

    let files = expand_sources(&[source.to_path_buf()])?;
    let mut key = Sha256::new();
    key.update(format!(
        "ember-data prepare v{MANIFEST_VERSION}\ntokenizer {tokenizer_sha}\n"
    ));
    key.update(serde_json::to_string(opts)?);
    for file in &files {
        let canonical = file
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        let meta =
            std::fs::metadata(file).with_context(|| format!("cannot stat {}", file.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        key.update(format!(
            "\n{}\t{}\t{mtime}",
            canonical.display(),
            meta.len()
        ));
    }
    let name: String = source
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "data".into());
    let dir = cache_root.join(format!("{name}-{}", &crate::hex(&key.finalize())[..16]));

    if !dir.join(MANIFEST_FILE).exists() {
        if let Err(e) = prepare(&[source.to_path_buf()], tokenizer, &dir, opts) {
            // Another process may have prepared the same key meanwhile; then use its result.
            if !dir.join(MANIFEST_FILE).exists() {
                return Err(e.context(format!(
                    "preparing {} into cache {}",
                    source.display(),
                    dir.display()
                )));
            }
        }
    }
    TokenShards::open(&dir)
}
