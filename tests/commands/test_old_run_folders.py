"""Run folders that an earlier vlmflow started resume as they were started: LongVideoBench
folders made before a chosen frame policy won over the benchmark's own (912ad47) recorded
the adapter's policy in ``computed_in`` while their samples were sampled with ``lvb``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import vlmflow
from vlmflow.analyses.answer_probability import AnswerProbability
from vlmflow.store import read_records

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "912ad47"  # the last commit where a benchmark's own frame policy won
OLD_RUN = """
import sys, warnings
warnings.simplefilter("ignore")
import vlmflow
from vlmflow.analyses.answer_probability import AnswerProbability
data, out, policy = sys.argv[1], sys.argv[2], sys.argv[3] or None
options = vlmflow.Options(model="tiny", data=data, frame_policy=policy, progress=False)
vlmflow.run(options, [AnswerProbability()], out)
"""


@pytest.fixture(scope="module")
def old_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An LVB dataset of 2 samples and the folders 912ad47's code wrote on its first one
    (``tiny``, answer-prob), one with its default policy and one with ``linspace`` chosen."""
    from tests.data.benchfiles import lvb_item, video, write_json

    tmp = tmp_path_factory.mktemp("old")
    try:
        tree = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE, "src"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the code of {BEFORE} is not in this checkout's git history")
    with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
        # the "data" filter (our own tree): Python 3.10.12 / 3.11.4 on; older ones lack it
        archive.extractall(tmp / "base", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = tmp / "LongVideoBench"
    write_json(root / "lvb_val.json", [lvb_item(i, video_path="abc.mp4", duration=3.0) for i in range(2)])
    video(root / "videos" / "abc.mp4", 24, fps=8)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp / "base" / "src"),
        "OMP_NUM_THREADS": "1",
        "VLMFLOW_TEST_SLEEP_AFTER_ROWS": "120:q1",  # killed there, q0 done
    }
    folders = {}
    for name, policy in (("default", ""), ("linspace", "linspace")):
        folders[name] = tmp / f"run-{name}"
        command = [sys.executable, "-c", OLD_RUN, f"longvideobench:{root}", str(folders[name]), policy]
        log = (tmp / f"{name}.log").open("w")
        with subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=log) as old:
            rows = folders[name] / "records" / "shard-00000.jsonl"
            deadline = time.monotonic() + 300
            while not (rows.exists() and '"q1"' in rows.read_text()) and old.poll() is None:
                assert time.monotonic() < deadline, "the old run did not reach its second sample"
                time.sleep(0.1)
            old.kill()  # paused before q1's done marker: q1 is left to the resume
        log.close()
        err = (tmp / f"{name}.log").read_text()
        evals = read_records(folders[name]).query("analysis == 'eval'")
        assert list(evals["sample_id"]) == ["q0"], err[-2000:]
    folders["data"] = root
    shutil.copytree(folders["linspace"], tmp / "run-linspace-unresumed")
    folders["linspace-unresumed"] = tmp / "run-linspace-unresumed"
    return folders


def _resume(folders: dict[str, Path], name: str, policy: str | None) -> Any:
    options = vlmflow.Options(
        model="tiny", data=f"longvideobench:{folders['data']}", frame_policy=policy, progress=False
    )
    return vlmflow.run(options, [AnswerProbability()], folders[name])


def test_an_old_lvb_folder_resumes_with_the_policy_it_sampled_with(old_folders) -> None:
    """912ad47 recorded computed_in.frame_policy 'segment_middle' (the adapter's) for samples
    it sampled with 'lvb': the resume reads that by the rule it was written under, samples the
    rest with lvb too, and then records lvb."""
    folder = old_folders["default"]
    assert (
        json.loads((folder / "manifest.json").read_text())["computed_in"]["frame_policy"] == "segment_middle"
    )
    _resume(old_folders, "default", None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["computed_in"]["frame_policy"] == manifest["frame_policy"] == "lvb"
    evals = read_records(folder).query("analysis == 'eval'").set_index("sample_id")
    assert sorted(evals.index) == ["q0", "q1"]
    assert evals.loc["q1", "frame_policy"] == "lvb"
    _resume(old_folders, "default", None)  # and again, now that it says what it used


def test_an_old_lvb_folder_with_a_chosen_policy_keeps_the_benchmarks(old_folders) -> None:
    """912ad47 recorded the chosen 'linspace' but sampled LongVideoBench with 'lvb': the
    resume keeps sampling with lvb (no folder of mixed policies) and records it."""
    folder = old_folders["linspace"]
    _resume(old_folders, "linspace", "linspace")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["computed_in"]["frame_policy"] == "lvb"
    evals = read_records(folder).query("analysis == 'eval'").set_index("sample_id")
    assert evals.loc["q1", "frame_policy"] == "lvb"
    _resume(old_folders, "linspace", "linspace")


def test_an_old_lvb_folders_overlays_use_the_policy_it_sampled_with(old_folders) -> None:
    """The report draws an old folder's samples with the frames the run used: lvb, though
    the folder's options chose linspace (912ad47 let the benchmark's own win)."""
    from tests.data.benchfiles import which_frames
    from vlmflow.analyses.base import overlay_samples
    from vlmflow.rundir import RunDir

    folder = old_folders["linspace-unresumed"]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["analyses"]["answer-prob"]["overlays"] = 1  # draw q0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    records = read_records(folder).query("analysis == 'answer-prob'")
    ((sample, frames),) = overlay_samples(records, RunDir(folder), "answer-prob")
    assert sample.id == "q0" and which_frames(frames, 24) == [0, 8, 16, 16, 16, 16, 16, 16]
