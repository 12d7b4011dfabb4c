"""The pathway search is library code: it runs from Python, and under ``torchrun`` (two
processes each scoring their share of the calibration samples) it finds exactly the
pathway one process finds, saves it with the run and evaluates it on the held-out rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vlmflow
from vlmflow.analyses.pathways import calibration_split
from vlmflow.errors import RunError
from vlmflow.probe import Model

DATA = "synthetic:2"
TASKS = ("moving_direction", "object_count")


def options(path: Path) -> vlmflow.Options:
    return vlmflow.Options(model=str(path), data=DATA, tasks=TASKS, num_frames=4, progress=False)


def test_search_from_python_saves_the_pathway_and_holds_out_its_calibration(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = vlmflow.search_and_evaluate(
            options(tiny_llava_path), tmp_path / "one", step=2, seeds=(0,), model=Model(tiny_llava)
        )
    finally:
        torch.set_num_threads(threads)
    saved = vlmflow.RunDir(result.out).read_search()
    assert saved == result.report["search"] and saved["spec"]["num_layers"] == tiny_llava.num_layers
    samples = options(tiny_llava_path).samples_of()
    calib = calibration_split(samples, 0.5, 0)
    assert sorted(calib) == saved["calib_samples"] and 0 < len(calib) < len(samples)
    evaluated = set(vlmflow.RunDir(result.out).records()["sample_id"])
    assert evaluated == {s.id for s in samples} - calib  # held-out samples only
    assert result.summary.done == len(samples) - len(calib)


def test_search_under_torchrun_finds_what_one_process_finds(tiny_llava_path: Path, tmp_path: Path) -> None:
    one = vlmflow.search_and_evaluate(options(tiny_llava_path), tmp_path / "one", step=2, seeds=(0,))
    args = ["pathways", "--model", str(tiny_llava_path), "--data", DATA, "--num-frames", "4", "--quiet"]
    args += [a for t in TASKS for a in ("--task", t)] + ["--search", "--step", "2", "--seeds", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = tmp_path / "two"
    cmd += ["-m", "vlmflow", *args, "--out", str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "search: kept" in done.stdout  # rank 0 prints the found ranges
    found = json.loads((two / "pathway_search.json").read_text())
    want = one.report["search"]
    assert found["spec"] == want["spec"] and found["calib_samples"] == want["calib_samples"]
    assert abs(found["calib_accuracy"] - want["calib_accuracy"]) < 1e-9
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["sessions"][-1]["world_size"] == 2


def search(tiny_llava, path: Path, out: Path, **kw):
    kw = {"step": 4, "seeds": (0,), "model": Model(tiny_llava), **kw}
    return vlmflow.search_and_evaluate(options(path), out, **kw)


def test_a_refused_rerun_leaves_the_folders_search_result_as_it_was(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    search(tiny_llava, tiny_llava_path, out)
    before = (out / "pathway_search.json").read_bytes()
    with pytest.raises(RunError, match=r"another configuration.*search"):
        search(tiny_llava, tiny_llava_path, out, tolerance=0.5)
    assert (out / "pathway_search.json").read_bytes() == before


def test_a_busy_folder_is_refused_before_the_search(
    tiny_llava, tiny_llava_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with vlmflow.RunDir(out).lock(), pytest.raises(RunError, match="in use by another"):
        search(tiny_llava, tiny_llava_path, out, model=None)  # refused before loading the model
    assert not (out / "pathway_search.json").exists()
