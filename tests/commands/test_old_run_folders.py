"""Run folders that an earlier vlmflow started resume as they were started, or are refused
when this vlmflow would compute their records otherwise.

LongVideoBench folders made before a chosen frame policy won over the benchmark's own
(912ad47) recorded the adapter's policy in ``computed_in`` while their samples were sampled
with ``lvb``. Folders made before analyses recorded their version (552abcc) count as version
1: an answer-prob folder (version 2 since 85c12f4) is refused, a flow folder resumes."""

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
from vlmflow.analyses.information_flow import InformationFlow
from vlmflow.store import read_records

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "912ad47"  # the last commit where a benchmark's own frame policy won
UNVERSIONED = "552abcc"  # the last commit before analyses recorded their version
OLD_RUN = """
import sys, warnings
warnings.simplefilter("ignore")
import vlmflow
from vlmflow.analyses.answer_probability import AnswerProbability
from vlmflow.analyses.information_flow import InformationFlow
data, out, policy, name = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]
analysis = {"answer-prob": AnswerProbability, "flow": InformationFlow}[name]()
options = vlmflow.Options(model="tiny", data=data, frame_policy=policy, progress=False)
vlmflow.run(options, [analysis], out)
"""
ANALYSES = {"answer-prob": AnswerProbability, "flow": InformationFlow}


def old_code(commit: str, into: Path) -> Path:
    """The ``src`` folder of vlmflow at ``commit``, exported into ``into`` (skips the test
    when this checkout's history lacks it)."""
    try:
        tree = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the code of {commit} is not in this checkout's git history")
    with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
        # the "data" filter (our own tree): Python 3.10.12 / 3.11.4 on; older ones lack it
        archive.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into / "src"


def lvb_data(into: Path) -> Path:
    """An LVB dataset of 2 samples (q0, q1) of one 3-second video."""
    from tests.data.benchfiles import lvb_item, video, write_json

    write_json(into / "lvb_val.json", [lvb_item(i, video_path="abc.mp4", duration=3.0) for i in range(2)])
    video(into / "videos" / "abc.mp4", 24, fps=8)
    return into


def run_old_code(src: Path, data: Path, folder: Path, policy: str, analysis: str) -> None:
    """Run ``analysis`` on ``tiny`` with the vlmflow at ``src`` over the LVB ``data`` into
    ``folder``, killed once its first sample (q0) is done: q1 is left to a resume."""
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "OMP_NUM_THREADS": "1",
        "VLMFLOW_TEST_SLEEP_AFTER_ROWS": "120:q1",  # killed there, q0 done
    }
    command = [sys.executable, "-c", OLD_RUN, f"longvideobench:{data}", str(folder), policy, analysis]
    log_path = folder.with_name(folder.name + ".log")
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, env=env, cwd=folder.parent, stdout=log, stderr=log) as old,
    ):
        rows = folder / "records" / "shard-00000.jsonl"
        deadline = time.monotonic() + 300
        while not (rows.exists() and '"q1"' in rows.read_text()) and old.poll() is None:
            assert time.monotonic() < deadline, "the old run did not reach its second sample"
            time.sleep(0.1)
        old.kill()  # paused before q1's done marker: q1 is left to the resume
    evals = read_records(folder).query("analysis == 'eval'")
    assert list(evals["sample_id"]) == ["q0"], log_path.read_text()[-2000:]


@pytest.fixture(scope="module")
def old_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An LVB dataset of 2 samples and the folders 912ad47's code wrote on its first one
    (``tiny``): flow with its default policy and with ``linspace`` chosen, and answer-prob
    with ``linspace`` (read, not resumed: its records are of an earlier version)."""
    tmp = tmp_path_factory.mktemp("old")
    src = old_code(BEFORE, tmp / "base")
    root = lvb_data(tmp / "LongVideoBench")
    folders = {}
    for name, policy, analysis in (
        ("default", "", "flow"),
        ("linspace", "linspace", "flow"),
        ("linspace-unresumed", "linspace", "answer-prob"),
    ):
        folders[name] = tmp / f"run-{name}"
        run_old_code(src, root, folders[name], policy, analysis)
    folders["data"] = root
    return folders


def _resume(folders: dict[str, Path], name: str, policy: str | None, analysis: str = "flow") -> Any:
    options = vlmflow.Options(
        model="tiny", data=f"longvideobench:{folders['data']}", frame_policy=policy, progress=False
    )
    return vlmflow.run(options, [ANALYSES[analysis]()], folders[name])


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


@pytest.fixture(scope="module")
def unversioned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders 552abcc's code (before analyses recorded their version) wrote on the first of
    2 LVB samples (``tiny``): answer-prob (version 1 there, 2 now) and flow (1 both)."""
    tmp = tmp_path_factory.mktemp("unversioned")
    src = old_code(UNVERSIONED, tmp / "base")
    folders = {"data": lvb_data(tmp / "LongVideoBench")}
    for analysis in ("answer-prob", "flow"):
        folders[analysis] = tmp / f"run-{analysis}"
        run_old_code(src, folders["data"], folders[analysis], "", analysis)
    return folders


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but its lock (which the killed old run left, and a resume takes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "run.lock")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def test_an_answer_prob_folder_of_the_earlier_version_is_refused(unversioned) -> None:
    """552abcc's answer-prob records read float32 probabilities and ranked a tie for the true
    letter (version 1; 85c12f4 made version 2): resuming its folder would mix the two in one
    table, so it is refused with one line naming the analysis, both versions and what
    changed, before any sample, and the folder is left as it was."""
    folder = unversioned["answer-prob"]
    before = _files(folder)
    with pytest.raises(vlmflow.VlmflowError) as refused:
        _resume(unversioned, "answer-prob", None, "answer-prob")
    said = str(refused.value)
    assert "\n" not in said
    assert "answer-prob records computed by version 1 of that analysis (the folder records no version" in said
    assert "this vlmflow computes version 2 (changed in version 2: option probabilities" in said
    assert "true_rank counts a tie against the true letter" in said
    assert "write to a new --out" in said
    assert _files(folder) == before


def test_the_earlier_answer_prob_folder_still_reports_and_merges(unversioned, tmp_path) -> None:
    """Only adding records is refused: the old folder's report and merge read it as before."""
    from typer.testing import CliRunner

    from vlmflow.cli import app

    folder = tmp_path / "copy"
    shutil.copytree(unversioned["answer-prob"], folder)
    merged = vlmflow.merge(folder)
    assert merged["samples"]["done"] == 1
    assert (folder / "summary" / "answer-prob.csv").exists()
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").exists()


def test_a_flow_folder_of_the_earlier_code_resumes_and_records_its_version(unversioned) -> None:
    """flow computes its records as 552abcc did (version 1, what a folder without a recorded
    version counts as): its folder resumes, finishes q1, and now records the version."""
    folder = unversioned["flow"]
    _resume(unversioned, "flow", None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["computed_in"]["analysis_versions"] == {"flow": 1}
    assert manifest["samples"]["done"] == 2
    evals = read_records(folder).query("analysis == 'eval'")
    assert sorted(evals["sample_id"]) == ["q0", "q1"]
