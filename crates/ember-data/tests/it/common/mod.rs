//! Shared test helpers.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_data::{
    Dtype, Manifest, PrepareOptions, ShardInfo, TokenShards, Tokenizer, MANIFEST_FILE,
    MANIFEST_VERSION,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// The tokenizer shipped in data/ (byte-level BPE, vocab 8192, EOS = 0).
pub fn tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizer.json")
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(tokenizer_path()).unwrap()
}

/// A few varied documents: prose, code, unicode, and text that looks like a special token.
pub fn sample_docs() -> Vec<String> {
    vec![
        "Ownership is Rust's most unique feature.\nIt enables memory safety guarantees without a garbage collector.".into(),
        "fn main() {\n    let x = 5;\n    println!(\"The value of x is: {x}\");\n}\n".into(),
        "Unicode: héllo wörld, 日本語, emoji 🦀, tabs\tand  double  spaces.".into(),
        "A literal <|endoftext|> inside a document must stay text.".into(),
        "Short.".into(),
    ]
}

/// Splits a token stream at EOS into the decoded documents.
pub fn decode_docs(data: &TokenShards, tok: &Tokenizer) -> Vec<String> {
    let tokens = data.get(0..data.num_tokens());
    assert_eq!(
        tokens.last(),
        Some(&data.eos_id()),
        "stream must end with EOS"
    );
    tokens[..tokens.len() - 1]
        .split(|&t| t == data.eos_id())
        .map(|ids| tok.decode(ids))
        .collect()
}

pub fn write_jsonl(path: &Path, docs: &[String], field: &str) {
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ field: d, "meta": 1 }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A parquet file with an `id` column and an optional string `text` column, split into two
/// row groups; `None` entries are written as nulls.
pub fn write_parquet(path: &Path, docs: &[Option<String>], compression: Compression) {
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED INT64 id; OPTIONAL BYTE_ARRAY text (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let half = docs.len() / 2;
    for (offset, group) in [(0, &docs[..half]), (half, &docs[half..])] {
        let mut rg = writer.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..group.len() as i64).map(|i| i + offset as i64).collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = group
            .iter()
            .flatten()
            .map(|s| ByteArray::from(s.as_str()))
            .collect();
        let defs: Vec<i16> = group.iter().map(|d| d.is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

pub fn zstd() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// Writes a prepared dataset by hand holding exactly `tokens` (u16), `shard_tokens` per shard,
/// so loader tests can reason about exact token values.
pub fn synthetic(
    dir: &Path,
    tokens: &[u32],
    shard_tokens: usize,
    vocab_size: usize,
) -> TokenShards {
    std::fs::create_dir_all(dir).unwrap();
    let mut shards = Vec::new();
    for (i, chunk) in tokens.chunks(shard_tokens).enumerate() {
        let file = format!("shard-{i:05}.bin");
        let bytes: Vec<u8> = chunk
            .iter()
            .flat_map(|&t| (t as u16).to_le_bytes())
            .collect();
        std::fs::write(dir.join(&file), bytes).unwrap();
        let sha256 = ember_data::sha256_file(&dir.join(&file)).unwrap();
        shards.push(ShardInfo {
            file,
            tokens: chunk.len() as u64,
            sha256,
        });
    }
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        dtype: Dtype::U16,
        vocab_size,
        eos_id: 0,
        tokenizer_sha256: "synthetic".into(),
        tokenizer_path: "synthetic".into(),
        sources: vec![],
        options: PrepareOptions::default(),
        documents: 1,
        total_tokens: tokens.len() as u64,
        shards,
    };
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    TokenShards::open(dir).unwrap()
}

/// Error message with its whole context chain.
pub fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}
