"""``vlmflow eval`` end to end on tiny TVBench and Video-MME copies, and ``vlmflow list datasets``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data.benchfiles import mvbench_item, video, videomme_row, write_json, write_videomme
from vlmflow.cli import app
from vlmflow.data import DATASETS
from vlmflow.store import read_records

runner = CliRunner()


def tvbench(root: Path) -> Path:
    """Two TVBench tasks in the published layout: json/<task>.json + video/<task>/<video>."""
    write_json(
        root / "json" / "action_sequence.json", [mvbench_item("s.mp4", start=0.5, end=2.0, answer="left")]
    )
    write_json(
        root / "json" / "object_count.json", [mvbench_item("c.mp4"), mvbench_item("c.mp4", answer="up")]
    )
    video(root / "video" / "action_sequence" / "s.mp4", 16)
    video(root / "video" / "object_count" / "c.mp4", 12)
    return root


def videomme(root: Path) -> Path:
    rows = [
        videomme_row("001-1", "Spatial Perception", "ytA", "A"),
        videomme_row("001-2", "Spatial Perception", "ytA", "C"),
        videomme_row("002-1", "Action Recognition", "ytB", "D"),
    ]
    write_videomme(root, rows)
    video(root / "data" / "ytA.mp4", 12)
    video(root / "data" / "ytB.mkv", 12)
    return root


def eval_args(model: Path, spec: str, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        str(model),
        "--data",
        spec,
        "--num-frames",
        "4",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("bench", ["tvbench", "videomme"])
def test_eval_on_benchmark_layouts(tiny_llava_path, tmp_path, bench):
    root = tvbench(tmp_path / "TVBench") if bench == "tvbench" else videomme(tmp_path / "Video-MME")
    out = tmp_path / "run"
    result = runner.invoke(app, eval_args(tiny_llava_path, f"{bench}:{root}", out))
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    records = read_records(out)
    assert len(records) == 3, records
    expected = (
        {"Action Sequence", "Object Count"}
        if bench == "tvbench"
        else {"Spatial Perception", "Action Recognition"}
    )
    assert set(records["task"]) == expected
    assert records["error"].isna().all(), records["error"].tolist()
    gts = dict(zip(records["sample_id"], records["gt"], strict=True))
    if bench == "videomme":  # the published answer letters survive the stripped "A. " prefixes
        assert gts == {"001-1": "A", "001-2": "C", "002-1": "D"}
    else:
        assert sorted(gts.values()) == ["A", "B", "C"]
    # task ids reach the loader through the CLI: they number Video-MME's 12 published tasks,
    # so with 2 of them on disk id 1 is still Action Recognition
    if bench == "videomme":
        picked = tmp_path / "picked"
        result = runner.invoke(app, eval_args(tiny_llava_path, f"videomme:{root}", picked, "--task", "1"))
        assert result.exit_code == 0, result.output
        assert set(read_records(picked)["task"]) == {"Action Recognition"}


def test_list_datasets_describes_every_loader():
    result = runner.invoke(app, ["list", "datasets"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for name in DATASETS:
        assert name in lines and len(lines[name].split()) > 1, f"{name} has no description"
    assert {"tomato", "mvbench", "videomme", "longvideobench", "vcgbench", "tvbench"} <= set(lines)
