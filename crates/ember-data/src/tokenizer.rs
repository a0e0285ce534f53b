//! A thin wrapper over Hugging Face `tokenizers`, plus byte-level BPE training.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use crate::documents::{expand_sources, Documents};

/// The end-of-document token appended after every document.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// A loaded `tokenizer.json` with the end-of-text id resolved up front.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sha256: String,
    eos_id: u32,
    vocab_size: usize,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Fails if it has no `<|endoftext|>` token,
    /// because the data pipeline separates documents with it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let sha256 = crate::sha256_file(path)?;
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        // Text that happens to contain "<|endoftext|>" must stay text: only the pipeline
        // inserts EOS, so document boundaries in the token stream are exact.
        inner.set_encode_special_tokens(true);
        let eos_id = inner.token_to_id(EOS_TOKEN).ok_or_else(|| {
            anyhow!(
                "{}: tokenizer has no {EOS_TOKEN} token (needed as end-of-document marker)",
                path.display()
            )
        })?;
        // Embedding tables are indexed by id, so size by the largest id, not the count.
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            sha256,
            eos_id,
            vocab_size,
        })
    }

    /// Token ids of `text`, with no special tokens added.
    ///
    /// # Panics
    /// If the underlying tokenizer fails, which a byte-level BPE cannot (every byte has a token).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode_fast(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(e) => panic!(
                "tokenizer {} failed to encode text: {e}",
                self.path.display()
            ),
        }
    }

    /// Encodes many texts on all cores (rayon inside `tokenizers`).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| anyhow!("tokenizer {} failed to encode: {e}", self.path.display()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Text of `ids`. Special tokens are kept (EOS shows as `<|endoftext|>`); byte sequences
    /// that are not valid UTF-8 (e.g. a cut multi-byte character) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner
            .decode(ids, false)
            .unwrap_or_else(|e| panic!("tokenizer {} failed to decode: {e}", self.path.display()))
    }

    /// Largest token id + 1: the size of an embedding table that can hold every id.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 of the tokenizer file, recorded in manifests to catch tokenizer mix-ups.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Trains a byte-level BPE tokenizer (GPT-2 style: ByteLevel pre-tokenizer and decoder,
/// no normalizer, so decode(encode(text)) == text) on the documents of `inputs` (same
/// formats and defaults as [`crate::prepare`]) and writes it to `out` atomically.
/// `<|endoftext|>` is special token 0. The 256 byte symbols are always in the vocabulary,
/// so any input can be encoded.
pub fn train_tokenizer(inputs: &[PathBuf], vocab_size: usize, out: &Path) -> Result<()> {
    if vocab_size < 257 {
        bail!("vocab_size {vocab_size} is too small: byte-level BPE needs at least 256 byte tokens + {EOS_TOKEN}");
    }
    let files = expand_sources(inputs)?;
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevelDecoder::new(false, true, true).into()))
    .build()
    .map_err(|e| anyhow!("cannot build tokenizer: {e}"))?;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();

    // The trainer wants plain strings; park the first read error and stop feeding.
    let error = std::sync::Mutex::new(None);
    let docs = Documents::new(files, "text", false).map_while(|doc| match doc {
        Ok(doc) => Some(doc.text),
        Err(e) => {
            *error.lock().unwrap() = Some(e);
            None
        }
    });
    tokenizer
        .train(&mut trainer, docs)
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }

    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    tokenizer
        .save(&tmp, false)
        .map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
    Ok(())
}
