
use crate::common::*;
use ember_data::{train_tokenizer, Tokenizer};

#[test]
fn trained_tokenizer_is_byte_level_with_eos_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("train.jsonl");
    let docs: Vec<String> = (0..40).flat_map(|_| sample_docs()).collect();
    write_jsonl(&src, &docs, "text");
    let out = tmp.path().join("tok.json");
    train_tokenizer(&[src], 400, &out).unwrap();

    let tok = Tokenizer::from_file(&out).unwrap();
    assert_eq!(tok.eos_id(), 0);
    assert_eq!(tok.vocab_size(), 400);
    // Merges were learned: common text compresses below one token per byte.
    let text = &sample_docs()[0];
    assert!(tok.encode(text).len() < text.len() / 2);
    // Byte-level: anything round-trips, including characters never seen in training.
    for text in [
        "Ωμέγα ∑ 🎉 \u{0}\r\n\t  x",
        "<|endoftext|>",
        "",
        "   leading and trailing   ",
    ] {
        let ids = tok.encode(text);
        assert!(
            !ids.contains(&tok.eos_id()),
            "text never encodes to EOS: {text:?}"
        );
        assert_eq!(tok.decode(&ids), text);
    }
    assert_eq!(tok.decode(&[tok.eos_id()]), "<|endoftext|>");
}

#[test]
fn shipped_tokenizer_round_trips_the_validation_set() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 8192);
    assert_eq!(tok.eos_id(), 0);
    let valid =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/corpus/valid.jsonl");
    let text = std::fs::read_to_string(valid).unwrap();
    let mut docs = 0;
    for line in text.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = doc["text"].as_str().unwrap();
        assert_eq!(tok.decode(&tok.encode(text)), text, "{}", doc["source"]);
        docs += 1;
    }
    assert!(docs > 10);
}

#[test]
fn tokenizer_without_eos_is_rejected_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("no-eos.json");
    let json = std::fs::read_to_string(tokenizer_path()).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["added_tokens"] = serde_json::json!([]);
    let vocab = value["model"]["vocab"].as_object_mut().unwrap();
    vocab.remove("<|endoftext|>");
    std::fs::write(&path, value.to_string()).unwrap();
    let msg = err_text(Tokenizer::from_file(&path));
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("<|endoftext|>"),
        "{msg}"
    );

    std::fs::write(&path, "{}").unwrap();
    let msg = err_text(Tokenizer::from_file(&path));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn training_on_a_missing_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("missing.txt");
    let msg = err_text(train_tokenizer(
        std::slice::from_ref(&src),
        300,
        &tmp.path().join("t.json"),
    ));
    assert!(msg.contains(&src.display().to_string()), "{msg}");
}
