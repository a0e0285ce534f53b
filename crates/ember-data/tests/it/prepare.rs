
use std::path::PathBuf;

use crate::common::*;
use ember_data::{prepare, Dtype, PrepareOptions, TokenShards};
use parquet::basic::Compression;

fn opts() -> PrepareOptions {
    PrepareOptions::default()
}

#[test]
fn txt_files_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let p = tmp.path().join(format!("doc{i}.txt"));
        std::fs::write(&p, d).unwrap();
        files.push(p);
    }
    let out = tmp.path().join("out");
    let manifest = prepare(&files, &tokenizer_path(), &out, &opts()).unwrap();
    assert_eq!(manifest.documents, docs.len() as u64);
    assert_eq!(manifest.dtype, Dtype::U16);
    assert_eq!(manifest.vocab_size, 8192);

    let data = TokenShards::open(&out).unwrap();
    let tok = tokenizer();
    assert_eq!(decode_docs(&data, &tok), docs);
    // The literal "<|endoftext|>" in a document is text, so EOS count == documents.
    let eos = data
        .get(0..data.num_tokens())
        .iter()
        .filter(|&&t| t == data.eos_id())
        .count();
    assert_eq!(eos, docs.len());
    data.verify().unwrap();
}

#[test]
fn txt_split_lines_makes_one_document_per_non_empty_line() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("lines.txt");
    std::fs::write(&src, "first line\n\n  \nsecond line\r\nthird 🦀").unwrap();
    let out = tmp.path().join("out");
    let o = PrepareOptions {
        split_lines: true,
        ..opts()
    };
    prepare(&[src], &tokenizer_path(), &out, &o).unwrap();
    let data = TokenShards::open(&out).unwrap();
    assert_eq!(
        decode_docs(&data, &tokenizer()),
        ["first line", "second line", "third 🦀"]
    );
}

#[test]
fn jsonl_round_trip_with_custom_field_and_many_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    let src = tmp.path().join("docs.jsonl");
    write_jsonl(&src, &docs, "content");
    let out = tmp.path().join("out");
    // 64-byte shards = 32 tokens each: documents straddle shard boundaries.
    let o = PrepareOptions {
        text_field: "content".into(),
        max_shard_bytes: 64,
        ..opts()
    };
    let manifest = prepare(&[src], &tokenizer_path(), &out, &o).unwrap();
    assert!(
        manifest.shards.len() > 3,
        "expected several shards, got {}",
        manifest.shards.len()
    );
    assert!(manifest.shards.iter().rev().skip(1).all(|s| s.tokens == 32));
    assert_eq!(
        manifest.shards.iter().map(|s| s.tokens).sum::<u64>(),
        manifest.total_tokens
    );

    let data = TokenShards::open(&out).unwrap();
    assert_eq!(decode_docs(&data, &tokenizer()), docs);
    // Reading across a boundary equals reading the pieces.
    let whole = data.get(20..50);
    let mut parts = data.get(20..32);
    parts.extend(data.get(32..50));
    assert_eq!(whole, parts);
}

#[test]
fn parquet_round_trip_snappy_and_zstd_skipping_nulls() {
    for compression in [Compression::SNAPPY, zstd(), Compression::UNCOMPRESSED] {
        let tmp = tempfile::tempdir().unwrap();
        let docs = sample_docs();
        let mut rows: Vec<Option<String>> = docs.iter().cloned().map(Some).collect();
        rows.insert(2, None);
        let src = tmp.path().join("train-00000.parquet");
        write_parquet(&src, &rows, compression);
        let out = tmp.path().join("out");
        let manifest = prepare(&[src], &tokenizer_path(), &out, &opts()).unwrap();
        assert_eq!(manifest.documents, docs.len() as u64, "{compression:?}");
        let data = TokenShards::open(&out).unwrap();
        assert_eq!(decode_docs(&data, &tokenizer()), docs, "{compression:?}");
    }
}

#[test]
fn directories_expand_to_sorted_supported_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("b.txt"), "second").unwrap();
    std::fs::write(dir.join("a.txt"), "first").unwrap();
    write_jsonl(&dir.join("nested/c.jsonl"), &["third".to_string()], "text");
    std::fs::write(dir.join("README.md"), "ignored").unwrap();
    std::fs::write(dir.join(".hidden.txt"), "ignored").unwrap();
    let out = tmp.path().join("out");
    let manifest = prepare(&[dir], &tokenizer_path(), &out, &opts()).unwrap();
    assert_eq!(manifest.sources.len(), 3);
    let data = TokenShards::open(&out).unwrap();
    assert_eq!(
        decode_docs(&data, &tokenizer()),
        ["first", "second", "third"]
    );
}

/// Prepares `files` expecting an error; checks nothing is left behind.
fn prepare_err(files: &[PathBuf], o: &PrepareOptions) -> String {
    let out = files[0].parent().unwrap().join("out");
    let msg = err_text(prepare(files, &tokenizer_path(), &out, o));
    assert!(
        !out.exists(),
        "a failed prepare must not create {}",
        out.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left behind: {leftovers:?}"
    );
    msg
}

#[test]
fn bad_jsonl_names_file_line_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("a.jsonl");
    write_jsonl(&good, &sample_docs(), "text");
    let bad = tmp.path().join("b.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n\n{\"text\": \"broken\"\n").unwrap();
    let msg = prepare_err(&[good.clone(), bad.clone()], &opts());
    assert!(
        msg.contains(&format!("{}:3", bad.display())) && msg.contains("invalid JSON"),
        "{msg}"
    );

    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let msg = prepare_err(std::slice::from_ref(&bad), &opts());
    assert!(
        msg.contains(&format!("{}:2", bad.display())) && msg.contains("missing field \"text\""),
        "{msg}"
    );

    std::fs::write(&bad, "{\"text\": 42}\n").unwrap();
    let msg = prepare_err(std::slice::from_ref(&bad), &opts());
    assert!(
        msg.contains(&format!("{}:1", bad.display())) && msg.contains("a number"),
        "{msg}"
    );

    std::fs::write(&bad, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n").unwrap();
    let msg = prepare_err(std::slice::from_ref(&bad), &opts());
    assert!(
        msg.contains(&format!("{}:2", bad.display())) && msg.contains("UTF-8"),
        "{msg}"
    );
}

#[test]
fn other_bad_inputs_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("data.csv");
    std::fs::write(&csv, "a,b").unwrap();
    let msg = prepare_err(std::slice::from_ref(&csv), &opts());
    assert!(
        msg.contains(&csv.display().to_string()) && msg.contains("unknown extension"),
        "{msg}"
    );

    let txt = tmp.path().join("latin1.txt");
    std::fs::write(&txt, b"caf\xe9").unwrap();
    let msg = prepare_err(std::slice::from_ref(&txt), &opts());
    assert!(
        msg.contains(&txt.display().to_string()) && msg.contains("UTF-8"),
        "{msg}"
    );

    let pq = tmp.path().join("fake.parquet");
    std::fs::write(&pq, "this is not parquet").unwrap();
    let msg = prepare_err(std::slice::from_ref(&pq), &opts());
    assert!(
        msg.contains(&pq.display().to_string()) && msg.contains("parquet"),
        "{msg}"
    );

    let pq = tmp.path().join("real.parquet");
    write_parquet(
        &pq,
        &[Some("x".into()), Some("y".into())],
        Compression::SNAPPY,
    );
    let msg = prepare_err(
        std::slice::from_ref(&pq),
        &PrepareOptions {
            text_field: "content".into(),
            ..opts()
        },
    );
    assert!(
        msg.contains(&pq.display().to_string())
            && msg.contains("no column \"content\"")
            && msg.contains("text"),
        "{msg}"
    );
    let msg = prepare_err(
        std::slice::from_ref(&pq),
        &PrepareOptions {
            text_field: "id".into(),
            ..opts()
        },
    );
    assert!(msg.contains("not a string column"), "{msg}");

    let missing = tmp.path().join("nope.jsonl");
    let msg = err_text(prepare(
        std::slice::from_ref(&missing),
        &tokenizer_path(),
        &tmp.path().join("out"),
        &opts(),
    ));
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let msg = prepare_err(&[empty], &opts());
    assert!(msg.contains("no documents"), "{msg}");
}

#[test]
fn refuses_to_overwrite_a_non_empty_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a.txt");
    std::fs::write(&src, "hello").unwrap();
    let out = tmp.path().join("out");
    prepare(std::slice::from_ref(&src), &tokenizer_path(), &out, &opts()).unwrap();
    let msg = err_text(prepare(&[src], &tokenizer_path(), &out, &opts()));
    assert!(
        msg.contains(&out.display().to_string()) && msg.contains("not empty"),
        "{msg}"
    );
    TokenShards::open(&out).unwrap();
}
