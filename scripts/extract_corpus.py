#!/usr/bin/env python3
"""Extract a plain-text training corpus from the Rust toolchain's bundled HTML docs.

Sources (all MIT OR Apache-2.0): The Rust Programming Language (book/), The Rust
Reference (reference/), The Rustonomicon (nomicon/), Rust by Example
(rust-by-example/, English pages only) and The Edition Guide (edition-guide/). One document per mdBook page: only the
page's <main> element is kept, rendered as light Markdown (headings, lists,
fenced code blocks) so that code stays code. Navigation, sidebars, scripts,
railroad diagrams and the all-in-one print.html / toc.html / 404.html pages are
skipped, as are the stub pages of old book editions and exact duplicates.

Output: <out>/train.jsonl and <out>/valid.jsonl, one {"text", "source"} object
per line. A document goes to valid when sha256(source) mod 100 < valid_percent,
so the split is deterministic and stable when pages are added or removed.

Usage: python3 scripts/extract_corpus.py [--docs DIR] [--out data/corpus]
       [--max-bytes 5000000] [--valid-percent 5]
(--docs defaults to `dirname $(rustup doc --path)`.)
"""

import argparse
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys

# Books in priority order: when the byte budget runs out, later books are cut.
BOOKS = ["book", "reference", "nomicon", "rust-by-example", "edition-guide"]
# Sub-directories that are not English content of the current edition.
SKIP_DIRS = {
    "book": {"first-edition", "second-edition", "2018-edition"},
    "rust-by-example": {"es", "ja", "ko", "zh"},
}
SKIP_FILES = {"print.html", "toc.html", "404.html"}
# Generated pages: the grammar summary repeats every page's grammar block, and the
# test summary is a coverage report of rule ids, not prose.
SKIP_PAGES = {"reference/grammar.html", "reference/test-summary.html"}
# Elements whose whole subtree is dropped.
SKIP_TAGS = {"script", "style", "nav", "svg", "button", "noscript", "iframe", "form", "img"}
# Elements with one of these classes are dropped (reference rule ids, railroad diagrams).
# "boring" spans are the hidden lines of mdBook code samples (e.g. an implicit `fn main() {`).
SKIP_CLASSES = {"rule", "grammar-railroad", "mdbook-help-container", "menu-bar", "boring"}
BLOCK_TAGS = {
    "p", "div", "section", "article", "header", "footer", "blockquote", "ul", "ol",
    "dl", "dt", "dd", "table", "hr", "figure", "figcaption",
    "details", "summary", "aside",
}
VOID_TAGS = {"br", "hr", "img", "wbr", "input", "meta", "link", "source", "col", "area"}
MIN_CHARS = 100  # pages shorter than this are chapter stubs (a heading and a link)


class MainText(html.parser.HTMLParser):
    """Renders the text inside <main> as light Markdown."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out = []  # (verbatim, text): verbatim pieces keep their whitespace
        self.in_main = 0
        self.skip = []  # stack of [tag, nesting depth] of the element being skipped
        self.pre = 0
        self.pending_lang = False  # inside <pre>, before the fence's language is known
        self.lists = []  # stack of ["ul"|"ol", item counter]

    def emit(self, s, verbatim=False):
        self.out.append((verbatim, s))

    def block(self):
        self.emit("\n\n")

    def open_fence(self, lang=""):
        self.emit(lang + "\n", verbatim=True)
        self.pending_lang = False

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main += 1
            return
        if not self.in_main:
            return
        if self.skip:
            if tag == self.skip[-1][0] and tag not in VOID_TAGS:
                self.skip[-1][1] += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in SKIP_TAGS or classes & SKIP_CLASSES:
            if tag not in VOID_TAGS:
                self.skip.append([tag, 1])
            return
        if re.fullmatch(r"h[1-6]", tag):
            self.block()
            self.emit("#" * int(tag[1]) + " ")
        elif tag == "pre":
            self.block()
            self.pre += 1
            self.emit("```", verbatim=True)
            self.pending_lang = True
        elif tag == "code":
            if not self.pre:
                self.emit("`")
            elif self.pending_lang:
                lang = next((c[len("language-"):] for c in sorted(classes) if c.startswith("language-")), "")
                self.open_fence(lang)
        elif tag in ("ul", "ol"):
            self.block()
            self.lists.append([tag, 0])
        elif tag == "li":
            self.emit("\n")
            indent = "  " * max(0, len(self.lists) - 1)
            if self.lists and self.lists[-1][0] == "ol":
                self.lists[-1][1] += 1
                self.emit(f"{indent}{self.lists[-1][1]}. ", verbatim=True)
            else:
                self.emit(indent + "- ", verbatim=True)
        elif tag == "tr":
            self.emit("\n")
        elif tag in ("td", "th"):
            self.emit(" | ")
        elif tag == "br":
            self.emit("\n", verbatim=bool(self.pre))
        elif tag in BLOCK_TAGS:
            self.block()

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "main":
            self.in_main = max(0, self.in_main - 1)
            return
        if not self.in_main:
            return
        if self.skip:
            if tag == self.skip[-1][0]:
                self.skip[-1][1] -= 1
                if self.skip[-1][1] == 0:
                    self.skip.pop()
            return
        if tag == "pre":
            if self.pending_lang:
                self.open_fence()
            self.pre = max(0, self.pre - 1)
            ends_line = bool(self.out) and self.out[-1][1].endswith("\n")
            self.emit("```" if ends_line else "\n```", verbatim=True)
            self.block()
        elif tag == "code" and not self.pre:
            self.emit("`")
        elif tag == "tr":
            self.emit(" |")
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self.block()
        elif re.fullmatch(r"h[1-6]", tag) or tag in BLOCK_TAGS:
            self.block()

    def handle_data(self, data):
        if not self.in_main or self.skip:
            return
        if self.pre:
            if self.pending_lang:  # <pre> without <code>
                self.open_fence()
            self.emit(data, verbatim=True)
        else:
            self.emit(re.sub(r"\s+", " ", data))  # HTML whitespace renders as one space

    def text(self):
        # Merge runs of the same kind, normalise whitespace only outside verbatim runs.
        runs = []
        for verbatim, s in self.out:
            if runs and runs[-1][0] == verbatim:
                runs[-1][1].append(s)
            else:
                runs.append((verbatim, [s]))
        parts = []
        for verbatim, pieces in runs:
            s = "".join(pieces)
            if not verbatim:
                s = re.sub(r"[ \t\r\f\v]+", " ", s)
                s = re.sub(r" *\n *", "\n", s)
                s = re.sub(r"\n{3,}", "\n\n", s)
            parts.append(s)
        text = "".join(parts)
        return text.strip() + "\n"


def extract(path):
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if "<main>" not in doc:
        return None  # rustdoc redirect stubs, not mdBook pages
    p = MainText()
    p.feed(doc)
    p.close()
    return p.text()


def pages(docs, book):
    root = os.path.join(docs, book)
    skip = SKIP_DIRS.get(book, set())
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.samefile(dirpath, root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".html") and name not in SKIP_FILES:
                yield os.path.join(dirpath, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", help="toolchain HTML doc root (default: dirname of `rustup doc --path`)")
    ap.add_argument("--out", default="data/corpus")
    ap.add_argument("--max-bytes", type=int, default=5_000_000, help="UTF-8 byte budget for all text")
    ap.add_argument("--valid-percent", type=int, default=5)
    args = ap.parse_args()
    docs = args.docs or os.path.dirname(
        subprocess.run(["rustup", "doc", "--path"], capture_output=True, text=True, check=True).stdout.strip()
    )

    seen, total, docs_out, cut = set(), 0, [], 0
    for book in BOOKS:
        for path in pages(docs, book):
            source = os.path.relpath(path, docs).replace(os.sep, "/")
            if source in SKIP_PAGES:
                continue
            text = extract(path)
            if text is None or len(text) < MIN_CHARS:
                continue
            digest = hashlib.sha256(text.encode()).digest()
            if digest in seen:
                continue
            size = len(text.encode())
            if total + size > args.max_bytes:
                cut += 1
                continue
            seen.add(digest)
            total += size
            docs_out.append((source, text))

    os.makedirs(args.out, exist_ok=True)
    counts = {"train": [0, 0], "valid": [0, 0]}
    files = {s: open(os.path.join(args.out, f"{s}.jsonl"), "w", encoding="utf-8", newline="\n") for s in counts}
    for source, text in docs_out:
        h = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")
        split = "valid" if h % 100 < args.valid_percent else "train"
        files[split].write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        counts[split][0] += 1
        counts[split][1] += len(text.encode())
    for f in files.values():
        f.close()
    for s, (n, b) in counts.items():
        print(f"{s}: {n} documents, {b} bytes of text", file=sys.stderr)
    if cut:
        print(f"{cut} pages left out by --max-bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
