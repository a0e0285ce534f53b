#!/usr/bin/env python3
"""Checks that a run's TensorBoard event files load in TensorBoard and agree with metrics.jsonl.

Usage: check_tensorboard.py RUN_DIR   (needs `pip install tensorboard`)
"""
import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path(sys.argv[1])
acc = EventAccumulator(str(run / "tensorboard"))
acc.Reload()
tags = set(acc.Tags()["scalars"])
expected = {}
for line in (run / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    for key, value in row.items():
        if key not in ("step", "time"):
            expected.setdefault(key, []).append((row["step"], value))
missing = set(expected) - tags
assert not missing, f"tags in metrics.jsonl but not in TensorBoard: {sorted(missing)}"
for tag, points in expected.items():
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in got] == [s for s, _ in points], f"{tag}: steps {got} vs {points}"
    for (_, a), (_, b) in zip(got, points):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), f"{tag}: {a} vs {b}"
print(f"TensorBoard check: {len(tags)} scalar tags, {sum(len(p) for p in expected.values())} points agree with metrics.jsonl")
