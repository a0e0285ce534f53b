
use std::time::{Duration, SystemTime};

use crate::common::*;
use ember_data::{open_source, prepare, train_tokenizer, PrepareOptions};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn raw_sources_are_prepared_once_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("corpus.jsonl");
    write_jsonl(&src, &sample_docs(), "text");
    let cache = tmp.path().join("cache");

    let first = open_source(&src, &tokenizer_path(), &cache).unwrap();
    assert_eq!(decode_docs(&first, &tokenizer()), sample_docs());
    assert!(first.dir().starts_with(&cache));
    let manifest = first.dir().join("manifest.json");
    let written = std::fs::metadata(&manifest).unwrap().modified().unwrap();

    let second = open_source(&src, &tokenizer_path(), &cache).unwrap();
    assert_eq!(second.dir(), first.dir());
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        written,
        "second call must not re-prepare"
    );
    assert_eq!(entries(&cache).len(), 1, "{:?}", entries(&cache));

    // A modified source gets a new cache entry.
    let f = std::fs::File::options().write(true).open(&src).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let third = open_source(&src, &tokenizer_path(), &cache).unwrap();
    assert_ne!(third.dir(), first.dir());
    assert_eq!(entries(&cache).len(), 2);
}

#[test]
fn prepared_directory_is_opened_and_its_tokenizer_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("corpus.txt");
    std::fs::write(&src, "some text for a prepared dataset").unwrap();
    let prepared = tmp.path().join("prepared");
    prepare(
        std::slice::from_ref(&src),
        &tokenizer_path(),
        &prepared,
        &PrepareOptions::default(),
    )
    .unwrap();
    let cache = tmp.path().join("cache");

    let data = open_source(&prepared, &tokenizer_path(), &cache).unwrap();
    assert_eq!(data.dir(), prepared);
    assert!(
        !cache.exists(),
        "opening a prepared dataset must not touch the cache"
    );

    let other_tok = tmp.path().join("other-tokenizer.json");
    train_tokenizer(&[src], 300, &other_tok).unwrap();
    let msg = err_text(open_source(&prepared, &other_tok, &cache));
    assert!(
        msg.contains(&prepared.display().to_string()) && msg.contains("different tokenizer"),
        "{msg}"
    );
}

#[test]
fn missing_source_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("nowhere.jsonl");
    let msg = err_text(open_source(
        &src,
        &tokenizer_path(),
        &tmp.path().join("cache"),
    ));
    assert!(msg.contains(&src.display().to_string()), "{msg}");
}
