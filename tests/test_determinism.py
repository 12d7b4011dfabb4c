"""Determinism: the same command on the same inputs gives byte-identical records, apart from
attempt ids (and the manifest's timestamps), on one process and on two (torchrun, gloo).
(The same command twice on one process is covered by every resume test: a recomputed unit
equals the first computation, tests/test_store_reliability.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vlmflow.cli import app
from vlmflow.store import read_records

ARGS = ["--data", "synthetic:2", "--task", "moving_direction", "--task", "object_count", "--num-frames", "4"]
ARGS += ["--window", "3", "--sample-mode", "all", "-t", "cross-frame", "--quiet"]


def canonical(out: Path) -> bytes:
    """The run's records as JSON lines, with neither attempt ids (dropped by the reader) nor
    anything else that may differ between sessions."""
    df = read_records(out)
    return "\n".join(json.dumps(r, sort_keys=True, default=str) for r in df.to_dict("records")).encode()


def test_records_are_byte_identical_on_one_and_two_processes(tiny_llava_path: Path, tmp_path: Path) -> None:
    import torch

    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun worker (OMP_NUM_THREADS=1)
    try:
        result = CliRunner().invoke(app, ["flow", "--model", str(tiny_llava_path), *ARGS, "--out", str(one)])
        assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vlmflow.cli", "flow", "--model", str(tiny_llava_path), *ARGS, "--out", str(two)]
    multi = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert len(list((two / "records").glob("shard-*.done.jsonl"))) == 2  # really two writers

    reference = canonical(one)
    assert reference.count(b"\n") + 1 == 4 * (1 + 4)  # eval + 4 sweep layers, per sample
    assert canonical(two) == reference  # and on two processes
    # the records files users read, written by each run's finalize, byte for byte
    for name in ("records.parquet", "summary/flow.csv", "summary/accuracy.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
