
use crate::common::*;
use ember_data::{prepare, unigram_entropy, PrepareOptions, TokenShards};

fn prepared(tmp: &std::path::Path) -> std::path::PathBuf {
    let src = tmp.join("docs.jsonl");
    write_jsonl(&src, &sample_docs(), "text");
    let out = tmp.join("out");
    let o = PrepareOptions {
        max_shard_bytes: 64,
        ..Default::default()
    };
    prepare(&[src], &tokenizer_path(), &out, &o).unwrap();
    out
}

#[test]
fn missing_manifest_names_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = err_text(TokenShards::open(tmp.path()));
    assert!(
        msg.contains(&tmp.path().join("manifest.json").display().to_string())
            && msg.contains("not a prepared dataset"),
        "{msg}"
    );
}

#[test]
fn invalid_manifest_json_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    std::fs::write(out.join("manifest.json"), "{ not json").unwrap();
    let msg = err_text(TokenShards::open(&out));
    assert!(
        msg.contains(&out.join("manifest.json").display().to_string())
            && msg.contains("invalid manifest"),
        "{msg}"
    );
}

#[test]
fn truncated_or_missing_shard_names_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let shard = out.join("shard-00001.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
    let msg = err_text(TokenShards::open(&out));
    assert!(
        msg.contains(&shard.display().to_string()) && msg.contains("truncated or corrupt"),
        "{msg}"
    );

    std::fs::remove_file(&shard).unwrap();
    let msg = err_text(TokenShards::open(&out));
    assert!(
        msg.contains(&shard.display().to_string()) && msg.contains("cannot be opened"),
        "{msg}"
    );
}

#[test]
fn verify_detects_flipped_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = prepared(tmp.path());
    let data = TokenShards::open(&out).unwrap();
    data.verify().unwrap();
    let shard = out.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let msg = err_text(data.verify());
    assert!(
        msg.contains(&shard.display().to_string()) && msg.contains("sha256"),
        "{msg}"
    );
}

#[test]
fn get_spans_shards_and_clones_share_data() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..100).map(|i| i * 7 % 50).collect();
    let data = synthetic(tmp.path(), &tokens, 16, 64);
    assert_eq!(data.num_tokens(), 100);
    assert_eq!(data.get(0..100), tokens);
    assert_eq!(data.get(10..70), tokens[10..70]);
    assert_eq!(data.get(16..16), Vec::<u32>::new());
    let clone = data.clone();
    assert_eq!(clone.get(95..100), tokens[95..100]);
}

#[test]
fn unigram_entropy_matches_the_formula() {
    let tmp = tempfile::tempdir().unwrap();
    // One token type: zero entropy.
    let data = synthetic(&tmp.path().join("a"), &[3; 40], 16, 8);
    assert!(unigram_entropy(&data).abs() < 1e-12);
    // Four equally frequent tokens: ln 4.
    let tokens: Vec<u32> = (0..400).map(|i| i % 4).collect();
    let data = synthetic(&tmp.path().join("b"), &tokens, 64, 8);
    assert!((unigram_entropy(&data) - 4f64.ln()).abs() < 1e-12);
    // Skewed 3:1 split.
    let tokens: Vec<u32> = (0..400).map(|i| (i % 4 == 0) as u32).collect();
    let data = synthetic(&tmp.path().join("c"), &tokens, 64, 8);
    let expected = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
    assert!((unigram_entropy(&data) - expected).abs() < 1e-12);
}
