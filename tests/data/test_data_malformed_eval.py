"""``vlmflow eval`` over a JSONL with one good and one malformed line: the malformed line
is a failed sample with its reason (naming the file and line), the good one is analysed,
and the run exits 0; a file where every line is malformed is refused before any sample."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.benchfiles import video
from tests.data.test_data_eval_cli import eval_args
from vlmflow.cli import app
from vlmflow.rundir import RunDir
from vlmflow.store import read_records

runner = CliRunner()


def test_eval_records_a_malformed_line_as_failed_and_goes_on(tiny_llava_path, tmp_path: Path) -> None:
    video(tmp_path / "clip.mp4", 8)
    good = {
        "id": "good",
        "video": "clip.mp4",
        "question": "Which way?",
        "options": ["left", "right"],
        "answer": 1,
    }
    bad = {
        "id": "bad",
        "video": "clip.mp4",
        "question": "Which way?",
        "options": ["left", "right"],
        "answer": "up",
    }
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "run"
    result = runner.invoke(app, eval_args(tiny_llava_path, f"jsonl:{qa}", out))
    assert result.exit_code == 0, result.output
    records = read_records(out).set_index("sample_id")
    assert set(records.index) == {"good", "bad"}
    assert records["error"].isna()["good"]
    reason = records.loc["bad", "error"]
    assert f"{qa}:2" in reason and "answer 'up' is not among options" in reason, reason
    counts = RunDir(out).sample_counts()
    assert (counts["done"], counts["failed"]) == (1, 1), counts
    assert counts["failures"] == {"bad": reason}
    # a fixed line is other data (the annotations' fingerprint changes): the failure says to
    # run the fixed file into a new folder, and this folder refuses it
    assert "(once fixed, run the file into a new --out folder)" in reason, reason
    qa.write_text(json.dumps(good) + "\n" + json.dumps({**bad, "answer": 0}) + "\n")
    fixed = runner.invoke(app, eval_args(tiny_llava_path, f"jsonl:{qa}", out))
    assert fixed.exit_code == 2 and "holds a run of other model weights or data" in fixed.output, fixed.output

    # nothing readable: the whole file is refused with one line, before any sample runs
    qa.write_text(json.dumps(bad) + "\n")
    result = runner.invoke(app, eval_args(tiny_llava_path, f"jsonl:{qa}", tmp_path / "run2"))
    assert result.exit_code != 0
    assert f"{qa}: none of its 1 items can be read" in result.output, result.output
    assert "Traceback" not in result.output


def test_probing_a_failed_sample_raises_its_reason(tiny_llava, tmp_path: Path) -> None:
    from vlmflow.data import load_dataset
    from vlmflow.errors import DataError
    from vlmflow.probe import Model

    good = {"video": "clip.mp4", "question": "Which way?", "options": ["left", "right"], "answer": 1}
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "question"}) + "\n"
    )
    bad = load_dataset(f"jsonl:{qa}")[1]
    with pytest.raises(DataError, match=re.escape(f"{qa}:2: missing field 'question'")):
        Model(tiny_llava).probe(bad)
