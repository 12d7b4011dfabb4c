"""The result store: units are all-or-nothing, shards merge, and a run killed with SIGKILL
between a unit's rows and its done marker resumes without duplicates, redoing only the
sample that was in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.data import load_dataset
from vlmflow.errors import RunError
from vlmflow.provenance import data_fingerprint, model_fingerprint
from vlmflow.rundir import RunDir
from vlmflow.store import RecordStore, read_records, shard_status

TASKS = ["moving_direction", "object_count"]


def test_only_finished_units_are_read_and_shards_merge(tmp_path: Path) -> None:
    a, b = RecordStore(tmp_path, 0), RecordStore(tmp_path, 1)
    a.write_unit("s0", "flow", [{"layer": 0, "p": 0.5}, {"layer": 1, "p": 0.25}])
    b.write_unit("s1", "flow", [{"layer": 0, "p": 0.75}])
    # a unit whose rows made it to disk but whose done marker did not (a crash), and a torn line
    with open(a.rows_path, "a") as f:
        f.write(json.dumps({"sample_id": "s2", "analysis": "flow", "_attempt": "dead", "p": 1.0}) + "\n")
        f.write('{"sample_id": "s2", "analysis": "fl')
    df = read_records(tmp_path)
    assert sorted(df["sample_id"]) == ["s0", "s0", "s1"] and "_attempt" not in df
    assert a.done_units() == b.done_units() == {("s0", "flow"), ("s1", "flow")}
    assert shard_status(tmp_path) == {"shard-00000": 1, "shard-00001": 1}
    # a unit recomputed after a crash: only its latest finished attempt counts
    b.write_unit("s0", "flow", [{"layer": 0, "p": 0.5}, {"layer": 1, "p": 0.25}])
    assert len(read_records(tmp_path)) == 3


def test_sigkill_between_rows_and_done_marker_then_resume(tiny_llava_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ids = [s.id for s in load_dataset("synthetic:2", tasks=TASKS)]
    victim = ids[2]
    args = ["flow", "--model", str(tiny_llava_path), "--data", "synthetic:2"]
    args += [a for t in TASKS for a in ("--task", t)]
    args += ["--num-frames", "4", "--window", "3", "--sample-mode", "all", "-t", "cross-frame"]
    args += ["--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMFLOW_TEST_SLEEP_AFTER_ROWS": f"300:{victim}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmflow.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows_path = out / "records" / "shard-00000.jsonl"
    try:
        deadline = time.monotonic() + 240
        # wait until the victim's first unit has its rows on disk (the process then sleeps
        # before writing the done marker), and kill it there
        while not (rows_path.exists() and f'"sample_id": "{victim}"' in rows_path.read_text()):
            assert proc.poll() is None, "the run ended before reaching the victim sample"
            assert time.monotonic() < deadline, "the run did not reach the victim sample in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    store = RecordStore(out)
    finished = store.done_units()
    assert finished == {(i, n) for i in ids[:2] for n in ("eval", "flow")}
    orphans = [json.loads(line) for line in rows_path.open() if victim in line]
    assert orphans and all(r["_attempt"] for r in orphans)  # rows without a done marker
    before = read_records(out)
    assert set(before["sample_id"]) == set(ids[:2])  # the in-flight unit is invisible

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the killed run (OMP_NUM_THREADS=1); faster on a small CPU
    try:
        resumed = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert resumed.exit_code == 0, resumed.output
    assert "done: 2 samples, 0 failed, 2 already done" in resumed.output  # the victim and after

    after = read_records(out)
    keys = ["sample_id", "analysis", "condition", "layer"]
    assert not after.fillna({"condition": "", "layer": -1}).duplicated(keys).any()
    assert set(after["sample_id"]) == set(ids)
    assert len(after) == 4 * (1 + 4)  # eval + cross-frame x 4 sweep layers, per sample
    # the two samples finished before the kill were not recomputed
    pd.testing.assert_frame_equal(
        after[after["sample_id"].isin(ids[:2])].reset_index(drop=True),
        before.reset_index(drop=True),
        check_like=True,
    )
    # the records, in one pandas call either way
    parquet = pd.read_parquet(out / "records.parquet")
    assert len(parquet) == len(after) and set(parquet.columns) == set(after.columns)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"]["done"] == 4 and len(manifest["resumed_at"]) == 1


def test_resume_refuses_other_weights_or_annotations(tiny_llava_path: Path, tmp_path: Path) -> None:
    """The manifest fingerprints the weights (name, size, first/last MiB of each file) and
    the annotation files; resuming a folder after either changed is refused."""
    model = Path(shutil.copytree(tiny_llava_path, tmp_path / "model"))
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "q0", "video": "v.mp4", "question": "?", "options": ["a", "b"], "answer": 0}\n')
    samples = load_dataset("synthetic:1", tasks=["object_count"])

    def provenance() -> dict:
        return {"model": model_fingerprint(str(model)), "data": data_fingerprint(f"jsonl:{qa}", samples, 0)}

    first = provenance()
    assert first["model"]["weight_files"] == ["model.safetensors"] and first["data"]["annotation_files"] == 1
    assert provenance() == first  # stable
    out = tmp_path / "run"
    manifest = RunDir(out).open({"model": str(model)}, first)
    assert manifest["provenance"]["model"]["weights_sha256"] == first["model"]["weights_sha256"]
    RunDir(out).open({"model": str(model)}, provenance())  # same weights and data: resumes

    with open(model / "model.safetensors", "r+b") as f:  # a re-trained checkpoint, same size
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(RunError, match=r"model\.weights_sha256"):
        RunDir(out).open({"model": str(model)}, provenance())
    shutil.copy(tiny_llava_path / "model.safetensors", model / "model.safetensors")
    qa.write_text(qa.read_text().replace('"answer": 0', '"answer": 1'))
    with pytest.raises(RunError, match=r"data\.annotations_sha256"):
        RunDir(out).open({"model": str(model)}, provenance())
